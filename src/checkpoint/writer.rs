//! The write path of a checkpoint: each level's new sealed chunks appended
//! to its shard, its tail to the free slot, then the manifest made durable.
//! Kept apart from the loader: nothing here reads a checkpoint back except
//! to resume an interrupted write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CHUNK_BYTES, LevelMeta, MANIFEST, Manifest, SHARD_HEADER, SHARD_MAGIC, SHARDS, SUMS_HEADER,
    SUMS_MAGIC, TAIL_MAGIC, file_header, sealed_chunks, shard_path, sums_crc, sums_path, tail_path,
};
use crate::error::{Error, Result, io_err};
use crate::imt::Snapshot;
use crate::io::{Storage, StorageFile};

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
