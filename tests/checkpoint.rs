//! Checkpoints: reopen from shards + the log tail, recycling of the log,
//! named crash points on the simulated disk, damage reported by file, and
//! the checkpoint policies.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Rng, leaf, leaves};
use ringtree::io::{SimStorage, Storage};
use ringtree::{
    Blake3, CheckpointPolicy, Config, Error, FlushPolicy, Hash, IoBackend, Tiering, Tree,
};

type T4 = Tree<Blake3, 4, 32>;

fn sim_config(sim: &SimStorage, dir: &str) -> Config {
    common::sim_config(sim, dir).checkpoint(CheckpointPolicy::Manual)
}

fn model_root(leaves: &[Hash]) -> Option<Hash> {
    common::naive_root(4, leaves)
}

/// `leaves` in batches of 100, each awaited until durable.
async fn insert_awaited(t: &T4, leaves: &[Hash]) {
    for c in leaves.chunks(100) {
        insert_all(t, c).await.await.unwrap();
    }
}

/// `insert_many` in batches the log takes; returns the last future.
async fn insert_all(t: &T4, leaves: &[Hash]) -> ringtree::Durable {
    let mut last = None;
    for c in leaves.chunks(t.max_batch() as usize) {
        last = Some(t.insert_many(c).await.unwrap().durable);
    }
    last.unwrap()
}

/// A tree at `cfg` holding `all`: the first `at` leaves awaited, a
/// checkpoint, the rest awaited, closed.
fn checkpointed_at(cfg: &Config, all: &[Hash], at: usize) {
    let t = T4::open_blocking(cfg.clone()).unwrap();
    futures::executor::block_on(async {
        insert_awaited(&t, &all[..at]).await;
        t.checkpoint().await.unwrap();
        insert_awaited(&t, &all[at..]).await;
        t.close().await.unwrap();
    });
}

fn wal_segments(storage: &dyn Storage, dir: &str) -> Vec<String> {
    storage
        .list(&Path::new(dir).join("wal"))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect()
}

#[test]
fn checkpoint_reopen_and_recycle_on_disk() {
    for io in [IoBackend::Threaded, IoBackend::Uring] {
        if io == IoBackend::Uring && ringtree::io::UringStorage::new().is_err() {
            continue;
        }
        checkpoint_reopen_and_recycle(io);
    }
}

fn checkpoint_reopen_and_recycle(io: IoBackend) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let cfg = Config::new(&dir)
        .io(io)
        .segment_size(64 << 10)
        .checkpoint(CheckpointPolicy::Manual);
    let all = leaves(0..30_000);
    let t = T4::open_blocking(cfg.clone()).unwrap();
    let proofs_before = futures::executor::block_on(async {
        for c in all[..20_000].chunks(700) {
            insert_all(&t, c).await;
        }
        for l in &all[20_000..21_000] {
            t.insert(*l).await.unwrap();
        }
        t.flush().await.unwrap();
        let segs = std::fs::read_dir(dir.join("wal")).unwrap().count();
        let in_memory = t.snapshot();
        t.checkpoint().await.unwrap();
        // Levels are now served from the mapped shards: same proofs.
        let mapped = t.snapshot();
        for i in [0u64, 1, 127, 128, 777, 12_345, 20_999] {
            assert_eq!(
                mapped.proof(i).unwrap(),
                in_memory.proof(i).unwrap(),
                "proof {i} from the mapped shards"
            );
        }
        // Recycled segments are removed in the background: give it a moment.
        let mut after = segs;
        for _ in 0..500 {
            after = std::fs::read_dir(dir.join("wal")).unwrap().count();
            if after < segs {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            after < segs,
            "the log below the checkpoint is recycled: {segs} -> {after}"
        );
        // More after the checkpoint: they come back from the log tail. Their
        // segments are made from the ones the checkpoint freed.
        insert_all(&t, &all[21_000..25_000]).await.await.unwrap();
        assert!(
            t.metrics().wal_segments_reused >= 1,
            "freed segments are reused: {:?}",
            t.metrics()
        );
        let snap = t.snapshot();
        let ps: Vec<_> = [0u64, 777, 20_999, 24_999]
            .iter()
            .map(|&i| snap.proof(i).unwrap())
            .collect();
        t.close().await.unwrap();
        ps
    });
    let t = T4::open_blocking(cfg.clone().verify_on_open(true)).unwrap();
    assert_eq!(t.size(), 25_000);
    assert_eq!(t.root(), model_root(&all[..25_000]));
    let snap = t.snapshot();
    for p in &proofs_before {
        assert_eq!(
            &snap.proof(p.leaf_index()).unwrap(),
            p,
            "proofs from reopened levels equal proofs from memory"
        );
    }
    // A second, incremental checkpoint, then reopen again.
    futures::executor::block_on(async {
        insert_all(&t, &all[25_000..30_000]).await;
        t.checkpoint().await.unwrap();
        t.close().await.unwrap();
    });
    let t = T4::open_blocking(cfg).unwrap();
    assert_eq!(t.size(), 30_000);
    assert_eq!(t.root(), model_root(&all));
}

