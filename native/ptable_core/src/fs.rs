//! Every filesystem operation the protocols perform goes through [`Fs`], so tests can record
//! them, replay any prefix as a power cut would leave it, and inject faults.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
#[cfg(unix)]
use std::os::unix::{ffi::OsStrExt, fs::OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file opened for writing by [`Fs::create`] or [`Fs::open_append`].
pub trait WriteFile: Send {
    /// Appends `buf` at the current end of what this handle wrote.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Overwrites bytes at `offset` (used once, to fill in the header of a finished file).
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the data durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A file opened for reading by [`Fs::open`].
pub trait ReadFile: Read + Seek + Send {
    /// Current length of the file in bytes.
    fn file_len(&self) -> io::Result<u64>;
}

/// A held exclusive lock; dropping it releases the lock.
pub trait LockGuard: Send {}

/// Kind and modification time of a directory entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    pub is_dir: bool,
    pub len: u64,
    pub modified: SystemTime,
}

/// The path whose bytes are `bytes` (the VM hands paths over as binaries, which need not be
/// UTF-8). Elsewhere than on Unix, a path is text: invalid UTF-8 is replaced.
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    #[cfg(unix)]
    let path = std::ffi::OsStr::from_bytes(bytes);
    #[cfg(not(unix))]
    let path = String::from_utf8_lossy(bytes).into_owned();
    PathBuf::from(path)
}

/// Microseconds from the Unix epoch to `t`: negative before 1970, saturating at the ends
/// of `i64` (some 292,000 years either way).
pub fn unix_us(t: SystemTime) -> i64 {
    let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => micros(after),
        Err(before) => -micros(before.duration()),
    }
}

/// The filesystem as the protocols see it.
pub trait Fs: Send + Sync {
    /// Creates a new, empty file for writing. Whatever entry had that name (a file, a FIFO,
    /// a socket, a symlink: never followed) is removed first; a directory there fails with
    /// [`not_a_regular_file`].
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing regular file for reading, through symlinks. Anything else (a FIFO,
    /// a socket, a device, a directory) fails with [`not_a_regular_file`] without blocking.
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Opens an existing regular file for writing at offsets ([`WriteFile::write_all_at`]),
    /// never creating, truncating or following a symlink; anything but a regular file fails
    /// with [`not_a_regular_file`] without blocking.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory; its parent must exist.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    fn metadata(&self, path: &Path) -> io::Result<EntryMeta>;
    /// Takes an exclusive lock on `path` (created if missing) without waiting:
    /// `ErrorKind::WouldBlock` when another holder has it, in this OS process or another.
    /// Anything but a regular file there (a symlink included) fails with
    /// [`not_a_regular_file`].
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>>;
}

/// The error of a file that is not a regular file where the library expects one: a FIFO
/// (whose open would wait for a writer for ever), a socket, a device, a directory, or a
/// symlink where the library writes. Converted to [`crate::Reason::NotARegularFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotARegularFile;

impl std::fmt::Display for NotARegularFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file")
    }
}

impl std::error::Error for NotARegularFile {}

/// An I/O error carrying [`NotARegularFile`].
pub fn not_a_regular_file() -> io::Error {
    io::Error::other(NotARegularFile)
}

/// Whether `err` was made by [`not_a_regular_file`].
pub fn is_not_a_regular_file(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<NotARegularFile>())
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdWriteFile(File);

impl WriteFile for StdWriteFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_all_at(&self.0, buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_all_at(mut file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let end = file.stream_position()?;
    file.seek(io::SeekFrom::Start(offset))?;
    file.write_all(buf)?;
    file.seek(io::SeekFrom::Start(end))?;
    Ok(())
}

struct StdReadFile(File);

/// Opens `path` for reading if it is a regular file, following symlinks (see
/// [`Fs::open`]).
///
/// The type is checked before opening, so that no FIFO (whose open waits for a writer) and
/// no device (whose open may act: a watchdog device arms) is ever opened, and again on the
/// opened descriptor, in case the entry was replaced in between; the open itself does not
/// block (`O_NONBLOCK`, cleared once the file is known to be regular).
fn open_regular_for_reading(path: &Path) -> io::Result<File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_a_regular_file());
    }
    let file = open_for_reading(path)?;
    ensure_regular(&file)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Opens `path` for reading without blocking and without updating its access time where the
