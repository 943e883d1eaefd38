//! Rustler glue for `PropertyTable.Persist.Native`: converts terms, runs every call that
//! touches files on a dirty I/O scheduler, and turns core errors into
//! `{:error, reason_atom, path | nil}`. All logic lives in `ptable_core`.

use ptable_core::{
    inspect_dir, list_snapshots, restore_snapshot, Error, FileHeader, PersistSession, Reason,
    SnapshotId, StdFs, TableDir, WriteOptions,
};
use rustler::{Atom, Binary, Encoder, Env, Resource, ResourceArc, Term};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

mod atoms {
    rustler::atoms! {
        ok,
        error,
        done,
        last,
        nil,
        closed,
        full,
        busy,
        bad_file,
        unsafe_term,
    }
}

mod restore;

/// A persist in progress (holds the table directory's lock until closed or collected).
struct SessionResource(Mutex<SessionState>);

/// Chunks waiting for the writer thread, beyond the one it is working on: enough to keep
/// it busy while the caller reads the next chunk from ETS, and a bound on their memory.
const QUEUED_CHUNKS: usize = 2;

/// Appended chunks go to a writer thread that owns the session, so compressing, hashing
/// and writing one chunk overlaps with the caller reading and encoding the next one. Every
/// other call first waits for the thread to finish the queued chunks and takes the
/// session back. An append that fails ends the session (as `PersistSession::append`
/// does); its error is returned by the next append or by the commit.
///
/// The thread starts with the second chunk: the first one is held, and a table of one
/// chunk (up to `chunk_size` rows) is written by the commit itself. Its persist takes a
/// few milliseconds, and starting a thread and handing the chunk over was a measurable
/// part of that.
enum SessionState {
    Idle(Box<PersistSession>),
    Holding(Box<PersistSession>, (Vec<u8>, u64)),
    Streaming {
        chunks: SyncSender<(Vec<u8>, u64)>,
        writer: JoinHandle<(Box<PersistSession>, ptable_core::Result<()>)>,
    },
    Closed,
}

/// Largest chunk `persist_append_nowait` copies on a normal scheduler (a copy well under 1 ms).
const INLINE_APPEND_MAX: usize = 1 << 20;

impl SessionState {
    /// Holds the first chunk; from the second on, hands chunks to the writer thread
    /// (started then, with the held chunk first). With `wait`, blocks while the queue is
    /// full; without, returns `Ok(false)` instead.
    fn append(&mut self, raw: &[u8], rows: u64, wait: bool) -> ptable_core::Result<bool> {
        // On an error the state stays `Closed`.
        let item = (raw.to_vec(), rows);
        let held = match std::mem::replace(self, SessionState::Closed) {
            SessionState::Idle(session) => {
                *self = SessionState::Holding(session, item);
                return Ok(true);
            }
            SessionState::Holding(session, held) => {
                *self = start_writer(session)?;
                Some(held)
            }
            other => {
                *self = other;
                None
            }
        };
        let SessionState::Streaming { chunks, .. } = self else {
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

    /// Waits for the writer thread to finish the queued chunks and returns the session, or
    /// the error that ended it.
    fn drain(&mut self) -> ptable_core::Result<&mut PersistSession> {
        match std::mem::replace(self, SessionState::Closed) {
            SessionState::Holding(mut session, (raw, rows)) => {
                // On an error the session is dropped (its tmp file removed, lock released).
                session.append(&raw, rows)?;
                *self = SessionState::Idle(session);
            }
            SessionState::Streaming { chunks, writer } => {
                drop(chunks);
                // A panic in the writer leaves the session closed (and its lock released).
                let (session, result) = writer
                    .join()
                    .map_err(|_| Error::without_path(Reason::Closed))?;
                *self = SessionState::Idle(session);
                result?;
            }
            other => *self = other,
        }
        match self {
            SessionState::Idle(session) => Ok(session),
            _ => Err(Error::without_path(Reason::Closed)),
        }
    }
}

/// Starts the writer thread that owns `session` from now on. If no thread can be started,
/// the session is dropped with the closure: its tmp file is removed and the lock released.
fn start_writer(mut session: Box<PersistSession>) -> ptable_core::Result<SessionState> {
    let dir = session.dir().root().to_path_buf();
    let (chunks, queue) = sync_channel::<(Vec<u8>, u64)>(QUEUED_CHUNKS);
    let writer = std::thread::Builder::new()
        .name("ptable_writer".into())
        .spawn(move || {
            // Ends when the sender is dropped, or at the first failure (dropping the queue,
            // which makes the next send fail).
            for (raw, rows) in queue {
                if let Err(e) = session.append(&raw, rows) {
                    return (session, Err(e));
                }
            }
            (session, Ok(()))
        })
        .map_err(|e| Error::io(&e, &dir))?;
    Ok(SessionState::Streaming { chunks, writer })
}

#[rustler::resource_impl]
impl Resource for SessionResource {}

fn path_from(bin: &Binary) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(bin.as_slice()))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(bin.as_slice()).into_owned())
    }
}

