//! Rustler glue for `PropertyTable.Persist.Native`: converts terms, runs every call that
//! touches files on a dirty I/O scheduler, and turns core errors into
//! `{:error, reason_atom, path | nil}`. All logic lives in `ptable_core`.

use ptable_core::{
    inspect_dir, list_snapshots, restore_snapshot, Error, FileHeader, FileReport, FileStatus,
    PersistPipeline, PersistSession, SnapshotId, StdFs, TableDir, WriteOptions,
};
use rustler::{Atom, Binary, Encoder, Env, Resource, ResourceArc, Term};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod atoms {
    rustler::atoms! { ok, error, done, last, nil, full, busy, bad_file, unsafe_term, unverified }
}

mod restore;

/// A persist in progress (holds the table directory's lock until closed or collected).
struct SessionResource(PersistPipeline);
type Session = ResourceArc<SessionResource>;

/// Largest chunk `persist_append_nowait` copies on a normal scheduler (a copy well under 1 ms).
const INLINE_APPEND_MAX: usize = 1 << 20;

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

/// A path as a binary of its bytes (a path need not be UTF-8), or `nil`.
fn path_term<'a>(env: Env<'a>, path: Option<&Path>) -> Term<'a> {
    let Some(bytes) = path.map(|p| p.as_os_str().as_encoded_bytes()) else {
        return atoms::nil().encode(env);
    };
    let mut out = rustler::NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).to_term(env)
}

/// The atom `name` (names come from fixed sets of static strings), else `fallback`.
fn atom_term<'a>(env: Env<'a>, name: &str, fallback: Atom) -> Term<'a> {
    Atom::from_str(env, name).unwrap_or(fallback).encode(env)
}

fn reason_atom<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    atom_term(env, e.reason.as_str(), atoms::error())
}

/// `{:error, reason, path}`
fn error_term<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    let path = path_term(env, e.path.as_deref());
    (atoms::error(), reason_atom(env, e), path).encode(env)
}

fn ok_or_error<'a>(env: Env<'a>, result: ptable_core::Result<()>) -> Term<'a> {
    result.map_or_else(|e| error_term(env, &e), |()| atoms::ok().encode(env))
}

/// `{:ok, value}` or `{:error, reason, path}`.
fn ok_tuple<'a>(env: Env<'a>, result: ptable_core::Result<impl Encoder>) -> Term<'a> {
    result.map_or_else(|e| error_term(env, &e), |v| (atoms::ok(), v).encode(env))
}

fn ok_or_busy(done: bool) -> Atom {
    if done {
        atoms::ok()
    } else {
        atoms::busy()
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
    let dir = TableDir::new(path_from(&dir));
    let session = PersistSession::begin(Arc::new(StdFs), dir, options).map(|mut session| {
        session.expect_rows(expected_rows);
        ResourceArc::new(SessionResource(PersistPipeline::new(session)))
    });
    ok_tuple(env, session)
}

/// A number of files to keep, decoded as a u64 on every target: more than `usize` can count
/// keeps them all, as the largest `usize` does.
fn count_limit(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

/// Runs `f` on the session once the writer thread has written every chunk, or returns the
/// error that ended the session.
fn with_session<'a>(
    env: Env<'a>,
    session: &SessionResource,
    f: impl FnOnce(&mut PersistSession) -> Term<'a>,
) -> Term<'a> {
    session
        .0
        .with_consumer(f)
        .unwrap_or_else(|e| error_term(env, &e))
}

