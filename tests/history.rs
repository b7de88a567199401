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

/// One step of a rewind sequence on a `LeanImt`.
#[derive(Clone, Debug)]
enum Step {
    Insert(u16),
    Rewind(u16),
}

/// Random inserts and rewinds on a `LeanImt`, against a tree rebuilt from
/// the leaves each step should leave: roots, proofs and `prefix` equal;
/// snapshots taken before a rewind keep their leaves, root and proofs.
fn rewinds<const N: usize>(steps: &[Step]) {
    let mut tree = LeanImt::<Blake3, N, 32>::new(Blake3);
    let mut model: Vec<Hash> = Vec::new();
    let mut next = 0u64;
    let mut kept: Vec<(ringtree::Snapshot, Vec<Hash>)> = Vec::new();
    for step in steps {
        match *step {
            Step::Insert(k) => {
                let batch: Vec<Hash> = (0..u64::from(k) + 1)
                    .map(|_| {
                        next += 1;
                        leaf(next)
                    })
                    .collect();
                tree.insert_many(&batch).unwrap();
                model.extend_from_slice(&batch);
            }
            Step::Rewind(back) => {
                kept.push((tree.snapshot(), model.clone()));
                let size = (model.len() as u64).saturating_sub(u64::from(back));
                let root = tree.rewind(size).unwrap();
                model.truncate(size as usize);
                let mut rebuilt = LeanImt::<Blake3, N, 32>::new(Blake3);
                let want = if model.is_empty() {
                    None
                } else {
                    Some(rebuilt.insert_many(&model).unwrap())
                };
                assert_eq!(root, want, "N {N} rewind to {size}");
            }
        }
        assert_eq!(tree.size(), model.len() as u64);
        if let Some(root) = tree.root() {
            let snap = tree.snapshot();
            for index in [0, model.len() as u64 / 2, model.len() as u64 - 1] {
                let p = snap.proof(index).unwrap();
                assert_eq!(p.leaf(), model[index as usize]);
                p.verify_at(&Blake3, &root, model.len() as u64).unwrap();
            }
            let half = model.len() as u64 / 2;
            let prefix = snap.prefix(half).unwrap();
            assert_eq!(prefix.size(), half);
            if half > 0 {
                assert_eq!(prefix.root(), Some(snap.root_at(half).unwrap()));
                prefix
                    .proof(half - 1)
                    .unwrap()
                    .verify_at(&Blake3, &prefix.root().unwrap(), half)
                    .unwrap();
            }
        }
    }
    for (snap, leaves) in kept {
        assert_eq!(snap.size(), leaves.len() as u64);
        if leaves.is_empty() {
            continue;
        }
        let mut rebuilt = LeanImt::<Blake3, N, 32>::new(Blake3);
        let root = rebuilt.insert_many(&leaves).unwrap();
        assert_eq!(snap.root(), Some(root));
        let last = leaves.len() as u64 - 1;
        let p = snap.proof(last).unwrap();
        assert_eq!(p.leaf(), leaves[last as usize]);
        p.verify_at(&Blake3, &root, last + 1).unwrap();
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u16..400).prop_map(Step::Insert),
        1 => (0u16..600).prop_map(Step::Rewind),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn rewinds_equal_the_rebuilt_tree(steps in prop::collection::vec(step(), 1..40)) {
        rewinds::<2>(&steps);
        rewinds::<3>(&steps);
        rewinds::<4>(&steps);
        rewinds::<16>(&steps);
    }
}

#[test]
fn rewind_past_the_end_is_refused_and_changes_nothing() {
    let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let root = tree.insert_many(&[[1; 32], [2; 32]]).unwrap();
    assert!(matches!(
        tree.rewind(3),
        Err(Error::InvalidOldSize {
            old_size: 3,
            size: 2
        })
    ));
    assert_eq!((tree.size(), tree.root()), (2, Some(root)));
    assert_eq!(tree.rewind(0).unwrap(), None);
    assert_eq!(tree.insert([7; 32]).unwrap(), [7; 32]);
}
