//! One level of the tree, stored in 4 KiB chunks shared copy-on-write.
//!
//! Owns the storage of node values and nothing else: it knows nothing of
//! hashing or arity.
//!
//! The layout rests on one fact of append-only trees: at every level only the
//! *last* node can still change (every earlier node's group of children is
//! complete and final). So a level is
//! - a directory of *sealed* chunks: full, final, never written again, and
//!   appended to without locks (`ChunkDir`);
//! - one *tail* chunk holding the nodes from the last sealed chunk to the end
//!   (1..=128 of them once the level is non-empty), behind an `Arc`.
//!
//! A snapshot clones the level: two `Arc` clones, whatever its size. The
//! writer's next change to a shared tail copies it once (4 KiB); sealed chunks
//! are never copied. Readers of a snapshot only ever look at sealed chunks
//! below their own sealed count, which the writer never touches again.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};

use crate::hash::Hash;

/// Nodes per chunk: 128 × 32 B = 4 KiB.
pub(crate) const CHUNK_LEN: usize = 128;
/// A full chunk of node values.
pub(crate) type Chunk = [Hash; CHUNK_LEN];

/// Slots in the directory's first segment; segment `k` holds `FIRST << k`.
const FIRST: usize = 32;
/// Segments: `FIRST * (2^SEGMENTS - 1)` chunks, far beyond any real tree.
const SEGMENTS: usize = 48;

/// A sealed chunk as handed to a directory: owned in memory, or a 4 KiB
/// page of a read-only mapping of a shard file (the mapping stays alive as
/// long as any directory holding one of its chunks).
pub(crate) enum ChunkRef {
    Owned(Arc<Chunk>),
    Mapped(Mapping, usize),
}

/// A read-only mapping (or in-memory copy) of a file.
pub(crate) type Mapping = Arc<dyn crate::io::Mapped>;

/// Low bit of a directory entry: the chunk is in a mapping, not an `Arc`.
const MAPPED: usize = 1;

/// Append-only, lock-free directory of sealed chunks.
///
/// One writer appends (through `&self`); any number of readers read entries
/// below a count they got from the writer (through a clone of the level, so
/// the entry was stored before they saw the count). Segments double in size
/// and never move, so an entry's address is stable for the directory's life.
/// An entry is either an owned chunk (it holds one strong count of its
/// `Arc`) or, tagged with [`MAPPED`], a pointer into one of `maps`.
pub(crate) struct ChunkDir {
    segments: [OnceLock<Box<[AtomicPtr<Chunk>]>>; SEGMENTS],
    /// Mappings that mapped entries point into.
    maps: Vec<Mapping>,
}

