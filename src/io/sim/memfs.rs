//! The in-memory file system under the simulated disk: file contents (a
//! live image, a durable image and the writes in between) and the two
//! namespaces, live and durable, that name them.
//!
//! It knows nothing of processes, crashes or faults: the crash and fault
//! layers act on its state, and [`SimStorage`](super::SimStorage) decides
//! when.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};

/// `ENOTDIR`, a path component is a file.
const ENOTDIR: i32 = 20;
/// `EISDIR`, a file operation on a directory.
pub(super) const EISDIR: i32 = 21;
/// `EEXIST`, a directory where a file is.
const EEXIST: i32 = 17;
/// `EFBIG`, a write ending past what a `Vec` can index.
pub(super) const EFBIG: i32 = 27;

pub(super) type FileId = u64;

/// One write since the file's last successful sync.
pub(super) struct Write {
    pub(super) off: u64,
    pub(super) data: Vec<u8>,
}

/// One file's contents, independent of its names.
pub(super) struct FileState {
    /// What reads see.
    pub(super) live: Vec<u8>,
    /// What a crash leaves, before unsynced writes are (partly) applied.
    pub(super) durable: Vec<u8>,
    /// Writes since the last successful sync, in order.
    pub(super) unsynced: Vec<Write>,
    /// Open handles (of the current generation) to this file.
    pub(super) handles: usize,
}

impl FileState {
    /// Applies `data` at `off` to the live image and remembers it as an
    /// unsynced write.
    pub(super) fn write(&mut self, off: u64, data: Vec<u8>) {
        apply(&mut self.live, off, &data);
        if !data.is_empty() {
            self.unsynced.push(Write { off, data });
        }
    }

    /// Makes every unsynced write durable, in order.
    pub(super) fn sync(&mut self) {
        for w in std::mem::take(&mut self.unsynced) {
            apply(&mut self.durable, w.off, &w.data);
        }
    }
}

/// Files, and the live and durable namespaces naming them.
#[derive(Default)]
pub(super) struct MemFs {
    next_id: FileId,
    pub(super) files: BTreeMap<FileId, FileState>,
    pub(super) live_ns: BTreeMap<PathBuf, FileId>,
    pub(super) durable_ns: BTreeMap<PathBuf, FileId>,
    pub(super) dirs: BTreeSet<PathBuf>,
}

impl MemFs {
    /// A new empty file named `p` in the live namespace.
    pub(super) fn create(&mut self, p: PathBuf) -> FileId {
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(
            id,
            FileState {
                live: Vec::new(),
                durable: Vec::new(),
                unsynced: Vec::new(),
                handles: 0,
            },
        );
        self.live_ns.insert(p, id);
        id
    }

    /// Creates the directory `p` (normalised) and its missing parents.
    pub(super) fn create_dir_all(&mut self, p: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        for dir in p.ancestors() {
            if self.is_dir(dir) {
                break;
            }
            if self.live_ns.contains_key(dir) {
                let errno = if dir == p { EEXIST } else { ENOTDIR };
                return Err(io::Error::from_raw_os_error(errno));
            }
            missing.push(dir.to_path_buf());
        }
        self.dirs.extend(missing);
        Ok(())
    }

    /// Copies the live entries directly under `dir` into the durable
    /// namespace (adding, replacing and removing).
    pub(super) fn sync_dir(&mut self, dir: &Path) {
        let mut dropped = Vec::new();
        self.durable_ns.retain(|p, id| {
            let under = parent(p) == dir;
            if under {
                dropped.push(*id);
            }
            !under
        });
        let entries: Vec<(PathBuf, FileId)> = self
            .live_ns
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        self.durable_ns.extend(entries);
        for id in dropped {
            self.collect(id);
        }
    }

