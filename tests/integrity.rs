//! Integrity on the failure paths a user meets: a close that fails, a
//! tree opened with another arity, depth bound or hasher, a file of the
//! tree missing or taken from another tree, a sync that fails while a
//! checkpoint writes or a segment is named, a background checkpoint that
//! keeps failing, and a log dropped inside an executor.
//!
//! Every case ends with the tree reopened and checked against the leaves
//! whose inserts were acknowledged (size, root, proofs), or with an error
//! naming the file at fault.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{leaf, leaves, naive_root, sim_config};
use ringtree::io::{IoBackend, LockGuard, SimStorage, Storage, StorageFile};
use ringtree::{Blake3, CheckpointPolicy, Config, Error, FlushPolicy, Hash, Hasher, Tree};

type T4 = Tree<Blake3, 4, 32>;

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Reopens `dir` on a restarted `sim` and checks it holds exactly `all`:
/// size, root, a proof of a few leaves verified against the root; then
/// inserts one more leaf, checkpoints and reopens once more.
fn check_whole(sim: &SimStorage, dir: &str, all: &[Hash]) {
    let t = T4::open_blocking(sim_config(&sim.restart(), dir)).unwrap();
    let root = naive_root(4, all).unwrap();
    assert_eq!(t.size(), all.len() as u64);
    assert_eq!(t.root(), Some(root));
    let snap = t.snapshot();
    for i in [0, all.len() as u64 / 2, all.len() as u64 - 1] {
        snap.proof(i)
            .unwrap()
            .verify_at(&Blake3, &root, all.len() as u64)
            .unwrap();
    }
    block(async {
        t.insert_durable(leaf(1 << 50)).await.unwrap();
        t.checkpoint().await.unwrap();
        t.close().await.unwrap();
    });
    let t = T4::open_blocking(sim_config(&sim.restart(), dir)).unwrap();
    assert_eq!(t.size(), all.len() as u64 + 1);
}

/// Issue: a close whose checkpoint fails released the directory while the
/// log still ran; a second owner's inserts were then overwritten by the
/// old log's clean-close mark, and a power loss took them.
#[test]
fn a_failed_close_closes_the_log_before_the_directory_is_released() {
    for flush in [FlushPolicy::GroupCommit, FlushPolicy::Manual] {
        let sim = SimStorage::new(1);
        let cfg = sim_config(&sim, "/c")
            .flush(flush)
            .checkpoint(CheckpointPolicy::OnClose)
            .failpoint("shard-write");
        let first = T4::open_blocking(cfg).unwrap();
        let all = leaves(0..110);
        let pending = block(async {
            let mut p = Vec::new();
            for l in &all[..10] {
                p.push(first.insert(*l).await.unwrap().durable);
            }
            let e = first.close().await.unwrap_err();
            assert!(e.to_string().contains("failpoint shard-write"), "{e}");
            // Closed for good: the log closed cleanly (the checkpoint's
            // failure was reported once), and no more inserts.
            first.close().await.unwrap();
            assert!(matches!(first.insert(all[0]).await, Err(Error::Closed)));
            p
        });
        // Every future resolved; the log was flushed before it closed.
        for d in pending {
            block(d).unwrap();
        }
        // A second owner may come in now: nothing of the first can write.
        let second = T4::open_blocking(sim_config(&sim, "/c")).unwrap();
        assert_eq!(second.size(), 10);
        block(async {
            for l in &all[10..] {
                second.insert_durable(*l).await.unwrap();
            }
        });
        drop(first);
        sim.crash();
        drop(second);
        check_whole(&sim, "/c", &all);
    }
}

/// A hasher that is BLAKE3 under another name.
#[derive(Clone, Default)]
struct Renamed;

impl Hasher for Renamed {
    fn id(&self) -> &str {
        "blake3-renamed"
    }
    fn hash_children(&self, children: &[Hash]) -> Hash {
        Blake3.hash_children(children)
    }
}

