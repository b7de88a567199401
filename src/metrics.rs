//! Counters and latency histograms a tree keeps about itself, read with
//! `Tree::metrics()`.
//!
//! Owns the histogram type; the log and the tree record into it. Recording
//! is a few relaxed atomic adds, done once per group commit or checkpoint,
//! never per insert.
//!
//! With the `metrics` feature the same figures also go to the [`metrics`
//! facade](https://docs.rs/metrics) (whatever recorder the application
//! installed: Prometheus, StatsD, …), labelled `tree=<directory>`:
//!
//! | name | kind | unit |
//! |---|---|---|
//! | `ringtree_fsyncs_total` | counter | group commits |
//! | `ringtree_records_committed_total` | counter | records |
//! | `ringtree_fsync_seconds` | histogram | seconds per write + fdatasync |
//! | `ringtree_wal_bytes` | gauge | the log's durable end |
//! | `ringtree_durable_lag_bytes` | gauge | appended, not yet durable (at each commit) |
//! | `ringtree_checkpoint_seconds` | histogram | seconds per checkpoint |
//! | `ringtree_leaves` | gauge | leaves in the tree |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A lock-free histogram of durations with power-of-two buckets (in
/// microseconds): quantiles are upper bounds within a factor of two.
pub(crate) struct Histogram {
    buckets: [AtomicU64; 64],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    pub(crate) const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; 64],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        // Bucket i holds values below 2^i µs (0 in bucket 0).
        let i = (64 - us.leading_zeros()) as usize;
        self.buckets[i.min(63)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| {
            if total == 0 {
                return Duration::ZERO;
            }
            let want = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    // Bucket i holds values below 2^i µs.
                    return Duration::from_micros(if i == 0 { 0 } else { (1u64 << i) - 1 });
                }
            }
            Duration::from_micros(self.max_us.load(Ordering::Relaxed))
        };
        let count = self.count.load(Ordering::Relaxed);
        LatencySummary {
            count,
            mean: Duration::from_micros(
                self.sum_us
                    .load(Ordering::Relaxed)
                    .checked_div(count)
                    .unwrap_or(0),
            ),
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: Duration::from_micros(self.max_us.load(Ordering::Relaxed)),
        }
    }
}

/// Handles into the `metrics` facade for one tree, registered once at open
/// so each update is one call on the recorder's handle.
#[cfg(feature = "metrics")]
pub(crate) struct Export {
    fsyncs: ::metrics::Counter,
    records: ::metrics::Counter,
    fsync_seconds: ::metrics::Histogram,
    wal_bytes: ::metrics::Gauge,
    durable_lag: ::metrics::Gauge,
    checkpoint_seconds: ::metrics::Histogram,
    leaves: ::metrics::Gauge,
    /// Set once the recorder panicked: nothing more goes to it.
    off: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "metrics")]
impl Export {
    pub(crate) fn new(tree: &std::path::Path) -> Self {
        let label = tree.display().to_string();
        let l = [("tree", label)];
        Self {
            fsyncs: ::metrics::counter!("ringtree_fsyncs_total", &l),
            records: ::metrics::counter!("ringtree_records_committed_total", &l),
            fsync_seconds: ::metrics::histogram!("ringtree_fsync_seconds", &l),
            wal_bytes: ::metrics::gauge!("ringtree_wal_bytes", &l),
            durable_lag: ::metrics::gauge!("ringtree_durable_lag_bytes", &l),
            checkpoint_seconds: ::metrics::histogram!("ringtree_checkpoint_seconds", &l),
            leaves: ::metrics::gauge!("ringtree_leaves", &l),
            off: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `f`, which calls the application's recorder, unless an earlier
    /// call panicked. A panic turns the export off instead of reaching the
    /// thread that reported (the committer's, whose panic would poison the
    /// log, or an inserting task's).
    fn guarded(&self, f: impl FnOnce()) {
        if self.off.load(Ordering::Relaxed) {
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            self.off.store(true, Ordering::Relaxed);
            tracing::error!("the metrics recorder panicked; ringtree stops exporting to it");
        }
    }

    /// The number of leaves.
    pub(crate) fn leaves(&self, n: u64) {
        self.guarded(|| self.leaves.set(n as f64));
    }

    /// One group commit: its latency, records, the new durable end and
    /// what was appended past it meanwhile.
    pub(crate) fn group(&self, took: Duration, records: u64, durable: u64, reserved: u64) {
        self.guarded(|| {
            self.fsyncs.increment(1);
            self.records.increment(records);
            self.fsync_seconds.record(took.as_secs_f64());
            self.wal_bytes.set(durable as f64);
            self.durable_lag
                .set(reserved.saturating_sub(durable) as f64);
        });
    }

    /// One checkpoint's duration.
    pub(crate) fn checkpoint(&self, took: Duration) {
        self.guarded(|| self.checkpoint_seconds.record(took.as_secs_f64()));
    }
}

/// Summary of a latency histogram. Quantiles are upper bounds of
/// power-of-two buckets (within a factor of two); mean and max are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median (bucket upper bound).
    pub p50: Duration,
    /// 99th percentile (bucket upper bound).
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

/// A reading of a tree's counters, from [`Tree::metrics`](crate::Tree::metrics).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Leaves in the tree.
    pub leaves: u64,
    /// The log's end position: bytes appended since the log was created.
    pub wal_bytes: u64,
    /// Bytes appended but not yet durable.
    pub durable_lag_bytes: u64,
    /// Group commits (write + fdatasync) since open.
    pub fsyncs: u64,
    /// Records those commits made durable.
    pub records_committed: u64,
    /// Latency of a group commit's write + fdatasync.
    pub fsync_latency: LatencySummary,
    /// Checkpoints written since open, and how long they took.
    pub checkpoint_duration: LatencySummary,
    /// Log segments made since open by reusing one a checkpoint freed.
    pub wal_segments_reused: u64,
    /// Log segments made since open by writing a new file full of zeros.
    pub wal_segments_zeroed: u64,
    /// Background checkpoints that failed since open.
    pub checkpoint_failures: u64,
    /// Bytes of log the open replayed on top of the checkpoint it loaded.
    pub replayed_at_open: u64,
    /// Checkpointed chunks whose checksum was checked since open, on first
    /// use or by the background check.
    pub chunks_verified: u64,
    /// Checkpointed chunks that failed their check since open.
    pub chunks_corrupt: u64,
    /// Chunks of internal levels that failed their check and were
    /// recomputed from their children since open (the next checkpoint
    /// writes them back).
    pub chunks_repaired: u64,
}

impl Metrics {
    /// Records per fsync on average: how much the group commit batches.
    pub fn records_per_fsync(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.records_committed as f64 / self.fsyncs as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_samples() {
        let h = Histogram::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(u64::MAX));
        let s = h.summary();
        assert_eq!((s.count, s.p50), (2, Duration::ZERO));
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, Duration::from_micros(1000));
        assert_eq!(s.mean, Duration::from_micros(500));
        // p50 = 500 µs lies in [256, 512): reported as 511.
        assert_eq!(s.p50, Duration::from_micros(511));
        assert_eq!(s.p99, Duration::from_micros(1023));
        assert_eq!(Histogram::new().summary(), LatencySummary::default());
    }
}
