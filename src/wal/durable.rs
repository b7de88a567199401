//! Durability futures and the watermark they wait on.
//!
//! Owns the durable watermark, the failure state (poison or close) and the
//! queue of waiting wakers. The committer advances the watermark; nothing
//! else writes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::sync::{AtomicU64, Mutex, MutexGuard, OnceLock, Ordering};
use std::task::{Context, Poll, Waker};

use crate::error::Error;

/// What poisoned the log: a message, and the file and I/O error behind it
/// where there was one, so a caller can tell a full disk from a failing one.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    pub reason: String,
    pub file: Option<std::path::PathBuf>,
    pub kind: Option<std::io::ErrorKind>,
    pub errno: Option<i32>,
}

impl Cause {
    /// A failure with no file or I/O error behind it.
    pub(crate) fn msg(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            file: None,
            kind: None,
            errno: None,
        }
    }

    /// An I/O error on `file`.
    pub(crate) fn io(file: &std::path::Path, what: &str, e: &std::io::Error) -> Self {
        Self {
            reason: format!("{what} {}: {e}", file.display()),
            file: Some(file.to_path_buf()),
            kind: Some(e.kind()),
            errno: e.raw_os_error(),
        }
    }

    /// The cause of `e`, keeping its file and I/O error.
    pub(crate) fn of(e: &Error) -> Self {
        let (kind, errno) = match e {
            Error::Io { source, .. } => (Some(source.kind()), source.raw_os_error()),
            Error::Poisoned { kind, errno, .. } => (*kind, *errno),
            _ => (None, None),
        };
        Self {
            reason: e.to_string(),
            file: e.file().map(std::path::Path::to_path_buf),
            kind,
            errno,
        }
    }
}

/// Why the log stopped making things durable.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// A write or sync failed; nothing at or after `offset` is durable.
    Poisoned { offset: u64, cause: Cause },
    /// The log was closed before this position became durable.
    Closed,
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Poisoned { offset, cause } => Error::Poisoned {
                offset: *offset,
                reason: cause.reason.clone(),
                file: cause.file.clone(),
                kind: cause.kind,
                errno: cause.errno,
            },
            Failure::Closed => Error::Closed,
        }
    }
}

struct Waiter {
    lsn: u64,
    waker: Waker,
}

// Ordered by position only, reversed: the heap's top is the earliest.
impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.lsn == other.lsn
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.lsn.cmp(&self.lsn)
    }
}

/// What durable futures share with the committer.
pub(crate) struct Watermark {
    /// Every byte of the log below this LSN is on stable storage.
    durable: AtomicU64,
    failure: OnceLock<Failure>,
    /// Waiters registered since the committer last looked, unordered:
    /// registering and taking them both hold this lock for O(1).
    incoming: Mutex<Vec<Waiter>>,
    /// Every other waiter, a heap by position that only `advance` and
    /// `fail` touch (never a writer): a commit takes exactly the waiters it
    /// covers, earliest first (so writers are woken in the order they
    /// wrote), without touching the others.
    waiters: Mutex<std::collections::BinaryHeap<Waiter>>,
    /// Spare buffers: wakers taken by the last `advance` (woken outside the
    /// locks) and the registrations it swapped out, kept to reuse their
    /// allocations (only the committer advances).
    ready: Mutex<(Vec<Waker>, Vec<Waiter>)>,
    /// Run by the next `advance` right after it took the registrations
    /// (tests: makes a race with `fail` happen on purpose).
    #[cfg(test)]
    after_take: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// How long a waiter may spin before it registers and sleeps, in
    /// nanoseconds (0: do not spin). The committer sets it after each group.
    spin_ns: AtomicU64,
    /// A waiter is spinning (at most one does at a time).
    spinning: std::sync::atomic::AtomicBool,
    /// Orders `advance` against `fail`: no position becomes durable after
    /// the failure is set.
    gate: Mutex<()>,
}

impl Watermark {
    pub(crate) fn new(durable: u64) -> Self {
        Self {
            durable: AtomicU64::new(durable),
            failure: OnceLock::new(),
            incoming: Mutex::new(Vec::new()),
            waiters: Mutex::new(std::collections::BinaryHeap::new()),
            ready: Mutex::new((Vec::new(), Vec::new())),
            #[cfg(test)]
            after_take: std::sync::Mutex::new(None),
            spin_ns: AtomicU64::new(0),
            spinning: std::sync::atomic::AtomicBool::new(false),
            gate: Mutex::new(()),
        }
    }

