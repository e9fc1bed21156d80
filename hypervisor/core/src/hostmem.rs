//! Bastion's own memory: how big the kernel heap starts, how much it grows and when, which
//! frames guests may not take, and the footprint the kernel reports. Pure arithmetic; the
//! kernel's `memory.rs` applies it.
//!
//! The heap lives in a virtual window of its own and grows at its top by mapping frames from
//! the frame allocator behind it one by one, so growing never needs physically contiguous
//! memory. It starts at [`HEAP_INITIAL`] and grows on demand (at least [`HEAP_STEP`] at a
//! time); before guests start, the kernel grows it once by what the configured guests will
//! allocate ([`presize`]), so a run does not grow it while guests come and go. It never
//! shrinks.
//!
//! Allocation failure stays a clean error: guest RAM and every other frame a guest needs
//! (page tables, VMCS/VMCB, bitmaps, XSAVE areas) may not take the last [`HEAP_RESERVE`]
//! bytes of free frames ([`may_take`]); only the heap may. A guest that does not fit is
//! refused while the heap can still grow for the error path.

use core::fmt;

pub const KIB: u64 = 1024;
/// The heap grows in whole 4 KiB pages.
pub const PAGE: u64 = 4096;
pub const GIB: u64 = 1 << 30;
/// What one PML4 entry maps.
pub const PML4_SPAN: u64 = 512 * GIB;

/// Heap mapped at boot, before anything is known about the machine. A 2-CPU host with no
/// guests peaks at 49 KiB (48 of them the second CPU's three IST stacks; the config and ACPI
/// tables are parsed in the rest); more CPUs and guests grow it.
pub const HEAP_INITIAL: u64 = 128 * KIB;
/// The smallest growth: fewer, larger steps for runs of small allocations.
pub const HEAP_STEP: u64 = 64 * KIB;
/// Heap each configured guest allocates (its records, device models, console history of up
/// to 4 KiB, line buffers and scheduler entries): 4 guests of 2 vCPUs printing without pause
/// took 7.5 KiB each on QEMU; the budget adds margin.
pub const HEAP_PER_GUEST: u64 = 8 * KIB;
/// Heap each vCPU of a configured guest allocates on top of its guest's.
pub const HEAP_PER_VCPU: u64 = 2 * KIB;
/// Free heap kept for the host's own allocations while guests run (console lines, monitor
/// answers, logs of stopped guests).
pub const HEAP_HEADROOM: u64 = 32 * KIB;
/// Free frames only the heap may take: what guests are refused so the heap can still grow.
pub const HEAP_RESERVE: u64 = 256 * KIB;
/// Bytes an allocation may need beyond its size in a fresh hole: alignment padding in front
/// and the allocator's minimum hole size on both sides.
const HOLE_SLACK: u64 = 64;

/// Top of Bastion's own mapping of physical memory: the end of the highest RAM region
/// (usable, ACPI, firmware data), and at least 4 GiB (ACPI tables, the local APIC and the
/// rest of the MMIO below 4 GiB), in whole GiB. Reserved ranges above RAM are left out: the
/// bootloader maps up to the end of any region, which on QEMU with an AMD CPU is a reserved
/// range ending at 1 TiB, 4 MiB of page tables in 2 MiB pages.
pub fn phys_map_top(ram_end: u64) -> u64 {
    ram_end.max(4 * GIB).checked_next_multiple_of(GIB).unwrap_or(u64::MAX / GIB * GIB)
}

/// Page-table frames that map `[0, top)` at a 512 GiB-aligned address: a PDPT per 512 GiB
/// and, without 1 GiB pages, a page directory per GiB (of 2 MiB pages).
pub fn phys_map_tables(top: u64, gib_pages: bool) -> u64 {
    top.div_ceil(PML4_SPAN) + if gib_pages { 0 } else { top.div_ceil(GIB) }
}

/// How many bytes to map at the heap's top when it cannot serve `size` bytes aligned to
/// `align`: enough for the request even if nothing at the top is free, in whole pages, at
/// least [`HEAP_STEP`]. `None` when the window (`window` bytes, `mapped` of them in use)
/// cannot take that much, or on overflow.
pub fn growth(mapped: u64, window: u64, size: u64, align: u64) -> Option<u64> {
    let need = size.checked_add(align)?.checked_add(HOLE_SLACK)?;
    let by = need.max(HEAP_STEP).checked_next_multiple_of(PAGE)?;
    (mapped.checked_add(by)? <= window).then_some(by)
}

