//! The `metrics` feature: a tree's counters reach the installed recorder,
//! labelled with its directory, and agree with `Tree::metrics()`.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use ringtree::io::SimStorage;
use ringtree::{Blake3, CheckpointPolicy, Tree};

#[test]
fn counters_reach_the_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let sim = SimStorage::new(7);
    let cfg = common::sim_config(&sim, "/facade").checkpoint(CheckpointPolicy::Manual);
    let tree = Tree::<Blake3, 4, 16>::open_blocking(cfg).unwrap();
    futures::executor::block_on(async {
        for i in 0..100 {
            tree.insert_durable(common::leaf(i)).await.unwrap();
        }
        tree.insert_many(&common::leaves(100..150))
            .await
            .unwrap()
            .durable
            .await
            .unwrap();
        tree.checkpoint().await.unwrap();
    });
    let m = tree.metrics();

    let mut seen: HashMap<String, DebugValue> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, [("tree", "/facade")], "{}", key.name());
        seen.insert(key.name().to_owned(), value);
    }
    let counter = |n: &str| match seen.get(n) {
        Some(DebugValue::Counter(c)) => *c,
        other => panic!("{n}: {other:?}"),
    };
    let gauge = |n: &str| match seen.get(n) {
        Some(DebugValue::Gauge(g)) => g.0,
        other => panic!("{n}: {other:?}"),
    };
    let samples = |n: &str| match seen.get(n) {
        Some(DebugValue::Histogram(h)) => h.len() as u64,
        other => panic!("{n}: {other:?}"),
    };
    assert!(m.fsyncs >= 101, "{m:?}");
    assert_eq!(counter("ringtree_fsyncs_total"), m.fsyncs);
    assert_eq!(samples("ringtree_fsync_seconds"), m.fsyncs);
    assert_eq!(m.records_committed, 101);
    assert_eq!(counter("ringtree_records_committed_total"), 101);
    assert_eq!(gauge("ringtree_leaves"), 150.0);
    assert_eq!(gauge("ringtree_wal_bytes"), tree.wal_position() as f64);
    assert_eq!(gauge("ringtree_durable_lag_bytes"), 0.0);
    assert_eq!(samples("ringtree_checkpoint_seconds"), 1);
    futures::executor::block_on(tree.close()).unwrap();
}
