//! The bodies of the fuzz targets, shared by the `cargo fuzz` targets
//! (`fuzz/fuzz_targets/*.rs`) and the stable corpus replay
//! (`tests/fuzz_corpus.rs`), so both run exactly the same code.
//!
//! Every body takes arbitrary bytes and must return without panicking:
//! damaged input is an `Err` from the crate, never a panic, a hang or a
//! wrong answer. Only the crate's public API is used, so the bodies keep
//! working while its internals change.
//!
//! # The file targets
//!
//! `wal_recovery` and `checkpoint_load` start from a small real tree (the
//! *template*: a few hundred leaves, two checkpoints, a log spanning several
//! segments) built once per process on the simulated disk. Each input
//! copies the template's files to a fresh simulated disk, damages one file
//! and opens the tree. Input layout:
//!
//! ```text
//! byte 0   options: bits 0-1 the damage (0 replace the file with the
//!          payload, 1 overwrite it with the payload at an offset, 2 cut it
//!          at an offset and append the payload, 3 remove it);
//!          bit 2 verify_on_open; bit 3 keep every level in memory;
//!          bit 4 log writes through the page cache only;
//!          bits 5-6 what the disk does with direct writes;
//!          bit 7 also checkpoint and reopen after the insert
//! byte 1   which file (modulo the number of candidate files)
//! 2..6     damages 1 and 2: the offset, u32 little-endian, modulo the
//!          file's length + 1
//! rest     the payload
//! ```
//!
//! A new tree gets a random tree id, which segments, the manifest and the
//! identity record carry, so the template differs from process to process
//! in those bytes. Damages 1-3 keep the template's own id and so mean the
//! same in every process; a replaced file (damage 0) made in one process
//! carries that process's id and is refused by the id check in another.
//!
//! When the tree opens, it is used as an application would: a node of
//! every chunk read, proofs made and checked against its root, a leaf
//! inserted and awaited, then (with option bit 7) a checkpoint, and a
//! close. With bit 7, when all of that succeeded, the tree must reopen with
//! exactly that state.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ringtree::io::{SimDirect, SimStorage, Storage};
use ringtree::{
    Blake3, CheckpointPolicy, Config, ConsistencyProof, FlushPolicy, Hash, LeanImt, Proof,
    Snapshot, Tiering, Tree,
};

/// The targets, as named under `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [&str; 4] = [
    "wal_recovery",
    "checkpoint_load",
    "proof_decode",
    "consistency_decode",
];

/// The body of target `name`.
pub fn body(name: &str) -> fn(&[u8]) {
    match name {
        "wal_recovery" => wal_recovery,
        "checkpoint_load" => checkpoint_load,
        "proof_decode" => proof_decode,
        "consistency_decode" => consistency_decode,
        _ => panic!("no fuzz target {name}"),
    }
}

type T = Tree<Blake3, 4, 32>;

/// The tree's directory on the simulated disk.
const DIR: &str = "/tree";
/// Where the tree keeps its files: the directory itself, the log's
/// segments and the checkpoint's shard files (the storage lists files,
/// not directories).
const SUBDIRS: [&str; 3] = ["", "wal", "shards"];
/// Every this many nodes, one is read: a node of every stored chunk (the
/// unit a read checks) as long as chunks hold at least this many.
const READ_EVERY: usize = 16;
/// Leaves of the template before its first checkpoint, inserted in batches.
const BATCHED: u64 = 256;
/// Leaves between the two checkpoints, inserted one by one.
const BETWEEN: u64 = 64;
/// Leaves after the last checkpoint, inserted one by one: the log the
/// recovery replays, across segment boundaries.
const AFTER: u64 = 160;

