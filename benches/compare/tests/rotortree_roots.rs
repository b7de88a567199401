//! Roots byte-identical to rotortree 0.20 for N in {2, 3, 4, 5, 8, 16}: every
//! size 0..=2,000 and random sizes up to 200,000, built by single inserts, by
//! `insert_many` with random split points, and mixed.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{Rng, leaf, leaves};
use ringtree::{Blake3, Hash, LeanImt};
use rotortree::{Blake3Hasher, LeanIMT};

const SMALL: u64 = 2_000;

/// rotortree's root after each single insert: `roots[s]` is the root at size `s`.
fn reference_roots<const N: usize>(n: u64) -> Vec<Option<Hash>> {
    let mut r = LeanIMT::<Blake3Hasher, N, 32>::new(Blake3Hasher);
    let mut roots = vec![None];
    for i in 0..n {
        roots.push(Some(r.insert(leaf(i)).unwrap()));
    }
    roots
}

fn single_inserts<const N: usize>(reference: &[Option<Hash>]) {
    let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
    assert_eq!(t.root(), None);
    for i in 0..SMALL {
        let root = t.insert(leaf(i)).unwrap();
        assert_eq!(
            Some(root),
            reference[i as usize + 1],
            "N={N} size={}",
            i + 1
        );
        assert_eq!(t.root(), Some(root));
    }
}

/// Every size reached by `insert_many` of a prefix and then the rest, split
/// at a random point.
fn two_batches_every_size<const N: usize>(reference: &[Option<Hash>], rng: &mut Rng) {
    let all = leaves(0..SMALL);
    for size in 1..=SMALL as usize {
        let split = rng.below(size as u64) as usize;
        let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
        if split > 0 {
            assert_eq!(
                Some(t.insert_many(&all[..split]).unwrap()),
                reference[split],
                "N={N} size={split}"
            );
        }
        let root = t.insert_many(&all[split..size]).unwrap();
        assert_eq!(
            Some(root),
            reference[size],
            "N={N} size={size} split={split}"
        );
    }
}

/// Random batch sizes and single inserts mixed, checked at every step.
fn mixed<const N: usize>(reference: &[Option<Hash>], rng: &mut Rng) {
    let all = leaves(0..SMALL);
    for _ in 0..20 {
        let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
        let mut size = 0usize;
        while size < SMALL as usize {
            let root = if rng.below(3) == 0 {
                t.insert(all[size]).unwrap();
                size += 1;
                t.root().unwrap()
            } else {
                let k = (1 + rng.below(300) as usize).min(SMALL as usize - size);
                let r = t.insert_many(&all[size..size + k]).unwrap();
                size += k;
                r
            };
            assert_eq!(Some(root), reference[size], "N={N} size={size}");
        }
    }
}

/// Random large sizes, compared with rotortree's `insert_many`.
fn large<const N: usize>(rng: &mut Rng) {
    for _ in 0..3 {
        let size = 1 + rng.below(200_000);
        let all = leaves(0..size);
        let mut r = LeanIMT::<Blake3Hasher, N, 32>::new(Blake3Hasher);
        let expect = r.insert_many(&all).unwrap();
        let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
        let mut at = 0usize;
        while at < all.len() {
            let k = (1 + rng.below(40_000) as usize).min(all.len() - at);
            t.insert_many(&all[at..at + k]).unwrap();
            at += k;
        }
        assert_eq!(t.root(), Some(expect), "N={N} size={size}");
    }
}

fn all_for<const N: usize>(seed: u64) {
    let reference = reference_roots::<N>(SMALL);
    let mut rng = Rng(seed);
    single_inserts::<N>(&reference);
    two_batches_every_size::<N>(&reference, &mut rng);
    mixed::<N>(&reference, &mut rng);
    large::<N>(&mut rng);
}

#[test]
fn arity_2() {
    all_for::<2>(2);
}
#[test]
fn arity_3() {
    all_for::<3>(3);
}
#[test]
fn arity_4() {
    all_for::<4>(4);
}
#[test]
fn arity_5() {
    all_for::<5>(5);
}
#[test]
fn arity_8() {
    all_for::<8>(8);
}
#[test]
fn arity_16() {
    all_for::<16>(16);
}

/// Every other arity in 2..=16, a little lighter.
#[test]
fn other_arities_single_and_batch() {
    fn check<const N: usize>() {
        let reference = reference_roots::<N>(700);
        let all = leaves(0..700);
        let mut t = LeanImt::<Blake3, N, 32>::new(Blake3);
        for (i, l) in all.iter().enumerate() {
            assert_eq!(Some(t.insert(*l).unwrap()), reference[i + 1], "N={N}");
        }
        let mut b = LeanImt::<Blake3, N, 32>::new(Blake3);
        assert_eq!(Some(b.insert_many(&all).unwrap()), reference[700], "N={N}");
    }
    check::<6>();
    check::<7>();
    check::<9>();
    check::<10>();
    check::<11>();
    check::<12>();
    check::<13>();
    check::<14>();
    check::<15>();
}
