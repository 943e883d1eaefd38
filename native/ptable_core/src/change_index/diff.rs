//! Comparing a table with the index ([`Diff`]), and bringing the index up to date with
//! what the comparison found ([`Changes`]) once it is durable.

use super::{split, ChangeIndex, Entry, IndexError, RowHash, MAX_ROWS};
use crate::etf_rows;
use std::borrow::Borrow;

impl ChangeIndex {
    /// Starts comparing a table with this state; feed it every chunk of the table.
    pub fn diff(&self) -> Diff<&ChangeIndex> {
        Diff::of(self)
    }

    /// [`diff`](Self::diff), owning the index: a persist holds it while the table streams
    /// in, and takes it back with [`Diff::finish_owned`].
    pub fn into_diff(self) -> Diff<ChangeIndex> {
        Diff::of(self)
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
        self.generation += 1;
        // Updated rows keep their places: only deletes and inserts move entries and so the
        // directory. (Each pass walks every entry: about 2 ms of a 1M-row persist.)
        if changes.deleted_positions.is_empty() && changes.inserted.is_empty() {
            return Ok(());
        }
        remove_positions(&mut self.entries, &changes.deleted_positions);
        merge_sorted(&mut self.entries, &changes.inserted);
        self.rebuild_directory();
        Ok(())
    }
}

/// Removes the entries at `positions` (ascending) in place.
pub(super) fn remove_positions(entries: &mut Vec<Entry>, positions: &[u32]) {
    if positions.is_empty() {
        return;
    }
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
pub(super) fn merge_sorted(entries: &mut Vec<Entry>, new: &[Entry]) {
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

/// A table compared with an index, chunk by chunk: the bytes of the pairs that are new or
/// changed, and which of the index's rows were seen.
#[derive(Debug)]
pub struct Diff<I: Borrow<ChangeIndex>> {
    index: I,
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

impl<I: Borrow<ChangeIndex>> Diff<I> {
    fn of(index: I) -> Self {
        let words = index.borrow().entries.len().div_ceil(64);
        Diff {
            index,
            seen: vec![0u64; words],
            pairs: Vec::new(),
            pair_ends: Vec::new(),
            updated: Vec::new(),
            inserted: Vec::new(),
            rows: 0,
            batch: Vec::new(),
        }
    }

    /// The index this diff compares with.
    pub fn index(&self) -> &ChangeIndex {
        self.index.borrow()
    }

    /// Compares every pair of `chunk`.
    pub fn add_chunk(&mut self, chunk: &[u8]) -> Result<(), IndexError> {
        let seed = self.index().seed;
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
            *bucket = self.index().bucket_range(row.property);
        }
        let result = batch.iter().try_for_each(|(row, span, bucket)| {
            let at = self.index().find_in(row.property, bucket.clone());
            self.compare(at, *row, &chunk[span.clone()])
        });
        self.batch = batch;
        result
    }

    /// Compares one row, given its hashes (with the index's seed) and its pair's bytes.
    pub fn add_hashed(&mut self, row: RowHash, pair: &[u8]) -> Result<(), IndexError> {
        self.compare(self.index().find(row.property), row, pair)
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
                if self.index().entries[at].pair != pair_hash {
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
    pub fn finish(self) -> Result<Changes, IndexError> {
        self.finish_owned().1
    }

    /// [`finish`](Self::finish), handing the index back as well.
    pub fn finish_owned(mut self) -> (I, Result<Changes, IndexError>) {
        let changes = self.changes();
        (self.index, changes)
    }

    fn changes(&mut self) -> Result<Changes, IndexError> {
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
        let index = self.index.borrow();
        for (at, entry) in index.entries.iter().enumerate() {
            if self.seen[at / 64] & (1 << (at % 64)) == 0 {
                deletes.push(entry.property);
                deleted_positions.push(at as u32);
            }
        }
        Ok(Changes {
            seed: index.seed,
            generation: index.generation,
            pairs: std::mem::take(&mut self.pairs),
            pair_ends: std::mem::take(&mut self.pair_ends),
            deletes,
            deleted_positions,
            updated: std::mem::take(&mut self.updated),
            inserted: std::mem::take(&mut self.inserted),
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
