//! A tree replicated over openraft (feature `raft`): 3 or 5 nodes, each
//! with its own durable [`Tree`](crate::Tree), agreeing on one sequence of leaf batches.
//!
//! - [`Node`]: one member. [`Node::insert`] and [`Node::insert_many`] on the
//!   leader resolve once a majority has the entry durable in its raft log
//!   and the leader has applied it: the index and root they return are
//!   assigned in commit order, and no failover reassigns them. A non-leader
//!   answers [`Error::NotLeader`] naming the leader. [`Node::read`] is a
//!   linearizable `(size, root)` through openraft's read-index path;
//!   [`Node::snapshot`] proves against the node's committed tree.
//! - The raft log ([`LogStore`], `log_store`) is a ringtree [`Log`](crate::Log) of
//!   its own beside the tree: entries, votes, truncations and purges are its
//!   records and share its group commit. The tree applies committed
//!   entries only, so it never needs rewinding.
//! - The state machine ([`StateMachine`], `state_machine`) applies entries to
//!   the tree. A raft snapshot is a checkpoint of the tree (its shard files
//!   and manifest, packed); a follower that receives one checks every chunk
//!   against its checksum and every level and the root against the leaves
//!   before it installs it.
//! - [`http`]: openraft's network over HTTP/1.1 (axum serving, hyper
//!   calling), the client API (insert, read, status) beside it, and
//!   [`http::Client`], which follows the leader.
//!
//! A node's directory holds `raft/` (the raft log) and `tree/` (the tree,
//! with `RAFT-SNAPSHOT`, the last snapshot). See docs/ARCHITECTURE.md,
//! "Replication".

pub mod http;
mod log_store;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

pub use log_store::LogStore;
pub use openraft;
use openraft::error::{ClientWriteError, RaftError};
use openraft::network::RaftNetworkFactory;
pub use openraft::{BasicNode, Raft, RaftMetrics};
use serde::{Deserialize, Serialize};
pub use state_machine::{SnapshotBuilder, StateMachine};

use crate::error::{Error, Result};
use crate::{CheckpointPolicy, Config, Hash, Hasher, LogConfig, Snapshot};

/// A batch of leaves proposed to the cluster: one raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leaves, appended in order.
    pub leaves: Vec<Hash>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} leaves", self.leaves.len())
    }
}

/// Where a committed batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The index of the batch's first leaf.
    pub index: u64,
    /// Leaves in the tree after the batch.
    pub size: u64,
    /// The root after the batch.
    pub root: Hash,
}

/// What applying an entry gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The batch is in the tree.
    Inserted(Committed),
    /// The tree refused the batch (the same on every node: it is full, or
    /// the hasher refused a leaf); nothing was inserted.
    Refused(String),
    /// An entry without leaves (a leader's first entry, a membership change).
    Noop,
}

openraft::declare_raft_types!(
    /// The openraft types of a replicated tree.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How to open a [`Node`].
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's id in the cluster (stable across restarts).
    pub id: u64,
    /// The node's directory: `raft/` and `tree/` go in it.
    pub dir: PathBuf,
    /// The tree's configuration; its `dir` is replaced by `dir/tree` and
    /// its checkpoint policy by `Manual`: the tree's checkpoints are the
    /// raft snapshots (`raft.snapshot_policy`).
    pub tree: Config,
    /// The raft log's configuration.
    pub log: LogConfig,
    /// openraft's configuration (timeouts, heartbeats, snapshot policy).
    pub raft: openraft::Config,
    /// The most leaves one raft entry carries, and so one `insert_many`
    /// (default 32,768: 1 MiB of leaves, which a follower receives and
    /// syncs well within a heartbeat interval, the time openraft gives an
    /// append). Every member must be able to take it: opening a node whose
    /// tree or raft log cannot is an error.
    pub max_batch: u64,
    /// How long an insert waits to be committed and applied before it
    /// fails with its outcome unknown (default 10 s): a leader cut off in a
    /// minority, or one whose entry a later leader's snapshot covered,
    /// never learns the outcome otherwise.
    pub write_timeout: std::time::Duration,
}

impl NodeConfig {
    /// The defaults: heartbeats every 50 ms, elections after 150 to 300 ms
    /// without one, a snapshot every 10,000 entries (1,000 kept behind it).
    pub fn new(id: u64, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            id,
            tree: Config::new(dir.join("tree")),
            dir,
            log: LogConfig::default(),
            raft: openraft::Config {
                cluster_name: "ringtree".into(),
                heartbeat_interval: 50,
                election_timeout_min: 150,
                election_timeout_max: 300,
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
                max_in_snapshot_log_to_keep: 1_000,
                // A snapshot's last chunk is answered once the receiver
                // has verified and installed the whole checkpoint.
                install_snapshot_timeout: 30_000,
                ..Default::default()
            },
            max_batch: 32_768,
            write_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// One member of a replicated tree. Cheap to clone.
pub struct Node<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    id: u64,
    raft: Raft<TypeConfig>,
    tree: state_machine::TreeCell<H, N, MAX_DEPTH>,
    log: LogStore,
    max_batch: u64,
    write_timeout: std::time::Duration,
    hasher: H,
    proposals: Arc<parking_lot::Mutex<Proposals>>,
}

impl<H: Hasher, const N: usize, const D: usize> Clone for Node<H, N, D> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft: self.raft.clone(),
            tree: self.tree.clone(),
            log: self.log.clone(),
            max_batch: self.max_batch,
            write_timeout: self.write_timeout,
            hasher: self.hasher.clone(),
            proposals: self.proposals.clone(),
        }
    }
}