/// OS allows it.
///
/// An access-time update is a write: the inode's block is dirtied and later written to
/// storage. Under `relatime` (Linux's default), the first read of a file after it was
/// written or renamed updates it, so an unchanged persist (which reads the stable file and
/// the backup's header) and every restore would otherwise cost flash a write now and then.
/// `O_NOATIME` is refused (`EPERM`) for files of another user without `CAP_FOWNER`: those
/// are read the ordinary way.
#[cfg(target_os = "linux")]
fn open_for_reading(path: &Path) -> io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        result => result,
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn open_for_reading(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_for_reading(path: &Path) -> io::Result<File> {
    File::open(path)
}

fn ensure_regular(file: &File) -> io::Result<()> {
    if file.metadata()?.is_file() {
        Ok(())
    } else {
        Err(not_a_regular_file())
    }
}

/// Makes reads and writes of an opened file blocking again (the file was opened with
/// `O_NONBLOCK` only so that the open could not wait).
#[cfg(unix)]
fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of both calls;
    // F_GETFL and F_SETFL take and return plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn clear_nonblocking(_file: &File) -> io::Result<()> {
    Ok(())
}

/// `O_NOFOLLOW | O_NONBLOCK` where they exist: the last component is never a symlink
/// followed, and no open waits.
#[cfg(unix)]
fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
}

#[cfg(not(unix))]
fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

/// Creates `path` as a new file, never following or writing into what was there (see
/// [`Fs::create`]). `create_new` is `O_CREAT | O_EXCL`, which fails on any existing entry,
/// a dangling symlink included, so an entry that reappears after the removal is an error
/// (`eexist`), never followed.
fn create_new_file(path: &Path) -> io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(not_a_regular_file()),
        Ok(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = no_follow(OpenOptions::new().write(true).create_new(true)).open(path)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Opens an existing regular file for writing (see [`Fs::open_append`]).
fn open_existing_for_writing(path: &Path) -> io::Result<File> {
    let file = match no_follow(OpenOptions::new().write(true)).open(path) {
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_regular_file()),
        result => result?,
    };
    ensure_regular(&file)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Opens (creating if missing) the lock file, which must be a regular file and not a
/// symlink: the lock is shared with other writers, so whatever is there is refused rather
/// than replaced (two writers replacing it at once could each lock a file of their own).
fn open_lock_file(path: &Path) -> io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(not_a_regular_file()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = no_follow(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .open(path)?;
    ensure_regular(&file)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Opens a directory to fsync it; `O_DIRECTORY` refuses anything else before opening it.
#[cfg(unix)]
fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(path)
}

impl Read for StdReadFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for StdReadFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl ReadFile for StdReadFile {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

struct StdLock(#[allow(dead_code)] File);

impl LockGuard for StdLock {}

impl Fs for StdFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        Ok(Box::new(StdWriteFile(create_new_file(path)?)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(StdReadFile(open_regular_for_reading(path)?)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        Ok(Box::new(StdWriteFile(open_existing_for_writing(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    #[cfg(unix)]
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        open_dir(path)?.sync_all()
    }

    #[cfg(not(unix))]
    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        // Directories cannot be opened for syncing here; renames are durable on return.
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        let meta = std::fs::metadata(path)?;
        Ok(EntryMeta {
            is_dir: meta.is_dir(),
            len: meta.len(),
            modified: meta.modified()?,
        })
    }

    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let file = open_lock_file(path)?;
        // flock(2): held per open file description, so two sessions of one OS process
        // exclude each other just like two OS processes do; released on close or death.
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = StdFs.try_lock(&path).unwrap();
        let second = StdFs.try_lock(&path);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        drop(first);
        assert!(StdFs.try_lock(&path).is_ok());
    }

    #[test]
    fn write_at_overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = StdFs.create(&path).unwrap();
        f.write_all(b"hello world").unwrap();
        f.write_all_at(b"J", 0).unwrap();
        f.write_all(b"!").unwrap();
        f.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"Jello world!");
    }
}
