//! Chunk compression. The user's `:compression` level 0..9 picks the codec and its level;
//! level 0 stores chunks as they are.
//!
//! Files are written with [`CODEC_ZSTD_STREAM`]: one zstd stream runs through the whole
//! file and is flushed at the end of every chunk, so each frame's stored bytes are exactly
//! what a decoder that has read all earlier frames needs to output that chunk. Later chunks
//! reuse what the earlier ones taught the compressor (property names repeat across the
//! table), which gives small files at fast levels and with small chunks. The price: frames
//! decompress only in order. On machines with three cores or more, large files use
//! [`CODEC_ZSTD_STREAMS2`]: two such streams, the even chunks in one and the odd chunks in
//! the other, so that two threads compress at once.
//! [`CODEC_ZSTD`] (one independent zstd frame per chunk) is still read.

use std::io;
use std::sync::Mutex;
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Codec ids stored in the header.
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
pub const CODEC_ZSTD_STREAM: u8 = 2;
/// Two zstd streams: frame `i` continues stream `i % 2`.
pub const CODEC_ZSTD_STREAMS2: u8 = 3;

/// A zstd block header of an empty raw block marked last: appended to a stream flushed at a
/// block boundary, it ends the zstd frame (frames written here carry no checksum), after
/// which a new zstd frame may follow in the same stream (RFC 8878, 3.1.1.2).
pub const ZSTD_END_OF_FRAME: [u8; 3] = [0x01, 0x00, 0x00];

/// Expected size of all chunks together from which a file is written with two streams
/// ([`CODEC_ZSTD_STREAMS2`]): below it, a second thread costs more than it saves.
pub const TWO_STREAMS_INPUT_BYTES: u64 = 1 << 20;

/// How one user level compresses: a zstd level, and another setting for large files
/// (see [`LARGE_INPUT_BYTES`]).
#[derive(Debug, Clone, Copy)]
struct Tuning {
    zstd_level: i32,
    large: Option<LargeTuning>,
}

/// zstd level for large files, with its search depth (log2) and shortest match changed.
#[derive(Debug, Clone, Copy)]
struct LargeTuning {
    zstd_level: i32,
    search_log: u32,
    min_match: u32,
}

const fn level(zstd_level: i32) -> Tuning {
    Tuning {
        zstd_level,
        large: None,
    }
}

const fn large_tuned(zstd_level: i32, large: LargeTuning) -> Tuning {
    Tuning {
        zstd_level,
        large: Some(large),
    }
}

/// How each user level 1..9 compresses (index 0 unused). Chosen by measurement
/// (bench/zstd_levels on the benchmark's realistic table): every step gives files no larger
/// than the one before, and the default 6 is about the fastest setting whose files are no
/// larger than property_table's (`term_to_binary(compressed: 6)`) at 1,000, 100,000 and
/// 1,000,000 rows.
///
/// Small files get zstd's tables for small inputs, where only zstd 7 stays under
/// property_table's size. For large files, zstd 5 (greedy) with a deeper search and matches
/// of at least 6 bytes gives 0.98 of property_table's size in 60% of zstd 7's time: property
/// names and term headers repeat in long runs, and short matches cost more to find than
/// they save.
const LEVELS: [Tuning; 10] = [
    level(0),
    level(1),
    level(3),
    level(5),
    level(5),
    large_tuned(
        6,
        LargeTuning {
            zstd_level: 5,
            search_log: 3,
            min_match: 6,
        },
    ),
    large_tuned(
        7,
        LargeTuning {
            zstd_level: 5,
            search_log: 4,
            min_match: 6,
        },
    ),
    level(9),
    level(13),
    level(17),
];

/// Input size (all chunks) from which the `large` overrides apply: zstd itself switches to
/// its tables for large inputs above 256 KiB.
const LARGE_INPUT_BYTES: u64 = 256 << 10;

