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
//! - A torn tail is zeroed on disk (and synced), and the segments after it
//!   removed, before the log goes on, so no frame of the lost group (or of
//!   a later one never proved durable) can come back to life later.
//! - What no frame proves synced, from the highest position a commit frame
//!   names to the end, is reported (`Recovered::proven`): the committer
//!   writes it again and syncs it before the log goes on.

use std::path::Path;

use super::LogConfig;
use super::format::{
    CLEAN_AT, FRAME_HEADER, FrameHeader, Kind, SEGMENT_HEADER, SegmentHeader, cut_record,
    frame_crc, hex, parse_clean, parse_cut, parse_segment_name, segment_name,
};
use crate::error::{Error, Result, corruption, io_err};
use crate::io::{Storage, StorageFile};

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

struct Segment {
    seq: u64,
    salt: u64,
    /// Its data area was zero-filled when it was made.
    zeroed: bool,
    /// The clean-close record's end, if the last owner closed cleanly here.
    clean: Option<u64>,
    /// A cut record: an earlier recovery began cutting a torn tail here
    /// and may not have finished (see `cut_tail`).
    cut: bool,
    path: std::path::PathBuf,
    file: Box<dyn StorageFile>,
}

/// A segment's data area read through a window, so recovery holds at most
/// a window (or one frame) of it in memory.
struct Window<'a> {
    seg: &'a Segment,
    data: u64,
    start: u64,
    buf: Vec<u8>,
    /// The least one read takes.
    min: u64,
}

const WINDOW: u64 = 1 << 20;

/// The least a look at one frame of another segment reads (a window would
/// read 4 MiB for 8 bytes: milliseconds at every open whose pages are not
/// cached).
const PEEK: u64 = 4 << 10;

