//! The persistent `Tree`: inserts, reopen, the directory lock, crash
//! schedules against the durable-prefix bound, I/O failures, and embedding
//! under different executors.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Rng, leaf, leaves};
use ringtree::io::{SimStorage, Storage};
use ringtree::{Blake3, Config, Error, FlushPolicy, Hash, IoBackend, LeanImt, Tree};

type T4 = Tree<Blake3, 4, 32>;

use common::sim_config;

fn model_root(leaves: &[Hash]) -> Option<Hash> {
    common::naive_root(4, leaves)
}

#[test]
fn insert_reopen_and_prove_on_each_backend() {
    for io in [IoBackend::Threaded, IoBackend::Uring] {
        if io == IoBackend::Uring && ringtree::io::UringStorage::new().is_err() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::new(tmp.path().join("t")).io(io);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let all = leaves(0..5000);
        let root = rt.block_on(async {
            let tree = T4::open(cfg.clone()).await.unwrap();
            assert_eq!(tree.backend(), io);
            let mut model = LeanImt::<Blake3, 4, 32>::new(Blake3);
            for (i, l) in all[..1000].iter().enumerate() {
                let ins = tree.insert(*l).await.unwrap();
                assert_eq!(ins.index, i as u64);
                assert_eq!(ins.root, model.insert(*l).unwrap());
            }
            let ins = tree.insert_many(&all[1000..4000]).await.unwrap();
            assert_eq!(ins.index, 1000);
            assert_eq!(ins.root, model.insert_many(&all[1000..4000]).unwrap());
            ins.durable.await.unwrap();
            for l in &all[4000..] {
                let (_, root) = tree.insert_durable(*l).await.unwrap();
                assert_eq!(root, model.insert(*l).unwrap());
            }
            tree.flush().await.unwrap();
            tree.close().await.unwrap();
            assert!(matches!(tree.insert([0; 32]).await, Err(Error::Closed)));
            model.root().unwrap()
        });
        let tree = T4::open_blocking(cfg).unwrap();
        assert_eq!(tree.size(), 5000);
        assert_eq!(tree.root(), Some(root));
        let snap = tree.snapshot();
        for i in [0u64, 1, 999, 1000, 3999, 4999] {
            let p = snap.proof(i).unwrap();
            assert_eq!(p.leaf(), all[i as usize]);
            p.verify_at(&Blake3, &root, 5000).unwrap();
        }
    }
}

