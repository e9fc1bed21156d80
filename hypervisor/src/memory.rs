//! Host memory: the physical frame allocator (built from the boot memory map), the kernel
//! heap, and access to physical memory through the bootloader's full mapping of it.

use bastion_core::frame_alloc::{FrameAllocator, FRAME_SIZE};
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

const MIB: u64 = 1 << 20;
/// Regions beyond this count are ignored (and reported); firmware maps have a few dozen.
const MAX_REGIONS: usize = 256;

/// Kernel heap size: enough for tables, device models and the bundle index. Guest memory
/// never comes from the heap; it comes from the frame allocator in whole frames.
const HEAP_SIZE: u64 = 16 * MIB;

/// What memory setup found, for the banner.
pub struct MemoryInfo {
    pub usable_bytes: u64,
    pub regions: usize,
    pub heap_bytes: u64,
}

/// Virtual address of a physical address, through the bootloader's physical-memory mapping.
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + phys) as *mut u8
}

pub fn set_phys_offset(offset: u64) {
    PHYS_OFFSET.store(offset, Ordering::Relaxed);
}

#[derive(Debug)]
pub enum MemoryError {
    NoUsableMemory,
    NoRoomForBitmap(u64),
    NoRoomForHeap,
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemoryError::NoUsableMemory => write!(f, "the boot memory map lists no usable RAM"),
            MemoryError::NoRoomForBitmap(b) => write!(f, "no usable region can hold the {b}-byte frame bitmap"),
            MemoryError::NoRoomForHeap => write!(f, "no contiguous RAM for the kernel heap"),
        }
    }
}

/// Builds the frame allocator and the heap. Must run once, before any heap allocation.
pub fn init(regions: &MemoryRegions) -> Result<MemoryInfo, MemoryError> {
    let mut usable = [const { 0..0 }; MAX_REGIONS];
    let mut n = 0;
    for r in regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        if n == MAX_REGIONS {
            log::warn!("memory map has more than {MAX_REGIONS} usable regions; the rest is unused");
            break;
        }
        usable[n] = r.start..r.end;
        n += 1;
    }
    let usable = &usable[..n];
    let plan = FrameAllocator::plan(usable).ok_or(MemoryError::NoUsableMemory)?;
    let bitmap_bytes = plan.bitmap_words as u64 * 8;
    // The bitmap lives in the first usable region above 1 MiB that can hold it (low memory
    // is kept for real-mode trampolines).
    let home = usable
        .iter()
        .map(|r| r.start.max(MIB).next_multiple_of(FRAME_SIZE)..r.end)
        .find(|r| r.start + bitmap_bytes <= r.end)
        .ok_or(MemoryError::NoRoomForBitmap(bitmap_bytes))?;
    let bitmap_range: Range<u64> = home.start..home.start + bitmap_bytes;
    // SAFETY: the range is usable RAM nobody else uses, mapped through the physical-memory
    // mapping, and it is withheld from the allocator below for the rest of the run.
    let bitmap = unsafe {
        core::slice::from_raw_parts_mut(phys_to_virt(bitmap_range.start) as *mut u64, plan.bitmap_words)
    };
    // Frame 0 holds the real-mode IVT and doubles as "null": never hand it out.
    let alloc = FrameAllocator::new(bitmap, &plan, usable, &[0..FRAME_SIZE, bitmap_range]);
    let usable_bytes = usable.iter().map(|r| r.end - r.start).sum();
    *FRAMES.lock() = Some(alloc);

    let heap_bytes = [HEAP_SIZE, HEAP_SIZE / 2, HEAP_SIZE / 4]
        .into_iter()
        .find_map(|size| alloc_contiguous(size / FRAME_SIZE, FRAME_SIZE).map(|p| (p, size)));
    let (heap_phys, heap_bytes) = heap_bytes.ok_or(MemoryError::NoRoomForHeap)?;
    // SAFETY: the frames were just allocated for the heap alone and stay allocated.
    unsafe { HEAP.lock().init(phys_to_virt(heap_phys), heap_bytes as usize) };
    Ok(MemoryInfo { usable_bytes, regions: n, heap_bytes })
}

