//! Usage: zstd_levels CHUNKS_FILE [BASELINE_BYTES]
//!
//! CHUNKS_FILE holds `<<raw_len::32-little, rows::32-little, raw::binary>>` records: the
//! external term format of each chunk, exactly what PropertyTable.Persist hands the NIF.
//! Compresses them as one file, in order: with each user level 1..9 through
//! `ptable_core::codec::Compressor` (what the library writes), and with plain zstd levels
//! in the same stream mode (one stream flushed at the end of every chunk, the total size as
//! a hint). Prints a Markdown table of file sizes (frames with their 36-byte headers plus the
//! 80-byte file header) and best-of-N compression times on one core.

use ptable_core::codec::Compressor;
use std::time::{Duration, Instant};
use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, CCtx, CParameter, InBuffer, OutBuffer};

const FRAME_HEADER: usize = 36;
const FILE_HEADER: usize = 80;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: zstd_levels CHUNKS_FILE [BASELINE_BYTES]");
        std::process::exit(2);
    };
    let baseline: Option<usize> = args.next().and_then(|s| s.parse().ok());
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("cannot read {path}: {e}");
        std::process::exit(2);
    });
    let chunks = parse_chunks(&data).unwrap_or_else(|| {
        eprintln!("{path}: not a chunk dump");
        std::process::exit(2);
    });
    let raw_total: usize = chunks.iter().map(|c| c.len()).sum();
    let reference = baseline.unwrap_or(raw_total);

    println!(
        "## Compression levels ({} chunks, {} of term_to_binary)\n",
        chunks.len(),
        fmt_bytes(raw_total)
    );
    println!(
        "bench/zstd_levels: the chunks compressed as one file, in order, by the library's \
         compressor at each `:compression` level and by plain zstd levels in the same stream \
         mode. Sizes include the file and frame headers{}. Times: best of {} passes, \
         compression only (no hashing, I/O or Elixir work), on one core.\n",
        match baseline {
            Some(b) => format!("; ratio is to the 0.2.3 baseline's file ({})", fmt_bytes(b)),
            None => String::new(),
        },
        passes(raw_total)
    );
    println!("| compressor | file size | ratio | compress ms |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, (size, time): (usize, Duration)| {
        println!(
            "| {name} | {} | {:.3} | {:.1} |",
            fmt_bytes(size),
            size as f64 / reference as f64,
            time.as_secs_f64() * 1000.0
        );
    };
    for level in 1..=9u8 {
        row(
            format!("`compression: {level}` (library)"),
            best_of(raw_total, || library_file_size(&chunks, level)),
        );
    }
    for level in 1..=9 {
        row(
            format!("zstd {level}"),
            best_of(raw_total, || zstd_file_size(&chunks, level)),
        );
    }
}

fn parse_chunks(data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let raw = rest.get(8..8 + len)?;
        chunks.push(raw);
        rest = &rest[8 + len..];
    }
    Some(chunks)
}

fn best_of(raw_total: usize, mut run: impl FnMut() -> usize) -> (usize, Duration) {
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..passes(raw_total) {
        let t = Instant::now();
        size = run();
        best = best.min(t.elapsed());
    }
    (size, best)
}

fn file_size(stored: usize, chunks: usize) -> usize {
    FILE_HEADER + stored + FRAME_HEADER * chunks
}

fn library_file_size(chunks: &[&[u8]], level: u8) -> usize {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut compressor = Compressor::new(level).expect("compressor");
    compressor.hint_total_size(total as u64);
    let mut out = Vec::new();
    let mut stored = 0;
    for chunk in chunks {
        out.clear();
        compressor.compress_into(chunk, &mut out).expect("compress");
        stored += out.len();
    }
    file_size(stored, chunks.len())
}

fn zstd_file_size(chunks: &[&[u8]], level: i32) -> usize {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .expect("level");
    cctx.set_parameter(CParameter::SrcSizeHint(total.min(i32::MAX as usize) as u32))
        .expect("hint");
    let mut out: Vec<u8> = Vec::new();
    let mut stored = 0;
    for chunk in chunks {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(chunk.len()) + 64);
        let mut input = InBuffer::around(chunk);
        loop {
            let start = out.len();
            let mut output = OutBuffer::around_pos(&mut out, start);
            let pending = cctx
                .compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_flush)
                .expect("compress");
            if pending == 0 && input.pos() == chunk.len() {
                break;
            }
            out.reserve(64 << 10);
        }
        stored += out.len();
    }
    file_size(stored, chunks.len())
}

fn passes(raw_total: usize) -> usize {
    if raw_total > 50 << 20 {
        1
    } else {
        3
    }
}

fn fmt_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}
