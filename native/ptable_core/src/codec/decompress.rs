//! Decompressing the chunks of one file: checked, in bounded memory, in stream order.

use super::pool::DCTXS;
use super::{CODEC_NONE, CODEC_ZSTD, CODEC_ZSTD_STREAM, CODEC_ZSTD_STREAMS2, ZSTD_END_OF_FRAME};
use zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

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
pub(super) const SIZE_CHECK_WINDOW: usize = 64 << 10;

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
