//! The change index: what the persisted state holds, in 24 bytes per row, so that a persist
//! can find which pairs changed without the persisted bytes.
//!
//! Each row is known by two hashes of its encoding (see `etf_rows`): a 64-bit hash of the
//! property's bytes, which names the row, and a 128-bit hash of the whole pair's bytes,
//! which tells whether it changed. Equal pair bytes always mean an equal pair (decoding is a
//! function), so the only way to miss a change is a 128-bit collision between the old and
//! the new pair of one property: about 2^-128 per changed row, with the seed secret.
//!
//! Why 64 bits for the property and 128 for the pair, not the other way round: a property
//! collision is *detected*, so it can only cost a full write, never data. Two rows of one
//! table whose properties share a hash are found when the index is built (adjacent equal
//! keys after sorting) or during a diff (a key seen twice, or two new rows with one key),
//! and the caller then writes a full file instead of a log record. Between persists a
//! property hash names "the row with this hash", and the log and its replay use it that way
//! (see `change_log`): if row `a` was deleted and row `b`, with `a`'s hash, inserted, the
//! diff sees `b` as a change of that row (its pair hash differs, as the pair covers the
//! property's bytes too) and replay replaces `a` by `b`, which is exactly right. So property
//! collisions are harmless, and the bits go where a collision would be silent. The hashes
//! are xxh3 keyed with a random per-index seed, so contents chosen by an outsider cannot
//! aim at a collision; at a million rows a property collision (a full write) happens with
//! probability about 2.7e-8 per persist.
//!
//! Layout: a `Vec` of entries sorted by property hash (24 bytes each, no per-entry
//! overhead) and a directory of `u32` offsets indexed by the top bits of the property hash,
//! one slot per 4 to 8 rows (0.5 to 1 byte per row), so a lookup reads one directory slot
//! and a few adjacent entries. Measured with a counting allocator
//! (`examples/change_index_bench.rs`): 24.7 bytes per row at 100k rows and 24.5 at 1M; a
//! `HashMap` of the same entries (25 bytes per slot, a power of two of slots at most 87.5%
//! full) took 32.8 and 52.4.

mod diff;
#[cfg(test)]
mod tests;

pub use diff::{Changes, Diff};

use crate::etf_rows::{self, EtfError, Pair};
use std::fmt;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

/// The hash that names a row: its property's encoding, keyed with `seed`.
pub fn property_hash(seed: u64, property: &[u8]) -> u64 {
    xxh3_64_with_seed(property, seed)
}

/// Hash maps and sets keyed by property hashes: the keys are keyed xxh3 already, so
/// hashing them again (std's SipHash) only costs time. A restore of a 1M-row table with a
/// log at its threshold looks up every base row and inserts every logged row: with SipHash
/// those maps took a third of the log's replay time.
pub type PropertyHashes = std::hash::BuildHasherDefault<PassThrough>;

/// The [`std::hash::Hasher`] of [`PropertyHashes`]: a `u64` key is its own hash.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; anything else still hashes (slowly, but correctly).
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hash that tells whether a row changed: its whole pair's encoding, keyed with `seed`.
pub fn pair_hash(seed: u64, pair: &[u8]) -> u128 {
    xxh3_128_with_seed(pair, seed)
}

/// Both hashes of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowHash {
    pub property: u64,
    pub pair: u128,
}

impl RowHash {
    pub fn of(seed: u64, pair: &Pair<'_>) -> Self {
        RowHash {
            property: property_hash(seed, pair.property),
            pair: pair_hash(seed, pair.bytes),
        }
    }
}

/// One row: 24 bytes, 8-aligned (a `u128` field would make it 32 with padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    property: u64,
    pair: [u64; 2],
}

impl Entry {
    fn new(h: RowHash) -> Self {
        Entry {
            property: h.property,
            pair: split(h.pair),
        }
    }
}

fn split(h: u128) -> [u64; 2] {
    [h as u64, (h >> 64) as u64]
}

/// Why an index could not be built or a diff computed. None of these loses data: the
/// caller writes a full file instead (and has no index until one can be built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexError {
    /// A chunk is not a well-formed list of pairs.
    Etf(EtfError),
    /// Two rows of one table share a property hash.
    Collision,
    /// More rows than the directory's `u32` offsets address.
    TooManyRows,
    /// The changes were computed against another state of the index.
    Stale,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Etf(e) => write!(f, "malformed chunk: {e}"),
            IndexError::Collision => f.write_str("property hash collision"),
            IndexError::TooManyRows => f.write_str("too many rows"),
            IndexError::Stale => f.write_str("changes of another index state"),
        }
    }
}

impl std::error::Error for IndexError {}

impl From<EtfError> for IndexError {
    fn from(e: EtfError) -> Self {
        IndexError::Etf(e)
    }
}

/// Rows addressable by the directory's offsets.
const MAX_ROWS: usize = u32::MAX as usize;

