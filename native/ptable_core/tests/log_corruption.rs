//! Corruption sweep over change logs written by the real persist path: every bit flip and
//! every truncation of a log of several records restores a prefix of the history (the base
//! plus its first k records, exactly those before the damage), never wrong rows and never
//! an error while the base is intact, both with the steps pulled on the calling thread and
//! streamed by the reader thread. The same holds with each flip's CRC recomputed, so that
//! only the keyed XXH3 and the structure checks can catch it, and for the backup log that
//! continues the backup file once the stable file is damaged. And the persist after a
//! restore of a damaged log writes a log that restores in full.
//!
//! The tables are fixed by the seed (`PTABLE_LOG_CORRUPTION_SEED`); the log's hash seed is
//! random, so the bytes of records that delete differ from run to run, never their layout.
//!
//! The log is written into a real directory and read back through `open_newest_valid` and
//! `Replay`, as the NIF does. `scan_log` over the same bytes says where reading stops and
//! why, which the restore's skipped list must match.

mod change_log_support;
mod common;
mod rng;

use change_log_support::{random_property, sorted, Table};
use common::options;
use common::restore_steps::{pull_pairs, stream_pairs};
use ptable_core::change_log::{scan_log, LogStop, LOG_HEADER_LEN, RECORD_HEADER_LEN};
use ptable_core::pipeline::{open_restore, Replay};
use ptable_core::{
    etf_rows, open_newest_valid, restore_parts, Baselines, CommitOutcome, Error, LogStopAt,
    PersistConfig, PersistPipeline, Reason, RestorePipeline, SourceKind, StdFs, TableDir,
};
use rng::{env_u64, Rng};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A small base of several chunks, small rows: each sweep restores it some 20,000 times.
const ROWS_PER_CHUNK: usize = 8;
const BASE_ROWS: usize = 30;
/// Small records, and one over the compression threshold (512 bytes), so that both codecs
/// are swept.
const RECORDS: usize = 6;
/// The log may outgrow a base this small (the default, 0.25, would need a base four times the
/// log's size, and every restore would cost that much more).
const LOG_COMPACTION: f64 = 4.0;
const DEFAULT_SEED: u64 = 0x15_C0DE;

/// Where the header's CRC sits and what it covers (FORMAT.md, "Change log").
const HEADER_CRC_AT: usize = 52;
const HEADER_LEN_FIELD: Range<usize> = 8..12;
/// `created_unix_us`: display only, so a change with the CRC recomputed is harmless.
const CREATED: Range<usize> = 44..52;
/// Record fields, from the record's start.
const STORED_LEN: Range<usize> = 16..20;
const CODEC_AT: usize = 32;
const RECORD_CRC: Range<usize> = 44..48;

fn seed() -> u64 {
    let seed = env_u64("PTABLE_LOG_CORRUPTION_SEED").unwrap_or(DEFAULT_SEED);
    println!("seed {seed:#x} (repeat with PTABLE_LOG_CORRUPTION_SEED={seed:#x})");
    seed
}

// ---------------------------------------------------------------------------------------------
// Writing a history with the real persist path.

