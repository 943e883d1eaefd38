//! Restore NIFs: open the newest valid file, then hand its chunks to the caller as lists of
//! `{property, value, timestamp}` rows, ready for `:ets.insert/2`. The last chunk's rows
//! come as `{:last, rows}` once the end of the file has been checked too, which spares a
//! final call or message.
//!
//! A file of several chunks is streamed: a thread reads, decompresses, checks and decodes
//! the next chunks and sends each one's rows to the caller as a message, while the caller
//! inserts the previous ones. The rows are built in the message's own environment, so the
//! caller receives them without a copy and its scheduler does nothing but `:ets.insert/2`.
//! A file of one chunk is decoded by `restore_rows` itself: there is nothing to overlap,
//! and starting a thread would be a measurable part of a small table's restore.

use crate::{atoms, closed_error, error_term, failure_list, lock, path_from, path_term};
use ptable_core::etf::uncompressed_term;
use ptable_core::{open_newest_valid, Error, FileHeader, StdFs, TableDir, TableFile};
use rustler::types::LocalPid;
use rustler::{Atom, Binary, Encoder, Env, OwnedEnv, Resource, ResourceArc, Term};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;

/// Chunks the streaming thread may send beyond those the caller has inserted: enough to
/// keep the thread busy while the caller inserts, and a bound on the rows in flight. (With
/// 4, restores of 1M rows were slower in the benchmark and peaked 7 MiB higher.)
const STREAMED_CHUNKS: u32 = 2;

/// A verified file being restored.
struct ReaderResource(Mutex<Option<ReaderState>>);

#[rustler::resource_impl]
impl Resource for ReaderResource {}

enum ReaderState {
    /// Chunks are read on demand by `restore_rows`.
    Ready(Box<TableFile>),
    /// A thread owns the file and sends the rows (`restore_stream`).
    Streaming(RowStream),
    /// Every chunk was handed out: later calls (from any process) get `:done`.
    Done,
}

/// The streaming thread and the credits that pace it.
struct RowStream {
    credits: Arc<Credits>,
    thread: Option<JoinHandle<()>>,
}

impl RowStream {
    /// Stops the thread and waits for it, so that it sends nothing afterwards and the file
    /// is closed.
    fn stop(mut self) {
        self.credits.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RowStream {
    /// A reader collected without `restore_close` (its process died): the thread stops at
    /// its next credit or its next send, whichever comes first. Nobody waits for it.
    fn drop(&mut self) {
        self.credits.cancel();
    }
}

/// How many more chunks the thread may send; the caller gives one back per chunk inserted.
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
        let mut state = lock(&self.state);
        loop {
            if state.cancelled {
                return false;
            }
            if state.available > 0 {
                state.available -= 1;
                return true;
            }
            // Poisoning is ignored, as in `lock`.
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn give(&self) {
        lock(&self.state).available += 1;
        self.changed.notify_one();
    }

    fn cancel(&self) {
        lock(&self.state).cancelled = true;
        self.changed.notify_all();
    }
}

/// Opens the newest file of `dir` that verifies completely, moving corrupt stable/backup
/// files aside (keeping `max_quarantined`).
/// `{:ok, reader, kind, path, failures, quarantined, chunk_count}` or
/// `{:error, reason, path, failures, quarantined}`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_open<'a>(env: Env<'a>, dir: Binary, max_quarantined: usize) -> Term<'a> {
    let dir = TableDir::new(path_from(&dir));
    match open_newest_valid(&StdFs, &dir, Some(max_quarantined)) {
        Ok(source) => {
            let path = path_term(env, Some(source.file.path()));
            let kind = Atom::from_str(env, source.kind.as_str())
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::nil().encode(env));
            let failures = failure_list(env, &source.failures);
            let quarantined = path_list(env, &source.quarantined);
            let chunks = chunk_count(&source.file);
            let reader = ResourceArc::new(ReaderResource(Mutex::new(Some(ReaderState::Ready(
                Box::new(source.file),
            )))));
            (
                atoms::ok(),
                reader,
                kind,
                path,
                failures,
                quarantined,
                chunks,
            )
                .encode(env)
        }
        Err(failure) => (
            atoms::error(),
            crate::reason_atom(env, &failure.error),
            path_term(env, failure.error.path.as_deref()),
            failure_list(env, &failure.failures),
            path_list(env, &failure.quarantined),
        )
            .encode(env),
    }
}

fn path_list<'a>(env: Env<'a>, paths: &[PathBuf]) -> Term<'a> {
    paths
        .iter()
        .map(|p| path_term(env, Some(p)))
        .collect::<Vec<_>>()
        .encode(env)
}

/// Chunks in a verified file (a legacy file's payload is one).
fn chunk_count(file: &TableFile) -> u64 {
    match file.header() {
        FileHeader::Current(h) => h.chunk_count,
        FileHeader::Legacy { .. } => 1,
    }
}

