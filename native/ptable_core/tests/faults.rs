//! Fault injection: every filesystem call that persist, snapshot and restore_snapshot make
//! fails in turn, with each errno that call can plausibly return, on the simulated
//! filesystem (`common/simfs.rs`; a failing write still writes half of its bytes, like a
//! short write before ENOSPC).
//!
//! After each fault:
//!
//! * The call either returns an error whose reason names the injected errno and whose path
//!   is the file the failing call was about, or succeeds (the calls whose failure the
//!   protocol tolerates: cleanup removals, reading sequence numbers, checking whether the
//!   current stable file is good) and then did everything a clean call does.
//! * On error, restore gives the old contents, both on the disk as it is and on what is
//!   durable of it (every unsynced change lost), except when the new file had already been
//!   renamed onto the stable name before the failing call: then old or new. The old stable
//!   file's bytes are still at the stable or backup name (or quarantined, when it was
//!   rotten). Persist and restore_snapshot leave every snapshot byte-identical; a snapshot
//!   leaves the stable and backup files byte-identical, lists only old snapshots and
//!   complete copies of the stable file, and keeps every snapshot that retention keeps.
//! * No tmp file that the call created or changed is left behind.
//! * The same call without a fault then succeeds, durably.
//!
//! The persists run both straight on a `PersistSession` and as the NIF runs them, through
//! the writer thread of a `PersistPipeline`: there the failing call is made by the writer
//! thread for every append after the first chunk, and its error must surface at a later
//! append or at the commit, with the same reason, path and state on disk, and the
//! directory lock released once the pipeline is closed. A separate test makes every read of
//! the reader thread fail in turn, mid-stream.
//!
//! On success, "did everything" means: restore gives the new contents now and after losing
//! every unsynced change; a written persist or restore_snapshot moved the previous stable
//! file (if it verified) to the backup, an unchanged persist touched nothing; a snapshot
//! left exactly the snapshots retention keeps, durably.

mod common;

use common::crash::durable_only;
use common::errnos::*;
use common::scenarios::*;
use common::simfs::{CallKind, SimFs};
use common::{options, read_all};
use ptable_core::{
    list_snapshots, restore_snapshot, CommitOutcome, Fs, PersistSession, Reason, SnapshotId,
    TableFile,
};
use std::collections::BTreeMap;

#[derive(Clone)]
enum Op {
    Persist(Version),
    /// The same persist through the writer thread (see `persist_threaded`).
    PersistThreaded(Version),
    /// An unfaulted persist of `data`, then `snapshot(max)` with faults.
    Snapshot {
        data: Version,
        max: usize,
    },
    /// `restore_snapshot` of the start's snapshot at this listing index.
    RestoreSnapshot(usize),
}

struct Scenario {
    label: &'static str,
    start: Start,
    op: Op,
}

impl Scenario {
    fn new(label: &'static str, start: &Start, op: Op) -> Self {
        Scenario {
            label,
            start: start.clone(),
            op,
        }
    }

    fn name(&self) -> String {
        format!("{} on {}", self.label, self.start.name)
    }

    /// What restore must give after the call succeeded, given what it gave before.
    fn new_contents(&self, before: &Picture) -> Outcome {
        match &self.op {
            Op::Persist(data) | Op::PersistThreaded(data) => Ok(data.clone()),
            Op::Snapshot { .. } => before.restored.clone(),
            Op::RestoreSnapshot(i) => Ok(self.start.snapshots[*i].1.clone()),
        }
    }
}

/// What a successful call did.
#[derive(Clone, Copy, Debug)]
struct Done {
    snapshot: Option<SnapshotId>,
    unchanged: bool,
}

/// The faultable call, ready to run on a filesystem in the start state.
struct Prepared {
    fs: SimFs,
    session: Option<PersistSession>,
    ids: Box<dyn FnMut() -> ptable_core::Result<SnapshotId>>,
    /// What the files looked like just before the faultable call.
    before: Picture,
    /// Where a persist through the writer thread returned its error.
    failed_at: Option<Stage>,
}

