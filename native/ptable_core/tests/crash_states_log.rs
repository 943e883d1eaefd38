//! Power-loss crash states of persists that use the change log, and of restores of a
//! directory with one (issue 15).
//!
//! As in `crash_states.rs`: each operation runs once on the simulated filesystem, which
//! records the disk after every mutating call; for a crash after each call, every state the
//! conservative POSIX model allows (`common/crash.rs`) is restored with the real restore
//! logic (the newest verified base and the log whose header names it, replayed), straight on
//! the calling thread and through the reader thread, which must give the same rows. A
//! restore must give exactly the table before the operation or the one it persists (never a
//! mix, never an error), and only the new one once the operation has returned; for a
//! compaction, once the persist that answered `restart` and then wrote in full has returned.
//!
//! On a sample of the states, the VM then goes on as after a reboot: the restore leaves its
//! baseline, the next persist (a small change, so it appends where it can) runs on the
//! crashed disk, and a restore must give that persist's table.
//!
//! Every persist runs straight on a `PersistSession` and, in a second scenario, through the
//! writer thread of a `PersistPipeline` as the NIF runs it, each with the wrapper's retry
//! after `restart`.

mod common;

use common::crash::{for_each_crash_state, Counts};
use common::log_scenarios::*;
use common::scenarios::{table, TABLE};
use common::simfs::{describe, CallKind, SimFs, State};
use ptable_core::{Baselines, CommitOutcome, Reason};
use std::path::Path;
use std::sync::Arc;

/// States checked per crash point at most (sampled beyond).
const CAP: usize = 300;
/// The next persist runs after the first two states of each crash point (nothing and
/// everything pending reached the disk) and every this many states after.
const NEXT_EVERY: usize = 5;

#[derive(Clone)]
enum Op {
    /// A persist of this table, which must end as `Expect` says.
    Persist(Rows, Expect),
    /// A restore as the NIF runs it (corrupt files moved aside, the baseline left);
    /// `writes_nothing`: it must make no mutating call at all.
    Restore { writes_nothing: bool },
}

#[derive(Clone)]
struct Scenario {
    label: &'static str,
    start: LogStart,
    op: Op,
    /// Persists go through the writer thread, restores through the reader thread.
    threaded: bool,
}

impl Scenario {
    fn new(label: &'static str, start: &LogStart, op: Op) -> Self {
        Scenario {
            label,
            start: start.clone(),
            op,
            threaded: false,
        }
    }

    fn threaded(&self) -> Self {
        Scenario {
            threaded: true,
            ..self.clone()
        }
    }

    fn name(&self) -> String {
        let via = match (self.threaded, &self.op) {
            (false, _) => "",
            (true, Op::Persist(..)) => " (writer thread)",
            (true, Op::Restore { .. }) => " (reader thread)",
        };
        format!("{}{via} on {}", self.label, self.start.name)
    }

    /// The table the operation leaves.
    fn new_rows(&self) -> &Rows {
        match &self.op {
            Op::Persist(rows, _) => rows,
            Op::Restore { .. } => &self.start.rows,
        }
    }
}

struct Recording {
    history: Vec<(String, State)>,
    /// Crash point from which only the new table may be restored.
    done: usize,
}

fn record(scn: &Scenario) -> Recording {
    let fs = SimFs::from_state(scn.start.state.clone());
    let baselines = scn.start.baselines();
    fs.start_recording();
    match &scn.op {
        Op::Persist(rows, expect) => {
            let done = persist_rows(&fs, &baselines, rows, scn.threaded)
                .unwrap_or_else(|e| panic!("{}: {e}", scn.name()));
            assert!(
                expect.matches(done),
                "{}: {done:?}, expected {expect:?}",
                scn.name()
            );
        }
        Op::Restore { writes_nothing } => {
            let (pairs, _) = restore_rows(&fs, scn.threaded, true, Some(&baselines))
                .unwrap_or_else(|e| panic!("{}: {}", scn.name(), e.as_str()));
            assert_eq!(pairs, scn.start.rows.pairs(), "{}", scn.name());
            // The clean starts restore their stable file, which leaves a baseline; a
            // restore of the backup leaves none.
            assert_eq!(
                baselines.take(&common::scenarios::table()).is_some(),
                *writes_nothing,
                "{}: baseline left",
                scn.name()
            );
        }
    }
    let done = fs.history_len() - 1;
    let history = fs.take_history();
    if let Op::Restore {
        writes_nothing: true,
    } = scn.op
    {
        let calls: Vec<String> = history.iter().skip(1).map(|(w, _)| w.clone()).collect();
        assert!(
            calls.is_empty(),
            "{}: a restore wrote: {calls:?}",
            scn.name()
        );
    }
    Recording { history, done }
}

