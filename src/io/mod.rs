//! The storage layer: one trait over the files the WAL and checkpoints use,
//! with an io_uring backend, a threaded fallback, and a simulated disk for
//! tests.
//!
//! Owns every system call the crate makes on data files; nothing above it
//! touches a file directly. Calls are blocking and made from the crate's own
//! threads (the committer, recovery, checkpoints), never from an async task.

use std::io;
use std::path::Path;

pub mod sim;
mod threaded;
#[cfg(target_os = "linux")]
mod uring;

pub use sim::{SimDirect, SimStorage};
pub use threaded::ThreadedStorage;
#[cfg(target_os = "linux")]
pub use uring::UringStorage;

/// Which I/O backend a tree uses, or should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoBackend {
    /// io_uring when it can be set up, else the threaded fallback.
    #[default]
    Auto,
    /// io_uring (one `RWF_DSYNC` write per group commit, on a ring of the
    /// committer's thread).
    Uring,
    /// `pwrite` + `fdatasync` from a plain thread.
    Threaded,
    /// An in-memory simulated disk ([`SimStorage`]), new and empty at each
    /// open: what the tree holds goes with it. To reopen the same
    /// simulated disk (or crash it), pass one with
    /// [`Config::storage`](crate::Config::storage).
    Simulated,
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoBackend::Auto => "auto",
            IoBackend::Uring => "io_uring",
            IoBackend::Threaded => "threaded",
            IoBackend::Simulated => "simulated",
        })
    }
}

/// A file opened through a [`Storage`].
///
/// Writes are all-or-error: a short write is retried inside, and an error
/// means an unknown part of the data may have reached the file.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads at `off` into `buf`; returns fewer bytes only at end of file.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes the concatenation of `bufs` at `off`.
    fn write_at(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()>;
    /// `fdatasync`: every completed write is on stable storage when it
    /// returns Ok. After an error nothing about unsynced data is known, and
    /// the call must not be retried.
    fn sync_data(&self) -> io::Result<()>;
    /// Many writes at once (offset, bytes), which must not overlap: their
    /// order is unspecified. io_uring keeps them all in flight together;
    /// the default writes them one after another.
    fn write_many(&self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        for (off, b) in writes {
            self.write_at(*off, &[b])?;
        }
        Ok(())
    }
    /// Reserves disk space for the file up to `len` bytes, so writes there
    /// need not allocate; its length and what reads return do not change.
    /// The default does nothing.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }
    /// The commit write: [`write_at`](Self::write_at) then
    /// [`sync_data`](Self::sync_data), as one call so a backend can make it
    /// one request (io_uring submits a single `RWF_DSYNC` write).
    fn write_sync(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        self.write_at(off, bufs)?;
        self.sync_data()
    }
}

/// The alignment, in bytes, of offsets, lengths and buffers of writes to a
/// file from [`Storage::open_direct`] (the largest logical block size in
/// common use, so it holds on 512-byte and 4 KiB-sector disks alike).
pub const DIRECT_ALIGN: usize = 4096;

/// A read-only view of a whole file: a memory mapping, or a copy.
pub trait Mapped: Send + Sync {
    /// The file's bytes (as of the mapping).
    fn bytes(&self) -> &[u8];
    /// Whether later writes to the file show through these bytes (a
    /// memory mapping does; a copy does not).
    fn aliases_file(&self) -> bool {
        false
    }
}

impl Mapped for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Mapped for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn aliases_file(&self) -> bool {
        true
    }
}

