//! The change log (`data.ptable.log`): records of upserted pairs and deleted properties,
//! appended after a base file, each verified on its own. Documented byte by byte in
//! FORMAT.md ("Change log"); all integers little-endian.
//!
//! ```text
//! header:  magic "PTBLOG", version 1, reserved 0, header_len u32 (40), body, CRC32
//!          body: base_sequence u64, base_digest [u8; 16], hash_seed u64, created_unix_us i64
//! record:  sequence u64, base_sequence u64, stored_len u32, raw_len u32, upsert_count u32,
//!          delete_count u32, codec u8, flags u8, reserved u16, raw_hash u64, crc u32,
//!          then stored_len bytes
//! raw payload: delete_count property hashes (u64 each), then the ETF list of the upserted
//!          pairs, exactly as `term_to_binary` writes a list of pairs
//! ```
//!
//! A reader stops at the first record that does not verify (a torn append leaves at most
//! one, at the end) and reports where the verified prefix ends; records are never applied
//! past it. Reading allocates what was really read, never what a header claims beyond it.

use crate::change_index::property_hash;
use crate::error::{Error, Reason, Result};
use crate::etf_rows::{self, EtfError};
use crate::format::HeaderV2;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

pub const LOG_MAGIC: &[u8; 6] = b"PTBLOG";
pub const LOG_VERSION: u8 = 1;
/// Magic, version, reserved.
const PREFIX_LEN: usize = 8;
/// Size of the header body as this version writes it.
pub const LOG_HEADER_BODY_LEN: usize = 40;
/// Largest header body a reader accepts (later revisions may append fields).
pub const MAX_LOG_HEADER_BODY_LEN: usize = 4096;
/// Bytes of the header this version writes.
pub const LOG_HEADER_LEN: usize = PREFIX_LEN + 4 + LOG_HEADER_BODY_LEN + 4;
/// Bytes of a record before its stored payload.
pub const RECORD_HEADER_LEN: usize = 48;
/// Largest stored or raw payload of one record. A persist whose changes come near it
/// writes a full file instead.
pub const MAX_RECORD_BYTES: u32 = 1 << 30;
/// Raw payloads from this size on are compressed (when that makes them smaller).
pub const COMPRESS_FROM: usize = 512;
const ZSTD_LEVEL: i32 = 3;
/// Decoders cap the zstd window, as for table files.
const WINDOW_LOG_MAX: u32 = 24;

pub const CODEC_NONE: u8 = 0;
/// One zstd frame holding the raw payload.
pub const CODEC_ZSTD: u8 = 1;

/// What a log applies to, and how its property hashes are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LogHeader {
    /// `sequence` of the base file's header.
    pub base_sequence: u64,
    /// `content_digest` of the base file's header.
    pub base_digest: [u8; 16],
    /// Seed of the property hashes that name deleted rows (see `change_index`).
    pub hash_seed: u64,
    /// When the log was started, microseconds since the Unix epoch (display only).
    pub created_unix_us: i64,
}

impl LogHeader {
    /// The complete header: prefix, length, body, CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LOG_HEADER_LEN);
        out.extend_from_slice(LOG_MAGIC);
        out.push(LOG_VERSION);
        out.push(0);
        out.extend_from_slice(&(LOG_HEADER_BODY_LEN as u32).to_le_bytes());
        // Encoding fixed-width integers into a Vec cannot fail.
        if let Ok(body) = bincode::encode_to_vec(self, crate::format::config()) {
            out.extend_from_slice(&body);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Whether this log continues the base file whose header is `base`.
    pub fn applies_to(&self, base: &HeaderV2) -> bool {
        self.base_sequence == base.sequence && self.base_digest == base.content_digest
    }
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct RecordHeader {
    sequence: u64,
    base_sequence: u64,
    stored_len: u32,
    raw_len: u32,
    upsert_count: u32,
    delete_count: u32,
    codec: u8,
    flags: u8,
    reserved: u16,
    raw_hash: u64,
    crc: u32,
}

impl RecordHeader {
    fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, crate::format::config()).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        bincode::decode_from_slice::<RecordHeader, _>(bytes, crate::format::config())
            .ok()
            .map(|(h, _)| h)
    }

    /// CRC32 of the header's bytes before `crc`, then the stored payload.
    fn expected_crc(&self, stored: &[u8]) -> u32 {
        let bytes = self.encode();
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[..RECORD_HEADER_LEN - 4]);
        h.update(stored);
        h.finalize()
    }
}