    /// After a group commit of `records` records that took `took`: lets
    /// the next waiters spin when the log serves one writer at a time.
    ///
    /// A lone writer's future then resolves on the thread that awaits it,
    /// without that thread going to sleep and being woken (waking an idle
    /// CPU can cost as much as the fdatasync itself). With more writers,
    /// groups hold more records, the budget is zero and waiters sleep at
    /// once: a spinning waiter would hold its executor thread from the
    /// tasks behind it.
    pub(crate) fn tune_spin(&self, records: u64, took: std::time::Duration) {
        const MAX: u64 = 250_000;
        let took = took.as_nanos().min(u128::from(MAX)) as u64;
        let budget = if records <= 2 && took < MAX {
            2 * took + 20_000
        } else {
            0
        };
        self.spin_ns.store(budget, Ordering::Relaxed);
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn failure(&self) -> Option<&Failure> {
        self.failure.get()
    }

    fn waiters(&self) -> MutexGuard<'_, std::collections::BinaryHeap<Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn incoming(&self) -> MutexGuard<'_, Vec<Waiter>> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the watermark to `lsn` and wakes every waiter it covers.
    /// After a failure it does nothing: the failure's offset is the last
    /// word (see [`poison_now`](Self::poison_now)).
    pub(crate) fn advance(&self, lsn: u64) {
        {
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            if self.failure.get().is_some() {
                return;
            }
            self.durable.fetch_max(lsn, Ordering::Release);
        }
        let mut spare = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let (ready, taken) = &mut *spare;
        // Registrations made before this point are taken here; later ones
        // see the new watermark (stored above, before the lock) and resolve
        // without registering.
        std::mem::swap(taken, &mut *self.incoming());
        // Tests widen the window in which a `fail` can run here.
        #[cfg(test)]
        {
            let hook = self.after_take.lock().unwrap().take();
            match hook {
                Some(f) => f(),
                None => crate::rt::yield_now(),
            }
        }
        {
            let mut w = self.waiters();
            w.extend(taken.drain(..));
            while w.peek().is_some_and(|top| top.lsn <= lsn) {
                ready.extend(w.pop().map(|top| top.waker));
            }
            // A `fail` that emptied the heap before the waiters taken above
            // were added set the failure first: they resolve with it.
            if self.failure.get().is_some() {
                ready.extend(w.drain().map(|top| top.waker));
            }
        }
        ready.drain(..).for_each(Waker::wake);
    }

    /// Stops the log: every waiter past the watermark resolves with
    /// `failure` (the first failure set wins). Returns the failure in force.
    pub(crate) fn fail(&self, failure: Failure) -> Failure {
        let f = {
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            self.failure.get_or_init(|| failure).clone()
        };
        self.wake_all();
        f
    }

    /// Poisons the log at the watermark as it stands (read under the same
    /// lock `advance` moves it under, so a future that resolved `Ok` before
    /// never resolves `Err` after). Returns the failure in force.
    pub(crate) fn poison_now(&self, cause: Cause) -> Failure {
        let f = {
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            let offset = self.durable();
            self.failure
                .get_or_init(|| Failure::Poisoned { offset, cause })
                .clone()
        };
        self.wake_all();
        f
    }

    fn wake_all(&self) {
        // Registrations after `failure` is set see it and do not register.
        let incoming = std::mem::take(&mut *self.incoming());
        let all = std::mem::take(&mut *self.waiters());
        incoming.into_iter().for_each(|w| w.waker.wake());
        all.into_iter().for_each(|w| w.waker.wake());
    }

    /// The state of position `lsn`: `Some` once it is decided.
    #[inline]
    fn check(&self, lsn: u64) -> Option<Result<(), Error>> {
        let failure = self.failure.get();
        // Past a poisoned offset a record fails even if a group commit in
        // flight at the failure made it durable later: every future at or
        // past the offset resolves alike, and the tree treats it as lost.
        if let Some(f @ Failure::Poisoned { offset, .. }) = failure
            && lsn > *offset
        {
            return Some(Err(f.to_error()));
        }
        if self.durable() >= lsn {
            return Some(Ok(()));
        }
        failure.map(|f| Err(f.to_error()))
    }

    /// Polls for `lsn`; the caller's record starts at `start`. A future
    /// whose record is durable (or failed) is ready at once, always.
    /// Otherwise, when the log serves one writer at a time (`spin_ns`),
    /// nothing before this record is waiting, and no other waiter spins,
    /// it spins for the budget before it registers and sleeps: the lone
    /// writer's future then resolves without its thread going to sleep and
    /// being woken, and writers behind it never spin.
    ///
    /// A task whose futures keep resolving this way would never return
    /// `Pending` and would starve the tasks sharing its executor thread
    /// (on a current-thread runtime, all of them: their inserts would never
    /// join its groups). So after [`SPIN_STREAK`] futures in a row on a
    /// thread resolved without sleeping (by spinning, or decided at their
    /// first poll), the next one there that is not decided yet yields to
    /// its executor once (wakes itself and returns `Pending`) before it may
    /// spin.
    fn poll_lsn(&self, start: u64, lsn: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(r) = self.check(lsn) {
            STREAK.set(STREAK.get().saturating_add(1));
            return Poll::Ready(r);
        }
        let budget = self.spin_ns.load(Ordering::Relaxed);
        if budget > 0 && self.durable() >= start {
            if STREAK.get() >= SPIN_STREAK {
                STREAK.set(0);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(r) = self.spin(lsn, budget) {
                STREAK.set(STREAK.get().saturating_add(1));
                return Poll::Ready(r);
            }
        }
        let mut w = self.incoming();
        // Checked again under the lock: `advance` and `fail` update the state
        // before they take it, so no wake-up is lost in between.
        if let Some(r) = self.check(lsn) {
            return Poll::Ready(r);
        }
        w.push(Waiter {
            lsn,
            waker: cx.waker().clone(),
        });
        STREAK.set(0);
        Poll::Pending
    }

    /// Spins up to `budget_ns` for `lsn` to be decided, unless another
    /// waiter is spinning already.
    fn spin(&self, lsn: u64, budget_ns: u64) -> Option<Result<(), Error>> {
        if self.spinning.swap(true, Ordering::Acquire) {
            return None;
        }
        // Lets the next waiter spin, however this one ends.
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.spinning);
        let t0 = crate::rt::now();
        let budget = std::time::Duration::from_nanos(budget_ns);
        loop {
            // Reading the clock costs more than a look: look often.
            for _ in 0..32 {
                if let Some(r) = self.check(lsn) {
                    return Some(r);
                }
                crate::rt::spin();
            }
            if crate::rt::elapsed(t0) >= budget {
                return None;
            }
            // Lets a thread the fsync needs (io_uring completes on the
            // committer's thread) run if the scheduler put it here.
            crate::rt::yield_now();
        }
    }
}

/// Futures resolved without sleeping in a row on one thread before its
/// next undecided waiter yields to its executor once (see `poll_lsn`).
const SPIN_STREAK: u32 = 8;

thread_local! {
    /// Futures resolved without sleeping in a row on this thread.
    static STREAK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Forgets this thread's run of futures (a simulation starts from nothing).
pub(crate) fn reset_thread() {
    STREAK.set(0);
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
    /// Where the record starts (for a flush: `lsn`).
    start: u64,
    lsn: u64,
    mark: Arc<Watermark>,
}

impl Durable {
    pub(crate) fn new(start: u64, lsn: u64, mark: Arc<Watermark>) -> Self {
        Self { start, lsn, mark }
    }

    /// Whether the insert is durable already.
    pub fn is_durable(&self) -> bool {
        matches!(self.mark.check(self.lsn), Some(Ok(())))
    }

    /// The log position this future waits for.
    pub fn position(&self) -> u64 {
        self.lsn
    }

    /// Blocks the calling thread until the insert is durable (or the log
    /// failed). For threads outside async code: inside an async runtime,
    /// `.await` the future instead.
    ///
    /// Runs no executor: it can be called from inside one (a `block_on`,
    /// a `Drop` during one) without nesting executors.
    pub fn wait(&self) -> Result<(), Error> {
        park_on(self.clone())
    }
}

/// Runs `f` to completion on this thread, parking it between polls: no
/// executor, so it can run inside one (a `block_on`, a `Drop` during one)
/// without nesting executors.
pub(crate) fn park_on<F: Future>(f: F) -> F::Output {
    crate::rt::block_on(f)
}

impl Future for Durable {
    type Output = Result<(), Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.mark.poll_lsn(self.start, self.lsn, cx)
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

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl futures::task::ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Waiters registered out of order: an advance wakes exactly those it
    /// covers, each once, and leaves the rest registered.
    #[test]
    fn advance_wakes_exactly_the_covered_waiters() {
        let mark = Watermark::new(0);
        let counts: Vec<Arc<Count>> = (0..6)
            .map(|_| Arc::new(Count(std::sync::atomic::AtomicUsize::new(0))))
            .collect();
        for (i, lsn) in [50u64, 10, 40, 20, 60, 30].into_iter().enumerate() {
            let waker = futures::task::waker(counts[i].clone());
            let mut cx = Context::from_waker(&waker);
            assert!(mark.poll_lsn(0, lsn, &mut cx).is_pending());
        }
        let woken =
            || -> Vec<usize> { counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect() };
        mark.advance(35);
        assert_eq!(woken(), [0, 1, 0, 1, 0, 1]);
        mark.advance(50);
        assert_eq!(woken(), [1, 1, 1, 1, 0, 1]);
        assert_eq!(mark.waiters().len() + mark.incoming().len(), 1);
        mark.fail(Failure::Closed);
        assert_eq!(woken(), [1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn resolves_on_advance_and_on_failure() {
        let mark = Arc::new(Watermark::new(0));
        let a = Durable::new(0, 10, mark.clone());
        let b = Durable::new(10, 20, mark.clone());
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
            cause: Cause::msg("EIO"),
        });
        assert!(matches!(
            waiter.join().unwrap(),
            Err(Error::Poisoned { offset: 15, .. })
        ));
        // Already durable stays Ok; later ones fail at once.
        assert!(a.wait().is_ok());
        assert!(Durable::new(16, 16, mark).wait().is_err());
    }

    /// Writers register while the committer advances and another thread
    /// fails the log: every future resolves (none is left registered by a
    /// failure racing an advance), those at or below the watermark Ok.
    #[test]
    fn failure_racing_advances_leaves_no_waiter() {
        for round in 0..200u64 {
            let mark = Arc::new(Watermark::new(0));
            let (tx, rx) = std::sync::mpsc::channel();
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    let (mark, tx) = (mark.clone(), tx.clone());
                    std::thread::spawn(move || {
                        for i in 0..50u64 {
                            let lsn = (i * 4 + w + 1) * 10;
                            let _ = Durable::new(lsn - 10, lsn, mark.clone()).wait();
                            tx.send(()).unwrap();
                        }
                    })
                })
                .collect();
            drop(tx);
            let committer = {
                let mark = mark.clone();
                std::thread::spawn(move || {
                    let mut at = 0;
                    while mark.failure().is_none() && at < 2000 {
                        at += 10;
                        mark.advance(at);
                        std::thread::yield_now();
                    }
                })
            };
            std::thread::sleep(std::time::Duration::from_micros(round * 7 % 300));
            mark.fail(Failure::Closed);
            let mut n = 0;
            while rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok() {
                n += 1;
            }
            assert_eq!(n, 200, "round {round}: a future never resolved");
            committer.join().unwrap();
            writers.into_iter().for_each(|w| w.join().unwrap());
        }
    }

    /// Poisoned while the committer advances: every position that was
    /// once seen durable stays `Ok` after the failure, and every other
    /// resolves `Err` (all clones of a future resolve alike).
    #[test]
    fn poisoning_while_advancing_keeps_what_resolved_ok() {
        for round in 0..300u64 {
            let mark = Arc::new(Watermark::new(0));
            let committer = {
                let mark = mark.clone();
                std::thread::spawn(move || {
                    let mut at = 0;
                    while mark.failure().is_none() && at < 100_000 {
                        at += 8;
                        mark.advance(at);
                    }
                })
            };
            let watcher = {
                let mark = mark.clone();
                std::thread::spawn(move || {
                    let mut seen_ok = 0;
                    while mark.failure().is_none() {
                        let d = mark.durable();
                        if matches!(mark.check(d), Some(Ok(()))) {
                            seen_ok = d;
                        }
                    }
                    seen_ok
                })
            };
            std::thread::sleep(std::time::Duration::from_micros(round % 50));
            let Failure::Poisoned { offset, .. } = mark.poison_now(Cause::msg("test")) else {
                panic!("not poisoned");
            };
            let seen_ok = watcher.join().unwrap();
            committer.join().unwrap();
            assert!(
                seen_ok <= offset,
                "round {round}: {seen_ok} was Ok, offset {offset}"
            );
            assert!(matches!(mark.check(seen_ok), Some(Ok(()))));
            assert!(matches!(mark.check(offset), Some(Ok(()))));
            assert!(matches!(mark.check(offset + 8), Some(Err(_))));
            assert_eq!(
                mark.durable(),
                offset,
                "round {round}: advanced past the failure"
            );
        }
    }

    /// The race on purpose: a waiter registered before an advance, taken by
    /// it, and a failure in between (it empties the heap before the waiter
    /// reaches it). The waiter is still woken, with the failure.
    #[test]
    fn failure_between_take_and_heap_wakes_the_waiter() {
        let mark = Arc::new(Watermark::new(0));
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = futures::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Durable::new(90, 100, mark.clone());
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        let m = mark.clone();
        *mark.after_take.lock().unwrap() = Some(Box::new(move || {
            m.fail(Failure::Closed);
        }));
        mark.advance(50);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the waiter was not woken"
        );
        assert!(matches!(
            Pin::new(&mut fut).poll(&mut cx),
            Poll::Ready(Err(Error::Closed))
        ));
        assert_eq!(mark.waiters().len() + mark.incoming().len(), 0);
    }
}
