//! Fuzzing of the change log's decoders, part of `fuzz_decoders` (same variables:
//! `PTABLE_FUZZ_SEED`, `PTABLE_FUZZ_ITERATIONS`, `PTABLE_FUZZ_THREADS`, `PTABLE_FUZZ_ONLY`,
//! `PTABLE_FUZZ_HANG_SECS`; input `i` depends only on the seed and `i`).
//!
//! * `fuzz_etf_walker`: chunks written by the VM (the fixture) and random well-formed
//!   chunks, mutated (bit flips, interesting bytes and lengths, tags, cuts, splices,
//!   inserted terms). Asserted: no panic, no hang, memory within 64 KiB + 64 x the input,
//!   the same spans as the independent reference walker (or both refuse), and an index
//!   built from an accepted chunk refuses it exactly when two properties are equal.
//! * `fuzz_change_log`: logs written by the core (header only, one update, a mixed history
//!   with compressed records, deletes only, an empty record, a large compressed record),
//!   mutated raw or through a model of their fields, after which payloads are re-encoded
//!   and lengths, hashes and CRCs recomputed (usually), so that inputs get past the
//!   checksums. Asserted: no panic, no hang, memory within 16 MiB + 130 x the input + 3 x the
//!   payloads really decoded; the same records and verified length as an independent
//!   reference decoder; reading through one-to-seven-byte reads gives the same; a log
//!   whose checksums were not recomputed yields exactly the first records of the seed log
//!   whose header it has;
//!   every verified log replays over its base.

use crate::change_log_support::{
    core_pairs, fixture, random_chunk, random_term, ref_pairs, ref_pairs_visiting, Spans, Table,
};
use crate::counting_alloc::tracked;
use crate::rng::{splitmix, Rng};
use crate::{fuzz_driver, le64};
use ptable_core::change_index::{property_hash, IndexBuilder, IndexError};
use ptable_core::change_log::{
    encode_record, scan_log, LogHeader, LogReader, LogScan, LogStop, LOG_HEADER_LEN,
};
use ptable_core::etf_rows::{self, EtfErrorKind};
use ptable_core::log_apply::apply;
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Inputs per run when `PTABLE_FUZZ_ITERATIONS` is not set. An input of the log fuzzer
/// costs about ten of the walker's (it writes, re-encodes and replays logs); both defaults
/// keep `cargo test` (debug build) within about 15 s for the two, on two busy cores.
const WALKER_ITERATIONS: u64 = 25_000;
const LOG_ITERATIONS: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Both fuzzers' outcomes, tallied by category.

struct Outcome {
    /// Index into the caller's category names.
    category: usize,
    recomputed: bool,
    peak: u64,
    largest: u64,
}

#[derive(Default)]
struct Tally {
    recomputed: AtomicU64,
    categories: [AtomicU64; 4],
    peak: AtomicU64,
    largest: AtomicU64,
}

impl Tally {
    fn add(&self, o: Outcome) {
        self.categories[o.category].fetch_add(1, Ordering::Relaxed);
        if o.recomputed {
            self.recomputed.fetch_add(1, Ordering::Relaxed);
        }
        self.peak.fetch_max(o.peak, Ordering::Relaxed);
        self.largest.fetch_max(o.largest, Ordering::Relaxed);
    }
}

/// Runs `run(run_seed, i)` for every input (see `fuzz_driver`) and prints the tally.
fn drive(
    name: &str,
    default_iterations: u64,
    categories: [&str; 4],
    run: &(dyn Fn(u64, u64) -> Result<Outcome, String> + Sync),
) {
    let run_seed = fuzz_driver::run_seed();
    if let Some(only) = fuzz_driver::only_input() {
        let r = run(run_seed, only);
        assert!(
            r.is_ok(),
            "input {only} of seed {run_seed:#x}: {:?}",
            r.err()
        );
        return;
    }
    let tally = Tally::default();
    let totals = fuzz_driver::drive(
        name,
        run_seed,
        default_iterations,
        &|i| run(run_seed, i),
        &|o| tally.add(o),
    );
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!("  checksums recomputed: {}", get(&tally.recomputed));
    println!(
        "  core allocation per input: peak live {} bytes, largest single {} bytes",
        get(&tally.peak),
        get(&tally.largest)
    );
    for (c, name) in categories.iter().enumerate() {
        println!("  {name:<40} {:>10}", get(&tally.categories[c]));
    }
    totals.assert_clean();
}

