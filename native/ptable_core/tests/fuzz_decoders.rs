//! Fuzzing of the file decoders (version 2 and legacy version 1), run as a plain `cargo test`.
//!
//! Every input is derived from one seed file of a corpus generated here, deterministically, by
//! the core's own writer (`ChunkWriter`, several sizes and levels including 0, an empty table,
//! multi-chunk files) and `format::encode_legacy`. Input `i` of a run depends only on
//! `(seed, i)`, so a failure is reproduced with `PTABLE_FUZZ_SEED=<seed> PTABLE_FUZZ_ONLY=<i>`.
//!
//! Mutations: bit flips, byte and integer sets, truncations, extensions, range deletions,
//! splices from other seeds and duplications of ranges; and structure-aware edits (header
//! fields, frame fields, stored bytes, frame order, header length, legacy length and payload)
//! after which the CRCs, totals, hashes, digest or MD5 are recomputed, usually, so that
//! inputs get past the checksums into frame parsing and decompression.
//!
//! Sparse inputs (5%, from a generator of their own so that the other inputs of a seed do not
//! change): the file reads a hole of zeros that takes no memory, from a few bytes to 2^62,
//! and its apparent length (`ReadFile::file_len`, `Fs::metadata`) counts the hole. Usually a
//! frame's `stored_len` and the header's `payload_len` (or the legacy payload length) are
//! edited to cover it, with valid header CRCs, and the frame CRC over the present bytes, over
//! the hole too (by CRC combination), or, for holes up to 2 MiB, over zeros really inserted
//! with every checksum recomputed. The allocation bound counts only what the file holds.
//!
//! Each input is written as the stable file of an in-memory table directory (sometimes with
//! a valid backup beside it, sometimes also as a snapshot) and goes through `TableFile::open`,
//! `next_stored_frame` to the end (frame CRCs only), `verify`, `next_chunk` to the end,
//! `copy_to`, `inspect_dir` and `open_newest_valid`; a legacy payload that decodes is also
//! inflated as restore does (`etf::uncompressed_term`). Asserted:
//!
//! * no panic (each input runs under `catch_unwind`), no hang (a watchdog fails the run when
//!   one input takes more than `PTABLE_FUZZ_HANG_SECS`, default 30 s);
//! * bounded allocation: the live bytes allocated by the core while handling one input stay
//!   under 4 MiB + 130 x the bytes the file holds, whatever the headers claim;
//! * every error is `bad_file` or `bad_checksum`, and the entry points agree with each other:
//!   `verify`, reading every chunk, `copy_to`, inspect and restore's choice all accept
//!   exactly the same files (one definition of valid), and frame CRCs alone never accept
//!   less;
//! * an inflated payload equals a plain inflate of its zlib stream (or both fail);
//! * when the core returns data, an independent reference decoder written below (slices,
//!   no code shared with the reader) accepts the file and decodes exactly the same chunks; and
//!   an input whose checksums were not recomputed decodes to exactly its seed's data.
//!
//! `PTABLE_FUZZ_ITERATIONS` (default 25,000), `PTABLE_FUZZ_SEED` (default: random, printed),
//! `PTABLE_FUZZ_THREADS` (default: available parallelism), `PTABLE_FUZZ_ONLY` (one input).
//!
//! `change_log_fuzz` fuzzes the change log's decoders (the ETF pair walker and the log
//! reader) the same way, as the tests `fuzz_etf_walker` and `fuzz_change_log` (defaults
//! 25,000 and 10,000 inputs). `fuzz_driver` runs the inputs of all three.

mod change_log_fuzz;
mod change_log_support;
mod counting_alloc;
mod fuzz_driver;
mod rng;
mod zeros_crc;

use counting_alloc::{tracked, untracked};
use md5::Digest;
use ptable_core::format::{encode_legacy, FRAME_HEADER_LEN, MAX_CHUNK_LEN, MAX_STORED_LEN};
use ptable_core::fs::{EntryMeta, Fs, LockGuard, ReadFile, WriteFile};
use ptable_core::reader::DIRECT_READ_MAX;
use ptable_core::{
    inspect_dir, open_newest_valid, ChunkWriter, FileRole, FileStatus, Reason, SourceKind, Stamp,
    TableDir, TableFile, WriteOptions,
};
use rng::{splitmix, Rng};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};
use zeros_crc::zeros_crc;

// ---------------------------------------------------------------------------------------------
// A lean in-memory filesystem (reads are what the decoders need; writes serve the seed writer).

#[derive(Clone)]
enum Entry {
    Dir,
    File(Arc<FileData>),
}

/// A file's contents as a sparse file reads: `head`, a hole of `hole` zero bytes (no memory
/// behind it, so a few bytes can have an apparent length of terabytes), then `tail`.
#[derive(Default)]
struct FileData {
    head: Vec<u8>,
    hole: u64,
    tail: Vec<u8>,
}

impl FileData {
    fn dense(bytes: Vec<u8>) -> Self {
        FileData {
            head: bytes,
            ..FileData::default()
        }
    }

    /// The apparent length, as `stat` reports it.
    fn len(&self) -> u64 {
        (self.head.len() as u64)
            .saturating_add(self.hole)
            .saturating_add(self.tail.len() as u64)
    }

    /// Fills `buf` from offset `pos` (zeros in the hole); the bytes read.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> usize {
        let n = usize::try_from(self.len().saturating_sub(pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let tail_start = (self.head.len() as u64).saturating_add(self.hole);
        let mut done = 0;
        while done < n {
            let at = pos + done as u64;
            let out = &mut buf[done..n];
            let step = if let Some(rest) = self.head.get(at as usize..).filter(|r| !r.is_empty()) {
                let k = rest.len().min(out.len());
                out[..k].copy_from_slice(&rest[..k]);
                k
            } else if at < tail_start {
                let k = usize::try_from(tail_start - at)
                    .unwrap_or(usize::MAX)
                    .min(out.len());
                out[..k].fill(0);
                k
            } else {
                let rest = &self.tail[(at - tail_start) as usize..];
                let k = rest.len().min(out.len());
                out[..k].copy_from_slice(&rest[..k]);
                k
            };
            done += step;
        }
        n
    }

    /// All the bytes, when the file is small enough to hold in memory.
    fn materialize(&self) -> Option<Vec<u8>> {
        if self.len() > MATERIALIZE_MAX {
            return None;
        }
        let mut out = vec![0u8; self.len() as usize];
        let n = self.read_at(0, &mut out);
        out.truncate(n);
        Some(out)
    }
}

#[derive(Clone, Default)]
struct MemFs {
    entries: Arc<Mutex<BTreeMap<PathBuf, Entry>>>,
}

impl MemFs {
    fn new() -> Self {
        let fs = MemFs::default();
        fs.lock().insert(PathBuf::from("/"), Entry::Dir);
        fs
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    fn mkdir(&self, path: &str) {
        self.lock().insert(PathBuf::from(path), Entry::Dir);
    }
    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.lock().insert(
            PathBuf::from(path),
            Entry::File(Arc::new(FileData::dense(bytes))),
        );
    }
    fn put_sparse(&self, path: &str, data: Arc<FileData>) {
        self.lock().insert(PathBuf::from(path), Entry::File(data));
    }
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        match self.lock().get(Path::new(path)) {
            Some(Entry::File(b)) if b.hole == 0 && b.tail.is_empty() => Some(b.head.clone()),
            _ => None,
        }
    }
}

fn unsupported() -> io::Error {
    io::Error::from_raw_os_error(30) // EROFS: the decoders must not write
}

struct MemRead {
    data: Arc<FileData>,
    pos: u64,
}

impl Read for MemRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read_at(self.pos, buf);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for MemRead {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.data.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl ReadFile for MemRead {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.data.len())
    }
}

struct MemWrite {
    fs: MemFs,
    path: PathBuf,
    buf: Vec<u8>,
    pos: usize,
}

impl MemWrite {
    fn store(&self) {
        self.fs.lock().insert(
            self.path.clone(),
            Entry::File(Arc::new(FileData::dense(self.buf.clone()))),
        );
    }
}