/// The next chunk's rows, each with `timestamp`: `{:ok, rows}` (more chunks follow),
/// `{:last, rows}` (the last chunk, and the whole file checked), `:done` (a file of no
/// chunks, or every chunk handed out), or an error. With `safe`, terms are decoded like
/// `:erlang.binary_to_term(bin, [:safe])`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_rows<'a>(
    env: Env<'a>,
    reader: ResourceArc<ReaderResource>,
    timestamp: i64,
    safe: bool,
) -> Term<'a> {
    let mut guard = lock(&reader.0);
    let file = match guard.as_mut() {
        Some(ReaderState::Ready(file)) => file,
        Some(ReaderState::Done) => return atoms::done().encode(env),
        _ => return closed_error(env),
    };
    let (next, after) = next_rows(env, file, &mut Vec::new(), timestamp, safe);
    match after {
        After::More => {}
        After::Done => *guard = Some(ReaderState::Done),
        After::Failed => *guard = None,
    }
    next
}

/// Starts the thread that sends the rows of every chunk to the calling process as
/// `{tag, {:ok, rows}}` messages and the last chunk's as `{tag, {:last, rows}}` (see
/// `restore_rows`), or stops at the first `{tag, {:error, reason, path}}`.
/// It sends at most `STREAMED_CHUNKS` chunks beyond those acknowledged with `restore_ack`.
/// Returns `:ok` or an error.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_stream<'a>(
    env: Env<'a>,
    reader: ResourceArc<ReaderResource>,
    tag: Term<'a>,
    timestamp: i64,
    safe: bool,
) -> Term<'a> {
    let mut guard = lock(&reader.0);
    let file = match guard.take() {
        Some(ReaderState::Ready(file)) => file,
        other => {
            *guard = other;
            return closed_error(env);
        }
    };
    let path = file.path().to_path_buf();
    let caller = env.pid();
    let tag_env = OwnedEnv::new();
    let tag = tag_env.save(tag);
    let credits = Arc::new(Credits::new(STREAMED_CHUNKS));
    let thread_credits = Arc::clone(&credits);
    let spawned = std::thread::Builder::new()
        .name("ptable_reader".into())
        .spawn(move || {
            let mut sender = RowSender {
                caller,
                tag_env,
                tag,
                msg_env: OwnedEnv::new(),
            };
            let finished = catch_unwind(AssertUnwindSafe(|| {
                stream_rows(*file, &mut sender, timestamp, safe, &thread_credits)
            }));
            if finished.is_err() {
                // The caller waits for a last message: a panic must not leave it waiting.
                let mut sender = RowSender {
                    msg_env: OwnedEnv::new(),
                    ..sender
                };
                let _ = sender.send(closed_error);
            }
        });
    match spawned {
        Ok(thread) => {
            *guard = Some(ReaderState::Streaming(RowStream {
                credits,
                thread: Some(thread),
            }));
            atoms::ok().encode(env)
        }
        // The file went with the closure that could not run: the reader is closed.
        Err(e) => error_term(env, &Error::io(&e, &path)),
    }
}

/// Gives the streaming thread one more credit: the caller has inserted a chunk.
#[rustler::nif]
fn restore_ack(reader: ResourceArc<ReaderResource>) -> Atom {
    if let Some(ReaderState::Streaming(stream)) = lock(&reader.0).as_ref() {
        stream.credits.give();
    }
    atoms::ok()
}

/// Closes a reader that holds neither a file nor a thread (every chunk was handed out, or
/// it is closed already) without leaving the normal scheduler: `:ok`, or `:busy` when
/// `restore_close_wait` must do it.
#[rustler::nif]
fn restore_close_nowait(reader: ResourceArc<ReaderResource>) -> Atom {
    // Never wait for the lock here: a dirty call may hold it while it decodes a chunk.
    let mut state = match reader.0.try_lock() {
        Ok(state) => state,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return atoms::busy(),
    };
    match *state {
        Some(ReaderState::Ready(_) | ReaderState::Streaming(_)) => atoms::busy(),
        Some(ReaderState::Done) | None => {
            *state = None;
            atoms::ok()
        }
    }
}

/// Closes the file early (it is also closed when the reader is collected). A streaming
/// thread is stopped and waited for: it sends nothing after this returns.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_close_wait(reader: ResourceArc<ReaderResource>) -> Atom {
    let state = lock(&reader.0).take();
    if let Some(ReaderState::Streaming(stream)) = state {
        stream.stop();
    }
    atoms::ok()
}

/// Sends messages `{tag, payload}` to the restoring process.
struct RowSender {
    caller: LocalPid,
    tag_env: OwnedEnv,
    tag: rustler::env::SavedTerm,
    msg_env: OwnedEnv,
}

