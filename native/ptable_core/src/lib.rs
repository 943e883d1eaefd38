//! The pure-Rust core of `PropertyTable.Persist`: the on-disk format (see `format`), chunk
//! compression and checksums, and the crash-safe persist / restore / snapshot protocol over a
//! filesystem abstraction (`fs::Fs`) that tests can record and break.
//!
//! Rows are opaque here: each chunk is the Erlang external term format of a list of
//! `{property, value}` pairs, encoded and decoded by the VM (`etf` only inflates the
//! compressed terms of legacy files, which the VM's NIF interface does not decode).
//! For incremental persistence, `etf_rows` finds each pair's bytes in a chunk without
//! decoding it, `change_index` keeps hashes of the persisted pairs, `change_log` is the
//! append-only log of changed pairs, and `log_apply` replays a log over its base.

pub mod change_index;
pub mod change_log;
pub mod codec;
pub mod error;
pub mod etf;
pub mod etf_rows;
pub mod format;
pub mod fs;
pub mod inspect;
pub mod log_apply;
pub mod pipeline;
pub mod reader;
pub mod snapshot_id;
pub mod table_dir;
pub mod writer;

pub use error::{Error, LogStopAt, Reason, Result};
pub use fs::{Fs, StdFs};
pub use inspect::{inspect_dir, FileReport, FileRole, FileStatus, LogRead, LogReport};
pub use pipeline::{ChunkConsumer, PersistPipeline, RestorePipeline, Step, StepSink};
pub use reader::{Chunk, FileHeader, TableFile};
pub use snapshot_id::SnapshotId;
pub use table_dir::{
    count_limit, list_snapshots, open_newest_valid, restore_parts, restore_snapshot,
    restore_snapshot_keeping, Baselines, CommitOutcome, PersistConfig, PersistSession,
    RestoreFailure, RestoreSource, SnapshotEntry, SourceKind, TableDir,
};
pub use writer::{ChunkWriter, Stamp, WriteOptions};
