//! # ringtree
//!
//! A persistent, append-only, n-ary Lean Incremental Merkle Tree (LeanIMT)
//! whose inserts return awaitable durability futures.
//!
//! - [`Tree`]: the persistent tree. `insert` updates the tree in memory and
//!   returns at once with the leaf index, the new root and a [`Durable`]
//!   future that resolves once the insert is on disk. A write-ahead
//!   [`Log`] takes records without locks and a committer thread
//!   group-commits them, one fdatasync in flight.
//! - Checkpoints ([`Tree::checkpoint`], [`CheckpointPolicy`]) stream the
//!   tree's levels to shard files in the background and recycle the log;
//!   checkpointed levels are served from memory-mapped shards ([`Tiering`]).
//! - Reorganisations: [`Tree::rewind`] undoes a tail as one durable log
//!   record, [`Tree::finalize`] bounds it; [`Tree::durable_snapshot`] and
//!   [`Tree::durable_root`] read what is on disk now, without a flush;
//!   [`Snapshot::root_at`], [`Snapshot::proof_at`] and
//!   [`Snapshot::update_proof`] prove against older roots.
//! - [`LeanImt`]: the in-memory core, with copy-on-write [`Snapshot`]s.
//! - [`Proof`] and [`ConsistencyProof`]: strictly verified proofs.
//! - [`io`]: the storage backends (io_uring, threaded, simulated).
//!
//! ```no_run
//! use ringtree::{Blake3, Config, Tree};
//!
//! # async fn demo() -> ringtree::Result<()> {
//! let tree = Tree::<Blake3, 4, 32>::open(Config::new("/tmp/tree")).await?;
//! let ins = tree.insert([7u8; 32]).await?;
//! ins.durable.await?; // the insert survives a crash from here on
//! tree.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Hashing
//!
//! A parent of a group of `2 <= k <= N` children is `H(c0 ‖ c1 ‖ … ‖ c(k-1))`
//! over the raw 32-byte children, no prefix or tag; a group of one child is
//! lifted unchanged; leaves are stored as given; the root of a one-leaf tree
//! is that leaf and an empty tree has no root. With [`Blake3`] the roots are
//! byte-identical to rotortree 0.20's for every arity and size.
//!
//! ## Quick start
//!
//! ```
//! use ringtree::{Blake3, LeanImt};
//!
//! let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
//! let leaves: Vec<[u8; 32]> = (0..1000u32).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
//! let root = tree.insert_many(&leaves)?;
//!
//! let snap = tree.snapshot();
//! let proof = snap.proof(123)?;
//! proof.verify_at(&Blake3, &root, 1000)?; // the leaf is at 123 in the tree (root, 1000)
//!
//! let old_root = {
//!     let mut old = LeanImt::<Blake3, 4, 32>::new(Blake3);
//!     old.insert_many(&leaves[..400])?
//! };
//! snap.consistency_proof(400)?.verify_at(&Blake3, &old_root, 400, &root, 1000)?;
//! # Ok::<(), ringtree::Error>(())
//! ```

#![deny(missing_docs)]

mod checkpoint;
mod error;
mod hash;
mod imt;
pub mod io;
mod metrics;
#[cfg(all(feature = "raft", not(loom)))]
pub mod raft;
mod rt;
pub mod sim;
mod sync;
mod tree;
pub mod wal;

pub use error::{Error, Result};
#[cfg(feature = "keccak")]
pub use hash::Keccak256;
#[cfg(feature = "poseidon")]
pub use hash::Poseidon;
#[cfg(feature = "sha256")]
pub use hash::Sha256;
pub use hash::{Blake3, Hash, Hasher};
pub use imt::proof::{ConsistencyProof, Proof, ZkKitProof};
pub use imt::{LeanImt, Snapshot};
pub use io::IoBackend;
pub use metrics::{LatencySummary, Metrics};
pub use tree::salvage::Salvaged;
pub use tree::{CheckpointPolicy, Config, Inserted, Rewound, Tiering, Tree};
pub use wal::{Durable, FlushPolicy, Log, LogConfig};
