//! The in-memory n-ary Lean Incremental Merkle Tree and its snapshots.
//!
//! Owns the node values of every level and the rule that derives each parent
//! from its children. Touches no I/O: the persistent `Tree` uses a `LeanImt`
//! inside and logs what it inserts.
//!
//! Shape: level 0 holds the leaves; level `d + 1` holds `ceil(len_d / N)`
//! nodes, node `j` being the parent of the group `[j*N, min(j*N + N, len_d))`
//! of level `d`. A group of two or more children is hashed
//! ([`Hasher::hash_children`]); a group of one child is lifted unchanged. The
//! top level has one node, the root; `depth = ceil(log_N(size))`.

mod level;
pub mod proof;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher, Resume};
pub(crate) use level::{CHUNK_LEN, ChunkRef, ChunkStats, Level, MappedShard};

/// `N^MAX_DEPTH`, saturated at `u64::MAX`.
pub(crate) const fn capacity_of(arity: usize, max_depth: usize) -> u64 {
    let mut cap: u64 = 1;
    let mut d = 0;
    while d < max_depth {
        cap = match cap.checked_mul(arity as u64) {
            Some(c) => c,
            None => return u64::MAX,
        };
        d += 1;
    }
    cap
}

/// An append-only n-ary Lean Incremental Merkle Tree held in memory.
///
/// `H` hashes groups of children, `N` (2 or more) is the arity, and
/// `MAX_DEPTH` bounds the depth, so the tree holds at most `N^MAX_DEPTH`
/// leaves. Levels are stored in 4 KiB chunks shared copy-on-write with
/// [`Snapshot`]s: a snapshot costs O(depth) whatever the size, and the first
/// insert after it copies at most one chunk per level.
///
/// ```
/// use ringtree::{Blake3, LeanImt};
///
/// let mut t = LeanImt::<Blake3, 4, 32>::new(Blake3);
/// let root = t.insert([1u8; 32])?;
/// assert_eq!(root, [1u8; 32]); // a one-leaf tree's root is the leaf
/// let root = t.insert_many(&[[2u8; 32], [3u8; 32]])?;
/// assert_eq!(t.size(), 3);
/// assert_eq!(t.depth(), 1);
///
/// let snap = t.snapshot();
/// let proof = snap.proof(1)?;
/// proof.verify_at(&Blake3, &root, 3)?;
/// # Ok::<(), ringtree::Error>(())
/// ```
pub struct LeanImt<H: Hasher, const N: usize, const MAX_DEPTH: usize> {
    hasher: H,
    /// `levels[0]` holds the leaves; `levels.len() == depth + 1` once the
    /// tree is non-empty.
    levels: Vec<Level>,
    /// Reused buffer of recomputed parents for `insert_many`.
    scratch: Vec<Hash>,
    /// Per level, the hash progress over its last group's final children.
    resume: Vec<Resume>,
    /// The hasher as a parent function, shared with snapshots, which
    /// recompute a damaged chunk of an internal level with it.
    hash_fn: HashFn,
}

/// Hashes a group of children into their parent (a group of one is lifted
/// by the caller).
pub(crate) type HashFn = Arc<dyn Fn(&[Hash]) -> Hash + Send + Sync>;

/// Node `i` of level `d`, its chunk checked first; a damaged chunk of an
/// internal level is recomputed from its children (see `repair_chunk`).
fn node_checked(levels: &[Level], hash: &HashFn, arity: usize, d: usize, i: u64) -> Result<Hash> {
    match levels[d].try_get(i) {
        Ok(h) => Ok(h),
        Err(e) if d > 0 => {
            repair_chunk(levels, hash, arity, d, (i / CHUNK_LEN as u64) as usize, e)?;
            levels[d].try_get(i)
        }
        Err(e) => Err(e),
    }
}

