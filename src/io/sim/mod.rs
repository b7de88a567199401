//! The simulated disk: an in-memory [`Storage`] that models what survives a
//! power loss, for crash-safety tests.
//!
//! Composes the simulated machine from three layers (below) and owns what
//! ties them together: the process that makes calls, the one lock over the
//! disk, and the seed. Nothing touches a real file.
//!
//! # Model
//!
//! * Every file has a **durable image** (what a power loss leaves) and a
//!   **live image** (what reads see). Each `write_at` updates the live image
//!   at once and is remembered, in order, as an *unsynced write* until the
//!   file's next successful `sync_data`, which applies them all to the
//!   durable image.
//! * The namespace is two maps, path → file: the **live** one, changed at
//!   once by creation, [`rename`](Storage::rename) and
//!   [`remove`](Storage::remove), and the **durable** one, changed only by
//!   [`sync_dir`](Storage::sync_dir), which copies the live entries directly
//!   under that directory into it (adding, replacing and removing). File
//!   contents belong to the file, not the path, so a renamed file keeps its
//!   data. (Two directories synced at different times can leave one file
//!   under two durable names after a cross-directory rename; the model
//!   allows that.)
//! * Directories are always durable: [`create_dir_all`](Storage::create_dir_all)
//!   needs no sync and no crash undoes it. Directories cannot be removed or
//!   renamed.
//! * A **crash** ([`SimStorage::crash`] and its variants) is a power loss:
//!   each unsynced write survives whole, not at all, or in 512-byte sectors
//!   (see [`SECTOR_SIZE`]); then the live state becomes the durable state.
//!   Every handle opened before a crash is dead afterwards: its calls fail.
//! * A failed `sync_data` behaves like Linux: the unsynced writes stay
//!   visible to reads but lose their dirty status, so no later sync makes
//!   them durable and a crash loses them.
//!
//! Every random choice comes from one small PRNG seeded by
//! [`SimStorage::new`], so one seed and one sequence of calls give the same
//! images every run.
//!
//! # Layers
//!
//! * `memfs`: files and the two namespaces, with no notion of time.
//! * `crash`: what a power loss keeps of unsynced writes ([`SECTOR_SIZE`]).
//! * `faults`: injected errors, stop points and damage.
//! * this module: the process (crash generations, locks, direct handles),
//!   the seed, and the [`Storage`] surface that composes the three.

mod crash;
mod faults;
mod memfs;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crash::CrashPolicy;
pub use crash::SECTOR_SIZE;
use faults::{EIO, Faults, Stop};
use memfs::{EFBIG, EISDIR, FileId, FileState, MemFs, norm, not_found, parent};

use super::{IoBackend, LockGuard, Storage, StorageFile};

/// `EINVAL`, what a direct handle answers an unaligned write.
const EINVAL: i32 = 22;

/// The in-memory simulated disk; see the [module docs](self).
///
/// Cheap to clone: clones share one disk. Every [`StorageFile`] it opens
/// shares it too, as do the fault settings and counters.
///
/// A `SimStorage` value also stands for the process using the disk: after a
/// crash or kill, every call through a value made before it fails (`EIO`),
/// as a dead process makes no more calls, and [`restart`](Self::restart)
/// gives the handle of the next process.
#[derive(Clone)]
pub struct SimStorage {
    disk: Arc<Mutex<Disk>>,
    /// The crash generation this process handle lives in.
    generation: u64,
}

/// A lock held by a simulated process; released on drop unless a crash
/// already released it (and maybe a later process took it).
struct SimLock {
    disk: Arc<Mutex<Disk>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.generation == self.generation {
            disk.locks.remove(&self.path);
        }
    }
}

