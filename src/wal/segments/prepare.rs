//! Making segment files: each is built under a temporary name, from a
//! spare when there is one, else by writing zeros to its full size, then
//! renamed into place and the directory synced. A helper thread does it
//! ahead of need, paced, so the committer's fdatasyncs never allocate or
//! change metadata.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Spares;
use crate::io::{Storage, StorageFile};
use crate::wal::format::{SegmentHeader, segment_name};

/// Creates segment files ahead of need on its own thread (see
/// [`prepare_segment`]). So the committer's fdatasyncs never allocate or
/// change metadata.
pub(crate) struct Preparer {
    requests: Option<mpsc::Sender<u64>>,
    state: Arc<(Mutex<PrepState>, Condvar)>,
    /// The highest segment the log is about to need (or waits for): those
    /// up to it are written without pauses.
    urgent: Arc<AtomicU64>,
    thread: Option<crate::rt::Joiner>,
}

impl Drop for Preparer {
    fn drop(&mut self) {
        // A segment being filled is abandoned (its fill removes its
        // temporary file), a pause cut short, and requests still queued
        // are skipped; closing the channel ends the thread.
        self.urgent.store(STOP, Ordering::Relaxed);
        self.requests = None;
        if let Some(t) = self.thread.take() {
            t.handle().unpark();
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct PrepState {
    ready: HashSet<u64>,
    failed: std::collections::HashMap<u64, String>,
}

/// Makes segment `seq` exist, complete, under its final name: built under
/// a temporary name (which recovery removes), from a spare when there is
/// one (renamed, the rename made durable, new header written and synced),
/// else as a new file (header, then written zeros to the full size,
/// synced); then renamed into place and the directory synced. With `pace`
/// (the preparer thread's), zeros are written with pauses unless `pace`
/// has reached `seq`.
pub(crate) fn prepare_segment(
    storage: &dyn Storage,
    dir: &Path,
    seq: u64,
    size: u64,
    tree_id: [u8; 16],
    spares: &Spares,
    pace: Option<&AtomicU64>,
) -> std::io::Result<()> {
    let path = dir.join(segment_name(seq));
    if storage.exists(&path) {
        // Renamed into place by someone whose directory sync may have
        // failed, or not have run: the name is durable only after this.
        return storage.sync_dir(dir);
    }
    if pace.is_some_and(|p| p.load(Ordering::Relaxed) == STOP) {
        return Err(stopped());
    }
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    if storage.exists(&tmp) {
        storage.remove(&tmp)?;
    }
    let made = SegmentHeader {
        seq,
        size,
        salt: crate::wal::format::random_salt(),
        tree_id,
        zeroed: false,
    };
    let header = made.encode();
    while let Some(spare) = spares.take() {
        match recycle(storage, dir, &spare, &tmp, size, &header) {
            Ok(()) => {
                storage.rename(&tmp, &path)?;
                storage.sync_dir(dir)?;
                spares.recycled.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Gone already (removed, or taken twice): try another.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !storage.exists(&tmp) => {}
            Err(e) => {
                tracing::warn!(spare = %spare.display(), error = %e, "could not reuse a WAL segment; writing a new one");
                if storage.exists(&tmp) {
                    storage.remove(&tmp)?;
                }
                break;
            }
        }
    }
    let f = storage.open(&tmp, true)?;
    let header = SegmentHeader {
        zeroed: true,
        ..made
    }
    .encode();
    f.write_at(0, &[&header])?;
    if let Err(e) = write_zeros(storage, &tmp, &*f, size, pace.map(|p| (p, seq))) {
        drop(f);
        // Removed now rather than by the next open, which would wait for
        // the removal of a large file.
        if e.kind() == std::io::ErrorKind::Interrupted {
            let _ = storage.remove(&tmp);
        }
        return Err(e);
    }
    drop(f);
    storage.rename(&tmp, &path)?;
    storage.sync_dir(dir)?;
    spares.zeroed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Zeros written per step when filling a new segment with pauses (small,
/// so the log's own writes queue behind little) and without (the open, or
/// a log about to need the segment).
const ZERO_STEP: usize = 64 << 10;
const ZERO_STEP_HURRIED: usize = 1 << 20;

/// The preparer's urgent mark when the log closes: a fill in progress
/// stops.
const STOP: u64 = u64::MAX;

/// The longest pause between two paced steps (a step that stalled long
/// does not make the fill stall three times as long).
const MAX_PAUSE: Duration = Duration::from_millis(5);

fn stopped() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Interrupted, "the log closed")
}

/// Fills `f` (at `path`) with written zeros from its end to `size`, then
/// syncs it. Direct writes where the storage has them (no page-cache
/// copy, no writeback burst), else buffered ones synced a step at a time.
/// With `pace` (the preparer's), each step of [`ZERO_STEP`] is followed by
/// a pause three times as long as the step, so the log's own writes and
/// fdatasyncs mostly find the disk idle; pauses end (and steps grow to
/// [`ZERO_STEP_HURRIED`]) once the urgent mark reaches the segment, and
/// the fill stops (`Interrupted`) when it is [`STOP`].
fn write_zeros(
    storage: &dyn Storage,
    path: &Path,
    f: &dyn StorageFile,
    size: u64,
    pace: Option<(&AtomicU64, u64)>,
) -> std::io::Result<()> {
    let align = crate::io::DIRECT_ALIGN;
    let mut at = f.len()?;
    let mut direct = if at.is_multiple_of(align as u64) && size.is_multiple_of(align as u64) {
        storage.open_direct(path)?
    } else {
        None
    };
    let mem = vec![0u8; ZERO_STEP_HURRIED + align];
    let start = mem.as_ptr().align_offset(align).min(align);
    let zeros = &mem[start..start + ZERO_STEP_HURRIED];
    let mark = || pace.map(|(urgent, seq)| (urgent.load(Ordering::Relaxed), seq));
    while at < size {
        let t = crate::rt::now();
        if mark().is_some_and(|(u, _)| u == STOP) {
            return Err(stopped());
        }
        let pausing = mark().is_some_and(|(u, seq)| u < seq);
        match &direct {
            Some(d) => {
                let step = if pausing {
                    ZERO_STEP
                } else {
                    ZERO_STEP_HURRIED
                };
                let n = (size - at).min(step as u64) as usize;
                match d.write_at(at, &[&zeros[..n]]) {
                    Ok(()) => at += n as u64,
                    // Refused at write time (some file systems do):
                    // buffered from here on.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        tracing::warn!(file = %path.display(), error = %e, "direct writes refused; filling the WAL segment through the page cache");
                        direct = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                // Buffered: written and synced a MiB at a time (each sync
                // also commits the file's growth).
                let n = (size - at).min(ZERO_STEP_HURRIED as u64) as usize;
                f.write_at(at, &[&zeros[..n]])?;
                f.sync_data()?;
                at += n as u64;
            }
        }
        if pausing && at < size {
            // Cut short by a hurry or a stop (the preparer is unparked).
            let until = crate::rt::now() + (crate::rt::elapsed(t) * 3).min(MAX_PAUSE);
            while let Some(left) = until.checked_duration_since(crate::rt::now())
                && !left.is_zero()
                && mark().is_some_and(|(u, seq)| u < seq)
            {
                crate::rt::park_timeout(left);
            }
        }
    }
    f.sync_data()
}

/// Turns the spare segment file `spare` into `tmp` with `header`.
fn recycle(
    storage: &dyn Storage,
    dir: &Path,
    spare: &Path,
    tmp: &Path,
    size: u64,
    header: &[u8],
) -> std::io::Result<()> {
    storage.rename(spare, tmp)?;
    // The old name must be gone for good before the header names another
    // segment: a file whose name and header disagree is corruption.
    storage.sync_dir(dir)?;
    let f = storage.open(tmp, false)?;
    let len = f.len()?;
    if len != size {
        return Err(std::io::Error::other(format!(
            "spare segment is {len} bytes, segments are {size}"
        )));
    }
    f.write_at(0, &[header])?;
    f.sync_data()
}

impl Preparer {
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        size: u64,
        tree_id: [u8; 16],
        spares: Arc<Spares>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<u64>();
        let state: Arc<(Mutex<PrepState>, Condvar)> = Arc::default();
        let st = state.clone();
        let urgent = Arc::new(AtomicU64::new(0));
        let urg = urgent.clone();
        let thread = crate::rt::spawn("ringtree-segments", move || {
            while let Some(seq) = crate::rt::recv(&rx) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    prepare_segment(&*storage, &dir, seq, size, tree_id, &spares, Some(&urg))
                }));
                let (m, cv) = &*st;
                let mut s = crate::rt::lock(m);
                match r {
                    Ok(Ok(())) => {
                        s.ready.insert(seq);
                    }
                    Ok(Err(e)) => {
                        s.failed
                            .insert(seq, format!("preparing WAL segment {seq}: {e}"));
                    }
                    Err(_) => {
                        s.failed
                            .insert(seq, format!("preparing WAL segment {seq}: panicked"));
                    }
                }
                cv.notify_all();
            }
        })?;
        Ok(Self {
            requests: Some(tx),
            state,
            urgent,
            thread: Some(thread),
        })
    }

