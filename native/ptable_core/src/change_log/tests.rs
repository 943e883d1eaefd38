use super::*;
use crate::change_index::property_hash;
use crate::error::Reason;
use std::io::Read;
use std::path::Path;

fn header() -> LogHeader {
    LogHeader {
        base_sequence: 7,
        base_digest: [0xAB; 16],
        hash_seed: 0x5EED,
        created_unix_us: 1_700_000_000_000_000,
    }
}

// {a, 1}, {b, "long..."} (a binary of 600 bytes: compressible)
fn pair(name: u8, value: &[u8]) -> Vec<u8> {
    let mut p = vec![104, 2, 100, 0, 1, name, 109];
    p.extend_from_slice(&(value.len() as u32).to_be_bytes());
    p.extend_from_slice(value);
    p
}

#[test]
fn header_layout() {
    let bytes = header().encode();
    assert_eq!(bytes.len(), LOG_HEADER_LEN);
    assert_eq!(&bytes[0..8], b"PTBLOG\x01\x00");
    assert_eq!(&bytes[8..12], &40u32.to_le_bytes());
    assert_eq!(&bytes[12..20], &7u64.to_le_bytes());
    assert_eq!(&bytes[20..36], &[0xAB; 16]);
    assert_eq!(&bytes[36..44], &0x5EEDu64.to_le_bytes());
    assert_eq!(&bytes[44..52], &1_700_000_000_000_000i64.to_le_bytes());
    assert_eq!(&bytes[52..56], &crc32fast::hash(&bytes[..52]).to_le_bytes());
}

#[test]
fn record_layout_and_round_trip() {
    let h = header();
    let a = pair(b'a', b"1");
    let rec = encode_record(&h, 1, [&a[..]].into_iter(), &[42, 43]).unwrap();
    assert_eq!(&rec[0..8], &1u64.to_le_bytes());
    assert_eq!(&rec[8..16], &7u64.to_le_bytes());
    let raw_len = 16 + 6 + a.len() + 1;
    assert_eq!(&rec[16..20], &(raw_len as u32).to_le_bytes(), "stored");
    assert_eq!(&rec[20..24], &(raw_len as u32).to_le_bytes(), "raw");
    assert_eq!(&rec[24..28], &1u32.to_le_bytes());
    assert_eq!(&rec[28..32], &2u32.to_le_bytes());
    assert_eq!(&rec[32..36], &[CODEC_NONE, 0, 0, 0]);
    let raw = &rec[48..];
    let seeded = xxhash_rust::xxh3::xxh3_64_with_seed(raw, 0x5EED);
    assert_eq!(&rec[36..44], &seeded.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&rec[..44]);
    crc.update(raw);
    assert_eq!(&rec[44..48], &crc.finalize().to_le_bytes());
    assert_eq!(
        &raw[..16],
        &[42, 0, 0, 0, 0, 0, 0, 0, 43, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(&raw[16..22], &[131, 108, 0, 0, 0, 1]);
    assert_eq!(*raw.last().unwrap(), 106);

    let big = pair(b'b', &[b'x'; 600]);
    let rec2 = encode_record(&h, 2, [&big[..], &a[..]].into_iter(), &[]).unwrap();
    assert_eq!(rec2[32], CODEC_ZSTD);
    let mut log = h.encode();
    log.extend_from_slice(&rec);
    log.extend_from_slice(&rec2);
    let scan = scan_log(&log, Path::new("l")).unwrap();
    assert_eq!(scan.stop, LogStop::End);
    assert_eq!(scan.valid_len, log.len() as u64);
    assert_eq!(scan.records.len(), 2);
    let r1 = &scan.records[0];
    assert_eq!(r1.deletes().collect::<Vec<_>>(), vec![42, 43]);
    let ups: Vec<_> = r1.upserts().collect();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].pair, &a[..]);
    assert_eq!(ups[0].property, &[100, 0, 1, b'a']);
    assert_eq!(
        ups[0].property_hash,
        property_hash(h.hash_seed, &[100, 0, 1, b'a'])
    );
    let ups: Vec<_> = scan.records[1].upserts().map(|u| u.pair).collect();
    assert_eq!(ups, vec![&big[..], &a[..]]);
    assert_eq!(scan.records[1].upserts_term()[..2], [131, 108]);
}

