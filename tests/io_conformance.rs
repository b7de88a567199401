//! The file and namespace contract of `ringtree::io`, written once and run
//! against every backend: io_uring, threaded, and the simulated disk (with
//! and without direct handles).
//!
//! A backend passes only if it behaves like the others wherever the traits
//! promise something; each check names itself in its failure message.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(target_os = "linux")]
use ringtree::io::UringStorage;
use ringtree::io::{
    DIRECT_ALIGN, IoBackend, SimDirect, SimStorage, Storage, StorageFile, ThreadedStorage,
};

/// One backend under test and where its files go.
struct Backend {
    storage: Arc<dyn Storage>,
    /// A directory of its own, which need not exist yet.
    root: PathBuf,
    /// What [`Storage::backend`] must answer.
    kind: IoBackend,
    /// Whether [`Storage::shrink`] must shorten the file (it may be a no-op).
    shrinks: bool,
}

/// A check of one promise, given the storage, a fresh directory of its
/// own, and the backend's description.
type Check = fn(&dyn Storage, &Path, &Backend);

/// Every check, by name.
const CHECKS: &[(&str, Check)] = &[
    ("names its backend", names_its_backend),
    ("write then read back", write_then_read_back),
    ("writes at offsets", writes_at_offsets),
    ("handles share one file", handles_share_one_file),
    ("write_many lands every write", write_many_lands_every_write),
    ("write_sync and sync_data", write_sync_and_sync_data),
    (
        "preallocate changes nothing visible",
        preallocate_changes_nothing_visible,
    ),
    ("shrink keeps the prefix", shrink_keeps_the_prefix),
    ("missing paths are NotFound", missing_paths_are_not_found),
    ("create_dir_all and exists", create_dir_all_and_exists),
    ("list names files sorted", list_names_files_sorted),
    ("rename replaces", rename_replaces),
    ("remove unlinks", remove_unlinks),
    (
        "lock is exclusive until dropped",
        lock_is_exclusive_until_dropped,
    ),
    ("map reads what was written", map_reads_what_was_written),
    ("direct writes are read back", direct_writes_are_read_back),
];

/// Runs every check, each in a fresh directory under the backend's root.
fn conformance(b: &Backend) {
    let s = &*b.storage;
    for (i, (name, check)) in CHECKS.iter().enumerate() {
        let dir = b.root.join(format!("check{i}"));
        s.create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("{:?}: {name}: create_dir_all: {e}", b.kind));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(s, &dir, b)));
        if let Err(e) = run {
            eprintln!("{:?}: check \"{name}\" failed", b.kind);
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn threaded() {
    let tmp = tempfile::tempdir().unwrap();
    conformance(&Backend {
        storage: Arc::new(ThreadedStorage),
        root: tmp.path().join("t"),
        kind: IoBackend::Threaded,
        shrinks: true,
    });
}

#[cfg(target_os = "linux")]
#[test]
fn uring() {
    let storage = match UringStorage::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("io_uring cannot be set up here ({e}); skipping the uring backend");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    conformance(&Backend {
        storage: Arc::new(storage),
        root: tmp.path().join("u"),
        kind: IoBackend::Uring,
        shrinks: true,
    });
}

#[test]
fn simulated() {
    conformance(&Backend {
        storage: Arc::new(SimStorage::new(1)),
        root: PathBuf::from("/sim"),
        kind: IoBackend::Simulated,
        shrinks: false,
    });
}

#[test]
fn simulated_without_direct_handles() {
    let sim = SimStorage::new(2);
    sim.set_direct(SimDirect::Unsupported);
    conformance(&Backend {
        storage: Arc::new(sim),
        root: PathBuf::from("sim/relative"),
        kind: IoBackend::Simulated,
        shrinks: false,
    });
}

/// The whole file through `f`.
fn read_all(f: &dyn StorageFile) -> Vec<u8> {
    let mut buf = vec![0u8; f.len().unwrap() as usize];
    let n = f.read_at(0, &mut buf).unwrap();
    assert_eq!(n, buf.len(), "a read inside the file is not short");
    buf
}

/// `n` bytes, distinct per position (mod 251).
fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
}

