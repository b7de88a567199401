//! Helpers shared by the latency harnesses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

/// An integer setting from the environment.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A histogram of nanoseconds up to 10 minutes.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()
}

/// `n` histograms like [`hist`], every page of their counts already
/// written: made before a timed run, so that the harness's own allocations
/// and page faults (a 240 KB histogram per task) stay out of the figures.
pub fn touched_hists(n: usize) -> Vec<Histogram<u64>> {
    (0..n)
        .map(|_| {
            let mut h = hist();
            h.record(1).unwrap();
            // Writes every count.
            h.reset();
            h
        })
        .collect()
}

/// Quantile `q` in microseconds.
pub fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One line: count, p50/p99/p999/max in µs, and `extra`.
pub fn row(name: &str, h: &Histogram<u64>, extra: &str) {
    println!(
        "{name:46} n={:>8} p50={:>9.1}µs p99={:>9.1}µs p999={:>9.1}µs max={:>10.1}µs {extra}",
        h.len(),
        us(h, 0.5),
        us(h, 0.99),
        us(h, 0.999),
        h.max() as f64 / 1000.0
    );
}

/// `dir/name`, emptied. What a removal frees is handed back to the disk
/// (the file system may discard it at its next journal commit) before
/// the workload starts, not during it.
pub fn fresh(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    if std::fs::remove_dir_all(&d).is_ok() {
        settle();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Commits every file system's pending metadata and writes (and so any
/// discards of freed blocks) now.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and
    // cannot fail.
    unsafe { libc::sync() };
}
