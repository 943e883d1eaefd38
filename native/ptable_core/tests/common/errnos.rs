//! The errnos the fault tests inject, per kind of call, and the reason each must surface as.

use super::simfs::CallKind;
use ptable_core::Reason;

pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const EACCES: i32 = 13;
pub const ENOSPC: i32 = 28;
pub const EROFS: i32 = 30;
pub const EDQUOT: i32 = 122;

/// The errnos each kind of call is made to fail with: what it can return on Linux (a
/// write also fails after writing part of its bytes, see `simfs.rs`).
pub fn errnos(kind: CallKind) -> &'static [i32] {
    match kind {
        CallKind::Create => &[EIO, EACCES, ENOSPC],
        CallKind::Open => &[EIO, EACCES],
        CallKind::OpenAppend => &[EIO, EACCES, EROFS],
        CallKind::Read => &[EIO],
        CallKind::WriteAll | CallKind::WriteAt => &[ENOSPC, EIO, EDQUOT],
        CallKind::Sync => &[EIO, ENOSPC],
        CallKind::Rename => &[EACCES, EIO, EROFS],
        CallKind::RemoveFile => &[EACCES, EIO],
        CallKind::CreateDir => &[EACCES, ENOSPC],
        CallKind::SyncDir => &[ENOENT, EIO],
        CallKind::ReadDir => &[EIO, EACCES],
        CallKind::Metadata => &[EIO, EACCES],
        CallKind::TryLock => &[EIO, EACCES],
    }
}

/// The reason an errno must surface as.
pub fn expected_reason(code: i32) -> Reason {
    match code {
        ENOENT => Reason::Enoent,
        EIO => Reason::Os("eio"),
        EACCES => Reason::Os("eacces"),
        ENOSPC => Reason::Os("enospc"),
        EROFS => Reason::Os("erofs"),
        EDQUOT => Reason::Os("edquot"),
        _ => panic!("no expectation for errno {code}"),
    }
}
