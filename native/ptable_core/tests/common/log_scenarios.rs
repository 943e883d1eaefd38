//! Table directories with a change log on the simulated filesystem, and persists and
//! restores of them as the NIF runs them (`crash_states_log.rs`).
//!
//! Tables are [`Rows`]: `{<<"p/KEY">>, <<VALUE>>}` pairs, compared as sorted pair bytes, so
//! a restore that mixes two versions (a record half applied, a row twice) is caught.

use super::options;
use super::scenarios::{arc, table};
use super::simfs::{NodeKind, SimFs, State};
use ptable_core::etf_rows;
use ptable_core::pipeline::open_restore;
use ptable_core::table_dir::Baseline;
use ptable_core::Fs;
use ptable_core::{
    Baselines, CommitOutcome, PersistConfig, PersistPipeline, PersistSession, Reason,
    RestorePipeline,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::restore_steps::{pull_pairs, stream_pairs};

/// Rows per chunk: every table has several chunks, so the writer thread starts.
pub const ROWS_PER_CHUNK: usize = 25;
/// The default `:log_compaction`.
pub const LOG_COMPACTION: f64 = 0.25;
/// Quarantined files a restore keeps (the Elixir default).
pub const MAX_QUARANTINED: usize = 5;

/// A table: key -> value generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows(pub BTreeMap<u32, u32>);

/// A table's contents as a restore gives them: every pair's bytes, sorted.
pub type PairSet = Vec<Vec<u8>>;

fn binary(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![109];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A value that compresses about as badly as real sensor readings: 32 hex digits of a
/// hash of key and generation.
fn value(key: u32, generation: u32) -> Vec<u8> {
    let mut x = (u64::from(key) << 32 | u64::from(generation)) ^ 0x9E37_79B9_7F4A_7C15;
    let mut text = format!("v{generation}:");
    for _ in 0..2 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 29;
        text.push_str(&format!("{x:016x}"));
    }
    text.into_bytes()
}

impl Rows {
    /// Keys `0..n`, generation 0.
    pub fn new(n: u32) -> Self {
        Rows((0..n).map(|k| (k, 0)).collect())
    }

    pub fn pair(key: u32, generation: u32) -> Vec<u8> {
        let mut out = vec![104, 2];
        out.extend(binary(format!("p/{key}").as_bytes()));
        out.extend(binary(&value(key, generation)));
        out
    }

    pub fn pairs(&self) -> PairSet {
        let mut v: PairSet = self.0.iter().map(|(k, g)| Self::pair(*k, *g)).collect();
        v.sort();
        v
    }

    /// The chunks a persist hands over (with their row counts), in key order: like an ETS
    /// traversal, the same for the same contents, so a table equal to a full file's is
    /// handed over chunk for chunk as that file holds it.
    pub fn chunks(&self) -> Vec<(Vec<u8>, u64)> {
        let pairs: Vec<Vec<u8>> = self.0.iter().map(|(k, g)| Self::pair(*k, *g)).collect();
        pairs
            .chunks(ROWS_PER_CHUNK)
            .map(|c| {
                let mut out = Vec::new();
                etf_rows::encode_list(c.iter().map(Vec::as_slice), &mut out).expect("encode");
                (out, c.len() as u64)
            })
            .collect()
    }

    /// This table with every `every`-th row (from `from`) given a new generation, the rows
    /// in `deletes` removed and `inserts` new keys (from 10000 + `salt`) added.
    pub fn changed(&self, from: u32, every: u32, deletes: &[u32], inserts: u32, salt: u32) -> Self {
        let mut rows = self.0.clone();
        for (k, g) in rows.iter_mut() {
            if *k >= from && (*k - from).is_multiple_of(every.max(1)) {
                *g += 1 + salt;
            }
        }
        for k in deletes {
            rows.remove(k);
        }
        for i in 0..inserts {
            rows.insert(10_000 + salt * 100 + i, salt);
        }
        Rows(rows)
    }

    /// A small change: one row updated, one deleted, one inserted.
    pub fn small_change(&self, salt: u32) -> Self {
        let keys: Vec<u32> = self.0.keys().copied().collect();
        let update = keys[(salt as usize * 7) % keys.len()];
        let delete = keys[(salt as usize * 13 + 3) % keys.len()];
        let mut rows = self.0.clone();
        *rows.get_mut(&update).expect("key") += 1;
        if delete != update {
            rows.remove(&delete);
        }
        rows.insert(20_000 + salt, salt);
        Rows(rows)
    }

    /// A change too large for the log: most rows get a new value.
    pub fn big_change(&self, salt: u32) -> Self {
        self.changed(0, 1, &[], 3, salt)
    }
}

pub fn config(baselines: &Arc<Baselines>, full: bool) -> PersistConfig {
    PersistConfig {
        baselines: Some(Arc::clone(baselines)),
        log_compaction: LOG_COMPACTION,
        full,
    }
}

/// What a persist did, as the wrapper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub outcome: CommitOutcome,
    /// The first attempt answered `restart` and a full write followed (a compaction when
    /// a log was there).
    pub restarted: bool,
}

