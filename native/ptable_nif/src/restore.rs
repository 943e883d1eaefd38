//! Restore NIFs: open the newest valid file, then hand its chunks to the caller as lists of
//! `{property, value, timestamp}` rows for `:ets.insert/2`, sent by the core's reader thread
//! for a file of several chunks, or returned by `restore_rows` for a file of one (a thread
//! would cost a small table's restore time, with nothing to overlap).

use crate::terms::{answer, Answer, Failure, Name, RawPath, Status};
use ptable_core::etf::uncompressed_term;
use ptable_core::pipeline::{open_restore, OpenedRestore};
use ptable_core::{count_limit, RestorePipeline, StdFs, Step, TableDir};
use rustler::{
    Encoder, Env, NifMap, NifStruct, NifTaggedEnum, OwnedEnv, Resource, ResourceArc, Term,
};

const BAD_FILE: Name = Name("bad_file");

/// A verified file being restored.
struct ReaderResource(RestorePipeline);
type Reader = ResourceArc<ReaderResource>;

#[rustler::resource_impl]
impl Resource for ReaderResource {}

/// What `restore_open` found: the file to read (or why none), the files it skipped on the
/// way and where corrupt ones were moved.
#[derive(NifStruct)]
#[module = "PropertyTable.Persist.Native.RestoreOpen"]
#[rustler(encode)]
struct RestoreOpen {
    file: Answer<Source>,
    skipped: Vec<Skipped>,
    quarantined: Vec<RawPath>,
}

/// `%{reason, path, offset, fault}`: a file the restore did not use, or (`:log_tail`) the
/// record a change log stops verifying at (`offset`, `fault`; `nil` for other reasons).
#[derive(NifMap)]
#[rustler(encode)]
struct Skipped {
    reason: Name,
    path: Option<RawPath>,
    offset: Option<u64>,
    fault: Option<Name>,
}

impl From<ptable_core::Error> for Skipped {
    fn from(e: ptable_core::Error) -> Self {
        Skipped {
            reason: Name(e.reason.as_str()),
            path: e.path.map(RawPath),
            offset: e.log_stop.map(|at| at.offset),
            fault: e.log_stop.map(|at| Name(at.fault.as_str())),
        }
    }
}

/// The newest file that verified, open and rewound: every chunk is left.
#[derive(NifStruct)]
#[module = "PropertyTable.Persist.Native.Source"]
#[rustler(encode)]
struct Source {
    reader: Reader,
    kind: Name,
    path: RawPath,
    chunks: u64,
}

/// `{:ok, rows}` (more chunks follow), `{:last, rows}` (the last chunk, and the whole file
/// checked), `:done` (no chunk left) or `{:error, failure}`.
#[derive(NifTaggedEnum)]
#[rustler(encode)]
enum Rows<'a> {
    Ok(Term<'a>),
    Last(Term<'a>),
    Done,
    Error(Failure),
}

/// Opens the newest file of `dir` that verifies completely and the change log continuing
/// it (read once, to know which rows it supersedes), moving corrupt stable/backup files
/// aside (keeping `max_quarantined`; `nil` leaves them in place). Restoring the stable file leaves the directory's
/// baseline for the next persist. Encodes its answer itself, as `persist_begin`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_open(env: Env, dir: RawPath, max_quarantined: Option<u64>) -> Term {
    let (keep, dir) = (max_quarantined.map(count_limit), TableDir::new(dir.0));
    let OpenedRestore { replay, skipped, quarantined } =
        open_restore(&StdFs, &dir, keep, Some(&crate::BASELINES));
    RestoreOpen {
        file: answer(replay).map(|(replay, kind)| Source {
            kind: Name(kind.as_str()),
            path: RawPath(replay.file().path().to_path_buf()),
            chunks: replay.chunks_left(),
            reader: ResourceArc::new(ReaderResource(RestorePipeline::replaying(replay))),
        }),
        skipped: skipped.into_iter().map(Skipped::from).collect(),
        quarantined: quarantined.into_iter().map(RawPath).collect(),
    }
    .encode(env)
}

