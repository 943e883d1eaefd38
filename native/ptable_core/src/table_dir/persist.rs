//! One persist ([`PersistSession`]): with a baseline of the directory (see `baseline`),
//! compare the table with it and append the difference to the change log; without one,
//! compare with the stable file, write the tmp file only from the first difference on,
//! install it, snapshot the result.

use super::log::{append_record, find_log, log_unchanged, log_verifies, sync_log};
use super::snapshots::snapshot_stable;
use super::{
    ensure_dir, install_tmp_as_stable, lock_dir, next_stable_sequence, remove_if_present, BaseId,
    Baseline, Baselines, LogState, TableDir, DEFAULT_MAX_QUARANTINED,
};
use crate::change_index::{ChangeIndex, Diff, IndexBuilder};
use crate::change_log::{encode_record, LogHeader, MAX_RECORD_BYTES};
use crate::codec::{writes_codec, CODEC_ZSTD_STREAM};
use crate::error::{Error, Reason, Result};
use crate::format::HeaderV2;
use crate::format::MAX_CHUNK_LEN;
use crate::fs::{Fs, LockGuard};
use crate::reader::{Chunk, TableFile};
use crate::snapshot_id::SnapshotId;
use crate::writer::{ChunkWriter, Stamp, WriteOptions};
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new stable file was installed.
    Written,
    /// The table's encoding equals the stable file's (same options, every chunk byte for
    /// byte), and the stable file verified completely on the way, or the table equals the
    /// baseline: nothing was written, which spares flash.
    Unchanged,
    /// The difference from the baseline was appended to the change log as one record of
    /// this many bytes.
    Appended(u64),
}

/// How a persist may use the change log.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Where the directory's baseline is found and left; `None`: no change log (every
    /// changed persist writes a full file, as `log_compaction: 0` does).
    pub baselines: Option<Arc<Baselines>>,
    /// The log may grow to this fraction of the base file's size, and hold upserts and
    /// deletes up to this fraction of its rows (a restore decodes each twice, whatever it
    /// compressed to); a change that would take it further writes a full file instead (a
    /// compaction). 0 disables the log.
    pub log_compaction: f64,
    /// Write a full file whatever the baseline (a snapshot follows, or a restarted persist).
    pub full: bool,
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig {
            baselines: None,
            log_compaction: 0.0,
            full: false,
        }
    }
}

impl PersistConfig {
    fn logs(&self) -> bool {
        self.baselines.is_some() && self.log_compaction > 0.0
    }
}

/// A persist comparing the table with the baseline, to append the difference to the log.
struct Diffing {
    diff: Diff<ChangeIndex>,
    base: BaseId,
    log: Option<LogState>,
    /// Bytes the log may still grow by.
    room: u64,
    /// Upserts and deletes the log may still take.
    operations_room: u64,
    /// The base, to be verified (with the log) before anything is appended; `None` once it
    /// was.
    unverified: Option<(TableFile, Arc<dyn Fs>)>,
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
    Diffing(Box<Diffing>),
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
    expected_rows: u64,
    /// Quarantined files kept when a commit moves a corrupt file aside.
    max_quarantined: usize,
    /// Overrides the writer's choice of two streams (tests).
    two_streams: Option<bool>,
    config: PersistConfig,
    /// The index of a table being written in full, for the baseline its commit leaves;
    /// dropped at the first chunk it cannot index (the next persist is full again).
    builder: Option<IndexBuilder>,
    /// What the commit did, once it did, and whether it compared with the baseline (then
    /// the stable file alone may not be the state: a log may follow it).
    outcome: Option<(CommitOutcome, bool)>,
    // Dropped last: everything above happens under the lock.
    _lock: Box<dyn LockGuard>,
}

impl PersistSession {
    /// Creates the directory if needed and takes its lock; no change log.
    pub fn begin(fs: Arc<dyn Fs>, dir: TableDir, options: WriteOptions) -> Result<Self> {
        Self::begin_with(fs, dir, options, PersistConfig::default())
    }