/// One persist attempt straight on a session: begin, append every chunk, commit.
fn attempt_straight(
    fs: &SimFs,
    baselines: &Arc<Baselines>,
    rows: &Rows,
    full: bool,
) -> ptable_core::Result<CommitOutcome> {
    let mut session =
        PersistSession::begin_with(arc(fs), table(), options(3), config(baselines, full))?;
    session.expect_rows(rows.0.len() as u64);
    for (chunk, n) in rows.chunks() {
        session.append(&chunk, n)?;
    }
    session.commit()
}

/// One persist attempt as the NIF runs it: through the writer thread of a pipeline, every
/// chunk queued without waiting when there is room; the pipeline closed after the commit.
fn attempt_threaded(
    fs: &SimFs,
    baselines: &Arc<Baselines>,
    rows: &Rows,
    full: bool,
) -> ptable_core::Result<CommitOutcome> {
    let pipeline = PersistPipeline::begin(
        arc(fs),
        table(),
        options(3),
        rows.0.len() as u64,
        MAX_QUARANTINED,
        config(baselines, full),
    )?;
    let queued = rows
        .chunks()
        .iter()
        .try_for_each(|(c, n)| match pipeline.try_append(c, *n) {
            Ok(true) => Ok(()),
            Ok(false) => pipeline.append(c, *n),
            Err(e) => Err(e),
        });
    let outcome = queued.and_then(|()| pipeline.commit());
    pipeline.close();
    outcome
}

/// A persist as `PropertyTable.Persist.Write` runs it: with the change log, and again as a
/// full write when the first attempt answers `restart`. `threaded`: through the writer
/// thread.
pub fn persist_rows(
    fs: &SimFs,
    baselines: &Arc<Baselines>,
    rows: &Rows,
    threaded: bool,
) -> ptable_core::Result<Persisted> {
    let attempt = |full| {
        if threaded {
            attempt_threaded(fs, baselines, rows, full)
        } else {
            attempt_straight(fs, baselines, rows, full)
        }
    };
    match attempt(false) {
        Err(e) if e.reason == Reason::Restart => attempt(true).map(|outcome| Persisted {
            outcome,
            restarted: true,
        }),
        other => other.map(|outcome| Persisted {
            outcome,
            restarted: false,
        }),
    }
}

/// What a restore gave: the sorted pairs and the reasons of the files (or log tail) it
/// skipped, or why it failed.
pub type Restored = Result<(PairSet, Vec<Reason>), Reason>;

/// Restores the table directory of `fs` as the NIF does: the newest file that verifies and
/// its log (corrupt files moved aside when `quarantine`), replayed straight (`pull` on the
/// calling thread) or through the reader thread (`threaded`). With `baselines`, a restore
/// of the stable file leaves the directory's baseline there.
pub fn restore_rows(
    fs: &SimFs,
    threaded: bool,
    quarantine: bool,
    baselines: Option<&Arc<Baselines>>,
) -> Restored {
    let keep = quarantine.then_some(MAX_QUARANTINED);
    let opened = open_restore(fs, &table(), keep, baselines);
    let (replay, _) = opened.replay.map_err(|e| e.reason)?;
    let skipped = opened.skipped;
    let pipeline = RestorePipeline::replaying(replay);
    let pairs = if threaded {
        stream_pairs(&pipeline).map_err(|e| e.reason)
    } else {
        pull_pairs(&pipeline).map_err(|e| e.reason)
    };
    pipeline.close();
    let mut pairs = pairs?;
    pairs.sort();
    Ok((pairs, skipped.into_iter().map(|e| e.reason).collect()))
}