/// A new file at `dir/name` holding `data`, synced.
fn file_with(s: &dyn Storage, dir: &Path, name: &str, data: &[u8]) -> Box<dyn StorageFile> {
    let f = s.open(&dir.join(name), true).unwrap();
    f.write_at(0, &[data]).unwrap();
    f.sync_data().unwrap();
    f
}

fn names_its_backend(s: &dyn Storage, _: &Path, b: &Backend) {
    assert_eq!(s.backend(), b.kind);
}

fn write_then_read_back(s: &dyn Storage, dir: &Path, _: &Backend) {
    let f = s.open(&dir.join("f"), true).unwrap();
    assert_eq!(f.len().unwrap(), 0, "a created file is empty");
    f.write_at(0, &[b"hello ", b"", b"world"]).unwrap();
    assert_eq!(f.len().unwrap(), 11);
    assert_eq!(read_all(&*f), b"hello world");
    let mut buf = [7u8; 16];
    assert_eq!(f.read_at(6, &mut buf).unwrap(), 5, "short only at the end");
    assert_eq!(&buf[..5], b"world");
    assert_eq!(f.read_at(11, &mut buf).unwrap(), 0);
    assert_eq!(f.read_at(1 << 20, &mut buf).unwrap(), 0);
    f.write_at(11, &[]).unwrap();
    assert_eq!(f.len().unwrap(), 11, "an empty write changes nothing");
}

fn writes_at_offsets(s: &dyn Storage, dir: &Path, _: &Backend) {
    let f = s.open(&dir.join("f"), true).unwrap();
    f.write_at(0, &[b"0123456789"]).unwrap();
    f.write_at(5000, &[b"tail"]).unwrap();
    f.write_at(2, &[b"ab", b"cd"]).unwrap();
    let got = read_all(&*f);
    assert_eq!(got.len(), 5004);
    assert_eq!(&got[..10], b"01abcd6789");
    assert!(
        got[10..5000].iter().all(|&b| b == 0),
        "a gap reads as zeros"
    );
    assert_eq!(&got[5000..], b"tail");
}

fn handles_share_one_file(s: &dyn Storage, dir: &Path, _: &Backend) {
    let path = dir.join("f");
    let a = s.open(&path, true).unwrap();
    a.write_at(0, &[b"first"]).unwrap();
    let b = s.open(&path, true).unwrap();
    assert_eq!(
        read_all(&*b),
        b"first",
        "open with create keeps the contents"
    );
    b.write_at(5, &[b" second"]).unwrap();
    assert_eq!(read_all(&*a), b"first second");
    let c = s.open(&path, false).unwrap();
    assert_eq!(c.len().unwrap(), 12);
}

fn write_many_lands_every_write(s: &dyn Storage, dir: &Path, _: &Backend) {
    let f = s.open(&dir.join("f"), true).unwrap();
    // More writes than one io_uring submission takes, in reverse order,
    // with gaps between them.
    let pieces: Vec<(u64, Vec<u8>)> = (0..100u64)
        .rev()
        .map(|i| (i * 150, pattern(100, i as u8)))
        .collect();
    let writes: Vec<(u64, &[u8])> = pieces.iter().map(|(o, d)| (*o, &d[..])).collect();
    f.write_many(&writes).unwrap();
    let got = read_all(&*f);
    assert_eq!(got.len(), 99 * 150 + 100);
    for i in 0..100usize {
        let at = i * 150;
        assert_eq!(&got[at..at + 100], &pattern(100, i as u8)[..], "write {i}");
        if i < 99 {
            assert!(got[at + 100..at + 150].iter().all(|&b| b == 0), "gap {i}");
        }
    }
    f.write_many(&[]).unwrap();
}

fn write_sync_and_sync_data(s: &dyn Storage, dir: &Path, _: &Backend) {
    let f = s.open(&dir.join("f"), true).unwrap();
    f.write_sync(0, &[b"commit", b" one"]).unwrap();
    f.write_sync(10, &[&pattern(9000, 3)]).unwrap();
    f.write_at(3, &[b"MIT"]).unwrap();
    f.sync_data().unwrap();
    let got = read_all(&*f);
    assert_eq!(&got[..10], b"comMIT one");
    assert_eq!(&got[10..], &pattern(9000, 3)[..]);
}

