//! One persist ([`PersistSession`]): compare with the stable file, write the tmp file only
//! from the first difference on, install it, snapshot the result.

use super::snapshots::snapshot_stable;
use super::{
    ensure_dir, install_tmp_as_stable, lock_dir, next_stable_sequence, remove_if_present, TableDir,
    DEFAULT_MAX_QUARANTINED,
};
use crate::codec::{writes_codec, CODEC_ZSTD_STREAM};
use crate::error::{Error, Reason, Result};
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
