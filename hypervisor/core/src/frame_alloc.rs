//! Physical frame allocator: one bit per 4 KiB frame, built from the boot memory map.
//!
//! Written by hand because the allocator crates we know either only hand out single frames
//! (no free, no contiguous runs) or need `std`. A hypervisor needs both: single frames for
//! VMCS/VMCB and page tables, and aligned contiguous runs for 2 MiB guest pages and the heap.
//!
//! The bitmap covers physical memory from the lowest to the highest usable address; a set bit
//! means "not available" (used, reserved, or a hole in the memory map). The bitmap's storage is
//! handed in by the caller, who carves it out of usable RAM first (see [`FrameAllocator::plan`]);
//! the allocator then never sees its own storage as free because the caller lists it in
//! `reserved`.

use core::fmt;
use core::ops::Range;

/// Size of one frame.
pub const FRAME_SIZE: u64 = 4096;

const BITS: u64 = 64;

/// Why a free was refused. A refused free is a hypervisor bug; the kernel logs it loudly
/// rather than corrupt the bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not 4 KiB aligned.
    Unaligned(u64),
    /// The address is outside the memory the allocator manages.
    OutOfRange(u64),
    /// The frame was not allocated (double free, or a reserved frame).
    NotAllocated(u64),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::Unaligned(a) => write!(f, "frame address {a:#x} is not 4 KiB aligned"),
            FreeError::OutOfRange(a) => write!(f, "frame {a:#x} is outside managed memory"),
            FreeError::NotAllocated(a) => write!(f, "frame {a:#x} is not allocated (double free?)"),
        }
    }
}

/// What [`FrameAllocator::plan`] computed for a memory map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// First managed frame number.
    pub base_frame: u64,
    /// Number of managed frames (usable or not) from `base_frame` on.
    pub frames: u64,
    /// `u64` words the bitmap needs.
    pub bitmap_words: usize,
}

/// A bitmap frame allocator over caller-provided storage.
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    base_frame: u64,
    frames: u64,
    free: u64,
    usable: u64,
    /// Word index where the next single-frame search starts (next-fit keeps allocation O(1)
    /// amortised while memory is plentiful).
    hint: usize,
}

fn frame_range(r: &Range<u64>) -> Range<u64> {
    // Only whole frames inside the region count: round the start up and the end down.
    let start = r.start.div_ceil(FRAME_SIZE);
    let end = r.end / FRAME_SIZE;
    start..end.max(start)
}

impl<'a> FrameAllocator<'a> {
    /// Computes the size of the bitmap for the given usable regions (byte ranges).
    /// Returns `None` when there is no usable frame at all.
    pub fn plan(usable: &[Range<u64>]) -> Option<Plan> {
        let mut lo = u64::MAX;
        let mut hi = 0;
        for r in usable.iter().map(frame_range).filter(|r| !r.is_empty()) {
            lo = lo.min(r.start);
            hi = hi.max(r.end);
        }
        if lo >= hi {
            return None;
        }
        let frames = hi - lo;
        Some(Plan { base_frame: lo, frames, bitmap_words: frames.div_ceil(BITS) as usize })
    }

    /// Builds the allocator. `usable` are the byte ranges the memory map calls usable,
    /// `reserved` are byte ranges inside them that must never be handed out (the bitmap's
    /// own storage, the real-mode IVT at 0, ...). `bitmap` must hold `plan.bitmap_words` words.
    pub fn new(bitmap: &'a mut [u64], plan: &Plan, usable: &[Range<u64>], reserved: &[Range<u64>]) -> Self {
        assert!(bitmap.len() >= plan.bitmap_words, "bitmap storage too small");
        let bitmap = &mut bitmap[..plan.bitmap_words];
        bitmap.fill(u64::MAX);
        let mut a = FrameAllocator { bitmap, base_frame: plan.base_frame, frames: plan.frames, free: 0, usable: 0, hint: 0 };
        for r in usable {
            // Only the frames the plan manages: a range is clipped, not walked past them.
            let r = frame_range(r);
            for f in r.start.max(a.base_frame)..r.end.min(a.base_frame + a.frames) {
                if a.is_used(f) {
                    a.set_free(f);
                    a.free += 1;
                }
            }
        }
        for r in reserved {
            // A reserved range may cover partial frames: every frame it touches is withheld.
            let first = r.start / FRAME_SIZE;
            let last = r.end.div_ceil(FRAME_SIZE);
            for f in first..last {
                if a.in_range(f) && !a.is_used(f) {
                    a.set_used(f);
                    a.free -= 1;
                }
            }
        }
        a.usable = a.free;
        a
    }

