//! Special files and symlinks in place of the table's files, on the real filesystem.
//!
//! A FIFO, a unix socket, a symlink to `/dev/zero` or to a FIFO, or a directory named like
//! the stable file, the backup, the tmp file, the lock file or a snapshot must never make a
//! call block (opening a FIFO for reading waits for a writer for ever), and is a bad file
//! with the reason `not_a_regular_file`: moved aside where corrupt files are, skipped in
//! listings, replaced where the library writes. Files the library writes are never written
//! through a symlink. Every operation runs in a thread under a watchdog, so a regression
//! fails instead of hanging.

#![cfg(unix)]

mod common;

use common::*;
use ptable_core::{
    inspect_dir, list_snapshots, open_newest_valid, restore_snapshot, FileStatus, Fs,
    PersistSession, SnapshotId, SourceKind, TableDir,
};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long all the cases of one test may take together before they count as hung.
const WATCHDOG: Duration = Duration::from_secs(10);
/// The reason every special file is reported with.
const NOT_REGULAR: &str = "not_a_regular_file";

const GOOD_ID: &str = "00000000000000A1";
const SPECIAL_ID: &str = "00000000000000B2";
const NEW_ID: &str = "00000000000000C3";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    Fifo,
    Socket,
    LinkToDevZero,
    LinkToFifo,
    Dir,
}

const SPECIALS: [Special; 5] = [
    Special::Fifo,
    Special::Socket,
    Special::LinkToDevZero,
    Special::LinkToFifo,
    Special::Dir,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Restore,
    Persist,
    Snapshot,
    List,
    RestoreSnapshot,
    RestoreSpecialSnapshot,
    Inspect,
}

const OPS: [Op; 7] = [
    Op::Restore,
    Op::Persist,
    Op::Snapshot,
    Op::List,
    Op::RestoreSnapshot,
    Op::RestoreSpecialSnapshot,
    Op::Inspect,
];

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

fn make_special(kind: Special, path: &Path, outside: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
    match kind {
        Special::Fifo => mkfifo(path),
        Special::Socket => drop(std::os::unix::net::UnixListener::bind(path).unwrap()),
        Special::LinkToDevZero => std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
        Special::LinkToFifo => {
            let fifo = outside.join("fifo");
            mkfifo(&fifo);
            std::os::unix::fs::symlink(&fifo, path).unwrap();
        }
        Special::Dir => std::fs::create_dir(path).unwrap(),
    }
}

fn id(s: &str) -> SnapshotId {
    SnapshotId::parse(s).unwrap()
}

/// A table directory whose snapshot `GOOD_ID` holds table 1, backup table 2, stable file
/// table 3, with `special` put in place of `name` (a file name, or `snapshots/<SPECIAL_ID>`).
struct Case {
    _tmp: tempfile::TempDir,
    dir: TableDir,
    fs: Arc<dyn Fs>,
    name: String,
}

impl Case {
    fn new(name: &str, special: Special) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("table"));
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let fs = std_fs();
        persist(&fs, &dir, &data(1), 3);
        snapshot_stable_as(&fs, &dir, &data(1), GOOD_ID).unwrap();
        persist(&fs, &dir, &data(2), 3);
        persist(&fs, &dir, &data(3), 3);
        make_special(special, &dir.root().join(name), &outside);
        Case {
            _tmp: tmp,
            dir,
            fs,
            name: name.to_string(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.root().join(&self.name)
    }

    /// Whether the special file keeps writers out: the lock file, or a directory in place of
    /// the tmp file (it cannot be replaced by a file).
    fn blocks_writers(&self, special: Special) -> bool {
        self.name == ptable_core::table_dir::LOCK
            || (self.name == ptable_core::table_dir::TMP && special == Special::Dir)
    }
}

fn data(n: u64) -> Vec<Vec<u8>> {
    chunks(3, 200 + n as usize, n)
}