/// Heap the configured guests will allocate between them: `guests` guests with `vcpus` vCPUs
/// in all.
pub fn guest_heap(guests: u64, vcpus: u64) -> u64 {
    guests.saturating_mul(HEAP_PER_GUEST).saturating_add(vcpus.saturating_mul(HEAP_PER_VCPU))
}

/// Bytes to grow the heap by before guests start, given `heap_free` bytes free in it now:
/// the guests' share ([`guest_heap`]) and the host's [`HEAP_HEADROOM`] must be free. Whole
/// pages, at least [`HEAP_STEP`] when anything is needed; 0 when the heap has room already.
pub fn presize(heap_free: u64, guests: u64, vcpus: u64) -> u64 {
    let want = guest_heap(guests, vcpus).saturating_add(HEAP_HEADROOM);
    if heap_free >= want {
        return 0;
    }
    (want - heap_free).max(HEAP_STEP).checked_next_multiple_of(PAGE).unwrap_or(u64::MAX / PAGE * PAGE)
}

/// Whether anyone but the heap may take `frames` frames when `free` are free: they must leave
/// `reserve` frames.
pub fn may_take(free: u64, frames: u64, reserve: u64) -> bool {
    frames.checked_add(reserve).is_some_and(|n| n <= free)
}

/// What Bastion holds of the host's RAM, from the frame allocator's counts and the boot
/// memory map. All figures in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// RAM the boot memory map calls usable (what the frame allocator manages).
    pub usable: u64,
    /// Of that, free now.
    pub free: u64,
    /// Of that, guest RAM now.
    pub guest_ram: u64,
    /// Guests that exist now (with their RAM and vCPUs).
    pub guests: u64,
    /// What the bootloader left in use for Bastion outside usable RAM: the kernel image, the
    /// boot stack, its page tables and the boot information (not the bundle).
    pub boot: u64,
    /// The bundle (config and guest images) as loaded by the bootloader: the guests'
    /// payload, reported but not counted as Bastion's.
    pub bundle: u64,
    /// Frames mapped behind the heap.
    pub heap: u64,
    /// Heap bytes allocated, now and at most.
    pub heap_used: u64,
    pub heap_peak: u64,
    /// Page-table frames mapping the heap.
    pub heap_tables: u64,
    /// [`Footprint::hypervisor`] when no guest existed yet, for the per-guest figure.
    pub baseline: Option<u64>,
}

impl Footprint {
    /// Frames the allocator handed out for anything but guest RAM (the heap, its page
    /// tables, the frame bitmap, CPU stacks, VMX/SVM areas, guests' page tables and control
    /// structures).
    pub fn frames_held(&self) -> u64 {
        self.usable.saturating_sub(self.free).saturating_sub(self.guest_ram)
    }

    /// Everything Bastion holds: the boot image's memory and the frames it holds.
    pub fn hypervisor(&self) -> u64 {
        self.boot + self.frames_held()
    }

    /// Held frames that are neither heap nor heap page tables.
    pub fn other(&self) -> u64 {
        self.frames_held().saturating_sub(self.heap + self.heap_tables)
    }

    /// What each guest costs beyond its RAM: growth since the baseline, shared out. `None`
    /// with no guests or no baseline.
    pub fn per_guest(&self) -> Option<u64> {
        let base = self.baseline?;
        (self.guests > 0).then(|| self.hypervisor().saturating_sub(base) / self.guests)
    }
}

/// One log line (after `memory: `): `hypervisor N KiB with G guests, per guest M KiB beyond
/// RAM (...)`. The xtask memory benchmark reads `hypervisor N KiB` and `per guest M KiB`.
impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = |b: u64| b.div_ceil(KIB);
        write!(f, "hypervisor {} KiB with ", k(self.hypervisor()))?;
        match (self.guests, self.per_guest()) {
            (0, _) => write!(f, "no guests")?,
            (g, Some(p)) => write!(f, "{g} guest{}, per guest {} KiB beyond RAM", if g == 1 { "" } else { "s" }, k(p))?,
            (g, None) => write!(f, "{g} guest{}", if g == 1 { "" } else { "s" })?,
        }
        write!(
            f,
            " (heap {} KiB, {} KiB in use, peak {} KiB, {} KiB page tables; kernel image, boot stack and boot page tables {} KiB; \
             frame bitmap, CPU stacks, VMX/SVM areas, guest tables {} KiB; guest RAM {} KiB; bundle {} KiB not counted)",
            k(self.heap),
            k(self.heap_used),
            k(self.heap_peak),
            k(self.heap_tables),
            k(self.boot),
            k(self.other()),
            k(self.guest_ram),
            k(self.bundle)
        )
    }
}

