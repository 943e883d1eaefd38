//! One definition of a valid file, everywhere: a file whose CRCs all pass but whose contents
//! fail their hashes (a wrong content digest, a wrong chunk XXH3-64, chunk contents that
//! changed under their hash) is corrupt for restore, rotation, the unchanged-table check,
//! snapshots, restore_snapshot and inspect.

mod common;

use common::forge::{ended_zstd_frame, forgeries};
use common::*;
use ptable_core::{
    inspect_dir, open_newest_valid, restore_snapshot, CommitOutcome, FileRole, FileStatus, Fs,
    PersistSession, SnapshotId, SourceKind, TableDir,
};
use std::path::PathBuf;
use std::sync::Arc;

/// The compression levels tried: chunks stored raw, and a zstd stream.
const LEVELS: [u8; 2] = [0, 6];

/// The backup's contents.
fn old() -> Vec<Vec<u8>> {
    chunks(3, 250, 1)
}

/// The stable file's contents.
fn new() -> Vec<Vec<u8>> {
    chunks(4, 300, 2)
}

/// A directory whose backup holds `old()` and whose stable file holds `new()`, at `level`.
struct Generations {
    _tmp: tempfile::TempDir,
    dir: TableDir,
    fs: Arc<dyn Fs>,
    backup: Vec<u8>,
    stable: Vec<u8>,
}

fn two_generations(level: u8) -> Generations {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("table"));
    let fs = std_fs();
    persist(&fs, &dir, &old(), level);
    persist(&fs, &dir, &new(), level);
    let backup = std::fs::read(dir.backup()).unwrap();
    let stable = std::fs::read(dir.stable()).unwrap();
    Generations {
        _tmp: tmp,
        dir,
        fs,
        backup,
        stable,
    }
}

/// Runs `check` on a fresh two-generation directory whose stable file is replaced by each
/// forgery of it, at each level.
fn for_each_forged_stable(check: impl Fn(&Generations, &Vec<u8>, String)) {
    for level in LEVELS {
        for (what, forged) in forgeries(&two_generations(level).stable) {
            let g = two_generations(level);
            std::fs::write(g.dir.stable(), &forged).unwrap();
            check(&g, &forged, format!("{what}, level {level}"));
        }
    }
}

fn assert_same_bytes(path: &std::path::Path, bytes: &[u8], what: &str) {
    let now = std::fs::read(path).unwrap();
    assert!(now == bytes, "{what}: {} changed", path.display());
}

/// The contents of the quarantined files of `dir`.
fn quarantined(dir: &TableDir) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_forgery_passes_its_crcs_and_fails_verification() {
    for level in LEVELS {
        let g = two_generations(level);
        for (what, forged) in forgeries(&g.stable) {
            std::fs::write(g.dir.stable(), &forged).unwrap();
            let mut file = ptable_core::TableFile::open(g.fs.as_ref(), &g.dir.stable())
                .unwrap_or_else(|e| panic!("{what}: the header opens: {e}"));
            file.rewind().unwrap();
            while let Some(frame) = file.next_stored_frame().transpose() {
                frame.unwrap_or_else(|e| panic!("{what}: every frame CRC passes: {e}"));
            }
            let err = file.verify().unwrap_err();
            assert!(err.reason.is_corruption(), "{what}, level {level}: {err}");
        }
    }
}

#[test]
fn restore_skips_and_quarantines_a_stable_file_whose_contents_fail_their_hashes() {
    for_each_forged_stable(|g, forged, what| {
        let mut source = open_newest_valid(g.fs.as_ref(), &g.dir, Some(5))
            .ok()
            .unwrap_or_else(|| panic!("{what}: the backup is good"));
        assert_eq!(source.kind, SourceKind::Backup, "{what}");
        assert_eq!(read_all(&mut source.file).unwrap(), old(), "{what}");
        let failures: Vec<_> = source.failures.iter().map(|e| e.path.clone()).collect();
        assert_eq!(failures, vec![Some(g.dir.stable())], "{what}");
        assert!(source.failures[0].reason.is_corruption(), "{what}");
        assert_eq!(source.quarantined.len(), 1, "{what}");
        assert!(
            quarantined(&g.dir) == [forged.clone()],
            "{what}: not quarantined"
        );
        assert!(!g.dir.stable().exists(), "{what}");
        assert_same_bytes(&g.dir.backup(), &g.backup, &what);
    });
}

