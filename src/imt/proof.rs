//! Inclusion and consistency proofs: generation from a [`Snapshot`], strict
//! verification, and a stable byte encoding.
//!
//! Owns the proof formats and the verification rule; reads a snapshot's
//! nodes and nothing else.
//!
//! **Shape is never taken from the proof.** The tree hashes children with no
//! domain separation, so an internal node can pose as a leaf of a shallower
//! tree if a verifier trusts the shape a proof claims. The verifier here
//! derives, from `(leaf_index, tree_size)` alone, how many siblings each level
//! has and where the path node sits among them, and rejects any proof that
//! does not match. A tree's root does not commit to its size, so the size
//! must be trusted too: [`Proof::verify_at`] and
//! [`ConsistencyProof::verify_at`] check it against the size the caller
//! trusts (e.g. from the same signed tree head as the root); `verify` trusts
//! the size recorded in the proof. Likewise the arity is part of what a proof
//! states (a two-leaf tree has the same root for every arity): check
//! [`Proof::arity`] against the tree's when it matters.

use crate::error::{Error, Result};
use crate::hash::{Hash, Hasher};
use crate::imt::Snapshot;

const PROOF_MAGIC: [u8; 4] = *b"RTIP";
const CONSISTENCY_MAGIC: [u8; 4] = *b"RTCP";
const PROOF_VERSION: u8 = 1;
/// magic 4 + version 1 + arity 4 + index/old size 8 + size 8 + leaf 32 + count 4
const HEADER_LEN: usize = 4 + 1 + 4 + 8 + 8 + 32 + 4;

/// One level of a path: the group the path node sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    /// First node of the group.
    start: u64,
    /// Children in the group (1 = lifted, no hash).
    len: usize,
    /// Position of the path node in the group.
    pos: usize,
}

/// The path of node `index` up a tree whose level 0 has `len` nodes: one
/// [`Step`] per level below the root.
fn path(arity: usize, mut index: u64, mut len: u64) -> impl Iterator<Item = Step> {
    let n = arity as u64;
    std::iter::from_fn(move || {
        if len <= 1 {
            return None;
        }
        let group = index / n;
        let start = group * n;
        let step = Step {
            start,
            len: (len - start).min(n) as usize,
            pos: (index - start) as usize,
        };
        index = group;
        len = len.div_ceil(n);
        Some(step)
    })
}

/// Siblings along the path of leaf `index` in a tree of `size` leaves: what
/// an inclusion proof of `index`, or a consistency proof from `index + 1`
/// leaves, carries.
fn sibling_count(arity: usize, index: u64, size: u64) -> usize {
    path(arity, index, size).map(|s| s.len - 1).sum()
}

/// The members of one group while verifying: on the stack up to 16, the
/// usual arities; grows on the heap only as siblings actually arrive, so an
/// untrusted arity never sizes an allocation.
struct GroupBuf {
    stack: [Hash; 16],
    len: usize,
    heap: Vec<Hash>,
}

impl GroupBuf {
    fn new() -> Self {
        Self {
            stack: [[0; 32]; 16],
            len: 0,
            heap: Vec::new(),
        }
    }
    fn clear(&mut self) {
        self.len = 0;
        self.heap.clear();
    }
    fn push(&mut self, h: Hash) {
        if self.len < 16 {
            self.stack[self.len] = h;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack);
            }
            self.heap.push(h);
        }
        self.len += 1;
    }
    fn pop(&mut self) {
        self.len -= 1;
        if self.len >= 16 {
            self.heap.pop();
        }
        if self.len == 16 {
            self.heap.clear();
        }
    }
    fn as_slice(&self) -> &[Hash] {
        if self.len <= 16 {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}

fn check_arity(arity: usize) -> Result<()> {
    if arity < 2 || arity > u32::MAX as usize {
        return Err(Error::InvalidProof("arity must be at least 2"));
    }
    Ok(())
}

/// An inclusion proof in the shape of zk-kit's `LeanIMTMerkleProof`
/// (`@zk-kit/lean-imt`, binary trees): what zk-kit's `LeanIMT.verifyProof`
/// and Semaphore's circuits take. Made by [`Proof::to_zk_kit`], read back by
/// [`Proof::from_zk_kit`].
///
/// Values are 32-byte big-endian numbers (zk-kit's bigints). `index` is
/// zk-kit's *path*, not the leaf index: bit `i` is set when the path node
/// is the right child at the `i`-th level that has a sibling (levels where
/// the node is lifted alone contribute no sibling and no bit). zk-kit reads
/// it with 32-bit shifts, so proofs of more than 32 siblings are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkKitProof {
    /// The root the proof leads to.
    pub root: Hash,
    /// The proved leaf.
    pub leaf: Hash,
    /// The direction bits of the levels with a sibling, lowest level first.
    pub index: u64,
    /// The siblings, lowest level first.
    pub siblings: Vec<Hash>,
}

