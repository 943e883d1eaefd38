//! Opens a table file of either version, verifies it, and streams its chunks back.
//!
//! Reading is bounded by what is really on disk, never by what a header claims. A length
//! read from the file is checked against the header's totals, the file's length and the
//! format's limits ([`MAX_STORED_LEN`], [`MAX_CHUNK_LEN`],
//! [`MAX_LEGACY_PAYLOAD_LEN`](crate::format::MAX_LEGACY_PAYLOAD_LEN)) before it is used. Even then it sizes no buffer on trust: a file's length may be a hole (a sparse
//! file of a few KiB can claim terabytes), so checking reads the bytes through a fixed
//! buffer, and a frame (or legacy payload) larger than [`DIRECT_READ_MAX`] is read into
//! memory only once its checksum matched the bytes actually read. Chunks are returned one at
//! a time.

mod legacy;

use crate::codec::Decompressor;
use crate::error::{Error, Reason, Result};
use crate::format::{
    parse_prefix, read_header_body, FrameHeader, HeaderV2, Version, FRAME_HEADER_LEN,
    HEADER_BODY_LEN, MAX_CHUNK_LEN, MAX_HEADER_BODY_LEN, MAX_STORED_LEN, PREFIX_LEN,
    VERSION_CURRENT, VERSION_LEGACY,
};
use crate::fs::{Fs, ReadFile, WriteFile};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const READ_BUFFER: usize = 256 << 10;

/// Stored bytes up to this size are read straight into memory and checked there; a larger
/// frame or legacy payload is first checked through the read buffer (unless the whole file
/// verified already), so that a checksum that does not match costs no memory.
pub const DIRECT_READ_MAX: u64 = 1 << 20;

/// A chunk's buffer is allocated straight from its frame's `raw_len` only when that is at
/// most `EAGER_RATIO` times the stored size plus `EAGER_SLACK`: anything larger is first
/// decompressed in bounded memory to check it really has that size (see
/// [`TableFile::checked_raw_len`]), so a frame whose header claims gigabytes allocates nothing.
/// (Frames of the zstd-stream codec are always decompressed first, into memory that grows
/// with the real output.)
const EAGER_RATIO: u64 = 64;
const EAGER_SLACK: u64 = 1 << 20;

/// What a file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHeader {
    /// Version 2.
    Current(HeaderV2),
    /// Version 1 (property_table): only the payload length is known without decoding.
    Legacy { payload_len: u64 },
}

impl FileHeader {
    /// The version 2 header; `None` for a legacy file.
    pub fn current(&self) -> Option<&HeaderV2> {
        match self {
            FileHeader::Current(h) => Some(h),
            FileHeader::Legacy { .. } => None,
        }
    }

    /// The format version the file was written in.
    pub fn version(&self) -> u8 {
        match self {
            FileHeader::Current(_) => VERSION_CURRENT,
            FileHeader::Legacy { .. } => VERSION_LEGACY,
        }
    }
}

/// One decoded chunk: the external term format of a list of `{property, value}` pairs.
pub struct Chunk<B> {
    pub data: B,
    /// Rows in the chunk; unknown for a legacy file's single chunk.
    pub rows: Option<u64>,
}

/// An opened table file whose header has been checked.
pub struct TableFile {
    path: PathBuf,
    file: BufReader<Box<dyn ReadFile>>,
    header: FileHeader,
    /// Offset of the first frame (or of the legacy payload).
    payload_start: u64,
    decompressor: Option<Decompressor>,
    cursor: Cursor,
    scratch: Vec<u8>,
    /// Set once [`verify`](TableFile::verify) passed: every length and checksum matched
    /// the bytes on disk, so they may size buffers directly.
    verified: bool,
}

/// Where a pass over the payload is.
#[derive(Default)]
struct Cursor {
    frames: u64,
    payload: u64,
    rows: u64,
    digest: Option<Xxh3>,
    done: bool,
}

