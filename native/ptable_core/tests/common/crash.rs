//! The states a power cut may leave a [`State`] in (see `simfs.rs` for the model):
//!
//! * each file's data changes since its last sync: all lost, all kept, cut at half, cut one
//!   byte short, cut after each operation and in the middle of each, cut inside the 80-byte
//!   header, every operation but one (pages written back out of order), only the last one;
//! * each directory's entry changes since its last sync: every subset independently (all
//!   2^n subsets up to `MAX_ENUMERATED_DIR_OPS` pending changes, a sample beyond);
//! * everything synced survives.
//!
//! The combinations are enumerated completely up to a cap per crash point, sampled beyond.

use super::simfs::{EntryOp, NodeKind, State};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;

/// Up to this many pending entry changes in one directory, every subset is tried.
pub const MAX_ENUMERATED_DIR_OPS: usize = 10;
/// Subsets sampled for a directory with more pending changes.
pub const SAMPLED_DIR_SUBSETS: usize = 256;
/// Bytes before the first frame of a version 2 file.
const HEADER_AREA_LEN: usize = 80;

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One way one inode may have come through the crash.
#[derive(Clone)]
enum Variant {
    File {
        label: String,
        bytes: Vec<u8>,
    },
    Dir {
        label: String,
        entries: BTreeMap<OsString, usize>,
    },
}

impl Variant {
    fn label(&self) -> &str {
        match self {
            Variant::File { label, .. } | Variant::Dir { label, .. } => label,
        }
    }
}

/// The distinct contents a file with pending data may have after a crash; the first is
/// "all lost", the second "all kept".
fn file_variants(durable: &[u8], pending: &[super::simfs::DataOp]) -> Vec<Variant> {
    let total: usize = pending.iter().map(|op| op.len()).sum();
    // A prefix of the operations, the last one cut after `keep` bytes.
    let prefix = |ops: usize, keep: usize| {
        let mut buf = durable.to_vec();
        for op in &pending[..ops] {
            op.apply(&mut buf, usize::MAX);
        }
        if let Some(op) = pending.get(ops) {
            op.apply(&mut buf, keep);
        }
        buf
    };
    // The prefix holding the first `bytes` bytes of the pending stream.
    let cut_at = |bytes: usize| {
        let mut left = bytes;
        for (i, op) in pending.iter().enumerate() {
            if left < op.len() || (op.len() == 0 && left == 0) {
                return prefix(i, left);
            }
            left -= op.len();
        }
        prefix(pending.len(), 0)
    };
    let mut candidates: Vec<(String, Vec<u8>)> = vec![
        ("lost".into(), durable.to_vec()),
        ("kept".into(), prefix(pending.len(), 0)),
        (format!("cut {}/{total}", total / 2), cut_at(total / 2)),
        (
            format!("cut {}/{total}", total.saturating_sub(1)),
            cut_at(total.saturating_sub(1)),
        ),
    ];
    for (i, op) in pending.iter().enumerate() {
        candidates.push((format!("ops ..{i}"), prefix(i, 0)));
        candidates.push((
            format!("ops ..{i} + half of op {i}"),
            prefix(i, op.len() / 2),
        ));
        if (op.offset() as usize) < HEADER_AREA_LEN && op.len() > 0 {
            let in_header = (HEADER_AREA_LEN - op.offset() as usize).min(op.len());
            for keep in [
                in_header / 2,
                12.min(in_header),
                in_header.saturating_sub(4),
            ] {
                candidates.push((format!("ops ..{i} + {keep} header bytes of op {i}"), {
                    prefix(i, keep)
                }));
            }
        }
        // Written back out of order: everything except operation i.
        let mut buf = durable.to_vec();
        for (j, other) in pending.iter().enumerate() {
            if j != i {
                other.apply(&mut buf, usize::MAX);
            }
        }
        candidates.push((format!("all but op {i}"), buf));
    }
    if let Some(last) = pending.last() {
        let mut buf = durable.to_vec();
        last.apply(&mut buf, usize::MAX);
        candidates.push(("only the last op".into(), buf));
    }
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|(_, bytes)| seen.insert(bytes.clone()))
        .map(|(label, bytes)| Variant::File { label, bytes })
        .collect()
}

fn describe_op(op: &EntryOp) -> String {
    match op {
        EntryOp::Link { name, .. } => format!("+{}", name.to_string_lossy()),
        EntryOp::Rename { from, to, .. } => {
            format!("{}->{}", from.to_string_lossy(), to.to_string_lossy())
        }
        EntryOp::Unlink { name, .. } => format!("-{}", name.to_string_lossy()),
    }
}

