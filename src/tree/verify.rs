//! Checking a loaded checkpoint: every chunk of the mapped shards against
//! its checksum (in the background after open, or before open returns with
//! `verify_on_open`), and with `verify_on_open` every level recomputed from
//! the leaves. A damaged internal chunk is recomputed from its children
//! where they give its checksum; one that stays damaged stops the tree
//! taking inserts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::hash::Hasher;
use crate::imt::{CHUNK_LEN, LeanImt, MappedShard, Snapshot};
use crate::wal::Cause;

use super::{Inner, open::retire_on_open};

/// Starts the background check of `shards` (the loaded checkpoint's,
/// `shards[d]` is level `d`'s) on the tree's worker. It runs a slice at a
/// time, giving way to any job queued behind it (a checkpoint, a close),
/// and stops once the tree is closed or gone. When every chunk passed, the
/// log below the loaded checkpoint (`start`) is retired; a chunk that
/// stays damaged poisons the tree (as a log failure does).
pub(super) fn start_background_check<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    inner: &Arc<Inner<H, N, MAX_DEPTH>>,
    shards: Vec<Arc<MappedShard>>,
    start: u64,
) {
    let weak = Arc::downgrade(inner);
    if !inner
        .worker
        .submit(move || check_slice(weak, shards, start))
    {
        inner.verifying.finish();
    }
}

/// One slice of the background check; queues the next one if it gave way.
fn check_slice<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    weak: Weak<Inner<H, N, MAX_DEPTH>>,
    shards: Vec<Arc<MappedShard>>,
    start: u64,
) {
    // Whatever happens below (a panic included) unless the check goes
    // on in a next slice, it ends: the log below the loaded checkpoint
    // waits for it.
    let mut end = EndCheck {
        inner: weak.clone(),
        goes_on: false,
    };
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let snap = crate::rt::lock_pl(&inner.tree).snapshot();
    let gone = || inner.closed.load(Ordering::Acquire);
    let gave_way = AtomicBool::new(false);
    // Checked every few hundred chunks.
    let stop = || {
        if gone() {
            return true;
        }
        let give_way = inner.worker.others_waiting();
        if give_way {
            gave_way.store(true, Ordering::Relaxed);
        }
        give_way
    };
    if let Err(e) = check_shards(&snap, &shards, &stop) {
        tracing::error!(error = %e, "checkpoint damaged; refusing further inserts");
        inner.wal.poison(Cause::of(&e));
        return;
    }
    drop(snap);
    if gone() {
        return;
    }
    if gave_way.load(Ordering::Relaxed) {
        // Behind the jobs that were waiting.
        end.goes_on = inner
            .worker
            .submit(move || check_slice(weak, shards, start));
        return;
    }
    // Every chunk passed. Retired under the checkpointer's lock and only
    // while the tree is open (close takes that lock before it closes the
    // log and lets the directory go).
    let _cp = crate::rt::lock(&inner.checkpointer);
    if start > 0 && !gone() {
        retire_on_open(&*inner.storage, &inner.dir, &inner.wal, start);
    }
}

/// Ends the background check of a loaded checkpoint when dropped (unless
/// the check goes on in a next slice); a check that panicked poisons the
/// tree (its chunks were not all verified).
struct EndCheck<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    inner: Weak<Inner<H, N, MAX_DEPTH>>,
    goes_on: bool,
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Drop for EndCheck<H, N, MAX_DEPTH> {
    fn drop(&mut self) {
        if self.goes_on && !std::thread::panicking() {
            return;
        }
        if let Some(inner) = self.inner.upgrade() {
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
pub(super) struct Verifying(AtomicBool);

impl Verifying {
    pub(super) fn new(pending: bool) -> Self {
        Self(AtomicBool::new(pending))
    }

    /// The check is over (passed, stopped, or failed and the tree poisoned).
    pub(super) fn finish(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether the check is still running.
    pub(super) fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Checks every chunk of the mapped shards (`shards[d]` is level `d`'s)
/// not yet checked; a chunk of an internal level that fails is recomputed
/// from its children where they give its checksum. The first chunk that
/// stays damaged is the error.
pub(super) fn check_shards(
    snap: &Snapshot,
    shards: &[Arc<MappedShard>],
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    for (d, shard) in shards.iter().enumerate() {
        let (failed, first) = shard.check_all(stop);
        for c in failed {
            // A chunk a replayed rewind cut off is no leaf or node of the
            // tree any more: nothing to repair or lose.
            let at = (c * CHUNK_LEN) as u64;
            if d > snap.depth() || at >= snap.level_len(d) {
                continue;
            }
            snap.checked(d, at)?;
        }
        drop(first);
    }
    Ok(())
}

/// `verify_on_open`: recomputes every level from the leaves and compares.
pub(super) fn verify_levels<H: Hasher, const N: usize, const MAX_DEPTH: usize>(
    tree: &LeanImt<H, N, MAX_DEPTH>,
    dir: &Path,
) -> Result<()> {
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
