//! A replicated tree over HTTP/1.1: openraft's RPCs between nodes, and the
//! client API, both with postcard bodies.
//!
//! Routes ([`router`]):
//! - `POST /raft/append`, `/raft/vote`, `/raft/snapshot`: openraft's
//!   append-entries, vote and install-snapshot (chunked) RPCs;
//! - `POST /insert` (a batch of leaves) → [`Reply`] of [`Committed`];
//! - `GET /read` → a linearizable `(size, root)` (leader only);
//! - `GET /status` → [`Status`], this node's view, no consensus;
//! - `GET /leaves/{from}/{to}` → the node's committed leaves in `from..to`;
//! - `POST /init` (members: id and address) → forms a new cluster.
//!
//! [`Network`] is openraft's network factory over these routes, with a
//! timeout per call and an exponential back-off for unreachable peers;
//! [`Client`] sends inserts and reads to the leader, following
//! [`Reply::NotLeader`] hints.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{BasicNode, Committed, Node, NodeConfig, TypeConfig};
use crate::error::{Error, Result};
use crate::{Hash, Hasher};

/// A client call's outcome, as sent over the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply<T> {
    /// Done.
    Ok(T),
    /// This node does not lead; the leader, where it knows it.
    NotLeader {
        /// The leader's id.
        leader: Option<u64>,
        /// The leader's address.
        address: Option<String>,
    },
    /// Failed (the message says why).
    Err(String),
}

impl<T> Reply<T> {
    fn of(r: Result<T>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(Error::NotLeader { leader, address }) => Reply::NotLeader { leader, address },
            Err(e) => Reply::Err(e.to_string()),
        }
    }
}

/// What a node reports of itself (`GET /status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node's id.
    pub id: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its current term.
    pub term: u64,
    /// Leaves it has applied.
    pub size: u64,
    /// The root of its applied tree.
    pub root: Option<Hash>,
    /// The index of the last entry it applied.
    pub applied: Option<u64>,
}

fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    postcard::to_stdvec(t).expect("postcard encodes to a Vec")
}

type Rpc<T, E = openraft::error::Infallible> = std::result::Result<T, RaftError<u64, E>>;

async fn append<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    body: Bytes,
) -> Vec<u8> {
    let r: Rpc<AppendEntriesResponse<u64>> = match postcard::from_bytes(&body) {
        Ok(req) => node.raft().append_entries(req).await,
        Err(e) => return bad_request(e),
    };
    encode(&r)
}

async fn vote<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    body: Bytes,
) -> Vec<u8> {
    let r: Rpc<VoteResponse<u64>> = match postcard::from_bytes(&body) {
        Ok(req) => node.raft().vote(req).await,
        Err(e) => return bad_request(e),
    };
    encode(&r)
}

async fn snapshot<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    body: Bytes,
) -> Vec<u8> {
    let r: Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> =
        match postcard::from_bytes(&body) {
            Ok(req) => node.raft().install_snapshot(req).await,
            Err(e) => return bad_request(e),
        };
    encode(&r)
}

/// A body that does not decode: an empty answer, which the caller's decode
/// reports.
fn bad_request(e: postcard::Error) -> Vec<u8> {
    tracing::warn!(error = %e, "undecodable request");
    Vec::new()
}

async fn insert<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    body: Bytes,
) -> Vec<u8> {
    let r = match postcard::from_bytes::<Vec<Hash>>(&body) {
        Ok(leaves) => node.insert_many(&leaves).await,
        Err(e) => Err(Error::Replication(format!("undecodable insert: {e}"))),
    };
    encode(&Reply::of(r))
}

async fn init<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    body: Bytes,
) -> Vec<u8> {
    let r = match postcard::from_bytes::<Vec<(u64, String)>>(&body) {
        Ok(members) => node.initialize(members).await,
        Err(e) => Err(Error::Replication(format!("undecodable members: {e}"))),
    };
    encode(&Reply::of(r))
}

async fn read<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
) -> Vec<u8> {
    encode(&Reply::of(node.read().await))
}

async fn status<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
) -> Vec<u8> {
    encode(&node.status())
}

async fn leaves<H: Hasher, const N: usize, const D: usize>(
    State(node): State<Node<H, N, D>>,
    Path((from, to)): Path<(u64, u64)>,
) -> Vec<u8> {
    let snap = node.snapshot();
    // At most a million leaves (32 MiB) an answer.
    let r = (from..to.min(snap.size()).min(from.saturating_add(1 << 20)))
        .map(|i| snap.leaf(i))
        .collect::<Result<Vec<Hash>>>();
    encode(&Reply::of(r))
}

impl<H: Hasher, const N: usize, const D: usize> Node<H, N, D> {
    /// This node's view of itself (no consensus involved).
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        Status {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            size: self.size(),
            root: self.root(),
            applied: m.last_applied.map(|l| l.index),
        }
    }
}

/// The largest request body a node takes.
pub const MAX_BODY: usize = 256 << 20;

