//! Recovery: finds the end of the valid log, replays every record from a
//! start position, cuts a torn tail, and reports damage before it.
//!
//! - `mod.rs` (here): the order of the steps, from listing the directory
//!   to the position where the log goes on.
//! - `scan`: reading segments back and the read-only checks that tell a
//!   torn tail from damage.
//! - `repair`: what is written so the log can go on (the tail cut, and the
//!   rewrite of what no frame proves synced once the committer holds the
//!   segment).
//! - `salvage`: the read-only scan a salvage uses.
//!
//! Owns the rules that tell a torn tail from corruption:
//! - Frames are checked by CRC over their LSN, so stale frames (recycled
//!   segments, a tail cut earlier) are never valid.
//! - The first invalid frame at `x` is a torn tail only if nothing proves the
//!   bytes at `x` were synced. Proof is a later write: the committer writes a
//!   group only after the previous one's fdatasync completed, so a valid
//!   commit frame whose group starts after `x`, or a valid frame in a later
//!   segment, means `x` was durable and is damaged: `Error::Corruption`.
//! - A torn tail is zeroed on disk (and synced), and the segments after it
//!   removed, before the log goes on, so no frame of the lost group (or of
//!   a later one never proved durable) can come back to life later.
//! - What no frame proves synced, from the highest position a commit frame
//!   names to the end, is reported (`Recovered::proven`): the committer
//!   writes it again and syncs it before the log goes on.

pub(super) mod repair;
mod salvage;
mod scan;

use std::path::{Path, PathBuf};

use super::LogConfig;
use super::format::{
    SEGMENT_HEADER, SegmentHeader, hex, parse_clean, parse_cut, parse_segment_name, segment_name,
};
use crate::error::{Error, Result, corruption, io_err};
use crate::io::{Storage, StorageFile};
pub(crate) use salvage::salvage_records;
use scan::{Segment, Tail, Window};

pub(crate) struct Recovered {
    /// Where the log goes on.
    pub end: u64,
    /// Every byte of the log below this was synced by the log's last owner,
    /// as frames on disk prove (a commit frame names a position it had
    /// synced; a clean-close record, where the log ended). What lies in
    /// `[proven, end)` was read back, but perhaps only from the page cache:
    /// written by a process that died before its sync returned, or one
    /// whose sync failed (which leaves the pages readable and clean).
    pub proven: u64,
    /// Segment size in use (from existing segments, else the config).
    pub segment_size: u64,
}

/// A segment file found in the directory: its sequence, path, open file,
/// header block as read, and its header decoded (an error kept for later:
/// damage in a segment recovery does not need is no reason to refuse).
type Found = (
    u64,
    PathBuf,
    Box<dyn StorageFile>,
    Vec<u8>,
    Result<SegmentHeader>,
);

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    config: &LogConfig,
    start: u64,
    replay: &mut super::Replay<'_>,
) -> Result<Recovered> {
    let names = storage.list(dir).map_err(|e| io_err(dir, e))?;
    remove_unfinished_segments(storage, dir, &names)?;
    let found = read_segment_headers(storage, dir, &names)?;
    let segment_size = segment_size_in_use(&found, config);
    let data = segment_size - SEGMENT_HEADER;
    let first = start / data;
    if !start.is_multiple_of(8) {
        return Err(Error::Config(format!(
            "log replay start {start} is not a frame boundary (a multiple of 8)"
        )));
    }
    let segs = check_segments(found, first, segment_size, config)?;
    check_extent(&segs, dir, first, start, config)?;
    replay_to_end(storage, dir, &segs, segment_size, start, replay)
}

/// Removes the temporary files of unfinished segment preparations.
fn remove_unfinished_segments(storage: &dyn Storage, dir: &Path, names: &[String]) -> Result<()> {
    for n in names.iter().filter(|n| n.ends_with(".wal.tmp")) {
        // An unfinished segment preparation; never held data.
        storage
            .remove(&dir.join(n))
            .map_err(|e| io_err(&dir.join(n), e))?;
    }
    Ok(())
}

/// Every segment file and its header block, by sequence.
fn read_segment_headers(storage: &dyn Storage, dir: &Path, names: &[String]) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for n in names {
        let Some(seq) = parse_segment_name(n) else {
            continue;
        };
        let path = dir.join(n);
        let file = storage.open(&path, false).map_err(|e| io_err(&path, e))?;
        let mut hb = vec![0u8; SEGMENT_HEADER as usize];
        let got = file.read_at(0, &mut hb).map_err(|e| io_err(&path, e))?;
        hb.truncate(got);
        let header = SegmentHeader::decode(&path, &hb);
        found.push((seq, path, file, hb, header));
    }
    found.sort_by_key(|f| f.0);
    Ok(found)
}

/// The size in use: the newest segment's that decodes (all the segments
/// recovery reads are checked against it), else the configured one.
fn segment_size_in_use(found: &[Found], config: &LogConfig) -> u64 {
    let size = found
        .iter()
        .rev()
        .find_map(|f| f.4.as_ref().ok().map(|h| h.size));
    let segment_size = size.unwrap_or(config.segment_size);
    if size.is_some() && segment_size != config.segment_size {
        tracing::info!(
            existing = segment_size,
            configured = config.segment_size,
            "keeping the WAL's existing segment size"
        );
    }
    segment_size
}

