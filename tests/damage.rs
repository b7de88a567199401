//! Damage to a closed tree's files. Reopening must give the whole tree,
//! unchanged, or an error naming a file of the tree: never a panic, a
//! shorter tree, another root or a proof that does not verify.
//!
//! - Seeded cases on the simulated disk, reopened with full verification:
//!   one byte flipped, a run of bytes garbled, or a file cut short, in any
//!   file of the tree (log segments, manifest, shards, their sums and
//!   tails). `RINGTREE_DAMAGE_CASES` sets the cases (default 300; a million
//!   for the long campaign), `RINGTREE_DAMAGE_SEED` the first seed.
//! - The campaign a user would run (`every_file_every_way_*`): the default
//!   `Config::new(dir)` on a real directory. Every file of a checkpointed
//!   tree, of a tree that never checkpointed, and of one as a power loss
//!   left it, is damaged in every way, one case at a time on a copy: bits
//!   flipped in its header, in mapped chunks, in the log the checkpoint does
//!   not hold and at its end; 64 bytes garbled; cut to nothing, to half and
//!   by one byte; deleted; replaced by the same file of another tree of the
//!   same shape. Each copy is opened and used (inclusion and consistency
//!   proofs checked against the trusted root, a checkpoint), closed,
//!   reopened and checked again; the failure lists every case that ended
//!   otherwise. `RINGTREE_DAMAGE_FULL=1` adds 64 random bit flips per file,
//!   `RINGTREE_DAMAGE_VERBOSE=1` prints how every case ended.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{Rng, hex, leaves};
use ringtree::io::{SimStorage, Storage};
use ringtree::{Blake3, CheckpointPolicy, Config, Error, Hash, LeanImt, Tree};

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

// The campaign a user would run: the default `Config` on a real directory.

/// Leaves of a template tree: `CHECKPOINTED` before its last checkpoint
/// (level 0 then has a few hundred sealed 4 KiB chunks), `LOGGED` after it.
const CHECKPOINTED: u64 = 40_000;
const LOGGED: u64 = 3_000;
/// Leaves of the other tree, whose files replace this one's, start here.
const OTHER_TREE: u64 = 1 << 40;
/// Random leaves proved after each open (besides those the damage hit).
const PROOFS: usize = 48;
/// A case that has not ended by then is reported as hanging.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The 4 KiB chunks of shard files hold 128 nodes.
const CHUNK_NODES: u64 = 128;

/// A file of a closed tree, kept in memory as its non-zero 4 KiB blocks (a
/// log segment is 64 MiB, mostly zeros), copied for each case.
struct Image {
    rel: PathBuf,
    len: u64,
    /// One past the last non-zero byte.
    used: u64,
    blocks: Vec<(u64, Vec<u8>)>,
}

impl Image {
    fn read(root: &Path, rel: &Path) -> Image {
        let bytes = std::fs::read(root.join(rel)).unwrap();
        let used = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p as u64 + 1);
        let blocks = bytes
            .chunks(4096)
            .enumerate()
            .filter(|(_, b)| b.iter().any(|&x| x != 0))
            .map(|(i, b)| (i as u64 * 4096, b.to_vec()))
            .collect();
        Image {
            rel: rel.to_path_buf(),
            len: bytes.len() as u64,
            used,
            blocks,
        }
    }

    fn write(&self, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        for (at, b) in &self.blocks {
            f.write_all_at(b, *at).unwrap();
        }
        f.set_len(self.len).unwrap();
    }
}

/// The directories and the files under `root`, relative to it, sorted.
fn tree_files(root: &Path) -> (Vec<PathBuf>, Vec<Image>) {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    let mut todo = vec![PathBuf::new()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(root.join(&d)).unwrap() {
            let e = e.unwrap();
            let rel = d.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                dirs.push(rel.clone());
                todo.push(rel);
            } else {
                files.push(Image::read(root, &rel));
            }
        }
    }
    dirs.sort();
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    (dirs, files)
}

