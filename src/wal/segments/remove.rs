//! Retiring segment files a durable checkpoint covers: kept as spares up
//! to a limit, the rest shortened in steps and removed on a thread of the
//! log's own, so the log's fdatasyncs do not wait behind a large unlink.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::Storage;
use crate::wal::{Log, format};

/// Shortens a segment that is no longer needed in 8 MiB steps, keeping its
/// header to the end (a crash midway leaves a valid, shorter segment below
/// the checkpoint, which recovery skips), then removes it.
fn reclaim(storage: &dyn Storage, path: &Path, size: u64) {
    const STEP: u64 = 8 << 20;
    let mut len = size;
    while len > format::SEGMENT_HEADER {
        len = len.saturating_sub(STEP).max(format::SEGMENT_HEADER);
        if let Err(e) = storage.shrink(path, len) {
            tracing::warn!(file = %path.display(), error = %e, "could not shorten a recycled segment");
            break;
        }
        crate::rt::sleep(Duration::from_millis(1));
    }
    if let Err(e) = storage.remove(path) {
        tracing::warn!(file = %path.display(), error = %e, "could not remove a recycled segment");
    }
}

impl Log {
    /// Retires every segment wholly below `position`, which must be durable
    /// and covered by a durable checkpoint; returns how many. Up to
    /// [`LogConfig::spare_segments`] are kept as spares, from which
    /// later segments are made (no zeros to write); the rest are removed on
    /// the log's reclaimer thread (joined by `close`), each file shortened
    /// in steps first: unlinking a whole segment at once frees its blocks in
    /// one go, which stalls the log's fdatasyncs meanwhile. `failpoint`
    /// `wal-recycle` removes the first one here and fails (crash tests).
    pub(crate) fn remove_segments_below(
        &self,
        position: u64,
        failpoint: Option<&'static str>,
    ) -> Result<usize> {
        assert!(
            position <= self.durable(),
            "only durable log may be recycled"
        );
        let io = |e| Error::Io {
            path: self.dir.clone(),
            source: e,
        };
        let s = &*self.shared;
        // Each segment is handed on once per open (later checkpoints only
        // see newer ones); what a previous open left is found again here.
        let from = s.handed_below.load(Ordering::Acquire);
        let below = position / s.seg_data;
        let mut doomed = Vec::new();
        for name in self.storage.list(&self.dir).map_err(io)? {
            let Some(seq) = format::parse_segment_name(&name) else {
                continue;
            };
            if seq >= from && seq < below {
                doomed.push((seq, self.dir.join(&name)));
            }
        }
        if failpoint == Some("wal-recycle") {
            if let Some((_, first)) = doomed.first() {
                self.storage.remove(first).map_err(io)?;
            }
            return Err(io(std::io::Error::other("failpoint wal-recycle")));
        }
        s.handed_below.fetch_max(below, Ordering::AcqRel);
        let n = doomed.len();
        // The newest are kept: the oldest of a long backlog go first.
        doomed.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let mut removed = Vec::new();
        for (_, path) in doomed {
            removed.extend(s.spares.offer(path));
        }
        if !removed.is_empty() {
            let mut r = crate::rt::lock(&self.reclaimer);
            if r.is_none() {
                let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
                let storage = self.storage.clone();
                let size = s.seg_data + format::SEGMENT_HEADER;
                let t = crate::rt::spawn("ringtree-reclaim", move || {
                    while let Some(path) = crate::rt::recv(&rx) {
                        reclaim(&*storage, &path, size);
                    }
                })
                .map_err(io)?;
                *r = Some((tx, t));
            }
            for p in removed {
                let _ = r.as_ref().expect("started").0.send(p);
            }
        }
        Ok(n)
    }
}