/// The files and directories of one tree.
pub trait Storage: Send + Sync + 'static {
    /// Which backend this is.
    fn backend(&self) -> IoBackend;
    /// Opens `path` for reading and writing, creating it (empty) if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Creates `path` and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Takes an exclusive lock named by `path` (creating the file), held
    /// until the guard drops or the process ends. `ErrorKind::WouldBlock`
    /// if another handle or process holds it.
    fn lock(&self, path: &Path) -> io::Result<LockGuard>;
    /// Shortens the file at `path` to `len` bytes, or leaves it as it is:
    /// it only frees space early (a file that is about to be removed is
    /// shortened in steps so freeing its blocks never stalls the log's
    /// syncs), and a backend may ignore it. The default does nothing.
    fn shrink(&self, path: &Path, len: u64) -> io::Result<()> {
        let _ = (path, len);
        Ok(())
    }
    /// Opens the existing file `path` a second time for writes that bypass
    /// the page cache (`O_DIRECT`): each write's offset, length and buffer
    /// address must be multiples of [`DIRECT_ALIGN`], and reads go through
    /// [`open`](Self::open)'s handle. `Ok(None)` where the backend or the
    /// file system has no such mode; the caller then writes through the
    /// page cache. The default has none.
    ///
    /// The log writes its groups this way: a direct write + `fdatasync`
    /// skips the page-cache writeback.
    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn StorageFile>>> {
        let _ = path;
        Ok(None)
    }
    /// A read-only view of `path` as it is now. The default reads it into
    /// memory; the file backends map it. Callers only map files whose
    /// mapped bytes are never rewritten (sealed shard chunks).
    fn map(&self, path: &Path) -> io::Result<std::sync::Arc<dyn Mapped>> {
        let f = self.open(path, false)?;
        let mut b = vec![0u8; f.len()? as usize];
        let n = f.read_at(0, &mut b)?;
        b.truncate(n);
        Ok(std::sync::Arc::new(b))
    }
}

/// A held lock from [`Storage::lock`]; dropping it releases the lock.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    pub(crate) fn new(inner: impl Send + Sync + 'static) -> Self {
        Self(Box::new(inner))
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

/// Creates `dir` and every missing directory above it, then syncs the
/// parent of each one it created (deepest last), so their names are durable
/// before anything in them is acknowledged. The parent of `dir` is synced
/// even when `dir` existed (an earlier process may have died between
/// creating it and that sync); a failure there is only reported, as the
/// parent may not be ours to open.
pub(crate) fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> crate::Result<()> {
    let io = |path: &Path, e| crate::Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let parent_of = |p: &Path| {
        p.parent()
            .filter(|q| !q.as_os_str().is_empty())
            .map(Path::to_path_buf)
    };
    let mut missing = Vec::new();
    let mut p = Some(dir.to_path_buf());
    while let Some(d) = p.filter(|d| !storage.exists(d)) {
        p = parent_of(&d);
        missing.push(d);
    }
    storage.create_dir_all(dir).map_err(|e| io(dir, e))?;
    for d in missing.iter().rev() {
        if let Some(parent) = parent_of(d) {
            storage.sync_dir(&parent).map_err(|e| io(&parent, e))?;
        }
    }
    if missing.is_empty()
        && let Some(parent) = parent_of(dir)
        && let Err(e) = storage.sync_dir(&parent)
    {
        tracing::warn!(dir = %parent.display(), error = %e, "could not sync a directory's parent");
    }
    Ok(())
}