/// How a template tree was left.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Checkpointed twice, more leaves in the log after that, closed.
    Checkpointed,
    /// Never checkpointed: the log alone, closed.
    LogOnly,
    /// As `Checkpointed`, but the files taken while the tree was still open,
    /// every insert durable, as a power loss would leave them.
    Crashed,
}

/// A tree in the state a user leaves it, with what the user trusts about it.
struct Template {
    name: &'static str,
    dirs: Vec<PathBuf>,
    files: Vec<Image>,
    leaves: Vec<Hash>,
    /// `roots[n - 1]`: the root of the first `n` leaves.
    roots: Vec<Hash>,
    /// Leaves the last checkpoint holds and the log position it covers (0
    /// and 0 without one).
    checkpointed: u64,
    wal_position: u64,
}

impl Template {
    fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    fn root(&self) -> Hash {
        *self.roots.last().unwrap()
    }

    fn file(&self, rel: &Path) -> Option<&Image> {
        self.files.iter().find(|f| f.rel == rel)
    }

    fn copy_to(&self, dir: &Path) {
        for d in &self.dirs {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for f in &self.files {
            f.write(&dir.join(&f.rel));
        }
    }

    /// Every insert is awaited until durable before the next, so each log
    /// group is one record and its commit frame: two trees built alike have
    /// their records at the same positions, whatever the timing.
    fn build(name: &'static str, shape: Shape, first: u64) -> Template {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(first..first + CHECKPOINTED + LOGGED);
        let tree = T4::open_blocking(Config::new(dir.path())).unwrap();
        let ends = [CHECKPOINTED * 3 / 4, CHECKPOINTED, CHECKPOINTED + LOGGED];
        let mut wal_position = 0;
        let crashed = futures::executor::block_on(async {
            let mut from = 0;
            for (k, &to) in ends.iter().enumerate() {
                let part = &all[from as usize..to as usize];
                let (batched, single) = part.split_at(part.len() - 100);
                for c in batched.chunks(4_000 >> (2 * k)) {
                    tree.insert_many(c).await.unwrap().durable.await.unwrap();
                }
                for l in single {
                    tree.insert_durable(*l).await.unwrap();
                }
                if to != *ends.last().unwrap() && shape != Shape::LogOnly {
                    // Nothing else is inserting: the checkpoint covers the
                    // log up to its end.
                    wal_position = tree.wal_position();
                    tree.checkpoint().await.unwrap();
                }
                from = to;
            }
            let crashed = (shape == Shape::Crashed).then(|| tree_files(dir.path()));
            tree.close().await.unwrap();
            crashed
        });
        let mut imt = LeanImt::<Blake3, 4, 32>::new(Blake3);
        let roots: Vec<Hash> = all.iter().map(|l| imt.insert(*l).unwrap()).collect();
        assert_eq!((tree.size(), tree.root()), (imt.size(), imt.root()));
        drop(tree);
        let (dirs, files) = crashed.unwrap_or_else(|| tree_files(dir.path()));
        Template {
            name,
            dirs,
            files,
            leaves: all,
            roots,
            checkpointed: if shape == Shape::LogOnly {
                0
            } else {
                CHECKPOINTED
            },
            wal_position,
        }
    }
}

/// What is done to one file.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Nothing at all: the tree must open whole.
    None,
    /// One bit of the byte at `at` inverted.
    Flip {
        at: u64,
        bit: u8,
    },
    /// 64 bytes from `at` (fewer at the end) each changed.
    Garble {
        at: u64,
    },
    /// Cut to `to` bytes.
    Truncate {
        to: u64,
    },
    Delete,
    /// The same-named file of another tree in its place.
    Replace,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::None => write!(f, "untouched"),
            Damage::Flip { at, bit } => write!(f, "bit {bit} flipped at {at}"),
            Damage::Garble { at } => write!(f, "64 bytes garbled at {at}"),
            Damage::Truncate { to } => write!(f, "truncated to {to}"),
            Damage::Delete => write!(f, "deleted"),
            Damage::Replace => write!(f, "replaced by another tree's"),
        }
    }
}

