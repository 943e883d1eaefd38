//! The change index's diff, the change log's records and their replay over a base, as
//! persist and restore will use them: every state a history of persists went through is
//! what replaying the base and the log's first records gives, and a damaged or cut log
//! always gives one of those states (the base plus its first k records), never other rows.

mod change_log_support;
mod rng;

use change_log_support::{pair_bytes, sorted, Table};
use ptable_core::change_index::{property_hash, ChangeIndex, Changes, IndexBuilder, IndexError};
use ptable_core::change_log::{
    encode_record, scan_log, LogHeader, LogReader, LogRecord, LogStop, RecordFault, LOG_HEADER_LEN,
    RECORD_HEADER_LEN,
};
use ptable_core::etf_rows;
use ptable_core::log_apply::{apply, PlanBuilder};
use rng::{seed_from_env, Rng};
use std::path::Path;

const SEED: u64 = 0x1234_5678_9ABC_DEF0;

fn header(seed: u64) -> LogHeader {
    LogHeader {
        base_sequence: 3,
        base_digest: [7; 16],
        hash_seed: seed,
        created_unix_us: 1_700_000_000_000_000,
    }
}

fn diff(index: &ChangeIndex, table: &Table, order: u64) -> Changes {
    let mut d = index.diff();
    for chunk in table.chunks(100, order) {
        d.add_chunk(&chunk).expect("well-formed chunk");
    }
    d.finish().expect("no collision")
}

fn upserts(changes: &Changes) -> Vec<Vec<u8>> {
    sorted(changes.upserts().map(<[u8]>::to_vec).collect())
}

fn property_of(pair: &[u8]) -> Vec<u8> {
    etf_rows::single_pair(pair).expect("pair").property.to_vec()
}

fn rows_of(index: &ChangeIndex) -> Vec<(u64, u128)> {
    index.rows().map(|r| (r.property, r.pair)).collect()
}

#[test]
fn diff_finds_exactly_what_changed() {
    let mut rng = Rng::new(11);
    let base = Table::random(&mut rng, 3000);
    let index = base.index(SEED);
    assert_eq!(index.len(), 3000);
    let keys: Vec<Vec<u8>> = base.rows.keys().cloned().collect();

    // Unchanged, in another order (ETS may traverse differently).
    let changes = diff(&index, &base, 99);
    assert!(changes.is_empty());
    assert_eq!(changes.rows(), 3000);

    // One value changed.
    let mut t = base.clone();
    t.rows.insert(keys[5].clone(), vec![97, 200]);
    let changes = diff(&index, &t, 2);
    assert_eq!(upserts(&changes), vec![pair_bytes(&keys[5], &[97, 200])]);
    assert!(changes.deletes().is_empty());

    // One row inserted.
    let mut t = base.clone();
    let new_property = vec![109, 0, 0, 0, 3, b'n', b'e', b'w'];
    t.rows.insert(new_property.clone(), vec![106]);
    let changes = diff(&index, &t, 3);
    assert_eq!(upserts(&changes), vec![pair_bytes(&new_property, &[106])]);
    assert!(changes.deletes().is_empty());

    // One row deleted: named by its property's hash.
    let mut t = base.clone();
    t.rows.remove(&keys[7]);
    let changes = diff(&index, &t, 4);
    assert_eq!(changes.upserts().len(), 0);
    assert_eq!(changes.deletes(), &[property_hash(SEED, &keys[7])]);

    // One deleted and one inserted: exactly those two, as small as a one-row change.
    let mut t = base.clone();
    t.rows.remove(&keys[9]);
    t.rows.insert(new_property.clone(), vec![97, 1]);
    let changes = diff(&index, &t, 5);
    assert_eq!(upserts(&changes), vec![pair_bytes(&new_property, &[97, 1])]);
    assert_eq!(changes.deletes(), &[property_hash(SEED, &keys[9])]);
    let record = encode_record(&header(SEED), 1, changes.upserts(), changes.deletes()).unwrap();
    assert!(
        record.len() < RECORD_HEADER_LEN + 64,
        "{} bytes",
        record.len()
    );

    // The same term under another encoding (an atom as ATOM_EXT, then as
    // SMALL_ATOM_UTF8_EXT, as OTP 26 writes it): the new bytes are upserted, the old
    // ones deleted, and replay keeps only the new row.
    let latin1 = vec![100, 0, 1, b'a'];
    let utf8 = vec![119, 1, b'a'];
    let mut before = base.clone();
    before.rows.insert(latin1.clone(), vec![97, 1]);
    let index = before.index(SEED);
    let mut after = base.clone();
    after.rows.insert(utf8.clone(), vec![97, 1]);
    let changes = diff(&index, &after, 6);
    assert_eq!(upserts(&changes), vec![pair_bytes(&utf8, &[97, 1])]);
    assert_eq!(changes.deletes(), &[property_hash(SEED, &latin1)]);
    let h = header(SEED);
    let mut log = h.encode();
    log.extend(encode_record(&h, 1, changes.upserts(), changes.deletes()).unwrap());
    let scan = scan_log(&log, Path::new("log")).unwrap();
    let base_chunks = before.chunks(100, 1);
    let chunks: Vec<&[u8]> = base_chunks.iter().map(Vec::as_slice).collect();
    let applied = apply(SEED, &chunks, &scan.records).unwrap();
    assert_eq!(sorted(applied.pairs), after.pair_set());
}