fn interesting_u32(rng: &mut Rng, old: u32, len: usize) -> u32 {
    match rng.below(9) {
        0 => 0,
        1 => 1,
        2 => old.wrapping_add(1),
        3 => old.wrapping_sub(1),
        4 => u32::MAX,
        // Either side of the records' length limit.
        5 => 1 << 28,
        6 => (1 << 28) + 1,
        7 => len as u32,
        _ => rng.next() as u32 % 4096,
    }
}

/// Unstructured edits shared by both fuzzers.
fn mutate_raw(rng: &mut Rng, data: &mut Vec<u8>, donors: &[&[u8]]) {
    const TAGS: [u8; 30] = [
        70, 77, 80, 88, 89, 90, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110,
        111, 112, 113, 114, 115, 116, 117, 118, 119, 120,
    ];
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            0 | 1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            2 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = if rng.chance(50) {
                    TAGS[rng.below(TAGS.len())]
                } else {
                    [0, 1, 2, 0x7F, 0x80, 0xFF][rng.below(6)]
                };
            }
            3 if data.len() >= 4 => {
                // A length or count field (big-endian in ETF, little-endian in the log).
                let i = rng.below(data.len() - 3);
                let old = u32::from_be_bytes(data[i..i + 4].try_into().unwrap_or([0; 4]));
                let v = interesting_u32(rng, old, data.len());
                let bytes = if rng.chance(50) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                data[i..i + 4].copy_from_slice(&bytes);
            }
            4 => {
                let n = rng.below(data.len() + 1);
                data.truncate(n);
            }
            5 => {
                let n = 1 + rng.below(32);
                let extra = if rng.chance(50) {
                    vec![0; n]
                } else {
                    rng.bytes(n)
                };
                let at = rng.below(data.len() + 1);
                data.splice(at..at, extra);
            }
            6 if !donors.is_empty() => {
                let other = donors[rng.below(donors.len())];
                let a = rng.below(other.len());
                let b = (a + 1 + rng.below(300)).min(other.len());
                let at = rng.below(data.len() + 1);
                data.splice(at..at, other[a..b].iter().copied());
            }
            7 if data.len() >= 2 => {
                let a = rng.below(data.len());
                let b = (a + 1 + rng.below(300)).min(data.len());
                let piece = data[a..b].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece);
            }
            8 => {
                let mut term = Vec::new();
                random_term(rng, 3, &mut term);
                let at = rng.below(data.len() + 1);
                data.splice(at..at, term);
            }
            _ if data.len() >= 2 => {
                let a = rng.below(data.len());
                let b = (a + 1 + rng.below(64)).min(data.len());
                data.drain(a..b);
            }
            _ => data.push(rng.next() as u8),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ETF walker.

/// Inputs stay under this, so that the reference's recursion stays shallow.
const MAX_WALKER_INPUT: usize = 8 << 10;

fn walker_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = fixture()
        .chunks
        .into_iter()
        .map(|c| c.chunk)
        .filter(|c| c.len() <= MAX_WALKER_INPUT)
        .collect();
    let mut rng = Rng::new(0xE7F);
    for n in [0, 1, 2, 5, 12] {
        seeds.push(random_chunk(&mut rng, n).0);
    }
    seeds
}

fn walker_category(chunk: &[u8]) -> usize {
    let Ok(walk) = etf_rows::pairs(chunk) else {
        return 0;
    };
    match walk.filter_map(Result::err).next() {
        None => 3,
        Some(e)
            if matches!(
                e.kind,
                EtfErrorKind::ImproperList | EtfErrorKind::TrailingBytes
            ) =>
        {
            2
        }
        Some(_) => 1,
    }
}

