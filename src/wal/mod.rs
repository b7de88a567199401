//! The write-ahead log: lock-free reserve-then-write appends, a committer
//! thread that group-commits with one fdatasync in flight, and durability
//! futures.
//!
//! Owns the `wal/` directory of a tree (segment files) and the log buffer.
//! Talks to files only through [`Storage`].
//!
//! Positions in the log are LSNs: byte offsets in one logical stream.
//! Segment `s` of data size `d` holds LSNs `[s*d, (s+1)*d)`, after a 4 KiB
//! header. An append reserves `[lsn, lsn + len)` with one compare-and-swap,
//! copies its frame into the ring buffer at that position outside any lock,
//! and publishes the frame header last. The committer writes the contiguous
//! run of published frames to the segment file, syncs it, advances the
//! durable watermark and wakes every future it covers.

mod committer;
mod config;
mod direct;
mod durable;
pub(crate) mod format;
mod recovery;
mod ring;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

pub use config::{FlushPolicy, LogConfig};
pub use durable::Durable;
pub(crate) use durable::{Cause, Failure, Watermark, park_on};
use format::{FRAME_HEADER, Kind, MAX_PAYLOAD, frame_crc, frame_len, header_word};
pub(crate) use recovery::salvage_records;
use ring::Ring;

use crate::error::{Error, Result};
use crate::io::Storage;

/// What recovery calls for each record: its position and payload; an `Err`
/// (what is wrong with it) stops the open with [`Error::Corruption`].
pub type Replay<'a> = dyn FnMut(u64, &[u8]) -> std::result::Result<(), String> + 'a;

/// Room at the end of the log buffer that appenders leave to the committer:
/// one commit frame, so a group that fills the buffer can still be closed
/// by one (and damage to it told from a torn tail after a crash).
const COMMITTER_ROOM: u64 = FRAME_HEADER + 16;

/// State shared by appenders, the committer and durable futures.
pub(crate) struct Shared {
    ring: Ring,
    /// LSNs per segment.
    seg_data: u64,
    /// Next free LSN.
    reserved: AtomicU64,
    /// LSNs below this are written out; their ring bytes may be reused.
    freed: AtomicU64,
    pub(crate) mark: Arc<Watermark>,
    /// A sync is requested up to here (`flush`, close).
    flush_to: AtomicU64,
    stop: AtomicBool,
    /// The committer is (about to be) parked; appenders must unpark it.
    sleeping: AtomicBool,
    committer: OnceLock<Thread>,
    /// Freed segments kept for reuse.
    spares: Arc<committer::Spares>,
    /// Segments below this sequence were handed to `spares` or removed.
    handed_below: AtomicU64,
    /// Appenders waiting for ring space.
    space: Mutex<Vec<Waker>>,
    /// Ring bytes kept free for the appender that has waited longest for
    /// room (twice its frame: the frame and the worst filler before it; 0:
    /// none). Every other appender leaves them free, so that a stream of
    /// small records cannot starve a large one (it may need the ring nearly
    /// empty).
    want: AtomicU64,
    /// Waiting appenders' claims, oldest first (see [`Log::claim_space`]).
    claims: Mutex<Claims>,
    /// The id of the oldest claim, whose owner alone may use `want`.
    front: AtomicU64,
    /// An appender waits behind a claim with nothing in flight: the
    /// committer wakes the space waiters every [`CLAIM_TICK`] meanwhile
    /// (and drops stale claims; see [`Claims::sweep`]).
    tick: AtomicBool,
    /// Largest frame that fits: (min(ring capacity, segment data) - the
    /// committer's room) / 2.
    max_frame: u64,
    /// Groups and records committed (metrics).
    pub(crate) syncs: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) sync_latency: crate::metrics::Histogram,
    /// Where group commits are reported to the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) export: OnceLock<Arc<crate::metrics::Export>>,
}

