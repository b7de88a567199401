//! What recovery writes so the log can go on: the torn tail cut (and the
//! segments past it removed), and, once the committer holds the segment the
//! log goes on in, what no frame proves synced written again and the
//! clean-close record erased. Kept apart from the scan, which only reads.

use super::super::format::{CLEAN_AT, SEGMENT_HEADER, cut_record};
use std::path::Path;

use super::scan::{Segment, Window};
use crate::error::{Result, io_err};
use crate::io::Storage;

/// Zeroes the bytes from `off` (log position `x`) to the end of the data
/// area and syncs, so frames of a lost group can never be read again.
///
/// A sync that fails leaves the zeros readable in clean pages that never
/// reach the disk (invariant 13): a later open would read zeros, keep the
/// log going from `x`, and a power loss could bring the old frames back
/// behind the new ones, valid at their positions. So a cut record is made
/// durable first; an open that finds one writes every byte of the rest
/// again, whatever reads show. Without one, only the non-zero steps are
/// written (a cut of a new segment's tail writes little).
pub(super) fn cut_tail(w: &mut Window<'_>, off: u64, x: u64) -> Result<()> {
    const STEP: u64 = 1 << 16;
    let seg = w.seg;
    let io = |e| io_err(&seg.path, e);
    let rec = cut_record(x);
    seg.file.write_at(CLEAN_AT as u64, &[&rec]).map_err(io)?;
    seg.file.sync_data().map_err(io)?;
    let zeros = vec![0u8; STEP as usize];
    let mut at = off;
    while at < w.data {
        let n = STEP.min(w.data - at);
        if seg.cut || w.get(at, n)?.iter().any(|&b| b != 0) {
            seg.file
                .write_at(SEGMENT_HEADER + at, &[&zeros[..n as usize]])
                .map_err(io)?;
        }
        at += n;
    }
    seg.file.sync_data().map_err(io)
}

/// Removes the segments past a torn tail. They hold nothing durable
/// (nothing in them proved the tail synced), but their frames are valid at
/// their own positions: once the log came back to refill them, they could
/// pass for its continuation. Removed for good before the log goes on.
pub(super) fn remove_past_tail(storage: &dyn Storage, dir: &Path, later: &[Segment]) -> Result<()> {
    // Newest first: a crash midway leaves no gap between segments.
    for l in later.iter().rev() {
        storage.remove(&l.path).map_err(|e| io_err(&l.path, e))?;
        tracing::warn!(file = %l.path.display(), "removed a WAL segment past a torn tail");
    }
    if !later.is_empty() {
        storage.sync_dir(dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}
