//! Sparse files whose headers claim far more than the disk holds: a version 2 file whose
//! header and frame header carry valid CRCs and whose one frame claims `stored_len` bytes,
//! extended with `File::set_len` to exactly the length the header announces (a hole: a few
//! KiB on disk), and legacy files claiming a huge payload the same way.
//!
//! Every entry point (restore selection, persist meeting such a stable file or backup,
//! inspect, `TableFile`) must reject them as corrupt, quickly, and without allocating what
//! they claim: the counting allocator bounds the peak of live bytes of each call.

mod common;
mod counting_alloc;
mod zeros_crc;

use common::*;
use counting_alloc::tracked;
use ptable_core::format::{FrameHeader, HeaderV2, MAX_STORED_LEN};
use ptable_core::{
    inspect_dir, open_newest_valid, FileRole, FileStatus, Fs, PersistSession, SourceKind, Stamp,
    StdFs, TableDir, TableFile,
};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use zeros_crc::zeros_crc;

/// What any call on such a file may allocate, whatever it claims.
const MEMORY_BOUND: u64 = 16 << 20;

/// Stored lengths claimed: the 2^43, 1 GiB, and one under the format's cap (still
/// far more than `MEMORY_BOUND`), which is read to find its CRC wrong.
const CLAIMS: [u64; 3] = [1 << 43, 1 << 30, 20 << 20];

/// How the crafted frame's CRC is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameCrc {
    /// Over the frame's index and header fields only, as if it stored nothing: the hole's
    /// zeros do not match it.
    HeaderOnly,
    /// Over the header fields and the hole's zeros: every CRC of the file is valid.
    OverHole,
}

/// Extends `file` to `len` bytes with a hole; `false` (and a message) when the filesystem
/// refuses that size.
fn extend_sparse(file: &File, path: &Path, len: u64) -> bool {
    match file.set_len(len) {
        Ok(()) => {
            let meta = file.metadata().unwrap();
            println!(
                "{}: apparent size {}, {} bytes on disk",
                path.display(),
                meta.len(),
                meta.blocks() * 512
            );
            true
        }
        Err(e) => {
            println!("SKIPPED {len}-byte sparse file: the filesystem refuses it ({e})");
            false
        }
    }
}

/// Writes at `path` a version 2 file (codec 2, level 6, as persist writes with the default
/// options) of one frame claiming `stored_len` stored bytes and as many raw bytes, its
/// header CRC valid, its frame CRC as `crc` says, its length exactly what the header
/// announces (80 + 36 + `stored_len`), all but the headers a hole.
fn write_sparse_v2(path: &Path, stored_len: u64, crc: FrameCrc) -> bool {
    let header = HeaderV2 {
        codec: 2,
        level: 6,
        flags: 0,
        chunk_rows: options(6).chunk_rows,
        created_unix_us: 1_700_000_000_000_000,
        sequence: 1_000,
        row_count: 10,
        chunk_count: 1,
        payload_len: 36 + stored_len,
        content_digest: [0; 16],
    };
    let mut frame = FrameHeader {
        raw_len: stored_len,
        stored_len,
        row_count: 10,
        raw_hash: 0,
        crc: 0,
    };
    frame.crc = frame.expected_crc(0, &[]);
    if crc == FrameCrc::OverHole {
        let mut h = crc32fast::Hasher::new();
        h.update(&0u64.to_le_bytes());
        for v in [
            frame.raw_len,
            frame.stored_len,
            frame.row_count,
            frame.raw_hash,
        ] {
            h.update(&v.to_le_bytes());
        }
        h.combine(&zeros_crc(stored_len));
        frame.crc = h.finalize();
    }
    let mut bytes = header.encode();
    frame.encode_into(&mut bytes);
    assert_eq!(bytes.len(), 116);
    let mut file = File::create(path).unwrap();
    file.write_all(&bytes).unwrap();
    extend_sparse(&file, path, 116 + stored_len)
}