/// Why a reader stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// The file ends inside the record.
    Truncated,
    /// The CRC does not match: a torn or damaged record.
    BadChecksum,
    /// The raw payload's hash does not match.
    BadHash,
    /// Not the next sequence number (a stale record, or garbage that happens to pass).
    WrongSequence,
    /// The record names another base than the log's header.
    WrongBase,
    /// A length beyond the format's cap, or a payload of another size than it claims.
    BadLength,
    /// Unknown codec, nonzero reserved fields, or a zstd frame that does not decode.
    BadEncoding,
    /// The payload's counts or ETF do not match the header.
    BadPayload,
    /// Two operations of one record name the same property hash.
    DuplicateProperty,
}

/// Where reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStop {
    /// The file ends right after the last valid record.
    End,
    /// The record at `offset` does not verify; nothing from there on is used.
    Invalid { offset: u64, fault: RecordFault },
}

/// One upserted pair of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upsert<'a> {
    pub pair: &'a [u8],
    pub property: &'a [u8],
    /// [`property_hash`] of `property`, with the log's seed.
    pub property_hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UpsertSpan {
    start: u32,
    property_start: u32,
    property_end: u32,
    end: u32,
    property_hash: u64,
}

/// A verified record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub sequence: u64,
    /// Bytes of the record in the file (header and stored payload).
    pub len: u64,
    raw: Vec<u8>,
    delete_count: usize,
    upserts: Vec<UpsertSpan>,
}

impl LogRecord {
    /// Property hashes of the deleted rows, in record order.
    pub fn deletes(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.raw[..self.delete_count * 8]
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// The upserted pairs, in record order.
    pub fn upserts(&self) -> impl ExactSizeIterator<Item = Upsert<'_>> + '_ {
        self.upserts.iter().map(|s| Upsert {
            pair: &self.raw[s.start as usize..s.end as usize],
            property: &self.raw[s.property_start as usize..s.property_end as usize],
            property_hash: s.property_hash,
        })
    }

    /// The upserted pairs as one external term (a list of pairs, as `term_to_binary`
    /// writes it), ready for `binary_to_term`.
    pub fn upserts_term(&self) -> &[u8] {
        &self.raw[self.delete_count * 8..]
    }
}

fn io_error_for_input(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

/// The raw payload of a record: the deletes, then the ETF list of the upserts.
fn raw_payload<'p>(
    upserts: impl ExactSizeIterator<Item = &'p [u8]>,
    deletes: &[u64],
) -> io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(deletes.len() * 8);
    for d in deletes {
        raw.extend_from_slice(&d.to_le_bytes());
    }
    etf_rows::encode_list(upserts, &mut raw)
        .ok_or_else(|| io_error_for_input("too many upserts"))?;
    Ok(raw)
}

/// One record: `sequence` (the log's records count from 1), applying to the log whose
/// header is `header`, of `upserts` (each a `{property, value}` tuple's bytes, as
/// `etf_rows::Pair::bytes`) and `deletes` (property hashes with the header's seed). The
/// record is decoded again before it is returned, so a record that would not verify is
/// never written (`InvalidInput`: malformed pairs, a property named twice, too large).
pub fn encode_record<'p>(
    header: &LogHeader,
    sequence: u64,
    upserts: impl ExactSizeIterator<Item = &'p [u8]>,
    deletes: &[u64],
) -> io::Result<Vec<u8>> {
    let upsert_count =
        u32::try_from(upserts.len()).map_err(|_| io_error_for_input("too many upserts"))?;
    let delete_count =
        u32::try_from(deletes.len()).map_err(|_| io_error_for_input("too many deletes"))?;
    let raw = raw_payload(upserts, deletes)?;
    let raw_len = u32::try_from(raw.len())
        .ok()
        .filter(|&n| n <= MAX_RECORD_BYTES)
        .ok_or_else(|| io_error_for_input("record too large"))?;
    let compressed = if raw.len() >= COMPRESS_FROM {
        Some(zstd::bulk::compress(&raw, ZSTD_LEVEL)?).filter(|c| c.len() < raw.len())
    } else {
        None
    };
    let (codec, stored) = match &compressed {
        Some(c) => (CODEC_ZSTD, &c[..]),
        None => (CODEC_NONE, &raw[..]),
    };
    let mut head = RecordHeader {
        sequence,
        base_sequence: header.base_sequence,
        // Not larger than `raw_len` (compressed only when smaller).
        stored_len: stored.len() as u32,
        raw_len,
        upsert_count,
        delete_count,
        codec,
        flags: 0,
        reserved: 0,
        raw_hash: xxh3_64(&raw),
        crc: 0,
    };
    head.crc = head.expected_crc(stored);
    let mut out = head.encode();
    out.extend_from_slice(stored);
    let mut check = LogReader::resume(&out[..], *header, sequence);
    match check.next_record() {
        Ok(Some(_)) => Ok(out),
        _ => Err(io_error_for_input("the record would not verify")),
    }
}

