//! The replicated tree in one process: three (or four) nodes on an
//! in-process network that drops, delays, duplicates and reorders messages
//! and partitions nodes, with clients inserting throughout; leaders killed,
//! nodes restarted from disk, a follower replaced by an empty node that
//! catches up from a snapshot. The seed chooses the faults (the threads'
//! interleavings are the machine's own).
//!
//! Checked on the recorded history: every acknowledged insert is in the
//! final tree exactly once at its acknowledged index; all nodes converge to
//! one size and root; every root a client saw is a prefix of the final tree
//! (a consistency proof verifies); a node cut off in a minority acknowledges
//! nothing.
#![cfg(all(feature = "raft", not(loom)))]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Rng;
use ringtree::raft::openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use ringtree::raft::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use ringtree::raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ringtree::raft::{BasicNode, Committed, NodeConfig, Raft, TypeConfig};
use ringtree::{Blake3, Error, Hash};

type Node = ringtree::raft::Node<Blake3, 4, 32>;

#[derive(Default)]
struct Faults {
    /// Percent of requests lost before delivery.
    drop: u64,
    /// Percent of replies lost after delivery.
    drop_reply: u64,
    /// Percent of requests delivered twice (the copy later: a reordering).
    dup: u64,
    /// Largest delay of a request, in ms.
    delay_ms: u64,
    /// Directed links that deliver nothing.
    cut: HashSet<(u64, u64)>,
}

#[derive(Default)]
struct Net {
    rafts: Mutex<HashMap<u64, Raft<TypeConfig>>>,
    faults: Mutex<Faults>,
    rng: Mutex<Option<Rng>>,
}

struct Plan {
    delay: Duration,
    dup: Option<Duration>,
    drop_reply: bool,
}

fn unreachable<E: std::error::Error>(why: &str) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why.to_owned())))
}

impl Net {
    fn roll(&self, pct: u64) -> bool {
        pct > 0 && self.rng.lock().unwrap().as_mut().unwrap().below(100) < pct
    }

    fn below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.rng.lock().unwrap().as_mut().unwrap().below(n)
    }

    fn linked(&self, from: u64, to: u64) -> bool {
        !self.faults.lock().unwrap().cut.contains(&(from, to))
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn plan<E: std::error::Error>(
        &self,
        from: u64,
        to: u64,
    ) -> Result<(Plan, Raft<TypeConfig>), RPCError<u64, BasicNode, E>> {
        if !self.linked(from, to) {
            return Err(unreachable("partitioned"));
        }
        let raft = self
            .rafts
            .lock()
            .unwrap()
            .get(&to)
            .cloned()
            .ok_or_else(|| unreachable("node down"))?;
        let (drop, drop_reply, dup, delay) = {
            let f = self.faults.lock().unwrap();
            (f.drop, f.drop_reply, f.dup, f.delay_ms)
        };
        if self.roll(drop) {
            return Err(unreachable("request dropped"));
        }
        let plan = Plan {
            delay: Duration::from_millis(self.below(delay + 1)),
            dup: self
                .roll(dup)
                .then(|| Duration::from_millis(self.below(4 * delay + 2))),
            drop_reply: self.roll(drop_reply),
        };
        Ok((plan, raft))
    }

    fn cut_off(&self, group: &[u64], all: &[u64]) {
        let mut f = self.faults.lock().unwrap();
        for &a in group {
            for &b in all {
                if !group.contains(&b) {
                    f.cut.insert((a, b));
                    f.cut.insert((b, a));
                }
            }
        }
    }

    fn heal(&self) {
        self.faults.lock().unwrap().cut.clear();
    }
}

#[derive(Clone)]
struct Factory {
    net: Arc<Net>,
    from: u64,
}

struct Peer {
    net: Arc<Net>,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Peer {
        Peer {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// Delivers `rpc` by `call` as the plan says.
macro_rules! deliver {
    ($self:ident, $rpc:ident, $call:ident) => {{
        let (plan, raft) = $self.net.plan($self.from, $self.to)?;
        tokio::time::sleep(plan.delay).await;
        if let Some(later) = plan.dup {
            let (raft, rpc) = (raft.clone(), $rpc.clone());
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                let _ = raft.$call(rpc).await;
            });
        }
        let resp = raft
            .$call($rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new($self.to, e)))?;
        if plan.drop_reply || !$self.net.linked($self.to, $self.from) {
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("reply lost"),
            )));
        }
        Ok(resp)
    }};
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        deliver!(self, rpc, append_entries)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        deliver!(self, rpc, install_snapshot)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        deliver!(self, rpc, vote)
    }
}

