//! The atomics and locks of the log's lock-free parts (the ring, the
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
