//! The simulated disk: an in-memory [`Storage`] that models what survives a
//! power loss, for crash-safety tests.
//!
//! Owns the whole simulated machine: file contents, the directory
//! namespace, the page cache (writes and namespace changes not yet made
//! durable), crashes, and injected faults. Nothing touches a real file.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{IoBackend, LockGuard, Storage, StorageFile};

/// The sector size of the simulated disk: a torn write keeps or loses whole
/// sectors, counted by absolute file offset (boundaries at multiples of
/// this).
pub const SECTOR_SIZE: u64 = 512;

/// `EINVAL`, what a direct handle answers an unaligned write.
const EINVAL: i32 = 22;
/// `EIO`, the error of an injected write or sync failure.
const EIO: i32 = 5;
/// `ENOSPC`, the error of a write past the injected space limit.
const ENOSPC: i32 = 28;
/// `ENOTDIR`, a path component is a file.
const ENOTDIR: i32 = 20;
/// `EISDIR`, a file operation on a directory.
const EISDIR: i32 = 21;
/// `EEXIST`, a directory where a file is.
const EEXIST: i32 = 17;
/// `EFBIG`, a write ending past what a `Vec` can index.
const EFBIG: i32 = 27;

type FileId = u64;

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

/// One write since the file's last successful sync.
struct Write {
    off: u64,
    data: Vec<u8>,
}

/// One file's contents, independent of its names.
struct FileState {
    /// What reads see.
    live: Vec<u8>,
    /// What a crash leaves, before unsynced writes are (partly) applied.
    durable: Vec<u8>,
    /// Writes since the last successful sync, in order.
    unsynced: Vec<Write>,
    /// Open handles (of the current generation) to this file.
    handles: usize,
}

/// The injected faults.
#[derive(Default)]
struct Faults {
    /// Index (in `write_calls`) of the first write_at call that fails.
    write_fail_at: Option<u64>,
    /// Index (in `sync_calls`) of the first sync_data call that fails.
    sync_fail_at: Option<u64>,
    /// Bytes write_at may still write before ENOSPC.
    space_left: Option<u64>,
    /// Index (in `ops`) of the operation the power is lost before.
    crash_at: Option<u64>,
    /// Index (in `ops`) of the operation the process is killed before.
    kill_at: Option<u64>,
}

/// Everything behind the one mutex.
struct Disk {
    rng: SplitMix64,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    next_id: FileId,
    files: BTreeMap<FileId, FileState>,
    live_ns: BTreeMap<PathBuf, FileId>,
    durable_ns: BTreeMap<PathBuf, FileId>,
    dirs: BTreeSet<PathBuf>,
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

/// What a crash does with unsynced writes and namespace changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CrashPolicy {
    /// Each unsynced write chosen at random; namespace changes lost.
    Random,
    /// Everything unsynced survives.
    KeepAll,
    /// Everything unsynced is lost.
    DropAll,
}

