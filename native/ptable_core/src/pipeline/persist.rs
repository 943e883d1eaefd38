//! The persist pipeline: appended chunks go to a writer thread that owns the session, so
//! compressing, hashing and writing one chunk overlaps with the caller reading and encoding
//! the next one. Every other call first waits for the thread to finish the queued chunks
//! and takes the session back. An append that fails ends the session (as
//! [`PersistSession::append`] does); its error is returned by the next append or by the
//! call that takes the session back (the commit).
//!
//! The thread starts with the second chunk: the first one is held, and a table of one chunk
//! (up to `chunk_size` rows) is written by the commit itself. Its persist takes a few
//! milliseconds, and starting a thread and handing the chunk over was a measurable part of
//! that.

use crate::error::{Error, Reason, Result};
use crate::fs::Fs;
use crate::snapshot_id::SnapshotId;
use crate::table_dir::{CommitOutcome, PersistConfig, PersistSession, TableDir};
use crate::writer::WriteOptions;
use parking_lot::Mutex;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Chunks waiting for the writer thread, beyond the one it is working on: enough to keep
/// it busy while the caller reads the next chunk from ETS, and a bound on their memory.
pub const QUEUED_CHUNKS: usize = 2;

/// What the writer thread hands the chunks to: a [`PersistSession`], or in tests anything
/// that consumes chunks.
pub trait ChunkConsumer: Send + 'static {
    /// Takes one chunk: the encoding of `rows` rows. An error ends the stream.
    fn append(&mut self, raw: &[u8], rows: u64) -> Result<()>;

    /// The path reported when no writer thread can be started.
    fn location(&self) -> &Path;
}

impl ChunkConsumer for PersistSession {
    fn append(&mut self, raw: &[u8], rows: u64) -> Result<()> {
        PersistSession::append(self, raw, rows)
    }

    fn location(&self) -> &Path {
        self.dir().root()
    }
}

/// A persist in progress, shared by the calls that feed it (each takes its lock): holds the
/// consumer (and so the table directory's lock) until closed or dropped.
///
/// A panic in the writer thread ends the session (its tmp file removed, its lock released
/// as the unwinding drops it) and surfaces as [`Reason::Internal`], like any other error
/// of the thread.
pub struct PersistPipeline<C: ChunkConsumer = PersistSession> {
    state: Mutex<State<C>>,
}

enum State<C> {
    Idle(Box<C>),
    Holding(Box<C>, (Vec<u8>, u64)),
    Streaming {
        chunks: SyncSender<(Vec<u8>, u64)>,
        writer: JoinHandle<(Box<C>, Result<()>)>,
    },
    Closed,
}

impl<C: ChunkConsumer> PersistPipeline<C> {
    pub fn new(consumer: C) -> Self {
        PersistPipeline {
            state: Mutex::new(State::Idle(Box::new(consumer))),
        }
    }

    /// Queues one chunk (the encoding of `rows` rows) if that needs no waiting: `Ok(false)`
    /// when the queue is full or another call holds the pipeline, and nothing was queued.
    pub fn try_append(&self, raw: &[u8], rows: u64) -> Result<bool> {
        match self.state.try_lock() {
            Some(mut state) => state.append(raw, rows, false),
            None => Ok(false),
        }
    }

    /// Queues one chunk, waiting while [`QUEUED_CHUNKS`] chunks are already queued.
    pub fn append(&self, raw: &[u8], rows: u64) -> Result<()> {
        self.state.lock().append(raw, rows, true).map(|_| ())
    }

    /// Runs `f` on the consumer once the writer thread has written every queued chunk, or
    /// returns the error that ended the stream (`closed` once the pipeline is closed).
    pub fn with_consumer<R>(&self, f: impl FnOnce(&mut C) -> R) -> Result<R> {
        self.state.lock().drain().map(f)
    }

    /// Ends the pipeline: waits for the writer thread and drops the consumer (for a session:
    /// removes an uncommitted tmp file and releases the lock). A held chunk is dropped, not
    /// written.
    pub fn close(&self) {
        let mut state = self.state.lock();
        if !matches!(*state, State::Holding(..)) {
            let _ = state.drain();
        }
        *state = State::Closed;
    }

    /// Whether the pipeline is closed, learned without waiting: `false` also when another
    /// call holds it (it may be writing).
    pub fn is_closed_now(&self) -> bool {
        matches!(self.state.try_lock().as_deref(), Some(State::Closed))
    }
}

