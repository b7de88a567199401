//! openraft's state machine: a [`Tree`] that applies committed entries,
//! and snapshots that are the tree's checkpoints.
//!
//! Owns the node's `tree/` directory (and `tree.next/`, `tree.old/` while a
//! received snapshot is installed) and the `RAFT-SNAPSHOT` file in it: the
//! last snapshot's metadata and package.
//!
//! The tree is not told which log entry it applied last: the raft log keeps
//! every entry after the last snapshot, and each entry adds a known number
//! of leaves, so at open the applied id is the entry after which the tree
//! has its recovered size (see [`applied_at_open`]). A leaf batch is one
//! tree record, so a crash never leaves half an entry.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::{Kept, Mark, sync_dir};
use super::{Committed, Request, Response, TypeConfig};
use crate::error::{Error, Result};
use crate::{Config, Hash, Hasher, Tree};

type Membership = StoredMembership<u64, openraft::BasicNode>;
type Meta = SnapshotMeta<u64, openraft::BasicNode>;

/// The file in the tree directory holding the last snapshot.
const SNAPSHOT_FILE: &str = "RAFT-SNAPSHOT";
const PACKAGE_MAGIC: &[u8; 8] = b"RTRAFTS1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"RTRAFTM1";
/// The largest metadata a snapshot file may have (a membership of a few
/// nodes takes a few hundred bytes).
const MAX_META: u32 = 1 << 20;

/// The current tree, swapped when a snapshot is installed, and the gate
/// every change of it passes: shut (`true`) once the node shuts down, so
/// no apply, install or snapshot build outlives it (openraft's tasks may).
pub(crate) struct Cell<H: Hasher, const N: usize, const D: usize> {
    tree: parking_lot::RwLock<Tree<H, N, D>>,
    pub(crate) gate: tokio::sync::Mutex<bool>,
    /// Installs so far (changed under the gate): a snapshot built from
    /// the tree before one must not replace the installed one's file.
    installs: std::sync::atomic::AtomicU64,
    /// The snapshot file as it was when last read through or written:
    /// while it is unchanged, a send need not read it through again.
    checked: parking_lot::Mutex<Option<Stamp>>,
}

impl<H: Hasher, const N: usize, const D: usize> Cell<H, N, D> {
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, Tree<H, N, D>> {
        self.tree.read()
    }
}

pub(crate) type TreeCell<H, const N: usize, const D: usize> = Arc<Cell<H, N, D>>;

fn shut() -> StorageError<u64> {
    sm_err("the node is shut down")
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(meta: Option<&Meta>, e: impl std::fmt::Display) -> StorageError<u64> {
    let sig = meta.map(|m| m.signature());
    StorageIOError::write_snapshot(sig, openraft::AnyError::error(e.to_string())).into()
}

/// What the snapshot file records beside the package.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    /// Leaves in the tree at `meta.last_log_id`.
    size: u64,
}

/// The state machine of one node.
pub struct StateMachine<H: Hasher, const N: usize, const D: usize> {
    pub(crate) tree: TreeCell<H, N, D>,
    /// The directory holding `tree/`.
    node_dir: PathBuf,
    tree_config: Config,
    hasher: H,
    applied: Option<LogId<u64>>,
    membership: Membership,
    /// The last snapshot, built or installed.
    current: Option<(Meta, u64)>,
    /// Tells the raft log which snapshot is on disk (purges wait for it).
    mark: Arc<tokio::sync::watch::Sender<Mark>>,
}

/// What identifies a file's contents cheaply: inode, length, change time.
type Stamp = (u64, u64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (m.ino(), m.len(), m.ctime(), m.ctime_nsec())
}

/// The stamp of the snapshot file in `tree`, if it can be had.
fn stamp_of(tree: &Path) -> Option<Stamp> {
    std::fs::metadata(tree.join(SNAPSHOT_FILE))
        .ok()
        .map(|m| stamp(&m))
}

/// `config` for the tree in `dir`.
fn with_dir(config: &Config, dir: &Path) -> Config {
    let mut c = config.clone();
    c.dir = dir.to_path_buf();
    c
}

/// The tree directory of a node.
pub(crate) fn tree_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("tree")
}

/// Where a snapshot being received is written.
fn incoming(node_dir: &Path) -> PathBuf {
    node_dir.join("snapshot.incoming")
}

/// Finishes or undoes an install a crash interrupted: `tree.next` complete
/// and `tree` gone means the swap was under way.
pub(crate) fn settle_install(node_dir: &Path) -> Result<()> {
    let tree = tree_dir(node_dir);
    let next = node_dir.join("tree.next");
    let old = node_dir.join("tree.old");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if !tree.exists() && next.exists() {
        std::fs::rename(&next, &tree).map_err(io(&next))?;
        sync_dir(node_dir)?;
    }
    for stale in [&next, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io(stale))?;
        }
    }
    for stale in [incoming(node_dir), building(node_dir)] {
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io(&stale))?;
        }
    }
    Ok(())
}

