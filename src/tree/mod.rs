//! `Tree`: the persistent tree, joining the in-memory [`LeanImt`] and the
//! write-ahead [`Log`] behind the public API.
//!
//! Owns a tree's directory (its lock file, `IDENTITY`, `shards/` through
//! the checkpointer and `wal/` through the log) and the writer critical
//! section: index assignment, the in-memory update and the log reservation
//! happen together under one short lock, so the log's order is the leaves'
//! order (invariant 1). Framing the record and copying it into the log
//! buffer happen after the lock is released.
//!
//! - [`config`]: `Config` and its policies.
//! - [`open`]: lock the directory, establish the identity, load the last
//!   checkpoint, replay the log, start the background check.
//! - [`insert`]: the insert path and `flush`.
//! - [`checkpointing`]: the checkpoint driver (policy, background runs,
//!   failure backoff, log retirement).
//! - [`verify`]: checking a loaded checkpoint's chunks.
//! - [`close`]: `close` and what dropping the last handle does.
//! - [`worker`]: the one background thread a tree owns.
//! - [`identity`], [`salvage`]: the identity record; recovering a damaged
//!   tree's intact prefix into a new one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::checkpoint::Checkpointer;
use crate::error::Error;
use crate::hash::{Hash, Hasher};
use crate::imt::{ChunkStats, Snapshot};
use crate::io::{IoBackend, LockGuard, Storage};
use crate::wal::{Cause, Durable, Log};

mod checkpointing;
mod close;
mod config;
pub(crate) mod identity;
mod insert;
pub(crate) mod open;
mod records;
mod rewind;
pub(crate) mod salvage;
mod verify;
mod worker;

pub(crate) use insert::reset_thread;

pub use config::{CheckpointPolicy, Config, Tiering};
use verify::Verifying;
use worker::Worker;

use records::LEAVES_HEADER as RECORD_HEADER;
pub use rewind::Rewound;
use rewind::Writer;

/// What an insert returns: where the leaf went, the root it made, and the
/// future of its durability.
#[derive(Clone, Debug)]
pub struct Inserted {
    /// Index of the (first) inserted leaf.
    pub index: u64,
    /// The root right after this insert.
    pub root: Hash,
    /// Resolves once the insert is on stable storage.
    pub durable: Durable,
}

pub(crate) struct Inner<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    /// The writer critical section (see the module doc): the tree and
    /// what durable reads, finality and rewinds keep beside it.
    tree: parking_lot::Mutex<Writer<H, N, MAX_DEPTH>>,
    /// `None` once closed.
    log: Mutex<Option<Arc<Log>>>,
    /// A clone of the log for the insert path (no lock needed to reach it).
    wal: Arc<Log>,
    lock: Mutex<Option<LockGuard>>,
    /// The first close's failure, for later callers.
    close_failed: Mutex<Option<Cause>>,
    /// The last background checkpoint's failure, not yet reported.
    background_failure: Mutex<Option<Error>>,
    /// Background checkpoints that failed since open.
    checkpoint_failures: AtomicU64,
    /// Log bytes the open replayed.
    replayed_at_open: u64,
    /// Runs checkpoints, the background check and close (see
    /// [`worker`]).
    worker: Arc<Worker>,
    /// Background checkpoints that failed in a row.
    failures_in_a_row: Mutex<u32>,
    /// No background checkpoint is started before this time (nanoseconds
    /// since `epoch`; 0: no wait): after a failure, one second, doubling
    /// with each failure in a row, up to a minute.
    retry_at: AtomicU64,
    epoch: std::time::Instant,
    storage: Arc<dyn Storage>,
    checkpointer: Mutex<Checkpointer>,
    policy: CheckpointPolicy,
    /// Levels below this are served from their shards after a checkpoint.
    pin: usize,
    /// A background checkpoint is running.
    checkpointing: AtomicBool,
    /// The loaded checkpoint's chunks are still being verified: the log
    /// below it is kept, and checkpoints wait, until they pass.
    verifying: Verifying,
    /// See [`Config::thread_yield_every`].
    thread_yield_every: u32,
    /// Inserts since open (counted only for `EveryNEntries`).
    inserts: AtomicU64,
    /// `inserts` at the last checkpoint.
    inserts_at_checkpoint: AtomicU64,
    /// The last checkpoint's WAL position.
    last_checkpoint: AtomicU64,
    /// The loaded checkpoint's WAL position: the log below it is kept
    /// until the background check of its chunks passed.
    loaded_at: u64,
    checkpoint_latency: crate::metrics::Histogram,
    /// Checkpointed chunks checked, found damaged, repaired.
    chunk_stats: Arc<ChunkStats>,
    #[cfg(feature = "metrics")]
    export: Arc<crate::metrics::Export>,
    backend: IoBackend,
    closed: AtomicBool,
    dir: PathBuf,
    /// The directory as the release registry knows it (see
    /// [`worker::releasing`]), fixed at open.
    release_key: PathBuf,
}

