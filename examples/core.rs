//! The in-memory core alone: builds a tree of a million leaves, proves and
//! verifies.
//!
//! `cargo run --release --example core [-- LEAVES]`
use std::time::Instant;

use ringtree::{Blake3, Hash, LeanImt};

fn main() -> Result<(), ringtree::Error> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let leaves: Vec<Hash> = (0..n)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();

    let mut tree = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let t = Instant::now();
    for chunk in leaves.chunks(10_000) {
        tree.insert_many(chunk)?;
    }
    let took = t.elapsed();
    let root = tree.root().expect("non-empty");
    println!(
        "built a 4-ary tree of {n} leaves with insert_many (10k per batch) in {took:.2?} ({:.1}M leaves/s); depth {}",
        n as f64 / took.as_secs_f64() / 1e6,
        tree.depth()
    );
    let hex: String = root.iter().map(|b| format!("{b:02x}")).collect();
    println!("root {hex}");

    let mut single = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let t = Instant::now();
    for l in &leaves {
        single.insert(*l)?;
    }
    let took = t.elapsed();
    assert_eq!(
        single.root(),
        Some(root),
        "single inserts and batches agree"
    );
    println!(
        "same tree by {n} single inserts in {took:.2?} ({:.0}k inserts/s), same root",
        n as f64 / took.as_secs_f64() / 1e3
    );

    let snap = tree.snapshot();
    let t = Instant::now();
    let samples = 10_000u64;
    for k in 0..samples {
        let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n;
        let proof = snap.proof(i)?;
        assert_eq!(proof.leaf(), leaves[i as usize]);
        proof.verify_at(&Blake3, &root, n)?;
    }
    println!(
        "generated and verified {samples} inclusion proofs in {:.2?}",
        t.elapsed()
    );

    let old = n / 3;
    let old_root = {
        let mut t = LeanImt::<Blake3, 4, 32>::new(Blake3);
        t.insert_many(&leaves[..old as usize])?
    };
    let c = snap.consistency_proof(old)?;
    c.verify_at(&Blake3, &old_root, old, &root, n)?;
    println!(
        "consistency proof {old} -> {n} leaves verified ({} bytes)",
        c.to_bytes().len()
    );

    let mut forged = snap.proof(0)?.to_bytes();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let rejected = ringtree::Proof::from_bytes(&forged)
        .and_then(|p| p.verify_at(&Blake3, &root, n))
        .is_err();
    println!("a proof with one flipped bit is rejected: {rejected}");
    assert!(rejected);
    Ok(())
}
