//! Damage to a stopped node's files, with the default `NodeConfig`.
//! Reopening must give the node whole (the same leaves and root, then
//! usable: proofs verify, inserts commit, a snapshot is taken, and another
//! reopen gives it back) or an error naming a file of the node: never a
//! panic, a hang, a shorter tree or another root.
//!
//! The node is a one-member cluster that made a snapshot, purged its raft
//! log behind it and went on, so every file a node keeps exists: the raft
//! log's segment and `START`, the tree's log, checkpoint and
//! `RAFT-SNAPSHOT`. Every file is damaged every way, one case at a time on
//! a copy: one bit flipped at its start, middle and end and at seeded
//! places; 64 bytes garbled; cut to nothing, to half and by one byte;
//! deleted; replaced by the same file of another node.
//! `RINGTREE_RAFT_DAMAGE_FLIPS` sets the seeded flips per file (default 2),
//! `RINGTREE_DAMAGE_VERBOSE=1` prints how every case ended.
#![cfg(all(feature = "raft", not(loom)))]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Rng, leaves};
use ringtree::raft::NodeConfig;
use ringtree::raft::http::{Network, NetworkConfig};
use ringtree::{Blake3, Hash};

type Node = ringtree::raft::Node<Blake3, 4, 32>;

/// The longest a case may take to open and be used.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn open(dir: &Path) -> ringtree::Result<Node> {
    Node::open(
        NodeConfig::new(1, dir),
        Network::new(NetworkConfig::default()),
    )
    .await
}

