//! Persists and restores with the change log as the NIF and the Elixir wrapper run them, on
//! any [`Fs`]: a persist with a directory's [`Baselines`], re-run as a full write when it
//! answers `restart` (as `write.ex` does), straight on a [`PersistSession`] or through the
//! writer thread of a [`PersistPipeline`]; a restore that opens the newest valid file and
//! its log, replays them ([`Replay`], leaving the baseline only when it read the stable
//! file, as `restore_open` does) and takes the chunks on the calling thread
//! ([`RestorePipeline::pull`]) or from the reader thread ([`RestorePipeline::stream`]).
//!
//! Not declared in `common/mod.rs` (the binaries that use it include it by path), so that
//! the tests without a change log do not compile it.
#![allow(dead_code)]

use crate::change_log_support::{sorted, Table};
use crate::common::options;
use crate::common::restore_steps::{pull_pairs, stream_pairs};
use crate::common::scenarios::table;
use ptable_core::pipeline::{BaselineKeeper, Replay};
use ptable_core::table_dir::Baseline;
use ptable_core::{
    etf_rows, open_newest_valid, restore_parts, Baselines, CommitOutcome, Error, Fs, PersistConfig,
    PersistPipeline, PersistSession, Reason, RestorePipeline, SourceKind,
};
use std::sync::Arc;

/// Rows per chunk: a table of a few dozen rows streams several chunks, so the writer
/// thread starts (it takes the chunks from the second on).
pub const ROWS_PER_CHUNK: usize = 25;
/// Quarantined files a persist or a restore keeps.
pub const MAX_QUARANTINED: usize = 5;

/// Where the chunks go: the calling thread, or the pipelines' threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Straight,
    Piped,
}

/// Where a persist returned its error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Begin,
    Append,
    Commit,
}

/// One persist: what it returned (the full write's answer when it restarted), whether it
/// restarted, and where its error came from.
#[derive(Debug)]
pub struct Persisted {
    pub result: Result<CommitOutcome, Error>,
    pub restarted: bool,
    pub failed_at: Option<Stage>,
}

fn config(baselines: &Arc<Baselines>, full: bool) -> PersistConfig {
    PersistConfig {
        baselines: Some(Arc::clone(baselines)),
        log_compaction: 0.5,
        full,
    }
}

fn chunk_rows(chunk: &[u8]) -> u64 {
    etf_rows::all_pairs(chunk).expect("pairs").len() as u64
}

/// Persists `t` (its chunks in the order `order` gives) as `write.ex` does: a `restart`
/// answer is followed by the same persist with `full`.
pub fn persist(
    fs: Arc<dyn Fs>,
    baselines: &Arc<Baselines>,
    t: &Table,
    order: u64,
    threads: Threads,
) -> Persisted {
    let chunks = t.chunks(ROWS_PER_CHUNK, order);
    let rows = t.rows.len() as u64;
    let attempt = |full| {
        let config = config(baselines, full);
        match threads {
            Threads::Straight => persist_straight(Arc::clone(&fs), &chunks, rows, config),
            Threads::Piped => persist_piped(Arc::clone(&fs), &chunks, rows, config),
        }
    };
    match attempt(false) {
        Err((e, _)) if e.reason == Reason::Restart => {
            let full = attempt(true);
            Persisted {
                failed_at: full.as_ref().err().map(|(_, stage)| *stage),
                result: full.map_err(|(e, _)| e),
                restarted: true,
            }
        }
        other => Persisted {
            failed_at: other.as_ref().err().map(|(_, stage)| *stage),
            result: other.map_err(|(e, _)| e),
            restarted: false,
        },
    }
}

type Attempt = Result<CommitOutcome, (Error, Stage)>;