#[test]
fn apply_brings_the_index_to_the_new_state() {
    let mut rng = Rng::new(12);
    let mut table = Table::random(&mut rng, 2000);
    let mut index = table.index(SEED);
    for step in 0..30u64 {
        table.mutate(&mut rng, step % 5, (step % 3) as usize, (step % 4) as usize);
        let changes = diff(&index, &table, step);
        index.apply(&changes).unwrap();
        assert_eq!(rows_of(&index), rows_of(&table.index(SEED)), "step {step}");
        assert!(diff(&index, &table, step + 100).is_empty());
    }
}

#[test]
fn a_collision_of_two_live_rows_refuses_the_index() {
    // Real 64-bit collisions are not at hand; the builder and diff take hashes directly.
    use ptable_core::change_index::RowHash;
    let row = |property, pair| RowHash { property, pair };
    let mut b = IndexBuilder::new(SEED);
    b.push(row(1, 10)).unwrap();
    b.push(row(1, 11)).unwrap();
    assert_eq!(b.finish().unwrap_err(), IndexError::Collision);
}

/// A history of persists: the base table, each later state, and the log of the changes.
struct History {
    seed: u64,
    base_chunks: Vec<Vec<u8>>,
    /// `states[k]`: the table after `k` records (`states[0]` is the base).
    states: Vec<Table>,
    log: Vec<u8>,
    /// Offset where each record ends.
    record_ends: Vec<usize>,
    records: Vec<LogRecord>,
}

impl History {
    fn new(rng: &mut Rng, seed: u64, rows: usize, steps: &[(u64, usize, usize)]) -> Self {
        let mut table = Table::random(rng, rows);
        let base_chunks = table.chunks(100, 1);
        let mut index = {
            let mut b = IndexBuilder::new(seed);
            for c in &base_chunks {
                b.add_chunk(c).unwrap();
            }
            b.finish().unwrap()
        };
        let h = header(seed);
        let mut log = h.encode();
        let mut states = vec![table.clone()];
        let mut record_ends = Vec::new();
        for (i, &(percent, deletes, inserts)) in steps.iter().enumerate() {
            table.mutate(rng, percent, deletes, inserts);
            let changes = diff(&index, &table, i as u64 + 7);
            let sequence = record_ends.len() as u64 + 1;
            log.extend(encode_record(&h, sequence, changes.upserts(), changes.deletes()).unwrap());
            index.apply(&changes).unwrap();
            record_ends.push(log.len());
            states.push(table.clone());
        }
        let records = scan_log(&log, Path::new("log")).unwrap().records;
        assert_eq!(records.len(), steps.len());
        History {
            seed,
            base_chunks,
            states,
            log,
            record_ends,
            records,
        }
    }