impl Damage {
    fn apply(self, path: &Path, other: Option<&Image>, rng: &mut Rng) {
        match self {
            Damage::None => {}
            Damage::Flip { at, bit } => common::flip_bit(path, at, bit),
            Damage::Garble { at } => common::garble(path, at, rng),
            Damage::Truncate { to } => common::rw(path).set_len(to).unwrap(),
            Damage::Delete => std::fs::remove_file(path).unwrap(),
            Damage::Replace => {
                std::fs::remove_file(path).unwrap();
                other.expect("the other tree's file").write(path);
            }
        }
    }
}

/// What a file is, from its name.
enum Kind {
    Manifest,
    Segment,
    Shard(usize),
    Sums(usize),
    Tail(usize),
    Other,
}

fn kind(rel: &Path) -> Kind {
    let name = rel.file_name().unwrap().to_string_lossy();
    let level = || name[6..8].parse().unwrap();
    if name == "MANIFEST" {
        Kind::Manifest
    } else if name.ends_with(".wal") {
        Kind::Segment
    } else if name.starts_with("level-") && name.ends_with(".shard") {
        Kind::Shard(level())
    } else if name.starts_with("level-") && name.ends_with(".sums") {
        Kind::Sums(level())
    } else if name.starts_with("level-") && name.ends_with(".tail") {
        Kind::Tail(level())
    } else {
        Kind::Other
    }
}

/// Nodes of level `d` of the checkpoint.
fn level_nodes(checkpointed: u64, d: usize) -> u64 {
    (0..d).fold(checkpointed, |n, _| n.div_ceil(4))
}

/// Every damage done to `img`: flips in the header, in the data the tree
/// needs (a mapped chunk of a shard, the logged records the checkpoint does
/// not hold) and at the end; garbled runs; cuts; deletion; replacement.
fn damages(tpl: &Template, img: &Image, other: bool, rng: &mut Rng) -> Vec<Damage> {
    let (len, used) = (img.len, img.used);
    // Offsets of the header fields, then in the data, per format.
    let (mut flips, garble, mut cuts): (Vec<u64>, u64, Vec<u64>) = match kind(&img.rel) {
        // Version, arity, leaves, log position, root, level count, then
        // level 0's nodes, sums CRC, tail slot and tail CRC, level 1's nodes.
        Kind::Manifest => (vec![8, 12, 16, 24, 32, 64, 68, 76, 80, 84, 88], 0, vec![]),
        Kind::Segment => {
            // Where the log after the checkpoint starts in this segment
            // (docs/FORMAT.md: segment `s` holds positions from `s * (len -
            // 4096)`, at file offsets from 4096).
            let seq: u64 = img
                .rel
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let base = seq * (len - 4096);
            let logged = 4096 + tpl.wal_position.saturating_sub(base).min(len - 4096);
            let mid = logged + (used.saturating_sub(logged)) / 2;
            // Header fields, the clean-close record, the first record (below
            // the checkpoint), the first records after it, the middle of
            // those, the last record (one leaf: a 48-byte frame before the
            // last group's 24-byte commit frame), the commit frame, and the
            // zero word that ends the log.
            let flips = vec![
                16,
                40,
                48,
                2048,
                2056,
                4096,
                logged,
                logged + 8 + 8 + 40,
                mid,
                used.saturating_sub(24 + 20),
                used - 1,
                used.next_multiple_of(8) + 3,
            ];
            (flips, mid, vec![mid, used])
        }
        Kind::Shard(_) => {
            let chunks = (len.saturating_sub(4096)) / 4096;
            let mid = 4096 + 4096 * (chunks / 2) + 4096 / 3;
            let last = 4096 + 4096 * chunks.saturating_sub(1) + 4000;
            (vec![12, 4096 + 5, mid, last], mid, vec![])
        }
        Kind::Sums(_) => {
            let n = (len.saturating_sub(64)) / 4;
            (vec![12, 64, 64 + 4 * (n / 2) + 1], 64 + 4 * (n / 2), vec![])
        }
        Kind::Tail(_) => (vec![12, 4096 + 7, 8192 + 7], 4096, vec![]),
        Kind::Other => (vec![len / 2], len / 2, vec![]),
    };
    flips.extend([0, len.saturating_sub(1)]);
    if std::env::var_os("RINGTREE_DAMAGE_FULL").is_some() {
        flips.extend((0..64).map(|_| rng.below(used.max(1))));
    }
    let flips: BTreeSet<u64> = flips.into_iter().filter(|&a| a < len).collect();
    let mut out: Vec<Damage> = flips
        .into_iter()
        .map(|at| Damage::Flip {
            at,
            bit: rng.below(8) as u8,
        })
        .collect();
    for at in BTreeSet::from([0, garble.min(len.saturating_sub(64))]) {
        if at < len {
            out.push(Damage::Garble { at });
        }
    }
    cuts.extend([0, len / 2, len.saturating_sub(1)]);
    let cuts: BTreeSet<u64> = cuts.into_iter().filter(|&t| t < len).collect();
    out.extend(cuts.into_iter().map(|to| Damage::Truncate { to }));
    out.push(Damage::Delete);
    if other {
        out.push(Damage::Replace);
    }
    out
}

