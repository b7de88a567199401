//! The read-only scan a salvage uses: every valid record in order from a
//! start position, stopping at the first thing wrong, never cutting or
//! writing anything.

use std::path::Path;

use super::super::format::{
    FRAME_HEADER, Kind, SEGMENT_HEADER, SegmentHeader, parse_segment_name, segment_name,
};
use super::scan::{Segment, Window};
use crate::error::{Error, Result, corruption, io_err};
use crate::io::Storage;

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
