//! Deterministic simulation of whole runs: a seed fixes the schedule (the
//! operations, the faults and where they strike), the simulated disk's
//! choices, and, through `ringtree::sim::Simulator`, the interleaving of
//! every thread the tree starts and the simulated clock. Each schedule is
//! checked against the durable-prefix bound at every reopen; a schedule run
//! twice gives the same history and the same disk, byte for byte.
//!
//! `RINGTREE_SIM_SCHEDULES=1000000 cargo test --release --test sim --
//! schedules --nocapture` is the long campaign; `RINGTREE_SIM_SEED` picks
//! the first seed (a failure prints the command that replays it).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Rng, leaf, naive_root};
use ringtree::io::SimStorage;
use ringtree::sim::{History, Simulator, block_on};
use ringtree::{Blake3, CheckpointPolicy, Config, Durable, Error, FlushPolicy, Hash, Tree};

type T = Tree<Blake3, 4, 32>;

/// What one schedule did, for comparing two runs of one seed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<String>,
    history: History,
    disk: [u8; 32],
}

fn replay(seed: u64) -> String {
    format!(
        "RINGTREE_SIM_SEED={seed} RINGTREE_SIM_SCHEDULES=1 cargo test --release --test sim -- schedules --nocapture"
    )
}

/// How a round ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Close,
    /// Dropped without `close`: the tree closes itself on its worker.
    Drop,
    /// Power loss: unsynced writes dropped, kept or torn.
    Crash,
    /// The process dies; the page cache survives.
    Kill,
}

/// A fault armed during a round (the harness does not know when it
/// strikes: that is the scheduler's and the disk's choice).
#[derive(Clone, Copy, Debug)]
enum Fault {
    CrashAtOp(u64),
    /// Between a write and the sync that would make it durable.
    CrashAtSync(u64),
    KillAtOp(u64),
    SyncFails(u64),
    DiskFull(u64),
}

/// The model: the tree's states since the last reopen (its leaves in index
/// order and its finalized size after each operation that changed it),
/// and the last of them known durable. Operations are in log order, so a
/// durable one makes every earlier one durable.
struct Model {
    states: Vec<State>,
    acked: usize,
    next: u64,
}

#[derive(Clone)]
struct State {
    leaves: Vec<Hash>,
    finalized: u64,
}

impl Model {
    fn fresh(&mut self, seed: u64) -> Hash {
        self.next += 1;
        leaf(seed << 24 | self.next)
    }

    fn now(&self) -> &State {
        self.states.last().expect("one state at least")
    }

    /// Records a new state; returns its index.
    fn push(&mut self, state: State) -> usize {
        self.states.push(state);
        self.states.len() - 1
    }

    /// Every state so far is durable.
    fn all_durable(&mut self) {
        self.acked = self.states.len() - 1;
    }

    /// The index of a state from the last durable one on with these
    /// leaves (size and root) and finality.
    fn find(&self, size: u64, root: Option<Hash>, finalized: Option<u64>) -> Option<usize> {
        (self.acked..self.states.len()).rev().find(|&i| {
            let st = &self.states[i];
            st.leaves.len() as u64 == size
                && finalized.is_none_or(|f| f == st.finalized)
                && naive_root(4, &st.leaves) == root
        })
    }
}

/// Runs schedule `seed` under the simulator: `Err` names the violated
/// invariant. `digest`: hash the disk at the end (for comparing runs).
fn run(seed: u64, digest: bool) -> Result<Outcome, String> {
    let sim = Simulator::new(seed, replay(seed));
    let disk = SimStorage::new(seed);
    let d = disk.clone();
    let (events, history) = sim.run_with_history(move || schedule(seed, &d));
    Ok(Outcome {
        events: events?,
        history,
        disk: if digest { disk.digest() } else { [0; 32] },
    })
}

/// The events of a schedule; printed as they happen with
/// `RINGTREE_SIM_VERBOSE=1` (to follow a replayed seed).
struct Events(Vec<String>, bool);

