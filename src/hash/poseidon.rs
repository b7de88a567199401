//! Poseidon over the BN254 scalar field with circomlib's parameters: the
//! hash of zk-kit's LeanIMT and of Semaphore groups.

use std::cell::RefCell;

use ark_bn254::Fr;
use ark_ff::{BigInt, PrimeField};
use light_poseidon::{Poseidon as Permutation, PoseidonHasher};

use super::{Hash, Hasher};

/// The most children circomlib has Poseidon parameters for (widths 2 to 13).
const MAX_INPUTS: usize = 12;

/// Poseidon over the BN254 scalar field with circomlib's parameters (the
/// `poseidon1` … `poseidon12` of circomlib and `poseidon-lite`), on
/// `light-poseidon`.
///
/// A node is a field element as 32 big-endian bytes (how Solidity's
/// `uint256` and zk-kit's bigints serialise it). The parent of `k`
/// children is Poseidon with `k` inputs, so a binary tree
/// (`N = 2`) has zk-kit's `LeanIMT` roots byte for byte: a Semaphore
/// group's root. Arities 2 to 12 have parameters; a tree type of a larger
/// arity does not compile.
///
/// A leaf must be a canonical field element (below the BN254 scalar field
/// modulus): any other is refused at insert with
/// [`Error::InvalidLeaf`](crate::Error::InvalidLeaf), never reduced.
///
/// ```
/// use ringtree::{Hasher, LeanImt, Poseidon};
///
/// let mut tree = LeanImt::<Poseidon, 2, 32>::new(Poseidon::default());
/// let mut one = [0u8; 32];
/// one[31] = 1;
/// let mut two = [0u8; 32];
/// two[31] = 2;
/// tree.insert(one)?;
/// let root = tree.insert(two)?;
/// // circomlib's poseidon([1, 2])
/// assert_eq!(
///     root,
///     Poseidon.hash_children(&[one, two]),
/// );
/// assert!(tree.insert([0xff; 32]).is_err()); // not a field element
/// # Ok::<(), ringtree::Error>(())
/// ```
///
/// Arity 13 has no circomlib parameters, so this does not compile:
///
/// ```compile_fail
/// use ringtree::{LeanImt, Poseidon};
/// let tree = LeanImt::<Poseidon, 13, 32>::new(Poseidon);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poseidon;

/// The BN254 scalar field modulus, big-endian.
const MODULUS_BE: Hash = [
    0x30, 0x64, 0x4e, 0x72, 0xe1, 0x31, 0xa0, 0x29, 0xb8, 0x50, 0x45, 0xb6, 0x81, 0x81, 0x58, 0x5d,
    0x28, 0x33, 0xe8, 0x48, 0x79, 0xb9, 0x70, 0x91, 0x43, 0xe1, 0xf5, 0x93, 0xf0, 0x00, 0x00, 0x01,
];

/// What a parent is when a child is not a field element: a value no
/// Poseidon output can be (above the modulus), so a damaged node can never
/// produce a root that verifies. Inserts refuse such leaves, and internal
/// nodes are Poseidon outputs, so only damage gets here.
const NOT_A_FIELD_ELEMENT: Hash = [0xff; 32];

thread_local! {
    /// One permutation per input count, made on first use (its round
    /// constants take a while to build).
    static PERMUTATIONS: RefCell<[Option<Permutation<Fr>>; MAX_INPUTS + 1]> =
        RefCell::new(std::array::from_fn(|_| None));
}

/// `bytes` (big-endian) as a field element, if canonical.
#[inline]
pub(crate) fn to_field(bytes: &Hash) -> Option<Fr> {
    let mut limbs = [0u64; 4];
    for (i, limb) in limbs.iter_mut().enumerate() {
        let at = 32 - 8 * (i + 1);
        *limb = u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    }
    // `from_bigint` is `None` at or above the modulus.
    Fr::from_bigint(BigInt::new(limbs))
}

/// `f` as 32 big-endian bytes.
#[inline]
pub(crate) fn from_field(f: Fr) -> Hash {
    let limbs = f.into_bigint().0;
    let mut out = [0u8; 32];
    for (i, limb) in limbs.iter().enumerate() {
        let at = 32 - 8 * (i + 1);
        out[at..at + 8].copy_from_slice(&limb.to_be_bytes());
    }
    out
}

