//! The write-ahead log on its own: concurrent appends, durability futures,
//! crash schedules on the simulated disk, I/O failures, torn tails and
//! corruption; the same scenarios on every backend.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Rng;
use ringtree::io::{SimStorage, Storage, ThreadedStorage, UringStorage};
use ringtree::wal::{Log, LogConfig};
use ringtree::{Error, FlushPolicy};

fn config(segment: u64, buffer: u64, flush: FlushPolicy) -> LogConfig {
    let mut c = LogConfig::default();
    c.segment_size = segment;
    c.buffer_capacity = buffer;
    c.flush = flush;
    c
}

/// A 64-byte record naming its writer and sequence.
fn record(writer: u32, seq: u32) -> Vec<u8> {
    let mut r = vec![0u8; 64];
    r[..4].copy_from_slice(&writer.to_le_bytes());
    r[4..8].copy_from_slice(&seq.to_le_bytes());
    let fill = blake3::hash(&r[..8]);
    r[8..40].copy_from_slice(fill.as_bytes());
    r
}

type Records = Vec<(u64, Vec<u8>)>;

fn open(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    cfg: &LogConfig,
) -> ringtree::Result<(Log, Records)> {
    let mut got = Vec::new();
    let log = Log::open(storage.clone(), dir, cfg, 0, &mut |lsn, rec| {
        got.push((lsn, rec.to_vec()));
        Ok(())
    })?;
    Ok((log, got))
}

struct Backend {
    name: &'static str,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn backends() -> Vec<Backend> {
    let mut v = Vec::new();
    let t = tempfile::tempdir().unwrap();
    v.push(Backend {
        name: "threaded",
        storage: Arc::new(ThreadedStorage),
        dir: t.path().join("wal"),
        _tmp: Some(t),
    });
    match UringStorage::new() {
        Ok(u) => {
            let t = tempfile::tempdir().unwrap();
            v.push(Backend {
                name: "uring",
                storage: Arc::new(u),
                dir: t.path().join("wal"),
                _tmp: Some(t),
            });
        }
        Err(e) => eprintln!("io_uring unavailable here ({e}); skipping the uring backend"),
    }
    v.push(Backend {
        name: "simulated",
        storage: Arc::new(SimStorage::new(7)),
        dir: PathBuf::from("/sim/wal"),
        _tmp: None,
    });
    v
}

