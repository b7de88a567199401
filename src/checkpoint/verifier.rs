//! Checks that a checkpoint read back is the one its manifest describes:
//! the manifest's shape against a tree, file lengths, the chunk sums against
//! the manifest, the root. Kept apart from the loader, which only reads.

use std::path::Path;

use crate::error::{Result, corruption, io_err};
use crate::io::StorageFile;

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