    /// How many records of `log` verify, checking that they are exactly the history's
    /// first ones (`None` if the header does not verify).
    fn valid_prefix(&self, log: &[u8]) -> Option<usize> {
        let scan = scan_log(log, Path::new("log")).ok()?;
        let k = scan.records.len();
        assert!(k <= self.records.len());
        assert_eq!(scan.records[..], self.records[..k]);
        Some(k)
    }

    fn base(&self) -> Vec<&[u8]> {
        self.base_chunks.iter().map(Vec::as_slice).collect()
    }

    /// Replays `log` (all its valid records) over the base: the state and its index must
    /// be the history's state after those records; returns how many there were.
    fn replayed_state(&self, log: &[u8]) -> Option<usize> {
        let scan = scan_log(log, Path::new("log")).ok()?;
        let k = scan.records.len();
        let applied = apply(self.seed, &self.base(), &scan.records).unwrap();
        assert_eq!(
            sorted(applied.pairs),
            self.states[k].pair_set(),
            "state {k}"
        );
        let index = applied.index.expect("index");
        assert_eq!(rows_of(&index), rows_of(&self.states[k].index(self.seed)));
        Some(k)
    }
}

fn steps() -> Vec<(u64, usize, usize)> {
    // One value changed, a few rows deleted and inserted, a larger change (compressed),
    // deletes only, nothing but one insert, a bigger mix.
    vec![
        (1, 0, 0),
        (0, 3, 2),
        (20, 0, 0),
        (0, 5, 0),
        (0, 0, 1),
        (5, 4, 6),
    ]
}

#[test]
fn every_prefix_of_a_history_replays_to_its_state() {
    let seed = seed_from_env("PTABLE_TEST_SEED");
    let mut rng = Rng::new(seed);
    for round in 0..4 {
        let steps: Vec<(u64, usize, usize)> = (0..8)
            .map(|_| (rng.below(10) as u64, rng.below(6), rng.below(6)))
            .collect();
        let rows = 300 + rng.below(700);
        let h = History::new(&mut rng, seed ^ round, rows, &steps);
        let mut ends = vec![LOG_HEADER_LEN];
        ends.extend(&h.record_ends);
        for (k, &end) in ends.iter().enumerate() {
            assert_eq!(h.replayed_state(&h.log[..end]), Some(k), "round {round}");
        }
    }
}

#[test]
fn every_bit_flip_and_every_cut_of_a_log_gives_a_prefix_of_the_history() {
    let mut rng = Rng::new(13);
    let h = History::new(&mut rng, SEED, 200, &steps());
    // Replaying k valid records gives state k (records are compared below, so this covers
    // every damaged log too).
    let mut ends = vec![LOG_HEADER_LEN];
    ends.extend(&h.record_ends);
    for (k, &end) in ends.iter().enumerate() {
        assert_eq!(h.replayed_state(&h.log[..end]), Some(k));
    }
    let compressed = (0..h.record_ends.len())
        .filter(|&i| {
            let start = if i == 0 {
                LOG_HEADER_LEN
            } else {
                h.record_ends[i - 1]
            };
            h.log[start + 32] == 1
        })
        .count();
    assert!(compressed >= 1, "a record is compressed");
    let record_of = |at: usize| h.record_ends.iter().position(|&end| at < end);
    println!(
        "log of {} records, {} bytes ({compressed} compressed)",
        h.record_ends.len(),
        h.log.len()
    );
    for at in 0..h.log.len() {
        for bit in 0..8 {
            let mut bad = h.log.clone();
            bad[at] ^= 1 << bit;
            let got = h.valid_prefix(&bad);
            if at < LOG_HEADER_LEN {
                assert_eq!(got, None, "byte {at} bit {bit}: header must fail");
            } else {
                // CRC32 catches every single-bit error: the flipped record and all after it
                // are dropped, all before it kept.
                assert_eq!(got, record_of(at), "byte {at} bit {bit}");
            }
        }
    }
    for cut in 0..=h.log.len() {
        let got = h.valid_prefix(&h.log[..cut]);
        if cut < LOG_HEADER_LEN {
            assert_eq!(got, None, "cut {cut}");
            continue;
        }
        let whole = h.record_ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(got, Some(whole), "cut {cut}");
        let scan = scan_log(&h.log[..cut], Path::new("log")).unwrap();
        let valid = if whole == 0 {
            LOG_HEADER_LEN
        } else {
            h.record_ends[whole - 1]
        };
        assert_eq!(scan.valid_len, valid as u64);
        let expected = if cut == valid {
            LogStop::End
        } else {
            LogStop::Invalid {
                offset: valid as u64,
                fault: RecordFault::Truncated,
            }
        };
        assert_eq!(scan.stop, expected, "cut {cut}");
    }
}

