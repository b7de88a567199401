//! The io_uring backend. A group commit is one write submitted with
//! `RWF_DSYNC` (the kernel completes it only once the data, and whatever
//! metadata reading it back needs, is on stable storage: a write followed
//! by an `fdatasync`, in one request), on a ring owned by the thread that
//! commits.
//!
//! Built on the `io-uring` crate rather than tokio-uring: tokio-uring has no
//! ring flags nor linked submissions and submits only when its runtime
//! parks, which made a write + `sync_data` slower than plain `pwrite` +
//! `fdatasync` on the same file. The rings are the library's and used from
//! its own threads; no future of them is exposed.
//!
//! Why `RWF_DSYNC` and not a linked write + `fsync`: an fsync request cannot
//! run without blocking, so io_uring hands it to one of its worker threads,
//! and its completion then needs the committer woken once more. A direct
//! (`O_DIRECT`) write with `RWF_DSYNC` is issued inline and its flush runs
//! from the write's completion. `cargo bench --bench commit_paths` compares
//! the candidates on one file. The commit ring is set up with
//! `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them (6.1+), so
//! completions are processed only when the committer waits for them.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, opcode, squeue, types};

use super::threaded::StdFile;
use super::{IoBackend, Storage, StorageFile};

/// Files whose commits and bulk writes go through io_uring.
#[derive(Clone)]
pub struct UringStorage {
    /// The ring for bulk writes (checkpoints), shared by the threads that
    /// make them; commits use their thread's own ring.
    bulk: Arc<Mutex<IoUring>>,
    /// The bulk ring failed and may hold requests: bulk writes fail from
    /// then on (commits are unaffected).
    broken: Arc<AtomicBool>,
}

impl std::fmt::Debug for UringStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringStorage")
    }
}

impl UringStorage {
    /// Sets up a ring; fails where io_uring is unavailable (`ENOSYS`) or
    /// forbidden (`EPERM`, e.g. Docker's default seccomp profile).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            bulk: Arc::new(Mutex::new(IoUring::new(64)?)),
            broken: Arc::default(),
        })
    }
}

/// The commit ring of a thread: only the thread that set it up submits to
/// it (what `SINGLE_ISSUER` requires), so it needs no lock.
struct ThreadRing {
    ring: IoUring,
    /// Set after a failure that may have left requests in flight: the ring
    /// is then never used again.
    broken: bool,
}

/// A thread's commit ring, or when setting one up last failed.
// One per thread: boxing the ring would only add an indirection per commit.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Ring(ThreadRing),
    /// Commits use plain system calls; setting a ring up is tried again
    /// after [`RETRY_RING`] (the failure may have been passing: memory, file
    /// descriptors).
    Failed(std::time::Instant),
}

const RETRY_RING: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// Set up on the thread's first commit.
    static COMMIT_RING: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's next ring setup fail (tests).
    static FAIL_SETUP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn commit_ring() -> io::Result<IoUring> {
    #[cfg(test)]
    if FAIL_SETUP.take() {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
    }
    // SINGLE_ISSUER and DEFER_TASKRUN need Linux 6.1; older kernels refuse
    // them with EINVAL and get a plain ring.
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
    {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(8),
        Err(e) => Err(e),
    }
}

struct UringFile {
    file: StdFile,
    bulk: Arc<Mutex<IoUring>>,
    broken: Arc<AtomicBool>,
}

