//! Format round trips and rejection of every truncation and every bit flip.

mod common;

use common::*;
use ptable_core::format::encode_legacy;
use ptable_core::{FileHeader, Reason, TableDir, TableFile};

#[test]
fn round_trips_empty_one_and_many_chunks_at_every_level() {
    let fs = std_fs();
    for level in 0..=9u8 {
        for (count, size) in [
            (0usize, 0usize),
            (1, 1),
            (1, 100),
            (37, 5000),
            (3, 2_000_000),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = TableDir::new(tmp.path().join("t"));
            let data = chunks(count, size, 7 + level as u64);
            persist(&fs, &dir, &data, level);
            let (back, kind) = restore(fs.as_ref(), &dir).unwrap();
            assert_eq!(kind, ptable_core::SourceKind::Stable);
            assert_eq!(back, data, "level {level} count {count} size {size}");
            let file = TableFile::open(fs.as_ref(), &dir.stable()).unwrap();
            let FileHeader::Current(h) = *file.header() else {
                panic!("not v2")
            };
            assert_eq!(h.row_count, 10 * count as u64);
            assert_eq!(h.chunk_count, count as u64);
            assert_eq!(h.level, level);
        }
    }
}

#[test]
fn higher_levels_never_give_larger_files() {
    let fs = std_fs();
    let data = property_like_chunks(20, 1000);
    let mut sizes = Vec::new();
    for level in 0..=9u8 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("t"));
        persist(&fs, &dir, &data, level);
        sizes.push(std::fs::metadata(dir.stable()).unwrap().len());
    }
    println!("sizes by level: {sizes:?}");
    for w in sizes.windows(2) {
        assert!(w[1] <= w[0], "sizes by level: {sizes:?}");
    }
    assert!(sizes[9] < sizes[1], "sizes by level: {sizes:?}");
}

fn small_file() -> (tempfile::TempDir, Vec<u8>, Vec<Vec<u8>>) {
    let fs = std_fs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let data = chunks(3, 40, 11);
    persist(&fs, &dir, &data, 6);
    let bytes = std::fs::read(dir.stable()).unwrap();
    (tmp, bytes, data)
}

/// Writes `bytes` as a lone file and reads it completely.
fn read_bytes(bytes: &[u8]) -> ptable_core::Result<Vec<Vec<u8>>> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    read_file(&path)
}

#[test]
fn every_truncation_is_rejected() {
    let (_tmp, bytes, data) = small_file();
    assert_eq!(read_bytes(&bytes).unwrap(), data);
    for len in 0..bytes.len() {
        let err = read_bytes(&bytes[..len]).unwrap_err();
        assert_eq!(err.reason, Reason::BadFile, "truncated to {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(read_bytes(&longer).unwrap_err().reason, Reason::BadFile);
}

#[test]
fn every_bit_flip_is_rejected() {
    let (_tmp, bytes, _) = small_file();
    let mut cases = 0;
    for offset in 0..bytes.len() {
        for bit in 0..8 {
            let mut broken = bytes.clone();
            broken[offset] ^= 1 << bit;
            let err = read_bytes(&broken).unwrap_err();
            assert!(
                err.reason.is_corruption(),
                "offset {offset} bit {bit}: {err:?}"
            );
            cases += 1;
        }
    }
    println!("bit flips rejected: {cases}");
}

#[test]
fn chunks_left_counts_down_to_the_end_and_back_after_a_rewind() {
    let fs = std_fs();
    for count in [0usize, 1, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("t"));
        persist(&fs, &dir, &chunks(count, 100, 3), 6);
        let mut file = TableFile::open(fs.as_ref(), &dir.stable()).unwrap();
        for left in (0..count as u64).rev() {
            assert!(file.next_chunk(|n| Some(vec![0u8; n])).unwrap().is_some());
            assert_eq!(file.chunks_left(), left, "count {count}");
        }
        assert!(file.next_chunk(|n| Some(vec![0u8; n])).unwrap().is_none());
        file.rewind().unwrap();
        assert_eq!(file.chunks_left(), count as u64);
    }
    let legacy = tempfile::tempdir().unwrap();
    let path = legacy.path().join("legacy");
    std::fs::write(&path, encode_legacy(b"\x83j")).unwrap();
    let mut file = TableFile::open(fs.as_ref(), &path).unwrap();
    assert_eq!(file.chunks_left(), 1);
    assert!(file.next_chunk(|n| Some(vec![0u8; n])).unwrap().is_some());
    assert_eq!(file.chunks_left(), 0);
}

#[test]
fn legacy_files_decode_and_are_checked() {
    let payload = b"\x83l\x00\x00\x00\x00j".to_vec();
    let bytes = encode_legacy(&payload);
    assert_eq!(&bytes[..8], b"PTABLE\x01\x00");
    assert_eq!(&bytes[8..16], &(payload.len() as u64).to_be_bytes());
    assert_eq!(read_bytes(&bytes).unwrap(), vec![payload.clone()]);
    for len in 0..bytes.len() {
        assert!(read_bytes(&bytes[..len]).is_err(), "truncated to {len}");
    }
    for offset in 0..bytes.len() {
        let mut broken = bytes.clone();
        broken[offset] ^= 0x10;
        let err = read_bytes(&broken).unwrap_err();
        assert!(err.reason.is_corruption(), "offset {offset}: {err:?}");
    }
}

#[test]
fn garbage_and_empty_files_are_bad_files() {
    assert_eq!(read_bytes(b"").unwrap_err().reason, Reason::BadFile);
    assert_eq!(read_bytes(&[0u8; 200]).unwrap_err().reason, Reason::BadFile);
    let mut header_len_huge = small_file().1;
    header_len_huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        read_bytes(&header_len_huge).unwrap_err().reason,
        Reason::BadFile
    );
}

#[test]
fn large_files_are_written_with_two_streams_and_small_ones_with_one() {
    use ptable_core::codec::{CODEC_NONE, CODEC_ZSTD_STREAM, CODEC_ZSTD_STREAMS2};
    let fs = std_fs();
    for (level, count, size, codec) in [
        (6u8, 3usize, 2_000_000usize, CODEC_ZSTD_STREAMS2),
        (1, 4, 400_000, CODEC_ZSTD_STREAMS2),
        (6, 37, 5000, CODEC_ZSTD_STREAM),
        (0, 3, 2_000_000, CODEC_NONE),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("t"));
        let data = chunks(count, size, 3);
        persist(&fs, &dir, &data, level);
        let mut file = TableFile::open(fs.as_ref(), &dir.stable()).unwrap();
        let FileHeader::Current(h) = *file.header() else {
            panic!("not v2")
        };
        assert_eq!(h.codec, codec, "level {level} count {count} size {size}");
        file.verify().unwrap();
        assert_eq!(read_all(&mut file).unwrap(), data);
    }
}

#[test]
fn two_streams_can_be_refused() {
    use ptable_core::codec::CODEC_ZSTD_STREAM;
    use ptable_core::PersistSession;
    let fs = std_fs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let data = chunks(3, 2_000_000, 5);
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(6)).unwrap();
    session.expect_rows(30);
    session.allow_two_streams(false);
    for c in &data {
        session.append(c, 10).unwrap();
    }
    session.commit().unwrap();
    let mut file = TableFile::open(fs.as_ref(), &dir.stable()).unwrap();
    let FileHeader::Current(h) = *file.header() else {
        panic!("not v2")
    };
    assert_eq!(h.codec, CODEC_ZSTD_STREAM);
    assert_eq!(read_all(&mut file).unwrap(), data);
}