/// Reads up to `n` bytes; fewer only at the end of the input. Memory grows with the bytes
/// really read, whatever `n` is.
fn read_up_to(input: &mut impl Read, n: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    input.take(n).read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a log's records in order, verifying each; stops for good at the first that does
/// not verify. I/O errors are returned as errors, never taken for the end of the log: a
/// failed read must not cut records off.
#[derive(Debug)]
pub struct LogReader<R> {
    input: R,
    header: LogHeader,
    next_sequence: u64,
    valid_len: u64,
    records: u64,
    stop: Option<LogStop>,
}

impl<R: Read> LogReader<R> {
    /// Reads and checks the header. A log whose header does not verify is unusable as a
    /// whole (`bad_file`, `bad_checksum`); an I/O error is that error, on `path`.
    pub fn open(mut input: R, path: &Path) -> Result<Self> {
        let bad = |reason| Error::new(reason, path);
        let io = |e: io::Error| Error::io(&e, path);
        let prefix = read_up_to(&mut input, (PREFIX_LEN + 4) as u64).map_err(io)?;
        let Some((head, len)) = prefix.split_first_chunk::<PREFIX_LEN>() else {
            return Err(bad(Reason::BadFile));
        };
        if head[..6] != LOG_MAGIC[..] || head[6] != LOG_VERSION || head[7] != 0 {
            return Err(bad(Reason::BadFile));
        }
        let body_len =
            u32::from_le_bytes(len.try_into().map_err(|_| bad(Reason::BadFile))?) as usize;
        if !(LOG_HEADER_BODY_LEN..=MAX_LOG_HEADER_BODY_LEN).contains(&body_len) {
            return Err(bad(Reason::BadFile));
        }
        let rest = read_up_to(&mut input, body_len as u64 + 4).map_err(io)?;
        let Some((body, crc)) = rest.split_at_checked(body_len) else {
            return Err(bad(Reason::BadFile));
        };
        let crc = <[u8; 4]>::try_from(crc).map_err(|_| bad(Reason::BadFile))?;
        let mut h = crc32fast::Hasher::new();
        h.update(&prefix);
        h.update(body);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(bad(Reason::BadChecksum));
        }
        let header = bincode::decode_from_slice::<LogHeader, _>(body, crate::format::config())
            .map_err(|_| bad(Reason::BadFile))?
            .0;
        let mut reader = LogReader::resume(input, header, 1);
        reader.valid_len = (PREFIX_LEN + 4 + body_len + 4) as u64;
        Ok(reader)
    }

    /// A reader positioned after the header of a log with `header`, expecting record
    /// `next_sequence` next (used to check a record before it is appended).
    fn resume(input: R, header: LogHeader, next_sequence: u64) -> Self {
        LogReader {
            input,
            header,
            next_sequence,
            valid_len: 0,
            records: 0,
            stop: None,
        }
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Bytes of the header and of the records verified so far: where an append must go
    /// (after cutting off anything beyond).
    pub fn valid_len(&self) -> u64 {
        self.valid_len
    }

    /// Records verified so far.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// Why reading stopped, once it did.
    pub fn stop(&self) -> Option<LogStop> {
        self.stop
    }

    /// The next record, or `None` once reading stopped ([`stop`](Self::stop) says why).
    pub fn next_record(&mut self) -> io::Result<Option<LogRecord>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        match self.read_record()? {
            Ok(record) => {
                self.valid_len += record.len;
                self.records += 1;
                self.next_sequence += 1;
                Ok(Some(record))
            }
            Err(stop) => {
                self.stop = Some(stop);
                Ok(None)
            }
        }
    }

    fn read_record(&mut self) -> io::Result<std::result::Result<LogRecord, LogStop>> {
        let invalid = |fault| {
            Err(LogStop::Invalid {
                offset: self.valid_len,
                fault,
            })
        };
        let head_bytes = read_up_to(&mut self.input, RECORD_HEADER_LEN as u64)?;
        if head_bytes.is_empty() {
            return Ok(Err(LogStop::End));
        }
        let Some(head) =
            RecordHeader::decode(&head_bytes).filter(|_| head_bytes.len() == RECORD_HEADER_LEN)
        else {
            return Ok(invalid(RecordFault::Truncated));
        };
        if head.stored_len > MAX_RECORD_BYTES || head.raw_len > MAX_RECORD_BYTES {
            return Ok(invalid(RecordFault::BadLength));
        }
        let stored = read_up_to(&mut self.input, u64::from(head.stored_len))?;
        if stored.len() != head.stored_len as usize {
            return Ok(invalid(RecordFault::Truncated));
        }
        if head.expected_crc(&stored) != head.crc {
            return Ok(invalid(RecordFault::BadChecksum));
        }
        if head.sequence != self.next_sequence {
            return Ok(invalid(RecordFault::WrongSequence));
        }
        if head.base_sequence != self.header.base_sequence {
            return Ok(invalid(RecordFault::WrongBase));
        }
        let raw = match decode_payload(&head, stored) {
            Ok(raw) => raw,
            Err(fault) => return Ok(invalid(fault)),
        };
        if xxh3_64(&raw) != head.raw_hash {
            return Ok(invalid(RecordFault::BadHash));
        }
        let len = RECORD_HEADER_LEN as u64 + u64::from(head.stored_len);
        Ok(parse_payload(&head, raw, self.header.hash_seed, len).or_else(invalid))
    }
}