/// Chunk `c` of internal level `d` failed its check (`cause`): an internal
/// node is a function of its children, so it is recomputed from the level
/// below (each child checked, or repaired, in turn). The copy is kept only
/// if it has the checksum the damaged chunk should have had, which proves
/// it right; the next checkpoint writes it back over the damage. Else
/// `cause` stands: leaves, and internal chunks whose children are lost
/// too, cannot be derived.
fn repair_chunk(
    levels: &[Level],
    hash: &HashFn,
    arity: usize,
    d: usize,
    c: usize,
    cause: Error,
) -> Result<()> {
    let level = &levels[d];
    let Some(shard) = level.shard().filter(|s| c < s.chunks()).cloned() else {
        return Err(cause);
    };
    let below = &levels[d - 1];
    let mut chunk = [[0u8; 32]; CHUNK_LEN];
    let mut kids = Vec::with_capacity(arity);
    for (j, slot) in chunk.iter_mut().enumerate() {
        let p = (c * CHUNK_LEN + j) as u64;
        let a = p * arity as u64;
        let b = (a + arity as u64).min(below.len());
        kids.clear();
        for x in a..b {
            match node_checked(levels, hash, arity, d - 1, x) {
                Ok(h) => kids.push(h),
                Err(_) => return Err(cause),
            }
        }
        *slot = match kids.as_slice() {
            [] => return Err(cause),
            [one] => *one,
            many => hash(many),
        };
    }
    if crc32c::crc32c(chunk.as_flattened()) != shard.sum(c) {
        return Err(cause);
    }
    tracing::warn!(
        file = %shard.path().display(),
        offset = shard.offset(c),
        "recomputed a damaged chunk of an internal level from its children"
    );
    shard.set_repaired(c, Arc::new(chunk));
    Ok(())
}