/// One persist as the wrapper runs it: through the writer thread, again as a full write
/// when the log cannot take the change.
fn persist(
    dir: &TableDir,
    baselines: &Arc<Baselines>,
    table: &Table,
    order: u64,
    log_compaction: f64,
) -> CommitOutcome {
    let chunks = table.chunks(ROWS_PER_CHUNK, order);
    let attempt = |full| {
        let config = PersistConfig {
            baselines: Some(Arc::clone(baselines)),
            log_compaction,
            full,
        };
        let rows = table.rows.len() as u64;
        let pipeline =
            PersistPipeline::begin(Arc::new(StdFs), dir.clone(), options(3), rows, 5, config)?;
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

/// A small value: an integer or a short binary.
fn small_value(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(50) {
        vec![97, rng.next() as u8]
    } else {
        let n = rng.below(8);
        let mut out = vec![109, 0, 0, 0, n as u8];
        out.extend(rng.bytes(n));
        out
    }
}

fn insert(table: &mut Table, rng: &mut Rng, rows: usize) {
    let target = table.rows.len() + rows;
    while table.rows.len() < target {
        table.rows.insert(random_property(rng), small_value(rng));
    }
}

/// Changes the values of `values` rows, deletes `deletes` and inserts `inserts` new ones.
fn change(table: &mut Table, rng: &mut Rng, values: usize, deletes: usize, inserts: usize) {
    let before = table.clone();
    let keys: Vec<Vec<u8>> = table.rows.keys().cloned().collect();
    for _ in 0..values {
        let key = &keys[rng.below(keys.len())];
        table.rows.insert(key.clone(), small_value(rng));
    }
    for _ in 0..deletes {
        table.rows.remove(&keys[rng.below(keys.len())]);
    }
    insert(table, rng, inserts);
    if *table == before {
        // Every state must differ from the one before, or "which prefix" is ambiguous.
        change(table, rng, 1, 0, 1);
    }
}

/// A table directory holding a base and a log of `RECORDS` records, and each state: the
/// base's, then after each record.
struct History {
    _tmp: tempfile::TempDir,
    dir: TableDir,
    states: Vec<Vec<Vec<u8>>>,
    /// The tables whose rows `states` are.
    tables: Vec<Table>,
    /// The log's bytes as persisted.
    log: Vec<u8>,
    /// Where each record starts, and the log's end last: record `j` (from 1) is
    /// `bounds[j - 1]..bounds[j]`.
    bounds: Vec<usize>,
    /// Whether the stable file was damaged (the restore reads the backup).
    damaged_stable: bool,
}

impl History {
    fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("t"));
        let mut history = History {
            _tmp: tmp,
            dir,
            states: Vec::new(),
            tables: Vec::new(),
            log: Vec::new(),
            bounds: Vec::new(),
            damaged_stable: false,
        };
        let mut rng = Rng::new(seed);
        let baselines = Arc::new(Baselines::new());
        let mut table = Table::default();
        insert(&mut table, &mut rng, BASE_ROWS);
        assert!(matches!(
            history.persist(&baselines, &table, 0, LOG_COMPACTION),
            CommitOutcome::Written
        ));
        for round in 1..=RECORDS {
            match round {
                3 => change(&mut table, &mut rng, 20, 0, 0),
                4 => change(&mut table, &mut rng, 0, 2, 0),
                _ => {
                    let (deletes, inserts) = (rng.below(2), rng.below(3));
                    change(&mut table, &mut rng, 1, deletes, inserts)
                }
            }
            let outcome = history.persist(&baselines, &table, round as u64, LOG_COMPACTION);
            assert!(
                matches!(outcome, CommitOutcome::Appended(_)),
                "round {round}: {outcome:?}"
            );
        }
        history.read_log(&history.dir.log());
        history
    }

    fn persist(
        &mut self,
        baselines: &Arc<Baselines>,
        table: &Table,
        order: u64,
        log_compaction: f64,
    ) -> CommitOutcome {
        let outcome = persist(&self.dir, baselines, table, order, log_compaction);
        if !matches!(outcome, CommitOutcome::Unchanged) {
            self.states.push(table.pair_set());
            self.tables.push(table.clone());
        }
        outcome
    }

    /// Takes `path` as the log to sweep: its bytes and record bounds.
    fn read_log(&mut self, path: &Path) {
        self.log = std::fs::read(path).unwrap();
        let scan = scan_log(&self.log, path).expect("the log verifies");
        assert_eq!(scan.stop, LogStop::End);
        self.bounds = vec![LOG_HEADER_LEN];
        for record in &scan.records {
            self.bounds
                .push(self.bounds.last().unwrap() + record.len as usize);
        }
        assert_eq!(*self.bounds.last().unwrap(), self.log.len());
        let codecs: Vec<u8> = self.bounds[..self.records()]
            .iter()
            .map(|&at| self.log[at + CODEC_AT])
            .collect();
        assert!(codecs.contains(&0) && codecs.contains(&1), "{codecs:?}");
    }

    fn records(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The record (from 1) holding byte `at`, 0 for the header.
    fn record_of(&self, at: usize) -> usize {
        self.bounds.iter().take_while(|&&start| start <= at).count()
    }

    /// Which state `rows` is (states are distinct).
    fn state_of(&self, rows: &[Vec<u8>]) -> Option<usize> {
        self.states.iter().position(|s| s == rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Restoring, both ways.

struct Restored {
    rows: Vec<Vec<u8>>,
    kind: SourceKind,
    skipped: Vec<Error>,
}

/// Restores `dir` with the steps pulled on this thread, the log planned after the base
/// verified (as on one core), or, given `baselines`, as the NIF does: the log planned while
/// the base verifies, the steps streamed by the reader thread, which leaves there the
/// baseline it rebuilt.
fn restore(dir: &TableDir, baselines: Option<&Arc<Baselines>>) -> Restored {
    fn damaged<T>(e: Error) -> T {
        panic!("a damaged log made the restore fail: {e}")
    }
    let (replay, kind, skipped) = match baselines {
        None => {
            let (found, mut skipped, _) = restore_parts(open_newest_valid(&StdFs, dir, None));
            let (file, kind, log) = found.expect("the base verifies");
            let replay = Replay::new(file, log, None, &mut skipped).unwrap_or_else(damaged);
            (replay, kind, skipped)
        }
        Some(baselines) => {
            let opened = open_restore(&StdFs, dir, None, Some(baselines));
            let (replay, kind) = opened.replay.unwrap_or_else(damaged);
            (replay, kind, opened.skipped)
        }
    };
    let pipeline = RestorePipeline::replaying(replay);
    let rows = if baselines.is_some() {
        stream_pairs(&pipeline)
    } else {
        pull_pairs(&pipeline)
    }
    .unwrap_or_else(damaged);
    pipeline.close();
    Restored {
        rows: sorted(rows),
        kind,
        skipped,
    }
}

/// Both ways: pulled, and streamed with a new baseline.
fn restore_both(dir: &TableDir) -> [(&'static str, Restored); 2] {
    [
        ("pulled", restore(dir, None)),
        ("streamed", restore(dir, Some(&Arc::new(Baselines::new())))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checking one damaged log.

/// What reading `bytes` as the log of `history`'s base gives, by `scan_log`: the records
/// that apply, and what the restore must report about the log (a label for the tally).
struct Expected {
    records: usize,
    /// The reason the restore must list for the log, if any, and (`LogTail`) the record
    /// it must say the log stops at.
    skipped: Option<(Reason, Option<LogStopAt>)>,
    label: String,
}

fn expected(history: &History, bytes: &[u8], path: &Path) -> Expected {
    let scan = match scan_log(bytes, path) {
        Ok(scan) => scan,
        Err(e) => {
            return Expected {
                records: 0,
                skipped: Some((e.reason, None)),
                label: format!("header refused ({})", e.reason.as_str()),
            }
        }
    };
    let intact = scan_log(&history.log, path).unwrap().header;
    if scan.header.base_sequence != intact.base_sequence
        || scan.header.base_digest != intact.base_digest
    {
        // A log naming another base is not this base's (a stale log is legitimately
        // ignored): nothing is reported.
        return Expected {
            records: 0,
            skipped: None,
            label: "header names another base (log ignored)".into(),
        };
    }
    let records = scan.records.len();
    match scan.stop {
        LogStop::End => Expected {
            records,
            skipped: None,
            label: if records == history.records() {
                "all records apply (harmless)".into()
            } else {
                "clean end after a complete record".into()
            },
        },
        LogStop::Invalid { offset, fault } => {
            // A flipped header length (its CRC recomputed) moves where records start.
            let header_len = u32::from_le_bytes(bytes[HEADER_LEN_FIELD].try_into().unwrap());
            let records_start = HEADER_LEN_FIELD.end + header_len as usize + 4;
            let valid_end = history.bounds[records] - history.bounds[0] + records_start;
            assert_eq!(
                offset as usize, valid_end,
                "the stop is where the valid records end"
            );
            Expected {
                records,
                skipped: Some((Reason::LogTail, Some(LogStopAt { offset, fault }))),
                label: format!("log_tail ({})", fault.as_str()),
            }
        }
    }
}

/// Installs `bytes` as the log at `path`, restores both ways and checks that each gives
/// state `want`, which `scan_log` predicts too, and reports the log as it should. Returns
/// the tally label.
fn check(history: &History, path: &Path, bytes: &[u8], want: usize, what: &str) -> String {
    install(path, bytes);
    let exp = expected(history, bytes, path);
    assert_eq!(exp.records, want, "{what}: {}", exp.label);
    for (how, got) in restore_both(&history.dir) {
        let state = history.state_of(&got.rows);
        assert_eq!(
            state,
            Some(exp.records),
            "{what} ({how}): restored {} rows, state {state:?}, {}",
            got.rows.len(),
            exp.label
        );
        let log_failures: Vec<(Reason, Option<LogStopAt>)> = got
            .skipped
            .iter()
            .filter(|e| e.path.as_deref() == Some(path))
            .map(|e| (e.reason, e.log_stop))
            .collect();
        assert_eq!(
            log_failures,
            exp.skipped.into_iter().collect::<Vec<_>>(),
            "{what} ({how}): {}",
            exp.label
        );
        let others = got.skipped.len() - log_failures.len();
        assert_eq!(
            others,
            history.other_failures(),
            "{what}: {:?}",
            got.skipped
        );
        assert_eq!(got.kind, history.kind(), "{what}");
    }
    exp.label
}

impl History {
    /// Failures a restore lists besides the swept log (the damaged stable file).
    fn other_failures(&self) -> usize {
        usize::from(self.damaged_stable)
    }

    fn kind(&self) -> SourceKind {
        if self.damaged_stable {
            SourceKind::Backup
        } else {
            SourceKind::Stable
        }
    }
}

/// Replaces the file at `path` with `bytes`. Unlinked first: ext4 flushes a file that is
/// truncated and rewritten (or renamed over) when it is closed, which made a sweep wait on
/// the disk.
fn install(path: &Path, bytes: &[u8]) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
        _ => {}
    }
    std::fs::write(path, bytes).unwrap();
}

type Tally = BTreeMap<String, usize>;

fn place(record: usize) -> &'static str {
    if record == 0 {
        "header"
    } else {
        "record"
    }
}

fn harmless(tally: &Tally) -> usize {
    tally
        .iter()
        .filter(|(label, _)| label.contains("harmless"))
        .map(|(_, n)| n)
        .sum()
}

fn print_tally(title: &str, tally: &Tally) {
    let total: usize = tally.values().sum();
    println!("[log corruption] {title}: {total}");
    for (label, n) in tally {
        println!("    {n:>6}  {label}");
    }
}

/// Bits of `history`'s log flipped (every `stride`th, a different one in each byte): each
/// gives the records before the flipped byte's record (the header's: none).
fn sweep_bit_flips(history: &History, path: &Path, stride: usize) -> Tally {
    let mut tally = Tally::new();
    let mut bytes = history.log.clone();
    for bit in 0..bytes.len() * 8 {
        let at = bit / 8;
        if bit % stride != at % stride {
            continue;
        }
        bytes[at] ^= 1 << (bit % 8);
        let record = history.record_of(at);
        let label = check(
            history,
            path,
            &bytes,
            record.saturating_sub(1),
            &format!("bit {bit}"),
        );
        *tally
            .entry(format!("{}: {label}", place(record)))
            .or_default() += 1;
        bytes[at] ^= 1 << (bit % 8);
    }
    install(path, &history.log);
    tally
}

/// Every length the log can be cut to: the complete records before the cut.
fn sweep_truncations(history: &History, path: &Path) -> Tally {
    let mut tally = Tally::new();
    for len in 0..=history.log.len() {
        let complete = history.bounds[1..]
            .iter()
            .filter(|&&end| end <= len)
            .count();
        let label = check(
            history,
            path,
            &history.log[..len],
            complete,
            &format!("cut at {len}"),
        );
        let label = if len == history.log.len() {
            "not cut: all records".to_string()
        } else {
            label
        };
        *tally.entry(label).or_default() += 1;
    }
    install(path, &history.log);
    tally
}

// ---------------------------------------------------------------------------------------------
// CRC-recomputed variants.

/// Rewrites the header's CRC where the reader will look for it: after the body whose length
/// the (possibly flipped) `header_len` gives. `false` when that length is out of the
/// accepted range or past the file, which the reader refuses without a CRC.
fn fix_header_crc(bytes: &mut [u8]) -> bool {
    let len = u32::from_le_bytes(bytes[HEADER_LEN_FIELD].try_into().unwrap()) as usize;
    let at = HEADER_LEN_FIELD.end + len;
    if !(40..=4096).contains(&len) || at + 4 > bytes.len() {
        return false;
    }
    let crc = crc32fast::hash(&bytes[..at]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Rewrites the CRC of the record at `start` over what the reader will check: its first 44
/// bytes and the stored payload its (possibly flipped) `stored_len` claims. `false` when
/// the file ends before that payload does.
fn fix_record_crc(bytes: &mut [u8], start: usize) -> bool {
    let field = start + STORED_LEN.start..start + STORED_LEN.end;
    let stored = u32::from_le_bytes(bytes[field].try_into().unwrap()) as usize;
    let payload = start + RECORD_HEADER_LEN;
    if payload + stored > bytes.len() {
        return false;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[start..start + RECORD_CRC.start]);
    h.update(&bytes[payload..payload + stored]);
    let crc = h.finalize().to_le_bytes();
    bytes[start + RECORD_CRC.start..start + RECORD_CRC.end].copy_from_slice(&crc);
    true
}

/// Whether both logs verify to the same records: the same sequence numbers, deletes and
/// upserts.
fn same_content(a: &[u8], b: &[u8], path: &Path) -> bool {
    let content = |bytes| {
        scan_log(bytes, path).ok().map(|scan| {
            let records: Vec<_> = scan
                .records
                .iter()
                .map(|r| {
                    let deletes: Vec<u64> = r.deletes().collect();
                    (r.sequence, deletes, r.upserts_term().to_vec())
                })
                .collect();
            (scan.header, records)
        })
    };
    content(a) == content(b)
}

/// Every bit outside the CRC fields flipped and its header's or record's CRC recomputed.
fn sweep_crc_recomputed(history: &History, path: &Path) -> Tally {
    let mut tally = Tally::new();
    for bit in 0..history.log.len() * 8 {
        let at = bit / 8;
        let record = history.record_of(at);
        let start = history.bounds.get(record.wrapping_sub(1)).copied();
        let (in_crc, want) = match start {
            None => (
                (HEADER_CRC_AT..LOG_HEADER_LEN).contains(&at),
                // Only the display-only creation time may change unnoticed.
                if CREATED.contains(&at) {
                    history.records()
                } else {
                    0
                },
            ),
            Some(start) => (RECORD_CRC.contains(&(at - start)), record - 1),
        };
        if in_crc {
            continue;
        }
        let mut bytes = history.log.clone();
        bytes[at] ^= 1 << (bit % 8);
        let fixed = match start {
            None => fix_header_crc(&mut bytes),
            Some(start) => fix_record_crc(&mut bytes, start),
        };
        // A zstd frame has bits its decoder ignores: such a flip leaves every record's
        // content as it was (which the restore must then give in full).
        let same = start.is_some() && same_content(&history.log, &bytes, path);
        let want = if same { history.records() } else { want };
        if same {
            let start = start.unwrap_or(0);
            let codec = bytes[start + CODEC_AT];
            println!(
                "    same content: bit {} of byte {} of record {record} (codec {codec})",
                bit % 8,
                at - start
            );
        }
        let label = check(
            history,
            path,
            &bytes,
            want,
            &format!("bit {bit}, CRC fixed"),
        );
        let label = if same {
            "zstd bits the decoder ignores: same content (harmless)".to_string()
        } else if fixed {
            label
        } else {
            format!("{label} (no CRC to fix: length out of range)")
        };
        *tally
            .entry(format!("{}: {label}", place(record)))
            .or_default() += 1;
    }
    install(path, &history.log);
    tally
}

// ---------------------------------------------------------------------------------------------
// The tests.

fn intact_restore(history: &History) {
    for (how, got) in restore_both(&history.dir) {
        let last = history.states.len() - 1;
        assert_eq!(history.state_of(&got.rows), Some(last), "{how}");
        assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    }
}

#[test]
fn every_bit_flip_of_the_log_restores_a_prefix() {
    let history = History::new(seed());
    intact_restore(&history);
    let started = Instant::now();
    let tally = sweep_bit_flips(&history, &history.dir.log(), 1);
    print_tally(
        &format!(
            "{} bit flips of a {}-byte log of {} records (restored twice each, {:.1?})",
            history.log.len() * 8,
            history.log.len(),
            history.records(),
            started.elapsed()
        ),
        &tally,
    );
    assert_eq!(harmless(&tally), 0, "unchecked bits: {tally:?}");
}

#[test]
fn every_truncation_of_the_log_restores_its_complete_records() {
    let history = History::new(seed() ^ 1);
    let started = Instant::now();
    let tally = sweep_truncations(&history, &history.dir.log());
    print_tally(
        &format!(
            "{} truncations of a {}-byte log ({:.1?})",
            history.log.len() + 1,
            history.log.len(),
            started.elapsed()
        ),
        &tally,
    );
}

#[test]
fn flips_with_their_crc_recomputed_restore_a_prefix() {
    let history = History::new(seed() ^ 2);
    let started = Instant::now();
    let tally = sweep_crc_recomputed(&history, &history.dir.log());
    print_tally(
        &format!(
            "CRC-recomputed flips of a {}-byte log ({:.1?})",
            history.log.len(),
            started.elapsed()
        ),
        &tally,
    );
    // Unnoticed: the display-only creation time, and zstd bits whose flip left every
    // record's content as it was (checked by `same_content`, and restored in full).
    let created = tally.get("header: all records apply (harmless)");
    assert_eq!(created, Some(&(CREATED.len() * 8)), "{tally:?}");
    let zstd = tally
        .get("record: zstd bits the decoder ignores: same content (harmless)")
        .unwrap_or(&0);
    assert_eq!(harmless(&tally), created.unwrap() + zstd, "{tally:?}");
}

/// After a compaction the backup file's log is `data.ptable.backup.log`: with the stable
/// file damaged, the backup and that log give the newest state left on disk (the state
/// before the compaction), and its flips and truncations give prefixes of it.
#[test]
fn the_backup_log_continues_the_backup_when_the_stable_file_is_damaged() {
    let mut history = History::new(seed() ^ 3);
    let before_compaction = history.states.len() - 1;
    let mut rng = Rng::new(seed() ^ 4);
    let mut table = history.tables[before_compaction].clone();
    // The baseline from a restore, as in a new VM.
    let baselines = Arc::new(Baselines::new());
    assert_eq!(
        restore_with(&history.dir, &baselines),
        history.states[before_compaction]
    );
    // A change beyond what the log may take: written as a full file, compacting the log.
    change(&mut table, &mut rng, BASE_ROWS, 0, BASE_ROWS);
    assert!(matches!(
        history.persist(&baselines, &table, 100, 0.05),
        CommitOutcome::Written
    ));
    change(&mut table, &mut rng, 1, 0, 1);
    assert!(matches!(
        history.persist(&baselines, &table, 101, LOG_COMPACTION),
        CommitOutcome::Appended(_)
    ));
    let backup_log = history.dir.backup_log();
    assert_eq!(std::fs::read(&backup_log).unwrap(), history.log);
    intact_restore(&history);

    let mut stable = std::fs::read(history.dir.stable()).unwrap();
    let middle = stable.len() / 2;
    stable[middle] ^= 0x10;
    std::fs::write(history.dir.stable(), stable).unwrap();
    history.damaged_stable = true;
    history.states.truncate(before_compaction + 1);
    history.tables.truncate(before_compaction + 1);

    let started = Instant::now();
    // A third of the bits, in every byte: the test above flips them all.
    let flips = sweep_bit_flips(&history, &backup_log, 3);
    let cuts = sweep_truncations(&history, &backup_log);
    print_tally(
        &format!(
            "backup log beside a damaged stable file: {} of its {} bits flipped ({:.1?})",
            flips.values().sum::<usize>(),
            history.log.len() * 8,
            started.elapsed()
        ),
        &flips,
    );
    print_tally("backup log: truncations", &cuts);
    assert_eq!(harmless(&flips), 0, "unchecked bits: {flips:?}");
}

/// Restores `dir` through the reader thread, leaving the baseline in `baselines`; nothing
/// may be skipped.
fn restore_with(dir: &TableDir, baselines: &Arc<Baselines>) -> Vec<Vec<u8>> {
    let got = restore(dir, Some(baselines));
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    got.rows
}

/// A restore of a damaged log leaves the baseline of the state it restored, and the log's
/// verified length: the next persist in that VM writes a log of the records restored and
/// the new one (never a record behind the damaged bytes), which restores in full, and so
/// does the persist after it, from a new VM's restore.
#[test]
fn the_persist_after_a_damaged_log_restores_in_full() {
    let seed = seed() ^ 5;
    let records = History::new(seed).records();
    for damaged in 0..=records {
        let mut history = History::new(seed);
        // A bit in the middle of the header or of record `damaged`.
        let span = match damaged {
            0 => 0..history.bounds[0],
            j => history.bounds[j - 1]..history.bounds[j],
        };
        let mut bytes = history.log.clone();
        bytes[(span.start + span.end) / 2] ^= 4;
        install(&history.dir.log(), &bytes);
        let k = damaged.saturating_sub(1);
        let mut baselines = Arc::new(Baselines::new());
        let got = restore(&history.dir, Some(&baselines));
        assert_eq!(history.state_of(&got.rows), Some(k), "damaged {damaged}");
        assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);

        let mut rng = Rng::new(seed ^ damaged as u64);
        let mut table = history.tables[k].clone();
        for round in 0..2u64 {
            change(&mut table, &mut rng, 1, 1, 1);
            let outcome = history.persist(&baselines, &table, 200 + round, LOG_COMPACTION);
            assert!(
                matches!(outcome, CommitOutcome::Appended(_)),
                "damaged {damaged}, round {round}: {outcome:?}"
            );
            let log = std::fs::read(history.dir.log()).unwrap();
            let scan = scan_log(&log, &history.dir.log()).unwrap();
            assert_eq!(scan.stop, LogStop::End, "damaged {damaged}");
            assert_eq!(scan.records.len(), k + 1 + round as usize);
            for (how, got) in restore_both(&history.dir) {
                assert_eq!(got.rows, table.pair_set(), "damaged {damaged}, {how}");
                assert!(got.skipped.is_empty(), "{:?}", got.skipped);
            }
            // The next round persists from a new VM's restore.
            baselines = Arc::new(Baselines::new());
            assert_eq!(restore_with(&history.dir, &baselines), table.pair_set());
        }
    }
}
