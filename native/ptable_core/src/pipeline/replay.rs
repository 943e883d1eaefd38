//! What a restore hands out: the chunks of a verified base file, less the rows its change
//! log supersedes, then the log's final upserts (see `log_apply`), in chunks of one
//! record's, at most the base's chunk size each. Each row of the result is handed out once. On the way it rebuilds the
//! change index of the state it restores, and once every chunk is handed out leaves it as
//! the directory's baseline, so the next persist appends only what changed.

use super::restore::Step;
use crate::change_index::{pair_hash, IndexBuilder, RowHash};
use crate::change_log::{LogReader, LogRecord, LogStop};
use crate::error::{Error, LogStopAt, Reason, Result};
use crate::etf_rows::{self, ListWriter};
use crate::format::HeaderV2;
use crate::fs::Fs;
use crate::log_apply::{LogPlan, PlanBuilder};
use crate::reader::TableFile;
use crate::table_dir::{
    open_newest_planned, restore_parts, BaseId, Baseline, Baselines, FileLogReader, FoundLog,
    LogPlanner, LogState, SourceKind, TableDir,
};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a restore leaves the baseline it rebuilt.
pub struct BaselineKeeper {
    pub baselines: Arc<Baselines>,
    pub dir: TableDir,
}

/// Decoded records a restore keeps from its first pass over the log, as long as they fit in
/// this many bytes, so that the second pass reads, decompresses and parses nothing again
/// (at 100k rows with a log at 0.49 of its base, 12 of the 57 ms the core spent). A larger
/// log is read again: at 1M rows its records would take more than the memory a restore may
/// use beyond the table and its index.
pub const KEPT_RECORDS_BYTES: usize = 8 << 20;

/// Where the second pass gets the log's records.
enum LogSource {
    /// Kept from the first pass, in order.
    Kept(VecDeque<LogRecord>),
    /// Read again, from a reader rewound after the first.
    Reread(FileLogReader),
}

/// A log read once into its plan, and its records for the second pass.
struct LogReplay {
    plan: LogPlan,
    source: LogSource,
    path: PathBuf,
    state: LogState,
    /// Log chunks still to hand out.
    chunks_left: u64,
    /// Most rows per log chunk: the base's chunk size. A whole record's upserts in one
    /// chunk (8-10k rows per 1% persist at 1M rows, base chunks of 1000) took the VM 20-27
    /// MiB more memory by the end of a restore (VmRSS after each chunk, at 1M rows).
    chunk_rows: usize,
    /// The record being handed out, and its next upsert to look at.
    current: Option<(LogRecord, usize)>,
}

/// A verified base file and the log records that follow it.
pub struct Replay {
    file: TableFile,
    log: Option<LogReplay>,
    /// Hash seed of the rebuilt index: the log's, since its deletes are hashes.
    seed: u64,
    builder: Option<IndexBuilder>,
    keeper: Option<BaselineKeeper>,
    in_log: bool,
    buffer: Vec<u8>,
    filtered: Vec<u8>,
    /// Whether the chunk to hand out is in `filtered` (else in `buffer`).
    out_filtered: bool,
    lookup: Lookup,
}

/// Base rows looked up in the plan together: enough for their cache misses to overlap
/// (see [`LogPlan::supersedes_each`]), few enough that the buffers below stay at about 60
/// KiB however many rows a chunk holds.
const LOOKUP_BATCH: usize = 1024;

/// A batch of a base chunk's rows, kept between chunks so that filtering allocates once.
#[derive(Default)]
struct Lookup {
    /// Each row's hashes and its bytes' place in the chunk.
    rows: Vec<(RowHash, Range<usize>)>,
    properties: Vec<u64>,
    superseded: Vec<bool>,
}

/// A log's records from the first that did not verify on are not applied: the error that
/// says so (reported with the files a restore skipped).
pub fn log_stop_error(stop: Option<LogStop>, path: &std::path::Path) -> Option<Error> {
    match stop {
        Some(LogStop::Invalid { offset, fault }) => Some(Error {
            log_stop: Some(LogStopAt { offset, fault }),
            ..Error::new(Reason::LogTail, path)
        }),
        _ => None,
    }
}

impl Replay {
    /// A base file alone.
    pub fn base_only(file: TableFile) -> Self {
        Replay {
            file,
            log: None,
            seed: 0,
            builder: None,
            keeper: None,
            in_log: false,
            buffer: Vec::new(),
            filtered: Vec::new(),
            out_filtered: false,
            lookup: Lookup::default(),
        }
    }

