//! Fault injection on the simulated disk: failing writes and syncs (`EIO`),
//! a space budget (`ENOSPC`), the operation at which the power is lost or
//! the process killed, and damage to a file's bytes.
//!
//! Separate from the file system and the crash model so a test can read
//! every way the disk misbehaves in one place.

use std::io;
use std::path::Path;

use super::SplitMix64;
use super::crash::sectors;
use super::memfs::{FileState, to_usize};

/// `EIO`, the error of an injected write or sync failure.
pub(super) const EIO: i32 = 5;
/// `ENOSPC`, the error of a write past the injected space limit.
pub(super) const ENOSPC: i32 = 28;

/// The injected faults.
#[derive(Default)]
pub(super) struct Faults {
    /// Index (in `write_calls`) of the first write_at call that fails.
    pub(super) write_fail_at: Option<u64>,
    /// Index (in `sync_calls`) of the first sync_data call that fails.
    pub(super) sync_fail_at: Option<u64>,
    /// Bytes write_at may still write before ENOSPC.
    pub(super) space_left: Option<u64>,
    /// Index (in `ops`) of the operation the power is lost before.
    pub(super) crash_at: Option<u64>,
    /// Index (in `ops`) of the operation the process is killed before.
    pub(super) kill_at: Option<u64>,
    /// Index (in `sync_calls`) of the sync_data call the power is lost
    /// before: its file's writes are written and not yet synced.
    pub(super) crash_at_sync: Option<u64>,
}

/// What stops the simulated machine before an operation.
pub(super) enum Stop {
    /// A power loss (a random crash).
    Crash,
    /// The process is killed; the page cache stays.
    Kill,
}

impl Faults {
    /// The stop set for mutating operation `n`, if any; it fires once.
    pub(super) fn stop_before(&mut self, n: u64) -> Option<Stop> {
        if self.crash_at == Some(n) {
            self.crash_at = None;
            return Some(Stop::Crash);
        }
        if self.kill_at == Some(n) {
            self.kill_at = None;
            return Some(Stop::Kill);
        }
        None
    }

    /// Whether the power is lost before sync_data call number `call`; it
    /// fires once.
    pub(super) fn crash_before_sync(&mut self, call: u64) -> bool {
        if self.crash_at_sync == Some(call) {
            self.crash_at_sync = None;
            return true;
        }
        false
    }

    /// Whether write_at call number `call` fails.
    pub(super) fn write_fails(&self, call: u64) -> bool {
        self.write_fail_at.is_some_and(|at| call >= at)
    }

    /// Whether sync_data call number `call` fails.
    pub(super) fn sync_fails(&self, call: u64) -> bool {
        self.sync_fail_at.is_some_and(|at| call >= at)
    }

    /// Takes `len` bytes from the space budget, or fails with `ENOSPC`
    /// taking nothing.
    pub(super) fn take_space(&mut self, len: u64) -> io::Result<()> {
        if let Some(left) = self.space_left.as_mut() {
            if len > *left {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            *left -= len;
        }
        Ok(())
    }
}

/// The part of a failing write of `data` at `off` that reached the page
/// cache before the error: a random prefix of its sectors, maybe none (the
/// kernel may have written some leading sectors first).
pub(super) fn written_before_failure<'a>(
    rng: &mut SplitMix64,
    off: u64,
    data: &'a [u8],
) -> &'a [u8] {
    let sectors = sectors(off, data.len() as u64);
    let k = rng.below(sectors.len() as u64 + 1) as usize;
    if k == 0 {
        return &[];
    }
    let end = sectors[k - 1].1;
    &data[..(end - off) as usize]
}

/// A failed sync, as Linux handles it: the pages are marked clean after a
/// writeback error, so the data stays readable but will never be written.
pub(super) fn fail_sync(file: &mut FileState) {
    file.unsynced.clear();
}

