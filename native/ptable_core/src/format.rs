//! The on-disk layout, byte by byte (also documented in FORMAT.md).
//!
//! Version 2 (written by this library), all integers little-endian:
//!
//! ```text
//! offset size
//!  0      6   magic "PTABLE"
//!  6      1   format version = 2
//!  7      1   reserved = 0
//!  8      4   header_len (u32), 64 for this version
//! 12     64   header body (HeaderV2, fields below, fixed width, no padding)
//! 76      4   CRC32 of bytes 0..76
//! 80      …   chunk frames, chunk_count of them, payload_len bytes in all
//! ```
//!
//! Header body: codec u8, level u8, flags u16, chunk_rows u32, created_unix_us i64,
//! sequence u64, row_count u64, chunk_count u64, payload_len u64, content_digest [u8; 16].
//!
//! Chunk frame: raw_len u64, stored_len u64, row_count u64, raw_hash u64, crc u32, then
//! stored_len bytes. `crc` is the CRC32 of the frame's index as u64 followed by the 32
//! bytes before it and the stored bytes, so a frame moved to another position fails too.
//!
//! Legacy version 1 (property_table 0.2/0.3): magic, version = 1, reserved = 0, payload length
//! u64 **big-endian**, the payload, then the 16-byte MD5 of the payload.

use crate::error::{Error, Reason, Result};
use bincode::config::{Configuration, Fixint, LittleEndian};
use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::path::Path;

pub const MAGIC: &[u8; 6] = b"PTABLE";
pub const VERSION_LEGACY: u8 = 1;
pub const VERSION_CURRENT: u8 = 2;

/// Magic, version, reserved: the part every version shares.
pub const PREFIX_LEN: usize = 8;
/// Size of the version 2 header body as this version writes it.
pub const HEADER_BODY_LEN: usize = 64;
/// Largest header body a reader accepts (later minor revisions may append fields).
pub const MAX_HEADER_BODY_LEN: usize = 4096;
/// Bytes before the first frame of a file written by this version.
pub const HEADER_AREA_LEN: usize = PREFIX_LEN + 4 + HEADER_BODY_LEN + 4;
/// Bytes of a frame before its stored data.
pub const FRAME_HEADER_LEN: usize = 36;
/// Legacy: prefix + length, and the trailing MD5.
pub const LEGACY_HEADER_LEN: usize = PREFIX_LEN + 8;
pub const LEGACY_TRAILER_LEN: usize = 16;
/// Largest chunk (`raw_len`, the uncompressed ETF) the writer accepts, and so the largest a
/// reader believes: lengths read from disk are checked against these limits before anything
/// is read or allocated for them, so that a file cannot claim more than the writer could
/// have written (a sparse file claiming terabytes costs nothing).
pub const MAX_CHUNK_LEN: u64 = 256 << 20;
/// Largest `stored_len` of a frame: zstd's worst case for a chunk of [`MAX_CHUNK_LEN`] bytes
/// (`ZSTD_compressBound`: 1/256 more, plus a few bytes of frame and block headers) with room
/// to spare. The writer checks every frame against it.
pub const MAX_STORED_LEN: u64 = MAX_CHUNK_LEN + MAX_CHUNK_LEN / 64;
/// Largest payload of a legacy file: restore decodes it as one chunk.
pub const MAX_LEGACY_PAYLOAD_LEN: u64 = MAX_CHUNK_LEN;

