//! The committer: one thread that turns published frames into durable ones.
//!
//! Owns the segment file being written while the log is open, and decides
//! when the next one is prepared (the making of segments lives in
//! `segments`; the repair done before the first new write, in
//! `recovery::repair`). Loop: find the contiguous run of published frames,
//! write it and fdatasync it (one `RWF_DSYNC` write on io_uring), advance
//! the durable watermark, wake the futures it covers.
//! While a sync runs, new frames pile up and form the next group. A failed
//! write or sync poisons the log from the first byte not known durable; the
//! committer never retries a sync.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::format::{
    FRAME_HEADER, FrameHeader, Kind, SEGMENT_HEADER, SegmentHeader, frame_crc, header_bytes,
    header_word, segment_name,
};
use super::recovery::repair;
use super::segments::{Preparer, prepare_segment};
use super::{Cause, Failure, FlushPolicy, LogConfig, Shared};
use crate::error::{Error, Result};
use crate::io::{Storage, StorageFile};

/// The commit loop's state, owned by the committer thread.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    policy: FlushPolicy,
    spin: Duration,
    preparer: Preparer,
    /// The segment being written: (seq, file).
    current: Option<(u64, Box<dyn StorageFile>)>,
    /// The same segment opened for direct writes, when the log uses them.
    direct: Option<Box<dyn StorageFile>>,
    /// Whether to open segments for direct writes (cleared when the
    /// storage has no such mode).
    use_direct: bool,
    blocks: super::direct::Blocks,
    /// Whether a lone writer's future may spin (see `Watermark::tune_spin`).
    lone_spin: bool,
    /// Sequences asked of the preparer and not yet waited for.
    requested: HashSet<u64>,
    /// Sequences made sure to exist durably ahead of their first group.
    ready: HashSet<u64>,
    /// The id new segments carry.
    tree_id: [u8; 16],
    segment_size: u64,
    /// The current segment's salt, which its commit frames carry.
    salt: u64,
}

