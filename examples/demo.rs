//! The main job: a persistent tree in a default directory, many concurrent
//! tasks inserting and awaiting durability, latency percentiles, then close,
//! reopen, check the root and verify proofs.
//!
//! `cargo run --release --example demo [-- DIR [TASKS [SECONDS]]]`
//! (default `target/ringtree-demo`, 1000 tasks, 3 s). Run it twice: the
//! second run recovers the first run's tree and goes on from there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringtree::{Blake3, Config, Hash, Tree};

type T = Tree<Blake3, 4, 32>;

fn leaf(task: u64, n: u64) -> Hash {
    *blake3::hash(&[task.to_le_bytes(), n.to_le_bytes()].concat()).as_bytes()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "target/ringtree-demo".into());
    let tasks: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);

    let t0 = Instant::now();
    let tree = T::open(Config::new(&dir)).await?;
    let start_size = tree.size();
    println!(
        "opened {dir} in {:.1?}: {start_size} leaves recovered, I/O backend {}",
        t0.elapsed(),
        tree.backend()
    );

    // Many tasks insert and await durability, each recording its latency
    // in a histogram made (and its pages touched) before the clock starts.
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut hists: Vec<_> = (0..tasks)
        .map(|_| {
            let mut h = new_hist();
            h.reset();
            h
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let syncs0 = tree.syncs();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let tree = tree.clone();
            let mut h = hists.pop().expect("one per task");
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let l = leaf(task + (start_size << 20), n);
                    let s = Instant::now();
                    let ins = tree.insert(l).await?;
                    ins.durable.await?;
                    h.record(s.elapsed().as_nanos() as u64).unwrap();
                    if n % 64 == 0 {
                        acked.push((ins.index, l));
                    }
                    n += 1;
                }
                Ok::<_, ringtree::Error>((h, acked))
            })
        })
        .collect();
    let mut hist = new_hist();
    let mut samples = Vec::new();
    for h in handles {
        let (h, acked) = h.await??;
        hist.add(h).unwrap();
        samples.extend(acked);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let syncs = tree.syncs() - syncs0;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{tasks} tasks, {secs} s: {} durable inserts, {:.0}/s; {syncs} fsyncs ({:.1} inserts each)",
        hist.len(),
        hist.len() as f64 / elapsed,
        hist.len() as f64 / syncs.max(1) as f64
    );
    println!(
        "insert+durable latency: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1e3
    );

    let root = tree.root().expect("non-empty");
    let size = tree.size();
    tree.close().await?;
    drop(tree);

    let t0 = Instant::now();
    let tree = Arc::new(T::open(Config::new(&dir)).await?);
    println!("reopened in {:.1?}: {} leaves", t0.elapsed(), tree.size());
    assert_eq!(tree.size(), size, "every insert survives close and reopen");
    assert_eq!(tree.root(), Some(root), "same root after reopening");
    let snap = tree.snapshot();
    let t0 = Instant::now();
    for (index, l) in &samples {
        let proof = snap.proof(*index)?;
        assert_eq!(proof.leaf(), *l);
        proof.verify_at(&Blake3, &root, size)?;
    }
    println!(
        "root {} checked; {} inclusion proofs of acknowledged inserts verified in {:.1?}",
        root.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        samples.len(),
        t0.elapsed()
    );
    if start_size > 0 {
        let old = snap.consistency_proof(start_size)?;
        println!(
            "consistency proof from this run's start ({start_size} leaves) to now: {} bytes",
            old.to_bytes().len()
        );
    }
    tree.close().await?;
    Ok(())
}
