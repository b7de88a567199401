//! Node hashing: the [`Hasher`] trait, its BLAKE3 implementation and,
//! behind features, Poseidon, Keccak-256 and SHA-256.
//!
//! This module owns the hashing rule of the tree (see the crate docs): a
//! parent of `2 <= k` children is the hash of the children's raw 32-byte
//! values concatenated, with no prefix, tag or length. It touches nothing
//! else.

use blake3::platform::Platform;

#[cfg(feature = "keccak")]
mod keccak;
#[cfg(feature = "poseidon")]
mod poseidon;
#[cfg(feature = "sha256")]
mod sha256;

#[cfg(feature = "keccak")]
pub use keccak::Keccak256;
#[cfg(feature = "poseidon")]
pub use poseidon::Poseidon;
#[cfg(feature = "sha256")]
pub use sha256::Sha256;

/// A 32-byte node value: a leaf as the caller gave it, or an internal node.
pub type Hash = [u8; 32];

/// How a tree turns a group of children into their parent.
///
/// Implementations must be deterministic and must agree between
/// [`hash_children`](Hasher::hash_children) and
/// [`hash_groups`](Hasher::hash_groups): the batch path is only a faster way
/// to compute the same values.
pub trait Hasher: Clone + Send + Sync + 'static {
    /// A stable name for this hash function and its parameters (1 to 64
    /// bytes, e.g. `"blake3"`), recorded in a tree's identity when it is
    /// created: reopening the tree with a hasher of another id is
    /// [`Error::ConfigMismatch`](crate::Error::ConfigMismatch). Two hashers
    /// with the same id must give the same parents.
    fn id(&self) -> &str;

    /// The largest arity this hasher has parameters for. A tree type whose
    /// arity `N` exceeds it does not compile (`LeanImt::new` and
    /// `Tree::open` check it at compile time). Unbounded by default.
    const MAX_ARITY: usize = usize::MAX;

    /// Refuses a leaf this hasher cannot take as it is (say, a value that
    /// is not a canonical field element), with the reason; a tree then
    /// fails the insert with [`Error::InvalidLeaf`](crate::Error::InvalidLeaf)
    /// and changes nothing. Every value is accepted by default.
    #[inline]
    fn check_leaf(&self, leaf: &Hash) -> std::result::Result<(), &'static str> {
        let _ = leaf;
        Ok(())
    }

    /// For a hash expensive enough that a batch insert should spread its
    /// full groups over the machine's cores: the fewest groups worth
    /// handing to one more thread. `None` (the default) keeps batches on
    /// the calling thread. The result is the same either way.
    #[inline]
    fn parallel_groups(&self) -> Option<usize> {
        None
    }

    /// Hashes the concatenation of `children` (at least two) into their
    /// parent.
    fn hash_children(&self, children: &[Hash]) -> Hash;

    /// Hashes `out.len()` independent groups of `arity` children each, laid
    /// out back to back in `children` (`children.len() == out.len() * arity`),
    /// writing group `i`'s parent to `out[i]`.
    ///
    /// The default is a loop over [`hash_children`](Hasher::hash_children);
    /// [`Blake3`] overrides it with BLAKE3's multi-input SIMD kernel.
    fn hash_groups(&self, children: &[Hash], arity: usize, out: &mut [Hash]) {
        debug_assert_eq!(children.len(), out.len() * arity);
        for (group, parent) in children.chunks_exact(arity).zip(out.iter_mut()) {
            *parent = self.hash_children(group);
        }
    }

    /// [`hash_children`](Hasher::hash_children) of a group that a tree
    /// recomputes as it grows: every child but the last is final, and
    /// `resume` holds what an earlier call saved about this same group
    /// (the caller resets it for another group). The default ignores it;
    /// [`Blake3`] resumes from the chaining value of the blocks of final
    /// children it absorbed before.
    #[doc(hidden)]
    #[inline]
    fn hash_children_resume(&self, children: &[Hash], resume: &mut Resume) -> Hash {
        let _ = resume;
        self.hash_children(children)
    }
}