/// Everything behind the one mutex.
struct Disk {
    rng: SplitMix64,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    fs: MemFs,
    faults: Faults,
    /// write_at calls ever made (live handles), for fault positions.
    write_calls: u64,
    /// Mutating calls ever made (writes, syncs, creations, renames,
    /// removals, directory syncs), for `crash_at`.
    ops: u64,
    /// sync_data calls ever made (live handles), for fault positions.
    sync_calls: u64,
    writes: u64,
    syncs: u64,
    bytes_written: u64,
    /// Paths locked by the current process (cleared by a crash or kill).
    locks: BTreeSet<PathBuf>,
    direct: SimDirect,
}

/// What [`Storage::open_direct`] does on a [`SimStorage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimDirect {
    /// Direct handles whose writes must be aligned (as `O_DIRECT`'s).
    #[default]
    Aligned,
    /// No direct mode (`Ok(None)`, as a file system without `O_DIRECT`).
    Unsupported,
    /// Direct handles open, but every write fails with `EINVAL` before
    /// writing anything (as a file system that accepts `O_DIRECT` at open
    /// and refuses it later).
    Refused,
}

impl SimStorage {
    /// An empty disk (no files, no directories besides the root) whose
    /// random choices (crashes, torn failed writes) all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        SimStorage {
            disk: Arc::new(Mutex::new(Disk {
                rng: SplitMix64(seed),
                generation: 0,
                fs: MemFs::default(),
                faults: Faults::default(),
                write_calls: 0,
                ops: 0,
                sync_calls: 0,
                writes: 0,
                syncs: 0,
                bytes_written: 0,
                locks: BTreeSet::new(),
                direct: SimDirect::default(),
            })),
            generation: 0,
        }
    }

    /// Sets what opening a file for direct writes does from now on.
    pub fn set_direct(&self, mode: SimDirect) {
        self.lock().direct = mode;
    }

    /// The handle of a process started after the last crash or kill.
    pub fn restart(&self) -> SimStorage {
        let generation = self.lock().generation;
        SimStorage {
            disk: Arc::clone(&self.disk),
            generation,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The disk, for a call of this process: `EIO` once a crash or kill
    /// ended it.
    fn live(&self) -> io::Result<MutexGuard<'_, Disk>> {
        // Every call is a point where a simulation may run another thread.
        crate::rt::point();
        let disk = self.lock();
        if disk.generation != self.generation {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(disk)
    }

    /// Simulates a power loss. For every file still named in the durable
    /// namespace, each unsynced write independently (at random, from the
    /// seed) is dropped, kept whole, kept as a prefix of whole sectors, or
    /// kept as a random subset of its sectors; the kept pieces are applied
    /// to the durable image in write order. Then the live namespace becomes
    /// the durable one (files never dir-synced vanish, un-synced renames
    /// and removals are undone) and every file's contents become its
    /// durable image. Handles opened before are dead afterwards.
    ///
    /// Injected faults stay as set; call [`clear_faults`](Self::clear_faults)
    /// to recover on a healthy disk.
    pub fn crash(&self) {
        self.lock().crash(CrashPolicy::Random);
    }

    /// A crash in which every unsynced write and every namespace change
    /// survives: the disk ends with exactly what reads saw, except writes a
    /// failed sync had already lost. Handles opened before are dead.
    ///
    /// Visible state matches what a SIGKILL leaves, but this makes it
    /// durable; [`kill`](Self::kill) keeps it unsynced instead.
    pub fn crash_keep_all(&self) {
        self.lock().crash(CrashPolicy::KeepAll);
    }

    /// A crash in which every unsynced write and every namespace change not
    /// made durable by `sync_dir` is lost. Handles opened before are dead.
    pub fn crash_drop_all(&self) {
        self.lock().crash(CrashPolicy::DropAll);
    }

    /// Simulates killing the process (SIGKILL) with the machine still up:
    /// handles opened before are dead, but the page cache is untouched, so
    /// reads still see every write and namespace change and nothing more is
    /// durable than before (a later [`crash`](Self::crash) can still lose
    /// unsynced data).
    pub fn kill(&self) {
        self.lock().kill();
    }

    /// Kills the process (as [`kill`](Self::kill): the page cache stays)
    /// just before the `n`-th next mutating operation from now, counted as
    /// for [`crash_at_op`](Self::crash_at_op): that call and every later one
    /// on handles from before fail with `EIO`.
    pub fn kill_at_op(&self, n: u64) {
        let mut disk = self.lock();
        disk.faults.kill_at = Some(disk.ops.saturating_add(n));
    }

    /// Makes the `n`-th next `write_at` call from now (0 = the very next)
    /// and every later one fail with `EIO` (`raw_os_error() == Some(5)`),
    /// on every file. A failing write may first have applied a random
    /// prefix of its sectors to the live image, as an unsynced write.
    pub fn fail_writes_after(&self, n: u64) {
        let mut disk = self.lock();
        disk.faults.write_fail_at = Some(disk.write_calls.saturating_add(n));
    }

    /// Makes the `n`-th next `sync_data` call from now (0 = the very next)
    /// and every later one fail with `EIO`. A failing sync makes nothing
    /// durable and, like Linux, forgets the file's unsynced writes: reads
    /// still see them until a crash, but they never become durable.
    pub fn fail_syncs_after(&self, n: u64) {
        let mut disk = self.lock();
        disk.faults.sync_fail_at = Some(disk.sync_calls.saturating_add(n));
    }

    /// Limits the bytes `write_at` may write from now, over all files, to
    /// `n`: a write that would take the total past `n` fails with `ENOSPC`
    /// (`raw_os_error() == Some(28)`) and applies nothing. Overwrites count
    /// like appends; failed writes do not count.
    pub fn enospc_after_bytes(&self, n: u64) {
        self.lock().faults.space_left = Some(n);
    }

    /// Loses the power just before the `n`-th next mutating operation from
    /// now (0 = the very next): a write, sync, file creation, rename,
    /// removal or directory sync, from any thread. It is a
    /// [`crash`](Self::crash) (unsynced writes dropped, kept or torn at
    /// random): that call and every later one on handles from before fail
    /// with `EIO`; reopen through [`restart`](Self::restart). Sweeping `n`
    /// puts a power loss between every two steps of a protocol.
    pub fn crash_at_op(&self, n: u64) {
        let mut disk = self.lock();
        disk.faults.crash_at = Some(disk.ops.saturating_add(n));
    }

    /// Loses the power just before the `n`-th next `sync_data` call from
    /// now (0 = the very next), from any thread: between a write and the
    /// sync that would make it durable, where a protocol that acknowledges
    /// too early loses data. A [`crash`](Self::crash) otherwise.
    pub fn crash_at_sync(&self, n: u64) {
        let mut disk = self.lock();
        disk.faults.crash_at_sync = Some(disk.sync_calls.saturating_add(n));
    }

    /// Mutating operations (see [`crash_at_op`](Self::crash_at_op)) since
    /// [`new`](Self::new).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    /// Successful `write_at` calls since [`new`](Self::new).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Successful `sync_data` calls since [`new`](Self::new).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Bytes written by successful `write_at` calls since [`new`](Self::new).
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// What a crash that loses everything unsynced would leave at `path`:
    /// the durable image of the file the **durable** namespace names
    /// `path`, or `None` if it names none (for example a file created but
    /// whose directory was never synced).
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        let id = disk.fs.durable_ns.get(&norm(path))?;
        Some(disk.fs.files[id].durable.clone())
    }

    /// A digest of the whole disk: both namespaces, and every named file's
    /// live and durable images and unsynced writes. Equal digests mean
    /// (but for a hash collision) equal disks: two runs of one seed compare
    /// with it.
    pub fn digest(&self) -> [u8; 32] {
        let disk = self.lock();
        let mut h = blake3::Hasher::new();
        for (tag, ns) in [(b'L', &disk.fs.live_ns), (b'D', &disk.fs.durable_ns)] {
            for (path, id) in ns {
                let f = &disk.fs.files[id];
                h.update(&[tag]);
                h.update(path.as_os_str().as_encoded_bytes());
                h.update(&(f.live.len() as u64).to_le_bytes());
                h.update(&f.live);
                h.update(&(f.durable.len() as u64).to_le_bytes());
                h.update(&f.durable);
                for w in &f.unsynced {
                    h.update(&w.off.to_le_bytes());
                    h.update(&(w.data.len() as u64).to_le_bytes());
                    h.update(&w.data);
                }
            }
        }
        for d in &disk.fs.dirs {
            h.update(b"d");
            h.update(d.as_os_str().as_encoded_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// What reads see at `path` now: the live image of the file the live
    /// namespace names `path`, or `None`.
    pub fn live_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        let id = disk.fs.live_ns.get(&norm(path))?;
        Some(disk.fs.files[id].live.clone())
    }

    /// Damages the file at `path` (live namespace first, else durable): XORs
    /// the byte at `offset` with `xor` in the live image and in the durable
    /// image (each where it reaches that far), and in every unsynced write
    /// covering it, so every crash outcome is damaged alike.
    ///
    /// Errors: `NotFound` without such a file, `InvalidInput` if neither
    /// image reaches `offset`.
    pub fn corrupt(&self, path: &Path, offset: u64, xor: u8) -> io::Result<()> {
        let mut disk = self.lock();
        let id = disk.fs.resolve_any(path)?;
        let file = disk.fs.files.get_mut(&id).expect("named file exists");
        file.corrupt(path, offset, xor)
    }

    /// Cuts (or zero-extends) the file at `path` (live namespace first, else
    /// durable) to `len` bytes in both its live and durable images, and
    /// clips its unsynced writes to `len`, as damage no crash undoes.
    ///
    /// Errors: `NotFound` without such a file.
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut disk = self.lock();
        let id = disk.fs.resolve_any(path)?;
        let file = disk.fs.files.get_mut(&id).expect("named file exists");
        file.truncate(len)
    }

    /// Files with contents held in memory (named, or open).
    #[cfg(test)]
    fn file_count(&self) -> usize {
        self.lock().fs.files.len()
    }
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.lock();
        f.debug_struct("SimStorage")
            .field("files", &disk.fs.live_ns.len())
            .field("durable_files", &disk.fs.durable_ns.len())
            .field("dirs", &disk.fs.dirs.len())
            .field("crashes", &disk.generation)
            .field("writes", &disk.writes)
            .field("syncs", &disk.syncs)
            .field("bytes_written", &disk.bytes_written)
            .finish()
    }
}

