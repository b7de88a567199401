//! The persistent tree side by side with rotortree 0.20 (N = 4,
//! MAX_DEPTH = 16, BLAKE3) in one process, on one disk, with HDR histograms.
//!
//! `cargo bench --bench tree_latency` runs:
//! 1. one task: insert + await durable x2000 (ringtree), `insert_durable`
//!    x2000 (rotortree), raw 64 B pwrite + fdatasync, and the floor of a
//!    durable write (4 KiB `O_DIRECT` pwrite + fdatasync on the task's own
//!    thread), interleaved in rounds of 100 so the disk's drift hits all
//!    alike;
//! 2. 1,000 tasks inserting and awaiting for 5 s (ringtree) against
//!    rotortree's best: 64 threads insert + `wait()` with `Interval(1ms)`;
//! 3. fire-and-forget single inserts x1M, then one flush;
//! 4. `insert_many` of 10k leaves then await, x100.
//!
//! Env: `RINGTREE_BENCH_DIR` (default `target/bench-tmp`), `RINGTREE_BENCH_SECS`
//! (5), `RINGTREE_BENCH_IO` (`threaded` or `uring`; default: both),
//! `RINGTREE_BENCH_ONLY` (sections to run, e.g. `14`; default `1234`),
//! `RINGTREE_BENCH_SPIN_US` (the committer's spin), `RINGTREE_BENCH_INTERVAL_US`
//! (our side with `FlushPolicy::Interval` instead of group commit),
//! `RINGTREE_BENCH_LONE_SPIN` (0: `Config::lone_waiter_spin(false)`).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[path = "../../common/mod.rs"]
pub mod common;
use common::{env, fresh, hist, row, touched_hists, us};
use ringtree::{Blake3, Config, Hash, IoBackend, Tree};
use rotortree::{Blake3Hasher, FlushPolicy as RFlush, RotorTree, RotorTreeConfig};

type Ours = Tree<Blake3, 4, 16>;
type Theirs = RotorTree<Blake3Hasher, 4, 16>;

