//! In-memory core, side by side with rotortree 0.20 in the same run (N = 4,
//! MAX_DEPTH = 16, BLAKE3):
//! - `insert_many` of 1M leaves in 10k chunks;
//! - single `insert` x1M;
//! - proof generation and verification at 1M leaves.
//!
//! `cargo bench --bench core`; `scripts/ratios.py` prints ringtree/rotortree
//! ratios from criterion's output.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ringtree::{Blake3, Hash, LeanImt};
use rotortree::{Blake3Hasher, LeanIMT};
use std::hint::black_box;

const N: usize = 4;
const D: usize = 16;
const LEAVES: u64 = 1_000_000;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect()
}

fn insert_many(c: &mut Criterion) {
    let all = leaves(LEAVES);
    let mut g = c.benchmark_group("insert_many_1M_in_10k");
    g.throughput(Throughput::Elements(LEAVES));
    g.sample_size(20);
    g.bench_function("ringtree", |b| {
        b.iter(|| {
            let mut t = LeanImt::<Blake3, N, D>::new(Blake3);
            for chunk in all.chunks(10_000) {
                t.insert_many(chunk).unwrap();
            }
            black_box(t.root())
        })
    });
    g.bench_function("rotortree", |b| {
        b.iter(|| {
            let mut t = LeanIMT::<Blake3Hasher, N, D>::new(Blake3Hasher);
            for chunk in all.chunks(10_000) {
                t.insert_many(chunk).unwrap();
            }
            black_box(t.root())
        })
    });
    g.finish();
}

fn single_insert(c: &mut Criterion) {
    let all = leaves(LEAVES);
    let mut g = c.benchmark_group("insert_1M_single");
    g.throughput(Throughput::Elements(LEAVES));
    g.sample_size(10);
    g.bench_function("ringtree", |b| {
        b.iter(|| {
            let mut t = LeanImt::<Blake3, N, D>::new(Blake3);
            for l in &all {
                black_box(t.insert(*l).unwrap());
            }
        })
    });
    g.bench_function("rotortree", |b| {
        b.iter(|| {
            let mut t = LeanIMT::<Blake3Hasher, N, D>::new(Blake3Hasher);
            for l in &all {
                black_box(t.insert(*l).unwrap());
            }
        })
    });
    g.finish();
}

fn proofs(c: &mut Criterion) {
    let all = leaves(LEAVES);
    let mut ours = LeanImt::<Blake3, N, D>::new(Blake3);
    let root = ours.insert_many(&all).unwrap();
    let snap = ours.snapshot();
    let mut theirs = LeanIMT::<Blake3Hasher, N, D>::new(Blake3Hasher);
    theirs.insert_many(&all).unwrap();
    let tsnap = theirs.snapshot();
    let mut i = 0u64;
    let mut next = move || {
        i = (i + 7_919) % LEAVES;
        i
    };

    let mut g = c.benchmark_group("proof_generate_1M");
    g.bench_function("ringtree", |b| {
        b.iter(|| black_box(snap.proof(next()).unwrap()))
    });
    g.bench_function("rotortree", |b| {
        b.iter(|| black_box(tsnap.generate_proof(next()).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("proof_verify_1M");
    g.bench_function("ringtree", |b| {
        b.iter_batched(
            || snap.proof(next()).unwrap(),
            |p| p.verify_at(&Blake3, &root, LEAVES).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("rotortree", |b| {
        b.iter_batched(
            || tsnap.generate_proof(next()).unwrap(),
            |p| assert!(p.verify_against(&Blake3Hasher, root).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, insert_many, single_insert, proofs);
criterion_main!(benches);