impl RowSender {
    /// Builds the payload in the message's environment and sends it; `false` when the
    /// caller is gone.
    fn send<F>(&mut self, payload: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        let (tag_env, tag) = (&self.tag_env, &self.tag);
        self.msg_env
            .send_and_clear(&self.caller, |env| {
                let tag = tag_env.run(|tag_env| tag.load(tag_env).in_env(env));
                (tag, payload(env)).encode(env)
            })
            .is_ok()
    }
}

/// The streaming thread's loop: one chunk per credit, until the last message is sent, the
/// caller is gone or the stream is cancelled.
fn stream_rows(
    mut file: TableFile,
    sender: &mut RowSender,
    timestamp: i64,
    safe: bool,
    credits: &Credits,
) {
    let mut buffer = Vec::new();
    while credits.take() {
        let mut after = After::Failed;
        let sent = sender.send(|env| {
            let next;
            (next, after) = next_rows(env, &mut file, &mut buffer, timestamp, safe);
            next
        });
        if !sent || after != After::More {
            return;
        }
    }
}

/// What follows the term `next_rows` returned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// It was a chunk's rows: there may be more.
    More,
    /// It was `:done`: every chunk was read and the file's digest matched.
    Done,
    /// It was an error: the file is of no further use.
    Failed,
}

/// Reads, decompresses, checks and decodes the next chunk into rows in `env` (using
/// `buffer` for its bytes). Returns the term for the caller (`{:ok, rows}`, `:done` or an
/// error) and what follows it.
fn next_rows<'a>(
    env: Env<'a>,
    file: &mut TableFile,
    buffer: &mut Vec<u8>,
    timestamp: i64,
    safe: bool,
) -> (Term<'a>, After) {
    let chunk = file.next_chunk(|len| {
        buffer.clear();
        buffer.try_reserve_exact(len).ok()?;
        buffer.resize(len, 0);
        Some(buffer.as_mut_slice())
    });
    let rows = match chunk {
        Ok(Some(chunk)) => chunk_rows(env, chunk.data, timestamp, safe, chunk.rows),
        Ok(None) => return (atoms::done().encode(env), After::Done),
        Err(e) => return (error_term(env, &e), After::Failed),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(reason) => {
            let path = path_term(env, Some(file.path()));
            return ((atoms::error(), reason, path).encode(env), After::Failed);
        }
    };
    if file.chunks_left() > 0 {
        return ((atoms::ok(), rows).encode(env), After::More);
    }
    // The last chunk: the file's end (its totals and whole-content digest) is checked now,
    // so the caller needs no further call or message to learn that the file was whole.
    match file.next_chunk(|_| None::<Vec<u8>>) {
        Ok(None) => ((atoms::last(), rows).encode(env), After::Done),
        Ok(Some(_)) => {
            let path = path_term(env, Some(file.path()));
            (
                (atoms::error(), atoms::bad_file(), path).encode(env),
                After::Failed,
            )
        }
        Err(e) => (error_term(env, &e), After::Failed),
    }
}

/// Decodes a chunk (the external term format of a list of `{property, value}` pairs) into
/// a list of `{property, value, timestamp}` rows in `env`, checking the row count the
/// chunk's frame gives (`None` for a legacy file). A chunk's checksums matched before it
/// gets here, so a chunk that does not decode was written that way: `bad_file`, or with
/// `safe`, `unsafe_term` (it is not decoded again unsafely to tell the cases apart: that
/// would create the very atoms `safe` refuses).
fn chunk_rows<'a>(
    env: Env<'a>,
    bytes: &[u8],
    timestamp: i64,
    safe: bool,
    expected_rows: Option<u64>,
) -> Result<Term<'a>, Atom> {
    // This library writes chunks uncompressed by term_to_binary; property_table's legacy
    // payloads are compressed, and enif_binary_to_term does not inflate them.
    let Some(bytes) = uncompressed_term(bytes) else {
        return Err(atoms::bad_file());
    };
    let decoded = if safe {
        env.binary_to_term(&bytes)
    } else {
        // SAFETY: the VM checks the external format either way; without the safe flag it
        // may also create atoms, as `:erlang.binary_to_term/1` does.
        unsafe { env.binary_to_term_trusted(&bytes) }
    };
    let pairs = match decoded {
        // Like `:erlang.binary_to_term/2`, bytes after the term are ignored.
        Some((term, _used)) => term,
        None if safe => return Err(atoms::unsafe_term()),
        None => return Err(atoms::bad_file()),
    };
    let count = pairs.list_length().map_err(|_| atoms::bad_file())?;
    if expected_rows.is_some_and(|expected| expected != count as u64) {
        return Err(atoms::bad_file());
    }
    let timestamp = timestamp.encode(env);
    let mut rows = Term::list_new_empty(env);
    for pair in pairs.into_list_iterator().map_err(|_| atoms::bad_file())? {
        let (property, value): (Term<'a>, Term<'a>) =
            pair.decode().map_err(|_| atoms::bad_file())?;
        rows = rows.list_prepend((property, value, timestamp));
    }
    Ok(rows)
}