/// Queues one chunk (the external term format of `rows` rows) for the writer thread, which
/// compresses and appends it, if there is room right away: `:ok`, or `:full` (also for a
/// chunk too large to copy quickly), after which the caller uses `persist_append_wait`.
/// Runs on a normal scheduler: a dirty call per chunk would cost two thread switches, and
/// on a small machine a third runnable thread beside the caller and the writer.
#[rustler::nif]
fn persist_append_nowait<'a>(env: Env<'a>, session: Session, chunk: Binary, rows: u64) -> Term<'a> {
    if chunk.len() > INLINE_APPEND_MAX {
        return atoms::full().encode(env);
    }
    // Never waits for the lock (only a call from another process could hold it).
    match session.0.try_append(chunk.as_slice(), rows) {
        Ok(true) => atoms::ok().encode(env),
        Ok(false) => atoms::full().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Queues one chunk, waiting while the writer thread's queue is full.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_append_wait<'a>(env: Env<'a>, session: Session, chunk: Binary, rows: u64) -> Term<'a> {
    ok_or_error(env, session.0.append(chunk.as_slice(), rows))
}

/// Finishes the file and installs it as the stable file (or finds the table unchanged).
/// With `release`, then ends the session whatever the outcome, as `persist_close` would:
/// a persist without a snapshot needs no further dirty call.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_commit<'a>(env: Env<'a>, session: Session, release: bool) -> Term<'a> {
    // An unchanged table (nothing written) is as much a success as a new file.
    let result = with_session(env, &session, |s| ok_or_error(env, s.commit().map(|_| ())));
    if release {
        session.0.close();
    }
    result
}

/// After a commit: copies the stable file to a new snapshot, applies retention.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_snapshot<'a>(env: Env<'a>, session: Session, max_snapshots: u64) -> Term<'a> {
    with_session(env, &session, |s| {
        let id = s.snapshot(count_limit(max_snapshots), &mut SnapshotId::random);
        ok_tuple(env, id.map(|id| id.as_str().to_owned()))
    })
}

/// `:ok` for a session that is over already (closed, or released by its commit) without
/// leaving the normal scheduler, else `:busy`: `persist_close_wait` must end it.
#[rustler::nif]
fn persist_close_nowait(session: Session) -> Atom {
    // Never waits for the lock: a dirty call may hold it while it writes.
    ok_or_busy(session.0.is_closed_now())
}

/// Ends the session: waits for the writer thread, removes an uncommitted tmp file and
/// releases the lock.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_close_wait(session: Session) -> Atom {
    session.0.close();
    atoms::ok()
}

/// `{:ok, [{id, sequence | nil, created_unix_us}]}` oldest first, or an error.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_list<'a>(env: Env<'a>, dir: Binary) -> Term<'a> {
    let entries = list_snapshots(&StdFs, &TableDir::new(path_from(&dir))).map(|entries| {
        entries
            .iter()
            .map(|e| (e.id.as_str(), e.sequence, e.created_unix_us).encode(env))
            .collect::<Vec<_>>()
    });
    ok_tuple(env, entries)
}

/// Installs snapshot `id` as the stable file.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_restore<'a>(env: Env<'a>, dir: Binary, id: Binary) -> Term<'a> {
    let id = std::str::from_utf8(id.as_slice()).unwrap_or("");
    let dir = TableDir::new(path_from(&dir));
    ok_or_error(env, restore_snapshot(&StdFs, &dir, id))
}

/// `{:ok, [{path, role, size, mtime_us, version, created_us, sequence, rows, level,
/// status}]}`: one tuple per file; fields unknown for a file are `nil`, status is `:ok` (it
/// verifies), `:unverified` (without `verify`: its header is sound) or the reason it fails.
#[rustler::nif(schedule = "DirtyIo")]
fn inspect<'a>(env: Env<'a>, dir: Binary, verify: bool) -> Term<'a> {
    let reports = inspect_dir(&StdFs, &TableDir::new(path_from(&dir)), verify);
    let list = reports.map(|reports| {
        reports
            .iter()
            .map(|r| file_report(env, r))
            .collect::<Vec<_>>()
    });
    ok_tuple(env, list)
}

fn file_report<'a>(env: Env<'a>, r: &FileReport) -> Term<'a> {
    let version = r.header.map(|h| match h {
        FileHeader::Current(_) => 2u8,
        FileHeader::Legacy { .. } => 1,
    });
    let h = match r.header {
        Some(FileHeader::Current(h)) => Some(h),
        _ => None,
    };
    let status = match r.status {
        FileStatus::Valid => atoms::ok().encode(env),
        FileStatus::Unverified => atoms::unverified().encode(env),
        FileStatus::Invalid(reason) => atom_term(env, reason.as_str(), atoms::error()),
    };
    let fields = [
        path_term(env, Some(&r.path)),
        atom_term(env, r.role.as_str(), atoms::nil()),
        r.size.encode(env),
        r.modified_unix_us.encode(env),
        version.encode(env),
        h.map(|h| h.created_unix_us).encode(env),
        h.map(|h| h.sequence).encode(env),
        h.map(|h| h.row_count).encode(env),
        h.map(|h| h.level).encode(env),
        status,
    ];
    rustler::types::tuple::make_tuple(env, &fields)
}

rustler::init!("Elixir.PropertyTable.Persist.Native");
