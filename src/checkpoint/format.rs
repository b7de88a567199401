//! The byte formats of a checkpoint: the manifest, the shard, sums and tail
//! file headers, where each file lives, and the constants they share. Kept
//! apart so the writer and the loader agree on one definition of every byte.

use std::path::{Path, PathBuf};

use crate::error::{Result, corruption, io_err};
use crate::hash::Hash;
use crate::imt::CHUNK_LEN;
use crate::io::StorageFile;

pub(crate) const MANIFEST: &str = "MANIFEST";
pub(super) const SHARDS: &str = "shards";
pub(super) const MANIFEST_MAGIC: [u8; 8] = *b"RTMANIFS";
pub(super) const SHARD_MAGIC: [u8; 8] = *b"RTSHARD1";
pub(super) const SUMS_MAGIC: [u8; 8] = *b"RTSUMS01";
/// Version of the shard, sums and tail file headers.
pub(super) const VERSION: u32 = 1;
/// Version of the manifest (3 adds the finalized size; 2 is read as 0
/// finalized).
pub(super) const MANIFEST_VERSION: u32 = 3;
/// Shard header size; chunk `i` is at `SHARD_HEADER + i * CHUNK_BYTES`, so
/// chunks are page-aligned.
pub(super) const SHARD_HEADER: u64 = 4096;
pub(super) const SUMS_HEADER: u64 = 64;
pub(super) const CHUNK_BYTES: u64 = (CHUNK_LEN * 32) as u64;
/// Bytes per level in the manifest.
pub(super) const LEVEL_META: usize = 20;

/// One level in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LevelMeta {
    /// Nodes in the level.
    pub nodes: u64,
    /// CRC-32C over the checksums of the level's sealed chunks (u32 LE
    /// each, in order).
    pub sums_crc: u32,
    /// Which tail slot (0 or 1) holds the level's last chunk.
    pub tail_slot: u32,
    /// CRC-32C of that tail chunk (4 KiB, zero past the last node).
    pub tail_crc: u32,
}

/// Sealed chunks of a level of `nodes` nodes: every chunk before the one
/// holding the last node.
pub(super) fn sealed_chunks(nodes: u64) -> u64 {
    nodes.saturating_sub(1) / CHUNK_LEN as u64
}

/// What a checkpoint covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub arity: u32,
    pub leaves: u64,
    /// All zero for an empty tree.
    pub root: Hash,
    /// The log below this position is covered by the checkpoint.
    pub wal_position: u64,
    /// The tree's id (see `identity`): a manifest of another tree is
    /// refused.
    pub tree_id: [u8; 16],
    pub levels: Vec<LevelMeta>,
    /// Leaves below this cannot be rewound (see `Tree::finalize`).
    pub finalized: u64,
}

impl Manifest {
    /// `"RTMANIFS" | version u32 | arity u32 | leaves u64 | WAL position u64
    /// | root [32] | tree id [16] | level count u32 | per level: nodes u64,
    /// sums crc u32, tail slot u32, tail crc u32 | finalized u64 | crc32c of
    /// all before u32`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(88 + LEVEL_META * self.levels.len());
        b.extend_from_slice(&MANIFEST_MAGIC);
        b.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b.extend_from_slice(&self.arity.to_le_bytes());
        b.extend_from_slice(&self.leaves.to_le_bytes());
        b.extend_from_slice(&self.wal_position.to_le_bytes());
        b.extend_from_slice(&self.root);
        b.extend_from_slice(&self.tree_id);
        b.extend_from_slice(&(self.levels.len() as u32).to_le_bytes());
        for l in &self.levels {
            b.extend_from_slice(&l.nodes.to_le_bytes());
            b.extend_from_slice(&l.sums_crc.to_le_bytes());
            b.extend_from_slice(&l.tail_slot.to_le_bytes());
            b.extend_from_slice(&l.tail_crc.to_le_bytes());
        }
        b.extend_from_slice(&self.finalized.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(path: &Path, b: &[u8]) -> Result<Self> {
        const FIXED: usize = 8 + 4 + 4 + 8 + 8 + 32 + 16 + 4;
        if b.len() < FIXED + 4 {
            return Err(corruption(
                path,
                0,
                format!(
                    "manifest is {} bytes, at least {} expected",
                    b.len(),
                    FIXED + 4
                ),
            ));
        }
        let body = &b[..b.len() - 4];
        let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err(corruption(
                path,
                (b.len() - 4) as u64,
                "manifest checksum mismatch",
            ));
        }
        if b[..8] != MANIFEST_MAGIC {
            return Err(corruption(path, 0, "bad manifest magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != MANIFEST_VERSION && version != 2 {
            return Err(corruption(
                path,
                8,
                format!(
                    "unsupported manifest version {version}, this build reads 2 and {MANIFEST_VERSION}"
                ),
            ));
        }
        let count = u32_at(80) as usize;
        let extra = if version == 2 { 0 } else { 8 };
        if body.len() != FIXED + LEVEL_META * count + extra {
            return Err(corruption(
                path,
                80,
                format!(
                    "{count} levels do not match the manifest's length {}",
                    b.len()
                ),
            ));
        }
        let levels = (0..count)
            .map(|i| {
                let o = FIXED + LEVEL_META * i;
                LevelMeta {
                    nodes: u64_at(o),
                    sums_crc: u32_at(o + 8),
                    tail_slot: u32_at(o + 12),
                    tail_crc: u32_at(o + 16),
                }
            })
            .collect();
        let finalized = if version == 2 {
            0
        } else {
            u64_at(FIXED + LEVEL_META * count)
        };
        if finalized > u64_at(16) {
            return Err(corruption(
                path,
                (FIXED + LEVEL_META * count) as u64,
                format!("manifest finalizes {finalized} leaves of {}", u64_at(16)),
            ));
        }
        Ok(Self {
            arity: u32_at(12),
            leaves: u64_at(16),
            wal_position: u64_at(24),
            root: b[32..64].try_into().expect("32 bytes"),
            tree_id: b[64..80].try_into().expect("16 bytes"),
            levels,
            finalized,
        })
    }
}

pub(super) fn shard_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.shard"))
}

pub(super) fn sums_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.sums"))
}

