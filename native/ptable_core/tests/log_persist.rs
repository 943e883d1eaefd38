//! Persist and restore with the change log, through the writer and reader threads on the
//! real filesystem: every state of a random history restores exactly, whether the next
//! persist's baseline comes from the last persist or from a restore, and a persist that
//! compared with a baseline refuses to snapshot the stable file (which alone is not the
//! state once a log follows it).

mod change_log_support;
mod common;
mod rng;

use change_log_support::{sorted, Table};
use common::options;
use common::restore_steps::stream_pairs;
use ptable_core::etf_rows;
use ptable_core::format::HeaderV2;
use ptable_core::pipeline::replay::KEPT_RECORDS_BYTES;
use ptable_core::pipeline::{open_restore, BaselineKeeper, Replay};
use ptable_core::table_dir::{open_newest_planned, FoundLog, LogPlanner};
use ptable_core::WriteOptions;
use ptable_core::{
    open_newest_valid, restore_parts, Baselines, CommitOutcome, PersistConfig, PersistPipeline,
    Reason, RestorePipeline, SnapshotId, SourceKind, StdFs, Step, TableDir,
};
use rng::{seed_from_env, Rng};
use std::sync::Arc;

const ROWS_PER_CHUNK: usize = 25;

/// The chunk size the files' headers give: a restore hands out a record's upserts in
/// chunks of at most this many rows, so records of more rows are split.
const HEADER_CHUNK_ROWS: u32 = 8;

fn config(baselines: &Arc<Baselines>, full: bool) -> PersistConfig {
    PersistConfig {
        baselines: Some(Arc::clone(baselines)),
        log_compaction: 0.5,
        full,
    }
}

/// One persist as the wrapper runs it: the chunks through the writer thread, and again
/// with `full` when the log cannot take the change.
fn persist(dir: &TableDir, baselines: &Arc<Baselines>, table: &Table, order: u64) -> CommitOutcome {
    persist_chunked(dir, baselines, table, order, ROWS_PER_CHUNK)
}

/// [`persist`], in chunks of `per_chunk` rows.
fn persist_chunked(
    dir: &TableDir,
    baselines: &Arc<Baselines>,
    table: &Table,
    order: u64,
    per_chunk: usize,
) -> CommitOutcome {
    let chunks = table.chunks(per_chunk, order);
    let attempt = |full| {
        let fs = Arc::new(StdFs);
        let rows = table.rows.len() as u64;
        let pipeline = PersistPipeline::begin(
            fs,
            dir.clone(),
            WriteOptions {
                chunk_rows: HEADER_CHUNK_ROWS,
                ..options(3)
            },
            rows,
            5,
            config(baselines, full),
        )?;
        for chunk in &chunks {
            let rows = etf_rows::all_pairs(chunk).expect("pairs").len() as u64;
            pipeline.append(chunk, rows)?;
        }
        let outcome = pipeline.commit();
        pipeline.close();
        outcome
    };
    match attempt(false) {
        Err(e) if e.reason == Reason::Restart => attempt(true).expect("full persist"),
        other => other.expect("persist"),
    }
}

/// Restores `dir` through the reader thread (leaving the baseline in `baselines`); the
/// sorted pairs.
fn restore(dir: &TableDir, baselines: &Arc<Baselines>) -> Vec<Vec<u8>> {
    restore_keeping(dir, baselines, KEPT_RECORDS_BYTES)
}

/// [`restore`], keeping the log's decoded records between its passes up to `kept_bytes`
/// (0: the log is read again).
fn restore_keeping(dir: &TableDir, baselines: &Arc<Baselines>, kept_bytes: usize) -> Vec<Vec<u8>> {
    let (found, mut skipped, _) = restore_parts(open_newest_valid(&StdFs, dir, None));
    let (file, _kind, log) = found.expect("a valid file");
    let keeper = BaselineKeeper {
        baselines: Arc::clone(baselines),
        dir: dir.clone(),
    };
    let replay =
        Replay::keeping(file, log, Some(keeper), &mut skipped, kept_bytes).expect("replay");
    assert!(skipped.is_empty(), "{skipped:?}");
    let pipeline = RestorePipeline::replaying(replay);
    let out = stream_pairs(&pipeline).unwrap_or_else(|e| panic!("restore failed: {e}"));
    pipeline.close();
    sorted(out)
}