    /// Names of the files directly under `d` (normalised), sorted.
    pub(super) fn list(&self, d: &Path) -> Vec<String> {
        let mut names: Vec<String> = self
            .live_ns
            .keys()
            .filter(|p| parent(p) == d)
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Renames the live entry `f` (naming `id`) to `t`, replacing what
    /// `t` named.
    pub(super) fn rename(&mut self, f: &Path, t: PathBuf, id: FileId) {
        if f == t {
            return;
        }
        self.live_ns.remove(f);
        if let Some(old) = self.live_ns.insert(t, id) {
            self.collect(old);
        }
    }

    /// Closes every handle (its process is gone) and frees what nothing
    /// names any more.
    pub(super) fn close_all(&mut self) {
        for file in self.files.values_mut() {
            file.handles = 0;
        }
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        for id in ids {
            self.collect(id);
        }
    }

    /// Frees a file's contents once nothing names or holds it.
    pub(super) fn collect(&mut self, id: FileId) {
        let held = self.files.get(&id).is_some_and(|f| f.handles > 0);
        if !held
            && !self.live_ns.values().any(|&v| v == id)
            && !self.durable_ns.values().any(|&v| v == id)
        {
            self.files.remove(&id);
        }
    }

    pub(super) fn is_dir(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    /// The file named `path` (normalised) in the live namespace, else the
    /// durable one.
    pub(super) fn resolve_any(&self, path: &Path) -> io::Result<FileId> {
        let p = norm(path);
        self.live_ns
            .get(&p)
            .or_else(|| self.durable_ns.get(&p))
            .copied()
            .ok_or_else(|| not_found(path))
    }
}

/// Writes `data` at `off` into `image`, zero-filling any gap past its end.
pub(super) fn apply(image: &mut Vec<u8>, off: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let off = off as usize;
    let end = off + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[off..end].copy_from_slice(data);
}

/// `path` with `.` components dropped, so `./a/b`, `a/b/` and `a//b` are one
/// key, and `.` is the empty path.
pub(super) fn norm(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The directory holding the (normalised) `path`.
pub(super) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// Whether a normalised path is the root (or the current directory), which
/// always exists.
fn is_root(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
}

pub(super) fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(EFBIG))
}

pub(super) fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "simulated disk: no such file or directory: {}",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use super::*;