/// The routes of a node (see the module docs).
pub fn router<H: Hasher, const N: usize, const D: usize>(node: Node<H, N, D>) -> Router {
    Router::new()
        .route("/raft/append", post(append::<H, N, D>))
        .route("/raft/vote", post(vote::<H, N, D>))
        .route("/raft/snapshot", post(snapshot::<H, N, D>))
        .route("/insert", post(insert::<H, N, D>))
        .route("/read", get(read::<H, N, D>))
        .route("/status", get(status::<H, N, D>))
        .route("/leaves/{from}/{to}", get(leaves::<H, N, D>))
        .route("/init", post(init::<H, N, D>))
        // Snapshot chunks and append batches run to megabytes (axum's
        // default cap is 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

/// Serves a node's routes on `listener` until `stop` resolves.
pub async fn serve<H: Hasher, const N: usize, const D: usize>(
    node: Node<H, N, D>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().ok();
    axum::serve(listener, router(node))
        .with_graceful_shutdown(stop)
        .await
        .map_err(|source| Error::Io {
            path: format!("http://{addr:?}").into(),
            source,
        })
}

/// Runs a node as a server: opens it on the HTTP network, serves its
/// routes on `listener` until `stop` resolves, then shuts it down.
pub async fn run_node<H: Hasher + Default, const N: usize, const D: usize>(
    config: NodeConfig,
    network: NetworkConfig,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = Node::<H, N, D>::open(config, Network::new(network)).await?;
    let served = serve(node.clone(), listener, stop).await;
    let closed = node.shutdown().await;
    served.and(closed)
}

/// Timeouts and back-off of the HTTP network.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The longest a call may take; `None`: openraft's own limit for the
    /// call (its heartbeat-derived TTL for appends and votes).
    pub timeout: Option<Duration>,
    /// The first wait before calling an unreachable peer again; doubled on
    /// each failure in a row, up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest wait between calls to an unreachable peer.
    pub backoff_max: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            timeout: None,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        }
    }
}

type Http = HyperClient<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new()).build(connector)
}

/// Why a call failed: the peer could not be reached (connect failed, or
/// no answer in time), or it answered something undecodable.
enum CallError {
    /// Not delivered: the connection was refused.
    NotSent(String),
    /// Maybe delivered: no answer in time, or the connection broke.
    Unreachable(String),
    /// An answer that is not one.
    Network(String),
}

impl CallError {
    fn message(self) -> String {
        match self {
            CallError::NotSent(m) | CallError::Unreachable(m) | CallError::Network(m) => m,
        }
    }
}

async fn call<T: DeserializeOwned>(
    http: &Http,
    url: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> std::result::Result<T, CallError> {
    let req = match body {
        Some(b) => hyper::Request::post(url).body(Full::new(Bytes::from(b))),
        None => hyper::Request::get(url).body(Full::new(Bytes::new())),
    }
    .map_err(|e| CallError::Network(e.to_string()))?;
    let work = async {
        let resp = http.request(req).await.map_err(|e| {
            if e.is_connect() {
                CallError::NotSent(format!("{url}: {e}"))
            } else {
                CallError::Network(format!("{url}: {e}"))
            }
        })?;
        if !resp.status().is_success() {
            return Err(CallError::Network(format!("{url}: HTTP {}", resp.status())));
        }
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| CallError::Network(format!("{url}: {e}")))?
            .to_bytes();
        postcard::from_bytes(&bytes).map_err(|e| CallError::Network(format!("{url}: answer: {e}")))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Unreachable(format!(
            "{url}: no answer in {timeout:?}"
        ))),
    }
}

/// openraft's network over HTTP (one [`Peer`] per target).
#[derive(Clone)]
pub struct Network {
    http: Http,
    config: NetworkConfig,
}

impl Network {
    /// A network with these timeouts and back-off.
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            http: http_client(),
            config,
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new(NetworkConfig::default())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            http: self.http.clone(),
            target,
            base: format!("http://{}", node.addr),
            config: self.config.clone(),
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    http: Http,
    target: u64,
    base: String,
    config: NetworkConfig,
}