/// Restores `dir` again on the calling thread (no baseline kept): the rows of the largest
/// chunk taken from the log.
fn largest_log_chunk(dir: &TableDir) -> usize {
    let (found, mut skipped, _) = restore_parts(open_newest_valid(&StdFs, dir, None));
    let (file, _kind, log) = found.expect("a valid file");
    let replay = Replay::new(file, log, None, &mut skipped).expect("replay");
    let pipeline = RestorePipeline::replaying(replay);
    let mut largest = 0;
    let mut more = true;
    while more {
        pipeline.pull(&mut |step: Step<'_>| {
            more = match step {
                Step::Chunk {
                    rows, last, path, ..
                } => {
                    if path.extension().is_some_and(|e| e == "log") {
                        largest = largest.max(rows.unwrap_or(0) as usize);
                    }
                    !last
                }
                Step::Done => false,
                Step::Failed(e) => panic!("restore failed: {e}"),
            };
            true
        });
    }
    largest
}

#[test]
fn every_state_of_a_random_history_restores() {
    let seed = seed_from_env("PTABLE_LOG_SEED");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let mut baselines = Arc::new(Baselines::new());
    let mut table = Table::random(&mut rng, 300);
    let mut counts = [0usize; 3];
    let mut largest_log = 0;
    for round in 0..80u64 {
        match rng.below(12) {
            0 => {}
            1 => table.mutate(&mut rng, 40, 20, 20),
            2 => table.mutate(&mut rng, 0, 1, 1),
            _ => {
                let (deletes, inserts) = (rng.below(3), rng.below(3));
                table.mutate(&mut rng, 1, deletes, inserts)
            }
        }
        let outcome = persist(&dir, &baselines, &table, round);
        counts[match outcome {
            CommitOutcome::Appended(_) => 0,
            CommitOutcome::Written => 1,
            CommitOutcome::Unchanged => 2,
        }] += 1;
        // Now and then a new VM: the baseline comes from a restore.
        if rng.below(4) == 0 {
            baselines = Arc::new(Baselines::new());
        }
        // Both ways of the replay's second pass: records kept in memory, or read again.
        let kept_bytes = if round % 2 == 0 {
            KEPT_RECORDS_BYTES
        } else {
            0
        };
        let restored = restore_keeping(&dir, &baselines, kept_bytes);
        assert_eq!(restored, table.pair_set(), "round {round}");
        let largest = largest_log_chunk(&dir);
        assert!(
            largest <= HEADER_CHUNK_ROWS as usize,
            "round {round}: {largest}"
        );
        largest_log = largest_log.max(largest);
    }
    println!(
        "[log persist] appended {}, written {}, unchanged {}",
        counts[0], counts[1], counts[2]
    );
    assert!(
        counts[0] > 30 && counts[1] > 2 && counts[2] > 0,
        "{counts:?}"
    );
    // Records of more upserts than a chunk holds were split.
    assert_eq!(largest_log, HEADER_CHUNK_ROWS as usize);
}

/// A restore looks a base chunk's rows up in the log's plan about a thousand at a time: a
/// base of one 3,000-row chunk, and a log superseding rows all over it, restore exactly,
/// opened as the NIF opens it (the log planned while the base verifies) and the serial way.
#[test]
fn a_base_chunk_of_several_lookup_batches_restores_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let baselines = Arc::new(Baselines::new());
    let mut rng = Rng::new(11);
    let mut table = Table::random(&mut rng, 3000);
    let first = persist_chunked(&dir, &baselines, &table, 1, 3000);
    assert_eq!(first, CommitOutcome::Written);
    table.mutate(&mut rng, 10, 100, 100);
    let second = persist_chunked(&dir, &baselines, &table, 2, 3000);
    assert!(matches!(second, CommitOutcome::Appended(_)), "{second:?}");
    assert_eq!(restore(&dir, &baselines), table.pair_set());
    let opened = open_restore(&StdFs, &dir, None, None);
    assert!(opened.skipped.is_empty(), "{:?}", opened.skipped);
    let (replay, _kind) = opened.replay.expect("a valid file");
    let pipeline = RestorePipeline::replaying(replay);
    let out = stream_pairs(&pipeline).unwrap_or_else(|e| panic!("restore failed: {e}"));
    pipeline.close();
    assert_eq!(sorted(out), table.pair_set());
}

/// Notes the thread each plan was made on.
struct NotingPlanner {
    in_memory: bool,
}

impl LogPlanner for NotingPlanner {
    type Loaded = FoundLog;
    type Planned = Option<String>;

    fn load(&self, found: FoundLog, _base: &HeaderV2) -> FoundLog {
        found
    }

    fn in_memory(&self, _loaded: &FoundLog) -> bool {
        self.in_memory
    }

    fn plan(&self, _loaded: FoundLog) -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }
}

