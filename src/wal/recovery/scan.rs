//! Reading the log back: a segment as recovery sees it, a window over its
//! data area, and the read-only checks that tell a torn tail from damage.
//! Nothing here writes; what recovery writes lives in `repair`.

use super::super::format::{
    FRAME_HEADER, FrameHeader, Kind, SEGMENT_HEADER, frame_crc, header_word,
};
use crate::error::{Result, corruption, io_err};
use crate::io::StorageFile;

pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) salt: u64,
    /// Its data area was zero-filled when it was made.
    pub(super) zeroed: bool,
    /// The clean-close record's end, if the last owner closed cleanly here.
    pub(super) clean: Option<u64>,
    /// A cut record: an earlier recovery began cutting a torn tail here
    /// and may not have finished (see `cut_tail`).
    pub(super) cut: bool,
    pub(super) path: std::path::PathBuf,
    pub(super) file: Box<dyn StorageFile>,
}

/// A segment's data area read through a window, so recovery holds at most
/// a window (or one frame) of it in memory.
pub(super) struct Window<'a> {
    pub(super) seg: &'a Segment,
    pub(super) data: u64,
    start: u64,
    buf: Vec<u8>,
    /// The least one read takes.
    min: u64,
}

const WINDOW: u64 = 1 << 20;

/// The least a look at one frame of another segment reads: small, so an
/// open whose pages are not cached does not read a whole window for the
/// sake of 8 bytes.
const PEEK: u64 = 4 << 10;

impl<'a> Window<'a> {
    pub(super) fn new(seg: &'a Segment, data: u64) -> Result<Self> {
        // Check the length before reading what the header claims.
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
        Ok(Self {
            seg,
            data,
            start: 0,
            buf: Vec::new(),
            min: WINDOW,
        })
    }

    /// A window for a look at a frame or two: small reads.
    pub(super) fn peek(seg: &'a Segment, data: u64) -> Result<Self> {
        Ok(Self {
            min: PEEK,
            ..Self::new(seg, data)?
        })
    }

