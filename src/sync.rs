//! The atomics, locks and once-cells of the log's lock-free parts (the ring, the
//! reservation and its claims, the durable watermark): `std`'s, or loom's
//! when built with `--cfg loom`, so that the loom models in
//! `wal::loom_models` check the real code. A re-export either way: nothing
//! changes in a normal build.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::OnceLock;

/// `std`'s `OnceLock` as far as the log uses it, over loom's primitives so
/// that loom sees the ordering a set value gives its readers.
#[cfg(loom)]
pub(crate) struct OnceLock<T> {
    set: loom::sync::atomic::AtomicBool,
    value: loom::cell::UnsafeCell<Option<T>>,
    lock: Mutex<()>,
}

#[cfg(loom)]
// SAFETY: the value is written once, under `lock`, before `set` is released;
// read only after `set` is acquired (loom checks that).
unsafe impl<T: Send + Sync> Sync for OnceLock<T> {}

#[cfg(loom)]
impl<T> OnceLock<T> {
    /// An empty cell.
    pub(crate) fn new() -> Self {
        Self {
            set: loom::sync::atomic::AtomicBool::new(false),
            value: loom::cell::UnsafeCell::new(None),
            lock: Mutex::new(()),
        }
    }

    /// The value, once set.
    pub(crate) fn get(&self) -> Option<&T> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: set, so written once and never again; the reference lives
        // as long as `self`.
        self.value.with(|p| unsafe { (*p).as_ref() })
    }

    /// The value, set to `f()` first if it was not set.
    pub(crate) fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        let _g = self.lock.lock().unwrap();
        if self.get().is_none() {
            let v = f();
            // SAFETY: under `lock` and not set yet: no reader looks.
            self.value.with_mut(|p| unsafe { *p = Some(v) });
            self.set.store(true, Ordering::Release);
        }
        self.get().expect("just set")
    }
}