    /// Has segment `seq` (and any before it) prepared without pauses,
    /// cutting a pause short.
    pub(crate) fn hurry(&self, seq: u64) {
        if self.urgent.fetch_max(seq, Ordering::Relaxed) < seq
            && let Some(t) = &self.thread
        {
            t.handle().unpark();
        }
    }

    pub(crate) fn request(&self, seq: u64) {
        if let Some(r) = &self.requests {
            let _ = r.send(seq);
        }
    }

    pub(crate) fn wait(&self, seq: u64) -> std::result::Result<(), String> {
        self.hurry(seq);
        let (m, cv) = &*self.state;
        let mut s = crate::rt::lock(m);
        loop {
            if s.ready.remove(&seq) {
                return Ok(());
            }
            if let Some(f) = s.failed.remove(&seq) {
                return Err(f);
            }
            s = crate::rt::wait(cv, m, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::io::{SimStorage, Storage};
    use crate::wal::format::{SEGMENT_HEADER, SegmentHeader};

    /// A new segment is its header, then written zeros to its full size,
    /// all durable and under its final name: through direct writes (one
    /// sync at the end), through buffered ones where there are none or
    /// they are refused at write time (a sync per MiB), paced or not; and
    /// a power loss at any step leaves either no segment under that name
    /// or a whole one.
    #[test]
    fn new_segments_are_durable_zeros_whichever_way_they_are_written() {
        use super::{STOP, Spares, prepare_segment};
        use crate::io::SimDirect;
        use std::sync::atomic::AtomicU64;
        const SIZE: u64 = 3 << 20;
        let dir = Path::new("/sim/zeros");
        let check = |sim: &SimStorage, seq: u64| {
            let path = dir.join(super::segment_name(seq));
            let got = sim.durable_bytes(&path).expect("durable under its name");
            assert_eq!(got.len() as u64, SIZE);
            let header = SegmentHeader::decode(&path, &got).unwrap();
            assert_eq!((header.seq, header.size), (seq, SIZE));
            assert!(got[SEGMENT_HEADER as usize..].iter().all(|&b| b == 0));
        };
        // (mode, paced, most file syncs a fill may take, least)
        let cases = [
            (SimDirect::Aligned, true, 1, 1),
            (SimDirect::Aligned, false, 1, 1),
            // A MiB at a time (three), then the closing sync.
            (SimDirect::Unsupported, true, 4, 4),
            (SimDirect::Refused, false, 4, 4),
        ];
        for (i, (mode, paced, most, least)) in cases.into_iter().enumerate() {
            let sim = SimStorage::new(40 + i as u64);
            sim.set_direct(mode);
            sim.create_dir_all(dir).unwrap();
            let spares = Spares::new(0);
            // 0: not urgent, the fill pauses between steps; MAX-1: hurried.
            let pace = AtomicU64::new(if paced { 0 } else { STOP - 1 });
            let syncs = sim.syncs();
            prepare_segment(&sim, dir, 3, SIZE, [0; 16], &spares, Some(&pace)).unwrap();
            let took = sim.syncs() - syncs;
            assert!(
                (least..=most).contains(&took),
                "{mode:?}: {took} file syncs"
            );
            check(&sim, 3);
            assert_eq!(spares.zeroed(), 1);
            // A fill told to stop leaves nothing behind.
            let stop = AtomicU64::new(STOP);
            let e = prepare_segment(&sim, dir, 4, SIZE, [0; 16], &spares, Some(&stop)).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted);
            assert_eq!(sim.list(dir).unwrap(), [super::segment_name(3)]);
        }
        // A power loss before each step in turn.
        for mode in [SimDirect::Aligned, SimDirect::Unsupported] {
            for n in 0.. {
                let sim = SimStorage::new(60 + n);
                sim.set_direct(mode);
                sim.create_dir_all(dir).unwrap();
                sim.crash_at_op(n);
                let done =
                    prepare_segment(&sim, dir, 5, SIZE, [0; 16], &Spares::new(0), None).is_ok();
                let sim = if done { sim } else { sim.restart() };
                sim.clear_faults();
                if sim.exists(&dir.join(super::segment_name(5))) {
                    check(&sim, 5);
                }
                if done {
                    check(&sim, 5);
                    break;
                }
            }
        }
    }
}
