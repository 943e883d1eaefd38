//! The persist / restore / snapshot protocol on the real filesystem (`StdFs` in tempdirs):
//! fallbacks, rotation, snapshot ordering and retention, listing, restore_snapshot, legacy
//! files, locking and abandoned sessions.

mod common;

use common::*;
use ptable_core::format::encode_legacy;
use ptable_core::fs::{EntryMeta, LockGuard, ReadFile, WriteFile};
use ptable_core::{
    list_snapshots, open_newest_valid, restore_snapshot, Fs, PersistSession, Reason, SnapshotId,
    SourceKind, StdFs, TableDir,
};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

fn setup() -> (tempfile::TempDir, TableDir, Arc<dyn Fs>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("table"));
    (tmp, dir, std_fs())
}

/// Table contents number `n` (distinct per `n`).
fn data(n: u64) -> Vec<Vec<u8>> {
    chunks(3, 200 + n as usize, n)
}

/// Persists table `n` and returns its contents.
fn persist_n(fs: &Arc<dyn Fs>, dir: &TableDir, n: u64) -> Vec<Vec<u8>> {
    let d = data(n);
    persist(fs, dir, &d, 3);
    d
}

/// Persists table `n` and takes a snapshot of it.
fn snapshot_n(fs: &Arc<dyn Fs>, dir: &TableDir, n: u64, max: usize) -> SnapshotId {
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(3)).unwrap();
    for c in data(n) {
        session.append(&c, 10).unwrap();
    }
    session.commit().unwrap();
    session.snapshot(max, &mut SnapshotId::random).unwrap()
}