impl Prepared {
    fn new(scn: &Scenario) -> Prepared {
        let fs = SimFs::from_state(scn.start.state.clone());
        let session = match &scn.op {
            Op::Snapshot { data, .. } => Some(persist(&fs, data).expect("unfaulted persist")),
            _ => None,
        };
        let before = Picture::take(&fs);
        fs.reset_calls();
        Prepared {
            fs,
            session,
            ids: Box::new(id_source(0xE0)),
            before,
            failed_at: None,
        }
    }

    fn run(&mut self, scn: &Scenario) -> ptable_core::Result<Done> {
        let done = |snapshot, unchanged| Done {
            snapshot,
            unchanged,
        };
        match &scn.op {
            Op::Persist(data) => persist_session(&self.fs, data)
                .map(|(_, outcome)| done(None, outcome == CommitOutcome::Unchanged)),
            Op::PersistThreaded(data) => match persist_threaded(&self.fs, data) {
                Ok((pipeline, outcome)) => {
                    pipeline.close();
                    Ok(done(None, outcome == CommitOutcome::Unchanged))
                }
                Err((e, stage)) => {
                    self.failed_at = Some(stage);
                    Err(e)
                }
            },
            Op::Snapshot { max, .. } => {
                let session = self.session.as_mut().expect("prepared");
                session
                    .snapshot(*max, &mut *self.ids)
                    .map(|id| done(Some(id), false))
            }
            Op::RestoreSnapshot(i) => {
                let id = scn.start.snapshots[*i].0;
                restore_snapshot(&self.fs, &table(), id.as_str()).map(|()| done(None, false))
            }
        }
    }
}

/// The files of the table directory, and what restore and list_snapshots make of them now
/// and after a power cut that loses every unsynced change.
#[derive(Clone, Debug, PartialEq)]
struct Picture {
    stable: Option<Vec<u8>>,
    backup: Option<Vec<u8>>,
    tmp: Option<Vec<u8>>,
    stable_verifies: bool,
    /// Contents of the quarantined (`*.corrupt-*`) files.
    quarantined: Vec<Vec<u8>>,
    /// Snapshot files by name (tmp files included).
    snapshot_files: BTreeMap<String, Vec<u8>>,
    /// As listed, with what reading each one completely gives.
    listed: Vec<SnapshotId>,
    listed_reads: Vec<Outcome>,
    restored: Outcome,
    durable_listed: Vec<SnapshotId>,
    durable_restored: Outcome,
}

