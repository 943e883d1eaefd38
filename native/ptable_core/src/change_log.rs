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

mod reader;
#[cfg(test)]
mod tests;

use crate::etf_rows;
use crate::format::{encode_header_area, HeaderV2, MAX_CHUNK_LEN, PREFIX_LEN};
use std::io;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A record's payload is stored as it is ([`CODEC_NONE`]) or as one zstd frame
/// ([`CODEC_ZSTD`]), with the ids of table files' codecs of the same meaning.
pub use crate::codec::{CODEC_NONE, CODEC_ZSTD};
pub use reader::{scan_log, LogReader, LogScan};

pub const LOG_MAGIC: &[u8; 6] = b"PTBLOG";
pub const LOG_VERSION: u8 = 1;
/// Size of the header body as this version writes it. A reader accepts bodies up to the
/// table files' limit, `format::MAX_HEADER_BODY_LEN` (later revisions may append fields).
pub const LOG_HEADER_BODY_LEN: usize = 40;
/// Bytes of the header this version writes.
pub const LOG_HEADER_LEN: usize = PREFIX_LEN + 4 + LOG_HEADER_BODY_LEN + 4;
/// Bytes of a record before its stored payload.
pub const RECORD_HEADER_LEN: usize = 48;
/// Largest stored or raw payload of one record: the largest chunk a table file may hold
/// (`format::MAX_CHUNK_LEN`), since a record's upserts are decoded as one term, like a
/// chunk. A persist whose changes come near it writes a full file instead.
pub const MAX_RECORD_BYTES: u32 = MAX_CHUNK_LEN as u32;
const _: () = assert!(MAX_CHUNK_LEN <= u32::MAX as u64);
/// Raw payloads from this size on are compressed (when that makes them smaller).
pub const COMPRESS_FROM: usize = 512;
const ZSTD_LEVEL: i32 = 3;

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
        encode_header_area(LOG_MAGIC, LOG_VERSION, LOG_HEADER_BODY_LEN, self)
    }

    /// Whether this log continues the base file whose header is `base`.
    pub fn applies_to(&self, base: &HeaderV2) -> bool {
        self.base_sequence == base.sequence && self.base_digest == base.content_digest
    }
}

/// A record's `raw_hash`: XXH3-64 of its raw payload, keyed with the log's `hash_seed`, so
/// a header whose seed changed (its CRC recomputed) fails every record instead of
/// re-keying their deletes to hashes no row has, which would bring deleted rows back.
fn record_hash(raw: &[u8], hash_seed: u64) -> u64 {
    xxh3_64_with_seed(raw, hash_seed)
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

impl RecordFault {
    /// The atom operators see (`inspect_files/2`'s `:stop_reason`).
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordFault::Truncated => "truncated",
            RecordFault::BadChecksum => "bad_checksum",
            RecordFault::BadHash => "bad_hash",
            RecordFault::WrongSequence => "wrong_sequence",
            RecordFault::WrongBase => "wrong_base",
            RecordFault::BadLength => "bad_length",
            RecordFault::BadEncoding => "bad_encoding",
            RecordFault::BadPayload => "bad_payload",
            RecordFault::DuplicateProperty => "duplicate_property",
        }
    }
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

    /// Heap bytes the record holds (its raw payload and the upserts' offsets).
    pub fn heap_bytes(&self) -> usize {
        self.raw.capacity() + self.upserts.capacity() * std::mem::size_of::<UpsertSpan>()
    }

    /// Upserts and deletes.
    pub fn operations(&self) -> u64 {
        (self.upserts.len() + self.delete_count) as u64
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
        raw_hash: record_hash(&raw, header.hash_seed),
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
