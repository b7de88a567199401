//! The shipped hashers against the implementations their users run:
//! Poseidon against zk-kit's LeanIMT and poseidon-lite, Keccak-256 against
//! ethers, SHA-256 against Node's crypto (vectors in `tests/vectors/`,
//! made by `interop/zkkit/gen.mjs`); converted proofs checked by zk-kit's
//! own `verifyProof`; the serial and parallel batch paths; leaves outside
//! the field; the persistent tree with every hasher.
#![cfg(all(feature = "poseidon", feature = "keccak", feature = "sha256"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use ringtree::{
    Blake3, Config, Error, Hash, Hasher, Keccak256, LeanImt, Poseidon, Proof, Sha256, Tree,
    ZkKitProof,
};
use serde_json::Value;

fn vectors() -> &'static Value {
    static V: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/zkkit.json");
        serde_json::from_slice(&std::fs::read(&path).expect("vectors")).expect("JSON")
    })
}

fn from_hex(s: &str) -> Hash {
    let s = s.strip_prefix("0x").expect("0x");
    assert_eq!(s.len(), 64, "{s}");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn hex(h: &Hash) -> String {
    let mut s = String::from("0x");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn from_dec(s: &str) -> Hash {
    let mut out = [0u8; 32];
    for c in s.bytes() {
        assert!(c.is_ascii_digit(), "{s}");
        let mut carry = u32::from(c - b'0');
        for b in out.iter_mut().rev() {
            let v = u32::from(*b) * 10 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "{s} exceeds 256 bits");
    }
    out
}

/// `a + b mod p` for `a, b < p` (big-endian).
fn add_mod(a: &Hash, b: &Hash, p: &Hash) -> Hash {
    let mut sum = [0u8; 33];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let v = u16::from(a[i]) + u16::from(b[i]) + carry;
        sum[i + 1] = v as u8;
        carry = v >> 8;
    }
    sum[0] = carry as u8;
    let mut pp = [0u8; 33];
    pp[1..].copy_from_slice(p);
    if sum >= pp {
        let mut borrow = 0i16;
        for i in (0..33).rev() {
            let v = i16::from(sum[i]) - i16::from(pp[i]) - borrow;
            sum[i] = v.rem_euclid(256) as u8;
            borrow = i16::from(v < 0);
        }
    }
    sum[1..].try_into().unwrap()
}

/// Leaves `0..n` by the vectors' rule: leaf `i` is `(i + 1) * M mod p`.
fn leaves(n: usize) -> Vec<Hash> {
    let v = vectors();
    let p = from_hex(v["modulus"].as_str().unwrap());
    let m = from_hex(v["M"].as_str().unwrap());
    let mut out = Vec::with_capacity(n);
    let mut x = m;
    for _ in 0..n {
        out.push(x);
        x = add_mod(&x, &m, &p);
    }
    out
}

/// Poseidon with the batch path kept on one thread.
#[derive(Clone, Default)]
struct SerialPoseidon;

impl Hasher for SerialPoseidon {
    const MAX_ARITY: usize = Poseidon::MAX_ARITY;
    fn id(&self) -> &str {
        "poseidon-serial"
    }
    fn check_leaf(&self, leaf: &Hash) -> Result<(), &'static str> {
        Poseidon.check_leaf(leaf)
    }
    fn hash_children(&self, children: &[Hash]) -> Hash {
        Poseidon.hash_children(children)
    }
    fn hash_groups(&self, children: &[Hash], arity: usize, out: &mut [Hash]) {
        Poseidon.hash_groups(children, arity, out)
    }
}

#[test]
fn poseidon_binary_roots_equal_zk_kit_at_every_size_to_2000() {
    let want = vectors()["poseidon2_incremental"].as_array().unwrap();
    assert_eq!(want.len(), 2000);
    let leaves = leaves(2000);
    let mut tree = LeanImt::<Poseidon, 2, 32>::new(Poseidon);
    for (i, (leaf, root)) in leaves.iter().zip(want).enumerate() {
        let got = tree.insert(*leaf).unwrap();
        assert_eq!(hex(&got), root.as_str().unwrap(), "size {}", i + 1);
    }
}

