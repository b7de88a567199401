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

/// A reorganisation that flips back (the chain returns to the deposits it
/// had): a power loss at every step of the checkpoint between the two
/// leaves, after the reopen and the flip back, a checkpoint whose every
/// chunk and proof holds, and the same tree after another reopen. A chunk
/// written over while its stale checksum stayed in the sums file would be
/// taken as already written here.
#[test]
fn a_flip_flop_reorganisation_survives_a_crash_at_every_step_of_a_checkpoint() {
    use ringtree::io::SimStorage;
    let a: Vec<Hash> = (0..400u64).map(common::leaf).collect();
    let b: Vec<Hash> = (0..390u64).map(|i| common::leaf(1_000_000 + i)).collect();
    let mut b_tree = a[..10].to_vec();
    b_tree.extend_from_slice(&b);
    let mut crashed = 0;
    for n in 0.. {
        let sim = SimStorage::new(n);
        let config = |s: &SimStorage| common::sim_config(s, "/flip");
        let tree = T::open_blocking(config(&sim)).unwrap();
        futures::executor::block_on(async {
            insert_all(&tree, &a).await;
            tree.checkpoint().await.unwrap();
            tree.rewind(10).await.unwrap().durable.await.unwrap();
            insert_all(&tree, &b).await;
        });
        sim.crash_at_op(n);
        let done = futures::executor::block_on(tree.checkpoint()).is_ok();
        if done {
            // The crash point is past the checkpoint: every step was tried.
            break;
        }
        drop(tree);
        crashed += 1;
        sim.crash();
        sim.clear_faults();
        let storage = sim.restart();
        let tree = T::open_blocking(config(&storage)).unwrap();
        check_snapshot(&tree.snapshot(), &b_tree, &format!("crash at op {n}"));
        futures::executor::block_on(async {
            tree.rewind(10).await.unwrap().durable.await.unwrap();
            insert_all(&tree, &a[10..]).await;
            tree.checkpoint().await.unwrap();
            tree.close().await.unwrap();
        });
        let tree = T::open_blocking(config(&storage)).unwrap();
        let snap = tree.snapshot();
        check_snapshot(&snap, &a, &format!("crash at op {n}, flipped back"));
        for i in (0..400).step_by(128) {
            let p = snap
                .proof(i + 1)
                .unwrap_or_else(|e| panic!("crash at op {n}: proof of {}: {e}", i + 1));
            assert_eq!(p.leaf(), a[i as usize + 1]);
        }
        futures::executor::block_on(tree.close()).unwrap();
        assert!(n < 400, "the checkpoint never finished");
    }
    assert!(crashed > 5);
}

/// Inserts `leaves` in batches the tree takes, and waits until they are
/// durable.
async fn insert_all(tree: &T, leaves: &[Hash]) {
    let mut last = None;
    for batch in leaves.chunks(tree.max_batch() as usize) {
        last = Some(tree.insert_many(batch).await.unwrap().durable);
    }
    if let Some(d) = last {
        d.await.unwrap();
    }
}

/// Flips each byte of the first `magic` record's frame (header and
/// payload) in the log, one at a time, in a copy of `src`; every open
/// must be `Corruption`, never a tree with the record's effect undone.
fn damage_each_byte(src: &std::path::Path, magic: &[u8; 8], len: usize, what: &str) {
    let seg = src.join("wal").join("00000000000000000000.wal");
    let bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == magic)
        .unwrap_or_else(|| panic!("{what}: no {magic:?} record in the log"));
    // The frame header is the 8 bytes before the payload; every third
    // byte (each field is hit) and the last.
    for off in (at - 8..at + len).step_by(3).chain([at + len - 1]) {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(src, copy.path());
        let seg = copy.path().join("wal").join("00000000000000000000.wal");
        let mut b = std::fs::read(&seg).unwrap();
        b[off] ^= 0x40;
        std::fs::write(&seg, &b).unwrap();
        match T::open_blocking(Config::new(copy.path())) {
            Err(Error::Corruption { .. }) => {}
            Err(e) => panic!(
                "{what}: byte {} of the record: {e}",
                off as isize - at as isize
            ),
            Ok(t) => panic!(
                "{what}: byte {} of the record damaged, opened with {} leaves",
                off as isize - at as isize,
                t.size()
            ),
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A damaged rewind or finality record is `Corruption`: with later records
/// after it, and as the last record before a clean close.
#[test]
fn a_damaged_rewind_or_finality_record_is_corruption() {
    for last in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let tree = T::open(Config::new(dir.path())).await.unwrap();
            let mut next = 0;
            let leaves: Vec<Hash> = (0..100).map(|_| fresh(&mut next)).collect();
            tree.insert_many(&leaves).await.unwrap();
            tree.finalize(20).await.unwrap().await.unwrap();
            tree.rewind(50).await.unwrap().durable.await.unwrap();
            if !last {
                tree.insert_durable(fresh(&mut next)).await.unwrap();
            }
            tree.close().await.unwrap();
        });
        let what = if last {
            "last record"
        } else {
            "records after it"
        };
        damage_each_byte(dir.path(), b"RTREWIND", 56, &format!("rewind, {what}"));
        damage_each_byte(dir.path(), b"RTFINAL1", 24, &format!("finality, {what}"));
        // Undamaged, it opens with the rewind applied.
        let t = T::open_blocking(Config::new(dir.path())).unwrap();
        assert_eq!(t.size(), if last { 50 } else { 51 });
        assert_eq!(t.finalized(), 20);
        futures::executor::block_on(t.close()).unwrap();
    }
}

