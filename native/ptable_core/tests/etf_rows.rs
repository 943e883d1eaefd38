//! The ETF pair walker on chunks written by the VM (tests/fixtures/etf_pairs.txt, every tag
//! of the external term format), on random well-formed terms, and on damaged chunks, where
//! it must agree with an independent reference walker.

mod change_log_support;
mod rng;

use change_log_support::{core_pairs, fixture, random_chunk, ref_pairs};
use ptable_core::etf_rows::{self, EtfErrorKind};
use rng::{seed_from_env, Rng};
use std::collections::BTreeSet;

/// Every tag the walker skips (all that `binary_to_term` decodes in a term_to_binary
/// output, except `COMPRESSED` at the top and the refused `FUN_EXT`).
const EVERY_TAG: [u8; 28] = [
    70, 77, 88, 89, 90, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 118, 119, 120,
];

#[test]
fn chunks_written_by_the_vm_give_each_pairs_bytes() {
    let fixture = fixture();
    assert!(fixture.chunks.len() >= 15);
    let mut tags = BTreeSet::new();
    for case in &fixture.chunks {
        let pairs =
            etf_rows::all_pairs(&case.chunk).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(pairs.len(), case.pairs.len(), "{}", case.name);
        for (got, (property, pair)) in pairs.iter().zip(&case.pairs) {
            assert_eq!(got.bytes, &pair[..], "{}", case.name);
            assert_eq!(got.property, &property[..], "{}", case.name);
            let (whole, prop) = got.spans();
            assert_eq!(&case.chunk[whole], got.bytes);
            assert_eq!(&case.chunk[prop], got.property);
            // Each pair's bytes alone are one pair.
            assert_eq!(
                etf_rows::single_pair(got.bytes).unwrap(),
                etf_rows::Pair {
                    offset: 0,
                    property_offset: got.property_offset - got.offset,
                    ..*got
                }
            );
        }
        let reference = ref_pairs(&case.chunk, &mut tags).expect("reference accepts it");
        assert_eq!(core_pairs(&case.chunk), Some(reference), "{}", case.name);
        // Re-encoding the pairs gives the VM's chunk back.
        let mut again = Vec::new();
        etf_rows::encode_list(pairs.iter().map(|p| p.bytes), &mut again).unwrap();
        assert_eq!(again, case.chunk, "{}", case.name);
        for cut in 0..case.chunk.len() {
            assert!(
                etf_rows::all_pairs(&case.chunk[..cut]).is_err(),
                "{} cut at {cut}",
                case.name
            );
        }
    }
    let missing: Vec<u8> = EVERY_TAG
        .iter()
        .copied()
        .filter(|t| !tags.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "tags not covered by the fixture: {missing:?}"
    );
}

#[test]
fn chunks_the_walker_must_refuse() {
    let fixture = fixture();
    for (name, chunk) in &fixture.rejects {
        let err = etf_rows::all_pairs(chunk).expect_err(name);
        let expected = match name.as_str() {
            "compressed" => EtfErrorKind::Compressed,
            "old_fun_ext" => EtfErrorKind::UnknownTag(117),
            "three_tuple" => EtfErrorKind::NotAPair,
            "improper" => EtfErrorKind::ImproperList,
            "not_a_list" => EtfErrorKind::NotAList,
            other => panic!("unknown reject case {other}"),
        };
        assert_eq!(err.kind, expected, "{name}");
        assert_eq!(ref_pairs(chunk, &mut BTreeSet::new()), None, "{name}");
    }
    // A compressed chunk walks once inflated.
    let (_, compressed) = fixture
        .rejects
        .iter()
        .find(|(n, _)| n == "compressed")
        .expect("case");
    let plain = ptable_core::etf::uncompressed_term(compressed).expect("inflates");
    assert_eq!(etf_rows::all_pairs(&plain).unwrap().len(), 1);
}

#[test]
fn random_well_formed_chunks_walk_exactly() {
    let seed = seed_from_env("PTABLE_TEST_SEED");
    let mut rng = Rng::new(seed);
    for i in 0..5_000 {
        let n = rng.below(12);
        let (chunk, spans) = random_chunk(&mut rng, n);
        assert_eq!(core_pairs(&chunk), Some(spans.clone()), "chunk {i}");
        assert_eq!(
            ref_pairs(&chunk, &mut BTreeSet::new()),
            Some(spans),
            "chunk {i}"
        );
    }
}

#[test]
fn damaged_chunks_agree_with_the_reference() {
    // Every bit of every small fixture chunk, and one random bit of every byte of the
    // larger ones: the walker and the reference accept the same chunks with the same spans
    // (a flip inside a binary's bytes leaves a well-formed chunk).
    let fixture = fixture();
    let mut rng = Rng::new(7);
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for case in &fixture.chunks {
        for at in 0..case.chunk.len() {
            let bits: Vec<u8> = if case.chunk.len() <= 2048 {
                (0..8).collect()
            } else {
                vec![rng.below(8) as u8]
            };
            for bit in bits {
                let mut bad = case.chunk.clone();
                bad[at] ^= 1 << bit;
                let got = core_pairs(&bad);
                assert_eq!(
                    got,
                    ref_pairs(&bad, &mut BTreeSet::new()),
                    "{} byte {at} bit {bit}",
                    case.name
                );
                if got.is_some() {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    println!("damaged fixture chunks: {accepted} still well formed, {refused} refused");
    assert!(accepted > 0 && refused > 10_000);
}
