//! A guest's physical memory map: where its RAM lies, where the MMIO hole is, and the e820 map
//! a loader reports — the one source the nested page tables, the loaders and the MMIO path read.
//!
//! # Layout
//!
//! ```text
//! 0                  RAM ("low RAM"), up to the guest's size or the hole, whichever is lower
//! 0xC000_0000        MMIO hole (1 GiB) — never RAM: IOAPIC at 0xFEC0_0000, LAPIC at
//!   ..0x1_0000_0000  0xFEE0_0000, room for future devices (PCI BARs, virtio-mmio)
//! 0x1_0000_0000      RAM ("high RAM"): whatever did not fit below the hole
//! ```
//!
//! This is the PC's shape (a "PCI hole" below 4 GiB, memory remapped above it) and what
//! Firecracker and QEMU's `pc` machines do; guests expect the APICs at their power-on
//! addresses (SDM Vol. 3A 11.4.1 "The Local APIC Block Diagram": LAPIC base 0xFEE0_0000 after
//! reset; the 82093AA IOAPIC datasheet §3.0: default base 0xFEC0_0000). The hole starts at
//! 3 GiB, a 1 GiB boundary, so both RAM regions can be mapped with 2 MiB (or 1 GiB) pages.
//!
//! # The legacy area below 1 MiB
//!
//! On a PC, 0x9_FC00..0x10_0000 is not ordinary memory: the Extended BIOS Data Area (the last
//! KiB below 640 KiB), VGA memory at 0xA_0000, option ROMs and the BIOS at 0xC_0000..0x10_0000.
//! The **e820 view** marks 0x9_FC00..0x10_0000 reserved, so the guest's allocator keeps off it:
//! a firmware-less Linux boot (boot protocol, `Documentation/arch/x86/boot.rst`) trusts the e820
//! map it is handed and uses 0..0x9_FC00 as conventional memory.
//!
//! In the **nested page tables** the whole area is backed by RAM: low RAM is one block from 0,
//! exactly what `npt.rs` is fed today. Two reasons:
//! - Loaders must place firmware tables there, where guests search for them: the MP floating
//!   pointer in the first KiB of the EBDA or in 0xF_0000..0x10_0000 (MultiProcessor
//!   Specification 1.4 §4), the ACPI RSDP in 0xE_0000..0x10_0000 (ACPI 6.5 §5.2.5.1). Those
//!   must be readable memory.
//! - A guest poking at VGA text memory (0xB_8000) or a ROM area then lands harmlessly in its
//!   own RAM instead of stopping on a nested page fault; nothing of the host can be reached
//!   that way.
//!
//! So the legacy area counts towards the guest's RAM size ([`MemoryMap::ram_bytes`] is what
//! the nested tables map), and is merely hidden from the guest's allocator by the e820 map.
//!
//! # The MMIO hole in the e820 map
//!
//! The hole is left *out* of the e820 map (a gap, neither RAM nor reserved), as PC firmware
//! leaves its PCI window: Linux places PCI resources in the largest gap below 4 GiB
//! (`e820__setup_pci_gap`). The LAPIC and IOAPIC pages are described to the guest by the ACPI
//! MADT (ACPI 6.5 §5.2.12), not by e820.
//!
//! # Sizes
//!
//! A size that is not a whole number of 4 KiB pages is **refused**, not rounded: a guest
//! configured with N bytes gets N bytes or an error, never something else silently (the
//! configuration counts in MiB, so only a programming error can hit this). Zero is refused, and
//! so is a size whose high RAM would end beyond the 48-bit guest-physical space that 4-level
//! EPT/NPT tables cover.

use alloc::vec::Vec;
use core::fmt;

pub const PAGE_SIZE: u64 = 4096;
pub const GIB: u64 = 1 << 30;
/// First byte of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// One past the last byte of the MMIO hole: 4 GiB, where high RAM starts.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The IOAPIC's register window (82093AA datasheet §3.0: IOREGSEL at +0, IOWIN at +0x10).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// The local APIC's register page at its reset address (SDM Vol. 3A 11.4.1, IA32_APIC_BASE).
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
pub const LAPIC_SIZE: u64 = 0x1000;
/// Start of the Extended BIOS Data Area: conventional memory ends here in the e820 view.
pub const EBDA_START: u64 = 0x9_FC00;
/// Start of VGA memory (0xA_0000..0xC_0000), then ROMs up to 1 MiB.
pub const VGA_START: u64 = 0xA_0000;
/// 1 MiB: memory above it is ordinary again.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// The guest-physical space 4-level nested page tables cover (SDM Vol. 3C 29.3.2, APM Vol. 2
/// 15.25): RAM must end at or below it.
pub const GPA_LIMIT: u64 = 1 << 48;

