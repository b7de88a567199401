//! Byte layout of WAL segments and frames (see `docs/FORMAT.md`).
//!
//! Owns encoding and decoding of everything the log puts on disk: segment
//! headers and names, frame headers and checksums, and the two records of
//! a segment's header block (the clean-close record and the cut record).
//! Does no I/O.

use crate::error::Error;
use std::path::Path;

/// Bytes reserved for a segment header; frames start after it.
pub(crate) const SEGMENT_HEADER: u64 = 4096;
/// Bytes of the header that are used (the rest of the 4 KiB is zero).
const HEADER_USED: usize = 72;
/// Largest segment size accepted (1 GiB).
pub(crate) const MAX_SEGMENT: u64 = 1 << 30;
const SEGMENT_MAGIC: [u8; 8] = *b"RTWALSEG";
/// Format version of segment headers (2: with the tree id).
pub(crate) const SEGMENT_VERSION: u32 = 2;

/// Frames are 8-byte aligned; a frame is an 8-byte header and its payload
/// padded to 8 bytes.
pub(crate) const FRAME_HEADER: u64 = 8;
/// Largest payload a frame's 24-bit length field can describe.
pub(crate) const MAX_PAYLOAD: u64 = (1 << 24) - 1;

/// Frame kinds, the top byte of the frame header's first word. Each kind
/// carries the format version in its low nibble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A record for the layer above (the tree's leaves).
    Record,
    /// Filler: skipped by recovery; its payload is not checksummed. Fills
    /// the end of a segment where the next frame does not fit (the log goes
    /// on in the next segment) and stands in for an abandoned reservation.
    Pad,
    /// Written by the committer at the end of a group: payload is the LSN
    /// where the group starts and the segment's salt (u64 LE each). Lets
    /// recovery tell a torn tail from damage before it; the salt keeps a
    /// record's payload from posing as one.
    Commit,
}

impl Kind {
    const fn tag(self) -> u8 {
        match self {
            Kind::Record => 0xA1,
            Kind::Pad => 0xB1,
            Kind::Commit => 0xC1,
        }
    }
    fn from_tag(tag: u8) -> Option<Kind> {
        match tag {
            0xA1 => Some(Kind::Record),
            0xB1 => Some(Kind::Pad),
            0xC1 => Some(Kind::Commit),
            _ => None,
        }
    }
}

/// On-disk size of a frame with `payload` bytes.
#[inline]
pub(crate) const fn frame_len(payload: u64) -> u64 {
    FRAME_HEADER + payload.div_ceil(8) * 8
}

/// The first header word: kind tag (top byte) and payload length (24 bits).
#[inline]
pub(crate) fn header_word(kind: Kind, payload: u64) -> u32 {
    debug_assert!(payload <= MAX_PAYLOAD);
    (u32::from(kind.tag()) << 24) | payload as u32
}

/// The frame checksum: CRC-32C over the frame's LSN (u64 LE), its header
/// word (u32 LE) and its payload (without padding). The LSN makes a frame
/// valid only at the position it was written for, so a stale frame left in a
/// recycled segment, or one from before a cut tail, never passes.
#[inline]
pub(crate) fn frame_crc(lsn: u64, word: u32, payload: &[&[u8]]) -> u32 {
    let mut crc = crc32c::crc32c(&lsn.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &word.to_le_bytes());
    for p in payload {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc
}

/// The 8 bytes of a frame header: the header word, then the checksum
/// (u32 LE each).
pub(crate) fn header_bytes(word: u32, crc: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&word.to_le_bytes());
    h[4..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: Kind,
    pub payload: u64,
    pub crc: u32,
}

impl FrameHeader {
    /// Decodes the 8 header bytes (`None` for an unknown kind).
    pub(crate) fn decode(b: [u8; 8]) -> Option<Self> {
        let word = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(b[4..].try_into().expect("4 bytes"));
        Some(Self {
            kind: Kind::from_tag((word >> 24) as u8)?,
            payload: u64::from(word & 0x00FF_FFFF),
            crc,
        })
    }
    pub(crate) fn word(&self) -> u32 {
        header_word(self.kind, self.payload)
    }
    pub(crate) fn len(&self) -> u64 {
        frame_len(self.payload)
    }
}

/// The header of one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Sequence number: segment `seq` holds LSNs `[seq * data, (seq + 1) * data)`
    /// where `data = size - SEGMENT_HEADER`.
    pub seq: u64,
    /// Total file size in bytes.
    pub size: u64,
    /// Random per segment; commit frames carry it.
    pub salt: u64,
    /// The id of the tree (or log) the segment belongs to: a segment of
    /// another tree is refused (invariant 10).
    pub tree_id: [u8; 16],
    /// The data area was written with zeros when the segment was made (a
    /// new segment), not left with a spare's old frames: a sector the log
    /// never wrote reads as zeros.
    pub zeroed: bool,
}

