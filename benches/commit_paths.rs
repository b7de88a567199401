//! The system calls a group commit can be made of, on one pre-zeroed file,
//! interleaved in rounds so the disk's drift hits all alike: the evidence
//! for the io_uring backend's choice of one `RWF_DSYNC` write per group.
//!
//! `cargo bench --bench commit_paths` (Linux; `RINGTREE_BENCH_DIR`, default
//! `target/bench-tmp`; `RINGTREE_BENCH_ROUNDS`, default 10 rounds of 300).

pub mod common;

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("commit_paths measures io_uring: Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::time::Instant;

    use io_uring::{IoUring, opcode, squeue, types};

    use super::common::{env, hist, row};

    const PER_ROUND: usize = 300;
    const SIZE: u64 = 64 << 20;

    /// Submits `entries` and waits for all of their completions, each Ok.
    fn run(ring: &mut IoUring, entries: &[squeue::Entry]) {
        for e in entries {
            // SAFETY: the buffer each entry names outlives this call, which
            // returns only once every completion is reaped.
            unsafe { ring.submission().push(e).unwrap() };
        }
        let mut done = 0;
        while done < entries.len() {
            ring.submit_and_wait(entries.len() - done).unwrap();
            for c in ring.completion() {
                assert!(c.result() >= 0, "io_uring request failed: {}", c.result());
                done += 1;
            }
        }
    }

    pub fn main() {
        let dir = std::path::PathBuf::from(
            std::env::var("RINGTREE_BENCH_DIR").unwrap_or_else(|_| "target/bench-tmp".into()),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("commit-paths");
        let f = std::fs::File::create(&path).unwrap();
        for i in 0..SIZE >> 20 {
            f.write_all_at(&vec![0u8; 1 << 20], i << 20).unwrap();
        }
        f.sync_all().unwrap();
        let buffered = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let dfd = types::Fd(direct.as_raw_fd());
        // One aligned 4 KiB block, what a direct group write of one record is.
        let mut mem = vec![7u8; 8192];
        let at = mem.as_ptr().align_offset(4096);
        let block = &mut mem[at..at + 4096];
        let ptr = block.as_mut_ptr();
        let mut plain = IoUring::new(8).unwrap();
        let mut deferred = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8)
            .unwrap_or_else(|_| IoUring::new(8).unwrap());
        let names = [
            "raw 64 B pwrite + fdatasync (buffered)",
            "direct 4 KiB pwrite + fdatasync",
            "io_uring linked write + fsync",
            "io_uring RWF_DSYNC write",
            "io_uring RWF_DSYNC write, DEFER_TASKRUN",
        ];
        let mut hs: Vec<_> = names.iter().map(|_| hist()).collect();
        let mut off = 0u64;
        for _ in 0..env("RINGTREE_BENCH_ROUNDS", 10) {
            for (k, h) in hs.iter_mut().enumerate() {
                for _ in 0..PER_ROUND {
                    off = (off + 4096) % SIZE;
                    let write = opcode::Write::new(dfd, ptr, 4096).offset(off);
                    let s = Instant::now();
                    match k {
                        0 => {
                            buffered.write_all_at(&block[..64], off).unwrap();
                            buffered.sync_data().unwrap();
                        }
                        1 => {
                            direct.write_all_at(block, off).unwrap();
                            direct.sync_data().unwrap();
                        }
                        2 => run(
                            &mut plain,
                            &[
                                write.build().flags(squeue::Flags::IO_LINK),
                                opcode::Fsync::new(dfd)
                                    .flags(types::FsyncFlags::DATASYNC)
                                    .build(),
                            ],
                        ),
                        3 => run(&mut plain, &[write.rw_flags(libc::RWF_DSYNC).build()]),
                        _ => run(&mut deferred, &[write.rw_flags(libc::RWF_DSYNC).build()]),
                    }
                    h.record(s.elapsed().as_nanos() as u64).unwrap();
                }
            }
        }
        let floor = hs[0].value_at_quantile(0.5) as f64;
        for (n, h) in names.iter().zip(&hs) {
            let ratio = h.value_at_quantile(0.5) as f64 / floor;
            row(n, h, &format!("p50 {ratio:.2}x raw"));
        }
        let _ = std::fs::remove_file(&path);
    }
}