#[test]
fn the_directory_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::new(tmp.path()).io(IoBackend::Threaded);
    let a = T4::open_blocking(cfg.clone()).unwrap();
    assert!(matches!(
        T4::open_blocking(cfg.clone()),
        Err(Error::Locked(_))
    ));
    futures::executor::block_on(a.close()).unwrap();
    let b = T4::open_blocking(cfg.clone()).unwrap();
    // Dropping the last handle releases the lock (on a background thread).
    drop(b);
    let mut reopened = None;
    for _ in 0..200 {
        match T4::open_blocking(cfg.clone()) {
            Ok(t) => {
                reopened = Some(t);
                break;
            }
            Err(Error::Locked(_)) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(reopened.is_some(), "lock released after drop");
}

#[test]
fn bad_batches_change_nothing() {
    let sim = SimStorage::new(1);
    let tree = T4::open_blocking(sim_config(&sim, "/b")).unwrap();
    futures::executor::block_on(async {
        tree.insert_many(&leaves(0..10)).await.unwrap();
        let root = tree.root();
        assert!(matches!(
            tree.insert_many(&[]).await,
            Err(Error::EmptyBatch)
        ));
        let too_many = leaves(0..tree.max_batch() + 1);
        assert!(matches!(
            tree.insert_many(&too_many).await,
            Err(Error::BatchTooLarge { len, max }) if len == max + 1 && max == tree.max_batch()
        ));
        assert_eq!(tree.root(), root);
        assert_eq!(tree.size(), 10);
        let max = leaves(10..10 + tree.max_batch());
        tree.insert_many(&max).await.unwrap().durable.await.unwrap();
        assert_eq!(tree.size(), 10 + tree.max_batch());
    });
}

#[test]
fn a_full_tree_rejects_without_change_or_log() {
    let sim = SimStorage::new(2);
    // Manual flushing: no commit frame lands between the two positions.
    let tree =
        Tree::<Blake3, 2, 3>::open_blocking(sim_config(&sim, "/full").flush(FlushPolicy::Manual))
            .unwrap();
    futures::executor::block_on(async {
        tree.insert_many(&leaves(0..7)).await.unwrap();
        let end = tree.wal_position();
        assert!(matches!(
            tree.insert_many(&leaves(7..9)).await,
            Err(Error::Capacity { .. })
        ));
        tree.insert(leaf(7)).await.unwrap();
        assert!(matches!(
            tree.insert(leaf(8)).await,
            Err(Error::Capacity { .. })
        ));
        assert_eq!(
            tree.wal_position(),
            end + 48,
            "only the accepted insert was logged"
        );
        tree.close().await.unwrap();
    });
    let tree = Tree::<Blake3, 2, 3>::open_blocking(sim_config(&sim, "/full")).unwrap();
    assert_eq!(tree.size(), 8);
}

#[test]
fn a_single_insert_costs_48_wal_bytes() {
    let sim = SimStorage::new(3);
    let cfg = sim_config(&sim, "/bytes")
        .flush(FlushPolicy::Manual)
        .buffer_capacity(256 << 10);
    let tree = T4::open_blocking(cfg).unwrap();
    futures::executor::block_on(async {
        let start = tree.wal_position();
        for i in 0..1000 {
            tree.insert(leaf(i)).await.unwrap();
        }
        // Manual flushing: no commit frames in between.
        assert_eq!(tree.wal_position() - start, 1000 * 48);
    });
}

/// Durable-prefix bound after a crash: the recovered tree is the tree of the
/// first `size` inserted leaves (same root), and `size` covers every leaf
/// whose durability future resolved Ok.
fn run_tree_schedule(seed: u64) {
    let mut rng = Rng(seed);
    let sim = SimStorage::new(seed);
    let flush = match rng.below(3) {
        0 => FlushPolicy::GroupCommit,
        1 => FlushPolicy::Manual,
        _ => FlushPolicy::Interval(Duration::from_micros(300)),
    };
    let mut model: Vec<Hash> = Vec::new(); // leaves in index order
    let mut acked = 0u64; // leaves known durable
    let mut next_leaf = 0u64;
    let mut storage = sim.clone();
    for round in 0..3 {
        let direct = !seed.is_multiple_of(3);
        let ctx = format!("seed {seed} round {round} {flush:?} direct {direct}");
        let mut cfg = sim_config(&storage, "/crash")
            .flush(flush)
            .direct_io(direct);
        if seed.is_multiple_of(2) {
            // Small segments, so checkpoints free some and new ones are
            // made from them (segment reuse under crashes).
            cfg = cfg.segment_size(8 << 10);
        }
        let tree = T4::open_blocking(cfg).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        let size = tree.size();
        assert!(
            size >= acked,
            "{ctx}: acknowledged leaves lost: {size} < {acked}"
        );
        assert!(
            size <= model.len() as u64,
            "{ctx}: more leaves than inserted"
        );
        model.truncate(size as usize);
        assert_eq!(
            tree.root(),
            model_root(&model),
            "{ctx}: recovered tree is the prefix's tree"
        );
        acked = size;
        // More on small segments, so several fill up between checkpoints.
        let ops = 1 + rng.below(if seed.is_multiple_of(2) { 60 } else { 25 });
        futures::executor::block_on(async {
            for _ in 0..ops {
                match rng.below(10) {
                    0..=4 => {
                        let l = leaf(1_000_000 * seed + next_leaf);
                        next_leaf += 1;
                        let ins = tree.insert(l).await.unwrap();
                        assert_eq!(ins.index, model.len() as u64, "{ctx}: index order");
                        model.push(l);
                        if rng.below(3) == 0 {
                            if flush != FlushPolicy::GroupCommit {
                                tree.flush().await.unwrap();
                            }
                            ins.durable.await.unwrap();
                            acked = acked.max(ins.index + 1);
                        }
                    }
                    5..=6 => {
                        let k = 1 + rng.below(60);
                        let batch =
                            leaves(1_000_000 * seed + next_leaf..1_000_000 * seed + next_leaf + k);
                        next_leaf += k;
                        let ins = tree.insert_many(&batch).await.unwrap();
                        model.extend_from_slice(&batch);
                        if rng.below(2) == 0 {
                            if flush != FlushPolicy::GroupCommit {
                                tree.flush().await.unwrap();
                            }
                            ins.durable.await.unwrap();
                            acked = acked.max(model.len() as u64);
                        }
                    }
                    7 => {
                        tree.flush().await.unwrap();
                        acked = model.len() as u64;
                    }
                    8 if rng.below(3) == 0 => {
                        // A checkpoint makes what it covers durable too.
                        tree.checkpoint().await.unwrap();
                        acked = model.len() as u64;
                    }
                    _ => std::thread::sleep(Duration::from_micros(rng.below(200))),
                }
            }
        });
        match rng.below(3) {
            0 => sim.crash(),
            1 => sim.crash_drop_all(),
            _ => sim.crash_keep_all(),
        }
        drop(tree);
        storage = sim.restart();
    }
}

/// A thousand seeded schedules by default; `RINGTREE_TREE_SCHEDULES=1000000`
/// for the long campaign (`RINGTREE_TREE_SEED` picks the first seed).
#[test]
fn simulated_crash_schedules() {
    let n: u64 = std::env::var("RINGTREE_TREE_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("RINGTREE_TREE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + n {
        run_tree_schedule(seed);
    }
}

#[test]
fn io_failures_poison_the_tree() {
    for fault in ["write", "sync", "enospc"] {
        let sim = SimStorage::new(9);
        let cfg = sim_config(&sim, "/p").flush(FlushPolicy::Manual);
        let tree = T4::open_blocking(cfg).unwrap();
        let all = leaves(0..40);
        futures::executor::block_on(async {
            for l in &all[..20] {
                tree.insert(*l).await.unwrap();
            }
            tree.flush().await.unwrap();
            let pending: Vec<_> = {
                let mut v = Vec::new();
                for l in &all[20..30] {
                    v.push(tree.insert(*l).await.unwrap().durable);
                }
                v
            };
            match fault {
                "write" => sim.fail_writes_after(0),
                "sync" => sim.fail_syncs_after(0),
                _ => sim.enospc_after_bytes(0),
            }
            assert!(tree.flush().await.is_err(), "{fault}");
            for d in pending {
                assert!(
                    matches!(d.await, Err(Error::Poisoned { .. })),
                    "{fault}: waiting futures fail"
                );
            }
            let size = tree.size();
            assert!(
                matches!(tree.insert(all[30]).await, Err(Error::Poisoned { .. })),
                "{fault}"
            );
            assert_eq!(
                tree.size(),
                size,
                "{fault}: a refused insert changes nothing"
            );
        });
        sim.clear_faults();
        sim.crash();
        drop(tree);
        let tree = T4::open_blocking(sim_config(&sim.restart(), "/p")).unwrap();
        let n = tree.size() as usize;
        assert!((20..=30).contains(&n), "{fault}: recovered {n}");
        if fault == "sync" {
            assert_eq!(n, 20, "a failed sync makes nothing it covered durable");
        }
        assert_eq!(tree.root(), model_root(&all[..n]));
    }
}

/// The same scenario on tokio multi-thread, tokio current-thread,
/// `futures::executor::block_on`, and plain threads using `wait()`.
#[test]
fn embeds_in_any_executor() {
    async fn scenario(tree: T4, base: u64) -> Hash {
        let mut last = None;
        for i in 0..50 {
            let ins = tree.insert(leaf(base + i)).await.unwrap();
            last = Some(ins.durable);
        }
        last.unwrap().await.unwrap();
        let (_, root) = tree.insert_durable(leaf(base + 50)).await.unwrap();
        tree.flush().await.unwrap();
        root
    }
    fn check(tree: &T4, base: u64, root: Hash) {
        assert_eq!(tree.size(), 51);
        assert_eq!(tree.root(), Some(root));
        assert_eq!(model_root(&leaves(base..base + 51)), Some(root));
    }
    let open = |name: &str| {
        let sim = SimStorage::new(77);
        T4::open_blocking(sim_config(&sim, name)).unwrap()
    };
    let t = open("/multi");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = rt.block_on(async { tokio::spawn(scenario(t.clone(), 0)).await.unwrap() });
    check(&t, 0, root);

    let t = open("/current");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = rt.block_on(scenario(t.clone(), 100));
    check(&t, 100, root);

    let t = open("/futures");
    let root = futures::executor::block_on(scenario(t.clone(), 200));
    check(&t, 200, root);

    let t = open("/threads");
    let hs: Vec<_> = (0..4)
        .map(|k| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let ins =
                        futures::executor::block_on(t.insert(leaf(300 + k * 25 + i))).unwrap();
                    ins.durable.wait().unwrap();
                    assert!(ins.durable.is_durable());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(t.size(), 100);
}

/// Compile-time: the futures and handles are `Send + 'static`, so they can
/// be spawned on any runtime.
#[allow(dead_code)]
fn futures_are_send(tree: T4) {
    fn send_static<T: Send + 'static>(_: T) {}
    fn sync<T: Send + Sync + 'static>(_: &T) {}
    sync(&tree);
    let t = tree.clone();
    send_static(async move { t.insert([0; 32]).await });
    let t = tree.clone();
    send_static(async move { t.insert_many(&[[0; 32]]).await });
    let t = tree.clone();
    send_static(async move { t.insert_durable([0; 32]).await });
    let t = tree.clone();
    send_static(async move { t.flush().await });
    let t = tree.clone();
    send_static(async move { t.close().await });
    send_static(T4::open(Config::new("x")));
}

#[test]
fn storage_trait_objects_are_usable_directly() {
    // A storage the caller made: the tree writes through it and nothing else.
    let sim = SimStorage::new(4);
    let tree = T4::open_blocking(sim_config(&sim, "/own")).unwrap();
    futures::executor::block_on(tree.insert_durable(leaf(1))).unwrap();
    assert!(
        sim.list(Path::new("/own/wal"))
            .unwrap()
            .iter()
            .any(|n| n.ends_with(".wal"))
    );
    assert!(sim.syncs() > 0);
}

/// The log falls back to writes through the page cache by itself: where
/// the storage has no direct mode, where it refuses direct writes only when
/// they are made, and across reopens of one directory that switch between
/// the three. Every acknowledged leaf is there after each reopen.
#[test]
fn direct_writes_fall_back_by_themselves() {
    use ringtree::io::SimDirect;
    let mut sim = SimStorage::new(11);
    let mut all: Vec<Hash> = Vec::new();
    for (round, mode) in [
        SimDirect::Refused,
        SimDirect::Aligned,
        SimDirect::Unsupported,
        SimDirect::Aligned,
        SimDirect::Refused,
    ]
    .into_iter()
    .enumerate()
    {
        sim.set_direct(mode);
        let tree = T4::open_blocking(sim_config(&sim, "/fallback")).unwrap();
        assert_eq!(tree.size(), all.len() as u64, "round {round} {mode:?}");
        assert_eq!(tree.root(), model_root(&all), "round {round} {mode:?}");
        futures::executor::block_on(async {
            // Singles and batches, enough to cross 64 KiB segments.
            for i in 0..300u64 {
                let l = leaf(round as u64 * 100_000 + i);
                tree.insert_durable(l).await.unwrap();
                all.push(l);
            }
            let batch = leaves(round as u64 * 100_000 + 500..round as u64 * 100_000 + 700);
            tree.insert_many(&batch)
                .await
                .unwrap()
                .durable
                .await
                .unwrap();
            all.extend(batch);
        });
        futures::executor::block_on(tree.close()).unwrap();
        // Only what was synced survives.
        sim.crash();
        sim = sim.restart();
    }
    let tree = T4::open_blocking(sim_config(&sim.restart(), "/fallback")).unwrap();
    assert_eq!(tree.root(), model_root(&all));
}

/// A tree on the real disk (threaded backend) and a current-thread runtime.
fn on_disk_current_thread() -> (tempfile::TempDir, T4, tokio::runtime::Runtime) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = T4::open_blocking(Config::new(tmp.path()).io(IoBackend::Threaded)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (tmp, tree, rt)
}

/// A task that inserts and awaits durability in a loop on a current-thread
/// runtime leaves room for the tasks beside it, though its futures resolve
/// by spinning (the log serves it alone).
#[test]
fn a_lone_writer_does_not_starve_its_neighbours() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    // A real disk: its fsync takes long enough that the spin budget (about
    // two fsyncs) covers it, so the writer's futures resolve by spinning.
    let (_tmp, tree, rt) = on_disk_current_thread();
    let ticks = Arc::new(AtomicU64::new(0));
    let seen = rt.block_on(async {
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    // Back of the run queue (tokio's `yield_now` would wait
                    // for the scheduler's next driver tick instead).
                    let mut yielded = false;
                    std::future::poll_fn(|cx| {
                        if yielded {
                            return std::task::Poll::Ready(());
                        }
                        yielded = true;
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    })
                    .await;
                }
            })
        };
        let writer = {
            let (tree, ticks) = (tree.clone(), ticks.clone());
            tokio::spawn(async move {
                // The most inserts in a row with no turn for the neighbour.
                let (mut streak, mut longest, mut last) = (0, 0, 0);
                for i in 0..800 {
                    tree.insert_durable(leaf(i)).await.unwrap();
                    let now = ticks.load(Ordering::Relaxed);
                    streak = if now == last { streak + 1 } else { 0 };
                    longest = longest.max(streak);
                    last = now;
                }
                longest
            })
        };
        let seen = writer.await.unwrap();
        ticker.abort();
        seen
    });
    // A writer yields before its ninth spin in a row. A future already
    // durable when first polled is ready at once, never `Pending`, so one
    // decided before its poll (the thread was preempted meanwhile) extends
    // the run: allow for a few.
    assert!(
        seen <= 16,
        "{seen} durable inserts in a row left the neighbour no turn"
    );
    futures::executor::block_on(tree.close()).unwrap();
}