fn bytes(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Flips one bit `from_end` bytes before the end of the file (inside the last frame).
fn corrupt(path: &Path, from_end: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = b.len() - from_end;
    b[at] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn restored(fs: &Arc<dyn Fs>, dir: &TableDir) -> Result<(Vec<Vec<u8>>, SourceKind), Reason> {
    restore(fs.as_ref(), dir)
}

fn listed_ids(fs: &Arc<dyn Fs>, dir: &TableDir) -> Vec<SnapshotId> {
    list_snapshots(fs.as_ref(), dir)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[test]
fn restore_falls_back_to_the_backup_when_the_stable_file_is_random_bytes() {
    let (_tmp, dir, fs) = setup();
    let a = persist_n(&fs, &dir, 1);
    persist_n(&fs, &dir, 2);
    let len = bytes(&dir.stable()).unwrap().len();
    let random = chunks(1, len, 99).remove(0);
    // Pure noise, and noise behind a valid magic and version.
    for (noise, reason) in [
        (random.clone(), Reason::BadFile),
        (
            [&b"PTABLE\x02\x00\x40\x00\x00\x00"[..], &random[10..]].concat(),
            Reason::BadChecksum,
        ),
    ] {
        std::fs::write(dir.stable(), &noise).unwrap();
        assert_eq!(restored(&fs, &dir), Ok((a.clone(), SourceKind::Backup)));
        let source = open_newest_valid(fs.as_ref(), &dir, None).ok().unwrap();
        assert_eq!(source.failures.len(), 1);
        assert_eq!(source.failures[0].reason, reason);
        assert_eq!(source.failures[0].path.as_deref(), Some(&*dir.stable()));
        // Without quarantine the evidence stays where it is.
        assert_eq!(bytes(&dir.stable()), Some(noise));
    }
}

#[test]
fn open_newest_valid_is_enoent_when_neither_stable_nor_backup_exists() {
    let (_tmp, dir, fs) = setup();
    let check = |what: &str| {
        let failure = open_newest_valid(fs.as_ref(), &dir, None).err().unwrap();
        assert_eq!(failure.error.reason, Reason::Enoent, "{what}");
        assert_eq!(
            failure.error.path.as_deref(),
            Some(&*dir.stable()),
            "{what}"
        );
        assert!(failure.failures.is_empty(), "{what}");
    };
    check("no directory");
    std::fs::create_dir(dir.root()).unwrap();
    check("empty directory");
    // An incomplete tmp file and a lock file are not tables.
    std::fs::write(dir.tmp(), [0u8; 80]).unwrap();
    std::fs::write(dir.lock(), b"").unwrap();
    check("only a partial tmp file");
}

#[test]
fn open_newest_valid_reports_the_last_failure_when_nothing_verifies() {
    let (_tmp, dir, fs) = setup();
    persist_n(&fs, &dir, 1);
    persist_n(&fs, &dir, 2);
    let (good_stable, good_backup) = (bytes(&dir.stable()).unwrap(), bytes(&dir.backup()).unwrap());
    let garbage = chunks(1, 300, 5).remove(0);
    let reasons = |fs: &Arc<dyn Fs>| {
        let failure = open_newest_valid(fs.as_ref(), &dir, None).err().unwrap();
        let all: Vec<(Reason, PathBuf)> = failure
            .failures
            .iter()
            .map(|e| (e.reason, e.path.clone().unwrap()))
            .collect();
        (failure.error.reason, failure.error.path.unwrap(), all)
    };

    // Only a corrupt stable file.
    std::fs::remove_file(dir.backup()).unwrap();
    std::fs::write(dir.stable(), &garbage).unwrap();
    let (reason, path, all) = reasons(&fs);
    assert_eq!((reason, &path), (Reason::BadFile, &dir.stable()));
    assert_eq!(all, vec![(Reason::BadFile, dir.stable())]);

    // Stable garbage, backup with a flipped bit in a frame: the backup's failure is reported.
    std::fs::write(dir.backup(), &good_backup).unwrap();
    corrupt(&dir.backup(), 3);
    let (reason, path, all) = reasons(&fs);
    assert_eq!((reason, &path), (Reason::BadChecksum, &dir.backup()));
    assert_eq!(
        all,
        vec![
            (Reason::BadFile, dir.stable()),
            (Reason::BadChecksum, dir.backup())
        ]
    );

    // And the other way round.
    std::fs::write(dir.stable(), &good_stable).unwrap();
    corrupt(&dir.stable(), 3);
    std::fs::write(dir.backup(), &garbage[..50]).unwrap();
    let (reason, path, _) = reasons(&fs);
    assert_eq!((reason, &path), (Reason::BadFile, &dir.backup()));
}

#[test]
fn persisting_twice_keeps_the_previous_stable_file_as_the_backup() {
    let (_tmp, dir, fs) = setup();
    persist_n(&fs, &dir, 1);
    let first = bytes(&dir.stable()).unwrap();
    assert_eq!(bytes(&dir.backup()), None);
    let b = persist_n(&fs, &dir, 2);
    assert_eq!(read_file(&dir.stable()).unwrap(), b);
    assert_eq!(bytes(&dir.backup()), Some(first));
    let second = bytes(&dir.stable()).unwrap();
    let c = persist_n(&fs, &dir, 3);
    assert_eq!(read_file(&dir.stable()).unwrap(), c);
    assert_eq!(bytes(&dir.backup()), Some(second));
    assert!(!dir.tmp().exists());
    assert_eq!(restored(&fs, &dir), Ok((c, SourceKind::Stable)));
}

#[test]
fn a_corrupt_stable_file_is_not_rotated_into_the_backup() {
    let (_tmp, dir, fs) = setup();
    let a = persist_n(&fs, &dir, 1);
    persist_n(&fs, &dir, 2);
    let backup = bytes(&dir.backup()).unwrap();
    assert_eq!(read_file(&dir.backup()).unwrap(), a);
    corrupt(&dir.stable(), 3);
    let rotten = bytes(&dir.stable()).unwrap();
    let c = persist_n(&fs, &dir, 3);
    assert_eq!(restored(&fs, &dir), Ok((c, SourceKind::Stable)));
    // The good backup survived; the rotten file was moved aside, not into the backup.
    assert_eq!(bytes(&dir.backup()), Some(backup));
    let quarantined: Vec<Vec<u8>> = std::fs::read_dir(dir.root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(quarantined, vec![rotten]);
}

#[test]
fn snapshots_taken_in_quick_succession_list_in_creation_order() {
    let (_tmp, dir, fs) = setup();
    // Random ids: their order says nothing; the sequence numbers do.
    let ids: Vec<SnapshotId> = (1..=5).map(|n| snapshot_n(&fs, &dir, n, 10)).collect();
    let listed = list_snapshots(fs.as_ref(), &dir).unwrap();
    assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let sequences: Vec<Option<u64>> = listed.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=5).map(Some).collect::<Vec<_>>());
    for (n, id) in (1..=5).zip(&ids) {
        assert_eq!(read_file(&dir.snapshot(id)).unwrap(), data(n));
    }
}

#[test]
fn retention_keeps_the_newest_snapshots() {
    let (_tmp, dir, fs) = setup();
    let ids: Vec<SnapshotId> = (1..=5).map(|n| snapshot_n(&fs, &dir, n, 2)).collect();
    assert_eq!(listed_ids(&fs, &dir), ids[3..]);
    assert_eq!(read_file(&dir.snapshot(&ids[3])).unwrap(), data(4));
    assert_eq!(read_file(&dir.snapshot(&ids[4])).unwrap(), data(5));
    for id in &ids[..3] {
        assert!(!dir.snapshot(id).exists(), "{id} kept");
    }
    let names = std::fs::read_dir(dir.snapshots()).unwrap().count();
    assert_eq!(names, 2);
}

#[test]
fn list_snapshots_ignores_junk_and_tmp_leftovers() {
    let (_tmp, dir, fs) = setup();
    let first = snapshot_n(&fs, &dir, 1, 10);
    let snaps = dir.snapshots();
    let copy = bytes(&dir.snapshot(&first)).unwrap();
    for name in [
        "junk",
        "0123456789abcdef",
        "0123456789ABCDE",
        "0123456789ABCDEF0",
        ".0123456789ABCDEF",
    ] {
        std::fs::write(snaps.join(name), &copy).unwrap();
    }
    // A complete copy under a tmp name (a snapshot cut off after its fsync) is not listed.
    std::fs::write(snaps.join("ABCDEF0123456789.tmp"), &copy).unwrap();
    std::fs::create_dir(snaps.join("1111111111111111")).unwrap();
    // A valid id with garbage contents: listed by modification time, before sequenced ones.
    let garbage_id = SnapshotId::parse("AAAAAAAAAAAAAAAA").unwrap();
    std::fs::write(dir.snapshot(&garbage_id), b"not a table").unwrap();
    let mtime = std::fs::metadata(dir.snapshot(&garbage_id))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;

    let listed = list_snapshots(fs.as_ref(), &dir).unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![garbage_id, first]
    );
    assert_eq!(listed[0].sequence, None);
    assert_eq!(listed[0].created_unix_us, mtime);
    assert_eq!(listed[1].sequence, Some(1));

    // The next snapshot cleans up the tmp leftover and nothing else.
    let second = snapshot_n(&fs, &dir, 2, 10);
    assert_eq!(listed_ids(&fs, &dir), vec![garbage_id, first, second]);
    assert!(!snaps.join("ABCDEF0123456789.tmp").exists());
    assert!(snaps.join("junk").exists() && snaps.join("1111111111111111").is_dir());
}

#[test]
fn list_snapshots_without_a_snapshots_directory_is_empty() {
    let (_tmp, dir, fs) = setup();
    assert_eq!(list_snapshots(fs.as_ref(), &dir).unwrap(), vec![]);
    persist_n(&fs, &dir, 1);
    assert!(!dir.snapshots().exists());
    assert_eq!(list_snapshots(fs.as_ref(), &dir).unwrap(), vec![]);
}

#[test]
fn list_snapshots_of_a_data_directory_that_is_a_regular_file_is_an_error() {
    let (tmp, _, fs) = setup();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = list_snapshots(fs.as_ref(), &TableDir::new(&file)).unwrap_err();
    assert_eq!(err.reason, Reason::Os("enotdir"));
    assert_eq!(err.path, Some(file.join("snapshots")));
}

/// `StdFs` counting every call.
#[derive(Default)]
struct CountingFs(AtomicUsize);

impl CountingFs {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Fs for CountingFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.tick();
        StdFs.create(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        self.tick();
        StdFs.open(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.tick();
        StdFs.open_append(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick();
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick();
        StdFs.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.tick();
        StdFs.create_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.tick();
        StdFs.sync_dir(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.tick();
        StdFs.read_dir(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        self.tick();
        StdFs.metadata(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        self.tick();
        StdFs.try_lock(path)
    }
}

#[test]
fn restore_snapshot_refuses_malformed_ids_without_touching_the_filesystem() {
    let (_tmp, dir, fs) = setup();
    snapshot_n(&fs, &dir, 1, 10);
    let counting = CountingFs::default();
    for id in [
        "../../etc/passwd",
        "0123456789abcdef",
        "0123456789ABCDE",
        "0123456789ABCDEF0",
        "",
        "../0123456789ABC",
        "0123456789ABCDE/",
        "0123456789ABCDEF.tmp",
    ] {
        let err = restore_snapshot(&counting, &dir, id).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSnapshotId, "{id:?}");
    }
    assert_eq!(counting.0.load(Ordering::SeqCst), 0);
}

#[test]
fn restore_snapshot_of_an_unknown_id_is_enoent() {
    let (_tmp, dir, fs) = setup();
    persist_n(&fs, &dir, 1);
    let stable = bytes(&dir.stable());
    let unknown = SnapshotId::parse("0123456789ABCDEF").unwrap();
    // No snapshots directory yet, then one without that snapshot.
    for _ in 0..2 {
        let err = restore_snapshot(fs.as_ref(), &dir, unknown.as_str()).unwrap_err();
        assert_eq!(err.reason, Reason::Enoent);
        assert_eq!(err.path, Some(dir.snapshot(&unknown)));
        snapshot_n(&fs, &dir, 1, 10);
    }
    assert_eq!(bytes(&dir.stable()), stable);
}

#[test]
fn restore_snapshot_of_a_corrupt_snapshot_changes_nothing() {
    let (_tmp, dir, fs) = setup();
    let id = snapshot_n(&fs, &dir, 1, 10);
    let b = persist_n(&fs, &dir, 2);
    let good = bytes(&dir.snapshot(&id)).unwrap();
    let (stable, backup) = (bytes(&dir.stable()), bytes(&dir.backup()));
    let mut header_flip = good.clone();
    header_flip[30] ^= 1;
    let mut frame_flip = good.clone();
    let last = frame_flip.len() - 2;
    frame_flip[last] ^= 1;
    for (what, broken) in [
        ("header", header_flip),
        ("frame", frame_flip),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(dir.snapshot(&id), &broken).unwrap();
        let err = restore_snapshot(fs.as_ref(), &dir, id.as_str()).unwrap_err();
        assert!(err.reason.is_corruption(), "{what}: {err:?}");
        assert_eq!(err.path, Some(dir.snapshot(&id)), "{what}");
        assert_eq!(bytes(&dir.stable()), stable, "{what}");
        assert_eq!(bytes(&dir.backup()), backup, "{what}");
        assert!(!dir.tmp().exists(), "{what}");
        assert_eq!(restored(&fs, &dir), Ok((b.clone(), SourceKind::Stable)));
    }
}

#[test]
fn restore_snapshot_brings_the_old_contents_back_with_the_previous_stable_as_backup() {
    let (_tmp, dir, fs) = setup();
    let id = snapshot_n(&fs, &dir, 1, 10);
    persist_n(&fs, &dir, 2);
    let previous = bytes(&dir.stable());
    restore_snapshot(fs.as_ref(), &dir, id.as_str()).unwrap();
    assert_eq!(restored(&fs, &dir), Ok((data(1), SourceKind::Stable)));
    assert_eq!(bytes(&dir.backup()), previous);
    assert!(!dir.tmp().exists());
    // The snapshot itself is still there and unchanged in meaning.
    assert_eq!(read_file(&dir.snapshot(&id)).unwrap(), data(1));
}

fn legacy_payload() -> Vec<u8> {
    b"\x83l\x00\x00\x00\x01h\x02m\x00\x00\x00\x01am\x00\x00\x00\x01bj".to_vec()
}

#[test]
fn a_legacy_stable_file_restores_and_becomes_the_backup() {
    let (_tmp, dir, fs) = setup();
    std::fs::create_dir(dir.root()).unwrap();
    let legacy = encode_legacy(&legacy_payload());
    std::fs::write(dir.stable(), &legacy).unwrap();
    assert_eq!(
        restored(&fs, &dir),
        Ok((vec![legacy_payload()], SourceKind::Stable))
    );
    let a = persist_n(&fs, &dir, 1);
    assert_eq!(restored(&fs, &dir), Ok((a, SourceKind::Stable)));
    assert_eq!(bytes(&dir.backup()), Some(legacy));
}

#[test]
fn a_legacy_snapshot_is_listed_by_mtime_and_restorable() {
    let (_tmp, dir, fs) = setup();
    let v2 = snapshot_n(&fs, &dir, 1, 10);
    // Written after the v2 snapshot, yet listed first: it has no sequence number.
    let legacy_id = SnapshotId::parse("0000000000000001").unwrap();
    let legacy = encode_legacy(&legacy_payload());
    std::fs::write(dir.snapshot(&legacy_id), &legacy).unwrap();
    let listed = list_snapshots(fs.as_ref(), &dir).unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![legacy_id, v2]
    );
    assert_eq!(listed[0].sequence, None);

    let previous = bytes(&dir.stable());
    restore_snapshot(fs.as_ref(), &dir, legacy_id.as_str()).unwrap();
    assert_eq!(
        restored(&fs, &dir),
        Ok((vec![legacy_payload()], SourceKind::Stable))
    );
    // A legacy file is copied byte for byte.
    assert_eq!(bytes(&dir.stable()), Some(legacy));
    assert_eq!(bytes(&dir.backup()), previous);
}

#[test]
fn begin_on_a_locked_directory_is_busy() {
    let (_tmp, dir, fs) = setup();
    let id = snapshot_n(&fs, &dir, 1, 10);
    let holder = PersistSession::begin(fs.clone(), dir.clone(), options(3)).unwrap();
    let err = PersistSession::begin(fs.clone(), dir.clone(), options(3))
        .err()
        .unwrap();
    assert_eq!(err.reason, Reason::Busy);
    assert_eq!(err.path, Some(dir.lock()));
    let err = restore_snapshot(fs.as_ref(), &dir, id.as_str()).unwrap_err();
    assert_eq!(err.reason, Reason::Busy);
    drop(holder);
    assert!(PersistSession::begin(fs.clone(), dir.clone(), options(3)).is_ok());
}

#[test]
fn a_session_dropped_without_commit_removes_its_tmp_file() {
    let (_tmp, dir, fs) = setup();
    let a = persist_n(&fs, &dir, 1);
    let stable = bytes(&dir.stable());
    {
        let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(3)).unwrap();
        for c in data(2) {
            session.append(&c, 10).unwrap();
        }
        assert!(dir.tmp().exists(), "a differing table is being written");
    }
    assert!(!dir.tmp().exists());
    assert_eq!(bytes(&dir.stable()), stable);
    assert_eq!(restored(&fs, &dir), Ok((a.clone(), SourceKind::Stable)));

    // The same through abort, after which the session is closed.
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(3)).unwrap();
    session.append(&data(2)[0], 10).unwrap();
    session.abort();
    assert!(!dir.tmp().exists());
    assert_eq!(session.commit().unwrap_err().reason, Reason::Closed);
    assert_eq!(
        session.append(&data(2)[1], 10).unwrap_err().reason,
        Reason::Closed
    );
    drop(session);
    assert_eq!(bytes(&dir.stable()), stable);
}

#[test]
fn a_complete_tmp_file_is_restored_when_stable_and_backup_are_gone() {
    let (_tmp, dir, fs) = setup();
    let a = persist_n(&fs, &dir, 1);
    std::fs::rename(dir.stable(), dir.tmp()).unwrap();
    assert_eq!(restored(&fs, &dir), Ok((a, SourceKind::Tmp)));
    // An incomplete one is not.
    let b = bytes(&dir.tmp()).unwrap();
    std::fs::write(dir.tmp(), &b[..b.len() - 1]).unwrap();
    assert_eq!(restored(&fs, &dir), Err(Reason::Enoent));
}