/// The persisted state of one table, as hashes. Built by [`IndexBuilder`] (from a full
/// persist's chunks, or by restore), compared with the table by [`ChangeIndex::diff`], and
/// brought up to date by [`ChangeIndex::apply`] once the changes are durable.
#[derive(Debug, Clone)]
pub struct ChangeIndex {
    seed: u64,
    /// Sorted by property hash, no two equal.
    entries: Vec<Entry>,
    /// `entries[directory[b]..directory[b + 1]]` are the entries whose property hash has
    /// `b` as its top `bits` bits.
    directory: Vec<u32>,
    bits: u32,
    /// Counts applied changes, so that changes are applied only to the state they were
    /// computed from.
    generation: u64,
}

/// Directory bits for `rows` rows: one slot per 4 to 8 rows.
fn directory_bits(rows: usize) -> u32 {
    (rows / 4).max(1).ilog2()
}

impl ChangeIndex {
    fn from_sorted(seed: u64, entries: Vec<Entry>) -> Result<Self, IndexError> {
        if entries.len() > MAX_ROWS {
            return Err(IndexError::TooManyRows);
        }
        if entries.windows(2).any(|w| w[0].property == w[1].property) {
            return Err(IndexError::Collision);
        }
        let mut index = ChangeIndex {
            seed,
            entries,
            directory: Vec::new(),
            bits: 0,
            generation: 0,
        };
        index.rebuild_directory();
        Ok(index)
    }

    fn bucket(&self, property: u64) -> usize {
        property.checked_shr(64 - self.bits).unwrap_or(0) as usize
    }

    fn rebuild_directory(&mut self) {
        self.bits = directory_bits(self.entries.len());
        let buckets = 1usize << self.bits;
        let mut directory = std::mem::take(&mut self.directory);
        directory.clear();
        directory.reserve_exact(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            while at < self.entries.len() && self.bucket(self.entries[at].property) < b {
                at += 1;
            }
            // `at` fits: the entries are at most `MAX_ROWS`.
            directory.push(at as u32);
        }
        directory.push(self.entries.len() as u32);
        directory.shrink_to_fit();
        self.directory = directory;
    }

    /// The positions of the entries whose property hash has the same top bits as
    /// `property`'s (where its entry is, if there is one).
    fn bucket_range(&self, property: u64) -> std::ops::Range<usize> {
        let b = self.bucket(property);
        match (self.directory.get(b), self.directory.get(b + 1)) {
            (Some(&start), Some(&end)) => start as usize..end as usize,
            _ => 0..0,
        }
    }

    /// Position of the entry of `property`, searched in `range` (its bucket).
    fn find_in(&self, property: u64, range: std::ops::Range<usize>) -> Option<usize> {
        let start = range.start;
        self.entries
            .get(range)?
            .binary_search_by_key(&property, |e| e.property)
            .ok()
            .map(|i| start + i)
    }

    /// Position of the entry of `property`.
    fn find(&self, property: u64) -> Option<usize> {
        self.find_in(property, self.bucket_range(property))
    }

    /// The seed of both hashes.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of heap this index holds.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.directory.capacity() * std::mem::size_of::<u32>()
    }

    /// The pair hash of the row named `property`, if the state has one.
    pub fn get(&self, property: u64) -> Option<u128> {
        self.find(property).map(|i| {
            let [lo, hi] = self.entries[i].pair;
            u128::from(lo) | u128::from(hi) << 64
        })
    }

    /// Every row, as its hashes, in property-hash order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = RowHash> + '_ {
        self.entries.iter().map(|e| RowHash {
            property: e.property,
            pair: u128::from(e.pair[0]) | u128::from(e.pair[1]) << 64,
        })
    }
}

/// Collects the rows of a state (from a full persist's chunks, or by restore) into an index.
#[derive(Debug)]
pub struct IndexBuilder {
    seed: u64,
    entries: Vec<Entry>,
}

impl IndexBuilder {
    pub fn new(seed: u64) -> Self {
        IndexBuilder {
            seed,
            entries: Vec::new(),
        }
    }

    /// A builder with room for `rows` rows, so that the entries are allocated once. Give a
    /// number the caller knows (the table's size), not one read from a file.
    pub fn with_capacity(seed: u64, rows: usize) -> Self {
        IndexBuilder {
            seed,
            entries: Vec::with_capacity(rows.min(MAX_ROWS)),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn push(&mut self, row: RowHash) -> Result<(), IndexError> {
        if self.entries.len() >= MAX_ROWS {
            return Err(IndexError::TooManyRows);
        }
        self.entries.push(Entry::new(row));
        Ok(())
    }

    /// Adds every pair of `chunk`; returns how many.
    pub fn add_chunk(&mut self, chunk: &[u8]) -> Result<u64, IndexError> {
        let mut rows = 0;
        for pair in etf_rows::pairs(chunk)? {
            self.push(RowHash::of(self.seed, &pair?))?;
            rows += 1;
        }
        Ok(rows)
    }

    pub fn finish(mut self) -> Result<ChangeIndex, IndexError> {
        self.entries.sort_unstable_by_key(|e| e.property);
        if self.entries.capacity() > self.entries.len() + self.entries.len() / 8 {
            self.entries.shrink_to_fit();
        }
        ChangeIndex::from_sorted(self.seed, self.entries)
    }
}
