//! The change log beside a base file: finding the log that continues a base, and appending
//! a record to it.
//!
//! A log is bound to its base by its header (the base's sequence and content digest), not
//! by its name: a compaction renames the log to the backup log along with the stable file,
//! and a power cut between those renames may leave either name on either log. So a reader
//! looks at both names and takes the log whose header names the base it read.
//!
//! Appending: a record goes at the end of a log whose every byte verified (`valid_len` is
//! the file's length), and is fsynced; a cut append leaves a torn last record, which readers
//! skip. Anything else (no log yet, a log with a torn or damaged tail, a log under the backup
//! log's name) is written as a new log: `data.ptable.log.tmp` with the header, the valid
//! records and the new one, fsynced, renamed over `data.ptable.log`, directory fsynced. So
//! a record never sits behind bytes that do not verify, and an old record past a damaged
//! one can never be taken for the continuation of a new one.

use super::{remove_if_present, LogState, TableDir};
use crate::change_log::{LogHeader, LogReader, LogStop};
use crate::error::{Error, Reason, Result};
use crate::format::HeaderV2;
use crate::fs::{unix_us, Fs, ReadFile};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// A log reader over a file, buffered (records are read a header at a time).
pub type FileLogReader = LogReader<BufReader<Box<dyn ReadFile>>>;

/// The log that continues a base, opened and read past its header.
pub struct FoundLog {
    pub path: PathBuf,
    pub reader: FileLogReader,
    pub file_len: u64,
    pub modified_unix_us: i64,
}

/// Looks for the log continuing the base whose header is `base`, under the log's and the
/// backup log's names. Also returns the failures of candidates that exist but could not be
/// read (an I/O error, a header that does not verify): such a file may hold records of
/// this base, so it is reported, never silently ignored.
pub fn find_log(fs: &dyn Fs, dir: &TableDir, base: &HeaderV2) -> (Option<FoundLog>, Vec<Error>) {
    let mut failures = Vec::new();
    for path in [dir.log(), dir.backup_log()] {
        match open_log(fs, &path) {
            Ok(found) if found.reader.header().applies_to(base) => return (Some(found), failures),
            Ok(_) => {}
            Err(e) if e.reason == Reason::Enoent => {}
            Err(e) => failures.push(e),
        }
    }
    (None, failures)
}

/// Opens the log at `path` and reads its header.
pub fn open_log(fs: &dyn Fs, path: &Path) -> Result<FoundLog> {
    let file = fs.open(path).map_err(|e| Error::io(&e, path))?;
    let file_len = file.file_len().map_err(|e| Error::io(&e, path))?;
    let modified_unix_us = modified_us(fs, path)?;
    let reader = LogReader::open(BufReader::new(file), path)?;
    Ok(FoundLog {
        path: path.to_path_buf(),
        reader,
        file_len,
        modified_unix_us,
    })
}

impl FoundLog {
    /// What a persist needs to append to this log once every record was read (`records`
    /// and `valid_len` are the reader's).
    pub fn state(&self) -> LogState {
        LogState {
            path: self.path.clone(),
            header: *self.reader.header(),
            valid_len: self.reader.valid_len(),
            records: self.reader.record_count(),
            operations: self.reader.operations(),
            file_len: self.file_len,
            modified_unix_us: self.modified_unix_us,
        }
    }
}

fn modified_us(fs: &dyn Fs, path: &Path) -> Result<i64> {
    let meta = fs.metadata(path).map_err(|e| Error::io(&e, path))?;
    Ok(unix_us(meta.modified))
}

/// Whether the log a persist last saw is still as it left it: same length and modification
/// time (another writer appending or replacing it changes them).
pub fn log_unchanged(fs: &dyn Fs, log: &LogState) -> bool {
    fs.metadata(&log.path).is_ok_and(|m| {
        !m.is_dir && m.len == log.file_len && unix_us(m.modified) == log.modified_unix_us
    })
}

/// Whether the log still verifies as `log` describes it: every record up to `valid_len`,
/// and, unless it was already known to end in bytes that do not verify, nothing after.
pub fn log_verifies(fs: &dyn Fs, log: &LogState) -> bool {
    let Ok(mut found) = open_log(fs, &log.path) else {
        return false;
    };
    while let Ok(Some(_)) = found.reader.next_record() {}
    let clean_end = found.reader.stop() == Some(LogStop::End);
    found.reader.header() == &log.header
        && found.reader.record_count() == log.records
        && found.reader.valid_len() == log.valid_len
        && (clean_end || log.valid_len < log.file_len)
}