fn describe_restored(r: &Restored, scn: &Scenario) -> String {
    match r {
        Ok((pairs, skipped)) => {
            let which = if *pairs == scn.new_rows().pairs() {
                "the new table".to_string()
            } else if let Some(i) = scn.start.old.iter().position(|o| o.pairs() == *pairs) {
                format!("old table {i}")
            } else {
                format!("{} rows of neither table", pairs.len())
            };
            let skipped: Vec<&str> = skipped.iter().map(Reason::as_str).collect();
            format!("{which} (skipped {skipped:?})")
        }
        Err(reason) => format!("error {}", reason.as_str()),
    }
}

/// What one crash state did, beyond passing.
#[derive(Default)]
struct Seen {
    /// A restore skipped a torn or damaged log tail.
    log_tail: bool,
    /// The next persist ran, and appended to the log.
    next: Option<bool>,
    /// `backup_keeps_its_log` was checked.
    rotted: bool,
}

/// Everything a crash state must satisfy; `Err` says what was wrong.
fn check(
    scn: &Scenario,
    rec: &Recording,
    point: usize,
    state: State,
    next_persist: Option<u32>,
) -> Result<Seen, String> {
    let fs = SimFs::from_state(state.clone());
    let baselines = Arc::new(Baselines::new());
    // As the NIF restores after a reboot (on its own copy: it may move corrupt files).
    let straight = restore_rows(&fs, false, true, Some(&baselines));
    let streamed = restore_rows(&SimFs::from_state(state), true, false, None);
    if streamed != straight {
        return Err(format!(
            "the reader thread gave {}, a straight restore {}",
            describe_restored(&streamed, scn),
            describe_restored(&straight, scn)
        ));
    }
    let new = scn.new_rows();
    let allowed_old = point < rec.done;
    let restored = match &straight {
        Ok((pairs, _)) if *pairs == new.pairs() => new,
        Ok((pairs, _)) if allowed_old => match scn.start.old.iter().find(|o| o.pairs() == *pairs) {
            Some(old) => old,
            None => {
                return Err(format!(
                    "restore gave {}, expected old or new",
                    describe_restored(&straight, scn)
                ))
            }
        },
        _ => {
            return Err(format!(
                "restore gave {}, expected {}",
                describe_restored(&straight, scn),
                if allowed_old { "old or new" } else { "new" }
            ))
        }
    };
    let mut seen = Seen {
        log_tail: matches!(&straight, Ok((_, s)) if s.contains(&Reason::LogTail)),
        next: None,
        rotted: false,
    };
    // A compaction's new base in place and the old one as the backup: the next persist
    // always runs, and then the stable file rots (see `backup_keeps_its_log`).
    let rot_after_next = matches!(scn.op, Op::Persist(_, Expect::Restarted))
        && std::ptr::eq(restored, new)
        && fs.state().read(&table().backup()) == scn.start.state.read(&table().stable());
    let next_persist = next_persist.or(rot_after_next.then_some(point as u32 + 1));
    if let Some(salt) = next_persist {
        // The rebooted VM changes a little of what it restored and persists it, half the
        // time through the writer thread, with the baseline the restore left.
        let next = restored.small_change(salt);
        let persisted = persist_rows(&fs, &baselines, &next, salt % 2 == 0)
            .map_err(|e| format!("the next persist failed: {e}"))?;
        let after = restore_rows(&fs, salt % 3 == 0, false, None);
        if !matches!(&after, Ok((pairs, _)) if *pairs == next.pairs()) {
            return Err(format!(
                "after the next persist ({persisted:?}), restore gave {}",
                match &after {
                    Ok((pairs, _)) => format!("{} rows, not its table", pairs.len()),
                    Err(r) => format!("error {}", r.as_str()),
                }
            ));
        }
        seen.next = Some(matches!(persisted.outcome, CommitOutcome::Appended(_)));
        if rot_after_next {
            backup_keeps_its_log(scn, fs.state())?;
            seen.rotted = true;
        }
    }
    Ok(seen)
}

