//! The `metrics` feature with a recorder whose histograms panic (the first
//! one recorded is the fsync latency, on the committer's thread): the tree
//! goes on (no poisoned log, no failed insert) and stops exporting.
#![cfg(feature = "metrics")]

mod common;

use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use ringtree::io::SimStorage;
use ringtree::{Blake3, CheckpointPolicy, Tree};

struct Panicky;

impl CounterFn for Panicky {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}

impl GaugeFn for Panicky {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl HistogramFn for Panicky {
    fn record(&self, _: f64) {
        panic!("recorder: histogram");
    }
}

struct PanickingRecorder;

impl Recorder for PanickingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Panicky))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Panicky))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Panicky))
    }
}

#[test]
fn a_panicking_recorder_does_not_poison_the_tree() {
    metrics::set_global_recorder(PanickingRecorder).expect("the only recorder of this binary");
    let sim = SimStorage::new(3);
    let cfg = common::sim_config(&sim, "/panicky").checkpoint(CheckpointPolicy::Manual);
    let tree = Tree::<Blake3, 4, 16>::open_blocking(cfg).unwrap();
    futures::executor::block_on(async {
        for i in 0..50 {
            tree.insert_durable(common::leaf(i)).await.unwrap();
        }
        tree.checkpoint().await.unwrap();
        tree.insert_many(&common::leaves(50..80))
            .await
            .unwrap()
            .durable
            .await
            .unwrap();
    });
    assert_eq!(tree.size(), 80);
    assert!(tree.metrics().fsyncs >= 51);
    futures::executor::block_on(tree.close()).unwrap();
    let tree = Tree::<Blake3, 4, 16>::open_blocking(common::sim_config(&sim, "/panicky")).unwrap();
    assert_eq!(tree.size(), 80);
    futures::executor::block_on(tree.close()).unwrap();
}