/// A writer that keeps the CRC-32C of what went through it.
struct CrcWrite<W> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> Write for CrcWrite<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.crc = crc32c::crc32c_append(self.crc, &b[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader of a snapshot file that keeps two CRC-32Cs of what came
/// through it (the whole file's, and the package's since `inner` was
/// reset) and where it is; every length is checked against the file's.
struct SnapReader<'a> {
    inner: std::io::BufReader<std::fs::File>,
    path: &'a Path,
    total: u64,
    at: u64,
    outer: u32,
    package: u32,
}

impl Read for SnapReader<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        self.outer = crc32c::crc32c_append(self.outer, &b[..n]);
        self.package = crc32c::crc32c_append(self.package, &b[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

impl SnapReader<'_> {
    fn corrupt(&self, at: u64, reason: String) -> Error {
        Error::Corruption {
            file: self.path.to_path_buf(),
            offset: at,
            reason,
        }
    }

    /// Whether `n` more bytes leave `reserve` for what must follow.
    fn fits(&self, n: u64, reserve: u64) -> Result<()> {
        match self.at.checked_add(n).and_then(|e| e.checked_add(reserve)) {
            Some(end) if end <= self.total => Ok(()),
            _ => Err(self.corrupt(
                self.at,
                format!("{n} more bytes wanted, the file ends first"),
            )),
        }
    }

    /// The next `n` bytes, with `reserve` left after them.
    fn next_bytes(&mut self, n: u64, reserve: u64) -> Result<Vec<u8>> {
        self.fits(n, reserve)?;
        let mut b = vec![0; n as usize];
        let at = self.at;
        self.read_exact(&mut b)
            .map_err(|e| self.corrupt(at, format!("read: {e}")))?;
        Ok(b)
    }

    fn u32(&mut self, reserve: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.next_bytes(4, reserve)?.try_into().expect("4"),
        ))
    }
}

/// The files of a checkpoint a package carries: the identity, the manifest
/// and the shard family of each level.
fn package_name_ok(name: &str) -> bool {
    if name == "IDENTITY" || name == "MANIFEST" {
        return true;
    }
    let Some(file) = name.strip_prefix("shards/level-") else {
        return false;
    };
    let Some((level, ext)) = file.split_once('.') else {
        return false;
    };
    level.len() == 2
        && level.bytes().all(|b| b.is_ascii_digit())
        && matches!(ext, "shard" | "sums" | "tail")
}

/// One file of a checkpoint, held for packing: its bytes, or the open
/// file and the length it had (later checkpoints only append to a shard
/// file, and an open file outlives its directory's removal).
enum Source {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

/// The checkpoint of the tree directory `tree`, held for packing:
/// `IDENTITY`, `MANIFEST` (given log position 0: the receiver has none of
/// this tree's log), then the shard files in name order.
fn capture(tree: &Path) -> Result<Vec<(String, Source)>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut out = Vec::new();
    let identity = tree.join("IDENTITY");
    out.push((
        "IDENTITY".to_owned(),
        Source::Bytes(std::fs::read(&identity).map_err(io(&identity))?),
    ));
    let manifest = tree.join("MANIFEST");
    let data = std::fs::read(&manifest).map_err(io(&manifest))?;
    out.push((
        "MANIFEST".to_owned(),
        Source::Bytes(crate::checkpoint::format::without_log(&manifest, &data)?),
    ));
    let shards = tree.join("shards");
    if shards.exists() {
        let mut names: Vec<String> = std::fs::read_dir(&shards)
            .map_err(io(&shards))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|n| format!("shards/{n}"))
            .filter(|n| package_name_ok(n))
            .collect();
        names.sort();
        for name in names {
            let path = tree.join(&name);
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            let len = f.metadata().map_err(io(&path))?.len();
            out.push((name, Source::File(f, len)));
        }
    }
    Ok(out)
}

/// Packs captured checkpoint files into `out`, streamed: `RTRAFTS1`,
/// leaves (u64), root flag (u8) and root (32), file count (u32), then per
/// file its name length (u16), name, length (u64) and bytes; a CRC-32C of
/// all before. `at` names the destination in errors.
fn pack(
    files: Vec<(String, Source)>,
    size: u64,
    root: Option<Hash>,
    out: &mut impl Write,
    at: &Path,
) -> Result<()> {
    let io = |source| Error::Io {
        path: at.to_path_buf(),
        source,
    };
    let mut w = CrcWrite {
        inner: out,
        crc: 0,
        len: 0,
    };
    let mut head = Vec::with_capacity(53);
    head.extend_from_slice(PACKAGE_MAGIC);
    head.extend_from_slice(&size.to_le_bytes());
    head.push(root.is_some() as u8);
    head.extend_from_slice(&root.unwrap_or_default());
    head.extend_from_slice(&(files.len() as u32).to_le_bytes());
    w.write_all(&head).map_err(io)?;
    for (name, source) in files {
        w.write_all(&(name.len() as u16).to_le_bytes())
            .and_then(|()| w.write_all(name.as_bytes()))
            .map_err(io)?;
        match source {
            Source::Bytes(data) => w
                .write_all(&(data.len() as u64).to_le_bytes())
                .and_then(|()| w.write_all(&data))
                .map_err(io)?,
            Source::File(mut f, len) => {
                w.write_all(&len.to_le_bytes()).map_err(io)?;
                let copied = std::io::copy(&mut (&mut f).take(len), &mut w).map_err(io)?;
                if copied != len {
                    return Err(Error::Replication(format!(
                        "{name} shrank while it was packed"
                    )));
                }
            }
        }
    }
    let crc = w.crc;
    w.write_all(&crc.to_le_bytes()).map_err(io)?;
    Ok(())
}