/// After a compaction has put the new base in place and the next persist has run, the
/// stable file rotting must still leave the table before the compaction: the old base, now
/// the backup, with its log, which the next persist's new log must not have replaced.
fn backup_keeps_its_log(scn: &Scenario, state: State) -> Result<(), String> {
    let fs = SimFs::from_state(state);
    ptable_core::Fs::remove_file(&fs, &table().stable()).map_err(|e| e.to_string())?;
    match restore_rows(&fs, false, false, None) {
        Ok((pairs, _)) if pairs == scn.start.rows.pairs() => Ok(()),
        other => Err(format!(
            "with the stable file gone after the next persist, restore gave {}, expected \
             the table before the compaction",
            describe_restored(&other, scn)
        )),
    }
}

struct Report {
    name: String,
    threaded_persist: bool,
    crash_points: usize,
    totals: Counts,
    log_tail: usize,
    /// States where `backup_keeps_its_log` was checked.
    rotted: usize,
    /// States of `torn_append_states` (beyond the explored count of `crash.rs`).
    torn_appends: usize,
    next_persists: usize,
    next_appended: usize,
    failures: Vec<String>,
    failure_count: usize,
}

fn explore(scn: &Scenario) -> Report {
    let rec = record(scn);
    let mut report = Report {
        name: scn.name(),
        threaded_persist: scn.threaded && matches!(scn.op, Op::Persist(..)),
        crash_points: rec.history.len(),
        totals: Counts::default(),
        log_tail: 0,
        rotted: 0,
        torn_appends: 0,
        next_persists: 0,
        next_appended: 0,
        failures: Vec::new(),
        failure_count: 0,
    };
    for (point, (what, state)) in rec.history.iter().enumerate() {
        let mut index = 0usize;
        let mut run = |crashed: State, describe_choice: &dyn Fn() -> String| {
            let next = (index < 2 || index.is_multiple_of(NEXT_EVERY))
                .then_some((point * 31 + index) as u32 + 1);
            index += 1;
            let tree = describe(&crashed, Path::new(TABLE));
            match check(scn, &rec, point, crashed, next) {
                Ok(seen) => {
                    report.log_tail += usize::from(seen.log_tail);
                    report.rotted += usize::from(seen.rotted);
                    if let Some(appended) = seen.next {
                        report.next_persists += 1;
                        report.next_appended += usize::from(appended);
                    }
                }
                Err(msg) => {
                    report.failure_count += 1;
                    if report.failures.len() < 5 {
                        report.failures.push(format!(
                            "{}: crash after #{point} ({what}): {msg}\n    choices: {}\n    disk: {tree}",
                            scn.name(),
                            describe_choice()
                        ));
                    }
                }
            }
        };
        let counts = for_each_crash_state(state, CAP, point as u64, &mut run);
        let torn = torn_append_states(state);
        report.torn_appends += torn.len();
        for (label, crashed) in torn {
            run(crashed, &|| label.clone());
        }
        report.totals.possible += counts.possible;
        report.totals.explored += counts.explored;
        report.totals.sampled_dirs += counts.sampled_dirs;
        report.totals.max_pending_entries = report
            .totals
            .max_pending_entries
            .max(counts.max_pending_entries);
    }
    report
}

