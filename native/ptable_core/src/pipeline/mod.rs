//! The threads between a caller and the files, independent of who the caller is (the NIF
//! hands terms over; tests hand bytes and run the same threads under the simulated
//! filesystem's faults and crash states):
//!
//! * [`persist`]: chunks appended by the caller are compressed, hashed and written by a
//!   writer thread, overlapping with the caller encoding the next chunk.
//! * [`restore`]: a reader thread reads, decompresses and checks the next chunks of a
//!   verified file and hands each to a [`StepSink`] (the NIF's builds the rows in a message
//!   to the restoring process), paced by credits the caller gives back; [`replay`] leaves
//!   out the rows a change log supersedes and adds the log's.

pub mod persist;
pub mod replay;
pub mod restore;

pub use persist::{ChunkConsumer, PersistPipeline};
pub use replay::{open_restore, BaselineKeeper, OpenedRestore, Replay};
pub use restore::{RestorePipeline, Step, StepSink};
