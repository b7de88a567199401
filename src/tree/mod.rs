//! `Tree`: the persistent tree, joining the in-memory [`LeanImt`] and the
//! write-ahead [`Log`] behind the public API; and its [`Config`].
//!
//! Owns a tree's directory (its lock file and, through the log, `wal/`) and
//! the writer critical section: index assignment, the in-memory update and
//! the log reservation happen together under one short lock, so the log's
//! order is the leaves' order (invariant 1). Framing the record and copying
//! it into the log buffer happen after the lock is released.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::checkpoint::{self, Checkpointer};
use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use identity::Identity;
use crate::io::{IoBackend, LockGuard, Storage};
mod identity;
pub(crate) mod salvage;

use crate::imt::{ChunkStats, LeanImt, MappedShard, Snapshot};
use crate::wal::{Cause, Durable, Failure, FlushPolicy, Log, LogConfig, ReserveError};

/// Bytes of a record before its leaves: the index of its first leaf (u64).
const RECORD_HEADER: u64 = 8;

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

/// How to open a [`Tree`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The tree's directory (created if missing).
    pub dir: PathBuf,
    /// When the log syncs (default: group commit).
    pub flush: FlushPolicy,
    /// Which I/O backend (default: `Auto`; the `RINGTREE_IO` environment
    /// variable overrides it).
    pub io: IoBackend,
    /// Bytes of the log buffer (power of two, 4 KiB to 1 GiB; default
    /// 16 MiB). Bounds the
    /// memory of inserts not yet written out; inserts wait when it is full.
    /// One `insert_many` takes at most about `capacity / 64` leaves
    /// ([`Tree::max_batch`] gives the number).
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
    /// kernel (`sched_yield`; default 256, 0: never). Where executor
    /// threads outnumber the cores free for them, two of them share a core
    /// and the kernel switches between them at its tick (4 ms at 250 Hz);
    /// every task queued on the one waiting waits that long. Yielding every
    /// 256 inserts (well under a millisecond of work) makes them take turns
    /// that often: on a 2-vCPU VM, in six alternated pairs, it took the p99
    /// of 1,000 tasks inserting and awaiting from 4.1-6.0 ms to 2.3-4.8 ms
    /// (`docs/BENCHMARKS.md`). A thread alone on its core pays one system
    /// call per 256 inserts.
    pub thread_yield_every: u32,
    storage: Option<Arc<dyn Storage>>,
    failpoint: checkpoint::Failpoint,
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
            tiering: Tiering::default(),
            thread_yield_every: 256,
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

    fn log_config(&self) -> LogConfig {
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

/// Counts `leaves` inserted on this OS thread; true once per `every` of
/// them (never for 0): the thread should then yield its CPU (see
/// [`Config::thread_yield_every`]). A batch of `every` or more is due at
/// once.
fn yield_due(leaves: u64, every: u32) -> bool {
    thread_local! {
        static SINCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    if every == 0 {
        return false;
    }
    SINCE.with(|since| {
        let n = since.get() + leaves;
        let due = n >= u64::from(every);
        since.set(if due { 0 } else { n });
        due
    })
}

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

struct Inner<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    tree: Mutex<LeanImt<H, N, MAX_DEPTH>>,
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
    /// The background check of the loaded checkpoint: joined by close (it
    /// stops early once the tree is closed), so it never outlives the tree.
    verify_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
    /// Threads spinning past the short spin for the tree lock (at most one
    /// is let to: see `tree`).
    lock_spinners: std::sync::atomic::AtomicU32,
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
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Clone for Tree<H, N, MAX_DEPTH> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Runs blocking `f` on its own thread; the future resolves with its result.
/// Keeps async callers' executor threads free whatever the runtime. A
/// thread that cannot be started, or a panic in `f`, is an error.
fn off_thread<T: Send + 'static>(
    name: &'static str,
    dir: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> impl Future<Output = Result<T>> {
    let (tx, rx) = futures::channel::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    let dir = dir.to_path_buf();
    async move {
        if let Err(e) = spawned {
            return Err(Error::Io {
                path: dir,
                source: e,
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Io {
                path: dir,
                source: std::io::Error::other(format!("{name} thread panicked")),
            })
        })
    }
}

impl<H: Hasher + Default, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Opens (creating or recovering) the tree in `config.dir`, without
    /// blocking the calling task: recovery runs on its own thread.
    ///
    /// Fails with [`Error::Locked`] if another handle or process has the
    /// directory open, [`Error::Corruption`] naming the file and offset if
    /// the log is damaged before its tail.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// assert_eq!(tree.size(), 0);
    /// // A second handle on the same directory is refused.
    /// let again = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await;
    /// assert!(matches!(again, Err(ringtree::Error::Locked(_))));
    /// tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn open(config: Config) -> Result<Self> {
        let dir = config.dir.clone();
        off_thread("ringtree-open", &dir, move || Self::open_blocking(config)).await
    }

    /// [`open`](Self::open), blocking the calling thread.
    pub fn open_blocking(config: Config) -> Result<Self> {
        Self::open_with(config, H::default())
    }
}