/// Sets a length or count field of one of the chunk's terms (found by the reference) to a
/// value near its old one or at an edge: what random byte edits rarely hit.
fn mutate_length_field(rng: &mut Rng, chunk: &mut [u8]) {
    let mut starts = Vec::new();
    ref_pairs_visiting(chunk, &mut |at, tag| starts.push((at, tag)));
    if starts.is_empty() {
        return;
    }
    let (at, tag) = starts[rng.below(starts.len())];
    let (field, width) = match tag {
        100 | 118 | 107 | 114 | 90 => (at + 1, 2),
        115 | 119 | 104 | 110 => (at + 1, 1),
        105 | 116 | 108 | 109 | 77 | 111 => (at + 1, 4),
        // NEW_FUN_EXT: Size, or NumFree.
        112 => ([at + 1, at + 26][rng.below(2)], 4),
        _ => return,
    };
    let Some(bytes) = chunk.get_mut(field..field + width) else {
        return;
    };
    let old = bytes.iter().fold(0u32, |a, &b| a << 8 | u32::from(b));
    let new = interesting_u32(rng, old, bytes.len());
    let new = if rng.chance(60) {
        [old.wrapping_add(1), old.wrapping_sub(1)][rng.below(2)]
    } else {
        new
    };
    let be = new.to_be_bytes();
    bytes.copy_from_slice(&be[4 - width..]);
}

fn run_walker(seeds: &[Vec<u8>], run_seed: u64, index: u64) -> Result<Outcome, String> {
    let mut rng = Rng::new(run_seed ^ splitmix(index ^ 0xE7F0_0000));
    let mut input = seeds[rng.below(seeds.len())].clone();
    let donors: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    if rng.chance(40) {
        for _ in 0..1 + rng.below(2) {
            mutate_length_field(&mut rng, &mut input);
        }
    } else {
        mutate_raw(&mut rng, &mut input, &donors);
    }
    input.truncate(MAX_WALKER_INPUT);
    let (core, peak, largest) = tracked(|| core_pairs(&input));
    let reference: Option<Vec<Spans>> = ref_pairs(&input, &mut BTreeSet::new());
    let mut problems = Vec::new();
    if core != reference {
        problems.push(format!("walker {core:?} vs reference {reference:?}"));
    }
    let limit = (64 << 10) + 64 * input.len() as u64;
    if peak > limit {
        problems.push(format!("allocated {peak} live bytes (limit {limit})"));
    }
    if let Some(spans) = &core {
        let mut builder = IndexBuilder::new(index);
        builder
            .add_chunk(&input)
            .map_err(|e| format!("index: {e}"))?;
        let properties: HashSet<&[u8]> = spans.iter().map(|(_, p)| &input[p.clone()]).collect();
        match builder.finish() {
            Ok(ix) if properties.len() == spans.len() && ix.len() == spans.len() => {}
            Err(IndexError::Collision) if properties.len() < spans.len() => {}
            other => problems.push(format!(
                "index of {} pairs with {} distinct properties: {:?}",
                spans.len(),
                properties.len(),
                other.map(|i| i.len())
            )),
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "{} bytes {:02x?}: {}",
            input.len(),
            input,
            problems.join("; ")
        ));
    }
    Ok(Outcome {
        category: walker_category(&input),
        recomputed: false,
        peak,
        largest,
    })
}

#[test]
fn fuzz_etf_walker() {
    let seeds = walker_seeds();
    for s in &seeds {
        assert!(core_pairs(s).is_some() && core_pairs(s) == ref_pairs(s, &mut BTreeSet::new()));
    }
    drive(
        "fuzz_etf_walker",
        WALKER_ITERATIONS,
        [
            "refused at the list header",
            "refused inside a pair",
            "refused at the list's end",
            "walked fully",
        ],
        &|run_seed, i| run_walker(&seeds, run_seed, i),
    );
}

// ---------------------------------------------------------------------------------------------
// The change log: seeds, a model of the fields, the reference decoder.

struct LogSeed {
    name: &'static str,
    bytes: Vec<u8>,
    base_chunks: Vec<Vec<u8>>,
    hash_seed: u64,
}

fn log_seed(
    name: &'static str,
    base_sequence: u64,
    rows: usize,
    steps: &[(u64, usize, usize)],
    rng: &mut Rng,
) -> LogSeed {
    let hash_seed = rng.next();
    let mut table = Table::random(rng, rows);
    let base_chunks = table.chunks(40, 1);
    let mut index = table.index(hash_seed);
    let header = LogHeader {
        base_sequence,
        base_digest: [base_sequence as u8; 16],
        hash_seed,
        created_unix_us: 1_700_000_000_000_000,
    };
    let mut bytes = header.encode();
    for (i, &(percent, deletes, inserts)) in steps.iter().enumerate() {
        table.mutate(rng, percent, deletes, inserts);
        let mut d = index.diff();
        for c in table.chunks(40, i as u64) {
            d.add_chunk(&c).expect("chunk");
        }
        let changes = d.finish().expect("diff");
        let record = encode_record(&header, i as u64 + 1, changes.upserts(), changes.deletes());
        bytes.extend(record.expect("record"));
        index.apply(&changes).expect("apply");
    }
    LogSeed {
        name,
        bytes,
        base_chunks,
        hash_seed,
    }
}

