//! Every filesystem operation the protocols perform goes through [`Fs`], so tests can record
//! them, replay any prefix as a power cut would leave it, and inject faults.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::SystemTime;

/// A file opened for writing by [`Fs::create`].
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

/// The filesystem as the protocols see it.
pub trait Fs: Send + Sync {
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing file for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
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
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>>;
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

/// Opens `path` for reading without updating its access time where the OS allows it.
///
/// An access-time update is a write: the inode's block is dirtied and later written to
/// storage. Under `relatime` (Linux's default), the first read of a file after it was
/// written or renamed updates it, so an unchanged persist (which reads the stable file and
/// the backup's header) and every restore would otherwise cost flash a write now and then.
/// `O_NOATIME` is refused (`EPERM`) for files of another user without `CAP_FOWNER`: those
/// are read the ordinary way.
#[cfg(target_os = "linux")]
fn open_for_reading(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        result => result,
    }
}

#[cfg(not(target_os = "linux"))]
fn open_for_reading(path: &Path) -> io::Result<File> {
    File::open(path)
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
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdWriteFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let file = open_for_reading(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        Ok(Box::new(StdReadFile(file)))
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
        File::open(path)?.sync_all()
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
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