/// An inclusion proof: leaf `leaf_index` of the tree of `tree_size` leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    arity: usize,
    leaf_index: u64,
    tree_size: u64,
    leaf: Hash,
    /// Per level from the leaves up, the other members of the path node's
    /// group in order (none where the group has one member).
    siblings: Vec<Hash>,
}

impl Proof {
    /// The tree's arity.
    pub fn arity(&self) -> usize {
        self.arity
    }
    /// Index of the proved leaf.
    pub fn leaf_index(&self) -> u64 {
        self.leaf_index
    }
    /// Size of the tree the proof is for.
    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }
    /// The proved leaf's value.
    pub fn leaf(&self) -> Hash {
        self.leaf
    }
    /// The sibling hashes, level by level from the leaves up.
    pub fn siblings(&self) -> &[Hash] {
        &self.siblings
    }

    /// This proof (of a binary tree) in zk-kit's shape, leading to `root`
    /// (the root of the tree of [`tree_size`](Self::tree_size) leaves).
    /// Fails with [`Error::InvalidProof`] for another arity, and for more
    /// than 32 siblings (which zk-kit's 32-bit index cannot address).
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt, Proof};
    ///
    /// let mut tree = LeanImt::<Blake3, 2, 32>::new(Blake3);
    /// let leaves: Vec<[u8; 32]> = (0..13u8).map(|i| [i; 32]).collect();
    /// let root = tree.insert_many(&leaves)?;
    /// let proof = tree.snapshot().proof(12)?;
    /// let zk = proof.to_zk_kit(root)?;
    /// // Leaf 12 of 13 is lifted alone past the two lowest levels.
    /// assert_eq!((zk.index, zk.siblings.len()), (3, 2));
    /// assert_eq!(Proof::from_zk_kit(&zk, 13)?, proof);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn to_zk_kit(&self, root: Hash) -> Result<ZkKitProof> {
        if self.arity != 2 {
            return Err(Error::InvalidProof(
                "zk-kit's LeanIMT proofs are of binary trees (arity 2)",
            ));
        }
        if self.siblings.len() > 32 {
            return Err(Error::InvalidProof(
                "zk-kit's path index has 32 bits: at most 32 siblings",
            ));
        }
        let mut index = 0u64;
        let mut bit = 0;
        for step in path(2, self.leaf_index, self.tree_size) {
            if step.len == 2 {
                if step.pos == 1 {
                    index |= 1 << bit;
                }
                bit += 1;
            }
        }
        Ok(ZkKitProof {
            root,
            leaf: self.leaf,
            index,
            siblings: self.siblings.clone(),
        })
    }

    /// The proof zk-kit's `proof` stands for in a binary tree of
    /// `tree_size` leaves: the leaf index is read back from the path bits,
    /// which the size makes unambiguous. Fails with
    /// [`Error::InvalidProof`] when the bits or the number of siblings do
    /// not fit a tree of that size (bits zk-kit would ignore included). The
    /// root is not checked here: verify the result against the root you
    /// trust with [`verify_at`](Self::verify_at).
    pub fn from_zk_kit(proof: &ZkKitProof, tree_size: u64) -> Result<Proof> {
        if tree_size == 0 {
            return Err(Error::InvalidProof("a tree of no leaves has no proofs"));
        }
        let mut lens = vec![tree_size];
        while let Some(&len) = lens.last().filter(|&&l| l > 1) {
            lens.push(len.div_ceil(2));
        }
        let k = proof.siblings.len();
        if k > 64 || (k < 64 && proof.index >> k != 0) {
            return Err(Error::InvalidProof(
                "the path index has more bits than the proof has siblings",
            ));
        }
        // From the root down: a node with two children takes the next bit
        // (the highest bits are the highest levels); a node with one has
        // its only child on the left and uses no bit.
        let mut index = 0u64;
        let mut used = 0;
        for &len in lens[..lens.len() - 1].iter().rev() {
            let left = 2 * index;
            index = if left + 1 < len {
                if used == k {
                    return Err(Error::InvalidProof(
                        "fewer siblings than the path in a tree of this size",
                    ));
                }
                used += 1;
                left + (proof.index >> (k - used) & 1)
            } else {
                left
            };
        }
        if used != k {
            return Err(Error::InvalidProof(
                "more siblings than the path in a tree of this size",
            ));
        }
        Ok(Proof {
            arity: 2,
            leaf_index: index,
            tree_size,
            leaf: proof.leaf,
            siblings: proof.siblings.clone(),
        })
    }

    /// Checks that the proof leads from its leaf to `trusted_root` along the
    /// path its `(leaf_index, tree_size)` dictates.
    ///
    /// The size is the proof's own claim; when you know the size the root
    /// belongs to, use [`verify_at`](Self::verify_at).
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let root = tree.insert_many(&[[1; 32], [2; 32], [3; 32], [4; 32], [5; 32]])?;
    /// let proof = tree.snapshot().proof(2)?;
    /// proof.verify(&Blake3, &root)?;
    /// assert!(proof.verify(&Blake3, &[0; 32]).is_err()); // another root
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn verify<H: Hasher>(&self, hasher: &H, trusted_root: &Hash) -> Result<()> {
        check_arity(self.arity)?;
        if self.tree_size == 0 || self.leaf_index >= self.tree_size {
            return Err(Error::InvalidProof("leaf index outside the tree"));
        }
        let mut sibs = self.siblings.iter();
        let mut cur = self.leaf;
        let mut group = GroupBuf::new();
        for step in path(self.arity, self.leaf_index, self.tree_size) {
            if step.len == 1 {
                continue;
            }
            group.clear();
            for i in 0..step.len {
                if i == step.pos {
                    group.push(cur);
                } else {
                    group.push(
                        *sibs
                            .next()
                            .ok_or(Error::InvalidProof("too few siblings for the tree's shape"))?,
                    );
                }
            }
            cur = hasher.hash_children(group.as_slice());
        }
        if sibs.next().is_some() {
            return Err(Error::InvalidProof(
                "too many siblings for the tree's shape",
            ));
        }
        if &cur != trusted_root {
            return Err(Error::InvalidProof("root mismatch"));
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and checks that the proof is for a tree of
    /// `trusted_size` leaves.
    pub fn verify_at<H: Hasher>(
        &self,
        hasher: &H,
        trusted_root: &Hash,
        trusted_size: u64,
    ) -> Result<()> {
        if self.tree_size != trusted_size {
            return Err(Error::InvalidProof(
                "tree size differs from the trusted size",
            ));
        }
        self.verify(hasher, trusted_root)
    }

    /// The stable encoding (little-endian):
    /// `"RTIP" | version u8 = 1 | arity u32 | leaf_index u64 | tree_size u64 |
    /// leaf [32] | sibling count u32 | siblings [32] ...`.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt, Proof};
    ///
    /// let mut tree = LeanImt::<Blake3, 2, 32>::new(Blake3);
    /// let root = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// let bytes = tree.snapshot().proof(0)?.to_bytes();
    /// // ... sent over the wire ...
    /// Proof::from_bytes(&bytes)?.verify_at(&Blake3, &root, 3)?;
    /// assert!(Proof::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            PROOF_MAGIC,
            self.arity,
            self.leaf_index,
            self.tree_size,
            &self.leaf,
            &self.siblings,
        )
    }

    /// Decodes [`to_bytes`](Self::to_bytes) output; rejects a wrong magic,
    /// version, arity, index, length or a sibling count that does not match
    /// the shape `(leaf_index, tree_size)` dictates.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let d = decode(PROOF_MAGIC, "inclusion proof", bytes)?;
        if d.a >= d.b {
            return Err(decode_err(
                "inclusion proof",
                9,
                format!("leaf index {} not below tree size {}", d.a, d.b),
            ));
        }
        let expect = sibling_count(d.arity, d.a, d.b);
        if d.siblings.len() != expect {
            return Err(decode_err(
                "inclusion proof",
                HEADER_LEN - 4,
                format!("{} siblings, the shape needs {expect}", d.siblings.len()),
            ));
        }
        Ok(Self {
            arity: d.arity,
            leaf_index: d.a,
            tree_size: d.b,
            leaf: d.leaf,
            siblings: d.siblings,
        })
    }
}

