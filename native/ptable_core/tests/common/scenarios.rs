//! Table directories in known states on the simulated filesystem, shared by the crash-state
//! and fault-injection tests.

use super::simfs::{SimFs, State};
use super::{chunks, options};
use ptable_core::format::encode_legacy;
use ptable_core::pipeline::restore::STREAMED_CHUNKS;
use ptable_core::{
    list_snapshots, open_newest_valid, CommitOutcome, Fs, PersistPipeline, PersistSession, Reason,
    RestorePipeline, SnapshotId, Step, TableDir,
};
use std::path::Path;
use std::sync::Arc;

pub type Version = Vec<Vec<u8>>;
pub type Outcome = Result<Version, Reason>;

/// The table directory of every scenario.
pub const TABLE: &str = "/data/table";

pub fn table() -> TableDir {
    TableDir::new(TABLE)
}

/// Table version `n`: `n + 1` chunks, distinct contents per version.
pub fn version(n: u64) -> Version {
    chunks(n as usize + 1, 120 + 16 * n as usize, 1000 + n)
}

/// The single chunk of the legacy snapshot.
pub fn legacy_payload() -> Vec<u8> {
    b"\x83l\x00\x00\x00\x01h\x02m\x00\x00\x00\x03keym\x00\x00\x00\x05valuej".to_vec()
}

pub fn arc(fs: &SimFs) -> Arc<dyn Fs> {
    Arc::new(fs.clone())
}

/// Snapshot ids `prefix 00 .. 00 n`, n counting up.
pub fn id_source(prefix: u8) -> impl FnMut() -> ptable_core::Result<SnapshotId> {
    let mut n = 0u8;
    move || {
        n += 1;
        Ok(SnapshotId::from_bytes([prefix, 0, 0, 0, 0, 0, 0, n]))
    }
}

pub fn restore_outcome(fs: &dyn Fs) -> Outcome {
    super::restore(fs, &table()).map(|(chunks, _)| chunks)
}

/// Rows each scenario's persist announces (its chunks are small, the hint large).
pub const CLAIMED_ROWS: u64 = 100_000;

/// begin, append every chunk, commit; the session stays open (and locked) for a snapshot.
///
/// Claims a large table and allows two streams (as on a machine with 3+ cores), so that
/// these small files are written as large ones are there: with two zstd streams, the odd
/// chunks compressed on a second thread. A persist whose table shares leading chunks with
/// the one-stream stable file of the start states copies those frames instead (and stays
/// one stream), so the scenarios cover both.
pub fn persist_session(
    fs: &SimFs,
    data: &Version,
) -> ptable_core::Result<(PersistSession, CommitOutcome)> {
    persist_with(fs, data, true)
}

fn persist_with(
    fs: &SimFs,
    data: &Version,
    two_streams: bool,
) -> ptable_core::Result<(PersistSession, CommitOutcome)> {
    let mut session = PersistSession::begin(arc(fs), table(), options(3))?;
    session.expect_rows(CLAIMED_ROWS);
    session.allow_two_streams(two_streams);
    for c in data {
        session.append(c, 10)?;
    }
    let outcome = session.commit()?;
    Ok((session, outcome))
}

/// Where a persist through the writer thread returned its error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Begin,
    Append,
    Commit,
}

/// [`persist_session`] as the NIF runs it: the session goes into a [`PersistPipeline`], every
/// chunk is queued without waiting when there is room (else waiting), and the commit takes
/// the session back from the writer thread. On error the pipeline is closed (as
/// `persist_close` is after every persist) before returning; on success it stays open (and
/// locked) for a snapshot.
pub fn persist_threaded(
    fs: &SimFs,
    data: &Version,
) -> Result<(PersistPipeline, CommitOutcome), (ptable_core::Error, Stage)> {
    let mut session =
        PersistSession::begin(arc(fs), table(), options(3)).map_err(|e| (e, Stage::Begin))?;
    session.expect_rows(CLAIMED_ROWS);
    session.allow_two_streams(true);
    let pipeline = PersistPipeline::new(session);
    let queued = data
        .iter()
        .try_for_each(|c| match pipeline.try_append(c, 10) {
            Ok(true) => Ok(()),
            Ok(false) => pipeline.append(c, 10),
            Err(e) => Err(e),
        });
    let result = match queued {
        Err(e) => Err((e, Stage::Append)),
        Ok(()) => match pipeline.with_consumer(|s| s.commit()) {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) | Err(e) => Err((e, Stage::Commit)),
        },
    };
    match result {
        Ok(outcome) => Ok((pipeline, outcome)),
        Err(failure) => {
            pipeline.close();
            Err(failure)
        }
    }
}

