//! Streams chunks into a new version 2 file: frames are appended as they come, the header
//! (which needs the totals) is written last, over a zeroed placeholder, then the file is
//! fsynced. A file whose header was never written has no magic and never verifies.

use crate::codec::{
    Compressor, CODEC_NONE, CODEC_ZSTD_STREAM, CODEC_ZSTD_STREAMS2, TWO_STREAMS_INPUT_BYTES,
    ZSTD_END_OF_FRAME,
};
use crate::error::{Error, Reason, Result};
use crate::format::{
    FrameHeader, HeaderV2, FRAME_HEADER_LEN, HEADER_AREA_LEN, MAX_CHUNK_LEN, MAX_STORED_LEN,
};
use crate::fs::{unix_us, Fs, WriteFile};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
use std::thread::JoinHandle;
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
        Stamp {
            sequence,
            // A clock before 1970 (devices without an RTC): record the epoch.
            created_unix_us: unix_us(std::time::SystemTime::now()).max(0),
        }
    }
}

/// A file being written.
pub struct ChunkWriter {
    file: Box<dyn WriteFile>,
    path: PathBuf,
    header: HeaderV2,
    /// Compresses every chunk, or only the even ones when `odd` runs.
    compressor: Compressor,
    /// The second stream of a two-stream file.
    odd: Option<OddStream>,
    /// A frame's header space followed by its stored bytes.
    frame: Vec<u8>,
    expected_rows: u64,
    appended: u64,
    two_streams: bool,
    /// Frames copied from another file and nothing compressed yet; the first compressed
    /// frame must end the copied zstd frame and start a new one.
    after_copies: bool,
    planned: bool,
}

/// Whether a second compression thread can run beside the writer and the caller (which
/// reads and encodes the next chunks meanwhile): only with three cores or more. On two, the
/// measured persist was no faster (the caller already keeps one core busy), and on one core
/// the threads would only take turns.
pub fn two_streams_help() -> bool {
    // Asked once: the answer reads cgroup files, which costs more than a small persist's
    // other setup.
    static HELPS: OnceLock<bool> = OnceLock::new();
    *HELPS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() >= 3))
}

/// What a frame's header needs besides the stored bytes.
#[derive(Debug, Clone, Copy)]
struct ChunkMeta {
    raw_len: u64,
    rows: u64,
    raw_hash: u64,
}

/// The odd chunks' stream of a two-stream file, compressed on a thread of its own while the
/// writer compresses the next even chunk. At most one chunk is on the thread at a time, and
/// its frame is written before the next even one, so frames stay in order.
struct OddStream {
    chunks: Option<SyncSender<Vec<u8>>>,
    frames: Receiver<io::Result<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
    pending: Option<ChunkMeta>,
}

impl OddStream {
    fn start(mut compressor: Compressor) -> io::Result<Self> {
        let (chunks, chunk_queue) = sync_channel::<Vec<u8>>(1);
        let (frame_queue, frames) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ptable_zstd".into())
            .spawn(move || {
                for raw in chunk_queue {
                    let mut frame = vec![0u8; FRAME_HEADER_LEN];
                    let result = compressor.compress_into(&raw, &mut frame).map(|()| frame);
                    if frame_queue.send(result).is_err() {
                        break;
                    }
                }
            })?;
        Ok(OddStream {
            chunks: Some(chunks),
            frames,
            thread: Some(thread),
            pending: None,
        })
    }

    fn send(&mut self, raw: &[u8], meta: ChunkMeta) -> io::Result<()> {
        let sent = self.chunks.as_ref().map(|q| q.send(raw.to_vec()));
        if !matches!(sent, Some(Ok(()))) {
            return Err(thread_stopped());
        }
        self.pending = Some(meta);
        Ok(())
    }

