//! The read path of a checkpoint: the manifest, then every level's shard,
//! sums and tail files, into the levels a tree is built from, with what a
//! salvage can still read of a damaged one. Kept apart from the writer: a
//! load only reads.

use std::path::Path;
use std::sync::Arc;

use super::format::{
    CHUNK_BYTES, MANIFEST, Manifest, SHARD_HEADER, SHARD_MAGIC, SHARDS, SUMS_HEADER, SUMS_MAGIC,
    TAIL_MAGIC, check_header, sealed_chunks, shard_path, sums_crc, sums_path, tail_path,
};
use super::verifier::check_len;
use crate::error::{Error, Result, corruption, io_err};
use crate::hash::Hash;
use crate::imt::{CHUNK_LEN, ChunkRef, ChunkStats, MappedShard};
use crate::io::{Storage, StorageFile};

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
