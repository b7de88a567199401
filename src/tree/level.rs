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

/// Append-only, lock-free directory of sealed chunks.
///
/// One writer appends (through `&self`); any number of readers read entries
/// below a count they got from the writer (through a clone of the level, so
/// the entry was stored before they saw the count). Segments double in size
/// and never move, so an entry's address is stable for the directory's life.
/// Each entry owns one strong count of its chunk's `Arc`.
pub(crate) struct ChunkDir {
    segments: [OnceLock<Box<[AtomicPtr<Chunk>]>>; SEGMENTS],
}

impl ChunkDir {
    fn new() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
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

    /// Sets entry `i`. Each entry is set once, by the single writer.
    fn set(&self, i: usize, chunk: Arc<Chunk>) {
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
        seg[off].store(Arc::into_raw(chunk).cast_mut(), Ordering::Release);
    }

    /// The pointer of entry `i`, which the caller knows was set.
    #[inline]
    fn ptr(&self, i: usize) -> *const Chunk {
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
        // SAFETY: `ptr` is non-null (checked), so it came from
        // `Arc::into_raw` in `set`; the directory holds that strong count
        // until it drops, and entries are never replaced, so the chunk lives
        // at least as long as `&self`. Chunks are never written once sealed.
        unsafe { &*self.ptr(i) }
    }

    /// A new strong reference to entry `i`, which the caller knows was set.
    fn get_arc(&self, i: usize) -> Arc<Chunk> {
        let p = self.ptr(i);
        // SAFETY: `p` came from `Arc::into_raw` and the directory still holds
        // its strong count (see `get`), so adding one more is sound.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }
}

impl Drop for ChunkDir {
    fn drop(&mut self) {
        for seg in self.segments.iter_mut().filter_map(OnceLock::get_mut) {
            for slot in seg.iter_mut() {
                let p = *slot.get_mut();
                if !p.is_null() {
                    // SAFETY: `p` came from `Arc::into_raw` in `set` and this
                    // is the one place that gives its strong count back.
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
    pub(crate) fn from_chunks(mut chunks: Vec<Arc<Chunk>>, len: u64) -> Self {
        assert_eq!(
            chunks.len() as u64,
            len.div_ceil(CHUNK_LEN as u64),
            "chunk count for {len} nodes"
        );
        let mut level = Self::new();
        let Some(tail) = chunks.pop() else {
            return level;
        };
        for (i, c) in chunks.into_iter().enumerate() {
            level.dir.set(i, c);
            level.sealed += 1;
        }
        level.tail = tail;
        level.len = len;
        level
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
        let dir = ChunkDir::new();
        for c in 0..self.sealed {
            dir.set(c, self.dir.get_arc(c));
        }
        self.tail_shared.store(true, Ordering::Relaxed);
        Self {
            dir: Arc::new(dir),
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
