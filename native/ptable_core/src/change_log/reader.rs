//! Reading a change log: the header, then each record in turn, verified (see the parent
//! module for the layout).

use super::{
    LogHeader, LogRecord, LogStop, RecordFault, RecordHeader, UpsertSpan, CODEC_NONE, CODEC_ZSTD,
    LOG_HEADER_BODY_LEN, LOG_MAGIC, LOG_VERSION, MAX_RECORD_BYTES, RECORD_HEADER_LEN,
};
use crate::change_index::{property_hash, PropertyHashes};
use crate::codec::WINDOW_LOG_MAX;
use crate::error::{Error, Reason, Result};
use crate::etf_rows::{self, EtfError};
use crate::format::{config, read_header_body, MAX_HEADER_BODY_LEN, PREFIX_LEN};
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

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
    operations: u64,
    stop: Option<LogStop>,
}

impl<R: Read> LogReader<R> {
    /// Reads and checks the header. A log whose header does not verify is unusable as a
    /// whole (`bad_file`, `bad_checksum`); an I/O error is that error, on `path`.
    pub fn open(mut input: R, path: &Path) -> Result<Self> {
        let bad_file = || Error::new(Reason::BadFile, path);
        let mut prefix = [0u8; PREFIX_LEN];
        input
            .read_exact(&mut prefix)
            .map_err(|e| Error::io(&e, path))?;
        if prefix[..6] != LOG_MAGIC[..] || prefix[6..] != [LOG_VERSION, 0] {
            return Err(bad_file());
        }
        let lens = LOG_HEADER_BODY_LEN..=MAX_HEADER_BODY_LEN;
        let body = read_header_body(&mut input, &prefix, lens, path)?;
        let header = bincode::decode_from_slice::<LogHeader, _>(&body, config())
            .map_err(|_| bad_file())?
            .0;
        let mut reader = LogReader::resume(input, header, 1);
        reader.valid_len = (PREFIX_LEN + 4 + body.len() + 4) as u64;
        Ok(reader)
    }

    /// A reader positioned after the header of a log with `header`, expecting record
    /// `next_sequence` next (used to check a record before it is appended).
    pub(super) fn resume(input: R, header: LogHeader, next_sequence: u64) -> Self {
        LogReader {
            input,
            header,
            next_sequence,
            valid_len: 0,
            records: 0,
            operations: 0,
            stop: None,
        }
    }

    /// The input, positioned wherever reading left it.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// This reader reading on from `input` (the bytes that follow where it is), and its
    /// own input.
    pub fn replace_input<S>(self, input: S) -> (LogReader<S>, R) {
        let reader = LogReader {
            input,
            header: self.header,
            next_sequence: self.next_sequence,
            valid_len: self.valid_len,
            records: self.records,
            operations: self.operations,
            stop: self.stop,
        };
        (reader, self.input)
    }

    /// The input, positioned where the next record starts (before any is read).
    pub fn input_mut(&mut self) -> &mut R {
        &mut self.input
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

    /// Upserts and deletes of the records verified so far.
    pub fn operations(&self) -> u64 {
        self.operations
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
                self.operations += record.operations();
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
        if super::record_hash(&raw, self.header.hash_seed) != head.raw_hash {
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
    // Sized by the bytes really there, never by the counts the header claims.
    let names_max = delete_count.saturating_add(raw.len() / 8);
    let claimed = delete_count.saturating_add(head.upsert_count as usize);
    let mut names =
        HashSet::with_capacity_and_hasher(claimed.min(names_max), PropertyHashes::default());
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
