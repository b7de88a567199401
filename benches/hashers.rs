//! `insert_many` of many leaves per hasher, on one thread and over every
//! core, against the limit: the underlying implementation's cost of one
//! parent measured alone in the same run, times the parents a batch needs.
//!
//! `cargo bench --all-features --bench hashers` (`RINGTREE_HASH_LEAVES`,
//! default 1,000,000).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ringtree::{Hash, Hasher, Keccak256, LeanImt, Poseidon, Sha256};

/// `H` with its batches kept on the calling thread.
#[derive(Clone, Default)]
struct Serial<H>(H);

impl<H: Hasher> Hasher for Serial<H> {
    const MAX_ARITY: usize = H::MAX_ARITY;
    fn id(&self) -> &str {
        self.0.id()
    }
    fn check_leaf(&self, leaf: &Hash) -> Result<(), &'static str> {
        self.0.check_leaf(leaf)
    }
    fn hash_children(&self, children: &[Hash]) -> Hash {
        self.0.hash_children(children)
    }
    fn hash_groups(&self, children: &[Hash], arity: usize, out: &mut [Hash]) {
        self.0.hash_groups(children, arity, out)
    }
}

/// Field elements: small enough for Poseidon, varied for the others.
fn leaves(n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| {
            let mut h = [0u8; 32];
            h[1..9].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            h[24..].copy_from_slice(&i.to_be_bytes());
            h
        })
        .collect()
}

/// Best of `rounds` runs of `f`.
fn best(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// Seconds per call of `f`, over at least two seconds (as long a run as the batches it bounds), best of 3.
fn per_call(mut f: impl FnMut()) -> f64 {
    let mut n = 16u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() > Duration::from_secs(2) {
            break;
        }
        n *= 2;
    }
    let d = best(3, || {
        for _ in 0..n {
            f();
        }
    });
    d.as_secs_f64() / n as f64
}

fn row<H: Hasher + Default, const N: usize>(name: &str, leaves: &[Hash], limit_s: f64) {
    let n = leaves.len();
    // Parents a batch into an empty tree hashes: sum over levels of
    // ceil(len / N) groups, less the lifted ones (counted as hashes, a
    // bound on the work).
    let mut parents = 0u64;
    let mut len = n as u64;
    while len > 1 {
        parents += len / N as u64;
        len = len.div_ceil(N as u64);
    }
    let limit = n as f64 / (parents as f64 * limit_s);
    let serial = best(2, || {
        let mut t = LeanImt::<Serial<H>, N, 32>::new(Serial(H::default()));
        black_box(t.insert_many(leaves).unwrap());
    });
    let parallel = best(2, || {
        let mut t = LeanImt::<H, N, 32>::new(H::default());
        black_box(t.insert_many(leaves).unwrap());
    });
    let s = n as f64 / serial.as_secs_f64();
    let p = n as f64 / parallel.as_secs_f64();
    println!(
        "| {name} | {N} | {:.2} µs | {:.0} | {:.0} | {:.2}× | {:.0} | {:.2}× |",
        limit_s * 1e6,
        limit,
        s,
        s / limit,
        p,
        p / s
    );
}

fn main() {
    let n: usize = std::env::var("RINGTREE_HASH_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let leaves = leaves(n);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("insert_many of {n} leaves into an empty LeanImt, {cores} cores; leaves/s");
    println!();
    println!(
        "| hasher | N | one parent alone (limit) | limit leaves/s | serial | serial / limit | parallel | parallel / serial |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    // Poseidon alone: light-poseidon's permutation on field elements.
    {
        use ark_bn254::Fr;
        use light_poseidon::{Poseidon as P, PoseidonHasher};
        for (k, name) in [(2usize, "Poseidon"), (4, "Poseidon")] {
            let mut p = P::<Fr>::new_circom(k).unwrap();
            let mut inputs: Vec<Fr> = (1..=k as u64).map(Fr::from).collect();
            // Each output feeds the next call: field elements as varied as
            // a tree's (the field arithmetic branches on its values).
            let alone = per_call(|| {
                let h = p.hash(black_box(&inputs)).unwrap();
                inputs.rotate_left(1);
                inputs[k - 1] = h;
            });
            if k == 2 {
                row::<Poseidon, 2>(name, &leaves, alone);
            } else {
                row::<Poseidon, 4>(name, &leaves, alone);
            }
        }
    }
    {
        use sha3::Digest;
        let block = [7u8; 64];
        let alone = per_call(|| {
            black_box(sha3::Keccak256::digest(black_box(&block)));
        });
        row::<Keccak256, 2>("Keccak256", &leaves, alone);
    }
    {
        use sha2::Digest;
        let block = [7u8; 64];
        let alone = per_call(|| {
            black_box(sha2::Sha256::digest(black_box(&block)));
        });
        row::<Sha256, 2>("Sha256", &leaves, alone);
    }
}