impl Committer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        config: &LogConfig,
        segment_size: u64,
        unproven: std::ops::Range<u64>,
    ) -> Result<Self> {
        let preparer = Preparer::start(
            storage.clone(),
            dir.clone(),
            segment_size,
            config.tree_id,
            shared.spares.clone(),
        )
        .map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        let mut c = Self {
            shared,
            storage,
            dir,
            policy: config.flush,
            spin: config.spin,
            preparer,
            current: None,
            direct: None,
            use_direct: config.direct_io,
            blocks: super::direct::Blocks::new(),
            lone_spin: config.lone_waiter_spin,
            requested: HashSet::new(),
            ready: HashSet::new(),
            tree_id: config.tree_id,
            segment_size,
            salt: 0,
        };
        // The segment the log continues in must exist before the first
        // append is acknowledged; prepare it now so open reports failures.
        let seq = c.shared.mark.durable() / c.shared.seg_data;
        prepare_segment(
            &*c.storage,
            &c.dir,
            seq,
            segment_size,
            c.tree_id,
            &c.shared.spares,
            None,
        )
        .map_err(|e| Error::Io {
            path: c.dir.join(segment_name(seq)),
            source: e,
        })?;
        // Before the first new write, what recovery read is made safe to
        // build on (see `recovery::repair`).
        repair::sync_segment_names(&*c.storage, &c.dir)?;
        c.open_segment(seq).map_err(|cause| Error::Io {
            path: cause.file.unwrap_or_else(|| c.dir.join(segment_name(seq))),
            source: match (cause.errno, cause.kind) {
                (Some(n), _) => std::io::Error::from_raw_os_error(n),
                (None, Some(k)) => std::io::Error::new(k, cause.reason),
                (None, None) => std::io::Error::other(cause.reason),
            },
        })?;
        repair::sync_last_group(
            &*c.storage,
            &c.dir,
            c.shared.mark.durable(),
            c.shared.seg_data,
        )?;
        repair::rewrite_unproven(&*c.storage, &c.dir, c.shared.seg_data, unproven)?;
        let (_, f) = c.current.as_ref().expect("segment open");
        repair::erase_clean(&**f).map_err(|reason| Error::Io {
            path: c.dir.join(segment_name(seq)),
            source: std::io::Error::other(reason),
        })?;
        Ok(c)
    }

    /// Makes segment `seq` exist under its final name, durably: waits for
    /// the preparer when it was asked for it, else (or when that failed,
    /// perhaps transiently) prepares it here, once. Either way the
    /// directory is synced after the name appeared: a name the preparer
    /// renamed into place is durable only once its directory sync
    /// succeeded, and nothing may be acknowledged in a file whose name a
    /// power loss could take (invariant 13).
    fn ensure_segment(&mut self, seq: u64) -> std::result::Result<(), Cause> {
        let path = self.dir.join(segment_name(seq));
        let prepared = if self.requested.remove(&seq) {
            self.preparer.wait(seq)
        } else {
            Err(String::new())
        };
        if prepared.is_ok() {
            return Ok(());
        }
        // `prepare_segment` syncs the directory whether it made the file or
        // found it there.
        prepare_segment(
            &*self.storage,
            &self.dir,
            seq,
            self.segment_size,
            self.tree_id,
            &self.shared.spares,
            None,
        )
        .map_err(|e| {
            let mut c = Cause::io(&path, "preparing", &e);
            if let Err(p) = prepared
                && !p.is_empty()
            {
                c.reason = format!("{} (after: {p})", c.reason);
            }
            c
        })
    }

    fn open_segment(&mut self, seq: u64) -> std::result::Result<(), Cause> {
        if self.current.as_ref().is_some_and(|(s, _)| *s == seq) {
            return Ok(());
        }
        let path = self.dir.join(segment_name(seq));
        if !self.ready.contains(&seq) {
            self.ensure_segment(seq)?;
        }
        self.ready.retain(|&r| r > seq);
        let f = self
            .storage
            .open(&path, false)
            .map_err(|e| Cause::io(&path, "opening", &e))?;
        let mut hb = vec![0u8; super::format::SEGMENT_HEADER as usize];
        let n = f
            .read_at(0, &mut hb)
            .map_err(|e| Cause::io(&path, "reading", &e))?;
        let header = SegmentHeader::decode(&path, &hb[..n]).map_err(|e| Cause::of(&e))?;
        self.direct = None;
        self.blocks.forget();
        if self.use_direct {
            match self.storage.open_direct(&path) {
                Ok(Some(d)) => self.direct = Some(d),
                Ok(None) => self.no_direct("the storage has no direct mode".into()),
                // The buffered handle is open: write through it this time.
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not open a WAL segment for direct writes; writing it through the page cache");
                }
            }
        }
        self.salt = header.salt;
        self.current = Some((seq, f));
        Ok(())
    }

    /// Stops writing groups around the page cache, for good.
    fn no_direct(&mut self, why: String) {
        tracing::info!(reason = %why, "WAL writes go through the page cache");
        self.use_direct = false;
        self.direct = None;
        self.blocks.forget();
    }

    /// On a clean stop: records where the log ends in the segment holding
    /// that position, so the next open need not read the rest of it. Where
    /// the log ends exactly at the end of the current segment, the record
    /// goes there too: it still tells recovery that every byte of that
    /// segment was synced, so damage in its last group is reported, not
    /// taken for a torn tail (no later frame would show it).
    fn mark_clean(&mut self, end: u64) {
        let data = self.shared.seg_data;
        let seq = end / data;
        let Some(cur) = self.current.as_ref().map(|(s, _)| *s) else {
            return;
        };
        if cur + 1 == seq && end.is_multiple_of(data) {
            self.write_clean(end);
            let next = self.dir.join(segment_name(seq));
            if !(self.requested.contains(&seq) || self.storage.exists(&next))
                || self.open_segment(seq).is_err()
            {
                return;
            }
        }
        if self.current.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.write_clean(end);
        }
    }

    /// Writes the clean-close record for `end` into the current segment
    /// (and a zero frame header at `end` when it lies there: a reused
    /// segment holds old bytes past the end, and the next open trusts the
    /// record only where a zero header follows it), then syncs.
    fn write_clean(&self, end: u64) {
        let Some((s, f)) = &self.current else {
            return;
        };
        let data = self.shared.seg_data;
        let at = end - s * data;
        let zeroed = if at + FRAME_HEADER <= data {
            f.write_at(SEGMENT_HEADER + at, &[&[0u8; FRAME_HEADER as usize]])
        } else {
            Ok(())
        };
        let r = super::format::clean_record(end);
        if zeroed
            .and_then(|()| f.write_at(super::format::CLEAN_AT as u64, &[&r]))
            .and_then(|()| f.sync_data())
            .is_err()
        {
            tracing::warn!(
                "could not record the clean close; the next open reads the whole segment"
            );
        }
    }

    /// Once the log is half through segment `seq`, has the next one
    /// prepared in the background: a paced fill (about a quarter of the
    /// disk's time) has a quarter segment's worth of the log's writing to
    /// finish in before it is hurried. Not earlier: a log that never
    /// reaches the next segment should not write one, and a segment made
    /// early is made of zeros where a checkpoint about to retire segments
    /// would have given one to reuse.
    fn prepare_ahead(&mut self, synced: u64) {
        let data = self.shared.seg_data;
        if synced % data < data / 2 {
            return;
        }
        let next = synced / data + 1;
        if self.requested.contains(&next) {
            // Three quarters through with the next one still in the making:
            // no more pauses in it.
            if synced % data >= data / 4 * 3 {
                self.preparer.hurry(next);
            }
            return;
        }
        if self.storage.exists(&self.dir.join(segment_name(next))) {
            return;
        }
        self.requested.insert(next);
        self.preparer.request(next);
    }

    /// Whether a frame is published at `scan`. The ring holds at most one
    /// ring length past `synced`: at that distance the slot is `synced`'s
    /// own, so nothing new can be there.
    #[inline]
    fn published(&self, synced: u64, scan: u64) -> bool {
        scan - synced < self.shared.ring.cap() && self.shared.ring.header(scan) != [0; 8]
    }

    /// Moves `scan` over published frames, stopping at an unpublished one;
    /// counts the records passed in `records`.
    fn advance_scan(&self, synced: u64, mut scan: u64, records: &mut u64) -> u64 {
        while self.published(synced, scan) {
            let h = FrameHeader::decode(self.shared.ring.header(scan));
            *records += u64::from(h.is_some_and(|f| f.kind == Kind::Record));
            scan += h.map_or(FRAME_HEADER, |f| f.len());
        }
        scan
    }

    /// Appends a commit frame naming the group start when nothing else is
    /// reserved past `scan` and it fits in the segment; returns the new scan.
    fn commit_marker(&self, group_start: u64, scan: u64) -> u64 {
        let s = &*self.shared;
        let len = FRAME_HEADER + 16;
        let used = scan % s.seg_data;
        if used == 0
            || used + len > s.seg_data
            || scan + len - s.freed.load(Ordering::Acquire) > s.ring.cap()
        {
            return scan;
        }
        if s.reserved
            .compare_exchange(scan, scan + len, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return scan;
        }
        // SAFETY: `[scan, scan + len)` was just reserved by this thread.
        unsafe { self.write_commit_frame(scan, group_start) };
        scan + len
    }

    /// Writes and publishes a commit frame at `at` naming `synced_below`
    /// (every byte before it was synced) and the current segment's salt.
    ///
    /// # Safety
    /// `[at, at + FRAME_HEADER + 16)` must be reserved by this thread and
    /// not yet published.
    unsafe fn write_commit_frame(&self, at: u64, synced_below: u64) {
        let s = &*self.shared;
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&synced_below.to_le_bytes());
        payload[8..].copy_from_slice(&self.salt.to_le_bytes());
        // SAFETY: the caller reserved the range and nobody else writes it.
        unsafe { s.ring.write(at + FRAME_HEADER, &payload) };
        let w = header_word(Kind::Commit, 16);
        s.ring
            .publish(at, header_bytes(w, frame_crc(at, w, &[&payload])));
    }

    /// After a group ending at `end` is durable while more is reserved past
    /// it (so no commit frame could close the group): reserves a commit
    /// frame naming `end` at the log's end, where it rides with the frames
    /// already on their way. Everything before `end` is synced before the
    /// frame is written, so once it is on disk, recovery reports damage
    /// below `end` as damage rather than cutting it as a torn tail. Only in
    /// the segment just written (whose salt the frame carries), where it
    /// fits, with room in the ring.
    fn defer_marker(&self, end: u64) {
        let s = &*self.shared;
        let len = FRAME_HEADER + 16;
        let mut at = s.reserved.load(Ordering::Acquire);
        // A few tries against appenders reserving at the same time; else
        // the next group's marker covers this one too. With nothing
        // reserved past the group, the next group closes itself with one
        // naming `end` (a frame here alone would cost a sync of its own).
        let mut tries = 0;
        loop {
            if at <= end
                || at / s.seg_data != (end - 1) / s.seg_data
                || at % s.seg_data + len > s.seg_data
                || at + len - s.freed.load(Ordering::Acquire) > s.ring.cap()
                || tries == 64
            {
                return;
            }
            match s
                .reserved
                .compare_exchange(at, at + len, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => at = now,
            }
            tries += 1;
        }
        // SAFETY: `[at, at + len)` was just reserved by this thread.
        unsafe { self.write_commit_frame(at, end) };
    }

    fn wants_sync(&self, synced: u64, scan: u64, last: Instant, stopping: bool) -> bool {
        if scan <= synced {
            return false;
        }
        let asked = self.shared.flush_to.load(Ordering::Acquire) > synced;
        match self.policy {
            FlushPolicy::GroupCommit => true,
            FlushPolicy::Interval(d) => asked || stopping || crate::rt::elapsed(last) >= d,
            FlushPolicy::Manual => asked || stopping,
        }
    }

    /// Writes and syncs `[synced, end)`, all in one segment.
    fn commit(&mut self, synced: u64, end: u64) -> std::result::Result<(), Cause> {
        let seq = synced / self.shared.seg_data;
        assert!(
            end - synced <= self.shared.ring.cap() && (end - 1) / self.shared.seg_data == seq,
            "commit range [{synced}, {end}) must lie in one segment and the ring"
        );
        // Always through `open_segment`: at a segment end `current` is still
        // the segment the log just left, which a checkpoint may retire and
        // hand out for reuse: no group may be written to it again. (Only
        // `mark_clean` writes there, a clean-close record into its header
        // block, which is true of it, and which reusing it rewrites.)
        self.open_segment(seq)?;
        let shared = self.shared.clone();
        let off = SEGMENT_HEADER + synced % shared.seg_data;
        // SAFETY: every frame in `[synced, end)` was found published by
        // `advance_scan`/`commit_marker` on this thread, and the range is
        // not handed back (`freed`) before these slices are dropped.
        let bufs = unsafe { shared.ring.slices(synced, end) };
        let (_, file) = self.current.as_ref().expect("segment open");
        let mut done = match &self.direct {
            Some(direct) => self.blocks.write_sync(&**direct, &**file, off, &bufs),
            None => file.write_sync(off, &bufs),
        };
        if self.direct.is_some()
            && done
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // Refused for its alignment or mode (a file system that takes
            // O_DIRECT at open, not at write; or a short direct write whose
            // rest is unaligned): write this group and the rest through the
            // page cache. Rewriting bytes already written, with the same
            // values, is no retry of a failed sync.
            self.no_direct(format!("a direct write was refused: {}", done.unwrap_err()));
            let (_, file) = self.current.as_ref().expect("segment open");
            done = file.write_sync(off, &bufs);
        }
        done.map_err(|e| {
            Cause::io(
                &self.dir.join(segment_name(seq)),
                &format!("writing or syncing at file offset {off} of"),
                &e,
            )
        })
    }

    /// Writes and syncs the group from `synced` to `scan` (its part in
    /// `synced`'s segment), closing it with a commit frame where one fits
    /// (which moves `scan`). Returns its end and when its write began.
    fn write_group(
        &mut self,
        synced: u64,
        scan: &mut u64,
    ) -> std::result::Result<(u64, Instant), Cause> {
        let data = self.shared.seg_data;
        // One segment per write and sync; the rest on the next turn.
        let seg_end = (synced / data + 1) * data;
        // The group's segment, open before a commit frame takes its
        // salt (at a segment start `current` is still the last one).
        let opened = self.open_segment(synced / data);
        if opened.is_ok() && *scan < seg_end {
            *scan = self.commit_marker(synced, *scan);
        }
        let end = (*scan).min(seg_end);
        // A log that fills a segment goes on in the next: that one
        // exists, durably, before the part reaching this one's end
        // is written, so recovery can tell a full segment with no
        // successor from a missing file (invariant 11).
        let next_ready = if end == seg_end {
            let next = seg_end / data;
            let r = self.ensure_segment(next);
            if r.is_ok() {
                self.ready.insert(next);
            }
            r
        } else {
            Ok(())
        };
        let t0 = crate::rt::now();
        opened
            .and(next_ready)
            .and_then(|()| self.commit(synced, end))?;
        Ok((end, t0))
    }

    /// After the group `[synced, end)` is durable: hands its ring bytes
    /// back, counts it, advances the watermark (waking its futures) and
    /// wakes appenders waiting for room. `scan`: how far frames were
    /// scanned; `records`: those scanned and not yet counted.
    fn complete_group(&self, synced: u64, end: u64, scan: u64, records: &mut u64, t0: Instant) {
        let s = &*self.shared;
        // SAFETY: the slices of this range were dropped in `commit`.
        unsafe { s.ring.zero(synced, end) };
        s.freed.store(end, Ordering::Release);
        // Before appenders waiting for ring space are woken and
        // take the space just freed.
        self.defer_marker(end);
        // Counted before the futures wake, so a woken writer's
        // metrics include its own group.
        let took = crate::rt::elapsed(t0);
        s.sync_latency.record(took);
        s.syncs.fetch_add(1, Ordering::Relaxed);
        // (Split at a segment end, the count goes with the last part.)
        let counted = if end == scan {
            std::mem::take(records)
        } else {
            0
        };
        s.records.fetch_add(counted, Ordering::Relaxed);
        if self.lone_spin && end == scan && self.policy == FlushPolicy::GroupCommit {
            s.mark.tune_spin(counted, took);
        }
        s.mark.advance(end);
        s.age_claims();
        s.wake_space();
        #[cfg(feature = "metrics")]
        if let Some(e) = s.export.get() {
            e.group(took, counted, end, s.reserved.load(Ordering::Relaxed));
        }
    }

    /// The commit loop: runs until the log stops (after a last sync and
    /// the clean-close record) or fails.
    pub(crate) fn run(mut self) {
        let s = self.shared.clone();
        let mut synced = s.mark.durable();
        let mut scan = synced;
        let mut last = crate::rt::now();
        // Records scanned and not yet counted as committed.
        let mut records = 0u64;
        loop {
            // Poisoned from outside (`Log::poison`): nothing more is made
            // durable.
            if s.mark.failure().is_some() {
                return;
            }
            scan = self.advance_scan(synced, scan, &mut records);
            let stopping = s.stop.load(Ordering::Acquire);
            if self.wants_sync(synced, scan, last, stopping) {
                let (end, t0) = match self.write_group(synced, &mut scan) {
                    Ok(r) => r,
                    Err(cause) => {
                        tracing::error!(offset = synced, reason = %cause.reason, "WAL write or sync failed; log poisoned");
                        s.mark.fail(Failure::Poisoned {
                            offset: synced,
                            cause,
                        });
                        s.wake_space();
                        return;
                    }
                };
                self.complete_group(synced, end, scan, &mut records, t0);
                synced = end;
                last = crate::rt::now();
                self.prepare_ahead(synced);
                continue;
            }
            if stopping && s.reserved.load(Ordering::Acquire) == synced {
                self.mark_clean(synced);
                return;
            }
            self.idle(synced, scan, last, stopping);
        }
    }

    /// Waits for work: spins briefly (a record often follows right after a
    /// commit wakes its writer), then parks until an appender unparks it.
    fn idle(&self, synced: u64, scan: u64, last: Instant, stopping: bool) {
        let s = &*self.shared;
        let work = || {
            s.mark.failure().is_some()
                || self.published(synced, scan)
                || s.stop.load(Ordering::Acquire) != stopping
                || (scan > synced && s.flush_to.load(Ordering::Acquire) > synced)
        };
        if stopping {
            // Appenders are finishing reserved frames: wait for them.
            crate::rt::yield_now();
            return;
        }
        let t0 = crate::rt::now();
        'spin: loop {
            // Reading the clock costs more than a look for work: look often.
            for _ in 0..64 {
                if work() {
                    return;
                }
                crate::rt::spin();
            }
            if crate::rt::elapsed(t0) >= self.spin {
                break 'spin;
            }
        }
        s.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !work() {
            // An appender waits behind a claim with nothing in flight: no
            // commit may come to see a stale claim, so a tick does.
            let tick = s.tick.load(Ordering::Acquire);
            match self.policy {
                FlushPolicy::Interval(d) if scan > synced => {
                    let mut t = d.saturating_sub(crate::rt::elapsed(last));
                    if tick {
                        t = t.min(super::reserve::CLAIM_TICK);
                    }
                    crate::rt::park_timeout(t);
                }
                _ if tick => crate::rt::park_timeout(super::reserve::CLAIM_TICK),
                _ => crate::rt::park(),
            }
        }
        s.sleeping.store(false, Ordering::Relaxed);
        if s.tick.swap(false, Ordering::AcqRel) {
            s.age_claims();
            s.wake_space();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::super::format::{FRAME_HEADER, FrameHeader, Kind, SEGMENT_HEADER, SegmentHeader};
    use super::super::{Log, LogConfig};
    use crate::io::{SimStorage, Storage};

    /// Every commit frame carries the salt of the segment it lies in, also
    /// the first group's frame of each segment.
    #[test]
    fn commit_frames_carry_their_segments_salt() {
        let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(11));
        let cfg = LogConfig {
            segment_size: 8 << 10,
            buffer_capacity: 8 << 10,
            ..LogConfig::default()
        };
        let dir = Path::new("/sim/salt");
        let log = Log::open(storage.clone(), dir, &cfg, 0, &mut |_, _| Ok(())).unwrap();
        // One record at a time, each awaited: every group closes with a
        // commit frame, the first of each segment included.
        for i in 0..400u32 {
            let rec = [i.to_le_bytes(); 24].concat();
            futures::executor::block_on(log.append(&[&rec]))
                .unwrap()
                .wait()
                .unwrap();
        }
        log.close().unwrap();
        let data = cfg.segment_size - SEGMENT_HEADER;
        let (mut frames, mut segments) = (0, 0);
        for seq in 0.. {
            let path = dir.join(super::segment_name(seq));
            if !storage.exists(&path) {
                break;
            }
            let f = storage.open(&path, false).unwrap();
            let mut b = vec![0u8; cfg.segment_size as usize];
            let n = f.read_at(0, &mut b).unwrap();
            let header = SegmentHeader::decode(&path, &b[..n]).unwrap();
            let mut at = 0u64;
            let mut first = true;
            while at + FRAME_HEADER <= data {
                let o = (SEGMENT_HEADER + at) as usize;
                let raw: [u8; 8] = b[o..o + 8].try_into().unwrap();
                if raw == [0; 8] {
                    break;
                }
                let h = FrameHeader::decode(raw).expect("a known frame kind");
                if h.kind == Kind::Commit {
                    let p = o + FRAME_HEADER as usize;
                    let salt = u64::from_le_bytes(b[p + 8..p + 16].try_into().unwrap());
                    assert_eq!(salt, header.salt, "segment {seq}, offset {at}");
                    frames += 1;
                    if first {
                        segments += 1;
                        first = false;
                    }
                }
                at += h.len();
            }
        }
        assert!(
            segments >= 3 && frames >= 300,
            "{frames} commit frames in {segments} segments"
        );
    }
}
