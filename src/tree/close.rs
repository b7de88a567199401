//! Closing a tree: `close`, and what dropping the last handle without it
//! does. Either way the log is closed (every pending future resolves, its
//! threads are joined) before the directory lock goes (invariant 12).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::hash::Hasher;
use crate::io::LockGuard;
use crate::wal::{Cause, Failure, Log};

use super::{CheckpointPolicy, Inner, Tree, worker};

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
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
        self.inner.worker.run("close", move || inner.close()).await
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Inner<H, N, MAX_DEPTH> {
    /// Closes the tree for good, whatever fails on the way: the close-time
    /// checkpoint (if the policy asks for one) may fail or panic, but the
    /// log is closed all the same (every pending future resolves, the
    /// committer and its helpers are joined), and only then is the
    /// directory lock released, when nothing of this tree can write to it
    /// again (invariant 12). The first close's outcome is every later
    /// close's.
    pub(super) fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Held through the whole close: a concurrent close waits for this
        // one and reports its outcome.
        let mut slot = crate::rt::lock(&self.log);
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
                // The log holds everything; the next open checkpoints.
                let checkpointed = match checkpointed {
                    Err(Error::CheckpointDeferred(why)) => {
                        tracing::info!(reason = %why, "close-time checkpoint deferred");
                        Ok(())
                    }
                    other => other,
                };
                // Background checkpoints and the background check run on
                // this same worker, one job at a time: none is running now,
                // and one queued behind this close finds the tree closed.
                // The checkpointer lock is taken all the same, so a
                // checkpoint on any other thread cannot outlive the close
                // (it would recycle the log under the next owner's feet).
                let cp = crate::rt::lock(&self.checkpointer);
                let closed = l.close();
                drop(cp);
                // What the log made durable is final: the trees kept for
                // durable reads across rewinds go (they may map shard
                // chunks a later owner's checkpoint must write over).
                // The handle may live on: its reads copy and check the
                // shard chunks they map, and hold back no later owner's
                // checkpoint.
                let gone = {
                    let mut t = crate::rt::lock_pl(&self.tree);
                    t.detach_shards();
                    t.settle(self.wal.durable())
                };
                drop(gone);
                // Later closes report a failure of the log itself (the
                // checkpoint's was reported by this one).
                *crate::rt::lock(&self.close_failed) = closed.as_ref().err().map(Cause::of);
                let background = self.take_background_failure();
                checkpointed.and(closed).and(background)
            }
            None => match &*crate::rt::lock(&self.close_failed) {
                None => Ok(()),
                Some(cause) => Err(Failure::Poisoned {
                    offset: self.wal.durable(),
                    cause: cause.clone(),
                }
                .to_error()),
            },
        };
        crate::rt::lock(&self.lock).take();
        drop(slot);
        r
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Inner<H, N, MAX_DEPTH> {
    /// The last user handle is gone without `close`: the tree stops (jobs
    /// still queued find it closed), and its log is closed (what was
    /// written is synced) and the directory released by the tree's worker,
    /// so dropping a tree never blocks an async runtime's thread. Until
    /// that is done the directory is marked as being released: an `open`
    /// of it waits instead of failing with `Locked`.
    pub(super) fn release(&self) {
        self.closed.store(true, Ordering::Release);
        let log = crate::rt::lock(&self.log).take();
        let lock = crate::rt::lock(&self.lock).take();
        let Some(lock) = lock else {
            return;
        };
        // The lock is still held, so the log may still write: it is
        // closed before the lock goes (closing it twice is harmless).
        let log = log.unwrap_or_else(|| self.wal.clone());
        let finish = |log: Arc<Log>, lock: LockGuard| {
            let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.close()));
            match closed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "flush on drop failed"),
                Err(_) => {
                    // The committer may not be joined: keep the directory
                    // locked rather than let another owner in beside it.
                    tracing::error!("closing the log on drop panicked; the directory stays locked");
                    std::mem::forget(lock);
                    return;
                }
            }
            // Only now: nothing of this tree can write again.
            drop(lock);
        };
        if self.worker.is_current() {
            finish(log, lock);
            return;
        }
        let release = worker::releasing(&self.release_key);
        let job = Arc::new(std::sync::Mutex::new(Some((log, lock, release))));
        let take = |job: &std::sync::Mutex<Option<_>>| crate::rt::lock(job).take();
        let queued = self.worker.submit({
            let job = job.clone();
            move || {
                if let Some((log, lock, release)) = take(&job) {
                    finish(log, lock);
                    drop(release);
                }
            }
        });
        if !queued && let Some((log, lock, release)) = take(&job) {
            tracing::warn!("the tree's worker has stopped; closing the log here");
            finish(log, lock);
            drop(release);
        }
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Drop for Inner<H, N, MAX_DEPTH> {
    /// Released already (by `close` or the last handle); the worker ends
    /// by itself after the jobs still queued (the release among them), so
    /// this drop never waits for the disk.
    fn drop(&mut self) {
        self.release();
        self.worker.detach();
    }
}
