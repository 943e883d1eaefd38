//! Power-loss crash states of persist, snapshot and restore_snapshot.
//!
//! Each operation runs once on the simulated filesystem (`common/simfs.rs`), which records
//! the disk after every mutating call. For a crash after each call, every state the
//! conservative POSIX model allows (`common/crash.rs`) is materialized and restored with the
//! real restore logic. A restore must give exactly the contents before the operation or the
//! contents it writes, and only the latter once the operation has returned; snapshot
//! listings must stay within retention and every listed snapshot must restore to the
//! version it was taken of.
//!
//! The persists run both straight on a `PersistSession` and as the NIF runs them, through
//! the writer thread of a `PersistPipeline` (scenarios marked "writer thread"), and every
//! crash state is restored both straight and through the reader thread of a
//! `RestorePipeline`, which must hand over the same chunks (or fail the same way).

mod common;

use common::crash::{for_each_crash_state, Counts};
use common::read_all;
use common::scenarios::*;
use common::simfs::{describe, SimFs, State};
use ptable_core::{list_snapshots, restore_snapshot, SnapshotId, TableFile};
use std::path::Path;

/// States checked per crash point at most (sampled beyond).
const CAP: usize = 600;

#[derive(Clone)]
enum Op {
    /// begin, append each chunk, commit.
    Persist(Version),
    /// The same, then `snapshot(max)`.
    PersistAndSnapshot { data: Version, max: usize },
    /// `restore_snapshot` of the start's snapshot at this listing index.
    RestoreSnapshot(usize),
}

#[derive(Clone)]
struct Scenario {
    /// Overrides the operation's description.
    label: Option<&'static str>,
    start: Start,
    op: Op,
    /// Persists go through the writer thread.
    threaded: bool,
}

impl Scenario {
    fn new(start: &Start, op: Op) -> Self {
        Scenario {
            label: None,
            start: start.clone(),
            op,
            threaded: false,
        }
    }

    /// The same persist through the writer thread.
    fn threaded(&self) -> Self {
        Scenario {
            threaded: true,
            ..self.clone()
        }
    }

    fn labelled(label: &'static str, start: &Start, op: Op) -> Self {
        Scenario {
            label: Some(label),
            ..Scenario::new(start, op)
        }
    }

    fn name(&self) -> String {
        let op = match (&self.op, self.label) {
            (_, Some(label)) => label.to_string(),
            (Op::Persist(_), None) => "persist".to_string(),
            (Op::PersistAndSnapshot { max, .. }, None) => format!("persist+snapshot(max {max})"),
            (Op::RestoreSnapshot(i), None) => {
                format!("restore_snapshot({})", self.start.snapshots[*i].0)
            }
        };
        let via = if self.threaded {
            " (writer thread)"
        } else {
            ""
        };
        format!("{op}{via} on {}", self.start.name)
    }

    /// The contents the operation installs as the stable file.
    fn new_version(&self) -> Version {
        match &self.op {
            Op::Persist(data) | Op::PersistAndSnapshot { data, .. } => data.clone(),
            Op::RestoreSnapshot(i) => self.start.snapshots[*i].1.clone(),
        }
    }
}

/// One recorded run.
struct Recording {
    history: Vec<(String, State)>,
    /// Crash point from which the stable file must hold the new contents.
    stable_done: usize,
    /// For snapshots: the new id and the crash point from which it must be listed.
    snapshot: Option<(SnapshotId, usize)>,
}

fn record(scn: &Scenario) -> Recording {
    let fs = SimFs::from_state(scn.start.state.clone());
    fs.start_recording();
    let (stable_done, snapshot) = match &scn.op {
        Op::Persist(data) if scn.threaded => {
            persist_threaded(&fs, data).unwrap().0.close();
            (fs.history_len() - 1, None)
        }
        Op::Persist(data) => {
            drop(persist(&fs, data).unwrap());
            (fs.history_len() - 1, None)
        }
        Op::PersistAndSnapshot { data, max } if scn.threaded => {
            let (pipeline, _) = persist_threaded(&fs, data).unwrap();
            let stable_done = fs.history_len() - 1;
            let snapshot =
                |s: &mut ptable_core::PersistSession| s.snapshot(*max, &mut id_source(0xD0));
            let id = pipeline.with_consumer(snapshot).unwrap().unwrap();
            pipeline.close();
            (stable_done, Some((id, fs.history_len() - 1)))
        }
        Op::PersistAndSnapshot { data, max } => {
            let mut session = persist(&fs, data).unwrap();
            let stable_done = fs.history_len() - 1;
            let id = session.snapshot(*max, &mut id_source(0xD0)).unwrap();
            drop(session);
            (stable_done, Some((id, fs.history_len() - 1)))
        }
        Op::RestoreSnapshot(i) => {
            let id = scn.start.snapshots[*i].0;
            restore_snapshot(&fs, &table(), id.as_str()).unwrap();
            (fs.history_len() - 1, None)
        }
    };
    Recording {
        history: fs.take_history(),
        stable_done,
        snapshot,
    }
}