/// Named crash points: the checkpoint stops there, more inserts follow, the
/// disk crashes (torn, dropped or kept unsynced writes); reopening gives a
/// tree of a prefix of the inserts holding every acknowledged one.
#[test]
fn crash_points_keep_the_durable_prefix() {
    let points = [
        "shard-write",
        "shard-sync",
        "manifest-write",
        "manifest-rename",
        "wal-recycle",
    ];
    let mut rng = Rng(42);
    for (k, point) in points.iter().enumerate() {
        for crash in 0..3 {
            for earlier_checkpoint in [false, true] {
                let ctx = format!("{point} crash {crash} earlier {earlier_checkpoint}");
                let sim = SimStorage::new(100 + k as u64 * 10 + crash);
                let mut model: Vec<Hash> = Vec::new();
                let mut next = 0u64;
                let mut batch = |n: u64| {
                    let b = leaves(next..next + n);
                    next += n;
                    b
                };
                if earlier_checkpoint {
                    let t = T4::open_blocking(sim_config(&sim, "/c")).unwrap();
                    futures::executor::block_on(async {
                        let b = batch(3000);
                        insert_all(&t, &b).await.await.unwrap();
                        model.extend_from_slice(&b);
                        t.checkpoint().await.unwrap();
                        t.close().await.unwrap();
                    });
                }
                let t = T4::open_blocking(sim_config(&sim, "/c").failpoint(point)).unwrap();
                let acked = futures::executor::block_on(async {
                    for _ in 0..5 {
                        let b = batch(1 + rng.below(400));
                        insert_all(&t, &b).await.await.unwrap();
                        model.extend_from_slice(&b);
                    }
                    let r = t.checkpoint().await;
                    assert!(r.is_err(), "{ctx}: the failpoint stops the checkpoint");
                    for _ in 0..3 {
                        let b = batch(1 + rng.below(300));
                        insert_all(&t, &b).await.await.unwrap();
                        model.extend_from_slice(&b);
                    }
                    let acked = model.len();
                    // Some not awaited: may or may not survive.
                    let b = batch(50);
                    t.insert_many(&b).await.unwrap();
                    model.extend_from_slice(&b);
                    acked
                });
                match crash {
                    0 => sim.crash(),
                    1 => sim.crash_drop_all(),
                    _ => sim.crash_keep_all(),
                }
                drop(t);
                let t = T4::open_blocking(sim_config(&sim.restart(), "/c").verify_on_open(true))
                    .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                let size = t.size() as usize;
                assert!(size >= acked, "{ctx}: {size} < {acked} acknowledged");
                assert!(size <= model.len(), "{ctx}");
                assert_eq!(
                    t.root(),
                    model_root(&model[..size]),
                    "{ctx}: a prefix's tree"
                );
                // And it goes on: insert, checkpoint, reopen.
                futures::executor::block_on(async {
                    t.insert(leaf(1 << 40))
                        .await
                        .unwrap()
                        .durable
                        .await
                        .unwrap();
                    t.checkpoint().await.unwrap();
                    t.close().await.unwrap();
                });
                let t = T4::open_blocking(sim_config(&sim.restart(), "/c")).unwrap();
                assert_eq!(t.size() as usize, size + 1, "{ctx}");
            }
        }
    }
}

fn build_checkpointed(sim: &SimStorage) -> (Vec<Hash>, Hash) {
    let t = T4::open_blocking(sim_config(sim, "/d")).unwrap();
    let all = leaves(0..20_000);
    futures::executor::block_on(async {
        insert_all(&t, &all[..10_000]).await;
        t.checkpoint().await.unwrap();
        insert_all(&t, &all[10_000..]).await;
        t.close().await.unwrap();
    });
    let root = model_root(&all).unwrap();
    (all, root)
}

fn expect_corruption(sim: &SimStorage, file_suffix: &str) {
    expect_corruption_with(sim_config(sim, "/d"), file_suffix);
}

fn expect_corruption_with(cfg: Config, file_suffix: &str) {
    match T4::open_blocking(cfg) {
        Err(Error::Corruption { file, .. }) => {
            assert!(
                file.to_string_lossy().ends_with(file_suffix),
                "{} names {file_suffix}",
                file.display()
            )
        }
        Err(e) => panic!("expected Corruption in {file_suffix}, got {e}"),
        Ok(t) => panic!(
            "expected Corruption in {file_suffix}, opened {} leaves",
            t.size()
        ),
    }
}