/// Progress a [`Hasher`] saved over the final children of one group (see
/// `Hasher::hash_children_resume`). Opaque.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Resume {
    /// Which group: (level of its children, parent index).
    group: Option<(usize, u64)>,
    /// Whole 64-byte blocks absorbed into `cv`.
    blocks: usize,
    cv: [u32; 8],
}

impl Resume {
    /// Points this at `group`, forgetting what was saved about another.
    #[inline]
    pub(crate) fn aim(&mut self, level: usize, parent: u64) {
        if self.group != Some((level, parent)) {
            *self = Resume {
                group: Some((level, parent)),
                blocks: 0,
                cv: IV,
            };
        }
    }
}

/// BLAKE3, the default hasher: byte-identical to `blake3::hash` of the
/// concatenated children.
///
/// Single parents are hashed by driving BLAKE3's compression function
/// directly (a parent of at most 32 children is one BLAKE3 chunk); batches of
/// full groups whose byte length is a multiple of 64 go through the
/// multi-input SIMD kernel (`blake3::platform::Platform::hash_many`), which
/// hashes up to 16 groups at once on AVX-512.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blake3;

// BLAKE3 constants (from the BLAKE3 specification, section 2.1 and 2.2).
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const ROOT: u8 = 1 << 3;
const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;

fn platform() -> Platform {
    use std::sync::OnceLock;
    static PLATFORM: OnceLock<Platform> = OnceLock::new();
    *PLATFORM.get_or_init(Platform::detect)
}