#[test]
fn random_damage_and_stale_records_give_a_prefix_of_the_history() {
    let seed = seed_from_env("PTABLE_TEST_SEED");
    let mut rng = Rng::new(seed);
    let h = History::new(&mut rng, SEED, 200, &steps());
    for i in 0..3000 {
        let mut bad = h.log.clone();
        match rng.below(4) {
            // A few random bytes anywhere after the header.
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = LOG_HEADER_LEN + rng.below(bad.len() - LOG_HEADER_LEN);
                    bad[at] = rng.next() as u8;
                }
            }
            // A record repeated or two swapped: stale or out of order.
            2 => {
                let r = rng.below(h.record_ends.len());
                let start = if r == 0 {
                    LOG_HEADER_LEN
                } else {
                    h.record_ends[r - 1]
                };
                let record = h.log[start..h.record_ends[r]].to_vec();
                let at = h.record_ends[rng.below(h.record_ends.len())];
                bad.splice(at..at, record);
            }
            // Garbage appended, as a torn append may leave.
            _ => {
                let n = rng.below(200);
                bad.extend(rng.bytes(n));
            }
        }
        assert!(h.valid_prefix(&bad).is_some(), "input {i} (seed {seed:#x})");
    }
    // A record of this log under another base's header is not applied.
    let mut other = header(SEED);
    other.base_sequence = 4;
    let mut foreign = other.encode();
    foreign.extend_from_slice(&h.log[LOG_HEADER_LEN..]);
    let scan = scan_log(&foreign, Path::new("log")).unwrap();
    assert!(scan.records.is_empty());
    assert!(matches!(
        scan.stop,
        LogStop::Invalid {
            fault: RecordFault::WrongBase,
            ..
        }
    ));
}

/// Restore as phase 2 will do it, in three streaming passes: the log into a plan, the base
/// skipping superseded rows, the log again for the final upserts.
fn streaming_restore(seed: u64, base: &[Vec<u8>], log: &[u8]) -> Vec<Vec<u8>> {
    let mut reader = LogReader::open(log, Path::new("log")).unwrap();
    assert_eq!(reader.header().hash_seed, seed);
    let mut plan = PlanBuilder::new();
    while let Some(record) = reader.next_record().unwrap() {
        plan.add(&record).unwrap();
    }
    let plan = plan.finish();
    let records = reader.record_count();
    let mut inserted = Vec::new();
    for chunk in base {
        for pair in etf_rows::pairs(chunk).unwrap() {
            let pair = pair.unwrap();
            if !plan.supersedes(property_hash(seed, pair.property)) {
                inserted.push(pair.bytes.to_vec());
            }
        }
    }
    let mut again = LogReader::open(log, Path::new("log")).unwrap();
    for _ in 0..records {
        let record = again.next_record().unwrap().expect("verified before");
        for (i, upsert) in record.upserts().enumerate() {
            if plan.is_final(record.sequence, i) {
                inserted.push(upsert.pair.to_vec());
            }
        }
    }
    inserted
}