/// Writes a snapshot file at `path`, durably (the directory is the
/// caller's to sync after placing it): `RTRAFTM1`, the metadata's length
/// (u32) and postcard, the package of the captured checkpoint, a CRC-32C
/// of all before.
fn write_snapshot_file(
    path: &Path,
    file: &SnapshotFile,
    files: Vec<(String, Source)>,
    root: Option<Hash>,
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = postcard::to_stdvec(file).map_err(|e| Error::Config(e.to_string()))?;
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = CrcWrite {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        crc: 0,
        len: 0,
    };
    w.write_all(SNAPSHOT_MAGIC)
        .and_then(|()| w.write_all(&(meta.len() as u32).to_le_bytes()))
        .and_then(|()| w.write_all(&meta))
        .map_err(io)?;
    pack(files, file.size, root, &mut w, path)?;
    let crc = w.crc;
    let mut f = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    f.write_all(&crc.to_le_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}

impl<'a> SnapReader<'a> {
    /// Opens the snapshot file at `path` and reads its header (magic and
    /// metadata), leaving `TRAILER` bytes at least after each read.
    fn open(path: &'a Path, buffer: usize) -> Result<(Self, SnapshotFile)> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let total = f.metadata().map_err(io)?.len();
        let mut r = SnapReader {
            inner: std::io::BufReader::with_capacity(buffer, f),
            path,
            total,
            at: 0,
            outer: 0,
            package: 0,
        };
        if r.next_bytes(8, TRAILER)? != SNAPSHOT_MAGIC {
            return Err(r.corrupt(0, "not a raft snapshot file".into()));
        }
        let meta_len = r.u32(TRAILER)?;
        if meta_len > MAX_META {
            // Damage, found before the checksums can be: no allocation for it.
            return Err(r.corrupt(8, format!("metadata of {meta_len} bytes")));
        }
        let meta = r.next_bytes(meta_len.into(), TRAILER)?;
        let file = match postcard::take_from_bytes(&meta) {
            Ok((file, [])) => file,
            Ok((_, rest)) => {
                return Err(r.corrupt(12, format!("{} stray bytes in the metadata", rest.len())));
            }
            Err(e) => return Err(r.corrupt(12, format!("metadata: {e}"))),
        };
        Ok((r, file))
    }
}

/// The package's checksum and the file's, the last bytes of a snapshot file.
const TRAILER: u64 = 8;

/// The metadata of the snapshot file at `path` (its header only: the file
/// was read through before).
fn read_snapshot_meta(path: &Path) -> Result<Meta> {
    Ok(SnapReader::open(path, 64 << 10)?.1.meta)
}

/// What a snapshot file holds, read through.
struct Parsed {
    file: SnapshotFile,
    /// The leaves and root its package declares.
    size: u64,
    root: Option<Hash>,
}

/// Reads the snapshot file at `path` through, checking its layout and both
/// checksums; with `into`, writes the package's files there (a directory
/// with `shards/`), each synced. Memory stays small whatever the size.
fn read_snapshot_file(path: &Path, into: Option<&Path>) -> Result<Parsed> {
    let (mut r, file) = SnapReader::open(path, 1 << 20)?;
    let total = r.total;
    let start = r.at;
    r.package = 0;
    let head = r.next_bytes(53, TRAILER)?;
    if &head[..8] != PACKAGE_MAGIC {
        return Err(r.corrupt(start, "not a snapshot package".into()));
    }
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8"));
    let root: Hash = head[17..49].try_into().expect("32");
    let root = match head[16] {
        0 => None,
        1 => Some(root),
        f => return Err(r.corrupt(start + 16, format!("root flag {f}"))),
    };
    let count = u32::from_le_bytes(head[49..53].try_into().expect("4"));
    let mut names: Vec<String> = Vec::new();
    for _ in 0..count {
        let at = r.at;
        let n = u16::from_le_bytes(r.next_bytes(2, TRAILER)?.try_into().expect("2"));
        let name = String::from_utf8(r.next_bytes(n.into(), TRAILER)?)
            .map_err(|e| r.corrupt(at, format!("file name: {e}")))?;
        if !package_name_ok(&name) || names.contains(&name) {
            return Err(r.corrupt(
                at,
                format!("unexpected file {name:?} in a snapshot package"),
            ));
        }
        let len = u64::from_le_bytes(r.next_bytes(8, TRAILER)?.try_into().expect("8"));
        r.fits(len, TRAILER)?;
        let at = r.at;
        let copied = match into {
            Some(dir) => {
                let out = dir.join(&name);
                let io = |source| Error::Io {
                    path: out.clone(),
                    source,
                };
                let mut o = std::fs::File::create(&out).map_err(io)?;
                let copied = std::io::copy(&mut Read::take(&mut r, len), &mut o).map_err(io)?;
                o.sync_data().map_err(io)?;
                copied
            }
            None => std::io::copy(&mut Read::take(&mut r, len), &mut std::io::sink())
                .map_err(|e| r.corrupt(at, format!("read: {e}")))?,
        };
        if copied != len {
            return Err(r.corrupt(at, format!("{name} cut short")));
        }
        names.push(name);
    }
    if r.at + TRAILER != total {
        return Err(r.corrupt(
            r.at,
            format!("{} stray bytes after the files", total - r.at - TRAILER),
        ));
    }
    let want = r.package;
    if r.u32(4)?.to_le_bytes() != want.to_le_bytes() {
        return Err(r.corrupt(start, "the snapshot package fails its checksum".into()));
    }
    let want = r.outer;
    if r.u32(0)? != want {
        return Err(r.corrupt(0, "the snapshot file fails its checksum".into()));
    }
    Ok(Parsed { file, size, root })
}

/// Why a tree of `size` leaves refuses `leaves`, if it does: full, or a
/// leaf the hasher refuses. The same on every node (it depends on the
/// tree's contents and type only), so a refused entry is refused
/// everywhere and the walk at open can tell which entries added leaves.
pub(crate) fn refusal<H: Hasher, const N: usize, const D: usize>(
    hasher: &H,
    size: u64,
    leaves: &[Hash],
) -> Option<String> {
    let capacity = crate::imt::capacity_of(N, D);
    if leaves.is_empty() {
        return Some("empty batch".into());
    }
    if capacity - size.min(capacity) < leaves.len() as u64 {
        return Some(format!(
            "tree full: {size} leaves + {} exceeds the capacity of {capacity}",
            leaves.len()
        ));
    }
    leaves.iter().enumerate().find_map(|(i, l)| {
        hasher
            .check_leaf(l)
            .err()
            .map(|why| format!("leaf {} refused by the hasher: {why}", size + i as u64))
    })
}

/// Checks that a snapshot file read through (`parsed`, from `path`) is one
/// of `tree`'s: declaring the leaves and root the tree had at that size, so
/// a follower is never sent another tree's checkpoint.
fn check_snapshot_of<H: Hasher, const N: usize, const D: usize>(
    tree: &Tree<H, N, D>,
    path: &Path,
    parsed: &Parsed,
) -> Result<()> {
    let corrupt = |reason: String| Error::Corruption {
        file: path.to_path_buf(),
        offset: 0,
        reason,
    };
    let size = parsed.file.size;
    if parsed.size != size {
        return Err(corrupt(format!(
            "the package holds {} leaves, the metadata says {size}",
            parsed.size
        )));
    }
    if size > tree.size() {
        return Err(corrupt(format!(
            "a snapshot of {size} leaves, the tree holds {}",
            tree.size()
        )));
    }
    let root = match size {
        0 => None,
        n => Some(tree.snapshot().root_at(n)?),
    };
    if root != parsed.root {
        return Err(corrupt(format!(
            "the snapshot's root at {size} leaves is not the tree's"
        )));
    }
    Ok(())
}

/// The last log index a snapshot covers.
fn snapshot_index(current: Option<&(Meta, u64)>) -> Option<u64> {
    current.and_then(|(m, _)| m.last_log_id.map(|l| l.index))
}

/// The last applied id and membership of a tree of `size` leaves, given
/// the last snapshot and the raft log after it; a disagreement is an error
/// naming the tree directory `dir`.
pub(crate) fn applied_at_open(
    dir: &Path,
    size: u64,
    snapshot: Option<(&Meta, u64)>,
    kept: &Kept,
    refused: impl Fn(u64, &[Hash]) -> bool,
) -> Result<(Option<LogId<u64>>, Membership)> {
    let (mut applied, mut membership, mut at) = match snapshot {
        Some((m, s)) => (m.last_log_id, m.last_membership.clone(), s),
        None => (None, Membership::default(), 0),
    };
    let mismatch = |reason: String| Error::Corruption {
        file: dir.to_path_buf(),
        offset: size,
        reason,
    };
    if size < at {
        return Err(mismatch(format!(
            "the tree holds {size} leaves, fewer than its last snapshot's {at}"
        )));
    }
    let first = applied.map_or(0, |l| l.index + 1);
    for (next, (&index, (_, e))) in (first..).zip(kept.entries.range(first..)) {
        if at == size {
            break;
        }
        if index != next {
            return Err(mismatch(format!(
                "raft entry {next}, which the tree's leaves need, is not in the log"
            )));
        }
        match &e.payload {
            EntryPayload::Normal(r) if !refused(at, &r.leaves) => at += r.leaves.len() as u64,
            EntryPayload::Normal(_) | EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(e.log_id), m.clone())
            }
        }
        applied = Some(e.log_id);
        if at > size {
            return Err(mismatch(format!(
                "the tree's {size} leaves end inside raft entry {index}"
            )));
        }
    }
    if at != size {
        return Err(mismatch(format!(
            "the tree holds {size} leaves, the raft log accounts for {at}"
        )));
    }
    Ok((applied, membership))
}

