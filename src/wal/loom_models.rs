//! Loom models of the log's lock-free parts, run on the real types (built
//! with `--cfg loom`, where `crate::sync` hands them loom's atomics and
//! locks, and the ring keeps its payload bytes in loom cells):
//!
//! - `ring_*`: appenders reserve ([`Shared::try_reserve`]), copy their
//!   payload into the ring and publish the header ([`Reservation::write`]);
//!   a committer scans the published run, checks every payload byte, zeroes
//!   the range and hands it back through `freed`. The ring is small enough
//!   that later frames reuse bytes zeroed by earlier commits.
//! - `claims_*`: appenders that find the ring full take a claim and wait in
//!   [`Shared::poll_space`]; the committer frees room and wakes them.
//! - `watermark_*`: durability futures register and re-check while the
//!   committer advances the watermark, and (in one) a failure races it.
//!
//! A lost wake-up shows as a deadlock (every thread parked), an unordered
//! payload access as a causality violation, a broken invariant as a failed
//! assertion. Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib
//! loom` (see docs/ARCHITECTURE.md for the bounds).
//!
//! The committer's loop here mirrors `Committer::advance_scan` and
//! `Committer::complete_group` (without files); the committer's own
//! parking (`sleeping`, `wake_committer`) is not modelled: it spins.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::atomic::AtomicUsize;
use loom::thread;

use super::format::{FRAME_HEADER, FrameHeader, Kind, frame_crc, frame_len};
use super::reserve::COMMITTER_ROOM;
use super::{Cause, Durable, Failure, Shared, Watermark};
use crate::sync::Ordering;

/// Wakes a loom thread; counts its wake-ups.
struct Unpark {
    thread: thread::Thread,
    woken: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// Runs `f` on this loom thread, parking between polls (a lost wake-up
/// leaves it parked: loom reports the deadlock). Returns the output, the
/// polls that returned `Pending` and the wake-ups received.
fn block_on<F: Future>(f: F) -> (F::Output, usize, usize) {
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: AtomicUsize::new(0),
    });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let mut pending = 0;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return (v, pending, unpark.woken.load(Ordering::Relaxed));
        }
        pending += 1;
        thread::park();
    }
}

/// The payload of appender `who`'s record `n`.
fn payload(who: u8, n: u8, len: usize) -> Vec<u8> {
    (0..len as u8)
        .map(|i| (who << 5) | (n << 3) | (i & 7))
        .collect()
}

/// A log state with a ring of `cap` bytes, from LSN 0.
fn shared(cap: u64) -> Arc<Shared> {
    Arc::new(Shared::new(cap, 1 << 20, 0, 0))
}

