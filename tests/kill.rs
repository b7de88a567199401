//! Process-kill test: a child process inserts from many tasks and prints
//! each acknowledged (durable) insert; the parent kills it with SIGKILL at a
//! random moment, reopens the tree and checks the durable-prefix bound.
//!
//! A second campaign kills a child that rewinds and finalizes as it appends
//! (`kill_reorgs_and_recover`).
//!
//! `RINGTREE_KILL_ROUNDS` sets the rounds (default 24; thousands for the
//! long campaign), `RINGTREE_KILL_IO=uring|threaded` the backend.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Rng;
use ringtree::{Blake3, Config, Hash, IoBackend, LeanImt, Tree};

type T4 = Tree<Blake3, 4, 32>;

/// A self-describing leaf: round, task, sequence and a check value.
fn leaf(round: u32, task: u32, seq: u32) -> Hash {
    let mut l = [0u8; 32];
    l[..4].copy_from_slice(&round.to_le_bytes());
    l[4..8].copy_from_slice(&task.to_le_bytes());
    l[8..12].copy_from_slice(&seq.to_le_bytes());
    let h = blake3::hash(&l[..12]);
    l[12..].copy_from_slice(&h.as_bytes()[..20]);
    l
}

fn decode(l: &Hash) -> Option<(u32, u32, u32)> {
    let r = u32::from_le_bytes(l[..4].try_into().unwrap());
    let t = u32::from_le_bytes(l[4..8].try_into().unwrap());
    let s = u32::from_le_bytes(l[8..12].try_into().unwrap());
    (leaf(r, t, s) == *l).then_some((r, t, s))
}

fn backend() -> IoBackend {
    match std::env::var("RINGTREE_KILL_IO").as_deref() {
        Ok("uring") => IoBackend::Uring,
        _ => IoBackend::Threaded,
    }
}

/// Small segments and frequent background checkpoints, so kills land in
/// checkpoints and log recycling too.
fn config(dir: &str) -> Config {
    Config::new(dir)
        .io(backend())
        .segment_size(1 << 20)
        .buffer_capacity(1 << 20)
        .checkpoint(ringtree::CheckpointPolicy::WalBytes(256 << 10))
}

