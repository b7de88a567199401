//! Rewinds, history and durable reads (ringtree only: rotortree cannot
//! un-append a leaf, prove against an older root, or read its durable
//! prefix without a flush), on the same machine and in the same run as the
//! comparison:
//! 1. from a checkpointed tree of `RINGTREE_BENCH_LEAVES` leaves (10M),
//!    rewinds of 1, 1,000 and 1,000,000 leaves, time until durable,
//!    against one durable insert on the same tree (interleaved);
//! 2. `proof_at` and `update_proof` against `proof` on that tree;
//! 3. 1,000 tasks inserting and awaiting, alone and with a task reading
//!    `durable_root()` in a loop.
//!
//! `cargo bench --bench rewind` alone; `cargo bench --bench compare` runs
//! it too. Env as for `compare` (`RINGTREE_BENCH_DIR`, `RINGTREE_BENCH_SECS`,
//! `RINGTREE_BENCH_IO`, `RINGTREE_BENCH_LEAVES`).

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringtree::{Blake3, Config, Hash, IoBackend, Tree};

type Ours = Tree<Blake3, 4, 16>;

fn leaf(i: u64) -> Hash {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap()
}

/// p50 in microseconds.
fn p50(h: &Histogram<u64>) -> f64 {
    h.value_at_quantile(0.5) as f64 / 1000.0
}

/// What the rewind section measured.
pub struct Figures {
    /// (leaves rewound, p50 µs to durable, runs).
    pub rewinds: Vec<(u64, f64, u64)>,
    /// p50 µs of one durable insert on the same tree, interleaved.
    pub insert_p50: f64,
    /// ns per call: proof, proof_at, update_proof.
    pub proof_ns: (f64, f64, f64),
    /// Durable inserts/s of 1,000 tasks alone, with a `size()` reader,
    /// with a `durable_root()` reader; the reader's calls/s.
    pub load: (f64, f64, f64, f64),
}

fn open(dir: &Path, io: IoBackend) -> Ours {
    Ours::open_blocking(Config::new(dir).io(io)).unwrap()
}