impl ChunkDir {
    fn new() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
            maps: Vec::new(),
        }
    }

    /// (segment, offset) of entry `i`.
    #[inline]
    fn locate(i: usize) -> (usize, usize) {
        let k = (i / FIRST + 1).ilog2() as usize;
        (k, i - FIRST * ((1 << k) - 1))
    }

    #[inline]
    fn slot(&self, i: usize) -> Option<&AtomicPtr<Chunk>> {
        let (k, off) = Self::locate(i);
        self.segments[k].get().map(|seg| &seg[off])
    }

    fn store(&self, i: usize, tagged: *mut Chunk) {
        let (k, off) = Self::locate(i);
        let seg = self.segments[k].get_or_init(|| {
            (0..FIRST << k)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect()
        });
        debug_assert!(
            seg[off].load(Ordering::Relaxed).is_null(),
            "chunk {i} sealed twice"
        );
        // A plain release store: a locked swap would stall on the chunk's
        // just-written bytes.
        seg[off].store(tagged, Ordering::Release);
    }

    /// Sets entry `i` to an owned chunk. Each entry is set once, by the
    /// single writer.
    fn set(&self, i: usize, chunk: Arc<Chunk>) {
        self.store(i, Arc::into_raw(chunk).cast_mut());
    }

    /// Sets entry `i` to the chunk at `off` of `map`, which is in `maps`.
    fn set_mapped(&self, i: usize, map: &Mapping, off: usize) {
        let bytes = map.bytes();
        assert!(
            off + CHUNK_LEN * 32 <= bytes.len(),
            "mapped chunk {i} inside its mapping"
        );
        let p = bytes[off..].as_ptr();
        assert!(
            (p as usize) & MAPPED == 0,
            "mapped chunks are at even addresses"
        );
        self.store(i, p.cast::<Chunk>().cast_mut().map_addr(|a| a | MAPPED));
    }

    /// The tagged entry `i`, which the caller knows was set.
    #[inline]
    fn raw(&self, i: usize) -> *mut Chunk {
        let p = self
            .slot(i)
            .map_or(std::ptr::null_mut(), |s| s.load(Ordering::Acquire));
        assert!(
            !p.is_null(),
            "sealed chunk {i} below the sealed count is always set"
        );
        p
    }

    /// Entry `i`, which the caller knows was set.
    #[inline]
    fn get(&self, i: usize) -> &Chunk {
        let p = self.raw(i).map_addr(|a| a & !MAPPED);
        // SAFETY: the entry is set (checked by `raw`). An owned entry came
        // from `Arc::into_raw` and the directory holds that strong count until
        // it drops; a mapped one points at 4 KiB inside a mapping in
        // `self.maps`, alive as long as `self`; entries are never replaced
        // and sealed chunks are never written, so the chunk lives, unchanged,
        // at least as long as `&self`.
        unsafe { &*p }
    }

    /// A copy of the first `count` entries, sharing every chunk and mapping.
    fn fork(&self, count: usize) -> Self {
        let dir = ChunkDir {
            segments: std::array::from_fn(|_| OnceLock::new()),
            maps: self.maps.clone(),
        };
        for i in 0..count {
            let p = self.raw(i);
            if p.addr() & MAPPED == 0 {
                // SAFETY: an owned entry came from `Arc::into_raw` and this
                // directory still holds its count: one more for the copy.
                unsafe { Arc::increment_strong_count(p.cast_const()) };
            }
            dir.store(i, p);
        }
        dir
    }
}

impl Drop for ChunkDir {
    fn drop(&mut self) {
        for seg in self.segments.iter_mut().filter_map(OnceLock::get_mut) {
            for slot in seg.iter_mut() {
                let p = *slot.get_mut();
                if !p.is_null() && p.addr() & MAPPED == 0 {
                    // SAFETY: `p` came from `Arc::into_raw` in `set` (or had
                    // its count raised in `fork`) and this is the one place
                    // that gives that strong count back.
                    drop(unsafe { Arc::from_raw(p) });
                }
            }
        }
    }
}

fn zeroed_chunk() -> Arc<Chunk> {
    // SAFETY: all-zero bytes are a valid `[[u8; 32]; CHUNK_LEN]`.
    unsafe { Arc::<Chunk>::new_zeroed().assume_init() }
}

/// A level as seen by the writer or by a snapshot (the same data: a snapshot
/// is a clone).
pub(crate) struct Level {
    dir: Arc<ChunkDir>,
    /// Chunks in `dir` this view may read.
    sealed: usize,
    /// Nodes `[sealed * CHUNK_LEN, len)`.
    tail: Arc<Chunk>,
    /// Set whenever `tail` may have another owner (every clone of the level
    /// sets it on both sides); cleared once the writer made `tail` unique.
    /// Saves the locked read-modify-write of `Arc::make_mut` on every write,
    /// which stalls on the bytes just written.
    tail_shared: AtomicBool,
    len: u64,
}

impl Clone for Level {
    fn clone(&self) -> Self {
        // Relaxed: a clone (through `&self`) never runs concurrently with a
        // write (through `&mut self`); the borrow already orders them.
        self.tail_shared.store(true, Ordering::Relaxed);
        Self {
            dir: self.dir.clone(),
            sealed: self.sealed,
            tail: self.tail.clone(),
            tail_shared: AtomicBool::new(true),
            len: self.len,
        }
    }
}

impl Level {
    pub(crate) fn new() -> Self {
        Self {
            dir: Arc::new(ChunkDir::new()),
            sealed: 0,
            tail: zeroed_chunk(),
            tail_shared: AtomicBool::new(false),
            len: 0,
        }
    }

