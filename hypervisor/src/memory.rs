//! Host memory: the physical frame allocator (built from the boot memory map), the kernel
//! heap, access to physical memory through the bootloader's full mapping of it, and what
//! Bastion holds of the host's RAM (its footprint).
//!
//! The heap is a virtual window at the start of a PML4 slot the bootloader leaves unused
//! ([`KERNEL_WINDOW`]); it starts small and grows at its top by mapping frames from the frame
//! allocator behind it, one 4 KiB page at a time (sizes and steps: `bastion_core::hostmem`).
//! Chosen over a `GlobalAlloc` that adds a separate region for each growth: one contiguous
//! heap lets `linked_list_allocator` (`Heap::extend`) merge free space across growths and
//! serve an allocation larger than any one step, and growing never needs physically
//! contiguous frames, so fragmented memory cannot make it fail while frames remain. The
//! price is a page-table frame per 2 MiB of heap and 4 KiB TLB entries.

use bastion_core::frame_alloc::{FrameAllocator, FRAME_SIZE};
use bastion_core::hostmem::{self, Footprint};
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::alloc::{GlobalAlloc, Layout};
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::Heap;
use spin::Mutex;
use x86_64::structures::paging::{Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(HeapState { heap: Heap::empty(), mapped: 0, tables: 0, peak: 0 }));

static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
/// Held while page tables change (heap growth, MMIO mappings). Lock order: heap, page
/// tables, frames.
static PAGE_TABLES: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;
/// Regions beyond this count are ignored (and reported); firmware maps have a few dozen.
const MAX_REGIONS: usize = 256;

/// Bastion's own virtual addresses: the top 512 GiB slot below the recursive-mapping area,
/// which the bootloader leaves unused (it maps everything in the lower half). The heap
/// starts at its bottom; MMIO mappings follow [`HEAP_WINDOW`] bytes later.
const KERNEL_WINDOW: u64 = 0xffff_fe00_0000_0000;
/// Most the heap can grow to (virtual; only what it uses is backed by frames).
const HEAP_WINDOW: u64 = 256 << 30;
/// Free frames only the heap may take (see `hostmem::HEAP_RESERVE`).
const RESERVE_FRAMES: u64 = hostmem::HEAP_RESERVE / FRAME_SIZE;

/// What memory setup found, for the banner.
pub struct MemoryInfo {
    pub usable_bytes: u64,
    pub regions: usize,
    pub heap_bytes: u64,
}

/// Usable RAM in whole frames, the bootloader's memory for Bastion, and the bundle's, in
/// bytes (for the footprint).
static USABLE: AtomicU64 = AtomicU64::new(0);
static BOOT: AtomicU64 = AtomicU64::new(0);
static BUNDLE: AtomicU64 = AtomicU64::new(0);
/// Frames holding guest RAM now.
static GUEST_RAM_FRAMES: AtomicU64 = AtomicU64::new(0);
/// The footprint with no guests ([`mark_baseline`]); `u64::MAX` until then.
static BASELINE: AtomicU64 = AtomicU64::new(u64::MAX);

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
    HeapWindowInUse,
    NoRoomForHeap,
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemoryError::NoUsableMemory => write!(f, "the boot memory map lists no usable RAM"),
            MemoryError::NoRoomForBitmap(b) => write!(f, "no usable region can hold the {b}-byte frame bitmap"),
            MemoryError::HeapWindowInUse => write!(f, "the bootloader uses the page-table slot of the kernel heap ({KERNEL_WINDOW:#x})"),
            MemoryError::NoRoomForHeap => write!(f, "no RAM for the first {} KiB of the kernel heap", hostmem::HEAP_INITIAL / 1024),
        }
    }
}

