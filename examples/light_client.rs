//! A light client: it holds only a trusted root and size (say, from a signed
//! tree head) and checks proofs it receives as bytes.
//!
//! `cargo run --release --example light_client`

use ringtree::{Blake3, ConsistencyProof, Hash, LeanImt, Proof};

/// What the client trusts: a tree head.
#[derive(Clone, Copy)]
struct TreeHead {
    size: u64,
    root: Hash,
}

/// The client: no tree, only heads and proofs as bytes.
struct LightClient {
    trusted: TreeHead,
}

impl LightClient {
    /// Is `leaf` at `index` in the trusted tree?
    fn check_inclusion(&self, leaf: Hash, index: u64, proof: &[u8]) -> Result<(), ringtree::Error> {
        let p = Proof::from_bytes(proof)?;
        if p.leaf() != leaf || p.leaf_index() != index || p.arity() != 4 {
            return Err(ringtree::Error::InvalidProof("proof is for another leaf"));
        }
        p.verify_at(&Blake3, &self.trusted.root, self.trusted.size)
    }

    /// Moves to a newer head if the server proves the old tree is its prefix.
    fn advance(&mut self, new: TreeHead, proof: &[u8]) -> Result<(), ringtree::Error> {
        let c = ConsistencyProof::from_bytes(proof)?;
        c.verify_at(
            &Blake3,
            &self.trusted.root,
            self.trusted.size,
            &new.root,
            new.size,
        )?;
        self.trusted = new;
        Ok(())
    }
}

fn leaf(i: u64) -> Hash {
    *blake3::hash(format!("event {i}").as_bytes()).as_bytes()
}

fn main() -> Result<(), ringtree::Error> {
    // The server side: a tree that grows.
    let mut server = LeanImt::<Blake3, 4, 32>::new(Blake3);
    let first: Vec<Hash> = (0..1000).map(leaf).collect();
    let root = server.insert_many(&first)?;
    let mut client = LightClient {
        trusted: TreeHead { size: 1000, root },
    };
    println!(
        "client trusts the head (size 1000, root {:02x?}..)",
        &root[..4]
    );

    // Inclusion, as bytes over the wire.
    let bytes = server.snapshot().proof(421)?.to_bytes();
    client.check_inclusion(leaf(421), 421, &bytes)?;
    println!("leaf 421 included: proof of {} bytes verified", bytes.len());
    assert!(client.check_inclusion(leaf(422), 421, &bytes).is_err());
    let mut forged = bytes.clone();
    forged[70] ^= 1;
    assert!(client.check_inclusion(leaf(421), 421, &forged).is_err());
    println!("another leaf and a flipped bit are both rejected");

    // The tree grows; the client advances only with a consistency proof.
    let more: Vec<Hash> = (1000..2500).map(leaf).collect();
    let new_root = server.insert_many(&more)?;
    let new_head = TreeHead {
        size: 2500,
        root: new_root,
    };
    let c = server.snapshot().consistency_proof(1000)?.to_bytes();
    let mut bad = c.clone();
    bad[80] ^= 0x10;
    assert!(client.advance(new_head, &bad).is_err());
    client.advance(new_head, &c)?;
    println!(
        "advanced to size 2500 with a {}-byte consistency proof (a tampered one was rejected)",
        c.len()
    );
    let p = server.snapshot().proof(2222)?.to_bytes();
    client.check_inclusion(leaf(2222), 2222, &p)?;
    println!("leaf 2222 included in the new head");
    Ok(())
}