impl WriteFile for MemWrite {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let at = self.pos;
        self.write_all_at(buf, at as u64)?;
        self.pos = at + buf.len();
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        if self.buf.len() < start + buf.len() {
            self.buf.resize(start + buf.len(), 0);
        }
        self.buf[start..start + buf.len()].copy_from_slice(buf);
        self.store();
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink for `copy_to`.
#[derive(Default)]
struct VecWrite(Vec<u8>);

impl WriteFile for VecWrite {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        if self.0.len() < start + buf.len() {
            self.0.resize(start + buf.len(), 0);
        }
        self.0[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Fs for MemFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let w = MemWrite {
            fs: self.clone(),
            path: path.to_path_buf(),
            buf: Vec::new(),
            pos: 0,
        };
        w.store();
        Ok(Box::new(w))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        match self.lock().get(path) {
            Some(Entry::File(data)) => Ok(Box::new(MemRead {
                data: Arc::clone(data),
                pos: 0,
            })),
            Some(Entry::Dir) => Err(io::Error::from_raw_os_error(21)),
            None => Err(io::Error::from_raw_os_error(2)),
        }
    }
    fn open_append(&self, _: &Path) -> io::Result<Box<dyn WriteFile>> {
        Err(unsupported())
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(unsupported())
    }
    fn remove_file(&self, _: &Path) -> io::Result<()> {
        Err(unsupported())
    }
    fn create_dir(&self, _: &Path) -> io::Result<()> {
        Err(unsupported())
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let entries = self.lock();
        match entries.get(path) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => return Err(io::Error::from_raw_os_error(20)),
            None => return Err(io::Error::from_raw_os_error(2)),
        }
        Ok(entries
            .keys()
            .filter(|k| k.parent() == Some(path))
            .filter_map(|k| k.file_name().map(|n| n.to_os_string()))
            .collect())
    }
    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        match self.lock().get(path) {
            Some(Entry::Dir) => Ok(EntryMeta {
                is_dir: true,
                len: 0,
                modified,
            }),
            Some(Entry::File(d)) => Ok(EntryMeta {
                is_dir: false,
                len: d.len(),
                modified,
            }),
            None => Err(io::Error::from_raw_os_error(2)),
        }
    }
    fn try_lock(&self, _: &Path) -> io::Result<Box<dyn LockGuard>> {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }
}

// ---------------------------------------------------------------------------------------------
// Seed corpus, written by the core's own writer.

const CREATED: i64 = 1_700_000_000_000_000;

struct Seed {
    name: String,
    bytes: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn write_v2(chunks: &[Vec<u8>], level: u8) -> Vec<u8> {
    write_v2_expecting(chunks, level, 0)
}

/// A writer of `/seed` in `fs`.
fn seed_writer(fs: &MemFs, level: u8, sequence: u64) -> ChunkWriter {
    let options = WriteOptions {
        level,
        chunk_rows: 100,
    };
    let stamp = Stamp {
        sequence,
        created_unix_us: CREATED,
    };
    ChunkWriter::create(fs, Path::new("/seed"), options, stamp).expect("create seed")
}

/// `expect_rows`: the row count announced before the first chunk; a large one makes even
/// small chunks go into a two-stream file.
fn write_v2_expecting(chunks: &[Vec<u8>], level: u8, expect_rows: u64) -> Vec<u8> {
    let fs = MemFs::new();
    let mut w = seed_writer(&fs, level, 3);
    w.expect_rows(expect_rows);
    w.allow_two_streams(true);
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for c in chunks {
        digest.update(c);
        w.append(c, (c.len() / 10) as u64)
            .expect("append seed chunk");
    }
    w.finish(digest.digest128().to_le_bytes())
        .expect("finish seed");
    fs.get("/seed").expect("seed written")
}

/// A file whose first `copied` frames are copied from a file of `old` chunks and whose
/// other chunks (`new`) are compressed after them: its zstd stream ends a zstd frame and
/// starts another inside a frame, as a persist of a changed table writes.
fn write_v2_with_copies(old: &[Vec<u8>], copied: usize, new: &[Vec<u8>], level: u8) -> Vec<u8> {
    let fs = MemFs::new();
    fs.put("/old", write_v2(old, level));
    let mut source = ptable_core::TableFile::open(&fs, Path::new("/old")).expect("old seed");
    let mut w = seed_writer(&fs, level, 4);
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for chunk in &old[..copied] {
        let (fh, stored) = source
            .next_stored_frame()
            .expect("old frame")
            .expect("old frame");
        w.append_copied(&fh, stored).expect("copy frame");
        digest.update(chunk);
    }
    for c in new {
        digest.update(c);
        w.append(c, (c.len() / 10) as u64).expect("append");
    }
    w.finish(digest.digest128().to_le_bytes()).expect("finish");
    fs.get("/seed").expect("seed written")
}

/// Bytes that look like a chunk of encoded rows (ETF list of pairs), compressible.
fn etf_like(rng: &mut Rng, rows: usize) -> Vec<u8> {
    let words = ["net", "wlan0", "eth0", "ipv4", "address", "state", "sensor"];
    let mut out = vec![131, 108];
    out.extend_from_slice(&(rows as u32).to_be_bytes());
    for _ in 0..rows {
        out.extend_from_slice(&[104, 2, 108, 0, 0, 0, 3]);
        for _ in 0..3 {
            let w = words[rng.below(words.len())];
            out.extend_from_slice(&[109, 0, 0, 0, w.len() as u8]);
            out.extend_from_slice(w.as_bytes());
        }
        out.push(106);
        out.extend_from_slice(&[98]);
        out.extend_from_slice(&(rng.next() as u32 % 1000).to_be_bytes());
    }
    out.push(106);
    out
}

fn corpus() -> Vec<Seed> {
    let mut rng = Rng::new(0x5EED);
    let mut seeds = Vec::new();
    let mut v2_expecting = |name: &str, chunks: Vec<Vec<u8>>, level: u8, expect_rows: u64| {
        let bytes = write_v2_expecting(&chunks, level, expect_rows);
        seeds.push(Seed {
            name: name.to_string(),
            bytes,
            chunks,
        });
    };
    let mut v2 = |name: &str, chunks: Vec<Vec<u8>>, level: u8| v2_expecting(name, chunks, level, 0);
    v2("v2-empty-l0", vec![], 0);
    v2("v2-empty-l6", vec![], 6);
    v2("v2-1chunk-l0", vec![etf_like(&mut rng, 4)], 0);
    v2("v2-1chunk-l1", vec![etf_like(&mut rng, 6)], 1);
    v2(
        "v2-3chunks-l6",
        (0..3).map(|_| etf_like(&mut rng, 10)).collect(),
        6,
    );
    v2(
        "v2-5chunks-l3-with-empty-chunk",
        vec![
            etf_like(&mut rng, 3),
            Vec::new(),
            etf_like(&mut rng, 8),
            etf_like(&mut rng, 1),
            etf_like(&mut rng, 5),
        ],
        3,
    );
    v2(
        "v2-2chunks-l9",
        (0..2).map(|_| etf_like(&mut rng, 60)).collect(),
        9,
    );
    v2(
        "v2-4chunks-l0",
        (0..4).map(|_| etf_like(&mut rng, 3)).collect(),
        0,
    );
    v2("v2-random-4k-l6", vec![rng.bytes(4096)], 6);
    v2("v2-big-l7", vec![etf_like(&mut rng, 400)], 7);
    v2_expecting(
        "v2-two-streams-5chunks-l6",
        (0..5).map(|_| etf_like(&mut rng, 12)).collect(),
        6,
        10_000_000,
    );
    let old: Vec<Vec<u8>> = (0..3).map(|_| etf_like(&mut rng, 10)).collect();
    let new: Vec<Vec<u8>> = (0..2).map(|_| etf_like(&mut rng, 10)).collect();
    let chunks: Vec<Vec<u8>> = old[..2].iter().chain(&new).cloned().collect();
    seeds.push(Seed {
        name: "v2-copied-then-restarted-l6".to_string(),
        bytes: write_v2_with_copies(&old, 2, &new, 6),
        chunks,
    });
    let mut legacy = |name: &str, payload: Vec<u8>| {
        seeds.push(Seed {
            name: name.to_string(),
            bytes: encode_legacy(&payload),
            chunks: vec![payload],
        });
    };
    legacy("v1-empty", Vec::new());
    legacy("v1-small", etf_like(&mut rng, 3));
    legacy("v1-2k", etf_like(&mut rng, 60));
    // property_table writes `term_to_binary(pairs, compressed: 6)`: tag 80, size, zlib.
    let plain = etf_like(&mut rng, 60);
    let mut compressed = vec![131, 80];
    compressed.extend_from_slice(&(plain.len() as u32 - 1).to_be_bytes());
    compressed.extend_from_slice(&miniz_oxide::deflate::compress_to_vec_zlib(&plain[1..], 6));
    legacy("v1-compressed", compressed);
    seeds
}

// ---------------------------------------------------------------------------------------------
// The reference decoder: independent of the reader, over a slice.

const REF_MAX_RAW: u64 = 4 << 20;

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `Some(chunks)` when `bytes` is a valid table file.
fn reference_decode(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    if bytes.get(0..6)? != b"PTABLE" || *bytes.get(7)? != 0 {
        return None;
    }
    match *bytes.get(6)? {
        1 => {
            let n = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
            if n.checked_add(32)? != bytes.len() as u64 {
                return None;
            }
            let payload = &bytes[16..bytes.len() - 16];
            if md5::Md5::digest(payload).as_slice() != &bytes[bytes.len() - 16..] {
                return None;
            }
            Some(vec![payload.to_vec()])
        }
        2 => reference_v2(bytes),
        _ => None,
    }
}

fn reference_v2(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let hl = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    if !(64..=4096).contains(&hl) {
        return None;
    }
    let crc_at = 12 + hl;
    let crc = u32::from_le_bytes(bytes.get(crc_at..crc_at + 4)?.try_into().ok()?);
    if crc32fast::hash(&bytes[..crc_at]) != crc {
        return None;
    }
    let codec = bytes[12];
    let level = bytes[13];
    let row_count = le64(bytes, 36)?;
    let chunk_count = le64(bytes, 44)?;
    let payload_len = le64(bytes, 52)?;
    let digest = &bytes[60..76];
    let start = crc_at + 4;
    if codec > 3 || level > 9 || (start as u64).checked_add(payload_len)? != bytes.len() as u64 {
        return None;
    }
    // Codec 2: one zstd stream; codec 3: two, frame i continuing stream i % 2.
    let mut streams = Vec::new();
    for _ in 0..stream_count(codec) {
        streams.push(ref_dctx()?);
    }
    let mut at = start;
    let mut rows = 0u64;
    let mut chunks = Vec::new();
    let mut all = Vec::new();
    for index in 0..chunk_count {
        let head = bytes.get(at..at + FRAME_HEADER_LEN)?;
        let raw_len = le64(head, 0)?;
        let stored_len = le64(head, 8)?;
        let row = le64(head, 16)?;
        let raw_hash = le64(head, 24)?;
        let fcrc = u32::from_le_bytes(head[32..36].try_into().ok()?);
        let s = at + FRAME_HEADER_LEN;
        let end = s.checked_add(usize::try_from(stored_len).ok()?)?;
        let stored = bytes.get(s..end)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&index.to_le_bytes());
        h.update(&head[..32]);
        h.update(stored);
        if h.finalize() != fcrc {
            return None;
        }
        if raw_len > REF_MAX_RAW {
            return None;
        }
        let raw = if codec == 0 {
            stored.to_vec()
        } else if !streams.is_empty() {
            let n = streams.len() as u64;
            ref_stream_frame(&mut streams[(index % n) as usize], stored, raw_len)?
        } else {
            let mut out = vec![0u8; raw_len as usize];
            let n = zstd::bulk::Decompressor::new()
                .ok()?
                .decompress_to_buffer(stored, &mut out[..])
                .ok()?;
            out.truncate(n);
            out
        };
        if raw.len() as u64 != raw_len || xxh3_64(&raw) != raw_hash {
            return None;
        }
        rows = rows.checked_add(row)?;
        all.extend_from_slice(&raw);
        chunks.push(raw);
        at = end;
    }
    if at != bytes.len() || rows != row_count || xxh3_128(&all).to_le_bytes() != digest {
        return None;
    }
    Some(chunks)
}

