//! The VMCB: layout (AMD APM Vol. 2, Appendix B "Layout of VMCB") and typed access.
//!
//! Written by hand: no maintained no_std crate describes the VMCB. The VMCB is one 4 KiB page
//! the CPU reads and writes; we keep it as raw bytes and access fields by offset, so the
//! offsets below are the single source of truth and read like the APM's tables.

use crate::memory;

// Control area (Table B-1).
pub const INTERCEPT_CR: usize = 0x000;
pub const INTERCEPT_MISC1: usize = 0x00c;
pub const INTERCEPT_MISC2: usize = 0x010;
/// PAUSE filter threshold and count (16 bits each; APM 15.14.4).
pub const PAUSE_FILTER_THRESHOLD: usize = 0x03c;
pub const PAUSE_FILTER_COUNT: usize = 0x03e;
pub const IOPM_BASE_PA: usize = 0x040;
pub const MSRPM_BASE_PA: usize = 0x048;
pub const TSC_OFFSET: usize = 0x050;
pub const GUEST_ASID: usize = 0x058;
pub const TLB_CONTROL: usize = 0x05c;
pub const INT_CTL: usize = 0x060;
/// Interrupt shadow (bit 0): the guest is in an STI/MOV SS shadow.
pub const INT_STATE: usize = 0x068;
pub const EXITCODE: usize = 0x070;
pub const EXITINFO1: usize = 0x078;
pub const EXITINFO2: usize = 0x080;
/// The event being delivered when the exit happened (APM 15.7.2), EVENTINJ's format.
pub const EXITINTINFO: usize = 0x088;
pub const NP_ENABLE: usize = 0x090;
pub const EVENTINJ: usize = 0x0a8;
pub const N_CR3: usize = 0x0b0;
pub const NRIP: usize = 0x0c8;

// State-save area (Table B-2), at offset 0x400.
pub const ES: usize = 0x400;
pub const CS: usize = 0x410;
pub const SS: usize = 0x420;
pub const DS: usize = 0x430;
pub const FS: usize = 0x440;
pub const GS: usize = 0x450;
pub const GDTR: usize = 0x460;
pub const LDTR: usize = 0x470;
pub const IDTR: usize = 0x480;
pub const TR: usize = 0x490;
pub const CPL: usize = 0x4cb;
pub const EFER: usize = 0x4d0;
pub const CR4: usize = 0x548;
pub const CR3: usize = 0x550;
pub const CR0: usize = 0x558;
pub const DR7: usize = 0x560;
pub const DR6: usize = 0x568;
pub const RFLAGS: usize = 0x570;
pub const RIP: usize = 0x578;
pub const RSP: usize = 0x5d8;
pub const RAX: usize = 0x5f8;
pub const CR2: usize = 0x640;
pub const G_PAT: usize = 0x668;

bitflags::bitflags! {
    /// Intercept vector 0 (offset 0x000): CR reads in bits 15:0, CR writes in 31:16.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptCr: u32 {
        const CR0_WRITE = 1 << 16;
        const CR4_WRITE = 1 << 20;
    }
}

bitflags::bitflags! {
    /// Intercept vector 3 (offset 0x00c, Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc1: u32 {
        const INTR = 1 << 0;
        const NMI = 1 << 1;
        const VINTR = 1 << 4;
        const RDPMC = 1 << 15;
        const CPUID = 1 << 18;
        const IRET = 1 << 20;
        const INVD = 1 << 22;
        const PAUSE = 1 << 23;
        const HLT = 1 << 24;
        const INVLPGA = 1 << 26;
        const IOIO = 1 << 27;
        const MSR = 1 << 28;
        const SHUTDOWN = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Intercept vector 4 (offset 0x010, Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc2: u32 {
        const VMRUN = 1 << 0;
        const VMMCALL = 1 << 1;
        const VMLOAD = 1 << 2;
        const VMSAVE = 1 << 3;
        const STGI = 1 << 4;
        const CLGI = 1 << 5;
        const SKINIT = 1 << 6;
        const WBINVD = 1 << 9;
        const MONITOR = 1 << 10;
        const MWAIT = 1 << 11;
        const XSETBV = 1 << 13;
    }
}

/// A VMCB page, owned by physical address.
pub struct Vmcb {
    pub phys: u64,
}

impl Vmcb {
    pub fn alloc() -> Option<Vmcb> {
        memory::alloc_frame_zeroed().map(|phys| Vmcb { phys })
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(off < 4096);
        memory::phys_to_virt(self.phys).wrapping_add(off)
    }

    pub fn read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: inside our VMCB page; the CPU writes it only during VMRUN, not concurrently.
        unsafe { core::ptr::read_unaligned(self.ptr(off) as *const T) }
    }

    pub fn write<T: Copy>(&mut self, off: usize, v: T) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_unaligned(self.ptr(off) as *mut T, v) }
    }

    pub fn r64(&self, off: usize) -> u64 {
        self.read(off)
    }

    pub fn w64(&mut self, off: usize, v: u64) {
        self.write(off, v)
    }

    /// Writes a segment register: selector, attributes (the VMCB's 12-bit packed form of
    /// descriptor bits 40-47 and 52-55, APM 15.5.1), limit, base.
    pub fn set_segment(&mut self, off: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.write(off, selector);
        self.write(off + 2, attrib);
        self.write(off + 4, limit);
        self.write(off + 8, base);
    }

    pub fn free(self) {
        memory::free(self.phys, 1);
    }
}