/// Submits `entries` on `ring` and waits for all of them; `results[u]`
/// gets the result of the entry with user data `u`. An `Err` means the ring
/// is unusable (entries the kernel never took may still sit in its queue):
/// never use it again.
fn run_on(ring: &mut IoUring, entries: &[squeue::Entry], results: &mut [i32]) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        // All or nothing: an entry left behind in the queue would be
        // submitted by the next caller, pointing at memory freed by then.
        if sq.capacity() - sq.len() < entries.len() {
            return Err(io::Error::other("io_uring submission queue full"));
        }
        for e in entries {
            // SAFETY: every buffer and iovec an entry points to lives until
            // this function returns, and it returns only once nothing the
            // kernel took is still in flight (or aborts the process).
            unsafe { sq.push(e) }.expect("room was checked");
        }
    }
    let mut done = 0;
    let mut failure: Option<io::Error> = None;
    let mut started = std::time::Instant::now();
    while done < entries.len() {
        match ring.submit_and_wait(entries.len() - done) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                std::thread::yield_now();
            }
            Err(e) => {
                // Entries the kernel has not taken are not in flight; those
                // it took must be reaped before their buffers may be freed.
                let taken = entries.len() - ring.submission().len();
                let _ = failure.get_or_insert(e);
                if taken <= done {
                    break;
                }
                // The kernel holds writes that read this process's memory:
                // returning would let it read memory reused for something
                // else, so this waits for them, however long (the library
                // never aborts the process), saying so now and then.
                if started.elapsed() > std::time::Duration::from_secs(10) {
                    tracing::error!(error = ?failure, "io_uring stopped reporting on writes in flight; still waiting for them");
                    started = std::time::Instant::now();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        for cqe in ring.completion() {
            results[cqe.user_data() as usize] = cqe.result();
            done += 1;
        }
    }
    failure.map_or(Ok(()), Err)
}

impl UringFile {
    fn check_usable(&self) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the io_uring ring for bulk writes is unusable after an earlier failure",
            ));
        }
        Ok(())
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.0.as_raw_fd())
    }

    fn iovecs(bufs: &[&[u8]]) -> Vec<libc::iovec> {
        bufs.iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect()
    }
}

fn total(bufs: &[&[u8]]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Finishes a short write with plain system calls.
fn finish_write(file: &StdFile, off: u64, bufs: &[&[u8]], mut done: usize) -> io::Result<()> {
    let mut at = off;
    for b in bufs {
        let skip = done.min(b.len());
        done -= skip;
        if skip < b.len() {
            file.write_at(at + skip as u64, &[&b[skip..]])?;
        }
        at += b.len() as u64;
    }
    Ok(())
}

fn check(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

impl StorageFile for UringFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(off, buf)
    }

    // Off the commit path (segment preparation, recovery), plain system
    // calls: the ring then serves the committer alone, and a preparer's
    // megabytes of zeros never queue in front of a group commit.
    fn write_at(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        self.file.write_at(off, bufs)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        super::threaded::preallocate(&self.file.0, len)
    }

    /// All in flight at once on the bulk ring (32 per submission).
    fn write_many(&self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        for batch in writes.chunks(32) {
            let entries: Vec<squeue::Entry> = batch
                .iter()
                .enumerate()
                .map(|(i, (off, b))| {
                    opcode::Write::new(self.fd(), b.as_ptr(), b.len() as u32)
                        .offset(*off)
                        .build()
                        .user_data(i as u64)
                })
                .collect();
            let mut res = vec![0i32; batch.len()];
            let mut ring = self.bulk.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock: a failure on another thread marks
            // the ring before it lets go of it.
            self.check_usable()?;
            if let Err(e) = run_on(&mut ring, &entries, &mut res) {
                self.broken.store(true, Ordering::Release);
                return Err(e);
            }
            drop(ring);
            for ((off, b), r) in batch.iter().zip(res) {
                let n = check(r)?;
                if n < b.len() {
                    finish_write(&self.file, *off, &[b], n)?;
                }
            }
        }
        Ok(())
    }

    /// One `RWF_DSYNC` write on the calling thread's commit ring (which
    /// does not share the bulk ring's fate).
    fn write_sync(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let iov = Self::iovecs(bufs);
        let w = opcode::Writev::new(self.fd(), iov.as_ptr(), iov.len() as u32)
            .offset(off)
            .rw_flags(libc::RWF_DSYNC)
            .build()
            .user_data(0);
        let mut res = [0];
        let ran = COMMIT_RING.try_with(|slot| {
            let mut slot = slot.borrow_mut();
            let retry = match &*slot {
                None => true,
                Some(Slot::Failed(at)) => at.elapsed() >= RETRY_RING,
                Some(Slot::Ring(_)) => false,
            };
            if retry {
                *slot = Some(match commit_ring() {
                    Ok(ring) => Slot::Ring(ThreadRing {
                        ring,
                        broken: false,
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "no io_uring for this thread's commits for now; using pwrite + fdatasync");
                        Slot::Failed(std::time::Instant::now())
                    }
                });
            }
            match slot.as_mut() {
                Some(Slot::Ring(r)) if !r.broken => {
                    Some(run_on(&mut r.ring, &[w], &mut res).inspect_err(|e| {
                        tracing::error!(error = %e, "this thread's io_uring failed; its later commits use pwrite + fdatasync");
                        r.broken = true;
                    }))
                }
                _ => None,
            }
        });
        match ran {
            // No ring on this thread (or it is being torn down).
            Ok(None) | Err(_) => return self.file.write_sync(off, bufs),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(()))) => {}
        }
        let n = check(res[0])?;
        if n < total(bufs) {
            // Only the first n bytes were written (and synced): write the
            // rest and sync it. Nothing failed, so this is no retry.
            finish_write(&self.file, off, bufs, n)?;
            return self.file.sync_data();
        }
        Ok(())
    }
}