impl Shared {
    /// How far past `freed` a reservation may end: the ring less the
    /// committer's room, less the room kept for the oldest claim unless
    /// `claim` (the caller's claim id, 0: none) is that claim.
    fn limit(&self, claim: u64) -> u64 {
        let want = self.want.load(Ordering::Acquire);
        let room = self.ring.cap() - COMMITTER_ROOM;
        if want > 0 && claim != self.front.load(Ordering::Acquire) {
            room.saturating_sub(want)
        } else {
            room
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_committer(&self) {
        // Pairs with the committer's fence between setting `sleeping` and
        // looking for work: one of the two sees the other.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed)
            && let Some(t) = self.committer.get()
        {
            t.unpark();
        }
    }

    /// At each wake-up of the space waiters by the committer (after a group
    /// commit, or a tick), stale claims are dropped (see [`Claims::sweep`]).
    fn age_claims(&self) {
        let mut c = self.claims();
        c.sweep();
        self.publish_claims(&c);
    }

    /// Makes the oldest claim the one honoured.
    fn publish_claims(&self, c: &Claims) {
        let (front, want) = c.front();
        self.front.store(front, Ordering::Release);
        self.want.store(want, Ordering::Release);
    }

    fn wake_space(&self) {
        let wakers = std::mem::take(&mut *self.space.lock().unwrap_or_else(|e| e.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Shortens a segment that is no longer needed in 8 MiB steps, keeping its
/// header to the end (a crash midway leaves a valid, shorter segment below
/// the checkpoint, which recovery skips), then removes it.
fn reclaim(storage: &dyn Storage, path: &Path, size: u64) {
    const STEP: u64 = 8 << 20;
    let mut len = size;
    while len > format::SEGMENT_HEADER {
        len = len.saturating_sub(STEP).max(format::SEGMENT_HEADER);
        if let Err(e) = storage.shrink(path, len) {
            tracing::warn!(file = %path.display(), error = %e, "could not shorten a recycled segment");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Err(e) = storage.remove(path) {
        tracing::warn!(file = %path.display(), error = %e, "could not remove a recycled segment");
    }
}

/// A waiting appender's place in line for ring room (see
/// [`Log::claim_space`]); dropping it leaves the line.
pub(crate) struct SpaceClaim<'a> {
    shared: &'a Shared,
    id: u64,
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
const CLAIM_TICK: Duration = Duration::from_millis(1);

impl Claims {
    fn add(&mut self, want: u64) -> u64 {
        self.next_id += 1;
        self.list.insert(self.next_id, (want, Instant::now()));
        self.next_id
    }

    /// Its owner polled it: fresh again (and back in its place if it had
    /// gone stale).
    fn polled(&mut self, id: u64, want: u64) {
        self.list.insert(id, (want, Instant::now()));
    }

    fn remove(&mut self, id: u64) {
        self.list.remove(&id);
    }

    /// Drops the oldest claims while their owners have not polled them
    /// for [`CLAIM_STALE`] (only the oldest is honoured, so only it can
    /// hold anyone back).
    fn sweep(&mut self) {
        let now = Instant::now();
        while let Some(e) = self.list.first_entry() {
            if now.duration_since(e.get().1) < CLAIM_STALE {
                break;
            }
            e.remove();
        }
    }

    /// The oldest claim: its id and the room it asks to be kept free
    /// (0, 0: none).
    fn front(&self) -> (u64, u64) {
        self.list
            .first_key_value()
            .map_or((0, 0), |(&id, &(want, _))| (id, want))
    }
}

/// Why a reservation could not be made now.
#[derive(Debug)]
pub(crate) enum ReserveError {
    /// The ring is full: wait for [`Wal::poll_space`], then try again.
    Full,
    /// It can never be made.
    Fatal(Error),
}

/// A durable, append-only log of records: the write-ahead log of a tree,
/// usable on its own.
///
/// `append` copies a record into the log buffer and returns a [`Durable`]
/// future; a committer thread writes and fdatasyncs the records in groups
/// (one fdatasync in flight) and resolves the futures.
///
/// ```no_run
/// use std::sync::Arc;
/// use ringtree::io::ThreadedStorage;
/// use ringtree::wal::{Log, LogConfig};
///
/// # async fn demo() -> ringtree::Result<()> {
/// let log = Log::open(Arc::new(ThreadedStorage), "/tmp/log".as_ref(), &LogConfig::default(), 0, &mut |_lsn, _rec| Ok(()))?;
/// let durable = log.append(&[b"hello"]).await?;
/// durable.await?; // on disk
/// log.close()?;
/// # Ok(()) }
/// ```
pub struct Log {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    /// Removes recycled segments in the background; joined by `close`.
    reclaimer: Mutex<Option<(std::sync::mpsc::Sender<PathBuf>, JoinHandle<()>)>>,
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

fn header_bytes(word: u32, crc: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&word.to_le_bytes());
    h[4..].copy_from_slice(&crc.to_le_bytes());
    h
}

impl Log {
    /// Opens (or creates) the log in `dir`, replays every record from
    /// position `start` on through `replay` (LSN of the record, payload; an
    /// `Err` stops the open with [`Error::Corruption`] naming the record),
    /// and starts the committer.
    ///
    /// `start` must be a frame boundary the log reached: 0, a record's LSN,
    /// or a position [`end`](Self::end) or [`durable`](Self::durable)
    /// returned (one that is not a multiple of 8 is [`Error::Config`]).
    /// The log's bytes before it are not read; a later position than the
    /// log reached would leave a gap that the next open from an earlier
    /// position reports as corruption.
    ///
    /// A torn tail of the newest segment is cut; an invalid frame that later
    /// synced data proves was durable is [`Error::Corruption`].
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: &LogConfig,
        start: u64,
        replay: &mut Replay<'_>,
    ) -> Result<Self> {
        config.validate()?;
        // Its name (and those of new directories above it) durable before
        // anything in it is acknowledged.
        crate::io::create_dir_durable(&*storage, dir)?;
        let rec = recovery::recover(&*storage, dir, config, start, replay)?;
        let seg_data = rec.segment_size - format::SEGMENT_HEADER;
        let cap = config.buffer_capacity;
        let shared = Arc::new(Shared {
            ring: Ring::new(cap),
            seg_data,
            reserved: AtomicU64::new(rec.end),
            freed: AtomicU64::new(rec.end),
            mark: Arc::new(Watermark::new(rec.end)),
            flush_to: AtomicU64::new(rec.end),
            stop: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            committer: OnceLock::new(),
            spares: Arc::new(committer::Spares::new(config.spare_segments)),
            handed_below: AtomicU64::new(0),
            space: Mutex::new(Vec::new()),
            want: AtomicU64::new(0),
            claims: Mutex::new(Claims::default()),
            front: AtomicU64::new(0),
            tick: AtomicBool::new(false),
            max_frame: ((cap.min(seg_data) - COMMITTER_ROOM) / 2) & !7,
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            sync_latency: crate::metrics::Histogram::new(),
            #[cfg(feature = "metrics")]
            export: OnceLock::new(),
        });
        let committer = committer::Committer::new(
            shared.clone(),
            storage.clone(),
            dir.to_path_buf(),
            config,
            rec.segment_size,
            rec.proven..rec.end,
        )?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ringtree-committer".into())
            .spawn(move || {
                // A panic must not leave futures waiting on a dead thread.
                if let Err(p) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| committer.run()))
                {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "committer panicked; log poisoned");
                    sh.mark
                        .poison_now(Cause::msg(format!("committer panicked: {what}")));
                    sh.wake_space();
                }
            })
            .map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        let _ = shared.committer.set(thread.thread().clone());
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
            storage,
            reclaimer: Mutex::new(None),
        })
    }

    /// The largest record one append takes, in bytes.
    pub fn max_payload(&self) -> u64 {
        // Multiple of 8, so a filler standing in for it fits the length field.
        (self.shared.max_frame - FRAME_HEADER).min(MAX_PAYLOAD & !7)
    }

    /// The end of the log: the position the next record gets.
    pub fn end(&self) -> u64 {
        self.shared.reserved.load(Ordering::Acquire)
    }

    /// Every byte of the log below this position is on stable storage.
    pub fn durable(&self) -> u64 {
        self.shared.mark.durable()
    }

    /// Why the log stopped taking appends, if it did.
    pub fn failure(&self) -> Option<Error> {
        self.shared.mark.failure().map(Failure::to_error)
    }

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
                return Err(ReserveError::Full);
            }
            match s
                .reserved
                .compare_exchange_weak(start, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Reservation {
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
        let s = &*self.shared;
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
        let want = 2 * frame_len(payload);
        let s = &*self.shared;
        let mut c = s.claims();
        let id = c.add(want);
        s.publish_claims(&c);
        SpaceClaim {
            shared: s,
            id,
            want,
        }
    }

    /// Asks for a sync of everything appended so far; the future resolves
    /// when it is durable.
    pub fn flush(&self) -> Durable {
        let s = &*self.shared;
        let end = s.reserved.load(Ordering::Acquire);
        s.flush_to.fetch_max(end, Ordering::AcqRel);
        s.wake_committer();
        Durable::new(end, end, s.mark.clone())
    }

    /// Syncs what was appended, stops the committer and waits for it (a
    /// blocking call). Every future resolves: Ok if durable, else `Err`.
    /// Later appends fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let flushed = self.flush();
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_committer();
        // Held through the join: a concurrent close waits for this one.
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = thread.take()
            && t.join().is_err()
        {
            self.shared
                .mark
                .poison_now(Cause::msg("committer thread panicked"));
        }
        // Whatever the committer left undone is not durable.
        self.shared.mark.fail(Failure::Closed);
        drop(thread);
        let reclaimer = self
            .reclaimer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((tx, t)) = reclaimer {
            drop(tx);
            let _ = t.join();
        }
        self.shared.wake_space();
        flushed.wait()
    }

    /// Stops the log as a failed write would: pending and later futures fail.
    pub(crate) fn poison(&self, cause: Cause) {
        self.shared.mark.poison_now(cause);
        self.shared.wake_space();
        // The committer stops at the failure: no group past it is made.
        self.shared.wake_committer();
    }

    /// Retires every segment wholly below `position`, which must be durable
    /// and covered by a durable checkpoint; returns how many. Up to
    /// [`LogConfig::spare_segments`] are kept as spares, from which
    /// later segments are made (no zeros to write); the rest are removed on
    /// the log's reclaimer thread (joined by `close`), each file shortened
    /// in steps first: unlinking a whole segment at once frees its blocks in
    /// one go, which stalled the log's fdatasyncs for ~15 ms. `failpoint`
    /// `wal-recycle` removes the first one here and fails (crash tests).
    pub(crate) fn remove_segments_below(
        &self,
        position: u64,
        failpoint: Option<&'static str>,
    ) -> Result<usize> {
        assert!(
            position <= self.durable(),
            "only durable log may be recycled"
        );
        let io = |e| Error::Io {
            path: self.dir.clone(),
            source: e,
        };
        let s = &*self.shared;
        // Each segment is handed on once per open (later checkpoints only
        // see newer ones); what a previous open left is found again here.
        let from = s.handed_below.load(Ordering::Acquire);
        let below = position / s.seg_data;
        let mut doomed = Vec::new();
        for name in self.storage.list(&self.dir).map_err(io)? {
            let Some(seq) = format::parse_segment_name(&name) else {
                continue;
            };
            if seq >= from && seq < below {
                doomed.push((seq, self.dir.join(&name)));
            }
        }
        if failpoint == Some("wal-recycle") {
            if let Some((_, first)) = doomed.first() {
                self.storage.remove(first).map_err(io)?;
            }
            return Err(io(std::io::Error::other("failpoint wal-recycle")));
        }
        s.handed_below.fetch_max(below, Ordering::AcqRel);
        let n = doomed.len();
        // The newest are kept: the oldest of a long backlog go first.
        doomed.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let mut removed = Vec::new();
        for (_, path) in doomed {
            removed.extend(s.spares.offer(path));
        }
        if !removed.is_empty() {
            let mut r = self.reclaimer.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
                let storage = self.storage.clone();
                let size = s.seg_data + format::SEGMENT_HEADER;
                let t = std::thread::Builder::new()
                    .name("ringtree-reclaim".into())
                    .spawn(move || {
                        for path in rx {
                            reclaim(&*storage, &path, size);
                        }
                    })
                    .map_err(io)?;
                *r = Some((tx, t));
            }
            for p in removed {
                let _ = r.as_ref().expect("started").0.send(p);
            }
        }
        Ok(n)
    }