#[test]
fn poseidon_binary_roots_equal_zk_kit_at_random_sizes_serial_and_parallel() {
    let mut cases: Vec<(usize, String)> = vectors()["poseidon2_random"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let size = c["size"].as_u64().unwrap() as usize;
            (size, c["root"].as_str().unwrap().to_owned())
        })
        .collect();
    cases.sort();
    assert_eq!(cases.last().unwrap().0, 100_000);
    let leaves = leaves(100_000);
    let mut parallel = LeanImt::<Poseidon, 2, 32>::new(Poseidon);
    let mut serial = LeanImt::<SerialPoseidon, 2, 32>::new(SerialPoseidon);
    let mut at = 0;
    for (size, root) in cases {
        let p = parallel.insert_many(&leaves[at..size]).unwrap();
        let s = serial.insert_many(&leaves[at..size]).unwrap();
        assert_eq!(hex(&p), root, "size {size}, parallel");
        assert_eq!(p, s, "size {size}: serial and parallel differ");
        at = size;
    }
}

#[test]
fn poseidon_k_inputs_equal_poseidon_lite() {
    let cases = vectors()["poseidon_k"].as_object().unwrap();
    let mut checked = 0;
    for (k, list) in cases {
        let k: usize = k.parse().unwrap();
        if k < 2 {
            // One child is lifted, never hashed.
            continue;
        }
        for c in list.as_array().unwrap() {
            let inputs: Vec<Hash> = c["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| from_hex(x.as_str().unwrap()))
                .collect();
            assert_eq!(inputs.len(), k);
            let out = Poseidon.hash_children(&inputs);
            assert_eq!(hex(&out), c["output"].as_str().unwrap(), "poseidon{k}");
            let mut batch = [[0u8; 32]; 1];
            Poseidon.hash_groups(&inputs, k, &mut batch);
            assert_eq!(batch[0], out);
            checked += 1;
        }
    }
    assert_eq!(checked, 33);
}

/// The roots of `tests/vectors/zkkit.json` `section` for arity `N`.
fn check_nary<H: Hasher, const N: usize>(hasher: H, section: &str) {
    let entry = vectors()[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["arity"].as_u64() == Some(N as u64))
        .unwrap_or_else(|| panic!("{section} N = {N}"));
    let roots = entry["roots"].as_array().unwrap();
    let max = roots
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .max()
        .unwrap();
    let leaves = leaves(max as usize);
    let mut tree = LeanImt::<H, N, 32>::new(hasher.clone());
    let mut batch = LeanImt::<H, N, 32>::new(hasher);
    let mut at = 0;
    for r in roots {
        let size = r["size"].as_u64().unwrap() as usize;
        for leaf in &leaves[at..size] {
            tree.insert(*leaf).unwrap();
        }
        batch.insert_many(&leaves[at..size]).unwrap();
        let want = r["root"].as_str().unwrap();
        assert_eq!(
            hex(&tree.root().unwrap()),
            want,
            "{section} N = {N} size {size}"
        );
        assert_eq!(
            batch.root(),
            tree.root(),
            "{section} N = {N} size {size} batch"
        );
        at = size;
    }
}

#[test]
fn poseidon_nary_roots_equal_poseidon_lite() {
    check_nary::<Poseidon, 3>(Poseidon, "nary_poseidon");
    check_nary::<Poseidon, 4>(Poseidon, "nary_poseidon");
    check_nary::<Poseidon, 5>(Poseidon, "nary_poseidon");
    check_nary::<Poseidon, 8>(Poseidon, "nary_poseidon");
    check_nary::<Poseidon, 12>(Poseidon, "nary_poseidon");
}

#[test]
fn keccak_roots_equal_ethers() {
    check_nary::<Keccak256, 2>(Keccak256, "keccak");
    check_nary::<Keccak256, 3>(Keccak256, "keccak");
    check_nary::<Keccak256, 4>(Keccak256, "keccak");
    check_nary::<Keccak256, 16>(Keccak256, "keccak");
}

#[test]
fn sha256_roots_equal_node_crypto() {
    check_nary::<Sha256, 2>(Sha256, "sha256");
    check_nary::<Sha256, 3>(Sha256, "sha256");
    check_nary::<Sha256, 4>(Sha256, "sha256");
    check_nary::<Sha256, 16>(Sha256, "sha256");
}

fn modulus() -> Hash {
    from_hex(vectors()["modulus"].as_str().unwrap())
}

#[test]
fn a_leaf_outside_the_field_is_refused_and_nothing_is_inserted() {
    let p = modulus();
    let mut tree = LeanImt::<Poseidon, 2, 32>::new(Poseidon);
    let good = leaves(5);
    tree.insert_many(&good[..3]).unwrap();
    let root = tree.root();
    for bad in [p, [0xff; 32]] {
        match tree.insert(bad) {
            Err(Error::InvalidLeaf { index: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        let batch = [good[3], good[4], bad, good[0]];
        match tree.insert_many(&batch) {
            Err(e @ Error::InvalidLeaf { index: 5, .. }) => {
                assert!(e.to_string().contains("leaf 5"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((tree.size(), tree.root()), (3, root));
    }
    // p - 1 is a field element.
    let mut top = p;
    top[31] -= 1;
    tree.insert(top).unwrap();
    assert_eq!(tree.size(), 4);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Open, insert, refuse a bad leaf, checkpoint, reopen, prove, insert
/// more, reopen again: the persistent tree with hasher `H`.
fn persistent<H: Hasher + Default, const N: usize>(dir: &Path, check_bad: Option<Hash>) {
    let rt = rt();
    let leaves = leaves(3000);
    let mut model = LeanImt::<H, N, 32>::new(H::default());
    rt.block_on(async {
        let tree = Tree::<H, N, 32>::open(Config::new(dir)).await.unwrap();
        for chunk in leaves[..1000].chunks(97) {
            tree.insert_many(chunk)
                .await
                .unwrap()
                .durable
                .await
                .unwrap();
        }
        for leaf in &leaves[1000..1100] {
            tree.insert(*leaf).await.unwrap();
        }
        if let Some(bad) = check_bad {
            assert!(matches!(
                tree.insert(bad).await,
                Err(Error::InvalidLeaf { index: 1100, .. })
            ));
            assert!(matches!(
                tree.insert_many(&[leaves[0], bad]).await,
                Err(Error::InvalidLeaf { index: 1101, .. })
            ));
            assert_eq!(tree.size(), 1100);
        }
        tree.checkpoint().await.unwrap();
        tree.insert_many(&leaves[1100..2000]).await.unwrap();
        tree.close().await.unwrap();
    });
    model.insert_many(&leaves[..2000]).unwrap();
    rt.block_on(async {
        let tree = Tree::<H, N, 32>::open(Config::new(dir)).await.unwrap();
        assert_eq!((tree.size(), tree.root()), (2000, model.root()));
        let snap = tree.snapshot();
        for i in [0, 1, 999, 1100, 1999] {
            let proof = snap.proof(i).unwrap();
            proof
                .verify_at(&H::default(), &model.root().unwrap(), 2000)
                .unwrap();
        }
        tree.insert_many(&leaves[2000..]).await.unwrap();
        tree.checkpoint().await.unwrap();
        tree.close().await.unwrap();
    });
    model.insert_many(&leaves[2000..]).unwrap();
    rt.block_on(async {
        let tree = Tree::<H, N, 32>::open(Config::new(dir)).await.unwrap();
        assert_eq!((tree.size(), tree.root()), (3000, model.root()));
        tree.close().await.unwrap();
        // Another hasher is refused.
        match Tree::<Blake3, N, 32>::open(Config::new(dir)).await {
            Err(Error::ConfigMismatch { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened with another hasher"),
        }
    });
}

#[test]
fn the_persistent_tree_works_with_every_hasher() {
    let dir = tempfile::tempdir().unwrap();
    persistent::<Poseidon, 2>(&dir.path().join("poseidon2"), Some(modulus()));
    persistent::<Poseidon, 5>(&dir.path().join("poseidon5"), Some([0xff; 32]));
    persistent::<Keccak256, 2>(&dir.path().join("keccak2"), None);
    persistent::<Keccak256, 16>(&dir.path().join("keccak16"), None);
    persistent::<Sha256, 4>(&dir.path().join("sha4"), None);
}

// ---- zk-kit's own verifier ----

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/zkkit")
}

/// `node` on a script of the interop project, installing its pinned
/// packages first if they are not there.
fn node(args: &[&str]) -> std::process::Output {
    static INSTALL: Once = Once::new();
    let dir = interop_dir();
    INSTALL.call_once(|| {
        if !dir.join("node_modules/@zk-kit/lean-imt").exists() {
            let st = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .expect("npm (Node 20) is needed for the zk-kit interop tests");
            assert!(st.success(), "npm ci in {}", dir.display());
        }
    });
    Command::new("node")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("node (Node 20) is needed for the zk-kit interop tests")
}

fn zk_json(p: &ZkKitProof, expect: bool) -> Value {
    serde_json::json!({
        "root": hex(&p.root),
        "leaf": hex(&p.leaf),
        "index": p.index,
        "siblings": p.siblings.iter().map(hex).collect::<Vec<_>>(),
        "expect": expect,
    })
}

#[test]
fn zk_kit_accepts_converted_proofs_and_rejects_tampered_ones() {
    let leaves = leaves(1000);
    let mut cases = Vec::new();
    let mut refs = 0;
    for size in [1usize, 2, 3, 6, 13, 100, 1000] {
        let mut tree = LeanImt::<Poseidon, 2, 32>::new(Poseidon);
        let root = tree.insert_many(&leaves[..size]).unwrap();
        let snap = tree.snapshot();
        for index in [0, size / 2, size - 1] {
            let proof = snap.proof(index as u64).unwrap();
            let zk = proof.to_zk_kit(root).unwrap();
            // Back again: the same proof, and it verifies.
            let back = Proof::from_zk_kit(&zk, size as u64).unwrap();
            assert_eq!(back, proof);
            back.verify_at(&Poseidon, &root, size as u64).unwrap();
            // Field by field what zk-kit itself generates.
            if [6, 13, 1000].contains(&size) {
                let out = node(&[
                    "verify.mjs",
                    "--emit-reference",
                    &size.to_string(),
                    &index.to_string(),
                ]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let r: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(from_dec(r["root"].as_str().unwrap()), zk.root);
                assert_eq!(from_dec(r["leaf"].as_str().unwrap()), zk.leaf);
                assert_eq!(
                    r["index"].as_u64(),
                    Some(zk.index),
                    "size {size} index {index}"
                );
                let sib: Vec<Hash> = r["siblings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| from_dec(s.as_str().unwrap()))
                    .collect();
                assert_eq!(sib, zk.siblings);
                refs += 1;
            }
            cases.push(zk_json(&zk, true));
            let mut bad = zk.clone();
            bad.leaf = leaves[(index + 1) % 1000];
            cases.push(zk_json(&bad, false));
            if !zk.siblings.is_empty() {
                let mut bad = zk.clone();
                bad.siblings[0][31] ^= 1;
                cases.push(zk_json(&bad, false));
                let mut bad = zk.clone();
                bad.index ^= 1;
                cases.push(zk_json(&bad, false));
                // zk-kit ignores path bits past its siblings; ringtree
                // refuses them.
                let mut extra = zk.clone();
                extra.index |= 1 << zk.siblings.len();
                assert!(Proof::from_zk_kit(&extra, size as u64).is_err());
            }
        }
    }
    assert_eq!(refs, 9);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = node(&["verify.mjs", file.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zk-kit disagreed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("ok {}", cases.len())), "{text}");
}

#[test]
fn from_zk_kit_refuses_proofs_that_do_not_fit_the_size() {
    let leaves = leaves(13);
    let mut tree = LeanImt::<Poseidon, 2, 32>::new(Poseidon);
    let root = tree.insert_many(&leaves).unwrap();
    let zk = tree.snapshot().proof(12).unwrap().to_zk_kit(root).unwrap();
    assert!(Proof::from_zk_kit(&zk, 0).is_err());
    // A size whose path has more levels with siblings.
    assert!(Proof::from_zk_kit(&zk, 16).is_err());
    let mut short = zk.clone();
    short.siblings.pop();
    assert!(Proof::from_zk_kit(&short, 13).is_err());
    // Arity other than 2.
    let mut four = LeanImt::<Poseidon, 4, 32>::new(Poseidon);
    let r4 = four.insert_many(&leaves).unwrap();
    assert!(four.snapshot().proof(3).unwrap().to_zk_kit(r4).is_err());
}

/// Batches large enough to take the threaded path give the roots of
/// single inserts, for the cheap hashers too.
#[test]
fn keccak_and_sha256_batches_over_threads_equal_single_inserts() {
    let leaves = leaves(40_000);
    let mut one = LeanImt::<Keccak256, 2, 32>::new(Keccak256);
    let mut batch = LeanImt::<Keccak256, 2, 32>::new(Keccak256);
    let mut one_s = LeanImt::<Sha256, 3, 32>::new(Sha256);
    let mut batch_s = LeanImt::<Sha256, 3, 32>::new(Sha256);
    for leaf in &leaves {
        one.insert(*leaf).unwrap();
        one_s.insert(*leaf).unwrap();
    }
    // An odd split, so the second batch starts mid-group.
    batch.insert_many(&leaves[..1]).unwrap();
    batch.insert_many(&leaves[1..]).unwrap();
    batch_s.insert_many(&leaves[..7]).unwrap();
    batch_s.insert_many(&leaves[7..]).unwrap();
    assert_eq!(batch.root(), one.root());
    assert_eq!(batch_s.root(), one_s.root());
}