impl TableFile {
    /// Opens `path` and checks magic, version, header CRC and that the file's length is
    /// exactly what the header announces.
    pub fn open(fs: &dyn Fs, path: &Path) -> Result<Self> {
        let io_err = |e: std::io::Error| Error::io(&e, path);
        let raw = fs.open(path).map_err(io_err)?;
        let file_len = raw.file_len().map_err(io_err)?;
        // A small file gets a buffer of its own size.
        let buffer = usize::try_from(file_len).map_or(READ_BUFFER, |len| len.clamp(1, READ_BUFFER));
        let mut file = BufReader::with_capacity(buffer, raw);
        let bad_file = || Error::new(Reason::BadFile, path);

        let mut prefix = [0u8; PREFIX_LEN];
        file.read_exact(&mut prefix).map_err(io_err)?;
        let (header, payload_start, expected_len) = match parse_prefix(&prefix, path)? {
            Version::Legacy => legacy::read_header(&mut file, path)?,
            Version::Current => {
                let lens = HEADER_BODY_LEN..=MAX_HEADER_BODY_LEN;
                let body = read_header_body(&mut file, &prefix, lens, path)?;
                let h = HeaderV2::decode_body(&body, path)?;
                let start = (PREFIX_LEN + 4 + body.len() + 4) as u64;
                let expected = start.checked_add(h.payload_len).ok_or_else(bad_file)?;
                (FileHeader::Current(h), start, expected)
            }
        };
        if file_len != expected_len {
            return Err(bad_file());
        }
        let decompressor = match header {
            FileHeader::Current(h) => {
                // Every frame takes at least its header's bytes of the payload.
                if h.level > 9 || h.chunk_count > h.payload_len / FRAME_HEADER_LEN as u64 {
                    return Err(bad_file());
                }
                Some(Decompressor::for_codec(h.codec).ok_or_else(bad_file)?)
            }
            FileHeader::Legacy { .. } => None,
        };
        let mut table_file = TableFile {
            path: path.to_path_buf(),
            file,
            header,
            payload_start,
            decompressor,
            cursor: Cursor::default(),
            scratch: Vec::new(),
            verified: false,
        };
        table_file.rewind()?;
        Ok(table_file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Chunks that [`next_chunk`](Self::next_chunk) has not returned yet, as the header
    /// counts them (a legacy file's payload is one chunk).
    pub fn chunks_left(&self) -> u64 {
        match self.header {
            FileHeader::Current(h) => h.chunk_count.saturating_sub(self.cursor.frames),
            FileHeader::Legacy { .. } => u64::from(!self.cursor.done),
        }
    }

    /// Goes back to the first chunk.
    pub fn rewind(&mut self) -> Result<()> {
        if let Some(d) = &mut self.decompressor {
            d.reset();
        }
        self.file
            .seek(SeekFrom::Start(self.payload_start))
            .map_err(|e| Error::io(&e, &self.path))?;
        self.cursor = Cursor {
            digest: Some(Xxh3::new()),
            ..Cursor::default()
        };
        Ok(())
    }

    /// The one definition of a valid file, used for every decision (restore, rotation, the
    /// unchanged-table check, snapshots, inspect): reads the whole payload and checks
    /// everything the format carries — for version 2 the frame CRCs, every chunk
    /// decompressed to exactly its `raw_len` with its XXH3-64, the frames' rows and bytes
    /// against the header's totals and the XXH3-128 content digest; for a legacy file its
    /// MD5 — then rewinds. (The header CRC and the file's length were checked at open.)
    pub fn verify(&mut self) -> Result<()> {
        self.rewind()?;
        let result = match self.header {
            FileHeader::Legacy { payload_len } => self.verify_legacy(payload_len),
            FileHeader::Current(h) => self.verify_frames(h),
        };
        self.rewind()?;
        if result.is_ok() {
            self.verified = true;
        }
        result
    }

    fn verify_frames(&mut self, h: HeaderV2) -> Result<()> {
        let mut out = Vec::new();
        while let Some(fh) = self.next_frame(&h)? {
            self.check_content(&fh, &mut out)?;
        }
        self.check_digest(&h)
    }

    /// Decompresses the frame just read into `out` (reused between frames) and checks its
    /// length and content hash, adding it to the digest.
    fn check_content(&mut self, fh: &FrameHeader, out: &mut Vec<u8>) -> Result<()> {
        let len = self.checked_raw_len(fh)?;
        out.clear();
        out.resize(len, 0);
        self.decompress_checked(fh, out)
    }

    /// Passes the next `len` bytes of the file to `sink`, piece by piece, straight from the
    /// read buffer: memory stays the buffer's whatever `len` says. `bad_file` when the file
    /// ends first.
    fn stream(&mut self, len: u64, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let buf = self
                .file
                .fill_buf()
                .map_err(|e| Error::io(&e, &self.path))?;
            if buf.is_empty() {
                return Err(Error::new(Reason::BadFile, &self.path));
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            sink(&buf[..n])?;
            self.file.consume(n);
            left -= n as u64;
        }
        Ok(())
    }

    /// Reads the next `len` bytes of the file into `self.scratch`. The buffer is reserved
    /// for `len` bytes: callers have checked `len` against the format's limits, and either
    /// it is small or its bytes were checked on disk first.
    fn read_into_scratch(&mut self, len: u64) -> Result<()> {
        self.scratch.clear();
        let n = usize::try_from(len).map_err(|_| self.bad_file())?;
        if self.scratch.try_reserve_exact(n).is_err() {
            return Err(self.out_of_memory());
        }
        let read = (&mut self.file)
            .take(len)
            .read_to_end(&mut self.scratch)
            .map_err(|e| Error::io(&e, &self.path))?;
        if read != n {
            return Err(self.bad_file());
        }
        Ok(())
    }

    /// Whether `len` bytes about to be read into memory must first be checked through the
    /// read buffer: they are too many to allocate on trust, and the file has not verified.
    fn check_before_reading(&self, len: u64) -> bool {
        len > DIRECT_READ_MAX && !self.verified
    }

    /// Returns the next chunk, decompressed into a buffer from `alloc` (called with the
    /// chunk's exact size), or `None` after the last one. Checks as it goes; call
    /// [`verify`](Self::verify) first to know the whole file is good before using any chunk.
    pub fn next_chunk<B, F>(&mut self, alloc: F) -> Result<Option<Chunk<B>>>
    where
        B: AsMut<[u8]>,
        F: FnOnce(usize) -> Option<B>,
    {
        match self.header {
            FileHeader::Legacy { payload_len } => self.next_legacy_chunk(payload_len, alloc),
            FileHeader::Current(h) => {
                let Some(fh) = self.next_frame(&h)? else {
                    self.check_digest(&h)?;
                    return Ok(None);
                };
                self.chunk_of_frame(&fh, alloc).map(Some)
            }
        }
    }

    /// Decodes the chunk of `fh`, the frame [`next_stored_frame`](Self::next_stored_frame)
    /// just returned, into a buffer from `alloc` and checks it as
    /// [`next_chunk`](Self::next_chunk) does: so a caller can look at a frame's header before
    /// deciding to decode its chunk.
    pub fn chunk_of_frame<B, F>(&mut self, fh: &FrameHeader, alloc: F) -> Result<Chunk<B>>
    where
        B: AsMut<[u8]>,
        F: FnOnce(usize) -> Option<B>,
    {
        let len = self.checked_raw_len(fh)?;
        let mut data = alloc(len).ok_or_else(|| self.out_of_memory())?;
        self.decompress_checked(fh, data.as_mut())?;
        Ok(Chunk {
            data,
            rows: Some(fh.row_count),
        })
    }

    /// For a one-stream zstd file: whether the stream, decoded up to the last chunk read,
    /// can be ended right there by [`crate::codec::ZSTD_END_OF_FRAME`], as a writer that
    /// copies the frames read so far does before its own frames (see
    /// [`crate::codec::Decompressor::end_frame`]). Call [`rewind`](Self::rewind) before
    /// reading on.
    pub fn stream_can_end_here(&mut self) -> bool {
        self.decompressor
            .as_mut()
            .is_some_and(Decompressor::end_frame)
    }

    /// For a version 2 file: the next frame's header and stored bytes, CRC-checked but not
    /// decompressed (that is [`verify`](Self::verify)'s job); `None` after the last frame,
    /// once the totals matched the header.
    pub fn next_stored_frame(&mut self) -> Result<Option<(FrameHeader, &[u8])>> {
        let FileHeader::Current(h) = self.header else {
            return Err(self.bad_file());
        };
        Ok(self.next_frame(&h)?.map(|fh| (fh, self.scratch.as_slice())))
    }

    /// Reads the next frame and checks its CRC (its stored bytes end up in `self.scratch`
    /// with [`Stored::Keep`]); `None` after the last frame, once the totals were checked
    /// against the header.
    fn next_frame(&mut self, h: &HeaderV2) -> Result<Option<FrameHeader>> {
        if self.cursor.frames == h.chunk_count {
            if self.cursor.payload != h.payload_len || self.cursor.rows != h.row_count {
                return Err(self.bad_file());
            }
            return Ok(None);
        }
        let left = h.payload_len - self.cursor.payload;
        if left < FRAME_HEADER_LEN as u64 {
            return Err(self.bad_file());
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.file
            .read_exact(&mut head)
            .map_err(|e| Error::io(&e, &self.path))?;
        let fh = FrameHeader::decode(&head, &self.path)?;
        if fh.stored_len > left - FRAME_HEADER_LEN as u64
            || fh.stored_len > MAX_STORED_LEN
            || fh.raw_len > MAX_CHUNK_LEN
        {
            return Err(self.bad_file());
        }
        let index = self.cursor.frames;
        if self.check_before_reading(fh.stored_len) {
            let start = self.payload_start + self.cursor.payload + FRAME_HEADER_LEN as u64;
            if !self.check_stored_crc(&fh, index)? {
                return Err(Error::new(Reason::BadChecksum, &self.path));
            }
            self.file
                .seek(SeekFrom::Start(start))
                .map_err(|e| Error::io(&e, &self.path))?;
        }
        self.read_into_scratch(fh.stored_len)?;
        let crc_ok = fh.crc == fh.expected_crc(index, &self.scratch);
        if !crc_ok {
            return Err(Error::new(Reason::BadChecksum, &self.path));
        }
        self.cursor.frames += 1;
        self.cursor.payload += FRAME_HEADER_LEN as u64 + fh.stored_len;
        self.cursor.rows = self
            .cursor
            .rows
            .checked_add(fh.row_count)
            .ok_or_else(|| self.bad_file())?;
        Ok(Some(fh))
    }

    /// Whether the next `fh.stored_len` bytes of the file match the CRC of frame `index`,
    /// read through the read buffer.
    fn check_stored_crc(&mut self, fh: &FrameHeader, index: u64) -> Result<bool> {
        let mut crc = fh.crc_of_header(index);
        self.stream(fh.stored_len, |piece| {
            crc.update(piece);
            Ok(())
        })?;
        Ok(crc.finalize() == fh.crc)
    }

    /// The frame's `raw_len`, once it is plausible enough to allocate a buffer of that size:
    /// small relative to the stored bytes (already read and CRC-checked, so bounded by the
    /// file), or confirmed by decompressing the stored bytes in bounded memory.
    fn checked_raw_len(&mut self, fh: &FrameHeader) -> Result<usize> {
        let len = usize::try_from(fh.raw_len).map_err(|_| self.bad_file())?;
        let eager = (self.scratch.len() as u64)
            .saturating_mul(EAGER_RATIO)
            .saturating_add(EAGER_SLACK);
        let ok = match &mut self.decompressor {
            // Stored chunks are their raw bytes: no claim of another size is believed.
            Some(d) if fh.raw_len > eager || d.stores_raw() => {
                d.decompresses_to(&self.scratch, fh.raw_len)
            }
            Some(_) => true,
            None => fh.raw_len <= eager,
        };
        if !ok {
            return Err(self.bad_file());
        }
        Ok(len)
    }

    /// Decompresses the frame in `self.scratch` into `out` and checks its content hash.
    fn decompress_checked(&mut self, fh: &FrameHeader, out: &mut [u8]) -> Result<()> {
        let ok = match &mut self.decompressor {
            Some(d) => d.decompress_exact(&self.scratch, out),
            None => false,
        };
        if !ok {
            return Err(self.bad_file());
        }
        if xxh3_64(out) != fh.raw_hash {
            return Err(Error::new(Reason::BadChecksum, &self.path));
        }
        if let Some(d) = &mut self.cursor.digest {
            d.update(out);
        }
        Ok(())
    }

    fn check_digest(&mut self, h: &HeaderV2) -> Result<()> {
        match self.cursor.digest.take() {
            Some(d) if d.digest128().to_le_bytes() != h.content_digest => {
                Err(Error::new(Reason::BadChecksum, &self.path))
            }
            _ => Ok(()),
        }
    }

    /// Copies this file to `out`, checking it as [`verify`](Self::verify) does on the way
    /// (one pass: the copy is only good when this returns `Ok`). A version 2 file gets a
    /// new header carrying `stamp` (so a copy has its own place in the ordering); a legacy
    /// file is copied byte for byte. `out` is not synced.
    pub fn copy_to(
        &mut self,
        out: &mut dyn WriteFile,
        out_path: &Path,
        stamp: crate::writer::Stamp,
    ) -> Result<()> {
        self.rewind()?;
        let out_err = |e: std::io::Error| Error::io(&e, out_path);
        match self.header {
            FileHeader::Current(h) => {
                let header = HeaderV2 {
                    sequence: stamp.sequence,
                    created_unix_us: stamp.created_unix_us,
                    ..h
                };
                out.write_all(&header.encode()).map_err(out_err)?;
                let mut head = Vec::with_capacity(FRAME_HEADER_LEN);
                let mut content = Vec::new();
                while let Some(fh) = self.next_frame(&h)? {
                    self.check_content(&fh, &mut content)?;
                    head.clear();
                    fh.encode_into(&mut head);
                    out.write_all(&head).map_err(out_err)?;
                    out.write_all(&self.scratch).map_err(out_err)?;
                }
                self.check_digest(&h)?;
            }
            FileHeader::Legacy { payload_len } => {
                self.copy_legacy_to(payload_len, out, out_path)?
            }
        }
        self.rewind()
    }

    fn bad_file(&self) -> Error {
        Error::new(Reason::BadFile, &self.path)
    }

    fn out_of_memory(&self) -> Error {
        Error::new(Reason::Os("enomem"), &self.path)
    }
}
