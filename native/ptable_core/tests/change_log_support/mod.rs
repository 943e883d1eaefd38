//! Helpers of the change log tests (`etf_rows.rs`, `change_log.rs`, the change log part of
//! `fuzz_decoders.rs`): the ETF fixture written by the VM, a reference walker written
//! independently of `etf_rows` (recursive, over slices), a generator of random well-formed
//! terms, and a table model.
#![allow(dead_code)]

use crate::rng::Rng;
use ptable_core::change_index::{ChangeIndex, IndexBuilder};
use ptable_core::etf_rows;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

// ---------------------------------------------------------------------------------------------
// The fixture (tests/fixtures/etf_pairs.txt, written by gen_etf_pairs.escript).

pub struct FixtureChunk {
    pub name: String,
    pub chunk: Vec<u8>,
    /// Each pair's property bytes and whole bytes, as the VM encodes them on their own.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct Fixture {
    pub chunks: Vec<FixtureChunk>,
    pub rejects: Vec<(String, Vec<u8>)>,
}

pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/etf_pairs.txt");
    let text = std::fs::read_to_string(path).expect("fixture");
    let mut fixture = Fixture {
        chunks: Vec::new(),
        rejects: Vec::new(),
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["chunk", name, bytes] => fixture.chunks.push(FixtureChunk {
                name: name.to_string(),
                chunk: hex(bytes),
                pairs: Vec::new(),
            }),
            ["pair", property, pair] => fixture
                .chunks
                .last_mut()
                .expect("pair after chunk")
                .pairs
                .push((hex(property), hex(pair))),
            ["reject", name, bytes] => fixture.rejects.push((name.to_string(), hex(bytes))),
            _ => panic!("bad fixture line {line}"),
        }
    }
    fixture
}

// ---------------------------------------------------------------------------------------------
// Reference walker: recursive, written from the external term format's specification.

/// Inputs of the reference are small (its recursion is bounded by this).
const REF_MAX_DEPTH: usize = 5000;

fn be(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(n)?)?;
    Some(bytes.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
}

fn after(b: &[u8], at: usize, n: u64) -> Option<usize> {
    let end = at.checked_add(usize::try_from(n).ok()?)?;
    (end <= b.len()).then_some(end)
}

fn ref_node(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        100 | 118 => after(b, at + 3, be(b, at + 1, 2)?),
        115 | 119 => after(b, at + 2, be(b, at + 1, 1)?),
        _ => None,
    }
}

fn ref_terms(
    b: &[u8],
    mut at: usize,
    n: u64,
    depth: usize,
    visit: &mut dyn FnMut(usize, u8),
) -> Option<usize> {
    for _ in 0..n {
        at = ref_term(b, at, depth + 1, visit)?;
    }
    Some(at)
}

/// The end of the term starting at `at`; `visit` is told where each term starts and its tag.
pub fn ref_term(
    b: &[u8],
    at: usize,
    depth: usize,
    visit: &mut dyn FnMut(usize, u8),
) -> Option<usize> {
    if depth > REF_MAX_DEPTH {
        return None;
    }
    let tag = *b.get(at)?;
    visit(at, tag);
    match tag {
        97 => after(b, at, 2),
        98 => after(b, at, 5),
        99 => after(b, at, 32),
        70 => after(b, at, 9),
        100 | 118 | 107 => after(b, at + 3, be(b, at + 1, 2)?),
        115 | 119 => after(b, at + 2, be(b, at + 1, 1)?),
        109 => after(b, at + 5, be(b, at + 1, 4)?),
        77 => after(b, at + 6, be(b, at + 1, 4)?),
        110 => after(b, at + 3, be(b, at + 1, 1)?),
        111 => after(b, at + 6, be(b, at + 1, 4)?),
        106 => Some(at + 1),
        104 => ref_terms(b, at + 2, be(b, at + 1, 1)?, depth, visit),
        105 => ref_terms(b, at + 5, be(b, at + 1, 4)?, depth, visit),
        116 => ref_terms(b, at + 5, 2 * be(b, at + 1, 4)?, depth, visit),
        108 => ref_terms(b, at + 5, be(b, at + 1, 4)? + 1, depth, visit),
        103 => after(b, ref_node(b, at + 1)?, 9),
        88 => after(b, ref_node(b, at + 1)?, 12),
        102 => after(b, ref_node(b, at + 1)?, 5),
        89 => after(b, ref_node(b, at + 1)?, 8),
        120 => after(b, ref_node(b, at + 1)?, 12),
        101 => after(b, ref_node(b, at + 1)?, 5),
        114 => after(b, ref_node(b, at + 3)?, 1 + 4 * be(b, at + 1, 2)?),
        90 => after(b, ref_node(b, at + 3)?, 4 + 4 * be(b, at + 1, 2)?),
        113 => ref_terms(b, at + 1, 3, depth, visit),
        112 => {
            let size = be(b, at + 1, 4)?;
            let end = after(b, at + 1, size)?;
            if size < 29 {
                return None;
            }
            let free = be(b, at + 26, 4)?;
            let got = ref_terms(b, at + 30, 4 + free, depth, visit)?;
            (got == end).then_some(end)
        }
        _ => None,
    }
}

