//! Chunk compression. The user's `:compression` level 0..9 picks the codec and its level;
//! level 0 stores chunks as they are.

use std::io;

/// Codec ids stored in the header.
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// The zstd level used for each user level 1..9 (index 0 unused). Chosen by measurement
/// (bench/persist_bench.exs --sweep, bench/zstd_levels) on the benchmark's realistic table
/// with 4,000-row chunks and on the synthetic chunks of ptable_core's tests: on both, every
/// step gives files no larger than the one before (zstd 2, 4, 5, 6 and 7 are skipped
/// because on one of them they give larger files than zstd 1 or 3). The default 6 (zstd 8)
/// is the first such level whose files are no larger than property_table's
/// (`term_to_binary(compressed: 6)`) at 1k, 100k and 1M rows.
const ZSTD_LEVELS: [i32; 10] = [0, 1, 1, 3, 3, 3, 8, 10, 12, 19];

/// Returns the codec id for a user compression level, which must be 0..=9.
pub fn codec_for_level(level: u8) -> u8 {
    if level == 0 {
        CODEC_NONE
    } else {
        CODEC_ZSTD
    }
}

/// Compresses chunks of one file, reusing the codec's context.
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new(level: u8) -> io::Result<Self> {
        let zstd = match ZSTD_LEVELS.get(usize::from(level)) {
            Some(0) | None => None,
            Some(&zl) => Some(zstd::bulk::Compressor::new(zl)?),
        };
        Ok(Compressor { zstd })
    }

    pub fn codec(&self) -> u8 {
        if self.zstd.is_some() {
            CODEC_ZSTD
        } else {
            CODEC_NONE
        }
    }

    /// Appends the compressed form of `raw` to `out`.
    pub fn compress_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match &mut self.zstd {
            None => out.extend_from_slice(raw),
            Some(z) => {
                let start = out.len();
                out.resize(start + zstd::zstd_safe::compress_bound(raw.len()), 0);
                let n = z.compress_to_buffer(raw, &mut out[start..])?;
                out.truncate(start + n);
            }
        }
        Ok(())
    }
}

/// Decompresses chunks of one file.
pub struct Decompressor {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    /// Streaming context and its output window for [`Decompressor::decompresses_to`],
    /// created on first use.
    stream: Option<(zstd::zstd_safe::DCtx<'static>, Vec<u8>)>,
}

/// Output window of the size check: what it allocates, whatever a frame claims.
const SIZE_CHECK_WINDOW: usize = 64 << 10;
/// Largest zstd window (log2) the size check accepts, so its context allocates at most
/// 16 MiB. The writer's levels (zstd 1..19, no long mode) use windows of at most 2^23.
const SIZE_CHECK_WINDOW_LOG_MAX: u32 = 24;

impl Decompressor {
    /// `None` for a codec id this version does not know.
    pub fn for_codec(codec: u8) -> Option<Self> {
        match codec {
            CODEC_NONE => Some(Decompressor {
                zstd: None,
                stream: None,
            }),
            CODEC_ZSTD => zstd::bulk::Decompressor::new().ok().map(|z| Decompressor {
                zstd: Some(z),
                stream: None,
            }),
            _ => None,
        }
    }

    /// Decompresses `stored` into exactly `out.len()` bytes; `false` if the data is not a
    /// valid stream of exactly that size.
    pub fn decompress_exact(&mut self, stored: &[u8], out: &mut [u8]) -> bool {
        match &mut self.zstd {
            None => {
                if stored.len() != out.len() {
                    return false;
                }
                out.copy_from_slice(stored);
                true
            }
            Some(z) => matches!(z.decompress_to_buffer(stored, out), Ok(n) if n == out.len()),
        }
    }

    /// Whether `stored` decompresses to exactly `raw_len` bytes, found out in bounded memory
    /// (a fixed output window, and zstd's own window capped at 2^24 bytes),
    /// so that a frame claiming a huge `raw_len` is refused before a buffer of that size is
    /// allocated. The bytes themselves are checked later by the real decompression.
    pub fn decompresses_to(&mut self, stored: &[u8], raw_len: u64) -> bool {
        use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};
        if self.zstd.is_none() {
            return stored.len() as u64 == raw_len;
        }
        let (dctx, window) = match &mut self.stream {
            Some(s) => s,
            None => match DCtx::try_create() {
                Some(mut d) => {
                    if d.set_parameter(DParameter::WindowLogMax(SIZE_CHECK_WINDOW_LOG_MAX))
                        .is_err()
                    {
                        return false;
                    }
                    self.stream.insert((d, vec![0u8; SIZE_CHECK_WINDOW]))
                }
                None => return false,
            },
        };
        if dctx.reset(ResetDirective::SessionOnly).is_err() {
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
            if consumed && n < SIZE_CHECK_WINDOW {
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

    #[test]
    fn every_level_round_trips() {
        let raw: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for level in 0..=9u8 {
            let mut c = Compressor::new(level).unwrap();
            assert_eq!(c.codec(), codec_for_level(level));
            let mut stored = vec![7u8];
            c.compress_into(&raw, &mut stored).unwrap();
            let mut d = Decompressor::for_codec(c.codec()).unwrap();
            let mut out = vec![0u8; raw.len()];
            assert!(d.decompress_exact(&stored[1..], &mut out));
            assert_eq!(out, raw);
            let mut short = vec![0u8; raw.len() - 1];
            assert!(!d.decompress_exact(&stored[1..], &mut short));
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
            for level in 0..=9u8 {
                let mut c = Compressor::new(level).unwrap();
                let mut stored = Vec::new();
                c.compress_into(&raw, &mut stored).unwrap();
                let mut d = Decompressor::for_codec(c.codec()).unwrap();
                let n = len as u64;
                assert!(d.decompresses_to(&stored, n), "len {len} level {level}");
                assert!(
                    !d.decompresses_to(&stored, n + 1),
                    "len {len} level {level}"
                );
                if len > 0 {
                    assert!(
                        !d.decompresses_to(&stored, n - 1),
                        "len {len} level {level}"
                    );
                    let cut = &stored[..stored.len() - 1];
                    assert!(!d.decompresses_to(cut, n), "len {len} level {level}");
                }
            }
        }
    }

    #[test]
    fn unknown_codec_is_refused() {
        assert!(Decompressor::for_codec(9).is_none());
    }
}