/// A log whose plan needs no file is planned on a thread of its own while the base
/// verifies; one that does, on the calling thread. A plan made for a base that then fails
/// verification is dropped: the backup is restored without the stable file's log.
#[test]
fn a_log_is_planned_beside_its_base_only_when_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let baselines = Arc::new(Baselines::new());
    let mut rng = Rng::new(5);
    let mut table = Table::random(&mut rng, 200);
    persist(&dir, &baselines, &table, 1);
    table.mutate(&mut rng, 100, 0, 0);
    assert_eq!(persist(&dir, &baselines, &table, 2), CommitOutcome::Written);
    table.mutate(&mut rng, 0, 1, 1);
    let appended = persist(&dir, &baselines, &table, 3);
    assert!(
        matches!(appended, CommitOutcome::Appended(_)),
        "{appended:?}"
    );
    for (in_memory, on_plan_thread) in [(true, true), (false, false)] {
        let planner = NotingPlanner { in_memory };
        let source = open_newest_planned(&StdFs, &dir, None, &planner).expect("stable");
        assert_eq!(source.kind, SourceKind::Stable);
        let thread = source.log.expect("its log").expect("a named thread");
        assert_eq!(thread == "ptable_log_plan", on_plan_thread, "{thread}");
    }
    let stable = dir.stable();
    let mut bytes = std::fs::read(&stable).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&stable, bytes).unwrap();
    let planner = NotingPlanner { in_memory: true };
    let source = open_newest_planned(&StdFs, &dir, None, &planner).expect("backup");
    assert_eq!(source.kind, SourceKind::Backup);
    assert!(source.log.is_none());
}

#[test]
fn a_persist_that_compared_with_a_baseline_does_not_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let baselines = Arc::new(Baselines::new());
    let mut rng = Rng::new(7);
    let mut table = Table::random(&mut rng, 100);
    persist(&dir, &baselines, &table, 1);
    table.mutate(&mut rng, 0, 0, 1);
    let chunks = table.chunks(ROWS_PER_CHUNK, 2);
    let fs = Arc::new(StdFs);
    let pipeline = PersistPipeline::begin(
        fs,
        dir.clone(),
        options(3),
        101,
        5,
        config(&baselines, false),
    )
    .unwrap();
    for chunk in &chunks {
        let rows = etf_rows::all_pairs(chunk).unwrap().len() as u64;
        pipeline.append(chunk, rows).unwrap();
    }
    assert!(matches!(pipeline.commit(), Ok(CommitOutcome::Appended(_))));
    let mut ids = || SnapshotId::random();
    let refused = pipeline.snapshot(5, &mut ids).unwrap_err();
    assert_eq!(refused.reason, Reason::Internal);
}

/// Deletes are 8 bytes each in a record, so a log of many of them stays far below the
/// byte threshold while a restore still replays every one: the threshold bounds the log's
/// operations (as a fraction of the base's rows) too.
#[test]
fn the_threshold_bounds_the_logs_operations_as_well_as_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let baselines = Arc::new(Baselines::new());
    let mut rng = Rng::new(11);
    let mut table = Table::random(&mut rng, 200);
    // Incompressible values: the base is about 200 x 2 KiB, so half of it holds hundreds
    // of records of deletes.
    for value in table.rows.values_mut() {
        *value = [109].into_iter().chain(2048u32.to_be_bytes()).collect();
        value.extend(rng.bytes(2048));
    }
    assert_eq!(persist(&dir, &baselines, &table, 1), CommitOutcome::Written);
    let mut keys = table.rows.keys().cloned().collect::<Vec<_>>().into_iter();
    // 0.5 x 200 rows: 100 operations, in records of 30 deletes (each record < 1 KiB).
    let base_len = std::fs::metadata(dir.stable()).unwrap().len();
    let mut outcomes = Vec::new();
    for round in 0..4 {
        let log_len = std::fs::metadata(dir.log()).map_or(0, |m| m.len());
        assert!(log_len < base_len / 20, "log {log_len} of base {base_len}");
        for key in keys.by_ref().take(30) {
            table.rows.remove(&key);
        }
        outcomes.push(persist(&dir, &baselines, &table, 2 + round));
        assert_eq!(restore(&dir, &baselines), table.pair_set(), "round {round}");
    }
    assert!(
        matches!(
            outcomes[..3],
            [
                CommitOutcome::Appended(_),
                CommitOutcome::Appended(_),
                CommitOutcome::Appended(_)
            ]
        ),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3], CommitOutcome::Written, "{outcomes:?}");
}