/// Persists `contents` and takes a snapshot of them named `snapshot_id`.
fn snapshot_stable_as(
    fs: &Arc<dyn Fs>,
    dir: &TableDir,
    contents: &[Vec<u8>],
    snapshot_id: &str,
) -> Result<SnapshotId, String> {
    let mut session =
        PersistSession::begin(fs.clone(), dir.clone(), options(3)).map_err(|e| e.to_string())?;
    for c in contents {
        session.append(c, 10).map_err(|e| e.to_string())?;
    }
    session.commit().map_err(|e| e.to_string())?;
    session
        .snapshot(25, &mut || Ok(id(snapshot_id)))
        .map_err(|e| e.to_string())
}

fn try_persist(fs: &Arc<dyn Fs>, dir: &TableDir, contents: &[Vec<u8>]) -> ptable_core::Result<()> {
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(3))?;
    for c in contents {
        session.append(c, 10)?;
    }
    session.commit().map(|_| ())
}

/// What a restore (without quarantine) reads now.
fn restored_now(case: &Case) -> Result<(Vec<Vec<u8>>, SourceKind), String> {
    restore(case.fs.as_ref(), &case.dir).map_err(|r| r.as_str().to_string())
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// A write that the special file must either let through or refuse with
/// `not_a_regular_file` naming it; afterwards a restore reads `then` or, when refused, the
/// stable file as it was (table 3).
fn expect_write(
    case: &Case,
    special: Special,
    result: Result<(), ptable_core::Error>,
    then: &[Vec<u8>],
) -> Result<(), String> {
    if case.blocks_writers(special) {
        let err = result
            .err()
            .ok_or("a write succeeded past the special file")?;
        expect_eq("reason", err.reason.as_str(), NOT_REGULAR)?;
        expect_eq("path", err.path, Some(case.path()))?;
        expect_eq(
            "restored",
            restored_now(case)?,
            (data(3), SourceKind::Stable),
        )
    } else {
        result.map_err(|e| format!("write failed: {e}"))?;
        expect_eq("restored", restored_now(case)?.0, then.to_vec())
    }
}

fn run(case: &Case, special: Special, op: Op) -> Result<(), String> {
    let (fs, dir) = (case.fs.as_ref(), &case.dir);
    let is_stable = case.name == ptable_core::table_dir::STABLE;
    let is_snapshot = case.name.starts_with("snapshots/");
    match op {
        Op::Restore => {
            let source = open_newest_valid(fs, dir, Some(5))
                .map_err(|f| format!("restore failed: {} {:?}", f.error, f.failures))?;
            let want = if is_stable {
                (data(2), SourceKind::Backup)
            } else {
                (data(3), SourceKind::Stable)
            };
            let mut file = source.file;
            let rows = read_all(&mut file).map_err(|e| e.to_string())?;
            expect_eq("restored", (rows, source.kind), want)?;
            if is_stable {
                let reasons: Vec<_> = source.failures.iter().map(|e| e.reason.as_str()).collect();
                expect_eq("failures", reasons, vec![NOT_REGULAR])?;
                expect_eq("quarantined", source.quarantined.len(), 1)?;
                expect_eq(
                    "special file still in place",
                    std::fs::symlink_metadata(case.path()).is_ok(),
                    false,
                )?;
            }
            Ok(())
        }
        Op::Persist => {
            let result = try_persist(&case.fs, dir, &data(4));
            expect_write(case, special, result, &data(4))
        }
        Op::Snapshot => {
            let result = snapshot_stable_as(&case.fs, dir, &data(4), NEW_ID);
            if case.blocks_writers(special) {
                let err = result
                    .err()
                    .ok_or("a snapshot succeeded past the special file")?;
                if !err.starts_with(NOT_REGULAR) {
                    return Err(format!("snapshot failed with {err}"));
                }
                return Ok(());
            }
            expect_eq("new snapshot", result, Ok(id(NEW_ID)))?;
            let ids: Vec<_> = list_snapshots(fs, dir)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|e| e.id)
                .collect();
            expect_eq("listed", ids, vec![id(GOOD_ID), id(NEW_ID)])
        }
        Op::List => {
            let ids: Vec<_> = list_snapshots(fs, dir)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|e| e.id)
                .collect();
            expect_eq("listed", ids, vec![id(GOOD_ID)])
        }
        Op::RestoreSnapshot => {
            let result = restore_snapshot(fs, dir, GOOD_ID);
            expect_write(case, special, result, &data(1))
        }
        Op::RestoreSpecialSnapshot if is_snapshot => {
            let err = restore_snapshot(fs, dir, SPECIAL_ID)
                .err()
                .ok_or("restored a special file as a snapshot")?;
            expect_eq("reason", err.reason.as_str(), NOT_REGULAR)?;
            expect_eq(
                "restored",
                restored_now(case)?,
                (data(3), SourceKind::Stable),
            )
        }
        Op::RestoreSpecialSnapshot => Ok(()),
        Op::Inspect => {
            let reports = inspect_dir(fs, dir, true).map_err(|e| e.to_string())?;
            for report in &reports {
                let want = if report.path == case.path() {
                    Err(NOT_REGULAR)
                } else {
                    Ok(())
                };
                expect_eq(
                    &format!("status of {}", report.path.display()),
                    match report.status {
                        FileStatus::Valid => Ok(()),
                        FileStatus::Invalid(r) => Err(r.as_str()),
                        FileStatus::Unverified => Err("unverified"),
                    },
                    want,
                )?;
            }
            let paths: Vec<_> = reports.iter().map(|r| r.path.clone()).collect();
            let listed = paths.contains(&case.path());
            expect_eq(
                "special file reported",
                listed,
                !is_snapshot && !case.name.ends_with(".lock"),
            )
        }
    }
}

