//! Reading guest memory the way the guest sees it: a walk of the guest's own page tables
//! (32-bit, PAE and 4-level, Intel SDM Vol. 3A chapter 4 / AMD APM Vol. 2 chapter 5), and an
//! instruction fetch on top of it.
//!
//! Needed when the hardware does not tell Bastion enough about an exit — e.g. which register a
//! `MOV CR4` wrote on an SVM CPU without decode assists (QEMU's TCG) — so Bastion reads the
//! instruction itself. Guest-physical reads go through a [`GuestPhys`], which the kernel
//! backs with the VM's nested page tables; a miss anywhere returns `None`, never a fault.

/// Guest-physical memory as the hypervisor reads it.
pub trait GuestPhys {
    /// Reads `buf.len()` bytes at `gpa` (within one page); `false` if it is not RAM.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool;

    /// Writes `buf` at `gpa` (within one page); `false` if it is not RAM.
    fn write(&mut self, gpa: u64, buf: &[u8]) -> bool;

    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    }

    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b).then(|| u32::from_le_bytes(b))
    }
}

/// The guest's paging controls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const PG: u64 = 1 << 31;
const PAE: u64 = 1 << 5;
const PSE: u64 = 1 << 4;
const LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The paging controls of a vCPU's mode.
impl From<&super::regs::ModeView> for Paging {
    fn from(m: &super::regs::ModeView) -> Paging {
        Paging { cr0: m.cr0, cr3: m.cr3, cr4: m.cr4, efer: m.efer }
    }
}

impl Paging {
    pub fn long_mode(&self) -> bool {
        self.efer & LMA != 0
    }

    /// Guest-physical address of `linear`, or `None` if not mapped (or the tables are not RAM).
    /// A frame address and the offset in its page are disjoint bits: they are added.
    pub fn translate(&self, linear: u64, mem: &mut (impl GuestPhys + ?Sized)) -> Option<u64> {
        self.translate_noting(linear, mem, &mut |_, _| {})
    }

    /// [`Self::translate`], handing each paging-structure entry it reads to `seen` with its
    /// level (4 PML4E, 3 PDPTE, 2 PDE, 1 PTE; SDM Vol. 3A 4.5), for reports that show them.
    pub fn translate_noting(&self, linear: u64, mem: &mut (impl GuestPhys + ?Sized), seen: &mut dyn FnMut(u8, u64)) -> Option<u64> {
        if self.cr0 & PG == 0 {
            return Some(if self.long_mode() { linear } else { linear & 0xffff_ffff });
        }
        if self.long_mode() {
            let mut table = self.cr3 & ADDR;
            for level in (1..=3).rev() {
                let e = mem.read_u64(table + 8 * ((linear >> (12 + 9 * level)) & 0x1ff))?;
                seen(level as u8 + 1, e);
                if e & PRESENT == 0 {
                    return None;
                }
                // 1 GiB pages at level 2, 2 MiB pages at level 1.
                if level <= 2 && e & LARGE != 0 {
                    let size = 1u64 << (12 + 9 * level);
                    return Some((e & ADDR & !(size - 1)) + (linear & (size - 1)));
                }
                table = e & ADDR;
            }
            let e = mem.read_u64(table + 8 * ((linear >> 12) & 0x1ff))?;
            seen(1, e);
            return (e & PRESENT != 0).then(|| (e & ADDR) + (linear & 0xfff));
        }
        let linear = linear & 0xffff_ffff;
        if self.cr4 & PAE != 0 {
            let pdpte = mem.read_u64((self.cr3 & 0xffff_ffe0) + 8 * (linear >> 30))?;
            seen(3, pdpte);
            if pdpte & PRESENT == 0 {
                return None;
            }
            let pde = mem.read_u64((pdpte & ADDR) + 8 * ((linear >> 21) & 0x1ff))?;
            seen(2, pde);
            if pde & PRESENT == 0 {
                return None;
            }
            if pde & LARGE != 0 {
                return Some((pde & ADDR & !0x1f_ffff) + (linear & 0x1f_ffff));
            }
            let pte = mem.read_u64((pde & ADDR) + 8 * ((linear >> 12) & 0x1ff))?;
            seen(1, pte);
            return (pte & PRESENT != 0).then(|| (pte & ADDR) + (linear & 0xfff));
        }
        let pde = mem.read_u32((self.cr3 & 0xffff_f000) + 4 * (linear >> 22))? as u64;
        seen(2, pde);
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & LARGE != 0 && self.cr4 & PSE != 0 {
            // 4 MiB page; bits 20:13 give physical address bits 39:32 (PSE-36).
            return Some((pde & 0xffc0_0000) + ((pde >> 13 & 0xff) << 32) + (linear & 0x3f_ffff));
        }
        let pte = mem.read_u32((pde & 0xffff_f000) + 4 * ((linear >> 12) & 0x3ff))? as u64;
        seen(1, pte);
        (pte & PRESENT != 0).then(|| (pte & 0xffff_f000) + (linear & 0xfff))
    }

