//! Durability futures and the watermark they wait on.
//!
//! Owns the durable watermark, the failure state (poison or close) and the
//! queue of waiting wakers. The committer advances the watermark; nothing
//! else writes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::error::Error;

/// Why the log stopped making things durable.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// A write or sync failed; nothing at or after `offset` is durable.
    Poisoned { offset: u64, reason: String },
    /// The log was closed before this position became durable.
    Closed,
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Poisoned { offset, reason } => Error::Poisoned {
                offset: *offset,
                reason: reason.clone(),
            },
            Failure::Closed => Error::Closed,
        }
    }
}

struct Waiter {
    lsn: u64,
    waker: Waker,
}

/// What durable futures share with the committer.
pub(crate) struct Watermark {
    /// Every byte of the log below this LSN is on stable storage.
    durable: AtomicU64,
    failure: OnceLock<Failure>,
    /// Unordered: registering is a push, and the committer takes the whole
    /// list at once, so neither side holds the lock for more than O(1).
    waiters: Mutex<Vec<Waiter>>,
}

impl Watermark {
    pub(crate) fn new(durable: u64) -> Self {
        Self {
            durable: AtomicU64::new(durable),
            failure: OnceLock::new(),
            waiters: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn failure(&self) -> Option<&Failure> {
        self.failure.get()
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the watermark to `lsn` and wakes every waiter it covers.
    pub(crate) fn advance(&self, lsn: u64) {
        self.durable.fetch_max(lsn, Ordering::Release);
        let taken = std::mem::take(&mut *self.waiters());
        let mut keep = Vec::new();
        for w in taken {
            if w.lsn <= lsn {
                w.waker.wake();
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            // Waiters of later groups go back (beside any registered since).
            self.waiters().append(&mut keep);
        }
    }

    /// Stops the log: every waiter past the watermark resolves with
    /// `failure` (the first failure set wins). Returns the failure in force.
    pub(crate) fn fail(&self, failure: Failure) -> Failure {
        let f = self.failure.get_or_init(|| failure).clone();
        let all = std::mem::take(&mut *self.waiters());
        all.into_iter().for_each(|w| w.waker.wake());
        f
    }

    /// The state of position `lsn`: `Some` once it is decided.
    #[inline]
    fn check(&self, lsn: u64) -> Option<Result<(), Error>> {
        if self.durable() >= lsn {
            return Some(Ok(()));
        }
        self.failure.get().map(|f| Err(f.to_error()))
    }

    fn poll_lsn(&self, lsn: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(r) = self.check(lsn) {
            return Poll::Ready(r);
        }
        let mut w = self.waiters();
        // Checked again under the lock: `advance` and `fail` update the state
        // before they take it, so no wake-up is lost in between.
        if let Some(r) = self.check(lsn) {
            return Poll::Ready(r);
        }
        w.push(Waiter {
            lsn,
            waker: cx.waker().clone(),
        });
        Poll::Pending
    }
}

/// Resolves once an insert is on stable storage.
///
/// `Ok(())` means the insert's log record and every byte before it were
/// written and then covered by an `fdatasync` that began after the write
/// completed: the insert survives a crash. `Err` means the log failed (or
/// was closed) before that: the insert may be lost, and the tree refuses
/// further inserts until reopened.
///
/// Cheap to clone (all clones resolve alike), `Send + Sync + Unpin +
/// 'static`, cancel-safe (dropping it changes nothing), and it never hangs:
/// every path that stops the log resolves every pending future.
#[derive(Clone)]
pub struct Durable {
    lsn: u64,
    mark: Arc<Watermark>,
}

impl Durable {
    pub(crate) fn new(lsn: u64, mark: Arc<Watermark>) -> Self {
        Self { lsn, mark }
    }

    /// Whether the insert is durable already.
    pub fn is_durable(&self) -> bool {
        self.mark.durable() >= self.lsn
    }

    /// The log position this future waits for.
    pub fn position(&self) -> u64 {
        self.lsn
    }

    /// Blocks the calling thread until the insert is durable (or the log
    /// failed). For threads outside async code: inside an async runtime,
    /// `.await` the future instead.
    pub fn wait(&self) -> Result<(), Error> {
        futures::executor::block_on(self.clone())
    }
}

impl Future for Durable {
    type Output = Result<(), Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.mark.poll_lsn(self.lsn, cx)
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("position", &self.lsn)
            .field("durable", &self.is_durable())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_traits<T: Future + Clone + Send + Sync + Unpin + 'static>() {}
    const _: () = assert_traits::<Durable>();

    #[test]
    fn resolves_on_advance_and_on_failure() {
        let mark = Arc::new(Watermark::new(0));
        let a = Durable::new(10, mark.clone());
        let b = Durable::new(20, mark.clone());
        let waiter = std::thread::spawn({
            let a = a.clone();
            move || a.wait()
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!a.is_durable());
        mark.advance(15);
        waiter.join().unwrap().unwrap();
        assert!(a.is_durable() && !b.is_durable());
        let waiter = std::thread::spawn(move || b.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        mark.fail(Failure::Poisoned {
            offset: 15,
            reason: "EIO".into(),
        });
        assert!(matches!(
            waiter.join().unwrap(),
            Err(Error::Poisoned { offset: 15, .. })
        ));
        // Already durable stays Ok; later ones fail at once.
        assert!(a.wait().is_ok());
        assert!(Durable::new(16, mark).wait().is_err());
    }
}