/// Tokio tasks on a multi-thread runtime and plain OS threads append at
/// once; after reopening, every acknowledged record is there, records are
/// in reservation order (each writer's in its own order), nothing else.
#[test]
fn concurrent_appenders_every_backend() {
    for b in backends() {
        let cfg = config(256 << 10, 64 << 10, FlushPolicy::GroupCommit);
        let (log, replayed) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert!(replayed.is_empty());
        let log = Arc::new(log);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const TASKS: u32 = 32;
        const THREADS: u32 = 4;
        const PER: u32 = 150;
        rt.block_on(async {
            let mut hs = Vec::new();
            for w in 0..TASKS {
                let (log, acked) = (log.clone(), acked.clone());
                hs.push(tokio::spawn(async move {
                    for s in 0..PER {
                        let d = log.append(&[&record(w, s)]).await.unwrap();
                        if s % 3 == 0 {
                            d.clone().await.unwrap();
                            assert!(d.is_durable());
                            acked.lock().unwrap().push((w, s));
                        }
                    }
                }));
            }
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (log, acked) = (log.clone(), acked.clone());
                    std::thread::spawn(move || {
                        let w = TASKS + t;
                        for s in 0..PER {
                            let d =
                                futures::executor::block_on(log.append(&[&record(w, s)])).unwrap();
                            d.wait().unwrap();
                            acked.lock().unwrap().push((w, s));
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
            for t in threads {
                t.join().unwrap();
            }
        });
        assert!(log.syncs() > 0);
        let log = Arc::into_inner(log).unwrap();
        log.close().unwrap();
        drop(log);
        let (log2, replayed) = open(&b.storage, &b.dir, &cfg).unwrap();
        let total = ((TASKS + THREADS) * PER) as usize;
        assert_eq!(
            replayed.len(),
            total,
            "{}: every appended record comes back after a clean close",
            b.name
        );
        let mut next = vec![0u32; (TASKS + THREADS) as usize];
        let mut last_lsn = None;
        for (lsn, rec) in &replayed {
            assert!(last_lsn < Some(*lsn), "{}: records in LSN order", b.name);
            last_lsn = Some(*lsn);
            let w = u32::from_le_bytes(rec[..4].try_into().unwrap());
            let s = u32::from_le_bytes(rec[4..8].try_into().unwrap());
            assert_eq!(rec, &record(w, s), "{}: record intact", b.name);
            assert_eq!(
                next[w as usize], s,
                "{}: writer {w}'s records in its order",
                b.name
            );
            next[w as usize] += 1;
        }
        drop(log2);
    }
}

/// Durable-prefix bound after a crash: the recovered records are exactly the
/// first k appended (by reservation order), and k covers every record whose
/// future resolved Ok.
fn check_bound(
    appended: &[(u64, Vec<u8>)],
    acked_upto: u64,
    recovered: &[(u64, Vec<u8>)],
    ctx: &str,
) {
    assert!(
        recovered.len() <= appended.len(),
        "{ctx}: more records than appended"
    );
    for (i, (lsn, rec)) in recovered.iter().enumerate() {
        assert_eq!(rec, &appended[i].1, "{ctx}: record {i} differs");
        assert!(*lsn < appended[i].0, "{ctx}: record {i} position");
    }
    let kept_end = recovered.len().checked_sub(1).map_or(0, |i| appended[i].0);
    assert!(
        kept_end >= acked_upto,
        "{ctx}: acknowledged position {acked_upto} lost (recovered up to {kept_end})"
    );
}

/// Thousands of seeded schedules of appends, flushes and crashes (torn,
/// dropped or kept unsynced writes) on the simulated disk.
#[test]
fn simulated_crash_schedules() {
    let schedules: u64 = std::env::var("RINGTREE_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("RINGTREE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + schedules {
        run_schedule(seed);
    }
}

fn run_schedule(seed: u64) {
    LOG.with(|l| l.borrow_mut().clear());
    let mut rng = Rng(seed);
    let sim = SimStorage::new(seed);
    let mut storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let dir = Path::new("/db/wal");
    let flush = match rng.below(3) {
        0 => FlushPolicy::GroupCommit,
        1 => FlushPolicy::Manual,
        _ => FlushPolicy::Interval(Duration::from_micros(200)),
    };
    let mut cfg = config(16 << 10, 4096, flush);
    // Groups go through direct (block-rewriting) writes in two schedules
    // out of three, through the page cache in the third.
    cfg.direct_io = !seed.is_multiple_of(3);
    // (end LSN, record) in reservation order, across crashes.
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut seq = 0u32;
    let mut prev_acked = 0;
    for round in 0..3 {
        let ctx = format!(
            "seed {seed} round {round} {flush:?} direct {}",
            cfg.direct_io
        );
        let (log, recovered) = open(&storage, dir, &cfg).unwrap_or_else(|e| {
            let files: Vec<_> = storage
                .list(dir)
                .unwrap()
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        sim.live_bytes(&dir.join(n)).map(|b| b.len()),
                        sim.durable_bytes(&dir.join(n)).map(|b| b.len()),
                    )
                })
                .collect();
            panic!(
                "{ctx}: reopen failed: {e}; files {files:?}; log {:?}",
                LOG.with(|l| l.borrow().clone())
            )
        });
        let mut acked_upto = 0;
        if round > 0 {
            check_bound(&model, prev_acked, &recovered, &ctx);
            model.truncate(recovered.len());
        }
        let ops = 1 + rng.below(40);
        for _ in 0..ops {
            match rng.below(10) {
                0..=5 => {
                    let rec = record(seed as u32, seq);
                    seq += 1;
                    let d = futures::executor::block_on(log.append(&[&rec])).unwrap();
                    model.push((d.position(), rec));
                    if rng.below(4) == 0 {
                        if flush != FlushPolicy::GroupCommit {
                            log.flush();
                        }
                        d.wait().unwrap();
                        acked_upto = acked_upto.max(d.position());
                    }
                }
                6 => {
                    log.flush().wait().unwrap();
                    // Every record appended before the flush is durable.
                    acked_upto = acked_upto.max(model.last().map_or(0, |m| m.0));
                }
                7 => std::thread::sleep(Duration::from_micros(rng.below(300))),
                _ => {
                    // Whatever the watermark covers now counts as acknowledged.
                    let d = log.durable();
                    if let Some(m) = model.iter().rev().find(|m| m.0 <= d) {
                        acked_upto = acked_upto.max(m.0);
                    }
                }
            }
        }
        // Crash: the process dies (the committer's handles go dead), and the
        // disk keeps a torn, dropped or complete image of unsynced writes.
        let kind = rng.below(3);
        LOG.with(|l| {
            l.borrow_mut().push(format!(
                "round {round}: {} ops, crash {kind}, durable {}, end {}",
                ops,
                log.durable(),
                log.end()
            ))
        });
        match kind {
            0 => sim.crash(),
            1 => sim.crash_drop_all(),
            _ => sim.crash_keep_all(),
        }
        if std::env::var("RINGTREE_DEBUG").is_ok() {
            eprintln!(
                "{ctx}: crash kind {kind}, files {:?}",
                storage
                    .list(dir)
                    .unwrap()
                    .iter()
                    .map(|n| (n.clone(), sim.live_bytes(&dir.join(n)).map(|b| b.len())))
                    .collect::<Vec<_>>()
            );
        }
        let _ = log.close();
        drop(log);
        storage = Arc::new(sim.restart());
        prev_acked = acked_upto;
    }
}

thread_local! {
    static LOG: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// EIO on write and on fsync, and ENOSPC: every pending future resolves Err
/// promptly, later appends fail, nothing reports durable that is not, and
/// reopening recovers exactly the durable prefix.
#[test]
fn io_failures_poison_the_log() {
    for fault in ["write", "sync", "enospc"] {
        let sim = SimStorage::new(1);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/db/wal");
        let cfg = config(64 << 10, 8192, FlushPolicy::Manual);
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        let mut durable = Vec::new();
        for s in 0..10 {
            durable.push(futures::executor::block_on(log.append(&[&record(0, s)])).unwrap());
        }
        log.flush().wait().unwrap();
        assert!(durable.iter().all(|d| d.is_durable()));
        let mut pending = Vec::new();
        for s in 10..20 {
            pending.push(futures::executor::block_on(log.append(&[&record(0, s)])).unwrap());
        }
        match fault {
            "write" => sim.fail_writes_after(0),
            "sync" => sim.fail_syncs_after(0),
            _ => sim.enospc_after_bytes(0),
        }
        let err = log.flush().wait().unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{fault}: {err}");
        if fault == "enospc" {
            assert!(
                err.to_string().contains("No space left"),
                "ENOSPC named: {err}"
            );
        }
        for p in &pending {
            assert!(p.wait().is_err(), "{fault}: pending future must fail");
            assert!(!p.is_durable());
        }
        let later = futures::executor::block_on(log.append(&[&record(0, 99)]));
        assert!(
            matches!(later, Err(Error::Poisoned { .. })),
            "{fault}: later appends fail"
        );
        for d in &durable {
            assert!(d.wait().is_ok(), "already durable stays Ok");
        }
        sim.clear_faults();
        sim.crash();
        let _ = log.close();
        drop(log);
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        let (_log, replayed) = open(&storage, dir, &cfg).unwrap();
        if fault == "sync" {
            // A failed fsync makes nothing it covered durable.
            assert_eq!(replayed.len(), 10, "{fault}: exactly the durable prefix");
        } else {
            // A failed write may have reached the disk in part: some of the
            // unacknowledged records may come back, as a prefix.
            assert!(
                (10..=20).contains(&replayed.len()),
                "{fault}: {} records",
                replayed.len()
            );
        }
        for (i, (_, r)) in replayed.iter().enumerate() {
            assert_eq!(r, &record(0, i as u32), "{fault}: a prefix, in order");
        }
    }
}

/// Opening fails with `Corruption` naming `path` at `off`.
fn expect_corruption_at(b: &Backend, cfg: &LogConfig, path: &Path, off: u64) {
    match open(&b.storage, &b.dir, cfg) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!(
                (file.as_path(), offset),
                (path, off),
                "{}: names file and offset",
                b.name
            )
        }
        other => panic!(
            "{}: expected Corruption, got {:?}",
            b.name,
            other.map(|(_, g)| g.len())
        ),
    }
}