fn leaf(i: u64) -> Hash {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn ours(dir: &Path, io: IoBackend) -> Ours {
    let mut cfg = Config::new(dir).io(io);
    if let Ok(mb) = std::env::var("RINGTREE_BENCH_SEGMENT_MB") {
        cfg = cfg.segment_size(mb.parse::<u64>().unwrap() << 20);
    }
    if let Ok(us) = std::env::var("RINGTREE_BENCH_SPIN_US") {
        cfg = cfg.spin(Duration::from_micros(us.parse().unwrap()));
    }
    if let Ok(us) = std::env::var("RINGTREE_BENCH_INTERVAL_US") {
        cfg = cfg.flush(ringtree::FlushPolicy::Interval(Duration::from_micros(
            us.parse().unwrap(),
        )));
    }
    if let Ok(v) = std::env::var("RINGTREE_BENCH_LONE_SPIN") {
        cfg = cfg.lone_waiter_spin(v != "0");
    }
    Ours::open_blocking(cfg).unwrap()
}

fn theirs(dir: &Path, flush: RFlush) -> Theirs {
    Theirs::open(
        Blake3Hasher,
        RotorTreeConfig {
            path: dir.to_path_buf(),
            flush_policy: flush,
            checkpoint_policy: Default::default(),
            tiering: Default::default(),
            verify_checkpoint: false,
        },
    )
    .unwrap()
}

/// Latencies of one task's durable inserts, and of the loops they are
/// measured against.
pub struct OneTask {
    /// 64 B `pwrite` + `fdatasync` into a pre-zeroed file.
    pub raw: Histogram<u64>,
    /// The floor of any durable write on this disk: a 4 KiB `O_DIRECT`
    /// `pwrite` + `fdatasync` into a pre-zeroed file, on the task's own
    /// thread (no hand-off to another thread, nothing spinning beside it).
    pub floor: Option<Histogram<u64>>,
    /// Ours: insert + await durable.
    pub ours: Histogram<u64>,
    /// Rotortree's `insert_durable`.
    pub theirs: Histogram<u64>,
}

/// A pre-zeroed file of `len` bytes opened with `O_DIRECT`, or `None` where
/// the file system refuses it.
fn direct_file(path: &Path, len: u64) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(path, vec![0u8; len as usize]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    f.sync_all().unwrap();
    Some(f)
}

pub fn one_task(rt: &tokio::runtime::Runtime, dir: &Path, io: IoBackend, n: u64) -> OneTask {
    let raw_path = fresh(dir, "raw").join("file");
    let raw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .unwrap();
    raw.write_all_at(&vec![0u8; (n as usize + 200) * 64], 0)
        .unwrap();
    raw.sync_all().unwrap();
    let floor_len = ((n + 200) * 64).next_multiple_of(4096) + 4096;
    let floor_file = direct_file(&raw_path.with_file_name("direct"), floor_len);
    // One 4 KiB block, aligned for O_DIRECT.
    let mut block_buf = vec![0u8; 8192];
    let align = block_buf.as_ptr().align_offset(4096);
    let block = &mut block_buf[align..align + 4096];
    let t = ours(&fresh(dir, "one-ours"), io);
    let r = theirs(&fresh(dir, "one-theirs"), RFlush::Manual);
    let (mut h_raw, mut h_floor, mut h_ours, mut h_theirs) = (hist(), hist(), hist(), hist());
    rt.block_on(async {
        for i in 0..50 {
            t.insert_durable(leaf(i)).await.unwrap();
            r.insert_durable(leaf(i)).unwrap();
        }
        let mut at = 0u64;
        let mut i = 50u64;
        for _ in 0..n.div_ceil(100) {
            for k in 0..100 {
                let s = Instant::now();
                raw.write_all_at(&[7u8; 64], at + k * 64).unwrap();
                raw.sync_data().unwrap();
                h_raw.record(s.elapsed().as_nanos() as u64).unwrap();
            }
            if let Some(f) = &floor_file {
                for k in 0..100 {
                    let pos = at + k * 64;
                    block[(pos % 4096) as usize] = 7;
                    let s = Instant::now();
                    f.write_all_at(block, pos / 4096 * 4096).unwrap();
                    f.sync_data().unwrap();
                    h_floor.record(s.elapsed().as_nanos() as u64).unwrap();
                }
            }
            at += 100 * 64;
            for _ in 0..100 {
                let s = Instant::now();
                t.insert_durable(leaf(i)).await.unwrap();
                h_ours.record(s.elapsed().as_nanos() as u64).unwrap();
                i += 1;
            }
            for k in 0..100 {
                let s = Instant::now();
                r.insert_durable(leaf(i + k)).unwrap();
                h_theirs.record(s.elapsed().as_nanos() as u64).unwrap();
            }
        }
        t.close().await.unwrap();
    });
    r.close().unwrap();
    let p50 = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64;
    row("raw 64 B pwrite+fdatasync, pre-zeroed", &h_raw, "");
    let floor = floor_file.map(|_| {
        row(
            "floor: direct 4 KiB pwrite+fdatasync, same thread",
            &h_floor,
            &format!("{:.2}x raw", p50(&h_floor) / p50(&h_raw)),
        );
        h_floor
    });
    let vs_floor = floor
        .as_ref()
        .map(|f| format!(", {:.2}x floor", p50(&h_ours) / p50(f)))
        .unwrap_or_default();
    row(
        &format!("ringtree insert+await durable ({io})"),
        &h_ours,
        &format!(
            "p50 {:.2}x rotortree, {:.2}x raw{vs_floor}",
            p50(&h_ours) / p50(&h_theirs),
            p50(&h_ours) / p50(&h_raw)
        ),
    );
    row("rotortree insert_durable", &h_theirs, "");
    OneTask {
        raw: h_raw,
        floor,
        ours: h_ours,
        theirs: h_theirs,
    }
}

pub fn many_tasks(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    io: IoBackend,
    secs: u64,
) -> (f64, Histogram<u64>) {
    let t = ours(&fresh(dir, "many-ours"), io);
    let mut spare = touched_hists(1000);
    let syncs0 = t.syncs();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let h = rt.block_on(async {
        let hs: Vec<_> = (0..1000u64)
            .map(|task| {
                let t = t.clone();
                let mut h = spare.pop().expect("one per task");
                tokio::spawn(async move {
                    let mut i = task << 32;
                    while Instant::now() < deadline {
                        let s = Instant::now();
                        let ins = t.insert(leaf(i)).await.unwrap();
                        ins.durable.await.unwrap();
                        h.record(s.elapsed().as_nanos() as u64).unwrap();
                        i += 1;
                    }
                    h
                })
            })
            .collect();
        let mut all = hist();
        for j in hs {
            all.add(j.await.unwrap()).unwrap();
        }
        all
    });
    let el = t0.elapsed().as_secs_f64();
    let syncs = t.syncs() - syncs0;
    let rate = h.len() as f64 / el;
    row(
        &format!("ringtree x1000 tasks insert+await ({io})"),
        &h,
        &format!(
            "{rate:.0} durable/s, {:.0} fsyncs/s, {:.1} inserts/fsync",
            syncs as f64 / el,
            h.len() as f64 / syncs.max(1) as f64
        ),
    );
    futures::executor::block_on(t.close()).unwrap();
    (rate, h)
}

pub fn rotortree_threads(dir: &Path, secs: u64, flush: Duration) -> (f64, Histogram<u64>) {
    let r = Arc::new(theirs(&fresh(dir, "many-theirs"), RFlush::Interval(flush)));
    let mut spare = touched_hists(64);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let hs: Vec<_> = (0..64u64)
        .map(|th| {
            let r = r.clone();
            let mut h = spare.pop().expect("one per thread");
            std::thread::spawn(move || {
                let mut i = (th + 5000) << 32;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    let (_, tok) = r.insert(leaf(i)).unwrap();
                    tok.wait();
                    h.record(s.elapsed().as_nanos() as u64).unwrap();
                    i += 1;
                }
                h
            })
        })
        .collect();
    let mut all = hist();
    for j in hs {
        all.add(j.join().unwrap()).unwrap();
    }
    let el = t0.elapsed().as_secs_f64();
    Arc::into_inner(r).unwrap().close().unwrap();
    (all.len() as f64 / el, all)
}