    /// Creates the directory if needed and takes its lock. With a baseline that still
    /// describes the directory's files, the persist compares the table with it and appends
    /// the difference to the log; otherwise it writes a full file (or finds the stable file
    /// unchanged), building the index of the baseline it leaves.
    pub fn begin_with(
        fs: Arc<dyn Fs>,
        dir: TableDir,
        options: WriteOptions,
        config: PersistConfig,
    ) -> Result<Self> {
        ensure_dir(fs.as_ref(), dir.root())?;
        let lock = lock_dir(fs.as_ref(), &dir)?;
        let stable = TableFile::open(fs.as_ref(), &dir.stable()).ok();
        let baseline = config.baselines.as_ref().and_then(|b| b.take(&dir));
        let stable_header = stable.as_ref().and_then(|f| f.header().current().copied());
        let usable_baseline = match (baseline, stable_header) {
            (Some(b), Some(h)) if config.logs() && !config.full => usable(fs.as_ref(), &dir, b, &h),
            _ => None,
        };
        let builder = match &usable_baseline {
            None if config.logs() => Some(IndexBuilder::new(random_seed()?)),
            _ => None,
        };
        let stamp = Stamp::now(next_stable_sequence(fs.as_ref(), &dir, stable.as_ref()));
        let mode = match (usable_baseline, stable) {
            (Some(baseline), Some(stable)) => Mode::Diffing(Box::new(Diffing::new(
                baseline,
                stable,
                Arc::clone(&fs),
                config.log_compaction,
            ))),
            (_, stable) => Self::full_mode(fs.as_ref(), &dir, options, stamp, stable)?,
        };
        Ok(PersistSession {
            fs,
            dir,
            options,
            stamp,
            mode: Some(mode),
            digest: Xxh3::new(),
            expected_rows: 0,
            max_quarantined: DEFAULT_MAX_QUARANTINED,
            two_streams: None,
            config,
            builder,
            outcome: None,
            _lock: lock,
        })
    }

