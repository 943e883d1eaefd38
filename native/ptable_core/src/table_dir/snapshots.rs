//! Snapshots: listing, taking (with retention) and restoring one as the stable file.

use super::{
    ensure_dir, install_tmp_as_stable, lock_dir, next_stable_sequence, remove_if_present, TableDir,
    DEFAULT_MAX_QUARANTINED, SNAPSHOT_TMP_SUFFIX,
};
use crate::error::{Error, Reason, Result};
use crate::fs::{unix_us, Fs};
use crate::reader::{FileHeader, TableFile};
use crate::snapshot_id::SnapshotId;
use crate::writer::Stamp;
use std::io;
use std::path::Path;

/// A snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub id: SnapshotId,
    /// From the snapshot's header; `None` for legacy or unreadable files, which are ordered
    /// by modification time before all others.
    pub sequence: Option<u64>,
    /// Creation time from the header, else the file's modification time.
    pub created_unix_us: i64,
}

/// Snapshots ordered oldest first. A missing snapshots directory gives an empty list; a
/// snapshot that cannot be read for another reason than corruption gives that error.
pub fn list_snapshots(fs: &dyn Fs, dir: &TableDir) -> Result<Vec<SnapshotEntry>> {
    let snapshots = dir.snapshots();
    let names = match fs.read_dir(&snapshots) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&e, &snapshots)),
    };
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let Some(id) = name.to_str().and_then(|s| SnapshotId::parse(s).ok()) else {
            continue;
        };
        let path = dir.snapshot(&id);
        let header = TableFile::open(fs, &path).map(|f| *f.header());
        let entry = match header {
            Ok(FileHeader::Current(h)) => SnapshotEntry {
                id,
                sequence: Some(h.sequence),
                created_unix_us: h.created_unix_us,
            },
            // Not a snapshot the library wrote (a FIFO, a directory, ...), or deleted
            // meanwhile: neither listed nor ever deleted by retention.
            Err(e) if matches!(e.reason, Reason::NotARegularFile | Reason::Enoent) => continue,
            // An I/O error says nothing about the file's place in the order; listing it as
            // unreadable would make retention delete it first.
            Err(e) if !e.reason.is_corruption() => return Err(e),
            Ok(FileHeader::Legacy { .. }) | Err(_) => match fs.metadata(&path) {
                Ok(meta) if !meta.is_dir => SnapshotEntry {
                    id,
                    sequence: None,
                    created_unix_us: unix_us(meta.modified),
                },
                // Replaced by a directory, or deleted meanwhile.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&e, &path)),
            },
        };
        entries.push(entry);
    }
    entries.sort_by_key(|e| (e.sequence.is_some(), e.sequence, e.created_unix_us, e.id));
    Ok(entries)
}

/// Copies the stable file to `snapshots/<new id>` (tmp, fsync, rename, directory fsync) and
/// applies retention. The caller holds the directory lock.
pub(super) fn snapshot_stable(
    fs: &dyn Fs,
    dir: &TableDir,
    max_snapshots: usize,
    new_id: &mut dyn FnMut() -> Result<SnapshotId>,
) -> Result<SnapshotId> {
    let snapshots = dir.snapshots();
    ensure_dir(fs, &snapshots)?;
    remove_stale_snapshot_tmps(fs, &snapshots);
    let existing = list_snapshots(fs, dir)?;
    let sequence = existing
        .iter()
        .filter_map(|e| e.sequence)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let id = loop {
        let id = new_id()?;
        let taken = existing.iter().any(|e| e.id == id) || fs.metadata(&dir.snapshot(&id)).is_ok();
        if !taken {
            break id;
        }
    };
    let final_path = dir.snapshot(&id);
    let tmp_path = snapshots.join(format!("{id}{SNAPSHOT_TMP_SUFFIX}"));
    let copied = copy_file(fs, &dir.stable(), &tmp_path, Stamp::now(sequence))
        .and_then(|()| {
            fs.rename(&tmp_path, &final_path)
                .map_err(|e| Error::io(&e, &tmp_path))
        })
        .and_then(|()| {
            fs.sync_dir(&snapshots)
                .map_err(|e| Error::io(&e, &snapshots))
        });
    if let Err(e) = copied {
        remove_if_present(fs, &tmp_path);
        return Err(e);
    }
    let mut all = existing;
    all.push(SnapshotEntry {
        id,
        sequence: Some(sequence),
        created_unix_us: 0,
    });
    apply_retention(fs, &snapshots, &all, max_snapshots)?;
    Ok(id)
}