/// Leaves whose proofs read the node at byte `at` of a shard-family file:
/// the leaves under each member of that node's group.
fn leaves_hit(tpl: &Template, rel: &Path, at: u64) -> Vec<u64> {
    let under = |d: usize, k: u64| -> Vec<u64> {
        let span = 4u64.pow(d as u32);
        let group = k / 4 * 4;
        (group..group + 4)
            .flat_map(|j| [j * span, j * span + span - 1])
            .filter(|&i| i < tpl.size())
            .collect()
    };
    match kind(rel) {
        Kind::Shard(d) if at >= 4096 => under(d, (at - 4096) / 32),
        Kind::Sums(d) if at >= 64 => {
            let first = (at - 64) / 4 * CHUNK_NODES;
            [first, first + CHUNK_NODES - 1]
                .into_iter()
                .flat_map(|k| under(d, k))
                .collect()
        }
        Kind::Tail(d) if at >= 4096 => {
            let sealed = level_nodes(tpl.checkpointed, d).saturating_sub(1) / CHUNK_NODES;
            under(d, sealed * CHUNK_NODES + (at - 4096) % 4096 / 32)
        }
        _ => Vec::new(),
    }
}

/// The leaves to prove: both ends of the tree and of its checkpoint, those
/// the damage hit, and random ones.
fn proof_sample(tpl: &Template, rel: &Path, damage: Damage, rng: &mut Rng) -> Vec<u64> {
    let n = tpl.size();
    let mut s: BTreeSet<u64> = [
        0,
        n - 1,
        tpl.checkpointed.saturating_sub(1),
        tpl.checkpointed,
    ]
    .into_iter()
    .filter(|&i| i < n)
    .collect();
    let hit = match damage {
        Damage::Flip { at, .. } => vec![at],
        Damage::Garble { at } => vec![at, at + 63],
        Damage::Truncate { to } => vec![to],
        _ => vec![],
    };
    for at in hit {
        s.extend(leaves_hit(tpl, rel, at));
    }
    s.extend((0..PROOFS).map(|_| rng.below(n)));
    s.into_iter().collect()
}