/// Leaf `i`: a fixed pseudo-random value (splitmix64).
pub fn leaf(i: u64) -> Hash {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5151_5151;
    let mut out = [0u8; 32];
    for part in out.chunks_exact_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        part.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// The configuration of the template and of every fuzzed open: small
/// segments (so the log spans several) and a small log buffer (so an open
/// allocates little), checkpoints only on request.
fn config(sim: &SimStorage) -> Config {
    Config::new(DIR)
        .storage(Arc::new(sim.clone()))
        .segment_size(16 << 10)
        .buffer_capacity(16 << 10)
        .spare_segments(2)
        .checkpoint(CheckpointPolicy::Manual)
}

/// Every file of the template, by path, sorted.
struct Template {
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

/// Builds the template tree. Inserts are flushed by hand, so the log's
/// groups, and with them every file's layout, are the same in every run.
fn build_template() -> Template {
    let sim = SimStorage::new(1);
    let t = T::open_blocking(config(&sim).flush(FlushPolicy::Manual))
        .expect("template: open a new tree");
    futures::executor::block_on(async {
        let batch: Vec<Hash> = (0..BATCHED).map(leaf).collect();
        for c in batch.chunks(32) {
            t.insert_many(c).await?;
            t.flush().await?;
        }
        t.checkpoint().await?;
        for i in BATCHED..BATCHED + BETWEEN {
            t.insert(leaf(i)).await?;
            if i % 8 == 7 {
                t.flush().await?;
            }
        }
        t.checkpoint().await?;
        for i in BATCHED + BETWEEN..BATCHED + BETWEEN + AFTER {
            t.insert(leaf(i)).await?;
            if i % 8 == 7 {
                t.flush().await?;
            }
        }
        t.close().await
    })
    .expect("template: build the tree");
    let mut files = Vec::new();
    for sub in SUBDIRS {
        let dir = if sub.is_empty() {
            PathBuf::from(DIR)
        } else {
            Path::new(DIR).join(sub)
        };
        let Ok(names) = sim.list(&dir) else { continue };
        for name in names {
            let path = dir.join(name);
            if let Some(bytes) = sim.live_bytes(&path) {
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    // The log makes its next segment ahead of need on a thread of its own,
    // which a close abandons wherever it got: whether that segment (or its
    // temporary file) exists is a matter of timing. Both are left out, so
    // that every process fuzzes the same files: any log file not named as
    // a segment, and the last segment if nothing follows its 4 KiB header.
    let wal = Path::new(DIR).join("wal");
    files.retain(|(p, _)| !p.starts_with(&wal) || p.extension().is_some_and(|e| e == "wal"));
    let segments = files.iter().filter(|(p, _)| p.starts_with(&wal)).count();
    if let Some(last) = files.iter().rposition(|(p, _)| p.starts_with(&wal))
        && segments > 1
        && files[last].1.iter().skip(4096).all(|&b| b == 0)
    {
        files.remove(last);
    }
    Template { files }
}

/// The template's files a target damages: the log's segments, or every
/// other file (manifest, identity record, shard files) but the lock.
fn candidates(log: bool) -> Vec<usize> {
    let wal = Path::new(DIR).join("wal");
    template()
        .files
        .iter()
        .enumerate()
        .filter(|(_, (p, _))| p.starts_with(&wal) == log && !p.ends_with("LOCK"))
        .map(|(i, _)| i)
        .collect()
}

fn log_files() -> &'static [usize] {
    static FILES: OnceLock<Vec<usize>> = OnceLock::new();
    FILES.get_or_init(|| candidates(true))
}

fn checkpoint_files() -> &'static [usize] {
    static FILES: OnceLock<Vec<usize>> = OnceLock::new();
    FILES.get_or_init(|| candidates(false))
}

/// How far a file target's input got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Too short to name a damage.
    Nothing,
    /// The open failed.
    Refused,
    /// The tree opened; some later step failed.
    Opened,
    /// Every step succeeded (and with option bit 7 the tree reopened with
    /// the same state).
    Clean,
}

/// Fuzz target `wal_recovery`: one log segment damaged (see the module
/// docs for the input layout).
pub fn wal_recovery(data: &[u8]) {
    damaged_open(log_files(), data);
}

/// Fuzz target `checkpoint_load`: the manifest, the identity record or one
/// shard-family file damaged.
pub fn checkpoint_load(data: &[u8]) {
    damaged_open(checkpoint_files(), data);
}

/// How far input `data` of file target `name` gets.
pub fn reach(name: &str, data: &[u8]) -> Reached {
    match name {
        "wal_recovery" => damaged_open(log_files(), data),
        "checkpoint_load" => damaged_open(checkpoint_files(), data),
        _ => panic!("{name} is not a file target"),
    }
}

/// The number of files target `name` chooses from.
pub fn file_count(name: &str) -> usize {
    match name {
        "wal_recovery" => log_files().len(),
        "checkpoint_load" => checkpoint_files().len(),
        _ => panic!("{name} is not a file target"),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(w)
}

/// The damaged file (`None`: removed) that `data` makes of `orig`.
fn damage(orig: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let at = || u32_at(data, 2) as usize % (orig.len() + 1);
    let payload = data.get(6..).unwrap_or(&[]);
    match data[0] & 3 {
        0 => Some(data[2..].to_vec()),
        1 => {
            let (off, mut b) = (at(), orig.to_vec());
            if b.len() < off + payload.len() {
                b.resize(off + payload.len(), 0);
            }
            b[off..off + payload.len()].copy_from_slice(payload);
            Some(b)
        }
        2 => {
            let mut b = orig[..at()].to_vec();
            b.extend_from_slice(payload);
            Some(b)
        }
        _ => None,
    }
}

fn damaged_open(choices: &[usize], data: &[u8]) -> Reached {
    if data.len() < 2 || choices.is_empty() {
        return Reached::Nothing;
    }
    let files = &template().files;
    let target = choices[data[1] as usize % choices.len()];
    let opts = data[0];
    let sim = SimStorage::new(1);
    for (i, (path, orig)) in files.iter().enumerate() {
        let bytes = if i == target {
            match damage(orig, data) {
                Some(b) => b,
                None => continue,
            }
        } else {
            orig.clone()
        };
        write_file(&sim, path, &bytes);
    }
    sim.set_direct(match (opts >> 5) & 3 {
        1 => SimDirect::Unsupported,
        2 => SimDirect::Refused,
        _ => SimDirect::Aligned,
    });
    let cfg = config(&sim)
        .verify_on_open(opts & 4 != 0)
        .tiering(Tiering {
            pin_above_level: if opts & 8 != 0 { 0 } else { usize::MAX },
        })
        .direct_io(opts & 16 == 0);
    let Ok(tree) = T::open_blocking(cfg.clone()) else {
        return Reached::Refused;
    };
    let full = opts & 0x80 != 0;
    let Some((size, root)) = exercise(&tree, full) else {
        return Reached::Opened;
    };
    if !full {
        return Reached::Clean;
    }
    // Everything above succeeded: what the close made durable reopens.
    let again = T::open_blocking(cfg.verify_on_open(true))
        .unwrap_or_else(|e| panic!("a cleanly closed tree fails to reopen: {e}"));
    assert_eq!(again.size(), size, "reopened with another size");
    assert_eq!(again.root(), Some(root), "reopened with another root");
    let _ = futures::executor::block_on(again.close());
    Reached::Clean
}

/// Writes `bytes` as the file at `path` of the simulated disk, synced.
fn write_file(sim: &SimStorage, path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a file's directory");
    sim.create_dir_all(dir)
        .expect("simulated disk: create a directory");
    let f = sim.open(path, true).expect("simulated disk: create a file");
    if !bytes.is_empty() {
        f.write_at(0, &[bytes]).expect("simulated disk: write");
    }
    f.sync_data().expect("simulated disk: sync");
}

/// Uses an opened tree: reads a node of every chunk, proves and checks
/// leaves, inserts a leaf and awaits it, checkpoints (if `checkpoint`) and
/// closes. Any step may fail on damage, but what succeeds must be right.
/// Returns the size and root the tree closed with if every step succeeded.
fn exercise(tree: &T, checkpoint: bool) -> Option<(u64, Hash)> {
    let mut clean = true;
    let size = tree.size();
    let root = tree.root();
    assert_eq!(root.is_some(), size > 0, "a root exactly when leaves");
    let snap = tree.snapshot();
    assert_eq!(
        (snap.size(), snap.root()),
        (size, root),
        "snapshot of the tree"
    );
    let arity = snap.arity() as u64;
    for level in 0..=snap.depth() {
        let len = snap.level_len(level);
        if level > 0 {
            let below = snap.level_len(level - 1);
            assert_eq!(len, below.div_ceil(arity), "level {level}'s length");
        }
        for i in (0..len).step_by(READ_EVERY).chain(len.checked_sub(1)) {
            clean &= snap.node(level, i).is_ok();
        }
    }
    if size > 0 {
        assert_eq!(snap.level_len(snap.depth()), 1, "a single top node");
    }
    if let Some(root) = root {
        for i in [0, size / 2, size - 1] {
            match snap.proof(i) {
                Ok(p) => {
                    if let Err(e) = p.verify_at(&Blake3, &root, size) {
                        panic!("the tree's proof of leaf {i} fails against its root: {e}");
                    }
                }
                Err(_) => clean = false,
            }
        }
        match snap.consistency_proof(size) {
            Ok(c) => {
                if let Err(e) = c.verify_at(&Blake3, &root, size, &root, size) {
                    panic!("the tree's consistency proof with itself fails: {e}");
                }
            }
            Err(_) => clean = false,
        }
    }
    let inserted = futures::executor::block_on(async {
        let ins = tree.insert([0xA5; 32]).await?;
        ins.durable.await?;
        Ok::<_, ringtree::Error>((ins.index, ins.root))
    });
    let new_root = match inserted {
        Ok((index, root)) => {
            assert_eq!(index, size, "the inserted leaf's index");
            assert_eq!(tree.root(), Some(root), "the root after the insert");
            Some(root)
        }
        Err(_) => None,
    };
    if checkpoint {
        clean &= futures::executor::block_on(tree.checkpoint()).is_ok();
    }
    clean &= futures::executor::block_on(tree.close()).is_ok();
    new_root.filter(|_| clean).map(|r| (size + 1, r))
}

/// A tree the proof targets check decoded proofs against: its snapshot and
/// the root of each of its prefixes.
struct Fixture {
    arity: usize,
    snap: Snapshot,
    /// `prefix_roots[k - 1]`: the root of the first `k` leaves.
    prefix_roots: Vec<Hash>,
}

impl Fixture {
    fn new<const N: usize>(size: u64) -> Self {
        let mut tree = LeanImt::<Blake3, N, 32>::new(Blake3);
        let prefix_roots = (0..size)
            .map(|i| tree.insert(leaf(i)).expect("fixture insert"))
            .collect();
        Fixture {
            arity: N,
            snap: tree.snapshot(),
            prefix_roots,
        }
    }
    fn size(&self) -> u64 {
        self.snap.size()
    }
    fn root(&self) -> Hash {
        self.snap.root().expect("fixtures are not empty")
    }
}

/// Trees of arity 2, 4 and 17 (more children than a group holds without
/// allocating), of sizes that leave partial groups and lifted nodes.
fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        vec![
            Fixture::new::<2>(37),
            Fixture::new::<4>(300),
            Fixture::new::<17>(300),
            Fixture::new::<4>(1),
        ]
    })
}