/// A consistency proof: the tree of `old_size` leaves is a prefix of the tree
/// of `new_size` leaves.
///
/// It carries the last old leaf and, along that leaf's path in the new tree,
/// every other member of each group: the ones left of the path (shared by
/// both trees) and the ones right of it (new). From these the verifier
/// recomputes both roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    arity: usize,
    old_size: u64,
    new_size: u64,
    last_leaf: Hash,
    siblings: Vec<Hash>,
}

impl ConsistencyProof {
    /// The tree's arity.
    pub fn arity(&self) -> usize {
        self.arity
    }
    /// Size of the older tree.
    pub fn old_size(&self) -> u64 {
        self.old_size
    }
    /// Size of the newer tree.
    pub fn new_size(&self) -> u64 {
        self.new_size
    }

    /// Checks that the tree with root `old_root` of `old_size()` leaves is a
    /// prefix of the tree with root `new_root` of `new_size()` leaves.
    pub fn verify<H: Hasher>(&self, hasher: &H, old_root: &Hash, new_root: &Hash) -> Result<()> {
        check_arity(self.arity)?;
        if self.old_size == 0 || self.old_size > self.new_size {
            return Err(Error::InvalidProof("old size must be in 1..=new size"));
        }
        let n = self.arity as u64;
        let mut sibs = self.siblings.iter();
        let mut old = self.last_leaf;
        let mut new = self.last_leaf;
        let mut old_len = self.old_size;
        let mut group = GroupBuf::new();
        let too_few = || Error::InvalidProof("too few siblings for the trees' shapes");
        for step in path(self.arity, self.old_size - 1, self.new_size) {
            if step.len > 1 {
                group.clear();
                for _ in 0..step.pos {
                    group.push(*sibs.next().ok_or_else(too_few)?);
                }
                if old_len > 1 && step.pos > 0 {
                    // In the old tree the path node is the last of its group.
                    group.push(old);
                    old = hasher.hash_children(group.as_slice());
                    group.pop();
                }
                group.push(new);
                for _ in step.pos + 1..step.len {
                    group.push(*sibs.next().ok_or_else(too_few)?);
                }
                new = hasher.hash_children(group.as_slice());
            }
            old_len = old_len.div_ceil(n);
        }
        if sibs.next().is_some() {
            return Err(Error::InvalidProof(
                "too many siblings for the trees' shapes",
            ));
        }
        if &old != old_root {
            return Err(Error::InvalidProof("old root mismatch"));
        }
        if &new != new_root {
            return Err(Error::InvalidProof("new root mismatch"));
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and checks both sizes against the ones the
    /// caller trusts.
    pub fn verify_at<H: Hasher>(
        &self,
        hasher: &H,
        old_root: &Hash,
        old_size: u64,
        new_root: &Hash,
        new_size: u64,
    ) -> Result<()> {
        if self.old_size != old_size || self.new_size != new_size {
            return Err(Error::InvalidProof(
                "tree sizes differ from the trusted sizes",
            ));
        }
        self.verify(hasher, old_root, new_root)
    }

    /// The stable encoding (little-endian):
    /// `"RTCP" | version u8 = 1 | arity u32 | old_size u64 | new_size u64 |
    /// last old leaf [32] | sibling count u32 | siblings [32] ...`.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            CONSISTENCY_MAGIC,
            self.arity,
            self.old_size,
            self.new_size,
            &self.last_leaf,
            &self.siblings,
        )
    }

