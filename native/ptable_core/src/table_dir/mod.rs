//! The persist / restore / snapshot protocol over one table directory:
//!
//! ```text
//! <dir>/data.ptable          stable file
//! <dir>/data.ptable.backup   the previous stable file
//! <dir>/data.ptable.tmp      a file being written
//! <dir>/data.ptable.lock     advisory lock serializing writers (flock)
//! <dir>/data.ptable.log      change log: records appended after the stable file
//! <dir>/data.ptable.backup.log   the log of the backup file (renamed with it)
//! <dir>/data.ptable.log.tmp  a log being started
//! <dir>/snapshots/<ID>       snapshots; <ID>.tmp while being written
//! ```
//!
//! Installing a new stable file: write the tmp file and fsync it; if the current stable file
//! verifies, rename its log to the backup log and it to the backup (a corrupt one is moved
//! aside, so it never pushes out a good backup); rename tmp to stable; fsync the directory.
//! At every instant some complete file (stable, backup or the fsynced tmp), with the log
//! whose header names it, holds the old or the new contents, and restore looks at them in
//! that order.

mod baseline;
mod log;
mod persist;
mod quarantine;
mod restore;
mod snapshots;

pub use baseline::{BaseId, Baseline, Baselines, LogState};
pub use log::{find_log, open_log, FileLogReader, FoundLog};
pub use persist::{CommitOutcome, PersistConfig, PersistSession};
pub use quarantine::{quarantined_files, utc_compact, DEFAULT_MAX_QUARANTINED};
pub use restore::{
    open_newest_planned, open_newest_valid, restore_parts, FindOnly, LogPlanner, RestoreFailure,
    RestoreSource, SourceKind,
};
pub use snapshots::{list_snapshots, restore_snapshot, restore_snapshot_keeping, SnapshotEntry};

use crate::error::{Error, Reason, Result};
use crate::fs::{Fs, LockGuard};
use crate::reader::TableFile;
use crate::snapshot_id::SnapshotId;
use quarantine::quarantine_file;
use std::io;
use std::path::{Path, PathBuf};

pub const STABLE: &str = "data.ptable";
pub const BACKUP: &str = "data.ptable.backup";
pub const TMP: &str = "data.ptable.tmp";
pub const LOCK: &str = "data.ptable.lock";
pub const LOG: &str = "data.ptable.log";
pub const BACKUP_LOG: &str = "data.ptable.backup.log";
pub const LOG_TMP: &str = "data.ptable.log.tmp";
pub const SNAPSHOTS: &str = "snapshots";
const SNAPSHOT_TMP_SUFFIX: &str = ".tmp";

/// A number of files to keep (quarantined files, snapshots) as callers give it, a u64 on
/// every target: beyond `usize`, it keeps them all.
pub fn count_limit(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

/// The paths of one table directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDir {
    root: PathBuf,
}

impl TableDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TableDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn stable(&self) -> PathBuf {
        self.root.join(STABLE)
    }
    pub fn backup(&self) -> PathBuf {
        self.root.join(BACKUP)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join(TMP)
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK)
    }
    pub fn log(&self) -> PathBuf {
        self.root.join(LOG)
    }
    pub fn backup_log(&self) -> PathBuf {
        self.root.join(BACKUP_LOG)
    }
    pub fn log_tmp(&self) -> PathBuf {
        self.root.join(LOG_TMP)
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }
    pub fn snapshot(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots().join(id.as_str())
    }
}

/// Creates `path` and any missing ancestor, fsyncing each parent so the new entries survive
/// a power cut. The parent of a directory that already exists is fsynced too: an earlier
/// call may have created it and then failed to fsync.
pub fn ensure_dir(fs: &dyn Fs, path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        Some(_) => Path::new("."),
        // The filesystem root.
        None => return Ok(()),
    };
    match fs.metadata(path) {
        Ok(meta) if meta.is_dir => {
            return fs.sync_dir(parent).map_err(|e| Error::io(&e, parent));
        }
        Ok(_) => return Err(Error::new(Reason::Os("enotdir"), path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&e, path)),
    }
    if parent != path {
        ensure_dir(fs, parent)?;
    }
    match fs.create_dir(path) {
        Ok(()) => {}
        // Another writer made it first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(&e, path)),
    }
    fs.sync_dir(parent).map_err(|e| Error::io(&e, parent))
}