/// Appends `records` records of `len` bytes as appender `who`. With
/// `claims`, as `Log::append` does it (a claim, then `poll_space`);
/// without, spinning on a full ring (a smaller state space).
fn append(s: &Shared, who: u8, records: u8, len: u64, claims: bool) {
    for n in 0..records {
        let data = payload(who, n, len as usize);
        let mut claim = None;
        let r = loop {
            let id = claim.as_ref().map_or(0, |c: &super::SpaceClaim<'_>| c.id);
            if let Some(r) = s.try_reserve(len, id) {
                break r;
            }
            if claims {
                let c = claim.get_or_insert_with(|| s.claim_space(len));
                block_on(std::future::poll_fn(|cx| s.poll_space(len, c, cx)));
            } else {
                thread::yield_now();
            }
        };
        drop(r.write(&[&data]));
        drop(claim);
    }
}

/// The committer: scans published frames from `freed`, checks each (its
/// checksum covers its position and payload, read from the ring), zeroes
/// them and hands them back, until `end`. Returns the payloads seen.
fn commit_until(s: &Shared, end: u64) -> Vec<Vec<u8>> {
    let cap = s.ring.cap();
    let mut seen = Vec::new();
    let mut synced = 0;
    let mut scan = 0;
    while synced < end {
        // As `Committer::published` / `advance_scan`.
        while scan - synced < cap && s.ring.header(scan) != [0; 8] {
            let h = FrameHeader::decode(s.ring.header(scan)).expect("a frame header");
            assert_eq!(h.kind, Kind::Record);
            // SAFETY: the header was read with acquire ordering above and
            // the range is handed back only below, after this copy.
            let data = unsafe { s.ring.read(scan + FRAME_HEADER, scan + h.len()) };
            let data = &data[..h.payload as usize];
            assert_eq!(frame_crc(scan, h.word(), &[data]), h.crc, "torn frame");
            seen.push(data.to_vec());
            scan += h.len();
        }
        assert!(
            scan - synced <= cap - COMMITTER_ROOM,
            "appenders took the committer's room"
        );
        if scan == synced {
            thread::yield_now();
            continue;
        }
        // As `Committer::complete_group`.
        // SAFETY: no copy of the range is borrowed; the committer's alone.
        unsafe { s.ring.zero(synced, scan) };
        s.freed.store(scan, Ordering::Release);
        s.wake_space();
        synced = scan;
    }
    seen
}

/// Runs `appenders` (who, records, payload length) against a committer on
/// a ring of `cap` bytes; checks every record arrived intact, once.
fn ring_model(cap: u64, appenders: &'static [(u8, u8, u64)], claims: bool) {
    loom::model(move || {
        let s = shared(cap);
        let threads: Vec<_> = appenders
            .iter()
            .map(|&(who, records, len)| {
                let s = s.clone();
                thread::spawn(move || append(&s, who, records, len, claims))
            })
            .collect();
        let end = appenders
            .iter()
            .map(|&(_, r, len)| u64::from(r) * frame_len(len))
            .sum();
        let mut seen = commit_until(&s, end);
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut want: Vec<_> = appenders
            .iter()
            .flat_map(|&(who, r, len)| (0..r).map(move |n| payload(who, n, len as usize)))
            .collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(s.reserved.load(Ordering::Relaxed), end);
        if claims {
            assert_eq!(s.claims().front(), (0, 0), "a claim was left behind");
            assert_eq!(s.want.load(Ordering::Relaxed), 0);
        }
    });
}

/// Two appenders, two records each, through a ring that holds two frames:
/// the second lap reuses bytes the committer zeroed.
#[test]
fn loom_ring_two_appenders_wrap() {
    ring_model(64, &[(1, 2, 8), (2, 2, 8)], true);
}

/// Three appenders, one record each, through a ring that holds two frames.
#[test]
fn loom_ring_three_appenders() {
    ring_model(64, &[(1, 1, 8), (2, 1, 8), (3, 1, 8)], false);
}

/// Two appenders that find the ring full wait with claims (one of them
/// the oldest, whose room the other leaves free); the committer's frees
/// wake them. Every record lands, no claim is left.
#[test]
fn loom_claims_two_appenders() {
    ring_model(64, &[(1, 2, 8), (2, 1, 8)], true);
}

/// A large record (it needs the ring nearly empty) against a small one:
/// its claim keeps the small appender out of its room until it reserved.
#[test]
fn loom_claims_large_and_small() {
    ring_model(128, &[(1, 1, 40), (2, 3, 24)], true);
}

/// Two futures wait on the watermark while the committer advances it past
/// each: both resolve Ok, each registration is woken exactly once.
#[test]
fn loom_watermark_two_waiters() {
    loom::model(|| {
        let mark = Arc::new(Watermark::new(0));
        let waiters: Vec<_> = [8, 16]
            .into_iter()
            .map(|lsn| {
                let mark = mark.clone();
                thread::spawn(move || {
                    let (r, pending, woken) = block_on(Durable::new(lsn - 8, lsn, mark));
                    assert!(r.is_ok());
                    assert_eq!(pending, woken, "a registration not woken once");
                })
            })
            .collect();
        mark.advance(8);
        mark.advance(16);
        waiters.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(mark.durable(), 16);
    });
}

/// A failure races the committer's advances while a future waits: the
/// future resolves (Ok only if its position became durable before the
/// failure), and nothing becomes durable after it.
#[test]
fn loom_watermark_fail_races_advance() {
    loom::model(|| {
        let mark = Arc::new(Watermark::new(0));
        let waiter = {
            let mark = mark.clone();
            thread::spawn(move || block_on(Durable::new(8, 16, mark)).0.is_ok())
        };
        let committer = {
            let mark = mark.clone();
            thread::spawn(move || {
                mark.advance(8);
                mark.advance(16);
            })
        };
        let Failure::Poisoned { offset, .. } = mark.poison_now(Cause::msg("model")) else {
            panic!("not poisoned");
        };
        let ok = waiter.join().unwrap();
        committer.join().unwrap();
        assert_eq!(mark.durable(), offset, "advanced past the failure");
        assert_eq!(ok, offset >= 16);
    });
}