impl Disk {
    /// Counts a mutating operation; at the one `crash_at` names, the power
    /// is lost before it runs (a random crash) and it fails with `EIO`.
    fn step(&mut self) -> io::Result<()> {
        let n = self.ops;
        self.ops += 1;
        match self.faults.stop_before(n) {
            Some(Stop::Crash) => self.crash(CrashPolicy::Random),
            Some(Stop::Kill) => self.kill(),
            None => return Ok(()),
        }
        Err(io::Error::from_raw_os_error(EIO))
    }

    /// See [`SimStorage::kill`].
    fn kill(&mut self) {
        self.generation += 1;
        self.locks.clear();
        self.fs.close_all();
    }

    /// A power loss (see [`SimStorage::crash`]): the process ends with it.
    fn crash(&mut self, policy: CrashPolicy) {
        self.generation += 1;
        self.locks.clear();
        crash::power_loss(&mut self.fs, &mut self.rng, policy);
    }

    /// Checks a handle is of this generation and returns its file.
    fn file(&mut self, h: &SimFile) -> io::Result<&mut FileState> {
        if h.generation != self.generation {
            return Err(stale(&h.path));
        }
        Ok(self.fs.files.get_mut(&h.id).expect("open file exists"))
    }
}

fn stale(path: &Path) -> io::Error {
    io::Error::other(format!(
        "simulated disk: handle to {} was opened before a crash",
        path.display()
    ))
}