/// Writes at `path` a legacy file claiming a `payload_len`-byte payload: its 16-byte header,
/// then a hole where the payload and the MD5 would be.
fn write_sparse_legacy(path: &Path, payload_len: u64) -> bool {
    let mut file = File::create(path).unwrap();
    file.write_all(b"PTABLE\x01\x00").unwrap();
    file.write_all(&payload_len.to_be_bytes()).unwrap();
    extend_sparse(&file, path, 16 + payload_len + 16)
}

/// A crafted sparse file.
#[derive(Debug, Clone, Copy)]
enum Crafted {
    V2 { stored_len: u64, crc: FrameCrc },
    Legacy { payload_len: u64 },
}

impl Crafted {
    /// Every case: each claim, as a version 2 file (its frame CRC over the header only, and
    /// over the hole too where the format's limit refuses the claim) and as a legacy file.
    fn all() -> Vec<Crafted> {
        let mut files = Vec::new();
        for claim in CLAIMS {
            files.push(Crafted::V2 {
                stored_len: claim,
                crc: FrameCrc::HeaderOnly,
            });
            // A CRC-valid hole within the limit is data as far as the CRC can tell: it is
            // read like data (and refused by decompression), which the fuzzer covers.
            if claim > MAX_STORED_LEN {
                files.push(Crafted::V2 {
                    stored_len: claim,
                    crc: FrameCrc::OverHole,
                });
            }
            files.push(Crafted::Legacy { payload_len: claim });
        }
        files
    }

    fn name(&self) -> String {
        format!("{self:?}")
    }

    /// Makes the file at `path`; `false` when the filesystem refuses its size.
    fn write(&self, path: &Path) -> bool {
        match *self {
            Crafted::V2 { stored_len, crc } => write_sparse_v2(path, stored_len, crc),
            Crafted::Legacy { payload_len } => write_sparse_legacy(path, payload_len),
        }
    }
}

fn assert_bounded(what: &str, peak: u64, largest: u64) {
    assert!(
        peak < MEMORY_BOUND && largest < MEMORY_BOUND,
        "{what}: peak {peak} live bytes, largest allocation {largest} (bound {MEMORY_BOUND})"
    );
}

fn assert_corrupt<T: std::fmt::Debug>(what: &str, r: &ptable_core::Result<T>) {
    match r {
        Err(e) if e.reason.is_corruption() => {}
        other => panic!("{what}: expected bad_file or bad_checksum, got {other:?}"),
    }
}

#[test]
fn table_file_refuses_sparse_claims_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    for crafted in Crafted::all() {
        let name = crafted.name();
        let path = tmp.path().join("f");
        if !crafted.write(&path) {
            continue;
        }
        let results = tracked(|| {
            // Each entry point on a fresh handle: none may lean on an earlier check.
            let fresh = || TableFile::open(&StdFs, &path);
            let open = fresh().map(|_| ());
            let deep = fresh().and_then(|mut f| f.verify());
            let chunk = fresh().and_then(|mut f| {
                f.next_chunk(|n| {
                    let mut v = Vec::new();
                    v.try_reserve_exact(n).ok()?;
                    v.resize(n, 0);
                    Some(v)
                })
                .map(|c| c.map(|c| c.data.len()))
            });
            let frame = fresh().and_then(|mut f| f.next_stored_frame().map(|f| f.is_some()));
            let copy = fresh().and_then(|mut f| {
                let mut out = StdFs.create(&tmp.path().join("copy")).unwrap();
                let stamp = Stamp {
                    sequence: 1,
                    created_unix_us: 0,
                };
                f.copy_to(out.as_mut(), Path::new("copy"), stamp)
            });
            (open, deep, chunk, frame, copy)
        });
        let ((open, deep, chunk, frame, copy), peak, largest) = results;
        println!("{name}: open {open:?}, peak {peak} bytes, largest allocation {largest}");
        if open.is_ok() {
            assert_corrupt(&format!("{name}: verify"), &deep);
            assert_corrupt(&format!("{name}: next_chunk"), &chunk);
            assert_corrupt(&format!("{name}: copy_to"), &copy);
            if matches!(crafted, Crafted::V2 { .. }) {
                assert_corrupt(&format!("{name}: next_stored_frame"), &frame);
            }
        } else {
            assert_corrupt(&format!("{name}: open"), &open);
        }
        assert_bounded(&name, peak, largest);
    }
}

