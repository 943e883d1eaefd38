//! Choosing the file a restore reads: the newest one that verifies completely.

use super::log::{find_log, FoundLog};
use super::quarantine::quarantine_file;
use super::{lock_dir, open_verified, TableDir};
use crate::error::{Error, Reason, Result};
use crate::format::HeaderV2;
use crate::fs::Fs;
use crate::reader::TableFile;
use std::path::{Path, PathBuf};

/// Which file a restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stable,
    Backup,
    /// A complete, verified tmp file left by a persist that was cut off after fsyncing it.
    Tmp,
}

impl SourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Stable => "stable",
            SourceKind::Backup => "backup",
            SourceKind::Tmp => "tmp",
        }
    }
}

/// What a restore does with the change log of each file it tries, in two steps, so that
/// the second can run on another thread while the file verifies (a restore's first pass
/// over a log at 1M rows costs about as much as verifying the base).
pub trait LogPlanner: Sync {
    /// What [`load`](Self::load) read.
    type Loaded: Send;
    /// What [`plan`](Self::plan) made of it.
    type Planned: Send;
    /// Reads what the plan needs, on the calling thread, before the file verifies: file
    /// system calls are made in one order whatever runs in parallel afterwards.
    fn load(&self, found: FoundLog, base: &HeaderV2) -> Self::Loaded;
    /// Whether planning `loaded` makes no file-system call, so may overlap verification.
    fn in_memory(&self, loaded: &Self::Loaded) -> bool;
    fn plan(&self, loaded: Self::Loaded) -> Self::Planned;
}

/// Finds the log and leaves it as found, read past its header.
pub struct FindOnly;

impl LogPlanner for FindOnly {
    type Loaded = FoundLog;
    type Planned = FoundLog;

    fn load(&self, found: FoundLog, _base: &HeaderV2) -> FoundLog {
        found
    }

    fn in_memory(&self, _loaded: &FoundLog) -> bool {
        false
    }

    fn plan(&self, loaded: FoundLog) -> FoundLog {
        loaded
    }
}

/// The verified file a restore reads, the log that continues it, and the files that failed
/// before it.
pub struct RestoreSource<L = FoundLog> {
    pub file: TableFile,
    pub kind: SourceKind,
    /// The change log whose header names `file`, as the [`LogPlanner`] left it.
    pub log: Option<L>,
    pub failures: Vec<Error>,
    /// Where corrupt files were moved (see [`open_newest_valid`]).
    pub quarantined: Vec<PathBuf>,
}

/// Why nothing could be restored, and every file that failed.
#[derive(Debug)]
pub struct RestoreFailure {
    /// `enoent` when neither the stable nor the backup file exists, else the failure of the
    /// last existing file tried.
    pub error: Error,
    pub failures: Vec<Error>,
    pub quarantined: Vec<PathBuf>,
}

/// What [`open_newest_valid`] found, taken apart the same way whatever the outcome: the file
/// and its kind (or why there is none), the files that failed, and where corrupt ones went.
#[allow(clippy::type_complexity)]
pub fn restore_parts<L>(
    found: std::result::Result<RestoreSource<L>, RestoreFailure>,
) -> (
    Result<(TableFile, SourceKind, Option<L>)>,
    Vec<Error>,
    Vec<PathBuf>,
) {
    match found {
        Ok(s) => (Ok((s.file, s.kind, s.log)), s.failures, s.quarantined),
        Err(none) => (Err(none.error), none.failures, none.quarantined),
    }
}

/// Finds the newest file that verifies completely: stable, then backup, then a complete tmp
/// file, and the change log that continues it (see `log`: a log that exists but cannot be
/// read is among the failures). The returned file is rewound to its first chunk and stays
/// open, so a concurrent persist renaming files does not change what is read.
///
/// With `quarantine: Some(max)`, a stable or backup file that is corrupt is moved aside to
/// `<name>.corrupt-<UTC timestamp>` (keeping at most `max` such files) so that no later
/// persist overwrites the evidence. That happens only when the directory lock is free, and
/// only after the file is checked again under the lock.
pub fn open_newest_valid(
    fs: &dyn Fs,
    dir: &TableDir,
    quarantine: Option<usize>,
) -> std::result::Result<RestoreSource, RestoreFailure> {
    open_newest_planned(fs, dir, quarantine, &FindOnly)
}

