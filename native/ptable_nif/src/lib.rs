//! Rustler glue for `PropertyTable.Persist.Native`: converts terms (see `terms`) and runs
//! every call that touches files on a dirty I/O scheduler. All logic lives in `ptable_core`.

use ptable_core::{
    count_limit, inspect_dir, list_snapshots, restore_snapshot_keeping, Baselines, PersistConfig,
    PersistPipeline, SnapshotId, StdFs, TableDir, WriteOptions,
};
use rustler::{Binary, Encoder, Env, Resource, ResourceArc, Term};
use std::sync::{Arc, LazyLock};
use terms::{answer, Answer, FileInfo, PersistArgs, RawPath, Snapshot, Status};

mod restore;
mod terms;

/// A persist in progress (holds the table directory's lock until closed or collected).
struct SessionResource(PersistPipeline);
type Session = ResourceArc<SessionResource>;

/// Largest chunk `persist_append_nowait` copies on a normal scheduler (a copy well under 1 ms).
const INLINE_APPEND_MAX: usize = 1 << 20;

#[rustler::resource_impl]
impl Resource for SessionResource {}

/// What this VM knows of each table directory's persisted state: the change indexes that let
/// a persist append only what changed.
pub(crate) static BASELINES: LazyLock<Arc<Baselines>> = LazyLock::new(Default::default);

/// Starts a persist of the table directory `dir`: creates it, takes its lock (`busy` if
/// another writer has it). Encodes its answer itself: a resource is not unwind-safe, so a
/// NIF cannot return one inside a value.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_begin<'a>(env: Env<'a>, dir: RawPath, args: PersistArgs) -> Term<'a> {
    let options = WriteOptions { level: args.level, chunk_rows: args.chunk_rows };
    let keep = count_limit(args.max_quarantined);
    let baselines = Some(Arc::clone(&BASELINES));
    let config = PersistConfig { baselines, log_compaction: args.log_compaction, full: args.full };
    let (fs, dir, rows) = (Arc::new(StdFs), TableDir::new(dir.0), args.expected_rows);
    let pipeline = PersistPipeline::begin(fs, dir, options, rows, keep, config);
    answer(pipeline.map(|p| ResourceArc::new(SessionResource(p)))).encode(env)
}

/// Queues one chunk for the writer thread if there is room right away, else `:full` (also
/// for a chunk too large to copy quickly). On a normal scheduler: a dirty call per chunk
/// would cost two thread switches, and a small machine a third runnable thread.
#[rustler::nif]
fn persist_append_nowait(session: Session, chunk: Binary, rows: u64) -> Status {
    if chunk.len() > INLINE_APPEND_MAX {
        return Status::Full;
    }
    // Never waits for the lock (only a call from another process could hold it).
    match session.0.try_append(chunk.as_slice(), rows) {
        Ok(queued) => Status::ok_or(queued, Status::Full),
        Err(e) => Status::Error(e.into()),
    }
}

/// Queues one chunk, waiting while the writer thread's queue is full.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_append_wait(session: Session, chunk: Binary, rows: u64) -> Status {
    session.0.append(chunk.as_slice(), rows).into()
}

/// Finishes and installs the file (or finds the table unchanged). With `release`, then ends
/// the session whatever the outcome: a persist without a snapshot needs no other dirty call.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_commit(session: Session, release: bool) -> Status {
    // An unchanged table (nothing written) is as much a success as a new file.
    let result = session.0.commit().map(|_| ());
    if release {
        session.0.close();
    }
    result.into()
}

/// After a commit: copies the stable file to a new snapshot, applies retention.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_snapshot(session: Session, max_snapshots: u64) -> Answer<String> {
    let max = count_limit(max_snapshots);
    let id = session.0.snapshot(max, &mut SnapshotId::random);
    answer(id).map(|id| id.as_str().to_owned())
}

/// `:ok` for a session over already (closed, or released by its commit), else `:busy`.
#[rustler::nif]
fn persist_close_nowait(session: Session) -> Status {
    // Never waits for the lock: a dirty call may hold it while it writes.
    Status::ok_or(session.0.is_closed_now(), Status::Busy)
}

/// Ends the session: waits for the writer thread, removes an uncommitted tmp file, unlocks.
#[rustler::nif(schedule = "DirtyIo")]
fn persist_close_wait(session: Session) -> Status {
    session.0.close();
    Status::Ok
}

/// The table directory's snapshots, oldest first.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_list(dir: RawPath) -> Answer<Vec<Snapshot>> {
    let entries = answer(list_snapshots(&StdFs, &TableDir::new(dir.0)))?;
    Ok(entries.iter().map(Snapshot::from).collect())
}

/// Installs snapshot `id` as the stable file.
#[rustler::nif(schedule = "DirtyIo")]
fn snapshot_restore(dir: RawPath, id: Binary, max_quarantined: u64) -> Status {
    let id = std::str::from_utf8(id.as_slice()).unwrap_or("");
    let (keep, dir) = (count_limit(max_quarantined), TableDir::new(dir.0));
    BASELINES.forget(&dir);
    restore_snapshot_keeping(&StdFs, &dir, id, keep).into()
}

/// Every file of the table directory, as `%FileInfo{}`s.
#[rustler::nif(schedule = "DirtyIo")]
fn inspect(dir: RawPath, verify: bool) -> Answer<Vec<FileInfo>> {
    let reports = answer(inspect_dir(&StdFs, &TableDir::new(dir.0), verify))?;
    Ok(reports.iter().map(FileInfo::from).collect())
}

rustler::init!("Elixir.PropertyTable.Persist.Native");