/// Damage on each backend: a torn (or zeroed) tail is cut to the durable
/// prefix; a bad record before the tail, or in an older segment, is
/// `Corruption` naming the file and offset.
#[test]
fn torn_tail_is_cut_and_damage_is_reported() {
    for b in backends() {
        let cfg = config(64 << 10, 16 << 10, FlushPolicy::GroupCommit);
        let n = 3000u32; // ~3.5 segments of 64 KiB at 72 B + commit frames
        {
            let (log, _) = open(&b.storage, &b.dir, &cfg).unwrap();
            for s in 0..n {
                let d = futures::executor::block_on(log.append(&[&record(1, s)])).unwrap();
                if s % 50 == 49 {
                    d.wait().unwrap();
                }
            }
            log.close().unwrap();
        }
        let segs: Vec<String> = b.storage.list(&b.dir).unwrap();
        assert!(
            segs.len() >= 3,
            "{}: rotated through several segments: {segs:?}",
            b.name
        );
        let (_, all) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert_eq!(all.len(), n as usize);
        let data: u64 = 64 * 1024 - 4096;
        let locate = |lsn: u64| {
            (
                b.dir.join(format!("{:020}.wal", lsn / data)),
                4096 + lsn % data,
            )
        };
        let flip = |path: &Path, off: u64| {
            let f = b.storage.open(path, false).unwrap();
            let mut x = [0u8; 1];
            f.read_at(off, &mut x).unwrap();
            x[0] ^= 0x5A;
            f.write_at(off, &[&x]).unwrap();
            f.sync_data().unwrap();
        };

        // After a clean close, damage anywhere before the end is corruption.
        let (last_lsn, _) = all[all.len() - 1];
        let (p, off) = locate(last_lsn);
        flip(&p, off + 20);
        expect_corruption_at(&b, &cfg, &p, off);
        // Torn tail: as a crash leaves it (no clean-close record) and a
        // sector of the last record never written (it reads as the zeros
        // the segment was made of), the last record is cut and the rest
        // kept. (A flipped bit there, with every sector written, stays
        // damage: see `a_flip_in_the_last_group_is_damage_not_a_torn_tail`.)
        flip(&p, off + 20);
        flip(&p, 2048);
        let unwrite = |path: &Path, off: u64| {
            let f = b.storage.open(path, false).unwrap();
            let end = (off / 512 + 1) * 512;
            f.write_at(off, &[&vec![0u8; (end - off) as usize]])
                .unwrap();
            f.sync_data().unwrap();
        };
        unwrite(&p, off);
        let (log, got) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert_eq!(
            got.len(),
            n as usize - 1,
            "{}: torn last record cut",
            b.name
        );
        // The log goes on from the cut, and the cut stays cut.
        futures::executor::block_on(log.append(&[&record(2, 0)]))
            .unwrap()
            .wait()
            .unwrap();
        log.close().unwrap();
        drop(log);
        let (_, got) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert_eq!(got.len(), n as usize);
        assert_eq!(got.last().unwrap().1, record(2, 0));

        // A bad record in the middle of the newest segment.
        let (mid_lsn, _) = all[all.len() - 200];
        let (p, off) = locate(mid_lsn);
        flip(&p, off + 12);
        expect_corruption_at(&b, &cfg, &p, off);
        flip(&p, off + 12);

        // A bad record in the oldest segment.
        let (old_lsn, _) = all[100];
        let (p, off) = locate(old_lsn);
        assert!(p.ends_with("00000000000000000000.wal"));
        flip(&p, off + 40);
        expect_corruption_at(&b, &cfg, &p, off);
        flip(&p, off + 40);

        // A damaged segment header.
        flip(&p, 20);
        assert!(
            matches!(
                open(&b.storage, &b.dir, &cfg),
                Err(Error::Corruption { .. })
            ),
            "{}",
            b.name
        );
        flip(&p, 20);
        let (_, got) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert_eq!(got.len(), n as usize, "{}: undamaged again", b.name);
    }
}

#[test]
fn oversized_record_and_bad_config_are_clear_errors() {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(3));
    let cfg = config(64 << 10, 8192, FlushPolicy::GroupCommit);
    let (log, _) = open(&storage, Path::new("/x"), &cfg).unwrap();
    let big = vec![1u8; log.max_payload() as usize + 1];
    let e = futures::executor::block_on(log.append(&[&big])).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let ok = vec![1u8; log.max_payload() as usize];
    futures::executor::block_on(log.append(&[&ok]))
        .unwrap()
        .wait()
        .unwrap();
    assert!(matches!(
        open(
            &storage,
            Path::new("/y"),
            &config(5000, 8192, FlushPolicy::Manual)
        ),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        open(
            &storage,
            Path::new("/y"),
            &config(64 << 10, 5000, FlushPolicy::Manual)
        ),
        Err(Error::Config(_))
    ));
    // A buffer too large to allocate is refused, not attempted.
    for cap in [1u64 << 31, 1 << 63] {
        assert!(matches!(
            open(
                &storage,
                Path::new("/y"),
                &config(64 << 10, cap, FlushPolicy::Manual)
            ),
            Err(Error::Config(_))
        ));
    }
}

/// Backpressure: with a tiny buffer and Manual flushing, appends wait for
/// room instead of growing memory, and all complete.
#[test]
fn full_buffer_makes_appends_wait() {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(4));
    let cfg = config(64 << 10, 4096, FlushPolicy::Manual);
    let (log, _) = open(&storage, Path::new("/bp"), &cfg).unwrap();
    let log = Arc::new(log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut last = None;
                    for s in 0..200 {
                        last = Some(log.append(&[&record(w, s)]).await.unwrap());
                    }
                    last.unwrap().position()
                })
            })
            .collect();
        for h in hs {
            let end = h.await.unwrap();
            log.flush().await.unwrap();
            assert!(log.durable() >= end);
        }
    });
    assert!(log.end() > 8 * 200 * 64);
}