    /// `file` (verified and rewound) and the log continuing it, read once now into its
    /// plan (records up to the first that does not verify: that one is pushed onto
    /// `failures`). With a `keeper`, the index of the restored state is rebuilt and left as
    /// the directory's baseline once the last chunk is handed out. An I/O error reading the
    /// log is an error: taking it for the end of the log would drop durable records.
    pub fn new(
        file: TableFile,
        log: Option<FoundLog>,
        keeper: Option<BaselineKeeper>,
        failures: &mut Vec<Error>,
    ) -> Result<Self> {
        Self::keeping(file, log, keeper, failures, KEPT_RECORDS_BYTES)
    }

    /// [`new`](Self::new), keeping the log's decoded records for the second pass when they
    /// fit in `kept_bytes` (tests take both ways).
    pub fn keeping(
        file: TableFile,
        log: Option<FoundLog>,
        keeper: Option<BaselineKeeper>,
        failures: &mut Vec<Error>,
        kept_bytes: usize,
    ) -> Result<Self> {
        let planner = ReplayPlanner {
            kept_bytes,
            overlap: false,
        };
        let base = file.header().current().copied();
        let planned = log.map(|found| planner.plan(planner.load_for(found, base.as_ref())));
        Self::planned(file, planned, keeper, failures)
    }

    /// [`new`](Self::new) for a log whose first pass was made already (see
    /// [`open_restore`]); its invalid tail is pushed onto `failures`, and its error is this
    /// call's.
    pub fn planned(
        file: TableFile,
        planned: Option<PlannedLog>,
        keeper: Option<BaselineKeeper>,
        failures: &mut Vec<Error>,
    ) -> Result<Self> {
        let mut replay = Replay::base_only(file);
        if let Some(planned) = planned {
            failures.extend(planned.failures);
            let log = planned.replay?;
            replay.seed = log.state.header.hash_seed;
            replay.log = Some(log);
        } else if keeper.is_some() {
            replay.seed = random_seed()?;
        }
        if let (Some(keeper), Some(header)) = (keeper, replay.file.header().current()) {
            // Sized once: growing by doubling would hold the old and the new entries at
            // once (1.5 times the index) at the last step. The file verified completely, so
            // its row count is true.
            let log_rows = replay.log.as_ref().map_or(0, |l| l.plan.final_upserts());
            let rows = usize::try_from(header.row_count).unwrap_or(usize::MAX);
            let capacity = rows.saturating_add(log_rows);
            replay.builder = Some(IndexBuilder::with_capacity(replay.seed, capacity));
            replay.keeper = Some(keeper);
        }
        Ok(replay)
    }

    /// The base file.
    pub fn file(&self) -> &TableFile {
        &self.file
    }

    /// Chunks left to hand out.
    pub fn chunks_left(&self) -> u64 {
        let log = self.log.as_ref().map_or(0, |l| l.chunks_left);
        if self.in_log {
            log
        } else {
            self.file.chunks_left() + log
        }
    }