    /// Splits an access of `buf.len()` bytes at `linear` where it crosses into the next 4 KiB
    /// page, since each page translates on its own: `(linear address, part of buf)`, in order.
    /// Outside long mode a linear address has 32 bits and wraps (SDM Vol. 3A 3.4 "Logical and
    /// Linear Addresses"), so each address given is the one CR2 names for a #PF on that part.
    /// An operand crosses at most one boundary; the split is a slice split, so it has no loop
    /// counter that could stop advancing.
    pub fn pieces<'b>(&self, linear: u64, buf: &'b mut [u8]) -> impl Iterator<Item = (u64, &'b mut [u8])> + 'b {
        let long_mode = self.long_mode();
        let first = (4096 - (linear & 0xfff) as usize).min(buf.len());
        let (head, tail) = buf.split_at_mut(first);
        let mut next = linear;
        core::iter::once(head).filter(|h| !h.is_empty()).chain(tail.chunks_mut(4096)).map(move |piece| {
            let addr = if long_mode { next } else { next & 0xffff_ffff };
            next = next.wrapping_add(piece.len() as u64);
            (addr, piece)
        })
    }

    /// Reads up to 15 bytes of instruction at `linear` (an instruction may cross a page).
    pub fn fetch(&self, linear: u64, mem: &mut (impl GuestPhys + ?Sized)) -> Option<[u8; 15]> {
        let mut out = [0u8; 15];
        let mut read = 0;
        for (addr, piece) in self.pieces(linear, &mut out) {
            let gpa = self.translate(addr, mem)?;
            if !mem.read(gpa, piece) {
                // The tail may run off the end of RAM; what was read may still decode.
                break;
            }
            read += piece.len();
        }
        (read > 0).then_some(out)
    }
}

/// An instruction that writes a control register, as decoded from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrWriteInsn {
    /// `MOV CRn, reg` (0F 22 /r): CR number, GPR number in the hardware order (RAX, RCX, RDX,
    /// RBX, RSP, RBP, RSI, RDI, R8..R15).
    Mov { cr: u8, gpr: usize },
    /// `CLTS` (0F 06): clears CR0.TS.
    Clts,
    /// `LMSW reg` (0F 01 /6 with a register operand): loads CR0[3:0] (PE can be set, not
    /// cleared).
    Lmsw { gpr: usize },
}