#[test]
fn damage_is_reported_by_file() {
    trait Blocking {
        fn await_blocking(self);
    }
    impl<F: std::future::Future<Output = ringtree::Result<()>>> Blocking for F {
        fn await_blocking(self) {
            futures::executor::block_on(self).unwrap();
        }
    }
    // A flipped byte in a sealed chunk of the leaves: found at open when
    // levels are held in memory or with verify_on_open. Mapped (the
    // default), the tree opens; a proof that needs the chunk is refused
    // naming it (never served from unchecked bytes), and the background
    // check then refuses inserts naming it.
    let (path, off, suffix) = ("/d/shards/level-00.shard", 4096 + 5000, "level-00.shard");
    let sim = SimStorage::new(4);
    let (all, root) = build_checkpointed(&sim);
    sim.corrupt(Path::new(path), off, 0x20).unwrap();
    expect_corruption_with(
        sim_config(&sim, "/d").tiering(Tiering { pin_above_level: 0 }),
        suffix,
    );
    expect_corruption_with(sim_config(&sim, "/d").verify_on_open(true), suffix);
    let t = T4::open_blocking(sim_config(&sim, "/d")).unwrap();
    assert_eq!(t.root(), Some(root));
    // Node 5000 / 32 = 156 of chunk 1 (leaves 128..256).
    let e = t.snapshot().proof(156).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption { file, offset: 8192, .. } if file.ends_with(suffix)),
        "{e}"
    );
    // Leaves in intact chunks still prove.
    let p = t.snapshot().proof(5).unwrap();
    p.verify_at(&Blake3, &root, all.len() as u64).unwrap();
    let mut refused = None;
    for _ in 0..500 {
        match futures::executor::block_on(t.insert(leaf(9))) {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
    let e = refused.expect("the background check refuses inserts");
    assert!(e.to_string().contains(suffix), "{e} names {suffix}");
    assert!(t.metrics().chunks_corrupt >= 1);
    drop(t);

    // The same in a chunk of an internal level: its nodes are a function of
    // the verified leaves below, so the chunk is recomputed (its stored
    // checksum proves the copy right), served, counted, and written back by
    // the next checkpoint.
    let (path, off) = ("/d/shards/level-01.shard", 4096 + 40);
    let sim = SimStorage::new(4);
    let (all, root) = build_checkpointed(&sim);
    sim.corrupt(Path::new(path), off, 0x20).unwrap();
    expect_corruption_with(
        sim_config(&sim, "/d").tiering(Tiering { pin_above_level: 0 }),
        "level-01.shard",
    );
    for verify in [false, true] {
        let t = T4::open_blocking(sim_config(&sim.restart(), "/d").verify_on_open(verify)).unwrap();
        assert_eq!(t.root(), Some(root));
        for i in [0u64, 3, 7, 4000, 19_999] {
            let p = t.snapshot().proof(i).unwrap();
            p.verify_at(&Blake3, &root, all.len() as u64).unwrap();
        }
        assert_eq!(t.metrics().chunks_repaired, 1, "verify_on_open {verify}");
        t.close().await_blocking();
    }
    let t = T4::open_blocking(sim_config(&sim.restart(), "/d")).unwrap();
    // The background check repairs the chunk; the next checkpoint after
    // that writes it back.
    let t0 = std::time::Instant::now();
    while t.metrics().chunks_repaired == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "not repaired"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    futures::executor::block_on(t.checkpoint()).unwrap();
    t.close().await_blocking();
    let t = T4::open_blocking(sim_config(&sim.restart(), "/d").verify_on_open(true)).unwrap();
    assert_eq!(
        t.metrics().chunks_repaired,
        0,
        "written back by the checkpoint"
    );
    assert_eq!(t.root(), Some(root));
    drop(t);
    // A flipped byte in the file headers, the checksums, a tail, the manifest.
    for (path, off, suffix) in [
        ("/d/shards/level-00.sums", 64 + 8, "level-00.sums"),
        ("/d/shards/level-01.tail", 4096 + 10, "level-01.tail"),
        ("/d/shards/level-00.shard", 3, "level-00.shard"),
        ("/d/MANIFEST", 20, "MANIFEST"),
    ] {
        let sim = SimStorage::new(5);
        build_checkpointed(&sim);
        sim.corrupt(Path::new(path), off, 0x20).unwrap();
        expect_corruption(&sim, suffix);
    }
    // A truncated shard, a deleted shard, a deleted manifest.
    let sim = SimStorage::new(6);
    build_checkpointed(&sim);
    sim.truncate(Path::new("/d/shards/level-00.shard"), 4096 * 40)
        .unwrap();
    expect_corruption(&sim, "level-00.shard");

    let sim = SimStorage::new(7);
    build_checkpointed(&sim);
    sim.remove(Path::new("/d/shards/level-01.shard")).unwrap();
    expect_corruption(&sim, "level-01.shard");

    let sim = SimStorage::new(8);
    build_checkpointed(&sim);
    sim.remove(Path::new("/d/MANIFEST")).unwrap();
    expect_corruption(&sim, "MANIFEST");

    // A flipped byte in a WAL record before the tail: corruption too.
    let sim = SimStorage::new(9);
    build_checkpointed(&sim);
    // (in a segment after the checkpoint's position: before it, the log is
    // covered by the checkpoint and not read)
    let segs = wal_segments(&sim, "/d");
    sim.corrupt(&Path::new("/d/wal").join(&segs[1]), 4096 + 30, 0x01)
        .unwrap();
    expect_corruption(&sim, &segs[1]);

    // Undamaged, all of it opens, verified.
    let sim = SimStorage::new(10);
    let (all, root) = build_checkpointed(&sim);
    let t = T4::open_blocking(sim_config(&sim, "/d").verify_on_open(true)).unwrap();
    assert_eq!(t.size(), all.len() as u64);
    assert_eq!(t.root(), Some(root));
}

/// Policies: by log bytes and by entries the tree checkpoints in the
/// background and the log stays bounded; on close it checkpoints once.
#[test]
fn policies_bound_the_log() {
    for policy in [
        CheckpointPolicy::WalBytes(96 << 10),
        CheckpointPolicy::EveryNEntries(500),
    ] {
        let sim = SimStorage::new(11);
        // No spares kept: the directory then holds the live log only.
        let cfg = sim_config(&sim, "/p")
            .checkpoint(policy)
            .flush(FlushPolicy::GroupCommit)
            .spare_segments(0);
        let t = T4::open_blocking(cfg.clone()).unwrap();
        let all = leaves(0..12_000);
        futures::executor::block_on(async {
            for (i, l) in all.iter().enumerate() {
                let ins = t.insert(*l).await.unwrap();
                if i % 100 == 99 {
                    ins.durable.await.unwrap();
                }
            }
            t.flush().await.unwrap();
        });
        // Background checkpoints ran and recycled the log (given up to
        // 20 s: a loaded machine runs them late).
        let mut segs = wal_segments(&sim, "/p").len();
        for _ in 0..2000 {
            if segs <= 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            segs = wal_segments(&sim, "/p").len();
        }
        assert!(
            segs <= 4,
            "{policy:?}: {segs} segments for 12k inserts (~10 uncheckpointed would be)"
        );
        assert!(sim.exists(Path::new("/p/MANIFEST")));
        futures::executor::block_on(t.close()).unwrap();
        drop(t);
        let t = T4::open_blocking(cfg.verify_on_open(true)).unwrap();
        assert_eq!(t.root(), model_root(&all), "{policy:?}");
    }
    let sim = SimStorage::new(12);
    let cfg = sim_config(&sim, "/o").checkpoint(CheckpointPolicy::OnClose);
    let t = T4::open_blocking(cfg.clone()).unwrap();
    futures::executor::block_on(async {
        insert_all(&t, &leaves(0..3000)).await;
        assert!(!sim.exists(Path::new("/o/MANIFEST")));
        t.close().await.unwrap();
    });
    assert!(sim.exists(Path::new("/o/MANIFEST")), "checkpoint on close");
    let t = T4::open_blocking(cfg).unwrap();
    assert_eq!(t.root(), model_root(&leaves(0..3000)));
}

#[test]
fn an_arity_mismatch_is_a_config_mismatch() {
    let sim = SimStorage::new(13);
    build_checkpointed(&sim);
    let r = Tree::<Blake3, 2, 32>::open_blocking(sim_config(&sim, "/d"));
    assert!(
        matches!(&r, Err(Error::ConfigMismatch { field: "arity", on_disk, given, .. }) if on_disk == "4" && given == "2"),
        "{r:?}"
    );
}

/// `Tree::metrics`: counts match what happened.
#[test]
fn metrics_count_what_happened() {
    let sim = SimStorage::new(14);
    let t = T4::open_blocking(sim_config(&sim, "/m").flush(FlushPolicy::Manual)).unwrap();
    futures::executor::block_on(async {
        for i in 0..100 {
            t.insert(leaf(i)).await.unwrap();
        }
        t.insert_many(&leaves(100..150)).await.unwrap();
        let m = t.metrics();
        assert_eq!(m.leaves, 150);
        assert_eq!(m.wal_bytes, 100 * 48 + (16 + 50 * 32));
        assert_eq!(
            m.durable_lag_bytes, m.wal_bytes,
            "Manual: nothing synced yet"
        );
        assert_eq!(m.fsyncs, 0);
        t.flush().await.unwrap();
        let m = t.metrics();
        assert_eq!(m.durable_lag_bytes, 0);
        assert_eq!(m.records_committed, 101, "100 single records and one batch");
        assert!(m.fsyncs >= 1);
        assert_eq!(m.fsync_latency.count, m.fsyncs);
        assert!(m.records_per_fsync() > 1.0);
        assert_eq!(m.checkpoint_duration.count, 0);
        t.checkpoint().await.unwrap();
        assert_eq!(t.metrics().checkpoint_duration.count, 1);
    });
}

/// Segments a checkpoint frees become the log's next segments: no new files
/// of zeros are written while spares last, so the log's bytes are written
/// once; their old frames never come back, through a crash or a reopen.
#[test]
fn freed_segments_become_the_next_ones() {
    for crash in [false, true] {
        let sim = SimStorage::new(21);
        let cfg = sim_config(&sim, "/r")
            .segment_size(16 << 10)
            .direct_io(false);
        let t = T4::open_blocking(cfg.clone()).unwrap();
        // ~7 segments, then a checkpoint frees the 7 below it; ~4 more
        // are needed after it (and one prepared ahead).
        let all = leaves(0..3600);
        // Sequences of the segment files (made or being made) in the log.
        let seqs = || -> std::collections::BTreeSet<String> {
            sim.list(Path::new("/r/wal"))
                .unwrap()
                .into_iter()
                .map(|n| n.split('.').next().unwrap().to_string())
                .collect()
        };
        let (m0, m, wal, written, new) = futures::executor::block_on(async {
            insert_awaited(&t, &all[..2400]).await;
            // Let a segment being prepared ahead (of zeros: no spares yet)
            // finish: every file then counted as made.
            for _ in 0..1000 {
                let m = t.metrics();
                let names = sim.list(Path::new("/r/wal")).unwrap();
                if !names.iter().any(|n| n.ends_with(".tmp"))
                    && m.wal_segments_zeroed == names.len() as u64
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            t.checkpoint().await.unwrap();
            let m0 = t.metrics();
            let old = seqs();
            let before = sim.bytes_written();
            insert_awaited(&t, &all[2400..]).await;
            let m = t.metrics();
            let (wal, written) = (m.wal_bytes - m0.wal_bytes, sim.bytes_written() - before);
            let new = seqs().difference(&old).count() as u64;
            (m0, m, wal, written, new)
        });
        assert!(new >= 3, "{new} new segments for 38 KB of log");
        assert_eq!(m0.wal_segments_reused, 0);
        assert!(m.wal_segments_reused >= 2, "{m:?}");
        assert_eq!(
            m.wal_segments_zeroed, m0.wal_segments_zeroed,
            "no segment written full of zeros while spares last: {m:?}"
        );
        // The log's bytes and one 4 KiB header per new segment (one more
        // for a segment begun before), nothing more.
        assert!(
            written <= wal + (new + 1) * 4096,
            "{written} bytes written for {wal} bytes of log, {new} new segments"
        );
        let files = seqs().len();
        assert!(files <= 8 + 2, "{files} segment files");
        if crash {
            sim.crash();
        } else {
            futures::executor::block_on(t.close()).unwrap();
        }
        drop(t);
        let before = sim.bytes_written();
        let t = T4::open_blocking(sim_config(&sim.restart(), "/r").verify_on_open(true)).unwrap();
        if !crash {
            // After a clean close the old bytes past the end are not taken
            // for a torn tail (which would be zeroed to the segment's end).
            let reopen = sim.bytes_written() - before;
            assert!(reopen <= 20, "{reopen} bytes written by a clean reopen");
        }
        assert_eq!(t.size(), 3600, "crash {crash}");
        assert_eq!(t.root(), model_root(&all), "crash {crash}");
        // And on: a second round of reuse after a reopen.
        futures::executor::block_on(async {
            t.checkpoint().await.unwrap();
            insert_awaited(&t, &leaves(3600..4800)).await;
            assert!(t.metrics().wal_segments_reused >= 2, "{:?}", t.metrics());
            t.close().await.unwrap();
        });
        let t = T4::open_blocking(sim_config(&sim.restart(), "/r")).unwrap();
        assert_eq!(t.root(), model_root(&leaves(0..4800)), "crash {crash}");
    }
}

/// Segments a checkpoint retired and a close left on disk are reused after
/// the reopen, before any new checkpoint.
#[test]
fn retired_segments_are_reused_after_a_reopen() {
    let sim = SimStorage::new(31);
    let cfg = sim_config(&sim, "/o").segment_size(16 << 10);
    let all = leaves(0..3600);
    checkpointed_at(&cfg, &all[..2400], 2400);
    // Verified at open, so the log below the checkpoint is retired there
    // (after a background check, only once that passes).
    let t = T4::open_blocking(cfg.clone().verify_on_open(true)).unwrap();
    futures::executor::block_on(async {
        insert_awaited(&t, &all[2400..]).await;
        let m = t.metrics();
        assert_eq!(m.checkpoint_duration.count, 0);
        assert!(m.wal_segments_reused >= 2, "{m:?}");
        assert_eq!(m.wal_segments_zeroed, 0, "{m:?}");
        t.close().await.unwrap();
    });
    drop(t);
    let t = T4::open_blocking(cfg.verify_on_open(true)).unwrap();
    assert_eq!(t.root(), model_root(&all));
}

/// With no spares kept, retired segments are deleted and every new segment
/// is written as zeros: the directory holds only the live log.
#[test]
fn no_spares_deletes_retired_segments() {
    let sim = SimStorage::new(33);
    let cfg = sim_config(&sim, "/n")
        .segment_size(16 << 10)
        .spare_segments(0);
    let all = leaves(0..3600);
    let t = T4::open_blocking(cfg.clone()).unwrap();
    futures::executor::block_on(async {
        insert_awaited(&t, &all[..2400]).await;
        t.checkpoint().await.unwrap();
        insert_awaited(&t, &all[2400..]).await;
        let m = t.metrics();
        assert_eq!(m.wal_segments_reused, 0, "{m:?}");
        assert!(m.wal_segments_zeroed >= 10, "{m:?}");
        t.close().await.unwrap();
    });
    drop(t);
    // The ones below the checkpoint went (in the background, joined by
    // close): ~4 live segments remain of the ~12 made.
    let segs = wal_segments(&sim, "/n").len();
    assert!(segs <= 6, "{segs} segment files");
    let t = T4::open_blocking(cfg).unwrap();
    assert_eq!(t.root(), model_root(&all));
}

/// A process that dies between renaming a checkpoint's manifest and syncing
/// the directory leaves that manifest visible but not durable. The reopen
/// reuses the segments below it only after making it durable: a power loss
/// later loses nothing acknowledged.
#[test]
fn reuse_after_a_reopen_waits_for_the_checkpoint_to_be_durable() {
    let sim = SimStorage::new(32);
    let cfg = sim_config(&sim, "/k").segment_size(16 << 10);
    let all = leaves(0..4800);
    let t = T4::open_blocking(cfg.clone().failpoint("manifest-rename")).unwrap();
    futures::executor::block_on(async {
        insert_awaited(&t, &all[..2400]).await;
        assert!(t.checkpoint().await.is_err(), "stopped after the rename");
    });
    sim.kill();
    drop(t);
    let sim = sim.restart();
    let cfg = sim_config(&sim, "/k").segment_size(16 << 10);
    let t = T4::open_blocking(cfg).unwrap();
    futures::executor::block_on(async {
        insert_awaited(&t, &all[2400..]).await;
    });
    assert!(t.metrics().wal_segments_reused >= 2, "{:?}", t.metrics());
    sim.crash();
    drop(t);
    let t = T4::open_blocking(sim_config(&sim.restart(), "/k").segment_size(16 << 10))
        .unwrap_or_else(|e| panic!("reopen after the power loss: {e}"));
    assert_eq!(t.size(), 4800);
    assert_eq!(t.root(), model_root(&all));
}

/// A write or sync failing at any step of the log's work after a checkpoint
/// (group commits, and making the next segments from freed ones: rename,
/// header, syncs), then a crash: the reopened tree holds every
/// acknowledged leaf, and is a prefix's tree.
#[test]
fn failures_while_reusing_segments_keep_the_durable_prefix() {
    for k in 0..16u64 {
        for sync_fault in [false, true] {
            let ctx = format!("fault at {k}, sync {sync_fault}");
            let sim = SimStorage::new(300 + k);
            let cfg = sim_config(&sim, "/f").segment_size(8192);
            let t = T4::open_blocking(cfg).unwrap();
            let all = leaves(0..2000);
            let acked = futures::executor::block_on(async {
                for c in all[..600].chunks(50) {
                    insert_all(&t, c).await.await.unwrap();
                }
                t.checkpoint().await.unwrap();
                if sync_fault {
                    sim.fail_syncs_after(k);
                } else {
                    sim.fail_writes_after(k);
                }
                let mut acked = 600;
                for c in all[600..].chunks(50) {
                    let Ok(ins) = t.insert_many(c).await else {
                        break;
                    };
                    if ins.durable.await.is_err() {
                        break;
                    }
                    acked += c.len();
                }
                acked
            });
            assert!(acked < all.len(), "{ctx}: the fault hit");
            sim.crash();
            sim.clear_faults();
            drop(t);
            let t = T4::open_blocking(sim_config(&sim.restart(), "/f").segment_size(8192))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let size = t.size() as usize;
            assert!(size >= acked, "{ctx}: {size} < {acked} acknowledged");
            assert_eq!(t.root(), model_root(&all[..size]), "{ctx}");
        }
    }
}

/// The power fails before every single operation in turn (each write,
/// sync, creation, rename, removal, directory sync) while the log makes
/// its next segments from the ones a checkpoint freed, through the page
/// cache and direct: the reopened tree holds every acknowledged leaf and
/// is a prefix's tree.
#[test]
fn power_loss_at_every_step_of_segment_reuse() {
    fn run(direct: bool, crash_at: Option<u64>) -> (u64, u64) {
        let sim = SimStorage::new(400 + crash_at.unwrap_or(0));
        let cfg = sim_config(&sim, "/p")
            .segment_size(16 << 10)
            .direct_io(direct);
        let t = T4::open_blocking(cfg.clone()).unwrap();
        let all = leaves(0..2400);
        let (acked, ops, reused) = futures::executor::block_on(async {
            for c in all[..1200].chunks(60) {
                insert_all(&t, c).await.await.unwrap();
            }
            t.checkpoint().await.unwrap();
            let before = sim.ops();
            if let Some(n) = crash_at {
                sim.crash_at_op(n);
            }
            let mut acked = 1200;
            for (i, c) in all[1200..].chunks(60).enumerate() {
                let Ok(ins) = t.insert_many(c).await else {
                    break;
                };
                // Every other batch awaited: groups of one and of two.
                if i % 2 == 1 {
                    if ins.durable.await.is_err() {
                        break;
                    }
                    acked = 1200 + (i + 1) * 60;
                }
            }
            let _ = t.flush().await.map(|()| acked = all.len());
            (acked, sim.ops() - before, t.metrics().wal_segments_reused)
        });
        // The power goes now if it has not yet (nothing more may count).
        sim.clear_faults();
        sim.crash();
        drop(t);
        let ctx = format!("direct {direct}, power lost at op {crash_at:?}");
        if crash_at.is_none() {
            assert!(reused >= 3, "{ctx}: segments reused: {reused}");
            return (ops, reused);
        }
        let t = T4::open_blocking(sim_config(&sim.restart(), "/p").segment_size(16 << 10))
            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        let size = t.size() as usize;
        assert!(size >= acked, "{ctx}: {size} < {acked} acknowledged");
        assert!(size <= all.len(), "{ctx}");
        assert_eq!(t.root(), model_root(&all[..size]), "{ctx}");
        (ops, reused)
    }
    for direct in [false, true] {
        // A run without the power loss counts the operations to sweep.
        let (ops, _) = run(direct, None);
        assert!(ops > 40, "{ops} operations");
        for n in 0..ops + 2 {
            run(direct, Some(n));
        }
    }
}

/// A checkpoint that failed after creating shard files, then a later one
/// that succeeds: the later one syncs the directory too, so a power loss
/// keeps the files its manifest names (the log below it is gone).
#[test]
fn a_later_checkpoint_syncs_names_an_earlier_one_created() {
    let sim = SimStorage::new(15);
    let cfg = |s: &SimStorage| sim_config(s, "/f").segment_size(8192).buffer_capacity(4096);
    let t = T4::open_blocking(cfg(&sim)).unwrap();
    futures::executor::block_on(async {
        for i in 0..100 {
            t.insert_durable(leaf(i)).await.unwrap();
        }
        sim.fail_syncs_after(0);
        assert!(t.checkpoint().await.is_err());
    });
    sim.kill(); // the process dies; the page cache keeps the unsynced names
    sim.clear_faults();
    drop(t);
    let t = T4::open_blocking(cfg(&sim.restart())).unwrap();
    assert_eq!(t.size(), 100);
    futures::executor::block_on(async {
        for i in 100..200 {
            t.insert_durable(leaf(i)).await.unwrap();
        }
        t.checkpoint().await.unwrap();
    });
    sim.crash_drop_all();
    drop(t);
    let t = T4::open_blocking(cfg(&sim.restart())).unwrap();
    assert_eq!(t.size(), 200);
    assert_eq!(t.root(), model_root(&leaves(0..200)));
}

/// After a failure at or past the manifest rename, which manifest is current
/// is unknown: further checkpoints are refused until the tree is reopened.
#[test]
fn a_checkpoint_failing_after_its_rename_stops_checkpoints() {
    let sim = SimStorage::new(16);
    let t = T4::open_blocking(sim_config(&sim, "/r").failpoint("manifest-rename")).unwrap();
    futures::executor::block_on(async {
        insert_all(&t, &leaves(0..1000)).await.await.unwrap();
        assert!(t.checkpoint().await.is_err());
        t.insert(leaf(5000)).await.unwrap().durable.await.unwrap();
        let again = t.checkpoint().await.unwrap_err();
        assert!(again.to_string().contains("reopen"), "{again}");
        t.close().await.unwrap();
    });
    let t = T4::open_blocking(sim_config(&sim.restart(), "/r")).unwrap();
    assert_eq!(t.size(), 1001);
    futures::executor::block_on(t.checkpoint()).unwrap();
}

/// Until the loaded checkpoint's chunks pass their background check, the
/// log below it is their only other copy: the open keeps it, and when the
/// check finds damage, it is still all there.
#[test]
fn the_log_below_a_checkpoint_stays_until_its_chunks_pass() {
    let sim = SimStorage::new(41);
    let cfg = sim_config(&sim, "/v").segment_size(16 << 10);
    let all = leaves(0..6000);
    checkpointed_at(&cfg, &all, 5000);
    let before = wal_segments(&sim, "/v");
    sim.corrupt(Path::new("/v/shards/level-00.shard"), 4096 + 5000, 0x20)
        .unwrap();
    // No spares: a retired segment would be deleted at once.
    let t = T4::open_blocking(cfg.clone().spare_segments(0)).unwrap();
    let mut refused = false;
    for _ in 0..1000 {
        if futures::executor::block_on(t.insert(leaf(9))).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(refused, "the background check refuses inserts");
    let _ = futures::executor::block_on(t.close());
    drop(t);
    assert!(before.len() >= 6, "{before:?}");
    assert_eq!(wal_segments(&sim, "/v"), before);

    // Undamaged: once the check passes, the log below the checkpoint goes.
    let sim = SimStorage::new(42);
    let cfg = sim_config(&sim, "/w").segment_size(16 << 10);
    checkpointed_at(&cfg, &all, 5000);
    let before = wal_segments(&sim, "/w").len();
    let t = T4::open_blocking(cfg.spare_segments(0)).unwrap();
    let mut left = before;
    for _ in 0..2000 {
        left = wal_segments(&sim, "/w").len();
        if left < before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(left < before, "{left} of {before} segments left");
    assert_eq!(t.root(), model_root(&all));
    futures::executor::block_on(t.close()).unwrap();
}

/// A checkpoint asked for while the loaded checkpoint's chunks are still
/// being checked does not wait for the check (a process killed before the
/// check ends still checkpoints): it copies none of those chunks, so
/// damage in one stays behind its checksum, found on use and by the check;
/// and the log below the loaded checkpoint stays until the check passed.
#[test]
fn a_checkpoint_during_the_check_of_the_loaded_one_keeps_damage_detectable() {
    for seed in 0..4 {
        let sim = SimStorage::new(50 + seed);
        let cfg = sim_config(&sim, "/m");
        let all = leaves(0..60_000);
        let t = T4::open_blocking(cfg.clone()).unwrap();
        futures::executor::block_on(async {
            insert_all(&t, &all[..50_000]).await.await.unwrap();
            t.checkpoint().await.unwrap();
            insert_all(&t, &all[50_000..]).await.await.unwrap();
            t.close().await.unwrap();
        });
        drop(t);
        // The last sealed chunk of level 0: found last by the check.
        let last_sealed = 50_000 * 32 / 4096 * 4096 - 4096;
        sim.corrupt(
            Path::new("/m/shards/level-00.shard"),
            4096 + last_sealed + 7,
            0x20,
        )
        .unwrap();
        let segments = |sim: &SimStorage| sim.list(Path::new("/m/wal")).unwrap().len();
        let before = segments(&sim);
        let t = T4::open_blocking(cfg.clone()).unwrap();
        let r = futures::executor::block_on(t.checkpoint());
        assert!(
            r.is_ok()
                || matches!(&r, Err(Error::Poisoned { reason, .. }) if reason.contains("level-00.shard")),
            "seed {seed}: {r:?}"
        );
        // The damaged leaves are refused, never served.
        let i = last_sealed / 32 + 3;
        let e = t.snapshot().proof(i).unwrap_err();
        assert!(e.to_string().contains("level-00.shard"), "seed {seed}: {e}");
        // The check fails: the log below the loaded checkpoint was kept.
        let t0 = std::time::Instant::now();
        while futures::executor::block_on(t.insert(leaf(1 << 40))).is_ok() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(20));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(
            segments(&sim) >= before.min(2),
            "seed {seed}: the log was retired"
        );
        let _ = futures::executor::block_on(t.close());
        // Reopened: still refused.
        let t = T4::open_blocking(sim_config(&sim.restart(), "/m")).unwrap();
        assert!(t.snapshot().proof(i).is_err());
    }
}

/// A simulated disk whose `sync_dir` of `target` panics once armed.
struct PanicOnSyncDir {
    disk: SimStorage,
    target: std::path::PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl Storage for PanicOnSyncDir {
    fn backend(&self) -> ringtree::IoBackend {
        self.disk.backend()
    }
    fn open(
        &self,
        path: &Path,
        create: bool,
    ) -> std::io::Result<Box<dyn ringtree::io::StorageFile>> {
        self.disk.open(path, create)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.disk.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        if path == self.target && self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("sync_dir of {} panicked", path.display());
        }
        self.disk.sync_dir(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.disk.list(dir)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.disk.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.disk.rename(from, to)
    }
    fn exists(&self, path: &Path) -> bool {
        self.disk.exists(path)
    }
    fn lock(&self, path: &Path) -> std::io::Result<ringtree::io::LockGuard> {
        self.disk.lock(path)
    }
    fn shrink(&self, path: &Path, len: u64) -> std::io::Result<()> {
        self.disk.shrink(path, len)
    }
    fn open_direct(
        &self,
        path: &Path,
    ) -> std::io::Result<Option<Box<dyn ringtree::io::StorageFile>>> {
        self.disk.open_direct(path)
    }
    fn map(&self, path: &Path) -> std::io::Result<std::sync::Arc<dyn ringtree::io::Mapped>> {
        self.disk.map(path)
    }
}

/// The background check of a loaded checkpoint panics (here in the
/// storage, while it retires the log below it): the tree is poisoned, and
/// a checkpoint asked for meanwhile returns an error, never hangs.
#[test]
fn a_check_that_panics_ends_and_poisons() {
    let disk = Arc::new(PanicOnSyncDir {
        disk: SimStorage::new(61),
        target: Path::new("/p/shards").to_path_buf(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let cfg = Config::new("/p")
        .storage(disk.clone())
        .checkpoint(CheckpointPolicy::Manual);
    let all = leaves(0..20_000);
    let t = T4::open_blocking(cfg.clone()).unwrap();
    futures::executor::block_on(async {
        insert_all(&t, &all).await.await.unwrap();
        t.checkpoint().await.unwrap();
        t.close().await.unwrap();
    });
    drop(t);
    disk.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = Arc::new(T4::open_blocking(cfg).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let t = t.clone();
        std::thread::spawn(move || {
            let _ = tx.send(futures::executor::block_on(t.checkpoint()));
        });
    }
    // A hang detector: it takes milliseconds. The checkpoint (which does
    // not wait for the check) meets the panicking storage too, or the
    // poisoned tree: an error either way.
    let got = rx.recv_timeout(std::time::Duration::from_secs(30));
    assert!(
        matches!(&got, Ok(Err(e)) if e.to_string().contains("panicked")),
        "{got:?}"
    );
    // The check's panic poisons the tree.
    let t0 = std::time::Instant::now();
    loop {
        match futures::executor::block_on(t.insert(leaf(1))) {
            Err(Error::Poisoned { reason, .. }) => {
                assert!(reason.contains("panicked"), "{reason}");
                break;
            }
            other => assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "not poisoned: {other:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