/// A table directory before an operation, with the baseline the VM holds.
#[derive(Clone)]
pub struct LogStart {
    pub name: &'static str,
    pub state: State,
    /// The baseline of the VM that persists next (`None`: it has none, a full write).
    pub baseline: Option<Baseline>,
    /// The table a restore gives now.
    pub rows: Rows,
    /// The tables a restore may give after a crash before the operation (the current one
    /// first).
    pub old: Vec<Rows>,
}

impl LogStart {
    /// A fresh `Baselines` holding this start's baseline.
    pub fn baselines(&self) -> Arc<Baselines> {
        let baselines = Arc::new(Baselines::new());
        if let Some(b) = &self.baseline {
            baselines.put(&table(), b.clone());
        }
        baselines
    }
}

/// Builds a start: runs `persists` (each a table; straight on sessions) from a fresh
/// directory with one `Baselines`, checking each `outcome`, makes everything durable and
/// keeps the baseline they leave.
pub fn build_start(name: &'static str, persists: &[(Rows, Expect)]) -> LogStart {
    let fs = super::scenarios::fresh();
    let baselines = Arc::new(Baselines::new());
    for (i, (rows, expect)) in persists.iter().enumerate() {
        let done = persist_rows(&fs, &baselines, rows, false).expect("start persist");
        assert!(
            expect.matches(done),
            "{name}: persist {i} gave {done:?}, expected {expect:?}"
        );
    }
    fs.with_state(State::sync_everything);
    let rows = persists.last().expect("a persist").0.clone();
    let restored = restore_rows(&fs, false, false, None).expect("start restores");
    assert_eq!(restored.0, rows.pairs(), "{name}");
    LogStart {
        name,
        state: fs.state(),
        baseline: baselines.take(&table()),
        rows: rows.clone(),
        old: vec![rows.clone()],
    }
}

/// The outcome a persist of a start or scenario must have, so that each scenario runs the
/// path it is named after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A full write without a restart.
    Written,
    /// A record appended to the log.
    Appended,
    /// `restart`, then a full write (a compaction when a log was there).
    Restarted,
    /// Nothing to write.
    Unchanged,
}

impl Expect {
    pub fn matches(&self, p: Persisted) -> bool {
        match self {
            Expect::Written => p.outcome == CommitOutcome::Written && !p.restarted,
            Expect::Appended => matches!(p.outcome, CommitOutcome::Appended(_)) && !p.restarted,
            Expect::Restarted => p.outcome == CommitOutcome::Written && p.restarted,
            Expect::Unchanged => p.outcome == CommitOutcome::Unchanged && !p.restarted,
        }
    }
}

/// `start` with the log's last `cut` bytes gone (a record cut by a power loss, its prefix
/// durable) and the baseline a restarted VM rebuilds by restoring it: the old table is the
/// one before the cut record.
pub fn with_torn_tail(start: &LogStart, name: &'static str, torn: &Rows, cut: usize) -> LogStart {
    let fs = SimFs::from_state(start.state.clone());
    let baselines = start.baselines();
    let done = persist_rows(&fs, &baselines, torn, false).expect("persist to tear");
    assert!(Expect::Appended.matches(done), "{name}: {done:?}");
    let log = table().log();
    fs.with_state(|s| {
        let ino = s.lookup(&log).expect("a log");
        let NodeKind::File(f) = &mut s.nodes[ino].kind else {
            panic!("the log is a file")
        };
        let len = f.current.len() - cut;
        f.current.truncate(len);
        s.sync_everything();
    });
    let baselines = Arc::new(Baselines::new());
    let (pairs, skipped) = restore_rows(&fs, false, false, Some(&baselines)).expect("restores");
    assert_eq!(
        pairs,
        start.rows.pairs(),
        "{name}: the torn record is not applied"
    );
    assert_eq!(skipped, vec![Reason::LogTail], "{name}");
    LogStart {
        name,
        state: fs.state(),
        baseline: Some(
            baselines
                .take(&table())
                .expect("a restore leaves a baseline"),
        ),
        rows: start.rows.clone(),
        old: start.old.clone(),
    }
}