/// The child: inserts until killed, printing `index task seq` per durable insert.
#[test]
#[ignore = "run by kill_child_and_recover in a child process"]
fn kill_child() {
    let dir = std::env::var("RINGTREE_KILL_DIR").expect("child needs RINGTREE_KILL_DIR");
    let round: u32 = std::env::var("RINGTREE_KILL_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tree = T4::open(config(&dir)).await.unwrap();
        let tasks: Vec<_> = (0..16u32)
            .map(|task| {
                let tree = tree.clone();
                tokio::spawn(async move {
                    for seq in 0.. {
                        let ins = if seq % 7 == 3 {
                            let batch: Vec<Hash> =
                                (0..5).map(|k| leaf(round, task, seq * 8 + k)).collect();
                            tree.insert_many(&batch).await.unwrap()
                        } else {
                            tree.insert(leaf(round, task, seq * 8)).await.unwrap()
                        };
                        ins.durable.await.unwrap();
                        println!("{} {task} {seq}", ins.index);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Runs the ignored test `name` of this binary as a child process on
/// `dir` for `round`, its standard output piped.
fn spawn_child(name: &str, dir: &str, round: u32) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGTREE_KILL_DIR", dir)
        .env("RINGTREE_KILL_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_child_and_recover() {
    let rounds: u32 = std::env::var("RINGTREE_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut rng = Rng(0x5eed);
    let mut last_size = 0u64;
    for round in 0..rounds {
        let mut child = spawn_child("kill_child", &dir_s, round);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<(u64, u32, u32)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [i, t, s] = f[..]
                    && let (Ok(i), Ok(t), Ok(s)) = (i.parse(), t.parse(), s.parse())
                {
                    let _ = tx.send((i, t, s));
                }
            }
        });
        // Let it start and acknowledge something, then kill at a random moment.
        let first = rx.recv_timeout(Duration::from_secs(30));
        assert!(
            first.is_ok(),
            "round {round}: the child acknowledged nothing"
        );
        let until = Instant::now() + Duration::from_micros(rng.below(60_000));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let mut acked: Vec<(u64, u32, u32)> = first.into_iter().collect();
        acked.extend(rx.try_iter());

        let tree = T4::open_blocking(config(&dir_s)).unwrap();
        let snap = tree.snapshot();
        let size = snap.size();
        assert!(size >= last_size, "round {round}: the tree shrank");
        // Every acknowledged insert is there, with its leaf.
        for &(i, t, s) in &acked {
            assert!(
                i < size,
                "round {round}: acknowledged leaf {i} lost (size {size})"
            );
            // The index is the op's first leaf (a batch's too).
            assert_eq!(
                snap.leaf(i).unwrap(),
                leaf(round, t, s * 8),
                "round {round}: leaf {i}"
            );
        }
        // The tree is exactly a prefix of the inserts: every leaf is a valid
        // insert, each task's leaves in its order with no gap, and the root
        // is the root of those leaves.
        let mut all = Vec::with_capacity(size as usize);
        let mut next: std::collections::HashMap<(u32, u32), u32> = Default::default();
        for i in 0..size {
            let l = snap.leaf(i).unwrap();
            let (r, t, s) =
                decode(&l).unwrap_or_else(|| panic!("round {round}: leaf {i} is not an insert"));
            let n = next.entry((r, t)).or_insert(0);
            if s % 8 == 0 {
                assert_eq!(
                    s / 8,
                    *n,
                    "round {round}: task {t} of round {r} skipped an insert at leaf {i}"
                );
                *n += 1;
            }
            all.push(l);
        }
        let mut model = LeanImt::<Blake3, 4, 32>::new(Blake3);
        if !all.is_empty() {
            model.insert_many(&all).unwrap();
        }
        assert_eq!(
            tree.root(),
            model.root(),
            "round {round}: root of the recovered leaves"
        );
        last_size = size;
        futures::executor::block_on(tree.close()).unwrap();
    }
    assert!(last_size > 0);
    assert!(
        dir.join("MANIFEST").exists(),
        "checkpoints ran under the policy"
    );
}

/// The crash-loop child: opens with the default `Config`, prints `open`,
/// then inserts batches of 10,000 leaves at full speed, printing
/// `first count` once each is durable, until killed.
#[test]
#[ignore = "run by a_crash_loop_keeps_recovery_bounded in a child process"]
fn crash_loop_child() {
    let dir = std::env::var("RINGTREE_KILL_DIR").expect("child needs RINGTREE_KILL_DIR");
    let round: u32 = std::env::var("RINGTREE_KILL_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tree = T4::open(Config::new(&dir).io(backend())).await.unwrap();
        println!("open");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ringtree::Inserted>(64);
        let acks = tokio::spawn(async move {
            while let Some(ins) = rx.recv().await {
                ins.durable.await.unwrap();
                println!("{} 10000", ins.index);
            }
        });
        for seq in (0u32..).step_by(10_000) {
            let batch: Vec<Hash> = (seq..seq + 10_000).map(|s| leaf(round, 0, s)).collect();
            let ins = tree.insert_many(&batch).await.unwrap();
            if tx.send(ins).await.is_err() {
                break;
            }
        }
        drop(tx);
        acks.await.unwrap();
    });
}

/// A process killed 5-400 ms after each open, inserting at full speed with
/// the default `Config`: every acknowledged batch survives, the tree is
/// always a prefix of the inserts, and the log replayed at open stays
/// bounded (a checkpoint interrupted by a kill resumes where its synced
/// chunks end; an open that replayed past the policy's threshold starts
/// one at once). Prints each round's reopen time.
///
/// `RINGTREE_LOOP_ROUNDS` sets the rounds (default 4; 100 for the
/// campaign), `RINGTREE_KILL_IO=uring|threaded` the backend.
#[test]
fn a_crash_loop_keeps_recovery_bounded() {
    let rounds: u32 = std::env::var("RINGTREE_LOOP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut rng = Rng(0x100b);
    let mut last_size = 0u64;
    let mut reopen = Vec::new();
    for round in 0..rounds {
        let mut child = spawn_child("crash_loop_child", &dir_s, round);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // The test harness prints its own lines first.
        let opened = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(120)).ok())
            .any(|l| l.ends_with("open"));
        assert!(opened, "round {round}: no open");
        std::thread::sleep(Duration::from_millis(5 + rng.below(396)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acked: Vec<u64> = rx
            .try_iter()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();

        let t0 = Instant::now();
        let tree = T4::open_blocking(Config::new(&dir_s).io(backend())).unwrap();
        let took = t0.elapsed();
        let snap = tree.snapshot();
        let size = snap.size();
        let replayed = tree.metrics().replayed_at_open;
        reopen.push((took, size, replayed));
        // Bounded: the policy's 256 MiB, plus what one round (at most 400
        // ms of inserts) adds while a checkpoint catches up.
        assert!(
            replayed < 768 << 20,
            "round {round}: the open replayed {replayed} bytes of log"
        );
        assert!(size >= last_size, "round {round}: the tree shrank");
        for &i in &acked {
            assert!(i + 10_000 <= size, "round {round}: batch at {i} lost");
            assert_eq!(
                snap.leaf(i).unwrap(),
                leaf(round, 0, (i - last_size) as u32)
            );
        }
        // This round's leaves follow the last round's, in order, no gap.
        for i in (last_size..size).step_by(997) {
            assert_eq!(
                snap.leaf(i).unwrap(),
                leaf(round, 0, (i - last_size) as u32),
                "round {round}: leaf {i}"
            );
        }
        let proof = snap.proof(size.saturating_sub(1)).unwrap();
        proof
            .verify_at(&Blake3, &snap.root().unwrap(), size)
            .unwrap();
        last_size = size;
        drop(snap);
        futures::executor::block_on(tree.close()).unwrap();
    }
    for (round, (took, size, replayed)) in reopen.iter().enumerate() {
        eprintln!(
            "round {round}: reopen {:.1} ms, {size} leaves, {:.0} MiB of log replayed",
            took.as_secs_f64() * 1e3,
            *replayed as f64 / (1 << 20) as f64
        );
    }
    assert!(last_size > 0);
}

/// The reorg child: one writer that appends blocks, rewinds and finalizes,
/// a few operations in flight at a time. Prints `P op kind arg` before it
/// issues an operation (`kind`: `i` blocks of `arg` leaves, `r` rewind to
/// `arg`, `f` finalize `arg`) and `A op` once it is durable.
#[test]
#[ignore = "run by kill_reorgs_and_recover in a child process"]
fn kill_reorg_child() {
    let dir = std::env::var("RINGTREE_KILL_DIR").expect("child needs RINGTREE_KILL_DIR");
    let round: u32 = std::env::var("RINGTREE_KILL_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tree = T4::open(config(&dir)).await.unwrap();
        // Past the test harness's `test ... ` on the same line.
        println!();
        let mut rng = Rng(u64::from(round) + 1);
        let mut in_flight = std::collections::VecDeque::new();
        for op in 0u32.. {
            let size = tree.size();
            let d = match rng.below(10) {
                0 | 1 => {
                    let to = size.saturating_sub(rng.below(300)).max(tree.finalized());
                    println!("P {op} r {to}");
                    tree.rewind(to).await.unwrap().durable
                }
                2 => {
                    let f = size.saturating_sub(400);
                    println!("P {op} f {f}");
                    tree.finalize(f).await.unwrap()
                }
                _ => {
                    let k = 1 + rng.below(40) as u32;
                    println!("P {op} i {k}");
                    let batch: Vec<Hash> = (0..k).map(|j| leaf(round, op, j)).collect();
                    tree.insert_many(&batch).await.unwrap().durable
                }
            };
            in_flight.push_back((op, d));
            if in_flight.len() > 6 {
                let (op, d) = in_flight.pop_front().unwrap();
                d.await.unwrap();
                println!("A {op}");
            }
        }
    });
}

/// SIGKILL during rewinds and finalizes: after each kill the reopened tree
/// (leaves, root and finalized size) is the child's tree after some
/// operation from the last acknowledged one to the last issued one.
#[test]
fn kill_reorgs_and_recover() {
    let rounds: u32 = std::env::var("RINGTREE_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut rng = Rng(0x7e07);
    // The tree as recovered after the last round.
    let mut leaves: Vec<Hash> = Vec::new();
    let mut finalized = 0u64;
    let mut rewinds = 0;
    for round in 0..rounds {
        let mut child = spawn_child("kill_reorg_child", &dir_s, round);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30));
        assert!(first.is_ok(), "round {round}: the child issued nothing");
        let until = Instant::now() + Duration::from_micros(20_000 + rng.below(100_000));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let lines: Vec<String> = first.into_iter().chain(rx.try_iter()).collect();
        // The states after each issued operation, from the recovered one.
        let mut states: Vec<(Vec<Hash>, u64)> = vec![(leaves.clone(), finalized)];
        let mut acked = 0usize;
        for line in &lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f[..] {
                ["P", op, kind, arg] => {
                    let op: u32 = op.parse().unwrap();
                    let arg: u64 = arg.parse().unwrap();
                    assert_eq!(states.len() - 1, op as usize, "round {round}: ops in order");
                    let (mut l, mut fin) = states.last().unwrap().clone();
                    match kind {
                        "i" => l.extend((0..arg as u32).map(|j| leaf(round, op, j))),
                        "r" => {
                            l.truncate(arg as usize);
                            rewinds += 1;
                        }
                        _ => fin = fin.max(arg),
                    }
                    states.push((l, fin));
                }
                ["A", op] => acked = acked.max(op.parse::<usize>().unwrap() + 1),
                _ => {}
            }
        }
        let tree = T4::open_blocking(config(&dir_s)).unwrap();
        let (size, root, fin) = (tree.size(), tree.root(), tree.finalized());
        let found = (acked..states.len()).rev().find(|&i| {
            let (l, f) = &states[i];
            l.len() as u64 == size && *f == fin && {
                let mut m = LeanImt::<Blake3, 4, 32>::new(Blake3);
                let r = if l.is_empty() {
                    None
                } else {
                    Some(m.insert_many(l).unwrap())
                };
                r == root
            }
        });
        let Some(i) = found else {
            panic!(
                "round {round}: recovered {size} leaves ({fin} final) is no state from op {acked} to op {}",
                states.len() - 1
            );
        };
        (leaves, finalized) = states.swap_remove(i);
        if size > 0 {
            let snap = tree.snapshot();
            let p = snap.proof(size - 1).unwrap();
            p.verify_at(&Blake3, &root.unwrap(), size).unwrap();
        }
        futures::executor::block_on(tree.close()).unwrap();
    }
    assert!(rewinds > 0);
}