    /// Segments made from a spare (a segment a checkpoint freed) since
    /// open, and segments made by writing zeros.
    pub(crate) fn segments_made(&self) -> (u64, u64) {
        (self.shared.spares.recycled(), self.shared.spares.zeroed())
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records made durable so far.
    pub fn records_committed(&self) -> u64 {
        self.shared.records.load(Ordering::Relaxed)
    }

    /// Latency of the group commits so far.
    pub fn fsync_latency(&self) -> crate::LatencySummary {
        self.shared.sync_latency.summary()
    }

    /// Group commits (write + fdatasync) completed so far.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Reports group commits to the `metrics` facade from now on.
    #[cfg(feature = "metrics")]
    pub(crate) fn export_to(&self, export: Arc<crate::metrics::Export>) {
        let _ = self.shared.export.set(export);
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimStorage;

    /// Poisoned from outside (a checkpoint found damaged data): a record
    /// appended before it and not yet synced never resolves Ok, even when
    /// a flush asks for it afterwards, and its future agrees with
    /// `is_durable`.
    #[test]
    fn poison_stops_the_committer() {
        let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(3));
        let cfg = LogConfig {
            segment_size: 64 << 10,
            buffer_capacity: 64 << 10,
            flush: FlushPolicy::Manual,
            ..LogConfig::default()
        };
        let dir = Path::new("/sim/poison");
        let log = Log::open(storage, dir, &cfg, 0, &mut |_, _| Ok(())).unwrap();
        let a = futures::executor::block_on(log.append(&[b"first record"])).unwrap();
        log.flush().wait().unwrap();
        a.wait().unwrap();
        let b = futures::executor::block_on(log.append(&[b"second record"])).unwrap();
        log.poison(Cause::msg("damaged checkpoint"));
        let flushed = log.flush();
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(flushed.wait(), Err(Error::Poisoned { .. })));
        assert!(matches!(b.wait(), Err(Error::Poisoned { .. })));
        assert!(!b.is_durable());
        assert!(a.wait().is_ok() && a.is_durable());
        assert!(matches!(
            futures::executor::block_on(log.append(&[b"third"])),
            Err(Error::Poisoned { .. })
        ));
        assert!(log.close().is_err());
    }
}