impl Events {
    fn push(&mut self, e: String) {
        if self.1 {
            eprintln!("{e}");
        }
        self.0.push(e);
    }
}

fn schedule(seed: u64, sim: &SimStorage) -> Result<Vec<String>, String> {
    let mut rng = Rng(seed);
    let mut ev = Events(
        Vec::new(),
        std::env::var_os("RINGTREE_SIM_VERBOSE").is_some(),
    );
    let flush = match rng.below(4) {
        0 => FlushPolicy::Manual,
        1 => FlushPolicy::Interval(Duration::from_micros(50 + rng.below(500))),
        _ => FlushPolicy::GroupCommit,
    };
    let policy = match rng.below(3) {
        0 => CheckpointPolicy::EveryNEntries(3 + rng.below(30)),
        1 => CheckpointPolicy::WalBytes(4 << 10),
        _ => CheckpointPolicy::Manual,
    };
    let segment = if rng.below(2) == 0 { 8 << 10 } else { 64 << 10 };
    let direct = rng.below(3) != 0;
    let dir = format!("/s{seed}");
    let config = |storage: &SimStorage| {
        Config::new(&dir)
            .storage(Arc::new(storage.clone()))
            .segment_size(segment)
            .buffer_capacity(16 << 10)
            .flush(flush)
            .checkpoint(policy)
            .direct_io(direct)
    };
    ev.push(format!(
        "{flush:?} {policy:?} segment {segment} direct {direct}"
    ));
    let mut m = Model {
        states: vec![State {
            leaves: Vec::new(),
            finalized: 0,
        }],
        acked: 0,
        next: 0,
    };
    let mut storage = sim.clone();
    let rounds = 1 + rng.below(4);
    for round in 0..rounds {
        let ctx = format!("seed {seed} round {round}");
        let tree = T::open_blocking(config(&storage)).map_err(|e| format!("{ctx}: reopen: {e}"))?;
        check_recovered(&tree, &mut m, &mut rng, &ctx)?;
        ev.push(format!(
            "open {} {:?}",
            tree.size(),
            tree.root().map(|r| r[0])
        ));
        let end = match rng.below(8) {
            0 | 1 => End::Close,
            2 => End::Drop,
            3..=5 => End::Crash,
            _ => End::Kill,
        };
        let fault = match rng.below(12) {
            0 => Some(Fault::CrashAtOp(rng.below(200))),
            4 | 5 => Some(Fault::CrashAtSync(rng.below(12))),
            1 => Some(Fault::KillAtOp(rng.below(200))),
            2 => Some(Fault::SyncFails(rng.below(20))),
            3 => Some(Fault::DiskFull(rng.below(64 << 10))),
            _ => None,
        };
        let fault_at = rng.below(40);
        ev.push(format!("plan {end:?} {fault:?} at {fault_at}"));
        let mut pending: Vec<(usize, Durable)> = Vec::new();
        let mut failed = false;
        // Readers never see writers: a snapshot keeps its size and root.
        let early = tree.snapshot();
        let early_root = early.root();
        let ops = 1 + rng.below(60);
        for op in 0..ops {
            if op == fault_at
                && let Some(f) = fault
            {
                match f {
                    Fault::CrashAtOp(n) => sim.crash_at_op(n),
                    Fault::CrashAtSync(n) => sim.crash_at_sync(n),
                    Fault::KillAtOp(n) => sim.kill_at_op(n),
                    Fault::SyncFails(n) => sim.fail_syncs_after(n),
                    Fault::DiskFull(n) => sim.enospc_after_bytes(n),
                }
            }
            let r = step(&tree, &mut m, &mut rng, seed, &mut pending, &ctx)?;
            ev.push(r.clone());
            if r.contains("Err") {
                // The tree failed: it refuses inserts from here on.
                if block_on(tree.insert(m.fresh(seed))).is_ok()
                    || block_on(tree.rewind(m.now().finalized)).is_ok()
                {
                    return Err(format!("{ctx}: a failed tree took an insert"));
                }
                failed = true;
                break;
            }
        }
        if early.root() != early_root {
            return Err(format!("{ctx}: a snapshot changed under later inserts"));
        }
        drop(early);
        // Every future resolves, whatever happened: the round ends by
        // closing or dropping, then waits on each.
        let closed = match end {
            End::Close => Some(block_on(tree.close())),
            End::Drop => {
                drop(tree);
                None
            }
            End::Crash | End::Kill => {
                if matches!(end, End::Crash) {
                    match rng.below(3) {
                        0 => sim.crash(),
                        1 => sim.crash_drop_all(),
                        _ => sim.crash_keep_all(),
                    }
                } else {
                    sim.kill();
                }
                drop(tree);
                None
            }
        };
        ev.push(format!(
            "end {end:?} {:?}",
            closed.as_ref().map(|r| r.is_ok())
        ));
        if matches!(closed, Some(Ok(()))) && !failed {
            // A clean close made everything durable.
            m.all_durable();
        }
        for (state, d) in pending.drain(..) {
            let ok = block_on(d).is_ok();
            if ok {
                m.acked = m.acked.max(state);
            }
            ev.push(format!("resolved {state} {ok}"));
        }
        // The next process: whatever was armed is gone with this one.
        sim.crash_keep_all();
        sim.clear_faults();
        storage = sim.restart();
    }
    let ctx = format!("seed {seed} last");
    let tree = T::open_blocking(config(&storage)).map_err(|e| format!("{ctx}: reopen: {e}"))?;
    check_recovered(&tree, &mut m, &mut rng, &ctx)?;
    // The recovered tree takes inserts, a checkpoint and another reopen.
    let more: Vec<Hash> = (0..5).map(|_| m.fresh(seed)).collect();
    let ins = block_on(tree.insert_many(&more)).map_err(|e| format!("{ctx}: insert: {e}"))?;
    let mut st = m.now().clone();
    st.leaves.extend_from_slice(&more);
    m.push(st);
    block_on(tree.checkpoint()).map_err(|e| format!("{ctx}: checkpoint: {e}"))?;
    block_on(ins.durable).map_err(|e| format!("{ctx}: durable: {e}"))?;
    m.all_durable();
    block_on(tree.close()).map_err(|e| format!("{ctx}: close: {e}"))?;
    let tree = T::open_blocking(config(&storage)).map_err(|e| format!("{ctx}: reopen: {e}"))?;
    check_recovered(&tree, &mut m, &mut rng, &ctx)?;
    ev.push(format!(
        "final {} {:?}",
        tree.size(),
        tree.root().map(|r| r[0])
    ));
    block_on(tree.close()).map_err(|e| format!("{ctx}: close: {e}"))?;
    Ok(ev.0)
}

