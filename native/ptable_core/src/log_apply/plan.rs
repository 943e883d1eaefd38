//! [`LogPlan`]: the latest operation on each row a log names, in about 8.5 bytes per row
//! while the base is streamed (a sorted `u64` per row, a directory of `u32` offsets, one bit
//! per operation), instead of a hash map's 24 bytes per slot at up to twice the rows: at
//! 1M rows with a log at its threshold (230k rows named) about 2 MiB instead of 13.

use super::ApplyError;
use crate::change_log::LogRecord;

/// One operation while records are taken: the row it names and `2 * n + upsert`, where `n`
/// counts the log's operations (each record's deletes, then its upserts, in log order).
#[derive(Debug, Clone, Copy)]
struct Op {
    property: u64,
    number: u64,
}

/// Where a record's operations are numbered.
#[derive(Debug, Clone, Copy)]
struct RecordOps {
    /// Number of its first upsert.
    first_upsert: u64,
    upserts: u64,
}

/// Takes a log's records in order; [`finish`](Self::finish) gives the plan.
#[derive(Debug, Clone)]
pub struct PlanBuilder {
    ops: Vec<Op>,
    records: Vec<RecordOps>,
    next_op: u64,
}

/// The latest operation on each row a log names.
#[derive(Debug, Clone)]
pub struct LogPlan {
    /// Property hashes of the named rows, sorted, no two equal.
    named: Vec<u64>,
    /// `named[directory[b]..directory[b + 1]]` are those whose top `bits` bits are `b`.
    directory: Vec<u32>,
    bits: u32,
    /// Bit `n`: operation `n` is an upsert that is its row's latest operation.
    finals: Vec<u64>,
    /// Per record, in log order (record `s` at `s - 1`).
    records: Vec<RecordOps>,
}

impl Default for PlanBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PlanBuilder {
    pub fn new() -> Self {
        PlanBuilder {
            ops: Vec::new(),
            records: Vec::new(),
            next_op: 0,
        }
    }

    /// Takes the next record's operations (records in log order, from the first).
    pub fn add(&mut self, record: &LogRecord) -> Result<(), ApplyError> {
        let expected = self.records.len() as u64 + 1;
        if record.sequence != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: record.sequence,
            });
        }
        // A record names each row once (the reader checks it): its deletes and upserts
        // are numbered apart, never against each other.
        for property in record.deletes() {
            self.push(property, false);
        }
        let first_upsert = self.next_op;
        let upserts = record.upserts();
        let count = upserts.len() as u64;
        for upsert in upserts {
            self.push(upsert.property_hash, true);
        }
        self.records.push(RecordOps {
            first_upsert,
            upserts: count,
        });
        Ok(())
    }

    fn push(&mut self, property: u64, upsert: bool) {
        self.ops.push(Op {
            property,
            number: self.next_op << 1 | u64::from(upsert),
        });
        self.next_op += 1;
    }

    /// Records taken so far.
    pub fn records(&self) -> u64 {
        self.records.len() as u64
    }

    /// The plan: per named row, its last operation.
    pub fn finish(self) -> LogPlan {
        let mut ops = self.ops;
        // Within one row, operations sort in log order: the last of each run is the latest.
        ops.sort_unstable_by_key(|o| (o.property, o.number));
        let runs = || ops.chunk_by(|a, b| a.property == b.property);
        let mut named = Vec::with_capacity(runs().count());
        let ops_count = usize::try_from(self.next_op).unwrap_or(usize::MAX);
        let mut finals = vec![0u64; ops_count.div_ceil(64)];
        for run in runs() {
            let Some(last) = run.last() else { continue };
            named.push(last.property);
            if last.number & 1 == 1 {
                let n = last.number >> 1;
                finals[(n / 64) as usize] |= 1 << (n % 64);
            }
        }
        drop(ops);
        let (directory, bits) = directory(&named);
        LogPlan {
            named,
            directory,
            bits,
            finals,
            records: self.records,
        }
    }
}

/// Directory bits for `rows` rows: one slot per 4 to 8 rows (as the change index's).
fn directory_bits(rows: usize) -> u32 {
    (rows / 4).max(1).ilog2()
}

