//! A Semaphore group kept durable: identity commitments (`poseidon2` of a
//! member's public key, as Semaphore V4 computes them) are added by many
//! async tasks at once, each acknowledged once it is on disk; then a
//! member's proof of membership is printed in zk-kit's shape and the group
//! root is checked against zk-kit's own `LeanIMT` (and the proof against
//! its `verifyProof`) when Node and `interop/zkkit` are at hand.
//!
//! `cargo run --release --features poseidon --example semaphore_group [-- DIR [MEMBERS]]`
//! (default `target/ringtree-semaphore`, 1000 members).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ringtree::{Config, Hash, Hasher, Poseidon, Proof, Tree};

/// The group: a binary LeanIMT over Poseidon, as zk-kit's.
type Group = Tree<Poseidon, 2, 32>;

/// A member's public key, two field elements (a stand-in for a Baby
/// Jubjub point: any values below the field modulus).
fn public_key(member: u64) -> (Hash, Hash) {
    let mut x = *blake3::hash(&member.to_le_bytes()).as_bytes();
    let mut y = *blake3::hash(&[member.to_le_bytes(), [1; 8]].concat()).as_bytes();
    // Clear the top bits: below 2^253, so below the modulus.
    x[0] &= 0x1f;
    y[0] &= 0x1f;
    (x, y)
}

/// Semaphore's identity commitment: `poseidon2([x, y])`.
fn commitment(member: u64) -> Hash {
    let (x, y) = public_key(member);
    Poseidon.hash_children(&[x, y])
}

fn hex(h: &Hash) -> String {
    let mut s = String::from("0x");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Runs `node` on a script of `interop/zkkit`, if Node and the project's
/// packages are installed (`npm ci` there); `None` otherwise.
fn zk_kit(args: &[&str]) -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/zkkit");
    if !dir.join("node_modules/@zk-kit/lean-imt").exists() {
        return None;
    }
    let out = Command::new("node")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + if out.status.success() {
                ""
            } else {
                " (failed)"
            },
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "target/ringtree-semaphore".into());
    let members: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let _ = std::fs::remove_dir_all(&dir);

    let group = Arc::new(Group::open(Config::new(&dir)).await?);
    // Members join concurrently; a join is acknowledged once durable.
    let joins: Vec<_> = (0..members)
        .map(|m| {
            let group = group.clone();
            tokio::spawn(async move {
                let ins = group.insert(commitment(m)).await?;
                ins.durable.await?;
                Ok::<_, ringtree::Error>((m, ins.index))
            })
        })
        .collect();
    let mut index_of = vec![0; members as usize];
    for j in joins {
        let (m, index) = j.await??;
        index_of[m as usize] = index;
    }
    let root = group.root().expect("members joined");
    println!(
        "{members} members joined, every join durable; group root {}",
        hex(&root)
    );

    // Closed and reopened: the group is what was acknowledged.
    group.close().await?;
    drop(group);
    let group = Group::open(Config::new(&dir)).await?;
    assert_eq!(group.root(), Some(root));

    // A member proves membership with zk-kit's proof shape.
    let member = members / 2;
    let snap = group.snapshot();
    let proof = snap.proof(index_of[member as usize])?;
    proof.verify_at(&Poseidon, &root, snap.size())?;
    let zk = proof.to_zk_kit(root)?;
    assert_eq!(Proof::from_zk_kit(&zk, snap.size())?, proof);
    let json = serde_json::json!({
        "root": hex(&zk.root),
        "leaf": hex(&zk.leaf),
        "index": zk.index,
        "siblings": zk.siblings.iter().map(hex).collect::<Vec<_>>(),
    });
    println!("member {member}'s proof of membership (zk-kit LeanIMTMerkleProof):\n{json:#}");

    // zk-kit's own tree and verifier, over the leaves in index order.
    let leaves: Vec<String> = (0..snap.size())
        .map(|i| snap.leaf(i).map(|l| hex(&l)))
        .collect::<Result<_, _>>()?;
    let tmp = std::env::temp_dir().join(format!("ringtree-semaphore-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let leaves_file = tmp.join("leaves.json");
    std::fs::write(&leaves_file, serde_json::to_vec(&leaves)?)?;
    let mut case = json.clone();
    case["expect"] = true.into();
    let proofs_file = tmp.join("proofs.json");
    std::fs::write(&proofs_file, serde_json::to_vec(&[case])?)?;
    match (
        zk_kit(&["root.mjs", leaves_file.to_str().unwrap()]),
        zk_kit(&["verify.mjs", proofs_file.to_str().unwrap()]),
    ) {
        (Some(zk_root), Some(verdict)) => {
            println!("zk-kit's root of the same members: {zk_root}; its verifyProof: {verdict}");
            assert_eq!(zk_root, hex(&root), "zk-kit's root differs");
            assert_eq!(verdict, "ok 1", "zk-kit refused the proof");
        }
        _ => println!("(zk-kit check skipped: run `npm ci` in interop/zkkit with Node 20)"),
    }
    std::fs::remove_dir_all(&tmp)?;
    group.close().await?;
    Ok(())
}