// ---------------------------------------------------------------------------------------------
// Structure-aware mutation: parse a seed into fields, edit, write back with (usually)
// recomputed checksums.

#[derive(Clone)]
struct FrameModel {
    raw_len: u64,
    stored_len: u64,
    row_count: u64,
    raw_hash: u64,
    crc: u32,
    stored: Vec<u8>,
    /// The raw chunk when known (for recomputing the digest).
    raw: Option<Vec<u8>>,
}

#[derive(Clone)]
struct V2Model {
    /// Bytes 0..12 except the header length, and the body (64 bytes + any extension).
    prefix: [u8; 8],
    header_len: u32,
    body: Vec<u8>,
    header_crc: u32,
    frames: Vec<FrameModel>,
    trailing: Vec<u8>,
}

impl V2Model {
    fn parse(bytes: &[u8], chunks: &[Vec<u8>]) -> Option<Self> {
        let hl = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        let body = bytes.get(12..12 + hl as usize)?.to_vec();
        let crc_at = 12 + hl as usize;
        let header_crc = u32::from_le_bytes(bytes.get(crc_at..crc_at + 4)?.try_into().ok()?);
        let mut at = crc_at + 4;
        let chunk_count = le64(&body, 32)?;
        let mut frames = Vec::new();
        for i in 0..chunk_count as usize {
            let head = bytes.get(at..at + FRAME_HEADER_LEN)?;
            let stored_len = le64(head, 8)?;
            let s = at + FRAME_HEADER_LEN;
            let e = s.checked_add(usize::try_from(stored_len).ok()?)?;
            frames.push(FrameModel {
                raw_len: le64(head, 0)?,
                stored_len,
                row_count: le64(head, 16)?,
                raw_hash: le64(head, 24)?,
                crc: u32::from_le_bytes(head[32..36].try_into().ok()?),
                stored: bytes.get(s..e)?.to_vec(),
                raw: chunks.get(i).cloned(),
            });
            at = e;
        }
        Some(V2Model {
            prefix: bytes.get(0..8)?.try_into().ok()?,
            header_len: hl,
            body,
            header_crc,
            frames,
            trailing: bytes.get(at..)?.to_vec(),
        })
    }

    fn codec(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    fn set_u64(&mut self, at: usize, v: u64) {
        if self.body.len() < at + 8 {
            self.body.resize(at + 8, 0);
        }
        self.body[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn get_u64(&self, at: usize) -> u64 {
        le64(&self.body, at).unwrap_or(0)
    }

    fn frame_crc(index: u64, f: &FrameModel) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&index.to_le_bytes());
        for v in [f.raw_len, f.stored_len, f.row_count, f.raw_hash] {
            h.update(&v.to_le_bytes());
        }
        h.update(&f.stored);
        h.finalize()
    }

    /// Codec 2: decodes the frames in order and makes each describe what it really holds
    /// (frames from the first that fails on carry no raw data).
    fn rederive_stream(&mut self) {
        let n = stream_count(self.codec()).max(1);
        let mut dctxs: Vec<_> = (0..n).map(|_| ref_dctx()).collect();
        for (i, f) in self.frames.iter_mut().enumerate() {
            let dctx = &mut dctxs[i % n];
            f.stored_len = f.stored.len() as u64;
            match dctx
                .as_mut()
                .and_then(|d| ref_stream_frame(d, &f.stored, f.raw_len.min(1 << 20)))
            {
                Some(raw) => {
                    f.raw_len = raw.len() as u64;
                    f.raw_hash = xxh3_64(&raw);
                    f.raw = Some(raw);
                }
                None => {
                    *dctx = None;
                    f.raw = None;
                }
            }
        }
    }

    fn fix_totals(&mut self) {
        let rows = self
            .frames
            .iter()
            .fold(0u64, |a, f| a.wrapping_add(f.row_count));
        let payload = self.frames.iter().fold(0u64, |a, f| {
            a.wrapping_add(FRAME_HEADER_LEN as u64 + f.stored.len() as u64)
        }) + self.trailing.len() as u64;
        self.set_u64(24, rows);
        self.set_u64(32, self.frames.len() as u64);
        self.set_u64(40, payload);
    }

    fn fix_digest(&mut self) {
        let mut d = xxhash_rust::xxh3::Xxh3::new();
        for f in &self.frames {
            match &f.raw {
                Some(raw) => d.update(raw),
                None => return,
            }
        }
        if self.body.len() < 64 {
            self.body.resize(64, 0);
        }
        self.body[48..64].copy_from_slice(&d.digest128().to_le_bytes());
    }

    fn fix_frame_crcs(&mut self) {
        for (i, f) in self.frames.iter_mut().enumerate() {
            f.crc = Self::frame_crc(i as u64, f);
        }
    }

    fn fix_header_crc(&mut self) {
        self.header_crc = crc32fast::hash(&self.head_bytes());
    }

    fn head_bytes(&self) -> Vec<u8> {
        let mut out = self.prefix.to_vec();
        out.extend_from_slice(&self.header_len.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.head_bytes();
        out.extend_from_slice(&self.header_crc.to_le_bytes());
        for f in &self.frames {
            for v in [f.raw_len, f.stored_len, f.row_count, f.raw_hash] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&f.crc.to_le_bytes());
            out.extend_from_slice(&f.stored);
        }
        out.extend_from_slice(&self.trailing);
        out
    }
}

/// How many zstd streams run through the frames of a file of `codec`.
fn stream_count(codec: u8) -> usize {
    match codec {
        2 => 1,
        3 => 2,
        _ => 0,
    }
}

/// A decoder for one zstd stream of codec 2 or 3, with the window limit the core uses.
fn ref_dctx() -> Option<zstd::zstd_safe::DCtx<'static>> {
    let mut d = zstd::zstd_safe::DCtx::try_create()?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(24))
        .ok()?;
    Some(d)
}