#[test]
fn records_that_would_not_verify_are_not_encoded() {
    let h = header();
    let a = pair(b'a', b"1");
    let a2 = pair(b'a', b"2");
    let ah = property_hash(h.hash_seed, &[100, 0, 1, b'a']);
    for (upserts, deletes) in [
        (vec![&a[..], &a2[..]], vec![]),
        (vec![&a[..]], vec![ah]),
        (vec![], vec![5, 5]),
        (vec![&b"\x68\x02\x6a"[..]], vec![]),
    ] {
        let e = encode_record(&h, 1, upserts.into_iter(), &deletes).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

#[test]
fn a_record_claiming_the_largest_payload_reads_only_what_is_there() {
    let h = header();
    let mut log = h.encode();
    let mut rec = encode_record(&h, 1, std::iter::empty(), &[1]).unwrap();
    rec[16..20].copy_from_slice(&MAX_RECORD_BYTES.to_le_bytes());
    log.extend_from_slice(&rec);
    let scan = scan_log(&log, Path::new("l")).unwrap();
    assert!(scan.records.is_empty());
    assert_eq!(
        scan.stop,
        LogStop::Invalid {
            offset: LOG_HEADER_LEN as u64,
            fault: RecordFault::Truncated
        }
    );
    rec[16..20].copy_from_slice(&(MAX_RECORD_BYTES + 1).to_le_bytes());
    let mut log = h.encode();
    log.extend_from_slice(&rec);
    let scan = scan_log(&log, Path::new("l")).unwrap();
    assert!(matches!(
        scan.stop,
        LogStop::Invalid {
            fault: RecordFault::BadLength,
            ..
        }
    ));
}

#[test]
fn header_faults() {
    let p = Path::new("l");
    let good = header().encode();
    assert_eq!(scan_log(&good, p).unwrap().stop, LogStop::End);
    for cut in 0..good.len() {
        let r = scan_log(&good[..cut], p).unwrap_err().reason;
        assert!(r.is_corruption(), "cut {cut}: {r:?}");
    }
    let mut bad = good.clone();
    bad[20] ^= 1;
    assert_eq!(scan_log(&bad, p).unwrap_err().reason, Reason::BadChecksum);
    let mut table = good.clone();
    table[..6].copy_from_slice(b"PTABLE");
    assert_eq!(scan_log(&table, p).unwrap_err().reason, Reason::BadFile);
}

#[test]
fn io_errors_are_errors_not_the_end() {
    struct Failing(Vec<u8>, usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::from_raw_os_error(5));
            }
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let h = header();
    let mut log = h.encode();
    log.extend_from_slice(&encode_record(&h, 1, std::iter::empty(), &[1]).unwrap());
    let mut r = LogReader::open(Failing(log, 0), Path::new("l")).unwrap();
    assert!(r.next_record().unwrap().is_some());
    assert_eq!(r.next_record().unwrap_err().raw_os_error(), Some(5));
    assert_eq!(r.stop(), None);
}

/// A header whose `hash_seed` changed, its CRC recomputed, would re-key every delete to a
/// hash no row has (the deleted rows would come back): its records must not verify.
#[test]
fn a_reseeded_header_fails_every_record() {
    let p = Path::new("l");
    let h = header();
    let a = pair(b'a', b"1");
    let mut log = h.encode();
    log.extend(encode_record(&h, 1, [&a[..]].into_iter(), &[42]).unwrap());
    assert_eq!(scan_log(&log, p).unwrap().records.len(), 1);
    let reseeded = LogHeader {
        hash_seed: h.hash_seed ^ 1,
        ..h
    }
    .encode();
    log[..reseeded.len()].copy_from_slice(&reseeded);
    let scan = scan_log(&log, p).unwrap();
    assert!(scan.records.is_empty());
    assert!(matches!(
        scan.stop,
        LogStop::Invalid {
            fault: RecordFault::BadHash,
            ..
        }
    ));
}