/// Heavy randomized stress of the reservation ring: many threads, records of
/// random sizes, a 4 KiB ring that wraps constantly and 8 KiB segments that
/// end in filler often. Every record comes back intact, each thread's in its
/// order.
#[test]
fn stress_reservation_wraps_and_segment_ends() {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(11));
    let dir = Path::new("/stress");
    let cfg = config(8192, 4096, FlushPolicy::GroupCommit);
    let (log, _) = open(&storage, dir, &cfg).unwrap();
    let max = log.max_payload() as usize;
    let log = Arc::new(log);
    const THREADS: u32 = 8;
    const PER: u32 = 400;
    let body = move |t: u32, s: u32| -> Vec<u8> {
        let len = 8
            + (blake3::hash(&[t.to_le_bytes(), s.to_le_bytes()].concat()).as_bytes()[0] as usize
                * 7)
                % (max - 8);
        let mut r = vec![(t as u8) ^ (s as u8); len];
        r[..4].copy_from_slice(&t.to_le_bytes());
        r[4..8].copy_from_slice(&s.to_le_bytes());
        r
    };
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for s in 0..PER {
                    let d = futures::executor::block_on(log.append(&[&body(t, s)])).unwrap();
                    if s % 97 == 0 {
                        d.wait().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    Arc::into_inner(log).unwrap().close().unwrap();
    let (_, got) = open(&storage, dir, &cfg).unwrap();
    assert_eq!(got.len(), (THREADS * PER) as usize);
    let mut next = [0u32; THREADS as usize];
    for (_, r) in &got {
        let t = u32::from_le_bytes(r[..4].try_into().unwrap());
        let s = u32::from_le_bytes(r[4..8].try_into().unwrap());
        assert_eq!(next[t as usize], s, "thread {t} in order");
        assert_eq!(r, &body(t, s), "record intact");
        next[t as usize] += 1;
    }
    assert!(
        storage.list(dir).unwrap().len() > 10,
        "rotated through many segments"
    );
}

/// The on-disk format, pinned: a segment built byte by byte from
/// docs/FORMAT.md is read back as the records it holds. A format change
/// that breaks old logs fails here.
#[test]
fn format_is_pinned_by_known_bytes() {
    let sim = SimStorage::new(5);
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let dir = Path::new("/pinned");
    storage.create_dir_all(dir).unwrap();
    let size = 8192u64;
    let mut seg = vec![0u8; size as usize];
    seg[..8].copy_from_slice(b"RTWALSEG");
    seg[8..12].copy_from_slice(&2u32.to_le_bytes()); // format version
    seg[12..16].copy_from_slice(&4096u32.to_le_bytes()); // header length
    seg[16..24].copy_from_slice(&0u64.to_le_bytes()); // sequence
    seg[24..32].copy_from_slice(&0u64.to_le_bytes()); // base LSN
    seg[32..40].copy_from_slice(&size.to_le_bytes());
    let salt = 0x0123_4567_89ab_cdefu64;
    seg[40..48].copy_from_slice(&salt.to_le_bytes());
    // tree id (48..64): all zeros, a standalone log's (LogConfig::default)
    seg[64..68].copy_from_slice(&1u32.to_le_bytes()); // flags: zero-filled
    let crc = crc32c::crc32c(&seg[..68]);
    seg[68..72].copy_from_slice(&crc.to_le_bytes());
    let mut lsn = 0u64;
    let mut frame = |seg: &mut Vec<u8>, tag: u8, payload: &[u8]| {
        let word = (u32::from(tag) << 24) | payload.len() as u32;
        let mut c = crc32c::crc32c(&lsn.to_le_bytes());
        c = crc32c::crc32c_append(c, &word.to_le_bytes());
        if tag != 0xB1 {
            c = crc32c::crc32c_append(c, payload);
        }
        let at = 4096 + lsn as usize;
        seg[at..at + 4].copy_from_slice(&word.to_le_bytes());
        seg[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
        seg[at + 8..at + 8 + payload.len()].copy_from_slice(payload);
        lsn += 8 + (payload.len() as u64).div_ceil(8) * 8;
    };
    frame(&mut seg, 0xA1, b"first record");
    frame(&mut seg, 0xB1, &[0xEE; 13]); // filler: payload not checksummed
    frame(&mut seg, 0xA1, b"second");
    let mut commit = 0u64.to_le_bytes().to_vec(); // group start
    commit.extend_from_slice(&salt.to_le_bytes());
    frame(&mut seg, 0xC1, &commit); // commit frame
    let f = storage
        .open(&dir.join("00000000000000000000.wal"), true)
        .unwrap();
    f.write_at(0, &[&seg]).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let cfg = config(size, 4096, FlushPolicy::GroupCommit);
    let (log, got) = open(&storage, dir, &cfg).unwrap();
    let recs: Vec<&[u8]> = got.iter().map(|(_, r)| r.as_slice()).collect();
    assert_eq!(recs, [b"first record".as_slice(), b"second".as_slice()]);
    assert_eq!(got[0].0, 0);
    assert_eq!(got[1].0, 48);
    assert_eq!(log.end(), lsn, "the log goes on after the last frame");
}

/// The ring exactly full (reservations reach one ring length past the last
/// sync): the committer must not read past the end of the log.
#[test]
fn an_exactly_full_ring_is_handled() {
    for flush in [FlushPolicy::Manual, FlushPolicy::GroupCommit] {
        let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(21));
        let cfg = config(1 << 20, 4096, flush);
        let (log, _) = open(&storage, Path::new("/full"), &cfg).unwrap();
        let log = Arc::new(log);
        // 128 frames of 32 bytes fill a 4 KiB ring exactly.
        let mut ds = Vec::new();
        for i in 0..128u8 {
            ds.push(futures::executor::block_on(log.append(&[&[i; 24]])).unwrap());
        }
        let more: Vec<_> = (0..3)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200u8 {
                        let d = futures::executor::block_on(log.append(&[&[t ^ i; 24]])).unwrap();
                        if i % 50 == 0 {
                            log.flush();
                            d.wait().unwrap();
                        }
                    }
                })
            })
            .collect();
        log.flush().wait().unwrap();
        for t in more {
            t.join().unwrap();
        }
        log.flush().wait().unwrap();
        for d in &ds {
            assert!(d.is_durable());
        }
        Arc::into_inner(log).unwrap().close().unwrap();
        let (_, got) = open(&storage, Path::new("/full"), &cfg).unwrap();
        assert_eq!(got.len(), 128 + 600, "{flush:?}");
    }
}