    #[test]
    fn a_created_file_is_durable_only_after_sync_dir() {
        for kind in 0..2 {
            let sim = SimStorage::new(10);
            sim.create_dir_all(p("d/sub")).unwrap();
            for name in ["d/a", "d/b", "d/sub/c"] {
                let f = sim.open(p(name), true).unwrap();
                f.write_at(0, &[name.as_bytes()]).unwrap();
                f.sync_data().unwrap();
            }
            sim.sync_dir(p("d")).unwrap(); // not d/sub
            let e = sim.open(p("d/late"), true).unwrap();
            e.write_at(0, &[b"late"]).unwrap();
            e.sync_data().unwrap();
            assert_eq!(sim.list(p("d")).unwrap(), ["a", "b", "late"]);
            assert_eq!(sim.durable_bytes(p("d/late")), None);
            assert_eq!(sim.durable_bytes(p("d/sub/c")), None);
            if kind == 0 {
                sim.crash();
            } else {
                sim.crash_drop_all();
            }
            let sim = sim.restart();
            assert_eq!(sim.list(p("d")).unwrap(), ["a", "b"]);
            assert!(!sim.exists(p("d/late")));
            assert!(!sim.exists(p("d/sub/c")));
            assert!(sim.exists(p("d/sub")), "directories are always durable");
            assert_eq!(sim.live_bytes(p("d/a")).unwrap(), b"d/a");
            assert_eq!(sim.live_bytes(p("d/b")).unwrap(), b"d/b");
            let err = sim.open(p("d/late"), false).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let sim = disk_with(11, b"payload");
        let t = sim.open(p("d/target"), true).unwrap();
        t.write_at(0, &[b"old target"]).unwrap();
        t.sync_data().unwrap();
        drop(t);
        sim.sync_dir(p("d")).unwrap();

        sim.rename(p("d/f"), p("d/target")).unwrap();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"payload");
        assert_eq!(sim.durable_bytes(p("d/target")).unwrap(), b"old target");
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), b"payload");
        sim.crash();
        let sim = sim.restart();
        assert_eq!(sim.list(p("d")).unwrap(), ["f", "target"]);
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), b"payload");
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"old target");

        sim.rename(p("d/f"), p("d/target")).unwrap();
        sim.sync_dir(p("d")).unwrap();
        sim.crash();
        let sim = sim.restart();
        assert_eq!(sim.list(p("d")).unwrap(), ["target"]);
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"payload");
        // The replaced file is gone for good.
        assert_eq!(sim.file_count(), 1);
    }

    #[test]
    fn a_renamed_file_keeps_its_data_and_unsynced_writes() {
        let sim = SimStorage::new(12);
        sim.create_dir_all(p("d")).unwrap();
        let f = sim.open(p("d/tmp"), true).unwrap();
        f.write_at(0, &[b"synced"]).unwrap();
        f.sync_data().unwrap();
        f.write_at(6, &[b"+unsynced"]).unwrap();
        sim.rename(p("d/tmp"), p("d/final")).unwrap();
        // The old handle writes to the renamed file.
        f.write_at(15, &[b"!"]).unwrap();
        assert_eq!(sim.live_bytes(p("d/final")).unwrap(), b"synced+unsynced!");
        sim.sync_dir(p("d")).unwrap();
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/final")).unwrap(), b"synced");
        assert!(!sim.exists(p("d/tmp")));
    }

    #[test]
    fn remove_is_durable_only_after_sync_dir_and_open_handles_keep_the_data() {
        let sim = disk_with(13, b"data");
        let f = sim.open(p("d/f"), false).unwrap();
        sim.remove(p("d/f")).unwrap();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(sim.list(p("d")).unwrap(), Vec::<String>::new());
        // Unlinked but open: still readable and writable.
        f.write_at(4, &[b"!"]).unwrap();
        assert_eq!(read_all(&*f), b"data!");
        drop(f);
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), b"data");

        sim.remove(p("d/f")).unwrap();
        sim.sync_dir(p("d")).unwrap();
        assert_eq!(sim.file_count(), 0, "nothing names or holds it");
        sim.crash();
        let sim = sim.restart();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(
            sim.remove(p("d/f")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn unlinked_file_contents_are_freed_after_the_last_handle() {
        let sim = SimStorage::new(14);
        let f = sim.open(p("x"), true).unwrap();
        sim.remove(p("x")).unwrap();
        assert_eq!(sim.file_count(), 1);
        drop(f);
        assert_eq!(sim.file_count(), 0);
    }

    #[test]
    fn namespace_errors_and_listing() {
        let sim = SimStorage::new(16);
        let nf = |r: io::Result<Box<dyn StorageFile>>| r.err().unwrap().kind();
        assert_eq!(nf(sim.open(p("missing"), false)), io::ErrorKind::NotFound);
        assert_eq!(nf(sim.open(p("nodir/f"), true)), io::ErrorKind::NotFound);
        assert_eq!(
            sim.rename(p("missing"), p("x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sim.list(p("nodir")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sim.sync_dir(p("nodir")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        sim.create_dir_all(p("/r/a/b")).unwrap();
        assert!(sim.exists(p("/r")) && sim.exists(p("/r/a")) && sim.exists(p("/r/a/b")));
        assert!(sim.exists(p("/")));
        for name in ["zeta", "alpha", "mid"] {
            sim.open(&Path::new("/r/a").join(name), true).unwrap();
        }
        sim.open(p("/r/a/b/deep"), true).unwrap();
        sim.open(p("/r/top"), true).unwrap();
        // Files directly under the directory, sorted; not subdirectories.
        assert_eq!(sim.list(p("/r/a")).unwrap(), ["alpha", "mid", "zeta"]);
        assert_eq!(sim.list(p("/r/a/")).unwrap(), ["alpha", "mid", "zeta"]);
        assert_eq!(sim.list(p("/r/a/b")).unwrap(), ["deep"]);
        assert!(sim.exists(p("/r/a/./mid")));
        assert!(!sim.exists(p("/r/a/nope")));
        // Directories are not files.
        assert!(sim.open(p("/r/a"), true).is_err());
        assert!(sim.remove(p("/r/a")).is_err());
        assert!(sim.create_dir_all(p("/r/top")).is_err());
        assert!(sim.create_dir_all(p("/r/top/x")).is_err());
        // Renaming into a missing directory fails and changes nothing.
        assert_eq!(
            sim.rename(p("/r/top"), p("/nope/x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(sim.exists(p("/r/top")));
        // Relative paths: `.` is the root of the relative namespace.
        sim.open(p("rel"), true).unwrap();
        assert_eq!(sim.list(p(".")).unwrap(), ["rel"]);
        assert_eq!(sim.list(p("")).unwrap(), ["rel"]);
        sim.sync_dir(p(".")).unwrap();
        sim.crash();
        let sim = sim.restart();
        assert!(sim.exists(p("./rel")));
        assert!(!sim.exists(p("/r/top")));
    }
}