#[test]
fn a_persist_never_rotates_a_stable_file_whose_contents_fail_their_hashes_over_the_backup() {
    let newer = chunks(2, 100, 3);
    for_each_forged_stable(|g, forged, what| {
        assert_eq!(
            persist(&g.fs, &g.dir, &newer, 6),
            CommitOutcome::Written,
            "{what}"
        );
        assert_same_bytes(&g.dir.backup(), &g.backup, &what);
        assert!(
            quarantined(&g.dir) == [forged.clone()],
            "{what}: not quarantined"
        );
        assert_eq!(
            restore(g.fs.as_ref(), &g.dir),
            Ok((newer.clone(), SourceKind::Stable)),
            "{what}"
        );
    });
}

#[test]
fn a_persist_of_the_same_table_over_a_stable_file_whose_contents_fail_writes_a_valid_file() {
    for level in LEVELS {
        for (what, forged) in forgeries(&two_generations(level).stable) {
            let g = two_generations(level);
            std::fs::write(g.dir.stable(), &forged).unwrap();
            // The same table and options as the stable file's: only its contents are wrong.
            let outcome = persist(&g.fs, &g.dir, &new(), level);
            assert_eq!(outcome, CommitOutcome::Written, "{what}, level {level}");
            assert_eq!(read_file(&g.dir.stable()).unwrap(), new(), "{what}");
            assert_same_bytes(&g.dir.backup(), &g.backup, what);
            assert!(
                quarantined(&g.dir) == [forged.clone()],
                "{what}: not quarantined"
            );
        }
    }
}

#[test]
fn inspect_reports_a_stable_file_whose_contents_fail_their_hashes_as_corrupt() {
    for_each_forged_stable(|g, _forged, what| {
        let status = |verify: bool, role: FileRole| {
            inspect_dir(g.fs.as_ref(), &g.dir, verify)
                .unwrap()
                .into_iter()
                .find(|r| r.role == role)
                .map(|r| r.status)
        };
        assert!(
            matches!(
                status(true, FileRole::Stable),
                Some(FileStatus::Invalid(reason)) if reason.is_corruption()
            ),
            "{what}: {:?}",
            status(true, FileRole::Stable)
        );
        assert_eq!(status(true, FileRole::Backup), Some(FileStatus::Valid));
        // Without verification nothing is called valid: headers alone decide nothing.
        assert_eq!(
            status(false, FileRole::Stable),
            Some(FileStatus::Unverified)
        );
        assert_eq!(
            status(false, FileRole::Backup),
            Some(FileStatus::Unverified)
        );
    });
}

