//! What every fuzzer of `fuzz_decoders` runs its inputs with: threads, `catch_unwind`
//! around each input, a watchdog that fails the run when one input hangs, progress, and
//! the seed printed with the command that reproduces one input.
//!
//! Variables: `PTABLE_FUZZ_SEED` (default: from the clock, printed), `PTABLE_FUZZ_ITERATIONS`
//! (default: the fuzzer's), `PTABLE_FUZZ_THREADS` (default: available parallelism),
//! `PTABLE_FUZZ_HANG_SECS` (default 30), `PTABLE_FUZZ_ONLY` (one input; see [`only_input`]).

use crate::rng::{clock_seed, env_u64};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Stack of each worker: reference decoders written for clarity recurse.
const WORKER_STACK: usize = 64 << 20;
/// Failures kept for the report (all are counted).
const KEPT_FAILURES: usize = 20;

/// The seed of this run: `PTABLE_FUZZ_SEED`, or the clock.
pub fn run_seed() -> u64 {
    env_u64("PTABLE_FUZZ_SEED").unwrap_or_else(clock_seed)
}

/// `PTABLE_FUZZ_ONLY`: the one input to run instead of a whole run.
pub fn only_input() -> Option<u64> {
    env_u64("PTABLE_FUZZ_ONLY")
}

/// How a run went.
pub struct Totals {
    name: String,
    run_seed: u64,
    iterations: u64,
    inputs: u64,
    panics: u64,
    failures: u64,
    /// The first failures (a panic's message, or the oracle's), with their input index.
    kept: Vec<String>,
}

impl Totals {
    /// Prints the kept failures and fails the test if any input panicked, failed an oracle
    /// or did not run.
    pub fn assert_clean(self) {
        for f in &self.kept {
            println!("  FAIL {f}");
        }
        let seed = self.run_seed;
        assert_eq!(self.panics, 0, "{}: panics (seed {seed:#x})", self.name);
        assert_eq!(
            self.failures, 0,
            "{}: oracle failures (seed {seed:#x})",
            self.name
        );
        assert_eq!(self.inputs, self.iterations);
    }
}

/// Runs inputs `0..PTABLE_FUZZ_ITERATIONS` (default `default_iterations`) of `name` through
/// `one`, which checks input `i` and returns what it found or why it failed; `tally` sees
/// every success. Prints the start, progress every minute and the totals. A hung input
/// (over `PTABLE_FUZZ_HANG_SECS`) cannot be interrupted: it ends the process.
pub fn drive<O>(
    name: &str,
    run_seed: u64,
    default_iterations: u64,
    one: &(dyn Fn(u64) -> Result<O, String> + Sync),
    tally: &(dyn Fn(O) + Sync),
) -> Totals {
    let iterations = env_u64("PTABLE_FUZZ_ITERATIONS").unwrap_or(default_iterations);
    let threads = env_u64("PTABLE_FUZZ_THREADS")
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
        })
        .clamp(1, 64);
    let hang_secs = env_u64("PTABLE_FUZZ_HANG_SECS").unwrap_or(30);
    println!(
        "{name}: seed {run_seed:#x}, {iterations} inputs, {threads} threads (reproduce one \
         input with PTABLE_FUZZ_SEED={run_seed:#x} PTABLE_FUZZ_ONLY=<index>)"
    );
    let counters = Counters::default();
    let kept = Mutex::new(Vec::new());
    let t0 = Instant::now();
    // Per worker: the input in progress (u64::MAX when idle) and since when (ms after t0).
    let current: Vec<(AtomicU64, AtomicU64)> = (0..threads)
        .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
        .collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let worker = Worker {
                counters: &counters,
                kept: &kept,
                slot: &current[t as usize],
                t0,
            };
            std::thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, move || {
                    let mut i = t;
                    while i < iterations {
                        worker.run(i, one, tally);
                        i += threads;
                    }
                    worker.slot.0.store(u64::MAX, Ordering::Relaxed);
                    worker.counters.finished.fetch_add(1, Ordering::Relaxed);
                })
                .expect("fuzz worker");
        }
        let (counters, current) = (&counters, &current);
        scope.spawn(move || watch(name, run_seed, hang_secs, t0, counters, current));
    });
    let elapsed = t0.elapsed();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let totals = Totals {
        name: name.to_string(),
        run_seed,
        iterations,
        inputs: get(&counters.inputs),
        panics: get(&counters.panics),
        failures: get(&counters.failures),
        kept: kept.into_inner().unwrap_or_default(),
    };
    println!(
        "{name}: {} inputs in {:.1} s ({:.0}/s), seed {run_seed:#x}",
        totals.inputs,
        elapsed.as_secs_f64(),
        totals.inputs as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "  panics {}, oracle failures {}, hangs 0 (slowest input {} us)",
        totals.panics,
        totals.failures,
        get(&counters.slowest_us)
    );
    totals
}

#[derive(Default)]
struct Counters {
    inputs: AtomicU64,
    panics: AtomicU64,
    failures: AtomicU64,
    slowest_us: AtomicU64,
    /// Workers done with all their inputs.
    finished: AtomicU64,
}

struct Worker<'a> {
    counters: &'a Counters,
    kept: &'a Mutex<Vec<String>>,
    slot: &'a (AtomicU64, AtomicU64),
    t0: Instant,
}

impl Worker<'_> {
    fn run<O>(
        &self,
        i: u64,
        one: &(dyn Fn(u64) -> Result<O, String> + Sync),
        tally: &(dyn Fn(O) + Sync),
    ) {
        let started = self.t0.elapsed();
        self.slot
            .1
            .store(started.as_millis() as u64, Ordering::Relaxed);
        self.slot.0.store(i, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| one(i)));
        let took = (self.t0.elapsed() - started).as_micros() as u64;
        let c = self.counters;
        c.slowest_us.fetch_max(took, Ordering::Relaxed);
        c.inputs.fetch_add(1, Ordering::Relaxed);
        let failure = match result {
            Ok(Ok(outcome)) => {
                tally(outcome);
                return;
            }
            Ok(Err(msg)) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                format!("input {i}: {msg}")
            }
            Err(panic) => {
                c.panics.fetch_add(1, Ordering::Relaxed);
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("input {i}: PANIC {what}")
            }
        };
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() < KEPT_FAILURES {
                kept.push(failure);
            }
        }
    }
}

/// The watchdog: ends the process when an input runs over `hang_secs`, reports progress
/// every minute, returns once every worker is done.
fn watch(
    name: &str,
    run_seed: u64,
    hang_secs: u64,
    t0: Instant,
    counters: &Counters,
    current: &[(AtomicU64, AtomicU64)],
) {
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = t0.elapsed().as_millis() as u64;
        for (index, since) in current {
            let index = index.load(Ordering::Relaxed);
            if index != u64::MAX
                && now.saturating_sub(since.load(Ordering::Relaxed)) > hang_secs * 1000
            {
                eprintln!(
                    "HANG: {name} input {index} of seed {run_seed:#x} ran over {hang_secs} s"
                );
                std::process::exit(101);
            }
        }
        if counters.finished.load(Ordering::Relaxed) == current.len() as u64 {
            return;
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!(
                "{name}: {} inputs after {:.0} s",
                counters.inputs.load(Ordering::Relaxed),
                t0.elapsed().as_secs_f64()
            );
        }
    }
}
