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
//!
//! Built with `--cfg loom`, the payload bytes live in loom cells beside the
//! header words instead of in the words themselves (loom cannot see writes
//! through raw pointers), so that its checker flags a read or write of
//! payload bytes that no header load orders after their writer.

use crate::sync::{AtomicU64, Ordering};

pub(crate) struct Ring {
    words: Box<[AtomicU64]>,
    /// The payload bytes, one cell each (loom only: see the module doc).
    #[cfg(loom)]
    cells: Box<[loom::cell::UnsafeCell<u8>]>,
    mask: u64,
}

impl Ring {
    /// A zeroed ring of `cap` bytes (a power of two, at least 8).
    pub(crate) fn new(cap: u64) -> Self {
        assert!(cap.is_power_of_two() && cap >= 8);
        Self {
            words: (0..cap / 8).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            cells: (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
            mask: cap - 1,
        }
    }

    pub(crate) fn cap(&self) -> u64 {
        self.mask + 1
    }

    #[cfg(not(loom))]
    fn base(&self) -> *mut u8 {
        self.words.as_ptr() as *mut u8
    }

    /// Copies `data` into the ring at `lsn`, wrapping at the end.
    ///
    /// # Safety
    /// The caller has reserved `[lsn, lsn + data.len())`, which is within one
    /// ring length of the committer's freed position, and has not published
    /// the frame yet: no other thread reads or writes these bytes.
    #[cfg(not(loom))]
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
    #[cfg(not(loom))]
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
    #[cfg(not(loom))]
    pub(crate) unsafe fn zero(&self, a: u64, b: u64) {
        let (at, first, len) = self.split(a, b);
        // SAFETY: inside the ring, and exclusively the committer's now.
        unsafe {
            std::ptr::write_bytes(self.base().add(at), 0, first);
            std::ptr::write_bytes(self.base(), 0, len - first);
        }
    }
}

// SAFETY: the cells are read and written only under the reservation
// protocol (a writer owns its range until it publishes, the committer until
// it frees it), as the `std` build's bytes are; loom checks exactly that.
#[cfg(loom)]
unsafe impl Sync for Ring {}

/// The loom build's payload accesses: the same contracts as the `std`
/// build's, each byte through its cell.
#[cfg(loom)]
impl Ring {
    /// As the `std` build's `write`.
    ///
    /// # Safety
    /// As the `std` build's `write`.
    pub(crate) unsafe fn write(&self, lsn: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let at = ((lsn + i as u64) & self.mask) as usize;
            // SAFETY: the caller owns the byte (see the contract); loom
            // checks that claim.
            self.cells[at].with_mut(|p| unsafe { *p = b });
        }
    }

    /// The bytes of `[a, b)`, copied (a loom cell cannot lend a slice).
    ///
    /// # Safety
    /// As the `std` build's `slices`.
    pub(crate) unsafe fn read(&self, a: u64, b: u64) -> Vec<u8> {
        let (at, _, len) = self.split(a, b);
        (0..len)
            .map(|i| {
                let c = &self.cells[(at + i) & self.mask as usize];
                // SAFETY: published and not handed back (the caller's
                // promise); loom checks that claim.
                c.with(|p| unsafe { *p })
            })
            .collect()
    }

    /// Not in the loom build (a loom cell cannot lend a slice): the models
    /// read through [`read`](Self::read) and never run the file writes.
    ///
    /// # Safety
    /// As the `std` build's `slices`.
    pub(crate) unsafe fn slices(&self, _a: u64, _b: u64) -> [&[u8]; 2] {
        unimplemented!("the loom build of the ring lends no slices")
    }

    /// As the `std` build's `zero`: the header words too.
    ///
    /// # Safety
    /// As the `std` build's `zero`.
    pub(crate) unsafe fn zero(&self, a: u64, b: u64) {
        let (at, _, len) = self.split(a, b);
        for i in 0..len {
            let at = (at + i) & self.mask as usize;
            // SAFETY: exclusively the committer's (the caller's promise);
            // loom checks that claim.
            self.cells[at].with_mut(|p| unsafe { *p = 0 });
            if at.is_multiple_of(8) {
                // The `std` build writes these bytes without an atomic
                // store; ordered before reuse by the release of `freed`.
                self.words[at / 8].store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A frame written across the end of the ring reads back whole, its
    /// header included, and zeroing hands the bytes back clean.
    #[test]
    fn write_publish_read_zero_across_the_wrap() {
        let ring = Ring::new(64);
        let data: Vec<u8> = (1..=40).collect();
        // Header at 48, payload from 56 over the end to 32.
        // SAFETY: this thread alone uses the ring.
        unsafe { ring.write(56, &data) };
        ring.publish(48, [9; 8]);
        assert_eq!(ring.header(48), [9; 8]);
        // SAFETY: published above; nothing reuses it meanwhile.
        let [a, b] = unsafe { ring.slices(48, 96) };
        assert_eq!((a.len(), b.len()), (16, 32));
        assert_eq!(&a[..8], &[9; 8]);
        assert_eq!([&a[8..], b].concat(), data);
        // SAFETY: the slices are gone.
        unsafe { ring.zero(48, 96) };
        assert_eq!(ring.header(48), [0; 8]);
        // SAFETY: as above.
        let [a, b] = unsafe { ring.slices(0, 64) };
        assert!(a.iter().chain(b).all(|&x| x == 0));
    }

    /// A range of exactly one ring length is two full halves at most, and
    /// a longer one is refused.
    #[test]
    fn ranges_stay_within_the_ring() {
        let ring = Ring::new(32);
        // SAFETY: nothing is published or reused concurrently.
        let [a, b] = unsafe { ring.slices(40, 72) };
        assert_eq!((a.len(), b.len()), (24, 8));
        let r = std::panic::catch_unwind(|| {
            // SAFETY: as above (it panics before reading).
            let _ = unsafe { ring.slices(0, 33) };
        });
        assert!(r.is_err());
    }
}