fn scenarios() -> Vec<Scenario> {
    let pre = Rows::new(200).big_change(90);
    let t0 = Rows::new(200);
    let t1 = t0.small_change(1);
    let t2 = t1.small_change(2);
    let base = build_start(
        "a base without a log",
        &[
            (pre.clone(), Expect::Written),
            (t0.clone(), Expect::Restarted),
        ],
    );
    let logged = build_start(
        "a base with a log of 2 records",
        &[
            (pre.clone(), Expect::Written),
            (t0.clone(), Expect::Restarted),
            (t1.clone(), Expect::Appended),
            (t2.clone(), Expect::Appended),
        ],
    );
    let logged_rebooted = after_vm_restart(&logged, "a base with a log, baseline restored");
    let torn = with_torn_tail(
        &logged,
        "a log with a torn last record",
        &t2.small_change(3),
        10,
    );
    let t4 = t2.big_change(4);
    let t5 = t4.small_change(5);
    let compacted = build_start(
        "a compacted base with a log and a backup log",
        &[
            (pre, Expect::Written),
            (t0.clone(), Expect::Restarted),
            (t1, Expect::Appended),
            (t2.clone(), Expect::Appended),
            (t4.clone(), Expect::Restarted),
            (t5.clone(), Expect::Appended),
        ],
    );
    // The stable file rotted: the backup (t0) and its log (under the backup log's name)
    // give t2.
    let rotten = with_rotten_stable(&compacted, "a compacted base that rotted", &t2);

    let moved = with_log_as_backup_log(&logged, "a log under the backup log's name");
    // The previous VM's append failed at its fsync (of the record, of the directory after
    // the new log's rename); persisting the table it restores must make that durable.
    let t3 = t2.small_change(19);
    let unsynced_record = after_failed_sync(
        &logged,
        "a log whose last append's fsync failed",
        &t3,
        CallKind::Sync,
        &table().log(),
    );
    let unsynced_log = after_failed_sync(
        &base,
        "a new log whose directory fsync failed",
        &base.rows.small_change(20),
        CallKind::SyncDir,
        Path::new(TABLE),
    );
    let (full_log, no_room) = with_full_log(&logged, "a log at its compaction threshold", 100);

    let quarantined = after_restore(&rotten, "a compacted base that rotted, moved aside");

    let persist = |rows: Rows, expect| Op::Persist(rows, expect);
    let direct = vec![
        Scenario::new(
            "first append",
            &base,
            persist(base.rows.small_change(11), Expect::Appended),
        ),
        Scenario::new(
            "append in place",
            &logged,
            persist(t2.small_change(12), Expect::Appended),
        ),
        Scenario::new(
            "append in place",
            &logged_rebooted,
            persist(t2.small_change(13), Expect::Appended),
        ),
        Scenario::new(
            "persist of the unchanged table",
            &logged,
            persist(t2.clone(), Expect::Unchanged),
        ),
        Scenario::new(
            "persist of the same table again",
            &unsynced_record,
            persist(t3.clone(), Expect::Unchanged),
        ),
        Scenario::new(
            "persist of the same table again",
            &unsynced_log,
            persist(unsynced_log.rows.clone(), Expect::Unchanged),
        ),
        Scenario::new(
            "append",
            &unsynced_record,
            persist(t3.small_change(21), Expect::Appended),
        ),
        // The table equal to the base alone: it must not be taken for unchanged while
        // the base's log (under either name) changes it.
        Scenario::new(
            "persist of the base's table",
            &without_baseline(&logged, "a base with a log of 2 records, no baseline"),
            persist(t0.clone(), Expect::Written),
        ),
        Scenario::new(
            "persist of the base's table",
            &without_baseline(&moved, "a log under the backup log's name, no baseline"),
            persist(t0.clone(), Expect::Written),
        ),
        // The rotten base's contents again: its log must not come back with them.
        Scenario::new(
            "persist of the rotten base's table",
            &quarantined,
            persist(t4.clone(), Expect::Written),
        ),
        Scenario::new(
            "append (a new log)",
            &moved,
            persist(t2.small_change(18), Expect::Appended),
        ),
        Scenario::new(
            "append after a torn tail",
            &torn,
            persist(t2.small_change(14), Expect::Appended),
        ),
        Scenario::new(
            "compaction",
            &logged,
            persist(t2.big_change(15), Expect::Restarted),
        ),
        Scenario::new(
            "compaction for want of room",
            &full_log,
            persist(no_room, Expect::Restarted),
        ),
        Scenario::new(
            "compaction",
            &torn,
            persist(t2.big_change(17), Expect::Restarted),
        ),
        Scenario::new(
            "second compaction",
            &compacted,
            persist(t5.big_change(16), Expect::Restarted),
        ),
    ];
    let restores = vec![
        Scenario::new(
            "restore",
            &logged,
            Op::Restore {
                writes_nothing: true,
            },
        ),
        Scenario::new(
            "restore",
            &torn,
            Op::Restore {
                writes_nothing: true,
            },
        ),
        Scenario::new(
            "restore",
            &moved,
            Op::Restore {
                writes_nothing: true,
            },
        ),
        Scenario::new(
            "restore",
            &compacted,
            Op::Restore {
                writes_nothing: true,
            },
        ),
        Scenario::new(
            "restore",
            &rotten,
            Op::Restore {
                writes_nothing: false,
            },
        ),
    ];
    let threaded: Vec<Scenario> = direct
        .iter()
        .chain(restores.iter().filter(|s| s.start.name == rotten.name))
        .map(Scenario::threaded)
        .collect();
    direct.into_iter().chain(restores).chain(threaded).collect()
}