    /// A level of `len` nodes held in `chunks` (`ceil(len / 128)` of them;
    /// bytes past `len` in the last one are ignored).
    pub(crate) fn from_chunks(mut chunks: Vec<ChunkRef>, len: u64) -> Self {
        assert_eq!(
            chunks.len() as u64,
            len.div_ceil(CHUNK_LEN as u64),
            "chunk count for {len} nodes"
        );
        let mut level = Self::new();
        let Some(tail) = chunks.pop() else {
            return level;
        };
        let mut dir = ChunkDir::new();
        for c in &chunks {
            if let ChunkRef::Mapped(m, _) = c
                && !dir.maps.iter().any(|x| Arc::ptr_eq(x, m))
            {
                dir.maps.push(m.clone());
            }
        }
        for (i, c) in chunks.into_iter().enumerate() {
            match c {
                ChunkRef::Owned(a) => dir.set(i, a),
                ChunkRef::Mapped(m, off) => dir.set_mapped(i, &m, off),
            }
            level.sealed += 1;
        }
        level.dir = Arc::new(dir);
        // The tail is written in place: it must be an owned copy.
        level.tail = match tail {
            ChunkRef::Owned(a) => a,
            ChunkRef::Mapped(m, off) => {
                let mut t = zeroed_chunk();
                Arc::get_mut(&mut t)
                    .expect("fresh")
                    .as_flattened_mut()
                    .copy_from_slice(&m.bytes()[off..off + CHUNK_LEN * 32]);
                t
            }
        };
        level.len = len;
        level
    }

    /// Serves the first `count` sealed chunks from `map` (chunk `i` at
    /// `base + i * 4096`) instead of memory: a new directory, so snapshots
    /// keep the old one; the owned chunks it no longer holds are freed
    /// when no snapshot holds them. Chunks sealed later stay as they are.
    pub(crate) fn remap(&mut self, map: &Mapping, base: usize, count: usize) {
        let count = count.min(self.sealed);
        let mut dir = ChunkDir::new();
        // Only the new mapping: it covers every mapped entry (`count` only
        // grows), so older mappings go once no snapshot holds them.
        dir.maps = vec![map.clone()];
        for i in 0..count {
            dir.set_mapped(i, map, base + i * CHUNK_LEN * 32);
        }
        for i in count..self.sealed {
            let p = self.dir.raw(i);
            debug_assert!(p.addr() & MAPPED == 0, "chunks past a remap are owned");
            if p.addr() & MAPPED == 0 {
                // SAFETY: as in `ChunkDir::fork`.
                unsafe { Arc::increment_strong_count(p.cast_const()) };
            }
            dir.store(i, p);
        }
        self.dir = Arc::new(dir);
    }

    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    #[inline]
    fn tail_start(&self) -> u64 {
        (self.sealed * CHUNK_LEN) as u64
    }

    /// Node `i` (`i < len`).
    #[inline]
    pub(crate) fn get(&self, i: u64) -> Hash {
        debug_assert!(i < self.len);
        let c = (i / CHUNK_LEN as u64) as usize;
        let off = (i % CHUNK_LEN as u64) as usize;
        if c < self.sealed {
            self.dir.get(c)[off]
        } else {
            self.tail[off]
        }
    }

    /// The nodes of chunk `c` that exist (`c * CHUNK_LEN < len`).
    #[inline]
    pub(crate) fn chunk(&self, c: usize) -> &[Hash] {
        if c < self.sealed {
            self.dir.get(c)
        } else {
            &self.tail[..(self.len - self.tail_start()) as usize]
        }
    }

    /// The tail, made unique first if a clone may share it.
    #[inline]
    fn tail_mut(&mut self) -> &mut Chunk {
        if *self.tail_shared.get_mut() {
            Arc::make_mut(&mut self.tail);
            *self.tail_shared.get_mut() = false;
        }
        // SAFETY: `tail_shared` is false, so no clone of `tail` was made since
        // `make_mut` above (or `seal`, or `new`) left this `Arc` the only one:
        // every path that clones it (`Clone`, `fork`) sets the flag first.
        // `&mut self` excludes other borrows of this level.
        unsafe { &mut *Arc::as_ptr(&self.tail).cast_mut() }
    }

