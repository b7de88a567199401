//! The tree's identity record, `<dir>/IDENTITY`: what the bytes of the
//! tree's files mean (format version, arity, depth bound, hasher, chunk
//! size) and a random tree id that every log segment and manifest also
//! carries (invariant 10).
//!
//! Owns that one file. It is written once, when a tree is created, after
//! the log's first segment exists and before `open` returns: so a tree
//! that holds any acknowledged leaf always has it, and a missing record
//! beside files that hold data is damage, never a new tree.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, corruption, io_err};
use crate::imt::CHUNK_LEN;
use crate::io::Storage;
use crate::wal::format::{SEGMENT_HEADER, parse_segment_name};

pub(crate) const IDENTITY: &str = "IDENTITY";
const MAGIC: [u8; 8] = *b"RTIDENT1";
/// The on-disk format of the whole tree this build writes and reads.
pub(crate) const FORMAT: u32 = 2;
/// Longest hasher id recorded.
const MAX_HASHER_ID: usize = 64;

/// What a tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub format: u32,
    pub arity: u32,
    pub max_depth: u32,
    pub chunk_bytes: u32,
    pub hasher: String,
    pub tree_id: [u8; 16],
}

/// 16 random bytes: std's OS-seeded hash keys, mixed with the time and the
/// process id (unique, not secret).
pub(crate) fn random_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        if let Some(x) = crate::rt::random() {
            half.copy_from_slice(&x.to_le_bytes());
            continue;
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl Identity {
    /// A new tree's identity, with a fresh id.
    pub(crate) fn new(arity: usize, max_depth: usize, hasher: &str) -> Result<Self> {
        if hasher.is_empty() || hasher.len() > MAX_HASHER_ID {
            return Err(Error::Config(format!(
                "a hasher id is 1 to {MAX_HASHER_ID} bytes, {hasher:?} is {}",
                hasher.len()
            )));
        }
        Ok(Self {
            format: FORMAT,
            arity: arity as u32,
            max_depth: max_depth as u32,
            chunk_bytes: (CHUNK_LEN * 32) as u32,
            hasher: hasher.to_owned(),
            tree_id: random_id(),
        })
    }

    /// `magic [8] | format u32 | arity u32 | max depth u32 | chunk bytes
    /// u32 | tree id [16] | hasher id length u32 | hasher id | crc32c of
    /// all before u32`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.hasher.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.format.to_le_bytes());
        b.extend_from_slice(&self.arity.to_le_bytes());
        b.extend_from_slice(&self.max_depth.to_le_bytes());
        b.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        b.extend_from_slice(&self.tree_id);
        b.extend_from_slice(&(self.hasher.len() as u32).to_le_bytes());
        b.extend_from_slice(self.hasher.as_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(path: &Path, b: &[u8]) -> Result<Self> {
        const FIXED: usize = 8 + 4 * 4 + 16 + 4;
        if b.len() < FIXED + 4 {
            return Err(corruption(
                path,
                0,
                format!(
                    "identity record of {} bytes, at least {} expected",
                    b.len(),
                    FIXED + 4
                ),
            ));
        }
        if b[..8] != MAGIC {
            return Err(corruption(path, 0, "bad identity magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let n = u32_at(FIXED - 4) as usize;
        if n == 0 || n > MAX_HASHER_ID || b.len() != FIXED + n + 4 {
            return Err(corruption(
                path,
                (FIXED - 4) as u64,
                format!(
                    "identity record of {} bytes with a hasher id of {n}",
                    b.len()
                ),
            ));
        }
        let end = FIXED + n;
        let crc = crc32c::crc32c(&b[..end]);
        if crc != u32_at(end) {
            return Err(corruption(
                path,
                end as u64,
                format!(
                    "identity checksum {:#010x}, computed {crc:#010x}",
                    u32_at(end)
                ),
            ));
        }
        let hasher = std::str::from_utf8(&b[FIXED..end])
            .map_err(|_| corruption(path, FIXED as u64, "hasher id is not UTF-8"))?
            .to_owned();
        Ok(Self {
            format: u32_at(8),
            arity: u32_at(12),
            max_depth: u32_at(16),
            chunk_bytes: u32_at(20),
            tree_id: b[24..40].try_into().expect("16 bytes"),
            hasher,
        })
    }

    /// `ConfigMismatch` for the first field in which `given` differs.
    pub(crate) fn check(&self, given: &Identity, path: &Path) -> Result<()> {
        let mismatch = |field: &'static str, on_disk: String, given: String| {
            Err(Error::ConfigMismatch {
                field,
                on_disk,
                given,
                file: path.to_path_buf(),
            })
        };
        if self.format != given.format {
            return mismatch("format", self.format.to_string(), given.format.to_string());
        }
        if self.arity != given.arity {
            return mismatch("arity", self.arity.to_string(), given.arity.to_string());
        }
        if self.max_depth != given.max_depth {
            return mismatch(
                "max_depth",
                self.max_depth.to_string(),
                given.max_depth.to_string(),
            );
        }
        if self.hasher != given.hasher {
            return mismatch("hasher", self.hasher.clone(), given.hasher.clone());
        }
        if self.chunk_bytes != given.chunk_bytes {
            return mismatch(
                "chunk_size",
                self.chunk_bytes.to_string(),
                given.chunk_bytes.to_string(),
            );
        }
        Ok(())
    }
}

/// What `establish` found.
pub(crate) struct Established {
    pub identity: Identity,
    /// No identity was recorded: the tree is new (its record is written by
    /// [`record`] once its log exists).
    pub new: bool,
}

/// Reads the identity of the tree in `dir` and checks it against `want`
/// (`ConfigMismatch` naming the field), or, where there is none, makes
/// sure the directory holds no tree data (else `Corruption`: the record
/// was lost) and clears what an interrupted creation left.
pub(crate) fn establish(storage: &dyn Storage, dir: &Path, want: Identity) -> Result<Established> {
    let path = dir.join(IDENTITY);
    if storage.exists(&path) {
        let f = storage.open(&path, false).map_err(|e| io_err(&path, e))?;
        let len = f.len().map_err(|e| io_err(&path, e))?;
        if len > 4096 {
            return Err(corruption(
                &path,
                0,
                format!("identity record of {len} bytes"),
            ));
        }
        let mut b = vec![0u8; len as usize];
        let got = f.read_at(0, &mut b).map_err(|e| io_err(&path, e))?;
        b.truncate(got);
        let on_disk = Identity::decode(&path, &b)?;
        on_disk.check(&want, &path)?;
        return Ok(Established {
            identity: on_disk,
            new: false,
        });
    }
    let holds_data =
        |why: String| corruption(&path, 0, format!("identity record missing, yet {why}"));
    if storage.exists(&dir.join(crate::checkpoint::MANIFEST)) {
        return Err(holds_data("a MANIFEST exists".into()));
    }
    let shards = dir.join("shards");
    if storage.exists(&shards)
        && storage
            .list(&shards)
            .map_err(|e| io_err(&shards, e))?
            .iter()
            .any(|n| !n.ends_with(".tmp"))
    {
        return Err(holds_data("shard files exist".into()));
    }
    let wal = dir.join("wal");
    let mut stale: Vec<PathBuf> = Vec::new();
    if storage.exists(&wal) {
        for n in storage.list(&wal).map_err(|e| io_err(&wal, e))? {
            let p = wal.join(&n);
            match parse_segment_name(&n) {
                Some(0) => {
                    // The first segment of a creation that stopped before
                    // its record was written holds no frame yet.
                    let f = storage.open(&p, false).map_err(|e| io_err(&p, e))?;
                    let mut w = [0u8; 8];
                    let got = f
                        .read_at(SEGMENT_HEADER, &mut w)
                        .map_err(|e| io_err(&p, e))?;
                    if got == 8 && w != [0; 8] {
                        return Err(holds_data(format!("{} holds log frames", p.display())));
                    }
                    stale.push(p);
                }
                Some(seq) => {
                    return Err(holds_data(format!("log segment {seq} exists")));
                }
                None => stale.push(p),
            }
        }
    }
    for p in &stale {
        storage.remove(p).map_err(|e| io_err(p, e))?;
    }
    if !stale.is_empty() {
        storage.sync_dir(&wal).map_err(|e| io_err(&wal, e))?;
    }
    Ok(Established {
        identity: want,
        new: true,
    })
}

/// Records `identity` durably: temporary file, fsync, rename, directory
/// fsync.
pub(crate) fn record(storage: &dyn Storage, dir: &Path, identity: &Identity) -> Result<()> {
    let path = dir.join(IDENTITY);
    let tmp = dir.join(format!("{IDENTITY}.tmp"));
    // One an interrupted creation left may be longer than this record.
    if storage.exists(&tmp) {
        storage.remove(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    let f = storage.open(&tmp, true).map_err(|e| io_err(&tmp, e))?;
    f.write_at(0, &[&identity.encode()])
        .map_err(|e| io_err(&tmp, e))?;
    f.sync_data().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    storage.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    storage.sync_dir(dir).map_err(|e| io_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_every_byte_checked() {
        let id = Identity::new(4, 32, "blake3").unwrap();
        let b = id.encode();
        assert_eq!(Identity::decode(Path::new("I"), &b).unwrap(), id);
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 0x10;
            assert!(Identity::decode(Path::new("I"), &m).is_err(), "byte {i}");
        }
        for n in 0..b.len() {
            assert!(
                Identity::decode(Path::new("I"), &b[..n]).is_err(),
                "length {n}"
            );
        }
    }

    #[test]
    fn every_field_is_checked() {
        let a = Identity::new(4, 32, "blake3").unwrap();
        let p = Path::new("I");
        let field = |b: &Identity| match a.check(b, p) {
            Err(Error::ConfigMismatch { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&Identity::new(8, 32, "blake3").unwrap()), "arity");
        assert_eq!(field(&Identity::new(4, 16, "blake3").unwrap()), "max_depth");
        assert_eq!(field(&Identity::new(4, 32, "keccak256").unwrap()), "hasher");
        // Another id is the same configuration: ids are checked per file.
        assert!(a.check(&Identity::new(4, 32, "blake3").unwrap(), p).is_ok());
    }
}
