//! History from a snapshot: `root_at`, `proof_at` and `update_proof`
//! against trees rebuilt from the prefix, for several arities.

use proptest::prelude::*;
use ringtree::{Blake3, Error, Hash, LeanImt, Proof};

fn leaf(i: u64) -> Hash {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn check<const N: usize>(size: u64, older: &[u64]) {
    let leaves: Vec<Hash> = (0..size).map(leaf).collect();
    let mut tree = LeanImt::<Blake3, N, 32>::new(Blake3);
    tree.insert_many(&leaves).unwrap();
    let snap = tree.snapshot();
    for &old in older {
        let old = old.clamp(1, size);
        let mut prefix = LeanImt::<Blake3, N, 32>::new(Blake3);
        let root = prefix.insert_many(&leaves[..old as usize]).unwrap();
        assert_eq!(
            snap.root_at(old).unwrap(),
            root,
            "N {N} size {size} root_at {old}"
        );
        let then = prefix.snapshot();
        for index in [0, old / 2, old - 1] {
            let p = snap.proof_at(index, old).unwrap();
            assert_eq!(
                p,
                then.proof(index).unwrap(),
                "N {N} proof_at({index}, {old})"
            );
            p.verify_at(&Blake3, &root, old).unwrap();
            let up = snap.update_proof(&p).unwrap();
            assert_eq!(up, snap.proof(index).unwrap());
            up.verify_at(&Blake3, &tree.root().unwrap(), size).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn history_equals_the_tree_of_the_prefix(size in 1u64..3000, older in prop::collection::vec(1u64..3000, 1..6)) {
        check::<2>(size, &older);
        check::<3>(size, &older);
        check::<4>(size, &older);
        check::<16>(size, &older);
    }
}

#[test]
fn every_older_size_of_small_trees() {
    for size in 1..=70u64 {
        let all: Vec<u64> = (1..=size).collect();
        check::<2>(size, &all);
        check::<5>(size, &all);
    }
}

#[test]
fn bad_requests_are_refused() {
    let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    tree.insert_many(&(0..50).map(leaf).collect::<Vec<_>>())
        .unwrap();
    let snap = tree.snapshot();
    assert!(matches!(
        snap.root_at(0),
        Err(Error::InvalidOldSize {
            old_size: 0,
            size: 50
        })
    ));
    assert!(matches!(
        snap.root_at(51),
        Err(Error::InvalidOldSize { .. })
    ));
    assert!(matches!(
        snap.proof_at(10, 10),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        snap.proof_at(0, 51),
        Err(Error::InvalidOldSize { .. })
    ));
    // A proof of another tree, a tampered one, another arity, a larger size.
    let good = snap.proof_at(7, 20).unwrap();
    let mut other = LeanImt::<Blake3, 4, 32>::new(Blake3);
    other
        .insert_many(&(100..150).map(leaf).collect::<Vec<_>>())
        .unwrap();
    let foreign = other.snapshot().proof_at(7, 20).unwrap();
    assert!(matches!(
        snap.update_proof(&foreign),
        Err(Error::InvalidProof(_))
    ));
    let mut bytes = good.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = Proof::from_bytes(&bytes).unwrap();
    assert!(matches!(
        snap.update_proof(&tampered),
        Err(Error::InvalidProof(_))
    ));
    let mut binary = LeanImt::<Blake3, 2, 32>::new(Blake3);
    binary
        .insert_many(&(0..50).map(leaf).collect::<Vec<_>>())
        .unwrap();
    let two = binary.snapshot().proof(3).unwrap();
    assert!(matches!(
        snap.update_proof(&two),
        Err(Error::InvalidProof(_))
    ));
    tree.insert(leaf(50)).unwrap();
    let newer = tree.snapshot().proof(3).unwrap();
    assert!(matches!(
        snap.update_proof(&newer),
        Err(Error::InvalidOldSize { .. })
    ));
    assert!(snap.update_proof(&good).is_ok());
}
