//! The log buffer: a ring of bytes indexed by LSN, written by many threads
//! at once without locks.
//!
//! Owns the memory and the rules for touching it; knows nothing of files.
//!
//! A writer owns the bytes of the range it reserved until it publishes the
//! frame: it copies the payload in, then stores the frame's 8-byte header
//! with release ordering. A header that reads non-zero (acquire) therefore
//! means the whole frame is in place. The committer reads complete frames,
//! writes them out, and zeroes the range before handing it back for reuse,
//! so a stale header is never taken for a new one.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct Ring {
    words: Box<[AtomicU64]>,
    mask: u64,
}

impl Ring {
    /// A zeroed ring of `cap` bytes (a power of two, at least 8).
    pub(crate) fn new(cap: u64) -> Self {
        assert!(cap.is_power_of_two() && cap >= 8);
        Self {
            words: (0..cap / 8).map(|_| AtomicU64::new(0)).collect(),
            mask: cap - 1,
        }
    }

    pub(crate) fn cap(&self) -> u64 {
        self.mask + 1
    }

    fn base(&self) -> *mut u8 {
        self.words.as_ptr() as *mut u8
    }

    /// Copies `data` into the ring at `lsn`, wrapping at the end.
    ///
    /// # Safety
    /// The caller has reserved `[lsn, lsn + data.len())`, which is within one
    /// ring length of the committer's freed position, and has not published
    /// the frame yet: no other thread reads or writes these bytes.
    pub(crate) unsafe fn write(&self, lsn: u64, data: &[u8]) {
        let at = (lsn & self.mask) as usize;
        let first = data.len().min(self.cap() as usize - at);
        // SAFETY: `at + first <= cap` and `data.len() - first <= at`, so both
        // copies stay inside the ring; exclusivity is the caller's promise.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(at), first);
            std::ptr::copy_nonoverlapping(
                data.as_ptr().add(first),
                self.base(),
                data.len() - first,
            );
        }
    }

    /// Publishes the 8 header bytes of the frame at `lsn` (8-aligned).
    #[inline]
    pub(crate) fn publish(&self, lsn: u64, header: [u8; 8]) {
        debug_assert!(lsn.is_multiple_of(8));
        self.words[((lsn & self.mask) / 8) as usize]
            .store(u64::from_ne_bytes(header), Ordering::Release);
    }

    /// The 8 header bytes at `lsn`, all zero if no frame is published there.
    #[inline]
    pub(crate) fn header(&self, lsn: u64) -> [u8; 8] {
        self.words[((lsn & self.mask) / 8) as usize]
            .load(Ordering::Acquire)
            .to_ne_bytes()
    }

    /// `[a, b)` as (ring offset, length before the wrap, total length).
    fn split(&self, a: u64, b: u64) -> (usize, usize, usize) {
        assert!(
            a <= b && b - a <= self.cap(),
            "ring range [{a}, {b}) exceeds the ring"
        );
        let len = (b - a) as usize;
        let at = (a & self.mask) as usize;
        (at, len.min(self.cap() as usize - at), len)
    }

    /// The bytes of `[a, b)` as one or two slices.
    ///
    /// # Safety
    /// Every frame in `[a, b)` is published (its header was read with
    /// acquire ordering by this thread) and the range is not handed back for
    /// reuse while the slices live; `b - a <= cap`.
    pub(crate) unsafe fn slices(&self, a: u64, b: u64) -> [&[u8]; 2] {
        let (at, first, len) = self.split(a, b);
        // SAFETY: both ranges are inside the ring; no thread writes them
        // until they are handed back (the caller's promise).
        unsafe {
            [
                std::slice::from_raw_parts(self.base().add(at), first),
                std::slice::from_raw_parts(self.base(), len - first),
            ]
        }
    }

    /// Zeroes `[a, b)` before it is handed back for reuse.
    ///
    /// # Safety
    /// As for [`slices`](Self::slices), and no slice of the range is alive.
    pub(crate) unsafe fn zero(&self, a: u64, b: u64) {
        let (at, first, len) = self.split(a, b);
        // SAFETY: inside the ring, and exclusively the committer's now.
        unsafe {
            std::ptr::write_bytes(self.base().add(at), 0, first);
            std::ptr::write_bytes(self.base(), 0, len - first);
        }
    }
}
