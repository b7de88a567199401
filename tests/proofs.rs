//! Inclusion and consistency proofs: they verify, and every tampering is
//! rejected, including proofs whose shape differs from what
//! `(leaf_index, tree_size)` dictates.

mod common;

use common::{Rng, leaves, naive_root};
use ringtree::{Blake3, ConsistencyProof, Error, LeanImt, Proof, Snapshot};

fn tree<const N: usize>(size: u64) -> (LeanImt<Blake3, N, 32>, Snapshot) {
    let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
    if size > 0 {
        t.insert_many(&leaves(0..size)).unwrap();
    }
    let s = t.snapshot();
    (t, s)
}

fn sizes() -> Vec<u64> {
    let mut v: Vec<u64> = (1..=70).collect();
    v.extend([
        127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 4097, 20_000,
    ]);
    v
}

fn inclusion_for<const N: usize>() {
    let mut rng = Rng(N as u64);
    for size in sizes() {
        let (_, snap) = tree::<N>(size);
        let root = snap.root().unwrap();
        let mut idx: Vec<u64> = vec![0, size - 1, size / 2];
        idx.extend((0..8).map(|_| rng.below(size)));
        for i in idx {
            let p = snap.proof(i).unwrap();
            assert_eq!(p.leaf(), common::leaf(i));
            p.verify_at(&Blake3, &root, size).unwrap();
            let again = Proof::from_bytes(&p.to_bytes()).unwrap();
            assert_eq!(again, p);
            again.verify_at(&Blake3, &root, size).unwrap();
        }
        assert!(matches!(
            snap.proof(size),
            Err(Error::IndexOutOfRange { .. })
        ));
    }
}

#[test]
fn inclusion_proofs_verify() {
    inclusion_for::<2>();
    inclusion_for::<3>();
    inclusion_for::<4>();
    inclusion_for::<5>();
    inclusion_for::<8>();
    inclusion_for::<16>();
    inclusion_for::<20>();
    inclusion_for::<33>();
}

/// Flipping any bit pattern in any byte of an encoded proof gets it rejected,
/// by the decoder or by the verifier.
#[test]
fn every_single_byte_mutation_is_rejected() {
    for (size, index) in [
        (1000u64, 0u64),
        (1000, 999),
        (1000, 517),
        (5, 4),
        (2, 1),
        (65, 64),
    ] {
        let (_, snap) = tree::<4>(size);
        let root = snap.root().unwrap();
        let bytes = snap.proof(index).unwrap().to_bytes();
        for pos in 0..bytes.len() {
            for xor in [0x01u8, 0x80, 0xFF] {
                let mut m = bytes.clone();
                m[pos] ^= xor;
                // The verifier knows the tree's arity, root and size.
                let ok = Proof::from_bytes(&m)
                    .and_then(|p| p.verify_at(&Blake3, &root, size).map(|()| p.arity() == 4))
                    .unwrap_or(false);
                assert!(
                    !ok,
                    "mutation at byte {pos} (xor {xor:#x}) accepted for size {size} index {index}"
                );
            }
        }
        // Truncated or extended encodings are rejected by the decoder.
        assert!(Proof::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 32]);
        assert!(Proof::from_bytes(&longer).is_err());
    }
}

/// Rewrites an encoding's sibling list (count and body) to `siblings`.
fn with_siblings(bytes: &[u8], siblings: &[[u8; 32]]) -> Vec<u8> {
    let mut out = bytes[..57].to_vec();
    out.extend_from_slice(&(siblings.len() as u32).to_le_bytes());
    out.extend_from_slice(siblings.as_flattened());
    out
}

#[test]
fn proofs_with_another_shape_are_rejected() {
    let (_, snap) = tree::<4>(1000);
    let root = snap.root().unwrap();
    let p = snap.proof(600).unwrap();
    let bytes = p.to_bytes();
    let sibs = p.siblings().to_vec();
    // One sibling fewer, one more: the decoder knows the shape.
    assert!(matches!(
        Proof::from_bytes(&with_siblings(&bytes, &sibs[1..])),
        Err(Error::Decode { .. })
    ));
    let mut more = sibs.clone();
    more.push([7; 32]);
    assert!(matches!(
        Proof::from_bytes(&with_siblings(&bytes, &more)),
        Err(Error::Decode { .. })
    ));
    // A leaf index at or past the size.
    let mut m = bytes.clone();
    m[9..17].copy_from_slice(&1000u64.to_le_bytes());
    assert!(Proof::from_bytes(&m).is_err());
    // A claimed size with the same sibling count but another shape: the
    // encoding decodes, the trusted size rejects it.
    let mut m = bytes.clone();
    m[17..25].copy_from_slice(&1001u64.to_le_bytes());
    let forged = Proof::from_bytes(&m).unwrap();
    assert!(forged.verify_at(&Blake3, &root, 1000).is_err());
}

