//! What a restore hands out: the chunks of a verified base file, less the rows its change
//! log supersedes, then the log's final upserts (see `log_apply`), in chunks of one
//! record's, at most the base's chunk size each. Each row of the result is handed out once. On the way it rebuilds the
//! change index of the state it restores, and once every chunk is handed out leaves it as
//! the directory's baseline, so the next persist appends only what changed.

use super::restore::Step;
use crate::change_index::{pair_hash, IndexBuilder, RowHash};
use crate::change_log::LogRecord;
use crate::change_log::LogStop;
use crate::error::{Error, Reason, Result};
use crate::etf_rows;
use crate::log_apply::{LogPlan, PlanBuilder};
use crate::reader::TableFile;
use crate::table_dir::{BaseId, Baseline, Baselines, FileLogReader, FoundLog, LogState, TableDir};
use std::collections::VecDeque;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
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
}

/// A log's records from the first that did not verify on are not applied: the error that
/// says so (reported with the files a restore skipped).
pub fn log_stop_error(stop: Option<LogStop>, path: &std::path::Path) -> Option<Error> {
    match stop {
        Some(LogStop::Invalid { .. }) => Some(Error::new(Reason::LogTail, path)),
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
        let mut replay = Replay::base_only(file);
        if let Some(found) = log {
            // A log follows only a version 2 base, whose header gives its chunk size (1000
            // is the wrapper's default, for the type's sake).
            let chunk_rows = replay
                .file
                .header()
                .current()
                .map_or(1000, |h| h.chunk_rows.max(1) as usize);
            let log = read_plan(found, failures, kept_bytes, chunk_rows)?;
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
        let bad_file = || Error::new(Reason::BadFile, self.file.path());
        let mut rows = Vec::new();
        for pair in etf_rows::pairs(&self.buffer).map_err(|_| bad_file())? {
            let pair = pair.map_err(|_| bad_file())?;
            rows.push((RowHash::of(self.seed, &pair), pair.bytes));
        }
        let all = rows.len() as u64;
        let mut superseded = Vec::new();
        if let Some(log) = self.log.as_ref() {
            let properties: Vec<u64> = rows.iter().map(|(row, _)| row.property).collect();
            log.plan.supersedes_each(&properties, &mut superseded);
        }
        let mut kept = Vec::with_capacity(rows.len());
        for (i, (row, bytes)) in rows.into_iter().enumerate() {
            if superseded.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Some(builder) = self.builder.as_mut() {
                if builder.push(row).is_err() {
                    self.builder = None;
                }
            }
            kept.push(bytes);
        }
        if kept.len() as u64 == all {
            return Ok(all);
        }
        self.out_filtered = true;
        self.filtered.clear();
        etf_rows::encode_list(kept.iter().copied(), &mut self.filtered).ok_or_else(bad_file)?;
        Ok(kept.len() as u64)
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

/// Reads every record of the log into its plan, keeping the records when they fit in
/// `kept_bytes`, else rewinding the log for the second pass; the log's chunks will hold
/// at most `chunk_rows` rows.
fn read_plan(
    mut found: FoundLog,
    failures: &mut Vec<Error>,
    kept_bytes: usize,
    chunk_rows: usize,
) -> Result<LogReplay> {
    let path = found.path.clone();
    let mut plan = PlanBuilder::new();
    // A record's raw payload is never smaller than its stored bytes: a log whose file is
    // larger than the budget is read again, without first holding a budget's worth of it.
    let mut kept = (found.file_len <= kept_bytes as u64).then(VecDeque::new);
    let mut kept_size = 0usize;
    loop {
        match found.reader.next_record() {
            Ok(Some(record)) => {
                plan.add(&record)
                    .map_err(|_| Error::new(Reason::BadFile, &path))?;
                kept_size = kept_size.saturating_add(record.heap_bytes());
                match kept.as_mut() {
                    Some(records) if kept_size <= kept_bytes => records.push_back(record),
                    _ => kept = None,
                }
            }
            Ok(None) => break,
            Err(e) => return Err(Error::io(&e, &path)),
        }
    }
    failures.extend(log_stop_error(found.reader.stop(), &path));
    let plan = plan.finish();
    let state = found.state();
    let source = match kept {
        Some(records) => LogSource::Kept(records),
        None => {
            let mut input = found.reader.into_inner();
            input
                .seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(&e, &path))?;
            LogSource::Reread(crate::change_log::LogReader::open(input, &path)?)
        }
    };
    let chunks_left = plan.chunks(chunk_rows);
    Ok(LogReplay {
        plan,
        source,
        path,
        state,
        chunks_left,
        chunk_rows,
        current: None,
    })
}

fn random_seed() -> Result<u64> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|_| Error::without_path(Reason::Os("eio")))?;
    Ok(u64::from_le_bytes(raw))
}
