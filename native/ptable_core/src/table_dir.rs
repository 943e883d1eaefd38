//! The persist / restore / snapshot protocol over one table directory:
//!
//! ```text
//! <dir>/data.ptable          stable file
//! <dir>/data.ptable.backup   the previous stable file
//! <dir>/data.ptable.tmp      a file being written
//! <dir>/data.ptable.lock     advisory lock serializing writers (flock)
//! <dir>/snapshots/<ID>       snapshots; <ID>.tmp while being written
//! ```
//!
//! Installing a new stable file: write the tmp file and fsync it; if the current stable file
//! verifies, rename it to the backup (a corrupt one is simply replaced, so it never pushes out
//! a good backup); rename tmp to stable; fsync the directory. At every instant some complete
//! file (stable, backup or the fsynced tmp) holds the old or the new contents, and restore
//! looks at them in that order.

use crate::codec::{writes_codec, CODEC_ZSTD_STREAM};
use crate::error::{Error, Reason, Result};
use crate::format::MAX_CHUNK_LEN;
use crate::fs::{unix_us, Fs, LockGuard};
use crate::reader::{Chunk, FileHeader, TableFile};
use crate::snapshot_id::SnapshotId;
use crate::writer::{ChunkWriter, Stamp, WriteOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const STABLE: &str = "data.ptable";
pub const BACKUP: &str = "data.ptable.backup";
pub const TMP: &str = "data.ptable.tmp";
pub const LOCK: &str = "data.ptable.lock";
pub const SNAPSHOTS: &str = "snapshots";
const SNAPSHOT_TMP_SUFFIX: &str = ".tmp";

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
/// if it opens) and the backup.
fn next_stable_sequence(fs: &dyn Fs, dir: &TableDir, stable: Option<&TableFile>) -> u64 {
    let newest = [stable.and_then(sequence_in), sequence_of(fs, &dir.backup())]
        .into_iter()
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
        Ok(_) => rotate_into_backup(fs, dir, &stable, &backup, max_quarantined)?,
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

/// Quarantined files a persist keeps unless told otherwise (core callers and tests: the NIF
/// always passes the Elixir option, whose default is the user-facing one).
pub const DEFAULT_MAX_QUARANTINED: usize = 5;
const QUARANTINE_MARK: &str = ".corrupt-";

/// Moves a corrupt `path` aside to `<name>.corrupt-<UTC timestamp>` in the same directory,
/// deletes the oldest quarantined files beyond `max_quarantined`, and fsyncs the directory.
/// Returns the new path. The caller holds the directory lock.
fn quarantine_file(
    fs: &dyn Fs,
    dir: &TableDir,
    path: &Path,
    max_quarantined: usize,
) -> Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(STABLE);
    let stamp = utc_compact(Stamp::now(0).created_unix_us);
    let mut target = dir.root().join(format!("{name}{QUARANTINE_MARK}{stamp}"));
    let mut n = 1;
    while fs.metadata(&target).is_ok() {
        target = dir
            .root()
            .join(format!("{name}{QUARANTINE_MARK}{stamp}-{n}"));
        n += 1;
    }
    fs.rename(path, &target).map_err(|e| Error::io(&e, path))?;
    let mut quarantined = quarantined_files(fs, dir)?;
    // Oldest first: names carry sortable timestamps.
    quarantined.sort_by(|a, b| quarantine_stamp(a).cmp(quarantine_stamp(b)).then(a.cmp(b)));
    let excess = quarantined.len().saturating_sub(max_quarantined.max(1));
    for old in &quarantined[..excess] {
        remove_if_present(fs, &dir.root().join(old));
    }
    fs.sync_dir(dir.root())
        .map_err(|e| Error::io(&e, dir.root()))?;
    Ok(target)
}

/// Names of the quarantined files of the table directory.
pub fn quarantined_files(fs: &dyn Fs, dir: &TableDir) -> Result<Vec<String>> {
    let names = match fs.read_dir(dir.root()) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&e, dir.root())),
    };
    Ok(names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.contains(QUARANTINE_MARK))
        .collect())
}

fn quarantine_stamp(name: &str) -> &str {
    name.split_once(QUARANTINE_MARK).map_or("", |(_, s)| s)
}

