//! Keccak-256: the hash of Solidity's `keccak256`.

use sha3::Digest;

use super::{Hash, Hasher};

/// Keccak-256 (the pre-standard Keccak of Ethereum, not SHA3-256) of the
/// children concatenated: the parent an on-chain verifier computes as
/// `keccak256(abi.encodePacked(c0, …, ck-1))` over `bytes32` children.
///
/// ```
/// use ringtree::{Hasher, Keccak256, LeanImt};
///
/// let mut tree = LeanImt::<Keccak256, 2, 32>::new(Keccak256::default());
/// tree.insert([1; 32])?;
/// let root = tree.insert([2; 32])?;
/// assert_eq!(root, Keccak256.hash_children(&[[1; 32], [2; 32]]));
/// # Ok::<(), ringtree::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keccak256;

impl Hasher for Keccak256 {
    fn id(&self) -> &str {
        "keccak256"
    }

    /// A parent costs a few hundred nanoseconds: a thread pays for itself
    /// from a few thousand.
    #[inline]
    fn parallel_groups(&self) -> Option<usize> {
        Some(4096)
    }

    #[inline]
    fn hash_children(&self, children: &[Hash]) -> Hash {
        sha3::Keccak256::digest(children.as_flattened()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// keccak256 of the empty string and of 64 zero bytes (two zero
    /// `bytes32`), as Ethereum tooling gives them.
    #[test]
    fn known_values() {
        let hex = |h: Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha3::Keccak256::digest([]).into()),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            hex(Keccak256.hash_children(&[[0; 32], [0; 32]])),
            "ad3228b676f7d3cd4284a5443f17f1962b36e491b30a40b2405849e597ba5fb5"
        );
    }
}
