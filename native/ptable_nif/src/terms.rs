//! The terms the NIFs exchange with `PropertyTable.Persist.Native` (which defines the same
//! structs and types): derived maps, structs and tagged tuples, never positional tuples.

use ptable_core::change_log::LogStop;
use ptable_core::fs::path_from_bytes;
use ptable_core::{Error, FileReport, SnapshotEntry};
use rustler::types::atom;
use rustler::{Atom, Binary, Decoder, Encoder, Env, NewBinary, NifMap, NifResult, NifStruct};
use rustler::{NifTaggedEnum, Term};
use std::path::PathBuf;

/// A path as a binary of its bytes, both ways (rustler's `Path` encoding requires UTF-8).
pub struct RawPath(pub PathBuf);

impl Encoder for RawPath {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let bytes = self.0.as_os_str().as_encoded_bytes();
        let mut out = NewBinary::new(env, bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        Binary::from(out).to_term(env)
    }
}

impl<'a> Decoder<'a> for RawPath {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        Ok(RawPath(path_from_bytes(term.decode_as_binary()?.as_slice())))
    }
}

/// An atom named by one of the core's fixed sets of static names (reasons, roles, kinds).
#[derive(Clone, Copy)]
pub struct Name(pub &'static str);

impl Encoder for Name {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        // Only a name longer than an atom can be fails, and no static name is.
        Atom::from_str(env, self.0).unwrap_or_else(|_| atom::error()).encode(env)
    }
}

/// `%{reason: atom, path: binary | nil}`: why a call failed, and the file concerned.
#[derive(NifMap)]
#[rustler(encode)]
pub struct Failure {
    pub reason: Name,
    pub path: Option<RawPath>,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { reason: Name(e.reason.as_str()), path: e.path.map(RawPath) }
    }
}

/// How to persist: `%{level, chunk_rows, expected_rows, max_quarantined, log_compaction,
/// full}` (see `PropertyTable.Persist.Native.persist_begin/2`).
#[derive(NifMap)]
pub struct PersistArgs {
    pub level: u8,
    pub chunk_rows: u32,
    pub expected_rows: u64,
    pub max_quarantined: u64,
    pub log_compaction: f64,
    pub full: bool,
}

/// `{:ok, value}` or `{:error, failure}`.
pub type Answer<T> = Result<T, Failure>;

pub fn answer<T>(result: ptable_core::Result<T>) -> Answer<T> {
    result.map_err(Failure::from)
}

/// `:ok`, `:full` (no room in the writer's queue now), `:busy` (a close that needs its dirty
/// counterpart) or `{:error, failure}`.
#[derive(NifTaggedEnum)]
#[rustler(encode)]
pub enum Status {
    Ok,
    Full,
    Busy,
    Error(Failure),
}

impl Status {
    /// `:ok` when `done`, else `otherwise`.
    pub fn ok_or(done: bool, otherwise: Status) -> Status {
        if done {
            Status::Ok
        } else {
            otherwise
        }
    }
}

impl From<ptable_core::Result<()>> for Status {
    fn from(result: ptable_core::Result<()>) -> Self {
        result.map_or_else(|e| Status::Error(e.into()), |()| Status::Ok)
    }
}

/// `%{id: string, sequence: integer | nil, created_us: integer}`
#[derive(NifMap)]
#[rustler(encode)]
pub struct Snapshot {
    id: String,
    sequence: Option<u64>,
    created_us: i64,
}

impl From<&SnapshotEntry> for Snapshot {
    fn from(e: &SnapshotEntry) -> Self {
        Snapshot { id: e.id.as_str().into(), sequence: e.sequence, created_us: e.created_unix_us }
    }
}

/// One file of a table directory as `inspect` sees it.
#[derive(NifStruct)]
#[module = "PropertyTable.Persist.Native.FileInfo"]
#[rustler(encode)]
pub struct FileInfo {
    path: RawPath,
    kind: Name,
    size: u64,
    modified_us: i64,
    format_version: Option<u8>,
    created_us: Option<i64>,
    sequence: Option<u64>,
    rows: Option<u64>,
    compression: Option<u8>,
    status: Name,
    base_sequence: Option<u64>,
    continues: Option<Name>,
    records: Option<u64>,
    valid_bytes: Option<u64>,
    stop_reason: Option<Name>,
    stop_offset: Option<u64>,
}

impl From<&FileReport> for FileInfo {
    fn from(r: &FileReport) -> Self {
        let h = r.header.as_ref().and_then(|h| h.current());
        let log = r.log.as_ref();
        let read = log.and_then(|l| l.read);
        let fault = match read.and_then(|read| read.stop) {
            Some(LogStop::Invalid { offset, fault }) => Some((offset, fault)),
            _ => None,
        };
        FileInfo {
            path: RawPath(r.path.clone()),
            kind: Name(r.role.as_str()),
            size: r.size,
            modified_us: r.modified_unix_us,
            format_version: r.header.map(|h| h.version()),
            created_us: h.map(|h| h.created_unix_us).or(log.map(|l| l.header.created_unix_us)),
            sequence: h.map(|h| h.sequence),
            rows: h.map(|h| h.row_count),
            compression: h.map(|h| h.level),
            status: Name(r.status.as_str()),
            base_sequence: log.map(|l| l.header.base_sequence),
            continues: log.map(|l| Name(l.continues_as_str())),
            records: read.map(|read| read.records),
            valid_bytes: read.map(|read| read.valid_bytes),
            stop_reason: fault.map(|(_, fault)| Name(fault.as_str())),
            stop_offset: fault.map(|(offset, _)| offset),
        }
    }
}
