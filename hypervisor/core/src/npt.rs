//! Nested page tables: Intel EPT and AMD NPT, built by one piece of code.
//!
//! Both are 4-level radix trees over guest-physical addresses with the layout of ordinary
//! x86-64 paging (9 bits per level, 4 KiB tables); they differ only in the entry bits:
//!
//! | | present/permissions | large page | memory type |
//! |---|---|---|---|
//! | EPT (SDM Vol. 3C 29.3.2) | R=bit 0, W=bit 1, X=bit 2 | bit 7 | bits 5:3 in leaves (6 = WB) |
//! | NPT (APM Vol. 2 15.25) | P=bit 0, RW=bit 1, U/S=bit 2 | bit 7 (PS) | from the host PAT (index 0 = WB) |
//!
//! NPT needs U/S set at every level: the nested walk treats every guest access as a user
//! access (APM 15.25.5). We never set NPT's NX bit, which would be a reserved-bit fault unless
//! the host has EFER.NXE; guest RAM is executable anyway.
//!
//! Written by hand: the `x86_64` crate's page-table types describe ordinary paging only and
//! know neither EPT bits nor foreign (guest) address spaces.
//!
//! Frames come from a [`FrameSource`], so this code runs unchanged on the host in tests (over
//! a fake memory) and in the kernel (over the frame allocator and the physical mapping).

use core::fmt;

pub const PAGE_4K: u64 = 4096;
pub const PAGE_2M: u64 = 2 << 20;
const ENTRIES: usize = 512;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const LARGE: u64 = 1 << 7;

/// Where page-table frames come from.
pub trait FrameSource {
    /// A zeroed 4 KiB frame, by physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Gives a table frame back.
    fn free_table(&mut self, phys: u64);
    /// The table at `phys`, as the hypervisor sees it.
    fn table(&mut self, phys: u64) -> &mut [u64; ENTRIES];
}

/// Which hardware format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ept,
    Npt,
}

impl Format {
    /// Bits of a non-leaf entry: everything allowed, the leaf decides.
    fn table_bits(self) -> u64 {
        match self {
            Format::Ept => 0b111,
            Format::Npt => 0b111, // P | RW | U/S
        }
    }
    /// Bits of a leaf entry mapping write-back RAM with full access. (The fields are
    /// disjoint bits, so `+` is their OR; here and below, an address with 4 KiB alignment
    /// plus bits below 12 is the same.)
    fn leaf_bits(self, large: bool) -> u64 {
        let l = if large { LARGE } else { 0 };
        match self {
            Format::Ept => 0b111 + (6 << 3) + l, // RWX, memory type WB
            Format::Npt => 0b111 + l,            // P | RW | U/S, PAT index 0 (WB)
        }
    }
    fn present(self, e: u64) -> bool {
        match self {
            Format::Ept => e & 0b111 != 0,
            Format::Npt => e & 1 != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// Addresses or length not 4 KiB aligned.
    Unaligned,
    /// The guest-physical range overlaps an existing mapping.
    AlreadyMapped(u64),
    /// Beyond the 48-bit guest-physical space a 4-level table covers.
    OutOfRange(u64),
    /// No frame for a page table.
    OutOfMemory,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Unaligned => write!(f, "mapping is not 4 KiB aligned"),
            MapError::AlreadyMapped(a) => write!(f, "guest-physical {a:#x} is already mapped"),
            MapError::OutOfRange(a) => write!(f, "guest-physical {a:#x} is beyond 48 bits"),
            MapError::OutOfMemory => write!(f, "out of memory for nested page tables"),
        }
    }
}

/// One leaf mapping, as reported by [`NestedPageTable::for_each_leaf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub gpa: u64,
    pub hpa: u64,
    pub size: u64,
}

/// Read-only translation handle of a [`NestedPageTable`].
#[derive(Clone, Copy, Debug)]
pub struct NptView {
    root: u64,
    format: Format,
}

impl NptView {
    /// The host-physical address of the top table (what the VMCB's N_CR3 or the EPTP's
    /// address bits must hold for this guest).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Host-physical address backing `gpa`, or `None` when unmapped.
    pub fn translate(&self, src: &mut impl FrameSource, gpa: u64) -> Option<u64> {
        let mut table = self.root;
        for level in (0..=3).rev() {
            let e = src.table(table)[index(gpa, level)];
            if !self.format.present(e) {
                return None;
            }
            if level == 0 || (level <= 2 && e & LARGE != 0) {
                let page = PAGE_4K << (9 * level);
                return Some((e & ADDR_MASK & !(page - 1)) + (gpa & (page - 1)));
            }
            table = e & ADDR_MASK;
        }
        None
    }
}