pub fn fire_and_forget(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    io: IoBackend,
    n: u64,
) -> (f64, f64, f64) {
    let leaves: Vec<Hash> = (0..n).map(leaf).collect();
    let t = ours(&fresh(dir, "ff-ours"), io);
    let wal0 = t.wal_position();
    let s = Instant::now();
    rt.block_on(async {
        for l in &leaves {
            t.insert(*l).await.unwrap();
        }
        t.flush().await.unwrap();
    });
    let ours_rate = n as f64 / s.elapsed().as_secs_f64();
    let bytes = (t.wal_position() - wal0) as f64 / n as f64;
    futures::executor::block_on(t.close()).unwrap();
    let r = theirs(
        &fresh(dir, "ff-theirs"),
        RFlush::Interval(Duration::from_millis(10)),
    );
    let s = Instant::now();
    for l in &leaves {
        r.insert(*l).unwrap();
    }
    r.flush().unwrap();
    let theirs_rate = n as f64 / s.elapsed().as_secs_f64();
    r.close().unwrap();
    (ours_rate, theirs_rate, bytes)
}

/// Chunk latencies and leaves/s of `insert_many` 10k + await: ringtree's,
/// then rotortree's by name.
pub type Batches = (
    (f64, Histogram<u64>),
    Vec<(&'static str, f64, Histogram<u64>)>,
);

pub fn batches(rt: &tokio::runtime::Runtime, dir: &Path, io: IoBackend) -> Batches {
    let chunks: Vec<Vec<Hash>> = (0..100u64)
        .map(|c| (c * 10_000..(c + 1) * 10_000).map(leaf).collect())
        .collect();
    let t = ours(&fresh(dir, "batch-ours"), io);
    let mut h_ours = hist();
    let s = Instant::now();
    rt.block_on(async {
        for c in &chunks {
            let s = Instant::now();
            t.insert_many(c).await.unwrap().durable.await.unwrap();
            h_ours.record(s.elapsed().as_nanos() as u64).unwrap();
        }
    });
    let ours_rate = 1e6 / s.elapsed().as_secs_f64();
    futures::executor::block_on(t.close()).unwrap();
    row(
        &format!("ringtree insert_many 10k + await ({io})"),
        &h_ours,
        &format!("{:.2}M leaves/s", ours_rate / 1e6),
    );
    let mut others = Vec::new();
    // rotortree as configured by default (Interval(10ms)) with token.wait(),
    // the BASELINES workload, and at its best (Manual + explicit flush).
    for (name, flush, explicit) in [
        (
            "rotortree insert_many 10k + wait, Interval(10ms)",
            RFlush::Interval(Duration::from_millis(10)),
            false,
        ),
        (
            "rotortree insert_many 10k + flush + wait, Manual",
            RFlush::Manual,
            true,
        ),
    ] {
        let r = theirs(&fresh(dir, "batch-theirs"), flush);
        let mut h = hist();
        let s = Instant::now();
        for c in &chunks {
            let s = Instant::now();
            let (_, tok) = r.insert_many(c).unwrap();
            if explicit {
                r.flush().unwrap();
            }
            tok.wait();
            h.record(s.elapsed().as_nanos() as u64).unwrap();
        }
        let rate = 1e6 / s.elapsed().as_secs_f64();
        r.close().unwrap();
        row(
            name,
            &h,
            &format!(
                "{:.2}M leaves/s; ringtree {:.2}x its leaves/s, chunk p50 {:.2}x its",
                rate / 1e6,
                ours_rate / rate,
                us(&h_ours, 0.5) / us(&h, 0.5)
            ),
        );
        others.push((name, rate, h));
    }
    ((ours_rate, h_ours), others)
}

/// What every latency harness reads from the environment: the scratch
/// directory (created), seconds per timed workload, the backends to run,
/// and a two-worker tokio runtime.
pub struct Setup {
    pub dir: PathBuf,
    pub secs: u64,
    pub ios: Vec<IoBackend>,
    pub rt: tokio::runtime::Runtime,
}

pub fn setup() -> Setup {
    // Under the workspace root's `target/`: a bench runs in its package's folder.
    let dir =
        PathBuf::from(std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-tmp").into()
        }));
    std::fs::create_dir_all(&dir).unwrap();
    let ios = match std::env::var("RINGTREE_BENCH_IO").as_deref() {
        Ok("uring") => vec![IoBackend::Uring],
        Ok("threaded") => vec![IoBackend::Threaded],
        _ => vec![IoBackend::Threaded, IoBackend::Uring],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Setup {
        dir,
        secs: env("RINGTREE_BENCH_SECS", 5),
        ios,
        rt,
    }
}

