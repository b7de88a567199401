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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result, corruption, io_err};
use crate::hash::Hash;
use crate::imt::{CHUNK_LEN, ChunkRef, ChunkStats, MappedShard, Snapshot};
use crate::io::{Storage, StorageFile};

pub(crate) const MANIFEST: &str = "MANIFEST";
const SHARDS: &str = "shards";
const MANIFEST_MAGIC: [u8; 8] = *b"RTMANIFS";
const SHARD_MAGIC: [u8; 8] = *b"RTSHARD1";
const SUMS_MAGIC: [u8; 8] = *b"RTSUMS01";
/// Version of the shard, sums and tail file headers.
const VERSION: u32 = 1;
/// Version of the manifest (2: with the tree id).
const MANIFEST_VERSION: u32 = 2;
/// Shard header size; chunk `i` is at `SHARD_HEADER + i * CHUNK_BYTES`, so
/// chunks are page-aligned.
const SHARD_HEADER: u64 = 4096;
const SUMS_HEADER: u64 = 64;
const CHUNK_BYTES: u64 = (CHUNK_LEN * 32) as u64;
/// Bytes per level in the manifest.
const LEVEL_META: usize = 20;

/// One level in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LevelMeta {
    /// Nodes in the level.
    pub nodes: u64,
    /// CRC-32C over the checksums of the level's sealed chunks (u32 LE
    /// each, in order).
    pub sums_crc: u32,
    /// Which tail slot (0 or 1) holds the level's last chunk.
    pub tail_slot: u32,
    /// CRC-32C of that tail chunk (4 KiB, zero past the last node).
    pub tail_crc: u32,
}

/// Sealed chunks of a level of `nodes` nodes: every chunk before the one
/// holding the last node.
fn sealed_chunks(nodes: u64) -> u64 {
    nodes.saturating_sub(1) / CHUNK_LEN as u64
}

/// What a checkpoint covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub arity: u32,
    pub leaves: u64,
    /// All zero for an empty tree.
    pub root: Hash,
    /// The log below this position is covered by the checkpoint.
    pub wal_position: u64,
    /// The tree's id (see `identity`): a manifest of another tree is
    /// refused.
    pub tree_id: [u8; 16],
    pub levels: Vec<LevelMeta>,
}

impl Manifest {
    /// `"RTMANIFS" | version u32 | arity u32 | leaves u64 | WAL position u64
    /// | root [32] | tree id [16] | level count u32 | per level: nodes u64,
    /// sums crc u32, tail slot u32, tail crc u32 | crc32c of all before u32`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(88 + LEVEL_META * self.levels.len());
        b.extend_from_slice(&MANIFEST_MAGIC);
        b.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b.extend_from_slice(&self.arity.to_le_bytes());
        b.extend_from_slice(&self.leaves.to_le_bytes());
        b.extend_from_slice(&self.wal_position.to_le_bytes());
        b.extend_from_slice(&self.root);
        b.extend_from_slice(&self.tree_id);
        b.extend_from_slice(&(self.levels.len() as u32).to_le_bytes());
        for l in &self.levels {
            b.extend_from_slice(&l.nodes.to_le_bytes());
            b.extend_from_slice(&l.sums_crc.to_le_bytes());
            b.extend_from_slice(&l.tail_slot.to_le_bytes());
            b.extend_from_slice(&l.tail_crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(path: &Path, b: &[u8]) -> Result<Self> {
        const FIXED: usize = 8 + 4 + 4 + 8 + 8 + 32 + 16 + 4;
        if b.len() < FIXED + 4 {
            return Err(corruption(
                path,
                0,
                format!(
                    "manifest is {} bytes, at least {} expected",
                    b.len(),
                    FIXED + 4
                ),
            ));
        }
        let body = &b[..b.len() - 4];
        let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err(corruption(
                path,
                (b.len() - 4) as u64,
                "manifest checksum mismatch",
            ));
        }
        if b[..8] != MANIFEST_MAGIC {
            return Err(corruption(path, 0, "bad manifest magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(8) != MANIFEST_VERSION {
            return Err(corruption(
                path,
                8,
                format!(
                    "unsupported manifest version {}, this build reads {MANIFEST_VERSION}",
                    u32_at(8)
                ),
            ));
        }
        let count = u32_at(80) as usize;
        if body.len() != FIXED + LEVEL_META * count {
            return Err(corruption(
                path,
                80,
                format!(
                    "{count} levels do not match the manifest's length {}",
                    b.len()
                ),
            ));
        }
        let levels = (0..count)
            .map(|i| {
                let o = FIXED + LEVEL_META * i;
                LevelMeta {
                    nodes: u64_at(o),
                    sums_crc: u32_at(o + 8),
                    tail_slot: u32_at(o + 12),
                    tail_crc: u32_at(o + 16),
                }
            })
            .collect();
        Ok(Self {
            arity: u32_at(12),
            leaves: u64_at(16),
            wal_position: u64_at(24),
            root: b[32..64].try_into().expect("32 bytes"),
            tree_id: b[64..80].try_into().expect("16 bytes"),
            levels,
        })
    }
}

fn shard_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.shard"))
}

fn sums_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.sums"))
}

/// Two tail slots after a 4 KiB header: slot `s` at `4096 + s * 4096`.
fn tail_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(SHARDS).join(format!("level-{level:02}.tail"))
}
const TAIL_MAGIC: [u8; 8] = *b"RTTAIL01";