/// A table directory whose backup holds `backup` and whose stable file is `crafted`.
fn dir_with_sparse_stable(
    root: &Path,
    backup: Option<&[Vec<u8>]>,
    crafted: Crafted,
) -> Option<TableDir> {
    let fs = std_fs();
    let dir = TableDir::new(root.join("t"));
    if let Some(backup) = backup {
        persist(&fs, &dir, backup, 6);
        std::fs::rename(dir.stable(), dir.backup()).unwrap();
    } else {
        std::fs::create_dir_all(dir.root()).unwrap();
    }
    crafted.write(&dir.stable()).then_some(dir)
}

fn quarantined(dir: &TableDir) -> Vec<String> {
    std::fs::read_dir(dir.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".corrupt-"))
        .collect()
}

#[test]
fn restore_falls_back_to_the_backup_and_quarantines_the_sparse_file() {
    let backup = chunks(3, 500, 1);
    for crafted in Crafted::all() {
        let name = crafted.name();
        let tmp = tempfile::tempdir().unwrap();
        let Some(dir) = dir_with_sparse_stable(tmp.path(), Some(&backup), crafted) else {
            continue;
        };
        let (found, peak, largest) = tracked(|| {
            let mut source = open_newest_valid(&StdFs, &dir, Some(5)).map_err(|f| f.error)?;
            let data = read_all(&mut source.file)?;
            Ok::<_, ptable_core::Error>((source.kind, data, source.failures))
        });
        let (kind, data, failures) = found.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kind, SourceKind::Backup, "{name}");
        assert_eq!(data, backup, "{name}");
        assert!(
            failures.len() == 1 && failures[0].reason.is_corruption(),
            "{name}: {failures:?}"
        );
        assert_eq!(
            quarantined(&dir).len(),
            1,
            "{name}: the sparse file is kept aside"
        );
        assert!(!dir.stable().exists(), "{name}");
        assert_bounded(&name, peak, largest);

        // Alone, it is a clear error.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_with_sparse_stable(tmp.path(), None, crafted).unwrap();
        let (failed, peak, largest) = tracked(|| open_newest_valid(&StdFs, &dir, Some(5)).err());
        let failure = failed.unwrap_or_else(|| panic!("{name}: restored alone"));
        assert!(failure.error.reason.is_corruption(), "{name}: {failure:?}");
        assert_bounded(&name, peak, largest);
    }
}

#[test]
fn persist_replaces_a_sparse_stable_file_and_keeps_the_good_backup() {
    let fs = std_fs();
    let backup = chunks(3, 500, 1);
    let table = chunks(4, 500, 2);
    for crafted in Crafted::all() {
        let name = crafted.name();
        let tmp = tempfile::tempdir().unwrap();
        let Some(dir) = dir_with_sparse_stable(tmp.path(), Some(&backup), crafted) else {
            continue;
        };
        let good_backup = std::fs::read(dir.backup()).unwrap();
        // The persist that finds the sparse file as its stable file (it is compared chunk
        // by chunk with it, then checked before rotation).
        persist_in_bounded_memory(&fs, &dir, &table, &name);
        assert_eq!(std::fs::read(dir.backup()).unwrap(), good_backup, "{name}");
        assert_eq!(quarantined(&dir).len(), 1, "{name}");
    }
}