/// The next chunk's rows, each with `timestamp`; with `safe`, decoded like
/// `:erlang.binary_to_term(bin, [:safe])`.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_rows<'a>(env: Env<'a>, reader: Reader, timestamp: i64, safe: bool) -> Rows<'a> {
    let mut answer = Rows::Done;
    reader.0.pull(&mut |step: Step<'_>| {
        let more;
        (answer, more) = step_rows(env, step, timestamp, safe);
        more
    });
    answer
}

/// Starts the reader thread, which sends each answer `restore_rows` would give to the
/// calling process as `{tag, rows}`, built in the message's own environment (received
/// without a copy), and at most `STREAMED_CHUNKS` beyond those acknowledged (`restore_ack`).
#[rustler::nif(schedule = "DirtyIo")]
fn restore_stream(env: Env, reader: Reader, tag: Term, timestamp: i64, safe: bool) -> Status {
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
            (answer, more) = step_rows(env, step, timestamp, safe);
            let tag = tag_env.run(|tag_env| tag.load(tag_env).in_env(env));
            (tag, answer).encode(env)
        });
        sent.is_ok() && more
    };
    reader.0.stream(send).into()
}

/// Gives the reader thread one more credit: the caller has inserted a chunk.
#[rustler::nif]
fn restore_ack(reader: Reader) -> Status {
    reader.0.ack();
    Status::Ok
}

/// `:ok` for a reader that holds neither a file nor a thread (every chunk was handed out,
/// or it is closed already), else `:busy`: `restore_close_wait` must close it.
#[rustler::nif]
fn restore_close_nowait(reader: Reader) -> Status {
    // Never waits for the lock: a dirty call may hold it while it decodes a chunk.
    Status::ok_or(reader.0.close_now(), Status::Busy)
}

/// Closes the file, stopping and waiting for a reader thread: it sends nothing afterwards.
#[rustler::nif(schedule = "DirtyIo")]
fn restore_close_wait(reader: Reader) -> Status {
    reader.0.close();
    Status::Ok
}

/// The answer for `step` in `env`, and whether the stream may go on after it.
fn step_rows<'a>(env: Env<'a>, step: Step<'_>, timestamp: i64, safe: bool) -> (Rows<'a>, bool) {
    let (data, rows, last, path) = match step {
        Step::Chunk { data, rows, last, path } => (data, rows, last, path),
        Step::Done => return (Rows::Done, true),
        Step::Failed(e) => return (Rows::Error(e.into()), false),
    };
    match chunk_rows(env, data, timestamp, safe, rows) {
        Ok(rows) if last => (Rows::Last(rows), true),
        Ok(rows) => (Rows::Ok(rows), true),
        Err(reason) => {
            let path = Some(RawPath(path.to_path_buf()));
            (Rows::Error(Failure { reason, path }), false)
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
) -> Result<Term<'a>, Name> {
    // This library writes chunks uncompressed by term_to_binary; property_table's legacy
    // payloads are compressed, and enif_binary_to_term does not inflate them.
    let Some(bytes) = uncompressed_term(bytes) else {
        return Err(BAD_FILE);
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
        None if safe => return Err(Name("unsafe_term")),
        None => return Err(BAD_FILE),
    };
    let count = pairs.list_length().map_err(|_| BAD_FILE)?;
    if expected_rows.is_some_and(|expected| expected != count as u64) {
        return Err(BAD_FILE);
    }
    let timestamp = timestamp.encode(env);
    let mut rows = Term::list_new_empty(env);
    for pair in pairs.into_list_iterator().map_err(|_| BAD_FILE)? {
        let (property, value): (Term<'a>, Term<'a>) = pair.decode().map_err(|_| BAD_FILE)?;
        rows = rows.list_prepend((property, value, timestamp));
    }
    Ok(rows)
}