/// The headers (these and the change log's) are encoded with bincode's own
/// `Encode`/`Decode` derives, not through serde: fixed-width records in one fixed layout are
/// all it encodes, so serde's data model would add a second derive and dependency without a
/// second format to share it.
pub(crate) fn config() -> Configuration<LittleEndian, Fixint> {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// A header area as table files and change logs lay it out: the 8-byte prefix (`magic`,
/// `version`, a zero byte), the body's length (u32), the body (`body_len` bytes of fixed-width
/// fields) and a CRC32 of everything before the CRC.
pub(crate) fn encode_header_area(
    magic: &[u8; 6],
    version: u8,
    body_len: usize,
    body: &impl bincode::Encode,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + 4 + body_len + 4);
    out.extend_from_slice(magic);
    out.push(version);
    out.push(0);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    // Encoding a struct of fixed-width integers into a Vec cannot fail.
    if let Ok(body) = bincode::encode_to_vec(body, config()) {
        out.extend_from_slice(&body);
    }
    debug_assert_eq!(out.len(), PREFIX_LEN + 4 + body_len);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the rest of a header area whose `prefix` was read and checked: the body's length,
/// which must lie in `body_lens` (`bad_file` otherwise, before anything else is read), the
/// body and its CRC (`bad_checksum` when it does not match). A file that ends inside is
/// `bad_file`.
pub(crate) fn read_header_body(
    input: &mut impl Read,
    prefix: &[u8; PREFIX_LEN],
    body_lens: RangeInclusive<usize>,
    path: &Path,
) -> Result<Vec<u8>> {
    let io_err = |e: io::Error| Error::io(&e, path);
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(io_err)?;
    let body_len = u32::from_le_bytes(len) as usize;
    if !body_lens.contains(&body_len) {
        return Err(Error::new(Reason::BadFile, path));
    }
    let mut body = vec![0u8; body_len + 4];
    input.read_exact(&mut body).map_err(io_err)?;
    let crc = body.split_off(body_len);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(&len);
    hasher.update(&body);
    if crc != hasher.finalize().to_le_bytes() {
        return Err(Error::new(Reason::BadChecksum, path));
    }
    Ok(body)
}

/// The version 2 header body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct HeaderV2 {
    /// Codec of every chunk (see `codec`).
    pub codec: u8,
    /// The user's compression level 0..9 the file was written with.
    pub level: u8,
    /// Reserved, 0.
    pub flags: u16,
    /// Rows per chunk the writer was asked for (the last chunk may hold fewer).
    pub chunk_rows: u32,
    /// Creation time, microseconds since the Unix epoch (UTC).
    pub created_unix_us: i64,
    /// Per-directory sequence number: larger is newer within one lineage (stable/backup or
    /// snapshots).
    pub sequence: u64,
    pub row_count: u64,
    pub chunk_count: u64,
    /// Total bytes of all frames.
    pub payload_len: u64,
    /// xxh3-128 (little-endian) of the concatenated raw (uncompressed) chunks.
    pub content_digest: [u8; 16],
}

impl HeaderV2 {
    /// The complete header area: prefix, length, body, CRC.
    pub fn encode(&self) -> Vec<u8> {
        encode_header_area(MAGIC, VERSION_CURRENT, HEADER_BODY_LEN, self)
    }

    /// Decodes a header body (after its CRC was checked).
    pub fn decode_body(body: &[u8], path: &Path) -> Result<Self> {
        match bincode::decode_from_slice::<HeaderV2, _>(body, config()) {
            Ok((h, _)) => Ok(h),
            Err(_) => Err(Error::new(Reason::BadFile, path)),
        }
    }
}

/// What the first 8 bytes of a file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Legacy,
    Current,
}

/// Checks magic and version of the 8-byte prefix.
pub fn parse_prefix(prefix: &[u8], path: &Path) -> Result<Version> {
    let bad = || Error::new(Reason::BadFile, path);
    let (magic, rest) = prefix.split_at_checked(MAGIC.len()).ok_or_else(bad)?;
    if magic != MAGIC {
        return Err(bad());
    }
    match rest {
        [VERSION_LEGACY, 0, ..] => Ok(Version::Legacy),
        [VERSION_CURRENT, 0, ..] => Ok(Version::Current),
        _ => Err(bad()),
    }
}

/// The fixed part of a chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct FrameHeader {
    pub raw_len: u64,
    pub stored_len: u64,
    pub row_count: u64,
    /// xxh3-64 of the raw chunk.
    pub raw_hash: u64,
    pub crc: u32,
}

impl FrameHeader {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if let Ok(bytes) = bincode::encode_to_vec(self, config()) {
            out.extend_from_slice(&bytes);
        }
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        match bincode::decode_from_slice::<FrameHeader, _>(bytes, config()) {
            Ok((h, _)) => Ok(h),
            Err(_) => Err(Error::new(Reason::BadFile, path)),
        }
    }

    /// The CRC this frame must carry, given its index and stored bytes.
    pub fn expected_crc(&self, index: u64, stored: &[u8]) -> u32 {
        let mut h = self.crc_of_header(index);
        h.update(stored);
        h.finalize()
    }

    /// The frame's CRC computed up to its stored bytes, to be fed them piece by piece.
    pub fn crc_of_header(&self, index: u64) -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        h.update(&index.to_le_bytes());
        h.update(&self.raw_len.to_le_bytes());
        h.update(&self.stored_len.to_le_bytes());
        h.update(&self.row_count.to_le_bytes());
        h.update(&self.raw_hash.to_le_bytes());
        h
    }
}