/// Everything a crash state must satisfy; `Err` says what was wrong.
fn check(scn: &Scenario, rec: &Recording, point: usize, state: State) -> Result<(), String> {
    let fs = SimFs::from_state(state);
    let new = scn.new_version();
    let outcome = restore_outcome(&fs);
    let streamed = streamed_restore_outcome(&fs);
    if streamed != outcome {
        return Err(format!(
            "the reader thread gave {}, a direct restore {}",
            describe_outcome(&streamed),
            describe_outcome(&outcome)
        ));
    }
    let allowed_old = point < rec.stable_done;
    if outcome != Ok(new.clone()) && !(allowed_old && scn.start.old.contains(&outcome)) {
        return Err(format!(
            "restore gave {}, expected {}",
            describe_outcome(&outcome),
            if allowed_old { "old or new" } else { "new" }
        ));
    }

    let listed = list_snapshots(&fs, &table()).map_err(|e| format!("list_snapshots: {e}"))?;
    let listed: Vec<SnapshotId> = listed.into_iter().map(|e| e.id).collect();
    let start_ids: Vec<SnapshotId> = scn.start.snapshots.iter().map(|s| s.0).collect();
    let mut known = scn.start.snapshots.clone();
    match (&scn.op, rec.snapshot) {
        (Op::PersistAndSnapshot { max, .. }, Some((new_id, done))) => {
            known.push((new_id, new.clone()));
            let mut expected_final: Vec<SnapshotId> = start_ids.clone();
            expected_final.push(new_id);
            let keep_from = expected_final.len().saturating_sub((*max).max(1));
            let expected_final = expected_final.split_off(keep_from);
            let bound = (*max).max(start_ids.len()) + 1;
            if listed.len() > bound {
                return Err(format!(
                    "{} snapshots listed, at most {bound}",
                    listed.len()
                ));
            }
            if let Some(stranger) = listed.iter().find(|id| !known.iter().any(|k| k.0 == **id)) {
                return Err(format!("unknown snapshot {stranger} listed"));
            }
            if let Some(lost) = start_ids
                .iter()
                .find(|id| expected_final.contains(id) && !listed.contains(id))
            {
                return Err(format!("snapshot {lost} (kept by retention) is missing"));
            }
            if point >= done && listed != expected_final {
                return Err(format!(
                    "after snapshot returned: listed {listed:?}, expected {expected_final:?}"
                ));
            }
        }
        _ => {
            if listed != start_ids {
                return Err(format!("snapshots changed: {listed:?}, was {start_ids:?}"));
            }
        }
    }
    for id in &listed {
        let expected = &known.iter().find(|k| k.0 == *id).expect("checked above").1;
        let read = TableFile::open(&fs, &table().snapshot(id)).and_then(|mut f| read_all(&mut f));
        if read.as_ref() != Ok(expected) {
            return Err(format!("listed snapshot {id} reads as {read:?}"));
        }
        if rec.snapshot.is_some() {
            // Restoring it (on a copy of this state) brings back the version it was taken of.
            let copy = SimFs::from_state(fs.state());
            restore_snapshot(&copy, &table(), id.as_str())
                .map_err(|e| format!("restore_snapshot({id}): {e}"))?;
            if restore_outcome(&copy).as_ref() != Ok(expected) {
                return Err(format!(
                    "restore_snapshot({id}) did not restore its version"
                ));
            }
        }
    }
    Ok(())
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Ok(v) => format!("{} chunks", v.len()),
        Err(r) => r.as_str().to_string(),
    }
}

struct Report {
    name: String,
    threaded: bool,
    crash_points: usize,
    totals: Counts,
    failures: Vec<String>,
    failure_count: usize,
}

fn explore(scn: &Scenario) -> Report {
    let rec = record(scn);
    let mut totals = Counts::default();
    let mut failures = Vec::new();
    let mut failure_count = 0;
    for (point, (what, state)) in rec.history.iter().enumerate() {
        let counts = for_each_crash_state(state, CAP, point as u64, |crashed, describe_choice| {
            let tree = describe(&crashed, Path::new(TABLE));
            if let Err(msg) = check(scn, &rec, point, crashed) {
                failure_count += 1;
                if failures.len() < 5 {
                    failures.push(format!(
                        "{}: crash after #{point} ({what}): {msg}\n    choices: {}\n    disk: {tree}",
                        scn.name(),
                        describe_choice()
                    ));
                }
            }
        });
        totals.possible += counts.possible;
        totals.explored += counts.explored;
        totals.sampled_dirs += counts.sampled_dirs;
        totals.max_pending_entries = totals.max_pending_entries.max(counts.max_pending_entries);
    }
    Report {
        name: scn.name(),
        threaded: scn.threaded,
        crash_points: rec.history.len(),
        totals,
        failures,
        failure_count,
    }
}

