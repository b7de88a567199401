//! The write path of a checkpoint: each level's new sealed chunks appended
//! to its shard, its tail to the free slot, then the manifest made durable.
//! Kept apart from the loader: nothing here reads a checkpoint back except
//! to resume an interrupted write.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CHUNK_BYTES, LevelMeta, MANIFEST, Manifest, SHARD_HEADER, SHARD_MAGIC, SHARDS, SUMS_HEADER,
    SUMS_MAGIC, TAIL_MAGIC, file_header, sealed_chunks, shard_path, sums_crc, sums_path, tail_path,
};
use crate::error::{Error, Result, io_err};
use crate::imt::{Level, Snapshot};
use crate::io::{Storage, StorageFile};

/// Sealed chunks per write and sync of a shard (4 MiB).
const WRITE_RUN: usize = 1024;
/// Bytes per write within a run, all in flight at once (io_uring).
const WRITE_PIECE: usize = 256 << 10;
/// Space for a shard is reserved ahead of the writes in steps of this many
/// bytes.
const PREALLOCATE_STEP: u64 = 64 << 20;

/// A level's shard, sums and tail files, in that order.
type LevelFiles = [Box<dyn StorageFile>; 3];

/// Where a checkpoint stops on purpose, for crash tests: the named point
/// fails as a crash there would leave things.
pub(crate) type Failpoint = Option<&'static str>;