/// splitmix64: small, fast, and good enough to pick crash outcomes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Storage for SimStorage {
    fn backend(&self) -> IoBackend {
        IoBackend::Simulated
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let p = norm(path);
        let mut disk = self.live()?;
        if disk.fs.is_dir(&p) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        let id = match disk.fs.live_ns.get(&p) {
            Some(&id) => id,
            None if !create => return Err(not_found(path)),
            None => {
                if !disk.fs.is_dir(parent(&p)) {
                    return Err(not_found(parent(path)));
                }
                disk.step()?;
                disk.fs.create(p.clone())
            }
        };
        disk.fs
            .files
            .get_mut(&id)
            .expect("named file exists")
            .handles += 1;
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            id,
            generation: disk.generation,
            path: p,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let p = norm(path);
        let mut disk = self.live()?;
        disk.fs.create_dir_all(&p)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // A sync takes the disk's time (in a simulation, a seeded latency).
        crate::rt::io_wait();
        let dir = norm(path);
        let mut disk = self.live()?;
        if !disk.fs.is_dir(&dir) {
            return Err(not_found(path));
        }
        disk.step()?;
        disk.fs.sync_dir(&dir);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = norm(dir);
        let disk = self.live()?;
        if !disk.fs.is_dir(&d) {
            return Err(not_found(dir));
        }
        Ok(disk.fs.list(&d))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let p = norm(path);
        let mut disk = self.live()?;
        if disk.fs.is_dir(&p) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        disk.step()?;
        let id = disk.fs.live_ns.remove(&p).ok_or_else(|| not_found(path))?;
        disk.fs.collect(id);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (norm(from), norm(to));
        let mut disk = self.live()?;
        if disk.fs.is_dir(&f) || disk.fs.is_dir(&t) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        let id = *disk.fs.live_ns.get(&f).ok_or_else(|| not_found(from))?;
        if !disk.fs.is_dir(parent(&t)) {
            return Err(not_found(parent(to)));
        }
        disk.step()?;
        disk.fs.rename(&f, t, id);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let p = norm(path);
        let Ok(disk) = self.live() else { return false };
        disk.fs.is_dir(&p) || disk.fs.live_ns.contains_key(&p)
    }

    /// A handle that refuses unaligned writes with `EINVAL`, as `O_DIRECT`
    /// does, so tests catch a caller that breaks the alignment rule.
    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn StorageFile>>> {
        let mode = self.live()?.direct;
        if mode == SimDirect::Unsupported {
            return Ok(None);
        }
        Ok(Some(Box::new(DirectSimFile(
            self.open(path, false)?,
            mode == SimDirect::Refused,
        ))))
    }

    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let p = norm(path);
        let mut disk = self.live()?;
        if !disk.locks.insert(p.clone()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"));
        }
        Ok(LockGuard::new(SimLock {
            disk: Arc::clone(&self.disk),
            path: p,
            generation: self.generation,
        }))
    }
}