/// A persistent, append-only n-ary Merkle tree whose inserts return
/// durability futures.
///
/// `Tree` is `Clone + Send + Sync` (an `Arc` inside): share it between tasks
/// and threads. Inserts update the tree in memory and return at once (they
/// wait only when the log buffer is full); the returned [`Durable`] resolves
/// once the insert is on disk. It works under any executor: no future it
/// returns needs a particular runtime.
///
/// ```no_run
/// use ringtree::{Blake3, Config, Tree};
///
/// # async fn demo() -> ringtree::Result<()> {
/// let tree = Tree::<Blake3, 4, 32>::open(Config::new("/tmp/my-tree")).await?;
/// let ins = tree.insert([1u8; 32]).await?;   // in memory, logged
/// ins.durable.await?;                         // on disk
/// let (index, root) = tree.insert_durable([2u8; 32]).await?;
/// let proof = tree.snapshot().proof(index)?;
/// proof.verify_at(&ringtree::Blake3, &root, index + 1)?;
/// tree.close().await?;
/// # Ok(()) }
/// ```
pub struct Tree<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    inner: Arc<Inner<H, N, MAX_DEPTH>>,
    /// Shared by the user's handles only (jobs on the worker hold
    /// `inner`): when the last goes, the tree is released at once, even
    /// while a job still holds `inner`.
    handle: Arc<Handle<H, N, MAX_DEPTH>>,
}

/// Releases the tree when the last user handle is dropped (see
/// [`Inner::release`]).
struct Handle<H: Hasher, const N: usize, const MAX_DEPTH: usize>(Arc<Inner<H, N, MAX_DEPTH>>);

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Drop for Handle<H, N, MAX_DEPTH> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    fn from_inner(inner: Inner<H, N, MAX_DEPTH>) -> Self {
        let inner = Arc::new(inner);
        Self {
            handle: Arc::new(Handle(inner.clone())),
            inner,
        }
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Clone for Tree<H, N, MAX_DEPTH> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// The writer lock. Held for a microsecond or two (the in-memory
    /// update and a log reservation); `parking_lot`'s mutex spins briefly
    /// before it parks.
    fn tree(&self) -> parking_lot::MutexGuard<'_, Writer<H, N, MAX_DEPTH>> {
        crate::rt::lock_pl(&self.inner.tree)
    }

    /// An immutable view of the tree now: O(depth), never blocks inserts for
    /// longer than cloning `depth` pointers. Proofs come from snapshots.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// tree.insert_many(&[[1; 32], [2; 32], [3; 32]]).await?;
    /// let snap = tree.snapshot();
    /// tree.insert([4; 32]).await?; // the snapshot does not move
    /// let proof = snap.proof(1)?;
    /// proof.verify_at(&Blake3, &snap.root().unwrap(), 3)?;
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        self.tree().snapshot()
    }

    /// The current root (`None` for an empty tree).
    pub fn root(&self) -> Option<Hash> {
        self.tree().root()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.tree().size()
    }

    /// The I/O backend in use.
    pub fn backend(&self) -> IoBackend {
        self.inner.backend
    }

    /// The tree's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes written to the log so far (its end position since creation).
    pub fn wal_position(&self) -> u64 {
        self.inner.wal.end()
    }

    /// Group commits (write + fdatasync) completed since open.
    pub fn syncs(&self) -> u64 {
        self.inner.wal.syncs()
    }

    /// The tree's counters and latency histograms now.
    ///
    /// ```
    /// # use ringtree::{Blake3, Config, Tree, io::SimStorage};
    /// # use std::sync::Arc;
    /// # let tree = Tree::<Blake3, 4, 32>::open_blocking(Config::new("/m").storage(Arc::new(SimStorage::new(1))))?;
    /// futures::executor::block_on(tree.insert_durable([1; 32]))?;
    /// let m = tree.metrics();
    /// assert_eq!(m.leaves, 1);
    /// assert!(m.fsyncs >= 1 && m.records_committed >= 1);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn metrics(&self) -> crate::Metrics {
        let wal = &self.inner.wal;
        let end = wal.end();
        let (reused, zeroed) = wal.segments_made();
        crate::Metrics {
            leaves: self.size(),
            wal_bytes: end,
            durable_lag_bytes: end.saturating_sub(wal.durable()),
            fsyncs: wal.syncs(),
            records_committed: wal.records_committed(),
            fsync_latency: wal.fsync_latency(),
            checkpoint_duration: self.inner.checkpoint_latency.summary(),
            wal_segments_reused: reused,
            wal_segments_zeroed: zeroed,
            checkpoint_failures: self.inner.checkpoint_failures.load(Ordering::Relaxed),
            replayed_at_open: self.inner.replayed_at_open,
            chunks_verified: self.inner.chunk_stats.verified.load(Ordering::Relaxed),
            chunks_corrupt: self.inner.chunk_stats.corrupt.load(Ordering::Relaxed),
            chunks_repaired: self.inner.chunk_stats.repaired.load(Ordering::Relaxed),
        }
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> std::fmt::Debug for Tree<H, N, MAX_DEPTH> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("dir", &self.inner.dir)
            .field("backend", &self.inner.backend)
            .field("size", &self.size())
            .finish()
    }
}