/// The storage for `choice`, resolving [`IoBackend::Auto`].
///
/// `Auto` takes the environment variable `RINGTREE_IO=uring|threaded` if it
/// is set; else io_uring when a ring can be set up, falling back to the
/// threaded backend when it cannot (`EPERM` under Docker's default seccomp
/// profile, `ENOSYS` on old or restricted kernels, `EINVAL`), logging why.
/// An explicit choice is never overridden: the variable is then ignored
/// (with a warning if it asks for something else).
pub fn open_storage(choice: IoBackend) -> crate::Result<std::sync::Arc<dyn Storage>> {
    use std::sync::Arc;
    let choice = resolve(choice, std::env::var("RINGTREE_IO").ok().as_deref())?;
    match choice {
        IoBackend::Threaded => Ok(Arc::new(ThreadedStorage)),
        #[cfg(target_os = "linux")]
        IoBackend::Uring => UringStorage::new()
            .map(|s| Arc::new(s) as Arc<dyn Storage>)
            .map_err(|e| {
                crate::Error::Config(format!("io_uring backend requested but unavailable: {e}"))
            }),
        #[cfg(target_os = "linux")]
        IoBackend::Auto => match UringStorage::new() {
            Ok(s) => {
                tracing::info!("I/O backend: io_uring");
                Ok(Arc::new(s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; using the threaded I/O backend");
                Ok(Arc::new(ThreadedStorage))
            }
        },
        #[cfg(not(target_os = "linux"))]
        IoBackend::Auto => Ok(Arc::new(ThreadedStorage)),
        #[cfg(not(target_os = "linux"))]
        IoBackend::Uring => Err(crate::Error::Config("io_uring needs Linux".into())),
        IoBackend::Simulated => Ok(Arc::new(SimStorage::new(0))),
    }
}

/// The backend `choice` means with `RINGTREE_IO` set to `env`: the variable
/// decides only for `Auto`; an explicit choice stays (a variable asking for
/// another is logged and ignored).
fn resolve(choice: IoBackend, env: Option<&str>) -> crate::Result<IoBackend> {
    let asked = match env {
        None | Some("auto" | "") => return Ok(choice),
        Some("uring" | "io_uring") => Some(IoBackend::Uring),
        Some("threaded") => Some(IoBackend::Threaded),
        Some(_) => None,
    };
    match (choice, asked) {
        (IoBackend::Auto, Some(b)) => Ok(b),
        (IoBackend::Auto, None) => Err(crate::Error::Config(format!(
            "RINGTREE_IO={}: expected uring, threaded or auto",
            env.unwrap_or_default()
        ))),
        (explicit, asked) => {
            if asked != Some(explicit) {
                tracing::warn!(backend = %explicit, RINGTREE_IO = env.unwrap_or_default(), "RINGTREE_IO ignored: the configuration chose a backend");
            }
            Ok(explicit)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn the_environment_decides_only_for_auto() {
        use IoBackend::*;
        assert_eq!(resolve(Auto, None).unwrap(), Auto);
        assert_eq!(resolve(Auto, Some("threaded")).unwrap(), Threaded);
        assert_eq!(resolve(Auto, Some("uring")).unwrap(), Uring);
        assert!(resolve(Auto, Some("bogus")).is_err());
        for explicit in [Uring, Threaded, Simulated] {
            for env in [None, Some("threaded"), Some("uring"), Some("bogus")] {
                assert_eq!(resolve(explicit, env).unwrap(), explicit, "{env:?}");
            }
        }
    }
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A simulated disk that records which directories were synced.
    struct Recording(SimStorage, Arc<Mutex<Vec<PathBuf>>>);

    impl Storage for Recording {
        fn backend(&self) -> IoBackend {
            self.0.backend()
        }
        fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
            self.0.open(path, create)
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.0.create_dir_all(path)
        }
        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            self.1.lock().unwrap().push(path.to_path_buf());
            self.0.sync_dir(path)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.0.list(dir)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.0.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.0.rename(from, to)
        }
        fn exists(&self, path: &Path) -> bool {
            self.0.exists(path)
        }
        fn lock(&self, path: &Path) -> io::Result<LockGuard> {
            self.0.lock(path)
        }
    }

    /// Every directory it creates gets its name synced, top down; an
    /// existing one gets its parent synced once.
    #[test]
    fn created_directories_are_synced_into_their_parents() {
        let synced = Arc::new(Mutex::new(Vec::new()));
        let disk = Recording(SimStorage::new(1), synced.clone());
        disk.create_dir_all(Path::new("/a")).unwrap();
        create_dir_durable(&disk, Path::new("/a/b/c/tree")).unwrap();
        let want: Vec<PathBuf> = ["/a", "/a/b", "/a/b/c"].iter().map(PathBuf::from).collect();
        assert_eq!(*synced.lock().unwrap(), want);
        synced.lock().unwrap().clear();
        create_dir_durable(&disk, Path::new("/a/b/c/tree")).unwrap();
        assert_eq!(*synced.lock().unwrap(), [PathBuf::from("/a/b/c")]);
    }
}
