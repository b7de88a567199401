//! The read path of a checkpoint: the manifest, then every level's shard,
//! sums and tail files, into the levels a tree is built from, with what a
//! salvage can still read of a damaged one. Kept apart from the writer: a
//! load only reads.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CHUNK_BYTES, LevelMeta, MANIFEST, Manifest, SHARD_HEADER, SHARD_MAGIC, SHARDS, SUMS_HEADER,
    SUMS_MAGIC, TAIL_MAGIC, check_header, sealed_chunks, shard_path, sums_path, tail_path,
};
use super::verifier::{
    check_chunk, check_identity, check_len, check_root, check_shape, check_sums, check_tail,
};
use crate::error::{Error, Result, corruption, io_err};
use crate::hash::Hash;
use crate::imt::{CHUNK_LEN, ChunkRef, ChunkStats, MappedShard};
use crate::io::{Storage, StorageFile};

/// Sealed chunks per read of a shard.
const READ_RUN: u64 = 1024;

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
    let Some(m) = read_manifest(storage, dir)? else {
        return Ok(None);
    };
    let path = dir.join(MANIFEST);
    check_identity(&m, &path, arity, tree_id)?;
    check_shape(&m, &path, arity, max_depth)?;
    let mut levels = Vec::with_capacity(m.levels.len());
    let mut all_sums = Vec::with_capacity(m.levels.len());
    let mut mapped = Vec::new();
    for (d, meta) in m.levels.iter().enumerate() {
        let level = load_level(storage, dir, d, meta, map_below, stats)?;
        mapped.extend(level.mapped);
        levels.push((level.chunks, meta.nodes));
        all_sums.push(level.sums);
    }
    check_root(dir, &levels, &m)?;
    Ok(Some(Loaded {
        levels,
        manifest: m,
        sums: all_sums,
        mapped,
    }))
}

/// Reads and decodes the manifest of `dir`. `None` when there is none
/// and no shard file either (no checkpoint yet).
fn read_manifest(storage: &dyn Storage, dir: &Path) -> Result<Option<Manifest>> {
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
    Manifest::decode(&path, &b).map(Some)
}

/// A level's shard, sums and tail files, opened for reading, with their
/// paths.
struct LevelFiles {
    shard: Box<dyn StorageFile>,
    sums: Box<dyn StorageFile>,
    tail: Box<dyn StorageFile>,
    shard_path: PathBuf,
    sums_path: PathBuf,
    tail_path: PathBuf,
}

/// One level of a checkpoint read back.
struct LoadedLevel {
    chunks: Vec<ChunkRef>,
    /// The checksums of the level's sealed chunks.
    sums: Vec<u32>,
    /// The level's shard, when its sealed chunks are served from it.
    mapped: Option<Arc<MappedShard>>,
}

/// Level `d` as `meta` describes it: the sealed chunks mapped when
/// `d < map_below`, else read and checked, then the tail chunk.
fn load_level(
    storage: &dyn Storage,
    dir: &Path,
    d: usize,
    meta: &LevelMeta,
    map_below: usize,
    stats: &Arc<ChunkStats>,
) -> Result<LoadedLevel> {
    let sealed = sealed_chunks(meta.nodes);
    let files = open_level(storage, dir, d)?;
    let sums = read_sums(&files, dir, d, meta)?;
    let need = SHARD_HEADER + CHUNK_BYTES * sealed;
    check_len(&*files.shard, &files.shard_path, need, "short shard")?;
    let mut out: Vec<ChunkRef> = Vec::new();
    out.try_reserve_exact(sealed as usize + 1)
        .map_err(|_| too_many(dir, d, sealed))?;
    let mut mapped = None;
    if d < map_below && sealed > 0 {
        mapped = Some(map_sealed(storage, &files, &sums, stats, &mut out)?);
    }
    let from = if d < map_below { sealed } else { 0 };
    read_sealed(&files, &sums, from..sealed, &mut out)?;
    out.push(read_tail(&files, dir, d, meta)?);
    Ok(LoadedLevel {
        chunks: out,
        sums,
        mapped,
    })
}

/// Opens level `d`'s shard, sums and tail files and checks their headers.
fn open_level(storage: &dyn Storage, dir: &Path, d: usize) -> Result<LevelFiles> {
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
    Ok(LevelFiles {
        shard,
        sums: sumf,
        tail,
        shard_path: sp,
        sums_path: up,
        tail_path: tp,
    })
}