/// `magic [8] | version u32 | level u32 | crc32c of the 16 bytes before`,
/// zero-padded to `len`.
fn file_header(magic: [u8; 8], level: usize, len: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&magic);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(level as u32).to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(len as usize, 0);
    b
}

fn check_header(file: &dyn StorageFile, path: &Path, magic: [u8; 8], level: usize) -> Result<()> {
    let mut h = [0u8; 20];
    let n = file.read_at(0, &mut h).map_err(|e| io_err(path, e))?;
    if n < 20 || h[..8] != magic {
        return Err(corruption(path, 0, "bad or missing file header"));
    }
    if crc32c::crc32c(&h[..16]) != u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) {
        return Err(corruption(path, 16, "file header checksum mismatch"));
    }
    if u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) != VERSION {
        return Err(corruption(path, 8, "unsupported version"));
    }
    let l = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if l as usize != level {
        return Err(corruption(
            path,
            12,
            format!("header names level {l}, expected {level}"),
        ));
    }
    Ok(())
}

/// Corruption unless `file` holds at least `need` bytes.
fn check_len(file: &dyn StorageFile, path: &Path, need: u64, what: &str) -> Result<()> {
    let have = file.len().map_err(|e| io_err(path, e))?;
    if have < need {
        return Err(corruption(
            path,
            have,
            format!("{what}: {have} bytes, {need} needed"),
        ));
    }
    Ok(())
}

/// CRC-32C of the checksums as stored (u32 LE each), without a copy of
/// them all.
fn sums_crc(sums: &[u32]) -> u32 {
    let mut crc = 0;
    let mut buf = [0u8; 1024];
    for part in sums.chunks(buf.len() / 4) {
        for (b, s) in buf.chunks_exact_mut(4).zip(part) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        crc = crc32c::crc32c_append(crc, &buf[..part.len() * 4]);
    }
    crc
}

/// Where a checkpoint stops on purpose, for crash tests: the named point
/// fails as a crash there would leave things.
pub(crate) type Failpoint = Option<&'static str>;

fn failpoint(fp: Failpoint, name: &'static str, dir: &Path) -> Result<()> {
    if fp == Some(name) {
        return Err(io_err(
            dir,
            std::io::Error::other(format!("failpoint {name}")),
        ));
    }
    Ok(())
}

/// Checkpoint state kept between checkpoints.
pub(crate) struct Checkpointer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// Per level, the checksum of each chunk as of the last checkpoint.
    sums: Vec<Vec<u32>>,
    /// Per level, the node count as of the last checkpoint.
    nodes: Vec<u64>,
    /// Per level, the tail slot the last checkpoint used.
    slots: Vec<u32>,
    /// The last checkpoint's WAL position.
    pub(crate) wal_position: u64,
    pub(crate) failpoint: Failpoint,
    tree_id: [u8; 16],
    /// Per level, whether its files' headers are known durable (written
    /// by a checkpoint whose syncs all passed). Until then every checkpoint
    /// writes them again: a sync that failed may have left them in clean
    /// pages that never reached the disk (invariant 13).
    headers: Vec<bool>,
    /// Set when a manifest rename may or may not have taken effect.
    broken: std::sync::Mutex<Option<String>>,
}