/// The two figures a footprint line carries, read back from the console (the xtask memory
/// benchmark): hypervisor KiB, and per-guest KiB when the line has guests.
pub fn parse_line(line: &str) -> Option<(u64, Option<u64>)> {
    let num_after = |key: &str| -> Option<u64> { line.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    let total = num_after("memory: hypervisor ")?;
    Some((total, num_after("per guest ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const MIB: u64 = 1 << 20;

    #[test]
    fn growth_covers_the_request_in_pages_and_at_least_a_step() {
        assert_eq!(growth(HEAP_INITIAL, 1 << 30, 16, 8), Some(HEAP_STEP));
        // A large request gets itself, its alignment and slack, rounded up to pages.
        let big = growth(0, 1 << 30, 100 * KIB, 4096).unwrap();
        assert_eq!(big % PAGE, 0);
        assert!(big >= 100 * KIB + 4096 + HOLE_SLACK && big < 100 * KIB + 4096 + HOLE_SLACK + PAGE, "{big}");
        // Exactly at the step boundary.
        assert_eq!(growth(0, 1 << 30, HEAP_STEP - 16 - HOLE_SLACK, 16), Some(HEAP_STEP));
        assert_eq!(growth(0, 1 << 30, HEAP_STEP - 15 - HOLE_SLACK, 16), Some(HEAP_STEP + PAGE));
    }

    #[test]
    fn growth_stops_at_the_window_and_on_overflow() {
        assert_eq!(growth(MIB - HEAP_STEP, MIB, 8, 8), Some(HEAP_STEP), "fits exactly");
        assert_eq!(growth(MIB - HEAP_STEP + PAGE, MIB, 8, 8), None);
        assert_eq!(growth(0, u64::MAX, u64::MAX - 10, 8), None);
        assert_eq!(growth(u64::MAX - PAGE, u64::MAX, 8, 8), None);
    }

    #[test]
    fn presize_makes_room_for_the_configured_guests_and_headroom() {
        assert_eq!(guest_heap(0, 0), 0);
        assert_eq!(guest_heap(4, 5), 4 * HEAP_PER_GUEST + 5 * HEAP_PER_VCPU);
        // Enough free already: nothing to do.
        assert_eq!(presize(HEAP_HEADROOM, 0, 0), 0);
        assert_eq!(presize(guest_heap(4, 4) + HEAP_HEADROOM, 4, 4), 0);
        // Short by a little: one step.
        assert_eq!(presize(HEAP_HEADROOM - 1, 0, 0), HEAP_STEP);
        // Short by a lot: exactly the shortfall, in pages.
        let want = guest_heap(64, 64) + HEAP_HEADROOM;
        let by = presize(1000, 64, 64);
        assert_eq!(by % PAGE, 0);
        assert!(by >= want - 1000 && by < want - 1000 + PAGE);
        assert_eq!(presize(0, u64::MAX, u64::MAX), u64::MAX / PAGE * PAGE, "saturates, in pages");
    }

    #[test]
    fn the_physical_map_covers_ram_and_the_first_4_gib_in_whole_gib() {
        assert_eq!(phys_map_top(256 * MIB), 4 * GIB, "small hosts: the first 4 GiB");
        assert_eq!(phys_map_top(4 * GIB + 1), 5 * GIB);
        assert_eq!(phys_map_top(64 * GIB), 64 * GIB);
        assert_eq!(phys_map_top(u64::MAX), u64::MAX / GIB * GIB);
        // 4 GiB: one PDPT, and 4 page directories without 1 GiB pages.
        assert_eq!(phys_map_tables(4 * GIB, true), 1);
        assert_eq!(phys_map_tables(4 * GIB, false), 5);
        // What the bootloader built under QEMU/AMD: up to 1 TiB in 2 MiB pages.
        assert_eq!(phys_map_tables(1024 * GIB, false), 2 + 1024);
        assert_eq!(phys_map_tables(513 * GIB, true), 2);
    }

    #[test]
    fn only_the_heap_may_take_the_reserve() {
        assert!(may_take(100, 36, 64));
        assert!(!may_take(100, 37, 64));
        assert!(!may_take(10, 1, 64));
        assert!(may_take(64, 0, 64));
        assert!(!may_take(u64::MAX, u64::MAX, 1));
    }

    fn sample() -> Footprint {
        Footprint {
            usable: 250 * MIB,
            free: 250 * MIB - 700 * KIB,
            guest_ram: 0,
            guests: 0,
            boot: 1200 * KIB,
            bundle: 12 * KIB,
            heap: 320 * KIB,
            heap_used: 150 * KIB,
            heap_peak: 180 * KIB,
            heap_tables: 12 * KIB,
            baseline: None,
        }
    }

    #[test]
    fn the_budgets_are_the_measured_figures_with_margin() {
        // Each figure its doc's measurement with margin, in bytes: the boot heap over a 2-CPU
        // host's 49 KiB peak, a guest's over the 7.5 KiB measured on QEMU.
        assert_eq!(HEAP_INITIAL, 131_072);
        assert_eq!(HEAP_PER_GUEST, 8192);
        assert_eq!((HEAP_STEP, HEAP_PER_VCPU, HEAP_HEADROOM, HEAP_RESERVE), (65_536, 2048, 32_768, 262_144));
    }

    #[test]
    fn footprint_is_boot_memory_plus_frames_held_less_guest_ram() {
        let f = sample();
        assert_eq!(f.frames_held(), 700 * KIB);
        assert_eq!(f.hypervisor(), 1900 * KIB);
        assert_eq!(f.other(), 700 * KIB - 332 * KIB);
        assert_eq!(f.per_guest(), None);
        // A baseline but no guests (all killed): nothing to share out.
        assert_eq!(Footprint { baseline: Some(f.hypervisor() - KIB), ..f }.per_guest(), None);
        // Four guests of 4 MiB, each costing 40 KiB beyond its RAM.
        let g = Footprint {
            free: f.free - 4 * (4 * MIB + 40 * KIB),
            guest_ram: 16 * MIB,
            guests: 4,
            baseline: Some(f.hypervisor()),
            ..f
        };
        assert_eq!(g.hypervisor(), f.hypervisor() + 160 * KIB);
        assert_eq!(g.per_guest(), Some(40 * KIB));
        // Counts taken while memory moves never underflow.
        let odd = Footprint { free: 300 * MIB, guest_ram: 10 * MIB, baseline: Some(u64::MAX), guests: 1, ..f };
        assert_eq!((odd.frames_held(), odd.other(), odd.per_guest()), (0, 0, Some(0)));
    }

    #[test]
    fn the_line_reads_back_and_says_what_is_counted() {
        let f = sample();
        let line = f.to_string();
        assert!(line.starts_with("hypervisor 1900 KiB with no guests (heap 320 KiB, 150 KiB in use, peak 180 KiB, 12 KiB page tables;"), "{line}");
        assert!(line.contains("boot page tables 1200 KiB;") && line.contains("bundle 12 KiB not counted"), "{line}");
        assert_eq!(parse_line(&format!("[INFO  cpu0] memory: {line}")), Some((1900, None)));
        let g = Footprint { free: f.free - 4 * MIB - 37 * KIB, guest_ram: 4 * MIB, guests: 1, baseline: Some(f.hypervisor()), ..f };
        let line = g.to_string();
        assert!(line.starts_with("hypervisor 1937 KiB with 1 guest, per guest 37 KiB beyond RAM ("), "{line}");
        assert_eq!(parse_line(&format!("memory: {line}")), Some((1937, Some(37))));
        assert_eq!(parse_line("memory: 250 MiB usable in 3 regions"), None);
        // Partial KiB round up, so nothing held reads as 0.
        let tiny = Footprint { usable: 8192, free: 4096 - 1, ..Footprint::default() };
        assert!(tiny.to_string().starts_with("hypervisor 5 KiB"), "{tiny}");
    }
}