/// Salvage replays rewinds: an undamaged tree with rewinds past its
/// checkpoint salvages to itself, nothing reported lost.
#[test]
fn salvage_follows_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0;
    let mut model: Vec<Hash> = (0..2_000).map(|_| fresh(&mut next)).collect();
    rt().block_on(async {
        let tree = T::open(Config::new(dir.path().join("a"))).await.unwrap();
        tree.insert_many(&model).await.unwrap();
        tree.checkpoint().await.unwrap();
        tree.rewind(700).await.unwrap();
        model.truncate(700);
        let more: Vec<Hash> = (0..30).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&more).await.unwrap();
        model.extend_from_slice(&more);
        tree.finalize(100).await.unwrap();
        tree.close().await.unwrap();
    });
    let (t, report) = T::salvage(
        &Config::new(dir.path().join("a")),
        Config::new(dir.path().join("b")),
    )
    .unwrap();
    assert_eq!((report.kept, report.known), (730, 730));
    assert!(report.stopped_by.is_none());
    check_snapshot(&t.snapshot(), &model, "salvaged");
    futures::executor::block_on(t.close()).unwrap();
}

/// A closed tree keeps nothing that holds back the next owner's
/// checkpoints, even while its handle lives.
#[test]
fn a_closed_tree_does_not_defer_the_next_owners_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let open = || T::open(Config::new(dir.path()));
        let old = open().await.unwrap();
        let mut next = 0;
        let leaves: Vec<Hash> = (0..5_000).map(|_| fresh(&mut next)).collect();
        old.insert_many(&leaves).await.unwrap();
        old.checkpoint().await.unwrap();
        // Not awaited: the tree before it is kept for durable reads.
        let _r = old.rewind(10).await.unwrap();
        old.close().await.unwrap();
        let tree = open().await.unwrap();
        let more: Vec<Hash> = (0..4_000).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&more).await.unwrap();
        tree.checkpoint().await.unwrap();
        let mut model = leaves[..10].to_vec();
        model.extend_from_slice(&more);
        check_snapshot(&tree.snapshot(), &model, "next owner");
        tree.close().await.unwrap();
        drop(old);
    });
}

/// A closed tree's handle that lives on (a reopen that shadows it) holds
/// back no checkpoint of the next owner, even one that writes over chunks
/// it maps; reads through it then give the right leaf or `Corruption`,
/// never another leaf.
#[test]
fn a_live_closed_handle_neither_defers_nor_misreads() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let open = || T::open(Config::new(dir.path()));
        let old = open().await.unwrap();
        let mut next = 0;
        let leaves: Vec<Hash> = (0..20_000).map(|_| fresh(&mut next)).collect();
        old.insert_many(&leaves).await.unwrap();
        old.checkpoint().await.unwrap();
        old.close().await.unwrap();
        let tree = open().await.unwrap();
        tree.rewind(100).await.unwrap().durable.await.unwrap();
        let more: Vec<Hash> = (0..20_000).map(|_| fresh(&mut next)).collect();
        tree.insert_many(&more).await.unwrap();
        tree.checkpoint().await.unwrap();
        let snap = old.snapshot();
        for i in (0..20_000).step_by(97) {
            match snap.leaf(i) {
                Ok(l) => assert_eq!(l, leaves[i as usize], "leaf {i} of the closed tree"),
                Err(Error::Corruption { .. }) => {}
                Err(e) => panic!("leaf {i}: {e}"),
            }
        }
        let mut model = leaves[..100].to_vec();
        model.extend_from_slice(&more);
        check_snapshot(&tree.snapshot(), &model, "next owner");
        tree.close().await.unwrap();
    });
}

/// The background check of a loaded checkpoint skips a damaged chunk of a
/// level that a replayed rewind removed: the tree takes inserts.
#[test]
fn a_damaged_chunk_a_rewind_cut_off_does_not_stop_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0;
    let leaves: Vec<Hash> = (0..1_000_000).map(|_| fresh(&mut next)).collect();
    rt().block_on(async {
        let tree = T::open(Config::new(dir.path())).await.unwrap();
        for b in leaves.chunks(tree.max_batch() as usize) {
            tree.insert_many(b).await.unwrap();
        }
        tree.checkpoint().await.unwrap();
        tree.rewind(10).await.unwrap().durable.await.unwrap();
        tree.close().await.unwrap();
    });
    let shard = dir.path().join("shards").join("level-03.shard");
    let mut b = std::fs::read(&shard).unwrap();
    b[4096 + 100] ^= 0x40;
    std::fs::write(&shard, &b).unwrap();
    rt().block_on(async {
        let tree = T::open(Config::new(dir.path())).await.unwrap();
        // Runs after the background check on the tree's worker.
        tree.checkpoint().await.unwrap();
        let l = fresh(&mut next);
        tree.insert_durable(l).await.unwrap();
        let mut model = leaves[..10].to_vec();
        model.push(l);
        check_snapshot(&tree.snapshot(), &model, "after the check");
        tree.close().await.unwrap();
    });
}
