//! SHA-256 of the packed children.

use sha2::Digest;

use super::{Hash, Hasher};

/// SHA-256 of the children concatenated (Solidity's
/// `sha256(abi.encodePacked(…))` over `bytes32` children).
///
/// ```
/// use ringtree::{Hasher, LeanImt, Sha256};
///
/// let mut tree = LeanImt::<Sha256, 4, 32>::new(Sha256::default());
/// tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
/// assert_eq!(tree.root(), Some(Sha256.hash_children(&[[1; 32], [2; 32], [3; 32]])));
/// # Ok::<(), ringtree::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sha256;

impl Hasher for Sha256 {
    fn id(&self) -> &str {
        "sha256"
    }

    /// A parent costs a few hundred nanoseconds: a thread pays for itself
    /// from a few thousand.
    #[inline]
    fn parallel_groups(&self) -> Option<usize> {
        Some(4096)
    }

    #[inline]
    fn hash_children(&self, children: &[Hash]) -> Hash {
        sha2::Sha256::digest(children.as_flattened()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of 64 zero bytes, as any implementation gives it.
    #[test]
    fn known_value() {
        let hex = |h: Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(Sha256.hash_children(&[[0; 32], [0; 32]])),
            "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b"
        );
    }
}