/// Decodes an instruction that writes a control register (SDM Vol. 2B "MOV—Move to/from
/// Control Registers", Vol. 2A "CLTS", Vol. 2A "LMSW"): the form and its length.
pub fn decode_cr_write(bytes: &[u8], long_mode: bool) -> Option<(CrWriteInsn, usize)> {
    // `i`: where the opcode starts, after the prefixes (past the end if there are only
    // prefixes, and then nothing decodes).
    let mut i = bytes.len();
    let mut rex = 0u8;
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            0x66 | 0x67 | 0xf0 | 0x2e | 0x3e | 0x26 | 0x36 | 0x64 | 0x65 => rex = 0,
            // REX counts only right before the opcode (SDM Vol. 2A 2.2.1).
            0x40..=0x4f if long_mode => rex = b,
            _ => {
                i = at;
                break;
            }
        }
    }
    let op = bytes.get(i..i + 2)?;
    match op {
        [0x0f, 0x06] => Some((CrWriteInsn::Clts, i + 2)),
        [0x0f, 0x22] => {
            let modrm = *bytes.get(i + 2)?;
            // The mod field is ignored: the operand is always a register (SDM MOV to CR).
            let cr = ((modrm >> 3) & 7) + if rex & 4 != 0 { 8 } else { 0 };
            let gpr = (modrm & 7) as usize + if rex & 1 != 0 { 8 } else { 0 };
            Some((CrWriteInsn::Mov { cr, gpr }, i + 3))
        }
        [0x0f, 0x01] => {
            let modrm = *bytes.get(i + 2)?;
            // LMSW is /6; only the register form is decoded (a memory operand would need a
            // full address computation, and no OS uses LMSW at all in long mode).
            (modrm >> 6 == 3 && (modrm >> 3) & 7 == 6)
                .then(|| (CrWriteInsn::Lmsw { gpr: (modrm & 7) as usize + if rex & 1 != 0 { 8 } else { 0 } }, i + 3))
        }
        _ => None,
    }
}

