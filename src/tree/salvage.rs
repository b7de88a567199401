//! Salvage: the longest prefix of a damaged tree's leaves that its files
//! still hold intact, copied into a new tree, and a report of what was
//! lost. Never the default: `Tree::open` refuses damage it cannot repair;
//! this is what a user asks for when they have no other copy.
//!
//! Reads the damaged directory only (no lock, no write): the identity if it
//! decodes, the checkpoint's leaves chunk by chunk up to the first that
//! fails its checksum, then the log's records from the checkpoint's
//! position up to the first invalid frame or missing segment.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use crate::io::Storage;

use super::records::Record;
use super::{Config, Tree};

/// What [`Tree::salvage`](crate::Tree::salvage) recovered.
#[derive(Debug)]
#[non_exhaustive]
pub struct Salvaged {
    /// Leaves copied into the new tree: the damaged tree's leaves
    /// `0..kept`, each as the damaged tree held it.
    pub kept: u64,
    /// How many leaves the damaged tree is known to have held (its
    /// checkpoint's size, or more where its log was read past that), so
    /// leaves `kept..known` are lost. More may have existed past `known`
    /// when `stopped_by` is set.
    pub known: u64,
    /// The first damage met (an error naming the file and offset), if any.
    pub stopped_by: Option<Error>,
}

impl Salvaged {
    /// The leaves known lost: `kept..known`.
    pub fn lost(&self) -> std::ops::Range<u64> {
        self.kept..self.known
    }
}

/// The leaves of the tree in `dir` that its files still hold intact, in
/// order from leaf 0, and the report.
pub(crate) fn salvage_leaves<H: Hasher>(
    storage: &dyn Storage,
    dir: &std::path::Path,
    arity: usize,
    max_depth: usize,
    hasher: &H,
) -> (Vec<Hash>, Salvaged) {
    let id_path = dir.join(crate::tree::identity::IDENTITY);
    let want = crate::tree::identity::Identity::new(arity, max_depth, hasher.id());
    let identity = want.and_then(|w| {
        let f = storage.open(&id_path, false).map_err(|e| Error::Io {
            path: id_path.clone(),
            source: e,
        })?;
        let mut b = vec![0u8; 4096];
        let n = f.read_at(0, &mut b).map_err(|e| Error::Io {
            path: id_path.clone(),
            source: e,
        })?;
        let id = crate::tree::identity::Identity::decode(&id_path, &b[..n])?;
        id.check(&w, &id_path)?;
        Ok(id)
    });
    // A mismatch is the caller's mistake, not damage: nothing to salvage.
    if let Err(e @ Error::ConfigMismatch { .. }) = identity {
        return (
            Vec::new(),
            Salvaged {
                kept: 0,
                known: 0,
                stopped_by: Some(e),
            },
        );
    }
    let tree_id = identity.as_ref().ok().map(|i| i.tree_id);
    let (mut leaves, manifest, mut stopped) =
        crate::checkpoint::salvage_leaves(storage, dir, arity, tree_id);
    let mut known = manifest.as_ref().map_or(0, |m| m.leaves);
    if stopped.is_none() {
        let start = manifest.as_ref().map_or(0, |m| m.wal_position);
        let tree_id = tree_id.or(manifest.as_ref().map(|m| m.tree_id));
        let mut rewound = false;
        stopped = crate::wal::salvage_records(
            storage,
            &dir.join("wal"),
            start,
            tree_id,
            &mut |rec: &[u8]| match super::records::decode(rec) {
                Ok(Record::Leaves { first, leaves: new }) if first == leaves.len() as u64 => {
                    leaves.extend_from_slice(new);
                    true
                }
                Ok(Record::Rewind { from, to, .. }) if from == leaves.len() as u64 => {
                    leaves.truncate(to as usize);
                    rewound = true;
                    true
                }
                Ok(Record::Final { size, .. }) => size == leaves.len() as u64,
                _ => false,
            },
        );
        // A rewind past the checkpoint removed leaves: not lost.
        known = if rewound {
            leaves.len() as u64
        } else {
            known.max(leaves.len() as u64)
        };
    }
    let kept = leaves.len() as u64;
    (
        leaves,
        Salvaged {
            kept,
            known,
            stopped_by: stopped,
        },
    )
}

/// Where a salvage writes: a directory that holds no tree yet.
pub(crate) fn check_target(storage: &dyn Storage, dir: &std::path::Path) -> Result<()> {
    let id: PathBuf = dir.join(crate::tree::identity::IDENTITY);
    if storage.exists(&id) {
        return Err(Error::Config(format!(
            "salvage target {} already holds a tree",
            dir.display()
        )));
    }
    Ok(())
}

impl<H: Hasher + Default, const N: usize, const MAX_DEPTH: usize> Tree<H, N, MAX_DEPTH> {
    /// Recovers what a damaged tree still holds into a new one: the
    /// longest prefix of its leaves that its files hold intact (the
    /// checkpoint's leaves, chunk by chunk up to the first that fails its
    /// checksum; then the log's records up to the first invalid frame or
    /// missing segment), inserted into a new tree at `to` (which must hold
    /// no tree), made durable. Returns the new tree, open, and a report of
    /// what was kept and what is known lost.
    ///
    /// Never the default: [`open`](Self::open) refuses damage it cannot
    /// repair; this is for a user with no other copy. `from` is only read
    /// (no lock is taken: make sure nothing else has it open). Blocking.
    ///
    /// ```
    /// # use ringtree::{Blake3, Config, Tree};
    /// # let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    /// # let t = Tree::<Blake3, 4, 32>::open_blocking(Config::new(a.path()))?;
    /// # futures::executor::block_on(async { t.insert_many(&[[1; 32]; 10]).await?.durable.await?; t.close().await })?;
    /// let (tree, report) = Tree::<Blake3, 4, 32>::salvage(
    ///     &Config::new(a.path()),
    ///     Config::new(b.path()),
    /// )?;
    /// assert_eq!((report.kept, report.lost()), (10, 10..10));
    /// assert_eq!(tree.size(), 10);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn salvage(from: &Config, to: Config) -> Result<(Self, crate::Salvaged)> {
        let src = match &from.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(from.io)?,
        };
        let (leaves, report) = salvage_leaves(&*src, &from.dir, N, MAX_DEPTH, &H::default());
        if let Some(e @ Error::ConfigMismatch { .. }) = report.stopped_by {
            return Err(e);
        }
        if let Some(e) = &report.stopped_by {
            tracing::warn!(error = %e, kept = report.kept, known = report.known, "salvage stopped at damage");
        }
        let dst = match &to.storage {
            Some(s) => s.clone(),
            None => crate::io::open_storage(to.io)?,
        };
        check_target(&*dst, &to.dir)?;
        let tree = Self::open_blocking(to)?;
        if tree.size() != 0 {
            return Err(Error::Config("the salvage target holds leaves".into()));
        }
        let batch = tree.max_batch() as usize;
        crate::wal::park_on(async {
            for c in leaves.chunks(batch.max(1)) {
                tree.insert_many(c).await?;
            }
            tree.flush().await
        })?;
        Ok((tree, report))
    }
}
