//! What each scheduling option of `Config` buys, on each runtime shape a
//! user may embed the tree in: tokio with 2 workers, tokio with 1 worker,
//! tokio's current-thread runtime, and plain OS threads (blocking
//! `Durable::wait`). For each option, its default and the other value are
//! run alternately, `RINGTREE_BENCH_ROUNDS` times each (default 2), on two
//! workloads: one writer inserting and awaiting each insert (latency), and
//! many writers doing the same (1,000 tasks, or 64 threads; rate and p99).
//!
//! `cargo bench --bench policies`. Env: `RINGTREE_BENCH_DIR` (default
//! `target/bench-tmp`), `RINGTREE_BENCH_SECS` (per run, default 3),
//! `RINGTREE_BENCH_ROUNDS` (2), `RINGTREE_BENCH_SHAPES` (e.g. `mt2,threads`;
//! default all four), `RINGTREE_BENCH_OPTIONS` (e.g. `lone_waiter_spin`;
//! default all).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringtree::{Blake3, CheckpointPolicy, Config, Tree};

type T = Tree<Blake3, 4, 32>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Mt2,
    Mt1,
    Current,
    Threads,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Mt2 => "mt2",
            Shape::Mt1 => "mt1",
            Shape::Current => "current",
            Shape::Threads => "threads",
        }
    }

    fn runtime(self) -> Option<tokio::runtime::Runtime> {
        let rt = match self {
            Shape::Mt2 => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            Shape::Mt1 => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build(),
            Shape::Current => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Shape::Threads => return None,
        };
        Some(rt.unwrap())
    }
}

/// An option of `Config` and its two values (the default first).
struct Option_ {
    name: &'static str,
    values: [&'static str; 2],
    apply: fn(Config, usize) -> Config,
}

fn options() -> Vec<Option_> {
    vec![
        Option_ {
            name: "lone_waiter_spin",
            values: ["true (default)", "false"],
            apply: |c, i| c.lone_waiter_spin(i == 0),
        },
        Option_ {
            name: "thread_yield_every",
            values: ["256 (default)", "0"],
            apply: |c, i| if i == 0 { c } else { c.thread_yield_every(0) },
        },
        Option_ {
            name: "spin",
            values: ["50 µs (default)", "0"],
            apply: |c, i| {
                if i == 0 { c } else { c.spin(Duration::ZERO) }
            },
        },
    ]
}

/// Latencies (µs) of every insert-to-durable, and the inserts made.
struct Run {
    hist: Histogram<u64>,
    secs: f64,
}

fn leaf(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn open(dir: &Path, cfg: fn(Config, usize) -> Config, value: usize) -> T {
    let _ = std::fs::remove_dir_all(dir);
    let c = Config::new(dir).checkpoint(CheckpointPolicy::Manual);
    T::open_blocking(cfg(c, value)).unwrap()
}

/// `writers` writers insert and await each insert for `secs`.
fn run(shape: Shape, tree: &T, writers: usize, secs: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let hists: Vec<Histogram<u64>> = match shape.runtime() {
        Some(rt) => rt.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let tree = tree.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut h = Histogram::<u64>::new(3).unwrap();
                        let mut i = w as u64;
                        while !stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            let ins = tree.insert(leaf(i)).await.unwrap();
                            ins.durable.await.unwrap();
                            h.record(t0.elapsed().as_micros() as u64).unwrap();
                            i += writers as u64;
                        }
                        h
                    })
                })
                .collect();
            tokio::time::sleep(secs).await;
            stop.store(true, Ordering::Relaxed);
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }),
        None => {
            let threads: Vec<_> = (0..writers)
                .map(|w| {
                    let tree = tree.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut h = Histogram::<u64>::new(3).unwrap();
                        let mut i = w as u64;
                        while !stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            let ins = futures::executor::block_on(tree.insert(leaf(i))).unwrap();
                            ins.durable.wait().unwrap();
                            h.record(t0.elapsed().as_micros() as u64).unwrap();
                            i += writers as u64;
                        }
                        h
                    })
                })
                .collect();
            std::thread::sleep(secs);
            stop.store(true, Ordering::Relaxed);
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        }
    };
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for h in hists {
        hist.add(h).unwrap();
    }
    Run {
        hist,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let base = PathBuf::from(
        std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| "target/bench-tmp".into()),
    )
    .join("policies");
    let secs = Duration::from_secs_f64(
        std::env::var("RINGTREE_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let rounds: usize = std::env::var("RINGTREE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let shapes: Vec<Shape> = [Shape::Mt2, Shape::Mt1, Shape::Current, Shape::Threads]
        .into_iter()
        .filter(|s| {
            std::env::var("RINGTREE_BENCH_SHAPES")
                .map(|v| v.split(',').any(|x| x == s.name()))
                .unwrap_or(true)
        })
        .collect();
    let wanted = std::env::var("RINGTREE_BENCH_OPTIONS").ok();
    println!("| option | value | shape | writers | inserts/s | p50 µs | p99 µs |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for opt in options() {
        if wanted
            .as_deref()
            .is_some_and(|w| !w.split(',').any(|x| x == opt.name))
        {
            continue;
        }
        for &shape in &shapes {
            let many = if shape == Shape::Threads { 64 } else { 1000 };
            for writers in [1, many] {
                let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
                for _ in 0..rounds {
                    for (value, out) in runs.iter_mut().enumerate() {
                        let tree = open(&base, opt.apply, value);
                        out.push(run(shape, &tree, writers, secs));
                        futures::executor::block_on(tree.close()).unwrap();
                    }
                }
                for (value, rs) in runs.iter().enumerate() {
                    let fmt = |f: &dyn Fn(&Run) -> f64| {
                        rs.iter()
                            .map(|r| format!("{:.0}", f(r)))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    };
                    println!(
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        opt.name,
                        opt.values[value],
                        shape.name(),
                        writers,
                        fmt(&|r| r.hist.len() as f64 / r.secs),
                        fmt(&|r| r.hist.value_at_quantile(0.5) as f64),
                        fmt(&|r| r.hist.value_at_quantile(0.99) as f64),
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