/// Manual and Interval flushing with groups that cross segment boundaries:
/// every segment gets its own frames and everything flushed comes back.
#[test]
fn flushed_groups_across_segments_every_backend() {
    for b in backends() {
        for flush in [
            FlushPolicy::Manual,
            FlushPolicy::Interval(Duration::from_millis(5)),
        ] {
            let dir = b
                .dir
                .join(format!("{flush:?}").replace(['(', ')', ' '], "_"));
            let cfg = config(8192, 16384, flush);
            let (log, _) = open(&b.storage, &dir, &cfg).unwrap();
            for i in 0..200u32 {
                futures::executor::block_on(log.append(&[&i.to_le_bytes().repeat(6)])).unwrap();
            }
            log.flush().wait().unwrap();
            log.close().unwrap();
            drop(log);
            let (_, got) = open(&b.storage, &dir, &cfg).unwrap();
            assert_eq!(got.len(), 200, "{} {flush:?}", b.name);
            for (i, (_, r)) in got.iter().enumerate() {
                assert_eq!(r, &(i as u32).to_le_bytes().repeat(6));
            }
        }
    }
}

/// Segment headers with absurd or inconsistent sizes are corruption, not an
/// abort or a broken log.
#[test]
fn bad_segment_sizes_are_corruption() {
    for size in [1u64 << 62, 4104, 12288 + 8, 1 << 31] {
        let sim = SimStorage::new(2);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/badsize");
        storage.create_dir_all(dir).unwrap();
        let mut h = vec![0u8; 4096];
        h[..8].copy_from_slice(b"RTWALSEG");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&4096u32.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        let crc = crc32c::crc32c(&h[..48]);
        h[48..52].copy_from_slice(&crc.to_le_bytes());
        let f = storage
            .open(&dir.join("00000000000000000000.wal"), true)
            .unwrap();
        f.write_at(0, &[&h, &[0u8; 8192]]).unwrap();
        drop(f);
        let r = open(&storage, dir, &config(8192, 4096, FlushPolicy::GroupCommit));
        assert!(matches!(r, Err(Error::Corruption { .. })), "size {size}");
    }
    // A header claiming more than the file holds.
    let sim = SimStorage::new(3);
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let dir = Path::new("/short");
    let cfg = config(64 << 10, 4096, FlushPolicy::GroupCommit);
    let (log, _) = open(&storage, dir, &cfg).unwrap();
    futures::executor::block_on(log.append(&[b"x"]))
        .unwrap()
        .wait()
        .unwrap();
    log.close().unwrap();
    drop(log);
    sim.truncate(&dir.join("00000000000000000000.wal"), 10_000)
        .unwrap();
    assert!(matches!(
        open(&storage, dir, &cfg),
        Err(Error::Corruption { .. })
    ));
}

/// Two closes at once: both wait for the sync; appends after close fail.
#[test]
fn concurrent_close_waits_for_the_sync() {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(8));
    let cfg = config(64 << 10, 8192, FlushPolicy::Manual);
    let (log, _) = open(&storage, Path::new("/cc"), &cfg).unwrap();
    let log = Arc::new(log);
    let d = futures::executor::block_on(log.append(&[b"last words"])).unwrap();
    let closers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            let d = d.clone();
            std::thread::spawn(move || {
                log.close().unwrap();
                assert!(d.is_durable(), "close returned before the sync");
            })
        })
        .collect();
    for c in closers {
        c.join().unwrap();
    }
    assert!(matches!(
        futures::executor::block_on(log.append(&[b"late"])),
        Err(Error::Closed)
    ));
}

/// `write_sync` on every backend, from several threads at once (io_uring
/// gives each thread its own commit ring), through buffered and direct
/// handles, with the data split over several buffers: every byte lands
/// where it was written and nothing else changes.
#[test]
fn write_sync_lands_byte_exact_from_many_threads() {
    const LEN: usize = 1 << 20;
    for b in backends() {
        b.storage.create_dir_all(&b.dir).unwrap();
        let path = b.dir.join("f");
        let f = b.storage.open(&path, true).unwrap();
        f.write_at(0, &[&vec![0u8; LEN]]).unwrap();
        f.sync_data().unwrap();
        let direct = b.storage.open_direct(&path).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let (f, direct) = (&f, &direct);
                s.spawn(move || {
                    // Each thread owns the 64 KiB regions t, t+4, t+8, …
                    let aligned = vec![t + 1; 2 * 4096 + 4096];
                    let at = aligned.as_ptr().align_offset(4096);
                    for r in (t as usize..LEN / 65536).step_by(4) {
                        let off = (r * 65536) as u64;
                        let data: Vec<u8> = (0..3000).map(|i| (i as u8) ^ (r as u8) | 1).collect();
                        let (x, y) = data.split_at(1234);
                        f.write_sync(off + 7, &[x, y]).unwrap();
                        if let Some(d) = direct {
                            d.write_sync(off + 8192, &[&aligned[at..at + 8192]])
                                .unwrap();
                        }
                    }
                });
            }
        });
        let mut got = vec![0u8; LEN];
        f.read_at(0, &mut got).unwrap();
        let mut want = vec![0u8; LEN];
        for r in 0..LEN / 65536 {
            let off = r * 65536;
            for i in 0..3000 {
                want[off + 7 + i] = (i as u8) ^ (r as u8) | 1;
            }
            if direct.is_some() {
                want[off + 8192..off + 16384].fill((r % 4) as u8 + 1);
            }
        }
        assert!(got == want, "{}: bytes differ after write_sync", b.name);
    }
}

