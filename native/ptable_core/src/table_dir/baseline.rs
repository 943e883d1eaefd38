//! What this VM knows of each table directory's persisted state ([`Baseline`]): the change
//! index of the state, the base file it starts from and the log that continues it. A persist
//! compares the table with it and appends only the difference to the log.
//!
//! A baseline is a cache, never the truth: the files are. Each persist checks it against
//! them first (the stable file's sequence and content digest, the log's length and
//! modification time), so a directory written meanwhile by another VM, restored from a
//! snapshot or tampered with gets a full write, never a record against the wrong state.

use super::TableDir;
use crate::change_index::ChangeIndex;
use crate::change_log::LogHeader;
use crate::format::HeaderV2;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;

/// The base file a state starts from, as its header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseId {
    pub sequence: u64,
    pub content_digest: [u8; 16],
    /// Bytes of the base file: the compaction threshold is a fraction of it.
    pub file_len: u64,
    /// Rows of the base file: the log's operations are held to the same fraction of them.
    pub rows: u64,
}

impl BaseId {
    pub fn of(header: &HeaderV2, file_len: u64) -> Self {
        BaseId {
            sequence: header.sequence,
            content_digest: header.content_digest,
            file_len,
            rows: header.row_count,
        }
    }

    /// Whether `header` is this base's header.
    pub fn is(&self, header: &HeaderV2) -> bool {
        self.sequence == header.sequence && self.content_digest == header.content_digest
    }
}

/// The log continuing a base: where it is and how far it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    pub path: PathBuf,
    pub header: LogHeader,
    /// Bytes of the header and the valid records: where the next record goes.
    pub valid_len: u64,
    /// Valid records; the next one is `records + 1`.
    pub records: u64,
    /// Upserts and deletes of the valid records: a restore decodes each of them twice, so
    /// the compaction threshold bounds their number as well as the log's bytes.
    pub operations: u64,
    /// The file's length and modification time when last read or written, so that a log
    /// changed by someone else is noticed.
    pub file_len: u64,
    pub modified_unix_us: i64,
}

/// The persisted state of one directory: `index` describes the base plus its log's records.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub index: ChangeIndex,
    pub base: BaseId,
    /// `None` while the base has no log (the next record starts one, keyed with
    /// `index.seed()`).
    pub log: Option<LogState>,
}

/// The baselines of every directory this VM persisted or restored, by directory path. Paths
/// are taken as given: two spellings of one directory are two entries, each checked
/// against the files before use.
#[derive(Debug, Default)]
pub struct Baselines {
    by_dir: Mutex<HashMap<PathBuf, Baseline>>,
}

impl Baselines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes and returns the baseline of `dir`: a persist owns it until it puts back the
    /// state it leaves (a failed persist leaves none, so the next one writes a full file).
    pub fn take(&self, dir: &TableDir) -> Option<Baseline> {
        self.by_dir.lock().remove(dir.root())
    }

    pub fn put(&self, dir: &TableDir, baseline: Baseline) {
        self.by_dir
            .lock()
            .insert(dir.root().to_path_buf(), baseline);
    }

    pub fn forget(&self, dir: &TableDir) {
        self.by_dir.lock().remove(dir.root());
    }

    /// Bytes of native memory the indexes hold.
    pub fn heap_bytes(&self) -> usize {
        self.by_dir
            .lock()
            .values()
            .map(|b| b.index.heap_bytes())
            .sum()
    }
}