fn log_seeds() -> Vec<LogSeed> {
    let mut rng = Rng::new(0x10C5);
    vec![
        log_seed("header-only", 1, 20, &[], &mut rng),
        log_seed("one-update", 2, 40, &[(3, 0, 0)], &mut rng),
        log_seed(
            "mixed-history",
            3,
            120,
            &[(1, 0, 0), (0, 3, 2), (25, 0, 0), (0, 4, 0), (0, 0, 1)],
            &mut rng,
        ),
        log_seed("deletes-only", 4, 60, &[(0, 5, 0), (0, 2, 0)], &mut rng),
        log_seed("empty-record", 5, 10, &[(0, 0, 0)], &mut rng),
        log_seed("large-compressed", 6, 200, &[(60, 0, 0)], &mut rng),
    ]
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[derive(Clone)]
struct RecordModel {
    sequence: u64,
    base_sequence: u64,
    stored_len: u32,
    raw_len: u32,
    upsert_count: u32,
    delete_count: u32,
    codec: u8,
    flags: u8,
    reserved: u16,
    raw_hash: u64,
    crc: u32,
    stored: Vec<u8>,
    /// The payload the stored bytes hold (or should hold, once re-encoded).
    raw: Vec<u8>,
}

impl RecordModel {
    fn head_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.base_sequence.to_le_bytes());
        for v in [
            self.stored_len,
            self.raw_len,
            self.upsert_count,
            self.delete_count,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(self.codec);
        out.push(self.flags);
        out.extend_from_slice(&self.reserved.to_le_bytes());
        out.extend_from_slice(&self.raw_hash.to_le_bytes());
        out
    }

    fn fix_crc(&mut self) {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.head_bytes());
        h.update(&self.stored);
        self.crc = h.finalize();
    }

    /// Stores `raw` with the record's codec (zstd at any level), and makes lengths and
    /// the hash (keyed with the log's `hash_seed`) describe it.
    fn reencode(&mut self, rng: &mut Rng, hash_seed: u64) {
        self.stored = if self.codec == 1 {
            zstd::bulk::compress(&self.raw, 1 + rng.below(19) as i32).unwrap_or_default()
        } else {
            self.raw.clone()
        };
        self.stored_len = self.stored.len() as u32;
        self.raw_len = self.raw.len() as u32;
        self.raw_hash = xxh3_64_with_seed(&self.raw, hash_seed);
    }
}

struct LogModel {
    prefix: Vec<u8>,
    header_len: u32,
    body: Vec<u8>,
    header_crc: u32,
    records: Vec<RecordModel>,
    trailing: Vec<u8>,
}

impl LogModel {
    /// A seed log written by the core parses completely.
    fn parse(bytes: &[u8]) -> Option<Self> {
        let header_len = le32(bytes, 8)?;
        let body = bytes.get(12..12 + header_len as usize)?.to_vec();
        let header_crc = le32(bytes, 12 + header_len as usize)?;
        let mut at = 16 + header_len as usize;
        let mut records = Vec::new();
        while at < bytes.len() {
            let h = bytes.get(at..at + 48)?;
            let stored_len = le32(h, 16)?;
            let stored = bytes.get(at + 48..at + 48 + stored_len as usize)?.to_vec();
            let codec = h[32];
            let raw = if codec == 1 {
                zstd::bulk::decompress(&stored, 1 << 20).ok()?
            } else {
                stored.clone()
            };
            records.push(RecordModel {
                sequence: le64(h, 0)?,
                base_sequence: le64(h, 8)?,
                stored_len,
                raw_len: le32(h, 20)?,
                upsert_count: le32(h, 24)?,
                delete_count: le32(h, 28)?,
                codec,
                flags: h[33],
                reserved: u16::from_le_bytes([h[34], h[35]]),
                raw_hash: le64(h, 36)?,
                crc: le32(h, 44)?,
                stored,
                raw,
            });
            at += 48 + stored_len as usize;
        }
        Some(LogModel {
            prefix: bytes.get(..8)?.to_vec(),
            header_len,
            body,
            header_crc,
            records,
            trailing: Vec::new(),
        })
    }