impl<H: Hasher + Default, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Recovers what a damaged tree still holds into a new one: the
    /// longest prefix of its leaves that its files hold intact (the
    /// checkpoint's leaves, chunk by chunk up to the first that fails its
    /// checksum; then the log's records up to the first invalid frame or
    /// missing segment), inserted into a new tree at `to` (which must hold
    /// no tree), made durable. Returns the new tree, open, and a report of
    /// what was kept and what is known lost.
    ///
    /// Never the default: [`open`](Self::open) refuses damage it cannot
    /// repair; this is for a user with no other copy. `from` is only read
    /// (no lock is taken: make sure nothing else has it open). Blocking.
    ///
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    /// # let t = Tree::<Blake3, 4, 32>::open_blocking(Config::new(a.path()))?;
    /// # futures::executor::block_on(async { t.insert_many(&[[1; 32]; 10]).await?.durable.await?; t.close().await })?;
    /// let (tree, report) = Tree::<Blake3, 4, 32>::salvage(
    ///     &Config::new(a.path()),
    ///     Config::new(b.path()),
    /// )?;
    /// assert_eq!((report.kept, report.lost()), (10, 10..10));
    /// assert_eq!(tree.size(), 10);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn salvage(from: &Config, to: Config) -> Result<(Self, crate::Salvaged)> {
        let src = match &from.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(from.io)?,
        };
        let (leaves, report) =
            crate::tree::salvage::salvage_leaves(&*src, &from.dir, N, MAX_DEPTH, &H::default());
        if let Some(e @ Error::ConfigMismatch { .. }) = report.stopped_by {
            return Err(e);
        }
        if let Some(e) = &report.stopped_by {
            tracing::warn!(error = %e, kept = report.kept, known = report.known, "salvage stopped at damage");
        }
        let dst = match &to.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(to.io)?,
        };
        crate::tree::salvage::check_target(&*dst, &to.dir)?;
        let tree = Self::open_blocking(to)?;
        if tree.size() != 0 {
            return Err(Error::Config("the salvage target holds leaves".into()));
        }
        let batch = tree.max_batch() as usize;
        crate::wal::park_on(async {
            for c in leaves.chunks(batch.max(1)) {
                tree.insert_many(c).await?;
            }
            tree.flush().await
        })?;
        Ok((tree, report))
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// [`open_blocking`](Self::open_blocking) with a given hasher.
    pub fn open_with(config: Config, hasher: H) -> Result<Self> {
        let _span = tracing::info_span!("ringtree.open", dir = %config.dir.display()).entered();
        let storage = match &config.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(config.io)?,
        };
        let dir = config.dir.clone();
        let io_err = |path: &Path, e: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        crate::io::create_dir_durable(&*storage, &dir)?;
        let lock_path = dir.join("LOCK");
        let lock = match storage.lock(&lock_path) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(Error::Locked(dir)),
            Err(e) => return Err(io_err(&lock_path, e)),
        };
        let backend = storage.backend();
        tracing::info!(dir = %dir.display(), backend = %backend, "opening tree");
        let want = Identity::new(N, MAX_DEPTH, hasher.id())?;
        let established = identity::establish(&*storage, &dir, want)?;
        let tree_id = established.identity.tree_id;
        let pin = config.tiering.pin_above_level;
        let chunk_stats = Arc::new(ChunkStats::default());
        let mut unverified = Vec::new();
        let (mut tree, start, mut checkpointer) =
            match checkpoint::load(&*storage, &dir, N, MAX_DEPTH, tree_id, pin, &chunk_stats)? {
                Some(l) => {
                    let tree = LeanImt::<H, N, MAX_DEPTH>::from_levels(hasher, l.levels)?;
                    if config.verify_on_open {
                        check_shards(&tree.snapshot(), &l.mapped, &|| false)?;
                        verify_levels(&tree, &dir)?;
                    } else {
                        unverified = l.mapped;
                    }
                    let cp = Checkpointer::new(
                        storage.clone(),
                        &dir,
                        tree_id,
                        Some((&l.manifest, l.sums)),
                    );
                    (tree, l.manifest.wal_position, cp)
                }
                None => (
                    LeanImt::new(hasher),
                    0,
                    Checkpointer::new(storage.clone(), &dir, tree_id, None),
                ),
            };
        checkpointer.failpoint = config.failpoint;
        tracing::info!(
            leaves = tree.size(),
            wal_position = start,
            "checkpoint loaded"
        );
        let mut replay = Replayer {
            tree: &mut tree,
            pending: Vec::new(),
            records: 0,
        };
        let storage_for_inner = storage.clone();
        let mut log_config = config.log_config();
        log_config.tree_id = tree_id;
        log_config.must_exist = !established.new;
        let log = Log::open(
            storage,
            &dir.join("wal"),
            &log_config,
            start,
            &mut |_, rec| replay.record(rec),
        )?;
        let replayed_records = replay.records;
        let replayed = replay.finish().map_err(|reason| Error::Corruption {
            file: dir.join("wal"),
            offset: 0,
            reason: format!("replay: {reason}"),
        });
        // A new tree is a tree from here on: its log exists, and its
        // identity is recorded before any leaf can be acknowledged.
        let recorded = replayed.and_then(|()| {
            if established.new {
                identity::record(&*storage_for_inner, &dir, &established.identity)
            } else {
                Ok(())
            }
        });
        if let Err(e) = recorded {
            let _ = log.close();
            return Err(e);
        }
        tracing::info!(leaves = tree.size(), "tree recovered");
        let wal = Arc::new(log);
        let replayed_at_open = wal.end().saturating_sub(start);
        // The log below the checkpoint is its only other copy of the leaves
        // until the checkpoint's chunks are verified: retired only then.
        let verifying = Verifying::new(!unverified.is_empty());
        if start > 0 && unverified.is_empty() {
            retire_on_open(&*storage_for_inner, &dir, &wal, start);
        }
        #[cfg(feature = "metrics")]
        let export = {
            let e = Arc::new(crate::metrics::Export::new(&dir));
            e.leaves(tree.size());
            wal.export_to(e.clone());
            e
        };
        let this = Self {
            inner: Arc::new(Inner {
                tree: Mutex::new(tree),
                log: Mutex::new(Some(wal.clone())),
                wal,
                lock: Mutex::new(Some(lock)),
                close_failed: Mutex::new(None),
                background_failure: Mutex::new(None),
                checkpoint_failures: AtomicU64::new(0),
                replayed_at_open,
                verify_thread: Mutex::new(None),
                failures_in_a_row: Mutex::new(0),
                retry_at: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                storage: storage_for_inner,
                checkpointer: Mutex::new(checkpointer),
                policy: config.checkpoint,
                pin,
                checkpointing: AtomicBool::new(false),
                verifying,
                lock_spinners: std::sync::atomic::AtomicU32::new(0),
                thread_yield_every: config.thread_yield_every,
                inserts: AtomicU64::new(replayed_records),
                inserts_at_checkpoint: AtomicU64::new(0),
                last_checkpoint: AtomicU64::new(start),
                loaded_at: start,
                checkpoint_latency: crate::metrics::Histogram::new(),
                chunk_stats,
                #[cfg(feature = "metrics")]
                export,
                backend,
                closed: AtomicBool::new(false),
                dir,
            }),
        };
        if !unverified.is_empty() {
            // Checksums of the mapped chunks, checked off the open path; a
            // mismatch stops the tree taking inserts (as a log failure does).
            // Once they pass, the log below the checkpoint is retired,
            // under the checkpointer's lock and only while the tree is open
            // (close takes that lock before it closes the log and lets the
            // directory go).
            let check = {
                let inner = Arc::downgrade(&this.inner);
                move || {
                    // Whatever happens below (a panic included), the check
                    // ends: checkpoints wait for it.
                    let _end = EndCheck(inner.clone());
                    let Some(snap) = inner
                        .upgrade()
                        .map(|i| i.tree.lock().unwrap_or_else(|e| e.into_inner()).snapshot())
                    else {
                        return;
                    };
                    // Stops early once the tree is closed or gone: no thread
                    // reads its files after it let them go.
                    let stop = || {
                        inner
                            .upgrade()
                            .is_none_or(|i| i.closed.load(Ordering::Acquire))
                    };
                    if let Err(e) = check_shards(&snap, &unverified, &stop) {
                        tracing::error!(error = %e, "checkpoint damaged; refusing further inserts");
                        if let Some(inner) = inner.upgrade() {
                            inner.wal.poison(Cause::of(&e));
                        }
                        return;
                    }
                    drop(snap);
                    let Some(inner) = inner.upgrade() else {
                        return;
                    };
                    let _cp = inner.checkpointer.lock().unwrap_or_else(|e| e.into_inner());
                    if start > 0 && !inner.closed.load(Ordering::Acquire) {
                        retire_on_open(&*inner.storage, &inner.dir, &inner.wal, start);
                    }
                }
            };
            let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let spawned = std::thread::Builder::new()
                .name("ringtree-verify".into())
                .spawn(move || {
                    if let Ok(f) = rx.recv() {
                        f();
                    }
                });
            match spawned {
                Ok(handle) => {
                    *this
                        .inner
                        .verify_thread
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(handle);
                    let _ = tx.send(Box::new(check));
                }
                // No thread to spare: check now.
                Err(_) => check(),
            }
        }
        // A log replayed past the policy's threshold is checkpointed at once,
        // in the background: a process that keeps dying before its
        // checkpoints finish would otherwise replay a longer log at every
        // open (each attempt resumes where the last one's synced chunks
        // end).
        this.maybe_checkpoint();
        Ok(this)
    }

    fn tree(&self) -> MutexGuard<'_, LeanImt<H, N, MAX_DEPTH>> {
        // The critical section is a microsecond or two: spin about that
        // long (a few of them) before sleeping. A thread that sleeps on the
        // lock stalls every task queued on its executor thread until it is
        // woken, which costs far more than the wait.
        let try_lock = || match self.inner.tree.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        for i in 0..16u32 {
            if let Some(g) = try_lock() {
                return g;
            }
            // 2, 4, 8, then 16 pauses: some 220 in all, 2–12 µs by the
            // CPU's pause length.
            for _ in 0..(2u32 << i.min(3)) {
                std::hint::spin_loop();
            }
        }
        // The holder may have been preempted in the critical section (two
        // executor threads and the committer share few cores). One waiter
        // at a time goes on spinning, up to LONG: with two executor
        // threads that is the only waiter, and it keeps its tasks running
        // (`examples/prof_tree`, 1000 tasks on 2 cores: 800–870k durable
        // inserts/s against 680–740k without the long spin). Others sleep
        // at once: with many threads a crowd of spinners takes the CPU from
        // the holder (64 threads: letting every waiter spin cost 8–19%).
        const LONG: std::time::Duration = std::time::Duration::from_micros(50);
        let spinners = &self.inner.lock_spinners;
        if spinners.fetch_add(1, Ordering::Acquire) == 0 {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < LONG {
                if let Some(g) = try_lock() {
                    spinners.fetch_sub(1, Ordering::Release);
                    return g;
                }
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
            }
        }
        spinners.fetch_sub(1, Ordering::Release);
        self.inner.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The leaves a single `insert_many` may carry.
    pub fn max_batch(&self) -> u64 {
        (self.inner.wal.max_payload() - RECORD_HEADER) / 32
    }

    /// The writer critical section: checks, reserves log space, updates the
    /// tree. Returns `Ok(None)` when the log buffer is full.
    fn try_insert(
        &self,
        leaves: &[Hash],
        claim: Option<&crate::wal::SpaceClaim<'_>>,
    ) -> Result<Option<Inserted>> {
        let payload = RECORD_HEADER + 32 * leaves.len() as u64;
        let (reservation, index, root) = {
            let mut t = self.tree();
            self.check_open()?;
            let size = t.size();
            let cap = LeanImt::<H, N, MAX_DEPTH>::CAPACITY;
            if size
                .checked_add(leaves.len() as u64)
                .is_none_or(|total| total > cap)
            {
                return Err(Error::Capacity {
                    size,
                    additional: leaves.len() as u64,
                    capacity: cap,
                });
            }
            let r = match self.inner.wal.try_reserve_as(payload, claim) {
                Ok(r) => r,
                Err(ReserveError::Full) => return Ok(None),
                Err(ReserveError::Fatal(e)) => return Err(e),
            };
            // Cannot fail: room was checked above. Should it, the
            // reservation drops as filler and the tree is unchanged.
            let root = if let [leaf] = leaves {
                t.insert(*leaf)?
            } else {
                t.insert_many(leaves)?
            };
            (r, size, root)
        };
        let durable = reservation.write(&[&index.to_le_bytes(), leaves.as_flattened()]);
        // After the record is in the log (the recorder is the application's
        // code); a racing insert may set it a moment out of order.
        #[cfg(feature = "metrics")]
        self.inner.export.leaves(index + leaves.len() as u64);
        Ok(Some(Inserted {
            index,
            root,
            durable,
        }))
    }

    async fn insert_slice(&self, leaves: &[Hash]) -> Result<Inserted> {
        if leaves.is_empty() {
            return Err(Error::EmptyBatch);
        }
        if leaves.len() as u64 > self.max_batch() {
            return Err(Error::BatchTooLarge {
                len: leaves.len() as u64,
                max: self.max_batch(),
            });
        }
        let payload = RECORD_HEADER + 32 * leaves.len() as u64;
        let mut claim = None;
        loop {
            if let Some(ins) = self.try_insert(leaves, claim.as_ref())? {
                drop(claim);
                self.maybe_checkpoint();
                // With nothing held that others wait for.
                if yield_due(leaves.len() as u64, self.inner.thread_yield_every) {
                    #[cfg(test)]
                    tests::YIELDS.with(|y| y.set(y.get() + 1));
                    std::thread::yield_now();
                }
                return Ok(ins);
            }
            let c = claim.get_or_insert_with(|| self.inner.wal.claim_space(payload));
            std::future::poll_fn(|cx| self.inner.wal.poll_space(payload, c, cx)).await;
        }
    }

    /// Appends `leaf`: updates the tree in memory and logs it. Returns at
    /// once (it waits only while the log buffer is full) with the leaf's
    /// index, the new root and the future of its durability.
    ///
    /// Fails with [`Error::Poisoned`] once the log failed, [`Error::Closed`]
    /// after `close`, [`Error::Capacity`] when the tree is full; the tree is
    /// then unchanged.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let ins = tree.insert([1; 32]).await?;
    /// assert_eq!((ins.index, ins.root), (0, [1; 32])); // one leaf: the root
    /// ins.durable.await?; // now it survives a crash
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn insert(&self, leaf: Hash) -> Result<Inserted> {
        self.insert_slice(std::slice::from_ref(&leaf)).await
    }

    /// Appends `leaves` as one log record with one durability future;
    /// `index` is the first leaf's. At most [`max_batch`](Self::max_batch)
    /// leaves; a larger batch is rejected before anything changes.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let ins = tree.insert_many(&[[1; 32], [2; 32], [3; 32]]).await?;
    /// assert_eq!((ins.index, tree.size()), (0, 3));
    /// ins.durable.await?;
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn insert_many(&self, leaves: &[Hash]) -> Result<Inserted> {
        self.insert_slice(leaves).await
    }

    /// Appends `leaf` and waits until it is durable.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let (index, root) = tree.insert_durable([9; 32]).await?;
    /// assert_eq!((index, Some(root)), (0, tree.root()));
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn insert_durable(&self, leaf: Hash) -> Result<(u64, Hash)> {
        let ins = self.insert(leaf).await?;
        ins.durable.await?;
        Ok((ins.index, ins.root))
    }

    /// Starts a background checkpoint when the policy says one is due.
    fn maybe_checkpoint(&self) {
        let inner = &self.inner;
        let due = match inner.policy {
            CheckpointPolicy::WalBytes(bytes) => {
                inner
                    .wal
                    .end()
                    .saturating_sub(inner.last_checkpoint.load(Ordering::Relaxed))
                    >= bytes
            }
            CheckpointPolicy::EveryNEntries(n) => {
                let done = inner.inserts.fetch_add(1, Ordering::Relaxed) + 1;
                // Saturating: a checkpoint may have stored a newer count.
                done.saturating_sub(inner.inserts_at_checkpoint.load(Ordering::Relaxed)) >= n
            }
            CheckpointPolicy::Manual | CheckpointPolicy::OnClose => false,
        };
        if !due {
            return;
        }
        // After a failure: not before the backoff's end.
        let retry_at = inner.retry_at.load(Ordering::Relaxed);
        if retry_at != 0 && (inner.epoch.elapsed().as_nanos() as u64) < retry_at {
            return;
        }
        if inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let bg = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("ringtree-checkpoint".into())
            .spawn(move || {
                let r = bg.checkpoint();
                bg.background_done(r);
                bg.checkpointing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            inner.checkpointing.store(false, Ordering::Release);
        }
    }

    /// Writes a checkpoint now: every level of a snapshot to its shard file
    /// (only what changed since the last one), then the manifest; then the
    /// log it covers is recycled. Inserts and commits go on meanwhile.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// tree.insert_many(&vec![[5; 32]; 10_000]).await?;
    /// tree.checkpoint().await?; // reopening now reads shards, not the log
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// Its outcome supersedes a background checkpoint's failure not yet
    /// reported (still counted in [`Metrics::checkpoint_failures`](crate::Metrics)).
    pub async fn checkpoint(&self) -> Result<()> {
        self.check_open()?;
        let _ = self.inner.take_background_failure();
        let inner = self.inner.clone();
        let dir = self.inner.dir.clone();
        off_thread("ringtree-checkpoint", &dir, move || inner.checkpoint()).await
    }

    /// Waits until every insert made so far is durable (whatever the flush
    /// policy).
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # use ringtree::FlushPolicy;
    /// # let cfg = Config::new(dir.path()).flush(FlushPolicy::Manual);
    /// # let tree = Tree::<Blake3, 4, 32>::open(cfg).await?;
    /// let a = tree.insert([1; 32]).await?;
    /// let b = tree.insert([2; 32]).await?;
    /// tree.flush().await?; // both are durable now
    /// a.durable.await?;
    /// b.durable.await?;
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// A background checkpoint that failed since the last report is
    /// returned once, after the flush succeeded, as
    /// [`Error::CheckpointFailed`]: the inserts are durable all the same.
    pub async fn flush(&self) -> Result<()> {
        self.check_open()?;
        self.inner.wal.flush().await?;
        self.inner.take_background_failure()
    }

    /// Syncs every insert made so far, stops the log and releases the
    /// directory. Every pending durability future resolves. Later calls
    /// fail with [`Error::Closed`]; clones of the tree are closed too.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let root = tree.insert_durable([3; 32]).await?.1;
    /// tree.close().await?;
    /// assert!(matches!(tree.insert([4; 32]).await, Err(ringtree::Error::Closed)));
    /// // The directory is free again, and the tree is all there.
    /// let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// assert_eq!(tree.root(), Some(root));
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn close(&self) -> Result<()> {
        let inner = self.inner.clone();
        let dir = self.inner.dir.clone();
        off_thread("ringtree-close", &dir, move || inner.close()).await
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

/// Retires the log segments wholly below the loaded checkpoint at open, so
/// the log's next segments are made from them (and the ones past the spare
/// pool are deleted) without waiting for the next checkpoint. The
/// checkpoint must be durable first: a process that died between renaming
/// its manifest and syncing the directory left the name in the page cache
/// only, and a power loss would then bring back an older checkpoint that
/// needs those segments.
/// Ends the background check of a loaded checkpoint when dropped; a check
/// that panicked poisons the tree (its chunks were not all verified).
struct EndCheck<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    std::sync::Weak<Inner<H, N, MAX_DEPTH>>,
);

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Drop for EndCheck<H, N, MAX_DEPTH> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            if std::thread::panicking() {
                inner
                    .wal
                    .poison(Cause::msg("the check of the loaded checkpoint panicked"));
            }
            inner.verifying.finish();
        }
    }
}

