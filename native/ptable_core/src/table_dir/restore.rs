//! Choosing the file a restore reads: the newest one that verifies completely.

use super::log::{find_log, FoundLog};
use super::quarantine::quarantine_file;
use super::{lock_dir, open_verified, TableDir};
use crate::error::{Error, Reason, Result};
use crate::fs::Fs;
use crate::reader::TableFile;
use std::path::PathBuf;

/// Which file a restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stable,
    Backup,
    /// A complete, verified tmp file left by a persist that was cut off after fsyncing it.
    Tmp,
}

impl SourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Stable => "stable",
            SourceKind::Backup => "backup",
            SourceKind::Tmp => "tmp",
        }
    }
}

/// The verified file a restore reads, the log that continues it, and the files that failed
/// before it.
pub struct RestoreSource {
    pub file: TableFile,
    pub kind: SourceKind,
    /// The change log whose header names `file`, read past its header.
    pub log: Option<FoundLog>,
    pub failures: Vec<Error>,
    /// Where corrupt files were moved (see [`open_newest_valid`]).
    pub quarantined: Vec<PathBuf>,
}

/// Why nothing could be restored, and every file that failed.
#[derive(Debug)]
pub struct RestoreFailure {
    /// `enoent` when neither the stable nor the backup file exists, else the failure of the
    /// last existing file tried.
    pub error: Error,
    pub failures: Vec<Error>,
    pub quarantined: Vec<PathBuf>,
}

/// What [`open_newest_valid`] found, taken apart the same way whatever the outcome: the file
/// and its kind (or why there is none), the files that failed, and where corrupt ones went.
#[allow(clippy::type_complexity)]
pub fn restore_parts(
    found: std::result::Result<RestoreSource, RestoreFailure>,
) -> (
    Result<(TableFile, SourceKind, Option<FoundLog>)>,
    Vec<Error>,
    Vec<PathBuf>,
) {
    match found {
        Ok(s) => (Ok((s.file, s.kind, s.log)), s.failures, s.quarantined),
        Err(none) => (Err(none.error), none.failures, none.quarantined),
    }
}

/// Finds the newest file that verifies completely: stable, then backup, then a complete tmp
/// file, and the change log that continues it (see `log`: a log that exists but cannot be
/// read is among the failures). The returned file is rewound to its first chunk and stays
/// open, so a concurrent persist renaming files does not change what is read.
///
/// With `quarantine: Some(max)`, a stable or backup file that is corrupt is moved aside to
/// `<name>.corrupt-<UTC timestamp>` (keeping at most `max` such files) so that no later
/// persist overwrites the evidence. That happens only when the directory lock is free, and
/// only after the file is checked again under the lock.
pub fn open_newest_valid(
    fs: &dyn Fs,
    dir: &TableDir,
    quarantine: Option<usize>,
) -> std::result::Result<RestoreSource, RestoreFailure> {
    let mut failures = Vec::new();
    let mut corrupt = Vec::new();
    let mut found = None;
    for (kind, path) in [
        (SourceKind::Stable, dir.stable()),
        (SourceKind::Backup, dir.backup()),
    ] {
        match open_verified(fs, &path) {
            Ok(file) => {
                found = Some((file, kind));
                break;
            }
            Err(e) if e.reason == Reason::Enoent => {}
            Err(e) => {
                if e.reason.is_corruption() {
                    corrupt.push(path);
                }
                failures.push(e);
            }
        }
    }
    // Only a file that verifies in full counts: a tmp file is written header-last.
    if found.is_none() {
        if let Ok(file) = open_verified(fs, &dir.tmp()) {
            found = Some((file, SourceKind::Tmp));
        }
    }
    let quarantined = match quarantine {
        Some(max) if !corrupt.is_empty() => quarantine_corrupt(fs, dir, &corrupt, max),
        _ => Vec::new(),
    };
    match found {
        Some((file, kind)) => {
            let log = match file.header().current() {
                Some(header) => {
                    let (log, log_failures) = find_log(fs, dir, header);
                    failures.extend(log_failures);
                    log
                }
                None => None,
            };
            Ok(RestoreSource {
                file,
                kind,
                log,
                failures,
                quarantined,
            })
        }
        None => {
            let error = failures
                .last()
                .cloned()
                .unwrap_or_else(|| Error::new(Reason::Enoent, &dir.stable()));
            Err(RestoreFailure {
                error,
                failures,
                quarantined,
            })
        }
    }
}

/// Moves the files in `corrupt` aside if the lock is free and they are still corrupt.
fn quarantine_corrupt(
    fs: &dyn Fs,
    dir: &TableDir,
    corrupt: &[PathBuf],
    max: usize,
) -> Vec<PathBuf> {
    let Ok(_lock) = lock_dir(fs, dir) else {
        return Vec::new();
    };
    corrupt
        .iter()
        .filter(|path| matches!(open_verified(fs, path), Err(e) if e.reason.is_corruption()))
        .filter_map(|path| quarantine_file(fs, dir, path, max).ok())
        .collect()
}