#[test]
fn another_arity_depth_bound_or_hasher_is_a_config_mismatch() {
    for checkpointed in [false, true] {
        let sim = SimStorage::new(2);
        let t = T4::open_blocking(sim_config(&sim, "/i")).unwrap();
        let all = leaves(0..300);
        block(async {
            for c in all.chunks(100) {
                t.insert_many(c).await.unwrap().durable.await.unwrap();
            }
            if checkpointed {
                t.checkpoint().await.unwrap();
            }
            t.close().await.unwrap();
        });
        let mismatch = |r: ringtree::Result<()>, want: &str, disk: &str, given: &str| match r {
            Err(Error::ConfigMismatch {
                field,
                on_disk,
                given: g,
                file,
            }) => {
                assert_eq!((field, on_disk.as_str(), g.as_str()), (want, disk, given));
                assert!(file.ends_with("IDENTITY"), "{}", file.display());
            }
            other => panic!("checkpointed {checkpointed}: {want}: {other:?}"),
        };
        let cfg = || sim_config(&sim.restart(), "/i");
        mismatch(
            Tree::<Blake3, 8, 32>::open_blocking(cfg()).map(drop),
            "arity",
            "4",
            "8",
        );
        mismatch(
            Tree::<Blake3, 4, 16>::open_blocking(cfg()).map(drop),
            "max_depth",
            "32",
            "16",
        );
        mismatch(
            Tree::<Renamed, 4, 32>::open_blocking(cfg()).map(drop),
            "hasher",
            "blake3",
            "blake3-renamed",
        );
        // The refusals changed nothing.
        check_whole(&sim, "/i", &all);
    }
}

fn wal_segments(sim: &SimStorage, dir: &str) -> Vec<PathBuf> {
    let wal = Path::new(dir).join("wal");
    let mut v: Vec<PathBuf> = sim
        .list(&wal)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .map(|n| wal.join(n))
        .collect();
    v.sort();
    v
}

/// Whether the segment holds any frame (its first frame header is not
/// zero).
fn holds_frames(sim: &SimStorage, path: &Path) -> bool {
    sim.live_bytes(path).unwrap()[4096..4104] != [0; 8]
}

/// Builds a tree in `dir` with several segments: a checkpoint after
/// `checkpoint_at` leaves (if any), then the rest in the log, closed.
fn several_segments(sim: &SimStorage, dir: &str, checkpoint_at: Option<usize>) -> Vec<Hash> {
    let t = T4::open_blocking(sim_config(sim, dir).checkpoint(CheckpointPolicy::Manual)).unwrap();
    let all = leaves(0..6000);
    block(async {
        for (i, l) in all.iter().enumerate() {
            if Some(i) == checkpoint_at {
                t.checkpoint().await.unwrap();
            }
            t.insert(*l).await.unwrap();
        }
        t.close().await.unwrap();
    });
    all
}

/// Deleting, or cutting to nothing, any log segment that holds frames of
/// acknowledged inserts is an error naming it, never a shorter tree; so is
/// deleting the identity record. An empty segment prepared ahead may go.
#[test]
fn no_file_of_the_log_vanishes_silently() {
    for checkpoint_at in [None, Some(2500)] {
        let sim = SimStorage::new(3);
        let all = several_segments(&sim, "/m", checkpoint_at);
        let segments = wal_segments(&sim, "/m");
        assert!(segments.len() >= 3, "{segments:?}");
        for (k, seg) in segments.iter().enumerate() {
            for cut in [false, true] {
                let sim = SimStorage::new(3);
                several_segments(&sim, "/m", checkpoint_at);
                // The segment prepared ahead may or may not be made yet.
                if !sim.exists(seg) {
                    continue;
                }
                let frames = holds_frames(&sim, seg);
                if cut {
                    sim.truncate(seg, 0).unwrap();
                } else {
                    sim.remove(seg).unwrap();
                }
                let ctx = format!("{checkpoint_at:?} segment {k} cut {cut}");
                match T4::open_blocking(sim_config(&sim.restart(), "/m")) {
                    Ok(t) => {
                        assert!(!frames || t.size() == all.len() as u64, "{ctx}: shorter");
                        assert_eq!(t.size(), all.len() as u64, "{ctx}");
                        assert_eq!(t.root(), naive_root(4, &all), "{ctx}");
                    }
                    Err(e) => {
                        let f = e.file().map(Path::to_path_buf);
                        assert_eq!(f.as_deref(), Some(seg.as_path()), "{ctx}: {e}");
                    }
                }
            }
        }
    }
    // The only segment of a tree that never checkpointed.
    let sim = SimStorage::new(4);
    let t = T4::open_blocking(sim_config(&sim, "/o")).unwrap();
    block(async {
        t.insert_durable(leaf(1)).await.unwrap();
        t.close().await.unwrap();
    });
    let segs = wal_segments(&sim, "/o");
    assert_eq!(segs.len(), 1);
    sim.remove(&segs[0]).unwrap();
    let e = T4::open_blocking(sim_config(&sim.restart(), "/o")).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption { file, .. } if *file == segs[0]),
        "{e}"
    );
    // The identity record.
    let sim = SimStorage::new(5);
    several_segments(&sim, "/p", Some(100));
    sim.remove(Path::new("/p/IDENTITY")).unwrap();
    let e = T4::open_blocking(sim_config(&sim.restart(), "/p")).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption { file, .. } if file.ends_with("IDENTITY")),
        "{e}"
    );
}