/// A pair's span and its property's, in a chunk.
pub type Spans = (Range<usize>, Range<usize>);

/// The spans (pair, property) of a chunk's pairs, or `None` if it is not a well-formed
/// list of pairs.
pub fn ref_pairs(chunk: &[u8], tags: &mut BTreeSet<u8>) -> Option<Vec<Spans>> {
    ref_pairs_visiting(chunk, &mut |_, tag| {
        tags.insert(tag);
    })
}

/// [`ref_pairs`], telling `visit` where each term starts and its tag.
pub fn ref_pairs_visiting(chunk: &[u8], visit: &mut dyn FnMut(usize, u8)) -> Option<Vec<Spans>> {
    match chunk {
        [131, 106] => return Some(Vec::new()),
        [131, 108, ..] => {}
        _ => return None,
    }
    let n = be(chunk, 2, 4)?;
    let mut at = 6;
    let mut out = Vec::new();
    for _ in 0..n {
        let start = at;
        at = match chunk.get(at..)? {
            [104, 2, ..] => at + 2,
            [105, 0, 0, 0, 2, ..] => at + 5,
            _ => return None,
        };
        let property = at;
        at = ref_term(chunk, at, 1, visit)?;
        let property_end = at;
        at = ref_term(chunk, at, 1, visit)?;
        out.push((start..at, property..property_end));
    }
    (chunk.get(at) == Some(&106) && at + 1 == chunk.len()).then_some(out)
}

/// What the core's walker says about a chunk, in the reference's terms.
pub fn core_pairs(chunk: &[u8]) -> Option<Vec<Spans>> {
    let pairs = etf_rows::all_pairs(chunk).ok()?;
    Some(pairs.iter().map(|p| p.spans()).collect())
}

// ---------------------------------------------------------------------------------------------
// Random well-formed terms, every tag.

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u16).to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn node(rng: &mut Rng, out: &mut Vec<u8>) {
    let name = b"n@host";
    match rng.below(4) {
        0 => out.extend_from_slice(&[100, 0, name.len() as u8]),
        1 => out.extend_from_slice(&[118, 0, name.len() as u8]),
        2 => out.extend_from_slice(&[115, name.len() as u8]),
        _ => out.extend_from_slice(&[119, name.len() as u8]),
    }
    out.extend_from_slice(name);
}

