//! Reservation and back-pressure: how an appender gets its byte range of
//! the log, copies its frame into the ring and publishes it, and how it
//! waits in line (a claim) when the ring is full. Kept apart from the
//! committer, which only consumes what this side publishes.

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::format::{FRAME_HEADER, Kind, frame_crc, frame_len, header_bytes, header_word};
use super::{Durable, Log, Shared};
use crate::error::{Error, Result};
use crate::sync::Ordering;

/// Room at the end of the log buffer that appenders leave to the committer:
/// one commit frame, so a group that fills the buffer can still be closed
/// by one (and damage to it told from a torn tail after a crash).
pub(super) const COMMITTER_ROOM: u64 = FRAME_HEADER + 16;

impl Shared {
    /// How far past `freed` a reservation may end: the ring less the
    /// committer's room, less the room kept for the oldest claim unless
    /// `claim` (the caller's claim id, 0: none) is that claim.
    pub(super) fn limit(&self, claim: u64) -> u64 {
        let want = self.want.load(Ordering::Acquire);
        let room = self.ring.cap() - COMMITTER_ROOM;
        if want > 0 && claim != self.front.load(Ordering::Acquire) {
            room.saturating_sub(want)
        } else {
            room
        }
    }

    pub(super) fn claims(&self) -> crate::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At each wake-up of the space waiters by the committer (after a group
    /// commit, or a tick), stale claims are dropped (see [`Claims::sweep`]).
    pub(super) fn age_claims(&self) {
        let mut c = self.claims();
        c.sweep();
        self.publish_claims(&c);
    }

    /// Makes the oldest claim the one honoured.
    pub(super) fn publish_claims(&self, c: &Claims) {
        let (front, want) = c.front();
        self.front.store(front, Ordering::Release);
        self.want.store(want, Ordering::Release);
    }

    pub(super) fn wake_space(&self) {
        let wakers = std::mem::take(&mut *self.space.lock().unwrap_or_else(|e| e.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A waiting appender's place in line for ring room (see
/// [`Log::claim_space`]); dropping it leaves the line.
pub(crate) struct SpaceClaim<'a> {
    shared: &'a Shared,
    pub(super) id: u64,
    /// Ring bytes claimed: twice the frame.
    want: u64,
}

impl Drop for SpaceClaim<'_> {
    fn drop(&mut self) {
        let s = self.shared;
        let mut c = s.claims();
        c.remove(self.id);
        let was = s.front.load(Ordering::Acquire);
        s.publish_claims(&c);
        let now = c.front().0;
        drop(c);
        if was != now {
            // Appenders that left the room free may now take it.
            s.wake_space();
        }
    }
}

/// The claims of appenders waiting for ring space, by age.
#[derive(Default)]
pub(crate) struct Claims {
    next_id: u64,
    /// id (older first) -> (bytes claimed, when its owner last polled it).
    list: std::collections::BTreeMap<u64, (u64, Instant)>,
}

/// How long the oldest claim is honoured without its owner polling it (a
/// future kept but no longer polled must not hold the others back for
/// good; its owner, polled again, gets its place back).
const CLAIM_STALE: Duration = Duration::from_millis(100);

/// How often space waiters are woken while one waits behind a claim and
/// nothing is in flight (so that a stale claim is seen to be stale).
pub(super) const CLAIM_TICK: Duration = Duration::from_millis(1);

impl Claims {
    fn add(&mut self, want: u64) -> u64 {
        self.next_id += 1;
        self.list.insert(self.next_id, (want, crate::rt::now()));
        self.next_id
    }

    /// Its owner polled it: fresh again (and back in its place if it had
    /// gone stale).
    fn polled(&mut self, id: u64, want: u64) {
        self.list.insert(id, (want, crate::rt::now()));
    }

    fn remove(&mut self, id: u64) {
        self.list.remove(&id);
    }

    /// Drops the oldest claims while their owners have not polled them
    /// for [`CLAIM_STALE`] (only the oldest is honoured, so only it can
    /// hold anyone back).
    fn sweep(&mut self) {
        let now = crate::rt::now();
        while let Some(e) = self.list.first_entry() {
            if now.duration_since(e.get().1) < CLAIM_STALE {
                break;
            }
            e.remove();
        }
    }

    /// The oldest claim: its id and the room it asks to be kept free
    /// (0, 0: none).
    pub(super) fn front(&self) -> (u64, u64) {
        self.list
            .first_key_value()
            .map_or((0, 0), |(&id, &(want, _))| (id, want))
    }
}

/// Why a reservation could not be made now.
#[derive(Debug)]
pub(crate) enum ReserveError {
    /// The ring is full: wait for [`Log::poll_space`], then try again.
    Full,
    /// It can never be made.
    Fatal(Error),
}

/// A reserved range of the log; [`write`](Reservation::write) fills it.
/// Dropped unwritten, it becomes filler, so the log never stalls on it.
pub(crate) struct Reservation<'a> {
    shared: &'a Shared,
    lsn: u64,
    payload: u64,
    /// Filler from the end of the previous segment, published with the frame.
    pad: Option<(u64, u64)>,
    written: bool,
}

impl Reservation<'_> {
    /// The log position just past the reserved frame: the record is
    /// durable once the log's durable position reaches it.
    pub(crate) fn end(&self) -> u64 {
        self.lsn + frame_len(self.payload)
    }

    /// Copies the payload (the concatenation of `parts`, exactly the reserved
    /// length) into the log buffer, publishes the frame, and returns the
    /// future of its durability.
    pub(crate) fn write(mut self, parts: &[&[u8]]) -> Durable {
        debug_assert_eq!(
            parts.iter().map(|p| p.len() as u64).sum::<u64>(),
            self.payload
        );
        let mut at = self.lsn + FRAME_HEADER;
        for p in parts {
            // SAFETY: `[lsn, lsn + frame_len)` is reserved by this
            // reservation and not yet published: only this thread touches it.
            unsafe { self.shared.ring.write(at, p) };
            at += p.len() as u64;
        }
        let word = header_word(Kind::Record, self.payload);
        self.publish(word, frame_crc(self.lsn, word, parts));
        self.written = true;
        Durable::new(
            self.lsn,
            self.lsn + frame_len(self.payload),
            self.shared.mark.clone(),
        )
    }

    fn publish(&mut self, word: u32, crc: u32) {
        // In a simulation, others may run between the copy and the publish.
        crate::rt::point();
        let ring = &self.shared.ring;
        if let Some((at, len)) = self.pad.take() {
            let w = header_word(Kind::Pad, len - FRAME_HEADER);
            ring.publish(at, header_bytes(w, frame_crc(at, w, &[])));
        }
        ring.publish(self.lsn, header_bytes(word, crc));
        self.shared.wake_committer();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.written {
            let w = header_word(Kind::Pad, frame_len(self.payload) - FRAME_HEADER);
            self.publish(w, frame_crc(self.lsn, w, &[]));
        }
    }
}

impl Log {
    /// Reserves room for a record of `payload` bytes. One compare-and-swap;
    /// no lock.
    /// `claim`: the caller's, once it found the ring full and waits.
    pub(crate) fn try_reserve_as(
        &self,
        payload: u64,
        claim: Option<&SpaceClaim<'_>>,
    ) -> std::result::Result<Reservation<'_>, ReserveError> {
        let claim = claim.map_or(0, |c| c.id);
        let s = &*self.shared;
        if let Some(f) = s.mark.failure() {
            return Err(ReserveError::Fatal(f.to_error()));
        }
        if s.stop.load(Ordering::Acquire) {
            return Err(ReserveError::Fatal(Error::Closed));
        }
        if payload > self.max_payload() {
            return Err(ReserveError::Fatal(Error::Config(format!(
                "record of {payload} bytes exceeds the largest the log takes ({} bytes)",
                self.max_payload()
            ))));
        }
        s.try_reserve(payload, claim).ok_or(ReserveError::Full)
    }

