//! Usage: zstd_levels CHUNKS_FILE [BASELINE_BYTES]
//!
//! CHUNKS_FILE holds `<<raw_len::32-little, rows::32-little, raw::binary>>` records: the
//! external term format of each chunk, exactly what PropertyTable.Persist hands the NIF.
//! For each zstd level, compresses the chunks with one reused bulk compressor (as
//! ptable_core::codec does), one frame per chunk, and also with frames of 4 and 16
//! consecutive chunks (what a larger frame than the row chunk would give). Prints a
//! Markdown table of file sizes (frames with their 36-byte headers plus the 80-byte file
//! header) and the best-of-N compression and decompression times.

use std::time::{Duration, Instant};

const FRAME_HEADER: usize = 36;
const FILE_HEADER: usize = 80;
const GROUPS: [usize; 3] = [1, 4, 16];

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: zstd_levels CHUNKS_FILE [BASELINE_BYTES]");
    let baseline: Option<usize> = args.next().and_then(|s| s.parse().ok());
    let data = std::fs::read(&path).expect("read chunks file");
    let mut chunks = Vec::new();
    let mut rows = 0u64;
    let mut at = 0;
    while at < data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        rows += u64::from(u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap()));
        at += 8;
        chunks.push(&data[at..at + len]);
        at += len;
    }
    let raw_total: usize = chunks.iter().map(|c| c.len()).sum();
    let frames: Vec<Vec<Vec<u8>>> = GROUPS
        .iter()
        .map(|&g| chunks.chunks(g).map(|c| c.concat()).collect())
        .collect();

    println!(
        "## Raw zstd levels ({} chunks, {} rows, {} of term_to_binary)\n",
        chunks.len(),
        rows,
        fmt_bytes(raw_total)
    );
    println!(
        "bench/zstd_levels: compression with a reused `zstd::bulk::Compressor`, as \
         `native/ptable_core/src/codec.rs` does, one frame per chunk (as the library does) \
         or per 4 or 16 consecutive chunks. Sizes include the file and frame headers{}. Times: \
         best of {} passes over the whole table, compression or decompression only (no \
         hashing, I/O or Elixir work), on one core.\n",
        match baseline {
            Some(b) => format!("; ratio is to the 0.2.3 baseline's file ({})", fmt_bytes(b)),
            None => String::new(),
        },
        passes(raw_total)
    );
    println!(
        "| zstd level | size, 1-chunk frames | ratio | compress ms | decompress ms | \
         size, 4-chunk frames | ratio | compress ms | size, 16-chunk frames | ratio | compress ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let reference = baseline.unwrap_or(raw_total);
    let ratio = |size: usize| format!("{:.3}", size as f64 / reference as f64);
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);

    for level in (-5..=-1).chain(1..=19) {
        let mut cells = vec![level.to_string()];
        for (gi, group_frames) in frames.iter().enumerate() {
            let reps = if level >= 14 { 1 } else { passes(raw_total) };
            let mut comp = zstd::bulk::Compressor::new(level).unwrap();
            let mut out: Vec<Vec<u8>> = Vec::new();
            let mut best_c = Duration::MAX;
            for _ in 0..reps {
                let t = Instant::now();
                out = group_frames
                    .iter()
                    .map(|f| comp.compress(f).unwrap())
                    .collect();
                best_c = best_c.min(t.elapsed());
            }
            let size: usize =
                FILE_HEADER + out.iter().map(|c| c.len() + FRAME_HEADER).sum::<usize>();
            cells.push(fmt_bytes(size));
            cells.push(ratio(size));
            cells.push(ms(best_c));
            if gi == 0 {
                let mut dec = zstd::bulk::Decompressor::new().unwrap();
                let longest = group_frames.iter().map(|f| f.len()).max().unwrap_or(0);
                let mut buf = vec![0u8; longest];
                let mut best_d = Duration::MAX;
                for _ in 0..passes(raw_total) {
                    let t = Instant::now();
                    for (c, raw) in out.iter().zip(group_frames) {
                        let n = dec.decompress_to_buffer(c, &mut buf[..raw.len()]).unwrap();
                        assert_eq!(n, raw.len());
                    }
                    best_d = best_d.min(t.elapsed());
                }
                cells.push(ms(best_d));
            }
        }
        println!("| {} |", cells.join(" | "));
    }
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
