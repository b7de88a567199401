//! Opening a tree, in order: choose the storage, create and lock the
//! directory, establish the identity, load the last checkpoint, replay the
//! log past it, record a new tree's identity, then start the background
//! check of the loaded checkpoint. Runs on the tree's worker (`open`) or
//! the caller's thread (`open_blocking`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::checkpoint::{self, Checkpointer};
use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use crate::imt::{ChunkStats, LeanImt, MappedShard};
use crate::io::{LockGuard, Storage};
use crate::wal::{Log, LogConfig};

use super::identity::{self, Established, Identity};
use super::records::{self, Record};
use super::rewind::{LowWater, Writer};
use super::verify::{Verifying, check_shards, start_background_check, verify_levels};
use super::worker::{self, Worker};
use super::{Config, Inner, Tree};

impl<H: Hasher + Default, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Opens (creating or recovering) the tree in `config.dir`, without
    /// blocking the calling task: recovery runs on the tree's worker thread.
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
        Self::open_with(config, H::default()).await
    }

    /// [`open`](Self::open), blocking the calling thread.
    pub fn open_blocking(config: Config) -> Result<Self> {
        Self::open_with_blocking(config, H::default())
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// [`open`](Self::open) with a given hasher value.
    pub async fn open_with(config: Config, hasher: H) -> Result<Self> {
        let dir = config.dir.clone();
        worker::open_on_worker(&dir, move |w| Self::open_on(config, hasher, w)).await
    }

    /// [`open_with`](Self::open_with), blocking the calling thread.
    pub fn open_with_blocking(config: Config, hasher: H) -> Result<Self> {
        let worker = Worker::start(&config.dir)?;
        Self::open_on(config, hasher, worker)
    }

    /// The steps of an open; `worker` becomes the tree's.
    fn open_on(config: Config, hasher: H, worker: Arc<Worker>) -> Result<Self> {
        let _span = tracing::info_span!("ringtree.open", dir = %config.dir.display()).entered();
        let dir = config.dir.clone();
        let storage = match &config.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(config.io)?,
        };
        let lock = lock_dir(&*storage, &dir)?;
        let backend = storage.backend();
        tracing::info!(dir = %dir.display(), backend = %backend, "opening tree");
        let want = Identity::new(N, MAX_DEPTH, hasher.id())?;
        let established = identity::establish(&*storage, &dir, want)?;
        let chunk_stats = Arc::new(ChunkStats::default());
        let loaded = load_checkpoint::<H, N, MAX_DEPTH>(
            &config,
            &storage,
            &established,
            hasher,
            &chunk_stats,
        )?;
        let Loaded {
            mut tree,
            start,
            finalized,
            checkpointer,
            unverified,
        } = loaded;
        let (log, replayed) = replay_log(
            &config,
            storage.clone(),
            &established,
            start,
            finalized,
            &mut tree,
        )?;
        tracing::info!(leaves = tree.size(), "tree recovered");
        let wal = Arc::new(log);
        let replayed_at_open = wal.end().saturating_sub(start);
        // The log below the checkpoint is its only other copy of the leaves
        // until the checkpoint's chunks are verified: retired only then.
        let verifying = Verifying::new(!unverified.is_empty());
        if start > 0 && unverified.is_empty() {
            retire_on_open(&*storage, &dir, &wal, start);
        }
        #[cfg(feature = "metrics")]
        let export = {
            let e = Arc::new(crate::metrics::Export::new(&dir));
            e.leaves(tree.size());
            wal.export_to(e.clone());
            e
        };
        let release_key = worker::release_key(&dir);
        let this = Self::from_inner(Inner {
            tree: parking_lot::Mutex::new(Writer::new(
                tree,
                replayed.finalized,
                replayed.low_water,
            )),
            log: Mutex::new(Some(wal.clone())),
            wal,
            lock: Mutex::new(Some(lock)),
            close_failed: Mutex::new(None),
            background_failure: Mutex::new(None),
            checkpoint_failures: AtomicU64::new(0),
            replayed_at_open,
            worker,
            failures_in_a_row: Mutex::new(0),
            retry_at: AtomicU64::new(0),
            epoch: crate::rt::now(),
            storage,
            checkpointer: Mutex::new(checkpointer),
            policy: config.checkpoint,
            pin: config.tiering.pin_above_level,
            checkpointing: AtomicBool::new(false),
            verifying,
            thread_yield_every: config.thread_yield_every,
            inserts: AtomicU64::new(replayed.records),
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
            release_key,
        });
        if !unverified.is_empty() {
            // Off the open path; a damaged chunk stops the tree taking
            // inserts (as a log failure does).
            start_background_check(&this.inner, unverified, start);
        }
        // A log replayed past the policy's threshold is checkpointed at once,
        // in the background: a process that keeps dying before its
        // checkpoints finish would otherwise replay a longer log at every
        // open (each attempt resumes where the last one's synced chunks
        // end).
        this.maybe_checkpoint();
        Ok(this)
    }
}