impl Checkpointer {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: &Path,
        tree_id: [u8; 16],
        loaded: Option<(&Manifest, Vec<Vec<u32>>)>,
    ) -> Self {
        let (sums, nodes, slots, wal_position) = match loaded {
            Some((m, sums)) => (
                sums,
                m.levels.iter().map(|l| l.nodes).collect(),
                m.levels.iter().map(|l| l.tail_slot).collect(),
                m.wal_position,
            ),
            None => (Vec::new(), Vec::new(), Vec::new(), 0),
        };
        let nodes_len = nodes.len();
        Self {
            storage,
            dir: dir.to_path_buf(),
            sums,
            nodes,
            slots,
            wal_position,
            failpoint: None,
            headers: vec![true; nodes_len],
            tree_id,
            broken: std::sync::Mutex::new(None),
        }
    }

    /// The checksums of level `d`'s sealed chunks as of the last
    /// checkpoint.
    pub(crate) fn level_sums(&self, d: usize) -> &[u32] {
        self.sums.get(d).map_or(&[], Vec::as_slice)
    }

    /// Where writing level `d`'s sealed chunks `first..sealed` can start:
    /// past the longest run of them whose checksums an earlier attempt
    /// left in the sums file and that match the chunks in `snap` (their
    /// checksums are pushed to `sums`).
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &self,
        shard: &dyn StorageFile,
        sumf: &dyn StorageFile,
        snap: &Snapshot,
        d: usize,
        first: usize,
        sealed: usize,
        sums: &mut Vec<u32>,
    ) -> Result<usize> {
        if sealed <= first {
            return Ok(first);
        }
        let path = sums_path(&self.dir, d);
        let len = sumf.len().map_err(|e| io_err(&path, e))?;
        // Only chunks the shard file reaches (its name, or its length, may
        // have been lost where the sums file's were not).
        let in_shard = shard
            .len()
            .map_err(|e| io_err(&shard_path(&self.dir, d), e))?
            .saturating_sub(SHARD_HEADER)
            / CHUNK_BYTES;
        let have = (len.saturating_sub(SUMS_HEADER) / 4)
            .min(sealed as u64)
            .min(in_shard) as usize;
        if have <= first {
            return Ok(first);
        }
        let mut buf = vec![0u8; 4 * (have - first)];
        let got = sumf
            .read_at(SUMS_HEADER + 4 * first as u64, &mut buf)
            .map_err(|e| io_err(&path, e))?;
        let mut c = first;
        for stored in buf[..got - got % 4].chunks_exact(4) {
            let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
            let sum = crc32c::crc32c(snap.checked_chunk(d, c)?.as_flattened());
            if sum != stored {
                break;
            }
            sums.push(sum);
            c += 1;
        }
        if c > first {
            tracing::info!(
                level = d,
                chunks = c - first,
                "checkpoint resumes past chunks an earlier attempt wrote"
            );
        }
        Ok(c)
    }

    /// Makes `manifest` the durable one: temp file, fsync, rename,
    /// directory fsync (with the named failpoints when `failpoints`).
    fn write_manifest(&self, manifest: &Manifest, failpoints: bool) -> Result<()> {
        let fp = if failpoints { self.failpoint } else { None };
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        let path = self.dir.join(MANIFEST);
        if self.storage.exists(&tmp) {
            self.storage.remove(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        let f = self.storage.open(&tmp, true).map_err(|e| io_err(&tmp, e))?;
        f.write_at(0, &[&manifest.encode()])
            .map_err(|e| io_err(&tmp, e))?;
        f.sync_data().map_err(|e| io_err(&tmp, e))?;
        drop(f);
        failpoint(fp, "manifest-write", &self.dir)?;
        // From the rename on, a failure leaves it unknown which manifest is
        // current: this checkpointer's notion of the tail slots may be
        // wrong, so it refuses to write another until the tree is reopened.
        let after_rename = || -> Result<()> {
            self.storage
                .rename(&tmp, &path)
                .map_err(|e| io_err(&path, e))?;
            failpoint(fp, "manifest-rename", &self.dir)?;
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| io_err(&self.dir, e))
        };
        after_rename().inspect_err(|e| {
            *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string())
        })
    }

    /// Opens (creating) a level's shard, sums and tail files, writing
    /// their headers until they are known durable.
    fn open_level_files(&self, level: usize) -> Result<[Box<dyn StorageFile>; 3]> {
        let open = |path: PathBuf, magic: [u8; 8], header: u64| -> Result<Box<dyn StorageFile>> {
            let f = self
                .storage
                .open(&path, true)
                .map_err(|e| io_err(&path, e))?;
            if !self.headers.get(level).copied().unwrap_or(false) {
                f.write_at(0, &[&file_header(magic, level, header)])
                    .map_err(|e| io_err(&path, e))?;
            }
            Ok(f)
        };
        Ok([
            open(shard_path(&self.dir, level), SHARD_MAGIC, SHARD_HEADER)?,
            open(sums_path(&self.dir, level), SUMS_MAGIC, SUMS_HEADER)?,
            open(tail_path(&self.dir, level), TAIL_MAGIC, SHARD_HEADER)?,
        ])
    }

    /// Writes a checkpoint of `snap`, which holds every leaf the log below
    /// `wal_position` holds. Returns the manifest written. `abort`, asked
    /// just before the manifest makes the checkpoint current, can still
    /// stop it (the shard files written stay unreferenced, as after a
    /// failure).
    pub(crate) fn write(
        &mut self,
        snap: &Snapshot,
        wal_position: u64,
        abort: &dyn Fn() -> Option<Error>,
    ) -> Result<Manifest> {
        if let Some(why) = &*self.broken.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::Io {
                path: self.dir.join(MANIFEST),
                source: std::io::Error::other(format!(
                    "an earlier checkpoint failed after renaming its manifest ({why}); reopen the tree to checkpoint again"
                )),
            });
        }
        let shards = self.dir.join(SHARDS);
        self.storage
            .create_dir_all(&shards)
            .map_err(|e| io_err(&shards, e))?;
        if !self.storage.exists(&self.dir.join(MANIFEST)) {
            // Before the first shard file exists, an empty checkpoint (the
            // same as none) is made durable: from then on a missing
            // manifest beside shard files can only be damage.
            let empty = Manifest {
                tree_id: self.tree_id,
                arity: snap.arity() as u32,
                leaves: 0,
                root: [0; 32],
                wal_position: 0,
                levels: Vec::new(),
            };
            self.write_manifest(&empty, false)?;
        }
        let levels = if snap.size() == 0 {
            0
        } else {
            snap.depth() + 1
        };
        let mut files = Vec::with_capacity(levels);
        let mut sums = self.sums.clone();
        sums.resize(levels.max(sums.len()), Vec::new());
        let mut metas = Vec::with_capacity(levels);
        for (d, level_sums) in sums.iter_mut().enumerate().take(levels) {
            let level = snap.level(d);
            let nodes = level.len();
            let [shard, sumf, tail] = self.open_level_files(d)?;
            // Sealed chunks not yet written, appended after those the
            // current manifest names: nothing it refers to is touched.
            let first = sealed_chunks(self.nodes.get(d).copied().unwrap_or(0)) as usize;
            let sealed = sealed_chunks(nodes) as usize;
            level_sums.truncate(first);
            // Chunks recomputed after failing their check go back over the
            // damage, with the bytes (and so the checksum) the manifest
            // expects: a torn write of one only fails the check again.
            if let Some(mapped) = level.shard() {
                for (k, chunk) in mapped.all_repaired() {
                    if k < first {
                        shard
                            .write_at(
                                SHARD_HEADER + k as u64 * CHUNK_BYTES,
                                &[chunk.as_flattened()],
                            )
                            .map_err(|e| io_err(&shard_path(&self.dir, d), e))?;
                    }
                }
            }
            const RUN: usize = 1024; // 4 MiB per write and sync
            if sealed > first {
                // Space for the shard ahead of the writes, in 64 MiB steps.
                const STEP: u64 = 64 << 20;
                let need = (SHARD_HEADER + sealed as u64 * CHUNK_BYTES).div_ceil(STEP) * STEP;
                shard
                    .preallocate(need)
                    .map_err(|e| io_err(&shard_path(&self.dir, d), e))?;
            }
            // An earlier attempt that did not finish (a crash, a failure)
            // may have written some of these already: each run's checksums
            // go to the sums file only after the run's sync passed, so an
            // entry there that matches the chunk in memory names a chunk
            // already durable. Those are not written again.
            let mut c = self.resume(&*shard, &*sumf, snap, d, first, sealed, level_sums)?;
            while c < sealed {
                let end = (c + RUN).min(sealed);
                let mut buf = vec![0u8; (end - c) * CHUNK_BYTES as usize];
                for (i, out) in buf.chunks_exact_mut(CHUNK_BYTES as usize).enumerate() {
                    out.copy_from_slice(snap.checked_chunk(d, c + i)?.as_flattened());
                    level_sums.push(crc32c::crc32c(out));
                }
                let off = SHARD_HEADER + c as u64 * CHUNK_BYTES;
                // 256 KiB pieces, all in flight at once (io_uring).
                const PIECE: usize = 256 << 10;
                let writes: Vec<(u64, &[u8])> = buf
                    .chunks(PIECE)
                    .enumerate()
                    .map(|(i, p)| (off + (i * PIECE) as u64, p))
                    .collect();
                shard
                    .write_many(&writes)
                    .map_err(|e| io_err(&shard_path(&self.dir, d), e))?;
                // Synced run by run: one large flush at the end would fill the
                // device queue and stall the log's fdatasyncs behind it.
                shard
                    .sync_data()
                    .map_err(|e| io_err(&shard_path(&self.dir, d), e))?;
                let bytes: Vec<u8> = level_sums[c..end]
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect();
                sumf.write_at(SUMS_HEADER + 4 * c as u64, &[&bytes])
                    .map_err(|e| io_err(&sums_path(&self.dir, d), e))?;
                c = end;
            }
            // All of them again (the resumed ones too), synced below with
            // the rest: an earlier attempt's entries may sit in pages whose
            // sync failed.
            if sealed > first {
                let bytes: Vec<u8> = level_sums[first..]
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect();
                sumf.write_at(SUMS_HEADER + 4 * first as u64, &[&bytes])
                    .map_err(|e| io_err(&sums_path(&self.dir, d), e))?;
            }
            // The tail chunk into the slot the current manifest does not use.
            let slot = 1 - self.slots.get(d).copied().unwrap_or(1).min(1);
            let mut tbuf = vec![0u8; CHUNK_BYTES as usize];
            let tnodes = level.chunk(sealed);
            tbuf[..tnodes.len() * 32].copy_from_slice(tnodes.as_flattened());
            tail.write_at(SHARD_HEADER + u64::from(slot) * CHUNK_BYTES, &[&tbuf])
                .map_err(|e| io_err(&tail_path(&self.dir, d), e))?;
            metas.push(LevelMeta {
                nodes,
                sums_crc: sums_crc(level_sums),
                tail_slot: slot,
                tail_crc: crc32c::crc32c(&tbuf),
            });
            files.push((d, [shard, sumf, tail]));
            failpoint(self.failpoint, "shard-write", &shards)?;
        }
        for (d, fs) in &files {
            for (f, path) in fs.iter().zip([
                shard_path(&self.dir, *d),
                sums_path(&self.dir, *d),
                tail_path(&self.dir, *d),
            ]) {
                f.sync_data().map_err(|e| io_err(&path, e))?;
            }
        }
        // Always, not only when this checkpoint created files: an earlier,
        // failed one may have created them without syncing their names.
        self.storage
            .sync_dir(&shards)
            .map_err(|e| io_err(&shards, e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        failpoint(self.failpoint, "shard-sync", &shards)?;
        let manifest = Manifest {
            tree_id: self.tree_id,
            arity: snap.arity() as u32,
            leaves: snap.size(),
            root: snap.root().unwrap_or([0; 32]),
            wal_position,
            levels: metas,
        };
        if let Some(e) = abort() {
            return Err(e);
        }
        self.write_manifest(&manifest, true)?;
        sums.truncate(levels);
        self.sums = sums;
        self.headers = vec![true; levels];
        self.nodes = manifest.levels.iter().map(|l| l.nodes).collect();
        self.slots = manifest.levels.iter().map(|l| l.tail_slot).collect();
        self.wal_position = wal_position;
        Ok(manifest)
    }
}