/// Runs every operation against every kind of special file named `name`, each in a thread
/// of its own on a fresh directory; fails on any wrong result or any call still running
/// after [`WATCHDOG`].
fn check_name(name: &str) {
    let (tx, rx) = mpsc::channel();
    let mut pending = Vec::new();
    for special in SPECIALS {
        for op in OPS {
            let label = format!("{name} as {special:?}, {op:?}");
            let case = Case::new(name, special);
            let tx = tx.clone();
            let thread_label = label.clone();
            std::thread::spawn(move || {
                let result = run(&case, special, op);
                let _ = tx.send((thread_label, result));
            });
            pending.push(label);
        }
    }
    drop(tx);
    let deadline = Instant::now() + WATCHDOG;
    let mut failures = Vec::new();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((label, result)) => {
                pending.retain(|l| *l != label);
                if let Err(e) = result {
                    failures.push(format!("{label}: {e}"));
                }
            }
            Err(_) => break,
        }
    }
    for label in &pending {
        failures.push(format!("{label}: still running after {WATCHDOG:?} (hung)"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_special_stable_file_is_quarantined_and_never_blocks() {
    check_name(ptable_core::table_dir::STABLE);
}

#[test]
fn a_special_backup_file_is_replaced_and_never_blocks() {
    check_name(ptable_core::table_dir::BACKUP);
}

#[test]
fn a_special_tmp_file_is_replaced_and_never_blocks() {
    check_name(ptable_core::table_dir::TMP);
}

#[test]
fn a_special_lock_file_fails_writers_clearly_and_never_blocks() {
    check_name(ptable_core::table_dir::LOCK);
}

#[test]
fn a_special_snapshot_is_skipped_and_never_blocks() {
    check_name(&format!("snapshots/{SPECIAL_ID}"));
}

/// Runs `f` in a thread; fails if it is still running after [`WATCHDOG`].
fn within_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .expect("still running after the watchdog's time (hung)")
}

/// A table directory with an outside file `precious` that a symlink will point to.
fn with_outside_file() -> (tempfile::TempDir, TableDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("table"));
    std::fs::create_dir(dir.root()).unwrap();
    let outside = tmp.path().join("precious");
    std::fs::write(&outside, b"outside the data directory").unwrap();
    (tmp, dir, outside)
}

fn assert_untouched(outside: &Path) {
    assert_eq!(
        std::fs::read(outside).unwrap(),
        b"outside the data directory",
        "the symlink's target was written"
    );
}

#[test]
fn persist_never_writes_through_a_tmp_symlink() {
    // Without a stable file (the tmp file is created first thing) and with one (created at
    // the first chunk that differs).
    for with_stable in [false, true] {
        let (_tmp, dir, outside) = with_outside_file();
        let fs = std_fs();
        if with_stable {
            persist(&fs, &dir, &data(1), 3);
        }
        std::os::unix::fs::symlink(&outside, dir.tmp()).unwrap();
        let (fs2, dir2) = (fs.clone(), dir.clone());
        within_watchdog(move || try_persist(&fs2, &dir2, &data(2))).unwrap();
        assert_untouched(&outside);
        assert!(std::fs::symlink_metadata(dir.stable()).unwrap().is_file());
        assert_eq!(
            restore(fs.as_ref(), &dir).unwrap(),
            (data(2), SourceKind::Stable)
        );
    }
}

#[test]
fn restore_snapshot_never_writes_through_a_tmp_symlink() {
    let (_tmp, dir, outside) = with_outside_file();
    let fs = std_fs();
    snapshot_stable_as(&fs, &dir, &data(1), GOOD_ID).unwrap();
    persist(&fs, &dir, &data(2), 3);
    std::os::unix::fs::symlink(&outside, dir.tmp()).unwrap();
    let (fs2, dir2) = (fs.clone(), dir.clone());
    within_watchdog(move || restore_snapshot(fs2.as_ref(), &dir2, GOOD_ID)).unwrap();
    assert_untouched(&outside);
    assert!(std::fs::symlink_metadata(dir.stable()).unwrap().is_file());
    assert_eq!(
        restore(fs.as_ref(), &dir).unwrap(),
        (data(1), SourceKind::Stable)
    );
}

#[test]
fn a_snapshot_copy_never_writes_through_a_symlink() {
    let (_tmp, dir, outside) = with_outside_file();
    let fs = std_fs();
    persist(&fs, &dir, &data(1), 3);
    std::fs::create_dir(dir.snapshots()).unwrap();
    let tmp_name = dir.snapshots().join(format!("{NEW_ID}.tmp"));
    std::os::unix::fs::symlink(&outside, &tmp_name).unwrap();
    let (fs2, dir2) = (fs.clone(), dir.clone());
    within_watchdog(move || snapshot_stable_as(&fs2, &dir2, &data(2), NEW_ID)).unwrap();
    assert_untouched(&outside);
    assert!(read_file(&dir.snapshot(&id(NEW_ID))).is_ok());
}

#[test]
fn the_lock_file_is_never_created_through_a_symlink() {
    let (tmp, dir, _outside) = with_outside_file();
    let target = tmp.path().join("created-by-the-lock");
    std::os::unix::fs::symlink(&target, dir.lock()).unwrap();
    let fs = std_fs();
    let (fs2, dir2) = (fs.clone(), dir.clone());
    let err = within_watchdog(move || try_persist(&fs2, &dir2, &data(1))).unwrap_err();
    assert_eq!(err.reason.as_str(), NOT_REGULAR);
    assert_eq!(err.path, Some(dir.lock()));
    assert!(!target.exists(), "the lock was created through the symlink");
}

/// Reading goes through a symlink to a regular file (a link to a read-only factory default,
/// say), but writing never does: the persist rotates the link itself into the backup.
#[test]
fn a_stable_symlink_to_a_regular_file_is_read_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = std_fs();
    let factory = TableDir::new(tmp.path().join("factory"));
    persist(&fs, &factory, &data(1), 3);
    let factory_bytes = std::fs::read(factory.stable()).unwrap();
    let dir = TableDir::new(tmp.path().join("table"));
    std::fs::create_dir(dir.root()).unwrap();
    std::os::unix::fs::symlink(factory.stable(), dir.stable()).unwrap();
    assert_eq!(
        restore(fs.as_ref(), &dir).unwrap(),
        (data(1), SourceKind::Stable)
    );
    persist(&fs, &dir, &data(2), 3);
    assert_eq!(std::fs::read(factory.stable()).unwrap(), factory_bytes);
    assert!(std::fs::symlink_metadata(dir.backup())
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        restore(fs.as_ref(), &dir).unwrap(),
        (data(2), SourceKind::Stable)
    );
}