struct Cluster {
    net: Arc<Net>,
    root: tempfile::TempDir,
    nodes: Mutex<BTreeMap<u64, Node>>,
    /// Snapshot every this many entries (small: snapshots are exercised).
    snapshot_every: u64,
}

/// An acknowledged insert.
#[derive(Clone, Debug)]
struct Ack {
    leaf: Hash,
    committed: Committed,
    node: u64,
    at: Instant,
}

impl Cluster {
    fn new(seed: u64, snapshot_every: u64) -> Arc<Self> {
        // RUST_LOG=openraft=debug,ringtree=debug shows what the nodes do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let net = Arc::new(Net::default());
        *net.rng.lock().unwrap() = Some(Rng(seed));
        Arc::new(Self {
            net,
            root: tempfile::tempdir().unwrap(),
            nodes: Mutex::new(BTreeMap::new()),
            snapshot_every,
        })
    }

    fn config(&self, id: u64) -> NodeConfig {
        let mut c = NodeConfig::new(id, self.root.path().join(format!("node-{id}")));
        c.raft.snapshot_policy =
            ringtree::raft::openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every);
        c.raft.max_in_snapshot_log_to_keep = 0;
        c.raft.purge_batch_size = 1;
        c
    }

    async fn start(&self, id: u64) -> Node {
        let node = Node::open(
            self.config(id),
            Factory {
                net: self.net.clone(),
                from: id,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("node {id} failed to open: {e}"));
        self.net
            .rafts
            .lock()
            .unwrap()
            .insert(id, node.raft().clone());
        self.nodes.lock().unwrap().insert(id, node.clone());
        node
    }

    async fn stop(&self, id: u64) {
        self.net.rafts.lock().unwrap().remove(&id);
        let node = self.nodes.lock().unwrap().remove(&id);
        if let Some(node) = node {
            node.shutdown().await.unwrap();
        }
    }

    fn node(&self, id: u64) -> Option<Node> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    fn live(&self) -> Vec<Node> {
        self.nodes.lock().unwrap().values().cloned().collect()
    }

    /// Waits for a leader that a live node names and that is live.
    async fn leader(&self) -> Node {
        let start = Instant::now();
        loop {
            for n in self.live() {
                if let Some(l) = n.leader()
                    && l == n.id()
                    && n.read().await.is_ok()
                {
                    return n;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no leader after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live node has applied the leader's `(size, root)`.
    async fn converge(&self) -> (u64, Option<Hash>) {
        let start = Instant::now();
        loop {
            let leader = self.leader().await;
            let (size, root) = leader.read().await.unwrap_or((u64::MAX, None));
            if self
                .live()
                .iter()
                .all(|n| n.size() == size && n.root() == root)
            {
                return (size, root);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nodes did not converge: {:?}",
                self.live()
                    .iter()
                    .map(|n| (n.id(), n.size()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client task: inserts unique leaves through whichever node it believes
/// leads until `stop`; returns the acknowledged ones.
async fn client(cluster: Arc<Cluster>, task: u64, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut target = 1;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = cluster.node(target) else {
            target = target % 5 + 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        seq += 1;
        let leaf = *blake3::hash(format!("task {task} leaf {seq}").as_bytes()).as_bytes();
        let batch = 1 + (seq % 3) as usize;
        let leaves: Vec<Hash> = (0..batch)
            .map(|k| {
                let mut l = leaf;
                l[0] ^= k as u8;
                l
            })
            .collect();
        match tokio::time::timeout(Duration::from_secs(3), node.insert_many(&leaves)).await {
            Ok(Ok(c)) => {
                let at = Instant::now();
                for (k, l) in leaves.iter().enumerate() {
                    acks.push(Ack {
                        leaf: *l,
                        committed: Committed {
                            index: c.index + k as u64,
                            ..c
                        },
                        node: node.id(),
                        at,
                    });
                }
            }
            Ok(Err(Error::NotLeader {
                leader: Some(l), ..
            })) => target = l,
            Ok(Err(_)) | Err(_) => {
                target = target % 5 + 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    acks
}

/// Checks the history against the converged cluster.
fn check(cluster: &Cluster, acks: &[Ack], size: u64, root: Option<Hash>) {
    assert!(!acks.is_empty(), "nothing was acknowledged");
    let live = cluster.live();
    let snap = live[0].snapshot();
    assert_eq!(snap.size(), size);
    assert_eq!(snap.root(), root);
    let root = root.unwrap();
    // Every acknowledged leaf at its index, once.
    let mut seen = HashMap::new();
    for i in 0..size {
        let leaf = snap.leaf(i).unwrap();
        assert!(
            seen.insert(leaf, i).is_none(),
            "leaf at {i} is in the tree twice"
        );
    }
    for a in acks {
        assert_eq!(
            seen.get(&a.leaf),
            Some(&a.committed.index),
            "acknowledged leaf {:?} (index {}, by node {}) is not at its index",
            &a.leaf[..4],
            a.committed.index,
            a.node
        );
        // The root the client saw is the final tree's prefix.
        let c = a.committed;
        if c.size < size {
            snap.consistency_proof(c.size)
                .unwrap()
                .verify_at(&Blake3, &c.root, c.size, &root, size)
                .unwrap_or_else(|e| panic!("root at {} not a prefix: {e}", c.size));
        } else {
            assert_eq!(c.root, root);
        }
    }
    // The other nodes agree leaf for leaf (sampled) and on the root.
    for n in &live[1..] {
        let s = n.snapshot();
        assert_eq!((s.size(), s.root()), (size, Some(root)));
        for i in (0..size).step_by(97) {
            assert_eq!(s.leaf(i).unwrap(), snap.leaf(i).unwrap());
        }
    }
}

fn members(ids: &[u64]) -> Vec<(u64, String)> {
    ids.iter().map(|&i| (i, format!("node-{i}"))).collect()
}

async fn start_cluster(cluster: &Arc<Cluster>) {
    for id in 1..=3 {
        cluster.start(id).await;
    }
    cluster
        .node(1)
        .unwrap()
        .initialize(members(&[1, 2, 3]))
        .await
        .unwrap();
    cluster.leader().await;
}

fn spawn_clients(
    cluster: &Arc<Cluster>,
    tasks: u64,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Vec<Ack>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..tasks)
        .map(|t| tokio::spawn(client(cluster.clone(), t, stop.clone())))
        .collect();
    (stop, handles)
}

async fn join(stop: Arc<AtomicBool>, handles: Vec<tokio::task::JoinHandle<Vec<Ack>>>) -> Vec<Ack> {
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for h in handles {
        acks.extend(h.await.unwrap());
    }
    acks
}

/// One seeded schedule: message faults throughout, then a leader killed
/// and restarted from disk, a minority partition of the leader, a majority
/// partition around a follower, and a restart of every node.
async fn schedule(seed: u64) {
    let cluster = Cluster::new(seed, 64);
    start_cluster(&cluster).await;
    {
        let mut f = cluster.net.faults.lock().unwrap();
        f.drop = 3;
        f.drop_reply = 3;
        f.dup = 5;
        f.delay_ms = 3;
    }
    let (stop, handles) = spawn_clients(&cluster, 8);
    let pause = |ms: u64| tokio::time::sleep(Duration::from_millis(ms + cluster.net.below(ms)));

    // A leader killed mid-stream and restarted from its directory.
    pause(200).await;
    let leader = cluster.leader().await.id();
    cluster.stop(leader).await;
    pause(200).await;
    cluster.start(leader).await;

    // The leader cut off alone: it must acknowledge nothing meanwhile.
    pause(200).await;
    let isolated = cluster.leader().await.id();
    cluster.net.cut_off(&[isolated], &[1, 2, 3]);
    let cut_at = Instant::now();
    pause(400).await;
    let healed_at = Instant::now();
    cluster.net.heal();

    // A follower cut off: the majority goes on without it.
    pause(100).await;
    let leader = cluster.leader().await.id();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    cluster.net.cut_off(&[follower], &[1, 2, 3]);
    pause(300).await;
    cluster.net.heal();

    // Every node restarted, one at a time.
    for id in 1..=3 {
        pause(50).await;
        cluster.stop(id).await;
        cluster.start(id).await;
    }
    pause(200).await;
    let acks = join(stop, handles).await;
    {
        let mut f = cluster.net.faults.lock().unwrap();
        *f = Faults::default();
    }
    let (size, root) = cluster.converge().await;
    // 100 ms for an acknowledgement already under way when the link went.
    let during = acks
        .iter()
        .filter(|a| {
            a.node == isolated && a.at > cut_at + Duration::from_millis(100) && a.at < healed_at
        })
        .count();
    assert_eq!(
        during, 0,
        "seed {seed}: node {isolated} acknowledged {during} inserts while cut off"
    );
    check(&cluster, &acks, size, root);
    eprintln!(
        "seed {seed}: {} acknowledged leaves, final size {size}",
        acks.len()
    );

    // The tree is usable after all of it: more inserts, then a reopen.
    let leader = cluster.leader().await;
    let c = leader.insert([7u8; 32]).await.unwrap();
    assert_eq!(c.index, size);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let (size2, _) = cluster.converge().await;
    assert_eq!(size2, size + 1);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}

fn schedules() -> u64 {
    std::env::var("RINGTREE_RAFT_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_failovers_and_restarts() {
    let first: u64 = std::env::var("RINGTREE_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in first..first + schedules() {
        schedule(seed).await;
    }
}

/// A follower's disk is lost: it is replaced by an empty node, which the
/// leader brings up to date with a snapshot (its log was purged long
/// since); the new node's tree is then the others', root and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_node_catches_up_from_a_snapshot() {
    let cluster = Cluster::new(7, 32);
    start_cluster(&cluster).await;
    let (stop, handles) = spawn_clients(&cluster, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = cluster.leader().await;
    let lost = (1..=3).find(|&i| i != leader.id()).unwrap();
    cluster.stop(lost).await;
    std::fs::remove_dir_all(cluster.root.path().join(format!("node-{lost}"))).unwrap();
    leader
        .change_membership((1..=3).filter(|&i| i != lost))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = cluster.start(4).await;
    let leader = cluster.leader().await;
    leader.add_learner(4, "node-4".into()).await.unwrap();
    let voters: Vec<u64> = (1..=4).filter(|&i| i != lost).collect();
    leader.change_membership(voters).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acks = join(stop, handles).await;
    let (size, root) = cluster.converge().await;
    let installed = fresh.metrics().borrow().snapshot;
    assert!(
        installed.is_some(),
        "the new node caught up without a snapshot"
    );
    assert!(
        fresh.raft().metrics().borrow().purged.is_some(),
        "the new node's log starts at the beginning"
    );
    check(&cluster, &acks, size, root);
    // The new node serves proofs of the committed tree.
    let snap = fresh.snapshot();
    let proof = snap.proof(size / 2).unwrap();
    proof.verify_at(&Blake3, &root.unwrap(), size).unwrap();
    for id in [1, 2, 3, 4] {
        cluster.stop(id).await;
    }
}

/// A non-leader names the leader; a linearizable read on it is refused
/// the same way; batches are checked before they are proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_name_the_leader() {
    let cluster = Cluster::new(3, 1000);
    start_cluster(&cluster).await;
    let leader = cluster.leader().await;
    let follower = cluster
        .live()
        .into_iter()
        .find(|n| n.id() != leader.id())
        .unwrap();
    // The follower may not know the leader yet: wait for a heartbeat.
    let start = Instant::now();
    while follower.leader() != Some(leader.id()) {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match follower.insert([1; 32]).await {
        Err(Error::NotLeader { leader: l, address }) => {
            assert_eq!(l, Some(leader.id()));
            assert_eq!(address, Some(format!("node-{}", leader.id())));
        }
        other => panic!("a follower took an insert: {other:?}"),
    }
    assert!(matches!(
        follower.read().await,
        Err(Error::NotLeader {
            leader: Some(_),
            ..
        })
    ));
    assert!(matches!(
        leader.insert_many(&[]).await,
        Err(Error::EmptyBatch)
    ));
    let too_many = vec![[0u8; 32]; leader.max_batch() as usize + 1];
    assert!(matches!(
        leader.insert_many(&too_many).await,
        Err(Error::BatchTooLarge { .. })
    ));
    let c = leader.insert_many(&[[1; 32], [2; 32]]).await.unwrap();
    assert_eq!((c.index, c.size), (0, 2));
    assert_eq!(leader.read().await.unwrap(), (2, Some(c.root)));
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}