/// `start` with the last byte of its stable file flipped: a restore gives the backup (with
/// its log, if any), and moves the stable file aside.
pub fn with_rotten_stable(start: &LogStart, name: &'static str, backup: &Rows) -> LogStart {
    let fs = SimFs::from_state(start.state.clone());
    let stable = table().stable();
    fs.with_state(|s| {
        let ino = s.lookup(&stable).expect("a stable file");
        let NodeKind::File(f) = &mut s.nodes[ino].kind else {
            panic!("the stable file is a file")
        };
        let at = f.current.len() - 3;
        f.current[at] ^= 0x40;
        s.sync_everything();
    });
    let restored = restore_rows(&fs, false, false, None).expect("restores the backup");
    assert_eq!(restored.0, backup.pairs(), "{name}");
    LogStart {
        name,
        state: fs.state(),
        baseline: None,
        rows: backup.clone(),
        old: vec![backup.clone()],
    }
}

/// `start` as a restarted VM finds it: the baseline is the one a restore rebuilds.
pub fn after_vm_restart(start: &LogStart, name: &'static str) -> LogStart {
    let fs = SimFs::from_state(start.state.clone());
    let baselines = Arc::new(Baselines::new());
    let (pairs, _) = restore_rows(&fs, true, true, Some(&baselines)).expect("restores");
    assert_eq!(pairs, start.rows.pairs(), "{name}");
    LogStart {
        name,
        state: fs.state(),
        baseline: Some(
            baselines
                .take(&table())
                .expect("a restore leaves a baseline"),
        ),
        ..start.clone()
    }
}

/// The names in the table directory (for messages).
pub fn names(state: &State) -> Vec<String> {
    state.names(Path::new(super::scenarios::TABLE))
}

/// Crash states of a torn append beyond the cuts of `crash.rs` (which cuts a write at its
/// middle and one byte short): for each file that has durable bytes and writes pending past
/// them (a record appended in place), the last write cut at each of the record header's
/// field boundaries and at quarters of its length, and, beyond the conservative model, the
/// file grown by that write with zeros where its bytes did not arrive (what a filesystem
/// that makes the size durable before the data leaves). Every other pending change all
/// reached the disk, or none did.
pub fn torn_append_states(state: &State) -> Vec<(String, State)> {
    let mut out = Vec::new();
    for (ino, node) in state.nodes.iter().enumerate() {
        let NodeKind::File(f) = &node.kind else {
            continue;
        };
        let appends = !f.durable.is_empty()
            && f.pending
                .iter()
                .all(|op| op.offset() as usize >= f.durable.len());
        let Some(last) = f.pending.last().filter(|_| appends) else {
            continue;
        };
        let len = last.len();
        let before = {
            let mut buf = f.durable.clone();
            for op in &f.pending[..f.pending.len() - 1] {
                op.apply(&mut buf, usize::MAX);
            }
            buf
        };
        let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
        let mut cuts: Vec<usize> = [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 44, 47, 48, 49, 56]
            .into_iter()
            .chain([len / 4, len / 2, 3 * len / 4, len.saturating_sub(8)])
            .chain([len.saturating_sub(2), len.saturating_sub(1)])
            .filter(|&k| k > 0 && k < len)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        for keep in cuts {
            let mut buf = before.clone();
            last.apply(&mut buf, keep);
            variants.push((format!("last write cut at {keep}/{len}"), buf.clone()));
            buf.resize(last.offset() as usize + len, 0);
            variants.push((format!("last write: {keep}/{len} bytes, then zeros"), buf));
        }
        let mut zeros = before.clone();
        zeros.resize(last.offset() as usize + len, 0);
        variants.push((format!("last write: {len} zeros"), zeros));
        for (label, bytes) in variants {
            for others in [true, false] {
                let mut s = if others {
                    let mut s = state.clone();
                    s.sync_everything();
                    s
                } else {
                    super::crash::durable_only(state)
                };
                let NodeKind::File(file) = &mut s.nodes[ino].kind else {
                    unreachable!("the same inode")
                };
                file.durable = bytes.clone();
                file.current = bytes.clone();
                let others = if others { "all" } else { "none" };
                out.push((
                    format!("#{ino}: {label}; other pending changes: {others}"),
                    s,
                ));
            }
        }
    }
    out
}