/// A 4-level EPT or NPT hierarchy.
pub struct NestedPageTable {
    root: u64,
    format: Format,
}

fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

impl NestedPageTable {
    pub fn new(format: Format, src: &mut impl FrameSource) -> Result<Self, MapError> {
        Ok(NestedPageTable { root: src.alloc_table().ok_or(MapError::OutOfMemory)?, format })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Physical address of the top table (PML4): NPT's nCR3.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The EPT pointer for the VMCS (SDM 25.6.11): write-back paging structures (type 6 in
    /// bits 2:0), a 4-level walk (3 in bits 5:3), accessed/dirty flags off.
    pub fn eptp(&self) -> u64 {
        self.root + 6 + (3 << 3)
    }

    /// Maps `len` bytes of guest-physical space at `gpa` to host-physical `hpa` as write-back
    /// RAM, with 2 MiB pages wherever both addresses are 2 MiB aligned and enough length is
    /// left, 4 KiB pages elsewhere. Nothing outside `[gpa, gpa+len)` becomes mapped.
    pub fn map(&mut self, src: &mut impl FrameSource, gpa: u64, hpa: u64, len: u64) -> Result<(), MapError> {
        if (gpa | hpa | len) % PAGE_4K != 0 {
            return Err(MapError::Unaligned);
        }
        let end = gpa.checked_add(len).ok_or(MapError::OutOfRange(gpa))?;
        if end > 1 << 48 {
            return Err(MapError::OutOfRange(end - 1));
        }
        // Check first, so a failed map leaves the table as it was.
        let mut g = gpa;
        while g < end {
            if self.translate(src, g).is_some() {
                return Err(MapError::AlreadyMapped(g));
            }
            g += PAGE_4K;
        }
        let (mut g, mut h) = (gpa, hpa);
        while g < end {
            let large = g % PAGE_2M == 0 && h % PAGE_2M == 0 && end - g >= PAGE_2M && self.can_map_large(src, g);
            let size = if large { PAGE_2M } else { PAGE_4K };
            self.set_leaf(src, g, h, large)?;
            g += size;
            h += size;
        }
        Ok(())
    }

    /// True when the 2 MiB slot at `gpa` has no page table under it yet.
    fn can_map_large(&self, src: &mut impl FrameSource, gpa: u64) -> bool {
        let mut table = self.root;
        for level in [3, 2] {
            let e = src.table(table)[index(gpa, level)];
            if !self.format.present(e) {
                return true;
            }
            table = e & ADDR_MASK;
        }
        !self.format.present(src.table(table)[index(gpa, 1)])
    }

    fn set_leaf(&mut self, src: &mut impl FrameSource, gpa: u64, hpa: u64, large: bool) -> Result<(), MapError> {
        let leaf_level = if large { 1 } else { 0 };
        let mut table = self.root;
        for level in (leaf_level + 1..=3).rev() {
            let i = index(gpa, level);
            let e = src.table(table)[i];
            table = if self.format.present(e) {
                e & ADDR_MASK
            } else {
                let t = src.alloc_table().ok_or(MapError::OutOfMemory)?;
                src.table(table)[i] = t + self.format.table_bits();
                t
            };
        }
        src.table(table)[index(gpa, leaf_level)] = hpa + self.format.leaf_bits(large);
        Ok(())
    }

    /// A copyable read-only handle for translations (the table itself owns its frames).
    pub fn view(&self) -> NptView {
        NptView { root: self.root, format: self.format }
    }

    /// Host-physical address backing `gpa`, or `None` when unmapped.
    pub fn translate(&self, src: &mut impl FrameSource, gpa: u64) -> Option<u64> {
        self.view().translate(src, gpa)
    }

    /// Calls `f` for every leaf, in guest-physical order.
    pub fn for_each_leaf(&self, src: &mut impl FrameSource, mut f: impl FnMut(Leaf)) {
        self.walk(src, self.root, 3, 0, &mut f);
    }

    fn walk(&self, src: &mut impl FrameSource, table: u64, level: u32, base: u64, f: &mut impl FnMut(Leaf)) {
        for i in 0..ENTRIES {
            let e = src.table(table)[i];
            if !self.format.present(e) {
                continue;
            }
            // Disjoint: `base` has zeros where this level's index goes.
            let gpa = base + ((i as u64) << (12 + 9 * level));
            if level == 0 || (level <= 2 && e & LARGE != 0) {
                let size = PAGE_4K << (9 * level);
                f(Leaf { gpa, hpa: e & ADDR_MASK & !(size - 1), size });
            } else {
                self.walk(src, e & ADDR_MASK, level - 1, gpa, f);
            }
        }
    }

    /// Frees every table frame (not the memory the leaves point to).
    pub fn destroy(self, src: &mut impl FrameSource) {
        self.free_level(src, self.root, 3);
    }

    fn free_level(&self, src: &mut impl FrameSource, table: u64, level: u32) {
        if level > 0 {
            for i in 0..ENTRIES {
                let e = src.table(table)[i];
                if self.format.present(e) && !(level <= 2 && e & LARGE != 0) {
                    self.free_level(src, e & ADDR_MASK, level - 1);
                }
            }
        }
        src.free_table(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Page-table frames live in a map, handed out from 0x1000_0000 up.
    struct FakeMem {
        tables: BTreeMap<u64, Box<[u64; ENTRIES]>>,
        next: u64,
        limit: usize,
        freed: usize,
        /// Table reads so far: a bound turns a walk that never ends (a broken loop) into a
        /// failure instead of a hang. The largest test reads a few thousand.
        reads: u64,
    }

    impl FakeMem {
        fn new() -> Self {
            FakeMem { tables: BTreeMap::new(), next: 0x1000_0000, limit: usize::MAX, freed: 0, reads: 0 }
        }
    }

    impl FrameSource for FakeMem {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() >= self.limit {
                return None;
            }
            let p = self.next;
            self.next += PAGE_4K;
            self.tables.insert(p, Box::new([0; ENTRIES]));
            Some(p)
        }
        fn free_table(&mut self, phys: u64) {
            assert!(self.tables.remove(&phys).is_some(), "freed unknown table {phys:#x}");
            self.freed += 1;
        }
        fn table(&mut self, phys: u64) -> &mut [u64; ENTRIES] {
            self.reads += 1;
            assert!(self.reads < 1_000_000, "a million table reads: a walk that does not end");
            self.tables.get_mut(&phys).unwrap_or_else(|| panic!("{phys:#x} is not a table"))
        }
    }

    fn leaves(t: &NestedPageTable, m: &mut FakeMem) -> Vec<Leaf> {
        let mut v = Vec::new();
        t.for_each_leaf(m, |l| v.push(l));
        v
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn aligned_ram_uses_2m_pages_and_translates() {
        for format in [Format::Ept, Format::Npt] {
            let mut m = FakeMem::new();
            let mut t = NestedPageTable::new(format, &mut m).unwrap();
            t.map(&mut m, 0, 0x4000_0000, 8 * MIB).unwrap();
            let l = leaves(&t, &mut m);
            assert_eq!(l.len(), 4, "{format:?}: 8 MiB aligned = four 2 MiB pages");
            assert!(l.iter().all(|l| l.size == PAGE_2M));
            // PML4 + PDPT + PD, no page tables.
            assert_eq!(m.tables.len(), 3);
            for gpa in (0..8 * MIB).step_by(0x1_0000) {
                assert_eq!(t.translate(&mut m, gpa + 0x123), Some(0x4000_0000 + gpa + 0x123));
            }
            assert_eq!(t.translate(&mut m, 8 * MIB), None);
        }
    }

    #[test]
    fn a_view_names_the_same_top_table_as_its_hierarchy() {
        // What a triple fault's report compares with the VMCB's N_CR3 / the EPTP's address.
        let mut m = FakeMem::new();
        let a = NestedPageTable::new(Format::Npt, &mut m).unwrap();
        let b = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        assert_ne!(a.root(), b.root());
        assert_eq!((a.view().root(), b.view().root()), (a.root(), b.root()));
        assert_eq!(b.eptp() & !0xfff, b.view().root());
    }

    #[test]
    fn unaligned_edges_fall_back_to_4k_pages() {
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        // GPA 1 MiB .. 5 MiB + 8 KiB at HPA 0x4010_0000: 4K pages up to 2 MiB, 2M pages after.
        t.map(&mut m, MIB, 0x4010_0000, 4 * MIB + 0x2000).unwrap();
        let l = leaves(&t, &mut m);
        let small = l.iter().filter(|l| l.size == PAGE_4K).count();
        let large = l.iter().filter(|l| l.size == PAGE_2M).count();
        // 1..2 MiB: 256 small pages; 2..4 MiB: one large page; 4 MiB..5 MiB+8 KiB: 258 small
        // pages, because the length left there is under 2 MiB.
        assert_eq!((small, large), (256 + 258, 1), "{l:?}");
        assert_eq!(l.iter().find(|l| l.size == PAGE_2M).unwrap().gpa, 2 * MIB);
        assert_eq!(t.translate(&mut m, MIB), Some(0x4010_0000));
        assert_eq!(t.translate(&mut m, 5 * MIB + 0x1fff), Some(0x4010_0000 + 4 * MIB + 0x1fff));
        assert_eq!(t.translate(&mut m, 5 * MIB + 0x2000), None);
        assert_eq!(t.translate(&mut m, MIB - 1), None);
    }

    #[test]
    fn misaligned_host_address_never_uses_large_pages() {
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Npt, &mut m).unwrap();
        t.map(&mut m, 0, 0x4000_1000, 4 * MIB).unwrap();
        assert!(leaves(&t, &mut m).iter().all(|l| l.size == PAGE_4K));
        assert_eq!(t.translate(&mut m, 3 * MIB), Some(0x4000_1000 + 3 * MIB));
    }

    #[test]
    fn holes_and_excluded_ranges_are_never_mapped() {
        // Guest RAM in two pieces around a hole (where devices would live), each backed by its
        // own host range; everything else — the hypervisor, other guests — must stay unmapped.
        let ram = [(0u64, 0x8000_0000u64, 6 * MIB), (16 * MIB, 0x9000_0000, 2 * MIB + 0x3000)];
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        for (gpa, hpa, len) in ram {
            t.map(&mut m, gpa, hpa, len).unwrap();
        }
        let mut covered = 0;
        for l in leaves(&t, &mut m) {
            let owner = ram.iter().find(|(g, _, len)| l.gpa >= *g && l.gpa + l.size <= g + len);
            let (g, h, _) = owner.unwrap_or_else(|| panic!("leaf {l:?} outside guest RAM"));
            assert_eq!(l.hpa, h + (l.gpa - g), "leaf {l:?} points to the wrong host memory");
            covered += l.size;
        }
        assert_eq!(covered, 6 * MIB + 2 * MIB + 0x3000);
        for gpa in (6 * MIB..16 * MIB).step_by(PAGE_4K as usize) {
            assert_eq!(t.translate(&mut m, gpa), None, "hole at {gpa:#x} is mapped");
        }
    }

    #[test]
    fn entry_bits_follow_each_format() {
        let mut m = FakeMem::new();
        let mut ept = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        ept.map(&mut m, 0, 0x20_0000, PAGE_2M).unwrap();
        ept.map(&mut m, PAGE_2M, 0x50_0000 + PAGE_4K, PAGE_4K).unwrap();
        let root = ept.root();
        let pml4e = m.table(root)[0];
        assert_eq!(pml4e & 0xfff, 0b111);
        let pdpte = m.table(pml4e & ADDR_MASK)[0];
        let pd = *m.table(pdpte & ADDR_MASK);
        assert_eq!(pd[0], 0x20_0000 | 0b111 | (6 << 3) | LARGE, "EPT 2M leaf: RWX, WB, large");
        let pt = m.table(pd[1] & ADDR_MASK);
        assert_eq!(pt[0], 0x50_1000 | 0b111 | (6 << 3), "EPT 4K leaf: RWX, WB");
        assert_eq!(ept.eptp(), root | 0x1e, "EPTP: WB, 4-level");

        let mut npt = NestedPageTable::new(Format::Npt, &mut m).unwrap();
        npt.map(&mut m, 0, 0x20_0000, PAGE_2M).unwrap();
        let pml4e = m.table(npt.root())[0];
        assert_eq!(pml4e & 0xfff, 0b111, "NPT non-leaf: P, RW, U/S");
        let pdpte = m.table(pml4e & ADDR_MASK)[0];
        assert_eq!(m.table(pdpte & ADDR_MASK)[0], 0x20_0000 | 0b111 | LARGE);
        assert_eq!(pml4e >> 63, 0, "NX never set");
    }

    #[test]
    fn overlapping_and_invalid_maps_are_refused_without_change() {
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Npt, &mut m).unwrap();
        t.map(&mut m, 4 * MIB, 0x4000_0000, 4 * MIB).unwrap();
        let before = leaves(&t, &mut m);
        assert_eq!(t.map(&mut m, 2 * MIB, 0x5000_0000, 4 * MIB), Err(MapError::AlreadyMapped(4 * MIB)));
        assert_eq!(leaves(&t, &mut m), before);
        assert_eq!(t.map(&mut m, 0x800, 0, PAGE_4K), Err(MapError::Unaligned));
        assert_eq!(t.map(&mut m, (1 << 48) - PAGE_4K, 0, 2 * PAGE_4K), Err(MapError::OutOfRange((1 << 48) + PAGE_4K - 1)));
    }

    #[test]
    fn each_address_and_the_length_must_be_4k_aligned_and_the_top_page_can_be_mapped() {
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        // SDM 29.3.2 / APM 15.25.5: a leaf holds a 4 KiB-aligned host frame; any of the
        // three misaligned alone, or two misaligned alike, is refused.
        for (gpa, hpa, len) in [(0x1000, 0x2001, PAGE_4K), (0x1000, 0x2000, 0x1001), (0x1800, 0x2800, PAGE_4K), (0x1800, 0x2000, 0x800), (0, 0x800, 0x800)] {
            assert_eq!(t.map(&mut m, gpa, hpa, len), Err(MapError::Unaligned), "{gpa:#x} {hpa:#x} {len:#x}");
        }
        assert!(leaves(&t, &mut m).is_empty());
        // The last page of the 48-bit space (a 4-level walk's reach) maps; one past does not.
        t.map(&mut m, (1 << 48) - PAGE_4K, 0x7000, PAGE_4K).unwrap();
        assert_eq!(t.translate(&mut m, (1 << 48) - 1), Some(0x7fff));
        assert_eq!(t.map(&mut m, 1 << 48, 0, PAGE_4K), Err(MapError::OutOfRange((1 << 48) + PAGE_4K - 1)));
        // A range ending exactly where a mapping starts does not overlap it.
        t.map(&mut m, 0x3000, 0x9000, PAGE_4K).unwrap();
        t.map(&mut m, 0x2000, 0x8000, PAGE_4K).unwrap();
        assert_eq!(t.translate(&mut m, 0x2fff), Some(0x8fff));
        assert_eq!(t.map(&mut m, 0x1000, 0, 0x3000), Err(MapError::AlreadyMapped(0x2000)));
    }

    #[test]
    fn a_page_table_already_under_a_2m_slot_is_kept_not_replaced_by_a_large_page() {
        // A PD entry that points to a page table must stay one (a large page written over it
        // would lose the table and whatever it maps). No mapping leaves an empty table today
        // (there is no unmap), so the test plants one: PML4 -> PDPT -> PD -> an empty PT.
        let mut m = FakeMem::new();
        let mut t = NestedPageTable::new(Format::Npt, &mut m).unwrap();
        let (pdpt, pd, pt) = (m.alloc_table().unwrap(), m.alloc_table().unwrap(), m.alloc_table().unwrap());
        let root = t.root();
        m.table(root)[0] = pdpt | 0b111;
        m.table(pdpt)[0] = pd | 0b111;
        m.table(pd)[1] = pt | 0b111;
        t.map(&mut m, PAGE_2M, 0x4000_0000, PAGE_2M).unwrap();
        assert_eq!(m.table(pd)[1], pt | 0b111, "the page table stays");
        let l = leaves(&t, &mut m);
        assert_eq!(l.len(), 512, "mapped with 4 KiB pages in the existing table");
        assert!(l.iter().all(|l| l.size == PAGE_4K));
        assert_eq!(t.translate(&mut m, PAGE_2M + 0x1234), Some(0x4000_1234));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(MapError::Unaligned.to_string(), "mapping is not 4 KiB aligned");
        assert_eq!(MapError::AlreadyMapped(0x2000).to_string(), "guest-physical 0x2000 is already mapped");
        assert_eq!(MapError::OutOfRange(1 << 48).to_string(), "guest-physical 0x1000000000000 is beyond 48 bits");
        assert_eq!(MapError::OutOfMemory.to_string(), "out of memory for nested page tables");
    }

    #[test]
    fn out_of_memory_is_an_error_and_destroy_frees_every_table() {
        let mut m = FakeMem::new();
        m.limit = 2;
        let mut t = NestedPageTable::new(Format::Ept, &mut m).unwrap();
        assert_eq!(t.map(&mut m, 0, 0, PAGE_4K), Err(MapError::OutOfMemory));
        m.limit = usize::MAX;
        t.map(&mut m, 0, 0, 3 * MIB).unwrap();
        t.map(&mut m, 1 << 40, 0x100_0000, PAGE_4K).unwrap();
        let n = m.tables.len();
        t.destroy(&mut m);
        assert_eq!(m.freed, n);
        assert!(m.tables.is_empty());
    }
}
