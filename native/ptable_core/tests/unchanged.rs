//! A persist of an unchanged table writes nothing; any difference, other options or a rotted
//! stable file makes it write a complete new file.

mod common;

use common::forge::frame_spans;
use common::*;
use ptable_core::{CommitOutcome, Fs, PersistSession, TableDir};
use std::sync::Arc;

fn persist_outcome(
    fs: &Arc<dyn Fs>,
    dir: &TableDir,
    chunks: &[Vec<u8>],
    level: u8,
) -> CommitOutcome {
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(level)).unwrap();
    for c in chunks {
        session.append(c, 10).unwrap();
    }
    session.commit().unwrap()
}

fn setup(data: &[Vec<u8>]) -> (tempfile::TempDir, TableDir, Arc<dyn Fs>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let fs = std_fs();
    assert_eq!(persist_outcome(&fs, &dir, data, 6), CommitOutcome::Written);
    (tmp, dir, fs)
}

#[test]
fn an_unchanged_table_writes_nothing() {
    let data = property_like_chunks(5, 50);
    let (_tmp, dir, fs) = setup(&data);
    let before = std::fs::read(dir.stable()).unwrap();
    assert_eq!(
        persist_outcome(&fs, &dir, &data, 6),
        CommitOutcome::Unchanged
    );
    assert_eq!(std::fs::read(dir.stable()).unwrap(), before);
    assert!(!dir.backup().exists(), "no rotation happened");
    assert!(!dir.tmp().exists());
    let empty: Vec<Vec<u8>> = Vec::new();
    let (_tmp2, dir2, fs2) = setup(&empty);
    assert_eq!(
        persist_outcome(&fs2, &dir2, &empty, 6),
        CommitOutcome::Unchanged
    );
}

/// Sets the access time of `path` two days back (before its modification time), where
/// `relatime` updates it on the next ordinary read; returns the time set.
fn age_access_time(path: &std::path::Path) -> std::time::SystemTime {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_times(std::fs::FileTimes::new().set_accessed(old))
        .unwrap();
    std::fs::metadata(path).unwrap().accessed().unwrap()
}

#[test]
fn an_unchanged_table_does_not_even_update_access_times() {
    let data = property_like_chunks(5, 50);
    let (tmp, dir, fs) = setup(&property_like_chunks(4, 50));
    assert_eq!(persist_outcome(&fs, &dir, &data, 6), CommitOutcome::Written);
    // Does this filesystem update access times on reads at all?
    let control = tmp.path().join("control");
    std::fs::write(&control, b"x").unwrap();
    let aged = age_access_time(&control);
    std::fs::read(&control).unwrap();
    if std::fs::metadata(&control).unwrap().accessed().unwrap() == aged {
        println!("skipped: reads do not update access times on this filesystem (noatime)");
        return;
    }
    // An access-time update is an inode write that reaches storage later: the persist
    // below reads the whole stable file and the backup's header.
    let stable = age_access_time(&dir.stable());
    let backup = age_access_time(&dir.backup());
    assert_eq!(
        persist_outcome(&fs, &dir, &data, 6),
        CommitOutcome::Unchanged
    );
    let accessed = |p: &std::path::Path| std::fs::metadata(p).unwrap().accessed().unwrap();
    assert_eq!(accessed(&dir.stable()), stable);
    assert_eq!(accessed(&dir.backup()), backup);
}

#[test]
fn any_difference_writes_a_complete_new_file() {
    let data = property_like_chunks(5, 50);
    let mut changed_middle = data.clone();
    changed_middle[2][7] ^= 1;
    let mut longer = data.clone();
    longer.push(b"one more".to_vec());
    let shorter = data[..4].to_vec();
    let mut changed_last = data.clone();
    changed_last[4].push(b'x');
    for variant in [changed_middle, longer, shorter, changed_last, Vec::new()] {
        let (_tmp, dir, fs) = setup(&data);
        assert_eq!(
            persist_outcome(&fs, &dir, &variant, 6),
            CommitOutcome::Written
        );
        assert_eq!(restore(fs.as_ref(), &dir).unwrap().0, variant);
        assert_eq!(read_file(&dir.backup()).unwrap(), data);
    }
}

#[test]
fn other_options_write_a_new_file() {
    let data = property_like_chunks(3, 50);
    let (_tmp, dir, fs) = setup(&data);
    assert_eq!(persist_outcome(&fs, &dir, &data, 3), CommitOutcome::Written);
    assert_eq!(restore(fs.as_ref(), &dir).unwrap().0, data);
}

#[test]
fn a_rotted_stable_file_is_never_kept_because_the_table_looks_unchanged() {
    let data = property_like_chunks(4, 50);
    let (_tmp, dir, fs) = setup(&data);
    let len = std::fs::metadata(dir.stable()).unwrap().len() as usize;
    for offset in [100, len / 2, len - 1] {
        let mut bytes = std::fs::read(dir.stable()).unwrap();
        bytes[offset] ^= 0x40;
        std::fs::write(dir.stable(), &bytes).unwrap();
        assert_eq!(persist_outcome(&fs, &dir, &data, 6), CommitOutcome::Written);
        assert_eq!(read_file(&dir.stable()).unwrap(), data);
    }
}

#[test]
fn a_changed_table_copies_the_frames_before_its_first_change() {
    use ptable_core::codec::ZSTD_END_OF_FRAME;
    let first = property_like_chunks(20, 60);
    let (_tmp, dir, fs) = setup(&first);
    let mut table = first.clone();
    // Three persists, each changing a later chunk: the third copies across the restart the
    // second one made.
    for (changed, seed) in [(9usize, 1u8), (14, 2), (3, 3)] {
        let before = std::fs::read(dir.stable()).unwrap();
        table[changed].push(seed);
        assert_eq!(
            persist_outcome(&fs, &dir, &table, 6),
            CommitOutcome::Written
        );
        let after = std::fs::read(dir.stable()).unwrap();
        let (old, new) = (frame_spans(&before), frame_spans(&after));
        assert_eq!(new.len(), table.len());
        for i in 0..changed {
            assert_eq!(before[old[i].clone()], after[new[i].clone()], "frame {i}");
        }
        let restart = &after[new[changed].start + ptable_core::format::FRAME_HEADER_LEN..];
        assert_eq!(&restart[..3], &ZSTD_END_OF_FRAME, "frame {changed}");
        assert_eq!(&restart[3..7], &[0x28, 0xB5, 0x2F, 0xFD]);
        let mut file = ptable_core::TableFile::open(fs.as_ref(), &dir.stable()).unwrap();
        file.verify().unwrap();
        assert_eq!(
            read_all(&mut file).unwrap(),
            table,
            "after changing {changed}"
        );
        let (restored, _) = restore(fs.as_ref(), &dir).unwrap();
        assert_eq!(restored, table);
    }
}

#[test]
fn a_table_that_lost_its_last_chunks_copies_the_rest() {
    let first = property_like_chunks(8, 60);
    let (_tmp, dir, fs) = setup(&first);
    let shorter = first[..5].to_vec();
    assert_eq!(
        persist_outcome(&fs, &dir, &shorter, 6),
        CommitOutcome::Written
    );
    let (restored, _) = restore(fs.as_ref(), &dir).unwrap();
    assert_eq!(restored, shorter);
}