fn chunk_from(bytes: &[u8]) -> ChunkRef {
    let mut chunk = Arc::new([[0u8; 32]; CHUNK_LEN]);
    Arc::get_mut(&mut chunk)
        .expect("fresh")
        .as_flattened_mut()
        .copy_from_slice(bytes);
    ChunkRef::Owned(chunk)
}

/// Maps a level's shard after a checkpoint, its chunks to be checked
/// against `sums` (the checkpointer's, of the chunks it wrote) on use.
pub(crate) fn map_shard(
    storage: &dyn Storage,
    dir: &Path,
    level: usize,
    sums: Vec<u32>,
    stats: &Arc<ChunkStats>,
) -> Result<Arc<MappedShard>> {
    let p = shard_path(dir, level);
    let map = storage.map(&p).map_err(|e| io_err(&p, e))?;
    Ok(Arc::new(MappedShard::new(
        map,
        SHARD_HEADER as usize,
        p,
        sums,
        stats.clone(),
    )?))
}

/// A checkpoint read back: the levels, the manifest and the chunk sums.
pub(crate) struct Loaded {
    pub levels: Vec<(Vec<ChunkRef>, u64)>,
    pub manifest: Manifest,
    pub sums: Vec<Vec<u32>>,
    /// Mapped levels, whose chunks are checked on first use or by the
    /// background check.
    pub mapped: Vec<Arc<MappedShard>>,
}

