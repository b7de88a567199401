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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::hash::Hash;

/// Nodes per chunk: 128 × 32 B = 4 KiB.
pub(crate) const CHUNK_LEN: usize = 128;
/// A full chunk of node values.
pub(crate) type Chunk = [Hash; CHUNK_LEN];

/// Entries per page of a chunk directory.
const PAGE: usize = 256;
/// Page slots in the directory's first segment; segment `k` holds
/// `FIRST << k`.
const FIRST: usize = 32;
/// Segments: `PAGE * FIRST * (2^SEGMENTS - 1)` chunks, far beyond any real
/// tree.
const SEGMENTS: usize = 40;

/// A sealed chunk as handed to a directory: owned in memory, or chunk `k`
/// of a mapped shard file (the mapping stays alive as long as any
/// directory holding one of its chunks).
pub(crate) enum ChunkRef {
    Owned(Arc<Chunk>),
    Mapped(Arc<MappedShard>, usize),
}

/// A read-only mapping (or in-memory copy) of a file.
pub(crate) type Mapping = Arc<dyn crate::io::Mapped>;

/// Chunks of a tree's shards checked so far, for its metrics.
#[derive(Debug, Default)]
pub(crate) struct ChunkStats {
    /// Chunks whose checksum passed.
    pub verified: AtomicU64,
    /// Chunks whose checksum failed.
    pub corrupt: AtomicU64,
    /// Chunks of internal levels recomputed from their children after
    /// their checksum failed.
    pub repaired: AtomicU64,
}

/// A level's shard file, mapped: chunk `k` at `base + 4096 k`, with the
/// checksum each chunk must have and which chunks have passed it.
///
/// No byte of a chunk is read for a caller before its checksum passed
/// (invariant 9): the first reader of a chunk checks it (one CRC-32C of 4
/// KiB) and sets its bit; every later read costs one atomic load. A chunk
/// that fails is `Error::Corruption` naming the file and offset, for that
/// read and every later one, unless a repaired copy was made (internal
/// levels only, from their verified children: see `Snapshot`).
pub(crate) struct MappedShard {
    map: Mapping,
    base: usize,
    path: PathBuf,
    /// Checksums of the file's chunks (shared by the views of one mapping).
    sums: Arc<[u32]>,
    /// Chunks this view covers: `0..count`.
    count: usize,
    /// Which chunks passed their check (shared by the views of one
    /// mapping: the same bytes).
    passed: Arc<[AtomicU64]>,
    /// Chunks recomputed after failing their check, by index; the next
    /// checkpoint writes them back.
    repaired: Arc<Mutex<std::collections::BTreeMap<usize, Arc<Chunk>>>>,
    stats: Arc<ChunkStats>,
    /// Where this view is counted in [`VIEWS`] (mappings that alias the
    /// file only).
    registered: Option<PathBuf>,
    /// Not counted: a later owner of the directory may write over its
    /// chunks, so each read copies the chunk and checks the copy.
    detached: bool,
}

/// Live views of mapped shard files that alias the file (a memory
/// mapping): per file, how many views cover how many chunks. A checkpoint
/// rewrites a chunk that a rewind cut off only once no view covers it
/// ([`MappedShard::views_cover`]): a mapping shows the file's bytes as
/// they are now, and a snapshot taken before the rewind still reads it.
static VIEWS: Mutex<Views> = Mutex::new(std::collections::BTreeMap::new());

/// Per shard file, how many live views cover how many chunks.
type Views = std::collections::BTreeMap<PathBuf, std::collections::BTreeMap<usize, usize>>;

/// [`VIEWS`], locked. A plain lock, not the simulator's: it is shared by
/// every tree of the process (simulations running side by side too), and
/// held for a map update only, never across a scheduling point.
fn views() -> std::sync::MutexGuard<'static, Views> {
    VIEWS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key of `path` in [`VIEWS`]: one file however its path is spelled.
