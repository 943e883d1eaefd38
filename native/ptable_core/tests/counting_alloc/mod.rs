//! A global allocator that counts, per thread and only while [`tracked`] runs, the live
//! bytes allocated, their peak and the largest single allocation: the memory oracle of the
//! tests that feed the core files whose headers claim more than they hold.
//!
//! A test binary opts in with `mod counting_alloc;` (the `#[global_allocator]` below then
//! serves the whole binary; an example, with a `#[path]` to this file). Only the calling thread is counted, so threads of other tests
//! running meanwhile do not disturb the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAlloc;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                let v = l.get() + size as i64;
                l.set(v);
                v
            });
            PEAK.with(|p| p.set(p.get().max(live)));
            LARGEST.with(|m| m.set(m.get().max(size)));
        }
    });
}

fn note_free(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            LIVE.with(|l| l.set(l.get() - size as i64));
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// What [`measured`] saw its closure allocate on the calling thread.
#[allow(dead_code)]
pub struct Usage {
    /// Bytes allocated and not freed when it returned (what it returns, for instance).
    pub live: i64,
    /// The peak of live bytes.
    pub peak: u64,
    /// The largest single allocation (attempts that failed included).
    pub largest: u64,
}

/// Runs `f` with allocation tracking on; returns its result and what it allocated.
#[allow(dead_code)]
pub fn measured<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    LARGEST.with(|m| m.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    let usage = Usage {
        live: LIVE.with(|l| l.get()),
        peak: PEAK.with(|p| p.get()).max(0) as u64,
        largest: LARGEST.with(|m| m.get()) as u64,
    };
    (r, usage)
}

/// Runs `f` with allocation tracking on; returns its result, the peak of live bytes it
/// allocated, and its largest single allocation (attempts that failed included).
#[allow(dead_code)]
pub fn tracked<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (r, usage) = measured(f);
    (r, usage.peak, usage.largest)
}

/// Runs `f` (work of the test itself, such as a reference decoder) without counting its
/// allocations, inside [`tracked`].
#[allow(dead_code)]
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let was = TRACK.with(|t| t.replace(false));
    let r = f();
    TRACK.with(|t| t.set(was));
    r
}
