//! Group writes around the page cache: the committer's staging buffer for
//! a segment opened with [`Storage::open_direct`](crate::io::Storage::open_direct).
//!
//! A direct write must start and end on a block boundary, so a group that
//! begins inside a block rewrites that block's earlier bytes (already
//! durable) with the same values, and a group that ends inside a block pads
//! it with zeros (what the pre-zeroed segment holds there). The block a
//! group ends in is kept, so the next group need not read it back.
//!
//! Rewriting durable bytes with identical ones is safe under a torn write:
//! each sector holds either its old or its new contents, which agree.

use std::io;

use crate::io::{DIRECT_ALIGN, StorageFile};

const BLOCK: usize = DIRECT_ALIGN;

/// An aligned staging buffer and the block it holds.
pub(crate) struct Blocks {
    /// Backing memory; the aligned region starts at `start`.
    mem: Vec<u8>,
    start: usize,
    /// Usable aligned bytes from `start`.
    cap: usize,
    /// File offset of the block whose bytes `[0, BLOCK)` of the buffer
    /// hold, when they are known to equal the file's.
    cached: Option<u64>,
}

impl Blocks {
    pub(crate) fn new() -> Self {
        let mut b = Self {
            mem: Vec::new(),
            start: 0,
            cap: 0,
            cached: None,
        };
        b.reserve(64 << 10);
        b
    }

    /// Forgets the cached block (another segment, or after a failure).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// Makes room for `len` aligned bytes, keeping the first block.
    fn reserve(&mut self, len: usize) {
        if len <= self.cap {
            return;
        }
        let cap = len.next_power_of_two().max(2 * BLOCK);
        let mut mem = vec![0u8; cap + BLOCK];
        let start = mem.as_ptr().align_offset(BLOCK);
        if self.cap > 0 {
            mem[start..start + BLOCK].copy_from_slice(&self.mem[self.start..self.start + BLOCK]);
        }
        self.mem = mem;
        self.start = start;
        self.cap = cap;
    }

    fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.mem[self.start..self.start + len]
    }

    /// Writes `bufs` at file offset `off` through `direct` and syncs it;
    /// `file` (a buffered handle of the same file) supplies the bytes
    /// before `off` in its block when they are not cached.
    pub(crate) fn write_sync(
        &mut self,
        direct: &dyn StorageFile,
        file: &dyn StorageFile,
        off: u64,
        bufs: &[&[u8]],
    ) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let start = off & !(BLOCK as u64 - 1);
        let head = (off - start) as usize;
        let total = (head + len).next_multiple_of(BLOCK);
        self.reserve(total);
        if head > 0 && self.cached != Some(start) {
            let n = file.read_at(start, &mut self.buf(head)[..])?;
            self.buf(head)[n..].fill(0);
        }
        self.cached = None;
        let buf = self.buf(total);
        let mut at = head;
        for b in bufs {
            buf[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        buf[at..].fill(0);
        direct.write_sync(start, &[&*buf])?;
        if !(head + len).is_multiple_of(BLOCK) {
            // The next group starts in this group's last block: keep it.
            let last = total - BLOCK;
            buf.copy_within(last..total, 0);
            self.cached = Some(start + last as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{SimStorage, Storage};
    use std::path::Path;

    #[test]
    fn groups_land_byte_exact_and_aligned() {
        let sim = SimStorage::new(1);
        let storage: &dyn Storage = &sim;
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        let file = storage.open(path, true).unwrap();
        file.write_at(0, &[&[0u8; 5 * BLOCK]]).unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        // Bytes already on disk before the first group, in its block.
        file.write_at(0, &[&[7u8; 100]]).unwrap();
        let direct = storage.open_direct(path).unwrap().unwrap();
        let mut blocks = Blocks::new();
        let mut expect = vec![0u8; 5 * BLOCK];
        expect[..100].fill(7);
        let mut off = 100u64;
        // Small groups, a group crossing blocks, one ending on a boundary,
        // one split over two slices; then one after forgetting the cache.
        for (i, len) in [10usize, 3000, 1500, 3582, 5000, 33]
            .into_iter()
            .enumerate()
        {
            if i == 5 {
                blocks.forget();
            }
            let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8 | 1).collect();
            let (a, b) = data.split_at(len / 3);
            blocks.write_sync(&*direct, &*file, off, &[a, b]).unwrap();
            expect[off as usize..off as usize + len].copy_from_slice(&data);
            off += len as u64;
            let mut got = vec![0u8; 5 * BLOCK];
            file.read_at(0, &mut got).unwrap();
            assert_eq!(got, expect, "after group {i}");
        }
        assert_eq!(sim.durable_bytes(path).unwrap(), expect);
    }

    #[test]
    fn unaligned_direct_writes_are_refused() {
        let sim = SimStorage::new(1);
        let storage: &dyn Storage = &sim;
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        storage.open(path, true).unwrap();
        let direct = storage.open_direct(path).unwrap().unwrap();
        let e = direct.write_at(100, &[&[1u8; 10]]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(22));
    }
}