/// Whether an error names a file of the tree in `dir` (the one acceptable
/// kind of error after damage). A panic turned into an error, or a lock
/// still held, names nothing that was damaged.
fn names_file(e: &Error, dir: &Path) -> bool {
    let msg = e.to_string();
    if msg.contains("panicked") || matches!(e, Error::Locked(_)) {
        return false;
    }
    match e {
        Error::Corruption { file, .. } if file.starts_with(dir) => true,
        Error::Io { path, .. } if path.starts_with(dir) => true,
        _ => {
            msg.contains(&*dir.to_string_lossy())
                || ["MANIFEST", "IDENTITY", "level-", ".wal"]
                    .iter()
                    .any(|n| msg.contains(n))
        }
    }
}

/// Runs `f`; a panic comes back as its message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// A root, by its first 6 bytes in hex.
fn short_root(h: Option<Hash>) -> String {
    h.map_or("none".into(), |h| hex(&h[..6]))
}

/// How one case ended, if it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Opened whole twice, every proof verified.
    Whole,
    /// Opened whole, but a proof, the checkpoint, a close or the reopen was
    /// refused with an error naming a file: what happened.
    RefusedLater(String),
    /// Open was refused with an error naming a file: what happened.
    Refused(String),
}

/// The steps of one case as they happened. A step that broke the rules is
/// marked, and the case fails if any is.
struct Trail {
    dir: PathBuf,
    /// The tree is undamaged: no error is allowed.
    strict: bool,
    steps: Vec<String>,
    failed: bool,
    refused: bool,
}

impl Trail {
    fn ok(&mut self, step: String) {
        self.steps.push(step);
    }

    fn fail(&mut self, step: String) {
        self.failed = true;
        self.steps.push(format!("FAILED {step}"));
    }

    /// Error messages without the case's directory, which says nothing.
    fn show(&self, e: &Error) -> String {
        e.to_string().replace(&*self.dir.to_string_lossy(), "<dir>")
    }

    /// An error is allowed when it names a file of the damaged tree.
    fn error(&mut self, what: &str, e: &Error) {
        let msg = self.show(e);
        if !self.strict && names_file(e, &self.dir) {
            self.refused = true;
            self.ok(format!("{what}: Err({msg})"));
        } else {
            self.fail(format!("{what}: Err naming no damaged file ({msg})"));
        }
    }

    /// A tree that opened must be the trusted one: its size, its root, and
    /// proofs that verify against that root (or errors naming a file): an
    /// inclusion proof of each leaf `i` of `sample`, and a consistency proof
    /// from the tree of its first `i + 1` leaves.
    fn check_tree(&mut self, tpl: &Template, t: &T4, sample: &[u64]) {
        let (size, root) = (t.size(), t.root());
        if size != tpl.size() || root != Some(tpl.root()) {
            self.fail(format!(
                "Ok with {size} leaves, root {} (trusted: {} leaves, root {})",
                short_root(root),
                tpl.size(),
                short_root(Some(tpl.root()))
            ));
            return;
        }
        let (trusted, snap) = (tpl.root(), t.snapshot());
        // Leaves by what was wrong with their proofs.
        let mut wrong: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        let (mut refused, mut detail) = (Vec::new(), None);
        for &i in sample {
            let inclusion = catch(|| {
                snap.proof(i).map(|p| {
                    if p.leaf_index() != i || p.leaf() != tpl.leaves[i as usize] {
                        Some("Ok inclusion proof of another leaf")
                    } else {
                        let bad = p.verify_at(&Blake3, &trusted, size).is_err();
                        bad.then_some("Ok inclusion proof that does not verify")
                    }
                })
            });
            let consistency = catch(|| {
                snap.consistency_proof(i + 1).map(|c| {
                    let old = tpl.roots[i as usize];
                    let bad = c.verify_at(&Blake3, &old, i + 1, &trusted, size).is_err();
                    bad.then_some("Ok consistency proof that does not verify")
                })
            });
            for (kind, outcome) in [("inclusion", inclusion), ("consistency", consistency)] {
                let flaw = match outcome {
                    Ok(Ok(flaw)) => flaw.map(str::to_string),
                    Err(p) => {
                        detail.get_or_insert(format!("panic: {p}"));
                        Some(format!("{kind} proof panicked"))
                    }
                    Ok(Err(e)) if !self.strict && names_file(&e, &self.dir) => {
                        refused.push(i);
                        detail.get_or_insert(self.show(&e));
                        None
                    }
                    Ok(Err(e)) => {
                        detail.get_or_insert(self.show(&e));
                        Some(format!("{kind} proof: error naming no file"))
                    }
                };
                if let Some(flaw) = flaw {
                    wrong.entry(flaw).or_default().push(i);
                }
            }
        }
        let list = |v: &[u64]| {
            let mut s: Vec<String> = v.iter().take(8).map(u64::to_string).collect();
            if v.len() > 8 {
                s.push("…".into());
            }
            s.join(", ")
        };
        let asked = 2 * sample.len();
        let detail = detail.map_or(String::new(), |d| format!(" ({d})"));
        if !wrong.is_empty() {
            let n: usize = wrong.values().map(Vec::len).sum();
            let groups: Vec<String> = wrong
                .iter()
                .map(|(flaw, v)| format!("{flaw}: leaves {}", list(v)))
                .collect();
            self.fail(format!(
                "{n} of {asked} proofs wrong: {}{detail}",
                groups.join("; ")
            ));
        } else if !refused.is_empty() {
            self.refused = true;
            self.ok(format!(
                "{} proofs verified, {} refused (leaves {}){detail}",
                asked - refused.len(),
                refused.len(),
                list(&refused)
            ));
        } else {
            self.ok(format!("{asked} proofs verified"));
        }
    }
}