pub(super) fn failpoint(fp: Failpoint, name: &'static str, dir: &Path) -> Result<()> {
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

    /// The leaves of the last checkpoint.
    pub(crate) fn leaves(&self) -> u64 {
        self.nodes.first().copied().unwrap_or(0)
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
            // Zero: an entry `clear_stale` erased (a chunk whose checksum is
            // zero is only written again).
            if sum != stored || stored == 0 {
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
        after_rename().inspect_err(|e| *crate::rt::lock(&self.broken) = Some(e.to_string()))
    }

    /// Opens (creating) a level's shard, sums and tail files, writing
    /// their headers until they are known durable.
    fn open_level_files(&self, level: usize) -> Result<LevelFiles> {
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
        finalized: u64,
        abort: &dyn Fn() -> Option<Error>,
    ) -> Result<Manifest> {
        self.refuse_if_broken()?;
        let shards = self.prepare_dir(snap)?;
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
            let (meta, level_files) = self.write_level(snap, d, level_sums)?;
            metas.push(meta);
            files.push((d, level_files));
            failpoint(self.failpoint, "shard-write", &shards)?;
        }
        self.sync_level_files(&files, &shards)?;
        let manifest = Manifest {
            tree_id: self.tree_id,
            arity: snap.arity() as u32,
            leaves: snap.size(),
            root: snap.root().unwrap_or([0; 32]),
            wal_position,
            levels: metas,
            finalized,
        };
        if let Some(e) = abort() {
            return Err(e);
        }
        self.write_manifest(&manifest, true)?;
        self.remember(&manifest, sums);
        Ok(manifest)
    }

    /// Refuses to write while an earlier manifest rename may or may not
    /// have taken effect.
    fn refuse_if_broken(&self) -> Result<()> {
        if let Some(why) = &*crate::rt::lock(&self.broken) {
            return Err(Error::Io {
                path: self.dir.join(MANIFEST),
                source: std::io::Error::other(format!(
                    "an earlier checkpoint failed after renaming its manifest ({why}); reopen the tree to checkpoint again"
                )),
            });
        }
        Ok(())
    }

    /// Creates the shards directory, and makes an empty manifest durable
    /// if there is none yet. Returns the shards directory.
    fn prepare_dir(&self, snap: &Snapshot) -> Result<PathBuf> {
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
                finalized: 0,
            };
            self.write_manifest(&empty, false)?;
        }
        Ok(shards)
    }

    /// Writes level `d` of `snap`: repaired chunks back in place, the
    /// sealed chunks the current manifest does not name, their checksums,
    /// and the tail chunk. `level_sums` holds the level's checksums as of
    /// the last checkpoint and is left holding the new ones. Returns the
    /// level's manifest entry and its files, not yet synced.
    fn write_level(
        &self,
        snap: &Snapshot,
        d: usize,
        level_sums: &mut Vec<u32>,
    ) -> Result<(LevelMeta, LevelFiles)> {
        let level = snap.level(d);
        let nodes = level.len();
        let [shard, sumf, tail] = self.open_level_files(d)?;
        // Sealed chunks not yet written, after those the current manifest
        // names: nothing it refers to is touched. (After a rewind the
        // level may have fewer sealed chunks than the manifest names; the
        // manifest the checkpoint writes first names no more than it has:
        // see `Inner::checkpoint_at`.)
        let sealed = sealed_chunks(nodes) as usize;
        let first = (sealed_chunks(self.nodes.get(d).copied().unwrap_or(0)) as usize).min(sealed);
        level_sums.truncate(first);
        self.rewrite_repaired(&*shard, level, d, first)?;
        if sealed > first {
            self.preallocate_shard(&*shard, d, sealed)?;
        }
        // An earlier attempt that did not finish (a crash, a failure)
        // may have written some of these already: each run's checksums
        // go to the sums file only after the run's sync passed, so an
        // entry there that matches the chunk in memory names a chunk
        // already durable. Those are not written again.
        let resumed = self.resume(&*shard, &*sumf, snap, d, first, sealed, level_sums)?;
        if resumed < sealed {
            self.clear_stale(&*sumf, d, resumed)?;
        }
        self.append_sealed(&*shard, &*sumf, snap, d, resumed..sealed, level_sums)?;
        if sealed > first {
            self.rewrite_sums(&*sumf, d, first, level_sums)?;
        }
        let (tail_slot, tail_crc) = self.write_tail(&*tail, level, d, sealed)?;
        let meta = LevelMeta {
            nodes,
            sums_crc: sums_crc(level_sums),
            tail_slot,
            tail_crc,
        };
        Ok((meta, [shard, sumf, tail]))
    }

    /// Before level `d`'s chunks from `from` on are written: a rewind may
    /// have cut them off a tree an earlier checkpoint wrote, so they are
    /// written over. Not while a live mapping still shows them to a
    /// snapshot taken before the rewind (`CheckpointDeferred`); and the
    /// sums-file entries from `from` on, which name the old chunks, are
    /// zeroed and synced first, so an entry past the manifest's count
    /// always names a durable chunk (see `resume`).
    fn clear_stale(&self, sumf: &dyn StorageFile, d: usize, from: usize) -> Result<()> {
        let shard = shard_path(&self.dir, d);
        if crate::imt::MappedShard::views_cover(&shard, from) {
            return Err(Error::CheckpointDeferred(format!(
                "a snapshot taken before a rewind still reads {} from chunk {from} on",
                shard.display()
            )));
        }
        let path = sums_path(&self.dir, d);
        let len = sumf.len().map_err(|e| io_err(&path, e))?;
        let entries = (len.saturating_sub(SUMS_HEADER) / 4) as usize;
        if entries > from {
            let zeros = vec![0u8; 4 * (entries - from)];
            sumf.write_at(SUMS_HEADER + 4 * from as u64, &[&zeros])
                .map_err(|e| io_err(&path, e))?;
            sumf.sync_data().map_err(|e| io_err(&path, e))?;
        }
        Ok(())
    }

    /// Writes the chunks of `level` before `first` that were recomputed
    /// after failing their check back over the damage, with the bytes (and
    /// so the checksum) the manifest expects: a torn write of one only
    /// fails the check again.
    fn rewrite_repaired(
        &self,
        shard: &dyn StorageFile,
        level: &Level,
        d: usize,
        first: usize,
    ) -> Result<()> {
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
        Ok(())
    }

    /// Reserves space for level `d`'s shard up to `sealed` chunks ahead of
    /// the writes, in steps of `PREALLOCATE_STEP`.
    fn preallocate_shard(&self, shard: &dyn StorageFile, d: usize, sealed: usize) -> Result<()> {
        let need = (SHARD_HEADER + sealed as u64 * CHUNK_BYTES).div_ceil(PREALLOCATE_STEP)
            * PREALLOCATE_STEP;
        shard
            .preallocate(need)
            .map_err(|e| io_err(&shard_path(&self.dir, d), e))
    }

    /// Appends level `d`'s sealed chunks `chunks` to its shard, a run of
    /// `WRITE_RUN` chunks at a time, each run synced before its checksums
    /// are pushed to `level_sums` and written to the sums file.
    fn append_sealed(
        &self,
        shard: &dyn StorageFile,
        sumf: &dyn StorageFile,
        snap: &Snapshot,
        d: usize,
        chunks: Range<usize>,
        level_sums: &mut Vec<u32>,
    ) -> Result<()> {
        let (mut c, sealed) = (chunks.start, chunks.end);
        while c < sealed {
            let end = (c + WRITE_RUN).min(sealed);
            let mut buf = vec![0u8; (end - c) * CHUNK_BYTES as usize];
            for (i, out) in buf.chunks_exact_mut(CHUNK_BYTES as usize).enumerate() {
                out.copy_from_slice(snap.checked_chunk(d, c + i)?.as_flattened());
                level_sums.push(crc32c::crc32c(out));
            }
            let off = SHARD_HEADER + c as u64 * CHUNK_BYTES;
            let writes: Vec<(u64, &[u8])> = buf
                .chunks(WRITE_PIECE)
                .enumerate()
                .map(|(i, p)| (off + (i * WRITE_PIECE) as u64, p))
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
        Ok(())
    }

    /// Writes level `d`'s checksums from chunk `first` on again, the
    /// resumed ones too, to be synced with the rest: an earlier attempt's
    /// entries may sit in pages whose sync failed.
    fn rewrite_sums(
        &self,
        sumf: &dyn StorageFile,
        d: usize,
        first: usize,
        level_sums: &[u32],
    ) -> Result<()> {
        let bytes: Vec<u8> = level_sums[first..]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        sumf.write_at(SUMS_HEADER + 4 * first as u64, &[&bytes])
            .map_err(|e| io_err(&sums_path(&self.dir, d), e))
    }

    /// Writes the tail chunk of `level` (the one after its `sealed`
    /// chunks) into the slot the current manifest does not use. Returns
    /// the slot and the chunk's CRC-32C.
    fn write_tail(
        &self,
        tail: &dyn StorageFile,
        level: &Level,
        d: usize,
        sealed: usize,
    ) -> Result<(u32, u32)> {
        let slot = 1 - self.slots.get(d).copied().unwrap_or(1).min(1);
        let mut tbuf = vec![0u8; CHUNK_BYTES as usize];
        let tnodes = level.chunk(sealed);
        tbuf[..tnodes.len() * 32].copy_from_slice(tnodes.as_flattened());
        tail.write_at(SHARD_HEADER + u64::from(slot) * CHUNK_BYTES, &[&tbuf])
            .map_err(|e| io_err(&tail_path(&self.dir, d), e))?;
        Ok((slot, crc32c::crc32c(&tbuf)))
    }

    /// Syncs every level's files, then the shards directory and the tree's
    /// directory.
    fn sync_level_files(&self, files: &[(usize, LevelFiles)], shards: &Path) -> Result<()> {
        for (d, fs) in files {
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
            .sync_dir(shards)
            .map_err(|e| io_err(shards, e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        failpoint(self.failpoint, "shard-sync", shards)
    }

    /// Keeps what the next checkpoint starts from: `manifest`, now the
    /// durable one, and `sums`, the checksums of its levels' sealed chunks.
    fn remember(&mut self, manifest: &Manifest, mut sums: Vec<Vec<u32>>) {
        let levels = manifest.levels.len();
        sums.truncate(levels);
        self.sums = sums;
        self.headers = vec![true; levels];
        self.nodes = manifest.levels.iter().map(|l| l.nodes).collect();
        self.slots = manifest.levels.iter().map(|l| l.tail_slot).collect();
        self.wal_position = manifest.wal_position;
    }
}