/// The next frame of a codec 2 stream: everything the decoder outputs for `stored`, or
/// `None` on a decoding error or past `claim` bytes. Like the core, each call gets an
/// output window of min(claim + 1 - output so far, max(output so far, 64 KiB)) bytes: for
/// some malformed streams zstd's output depends on the window's size.
fn ref_stream_frame(
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    stored: &[u8],
    claim: u64,
) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{InBuffer, OutBuffer};
    let mut out: Vec<u8> = Vec::new();
    let mut input = InBuffer::around(stored);
    loop {
        let done = out.len() as u64;
        let window = (claim.checked_add(1)? - done).min(done.max(1 << 16)) as usize;
        let mut buf = vec![0u8; window];
        let before = input.pos();
        let mut ob = OutBuffer::around(&mut buf[..]);
        dctx.decompress_stream(&mut ob, &mut input).ok()?;
        let n = ob.pos();
        out.extend_from_slice(&buf[..n]);
        if out.len() as u64 > claim {
            return None;
        }
        if input.pos() == stored.len() && n == 0 {
            return Some(out);
        }
        if n == 0 && input.pos() == before {
            return None;
        }
    }
}

/// Decompresses `stored` (bounded) to learn the raw chunk it really holds (codec 2 frames
/// depend on the ones before: see [`V2Model::rederive_stream`]).
fn rederive(codec: u8, stored: &[u8]) -> Option<Vec<u8>> {
    match codec {
        0 => Some(stored.to_vec()),
        1 => zstd::bulk::Decompressor::new()
            .ok()?
            .decompress(stored, 1 << 20)
            .ok(),
        _ => None,
    }
}

/// Makes `f` describe its stored bytes truthfully (raw_len, stored_len, raw_hash, raw).
fn make_honest(codec: u8, f: &mut FrameModel) {
    f.stored_len = f.stored.len() as u64;
    if let Some(raw) = rederive(codec, &f.stored) {
        f.raw_len = raw.len() as u64;
        f.raw_hash = xxh3_64(&raw);
        f.raw = Some(raw);
    } else {
        f.raw = None;
    }
}

fn mutate_bytes_in(rng: &mut Rng, data: &mut Vec<u8>) {
    match rng.below(5) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.next() as u8;
        }
        2 => {
            let n = rng.below(data.len() + 1);
            data.truncate(n);
        }
        3 => {
            let n = 1 + rng.below(16);
            let extra = rng.bytes(n);
            let at = rng.below(data.len() + 1);
            data.splice(at..at, extra);
        }
        _ if data.len() >= 2 => {
            let a = rng.below(data.len());
            let b = a + 1 + rng.below((data.len() - a).min(64));
            let copy = data[a..b.min(data.len())].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, copy);
        }
        _ => data.push(rng.next() as u8),
    }
}

/// Structure-aware mutation of a version 2 seed. Returns the bytes and whether checksums
/// were recomputed.
fn mutate_v2(rng: &mut Rng, seed: &Seed, seeds: &[Seed]) -> Option<(Vec<u8>, bool)> {
    let mut m = V2Model::parse(&seed.bytes, &seed.chunks)?;
    let edits = 1 + rng.below(3);
    for _ in 0..edits {
        let nf = m.frames.len();
        match rng.below(10) {
            // Header fields.
            0 | 1 => {
                // Edits below address the 64 field bytes; an earlier edit may have cut them.
                if m.body.len() < 64 {
                    m.body.resize(64, 0);
                }
                let related = [
                    m.get_u64(24),
                    m.get_u64(32),
                    m.get_u64(40),
                    seed.bytes.len() as u64,
                ];
                match rng.below(10) {
                    0 => m.body[0] = [0, 1, 2, 255][rng.below(4)],
                    1 => m.body[1] = [0, 1, 6, 9, 10, 255][rng.below(6)],
                    2 => m.body[2] = rng.next() as u8,
                    3 => {
                        let v = rng.interesting(4, &[]) as u32;
                        m.body[4..8].copy_from_slice(&v.to_le_bytes());
                    }
                    4 => {
                        let v = rng.next();
                        let at = [8, 16][rng.below(2)];
                        m.set_u64(at, v);
                    }
                    5 => {
                        let v = rng.interesting(m.get_u64(24), &related);
                        m.set_u64(24, v);
                    }
                    6 => {
                        let v = rng.interesting(m.get_u64(32), &related);
                        m.set_u64(32, v);
                    }
                    7 => {
                        let v = rng.interesting(m.get_u64(40), &related);
                        m.set_u64(40, v);
                    }
                    8 => {
                        let i = 48 + rng.below(16);
                        m.body[i] ^= 1 << rng.below(8);
                    }
                    _ => {
                        // Header length: extend or shrink the body, or just lie.
                        let new = [63u32, 64, 65, 100, 4096, 4097, u32::MAX][rng.below(7)];
                        m.header_len = new;
                        if rng.chance(70) && new <= 4097 {
                            m.body.resize(new as usize, 0);
                        }
                    }
                }
            }
            // Frame fields.
            2 | 3 if nf > 0 => {
                let i = rng.below(nf);
                let f = &mut m.frames[i];
                let fcs = zstd::zstd_safe::get_frame_content_size(&f.stored)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let related = [f.stored_len, f.raw_len, fcs, 4 << 30];
                match rng.below(4) {
                    0 => f.raw_len = rng.interesting(f.raw_len, &related),
                    1 => f.stored_len = rng.interesting(f.stored_len, &related),
                    2 => f.row_count = rng.interesting(f.row_count, &related),
                    _ => f.raw_hash = rng.next(),
                }
            }
            // Stored bytes, then (usually) make the frame describe them truthfully.
            4..=6 if nf > 0 => {
                let i = rng.below(nf);
                let codec = m.codec();
                let f = &mut m.frames[i];
                let n = 1 + rng.below(3);
                for _ in 0..n {
                    mutate_bytes_in(rng, &mut f.stored);
                }
                if rng.chance(80) {
                    if stream_count(codec) > 0 {
                        m.rederive_stream();
                    } else {
                        make_honest(codec, f);
                    }
                } else {
                    f.stored_len = f.stored.len() as u64;
                    f.raw = None;
                }
            }
            // New content, compressed at any level (possibly not matching the codec).
            7 => {
                let raw = match rng.below(3) {
                    0 => {
                        let n = rng.below(300);
                        rng.bytes(n)
                    }
                    1 => {
                        let rows = rng.below(20);
                        etf_like(rng, rows)
                    }
                    _ => {
                        let n = rng.below(5000);
                        vec![rng.next() as u8; n]
                    }
                };
                let level = if rng.chance(80) {
                    m.codec()
                } else {
                    rng.below(2) as u8
                };
                let stored = if level == 0 {
                    raw.clone()
                } else {
                    zstd::bulk::compress(&raw, 1 + rng.below(19) as i32).unwrap_or_default()
                };
                let f = FrameModel {
                    raw_len: raw.len() as u64,
                    stored_len: stored.len() as u64,
                    row_count: rng.below(50) as u64,
                    raw_hash: xxh3_64(&raw),
                    crc: 0,
                    stored,
                    raw: Some(raw),
                };
                let at = rng.below(nf + 1);
                if nf > 0 && rng.chance(50) {
                    m.frames[at.min(nf - 1)] = f;
                } else {
                    m.frames.insert(at, f);
                }
            }
            // Frame order: duplicate, remove, swap, or borrow a frame of another seed.
            8 if nf > 0 => match rng.below(4) {
                0 => {
                    let f = m.frames[rng.below(nf)].clone();
                    m.frames.insert(rng.below(nf + 1), f);
                }
                1 => {
                    m.frames.remove(rng.below(nf));
                }
                2 => m.frames.swap(rng.below(nf), rng.below(nf)),
                _ => {
                    let other = &seeds[rng.below(seeds.len())];
                    if let Some(o) = V2Model::parse(&other.bytes, &other.chunks) {
                        if !o.frames.is_empty() {
                            let f = o.frames[rng.below(o.frames.len())].clone();
                            m.frames.insert(rng.below(nf + 1), f);
                        }
                    }
                }
            },
            // Bytes after the last frame.
            _ => {
                let n = rng.below(40);
                m.trailing = rng.bytes(n);
            }
        }
    }
    // Usually recompute what the edits invalidated, each fix-up independently.
    let mut recomputed = false;
    if rng.chance(70) {
        m.fix_totals();
        recomputed = true;
    }
    if rng.chance(60) {
        m.fix_digest();
        recomputed = true;
    }
    if rng.chance(90) {
        m.fix_frame_crcs();
        recomputed = true;
    }
    if rng.chance(95) {
        m.fix_header_crc();
        recomputed = true;
    }
    Some((m.encode(), recomputed))
}