fn preallocate_changes_nothing_visible(s: &dyn Storage, dir: &Path, _: &Backend) {
    let f = s.open(&dir.join("f"), true).unwrap();
    f.write_at(0, &[&pattern(100, 1)]).unwrap();
    f.preallocate(1 << 20).unwrap();
    assert_eq!(f.len().unwrap(), 100, "the length stays");
    assert_eq!(read_all(&*f), pattern(100, 1));
    f.preallocate(10).unwrap();
    assert_eq!(f.len().unwrap(), 100, "nor does it shrink");
    f.write_at(1 << 19, &[b"inside"]).unwrap();
    let got = read_all(&*f);
    assert_eq!(got.len(), (1 << 19) + 6);
    assert!(got[100..1 << 19].iter().all(|&b| b == 0));
    assert_eq!(&got[1 << 19..], b"inside");
}

fn shrink_keeps_the_prefix(s: &dyn Storage, dir: &Path, b: &Backend) {
    let path = dir.join("f");
    let data = pattern(10_000, 4);
    let f = file_with(s, dir, "f", &data);
    s.shrink(&path, 4096).unwrap();
    let len = f.len().unwrap();
    if b.shrinks {
        assert_eq!(len, 4096);
    } else {
        assert!(len == 4096 || len == 10_000, "shrunk to {len}");
    }
    assert_eq!(read_all(&*f), &data[..len as usize]);
    assert_eq!(
        read_all(&*s.open(&path, false).unwrap()),
        &data[..len as usize]
    );
}

