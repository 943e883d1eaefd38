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

use crate::etf_rows::{self, EtfError, Pair};
use std::fmt;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

/// The hash that names a row: its property's encoding, keyed with `seed`.
pub fn property_hash(seed: u64, property: &[u8]) -> u64 {
    xxh3_64_with_seed(property, seed)
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

    /// Starts comparing a table with this state; feed it every chunk of the table.
    pub fn diff(&self) -> Diff<'_> {
        Diff {
            index: self,
            seen: vec![0u64; self.entries.len().div_ceil(64)],
            pairs: Vec::new(),
            pair_ends: Vec::new(),
            updated: Vec::new(),
            inserted: Vec::new(),
            rows: 0,
            batch: Vec::new(),
        }
    }

    /// Makes this index describe the state after `changes` (computed by a diff of this
    /// very state). Memory: the entries grow by the inserted rows only.
    pub fn apply(&mut self, changes: &Changes) -> Result<(), IndexError> {
        if changes.generation != self.generation || changes.seed != self.seed {
            return Err(IndexError::Stale);
        }
        let remaining = self.entries.len() - changes.deleted_positions.len();
        if remaining + changes.inserted.len() > MAX_ROWS {
            return Err(IndexError::TooManyRows);
        }
        for &(at, pair) in &changes.updated {
            self.entries[at as usize].pair = pair;
        }
        remove_positions(&mut self.entries, &changes.deleted_positions);
        merge_sorted(&mut self.entries, &changes.inserted);
        self.generation += 1;
        self.rebuild_directory();
        Ok(())
    }
}

/// Removes the entries at `positions` (ascending) in place.
fn remove_positions(entries: &mut Vec<Entry>, positions: &[u32]) {
    let mut next = positions.iter().map(|&p| p as usize).peekable();
    let mut write = 0;
    for read in 0..entries.len() {
        if next.peek() == Some(&read) {
            next.next();
            continue;
        }
        entries[write] = entries[read];
        write += 1;
    }
    entries.truncate(write);
}