    /// Compares with the stable file when it alone is the persisted state (a version 2 file
    /// written with the same options, and no log: neither a `data.ptable.log` nor a log
    /// continuing it under the backup log's name, where a compaction cut short between its
    /// renames leaves it), else starts the tmp file.
    fn full_mode(
        fs: &dyn Fs,
        dir: &TableDir,
        options: WriteOptions,
        stamp: Stamp,
        stable: Option<TableFile>,
    ) -> Result<Mode> {
        let comparable = stable
            .filter(|file| is_comparable(file, options))
            .filter(|file| !exists(fs, &dir.log()) && !continued_by_log(fs, dir, file));
        if let Some(stable) = comparable {
            return Ok(Mode::Comparing {
                stable: Box::new(stable),
                matched: 0,
                chunk: Vec::new(),
            });
        }
        match ChunkWriter::create(fs, &dir.tmp(), options, stamp) {
            Ok(writer) => Ok(Mode::Writing(Box::new(writer))),
            Err(e) => {
                // The tmp file may exist with part of its placeholder header.
                remove_if_present(fs, &dir.tmp());
                Err(e)
            }
        }
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
        if let Some(builder) = self.builder.take() {
            let rows = usize::try_from(rows).unwrap_or(usize::MAX);
            self.builder = Some(IndexBuilder::with_capacity(builder.seed(), rows));
        }
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
        if let Some(Mode::Diffing(diffing)) = self.mode.as_mut() {
            return diffing.add(raw);
        }
        self.digest.update(raw);
        if self
            .builder
            .as_mut()
            .is_some_and(|b| b.add_chunk(raw).is_err())
        {
            self.builder = None;
        }
        match self.mode.as_mut() {
            None | Some(Mode::Diffing(_)) => Err(Error::without_path(Reason::Closed)),
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
        let diffed = matches!(self.mode, Some(Mode::Diffing(_)));
        let outcome = self.commit_mode()?;
        self.outcome = Some((outcome, diffed));
        Ok(outcome)
    }

    fn commit_mode(&mut self) -> Result<CommitOutcome> {
        if let Some(Mode::Diffing(_)) = self.mode {
            let Some(Mode::Diffing(diffing)) = self.mode.take() else {
                return Err(Error::without_path(Reason::Closed));
            };
            return self.commit_changes(*diffing);
        }
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
                let len = self.fs.metadata(&self.dir.stable()).map(|m| m.len);
                if let Ok(len) = len {
                    self.leave_baseline(&h, len);
                }
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
        let result = writer.finish(digest).and_then(|header| {
            install_tmp_as_stable(self.fs.as_ref(), &self.dir, self.max_quarantined)?;
            Ok(header)
        });
        match result {
            Ok(header) => {
                let len = header.encode().len() as u64 + header.payload_len;
                self.leave_baseline(&header, len);
                Ok(CommitOutcome::Written)
            }
            Err(e) => {
                remove_if_present(self.fs.as_ref(), &self.dir.tmp());
                Err(e)
            }
        }
    }

    /// After a full file's commit: the index built from its chunks, with no log, becomes
    /// the directory's baseline.
    fn leave_baseline(&mut self, header: &HeaderV2, file_len: u64) {
        let (Some(baselines), Some(builder)) = (&self.config.baselines, self.builder.take()) else {
            return;
        };
        if let Ok(index) = builder.finish() {
            let base = BaseId::of(header, file_len);
            baselines.put(
                &self.dir,
                Baseline {
                    index,
                    base,
                    log: None,
                },
            );
        }
    }

    /// Appends the table's difference from the baseline to the log (nothing when there is
    /// none) and leaves the baseline brought up to date. `restart` when the record would be
    /// malformed or take the log past its compaction threshold.
    fn commit_changes(&mut self, diffing: Diffing) -> Result<CommitOutcome> {
        let mut diffing = diffing;
        diffing.verify()?;
        let Diffing {
            diff,
            base,
            log,
            room,
            operations_room,
            ..
        } = diffing;
        let (mut index, changes) = diff.finish_owned();
        let changes = changes.map_err(|_| restart())?;
        if changes.is_empty() {
            if let Some(log) = &log {
                sync_log(self.fs.as_ref(), log)?;
            }
            self.fs
                .sync_dir(self.dir.root())
                .map_err(|e| Error::io(&e, self.dir.root()))?;
            self.put_baseline(Baseline { index, base, log });
            return Ok(CommitOutcome::Unchanged);
        }
        let header = match &log {
            Some(log) => log.header,
            None => LogHeader {
                base_sequence: base.sequence,
                base_digest: base.content_digest,
                hash_seed: index.seed(),
                created_unix_us: self.stamp.created_unix_us,
            },
        };
        let sequence = log.as_ref().map_or(1, |l| l.records + 1);
        let record = encode_record(&header, sequence, changes.upserts(), changes.deletes())
            .map_err(|_| restart())?;
        let new_header_len = if log.is_none() {
            header.encode().len()
        } else {
            0
        };
        let operations = (changes.upserts().len() + changes.deletes().len()) as u64;
        if (record.len() + new_header_len) as u64 > room || operations > operations_room {
            return Err(restart());
        }
        let log = append_record(
            self.fs.as_ref(),
            &self.dir,
            log.as_ref(),
            &header,
            &record,
            operations,
        )?;
        // The record is durable: a failure to update the index only costs the next persist
        // a full write.
        if index.apply(&changes).is_ok() {
            self.put_baseline(Baseline {
                index,
                base,
                log: Some(log),
            });
        }
        Ok(CommitOutcome::Appended(record.len() as u64))
    }

    fn put_baseline(&self, baseline: Baseline) {
        if let Some(baselines) = &self.config.baselines {
            baselines.put(&self.dir, baseline);
        }
    }

    /// After a successful commit: copies the stable file to a new snapshot and deletes the
    /// oldest snapshots until at most `max_snapshots` remain.
    pub fn snapshot(
        &mut self,
        max_snapshots: usize,
        new_id: &mut dyn FnMut() -> Result<SnapshotId>,
    ) -> Result<SnapshotId> {
        match self.outcome {
            Some((_, false)) => {}
            // A snapshot copies the stable file, which alone is the state only after a full
            // commit: a persist that snapshots is begun with `full`.
            Some((_, true)) => return Err(Error::without_path(Reason::Internal)),
            None => return Err(Error::without_path(Reason::Closed)),
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

fn restart() -> Error {
    Error::without_path(Reason::Restart)
}

fn random_seed() -> Result<u64> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|_| Error::without_path(Reason::Os("eio")))?;
    Ok(u64::from_le_bytes(raw))
}

fn exists(fs: &dyn Fs, path: &std::path::Path) -> bool {
    !matches!(fs.metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Whether a change log may continue the base `header`: one that names it under the log's
/// or the backup log's name (a compaction cut between its renames leaves the log under the
/// backup log's name beside its base), or one that could not be read (restore may read
/// it). Restore applies such a log, so the base alone is not the persisted state. A log
/// whose header does not verify is never applied, so it does not count: it must not turn
/// every later persist into a full write.
fn has_log(fs: &dyn Fs, dir: &TableDir, header: &HeaderV2) -> bool {
    let (found, failures) = find_log(fs, dir, header);
    found.is_some() || failures.iter().any(|e| !e.reason.is_corruption())
}

/// Whether a log may continue `stable` (see [`has_log`]).
fn continued_by_log(fs: &dyn Fs, dir: &TableDir, stable: &TableFile) -> bool {
    stable
        .header()
        .current()
        .is_none_or(|h| has_log(fs, dir, h))
}

/// `baseline` if it still describes the directory: its base is the stable file (by
/// sequence and content digest) and its log is as it left it. A baseline without a log
/// must find no log of its base either: a restore that could not read the log leaves one,
/// and a table equal to the base would be found unchanged while restore applies the log.
fn usable(fs: &dyn Fs, dir: &TableDir, baseline: Baseline, stable: &HeaderV2) -> Option<Baseline> {
    if !baseline.base.is(stable) {
        return None;
    }
    let log_ok = match &baseline.log {
        Some(log) => log_unchanged(fs, log),
        None => !has_log(fs, dir, stable),
    };
    log_ok.then_some(baseline)
}

impl Diffing {
    fn new(baseline: Baseline, stable: TableFile, fs: Arc<dyn Fs>, log_compaction: f64) -> Self {
        let limit = (baseline.base.file_len as f64 * log_compaction) as u64;
        let used = baseline.log.as_ref().map_or(0, |l| l.valid_len);
        let operations_limit = (baseline.base.rows as f64 * log_compaction) as u64;
        let operations_used = baseline.log.as_ref().map_or(0, |l| l.operations);
        Diffing {
            diff: baseline.index.into_diff(),
            base: baseline.base,
            log: baseline.log,
            room: limit.saturating_sub(used),
            operations_room: operations_limit.saturating_sub(operations_used),
            unverified: Some((stable, fs)),
        }
    }

    /// Verifies the base and its log, once, as a full persist verifies the stable file it
    /// compares with: nothing is appended to a base or a log that does not verify (a rotten
    /// base would lose the record at restore, a rotten record every record after it). A
    /// failure is `restart`: the full write that follows replaces them.
    ///
    /// Done with the first chunk, in the writer thread, where it overlaps with the caller
    /// reading the table.
    fn verify(&mut self) -> Result<()> {
        let Some((mut stable, fs)) = self.unverified.take() else {
            return Ok(());
        };
        stable.verify().map_err(|_| restart())?;
        match &self.log {
            Some(log) if !log_verifies(fs.as_ref(), log) => Err(restart()),
            _ => Ok(()),
        }
    }

    /// Compares one chunk. `restart` as soon as the changes clearly will not fit: their raw
    /// bytes beyond what a record of them could compress to, or beyond a record's limit.
    fn add(&mut self, raw: &[u8]) -> Result<()> {
        self.verify()?;
        self.diff.add_chunk(raw).map_err(|_| restart())?;
        let pending = self.diff.upsert_bytes() as u64;
        if pending > MAX_RECORD_BYTES as u64
            || pending > self.room.saturating_mul(RAW_PER_STORED)
            || self.diff.upsert_count() as u64 > self.operations_room
        {
            return Err(restart());
        }
        Ok(())
    }
}

/// How much larger than their record the raw pairs of a change may be before a persist gives
/// up on the log early (zstd rarely shrinks a record's pairs more than this).
const RAW_PER_STORED: u64 = 8;
