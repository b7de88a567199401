//! Recovery scan: finds the end of the valid log, replays every record from
//! a start position, cuts a torn tail, and reports damage before it.
//!
//! Owns the rules that tell a torn tail from corruption:
//! - Frames are checked by CRC over their LSN, so stale frames (recycled
//!   segments, a tail cut earlier) are never valid.
//! - The first invalid frame at `x` is a torn tail only if nothing proves the
//!   bytes at `x` were synced. Proof is a later write: the committer writes a
//!   group only after the previous one's fdatasync completed, so a valid
//!   commit frame whose group starts after `x`, or a valid frame in a later
//!   segment, means `x` was durable and is damaged: `Error::Corruption`.
//! - A torn tail is zeroed on disk (and synced) before the log goes on, so
//!   no frame of the lost group can come back to life later.

use std::path::Path;

use super::LogConfig;
use super::format::{
    FRAME_HEADER, FrameHeader, Kind, SEGMENT_HEADER, SegmentHeader, frame_crc, parse_segment_name,
    segment_name,
};
use crate::error::{Error, Result};
use crate::io::{Storage, StorageFile};

pub(crate) struct Recovered {
    /// Where the log goes on.
    pub end: u64,
    /// Segment size in use (from existing segments, else the config).
    pub segment_size: u64,
}

