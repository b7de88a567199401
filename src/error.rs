//! The one error type of the crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in ringtree.
///
/// Errors carry what was expected and where, so a message alone tells what
/// failed. The enum is `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tree cannot take `additional` more leaves: it would exceed
    /// `N^MAX_DEPTH` leaves.
    #[error("tree full: {size} leaves + {additional} more exceeds the capacity of {capacity}")]
    Capacity {
        /// Leaves in the tree.
        size: u64,
        /// Leaves the operation tried to add.
        additional: u64,
        /// The most leaves this tree type can hold (`N^MAX_DEPTH`, saturated at `u64::MAX`).
        capacity: u64,
    },
    /// The hasher refused a leaf (see [`Hasher::check_leaf`](crate::Hasher::check_leaf));
    /// nothing of the insert or the batch holding it was inserted.
    #[error("leaf {index} refused by the hasher: {reason}")]
    InvalidLeaf {
        /// The index the leaf would have had.
        index: u64,
        /// Why the hasher refused it.
        reason: &'static str,
    },
    /// A depth beyond the tree type's `MAX_DEPTH` was requested or found.
    #[error("depth {depth} exceeds the maximum depth {max_depth}")]
    Depth {
        /// The depth seen.
        depth: usize,
        /// The tree type's `MAX_DEPTH`.
        max_depth: usize,
    },
    /// A batch insert was given no leaves.
    #[error("empty batch: insert_many needs at least one leaf")]
    EmptyBatch,
    /// A leaf index at or past the tree's size.
    #[error("leaf index {index} out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree's size.
        size: u64,
    },
    /// An older size (of a consistency proof, `root_at`, `proof_at` or
    /// `update_proof`) that is zero or larger than the tree.
    #[error("invalid old size {old_size} for a tree of {size} leaves (1 to {size} are valid)")]
    InvalidOldSize {
        /// The old size asked for.
        old_size: u64,
        /// The tree's size.
        size: u64,
    },
    /// A rewind below the finalized size (see
    /// [`Tree::finalize`](crate::Tree::finalize)).
    #[error("cannot rewind to {requested} leaves: the first {finalized} are final")]
    Finalized {
        /// The size asked for.
        requested: u64,
        /// The tree's finalized size.
        finalized: u64,
    },

    /// A rewind or finalize past the tree's end.
    #[error("{requested} leaves asked for, the tree holds {size}")]
    BeyondSize {
        /// The size asked for.
        requested: u64,
        /// The tree's size.
        size: u64,
    },

    /// A checkpoint could not run yet, and nothing was lost: the log keeps
    /// every insert. It must rewrite shard chunks that a rewind cut off,
    /// and a snapshot taken before the rewind still reads them; it runs
    /// once those snapshots are dropped.
    #[error("checkpoint deferred: {0}")]
    CheckpointDeferred(String),

    /// A proof did not verify.
    #[error("proof rejected: {0}")]
    InvalidProof(&'static str),
    /// Bytes could not be decoded (a proof, a record, a header).
    #[error("cannot decode {what} at byte {offset}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Byte offset in the input where decoding failed.
        offset: usize,
        /// What was expected.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}", path = path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// On-disk data is damaged.
    #[error("corruption in {file} at offset {offset}: {reason}", file = file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// The log failed to write or sync earlier (or the tree found damage it
    /// cannot serve past); nothing at or after the failure is durable and
    /// the tree refuses further writes until reopened.
    #[error("log poisoned at offset {offset} by an earlier failure: {reason}")]
    Poisoned {
        /// Log position from which nothing is durable.
        offset: u64,
        /// The original failure, as a message.
        reason: String,
        /// The file the failure was on, where one was involved.
        file: Option<PathBuf>,
        /// The I/O error's kind, where the failure was an I/O error
        /// (`StorageFull` for ENOSPC, `Other` for EIO).
        kind: Option<std::io::ErrorKind>,
        /// The operating system's error number, where there was one.
        errno: Option<i32>,
    },
    /// Another handle or process holds the directory's lock.
    #[error("directory {} is locked by another process or handle", .0.display())]
    Locked(PathBuf),
    /// The tree was closed.
    #[error("tree is closed")]
    Closed,
    /// An `insert_many` of more leaves than one log record holds
    /// ([`Tree::max_batch`](crate::Tree::max_batch)); nothing was inserted.
    #[error("a batch of {len} leaves exceeds the {max} one record holds; split it")]
    BatchTooLarge {
        /// Leaves in the batch.
        len: u64,
        /// The most one `insert_many` takes.
        max: u64,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint the tree started by itself (its `CheckpointPolicy`)
    /// failed; reported once, by the next `flush` or `close`. Nothing was
    /// lost: the call's own work succeeded (a flush's inserts are durable),
    /// and the log keeps every insert the checkpoint would have covered.
    /// The next background attempt waits (one second, doubling with each
    /// failure in a row, up to a minute).
    #[error("a background checkpoint failed (nothing was lost; the log keeps every insert): {0}")]
    CheckpointFailed(Box<Error>),
    /// A replicated tree's node is not the leader: the write or the
    /// linearizable read must go to `leader` (at `address`), where known.
    #[error("not the leader; the leader is {}", match (leader, address) {
        (Some(id), Some(a)) => format!("node {id} at {a}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown (an election may be under way)".to_owned(),
    })]
    NotLeader {
        /// The leader's node id, where this node knows it.
        leader: Option<u64>,
        /// The leader's address, where this node knows it.
        address: Option<String>,
    },
    /// Replication failed: the consensus engine stopped, a membership change
    /// was refused, or a peer sent data that failed its checks.
    #[error("replication: {0}")]
    Replication(String),
    /// The tree on disk was made with another arity, depth bound, hasher or
    /// format than the one opening it (or a file belongs to another tree).
    #[error("{file} records {field} = {on_disk}, but this tree is opened with {given}", file = file.display())]
    ConfigMismatch {
        /// What differs: `arity`, `max_depth`, `hasher`, `format`, `chunk_size`, `tree_id`.
        field: &'static str,
        /// The value the tree's files record.
        on_disk: String,
        /// The value the caller gave.
        given: String,
        /// The file that records it.
        file: PathBuf,
    },
}

impl Error {
    /// The I/O error kind behind this error, if it came from one: the
    /// source of [`Error::Io`], the recorded kind of [`Error::Poisoned`].
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::Poisoned { kind, .. } => *kind,
            _ => None,
        }
    }

    /// The file this error names, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. } => Some(path),
            Error::Corruption { file, .. } | Error::ConfigMismatch { file, .. } => Some(file),
            Error::Poisoned { file, .. } => file.as_deref(),
            Error::Locked(dir) => Some(dir),
            _ => None,
        }
    }
}

/// `Error::Corruption` at `offset` of `file`.
pub(crate) fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corruption {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// `Error::Io` on `path`.
pub(crate) fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
