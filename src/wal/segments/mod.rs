//! Segment files: how they are made ahead of need and how they go once a
//! checkpoint covers them. Preparation (zero-filling, or reusing a spare)
//! lives in `prepare`, removal in `remove`; the pool of spares that joins
//! the two lives here.

mod prepare;
mod remove;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

pub(crate) use prepare::{Preparer, prepare_segment};

/// Segments below a durable checkpoint, kept to become later segments: a
/// spare gets a new header and name instead of a new file being written
/// full of zeros, so a log that checkpoints writes its bytes once.
///
/// Safe because a frame's checksum covers its log position (and a commit
/// frame names its segment's salt): nothing a spare held is ever valid at
/// its new position, so recovery sees its old contents as it sees zeros.
pub(crate) struct Spares {
    paths: Mutex<Vec<PathBuf>>,
    /// At most this many are kept ([`LogConfig::spare_segments`]); the
    /// rest are removed. A checkpoint at the default policy (every 256 MiB
    /// of log) frees four 64 MiB segments.
    max: usize,
    /// Segments made from a spare / from written zeros, since open.
    recycled: std::sync::atomic::AtomicU64,
    zeroed: std::sync::atomic::AtomicU64,
}

impl Spares {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            paths: Mutex::default(),
            max,
            recycled: Default::default(),
            zeroed: Default::default(),
        }
    }

    /// Keeps `path` for reuse; gives it back when the pool is full.
    pub(crate) fn offer(&self, path: PathBuf) -> Option<PathBuf> {
        let mut p = crate::rt::lock(&self.paths);
        if p.contains(&path) {
            return None;
        }
        if p.len() >= self.max {
            return Some(path);
        }
        p.push(path);
        None
    }

    pub(crate) fn take(&self) -> Option<PathBuf> {
        crate::rt::lock(&self.paths).pop()
    }

    /// Segments made from a spare since open.
    pub(crate) fn recycled(&self) -> u64 {
        self.recycled.load(Ordering::Relaxed)
    }

    /// Segments made by writing zeros since open.
    pub(crate) fn zeroed(&self) -> u64 {
        self.zeroed.load(Ordering::Relaxed)
    }
}

impl crate::wal::Log {
    /// Segments made from a spare (a segment a checkpoint freed) since
    /// open, and segments made by writing zeros.
    pub(crate) fn segments_made(&self) -> (u64, u64) {
        (self.shared.spares.recycled(), self.shared.spares.zeroed())
    }
}