/// Waits until the node leads (a one-member cluster elects itself).
async fn lead(node: &Node) -> Result<(), String> {
    let start = Instant::now();
    while node.read().await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no leader after 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Inserts `batches` of `per` leaves, the first `leaf(first)`, into a
/// node of `size` leaves.
async fn insert_batches(node: &Node, size: u64, first: u64, batches: u64, per: u64) {
    for b in 0..batches {
        let at = first + b * per;
        let c = node.insert_many(&leaves(at..at + per)).await.unwrap();
        assert_eq!(c.index, size + b * per);
    }
}

/// A stopped node: a snapshot, a purge behind it, entries after both.
struct Template {
    dir: tempfile::TempDir,
    leaves: Vec<Hash>,
    root: Hash,
    /// Files relative to the node directory.
    files: Vec<PathBuf>,
}

impl Template {
    async fn build(offset: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = open(dir.path()).await.unwrap();
        node.initialize([(1, "127.0.0.1:1".to_owned())])
            .await
            .unwrap();
        lead(&node).await.unwrap();
        // `offset` makes another node's leaves differ from these.
        let base = offset;
        let mut count = 0;
        let mut go = async |batches: u64| {
            insert_batches(&node, count, base + count, batches, 5).await;
            count += batches * 5;
        };
        go(40).await;
        node.raft().trigger().snapshot().await.unwrap();
        wait(|| node.metrics().borrow().snapshot.is_some()).await;
        go(30).await;
        let snap = node.metrics().borrow().snapshot.unwrap().index;
        node.raft().trigger().purge_log(snap - 10).await.unwrap();
        wait(|| node.metrics().borrow().purged.is_some()).await;
        go(20).await;
        let leaves = leaves(base..base + count);
        let root = node.root().unwrap();
        node.shutdown().await.unwrap();
        let mut files = Vec::new();
        list(dir.path(), dir.path(), &mut files);
        files.sort();
        Self {
            dir,
            leaves,
            root,
            files,
        }
    }

    fn copy_to(&self, to: &Path) {
        for rel in &self.files {
            let dst = to.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(self.dir.path().join(rel), dst).unwrap();
        }
    }
}

async fn wait(f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "waited 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            list(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    None,
    Flip { at: u64, bit: u8 },
    Garble { at: u64 },
    Truncate { to: u64 },
    Delete,
    Replace,
}

fn damages(len: u64, rng: &mut Rng) -> Vec<Damage> {
    let mut out = vec![Damage::None, Damage::Delete, Damage::Replace];
    if len == 0 {
        return out;
    }
    for at in [0, len / 2, len - 1] {
        out.push(Damage::Flip {
            at,
            bit: rng.below(8) as u8,
        });
    }
    for _ in 0..env("RINGTREE_RAFT_DAMAGE_FLIPS", 2) {
        out.push(Damage::Flip {
            at: rng.below(len),
            bit: rng.below(8) as u8,
        });
    }
    out.push(Damage::Garble { at: len / 3 });
    for to in [0, len / 2, len - 1] {
        out.push(Damage::Truncate { to });
    }
    out
}

impl Damage {
    fn apply(self, path: &Path, other: &Path, rng: &mut Rng) {
        match self {
            Damage::None => {}
            Damage::Flip { at, bit } => common::flip_bit(path, at, bit),
            Damage::Garble { at } => common::garble(path, at, rng),
            Damage::Truncate { to } => common::rw(path).set_len(to).unwrap(),
            Damage::Delete => std::fs::remove_file(path).unwrap(),
            Damage::Replace => {
                std::fs::remove_file(path).unwrap();
                if other.exists() {
                    std::fs::copy(other, path).unwrap();
                }
            }
        }
    }
}

/// How a case ended, when it ended well.
enum Ended {
    Whole,
    Refused,
    /// Opened whole, then a read met the damage and named the file.
    RefusedLater,
}

/// Opens the damaged copy and uses it; `Err` says what went wrong.
async fn exercise(tpl: &Template, dir: &Path, rng: &mut Rng) -> Result<Ended, String> {
    let node = match open(dir).await {
        Ok(node) => node,
        Err(e) => {
            return match e.file() {
                Some(f) if f.starts_with(dir) => Ok(Ended::Refused),
                _ => Err(format!("refused without naming a file of the node: {e}")),
            };
        }
    };
    let ended = use_whole(tpl, dir, &node, rng).await;
    let closed = node.shutdown().await;
    if ended? {
        return Ok(Ended::RefusedLater);
    }
    closed.map_err(|e| format!("shutdown: {e}"))?;
    // And again, after that use.
    let node = open(dir)
        .await
        .map_err(|e| format!("reopen after use: {e}"))?;
    lead(&node).await?;
    let n = tpl.leaves.len() as u64 + 7;
    let size = node.size();
    let closed = node.shutdown().await;
    if size != n {
        return Err(format!(
            "reopened with {size} leaves, {n} were acknowledged"
        ));
    }
    closed.map_err(|e| format!("second shutdown: {e}"))?;
    Ok(Ended::Whole)
}

/// Uses an opened node; `Ok(true)`: a proof met damage and named its file.
async fn use_whole(tpl: &Template, dir: &Path, node: &Node, rng: &mut Rng) -> Result<bool, String> {
    lead(node).await?;
    let n = tpl.leaves.len() as u64;
    let (size, root) = node.read().await.map_err(|e| format!("read: {e}"))?;
    if (size, root) != (n, Some(tpl.root)) {
        return Err(format!(
            "opened with {size} leaves, root {root:?}: {n} were acknowledged"
        ));
    }
    let snap = node.snapshot();
    for _ in 0..8 {
        let i = rng.below(n);
        let proof = match snap.proof(i) {
            Ok(p) => p,
            Err(e) if e.file().is_some_and(|f| f.starts_with(dir)) => return Ok(true),
            Err(e) => return Err(format!("proof of {i}: {e}")),
        };
        if proof.leaf() != tpl.leaves[i as usize] {
            return Err(format!("leaf {i} differs"));
        }
        proof
            .verify_at(&Blake3, &tpl.root, n)
            .map_err(|e| format!("proof of {i} does not verify: {e}"))?;
    }
    let c = match node.insert_many(&leaves(1 << 40..(1 << 40) + 7)).await {
        Ok(c) => c,
        // The tree met the damage applying it and stopped the node, with
        // an error naming the file (as openraft's message).
        Err(e) if e.to_string().contains(&*dir.to_string_lossy()) => return Ok(true),
        Err(e) => return Err(format!("insert after open: {e}")),
    };
    if c.index != n {
        return Err(format!("the insert after open landed at {}", c.index));
    }
    node.raft()
        .trigger()
        .snapshot()
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_a_node_every_way() {
    let t0 = Instant::now();
    let tpl = Template::build(0).await;
    let other = Template::build(1 << 30).await;
    let verbose = std::env::var_os("RINGTREE_DAMAGE_VERBOSE").is_some();
    let mut rng = Rng(0x4a57);
    let mut cases = Vec::new();
    for rel in &tpl.files {
        if rel.file_name().is_some_and(|n| n == "LOCK") {
            continue;
        }
        let len = std::fs::metadata(tpl.dir.path().join(rel)).unwrap().len();
        for d in damages(len, &mut rng) {
            cases.push((rel.clone(), d));
        }
    }
    let (mut whole, mut refused, mut later) = (0, 0, 0);
    let mut failures = Vec::new();
    for (i, (rel, damage)) in cases.iter().enumerate() {
        let case = tempfile::tempdir().unwrap();
        let dir = case.path().join("node");
        tpl.copy_to(&dir);
        let mut rng = Rng(i as u64);
        damage.apply(&dir.join(rel), &other.dir.path().join(rel), &mut rng);
        let ended = tokio::time::timeout(CASE_TIMEOUT, exercise(&tpl, &dir, &mut rng)).await;
        let label = format!("{} {damage:?}", rel.display());
        if verbose {
            eprintln!(
                "{label}: {}",
                match &ended {
                    Ok(Ok(Ended::Whole)) => "whole".to_owned(),
                    Ok(Ok(Ended::Refused)) => "refused".to_owned(),
                    Ok(Ok(Ended::RefusedLater)) => "refused later".to_owned(),
                    Ok(Err(e)) => e.clone(),
                    Err(_) => "timed out".to_owned(),
                }
            );
        }
        match ended {
            Ok(Ok(Ended::Whole)) => whole += 1,
            Ok(Ok(Ended::Refused)) => refused += 1,
            Ok(Ok(Ended::RefusedLater)) => later += 1,
            Ok(Err(e)) => failures.push(format!("{label}: {e}")),
            Err(_) => {
                failures.push(format!("{label}: no outcome after {CASE_TIMEOUT:?}"));
                std::mem::forget(case);
            }
        }
    }
    eprintln!(
        "{} cases in {:.1?}: {whole} whole, {refused} refused at open, {later} refused later, {} failed",
        cases.len(),
        t0.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases ended otherwise than whole or with an error naming a file:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