/// Allocates one zeroed frame.
pub fn alloc_frame_zeroed() -> Option<u64> {
    alloc_zeroed(1, FRAME_SIZE)
}

/// Allocates `frames` contiguous zeroed frames aligned to `align` bytes.
pub fn alloc_zeroed(frames: u64, align: u64) -> Option<u64> {
    let p = alloc_contiguous(frames, align)?;
    // SAFETY: fresh frames, mapped through the physical-memory mapping.
    unsafe { core::ptr::write_bytes(phys_to_virt(p), 0, (frames * FRAME_SIZE) as usize) };
    Some(p)
}

/// Returns frames. A refused free is a Bastion bug: it is logged, never ignored silently.
pub fn free(phys: u64, frames: u64) {
    if let Some(a) = FRAMES.lock().as_mut() {
        if let Err(e) = a.free_contiguous(phys, frames) {
            log::error!("BUG: frame free refused: {e}");
        }
    }
}

/// A 4 KiB page of physical memory as a typed reference.
///
/// # Safety
/// `phys` must be a frame the caller owns, and `T` must fit in it.
pub unsafe fn frame_mut<T>(phys: u64) -> &'static mut T {
    // SAFETY: per the contract.
    unsafe { &mut *(phys_to_virt(phys) as *mut T) }
}

/// Allocates `frames` contiguous zeroed frames that end below `limit`.
pub fn alloc_below(frames: u64, align: u64, limit: u64) -> Option<u64> {
    let p = FRAMES.lock().as_mut()?.alloc_contiguous(frames, align, limit)?;
    // SAFETY: fresh frames, mapped through the physical-memory mapping.
    unsafe { core::ptr::write_bytes(phys_to_virt(p), 0, (frames * FRAME_SIZE) as usize) };
    Some(p)
}

/// Allocates `frames` contiguous frames aligned to `align` bytes.
pub fn alloc_contiguous(frames: u64, align: u64) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc_contiguous(frames, align, u64::MAX)
}

/// Next free address of the MMIO window: the top 512 GiB slot below the recursive-mapping
/// area, which the bootloader leaves unused (it maps everything in the lower half).
static MMIO_NEXT: AtomicU64 = AtomicU64::new(0xffff_fe00_0000_0000);

struct TableFrames;

// SAFETY: frames come from the frame allocator, zeroed, and are never handed out twice.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<x86_64::structures::paging::PhysFrame> {
        alloc_frame_zeroed().map(|p| x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(p)))
    }
}

/// Maps `len` bytes of device memory at `phys` uncached (PCD|PWT: strong uncacheable with the
/// default PAT, SDM Vol. 3A 12.12.3) and returns the virtual address.
pub fn map_mmio(phys: u64, len: u64) -> Option<u64> {
    use x86_64::structures::paging::{Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame, Size4KiB};
    let pages = len.div_ceil(FRAME_SIZE);
    let virt = MMIO_NEXT.fetch_add(pages * FRAME_SIZE, Ordering::Relaxed);
    let (l4, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: the active level-4 table, reached through the physical mapping; only this
    // function adds mappings, in a range nothing else uses.
    let mut mapper = unsafe {
        let table = &mut *(phys_to_virt(l4.start_address().as_u64()) as *mut PageTable);
        OffsetPageTable::new(table, x86_64::VirtAddr::new(PHYS_OFFSET.load(Ordering::Relaxed)))
    };
    for i in 0..pages {
        let page = Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(virt + i * FRAME_SIZE));
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(phys + i * FRAME_SIZE));
        let flags = F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH;
        // SAFETY: device memory mapped at a fresh address; nothing aliases it as RAM.
        unsafe { mapper.map_to(page, frame, flags, &mut TableFrames) }.ok()?.flush();
    }
    Some(virt + (phys % FRAME_SIZE))
}

/// Frames free right now.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}