impl<H: Hasher + Clone, const N: usize, const D: usize> StateMachine<H, N, D> {
    /// Opens the tree of `node_dir` and finds what it applied.
    pub(crate) async fn open(
        node_dir: &Path,
        tree_config: Config,
        hasher: H,
        kept: &super::log_store::LogStore,
    ) -> Result<Self> {
        settle_install(node_dir)?;
        let dir = tree_dir(node_dir);
        let tree = Tree::open_with(with_dir(&tree_config, &dir), hasher.clone()).await?;
        let path = dir.join(SNAPSHOT_FILE);
        let current = if path.exists() {
            let parsed = read_snapshot_file(&path, None)?;
            check_snapshot_of(&tree, &path, &parsed)?;
            Some((parsed.file.meta, parsed.file.size))
        } else {
            None
        };
        let (applied, membership) = kept.with_kept(|k| {
            applied_at_open(
                &dir,
                tree.size(),
                current.as_ref().map(|(m, s)| (m, *s)),
                k,
                |size, leaves| refusal::<H, N, D>(&hasher, size, leaves).is_some(),
            )
        })?;
        let mark = kept.mark();
        mark.send_modify(|m| m.snapshot = snapshot_index(current.as_ref()));
        Ok(Self {
            tree: Arc::new(Cell {
                tree: parking_lot::RwLock::new(tree),
                gate: tokio::sync::Mutex::new(false),
                installs: Default::default(),
                checked: parking_lot::Mutex::new(stamp_of(&dir)),
            }),
            node_dir: node_dir.to_path_buf(),
            tree_config,
            hasher,
            applied,
            membership,
            current,
            mark,
        })
    }

