//! Checkpoints side by side with rotortree 0.20 (N = 4, MAX_DEPTH = 16),
//! each in a child process of its own so peak RSS is its own:
//! 1. load LEAVES leaves (insert_many in 10k chunks), flush;
//! 2. checkpoint, while one task inserts and awaits durability, timing it;
//! 3. close; reopen without verification; reopen with full verification;
//! 4. peak RSS (VmHWM).
//!
//! `cargo bench --bench checkpoint` (env `RINGTREE_BENCH_LEAVES`, default
//! 10,000,000; `RINGTREE_BENCH_DIR`, default `target/bench-tmp`;
//! `RINGTREE_BENCH_IO=threaded|uring`, default threaded).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringtree::{Blake3, CheckpointPolicy, Config, Hash, IoBackend, Tree};
use rotortree::{Blake3Hasher, FlushPolicy as RFlush, RotorTree, RotorTreeConfig};

type Ours = Tree<Blake3, 4, 16>;
type Theirs = RotorTree<Blake3Hasher, 4, 16>;

fn leaf(i: u64) -> Hash {
    let mut l = [0u8; 32];
    l[..8].copy_from_slice(&i.to_le_bytes());
    l[8..16].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    l
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `dir`, emptied; what the removal freed is handed back to the disk (the
/// file system may discard it at its next journal commit) before the
/// workload starts, not during it.
fn fresh(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        // SAFETY: sync(2) takes no arguments, touches no memory of ours
        // and cannot fail.
        unsafe { libc::sync() };
    }
    std::fs::create_dir_all(dir).unwrap();
}

fn ours_config(dir: &Path) -> Config {
    let io = match std::env::var("RINGTREE_BENCH_IO").as_deref() {
        Ok("uring") => IoBackend::Uring,
        _ => IoBackend::Threaded,
    };
    let mut c = Config::new(dir).io(io).checkpoint(CheckpointPolicy::Manual);
    if let Some(pin) = std::env::var("RINGTREE_BENCH_PIN")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c = c.tiering(ringtree::Tiering {
            pin_above_level: pin,
        });
    }
    c
}