struct Segment {
    seq: u64,
    salt: u64,
    path: std::path::PathBuf,
    file: Box<dyn StorageFile>,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn corruption(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Reads a segment's data area (`data` bytes after the header).
fn read_data(seg: &Segment, data: u64) -> Result<Vec<u8>> {
    // Check the length before allocating what the header claims.
    let len = seg.file.len().map_err(|e| io_err(&seg.path, e))?;
    if len < SEGMENT_HEADER + data {
        return Err(corruption(
            &seg.path,
            len,
            format!(
                "segment is {len} bytes, its header says {}",
                SEGMENT_HEADER + data
            ),
        ));
    }
    let mut buf = vec![0u8; data as usize];
    let n = seg
        .file
        .read_at(SEGMENT_HEADER, &mut buf)
        .map_err(|e| io_err(&seg.path, e))?;
    if (n as u64) < data {
        return Err(corruption(
            &seg.path,
            SEGMENT_HEADER + n as u64,
            format!(
                "segment is {} bytes, its header says {}",
                SEGMENT_HEADER + n as u64,
                SEGMENT_HEADER + data
            ),
        ));
    }
    Ok(buf)
}

/// The frame at `off` of a segment's data area whose first LSN is `base`, if
/// valid: (header, payload range).
fn frame_at(data: &[u8], base: u64, off: usize) -> Option<(FrameHeader, std::ops::Range<usize>)> {
    let h = FrameHeader::decode(data.get(off..off + 8)?.try_into().ok()?)?;
    let end = off.checked_add(h.len() as usize)?;
    if end > data.len() {
        return None;
    }
    let payload = off + FRAME_HEADER as usize..off + FRAME_HEADER as usize + h.payload as usize;
    let lsn = base + off as u64;
    let covered: &[&[u8]] = if h.kind == Kind::Pad {
        &[]
    } else {
        &[&data[payload.clone()]]
    };
    (frame_crc(lsn, h.word(), covered) == h.crc).then_some((h, payload))
}

/// Whether any valid commit frame in `data[from..]` (carrying the segment's
/// `salt`) names a group starting after `x`.
fn later_commit(data: &[u8], base: u64, salt: u64, from: usize, x: u64) -> bool {
    (from..data.len().saturating_sub(23)).step_by(8).any(|off| {
        let Some((h, p)) = frame_at(data, base, off) else {
            return false;
        };
        let word = |at: usize| {
            data.get(p.start + at..p.start + at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        h.kind == Kind::Commit
            && p.len() == 16
            && word(8) == Some(salt)
            && word(0).is_some_and(|start| start > x)
    })
}

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    config: &LogConfig,
    start: u64,
    replay: &mut super::Replay<'_>,
) -> Result<Recovered> {
    let names = storage.list(dir).map_err(|e| io_err(dir, e))?;
    for n in names.iter().filter(|n| n.ends_with(".wal.tmp")) {
        // An unfinished segment preparation; never held data.
        storage
            .remove(&dir.join(n))
            .map_err(|e| io_err(&dir.join(n), e))?;
    }
    let mut segs = Vec::new();
    let mut size = None;
    for n in &names {
        let Some(seq) = parse_segment_name(n) else {
            continue;
        };
        let path = dir.join(n);
        let file = storage.open(&path, false).map_err(|e| io_err(&path, e))?;
        let mut hb = vec![0u8; SEGMENT_HEADER as usize];
        let got = file.read_at(0, &mut hb).map_err(|e| io_err(&path, e))?;
        let h = SegmentHeader::decode(&path, &hb[..got])?;
        if h.seq != seq {
            return Err(corruption(
                &path,
                16,
                format!("header names segment {}, file name says {seq}", h.seq),
            ));
        }
        match size {
            None => size = Some(h.size),
            Some(s) if s != h.size => {
                return Err(corruption(
                    &path,
                    32,
                    format!("segment size {} differs from the others' {s}", h.size),
                ));
            }
            _ => {}
        }
        segs.push(Segment {
            seq,
            salt: h.salt,
            path,
            file,
        });
    }
    let segment_size = size.unwrap_or(config.segment_size);
    let data = segment_size - SEGMENT_HEADER;
    if size.is_some() && segment_size != config.segment_size {
        tracing::info!(
            existing = segment_size,
            configured = config.segment_size,
            "keeping the WAL's existing segment size"
        );
    }
    let first = start / data;
    segs.retain(|s| s.seq >= first);
    if let Some(s) = segs.first()
        && s.seq != first
    {
        {
            return Err(corruption(
                &dir.join(segment_name(first)),
                0,
                format!(
                    "segment {first} holding log position {start} is missing (next present: {})",
                    s.seq
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

    let mut pos = start;
    let mut i = 0;
    while i < segs.len() {
        let seg = &segs[i];
        let base = seg.seq * data;
        let buf = read_data(seg, data)?;
        let mut off = (pos - base) as usize;
        while (off as u64) < data {
            let Some((h, payload)) = frame_at(&buf, base, off) else {
                break;
            };
            if h.kind == Kind::Record {
                replay(base + off as u64, &buf[payload]).map_err(|reason| {
                    corruption(
                        &seg.path,
                        SEGMENT_HEADER + off as u64,
                        format!("record rejected on replay: {reason}"),
                    )
                })?;
            }
            off += h.len() as usize;
        }
        pos = base + off as u64;
        if (off as u64) == data {
            // The segment is complete; the log goes on in the next one.
            i += 1;
            continue;
        }
        // The first invalid frame: torn tail or damage?
        let x = pos;
        let file_off = SEGMENT_HEADER + off as u64;
        if later_commit(&buf, base, seg.salt, off + 8, x) {
            return Err(corruption(
                &seg.path,
                file_off,
                "invalid frame followed by frames of a later, synced group",
            ));
        }
        for later in &segs[i + 1..] {
            let lb = read_data(later, data)?;
            if frame_at(&lb, later.seq * data, 0).is_some() {
                return Err(corruption(
                    &seg.path,
                    file_off,
                    format!(
                        "invalid frame, yet segment {} after it holds valid frames",
                        later.seq
                    ),
                ));
            }
        }
        if buf[off..].iter().any(|&b| b != 0) {
            cut_tail(seg, off, &buf)?;
            tracing::warn!(file = %seg.path.display(), offset = file_off, "cut a torn WAL tail");
        }
        return Ok(Recovered {
            end: x,
            segment_size,
        });
    }
    Ok(Recovered {
        end: pos,
        segment_size,
    })
}

/// Zeroes the non-zero bytes from `off` to the end of the data area and
/// syncs, so frames of a lost group can never be read again.
fn cut_tail(seg: &Segment, off: usize, buf: &[u8]) -> Result<()> {
    const STEP: usize = 1 << 16;
    let zeros = vec![0u8; STEP];
    let mut at = off;
    while at < buf.len() {
        let n = STEP.min(buf.len() - at);
        if buf[at..at + n].iter().any(|&b| b != 0) {
            seg.file
                .write_at(SEGMENT_HEADER + at as u64, &[&zeros[..n]])
                .map_err(|e| io_err(&seg.path, e))?;
        }
        at += n;
    }
    seg.file.sync_data().map_err(|e| io_err(&seg.path, e))
}
