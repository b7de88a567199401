//! The insert path: the writer critical section (checks, log reservation,
//! in-memory update), back-pressure when the log buffer is full, and
//! `flush`.

use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use crate::imt::LeanImt;
use crate::wal::ReserveError;

use super::{Inserted, RECORD_HEADER, Tree};
use std::sync::atomic::Ordering;

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    pub(super) fn check_open(&self) -> Result<()> {
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
        let (reservation, index, root, gone) = {
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
            t.check_leaves(leaves)?;
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
            let gone = t.logged(
                r.end(),
                size + leaves.len() as u64,
                self.inner.wal.durable(),
            );
            (r, size, root, gone)
        };
        drop(gone);
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
                    crate::rt::yield_now();
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
}

thread_local! {
    /// Leaves inserted on this thread since it last yielded.
    static SINCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Forgets what this thread counted (a simulation starts from nothing).
pub(crate) fn reset_thread() {
    SINCE.set(0);
}

/// Counts `leaves` inserted on this OS thread; true once per `every` of
/// them (never for 0): the thread should then yield its CPU (see
/// [`Config::thread_yield_every`](crate::Config::thread_yield_every)). A
/// batch of `every` or more is due at once.
fn yield_due(leaves: u64, every: u32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::yield_due;

    #[test]
    fn a_thread_is_due_to_yield_once_per_every_leaves() {
        // On a thread of its own: the count is per thread.
        std::thread::spawn(|| {
            let dues: Vec<bool> = (0..8).map(|_| yield_due(1, 4)).collect();
            assert_eq!(dues, [false, false, false, true, false, false, false, true]);
            // A batch that crosses the mark is due, and the count starts
            // again after it.
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
