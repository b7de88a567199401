//! The thread seam: every way the library's threads start, wait, wake each
//! other and read the clock goes through here.
//!
//! Outside a simulation each call is the `std` one (one relaxed load decides
//! that). Inside one ([`crate::sim::Simulator::run`]) the threads of the run
//! take turns, one at a time: a thread gives up its turn only at these
//! calls and at the simulated disk's operations, and a seeded scheduler
//! ([`sched`]) picks who goes next over a simulated clock. The production
//! threads run the same code either way; the simulation only decides the
//! order. One seed, one history.
//!
//! Owns no state of the tree or the log; the scheduler's state belongs to
//! the simulation that made it.

pub(crate) mod sched;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread, ThreadId};
use std::time::{Duration, Instant};

use sched::Ctx;

/// Simulations running in this process: while zero, no call here looks at
/// its thread's context.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The simulation this thread takes part in, and its number there.
    static CTX: std::cell::RefCell<Option<Ctx>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's simulation, if it runs in one.
#[inline]
fn ctx() -> Option<Ctx> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    CTX.with(|c| c.borrow().clone())
}

/// Whether the calling thread runs in a simulation.
pub(crate) fn simulated() -> bool {
    ctx().is_some()
}

/// A thread to wake: an OS thread, or one of a simulation's.
#[derive(Clone)]
pub(crate) enum Handle {
    Os(Thread),
    Sim(Ctx),
}

impl Handle {
    /// Wakes the thread from [`park`] (or makes its next `park` return).
    pub(crate) fn unpark(&self) {
        match self {
            Handle::Os(t) => t.unpark(),
            Handle::Sim(c) => c.unpark(),
        }
    }
}

/// The calling thread's handle.
pub(crate) fn current() -> Handle {
    match ctx() {
        Some(c) => Handle::Sim(c),
        None => Handle::Os(std::thread::current()),
    }
}

/// A thread started by [`spawn`].
pub(crate) struct Joiner {
    os: JoinHandle<()>,
    handle: Handle,
}

impl Joiner {
    /// The thread's handle, to unpark it.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The OS thread's id.
    pub(crate) fn id(&self) -> ThreadId {
        self.os.thread().id()
    }

    /// Waits for the thread to end; `Err` if it panicked.
    #[track_caller]
    pub(crate) fn join(self) -> std::thread::Result<()> {
        if let Handle::Sim(c) = &self.handle {
            // Its turns are over once it is done: the OS join below then
            // waits only for the thread to unwind its last frame.
            match ctx() {
                Some(me) => me.wait_done(c.id()),
                None => c.wait_done_from_outside(),
            }
        }
        self.os.join()
    }
}

/// Starts a named thread running `f`. In a simulation it joins the
/// caller's and waits for its first turn.
pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<Joiner> {
    let builder = std::thread::Builder::new().name(name.into());
    match ctx() {
        None => {
            let os = builder.spawn(f)?;
            let handle = Handle::Os(os.thread().clone());
            Ok(Joiner { os, handle })
        }
        Some(me) => {
            let child = me.register(name);
            let c = child.clone();
            let os = builder.spawn(move || {
                CTX.with(|x| *x.borrow_mut() = Some(c.clone()));
                c.first_turn();
                // Done even if `f` panics: the others must not wait on it.
                struct Exit(Ctx);
                impl Drop for Exit {
                    fn drop(&mut self) {
                        self.0.exit();
                        CTX.with(|x| *x.borrow_mut() = None);
                    }
                }
                let _exit = Exit(c);
                f();
            });
            match os {
                Ok(os) => Ok(Joiner {
                    os,
                    handle: Handle::Sim(child),
                }),
                Err(e) => {
                    child.exit_unstarted();
                    Err(e)
                }
            }
        }
    }
}

/// Blocks until unparked (or spuriously, as `std::thread::park`).
#[track_caller]
pub(crate) fn park() {
    match ctx() {
        None => std::thread::park(),
        Some(c) => c.park(None),
    }
}

/// Blocks until unparked or `d` has passed.
#[track_caller]
pub(crate) fn park_timeout(d: Duration) {
    match ctx() {
        None => std::thread::park_timeout(d),
        Some(c) => c.park(Some(d)),
    }
}

/// Sleeps for `d`.
#[track_caller]
pub(crate) fn sleep(d: Duration) {
    match ctx() {
        None => std::thread::sleep(d),
        Some(c) => c.sleep(d),
    }
}

