//! Restore NIFs: open the newest valid file, then hand its chunks to the caller as lists of
//! `{property, value, timestamp}` rows, ready for `:ets.insert/2`: sent as messages by the
//! core's reader thread (`ptable_core::pipeline::restore`) for a file of several chunks, or
//! returned by `restore_rows` for a file of one (starting a thread would be a measurable part
//! of a small table's restore, with nothing to overlap).

use crate::{atom_term, atoms, count_limit, error_term, path_from, path_term, reason_atom};
use ptable_core::etf::uncompressed_term;
use ptable_core::{open_newest_valid, Error, RestorePipeline, StdFs, Step, TableDir};
use rustler::{Atom, Binary, Encoder, Env, OwnedEnv, Resource, ResourceArc, Term};
use std::path::PathBuf;

/// A verified file being restored.
struct ReaderResource(RestorePipeline);
type Reader = ResourceArc<ReaderResource>;

#[rustler::resource_impl]
impl Resource for ReaderResource {}

/// Opens the newest file of `dir` that verifies completely, moving corrupt stable/backup
/// files aside (keeping `max_quarantined`).
/// `{:ok, reader, kind, path, failures, quarantined, chunk_count}` or
/// `{:error, reason, path, failures, quarantined}`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_open<'a>(env: Env<'a>, dir: Binary, max_quarantined: u64) -> Term<'a> {
    let dir = TableDir::new(path_from(&dir));
    match open_newest_valid(&StdFs, &dir, Some(count_limit(max_quarantined))) {
        Ok(source) => {
            let kind = atom_term(env, source.kind.as_str(), atoms::nil());
            let path = path_term(env, Some(source.file.path()));
            // The file is verified and rewound: every chunk is left.
            let chunks = source.file.chunks_left();
            let (skipped, moved) = skipped_and_moved(env, &source.failures, &source.quarantined);
            let reader = ResourceArc::new(ReaderResource(RestorePipeline::new(source.file)));
            (atoms::ok(), reader, kind, path, skipped, moved, chunks).encode(env)
        }
        Err(failure) => {
            let reason = reason_atom(env, &failure.error);
            let path = path_term(env, failure.error.path.as_deref());
            let (skipped, moved) = skipped_and_moved(env, &failure.failures, &failure.quarantined);
            (atoms::error(), reason, path, skipped, moved).encode(env)
        }
    }
}

/// The files a restore skipped, as `{reason, path}`, and where corrupt ones were moved.
fn skipped_and_moved<'a>(
    env: Env<'a>,
    failures: &[Error],
    moved: &[PathBuf],
) -> (Term<'a>, Term<'a>) {
    let failure = |e: &Error| (reason_atom(env, e), path_term(env, e.path.as_deref()));
    let skipped: Vec<_> = failures.iter().map(failure).collect();
    let moved: Vec<_> = moved.iter().map(|p| path_term(env, Some(p))).collect();
    (skipped.encode(env), moved.encode(env))
}

/// The next chunk's rows, each with `timestamp`: `{:ok, rows}` (more chunks follow),
/// `{:last, rows}` (the last chunk, and the whole file checked), `:done` (a file of no
/// chunks, or every chunk handed out), or an error. With `safe`, terms are decoded like
/// `:erlang.binary_to_term(bin, [:safe])`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_rows<'a>(env: Env<'a>, reader: Reader, timestamp: i64, safe: bool) -> Term<'a> {
    let mut answer = atoms::done().encode(env);
    reader.0.pull(&mut |step: Step<'_>| {
        let more;
        (answer, more) = step_answer(env, step, timestamp, safe);
        more
    });
    answer
}

/// Starts the reader thread, which sends the rows of every chunk to the calling process as
/// `{tag, {:ok, rows}}` messages and the last chunk's as `{tag, {:last, rows}}` (see
/// `restore_rows`), or stops at the first `{tag, {:error, reason, path}}`. The rows are
/// built in the message's own environment, so the caller receives them without a copy.
/// It sends at most `STREAMED_CHUNKS` chunks beyond those acknowledged with `restore_ack`.
/// Returns `:ok` or an error.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_stream<'a>(
    env: Env<'a>,
    reader: Reader,
    tag: Term<'a>,
    timestamp: i64,
    safe: bool,
) -> Term<'a> {
    let (caller, tag_env, mut msg_env) = (env.pid(), OwnedEnv::new(), OwnedEnv::new());
    let tag = tag_env.save(tag);
    let send = move |step: Step<'_>| {
        if matches!(step, Step::Failed(_)) {
            // The final message may follow a panic inside an earlier send, which left that
            // send's environment in an unknown state.
            msg_env = OwnedEnv::new();
        }
        let mut more = false;
        let sent = msg_env.send_and_clear(&caller, |env| {
            let answer;
            (answer, more) = step_answer(env, step, timestamp, safe);
            (tag_env.run(|tag_env| tag.load(tag_env).in_env(env)), answer)
        });
        sent.is_ok() && more
    };
    crate::ok_or_error(env, reader.0.stream(send))
}

/// Gives the reader thread one more credit: the caller has inserted a chunk.
#[rustler::nif]
fn restore_ack(reader: Reader) -> Atom {
    reader.0.ack();
    atoms::ok()
}

/// Closes a reader that holds neither a file nor a thread (every chunk was handed out, or
/// it is closed already) without leaving the normal scheduler: `:ok`, or `:busy` when
/// `restore_close_wait` must do it.
#[rustler::nif]
fn restore_close_nowait(reader: Reader) -> Atom {
    // Never waits for the lock: a dirty call may hold it while it decodes a chunk.
    crate::ok_or_busy(reader.0.close_now())
}

/// Closes the file early (it is also closed when the reader is collected). A reader thread
/// is stopped and waited for: it sends nothing after this returns.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_close_wait(reader: Reader) -> Atom {
    reader.0.close();
    atoms::ok()
}

/// The answer for `step` in `env` (`{:ok, rows}`, `{:last, rows}`, `:done` or an error),
/// and whether the stream may go on after it (`false` for an error).
fn step_answer<'a>(env: Env<'a>, step: Step<'_>, timestamp: i64, safe: bool) -> (Term<'a>, bool) {
    let Step::Chunk {
        data,
        rows,
        last,
        path,
    } = step
    else {
        return match step {
            Step::Failed(e) => (error_term(env, &e), false),
            _ => (atoms::done().encode(env), true),
        };
    };
    let tag = if last { atoms::last() } else { atoms::ok() };
    match chunk_rows(env, data, timestamp, safe, rows) {
        Ok(rows) => ((tag, rows).encode(env), true),
        Err(reason) => {
            let path = path_term(env, Some(path));
            ((atoms::error(), reason, path).encode(env), false)
        }
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