/// Deletes the oldest of `entries` (ordered oldest first) beyond `max_snapshots`.
fn apply_retention(
    fs: &dyn Fs,
    snapshots: &Path,
    entries: &[SnapshotEntry],
    max_snapshots: usize,
) -> Result<()> {
    let excess = entries.len().saturating_sub(max_snapshots.max(1));
    if excess == 0 {
        return Ok(());
    }
    for entry in &entries[..excess] {
        let path = snapshots.join(entry.id.as_str());
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&e, &path)),
        }
    }
    fs.sync_dir(snapshots).map_err(|e| Error::io(&e, snapshots))
}

/// Leftovers of snapshot copies cut off by a crash.
fn remove_stale_snapshot_tmps(fs: &dyn Fs, snapshots: &Path) {
    let Ok(names) = fs.read_dir(snapshots) else {
        return;
    };
    for name in names {
        if let Some(id) = name
            .to_str()
            .and_then(|s| s.strip_suffix(SNAPSHOT_TMP_SUFFIX))
        {
            if SnapshotId::parse(id).is_ok() {
                remove_if_present(fs, &snapshots.join(&name));
            }
        }
    }
}

/// Writes a checked copy of `src` at `dst` with a fresh stamp, and fsyncs it.
fn copy_file(fs: &dyn Fs, src: &Path, dst: &Path, stamp: Stamp) -> Result<()> {
    let mut source = TableFile::open(fs, src)?;
    let mut out = fs.create(dst).map_err(|e| Error::io(&e, dst))?;
    source.copy_to(out.as_mut(), dst, stamp)?;
    out.sync().map_err(|e| Error::io(&e, dst))
}

/// Installs snapshot `id` as the stable file (the current stable file becomes the backup).
/// Refuses a malformed id before touching the filesystem; a snapshot that does not verify
/// leaves everything as it was.
pub fn restore_snapshot(fs: &dyn Fs, dir: &TableDir, id: &str) -> Result<()> {
    restore_snapshot_keeping(fs, dir, id, DEFAULT_MAX_QUARANTINED)
}

/// [`restore_snapshot`], keeping at most `max_quarantined` quarantined files when it moves
/// a corrupt stable file aside.
pub fn restore_snapshot_keeping(
    fs: &dyn Fs,
    dir: &TableDir,
    id: &str,
    max_quarantined: usize,
) -> Result<()> {
    let id = SnapshotId::parse(id)?;
    let snapshot = dir.snapshot(&id);
    match fs.metadata(&snapshot) {
        Ok(meta) if !meta.is_dir => {}
        Ok(_) => return Err(Error::new(Reason::NotARegularFile, &snapshot)),
        Err(e) => return Err(Error::io(&e, &snapshot)),
    }
    let _lock = lock_dir(fs, dir)?;
    let stable = TableFile::open(fs, &dir.stable()).ok();
    let stamp = Stamp::now(next_stable_sequence(fs, dir, stable.as_ref()));
    // Closed before the stable file is renamed to the backup.
    drop(stable);
    let tmp = dir.tmp();
    let result = copy_file(fs, &snapshot, &tmp, stamp)
        .and_then(|()| install_tmp_as_stable(fs, dir, max_quarantined));
    if result.is_err() {
        remove_if_present(fs, &tmp);
    }
    result
}