    /// The next step: a chunk of the base (its superseded rows left out), then the log's.
    pub fn next_step(&mut self) -> Step<'_> {
        if !self.in_log {
            match self.next_base_chunk() {
                Ok(Some(rows)) => return self.chunk_step(rows, false),
                Ok(None) => self.in_log = true,
                Err(e) => return Step::Failed(e),
            }
        }
        match self.next_log_chunk() {
            Ok(Some(rows)) => self.chunk_step(rows, true),
            Ok(None) => {
                // An empty state: no chunk was last.
                self.leave_baseline();
                Step::Done
            }
            Err(e) => Step::Failed(e),
        }
    }

    fn chunk_step(&mut self, rows: Option<u64>, from_log: bool) -> Step<'_> {
        let last = self.chunks_left() == 0;
        if last {
            self.leave_baseline();
        }
        let path = match &self.log {
            Some(log) if from_log => log.path.as_path(),
            _ => self.file.path(),
        };
        let data = if self.out_filtered {
            self.filtered.as_slice()
        } else {
            self.buffer.as_slice()
        };
        Step::Chunk {
            data,
            rows,
            last,
            path,
        }
    }

    /// Reads the base's next chunk into `buffer` (and, with a log, its rows the log does
    /// not supersede into `filtered`); checks the end of the file after the last one.
    /// `None` when no base chunk is left. Returns the chunk's row count.
    fn next_base_chunk(&mut self) -> Result<Option<Option<u64>>> {
        let buffer = &mut self.buffer;
        let chunk = self.file.next_chunk(|len| {
            buffer.clear();
            buffer.try_reserve_exact(len).ok()?;
            buffer.resize(len, 0);
            Some(buffer.as_mut_slice())
        });
        let rows = match chunk {
            Ok(Some(chunk)) => chunk.rows,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.file.chunks_left() == 0 {
            // The end of the file (totals and whole-content digest) is checked before its
            // last chunk is handed out.
            if self.file.next_chunk(|_| None::<Vec<u8>>)?.is_some() {
                return Err(Error::new(Reason::BadFile, self.file.path()));
            }
        }
        self.out_filtered = false;
        if self.log.is_none() && self.builder.is_none() {
            return Ok(Some(rows));
        }
        self.filter_base_chunk().map(|kept| Some(Some(kept)))
    }

    /// Indexes the base chunk's rows and, with a log, keeps in `filtered` those it does not
    /// supersede (when it supersedes any). Returns how many rows are handed out.
    fn filter_base_chunk(&mut self) -> Result<u64> {
        let Replay {
            file,
            log,
            seed,
            builder,
            buffer,
            filtered,
            lookup,
            ..
        } = self;
        let bad_file = || Error::new(Reason::BadFile, file.path());
        let mut pairs = etf_rows::pairs(buffer).map_err(|_| bad_file())?;
        filtered.clear();
        let mut list = log.as_ref().map(|_| ListWriter::start(filtered));
        let (mut all, mut kept) = (0u64, 0u64);
        loop {
            lookup.rows.clear();
            for pair in pairs.by_ref().take(LOOKUP_BATCH) {
                let pair = pair.map_err(|_| bad_file())?;
                lookup
                    .rows
                    .push((RowHash::of(*seed, &pair), pair.spans().0));
            }
            if lookup.rows.is_empty() {
                break;
            }
            all += lookup.rows.len() as u64;
            lookup.superseded.clear();
            if let Some(log) = log.as_ref() {
                lookup.properties.clear();
                let properties = lookup.rows.iter().map(|(row, _)| row.property);
                lookup.properties.extend(properties);
                log.plan
                    .supersedes_each(&lookup.properties, &mut lookup.superseded);
            }
            for (i, (row, span)) in lookup.rows.iter().enumerate() {
                if lookup.superseded.get(i).copied().unwrap_or(false) {
                    continue;
                }
                if builder.as_mut().is_some_and(|b| b.push(*row).is_err()) {
                    *builder = None;
                }
                if let Some(list) = list.as_mut() {
                    list.push(filtered, buffer.get(span.clone()).ok_or_else(bad_file)?);
                }
                kept += 1;
            }
        }
        if kept == all {
            return Ok(all);
        }
        if let Some(list) = list {
            list.finish(filtered).ok_or_else(bad_file)?;
        }
        self.out_filtered = true;
        Ok(kept)
    }

    /// Hands out the log's final upserts (second pass, records up to the plan's), at most
    /// as many per chunk as the base's chunks hold, encoded into `filtered`.
    fn next_log_chunk(&mut self) -> Result<Option<Option<u64>>> {
        let Some(log) = self.log.as_mut() else {
            return Ok(None);
        };
        while log.chunks_left > 0 {
            let (record, from) = match log.current.take() {
                Some(current) => current,
                None => {
                    let next = match &mut log.source {
                        LogSource::Kept(records) => Ok(records.pop_front()),
                        LogSource::Reread(reader) => reader.next_record(),
                    };
                    match next {
                        Ok(Some(record)) if record.sequence <= log.plan.records() => (record, 0),
                        // The record verified in the first pass: the file changed under the
                        // reader.
                        Ok(_) => return Err(Error::new(Reason::BadFile, &log.path)),
                        Err(e) => return Err(Error::io(&e, &log.path)),
                    }
                }
            };
            let mut finals = Vec::new();
            let mut next = None;
            for (i, u) in record.upserts().enumerate().skip(from) {
                if !log.plan.is_final(record.sequence, i) {
                    continue;
                }
                if finals.len() == log.chunk_rows {
                    next = Some(i);
                    break;
                }
                finals.push(u);
            }
            if finals.is_empty() {
                continue;
            }
            log.chunks_left -= 1;
            if let Some(builder) = self.builder.as_mut() {
                let pushed = finals.iter().try_for_each(|u| {
                    builder.push(RowHash {
                        property: u.property_hash,
                        pair: pair_hash(self.seed, u.pair),
                    })
                });
                if pushed.is_err() {
                    self.builder = None;
                }
            }
            self.out_filtered = true;
            self.filtered.clear();
            let pairs = finals.iter().map(|u| u.pair);
            etf_rows::encode_list(pairs, &mut self.filtered)
                .ok_or_else(|| Error::new(Reason::BadFile, &log.path))?;
            let rows = finals.len() as u64;
            drop(finals);
            log.current = next.map(|i| (record, i));
            return Ok(Some(Some(rows)));
        }
        Ok(None)
    }

    /// After the last chunk: the rebuilt index becomes the directory's baseline.
    fn leave_baseline(&mut self) {
        let (Some(keeper), Some(builder)) = (self.keeper.take(), self.builder.take()) else {
            return;
        };
        let Some(header) = self.file.header().current() else {
            return;
        };
        let Ok(index) = builder.finish() else {
            return;
        };
        let file_len = header.encode().len() as u64 + header.payload_len;
        let baseline = Baseline {
            index,
            base: BaseId::of(header, file_len),
            log: self.log.as_ref().map(|l| l.state.clone()),
        };
        keeper.baselines.put(&keeper.dir, baseline);
    }
}

