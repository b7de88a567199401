//! A replicated tree: three nodes on loopback (HTTP), clients inserting
//! from many tasks, the leader stopped mid-stream, a new leader elected,
//! and every acknowledged leaf checked on every node afterwards.
//!
//! ```sh
//! cargo run --release --features raft --example cluster
//! ```
//!
//! The nodes' directories are under `target/ringtree-cluster` (removed
//! first). Stopping a node here closes it; tests/raft_kill.rs SIGKILLs
//! node processes instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringtree::raft::http::{Client, NetworkConfig, run_node};
use ringtree::raft::{Committed, NodeConfig};
use ringtree::{Blake3, Hash, LeanImt};

type Stop = tokio::sync::oneshot::Sender<()>;

async fn start(id: u64, addr: &str, root: &std::path::Path) -> (Stop, tokio::task::JoinHandle<()>) {
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = NodeConfig::new(id, root.join(format!("node-{id}")));
    let task = tokio::spawn(async move {
        run_node::<Blake3, 4, 32>(config, NetworkConfig::default(), listener, async {
            let _ = rx.await;
        })
        .await
        .expect("node failed");
    });
    (tx, task)
}

#[tokio::main]
async fn main() -> ringtree::Result<()> {
    let root = std::path::PathBuf::from("target/ringtree-cluster");
    let _ = std::fs::remove_dir_all(&root);
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push(Some(start(i as u64 + 1, a, &root).await));
    }
    let client = Client::new(addrs.clone());
    let members: Vec<(u64, String)> = (1..=3).zip(addrs.iter().cloned()).collect();
    // Wait for the servers, then form the cluster.
    while client.status(&addrs[0]).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.initialize(&addrs[0], members).await?;
    client.read().await?;
    println!("3 nodes on {addrs:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<(Hash, Committed, Instant)>::new()));
    let tasks: Vec<_> = (0..256u64)
        .map(|task| {
            let (client, stop, acks) = (client.clone(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                for seq in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let leaf = *blake3::hash(format!("{task}/{seq}").as_bytes()).as_bytes();
                    if let Ok(c) = client.insert_many(&[leaf]).await {
                        acks.lock().unwrap().push((leaf, c, Instant::now()));
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acks.lock().unwrap().len();
    let mut leader = None;
    for (i, a) in addrs.iter().enumerate() {
        if let Ok(s) = client.status(a).await
            && s.leader == Some(s.id)
        {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    let killed = Instant::now();
    let (tx, task) = nodes[leader].take().unwrap();
    let _ = tx.send(());
    task.await.unwrap();
    println!(
        "{before} inserts acknowledged in 2 s; stopped the leader, node {}",
        leader + 1
    );
    let killed_id = leader as u64 + 1;
    let (new_leader, elected) = loop {
        let s = client.status(&addrs[(leader + 1) % 3]).await?;
        if let Some(l) = s.leader.filter(|l| *l != killed_id) {
            break (l, killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let first_after = loop {
        let first = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c, at)| *at > killed && c.size > 0)
            .map(|(_, _, at)| *at)
            .max();
        if let Some(t) = first
            && t - killed > elected
        {
            break t - killed;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    println!(
        "node {new_leader} elected {elected:?} after the stop; inserts acknowledged through it {first_after:?} after the stop"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[leader] = Some(start(leader as u64 + 1, &addrs[leader], &root).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Every node converges; each acknowledged leaf is at its index on all.
    let (size, root_hash) = loop {
        let (size, r) = client.read().await?;
        let mut all = true;
        for a in &addrs {
            let s = client.status(a).await?;
            all &= (s.size, s.root) == (size, r);
        }
        if all {
            break (size, r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let acks = acks.lock().unwrap().clone();
    for a in &addrs {
        let mut leaves = Vec::new();
        while (leaves.len() as u64) < size {
            let from = leaves.len() as u64;
            leaves.extend(client.leaves(a, from, (from + 10_000).min(size)).await?);
        }
        let mut t = LeanImt::<Blake3, 4, 32>::new(Blake3);
        t.insert_many(&leaves)?;
        assert_eq!(t.root(), root_hash, "node {a} serves other leaves");
        let at: HashMap<Hash, u64> = leaves.iter().zip(0..).map(|(l, i)| (*l, i)).collect();
        for (leaf, c, _) in &acks {
            assert_eq!(
                at.get(leaf),
                Some(&c.index),
                "an acknowledged leaf is missing"
            );
        }
    }
    println!(
        "{} inserts acknowledged; all 3 nodes hold {size} leaves, root {}…, every acknowledged leaf at its index",
        acks.len(),
        root_hash
            .map(|r| format!("{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3]))
            .unwrap_or_default()
    );
    for (tx, task) in nodes.into_iter().flatten() {
        let _ = tx.send(());
        task.await.unwrap();
    }
    Ok(())
}