    /// Bytes `[off, off + len)` of the data area (clipped to its end).
    pub(super) fn get(&mut self, off: u64, len: u64) -> Result<&[u8]> {
        let end = (off + len).min(self.data);
        if off < self.start || end > self.start + self.buf.len() as u64 {
            let want = (end - off).max(self.min).min(self.data - off);
            self.buf.resize(want as usize, 0);
            let n = self
                .seg
                .file
                .read_at(SEGMENT_HEADER + off, &mut self.buf)
                .map_err(|e| io_err(&self.seg.path, e))?;
            if (n as u64) < want {
                return Err(corruption(
                    &self.seg.path,
                    SEGMENT_HEADER + off + n as u64,
                    "segment shorter than its header says",
                ));
            }
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(&self.buf[at..at + (end - off) as usize])
    }

    /// The valid frame at `off` (LSN `base + off`): its header and payload.
    pub(super) fn frame(&mut self, base: u64, off: u64) -> Result<Option<(FrameHeader, &[u8])>> {
        if off + 8 > self.data {
            return Ok(None);
        }
        let Some(h) = FrameHeader::decode(self.get(off, 8)?.try_into().expect("8 bytes")) else {
            return Ok(None);
        };
        if off + h.len() > self.data {
            return Ok(None);
        }
        let bytes = self.get(off, h.len())?;
        let payload = &bytes[FRAME_HEADER as usize..FRAME_HEADER as usize + h.payload as usize];
        let covered: &[&[u8]] = if h.kind == Kind::Pad { &[] } else { &[payload] };
        Ok((frame_crc(base + off, h.word(), covered) == h.crc).then_some((h, payload)))
    }
}

/// Whether any valid commit frame in `[from, data)` (carrying the
/// segment's `salt`) names a group starting after `x`; and whether any byte
/// there is non-zero.
fn scan_rest(w: &mut Window<'_>, base: u64, salt: u64, from: u64, x: u64) -> Result<(bool, bool)> {
    let mut nonzero = false;
    let mut off = from - from % 8;
    while off < w.data {
        let end = (off + WINDOW).min(w.data);
        let piece = w.get(off, end - off)?;
        let mut candidates = Vec::new();
        if piece.iter().any(|&b| b != 0) {
            nonzero = true;
            // A commit frame's header word: length 16, tag 0xC1.
            let word = header_word(Kind::Commit, 16).to_le_bytes();
            for at in (0..piece.len().saturating_sub(3)).step_by(8) {
                if piece[at..at + 4] == word {
                    candidates.push(off + at as u64);
                }
            }
        }
        for o in candidates {
            if let Some((h, p)) = w.frame(base, o)?
                && h.kind == Kind::Commit
                && p.len() == 16
                && u64::from_le_bytes(p[8..].try_into().expect("8 bytes")) == salt
                && u64::from_le_bytes(p[..8].try_into().expect("8 bytes")) > x
            {
                return Ok((true, true));
            }
        }
        off = end;
    }
    Ok((false, nonzero))
}

/// The unit the media writes whole or not at all (invariant: sector
/// atomicity, see docs/ARCHITECTURE.md).
const SECTOR: u64 = 512;

/// Whether the frame at data offset `off` (its extent from its header, or
/// the header alone where that does not decode) holds a non-zero byte of
/// its own in every sector it touches: in a zero-filled segment, then, the
/// write of every one of those sectors reached the disk.
fn wholly_written(w: &mut Window<'_>, off: u64) -> Result<bool> {
    let head: [u8; 8] = w.get(off, 8)?.try_into().unwrap_or([0; 8]);
    let len = FrameHeader::decode(head)
        .map(|h| h.len())
        .filter(|&l| off + l <= w.data)
        .unwrap_or(FRAME_HEADER);
    let bytes = w.get(off, len)?.to_vec();
    let file_off = SEGMENT_HEADER + off;
    let mut at = 0u64;
    while at < bytes.len() as u64 {
        let to = ((file_off + at) / SECTOR + 1) * SECTOR - file_off;
        let to = to.min(bytes.len() as u64);
        if bytes[at as usize..to as usize].iter().all(|&b| b == 0) {
            return Ok(false);
        }
        at = to;
    }
    Ok(true)
}

/// Replays the valid frames of the segment `w` reads from data offset
/// `off` (LSN `base + off`): records go to `replay`, and a commit frame of
/// this segment raises `proven` to the position it names. Returns the data
/// offset of the first invalid frame (the data size when there is none).
pub(super) fn replay_segment(
    w: &mut Window<'_>,
    base: u64,
    mut off: u64,
    proven: &mut u64,
    replay: &mut crate::wal::Replay<'_>,
) -> Result<u64> {
    let seg = w.seg;
    while let Some((h, payload)) = w.frame(base, off)? {
        match h.kind {
            Kind::Record => {
                replay(base + off, payload).map_err(|reason| {
                    corruption(
                        &seg.path,
                        SEGMENT_HEADER + off,
                        format!("record rejected on replay: {reason}"),
                    )
                })?;
            }
            Kind::Commit if payload.len() == 16 => {
                let named = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let salt = u64::from_le_bytes(payload[8..].try_into().expect("8 bytes"));
                // Names a position before itself, synced before it was
                // written.
                if salt == seg.salt && named <= base + off {
                    *proven = (*proven).max(named);
                }
            }
            _ => {}
        }
        off += h.len();
    }
    Ok(off)
}

/// What the first invalid frame of the log turned out to be, when it is
/// not damage.
pub(super) enum Tail {
    /// The position of a clean close, with nothing written since: the log
    /// ends here and nothing needs cutting.
    CleanEnd,
    /// A torn tail; `dirty`: something past it must be zeroed.
    Torn { dirty: bool },
}

/// Judges the first invalid frame, at data offset `off` (log position `x`)
/// of the segment `w` reads, with `later` the segments after it: an error
/// where anything proves the bytes at `x` were synced (damage), else a
/// clean end or a torn tail.
pub(super) fn judge_tail(w: &mut Window<'_>, later: &[Segment], off: u64, x: u64) -> Result<Tail> {
    let seg = w.seg;
    let data = w.data;
    let base = seg.seq * data;
    let file_off = SEGMENT_HEADER + off;
    later_segments_start_empty(seg, later, data, x, file_off)?;
    if seg.clean.is_some_and(|end| x < end) {
        // Its last owner closed cleanly at `end`: every byte before was
        // synced, so an invalid frame there is damage.
        return Err(corruption(
            &seg.path,
            file_off,
            "invalid frame before the position of a clean close",
        ));
    }
    let zero_here = w.get(off, 8)?.iter().all(|&b| b == 0);
    if seg.clean == Some(x) && zero_here {
        // Its last owner closed cleanly right here, and nobody wrote
        // since (an owner erases the record before writing): no torn
        // group can follow, no need to read the rest.
        return Ok(Tail::CleanEnd);
    }
    if seg.zeroed && wholly_written(w, off)? {
        // A sector is written whole or not at all, and one the log
        // never wrote reads as zeros here: a frame with something in
        // every sector was written whole, so it failed its check after:
        // damage, even in the last group before a crash, which no later
        // frame vouches for.
        return Err(corruption(
            &seg.path,
            file_off,
            "invalid frame whose every sector was written: damaged after it was written",
        ));
    }
    let (later_group, nonzero) = scan_rest(w, base, seg.salt, off + 8, x)?;
    if later_group {
        return Err(corruption(
            &seg.path,
            file_off,
            "invalid frame followed by frames of a later, synced group",
        ));
    }
    no_later_synced_group(seg, later, data, x, file_off)?;
    Ok(Tail::Torn {
        dirty: nonzero || !zero_here || seg.cut,
    })
}

/// A later segment that starts with a valid frame, or records a clean
/// close past `x`, proves `x` was synced: the invalid frame of `seg` at
/// `file_off` is damage. Reads one small piece of each.
fn later_segments_start_empty(
    seg: &Segment,
    later: &[Segment],
    data: u64,
    x: u64,
    file_off: u64,
) -> Result<()> {
    for later in later {
        let mut lw = Window::peek(later, data)?;
        if lw.frame(later.seq * data, 0)?.is_some() {
            return Err(corruption(
                &seg.path,
                file_off,
                format!(
                    "invalid frame, yet segment {} after it holds valid frames",
                    later.seq
                ),
            ));
        }
        if let Some(end) = later.clean.filter(|&end| end > x) {
            return Err(corruption(
                &seg.path,
                file_off,
                format!(
                    "invalid frame, yet segment {} records a clean close at log position {end}",
                    later.seq
                ),
            ));
        }
    }
    Ok(())
}

/// A later segment's first frame may be damaged too, and a group after it
/// synced: its commit frame proves `x` was. (Read only past the
/// clean-close shortcut: a whole segment each.)
fn no_later_synced_group(
    seg: &Segment,
    later: &[Segment],
    data: u64,
    x: u64,
    file_off: u64,
) -> Result<()> {
    for later in later {
        let mut lw = Window::new(later, data)?;
        if scan_rest(&mut lw, later.seq * data, later.salt, 0, x)?.0 {
            return Err(corruption(
                &seg.path,
                file_off,
                format!(
                    "invalid frame, yet segment {} after it holds frames of a later, synced group",
                    later.seq
                ),
            ));
        }
    }
    Ok(())
}