impl FileState {
    /// XORs the byte at `offset` with `xor` in the live and durable images
    /// (each where it reaches that far) and in every unsynced write
    /// covering it. `InvalidInput` if neither image reaches `offset`.
    pub(super) fn corrupt(&mut self, path: &Path, offset: u64, xor: u8) -> io::Result<()> {
        let at = offset as usize;
        let reach = self.live.len().max(self.durable.len()) as u64;
        if offset >= reach {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "simulated disk: corrupt at {offset} past the end ({reach}) of {}",
                    path.display()
                ),
            ));
        }
        if let Some(b) = self.live.get_mut(at) {
            *b ^= xor;
        }
        if let Some(b) = self.durable.get_mut(at) {
            *b ^= xor;
        }
        for w in &mut self.unsynced {
            if offset >= w.off && offset - w.off < w.data.len() as u64 {
                w.data[(offset - w.off) as usize] ^= xor;
            }
        }
        Ok(())
    }

    /// Cuts (or zero-extends) both images to `len` bytes and clips the
    /// unsynced writes to `len`.
    pub(super) fn truncate(&mut self, len: u64) -> io::Result<()> {
        let n = to_usize(len)?;
        self.live.resize(n, 0);
        self.durable.resize(n, 0);
        self.unsynced.retain_mut(|w| {
            if w.off >= len {
                return false;
            }
            let keep = (len - w.off).min(w.data.len() as u64) as usize;
            w.data.truncate(keep);
            true
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use super::*;

    #[test]
    fn injected_write_failures_are_eio_from_the_nth_call() {
        let sim = disk_with(6, &[1u8; S]);
        let f = sim.open(p("d/f"), false).unwrap();
        sim.fail_writes_after(2);
        f.write_at(0, &[b"a"]).unwrap();
        f.write_at(1, &[b"b"]).unwrap();
        for _ in 0..3 {
            let e = f.write_at(2, &[b"c"]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(EIO));
        }
        // Every file shares the faults.
        let g = sim.open(p("d/g"), true).unwrap();
        assert_eq!(
            g.write_at(0, &[b"x"]).unwrap_err().raw_os_error(),
            Some(EIO)
        );
        // Syncs still work; the counters count successes.
        f.sync_data().unwrap();
        assert_eq!(sim.writes(), 3); // one from disk_with
        assert_eq!(sim.bytes_written(), S as u64 + 2);
        sim.clear_faults();
        f.write_at(2, &[b"c"]).unwrap();
        assert_eq!(&sim.live_bytes(p("d/f")).unwrap()[..3], b"abc");

        // 0 fails the very next call.
        sim.fail_writes_after(0);
        assert_eq!(
            f.write_at(0, &[b"z"]).unwrap_err().raw_os_error(),
            Some(EIO)
        );
    }

    #[test]
    fn a_failed_write_may_leave_a_sector_prefix_unsynced() {
        let old = pattern(8 * S, 0);
        let new = pattern(6 * S, 0xFF);
        let (mut none, mut some) = (false, false);
        for seed in 0..100 {
            let sim = disk_with(seed, &old);
            let f = sim.open(p("d/f"), false).unwrap();
            sim.fail_writes_after(0);
            f.write_at(S as u64, &[&new]).unwrap_err();
            let live = sim.live_bytes(p("d/f")).unwrap();
            let kept = surviving_pieces(&live, &old, S, &new);
            let k = kept.iter().filter(|&&x| x).count();
            assert!(kept[..k].iter().all(|&x| x), "a prefix: {kept:?}");
            none |= k == 0;
            some |= k > 0;
            assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), old);
            // The prefix is an ordinary unsynced write: a sync makes it
            // durable.
            sim.clear_faults();
            f.sync_data().unwrap();
            assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), live);
        }
        assert!(none && some);
    }

    #[test]
    fn injected_sync_failure_is_eio_and_forgets_the_unsynced_writes() {
        let old = pattern(2 * S, 7);
        let sim = disk_with(8, &old);
        let f = sim.open(p("d/f"), false).unwrap();
        f.write_at(0, &[b"lost forever"]).unwrap();
        sim.fail_syncs_after(1);
        let g = sim.open(p("d/g"), true).unwrap();
        g.sync_data().unwrap(); // call 0 succeeds
        let e = f.sync_data().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EIO));
        assert_eq!(g.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        assert_eq!(sim.syncs(), 2); // disk_with's and g's first
        // Still readable...
        assert_eq!(&sim.live_bytes(p("d/f")).unwrap()[..12], b"lost forever");
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), old);
        // ...but a later successful sync does not make it durable,
        sim.clear_faults();
        f.sync_data().unwrap();
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), old);
        // while a write after the failure does become durable.
        f.write_at(S as u64, &[b"later"]).unwrap();
        f.sync_data().unwrap();
        let mut want = old.clone();
        want[S..S + 5].copy_from_slice(b"later");
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), want);
        // Not even a crash that keeps every unsynced write brings it back.
        sim.crash_keep_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), want);
    }

    #[test]
    fn lost_writes_vanish_under_every_crash() {
        for seed in 0..50 {
            let old = pattern(4 * S, 9);
            let sim = disk_with(seed, &old);
            let f = sim.open(p("d/f"), false).unwrap();
            f.write_at(0, &[&[0xAB; 4 * S]]).unwrap();
            sim.fail_syncs_after(0);
            f.sync_data().unwrap_err();
            sim.clear_faults();
            sim.crash();
            let sim = sim.restart();
            assert_eq!(sim.live_bytes(p("d/f")).unwrap(), old, "seed {seed}");
        }
    }

    #[test]
    fn enospc_fails_whole_writes_past_the_budget() {
        let sim = SimStorage::new(9);
        let f = sim.open(p("f"), true).unwrap();
        f.write_at(0, &[b"before"]).unwrap();
        sim.enospc_after_bytes(1000);
        f.write_at(0, &[&[1u8; 600]]).unwrap();
        let e = f.write_at(600, &[&[2u8; 300], &[3u8; 200]]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(ENOSPC));
        assert_eq!(f.len().unwrap(), 600, "a failed write applies nothing");
        assert_eq!(sim.live_bytes(p("f")).unwrap(), vec![1u8; 600]);
        f.write_at(600, &[&[4u8; 400]]).unwrap(); // exactly the budget
        assert_eq!(
            f.write_at(0, &[b"x"]).unwrap_err().raw_os_error(),
            Some(ENOSPC)
        );
        f.write_at(0, &[]).unwrap();
        f.sync_data().unwrap();
        assert_eq!(sim.bytes_written(), 6 + 1000);
        assert_eq!(sim.writes(), 4);
        sim.clear_faults();
        f.write_at(0, &[b"x"]).unwrap();
    }

    /// The power goes just before the chosen operation, whichever thread
    /// and call it is: what was synced before stays, that call and later
    /// ones on old handles fail, reads and calls outside don't count.
    #[test]
    fn power_loss_at_the_nth_operation() {
        for at in 0..5u64 {
            let sim = disk_with(12, b"synced");
            let f = sim.open(p("d/f"), false).unwrap();
            let before = sim.ops();
            sim.crash_at_op(at);
            // ops: write, rename, sync_dir, sync, write
            let steps: [&dyn Fn() -> io::Result<()>; 5] = [
                &|| f.write_at(0, &[b"second"]),
                &|| sim.rename(p("d/f"), p("d/g")),
                &|| sim.sync_dir(p("d")),
                &|| f.sync_data(),
                &|| f.write_at(6, &[b"!"]),
            ];
            for (k, step) in steps.iter().enumerate() {
                let _ = sim.exists(p("d/f")); // reads don't count
                let r = step();
                if (k as u64) < at {
                    r.unwrap();
                } else if k as u64 == at {
                    assert_eq!(r.unwrap_err().raw_os_error(), Some(5), "at {at}");
                } else {
                    assert!(r.is_err(), "at {at}, step {k}: a handle from before");
                }
            }
            // Counted up to the one that found the power gone.
            assert_eq!(sim.ops(), before + at + 1);
            let sim = sim.restart();
            let name = if at >= 3 { "d/g" } else { "d/f" };
            assert_eq!(sim.list(p("d")).unwrap(), [&name[2..]], "at {at}");
            let got = sim.live_bytes(p(name)).unwrap();
            if at == 4 {
                assert_eq!(got, b"second", "synced before the power went");
            } else {
                assert!(got == b"synced" || got == b"second", "at {at}: {got:?}");
            }
        }
    }

    #[test]
    fn corrupt_and_truncate_damage_both_images() {
        let sim = disk_with(18, &pattern(2 * S, 0));
        sim.corrupt(p("d/f"), 5, 0xFF).unwrap();
        let mut want = pattern(2 * S, 0);
        want[5] ^= 0xFF;
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), want);
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), want);
        // Unsynced data over the damaged byte is damaged too.
        let f = sim.open(p("d/f"), false).unwrap();
        f.write_at(0, &[&[0x11; 8]]).unwrap();
        sim.corrupt(p("d/f"), 6, 0x01).unwrap();
        f.sync_data().unwrap();
        let mut want2 = want.clone();
        want2[..8].copy_from_slice(&[0x11; 8]);
        want2[6] ^= 0x01;
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), want2);
        assert_eq!(read_all(&*f), want2);

        f.write_at(2 * S as u64, &[b"tail"]).unwrap();
        sim.truncate(p("d/f"), S as u64 + 3).unwrap();
        assert_eq!(f.len().unwrap(), S as u64 + 3);
        sim.crash_keep_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), &want2[..S + 3]);

        assert_eq!(
            sim.corrupt(p("d/f"), S as u64 + 3, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            sim.corrupt(p("d/none"), 0, 1).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sim.truncate(p("d/none"), 0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