/// Structure-aware mutation of a legacy seed. Returns the bytes and whether the MD5 was
/// recomputed.
fn mutate_legacy(rng: &mut Rng, seed: &Seed) -> (Vec<u8>, bool) {
    let mut payload = seed.chunks.first().cloned().unwrap_or_default();
    let mut declared = payload.len() as u64;
    let mut trailer_extra: Vec<u8> = Vec::new();
    let mut fix_len = true;
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 | 1 => mutate_bytes_in(rng, &mut payload),
            2 => {
                declared = rng.interesting(declared, &[payload.len() as u64, 4 << 30]);
                fix_len = false;
            }
            _ => {
                let n = rng.below(20);
                trailer_extra = rng.bytes(n);
            }
        }
    }
    if fix_len {
        declared = payload.len() as u64;
    }
    let md5_fixed = rng.chance(85);
    let md5 = if md5_fixed {
        md5::Md5::digest(&payload).to_vec()
    } else {
        seed.bytes[seed.bytes.len() - 16..].to_vec()
    };
    let mut out = b"PTABLE\x01\x00".to_vec();
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(&payload);
    let cut = rng.below(17);
    if trailer_extra.is_empty() || rng.chance(50) {
        out.extend_from_slice(&md5);
    } else {
        out.extend_from_slice(&md5[..cut.min(16)]);
    }
    out.extend_from_slice(&trailer_extra);
    (out, md5_fixed)
}

/// Unstructured mutations of the raw bytes (checksums are left alone).
fn mutate_raw(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Seed]) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 | 1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            2 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0, 1, 0x7F, 0x80, 0xFF, rng.next() as u8][rng.below(6)];
            }
            3 if data.len() >= 8 => {
                let i = rng.below(data.len() - 7);
                let v = rng.interesting(le64(data, i).unwrap_or(0), &[data.len() as u64]);
                data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => {
                let n = rng.below(data.len() + 1);
                data.truncate(n);
            }
            5 => {
                let n = 1 + rng.below(64);
                let extra = if rng.chance(50) {
                    vec![0; n]
                } else {
                    rng.bytes(n)
                };
                data.extend_from_slice(&extra);
            }
            6 => {
                // Splice a range of another seed over or into this one.
                let other = &seeds[rng.below(seeds.len())].bytes;
                let a = rng.below(other.len());
                let b = (a + 1 + rng.below(200)).min(other.len());
                let piece = other[a..b].to_vec();
                let at = rng.below(data.len() + 1);
                if rng.chance(50) {
                    let end = (at + piece.len()).min(data.len());
                    data.splice(at..end, piece);
                } else {
                    data.splice(at..at, piece);
                }
            }
            7 if data.len() >= 2 => {
                // Duplicate a range (e.g. a whole frame) somewhere else.
                let a = rng.below(data.len());
                let b = (a + 1 + rng.below(400)).min(data.len());
                let piece = data[a..b].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece);
            }
            _ if data.len() >= 2 => {
                let a = rng.below(data.len());
                let b = (a + 1 + rng.below(64)).min(data.len());
                data.drain(a..b);
            }
            _ => data.push(rng.next() as u8),
        }
    }
}

struct Input {
    seed: usize,
    bytes: Vec<u8>,
    /// Zeros that a sparse file reads at an offset of `bytes`, taking no memory.
    hole: Option<Hole>,
    recomputed: bool,
    with_backup: bool,
    as_snapshot: bool,
    inspect_verify: bool,
}

impl Input {
    fn file(&self) -> FileData {
        match self.hole {
            None => FileData::dense(self.bytes.clone()),
            Some(h) => FileData {
                head: self.bytes[..h.at].to_vec(),
                hole: h.len,
                tail: self.bytes[h.at..].to_vec(),
            },
        }
    }
}

fn make_input(run_seed: u64, index: u64, seeds: &[Seed]) -> Input {
    let mut rng = Rng::new(run_seed ^ splitmix(index));
    let s = rng.below(seeds.len());
    let seed = &seeds[s];
    let legacy = seed.bytes.get(6) == Some(&1);
    let (mut bytes, mut recomputed) = match rng.below(100) {
        0..=59 => {
            let structured = if legacy {
                Some(mutate_legacy(&mut rng, seed))
            } else {
                mutate_v2(&mut rng, seed, seeds)
            };
            structured.unwrap_or_else(|| (seed.bytes.clone(), false))
        }
        _ => (seed.bytes.clone(), false),
    };
    if !recomputed || rng.chance(15) {
        mutate_raw(&mut rng, &mut bytes, seeds);
    }
    if bytes == seed.bytes {
        recomputed = false;
    }
    let mut input = Input {
        seed: s,
        bytes,
        hole: None,
        recomputed,
        with_backup: rng.chance(25),
        as_snapshot: rng.chance(12),
        inspect_verify: rng.chance(50),
    };
    // From a generator of its own, so that the other inputs of a seed stay what they were
    // before sparse inputs were added.
    let mut sparse = Rng::new(splitmix(run_seed ^ SPARSE_STREAM) ^ index);
    if sparse.chance(SPARSE_PERCENT) {
        make_sparse(&mut sparse, &mut input, seed);
    }
    input
}

// ---------------------------------------------------------------------------------------------
// Sparse inputs: a hole of zeros inside the file, as a file extended by `truncate` reads,
// whose apparent length (`file_len`, `metadata`) counts the hole. Usually the claims are
// edited to cover it (a frame's stored_len and the payload_len, or the legacy payload
// length) with the header CRC recomputed, and the frame CRC computed over the present bytes
// only, or also over the hole's zeros (by CRC combination: a terabyte hole costs nothing to
// checksum), or, for small holes, over zeros really inserted, so that such files can also be
// valid. The allocation oracle then bounds what the core allocates by the bytes present
// (plus a small hole's size): a claim alone must never size a buffer.

const SPARSE_STREAM: u64 = 0x5BA5_5E00_0000_0001;
const SPARSE_PERCENT: u64 = 5;
/// Holes up to this size may be made valid (zeros really inserted, every checksum
/// recomputed); inputs up to `MATERIALIZE_MAX` are also given to the reference decoder.
const SMALL_HOLE_MAX: u64 = 2 << 20;
const MATERIALIZE_MAX: u64 = 4 << 20;

/// A hole of `len` zero bytes at offset `at` of an input's bytes.
#[derive(Debug, Clone, Copy)]
struct Hole {
    at: usize,
    len: u64,
}

/// A hole's size: tiny; around the core's direct-read limit; larger than the allocation
/// oracle allows but within the format's limits (read through on every check, so rare); or
/// beyond the format's limits (refused before a byte of it is read), up to 2^62.
fn hole_len(rng: &mut Rng) -> u64 {
    match rng.below(40) {
        0..=19 => 1 + rng.below(4096) as u64,
        20..=23 => DIRECT_READ_MAX - 1 + rng.below(3) as u64 + rng.below(2) as u64 * 4096,
        24 => ALLOCATION_BASE + (1 << 20) + rng.below(64 << 10) as u64,
        _ => [
            MAX_STORED_LEN + 1,
            MAX_STORED_LEN + 1 + rng.next() % (1 << 30),
            1 << 30,
            1 << 32,
            1 << 40,
            1 << 43,
            1 << 62,
        ][rng.below(7)],
    }
}