/// What restoring `fs` through the reader thread yields: the chunks handed to the sink up
/// to a last one, or the reason of the `Failed` step that ended the stream. Every other
/// sequence of steps (a chunk after the last, `Done` after a chunk not marked last, a
/// stream that ends without a final step) panics.
pub fn streamed_restore_outcome(fs: &dyn Fs) -> Outcome {
    let source = open_newest_valid(fs, &table(), None).map_err(|f| f.error.reason)?;
    let steps = stream_steps(source.file, true);
    let mut chunks = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let final_step = i + 1 == steps.len();
        match step {
            StreamedStep::Chunk { data, last, .. } if *last == final_step => {
                chunks.push(data.clone())
            }
            StreamedStep::Done if final_step && i == 0 => {}
            StreamedStep::Failed(e) if final_step => return Err(e.reason),
            _ => panic!("step {i} of {}: {step:?}", steps.len()),
        }
    }
    assert!(!steps.is_empty(), "the stream ended without a step");
    Ok(chunks)
}

/// A [`Step`](ptable_core::Step) as a sink keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamedStep {
    Chunk {
        data: Vec<u8>,
        rows: Option<u64>,
        last: bool,
    },
    Done,
    Failed(ptable_core::Error),
}

impl From<Step<'_>> for StreamedStep {
    fn from(step: Step<'_>) -> Self {
        match step {
            Step::Chunk {
                data, rows, last, ..
            } => StreamedStep::Chunk {
                data: data.to_vec(),
                rows,
                last,
            },
            Step::Done => StreamedStep::Done,
            Step::Failed(e) => StreamedStep::Failed(e),
        }
    }
}

/// Streams `file` through the reader thread to a sink that keeps every step, until a final
/// step; with `ack`, each chunk is acknowledged, without, only the steps the initial credits
/// allow are awaited. Then closes the pipeline (joining the thread) and adds whatever else
/// the thread handed over.
pub fn stream_steps(file: ptable_core::TableFile, ack: bool) -> Vec<StreamedStep> {
    let pipeline = RestorePipeline::new(file);
    let (sender, steps) = std::sync::mpsc::channel();
    let sink = move |step: Step<'_>| sender.send(StreamedStep::from(step)).is_ok();
    pipeline.stream(sink).expect("the reader thread starts");
    let mut kept = Vec::new();
    while ack || kept.len() < STREAMED_CHUNKS as usize {
        let Ok(step) = steps.recv() else { break };
        let more = matches!(step, StreamedStep::Chunk { last: false, .. });
        kept.push(step);
        if !more {
            break;
        }
        if ack {
            pipeline.ack();
        }
    }
    pipeline.close();
    kept.extend(steps.try_iter());
    kept
}

pub fn persist(fs: &SimFs, data: &Version) -> ptable_core::Result<PersistSession> {
    persist_session(fs, data).map(|(session, _)| session)
}

/// The persists that build the start states: one-stream files, whose frames a later persist
/// can copy.
fn persist_start(fs: &SimFs, data: &Version) -> ptable_core::Result<PersistSession> {
    persist_with(fs, data, false).map(|(session, _)| session)
}

/// A filesystem with `/data` durable and nothing else.
pub fn fresh() -> SimFs {
    let fs = SimFs::new();
    fs.create_dir(Path::new("/data")).unwrap();
    fs.with_state(State::sync_everything);
    fs
}

/// A directory state before an operation.
#[derive(Clone)]
pub struct Start {
    pub name: &'static str,
    pub state: State,
    /// What restore may give after a crash before the operation (what it gives now, and
    /// older contents that are what is durable).
    pub old: Vec<Outcome>,
    /// The snapshots as listed, with their contents.
    pub snapshots: Vec<(SnapshotId, Version)>,
}

/// (a) Nothing there yet (not even the table directory).
pub fn start_empty() -> Start {
    Start {
        name: "empty",
        state: fresh().state(),
        old: vec![Err(Reason::Enoent)],
        snapshots: Vec::new(),
    }
}

/// (a') No stable or backup file, one snapshot.
pub fn start_snapshot_only() -> Start {
    let fs = fresh();
    let mut ids = id_source(0xA0);
    let id = persist_start(&fs, &version(1))
        .unwrap()
        .snapshot(3, &mut ids)
        .unwrap();
    fs.remove_file(&table().stable()).unwrap();
    fs.with_state(State::sync_everything);
    assert_eq!(restore_outcome(&fs), Err(Reason::Enoent));
    Start {
        name: "snapshot-only",
        state: fs.state(),
        old: vec![Err(Reason::Enoent)],
        snapshots: vec![(id, version(1))],
    }
}