/// [`open_newest_valid`], with each candidate's log handed to `planner`: loaded before the
/// candidate verifies, then planned, while it verifies when the plan needs no file. A plan
/// made for a candidate that fails verification is dropped.
pub fn open_newest_planned<P: LogPlanner>(
    fs: &dyn Fs,
    dir: &TableDir,
    quarantine: Option<usize>,
    planner: &P,
) -> std::result::Result<RestoreSource<P::Planned>, RestoreFailure> {
    let mut failures = Vec::new();
    let mut corrupt = Vec::new();
    let mut found = None;
    for (kind, path) in [
        (SourceKind::Stable, dir.stable()),
        (SourceKind::Backup, dir.backup()),
    ] {
        match open_candidate(fs, dir, &path, planner) {
            Ok(candidate) => {
                found = Some((candidate, kind));
                break;
            }
            Err(e) if e.reason == Reason::Enoent => {}
            Err(e) => {
                if e.reason.is_corruption() {
                    corrupt.push(path);
                }
                failures.push(e);
            }
        }
    }
    // Only a file that verifies in full counts: a tmp file is written header-last.
    if found.is_none() {
        if let Ok(candidate) = open_candidate(fs, dir, &dir.tmp(), planner) {
            found = Some((candidate, SourceKind::Tmp));
        }
    }
    let quarantined = match quarantine {
        Some(max) if !corrupt.is_empty() => quarantine_corrupt(fs, dir, &corrupt, max),
        _ => Vec::new(),
    };
    match found {
        Some(((file, log, log_failures), kind)) => {
            failures.extend(log_failures);
            Ok(RestoreSource {
                file,
                kind,
                log,
                failures,
                quarantined,
            })
        }
        None => {
            let error = failures
                .last()
                .cloned()
                .unwrap_or_else(|| Error::new(Reason::Enoent, &dir.stable()));
            Err(RestoreFailure {
                error,
                failures,
                quarantined,
            })
        }
    }
}

/// A candidate that verified, its log as `planner` left it (when one names it), and the
/// logs that could not be read.
type Candidate<L> = (TableFile, Option<L>, Vec<Error>);

/// Opens the file at `path` and verifies it completely, planning its log meanwhile.
fn open_candidate<P: LogPlanner>(
    fs: &dyn Fs,
    dir: &TableDir,
    path: &Path,
    planner: &P,
) -> Result<Candidate<P::Planned>> {
    let mut file = TableFile::open(fs, path)?;
    let Some(header) = file.header().current().copied() else {
        file.verify()?;
        return Ok((file, None, Vec::new()));
    };
    let (log, log_failures) = find_log(fs, dir, &header);
    let Some(log) = log else {
        file.verify()?;
        return Ok((file, None, log_failures));
    };
    let loaded = planner.load(log, &header);
    if !planner.in_memory(&loaded) {
        file.verify()?;
        return Ok((file, Some(planner.plan(loaded)), log_failures));
    }
    let mut loaded = Some(loaded);
    let (verified, planned) = std::thread::scope(|scope| {
        let planning = std::thread::Builder::new()
            .name("ptable_log_plan".into())
            .spawn_scoped(scope, || loaded.take().map(|l| planner.plan(l)));
        let verified = file.verify();
        // A panic in the plan is this call's, as if it had planned on this thread.
        let planned = planning.ok().and_then(|thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (verified, planned)
    });
    verified?;
    // No thread could be started: the plan is made here.
    let planned = planned.or_else(|| loaded.map(|l| planner.plan(l)));
    Ok((file, planned, log_failures))
}

/// Moves the files in `corrupt` aside if the lock is free and they are still corrupt.
fn quarantine_corrupt(
    fs: &dyn Fs,
    dir: &TableDir,
    corrupt: &[PathBuf],
    max: usize,
) -> Vec<PathBuf> {
    let Ok(_lock) = lock_dir(fs, dir) else {
        return Vec::new();
    };
    corrupt
        .iter()
        .filter(|path| matches!(open_verified(fs, path), Err(e) if e.reason.is_corruption()))
        .filter_map(|path| quarantine_file(fs, dir, path, max).ok())
        .collect()
}