/// Two tail slots after a 4 KiB header: slot `s` at `4096 + s * 4096`.
pub(super) fn tail_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.tail"))
}
pub(super) const TAIL_MAGIC: [u8; 8] = *b"RTTAIL01";

/// `magic [8] | version u32 | level u32 | crc32c of the 16 bytes before`,
/// zero-padded to `len`.
pub(super) fn file_header(magic: [u8; 8], level: usize, len: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&magic);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(level as u32).to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(len as usize, 0);
    b
}

pub(super) fn check_header(
    file: &dyn StorageFile,
    path: &Path,
    magic: [u8; 8],
    level: usize,
) -> Result<()> {
    let mut h = [0u8; 20];
    let n = file.read_at(0, &mut h).map_err(|e| io_err(path, e))?;
    if n < 20 || h[..8] != magic {
        return Err(corruption(path, 0, "bad or missing file header"));
    }
    if crc32c::crc32c(&h[..16]) != u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) {
        return Err(corruption(path, 16, "file header checksum mismatch"));
    }
    if u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) != VERSION {
        return Err(corruption(path, 8, "unsupported version"));
    }
    let l = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if l as usize != level {
        return Err(corruption(
            path,
            12,
            format!("header names level {l}, expected {level}"),
        ));
    }
    Ok(())
}

/// CRC-32C of the checksums as stored (u32 LE each), without a copy of
/// them all.
pub(super) fn sums_crc(sums: &[u32]) -> u32 {
    let mut crc = 0;
    let mut buf = [0u8; 1024];
    for part in sums.chunks(buf.len() / 4) {
        for (b, s) in buf.chunks_exact_mut(4).zip(part) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        crc = crc32c::crc32c_append(crc, &buf[..part.len() * 4]);
    }
    crc
}

/// A manifest of `leaves` leaves with levels of `nodes` nodes, for tests.
#[cfg(test)]
pub(super) fn sample_manifest(leaves: u64, nodes: &[u64]) -> Manifest {
    Manifest {
        tree_id: [3; 16],
        arity: 4,
        leaves,
        root: [7; 32],
        wal_position: 96,
        finalized: 0,
        levels: nodes
            .iter()
            .map(|&n| LevelMeta {
                nodes: n,
                sums_crc: 1,
                tail_slot: 0,
                tail_crc: 2,
            })
            .collect(),
    }
}

/// A manifest's bytes with its WAL position set to 0: the checkpoint as a
/// tree with an empty log would record it (a copy of a checkpoint sent to
/// another directory, which has none of this log).
pub(crate) fn without_log(path: &Path, b: &[u8]) -> Result<Vec<u8>> {
    let mut m = Manifest::decode(path, b)?;
    m.wal_position = 0;
    Ok(m.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of the stored checksums, computed in pieces, equals
    /// CRC-32C of their bytes at once, at and around the piece size.
    #[test]
    fn sums_crc_is_the_crc_of_the_stored_bytes() {
        for n in [0usize, 1, 255, 256, 257, 1000] {
            let sums: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
            let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
            assert_eq!(sums_crc(&sums), crc32c::crc32c(&bytes), "{n} sums");
        }
    }

    #[test]
    fn manifest_round_trip_and_every_byte_checked() {
        let m = sample_manifest(1000, &[1000, 250, 63, 16, 4, 1]);
        let b = m.encode();
        assert_eq!(Manifest::decode(Path::new("M"), &b).unwrap(), m);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x08;
            assert!(Manifest::decode(Path::new("M"), &x).is_err(), "byte {i}");
        }
        assert!(Manifest::decode(Path::new("M"), &b[..b.len() - 1]).is_err());
    }
}
