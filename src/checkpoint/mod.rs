//! Checkpoints: every level of a snapshot streamed to its shard file, a
//! manifest naming what they cover, and loading them back at open.
//!
//! Owns `<dir>/MANIFEST` and `<dir>/shards/`. At every level only the last
//! node can change, so a level is stored as *sealed* chunks (every node
//! final), written once, appended to the level's shard file and never
//! rewritten, plus its *tail* chunk (the one holding the last node), written
//! to one of two slots, the one the current manifest does not name. So a
//! checkpoint never touches what the durable manifest refers to, writes only
//! what changed, and a crash anywhere leaves the previous checkpoint whole.
//! Shards are synced, then the manifest is made durable (temp file, fsync,
//! rename, directory fsync); only then may the log below its WAL position be
//! recycled (invariant 4): the caller does that.
//! Every file has a magic, a version and checksums; damage is
//! `Error::Corruption` naming the file and offset (invariants 5 and 8).
//!
//! - [`format`](mod@format): the manifest and file header byte formats,
//!   the files' paths, the constants they share.
//! - [`writer`]: [`Checkpointer`], which writes a checkpoint.
//! - [`loader`]: [`load`] and [`map_shard`], which read one back, and what
//!   a salvage can still read of a damaged one.
//! - [`verifier`]: the checks a checkpoint read back must pass.

pub(crate) mod format;
mod loader;
mod verifier;
mod writer;

pub(crate) use format::{MANIFEST, Manifest};
pub(crate) use loader::{load, map_shard, salvage_leaves};
pub(crate) use writer::{Checkpointer, Failpoint};