/// The machine's cores, as the process may use them (read once).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> LeanImt<H, N, MAX_DEPTH> {
    const VALID: () = {
        assert!(N >= 2, "arity N must be at least 2");
        assert!(N <= u32::MAX as usize, "arity N must fit in 32 bits");
        assert!(MAX_DEPTH >= 1, "MAX_DEPTH must be at least 1");
        assert!(
            N <= H::MAX_ARITY,
            "the hasher has no parameters for this arity N (see Hasher::MAX_ARITY)"
        );
    };

    /// The most leaves this tree type holds: `N^MAX_DEPTH`, saturated at
    /// `u64::MAX`.
    pub const CAPACITY: u64 = capacity_of(N, MAX_DEPTH);

    /// An empty tree.
    pub fn new(hasher: H) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID;
        let h = hasher.clone();
        Self {
            hasher,
            levels: vec![Level::new()],
            scratch: Vec::new(),
            resume: Vec::new(),
            hash_fn: Arc::new(move |c| h.hash_children(c)),
        }
    }

    /// A tree from stored levels (`levels[0]` the leaves, each level's
    /// chunks and node count), as a checkpoint holds them. The caller has
    /// checked the shape; this only asserts it. The chunks the writer will
    /// read are checked here (`Corruption` if one fails and cannot be
    /// repaired); readers check the others on first use.
    pub(crate) fn from_levels(hasher: H, levels: Vec<(Vec<ChunkRef>, u64)>) -> Result<Self> {
        let mut t = Self::new(hasher);
        if levels.is_empty() {
            return Ok(t);
        }
        t.levels = levels
            .into_iter()
            .map(|(chunks, len)| Level::from_chunks(chunks, len))
            .collect();
        for w in t.levels.windows(2) {
            assert_eq!(w[1].len(), w[0].len().div_ceil(N as u64), "level shape");
        }
        assert!(
            t.levels[0].len() == 0 || t.levels.last().map(Level::len) == Some(1),
            "one root"
        );
        for d in 0..t.levels.len() {
            for c in t.frontier(d, t.levels[d].len()) {
                node_checked(&t.levels, &t.hash_fn, N, d, (c * CHUNK_LEN) as u64)?;
            }
        }
        // The writer reads its frontier only, and only from memory: copies
        // of the checked bytes (or the repaired ones), never the mapping
        // (whose damaged chunks a checkpoint writes back in place).
        for d in 0..t.levels.len() {
            let from = t.frontier(d, t.levels[d].len()).start;
            t.levels[d].own_from(from)?;
        }
        Ok(t)
    }

    /// The sealed chunks of level `d` (of `len` nodes) that appends can
    /// still read: those holding a node of its last group.
    fn frontier(&self, d: usize, len: u64) -> std::ops::Range<usize> {
        let sealed = self.levels[d].sealed();
        if len == 0 {
            return 0..0;
        }
        let group = (len - 1) / N as u64 * N as u64;
        ((group / CHUNK_LEN as u64) as usize).min(sealed)..sealed
    }

    /// Serves the sealed chunks of level `d` that `shard` holds from it
    /// (see [`Level::remap`]), at most `limit` of them (those the tree
    /// still has as the shard has them), but for the writer's frontier,
    /// which stays in memory: appends never read mapped bytes.
    pub(crate) fn remap_level(&mut self, d: usize, shard: &Arc<MappedShard>, limit: usize) {
        let Some(level) = self.levels.get(d) else {
            return;
        };
        let count = shard
            .chunks()
            .min(limit)
            .min(level.sealed())
            .min(self.frontier(d, level.len()).start);
        self.levels[d].remap(shard, count);
    }

    /// Reads the levels' mapped chunks through detached views (each read
    /// copied and checked): for a closed tree, whose directory a later
    /// owner may rewrite.
    pub(crate) fn detach_shards(&mut self) {
        for level in &mut self.levels {
            level.detach();
        }
    }

    /// The hasher.
    pub fn hasher(&self) -> &H {
        &self.hasher
    }

    /// The root, or `None` for an empty tree.
    pub fn root(&self) -> Option<Hash> {
        let top = self.levels.last()?;
        (top.len() == 1).then(|| top.get(0))
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len()
    }

    /// Depth: `ceil(log_N(size))`, 0 for a tree of 0 or 1 leaves.
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// Leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash> {
        let size = self.size();
        if index >= size {
            return Err(Error::IndexOutOfRange { index, size });
        }
        node_checked(&self.levels, &self.hash_fn, N, 0, index)
    }

    fn check_room(&self, additional: u64) -> Result<()> {
        let size = self.size();
        match size.checked_add(additional) {
            Some(total) if total <= Self::CAPACITY => Ok(()),
            _ => Err(Error::Capacity {
                size,
                additional,
                capacity: Self::CAPACITY,
            }),
        }
    }

    /// Appends one leaf and returns the new root.
    ///
    /// Fails with [`Error::Capacity`] when the tree holds `N^MAX_DEPTH`
    /// leaves already; the tree is then unchanged.
    ///
    /// ```
    /// use ringtree::{Blake3, Hasher, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 2, 32>::new(Blake3);
    /// assert_eq!(tree.insert([1; 32])?, [1; 32]); // one leaf: the root
    /// let root = tree.insert([2; 32])?;
    /// assert_eq!(root, Blake3.hash_children(&[[1; 32], [2; 32]]));
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn insert(&mut self, leaf: Hash) -> Result<Hash> {
        self.check_room(1)?;
        self.check_leaves(std::slice::from_ref(&leaf))?;
        self.levels[0].push(leaf);
        let mut idx = self.levels[0].len() - 1;
        let mut d = 0;
        while self.levels[d].len() > 1 {
            let parent = idx / N as u64;
            let value = self.last_group_value(d, parent);
            if d + 1 == self.levels.len() {
                self.levels.push(Level::new());
            }
            let up = &mut self.levels[d + 1];
            if parent < up.len() {
                up.set_last(value);
            } else {
                up.push(value);
            }
            idx = parent;
            d += 1;
        }
        Ok(self.levels[d].get(0))
    }

    /// [`group_value`](Self::group_value) of the last group of level `d`
    /// (whose children are final but for the last), resuming the hash of
    /// its final children where the hasher can.
    #[inline]
    fn last_group_value(&mut self, d: usize, parent: u64) -> Hash {
        let level = &self.levels[d];
        let start = parent * N as u64;
        let k = (level.len() - start) as usize;
        let c = (start / CHUNK_LEN as u64) as usize;
        let off = (start % CHUNK_LEN as u64) as usize;
        if k == 1 || off + k > CHUNK_LEN {
            return self.group_value(d, parent);
        }
        if self.resume.len() <= d {
            self.resume.resize(d + 1, Resume::default());
        }
        let r = &mut self.resume[d];
        r.aim(d, parent);
        self.hasher
            .hash_children_resume(&level.chunk(c)[off..off + k], r)
    }

    /// The value of parent `parent` from its children at level `d`.
    #[inline]
    fn group_value(&self, d: usize, parent: u64) -> Hash {
        let level = &self.levels[d];
        let start = parent * N as u64;
        let end = (start + N as u64).min(level.len());
        let k = (end - start) as usize;
        if k == 1 {
            return level.get(start);
        }
        let c = (start / CHUNK_LEN as u64) as usize;
        let off = (start % CHUNK_LEN as u64) as usize;
        if off + k <= CHUNK_LEN {
            self.hasher.hash_children(&level.chunk(c)[off..off + k])
        } else {
            let mut buf = [[0u8; 32]; N];
            for (i, slot) in buf[..k].iter_mut().enumerate() {
                *slot = level.get(start + i as u64);
            }
            self.hasher.hash_children(&buf[..k])
        }
    }

    /// Appends `leaves` in order and returns the new root.
    ///
    /// Full groups of children are hashed in batches
    /// ([`Hasher::hash_groups`]), so large batches run at SIMD speed. Fails
    /// with [`Error::EmptyBatch`] for no leaves and [`Error::Capacity`] when
    /// they do not all fit; the tree is then unchanged.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let leaves: Vec<[u8; 32]> = (0..100u8).map(|i| [i; 32]).collect();
    /// let mut a = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let mut b = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// for l in &leaves {
    ///     a.insert(*l)?;
    /// }
    /// assert_eq!(b.insert_many(&leaves)?, a.root().unwrap());
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn insert_many(&mut self, leaves: &[Hash]) -> Result<Hash> {
        if leaves.is_empty() {
            return Err(Error::EmptyBatch);
        }
        self.check_room(leaves.len() as u64)?;
        self.check_leaves(leaves)?;
        let mut from = self.size();
        self.levels[0].write_from(from, leaves);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut d = 0;
        while self.levels[d].len() > 1 {
            let p_from = from / N as u64;
            self.parents_into(d, p_from, &mut scratch);
            if d + 1 == self.levels.len() {
                self.levels.push(Level::new());
            }
            self.levels[d + 1].write_from(p_from, &scratch);
            from = p_from;
            d += 1;
        }
        self.scratch = scratch;
        Ok(self.levels[d].get(0))
    }

    /// Fails with [`Error::InvalidLeaf`] for the first of `leaves` (to be
    /// appended) that the hasher refuses.
    #[inline]
    pub(crate) fn check_leaves(&self, leaves: &[Hash]) -> Result<()> {
        for (i, leaf) in leaves.iter().enumerate() {
            if let Err(reason) = self.hasher.check_leaf(leaf) {
                return Err(Error::InvalidLeaf {
                    index: self.size() + i as u64,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Computes parents `p_from..ceil(len_d / N)` of level `d` into `out`.
    fn parents_into(&self, d: usize, p_from: u64, out: &mut Vec<Hash>) {
        let level = &self.levels[d];
        let n = N as u64;
        let len = level.len();
        let p_to = len.div_ceil(n);
        let full_to = len / n; // parents below this have N children
        out.clear();
        out.resize((p_to - p_from) as usize, [0u8; 32]);
        let mut p = p_from;
        // Runs of full groups within one chunk, hashed below; a group that
        // straddles two chunks is hashed here.
        let parallel = self.hasher.parallel_groups().is_some();
        let mut runs: Vec<(&[Hash], &mut [Hash])> = Vec::new();
        let mut rest = &mut out[..];
        while p < full_to {
            let start = p * n;
            let c = (start / CHUNK_LEN as u64) as usize;
            let off = (start % CHUNK_LEN as u64) as usize;
            let chunk = level.chunk(c);
            let whole = ((chunk.len() - off) / N) as u64;
            let groups = whole.min(full_to - p);
            if groups > 0 {
                let (o, tail) = rest.split_at_mut(groups as usize);
                let children = &chunk[off..off + groups as usize * N];
                if parallel {
                    runs.push((children, o));
                } else {
                    self.hasher.hash_groups(children, N, o);
                }
                rest = tail;
                p += groups;
            } else {
                let (o, tail) = rest.split_at_mut(1);
                o[0] = self.group_value(d, p);
                rest = tail;
                p += 1;
            }
        }
        if p < p_to {
            rest[0] = self.group_value(d, p);
        }
        if parallel {
            self.hash_runs(runs);
        }
    }

    /// Hashes the runs of full groups of a hasher that asks for threads
    /// (see [`Hasher::parallel_groups`]), spread over the machine's cores
    /// when there are enough of them; the parents are the same either way.
    fn hash_runs(&self, runs: Vec<(&[Hash], &mut [Hash])>) {
        let total: usize = runs.iter().map(|(_, o)| o.len()).sum();
        let min = self.hasher.parallel_groups().unwrap_or(usize::MAX).max(1);
        self.hash_runs_on(runs, total, (total / min).min(cores()));
    }

    /// [`hash_runs`](Self::hash_runs) of `total` groups over `threads`
    /// threads.
    fn hash_runs_on(&self, runs: Vec<(&[Hash], &mut [Hash])>, total: usize, threads: usize) {
        if threads <= 1 {
            for (children, out) in runs {
                self.hasher.hash_groups(children, N, out);
            }
            return;
        }
        // Contiguous shares of about `total / threads` groups, splitting
        // runs where a share ends.
        let share = total.div_ceil(threads);
        let mut shares: Vec<Vec<(&[Hash], &mut [Hash])>> = vec![Vec::new()];
        let mut room = share;
        for (mut children, mut out) in runs {
            while !out.is_empty() {
                if room == 0 {
                    shares.push(Vec::new());
                    room = share;
                }
                let take = room.min(out.len());
                let (c, c_rest) = children.split_at(take * N);
                let (o, o_rest) = out.split_at_mut(take);
                shares.last_mut().expect("one share").push((c, o));
                children = c_rest;
                out = o_rest;
                room -= take;
            }
        }
        let hasher = &self.hasher;
        let work = |share: Vec<(&[Hash], &mut [Hash])>| {
            for (children, out) in share {
                hasher.hash_groups(children, N, out);
            }
        };
        let mut shares = shares.into_iter();
        let mine = shares.next().expect("one share");
        std::thread::scope(|s| {
            let mut here = vec![mine];
            for share in shares {
                // A thread the system refuses leaves its share to this one:
                // the level is computed whole either way.
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let started = std::thread::Builder::new().spawn_scoped(s, move || {
                    if let Ok(share) = rx.recv() {
                        work(share);
                    }
                });
                match started {
                    Ok(_) => tx.send(share).expect("the thread waits for its share"),
                    Err(_) => here.push(share),
                }
            }
            here.into_iter().for_each(work);
        });
    }

    /// Rewinds the tree to its first `size` leaves (`size <= self.size()`)
    /// and returns the root then (`None` for 0 leaves). O(depth × N)
    /// hashes (the last node of each level is recomputed) and, where a
    /// level loses sealed chunks, a copy of its chunk directory (O(size /
    /// 128) pointers). Snapshots taken before keep their leaves.
    ///
    /// Fails with [`Error::InvalidOldSize`] when `size` exceeds the tree's
    /// size, or [`Error::Corruption`] when a chunk it reads from a shard is
    /// damaged; the tree is then unchanged.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let then = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// tree.insert_many(&[[4; 32], [5; 32]])?;
    /// assert_eq!(tree.rewind(3)?, Some(then));
    /// assert_eq!(tree.size(), 3);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn rewind(&mut self, size: u64) -> Result<Option<Hash>> {
        if size > self.size() {
            return Err(Error::InvalidOldSize {
                old_size: size,
                size: self.size(),
            });
        }
        if size == self.size() {
            return Ok(self.root());
        }
        let mut levels = self.snapshot().prefix_levels(size, true)?;
        // The writer reads its frontier from memory only.
        for level in &mut levels {
            let len = level.len();
            let from = if len == 0 {
                0
            } else {
                (((len - 1) / N as u64 * N as u64) / CHUNK_LEN as u64) as usize
            };
            level.own_from(from.min(level.sealed()))?;
        }
        self.levels = levels;
        self.resume.clear();
        Ok(self.root())
    }

    /// An immutable view of the tree as it is now; O(depth), shares every
    /// chunk with the tree.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Arc::new(SnapshotInner {
            arity: N,
            levels: self.levels.clone(),
            hash: self.hash_fn.clone(),
        }))
    }
}