    /// Decodes [`to_bytes`](Self::to_bytes) output, with the same checks as
    /// [`Proof::from_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let d = decode(CONSISTENCY_MAGIC, "consistency proof", bytes)?;
        if d.a == 0 || d.a > d.b {
            return Err(decode_err(
                "consistency proof",
                9,
                format!("old size {} not in 1..={}", d.a, d.b),
            ));
        }
        let expect = sibling_count(d.arity, d.a - 1, d.b);
        if d.siblings.len() != expect {
            return Err(decode_err(
                "consistency proof",
                HEADER_LEN - 4,
                format!("{} siblings, the shape needs {expect}", d.siblings.len()),
            ));
        }
        Ok(Self {
            arity: d.arity,
            old_size: d.a,
            new_size: d.b,
            last_leaf: d.leaf,
            siblings: d.siblings,
        })
    }
}

fn encode(magic: [u8; 4], arity: usize, a: u64, b: u64, leaf: &Hash, siblings: &[Hash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 32 * siblings.len());
    out.extend_from_slice(&magic);
    out.push(PROOF_VERSION);
    out.extend_from_slice(&(arity as u32).to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(leaf);
    out.extend_from_slice(&(siblings.len() as u32).to_le_bytes());
    out.extend_from_slice(siblings.as_flattened());
    out
}

struct Decoded {
    arity: usize,
    a: u64,
    b: u64,
    leaf: Hash,
    siblings: Vec<Hash>,
}

fn decode_err(what: &'static str, offset: usize, reason: String) -> Error {
    Error::Decode {
        what,
        offset,
        reason,
    }
}

fn decode(magic: [u8; 4], what: &'static str, bytes: &[u8]) -> Result<Decoded> {
    if bytes.len() < HEADER_LEN {
        return Err(decode_err(
            what,
            bytes.len(),
            format!("{} bytes, the header needs {HEADER_LEN}", bytes.len()),
        ));
    }
    if bytes[..4] != magic {
        return Err(decode_err(what, 0, format!("bad magic {:?}", &bytes[..4])));
    }
    if bytes[4] != PROOF_VERSION {
        return Err(decode_err(what, 4, format!("unknown version {}", bytes[4])));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let arity = u32_at(5) as usize;
    if arity < 2 {
        return Err(decode_err(
            what,
            5,
            format!("arity {arity}, must be at least 2"),
        ));
    }
    let (a, b) = (u64_at(9), u64_at(17));
    let leaf: Hash = bytes[25..57].try_into().expect("32 bytes");
    let count = u32_at(57) as usize;
    let body = &bytes[HEADER_LEN..];
    if body.len() != count.saturating_mul(32) {
        return Err(decode_err(
            what,
            HEADER_LEN,
            format!(
                "{count} siblings need {} bytes, found {}",
                count.saturating_mul(32),
                body.len()
            ),
        ));
    }
    let siblings = body.as_chunks::<32>().0.to_vec();
    Ok(Decoded {
        arity,
        a,
        b,
        leaf,
        siblings,
    })
}

impl Snapshot {
    /// Every other member of each group along leaf `index`'s path.
    fn path_siblings(&self, index: u64) -> Result<Vec<Hash>> {
        let size = self.size();
        let mut siblings = Vec::with_capacity(sibling_count(self.arity(), index, size));
        for (d, step) in path(self.arity(), index, size).enumerate() {
            for i in (0..step.len).filter(|&i| i != step.pos) {
                siblings.push(self.checked(d, step.start + i as u64)?);
            }
        }
        Ok(siblings)
    }

    /// An inclusion proof of leaf `index`.
    pub fn proof(&self, index: u64) -> Result<Proof> {
        let size = self.size();
        if index >= size {
            return Err(Error::IndexOutOfRange { index, size });
        }
        Ok(Proof {
            arity: self.arity(),
            leaf_index: index,
            tree_size: size,
            leaf: self.checked(0, index)?,
            siblings: self.path_siblings(index)?,
        })
    }

    /// The last node of each level of the tree of this snapshot's first
    /// `size` leaves (`1 <= size <= self.size()`), from the leaves up to its
    /// root. Every other node of that tree is a node of this one (its
    /// group was already whole), so only these are hashed: O(depth × N).
    pub(crate) fn frontier_at(&self, size: u64) -> Result<Vec<Hash>> {
        let n = self.arity() as u64;
        let mut frontier = vec![self.checked(0, size - 1)?];
        let mut children = Vec::with_capacity(self.arity());
        let mut len = size;
        let mut d = 0;
        while len > 1 {
            let parent_len = len.div_ceil(n);
            let start = (parent_len - 1) * n;
            let last = frontier[d];
            let value = if len - start == 1 {
                last
            } else {
                children.clear();
                for i in start..len - 1 {
                    children.push(self.checked(d, i)?);
                }
                children.push(last);
                (self.0.hash)(&children)
            };
            frontier.push(value);
            len = parent_len;
            d += 1;
        }
        Ok(frontier)
    }

    fn check_older_size(&self, size: u64) -> Result<()> {
        if size == 0 || size > self.size() {
            return Err(Error::InvalidOldSize {
                old_size: size,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// The root the tree had when it held its first `size` leaves
    /// (`1 <= size <= self.size()`): O(depth × N) hashes, no scan of the
    /// leaves.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let then = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// tree.insert_many(&[[4; 32], [5; 32]])?;
    /// assert_eq!(tree.snapshot().root_at(3)?, then);
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        self.check_older_size(size)?;
        Ok(*self.frontier_at(size)?.last().expect("one level at least"))
    }

    /// An inclusion proof of leaf `index` in the tree of the first `size`
    /// leaves (`index < size <= self.size()`), which verifies with
    /// [`Proof::verify_at`] against [`root_at(size)`](Self::root_at).
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 2, 32>::new(Blake3);
    /// let then = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// tree.insert_many(&[[4; 32], [5; 32]])?;
    /// let proof = tree.snapshot().proof_at(2, 3)?;
    /// proof.verify_at(&Blake3, &then, 3)?;
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn proof_at(&self, index: u64, size: u64) -> Result<Proof> {
        self.check_older_size(size)?;
        if index >= size {
            return Err(Error::IndexOutOfRange { index, size });
        }
        let frontier = self.frontier_at(size)?;
        let n = self.arity() as u64;
        let mut siblings = Vec::with_capacity(sibling_count(self.arity(), index, size));
        let mut len = size;
        for (d, step) in path(self.arity(), index, size).enumerate() {
            for i in (0..step.len).filter(|&i| i != step.pos) {
                let at = step.start + i as u64;
                siblings.push(if at == len - 1 {
                    frontier[d]
                } else {
                    self.checked(d, at)?
                });
            }
            len = len.div_ceil(n);
        }
        Ok(Proof {
            arity: self.arity(),
            leaf_index: index,
            tree_size: size,
            leaf: self.checked(0, index)?,
            siblings,
        })
    }

    /// The proof of the same leaf as `old` (a proof made from this tree at
    /// an older or the same size) at this snapshot's size. Fails with
    /// [`Error::InvalidProof`] when `old` is not a proof of this tree's
    /// leaf at its size (another arity, leaf or sibling), and with
    /// [`Error::InvalidOldSize`] when its size exceeds this snapshot's.
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 2, 32>::new(Blake3);
    /// tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// let old = tree.snapshot().proof(1)?;
    /// let root = tree.insert_many(&[[4; 32], [5; 32]])?;
    /// let new = tree.snapshot().update_proof(&old)?;
    /// new.verify_at(&Blake3, &root, 5)?;
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn update_proof(&self, old: &Proof) -> Result<Proof> {
        if old.arity != self.arity() {
            return Err(Error::InvalidProof(
                "the proof is of a tree of another arity",
            ));
        }
        // Proofs are canonical: the one this tree gives at that size is
        // the only one of its leaf there.
        if &self.proof_at(old.leaf_index, old.tree_size)? != old {
            return Err(Error::InvalidProof(
                "the proof is not of this tree at its size",
            ));
        }
        self.proof(old.leaf_index)
    }

    /// A proof that the tree of its first `old_size` leaves is a prefix of
    /// this one (`1 <= old_size <= size`).
    ///
    /// ```
    /// use ringtree::{Blake3, LeanImt};
    ///
    /// let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    /// let old_root = tree.insert_many(&[[1; 32], [2; 32], [3; 32]])?;
    /// let new_root = tree.insert_many(&[[4; 32], [5; 32]])?;
    /// let proof = tree.snapshot().consistency_proof(3)?;
    /// proof.verify_at(&Blake3, &old_root, 3, &new_root, 5)?;
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub fn consistency_proof(&self, old_size: u64) -> Result<ConsistencyProof> {
        let size = self.size();
        if old_size == 0 || old_size > size {
            return Err(Error::InvalidOldSize { old_size, size });
        }
        Ok(ConsistencyProof {
            arity: self.arity(),
            old_size,
            new_size: size,
            last_leaf: self.checked(0, old_size - 1)?,
            siblings: self.path_siblings(old_size - 1)?,
        })
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    //! Proofs serialize as their stable byte encoding: a hex string in
    //! human-readable formats, bytes otherwise.
    use super::{ConsistencyProof, Proof};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }

    fn ser<S: Serializer>(bytes: Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&to_hex(&bytes))
        } else {
            s.serialize_bytes(&bytes)
        }
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            from_hex(&s).ok_or_else(|| D::Error::custom("proof: invalid hex"))
        } else {
            Vec::<u8>::deserialize(d)
        }
    }

    impl Serialize for Proof {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            ser(self.to_bytes(), s)
        }
    }
    impl<'de> Deserialize<'de> for Proof {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Proof::from_bytes(&de(d)?).map_err(D::Error::custom)
        }
    }
    impl Serialize for ConsistencyProof {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            ser(self.to_bytes(), s)
        }
    }
    impl<'de> Deserialize<'de> for ConsistencyProof {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            ConsistencyProof::from_bytes(&de(d)?).map_err(D::Error::custom)
        }
    }
}
