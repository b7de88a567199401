//! Loads millions of leaves with `insert_many`, checkpoints, reopens, and
//! reports the rates.
//!
//! `cargo run --release --example bulk_load [-- LEAVES [DIR]] [--checkpoints]`
//! (default 10,000,000 leaves into `target/ringtree-bulk`, created afresh).
//! With `--checkpoints`, the tree checkpoints in the background at the
//! default policy (every 256 MiB of log) while loading, and reuses the log
//! segments each checkpoint retires; without, once at the end.

use std::time::Instant;

use ringtree::{Blake3, CheckpointPolicy, Config, Hash, Tree};

type T = Tree<Blake3, 4, 32>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let checkpoints = std::env::args().any(|a| a == "--checkpoints");
    let mut args = std::env::args().skip(1).filter(|a| a != "--checkpoints");
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let dir = args.next().unwrap_or_else(|| "target/ringtree-bulk".into());
    let _ = std::fs::remove_dir_all(&dir);
    // Manual checkpoints: one at the end instead of one per 256 MiB of log.
    let config = || {
        let c = Config::new(&dir);
        if checkpoints {
            c
        } else {
            c.checkpoint(CheckpointPolicy::Manual)
        }
    };
    let tree = T::open_blocking(config())?;
    let batch = tree.max_batch();
    let t0 = Instant::now();
    futures::executor::block_on(async {
        let mut buf: Vec<Hash> = Vec::with_capacity(batch as usize);
        let mut i = 0u64;
        while i < n {
            buf.clear();
            let end = (i + batch).min(n);
            buf.extend((i..end).map(|k| *blake3::hash(&k.to_le_bytes()).as_bytes()));
            tree.insert_many(&buf).await?; // fire and forget; the flush below waits
            i = end;
        }
        tree.flush().await
    })?;
    let load = t0.elapsed();
    println!(
        "loaded {n} leaves in batches of {batch} in {load:.2?}: {:.1}M leaves/s durable ({} fsyncs)",
        n as f64 / load.as_secs_f64() / 1e6,
        tree.syncs()
    );
    println!("metrics after the load: {:?}", tree.metrics());
    let t0 = Instant::now();
    futures::executor::block_on(tree.checkpoint())?;
    println!("checkpoint in {:.2?}", t0.elapsed());
    let root = tree.root();
    futures::executor::block_on(tree.close())?;
    drop(tree);
    let t0 = Instant::now();
    let tree = T::open_blocking(config())?;
    println!(
        "reopened {} leaves in {:.2?}; root unchanged: {}",
        tree.size(),
        t0.elapsed(),
        tree.root() == root
    );
    let m = tree.metrics();
    println!("metrics after reopen: {m:?}");
    futures::executor::block_on(tree.close())?;
    Ok(())
}
