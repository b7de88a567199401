//! A chain indexer that follows reorganisations: it mirrors the deposits of
//! a simulated chain into a tree (one leaf per deposit, blocks in order),
//! awaits durability per block before it reports the block indexed,
//! rewinds when the chain reorganises (to the last common block, at a
//! random depth), and finalizes blocks once they are `FINALITY` blocks deep.
//! At the end it checks the tree's root against a tree rebuilt from the
//! canonical chain, then reopens the directory and checks again.
//!
//! ```text
//! cargo run --release --example reorg [-- DIR [BLOCKS]]
//! ```

use std::time::{Duration, Instant};

use ringtree::{Blake3, Config, Hash, LeanImt, Tree};

type T = Tree<Blake3, 4, 32>;

/// Blocks deeper than this are final: no reorganisation reaches them.
const FINALITY: usize = 12;

/// A small deterministic generator (splitmix64), so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A block: its deposits (the leaves).
struct Block {
    deposits: Vec<Hash>,
}

fn new_block(rng: &mut Rng) -> Block {
    let n = rng.below(24) as usize; // some blocks carry no deposit
    let deposits = (0..n)
        .map(|_| {
            let mut h = [0u8; 32];
            for w in h.chunks_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
            h
        })
        .collect();
    Block { deposits }
}

#[tokio::main]
async fn main() -> ringtree::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("a temporary directory");
            tmp.path().join("reorg")
        }
    };
    let blocks: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3_000);
    let tree = T::open(Config::new(&dir)).await?;
    assert_eq!(tree.size(), 0, "start from an empty directory");

    let mut rng = Rng(7);
    // The canonical chain as the indexer knows it, and the tree's size after
    // each of its blocks.
    let mut chain: Vec<Block> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    let (mut reorgs, mut deepest, mut dropped) = (0usize, 0usize, 0u64);
    let mut rewind_waits: Vec<Duration> = Vec::new();
    // Blocks `0..final_blocks` are final.
    let mut final_blocks = 0usize;
    let started = Instant::now();
    while chain.len() < blocks {
        // One reorganisation in twenty blocks, 1 to FINALITY blocks deep,
        // never into a final block.
        let open_blocks = chain.len() - final_blocks;
        if open_blocks > 1 && rng.below(20) == 0 {
            let depth = 1 + rng.below(FINALITY.min(open_blocks - 1) as u64) as usize;
            let keep = chain.len() - depth;
            let size = if keep == 0 { 0 } else { sizes[keep - 1] };
            let t0 = Instant::now();
            let r = tree.rewind(size).await?;
            r.durable.await?;
            rewind_waits.push(t0.elapsed());
            dropped += tree_size_before(&sizes) - size;
            chain.truncate(keep);
            sizes.truncate(keep);
            reorgs += 1;
            deepest = deepest.max(depth);
        }
        let block = new_block(&mut rng);
        if !block.deposits.is_empty() {
            // The block is indexed once its deposits are durable.
            tree.insert_many(&block.deposits).await?.durable.await?;
        }
        chain.push(block);
        sizes.push(tree.size());
        if chain.len() > FINALITY + final_blocks {
            final_blocks = chain.len() - FINALITY;
            // Durable with the next block's deposits; not awaited here.
            drop(tree.finalize(sizes[final_blocks - 1]).await?);
        }
    }
    let took = started.elapsed();

    // The tree must be the tree of the canonical chain's deposits.
    let canonical: Vec<Hash> = chain.iter().flat_map(|b| b.deposits.clone()).collect();
    let mut rebuilt = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let want = if canonical.is_empty() {
        None
    } else {
        Some(rebuilt.insert_many(&canonical)?)
    };
    assert_eq!(tree.size(), canonical.len() as u64);
    assert_eq!(tree.root(), want, "the tree is the canonical chain's");
    tree.flush().await?;
    assert_eq!(tree.durable_root(), want);
    let finalized = tree.finalized();
    tree.checkpoint().await?;
    tree.close().await?;

    let tree = T::open(Config::new(&dir)).await?;
    assert_eq!(tree.root(), want, "and so is the reopened one");
    assert_eq!(tree.finalized(), finalized);
    if let Some(root) = want {
        let last = tree.size() - 1;
        tree.snapshot()
            .proof(last)?
            .verify_at(&Blake3, &root, last + 1)?;
    }
    tree.close().await?;

    rewind_waits.sort();
    let p50 = rewind_waits
        .get(rewind_waits.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "{blocks} blocks, {} deposits in {took:.2?}; {reorgs} reorganisations (deepest {deepest} blocks, {dropped} deposits rewound), rewind durable p50 {p50:.2?}; {finalized} deposits final; root matches the canonical chain's, before and after reopen",
        canonical.len()
    );
    Ok(())
}

/// The tree's size after the last block.
fn tree_size_before(sizes: &[u64]) -> u64 {
    sizes.last().copied().unwrap_or(0)
}
