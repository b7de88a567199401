//! The tree's log records: leaves, rewinds and finality (see
//! `docs/FORMAT.md`, "Tree records"). A record's length tells its kind: a
//! leaves record is `8 + 32 k` bytes (`k >= 1`), never 24 or 56.

use crate::hash::Hash;

/// Bytes of a leaves record before its leaves: the index of its first
/// leaf (u64).
pub(super) const LEAVES_HEADER: u64 = 8;
/// A rewind record: magic, the size before, the size after, the root
/// after (zeros for an empty tree).
pub(super) const REWIND_LEN: usize = 56;
const REWIND_MAGIC: &[u8; 8] = b"RTREWIND";
/// A finality record: magic, the finalized size, the tree's size then.
pub(super) const FINAL_LEN: usize = 24;
const FINAL_MAGIC: &[u8; 8] = b"RTFINAL1";

/// A record read back.
#[derive(Debug, PartialEq)]
pub(super) enum Record<'a> {
    /// Leaves appended from index `first` on.
    Leaves { first: u64, leaves: &'a [Hash] },
    /// The tree of `from` leaves became its first `to`, of root `root`.
    Rewind {
        from: u64,
        to: u64,
        root: Option<Hash>,
    },
    /// Leaves below `finalized` can no longer be rewound; the tree held
    /// `size` leaves.
    Final { finalized: u64, size: u64 },
}

pub(super) fn rewind(from: u64, to: u64, root: Option<Hash>) -> [u8; REWIND_LEN] {
    let mut b = [0u8; REWIND_LEN];
    b[..8].copy_from_slice(REWIND_MAGIC);
    b[8..16].copy_from_slice(&from.to_le_bytes());
    b[16..24].copy_from_slice(&to.to_le_bytes());
    b[24..].copy_from_slice(&root.unwrap_or([0; 32]));
    b
}

pub(super) fn finality(finalized: u64, size: u64) -> [u8; FINAL_LEN] {
    let mut b = [0u8; FINAL_LEN];
    b[..8].copy_from_slice(FINAL_MAGIC);
    b[8..16].copy_from_slice(&finalized.to_le_bytes());
    b[16..24].copy_from_slice(&size.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a record, or says what is wrong with it.
pub(super) fn decode(rec: &[u8]) -> Result<Record<'_>, String> {
    let n = rec.len();
    if n >= LEAVES_HEADER as usize + 32 && (n - LEAVES_HEADER as usize).is_multiple_of(32) {
        return Ok(Record::Leaves {
            first: u64_at(rec, 0),
            leaves: rec[8..].as_chunks::<32>().0,
        });
    }
    if n == REWIND_LEN && &rec[..8] == REWIND_MAGIC {
        let (from, to) = (u64_at(rec, 8), u64_at(rec, 16));
        if to > from {
            return Err(format!("rewind record from {from} to {to} leaves"));
        }
        let root: Hash = rec[24..].try_into().expect("32 bytes");
        let root = (to > 0).then_some(root);
        if to == 0 && rec[24..] != [0; 32] {
            return Err("rewind record to 0 leaves with a root".into());
        }
        return Ok(Record::Rewind { from, to, root });
    }
    if n == FINAL_LEN && &rec[..8] == FINAL_MAGIC {
        let (finalized, size) = (u64_at(rec, 8), u64_at(rec, 16));
        if finalized > size {
            return Err(format!(
                "finality record of {finalized} leaves in a tree of {size}"
            ));
        }
        return Ok(Record::Final { finalized, size });
    }
    Err(format!(
        "tree record of {n} bytes: expected leaves (8 + 32 k bytes, k >= 1), a rewind ({REWIND_LEN} bytes, RTREWIND) or a finality record ({FINAL_LEN} bytes, RTFINAL1)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let r = rewind(9, 4, Some([7; 32]));
        assert_eq!(
            decode(&r).unwrap(),
            Record::Rewind {
                from: 9,
                to: 4,
                root: Some([7; 32])
            }
        );
        assert_eq!(
            decode(&rewind(3, 0, None)).unwrap(),
            Record::Rewind {
                from: 3,
                to: 0,
                root: None
            }
        );
        let f = finality(5, 9);
        assert_eq!(
            decode(&f).unwrap(),
            Record::Final {
                finalized: 5,
                size: 9
            }
        );
        let mut leaves = vec![0u8; 8 + 64];
        leaves[..8].copy_from_slice(&3u64.to_le_bytes());
        assert!(
            matches!(decode(&leaves).unwrap(), Record::Leaves { first: 3, leaves } if leaves.len() == 2)
        );
        // A rewind forward, a finality past the size, a bad magic, an odd length.
        assert!(decode(&rewind(3, 4, Some([1; 32]))).is_err());
        assert!(decode(&finality(10, 9)).is_err());
        let mut bad = r;
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().contains("56 bytes"));
        assert!(decode(&[0u8; 20]).is_err());
    }
}