#[test]
fn every_crash_state_of_the_change_log_restores_old_or_new_table() {
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
    let mut next = (0, 0);
    let mut log_tail = 0;
    let mut rotted = 0;
    let mut torn = 0;
    let mut failures = Vec::new();
    let mut failure_count = 0;
    for r in &reports {
        println!(
            "{:<80} {:>3} crash points, {:>5} states explored of {:>6} allowed \
             (max {} pending entries in a directory, {} sampled directories), \
             + {} torn appends, {} with a log tail skipped, {} next persists ({} appended), \
             {} failures",
            r.name,
            r.crash_points,
            r.totals.explored,
            r.totals.possible,
            r.totals.max_pending_entries,
            r.totals.sampled_dirs,
            r.torn_appends,
            r.log_tail,
            r.next_persists,
            r.next_appended,
            r.failure_count,
        );
        explored += r.totals.explored + r.torn_appends;
        torn += r.torn_appends;
        log_tail += r.log_tail;
        rotted += r.rotted;
        next.0 += r.next_persists;
        next.1 += r.next_appended;
        if r.threaded_persist {
            threaded.0 += 1;
            threaded.1 += r.totals.explored + r.torn_appends;
        }
        failure_count += r.failure_count;
        failures.extend(r.failures.iter().cloned());
    }
    println!("crash states explored in total: {explored}");
    println!(
        "{rotted} states after a compaction's install and the next persist still restored \
         the table before the compaction from the backup and its log, the stable file gone"
    );
    println!(
        "of which {torn} torn appends (a record cut at its header's fields and quarters, or \
         zeros where its bytes did not arrive)"
    );
    println!(
        "of which {} in {} scenarios persisting through the writer thread; every state \
         restored both straight and through the reader thread",
        threaded.1, threaded.0
    );
    println!(
        "{log_tail} states restored past a torn log tail; the next persist ran after {} \
         states ({} of them appended to a log) and restored to its table",
        next.0, next.1
    );
    assert!(
        failures.is_empty(),
        "{failure_count} crash states failed, first ones:\n{}",
        failures.join("\n")
    );
    assert!(explored >= 8000, "only {explored} crash states explored");
    assert!(
        threaded.1 >= 4000,
        "only {} crash states of the writer thread",
        threaded.1
    );
    assert!(torn >= 1000, "only {torn} torn appends");
    assert!(
        log_tail >= 2000,
        "only {log_tail} states with a torn log tail"
    );
    assert!(next.1 >= 1500, "only {} next persists appended", next.1);
    assert!(
        rotted >= 16,
        "only {rotted} states with the stable file gone"
    );
}