/// The entry maps a directory with pending changes may have after a crash: all subsets of
/// the changes (applied in their order), or a sample when there are many. The first is
/// "none reached the disk", the second "all did".
fn dir_variants(
    durable: &BTreeMap<OsString, usize>,
    pending: &[EntryOp],
    rng: &mut Rng,
) -> Vec<Variant> {
    let n = pending.len();
    let masks: Vec<Vec<bool>> = if n <= MAX_ENUMERATED_DIR_OPS {
        let mut all: Vec<Vec<bool>> = (0..1u32 << n)
            .map(|m| (0..n).map(|i| m & (1 << i) != 0).collect())
            .collect();
        // Put "all" second.
        let full = all.pop().expect("at least the empty subset");
        all.insert(1.min(all.len()), full);
        all
    } else {
        let mut v = vec![vec![false; n], vec![true; n]];
        for _ in 0..SAMPLED_DIR_SUBSETS {
            v.push((0..n).map(|_| rng.next() & 1 == 1).collect());
        }
        v
    };
    masks
        .into_iter()
        .map(|mask| {
            let mut entries = durable.clone();
            let mut reached = Vec::new();
            for (op, &on) in pending.iter().zip(&mask) {
                if on {
                    op.apply(&mut entries);
                    reached.push(describe_op(op));
                }
            }
            let label = format!("{{{}}} of {}", reached.join(" "), n);
            Variant::Dir { label, entries }
        })
        .collect()
}

/// Counts of one enumeration.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// States the model allows at this crash point (with sampled directories counted as
    /// their sample size).
    pub possible: u128,
    /// States materialized and checked.
    pub explored: usize,
    /// Directories whose pending changes had to be sampled.
    pub sampled_dirs: usize,
    /// Largest number of pending entry changes in one directory.
    pub max_pending_entries: usize,
}

/// Calls `check` with every crash state of `state` (up to `cap`, sampled beyond) and a
/// description of the choices that made it. Every returned state is fully durable.
pub fn for_each_crash_state(
    state: &State,
    cap: usize,
    seed: u64,
    mut check: impl FnMut(State, &dyn Fn() -> String),
) -> Counts {
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    // (inode, its variants) for every inode with pending changes.
    let mut components: Vec<(usize, Vec<Variant>)> = Vec::new();
    for (ino, node) in state.nodes.iter().enumerate() {
        match &node.kind {
            NodeKind::File(f) if !f.pending.is_empty() => {
                let v = file_variants(&f.durable, &f.pending);
                if v.len() > 1 {
                    components.push((ino, v));
                }
            }
            NodeKind::Dir(d) if !d.pending.is_empty() => {
                counts.max_pending_entries = counts.max_pending_entries.max(d.pending.len());
                if d.pending.len() > MAX_ENUMERATED_DIR_OPS {
                    counts.sampled_dirs += 1;
                }
                components.push((ino, dir_variants(&d.durable, &d.pending, &mut rng)));
            }
            _ => {}
        }
    }
    counts.possible = components
        .iter()
        .fold(1u128, |acc, (_, v)| acc.saturating_mul(v.len() as u128));

    let base = durable_only(state);
    let materialize = |choice: &[usize]| {
        let mut s = base.clone();
        for ((ino, variants), &c) in components.iter().zip(choice) {
            match (&variants[c], &mut s.nodes[*ino].kind) {
                (Variant::File { bytes, .. }, NodeKind::File(f)) => {
                    f.durable = bytes.clone();
                    f.current = bytes.clone();
                }
                (Variant::Dir { entries, .. }, NodeKind::Dir(d)) => {
                    d.durable = entries.clone();
                    d.current = entries.clone();
                }
                _ => unreachable!("variant kind matches inode kind"),
            }
        }
        s
    };
    let mut run = |choice: &[usize], counts: &mut Counts| {
        let describe = || {
            components
                .iter()
                .zip(choice)
                .map(|((ino, v), &c)| format!("#{ino}: {}", v[c].label()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        check(materialize(choice), &describe);
        counts.explored += 1;
    };

    if counts.possible <= cap as u128 {
        // Mixed-radix counter over every combination.
        let mut choice = vec![0usize; components.len()];
        loop {
            run(&choice, &mut counts);
            let mut i = 0;
            loop {
                if i == choice.len() {
                    return counts;
                }
                choice[i] += 1;
                if choice[i] < components[i].1.len() {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
        }
    } else {
        // The two extremes, then a random sample.
        run(&vec![0; components.len()], &mut counts);
        run(&vec![1; components.len()], &mut counts);
        for _ in 2..cap {
            let choice: Vec<usize> = components.iter().map(|(_, v)| rng.below(v.len())).collect();
            run(&choice, &mut counts);
        }
        counts
    }
}

/// `state` with every pending change dropped: what survives when nothing unsynced reaches
/// the disk.
pub fn durable_only(state: &State) -> State {
    let mut s = state.clone();
    for node in &mut s.nodes {
        match &mut node.kind {
            NodeKind::File(f) => {
                f.current = f.durable.clone();
                f.pending.clear();
            }
            NodeKind::Dir(d) => {
                d.current = d.durable.clone();
                d.pending.clear();
            }
        }
    }
    s
}