fn missing_paths_are_not_found(s: &dyn Storage, dir: &Path, _: &Backend) {
    let missing = dir.join("missing");
    let kind = |r: std::io::Result<Box<dyn StorageFile>>| r.err().map(|e| e.kind());
    assert_eq!(kind(s.open(&missing, false)), Some(ErrorKind::NotFound));
    assert!(!s.exists(&missing), "open without create makes nothing");
    assert_eq!(
        kind(s.open(&dir.join("nodir/f"), true)),
        Some(ErrorKind::NotFound),
        "create does not make directories"
    );
    let err = |r: std::io::Result<()>| r.unwrap_err().kind();
    assert_eq!(err(s.remove(&missing)), ErrorKind::NotFound);
    assert_eq!(err(s.rename(&missing, &dir.join("x"))), ErrorKind::NotFound);
    assert!(!s.exists(&dir.join("x")));
    assert_eq!(err(s.sync_dir(&dir.join("nodir"))), ErrorKind::NotFound);
    assert_eq!(
        s.list(&dir.join("nodir")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        s.map(&missing).err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    if let Err(e) = s.open_direct(&missing) {
        assert_eq!(e.kind(), ErrorKind::NotFound);
    } else {
        assert!(s.open_direct(&missing).unwrap().is_none());
    }
}

fn create_dir_all_and_exists(s: &dyn Storage, dir: &Path, _: &Backend) {
    let deep = dir.join("a/b/c");
    assert!(!s.exists(&dir.join("a")));
    s.create_dir_all(&deep).unwrap();
    for d in ["a", "a/b", "a/b/c"] {
        assert!(s.exists(&dir.join(d)), "{d}");
    }
    s.create_dir_all(&deep).unwrap();
    s.sync_dir(&deep).unwrap();
    let f = deep.join("f");
    assert!(!s.exists(&f));
    s.open(&f, true).unwrap();
    assert!(s.exists(&f));
    assert!(s.create_dir_all(&f).is_err(), "a file is not a directory");
}

fn list_names_files_sorted(s: &dyn Storage, dir: &Path, _: &Backend) {
    assert_eq!(s.list(dir).unwrap(), Vec::<String>::new());
    for name in ["zeta", "alpha", "mid"] {
        s.open(&dir.join(name), true).unwrap();
    }
    s.create_dir_all(&dir.join("sub")).unwrap();
    s.open(&dir.join("sub/deep"), true).unwrap();
    assert_eq!(s.list(dir).unwrap(), ["alpha", "mid", "zeta"]);
    assert_eq!(s.list(&dir.join("sub")).unwrap(), ["deep"]);
}

fn rename_replaces(s: &dyn Storage, dir: &Path, _: &Backend) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    let fa = file_with(s, dir, "a", b"from a");
    drop(file_with(s, dir, "b", b"old b, longer"));
    s.rename(&a, &b).unwrap();
    s.sync_dir(dir).unwrap();
    assert!(!s.exists(&a));
    assert_eq!(s.list(dir).unwrap(), ["b"]);
    assert_eq!(read_all(&*s.open(&b, false).unwrap()), b"from a");
    // A handle opened before the rename writes to the renamed file.
    fa.write_at(6, &[b"!"]).unwrap();
    assert_eq!(read_all(&*s.open(&b, false).unwrap()), b"from a!");
    // Renaming onto itself changes nothing.
    s.rename(&b, &b).unwrap();
    assert_eq!(read_all(&*s.open(&b, false).unwrap()), b"from a!");
}

fn remove_unlinks(s: &dyn Storage, dir: &Path, _: &Backend) {
    let path = dir.join("f");
    let f = file_with(s, dir, "f", b"still here");
    s.remove(&path).unwrap();
    s.sync_dir(dir).unwrap();
    assert!(!s.exists(&path));
    assert_eq!(s.list(dir).unwrap(), Vec::<String>::new());
    assert_eq!(
        s.open(&path, false).err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        read_all(&*f),
        b"still here",
        "an open handle keeps the data"
    );
    let g = s.open(&path, true).unwrap();
    assert_eq!(g.len().unwrap(), 0, "a new file under the old name");
}

fn lock_is_exclusive_until_dropped(s: &dyn Storage, dir: &Path, _: &Backend) {
    let path = dir.join("LOCK");
    let held = s.lock(&path).unwrap();
    let refused = s.lock(&path).err().map(|e| e.kind());
    assert_eq!(refused, Some(ErrorKind::WouldBlock), "a second holder");
    std::thread::scope(|t| {
        t.spawn(|| {
            let refused = s.lock(&path).err().map(|e| e.kind());
            assert_eq!(refused, Some(ErrorKind::WouldBlock), "another thread");
        });
    });
    let other = s.lock(&dir.join("OTHER")).unwrap();
    drop(held);
    let again = s.lock(&path).unwrap();
    assert_eq!(
        s.lock(&path).err().map(|e| e.kind()),
        Some(ErrorKind::WouldBlock)
    );
    drop((again, other));
    drop(s.lock(&path).unwrap());
}

fn map_reads_what_was_written(s: &dyn Storage, dir: &Path, _: &Backend) {
    let data = pattern(3 * 4096 + 77, 5);
    drop(file_with(s, dir, "f", &data));
    let m = s.map(&dir.join("f")).unwrap();
    assert_eq!(m.bytes(), &data[..]);
    drop(file_with(s, dir, "empty", b""));
    assert_eq!(s.map(&dir.join("empty")).unwrap().bytes(), b"");
}

fn direct_writes_are_read_back(s: &dyn Storage, dir: &Path, _: &Backend) {
    let path = dir.join("f");
    let f = file_with(s, dir, "f", &vec![1u8; 4 * DIRECT_ALIGN]);
    let Some(d) = s.open_direct(&path).unwrap() else {
        return;
    };
    let a = DIRECT_ALIGN;
    let mut area = vec![0u8; 3 * a];
    let at = area.as_ptr().align_offset(a);
    let buf = &mut area[at..at + 2 * a];
    buf[..a].fill(2);
    buf[a..].fill(3);
    let buf = &*buf;
    d.write_at(a as u64, &[&buf[..a], &buf[a..]]).unwrap();
    d.write_sync(4 * a as u64, &[&buf[a..]]).unwrap();
    d.sync_data().unwrap();
    let got = read_all(&*f);
    assert_eq!(got.len(), 5 * a, "a direct write past the end extends");
    let want: Vec<u8> = [1u8, 2, 3, 1, 3]
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, a))
        .collect();
    assert!(got == want, "the buffered handle reads the direct writes");
    assert!(
        d.write_at(a as u64 + 1, &[&buf[..a]]).is_err(),
        "an unaligned offset is refused"
    );
}