/// The CR0 value that CLTS or `LMSW value` produces from `cr0` (SDM Vol. 2A CLTS, LMSW: LMSW
/// loads bits 3:0 and cannot clear PE).
pub fn cr0_after(insn: CrWriteInsn, cr0: u64, value: u64) -> u64 {
    match insn {
        CrWriteInsn::Clts => cr0 & !(1 << 3),
        CrWriteInsn::Lmsw { .. } => (cr0 & !0xe) | (value & 0xf),
        CrWriteInsn::Mov { .. } => value,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pieces_of(p: Paging, linear: u64, len: usize) -> Vec<(u64, usize)> {
        let mut buf = vec![0u8; len];
        p.pieces(linear, &mut buf).map(|(a, piece)| (a, piece.len())).collect()
    }

    #[test]
    fn accesses_split_where_they_cross_a_4k_page_and_wrap_at_4g_outside_long_mode() {
        let legacy = Paging::default();
        let long = Paging { efer: LMA, ..Paging::default() };
        assert_eq!(pieces_of(legacy, 0x1000, 8), [(0x1000, 8)], "inside one page");
        assert_eq!(pieces_of(legacy, 0x1ffe, 4), [(0x1ffe, 2), (0x2000, 2)]);
        assert_eq!(pieces_of(legacy, 0x1ffc, 4), [(0x1ffc, 4)], "ends exactly at the boundary");
        assert_eq!(pieces_of(legacy, 0x0fff, 8194), [(0xfff, 1), (0x1000, 4096), (0x2000, 4096), (0x3000, 1)]);
        assert_eq!(pieces_of(legacy, 0, 0), [], "nothing to access");
        // 32-bit linear addresses wrap to 0 (SDM Vol. 3A 3.4); 64-bit ones go on.
        assert_eq!(pieces_of(legacy, 0xffff_fffe, 4), [(0xffff_fffe, 2), (0, 2)]);
        assert_eq!(pieces_of(long, 0xffff_fffe, 4), [(0xffff_fffe, 2), (0x1_0000_0000, 2)]);
        // The pieces are the buffer's own bytes, in order.
        let mut buf = [0u8; 6];
        for (i, (_, piece)) in legacy.pieces(0x2ffd, &mut buf).enumerate() {
            piece.fill(i as u8 + 1);
        }
        assert_eq!(buf, [1, 1, 1, 2, 2, 2]);
    }

    /// Sparse guest memory.
    #[derive(Default)]
    pub(crate) struct Mem(pub(crate) BTreeMap<u64, u8>);

    impl Mem {
        pub(crate) fn put_u64(&mut self, gpa: u64, v: u64) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.0.insert(gpa + i as u64, *b);
            }
        }
        pub(crate) fn put_u32(&mut self, gpa: u64, v: u32) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.0.insert(gpa + i as u64, *b);
            }
        }
        pub(crate) fn put(&mut self, gpa: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(gpa + i as u64, *b);
            }
        }
    }

    impl GuestPhys for Mem {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                match self.0.get(&(gpa + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
        fn write(&mut self, gpa: u64, buf: &[u8]) -> bool {
            self.put(gpa, buf);
            true
        }
    }

    #[test]
    fn paging_off_is_identity() {
        let p = Paging::default();
        assert_eq!(p.translate(0x1_2345_6789, &mut Mem::default()), Some(0x2345_6789));
    }

    #[test]
    fn four_level_walk_with_2m_and_4k_pages() {
        let mut m = Mem::default();
        m.put_u64(0x1000, 0x2000 | 3); // PML4[0]
        m.put_u64(0x2000, 0x3000 | 3); // PDPT[0]
        m.put_u64(0x3000, 0x20_0000 | 0x83); // PD[0]: 2 MiB at 2 MiB
        m.put_u64(0x3008, 0x4000 | 3); // PD[1] -> PT
        m.put_u64(0x4000 + 8 * 5, 0x9000 | 3); // PT[5]
        let p = Paging { cr0: PG | 1, cr3: 0x1000, cr4: PAE, efer: LMA | (1 << 8) };
        assert_eq!(p.translate(0x1_2345, &mut m), Some(0x20_0000 + 0x1_2345));
        assert_eq!(p.translate(0x20_5abc, &mut m), Some(0x9abc));
        assert_eq!(p.translate(0x20_6000, &mut m), None, "PT[6] not present");
        assert_eq!(p.translate(0x80_0000_0000, &mut m), None, "PML4[1] not RAM");
    }

    /// Flag and ignored bits an entry may carry besides its address: P, R/W, U/S, A, D (and
    /// bit 12, PAT, in a large page), and XD in bit 63 (SDM Vol. 3A Tables 4-15 to 4-20).
    const FLAGS: u64 = 0x67;
    const XD: u64 = 1 << 63;

    #[test]
    fn four_level_walk_follows_each_levels_present_bit_and_address_only() {
        // SDM Vol. 3A 4.5: PML4E -> PDPTE (PS = 1: 1 GiB page) -> PDE (PS = 1: 2 MiB page) ->
        // PTE. CR3 bits 11:0 are flags (PWT, PCD) or the PCID, not address.
        let mut m = Mem::default();
        m.put_u64(0x1000, XD | 0x2000 | FLAGS); // PML4[0]
        m.put_u64(0x1008, 0x2000); // PML4[1]: an address, but not present
        m.put_u64(0x1010, 0x2000 | 0x80 | FLAGS); // PML4[2]: PS is reserved here, not a page
        m.put_u64(0x2000, 0x3000 | FLAGS); // PDPT[0]
        m.put_u64(0x2008, 0x8000_0000 | 0x1000 | 0x80 | FLAGS); // PDPT[1]: 1 GiB page, PAT set
        m.put_u64(0x2010, 0x3000); // PDPT[2]: not present
        m.put_u64(0x3000 + 8, XD | 0x60_0000 | 0x1000 | 0x80 | FLAGS); // PD[1]: 2 MiB page, PAT set
        m.put_u64(0x3000 + 16, 0x4000 | FLAGS); // PD[2] -> PT
        m.put_u64(0x3000 + 24, 0x4000); // PD[3]: not present
        m.put_u64(0x4000 + 8 * 5, XD | 0x9000 | FLAGS); // PT[5]
        m.put_u64(0x4000 + 8 * 6, 0x9000); // PT[6]: not present
        let p = Paging { cr0: PG | 1, cr3: 0x1018, cr4: PAE, efer: LMA | (1 << 8) };
        assert_eq!(p.translate(0x4000_1234, &mut m), Some(0x8000_1234), "1 GiB page");
        assert_eq!(p.translate(0x7fff_fff0, &mut m), Some(0xbfff_fff0), "its last bytes");
        assert_eq!(p.translate(0x20_5678, &mut m), Some(0x60_5678), "2 MiB page");
        assert_eq!(p.translate(0x40_5abc, &mut m), Some(0x9abc), "4 KiB page");
        assert_eq!(p.translate(0x40_6000, &mut m), None, "PTE not present");
        // Each not-present entry below holds an address that would lead on to a mapped page.
        assert_eq!(p.translate(0x60_5abc, &mut m), None, "PDE not present");
        assert_eq!(p.translate(0x8020_5678, &mut m), None, "PDPTE not present");
        assert_eq!(p.translate(0x80_0020_5678, &mut m), None, "PML4E not present");
        assert_eq!(p.translate(0x100_0020_5678, &mut m), Some(0x60_5678), "PML4E PS ignored: a table");
    }

    #[test]
    fn pae_walk_follows_each_levels_present_bit_and_address_only() {
        // SDM Vol. 3A 4.4: CR3 bits 31:5 locate the four PDPTEs; PDE PS = 1 is a 2 MiB page.
        let mut m = Mem::default();
        let pdpt = 0x1020; // 32-byte aligned, not page aligned
        m.put_u64(pdpt, 0x2000 | 1); // PDPTE[0]
        m.put_u64(pdpt + 8, 0x3000 | 1); // PDPTE[1]
        m.put_u64(pdpt + 16, 0x3000); // PDPTE[2]: not present
        m.put_u64(0x2000 + 8, XD | 0x60_0000 | 0x1000 | 0x80 | FLAGS); // PD0[1]: 2 MiB, PAT set
        m.put_u64(0x2000 + 16, 0x4000); // PD0[2]: not present
        m.put_u64(0x3000, XD | 0x4000 | FLAGS); // PD1[0] -> PT
        m.put_u64(0x4000 + 8 * 3, XD | 0x9000 | FLAGS); // PT[3]
        m.put_u64(0x4000 + 8 * 4, 0x9000); // PT[4]: not present
        let p = Paging { cr0: PG | 1, cr3: pdpt | 0x18, cr4: PAE, efer: 0 };
        assert_eq!(p.translate(0x20_1234, &mut m), Some(0x60_1234), "2 MiB page");
        assert_eq!(p.translate(0x4000_3abc, &mut m), Some(0x9abc), "PDPTE[1], 4 KiB page");
        assert_eq!(p.translate(0x4000_4000, &mut m), None, "PTE not present");
        assert_eq!(p.translate(0x40_3abc, &mut m), None, "PDE not present (its address leads to PT[3])");
        assert_eq!(p.translate(0x8000_3abc, &mut m), None, "PDPTE not present (its address leads to PD1)");
    }

    #[test]
    fn two_level_walk_with_and_without_pse() {
        // SDM Vol. 3A 4.3: a PDE with PS = 1 maps 4 MiB only with CR4.PSE, and its bits 20:13
        // are physical address bits 39:32 (PSE-36); without CR4.PSE it points to a table.
        let mut m = Mem::default();
        m.put_u32(0x5000, 0x6000 | 0x67); // PDE[0] -> PT
        m.put_u32(0x5000 + 4, 0x80_0000 | 0x3 << 13 | 0x1000 | 0xe7); // PDE[1]: 4 MiB, PSE-36 = 3
        m.put_u32(0x5000 + 8, 0x6000); // PDE[2]: not present
        m.put_u32(0x6000 + 4 * 8, 0x7000 | 0x67); // PT[8]
        m.put_u32(0x6000 + 4 * 9, 0x7000); // PT[9]: not present
        // Without CR4.PSE, PDE[1] bits 31:12 (0x80_7000, PSE-36 and PAT included) locate a table.
        m.put_u32(0x80_7000 + 4 * 0x10, 0xa000 | 0x67);
        let pse = Paging { cr0: PG | 1, cr3: 0x5018, cr4: PSE, efer: 0 };
        assert_eq!(pse.translate(0x8123, &mut m), Some(0x7123));
        assert_eq!(pse.translate(0x9000, &mut m), None, "PTE not present");
        assert_eq!(pse.translate(0x80_8123, &mut m), None, "PDE not present (its address leads to PT[8])");
        assert_eq!(pse.translate(0x41_0010, &mut m), Some(0x3_0081_0010), "4 MiB page above 4 GiB");
        let no_pse = Paging { cr4: 0, ..pse };
        assert_eq!(no_pse.translate(0x41_0010, &mut m), Some(0xa010), "PS without CR4.PSE: a table");
    }

    #[test]
    fn pae_and_32bit_walks() {
        let mut m = Mem::default();
        m.put_u64(0x1000, 0x2000 | 1); // PDPTE[0]
        m.put_u64(0x2000 + 8 * 2, 0x60_0000 | 0x83); // 2 MiB page
        let p = Paging { cr0: PG | 1, cr3: 0x1000, cr4: PAE, efer: 0 };
        assert_eq!(p.translate(0x40_1234, &mut m), Some(0x60_1234));

        let mut m = Mem::default();
        m.put_u32(0x5000 + 4, 0x80_0000 | 0x83); // PDE[1]: 4 MiB page
        m.put_u32(0x5000, 0x6000 | 3); // PDE[0] -> PT
        m.put_u32(0x6000 + 4 * 8, 0x7000 | 3);
        let p = Paging { cr0: PG | 1, cr3: 0x5000, cr4: PSE, efer: 0 };
        assert_eq!(p.translate(0x40_0010, &mut m), Some(0x80_0010));
        assert_eq!(p.translate(0x8123, &mut m), Some(0x7123));
    }

    #[test]
    fn fetch_crosses_a_page_boundary() {
        let mut m = Mem::default();
        m.put(0xffe, &[0x0f, 0x22]);
        m.put(0x1000, &[0xe0; 13]);
        let p = Paging::default();
        let b = p.fetch(0xffe, &mut m).unwrap();
        assert_eq!(&b[..3], &[0x0f, 0x22, 0xe0]);
    }

    #[test]
    fn mov_to_cr_decodes_with_and_without_rex() {
        use CrWriteInsn::*;
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0xe0], true), Some((Mov { cr: 4, gpr: 0 }, 3))); // mov cr4, rax
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x22, 0xe1], true), Some((Mov { cr: 4, gpr: 9 }, 4))); // mov cr4, r9
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0xc3], false), Some((Mov { cr: 0, gpr: 3 }, 3))); // mov cr0, ebx
        assert_eq!(decode_cr_write(&[0x44, 0x0f, 0x22, 0xc0], true), Some((Mov { cr: 8, gpr: 0 }, 4))); // mov cr8, rax
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x22, 0xe1], false), None, "REX is INC outside long mode");
        assert_eq!(decode_cr_write(&[0x0f, 0x20, 0xe0], true), None, "MOV from CR is not a write");
        // A REX followed by another prefix is ignored (SDM Vol. 2A 2.2.1).
        assert_eq!(decode_cr_write(&[0x41, 0x66, 0x0f, 0x22, 0xe1], true), Some((Mov { cr: 4, gpr: 1 }, 5)));
    }

    #[test]
    fn clts_and_lmsw_decode_and_compute_cr0() {
        use CrWriteInsn::*;
        assert_eq!(decode_cr_write(&[0x0f, 0x06], true), Some((Clts, 2)));
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0xf0], false), Some((Lmsw { gpr: 0 }, 3))); // lmsw ax
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x01, 0xf3], true), Some((Lmsw { gpr: 11 }, 4))); // lmsw r11w
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0x30], false), None, "lmsw [eax]: memory form not decoded");
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0xf8], true), None, "0F 01 /7 is not LMSW");
        // CLTS clears TS (bit 3) only.
        assert_eq!(cr0_after(Clts, 0x8000_003b, 0), 0x8000_0033);
        // LMSW loads MP, EM, TS and can set PE...
        assert_eq!(cr0_after(Lmsw { gpr: 0 }, 0x10, 0xffff_000f), 0x1f);
        // ...but not clear it.
        assert_eq!(cr0_after(Lmsw { gpr: 0 }, 0x11, 0), 0x11);
        assert_eq!(cr0_after(Lmsw { gpr: 0 }, 0x11, 1), 0x11, "PE set again stays set");
    }

    #[test]
    fn prefixes_alone_decode_to_nothing() {
        assert_eq!(decode_cr_write(&[0x66, 0x41, 0x2e], true), None);
        assert_eq!(decode_cr_write(&[], true), None);
        assert_eq!(decode_cr_write(&[0x66, 0x0f, 0x06], false), Some((CrWriteInsn::Clts, 3)));
    }
}
