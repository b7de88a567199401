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

/// The most a group is staged at once; a larger group is written in
/// pieces of this size, then synced once.
const PIECE: usize = 1 << 20;

/// An aligned staging buffer and the block it holds.
pub(crate) struct Blocks {
    /// Backing memory; the aligned region is `mem[start..start + PIECE]`.
    mem: Vec<u8>,
    start: usize,
    /// File offset of the block whose bytes `[0, BLOCK)` of the buffer
    /// hold, when they are known to equal the file's.
    cached: Option<u64>,
}

impl Blocks {
    pub(crate) fn new() -> Self {
        Self {
            mem: Vec::new(),
            start: 0,
            cached: None,
        }
    }

    /// Forgets the cached block (another segment, or after a failure).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// The aligned staging area (allocated on first use).
    fn area(&mut self) -> io::Result<&mut [u8]> {
        if self.mem.is_empty() {
            let mem = vec![0u8; PIECE + BLOCK];
            let start = mem.as_ptr().align_offset(BLOCK);
            if start >= BLOCK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot align a staging buffer for direct writes",
                ));
            }
            self.mem = mem;
            self.start = start;
        }
        Ok(&mut self.mem[self.start..self.start + PIECE])
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
        let cached = self.cached.take() == Some(start);
        let area = self.area()?;
        if head > 0 && !cached {
            let n = file.read_at(start, &mut area[..head])?;
            area[n..head].fill(0);
        }
        // Piece by piece: [done, done + piece) of the aligned image, whose
        // byte `head + i` is byte `i` of the group.
        let mut done = 0;
        while done < total {
            let piece = (total - done).min(PIECE);
            let area = self.area()?;
            let from = done.max(head);
            let data = (from - head)..(done + piece).min(head + len) - head;
            copy_from(
                bufs,
                data.start,
                &mut area[from - done..from - done + data.len()],
            );
            area[from - done + data.len()..piece].fill(0);
            let at = start + done as u64;
            if done + piece == total {
                if done == 0 {
                    direct.write_sync(at, &[&area[..piece]])?;
                } else {
                    direct.write_at(at, &[&area[..piece]])?;
                    direct.sync_data()?;
                }
            } else {
                direct.write_at(at, &[&area[..piece]])?;
                // The next piece starts on a block boundary: no head.
            }
            done += piece;
        }
        if !(head + len).is_multiple_of(BLOCK) {
            // The next group starts in this group's last block: keep it.
            let last = (total - 1) % PIECE / BLOCK * BLOCK;
            let area = self.area()?;
            area.copy_within(last..last + BLOCK, 0);
            self.cached = Some(start + (total - BLOCK) as u64);
        }
        Ok(())
    }
}

/// Copies bytes `[from, from + dst.len())` of the concatenation of `bufs`
/// into `dst`.
fn copy_from(bufs: &[&[u8]], mut from: usize, mut dst: &mut [u8]) {
    for b in bufs {
        if dst.is_empty() {
            return;
        }
        if from >= b.len() {
            from -= b.len();
            continue;
        }
        let n = (b.len() - from).min(dst.len());
        dst[..n].copy_from_slice(&b[from..from + n]);
        dst = &mut dst[n..];
        from = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{SimStorage, Storage};
    use std::path::Path;

    #[test]
    fn groups_land_byte_exact_and_aligned() {
        const SIZE: usize = 3 * PIECE;
        let sim = SimStorage::new(1);
        let storage: &dyn Storage = &sim;
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        let file = storage.open(path, true).unwrap();
        file.write_at(0, &[&vec![0u8; SIZE]]).unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        // Bytes already on disk before the first group, in its block.
        file.write_at(0, &[&[7u8; 100]]).unwrap();
        let direct = storage.open_direct(path).unwrap().unwrap();
        let mut blocks = Blocks::new();
        let mut expect = vec![0u8; SIZE];
        expect[..100].fill(7);
        let mut off = 100u64;
        // Small groups, a group crossing blocks, one ending on a boundary,
        // one split over two slices; then one after forgetting the cache.
        for (i, len) in [10usize, 3000, 1500, 3582, 5000, 33, 2 * PIECE + 777, 900]
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
            let mut got = vec![0u8; SIZE];
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
