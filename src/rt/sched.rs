//! The deterministic scheduler of a simulation: the threads of a run take
//! turns, exactly one holding the turn at any time, and a seeded generator
//! picks who goes next at every point where a thread may give it up (see
//! the [module above](super)). Time is a simulated clock that moves only
//! with the run: a little per step, a seeded latency per sync, and a jump
//! to the next deadline when every thread waits.
//!
//! Waits come in two kinds. A *park* (and a sleep, and a sync's latency)
//! is precise: the thread runs again only once unparked or at its deadline,
//! so a lost wake-up shows as a thread that never runs again. A *poll* (a
//! held lock, an empty channel, a condition variable) gives up the turn and
//! looks again on a later one. When no thread can run and a round of polls
//! changed nothing, the clock jumps to the earliest deadline; with none,
//! the run is deadlocked and the process stops with the description and
//! the command that replays it (a panic could not unwind threads that wait
//! for a turn that never comes).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a simulated thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Runnable.
    Run,
    /// Parked until unparked or the deadline (simulated time since start).
    Park(Option<Duration>),
    /// Asleep until the deadline; unparks do not wake it.
    Sleep(Duration),
    /// Looks again at its condition on its next turn, or at the deadline.
    Poll(Option<Duration>),
    /// Finished (or never started).
    Done,
}

struct Thread {
    name: String,
    /// Where it last gave up its turn.
    at: &'static std::panic::Location<'static>,
    /// Its stack then, with `RINGTREE_SIM_BACKTRACE=1` (slow).
    stack: Option<String>,
    wait: Wait,
    /// An unpark arrived: the next park returns at once.
    token: bool,
    /// It polled and found nothing, and nothing changed since.
    looked: bool,
    cv: Arc<Condvar>,
}

/// How a run explores: chosen per seed by the caller (see
/// [`Simulator::new`](crate::sim::Simulator::new)).
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Chance in 65536 that a thread at a scheduling point hands the turn
    /// to another.
    pub(crate) switch: u32,
    /// Chance in 65536 that a sync takes a slow disk's time.
    pub(crate) slow_sync: u32,
    /// Steps after which the run is taken as stuck in a loop.
    pub(crate) max_steps: u64,
    /// Printed when the run fails in the scheduler: how to replay it.
    pub(crate) replay: String,
    /// Keep each waiting thread's stack for the failure report.
    pub(crate) stacks: bool,
}

struct State {
    rng: u64,
    running: usize,
    threads: Vec<Thread>,
    clock: Duration,
    steps: u64,
    /// A digest of every decision taken (who ran at each step).
    trace: u64,

    opts: Options,
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, in_65536: u32) -> bool {
        (self.next() & 0xffff) < u64::from(in_65536)
    }

    fn ready(&self, i: usize) -> bool {
        let t = &self.threads[i];
        match t.wait {
            Wait::Run => true,
            Wait::Park(d) => t.token || d.is_some_and(|d| d <= self.clock),
            Wait::Sleep(d) => d <= self.clock,
            Wait::Poll(d) => d.is_some_and(|d| d <= self.clock),
            Wait::Done => false,
        }
    }

    fn polling(&self, i: usize) -> bool {
        matches!(self.threads[i].wait, Wait::Poll(_))
    }

    fn deadline(&self, i: usize) -> Option<Duration> {
        match self.threads[i].wait {
            Wait::Park(d) | Wait::Poll(d) => d,
            Wait::Sleep(d) => Some(d),
            Wait::Run | Wait::Done => None,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("after {} steps at {:?} simulated:", self.steps, self.clock);
        for t in &self.threads {
            s.push_str(&format!(
                "\n  {} {:?}{} at {}",
                t.name,
                t.wait,
                if t.token { " unparked" } else { "" },
                t.at
            ));
            if let Some(b) = &t.stack {
                s.push_str(&format!("\n{b}"));
            }
        }
        s
    }

    fn record(&mut self, who: usize) {
        self.steps += 1;
        self.trace = (self.trace ^ (who as u64 + 1))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(5);
    }

    /// Something changed: every poller may find something new.
    fn changed(&mut self) {
        for t in &mut self.threads {
            t.looked = false;
        }
    }

    /// Who takes the turn from `me`: `me` itself unless it must leave (it
    /// waits) or the dice say so.
    fn pick(&mut self, me: usize, leaving: bool) -> usize {
        if !leaving && !self.chance(self.opts.switch) {
            return me;
        }
        loop {
            let n = self.threads.len();
            let ready: Vec<usize> = (0..n).filter(|&i| i != me && self.ready(i)).collect();
            let polls: Vec<usize> = (0..n)
                .filter(|&i| i != me && self.polling(i) && !self.ready(i))
                .collect();
            if !ready.is_empty() {
                // Pollers get turns too, so a lock's waiter sees it freed.
                let k = self.below((ready.len() + polls.len()) as u64) as usize;
                if k < ready.len() {
                    // It goes on from a wait that ended: that is a change.
                    self.changed();
                    return ready[k];
                }
                return polls[k - ready.len()];
            }
            if !leaving {
                return me;
            }
            if self.ready(me) {
                self.changed();
                return me;
            }
            let fresh: Vec<usize> = polls
                .iter()
                .copied()
                .filter(|&i| !self.threads[i].looked)
                .collect();
            if !fresh.is_empty() {
                let k = self.below(fresh.len() as u64) as usize;
                return fresh[k];
            }
            // Nothing can run and every poller looked in vain: time passes.
            let next = (0..n).filter_map(|i| self.deadline(i)).min();
            match next {
                Some(d) => {
                    self.clock = self.clock.max(d);
                    self.changed();
                }
                None => fail(&format!("deadlock {}", self.describe()), &self.opts.replay),
            }
        }
    }
}

