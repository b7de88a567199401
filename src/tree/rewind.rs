//! Rewinds, finality and durable reads.
//!
//! A rewind and a finality are log records, in log order with the inserts
//! (see [`records`](super::records)); the writer lock orders them. Beside
//! the tree, the writer keeps the records not yet known durable (their end
//! positions and the tree's size after each, and for a rewind the tree
//! just before it), so the durable view is the tree's first
//! `durable_size` leaves of either the current tree or, while a rewind is
//! not yet durable, the tree it cut.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use crate::imt::{LeanImt, Snapshot};
use crate::wal::{Durable, ReserveError};

use super::{Tree, records};

/// What a rewind returns.
#[derive(Clone, Debug)]
pub struct Rewound {
    /// The tree's size now.
    pub size: u64,
    /// Its root now (`None` for 0 leaves).
    pub root: Option<Hash>,
    /// Resolves once the rewind is on stable storage: from then on no crash
    /// brings the removed leaves back.
    pub durable: Durable,
}

/// A record not yet known durable.
struct Pending {
    /// Its end position in the log.
    end: u64,
    /// The tree's size after it.
    size: u64,
    /// For a rewind, the tree just before it.
    before: Option<Snapshot>,
}

/// The lowest size a rewind left the tree at since the last checkpoint
/// took its snapshot: a checkpoint below which the next one must first
/// write the tree of that size (see `Inner::checkpoint_at`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LowWater {
    /// The size.
    pub size: u64,
    /// The log position just past the rewind record.
    pub position: u64,
    /// The finalized size then.
    pub finalized: u64,
}