fn view_key(path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn register_view(path: &std::path::Path, chunks: usize) -> PathBuf {
    let key = view_key(path);
    *views()
        .entry(key.clone())
        .or_default()
        .entry(chunks)
        .or_insert(0) += 1;
    key
}

impl Drop for MappedShard {
    fn drop(&mut self) {
        let Some(key) = &self.registered else {
            return;
        };
        let mut views = views();
        if let Some(by_count) = views.get_mut(key) {
            let n = self.count;
            if let Some(c) = by_count.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    by_count.remove(&n);
                }
            }
            if by_count.is_empty() {
                views.remove(key);
            }
        }
    }
}

impl MappedShard {
    /// A shard whose chunks `0..sums.len()` are in `map` from `base` on.
    /// `Corruption` if the mapping is too short for them.
    pub(crate) fn new(
        map: Mapping,
        base: usize,
        path: PathBuf,
        sums: Vec<u32>,
        stats: Arc<ChunkStats>,
    ) -> Result<Self> {
        let need = base + sums.len() * CHUNK_LEN * 32;
        if map.bytes().len() < need {
            return Err(Error::Corruption {
                file: path,
                offset: map.bytes().len() as u64,
                reason: format!("shard of {} bytes, {need} expected", map.bytes().len()),
            });
        }
        if map.bytes()[base..].as_ptr().addr() & MAPPED != 0 {
            return Err(Error::Io {
                path,
                source: std::io::Error::other("a mapped shard at an odd address"),
            });
        }
        let words = sums.len().div_ceil(64);
        let registered = map.aliases_file().then(|| register_view(&path, sums.len()));
        Ok(Self {
            map,
            base,
            path,
            count: sums.len(),
            sums: sums.into(),
            passed: (0..words).map(|_| AtomicU64::new(0)).collect(),
            repaired: Default::default(),
            stats,
            registered,
            detached: false,
        })
    }

    /// A view of this shard's first `count` chunks (`count <= chunks()`),
    /// sharing the mapping and what was checked: a rewound level holds
    /// one, so the chunks past it can be rewritten once older views are
    /// gone.
    pub(crate) fn restrict(&self, count: usize) -> Self {
        let count = count.min(self.count);
        let registered = self.registered.clone().inspect(|key| {
            *views()
                .entry(key.clone())
                .or_default()
                .entry(count)
                .or_insert(0) += 1;
        });
        Self {
            map: self.map.clone(),
            base: self.base,
            path: self.path.clone(),
            sums: self.sums.clone(),
            count,
            passed: self.passed.clone(),
            repaired: self.repaired.clone(),
            stats: self.stats.clone(),
            registered,
            detached: self.detached,
        }
    }

    /// The same view, not counted in [`VIEWS`]: for a closed tree, whose
    /// handle may live on while a later owner of the directory writes over
    /// chunks it maps. Every read through it copies the chunk and checks
    /// the copy (`Corruption` if it was written over), never a wrong node.
    pub(crate) fn detach(&self) -> Self {
        Self {
            map: self.map.clone(),
            base: self.base,
            path: self.path.clone(),
            sums: self.sums.clone(),
            count: self.count,
            // Its own: a chunk that passed once may be written over later.
            passed: (0..self.passed.len()).map(|_| AtomicU64::new(0)).collect(),
            repaired: Arc::new(Mutex::new(
                crate::rt::lock(&self.repaired)
                    .range(..self.count)
                    .map(|(k, c)| (*k, c.clone()))
                    .collect(),
            )),
            stats: self.stats.clone(),
            registered: None,
            detached: true,
        }
    }

    /// A detached view's chunk `k`: a copy of its bytes, checked.
    #[cold]
    fn checked_copy(&self, k: usize) -> Result<Arc<Chunk>> {
        if let Some(c) = self.repaired(k) {
            return Ok(c);
        }
        let mut copy = [[0u8; 32]; CHUNK_LEN];
        copy.as_flattened_mut().copy_from_slice(self.bytes(k));
        if crc32c::crc32c(copy.as_flattened()) == self.sums[k] {
            return Ok(Arc::new(copy));
        }
        Err(Error::Corruption {
            file: self.path.clone(),
            offset: self.offset(k),
            reason: format!(
                "chunk {k} checksum mismatch (a closed tree's view: the directory's later owner may have rewritten it)"
            ),
        })
    }

