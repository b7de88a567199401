//! `proof_at` and `update_proof` against `proof` on a tree of 1M leaves
//! (`cargo bench --bench history`; `RINGTREE_HISTORY_LEAVES` to change it).

use std::hint::black_box;
use std::time::Instant;

use ringtree::{Blake3, Hash, LeanImt};

fn ns_per(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed()
        })
        .min()
        .unwrap();
    best.as_nanos() as f64 / iters as f64
}

fn run<const N: usize>(size: u64) {
    let leaves: Vec<Hash> = (0..size)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let mut tree = LeanImt::<Blake3, N, 32>::new(Blake3);
    tree.insert_many(&leaves).unwrap();
    let snap = tree.snapshot();
    // Indices and older sizes spread over the tree (an odd stride).
    let pick = |i: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) % size;
    let iters = 100_000;
    let proof = ns_per(iters, |i| {
        black_box(snap.proof(pick(i)).unwrap());
    });
    let proof_at = ns_per(iters, |i| {
        let old = pick(i) + 1;
        black_box(snap.proof_at(pick(i + 7) % old, old).unwrap());
    });
    let olds: Vec<_> = (0..1000u64)
        .map(|i| {
            let old = pick(i) + 1;
            snap.proof_at(pick(i + 7) % old, old).unwrap()
        })
        .collect();
    let update = ns_per(iters, |i| {
        black_box(snap.update_proof(&olds[(i % 1000) as usize]).unwrap());
    });
    let root_at = ns_per(iters, |i| {
        black_box(snap.root_at(pick(i) + 1).unwrap());
    });
    println!(
        "| {N} | {size} | {proof:.0} ns | {proof_at:.0} ns ({:.2}×) | {update:.0} ns ({:.2}×) | {root_at:.0} ns |",
        proof_at / proof,
        update / proof
    );
}

fn main() {
    let size: u64 = std::env::var("RINGTREE_HISTORY_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("| N | leaves | proof | proof_at (vs proof) | update_proof (vs proof) | root_at |");
    println!("|---|---|---|---|---|---|");
    run::<2>(size);
    run::<4>(size);
    run::<16>(size);
}
