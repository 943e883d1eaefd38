//! Compressing the chunks of one file into a flushed zstd stream.

use super::pool::CCTXS;
use super::{zstd_error, LargeTuning, CODEC_NONE, CODEC_ZSTD_STREAM, LARGE_INPUT_BYTES, LEVELS};
use std::io;
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer};

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

impl Drop for Compressor {
    fn drop(&mut self) {
        if let Some(cctx) = self.stream.take() {
            let bytes = cctx.sizeof();
            CCTXS.give(cctx, bytes);
        }
    }
}
