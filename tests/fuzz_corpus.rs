//! Replays the fuzz corpus kept in `fuzz/corpus/<target>/` (and any saved
//! crash in `fuzz/artifacts/<target>/`) through the fuzz targets' bodies on
//! stable Rust, without libFuzzer: every input must run without a panic, in
//! the test's thread or in any thread the crate starts.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` writes the
//! seed inputs (the template tree's files, real proofs) into the corpus.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Panic messages from every thread, recorded by the hook [`replay`]
/// installs, so a panic in a thread of the crate (which the crate may turn
/// into an error) still fails the input.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// One target at a time, so each recorded panic belongs to the input that
/// is running.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The inputs of `target`: its corpus and artifacts, sorted by path.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("read a corpus directory").path();
            if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn install_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed").to_owned();
            lock(&PANICS).push(format!("thread {name}: {info}"));
            previous(info);
        }));
    });
}

fn replay(target: &str) {
    let _one = lock(&ONE_AT_A_TIME);
    install_hook();
    let body = bodies::body(target);
    let inputs = inputs(target);
    assert!(
        !inputs.is_empty(),
        "no corpus for {target} in {}",
        fuzz_dir().display()
    );
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).expect("read a corpus input");
        lock(&PANICS).clear();
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&data)));
        let panics = std::mem::take(&mut *lock(&PANICS));
        if result.is_err() || !panics.is_empty() {
            failed.push(format!("{}:\n  {}", path.display(), panics.join("\n  ")));
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panicked:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

#[test]
fn wal_recovery_corpus() {
    replay("wal_recovery");
}

#[test]
fn checkpoint_load_corpus() {
    replay("checkpoint_load");
}

#[test]
fn proof_decode_corpus() {
    replay("proof_decode");
}

#[test]
fn consistency_decode_corpus() {
    replay("consistency_decode");
}

/// The file targets reach deep: the template itself (an empty overwrite of
/// each file, under several options) opens, serves its nodes and proofs,
/// takes an insert and a checkpoint, and reopens; removing a file, or
/// zeroing its first bytes, is refused or survived without a panic.
#[test]
fn unchanged_template_opens_and_reopens() {
    let _one = lock(&ONE_AT_A_TIME);
    install_hook();
    lock(&PANICS).clear();
    for target in ["wal_recovery", "checkpoint_load"] {
        let files = bodies::file_count(target);
        assert!(files >= 2, "{target}: {files} files to damage");
        for file in 0..files as u8 {
            for opts in [1, 1 | 4, 1 | 8, 1 | 16 | 32, 1 | 0x80, 1 | 4 | 0x80] {
                let got = bodies::reach(target, &[opts, file, 0, 0, 0, 0]);
                assert_eq!(
                    got,
                    bodies::Reached::Clean,
                    "{target} file {file} opts {opts}"
                );
            }
            bodies::reach(target, &[3, file]);
            bodies::reach(target, &[1, file, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
    }
    let panics = std::mem::take(&mut *lock(&PANICS));
    assert!(panics.is_empty(), "panics: {panics:#?}");
}

/// Writes every target's seed inputs into `fuzz/corpus/<target>/`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    for target in bodies::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in bodies::seeds(target) {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}
