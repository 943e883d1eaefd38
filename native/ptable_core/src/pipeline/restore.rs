//! The restore pipeline: hands the chunks of a verified file, one [`Step`] at a time, to a
//! [`StepSink`], either on the calling thread ([`RestorePipeline::pull`]) or from a reader
//! thread ([`RestorePipeline::stream`]) that reads, decompresses and checks the next chunks
//! while the consumer takes in the previous ones. The last chunk is marked as such only once
//! the end of the file (its totals and whole-content digest) has been checked too, so the
//! consumer needs no further step to learn that the file was whole; a failure is always a
//! final [`Step::Failed`], never a chunk marked last.

use super::replay::Replay;
use crate::error::{Error, Reason, Result};
use crate::reader::TableFile;
use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Chunks the reader thread may hand over beyond those the consumer acknowledged: enough to
/// keep the thread busy while the consumer inserts, and a bound on the rows in flight. (With
/// 4, restores of 1M rows were slower in the benchmark and peaked 7 MiB higher.)
pub const STREAMED_CHUNKS: u32 = 2;

/// What a restore hands over next.
#[derive(Debug)]
pub enum Step<'a> {
    /// A chunk: the external term format of a list of `{property, value}` pairs,
    /// decompressed and checked against its hash, and the row count its frame gives (`None`
    /// for a legacy file). `last`: no chunk follows, and the end of the file was checked.
    Chunk {
        data: &'a [u8],
        rows: Option<u64>,
        last: bool,
        path: &'a Path,
    },
    /// Every chunk was handed out already, or the file has none.
    Done,
    /// The file (or the pipeline) failed: nothing follows.
    Failed(Error),
}

/// Where the steps of a restore go.
pub trait StepSink {
    /// Takes one step. Returns `false` to stop the stream: the consumer is gone, or it
    /// refused the chunk (and reported why to its own consumer). The answer to a final step
    /// ([`Step::Done`], [`Step::Failed`], a last chunk) only tells whether it was taken.
    fn take(&mut self, step: Step<'_>) -> bool;
}

/// A closure is a sink.
impl<F: FnMut(Step<'_>) -> bool> StepSink for F {
    fn take(&mut self, step: Step<'_>) -> bool {
        self(step)
    }
}

/// A verified file being restored, shared by the calls that read it (each takes its lock).
pub struct RestorePipeline {
    state: Mutex<ReaderState>,
}

enum ReaderState {
    /// Chunks are read on demand by `pull`.
    Ready(Box<Replay>),
    /// A thread owns the file and hands the steps over (`stream`).
    Streaming(RowStream),
    /// Every chunk was handed out: later pulls get [`Step::Done`].
    Done,
    Closed,
}

impl RestorePipeline {
    /// `file` must have been verified (see [`crate::open_newest_valid`]) and rewound.
    pub fn new(file: TableFile) -> Self {
        Self::replaying(Replay::base_only(file))
    }

    /// A base file and its change log (see [`Replay`]).
    pub fn replaying(replay: Replay) -> Self {
        RestorePipeline {
            state: Mutex::new(ReaderState::Ready(Box::new(replay))),
        }
    }

    /// Hands the next step to `sink` on the calling thread; a pipeline that is streaming or
    /// closed gives `Failed(closed)`.
    pub fn pull(&self, sink: &mut impl StepSink) {
        let mut state = self.state.lock();
        let replay = match &mut *state {
            ReaderState::Ready(replay) => replay,
            ReaderState::Done => {
                sink.take(Step::Done);
                return;
            }
            ReaderState::Streaming(_) | ReaderState::Closed => {
                sink.take(Step::Failed(Error::without_path(Reason::Closed)));
                return;
            }
        };
        let step = replay.next_step();
        let (done, failed) = match step {
            Step::Chunk { last, .. } => (last, false),
            Step::Done => (true, false),
            Step::Failed(_) => (false, true),
        };
        let taken = sink.take(step);
        if failed || !taken {
            *state = ReaderState::Closed;
        } else if done {
            *state = ReaderState::Done;
        }
    }