/// Header flag: the data area was zero-filled.
const FLAG_ZEROED: u32 = 1;

/// A fresh random salt (from the OS-seeded keys of std's `RandomState`).
pub(crate) fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if let Some(x) = crate::rt::random() {
        return x;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

impl SegmentHeader {
    pub(crate) fn data_len(&self) -> u64 {
        self.size - SEGMENT_HEADER
    }
    pub(crate) fn base_lsn(&self) -> u64 {
        self.seq * self.data_len()
    }

    /// `magic [8] | version u32 | header len u32 | seq u64 | base LSN u64 |
    /// size u64 | salt u64 | tree id [16] | flags u32 | crc32c of the
    /// previous 68 bytes u32`, then zeros to 4 KiB.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER as usize);
        b.extend_from_slice(&SEGMENT_MAGIC);
        b.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b.extend_from_slice(&(SEGMENT_HEADER as u32).to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.base_lsn().to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.salt.to_le_bytes());
        b.extend_from_slice(&self.tree_id);
        let flags = if self.zeroed { FLAG_ZEROED } else { 0 };
        b.extend_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), HEADER_USED);
        b.resize(SEGMENT_HEADER as usize, 0);
        b
    }

    /// Decodes and checks a header read from `file`.
    pub(crate) fn decode(file: &Path, b: &[u8]) -> Result<Self, Error> {
        let bad = |offset: u64, reason: String| Error::Corruption {
            file: file.to_path_buf(),
            offset,
            reason,
        };
        if b.len() < HEADER_USED {
            return Err(bad(
                0,
                format!(
                    "segment header is {} bytes, expected {HEADER_USED}",
                    b.len()
                ),
            ));
        }
        if b[..8] != SEGMENT_MAGIC {
            return Err(bad(0, format!("bad segment magic {:02x?}", &b[..8])));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(8) != SEGMENT_VERSION {
            return Err(bad(
                8,
                format!(
                    "unsupported segment format version {}, this build reads {SEGMENT_VERSION}",
                    u32_at(8)
                ),
            ));
        }
        let crc = crc32c::crc32c(&b[..68]);
        if crc != u32_at(68) {
            return Err(bad(
                68,
                format!(
                    "segment header checksum {:#010x}, computed {crc:#010x}",
                    u32_at(68)
                ),
            ));
        }
        if u32_at(64) & !FLAG_ZEROED != 0 {
            return Err(bad(64, format!("unknown segment flags {:#x}", u32_at(64))));
        }
        if u64::from(u32_at(12)) != SEGMENT_HEADER {
            return Err(bad(
                12,
                format!(
                    "segment header length {}, expected {SEGMENT_HEADER}",
                    u32_at(12)
                ),
            ));
        }
        let h = SegmentHeader {
            seq: u64_at(16),
            size: u64_at(32),
            salt: u64_at(40),
            tree_id: b[48..64].try_into().expect("16 bytes"),
            zeroed: u32_at(64) & FLAG_ZEROED != 0,
        };
        if h.size < 2 * SEGMENT_HEADER
            || !h.size.is_multiple_of(SEGMENT_HEADER)
            || h.size > MAX_SEGMENT
        {
            return Err(bad(
                32,
                format!(
                    "segment size {} invalid: a multiple of 4096 from 8192 to {MAX_SEGMENT}",
                    h.size
                ),
            ));
        }
        if h.seq.checked_mul(h.data_len()) != Some(u64_at(24)) {
            return Err(bad(
                24,
                format!(
                    "base LSN {} does not match sequence {} and size {}",
                    u64_at(24),
                    h.seq,
                    h.size
                ),
            ));
        }
        Ok(h)
    }
}

