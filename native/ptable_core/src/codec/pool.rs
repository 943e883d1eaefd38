//! Reuse of zstd contexts across files.

use super::WINDOW_LOG_MAX;
use std::io;
use std::sync::Mutex;
use zstd::zstd_safe::{self, CCtx, DCtx, DParameter};

/// zstd contexts kept for the next file. A fresh context allocates its tables and buffers
/// and zstd clears them: inside the VM that memory comes back from the allocator as new
/// pages, and faulting them in cost about 0.7 ms of a 1,000-row persist (a third of it).
/// Only small contexts are kept (at most [`POOLED_CONTEXTS`] of [`POOLED_CONTEXT_BYTES`]
/// each, per kind), so the memory held between calls stays small; large files, whose setup
/// is a small part of their time, free theirs.
pub(super) struct ContextPool<T>(Mutex<Vec<T>>);

pub(super) const POOLED_CONTEXTS: usize = 2;
pub(super) const POOLED_CONTEXT_BYTES: usize = 2 << 20;

impl<T> ContextPool<T> {
    pub(super) const fn new() -> Self {
        ContextPool(Mutex::new(Vec::new()))
    }

    pub(super) fn take(&self) -> Option<T> {
        self.0.lock().ok()?.pop()
    }

    /// Keeps `context` (of `bytes` bytes) if it is small and the pool has room.
    pub(super) fn give(&self, context: T, bytes: usize) {
        if bytes <= POOLED_CONTEXT_BYTES {
            if let Ok(mut pool) = self.0.lock() {
                if pool.len() < POOLED_CONTEXTS {
                    pool.push(context);
                }
            }
        }
    }
}

pub(super) static CCTXS: ContextPool<CCtx<'static>> = ContextPool::new();
pub(super) static DCTXS: ContextPool<DCtx<'static>> = ContextPool::new();

impl ContextPool<CCtx<'static>> {
    /// A compression context from the pool, reset to zstd's defaults, or a new one.
    pub(super) fn cctx(&self) -> io::Result<CCtx<'static>> {
        if let Some(mut cctx) = self.take() {
            if cctx
                .reset(zstd_safe::ResetDirective::SessionAndParameters)
                .is_ok()
            {
                return Ok(cctx);
            }
        }
        CCtx::try_create().ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }
}

impl ContextPool<DCtx<'static>> {
    /// A decompression context from the pool (reset) or a new one, refusing windows over
    /// [`WINDOW_LOG_MAX`].
    pub(super) fn limited_dctx(&self) -> Option<DCtx<'static>> {
        let pooled = self.take().and_then(|mut d| {
            d.reset(zstd_safe::ResetDirective::SessionAndParameters)
                .ok()
                .map(|_| d)
        });
        let mut d = match pooled {
            Some(d) => d,
            None => DCtx::try_create()?,
        };
        d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .ok()?;
        Some(d)
    }
}
