//! What recovery writes so the log can go on: the torn tail cut (and the
//! segments past it removed), and, once the committer holds the segment the
//! log goes on in, what no frame proves synced written again and the
//! clean-close record erased. Kept apart from the scan, which only reads.

use std::path::{Path, PathBuf};

use super::super::format::{CLEAN_AT, SEGMENT_HEADER, cut_record, segment_name};
use super::scan::{Segment, Window};
use crate::error::{Error, Result, io_err};
use crate::io::{Storage, StorageFile};

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

/// Makes durable the names of the segments found on disk, which may have
/// been renamed into place by a process that died before syncing the
/// directory, before anything acknowledged goes into them.
pub(crate) fn sync_segment_names(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })
}

/// Syncs the last group recovery read. A process killed before its last
/// fdatasync returned leaves that group readable, so recovery took it, but
/// maybe not on disk: it is made durable before anything after it is
/// written and acknowledged (else a power loss could take it and keep what
/// follows). It lies in the segment the log goes on in (at `durable`, with
/// `data` bytes of log per segment), or at the end of the one before.
pub(crate) fn sync_last_group(
    storage: &dyn Storage,
    dir: &Path,
    durable: u64,
    data: u64,
) -> Result<()> {
    let seq = durable / data;
    let sync = |path: PathBuf| -> Result<()> {
        let io = |e| Error::Io {
            path: path.clone(),
            source: e,
        };
        if storage.exists(&path) {
            storage
                .open(&path, false)
                .map_err(io)?
                .sync_data()
                .map_err(io)?;
        }
        Ok(())
    };
    sync(dir.join(segment_name(seq)))?;
    if durable.is_multiple_of(data) && seq > 0 {
        sync(dir.join(segment_name(seq - 1)))?;
    }
    Ok(())
}

/// Writes the log's bytes in `range` again, as they are, and syncs them:
/// makes durable what recovery read back but no frame proves synced. A
/// sync only writes pages that are dirty: a group whose sync failed left
/// clean pages that never reached the disk, and recovery read them back.
pub(crate) fn rewrite_unproven(
    storage: &dyn Storage,
    dir: &Path,
    data: u64,
    range: std::ops::Range<u64>,
) -> Result<()> {
    const STEP: u64 = 1 << 20;
    let mut at = range.start;
    while at < range.end {
        let seq = at / data;
        let path = dir.join(segment_name(seq));
        let io = |e| Error::Io {
            path: path.clone(),
            source: e,
        };
        let f = storage.open(&path, false).map_err(io)?;
        let end = range.end.min((seq + 1) * data);
        let mut buf = vec![0u8; STEP.min(end - at) as usize];
        while at < end {
            let n = STEP.min(end - at) as usize;
            let off = SEGMENT_HEADER + at % data;
            let got = f.read_at(off, &mut buf[..n]).map_err(io)?;
            if got < n {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("short read of {got} of {n} bytes at offset {off}"),
                )));
            }
            f.write_at(off, &[&buf[..n]]).map_err(io)?;
            at += n as u64;
        }
        f.sync_data().map_err(io)?;
    }
    Ok(())
}

/// Erases the clean-close record of the segment `f`, if it has one. The
/// record lets the next open skip reading the rest of the segment; it must
/// not outlive the first new write.
pub(crate) fn erase_clean(f: &dyn StorageFile) -> std::result::Result<(), String> {
    let mut r = [0u8; 20];
    f.read_at(CLEAN_AT as u64, &mut r)
        .map_err(|e| e.to_string())?;
    if r != [0u8; 20] {
        f.write_at(CLEAN_AT as u64, &[&[0u8; 20]])
            .map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
    }
    Ok(())
}