/// The snapshot files of `dir` (complete or not).
fn snapshot_names(dir: &TableDir) -> Vec<String> {
    match std::fs::read_dir(dir.snapshots()) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_snapshot_is_never_copied_from_a_stable_file_whose_contents_fail_their_hashes() {
    for_each_forged_stable(|g, forged, what| {
        // The stable file goes bad between a persist's commit and its snapshot.
        let mut session = PersistSession::begin(g.fs.clone(), g.dir.clone(), options(6)).unwrap();
        for c in chunks(2, 100, 4) {
            session.append(&c, 10).unwrap();
        }
        session.commit().unwrap();
        std::fs::write(g.dir.stable(), forged).unwrap();
        let err = session
            .snapshot(5, &mut SnapshotId::random)
            .expect_err(&what);
        assert!(err.reason.is_corruption(), "{what}: {err}");
        assert_eq!(err.path, Some(g.dir.stable()), "{what}");
        assert_eq!(snapshot_names(&g.dir), Vec::<String>::new(), "{what}");
    });
}

#[test]
fn a_snapshot_of_the_same_table_over_a_forged_stable_file_is_of_a_fresh_valid_file() {
    for level in LEVELS {
        for (what, forged) in forgeries(&two_generations(level).stable) {
            let g = two_generations(level);
            std::fs::write(g.dir.stable(), &forged).unwrap();
            let mut session =
                PersistSession::begin(g.fs.clone(), g.dir.clone(), options(level)).unwrap();
            for c in new() {
                session.append(&c, 10).unwrap();
            }
            assert_eq!(session.commit().unwrap(), CommitOutcome::Written, "{what}");
            let id = session.snapshot(5, &mut SnapshotId::random).unwrap();
            assert_eq!(read_file(&g.dir.snapshot(&id)).unwrap(), new(), "{what}");
        }
    }
}

#[test]
fn restore_snapshot_refuses_a_snapshot_whose_contents_fail_their_hashes() {
    for level in LEVELS {
        let g = two_generations(level);
        let mut session = PersistSession::begin(g.fs.clone(), g.dir.clone(), options(6)).unwrap();
        for c in new() {
            session.append(&c, 10).unwrap();
        }
        session.commit().unwrap();
        let id = session.snapshot(5, &mut SnapshotId::random).unwrap();
        drop(session);
        let snapshot = std::fs::read(g.dir.snapshot(&id)).unwrap();
        let (stable, backup) = (
            std::fs::read(g.dir.stable()).unwrap(),
            std::fs::read(g.dir.backup()).unwrap(),
        );
        for (what, forged) in forgeries(&snapshot) {
            std::fs::write(g.dir.snapshot(&id), &forged).unwrap();
            let err = restore_snapshot(g.fs.as_ref(), &g.dir, id.as_str()).unwrap_err();
            assert!(err.reason.is_corruption(), "{what}: {err}");
            assert_eq!(err.path, Some(g.dir.snapshot(&id)), "{what}");
            assert_same_bytes(&g.dir.stable(), &stable, what);
            assert_same_bytes(&g.dir.backup(), &backup, what);
            assert!(!g.dir.tmp().exists(), "{what}");
        }
    }
}

#[test]
fn restore_snapshot_keeps_the_backup_when_the_stable_file_fails_its_hashes() {
    for_each_forged_stable(|g, forged, what| {
        // A snapshot of the backup's contents, taken without touching stable or backup.
        let other = TableDir::new(g.dir.root().with_file_name("other"));
        let mut session = PersistSession::begin(g.fs.clone(), other.clone(), options(6)).unwrap();
        for c in old() {
            session.append(&c, 10).unwrap();
        }
        session.commit().unwrap();
        let id = session.snapshot(5, &mut SnapshotId::random).unwrap();
        drop(session);
        std::fs::create_dir_all(g.dir.snapshots()).unwrap();
        std::fs::copy(other.snapshot(&id), g.dir.snapshot(&id)).unwrap();

        restore_snapshot(g.fs.as_ref(), &g.dir, id.as_str()).unwrap();
        assert_same_bytes(&g.dir.backup(), &g.backup, &what);
        assert!(
            quarantined(&g.dir) == [forged.clone()],
            "{what}: not quarantined"
        );
        assert_eq!(
            restore(g.fs.as_ref(), &g.dir),
            Ok((old(), SourceKind::Stable)),
            "{what}"
        );
    });
}

#[test]
fn frames_are_copied_only_from_a_stream_that_can_be_ended_after_them() {
    // The stable file's zstd stream ends after its first chunk (a block marked last), its
    // CRCs recomputed: chunk 0 still reads, chunk 1 does not. A persist whose table shares
    // chunk 0 must not copy frame 0, whose stream the new frames could not continue.
    let g = two_generations(6);
    let forged = ended_zstd_frame(&g.stable);
    let mut changed = new();
    changed[1].push(b'!');
    for (what, table) in [("chunk 1 changed", changed), ("unchanged", new())] {
        let g = two_generations(6);
        std::fs::write(g.dir.stable(), &forged).unwrap();
        assert_eq!(
            persist(&g.fs, &g.dir, &table, 6),
            CommitOutcome::Written,
            "{what}"
        );
        assert_eq!(read_file(&g.dir.stable()).unwrap(), table, "{what}");
        assert_same_bytes(&g.dir.backup(), &g.backup, what);
        assert!(
            quarantined(&g.dir) == [forged.clone()],
            "{what}: not quarantined"
        );
    }
}