/// Persists `table` (a table other than the stable file's) in bounded memory and checks that
/// it is what a restore now loads.
fn persist_in_bounded_memory(fs: &Arc<dyn Fs>, dir: &TableDir, table: &[Vec<u8>], name: &str) {
    let (outcome, peak, largest) = tracked(|| {
        let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(6))?;
        session.allow_two_streams(false);
        for c in table {
            session.append(c, 10)?;
        }
        session.commit()
    });
    assert_eq!(
        outcome,
        Ok(ptable_core::CommitOutcome::Written),
        "{name}: persist"
    );
    assert_bounded(name, peak, largest);
    assert_eq!(
        restore(fs.as_ref(), dir),
        Ok((table.to_vec(), SourceKind::Stable))
    );
}

#[test]
fn persist_rotates_over_a_sparse_backup() {
    let fs = std_fs();
    let stable = chunks(3, 500, 1);
    let table = chunks(2, 500, 2);
    for crafted in Crafted::all() {
        let name = crafted.name();
        let tmp = tempfile::tempdir().unwrap();
        let dir = TableDir::new(tmp.path().join("t"));
        persist(&fs, &dir, &stable, 6);
        if !crafted.write(&dir.backup()) {
            continue;
        }
        persist_in_bounded_memory(&fs, &dir, &table, &name);
        assert_eq!(read_file(&dir.backup()), Ok(stable.clone()), "{name}");
    }
}

#[test]
fn inspect_reports_sparse_files_corrupt_in_bounded_memory() {
    let backup = chunks(2, 300, 1);
    for crafted in Crafted::all() {
        let name = crafted.name();
        let tmp = tempfile::tempdir().unwrap();
        let Some(dir) = dir_with_sparse_stable(tmp.path(), Some(&backup), crafted) else {
            continue;
        };
        for verify in [false, true] {
            let (reports, peak, largest) = tracked(|| inspect_dir(&StdFs, &dir, verify));
            let reports = reports.unwrap();
            assert_bounded(&name, peak, largest);
            let status = |role| {
                reports
                    .iter()
                    .find(|r| r.role == role)
                    .map(|r| r.status)
                    .unwrap()
            };
            let backup_status = if verify {
                FileStatus::Valid
            } else {
                FileStatus::Unverified
            };
            assert_eq!(status(FileRole::Backup), backup_status, "{name}");
            match (verify, status(FileRole::Stable)) {
                (_, FileStatus::Invalid(reason)) => {
                    assert!(reason.is_corruption(), "{name}: {reason:?}")
                }
                // Without `verify` only the header is read, which may be sound.
                (false, FileStatus::Unverified) => {}
                (true, status) => panic!("{name}: inspect gave {status:?} for a sparse file"),
                (false, FileStatus::Valid) => panic!("{name}: unverified file reported valid"),
            }
        }
    }
}

#[test]
fn the_writer_refuses_a_chunk_over_the_format_limit() {
    use ptable_core::format::MAX_CHUNK_LEN;
    let fs = std_fs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = TableDir::new(tmp.path().join("t"));
    let old = chunks(2, 100, 1);
    persist(&fs, &dir, &old, 6);
    let before = std::fs::read(dir.stable()).unwrap();
    // Zeroed memory that is never touched: the size is refused before the bytes are read.
    let huge = vec![0u8; MAX_CHUNK_LEN as usize + 1];
    for level in [0u8, 6] {
        let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(level)).unwrap();
        session.append(&old[0], 10).unwrap();
        let err = session.append(&huge, 10).unwrap_err();
        assert_eq!(
            err.reason,
            ptable_core::Reason::ChunkTooLarge,
            "level {level}"
        );
        assert_eq!(
            session.commit().unwrap_err().reason,
            ptable_core::Reason::Closed
        );
        drop(session);
        assert_eq!(
            std::fs::read(dir.stable()).unwrap(),
            before,
            "level {level}"
        );
        assert!(!dir.tmp().exists(), "level {level}");
    }
}