/// Whether `bytes` (big-endian) is below the modulus.
#[inline]
fn canonical(bytes: &Hash) -> bool {
    bytes < &MODULUS_BE
}

/// Runs `f` with the permutation for `k` inputs (`2 <= k <= MAX_INPUTS`).
#[inline]
fn with_permutation<T>(k: usize, f: impl FnOnce(&mut Permutation<Fr>) -> T) -> T {
    PERMUTATIONS.with(|p| {
        let mut p = p.borrow_mut();
        let perm = p[k].get_or_insert_with(|| {
            Permutation::<Fr>::new_circom(k).expect("circom parameters exist for 1 to 12 inputs")
        });
        f(perm)
    })
}

/// The parent of `children` with `perm` (made for their count).
#[inline]
fn parent(perm: &mut Permutation<Fr>, children: &[Hash]) -> Hash {
    let mut inputs = [Fr::from(0u64); MAX_INPUTS];
    for (slot, child) in inputs.iter_mut().zip(children) {
        match to_field(child) {
            Some(f) => *slot = f,
            None => return NOT_A_FIELD_ELEMENT,
        }
    }
    match perm.hash(&inputs[..children.len()]) {
        Ok(h) => from_field(h),
        // Only a count without parameters fails, which `MAX_ARITY` rules out.
        Err(_) => NOT_A_FIELD_ELEMENT,
    }
}

impl Hasher for Poseidon {
    const MAX_ARITY: usize = MAX_INPUTS;

    fn id(&self) -> &str {
        "poseidon-bn254-circom"
    }

    #[inline]
    fn check_leaf(&self, leaf: &Hash) -> std::result::Result<(), &'static str> {
        if canonical(leaf) {
            Ok(())
        } else {
            Err("not a canonical BN254 field element (at or above the modulus)")
        }
    }

    /// A parent costs tens of microseconds: a few dozen groups are worth a
    /// thread.
    #[inline]
    fn parallel_groups(&self) -> Option<usize> {
        Some(32)
    }

    fn hash_children(&self, children: &[Hash]) -> Hash {
        let k = children.len();
        if !(2..=MAX_INPUTS).contains(&k) {
            return NOT_A_FIELD_ELEMENT;
        }
        with_permutation(k, |perm| parent(perm, children))
    }

    fn hash_groups(&self, children: &[Hash], arity: usize, out: &mut [Hash]) {
        debug_assert_eq!(children.len(), out.len() * arity);
        if !(2..=MAX_INPUTS).contains(&arity) {
            out.fill(NOT_A_FIELD_ELEMENT);
            return;
        }
        with_permutation(arity, |perm| {
            for (group, p) in children.chunks_exact(arity).zip(out.iter_mut()) {
                *p = parent(perm, group);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: u64) -> Hash {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&n.to_be_bytes());
        b
    }

    #[test]
    fn field_round_trip_and_bounds() {
        let mut below = MODULUS_BE;
        below[31] -= 1;
        assert_eq!(from_field(to_field(&below).unwrap()), below);
        assert!(to_field(&MODULUS_BE).is_none());
        assert!(to_field(&[0xff; 32]).is_none());
        assert!(Poseidon.check_leaf(&below).is_ok());
        assert!(Poseidon.check_leaf(&MODULUS_BE).is_err());
        assert_eq!(from_field(to_field(&num(7)).unwrap()), num(7));
    }

    /// circomlib's `poseidon([1, 2])`, the value in its own tests.
    #[test]
    fn circomlib_poseidon_of_1_and_2() {
        let h = Poseidon.hash_children(&[num(1), num(2)]);
        let want = "115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a";
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
    }

    #[test]
    fn groups_equal_single_parents() {
        for arity in 2..=MAX_INPUTS {
            let children: Vec<Hash> = (0..arity as u64 * 3).map(|i| num(i * 31 + 5)).collect();
            let mut out = vec![[0u8; 32]; 3];
            Poseidon.hash_groups(&children, arity, &mut out);
            for (g, o) in children.chunks(arity).zip(&out) {
                assert_eq!(*o, Poseidon.hash_children(g));
            }
        }
    }

    #[test]
    fn a_damaged_child_gives_no_field_element() {
        assert_eq!(
            Poseidon.hash_children(&[num(1), [0xff; 32]]),
            NOT_A_FIELD_ELEMENT
        );
    }
}
