//! Every pair a restore pipeline hands out, taken on the calling thread
//! ([`RestorePipeline::pull`]) or from the reader thread ([`RestorePipeline::stream`],
//! acknowledging each chunk as the NIF does), in the order the chunks come.

use ptable_core::{etf_rows, Error, RestorePipeline, Step};
use std::sync::mpsc;

/// The pairs of one chunk as bytes, checked against the row count its step gives (the
/// NIF checks the same).
pub fn chunk_pairs(data: &[u8], rows: Option<u64>) -> Vec<Vec<u8>> {
    let pairs = etf_rows::all_pairs(data).expect("a restored chunk decodes");
    assert_eq!(rows, Some(pairs.len() as u64), "rows of a restored chunk");
    pairs.iter().map(|p| p.bytes.to_vec()).collect()
}

/// A step as the pairs of its chunk and whether it is the last, `None` for `Done`.
type Taken = Result<Option<(Vec<Vec<u8>>, bool)>, Error>;

fn take(step: Step<'_>) -> Taken {
    match step {
        Step::Chunk {
            data, rows, last, ..
        } => Ok(Some((chunk_pairs(data, rows), last))),
        Step::Done => Ok(None),
        Step::Failed(e) => Err(e),
    }
}

/// Every pair, pulled on the calling thread.
pub fn pull_pairs(pipeline: &RestorePipeline) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    loop {
        let mut next = None;
        pipeline.pull(&mut |step: Step<'_>| {
            next = Some(take(step));
            true
        });
        match next.expect("pull hands over a step")? {
            Some((pairs, last)) => {
                out.extend(pairs);
                if last {
                    return Ok(out);
                }
            }
            None => return Ok(out),
        }
    }
}

/// Every pair, handed over by the reader thread.
pub fn stream_pairs(pipeline: &RestorePipeline) -> Result<Vec<Vec<u8>>, Error> {
    let (tx, rx) = mpsc::channel();
    pipeline.stream(move |step: Step<'_>| {
        let taken = take(step);
        let more = matches!(taken, Ok(Some((_, false))));
        tx.send(taken).is_ok() && more
    })?;
    let mut out = Vec::new();
    loop {
        // A thread that ends without a final step (it panicked in the sink) drops the
        // sender: that is a failure of the test, not a hang.
        match rx
            .recv()
            .expect("the reader thread hands over a final step")?
        {
            Some((pairs, last)) => {
                out.extend(pairs);
                pipeline.ack();
                if last {
                    return Ok(out);
                }
            }
            None => return Ok(out),
        }
    }
}