#[test]
fn a_streaming_restore_inserts_each_row_once() {
    let mut rng = Rng::new(14);
    // Rows updated again and again, deleted and re-inserted, so the log supersedes itself.
    let mut table = Table::random(&mut rng, 200);
    let base_chunks = table.chunks(50, 1);
    let mut index = table.index(SEED);
    let h = header(SEED);
    let mut log = h.encode();
    let hot: Vec<Vec<u8>> = table.rows.keys().take(5).cloned().collect();
    for step in 0..20u64 {
        for (i, k) in hot.iter().enumerate() {
            if (step + i as u64).is_multiple_of(3) {
                table.rows.remove(k);
            } else {
                table
                    .rows
                    .insert(k.clone(), vec![97, (step * 7 + i as u64) as u8]);
            }
        }
        let changes = diff(&index, &table, step);
        log.extend(encode_record(&h, step + 1, changes.upserts(), changes.deletes()).unwrap());
        index.apply(&changes).unwrap();
    }
    let inserted = streaming_restore(SEED, &base_chunks, &log);
    // Each property once: nothing superseded was inserted.
    let mut properties: Vec<Vec<u8>> = inserted.iter().map(|p| property_of(p)).collect();
    properties.sort();
    let before = properties.len();
    properties.dedup();
    assert_eq!(properties.len(), before, "a row inserted twice");
    assert_eq!(sorted(inserted), table.pair_set());
    let mut plan = PlanBuilder::new();
    for r in scan_log(&log, Path::new("log")).unwrap().records {
        plan.add(&r).unwrap();
    }
    let plan = plan.finish();
    assert_eq!(plan.records(), 20);
    assert!(plan.final_upserts() <= hot.len());
}

/// The plan a restore holds while it streams the base: every row the log names is found
/// through the directory (bucket edges included) and no other is, in under 10 bytes per
/// named row (a hash map took 24 per slot, at up to twice the rows).
#[test]
fn a_plan_of_many_rows_finds_each_in_under_10_bytes_a_row() {
    let mut rng = Rng::new(15);
    let h = header(SEED);
    let named: Vec<u64> = (0..60_000).map(|_| rng.next()).collect();
    let mut log = h.encode();
    // Two records naming 40k rows each, 20k of them in both.
    for (sequence, rows) in [(1, &named[..40_000]), (2, &named[20_000..])] {
        log.extend(encode_record(&h, sequence, std::iter::empty(), rows).unwrap());
    }
    let mut plan = PlanBuilder::new();
    for r in scan_log(&log, Path::new("log")).unwrap().records {
        plan.add(&r).unwrap();
    }
    let plan = plan.finish();
    assert!(named.iter().all(|&p| plan.supersedes(p)));
    let others: Vec<u64> = (0..60_000).map(|_| rng.next()).collect();
    assert_eq!(others.iter().filter(|&&p| plan.supersedes(p)).count(), 0);
    // The batched lookup answers as the one at a time, in order, on a mix of both.
    let mixed: Vec<u64> = named
        .iter()
        .zip(&others)
        .flat_map(|(&a, &b)| [a, b])
        .collect();
    let mut each = vec![true; 3];
    plan.supersedes_each(&mixed, &mut each);
    let one_by_one: Vec<bool> = mixed.iter().map(|&p| plan.supersedes(p)).collect();
    assert_eq!(each, one_by_one);
    assert_eq!(each.iter().filter(|&&s| s).count(), named.len());
    plan.supersedes_each(&[], &mut each);
    assert!(each.is_empty());
    assert_eq!(plan.final_upserts(), 0);
    assert_eq!(plan.chunks(1000), 0);
    let per_row = plan.heap_bytes() as f64 / named.len() as f64;
    assert!(per_row < 10.0, "{per_row} bytes a row");
}