/// A guest-physical range `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    pub base: u64,
    pub len: u64,
}

impl GpaRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }

    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa < self.end()
    }

    pub fn overlaps(&self, other: &GpaRange) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

impl fmt::Display for GpaRange {
    /// `0x0..0xc0000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.base, self.end())
    }
}

/// Address range types of the e820 map, numbered as the ACPI specification's address range
/// types (ACPI 6.5 chapter 15, table "Address Range Types": 1 = AddressRangeMemory, 2 =
/// AddressRangeReserved), which are the values in Linux's `boot_e820_entry.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One e820 entry, laid out like Linux's `struct boot_e820_entry { u64 addr; u64 size; u32
/// type; }` once packed by a loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// What a guest-physical address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM, mapped by the nested page tables.
    Ram,
    /// The MMIO hole: device registers, reached through nested page faults.
    MmioHole,
}

/// The region holding an address, as answered by [`MemoryMap::region_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub range: GpaRange,
    pub kind: RegionKind,
}

/// Why a memory map was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemMapError {
    Zero,
    /// Not a whole number of 4 KiB pages.
    NotPageMultiple(u64),
    /// RAM would end beyond [`GPA_LIMIT`].
    TooLarge(u64),
}

impl fmt::Display for MemMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemMapError::Zero => write!(f, "a guest needs some RAM"),
            MemMapError::NotPageMultiple(n) => write!(f, "guest RAM of {n:#x} bytes is not a whole number of 4 KiB pages"),
            MemMapError::TooLarge(n) => write!(f, "guest RAM of {n:#x} bytes does not fit below 2^48 with the MMIO hole"),
        }
    }
}

/// The memory map of one guest (see the module documentation for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMap {
    /// Bytes of RAM from 0 (never more than [`MMIO_HOLE_START`]).
    low: u64,
    /// Bytes of RAM from [`MMIO_HOLE_END`].
    high: u64,
}

