//! Checks that a checkpoint read back is the one its manifest describes:
//! the manifest's tree and shape, file lengths, the chunk sums against the
//! manifest, each chunk and tail against its sum, the root. Kept apart from
//! the loader, which only reads. Mapped chunks are checked on use by the
//! levels in `imt`, and in the background by `tree`.

use std::path::Path;

use super::format::{
    CHUNK_BYTES, LevelMeta, Manifest, SHARD_HEADER, SUMS_HEADER, shard_path, sums_crc,
};
use crate::error::{Error, Result, corruption, io_err};
use crate::imt::ChunkRef;
use crate::io::StorageFile;

/// The manifest must be of this tree (`tree_id`) and of its `arity`.
pub(super) fn check_identity(
    m: &Manifest,
    path: &Path,
    arity: usize,
    tree_id: [u8; 16],
) -> Result<()> {
    if m.tree_id != tree_id {
        return Err(corruption(
            path,
            64,
            format!(
                "manifest of another tree (tree id {}, this one is {})",
                crate::wal::format::hex(&m.tree_id),
                crate::wal::format::hex(&tree_id)
            ),
        ));
    }
    if m.arity as usize != arity {
        return Err(Error::ConfigMismatch {
            field: "arity",
            on_disk: m.arity.to_string(),
            given: arity.to_string(),
            file: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The manifest's levels must be those of a tree of its `leaves` leaves,
/// no deeper than `max_depth`.
pub(super) fn check_shape(m: &Manifest, path: &Path, arity: usize, max_depth: usize) -> Result<()> {
    let mismatch =
        |why: String| corruption(path, 0, format!("manifest does not match a tree: {why}"));
    if m.leaves == 0 {
        if !m.levels.is_empty() {
            return Err(mismatch("levels for an empty tree".into()));
        }
    } else {
        let mut len = m.leaves;
        for (d, l) in m.levels.iter().enumerate() {
            if l.nodes != len {
                return Err(mismatch(format!(
                    "level {d} has {} nodes, {len} expected",
                    l.nodes
                )));
            }
            len = len.div_ceil(arity as u64);
        }
        if m.levels.last().map(|l| l.nodes) != Some(1) {
            return Err(mismatch("the top level is not a single root".into()));
        }
        // Exactly one level of one node: depth + 1 levels, no more.
        if m.levels.len() > 1 && m.levels[m.levels.len() - 2].nodes == 1 {
            return Err(mismatch("levels above the root".into()));
        }
        if m.levels.len() > max_depth + 1 {
            return Err(Error::Depth {
                depth: m.levels.len() - 1,
                max_depth,
            });
        }
    }
    Ok(())
}

/// Corruption unless `file` holds at least `need` bytes.
pub(super) fn check_len(file: &dyn StorageFile, path: &Path, need: u64, what: &str) -> Result<()> {
    let have = file.len().map_err(|e| io_err(path, e))?;
    if have < need {
        return Err(corruption(
            path,
            have,
            format!("{what}: {have} bytes, {need} needed"),
        ));
    }
    Ok(())
}

/// The checksums read from the sums file at `path` must be those the
/// manifest's `meta` names.
pub(super) fn check_sums(sums: &[u32], meta: &LevelMeta, path: &Path) -> Result<()> {
    if sums_crc(sums) != meta.sums_crc {
        return Err(corruption(
            path,
            SUMS_HEADER,
            "chunk checksums do not match the manifest",
        ));
    }
    Ok(())
}

/// Sealed chunk `k`, read from the shard at `path`, must have checksum
/// `sum`.
pub(super) fn check_chunk(path: &Path, k: u64, bytes: &[u8], sum: u32) -> Result<()> {
    if crc32c::crc32c(bytes) != sum {
        return Err(corruption(
            path,
            SHARD_HEADER + k * CHUNK_BYTES,
            format!("chunk {k} checksum mismatch"),
        ));
    }
    Ok(())
}

/// The tail chunk read at `off` of the tail file at `path` (`n` bytes of
/// `bytes` read) must be whole and have the checksum `meta` names.
pub(super) fn check_tail(
    path: &Path,
    off: u64,
    n: usize,
    bytes: &[u8],
    meta: &LevelMeta,
) -> Result<()> {
    if n < bytes.len() {
        return Err(corruption(path, off + n as u64, "short tail file"));
    }
    if crc32c::crc32c(bytes) != meta.tail_crc {
        return Err(corruption(
            path,
            off,
            format!("tail chunk (slot {}) checksum mismatch", meta.tail_slot),
        ));
    }
    Ok(())
}

/// The top node of the loaded `levels` must be the manifest's root.
pub(super) fn check_root(dir: &Path, levels: &[(Vec<ChunkRef>, u64)], m: &Manifest) -> Result<()> {
    let top = levels.last().map(|(chunks, _)| match &chunks[0] {
        ChunkRef::Owned(c) => c[0],
        ChunkRef::Mapped(..) => unreachable!("a level's last chunk is loaded into memory"),
    });
    if top.is_some_and(|t| t != m.root) {
        return Err(corruption(
            &shard_path(dir, levels.len() - 1),
            SHARD_HEADER,
            "root differs from the manifest's",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::format::{MANIFEST, Manifest, sample_manifest as manifest};
    use super::super::loader::load;
    use crate::error::Error;
    use crate::io::{SimStorage, Storage};

    /// Shapes that are not a tree's are corruption before any shard is read.
    #[test]
    fn manifest_shapes_that_are_no_tree_are_rejected() {
        let sim = SimStorage::new(1);
        let dir = Path::new("/t");
        sim.create_dir_all(dir).unwrap();
        let put = |m: &Manifest| {
            let f = sim.open(&dir.join(MANIFEST), true).unwrap();
            f.write_at(0, &[&m.encode()]).unwrap();
        };
        for (leaves, nodes) in [
            (1u64, vec![1u64, 1, 1]), // levels above the root
            (5, vec![5, 2]),          // no single root
            (5, vec![5, 3, 1]),       // wrong parent count
            (0, vec![1]),             // levels for an empty tree
        ] {
            put(&manifest(leaves, &nodes));
            assert!(
                matches!(
                    load(&sim, dir, 4, 32, [3; 16], usize::MAX, &Default::default()),
                    Err(Error::Corruption { .. })
                ),
                "{leaves} {nodes:?}"
            );
        }
        put(&manifest(5, &[5, 2, 1]));
        // Deeper than the tree type allows: a clear error.
        assert!(matches!(
            load(&sim, dir, 4, 1, [3; 16], usize::MAX, &Default::default()),
            Err(Error::Depth { .. })
        ));
    }
}
