//! A 3-node cluster on loopback (HTTP between the nodes) against one
//! node, same run: 1000 tasks each inserting one leaf and awaiting it
//! (committed and applied on the cluster; durable on the single tree),
//! for a few seconds each; then leader failovers; then a snapshot built
//! on the leader while a task inserts.
//!
//! ```sh
//! cargo bench --features raft --bench raft
//! ```
//! `RINGTREE_BENCH_SECS` sets the seconds per run (default 5),
//! `RINGTREE_BENCH_FAILOVERS` the failover rounds (default 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringtree::raft::http::{Network, NetworkConfig};
use ringtree::raft::{Node, NodeConfig};
use ringtree::{Blake3, Config, Tree};

type N3 = Node<Blake3, 4, 32>;
const TASKS: u64 = 1000;

fn secs() -> u64 {
    std::env::var("RINGTREE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Runs `TASKS` tasks calling `op` for `secs`; returns (ops/s, latencies).
async fn drive<F, Fut>(op: F) -> (f64, Histogram<u64>)
where
    F: Fn(u64, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if op(t, n).await {
                        h.record(t0.elapsed().as_micros() as u64).unwrap();
                    }
                    n += 1;
                }
                h
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs())).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

fn leaf(t: u64, n: u64) -> [u8; 32] {
    *blake3::hash(&[t.to_le_bytes(), n.to_le_bytes()].concat()).as_bytes()
}

/// A node, the stop signal of its server and the server's task.
type Running = (
    N3,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

struct Cluster {
    nodes: Vec<Option<Running>>,
    addrs: Vec<String>,
    root: std::path::PathBuf,
}

impl Cluster {
    async fn start_node(&mut self, i: usize) {
        let listener = loop {
            match tokio::net::TcpListener::bind(&self.addrs[i]).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let node = N3::open(
            NodeConfig::new(i as u64 + 1, self.root.join(format!("node-{i}"))),
            Network::new(NetworkConfig::default()),
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = node.clone();
        let task = tokio::spawn(async move {
            let _ = ringtree::raft::http::serve(served, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        self.nodes[i] = Some((node, tx, task));
    }

    async fn stop_node(&mut self, i: usize) {
        if let Some((node, tx, task)) = self.nodes[i].take() {
            let _ = tx.send(());
            task.await.unwrap();
            node.shutdown().await.unwrap();
        }
    }

    async fn leader(&self) -> N3 {
        loop {
            for (n, _, _) in self.nodes.iter().flatten() {
                if n.leader() == Some(n.id()) && n.read().await.is_ok() {
                    return n.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn report(name: &str, rate: f64, h: &Histogram<u64>) {
    println!(
        "{name:<28} {rate:>10.0} inserts/s  p50 {:>6} µs  p99 {:>6} µs",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir_in(std::env::var("RINGTREE_BENCH_DIR").unwrap_or("target".into()))
        .unwrap();

    // One node.
    let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path().join("single")))
        .await
        .unwrap();
    let t = tree.clone();
    let (single, hs) = drive(move |task, n| {
        let t = t.clone();
        async move { t.insert_durable(leaf(task, n)).await.is_ok() }
    })
    .await;
    tree.close().await.unwrap();
    report("single node, 1000 tasks", single, &hs);

    // Three nodes.
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let mut c = Cluster {
        nodes: vec![None, None, None],
        addrs: addrs.clone(),
        root: dir.path().join("cluster"),
    };
    for i in 0..3 {
        c.start_node(i).await;
    }
    let first = c.nodes[0].as_ref().unwrap().0.clone();
    first
        .initialize((1..=3).zip(addrs.iter().cloned()))
        .await
        .unwrap();
    let leader = c.leader().await;
    let l = leader.clone();
    let (cluster, hc) = drive(move |task, n| {
        let l = l.clone();
        async move { l.insert(leaf(task, n)).await.is_ok() }
    })
    .await;
    report("3-node cluster, 1000 tasks", cluster, &hc);
    println!(
        "cluster / single: rate {:.2}x, p99 {:.2}x",
        cluster / single,
        hc.value_at_quantile(0.99) as f64 / hs.value_at_quantile(0.99) as f64
    );

    // Failovers: the leader stopped; time to the first insert the new
    // leader acknowledges (a client retrying every millisecond).
    let rounds: usize = std::env::var("RINGTREE_BENCH_FAILOVERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut times = Vec::new();
    for r in 0..rounds {
        let l = c.leader().await;
        let i = (l.id() - 1) as usize;
        let t0 = Instant::now();
        c.stop_node(i).await;
        'found: loop {
            for (n, _, _) in c.nodes.iter().flatten() {
                if n.insert(leaf(u64::MAX, r as u64)).await.is_ok() {
                    break 'found;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t0.elapsed());
        c.start_node(i).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    times.sort();
    println!(
        "failover (leader stopped -> first insert acknowledged), {rounds} rounds: p50 {:?}, max {:?}",
        times[times.len() / 2],
        times.last().unwrap()
    );

    // A snapshot built on the leader while one task inserts and awaits:
    // the build's time and the longest insert meanwhile (applies wait for
    // the checkpoint and the snapshot file's copy of it).
    let l = c.leader().await;
    let size = l.size();
    let before = l.metrics().borrow().snapshot;
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, l2) = (stop.clone(), l.clone());
    let writer = tokio::spawn(async move {
        let (mut worst, mut n) = (Duration::ZERO, 0u64);
        while !s2.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            if l2.insert(leaf(u64::MAX - 1, n)).await.is_ok() {
                worst = worst.max(t0.elapsed());
            }
            n += 1;
        }
        (worst, n)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    l.raft().trigger().snapshot().await.unwrap();
    while l.metrics().borrow().snapshot == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let built = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (worst, n) = writer.await.unwrap();
    println!(
        "snapshot built on the leader at {size} leaves: {built:?}; longest insert meanwhile {worst:?} ({n} inserts by one task)"
    );
    for i in 0..3 {
        c.stop_node(i).await;
    }
}
