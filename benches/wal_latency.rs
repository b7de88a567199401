//! Latency harness for the write-ahead log (HDR histograms, p50/p99/p999/max).
//!
//! `cargo bench --bench wal_latency` runs, in one process on one disk:
//! 1. raw `pwrite` (64 B) + `fdatasync` in a loop on a pre-zeroed file — the
//!    disk's floor;
//! 2. one task appending 64-byte records to the log and awaiting each, per
//!    backend (io_uring, threaded);
//! 3. 1,000 tasks appending and awaiting for 5 s, per backend: durable
//!    records/s, latency percentiles, fsyncs/s and records per fsync.
//!
//! Options (env): `RINGTREE_BENCH_DIR` (default `target/bench-tmp`),
//! `RINGTREE_BENCH_SECS` (default 5), `RINGTREE_BENCH_SEQ` (default 2000).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

mod common;
use common::{env, fresh, hist, row, touched_hists};
use ringtree::io::{Storage, ThreadedStorage, UringStorage};
use ringtree::wal::{Log, LogConfig};

/// The floor: 64 B pwrite + fdatasync at increasing offsets of a pre-zeroed
/// (written and synced) file.
struct Raw {
    file: std::fs::File,
    /// The same file through the io_uring backend (linked write + fsync).
    ring: Option<Box<dyn ringtree::io::StorageFile>>,
    at: u64,
}

impl Raw {
    fn new(dir: &Path, n: u64, uring: Option<&Arc<dyn Storage>>) -> Self {
        let path = fresh(dir, "raw").join("file");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for i in 0..(2 * n * 64).div_ceil(1 << 20) + 1 {
            file.write_all_at(&zeros, i << 20).unwrap();
        }
        file.sync_all().unwrap();
        let ring = uring.map(|s| s.open(&path, false).unwrap());
        Raw { file, ring, at: 0 }
    }
    fn op(&mut self) {
        self.file.write_all_at(&[7u8; 64], self.at).unwrap();
        self.file.sync_data().unwrap();
        self.at += 64;
    }
    fn ring_op(&mut self) {
        self.ring
            .as_ref()
            .unwrap()
            .write_sync(self.at, &[&[7u8; 64]])
            .unwrap();
        self.at += 64;
    }
}

fn open_log(storage: Arc<dyn Storage>, dir: &Path) -> Log {
    let cfg = LogConfig::default();
    Log::open(storage, dir, &cfg, 0, &mut |_, _| Ok(())).unwrap()
}

/// One writer awaiting each append, interleaved in rounds of 100 with the
/// raw loop and the other backends so the disk's drift hits all alike.
fn one_writer(
    rt: &tokio::runtime::Runtime,
    backends: &[(&str, Arc<dyn Storage>)],
    dir: &Path,
    n: u64,
) {
    let uring = backends
        .iter()
        .find(|(n, _)| *n == "io_uring")
        .map(|(_, s)| s);
    let mut raw = Raw::new(dir, n, uring);
    let logs: Vec<Log> = backends
        .iter()
        .map(|(name, s)| open_log(s.clone(), &fresh(dir, &format!("one-{name}"))))
        .collect();
    let mut hs: Vec<Histogram<u64>> = (0..=logs.len()).map(|_| hist()).collect();
    let mut ring_h = hist();
    let rec = [7u8; 64];
    rt.block_on(async {
        for log in &logs {
            for _ in 0..50 {
                log.append(&[&rec]).await.unwrap().await.unwrap();
            }
        }
        for _ in 0..n.div_ceil(100) {
            for _ in 0..100 {
                let t = Instant::now();
                raw.op();
                hs[0].record(t.elapsed().as_nanos() as u64).unwrap();
            }
            if raw.ring.is_some() {
                for _ in 0..100 {
                    let t = Instant::now();
                    raw.ring_op();
                    ring_h.record(t.elapsed().as_nanos() as u64).unwrap();
                }
            }
            for (i, log) in logs.iter().enumerate() {
                for _ in 0..100 {
                    let t = Instant::now();
                    log.append(&[&rec]).await.unwrap().await.unwrap();
                    hs[i + 1].record(t.elapsed().as_nanos() as u64).unwrap();
                }
            }
        }
    });
    for log in logs {
        log.close().unwrap();
    }
    row("raw pwrite+fdatasync, pre-zeroed file", &hs[0], "");
    let floor = hs[0].value_at_quantile(0.5) as f64;
    if !ring_h.is_empty() {
        let ratio = ring_h.value_at_quantile(0.5) as f64 / floor;
        row(
            "raw io_uring linked write+fdatasync",
            &ring_h,
            &format!("p50 ratio to raw {ratio:.2}x"),
        );
    }
    for ((name, _), h) in backends.iter().zip(&hs[1..]) {
        let ratio = h.value_at_quantile(0.5) as f64 / floor;
        row(
            &format!("ringtree log append+await ({name})"),
            h,
            &format!("p50 ratio to raw {ratio:.2}x"),
        );
    }
}

fn many_tasks(
    rt: &tokio::runtime::Runtime,
    storage: Arc<dyn Storage>,
    dir: &Path,
    tasks: usize,
    secs: u64,
) -> (Histogram<u64>, u64, f64) {
    let log = Arc::new(open_log(storage, dir));
    let mut spare = touched_hists(tasks);
    let syncs0 = log.syncs();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let h = rt.block_on(async {
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                let log = log.clone();
                let mut h = spare.pop().expect("one per task");
                tokio::spawn(async move {
                    let rec = [7u8; 64];
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        log.append(&[&rec]).await.unwrap().await.unwrap();
                        h.record(t.elapsed().as_nanos() as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        let mut all = hist();
        for j in hs {
            all.add(j.await.unwrap()).unwrap();
        }
        all
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let syncs = log.syncs() - syncs0;
    Arc::into_inner(log).unwrap().close().unwrap();
    (h, syncs, elapsed)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = PathBuf::from(
        std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| "target/bench-tmp".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let n = env("RINGTREE_BENCH_SEQ", 2000);
    let secs = env("RINGTREE_BENCH_SECS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut backends: Vec<(&str, Arc<dyn Storage>)> = vec![("threaded", Arc::new(ThreadedStorage))];
    match UringStorage::new() {
        Ok(u) => backends.insert(0, ("io_uring", Arc::new(u))),
        Err(e) => println!("io_uring unavailable: {e}"),
    }

    println!("== one writer, 64 B records, await each (x{n}, interleaved in rounds of 100)");
    one_writer(&rt, &backends, &dir, n);

    println!("== 1000 tasks, 64 B records, append+await for {secs} s");
    for (name, s) in &backends {
        let (h, syncs, el) = many_tasks(
            &rt,
            s.clone(),
            &fresh(&dir, &format!("many-{name}")),
            1000,
            secs,
        );
        let recs = h.len() as f64;
        row(
            &format!("ringtree log x1000 tasks ({name})"),
            &h,
            &format!(
                "{:.0} durable rec/s, {:.0} fsyncs/s, {:.1} rec/fsync",
                recs / el,
                syncs as f64 / el,
                recs / syncs.max(1) as f64
            ),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