/// The clean-close record in a segment's header block: where the log ended
/// when its last owner closed it (`"RTCLEAN1" | end LSN u64 | crc32c u32`).
pub(crate) const CLEAN_AT: usize = 2048;
const CLEAN_MAGIC: [u8; 8] = *b"RTCLEAN1";

pub(crate) fn clean_record(end: u64) -> [u8; 20] {
    let mut r = [0u8; 20];
    r[..8].copy_from_slice(&CLEAN_MAGIC);
    r[8..16].copy_from_slice(&end.to_le_bytes());
    let crc = crc32c::crc32c(&r[..16]);
    r[16..].copy_from_slice(&crc.to_le_bytes());
    r
}

pub(crate) fn parse_clean(h: &[u8]) -> Option<u64> {
    parse_tagged(h, CLEAN_MAGIC)
}

/// The position a record of kind `magic` in the header block's record slot
/// names, if it holds a valid one.
fn parse_tagged(h: &[u8], magic: [u8; 8]) -> Option<u64> {
    let r = h.get(CLEAN_AT..CLEAN_AT + 20)?;
    (r[..8] == magic && crc32c::crc32c(&r[..16]).to_le_bytes() == r[16..20])
        .then(|| u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")))
}

/// Marks a segment whose torn tail is being cut: `RTCUTAT1`, the cut
/// position (u64), CRC-32C of those 16 bytes, in the clean-close record's
/// slot (which the committer erases before it writes there).
const CUT_MAGIC: [u8; 8] = *b"RTCUTAT1";

/// The cut record for a torn tail cut at log position `x`.
pub(crate) fn cut_record(x: u64) -> [u8; 20] {
    let mut rec = [0u8; 20];
    rec[..8].copy_from_slice(&CUT_MAGIC);
    rec[8..16].copy_from_slice(&x.to_le_bytes());
    let crc = crc32c::crc32c(&rec[..16]);
    rec[16..].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// The cut position of the cut record in a segment's header block, if it
/// holds a valid one.
pub(crate) fn parse_cut(h: &[u8]) -> Option<u64> {
    parse_tagged(h, CUT_MAGIC)
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// File name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Sequence number from a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            seq: 7,
            size: 1 << 20,
            salt: 0x1234_5678_9abc_def0,
            tree_id: [7; 16],
            zeroed: true,
        };
        let b = h.encode();
        assert_eq!(b.len(), SEGMENT_HEADER as usize);
        assert_eq!(SegmentHeader::decode(Path::new("x"), &b).unwrap(), h);
        for i in 0..HEADER_USED {
            let mut m = b.clone();
            m[i] ^= 0x04;
            assert!(
                SegmentHeader::decode(Path::new("x"), &m).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn frame_header_and_names() {
        let w = header_word(Kind::Record, 40);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&w.to_le_bytes());
        b[4..].copy_from_slice(&9u32.to_le_bytes());
        let h = FrameHeader::decode(b).unwrap();
        assert_eq!(
            (h.kind, h.payload, h.crc, h.len()),
            (Kind::Record, 40, 9, 48)
        );
        assert!(FrameHeader::decode([0; 8]).is_none());
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_ne!(frame_crc(0, w, &[b"abc"]), frame_crc(8, w, &[b"abc"]));
    }
}