    /// Ready once a reservation of `payload` bytes may fit (or the log
    /// failed); registers `cx` to be woken when space frees up.
    pub(crate) fn poll_space(
        &self,
        payload: u64,
        claim: &SpaceClaim<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        self.shared.poll_space(payload, claim, cx)
    }

    /// Appends one record (the concatenation of `parts`), waiting for room
    /// if the log buffer is full. Returns once the record is in the buffer;
    /// the returned future resolves when it is on stable storage.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ringtree::{Log, LogConfig, io::SimStorage};
    ///
    /// let disk = SimStorage::new(1);
    /// let dir = std::path::Path::new("/log");
    /// let cfg = LogConfig::default();
    /// let log = Log::open(Arc::new(disk.clone()), dir, &cfg, 0, &mut |_, _| Ok(()))?;
    /// futures::executor::block_on(async {
    ///     log.append(&[b"hello ", b"world"]).await?.await?; // durable
    ///     Ok::<(), ringtree::Error>(())
    /// })?;
    /// log.close()?;
    /// // Reopening replays it.
    /// let mut seen = Vec::new();
    /// let log = Log::open(Arc::new(disk), dir, &cfg, 0, &mut |_, rec| Ok(seen.push(rec.to_vec())))?;
    /// assert_eq!(seen, [b"hello world".to_vec()]);
    /// # log.close()?;
    /// # Ok::<(), ringtree::Error>(())
    /// ```
    pub async fn append(&self, parts: &[&[u8]]) -> Result<Durable> {
        let payload = parts.iter().map(|p| p.len() as u64).sum();
        let mut claim = None;
        loop {
            match self.try_reserve_as(payload, claim.as_ref()) {
                Ok(r) => return Ok(r.write(parts)),
                Err(ReserveError::Fatal(e)) => return Err(e),
                Err(ReserveError::Full) => {
                    let c = claim.get_or_insert_with(|| self.claim_space(payload));
                    std::future::poll_fn(|cx| self.poll_space(payload, c, cx)).await
                }
            }
        }
    }