/// `start` with small changes appended (`salt` counting up) until the next one would take
/// the log past its compaction threshold (found by trying it on a copy): that one is
/// returned with the start, and its persist compacts for want of room.
pub fn with_full_log(start: &LogStart, name: &'static str, salt: u32) -> (LogStart, Rows) {
    let fs = SimFs::from_state(start.state.clone());
    let baselines = start.baselines();
    let mut rows = start.rows.clone();
    for i in 0..200 {
        let next = rows.small_change(salt + i);
        let probe = SimFs::from_state(fs.state());
        let probe_baselines = Arc::new(Baselines::new());
        if let Some(b) = baselines.take(&table()) {
            probe_baselines.put(&table(), b.clone());
            baselines.put(&table(), b);
        }
        let tried = persist_rows(&probe, &probe_baselines, &next, false).expect("probe");
        if Expect::Restarted.matches(tried) {
            assert!(i >= 2, "{name}: the log filled after {i} records");
            fs.with_state(State::sync_everything);
            let full = LogStart {
                name,
                state: fs.state(),
                baseline: baselines.take(&table()),
                rows: rows.clone(),
                old: vec![rows],
            };
            return (full, next);
        }
        let done = persist_rows(&fs, &baselines, &next, false).expect("append");
        assert!(Expect::Appended.matches(done), "{name}: {done:?}");
        rows = next;
    }
    panic!("{name}: the log never filled")
}

/// `start` after a compaction cut short once its log was renamed to the backup log's name
/// (the stable file not yet renamed): the base's log is under the backup log's name, and
/// the baseline is the one a restarted VM rebuilds by restoring it.
pub fn with_log_as_backup_log(start: &LogStart, name: &'static str) -> LogStart {
    let fs = SimFs::from_state(start.state.clone());
    fs.rename(&table().log(), &table().backup_log())
        .expect("a log to rename");
    fs.with_state(State::sync_everything);
    after_vm_restart(
        &LogStart {
            state: fs.state(),
            ..start.clone()
        },
        name,
    )
}

/// `start` after a persist of `rows` whose append failed at its last call of `kind` on
/// `path` (EIO): what that call should have made durable is not, though a restore (which
/// reads what the OS has, durable or not) sees it. The VM then restarted: its baseline is
/// the one a restore rebuilds. A restore may give the start's table or `rows`.
pub fn after_failed_sync(
    start: &LogStart,
    name: &'static str,
    rows: &Rows,
    kind: super::simfs::CallKind,
    path: &Path,
) -> LogStart {
    let probe = SimFs::from_state(start.state.clone());
    probe.reset_calls();
    let done = persist_rows(&probe, &start.baselines(), rows, false).expect("probe");
    assert!(Expect::Appended.matches(done), "{name}: {done:?}");
    let index = probe
        .calls()
        .iter()
        .rposition(|c| c.kind == kind && c.path == path)
        .unwrap_or_else(|| panic!("{name}: no {kind:?} of {}", path.display()));
    let fs = SimFs::from_state(start.state.clone());
    fs.reset_calls();
    fs.inject_fault(index, 5);
    let err = persist_rows(&fs, &start.baselines(), rows, false).expect_err("the sync fails");
    assert_eq!(err.reason, Reason::Os("eio"), "{name}");
    fs.clear_fault();
    let mut old = start.old.clone();
    old.push(rows.clone());
    after_vm_restart(
        &LogStart {
            state: fs.state(),
            rows: rows.clone(),
            old,
            ..start.clone()
        },
        name,
    )
}

/// `start` as a VM without its baseline finds it (it has none for this directory: logs
/// disabled, a snapshot's `full` persist, or a failed persist dropped it).
pub fn without_baseline(start: &LogStart, name: &'static str) -> LogStart {
    LogStart {
        name,
        baseline: None,
        ..start.clone()
    }
}

/// `start` after a restore as the NIF runs it (corrupt files moved aside), everything
/// durable; the VM that persists next has the baseline that restore left, if any.
pub fn after_restore(start: &LogStart, name: &'static str) -> LogStart {
    let fs = SimFs::from_state(start.state.clone());
    let baselines = Arc::new(Baselines::new());
    let (pairs, _) = restore_rows(&fs, false, true, Some(&baselines)).expect("restores");
    assert_eq!(pairs, start.rows.pairs(), "{name}");
    fs.with_state(State::sync_everything);
    LogStart {
        name,
        state: fs.state(),
        baseline: baselines.take(&table()),
        ..start.clone()
    }
}
