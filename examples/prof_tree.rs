//! Profiling driver (not a user example): 1000 tasks inserting and awaiting
//! durability for a few seconds.
//!
//! `cargo run --release --example prof_tree [-- SECONDS]` prints the rate
//! (what `perf record` of it profiles). With `--tail` it also keeps every
//! insert's start and latency and prints the percentiles, how fair the
//! executor was to each task, how the slowest 1% cluster in time, and the
//! tree's own fsync latencies. Env: `PROF_URING` (io_uring backend),
//! `PROF_SPIN_US` (the committer's spin), `PROF_SEGMENT_MB` (WAL segment
//! size) and `PROF_WORKERS` (tokio worker threads, default 2).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringtree::{Blake3, Config, IoBackend, Tree};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tail = args.iter().any(|a| a == "--tail");
    let secs = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if tail { 5 } else { 3 });
    let dir = std::env::temp_dir().join("ringtree-prof-tree");
    if std::fs::remove_dir_all(&dir).is_ok() {
        // The last run's segments are freed (and discarded) now, not
        // during this run.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    let io = if std::env::var("PROF_URING").is_ok() {
        IoBackend::Uring
    } else {
        IoBackend::Threaded
    };
    let cfg = Config::new(&dir)
        .io(io)
        .spin(Duration::from_micros(env("PROF_SPIN_US", 50)))
        .segment_size(env("PROF_SEGMENT_MB", 64) << 20);
    let tree = Tree::<Blake3, 4, 16>::open_blocking(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("PROF_WORKERS", 2) as usize)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    // Per task: (start in ms since t0, latency in µs) of each insert, when
    // asked for; else only the count.
    let tasks: Vec<(u64, Vec<(u32, u32)>)> = rt.block_on(async {
        let hs: Vec<_> = (0..1000u64)
            .map(|task| {
                let t = tree.clone();
                tokio::spawn(async move {
                    let (mut n, mut v) = (0u64, Vec::new());
                    while Instant::now() < deadline {
                        let leaf = *blake3::hash(&(task << 32 | n).to_le_bytes()).as_bytes();
                        let s = Instant::now();
                        t.insert(leaf).await.unwrap().durable.await.unwrap();
                        if tail {
                            let at = (s - t0).as_millis() as u32;
                            v.push((at, s.elapsed().as_micros() as u32));
                        }
                        n += 1;
                    }
                    (n, v)
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    let n: u64 = tasks.iter().map(|t| t.0).sum();
    println!(
        "{io}: {} durable inserts/s, {} syncs",
        n as f64 / t0.elapsed().as_secs_f64(),
        tree.syncs()
    );
    if tail {
        report_tail(&tasks.into_iter().map(|t| t.1).collect::<Vec<_>>());
        println!("tree fsyncs: {:?}", tree.metrics().fsync_latency);
    }
    futures::executor::block_on(tree.close()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn report_tail(tasks: &[Vec<(u32, u32)>]) {
    let mut all: Vec<u32> = tasks.iter().flatten().map(|s| s.1).collect();
    all.sort_unstable();
    let q = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    println!(
        "latency µs: p50 {} p90 {} p99 {} p999 {} max {}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        all[all.len() - 1]
    );
    let mut means: Vec<f64> = tasks
        .iter()
        .map(|v| v.iter().map(|s| f64::from(s.1)).sum::<f64>() / v.len() as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    println!(
        "fairness: per-task mean latency µs min {:.0} median {:.0} max {:.0}",
        means[0],
        means[means.len() / 2],
        means[means.len() - 1]
    );
    // The slowest 1%: by the millisecond they started in.
    let p99 = q(0.99);
    let mut bins: BTreeMap<u32, u32> = BTreeMap::new();
    for s in tasks.iter().flatten().filter(|s| s.1 >= p99) {
        *bins.entry(s.0).or_default() += 1;
    }
    let mut sizes: Vec<(u32, u32)> = bins.iter().map(|(ms, n)| (*n, *ms)).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    println!(
        "slowest 1%: {} samples starting in {} distinct ms; largest clusters (samples, ms): {:?}",
        bins.values().sum::<u32>(),
        bins.len(),
        &sizes[..sizes.len().min(8)]
    );
}