impl<H: Hasher, const N: usize, const MAX_DEPTH: usize> Clone for LeanImt<H, N, MAX_DEPTH> {
    /// An independent tree with the same leaves; shares every chunk, copies
    /// the chunk directories (O(size / 128)).
    fn clone(&self) -> Self {
        Self {
            hasher: self.hasher.clone(),
            levels: self.levels.iter().map(Level::fork).collect(),
            scratch: Vec::new(),
            resume: self.resume.clone(),
            hash_fn: self.hash_fn.clone(),
        }
    }
}

impl<H: Hasher + std::fmt::Debug, const N: usize, const MAX_DEPTH: usize> std::fmt::Debug
    for LeanImt<H, N, MAX_DEPTH>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanImt")
            .field("hasher", &self.hasher)
            .field("arity", &N)
            .field("max_depth", &MAX_DEPTH)
            .field("size", &self.size())
            .field("depth", &self.depth())
            .finish()
    }
}

struct SnapshotInner {
    arity: usize,
    levels: Vec<Level>,
    hash: HashFn,
}

/// An immutable view of a tree at one size.
///
/// Cheap to take (O(depth)) and to clone (one `Arc`), `Send + Sync`, and
/// never blocks the writer: inclusion and consistency proofs come from here.
#[derive(Clone)]
pub struct Snapshot(Arc<SnapshotInner>);