fn make_sparse(rng: &mut Rng, input: &mut Input, seed: &Seed) {
    let len = hole_len(rng);
    let edited = match input.bytes.get(0..8) {
        Some(b"PTABLE\x02\x00") if rng.chance(85) => sparse_v2(rng, &input.bytes, seed, len),
        Some(b"PTABLE\x01\x00") if rng.chance(85) => Some(sparse_legacy(rng, &input.bytes, len)),
        _ => None,
    };
    match edited {
        Some((bytes, hole)) => {
            input.bytes = bytes;
            input.hole = Some(hole);
            input.recomputed = true;
        }
        None => {
            // Claims unchanged: the file is only longer than its header says.
            let at = rng.below(input.bytes.len() + 1);
            input.hole = Some(Hole { at, len });
        }
    }
}

/// Frame `index`'s stored bytes extended by `len` bytes of hole (a frame of its own,
/// sometimes), the totals, lengths and header CRC made to agree. Returns the bytes without
/// the hole, and the hole.
fn sparse_v2(rng: &mut Rng, bytes: &[u8], seed: &Seed, len: u64) -> Option<(Vec<u8>, Hole)> {
    let mut m = V2Model::parse(bytes, &seed.chunks)?;
    if m.frames.is_empty() || rng.chance(25) {
        let f = FrameModel {
            raw_len: len,
            stored_len: 0,
            row_count: rng.below(50) as u64,
            raw_hash: rng.next(),
            crc: 0,
            stored: Vec::new(),
            raw: None,
        };
        m.frames.insert(rng.below(m.frames.len() + 1), f);
    }
    let i = rng.below(m.frames.len());
    let codec = m.codec();
    let present = m.frames[i].stored.len();
    let valid = len <= SMALL_HOLE_MAX && rng.chance(60);
    if valid {
        // Zeros really inserted, the frame and file made to describe them.
        m.frames[i].stored.resize(present + len as usize, 0);
        if stream_count(codec) > 0 {
            m.rederive_stream();
        } else {
            make_honest(codec, &mut m.frames[i]);
        }
        m.fix_totals();
        m.fix_digest();
        m.fix_frame_crcs();
    } else {
        m.fix_totals();
        let payload = m.get_u64(40);
        m.set_u64(40, payload.wrapping_add(len));
        m.fix_frame_crcs();
        let f = &mut m.frames[i];
        f.stored_len = (present as u64).wrapping_add(len);
        if codec == 0 || rng.chance(50) {
            f.raw_len = f.stored_len;
        }
        f.crc = V2Model::frame_crc(i as u64, f);
        // Over the hole too, only where the format's limit refuses the frame before its
        // bytes are read: a checksum-valid hole within the limit is data, read in full.
        if f.stored_len > MAX_STORED_LEN && rng.chance(50) {
            let mut h = crc32fast::Hasher::new();
            h.update(&(i as u64).to_le_bytes());
            for v in [f.raw_len, f.stored_len, f.row_count, f.raw_hash] {
                h.update(&v.to_le_bytes());
            }
            h.update(&f.stored);
            h.combine(&zeros_crc(len));
            f.crc = h.finalize();
        }
    }
    if rng.chance(95) {
        m.fix_header_crc();
    }
    let mut out = m.encode();
    let at = 8
        + 4
        + m.body.len()
        + 4
        + m.frames[..i]
            .iter()
            .map(|f| FRAME_HEADER_LEN + f.stored.len())
            .sum::<usize>()
        + FRAME_HEADER_LEN
        + present;
    if valid {
        out.drain(at..at + len as usize);
    }
    Some((out, Hole { at, len }))
}

/// A legacy file whose payload length claims `len` more bytes, which a hole inside the
/// payload (or at its end, covering the MD5 too) supplies. The MD5 is right for small holes,
/// usually.
fn sparse_legacy(rng: &mut Rng, bytes: &[u8], len: u64) -> (Vec<u8>, Hole) {
    let payload = bytes
        .get(16..bytes.len().saturating_sub(16))
        .unwrap_or_default();
    let cut = rng.below(payload.len() + 1);
    let mut out = b"PTABLE\x01\x00".to_vec();
    out.extend_from_slice(&(payload.len() as u64).wrapping_add(len).to_be_bytes());
    out.extend_from_slice(payload);
    if len <= SMALL_HOLE_MAX && rng.chance(60) {
        let mut whole = payload[..cut].to_vec();
        whole.resize(cut + len as usize, 0);
        whole.extend_from_slice(&payload[cut..]);
        out.extend_from_slice(&md5::Md5::digest(&whole));
    } else if rng.chance(50) {
        // The MD5 of the present bytes only; or no trailer at all: the hole covers it.
        out.extend_from_slice(&md5::Md5::digest(payload));
    } else {
        let at = out.len();
        return (
            out,
            Hole {
                at,
                len: len.saturating_add(16),
            },
        );
    }
    (out, Hole { at: 16 + cut, len })
}

// ---------------------------------------------------------------------------------------------
// Running one input.

const DIR: &str = "/t";
const STABLE: &str = "/t/data.ptable";
const SNAPSHOT: &str = "/t/snapshots/0123456789ABCDEF";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    V2,
    Legacy,
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Depth {
    Open,
    Frames,
    Content,
    Decoded,
}

struct Outcome {
    kind: Kind,
    depth: Depth,
    /// `Some(held in memory)` for a sparse input: whether its whole apparent length was
    /// small enough to give the reference decoder.
    sparse: Option<bool>,
    recomputed: bool,
    new_valid_file: bool,
    fell_back: bool,
    peak: u64,
    largest: u64,
}

fn read_all(f: &mut TableFile) -> ptable_core::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(chunk) = f.next_chunk(|n| Some(vec![0u8; n]))? {
        out.push(chunk.data);
    }
    Ok(out)
}

/// `etf::uncompressed_term` against a plain inflate of the same zlib stream into a buffer
/// of the claimed size (another entry point of the inflater than the one it uses).
fn check_uncompressed_term(term: &[u8]) -> Option<String> {
    let got = ptable_core::etf::uncompressed_term(term);
    // The reference allocates the claimed size: its memory is not the core's.
    let want = untracked(|| match term {
        [131, 80, a, b, c, d, stream @ ..] => {
            let size = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            // Only claims a zlib stream could meet get a buffer (deflate expands at most
            // about 1032 times).
            (size <= 1032 * (stream.len() + 1))
                .then(|| {
                    let mut out = vec![0u8; size + 1];
                    out[0] = 131;
                    miniz_oxide::inflate::decompress_slice_iter_to_slice(
                        &mut out[1..],
                        std::iter::once(stream),
                        true,
                        false,
                    )
                    .ok()
                    .filter(|&n| n == size)
                    .map(|_| out)
                })
                .flatten()
        }
        _ => Some(term.to_vec()),
    });
    (got.as_deref() != want.as_deref()).then(|| {
        format!(
            "uncompressed_term gave {:?} bytes, a plain inflate {:?}",
            got.map(|g| g.len()),
            want.map(|w| w.len())
        )
    })
}

/// Reads every frame, checking its CRC, and the totals at the end, without decompressing
/// (as persist does to copy frames); a legacy file, which has no frames, is verified.
fn frames_only(f: &mut TableFile) -> ptable_core::Result<()> {
    if !matches!(f.header(), ptable_core::FileHeader::Current(_)) {
        return f.verify();
    }
    f.rewind()?;
    let result = (|| {
        while f.next_stored_frame()?.is_some() {}
        Ok(())
    })();
    f.rewind()?;
    result
}

fn corruption(r: &ptable_core::Result<impl Sized>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => e.reason.is_corruption(),
    }
}

/// The core's view of one input, gathered with allocation tracking on.
struct CoreView {
    open_err: Option<Reason>,
    /// Frame CRCs and totals only (a legacy file: its MD5).
    frames: Option<Result<(), Reason>>,
    /// `verify`: the one definition of a valid file.
    valid: Option<Result<(), Reason>>,
    read: Option<ptable_core::Result<Vec<Vec<u8>>>>,
    problems: Vec<String>,
    fell_back: bool,
}

