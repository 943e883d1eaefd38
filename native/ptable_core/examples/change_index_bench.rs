//! Measures the change index and the change log on the benchmark's realistic rows, as
//! written by `dump_chunks.exs` (the persist's own encoding, 1,000 pairs per chunk):
//!
//! ```text
//! elixir native/ptable_core/examples/dump_chunks.exs 100000 /tmp/ptcl/100k
//! cargo run --release -p ptable_core --example change_index_bench -- /tmp/ptcl/100k
//! ```
//!
//! Prints: the walker's and walker + hashing's throughput, the index's heap bytes per row
//! (counted by the tests' counting allocator, next to hash maps of the same entries), the
//! time of a diff of an unchanged table and of changed ones with the log record each would
//! append, and the time of a replay. Times are the fastest of 7 runs in thread CPU time (Linux).

#[path = "../tests/counting_alloc/mod.rs"]
mod counting_alloc;

use ptable_core::change_index::{ChangeIndex, IndexBuilder, RowHash};
use ptable_core::change_log::{encode_record, scan_log, LogHeader};
use ptable_core::etf_rows;
use ptable_core::log_apply::apply;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Live bytes `f` leaves allocated (what it returns), and the peak above the start.
fn measure<R>(f: impl FnOnce() -> R) -> (R, isize, isize) {
    let (r, usage) = counting_alloc::measured(f);
    (r, usage.live as isize, usage.peak as isize)
}

/// CPU time of this thread: the machine may be shared, and waiting for a core is not
/// the code's cost.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The fastest of 7 runs, in thread CPU time.
fn fastest<R>(mut f: impl FnMut() -> R) -> (R, Duration) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..7 {
        let t = thread_cpu_time();
        last = Some(f());
        best = best.min(thread_cpu_time() - t);
    }
    (last.expect("ran"), best)
}

fn read_chunks(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut chunks = Vec::new();
    let mut rest = &bytes[..];
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        chunks.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    chunks
}

fn mb_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