/// The legacy header area for a payload (used by tests and tools that write v1 files).
pub fn encode_legacy(payload: &[u8]) -> Vec<u8> {
    use md5::Digest;
    let mut out = Vec::with_capacity(LEGACY_HEADER_LEN + payload.len() + LEGACY_TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION_LEGACY);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&md5::Md5::digest(payload));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderV2 {
        HeaderV2 {
            codec: 1,
            level: 6,
            flags: 0,
            chunk_rows: 1000,
            created_unix_us: 1_700_000_000_000_000,
            sequence: 42,
            row_count: 12345,
            chunk_count: 13,
            payload_len: 987_654,
            content_digest: [0xAB; 16],
        }
    }

    #[test]
    fn header_layout_is_fixed_width_little_endian() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), HEADER_AREA_LEN);
        assert_eq!(&bytes[0..6], b"PTABLE");
        assert_eq!(bytes[6], 2);
        assert_eq!(bytes[7], 0);
        assert_eq!(&bytes[8..12], &64u32.to_le_bytes());
        assert_eq!(bytes[12], 1); // codec
        assert_eq!(bytes[13], 6); // level
        assert_eq!(&bytes[14..16], &[0, 0]); // flags
        assert_eq!(&bytes[16..20], &1000u32.to_le_bytes());
        assert_eq!(&bytes[20..28], &1_700_000_000_000_000i64.to_le_bytes());
        assert_eq!(&bytes[28..36], &42u64.to_le_bytes());
        assert_eq!(&bytes[36..44], &12345u64.to_le_bytes());
        assert_eq!(&bytes[44..52], &13u64.to_le_bytes());
        assert_eq!(&bytes[52..60], &987_654u64.to_le_bytes());
        assert_eq!(&bytes[60..76], &[0xAB; 16]);
        assert_eq!(&bytes[76..80], &crc32fast::hash(&bytes[..76]).to_le_bytes());
        let body = HeaderV2::decode_body(&bytes[12..76], Path::new("x")).unwrap();
        assert_eq!(body, sample());
    }

    #[test]
    fn frame_header_layout() {
        let f = FrameHeader {
            raw_len: 1,
            stored_len: 2,
            row_count: 3,
            raw_hash: 4,
            crc: 5,
        };
        let mut out = Vec::new();
        f.encode_into(&mut out);
        assert_eq!(out.len(), FRAME_HEADER_LEN);
        assert_eq!(&out[0..8], &1u64.to_le_bytes());
        assert_eq!(&out[24..32], &4u64.to_le_bytes());
        assert_eq!(&out[32..36], &5u32.to_le_bytes());
        assert_eq!(FrameHeader::decode(&out, Path::new("x")).unwrap(), f);
    }

    #[test]
    fn the_largest_chunk_fits_the_largest_frame() {
        // What zstd may output for a chunk at the cap, plus a zstd frame header, the end of
        // a copied frame and a last empty block.
        let worst = zstd::zstd_safe::compress_bound(MAX_CHUNK_LEN as usize) as u64 + 18 + 3 + 3;
        assert!(worst <= MAX_STORED_LEN, "{worst} > {MAX_STORED_LEN}");
    }

    #[test]
    fn prefix_checks_magic_and_version() {
        let p = Path::new("x");
        assert_eq!(parse_prefix(b"PTABLE\x02\x00", p), Ok(Version::Current));
        assert_eq!(parse_prefix(b"PTABLE\x01\x00", p), Ok(Version::Legacy));
        for bad in [
            &b"PTABLE\x03\x00"[..],
            b"PTABLE\x02\x01",
            b"PTABLF\x02\x00",
            b"PTA",
        ] {
            assert_eq!(parse_prefix(bad, p).unwrap_err().reason, Reason::BadFile);
        }
    }
}