impl<'a> Window<'a> {
    fn new(seg: &'a Segment, data: u64) -> Result<Self> {
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
    fn peek(seg: &'a Segment, data: u64) -> Result<Self> {
        Ok(Self {
            min: PEEK,
            ..Self::new(seg, data)?
        })
    }

    /// Bytes `[off, off + len)` of the data area (clipped to its end).
    fn get(&mut self, off: u64, len: u64) -> Result<&[u8]> {
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
    fn frame(&mut self, base: u64, off: u64) -> Result<Option<(FrameHeader, &[u8])>> {
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
            let word = super::format::header_word(Kind::Commit, 16).to_le_bytes();
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
    // Every segment file and its header block (an error kept for later:
    // damage in a segment recovery does not need is no reason to refuse).
    let mut found = Vec::new();
    for n in &names {
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
    // The size in use: the newest segment's that decodes (all the segments
    // recovery reads are checked against it below).
    let size = found
        .iter()
        .rev()
        .find_map(|f| f.4.as_ref().ok().map(|h| h.size));
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
    if !start.is_multiple_of(8) {
        return Err(Error::Config(format!(
            "log replay start {start} is not a frame boundary (a multiple of 8)"
        )));
    }
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

    let mut pos = start;
    // The replay start is covered by a durable checkpoint (or is 0).
    let mut proven = start;
    let mut i = 0;
    while i < segs.len() {
        let seg = &segs[i];
        let base = seg.seq * data;
        let mut w = Window::new(seg, data)?;
        let mut off = pos - base;
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
                        proven = proven.max(named);
                    }
                }
                _ => {}
            }
            off += h.len();
        }
        pos = base + off;
        if let Some(end) = seg.clean.filter(|&end| end <= pos) {
            proven = proven.max(end);
        }
        if off == data {
            // The segment is complete; the log goes on in the next one,
            // which the committer made durable before this one's last
            // group: it must be there (invariant 11).
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
            i += 1;
            continue;
        }
        // The first invalid frame: torn tail or damage?
        let x = pos;
        let file_off = SEGMENT_HEADER + off;
        for later in &segs[i + 1..] {
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
            return Ok(Recovered {
                end: x,
                proven: x,
                segment_size,
            });
        }
        if seg.zeroed && wholly_written(&mut w, off)? {
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
        let (later, nonzero) = scan_rest(&mut w, base, seg.salt, off + 8, x)?;
        if later {
            return Err(corruption(
                &seg.path,
                file_off,
                "invalid frame followed by frames of a later, synced group",
            ));
        }
        // A later segment's first frame may be damaged too, and a group
        // after it synced: its commit frame proves `x` was. (Read only
        // here, past the clean-close shortcut: a whole segment each.)
        for later in &segs[i + 1..] {
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
        if nonzero || !zero_here || seg.cut {
            cut_tail(&mut w, off, x)?;
            tracing::warn!(file = %seg.path.display(), offset = file_off, "cut a torn WAL tail");
        }
        // Later segments hold nothing durable (nothing in them proved `x`
        // synced), but their frames are valid at their own positions: once
        // the log came back to refill them, they could pass for its
        // continuation. Remove them for good before the log goes on.
        drop(w);
        let later = &segs[i + 1..];
        // Newest first: a crash midway leaves no gap between segments.
        for l in later.iter().rev() {
            storage.remove(&l.path).map_err(|e| io_err(&l.path, e))?;
            tracing::warn!(file = %l.path.display(), "removed a WAL segment past a torn tail");
        }
        if !later.is_empty() {
            storage.sync_dir(dir).map_err(|e| io_err(dir, e))?;
        }
        return Ok(Recovered {
            end: x,
            proven: proven.min(x),
            segment_size,
        });
    }
    Ok(Recovered {
        end: pos,
        proven: proven.min(pos),
        segment_size,
    })
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
fn cut_tail(w: &mut Window<'_>, off: u64, x: u64) -> Result<()> {
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

/// Reads the log in `dir` from `start` for a salvage, never cutting or
/// writing anything: every valid record in order is given to `record`
/// (which returns false to stop) until the first invalid frame, a missing
/// segment, or a segment of another tree (when `tree_id` is given).
/// Returns what stopped the read, as an error naming the file, or `None`
/// at a clean end (an invalid frame that nothing later shows was durable
/// is still returned: a salvage cannot tell).
pub(crate) fn salvage_records(
    storage: &dyn Storage,
    dir: &Path,
    start: u64,
    tree_id: Option<[u8; 16]>,
    record: &mut dyn FnMut(&[u8]) -> bool,
) -> Option<Error> {
    let names = match storage.list(dir) {
        Ok(n) => n,
        Err(e) => return Some(io_err(dir, e)),
    };
    let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    seqs.sort_unstable();
    let mut data = None;
    let mut pos = start;
    loop {
        let seq = match data {
            Some(d) => pos / d,
            None => match seqs.iter().rev().find_map(|&s| {
                let path = dir.join(segment_name(s));
                let f = storage.open(&path, false).ok()?;
                let mut hb = vec![0u8; SEGMENT_HEADER as usize];
                let n = f.read_at(0, &mut hb).ok()?;
                SegmentHeader::decode(&path, &hb[..n])
                    .ok()
                    .map(|h| h.data_len())
            }) {
                Some(d) => {
                    data = Some(d);
                    continue;
                }
                None => return None,
            },
        };
        let d = data.expect("known");
        let path = dir.join(segment_name(seq));
        if !seqs.contains(&seq) {
            // The end, unless a later segment exists, or the log had to
            // start here (after a checkpoint, or any segment at all).
            let missing = seqs.iter().any(|&s| s > seq) || (pos == start && !seqs.is_empty());
            return missing.then(|| corruption(&path, 0, format!("segment {seq} is missing")));
        }
        let seg = (|| -> Result<Segment> {
            let file = storage.open(&path, false).map_err(|e| io_err(&path, e))?;
            let mut hb = vec![0u8; SEGMENT_HEADER as usize];
            let n = file.read_at(0, &mut hb).map_err(|e| io_err(&path, e))?;
            let h = SegmentHeader::decode(&path, &hb[..n])?;
            if h.seq != seq || h.data_len() != d || tree_id.is_some_and(|id| id != h.tree_id) {
                return Err(corruption(
                    &path,
                    0,
                    "segment header of another place or tree",
                ));
            }
            Ok(Segment {
                seq,
                salt: h.salt,
                zeroed: h.zeroed,
                clean: None,
                cut: false,
                path: path.clone(),
                file,
            })
        })();
        let seg = match seg {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        let mut w = match Window::new(&seg, d) {
            Ok(w) => w,
            Err(e) => return Some(e),
        };
        let base = seq * d;
        let mut off = pos - base;
        loop {
            match w.frame(base, off) {
                Ok(Some((h, payload))) => {
                    if h.kind == Kind::Record && !record(payload) {
                        return Some(corruption(
                            &seg.path,
                            SEGMENT_HEADER + off,
                            "record out of sequence",
                        ));
                    }
                    off += h.len();
                }
                Ok(None) => break,
                Err(e) => return Some(e),
            }
        }
        pos = base + off;
        if off < d {
            let zero = w.get(off, FRAME_HEADER).map(|b| b.iter().all(|&x| x == 0));
            return match zero {
                Ok(true) => None,
                _ => Some(corruption(&seg.path, SEGMENT_HEADER + off, "invalid frame")),
            };
        }
    }
}