fn build(seed: u64, chunks: &[Vec<u8>], rows: usize) -> ChangeIndex {
    let mut b = IndexBuilder::with_capacity(seed, rows);
    for c in chunks {
        b.add_chunk(c).expect("chunk");
    }
    b.finish().expect("index")
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: change_index_bench DIR");
    let dir = Path::new(&dir);
    let base = read_chunks(&dir.join("base.chunks"));
    let bytes: usize = base.iter().map(Vec::len).sum();
    let rows: usize = base
        .iter()
        .map(|c| etf_rows::pairs(c).map(|p| p.count()).unwrap_or(0))
        .sum();
    println!(
        "{}: {rows} rows in {} chunks, {bytes} bytes of ETF",
        dir.display(),
        base.len()
    );

    let (n, t) = fastest(|| {
        let mut n = 0;
        for c in &base {
            for p in etf_rows::pairs(c).expect("chunk") {
                n += p.expect("pair").bytes.len();
            }
        }
        n
    });
    println!(
        "walk only:           {t:>10.2?}  {:>7.0} MB/s  ({n} pair bytes)",
        mb_per_s(bytes, t)
    );
    let seed = 0x5EED_u64;
    let (x, t) = fastest(|| {
        let mut x = 0u64;
        for c in &base {
            for p in etf_rows::pairs(c).expect("chunk") {
                let h = RowHash::of(seed, &p.expect("pair"));
                x ^= h.property ^ h.pair as u64;
            }
        }
        x
    });
    println!(
        "walk + both hashes:  {t:>10.2?}  {:>7.0} MB/s  ({x:x})",
        mb_per_s(bytes, t)
    );

    let (_, t) = fastest(|| build(seed, &base, rows));
    let (index, kept, peak) = measure(|| build(seed, &base, rows));
    println!(
        "index build:         {t:>10.2?}  {} bytes/row held ({} by heap_bytes), peak {} bytes/row",
        fmt_per_row(kept, rows),
        fmt_per_row(index.heap_bytes() as isize, rows),
        fmt_per_row(peak, rows)
    );
    let (map, kept, _) = measure(|| {
        let mut m: HashMap<u64, [u64; 2]> = HashMap::with_capacity(rows);
        for r in index.rows() {
            m.insert(r.property, [r.pair as u64, (r.pair >> 64) as u64]);
        }
        m
    });
    println!(
        "  for comparison, HashMap<u64, [u64; 2]> of the same rows: {} bytes/row",
        fmt_per_row(kept, rows)
    );
    drop(map);
    let (map, kept, _) = measure(|| {
        let mut m: HashMap<u128, u64> = HashMap::with_capacity(rows);
        for r in index.rows() {
            m.insert(u128::from(r.property), r.pair as u64);
        }
        m
    });
    println!(
        "  HashMap<u128, u64> (128-bit property, 64-bit pair hash): {} bytes/row",
        fmt_per_row(kept, rows)
    );
    drop(map);

    // The same lookups in a plain sorted vector (binary search over all rows), for
    // comparison with the index's directory.
    let sorted: Vec<(u64, [u64; 2])> = index
        .rows()
        .map(|r| (r.property, [r.pair as u64, (r.pair >> 64) as u64]))
        .collect();
    let hashes: Vec<u64> = base
        .iter()
        .flat_map(|c| etf_rows::pairs(c).expect("chunk"))
        .map(|p| RowHash::of(seed, &p.expect("pair")).property)
        .collect();
    let (found, t) = fastest(|| {
        hashes
            .iter()
            .filter(|&&h| sorted.binary_search_by_key(&h, |e| e.0).is_ok())
            .count()
    });
    println!("  plain binary search of every row in a sorted Vec: {t:.2?} ({found} found)");
    let (found, t) = fastest(|| hashes.iter().filter(|&&h| index.get(h).is_some()).count());
    println!("  the index's lookup of every row, one at a time:   {t:.2?} ({found} found)");
    drop(sorted);

    let header = LogHeader {
        base_sequence: 1,
        base_digest: [0; 16],
        hash_seed: seed,
        created_unix_us: 0,
    };
    let mut log = header.encode();
    let mut sequence = 0;
    // Each table is the one before it after a change (dump_chunks.exs): diffs run against
    // the index of the state before, as successive persists would.
    let mut index = index;
    for name in ["base", "one", "delins", "tenth"] {
        let table = if name == "base" {
            base.clone()
        } else {
            read_chunks(&dir.join(format!("{name}.chunks")))
        };
        let ((changes, t), _, peak) = measure(|| {
            fastest(|| {
                let mut d = index.diff();
                for c in &table {
                    d.add_chunk(c).expect("chunk");
                }
                d.finish().expect("diff")
            })
        });
        let record = encode_record(&header, sequence + 1, changes.upserts(), changes.deletes())
            .expect("record");
        let appended = if changes.is_empty() {
            "nothing to append".to_string()
        } else {
            format!("a record of {} bytes", record.len())
        };
        println!(
            "diff {name:<7}        {t:>10.2?}  {} upserts, {} deletes, {appended}, peak {peak} bytes beyond the index",
            changes.upserts().len(),
            changes.deletes().len(),
        );
        if name == "tenth" {
            let full: usize = table.iter().map(Vec::len).sum();
            println!(
                "  0.1% record is {:.3}% of the table's ETF ({full} bytes)",
                100.0 * record.len() as f64 / full as f64
            );
        }
        if !changes.is_empty() {
            sequence += 1;
            log.extend(record);
            let (_, t) = fastest(|| index.clone().apply(&changes).expect("apply"));
            index.apply(&changes).expect("apply");
            println!("  index apply (includes a clone of the index): {t:.2?}");
        }
    }
    let scan = scan_log(&log, Path::new("log")).expect("log");
    let base_refs: Vec<&[u8]> = base.iter().map(Vec::as_slice).collect();
    let (applied, t) = fastest(|| apply(seed, &base_refs, &scan.records).expect("apply"));
    println!(
        "replay of {} records over the base (pairs copied, index rebuilt): {t:.2?}, {} rows",
        scan.records.len(),
        applied.pairs.len()
    );
    let replayed = applied.index.expect("index");
    assert!(
        replayed.rows().eq(index.rows()),
        "replay gives the last state's index"
    );
}

fn fmt_per_row(bytes: isize, rows: usize) -> String {
    format!("{:.1}", bytes as f64 / rows.max(1) as f64)
}
