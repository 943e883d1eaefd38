//! Errors of the core: a reason that crosses the NIF boundary as an atom, plus the path involved.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why an operation failed. [`Reason::as_str`] is the atom the Elixir side sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The file (or every candidate file) does not exist.
    Enoent,
    /// A checksum (header CRC, chunk CRC, content digest, legacy MD5) does not match.
    BadChecksum,
    /// The file is not a well-formed table file: magic, version, lengths, truncation, codec.
    BadFile,
    /// A snapshot id that is not exactly 16 uppercase hexadecimal characters.
    InvalidSnapshotId,
    /// A FIFO, socket, device or directory where a table file (or the lock file) belongs, or
    /// a symlink where the library writes: never opened in a way that could block, and
    /// treated as a bad file.
    NotARegularFile,
    /// Another writer holds the table directory's lock.
    Busy,
    /// The session was already committed, closed or aborted.
    Closed,
    /// A bug: a thread of the persist or restore pipeline panicked (the panic's message
    /// went to standard error). The session or reader is closed.
    Internal,
    /// A chunk larger than the format allows (`format::MAX_CHUNK_LEN`): the writer refuses
    /// it rather than write a file that readers refuse.
    ChunkTooLarge,
    /// A persist found the change log unusable for this table (more changes than a record
    /// should hold, a log at its compaction threshold, rows the change index cannot tell
    /// apart): nothing was written, and the caller streams the table again into a persist
    /// that writes a full file.
    Restart,
    /// A change log's records from one that does not verify on were not applied (a record
    /// torn by a power cut was never acknowledged; a damaged one loses its changes and
    /// those of the records after it). Reported with the files a restore skipped.
    LogTail,
    /// An operating-system error, named like the POSIX errno (`eacces`, `enospc`, ...).
    Os(&'static str),
}

impl Reason {
    /// The atom name of this reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Enoent => "enoent",
            Reason::BadChecksum => "bad_checksum",
            Reason::BadFile => "bad_file",
            Reason::InvalidSnapshotId => "invalid_snapshot_id",
            Reason::NotARegularFile => "not_a_regular_file",
            Reason::Busy => "busy",
            Reason::Closed => "closed",
            Reason::Internal => "internal_error",
            Reason::ChunkTooLarge => "chunk_too_large",
            Reason::Restart => "restart",
            Reason::LogTail => "log_tail",
            Reason::Os(name) => name,
        }
    }

    /// True for reasons that mean "what is on disk is not a valid table file": corrupt bytes,
    /// or not a regular file at all (moved aside like a corrupt file).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Reason::BadChecksum | Reason::BadFile | Reason::NotARegularFile
        )
    }
}

/// An error with the path it concerns, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub reason: Reason,
    pub path: Option<PathBuf>,
    /// For [`Reason::LogTail`]: the record the log stops verifying at, so an operator can
    /// tell a torn last append (`truncated` at the end) from damage further in.
    pub log_stop: Option<LogStopAt>,
}

/// Where and why a change log's records stop verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStopAt {
    /// Byte offset of the first record not applied.
    pub offset: u64,
    pub fault: crate::change_log::RecordFault,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(reason: Reason, path: &Path) -> Self {
        Error {
            reason,
            path: Some(path.to_path_buf()),
            log_stop: None,
        }
    }

    pub fn without_path(reason: Reason) -> Self {
        Error {
            reason,
            path: None,
            log_stop: None,
        }
    }

    /// Converts an I/O error on `path`. A short read means the file is truncated: `bad_file`.
    pub fn io(err: &io::Error, path: &Path) -> Self {
        Error::new(reason_of_io(err), path)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{} ({})", self.reason.as_str(), path.display())?,
            None => f.write_str(self.reason.as_str())?,
        }
        match self.log_stop {
            Some(at) => write!(f, " at byte {}: {}", at.offset, at.fault.as_str()),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

/// Maps an I/O error to the POSIX name Erlang's `file` module would use.
pub fn reason_of_io(err: &io::Error) -> Reason {
    use io::ErrorKind as K;
    if crate::fs::is_not_a_regular_file(err) {
        return Reason::NotARegularFile;
    }
    if let Some(name) = err.raw_os_error().and_then(errno_name) {
        return if name == "enoent" {
            Reason::Enoent
        } else {
            Reason::Os(name)
        };
    }
    let name = match err.kind() {
        K::NotFound => return Reason::Enoent,
        K::UnexpectedEof => return Reason::BadFile,
        K::WouldBlock => return Reason::Busy,
        K::PermissionDenied => "eacces",
        K::AlreadyExists => "eexist",
        K::StorageFull => "enospc",
        K::ReadOnlyFilesystem => "erofs",
        K::NotADirectory => "enotdir",
        K::IsADirectory => "eisdir",
        K::DirectoryNotEmpty => "enotempty",
        K::ResourceBusy => "ebusy",
        K::FileTooLarge => "efbig",
        K::QuotaExceeded => "edquot",
        K::InvalidFilename => "enametoolong",
        K::CrossesDevices => "exdev",
        K::TooManyLinks => "emlink",
        K::Interrupted => "eintr",
        K::InvalidInput => "einval",
        K::OutOfMemory => "enomem",
        _ => "eio",
    };
    Reason::Os(name)
}

/// POSIX names of the errno values a file operation can return (Linux numbering, which is
/// also what every Nerves target uses).
fn errno_name(code: i32) -> Option<&'static str> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    Some(match code {
        1 => "eperm",
        2 => "enoent",
        4 => "eintr",
        5 => "eio",
        6 => "enxio",
        9 => "ebadf",
        11 => "eagain",
        12 => "enomem",
        13 => "eacces",
        16 => "ebusy",
        17 => "eexist",
        18 => "exdev",
        19 => "enodev",
        20 => "enotdir",
        21 => "eisdir",
        22 => "einval",
        23 => "enfile",
        24 => "emfile",
        26 => "etxtbsy",
        27 => "efbig",
        28 => "enospc",
        29 => "espipe",
        30 => "erofs",
        31 => "emlink",
        36 => "enametoolong",
        39 => "enotempty",
        40 => "eloop",
        95 => "enotsup",
        116 => "estale",
        122 => "edquot",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_posix_names() {
        let p = Path::new("/x");
        assert_eq!(
            Error::io(&io::Error::from_raw_os_error(28), p).reason,
            Reason::Os("enospc")
        );
        assert_eq!(
            Error::io(&io::Error::from_raw_os_error(5), p).reason,
            Reason::Os("eio")
        );
        assert_eq!(
            Error::io(&io::Error::from(io::ErrorKind::NotFound), p).reason,
            Reason::Enoent
        );
        assert_eq!(
            Error::io(&io::Error::from(io::ErrorKind::UnexpectedEof), p).reason,
            Reason::BadFile
        );
        assert_eq!(
            Error::io(&io::Error::from(io::ErrorKind::PermissionDenied), p).reason,
            Reason::Os("eacces")
        );
        assert_eq!(
            Error::io(&io::Error::other("x"), p).reason,
            Reason::Os("eio")
        );
        assert_eq!(
            Error::io(&crate::fs::not_a_regular_file(), p).reason,
            Reason::NotARegularFile
        );
    }

    #[test]
    fn display_names_reason_and_path() {
        let e = Error::new(Reason::BadChecksum, Path::new("/d/data.ptable"));
        assert_eq!(e.to_string(), "bad_checksum (/d/data.ptable)");
    }
}