impl Snapshot {
    /// The tree's arity `N`.
    pub fn arity(&self) -> usize {
        self.0.arity
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.0.levels[0].len()
    }

    /// Depth: `ceil(log_N(size))`.
    pub fn depth(&self) -> usize {
        self.0.levels.len() - 1
    }

    /// The root, or `None` for an empty tree.
    pub fn root(&self) -> Option<Hash> {
        let top = self.0.levels.last()?;
        (top.len() == 1).then(|| top.get(0))
    }

    /// Leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash> {
        self.node(0, index)
    }

    /// Number of nodes at `level` (0 = leaves); 0 above the top.
    pub fn level_len(&self, level: usize) -> u64 {
        self.0.levels.get(level).map_or(0, Level::len)
    }

    /// Node `index` of `level` (0 = leaves).
    pub fn node(&self, level: usize, index: u64) -> Result<Hash> {
        let size = self.level_len(level);
        if index >= size {
            return Err(Error::IndexOutOfRange { index, size });
        }
        self.checked(level, index)
    }

    /// Node `index` of `level` (in range), its chunk checked first, a
    /// damaged internal chunk repaired from its children (invariant 9).
    #[inline]
    pub(crate) fn checked(&self, level: usize, index: u64) -> Result<Hash> {
        node_checked(&self.0.levels, &self.0.hash, self.0.arity, level, index)
    }

    /// Sealed chunk `c` of `level`, checked (repaired where it can be).
    pub(crate) fn checked_chunk(
        &self,
        level: usize,
        c: usize,
    ) -> Result<std::borrow::Cow<'_, [Hash]>> {
        let l = &self.0.levels[level];
        if c < l.sealed() {
            self.checked(level, (c * CHUNK_LEN) as u64)?;
        }
        l.try_chunk(c)
    }

    #[inline]
    pub(crate) fn level(&self, level: usize) -> &Level {
        &self.0.levels[level]
    }

    /// The tree of this snapshot's first `size` leaves (`size <=
    /// self.size()`) as a snapshot of its own: O(depth × N) hashes,
    /// sharing every chunk.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let then = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// tree.insert_many(&[[4; 32], [5; 32]])?;
    /// let old = tree.snapshot().prefix(3)?;
    /// assert_eq!((old.size(), old.root()), (3, Some(then)));
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn prefix(&self, size: u64) -> Result<Snapshot> {
        if size > self.size() {
            return Err(Error::InvalidOldSize {
                old_size: size,
                size: self.size(),
            });
        }
        if size == self.size() {
            return Ok(self.clone());
        }
        Ok(Snapshot(Arc::new(SnapshotInner {
            arity: self.0.arity,
            levels: self.prefix_levels(size, false)?,
            hash: self.0.hash.clone(),
        })))
    }

    /// The levels of the tree of the first `size` leaves: each level's
    /// prefix with its last node recomputed (see [`Level::prefix`]).
    pub(crate) fn prefix_levels(&self, size: u64, for_writer: bool) -> Result<Vec<Level>> {
        if size == 0 {
            return Ok(vec![Level::new()]);
        }
        let frontier = self.frontier_at(size)?;
        let n = self.0.arity as u64;
        let mut len = size;
        let mut levels = Vec::with_capacity(frontier.len());
        for (d, last) in frontier.iter().enumerate() {
            // Checked (and repaired where it can be) before it is copied.
            self.checked(d, len - 1)?;
            let mut level = self.0.levels[d].prefix(len, for_writer)?;
            level.set_last(*last);
            levels.push(level);
            len = len.div_ceil(n);
        }
        Ok(levels)
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("arity", &self.arity())
            .field("size", &self.size())
            .field("depth", &self.depth())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Blake3;

    /// The threaded batch path splits runs into shares the same way on any
    /// machine: forced to 2..=7 threads over runs of uneven lengths, each
    /// parent lands where the serial path puts it.
    #[test]
    fn threaded_shares_equal_the_serial_path() {
        let children: Vec<Hash> = (0..3 * 200u32)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        let t = LeanImt::<Blake3, 3, 32>::new(Blake3);
        let mut want = vec![[0u8; 32]; 200];
        Blake3.hash_groups(&children, 3, &mut want);
        for threads in 2..=7 {
            let mut out = vec![[0u8; 32]; 200];
            // Runs of 7, 1, 50 and 142 groups.
            let mut runs = Vec::new();
            let (mut c, mut o) = (&children[..], &mut out[..]);
            for len in [7, 1, 50, 142] {
                let (rc, cn) = c.split_at(len * 3);
                let (ro, on) = o.split_at_mut(len);
                runs.push((rc, ro));
                c = cn;
                o = on;
            }
            t.hash_runs_on(runs, 200, threads);
            assert_eq!(out, want, "{threads} threads");
        }
    }

    #[test]
    fn capacity_saturates() {
        assert_eq!(capacity_of(4, 3), 64);
        assert_eq!(capacity_of(2, 64), u64::MAX);
        assert_eq!(capacity_of(16, 40), u64::MAX);
    }

    #[test]
    fn full_tree_rejects_and_stays_unchanged() {
        let mut t = LeanImt::<Blake3, 2, 3>::new(Blake3);
        for i in 0..8u8 {
            t.insert([i; 32]).unwrap();
        }
        let root = t.root();
        assert!(matches!(
            t.insert([9; 32]),
            Err(Error::Capacity {
                size: 8,
                additional: 1,
                capacity: 8
            })
        ));
        let mut t2 = LeanImt::<Blake3, 2, 3>::new(Blake3);
        t2.insert_many(&[[0; 32]; 5]).unwrap();
        assert!(matches!(
            t2.insert_many(&[[1; 32]; 4]),
            Err(Error::Capacity { .. })
        ));
        assert_eq!(t2.size(), 5);
        assert!(matches!(t2.insert_many(&[]), Err(Error::EmptyBatch)));
        assert_eq!(t.root(), root);
        assert_eq!(t.size(), 8);
        assert_eq!(t.depth(), 3);
    }
}