/// The segments from `first` on, each checked to belong to this log, at
/// its place, with the size in use.
fn check_segments(
    found: Vec<Found>,
    first: u64,
    segment_size: u64,
    config: &LogConfig,
) -> Result<Vec<Segment>> {
    let mut segs = Vec::new();
    for (seq, path, file, hb, header) in found {
        if seq < first {
            // Wholly below the replay start, which a durable checkpoint
            // covers: retired (kept for reuse, or not yet removed).
            continue;
        }
        let h = header?;
        if h.tree_id != config.tree_id {
            return Err(corruption(
                &path,
                48,
                format!(
                    "segment of another log (tree id {}, this one is {})",
                    hex(&h.tree_id),
                    hex(&config.tree_id)
                ),
            ));
        }
        if h.seq != seq {
            return Err(corruption(
                &path,
                16,
                format!("header names segment {}, file name says {seq}", h.seq),
            ));
        }
        if h.size != segment_size {
            return Err(corruption(
                &path,
                32,
                format!(
                    "segment size {} differs from the others' {segment_size}",
                    h.size
                ),
            ));
        }
        segs.push(Segment {
            seq,
            salt: h.salt,
            zeroed: h.zeroed,
            clean: parse_clean(&hb),
            cut: parse_cut(&hb).is_some(),
            path,
            file,
        });
    }
    Ok(segs)
}

/// The log proves its own extent (invariant 11): the segment holding the
/// replay start is there, and no segment is missing after it.
fn check_extent(
    segs: &[Segment],
    dir: &Path,
    first: u64,
    start: u64,
    config: &LogConfig,
) -> Result<()> {
    // Where the log starts is known (0, or a durable checkpoint's
    // position): the segment holding it must be there, unless the log is
    // new (invariant 11). A log that reached a position has its segment:
    // the committer makes the next segment durable before a group reaches
    // the end of the one before.
    match segs.first() {
        Some(s) if s.seq == first => {}
        None if !config.must_exist => {}
        other => {
            let next = other.map_or("none".to_string(), |s| s.seq.to_string());
            return Err(corruption(
                &dir.join(segment_name(first)),
                0,
                format!(
                    "segment {first} holding log position {start} is missing (next present: {next})"
                ),
            ));
        }
    }
    for w in segs.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(corruption(
                &dir.join(segment_name(w[0].seq + 1)),
                0,
                format!(
                    "segment {} missing between {} and {}",
                    w[0].seq + 1,
                    w[0].seq,
                    w[1].seq
                ),
            ));
        }
    }
    Ok(())
}

/// Replays the segments from `start` on, segment by segment, to the first
/// invalid frame (or the end of the last segment), and returns where the
/// log goes on.
fn replay_to_end(
    storage: &dyn Storage,
    dir: &Path,
    segs: &[Segment],
    segment_size: u64,
    start: u64,
    replay: &mut super::Replay<'_>,
) -> Result<Recovered> {
    let data = segment_size - SEGMENT_HEADER;
    let mut pos = start;
    // The replay start is covered by a durable checkpoint (or is 0).
    let mut proven = start;
    for (i, seg) in segs.iter().enumerate() {
        let base = seg.seq * data;
        let mut w = Window::new(seg, data)?;
        let off = scan::replay_segment(&mut w, base, pos - base, &mut proven, replay)?;
        pos = base + off;
        if let Some(end) = seg.clean.filter(|&end| end <= pos) {
            proven = proven.max(end);
        }
        if off == data {
            require_successor(dir, segs, i)?;
            continue;
        }
        return end_at_invalid_frame(storage, dir, &segs[i..], w, off, proven, segment_size);
    }
    Ok(Recovered {
        end: pos,
        proven: proven.min(pos),
        segment_size,
    })
}

/// Segment `segs[i]` is complete; the log goes on in the next one, which
/// the committer made durable before this one's last group: it must be
/// there (invariant 11).
fn require_successor(dir: &Path, segs: &[Segment], i: usize) -> Result<()> {
    let seg = &segs[i];
    if i + 1 == segs.len() {
        return Err(corruption(
            &dir.join(segment_name(seg.seq + 1)),
            0,
            format!(
                "segment {} is missing: segment {} is full and the log went on past it",
                seg.seq + 1,
                seg.seq
            ),
        ));
    }
    Ok(())
}

/// The first invalid frame, at data offset `off` of `segs[0]` (read
/// through `w`): where the log ended at a clean close, a torn tail to cut,
/// or damage.
fn end_at_invalid_frame(
    storage: &dyn Storage,
    dir: &Path,
    segs: &[Segment],
    mut w: Window<'_>,
    off: u64,
    proven: u64,
    segment_size: u64,
) -> Result<Recovered> {
    let seg = &segs[0];
    let later = &segs[1..];
    let x = seg.seq * w.data + off;
    match scan::judge_tail(&mut w, later, off, x)? {
        Tail::CleanEnd => {
            return Ok(Recovered {
                end: x,
                proven: x,
                segment_size,
            });
        }
        Tail::Torn { dirty } => {
            if dirty {
                repair::cut_tail(&mut w, off, x)?;
                tracing::warn!(file = %seg.path.display(), offset = SEGMENT_HEADER + off, "cut a torn WAL tail");
            }
        }
    }
    drop(w);
    repair::remove_past_tail(storage, dir, later)?;
    Ok(Recovered {
        end: x,
        proven: proven.min(x),
        segment_size,
    })
}