/// `YYYYMMDDTHHMMSS.ffffffZ` for a Unix time in microseconds (proleptic Gregorian, UTC).
pub fn utc_compact(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{micros:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Removes a file if it is there; used for cleanup, where failing changes nothing.
fn remove_if_present(fs: &dyn Fs, path: &Path) {
    let _ = fs.remove_file(path);
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new stable file was installed.
    Written,
    /// The table's encoding equals the stable file's (same options, every chunk byte for
    /// byte), and the stable file verified completely on the way: nothing was written, which
    /// spares flash.
    Unchanged,
}

/// Where a persist is: still matching the stable file chunk for chunk, or writing.
enum Mode {
    Comparing {
        stable: Box<TableFile>,
        matched: u64,
        /// The stable file's current chunk, decompressed.
        chunk: Vec<u8>,
    },
    Writing(Box<ChunkWriter>),
}

/// One persist: holds the directory lock from `begin` until dropped, streams chunks into the
/// tmp file, installs it on `commit`, and can then take a snapshot of the result.
///
/// While the chunks match the stable file's (each stable chunk read, decompressed and checked
/// as [`TableFile::verify`] does, then compared byte for byte), nothing is written. At the
/// first difference the tmp file is
/// started with the matched chunks taken from the stable file: its frames copied (a
/// one-stream zstd file), or decompressed, checked and compressed again.
pub struct PersistSession {
    fs: Arc<dyn Fs>,
    dir: TableDir,
    options: WriteOptions,
    stamp: Stamp,
    mode: Option<Mode>,
    digest: Xxh3,
    committed: bool,
    expected_rows: u64,
    /// Quarantined files kept when a commit moves a corrupt file aside.
    max_quarantined: usize,
    /// Overrides the writer's choice of two streams (tests).
    two_streams: Option<bool>,
    // Dropped last: everything above happens under the lock.
    _lock: Box<dyn LockGuard>,
}

impl PersistSession {
    /// Creates the directory if needed and takes its lock.
    pub fn begin(fs: Arc<dyn Fs>, dir: TableDir, options: WriteOptions) -> Result<Self> {
        ensure_dir(fs.as_ref(), dir.root())?;
        let lock = lock_dir(fs.as_ref(), &dir)?;
        let stable = TableFile::open(fs.as_ref(), &dir.stable()).ok();
        let stamp = Stamp::now(next_stable_sequence(fs.as_ref(), &dir, stable.as_ref()));
        let mode = match stable.filter(|file| is_comparable(file, options)) {
            Some(stable) => Mode::Comparing {
                stable: Box::new(stable),
                matched: 0,
                chunk: Vec::new(),
            },
            None => match ChunkWriter::create(fs.as_ref(), &dir.tmp(), options, stamp) {
                Ok(writer) => Mode::Writing(Box::new(writer)),
                Err(e) => {
                    // The tmp file may exist with part of its placeholder header.
                    remove_if_present(fs.as_ref(), &dir.tmp());
                    return Err(e);
                }
            },
        };
        Ok(PersistSession {
            fs,
            dir,
            options,
            stamp,
            mode: Some(mode),
            digest: Xxh3::new(),
            committed: false,
            expected_rows: 0,
            max_quarantined: DEFAULT_MAX_QUARANTINED,
            two_streams: None,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &TableDir {
        &self.dir
    }

    /// See [`ChunkWriter::allow_two_streams`].
    pub fn allow_two_streams(&mut self, allow: bool) {
        self.two_streams = Some(allow);
        if let Some(Mode::Writing(writer)) = &mut self.mode {
            writer.allow_two_streams(allow);
        }
    }

    /// How many rows the table has (a hint for the compressor; 0 when unknown).
    pub fn expect_rows(&mut self, rows: u64) {
        self.expected_rows = rows;
        if let Some(Mode::Writing(writer)) = &mut self.mode {
            writer.expect_rows(rows);
        }
    }

    /// How many quarantined files to keep when the commit moves a corrupt stable file (or a
    /// directory in the backup's place) aside; the oldest beyond are deleted.
    pub fn set_max_quarantined(&mut self, max: usize) {
        self.max_quarantined = max;
    }

    /// Appends one chunk: the encoding of `rows` rows. A failed append ends the session: the
    /// tmp file (which may hold part of a frame) is removed and later calls get `closed`.
    pub fn append(&mut self, raw: &[u8], rows: u64) -> Result<()> {
        if self.mode.is_none() {
            return Err(Error::without_path(Reason::Closed));
        }
        let result = self.append_chunk(raw, rows);
        if result.is_err() {
            self.mode = None;
            remove_if_present(self.fs.as_ref(), &self.dir.tmp());
        }
        result
    }

    fn append_chunk(&mut self, raw: &[u8], rows: u64) -> Result<()> {
        // Refused here already, before it is hashed: the writer would refuse it anyway.
        if raw.len() as u64 > MAX_CHUNK_LEN {
            return Err(Error::without_path(Reason::ChunkTooLarge));
        }
        self.digest.update(raw);
        match self.mode.as_mut() {
            None => Err(Error::without_path(Reason::Closed)),
            Some(Mode::Writing(writer)) => writer.append(raw, rows),
            Some(Mode::Comparing {
                stable,
                matched,
                chunk,
            }) => {
                let decoded_past = match compare_next_chunk(stable, chunk, raw, rows) {
                    Comparison::Same => {
                        *matched += 1;
                        return Ok(());
                    }
                    Comparison::Differs => false,
                    Comparison::DiffersDecoded => true,
                };
                let writer = self.start_writing(decoded_past)?;
                writer.append(raw, rows)
            }
        }
    }

    /// Leaves comparing mode: starts the tmp file with the chunks matched so far, taken from
    /// the stable file (CRC-checked again on the way): its frames copied as they are when it
    /// is a one-stream zstd file whose stream can be ended after them, else decompressed,
    /// checked and compressed again. `decoded_past`: the stable file's decoder went beyond
    /// the matched chunks (so it cannot tell whether their stream can be ended there).
    fn start_writing(&mut self, decoded_past: bool) -> Result<&mut ChunkWriter> {
        if let Some(Mode::Comparing {
            mut stable,
            matched,
            ..
        }) = self.mode.take()
        {
            let mut writer =
                ChunkWriter::create(self.fs.as_ref(), &self.dir.tmp(), self.options, self.stamp)?;
            writer.expect_rows(self.expected_rows);
            if let Some(allow) = self.two_streams {
                writer.allow_two_streams(allow);
            }
            if !copy_matched_frames(&mut stable, &mut writer, matched, decoded_past)? {
                for _ in 0..matched {
                    // Compressed again: a frame of a zstd stream holds only what the stream
                    // had not seen yet, so the new stream must see the chunks themselves.
                    match stable.next_chunk(|len| Some(vec![0u8; len]))? {
                        Some(Chunk {
                            data,
                            rows: Some(rows),
                        }) => writer.append(&data, rows)?,
                        _ => return Err(Error::new(Reason::BadFile, stable.path())),
                    }
                }
            }
            self.mode = Some(Mode::Writing(Box::new(writer)));
        }
        match self.mode.as_mut() {
            Some(Mode::Writing(writer)) => Ok(writer),
            _ => Err(Error::without_path(Reason::Closed)),
        }
    }

    /// Finishes the tmp file and installs it as the stable file, unless the table turned
    /// out unchanged. On error the tmp file is removed and the stable and backup files are
    /// as they were (or, if the error came from the final directory fsync, the new file is
    /// installed but maybe not yet durable).
    pub fn commit(&mut self) -> Result<CommitOutcome> {
        let digest = self.digest.digest128().to_le_bytes();
        if let Some(Mode::Comparing { stable, .. }) = self.mode.as_mut() {
            let Some(h) = stable.header().current().copied() else {
                return Err(Error::new(Reason::BadFile, stable.path()));
            };
            // Every chunk matched; reading past the last checks the header's totals and the
            // content digest, so the stable file has now verified completely.
            let verified =
                stable.chunks_left() == 0 && matches!(stable.next_chunk(no_buffer), Ok(None));
            if verified && h.content_digest == digest {
                self.mode = None;
                // The stable file may have been renamed in by a commit whose directory fsync
                // failed: make its name durable before reporting success.
                self.fs
                    .sync_dir(self.dir.root())
                    .map_err(|e| Error::io(&e, self.dir.root()))?;
                self.committed = true;
                return Ok(CommitOutcome::Unchanged);
            }
            if let Err(e) = self.start_writing(false) {
                remove_if_present(self.fs.as_ref(), &self.dir.tmp());
                return Err(e);
            }
        }
        let Some(Mode::Writing(writer)) = self.mode.take() else {
            return Err(Error::without_path(Reason::Closed));
        };
        let result = writer
            .finish(digest)
            .and_then(|_| install_tmp_as_stable(self.fs.as_ref(), &self.dir, self.max_quarantined));
        match result {
            Ok(()) => {
                self.committed = true;
                Ok(CommitOutcome::Written)
            }
            Err(e) => {
                remove_if_present(self.fs.as_ref(), &self.dir.tmp());
                Err(e)
            }
        }
    }

    /// After a successful commit: copies the stable file to a new snapshot and deletes the
    /// oldest snapshots until at most `max_snapshots` remain.
    pub fn snapshot(
        &mut self,
        max_snapshots: usize,
        new_id: &mut dyn FnMut() -> Result<SnapshotId>,
    ) -> Result<SnapshotId> {
        if !self.committed {
            return Err(Error::without_path(Reason::Closed));
        }
        snapshot_stable(self.fs.as_ref(), &self.dir, max_snapshots, new_id)
    }

    /// Abandons an uncommitted persist: the tmp file is removed, nothing else changes.
    pub fn abort(&mut self) {
        if let Some(Mode::Writing(_)) = self.mode.take() {
            remove_if_present(self.fs.as_ref(), &self.dir.tmp());
        }
    }
}

impl Drop for PersistSession {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Copies the first `matched` frames of `stable` into `writer` as they are, when they can
/// be: a one-stream zstd file whose decoder, just past those frames (not `decoded_past`),
/// confirms that [`crate::codec::ZSTD_END_OF_FRAME`], which the writer puts before its own
/// frames, ends the zstd frame they leave open. Otherwise returns `false` with nothing
/// appended. Either way `stable` is rewound first.
fn copy_matched_frames(
    stable: &mut TableFile,
    writer: &mut ChunkWriter,
    matched: u64,
    decoded_past: bool,
) -> Result<bool> {
    let one_stream = stable
        .header()
        .current()
        .is_some_and(|h| h.codec == CODEC_ZSTD_STREAM);
    let copyable =
        one_stream && writer.can_copy_frames() && !decoded_past && stable.stream_can_end_here();
    stable.rewind()?;
    if !copyable {
        return Ok(false);
    }
    for _ in 0..matched {
        let Some((fh, stored)) = stable.next_stored_frame()? else {
            return Err(Error::new(Reason::BadFile, stable.path()));
        };
        writer.append_copied(&fh, stored)?;
    }
    Ok(true)
}

/// How the stable file's next chunk compares with the table's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Equal byte for byte, the stable chunk checked in full (frame CRC, decompression to its
    /// length, content hash).
    Same,
    /// Different, as its frame header (length, rows, hash) shows: not decoded.
    Differs,
    /// Different, or failing its checks, found by decoding it.
    DiffersDecoded,
}

/// Compares the next chunk of `stable` with `raw` (`rows` rows). A chunk whose frame header
/// already differs is not decoded, so that the stable file's decoder stays just past the
/// chunks that matched. `buffer` holds the decoded chunk.
fn compare_next_chunk(
    stable: &mut TableFile,
    buffer: &mut Vec<u8>,
    raw: &[u8],
    rows: u64,
) -> Comparison {
    let fh = match stable.next_stored_frame() {
        Ok(Some((fh, _))) => fh,
        _ => return Comparison::Differs,
    };
    if fh.raw_len != raw.len() as u64 || fh.row_count != rows || fh.raw_hash != xxh3_64(raw) {
        return Comparison::Differs;
    }
    let chunk = stable.chunk_of_frame(&fh, |len| {
        buffer.clear();
        buffer.resize(len, 0);
        Some(buffer.as_mut_slice())
    });
    match chunk {
        Ok(c) if &*c.data == raw => Comparison::Same,
        _ => Comparison::DiffersDecoded,
    }
}

/// An allocator for [`TableFile::next_chunk`] past the last chunk, where nothing is read.
fn no_buffer(_len: usize) -> Option<Vec<u8>> {
    None
}

/// Whether the stable file is a version 2 file written with the same options, so that an
/// unchanged table can be recognised chunk by chunk.
fn is_comparable(stable: &TableFile, options: WriteOptions) -> bool {
    stable.header().current().is_some_and(|h| {
        h.level == options.level
            && h.chunk_rows == options.chunk_rows
            && writes_codec(options.level, h.codec)
    })
}

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

/// The verified file a restore reads, and the files that failed before it.
pub struct RestoreSource {
    pub file: TableFile,
    pub kind: SourceKind,
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

/// Finds the newest file that verifies completely: stable, then backup, then a complete tmp
/// file. The returned file is rewound to its first chunk and stays open, so a concurrent
/// persist renaming files does not change what is read.
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
        Some((file, kind)) => Ok(RestoreSource {
            file,
            kind,
            failures,
            quarantined,
        }),
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

/// Opens `path` and verifies it completely; the file is rewound to its first chunk.
fn open_verified(fs: &dyn Fs, path: &Path) -> Result<TableFile> {
    let mut file = TableFile::open(fs, path)?;
    file.verify()?;
    Ok(file)
}

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
fn snapshot_stable(
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