/// Stops the process: a simulated thread that waits for a turn can be
/// neither woken nor unwound.
fn fail(what: &str, replay: &str) -> ! {
    eprintln!("ringtree simulation failed: {what}\nreplay: {replay}");
    std::process::abort();
}

/// The scheduler of one simulation, shared by its threads.
pub(crate) struct Core {
    st: Mutex<State>,
    base: Instant,
}

/// A thread of a simulation: the scheduler and the thread's number.
#[derive(Clone)]
pub(crate) struct Ctx {
    core: Arc<Core>,
    id: usize,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ctx {
    /// A new simulation whose calling thread is thread 0.
    #[track_caller]
    pub(crate) fn start(seed: u64, opts: Options) -> Self {
        let core = Arc::new(Core {
            st: Mutex::new(State {
                rng: seed ^ 0x5ee1_d0c5_cafe_f00d,
                running: 0,
                threads: vec![Thread {
                    name: "main".into(),
                    at: std::panic::Location::caller(),
                    stack: None,
                    wait: Wait::Run,
                    token: false,
                    looked: false,
                    cv: Arc::new(Condvar::new()),
                }],
                clock: Duration::ZERO,
                steps: 0,
                trace: 0xcbf2_9ce4_8422_2325,
                opts,
            }),
            base: Instant::now(),
        });
        super::ACTIVE.fetch_add(1, Ordering::SeqCst);
        let me = Self { core, id: 0 };
        super::CTX.with(|c| *c.borrow_mut() = Some(me.clone()));
        me
    }

    /// Ends the simulation of thread 0 (every other thread is done).
    pub(crate) fn finish(&self) {
        super::CTX.with(|c| *c.borrow_mut() = None);
        super::ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// Steps taken, the decisions' digest and the simulated time.
    pub(crate) fn history(&self) -> (u64, u64, Duration) {
        let st = self.core.lock();
        (st.steps, st.trace, st.clock)
    }

    /// A new thread, runnable, that waits for its first turn.
    pub(crate) fn register(&self, name: &str) -> Ctx {
        let mut st = self.core.lock();
        let n = st.threads.len();
        st.threads.push(Thread {
            name: format!("{name}#{n}"),
            at: std::panic::Location::caller(),
            wait: Wait::Run,
            token: false,
            looked: false,
            stack: None,
            cv: Arc::new(Condvar::new()),
        });
        Ctx {
            core: self.core.clone(),
            id: st.threads.len() - 1,
        }
    }

    /// Blocks the (new) thread until it has the turn.
    pub(crate) fn first_turn(&self) {
        let st = self.core.lock();
        drop(self.await_turn(st));
    }

    fn await_turn<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let cv = st.threads[self.id].cv.clone();
        while st.running != self.id {
            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Hands the turn to `to` and waits for it to come back.
    fn switch<'a>(&'a self, mut st: MutexGuard<'a, State>, to: usize) -> MutexGuard<'a, State> {
        st.record(to);
        if st.steps > st.opts.max_steps {
            let what = format!("no end in sight {}", st.describe());
            fail(&what, &st.opts.replay);
        }
        if to == self.id {
            return st;
        }
        st.running = to;
        st.threads[to].cv.notify_one();
        self.await_turn(st)
    }

    /// Waits as `wait` says until the scheduler gives the turn back.
    #[track_caller]
    fn block(&self, wait: Wait) {
        let mut st = self.core.lock();
        if matches!(wait, Wait::Poll(_)) {
            st.threads[self.id].looked = true;
        } else {
            // It ran since its last turn: polls may find something new.
            st.changed();
        }
        st.threads[self.id].wait = wait;
        st.threads[self.id].at = std::panic::Location::caller();
        if st.opts.stacks {
            st.threads[self.id].stack =
                Some(std::backtrace::Backtrace::force_capture().to_string());
        }
        let to = st.pick(self.id, true);
        let mut st = self.switch(st, to);
        st.threads[self.id].wait = Wait::Run;
    }

    /// The thread ended: the turn goes on.
    pub(crate) fn exit(&self) {
        let mut st = self.core.lock();
        st.threads[self.id].wait = Wait::Done;
        st.changed();
        if st.running != self.id {
            return;
        }
        let to = st.pick(self.id, true);
        st.record(to);
        st.running = to;
        st.threads[to].cv.notify_one();
    }

    /// The OS refused the thread: it never takes a turn.
    pub(crate) fn exit_unstarted(&self) {
        self.core.lock().threads[self.id].wait = Wait::Done;
    }

    #[track_caller]
    pub(crate) fn point(&self) {
        let mut st = self.core.lock();
        st.changed();
        st.clock += Duration::from_nanos(200);
        let to = st.pick(self.id, false);
        drop(self.switch(st, to));
    }

    #[track_caller]
    pub(crate) fn spin(&self) {
        let mut st = self.core.lock();
        st.clock += Duration::from_micros(1);
        // A spinner waits for another thread: let one run, mostly.
        let to = if st.chance(49152) {
            st.pick(self.id, true)
        } else {
            self.id
        };
        drop(self.switch(st, to));
    }

    pub(crate) fn random(&self) -> u64 {
        self.core.lock().next()
    }

    pub(crate) fn progress(&self) {
        self.core.lock().changed();
    }

    pub(crate) fn now(&self) -> Instant {
        self.core.base + self.core.lock().clock
    }

    pub(crate) fn unpark(&self) {
        let mut st = self.core.lock();
        st.threads[self.id].token = true;
    }

    #[track_caller]
    pub(crate) fn park(&self, timeout: Option<Duration>) {
        {
            let mut st = self.core.lock();
            if std::mem::take(&mut st.threads[self.id].token) {
                return;
            }
            let until = timeout.map(|d| st.clock + d);
            drop(st);
            self.block(Wait::Park(until));
        }
        self.core.lock().threads[self.id].token = false;
    }

    #[track_caller]
    pub(crate) fn sleep(&self, d: Duration) {
        let until = self.core.lock().clock + d;
        self.block(Wait::Sleep(until));
    }

    #[track_caller]
    pub(crate) fn io_wait(&self) {
        let d = {
            let mut st = self.core.lock();
            let slow = st.opts.slow_sync;
            if st.chance(slow) {
                Duration::from_micros(2_000 + st.below(18_000))
            } else {
                Duration::from_micros(20 + st.below(180))
            }
        };
        self.sleep(d);
    }

    #[track_caller]
    pub(crate) fn wait_poll(&self, timeout: Option<Duration>) {
        let until = timeout.map(|d| self.core.lock().clock + d);
        self.block(Wait::Poll(until));
    }

    /// Waits (giving up turns) until thread `id` is done.
    #[track_caller]
    pub(crate) fn wait_done(&self, id: usize) {
        while self.core.lock().threads[id].wait != Wait::Done {
            self.wait_poll(None);
        }
        self.progress();
    }

    /// A thread outside the simulation joins one of it: nothing to wait
    /// for in the scheduler (a run ends only once its threads are done).
    pub(crate) fn wait_done_from_outside(&self) {}

    /// Waits until every other thread is done; a thread that never ends is
    /// a failure of the run.
    #[track_caller]
    pub(crate) fn wait_all_done(&self) {
        loop {
            let left = {
                let st = self.core.lock();
                (0..st.threads.len()).find(|&i| i != self.id && st.threads[i].wait != Wait::Done)
            };
            match left {
                None => return,
                Some(i) => self.wait_done(i),
            }
        }
    }
}