    fn seed(&self) -> u64 {
        le64(&self.body, 24).unwrap_or(0)
    }

    fn fix_header_crc(&mut self) {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.prefix);
        h.update(&self.header_len.to_le_bytes());
        h.update(&self.body);
        self.header_crc = h.finalize();
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.prefix.clone();
        out.extend_from_slice(&self.header_len.to_le_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.header_crc.to_le_bytes());
        for r in &self.records {
            out.extend(r.head_bytes());
            out.extend_from_slice(&r.crc.to_le_bytes());
            out.extend_from_slice(&r.stored);
        }
        out.extend_from_slice(&self.trailing);
        out
    }
}

/// Edits a record's payload: its deletes, its list of pairs, or its counts.
fn mutate_payload(rng: &mut Rng, r: &mut RecordModel, seed: u64) {
    let deletes_len = (r.delete_count as usize * 8).min(r.raw.len());
    let (deletes, term) = r.raw.split_at(deletes_len);
    let (mut deletes, mut term) = (deletes.to_vec(), term.to_vec());
    match rng.below(7) {
        // Delete the row an upsert names, or a row twice.
        0 => {
            let pairs = etf_rows::all_pairs(&term).unwrap_or_default();
            let h = match pairs.get(rng.below(pairs.len().max(1))) {
                Some(p) if rng.chance(70) => property_hash(seed, p.property),
                _ => deletes
                    .get(..8)
                    .map_or(rng.next(), |d| le64(d, 0).unwrap_or(0)),
            };
            deletes.extend_from_slice(&h.to_le_bytes());
            r.delete_count = r.delete_count.wrapping_add(1);
        }
        1 if deletes.len() >= 8 => {
            deletes.truncate(deletes.len() - 8);
            r.delete_count = r.delete_count.wrapping_sub(1);
        }
        // Another list of pairs: a pair repeated, dropped, or a random chunk.
        2 | 3 => {
            let mut pairs: Vec<Vec<u8>> = etf_rows::all_pairs(&term)
                .unwrap_or_default()
                .iter()
                .map(|p| p.bytes.to_vec())
                .collect();
            match rng.below(3) {
                0 if !pairs.is_empty() => {
                    let p = pairs[rng.below(pairs.len())].clone();
                    pairs.push(p);
                }
                1 if !pairs.is_empty() => {
                    pairs.remove(rng.below(pairs.len()));
                }
                _ => {
                    let n = rng.below(4);
                    let chunk = random_chunk(rng, n).0;
                    pairs.extend(
                        etf_rows::all_pairs(&chunk)
                            .unwrap_or_default()
                            .iter()
                            .map(|p| p.bytes.to_vec()),
                    );
                }
            }
            term.clear();
            etf_rows::encode_list(pairs.iter().map(Vec::as_slice), &mut term);
            if rng.chance(90) {
                r.upsert_count = pairs.len() as u32;
            }
        }
        // Damage the list itself.
        4 | 5 => mutate_raw(rng, &mut term, &[]),
        _ => {
            if rng.chance(50) {
                r.upsert_count = interesting_u32(rng, r.upsert_count, term.len());
            } else {
                r.delete_count = interesting_u32(rng, r.delete_count, deletes.len());
            }
        }
    }
    r.raw = deletes;
    r.raw.extend_from_slice(&term);
}