/// Largest zstd window (log2) a decoder accepts, so its context allocates at most 16 MiB
/// whatever a file says. The writer's levels (zstd 1..19, no long mode) use at most 2^23.
const WINDOW_LOG_MAX: u32 = 24;

/// Whether this version writes files at user level `level` (0..=9) with `codec`.
pub fn writes_codec(level: u8, codec: u8) -> bool {
    if level == 0 {
        codec == CODEC_NONE
    } else {
        codec == CODEC_ZSTD_STREAM || codec == CODEC_ZSTD_STREAMS2
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// Compresses the chunks of one file, in order.
pub struct Compressor {
    stream: Option<CCtx<'static>>,
    large: Option<LargeTuning>,
    started: bool,
}

impl Compressor {
    pub fn new(level: u8) -> io::Result<Self> {
        let tuning = match LEVELS.get(usize::from(level)) {
            Some(t) if t.zstd_level > 0 => *t,
            _ => {
                return Ok(Compressor {
                    stream: None,
                    large: None,
                    started: false,
                })
            }
        };
        let mut cctx = CCTXS.cctx()?;
        cctx.set_parameter(CParameter::CompressionLevel(tuning.zstd_level))
            .map_err(zstd_error)?;
        Ok(Compressor {
            stream: Some(cctx),
            large: tuning.large,
            started: false,
        })
    }

    /// Before the first chunk: the expected size of all chunks together, so that zstd sizes
    /// its window and tables for it (a stream of unknown size gets the tables of a huge
    /// input, whose setup costs milliseconds for a small table), and large files get their
    /// own setting of the level.
    pub fn hint_total_size(&mut self, bytes: u64) {
        if let (Some(cctx), false) = (&mut self.stream, self.started) {
            let hint = u32::try_from(bytes)
                .unwrap_or(u32::MAX)
                .min(i32::MAX as u32);
            // Only hints: a setting zstd refuses leaves its defaults for the level, which
            // compress the same data just as correctly.
            let _ = cctx.set_parameter(CParameter::SrcSizeHint(hint));
            if let (Some(large), true) = (self.large, bytes >= LARGE_INPUT_BYTES) {
                let _ = cctx.set_parameter(CParameter::CompressionLevel(large.zstd_level));
                let _ = cctx.set_parameter(CParameter::SearchLog(large.search_log));
                let _ = cctx.set_parameter(CParameter::MinMatch(large.min_match));
            }
        }
    }

    pub fn codec(&self) -> u8 {
        if self.stream.is_some() {
            CODEC_ZSTD_STREAM
        } else {
            CODEC_NONE
        }
    }

    /// Appends the stored form of `raw` (the next chunk) to `out`.
    pub fn compress_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let Some(cctx) = &mut self.stream else {
            out.extend_from_slice(raw);
            return Ok(());
        };
        self.started = true;
        let mut input = InBuffer::around(raw);
        loop {
            let left = raw.len() - input.pos();
            out.reserve(zstd_safe::compress_bound(left) + 64);
            let start = out.len();
            let mut output = OutBuffer::around_pos(out, start);
            let pending = cctx
                .compress_stream2(
                    &mut output,
                    &mut input,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .map_err(zstd_error)?;
            if pending == 0 && input.pos() == raw.len() {
                return Ok(());
            }
        }
    }
}

/// zstd contexts kept for the next file. A fresh context allocates its tables and buffers
/// and zstd clears them: inside the VM that memory comes back from the allocator as new
/// pages, and faulting them in cost about 0.7 ms of a 1,000-row persist (a third of it).
/// Only small contexts are kept (at most [`POOLED_CONTEXTS`] of [`POOLED_CONTEXT_BYTES`]
/// each, per kind), so the memory held between calls stays small; large files, whose setup
/// is a small part of their time, free theirs.
struct ContextPool<T>(Mutex<Vec<T>>);

const POOLED_CONTEXTS: usize = 2;
const POOLED_CONTEXT_BYTES: usize = 2 << 20;

impl<T> ContextPool<T> {
    const fn new() -> Self {
        ContextPool(Mutex::new(Vec::new()))
    }

    fn take(&self) -> Option<T> {
        self.0.lock().ok()?.pop()
    }

    /// Keeps `context` (of `bytes` bytes) if it is small and the pool has room.
    fn give(&self, context: T, bytes: usize) {
        if bytes <= POOLED_CONTEXT_BYTES {
            if let Ok(mut pool) = self.0.lock() {
                if pool.len() < POOLED_CONTEXTS {
                    pool.push(context);
                }
            }
        }
    }
}

static CCTXS: ContextPool<CCtx<'static>> = ContextPool::new();
static DCTXS: ContextPool<DCtx<'static>> = ContextPool::new();

impl ContextPool<CCtx<'static>> {
    /// A compression context from the pool, reset to zstd's defaults, or a new one.
    fn cctx(&self) -> io::Result<CCtx<'static>> {
        if let Some(mut cctx) = self.take() {
            if cctx
                .reset(zstd_safe::ResetDirective::SessionAndParameters)
                .is_ok()
            {
                return Ok(cctx);
            }
        }
        CCtx::try_create().ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }
}

