//! A read-only report on every file of a table directory, for operators looking at a data
//! directory copied off a device. Reads headers and checksums; never decodes rows.

use crate::error::{Error, Reason, Result};
use crate::fs::{unix_us, Fs};
use crate::reader::{FileHeader, TableFile};
use crate::table_dir::{list_snapshots, quarantined_files, TableDir};
use std::path::{Path, PathBuf};

/// The role of a file in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Stable,
    Backup,
    Tmp,
    Quarantined,
    Snapshot,
}

impl FileRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            FileRole::Stable => "stable",
            FileRole::Backup => "backup",
            FileRole::Tmp => "tmp",
            FileRole::Quarantined => "quarantined",
            FileRole::Snapshot => "snapshot",
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
    /// `None` when the header could not be read.
    pub header: Option<FileHeader>,
    pub status: FileStatus,
}

/// Reports on stable, backup, tmp, quarantined files and snapshots (oldest first).
/// With `verify`, every file is verified completely; without, only headers are read and a
/// sound one is [`FileStatus::Unverified`].
pub fn inspect_dir(fs: &dyn Fs, dir: &TableDir, verify: bool) -> Result<Vec<FileReport>> {
    match fs.metadata(dir.root()) {
        Ok(meta) if meta.is_dir => {}
        Ok(_) => return Err(Error::new(Reason::Os("enotdir"), dir.root())),
        Err(e) => return Err(Error::io(&e, dir.root())),
    }
    let mut files = vec![
        (FileRole::Stable, dir.stable()),
        (FileRole::Backup, dir.backup()),
        (FileRole::Tmp, dir.tmp()),
    ];
    let mut quarantined = quarantined_files(fs, dir)?;
    quarantined.sort();
    files.extend(
        quarantined
            .into_iter()
            .map(|name| (FileRole::Quarantined, dir.root().join(name))),
    );
    files.extend(
        list_snapshots(fs, dir)?
            .into_iter()
            .map(|entry| (FileRole::Snapshot, dir.snapshot(&entry.id))),
    );
    Ok(files
        .into_iter()
        .filter_map(|(role, path)| report(fs, role, path, verify))
        .collect())
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