    /// Whether a live view of the shard file at `path` (of any tree handle
    /// of this process) covers chunk `k`: its bytes must not be rewritten.
    pub(crate) fn views_cover(path: &std::path::Path, k: usize) -> bool {
        let key = view_key(path);
        views()
            .get(&key)
            .and_then(|by_count| by_count.keys().next_back())
            .is_some_and(|&max| max > k)
    }

    /// Chunks in the shard.
    pub(crate) fn chunks(&self) -> usize {
        self.count
    }

    /// The file.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The file offset of chunk `k`.
    pub(crate) fn offset(&self, k: usize) -> u64 {
        (self.base + k * CHUNK_LEN * 32) as u64
    }

    fn bytes(&self, k: usize) -> &[u8] {
        let off = self.base + k * CHUNK_LEN * 32;
        &self.map.bytes()[off..off + CHUNK_LEN * 32]
    }

    /// The stored checksum of chunk `k`.
    pub(crate) fn sum(&self, k: usize) -> u32 {
        self.sums[k]
    }

    #[inline]
    fn passed(&self, k: usize) -> bool {
        self.passed[k / 64].load(Ordering::Acquire) & (1 << (k % 64)) != 0
    }

    /// Checks chunk `k` once: Ok once it passed (or was repaired), else
    /// its checksum now.
    #[inline]
    pub(crate) fn check(&self, k: usize) -> Result<()> {
        if self.passed(k) {
            return Ok(());
        }
        self.check_slow(k)
    }