/// A log closed cleanly exactly at the end of a segment: damage in that
/// segment's last record is `Corruption`, not a torn tail (no later frame
/// shows the record was synced; the clean-close record there does).
#[test]
fn damage_before_a_clean_close_at_a_segment_end_is_reported() {
    for b in backends() {
        // Four records of 2040 bytes fill the 8 KiB data area of a 12 KiB
        // segment exactly: frames of 2048 bytes, no room for a commit frame.
        let cfg = config(12 << 10, 16 << 10, FlushPolicy::Manual);
        let path = b.dir.join(format!("{:020}.wal", 0));
        {
            let (log, _) = open(&b.storage, &b.dir, &cfg).unwrap();
            for s in 0..4u8 {
                let d = futures::executor::block_on(log.append(&[&vec![s + 1; 2040]])).unwrap();
                drop(d);
            }
            futures::executor::block_on(log.flush()).unwrap();
            assert_eq!(log.durable(), 8192, "{}", b.name);
            log.close().unwrap();
        }
        let (log, got) = open(&b.storage, &b.dir, &cfg).unwrap();
        assert_eq!(got.len(), 4, "{}: all records back", b.name);
        log.close().unwrap();
        // Damage a byte of the last record's payload.
        let f = b.storage.open(&path, false).unwrap();
        let at = 4096 + 3 * 2048 + 100;
        let mut byte = [0u8; 1];
        f.read_at(at, &mut byte).unwrap();
        f.write_at(at, &[&[byte[0] ^ 0x10]]).unwrap();
        f.sync_data().unwrap();
        drop(f);
        expect_corruption_at(&b, &cfg, &path, 4096 + 3 * 2048);
    }
}

/// Under appends that never pause, a group commit can rarely close its
/// group with a commit frame (more is always reserved); one naming its end
/// then rides with the frames reserved after it. At least half the groups
/// get one (without them, about a fifth did here), and damage to a synced
/// record is reported after a power loss, not cut as a torn tail. Also
/// with a small buffer the appenders keep full: they leave room at its end
/// for the committer's frame.
#[test]
fn damage_under_continuous_appends_is_reported_after_a_crash() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let mut reported = 0;
    for round in 0..6u64 {
        let sim = SimStorage::new(50 + round);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/load");
        // One segment for the whole run (a group ending at a segment end
        // is vouched for by the next segment's first frame instead); a
        // buffer the appenders fill, or one they do not.
        let buffer = if round % 2 == 0 { 64 << 10 } else { 16 << 20 };
        let cfg = config(32 << 20, buffer, FlushPolicy::GroupCommit);
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        let stop = AtomicBool::new(false);
        let acked = std::thread::scope(|s| {
            for w in 0..4u32 {
                let (log, stop) = (&log, &stop);
                s.spawn(move || {
                    let mut seq = 0;
                    while !stop.load(Relaxed) {
                        if futures::executor::block_on(log.append(&[&record(w, seq)])).is_err() {
                            return;
                        }
                        seq += 1;
                    }
                });
            }
            while log.durable() < 200 << 10 {
                std::thread::yield_now();
            }
            // Every frame reserved by now is on disk when `durable` passes
            // it: the commit frames naming the ends of the groups before.
            let acked = log.durable();
            // Three rounds of: wait until all that is reserved now is on
            // disk. Every group ending below `acked` then has a commit frame
            // past it on disk (its own, or a later group's naming a later
            // end), however the scheduler spread the appends.
            for _ in 0..3 {
                let reserved = log.end();
                while log.durable() <= reserved {
                    std::thread::yield_now();
                }
            }
            sim.crash(); // the appends go on until it
            stop.store(true, Relaxed);
            acked
        });
        // Nearly every group is followed by a commit frame: count them.
        let syncs = log.syncs();
        drop(log);
        let bytes = sim
            .durable_bytes(&dir.join(format!("{:020}.wal", 0)))
            .unwrap();
        let (mut at, mut commits) = (4096usize, 0u64);
        while at + 8 <= bytes.len() {
            let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            if word == 0 {
                break;
            }
            commits += u64::from(word >> 24 == 0xC1);
            at += 8 + (word as usize & 0xFF_FFFF).div_ceil(8) * 8;
        }
        assert!(
            commits * 2 >= syncs,
            "round {round}: {commits} commit frames for {syncs} group commits"
        );
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        let (log, got) = open(&storage, dir, &cfg).unwrap();
        let end = log.durable();
        assert!(end >= acked, "round {round}: {end} < {acked}");
        sim.crash(); // before the drop: no clean close, only commit frames can tell
        drop(log);
        // Damage a record in the first half of what was acknowledged.
        let (lsn, _) = *got.iter().find(|(l, _)| *l >= acked / 2).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        let path = dir.join(format!("{:020}.wal", 0));
        let f = storage.open(&path, false).unwrap();
        let at = 4096 + lsn + 8 + 20;
        let mut b = [0u8; 1];
        f.read_at(at, &mut b).unwrap();
        f.write_at(at, &[&[b[0] ^ 4]]).unwrap();
        f.sync_data().unwrap();
        drop(f);
        match open(&storage, dir, &cfg) {
            Err(Error::Corruption { offset, .. }) => {
                assert_eq!(offset, 4096 + lsn, "round {round}: names the record");
                reported += 1;
            }
            Ok((_, got)) => panic!(
                "round {round}: damage at {lsn} taken for a torn tail: {} records back",
                got.len()
            ),
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert_eq!(reported, 6);
}

/// Damage in two places after a clean close: the last record of one
/// segment and the first frame of the next, where the log was closed. The
/// next segment's clean-close record still proves the first was synced.
#[test]
fn a_later_segments_clean_close_vouches_for_the_one_before() {
    for b in backends() {
        // Frames of 2048 bytes: four fill segment 0's 8 KiB data area, the
        // fifth opens segment 1.
        let cfg = config(12 << 10, 16 << 10, FlushPolicy::Manual);
        {
            let (log, _) = open(&b.storage, &b.dir, &cfg).unwrap();
            for s in 0..5u8 {
                drop(futures::executor::block_on(log.append(&[&vec![s + 1; 2040]])).unwrap());
            }
            futures::executor::block_on(log.flush()).unwrap();
            log.close().unwrap();
        }
        let flip = |seg: u64, at: u64| {
            let f = b
                .storage
                .open(&b.dir.join(format!("{seg:020}.wal")), false)
                .unwrap();
            let mut byte = [0u8; 1];
            f.read_at(at, &mut byte).unwrap();
            f.write_at(at, &[&[byte[0] ^ 0x20]]).unwrap();
            f.sync_data().unwrap();
        };
        flip(0, 4096 + 3 * 2048 + 100);
        flip(1, 4096 + 100);
        expect_corruption_at(
            &b,
            &cfg,
            &b.dir.join(format!("{:020}.wal", 0)),
            4096 + 3 * 2048,
        );
    }
}

/// Records of the largest size, more than the buffer holds at once, from
/// several threads, with group commit and with manual flushes: each waits
/// for room and gets it, all land, and the log closes.
#[test]
fn largest_records_beyond_the_buffer_all_land() {
    for flush in [FlushPolicy::GroupCommit, FlushPolicy::Manual] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(61));
            let dir = Path::new("/big");
            let cfg = config(64 << 10, 16 << 10, flush);
            let (log, _) = open(&storage, dir, &cfg).unwrap();
            let max = log.max_payload() as usize;
            std::thread::scope(|s| {
                for w in 0..3u8 {
                    let log = &log;
                    s.spawn(move || {
                        for k in 0..20u8 {
                            let d = futures::executor::block_on(log.append(&[&vec![w ^ k; max]]))
                                .unwrap();
                            if flush == FlushPolicy::Manual && k % 5 == 4 {
                                futures::executor::block_on(log.flush()).unwrap();
                            }
                            drop(d);
                        }
                    });
                }
            });
            futures::executor::block_on(log.flush()).unwrap();
            log.close().unwrap();
            let (_, got) = open(&storage, dir, &cfg).unwrap();
            tx.send(got.len()).unwrap();
        });
        // A guard against a hang, not a timing goal.
        let n = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{flush:?}: the appends or the close hung"));
        assert_eq!(n, 60, "{flush:?}");
    }
}

