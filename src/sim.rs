//! Deterministic simulation: one seed, one history.
//!
//! A [`Simulator`] runs a closure on the calling thread together with every
//! thread the library starts from it (committer, segment preparer,
//! reclaimer, the tree's worker), one at a time. A thread gives up its turn
//! only where it would wait anyway (park, sleep, a held lock, an empty
//! queue), at the steps of the lock-free protocols, and at every operation
//! of the simulated disk ([`SimStorage`](crate::io::SimStorage)); the next
//! thread is chosen by a generator seeded by the simulator's seed. Time is
//! simulated too: syncs take seeded latencies (some of them a slow disk's),
//! timeouts fire when the simulated clock reaches them, and the clock jumps
//! ahead when every thread waits. So with a [`SimStorage`](crate::io::SimStorage) of a fixed seed
//! and a closure that makes the same calls, the same seed gives the same
//! interleaving, the same faults at the same points and the same disk.
//!
//! A run that deadlocks (every thread waits and no deadline is left), or
//! that has a thread still waiting when the closure returned, stops the
//! process with a description of every thread and the replay command given
//! to [`Simulator::new`].
//!
//! ```
//! use ringtree::io::SimStorage;
//! use ringtree::sim::{Simulator, block_on};
//! use std::sync::Arc;
//! use ringtree::{Blake3, Config, Tree};
//!
//! let sim = Simulator::new(7, "cargo test --doc sim");
//! let root = sim.run(|| {
//!     let disk = SimStorage::new(7);
//!     let config = Config::new("/sim/doc").storage(Arc::new(disk));
//!     let tree = Tree::<Blake3, 2, 32>::open_blocking(config).unwrap();
//!     let ins = block_on(tree.insert([1; 32])).unwrap();
//!     block_on(ins.durable).unwrap();
//!     block_on(tree.close()).unwrap();
//!     ins.root
//! });
//! assert_eq!(root, [1; 32]);
//! ```

use std::time::Duration;

pub use crate::rt::block_on;
use crate::rt::sched::{Ctx, Options};

/// A deterministic scheduler for the threads of one run; see the [module
/// docs](self).
#[derive(Clone, Debug)]
pub struct Simulator {
    seed: u64,
    opts: Options,
}

/// What a finished run did: equal for two runs of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    /// Scheduling decisions taken.
    pub steps: u64,
    /// A digest of every decision (which thread ran at each step).
    pub trace: u64,
    /// Simulated time at the end.
    pub elapsed: Duration,
}

impl Simulator {
    /// A simulator for `seed`. How often a thread hands its turn on and how
    /// often a sync is slow are drawn from the seed too, so that seeds
    /// cover both long runs of one thread and fine interleavings. `replay`
    /// is printed if the run fails in the scheduler: the command that runs
    /// this seed again.
    pub fn new(seed: u64, replay: impl Into<String>) -> Self {
        let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
        let switch = [1 << 10, 1 << 12, 1 << 14, 1 << 15][(mix & 3) as usize];
        let slow_sync = [0, 1 << 9, 1 << 12][((mix >> 2) % 3) as usize];
        Self {
            seed,
            opts: Options {
                switch,
                slow_sync,
                max_steps: 50_000_000,
                replay: replay.into(),
                stacks: std::env::var_os("RINGTREE_SIM_BACKTRACE").is_some(),
            },
        }
    }

    /// The chance, in 65536, that a thread at a scheduling point hands the
    /// turn to another (the default is drawn from the seed).
    pub fn switch_chance(mut self, in_65536: u32) -> Self {
        self.opts.switch = in_65536.min(65536);
        self
    }

    /// Runs `f` on this thread, with every thread the library starts from
    /// it, under the scheduler; returns once `f` returned and every such
    /// thread ended. Runs may not nest on one thread.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.run_with_history(f).0
    }

    /// [`run`](Self::run), also returning what the run did.
    pub fn run_with_history<T>(&self, f: impl FnOnce() -> T) -> (T, History) {
        assert!(!crate::rt::simulated(), "simulations do not nest");
        // What this thread remembers of earlier runs would change this one.
        crate::wal::reset_thread();
        crate::tree::reset_thread();
        let ctx = Ctx::start(self.seed, self.opts.clone());
        struct End(Ctx);
        impl Drop for End {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        let end = End(ctx);
        let out = f();
        end.0.wait_all_done();
        let (steps, trace, elapsed) = end.0.history();
        drop(end);
        (
            out,
            History {
                steps,
                trace,
                elapsed,
            },
        )
    }
}