impl ContextPool<DCtx<'static>> {
    /// A decompression context from the pool (reset) or a new one, refusing windows over
    /// [`WINDOW_LOG_MAX`].
    fn limited_dctx(&self) -> Option<DCtx<'static>> {
        let pooled = self.take().and_then(|mut d| {
            d.reset(zstd_safe::ResetDirective::SessionAndParameters)
                .ok()
                .map(|_| d)
        });
        let mut d = match pooled {
            Some(d) => d,
            None => DCtx::try_create()?,
        };
        d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .ok()?;
        Some(d)
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        if let Some(cctx) = self.stream.take() {
            let bytes = cctx.sizeof();
            CCTXS.give(cctx, bytes);
        }
    }
}

/// Decompresses the chunks of one file.
pub struct Decompressor {
    kind: DecoderKind,
    /// Streaming context and its output window for [`Decompressor::decompresses_to`],
    /// created on first use.
    size_check: Option<(DCtx<'static>, Vec<u8>)>,
}

enum DecoderKind {
    None,
    Frames(zstd::bulk::Decompressor<'static>),
    /// One context per stream (`count` of them, each created when its first frame comes:
    /// reading headers and checking CRCs needs none), the output of a frame decoded ahead
    /// by [`Decompressor::stage`] (if `is_staged`), and the index of the next frame (which
    /// picks its stream).
    Stream {
        streams: Vec<DCtx<'static>>,
        count: usize,
        staged: Vec<u8>,
        is_staged: bool,
        next: usize,
    },
}

/// Output window of the size check: what it allocates, whatever a frame claims.
const SIZE_CHECK_WINDOW: usize = 64 << 10;

/// The context of the stream the next frame continues (creating it at the stream's first
/// frame), and moves on to the frame after.
fn next_stream<'a>(
    streams: &'a mut Vec<DCtx<'static>>,
    count: usize,
    next: &mut usize,
) -> Option<&'a mut DCtx<'static>> {
    let index = *next % count.max(1);
    // Frames come in order, so a stream's first frame finds all earlier streams created.
    if index == streams.len() {
        streams.push(DCTXS.limited_dctx()?);
    }
    *next += 1;
    streams.get_mut(index)
}

/// Decodes one frame of `dctx`'s stream into `out`: it must take all of `stored` and give
/// exactly `out.len()` bytes. As in [`Decompressor::stage`], each call's output window
/// depends only on `out.len()` and the output so far.
fn decode_frame_into(dctx: &mut DCtx, stored: &[u8], out: &mut [u8]) -> bool {
    let mut input = InBuffer::around(stored);
    let mut filled = 0;
    // Once `out` is full, one more byte would mean a frame longer than announced.
    let mut probe = [0u8; 1];
    loop {
        let before_in = input.pos();
        let window = match out.get_mut(filled..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => &mut probe[..],
        };
        let mut output = OutBuffer::around(window);
        let result = dctx.decompress_stream(&mut output, &mut input);
        let produced = output.pos();
        if result.is_err() || filled == out.len() && produced > 0 {
            return false;
        }
        filled += produced;
        if input.pos() == stored.len() && produced == 0 {
            return filled == out.len();
        }
        if produced == 0 && input.pos() == before_in {
            return false;
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        let streams = match &mut self.kind {
            DecoderKind::Stream { streams, .. } => std::mem::take(streams),
            _ => Vec::new(),
        };
        let size_check = self.size_check.take().map(|(d, _)| d);
        for dctx in streams.into_iter().chain(size_check) {
            let bytes = dctx.sizeof();
            DCTXS.give(dctx, bytes);
        }
    }
}

impl Decompressor {
    /// `None` for a codec id this version does not know.
    pub fn for_codec(codec: u8) -> Option<Self> {
        let kind = match codec {
            CODEC_NONE => DecoderKind::None,
            CODEC_ZSTD => DecoderKind::Frames(zstd::bulk::Decompressor::new().ok()?),
            CODEC_ZSTD_STREAM | CODEC_ZSTD_STREAMS2 => DecoderKind::Stream {
                streams: Vec::new(),
                count: if codec == CODEC_ZSTD_STREAM { 1 } else { 2 },
                staged: Vec::new(),
                is_staged: false,
                next: 0,
            },
            _ => return None,
        };
        Some(Decompressor {
            kind,
            size_check: None,
        })
    }

    /// Whether chunks are stored as they are (codec 0): a frame's raw size is its stored size.
    pub fn stores_raw(&self) -> bool {
        matches!(self.kind, DecoderKind::None)
    }

    /// Starts again at the first frame.
    pub fn reset(&mut self) {
        if let DecoderKind::Stream {
            streams,
            staged,
            is_staged,
            next,
            ..
        } = &mut self.kind
        {
            staged.clear();
            *is_staged = false;
            *next = 0;
            let reset = |d: &mut DCtx| d.reset(zstd_safe::ResetDirective::SessionOnly).is_ok();
            if !streams.iter_mut().all(reset) {
                // Contexts that cannot be reset are dropped and made again as they are needed.
                streams.clear();
            }
        }
    }

    /// Stream codec: decompresses the next frame into an internal buffer, growing it only
    /// as output really comes (a frame that merely claims a huge `raw_len` allocates
    /// nothing), and tells whether it gave exactly `raw_len` bytes. The bytes are then taken
    /// by [`decompress_exact`](Self::decompress_exact). Frames must be decoded in file order
    /// from the first (or from a [`reset`](Self::reset)).
    fn stage(&mut self, stored: &[u8], raw_len: u64) -> bool {
        let DecoderKind::Stream {
            streams,
            count,
            staged: out,
            is_staged,
            next,
        } = &mut self.kind
        else {
            return false;
        };
        *is_staged = false;
        let Some(dctx) = next_stream(streams, *count, next) else {
            return false;
        };
        out.clear();
        let mut input = InBuffer::around(stored);
        loop {
            // The output window of each call depends only on `raw_len` and the output so far
            // (never on leftover capacity): zstd's output for a malformed stream can depend on
            // the window's size, and a file must read the same every time.
            let room = (raw_len.saturating_add(1) - out.len() as u64)
                .min(out.len().max(SIZE_CHECK_WINDOW) as u64) as usize;
            let (start, before_in) = (out.len(), input.pos());
            out.resize(start + room, 0);
            let mut output = OutBuffer::around(&mut out[start..]);
            let result = dctx.decompress_stream(&mut output, &mut input);
            let produced = output.pos();
            out.truncate(start + produced);
            if result.is_err() || out.len() as u64 > raw_len {
                return false;
            }
            if input.pos() == stored.len() && produced == 0 {
                // All input taken and nothing more comes out: the frame is out. (zstd may
                // take the last input in one call and give its output only in the next.)
                *is_staged = out.len() as u64 == raw_len;
                return *is_staged;
            }
            if produced == 0 && input.pos() == before_in {
                return false;
            }
        }
    }

    /// Decompresses `stored` into exactly `out.len()` bytes; `false` if the data is not a
    /// valid stream of exactly that size. For the stream codec, `stored` is the next frame,
    /// or the frame [`decompresses_to`](Self::decompresses_to) just decoded; a frame not
    /// decoded ahead is decoded straight into `out` (no copy, no buffer of its own).
    pub fn decompress_exact(&mut self, stored: &[u8], out: &mut [u8]) -> bool {
        match &mut self.kind {
            DecoderKind::None => {
                if stored.len() != out.len() {
                    return false;
                }
                out.copy_from_slice(stored);
                true
            }
            DecoderKind::Frames(z) => {
                matches!(z.decompress_to_buffer(stored, out), Ok(n) if n == out.len())
            }
            DecoderKind::Stream {
                streams,
                count,
                staged,
                is_staged,
                next,
            } => {
                if std::mem::take(is_staged) {
                    if staged.len() != out.len() {
                        return false;
                    }
                    out.copy_from_slice(staged);
                    return true;
                }
                match next_stream(streams, *count, next) {
                    Some(dctx) => decode_frame_into(dctx, stored, out),
                    None => false,
                }
            }
        }
    }

    /// One-stream codec: feeds [`ZSTD_END_OF_FRAME`] to the stream's decoder, as if the frames
    /// decoded so far were copied into a new file and its next frame began. `true` when that
    /// ended the zstd frame the stream was in, at a block boundary and without a content
    /// checksum to follow: then a new zstd frame may start after it. The decoder must be
    /// [`reset`](Self::reset) before it is used again.
    pub fn end_frame(&mut self) -> bool {
        let DecoderKind::Stream {
            streams,
            count: 1,
            is_staged: false,
            ..
        } = &mut self.kind
        else {
            return false;
        };
        let Some(dctx) = streams.first_mut() else {
            return false;
        };
        let mut input = InBuffer::around(&ZSTD_END_OF_FRAME[..]);
        let mut sink = [0u8; 1];
        let mut output = OutBuffer::around(&mut sink[..]);
        let ended = matches!(dctx.decompress_stream(&mut output, &mut input), Ok(0));
        ended && input.pos() == ZSTD_END_OF_FRAME.len() && output.pos() == 0
    }

    /// Whether `stored` decompresses to exactly `raw_len` bytes, found out without allocating
    /// what `raw_len` merely claims, so that a frame claiming a huge `raw_len` is refused
    /// before a buffer of that size is allocated. Independent frames are decoded into a fixed
    /// window (zstd's own window capped at 2^24 bytes) and checked again by the real
    /// decompression; a stream frame is decoded for real (see [`stage`](Self::stage)) and
    /// its bytes kept for [`decompress_exact`](Self::decompress_exact).
    pub fn decompresses_to(&mut self, stored: &[u8], raw_len: u64) -> bool {
        match &self.kind {
            DecoderKind::None => return stored.len() as u64 == raw_len,
            DecoderKind::Stream { .. } => return self.stage(stored, raw_len),
            DecoderKind::Frames(_) => {}
        }
        let (dctx, window) = match &mut self.size_check {
            Some(s) => s,
            None => match DCTXS.limited_dctx() {
                Some(d) => self.size_check.insert((d, vec![0u8; SIZE_CHECK_WINDOW])),
                None => return false,
            },
        };
        if dctx.reset(zstd_safe::ResetDirective::SessionOnly).is_err() {
            return false;
        }
        let mut input = InBuffer::around(stored);
        let mut produced: u64 = 0;
        loop {
            let before = input.pos();
            let mut output = OutBuffer::around(window.as_mut_slice());
            let hint = match dctx.decompress_stream(&mut output, &mut input) {
                Ok(hint) => hint,
                Err(_) => return false,
            };
            let n = output.pos();
            produced = produced.saturating_add(n as u64);
            if produced > raw_len {
                return false;
            }
            let consumed = input.pos() == stored.len();
            if hint == 0 && consumed {
                // A frame ended, fully flushed, with nothing after it.
                return produced == raw_len;
            }
            if consumed && n == 0 {
                // Everything flushed, and the frame wants more input than there is.
                return false;
            }
            if n == 0 && input.pos() == before {
                // No progress (cannot happen with a correct zstd; never loop on it).
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Vec<Vec<u8>> {
        (0..4u32)
            .map(|c| {
                (0..50_000u32)
                    .flat_map(|i| ((i * (c + 1)) % 251).to_le_bytes())
                    .collect()
            })
            .chain(std::iter::once(Vec::new()))
            .collect()
    }

    /// Decodes `frames` in order with `d`, as the reader does: straight into each chunk's
    /// buffer, or (`staged`) first checked with `decompresses_to`, as the reader does for a
    /// frame whose size is out of proportion to its stored bytes.
    fn decode_all(
        d: &mut Decompressor,
        frames: &[(Vec<u8>, usize)],
        staged: bool,
    ) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for (stored, len) in frames {
            if staged && !d.decompresses_to(stored, *len as u64) {
                return None;
            }
            let mut buf = vec![0u8; *len];
            if !d.decompress_exact(stored, &mut buf) {
                return None;
            }
            out.push(buf);
        }
        Some(out)
    }

    #[test]
    fn every_level_round_trips_in_order_and_after_a_reset() {
        let raw = chunks();
        for level in 0..=9u8 {
            let mut c = Compressor::new(level).unwrap();
            assert!(writes_codec(level, c.codec()));
            let frames: Vec<(Vec<u8>, usize)> = raw
                .iter()
                .map(|r| {
                    let mut stored = Vec::new();
                    c.compress_into(r, &mut stored).unwrap();
                    (stored, r.len())
                })
                .collect();
            if level > 0 {
                let stored: usize = frames.iter().map(|f| f.0.len()).sum();
                assert!(stored < raw.iter().map(Vec::len).sum::<usize>() / 4);
            }
            let mut d = Decompressor::for_codec(c.codec()).unwrap();
            for staged in [false, true, false] {
                assert_eq!(decode_all(&mut d, &frames, staged).as_ref(), Some(&raw));
                d.reset();
            }
            // A wrong length is refused, one byte short or one too many, in any frame.
            for (frame, delta) in [(0, -1), (0, 1), (2, -1), (2, 1)] {
                for staged in [false, true] {
                    d.reset();
                    let mut wrong = frames.clone();
                    wrong[frame].1 = wrong[frame].1.checked_add_signed(delta).unwrap();
                    let what = format!("level {level} frame {frame} {delta:+} staged {staged}");
                    assert_eq!(decode_all(&mut d, &wrong, staged), None, "{what}");
                }
            }
        }
    }

    /// Feeds `raw` to `cctx` as one flushed chunk of a stream.
    fn flush_chunk(cctx: &mut CCtx, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(raw.len()) + 64);
        let mut input = InBuffer::around(raw);
        let mut output = OutBuffer::around(&mut out);
        let end = zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush;
        while cctx.compress_stream2(&mut output, &mut input, end).unwrap() != 0 {}
        out
    }

    #[test]
    fn pooled_contexts_left_mid_stream_come_back_reset() {
        // A persist or restore that failed half way drops its context in the middle of a
        // zstd frame (and with its own settings); the next file must start afresh. A pool
        // of this test's own, so that no other test takes the context in between.
        let raw = chunks();
        let cctxs = ContextPool::new();
        let mut cctx = cctxs.cctx().unwrap();
        cctx.set_parameter(CParameter::CompressionLevel(19))
            .unwrap();
        let first = flush_chunk(&mut cctx, &raw[0]);
        cctxs.give(cctx, 0);

        let dctxs = ContextPool::new();
        let mut dctx = dctxs.limited_dctx().unwrap();
        let mut out = vec![0u8; raw[0].len()];
        let mut input = InBuffer::around(&first);
        dctx.decompress_stream(&mut OutBuffer::around(&mut out[..]), &mut input)
            .unwrap();
        dctxs.give(dctx, 0);

        // Both come back: a new stream through them round trips.
        let mut cctx = cctxs.cctx().unwrap();
        assert!(cctxs.take().is_none());
        let again = flush_chunk(&mut cctx, &raw[1]);
        let mut dctx = dctxs.limited_dctx().unwrap();
        assert!(dctxs.take().is_none());
        let mut out = vec![0u8; raw[1].len()];
        let mut output = OutBuffer::around(&mut out[..]);
        dctx.decompress_stream(&mut output, &mut InBuffer::around(&again))
            .unwrap();
        assert_eq!(output.pos(), raw[1].len());
        assert_eq!(out, raw[1]);
    }

    #[test]
    fn only_small_contexts_are_pooled_and_only_a_few() {
        let pool = ContextPool::new();
        pool.give(usize::MAX, POOLED_CONTEXT_BYTES + 1);
        assert!(pool.take().is_none());
        for i in 0..POOLED_CONTEXTS + 3 {
            pool.give(i, POOLED_CONTEXT_BYTES);
        }
        let kept = std::iter::from_fn(|| pool.take()).count();
        assert_eq!(kept, POOLED_CONTEXTS);
    }

    #[test]
    fn independent_frames_are_still_read() {
        let raw = chunks();
        let mut d = Decompressor::for_codec(CODEC_ZSTD).unwrap();
        for r in &raw {
            let stored = zstd::bulk::compress(r, 3).unwrap();
            let mut out = vec![0u8; r.len()];
            assert!(d.decompress_exact(&stored, &mut out));
            assert_eq!(&out, r);
        }
    }

    #[test]
    fn size_check_in_bounded_memory() {
        // Sizes around multiples of the check's window, and a chunk compressing 30000:1.
        for len in [
            0usize,
            1,
            SIZE_CHECK_WINDOW,
            SIZE_CHECK_WINDOW + 1,
            8 << 20,
            24 << 20,
        ] {
            let raw = vec![0u8; len];
            let n = len as u64;
            let independent = zstd::bulk::compress(&raw, 3).unwrap();
            let mut d = Decompressor::for_codec(CODEC_ZSTD).unwrap();
            assert!(d.decompresses_to(&independent, n), "len {len}");
            assert!(!d.decompresses_to(&independent, n + 1), "len {len}");
            if len > 0 {
                assert!(!d.decompresses_to(&independent, n - 1), "len {len}");
                let cut = &independent[..independent.len() - 1];
                assert!(!d.decompresses_to(cut, n), "len {len}");
            }
            for level in 0..=9u8 {
                let mut c = Compressor::new(level).unwrap();
                let mut stored = Vec::new();
                c.compress_into(&raw, &mut stored).unwrap();
                let mut d = Decompressor::for_codec(c.codec()).unwrap();
                let mut check = |stored: &[u8], claim: u64| {
                    d.reset();
                    d.decompresses_to(stored, claim)
                };
                assert!(check(&stored, n), "len {len} level {level}");
                assert!(!check(&stored, n + 1), "len {len} level {level}");
                assert!(!check(&stored, u64::MAX), "len {len} level {level}");
                if len > 0 {
                    assert!(!check(&stored, n - 1), "len {len} level {level}");
                    let cut = &stored[..stored.len() - 1];
                    assert!(!check(cut, n), "len {len} level {level}");
                }
            }
        }
    }

    #[test]
    fn unknown_codec_is_refused() {
        assert!(Decompressor::for_codec(9).is_none());
    }
}