/// Whether the loaded checkpoint's chunks are still being checked in the
/// background.
struct Verifying(AtomicBool);

impl Verifying {
    fn new(pending: bool) -> Self {
        Self(AtomicBool::new(pending))
    }

    /// The check is over (passed, stopped, or failed and the tree poisoned).
    fn finish(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether the check is still running.
    fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn retire_on_open(storage: &dyn Storage, dir: &Path, wal: &Log, start: u64) {
    let durable = storage
        .sync_dir(dir)
        .and_then(|()| storage.sync_dir(&dir.join("shards")));
    let retired = match durable {
        Ok(()) => wal
            .remove_segments_below(start.min(wal.durable()), None)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = retired {
        tracing::warn!(error = %e, "could not retire the log below the checkpoint at open; the next checkpoint will");
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Inner<H, N, MAX_DEPTH> {
    fn checkpoint(&self) -> Result<()> {
        self.checkpoint_at(false)
    }

    /// Records how a background checkpoint ended: a failure is kept for
    /// the next `checkpoint`, `flush` or `close` to return, counted, and
    /// holds further background attempts back (one second, doubling with
    /// each failure in a row, up to a minute), so a full disk is not
    /// rewritten on every insert.
    fn background_done(&self, r: Result<()>) {
        let mut failures = self
            .failures_in_a_row
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(()) => {
                *failures = 0;
                self.retry_at.store(0, Ordering::Relaxed);
            }
            // A closed tree has nothing to report.
            Err(Error::Closed) => {}
            Err(e) => {
                tracing::error!(error = %e, "background checkpoint failed");
                *failures += 1;
                let wait = std::time::Duration::from_secs(1 << (*failures - 1).min(6))
                    .min(std::time::Duration::from_secs(60));
                let at = (self.epoch.elapsed() + wait).as_nanos() as u64;
                self.retry_at.store(at.max(1), Ordering::Relaxed);
                self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                *self
                    .background_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }

    /// A checkpoint; `closing` for the one `close` itself makes.
    fn checkpoint_at(&self, closing: bool) -> Result<()> {
        let _span = tracing::info_span!("ringtree.checkpoint", dir = %self.dir.display(), closing)
            .entered();
        // It need not wait for the background check of the loaded
        // checkpoint: it copies none of its chunks (they stay where they
        // are, under the same checksums, checked before any use), and the
        // log below the loaded checkpoint stays until that check passed
        // (below). A process killed before its check ends (a crash loop)
        // still checkpoints, so its next open replays a short log.
        let mut cp = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the checkpointer lock, which close takes before it
        // closes the log: no checkpoint runs past a close.
        if !closing && self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // After a log failure the tree holds leaves whose inserts were
        // reported failed: do not make them durable now.
        if let Some(e) = self.wal.failure()
            && !matches!(e, Error::Closed)
        {
            return Err(e);
        }
        // Index assignment and log reservation share the writer lock, so
        // every record below `position` is for a leaf in `snap`.
        let (snap, position, inserts) = {
            let t = self.tree.lock().unwrap_or_else(|e| e.into_inner());
            (
                t.snapshot(),
                self.wal.end(),
                self.inserts.load(Ordering::Relaxed),
            )
        };
        let started = std::time::Instant::now();
        // Just before the manifest, the log below `position` is made
        // durable: then no insert the checkpoint holds can still be reported
        // failed (a log failing first stops the checkpoint instead). One
        // group commit per checkpoint.
        let log_failed = || match self.wal.flush().wait() {
            Ok(()) | Err(Error::Closed) => None,
            Err(e) => Some(e),
        };
        let manifest = cp.write(&snap, position, &log_failed)?;
        self.last_checkpoint.store(position, Ordering::Relaxed);
        // Serve what the checkpoint wrote from the shards: map them (outside
        // the writer lock), then swap the directories (O(chunks) pointer
        // copies under it); memory the snapshot alone holds goes with it.
        let mut maps = Vec::new();
        for (d, meta) in manifest.levels.iter().enumerate().take(self.pin) {
            let sealed = (meta.nodes.saturating_sub(1) / crate::imt::CHUNK_LEN as u64) as usize;
            if sealed > 0 {
                // The checkpoint is durable already: a failed mapping only
                // keeps that level in memory.
                let sums = cp.level_sums(d)[..sealed].to_vec();
                match checkpoint::map_shard(&*self.storage, &self.dir, d, sums, &self.chunk_stats) {
                    Ok(m) => maps.push((d, m)),
                    Err(e) => {
                        tracing::warn!(level = d, error = %e, "could not map a shard; the level stays in memory")
                    }
                }
            }
        }
        if !maps.is_empty() {
            let mut t = self.tree.lock().unwrap_or_else(|e| e.into_inner());
            for (d, shard) in &maps {
                t.remap_level(*d, shard);
            }
        }
        drop(snap);
        self.inserts_at_checkpoint.store(inserts, Ordering::Relaxed);
        // The log below the checkpoint may go, but never past what the
        // committer has made durable: it may still be writing there.
        let keep = if self.verifying.pending() {
            self.loaded_at
        } else {
            position
        };
        let removed = self
            .wal
            .remove_segments_below(keep.min(position).min(self.wal.durable()), cp.failpoint)?;
        self.checkpoint_latency.record(started.elapsed());
        #[cfg(feature = "metrics")]
        self.export.checkpoint(started.elapsed());
        tracing::info!(
            leaves = manifest.leaves,
            wal_position = position,
            segments_retired = removed,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Closes the tree for good, whatever fails on the way: the close-time
    /// checkpoint (if the policy asks for one) may fail or panic, but the
    /// log is closed all the same (every pending future resolves, the
    /// committer and its helpers are joined), and only then is the
    /// directory lock released, when nothing of this tree can write to it
    /// again (invariant 12). The first close's outcome is every later
    /// close's.
    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Held through the whole close: a concurrent close waits for this
        // one and reports its outcome.
        let mut slot = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let r = match slot.take() {
            Some(l) => {
                let checkpointed = match self.policy {
                    CheckpointPolicy::OnClose => {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.checkpoint_at(true)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::Io {
                                path: self.dir.join(checkpoint::MANIFEST),
                                source: std::io::Error::other("the close-time checkpoint panicked"),
                            })
                        })
                    }
                    _ => Ok(()),
                };
                // Waits for a background checkpoint: none outlives the close
                // (it would recycle the log under the next owner's feet).
                let cp = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner());
                let closed = l.close();
                drop(cp);
                self.join_verify();
                // A background checkpoint records how it ended just after it
                // lets the checkpointer go (one that had not started finds
                // the tree closed): its failure is reported here.
                while self.checkpointing.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                // Later closes report a failure of the log itself (the
                // checkpoint's was reported by this one).
                *self.close_failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    closed.as_ref().err().map(Cause::of);
                let background = self.take_background_failure();
                checkpointed.and(closed).and(background)
            }
            None => match &*self.close_failed.lock().unwrap_or_else(|e| e.into_inner()) {
                None => Ok(()),
                Some(cause) => Err(Failure::Poisoned {
                    offset: self.wal.durable(),
                    cause: cause.clone(),
                }
                .to_error()),
            },
        };
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(slot);
        r
    }

    /// Waits for the background check to end (it stops at its next look
    /// once the tree is closed); not from that thread itself.
    fn join_verify(&self) {
        let handle = self
            .verify_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }

    /// The failure of the last background checkpoint, once, as
    /// `CheckpointFailed`: the next `flush` or `close` returns it.
    fn take_background_failure(&self) -> Result<()> {
        match self
            .background_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(e) => Err(Error::CheckpointFailed(Box::new(e))),
            None => Ok(()),
        }
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Drop for Inner<H, N, MAX_DEPTH> {
    /// The last handle is gone without `close`: flush what can be flushed
    /// and release the directory on a thread of its own, so dropping a tree
    /// never blocks an async runtime's thread.
    fn drop(&mut self) {
        let log = self.log.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let lock = self
            .lock
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // The background check (if still running) stops at its next look:
        // it finds no tree. Joined by the drop thread, unless this is it.
        let verify = self
            .verify_thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|h| h.thread().id() != std::thread::current().id());
        if log.is_none() && lock.is_none() && verify.is_none() {
            return;
        }
        type Job = (
            Option<Arc<Log>>,
            Option<LockGuard>,
            Option<std::thread::JoinHandle<()>>,
        );
        let finish = |(log, lock, verify): Job| {
            if let Some(l) = log
                && let Err(e) = l.close()
            {
                tracing::warn!(error = %e, "flush on drop failed");
            }
            if let Some(v) = verify {
                let _ = v.join();
            }
            // Only now: nothing of this tree can write again.
            drop(lock);
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("ringtree-drop".into())
            .spawn(move || {
                if let Ok(job) = rx.recv() {
                    finish(job);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send((log, lock, verify));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not spawn the close thread; closing the log here");
                finish((log, lock, verify));
            }
        }
    }
}

/// Replays log records into the tree, batching consecutive records so a log
/// of single inserts replays at batch speed.
struct Replayer<'a, H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    tree: &'a mut LeanImt<H, N, MAX_DEPTH>,
    pending: Vec<Hash>,
    /// Records replayed.
    records: u64,
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Replayer<'_, H, N, MAX_DEPTH> {
    const BATCH: usize = 1 << 16;

    fn record(&mut self, rec: &[u8]) -> std::result::Result<(), String> {
        if rec.len() < RECORD_HEADER as usize + 32
            || !(rec.len() - RECORD_HEADER as usize).is_multiple_of(32)
        {
            return Err(format!(
                "tree record of {} bytes: expected 8 + 32 * k (k >= 1)",
                rec.len()
            ));
        }
        let first = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let expect = self.tree.size() + self.pending.len() as u64;
        if first != expect {
            return Err(format!(
                "record starts at leaf {first}, the tree has {expect} leaves"
            ));
        }
        self.pending.extend_from_slice(rec[8..].as_chunks::<32>().0);
        self.records += 1;
        if self.pending.len() >= Self::BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), String> {
        if !self.pending.is_empty() {
            self.tree
                .insert_many(&self.pending)
                .map_err(|e| e.to_string())?;
            self.pending.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> std::result::Result<(), String> {
        self.flush()
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

/// Checks every chunk of the mapped shards (`shards[d]` is level `d`'s)
/// not yet checked; a chunk of an internal level that fails is recomputed
/// from its children where they give its checksum. The first chunk that
/// stays damaged is the error.
fn check_shards(
    snap: &Snapshot,
    shards: &[Arc<MappedShard>],
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    for (d, shard) in shards.iter().enumerate() {
        let (failed, first) = shard.check_all(stop);
        for c in failed {
            snap.checked(d, (c * crate::imt::CHUNK_LEN) as u64)?;
        }
        drop(first);
    }
    Ok(())
}

/// `verify_on_open`: recomputes every level from the leaves and compares.
fn verify_levels<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    tree: &LeanImt<H, N, MAX_DEPTH>,
    dir: &Path,
) -> Result<()> {
    use crate::imt::CHUNK_LEN;
    let snap = tree.snapshot();
    let mut fresh = LeanImt::<H, N, MAX_DEPTH>::new(tree.hasher().clone());
    // A chunk at a time: each chunk checked once, not each node.
    let chunks = |d: usize| snap.level_len(d).div_ceil(CHUNK_LEN as u64) as usize;
    let mut batch = Vec::with_capacity(1 << 16);
    for c in 0..chunks(0) {
        batch.extend_from_slice(&snap.checked_chunk(0, c)?);
        if batch.len() >= 1 << 16 || c + 1 == chunks(0) {
            fresh.insert_many(&batch)?;
            batch.clear();
        }
    }
    let check = fresh.snapshot();
    for d in 0..=snap.depth() {
        for c in 0..chunks(d) {
            let (have, want) = (snap.checked_chunk(d, c)?, check.checked_chunk(d, c)?);
            if let Some(k) = (0..have.len()).find(|&k| have[k] != want[k]) {
                let i = (c * CHUNK_LEN + k) as u64;
                return Err(Error::Corruption {
                    file: dir.join("shards").join(format!("level-{d:02}.shard")),
                    offset: 4096 + 32 * i,
                    reason: format!("node {i} of level {d} differs from the one its children give"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::yield_due;
    use crate::{Blake3, Config, Tree, io::SimStorage};
    use std::cell::Cell;
    use std::sync::Arc;

    thread_local! {
        /// Yields made by inserts on this thread.
        pub(super) static YIELDS: Cell<u64> = const { Cell::new(0) };
    }

    /// Inserts on one thread yield once per `thread_yield_every` leaves,
    /// single and batched alike, and never with 0.
    #[test]
    fn inserts_yield_their_thread_as_configured() {
        std::thread::spawn(|| {
            let run = |every: u32| {
                let sim = Arc::new(SimStorage::new(7));
                let cfg = Config::new("/y").storage(sim).thread_yield_every(every);
                let t = Tree::<Blake3, 4, 16>::open_blocking(cfg).unwrap();
                let before = YIELDS.with(Cell::get);
                futures::executor::block_on(async {
                    for i in 0..1000u32 {
                        t.insert([i.to_le_bytes()[0]; 32]).await.unwrap();
                    }
                    t.insert_many(&[[9; 32]; 300]).await.unwrap();
                    t.close().await.unwrap();
                });
                YIELDS.with(Cell::get) - before
            };
            // 1000 single leaves: 3 yields (at 256, 512, 768) and 232
            // counted; the batch of 300 crosses the mark: a fourth.
            assert_eq!(run(256), 4);
            assert_eq!(run(0), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_is_due_to_yield_once_per_every_leaves() {
        // On a thread of its own: the count is per thread.
        std::thread::spawn(|| {
            let dues: Vec<bool> = (0..10).map(|_| yield_due(1, 4)).collect();
            let want = [false, false, false, true, false, false, false, true];
            assert_eq!(dues[..8], want);
            // Two counted since: a batch that crosses the mark is due, and
            // the count starts again after it.
            assert!(yield_due(100, 4));
            assert!(!yield_due(3, 4));
            assert!(yield_due(1, 4));
            // 0: never.
            assert!((0..1000).all(|_| !yield_due(1, 0)));
        })
        .join()
        .unwrap();
    }
}