/// Tasks inserting and awaiting in loops on a current-thread runtime share
/// group commits. A future that spins (the log looked like it served one
/// writer) holds the only executor thread, so no other task can append
/// during that fsync: every group held one record and the log stayed
/// "lone" for good, one fsync per insert for any number of tasks.
#[test]
fn tasks_on_a_current_thread_runtime_share_group_commits() {
    // A real disk: syncs long enough for tasks to pile up behind them.
    let (_tmp, tree, rt) = on_disk_current_thread();
    rt.block_on(async {
        // A lone writer first, so the log starts in its lone mode.
        for i in 0..50 {
            tree.insert_durable(leaf(i)).await.unwrap();
        }
        let before = tree.metrics();
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let tree = tree.clone();
                tokio::spawn(async move {
                    for i in 0..40u64 {
                        let ins = tree.insert(leaf(1000 + t * 100 + i)).await.unwrap();
                        ins.durable.await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let m = tree.metrics();
        let (records, fsyncs) = (
            m.records_committed - before.records_committed,
            m.fsyncs - before.fsyncs,
        );
        assert_eq!(records, 640);
        // The defect gives one record a commit; how many more share one
        // depends on the machine's load (2.7 in a loaded CI run, more when
        // idle), so the bound only tells sharing from none.
        assert!(
            2 * records >= 3 * fsyncs,
            "16 tasks: {records} records in {fsyncs} group commits"
        );
    });
    futures::executor::block_on(tree.close()).unwrap();
}

/// A durability future whose insert is durable is ready on its first poll,
/// every time, however many are polled in a row on one thread.
#[test]
fn a_durable_future_is_ready_on_its_first_poll() {
    use futures::FutureExt;
    let tmp = tempfile::tempdir().unwrap();
    let tree = T4::open_blocking(Config::new(tmp.path().join("t"))).unwrap();
    futures::executor::block_on(async {
        let mut all = Vec::new();
        for l in leaves(0..200) {
            all.push(tree.insert(l).await.unwrap().durable);
        }
        tree.flush().await.unwrap();
        for (i, d) in all.iter().enumerate() {
            assert!(d.is_durable());
            match d.clone().now_or_never() {
                Some(Ok(())) => {}
                other => panic!("future {i}: {other:?} on its first poll"),
            }
        }
        // And awaited one after another as they are made.
        for l in leaves(200..400) {
            tree.insert_durable(l).await.unwrap();
            let d = tree.insert(l).await.unwrap().durable;
            d.clone().await.unwrap();
            assert!(matches!(d.now_or_never(), Some(Ok(()))));
        }
        tree.close().await.unwrap();
    });
}

/// Dropping the last handle without `close` and opening the same directory
/// at once works (the open waits for the dropped tree to let it go), and
/// finds every durable insert; on every backend, from async code and from
/// plain threads.
#[test]
fn drop_then_reopen_at_once() {
    for io in [IoBackend::Threaded, IoBackend::Uring] {
        if io == IoBackend::Uring && ringtree::io::UringStorage::new().is_err() {
            continue;
        }
        // With a checkpoint due after every insert, a background
        // checkpoint is queued (holding the tree) when the handle goes.
        for every in [None, Some(1)] {
            let tmp = tempfile::tempdir().unwrap();
            let mut cfg = Config::new(tmp.path().join("t")).io(io);
            if let Some(n) = every {
                cfg = cfg.checkpoint(ringtree::CheckpointPolicy::EveryNEntries(n));
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let mut size = 0;
            for round in 0..10u64 {
                let tree = rt.block_on(T4::open(cfg.clone())).unwrap();
                assert_eq!(tree.size(), size, "round {round}");
                rt.block_on(tree.insert_durable(leaf(round))).unwrap();
                // Inserted, not yet durable: the drop's close syncs it.
                rt.block_on(tree.insert(leaf(round + 100))).unwrap();
                size += 2;
                drop(tree);
                let tree = T4::open_blocking(cfg.clone()).unwrap();
                assert_eq!(tree.size(), size, "round {round}");
                drop(tree);
            }
        }
    }
}

/// `IoBackend::Simulated` is a working choice: an in-memory disk, new at
/// each open.
#[test]
fn the_simulated_backend_can_be_chosen_by_value() {
    let cfg = Config::new("/in-memory").io(IoBackend::Simulated);
    let tree = T4::open_blocking(cfg.clone()).unwrap();
    assert_eq!(tree.backend(), IoBackend::Simulated);
    let all = leaves(0..100);
    let root = futures::executor::block_on(async {
        let ins = tree.insert_many(&all).await.unwrap();
        ins.durable.await.unwrap();
        tree.checkpoint().await.unwrap();
        ins.root
    });
    let p = tree.snapshot().proof(42).unwrap();
    p.verify_at(&Blake3, &root, 100).unwrap();
    futures::executor::block_on(tree.close()).unwrap();
    let again = T4::open_blocking(cfg).unwrap();
    assert_eq!(again.size(), 0, "a new disk at each open");
}