fn scenarios() -> Vec<Scenario> {
    let (empty, snapshot_only, full) = (start_empty(), start_snapshot_only(), start_full());
    let rotten = start_full_rotten_stable();
    let forged = start_full_forged_stable();
    let after_failed_sync = start_after_failed_dir_sync(&version(5));
    let new = version(5);
    let snapshot = |max| Op::PersistAndSnapshot {
        data: new.clone(),
        max,
    };
    let direct = vec![
        Scenario::new(&empty, Op::Persist(new.clone())),
        Scenario::new(&full, Op::Persist(new.clone())),
        Scenario::labelled(
            "persist sharing 2 chunks with the stable file",
            &full,
            Op::Persist(version_sharing_prefix(3, 2)),
        ),
        Scenario::labelled(
            "persist of the unchanged table",
            &full,
            Op::Persist(version(3)),
        ),
        // The previous persist's directory fsync failed: persisting the same table again must
        // still make it durable; persisting another one must not bring back anything else.
        Scenario::labelled(
            "persist of the same table again",
            &after_failed_sync,
            Op::Persist(new.clone()),
        ),
        Scenario::labelled(
            "persist of another table",
            &after_failed_sync,
            Op::Persist(version(6)),
        ),
        // The rotten stable file is quarantined, the good backup stays.
        Scenario::new(&rotten, Op::Persist(new.clone())),
        // Its CRCs pass, its contents do not: the same, and its own table is not unchanged.
        Scenario::new(&forged, Op::Persist(new.clone())),
        Scenario::labelled(
            "persist of the forged file's table",
            &forged,
            Op::Persist(version(3)),
        ),
        Scenario::new(&empty, snapshot(2)),
        Scenario::new(&full, snapshot(3)),
        // Retention shrinking below what is there: two deletions in one snapshot.
        Scenario::new(&full, snapshot(2)),
        Scenario::new(&snapshot_only, Op::RestoreSnapshot(0)),
        Scenario::new(&full, Op::RestoreSnapshot(1)),
        // The legacy snapshot.
        Scenario::new(&full, Op::RestoreSnapshot(0)),
    ];
    // Every persist again through the writer thread, and one persist+snapshot.
    let threaded: Vec<Scenario> = direct
        .iter()
        .filter(|scn| matches!(scn.op, Op::Persist(_)))
        .chain(direct.iter().filter(|scn| {
            matches!(scn.op, Op::PersistAndSnapshot { max: 2, .. }) && scn.start.name == "full"
        }))
        .map(Scenario::threaded)
        .collect();
    direct.into_iter().chain(threaded).collect()
}

#[test]
fn every_crash_state_restores_old_or_new_contents() {
    let scenarios = scenarios();
    // Two workers (the CI machine has two cores).
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let scenarios = &scenarios;
                scope.spawn(move || {
                    scenarios
                        .iter()
                        .skip(w)
                        .step_by(2)
                        .map(explore)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let mut explored = 0;
    let mut threaded = (0, 0);
    let mut failures = Vec::new();
    let mut failure_count = 0;
    for r in &reports {
        println!(
            "{:<45} {:>3} crash points, {:>6} states explored of {:>6} allowed \
             (max {} pending entries in a directory, {} sampled directories), {} failures",
            r.name,
            r.crash_points,
            r.totals.explored,
            r.totals.possible,
            r.totals.max_pending_entries,
            r.totals.sampled_dirs,
            r.failure_count,
        );
        explored += r.totals.explored;
        if r.threaded {
            threaded.0 += 1;
            threaded.1 += r.totals.explored;
        }
        failure_count += r.failure_count;
        failures.extend(r.failures.iter().cloned());
    }
    println!("crash states explored in total: {explored}");
    println!(
        "of which {} in {} scenarios persisting through the writer thread; every state \
         restored both directly and through the reader thread",
        threaded.1, threaded.0
    );
    assert!(
        failures.is_empty(),
        "{failure_count} crash states failed, first ones:\n{}",
        failures.join("\n")
    );
    assert!(explored >= 5000, "only {explored} crash states explored");
    assert!(
        threaded.1 >= 2500,
        "only {} crash states of the writer thread",
        threaded.1
    );
}