fn core_view(fs: &MemFs, input: &Input, seeds: &[Seed]) -> CoreView {
    let mut v = CoreView {
        open_err: None,
        frames: None,
        valid: None,
        read: None,
        problems: Vec::new(),
        fell_back: false,
    };
    let path = Path::new(STABLE);
    match TableFile::open(fs, path) {
        Err(e) => {
            if !e.reason.is_corruption() {
                v.problems.push(format!("open: unexpected {e}"));
            }
            v.open_err = Some(e.reason);
        }
        Ok(mut f) => {
            let frames = frames_only(&mut f);
            let valid = f.verify();
            let read = read_all(&mut f);
            for (what, ok) in [
                ("next_stored_frame", corruption(&frames)),
                ("verify", corruption(&valid)),
                ("next_chunk", corruption(&read)),
            ] {
                if !ok {
                    v.problems.push(format!("{what}: not a corruption error"));
                }
            }
            if valid.is_ok() && frames.is_err() {
                v.problems
                    .push("verify ok but a frame CRC or total fails".into());
            }
            // What a restore does next with a legacy payload: inflate a compressed term.
            for chunk in read.iter().flatten() {
                v.problems.extend(check_uncompressed_term(chunk));
            }
            if read.is_ok() != valid.is_ok() {
                v.problems.push(format!(
                    "next_chunk {:?} disagrees with verify {:?}",
                    read.as_ref().err(),
                    valid
                ));
            }
            let mut sink = VecWrite::default();
            let stamp = Stamp {
                sequence: 99,
                created_unix_us: CREATED + 1,
            };
            let copied = f.copy_to(&mut sink, Path::new("/t/copy"), stamp);
            if copied.is_ok() != valid.is_ok() {
                v.problems.push("copy_to disagrees with verify".into());
            }
            if let (Ok(()), Ok(chunks)) = (&copied, &read) {
                let copy_fs = MemFs::new();
                copy_fs.put("/c", sink.0);
                let again = TableFile::open(&copy_fs, Path::new("/c")).and_then(|mut c| {
                    c.verify()?;
                    read_all(&mut c)
                });
                if again.as_ref() != Ok(chunks) {
                    v.problems
                        .push("copy_to output does not decode the same".into());
                }
            }
            v.frames = Some(frames.map_err(|e| e.reason));
            v.valid = Some(valid.map_err(|e| e.reason));
            v.read = Some(read);
        }
    }

    let dir = TableDir::new(DIR);
    match inspect_dir(fs, &dir, input.inspect_verify) {
        Err(e) => v.problems.push(format!("inspect_dir: {e}")),
        Ok(reports) => {
            let stable = reports.iter().find(|r| r.role == FileRole::Stable);
            let expected = match (&v.open_err, input.inspect_verify, v.valid) {
                (Some(r), _, _) => FileStatus::Invalid(*r),
                (None, false, _) => FileStatus::Unverified,
                (None, true, Some(Err(r))) => FileStatus::Invalid(r),
                (None, true, _) => FileStatus::Valid,
            };
            match stable {
                Some(r) if r.status == expected => {}
                other => v.problems.push(format!(
                    "inspect_dir stable status {:?}, expected {expected:?}",
                    other.map(|r| r.status)
                )),
            }
            let snapshots = reports
                .iter()
                .filter(|r| r.role == FileRole::Snapshot)
                .count();
            if snapshots != usize::from(input.as_snapshot) {
                v.problems
                    .push(format!("inspect_dir lists {snapshots} snapshots"));
            }
        }
    }

    let stable_ok = v.valid == Some(Ok(()));
    match open_newest_valid(fs, &dir, None) {
        Ok(mut src) => {
            let data = read_all(&mut src.file);
            match src.kind {
                SourceKind::Stable if stable_ok => {
                    let same = match (&data, &v.read) {
                        (Ok(a), Some(Ok(b))) => a == b,
                        (Err(_), Some(Err(_))) => true,
                        _ => false,
                    };
                    if !same {
                        v.problems
                            .push("open_newest_valid(stable) reads differently".into());
                    }
                }
                SourceKind::Backup if input.with_backup && !stable_ok => {
                    v.fell_back = true;
                    if data.as_ref().ok() != Some(&seeds[input.seed].chunks) {
                        v.problems
                            .push("open_newest_valid(backup) is not the backup's data".into());
                    }
                }
                kind => v.problems.push(format!(
                    "open_newest_valid chose {kind:?} (stable ok: {stable_ok})"
                )),
            }
        }
        Err(fail) => {
            if stable_ok || input.with_backup || !fail.error.reason.is_corruption() {
                v.problems
                    .push(format!("open_newest_valid failed: {}", fail.error));
            }
        }
    }
    v
}

/// Live bytes the core may allocate for any input, on top of 130 times the bytes the file
/// holds: the read buffer (256 KiB), a chunk buffer allocated without a size check (at most
/// 1 MiB more than 64 times its stored bytes), zstd's output windows.
const ALLOCATION_BASE: u64 = 4 << 20;

