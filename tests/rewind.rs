//! Rewind, finality and durable reads on a persistent tree, with the
//! default `Config`, against a plain model (the leaves, rebuilt from
//! scratch): random sequences of insert, insert_many, rewind, finalize,
//! checkpoint, snapshot, proof_at and reopen give equal roots and proofs
//! at every step; snapshots taken before a rewind keep their leaves; a
//! checkpoint that must rewrite chunks such a snapshot still reads waits
//! for it; damaged rewind and finality records are `Corruption`.

mod common;

use common::naive_root;
use proptest::prelude::*;
use ringtree::{Blake3, Config, Error, Hash, Snapshot, Tree};

type T = Tree<Blake3, 4, 32>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Insert,
    InsertMany(u16),
    Rewind(u16),
    Finalize(u16),
    Checkpoint,
    Snapshot,
    ProofAt(u16, u16),
    DurableView,
    DropSnapshots,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Insert),
        4 => (1u16..400).prop_map(Op::InsertMany),
        3 => (0u16..700).prop_map(Op::Rewind),
        1 => (0u16..500).prop_map(Op::Finalize),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Snapshot),
        2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::ProofAt(a, b)),
        1 => Just(Op::DurableView),
        1 => Just(Op::DropSnapshots),
        1 => Just(Op::Reopen),
    ]
}

fn fresh(next: &mut u64) -> Hash {
    *next += 1;
    *blake3::hash(&next.to_le_bytes()).as_bytes()
}

/// A snapshot's leaves, root and a proof of its last leaf, as the model has
/// them.
fn check_snapshot(snap: &Snapshot, leaves: &[Hash], what: &str) {
    assert_eq!(snap.size(), leaves.len() as u64, "{what}: size");
    let root = naive_root(4, leaves);
    assert_eq!(snap.root(), root, "{what}: root");
    if let Some(root) = root {
        let last = leaves.len() as u64 - 1;
        for i in [0, last / 2, last] {
            let p = snap.proof(i).unwrap();
            assert_eq!(p.leaf(), leaves[i as usize], "{what}: leaf {i}");
            p.verify_at(&Blake3, &root, last + 1).unwrap();
        }
    }
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let open = || T::open(Config::new(dir.path()));
        let mut tree = open().await.unwrap();
        let mut model: Vec<Hash> = Vec::new();
        let mut finalized = 0u64;
        let mut next = 0u64;
        let mut kept: Vec<(Snapshot, Vec<Hash>)> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            let what = format!("step {step} {op:?}");
            match *op {
                Op::Insert => {
                    let l = fresh(&mut next);
                    let ins = tree.insert(l).await.unwrap();
                    assert_eq!(ins.index, model.len() as u64, "{what}");
                    model.push(l);
                    assert_eq!(Some(ins.root), naive_root(4, &model), "{what}");
                }
                Op::InsertMany(k) => {
                    let batch: Vec<Hash> = (0..k).map(|_| fresh(&mut next)).collect();
                    let ins = tree.insert_many(&batch).await.unwrap();
                    assert_eq!(ins.index, model.len() as u64, "{what}");
                    model.extend_from_slice(&batch);
                }
                Op::Rewind(back) => {
                    let size = (model.len() as u64).saturating_sub(u64::from(back));
                    // Kept to check later that a rewind leaves it alone.
                    kept.push((tree.snapshot(), model.clone()));
                    match tree.rewind(size).await {
                        Ok(r) => {
                            assert!(size >= finalized, "{what}: rewound below finality");
                            model.truncate(size as usize);
                            assert_eq!(r.size, size, "{what}");
                            assert_eq!(r.root, naive_root(4, &model), "{what}");
                            r.durable.await.unwrap();
                        }
                        Err(Error::Finalized {
                            requested,
                            finalized: f,
                        }) => {
                            assert_eq!((requested, f), (size, finalized), "{what}");
                            assert!(size < finalized, "{what}");
                        }
                        Err(e) => panic!("{what}: {e}"),
                    }
                }
                Op::Finalize(back) => {
                    let size = (model.len() as u64).saturating_sub(u64::from(back));
                    tree.finalize(size).await.unwrap().await.unwrap();
                    finalized = finalized.max(size);
                    assert_eq!(tree.finalized(), finalized, "{what}");
                }
                Op::Checkpoint => match tree.checkpoint().await {
                    Ok(()) => {}
                    // Only while a snapshot from before a rewind is held.
                    Err(Error::CheckpointDeferred(_)) => {
                        assert!(!kept.is_empty(), "{what}: deferred with no old snapshot")
                    }
                    Err(e) => panic!("{what}: {e}"),
                },
                Op::Snapshot => kept.push((tree.snapshot(), model.clone())),
                Op::ProofAt(a, b) => {
                    if model.is_empty() {
                        continue;
                    }
                    let snap = tree.snapshot();
                    let size = 1 + u64::from(b) % model.len() as u64;
                    let index = u64::from(a) % size;
                    let root = naive_root(4, &model[..size as usize]).unwrap();
                    assert_eq!(snap.root_at(size).unwrap(), root, "{what}");
                    let p = snap.proof_at(index, size).unwrap();
                    assert_eq!(p.leaf(), model[index as usize], "{what}");
                    p.verify_at(&Blake3, &root, size).unwrap();
                    let up = snap.update_proof(&p).unwrap();
                    up.verify_at(&Blake3, &snap.root().unwrap(), snap.size())
                        .unwrap();
                }
                Op::DurableView => {
                    tree.flush().await.unwrap();
                    assert_eq!(tree.durable_size(), model.len() as u64, "{what}");
                    assert_eq!(tree.durable_root(), naive_root(4, &model), "{what}");
                    check_snapshot(&tree.durable_snapshot(), &model, &what);
                }
                Op::DropSnapshots => {
                    for (snap, leaves) in kept.drain(..) {
                        check_snapshot(&snap, &leaves, &what);
                    }
                    // Nothing holds the cut-off chunks now.
                    tree.checkpoint().await.unwrap();
                }
                Op::Reopen => {
                    tree.close().await.unwrap();
                    tree = open().await.unwrap();
                    assert_eq!(tree.finalized(), finalized, "{what}");
                }
            }
            assert_eq!(tree.size(), model.len() as u64, "{what}");
            assert_eq!(tree.root(), naive_root(4, &model), "{what}");
        }
        for (snap, leaves) in kept.drain(..) {
            check_snapshot(&snap, &leaves, "kept to the end");
        }
        // Used after reopen: a checkpoint, proofs, another reopen.
        tree.checkpoint().await.unwrap();
        tree.close().await.unwrap();
        let tree = open().await.unwrap();
        assert_eq!(tree.finalized(), finalized);
        check_snapshot(&tree.snapshot(), &model, "reopened");
        check_snapshot(&tree.durable_snapshot(), &model, "reopened, durable");
        let l = fresh(&mut next);
        tree.insert_durable(l).await.unwrap();
        model.push(l);
        tree.checkpoint().await.unwrap();
        tree.close().await.unwrap();
        let tree = open().await.unwrap();
        check_snapshot(&tree.snapshot(), &model, "reopened twice");
        tree.close().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn rewinds_and_finality_follow_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