/// One operation; returns what it did (an `Err` in it: the tree failed).
fn step(
    tree: &T,
    m: &mut Model,
    rng: &mut Rng,
    seed: u64,
    pending: &mut Vec<(usize, Durable)>,
    ctx: &str,
) -> Result<String, String> {
    let fail = |what: &str, e: Error| -> Result<String, String> {
        match e {
            // The log failed: the tree refuses inserts from here on.
            Error::Poisoned { .. } | Error::Closed => Ok(format!("{what} Err")),
            // A checkpoint's own failure: the log keeps every insert.
            Error::Io { .. } => Ok(format!("{what} failed")),
            // A background checkpoint's failure, reported once; the tree
            // goes on (what this call did is not known durable).
            Error::CheckpointFailed { .. } => Ok(format!("{what} reported a checkpoint failure")),
            Error::CheckpointDeferred(_) => Ok(format!("{what} deferred")),
            e => Err(format!("{ctx}: {what}: unexpected error {e}")),
        }
    };
    Ok(match rng.below(15) {
        0..=4 => {
            let l = m.fresh(seed);
            match block_on(tree.insert(l)) {
                Ok(ins) => {
                    let mut st = m.now().clone();
                    if ins.index != st.leaves.len() as u64 {
                        return Err(format!("{ctx}: index {} != {}", ins.index, st.leaves.len()));
                    }
                    st.leaves.push(l);
                    if naive_root(4, &st.leaves) != Some(ins.root) {
                        return Err(format!("{ctx}: insert returned a wrong root"));
                    }
                    pending.push((m.push(st), ins.durable));
                    format!("insert {}", ins.index)
                }
                Err(e) => return fail("insert", e),
            }
        }
        5 | 6 => {
            let k = 1 + rng.below(40);
            let batch: Vec<Hash> = (0..k).map(|_| m.fresh(seed)).collect();
            match block_on(tree.insert_many(&batch)) {
                Ok(ins) => {
                    let mut st = m.now().clone();
                    st.leaves.extend_from_slice(&batch);
                    pending.push((m.push(st), ins.durable));
                    format!("batch {k}")
                }
                Err(e) => return fail("batch", e),
            }
        }
        7 if !pending.is_empty() => {
            // Await a random earlier operation (with a flush where the
            // policy would not sync it by itself).
            let i = rng.below(pending.len() as u64) as usize;
            let (state, d) = pending.swap_remove(i);
            if !d.is_durable() {
                let _ = block_on(tree.flush());
            }
            match block_on(d) {
                Ok(()) => {
                    m.acked = m.acked.max(state);
                    format!("durable {state}")
                }
                Err(e) => return fail("durable", e),
            }
        }
        8 => match block_on(tree.flush()) {
            Ok(()) => {
                m.all_durable();
                "flush".into()
            }
            Err(e) => return fail("flush", e),
        },
        9 if rng.below(2) == 0 => match block_on(tree.checkpoint()) {
            Ok(()) => {
                m.all_durable();
                "checkpoint".into()
            }
            Err(e) => return fail("checkpoint", e),
        },
        10 if !m.now().leaves.is_empty() => {
            // A proof from a snapshot verifies against the tree's root.
            let snap = tree.snapshot();
            let size = snap.size();
            let i = rng.below(size);
            let root = snap.root().ok_or_else(|| format!("{ctx}: no root"))?;
            let p = snap.proof(i).map_err(|e| format!("{ctx}: proof: {e}"))?;
            p.verify_at(&Blake3, &root, size)
                .map_err(|e| format!("{ctx}: proof of {i} at {size}: {e}"))?;
            format!("proof {i}")
        }
        11 | 12 => {
            // A reorganisation: back by up to 60 leaves (sometimes below
            // the finalized size, which must be refused).
            let now = m.now().clone();
            let size = (now.leaves.len() as u64).saturating_sub(rng.below(61));
            match block_on(tree.rewind(size)) {
                Ok(r) => {
                    if size < now.finalized {
                        return Err(format!("{ctx}: rewound to {size} below {}", now.finalized));
                    }
                    let mut st = now;
                    st.leaves.truncate(size as usize);
                    if r.size != size || r.root != naive_root(4, &st.leaves) {
                        return Err(format!("{ctx}: rewind to {size} returned a wrong root"));
                    }
                    pending.push((m.push(st), r.durable));
                    format!("rewind {size}")
                }
                Err(Error::Finalized {
                    requested,
                    finalized,
                }) if requested == size && finalized == now.finalized && size < finalized => {
                    format!("rewind {size} refused")
                }
                Err(e) => return fail("rewind", e),
            }
        }
        13 => {
            let now = m.now().clone();
            let size = (now.leaves.len() as u64).saturating_sub(rng.below(80));
            match block_on(tree.finalize(size)) {
                Ok(d) => {
                    let mut st = now;
                    st.finalized = st.finalized.max(size);
                    pending.push((m.push(st), d));
                    format!("finalize {size}")
                }
                Err(e) => return fail("finalize", e),
            }
        }
        14 => {
            // The durable view is a state from the last acknowledged one on.
            // (Each read on its own: the durable state may move between.)
            let size = tree.durable_size();
            if !(m.acked..m.states.len()).any(|i| m.states[i].leaves.len() as u64 == size) {
                return Err(format!(
                    "{ctx}: durable size {size} is no state since the last acknowledged"
                ));
            }
            let root = tree.durable_root();
            if !(m.acked..m.states.len()).any(|i| naive_root(4, &m.states[i].leaves) == root) {
                return Err(format!(
                    "{ctx}: durable root is no state's since the last acknowledged"
                ));
            }
            let snap = tree.durable_snapshot();
            if m.find(snap.size(), snap.root(), None).is_none() {
                return Err(format!(
                    "{ctx}: durable view of {} leaves is no state since the last acknowledged",
                    snap.size()
                ));
            }
            format!("durable view {}", snap.size())
        }
        _ => {
            // Time passes (the committer's interval, background work).
            ringtree::sim::block_on(async {});
            "pause".into()
        }
    })
}

