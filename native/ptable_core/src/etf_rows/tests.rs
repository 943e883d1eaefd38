use super::*;

fn chunk_of(pairs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_list(pairs.iter().copied(), &mut out).unwrap();
    out
}

fn kind(r: Walk<impl Sized>) -> EtfErrorKind {
    match r {
        Err(e) => e.kind,
        Ok(_) => panic!("expected an error"),
    }
}

// {a, 1} and {[], "xy"} (a binary).
const PAIR_A: &[u8] = &[104, 2, 100, 0, 1, b'a', 97, 1];
const PAIR_NIL: &[u8] = &[104, 2, 106, 109, 0, 0, 0, 2, b'x', b'y'];

#[test]
fn spans_of_two_pairs() {
    let chunk = chunk_of(&[PAIR_A, PAIR_NIL]);
    let got = all_pairs(&chunk).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].bytes, PAIR_A);
    assert_eq!(got[0].property, &[100, 0, 1, b'a']);
    assert_eq!(got[1].bytes, PAIR_NIL);
    assert_eq!(got[1].property, &[106]);
    assert_eq!(got[1].spans(), (14..24, 16..17));
    assert_eq!(single_pair(PAIR_A).unwrap().property, got[0].property);
}

#[test]
fn empty_list_and_large_tuple_pairs() {
    assert_eq!(all_pairs(&[131, 106]).unwrap(), vec![]);
    let pair = [105, 0, 0, 0, 2, 97, 1, 97, 2];
    let chunk = chunk_of(&[&pair]);
    let got = all_pairs(&chunk).unwrap();
    assert_eq!(got[0].bytes, &pair);
    assert_eq!(got[0].property, &[97, 1]);
}