fn listing(fs: &dyn Fs) -> Vec<SnapshotId> {
    list_snapshots(fs, &table())
        .expect("list_snapshots")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

impl Picture {
    fn take(fs: &SimFs) -> Picture {
        let state = fs.state();
        let t = table();
        let read = |path: &std::path::Path| state.read(path);
        let snapshot_files = state
            .names(&t.snapshots())
            .into_iter()
            .filter_map(|n| Some((n.clone(), read(&t.snapshots().join(&n))?)))
            .collect();
        let quarantined = state
            .names(t.root())
            .into_iter()
            .filter(|n| n.contains(".corrupt-"))
            .filter_map(|n| read(&t.root().join(n)))
            .collect();
        let listed = listing(fs);
        let listed_reads = listed
            .iter()
            .map(|id| {
                TableFile::open(fs, &t.snapshot(id))
                    .and_then(|mut f| read_all(&mut f))
                    .map_err(|e| e.reason)
            })
            .collect();
        let stable_verifies = TableFile::open(fs, &t.stable())
            .and_then(|mut f| f.verify())
            .is_ok();
        let durable = SimFs::from_state(durable_only(&state));
        Picture {
            stable: read(&t.stable()),
            backup: read(&t.backup()),
            tmp: read(&t.tmp()),
            stable_verifies,
            quarantined,
            snapshot_files,
            listed,
            listed_reads,
            restored: restore_outcome(fs),
            durable_listed: listing(&durable),
            durable_restored: restore_outcome(&durable),
        }
    }

    /// Tmp files present here that are not in `before` with the same bytes.
    fn new_tmp_files(&self, before: &Picture) -> Vec<String> {
        let mut out = Vec::new();
        if self.tmp.is_some() && self.tmp != before.tmp {
            out.push(table().tmp().display().to_string());
        }
        for (name, bytes) in &self.snapshot_files {
            if name.ends_with(".tmp") && before.snapshot_files.get(name) != Some(bytes) {
                out.push(format!("snapshots/{name}"));
            }
        }
        out
    }

    fn snapshot_files_without_tmps(&self) -> BTreeMap<&String, &Vec<u8>> {
        self.snapshot_files
            .iter()
            .filter(|(n, _)| !n.ends_with(".tmp"))
            .collect()
    }

    fn stable_and_backup(&self) -> (Option<&Vec<u8>>, Option<&Vec<u8>>) {
        (self.stable.as_ref(), self.backup.as_ref())
    }
}

fn chunk_count(o: &Outcome) -> Result<usize, Reason> {
    o.as_ref().map(|v| v.len()).map_err(|r| *r)
}

/// The snapshots listed after a successful snapshot `id` with retention `max`.
fn retained(before: &[SnapshotId], id: SnapshotId, max: usize) -> Vec<SnapshotId> {
    let mut all = before.to_vec();
    all.push(id);
    all.split_off(all.len().saturating_sub(max.max(1)))
}

/// Checks the state after a successful call. `faultless`: no call failed, so stale tmp files
/// from before must be gone too (unless nothing was written), and the previous stable file must be the backup (a
/// tolerated failure may leave a stale tmp file, or make install take an unreadable stable
/// file for a bad one and replace it).
fn check_success(
    scn: &Scenario,
    before: &Picture,
    after: &Picture,
    done: Done,
    faultless: bool,
) -> Result<(), String> {
    let expected = scn.new_contents(before);
    if after.restored != expected || after.durable_restored != expected {
        return Err(format!(
            "restore gave {:?}, after a power cut {:?}, expected {:?}",
            chunk_count(&after.restored),
            chunk_count(&after.durable_restored),
            chunk_count(&expected)
        ));
    }
    if let Some(stray) = after.new_tmp_files(before).first() {
        return Err(format!("tmp file {stray} left behind"));
    }
    // An unchanged persist writes nothing, so it leaves a stale tmp file alone.
    if faultless && !done.unchanged {
        let stale = match scn.op {
            Op::Snapshot { .. } => after.snapshot_files.keys().any(|n| n.ends_with(".tmp")),
            _ => after.tmp.is_some(),
        };
        if stale {
            return Err("a stale tmp file survived".into());
        }
    }
    if let Some(bad) = after.listed_reads.iter().find(|r| r.is_err()) {
        return Err(format!("a listed snapshot does not read: {bad:?}"));
    }
    if after.durable_listed != after.listed {
        return Err(format!(
            "listed {:?}, after a power cut {:?}",
            after.listed, after.durable_listed
        ));
    }
    match (&scn.op, done.snapshot) {
        (Op::Snapshot { max, .. }, Some(id)) => {
            let want = retained(&before.listed, id, *max);
            if after.listed != want {
                return Err(format!("listed {:?}, expected {want:?}", after.listed));
            }
            if after.stable_and_backup() != before.stable_and_backup() {
                return Err("snapshot changed the stable or backup file".into());
            }
        }
        _ => {
            if after.snapshot_files_without_tmps() != before.snapshot_files_without_tmps() {
                return Err("snapshots changed".into());
            }
            if done.unchanged {
                if after.stable_and_backup() != before.stable_and_backup() {
                    return Err("an unchanged persist changed the stable or backup file".into());
                }
            } else {
                let rotated = after.backup == before.stable;
                let replaced = !faultless && after.backup == before.backup;
                if before.stable_verifies && !rotated && !replaced {
                    return Err("the previous stable file is not the backup".into());
                }
            }
        }
    }
    Ok(())
}

/// Checks the state after a call that failed; `installed`: the new file had already been
/// renamed onto the stable name.
fn check_failure(
    scn: &Scenario,
    before: &Picture,
    after: &Picture,
    installed: bool,
) -> Result<(), String> {
    let new = scn.new_contents(before);
    let allowed = |o: &Outcome| *o == before.restored || (installed && *o == new);
    if !allowed(&after.restored) || !allowed(&after.durable_restored) {
        return Err(format!(
            "restore gave {:?}, after a power cut {:?}; before: {:?}",
            chunk_count(&after.restored),
            chunk_count(&after.durable_restored),
            chunk_count(&before.restored)
        ));
    }
    if let Some(stray) = after.new_tmp_files(before).first() {
        return Err(format!("tmp file {stray} left behind"));
    }
    if let Some(old) = &before.stable {
        let kept = after.stable.as_ref() == Some(old)
            || after.backup.as_ref() == Some(old)
            || after.quarantined.contains(old);
        if !kept {
            return Err("the old stable file is gone".into());
        }
    }
    match &scn.op {
        Op::Snapshot { max, .. } => {
            if after.stable_and_backup() != before.stable_and_backup() {
                return Err("snapshot changed the stable or backup file".into());
            }
            // Whatever id the new snapshot gets, retention keeps these.
            let keep = retained(&before.listed, SnapshotId::from_bytes([0xFF; 8]), *max);
            for id in before.listed.iter().filter(|id| keep.contains(id)) {
                if after.snapshot_files.get(id.as_str()) != before.snapshot_files.get(id.as_str()) {
                    return Err(format!("snapshot {id}, kept by retention, changed"));
                }
            }
            // A listed snapshot is an old one or a complete copy of the stable file.
            for (id, read) in after.listed.iter().zip(&after.listed_reads) {
                let ok = match before.listed.iter().position(|b| b == id) {
                    Some(i) => before.listed_reads[i] == *read,
                    None => *read == before.restored,
                };
                if !ok {
                    return Err(format!("listed snapshot {id} reads as {read:?}"));
                }
            }
        }
        _ => {
            if after.snapshot_files_without_tmps() != before.snapshot_files_without_tmps() {
                return Err("snapshots changed".into());
            }
        }
    }
    Ok(())
}

/// A path with the timestamp of a quarantined file's name left out (it differs per run).
fn normalized(path: &std::path::Path) -> String {
    let s = path.display().to_string();
    match s.split_once(".corrupt-") {
        Some((head, _)) => format!("{head}.corrupt-*"),
        None => s,
    }
}

#[derive(Default)]
struct Tally {
    injected: usize,
    reported: usize,
    tolerated: usize,
    by_kind: BTreeMap<String, usize>,
    /// Faults injected into calls of the writer thread, and where their errors surfaced.
    in_writer: usize,
    surfaced: BTreeMap<Stage, usize>,
    failures: Vec<String>,
}

fn inject_all(scn: &Scenario) -> Tally {
    // The calls of a clean run.
    let mut clean = Prepared::new(scn);
    let done = clean.run(scn).expect("clean run succeeds");
    let calls = clean.fs.calls();
    if let Err(msg) = check_success(scn, &clean.before, &Picture::take(&clean.fs), done, true) {
        panic!("{}: clean run: {msg}", scn.name());
    }
    drop(clean);

    let mut tally = Tally::default();
    for (index, call) in calls.iter().enumerate() {
        for &code in errnos(call.kind) {
            tally.injected += 1;
            *tally.by_kind.entry(format!("{:?}", call.kind)).or_default() += 1;
            let in_writer = call.thread.as_deref() == Some("ptable_writer");
            tally.in_writer += usize::from(in_writer);
            let what = format!(
                "{}: errno {code} on call #{index} {:?} {}",
                scn.name(),
                call.kind,
                call.path.display()
            );
            let mut p = Prepared::new(scn);
            p.fs.inject_fault(index, code);
            let result = p.run(scn);
            p.fs.clear_fault();
            let Some((fired, _)) = p.fs.fired() else {
                tally
                    .failures
                    .push(format!("{what}: the call was never made"));
                continue;
            };
            assert_eq!(
                (fired.kind, normalized(&fired.path)),
                (call.kind, normalized(&call.path)),
                "{what}: runs diverged"
            );
            if in_writer {
                if let Some(stage) = p.failed_at {
                    *tally.surfaced.entry(stage).or_default() += 1;
                }
            }
            // Only a snapshot's session (prepared beforehand) is still open.
            if !matches!(scn.op, Op::Snapshot { .. }) && p.fs.is_locked(&table().lock()) {
                tally
                    .failures
                    .push(format!("{what}: the directory lock is still held"));
                continue;
            }
            let after = Picture::take(&p.fs);
            let verdict = match &result {
                Ok(done) => {
                    tally.tolerated += 1;
                    check_success(scn, &p.before, &after, *done, false)
                }
                Err(e) => {
                    tally.reported += 1;
                    let installed = p.fs.calls()[..index]
                        .iter()
                        .any(|c| c.kind == CallKind::Rename && c.path == table().tmp());
                    if e.reason != expected_reason(code) {
                        Err(format!("error reason {:?}", e.reason))
                    } else if e.path.as_ref() != Some(&fired.path) {
                        Err(format!("error path {:?}", e.path))
                    } else {
                        check_failure(scn, &p.before, &after, installed)
                    }
                }
            };
            if let Err(msg) = verdict {
                tally.failures.push(format!("{what}: {result:?}: {msg}"));
                continue;
            }
            // The same call without a fault now succeeds.
            let before_retry = Picture::take(&p.fs);
            match p.run(scn) {
                Ok(done) => {
                    let after = Picture::take(&p.fs);
                    if let Err(msg) = check_success(scn, &before_retry, &after, done, true) {
                        tally.failures.push(format!("{what}: retry: {msg}"));
                    }
                }
                Err(e) => tally.failures.push(format!("{what}: retry failed: {e}")),
            }
        }
    }
    tally
}

fn scenarios() -> Vec<Scenario> {
    let (empty, snapshot_only, full) = (start_empty(), start_snapshot_only(), start_full());
    let rotten = start_full_rotten_stable();
    let forged = start_full_forged_stable();
    let snapshot = |max| Op::Snapshot {
        data: version(5),
        max,
    };
    let threaded = |data| Op::PersistThreaded(data);
    vec![
        Scenario::new("persist", &empty, Op::Persist(version(5))),
        Scenario::new("persist", &full, Op::Persist(version(5))),
        Scenario::new(
            "persist sharing 2 chunks with the stable file",
            &full,
            Op::Persist(version_sharing_prefix(3, 2)),
        ),
        Scenario::new(
            "persist of the unchanged table",
            &full,
            Op::Persist(version(3)),
        ),
        Scenario::new("persist", &rotten, Op::Persist(version(5))),
        Scenario::new("persist (writer thread)", &empty, threaded(version(5))),
        Scenario::new("persist (writer thread)", &full, threaded(version(5))),
        Scenario::new(
            "persist sharing 2 chunks (writer thread)",
            &full,
            threaded(version_sharing_prefix(3, 2)),
        ),
        Scenario::new(
            "persist of the unchanged table (writer thread)",
            &full,
            threaded(version(3)),
        ),
        Scenario::new("persist (writer thread)", &rotten, threaded(version(5))),
        Scenario::new("persist", &forged, Op::Persist(version(5))),
        Scenario::new(
            "persist of the forged file's table",
            &forged,
            Op::Persist(version(3)),
        ),
        Scenario::new("snapshot(max 2)", &empty, snapshot(2)),
        Scenario::new("snapshot(max 2)", &full, snapshot(2)),
        Scenario::new("restore_snapshot", &snapshot_only, Op::RestoreSnapshot(0)),
        Scenario::new("restore_snapshot", &full, Op::RestoreSnapshot(1)),
        Scenario::new("restore_snapshot(legacy)", &full, Op::RestoreSnapshot(0)),
    ]
}

#[test]
fn every_failing_call_is_reported_and_leaves_the_table_restorable() {
    let mut total = 0;
    let (mut direct, mut in_writer) = (0, 0);
    let mut surfaced = BTreeMap::new();
    let mut failures = Vec::new();
    for scn in scenarios() {
        let tally = inject_all(&scn);
        println!(
            "{:<60} {:>4} faults: {:>4} reported, {:>3} tolerated; by call: {:?}",
            scn.name(),
            tally.injected,
            tally.reported,
            tally.tolerated,
            tally.by_kind
        );
        total += tally.injected;
        if matches!(scn.op, Op::PersistThreaded(_)) {
            in_writer += tally.in_writer;
            for (stage, n) in tally.surfaced {
                *surfaced.entry(stage).or_insert(0) += n;
            }
        } else {
            direct += tally.injected;
        }
        failures.extend(tally.failures);
    }
    println!("faults injected in total: {total}, {direct} of them without the writer thread");
    println!(
        "faults injected inside the writer thread: {in_writer}; their errors surfaced at \
         (timing-dependent): {surfaced:?}"
    );
    assert!(
        failures.is_empty(),
        "{} faults mishandled:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 500, "only {total} faults injected");
    assert!(
        in_writer >= 60,
        "only {in_writer} faults inside the writer thread"
    );
}

/// After an append fails, the session cannot produce a good file any more (a short write
/// may have left part of a frame in the tmp file): a later append or commit must fail, the
/// stable file must stay as it was and the tmp file must go. Every call of the failing
/// append is made to fail in turn, both for a plain frame write and for the append that
/// leaves comparing mode and copies the frames that matched the stable file.
#[test]
fn a_failed_append_ends_the_session() {
    let full = start_full();
    let mut injected = 0;
    for (label, data) in [
        ("writing", version(5)),
        // The first two chunks match version 3: the third append creates the tmp file,
        // copies them from the stable file, then writes its own frame.
        ("copying matched frames", version_sharing_prefix(3, 2)),
    ] {
        let failing = 2;
        let run = |fault: Option<(usize, i32)>| {
            let fs = SimFs::from_state(full.state.clone());
            let mut session = PersistSession::begin(arc(&fs), table(), options(3)).unwrap();
            for c in &data[..failing] {
                session.append(c, 10).unwrap();
            }
            let first = fs.calls().len();
            if let Some((offset, code)) = fault {
                fs.inject_fault(first + offset, code);
            }
            let result = session.append(&data[failing], 10);
            fs.clear_fault();
            let calls = fs.calls()[first..].to_vec();
            (fs, session, result, calls)
        };
        let (_, _, clean, calls) = run(None);
        clean.unwrap();
        for (offset, call) in calls.iter().enumerate() {
            let code = match call.kind {
                CallKind::WriteAll | CallKind::Create => ENOSPC,
                CallKind::Read | CallKind::Open => EIO,
                _ => continue,
            };
            injected += 1;
            let what = format!(
                "{label}: errno {code} on {:?} {}",
                call.kind,
                call.path.display()
            );
            let (fs, mut session, result, _) = run(Some((offset, code)));
            assert_eq!(
                result.as_ref().map_err(|e| e.reason),
                Err(expected_reason(code)),
                "{what}"
            );
            assert!(
                session.append(&data[failing], 10).is_err(),
                "{what}: append after a failed append"
            );
            let commit = session.commit();
            assert!(
                commit.is_err(),
                "{what}: commit after a failed append returned {commit:?}"
            );
            drop(session);
            let state = fs.state();
            assert_eq!(
                state.read(&table().stable()),
                full.state.read(&table().stable()),
                "{what}: stable file changed"
            );
            assert_eq!(state.read(&table().tmp()), None, "{what}: tmp file left");
            assert_eq!(restore_outcome(&fs), Ok(version(3)), "{what}");
        }
    }
    println!("faults injected into appends: {injected}");
    assert!(injected >= 5);
}

#[test]
fn scenario_persists_write_two_stream_files() {
    // The scenarios announce a large table, so the states and faults above cover the
    // two-stream writer (odd chunks compressed on a second thread).
    let fs = fresh();
    persist(&fs, &version(5)).expect("persist");
    let file = ptable_core::TableFile::open(&fs, &table().stable()).expect("stable file");
    let ptable_core::FileHeader::Current(h) = *file.header() else {
        panic!("not v2")
    };
    assert_eq!(h.codec, ptable_core::codec::CODEC_ZSTD_STREAMS2);
}

#[test]
fn the_sharing_scenario_copies_the_stable_files_frames() {
    // The start states' stable files are one-stream files, so the persist sharing two chunks
    // with it copies their frames: the scenarios above cover that path too.
    let fs = SimFs::from_state(start_full().state.clone());
    drop(persist(&fs, &version_sharing_prefix(3, 2)).expect("persist"));
    let mut file = ptable_core::TableFile::open(&fs, &table().stable()).expect("stable file");
    let ptable_core::FileHeader::Current(h) = *file.header() else {
        panic!("not v2")
    };
    assert_eq!(h.codec, ptable_core::codec::CODEC_ZSTD_STREAM);
    for _ in 0..2 {
        file.next_stored_frame().expect("frame").expect("frame");
    }
    let (_, stored) = file.next_stored_frame().expect("frame").expect("frame");
    assert_eq!(&stored[..3], &ptable_core::codec::ZSTD_END_OF_FRAME);
}

/// The reader thread failing mid-stream: a file of several read buffers is streamed while
/// each read the thread makes fails in turn. The sink must get the chunks before the
/// failing read, in order, then a final `Failed` naming the errno and the file, and never a
/// chunk marked last; the thread then stops (the pipeline closes without waiting for more).
#[test]
fn a_failing_reader_thread_ends_the_stream_with_an_error() {
    let fs = fresh();
    // Chunks of 150 kB: the 256 KiB read buffer is refilled several times mid-file.
    let data = common::chunks(24, 150_000, 77);
    let mut session = PersistSession::begin(arc(&fs), table(), options(3)).unwrap();
    for c in &data {
        session.append(c, 10).unwrap();
    }
    session.commit().unwrap();
    drop(session);
    let open = || {
        fs.reset_calls();
        let file = ptable_core::open_newest_valid(&fs, &table(), None)
            .expect("a verified file")
            .file;
        (file, fs.calls().len())
    };
    let (file, opened) = open();
    let clean = stream_steps(file, true);
    assert_eq!(streamed_chunks(&clean), data, "the clean stream");
    let reads: Vec<usize> = (opened..fs.calls().len()).collect();
    let mut injected = 0;
    let mut mid_stream = 0;
    for index in reads {
        let (file, _) = open();
        fs.inject_fault(index, EIO);
        let steps = stream_steps(file, true);
        fs.clear_fault();
        let (fired, _) = fs.fired().expect("the read was made");
        let what = format!("EIO on call #{index} {:?}", fired.kind);
        assert_eq!(fired.kind, CallKind::Read, "{what}");
        assert_eq!(fired.thread.as_deref(), Some("ptable_reader"), "{what}");
        injected += 1;
        let (last, before) = steps.split_last().expect("a final step");
        let chunks = streamed_chunks(before);
        assert_eq!(
            chunks,
            data[..chunks.len()],
            "{what}: chunks before the failure"
        );
        assert!(
            before
                .iter()
                .all(|s| matches!(s, StreamedStep::Chunk { last: false, .. })),
            "{what}: {before:?}"
        );
        let StreamedStep::Failed(e) = last else {
            panic!("{what}: the stream ended with {last:?}");
        };
        assert_eq!(e.reason, expected_reason(EIO), "{what}");
        assert_eq!(
            e.path.as_deref(),
            Some(table().stable().as_path()),
            "{what}"
        );
        mid_stream += usize::from(!chunks.is_empty());
    }
    println!(
        "faults injected into the reader thread: {injected} ({mid_stream} after some chunks \
         were handed over)"
    );
    assert!(mid_stream >= 3, "only {mid_stream} faults mid-stream");
}

/// The data of the chunks among `steps`.
fn streamed_chunks(steps: &[StreamedStep]) -> Vec<Vec<u8>> {
    steps
        .iter()
        .filter_map(|s| match s {
            StreamedStep::Chunk { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}
