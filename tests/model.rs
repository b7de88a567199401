//! Property test against a trivially correct model: any sequence of inserts,
//! batch inserts and snapshots gives the roots of a plain recomputation from
//! all leaves, and snapshots keep their contents while the tree grows.

mod common;

use common::naive_root;
use proptest::prelude::*;
use ringtree::{Blake3, Hash, LeanImt, Snapshot};

#[derive(Debug, Clone)]
enum Op {
    Insert(u8),
    InsertMany(Vec<u8>),
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Insert),
        3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Op::InsertMany),
        1 => Just(Op::Snapshot),
    ]
}

fn leaf_of(seed: u8, i: usize) -> Hash {
    let mut h = *blake3::hash(&[seed]).as_bytes();
    h[..8].copy_from_slice(&(i as u64).to_le_bytes());
    h
}

fn run<const N: usize>(ops: &[Op]) {
    let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
    let mut model: Vec<Hash> = Vec::new();
    let mut snaps: Vec<(Snapshot, usize, Option<Hash>)> = Vec::new();
    for op in ops {
        match op {
            Op::Insert(s) => {
                let l = leaf_of(*s, model.len());
                model.push(l);
                assert_eq!(Some(t.insert(l).unwrap()), naive_root(N, &model));
            }
            Op::InsertMany(seeds) => {
                let batch: Vec<Hash> = seeds
                    .iter()
                    .enumerate()
                    .map(|(i, s)| leaf_of(*s, model.len() + i))
                    .collect();
                let r = t.insert_many(&batch);
                if batch.is_empty() {
                    assert!(r.is_err());
                } else {
                    model.extend_from_slice(&batch);
                    assert_eq!(Some(r.unwrap()), naive_root(N, &model));
                }
            }
            Op::Snapshot => snaps.push((t.snapshot(), model.len(), t.root())),
        }
        assert_eq!(t.size(), model.len() as u64);
        assert_eq!(t.root(), naive_root(N, &model));
    }
    // Snapshots still show the tree as it was, leaf by leaf, and prove it.
    for (snap, size, root) in snaps {
        assert_eq!(snap.size(), size as u64);
        assert_eq!(snap.root(), root);
        for (i, l) in model[..size].iter().enumerate() {
            assert_eq!(snap.leaf(i as u64).unwrap(), *l);
        }
        if let Some(root) = root {
            let last = size as u64 - 1;
            snap.proof(last)
                .unwrap()
                .verify_at(&Blake3, &root, size as u64)
                .unwrap();
        }
    }
    // A clone is an independent tree.
    let mut c = t.clone();
    c.insert([9; 32]).unwrap();
    assert_eq!(t.root(), naive_root(N, &model));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn arity_2_matches_model(ops in prop::collection::vec(op(), 0..60)) { run::<2>(&ops); }
    #[test]
    fn arity_3_matches_model(ops in prop::collection::vec(op(), 0..60)) { run::<3>(&ops); }
    #[test]
    fn arity_4_matches_model(ops in prop::collection::vec(op(), 0..60)) { run::<4>(&ops); }
    #[test]
    fn arity_7_matches_model(ops in prop::collection::vec(op(), 0..60)) { run::<7>(&ops); }
    #[test]
    fn arity_16_matches_model(ops in prop::collection::vec(op(), 0..60)) { run::<16>(&ops); }
}