/// A rewind deep below a checkpoint whose levels are served from their
/// shard files, then a checkpoint that writes over the chunks the rewind
/// cut off, with the reopen in between and after.
#[test]
fn a_rewind_below_a_mapped_checkpoint_survives_checkpoints_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let open = || T::open(Config::new(dir.path()));
        let tree = open().await.unwrap();
        let mut next = 0;
        let mut model: Vec<Hash> = (0..20_000).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&model).await.unwrap();
        tree.checkpoint().await.unwrap();
        let before = tree.snapshot();
        let r = tree.rewind(5_000).await.unwrap();
        r.durable.await.unwrap();
        model.truncate(5_000);
        let more: Vec<Hash> = (0..9_000).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&more).await.unwrap();
        model.extend_from_slice(&more);
        // The snapshot from before the rewind still maps the chunks.
        assert!(matches!(
            tree.checkpoint().await,
            Err(Error::CheckpointDeferred(_))
        ));
        assert_eq!(before.size(), 20_000);
        let p = before.proof(19_999).unwrap();
        p.verify_at(&Blake3, &before.root().unwrap(), 20_000)
            .unwrap();
        drop((before, p));
        tree.checkpoint().await.unwrap();
        check_snapshot(&tree.snapshot(), &model, "after the checkpoint");
        tree.close().await.unwrap();
        let tree = open().await.unwrap();
        check_snapshot(&tree.snapshot(), &model, "reopened");
        tree.close().await.unwrap();
    });
}

/// Crash before the second checkpoint after a rewind finishes: the first
/// (the tree the rewind left) is the one loaded.
#[test]
fn a_rewind_replays_over_the_checkpoint_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let open = || T::open(Config::new(dir.path()));
        let tree = open().await.unwrap();
        let mut next = 0;
        let mut model: Vec<Hash> = (0..3_000).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&model).await.unwrap();
        tree.checkpoint().await.unwrap();
        tree.rewind(100).await.unwrap().durable.await.unwrap();
        model.truncate(100);
        let more: Vec<Hash> = (0..50).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&more)
            .await
            .unwrap()
            .durable
            .await
            .unwrap();
        model.extend_from_slice(&more);
        // No checkpoint: dropped, the log holds the rewind.
        drop(tree);
        let tree = open().await.unwrap();
        check_snapshot(&tree.snapshot(), &model, "reopened over the old checkpoint");
        tree.checkpoint().await.unwrap();
        tree.close().await.unwrap();
        let tree = open().await.unwrap();
        check_snapshot(&tree.snapshot(), &model, "reopened after the checkpoint");
        tree.close().await.unwrap();
    });
}

#[test]
fn bad_rewinds_and_finalizes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let tree = T::open(Config::new(dir.path())).await.unwrap();
        tree.insert_many(&[[1; 32], [2; 32], [3; 32]])
            .await
            .unwrap();
        let root = tree.root();
        assert!(matches!(
            tree.rewind(4).await,
            Err(Error::BeyondSize {
                requested: 4,
                size: 3
            })
        ));
        assert!(matches!(
            tree.finalize(4).await,
            Err(Error::BeyondSize {
                requested: 4,
                size: 3
            })
        ));
        tree.finalize(2).await.unwrap().await.unwrap();
        assert!(matches!(
            tree.rewind(1).await,
            Err(Error::Finalized {
                requested: 1,
                finalized: 2
            })
        ));
        // A lower finality changes nothing.
        tree.finalize(1).await.unwrap().await.unwrap();
        assert_eq!(tree.finalized(), 2);
        assert_eq!((tree.size(), tree.root()), (3, root));
        let r = tree.rewind(2).await.unwrap();
        assert_eq!(r.size, 2);
        tree.close().await.unwrap();
        assert!(matches!(tree.rewind(2).await, Err(Error::Closed)));
        assert!(matches!(tree.finalize(2).await, Err(Error::Closed)));
    });
}