impl MemoryMap {
    /// Lays out `ram_bytes` of RAM: below the hole first, the rest from 4 GiB.
    pub fn new(ram_bytes: u64) -> Result<MemoryMap, MemMapError> {
        if ram_bytes == 0 {
            return Err(MemMapError::Zero);
        }
        if !ram_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(MemMapError::NotPageMultiple(ram_bytes));
        }
        let low = ram_bytes.min(MMIO_HOLE_START);
        let high = ram_bytes - low;
        if high > GPA_LIMIT - MMIO_HOLE_END {
            return Err(MemMapError::TooLarge(ram_bytes));
        }
        Ok(MemoryMap { low, high })
    }

    /// Total RAM, the legacy area included (what the nested tables map).
    pub fn ram_bytes(&self) -> u64 {
        self.low + self.high
    }

    /// RAM below the hole (always present).
    pub fn low_ram(&self) -> GpaRange {
        GpaRange { base: 0, len: self.low }
    }

    /// RAM from 4 GiB, if the guest is bigger than the space below the hole.
    pub fn high_ram(&self) -> Option<GpaRange> {
        (self.high > 0).then_some(GpaRange { base: MMIO_HOLE_END, len: self.high })
    }

    /// The RAM regions, lowest first: what the nested page tables map, and nothing else.
    pub fn ram_regions(&self) -> impl Iterator<Item = GpaRange> {
        [Some(self.low_ram()), self.high_ram()].into_iter().flatten()
    }

    /// One past the highest RAM byte.
    pub fn ram_end(&self) -> u64 {
        self.high_ram().unwrap_or(self.low_ram()).end()
    }

    /// The MMIO hole below 4 GiB (the same for every guest).
    pub fn mmio_hole(&self) -> GpaRange {
        GpaRange { base: MMIO_HOLE_START, len: MMIO_HOLE_END - MMIO_HOLE_START }
    }

    pub fn is_ram(&self, gpa: u64) -> bool {
        self.ram_regions().any(|r| r.contains(gpa))
    }

    /// The RAM region or the MMIO hole holding `gpa`; `None` where nothing is (above the end
    /// of RAM, or between a small guest's RAM and the hole).
    pub fn region_of(&self, gpa: u64) -> Option<Region> {
        if let Some(range) = self.ram_regions().find(|r| r.contains(gpa)) {
            return Some(Region { range, kind: RegionKind::Ram });
        }
        let hole = self.mmio_hole();
        hole.contains(gpa).then_some(Region { range: hole, kind: RegionKind::MmioHole })
    }

    /// The position of `gpa` in the guest's RAM counted without the hole (low RAM first, high
    /// RAM after it): where that byte lives if the guest's RAM is one host allocation.
    pub fn ram_offset(&self, gpa: u64) -> Option<u64> {
        let mut before = 0;
        for r in self.ram_regions() {
            if r.contains(gpa) {
                return Some(before + (gpa - r.base));
            }
            before += r.len;
        }
        None
    }

    /// The e820 map for the guest, sorted and non-overlapping: conventional memory up to the
    /// EBDA, the legacy area reserved, RAM from 1 MiB up to the hole, RAM above 4 GiB. The
    /// MMIO hole is a gap (see the module documentation). Entries are clipped to the RAM
    /// the guest has, so a tiny guest gets a short map.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = Vec::new();
        let mut push = |start: u64, end: u64, kind: E820Kind| {
            if end > start {
                map.push(E820Entry { addr: start, size: end - start, kind });
            }
        };
        let low = self.low;
        push(0, low.min(EBDA_START), E820Kind::Ram);
        push(EBDA_START, low.min(HIGH_MEMORY_START), E820Kind::Reserved);
        push(HIGH_MEMORY_START, low, E820Kind::Ram);
        if let Some(h) = self.high_ram() {
            push(h.base, h.end(), E820Kind::Ram);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_e820_map_has_no_empty_entries() {
        // RAM ending exactly at 1 MiB: conventional memory and the legacy area, nothing from
        // 1 MiB (an entry of size 0 there would be a lie a guest may trip over).
        let e = MemoryMap::new(HIGH_MEMORY_START).unwrap().e820();
        assert_eq!(e.iter().map(|e| (e.addr, e.size)).collect::<Vec<_>>(), [(0, EBDA_START), (EBDA_START, HIGH_MEMORY_START - EBDA_START)]);
    }

    #[test]
    fn ranges_overlap_when_they_share_a_byte() {
        let r = |base: u64, len: u64| GpaRange { base, len };
        assert!(r(0x1000, 0x1000).overlaps(&r(0x1fff, 1)), "the last byte");
        assert!(r(0x1fff, 1).overlaps(&r(0x1000, 0x1000)), "either way round");
        assert!(r(0x1000, 0x1000).overlaps(&r(0x1400, 0x10)), "inside");
        assert!(r(0x1400, 0x10).overlaps(&r(0x1000, 0x1000)), "around");
        assert!(!r(0x1000, 0x1000).overlaps(&r(0x2000, 0x1000)), "adjacent: end is exclusive");
        assert!(!r(0x2000, 0x1000).overlaps(&r(0x1000, 0x1000)));
        assert!(!r(0x1000, 0).overlaps(&r(0x1000, 0x1000)), "empty");
    }

    const MIB: u64 = 1 << 20;

    fn regions(m: &MemoryMap) -> Vec<GpaRange> {
        m.ram_regions().collect()
    }

    fn usable(m: &MemoryMap) -> u64 {
        m.e820().iter().filter(|e| e.kind == E820Kind::Ram).map(|e| e.size).sum()
    }

    /// Sizes the tests sweep: tiny, typical, around the hole and around 4 GiB, the config's
    /// maximum (64 GiB).
    const SIZES: [u64; 12] = [
        4096,
        512 * 1024,
        2 * MIB,
        16 * MIB,
        1024 * MIB,
        MMIO_HOLE_START - PAGE_SIZE,
        MMIO_HOLE_START,
        MMIO_HOLE_START + PAGE_SIZE,
        4 * GIB,
        4 * GIB + 2 * MIB,
        16 * GIB,
        64 * GIB,
    ];

    #[test]
    fn small_guest_is_one_low_region() {
        let m = MemoryMap::new(16 * MIB).unwrap();
        assert_eq!(regions(&m), vec![GpaRange { base: 0, len: 16 * MIB }]);
        assert_eq!(m.high_ram(), None);
        assert_eq!(m.ram_end(), 16 * MIB);
        assert!(m.is_ram(0) && m.is_ram(16 * MIB - 1));
        assert!(!m.is_ram(16 * MIB));
    }

    #[test]
    fn small_guest_e820_reserves_the_legacy_area() {
        let m = MemoryMap::new(16 * MIB).unwrap();
        assert_eq!(
            m.e820(),
            vec![
                E820Entry { addr: 0, size: 0x9_FC00, kind: E820Kind::Ram },
                E820Entry { addr: 0x9_FC00, size: 0x10_0000 - 0x9_FC00, kind: E820Kind::Reserved },
                E820Entry { addr: 0x10_0000, size: 15 * MIB, kind: E820Kind::Ram },
            ]
        );
    }

    #[test]
    fn legacy_area_is_ram_in_the_nested_tables() {
        // Backed, so loaders can put the MP table and RSDP there and VGA pokes land in RAM.
        let m = MemoryMap::new(16 * MIB).unwrap();
        for gpa in [EBDA_START, VGA_START, 0xB_8000, 0xE_0000, 0xF_FFFF] {
            assert!(m.is_ram(gpa), "{gpa:#x}");
        }
    }

    #[test]
    fn guest_exactly_at_the_hole_has_no_high_ram() {
        let m = MemoryMap::new(MMIO_HOLE_START).unwrap();
        assert_eq!(regions(&m), vec![GpaRange { base: 0, len: MMIO_HOLE_START }]);
        assert!(m.is_ram(MMIO_HOLE_START - 1));
        assert!(!m.is_ram(MMIO_HOLE_START));
        assert_eq!(m.ram_end(), MMIO_HOLE_START);
    }

    #[test]
    fn one_page_more_than_the_hole_goes_to_4g() {
        let m = MemoryMap::new(MMIO_HOLE_START + PAGE_SIZE).unwrap();
        assert_eq!(
            regions(&m),
            vec![GpaRange { base: 0, len: MMIO_HOLE_START }, GpaRange { base: MMIO_HOLE_END, len: PAGE_SIZE }]
        );
        assert_eq!(m.ram_end(), MMIO_HOLE_END + PAGE_SIZE);
    }

    #[test]
    fn four_gib_guest_is_split_below_and_above() {
        let m = MemoryMap::new(4 * GIB).unwrap();
        assert_eq!(m.low_ram(), GpaRange { base: 0, len: 3 * GIB });
        assert_eq!(m.high_ram(), Some(GpaRange { base: 4 * GIB, len: GIB }));
        assert_eq!(m.ram_end(), 5 * GIB);
        let e = m.e820();
        assert_eq!(e.last(), Some(&E820Entry { addr: 4 * GIB, size: GIB, kind: E820Kind::Ram }));
        assert_eq!(e[2], E820Entry { addr: HIGH_MEMORY_START, size: 3 * GIB - HIGH_MEMORY_START, kind: E820Kind::Ram });
    }

    #[test]
    fn no_ram_region_touches_the_hole() {
        for size in SIZES {
            let m = MemoryMap::new(size).unwrap();
            for r in m.ram_regions() {
                assert!(!r.overlaps(&m.mmio_hole()), "{size:#x}: {r} overlaps the hole");
            }
            for e in m.e820() {
                let r = GpaRange { base: e.addr, len: e.size };
                assert!(!r.overlaps(&m.mmio_hole()), "{size:#x}: e820 {r} overlaps the hole");
            }
        }
    }

    #[test]
    fn apics_sit_in_the_hole() {
        let m = MemoryMap::new(64 * GIB).unwrap();
        for (base, size) in [(IOAPIC_BASE, IOAPIC_SIZE), (LAPIC_BASE, LAPIC_SIZE)] {
            let r = m.region_of(base).unwrap();
            assert_eq!(r.kind, RegionKind::MmioHole);
            assert!(r.range.contains(base + size - 1));
        }
    }

    #[test]
    fn total_ram_is_preserved() {
        for size in SIZES {
            let m = MemoryMap::new(size).unwrap();
            assert_eq!(m.ram_bytes(), size);
            assert_eq!(m.ram_regions().map(|r| r.len).sum::<u64>(), size, "{size:#x}");
            // e820: usable plus the reserved legacy part equals what the tables map.
            let reserved: u64 = m.e820().iter().filter(|e| e.kind == E820Kind::Reserved).map(|e| e.size).sum();
            assert_eq!(usable(&m) + reserved, size, "{size:#x}");
        }
    }

    #[test]
    fn e820_is_sorted_non_overlapping_and_within_ram() {
        for size in SIZES {
            let m = MemoryMap::new(size).unwrap();
            let e = m.e820();
            assert!(!e.is_empty());
            for w in e.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{size:#x}: {w:?}");
            }
            for x in &e {
                assert!(x.size > 0);
                assert!(m.is_ram(x.addr) && m.is_ram(x.addr + x.size - 1), "{size:#x}: {x:?} is not backed");
            }
        }
    }

    #[test]
    fn conventional_memory_is_usable_below_the_ebda() {
        // What a firmware-less Linux expects: 0..0x9FC00 usable.
        let m = MemoryMap::new(2 * MIB).unwrap();
        assert_eq!(m.e820()[0], E820Entry { addr: 0, size: EBDA_START, kind: E820Kind::Ram });
    }

    #[test]
    fn tiny_guest_map_is_clipped_to_its_ram() {
        let m = MemoryMap::new(512 * 1024).unwrap();
        assert_eq!(m.e820(), vec![E820Entry { addr: 0, size: 512 * 1024, kind: E820Kind::Ram }]);
        let m = MemoryMap::new(0xA_0000 + 0x1000).unwrap();
        assert_eq!(
            m.e820(),
            vec![
                E820Entry { addr: 0, size: EBDA_START, kind: E820Kind::Ram },
                E820Entry { addr: EBDA_START, size: 0xA_1000 - EBDA_START, kind: E820Kind::Reserved },
            ]
        );
    }

    #[test]
    fn e820_kinds_use_the_acpi_numbers() {
        assert_eq!(E820Kind::Ram as u32, 1);
        assert_eq!(E820Kind::Reserved as u32, 2);
    }

    #[test]
    fn region_of_names_ram_hole_and_nothing() {
        let m = MemoryMap::new(16 * MIB).unwrap();
        assert_eq!(m.region_of(0x1234).map(|r| r.kind), Some(RegionKind::Ram));
        assert_eq!(m.region_of(16 * MIB), None, "between a small guest's RAM and the hole");
        assert_eq!(m.region_of(LAPIC_BASE).map(|r| r.kind), Some(RegionKind::MmioHole));
        assert_eq!(m.region_of(MMIO_HOLE_START).map(|r| r.range), Some(m.mmio_hole()));
        assert_eq!(m.region_of(MMIO_HOLE_END), None, "no high RAM");
        let big = MemoryMap::new(8 * GIB).unwrap();
        assert_eq!(big.region_of(MMIO_HOLE_END), Some(Region { range: big.high_ram().unwrap(), kind: RegionKind::Ram }));
        assert_eq!(big.region_of(big.ram_end()), None);
        assert_eq!(big.region_of(u64::MAX), None);
    }

    #[test]
    fn hole_is_fixed_and_1g_aligned() {
        // 1 GiB-aligned edges keep 2 MiB and 1 GiB nested pages possible on both sides.
        let h = MemoryMap::new(16 * MIB).unwrap().mmio_hole();
        assert_eq!((h.base, h.end()), (0xC000_0000, 0x1_0000_0000));
        assert_eq!(h.base % GIB, 0);
    }

    #[test]
    fn ram_offset_counts_without_the_hole() {
        let m = MemoryMap::new(4 * GIB).unwrap();
        assert_eq!(m.ram_offset(0), Some(0));
        assert_eq!(m.ram_offset(3 * GIB - 1), Some(3 * GIB - 1));
        assert_eq!(m.ram_offset(4 * GIB), Some(3 * GIB));
        assert_eq!(m.ram_offset(5 * GIB - 1), Some(4 * GIB - 1));
        assert_eq!(m.ram_offset(LAPIC_BASE), None);
        assert_eq!(m.ram_offset(5 * GIB), None);
    }

    #[test]
    fn sizes_that_are_not_whole_pages_are_refused_not_rounded() {
        assert_eq!(MemoryMap::new(16 * MIB + 1), Err(MemMapError::NotPageMultiple(16 * MIB + 1)));
        assert_eq!(MemoryMap::new(0x800), Err(MemMapError::NotPageMultiple(0x800)));
        assert_eq!(MemoryMap::new(0), Err(MemMapError::Zero));
    }

    #[test]
    fn ram_beyond_the_48_bit_space_is_refused() {
        let most = GPA_LIMIT - MMIO_HOLE_END + MMIO_HOLE_START;
        assert_eq!(MemoryMap::new(most).unwrap().ram_end(), GPA_LIMIT);
        assert_eq!(MemoryMap::new(most + PAGE_SIZE), Err(MemMapError::TooLarge(most + PAGE_SIZE)));
        assert!(matches!(MemoryMap::new(u64::MAX - 0xfff), Err(MemMapError::TooLarge(_))));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(MemMapError::NotPageMultiple(0x801).to_string(), "guest RAM of 0x801 bytes is not a whole number of 4 KiB pages");
        assert_eq!(format!("{}", GpaRange { base: 0, len: MMIO_HOLE_START }), "0x0..0xc0000000");
    }
}