fn path_term<'a>(env: Env<'a>, path: Option<&std::path::Path>) -> Term<'a> {
    match path {
        None => atoms::nil().encode(env),
        Some(p) => {
            #[cfg(unix)]
            let bytes = {
                use std::os::unix::ffi::OsStrExt;
                p.as_os_str().as_bytes().to_vec()
            };
            #[cfg(not(unix))]
            let bytes = p.to_string_lossy().into_owned().into_bytes();
            binary_term(env, &bytes)
        }
    }
}

fn binary_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut out = rustler::NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).to_term(env)
}

fn reason_atom<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    // Atom names come from a fixed set of static strings.
    match Atom::from_str(env, e.reason.as_str()) {
        Ok(a) => a.encode(env),
        Err(_) => atoms::error().encode(env),
    }
}

/// `{:error, reason, path}`
fn error_term<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    (
        atoms::error(),
        reason_atom(env, e),
        path_term(env, e.path.as_deref()),
    )
        .encode(env)
}

/// `{reason, path}` for the files a restore skipped.
fn failure_list<'a>(env: Env<'a>, failures: &[Error]) -> Term<'a> {
    failures
        .iter()
        .map(|e| (reason_atom(env, e), path_term(env, e.path.as_deref())).encode(env))
        .collect::<Vec<_>>()
        .encode(env)
}

fn closed_error<'a>(env: Env<'a>) -> Term<'a> {
    (atoms::error(), atoms::closed(), atoms::nil()).encode(env)
}

fn ok_or_error<'a>(env: Env<'a>, result: ptable_core::Result<()>) -> Term<'a> {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Starts a persist of the table directory `dir`: creates it, takes its lock (`busy` if
/// another writer has it) and opens the tmp file.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_begin<'a>(
    env: Env<'a>,
    dir: Binary,
    level: u8,
    chunk_rows: u32,
    expected_rows: u64,
) -> Term<'a> {
    let options = WriteOptions { level, chunk_rows };
    match PersistSession::begin(Arc::new(StdFs), TableDir::new(path_from(&dir)), options) {
        Ok(mut session) => {
            session.expect_rows(expected_rows);
            let resource = ResourceArc::new(SessionResource(Mutex::new(SessionState::Idle(
                Box::new(session),
            ))));
            (atoms::ok(), resource).encode(env)
        }
        Err(e) => error_term(env, &e),
    }
}

/// Locks a resource's state, ignoring poisoning: a panic while the lock was held leaves a
/// state that later calls can still act on (at worst report `closed`).
fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the session once the writer thread has written every chunk, or returns the
/// error that ended the session.
fn with_session<'a>(
    env: Env<'a>,
    session: &ResourceArc<SessionResource>,
    f: impl FnOnce(&mut PersistSession) -> Term<'a>,
) -> Term<'a> {
    let mut state = lock(&session.0);
    match state.drain() {
        Ok(s) => f(s),
        Err(e) if e.reason == Reason::Closed => closed_error(env),
        Err(e) => error_term(env, &e),
    }
}

/// Queues one chunk (the external term format of `rows` rows) for the writer thread, which
/// compresses and appends it, if there is room right away: `:ok`, or `:full` (also for a
/// chunk too large to copy quickly), after which the caller uses `persist_append_wait`.
/// Runs on a normal scheduler: a dirty call per chunk would cost two thread switches, and
/// on a small machine a third runnable thread beside the caller and the writer.
#[rustler::nif]
fn persist_append_nowait<'a>(
    env: Env<'a>,
    session: ResourceArc<SessionResource>,
    chunk: Binary,
    rows: u64,
) -> Term<'a> {
    if chunk.len() > INLINE_APPEND_MAX {
        return atoms::full().encode(env);
    }
    // Never wait for the lock here (only a call from another process could hold it).
    let Ok(mut state) = session.0.try_lock() else {
        return atoms::full().encode(env);
    };
    append_result(env, state.append(chunk.as_slice(), rows, false))
}

/// Queues one chunk, waiting while `QUEUED_CHUNKS` chunks are already queued.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_append_wait<'a>(
    env: Env<'a>,
    session: ResourceArc<SessionResource>,
    chunk: Binary,
    rows: u64,
) -> Term<'a> {
    let result = lock(&session.0).append(chunk.as_slice(), rows, true);
    append_result(env, result)
}

fn append_result<'a>(env: Env<'a>, result: ptable_core::Result<bool>) -> Term<'a> {
    match result {
        Ok(true) => atoms::ok().encode(env),
        Ok(false) => atoms::full().encode(env),
        Err(e) if e.reason == Reason::Closed => closed_error(env),
        Err(e) => error_term(env, &e),
    }
}