/// Writes `/b/<rel>` over `/a/<rel>`, durably; returns the path written.
fn copy_from_b(sim: &SimStorage, rel: &str) -> PathBuf {
    let to = Path::new("/a").join(rel);
    let bytes = sim.live_bytes(&Path::new("/b").join(rel)).unwrap();
    let f = sim.open(&to, true).unwrap();
    f.write_at(0, &[&bytes]).unwrap();
    f.sync_data().unwrap();
    to
}

/// A segment or manifest copied from another tree is refused, naming it.
#[test]
fn a_file_of_another_tree_is_refused() {
    let sim = SimStorage::new(6);
    several_segments(&sim, "/a", Some(3000));
    several_segments(&sim, "/b", Some(3000));
    // The newest segment both trees have (whether one was prepared ahead
    // depends on timing).
    let seg = wal_segments(&sim, "/a")
        .into_iter()
        .rev()
        .find(|p| sim.exists(&Path::new("/b").join(p.strip_prefix("/a").unwrap())))
        .unwrap();
    let rel = seg.strip_prefix("/a").unwrap().to_str().unwrap().to_owned();
    let to = copy_from_b(&sim, &rel);
    let e = T4::open_blocking(sim_config(&sim.restart(), "/a")).unwrap_err();
    assert_eq!(e.file(), Some(to.as_path()), "{e}");
    assert!(e.to_string().contains("another"), "{e}");

    let sim = SimStorage::new(7);
    several_segments(&sim, "/a", Some(3000));
    several_segments(&sim, "/b", Some(3000));
    copy_from_b(&sim, "MANIFEST");
    let e = T4::open_blocking(sim_config(&sim.restart(), "/a")).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption { file, .. } if file.ends_with("MANIFEST")),
        "{e}"
    );
}

/// Issue: the headers of shard files a checkpoint created were written only
/// with the file; when that checkpoint's sync failed, the next checkpoint
/// found them (in clean pages that never reached the disk) and published a
/// manifest over files without headers, and recycled the log.
#[test]
fn a_checkpoint_after_a_failed_one_rewrites_what_that_one_could_not_sync() {
    let sim = SimStorage::new(8);
    let cfg = sim_config(&sim, "/h")
        .flush(FlushPolicy::Manual)
        .checkpoint(CheckpointPolicy::Manual);
    let t = T4::open_blocking(cfg).unwrap();
    let all = leaves(0..5000);
    block(async {
        for c in all.chunks(200) {
            t.insert_many(c).await.unwrap();
        }
        t.flush().await.unwrap();
        // The first sync after the empty manifest's is the first shard's.
        sim.fail_syncs_after(1);
        assert!(t.checkpoint().await.is_err());
        sim.clear_faults();
        t.checkpoint().await.unwrap();
    });
    drop(t);
    sim.crash_drop_all();
    check_whole(&sim, "/h", &all);
}

/// A storage whose directory syncs of `dir` fail once `after` more have
/// passed.
struct FailDirSync {
    sim: SimStorage,
    dir: PathBuf,
    after: AtomicU64,
}