/// Opens the damaged copy as a user would and uses it: proofs, a
/// checkpoint, close, then reopen, proofs and close again. `stage` tells a
/// hang where it is.
fn exercise(
    tpl: &Template,
    dir: &Path,
    sample: &[u64],
    strict: bool,
    stage: &Mutex<&'static str>,
) -> Result<Ended, String> {
    let at = |s: &'static str| *stage.lock().unwrap() = s;
    let mut trail = Trail {
        dir: dir.to_path_buf(),
        strict,
        steps: Vec::new(),
        failed: false,
        refused: false,
    };
    let mut refused_at_open = false;
    for round in ["open", "reopen"] {
        at(round);
        let t = match catch(|| T4::open_blocking(Config::new(dir))) {
            Err(p) => {
                trail.fail(format!("{round}: panicked: {p}"));
                break;
            }
            Ok(Err(e)) => {
                trail.error(round, &e);
                refused_at_open = round == "open";
                break;
            }
            Ok(Ok(t)) => {
                trail.ok(format!("{round}: Ok"));
                t
            }
        };
        at("proofs");
        trail.check_tree(tpl, &t, sample);
        if round == "open" {
            at("checkpoint");
            match catch(|| futures::executor::block_on(t.checkpoint())) {
                Err(p) => trail.fail(format!("checkpoint: panicked: {p}")),
                Ok(Err(e)) => trail.error("checkpoint", &e),
                Ok(Ok(())) => trail.ok("checkpoint: Ok".into()),
            }
        }
        at("close");
        match catch(|| futures::executor::block_on(t.close())) {
            Err(p) => trail.fail(format!("close: panicked: {p}")),
            Ok(Err(e)) => trail.error("close", &e),
            Ok(Ok(())) => trail.ok("close: Ok".into()),
        }
        drop(t);
    }
    match (trail.failed, trail.refused) {
        (true, _) => Err(trail.steps.join("; ")),
        (false, true) if refused_at_open => Ok(Ended::Refused(trail.steps.join("; "))),
        (false, true) => Ok(Ended::RefusedLater(trail.steps.join("; "))),
        (false, false) => Ok(Ended::Whole),
    }
}

