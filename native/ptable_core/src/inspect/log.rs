//! The change logs of a table directory as `inspect_dir` reports them: which table file
//! each continues, and how far its records verify. Read with the `LogReader` restore uses,
//! so memory follows the bytes of one record really read, never a length a header claims;
//! files are opened read-only, and a torn tail is reported, never cut off.

use super::{FileReport, FileRole, FileStatus};
use crate::change_log::{LogHeader, LogStop};
use crate::error::{Error, Reason};
use crate::format::HeaderV2;
use crate::fs::{unix_us, Fs};
use crate::table_dir::{open_log, FoundLog, TableDir};
use std::path::PathBuf;

/// What is known about one log whose header verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogReport {
    pub header: LogHeader,
    /// The table file (stable, backup or tmp, tried in that order) whose header has the
    /// log's `base_sequence` and `base_digest`, whether or not that file verifies; `None`
    /// for a stale log, which no restore applies.
    pub continues: Option<FileRole>,
    /// How far the records verify; `None` when inspecting without `verify`.
    pub read: Option<LogRead>,
}

impl LogReport {
    /// The role of the file the log continues, `none` for a stale log.
    pub fn continues_as_str(&self) -> &'static str {
        self.continues.map_or("none", |role| role.as_str())
    }
}

/// The outcome of reading a log's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRead {
    /// Records that verified, from the first.
    pub records: u64,
    /// Bytes of the header and of those records: where the verified prefix ends.
    pub valid_bytes: u64,
    /// Why reading stopped; `None` when an I/O error interrupted it (the status names it).
    pub stop: Option<LogStop>,
}

/// Reports on the log, the backup log and the log tmp file that exist. `tables` are the
/// reports of the stable, backup and tmp files: the bases a log may continue.
pub(super) fn report_logs(
    fs: &dyn Fs,
    dir: &TableDir,
    tables: &[FileReport],
    verify: bool,
) -> Vec<FileReport> {
    let bases: Vec<(FileRole, HeaderV2)> = tables
        .iter()
        .filter_map(|t| Some((t.role, *t.header.as_ref()?.current()?)))
        .collect();
    [
        (FileRole::Log, dir.log()),
        (FileRole::BackupLog, dir.backup_log()),
        (FileRole::LogTmp, dir.log_tmp()),
    ]
    .into_iter()
    .filter_map(|(role, path)| report_log(fs, role, path, &bases, verify))
    .collect()
}

/// `None` when the file does not exist.
fn report_log(
    fs: &dyn Fs,
    role: FileRole,
    path: PathBuf,
    bases: &[(FileRole, HeaderV2)],
    verify: bool,
) -> Option<FileReport> {
    let meta = fs.metadata(&path).ok()?;
    let (log, status) = match open_log(fs, &path) {
        Err(e) => (None, FileStatus::Invalid(e.reason)),
        Ok(found) => {
            let header = *found.reader.header();
            let continues = bases
                .iter()
                .find(|(_, base)| header.applies_to(base))
                .map(|(role, _)| *role);
            let (read, status) = if verify {
                let (read, status) = read_records(found);
                (Some(read), status)
            } else {
                (None, FileStatus::Unverified)
            };
            let report = LogReport {
                header,
                continues,
                read,
            };
            (Some(report), status)
        }
    };
    Some(FileReport {
        path,
        role,
        size: meta.len,
        modified_unix_us: unix_us(meta.modified),
        header: None,
        log,
        status,
    })
}

/// Reads every record up to the first that does not verify, one at a time.
fn read_records(mut found: FoundLog) -> (LogRead, FileStatus) {
    let failed = loop {
        match found.reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(e) => break Some(Error::io(&e, &found.path).reason),
        }
    };
    let reader = &found.reader;
    let stop = reader.stop();
    let status = match (failed, stop) {
        (Some(reason), _) => FileStatus::Invalid(reason),
        (None, Some(LogStop::Invalid { .. })) => FileStatus::Invalid(Reason::LogTail),
        (None, _) => FileStatus::Valid,
    };
    let read = LogRead {
        records: reader.record_count(),
        valid_bytes: reader.valid_len(),
        stop,
    };
    (read, status)
}