/// The process is killed before each operation in turn (the page cache
/// stays), the log reopened and appended to, then the power fails. The log
/// opens again holding everything the reopened log acknowledged: the group
/// the killed process wrote but had not synced, which recovery took, is
/// made durable at the reopen, before anything after it.
#[test]
fn a_kill_then_a_power_loss_keeps_what_the_reopened_log_acknowledged() {
    let cfg = config(8 << 10, 8 << 10, FlushPolicy::GroupCommit);
    let dir = Path::new("/kill");
    // 72-byte frames, 56 to a segment: the first run crosses into the
    // second segment, the second run goes on for two more.
    let first = |log: &Log| {
        for i in 0..70u32 {
            let Ok(d) = futures::executor::block_on(log.append(&[&record(1, i)])) else {
                return;
            };
            if i % 3 == 2 && d.wait().is_err() {
                return;
            }
        }
    };
    let ops = {
        let sim = SimStorage::new(70);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        let before = sim.ops();
        first(&log);
        sim.ops() - before
    };
    assert!(ops > 40, "{ops} operations");
    for n in 0..ops {
        let sim = SimStorage::new(70 + n);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        sim.kill_at_op(n);
        first(&log);
        // Killed now if not yet (the count of the preparer's operations
        // varies), so nothing armed is left for the reopen.
        sim.clear_faults();
        sim.kill();
        drop(log);
        let sim = sim.restart();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        let acked: Vec<Vec<u8>> = (0..120u32).map(|i| record(2, i)).collect();
        for r in &acked {
            futures::executor::block_on(log.append(&[r]))
                .unwrap()
                .wait()
                .unwrap();
        }
        sim.crash();
        drop(log);
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        let (_, got) = open(&storage, dir, &cfg)
            .unwrap_or_else(|e| panic!("killed before op {n}, then a power loss: {e}"));
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, r)| r).collect();
        assert!(
            got.ends_with(&acked),
            "killed before op {n}: the reopened log's acknowledged records are not all there"
        );
    }
}

/// A record that needs most of the log buffer gets in while other threads
/// keep the buffer full of small records: they leave room for it. (It
/// waited for an empty buffer before, which a stream of appends faster
/// than the disk leaves only by chance.)
#[test]
fn a_large_record_is_not_starved_by_small_ones() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(ThreadedStorage);
    let dir = t.path().join("wal");
    let cfg = config(1 << 20, 64 << 10, FlushPolicy::GroupCommit);
    let (log, _) = open(&storage, &dir, &cfg).unwrap();
    let big = vec![0xB6u8; log.max_payload() as usize];
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    let small = std::thread::scope(|scope| {
        let flooders: Vec<_> = (0..6u32)
            .map(|w| {
                let (log, stop) = (&log, &stop);
                scope.spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        futures::executor::block_on(log.append(&[&record(w, n)])).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Let the stream fill the buffer first.
        std::thread::sleep(Duration::from_millis(100));
        let (log, big) = (&log, &big);
        scope.spawn(move || {
            let before = log.syncs();
            let d = futures::executor::block_on(log.append(&[big])).unwrap();
            let waited = log.syncs() - before;
            tx.send(d.wait().map(|()| waited)).unwrap();
        });
        // A hang detector, not a timing goal: it takes milliseconds.
        let got = rx.recv_timeout(Duration::from_secs(30));
        stop.store(true, Ordering::Relaxed);
        // The group commits it waited through: 0 to 8 in twelve runs with
        // room kept for it (behind the older claims of small appenders);
        // 60 to 350 when it waited for an empty buffer.
        match got {
            Ok(Ok(waited)) => assert!(waited <= 32, "waited through {waited} group commits"),
            other => panic!("the large record did not get in: {other:?}"),
        }
        flooders.into_iter().map(|f| f.join().unwrap()).sum::<u32>()
    });
    log.close().unwrap();
    let (log, got) = open(&storage, &dir, &cfg).unwrap();
    assert_eq!(got.iter().filter(|(_, r)| *r == big).count(), 1);
    assert_eq!(got.len() as u32, small + 1);
    log.close().unwrap();
}

/// A group whose fdatasync failed stays readable in the page cache though
/// it never reaches the disk (Linux marks the pages clean). Reopened
/// without a reboot, the log replays it; the open must make it durable
/// before anything after it is acknowledged, or a later power loss takes it
/// and keeps what follows (the next open then fails with `Corruption`,
/// every later acknowledged record out of reach).
#[test]
fn a_group_whose_sync_failed_is_made_durable_by_the_next_open() {
    for direct in [false, true] {
        let sim = SimStorage::new(31);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/sim/failed-sync");
        let mut cfg = config(64 << 10, 64 << 10, FlushPolicy::GroupCommit);
        cfg.direct_io = direct;
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        let append = |log: &Log, w, n| futures::executor::block_on(log.append(&[&record(w, n)]));
        append(&log, 0, 0).unwrap().wait().unwrap();
        sim.fail_syncs_after(0);
        let lost = append(&log, 0, 1).unwrap().wait();
        assert!(matches!(lost, Err(Error::Poisoned { .. })), "{lost:?}");
        sim.clear_faults();
        let _ = log.close();
        // Reopened with the machine still up: the failed group is read back.
        let (log, got) = open(&storage, dir, &cfg).unwrap();
        assert_eq!(got.len(), 2, "direct {direct}");
        for n in 2..6 {
            append(&log, 0, n).unwrap().wait().unwrap();
        }
        drop(log);
        sim.crash_drop_all();
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        let (log, got) = open(&storage, dir, &cfg)
            .unwrap_or_else(|e| panic!("direct {direct}: reopening after the power loss: {e}"));
        let want: Vec<Vec<u8>> = (0..6).map(|n| record(0, n)).collect();
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, want, "direct {direct}");
        log.close().unwrap();
    }
}