/// Damages every file of `tpl` in every way, one case at a time on a fresh
/// copy, and panics with the list of every case that ended otherwise than
/// whole or with an error naming a file.
fn campaign(tpl: Template, other: &Template) {
    let t0 = std::time::Instant::now();
    let tpl = Arc::new(tpl);
    let mut failures = Vec::new();
    let (mut whole, mut refused, mut later) = (0, 0, 0);
    let mut cases: Vec<(PathBuf, Damage)> = vec![
        (PathBuf::from("LOCK"), Damage::None),
        // A lock file is not data: deleting it is not damage either.
        (PathBuf::from("LOCK"), Damage::Delete),
    ];
    let verbose = std::env::var_os("RINGTREE_DAMAGE_VERBOSE").is_some();
    let mut rng = Rng(0xda7a6e);
    for img in &tpl.files {
        if img.rel == Path::new("LOCK") {
            continue;
        }
        let replaceable = other.file(&img.rel).is_some();
        for d in damages(&tpl, img, replaceable, &mut rng) {
            cases.push((img.rel.clone(), d));
        }
    }
    for (i, (rel, damage)) in cases.iter().enumerate() {
        let label = format!("{}: {} {damage}", tpl.name, rel.display());
        let case = tempfile::tempdir().unwrap();
        let dir = case.path().join("tree");
        tpl.copy_to(&dir);
        let mut rng = Rng(i as u64);
        damage.apply(&dir.join(rel), other.file(rel), &mut rng);
        let sample = proof_sample(&tpl, rel, *damage, &mut rng);
        let strict = rel == Path::new("LOCK");
        let stage = Arc::new(Mutex::new("start"));
        let (tx, rx) = mpsc::channel();
        {
            let (tpl, dir, stage) = (tpl.clone(), dir.clone(), stage.clone());
            std::thread::spawn(move || {
                let ended = catch(|| exercise(&tpl, &dir, &sample, strict, &stage));
                let _ = tx.send(ended.unwrap_or_else(|p| Err(format!("panicked: {p}"))));
            });
        }
        let ended = rx.recv_timeout(CASE_TIMEOUT);
        if verbose {
            eprintln!("{label}: {ended:?}");
        }
        match ended {
            Ok(Ok(Ended::Whole)) => whole += 1,
            Ok(Ok(Ended::Refused(_))) => refused += 1,
            Ok(Ok(Ended::RefusedLater(_))) => later += 1,
            Ok(Err(why)) => failures.push(format!("{label}: {why}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the case sends"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let s = *stage.lock().unwrap();
                failures.push(format!(
                    "{label}: no outcome after {CASE_TIMEOUT:?} (at {s})"
                ));
                // The hung case still uses its directory.
                std::mem::forget(case);
            }
        }
    }
    eprintln!(
        "{}: {} cases in {:.1?}: {whole} whole, {refused} refused at open, {later} refused later, {} failed",
        tpl.name,
        cases.len(),
        t0.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases of damage to {} ended otherwise than whole or with an error naming a file:\n{}",
        failures.len(),
        cases.len(),
        tpl.name,
        failures.join("\n")
    );
}

#[test]
fn every_file_every_way_checkpointed_tree() {
    let tpl = Template::build("checkpointed tree", Shape::Checkpointed, 0);
    let other = Template::build("other tree", Shape::Checkpointed, OTHER_TREE);
    campaign(tpl, &other);
}

#[test]
fn every_file_every_way_log_only_tree() {
    let tpl = Template::build("log-only tree", Shape::LogOnly, 0);
    let other = Template::build("other tree", Shape::LogOnly, OTHER_TREE);
    campaign(tpl, &other);
}

#[test]
fn every_file_every_way_crashed_tree() {
    let tpl = Template::build("crashed tree", Shape::Crashed, 0);
    let other = Template::build("other tree", Shape::Checkpointed, OTHER_TREE);
    campaign(tpl, &other);
}
