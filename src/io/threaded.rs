//! The threaded fallback: plain `pwrite` + `fdatasync` system calls, made
//! from whichever crate thread calls them (the committer thread for the WAL).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{IoBackend, LockGuard, Storage, StorageFile};

/// Files through ordinary blocking system calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadedStorage;

/// A file of [`ThreadedStorage`] (also used by the io_uring backend for
/// everything off the hot path).
pub(crate) struct StdFile(pub(crate) File);

impl StdFile {
    pub(crate) fn open(path: &Path, create: bool) -> io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map(StdFile)
    }

    /// Opens the existing `path` with `O_DIRECT`; `None` where the file
    /// system refuses it (`EINVAL`, e.g. tmpfs on older kernels).
    pub(crate) fn open_direct(path: &Path) -> io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Ok(Some(StdFile(f))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl StorageFile for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, mut off: u64, mut buf: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        while !buf.is_empty() {
            match self.0.read_at(buf, off) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    off += n as u64;
                    buf = &mut buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn write_at(&self, mut off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        for b in bufs {
            self.0.write_all_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        preallocate(&self.0, len)
    }
}

/// `fallocate` up to `len` (keeping the file's size when it is shorter).
pub(crate) fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return Ok(());
    };
    // SAFETY: `f` is an open descriptor for the call; fallocate only
    // reserves blocks (FALLOC_FL_KEEP_SIZE leaves the size and contents).
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        // A file system without fallocate: nothing to reserve.
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// The namespace calls of the backends on the OS file system (threaded and
/// io_uring alike), as `Storage` methods.
macro_rules! os_namespace {
    () => {
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir_all(path)
        }
        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            $crate::io::threaded::sync_dir(path)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            $crate::io::threaded::list(dir)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            std::fs::remove_file(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            std::fs::rename(from, to)
        }
        fn exists(&self, path: &Path) -> bool {
            path.exists()
        }
        fn lock(&self, path: &Path) -> io::Result<$crate::io::LockGuard> {
            $crate::io::threaded::lock(path)
        }
        fn map(&self, path: &Path) -> io::Result<std::sync::Arc<dyn $crate::io::Mapped>> {
            $crate::io::threaded::map(path)
        }
        fn shrink(&self, path: &Path, len: u64) -> io::Result<()> {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(len)
        }
    };
}
pub(crate) use os_namespace;

impl Storage for ThreadedStorage {
    fn backend(&self) -> IoBackend {
        IoBackend::Threaded
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(StdFile::open(path, create)?))
    }
    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn StorageFile>>> {
        Ok(StdFile::open_direct(path)?.map(|f| Box::new(f) as Box<dyn StorageFile>))
    }
    os_namespace!();
}

/// A read-only memory mapping of `path`.
pub(crate) fn map(path: &Path) -> io::Result<std::sync::Arc<dyn super::Mapped>> {
    let f = File::open(path)?;
    // SAFETY: the crate maps only shard files, whose mapped part (sealed
    // chunks) it never writes or truncates once written; other processes
    // are kept out by the directory lock. Something else rewriting the file
    // under us would change what reads see (not memory safety of Rust
    // objects: chunks are plain bytes), and checksums would catch it.
    let m = unsafe { memmap2::Mmap::map(&f)? };
    Ok(std::sync::Arc::new(m))
}

/// An exclusive, non-blocking lock on `path` ([`File::try_lock`], an
/// `flock` on Linux): held per open file description, so a second open in
/// the same process is refused too, with `ErrorKind::WouldBlock`.
pub(crate) fn lock(path: &Path) -> io::Result<LockGuard> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(LockGuard::new(f)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

pub(crate) fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file()
            && let Some(n) = e.file_name().to_str()
        {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}
