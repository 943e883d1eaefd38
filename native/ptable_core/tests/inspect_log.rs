//! `inspect_dir` on change logs: logs written by real persists (through the writer thread,
//! on the real filesystem), then damaged or left behind the ways a device may leave them.
//! Each case checks what the report says (base, the file continued, records, verified
//! bytes, why reading stopped) and that inspecting changed no byte and no timestamp.
//! Deterministic: the table comes from a fixed seed.

mod change_log_support;
mod common;
mod counting_alloc;
mod rng;

use change_log_support::Table;
use common::options;
use counting_alloc::tracked;
use ptable_core::change_log::{LogStop, RecordFault, LOG_HEADER_LEN};
use ptable_core::etf_rows;
use ptable_core::{
    inspect_dir, Baselines, CommitOutcome, FileReport, FileRole, FileStatus, LogRead,
    PersistConfig, PersistPipeline, Reason, StdFs, TableDir,
};
use rng::Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

const SEED: u64 = 0x1A5_7E57;
const ROWS: usize = 300;
const HEADER: u64 = LOG_HEADER_LEN as u64;

/// A table directory with a stable file and, after it, one log record per change.
struct Dir {
    tmp: tempfile::TempDir,
    dir: TableDir,
    baselines: Arc<Baselines>,
    table: Table,
    rng: Rng,
    /// Each appended record's length, in order.
    records: Vec<u64>,
}

impl Dir {
    /// A full persist of a random table, then `changes` persists of one new row each.
    fn with_log(changes: usize) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Dir {
            dir: TableDir::new(tmp.path().join("t")),
            tmp,
            baselines: Arc::new(Baselines::new()),
            table: Table::default(),
            rng: Rng::new(SEED),
            records: Vec::new(),
        };
        d.table = Table::random(&mut d.rng, ROWS);
        assert_eq!(d.persist(false), CommitOutcome::Written);
        for _ in 0..changes {
            d.change();
        }
        d
    }

    fn change(&mut self) {
        self.table.mutate(&mut self.rng, 0, 0, 1);
        match self.persist(false) {
            CommitOutcome::Appended(n) => self.records.push(n),
            other => panic!("expected an append, got {other:?}"),
        }
    }

    /// One persist as the wrapper runs it (`full`: a compaction).
    fn persist(&self, full: bool) -> CommitOutcome {
        let config = PersistConfig {
            baselines: Some(Arc::clone(&self.baselines)),
            log_compaction: 0.5,
            full,
        };
        let rows = self.table.rows.len() as u64;
        let fs = Arc::new(StdFs);
        let pipeline =
            PersistPipeline::begin(fs, self.dir.clone(), options(3), rows, 5, config).unwrap();
        for chunk in self.table.chunks(100, 7) {
            let rows = etf_rows::all_pairs(&chunk).unwrap().len() as u64;
            pipeline.append(&chunk, rows).unwrap();
        }
        let outcome = pipeline.commit().unwrap();
        pipeline.close();
        outcome
    }

    /// Where record `n` (from 0) starts.
    fn record_offset(&self, n: usize) -> u64 {
        HEADER + self.records[..n].iter().sum::<u64>()
    }
}

/// Every file of the directory with its bytes and modification time.
fn contents(root: &Path) -> Vec<(PathBuf, Vec<u8>, SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.clone(), std::fs::read(&p).unwrap(), modified)
        })
        .collect();
    out.sort();
    out
}

/// Inspects the directory, checking that it changed nothing.
fn inspect(dir: &TableDir, verify: bool) -> Vec<FileReport> {
    let before = contents(dir.root());
    let reports = inspect_dir(&StdFs, dir, verify).unwrap();
    assert!(before == contents(dir.root()), "inspecting changed a file");
    reports
}

fn roles(reports: &[FileReport]) -> Vec<FileRole> {
    reports.iter().map(|r| r.role).collect()
}

fn find(reports: &[FileReport], role: FileRole) -> &FileReport {
    reports.iter().find(|r| r.role == role).expect("listed")
}

fn sequence(report: &FileReport) -> u64 {
    report.header.unwrap().current().unwrap().sequence
}

