//! Settings of the log: [`LogConfig`] and the [`FlushPolicy`] the committer
//! follows. Kept apart so a reader finds every knob and its default in one
//! place.

use std::time::Duration;

use super::format;
use crate::error::{Error, Result};

/// When the committer syncs the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushPolicy {
    /// Sync as soon as there is data, one fdatasync in flight; records that
    /// arrive meanwhile form the next group. No timer: the group size adapts
    /// to the load.
    #[default]
    GroupCommit,
    /// Sync at most once per interval (and on `flush`).
    Interval(Duration),
    /// Sync only on `flush` (and on close, and when the log buffer fills).
    /// A durability future awaited without a `flush` waits for the next
    /// one: resolve it with `flush`, or `close`.
    Manual,
}

/// Settings of the log.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogConfig {
    /// Bytes per segment file, header included (a multiple of 4 KiB; default
    /// 64 MiB). Segments are created ahead of need, filled with written
    /// zeros (or made from a segment a tree's checkpoint retired), so an
    /// fdatasync never has metadata to write. An existing log keeps the
    /// size it was created with.
    pub segment_size: u64,
    /// Bytes of the log buffer (a power of two, 4 KiB to 1 GiB; default
    /// 16 MiB). Bounds the
    /// memory of records not yet written out; appends wait when it is full.
    /// One record is at most half of it (less the 24 bytes appenders
    /// leave the committer).
    pub buffer_capacity: u64,
    /// When to sync.
    pub flush: FlushPolicy,
    /// How long the committer spins looking for new records before it
    /// sleeps (default 50 µs): shortens the path of a writer that appends
    /// right after its previous append became durable.
    pub spin: Duration,
    /// Write groups around the page cache (`O_DIRECT`) where the storage
    /// and file system allow it (default true); each group then rewrites
    /// the 4 KiB block it starts in. Falls back to buffered writes by
    /// itself.
    pub direct_io: bool,
    /// Whether the future of a writer that is alone (the last group commit
    /// held at most two records) spins up to about two fsync times on the
    /// thread that awaits it before it sleeps (default true). Saves the
    /// wake-up of a sleeping thread; never spins under concurrent load, and
    /// at most one waiter spins at a time. A thread whose futures resolved
    /// without sleeping several times in a row yields to its executor once
    /// before it spins again, so the tasks sharing its thread get to run
    /// (and join its groups). A future already durable is ready at once.
    pub lone_waiter_spin: bool,
    /// How many segments retired below a tree's checkpoint are kept to
    /// become the log's next segments (default 8: 512 MiB at the default
    /// size). A segment made from a spare needs no zeros written; 0 deletes
    /// retired segments at once, keeping the directory smallest.
    pub spare_segments: usize,
    /// The id every segment of this log carries (default all zeros); a
    /// segment carrying another is refused at open. A tree sets its own.
    pub tree_id: [u8; 16],
    /// Whether the log is known to exist already (default false). Then
    /// the segment holding the replay start must be there: a missing one
    /// is [`Error::Corruption`] naming it, never an empty log. A tree
    /// sets it once its identity record is durable.
    pub must_exist: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
            buffer_capacity: 16 << 20,
            flush: FlushPolicy::GroupCommit,
            spin: Duration::from_micros(50),
            direct_io: true,
            lone_waiter_spin: true,
            spare_segments: 8,
            tree_id: [0; 16],
            must_exist: false,
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_size < 2 * format::SEGMENT_HEADER
            || !self.segment_size.is_multiple_of(format::SEGMENT_HEADER)
            || self.segment_size > format::MAX_SEGMENT
        {
            return Err(Error::Config(format!(
                "WAL segment size {} must be a multiple of 4096 from 8192 to 1 GiB",
                self.segment_size
            )));
        }
        if !self.buffer_capacity.is_power_of_two()
            || self.buffer_capacity < 4096
            || self.buffer_capacity > 1 << 30
        {
            return Err(Error::Config(format!(
                "log buffer capacity {} must be a power of two from 4096 to 1 GiB",
                self.buffer_capacity
            )));
        }
        Ok(())
    }
}