impl<H: Hasher, const N: usize, const D: usize> std::fmt::Debug for Node<H, N, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

/// Inserts waiting to be proposed, and whether a proposer runs.
#[derive(Default)]
struct Proposals {
    pending: std::collections::VecDeque<(Vec<Hash>, Waiter)>,
    running: bool,
}

type Waiter = tokio::sync::oneshot::Sender<Result<Committed>>;

/// Proposes what waits, one raft entry at a time (up to `max_batch`
/// leaves, whole calls), until nothing does: what arrives while an entry
/// is in flight goes in the next one.
async fn propose(
    raft: Raft<TypeConfig>,
    proposals: Arc<parking_lot::Mutex<Proposals>>,
    max_batch: u64,
    write_timeout: std::time::Duration,
) {
    loop {
        let batch: Vec<(Vec<Hash>, Waiter)> = {
            let mut q = proposals.lock();
            let mut n = 0u64;
            let mut batch = Vec::new();
            while let Some((l, _)) = q.pending.front() {
                if !batch.is_empty() && n + l.len() as u64 > max_batch {
                    break;
                }
                n += l.len() as u64;
                batch.push(q.pending.pop_front().expect("front"));
            }
            if batch.is_empty() {
                q.running = false;
                return;
            }
            batch
        };
        let leaves: Vec<Hash> = batch.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        let r = match tokio::time::timeout(write_timeout, raft.client_write(Request { leaves }))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(Error::Replication(format!(
                        "outcome unknown: not committed within {write_timeout:?} (it may still be)"
                    ))));
                }
                continue;
            }
        };
        let fail = |e: &dyn Fn() -> Error, batch: Vec<(Vec<Hash>, Waiter)>| {
            for (_, tx) in batch {
                let _ = tx.send(Err(e()));
            }
        };
        match r.map(|resp| resp.data) {
            Ok(Response::Inserted(c)) => {
                let mut index = c.index;
                for (l, tx) in batch {
                    let _ = tx.send(Ok(Committed {
                        index,
                        size: c.size,
                        root: c.root,
                    }));
                    index += l.len() as u64;
                }
            }
            Ok(Response::Refused(why)) => fail(
                &|| Error::Replication(format!("batch refused: {why}")),
                batch,
            ),
            Ok(Response::Noop) => fail(
                &|| Error::Replication("a batch applied as no entry".into()),
                batch,
            ),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let address = f.leader_node.map(|n| n.addr);
                fail(
                    &|| Error::NotLeader {
                        leader: f.leader_id,
                        address: address.clone(),
                    },
                    batch,
                )
            }
            Err(e) => {
                let why = e.to_string();
                fail(&|| Error::Replication(why.clone()), batch)
            }
        }
    }
}

/// Room in a raft log record beside an entry's leaves (log id, payload tag,
/// lengths).
const ENTRY_OVERHEAD: u64 = 64;

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
            address: f.leader_node.map(|n| n.addr),
        },
        e => Error::Replication(e.to_string()),
    }
}

impl<H: Hasher + Default, const N: usize, const D: usize> Node<H, N, D> {
    /// Opens (or creates) the node in `config.dir` and starts it; `network`
    /// reaches the other members (see [`http::Network`]). Must be called
    /// within a tokio runtime. A new cluster is then formed with
    /// [`initialize`](Self::initialize) on one node.
    pub async fn open<F: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: F,
    ) -> Result<Self> {
        Self::open_with(config, H::default(), network).await
    }
}

