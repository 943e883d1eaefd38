//! A read-only report on every file of a table directory, for operators looking at a data
//! directory copied off a device. Reads headers and checksums; never decodes rows, never
//! writes. Change logs are reported by `log`.

mod log;

use crate::error::{Error, Reason, Result};
use crate::fs::{unix_us, Fs};
use crate::reader::{FileHeader, TableFile};
use crate::table_dir::{list_snapshots, quarantined_files, TableDir};
use std::path::{Path, PathBuf};

pub use log::{LogRead, LogReport};

/// The role of a file in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Stable,
    Backup,
    Tmp,
    Quarantined,
    Snapshot,
    /// `data.ptable.log`.
    Log,
    /// `data.ptable.backup.log`.
    BackupLog,
    /// `data.ptable.log.tmp`, a log being started (left by a cut persist).
    LogTmp,
}

impl FileRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            FileRole::Stable => "stable",
            FileRole::Backup => "backup",
            FileRole::Tmp => "tmp",
            FileRole::Quarantined => "quarantined",
            FileRole::Snapshot => "snapshot",
            FileRole::Log => "log",
            FileRole::BackupLog => "backup_log",
            FileRole::LogTmp => "log_tmp",
        }
    }
}

/// What inspecting a file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// The file verifies completely ([`TableFile::verify`]).
    Valid,
    /// Its header is sound, and its contents were not read (inspecting without `verify`):
    /// no verdict either way.
    Unverified,
    /// The file cannot be used, for this reason.
    Invalid(Reason),
}

impl FileStatus {
    /// `ok`, `unverified`, or the name of the reason the file is invalid.
    pub fn as_str(&self) -> &'static str {
        match self {
            FileStatus::Valid => "ok",
            FileStatus::Unverified => "unverified",
            FileStatus::Invalid(reason) => reason.as_str(),
        }
    }
}

/// What is known about one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub role: FileRole,
    pub size: u64,
    pub modified_unix_us: i64,
    /// A table file's header; `None` when it could not be read, and for logs.
    pub header: Option<FileHeader>,
    /// A log's header and records; `None` for table files and logs whose header fails.
    pub log: Option<LogReport>,
    /// For a log, [`FileStatus::Valid`] means every byte verified; a log whose records stop
    /// verifying before its end is `Invalid(LogTail)` (the records before still apply).
    pub status: FileStatus,
}

/// Reports on stable, backup, tmp files, the logs (log, backup log, log tmp),
/// quarantined files and snapshots (oldest first), in that order. With `verify`, every file
/// is verified completely; without, only headers are read and a sound one is
/// [`FileStatus::Unverified`].
pub fn inspect_dir(fs: &dyn Fs, dir: &TableDir, verify: bool) -> Result<Vec<FileReport>> {
    match fs.metadata(dir.root()) {
        Ok(meta) if meta.is_dir => {}
        Ok(_) => return Err(Error::new(Reason::Os("enotdir"), dir.root())),
        Err(e) => return Err(Error::io(&e, dir.root())),
    }
    let mut quarantined = quarantined_files(fs, dir)?;
    quarantined.sort();
    let snapshots = list_snapshots(fs, dir)?;
    let report_all = |files: Vec<(FileRole, PathBuf)>| {
        files
            .into_iter()
            .filter_map(|(role, path)| report(fs, role, path, verify))
            .collect::<Vec<_>>()
    };
    let mut reports = report_all(vec![
        (FileRole::Stable, dir.stable()),
        (FileRole::Backup, dir.backup()),
        (FileRole::Tmp, dir.tmp()),
    ]);
    // A log continues whichever of these its header names, so they are read first.
    let logs = log::report_logs(fs, dir, &reports, verify);
    reports.extend(logs);
    let quarantined = quarantined
        .into_iter()
        .map(|name| (FileRole::Quarantined, dir.root().join(name)));
    let snapshots = snapshots
        .into_iter()
        .map(|entry| (FileRole::Snapshot, dir.snapshot(&entry.id)));
    reports.extend(report_all(quarantined.chain(snapshots).collect()));
    Ok(reports)
}

/// `None` when the file does not exist.
fn report(fs: &dyn Fs, role: FileRole, path: PathBuf, verify: bool) -> Option<FileReport> {
    let meta = fs.metadata(&path).ok()?;
    let (header, status) = check(fs, &path, verify);
    Some(FileReport {
        path,
        role,
        size: meta.len,
        modified_unix_us: unix_us(meta.modified),
        header,
        log: None,
        status,
    })
}

fn check(fs: &dyn Fs, path: &Path, verify: bool) -> (Option<FileHeader>, FileStatus) {
    match TableFile::open(fs, path) {
        Err(e) => (None, FileStatus::Invalid(e.reason)),
        Ok(mut file) => {
            let header = Some(*file.header());
            let status = match verify.then(|| file.verify()) {
                None => FileStatus::Unverified,
                Some(Ok(())) => FileStatus::Valid,
                Some(Err(e)) => FileStatus::Invalid(e.reason),
            };
            (header, status)
        }
    }
}
