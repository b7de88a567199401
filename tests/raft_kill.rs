//! Three node processes on loopback, the leader SIGKILLed at random moments
//! while clients insert through HTTP, then restarted from its directory.
//!
//! Checked at the end: the three nodes converge to one size and root; the
//! leaves they serve rebuild that root; every acknowledged insert is in the
//! tree exactly once at its acknowledged index; every root a client saw is
//! a prefix of the final tree (a consistency proof verifies).
//!
//! `RINGTREE_RAFT_KILL_ROUNDS` sets the rounds (default 24);
//! `RINGTREE_RAFT_KILL_SEED` the first seed.
#![cfg(all(feature = "raft", not(loom)))]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Rng;
use ringtree::raft::http::{Client, NetworkConfig, Status};
use ringtree::raft::{Committed, NodeConfig};
use ringtree::{Blake3, Hash, LeanImt};

/// The child: one node, serving until killed.
#[test]
#[ignore = "run by leader_killed_over_and_over in a child process"]
fn raft_node_child() {
    let spec = std::env::var("RINGTREE_RAFT_NODE").expect("child needs RINGTREE_RAFT_NODE");
    let mut it = spec.split(' ');
    let id: u64 = it.next().unwrap().parse().unwrap();
    let port: u16 = it.next().unwrap().parse().unwrap();
    let dir = it.next().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The port may still be held by the process killed a moment ago.
        let start = Instant::now();
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    eprintln!("bind {port}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {port}: {e}"),
            }
        };
        ringtree::raft::http::run_node::<Blake3, 4, 32>(
            NodeConfig::new(id, dir),
            NetworkConfig::default(),
            listener,
            std::future::pending(),
        )
        .await
        .unwrap();
    });
}

struct Proc {
    id: u64,
    addr: String,
    dir: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let port = self.addr.rsplit(':').next().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "raft_node_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "RINGTREE_RAFT_NODE",
                format!("{} {port} {}", self.id, self.dir),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy)]
struct Ack {
    leaf: Hash,
    committed: Committed,
    at: Instant,
}

async fn statuses(client: &Client, procs: &[(u64, String)]) -> Vec<Option<Status>> {
    let mut out = Vec::new();
    for (_, a) in procs {
        out.push(client.status(a).await.ok());
    }
    out
}

/// The node that leads in the highest term, once one does.
async fn leader(client: &Client, procs: &[(u64, String)]) -> u64 {
    let start = Instant::now();
    loop {
        let s = statuses(client, procs).await;
        if let Some(l) = s
            .iter()
            .flatten()
            .filter(|s| s.leader == Some(s.id))
            .max_by_key(|s| s.term)
        {
            return l.id;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_over_and_over() {
    let rounds: u32 = std::env::var("RINGTREE_RAFT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("RINGTREE_RAFT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let mut procs: Vec<Proc> = (1..=3u64)
        .map(|id| Proc {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            dir: root
                .path()
                .join(format!("node-{id}"))
                .to_str()
                .unwrap()
                .to_owned(),
            child: None,
        })
        .collect();
    for p in &mut procs {
        p.spawn();
    }
    let members: Vec<(u64, String)> = procs.iter().map(|p| (p.id, p.addr.clone())).collect();
    let client = Client::new(members.iter().map(|(_, a)| a.clone()));
    let start = Instant::now();
    while statuses(&client, &members)
        .await
        .iter()
        .any(Option::is_none)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nodes did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .initialize(&members[0].1, members.clone())
        .await
        .unwrap();
    leader(&client, &members).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let (client, stop, acks) = (client.clone(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let n = 1 + (seq % 3);
                    let leaves: Vec<Hash> = (0..n)
                        .map(|k| {
                            *blake3::hash(format!("{seed} {task} {seq} {k}").as_bytes()).as_bytes()
                        })
                        .collect();
                    if let Ok(c) = client.insert_many(&leaves).await {
                        let at = Instant::now();
                        let mut a = acks.lock().unwrap();
                        for (k, leaf) in leaves.iter().enumerate() {
                            a.push(Ack {
                                leaf: *leaf,
                                committed: Committed {
                                    index: c.index + k as u64,
                                    ..c
                                },
                                at,
                            });
                        }
                    }
                }
            })
        })
        .collect();

    let mut failovers = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        let l = leader(&client, &members).await;
        let killed_at = Instant::now();
        procs[(l - 1) as usize].kill();
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        procs[(l - 1) as usize].spawn();
        // The first acknowledgement after the kill (new leader, or the
        // restarted one re-elected).
        let wait = Instant::now();
        loop {
            let first = acks
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.at > killed_at)
                .map(|a| a.at)
                .min();
            if let Some(t) = first {
                failovers.push(t - killed_at);
                break;
            }
            assert!(
                wait.elapsed() < Duration::from_secs(30),
                "no insert acknowledged within 30 s of a kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert!(!acks.is_empty());

    // Convergence: the leader's linearizable read, and every node there.
    let start = Instant::now();
    let (size, root) = loop {
        let (size, root) = client.read().await.unwrap();
        let s = statuses(&client, &members).await;
        if s.iter()
            .all(|s| s.as_ref().is_some_and(|s| (s.size, s.root) == (size, root)))
        {
            break (size, root);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no convergence: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let root = root.unwrap();

    // Every node's leaves rebuild the root.
    let mut trees = Vec::new();
    for (_, addr) in &members {
        let mut leaves = Vec::new();
        while (leaves.len() as u64) < size {
            let from = leaves.len() as u64;
            leaves.extend(
                client
                    .leaves(addr, from, (from + 10_000).min(size))
                    .await
                    .unwrap(),
            );
        }
        let mut t = LeanImt::<Blake3, 4, 32>::new(Blake3);
        t.insert_many(&leaves).unwrap();
        assert_eq!(t.root(), Some(root), "node {addr} serves other leaves");
        trees.push(leaves);
    }
    let leaves = &trees[0];
    let mut at = HashMap::new();
    for (i, l) in leaves.iter().enumerate() {
        assert!(at.insert(*l, i as u64).is_none(), "a leaf twice, at {i}");
    }
    let mut imt = LeanImt::<Blake3, 4, 32>::new(Blake3);
    imt.insert_many(leaves).unwrap();
    let snap = imt.snapshot();
    for a in &acks {
        assert_eq!(
            at.get(&a.leaf),
            Some(&a.committed.index),
            "an acknowledged leaf is not at its index {}",
            a.committed.index
        );
        let c = a.committed;
        if c.size < size {
            snap.consistency_proof(c.size)
                .unwrap()
                .verify_at(&Blake3, &c.root, c.size, &root, size)
                .unwrap();
        } else {
            assert_eq!(c.root, root);
        }
    }
    failovers.sort();
    eprintln!(
        "{rounds} leader kills, {} acknowledged leaves, final size {size}; first insert after a kill: p50 {:?}, max {:?}",
        acks.len(),
        failovers[failovers.len() / 2],
        failovers.last().unwrap()
    );
}
