//! Helpers shared by the integration tests: write tables through the real protocol and read
//! them back as lists of raw chunks.
#![allow(dead_code)]

pub mod crash;
pub mod errnos;
pub mod forge;
pub mod log_scenarios;
pub mod restore_steps;
pub mod scenarios;
pub mod simfs;

use ptable_core::{
    open_newest_valid, CommitOutcome, Fs, PersistSession, SourceKind, StdFs, TableDir, TableFile,
    WriteOptions,
};
use std::path::Path;
use std::sync::Arc;

pub fn std_fs() -> Arc<dyn Fs> {
    Arc::new(StdFs)
}

pub fn options(level: u8) -> WriteOptions {
    WriteOptions {
        level,
        chunk_rows: 1000,
    }
}

/// Deterministic pseudo-random chunk contents (xorshift), compressible like real data.
pub fn chunks(count: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    (0..count)
        .map(|_| {
            (0..size)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if i % 3 == 0 {
                        (state % 7) as u8
                    } else {
                        b'a' + (state % 26) as u8
                    }
                })
                .collect()
        })
        .collect()
}

/// Chunks that look like encoded property rows: repeated path segments, varying numbers.
pub fn property_like_chunks(count: usize, rows: usize) -> Vec<Vec<u8>> {
    const WORDS: [&str; 8] = [
        "net", "wlan0", "eth0", "ipv4", "address", "state", "config", "sensor",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let mut out = Vec::new();
            for _ in 0..rows {
                for _ in 0..(2 + next() % 4) {
                    out.extend_from_slice(WORDS[(next() % 8) as usize].as_bytes());
                    out.push(b'/');
                }
                out.extend_from_slice(
                    format!("={};{:x}\n", next() % 10_000, next() % 65_536).as_bytes(),
                );
            }
            out
        })
        .collect()
}

/// Persists `chunks` (10 rows each) into `dir`.
pub fn persist(fs: &Arc<dyn Fs>, dir: &TableDir, chunks: &[Vec<u8>], level: u8) -> CommitOutcome {
    let mut session = PersistSession::begin(fs.clone(), dir.clone(), options(level)).unwrap();
    // As the NIF does: the table's size is known up front (large files get two streams).
    session.expect_rows(10 * chunks.len() as u64);
    // Whatever this machine's cores: large files get two streams, so tests cover them.
    session.allow_two_streams(true);
    for c in chunks {
        session.append(c, 10).unwrap();
    }
    session.commit().unwrap()
}

/// Every chunk of a verified file.
pub fn read_all(file: &mut TableFile) -> ptable_core::Result<Vec<Vec<u8>>> {
    file.verify()?;
    let mut out = Vec::new();
    while let Some(chunk) = file.next_chunk(|n| Some(vec![0u8; n]))? {
        out.push(chunk.data);
    }
    Ok(out)
}

/// What a restore of `dir` yields: the chunks and which file they came from.
pub fn restore(
    fs: &dyn Fs,
    dir: &TableDir,
) -> Result<(Vec<Vec<u8>>, SourceKind), ptable_core::Reason> {
    let mut source = open_newest_valid(fs, dir, None).map_err(|f| f.error.reason)?;
    let chunks = read_all(&mut source.file).map_err(|e| e.reason)?;
    Ok((chunks, source.kind))
}

/// Reads one file completely; any failure is an error.
pub fn read_file(path: &Path) -> ptable_core::Result<Vec<Vec<u8>>> {
    let mut file = TableFile::open(&StdFs, path)?;
    read_all(&mut file)
}