/// Reads the checkpoint of `dir`, if any, checking the manifest against its
/// shards and every checksum, except those of the sealed chunks of levels
/// below `map_below`, which are served from a mapping of their shard and
/// returned as [`MappedShard`]s whose chunks are checked on use.
pub(crate) fn load(
    storage: &dyn Storage,
    dir: &Path,
    arity: usize,
    max_depth: usize,
    tree_id: [u8; 16],
    map_below: usize,
    stats: &Arc<ChunkStats>,
) -> Result<Option<Loaded>> {
    let path = dir.join(MANIFEST);
    let shards = dir.join(SHARDS);
    if !storage.exists(&path) {
        if storage.exists(&shards)
            && !storage
                .list(&shards)
                .map_err(|e| io_err(&shards, e))?
                .is_empty()
        {
            return Err(corruption(
                &path,
                0,
                "manifest missing while shard files exist",
            ));
        }
        return Ok(None);
    }
    let f = storage.open(&path, false).map_err(|e| io_err(&path, e))?;
    let len = f.len().map_err(|e| io_err(&path, e))?;
    if len > 1 << 20 {
        return Err(corruption(
            &path,
            0,
            format!("manifest of {len} bytes is implausibly large"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    f.read_at(0, &mut b).map_err(|e| io_err(&path, e))?;
    let m = Manifest::decode(&path, &b)?;
    if m.tree_id != tree_id {
        return Err(corruption(
            &path,
            64,
            format!(
                "manifest of another tree (tree id {}, this one is {})",
                crate::wal::format::hex(&m.tree_id),
                crate::wal::format::hex(&tree_id)
            ),
        ));
    }
    if m.arity as usize != arity {
        return Err(Error::ConfigMismatch {
            field: "arity",
            on_disk: m.arity.to_string(),
            given: arity.to_string(),
            file: path.clone(),
        });
    }
    // The shape must be that of a tree of `leaves` leaves.
    let mismatch =
        |why: String| corruption(&path, 0, format!("manifest does not match a tree: {why}"));
    if m.leaves == 0 {
        if !m.levels.is_empty() {
            return Err(mismatch("levels for an empty tree".into()));
        }
    } else {
        let mut len = m.leaves;
        for (d, l) in m.levels.iter().enumerate() {
            if l.nodes != len {
                return Err(mismatch(format!(
                    "level {d} has {} nodes, {len} expected",
                    l.nodes
                )));
            }
            len = len.div_ceil(arity as u64);
        }
        if m.levels.last().map(|l| l.nodes) != Some(1) {
            return Err(mismatch("the top level is not a single root".into()));
        }
        // Exactly one level of one node: depth + 1 levels, no more.
        if m.levels.len() > 1 && m.levels[m.levels.len() - 2].nodes == 1 {
            return Err(mismatch("levels above the root".into()));
        }
        if m.levels.len() > max_depth + 1 {
            return Err(Error::Depth {
                depth: m.levels.len() - 1,
                max_depth,
            });
        }
    }
    let mut levels = Vec::with_capacity(m.levels.len());
    let mut all_sums = Vec::with_capacity(m.levels.len());
    let mut mapped = Vec::new();
    for (d, meta) in m.levels.iter().enumerate() {
        let sealed = sealed_chunks(meta.nodes);
        let (sp, up, tp) = (shard_path(dir, d), sums_path(dir, d), tail_path(dir, d));
        let open = |p: &Path| -> Result<Box<dyn StorageFile>> {
            storage.open(p, false).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    corruption(p, 0, "missing shard file named by the manifest")
                } else {
                    io_err(p, e)
                }
            })
        };
        let (shard, sumf, tail) = (open(&sp)?, open(&up)?, open(&tp)?);
        check_header(&*shard, &sp, SHARD_MAGIC, d)?;
        check_header(&*sumf, &up, SUMS_MAGIC, d)?;
        check_header(&*tail, &tp, TAIL_MAGIC, d)?;
        let need = SUMS_HEADER + 4 * sealed;
        check_len(&*sumf, &up, need, "short checksum file")?;
        // Sized from the manifest: allocate fallibly, never abort.
        let mut sb = Vec::new();
        sb.try_reserve_exact(4 * sealed as usize).map_err(|_| {
            corruption(
                &dir.join(MANIFEST),
                0,
                format!("level {d}: {sealed} chunks cannot be held in memory"),
            )
        })?;
        sb.resize(4 * sealed as usize, 0);
        sumf.read_at(SUMS_HEADER, &mut sb)
            .map_err(|e| io_err(&up, e))?;
        let too_many = || {
            corruption(
                &dir.join(MANIFEST),
                0,
                format!("level {d}: {sealed} chunks cannot be held in memory"),
            )
        };
        let mut sums: Vec<u32> = Vec::new();
        sums.try_reserve_exact(sealed as usize)
            .map_err(|_| too_many())?;
        sums.extend(
            sb.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        drop(sb);
        if sums_crc(&sums) != meta.sums_crc {
            return Err(corruption(
                &up,
                SUMS_HEADER,
                "chunk checksums do not match the manifest",
            ));
        }
        let need = SHARD_HEADER + CHUNK_BYTES * sealed;
        check_len(&*shard, &sp, need, "short shard")?;
        let mut out: Vec<ChunkRef> = Vec::new();
        out.try_reserve_exact(sealed as usize + 1)
            .map_err(|_| too_many())?;
        if d < map_below && sealed > 0 {
            let map = storage.map(&sp).map_err(|e| io_err(&sp, e))?;
            let shard = Arc::new(MappedShard::new(
                map,
                SHARD_HEADER as usize,
                sp.clone(),
                sums.clone(),
                stats.clone(),
            )?);
            for k in 0..sealed as usize {
                out.push(ChunkRef::Mapped(shard.clone(), k));
            }
            mapped.push(shard);
        }
        const RUN: u64 = 1024;
        let mut buf = Vec::new();
        let mut c = if d < map_below { sealed } else { 0 };
        while c < sealed {
            let end = (c + RUN).min(sealed);
            buf.resize(((end - c) * CHUNK_BYTES) as usize, 0);
            let off = SHARD_HEADER + c * CHUNK_BYTES;
            shard.read_at(off, &mut buf).map_err(|e| io_err(&sp, e))?;
            for (i, bytes) in buf.chunks_exact(CHUNK_BYTES as usize).enumerate() {
                let k = c + i as u64;
                if crc32c::crc32c(bytes) != sums[k as usize] {
                    return Err(corruption(
                        &sp,
                        SHARD_HEADER + k * CHUNK_BYTES,
                        format!("chunk {k} checksum mismatch"),
                    ));
                }
                out.push(chunk_from(bytes));
            }
            c = end;
        }
        if meta.tail_slot > 1 {
            return Err(corruption(
                &dir.join(MANIFEST),
                0,
                format!("level {d}: tail slot {}", meta.tail_slot),
            ));
        }
        let toff = SHARD_HEADER + u64::from(meta.tail_slot) * CHUNK_BYTES;
        let mut tb = vec![0u8; CHUNK_BYTES as usize];
        let n = tail.read_at(toff, &mut tb).map_err(|e| io_err(&tp, e))?;
        if n < tb.len() {
            return Err(corruption(&tp, toff + n as u64, "short tail file"));
        }
        if crc32c::crc32c(&tb) != meta.tail_crc {
            return Err(corruption(
                &tp,
                toff,
                format!("tail chunk (slot {}) checksum mismatch", meta.tail_slot),
            ));
        }
        out.push(chunk_from(&tb));
        levels.push((out, meta.nodes));
        all_sums.push(sums);
    }
    // The top node must be the manifest's root.
    let top = levels.last().map(|(chunks, _)| match &chunks[0] {
        ChunkRef::Owned(c) => c[0],
        ChunkRef::Mapped(..) => unreachable!("a level's last chunk is loaded into memory"),
    });
    if top.is_some_and(|t| t != m.root) {
        return Err(corruption(
            &shard_path(dir, levels.len() - 1),
            SHARD_HEADER,
            "root differs from the manifest's",
        ));
    }
    Ok(Some(Loaded {
        levels,
        manifest: m,
        sums: all_sums,
        mapped,
    }))
}

/// The leaves a checkpoint still holds intact, for a salvage: the
/// manifest (if it decodes and is of tree `tree_id`, when given), then
/// level 0's sealed chunks in order, each checked against its sum, up to
/// the first that fails, then the tail. Returns the leaves read, the
/// manifest, and the damage that stopped the read, if any.
pub(crate) fn salvage_leaves(
    storage: &dyn Storage,
    dir: &Path,
    arity: usize,
    tree_id: Option<[u8; 16]>,
) -> (Vec<Hash>, Option<Manifest>, Option<Error>) {
    let path = dir.join(MANIFEST);
    if !storage.exists(&path) {
        let shards = dir.join(SHARDS);
        let stop = storage
            .list(&shards)
            .is_ok_and(|l| !l.is_empty())
            .then(|| corruption(&path, 0, "manifest missing while shard files exist"));
        return (Vec::new(), None, stop);
    }
    let read_all = |p: &Path| -> Result<Vec<u8>> {
        let f = storage.open(p, false).map_err(|e| io_err(p, e))?;
        let len = f.len().map_err(|e| io_err(p, e))?;
        let mut b = Vec::new();
        b.try_reserve_exact(len as usize)
            .map_err(|_| corruption(p, 0, format!("{len} bytes cannot be held in memory")))?;
        b.resize(len as usize, 0);
        let n = f.read_at(0, &mut b).map_err(|e| io_err(p, e))?;
        b.truncate(n);
        Ok(b)
    };
    let m = match read_all(&path).and_then(|b| Manifest::decode(&path, &b)) {
        Ok(m) => m,
        Err(e) => return (Vec::new(), None, Some(e)),
    };
    if tree_id.is_some_and(|id| id != m.tree_id) {
        let e = corruption(&path, 64, "manifest of another tree");
        return (Vec::new(), None, Some(e));
    }
    if m.arity as usize != arity {
        let e = Error::ConfigMismatch {
            field: "arity",
            on_disk: m.arity.to_string(),
            given: arity.to_string(),
            file: path.clone(),
        };
        return (Vec::new(), None, Some(e));
    }
    let Some(meta) = m.levels.first().cloned() else {
        return (Vec::new(), Some(m), None);
    };
    let mut leaves: Vec<Hash> = Vec::new();
    let stop = (|| -> Result<()> {
        let sealed = sealed_chunks(meta.nodes) as usize;
        let (sp, up, tp) = (shard_path(dir, 0), sums_path(dir, 0), tail_path(dir, 0));
        let sums_bytes = read_all(&up)?;
        check_header(
            &*storage.open(&up, false).map_err(|e| io_err(&up, e))?,
            &up,
            SUMS_MAGIC,
            0,
        )?;
        let need = SUMS_HEADER as usize + 4 * sealed;
        if sums_bytes.len() < need {
            return Err(corruption(
                &up,
                sums_bytes.len() as u64,
                "short checksum file",
            ));
        }
        let sums: Vec<u32> = sums_bytes[SUMS_HEADER as usize..need]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if sums_crc(&sums) != meta.sums_crc {
            return Err(corruption(
                &up,
                SUMS_HEADER,
                "chunk checksums do not match the manifest",
            ));
        }
        let shard = storage.open(&sp, false).map_err(|e| io_err(&sp, e))?;
        check_header(&*shard, &sp, SHARD_MAGIC, 0)?;
        let mut buf = vec![0u8; CHUNK_BYTES as usize];
        for (k, sum) in sums.iter().enumerate() {
            let off = SHARD_HEADER + k as u64 * CHUNK_BYTES;
            let n = shard.read_at(off, &mut buf).map_err(|e| io_err(&sp, e))?;
            if n < buf.len() || crc32c::crc32c(&buf) != *sum {
                return Err(corruption(&sp, off, format!("chunk {k} checksum mismatch")));
            }
            leaves.extend_from_slice(buf.as_chunks::<32>().0);
        }
        let tail = storage.open(&tp, false).map_err(|e| io_err(&tp, e))?;
        check_header(&*tail, &tp, TAIL_MAGIC, 0)?;
        let toff = SHARD_HEADER + u64::from(meta.tail_slot.min(1)) * CHUNK_BYTES;
        let n = tail.read_at(toff, &mut buf).map_err(|e| io_err(&tp, e))?;
        if n < buf.len() || crc32c::crc32c(&buf) != meta.tail_crc {
            return Err(corruption(&tp, toff, "tail chunk checksum mismatch"));
        }
        let rest = (meta.nodes - sealed as u64 * CHUNK_LEN as u64) as usize;
        leaves.extend_from_slice(&buf.as_chunks::<32>().0[..rest]);
        Ok(())
    })()
    .err();
    (leaves, Some(m), stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimStorage;

    /// The checksum of the stored checksums, computed in pieces, equals
    /// CRC-32C of their bytes at once, at and around the piece size.
    #[test]
    fn sums_crc_is_the_crc_of_the_stored_bytes() {
        for n in [0usize, 1, 255, 256, 257, 1000] {
            let sums: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
            let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
            assert_eq!(sums_crc(&sums), crc32c::crc32c(&bytes), "{n} sums");
        }
    }

    fn manifest(leaves: u64, nodes: &[u64]) -> Manifest {
        Manifest {
            tree_id: [3; 16],
            arity: 4,
            leaves,
            root: [7; 32],
            wal_position: 96,
            levels: nodes
                .iter()
                .map(|&n| LevelMeta {
                    nodes: n,
                    sums_crc: 1,
                    tail_slot: 0,
                    tail_crc: 2,
                })
                .collect(),
        }
    }

    #[test]
    fn manifest_round_trip_and_every_byte_checked() {
        let m = manifest(1000, &[1000, 250, 63, 16, 4, 1]);
        let b = m.encode();
        assert_eq!(Manifest::decode(Path::new("M"), &b).unwrap(), m);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x08;
            assert!(Manifest::decode(Path::new("M"), &x).is_err(), "byte {i}");
        }
        assert!(Manifest::decode(Path::new("M"), &b[..b.len() - 1]).is_err());
    }

    /// Shapes that are not a tree's are corruption before any shard is read.
    #[test]
    fn manifest_shapes_that_are_no_tree_are_rejected() {
        let sim = SimStorage::new(1);
        let dir = Path::new("/t");
        sim.create_dir_all(dir).unwrap();
        let put = |m: &Manifest| {
            let f = sim.open(&dir.join(MANIFEST), true).unwrap();
            f.write_at(0, &[&m.encode()]).unwrap();
        };
        for (leaves, nodes) in [
            (1u64, vec![1u64, 1, 1]), // levels above the root
            (5, vec![5, 2]),          // no single root
            (5, vec![5, 3, 1]),       // wrong parent count
            (0, vec![1]),             // levels for an empty tree
        ] {
            put(&manifest(leaves, &nodes));
            assert!(
                matches!(
                    load(&sim, dir, 4, 32, [3; 16], usize::MAX, &Default::default()),
                    Err(Error::Corruption { .. })
                ),
                "{leaves} {nodes:?}"
            );
        }
        put(&manifest(5, &[5, 2, 1]));
        // Deeper than the tree type allows: a clear error.
        assert!(matches!(
            load(&sim, dir, 4, 1, [3; 16], usize::MAX, &Default::default()),
            Err(Error::Depth { .. })
        ));
    }
}