/// Creates `dir` (durably) and takes its lock. A directory that a dropped
/// tree of this process is still releasing is waited for.
fn lock_dir(storage: &dyn Storage, dir: &Path) -> Result<LockGuard> {
    crate::io::create_dir_durable(storage, dir)?;
    let lock_path = dir.join("LOCK");
    let try_lock = || match storage.lock(&lock_path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(crate::error::io_err(&lock_path, e)),
    };
    if let Some(l) = try_lock()? {
        return Ok(l);
    }
    worker::wait_released(dir);
    try_lock()?.ok_or_else(|| Error::Locked(dir.to_path_buf()))
}

/// What loading the last checkpoint gives an open.
struct Loaded<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    tree: LeanImt<H, N, MAX_DEPTH>,
    /// The log position the checkpoint covers (0: none).
    start: u64,
    /// Its finalized size.
    finalized: u64,
    checkpointer: Checkpointer,
    /// Mapped shards whose chunks are still to be checked.
    unverified: Vec<Arc<MappedShard>>,
}

/// Loads the last checkpoint (or starts an empty tree); with
/// `verify_on_open`, checks it whole before returning.
fn load_checkpoint<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    config: &Config,
    storage: &Arc<dyn Storage>,
    established: &Established,
    hasher: H,
    chunk_stats: &Arc<ChunkStats>,
) -> Result<Loaded<H, N, MAX_DEPTH>> {
    let dir = &config.dir;
    let tree_id = established.identity.tree_id;
    let pin = config.tiering.pin_above_level;
    let mut loaded =
        match checkpoint::load(&**storage, dir, N, MAX_DEPTH, tree_id, pin, chunk_stats)? {
            Some(l) => {
                let tree = LeanImt::<H, N, MAX_DEPTH>::from_levels(hasher, l.levels)?;
                let mut unverified = Vec::new();
                if config.verify_on_open {
                    check_shards(&tree.snapshot(), &l.mapped, &|| false)?;
                    verify_levels(&tree, dir)?;
                } else {
                    unverified = l.mapped;
                }
                let cp =
                    Checkpointer::new(storage.clone(), dir, tree_id, Some((&l.manifest, l.sums)));
                Loaded {
                    tree,
                    start: l.manifest.wal_position,
                    finalized: l.manifest.finalized,
                    checkpointer: cp,
                    unverified,
                }
            }
            None => Loaded {
                tree: LeanImt::new(hasher),
                start: 0,
                finalized: 0,
                checkpointer: Checkpointer::new(storage.clone(), dir, tree_id, None),
                unverified: Vec::new(),
            },
        };
    loaded.checkpointer.failpoint = config.failpoint;
    tracing::info!(
        leaves = loaded.tree.size(),
        wal_position = loaded.start,
        "checkpoint loaded"
    );
    Ok(loaded)
}

/// What replaying the log gave.
struct Replayed {
    /// Records replayed.
    records: u64,
    /// The finalized size.
    finalized: u64,
    /// The lowest rewind below the checkpoint.
    low_water: Option<LowWater>,
}