fn read_of(report: &FileReport) -> LogRead {
    report.log.unwrap().read.expect("records read")
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let data = std::fs::read(path).unwrap();
    write_at(path, offset, &[data[offset as usize] ^ 0x40]);
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_healthy_log_lists_every_record() {
    let d = Dir::with_log(3);
    let reports = inspect(&d.dir, true);
    assert_eq!(roles(&reports), [FileRole::Stable, FileRole::Log]);
    let (stable, log) = (&reports[0], &reports[1]);
    assert_eq!(log.status, FileStatus::Valid);
    assert!(log.header.is_none());
    let report = log.log.unwrap();
    assert_eq!(report.header.base_sequence, sequence(stable));
    assert_eq!(report.continues, Some(FileRole::Stable));
    assert_eq!(report.continues_as_str(), "stable");
    let read = report.read.unwrap();
    assert_eq!(read.records, 3);
    assert_eq!(read.valid_bytes, d.record_offset(3));
    assert_eq!(read.valid_bytes, log.size);
    assert_eq!(read.stop, Some(LogStop::End));
    assert_eq!(log.path, d.dir.log());
}

#[test]
fn without_verify_only_the_header_is_read() {
    let d = Dir::with_log(2);
    // A damaged record must not show: nothing past the header is read.
    flip_byte(&d.dir.log(), d.record_offset(1) + 50);
    let reports = inspect(&d.dir, false);
    let log = find(&reports, FileRole::Log);
    assert_eq!(log.status, FileStatus::Unverified);
    let report = log.log.unwrap();
    assert_eq!(report.continues, Some(FileRole::Stable));
    assert_eq!(report.read, None);
}

/// A way of damaging the log.
type Damage<'a> = Box<dyn Fn() + 'a>;

#[test]
fn a_torn_tail_reports_the_fault_and_where_the_verified_prefix_ends() {
    let d = Dir::with_log(3);
    let log = d.dir.log();
    let end = d.record_offset(3);
    let cases: [(&str, Damage<'_>, u64, RecordFault); 4] = [
        (
            "cut inside the last record",
            Box::new(|| truncate(&log, end - 5)),
            2,
            RecordFault::Truncated,
        ),
        (
            "garbage after the last record",
            Box::new(|| {
                let mut data = std::fs::read(&log).unwrap();
                data.extend_from_slice(b"garbage");
                std::fs::write(&log, data).unwrap();
            }),
            3,
            RecordFault::Truncated,
        ),
        (
            "a damaged payload in the second record",
            Box::new(|| flip_byte(&log, d.record_offset(1) + 50)),
            1,
            RecordFault::BadChecksum,
        ),
        (
            "a stored length over the format's cap",
            Box::new(|| write_at(&log, d.record_offset(2) + 16, &u32::MAX.to_le_bytes())),
            2,
            RecordFault::BadLength,
        ),
    ];
    let pristine = std::fs::read(&log).unwrap();
    for (name, damage, records, fault) in cases {
        std::fs::write(&log, &pristine).unwrap();
        damage();
        let reports = inspect(&d.dir, true);
        let report = find(&reports, FileRole::Log);
        assert_eq!(
            report.status,
            FileStatus::Invalid(Reason::LogTail),
            "{name}"
        );
        assert_eq!(report.status.as_str(), "log_tail", "{name}");
        let read = read_of(report);
        let offset = d.record_offset(records as usize);
        assert_eq!(read.records, records, "{name}");
        assert_eq!(read.valid_bytes, offset, "{name}");
        assert_eq!(
            read.stop,
            Some(LogStop::Invalid { offset, fault }),
            "{name}"
        );
    }
}

#[test]
fn a_length_claim_costs_no_memory() {
    let d = Dir::with_log(3);
    // The log alone, so that only it is read.
    let alone = TableDir::new(d.tmp.path().join("alone"));
    std::fs::create_dir(alone.root()).unwrap();
    std::fs::copy(d.dir.log(), alone.log()).unwrap();
    write_at(
        &alone.log(),
        d.record_offset(2) + 16,
        &(1u32 << 28).to_le_bytes(),
    );
    let (reports, peak, largest) = tracked(|| inspect(&alone, true));
    let log = find(&reports, FileRole::Log);
    assert_eq!(log.log.unwrap().continues, None);
    let read = read_of(log);
    assert_eq!(read.records, 2);
    let fault = RecordFault::Truncated;
    let offset = d.record_offset(2);
    assert_eq!(read.stop, Some(LogStop::Invalid { offset, fault }));
    println!("a 2^28-byte claim: peak {peak} bytes, largest allocation {largest}");
    assert!(peak < 1 << 20, "peak {peak}");
}

#[test]
fn a_bad_header_makes_the_whole_log_unusable() {
    let d = Dir::with_log(2);
    let log = d.dir.log();
    let pristine = std::fs::read(&log).unwrap();
    let cases = [
        ("a flipped base sequence", 13, Reason::BadChecksum),
        ("a wrong magic", 0, Reason::BadFile),
    ];
    for (name, offset, reason) in cases {
        std::fs::write(&log, &pristine).unwrap();
        flip_byte(&log, offset);
        for verify in [true, false] {
            let reports = inspect(&d.dir, verify);
            let report = find(&reports, FileRole::Log);
            assert_eq!(report.status, FileStatus::Invalid(reason), "{name}");
            assert_eq!(report.log, None, "{name}");
            assert_eq!(report.size, pristine.len() as u64, "{name}");
        }
    }
    std::fs::write(&log, &pristine[..30]).unwrap();
    let report = inspect(&d.dir, true);
    assert_eq!(
        find(&report, FileRole::Log).status,
        FileStatus::Invalid(Reason::BadFile),
        "a header cut short"
    );
}

#[test]
fn after_a_compaction_the_backup_log_continues_the_backup() {
    let d = Dir::with_log(2);
    assert_eq!(d.persist(true), CommitOutcome::Written);
    let reports = inspect(&d.dir, true);
    assert_eq!(
        roles(&reports),
        [FileRole::Stable, FileRole::Backup, FileRole::BackupLog]
    );
    let backup_log = &reports[2];
    assert_eq!(backup_log.status, FileStatus::Valid);
    let report = backup_log.log.unwrap();
    assert_eq!(report.continues, Some(FileRole::Backup));
    assert_eq!(report.header.base_sequence, sequence(&reports[1]));
    assert_eq!(read_of(backup_log).records, 2);
    assert_eq!(read_of(backup_log).valid_bytes, backup_log.size);
}

#[test]
fn a_log_whose_base_is_gone_is_stale() {
    let d = Dir::with_log(2);
    assert_eq!(d.persist(true), CommitOutcome::Written);
    // A second full write rotates the log's base out; the log stays under its name.
    let mut d = d;
    d.table.mutate(&mut d.rng, 50, 0, 0);
    assert_eq!(d.persist(true), CommitOutcome::Written);
    let reports = inspect(&d.dir, true);
    let stale = find(&reports, FileRole::BackupLog);
    let report = stale.log.unwrap();
    assert_eq!(report.continues, None);
    assert_eq!(report.continues_as_str(), "none");
    assert!(report.header.base_sequence < sequence(find(&reports, FileRole::Backup)));
    // Stale, but its records still verify: what it holds is told apart from where it applies.
    assert_eq!(stale.status, FileStatus::Valid);
    assert_eq!(read_of(stale).records, 2);
}

#[test]
fn a_log_tmp_left_by_a_cut_persist_is_listed() {
    let d = Dir::with_log(2);
    // What a persist cut while writing a new log leaves: the header and part of the records.
    let cut = d.record_offset(1) + 10;
    std::fs::write(
        d.dir.log_tmp(),
        &std::fs::read(d.dir.log()).unwrap()[..cut as usize],
    )
    .unwrap();
    let reports = inspect(&d.dir, true);
    assert_eq!(
        roles(&reports),
        [FileRole::Stable, FileRole::Log, FileRole::LogTmp]
    );
    let tmp = &reports[2];
    assert_eq!(tmp.role.as_str(), "log_tmp");
    assert_eq!(tmp.log.unwrap().continues, Some(FileRole::Stable));
    assert_eq!(tmp.status, FileStatus::Invalid(Reason::LogTail));
    assert_eq!(read_of(tmp).records, 1);
    assert_eq!(read_of(tmp).valid_bytes, d.record_offset(1));
}

#[test]
fn a_special_file_under_a_log_name_is_reported_without_blocking() {
    let d = Dir::with_log(1);
    std::fs::rename(d.dir.log(), d.dir.backup_log()).unwrap();
    std::fs::create_dir(d.dir.log()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.dir.log_tmp()).unwrap();
    let reports = inspect_dir(&StdFs, &d.dir, true).unwrap();
    for role in [FileRole::Log, FileRole::LogTmp] {
        let report = find(&reports, role);
        assert_eq!(report.status, FileStatus::Invalid(Reason::NotARegularFile));
        assert_eq!(report.log, None);
    }
    // A log is bound to its base by its header, not its name.
    let moved = find(&reports, FileRole::BackupLog);
    assert_eq!(moved.log.unwrap().continues, Some(FileRole::Stable));
    assert_eq!(moved.status, FileStatus::Valid);
}