fn run_one(input: &Input, seeds: &[Seed]) -> Result<Outcome, String> {
    let fs = MemFs::new();
    fs.mkdir(DIR);
    let file = Arc::new(input.file());
    fs.put_sparse(STABLE, Arc::clone(&file));
    if input.with_backup {
        fs.put("/t/data.ptable.backup", seeds[input.seed].bytes.clone());
    }
    if input.as_snapshot {
        fs.mkdir("/t/snapshots");
        fs.put_sparse(SNAPSHOT, Arc::clone(&file));
    }
    let (view, peak, largest) = tracked(|| core_view(&fs, input, seeds));
    let mut problems = view.problems;
    // What the core may allocate grows with the bytes the file really holds (a hole that
    // the reference decoder is given counts: it may be valid data), never with a claim.
    let materialized = file.materialize();
    let held = materialized.as_ref().map_or(input.bytes.len(), Vec::len);
    let limit = ALLOCATION_BASE + 130 * held as u64;
    if peak > limit {
        problems.push(format!("allocated {peak} live bytes (limit {limit})"));
    }

    let mut prefix = [0u8; 8];
    file.read_at(0, &mut prefix);
    let kind = match &prefix {
        b"PTABLE\x02\x00" => Kind::V2,
        b"PTABLE\x01\x00" => Kind::Legacy,
        _ => Kind::Other,
    };
    let depth = match (&view.open_err, &view.frames, &view.valid) {
        (Some(_), _, _) => Depth::Open,
        (None, Some(Err(_)), _) => Depth::Frames,
        (None, _, Some(Err(_))) => Depth::Content,
        _ => Depth::Decoded,
    };

    // The oracle.
    // A file too large to hold in memory is never valid here: its hole was not made so.
    let reference = materialized.as_deref().and_then(reference_decode);
    let mut new_valid_file = false;
    match (&view.read, &reference) {
        (Some(Ok(got)), Some(want)) => {
            if got != want {
                problems.push("decoded data differs from the reference decoder's".into());
            }
            if got != &seeds[input.seed].chunks {
                new_valid_file = true;
            }
            // Without recomputed checksums, only a file byte-identical to a valid one (its
            // seed after a no-op mutation, or another seed rebuilt by splices and cuts) may
            // decode, and to exactly that file's data.
            if !input.recomputed
                && !seeds
                    .iter()
                    .any(|s| Some(&s.bytes) == materialized.as_ref() && &s.chunks == got)
            {
                problems.push(
                    "checksums not recomputed, yet decoded: not byte-identical to a seed".into(),
                );
            }
        }
        (Some(Ok(_)), None) => problems.push("accepted a file the reference rejects".into()),
        (_, Some(_)) => problems.push(format!(
            "rejected a file the reference accepts (open {:?}, verify {:?}/{:?})",
            view.open_err, view.frames, view.valid
        )),
        _ => {}
    }
    if problems.is_empty() {
        Ok(Outcome {
            kind,
            depth,
            sparse: input.hole.map(|_| materialized.is_some()),
            recomputed: input.recomputed,
            new_valid_file,
            fell_back: view.fell_back,
            peak,
            largest,
        })
    } else {
        Err(problems.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Stats {
    recomputed: AtomicU64,
    new_valid: AtomicU64,
    fell_back: AtomicU64,
    /// Sparse inputs: all, those beyond what memory could hold, and those decoded.
    sparse: AtomicU64,
    sparse_huge: AtomicU64,
    sparse_decoded: AtomicU64,
    /// [kind][depth]
    depth: [[AtomicU64; 4]; 3],
    peak: AtomicU64,
    largest: AtomicU64,
}

impl Stats {
    fn add(&self, o: Outcome) {
        let count = |a: &AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        count(&self.depth[o.kind as usize][o.depth as usize]);
        if o.recomputed {
            count(&self.recomputed);
        }
        if o.new_valid_file {
            count(&self.new_valid);
        }
        if o.fell_back {
            count(&self.fell_back);
        }
        if let Some(held) = o.sparse {
            count(&self.sparse);
            if !held {
                count(&self.sparse_huge);
            }
            if o.depth == Depth::Decoded {
                count(&self.sparse_decoded);
            }
        }
        self.peak.fetch_max(o.peak, Ordering::Relaxed);
        self.largest.fetch_max(o.largest, Ordering::Relaxed);
    }

    fn print(&self) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "  checksums recomputed after mutation: {}; decoded to new valid contents: {}; \
             restore fell back to the backup: {}",
            get(&self.recomputed),
            get(&self.new_valid),
            get(&self.fell_back)
        );
        println!(
            "  sparse inputs (a hole of zeros, claims edited to cover it): {}, of which {} with \
             an apparent size beyond {MATERIALIZE_MAX} bytes; {} decoded fully",
            get(&self.sparse),
            get(&self.sparse_huge),
            get(&self.sparse_decoded)
        );
        println!(
            "  core allocation per input: peak live {} bytes, largest single {} bytes",
            get(&self.peak),
            get(&self.largest)
        );
        println!(
            "  {:<28} {:>12} {:>12} {:>12} {:>12}",
            "depth", "v2", "legacy v1", "other", "total"
        );
        let names = [
            "rejected at open (header)",
            "rejected at a frame / MD5",
            "rejected at decompression",
            "decoded fully",
        ];
        for (d, name) in names.iter().enumerate() {
            let row: Vec<u64> = (0..3).map(|k| get(&self.depth[k][d])).collect();
            println!(
                "  {:<28} {:>12} {:>12} {:>12} {:>12}",
                name,
                row[0],
                row[1],
                row[2],
                row.iter().sum::<u64>()
            );
        }
    }
}

const DEFAULT_ITERATIONS: u64 = 25_000;

#[test]
fn fuzz_decoders() {
    let seeds = corpus();
    for s in &seeds {
        assert_eq!(
            reference_decode(&s.bytes).as_ref(),
            Some(&s.chunks),
            "seed {} must be valid",
            s.name
        );
    }
    let run_seed = fuzz_driver::run_seed();
    if let Some(only) = fuzz_driver::only_input() {
        let input = make_input(run_seed, only, &seeds);
        println!(
            "input {only} of seed {run_seed:#x}: from {}, {} bytes, hole {:?}, recomputed {}",
            seeds[input.seed].name,
            input.bytes.len(),
            input.hole,
            input.recomputed
        );
        println!("{:02x?}", input.bytes);
        let r = run_one(&input, &seeds);
        assert!(r.is_ok(), "{:?}", r.err());
        return;
    }
    println!("fuzz_decoders: {} seed files", seeds.len());
    for s in &seeds {
        println!("  seed {:<32} {:>6} bytes", s.name, s.bytes.len());
    }
    let stats = Stats::default();
    let totals = fuzz_driver::drive(
        "fuzz_decoders",
        run_seed,
        DEFAULT_ITERATIONS,
        &|i| run_one(&make_input(run_seed, i, &seeds), &seeds),
        &|o| stats.add(o),
    );
    stats.print();
    totals.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Regression tests for what fuzzing found.

/// A version 2 file of one chunk at `level` whose frame claims `raw_len`, all checksums
/// recomputed (so only the length check and decompression can refuse it).
fn file_claiming(level: u8, raw: &[u8], raw_len: u64) -> Vec<u8> {
    let bytes = write_v2(&[raw.to_vec()], level);
    let mut m = V2Model::parse(&bytes, &[raw.to_vec()]).expect("parse");
    m.frames[0].raw_len = raw_len;
    m.fix_frame_crcs();
    m.fix_header_crc();
    m.encode()
}

#[test]
fn a_frame_claiming_gigabytes_allocates_no_such_buffer() {
    let raw = b"some chunk bytes, some chunk bytes, some chunk bytes".to_vec();
    for level in [0u8, 1, 6, 9] {
        for claim in [4u64 << 30, (4 << 30) - 1, 1 << 40, u64::MAX, 64 << 20] {
            let fs = MemFs::new();
            fs.put("/f", file_claiming(level, &raw, claim));
            let ((verify, read), peak, largest) = tracked(|| {
                let mut f = TableFile::open(&fs, Path::new("/f")).expect("header is valid");
                // CRC-valid frames: beyond the format's limit the claim alone is refused.
                let frames = frames_only(&mut f).map_err(|e| e.reason);
                let expected = if claim > MAX_CHUNK_LEN {
                    Err(Reason::BadFile)
                } else {
                    Ok(())
                };
                assert_eq!(frames, expected, "level {level} claim {claim}");
                let verify = f.verify().map_err(|e| e.reason);
                let read = read_all(&mut f).map_err(|e| e.reason);
                (verify, read)
            });
            assert_eq!(verify, Err(Reason::BadFile), "level {level} claim {claim}");
            assert_eq!(read, Err(Reason::BadFile), "level {level} claim {claim}");
            assert!(
                peak < 4 << 20 && largest < 1 << 20,
                "level {level} claim {claim}: peak {peak}, largest allocation {largest}"
            );
        }
    }
}

#[test]
fn a_highly_compressible_chunk_still_decodes() {
    // 8 MiB of zeros: stored in a few hundred bytes, far beyond the eager ratio. Its size is
    // confirmed by decompressing before the chunk's buffer is allocated: in a bounded window
    // for independent frames; for the zstd stream the writer uses (level >= 1), into memory
    // that grows with the real output only, so a wrong claim costs at most the real size.
    let raw = vec![0u8; 8 << 20];
    for level in [1u8, 9] {
        let fs = MemFs::new();
        fs.put("/f", write_v2(std::slice::from_ref(&raw), level));
        let mut f = TableFile::open(&fs, Path::new("/f")).expect("open");
        assert_eq!(f.verify(), Ok(()));
        assert_eq!(read_all(&mut f).expect("read"), vec![raw.clone()]);
        // One byte more or less than the truth is refused, without the buffer.
        for claim in [raw.len() as u64 - 1, raw.len() as u64 + 1] {
            fs.put("/g", file_claiming(level, &raw, claim));
            let mut g = TableFile::open(&fs, Path::new("/g")).expect("open");
            let (r, peak, _) = tracked(|| g.verify().map_err(|e| e.reason));
            assert_eq!(r, Err(Reason::BadFile));
            assert!(peak < 2 * raw.len() as u64 + (4 << 20), "peak {peak}");
        }
    }
}

/// Input 3,222,403 of seed 0x3f2c1d0e5a6b7c8d: a codec 2 file whose second frame is a
/// complete zstd frame of its own, while the stream is inside the frame header that the
/// first frame started. zstd decodes such a stream differently depending on the size of the
/// output window it is given, so the core's windows depend only on the frame's `raw_len`
/// and the output so far: the file reads the same every time, and the oracle (same window
/// rule) agrees.
#[test]
fn a_stream_frame_reads_the_same_whatever_was_read_before() {
    let hex = "50544142 4c450200 40000000 02010000 64000000 00401e18 240a0600 03000000 \
               00000000 23000000 00000000 02000000 00000000 60000000 00000000 d97e6a20 \
               431532d3 180a36d4 c38e39da 415f708a 00000000 00000000 05000000 00000000 \
               08000000 00000000 c294d338 0580062d 9a1702ed 28b52ffd 60f80600 00000000 \
               00130000 00000000 001b0000 00000000 00d97e6a 20431532 d3f8d870 0e28b52f \
               fd60f805 4d000010 cece0100 f3fe000b";
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    let bytes: Vec<u8> = digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 176);
    assert_eq!(reference_v2(&bytes), None);
    let fs = MemFs::new();
    fs.put("/f", bytes);
    let mut f = TableFile::open(&fs, Path::new("/f")).expect("header is valid");
    assert_eq!(frames_only(&mut f), Ok(()));
    for _ in 0..3 {
        assert_eq!(f.verify().map_err(|e| e.reason), Err(Reason::BadFile));
        assert_eq!(read_all(&mut f).map_err(|e| e.reason), Err(Reason::BadFile));
        f.rewind().unwrap();
    }
}