/// Fuzz target `proof_decode`: `Proof::from_bytes`, then verification
/// against fixed roots and real trees' roots.
///
/// A decoded proof re-encodes to the same bytes. A proof that verifies
/// against a real tree's root and size, with that tree's arity, is the
/// proof the tree itself makes: every sibling and the leaf go into the
/// root, so any other would be a hash collision or a verifier that skips
/// part of the proof.
pub fn proof_decode(data: &[u8]) {
    let p = match Proof::from_bytes(data) {
        Ok(p) => p,
        Err(_) => {
            serde_text::<Proof>(data);
            return;
        }
    };
    assert_eq!(p.to_bytes(), data, "a decoded proof re-encodes differently");
    assert!(
        p.leaf_index() < p.tree_size(),
        "decoded index outside the tree"
    );
    let _ = p.verify(&Blake3, &[0; 32]);
    let _ = p.verify(&Blake3, &p.leaf());
    let _ = p.verify_at(&Blake3, &p.leaf(), 1);
    for f in fixtures() {
        let root = f.root();
        let _ = p.verify(&Blake3, &root);
        if p.verify_at(&Blake3, &root, f.size()).is_ok() && p.arity() == f.arity {
            let real = f.snap.proof(p.leaf_index()).expect("fixture proof");
            assert_eq!(p, real, "a proof other than the tree's verifies");
        }
    }
    serde_round_trip(&p);
}

