//! Snapshot ids: exactly 16 uppercase hexadecimal characters (8 random bytes). Anything else
//! is refused before any path is built from it.

use crate::error::{Error, Reason, Result};
use std::fmt;

pub const SNAPSHOT_ID_LEN: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId([u8; SNAPSHOT_ID_LEN]);

impl SnapshotId {
    /// Accepts exactly 16 characters of `0-9A-F`.
    pub fn parse(s: &str) -> Result<Self> {
        let bytes: [u8; SNAPSHOT_ID_LEN] = s
            .as_bytes()
            .try_into()
            .map_err(|_| Error::without_path(Reason::InvalidSnapshotId))?;
        if bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            Ok(SnapshotId(bytes))
        } else {
            Err(Error::without_path(Reason::InvalidSnapshotId))
        }
    }

    /// The id of 8 bytes, as uppercase hexadecimal.
    pub fn from_bytes(raw: [u8; 8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; SNAPSHOT_ID_LEN];
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0F)];
        }
        SnapshotId(out)
    }

    /// A new id from the operating system's random source.
    pub fn random() -> Result<Self> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|_| Error::without_path(Reason::Os("eio")))?;
        Ok(Self::from_bytes(raw))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.as_str())
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_16_uppercase_hex() {
        assert!(SnapshotId::parse("0123456789ABCDEF").is_ok());
        for bad in [
            "",
            "0123456789abcdef",
            "0123456789ABCDE",
            "0123456789ABCDEF0",
            "../../etc/passwd",
            "0123456789ABCDEG",
            "0123456789ABCD/F",
            "0123456789ABCDÉ",
        ] {
            assert_eq!(
                SnapshotId::parse(bad).unwrap_err().reason,
                Reason::InvalidSnapshotId,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = SnapshotId::random().unwrap();
        let b = SnapshotId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(SnapshotId::parse(a.as_str()).unwrap(), a);
        assert_eq!(
            SnapshotId::from_bytes([0xAB, 0, 1, 2, 3, 4, 5, 0xFF]).as_str(),
            "AB000102030405FF"
        );
    }
}
