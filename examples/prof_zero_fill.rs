//! Probe (not a user example): how filling a new log segment with zeros
//! disturbs the log's own writes on the same disk.
//!
//! `cargo run --release --example prof_zero_fill -- burst|paced [DIR]`
//!
//! The main thread times a 4 KiB direct `pwrite` + `fdatasync` loop into a
//! pre-zeroed file for 3 s (as the committer's group commits); after 0.2 s
//! a second thread writes a 64 MiB file of zeros, either as the log once
//! did (`burst`: buffered 1 MiB writes, an `fdatasync` every 4 MiB) or as
//! it does now (`paced`: direct 64 KiB writes, each followed by a pause
//! three times its length). Prints the loop's latency while the fill ran,
//! and how long the fill took.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A zeroed buffer of `len` bytes at a 4 KiB boundary (inside `mem`).
fn aligned(mem: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *mem = vec![0u8; len + 4096];
    let at = mem.as_ptr().align_offset(4096);
    &mut mem[at..at + len]
}

fn direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("a file system with O_DIRECT")
}

fn fill(path: &Path, paced: bool) -> Duration {
    const SIZE: u64 = 64 << 20;
    let t0 = Instant::now();
    if paced {
        let f = direct(path);
        let mut mem = Vec::new();
        let zeros = aligned(&mut mem, 64 << 10);
        let mut at = 0;
        while at < SIZE {
            let t = Instant::now();
            f.write_all_at(zeros, at).unwrap();
            at += zeros.len() as u64;
            std::thread::sleep(t.elapsed() * 3);
        }
        f.sync_data().unwrap();
    } else {
        let f = File::create(path).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < SIZE {
            f.write_all_at(&zeros, at).unwrap();
            at += zeros.len() as u64;
            if at % (4 << 20) == 0 {
                f.sync_data().unwrap();
            }
        }
        f.sync_data().unwrap();
    }
    t0.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paced = match args.first().map(String::as_str) {
        Some("paced") => true,
        Some("burst") => false,
        _ => panic!("usage: prof_zero_fill burst|paced [DIR]"),
    };
    let dir = args
        .get(1)
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("ringtree-prof-zero-fill"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (log_path, seg_path) = (dir.join("log"), dir.join("segment"));
    let log = direct(&log_path);
    let mut mem = Vec::new();
    {
        let zeros = aligned(&mut mem, 1 << 20);
        for i in 0..16 {
            log.write_all_at(zeros, i << 20).unwrap();
        }
    }
    log.sync_all().unwrap();
    // Freed blocks of earlier runs are discarded now, not during this one.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let block = aligned(&mut mem, 4096);
    block.fill(1);

    let filling = Arc::new(AtomicBool::new(false));
    let f = filling.clone();
    let filler = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        f.store(true, Ordering::SeqCst);
        let took = fill(&seg_path, paced);
        f.store(false, Ordering::SeqCst);
        took
    });
    let (mut during, mut all) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        let s = Instant::now();
        log.write_all_at(block, (i % 4000) * 4096).unwrap();
        log.sync_data().unwrap();
        let us = s.elapsed().as_secs_f64() * 1e6;
        all.push(us);
        if filling.load(Ordering::SeqCst) {
            during.push(us);
        }
        i += 1;
    }
    let took = filler.join().unwrap();
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}: fill {:.0} ms; 4 KiB write + fdatasync during it: n={} p50 {:.0} µs p99 {:.0} µs max {:.0} µs; over the whole run p50 {:.0} µs",
        if paced { "paced" } else { "burst" },
        took.as_secs_f64() * 1e3,
        during.len(),
        q(&mut during, 0.5),
        q(&mut during, 0.99),
        q(&mut during, 1.0),
        q(&mut all, 0.5),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