/// Merges `new` (sorted, no key in `entries`) into `entries` (sorted), from the back, so
/// that no second copy of the entries is needed.
fn merge_sorted(entries: &mut Vec<Entry>, new: &[Entry]) {
    if new.is_empty() {
        return;
    }
    let old = entries.len();
    entries.reserve_exact(new.len());
    entries.resize(old + new.len(), Entry::default());
    let (mut i, mut j) = (old, new.len());
    for w in (0..entries.len()).rev() {
        if j > 0 && (i == 0 || new[j - 1].property > entries[i - 1].property) {
            entries[w] = new[j - 1];
            j -= 1;
        } else {
            entries[w] = entries[i - 1];
            i -= 1;
        }
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

/// A table compared with an index, chunk by chunk: the bytes of the pairs that are new or
/// changed, and which of the index's rows were seen.
#[derive(Debug)]
pub struct Diff<'a> {
    index: &'a ChangeIndex,
    /// One bit per entry of the index.
    seen: Vec<u64>,
    /// The upserted pairs' bytes, one after another; `pair_ends[i]` is where pair `i` ends.
    pairs: Vec<u8>,
    pair_ends: Vec<usize>,
    updated: Vec<(u32, [u64; 2])>,
    inserted: Vec<Entry>,
    rows: u64,
    /// One chunk's rows between walking and looking up (kept to reuse its allocation).
    batch: Vec<(RowHash, std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Diff<'_> {
    /// Compares every pair of `chunk`.
    pub fn add_chunk(&mut self, chunk: &[u8]) -> Result<(), IndexError> {
        let seed = self.index.seed;
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for pair in etf_rows::pairs(chunk)? {
            let pair = pair?;
            let end = pair.offset + pair.bytes.len();
            batch.push((RowHash::of(seed, &pair), pair.offset..end, 0..0));
        }
        // The lookups run in passes of their own, first the directory, then the buckets:
        // with nothing in between, the processor overlaps their cache misses (a diff of
        // 1M rows took 320 ms looking each row up as it was walked, 167 ms in one separate
        // pass, and less in two).
        for (row, _, bucket) in batch.iter_mut() {
            *bucket = self.index.bucket_range(row.property);
        }
        let result = batch.iter().try_for_each(|(row, span, bucket)| {
            let at = self.index.find_in(row.property, bucket.clone());
            self.compare(at, *row, &chunk[span.clone()])
        });
        self.batch = batch;
        result
    }

    /// Compares one row, given its hashes (with the index's seed) and its pair's bytes.
    pub fn add_hashed(&mut self, row: RowHash, pair: &[u8]) -> Result<(), IndexError> {
        self.compare(self.index.find(row.property), row, pair)
    }

    /// Compares one row with the index's entry at `at` (of the same property hash).
    fn compare(&mut self, at: Option<usize>, row: RowHash, pair: &[u8]) -> Result<(), IndexError> {
        self.rows += 1;
        match at {
            Some(at) => {
                let (word, bit) = (at / 64, 1u64 << (at % 64));
                if self.seen[word] & bit != 0 {
                    return Err(IndexError::Collision);
                }
                self.seen[word] |= bit;
                let pair_hash = split(row.pair);
                if self.index.entries[at].pair != pair_hash {
                    // `at` fits: the index holds at most `MAX_ROWS` entries.
                    self.updated.push((at as u32, pair_hash));
                    self.push_pair(pair);
                }
            }
            None => {
                self.inserted.push(Entry::new(row));
                self.push_pair(pair);
            }
        }
        Ok(())
    }

    fn push_pair(&mut self, pair: &[u8]) {
        self.pairs.extend_from_slice(pair);
        self.pair_ends.push(self.pairs.len());
    }

    /// Pairs found new or changed so far.
    pub fn upsert_count(&self) -> usize {
        self.pair_ends.len()
    }

    /// Bytes of the pairs found new or changed so far (to give up early on a large change).
    pub fn upsert_bytes(&self) -> usize {
        self.pairs.len()
    }

    /// The changes: rows of the index not seen are deleted.
    pub fn finish(mut self) -> Result<Changes, IndexError> {
        self.inserted.sort_unstable_by_key(|e| e.property);
        if self
            .inserted
            .windows(2)
            .any(|w| w[0].property == w[1].property)
        {
            return Err(IndexError::Collision);
        }
        let mut deletes = Vec::new();
        let mut deleted_positions = Vec::new();
        for (at, entry) in self.index.entries.iter().enumerate() {
            if self.seen[at / 64] & (1 << (at % 64)) == 0 {
                deletes.push(entry.property);
                deleted_positions.push(at as u32);
            }
        }
        Ok(Changes {
            seed: self.index.seed,
            generation: self.index.generation,
            pairs: self.pairs,
            pair_ends: self.pair_ends,
            deletes,
            deleted_positions,
            updated: self.updated,
            inserted: self.inserted,
            rows: self.rows,
        })
    }
}

/// What a diff found: the upserted pairs (in table order) and the deleted rows' property
/// hashes (ascending), plus what [`ChangeIndex::apply`] needs.
#[derive(Debug, Clone)]
pub struct Changes {
    seed: u64,
    generation: u64,
    pairs: Vec<u8>,
    pair_ends: Vec<usize>,
    deletes: Vec<u64>,
    deleted_positions: Vec<u32>,
    updated: Vec<(u32, [u64; 2])>,
    inserted: Vec<Entry>,
    rows: u64,
}

impl Changes {
    /// Nothing changed: the table is the persisted state.
    pub fn is_empty(&self) -> bool {
        self.pair_ends.is_empty() && self.deletes.is_empty()
    }

    /// The new or changed pairs' bytes, in table order.
    pub fn upserts(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.pair_ends.len()).map(|i| {
            let start = i.checked_sub(1).map_or(0, |p| self.pair_ends[p]);
            &self.pairs[start..self.pair_ends[i]]
        })
    }

    /// Bytes of all upserted pairs.
    pub fn upsert_bytes(&self) -> usize {
        self.pairs.len()
    }

    /// Property hashes of the deleted rows, ascending.
    pub fn deletes(&self) -> &[u64] {
        &self.deletes
    }

    /// Rows of the table the diff was fed.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(property: u64, pair: u128) -> RowHash {
        RowHash { property, pair }
    }

    fn index_of(rows: &[RowHash]) -> Result<ChangeIndex, IndexError> {
        let mut b = IndexBuilder::new(7);
        for r in rows {
            b.push(*r)?;
        }
        b.finish()
    }

    #[test]
    fn entries_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn lookups_at_every_size_and_extreme_hashes() {
        for n in [0usize, 1, 2, 3, 7, 8, 9, 31, 64, 65, 1000, 4097] {
            let mut rows: Vec<RowHash> = (0..n as u64)
                .map(|i| row(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), u128::from(i) << 70))
                .collect();
            if n > 2 {
                rows[0].property = 0;
                rows[1].property = u64::MAX;
            }
            let index = index_of(&rows).unwrap();
            assert_eq!(index.len(), n);
            for r in &rows {
                assert_eq!(index.get(r.property), Some(r.pair), "n {n}");
            }
            for absent in [1u64, 2, u64::MAX - 1, 0x8000_0000_0000_0000] {
                if !rows.iter().any(|r| r.property == absent) {
                    assert_eq!(index.get(absent), None);
                }
            }
            assert!(index.heap_bytes() <= n * 24 + (n / 4 + 2) * 8 + 8, "n {n}");
        }
    }

    #[test]
    fn duplicate_property_hashes_are_a_collision() {
        assert_eq!(
            index_of(&[row(5, 1), row(9, 2), row(5, 3)]).unwrap_err(),
            IndexError::Collision
        );
        let index = index_of(&[row(5, 1), row(9, 2)]).unwrap();
        // One row of the index met twice.
        let mut d = index.diff();
        d.add_hashed(row(5, 1), b"x").unwrap();
        assert_eq!(d.add_hashed(row(5, 4), b"y"), Err(IndexError::Collision));
        // Two new rows with one hash.
        let mut d = index.diff();
        d.add_hashed(row(6, 1), b"x").unwrap();
        d.add_hashed(row(6, 2), b"y").unwrap();
        assert_eq!(d.finish().unwrap_err(), IndexError::Collision);
    }

    #[test]
    fn diff_and_apply() {
        let index = index_of(&[row(10, 1), row(20, 2), row(30, 3)]).unwrap();
        let mut d = index.diff();
        d.add_hashed(row(10, 1), b"same").unwrap();
        d.add_hashed(row(25, 9), b"new").unwrap();
        d.add_hashed(row(30, 4), b"changed").unwrap();
        let changes = d.finish().unwrap();
        assert_eq!(
            changes.upserts().collect::<Vec<_>>(),
            vec![&b"new"[..], b"changed"]
        );
        assert_eq!(changes.deletes(), &[20]);
        assert_eq!(changes.rows(), 3);
        let mut index = index;
        index.apply(&changes).unwrap();
        let expected = index_of(&[row(10, 1), row(25, 9), row(30, 4)]).unwrap();
        assert_eq!(
            index.rows().collect::<Vec<_>>(),
            expected.rows().collect::<Vec<_>>()
        );
        // The same changes again are refused: they describe the state before.
        assert_eq!(index.apply(&changes), Err(IndexError::Stale));
        // An unchanged table.
        let mut d = index.diff();
        for r in [row(30, 4), row(10, 1), row(25, 9)] {
            d.add_hashed(r, b"x").unwrap();
        }
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn merge_keeps_order() {
        let mut entries: Vec<Entry> = [2u64, 4, 6]
            .iter()
            .map(|&p| Entry::new(row(p, 0)))
            .collect();
        let new: Vec<Entry> = [0u64, 3, 7, 8]
            .iter()
            .map(|&p| Entry::new(row(p, 1)))
            .collect();
        merge_sorted(&mut entries, &new);
        let keys: Vec<u64> = entries.iter().map(|e| e.property).collect();
        assert_eq!(keys, vec![0, 2, 3, 4, 6, 7, 8]);
        remove_positions(&mut entries, &[0, 3, 6]);
        let keys: Vec<u64> = entries.iter().map(|e| e.property).collect();
        assert_eq!(keys, vec![2, 3, 6, 7]);
    }
}