impl<H: Hasher, const N: usize, const D: usize> Node<H, N, D> {
    /// [`open`](Self::open) with a hasher value.
    pub async fn open_with<F: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        hasher: H,
        network: F,
    ) -> Result<Self> {
        let mut tree_config = config.tree.clone();
        tree_config.dir = config.dir.join("tree");
        tree_config.checkpoint = CheckpointPolicy::Manual;
        crate::io::create_dir_durable(&crate::io::ThreadedStorage, &config.dir)?;
        let storage = crate::io::open_storage(tree_config.io)?;
        let log = LogStore::open(storage, &config.dir.join("raft"), &config.log)?;
        let sm =
            StateMachine::<H, N, D>::open(&config.dir, tree_config, hasher.clone(), &log).await?;
        let tree = sm.tree.clone();
        let max_batch = config.max_batch;
        let room = tree
            .read()
            .max_batch()
            .min((log.max_payload() - ENTRY_OVERHEAD) / 32);
        if max_batch == 0 || max_batch > room {
            return Err(Error::Config(format!(
                "max_batch {max_batch}: this node's tree and raft log take 1 to {room} leaves an entry"
            )));
        }
        let raft_config = Arc::new(
            config
                .raft
                .clone()
                .validate()
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        let raft = Raft::new(config.id, raft_config, network, log.clone(), sm)
            .await
            .map_err(|e| Error::Replication(e.to_string()))?;
        Ok(Self {
            id: config.id,
            raft,
            tree,
            log,
            max_batch,
            write_timeout: config.write_timeout,
            hasher,
            proposals: Default::default(),
        })
    }

    /// Forms a new cluster of `members` (id → address), from this node.
    /// Call it once, on one node, with every member; the others learn of
    /// it from the leader. Refused on a node that already has a log.
    pub async fn initialize(&self, members: impl IntoIterator<Item = (u64, String)>) -> Result<()> {
        let members: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Replication(e.to_string()))
    }

    /// Adds a node that receives the log (and a snapshot if it lags) but
    /// does not vote; returns once it has caught up.
    pub async fn add_learner(&self, id: u64, address: String) -> Result<()> {
        self.raft
            .add_learner(id, BasicNode { addr: address }, true)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Makes `voters` the voting members (joint consensus underneath).
    pub async fn change_membership(&self, voters: impl IntoIterator<Item = u64>) -> Result<()> {
        let voters: BTreeSet<u64> = voters.into_iter().collect();
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Appends one leaf through the leader; resolves once a majority holds
    /// it durable and it is applied.
    pub async fn insert(&self, leaf: Hash) -> Result<Committed> {
        self.insert_many(&[leaf]).await
    }

    /// Appends a batch through the leader; resolves once a majority holds
    /// it durable and it is applied. `index` is the batch's first leaf;
    /// `size` and `root` are the tree's after the raft entry that carried
    /// it: concurrent calls on a node are proposed together, as one entry
    /// (group commit at the raft level), their leaves contiguous and in
    /// call order. At most [`max_batch`](Self::max_batch) leaves; a leaf
    /// the hasher refuses is refused here, alone.
    pub async fn insert_many(&self, leaves: &[Hash]) -> Result<Committed> {
        if leaves.is_empty() {
            return Err(Error::EmptyBatch);
        }
        if leaves.len() as u64 > self.max_batch {
            return Err(Error::BatchTooLarge {
                len: leaves.len() as u64,
                max: self.max_batch,
            });
        }
        if let Some((i, why)) = leaves
            .iter()
            .enumerate()
            .find_map(|(i, l)| self.hasher.check_leaf(l).err().map(|w| (i, w)))
        {
            return Err(Error::InvalidLeaf {
                index: i as u64,
                reason: why,
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.proposals.lock();
            q.pending.push_back((leaves.to_vec(), tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(propose(
                self.raft.clone(),
                self.proposals.clone(),
                self.max_batch,
                self.write_timeout,
            ));
        }
        rx.await
            .map_err(|_| Error::Replication("the node stopped proposing".into()))?
    }

    /// The leaves one [`insert_many`](Self::insert_many) takes.
    pub fn max_batch(&self) -> u64 {
        self.max_batch
    }

    /// A linearizable `(size, root)`: the leader confirms it still leads
    /// (a heartbeat round to a majority) and has applied everything
    /// committed before the call. Only on the leader.
    pub async fn read(&self) -> Result<(u64, Option<Hash>)> {
        use openraft::error::CheckIsLeaderError;
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
                leader: f.leader_id,
                address: f.leader_node.map(|n| n.addr),
            },
            e => Error::Replication(e.to_string()),
        })?;
        let tree = self.tree.read();
        Ok((tree.size(), tree.root()))
    }

    /// A snapshot of this node's committed tree (what it has applied; a
    /// follower may be behind the leader).
    pub fn snapshot(&self) -> Snapshot {
        self.tree.read().snapshot()
    }

    /// Leaves applied on this node.
    pub fn size(&self) -> u64 {
        self.tree.read().size()
    }

    /// The root of this node's applied tree.
    pub fn root(&self) -> Option<Hash> {
        self.tree.read().root()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The leader's id and address, where this node knows them.
    pub fn leader_address(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// openraft's view of this node (term, leader, log and applied ids,
    /// membership), as a watch channel.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics<u64, BasicNode>> {
        self.raft.metrics()
    }

    /// The openraft handle: what the network delivers RPCs to.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Group commits of the raft log so far.
    pub fn log_syncs(&self) -> u64 {
        self.log.syncs()
    }

    /// Stops the node: openraft first, then the tree and the raft log are
    /// closed (synced). Writes in flight fail; later calls fail.
    pub async fn shutdown(&self) -> Result<()> {
        // A purge waiting for a snapshot install gives up, so openraft's
        // task can stop.
        self.log.mark().send_modify(|m| m.stopped = true);
        let stopped = self
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Replication(format!("raft task: {e}")));
        // No apply or install after this: the tree closed is the last one.
        let mut gate = self.tree.gate.lock().await;
        *gate = true;
        let tree = self.tree.read().clone();
        let closed = tree.close().await;
        drop(gate);
        let log = self.log.close();
        stopped?;
        closed?;
        log
    }
}
