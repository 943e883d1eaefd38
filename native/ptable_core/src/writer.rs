//! Streams chunks into a new version 2 file: frames are appended as they come, the header
//! (which needs the totals) is written last, over a zeroed placeholder, then the file is
//! fsynced. A file whose header was never written has no magic and never verifies.

use crate::codec::Compressor;
use crate::error::{Error, Reason, Result};
use crate::format::{FrameHeader, HeaderV2, FRAME_HEADER_LEN, HEADER_AREA_LEN};
use crate::fs::{Fs, WriteFile};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// The user's compression level, 0..=9.
    pub level: u8,
    /// Rows per chunk the caller sends (recorded in the header).
    pub chunk_rows: u32,
}

/// Identity of a file within its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sequence: u64,
    pub created_unix_us: i64,
}

impl Stamp {
    /// `sequence` created now.
    pub fn now(sequence: u64) -> Self {
        let created_unix_us =
            match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
                // A clock before 1970 (devices without an RTC): record the epoch.
                Err(_) => 0,
            };
        Stamp {
            sequence,
            created_unix_us,
        }
    }
}

/// A file being written.
pub struct ChunkWriter {
    file: Box<dyn WriteFile>,
    path: PathBuf,
    header: HeaderV2,
    compressor: Compressor,
    frame: Vec<u8>,
    expected_rows: u64,
}

impl ChunkWriter {
    /// Creates (truncating) `path` and reserves room for the header.
    pub fn create(fs: &dyn Fs, path: &Path, options: WriteOptions, stamp: Stamp) -> Result<Self> {
        if options.level > 9 {
            return Err(Error::new(Reason::Os("einval"), path));
        }
        let compressor = Compressor::new(options.level).map_err(|e| Error::io(&e, path))?;
        let mut file = fs.create(path).map_err(|e| Error::io(&e, path))?;
        file.write_all(&[0u8; HEADER_AREA_LEN])
            .map_err(|e| Error::io(&e, path))?;
        Ok(ChunkWriter {
            file,
            path: path.to_path_buf(),
            header: HeaderV2 {
                codec: compressor.codec(),
                level: options.level,
                flags: 0,
                chunk_rows: options.chunk_rows,
                created_unix_us: stamp.created_unix_us,
                sequence: stamp.sequence,
                row_count: 0,
                chunk_count: 0,
                payload_len: 0,
                content_digest: [0; 16],
            },
            compressor,
            frame: Vec::new(),
            expected_rows: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The codec this writer compresses with.
    pub fn header(&self) -> &HeaderV2 {
        &self.header
    }

    /// How many rows the file will hold, if known: sizes the compressor for the whole file
    /// from the first chunk.
    pub fn expect_rows(&mut self, rows: u64) {
        self.expected_rows = rows;
    }

    /// Compresses `raw` (the encoding of `rows` rows) and appends it as one frame.
    pub fn append(&mut self, raw: &[u8], rows: u64) -> Result<()> {
        if self.header.chunk_count == 0 && self.expected_rows > 0 && rows > 0 {
            let chunks = self.expected_rows.div_ceil(rows).max(1);
            self.compressor
                .hint_total_size((raw.len() as u64).saturating_mul(chunks));
        }
        self.frame.clear();
        self.frame.resize(FRAME_HEADER_LEN, 0);
        self.compressor
            .compress_into(raw, &mut self.frame)
            .map_err(|e| Error::io(&e, &self.path))?;
        let stored_len = self.frame.len() - FRAME_HEADER_LEN;
        let mut fh = FrameHeader {
            raw_len: raw.len() as u64,
            stored_len: stored_len as u64,
            row_count: rows,
            raw_hash: xxh3_64(raw),
            crc: 0,
        };
        fh.crc = fh.expected_crc(self.header.chunk_count, &self.frame[FRAME_HEADER_LEN..]);
        let mut head = Vec::with_capacity(FRAME_HEADER_LEN);
        fh.encode_into(&mut head);
        self.frame[..FRAME_HEADER_LEN].copy_from_slice(&head);
        self.file
            .write_all(&self.frame)
            .map_err(|e| Error::io(&e, &self.path))?;
        self.header.chunk_count += 1;
        self.header.row_count += rows;
        self.header.payload_len += self.frame.len() as u64;
        // Keep a huge chunk's buffer from pinning memory for the rest of the file.
        if self.frame.capacity() > 8 << 20 {
            self.frame = Vec::new();
        }
        Ok(())
    }

    /// Writes the header, carrying `content_digest` (XXH3-128 of all raw chunks, kept by the
    /// caller because copied frames arrive without their raw bytes), and fsyncs. The file is
    /// complete and durable when this returns.
    pub fn finish(mut self, content_digest: [u8; 16]) -> Result<HeaderV2> {
        self.header.content_digest = content_digest;
        let path = self.path;
        self.file
            .write_all_at(&self.header.encode(), 0)
            .map_err(|e| Error::io(&e, &path))?;
        self.file.sync().map_err(|e| Error::io(&e, &path))?;
        Ok(self.header)
    }
}