    /// The frame of the chunk on the thread, if any, once compressed.
    fn take_frame(&mut self) -> io::Result<Option<(Vec<u8>, ChunkMeta)>> {
        let Some(meta) = self.pending.take() else {
            return Ok(None);
        };
        let frame = self.frames.recv().map_err(|_| thread_stopped())??;
        Ok(Some((frame, meta)))
    }
}

fn thread_stopped() -> io::Error {
    io::Error::other("compression thread stopped")
}

impl Drop for OddStream {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the chunk it may be compressing.
        drop(self.chunks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
            odd: None,
            frame: Vec::new(),
            expected_rows: 0,
            appended: 0,
            two_streams: two_streams_help(),
            after_copies: false,
            planned: false,
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

    /// Whether a large file may be written with two streams (default: when the machine has
    /// at least three cores, see [`two_streams_help`]). Tests force it either way.
    pub fn allow_two_streams(&mut self, allow: bool) {
        self.two_streams = allow;
    }

    /// Compresses `raw` (the encoding of `rows` rows) and appends it as one frame (in a
    /// two-stream file, an odd chunk's frame is written with the next chunk or at `finish`).
    /// A chunk over [`MAX_CHUNK_LEN`] bytes is refused (`chunk_too_large`) before anything
    /// is written for it.
    pub fn append(&mut self, raw: &[u8], rows: u64) -> Result<()> {
        if raw.len() as u64 > MAX_CHUNK_LEN {
            return Err(Error::without_path(Reason::ChunkTooLarge));
        }
        if !self.planned {
            self.planned = true;
            self.plan_streams(raw.len() as u64, rows);
        }
        let meta = ChunkMeta {
            raw_len: raw.len() as u64,
            rows,
            raw_hash: xxh3_64(raw),
        };
        let odd_chunk = self.appended % 2 == 1;
        self.appended += 1;
        if let (Some(odd), true) = (&mut self.odd, odd_chunk) {
            return odd.send(raw, meta).map_err(|e| Error::io(&e, &self.path));
        }
        let mut frame = self.frame_buffer();
        if self.after_copies {
            self.after_copies = false;
            frame.extend_from_slice(&ZSTD_END_OF_FRAME);
        }
        let result = self
            .compressor
            .compress_into(raw, &mut frame)
            .map_err(|e| Error::io(&e, &self.path))
            .and_then(|()| self.write_odd_frame())
            .and_then(|()| self.write_frame(&mut frame, meta));
        self.reuse_frame_buffer(frame);
        result
    }

    /// The frame buffer, emptied down to the frame header's space.
    fn frame_buffer(&mut self) -> Vec<u8> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.resize(FRAME_HEADER_LEN, 0);
        frame
    }

    /// Keeps `frame` for the next one, unless a huge chunk grew it: it would pin that memory
    /// for the rest of the file.
    fn reuse_frame_buffer(&mut self, frame: Vec<u8>) {
        if frame.capacity() <= 8 << 20 {
            self.frame = frame;
        }
    }

    /// Whether [`append_copied`](Self::append_copied) can start this file: a one-stream zstd
    /// file (no second stream yet) with nothing appended.
    pub fn can_copy_frames(&self) -> bool {
        self.appended == 0 && self.odd.is_none() && self.header.codec == CODEC_ZSTD_STREAM
    }

    /// Appends a frame of a one-stream zstd file written at the same level, as it is: the
    /// leading frames of the stable file that a changed table still has. Only before any
    /// compressed chunk (see [`can_copy_frames`](Self::can_copy_frames)). The copied frames
    /// are a prefix of that file's zstd stream: the next compressed frame first ends the
    /// zstd frame they are part of, then starts a new one from its own compressor, whose
    /// history begins there. The file then stays one stream.
    pub fn append_copied(&mut self, fh: &FrameHeader, stored: &[u8]) -> Result<()> {
        if !(self.can_copy_frames() || self.after_copies) {
            return Err(Error::without_path(Reason::Closed));
        }
        self.two_streams = false;
        self.after_copies = true;
        self.appended += 1;
        let mut frame = self.frame_buffer();
        frame.extend_from_slice(stored);
        let meta = ChunkMeta {
            raw_len: fh.raw_len,
            rows: fh.row_count,
            raw_hash: fh.raw_hash,
        };
        let result = self.write_frame(&mut frame, meta);
        self.reuse_frame_buffer(frame);
        result
    }