#[allow(dead_code)]
fn main() {
    let Setup { dir, secs, ios, rt } = setup();
    let only = std::env::var("RINGTREE_BENCH_ONLY").unwrap_or_else(|_| "1234".into());
    let run = |k: char| only.contains(k);

    if run('1') {
        println!("== 1. one task, insert + await durable x2000 (rounds of 100, interleaved)");
        for &io in &ios {
            one_task(&rt, &dir, io, 2000);
        }
    }
    if run('2') {
        println!("== 2. concurrent durable inserts for {secs} s");
        let (r_rate, r_h) = rotortree_threads(&dir, secs, Duration::from_millis(1));
        row(
            "rotortree 64 threads insert+wait, Interval(1ms)",
            &r_h,
            &format!("{r_rate:.0} durable/s"),
        );
        for &io in &ios {
            let (rate, _) = many_tasks(&rt, &dir, io, secs);
            println!(
                "{:46} {:.1}x rotortree's durable inserts/s",
                "",
                rate / r_rate
            );
        }
    }
    if run('3') {
        println!("== 3. fire-and-forget single inserts x1M, then flush");
        for &io in &ios {
            let (o, t, bytes) = fire_and_forget(&rt, &dir, io, 1_000_000);
            println!(
                "ringtree ({io}) {:.0}k/s, rotortree {:.0}k/s: {:.2}x; ringtree WAL {bytes:.1} B/insert",
                o / 1e3,
                t / 1e3,
                o / t
            );
        }
    }
    if run('4') {
        println!("== 4. insert_many 10k + await, x100");
        for &io in &ios {
            batches(&rt, &dir, io);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