/// Takes the directory's writer lock without waiting (`busy` when held elsewhere).
fn lock_dir(fs: &dyn Fs, dir: &TableDir) -> Result<Box<dyn LockGuard>> {
    let path = dir.lock();
    fs.try_lock(&path).map_err(|e| Error::io(&e, &path))
}

/// The sequence number of a version 2 file.
fn sequence_in(file: &TableFile) -> Option<u64> {
    file.header().current().map(|h| h.sequence)
}

/// The sequence number of the header of `path`, if it has a readable version 2 header.
fn sequence_of(fs: &dyn Fs, path: &Path) -> Option<u64> {
    sequence_in(&TableFile::open(fs, path).ok()?)
}

/// The next sequence number of the stable lineage, from the stable file (already opened,
/// if it opens), the backup and the bases the logs name. A log outlives its base when that
/// base is moved aside as corrupt: a new file of the same contents must not get its
/// sequence, or the old log (which names a base by sequence and content digest) would
/// apply to it.
fn next_stable_sequence(fs: &dyn Fs, dir: &TableDir, stable: Option<&TableFile>) -> u64 {
    let logs = [dir.log(), dir.backup_log()].map(|path| {
        open_log(fs, &path)
            .ok()
            .map(|l| l.reader.header().base_sequence)
    });
    let newest = [stable.and_then(sequence_in), sequence_of(fs, &dir.backup())]
        .into_iter()
        .chain(logs)
        .flatten()
        .max()
        .unwrap_or(0);
    newest.saturating_add(1)
}

/// Makes the synced tmp file the stable file (see the module documentation). Only a stable
/// file that verifies completely ([`TableFile::verify`]) becomes the backup; one that exists
/// but does not is moved aside as evidence, so it never pushes out a good backup.
fn install_tmp_as_stable(fs: &dyn Fs, dir: &TableDir, max_quarantined: usize) -> Result<()> {
    let (stable, backup, tmp) = (dir.stable(), dir.backup(), dir.tmp());
    match open_verified(fs, &stable) {
        Ok(_) => {
            // The log goes with its base, which it names: a cut between the two renames
            // leaves each log beside its base under either name (see `log`). The rename is
            // made durable before the base moves: were it lost while the other renames
            // stayed, the log would sit under the name the next append replaces, and the
            // backup would lose the records that bring it up to the compaction point.
            match fs.rename(&dir.log(), &dir.backup_log()) {
                Ok(()) => fs
                    .sync_dir(dir.root())
                    .map_err(|e| Error::io(&e, dir.root()))?,
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(&e, &dir.log()))
                }
                Err(_) => {}
            }
            rotate_into_backup(fs, dir, &stable, &backup, max_quarantined)?
        }
        Err(e) if e.reason.is_corruption() => {
            quarantine_file(fs, dir, &stable, max_quarantined)?;
        }
        Err(_) => {}
    }
    fs.rename(&tmp, &stable).map_err(|e| Error::io(&e, &tmp))?;
    fs.sync_dir(dir.root())
        .map_err(|e| Error::io(&e, dir.root()))
}

/// Renames the verified stable file to the backup. A directory in the backup's place, which
/// a rename cannot replace, is moved aside like a corrupt file first.
fn rotate_into_backup(
    fs: &dyn Fs,
    dir: &TableDir,
    stable: &Path,
    backup: &Path,
    max_quarantined: usize,
) -> Result<()> {
    match fs.rename(stable, backup) {
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            quarantine_file(fs, dir, backup, max_quarantined)?;
            fs.rename(stable, backup)
        }
        result => result,
    }
    .map_err(|e| Error::io(&e, stable))
}

/// Removes a file if it is there; used for cleanup, where failing changes nothing.
fn remove_if_present(fs: &dyn Fs, path: &Path) {
    let _ = fs.remove_file(path);
}

/// Opens `path` and verifies it completely; the file is rewound to its first chunk.
fn open_verified(fs: &dyn Fs, path: &Path) -> Result<TableFile> {
    let mut file = TableFile::open(fs, path)?;
    file.verify()?;
    Ok(file)
}
