//! Forged version 2 files: contents or hashes changed, with every CRC recomputed so that
//! only the content checks (chunk XXH3-64, content digest, lengths) can tell.

use ptable_core::format::{FrameHeader, FRAME_HEADER_LEN, HEADER_AREA_LEN};
use std::ops::Range;
use std::path::Path;

/// Where the header's content digest and CRC are.
const DIGEST: Range<usize> = 60..76;
const HEADER_CRC: Range<usize> = 76..80;
/// Where a frame's XXH3-64 is, from the frame's start.
const RAW_HASH: Range<usize> = 24..32;
/// Where a frame's CRC is, from the frame's start.
const FRAME_CRC: Range<usize> = 32..36;

/// Byte ranges of each frame (header and stored bytes) of a version 2 file.
pub fn frame_spans(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut at = HEADER_AREA_LEN;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_LEN) {
        let fh = FrameHeader::decode(header, Path::new("frame")).unwrap();
        let end = at + FRAME_HEADER_LEN + fh.stored_len as usize;
        spans.push(at..end);
        at = end;
    }
    spans
}

/// Recomputes the header's CRC.
pub fn fix_header_crc(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..HEADER_CRC.start]);
    bytes[HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the CRC of frame `index`.
pub fn fix_frame_crc(bytes: &mut [u8], index: usize) {
    let span = frame_spans(bytes)[index].clone();
    let frame = &bytes[span.clone()];
    let fh = FrameHeader::decode(&frame[..FRAME_HEADER_LEN], Path::new("frame")).unwrap();
    let crc = fh.expected_crc(index as u64, &frame[FRAME_HEADER_LEN..]);
    let at = span.start + FRAME_CRC.start;
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// `bytes` with a wrong content digest (XXH3-128), its header CRC recomputed.
pub fn wrong_digest(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[DIGEST.start] ^= 0x01;
    fix_header_crc(&mut out);
    out
}

/// `bytes` whose frame `index` carries a wrong XXH3-64, its frame CRC recomputed.
pub fn wrong_chunk_hash(bytes: &[u8], index: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[frame_spans(bytes)[index].start + RAW_HASH.start] ^= 0x01;
    fix_frame_crc(&mut out, index);
    out
}

/// `bytes` with one bit of the last stored byte of frame `index` flipped (the chunk's
/// contents change, its XXH3-64 does not), its frame CRC recomputed.
pub fn changed_chunk(bytes: &[u8], index: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[frame_spans(bytes)[index].end - 1] ^= 0x01;
    fix_frame_crc(&mut out, index);
    out
}

/// Every forgery of `bytes` above (at frame 1, or 0 for a file of one chunk), named.
pub fn forgeries(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let frame = usize::from(frame_spans(bytes).len() > 1);
    vec![
        ("wrong content digest", wrong_digest(bytes)),
        ("wrong chunk XXH3-64", wrong_chunk_hash(bytes, frame)),
        ("changed chunk contents", changed_chunk(bytes, frame)),
    ]
}

/// `bytes`, a one-stream zstd file, with the first block of its zstd stream marked as the
/// last block of its zstd frame, frame 0's CRC recomputed. Chunk 0 still decodes (when
/// it is one block); the stream ends there, which a writer copying frame 0 must notice.
pub fn ended_zstd_frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let stored = frame_spans(bytes)[0].start + FRAME_HEADER_LEN;
    assert_eq!(
        &bytes[stored..stored + 4],
        &[0x28, 0xB5, 0x2F, 0xFD],
        "a zstd frame"
    );
    // RFC 8878 3.1.1.1: the frame header's size follows from its descriptor.
    let descriptor = bytes[stored + 4];
    let single_segment = descriptor & 0x20 != 0;
    let dictionary_id = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let content_size = match descriptor >> 6 {
        0 => usize::from(single_segment),
        flag => [0, 2, 4, 8][usize::from(flag)],
    };
    let block = stored + 5 + usize::from(!single_segment) + dictionary_id + content_size;
    out[block] |= 0x01;
    fix_frame_crc(&mut out, 0);
    out
}