/// A mutated log: the bytes, and whether checksums were recomputed.
fn make_log_input(rng: &mut Rng, seeds: &[LogSeed], s: usize) -> (Vec<u8>, bool) {
    let seed = &seeds[s];
    let donors: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    if rng.chance(25) {
        let mut bytes = seed.bytes.clone();
        mutate_raw(rng, &mut bytes, &donors);
        return (bytes, false);
    }
    let Some(mut m) = LogModel::parse(&seed.bytes) else {
        return (seed.bytes.clone(), false);
    };
    let hash_seed = m.seed();
    for _ in 0..1 + rng.below(3) {
        let n = m.records.len();
        match rng.below(10) {
            0 => {
                // Header fields: base, seed, length.
                match rng.below(3) {
                    0 => {
                        let at = rng.below(m.body.len().max(1));
                        if let Some(b) = m.body.get_mut(at) {
                            *b ^= 1 << rng.below(8);
                        }
                    }
                    1 => {
                        let len = [39u32, 40, 41, 100, 4096, 4097][rng.below(6)];
                        m.header_len = len;
                        m.body.resize(len as usize, 0);
                    }
                    _ => m.header_len = interesting_u32(rng, m.header_len, m.body.len()),
                }
            }
            1 | 2 if n > 0 => {
                let r = &mut m.records[rng.below(n)];
                match rng.below(9) {
                    0 => {
                        r.sequence = [
                            0,
                            1,
                            r.sequence.wrapping_add(1),
                            r.sequence.wrapping_sub(1),
                            u64::MAX,
                        ][rng.below(5)]
                    }
                    1 => r.base_sequence ^= 1 << rng.below(64),
                    2 => r.stored_len = interesting_u32(rng, r.stored_len, r.stored.len()),
                    3 => r.raw_len = interesting_u32(rng, r.raw_len, r.raw.len()),
                    4 => r.codec = [0, 1, 2, 255][rng.below(4)],
                    5 => r.flags = 1 << rng.below(8),
                    6 => r.reserved = 1 << rng.below(16),
                    7 => r.raw_hash = rng.next(),
                    _ => r.upsert_count = interesting_u32(rng, r.upsert_count, 8),
                }
            }
            3..=5 if n > 0 => {
                let i = rng.below(n);
                mutate_payload(rng, &mut m.records[i], hash_seed);
                if rng.chance(85) {
                    m.records[i].reencode(rng, hash_seed);
                }
            }
            6 if n > 0 => {
                // Stored bytes damaged (a zstd frame cut, flipped, extended).
                let r = &mut m.records[rng.below(n)];
                mutate_raw(rng, &mut r.stored, &[]);
                r.stored_len = r.stored.len() as u32;
            }
            7 if n > 0 => match rng.below(4) {
                0 => {
                    let r = m.records[rng.below(n)].clone();
                    m.records.insert(rng.below(n + 1), r);
                }
                1 => {
                    m.records.remove(rng.below(n));
                }
                2 => m.records.swap(rng.below(n), rng.below(n)),
                _ => {
                    let other = &seeds[rng.below(seeds.len())];
                    if let Some(o) = LogModel::parse(&other.bytes) {
                        if !o.records.is_empty() {
                            let r = o.records[rng.below(o.records.len())].clone();
                            m.records.insert(rng.below(n + 1), r);
                        }
                    }
                }
            },
            8 => {
                // A new record of random pairs.
                let count = rng.below(5);
                let mut r = RecordModel {
                    sequence: n as u64 + 1,
                    base_sequence: le64(&m.body, 0).unwrap_or(0),
                    stored_len: 0,
                    raw_len: 0,
                    upsert_count: count as u32,
                    delete_count: 0,
                    codec: rng.below(2) as u8,
                    flags: 0,
                    reserved: 0,
                    raw_hash: 0,
                    crc: 0,
                    stored: Vec::new(),
                    raw: random_chunk(rng, count).0,
                };
                r.reencode(rng, m.seed());
                m.records.push(r);
            }
            _ => {
                let n = rng.below(60);
                m.trailing = rng.bytes(n);
            }
        }
    }
    // Usually make the sequence numbers and checksums right again, each independently.
    if rng.chance(60) {
        for (i, r) in m.records.iter_mut().enumerate() {
            r.sequence = i as u64 + 1;
        }
    }
    let fix_crcs = rng.chance(90);
    if fix_crcs {
        for r in &mut m.records {
            r.fix_crc();
        }
    }
    if rng.chance(95) {
        m.fix_header_crc();
    }
    let mut bytes = m.encode();
    let recomputed = bytes != seed.bytes;
    if rng.chance(10) {
        mutate_raw(rng, &mut bytes, &donors);
    }
    (bytes, recomputed)
}

/// What the reference decoder finds.
struct RefLog {
    seed: u64,
    /// Per record: its deletes and its pairs' bytes.
    records: Vec<(Vec<u64>, Vec<Vec<u8>>)>,
    valid_len: u64,
    /// A payload the reference would not decode (over its cap): compare nothing after.
    inconclusive: bool,
    raw_bytes: u64,
}

const REF_MAX_RAW: u32 = 4 << 20;

fn ref_zstd(stored: &[u8], raw_len: u32) -> Option<Vec<u8>> {
    let frame = zstd::zstd_safe::find_frame_compressed_size(stored).ok()?;
    if frame != stored.len() {
        return None;
    }
    let mut d = zstd::bulk::Decompressor::new().ok()?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(24))
        .ok()?;
    let raw = d.decompress(stored, raw_len as usize).ok()?;
    (raw.len() == raw_len as usize).then_some(raw)
}