/// Opens the log and replays its records past `start` into `tree` (the
/// checkpoint's, `finalized` of it final); a new tree's identity is
/// recorded once its log exists, before any leaf can be acknowledged.
fn replay_log<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    config: &Config,
    storage: Arc<dyn Storage>,
    established: &Established,
    start: u64,
    finalized: u64,
    tree: &mut LeanImt<H, N, MAX_DEPTH>,
) -> Result<(Log, Replayed)> {
    let dir = &config.dir;
    let checkpointed = tree.size();
    let mut replay = Replayer {
        tree,
        pending: Vec::new(),
        records: 0,
        finalized,
        checkpointed,
        low_water: None,
    };
    let log_config = LogConfig {
        tree_id: established.identity.tree_id,
        must_exist: !established.new,
        ..config.log_config()
    };
    let log = Log::open(
        storage.clone(),
        &dir.join("wal"),
        &log_config,
        start,
        &mut |lsn, rec| replay.record(lsn, rec),
    )?;
    let records = replay.records;
    let replayed = replay.finish().map_err(|reason| Error::Corruption {
        file: dir.join("wal"),
        offset: 0,
        reason: format!("replay: {reason}"),
    });
    let recorded = replayed.and_then(|(finalized, low_water)| {
        if established.new {
            identity::record(&*storage, dir, &established.identity)?;
        }
        Ok(Replayed {
            records: 0,
            finalized,
            low_water,
        })
    });
    match recorded {
        Ok(replayed) => Ok((
            log,
            Replayed {
                records,
                ..replayed
            },
        )),
        Err(e) => {
            let _ = log.close();
            Err(e)
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
pub(super) fn retire_on_open(storage: &dyn Storage, dir: &Path, wal: &Log, start: u64) {
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

/// Replays log records into the tree, batching consecutive leaves records
/// so a log of single inserts replays at batch speed; rewinds and
/// finality records are checked against the tree they apply to.
struct Replayer<'a, H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    tree: &'a mut LeanImt<H, N, MAX_DEPTH>,
    pending: Vec<Hash>,
    /// Records replayed.
    records: u64,
    /// The finalized size (the checkpoint's, then the records').
    finalized: u64,
    /// The checkpoint's size: a rewind below it is the next checkpoint's
    /// low-water mark.
    checkpointed: u64,
    low_water: Option<LowWater>,
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Replayer<'_, H, N, MAX_DEPTH> {
    const BATCH: usize = 1 << 16;

    fn record(&mut self, lsn: u64, rec: &[u8]) -> std::result::Result<(), String> {
        let size = self.tree.size() + self.pending.len() as u64;
        match records::decode(rec)? {
            Record::Leaves { first, leaves } => {
                if first != size {
                    return Err(format!(
                        "record starts at leaf {first}, the tree has {size} leaves"
                    ));
                }
                self.pending.extend_from_slice(leaves);
                if self.pending.len() >= Self::BATCH {
                    self.flush()?;
                }
            }
            Record::Rewind { from, to, root } => {
                if from != size {
                    return Err(format!(
                        "rewind record from {from} leaves, the tree has {size}"
                    ));
                }
                if to < self.finalized {
                    return Err(format!(
                        "rewind record to {to} leaves below the {} finalized",
                        self.finalized
                    ));
                }
                self.flush()?;
                let got = self.tree.rewind(to).map_err(|e| e.to_string())?;
                if got != root {
                    return Err(format!(
                        "rewind record to {to} leaves names another root than the tree's"
                    ));
                }
                if to < self.checkpointed {
                    let mark = LowWater {
                        size: to,
                        position: lsn + crate::wal::frame_len(rec.len() as u64),
                        finalized: self.finalized,
                    };
                    self.low_water = LowWater::min(self.low_water, Some(mark));
                }
            }
            Record::Final {
                finalized,
                size: then,
            } => {
                if then != size {
                    return Err(format!(
                        "finality record for a tree of {then} leaves, the tree has {size}"
                    ));
                }
                if finalized < self.finalized {
                    return Err(format!(
                        "finality record of {finalized} leaves, {} were final already",
                        self.finalized
                    ));
                }
                self.finalized = finalized;
            }
        }
        self.records += 1;
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

    fn finish(mut self) -> std::result::Result<(u64, Option<LowWater>), String> {
        self.flush()?;
        Ok((self.finalized, self.low_water))
    }
}

/// Gives a tree directory that holds a checkpoint copied from elsewhere
/// (and so no log of its own) an empty log, as the checkpoint's manifest
/// (WAL position 0) expects: without one, a missing log reads as damage.
#[cfg(feature = "raft")]
pub(crate) fn start_empty_log(config: &Config) -> Result<()> {
    let storage = match &config.storage {
        Some(s) => s.clone(),
        None => crate::io::open_storage(config.io)?,
    };
    let path = config.dir.join("IDENTITY");
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let identity = super::identity::Identity::decode(&path, &bytes)?;
    let log_config = LogConfig {
        tree_id: identity.tree_id,
        must_exist: false,
        ..config.log_config()
    };
    let log = Log::open(
        storage,
        &config.dir.join("wal"),
        &log_config,
        0,
        &mut |_, _| Err("a copied checkpoint's new log holds a record".into()),
    )?;
    log.close()
}
