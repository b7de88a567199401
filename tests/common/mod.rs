//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ringtree::Hash;

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Leaf `i`: a fixed pseudo-random 32-byte value.
pub fn leaf(i: u64) -> Hash {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

pub fn leaves(range: std::ops::Range<u64>) -> Vec<Hash> {
    range.map(leaf).collect()
}

/// Lowercase hex, written independently of the `service` example's, so a
/// bug there shows in its test.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::new();
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The root by the definition, recomputed from all leaves: parents of groups
/// of 2+ children are BLAKE3 of the concatenation, single children lift.
pub fn naive_root(arity: usize, leaves: &[Hash]) -> Option<Hash> {
    let mut level = leaves.to_vec();
    if level.is_empty() {
        return None;
    }
    while level.len() > 1 {
        level = level
            .chunks(arity)
            .map(|g| {
                if g.len() == 1 {
                    g[0]
                } else {
                    *blake3::hash(g.as_flattened()).as_bytes()
                }
            })
            .collect();
    }
    Some(level[0])
}

/// A tree config on the simulated disk with small segments and buffer.
pub fn sim_config(sim: &ringtree::io::SimStorage, dir: &str) -> ringtree::Config {
    ringtree::Config::new(dir)
        .storage(std::sync::Arc::new(sim.clone()))
        .segment_size(64 << 10)
        .buffer_capacity(16 << 10)
}

/// Inverts bit `bit` of the byte at `at` of the file at `path`.
pub fn flip_bit(path: &std::path::Path, at: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = rw(path);
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
}

/// Changes each of the 64 bytes from `at` (fewer at the end) of the file
/// at `path`.
pub fn garble(path: &std::path::Path, at: u64, rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let f = rw(path);
    let len = f.metadata().unwrap().len();
    let mut b = vec![0u8; (len - at).min(64) as usize];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 1 + rng.below(255) as u8;
    }
    f.write_all_at(&b, at).unwrap();
}

/// The file at `path`, opened to read and write.
pub fn rw(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}
