//! The tree's background worker: one thread, owned by the tree for its
//! whole life, that runs the tree's blocking work in order (open,
//! checkpoints, the background check of a loaded checkpoint, close).
//!
//! Async callers hand work to it and await the result, so no executor
//! thread blocks on disk I/O; the tree starts no thread per call.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use crate::error::Result;

type Job = Box<dyn FnOnce() + Send>;

/// A queue of jobs and the one thread that runs them. Dropping it ends
/// the thread after the jobs already queued, and joins it unless the drop
/// happens on that thread.
pub(crate) struct Worker {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs queued and not yet started.
    queued: Arc<AtomicUsize>,
    thread: Mutex<Option<crate::rt::Joiner>>,
    id: ThreadId,
    dir: PathBuf,
}

impl Worker {
    /// Starts the worker of the tree in `dir`.
    pub(crate) fn start(dir: &Path) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        let thread = crate::rt::spawn("ringtree-worker", move || {
            while let Some(job) = crate::rt::recv(&rx) {
                q.fetch_sub(1, Ordering::AcqRel);
                // A job that panics has said so its own way (`run`
                // reports it, the background check poisons the tree);
                // the jobs behind it still run.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|e| crate::error::io_err(dir, e))?;
        Ok(Arc::new(Self {
            jobs: Mutex::new(Some(tx)),
            queued,
            id: thread.id(),
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
        }))
    }

    /// Queues `job`; false once the worker stopped (the job is dropped).
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let jobs = crate::rt::lock(&self.jobs);
        let Some(tx) = jobs.as_ref() else {
            return false;
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(Box::new(job)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Runs `f` on the worker; resolves with its result. A stopped worker
    /// or a panic in `f` is an error naming the tree's directory.
    pub(crate) fn run<T, F>(
        &self,
        what: &'static str,
        f: F,
    ) -> impl Future<Output = Result<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        let queued = self.submit(move || {
            // Nobody waits for it any more (the caller's future was dropped).
            if tx.is_canceled() {
                return;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        let dir = self.dir.clone();
        async move {
            let fail = |msg: String| Err(crate::error::io_err(&dir, std::io::Error::other(msg)));
            if !queued {
                return fail(format!("{what}: the tree's worker has stopped"));
            }
            match rx.await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => fail(format!("{what} panicked")),
                Err(_) => fail(format!("{what}: the tree's worker has stopped")),
            }
        }
    }

    /// Whether other jobs wait behind the one running (a long job gives
    /// way to them).
    pub(crate) fn others_waiting(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// Lets the thread end by itself after the jobs already queued,
    /// instead of being joined when the worker is dropped.
    pub(crate) fn detach(&self) {
        drop(crate::rt::lock(&self.jobs).take());
        drop(crate::rt::lock(&self.thread).take());
    }

    /// Whether the caller runs on the worker.
    pub(crate) fn is_current(&self) -> bool {
        std::thread::current().id() == self.id
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(
            self.jobs
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread
            && t.id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

/// Directories whose tree was dropped without `close` and is still being
/// closed by its worker: an open of the same directory waits for that
/// close to let the directory go instead of failing with `Locked`.
static RELEASING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static RELEASED: std::sync::Condvar = std::sync::Condvar::new();

/// The registry, locked. Shared by every tree of the process (and every
/// simulation in it), it is held only for a look or a change, never while
/// waiting: a plain lock, which a simulated thread may wait on for real.
fn released_lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    RELEASING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key a directory is known by while it is released.
pub(crate) fn release_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Marks the directory whose [`release_key`] is `key` as being released;
/// the returned guard unmarks it when dropped (after the directory lock
/// went).
pub(crate) fn releasing(key: &Path) -> Releasing {
    let key = key.to_path_buf();
    released_lock().push(key.clone());
    Releasing(key)
}

/// See [`releasing`].
pub(crate) struct Releasing(PathBuf);

impl Drop for Releasing {
    fn drop(&mut self) {
        let mut all = released_lock();
        if let Some(i) = all.iter().position(|p| *p == self.0) {
            all.swap_remove(i);
        }
        drop(all);
        RELEASED.notify_all();
    }
}

/// Waits until no dropped tree is still releasing `dir`, for at most
/// [`RELEASE_WAIT`] (a close stuck in a sync that never returns must not
/// hold an open for ever: it then fails with `Locked`).
pub(crate) fn wait_released(dir: &Path) {
    let key = release_key(dir);
    let until = crate::rt::now() + RELEASE_WAIT;
    let mut all = released_lock();
    while all.contains(&key) {
        let left = until.saturating_duration_since(crate::rt::now());
        if left.is_zero() {
            return;
        }
        all = crate::rt::wait_timeout(&RELEASED, &RELEASING, all, left);
    }
}

/// The longest an open waits for a dropped tree to let its directory go.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `f` on a thread of its own (for `open`, before the tree and its
/// worker exist as a pair): the worker is started first and `f` runs on
/// it, then is handed the worker to keep.
pub(crate) fn open_on_worker<T, F>(dir: &Path, f: F) -> impl Future<Output = Result<T>> + use<T, F>
where
    T: Send + 'static,
    F: FnOnce(Arc<Worker>) -> Result<T> + Send + 'static,
{
    let started = Worker::start(dir);
    async move {
        let worker = started?;
        let w = worker.clone();
        // The job holds the only other handle: if the open fails, the
        // worker ends with the job.
        let fut = worker.run("open", move || f(w));
        drop(worker);
        fut.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn jobs_run_in_order_on_one_thread_and_drop_joins_it() {
        let w = Worker::start(Path::new("/w")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let seen = seen.clone();
            assert!(
                w.submit(move || { seen.lock().unwrap().push((i, std::thread::current().id())) })
            );
        }
        let r = futures::executor::block_on(w.run("job", || Ok(7)));
        assert_eq!(r.unwrap(), 7);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!(seen.iter().all(|s| s.1 == w.id));
        drop(w);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_worker_goes_on() {
        let w = Worker::start(Path::new("/w")).unwrap();
        assert!(w.submit(|| panic!("a queued job")));
        let r = futures::executor::block_on(w.run("job", || -> Result<()> { panic!("boom") }));
        assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
        assert_eq!(
            futures::executor::block_on(w.run("job", || Ok(1))).unwrap(),
            1
        );
    }

    #[test]
    fn an_open_waits_for_a_release_of_its_directory() {
        let dir = PathBuf::from("/released-test-dir");
        let guard = releasing(&release_key(&dir));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let waiter = std::thread::spawn(move || {
            wait_released(Path::new("/released-test-dir"));
            d.load(Ordering::Acquire)
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        done.store(true, Ordering::Release);
        drop(guard);
        assert!(waiter.join().unwrap(), "returned before the release");
    }
}