    /// Starts the reader thread, which hands every step to `sink` until a final one, the
    /// sink stops it or the pipeline is closed; at most [`STREAMED_CHUNKS`] chunks beyond
    /// those acknowledged with [`ack`](Self::ack). A panic in the thread is handed over as
    /// `Failed(internal_error)`: the consumer never waits for a step that does not come.
    pub fn stream<S: StepSink + Send + 'static>(&self, mut sink: S) -> Result<()> {
        let mut state = self.state.lock();
        let replay = match std::mem::replace(&mut *state, ReaderState::Closed) {
            ReaderState::Ready(replay) => replay,
            other => {
                *state = other;
                return Err(Error::without_path(Reason::Closed));
            }
        };
        let path = replay.file().path().to_path_buf();
        let credits = Arc::new(Credits::new(STREAMED_CHUNKS));
        let thread_credits = Arc::clone(&credits);
        let thread = std::thread::Builder::new()
            .name("ptable_reader".into())
            .spawn(move || {
                let finished = catch_unwind(AssertUnwindSafe(|| {
                    stream_steps(replay, &mut sink, &thread_credits)
                }));
                if finished.is_err() {
                    sink.take(Step::Failed(Error::without_path(Reason::Internal)));
                }
            })
            // The file went with the closure that could not run: the pipeline is closed.
            .map_err(|e| Error::io(&e, &path))?;
        *state = ReaderState::Streaming(RowStream {
            credits,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Gives the reader thread one more credit: the consumer has taken in a chunk.
    pub fn ack(&self) {
        if let ReaderState::Streaming(stream) = &*self.state.lock() {
            stream.credits.give();
        }
    }

    /// Closes the pipeline if that needs no waiting (it holds neither a file nor a thread:
    /// every chunk was handed out, or it is closed already). `false` when another call holds
    /// it or [`close`](Self::close) must do it.
    pub fn close_now(&self) -> bool {
        let Some(mut state) = self.state.try_lock() else {
            return false;
        };
        match *state {
            ReaderState::Ready(_) | ReaderState::Streaming(_) => false,
            ReaderState::Done | ReaderState::Closed => {
                *state = ReaderState::Closed;
                true
            }
        }
    }

    /// Closes the file early (it is also closed when the pipeline is dropped). A reader
    /// thread is stopped and waited for: it hands nothing over after this returns.
    pub fn close(&self) {
        let state = std::mem::replace(&mut *self.state.lock(), ReaderState::Closed);
        if let ReaderState::Streaming(stream) = state {
            stream.stop();
        }
    }
}

/// The reader thread's loop: one step per credit, until a final step, a sink that stops it
/// or a cancelled stream.
fn stream_steps(mut replay: Box<Replay>, sink: &mut impl StepSink, credits: &Credits) {
    while credits.take() {
        let step = replay.next_step();
        let more = matches!(step, Step::Chunk { last: false, .. });
        if !sink.take(step) || !more {
            return;
        }
    }
}

/// The reader thread and the credits that pace it.
struct RowStream {
    credits: Arc<Credits>,
    thread: Option<JoinHandle<()>>,
}

impl RowStream {
    /// Stops the thread and waits for it, so that it hands nothing over afterwards and the
    /// file is closed.
    fn stop(mut self) {
        self.credits.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RowStream {
    /// A pipeline dropped without `close` (its consumer died): the thread stops at its next
    /// credit or its next step, whichever comes first. Nobody waits for it.
    fn drop(&mut self) {
        self.credits.cancel();
    }
}

/// How many more chunks the thread may hand over; the consumer gives one back per chunk
/// taken in.
struct Credits {
    state: Mutex<CreditState>,
    changed: Condvar,
}

struct CreditState {
    available: u32,
    cancelled: bool,
}

impl Credits {
    fn new(available: u32) -> Self {
        Credits {
            state: Mutex::new(CreditState {
                available,
                cancelled: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits for a credit and takes it; `false` once the stream is cancelled.
    fn take(&self) -> bool {
        let mut state = self.state.lock();
        loop {
            if state.cancelled {
                return false;
            }
            if state.available > 0 {
                state.available -= 1;
                return true;
            }
            self.changed.wait(&mut state);
        }
    }

    fn give(&self) {
        self.state.lock().available += 1;
        self.changed.notify_one();
    }

    fn cancel(&self) {
        self.state.lock().cancelled = true;
        self.changed.notify_all();
    }
}
