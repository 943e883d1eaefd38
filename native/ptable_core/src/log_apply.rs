//! Replaying a change log over its base, so that a restore can stream and never inserts a
//! row that a later operation supersedes.
//!
//! Every operation names a row by its property hash (see `change_index`): after a record,
//! the row named `h` is the record's upserted pair whose property hashes to `h`, or is gone
//! if the record deletes `h`, or is as before. Names are hashes of encodings, not terms, so
//! replay never deletes by term: a property whose encoding changed (another OTP release)
//! shows up as an upsert under the new encoding's hash and a delete of the old one, and the
//! right row survives either way.
//!
//! A restore reads the log first and keeps, per named row, only its latest operation
//! ([`LogPlan`]: about 8.5 bytes per distinct row the log touches, not the pairs).
//! It then streams the base, skipping every row the log names, and finally reads the log
//! again and inserts each upsert that is its row's latest operation. Each row of the result
//! is inserted exactly once, and memory does not grow with the log's pairs. [`apply`] does
//! the same in memory; it is the tests' oracle.

use crate::change_index::{pair_hash, ChangeIndex, IndexBuilder, IndexError, RowHash};
use crate::change_log::LogRecord;
use crate::etf_rows::{self, EtfError};
use std::fmt;

mod plan;

pub use plan::{LogPlan, PlanBuilder};

/// Why a replay could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError {
    /// Records were given out of order (a reader never does this).
    OutOfOrder { expected: u64, got: u64 },
    /// A base chunk is not a well-formed list of pairs.
    Etf(EtfError),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::OutOfOrder { expected, got } => {
                write!(f, "record {got} where {expected} was expected")
            }
            ApplyError::Etf(e) => write!(f, "malformed base chunk: {e}"),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<EtfError> for ApplyError {
    fn from(e: EtfError) -> Self {
        ApplyError::Etf(e)
    }
}

/// The state a base and its log describe.
#[derive(Debug)]
pub struct Applied {
    /// Every pair's bytes: the base's surviving pairs in base order, then the log's final
    /// upserts in log order.
    pub pairs: Vec<Vec<u8>>,
    /// The change index of that state (with `seed`), or why there is none.
    pub index: Result<ChangeIndex, IndexError>,
}

/// Replays `records` (a log's valid records, in order, read with `seed` as its hash seed)
/// over the pairs of `base_chunks`, as a restore does: plan, base, final upserts.
pub fn apply(
    seed: u64,
    base_chunks: &[&[u8]],
    records: &[LogRecord],
) -> Result<Applied, ApplyError> {
    let mut plan = PlanBuilder::new();
    for record in records {
        plan.add(record)?;
    }
    let plan = plan.finish();
    let mut pairs = Vec::new();
    let mut builder = IndexBuilder::new(seed);
    let mut index_error = None;
    let mut index_row = |builder: &mut IndexBuilder, row: RowHash| {
        if let Err(e) = builder.push(row) {
            index_error.get_or_insert(e);
        }
    };
    for chunk in base_chunks {
        for pair in etf_rows::pairs(chunk)? {
            let pair = pair?;
            let row = RowHash::of(seed, &pair);
            if plan.supersedes(row.property) {
                continue;
            }
            pairs.push(pair.bytes.to_vec());
            index_row(&mut builder, row);
        }
    }
    for record in records {
        for (index, upsert) in record.upserts().enumerate() {
            if plan.is_final(record.sequence, index) {
                pairs.push(upsert.pair.to_vec());
                let row = RowHash {
                    property: upsert.property_hash,
                    pair: pair_hash(seed, upsert.pair),
                };
                index_row(&mut builder, row);
            }
        }
    }
    let index = match index_error {
        Some(e) => Err(e),
        None => builder.finish(),
    };
    Ok(Applied { pairs, index })
}
