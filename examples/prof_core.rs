//! Profiling driver for the in-memory core (not a user example):
//! `cargo run --release --example prof_core -- many|single`.
use ringtree::{Blake3, Hash, LeanImt};
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "many".into());
    let all: Vec<Hash> = (0..1_000_000u64)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        let mut t = LeanImt::<Blake3, 4, 16>::new(Blake3);
        if mode == "many" {
            for c in all.chunks(10_000) {
                t.insert_many(c).unwrap();
            }
        } else {
            for l in &all {
                t.insert(*l).unwrap();
            }
        }
        std::hint::black_box(t.root());
    }
    println!("{mode}: {:?} per 1M", t0.elapsed() / 10);
}