impl Storage for FailDirSync {
    fn backend(&self) -> IoBackend {
        self.sim.backend()
    }
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn StorageFile>> {
        self.sim.open(path, create)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.sim.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        if path == self.dir {
            let left = self.after.load(Ordering::SeqCst);
            if left == 0 {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            self.after.store(left.saturating_sub(1), Ordering::SeqCst);
        }
        self.sim.sync_dir(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.sim.list(dir)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.sim.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.sim.rename(from, to)
    }
    fn exists(&self, path: &Path) -> bool {
        self.sim.exists(path)
    }
    fn lock(&self, path: &Path) -> std::io::Result<LockGuard> {
        self.sim.lock(path)
    }
}

/// Issue: a segment the preparer renamed into place, whose directory sync
/// then failed, was used by the committer as soon as its name existed:
/// a power loss could take the name and every group acknowledged in it.
#[test]
fn a_segment_is_written_only_once_its_name_is_durable() {
    for fail_at in 0..4u64 {
        let sim = SimStorage::new(9 + fail_at);
        let storage = Arc::new(FailDirSync {
            sim: sim.clone(),
            dir: PathBuf::from("/s/wal"),
            after: AtomicU64::new(u64::MAX),
        });
        let cfg = Config::new("/s")
            .storage(storage.clone())
            .segment_size(64 << 10)
            .buffer_capacity(16 << 10)
            .checkpoint(CheckpointPolicy::Manual);
        let t = T4::open_blocking(cfg).unwrap();
        // From here on: the preparer's directory syncs, failing from the
        // `fail_at`-th on.
        storage.after.store(fail_at, Ordering::SeqCst);
        let all = leaves(0..8000);
        let mut acked = 0;
        block(async {
            for l in &all {
                match t.insert_durable(*l).await {
                    Ok(_) => acked += 1,
                    Err(_) => break,
                }
            }
        });
        drop(t);
        sim.crash_drop_all();
        let t = T4::open_blocking(sim_config(&sim.restart(), "/s")).unwrap();
        assert!(
            t.size() >= acked,
            "fail at {fail_at}: {} < {acked}",
            t.size()
        );
        assert_eq!(t.root(), naive_root(4, &all[..t.size() as usize]));
    }
}

/// Issue: a failed background checkpoint was retried on every insert, and
/// reported nowhere but a log line.
#[test]
fn a_failing_background_checkpoint_backs_off_and_is_reported() {
    let sim = SimStorage::new(20);
    let cfg = sim_config(&sim, "/b")
        .checkpoint(CheckpointPolicy::EveryNEntries(100))
        .failpoint("shard-write");
    let t = T4::open_blocking(cfg).unwrap();
    block(async {
        for l in leaves(0..150) {
            t.insert(l).await.unwrap();
        }
    });
    let t0 = std::time::Instant::now();
    while t.metrics().checkpoint_failures == 0 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Many more inserts, each due for a checkpoint: held back.
    block(async {
        for l in leaves(150..3000) {
            t.insert(l).await.unwrap();
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(t.metrics().checkpoint_failures, 1);
    // Reported once, by the next flush; then flushes are fine again.
    let e = block(t.flush()).unwrap_err();
    assert!(
        matches!(&e, Error::CheckpointFailed(inner) if inner.to_string().contains("failpoint shard-write")),
        "{e}"
    );
    block(t.flush()).unwrap();
    block(t.close()).unwrap();
}

/// Issue: dropping or closing a log inside `futures::executor::block_on`
/// panicked (a nested executor), and aborted the process when unwinding.
#[test]
fn a_log_closes_and_drops_inside_an_executor() {
    use ringtree::{Log, LogConfig};
    for close in [false, true] {
        let sim: Arc<dyn Storage> = Arc::new(SimStorage::new(21));
        let log = Log::open(
            sim,
            Path::new("/l"),
            &LogConfig::default(),
            0,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        block(async move {
            let d = log.append(&[b"record"]).await.unwrap();
            if close {
                log.close().unwrap();
            }
            drop(log);
            d.await.unwrap();
        });
    }
    // And a tree, with durable waits inside the executor.
    let sim = SimStorage::new(22);
    let t = T4::open_blocking(sim_config(&sim, "/e")).unwrap();
    block(async move {
        let ins = t.insert(leaf(1)).await.unwrap();
        ins.durable.wait().unwrap();
        drop(t);
    });
}

/// Builds a tree of 300,000 leaves in `dir`, everything durable, no
/// checkpoint yet (level 0 alone is 2,344 chunks: three runs of writes).
fn big_tree(sim: &SimStorage, dir: &str) -> (T4, Vec<Hash>) {
    let cfg = sim_config(sim, dir)
        .buffer_capacity(1 << 20)
        .segment_size(4 << 20)
        .flush(FlushPolicy::Manual)
        .checkpoint(CheckpointPolicy::Manual);
    let t = T4::open_blocking(cfg).unwrap();
    let all = leaves(0..300_000);
    block(async {
        for c in all.chunks(10_000) {
            t.insert_many(c).await.unwrap();
        }
        t.flush().await.unwrap();
    });
    (t, all)
}

/// A checkpoint that failed, or whose process died, part way is resumed by
/// the next one past the chunks whose sync had passed, not started over;
/// and the result is whole after a power loss.
#[test]
fn an_interrupted_checkpoint_resumes_where_its_synced_chunks_end() {
    // The bytes a whole first checkpoint writes.
    let sim = SimStorage::new(30);
    let (t, _) = big_tree(&sim, "/r");
    let (b0, ops0) = (sim.bytes_written(), sim.ops());
    block(t.checkpoint()).unwrap();
    let whole = sim.bytes_written() - b0;
    let ops = sim.ops() - ops0;
    drop(t);

    // Failed at its third sync (the empty manifest's, then level 0's first
    // run, then its second): the next one in the same process resumes.
    let sim = SimStorage::new(30);
    let (t, all) = big_tree(&sim, "/r");
    sim.fail_syncs_after(2);
    assert!(block(t.checkpoint()).is_err());
    sim.clear_faults();
    let b = sim.bytes_written();
    block(t.checkpoint()).unwrap();
    let again = sim.bytes_written() - b;
    assert!(
        again + (3 << 20) < whole,
        "resumed: {again} bytes, a whole checkpoint {whole}"
    );
    drop(t);
    sim.crash_drop_all();
    check_whole(&sim, "/r", &all);

    // Killed half way: the next process resumes.
    let sim = SimStorage::new(30);
    let (t, all) = big_tree(&sim, "/r");
    sim.kill_at_op(ops / 2);
    assert!(block(t.checkpoint()).is_err());
    drop(t);
    let cfg = sim_config(&sim.restart(), "/r").checkpoint(CheckpointPolicy::Manual);
    let t = T4::open_blocking(cfg).unwrap();
    let b = sim.bytes_written();
    block(t.checkpoint()).unwrap();
    let again = sim.bytes_written() - b;
    assert!(again + (3 << 20) < whole, "resumed: {again} of {whole}");
    drop(t);
    sim.crash_drop_all();
    check_whole(&sim, "/r", &all);
}

/// An open that replays more log than the checkpoint policy allows
/// starts a checkpoint at once.
#[test]
fn a_long_replay_is_checkpointed_at_once() {
    let sim = SimStorage::new(31);
    let cfg = || {
        sim_config(&sim.restart(), "/q")
            .buffer_capacity(1 << 20)
            .segment_size(4 << 20)
            .checkpoint(CheckpointPolicy::WalBytes(1 << 20))
    };
    let t = T4::open_blocking(cfg().checkpoint(CheckpointPolicy::Manual)).unwrap();
    let all = leaves(0..60_000);
    block(async {
        for c in all.chunks(10_000) {
            t.insert_many(c).await.unwrap().durable.await.unwrap();
        }
    });
    drop(t);
    sim.kill();
    let t = T4::open_blocking(cfg()).unwrap();
    let t0 = std::time::Instant::now();
    while t.metrics().checkpoint_duration.count == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "no checkpoint: {:?} {:?}",
            t.metrics(),
            block(t.flush())
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    block(t.close()).unwrap();
    assert!(sim.restart().exists(Path::new("/q/MANIFEST")));
    check_whole(&sim, "/q", &all);
}

/// Issue: the cut of a torn tail at recovery zeroed what reads showed; when
/// that sync failed, the next open read the zeros (clean pages that never
/// reached the disk), went on writing from the cut, and a power loss could
/// then bring old frames back behind the new ones.
#[test]
fn a_torn_tail_cut_whose_sync_failed_is_cut_again() {
    let sim = SimStorage::new(40);
    // Through the page cache: a direct write pads its last block with
    // zeros, which would end the log right after the new records anyway
    // (unless they end on a block boundary).
    let cfg = || {
        sim_config(&sim.restart(), "/t")
            .direct_io(false)
            .flush(FlushPolicy::Manual)
            .checkpoint(CheckpointPolicy::Manual)
    };
    let t = T4::open_blocking(cfg()).unwrap();
    // 102 leaves: the lost group starts 312 bytes into a sector, so the
    // new records below end past that sector, on the lost group's sixth.
    let first = leaves(0..102);
    let lost = leaves(1000..1050);
    let x = block(async {
        for l in &first {
            t.insert(*l).await.unwrap();
        }
        t.flush().await.unwrap();
        let x = t.wal_position();
        // One group of 50 records, synced, whose first frame is then
        // damaged as a torn write would leave it: the group is a torn tail
        // (nothing after it was written).
        for l in &lost {
            t.insert(*l).await.unwrap();
        }
        t.flush().await.unwrap();
        x
    });
    sim.kill();
    drop(t);
    // The lost group's first sector never reached the disk: zeros there.
    let seg = wal_segments(&sim.restart(), "/t")[0].clone();
    let at = 4096 + x;
    for k in at..(at / 512 + 1) * 512 {
        let v = sim.live_bytes(&seg).unwrap()[k as usize];
        if v != 0 {
            sim.corrupt(&seg, k, v).unwrap();
        }
    }
    // The recovery's cut: its record syncs, its zeros' sync fails.
    sim.fail_syncs_after(1);
    assert!(T4::open_blocking(cfg()).is_err());
    sim.clear_faults();
    sim.kill();
    // The next open, then two durable batches of 2 and 3 leaves: two
    // records and two commit frames, 240 bytes, end exactly where the lost
    // group's sixth record starts, the one for the next leaf index; then a
    // power loss.
    let t = T4::open_blocking(cfg()).unwrap();
    assert_eq!(t.size(), 102);
    let new = leaves(2000..2005);
    block(async {
        t.insert_many(&new[..2]).await.unwrap();
        t.flush().await.unwrap();
        t.insert_many(&new[2..]).await.unwrap();
        t.flush().await.unwrap();
        assert_eq!(t.wal_position(), x + 5 * 48);
    });
    // No clean close (it would write a zero header at the end).
    sim.kill();
    drop(t);
    sim.crash_drop_all();
    let all: Vec<Hash> = first.iter().chain(&new).copied().collect();
    check_whole(&sim, "/t", &all);
}

/// After a crash, a bit flipped in the last acknowledged record, which no
/// later frame vouches for, is damage (every sector of it was written, in
/// a segment made of zeros), not a torn write to cut.
#[test]
fn a_flip_in_the_last_group_is_damage_not_a_torn_tail() {
    let sim = SimStorage::new(41);
    let t = T4::open_blocking(sim_config(&sim, "/f")).unwrap();
    let x = block(async {
        for l in leaves(0..99) {
            t.insert_durable(l).await.unwrap();
        }
        let x = t.wal_position();
        t.insert_durable(leaf(99)).await.unwrap();
        x
    });
    sim.kill();
    drop(t);
    let seg = wal_segments(&sim.restart(), "/f")[0].clone();
    sim.corrupt(&seg, 4096 + x + 30, 0x04).unwrap();
    let e = T4::open_blocking(sim_config(&sim.restart(), "/f")).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption { file, offset, .. } if *file == seg && *offset == 4096 + x),
        "{e}"
    );
}

/// Salvage (never the default): the longest intact prefix of a damaged
/// tree goes into a new one, and the report says which leaves are lost.
#[test]
fn salvage_keeps_the_longest_intact_prefix_and_names_the_loss() {
    // A damaged leaf chunk of the checkpoint: leaves 5120.. are lost.
    let sim = SimStorage::new(50);
    let t = T4::open_blocking(sim_config(&sim, "/d").checkpoint(CheckpointPolicy::Manual)).unwrap();
    let all = leaves(0..20_000);
    block(async {
        for c in all[..10_000].chunks(200) {
            t.insert_many(c).await.unwrap();
        }
        t.checkpoint().await.unwrap();
        for c in all[10_000..].chunks(200) {
            t.insert_many(c).await.unwrap();
        }
        t.close().await.unwrap();
    });
    sim.corrupt(
        Path::new("/d/shards/level-00.shard"),
        4096 + 40 * 4096 + 77,
        0x08,
    )
    .unwrap();
    let from = sim_config(&sim.restart(), "/d");
    let (s, report) = T4::salvage(&from, sim_config(&sim.restart(), "/s")).unwrap();
    assert_eq!((report.kept, report.lost()), (5120, 5120..10_000));
    let e = report.stopped_by.unwrap();
    assert!(
        matches!(&e, Error::Corruption { file, offset, .. }
            if file.ends_with("level-00.shard") && *offset == 4096 + 40 * 4096),
        "{e}"
    );
    assert_eq!(s.root(), naive_root(4, &all[..5120]));
    // The new tree is a tree: it goes on, checkpoints, reopens.
    block(async {
        s.insert_durable(leaf(7)).await.unwrap();
        s.checkpoint().await.unwrap();
        s.close().await.unwrap();
    });
    let mut want = all[..5120].to_vec();
    want.push(leaf(7));
    let s = T4::open_blocking(sim_config(&sim.restart(), "/s")).unwrap();
    assert_eq!(s.root(), naive_root(4, &want));
    // A target that holds a tree is refused.
    assert!(matches!(
        T4::salvage(&from, sim_config(&sim.restart(), "/s")),
        Err(Error::Config(_)) | Err(Error::Locked(_))
    ));
    drop(s);

    // Damage in the middle of a log that never checkpointed: the records
    // before it are kept; open refuses the tree.
    let sim = SimStorage::new(51);
    let all = several_segments(&sim, "/m", None);
    let seg = wal_segments(&sim, "/m")[1].clone();
    sim.corrupt(&seg, 4096 + 1000, 0x40).unwrap();
    assert!(T4::open_blocking(sim_config(&sim.restart(), "/m")).is_err());
    let from = sim_config(&sim.restart(), "/m");
    let (s, report) = T4::salvage(&from, sim_config(&sim.restart(), "/n")).unwrap();
    // Segment 0's records and segment 1's before the damage: how many
    // depends on how the group commits packed them (about 900 to 1,500).
    assert!(
        report.kept > 500 && report.kept < all.len() as u64,
        "{report:?}"
    );
    assert_eq!(report.known, report.kept);
    assert_eq!(
        report.stopped_by.as_ref().and_then(|e| e.file()),
        Some(seg.as_path())
    );
    assert_eq!(s.root(), naive_root(4, &all[..report.kept as usize]));
}

/// A damaged chunk of an internal level that appends still read (an arity
/// that does not divide 128 puts a group across two chunks) is repaired at
/// open, and appends read the repaired copy: the roots they make are right.
#[test]
fn appends_read_a_repaired_frontier_chunk_not_the_damaged_one() {
    type T3 = Tree<Blake3, 3, 32>;
    let sim = SimStorage::new(60);
    // 385 leaves: level 1 has 129 nodes, its last group (nodes 126..129)
    // straddles sealed chunk 0 and the tail.
    let all = leaves(0..400);
    let t = T3::open_blocking(sim_config(&sim, "/3")).unwrap();
    block(async {
        for c in all[..385].chunks(200) {
            t.insert_many(c).await.unwrap();
        }
        t.checkpoint().await.unwrap();
        t.close().await.unwrap();
    });
    sim.corrupt(
        Path::new("/3/shards/level-01.shard"),
        4096 + 127 * 32 + 5,
        0x10,
    )
    .unwrap();
    let t = T3::open_blocking(sim_config(&sim.restart(), "/3")).unwrap();
    assert_eq!(t.metrics().chunks_repaired, 1);
    block(async {
        for l in &all[385..] {
            let ins = t.insert(*l).await.unwrap();
            assert_eq!(Some(ins.root), naive_root(3, &all[..=ins.index as usize]));
        }
        t.checkpoint().await.unwrap();
        t.close().await.unwrap();
    });
    let t = T3::open_blocking(sim_config(&sim.restart(), "/3").verify_on_open(true)).unwrap();
    assert_eq!(t.root(), naive_root(3, &all));
}
