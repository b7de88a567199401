#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::wal_recovery(data));

/// LeakSanitizer checks for leaks after an input while threads the crate
/// started and does not join (the threads `open`, `close` and `checkpoint`
/// run on, which hand their result back just before they exit) may still
/// be exiting. What such a thread's thread-locals own, its handle, and
/// glibc's record of its destructors are then reported as leaked, though
/// the thread's exit frees them. Those alone are suppressed; anything such
/// a thread still holds of a tree is reported, and stops the run.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const std::ffi::c_char {
    c"leak:__cxa_thread_atexit_impl\nleak:std::sys::thread_local::native::lazy\nleak:spawn_unchecked\n".as_ptr()
}