fn persist_straight(
    fs: Arc<dyn Fs>,
    chunks: &[Vec<u8>],
    rows: u64,
    config: PersistConfig,
) -> Attempt {
    let mut session = PersistSession::begin_with(fs, table(), options(3), config)
        .map_err(|e| (e, Stage::Begin))?;
    session.expect_rows(rows);
    session.set_max_quarantined(MAX_QUARANTINED);
    for chunk in chunks {
        session
            .append(chunk, chunk_rows(chunk))
            .map_err(|e| (e, Stage::Append))?;
    }
    session.commit().map_err(|e| (e, Stage::Commit))
}

/// As the NIF: each chunk queued without waiting when there is room (else waiting), the
/// commit taking the session back from the writer thread, the pipeline closed after.
fn persist_piped(fs: Arc<dyn Fs>, chunks: &[Vec<u8>], rows: u64, config: PersistConfig) -> Attempt {
    let pipeline = PersistPipeline::begin(fs, table(), options(3), rows, MAX_QUARANTINED, config)
        .map_err(|e| (e, Stage::Begin))?;
    let queued = chunks.iter().try_for_each(|chunk| {
        let rows = chunk_rows(chunk);
        match pipeline.try_append(chunk, rows) {
            Ok(true) => Ok(()),
            Ok(false) => pipeline.append(chunk, rows),
            Err(e) => Err(e),
        }
    });
    let result = match queued {
        Err(e) => Err((e, Stage::Append)),
        Ok(()) => pipeline.commit().map_err(|e| (e, Stage::Commit)),
    };
    pipeline.close();
    result
}

/// What a restore gave: the sorted pairs (or why none), the failures it reported on the
/// way (`skipped`), and which file it read.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub pairs: Result<Vec<Vec<u8>>, Error>,
    pub skipped: Vec<Error>,
    pub kind: Option<SourceKind>,
}

impl Restored {
    pub fn pairs(&self) -> Result<&Vec<Vec<u8>>, Reason> {
        self.pairs.as_ref().map_err(|e| e.reason)
    }
}

/// Restores the table directory as `restore_open` and the wrapper do; with `keeper`, the
/// baseline of a restored stable file is left there. With `quarantine`, corrupt files are
/// moved aside (as the NIF does); without, nothing on disk changes.
pub fn restore(
    fs: &dyn Fs,
    keeper: Option<&Arc<Baselines>>,
    quarantine: bool,
    threads: Threads,
) -> Restored {
    let keep = quarantine.then_some(MAX_QUARANTINED);
    let (found, mut skipped, _) = restore_parts(open_newest_valid(fs, &table(), keep));
    let (file, kind, log) = match found {
        Ok(found) => found,
        Err(e) => {
            return Restored {
                pairs: Err(e),
                skipped,
                kind: None,
            }
        }
    };
    let keeper = keeper
        .filter(|_| kind == SourceKind::Stable)
        .map(|baselines| BaselineKeeper {
            baselines: Arc::clone(baselines),
            dir: table(),
        });
    let pairs = Replay::new(file, log, keeper, &mut skipped).and_then(|replay| {
        let pipeline = RestorePipeline::replaying(replay);
        let pairs = match threads {
            Threads::Straight => pull_pairs(&pipeline),
            Threads::Piped => stream_pairs(&pipeline),
        };
        pipeline.close();
        pairs.map(sorted)
    });
    Restored {
        pairs,
        skipped,
        kind: Some(kind),
    }
}

/// A copy of what `baselines` holds for the table directory, in a new [`Baselines`].
pub fn copy_baselines(baselines: &Baselines) -> Arc<Baselines> {
    with_baseline(baselines_of(baselines).as_ref())
}

/// The baseline `baselines` holds for the table directory (left there).
pub fn baselines_of(baselines: &Baselines) -> Option<Baseline> {
    let baseline = baselines.take(&table())?;
    baselines.put(&table(), baseline.clone());
    Some(baseline)
}

/// A [`Baselines`] holding `baseline` for the table directory.
pub fn with_baseline(baseline: Option<&Baseline>) -> Arc<Baselines> {
    let out = Arc::new(Baselines::new());
    if let Some(b) = baseline {
        out.put(&table(), b.clone());
    }
    out
}