/// Finishes the file and installs it as the stable file (or finds the table unchanged).
/// With `release`, then ends the session whatever the outcome, as `persist_close` would:
/// a persist without a snapshot needs no further dirty call.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_commit<'a>(
    env: Env<'a>,
    session: ResourceArc<SessionResource>,
    release: bool,
) -> Term<'a> {
    // An unchanged table (nothing written) is as much a success as a new file.
    let result = with_session(env, &session, |s| ok_or_error(env, s.commit().map(|_| ())));
    if release {
        close_session(&session);
    }
    result
}

/// After a commit: copies the stable file to a new snapshot, applies retention.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_snapshot<'a>(
    env: Env<'a>,
    session: ResourceArc<SessionResource>,
    max_snapshots: usize,
) -> Term<'a> {
    with_session(env, &session, |s| {
        match s.snapshot(max_snapshots, &mut SnapshotId::random) {
            Ok(id) => (atoms::ok(), binary_term(env, id.as_str().as_bytes())).encode(env),
            Err(e) => error_term(env, &e),
        }
    })
}

/// Ends the session: waits for the writer thread, removes an uncommitted tmp file and
/// releases the lock.
fn close_session(session: &SessionResource) {
    let mut state = lock(&session.0);
    // A held chunk is dropped, not written; a writer thread is waited for.
    if !matches!(*state, SessionState::Holding(..)) {
        let _ = state.drain();
    }
    *state = SessionState::Closed;
}

/// `:ok` for a session that is over already (closed, or released by its commit) without
/// leaving the normal scheduler, else `:busy`: `persist_close_wait` must end it.
#[rustler::nif]
fn persist_close_nowait(session: ResourceArc<SessionResource>) -> Atom {
    // Never wait for the lock here: a dirty call may hold it while it writes.
    match session.0.try_lock() {
        Ok(state) if matches!(*state, SessionState::Closed) => atoms::ok(),
        _ => atoms::busy(),
    }
}

/// See `close_session`.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_close_wait(session: ResourceArc<SessionResource>) -> Atom {
    close_session(&session);
    atoms::ok()
}

/// `{:ok, [{id, sequence | nil, created_unix_us}]}` oldest first, or an error.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_list<'a>(env: Env<'a>, dir: Binary) -> Term<'a> {
    match list_snapshots(&StdFs, &TableDir::new(path_from(&dir))) {
        Ok(entries) => {
            let list: Vec<Term<'a>> = entries
                .iter()
                .map(|e| {
                    let seq = match e.sequence {
                        Some(s) => s.encode(env),
                        None => atoms::nil().encode(env),
                    };
                    (
                        binary_term(env, e.id.as_str().as_bytes()),
                        seq,
                        e.created_unix_us,
                    )
                        .encode(env)
                })
                .collect();
            (atoms::ok(), list).encode(env)
        }
        Err(e) => error_term(env, &e),
    }
}

/// Installs snapshot `id` as the stable file.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_restore<'a>(env: Env<'a>, dir: Binary, id: Binary) -> Term<'a> {
    let id = std::str::from_utf8(id.as_slice()).unwrap_or("");
    ok_or_error(
        env,
        restore_snapshot(&StdFs, &TableDir::new(path_from(&dir)), id),
    )
}

fn opt<'a, T: Encoder>(env: Env<'a>, value: Option<T>) -> Term<'a> {
    match value {
        Some(v) => v.encode(env),
        None => atoms::nil().encode(env),
    }
}

/// `{:ok, [{path, role, size, mtime_us, version, created_us, sequence, rows, level,
/// status}]}`: one tuple per file; fields unknown for a file are `nil`, status is `:ok` or
/// the reason it fails.
#[rustler::nif(schedule = "DirtyIo")]
fn inspect<'a>(env: Env<'a>, dir: Binary, verify: bool) -> Term<'a> {
    let reports = match inspect_dir(&StdFs, &TableDir::new(path_from(&dir)), verify) {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let list: Vec<Term<'a>> = reports
        .iter()
        .map(|r| {
            let (version, created, sequence, rows, level) = match r.header {
                Some(FileHeader::Current(h)) => (
                    Some(2u8),
                    Some(h.created_unix_us),
                    Some(h.sequence),
                    Some(h.row_count),
                    Some(h.level),
                ),
                Some(FileHeader::Legacy { .. }) => (Some(1u8), None, None, None, None),
                None => (None, None, None, None, None),
            };
            let status = match r.status {
                Ok(()) => atoms::ok().encode(env),
                Err(reason) => reason_atom(env, &Error::without_path(reason)),
            };
            let role = Atom::from_str(env, r.role.as_str())
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::nil().encode(env));
            let fields = [
                path_term(env, Some(&r.path)),
                role,
                r.size.encode(env),
                r.modified_unix_us.encode(env),
                opt(env, version),
                opt(env, created),
                opt(env, sequence),
                opt(env, rows),
                opt(env, level),
                status,
            ];
            rustler::types::tuple::make_tuple(env, &fields)
        })
        .collect();
    (atoms::ok(), list).encode(env)
}

rustler::init!("Elixir.PropertyTable.Persist.Native");
