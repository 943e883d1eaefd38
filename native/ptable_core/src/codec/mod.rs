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

mod compress;
mod decompress;
mod pool;
#[cfg(test)]
mod tests;

pub use compress::Compressor;
pub use decompress::Decompressor;

use std::io;
use zstd::zstd_safe;

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
pub(crate) const WINDOW_LOG_MAX: u32 = 24;

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
