//! The persist and restore pipelines' own contracts, on the simulated filesystem: a panic
//! in either thread surfaces as `internal_error` and loses nothing, the reader thread hands
//! over no more chunks than its credits allow and nothing after a sink stops it, and a
//! pulled restore hands over the same steps as a streamed one.

mod common;

use common::scenarios::*;
use common::simfs::SimFs;
use ptable_core::pipeline::restore::STREAMED_CHUNKS;
use ptable_core::{
    open_newest_valid, ChunkConsumer, PersistPipeline, PersistSession, Reason, RestorePipeline,
    Step, TableFile,
};
use std::path::Path;

/// A session whose writer thread panics at its `panic_at`-th append (counting from 0).
struct PanicAt {
    session: PersistSession,
    panic_at: usize,
    appended: usize,
}

impl ChunkConsumer for PanicAt {
    fn append(&mut self, raw: &[u8], rows: u64) -> ptable_core::Result<()> {
        assert!(self.appended != self.panic_at, "deliberate panic (test)");
        self.appended += 1;
        self.session.append(raw, rows)
    }

    fn location(&self) -> &Path {
        self.session.dir().root()
    }
}

/// Feeds `data` as `persist_threaded` does, then commits; the first error, if any.
fn feed_and_commit(pipeline: &PersistPipeline<PanicAt>, data: &Version) -> ptable_core::Error {
    for c in data {
        let queued = match pipeline.try_append(c, 10) {
            Ok(true) => Ok(()),
            Ok(false) => pipeline.append(c, 10),
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            return e;
        }
    }
    match pipeline.with_consumer(|c| c.session.commit()) {
        Ok(Ok(outcome)) => panic!("the commit succeeded ({outcome:?})"),
        Ok(Err(e)) | Err(e) => e,
    }
}

#[test]
fn a_panicking_writer_thread_surfaces_as_internal_error_and_loses_nothing() {
    let full = start_full();
    let data = version(5);
    // Every append of the table runs in the writer thread (the first chunk is held and goes
    // to the thread with the second).
    for panic_at in 0..data.len() {
        let fs = SimFs::from_state(full.state.clone());
        let mut session = PersistSession::begin(arc(&fs), table(), common::options(3)).unwrap();
        session.expect_rows(CLAIMED_ROWS);
        let pipeline = PersistPipeline::new(PanicAt {
            session,
            panic_at,
            appended: 0,
        });
        let error = feed_and_commit(&pipeline, &data);
        assert_eq!(error.reason, Reason::Internal, "panic at append {panic_at}");
        assert_eq!(error.reason.as_str(), "internal_error");
        // Later calls find the session closed; closing it waits for nothing.
        let later = pipeline.with_consumer(|_| ()).unwrap_err();
        assert_eq!(later.reason, Reason::Closed, "panic at append {panic_at}");
        pipeline.close();
        assert!(pipeline.is_closed_now());
        // The unwinding dropped the session: the tmp file it wrote removed (the start's
        // stale one stays until a session writes), lock released.
        let state = fs.state();
        let tmp = state.read(&table().tmp());
        assert!(
            tmp.is_none() || tmp == full.state.read(&table().tmp()),
            "panic at append {panic_at}: tmp file left"
        );
        assert!(!fs.is_locked(&table().lock()), "panic at append {panic_at}");
        assert_eq!(
            state.read(&table().stable()),
            full.state.read(&table().stable()),
            "panic at append {panic_at}"
        );
        assert_eq!(restore_outcome(&fs), Ok(version(3)));
        assert!(persist_threaded(&fs, &data).is_ok(), "a later persist");
    }
}

/// A verified file of `version(n)` on a fresh filesystem.
fn verified_file(n: u64) -> (SimFs, TableFile) {
    let fs = fresh();
    persist(&fs, &version(n)).unwrap();
    let file = open_newest_valid(&fs, &table(), None).unwrap().file;
    (fs, file)
}

#[test]
fn a_panicking_reader_thread_ends_the_stream_with_internal_error() {
    for panic_at in 0..3 {
        let (_fs, file) = verified_file(5);
        let (sender, steps) = std::sync::mpsc::channel();
        let mut taken = 0;
        let sink = move |step: Step<'_>| {
            taken += 1;
            assert!(taken != panic_at + 1, "deliberate panic (test)");
            let kept = match step {
                Step::Failed(e) => Err(e.reason),
                other => Ok(format!("{other:?}").len()),
            };
            sender.send(kept).is_ok()
        };
        let pipeline = RestorePipeline::new(file);
        pipeline.stream(sink).unwrap();
        let mut got = Vec::new();
        for step in steps.iter() {
            let last = step.is_err();
            got.push(step);
            if last {
                break;
            }
            pipeline.ack();
        }
        pipeline.close();
        assert_eq!(got.len(), panic_at + 1, "panic at step {panic_at}: {got:?}");
        assert_eq!(got.last(), Some(&Err(Reason::Internal)));
    }
}

#[test]
fn the_reader_thread_hands_over_no_more_than_its_credits_without_acks() {
    let (_fs, file) = verified_file(7);
    // Waits for the credited chunks, then closes (joining the thread) and collects
    // whatever else was handed over.
    let steps = stream_steps(file, false);
    assert_eq!(steps.len(), STREAMED_CHUNKS as usize, "{steps:?}");
    assert!(steps
        .iter()
        .all(|s| matches!(s, StreamedStep::Chunk { last: false, .. })));
}

#[test]
fn a_sink_that_stops_the_stream_gets_nothing_more() {
    let (_fs, file) = verified_file(5);
    let (sender, steps) = std::sync::mpsc::channel();
    let mut taken = 0;
    // Refuses the second chunk, as the NIF's sink does when a chunk does not decode.
    let sink = move |_: Step<'_>| {
        taken += 1;
        sender.send(taken).is_ok() && taken < 2
    };
    let pipeline = RestorePipeline::new(file);
    pipeline.stream(sink).unwrap();
    for _ in 0..4 {
        pipeline.ack();
    }
    // The thread ends after the refusal (dropping the sink and its sender).
    let got: Vec<usize> = steps.iter().collect();
    pipeline.close();
    assert_eq!(got, vec![1, 2]);
}

#[test]
fn a_pulled_restore_hands_over_the_steps_of_a_streamed_one() {
    for n in [0, 1, 5] {
        let (_fs, file) = verified_file(n);
        let streamed = stream_steps(file, true);
        let (_fs, file) = verified_file(n);
        let pipeline = RestorePipeline::new(file);
        let mut pulled = Vec::new();
        loop {
            let mut step = None;
            pipeline.pull(&mut |s: Step<'_>| {
                step = Some(StreamedStep::from(s));
                true
            });
            let step = step.expect("pull hands over a step");
            let more = matches!(step, StreamedStep::Chunk { last: false, .. });
            pulled.push(step);
            if !more {
                break;
            }
        }
        assert_eq!(pulled, streamed, "version {n}");
        assert_eq!(pulled.len(), n as usize + 1);
        // After the last chunk: done, and the pipeline can close without waiting; a streamed
        // pipeline cannot be pulled.
        let mut after = None;
        pipeline.pull(&mut |s: Step<'_>| {
            after = Some(matches!(s, Step::Done));
            true
        });
        assert_eq!(after, Some(true));
        assert!(pipeline.close_now());
        let mut closed = None;
        pipeline.pull(&mut |s: Step<'_>| {
            closed = Some(matches!(s, Step::Failed(e) if e.reason == Reason::Closed));
            true
        });
        assert_eq!(closed, Some(true));
    }
}