    fn tree(&self) -> Tree<H, N, D> {
        self.tree.read().clone()
    }

    /// Records `current` as the snapshot on disk (it is durable).
    fn set_current(&mut self, current: (Meta, u64)) {
        self.current = Some(current);
        let index = snapshot_index(self.current.as_ref());
        self.mark
            .send_modify(|m| m.snapshot = m.snapshot.max(index));
    }

    /// Verifies a received snapshot file (at `received`) and installs it
    /// as the tree.
    async fn install(&mut self, meta: &Meta, received: &Path) -> Result<u64> {
        let bad =
            |reason: String| Error::Replication(format!("snapshot {}: {reason}", meta.snapshot_id));
        let next = self.node_dir.join("tree.next");
        if next.exists() {
            std::fs::remove_dir_all(&next).map_err(|source| Error::Io {
                path: next.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(next.join("shards")).map_err(|source| Error::Io {
            path: next.clone(),
            source,
        })?;
        let parsed = {
            let (received, next) = (received.to_path_buf(), next.clone());
            tokio::task::spawn_blocking(move || read_snapshot_file(&received, Some(&next)))
                .await
                .map_err(|e| bad(format!("unpacking: {e}")))??
        };
        if parsed.file.meta != *meta || parsed.file.size != parsed.size {
            return Err(bad(format!(
                "the file received is of snapshot {} ({} leaves, package {})",
                parsed.file.meta.snapshot_id, parsed.file.size, parsed.size
            )));
        }
        sync_dir(&next.join("shards"))?;
        sync_dir(&next)?;
        crate::tree::open::start_empty_log(&with_dir(&self.tree_config, &next))?;
        // Every chunk against its checksum, every level recomputed from the
        // leaves, the root against the manifest: then against the leader's.
        let staged = Tree::<H, N, D>::open_with(
            with_dir(&self.tree_config, &next).verify_on_open(true),
            self.hasher.clone(),
        )
        .await?;
        let (size, root) = (staged.size(), staged.root());
        staged.close().await?;
        if size != parsed.size || root != parsed.root {
            return Err(bad(format!(
                "the checkpoint holds {size} leaves with root {:?}, the leader declared {} with {:?}",
                root.map(|r| crate::wal::format::hex(&r)),
                parsed.size,
                parsed.root.map(|r| crate::wal::format::hex(&r))
            )));
        }
        // The file received is this tree's snapshot file from now on.
        let kept = next.join(SNAPSHOT_FILE);
        std::fs::rename(received, &kept).map_err(|source| Error::Io {
            path: received.to_path_buf(),
            source,
        })?;
        sync_dir(&next)?;
        sync_dir(&self.node_dir)?;
        // The swap: `settle_install` finishes it after a crash. The cell
        // holds the old, closed tree until the new one is open.
        let current = self.tree();
        current.close().await?;
        let dir = tree_dir(&self.node_dir);
        let old = self.node_dir.join("tree.old");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
        std::fs::rename(&next, &dir).map_err(io(&next))?;
        sync_dir(&self.node_dir)?;
        let tree = Tree::open_with(with_dir(&self.tree_config, &dir), self.hasher.clone()).await?;
        *self.tree.tree.write() = tree;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
        Ok(size)
    }
}

/// A checkpoint taken between applies, held for openraft's builder task,
/// which writes the snapshot file from it beside later applies.
pub struct SnapshotBuilder {
    made: Option<std::result::Result<Prepared, String>>,
}

/// What the builder needs of the state machine.
struct Prepared {
    file: SnapshotFile,
    root: Option<Hash>,
    files: Vec<(String, Source)>,
    node_dir: PathBuf,
    /// The cell's install count when the checkpoint was taken.
    installs: u64,
    gate: Arc<dyn Gate>,
    mark: Arc<tokio::sync::watch::Sender<Mark>>,
}

/// The parts of a [`Cell`] a builder uses (its type has no tree type).
trait Gate: Send + Sync {
    fn gate(&self) -> &tokio::sync::Mutex<bool>;
    fn installs(&self) -> u64;
    fn checked(&self) -> &parking_lot::Mutex<Option<Stamp>>;
}

impl<H: Hasher, const N: usize, const D: usize> Gate for Cell<H, N, D> {
    fn gate(&self) -> &tokio::sync::Mutex<bool> {
        &self.gate
    }
    fn installs(&self) -> u64 {
        self.installs.load(std::sync::atomic::Ordering::Acquire)
    }
    fn checked(&self) -> &parking_lot::Mutex<Option<Stamp>> {
        &self.checked
    }
}

/// Where a snapshot file is written before it is put in place.
fn building(node_dir: &Path) -> PathBuf {
    node_dir.join("snapshot.building")
}

impl Prepared {
    /// Writes the snapshot file, then, under the gate and only if no
    /// install came since the checkpoint, puts it in place and moves the
    /// mark. After an install the installed snapshot is the answer (newer
    /// than this one, so openraft keeps it).
    async fn build(self) -> Result<(Meta, std::fs::File)> {
        let Prepared {
            file,
            root,
            files,
            node_dir,
            installs,
            gate,
            mark,
        } = self;
        let tmp = building(&node_dir);
        let meta = file.meta.clone();
        {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || write_snapshot_file(&tmp, &file, files, root))
                .await
                .map_err(|e| Error::Replication(format!("snapshot task: {e}")))??;
        }
        let shut = gate.gate().lock().await;
        if *shut {
            return Err(Error::Closed);
        }
        let tree = tree_dir(&node_dir);
        let path = tree.join(SNAPSHOT_FILE);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        if gate.installs() != installs {
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
            let meta = read_snapshot_meta(&path)?;
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            return Ok((meta, f));
        }
        std::fs::rename(&tmp, &path).map_err(io(&tmp))?;
        sync_dir(&tree)?;
        sync_dir(&node_dir)?;
        let f = std::fs::File::open(&path).map_err(io(&path))?;
        *gate.checked().lock() = f.metadata().ok().map(|m| stamp(&m));
        let index = meta.last_log_id.map(|l| l.index);
        mark.send_modify(|m| m.snapshot = m.snapshot.max(index));
        drop(shut);
        Ok((meta, f))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<Snapshot<TypeConfig>, StorageError<u64>> {
        match self.made.take() {
            Some(Ok(prepared)) => {
                let mark = prepared.mark.clone();
                match prepared.build().await {
                    Ok((meta, file)) => Ok(Snapshot {
                        meta,
                        snapshot: Box::new(tokio::fs::File::from_std(file)),
                    }),
                    Err(e) => {
                        // openraft stops on the builder's error.
                        mark.send_modify(|m| m.stopped = true);
                        Err(snap_err(None, e))
                    }
                }
            }
            Some(Err(e)) => Err(snap_err(None, e)),
            None => Err(snap_err(None, "snapshot already taken")),
        }
    }
}

impl<H: Hasher + Clone, const N: usize, const D: usize> StateMachine<H, N, D> {
    /// A checkpoint of the tree as it is (every applied entry, nothing
    /// more), held for the builder. openraft builds snapshots on a task of
    /// their own, beside later applies, so the checkpoint is taken here,
    /// between applies; the file is written from it on the builder's task.
    async fn make_snapshot(&mut self) -> Result<Prepared> {
        let cell = self.tree.clone();
        let gate = cell.gate.lock().await;
        if *gate {
            return Err(Error::Closed);
        }
        let tree = self.tree();
        tree.checkpoint().await?;
        let (size, root) = (tree.size(), tree.root());
        let files = capture(tree.dir())?;
        let meta = Meta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            // Unique per build: a receiver must never splice two packages
            // made at the same log id.
            snapshot_id: format!(
                "{}-{}-{}",
                self.applied.map_or(0, |l| l.leader_id.term),
                self.applied.map_or(0, |l| l.index),
                crate::wal::format::hex(&crate::tree::identity::random_id()[..8])
            ),
        };
        self.current = Some((meta.clone(), size));
        Ok(Prepared {
            file: SnapshotFile { meta, size },
            root,
            files,
            node_dir: self.node_dir.clone(),
            installs: cell.installs.load(std::sync::atomic::Ordering::Acquire),
            gate: cell.clone(),
            mark: self.mark.clone(),
        })
    }
}

impl<H: Hasher + Clone, const N: usize, const D: usize> RaftStateMachine<TypeConfig>
    for StateMachine<H, N, D>
{
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cell = self.tree.clone();
        let gate = cell.gate.lock().await;
        if *gate {
            return Err(shut());
        }
        let tree = self.tree();
        let mut out = Vec::new();
        for e in entries {
            let r = match e.payload {
                EntryPayload::Normal(Request { leaves }) => {
                    match refusal::<H, N, D>(&self.hasher, tree.size(), &leaves) {
                        Some(why) => Response::Refused(why),
                        // Any other failure stops the node: applying it on
                        // some nodes only would make them differ.
                        None => {
                            let ins = tree.insert_many(&leaves).await.map_err(|e| {
                                // openraft stops; a purge waiting on this
                                // state machine must not wait for ever.
                                self.mark.send_modify(|m| m.stopped = true);
                                sm_err(e)
                            })?;
                            Response::Inserted(Committed {
                                index: ins.index,
                                size: ins.index + leaves.len() as u64,
                                root: ins.root,
                            })
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    Response::Noop
                }
                EntryPayload::Blank => Response::Noop,
            };
            self.applied = Some(e.log_id);
            out.push(r);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let made = self.make_snapshot().await.map_err(|e| e.to_string());
        if let Err(e) = &made {
            // openraft stops on the builder's error.
            self.mark.send_modify(|m| m.stopped = true);
            tracing::error!(error = %e, "snapshot failed");
        }
        SnapshotBuilder { made: Some(made) }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<tokio::fs::File>, StorageError<u64>> {
        // openraft writes the chunks at their offsets; the file is read
        // through and checked at install.
        // A new file each time: a write of an abandoned stream still under
        // way lands in the old, unlinked one.
        let path = incoming(&self.node_dir);
        let err = |e: std::io::Error| snap_err(None, format!("{}: {e}", path.display()));
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(err)?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> std::result::Result<(), StorageError<u64>> {
        let cell = self.tree.clone();
        let gate = cell.gate.lock().await;
        if *gate {
            return Err(shut());
        }
        // From here the tree directory may change: a build under way is
        // of the tree before.
        self.tree
            .installs
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let received = incoming(&self.node_dir);
        let mut snapshot = snapshot;
        let flushed = match tokio::io::AsyncWriteExt::flush(&mut *snapshot).await {
            Ok(()) => snapshot.sync_data().await,
            Err(e) => Err(e),
        };
        let installed = match flushed {
            Ok(()) => {
                drop(snapshot);
                self.install(meta, &received).await
            }
            Err(source) => Err(Error::Io {
                path: received,
                source,
            }),
        };
        let size = match installed {
            Ok(size) => size,
            Err(e) => {
                // openraft stops on this error; the purge it queued behind
                // the snapshot must not go ahead.
                self.mark.send_modify(|m| m.stopped = true);
                return Err(snap_err(Some(meta), e));
            }
        };
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.set_current((meta.clone(), size));
        *self.tree.checked.lock() = stamp_of(&tree_dir(&self.node_dir));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        // Read through unless unchanged since it was last: a damaged file
        // is reported here, not sent.
        let path = tree_dir(&self.node_dir).join(SNAPSHOT_FILE);
        let checked = *self.tree.checked.lock();
        let opened = tokio::task::spawn_blocking(move || {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(Error::Io { path, source }),
            };
            let now = f
                .metadata()
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })
                .map(|m| stamp(&m))?;
            let meta = if checked == Some(now) {
                read_snapshot_meta(&path)?
            } else {
                read_snapshot_file(&path, None)?.file.meta
            };
            Ok(Some((meta, f, now)))
        })
        .await
        .map_err(|e| snap_err(None, e))?
        .map_err(|e| snap_err(None, e))?;
        Ok(opened.map(|(meta, f, now)| {
            *self.tree.checked.lock() = Some(now);
            Snapshot {
                meta,
                snapshot: Box::new(tokio::fs::File::from_std(f)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId};

    use super::*;

    fn entry(index: u64, leaves: usize) -> (u64, (u64, Entry<TypeConfig>)) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                leaves: vec![[index as u8; 32]; leaves],
            }),
        };
        (index, (index * 100, e))
    }

    fn kept(entries: &[(u64, usize)]) -> Kept {
        let mut k = Kept::default();
        for &(i, n) in entries {
            let (i, e) = entry(i, n);
            k.entries.insert(i, e);
        }
        k
    }

    /// The walk stops at the entry after which the tree has its size, and
    /// counts no leaves for an entry the tree refused.
    #[test]
    fn applied_at_open_follows_the_leaves_and_skips_refusals() {
        let k = kept(&[(0, 2), (1, 3), (2, 1), (3, 4)]);
        let none = |_: u64, _: &[Hash]| false;
        let at = |size| {
            applied_at_open(Path::new("t"), size, None, &k, none)
                .unwrap()
                .0
                .map(|l| l.index)
        };
        assert_eq!(at(0), None);
        assert_eq!(at(2), Some(0));
        assert_eq!(at(5), Some(1));
        assert_eq!(at(6), Some(2));
        assert_eq!(at(10), Some(3));
        // Inside an entry, or beyond the log: the tree and log disagree.
        assert!(applied_at_open(Path::new("t"), 4, None, &k, none).is_err());
        assert!(applied_at_open(Path::new("t"), 11, None, &k, none).is_err());
        // Entry 1 (3 leaves) refused: the tree of 3 leaves applied entry 2.
        let refuse_1 = |_: u64, l: &[Hash]| l[0] == [1u8; 32];
        let at = |size| {
            applied_at_open(Path::new("t"), size, None, &k, refuse_1)
                .unwrap()
                .0
                .map(|l| l.index)
        };
        assert_eq!(at(2), Some(0));
        assert_eq!(at(3), Some(2));
        assert_eq!(at(7), Some(3));
    }

    /// A missing entry the tree's leaves need is reported, not skipped.
    #[test]
    fn applied_at_open_reports_a_gap() {
        let k = kept(&[(0, 2), (2, 1)]);
        let e = applied_at_open(Path::new("t"), 3, None, &k, |_, _| false).unwrap_err();
        assert!(e.to_string().contains("raft entry 1"), "{e}");
    }

    fn meta() -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
            last_membership: Membership::default(),
            snapshot_id: "s".into(),
        }
    }

    /// A snapshot file reads back what was written (the manifest without
    /// the sender's log); a byte flipped anywhere, a cut or stray bytes are
    /// refused; only checkpoint files may be named in it.
    #[test]
    fn snapshot_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shards")).unwrap();
        std::fs::write(dir.path().join("IDENTITY"), b"id").unwrap();
        std::fs::write(dir.path().join("shards/level-00.shard"), [7u8; 100]).unwrap();
        let m = crate::checkpoint::format::Manifest {
            arity: 4,
            leaves: 3,
            root: [0; 32],
            wal_position: 77,
            tree_id: [3; 16],
            levels: vec![],
            finalized: 0,
        };
        std::fs::write(dir.path().join("MANIFEST"), m.encode()).unwrap();
        let file = SnapshotFile {
            meta: meta(),
            size: 3,
        };
        let path = dir.path().join(SNAPSHOT_FILE);
        write_snapshot_file(&path, &file, capture(dir.path()).unwrap(), Some([5; 32])).unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("shards")).unwrap();
        let parsed = read_snapshot_file(&path, Some(out.path())).unwrap();
        assert_eq!((parsed.size, parsed.root), (3, Some([5; 32])));
        assert_eq!(parsed.file.meta, meta());
        assert_eq!(std::fs::read(out.path().join("IDENTITY")).unwrap(), b"id");
        assert_eq!(
            std::fs::read(out.path().join("shards/level-00.shard")).unwrap(),
            [7u8; 100]
        );
        let manifest = crate::checkpoint::format::Manifest::decode(
            Path::new("m"),
            &std::fs::read(out.path().join("MANIFEST")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.wal_position, 0, "the receiver has no log");
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 1 << (i % 8);
            std::fs::write(&bad, &b).unwrap();
            let e = read_snapshot_file(&bad, None).map(|_| ()).unwrap_err();
            assert_eq!(e.file(), Some(bad.as_path()), "byte {i}: {e}");
        }
        for cut in [0, 10, good.len() / 2, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            assert!(read_snapshot_file(&bad, None).is_err(), "cut to {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&bad, &longer).unwrap();
        assert!(read_snapshot_file(&bad, None).is_err());
        for name in ["../x", "shards/level-1.shard", "LOCK", "wal/0.wal"] {
            assert!(!package_name_ok(name), "{name}");
        }
        assert!(package_name_ok("shards/level-07.tail"));
    }

    /// A snapshot file is accepted only by the tree it was made of.
    #[tokio::test]
    async fn a_snapshot_file_belongs_to_its_tree() {
        use crate::Blake3;
        let make = async |first: u8| {
            let dir = tempfile::tempdir().unwrap();
            let tree = Tree::<Blake3, 4, 32>::open(Config::new(dir.path()))
                .await
                .unwrap();
            let leaves: Vec<Hash> = (0..40u8).map(|i| [first.wrapping_add(i); 32]).collect();
            tree.insert_many(&leaves).await.unwrap();
            tree.checkpoint().await.unwrap();
            let file = SnapshotFile {
                meta: meta(),
                size: 40,
            };
            write_snapshot_file(
                &dir.path().join(SNAPSHOT_FILE),
                &file,
                capture(dir.path()).unwrap(),
                tree.root(),
            )
            .unwrap();
            let parsed = read_snapshot_file(&dir.path().join(SNAPSHOT_FILE), None).unwrap();
            tree.insert_many(&leaves[..5]).await.unwrap();
            (dir, tree, parsed)
        };
        let (_a_dir, a, mut parsed) = make(0).await;
        let (_b_dir, b, _) = make(100).await;
        let path = Path::new("RAFT-SNAPSHOT");
        check_snapshot_of(&a, path, &parsed).unwrap();
        let e = check_snapshot_of(&b, path, &parsed).unwrap_err();
        assert!(e.to_string().contains("not the tree's"), "{e}");
        parsed.file.size = 41;
        assert!(check_snapshot_of(&a, path, &parsed).is_err());
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    /// The raft log and state machine of a node in `dir`, default configs.
    async fn open_node(dir: &Path) -> (crate::raft::LogStore, StateMachine<crate::Blake3, 4, 32>) {
        let storage = crate::io::open_storage(Config::new(dir).io).unwrap();
        let log = crate::raft::LogStore::open(
            storage,
            &dir.join("raft"),
            &crate::wal::LogConfig::default(),
        )
        .unwrap();
        let sm = StateMachine::open(dir, Config::new(dir), crate::Blake3, &log)
            .await
            .unwrap();
        (log, sm)
    }

    /// A snapshot file damaged after it was written is reported when
    /// openraft asks for it to send, not sent.
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_not_sent() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (log, mut sm) = open_node(dir.path()).await;
        let entries = (0..5).map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Request {
                leaves: vec![[i as u8 + 1; 32]; 300],
            }),
        });
        sm.apply(entries).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let built = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        let sent = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(sent.meta, built.meta);
        let path = tree_dir(dir.path()).join(SNAPSHOT_FILE);
        let mut b = std::fs::read(&path).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 4;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, &b).unwrap();
        let e = sm.get_current_snapshot().await.map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let tree = sm.tree.read().clone();
        tree.close().await.unwrap();
        log.close().unwrap();
    }

    /// A snapshot whose checkpoint was taken before an install does not
    /// replace the installed snapshot's file: the build answers with the
    /// installed one.
    #[tokio::test]
    async fn a_build_overtaken_by_an_install_gives_way() {
        use openraft::RaftSnapshotBuilder;
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (log, mut sm) = open_node(dir.path()).await;
        let entry = |i: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Request {
                leaves: vec![[i as u8 + 1; 32]; 100],
            }),
        };
        sm.apply((0..3).map(entry)).await.unwrap();
        let first = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
            .meta;
        sm.apply((3..6).map(entry)).await.unwrap();
        let mut second = sm.get_snapshot_builder().await;
        // An install lands while the second is written.
        sm.tree
            .installs
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let answer = second.build_snapshot().await.unwrap().meta;
        assert_eq!(answer, first, "an older build replaced the installed file");
        let path = tree_dir(dir.path()).join(SNAPSHOT_FILE);
        assert_eq!(read_snapshot_meta(&path).unwrap(), first);
        assert!(!building(dir.path()).exists());
        let tree = sm.tree.read().clone();
        tree.close().await.unwrap();
        log.close().unwrap();
    }
}