    /// Writes `hashes` at `start..`, where `start` is `len` (append) or
    /// `len - 1` (rewrite the last node, then append): only the last node of a
    /// level ever changes.
    pub(crate) fn write_from(&mut self, start: u64, mut hashes: &[Hash]) {
        debug_assert!(start <= self.len && start + 1 >= self.len);
        if hashes.is_empty() {
            return;
        }
        if start < self.len {
            // Rewrite the last node, which is always in the tail.
            let off = (start - self.tail_start()) as usize;
            self.tail_mut()[off] = hashes[0];
            hashes = &hashes[1..];
        }
        while !hashes.is_empty() {
            let mut used = (self.len - self.tail_start()) as usize;
            if used == CHUNK_LEN {
                self.seal();
                used = 0;
            }
            let n = hashes.len().min(CHUNK_LEN - used);
            self.tail_mut()[used..used + n].copy_from_slice(&hashes[..n]);
            self.len += n as u64;
            hashes = &hashes[n..];
        }
    }

    /// Appends one node.
    #[inline]
    pub(crate) fn push(&mut self, h: Hash) {
        let mut used = (self.len - self.tail_start()) as usize;
        if used == CHUNK_LEN {
            self.seal();
            used = 0;
        }
        self.tail_mut()[used] = h;
        self.len += 1;
    }

    /// Overwrites the last node.
    #[inline]
    pub(crate) fn set_last(&mut self, h: Hash) {
        debug_assert!(self.len > 0);
        let off = (self.len - 1 - self.tail_start()) as usize;
        self.tail_mut()[off] = h;
    }

    /// Moves the full tail into the directory and starts a new one.
    fn seal(&mut self) {
        let full = std::mem::replace(&mut self.tail, zeroed_chunk());
        *self.tail_shared.get_mut() = false;
        self.dir.set(self.sealed, full);
        self.sealed += 1;
    }

    /// A copy with its own directory (sharing every chunk), so the copy and
    /// `self` can both be written to.
    pub(crate) fn fork(&self) -> Self {
        self.tail_shared.store(true, Ordering::Relaxed);
        Self {
            dir: Arc::new(self.dir.fork(self.sealed)),
            sealed: self.sealed,
            tail: self.tail.clone(),
            tail_shared: AtomicBool::new(true),
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> Hash {
        let mut x = [0u8; 32];
        x[..8].copy_from_slice(&i.to_le_bytes());
        x
    }

    #[test]
    fn locate_is_a_bijection_over_the_first_segments() {
        let mut expect = (0, 0);
        for i in 0..100_000 {
            assert_eq!(ChunkDir::locate(i), expect, "i = {i}");
            expect.1 += 1;
            if expect.1 == FIRST << expect.0 {
                expect = (expect.0 + 1, 0);
            }
        }
    }

    #[test]
    fn snapshots_keep_their_values_while_the_writer_goes_on() {
        let mut level = Level::new();
        let mut views = Vec::new();
        for i in 0..5_000u64 {
            if i > 0 && i % 7 == 0 {
                level.set_last(h(i + 1_000_000));
            }
            level.push(h(i));
            if i % 97 == 0 {
                views.push((level.clone(), level.len()));
            }
        }
        for (view, len) in &views {
            assert_eq!(view.len(), *len);
            for i in 0..len - 1 {
                let expect = if (i + 1) % 7 == 0 {
                    h(i + 1 + 1_000_000)
                } else {
                    h(i)
                };
                assert_eq!(view.get(i), expect, "i = {i} len = {len}");
            }
            assert_eq!(view.get(len - 1), h(len - 1));
        }
    }

    #[test]
    fn write_from_appends_and_rewrites_the_last_node() {
        let mut level = Level::new();
        let all: Vec<Hash> = (0..1_000).map(h).collect();
        level.write_from(0, &all[..300]);
        let snap = level.clone();
        level.write_from(299, &all[299..1_000]);
        assert_eq!(level.len(), 1_000);
        for i in 0..1_000 {
            assert_eq!(level.get(i), all[i as usize]);
        }
        assert_eq!(snap.len(), 300);
        assert_eq!(snap.chunk(2), &all[256..300]);
        let forked = level.fork();
        level.set_last(h(7));
        assert_eq!(forked.get(999), all[999]);
    }
}