#[test]
fn malformed_chunks_are_refused() {
    assert_eq!(kind(pairs(&[])), EtfErrorKind::NoVersion);
    assert_eq!(kind(pairs(&[130, 106])), EtfErrorKind::NoVersion);
    assert_eq!(
        kind(pairs(&[131, 80, 0, 0, 0, 1, 0])),
        EtfErrorKind::Compressed
    );
    assert_eq!(kind(pairs(&[131, 97, 1])), EtfErrorKind::NotAList);
    assert_eq!(kind(pairs(&[131, 108, 0, 0])), EtfErrorKind::Truncated);
    assert_eq!(kind(all_pairs(&[131, 106, 0])), EtfErrorKind::TrailingBytes);
    // One element that is not a pair; a 3-tuple.
    assert_eq!(
        kind(all_pairs(&[131, 108, 0, 0, 0, 1, 97, 1, 106])),
        EtfErrorKind::NotAPair
    );
    assert_eq!(
        kind(all_pairs(&[
            131, 108, 0, 0, 0, 1, 104, 3, 97, 1, 97, 1, 97, 1, 106
        ])),
        EtfErrorKind::NotAPair
    );
    let mut improper = chunk_of(&[PAIR_A]);
    *improper.last_mut().unwrap() = 97;
    improper.push(0);
    assert_eq!(kind(all_pairs(&improper)), EtfErrorKind::ImproperList);
    let mut trailing = chunk_of(&[PAIR_A]);
    trailing.push(106);
    assert_eq!(kind(all_pairs(&trailing)), EtfErrorKind::TrailingBytes);
    // Claims more pairs than there are.
    let mut more = chunk_of(&[PAIR_A]);
    more[5] = 2;
    assert_eq!(kind(all_pairs(&more)), EtfErrorKind::NotAPair);
    let full = chunk_of(&[PAIR_A, PAIR_NIL]);
    for cut in 0..full.len() {
        assert!(all_pairs(&full[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn refused_tags() {
    for tag in [117u8, 82, 121, 0, 255, 80] {
        let pair = [104, 2, 106, tag, 0, 0, 0, 0];
        let got = kind(single_pair(&pair));
        let want = if tag == 80 {
            EtfErrorKind::Compressed
        } else {
            EtfErrorKind::UnknownTag(tag)
        };
        assert_eq!(got, want, "tag {tag}");
    }
    // A pid whose node is not an atom.
    let pid = [104, 2, 106, 88, 97, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(kind(single_pair(&pid)), EtfErrorKind::NotAnAtom);
}

#[test]
fn claimed_lengths_allocate_nothing_and_fail_fast() {
    // A list claiming 2^32 - 1 elements, a binary claiming 4 GiB, a map claiming 2^33
    // terms: each fails at the end of its few bytes.
    for value in [
        &[108u8, 255, 255, 255, 255, 97, 1][..],
        &[109, 255, 255, 255, 255, 1, 2, 3],
        &[116, 255, 255, 255, 255, 97, 1],
        &[111, 255, 255, 255, 255, 0],
        &[112, 255, 255, 255, 255, 0],
    ] {
        let mut pair = vec![104, 2, 106];
        pair.extend_from_slice(value);
        assert!(single_pair(&pair).is_err(), "{value:?}");
    }
}

#[test]
fn deep_nesting_is_bounded_and_tails_are_flat() {
    // [[[[...[]...]]]] as lists of one element: each level's element is not in tail
    // position (the tail `[]` follows), so each takes a frame.
    let depth = MAX_DEPTH + 10;
    let mut deep = vec![104, 2, 106];
    for _ in 0..depth {
        deep.extend_from_slice(&[108, 0, 0, 0, 1]);
    }
    deep.extend(std::iter::repeat_n(106, depth + 1));
    assert_eq!(kind(single_pair(&deep)), EtfErrorKind::TooDeep);
    // {1, {1, {1, ...}}} a million deep: the inner tuple is always the last element.
    let depth = 1_000_000;
    let mut chain = vec![104, 2, 106];
    for _ in 0..depth {
        chain.extend_from_slice(&[104, 2, 97, 1]);
    }
    chain.push(106);
    let pair = single_pair(&chain).unwrap();
    assert_eq!(pair.bytes.len(), chain.len());
    // Just under the limit is fine.
    let depth = MAX_DEPTH - 1;
    let mut ok = vec![104, 2, 106];
    for _ in 0..depth {
        ok.extend_from_slice(&[108, 0, 0, 0, 1]);
    }
    ok.extend(std::iter::repeat_n(106, depth + 1));
    assert_eq!(single_pair(&ok).unwrap().bytes.len(), ok.len());
}

#[test]
fn fun_size_must_match_its_contents() {
    // NEW_FUN_EXT with no free variables: Size (4) + Arity (1) + Uniq (16) + Index (4)
    // + NumFree (4) + module 'm' (4) + OldIndex (2) + OldUniq (2) + a pid.
    let mut fun = vec![112, 0, 0, 0, 0, 1];
    fun.extend_from_slice(&[0; 16]);
    fun.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    fun.extend_from_slice(&[100, 0, 1, b'm', 97, 0, 97, 0]);
    fun.extend_from_slice(&[88, 100, 0, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let size = (fun.len() - 1) as u32;
    fun[1..5].copy_from_slice(&size.to_be_bytes());
    let mut pair = vec![104, 2, 106];
    pair.extend_from_slice(&fun);
    assert_eq!(single_pair(&pair).unwrap().bytes.len(), pair.len());
    for wrong in [size - 1, size + 1, 3] {
        let mut bad = pair.clone();
        bad[4..8].copy_from_slice(&wrong.to_be_bytes());
        bad.push(106);
        assert!(single_pair(&bad).is_err(), "size {wrong}");
    }
}

/// The bytes `term_to_binary` gives `[]`, `[{a, 1}]` and `[{a, 1}, {[], "xy"}]`, appended
/// after what `out` held, whether the pairs come at once or one by one.
#[test]
fn lists_are_written_as_term_to_binary_writes_them() {
    let mut two = vec![131, 108, 0, 0, 0, 2];
    two.extend_from_slice(PAIR_A);
    two.extend_from_slice(PAIR_NIL);
    two.push(106);
    let mut one = vec![131, 108, 0, 0, 0, 1];
    one.extend_from_slice(PAIR_A);
    one.push(106);
    for (pairs, expected) in [
        (&[][..], vec![131, 106]),
        (&[PAIR_A][..], one),
        (&[PAIR_A, PAIR_NIL][..], two),
    ] {
        let mut at_once = vec![7];
        encode_list(pairs.iter().copied(), &mut at_once).unwrap();
        let mut one_by_one = vec![7];
        let mut list = ListWriter::start(&mut one_by_one);
        for pair in pairs {
            list.push(&mut one_by_one, pair);
        }
        list.finish(&mut one_by_one).unwrap();
        assert_eq!(at_once[1..], expected[..]);
        assert_eq!(one_by_one, at_once);
    }
}
