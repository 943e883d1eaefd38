use super::diff::{merge_sorted, remove_positions};
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