/// The durable-prefix bound after a reopen: the tree is one of the states
/// from the last acknowledged operation to the last issued one (leaves,
/// root and finality); then a proof from it.
fn check_recovered(tree: &T, m: &mut Model, rng: &mut Rng, ctx: &str) -> Result<(), String> {
    let size = tree.size();
    let Some(i) = m.find(size, tree.root(), Some(tree.finalized())) else {
        return Err(format!(
            "{ctx}: the recovered tree ({size} leaves, {} final) is no state from the last acknowledged ({} leaves) to the last issued ({} leaves)",
            tree.finalized(),
            m.states[m.acked].leaves.len(),
            m.now().leaves.len(),
        ));
    };
    let st = m.states.swap_remove(i);
    m.states = vec![st];
    m.acked = 0;
    if size > 0 {
        let i = rng.below(size);
        let root = tree.root().expect("non-empty");
        let p = tree
            .snapshot()
            .proof(i)
            .map_err(|e| format!("{ctx}: proof: {e}"))?;
        p.verify_at(&Blake3, &root, size)
            .map_err(|e| format!("{ctx}: proof of {i} after reopen: {e}"))?;
    }
    Ok(())
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A thousand schedules by default, over every core; the long campaign and
/// the replay of one seed are set by `RINGTREE_SIM_SCHEDULES` and
/// `RINGTREE_SIM_SEED`.
#[test]
fn schedules() {
    let n = env("RINGTREE_SIM_SCHEDULES", 1000);
    let first = env("RINGTREE_SIM_SEED", 0);
    // Runs wait on each other's hand-offs more than they compute: several
    // per core keep the cores busy.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let threads = env("RINGTREE_SIM_THREADS", 4 * cores);
    let t0 = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                s.spawn(move || {
                    let mut seed = first + w;
                    while seed < first + n {
                        if let Err(e) = run(seed, false) {
                            return Some(format!("{e}\nreplay: {}", replay(seed)));
                        }
                        if w == 0 && (seed - first) % 100_000 < threads && seed > first {
                            eprintln!("{} schedules, {:?}", seed - first, t0.elapsed());
                        }
                        seed += threads;
                    }
                    None
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("schedule thread"))
            .collect()
    });
    let took = t0.elapsed();
    eprintln!(
        "{n} schedules in {took:?}: {:.0}/s, {} violations",
        n as f64 / took.as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One seed, one history: the same schedule twice gives the same
/// operations and outcomes, the same scheduling decisions and simulated
/// time, and the same disk, byte for byte.
#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 2, 3, 5, 8, 13, 21, 34] {
        let a = run(seed, true).unwrap_or_else(|e| panic!("{e}"));
        let b = run(seed, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b, "seed {seed} ran two ways");
        assert!(a.history.steps > 0);
    }
}