    #[cold]
    fn check_slow(&self, k: usize) -> Result<()> {
        if crc32c::crc32c(self.bytes(k)) == self.sums[k] {
            if self.passed[k / 64].fetch_or(1 << (k % 64), Ordering::AcqRel) & (1 << (k % 64)) == 0
            {
                self.stats.verified.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        Err(Error::Corruption {
            file: self.path.clone(),
            offset: self.offset(k),
            reason: format!("chunk {k} checksum mismatch"),
        })
    }

    /// Checks every chunk not yet checked nor repaired, unless `stop`
    /// says to stop (asked every 256 chunks); returns the ones that failed.
    pub(crate) fn check_all(&self, stop: &dyn Fn() -> bool) -> (Vec<usize>, Option<Error>) {
        let mut failed = Vec::new();
        let mut first = None;
        for k in 0..self.count {
            // Every 256 chunks, and not before the first 256: a caller
            // that stops whenever others wait still makes progress.
            if k > 0 && k % 256 == 0 && stop() {
                break;
            }
            if self.passed(k) || self.repaired(k).is_some() {
                continue;
            }
            if let Err(e) = self.check_slow(k) {
                failed.push(k);
                first.get_or_insert(e);
            }
        }
        (failed, first)
    }

    /// The repaired copy of chunk `k`, if one was made.
    pub(crate) fn repaired(&self, k: usize) -> Option<Arc<Chunk>> {
        crate::rt::lock(&self.repaired).get(&k).cloned()
    }

    /// Keeps `chunk` as chunk `k`, which failed its check and whose
    /// checksum `chunk` has.
    pub(crate) fn set_repaired(&self, k: usize, chunk: Arc<Chunk>) {
        debug_assert_eq!(crc32c::crc32c(chunk.as_flattened()), self.sums[k]);
        let mut r = crate::rt::lock(&self.repaired);
        if r.insert(k, chunk).is_none() {
            self.stats.repaired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every repaired chunk this view covers, by index (a restricted view
    /// shares the map with wider ones, whose chunks past its count a
    /// checkpoint may have written over since).
    pub(crate) fn all_repaired(&self) -> Vec<(usize, Arc<Chunk>)> {
        crate::rt::lock(&self.repaired)
            .range(..self.count)
            .map(|(k, c)| (*k, c.clone()))
            .collect()
    }
}

/// Low bit of a directory entry: the chunk is in a mapping, not an `Arc`.
const MAPPED: usize = 1;

/// `PAGE` entries of a directory. An entry is null, an owned chunk (the
/// page holds one strong count of its `Arc`) or, tagged with [`MAPPED`], a
/// pointer into a mapping that every directory holding the page keeps
/// alive. A full page is shared by the directories forked from one
/// another (each entry is set once, so a full page is never written again).
struct Page([AtomicPtr<Chunk>; PAGE]);

impl Page {
    fn new() -> Arc<Self> {
        Arc::new(Page(std::array::from_fn(|_| {
            AtomicPtr::new(std::ptr::null_mut())
        })))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        for slot in &mut self.0 {
            let p = *slot.get_mut();
            if !p.is_null() && p.addr() & MAPPED == 0 {
                // SAFETY: `p` came from `Arc::into_raw` in `ChunkDir::set`
                // (or had its count raised when it was copied into this
                // page) and this is the one place that gives that strong
                // count back.
                drop(unsafe { Arc::from_raw(p) });
            }
        }
    }
}

/// A segment of a directory's page table.
type PageTable = Box<[OnceLock<Arc<Page>>]>;

/// Append-only, lock-free directory of sealed chunks.
///
/// One writer appends (through `&self`); any number of readers read entries
/// below a count they got from the writer (through a clone of the level, so
/// the entry was stored before they saw the count). Entries live in pages
/// of `PAGE`; the page table's segments double in size and never move, so
/// an entry's address is stable for the page's life, which is at least the
/// directory's. A fork shares the full pages (O(count / PAGE)).
pub(crate) struct ChunkDir {
    segments: [OnceLock<PageTable>; SEGMENTS],
    /// The shard that mapped entries point into: entry `i`, if mapped, is
    /// its chunk `i`.
    shard: Option<Arc<MappedShard>>,
}

impl ChunkDir {
    fn new() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
            shard: None,
        }
    }

    /// (segment, offset) of page `p` in the page table.
    #[inline]
    fn locate(p: usize) -> (usize, usize) {
        let k = (p / FIRST + 1).ilog2() as usize;
        (k, p - FIRST * ((1 << k) - 1))
    }

    /// The page-table slot of page `p`, made if `make`.
    #[inline]
    fn page_slot(&self, p: usize, make: bool) -> Option<&OnceLock<Arc<Page>>> {
        let (k, off) = Self::locate(p);
        let seg = if make {
            self.segments[k].get_or_init(|| (0..FIRST << k).map(|_| OnceLock::new()).collect())
        } else {
            self.segments[k].get()?
        };
        Some(&seg[off])
    }

    #[inline]
    fn slot(&self, i: usize) -> Option<&AtomicPtr<Chunk>> {
        let page = self.page_slot(i / PAGE, false)?.get()?;
        Some(&page.0[i % PAGE])
    }

    fn store(&self, i: usize, tagged: *mut Chunk) {
        let page = self
            .page_slot(i / PAGE, true)
            .expect("made")
            .get_or_init(Page::new);
        let slot = &page.0[i % PAGE];
        debug_assert!(
            slot.load(Ordering::Relaxed).is_null(),
            "chunk {i} sealed twice"
        );
        // A plain release store: a locked swap would stall on the chunk's
        // just-written bytes.
        slot.store(tagged, Ordering::Release);
    }

    /// Sets entry `i` to an owned chunk. Each entry is set once, by the
    /// single writer.
    fn set(&self, i: usize, chunk: Arc<Chunk>) {
        self.store(i, Arc::into_raw(chunk).cast_mut());
    }

    /// Sets entry `i` to chunk `i` of `self.shard`.
    fn set_mapped(&self, i: usize) {
        let shard = self
            .shard
            .as_ref()
            .expect("a directory with mapped entries has a shard");
        let p = shard.bytes(i).as_ptr();
        debug_assert!(
            p.addr() & MAPPED == 0,
            "mapped chunks are at even addresses (checked by MappedShard::new)"
        );
        self.store(i, p.cast::<Chunk>().cast_mut().map_addr(|a| a | MAPPED));
    }

    /// Entry `i` checked: an owned chunk, or a mapped one whose checksum
    /// passed (checked now if it was not yet), or its repaired copy.
    #[inline]
    fn get_checked(&self, i: usize) -> Result<Checked<'_>> {
        let p = self.raw(i);
        if p.addr() & MAPPED == 0 {
            return Ok(Checked::Here(self.get(i)));
        }
        let shard = self.shard.as_ref().expect("mapped entries have a shard");
        if shard.detached {
            return shard.checked_copy(i).map(Checked::Repaired);
        }
        if shard.passed(i) {
            return Ok(Checked::Here(self.get(i)));
        }
        if let Some(c) = shard.repaired(i) {
            return Ok(Checked::Repaired(c));
        }
        match shard.check(i) {
            Ok(()) => Ok(Checked::Here(self.get(i))),
            // Repaired meanwhile by another reader (and perhaps being
            // written back, which tore what this one read).
            Err(e) => shard.repaired(i).map(Checked::Repaired).ok_or(e),
        }
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
        // from `Arc::into_raw` and its page holds that strong count until it
        // drops, and the directory holds the page; a mapped one points at 4 KiB inside a mapping in
        // `self.shard`, alive as long as `self`; entries are never replaced.
        // The bytes are never written while a reference to them lives. A
        // checkpoint writes in place (1) a chunk that failed its check,
        // which is reached only through its repaired copy
        // (`get_checked`), never through here (the writer reads no mapped
        // chunk: `Level::get`); (2) a chunk a rewind cut off, only while no
        // counted view covers it (`MappedShard::views_cover`): every view a
        // directory reads through is counted, but a detached one, whose
        // reads copy and check (`get_checked`) and never come here.
        unsafe { &*p }
    }

    /// A copy of the first `count` entries, sharing every chunk and mapping.
    fn fork(&self, count: usize) -> Self {
        self.fork_with(count, self.shard.clone())
    }

    /// [`fork`](Self::fork) whose shard view covers no chunk past `count`
    /// (see [`MappedShard::restrict`]).
    fn fork_restricted(&self, count: usize) -> Self {
        let shard = match &self.shard {
            Some(s) if s.chunks() > count => Some(Arc::new(s.restrict(count))),
            other => other.clone(),
        };
        self.fork_with(count, shard)
    }

    fn fork_with(&self, count: usize, shard: Option<Arc<MappedShard>>) -> Self {
        let dir = ChunkDir {
            segments: std::array::from_fn(|_| OnceLock::new()),
            shard,
        };
        // Full pages below `count` are shared: never written again.
        let full = count / PAGE;
        for p in 0..full {
            let page = self
                .page_slot(p, false)
                .and_then(OnceLock::get)
                .expect("a page below the count is full")
                .clone();
            let _ = dir.page_slot(p, true).expect("made").set(page);
        }
        for i in full * PAGE..count {
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

/// A checked chunk: in the directory, or the repaired copy of a mapped
/// one that failed its check.
enum Checked<'a> {
    Here(&'a Chunk),
    Repaired(Arc<Chunk>),
}

impl Checked<'_> {
    fn node(&self, off: usize) -> Hash {
        match self {
            Checked::Here(c) => c[off],
            Checked::Repaired(c) => c[off],
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
        for (i, c) in chunks.iter().enumerate() {
            if let ChunkRef::Mapped(m, k) = c {
                assert_eq!(*k, i, "mapped entry {i} is its shard's chunk {i}");
                match &dir.shard {
                    Some(s) => assert!(Arc::ptr_eq(s, m), "one shard per level"),
                    None => dir.shard = Some(m.clone()),
                }
            }
        }
        for (i, c) in chunks.into_iter().enumerate() {
            match c {
                ChunkRef::Owned(a) => dir.set(i, a),
                ChunkRef::Mapped(..) => dir.set_mapped(i),
            }
            level.sealed += 1;
        }
        level.dir = Arc::new(dir);
        // The tail is written in place: it must be an owned copy.
        level.tail = match tail {
            ChunkRef::Owned(a) => a,
            ChunkRef::Mapped(..) => unreachable!("a level's last chunk is loaded into memory"),
        };
        level.len = len;
        level
    }

    /// Serves the first `count` sealed chunks (at most `shard.chunks()`)
    /// from `shard` instead of memory: a new directory, so snapshots keep
    /// the old one; the owned chunks it no longer holds are freed when no
    /// snapshot holds them. Chunks from `count` on stay as they are.
    pub(crate) fn remap(&mut self, shard: &Arc<MappedShard>, count: usize) {
        let count = count.min(shard.chunks()).min(self.sealed);
        let mut dir = ChunkDir::new();
        // Only the new shard: it covers every mapped entry (`count` only
        // grows), so older mappings go once no snapshot holds them.
        dir.shard = Some(shard.clone());
        for i in 0..count {
            dir.set_mapped(i);
        }
        for i in count..self.sealed {
            let p = self.dir.raw(i);
            if p.addr() & MAPPED != 0 {
                // Past the new mapping (not expected: callers remap no less
                // than was mapped), an entry of the old one would outlive
                // it: held as a checked copy instead, or the level is left
                // as it is.
                let copy = match self.dir.get_checked(i) {
                    Ok(Checked::Here(c)) => Arc::new(*c),
                    Ok(Checked::Repaired(r)) => r,
                    Err(_) => return,
                };
                dir.set(i, copy);
                continue;
            }
            // SAFETY: as in `ChunkDir::fork_with`.
            unsafe { Arc::increment_strong_count(p.cast_const()) };
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

    /// Node `i` (`i < len`), for the writer: only from its frontier,
    /// which is held in memory (see `LeanImt::from_levels`, `remap_level`).
    #[inline]
    pub(crate) fn get(&self, i: u64) -> Hash {
        debug_assert!(i < self.len);
        let c = (i / CHUNK_LEN as u64) as usize;
        let off = (i % CHUNK_LEN as u64) as usize;
        if c < self.sealed {
            debug_assert!(self.is_owned(c), "the writer read mapped chunk {c}");
            self.dir.get(c)[off]
        } else {
            self.tail[off]
        }
    }

    /// The nodes of chunk `c` that exist (`c * CHUNK_LEN < len`), for the
    /// writer: only from its frontier, held in memory.
    #[inline]
    pub(crate) fn chunk(&self, c: usize) -> &[Hash] {
        if c < self.sealed {
            debug_assert!(self.is_owned(c), "the writer read mapped chunk {c}");
            self.dir.get(c)
        } else {
            &self.tail[..(self.len - self.tail_start()) as usize]
        }
    }

    /// Reads its mapped chunks through a detached view from now on (see
    /// [`MappedShard::detach`]); snapshots taken before keep theirs.
    pub(crate) fn detach(&mut self) {
        let Some(shard) = self.dir.shard.as_ref().filter(|s| !s.detached) else {
            return;
        };
        let view = Arc::new(shard.detach());
        self.dir = Arc::new(self.dir.fork_with(self.sealed, Some(view)));
    }

    /// Holds sealed chunks `from..` in memory: copies of their checked
    /// bytes, or their repaired copies (`Corruption` for one that fails
    /// its check and has no repaired copy).
    pub(crate) fn own_from(&mut self, from: usize) -> Result<()> {
        if (from..self.sealed).all(|c| self.is_owned(c)) {
            return Ok(());
        }
        // The entries below `from` as they are (full pages shared).
        let dir = self.dir.fork_with(from, self.dir.shard.clone());
        for i in from..self.sealed {
            let p = self.dir.raw(i);
            if p.addr() & MAPPED != 0 {
                let copy = match self.dir.get_checked(i)? {
                    Checked::Here(c) => Arc::new(*c),
                    Checked::Repaired(r) => r,
                };
                dir.set(i, copy);
                continue;
            }
            // SAFETY: as in `ChunkDir::fork_with`.
            unsafe { Arc::increment_strong_count(p.cast_const()) };
            dir.store(i, p);
        }
        self.dir = Arc::new(dir);
        Ok(())
    }

    /// Whether sealed chunk `c` is held in memory.
    fn is_owned(&self, c: usize) -> bool {
        self.dir.raw(c).addr() & MAPPED == 0
    }

    /// Node `i` (`i < len`) for a reader: a mapped chunk is checked first
    /// (invariant 9).
    #[inline]
    pub(crate) fn try_get(&self, i: u64) -> Result<Hash> {
        debug_assert!(i < self.len);
        let c = (i / CHUNK_LEN as u64) as usize;
        let off = (i % CHUNK_LEN as u64) as usize;
        if c < self.sealed {
            Ok(self.dir.get_checked(c)?.node(off))
        } else {
            Ok(self.tail[off])
        }
    }

    /// Chunk `c` (sealed) checked, as an owned copy when it had to be
    /// repaired: for the checkpoint writer.
    pub(crate) fn try_chunk(&self, c: usize) -> Result<std::borrow::Cow<'_, [Hash]>> {
        if c >= self.sealed {
            return Ok(std::borrow::Cow::Borrowed(self.chunk(c)));
        }
        Ok(match self.dir.get_checked(c)? {
            Checked::Here(h) => std::borrow::Cow::Borrowed(h),
            Checked::Repaired(r) => std::borrow::Cow::Owned(r.to_vec()),
        })
    }

    /// The shard the level's mapped chunks come from, if any.
    pub(crate) fn shard(&self) -> Option<&Arc<MappedShard>> {
        self.dir.shard.as_ref()
    }

    /// Sealed chunks.
    pub(crate) fn sealed(&self) -> usize {
        self.sealed
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

impl Level {
    /// The level's first `len` nodes (`len <= self.len()`) as a level of
    /// their own, its last node as it is here (the caller sets it). The
    /// node's chunk is read checked (`Corruption` if it fails and was not
    /// repaired). `for_writer`: the result can be written to (its own
    /// directory when it has fewer sealed chunks, whose shard view covers
    /// none past them); else it is a read-only view sharing this one's.
    pub(crate) fn prefix(&self, len: u64, for_writer: bool) -> Result<Level> {
        debug_assert!(len <= self.len);
        if len == 0 {
            return Ok(Level::new());
        }
        let sealed = ((len - 1) / CHUNK_LEN as u64) as usize;
        let mut tail = [[0u8; 32]; CHUNK_LEN];
        let n = (len - (sealed * CHUNK_LEN) as u64) as usize;
        if sealed < self.sealed {
            match self.dir.get_checked(sealed)? {
                Checked::Here(c) => tail[..n].copy_from_slice(&c[..n]),
                Checked::Repaired(c) => tail[..n].copy_from_slice(&c[..n]),
            }
        } else {
            tail[..n].copy_from_slice(&self.tail[..n]);
        }
        let dir = if for_writer && sealed < self.sealed {
            Arc::new(self.dir.fork_restricted(sealed))
        } else {
            self.dir.clone()
        };
        Ok(Level {
            dir,
            sealed,
            tail: Arc::new(tail),
            tail_shared: AtomicBool::new(false),
            len,
        })
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

    /// Prefixes for the writer share the full pages of the directory; both
    /// sides then append, and every view keeps its values whatever order
    /// they are dropped in (also run under ASan: see the README).
    #[test]
    fn prefixes_share_full_pages_and_keep_their_values() {
        let n = (3 * PAGE * CHUNK_LEN + 1000) as u64;
        let mut level = Level::new();
        for i in 0..n {
            level.push(h(i));
        }
        let cuts = [
            n - 1,
            n - 500,
            (PAGE * CHUNK_LEN) as u64 + 7,
            (2 * PAGE * CHUNK_LEN) as u64,
            (PAGE * CHUNK_LEN) as u64 - 3,
            5,
        ];
        let mut views: Vec<(Level, Vec<Hash>)> = Vec::new();
        for (k, &len) in cuts.iter().enumerate() {
            let mut p = level.prefix(len, true).unwrap();
            let mut want: Vec<Hash> = (0..len).map(h).collect();
            // The writer side goes on with other values.
            for j in 0..(CHUNK_LEN as u64 * 3 + 11) {
                let v = h(1_000_000_000 * (k as u64 + 1) + j);
                p.push(v);
                want.push(v);
            }
            views.push((p, want));
        }
        let snap = level.clone();
        drop(level);
        for (i, (view, want)) in views.iter().enumerate().rev() {
            assert_eq!(view.len(), want.len() as u64);
            for (j, w) in want.iter().enumerate() {
                assert_eq!(view.try_get(j as u64).unwrap(), *w, "view {i} node {j}");
            }
        }
        views.swap_remove(1);
        assert_eq!(snap.get(n - 1), h(n - 1));
        drop(snap);
        for (view, want) in &views {
            assert_eq!(
                view.try_get(want.len() as u64 - 1).unwrap(),
                *want.last().unwrap()
            );
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
