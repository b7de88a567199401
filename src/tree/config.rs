//! `Config`: how a tree is opened, logged, checkpointed and tiered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint;
use crate::io::{IoBackend, Storage};
use crate::wal::{FlushPolicy, LogConfig};

/// Which levels are served from the shard files (memory-mapped) once they
/// are checkpointed, and which stay in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiering {
    /// Levels below this one (0 = the leaves) are served from their shard
    /// files after a checkpoint and after reopening; levels at or above it
    /// stay in memory. The default, `usize::MAX`, maps every level; 0 keeps
    /// everything in memory. Each level's last chunk is always in memory.
    pub pin_above_level: usize,
}

impl Default for Tiering {
    fn default() -> Self {
        Tiering {
            pin_above_level: usize::MAX,
        }
    }
}

/// When a tree checkpoints by itself (it always can on `checkpoint()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointPolicy {
    /// Only on `checkpoint()`.
    Manual,
    /// In the background after every this many inserts (records).
    EveryNEntries(u64),
    /// In the background whenever the log has grown by this many bytes
    /// since the last checkpoint; bounds the log's size and the time to
    /// reopen. The default, with 256 MiB.
    WalBytes(u64),
    /// On `close()` only.
    OnClose,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy::WalBytes(256 << 20)
    }
}

/// How to open a [`Tree`](crate::Tree).
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The tree's directory (created if missing).
    pub dir: PathBuf,
    /// When the log syncs (default: group commit).
    pub flush: FlushPolicy,
    /// Which I/O backend (default: `Auto`: io_uring where it can be set up,
    /// else the threaded backend; with `Auto` only, the `RINGTREE_IO`
    /// environment variable, `uring` or `threaded`, decides). See
    /// [`open_storage`](crate::io::open_storage).
    pub io: IoBackend,
    /// Bytes of the log buffer (power of two, 4 KiB to 1 GiB; default
    /// 16 MiB). Bounds the
    /// memory of inserts not yet written out; inserts wait when it is full.
    /// One `insert_many` takes at most about `capacity / 64` leaves
    /// ([`Tree::max_batch`](crate::Tree::max_batch) gives the number).
    pub buffer_capacity: u64,
    /// Bytes per WAL segment file (multiple of 4 KiB; default 64 MiB).
    pub segment_size: u64,
    /// How long the committer spins for new records before sleeping
    /// (default 50 µs).
    pub spin: Duration,
    /// Whether the log writes around the page cache (`O_DIRECT`) where it
    /// can (default true; see [`LogConfig::direct_io`]).
    pub direct_io: bool,
    /// Whether a lone writer's durability future spins briefly before it
    /// sleeps (default true; see [`LogConfig::lone_waiter_spin`]).
    pub lone_waiter_spin: bool,
    /// Log segments retired by checkpoints kept to become the log's next
    /// ones (default 8; see [`LogConfig::spare_segments`]).
    pub spare_segments: usize,
    /// When to checkpoint by itself (default: every 256 MiB of log).
    pub checkpoint: CheckpointPolicy,
    /// At open, check every chunk checksum before returning and recompute
    /// every level and the root from the leaves (default false: mapped
    /// chunks are checked in the background after open, the rest at once).
    pub verify_on_open: bool,
    /// Which levels are served from the shard files.
    pub tiering: Tiering,
    /// Leaves an OS thread inserts between two yields of its CPU to the
    /// kernel (`sched_yield`, after the insert, with no lock held; default
    /// 256, 0: never). Where busy executor threads and the committer
    /// outnumber the cores, the committer otherwise waits for the kernel's
    /// tick to preempt an executor thread before it can sync the next
    /// group; see `docs/ARCHITECTURE.md`, "Scheduling policy", for what it
    /// buys on each runtime shape.
    pub thread_yield_every: u32,
    pub(super) storage: Option<Arc<dyn Storage>>,
    pub(super) failpoint: checkpoint::Failpoint,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dir", &self.dir)
            .field("flush", &self.flush)
            .field("io", &self.io)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("segment_size", &self.segment_size)
            .field("spin", &self.spin)
            .field("direct_io", &self.direct_io)
            .field("lone_waiter_spin", &self.lone_waiter_spin)
            .field("spare_segments", &self.spare_segments)
            .field("checkpoint", &self.checkpoint)
            .field("verify_on_open", &self.verify_on_open)
            .field("thread_yield_every", &self.thread_yield_every)
            .field("custom_storage", &self.storage.is_some())
            .finish()
    }
}

impl Config {
    /// Defaults for a tree in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let log = LogConfig::default();
        Self {
            dir: dir.into(),
            flush: log.flush,
            io: IoBackend::Auto,
            buffer_capacity: log.buffer_capacity,
            segment_size: log.segment_size,
            spin: log.spin,
            direct_io: log.direct_io,
            lone_waiter_spin: log.lone_waiter_spin,
            spare_segments: log.spare_segments,
            checkpoint: CheckpointPolicy::default(),
            verify_on_open: false,
            thread_yield_every: 256,
            tiering: Tiering::default(),
            storage: None,
            failpoint: None,
        }
    }

    /// Sets how many leaves an OS thread inserts between two yields of its
    /// CPU (0: never; see [`thread_yield_every`](Self::thread_yield_every)).
    pub fn thread_yield_every(mut self, leaves: u32) -> Self {
        self.thread_yield_every = leaves;
        self
    }

    /// Sets the checkpoint policy.
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoint = policy;
        self
    }

    /// Sets which levels are served from the shard files.
    pub fn tiering(mut self, tiering: Tiering) -> Self {
        self.tiering = tiering;
        self
    }

    /// Sets whether open recomputes every level from the leaves.
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// Crash tests: checkpoints stop with an error at the named point
    /// (`shard-write`, `shard-sync`, `manifest-write`, `manifest-rename`,
    /// `wal-recycle`), as a crash there would leave them.
    #[doc(hidden)]
    pub fn failpoint(mut self, point: &'static str) -> Self {
        self.failpoint = Some(point);
        self
    }

    /// Sets the flush policy.
    pub fn flush(mut self, flush: FlushPolicy) -> Self {
        self.flush = flush;
        self
    }

    /// Sets the I/O backend.
    pub fn io(mut self, io: IoBackend) -> Self {
        self.io = io;
        self
    }

    /// Sets the log buffer capacity in bytes.
    pub fn buffer_capacity(mut self, bytes: u64) -> Self {
        self.buffer_capacity = bytes;
        self
    }

    /// Sets the WAL segment size in bytes.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets whether the log writes around the page cache where it can.
    pub fn direct_io(mut self, direct: bool) -> Self {
        self.direct_io = direct;
        self
    }

    /// Sets whether a lone writer's durability future spins briefly.
    pub fn lone_waiter_spin(mut self, spin: bool) -> Self {
        self.lone_waiter_spin = spin;
        self
    }

    /// Sets how long the committer spins before sleeping.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Sets how many retired log segments are kept for reuse (0: deleted).
    pub fn spare_segments(mut self, n: usize) -> Self {
        self.spare_segments = n;
        self
    }

    /// Uses `storage` for every file (e.g. a [`SimStorage`](crate::io::SimStorage)
    /// in tests) instead of the backend `io` names.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    pub(super) fn log_config(&self) -> LogConfig {
        LogConfig {
            flush: self.flush,
            buffer_capacity: self.buffer_capacity,
            segment_size: self.segment_size,
            spin: self.spin,
            direct_io: self.direct_io,
            lone_waiter_spin: self.lone_waiter_spin,
            spare_segments: self.spare_segments,
            tree_id: [0; 16],
            must_exist: false,
        }
    }
}