/// Builds the frame allocator and the heap. Must run once, before any heap allocation.
/// `ramdisk_len` is the bundle's size (the bootloader's memory minus it is Bastion's).
pub fn init(regions: &MemoryRegions, ramdisk_len: u64) -> Result<MemoryInfo, MemoryError> {
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
    let usable_bytes: u64 = usable.iter().map(|r| r.end - r.start).sum();
    let whole_frames: u64 = usable.iter().map(|r| (r.end / FRAME_SIZE).saturating_sub(r.start.div_ceil(FRAME_SIZE))).sum();
    USABLE.store(whole_frames * FRAME_SIZE, Ordering::Relaxed);
    let loader: u64 = regions.iter().filter(|r| r.kind == MemoryRegionKind::Bootloader).map(|r| r.end - r.start).sum();
    let bundle = ramdisk_len.next_multiple_of(FRAME_SIZE);
    BUNDLE.store(bundle, Ordering::Relaxed);
    BOOT.store(loader.saturating_sub(bundle), Ordering::Relaxed);
    *FRAMES.lock() = Some(alloc);

    // SAFETY: the active level-4 table, read through the physical mapping.
    let slot_used = unsafe { !active_mapper().level_4_table()[VirtAddr::new(KERNEL_WINDOW).p4_index()].is_unused() };
    if slot_used {
        return Err(MemoryError::HeapWindowInUse);
    }
    let heap_bytes = {
        let mut heap = HEAP.0.lock();
        if heap.grow(hostmem::HEAP_INITIAL) < hostmem::HEAP_INITIAL {
            return Err(MemoryError::NoRoomForHeap);
        }
        heap.mapped
    };
    let reclaimed = rebuild_phys_map(regions);
    BOOT.fetch_sub(reclaimed, Ordering::Relaxed);
    USABLE.fetch_add(reclaimed, Ordering::Relaxed);
    Ok(MemoryInfo { usable_bytes: usable_bytes + reclaimed, regions: n, heap_bytes })
}