/// Appends a random term (up to `depth` levels of nesting) to `out`.
pub fn random_term(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
    let leaf = depth == 0 || rng.chance(55);
    if leaf {
        match rng.below(24) {
            0 => out.extend_from_slice(&[97, rng.next() as u8]),
            1 => {
                out.push(98);
                out.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            2 => {
                out.push(99);
                out.extend_from_slice(&[b'1'; 31]);
            }
            3 => {
                out.push(70);
                out.extend_from_slice(&rng.next().to_be_bytes());
            }
            4 | 5 => {
                let n = rng.below(12);
                out.push([100, 118][rng.below(2)]);
                put_u16(out, n);
                out.extend(std::iter::repeat_n(b'a', n));
            }
            6 | 7 => {
                let n = rng.below(12);
                out.extend_from_slice(&[[115, 119][rng.below(2)], n as u8]);
                out.extend(std::iter::repeat_n(b'b', n));
            }
            8 => out.push(106),
            9 => {
                let n = rng.below(20);
                out.push(107);
                put_u16(out, n);
                out.extend(rng.bytes(n));
            }
            10 | 11 => {
                let n = rng.below(40);
                out.push(109);
                put_u32(out, n);
                out.extend(rng.bytes(n));
            }
            12 => {
                let n = 1 + rng.below(5);
                out.push(77);
                put_u32(out, n);
                out.push(1 + rng.below(8) as u8);
                out.extend(rng.bytes(n));
            }
            13 => {
                let n = rng.below(20);
                out.extend_from_slice(&[110, n as u8, rng.below(2) as u8]);
                out.extend(rng.bytes(n));
            }
            14 => {
                let n = 256 + rng.below(40);
                out.push(111);
                put_u32(out, n);
                out.push(rng.below(2) as u8);
                out.extend(rng.bytes(n));
            }
            15 => {
                let tag = [103, 88][rng.below(2)];
                out.push(tag);
                node(rng, out);
                out.extend(rng.bytes(if tag == 103 { 9 } else { 12 }));
            }
            16 => {
                let tag = [102, 89, 120][rng.below(3)];
                out.push(tag);
                node(rng, out);
                out.extend(rng.bytes(match tag {
                    102 => 5,
                    89 => 8,
                    _ => 12,
                }));
            }
            17 => {
                out.push(101);
                node(rng, out);
                out.extend(rng.bytes(5));
            }
            18 => {
                let ids = rng.below(4);
                let tag = [114, 90][rng.below(2)];
                out.push(tag);
                put_u16(out, ids);
                node(rng, out);
                out.extend(rng.bytes(if tag == 114 { 1 } else { 4 } + 4 * ids));
            }
            19 => {
                out.push(113);
                out.extend_from_slice(&[100, 0, 1, b'm', 119, 1, b'f', 97, 2]);
            }
            _ => out.extend_from_slice(&[97, 1]),
        }
        return;
    }
    match rng.below(8) {
        0 | 1 => {
            let n = rng.below(5);
            out.extend_from_slice(&[104, n as u8]);
            for _ in 0..n {
                random_term(rng, depth - 1, out);
            }
        }
        2 => {
            let n = rng.below(4);
            out.push(105);
            put_u32(out, n);
            for _ in 0..n {
                random_term(rng, depth - 1, out);
            }
        }
        3 => {
            let n = rng.below(4);
            out.push(116);
            put_u32(out, n);
            for _ in 0..2 * n {
                random_term(rng, depth - 1, out);
            }
        }
        4 | 5 => {
            let n = 1 + rng.below(4);
            out.push(108);
            put_u32(out, n);
            for _ in 0..n {
                random_term(rng, depth - 1, out);
            }
            if rng.chance(80) {
                out.push(106);
            } else {
                random_term(rng, depth - 1, out);
            }
        }
        6 => {
            // NEW_FUN_EXT with its Size computed.
            let start = out.len();
            let free = rng.below(3);
            out.push(112);
            put_u32(out, 0);
            out.push(1);
            out.extend(rng.bytes(16));
            out.extend(rng.bytes(4));
            put_u32(out, free);
            out.extend_from_slice(&[100, 0, 1, b'm', 97, 0, 98, 0, 0, 0, 1]);
            out.push(88);
            node(rng, out);
            out.extend(rng.bytes(12));
            for _ in 0..free {
                random_term(rng, depth - 1, out);
            }
            let size = (out.len() - start - 1) as u32;
            out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
        }
        _ => {
            out.push(113);
            out.extend_from_slice(&[100, 0, 1, b'm', 100, 0, 1, b'f', 97, 0]);
        }
    }
}

/// A random chunk of `n` pairs, with the expected spans.
pub fn random_chunk(rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<Spans>) {
    let mut out = vec![131];
    if n == 0 {
        out.push(106);
        return (out, Vec::new());
    }
    out.push(108);
    put_u32(&mut out, n);
    let mut spans = Vec::new();
    for _ in 0..n {
        let start = out.len();
        if rng.chance(95) {
            out.extend_from_slice(&[104, 2]);
        } else {
            out.extend_from_slice(&[105, 0, 0, 0, 2]);
        }
        let property = out.len();
        random_term(rng, 3, &mut out);
        let property_end = out.len();
        random_term(rng, 4, &mut out);
        spans.push((start..out.len(), property..property_end));
    }
    out.push(106);
    (out, spans)
}

// ---------------------------------------------------------------------------------------------
// A table of encoded rows.

/// `{property, value}` as the VM encodes it, from the encodings of both.
pub fn pair_bytes(property: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![104, 2];
    out.extend_from_slice(property);
    out.extend_from_slice(value);
    out
}

/// A property as the benchmark's: a list of 2 to 5 binaries.
pub fn random_property(rng: &mut Rng) -> Vec<u8> {
    let words = [
        "net", "wlan", "eth", "sensor", "address", "state", "ipv4", "config",
    ];
    let n = 2 + rng.below(4);
    let mut out = vec![108];
    put_u32(&mut out, n);
    for i in 0..n {
        let w = words[rng.below(words.len())];
        let suffix = if i == 1 {
            rng.below(200).to_string()
        } else {
            String::new()
        };
        out.push(109);
        put_u32(&mut out, w.len() + suffix.len());
        out.extend_from_slice(w.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
    }
    out.push(106);
    out
}

pub fn random_value(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    random_term(rng, 2, &mut out);
    out
}

/// Property bytes -> value bytes: what a persist sees (one row per property, as ETS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub rows: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Table {
    pub fn random(rng: &mut Rng, n: usize) -> Self {
        let mut t = Table::default();
        while t.rows.len() < n {
            t.rows.insert(random_property(rng), random_value(rng));
        }
        t
    }

    /// The table's chunks of `per_chunk` rows, in an order that depends on `order_seed`
    /// (ETS gives no order).
    pub fn chunks(&self, per_chunk: usize, order_seed: u64) -> Vec<Vec<u8>> {
        let mut pairs: Vec<Vec<u8>> = self.rows.iter().map(|(p, v)| pair_bytes(p, v)).collect();
        let mut rng = Rng::new(order_seed);
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, rng.below(i + 1));
        }
        let mut chunks: Vec<Vec<u8>> = pairs
            .chunks(per_chunk.max(1))
            .map(|c| {
                let mut out = Vec::new();
                etf_rows::encode_list(c.iter().map(Vec::as_slice), &mut out).expect("encode");
                out
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(vec![131, 106]);
        }
        chunks
    }

    /// Every pair's bytes, sorted (to compare states).
    pub fn pair_set(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.rows.iter().map(|(p, v)| pair_bytes(p, v)).collect();
        v.sort();
        v
    }

    /// Changes about `percent` of the rows' values, deletes `deletes` rows and inserts
    /// `inserts` new ones.
    pub fn mutate(&mut self, rng: &mut Rng, percent: u64, deletes: usize, inserts: usize) {
        let keys: Vec<Vec<u8>> = self.rows.keys().cloned().collect();
        for k in &keys {
            if rng.chance(percent) {
                self.rows.insert(k.clone(), random_value(rng));
            }
        }
        for _ in 0..deletes {
            if let Some(k) = keys.get(rng.below(keys.len())) {
                self.rows.remove(k);
            }
        }
        let target = self.rows.len() + inserts;
        while self.rows.len() < target {
            self.rows.insert(random_property(rng), random_value(rng));
        }
    }

    pub fn index(&self, seed: u64) -> ChangeIndex {
        let mut b = IndexBuilder::new(seed);
        for chunk in self.chunks(100, 1) {
            b.add_chunk(&chunk).expect("well-formed");
        }
        b.finish().expect("no collision")
    }
}

pub fn sorted(mut pairs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    pairs.sort();
    pairs
}
