//! The threads a tree owns: a bounded number for its whole life (the
//! committer, the segment preparer, the segment reclaimer and the worker),
//! however many checkpoints and background checks it runs, and none once
//! it is closed or dropped. Its own test binary: it counts the process's
//! threads.

mod common;

use std::time::{Duration, Instant};

use common::leaves;
use ringtree::{Blake3, CheckpointPolicy, Config, Tree};

type T4 = Tree<Blake3, 4, 32>;

/// The names of this process's threads that start with `ringtree`.
fn tree_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm"))
            && name.starts_with("ringtree")
        {
            names.push(name.trim().to_string());
        }
    }
    names.sort();
    names
}

/// Waits (bounded) until no tree thread is left.
fn none_left() {
    let t0 = Instant::now();
    while !tree_threads().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "threads outlive their tree: {:?}",
            tree_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

const MAX_THREADS: usize = 4;

#[test]
fn a_tree_owns_a_bounded_number_of_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::new(tmp.path().join("t"))
        .segment_size(1 << 20)
        .checkpoint(CheckpointPolicy::EveryNEntries(500));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut most = 0;
    for round in 0..3u64 {
        let tree = rt.block_on(T4::open(cfg.clone())).unwrap();
        rt.block_on(async {
            for (i, chunk) in leaves(round * 20_000..(round + 1) * 20_000)
                .chunks(100)
                .enumerate()
            {
                let ins = tree.insert_many(chunk).await.unwrap();
                if i % 20 == 0 {
                    ins.durable.await.unwrap();
                    tree.checkpoint().await.unwrap();
                }
                most = most.max(tree_threads().len());
            }
        });
        let n = tree_threads();
        assert!(n.len() <= MAX_THREADS, "{n:?}");
        if round % 2 == 0 {
            rt.block_on(tree.close()).unwrap();
            drop(tree);
        } else {
            drop(tree);
        }
        none_left();
    }
    assert!(most <= MAX_THREADS, "{most} threads at once");
    assert!(most >= 3, "the count sees the tree's threads ({most})");
}