impl Storage for UringStorage {
    fn backend(&self) -> IoBackend {
        IoBackend::Uring
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(UringFile {
            file: StdFile::open(path, create)?,
            bulk: self.bulk.clone(),
            broken: self.broken.clone(),
        }))
    }
    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn StorageFile>>> {
        Ok(StdFile::open_direct(path)?.map(|file| {
            Box::new(UringFile {
                file,
                bulk: self.bulk.clone(),
                broken: self.broken.clone(),
            }) as Box<dyn StorageFile>
        }))
    }
    super::threaded::os_namespace!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file on an io_uring storage (with the directory holding it),
    /// or `None` where io_uring is unavailable.
    fn new_file() -> Option<(tempfile::TempDir, Box<dyn StorageFile>)> {
        let Ok(storage) = UringStorage::new() else {
            eprintln!("io_uring unavailable here; skipping");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let f = storage.open(&dir.path().join("f"), true).unwrap();
        Some((dir, f))
    }

    /// A commit goes through this thread's own ring (not the fallback),
    /// lands byte-exact, and a second thread gets a ring of its own.
    #[test]
    fn commits_use_the_threads_ring() {
        let Some((_dir, f)) = new_file() else { return };
        f.write_sync(10, &[b"hello ", b"ring"]).unwrap();
        let on_ring = || COMMIT_RING.with_borrow(|s| matches!(s, Some(Slot::Ring(r)) if !r.broken));
        assert!(on_ring(), "the commit did not use a ring");
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(!on_ring());
                f.write_sync(20, &[b"other thread"]).unwrap();
                assert!(on_ring());
            });
        });
        let mut got = vec![0u8; 32];
        let n = f.read_at(0, &mut got).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&got[10..20], b"hello ring");
        assert_eq!(&got[20..32], b"other thread");
    }

    /// A thread whose ring could not be set up commits with plain system
    /// calls, and tries a ring again later.
    #[test]
    fn a_failed_ring_setup_is_retried() {
        let Some((_dir, f)) = new_file() else { return };
        std::thread::scope(|s| {
            s.spawn(|| {
                let state = || {
                    COMMIT_RING.with_borrow(|s| match s {
                        Some(Slot::Ring(_)) => "ring",
                        Some(Slot::Failed(_)) => "failed",
                        None => "none",
                    })
                };
                FAIL_SETUP.set(true);
                f.write_sync(0, &[b"without a ring"]).unwrap();
                assert_eq!(state(), "failed");
                f.write_sync(0, &[b"still without"]).unwrap();
                assert_eq!(state(), "failed", "not retried at once");
                // As if the retry interval had passed.
                COMMIT_RING.with_borrow_mut(|s| {
                    *s = std::time::Instant::now()
                        .checked_sub(RETRY_RING)
                        .map(Slot::Failed)
                });
                f.write_sync(0, &[b"with a ring again"]).unwrap();
                assert_eq!(state(), "ring");
            });
        });
        let mut got = vec![0u8; 17];
        f.read_at(0, &mut got).unwrap();
        assert_eq!(&got, b"with a ring again");
    }
}