impl PersistPipeline<PersistSession> {
    /// Begins a persist ([`PersistSession::begin_with`]) with its hints set: the table's row
    /// count and how many quarantined files its commit keeps.
    pub fn begin(
        fs: Arc<dyn Fs>,
        dir: TableDir,
        options: WriteOptions,
        expected_rows: u64,
        max_quarantined: usize,
        config: PersistConfig,
    ) -> Result<Self> {
        let mut session = PersistSession::begin_with(fs, dir, options, config)?;
        session.expect_rows(expected_rows);
        session.set_max_quarantined(max_quarantined);
        Ok(PersistPipeline::new(session))
    }

    /// Once the writer thread has written every chunk: [`PersistSession::commit`].
    pub fn commit(&self) -> Result<CommitOutcome> {
        self.with_consumer(PersistSession::commit)?
    }

    /// After a commit: [`PersistSession::snapshot`].
    pub fn snapshot(
        &self,
        max_snapshots: usize,
        new_id: &mut dyn FnMut() -> Result<SnapshotId>,
    ) -> Result<SnapshotId> {
        self.with_consumer(|s| s.snapshot(max_snapshots, new_id))?
    }
}

impl<C: ChunkConsumer> State<C> {
    /// Holds the first chunk; from the second on, hands chunks to the writer thread
    /// (started then, with the held chunk first). With `wait`, blocks while the queue is
    /// full; without, returns `Ok(false)` instead.
    fn append(&mut self, raw: &[u8], rows: u64, wait: bool) -> Result<bool> {
        // On an error the state stays `Closed`.
        let item = (raw.to_vec(), rows);
        let held = match std::mem::replace(self, State::Closed) {
            State::Idle(consumer) => {
                *self = State::Holding(consumer, item);
                return Ok(true);
            }
            State::Holding(consumer, held) => {
                *self = start_writer(consumer)?;
                Some(held)
            }
            other => {
                *self = other;
                None
            }
        };
        let State::Streaming { chunks, .. } = self else {
            return Err(Error::without_path(Reason::Closed));
        };
        // The queue is empty: the held chunk goes in without waiting.
        let stopped = if held.is_some_and(|held| chunks.send(held).is_err()) {
            true
        } else if wait {
            chunks.send(item).is_err()
        } else {
            match chunks.try_send(item) {
                Ok(()) => false,
                Err(TrySendError::Full(_)) => return Ok(false),
                Err(TrySendError::Disconnected(_)) => true,
            }
        };
        if stopped {
            // The writer stopped at a failure: report it.
            self.drain()?;
        }
        Ok(true)
    }

    /// Waits for the writer thread to finish the queued chunks and returns the consumer, or
    /// the error that ended the stream.
    fn drain(&mut self) -> Result<&mut C> {
        match std::mem::replace(self, State::Closed) {
            State::Holding(mut consumer, (raw, rows)) => {
                // On an error the consumer is dropped (a session's tmp file removed, its
                // lock released).
                consumer.append(&raw, rows)?;
                *self = State::Idle(consumer);
            }
            State::Streaming { chunks, writer } => {
                drop(chunks);
                // The consumer went down with a panicking writer: the state stays closed.
                let (consumer, result) = writer
                    .join()
                    .map_err(|_| Error::without_path(Reason::Internal))?;
                *self = State::Idle(consumer);
                result?;
            }
            other => *self = other,
        }
        match self {
            State::Idle(consumer) => Ok(consumer),
            _ => Err(Error::without_path(Reason::Closed)),
        }
    }
}

/// Starts the writer thread that owns `consumer` from now on. If no thread can be started,
/// the consumer is dropped with the closure (a session's tmp file removed, its lock
/// released).
fn start_writer<C: ChunkConsumer>(mut consumer: Box<C>) -> Result<State<C>> {
    let location = consumer.location().to_path_buf();
    let (chunks, queue) = sync_channel::<(Vec<u8>, u64)>(QUEUED_CHUNKS);
    let writer = std::thread::Builder::new()
        .name("ptable_writer".into())
        .spawn(move || {
            // Ends when the sender is dropped, or at the first failure (dropping the queue,
            // which makes the next send fail).
            for (raw, rows) in queue {
                if let Err(e) = consumer.append(&raw, rows) {
                    return (consumer, Err(e));
                }
            }
            (consumer, Ok(()))
        })
        .map_err(|e| Error::io(&e, &location))?;
    Ok(State::Streaming { chunks, writer })
}