/// Largest rest of a log (after its header) a restore reads into memory before its base
/// verifies, so that the log's first pass overlaps the verification: at 1M rows a log at
/// its compaction threshold is 7.5 MiB, and planning it took 70 ms after the base's 88. A
/// larger log is read record by record after the base verified.
pub const PRELOAD_LOG_BYTES: u64 = 32 << 20;

/// How a restore makes a log's first pass (see [`LogPlanner`]).
pub struct ReplayPlanner {
    kept_bytes: usize,
    /// Whether a log is read into memory first and planned while its base verifies.
    overlap: bool,
}

impl ReplayPlanner {
    /// Overlaps planning and verification when the machine has a second core to do it.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ReplayPlanner {
            kept_bytes: KEPT_RECORDS_BYTES,
            overlap: cores > 1,
        }
    }

    fn load_for(&self, mut found: FoundLog, base: Option<&HeaderV2>) -> LoadedLog {
        // A log follows only a version 2 base, whose header gives its chunk size (1000 is
        // the wrapper's default, for the type's sake).
        let chunk_rows = base.map_or(1000, |h| h.chunk_rows.max(1) as usize);
        let rest = found.file_len.saturating_sub(found.reader.valid_len());
        let preloaded = (self.overlap && rest <= PRELOAD_LOG_BYTES)
            .then(|| read_rest(found.reader.input_mut(), rest));
        LoadedLog {
            found,
            chunk_rows,
            preloaded,
        }
    }
}

impl Default for ReplayPlanner {
    fn default() -> Self {
        Self::new()
    }
}

/// A log found for a base, and the rest of it in memory when it is planned beside the
/// base's verification (or the error reading it).
pub struct LoadedLog {
    found: FoundLog,
    chunk_rows: usize,
    preloaded: Option<std::io::Result<Vec<u8>>>,
}

/// A log's first pass: the log ready to replay, or the error that fails the restore; and
/// the record that did not verify, if one did not.
pub struct PlannedLog {
    replay: Result<LogReplay>,
    failures: Vec<Error>,
}

impl LogPlanner for ReplayPlanner {
    type Loaded = LoadedLog;
    type Planned = PlannedLog;

    fn load(&self, found: FoundLog, base: &HeaderV2) -> LoadedLog {
        self.load_for(found, Some(base))
    }

    fn in_memory(&self, loaded: &LoadedLog) -> bool {
        loaded.preloaded.is_some()
    }

    fn plan(&self, loaded: LoadedLog) -> PlannedLog {
        let LoadedLog {
            found,
            chunk_rows,
            preloaded,
        } = loaded;
        let mut failures = Vec::new();
        let replay = match preloaded {
            Some(Err(e)) => Err(Error::io(&e, &found.path)),
            Some(Ok(rest)) => read_plan(found, Some(&rest), &mut failures, self, chunk_rows),
            None => read_plan(found, None, &mut failures, self, chunk_rows),
        };
        PlannedLog { replay, failures }
    }
}

/// The `len` bytes that follow in `input`, or fewer if it ends first.
fn read_rest(input: &mut impl Read, len: u64) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    let capacity = usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    rest.try_reserve_exact(capacity)
        .map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    input.take(len).read_to_end(&mut rest)?;
    Ok(rest)
}