    /// Before the first chunk: sizes the compressor for the whole file from the first
    /// chunk and the expected rows, and starts the second stream for a large file.
    fn plan_streams(&mut self, first_len: u64, first_rows: u64) {
        if self.expected_rows == 0 || first_rows == 0 || self.header.codec == CODEC_NONE {
            return;
        }
        let chunks = self.expected_rows.div_ceil(first_rows).max(1);
        let total = first_len.saturating_mul(chunks);
        if self.two_streams && total >= TWO_STREAMS_INPUT_BYTES {
            if let Ok(mut second) = Compressor::new(self.header.level) {
                second.hint_total_size(total / 2);
                // A thread that cannot start leaves a one-stream file: slower, as correct.
                if let Ok(odd) = OddStream::start(second) {
                    self.odd = Some(odd);
                    self.header.codec = CODEC_ZSTD_STREAMS2;
                    self.compressor.hint_total_size(total / 2);
                    return;
                }
            }
        }
        self.compressor.hint_total_size(total);
    }

    /// Writes the odd chunk's frame still on the compression thread, if any.
    fn write_odd_frame(&mut self) -> Result<()> {
        let Some(odd) = &mut self.odd else {
            return Ok(());
        };
        match odd.take_frame() {
            Ok(Some((mut frame, meta))) => self.write_frame(&mut frame, meta),
            Ok(None) => Ok(()),
            Err(e) => Err(Error::io(&e, &self.path)),
        }
    }

    /// Fills in the header of `frame` (header space, then the stored bytes) and writes it
    /// as the next frame of the file.
    /// A frame readers would refuse (over [`MAX_STORED_LEN`], which no chunk the writer
    /// accepts reaches) is not written.
    fn write_frame(&mut self, frame: &mut [u8], meta: ChunkMeta) -> Result<()> {
        let Some((head, stored)) = frame.split_at_mut_checked(FRAME_HEADER_LEN) else {
            return Err(Error::new(Reason::BadFile, &self.path));
        };
        if stored.len() as u64 > MAX_STORED_LEN || meta.raw_len > MAX_CHUNK_LEN {
            return Err(Error::without_path(Reason::ChunkTooLarge));
        }
        let mut fh = FrameHeader {
            raw_len: meta.raw_len,
            stored_len: stored.len() as u64,
            row_count: meta.rows,
            raw_hash: meta.raw_hash,
            crc: 0,
        };
        fh.crc = fh.expected_crc(self.header.chunk_count, stored);
        let mut encoded = Vec::with_capacity(FRAME_HEADER_LEN);
        fh.encode_into(&mut encoded);
        head.copy_from_slice(&encoded);
        self.file
            .write_all(frame)
            .map_err(|e| Error::io(&e, &self.path))?;
        self.header.chunk_count += 1;
        self.header.row_count += meta.rows;
        self.header.payload_len += frame.len() as u64;
        Ok(())
    }

    /// Writes the header, carrying `content_digest` (XXH3-128 of all raw chunks, kept by the
    /// caller because copied frames arrive without their raw bytes), and fsyncs. The file is
    /// complete and durable when this returns.
    pub fn finish(mut self, content_digest: [u8; 16]) -> Result<HeaderV2> {
        self.write_odd_frame()?;
        self.header.content_digest = content_digest;
        let path = self.path;
        self.file
            .write_all_at(&self.header.encode(), 0)
            .map_err(|e| Error::io(&e, &path))?;
        self.file.sync().map_err(|e| Error::io(&e, &path))?;
        Ok(self.header)
    }
}