/// Fuzz target `consistency_decode`: `ConsistencyProof::from_bytes`, then
/// verification against fixed roots and real trees' roots, with the same
/// checks as [`proof_decode`].
pub fn consistency_decode(data: &[u8]) {
    let c = match ConsistencyProof::from_bytes(data) {
        Ok(c) => c,
        Err(_) => {
            serde_text::<ConsistencyProof>(data);
            return;
        }
    };
    assert_eq!(c.to_bytes(), data, "a decoded proof re-encodes differently");
    assert!(
        c.old_size() >= 1 && c.old_size() <= c.new_size(),
        "decoded sizes out of order"
    );
    let _ = c.verify(&Blake3, &[0; 32], &[0; 32]);
    for f in fixtures() {
        let root = f.root();
        let _ = c.verify(&Blake3, &root, &root);
        let _ = c.verify(&Blake3, &f.prefix_roots[0], &root);
        if c.new_size() != f.size() || c.old_size() > f.size() {
            continue;
        }
        let old_root = f.prefix_roots[c.old_size() as usize - 1];
        let _ = c.verify(&Blake3, &old_root, &[0; 32]);
        if c.verify_at(&Blake3, &old_root, c.old_size(), &root, f.size())
            .is_ok()
            && c.arity() == f.arity
        {
            let real = f
                .snap
                .consistency_proof(c.old_size())
                .expect("fixture proof");
            assert_eq!(
                c, real,
                "a consistency proof other than the tree's verifies"
            );
        }
    }
    serde_round_trip(&c);
}