/// A [`SimStorage`] file opened for direct writes: every write must be
/// aligned to [`DIRECT_ALIGN`](super::DIRECT_ALIGN) in offset, length and
/// buffer address.
struct DirectSimFile(Box<dyn StorageFile>, bool);

impl StorageFile for DirectSimFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(off, buf)
    }
    fn write_at(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let a = super::DIRECT_ALIGN;
        let aligned = off.is_multiple_of(a as u64)
            && bufs
                .iter()
                .all(|b| b.len().is_multiple_of(a) && (b.as_ptr() as usize).is_multiple_of(a));
        if !aligned || self.1 {
            return Err(io::Error::from_raw_os_error(EINVAL));
        }
        self.0.write_at(off, bufs)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// A file opened on a [`SimStorage`]; dead after the disk's next crash or
/// kill.
struct SimFile {
    disk: Arc<Mutex<Disk>>,
    id: FileId,
    generation: u64,
    /// For error messages.
    path: PathBuf,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Disk> {
        crate::rt::point();
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let mut disk = self.lock();
        Ok(disk.file(self)?.live.len() as u64)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut disk = self.lock();
        let live = &disk.file(self)?.live;
        let Ok(start) = usize::try_from(off) else {
            return Ok(0);
        };
        if start >= live.len() {
            return Ok(0);
        }
        let n = buf.len().min(live.len() - start);
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let mut guard = self.lock();
        let disk = &mut *guard;
        disk.file(self)?;
        disk.step()?;
        let call = disk.write_calls;
        disk.write_calls += 1;
        let data = bufs.concat();
        let len = data.len() as u64;
        off.checked_add(len)
            .and_then(|end| usize::try_from(end).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(EFBIG))?;
        let file = disk.fs.files.get_mut(&self.id).expect("open file exists");
        if disk.faults.write_fails(call) {
            let part = faults::written_before_failure(&mut disk.rng, off, &data);
            if !part.is_empty() {
                file.write(off, part.to_vec());
            }
            return Err(io::Error::from_raw_os_error(EIO));
        }
        disk.faults.take_space(len)?;
        file.write(off, data);
        disk.writes += 1;
        disk.bytes_written += len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        crate::rt::io_wait();
        let mut guard = self.lock();
        let disk = &mut *guard;
        disk.file(self)?;
        if disk.faults.crash_before_sync(disk.sync_calls) {
            disk.sync_calls += 1;
            disk.crash(CrashPolicy::Random);
            return Err(io::Error::from_raw_os_error(EIO));
        }
        disk.step()?;
        let call = disk.sync_calls;
        disk.sync_calls += 1;
        let file = disk.fs.files.get_mut(&self.id).expect("open file exists");
        if disk.faults.sync_fails(call) {
            faults::fail_sync(file);
            return Err(io::Error::from_raw_os_error(EIO));
        }
        file.sync();
        disk.syncs += 1;
        Ok(())
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut disk = self.lock();
        if disk.generation != self.generation {
            return;
        }
        if let Some(file) = disk.fs.files.get_mut(&self.id) {
            file.handles -= 1;
            disk.fs.collect(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::crash::sectors;
    use super::*;

    pub(super) const S: usize = SECTOR_SIZE as usize;

    pub(super) fn p(s: &str) -> &Path {
        Path::new(s)
    }

    /// A disk with directory `d` and a durable file `d/f` holding `init`.
    pub(super) fn disk_with(seed: u64, init: &[u8]) -> SimStorage {
        let sim = SimStorage::new(seed);
        sim.create_dir_all(p("d")).unwrap();
        let f = sim.open(p("d/f"), true).unwrap();
        f.write_at(0, &[init]).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(p("d")).unwrap();
        sim
    }

    /// `n` bytes, distinct per position (mod 251).
    pub(super) fn pattern(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    pub(super) fn read_all(f: &dyn StorageFile) -> Vec<u8> {
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        assert_eq!(f.read_at(0, &mut buf).unwrap(), buf.len());
        buf
    }

    /// Checks the durable image after a crash of one unsynced write of
    /// `new` at `off` over a durable file `old`: outside the write it is
    /// `old`, and each sector piece of the write is wholly old or wholly
    /// new. Returns which pieces survived.
    pub(super) fn surviving_pieces(image: &[u8], old: &[u8], off: usize, new: &[u8]) -> Vec<bool> {
        assert_eq!(image.len(), old.len(), "the write was inside the file");
        assert_eq!(
            &image[..off],
            &old[..off],
            "bytes before the write untouched"
        );
        let end = off + new.len();
        assert_eq!(
            &image[end..],
            &old[end..],
            "bytes after the write untouched"
        );
        sectors(off as u64, new.len() as u64)
            .into_iter()
            .map(|(a, b)| {
                let (a, b) = (a as usize, b as usize);
                let got = &image[a..b];
                if got == &new[a - off..b - off] {
                    true
                } else {
                    assert_eq!(got, &old[a..b], "a sector is wholly old or wholly new");
                    false
                }
            })
            .collect()
    }

    #[test]
    fn is_clone_send_sync_and_clones_share_one_disk() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<SimStorage>();
        let a = SimStorage::new(1);
        let b = a.clone();
        a.open(p("x"), true).unwrap().write_at(0, &[b"hi"]).unwrap();
        assert_eq!(b.live_bytes(p("x")).unwrap(), b"hi");
        assert_eq!(b.writes(), 1);
        assert_eq!(a.backend(), IoBackend::Simulated);
    }

    #[test]
    fn reads_see_writes_in_order_with_gaps_zero_filled() {
        let sim = SimStorage::new(0);
        let f = sim.open(p("a"), true).unwrap();
        assert_eq!(f.len().unwrap(), 0);
        f.write_at(0, &[b"hello ", b"world"]).unwrap();
        assert_eq!(f.len().unwrap(), 11);
        f.write_at(6, &[b"WORLD"]).unwrap();
        f.write_at(20, &[b"!"]).unwrap();
        assert_eq!(f.len().unwrap(), 21);
        let mut want = b"hello WORLD".to_vec();
        want.extend_from_slice(&[0; 9]);
        want.push(b'!');
        assert_eq!(read_all(&*f), want);
        // Short read at end of file, empty read past it.
        let mut buf = [7u8; 8];
        assert_eq!(f.read_at(18, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], &[0, 0, b'!']);
        assert_eq!(f.read_at(21, &mut buf).unwrap(), 0);
        assert_eq!(f.read_at(1000, &mut buf).unwrap(), 0);
        // An empty write does not extend.
        f.write_at(100, &[]).unwrap();
        assert_eq!(f.len().unwrap(), 21);
        // A second handle sees the same file.
        let g = sim.open(p("a"), false).unwrap();
        assert_eq!(read_all(&*g), want);
        assert_eq!(sim.writes(), 4);
        assert_eq!(sim.bytes_written(), 11 + 5 + 1);
        // Nothing is durable yet: no sync, and the name is not dir-synced.
        assert_eq!(sim.durable_bytes(p("a")), None);
    }

    #[test]
    fn handles_from_before_a_crash_are_dead() {
        let sim = disk_with(15, b"abc");
        let f = sim.open(p("d/f"), false).unwrap();
        sim.crash();
        let sim = sim.restart();
        assert!(f.len().is_err());
        assert!(f.read_at(0, &mut [0u8; 3]).is_err());
        assert!(f.write_at(0, &[b"zzz"]).is_err());
        assert!(f.sync_data().is_err());
        drop(f);
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), b"abc");
        assert_eq!(sim.writes(), 1);
        let g = sim.open(p("d/f"), false).unwrap();
        assert_eq!(read_all(&*g), b"abc");
    }

    #[test]
    fn clones_work_from_many_threads() {
        let sim = SimStorage::new(19);
        let f: Arc<dyn StorageFile> = Arc::from(sim.open(p("shared"), true).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let (sim, f) = (sim.clone(), Arc::clone(&f));
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let off = (u64::from(t) * 50 + i) * 8;
                        f.write_at(off, &[&[t + 1; 8]]).unwrap();
                        if i % 10 == 0 {
                            f.sync_data().unwrap();
                        }
                        let name = format!("t{t}-{i}");
                        sim.open(Path::new(&name), true).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        f.sync_data().unwrap();
        let image = sim.live_bytes(p("shared")).unwrap();
        assert_eq!(image.len(), 4 * 50 * 8);
        for (i, c) in image.chunks(8).enumerate() {
            assert_eq!(c, &[(i / 50) as u8 + 1; 8]);
        }
        assert_eq!(sim.writes(), 200);
        assert_eq!(sim.list(p("")).unwrap().len(), 201);
    }
}
