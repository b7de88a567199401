//! The checkpoint driver: when a checkpoint is due (the policy), running
//! it on the tree's worker, what a failure does (kept for the next
//! `flush`/`close`, counted, retried after a backoff), and what a finished
//! checkpoint changes (levels served from their shards, the log below it
//! retired).

use std::sync::atomic::Ordering;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::hash::Hasher;

use super::rewind::LowWater;
use super::{CheckpointPolicy, Inner, Tree};

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Starts a background checkpoint when the policy says one is due.
    pub(super) fn maybe_checkpoint(&self) {
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
        if retry_at != 0 && (crate::rt::elapsed(inner.epoch).as_nanos() as u64) < retry_at {
            return;
        }
        if inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        // The job holds the tree until it ran: a checkpoint queued before
        // the last handle went still runs (or finds the tree closed).
        let bg = inner.clone();
        let queued = inner.worker.submit(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bg.checkpoint()))
                .unwrap_or_else(|_| {
                    Err(crate::error::io_err(
                        &bg.dir.join(checkpoint::MANIFEST),
                        std::io::Error::other("the background checkpoint panicked"),
                    ))
                });
            bg.background_done(r);
            bg.checkpointing.store(false, Ordering::Release);
        });
        if !queued {
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
        self.inner
            .worker
            .run("checkpoint", move || inner.checkpoint())
            .await
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Inner<H, N, MAX_DEPTH> {
    pub(super) fn checkpoint(&self) -> Result<()> {
        self.checkpoint_at(false)
    }

    /// Records how a background checkpoint ended: a failure is kept for
    /// the next `checkpoint`, `flush` or `close` to return, counted, and
    /// holds further background attempts back (one second, doubling with
    /// each failure in a row, up to a minute), so a full disk is not
    /// rewritten on every insert.
    pub(super) fn background_done(&self, r: Result<()>) {
        let mut failures = crate::rt::lock(&self.failures_in_a_row);
        match r {
            Ok(()) => {
                *failures = 0;
                self.retry_at.store(0, Ordering::Relaxed);
            }
            // A closed tree has nothing to report.
            Err(Error::Closed) => {}
            // Not a failure: tried again after a second.
            Err(Error::CheckpointDeferred(why)) => {
                tracing::info!(reason = %why, "background checkpoint deferred");
                let at = (crate::rt::elapsed(self.epoch) + std::time::Duration::from_secs(1))
                    .as_nanos() as u64;
                self.retry_at.store(at.max(1), Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "background checkpoint failed");
                *failures += 1;
                let wait = std::time::Duration::from_secs(1 << (*failures - 1).min(6))
                    .min(std::time::Duration::from_secs(60));
                let at = (crate::rt::elapsed(self.epoch) + wait).as_nanos() as u64;
                self.retry_at.store(at.max(1), Ordering::Relaxed);
                self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                *crate::rt::lock(&self.background_failure) = Some(e);
            }
        }
    }

    /// A checkpoint; `closing` for the one `close` itself makes.
    pub(super) fn checkpoint_at(&self, closing: bool) -> Result<()> {
        let _span = tracing::info_span!("ringtree.checkpoint", dir = %self.dir.display(), closing)
            .entered();
        // It need not wait for the background check of the loaded
        // checkpoint: it copies none of its chunks (they stay where they
        // are, under the same checksums, checked before any use), and the
        // log below the loaded checkpoint stays until that check passed
        // (below). A process killed before its check ends (a crash loop)
        // still checkpoints, so its next open replays a short log.
        let mut cp = crate::rt::lock(&self.checkpointer);
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
        let (snap, position, inserts, finalized, low_water, gone) = {
            let mut t = crate::rt::lock_pl(&self.tree);
            let gone = t.settle(self.wal.durable());
            (
                t.snapshot(),
                self.wal.end(),
                self.inserts.load(Ordering::Relaxed),
                t.finalized,
                t.low_water.take(),
                gone,
            )
        };
        drop(gone);
        let written = self.write_checkpoint(&mut cp, &snap, position, finalized, low_water);
        if written.is_err() {
            // The next attempt starts from the same low-water mark.
            let mut t = crate::rt::lock_pl(&self.tree);
            t.low_water = LowWater::min(t.low_water, low_water);
        }
        let (manifest, started) = written?;
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
            let mut t = crate::rt::lock_pl(&self.tree);
            // The shards hold the tree of the snapshot: a rewind since may
            // have changed their chunks past the sealed ones of the lowest
            // tree it left.
            let low = t.low_water.map(|lw| lw.size);
            for (d, shard) in &maps {
                let limit = low.map_or(usize::MAX, |size| {
                    let len = size.div_ceil((N as u64).saturating_pow(*d as u32));
                    (len.saturating_sub(1) / crate::imt::CHUNK_LEN as u64) as usize
                });
                t.remap_level(*d, shard, limit);
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
        self.checkpoint_latency.record(crate::rt::elapsed(started));
        #[cfg(feature = "metrics")]
        self.export.checkpoint(crate::rt::elapsed(started));
        tracing::info!(
            leaves = manifest.leaves,
            wal_position = position,
            segments_retired = removed,
            took_ms = crate::rt::elapsed(started).as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Writes the checkpoint of `snap` (the tree at log position
    /// `position`). When a rewind since the last checkpoint went below it
    /// (`low_water`), the tree at that rewind is made the durable
    /// checkpoint first: its sealed chunks are all in the shards already,
    /// under the last checkpoint's checksums, so from then on no durable
    /// manifest names a chunk the rewind cut off, and the second
    /// checkpoint may write over those. Returns the manifest and when the
    /// work started.
    fn write_checkpoint(
        &self,
        cp: &mut crate::checkpoint::Checkpointer,
        snap: &crate::imt::Snapshot,
        position: u64,
        finalized: u64,
        low_water: Option<LowWater>,
    ) -> Result<(crate::checkpoint::Manifest, std::time::Instant)> {
        let started = crate::rt::now();
        // Just before the manifest, the log below `position` is made
        // durable: then no insert the checkpoint holds can still be reported
        // failed (a log failing first stops the checkpoint instead). One
        // group commit per checkpoint.
        let log_failed = || match self.wal.flush().wait() {
            Ok(()) | Err(Error::Closed) => None,
            Err(e) => Some(e),
        };
        if let Some(lw) = low_water {
            // The rewind's record durable before a manifest names a
            // position past it; then the trees kept for durable reads
            // across it (which may still map chunks it cut off) go.
            if let Some(e) = log_failed() {
                return Err(e);
            }
            let gone = crate::rt::lock_pl(&self.tree).settle(self.wal.durable());
            drop(gone);
            if lw.size < cp.leaves() {
                let mid = snap.prefix(lw.size)?;
                cp.write(&mid, lw.position, lw.finalized, &|| None)?;
                tracing::info!(
                    leaves = lw.size,
                    wal_position = lw.position,
                    "checkpoint of the tree a rewind left, before the one that writes past it"
                );
            }
        }
        let manifest = cp.write(snap, position, finalized, &log_failed)?;
        Ok((manifest, started))
    }

    /// The failure of the last background checkpoint, once, as
    /// `CheckpointFailed`: the next `flush` or `close` returns it.
    pub(super) fn take_background_failure(&self) -> Result<()> {
        match crate::rt::lock(&self.background_failure).take() {
            Some(e) => Err(Error::CheckpointFailed(Box::new(e))),
            None => Ok(()),
        }
    }
}