fn bucket(property: u64, bits: u32) -> usize {
    property.checked_shr(64 - bits).unwrap_or(0) as usize
}

/// The directory of `named` (sorted). Beyond `u32` offsets, a single slot: lookups are then
/// binary searches of the whole list, still correct.
fn directory(named: &[u64]) -> (Vec<u32>, u32) {
    let Ok(len) = u32::try_from(named.len()) else {
        return (Vec::new(), 0);
    };
    let bits = directory_bits(named.len());
    let mut directory = Vec::with_capacity((1 << bits) + 1);
    let mut at = 0usize;
    for b in 0..1usize << bits {
        while at < named.len() && bucket(named[at], bits) < b {
            at += 1;
        }
        directory.push(at as u32);
    }
    directory.push(len);
    (directory, bits)
}

impl LogPlan {
    /// Records the plan was made of.
    pub fn records(&self) -> u64 {
        self.records.len() as u64
    }

    /// Whether the log names the row with this property hash: a base row so named is
    /// skipped (the log has its latest version, or deleted it).
    pub fn supersedes(&self, property_hash: u64) -> bool {
        self.slot(property_hash)
            .binary_search(&property_hash)
            .is_ok()
    }

    /// [`supersedes`](Self::supersedes) for each of `properties`, into `out`. Each lookup
    /// misses the cache once at 1M rows (the plan outgrows L2): the slots of the whole
    /// batch are loaded first, with no branch or load depending on another, so the CPU
    /// waits for their misses together instead of one after another (90 ns per base row,
    /// a tenth of a restore's reader thread, when looked up one at a time).
    pub fn supersedes_each(&self, properties: &[u64], out: &mut Vec<bool>) {
        out.clear();
        let mut slots = Vec::with_capacity(properties.len());
        let mut touched = 0u64;
        for &p in properties {
            let slot = self.slot(p);
            touched ^= slot.first().copied().unwrap_or(0);
            slots.push(slot);
        }
        // Keeps the loads above from being optimised away.
        std::hint::black_box(touched);
        out.extend(
            slots
                .iter()
                .zip(properties)
                .map(|(slot, p)| slot.binary_search(p).is_ok()),
        );
    }

    /// The part of `named` where `property_hash` would be.
    fn slot(&self, property_hash: u64) -> &[u64] {
        match self.directory.as_slice() {
            [] => &self.named[..],
            directory => {
                let b = bucket(property_hash, self.bits);
                match (directory.get(b), directory.get(b + 1)) {
                    (Some(&start), Some(&end)) => {
                        self.named.get(start as usize..end as usize).unwrap_or(&[])
                    }
                    _ => &[],
                }
            }
        }
    }

    /// Whether upsert `index` of record `sequence` is its row's latest operation, and so
    /// is to be inserted.
    pub fn is_final(&self, sequence: u64, index: usize) -> bool {
        let record = sequence
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.records.get(i));
        match record {
            Some(r) if (index as u64) < r.upserts => self.bit(r.first_upsert + index as u64),
            _ => false,
        }
    }

    fn bit(&self, n: u64) -> bool {
        usize::try_from(n / 64)
            .ok()
            .and_then(|w| self.finals.get(w))
            .is_some_and(|w| w >> (n % 64) & 1 == 1)
    }

    /// Chunks of at most `max_rows` final upserts, one record's each, that hand out every
    /// final upsert.
    pub fn chunks(&self, max_rows: usize) -> u64 {
        let max_rows = max_rows.max(1) as u64;
        let finals = |r: &RecordOps| {
            (r.first_upsert..r.first_upsert + r.upserts)
                .filter(|&n| self.bit(n))
                .count() as u64
        };
        self.records
            .iter()
            .map(|r| finals(r).div_ceil(max_rows))
            .sum()
    }

    /// Rows the log leaves upserted.
    pub fn final_upserts(&self) -> usize {
        self.finals.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Bytes of heap the plan holds.
    pub fn heap_bytes(&self) -> usize {
        self.named.capacity() * 8
            + self.directory.capacity() * 4
            + self.finals.capacity() * 8
            + self.records.capacity() * std::mem::size_of::<RecordOps>()
    }
}
