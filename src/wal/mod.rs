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
//!
//! The stages, one file (or folder) each:
//! - `config`: [`LogConfig`] and [`FlushPolicy`].
//! - `reserve`: reservation of a byte range, publishing a frame, and
//!   back-pressure (claims) when the ring is full.
//! - `ring`: the log buffer, indexed by LSN.
//! - `committer`: the commit loop (group, write, sync, wake).
//! - `direct`: the aligned staging buffer for writes around the page cache.
//! - `segments`: making segment files (zero-filled, or reused spares) and
//!   removing the ones a checkpoint retired.
//! - `durable`: the durable watermark and the [`Durable`] futures.
//! - `recovery`: the scan at open (`scan`), the repair before the log
//!   goes on (`repair`), and the read-only scan a salvage uses.
//! - `format`: every on-disk format of the log: segment headers and names,
//!   frames, the clean-close and cut records.
//!
//! This file holds [`Log`], the public type, and the state its stages
//! share.

mod committer;
mod config;
mod direct;
mod durable;
pub(crate) mod format;
#[cfg(all(loom, test))]
mod loom_models;
mod recovery;
mod reserve;
mod ring;
mod segments;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;

pub use config::{FlushPolicy, LogConfig};
pub use durable::Durable;
pub(crate) use durable::{Cause, Failure, Watermark, park_on, reset_thread};
pub(crate) use format::frame_len;
use format::{FRAME_HEADER, MAX_PAYLOAD};
pub(crate) use recovery::salvage_records;
use reserve::{COMMITTER_ROOM, Claims};
pub(crate) use reserve::{ReserveError, SpaceClaim};
use ring::Ring;

use crate::error::{Error, Result};
use crate::io::Storage;

/// What recovery calls for each record: its position and payload; an `Err`
/// (what is wrong with it) stops the open with [`Error::Corruption`].
pub type Replay<'a> = dyn FnMut(u64, &[u8]) -> std::result::Result<(), String> + 'a;

/// State shared by appenders, the committer and durable futures.
pub(crate) struct Shared {
    ring: Ring,
    /// LSNs per segment.
    seg_data: u64,
    /// Next free LSN.
    reserved: crate::sync::AtomicU64,
    /// LSNs below this are written out; their ring bytes may be reused.
    freed: crate::sync::AtomicU64,
    pub(crate) mark: Arc<Watermark>,
    /// A sync is requested up to here (`flush`, close).
    flush_to: AtomicU64,
    stop: AtomicBool,
    /// The committer is (about to be) parked; appenders must unpark it.
    sleeping: AtomicBool,
    committer: OnceLock<crate::rt::Handle>,
    /// Freed segments kept for reuse.
    spares: Arc<segments::Spares>,
    /// Segments below this sequence were handed to `spares` or removed.
    handed_below: AtomicU64,
    /// Appenders waiting for ring space.
    space: crate::sync::Mutex<Vec<Waker>>,
    /// Ring bytes kept free for the appender that has waited longest for
    /// room (twice its frame: the frame and the worst filler before it; 0:
    /// none). Every other appender leaves them free, so that a stream of
    /// small records cannot starve a large one (it may need the ring nearly
    /// empty).
    want: crate::sync::AtomicU64,
    /// Waiting appenders' claims, oldest first (see [`Log::claim_space`]).
    claims: crate::sync::Mutex<Claims>,
    /// The id of the oldest claim, whose owner alone may use `want`.
    front: crate::sync::AtomicU64,
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
    /// The state of a log that goes on at `end`, with a ring of `cap` bytes
    /// and `seg_data` LSNs per segment.
    fn new(cap: u64, seg_data: u64, end: u64, spare_segments: usize) -> Self {
        Self {
            ring: Ring::new(cap),
            seg_data,
            reserved: crate::sync::AtomicU64::new(end),
            freed: crate::sync::AtomicU64::new(end),
            mark: Arc::new(Watermark::new(end)),
            flush_to: AtomicU64::new(end),
            stop: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            committer: OnceLock::new(),
            spares: Arc::new(segments::Spares::new(spare_segments)),
            handed_below: AtomicU64::new(0),
            space: crate::sync::Mutex::new(Vec::new()),
            want: crate::sync::AtomicU64::new(0),
            claims: crate::sync::Mutex::new(Claims::default()),
            front: crate::sync::AtomicU64::new(0),
            tick: AtomicBool::new(false),
            max_frame: ((cap.min(seg_data) - COMMITTER_ROOM) / 2) & !7,
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            sync_latency: crate::metrics::Histogram::new(),
            #[cfg(feature = "metrics")]
            export: OnceLock::new(),
        }
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
    thread: Mutex<Option<crate::rt::Joiner>>,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    /// Removes recycled segments in the background; joined by `close`.
    reclaimer: Mutex<Option<(std::sync::mpsc::Sender<PathBuf>, crate::rt::Joiner)>>,
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
        let shared = Arc::new(Shared::new(cap, seg_data, rec.end, config.spare_segments));
        let committer = committer::Committer::new(
            shared.clone(),
            storage.clone(),
            dir.to_path_buf(),
            config,
            rec.segment_size,
            rec.proven..rec.end,
        )?;
        let thread = spawn_committer(committer, shared.clone(), dir)?;
        let _ = shared.committer.set(thread.handle().clone());
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
        let mut thread = crate::rt::lock(&self.thread);
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
        let reclaimer = crate::rt::lock(&self.reclaimer).take();
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

/// Starts the committer thread. A panic in it poisons the log, so no
/// future waits on a dead thread.
fn spawn_committer(
    committer: committer::Committer,
    sh: Arc<Shared>,
    dir: &Path,
) -> Result<crate::rt::Joiner> {
    crate::rt::spawn("ringtree-committer", move || {
        // A panic must not leave futures waiting on a dead thread.
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| committer.run())) {
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
    })
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