impl SimStorage {
    /// An empty disk (no files, no directories besides the root) whose
    /// random choices (crashes, torn failed writes) all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        SimStorage {
            disk: Arc::new(Mutex::new(Disk {
                rng: SplitMix64(seed),
                generation: 0,
                next_id: 0,
                files: BTreeMap::new(),
                live_ns: BTreeMap::new(),
                durable_ns: BTreeMap::new(),
                dirs: BTreeSet::new(),
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
        let id = disk.durable_ns.get(&norm(path))?;
        Some(disk.files[id].durable.clone())
    }

    /// What reads see at `path` now: the live image of the file the live
    /// namespace names `path`, or `None`.
    pub fn live_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        let id = disk.live_ns.get(&norm(path))?;
        Some(disk.files[id].live.clone())
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
        let id = disk.resolve_any(path)?;
        let file = disk.files.get_mut(&id).expect("named file exists");
        let at = offset as usize;
        let reach = file.live.len().max(file.durable.len()) as u64;
        if offset >= reach {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "simulated disk: corrupt at {offset} past the end ({reach}) of {}",
                    path.display()
                ),
            ));
        }
        if let Some(b) = file.live.get_mut(at) {
            *b ^= xor;
        }
        if let Some(b) = file.durable.get_mut(at) {
            *b ^= xor;
        }
        for w in &mut file.unsynced {
            if offset >= w.off && offset - w.off < w.data.len() as u64 {
                w.data[(offset - w.off) as usize] ^= xor;
            }
        }
        Ok(())
    }

    /// Cuts (or zero-extends) the file at `path` (live namespace first, else
    /// durable) to `len` bytes in both its live and durable images, and
    /// clips its unsynced writes to `len`, as damage no crash undoes.
    ///
    /// Errors: `NotFound` without such a file.
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut disk = self.lock();
        let id = disk.resolve_any(path)?;
        let n = to_usize(len)?;
        let file = disk.files.get_mut(&id).expect("named file exists");
        file.live.resize(n, 0);
        file.durable.resize(n, 0);
        file.unsynced.retain_mut(|w| {
            if w.off >= len {
                return false;
            }
            let keep = (len - w.off).min(w.data.len() as u64) as usize;
            w.data.truncate(keep);
            true
        });
        Ok(())
    }

    /// Files with contents held in memory (named, or open).
    #[cfg(test)]
    fn file_count(&self) -> usize {
        self.lock().files.len()
    }
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.lock();
        f.debug_struct("SimStorage")
            .field("files", &disk.live_ns.len())
            .field("durable_files", &disk.durable_ns.len())
            .field("dirs", &disk.dirs.len())
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
        if self.faults.crash_at == Some(n) {
            self.faults.crash_at = None;
            self.crash(CrashPolicy::Random);
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if self.faults.kill_at == Some(n) {
            self.faults.kill_at = None;
            self.kill();
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }

    /// See [`SimStorage::kill`].
    fn kill(&mut self) {
        self.generation += 1;
        self.locks.clear();
        for file in self.files.values_mut() {
            file.handles = 0;
        }
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        for id in ids {
            self.collect(id);
        }
    }

    fn crash(&mut self, policy: CrashPolicy) {
        // Every crash moves the stream on, whatever it consumes below.
        self.rng.next();
        self.generation += 1;
        self.locks.clear();
        if policy == CrashPolicy::KeepAll {
            self.durable_ns = self.live_ns.clone();
        }
        let named: BTreeSet<FileId> = self.durable_ns.values().copied().collect();
        self.files.retain(|id, _| named.contains(id));
        let rng = &mut self.rng;
        for file in self.files.values_mut() {
            for w in std::mem::take(&mut file.unsynced) {
                match policy {
                    CrashPolicy::KeepAll => apply(&mut file.durable, w.off, &w.data),
                    CrashPolicy::DropAll => {}
                    CrashPolicy::Random => {
                        for (start, end) in torn(rng, w.off, w.data.len() as u64) {
                            let piece = &w.data[(start - w.off) as usize..(end - w.off) as usize];
                            apply(&mut file.durable, start, piece);
                        }
                    }
                }
            }
            file.live = file.durable.clone();
            file.handles = 0;
        }
        self.live_ns = self.durable_ns.clone();
    }

    /// Frees a file's contents once nothing names or holds it.
    fn collect(&mut self, id: FileId) {
        let held = self.files.get(&id).is_some_and(|f| f.handles > 0);
        if !held
            && !self.live_ns.values().any(|&v| v == id)
            && !self.durable_ns.values().any(|&v| v == id)
        {
            self.files.remove(&id);
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    /// The file named `path` (normalised) in the live namespace, else the
    /// durable one.
    fn resolve_any(&self, path: &Path) -> io::Result<FileId> {
        let p = norm(path);
        self.live_ns
            .get(&p)
            .or_else(|| self.durable_ns.get(&p))
            .copied()
            .ok_or_else(|| not_found(path))
    }

    /// Checks a handle is of this generation and returns its file.
    fn file(&mut self, h: &SimFile) -> io::Result<&mut FileState> {
        if h.generation != self.generation {
            return Err(stale(&h.path));
        }
        Ok(self.files.get_mut(&h.id).expect("open file exists"))
    }
}

/// The sector pieces of a write of `len` bytes at `off` that survive a
/// crash, as absolute `[start, end)` ranges in order.
fn torn(rng: &mut SplitMix64, off: u64, len: u64) -> Vec<(u64, u64)> {
    let sectors = sectors(off, len);
    let n = sectors.len() as u64;
    if n == 0 {
        return sectors;
    }
    match rng.below(4) {
        // Dropped entirely.
        0 => Vec::new(),
        // Kept entirely.
        1 => sectors,
        // A prefix of whole sectors: a strict, non-empty one when possible.
        2 => {
            let k = if n >= 2 {
                1 + rng.below(n - 1)
            } else {
                rng.below(2)
            };
            sectors[..k as usize].to_vec()
        }
        // Any subset of the sectors.
        _ => sectors.into_iter().filter(|_| rng.below(2) == 1).collect(),
    }
}

/// The pieces of `[off, off + len)` cut at multiples of [`SECTOR_SIZE`].
fn sectors(off: u64, len: u64) -> Vec<(u64, u64)> {
    let end = off + len;
    let mut out = Vec::new();
    let mut at = off;
    while at < end {
        let next = ((at / SECTOR_SIZE + 1) * SECTOR_SIZE).min(end);
        out.push((at, next));
        at = next;
    }
    out
}

/// Writes `data` at `off` into `image`, zero-filling any gap past its end.
fn apply(image: &mut Vec<u8>, off: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let off = off as usize;
    let end = off + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[off..end].copy_from_slice(data);
}

/// `path` with `.` components dropped, so `./a/b`, `a/b/` and `a//b` are one
/// key, and `.` is the empty path.
fn norm(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The directory holding the (normalised) `path`.
fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// Whether a normalised path is the root (or the current directory), which
/// always exists.
fn is_root(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(EFBIG))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "simulated disk: no such file or directory: {}",
            path.display()
        ),
    )
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
        if disk.is_dir(&p) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        let id = match disk.live_ns.get(&p) {
            Some(&id) => id,
            None if !create => return Err(not_found(path)),
            None => {
                if !disk.is_dir(parent(&p)) {
                    return Err(not_found(parent(path)));
                }
                disk.step()?;
                let id = disk.next_id;
                disk.next_id += 1;
                disk.files.insert(
                    id,
                    FileState {
                        live: Vec::new(),
                        durable: Vec::new(),
                        unsynced: Vec::new(),
                        handles: 0,
                    },
                );
                disk.live_ns.insert(p.clone(), id);
                id
            }
        };
        disk.files.get_mut(&id).expect("named file exists").handles += 1;
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
        let mut missing = Vec::new();
        for dir in p.ancestors() {
            if disk.is_dir(dir) {
                break;
            }
            if disk.live_ns.contains_key(dir) {
                let errno = if dir == p { EEXIST } else { ENOTDIR };
                return Err(io::Error::from_raw_os_error(errno));
            }
            missing.push(dir.to_path_buf());
        }
        disk.dirs.extend(missing);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = norm(path);
        let mut disk = self.live()?;
        if !disk.is_dir(&dir) {
            return Err(not_found(path));
        }
        disk.step()?;
        let mut dropped = Vec::new();
        disk.durable_ns.retain(|p, id| {
            let under = parent(p) == dir;
            if under {
                dropped.push(*id);
            }
            !under
        });
        let entries: Vec<(PathBuf, FileId)> = disk
            .live_ns
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        disk.durable_ns.extend(entries);
        for id in dropped {
            disk.collect(id);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = norm(dir);
        let disk = self.live()?;
        if !disk.is_dir(&d) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = disk
            .live_ns
            .keys()
            .filter(|p| parent(p) == d)
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let p = norm(path);
        let mut disk = self.live()?;
        if disk.is_dir(&p) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        disk.step()?;
        let id = disk.live_ns.remove(&p).ok_or_else(|| not_found(path))?;
        disk.collect(id);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (norm(from), norm(to));
        let mut disk = self.live()?;
        if disk.is_dir(&f) || disk.is_dir(&t) {
            return Err(io::Error::from_raw_os_error(EISDIR));
        }
        let id = *disk.live_ns.get(&f).ok_or_else(|| not_found(from))?;
        if !disk.is_dir(parent(&t)) {
            return Err(not_found(parent(to)));
        }
        disk.step()?;
        if f == t {
            return Ok(());
        }
        disk.live_ns.remove(&f);
        if let Some(old) = disk.live_ns.insert(t, id) {
            disk.collect(old);
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let p = norm(path);
        let Ok(disk) = self.live() else { return false };
        disk.is_dir(&p) || disk.live_ns.contains_key(&p)
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
        let file = disk.files.get_mut(&self.id).expect("open file exists");
        if disk.faults.write_fail_at.is_some_and(|at| call >= at) {
            // The kernel may have written some leading sectors before the
            // error: they are unsynced like any write.
            let sectors = sectors(off, len);
            let k = disk.rng.below(sectors.len() as u64 + 1) as usize;
            if k > 0 {
                let end = sectors[k - 1].1;
                let part = data[..(end - off) as usize].to_vec();
                apply(&mut file.live, off, &part);
                file.unsynced.push(Write { off, data: part });
            }
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if let Some(left) = disk.faults.space_left.as_mut() {
            if len > *left {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            *left -= len;
        }
        apply(&mut file.live, off, &data);
        if !data.is_empty() {
            file.unsynced.push(Write { off, data });
        }
        disk.writes += 1;
        disk.bytes_written += len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut guard = self.lock();
        let disk = &mut *guard;
        disk.file(self)?;
        disk.step()?;
        let call = disk.sync_calls;
        disk.sync_calls += 1;
        let file = disk.files.get_mut(&self.id).expect("open file exists");
        if disk.faults.sync_fail_at.is_some_and(|at| call >= at) {
            // Linux marks the pages clean after a writeback error: the data
            // stays readable but will never be written.
            file.unsynced.clear();
            return Err(io::Error::from_raw_os_error(EIO));
        }
        for w in std::mem::take(&mut file.unsynced) {
            apply(&mut file.durable, w.off, &w.data);
        }
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
        if let Some(file) = disk.files.get_mut(&self.id) {
            file.handles -= 1;
            disk.collect(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = SECTOR_SIZE as usize;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    /// A disk with directory `d` and a durable file `d/f` holding `init`.
    fn disk_with(seed: u64, init: &[u8]) -> SimStorage {
        let sim = SimStorage::new(seed);
        sim.create_dir_all(p("d")).unwrap();
        let f = sim.open(p("d/f"), true).unwrap();
        f.write_at(0, &[init]).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(p("d")).unwrap();
        sim
    }

    /// `n` bytes, distinct per position (mod 251).
    fn pattern(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    fn read_all(f: &dyn StorageFile) -> Vec<u8> {
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        assert_eq!(f.read_at(0, &mut buf).unwrap(), buf.len());
        buf
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
    fn synced_data_survives_every_kind_of_crash() {
        for seed in 0..32 {
            for kind in 0..3 {
                let sim = SimStorage::new(seed);
                sim.create_dir_all(p("d")).unwrap();
                let f = sim.open(p("d/f"), true).unwrap();
                let data = pattern(3 * S + 17, 0x5a);
                f.write_at(0, &[&data]).unwrap();
                f.sync_data().unwrap();
                sim.sync_dir(p("d")).unwrap();
                assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), data);
                match kind {
                    0 => sim.crash(),
                    1 => sim.crash_drop_all(),
                    _ => sim.crash_keep_all(),
                }
                let sim = sim.restart();
                assert_eq!(sim.live_bytes(p("d/f")).unwrap(), data);
                let f = sim.open(p("d/f"), false).unwrap();
                assert_eq!(read_all(&*f), data);
                assert_eq!(sim.syncs(), 1);
            }
        }
    }

    #[test]
    fn unsynced_writes_are_lost_by_crash_drop_all() {
        let old = pattern(2 * S, 1);
        let sim = disk_with(3, &old);
        let f = sim.open(p("d/f"), false).unwrap();
        f.write_at(100, &[&[0xEE; 50]]).unwrap();
        f.write_at(2 * S as u64, &[&[0xDD; 700]]).unwrap();
        assert_eq!(f.len().unwrap(), 2 * S as u64 + 700);
        assert_eq!(&sim.live_bytes(p("d/f")).unwrap()[100..150], &[0xEE; 50]);
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), old);
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), old);
        let f = sim.open(p("d/f"), false).unwrap();
        assert_eq!(f.len().unwrap(), 2 * S as u64);
        assert_eq!(read_all(&*f), old);
    }

    #[test]
    fn crash_keep_all_keeps_writes_and_namespace_changes() {
        let sim = disk_with(4, &pattern(S, 2));
        let f = sim.open(p("d/f"), false).unwrap();
        f.write_at(10, &[b"new"]).unwrap();
        let g = sim.open(p("d/g"), true).unwrap();
        g.write_at(0, &[b"fresh"]).unwrap();
        sim.rename(p("d/f"), p("d/h")).unwrap();
        let mut want = pattern(S, 2);
        want[10..13].copy_from_slice(b"new");
        sim.crash_keep_all();
        let sim = sim.restart();
        assert_eq!(sim.list(p("d")).unwrap(), ["g", "h"]);
        assert_eq!(sim.live_bytes(p("d/h")).unwrap(), want);
        assert_eq!(sim.durable_bytes(p("d/h")).unwrap(), want);
        assert_eq!(sim.durable_bytes(p("d/g")).unwrap(), b"fresh");
        assert!(!sim.exists(p("d/f")));
        // It is durable now: a further crash loses nothing.
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/h")).unwrap(), want);
        assert_eq!(sim.live_bytes(p("d/g")).unwrap(), b"fresh");
    }

    #[test]
    fn kill_keeps_page_cache_but_nothing_more_durable() {
        let old = pattern(S, 3);
        let sim = disk_with(5, &old);
        let f = sim.open(p("d/f"), false).unwrap();
        f.write_at(0, &[b"unsynced"]).unwrap();
        sim.open(p("d/new"), true).unwrap();
        sim.kill();
        let sim = sim.restart();
        assert!(f.len().is_err(), "handles die with the process");
        assert_eq!(&sim.live_bytes(p("d/f")).unwrap()[..8], b"unsynced");
        assert!(sim.exists(p("d/new")));
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), old);
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), old);
        assert!(!sim.exists(p("d/new")));
    }

    /// How a crash treated the sectors of one write.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        Nothing,
        All,
        StrictPrefix,
        NonPrefixSubset,
    }

    /// Checks the durable image after a crash of one unsynced write of
    /// `new` at `off` over a durable file `old`: outside the write it is
    /// `old`, and each sector piece of the write is wholly old or wholly
    /// new. Returns which pieces survived.
    fn surviving_pieces(image: &[u8], old: &[u8], off: usize, new: &[u8]) -> Vec<bool> {
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

    fn classify(kept: &[bool]) -> Outcome {
        let n = kept.iter().filter(|&&k| k).count();
        if n == 0 {
            Outcome::Nothing
        } else if n == kept.len() {
            Outcome::All
        } else if kept[..n].iter().all(|&k| k) {
            Outcome::StrictPrefix
        } else {
            Outcome::NonPrefixSubset
        }
    }

    #[test]
    fn crash_tears_writes_at_sector_granularity() {
        // An aligned write of 8 sectors and an unaligned one spanning 5
        // sector pieces, inside a 16-sector durable file.
        for (off, len) in [(2 * S, 8 * S), (700, 2000)] {
            let old = pattern(16 * S, 0x00);
            let new = pattern(len, 0xFF);
            // How often each outcome occurred: each of the four modes is
            // picked a quarter of the time, so each outcome should be
            // common (a strict prefix also comes from the subset mode, but
            // rarely: 4/32 of its subsets for the 5-piece write).
            let mut seen = [0u32; 4];
            let seeds = 400;
            for seed in 0..seeds {
                let sim = disk_with(seed, &old);
                let f = sim.open(p("d/f"), false).unwrap();
                f.write_at(off as u64, &[&new]).unwrap();
                drop(f);
                sim.crash();
                let sim = sim.restart();
                let image = sim.live_bytes(p("d/f")).unwrap();
                assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), image);
                let kept = surviving_pieces(&image, &old, off, &new);
                seen[classify(&kept) as usize] += 1;
            }
            for (i, want) in [
                Outcome::Nothing,
                Outcome::All,
                Outcome::StrictPrefix,
                Outcome::NonPrefixSubset,
            ]
            .into_iter()
            .enumerate()
            {
                assert!(
                    u64::from(seen[i]) >= seeds / 10,
                    "{want:?} seen {} times in {seeds} for write ({off}, {len}): {seen:?}",
                    seen[i]
                );
            }
        }
    }

    #[test]
    fn crash_tears_each_write_independently_and_in_order() {
        // Two overlapping unsynced writes: a kept later write wins over an
        // earlier one, sector by sector.
        let mut outcomes = BTreeSet::new();
        for seed in 0..300 {
            let sim = disk_with(seed, &[0u8; 4 * S]);
            let f = sim.open(p("d/f"), false).unwrap();
            f.write_at(0, &[&[1u8; 4 * S]]).unwrap();
            f.write_at(0, &[&[2u8; 4 * S]]).unwrap();
            sim.crash();
            let sim = sim.restart();
            let image = sim.durable_bytes(p("d/f")).unwrap();
            let per_sector: Vec<u8> = image
                .chunks(S)
                .map(|c| {
                    assert!(c.iter().all(|&b| b == c[0]), "sector torn inside");
                    c[0]
                })
                .collect();
            outcomes.insert(per_sector);
        }
        // Every sector value is 0, 1 or 2, and mixes occur.
        assert!(outcomes.iter().flatten().all(|&v| v <= 2));
        assert!(outcomes.contains(&vec![2; 4]));
        assert!(outcomes.contains(&vec![1; 4]));
        assert!(outcomes.contains(&vec![0; 4]));
        assert!(
            outcomes.len() > 10,
            "only {} distinct outcomes",
            outcomes.len()
        );
    }

    #[test]
    fn crash_beyond_the_end_keeps_a_prefix_of_an_append() {
        // An append torn by a crash leaves the file somewhere between its
        // old and new length, with the kept sectors exactly the written ones.
        let mut lens = BTreeSet::new();
        for seed in 0..200 {
            let sim = disk_with(seed, &[9u8; S]);
            let f = sim.open(p("d/f"), false).unwrap();
            f.write_at(S as u64, &[&pattern(4 * S, 0x33)]).unwrap();
            sim.crash();
            let sim = sim.restart();
            let image = sim.durable_bytes(p("d/f")).unwrap();
            assert!(image.len().is_multiple_of(S) && (S..=5 * S).contains(&image.len()));
            assert_eq!(&image[..S], &[9u8; S]);
            let new = pattern(4 * S, 0x33);
            for (i, c) in image[S..].chunks(S).enumerate() {
                let written = &new[i * S..(i + 1) * S];
                assert!(c == written || c.iter().all(|&b| b == 0), "sector {i}");
            }
            lens.insert(image.len());
        }
        assert_eq!(lens.len(), 5, "every length from 1 to 5 sectors: {lens:?}");
    }

    /// A fixed mix of writes, syncs, renames and crashes; returns every
    /// image seen.
    fn script(seed: u64) -> Vec<Option<Vec<u8>>> {
        let mut sim = SimStorage::new(seed);
        sim.create_dir_all(p("w")).unwrap();
        let mut images = Vec::new();
        for round in 0..6u8 {
            let f = sim.open(p("w/log"), true).unwrap();
            let at = f.len().unwrap();
            f.write_at(at, &[&pattern(3 * S + 100, round)]).unwrap();
            if round % 2 == 0 {
                f.sync_data().unwrap();
                sim.sync_dir(p("w")).unwrap();
            }
            f.write_at(at / 2, &[&pattern(5 * S, round ^ 0x80)])
                .unwrap();
            let g = sim.open(p("w/tmp"), true).unwrap();
            g.write_at(0, &[&pattern(2 * S, round)]).unwrap();
            g.sync_data().unwrap();
            sim.rename(p("w/tmp"), p("w/snap")).unwrap();
            if round % 3 == 0 {
                sim.sync_dir(p("w")).unwrap();
            }
            sim.crash();
            sim = sim.restart();
            images.push(sim.live_bytes(p("w/log")));
            images.push(sim.durable_bytes(p("w/snap")));
        }
        images
    }

    #[test]
    fn same_seed_and_ops_give_the_same_images() {
        let distinct: BTreeSet<_> = (0..16)
            .map(|seed| {
                let a = script(seed);
                assert_eq!(a, script(seed), "seed {seed} not deterministic");
                a
            })
            .collect();
        assert!(distinct.len() > 1, "the seed changes nothing");
    }

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

    #[test]
    fn a_created_file_is_durable_only_after_sync_dir() {
        for kind in 0..2 {
            let sim = SimStorage::new(10);
            sim.create_dir_all(p("d/sub")).unwrap();
            for name in ["d/a", "d/b", "d/sub/c"] {
                let f = sim.open(p(name), true).unwrap();
                f.write_at(0, &[name.as_bytes()]).unwrap();
                f.sync_data().unwrap();
            }
            sim.sync_dir(p("d")).unwrap(); // not d/sub
            let e = sim.open(p("d/late"), true).unwrap();
            e.write_at(0, &[b"late"]).unwrap();
            e.sync_data().unwrap();
            assert_eq!(sim.list(p("d")).unwrap(), ["a", "b", "late"]);
            assert_eq!(sim.durable_bytes(p("d/late")), None);
            assert_eq!(sim.durable_bytes(p("d/sub/c")), None);
            if kind == 0 {
                sim.crash();
            } else {
                sim.crash_drop_all();
            }
            let sim = sim.restart();
            assert_eq!(sim.list(p("d")).unwrap(), ["a", "b"]);
            assert!(!sim.exists(p("d/late")));
            assert!(!sim.exists(p("d/sub/c")));
            assert!(sim.exists(p("d/sub")), "directories are always durable");
            assert_eq!(sim.live_bytes(p("d/a")).unwrap(), b"d/a");
            assert_eq!(sim.live_bytes(p("d/b")).unwrap(), b"d/b");
            let err = sim.open(p("d/late"), false).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
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
    fn rename_is_durable_only_after_sync_dir() {
        let sim = disk_with(11, b"payload");
        let t = sim.open(p("d/target"), true).unwrap();
        t.write_at(0, &[b"old target"]).unwrap();
        t.sync_data().unwrap();
        drop(t);
        sim.sync_dir(p("d")).unwrap();

        sim.rename(p("d/f"), p("d/target")).unwrap();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"payload");
        assert_eq!(sim.durable_bytes(p("d/target")).unwrap(), b"old target");
        assert_eq!(sim.durable_bytes(p("d/f")).unwrap(), b"payload");
        sim.crash();
        let sim = sim.restart();
        assert_eq!(sim.list(p("d")).unwrap(), ["f", "target"]);
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), b"payload");
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"old target");

        sim.rename(p("d/f"), p("d/target")).unwrap();
        sim.sync_dir(p("d")).unwrap();
        sim.crash();
        let sim = sim.restart();
        assert_eq!(sim.list(p("d")).unwrap(), ["target"]);
        assert_eq!(sim.live_bytes(p("d/target")).unwrap(), b"payload");
        // The replaced file is gone for good.
        assert_eq!(sim.file_count(), 1);
    }

    #[test]
    fn a_renamed_file_keeps_its_data_and_unsynced_writes() {
        let sim = SimStorage::new(12);
        sim.create_dir_all(p("d")).unwrap();
        let f = sim.open(p("d/tmp"), true).unwrap();
        f.write_at(0, &[b"synced"]).unwrap();
        f.sync_data().unwrap();
        f.write_at(6, &[b"+unsynced"]).unwrap();
        sim.rename(p("d/tmp"), p("d/final")).unwrap();
        // The old handle writes to the renamed file.
        f.write_at(15, &[b"!"]).unwrap();
        assert_eq!(sim.live_bytes(p("d/final")).unwrap(), b"synced+unsynced!");
        sim.sync_dir(p("d")).unwrap();
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/final")).unwrap(), b"synced");
        assert!(!sim.exists(p("d/tmp")));
    }

    #[test]
    fn remove_is_durable_only_after_sync_dir_and_open_handles_keep_the_data() {
        let sim = disk_with(13, b"data");
        let f = sim.open(p("d/f"), false).unwrap();
        sim.remove(p("d/f")).unwrap();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(sim.list(p("d")).unwrap(), Vec::<String>::new());
        // Unlinked but open: still readable and writable.
        f.write_at(4, &[b"!"]).unwrap();
        assert_eq!(read_all(&*f), b"data!");
        drop(f);
        sim.crash_drop_all();
        let sim = sim.restart();
        assert_eq!(sim.live_bytes(p("d/f")).unwrap(), b"data");

        sim.remove(p("d/f")).unwrap();
        sim.sync_dir(p("d")).unwrap();
        assert_eq!(sim.file_count(), 0, "nothing names or holds it");
        sim.crash();
        let sim = sim.restart();
        assert!(!sim.exists(p("d/f")));
        assert_eq!(
            sim.remove(p("d/f")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn unlinked_file_contents_are_freed_after_the_last_handle() {
        let sim = SimStorage::new(14);
        let f = sim.open(p("x"), true).unwrap();
        sim.remove(p("x")).unwrap();
        assert_eq!(sim.file_count(), 1);
        drop(f);
        assert_eq!(sim.file_count(), 0);
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
    fn namespace_errors_and_listing() {
        let sim = SimStorage::new(16);
        let nf = |r: io::Result<Box<dyn StorageFile>>| r.err().unwrap().kind();
        assert_eq!(nf(sim.open(p("missing"), false)), io::ErrorKind::NotFound);
        assert_eq!(nf(sim.open(p("nodir/f"), true)), io::ErrorKind::NotFound);
        assert_eq!(
            sim.rename(p("missing"), p("x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sim.list(p("nodir")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sim.sync_dir(p("nodir")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        sim.create_dir_all(p("/r/a/b")).unwrap();
        assert!(sim.exists(p("/r")) && sim.exists(p("/r/a")) && sim.exists(p("/r/a/b")));
        assert!(sim.exists(p("/")));
        for name in ["zeta", "alpha", "mid"] {
            sim.open(&Path::new("/r/a").join(name), true).unwrap();
        }
        sim.open(p("/r/a/b/deep"), true).unwrap();
        sim.open(p("/r/top"), true).unwrap();
        // Files directly under the directory, sorted; not subdirectories.
        assert_eq!(sim.list(p("/r/a")).unwrap(), ["alpha", "mid", "zeta"]);
        assert_eq!(sim.list(p("/r/a/")).unwrap(), ["alpha", "mid", "zeta"]);
        assert_eq!(sim.list(p("/r/a/b")).unwrap(), ["deep"]);
        assert!(sim.exists(p("/r/a/./mid")));
        assert!(!sim.exists(p("/r/a/nope")));
        // Directories are not files.
        assert!(sim.open(p("/r/a"), true).is_err());
        assert!(sim.remove(p("/r/a")).is_err());
        assert!(sim.create_dir_all(p("/r/top")).is_err());
        assert!(sim.create_dir_all(p("/r/top/x")).is_err());
        // Renaming into a missing directory fails and changes nothing.
        assert_eq!(
            sim.rename(p("/r/top"), p("/nope/x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(sim.exists(p("/r/top")));
        // Relative paths: `.` is the root of the relative namespace.
        sim.open(p("rel"), true).unwrap();
        assert_eq!(sim.list(p(".")).unwrap(), ["rel"]);
        assert_eq!(sim.list(p("")).unwrap(), ["rel"]);
        sim.sync_dir(p(".")).unwrap();
        sim.crash();
        let sim = sim.restart();
        assert!(sim.exists(p("./rel")));
        assert!(!sim.exists(p("/r/top")));
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

    #[test]
    fn sector_pieces_cut_at_absolute_multiples() {
        assert_eq!(sectors(0, 0), vec![]);
        assert_eq!(sectors(0, 512), vec![(0, 512)]);
        assert_eq!(
            sectors(700, 2000),
            vec![
                (700, 1024),
                (1024, 1536),
                (1536, 2048),
                (2048, 2560),
                (2560, 2700)
            ]
        );
        assert_eq!(sectors(511, 2), vec![(511, 512), (512, 513)]);
    }
}