fn words_to_hash(cv: &[u32; 8]) -> Hash {
    let mut out = [0u8; 32];
    for (dst, w) in out.chunks_exact_mut(4).zip(cv) {
        dst.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// BLAKE3 of a message of at most one chunk (1 KiB), as root output.
fn hash_one_chunk(platform: Platform, bytes: &[u8]) -> Hash {
    debug_assert!(!bytes.is_empty() && bytes.len() <= CHUNK_LEN);
    let mut cv = IV;
    compress_blocks(platform, &mut cv, bytes, 0, |_, _| {});
    words_to_hash(&cv)
}

/// Compresses blocks `first..` of the one-chunk message `bytes` into `cv`
/// (which holds the chaining value after blocks `..first`), the last as
/// root output; `after(i, cv)` sees the chaining value after each block
/// but the last.
fn compress_blocks(
    platform: Platform,
    cv: &mut [u32; 8],
    bytes: &[u8],
    first: usize,
    mut after: impl FnMut(usize, &[u32; 8]),
) {
    let blocks = bytes.len().div_ceil(BLOCK_LEN);
    for i in first..blocks {
        let block = &bytes[i * BLOCK_LEN..((i + 1) * BLOCK_LEN).min(bytes.len())];
        let mut flags = 0;
        if i == 0 {
            flags |= CHUNK_START;
        }
        if i + 1 == blocks {
            flags |= CHUNK_END | ROOT;
        }
        let mut buf = [0u8; BLOCK_LEN];
        buf[..block.len()].copy_from_slice(block);
        // `block.len() <= 64` always fits a u8.
        platform.compress_in_place(cv, &buf, block.len() as u8, 0, flags);
        if i + 1 < blocks {
            after(i, cv);
        }
    }
}

/// Runs `hash_many` over groups of exactly `L` bytes each.
fn hash_many_fixed<const L: usize>(platform: Platform, bytes: &[u8], out: &mut [Hash]) {
    // At most 16 inputs per call, the widest SIMD degree BLAKE3 has.
    const BATCH: usize = 16;
    let groups: &[[u8; L]] = {
        let (groups, rest) = bytes.as_chunks::<L>();
        debug_assert!(rest.is_empty());
        groups
    };
    let mut refs: [&[u8; L]; BATCH] = [&groups[0]; BATCH];
    let mut cvs = [0u8; 32 * BATCH];
    for (gs, outs) in groups.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        for (r, g) in refs.iter_mut().zip(gs) {
            *r = g;
        }
        let n = gs.len();
        platform.hash_many(
            &refs[..n],
            &IV,
            0,
            blake3::IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END | ROOT,
            &mut cvs[..32 * n],
        );
        for (o, cv) in outs.iter_mut().zip(cvs.chunks_exact(32)) {
            o.copy_from_slice(cv);
        }
    }
}

/// [`hash_one_chunk`] resuming from `resume`'s saved blocks, saving the
/// blocks that hold only final children (all but the last).
fn hash_one_chunk_resume(platform: Platform, children: &[Hash], resume: &mut Resume) -> Hash {
    let bytes = children.as_flattened();
    let blocks = bytes.len().div_ceil(BLOCK_LEN);
    // Blocks made of final children only, leaving the last block out
    // (it takes the end flags).
    let keep = ((children.len() - 1) * 32 / BLOCK_LEN).min(blocks - 1);
    if resume.blocks > keep {
        resume.blocks = 0;
        resume.cv = IV;
    }
    let mut cv = resume.cv;
    compress_blocks(platform, &mut cv, bytes, resume.blocks, |i, cv| {
        if i + 1 == keep {
            resume.cv = *cv;
            resume.blocks = keep;
        }
    });
    words_to_hash(&cv)
}

impl Hasher for Blake3 {
    fn id(&self) -> &str {
        "blake3"
    }

    #[inline]
    fn hash_children_resume(&self, children: &[Hash], resume: &mut Resume) -> Hash {
        if children.len() * 32 <= CHUNK_LEN && resume.group.is_some() {
            hash_one_chunk_resume(platform(), children, resume)
        } else {
            self.hash_children(children)
        }
    }

    #[inline]
    fn hash_children(&self, children: &[Hash]) -> Hash {
        let bytes = children.as_flattened();
        if !bytes.is_empty() && bytes.len() <= CHUNK_LEN {
            hash_one_chunk(platform(), bytes)
        } else {
            *blake3::hash(bytes).as_bytes()
        }
    }

    fn hash_groups(&self, children: &[Hash], arity: usize, out: &mut [Hash]) {
        debug_assert_eq!(children.len(), out.len() * arity);
        if out.is_empty() {
            return;
        }
        let p = platform();
        let bytes = children.as_flattened();
        macro_rules! dispatch {
            ($($arity:literal),*) => {
                match arity {
                    $($arity => hash_many_fixed::<{ 32 * $arity }>(p, bytes, out),)*
                    _ => {
                        for (group, parent) in children.chunks_exact(arity).zip(out.iter_mut()) {
                            *parent = self.hash_children(group);
                        }
                    }
                }
            };
        }
        // Even arities up to 32 make whole 64-byte blocks within one chunk.
        dispatch!(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u64) -> Hash {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn scalar_matches_blake3_for_every_small_length() {
        for k in 0..=40 {
            let children: Vec<Hash> = (0..k).map(node).collect();
            let expect = *blake3::hash(children.as_flattened()).as_bytes();
            assert_eq!(Blake3.hash_children(&children), expect, "k = {k}");
        }
    }

    /// A group growing one child at a time, its last child rewritten
    /// between appends, hashed with a saved prefix, always equals BLAKE3
    /// of the children; and a resume aimed at another group starts over.
    #[test]
    fn resumed_groups_match_blake3() {
        for arity in [2usize, 3, 4, 5, 8, 16, 32] {
            let mut r = Resume::default();
            let mut group: Vec<Hash> = Vec::new();
            for parent in 0..3u64 {
                r.aim(0, parent);
                group.clear();
                for k in 0..arity as u64 {
                    group.push(node(1000 * parent + k));
                    for rewrite in 0..3u64 {
                        *group.last_mut().unwrap() = node(1000 * parent + k + 100 * rewrite);
                        if group.len() < 2 {
                            continue;
                        }
                        let expect = *blake3::hash(group.as_flattened()).as_bytes();
                        let got = Blake3.hash_children_resume(&group, &mut r);
                        assert_eq!(got, expect, "arity {arity} parent {parent} k {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn batch_matches_scalar_for_every_arity() {
        for arity in 2..=33 {
            for groups in [1usize, 3, 15, 16, 17, 40] {
                let children: Vec<Hash> = (0..(arity * groups) as u64).map(node).collect();
                let mut out = vec![[0u8; 32]; groups];
                Blake3.hash_groups(&children, arity, &mut out);
                for (g, o) in children.chunks_exact(arity).zip(&out) {
                    assert_eq!(*o, *blake3::hash(g.as_flattened()).as_bytes());
                }
            }
        }
    }
}