impl LowWater {
    /// The lower of two.
    pub fn min(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.size <= a.size { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// The tree and what is kept beside it under the writer lock.
pub(crate) struct Writer<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    imt: LeanImt<H, N, MAX_DEPTH>,
    /// Records not yet known durable, in log order.
    pending: VecDeque<Pending>,
    /// The tree's size after the last record known durable.
    durable_size: u64,
    /// Leaves below this cannot be rewound.
    pub finalized: u64,
    /// See [`LowWater`].
    pub low_water: Option<LowWater>,
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Deref for Writer<H, N, MAX_DEPTH> {
    type Target = LeanImt<H, N, MAX_DEPTH>;
    fn deref(&self) -> &Self::Target {
        &self.imt
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> DerefMut for Writer<H, N, MAX_DEPTH> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.imt
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Writer<H, N, MAX_DEPTH> {
    /// A tree recovered at open: all of it durable.
    pub fn new(imt: LeanImt<H, N, MAX_DEPTH>, finalized: u64, low_water: Option<LowWater>) -> Self {
        Self {
            durable_size: imt.size(),
            imt,
            pending: VecDeque::new(),
            finalized,
            low_water,
        }
    }

    /// Notes a record ending at `end` that left the tree at `size`, and
    /// forgets those below `durable` (see [`settle`](Self::settle)).
    #[inline]
    #[must_use = "dropped outside the writer lock"]
    pub fn logged(&mut self, end: u64, size: u64, durable: u64) -> Vec<Snapshot> {
        self.pending.push_back(Pending {
            end,
            size,
            before: None,
        });
        self.settle(durable)
    }

    /// Forgets the records below `durable`: the durable size is the size
    /// after the last of them. Returns the trees kept for rewinds that are
    /// durable now (usually none: no allocation), for the caller to drop
    /// once it released the writer lock (freeing a cut-off tree's chunks
    /// can take a while).
    #[inline]
    #[must_use = "dropped outside the writer lock"]
    pub fn settle(&mut self, durable: u64) -> Vec<Snapshot> {
        let mut gone = Vec::new();
        while let Some(p) = self.pending.front() {
            if p.end > durable {
                break;
            }
            self.durable_size = p.size;
            if let Some(before) = self.pending.pop_front().and_then(|p| p.before) {
                gone.push(before);
            }
        }
        gone
    }

    /// The tree the durable prefix is a prefix of, and that prefix's size.
    fn durable_base(&self) -> (Option<Snapshot>, u64) {
        let before = self.pending.iter().find_map(|p| p.before.clone());
        (before, self.durable_size)
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Rewinds the tree to its first `size` leaves (`finalized() <= size <=
    /// size()`), for a chain reorganisation: the leaves past `size` are
    /// removed, and the next insert gets index `size`. Returns the new size
    /// and root at once, and a future that resolves when the rewind is
    /// durable.
    ///
    /// A rewind is one log record, in log order with the inserts: inserts
    /// before it keep their futures; once the rewind is durable no crash
    /// brings the removed leaves back, and a crash before leaves the tree
    /// as it was before the rewind or as after it, never in between.
    /// Snapshots taken before keep their leaves. The tree's arity and
    /// depth bound how much is hashed: O(depth × N), whatever the rewind's
    /// depth.
    ///
    /// Fails with [`Error::Finalized`] below [`finalized`](Self::finalized),
    /// [`Error::BeyondSize`] past the end, and as inserts do when the log
    /// failed or the tree is closed; the tree is then unchanged.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let block_a = tree.insert_many(&[[1; 32], [2; 32]]).await?;
    /// tree.insert_many(&[[3; 32], [4; 32]]).await?; // a block that is reorganised away
    /// let r = tree.rewind(2).await?;
    /// assert_eq!((r.size, r.root), (2, Some(block_a.root)));
    /// r.durable.await?;
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn rewind(&self, size: u64) -> Result<Rewound> {
        let (durable, (root, gone)) = self
            .log_control(
                records::REWIND_LEN as u64,
                |t| {
                    if size > t.size() {
                        return Err(Error::BeyondSize {
                            requested: size,
                            size: t.size(),
                        });
                    }
                    if size < t.finalized {
                        return Err(Error::Finalized {
                            requested: size,
                            finalized: t.finalized,
                        });
                    }
                    Ok(())
                },
                |t, end| {
                    let (from, before) = (t.size(), t.snapshot());
                    // On failure the reservation drops as filler and the
                    // tree is unchanged.
                    let root = t.rewind(size)?;
                    t.pending.push_back(Pending {
                        end,
                        size,
                        before: Some(before),
                    });
                    let mark = LowWater {
                        size,
                        position: end,
                        finalized: t.finalized,
                    };
                    t.low_water = LowWater::min(t.low_water, Some(mark));
                    let gone = t.settle(self.inner.wal.durable());
                    Ok((records::rewind(from, size, root).to_vec(), (root, gone)))
                },
            )
            .await?;
        drop(gone);
        #[cfg(feature = "metrics")]
        self.inner.export.leaves(size);
        Ok(Rewound {
            size,
            root,
            durable,
        })
    }

    /// Logs a rewind or finality record: under the writer lock, `check`
    /// (an error leaves everything as it was), a reservation of `payload`
    /// bytes, then `apply` (given the record's end position), which
    /// changes the writer's state and returns the record and what the
    /// caller gets; the record is written after the lock is released.
    /// Waits (as inserts do) while the log buffer is full.
    async fn log_control<T>(
        &self,
        payload: u64,
        check: impl Fn(&Writer<H, N, MAX_DEPTH>) -> Result<()>,
        mut apply: impl FnMut(&mut Writer<H, N, MAX_DEPTH>, u64) -> Result<(Vec<u8>, T)>,
    ) -> Result<(Durable, T)> {
        let mut claim = None;
        loop {
            let done = {
                let mut t = self.tree();
                self.check_open()?;
                check(&t)?;
                match self.inner.wal.try_reserve_as(payload, claim.as_ref()) {
                    Ok(r) => {
                        let (record, out) = apply(&mut t, r.end())?;
                        Some((r, record, out))
                    }
                    Err(ReserveError::Full) => None,
                    Err(ReserveError::Fatal(e)) => return Err(e),
                }
            };
            if let Some((r, record, out)) = done {
                drop(claim);
                return Ok((r.write(&[&record]), out));
            }
            let c = claim.get_or_insert_with(|| self.inner.wal.claim_space(payload));
            std::future::poll_fn(|cx| self.inner.wal.poll_space(payload, c, cx)).await;
        }
    }

    /// Makes the first `size` leaves final (`size <= size()`): no rewind can
    /// go below them from now on. Returns a future that resolves once the
    /// finality is durable (one log record); [`finalized`](Self::finalized)
    /// reads it back, after a reopen too. A lower `size` than the finalized
    /// one changes nothing. Until a finalize, every leaf can be rewound;
    /// that costs nothing.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// tree.insert_many(&[[1; 32], [2; 32], [3; 32]]).await?;
    /// tree.finalize(2).await?.await?;
    /// assert_eq!(tree.finalized(), 2);
    /// assert!(matches!(
    ///     tree.rewind(1).await,
    ///     Err(ringtree::Error::Finalized { requested: 1, finalized: 2 })
    /// ));
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn finalize(&self, size: u64) -> Result<Durable> {
        let (durable, ()) = self
            .log_control(
                records::FINAL_LEN as u64,
                |t| {
                    if size > t.size() {
                        return Err(Error::BeyondSize {
                            requested: size,
                            size: t.size(),
                        });
                    }
                    Ok(())
                },
                |t, _| {
                    t.finalized = t.finalized.max(size);
                    Ok((records::finality(t.finalized, t.size()).to_vec(), ()))
                },
            )
            .await?;
        Ok(durable)
    }

    /// The finalized size: leaves below it cannot be rewound (0 until a
    /// [`finalize`](Self::finalize)).
    pub fn finalized(&self) -> u64 {
        self.tree().finalized
    }

    /// The size of the tree on stable storage now: no crash takes these
    /// leaves back (nor brings back leaves a durable rewind removed). No
    /// flush: it reads what the log has made durable so far.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// let ins = tree.insert([1; 32]).await?;
    /// ins.durable.await?;
    /// assert_eq!(tree.durable_size(), 1);
    /// assert_eq!(tree.durable_root(), Some(ins.root));
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn durable_size(&self) -> u64 {
        let mut t = self.tree();
        let gone = t.settle(self.inner.wal.durable());
        let size = t.durable_size;
        drop(t);
        drop(gone);
        size
    }

    /// The root of the durable tree ([`durable_size`](Self::durable_size)
    /// leaves; `None` for 0): a root to publish that no crash takes back.
    /// O(depth × N) hashes when inserts or a rewind are in flight, none
    /// otherwise.
    pub fn durable_root(&self) -> Option<Hash> {
        let (base, size, _gone) = {
            let mut t = self.tree();
            let gone = t.settle(self.inner.wal.durable());
            match t.durable_base() {
                (None, size) if size == t.size() => {
                    let root = t.root();
                    drop(t);
                    drop(gone);
                    return root;
                }
                (None, size) => (t.snapshot(), size, gone),
                (Some(before), size) => (before, size, gone),
            }
        };
        if size == 0 {
            return None;
        }
        match base.root_at(size) {
            Ok(root) => Some(root),
            Err(e) => self.durable_fallback(e).root(),
        }
    }

    /// A snapshot of the durable tree ([`durable_size`](Self::durable_size)
    /// leaves): proofs from it hold against a root no crash takes back.
    /// O(depth × N) hashes when inserts or a rewind are in flight.
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path())).await?;
    /// tree.insert_many(&[[1; 32], [2; 32]]).await?.durable.await?;
    /// let snap = tree.durable_snapshot();
    /// snap.proof(1)?.verify_at(&Blake3, &snap.root().unwrap(), 2)?;
    /// # tree.close().await?;
    /// # Ok::<(), ringtree::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn durable_snapshot(&self) -> Snapshot {
        self.try_durable_snapshot()
            .unwrap_or_else(|e| self.durable_fallback(e))
    }

    /// [`durable_snapshot`](Self::durable_snapshot), or the error met
    /// reading a chunk of it from a shard (damage).
    pub fn try_durable_snapshot(&self) -> Result<Snapshot> {
        let (base, size, _gone) = {
            let mut t = self.tree();
            let gone = t.settle(self.inner.wal.durable());
            match t.durable_base() {
                (None, size) if size == t.size() => {
                    let snap = t.snapshot();
                    drop(t);
                    drop(gone);
                    return Ok(snap);
                }
                (None, size) => (t.snapshot(), size, gone),
                (Some(before), size) => (before, size, gone),
            }
        };
        base.prefix(size)
    }

    /// The durable view could not be cut from the tree (a damaged shard
    /// chunk of its last groups, which the tree reads from the shard only
    /// when the arity does not divide 128): the tree as it is now is made
    /// durable instead. Should that flush fail too (the log failed), the
    /// tree's leaves past the durable ones are not known durable; this
    /// returns it all the same, with the error logged
    /// ([`try_durable_snapshot`](Self::try_durable_snapshot) returns the
    /// first error instead).
    #[cold]
    fn durable_fallback(&self, cause: Error) -> Snapshot {
        tracing::error!(error = %cause, "the durable view failed; flushing instead");
        let snap = self.snapshot();
        if let Err(e) = self.inner.wal.flush().wait() {
            tracing::error!(error = %e, "flush for the durable view failed");
        }
        snap
    }
}