pub fn child_ours(dir: &Path, n: u64) {
    fresh(dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Ours::open_blocking(ours_config(dir)).unwrap();
    let s = Instant::now();
    let chunk: Vec<Hash> = Vec::with_capacity(10_000);
    rt.block_on(async {
        let mut chunk = chunk;
        for c in 0..n.div_ceil(10_000) {
            chunk.clear();
            chunk.extend((c * 10_000..((c + 1) * 10_000).min(n)).map(leaf));
            t.insert_many(&chunk).await.unwrap();
        }
        t.flush().await.unwrap();
    });
    println!("load {:.2} s", s.elapsed().as_secs_f64());
    // A durable writer runs through the checkpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (t, stop) = (t.clone(), stop.clone());
        rt.spawn(async move {
            let (mut worst, mut n_ins) = (Duration::ZERO, 0u64);
            let mut i = 1u64 << 40;
            let mut slow = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                t.insert_durable(leaf(i)).await.unwrap();
                let d = s.elapsed();
                worst = worst.max(d);
                if d > Duration::from_millis(3) {
                    slow.push((s, d));
                }
                n_ins += 1;
                i += 1;
            }
            if std::env::var("RINGTREE_BENCH_TIMELINE").is_ok() {
                for (s, d) in slow {
                    eprintln!("slow insert {:.2} ms at {:?}", d.as_secs_f64() * 1e3, s);
                }
            }
            (worst, n_ins)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let s = Instant::now();
    if std::env::var("RINGTREE_BENCH_TIMELINE").is_ok() {
        eprintln!("checkpoint starts at {s:?}");
    }
    rt.block_on(t.checkpoint()).unwrap();
    let took = s.elapsed();
    if std::env::var("RINGTREE_BENCH_TIMELINE").is_ok() {
        eprintln!("checkpoint ends at {:?}", Instant::now());
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (worst, n_ins) = rt.block_on(writer).unwrap();
    println!("checkpoint {:.3} s", took.as_secs_f64());
    println!(
        "writer worst {:.2} ms over {n_ins} durable inserts",
        worst.as_secs_f64() * 1e3
    );
    let root = t.root();
    rt.block_on(t.close()).unwrap();
    drop(t);
    let s = Instant::now();
    let t = Ours::open_blocking(ours_config(dir)).unwrap();
    println!("reopen {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
    assert_eq!(t.root(), root);
    // Proofs from the reopened (mapped) levels.
    let snap = t.snapshot();
    let (size, proof_root) = (snap.size(), snap.root().unwrap());
    let prove = |what: &str| {
        let s = Instant::now();
        for k in 0..10_000u64 {
            let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % size;
            snap.proof(i)
                .unwrap()
                .verify_at(&Blake3, &proof_root, size)
                .unwrap();
        }
        println!(
            "10k proofs {what} {:.1} ms",
            s.elapsed().as_secs_f64() * 1e3
        );
    };
    prove("after reopen");
    // The same proofs again: every chunk they read was read before.
    prove("again (steady)");
    drop(snap);
    rt.block_on(t.close()).unwrap();
    drop(t);
    let s = Instant::now();
    let t = Ours::open_blocking(ours_config(dir).verify_on_open(true)).unwrap();
    println!("reopen verified {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
    assert_eq!(t.root(), root);
    rt.block_on(t.close()).unwrap();
    println!("peak rss {:.0} MB", peak_rss_mb());
}

fn theirs_config(dir: &Path, verify: bool) -> RotorTreeConfig {
    RotorTreeConfig {
        path: dir.to_path_buf(),
        flush_policy: RFlush::Interval(Duration::from_millis(10)),
        checkpoint_policy: Default::default(),
        tiering: Default::default(),
        verify_checkpoint: verify,
    }
}

pub fn child_theirs(dir: &Path, n: u64) {
    fresh(dir);
    let r = Arc::new(Theirs::open(Blake3Hasher, theirs_config(dir, false)).unwrap());
    let s = Instant::now();
    let mut chunk: Vec<Hash> = Vec::with_capacity(10_000);
    for c in 0..n.div_ceil(10_000) {
        chunk.clear();
        chunk.extend((c * 10_000..((c + 1) * 10_000).min(n)).map(leaf));
        r.insert_many(&chunk).unwrap();
    }
    r.flush().unwrap();
    println!("load {:.2} s", s.elapsed().as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut worst, mut n_ins) = (Duration::ZERO, 0u64);
            let mut i = 1u64 << 40;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                r.insert_durable(leaf(i)).unwrap();
                worst = worst.max(s.elapsed());
                n_ins += 1;
                i += 1;
            }
            (worst, n_ins)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let s = Instant::now();
    r.checkpoint().unwrap(); // synchronous in rotortree 0.20
    let took = s.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (worst, n_ins) = writer.join().unwrap();
    println!("checkpoint {:.3} s", took.as_secs_f64());
    println!(
        "writer worst {:.2} ms over {n_ins} durable inserts",
        worst.as_secs_f64() * 1e3
    );
    let root = r.root();
    Arc::into_inner(r).unwrap().close().unwrap();
    let s = Instant::now();
    let r = Theirs::open(Blake3Hasher, theirs_config(dir, false)).unwrap();
    println!("reopen {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
    assert_eq!(r.root(), root);
    let snap = r.snapshot();
    let s = Instant::now();
    for k in 0..10_000u64 {
        let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % snap.size();
        assert!(
            snap.generate_proof(i)
                .unwrap()
                .verify(&Blake3Hasher)
                .unwrap()
        );
    }
    println!(
        "10k proofs after reopen {:.1} ms",
        s.elapsed().as_secs_f64() * 1e3
    );
    drop(snap);
    r.close().unwrap();
    let s = Instant::now();
    let r = Theirs::open(Blake3Hasher, theirs_config(dir, true)).unwrap();
    println!("reopen verified {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
    r.close().unwrap();
    println!("peak rss {:.0} MB", peak_rss_mb());
}

/// Leaves to load (`RINGTREE_BENCH_LEAVES`, default 10M).
pub fn leaves() -> u64 {
    std::env::var("RINGTREE_BENCH_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// In a child process (`--child ours|theirs`): runs that side's workload
/// and returns true.
pub fn run_child() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(pos) = args.iter().position(|a| a == "--child") else {
        return false;
    };
    // Under the workspace root's `target/`: a bench runs in its package's folder.
    let base =
        PathBuf::from(std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-tmp").into()
        }));
    let who = &args[pos + 1];
    let dir = base.join(format!("ckpt-{who}"));
    if who == "ours" {
        child_ours(&dir, leaves())
    } else {
        child_theirs(&dir, leaves())
    }
    let _ = std::fs::remove_dir_all(&dir);
    true
}

#[allow(dead_code)]
fn main() {
    if run_child() {
        return;
    }
    let n = leaves();
    let exe = std::env::current_exe().unwrap();
    let mut results = Vec::new();
    for who in ["ours", "theirs"] {
        let out = Command::new(&exe).args(["--child", who]).output().unwrap();
        assert!(
            out.status.success(),
            "{who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        results.push(text);
    }
    println!("== {n} leaves, N = 4: ringtree | rotortree 0.20");
    let ours: Vec<&str> = results[0].lines().collect();
    let theirs: Vec<&str> = results[1].lines().collect();
    for (a, b) in ours.iter().zip(&theirs) {
        println!("{a:55} | {b}");
    }
}
