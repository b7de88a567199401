#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::checkpoint_load(data));

/// LeakSanitizer checks for leaks after an input while threads the crate
/// started and does not join (the verifier an open starts, the threads
/// `close` and `checkpoint` run on) may still be exiting. What such a
/// thread's thread-locals own, and glibc's record of their destructors, is
/// then reported as leaked, though the thread's exit frees it. Those alone
/// are suppressed; any other leak still stops the run.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const std::ffi::c_char {
    c"leak:__cxa_thread_atexit_impl\nleak:std::sys::thread_local::native::lazy\n".as_ptr()
}