    fn in_range(&self, frame: u64) -> bool {
        frame >= self.base_frame && frame < self.base_frame + self.frames
    }
    fn idx(&self, frame: u64) -> (usize, u64) {
        let i = frame - self.base_frame;
        ((i / BITS) as usize, i % BITS)
    }
    fn is_used(&self, frame: u64) -> bool {
        let (w, b) = self.idx(frame);
        self.bitmap[w] & (1 << b) != 0
    }
    fn set_used(&mut self, frame: u64) {
        let (w, b) = self.idx(frame);
        self.bitmap[w] |= 1 << b;
    }
    fn set_free(&mut self, frame: u64) {
        let (w, b) = self.idx(frame);
        self.bitmap[w] &= !(1 << b);
    }

    /// Frames available now.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Frames that were available when the allocator was built (usable RAM less reservations).
    pub fn usable_frames(&self) -> u64 {
        self.usable
    }

    /// Allocates one frame and returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        let words = self.bitmap.len();
        for n in 0..words {
            let w = (self.hint + n) % words;
            let word = self.bitmap[w];
            if word != u64::MAX {
                let bit = (!word).trailing_zeros() as u64;
                let frame = self.base_frame + w as u64 * BITS + bit;
                // Bits past `frames` in the last word are set at construction, so a clear bit
                // is always a managed frame.
                self.set_used(frame);
                self.free -= 1;
                self.hint = w;
                return Some(frame * FRAME_SIZE);
            }
        }
        None
    }

    /// Allocates `count` physically contiguous frames whose first address is a multiple of
    /// `align` bytes (a power of two, at least 4 KiB) and whose last byte lies below `limit`
    /// (exclusive; `u64::MAX` for no limit). First fit from the bottom.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64, limit: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() || align < FRAME_SIZE {
            return None;
        }
        let align_frames = align / FRAME_SIZE;
        let end = (self.base_frame + self.frames).min(limit / FRAME_SIZE);
        let mut start = self.base_frame.next_multiple_of(align_frames);
        // Each try moves `start` up by a frame at least, so `end` tries are more than enough:
        // the bound makes the search end even if a jump did not advance.
        for _ in 0..end {
            if start + count > end {
                break;
            }
            // Find the highest used frame in [start, start+count); jump past it if any.
            match (start..start + count).rev().find(|&f| self.is_used(f)) {
                None => {
                    for f in start..start + count {
                        self.set_used(f);
                    }
                    self.free -= count;
                    return Some(start * FRAME_SIZE);
                }
                Some(used) => start = (used + 1).next_multiple_of(align_frames),
            }
        }
        None
    }

    /// Adds `count` frames from `addr` that were not usable when the allocator was built
    /// (memory the bootloader used and Bastion no longer needs) to the free and usable
    /// counts. The caller guarantees they are not usable RAM the allocator manages: the
    /// bitmap cannot tell a hole from an allocated frame. Nothing is adopted unless every
    /// frame is managed and unavailable now.
    pub fn adopt(&mut self, addr: u64, count: u64) -> Result<(), FreeError> {
        self.free_contiguous(addr, count)?;
        self.usable += count;
        Ok(())
    }

    /// Returns one frame.
    pub fn free(&mut self, addr: u64) -> Result<(), FreeError> {
        self.free_contiguous(addr, 1)
    }

    /// Returns `count` contiguous frames starting at `addr`. Nothing is freed unless every
    /// frame in the run is currently allocated.
    pub fn free_contiguous(&mut self, addr: u64, count: u64) -> Result<(), FreeError> {
        if addr % FRAME_SIZE != 0 {
            return Err(FreeError::Unaligned(addr));
        }
        let first = addr / FRAME_SIZE;
        for f in first..first + count {
            if !self.in_range(f) {
                return Err(FreeError::OutOfRange(f * FRAME_SIZE));
            }
            if !self.is_used(f) {
                return Err(FreeError::NotAllocated(f * FRAME_SIZE));
            }
        }
        for f in first..first + count {
            self.set_free(f);
        }
        self.free += count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn build(usable: &[Range<u64>]) -> (Vec<u64>, Plan) {
        let plan = FrameAllocator::plan(usable).unwrap();
        (vec![0u64; plan.bitmap_words], plan)
    }

    #[test]
    fn plan_covers_lowest_to_highest_whole_frames() {
        let plan = FrameAllocator::plan(&[0x1800..0x5000, 0x10_0000..0x20_0000]).unwrap();
        assert_eq!(plan.base_frame, 2, "partial frame at 0x1800 must be skipped");
        assert_eq!(plan.frames, 0x200 - 2);
        assert_eq!(plan.bitmap_words, (0x200usize - 2).div_ceil(64));
        assert_eq!(FrameAllocator::plan(&[0x1001..0x1fff]), None);
        assert_eq!(FrameAllocator::plan(&[]), None);
    }

    #[test]
    fn counts_only_usable_frames_and_never_hands_out_holes() {
        let usable = [0x1000..0x4000, 0x8000..0xa000];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        assert_eq!(a.free_frames(), 5);
        let mut got: Vec<u64> = (0..5).map(|_| a.alloc().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0x1000, 0x2000, 0x3000, 0x8000, 0x9000]);
        assert_eq!(a.alloc(), None, "the hole 0x4000..0x8000 must never be handed out");
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn reserved_ranges_are_withheld_even_partially_covered_frames() {
        let usable = [0..16 * FRAME_SIZE];
        let (mut bm, plan) = build(&usable);
        let reserved = [0..FRAME_SIZE, 5 * FRAME_SIZE + 10..6 * FRAME_SIZE + 1];
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &reserved);
        assert_eq!(a.usable_frames(), 16 - 1 - 2);
        // At most one more call than there are frames: a broken alloc fails, not hangs.
        let seen: Vec<u64> = core::iter::from_fn(|| a.alloc()).take(17).collect();
        assert!(!seen.contains(&0));
        assert!(!seen.contains(&(5 * FRAME_SIZE)));
        assert!(!seen.contains(&(6 * FRAME_SIZE)));
        assert_eq!(seen.len(), 13);
    }

    #[test]
    fn free_returns_frames_and_rejects_double_free() {
        let usable = [0x10_0000..0x10_0000 + 8 * FRAME_SIZE];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        let f = a.alloc().unwrap();
        assert_eq!(a.free_frames(), 7);
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free_frames(), 8);
        assert_eq!(a.free(f), Err(FreeError::NotAllocated(f)));
        assert_eq!(a.free(f + 1), Err(FreeError::Unaligned(f + 1)));
        assert_eq!(a.free(0), Err(FreeError::OutOfRange(0)));
        assert_eq!(a.free_frames(), 8, "refused frees must not change the count");
        // What the kernel logs for each: the address and the reason.
        assert_eq!(FreeError::NotAllocated(0x5000).to_string(), "frame 0x5000 is not allocated (double free?)");
        assert_eq!(FreeError::Unaligned(0x5001).to_string(), "frame address 0x5001 is not 4 KiB aligned");
        assert_eq!(FreeError::OutOfRange(0).to_string(), "frame 0x0 is outside managed memory");
    }

    #[test]
    fn contiguous_runs_are_aligned_skip_used_frames_and_respect_limit() {
        let usable = [0..8 * MIB];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[0..FRAME_SIZE]);
        // Frame 0 is reserved, so the first 2 MiB-aligned run of 512 frames starts at 2 MiB.
        let free = a.free_frames();
        let big = a.alloc_contiguous(512, 2 * MIB, u64::MAX).unwrap();
        assert_eq!(big, 2 * MIB);
        assert_eq!(a.free_frames(), free - 512, "a run is counted as used");
        let big2 = a.alloc_contiguous(512, 2 * MIB, u64::MAX).unwrap();
        assert_eq!(big2, 4 * MIB);
        // A limit that leaves no room fails instead of returning memory above it.
        assert_eq!(a.alloc_contiguous(512, 2 * MIB, 6 * MIB), None);
        let low = a.alloc_contiguous(4, FRAME_SIZE, MIB).unwrap();
        assert!(low + 4 * FRAME_SIZE <= MIB && low >= FRAME_SIZE);
        assert_eq!(a.free_contiguous(big, 512), Ok(()));
        assert_eq!(a.alloc_contiguous(512, 2 * MIB, u64::MAX), Some(2 * MIB));
        assert_eq!(a.alloc_contiguous(0, FRAME_SIZE, u64::MAX), None);
        assert_eq!(a.alloc_contiguous(1, 3 * FRAME_SIZE, u64::MAX), None);
    }

    #[test]
    fn a_run_may_end_at_the_last_frame_and_one_past_it_does_not_fit() {
        // Frames 1..8 (base 1, 7 frames); runs aligned to 4 frames start at frame 4.
        let usable = [0x1000..0x8000];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        assert_eq!(a.alloc_contiguous(5, 4 * FRAME_SIZE, u64::MAX), None, "4..9 runs past frame 7");
        assert_eq!(a.alloc_contiguous(4, 4 * FRAME_SIZE, u64::MAX), Some(0x4000), "4..8 ends at the last frame");
        assert_eq!(a.free_frames(), 3);
    }

    #[test]
    fn contiguous_free_is_all_or_nothing() {
        let usable = [0x1000..0x9000];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        let run = a.alloc_contiguous(3, FRAME_SIZE, u64::MAX).unwrap();
        a.free(run + FRAME_SIZE).unwrap();
        let before = a.free_frames();
        assert_eq!(a.free_contiguous(run, 3), Err(FreeError::NotAllocated(run + FRAME_SIZE)));
        assert_eq!(a.free_frames(), before);
        assert!(a.is_used(run / FRAME_SIZE), "first frame must still be allocated");
    }

    #[test]
    fn adopted_holes_become_usable_and_free_once() {
        // A hole at 0x4000..0x8000 (the bootloader's, say) between two usable regions.
        let usable = [0x1000..0x4000, 0x8000..0xa000];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        assert_eq!((a.free_frames(), a.usable_frames()), (5, 5));
        assert_eq!(a.adopt(0x5000, 2), Ok(()));
        assert_eq!((a.free_frames(), a.usable_frames()), (7, 7));
        assert_eq!(a.adopt(0x6000, 1), Err(FreeError::NotAllocated(0x6000)), "adopted twice");
        assert_eq!(a.adopt(0x4000, 3), Err(FreeError::NotAllocated(0x5000)), "all or nothing");
        assert_eq!(a.adopt(0xa000, 1), Err(FreeError::OutOfRange(0xa000)));
        assert_eq!(a.adopt(0x4001, 1), Err(FreeError::Unaligned(0x4001)));
        assert_eq!((a.free_frames(), a.usable_frames()), (7, 7));
        let mut got: Vec<u64> = core::iter::from_fn(|| a.alloc()).take(8).collect();
        got.sort();
        assert_eq!(got, vec![0x1000, 0x2000, 0x3000, 0x5000, 0x6000, 0x8000, 0x9000]);
    }

    #[test]
    fn large_map_allocates_every_frame_exactly_once() {
        let usable = [0x1000..MIB, 2 * MIB..3 * MIB + 0x800];
        let (mut bm, plan) = build(&usable);
        let mut a = FrameAllocator::new(&mut bm, &plan, &usable, &[]);
        let total = a.free_frames();
        assert_eq!(total, 255 + 256);
        let mut all = std::collections::BTreeSet::new();
        for f in core::iter::from_fn(|| a.alloc()).take(total as usize + 1) {
            assert!(all.insert(f), "frame {f:#x} handed out twice");
            assert!(usable.iter().any(|r| f >= r.start && f + FRAME_SIZE <= r.end));
        }
        assert_eq!(all.len() as u64, total);
    }
}