/// Lets another thread run.
#[track_caller]
pub(crate) fn yield_now() {
    match ctx() {
        None => std::thread::yield_now(),
        Some(c) => c.point(),
    }
}

/// One turn of a spin loop.
#[inline]
#[track_caller]
pub(crate) fn spin() {
    match ctx() {
        None => std::hint::spin_loop(),
        Some(c) => c.spin(),
    }
}

/// The current time (the simulated clock in a simulation).
#[inline]
pub(crate) fn now() -> Instant {
    match ctx() {
        None => Instant::now(),
        Some(c) => c.now(),
    }
}

/// A point where a simulation may hand the turn to another thread:
/// between the steps of a lock-free protocol, and at every simulated I/O.
/// Nothing outside a simulation.
#[inline]
#[track_caller]
pub(crate) fn point() {
    if let Some(c) = ctx() {
        c.point();
    }
}

/// A simulated I/O that takes time (a sync): in a simulation the thread
/// waits for a seeded latency on the simulated clock, others running
/// meanwhile. Nothing outside a simulation.
#[track_caller]
pub(crate) fn io_wait() {
    if let Some(c) = ctx() {
        c.io_wait();
    }
}

/// Locks `m` (a poisoned lock is taken as it is). In a simulation a held
/// lock is waited for by giving up the turn, so its holder can run.
#[track_caller]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => match ctx() {
            None => m.lock().unwrap_or_else(|e| e.into_inner()),
            Some(c) => loop {
                c.wait_poll(None);
                match m.try_lock() {
                    Ok(g) => {
                        c.progress();
                        return g;
                    }
                    Err(std::sync::TryLockError::Poisoned(p)) => {
                        c.progress();
                        return p.into_inner();
                    }
                    Err(std::sync::TryLockError::WouldBlock) => {}
                }
            },
        },
    }
}

/// [`lock`] for a `parking_lot` mutex.
#[track_caller]
pub(crate) fn lock_pl<T: ?Sized>(m: &parking_lot::Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    if let Some(g) = m.try_lock() {
        return g;
    }
    match ctx() {
        None => m.lock(),
        Some(c) => loop {
            c.wait_poll(None);
            if let Some(g) = m.try_lock() {
                c.progress();
                return g;
            }
        },
    }
}

/// Waits on `cv` (which pairs with `m`, whose guard `g` is) until notified
/// or spuriously; callers re-check their condition.
#[track_caller]
pub(crate) fn wait<'a, T>(
    cv: &Condvar,
    m: &'a Mutex<T>,
    g: MutexGuard<'a, T>,
) -> MutexGuard<'a, T> {
    match ctx() {
        None => cv.wait(g).unwrap_or_else(|e| e.into_inner()),
        Some(c) => {
            drop(g);
            c.wait_poll(None);
            lock(m)
        }
    }
}

/// [`wait`] for at most `d`, on a mutex that is only ever held briefly (it
/// is taken back for real, even in a simulation: it may be shared by
/// several).
#[track_caller]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    m: &'a Mutex<T>,
    g: MutexGuard<'a, T>,
    d: Duration,
) -> MutexGuard<'a, T> {
    match ctx() {
        None => cv.wait_timeout(g, d).unwrap_or_else(|e| e.into_inner()).0,
        Some(c) => {
            drop(g);
            c.wait_poll(Some(d));
            // Held only briefly by anyone (see the callers), perhaps by a
            // thread of another simulation: taken for real.
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

/// The next message of `rx`; `None` once every sender is gone.
#[track_caller]
pub(crate) fn recv<T>(rx: &Receiver<T>) -> Option<T> {
    match ctx() {
        None => rx.recv().ok(),
        Some(c) => loop {
            match rx.try_recv() {
                Ok(v) => {
                    c.progress();
                    return Some(v);
                }
                Err(TryRecvError::Disconnected) => {
                    c.progress();
                    return None;
                }
                Err(TryRecvError::Empty) => c.wait_poll(None),
            }
        },
    }
}

/// Runs `f` to completion on this thread, parking it between polls (no
/// executor needed; in a simulation the other threads run meanwhile).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(Handle);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake-up before this park leaves the token set: no loss.
        park();
    }
}

/// Time since `t0` (taken from [`now`]).
#[inline]
pub(crate) fn elapsed(t0: Instant) -> Duration {
    now().saturating_duration_since(t0)
}

/// In a simulation, 64 bits from its seed (salts and ids must replay too);
/// outside one, `None`: the caller takes them from the OS.
pub(crate) fn random() -> Option<u64> {
    ctx().map(|c| c.random())
}