/// Inserts `from..to` (leaf values `leaf(salt + i)`) in large batches.
async fn fill(t: &Ours, from: u64, to: u64, salt: u64) {
    let step = t.max_batch().min(100_000);
    let mut i = from;
    let mut last = None;
    while i < to {
        let n = step.min(to - i);
        let batch: Vec<Hash> = (i..i + n).map(|k| leaf(salt + k)).collect();
        last = Some(t.insert_many(&batch).await.unwrap().durable);
        i += n;
    }
    if let Some(d) = last {
        d.await.unwrap();
    }
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    base: &Path,
    io: IoBackend,
    leaves: u64,
    secs: u64,
) -> Figures {
    let dir = base.join(format!("rewind-{io}"));
    let _ = std::fs::remove_dir_all(&dir);
    let t = open(&dir, io);
    let t0 = Instant::now();
    rt.block_on(fill(&t, 0, leaves, 0));
    rt.block_on(t.checkpoint()).unwrap();
    println!(
        "built and checkpointed {leaves} leaves in {:.1?}",
        t0.elapsed()
    );

    // Rewinds, each then filled back (other leaves) and checkpointed again,
    // so each starts from a checkpointed tree of `leaves` leaves; a durable
    // insert (then rewound) between them.
    let mut insert = hist();
    let mut rewinds = Vec::new();
    let mut salt = 1u64 << 40;
    for (depth, runs) in [(1u64, 40u64), (1_000, 40), (1_000_000, 5)] {
        if depth >= leaves {
            continue;
        }
        let (mut h, mut mem) = (hist(), hist());
        for _ in 0..runs {
            let s = Instant::now();
            let ins = rt.block_on(t.insert(leaf(salt))).unwrap();
            rt.block_on(ins.durable).unwrap();
            insert.record(s.elapsed().as_nanos() as u64).unwrap();
            salt += 1;
            // Durable before the rewind measured: it starts with no sync
            // in flight, as the insert did.
            let back = rt.block_on(t.rewind(leaves)).unwrap();
            rt.block_on(back.durable).unwrap();

            let s = Instant::now();
            let r = rt.block_on(t.rewind(leaves - depth)).unwrap();
            mem.record(s.elapsed().as_nanos() as u64).unwrap();
            rt.block_on(r.durable).unwrap();
            h.record(s.elapsed().as_nanos() as u64).unwrap();
            rt.block_on(fill(&t, leaves - depth, leaves, salt));
            salt += depth;
            rt.block_on(t.checkpoint()).unwrap();
        }
        println!(
            "rewind {depth:>9} leaves of {leaves}, to durable: p50 {:>8.1} µs, max {:>8.1} µs; returned after p50 {:>6.1} µs ({runs} runs)",
            p50(&h),
            h.max() as f64 / 1000.0,
            p50(&mem)
        );
        rewinds.push((depth, p50(&h), runs));
    }
    println!(
        "one durable insert on the same tree: p50 {:.1} µs",
        p50(&insert)
    );

    // History against the present: the same leaves, older sizes.
    let snap = t.snapshot();
    let size = snap.size();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 20_000u64;
    let picks: Vec<(u64, u64)> = (0..n)
        .map(|_| {
            let old = 1 + next() % size;
            (next() % old, old)
        })
        .collect();
    let time = |f: &mut dyn FnMut(u64, u64)| {
        let s = Instant::now();
        for &(i, old) in &picks {
            f(i, old);
        }
        s.elapsed().as_nanos() as f64 / n as f64
    };
    let proof = time(&mut |i, _| {
        std::hint::black_box(snap.proof(i).unwrap());
    });
    let proof_at = time(&mut |i, old| {
        std::hint::black_box(snap.proof_at(i, old).unwrap());
    });
    let olds: Vec<_> = picks
        .iter()
        .map(|&(i, old)| snap.proof_at(i, old).unwrap())
        .collect();
    let s = Instant::now();
    for p in &olds {
        std::hint::black_box(snap.update_proof(p).unwrap());
    }
    let update = s.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "proof {proof:.0} ns, proof_at {proof_at:.0} ns ({:.2}x), update_proof {update:.0} ns ({:.2}x)",
        proof_at / proof,
        update / proof
    );
    drop((snap, olds));
    rt.block_on(t.close()).unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);

    // 1,000 tasks: alone; with a thread reading `size()` every 100 µs (the
    // reader's own cost: its wake-ups and the writer lock); with one
    // reading `durable_root()` as often. Two rounds, in turned-over order.
    let load = |reader: u8| -> (f64, f64) {
        let dir = base.join(format!("durable-root-{io}-{reader}"));
        let _ = std::fs::remove_dir_all(&dir);
        let t = open(&dir, io);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let reads = std::thread::spawn({
            let t = t.clone();
            move || {
                let mut reads = 0u64;
                while reader > 0 && Instant::now() < deadline {
                    if reader == 1 {
                        std::hint::black_box(t.size());
                    } else {
                        std::hint::black_box(t.durable_root());
                    }
                    reads += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                reads
            }
        });
        let t0 = Instant::now();
        let done = rt.block_on(async {
            let ws: Vec<_> = (0..1000u64)
                .map(|task| {
                    let t = t.clone();
                    tokio::spawn(async move {
                        let mut i = task << 32;
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            t.insert(leaf(i)).await.unwrap().durable.await.unwrap();
                            i += 1;
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut done = 0;
            for w in ws {
                done += w.await.unwrap();
            }
            done
        });
        let el = t0.elapsed().as_secs_f64();
        let reads = reads.join().unwrap();
        rt.block_on(t.close()).unwrap();
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
        (done as f64 / el, reads as f64 / el)
    };
    let (mut alone, mut sized, mut with, mut reads) = (0.0, 0.0, 0.0, 0.0);
    // A first run warms the disk and the page cache; then the order turns
    // over between the rounds, so a drift hits all three alike.
    let _ = load(0);
    for round in 0..2 {
        let mut got = [(0.0, 0.0); 3];
        let order: [u8; 3] = if round == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for k in order {
            got[k as usize] = load(k);
        }
        let [(a, _), (z, _), (w, r)] = got;
        println!(
            "1000 tasks insert + await, round {round}: {a:.0}/s alone, {z:.0}/s with a size() reader, {w:.0}/s with a durable_root() reader ({r:.0} reads/s)"
        );
        alone += a / 2.0;
        sized += z / 2.0;
        with += w / 2.0;
        reads += r / 2.0;
    }
    println!(
        "durable_root() reader: {:.3}x the rate alone, {:.3}x the rate with a size() reader",
        with / alone,
        with / sized
    );
    Figures {
        rewinds,
        insert_p50: p50(&insert),
        proof_ns: (proof, proof_at, update),
        load: (alone, sized, with, reads),
    }
}

#[allow(dead_code)]
fn main() {
    let base =
        std::path::PathBuf::from(std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-tmp").into()
        }));
    std::fs::create_dir_all(&base).unwrap();
    let leaves = std::env::var("RINGTREE_BENCH_LEAVES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let secs = std::env::var("RINGTREE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let io = match std::env::var("RINGTREE_BENCH_IO").as_deref() {
        Ok("threaded") => IoBackend::Threaded,
        _ => IoBackend::Uring,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    run(&rt, &base, io, leaves, secs);
}