/// With serde: a proof serializes (as hex in JSON) and parses back equal.
#[cfg(feature = "serde")]
fn serde_round_trip<P>(p: &P)
where
    P: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(p).expect("a proof serializes");
    let back: P = serde_json::from_str(&json).expect("a serialized proof parses");
    assert_eq!(&back, p, "a proof's JSON parses to another proof");
}

#[cfg(not(feature = "serde"))]
fn serde_round_trip<P>(_: &P) {}

/// With serde: undecodable bytes, as text, given to the JSON parser (the
/// hex decoder sees arbitrary strings, multi-byte characters included).
#[cfg(feature = "serde")]
fn serde_text<P: serde::de::DeserializeOwned>(data: &[u8]) {
    let text = serde_json::Value::String(String::from_utf8_lossy(data).into_owned());
    let _ = serde_json::from_value::<P>(text);
}

#[cfg(not(feature = "serde"))]
fn serde_text<P>(_: &[u8]) {}

/// Seed inputs of target `name`, by file name: the template's files (for
/// the file targets, unchanged, replaced whole, or cut) and real encoded
/// proofs.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    match name {
        "wal_recovery" | "checkpoint_load" => {
            let files = if name == "wal_recovery" {
                log_files()
            } else {
                checkpoint_files()
            };
            for (k, &i) in files.iter().enumerate() {
                let (path, bytes) = &template().files[i];
                let file = path
                    .strip_prefix(DIR)
                    .expect("under the tree's directory")
                    .to_string_lossy()
                    .replace('/', "-");
                let k = k as u8;
                // Unchanged (an empty overwrite), plain and with every check.
                out.push((format!("seed-{file}-same"), vec![1, k, 0, 0, 0, 0]));
                out.push((
                    format!("seed-{file}-same-verify"),
                    vec![1 | 4, k, 0, 0, 0, 0],
                ));
                out.push((
                    format!("seed-{file}-same-full"),
                    vec![1 | 0x80, k, 0, 0, 0, 0],
                ));
                // Replaced by its own bytes, and cut in half.
                let mut whole = vec![0, k];
                whole.extend_from_slice(bytes);
                out.push((format!("seed-{file}-whole"), whole));
                let half = (bytes.len() / 2) as u32;
                let mut cut = vec![2, k];
                cut.extend_from_slice(&half.to_le_bytes());
                out.push((format!("seed-{file}-half"), cut));
                out.push((format!("seed-{file}-removed"), vec![3, k]));
            }
        }
        "proof_decode" | "consistency_decode" => {
            for f in fixtures() {
                let size = f.size();
                let mut at: Vec<u64> = vec![1, 2, size / 3, size / 2, size - 1, size];
                at.retain(|&k| k >= 1 && k <= size);
                at.dedup();
                for k in at {
                    let (bytes, what) = if name == "proof_decode" {
                        (
                            f.snap.proof(k - 1).expect("fixture proof").to_bytes(),
                            "leaf",
                        )
                    } else {
                        let c = f.snap.consistency_proof(k).expect("fixture proof");
                        (c.to_bytes(), "old")
                    };
                    out.push((format!("seed-arity{}-size{size}-{what}{k}", f.arity), bytes));
                }
            }
        }
        _ => panic!("no fuzz target {name}"),
    }
    out
}
