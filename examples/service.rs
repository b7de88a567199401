//! An HTTP service over one durable tree: it acknowledges an insert only
//! once it is on disk, and serves roots and inclusion proofs.
//!
//! ```sh
//! cargo run --release --example service [-- DIR [ADDR]]   # target/ringtree-service, 127.0.0.1:3000
//!
//! # one leaf (64 hex digits), or many as one log record; answers once durable
//! curl -s localhost:3000/leaves -d '{"leaf": "'$(printf %064x 1)'"}'
//! #  {"count":1,"index":0,"root":"0000…0001"}
//! curl -s localhost:3000/leaves -d '{"leaves": ["'$(printf %064x 2)'", "'$(printf %064x 3)'"]}'
//! #  {"count":2,"index":1,"root":"…"}
//! curl -s localhost:3000/root          # {"root":"…","size":3}
//! curl -s localhost:3000/proof/1       # {"index":1,"leaf":"…","proof":"…","root":"…","size":3}
//! ```
//!
//! The proof is `Proof::to_bytes` in hex: a client decodes it with
//! `Proof::from_bytes` and checks it with `verify_at(&Blake3, &root, size)`
//! (see the `light_client` example). Bad input is a 400 naming what was
//! wrong (a batch is at most `Tree::max_batch` leaves), an unknown leaf a
//! 404, a closed or poisoned tree a 503.
//!
//! Reads answer only with durable state too: `/root` and `/proof` read the
//! tree's durable view (`Tree::durable_snapshot`), the leaves already on
//! disk, so a root the service published is never lost in a crash, and a
//! read never waits for a flush.
//!
//! Ctrl-C or SIGTERM stops accepting, lets requests in flight finish, closes
//! the tree and prints its size and root. Run it again: it reopens the tree.

use std::future::Future;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, body::Bytes};
use ringtree::{Blake3, Config, Hash, Snapshot};
use serde::Deserialize;
use serde_json::{Value, json};

/// The tree the service holds: BLAKE3, arity 4.
pub type Tree = ringtree::Tree<Blake3, 4, 32>;

/// The routes, over `tree`.
pub fn router(tree: Tree) -> Router {
    // Room for a full batch of quoted hex leaves and some whitespace; a
    // larger body is refused with 413 before it is read.
    let body_limit = tree.max_batch() as usize * 80 + 4096;
    Router::new()
        .route("/leaves", post(post_leaves))
        .route("/proof/{index}", get(get_proof))
        .route("/root", get(get_root))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(tree)
}

/// Serves on `listener` until `shutdown` resolves and the requests in flight
/// are answered, then closes the tree (every acknowledged insert is durable).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tree: Tree,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = axum::serve(listener, router(tree.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    let closed = tree.close().await;
    served?;
    closed.map_err(std::io::Error::other)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "target/ringtree-service".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let tree = Tree::open(Config::new(&dir)).await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "{dir}: {} leaves, I/O backend {}; listening on http://{}",
        tree.size(),
        tree.backend(),
        listener.local_addr()?
    );
    serve(listener, tree.clone(), shutdown_signal()).await?;
    let root = tree.root().map_or_else(|| "none".into(), |r| to_hex(&r));
    println!("closed: {} leaves, root {root}", tree.size());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install a SIGTERM handler");
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.expect("cannot listen for Ctrl-C"),
        _ = term.recv() => {}
    }
    println!("shutting down");
}

/// An error answer: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<ringtree::Error> for ApiError {
    fn from(e: ringtree::Error) -> Self {
        let status = match e {
            ringtree::Error::Closed | ringtree::Error::Poisoned { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ringtree::Error::BatchTooLarge { .. } | ringtree::Error::EmptyBatch => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// `{"leaf": "<hex>"}` or `{"leaves": ["<hex>", ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeavesRequest {
    leaf: Option<String>,
    leaves: Option<Vec<String>>,
}

/// `POST /leaves`: answers `{"index", "count", "root"}` once durable.
async fn post_leaves(State(tree): State<Tree>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: LeavesRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid JSON body: {e}")))?;
    let (inserted, count) = match (req.leaf, req.leaves) {
        (Some(leaf), None) => {
            let leaf = parse_leaf(&leaf).map_err(|e| bad_request(format!("leaf: {e}")))?;
            (tree.insert(leaf).await?, 1)
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(bad_request("leaves: empty list, send at least one leaf"));
            }
            if list.len() as u64 > tree.max_batch() {
                return Err(bad_request(format!(
                    "leaves: {} leaves, at most {} per request",
                    list.len(),
                    tree.max_batch()
                )));
            }
            let leaves = list
                .iter()
                .enumerate()
                .map(|(i, s)| parse_leaf(s).map_err(|e| bad_request(format!("leaves[{i}]: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            (tree.insert_many(&leaves).await?, leaves.len())
        }
        _ => return Err(bad_request(r#"send exactly one of "leaf" or "leaves""#)),
    };
    inserted.durable.await?;
    Ok(Json(json!({
        "index": inserted.index,
        "count": count,
        "root": to_hex(&inserted.root),
    })))
}

/// A snapshot all of whose leaves are on disk: no flush, no wait.
async fn durable_snapshot(tree: &Tree) -> Result<Snapshot, ApiError> {
    Ok(tree.durable_snapshot())
}

/// `GET /root`: `{"size", "root"}` (`root` is null for an empty tree).
async fn get_root(State(tree): State<Tree>) -> Result<Json<Value>, ApiError> {
    let snap = durable_snapshot(&tree).await?;
    Ok(Json(json!({
        "size": snap.size(),
        "root": snap.root().map(|r| to_hex(&r)),
    })))
}

/// `GET /proof/{index}`: an inclusion proof of leaf `index`.
async fn get_proof(
    State(tree): State<Tree>,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let index: u64 = index
        .parse()
        .map_err(|_| bad_request(format!("index: {index:?} is not a leaf index")))?;
    let snap = durable_snapshot(&tree).await?;
    if index >= snap.size() {
        let msg = format!("no leaf {index}: the tree has {} leaves", snap.size());
        return Err(ApiError(StatusCode::NOT_FOUND, msg));
    }
    let proof = snap.proof(index)?;
    Ok(Json(json!({
        "index": index,
        "size": snap.size(),
        "root": snap.root().map(|r| to_hex(&r)),
        "leaf": to_hex(&proof.leaf()),
        "proof": to_hex(&proof.to_bytes()),
    })))
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A leaf: exactly 64 hex digits (either case).
pub fn parse_leaf(s: &str) -> Result<Hash, String> {
    if let Some((at, c)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} at offset {at} is not a hex digit"));
    }
    if s.len() != 64 {
        return Err(format!("{} hex digits, a leaf is 64 (32 bytes)", s.len()));
    }
    let mut leaf = [0; 32];
    for (i, byte) in leaf.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(leaf)
}
