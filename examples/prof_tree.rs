//! Profiling driver (not a user example): 1000 tasks inserting and awaiting
//! durability for a few seconds. `cargo run --release --example prof_tree`.
use std::time::{Duration, Instant};

use ringtree::{Blake3, Config, IoBackend, Tree};

fn main() {
    let dir = std::env::temp_dir().join("ringtree-prof-tree");
    let _ = std::fs::remove_dir_all(&dir);
    let io = if std::env::var("PROF_URING").is_ok() {
        IoBackend::Uring
    } else {
        IoBackend::Threaded
    };
    let spin = std::env::var("PROF_SPIN_US")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let cfg = Config::new(&dir).io(io).spin(Duration::from_micros(spin));
    let tree = Tree::<Blake3, 4, 16>::open_blocking(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let t0 = Instant::now();
    let n: u64 = rt.block_on(async {
        let hs: Vec<_> = (0..1000u64)
            .map(|task| {
                let t = tree.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let leaf = *blake3::hash(&(task << 32 | n).to_le_bytes()).as_bytes();
                        t.insert(leaf).await.unwrap().durable.await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for h in hs {
            total += h.await.unwrap();
        }
        total
    });
    println!(
        "{} durable inserts/s, {} syncs",
        n as f64 / t0.elapsed().as_secs_f64(),
        tree.syncs()
    );
    futures::executor::block_on(tree.close()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