/// Whether a memory-map region is RAM Bastion may read through the physical mapping:
/// usable, the bootloader's, and firmware RAM (ACPI tables and NVS, UEFI code and data);
/// not reserved ranges, MMIO or unusable memory.
fn is_ram(kind: MemoryRegionKind) -> bool {
    match kind {
        MemoryRegionKind::Usable | MemoryRegionKind::Bootloader => true,
        // E820: 1 RAM, 3 ACPI reclaimable, 4 ACPI NVS (2 reserved, 5 unusable).
        MemoryRegionKind::UnknownBios(t) => matches!(t, 1 | 3 | 4),
        // UEFI: every type but reserved (0), unusable (8), MMIO (11, 12) and PAL code (13).
        MemoryRegionKind::UnknownUefi(t) => !matches!(t, 0 | 8 | 11 | 12 | 13),
        _ => false,
    }
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 * MIB;

/// Whether the PDPT at `pdpt` maps `[base, base + 512 GiB)` at its place in 2 MiB pages (or
/// 1 GiB ones), as the bootloader's physical mapping does, and nothing else.
fn maps_phys_slot(pdpt: u64, base: u64) -> bool {
    // SAFETY (both): page-table frames of the active tables, only read.
    let pdpt_e = unsafe { frame_mut::<[u64; 512]>(pdpt) };
    pdpt_e.iter().enumerate().filter(|(_, e)| **e & PTE_PRESENT != 0).all(|(i, &e)| {
        let at = base + i as u64 * hostmem::GIB;
        if e & PTE_HUGE != 0 {
            return e & PTE_ADDR == at;
        }
        let pd = unsafe { frame_mut::<[u64; 512]>(e & PTE_ADDR) };
        pd.iter().enumerate().filter(|(_, d)| **d & PTE_PRESENT != 0).all(|(j, &d)| d & PTE_HUGE != 0 && d & PTE_ADDR == at + j as u64 * PAGE_2M)
    })
}

/// Replaces the bootloader's mapping of physical memory, which reaches the end of the
/// highest region of any kind, by one over RAM and the first 4 GiB only
/// (`hostmem::phys_map_top`), in 1 GiB pages where the CPU has them, and hands the
/// bootloader's tables back to the frame allocator. Both map the same addresses the same
/// way, so nothing reading physical memory notices. Runs once, in `init`, on the boot CPU
/// before any other CPU starts. Returns the bytes reclaimed (0 when there is nothing to gain
/// or the old mapping is not laid out as expected).
fn rebuild_phys_map(regions: &MemoryRegions) -> u64 {
    use hostmem::{GIB, PML4_SPAN};
    let offset = PHYS_OFFSET.load(Ordering::Relaxed);
    let first = usize::from(VirtAddr::new(offset).p4_index());
    // What the bootloader mapped, and what Bastion needs.
    let old_top = regions.iter().map(|r| r.end).max().unwrap_or(0).max(4 * GIB);
    let ram_end = regions.iter().filter(|r| is_ram(r.kind)).map(|r| r.end).max().unwrap_or(0);
    let top = hostmem::phys_map_top(ram_end);
    let gib_pages = raw_cpuid::CpuId::new().get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_1gib_pages());
    let (old_slots, new_slots) = (old_top.div_ceil(PML4_SPAN) as usize, top.div_ceil(PML4_SPAN) as usize);
    if !offset.is_multiple_of(PML4_SPAN)
        || new_slots > old_slots
        || first + old_slots > 512
        || hostmem::phys_map_tables(top, gib_pages) >= hostmem::phys_map_tables(old_top, false)
    {
        return 0;
    }
    let (l4, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: the active level-4 table, through the physical mapping. No other CPU runs yet;
    // it is changed below with PAGE_TABLES held. (Nothing here allocates from the heap while
    // PAGE_TABLES is held: heap growth takes it.)
    let l4 = unsafe { frame_mut::<[u64; 512]>(l4.start_address().as_u64()) };
    let old: alloc::vec::Vec<u64> = l4[first..first + old_slots].to_vec();
    if !old.iter().enumerate().all(|(s, &e)| e & PTE_PRESENT != 0 && e & PTE_HUGE == 0 && maps_phys_slot(e & PTE_ADDR, s as u64 * PML4_SPAN)) {
        log::warn!("paging: the bootloader's physical mapping is not laid out as expected; keeping it");
        return 0;
    }
    // The new tables.
    let mut new = alloc::vec::Vec::with_capacity(new_slots);
    let mut built = alloc::vec::Vec::new();
    for s in 0..new_slots {
        let Some(pdpt) = alloc_frame_zeroed() else { break };
        built.push(pdpt);
        // SAFETY: a fresh table frame.
        let pdpt_e = unsafe { frame_mut::<[u64; 512]>(pdpt) };
        for (g, e) in pdpt_e.iter_mut().enumerate() {
            let base = s as u64 * PML4_SPAN + g as u64 * GIB;
            if base >= top {
                break;
            }
            if gib_pages {
                *e = base | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE | PTE_NX;
                continue;
            }
            let Some(pd) = alloc_frame_zeroed() else { break };
            built.push(pd);
            // SAFETY: a fresh table frame.
            let pd_e = unsafe { frame_mut::<[u64; 512]>(pd) };
            for (j, d) in pd_e.iter_mut().enumerate() {
                *d = (base + j as u64 * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE | PTE_NX;
            }
            *e = pd | PTE_PRESENT | PTE_WRITABLE;
        }
        new.push(pdpt);
    }
    let want = hostmem::phys_map_tables(top, gib_pages) as usize;
    if built.len() != want {
        for f in built {
            give_back(f, 1);
        }
        log::warn!("paging: no frames for a smaller physical mapping; keeping the bootloader's");
        return 0;
    }
    // Switch: each entry is one write from a table to one with the same translations; then a
    // CR3 reload drops every cached translation and paging-structure entry of the old ones.
    {
        let _tables = PAGE_TABLES.lock();
        for (s, e) in l4[first..first + old_slots].iter_mut().enumerate() {
            *e = new.get(s).map_or(0, |&pdpt| pdpt | PTE_PRESENT | PTE_WRITABLE);
        }
        let (frame, flags) = x86_64::registers::control::Cr3::read();
        // SAFETY: the same level-4 table, reloaded to flush.
        unsafe { x86_64::registers::control::Cr3::write(frame, flags) };
    }
    // The old tables go to the frame allocator, where they lie in the bootloader's memory.
    let in_boot = |f: u64| regions.iter().any(|r| r.kind == MemoryRegionKind::Bootloader && r.start <= f && f + FRAME_SIZE <= r.end);
    let mut reclaimed = 0;
    let mut adopt = |f: u64| {
        if in_boot(f) && FRAMES.lock().as_mut().is_some_and(|a| a.adopt(f, 1).is_ok()) {
            reclaimed += FRAME_SIZE;
        }
    };
    for e in old {
        let pdpt = e & PTE_ADDR;
        // SAFETY: an old table frame, no longer in use and not yet handed back.
        let entries = *unsafe { frame_mut::<[u64; 512]>(pdpt) };
        for pe in entries.iter().filter(|&&pe| pe & PTE_PRESENT != 0 && pe & PTE_HUGE == 0) {
            adopt(pe & PTE_ADDR);
        }
        adopt(pdpt);
    }
    log::info!(
        "paging: physical memory mapped up to {} GiB in {} pages ({} KiB of tables, {} KiB of the bootloader's freed)",
        top / GIB,
        if gib_pages { "1 GiB" } else { "2 MiB" },
        want as u64 * FRAME_SIZE / 1024,
        reclaimed / 1024
    );
    reclaimed
}

/// The kernel heap: a `linked_list_allocator` heap that grows from the frame allocator when
/// it cannot serve an allocation (see the module documentation). Out of frames, an
/// allocation fails as `GlobalAlloc` says: a null pointer.
struct KernelHeap(Mutex<HeapState>);

struct HeapState {
    heap: Heap,
    /// Bytes mapped at [`KERNEL_WINDOW`] and handed to `heap`.
    mapped: u64,
    /// Page-table frames taken to map them.
    tables: u64,
    /// Most bytes ever allocated at once.
    peak: usize,
}

impl HeapState {
    /// Maps up to `by` bytes (whole pages) of fresh frames at the heap's top and hands them
    /// to the heap; returns how many it added (fewer when frames ran out).
    fn grow(&mut self, by: u64) -> u64 {
        let _tables = PAGE_TABLES.lock();
        // SAFETY: PAGE_TABLES is held.
        let mut mapper = unsafe { active_mapper() };
        let mut added = 0;
        while added < by {
            let Some(frame) = take(1, FRAME_SIZE, u64::MAX, Taker::Heap) else { break };
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(KERNEL_WINDOW + self.mapped + added));
            let mut tf = TableFrames { taker: Taker::Heap, taken: 0 };
            let flags = F::PRESENT | F::WRITABLE | F::NO_EXECUTE;
            // SAFETY: a fresh frame at a fresh address of the heap window, which nothing else
            // maps.
            let mapped = unsafe { mapper.map_to(page, PhysFrame::containing_address(PhysAddr::new(frame)), flags, &mut tf) };
            self.tables += tf.taken;
            match mapped {
                Ok(flush) => flush.flush(),
                Err(_) => {
                    give_back(frame, 1);
                    break;
                }
            }
            added += FRAME_SIZE;
        }
        if added > 0 {
            // SAFETY: [KERNEL_WINDOW + mapped, + added) was just mapped to frames the heap
            // alone owns, right at the heap's top.
            unsafe {
                if self.mapped == 0 {
                    self.heap.init(KERNEL_WINDOW as *mut u8, added as usize);
                } else {
                    self.heap.extend(added as usize);
                }
            }
            self.mapped += added;
        }
        added
    }
}

// SAFETY: the heap is only reached through the mutex.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut h = self.0.lock();
        // Each growth covers the request whatever is free at the top; a second round only
        // happens after a partial growth.
        for _ in 0..3 {
            if let Ok(p) = h.heap.allocate_first_fit(layout) {
                h.peak = h.peak.max(h.heap.used());
                return p.as_ptr();
            }
            let Some(by) = hostmem::growth(h.mapped, HEAP_WINDOW, layout.size() as u64, layout.align() as u64) else {
                break;
            };
            if h.grow(by) == 0 {
                break;
            }
        }
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: per GlobalAlloc's contract, `ptr` came from `alloc` with this layout.
        unsafe { self.0.lock().heap.deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

/// Grows the heap before guests start so it holds what `guests` guests with `vcpus` vCPUs
/// in all will allocate, and room for the host (`hostmem::presize`). Returns the bytes
/// added. A shortfall is not an error: the heap still grows on demand.
pub fn presize_heap(guests: u64, vcpus: u64) -> u64 {
    let mut h = HEAP.0.lock();
    let by = hostmem::presize(h.heap.free() as u64, guests, vcpus);
    if by == 0 {
        return 0;
    }
    h.grow(by)
}

/// Who takes frames: the heap may use the reserve, nobody else may.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taker {
    Heap,
    Other,
}

/// Takes `frames` contiguous frames aligned to `align`, ending below `limit`.
fn take(frames: u64, align: u64, limit: u64, taker: Taker) -> Option<u64> {
    let mut g = FRAMES.lock();
    let a = g.as_mut()?;
    if taker != Taker::Heap && !hostmem::may_take(a.free_frames(), frames, RESERVE_FRAMES) {
        return None;
    }
    a.alloc_contiguous(frames, align, limit)
}

/// Returns frames. A refused free is a Bastion bug: it is logged, never ignored silently.
fn give_back(phys: u64, frames: u64) {
    let r = FRAMES.lock().as_mut().map(|a| a.free_contiguous(phys, frames));
    if let Some(Err(e)) = r {
        log::error!("BUG: frame free refused: {e}");
    }
}

/// The active page tables, through the physical mapping.
///
/// # Safety
/// The caller holds [`PAGE_TABLES`] (or only reads).
unsafe fn active_mapper() -> OffsetPageTable<'static> {
    let (l4, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: the active level-4 table, reached through the physical mapping; changes are
    // serialised by PAGE_TABLES.
    unsafe {
        let table = &mut *(phys_to_virt(l4.start_address().as_u64()) as *mut PageTable);
        OffsetPageTable::new(table, VirtAddr::new(PHYS_OFFSET.load(Ordering::Relaxed)))
    }
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
    give_back(phys, frames);
}

/// Allocates `frames` contiguous zeroed frames of guest RAM aligned to `align` bytes
/// (counted apart from Bastion's own memory in the footprint).
pub fn alloc_guest_ram(frames: u64, align: u64) -> Option<u64> {
    let p = alloc_zeroed(frames, align)?;
    GUEST_RAM_FRAMES.fetch_add(frames, Ordering::Relaxed);
    Some(p)
}

/// Returns guest RAM taken with [`alloc_guest_ram`].
pub fn free_guest_ram(phys: u64, frames: u64) {
    give_back(phys, frames);
    GUEST_RAM_FRAMES.fetch_sub(frames, Ordering::Relaxed);
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
    let p = take(frames, align, limit, Taker::Other)?;
    // SAFETY: fresh frames, mapped through the physical-memory mapping.
    unsafe { core::ptr::write_bytes(phys_to_virt(p), 0, (frames * FRAME_SIZE) as usize) };
    Some(p)
}

/// Allocates `frames` contiguous frames aligned to `align` bytes. Like every allocation
/// but the heap's, it leaves the reserve (`hostmem::HEAP_RESERVE`) free.
pub fn alloc_contiguous(frames: u64, align: u64) -> Option<u64> {
    take(frames, align, u64::MAX, Taker::Other)
}

/// Next free address of the MMIO window, after the heap's in [`KERNEL_WINDOW`].
static MMIO_NEXT: AtomicU64 = AtomicU64::new(KERNEL_WINDOW + HEAP_WINDOW);

/// Page-table frames: from the frame allocator, zeroed, counted.
struct TableFrames {
    taker: Taker,
    taken: u64,
}

// SAFETY: frames come from the frame allocator, zeroed, and are never handed out twice.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let p = take(1, FRAME_SIZE, u64::MAX, self.taker)?;
        // SAFETY: a fresh frame, mapped through the physical-memory mapping.
        unsafe { core::ptr::write_bytes(phys_to_virt(p), 0, FRAME_SIZE as usize) };
        self.taken += 1;
        Some(PhysFrame::containing_address(PhysAddr::new(p)))
    }
}