impl Peer {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> std::result::Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = self.config.timeout.unwrap_or_else(|| option.hard_ttl());
        let url = format!("{}{path}", self.base);
        let r: Rpc<Resp, E> = call(&self.http, &url, Some(encode(req)), timeout)
            .await
            .map_err(|e| match e {
                // Refused: back off. No answer in time (a slow fsync on a
                // big batch, a lost packet): try again at once.
                CallError::NotSent(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
                CallError::Unreachable(m) | CallError::Network(m) => {
                    RPCError::Network(NetworkError::new(&Msg(m)))
                }
            })?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// An error that is only a message.
#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>>
    {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        let (min, max) = (self.config.backoff_min, self.config.backoff_max);
        Backoff::new(std::iter::successors(Some(min), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}

/// A client of a cluster: sends each call to the node it believes leads,
/// following [`Reply::NotLeader`] hints and trying the other nodes when
/// there is no hint, until `deadline` passes.
#[derive(Clone)]
pub struct Client {
    http: Http,
    nodes: Vec<String>,
    leader: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How long one call may keep looking for a leader.
    pub deadline: Duration,
    /// How long one HTTP call may take.
    pub timeout: Duration,
}

impl Client {
    /// A client of the nodes at these addresses (`host:port`); with none,
    /// every call is an `Error::Config`.
    pub fn new(nodes: impl IntoIterator<Item = String>) -> Self {
        Self {
            http: http_client(),
            nodes: nodes.into_iter().collect(),
            leader: Default::default(),
            deadline: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }

    /// Calls `path` on the leader. A call that may have reached a node is
    /// tried again only when `retry_delivered` (reads): an insert sent
    /// again could be committed twice.
    async fn leader_call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
        retry_delivered: bool,
    ) -> Result<T> {
        use std::sync::atomic::Ordering;
        if self.nodes.is_empty() {
            return Err(Error::Config("a client of no nodes".into()));
        }
        let start = tokio::time::Instant::now();
        // A hint is followed at once, but not twice in a row: two nodes
        // that name each other (a stale hint) are asked again after a wait.
        let mut hopped = false;
        let mut last = String::from("no node answered");
        let mut i = self.leader.load(Ordering::Relaxed) % self.nodes.len().max(1);
        loop {
            if start.elapsed() > self.deadline {
                return Err(Error::Replication(format!(
                    "no leader answered within {:?}: {last}",
                    self.deadline
                )));
            }
            let url = format!("http://{}{path}", self.nodes[i]);
            match call::<Reply<T>>(&self.http, &url, body.clone(), self.timeout).await {
                Ok(Reply::Ok(t)) => {
                    self.leader.store(i, Ordering::Relaxed);
                    return Ok(t);
                }
                Ok(Reply::NotLeader { address, .. }) => {
                    last = format!("{} does not lead", self.nodes[i]);
                    match address.and_then(|a| self.nodes.iter().position(|n| *n == a)) {
                        Some(j) if j != i && !hopped => {
                            i = j;
                            hopped = true;
                            continue;
                        }
                        Some(j) if j != i => i = j,
                        // An election is under way: wait for it.
                        _ => i = (i + 1) % self.nodes.len(),
                    }
                }
                Ok(Reply::Err(e)) => return Err(Error::Replication(e)),
                Err(CallError::NotSent(m)) => {
                    last = m;
                    i = (i + 1) % self.nodes.len();
                }
                Err(e) if retry_delivered => {
                    last = e.message();
                    i = (i + 1) % self.nodes.len();
                }
                Err(e) => {
                    return Err(Error::Replication(format!(
                        "outcome unknown (the batch may or may not be committed): {}",
                        e.message()
                    )));
                }
            }
            hopped = false;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Inserts a batch through the leader; resolves once it is committed.
    ///
    /// An `Err` after a timeout or a lost connection leaves it unknown
    /// whether the batch was committed (as with any replicated write):
    /// a batch that must go in once carries its own identity in its leaves.
    pub async fn insert_many(&self, leaves: &[Hash]) -> Result<Committed> {
        self.leader_call("/insert", Some(encode(&leaves.to_vec())), false)
            .await
    }

    /// A linearizable `(size, root)` from the leader.
    pub async fn read(&self) -> Result<(u64, Option<Hash>)> {
        self.leader_call("/read", None, true).await
    }

    /// Forms a new cluster of `members` (id, address) through the node at
    /// `address`.
    pub async fn initialize(&self, address: &str, members: Vec<(u64, String)>) -> Result<()> {
        let url = format!("http://{address}/init");
        match call::<Reply<()>>(&self.http, &url, Some(encode(&members)), self.timeout).await {
            Ok(Reply::Ok(())) => Ok(()),
            Ok(Reply::Err(e)) => Err(Error::Replication(e)),
            Ok(Reply::NotLeader { .. }) => Err(Error::Replication("unexpected answer".into())),
            Err(e) => Err(Error::Replication(e.message())),
        }
    }

    /// The status of the node at `address`.
    pub async fn status(&self, address: &str) -> Result<Status> {
        call(
            &self.http,
            &format!("http://{address}/status"),
            None,
            self.timeout,
        )
        .await
        .map_err(|e| Error::Replication(e.message()))
    }

    /// The committed leaves `from..to` of the node at `address`.
    pub async fn leaves(&self, address: &str, from: u64, to: u64) -> Result<Vec<Hash>> {
        let url = format!("http://{address}/leaves/{from}/{to}");
        match call::<Reply<Vec<Hash>>>(&self.http, &url, None, self.timeout).await {
            Ok(Reply::Ok(v)) => Ok(v),
            Ok(Reply::Err(e)) => Err(Error::Replication(e)),
            Ok(Reply::NotLeader { .. }) => Err(Error::Replication("unexpected answer".into())),
            Err(e) => Err(Error::Replication(e.message())),
        }
    }
}