/// What [`open_restore`] found: the base and log to replay and which file it is (or why
/// there is none), the files it skipped and where corrupt ones were moved.
pub struct OpenedRestore {
    pub replay: Result<(Replay, SourceKind)>,
    pub skipped: Vec<Error>,
    pub quarantined: Vec<PathBuf>,
}

/// Opens the newest file of `dir` that verifies completely and the change log continuing
/// it, read once into its plan while the file verifies (see [`open_newest_planned`]),
/// moving corrupt stable/backup files aside with `quarantine: Some(max)`. Restoring the
/// stable file leaves the rebuilt index in `baselines` for the next persist.
pub fn open_restore(
    fs: &dyn Fs,
    dir: &TableDir,
    quarantine: Option<usize>,
    baselines: Option<&Arc<Baselines>>,
) -> OpenedRestore {
    let planner = ReplayPlanner::new();
    let found = open_newest_planned(fs, dir, quarantine, &planner);
    let (found, mut skipped, quarantined) = restore_parts(found);
    let replay = found.and_then(|(file, kind, log)| {
        let keeper = baselines
            .filter(|_| kind == SourceKind::Stable)
            .map(|b| BaselineKeeper {
                baselines: Arc::clone(b),
                dir: dir.clone(),
            });
        Ok((Replay::planned(file, log, keeper, &mut skipped)?, kind))
    });
    OpenedRestore {
        replay,
        skipped,
        quarantined,
    }
}

/// Reads every record of the log into its plan (from `rest`, the log after its header,
/// when it was read into memory), keeping the records when they fit in the planner's
/// `kept_bytes`, else rewinding the log for the second pass; the log's chunks will hold at
/// most `chunk_rows` rows.
fn read_plan(
    found: FoundLog,
    rest: Option<&[u8]>,
    failures: &mut Vec<Error>,
    planner: &ReplayPlanner,
    chunk_rows: usize,
) -> Result<LogReplay> {
    let FoundLog {
        path,
        reader,
        file_len,
        modified_unix_us,
    } = found;
    let (first, reader) = match rest {
        Some(rest) => {
            let (mut in_memory, input) = reader.replace_input(rest);
            let first = first_pass(&mut in_memory, &path, file_len, planner.kept_bytes);
            (first, in_memory.replace_input(input).0)
        }
        None => {
            let mut reader = reader;
            let first = first_pass(&mut reader, &path, file_len, planner.kept_bytes);
            (first, reader)
        }
    };
    let (plan, kept) = first?;
    failures.extend(log_stop_error(reader.stop(), &path));
    let found = FoundLog {
        path,
        reader,
        file_len,
        modified_unix_us,
    };
    let state = found.state();
    let source = match kept {
        Some(records) => LogSource::Kept(records),
        None => {
            let mut input = found.reader.into_inner();
            input
                .seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(&e, &found.path))?;
            LogSource::Reread(crate::change_log::LogReader::open(input, &found.path)?)
        }
    };
    let chunks_left = plan.chunks(chunk_rows);
    Ok(LogReplay {
        plan,
        source,
        path: found.path,
        state,
        chunks_left,
        chunk_rows,
        current: None,
    })
}

/// The log's plan, and its records when they fit in `kept_bytes`.
fn first_pass<R: Read>(
    reader: &mut LogReader<R>,
    path: &Path,
    file_len: u64,
    kept_bytes: usize,
) -> Result<(LogPlan, Option<VecDeque<LogRecord>>)> {
    let mut plan = PlanBuilder::new();
    // A record's raw payload is never smaller than its stored bytes: a log whose file is
    // larger than the budget is read again, without first holding a budget's worth of it.
    let mut kept = (file_len <= kept_bytes as u64).then(VecDeque::new);
    let mut kept_size = 0usize;
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                plan.add(&record)
                    .map_err(|_| Error::new(Reason::BadFile, path))?;
                kept_size = kept_size.saturating_add(record.heap_bytes());
                match kept.as_mut() {
                    Some(records) if kept_size <= kept_bytes => records.push_back(record),
                    _ => kept = None,
                }
            }
            Ok(None) => break,
            Err(e) => return Err(Error::io(&e, path)),
        }
    }
    Ok((plan.finish(), kept))
}

fn random_seed() -> Result<u64> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|_| Error::without_path(Reason::Os("eio")))?;
    Ok(u64::from_le_bytes(raw))
}
