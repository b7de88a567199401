//! Seeded damage to a closed tree's files on the simulated disk: one byte
//! flipped, a run of bytes garbled, or a file cut short, in any file of the
//! tree (log segments, manifest, shards, their sums and tails). Reopening
//! (with full verification) must give the whole tree, unchanged, or an error
//! naming a file of the tree: never a panic, a shorter tree or another root.
//!
//! `RINGTREE_DAMAGE_CASES` sets the cases (default 300; a million for the
//! long campaign), `RINGTREE_DAMAGE_SEED` the first seed.

mod common;

use std::path::{Path, PathBuf};

use common::{Rng, leaves};
use ringtree::io::{SimStorage, Storage};
use ringtree::{Blake3, CheckpointPolicy, Error, Hash, Tree};

type T4 = Tree<Blake3, 4, 32>;

/// The tree's files (the simulated disk lists files, not directories).
fn files(sim: &SimStorage) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["/t", "/t/wal", "/t/shards"] {
        for n in sim.list(Path::new(dir)).unwrap() {
            out.push(Path::new(dir).join(n));
        }
    }
    out
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A closed tree: a checkpoint, then more in the log (small segments, so
/// several exist, some retired), all synced.
fn build(sim: &SimStorage, rng: &mut Rng) -> Vec<Hash> {
    let cfg = common::sim_config(sim, "/t")
        .segment_size(16 << 10)
        .checkpoint(CheckpointPolicy::Manual);
    let t = T4::open_blocking(cfg).unwrap();
    let all = leaves(0..600 + rng.below(1400));
    let cut = rng.below(all.len() as u64) as usize;
    futures::executor::block_on(async {
        for (i, c) in all[..cut].chunks(97).enumerate() {
            if i % 3 == 0 {
                for l in c {
                    t.insert(*l).await.unwrap();
                }
            } else {
                t.insert_many(c).await.unwrap();
            }
        }
        t.checkpoint().await.unwrap();
        for l in &all[cut..] {
            t.insert(*l).await.unwrap();
        }
        t.close().await.unwrap();
    });
    all
}

#[test]
fn damaged_files_never_panic_nor_shorten_the_tree() {
    let first = env("RINGTREE_DAMAGE_SEED", 0);
    let cases = env("RINGTREE_DAMAGE_CASES", 300);
    let (mut whole, mut refused) = (0u64, 0u64);
    for seed in first..first + cases {
        let mut rng = Rng(seed);
        let sim = SimStorage::new(seed);
        let all = build(&sim, &mut rng);
        let mut names = files(&sim);
        names.retain(|p| !p.ends_with("LOCK"));
        let path = names[rng.below(names.len() as u64) as usize].clone();
        let len = sim.live_bytes(&path).unwrap().len() as u64;
        let what = match rng.below(3) {
            _ if len == 0 => "nothing (empty file)".to_string(),
            0 => {
                let at = rng.below(len);
                sim.corrupt(&path, at, 1 << rng.below(8)).unwrap();
                format!("bit flip at {at}")
            }
            1 => {
                let at = rng.below(len);
                let n = 1 + rng.below(64);
                for k in at..(at + n).min(len) {
                    sim.corrupt(&path, k, 1 + rng.below(255) as u8).unwrap();
                }
                format!("{n} bytes garbled at {at}")
            }
            _ => {
                let to = rng.below(len);
                sim.truncate(&path, to).unwrap();
                format!("cut to {to} of {len} bytes")
            }
        };
        let ctx = format!("seed {seed}: {} {what}", path.display());
        let cfg = common::sim_config(&sim.restart(), "/t")
            .segment_size(16 << 10)
            .checkpoint(CheckpointPolicy::Manual)
            .verify_on_open(true);
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T4::open_blocking(cfg)))
                .unwrap_or_else(|_| panic!("{ctx}: open panicked"));
        match opened {
            Ok(t) => {
                whole += 1;
                assert_eq!(t.size(), all.len() as u64, "{ctx}: a shorter tree");
                assert_eq!(t.root(), common::naive_root(4, &all), "{ctx}: another root");
            }
            Err(Error::Corruption { file, .. }) => {
                refused += 1;
                assert!(file.starts_with("/t"), "{ctx}: corruption names {file:?}");
            }
            Err(Error::Io { path: p, .. }) => {
                refused += 1;
                assert!(p.starts_with("/t"), "{ctx}: error names {p:?}");
            }
            Err(e) => panic!("{ctx}: unexpected error {e}"),
        }
    }
    eprintln!("{cases} damaged trees: {whole} reopened whole, {refused} refused");
    // Damage in data the tree needs is found, and damage it does not need
    // (old log, the spare tail slot) is not fatal.
    if cases >= 100 {
        assert!(
            refused > cases / 4 && whole > cases / 20,
            "{whole} / {refused}"
        );
    }
}