/// The error for a level whose `sealed` chunks, as the manifest counts
/// them, cannot be held in memory.
fn too_many(dir: &Path, d: usize, sealed: u64) -> Error {
    corruption(
        &dir.join(MANIFEST),
        0,
        format!("level {d}: {sealed} chunks cannot be held in memory"),
    )
}

/// Reads the checksums of level `d`'s sealed chunks and checks them
/// against the manifest's `meta`.
fn read_sums(files: &LevelFiles, dir: &Path, d: usize, meta: &LevelMeta) -> Result<Vec<u32>> {
    let sealed = sealed_chunks(meta.nodes);
    let up = &files.sums_path;
    let need = SUMS_HEADER + 4 * sealed;
    check_len(&*files.sums, up, need, "short checksum file")?;
    // Sized from the manifest: allocate fallibly, never abort.
    let mut sb = Vec::new();
    sb.try_reserve_exact(4 * sealed as usize)
        .map_err(|_| too_many(dir, d, sealed))?;
    sb.resize(4 * sealed as usize, 0);
    files
        .sums
        .read_at(SUMS_HEADER, &mut sb)
        .map_err(|e| io_err(up, e))?;
    let mut sums: Vec<u32> = Vec::new();
    sums.try_reserve_exact(sealed as usize)
        .map_err(|_| too_many(dir, d, sealed))?;
    sums.extend(
        sb.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
    );
    drop(sb);
    check_sums(&sums, meta, up)?;
    Ok(sums)
}

/// Maps the level's shard and pushes a reference to each of its sealed
/// chunks to `out`, to be checked against `sums` on use.
fn map_sealed(
    storage: &dyn Storage,
    files: &LevelFiles,
    sums: &[u32],
    stats: &Arc<ChunkStats>,
    out: &mut Vec<ChunkRef>,
) -> Result<Arc<MappedShard>> {
    let sp = &files.shard_path;
    let map = storage.map(sp).map_err(|e| io_err(sp, e))?;
    let shard = Arc::new(MappedShard::new(
        map,
        SHARD_HEADER as usize,
        sp.clone(),
        sums.to_vec(),
        stats.clone(),
    )?);
    for k in 0..sums.len() {
        out.push(ChunkRef::Mapped(shard.clone(), k));
    }
    Ok(shard)
}

/// Reads the level's sealed chunks `chunks`, `READ_RUN` at a time, checks
/// each against its sum and pushes it to `out`.
fn read_sealed(
    files: &LevelFiles,
    sums: &[u32],
    chunks: Range<u64>,
    out: &mut Vec<ChunkRef>,
) -> Result<()> {
    let sp = &files.shard_path;
    let mut buf = Vec::new();
    let (mut c, sealed) = (chunks.start, chunks.end);
    while c < sealed {
        let end = (c + READ_RUN).min(sealed);
        buf.resize(((end - c) * CHUNK_BYTES) as usize, 0);
        let off = SHARD_HEADER + c * CHUNK_BYTES;
        files
            .shard
            .read_at(off, &mut buf)
            .map_err(|e| io_err(sp, e))?;
        for (i, bytes) in buf.chunks_exact(CHUNK_BYTES as usize).enumerate() {
            let k = c + i as u64;
            check_chunk(sp, k, bytes, sums[k as usize])?;
            out.push(chunk_from(bytes));
        }
        c = end;
    }
    Ok(())
}

/// Reads level `d`'s tail chunk from the slot `meta` names and checks it.
fn read_tail(files: &LevelFiles, dir: &Path, d: usize, meta: &LevelMeta) -> Result<ChunkRef> {
    let tp = &files.tail_path;
    if meta.tail_slot > 1 {
        return Err(corruption(
            &dir.join(MANIFEST),
            0,
            format!("level {d}: tail slot {}", meta.tail_slot),
        ));
    }
    let toff = SHARD_HEADER + u64::from(meta.tail_slot) * CHUNK_BYTES;
    let mut tb = vec![0u8; CHUNK_BYTES as usize];
    let n = files
        .tail
        .read_at(toff, &mut tb)
        .map_err(|e| io_err(tp, e))?;
    check_tail(tp, toff, n, &tb, meta)?;
    Ok(chunk_from(&tb))
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
        check_sums(&sums, &meta, &up)?;
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