/// Makes the log's bytes durable. A restore reads what the OS has, durable or not: after an
/// append whose fsync failed, a restarted VM's baseline holds a record that a power cut
/// may still take away, and a persist of that very table finds nothing to append.
pub fn sync_log(fs: &dyn Fs, log: &LogState) -> Result<()> {
    let io = |e: std::io::Error| Error::io(&e, &log.path);
    fs.open_append(&log.path).map_err(io)?.sync().map_err(io)
}

/// Appends `record` (record number `log.records + 1`, or the first record of a new log with
/// `header` when `log` is `None`; `operations` upserts and deletes) durably, as the module
/// documentation says, and returns the log's new state. On error, the log is as it was or ends in a torn record (which
/// readers skip), and no tmp file is left.
pub fn append_record(
    fs: &dyn Fs,
    dir: &TableDir,
    log: Option<&LogState>,
    header: &LogHeader,
    record: &[u8],
    operations: u64,
) -> Result<LogState> {
    let path = dir.log();
    let (valid_len, records) = match log {
        Some(log) if log.path == path && log.valid_len == log.file_len => {
            append_in_place(fs, &path, log.valid_len, record)?;
            (log.valid_len, log.records)
        }
        Some(log) => {
            let written = write_new_log(
                fs,
                dir,
                |out| {
                    copy_prefix(fs, &log.path, log.valid_len, out)?;
                    Ok(log.valid_len)
                },
                record,
            );
            (written?, log.records)
        }
        None => {
            let bytes = header.encode();
            let written = write_new_log(
                fs,
                dir,
                |out| {
                    out.write(&bytes)?;
                    Ok(bytes.len() as u64)
                },
                record,
            );
            (written?, 0)
        }
    };
    let file_len = valid_len + record.len() as u64;
    Ok(LogState {
        path: path.clone(),
        header: log.map_or(*header, |l| l.header),
        valid_len: file_len,
        records: records + 1,
        operations: log.map_or(0, |l| l.operations) + operations,
        file_len,
        modified_unix_us: modified_us(fs, &path)?,
    })
}

fn append_in_place(fs: &dyn Fs, path: &Path, at: u64, record: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::io(&e, path);
    let mut file = fs.open_append(path).map_err(io)?;
    file.write_all_at(record, at).map_err(io)?;
    file.sync().map_err(io)
}

/// Where a new log's bytes go, with the path for errors.
struct NewLog<'a> {
    file: Box<dyn crate::fs::WriteFile>,
    path: &'a Path,
}

impl NewLog<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&e, self.path))
    }
}

/// Writes `data.ptable.log.tmp` (what `prefix` writes, returning its length, then `record`),
/// fsyncs it and renames it over the log; returns the prefix's length.
fn write_new_log(
    fs: &dyn Fs,
    dir: &TableDir,
    prefix: impl FnOnce(&mut NewLog<'_>) -> Result<u64>,
    record: &[u8],
) -> Result<u64> {
    let tmp = dir.log_tmp();
    let result = (|| {
        let file = fs.create(&tmp).map_err(|e| Error::io(&e, &tmp))?;
        let mut out = NewLog { file, path: &tmp };
        let prefix_len = prefix(&mut out)?;
        out.write(record)?;
        out.file.sync().map_err(|e| Error::io(&e, &tmp))?;
        fs.rename(&tmp, &dir.log())
            .map_err(|e| Error::io(&e, &tmp))?;
        Ok(prefix_len)
    })();
    if result.is_err() {
        remove_if_present(fs, &tmp);
    }
    let prefix_len = result?;
    fs.sync_dir(dir.root())
        .map_err(|e| Error::io(&e, dir.root()))?;
    Ok(prefix_len)
}

/// Copies the first `len` bytes of the log at `path` (its verified part) into `out`.
fn copy_prefix(fs: &dyn Fs, path: &Path, len: u64, out: &mut NewLog<'_>) -> Result<()> {
    let file = fs.open(path).map_err(|e| Error::io(&e, path))?;
    let mut input = file.take(len);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut copied = 0;
    loop {
        let n = input.read(&mut buffer).map_err(|e| Error::io(&e, path))?;
        if n == 0 {
            break;
        }
        out.write(&buffer[..n])?;
        copied += n as u64;
    }
    // The log shrank since it was read: its records can no longer be trusted to be the
    // ones the state describes.
    if copied != len {
        return Err(Error::new(Reason::BadFile, path));
    }
    Ok(())
}