/// Maps `len` bytes of device memory at `phys` uncached (PCD|PWT: strong uncacheable with the
/// default PAT, SDM Vol. 3A 12.12.3) and returns the virtual address.
pub fn map_mmio(phys: u64, len: u64) -> Option<u64> {
    let pages = len.div_ceil(FRAME_SIZE);
    let virt = MMIO_NEXT.fetch_add(pages * FRAME_SIZE, Ordering::Relaxed);
    let _tables = PAGE_TABLES.lock();
    // SAFETY: PAGE_TABLES is held.
    let mut mapper = unsafe { active_mapper() };
    for i in 0..pages {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + i * FRAME_SIZE));
        let frame = PhysFrame::containing_address(PhysAddr::new(phys + i * FRAME_SIZE));
        let flags = F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH;
        // SAFETY: device memory mapped at a fresh address; nothing aliases it as RAM.
        unsafe { mapper.map_to(page, frame, flags, &mut TableFrames { taker: Taker::Other, taken: 0 }) }.ok()?.flush();
    }
    Some(virt + (phys % FRAME_SIZE))
}

/// Frames free right now.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}

/// What Bastion holds of the host's RAM now (see `hostmem::Footprint`).
pub fn footprint() -> Footprint {
    let (heap, heap_used, heap_peak, tables) = {
        let h = HEAP.0.lock();
        (h.mapped, h.heap.used() as u64, h.peak as u64, h.tables)
    };
    let baseline = BASELINE.load(Ordering::Relaxed);
    Footprint {
        usable: USABLE.load(Ordering::Relaxed),
        free: free_frames() * FRAME_SIZE,
        guest_ram: GUEST_RAM_FRAMES.load(Ordering::Relaxed) * FRAME_SIZE,
        guests: LIVE_VMS.load(Ordering::Relaxed),
        boot: BOOT.load(Ordering::Relaxed),
        bundle: BUNDLE.load(Ordering::Relaxed),
        heap,
        heap_used,
        heap_peak,
        heap_tables: tables * FRAME_SIZE,
        baseline: (baseline != u64::MAX).then_some(baseline),
    }
}

/// Records the footprint now, before any guest exists, as the base of the per-guest figure.
pub fn mark_baseline() {
    BASELINE.store(footprint().hypervisor(), Ordering::Relaxed);
}

/// VMs that exist now (built and not yet destroyed), for the memory footprint.
static LIVE_VMS: AtomicU64 = AtomicU64::new(0);

/// Counts a VM in (`true`, when it is built) or out (when it is destroyed).
pub fn count_vm(created: bool) {
    if created {
        LIVE_VMS.fetch_add(1, Ordering::Relaxed);
    } else {
        LIVE_VMS.fetch_sub(1, Ordering::Relaxed);
    }
}