/// The records of a log, from the format's description (slices, no code of the core).
fn ref_log(bytes: &[u8]) -> Option<RefLog> {
    if bytes.get(..8)? != b"PTBLOG\x01\x00" {
        return None;
    }
    let header_len = le32(bytes, 8)? as usize;
    if !(40..=4096).contains(&header_len) {
        return None;
    }
    if crc32fast::hash(bytes.get(..12 + header_len)?) != le32(bytes, 12 + header_len)? {
        return None;
    }
    let base_sequence = le64(bytes, 12)?;
    let seed = le64(bytes, 36)?;
    let mut log = RefLog {
        seed,
        records: Vec::new(),
        valid_len: 16 + header_len as u64,
        inconclusive: false,
        raw_bytes: 0,
    };
    let mut at = 16 + header_len;
    loop {
        let Some(h) = bytes.get(at..at + 48) else {
            return Some(log);
        };
        let stored_len = le32(h, 16)?;
        let raw_len = le32(h, 20)?;
        let (upserts, deletes) = (le32(h, 24)?, le32(h, 28)? as usize);
        // FORMAT.md: each length at most 2^28.
        if stored_len > 1 << 28 || raw_len > 1 << 28 {
            return Some(log);
        }
        let Some(stored) = bytes.get(at + 48..at + 48 + stored_len as usize) else {
            return Some(log);
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h[..44]);
        crc.update(stored);
        let record_ok = crc.finalize() == le32(h, 44)?
            && le64(h, 0)? == log.records.len() as u64 + 1
            && le64(h, 8)? == base_sequence
            && h[33..36] == [0, 0, 0];
        if !record_ok {
            return Some(log);
        }
        let raw = match h[32] {
            0 if stored.len() == raw_len as usize => stored.to_vec(),
            1 if raw_len > REF_MAX_RAW => {
                log.inconclusive = true;
                return Some(log);
            }
            1 => match ref_zstd(stored, raw_len) {
                Some(raw) => raw,
                None => return Some(log),
            },
            _ => return Some(log),
        };
        log.raw_bytes += raw.len() as u64;
        if xxh3_64_with_seed(&raw, log.seed) != le64(h, 36)? || raw.len() < deletes * 8 {
            return Some(log);
        }
        let (del_bytes, term) = raw.split_at(deletes * 8);
        let dels: Vec<u64> = del_bytes
            .chunks(8)
            .map(|d| u64::from_le_bytes(d.try_into().unwrap_or([0; 8])))
            .collect();
        let Some(spans) = ref_pairs(term, &mut BTreeSet::new()) else {
            return Some(log);
        };
        if spans.len() != upserts as usize {
            return Some(log);
        }
        let mut names: HashSet<u64> = HashSet::new();
        let mut unique = dels.iter().all(|d| names.insert(*d));
        let mut pairs = Vec::new();
        for (pair, property) in spans {
            unique &= names.insert(property_hash(seed, &term[property]));
            pairs.push(term[pair].to_vec());
        }
        if !unique {
            return Some(log);
        }
        log.records.push((dels, pairs));
        at += 48 + stored_len as usize;
        log.valid_len = at as u64;
    }
}

/// Reads at most 7 bytes per call: the reader must not depend on reads being whole.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 7 + 1;
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn summary(scan: &LogScan) -> Vec<(Vec<u64>, Vec<Vec<u8>>)> {
    scan.records
        .iter()
        .map(|r| {
            (
                r.deletes().collect(),
                r.upserts().map(|u| u.pair.to_vec()).collect(),
            )
        })
        .collect()
}