/// The raw payload of a record whose CRC verified.
fn decode_payload(
    head: &RecordHeader,
    stored: Vec<u8>,
) -> std::result::Result<Vec<u8>, RecordFault> {
    if head.flags != 0 || head.reserved != 0 {
        return Err(RecordFault::BadEncoding);
    }
    match head.codec {
        CODEC_NONE if stored.len() == head.raw_len as usize => Ok(stored),
        CODEC_NONE => Err(RecordFault::BadLength),
        CODEC_ZSTD => inflate(&stored, head.raw_len),
        _ => Err(RecordFault::BadEncoding),
    }
}

/// `stored` must be exactly one zstd frame of exactly `raw_len` bytes. Memory grows with
/// the output zstd really produces (at most one byte past `raw_len`).
fn inflate(stored: &[u8], raw_len: u32) -> std::result::Result<Vec<u8>, RecordFault> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|_| RecordFault::BadEncoding)?
        .single_frame();
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(|_| RecordFault::BadEncoding)?;
    let raw =
        read_up_to(&mut decoder, u64::from(raw_len) + 1).map_err(|_| RecordFault::BadEncoding)?;
    if !decoder.finish().is_empty() {
        return Err(RecordFault::BadEncoding);
    }
    if raw.len() != raw_len as usize {
        return Err(RecordFault::BadLength);
    }
    Ok(raw)
}

/// Checks the payload's structure against the header: deletes, then a list of exactly
/// `upsert_count` pairs, no property hash twice.
fn parse_payload(
    head: &RecordHeader,
    raw: Vec<u8>,
    seed: u64,
    len: u64,
) -> std::result::Result<LogRecord, RecordFault> {
    let delete_count = head.delete_count as usize;
    // Checked: 8 x a claimed count overflows a 32-bit usize.
    let Some((deletes, term)) = delete_count
        .checked_mul(8)
        .and_then(|base| raw.split_at_checked(base))
    else {
        return Err(RecordFault::BadPayload);
    };
    let mut names = HashSet::new();
    for d in deletes.chunks_exact(8) {
        if !names.insert(u64::from_le_bytes(d.try_into().unwrap_or([0; 8]))) {
            return Err(RecordFault::DuplicateProperty);
        }
    }
    let base = deletes.len();
    let walk = etf_rows::pairs(term).map_err(|_: EtfError| RecordFault::BadPayload)?;
    if walk.claimed_len() != u64::from(head.upsert_count) {
        return Err(RecordFault::BadPayload);
    }
    let mut upserts = Vec::new();
    for pair in walk {
        let pair = pair.map_err(|_| RecordFault::BadPayload)?;
        let h = property_hash(seed, pair.property);
        if !names.insert(h) {
            return Err(RecordFault::DuplicateProperty);
        }
        let (whole, property) = pair.spans();
        // Offsets fit: the payload is at most `MAX_RECORD_BYTES`.
        upserts.push(UpsertSpan {
            start: (base + whole.start) as u32,
            property_start: (base + property.start) as u32,
            property_end: (base + property.end) as u32,
            end: (base + whole.end) as u32,
            property_hash: h,
        });
    }
    Ok(LogRecord {
        sequence: head.sequence,
        len,
        raw,
        delete_count,
        upserts,
    })
}

/// Everything a log holds up to its first invalid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScan {
    pub header: LogHeader,
    pub records: Vec<LogRecord>,
    /// Bytes of the header and the valid records.
    pub valid_len: u64,
    pub stop: LogStop,
}

/// Reads a whole log from memory (tests, inspection of small logs).
pub fn scan_log(bytes: &[u8], path: &Path) -> Result<LogScan> {
    let mut reader = LogReader::open(bytes, path)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().map_err(|e| Error::io(&e, path))? {
        records.push(record);
    }
    Ok(LogScan {
        header: reader.header,
        records,
        valid_len: reader.valid_len,
        stop: reader.stop.unwrap_or(LogStop::End),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(&rec[36..44], &xxh3_64(raw).to_le_bytes());
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
    fn a_record_claiming_a_gigabyte_reads_only_what_is_there() {
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
}