/// Segment 0's last record is damaged and segment 1's first frame torn
/// (two faults). When a commit frame later in segment 1 names a position
/// past the damage, the damage was synced: `Corruption`, nothing removed.
/// When nothing in segment 1 proves it, the tail is cut there and the later
/// segments go with it: what they hold was never proved durable, yet their
/// frames are valid at their own positions and could pass for the log's
/// continuation once the log refilled them.
#[test]
fn a_cut_removes_the_segments_after_it() {
    for proved in [true, false] {
        let sim = SimStorage::new(5);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/sim/cut-later");
        let cfg = config(8 << 10, 8 << 10, FlushPolicy::GroupCommit);
        let data = (8 << 10) - 4096;
        let (log, _) = open(&storage, dir, &cfg).unwrap();
        // One record per group; each durable position is its record's end.
        let mut ends = Vec::new();
        let mut n = 0;
        while log.end() < data + 2048 {
            let d = futures::executor::block_on(log.append(&[&record(1, n)])).unwrap();
            d.wait().unwrap();
            ends.push(d.position());
            n += 1;
        }
        // Dies without a clean close.
        sim.kill();
        drop(log);
        let seg0 = dir.join("00000000000000000000.wal");
        let seg1 = dir.join("00000000000000000001.wal");
        let last0 = ends.iter().rposition(|&e| e <= data).unwrap();
        let x = ends[last0] - 72;
        // The sector holding the record's start never written: zeros.
        let at = 4096 + x;
        for k in at..(at / 512 + 1) * 512 {
            let v = sim.live_bytes(&seg0).unwrap()[k as usize];
            if v != 0 {
                sim.corrupt(&seg0, k, v).unwrap();
            }
        }
        sim.corrupt(&seg1, 4096 + 4, 0xFF).unwrap();
        if !proved {
            // Every commit frame of segment 1 (header word: tag 0xC1,
            // 16-byte payload) loses its checksum.
            let bytes = sim.live_bytes(&seg1).unwrap();
            let word = ((0xC1u32 << 24) | 16).to_le_bytes();
            for at in (4096..bytes.len() - 8).step_by(8) {
                if bytes[at..at + 4] == word {
                    sim.corrupt(&seg1, at as u64 + 12, 0x01).unwrap();
                }
            }
        }
        let storage: Arc<dyn Storage> = Arc::new(sim.restart());
        if proved {
            match open(&storage, dir, &cfg) {
                Err(Error::Corruption { file, .. }) => assert_eq!(file, seg0),
                Err(e) => panic!("expected corruption in segment 0, got {e}"),
                Ok((_, got)) => panic!("expected corruption, got {} records", got.len()),
            }
            assert!(sim.live_bytes(&seg1).is_some(), "segment 1 was removed");
            continue;
        }
        let (log, got) = open(&storage, dir, &cfg).unwrap();
        assert_eq!(got.len(), last0, "cut at the damaged record");
        assert_eq!(log.end(), x);
        if let Some(bytes) = sim.live_bytes(&seg1) {
            assert!(
                bytes[4096..].iter().all(|&b| b == 0),
                "segment 1 still holds frames past the cut"
            );
        }
        // The log goes on through segment 1 and reopens whole.
        for m in 0..100 {
            futures::executor::block_on(log.append(&[&record(2, m)]))
                .unwrap()
                .wait()
                .unwrap();
        }
        log.close().unwrap();
        let (log, again) = open(&storage, dir, &cfg).unwrap();
        assert_eq!(again.len(), last0 + 100);
        log.close().unwrap();
    }
}

/// A large append that found the buffer full and was polled once, then
/// never again (its future kept but abandoned), holds its claim only for a
/// while: a later small append on the same thread gets in.
#[test]
fn an_abandoned_claim_does_not_block_the_log() {
    use std::future::Future;
    let t = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(ThreadedStorage);
    let dir = t.path().join("wal");
    // Manual: records stay in the buffer until asked for.
    let cfg = config(1 << 20, 64 << 10, FlushPolicy::Manual);
    let log = Arc::new(open(&storage, &dir, &cfg).unwrap().0);
    let big = vec![0xB6u8; log.max_payload() as usize];
    // Half the buffer taken: the large record does not fit.
    let mut first = None;
    for n in 0..500 {
        first = Some(futures::executor::block_on(log.append(&[&record(0, n)])).unwrap());
    }
    let first = first.unwrap();
    let parts: [&[u8]; 1] = [&big];
    let mut stuck = Box::pin(log.append(&parts));
    let waker = futures::task::noop_waker();
    let pending = stuck
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(pending.is_pending(), "the large record found room");
    let (tx, rx) = std::sync::mpsc::channel();
    let small = {
        let log = log.clone();
        std::thread::spawn(move || {
            let d = futures::executor::block_on(log.append(&[&record(1, 0)]));
            let _ = tx.send(d.map(|_| ()));
        })
    };
    // A hang detector: it takes tens of milliseconds.
    let got = rx.recv_timeout(Duration::from_secs(30));
    assert!(matches!(got, Ok(Ok(()))), "the small append: {got:?}");
    small.join().unwrap();
    // The abandoned one still gets in when polled again.
    let d = futures::executor::block_on(stuck).unwrap();
    log.flush().wait().unwrap();
    first.wait().unwrap();
    d.wait().unwrap();
    log.close().unwrap();
}