fn run_log(seeds: &[LogSeed], run_seed: u64, index: u64) -> Result<Outcome, String> {
    let mut rng = Rng::new(run_seed ^ splitmix(index ^ 0x10C0_0000));
    let s = rng.below(seeds.len());
    let (bytes, recomputed) = make_log_input(&mut rng, seeds, s);
    let path = Path::new("/t/data.ptable.log");
    let (core, peak, largest) = tracked(|| scan_log(&bytes, path));
    let reference = ref_log(&bytes);
    let mut problems = Vec::new();
    let category = match (&core, &reference) {
        (Err(e), None) => {
            if !e.reason.is_corruption() {
                problems.push(format!("header refused with {e}"));
            }
            0
        }
        (Err(e), Some(_)) => {
            problems.push(format!("header refused ({e}), the reference accepts it"));
            0
        }
        (Ok(_), None) => {
            problems.push("header accepted, the reference refuses it".into());
            0
        }
        (Ok(scan), Some(want)) => {
            let got = summary(scan);
            let compared = if want.inconclusive {
                got.get(..want.records.len())
            } else {
                Some(&got[..])
            };
            if compared != Some(&want.records[..]) {
                problems.push(format!(
                    "{} records, the reference {} (inconclusive {})",
                    got.len(),
                    want.records.len(),
                    want.inconclusive
                ));
            } else if !want.inconclusive && scan.valid_len != want.valid_len {
                problems.push(format!(
                    "valid_len {} vs {}",
                    scan.valid_len, want.valid_len
                ));
            }
            if (scan.stop == LogStop::End) != (scan.valid_len == bytes.len() as u64) {
                problems.push(format!(
                    "stop {:?} at {} of {}",
                    scan.stop,
                    scan.valid_len,
                    bytes.len()
                ));
            }
            let limit = (16u64 << 20) + 130 * bytes.len() as u64 + 3 * want.raw_bytes;
            if peak > limit {
                problems.push(format!("allocated {peak} live bytes (limit {limit})"));
            }
            // The same through short reads.
            let mut trickled = Vec::new();
            match LogReader::open(Trickle(&bytes, 0), path) {
                Ok(mut reader) => {
                    while let Ok(Some(r)) = reader.next_record() {
                        trickled.push(r);
                    }
                    if trickled != scan.records || reader.valid_len() != scan.valid_len {
                        problems.push("short reads read differently".into());
                    }
                }
                Err(e) => problems.push(format!("short reads: {e}")),
            }
            // Checksums untouched: nothing but the first records of the seed log whose
            // header this is (splices may bring in another seed's header and records).
            if !recomputed {
                let k = scan.records.len();
                let prefix_of = |seed: &LogSeed| {
                    seed.bytes.get(..LOG_HEADER_LEN) == bytes.get(..LOG_HEADER_LEN)
                        && scan_log(&seed.bytes, path)
                            .is_ok_and(|o| o.records.get(..k) == Some(&scan.records[..]))
                };
                if !seeds.iter().any(prefix_of) {
                    problems.push(
                        "checksums not recomputed, yet not a seed log's first records".into(),
                    );
                }
            }
            // Replay over the base.
            if scan.header.hash_seed == seeds[s].hash_seed {
                let base: Vec<&[u8]> = seeds[s].base_chunks.iter().map(Vec::as_slice).collect();
                if let Err(e) = apply(scan.header.hash_seed, &base, &scan.records) {
                    problems.push(format!("replay: {e}"));
                }
            }
            match scan.stop {
                LogStop::End => 3,
                _ if scan.records.is_empty() => 1,
                _ => 2,
            }
        }
    };
    if !problems.is_empty() {
        return Err(format!(
            "seed log {}, {} bytes: {}",
            seeds[s].name,
            bytes.len(),
            problems.join("; ")
        ));
    }
    Ok(Outcome {
        category,
        recomputed,
        peak,
        largest,
    })
}

#[test]
fn fuzz_change_log() {
    let seeds = log_seeds();
    for s in &seeds {
        let scan = scan_log(&s.bytes, Path::new("seed")).expect("seed log");
        assert_eq!(scan.stop, LogStop::End, "{}", s.name);
        let reference = ref_log(&s.bytes).expect("reference reads the seed");
        assert_eq!(summary(&scan), reference.records, "{}", s.name);
        assert_eq!(reference.seed, s.hash_seed);
        assert!(s.bytes.len() >= LOG_HEADER_LEN);
    }
    let compressed = seeds
        .iter()
        .filter_map(|s| LogModel::parse(&s.bytes))
        .flat_map(|m| m.records)
        .filter(|r| r.codec == 1)
        .count();
    assert!(compressed > 0, "a seed has a compressed record");
    drive(
        "fuzz_change_log",
        LOG_ITERATIONS,
        [
            "refused at the header",
            "no record verified",
            "some records, then one that does not verify",
            "every record verified",
        ],
        &|run_seed, i| run_log(&seeds, run_seed, i),
    );
}