/// (b) Stable (v3), backup (v2), snapshots of v1 and v2 and a legacy one, and the leftovers
/// of earlier crashes: a partial tmp file and a partial snapshot tmp file.
pub fn start_full() -> Start {
    let fs = fresh();
    let mut ids = id_source(0xB0);
    let s1 = persist_start(&fs, &version(1))
        .unwrap()
        .snapshot(3, &mut ids)
        .unwrap();
    let s2 = persist_start(&fs, &version(2))
        .unwrap()
        .snapshot(3, &mut ids)
        .unwrap();
    drop(persist_start(&fs, &version(3)).unwrap());
    let legacy = SnapshotId::from_bytes([0xC0, 0, 0, 0, 0, 0, 0, 1]);
    let write = |path: &Path, bytes: &[u8]| {
        let mut f = fs.create(path).unwrap();
        f.write_all(bytes).unwrap();
    };
    write(
        &table().snapshot(&legacy),
        &encode_legacy(&legacy_payload()),
    );
    write(&table().tmp(), b"PTABLE\x02\x00 cut off");
    write(
        &table().snapshots().join("B000000000000009.tmp"),
        &[0u8; 100],
    );
    fs.with_state(State::sync_everything);
    assert_eq!(restore_outcome(&fs), Ok(version(3)));
    let snapshots = vec![
        (legacy, vec![legacy_payload()]),
        (s1, version(1)),
        (s2, version(2)),
    ];
    let listed: Vec<_> = list_snapshots(&fs, &table())
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, snapshots.iter().map(|s| s.0).collect::<Vec<_>>());
    Start {
        name: "full",
        state: fs.state(),
        old: vec![Ok(version(3))],
        snapshots,
    }
}

/// (b) with a stable file that rotted (one byte flipped in its last frame): restore gives
/// the backup, and the next install moves the stable file aside (quarantine).
pub fn start_full_rotten_stable() -> Start {
    start_full_with_bad_stable("full with a rotten stable file", |bytes| {
        let mut bytes = bytes.to_vec();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        bytes
    })
}

/// (b) with a stable file whose last chunk changed under its hash, its frame CRC recomputed:
/// every CRC passes, the contents do not.
pub fn start_full_forged_stable() -> Start {
    start_full_with_bad_stable("full with a forged stable file", |bytes| {
        let last = super::forge::frame_spans(bytes).len() - 1;
        super::forge::changed_chunk(bytes, last)
    })
}

/// (b) with the stable file replaced by `change` of it; restore gives the backup.
fn start_full_with_bad_stable(name: &'static str, change: fn(&[u8]) -> Vec<u8>) -> Start {
    let full = start_full();
    let fs = SimFs::from_state(full.state);
    let bytes = change(&fs.state().read(&table().stable()).unwrap());
    fs.create(&table().stable())
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    fs.with_state(State::sync_everything);
    assert_eq!(restore_outcome(&fs), Ok(version(2)));
    Start {
        name,
        state: fs.state(),
        old: vec![Ok(version(2))],
        snapshots: full.snapshots,
    }
}

/// `version(n)` with the chunks from `from` on replaced: shares a prefix with it.
pub fn version_sharing_prefix(n: u64, from: usize) -> Version {
    let mut v = version(n);
    for (i, c) in v.iter_mut().enumerate().skip(from) {
        *c = chunks(1, c.len() + i, 7000 + i as u64).remove(0);
    }
    v
}

/// (b) after a persist of `data` whose final directory fsync failed: the new stable file is
/// in place but its rename (and the old one's to the backup) is not durable.
pub fn start_after_failed_dir_sync(data: &Version) -> Start {
    use super::simfs::CallKind;
    let full = start_full();
    let probe = SimFs::from_state(full.state.clone());
    probe.reset_calls();
    drop(persist(&probe, data).unwrap());
    // The directory fsync after the tmp file is renamed onto the stable name. A protocol
    // without one (see the deliberate-break demonstrations) leaves that state anyway.
    let calls = probe.calls();
    let installed = calls
        .iter()
        .position(|c| c.kind == CallKind::Rename && c.path == table().tmp())
        .expect("a persist renames the tmp file");
    let sync = (installed..calls.len()).find(|&i| calls[i].kind == CallKind::SyncDir);
    let fs = SimFs::from_state(full.state.clone());
    fs.reset_calls();
    match sync {
        Some(index) => {
            fs.inject_fault(index, 5);
            let err = persist(&fs, data).err().expect("the directory fsync fails");
            assert_eq!(err.reason, Reason::Os("eio"));
            fs.clear_fault();
        }
        None => drop(persist(&fs, data).unwrap()),
    }
    assert_eq!(restore_outcome(&fs).as_ref(), Ok(data));
    Start {
        name: "full, after a failed directory fsync",
        state: fs.state(),
        old: vec![full.old[0].clone(), Ok(data.clone())],
        snapshots: full.snapshots,
    }
}