    /// Puts an appender of `payload` bytes that found the ring full in line
    /// for room: once its claim is the oldest, every other appender keeps
    /// room for it free. A waiting appender holds the claim until it
    /// reserved, failed or was dropped (and passes it to `poll_space` and
    /// `try_reserve_as`).
    pub(crate) fn claim_space(&self, payload: u64) -> SpaceClaim<'_> {
        self.shared.claim_space(payload)
    }
}

impl Shared {
    /// Reserves the frame of a record of `payload` bytes (and the filler
    /// before it at a segment end) with one compare-and-swap, within
    /// [`limit`](Self::limit) of `freed`; `None`: the ring is full.
    /// `claim`: the caller's claim id (0: none).
    pub(crate) fn try_reserve(&self, payload: u64, claim: u64) -> Option<Reservation<'_>> {
        let s = self;
        let len = frame_len(payload);
        let mut start = s.reserved.load(Ordering::Relaxed);
        loop {
            let used = start % s.seg_data;
            let (lsn, pad) = if used + len > s.seg_data {
                let rest = s.seg_data - used;
                (start + rest, Some((start, rest)))
            } else {
                (start, None)
            };
            let end = lsn + len;
            // `start` may be stale (then the CAS fails): saturate.
            if end.saturating_sub(s.freed.load(Ordering::Acquire)) > s.limit(claim) {
                return None;
            }
            match s
                .reserved
                .compare_exchange_weak(start, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Reservation {
                        shared: s,
                        lsn,
                        payload,
                        pad,
                        written: false,
                    });
                }
                Err(now) => start = now,
            }
        }
    }

    /// Ready once a reservation of `payload` bytes may fit (or the log
    /// failed); registers `cx` to be woken when space frees up.
    pub(crate) fn poll_space(
        &self,
        payload: u64,
        claim: &SpaceClaim<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let s = self;
        {
            let mut c = s.claims();
            c.polled(claim.id, claim.want);
            s.publish_claims(&c);
        }
        // Room for the frame and the worst filler before it (shorter than
        // the frame) at the end of a segment.
        let len = frame_len(payload);
        let fits = || {
            let end = s.reserved.load(Ordering::Acquire) + 2 * len;
            end.saturating_sub(s.freed.load(Ordering::Acquire)) <= s.limit(claim.id)
                || s.mark.failure().is_some()
        };
        if fits() {
            return Poll::Ready(());
        }
        let mut w = s.space.lock().unwrap_or_else(|e| e.into_inner());
        if fits() {
            return Poll::Ready(());
        }
        w.push(cx.waker().clone());
        drop(w);
        // The committer may be idle in Manual mode with a full ring: ask it
        // to write (not necessarily sync) so space frees up.
        let reserved = s.reserved.load(Ordering::Acquire);
        s.flush_to.fetch_max(reserved, Ordering::AcqRel);
        if reserved == s.freed.load(Ordering::Acquire) {
            // Held back by a claim alone: no commit will wake this waiter.
            s.tick.store(true, Ordering::Release);
        }
        s.wake_committer();
        Poll::Pending
    }

    /// Puts an appender of `payload` bytes that found the ring full in line
    /// for room: once its claim is the oldest, every other appender keeps
    /// room for it free. A waiting appender holds the claim until it
    /// reserved, failed or was dropped (and passes it to `poll_space` and
    /// `try_reserve_as`).
    pub(crate) fn claim_space(&self, payload: u64) -> SpaceClaim<'_> {
        let want = 2 * frame_len(payload);
        let s = self;
        let mut c = s.claims();
        let id = c.add(want);
        s.publish_claims(&c);
        SpaceClaim {
            shared: s,
            id,
            want,
        }
    }
}
