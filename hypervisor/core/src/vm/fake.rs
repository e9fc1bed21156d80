//! A fake vCPU and host for the exit handler: the unit tests (`vm::tests`) and the fuzz target
//! `handle_exit` (feature `fake`) drive `handle_exit` over them, without hardware.

use super::regs::ModeView;
use super::{Gprs, Host, Seg, Vcpu};
use alloc::vec::Vec;

/// A vCPU as the exit handler sees it, kept in plain fields. It checks what a backend may
/// assume the handler gives it: values of CR0, CR4, EFER, XCR0 and RFLAGS that the architecture
/// allows (the handler decides #GP before it asks), so every test and fuzz run over it checks
/// them too.
#[derive(Default)]
pub struct FakeCpu {
    pub gprs: Gprs,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cpl: u8,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs_l: bool,
    pub cs_d: bool,
    pub ss_b: bool,
    pub cr2: u64,
    pub tsc_offset: u64,
    pub xcr0: u64,
    pub ds_base: u64,
    pub es_base: u64,
    pub skipped: u32,
    pub injected: Vec<(u8, Option<u32>)>,
    pub window_open: bool,
    pub window_requested: bool,
    pub interrupts: Vec<u8>,
    pub nmi_window_open: bool,
    pub nmi_window_requested: bool,
    /// NMIs injected, and how many of them the "hardware" has delivered.
    pub nmis: u32,
    pub nmis_delivered: u32,
    pub tpr: u8,
}

impl Vcpu for FakeCpu {
    fn gprs(&mut self) -> &mut Gprs {
        &mut self.gprs
    }
    fn rsp(&self) -> u64 {
        self.rsp
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rsp(&mut self, v: u64) {
        self.rsp = v;
    }
    fn set_rflags(&mut self, v: u64) {
        assert!(v & 2 != 0, "RFLAGS bit 1 is always 1 (SDM Vol. 1 3.4.3): {v:#x}");
        self.rflags = v;
    }
    fn segment_db(&self, seg: Seg) -> bool {
        match seg {
            Seg::Cs => self.cs_d,
            Seg::Ss => self.ss_b,
            _ => false,
        }
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn cr8_tpr(&self) -> u8 {
        self.tpr
    }
    fn set_cr8_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }
    fn mode(&self) -> ModeView {
        ModeView { cr0: self.cr0, cr3: self.cr3, cr4: self.cr4, efer: self.efer, cs_l: self.cs_l }
    }
    fn set_guest_efer(&mut self, v: u64) {
        // SCE, LME, LMA, NXE, LMSLE, FFXSR, TCE (APM Vol. 2 3.1.7); SVME never reaches a
        // guest (nested virtualization is hidden), nor does any undefined bit.
        assert_eq!(v & !(1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 13 | 1 << 14 | 1 << 15), 0, "EFER {v:#x}");
        self.efer = v;
    }
    fn set_guest_cr(&mut self, cr: u8, v: u64) {
        // What MOV to CR would #GP on never reaches the vCPU (SDM Vol. 3A 2.5, Vol. 2B MOV):
        // bits 63:32, PG without PE, NW without CD, CR4.VMXE (VMX is hidden).
        assert_eq!(v >> 32, 0, "CR{cr} {v:#x}: bits 63:32 are reserved");
        match cr {
            0 => {
                assert!(v & (1 << 31) == 0 || v & 1 != 0, "CR0 {v:#x}: PG without PE");
                assert!(v & (1 << 29) == 0 || v & (1 << 30) != 0, "CR0 {v:#x}: NW without CD");
                self.cr0 = v;
            }
            4 => {
                assert_eq!(v & (1 << 13), 0, "CR4 {v:#x}: VMXE");
                self.cr4 = v;
            }
            _ => panic!("cr{cr}"),
        }
    }
    fn segment_base(&self, seg: Seg) -> u64 {
        match seg {
            Seg::Ds => self.ds_base,
            Seg::Es => self.es_base,
            _ => 0,
        }
    }
    fn set_cr2(&mut self, v: u64) {
        self.cr2 = v;
    }
    fn tsc_offset(&self) -> u64 {
        self.tsc_offset
    }
    fn set_tsc_offset(&mut self, v: u64) {
        self.tsc_offset = v;
    }
    fn set_xcr0(&mut self, v: u64) {
        // x87 always, AVX only with SSE (SDM Vol. 1 13.3).
        assert!(v & 1 != 0 && (v & 4 == 0 || v & 2 != 0), "XCR0 {v:#x}");
        self.xcr0 = v;
    }
    fn complete(&mut self, next_rip: u64) {
        self.rip = next_rip;
        self.skipped += 1;
    }
    fn inject_exception(&mut self, v: u8, e: Option<u32>) {
        self.injected.push((v, e));
    }
    fn interrupt_window_open(&self) -> bool {
        self.window_open && !self.event_queued()
    }
    fn inject_interrupt(&mut self, vector: u8) {
        self.interrupts.push(vector);
    }
    fn request_interrupt_window(&mut self, on: bool) {
        self.window_requested = on;
    }
    fn nmi_window_open(&self) -> bool {
        self.nmi_window_open && !self.event_queued()
    }
    fn inject_nmi(&mut self) {
        self.nmis += 1;
    }
    fn request_nmi_window(&mut self, on: bool) {
        self.nmi_window_requested = on;
    }
}

impl FakeCpu {
    /// An NMI queued for the next entry occupies the event-injection field, as an exception
    /// or interrupt does.
    pub fn event_queued(&self) -> bool {
        self.nmis > self.nmis_delivered
    }
}

/// The host: a CPU with XSAVE (x87, SSE, AVX) and NX, and a TSC that reads 1,000,000.
pub struct FakeHost {
    pub wbinvd: core::cell::Cell<u32>,
}

pub const HOST_TSC: u64 = 1_000_000;

impl Host for FakeHost {
    fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, 1, 2, 3],
            // FXSR, SSE, PAE, PGE, PSE, DE, TSC; XSAVE.
            1 => [0x11, 0x22, 1 << 26, (1 << 24) | (1 << 25) | (1 << 6) | (1 << 13) | (1 << 3) | (1 << 2) | (1 << 4)],
            0xd => [0x7, 0, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, 1 << 20],
            0x8000_0008 => [40, 0, 0, 0],
            _ => [0x11, 0x22, 0x33, 0x44],
        }
    }
    fn rdtsc(&self) -> u64 {
        HOST_TSC
    }
    fn wbinvd(&self) {
        self.wbinvd.set(self.wbinvd.get() + 1);
    }
}