/// An internal node posing as a leaf of a shallower tree: its path up to the
/// real root is a valid path of the tree with `level_len(1)` leaves, which is
/// why the size must be trusted. `verify_at` with the real size rejects it.
#[test]
fn internal_node_posing_as_leaf_is_rejected() {
    let size = 64u64;
    let (_, snap) = tree::<4>(size);
    let root = snap.root().unwrap();
    // Level 1 has 16 nodes; forge "node (1, 5) is leaf 5 of a 16-leaf tree".
    let fake_leaf = snap.node(1, 5).unwrap();
    let mut upper = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let level1: Vec<[u8; 32]> = (0..16).map(|i| snap.node(1, i).unwrap()).collect();
    assert_eq!(upper.insert_many(&level1).unwrap(), root);
    let forged = upper.snapshot().proof(5).unwrap();
    assert_eq!(forged.leaf(), fake_leaf);
    // The forged proof's own claims are self-consistent...
    forged.verify(&Blake3, &root).unwrap();
    // ...and the verifier holding the trusted size rejects it.
    assert!(matches!(
        forged.verify_at(&Blake3, &root, size),
        Err(Error::InvalidProof(_))
    ));
    // Re-labelled with the real size, the shape no longer fits.
    let mut m = forged.to_bytes();
    m[17..25].copy_from_slice(&size.to_le_bytes());
    assert!(
        Proof::from_bytes(&m)
            .and_then(|p| p.verify_at(&Blake3, &root, size))
            .is_err()
    );
}

#[test]
fn wrong_root_and_wrong_leaf_are_rejected() {
    let (_, snap) = tree::<3>(500);
    let root = snap.root().unwrap();
    let p = snap.proof(77).unwrap();
    let mut bad_root = root;
    bad_root[0] ^= 1;
    assert!(p.verify(&Blake3, &bad_root).is_err());
    let other = snap.proof(78).unwrap();
    // A valid proof for another index does not prove this index's leaf.
    assert_ne!(other.leaf(), p.leaf());
    other.verify_at(&Blake3, &root, 500).unwrap();
}

fn consistency_for<const N: usize>(seed: u64) {
    let mut rng = Rng(seed);
    let all = leaves(0..3000);
    for _ in 0..60 {
        let new_size = 1 + rng.below(3000);
        let old_size = 1 + rng.below(new_size);
        let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
        let old_root = t.insert_many(&all[..old_size as usize]).unwrap();
        let old_snap = t.snapshot();
        if new_size > old_size {
            t.insert_many(&all[old_size as usize..new_size as usize])
                .unwrap();
        }
        let new_root = t.root().unwrap();
        let c = t.snapshot().consistency_proof(old_size).unwrap();
        c.verify_at(&Blake3, &old_root, old_size, &new_root, new_size)
            .unwrap();
        let c2 = ConsistencyProof::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(c2, c);
        // Wrong roots are rejected.
        let mut bad = old_root;
        bad[31] ^= 0x40;
        assert!(c.verify(&Blake3, &bad, &new_root).is_err());
        assert!(c.verify(&Blake3, &old_root, &bad).is_err());
        // A root of another prefix is rejected.
        if old_size > 1 {
            let shorter = naive_root(N, &all[..old_size as usize - 1]).unwrap();
            assert!(c.verify(&Blake3, &shorter, &new_root).is_err());
        }
        // The old snapshot is unchanged by the later inserts.
        assert_eq!(old_snap.root(), Some(old_root));
        assert_eq!(old_snap.size(), old_size);
        // Every single-byte mutation is rejected.
        let bytes = c.to_bytes();
        for pos in 0..bytes.len() {
            let mut m = bytes.clone();
            m[pos] ^= 0x10;
            let ok = ConsistencyProof::from_bytes(&m)
                .and_then(|p| {
                    p.verify_at(&Blake3, &old_root, old_size, &new_root, new_size)
                        .map(|()| p.arity() == N)
                })
                .unwrap_or(false);
            assert!(
                !ok,
                "N={N} old={old_size} new={new_size}: mutation at {pos} accepted"
            );
        }
    }
    let (_, snap) = tree::<N>(10);
    assert!(matches!(
        snap.consistency_proof(0),
        Err(Error::InvalidOldSize { .. })
    ));
    assert!(matches!(
        snap.consistency_proof(11),
        Err(Error::InvalidOldSize { .. })
    ));
}

#[test]
fn consistency_proofs_verify_and_reject_tampering() {
    consistency_for::<2>(12);
    consistency_for::<3>(13);
    consistency_for::<4>(14);
    consistency_for::<5>(15);
    consistency_for::<8>(18);
    consistency_for::<16>(116);
    consistency_for::<17>(117);
    consistency_for::<40>(140);
}

#[test]
fn decoder_rejects_garbage_without_panicking() {
    let mut rng = Rng(99);
    for len in 0..400 {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        assert!(Proof::from_bytes(&bytes).is_err());
        assert!(ConsistencyProof::from_bytes(&bytes).is_err());
    }
    // A valid header with a huge sibling count does not allocate or panic.
    let (_, snap) = tree::<4>(10);
    let mut b = snap.proof(3).unwrap().to_bytes();
    b[57..61].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Proof::from_bytes(&b), Err(Error::Decode { .. })));
}

#[cfg(feature = "serde")]
#[test]
fn serde_round_trip() {
    let (_, snap) = tree::<4>(100);
    let p = snap.proof(42).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let back: Proof = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let c = snap.consistency_proof(30).unwrap();
    let back: ConsistencyProof = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert!(serde_json::from_str::<Proof>("\"00ff\"").is_err());
}
