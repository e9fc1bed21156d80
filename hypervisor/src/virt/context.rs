//! The part of a vCPU that neither VMX nor SVM switches: extended state (x87/SSE/AVX… via
//! XSAVE, or FXSAVE without it) and XCR0, DR0–DR3, and — where the backend's hardware does not
//! switch them — DR6, CR2, the SYSCALL MSRs, KERNEL_GS_BASE and TSC_AUX.
//!
//! Why at slice boundaries and not at every exit: Bastion itself never uses any of this
//! state. The kernel is built for `x86_64-unknown-none`, which has no SSE/x87 code generation;
//! it sets no breakpoints, never executes SYSCALL or SWAPGS, never reads TSC_AUX, and a host
//! page fault is a crash. So while a vCPU holds a CPU, its values can stay in the registers
//! across exits, and only a change of vCPU on the CPU needs the switch: [`GuestContext::load`]
//! when a slice begins, [`GuestContext::save`] when it ends (before the vCPU may move to
//! another CPU). Who switches what:
//!
//! | state | VMX | SVM |
//! |---|---|---|
//! | x87/SSE/AVX, XCR0 | here | here |
//! | DR0–DR3 | here | here |
//! | DR6 | here | VMCB |
//! | DR7 | VMCS (guest DR7; host gets 0x400 at exit, SDM 28.5.1) | VMCB |
//! | CR2 | here | VMCB |
//! | STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE | here | VMLOAD/VMSAVE (APM 15.5.2) |
//! | TSC_AUX | here | here |
//!
//! Written by hand: no no_std crate manages XSAVE areas for a hypervisor.

use crate::memory;
use bastion_core::vm::msr;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// XCR0 the host keeps while no guest's value is loaded: every component the CPU supports, so
/// an XRSTOR can reach all of them (SDM Vol. 1 13.8: XRSTOR only touches XCR0's components).
static HOST_XCR0: AtomicU64 = AtomicU64::new(0);
/// Bytes of an XSAVE area for every supported component (CPUID.(EAX=0DH,ECX=0):ECX), or 512
/// for FXSAVE; 0 before `init_cpu`.
static AREA_BYTES: AtomicUsize = AtomicUsize::new(0);
static USE_XSAVEOPT: AtomicU64 = AtomicU64::new(0);
/// TSC_AUX exists (RDTSCP, CPUID.8000_0001H:EDX[27], or RDPID, CPUID.(EAX=7,ECX=0):ECX[22]).
static HAS_TSC_AUX: AtomicU64 = AtomicU64::new(0);

/// CR4.OSFXSR, OSXMMEXCPT and OSXSAVE (SDM Vol. 3A 2.5).
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;

fn xsave_supported() -> bool {
    crate::cpu::cpuid(1, 0).2 & (1 << 26) != 0
}

/// Prepares the calling CPU: FXSAVE/XSAVE enabled (CR4), XCR0 = everything supported.
pub fn init_cpu() {
    let mut cr4: u64;
    // SAFETY: setting CR4 bits for features CPUID reports; the kernel itself never uses them.
    unsafe {
        asm!("mov {}, cr4", out(reg) cr4);
        cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
        if xsave_supported() {
            cr4 |= CR4_OSXSAVE;
        }
        asm!("mov cr4, {}", in(reg) cr4);
    }
    let rdtscp = crate::cpu::cpuid(0x8000_0000, 0).0 >= 0x8000_0001 && crate::cpu::cpuid(0x8000_0001, 0).3 & (1 << 27) != 0;
    let rdpid = crate::cpu::cpuid(0, 0).0 >= 7 && crate::cpu::cpuid(7, 0).2 & (1 << 22) != 0;
    HAS_TSC_AUX.store((rdtscp || rdpid) as u64, Ordering::Relaxed);
    if xsave_supported() {
        let (a, _, c, d) = crate::cpu::cpuid(0xd, 0);
        let supported = a as u64 | (d as u64) << 32;
        // SAFETY: a value CPUID says the CPU supports, with x87 (bit 0) set.
        unsafe { xsetbv(supported | 1) };
        HOST_XCR0.store(supported | 1, Ordering::Relaxed);
        AREA_BYTES.store(c as usize, Ordering::Relaxed);
        let (a1, ..) = crate::cpu::cpuid(0xd, 1);
        USE_XSAVEOPT.store((a1 & 1) as u64, Ordering::Relaxed);
    } else {
        AREA_BYTES.store(512, Ordering::Relaxed);
    }
}

/// A description of the extended-state mechanism, for the boot log.
pub fn describe() -> alloc::string::String {
    let bytes = AREA_BYTES.load(Ordering::Relaxed);
    if xsave_supported() {
        alloc::format!(
            "{} (XCR0 components {:#x}, {bytes} bytes per vCPU)",
            if USE_XSAVEOPT.load(Ordering::Relaxed) != 0 { "XSAVEOPT/XRSTOR" } else { "XSAVE/XRSTOR" },
            HOST_XCR0.load(Ordering::Relaxed)
        )
    } else {
        alloc::format!("FXSAVE/FXRSTOR ({bytes} bytes per vCPU)")
    }
}

/// Which registers the backend's hardware already switches.
#[derive(Clone, Copy)]
pub struct HwSwitched {
    /// CR2 and DR6 are in the VMCB (SVM).
    pub cr2_dr6: bool,
    /// VMLOAD/VMSAVE switch STAR, LSTAR, CSTAR, SFMASK and KERNEL_GS_BASE (SVM).
    pub syscall_msrs: bool,
}

const SYSCALL_MSRS: [u32; 5] = [msr::STAR, msr::LSTAR, msr::CSTAR, msr::SFMASK, msr::KERNEL_GS_BASE];

/// One vCPU's share of the CPU that the hardware does not switch.
pub struct GuestContext {
    /// The XSAVE/FXSAVE area (64-byte aligned: it starts a frame).
    area: u64,
    pages: u64,
    /// The guest's XCR0 (x87 only at reset, SDM Vol. 1 13.3).
    pub xcr0: u64,
    dr: [u64; 4],
    dr6: u64,
    cr2: u64,
    syscall: [u64; 5],
    tsc_aux: u64,
    hw: HwSwitched,
}

impl GuestContext {
    pub fn new(hw: HwSwitched) -> Result<GuestContext, &'static str> {
        let bytes = AREA_BYTES.load(Ordering::Relaxed).max(512) as u64;
        let pages = bytes.div_ceil(4096);
        let area = memory::alloc_zeroed(pages, 4096).ok_or("no memory for the vCPU's XSAVE area")?;
        // The state at power-up / INIT (SDM Vol. 3A Table 10-1): FCW 0x037F (after FNINIT,
        // what firmware leaves), MXCSR 0x1F80; XSTATE_BV = 0 puts every other component in
        // its initial configuration at the first XRSTOR.
        // SAFETY: the area was just allocated and is at least 512 bytes.
        unsafe {
            let p = memory::phys_to_virt(area);
            (p as *mut u16).write(0x037f);
            (p.add(24) as *mut u32).write(0x1f80);
        }
        Ok(GuestContext { area, pages, xcr0: 1, dr: [0; 4], dr6: 0xffff_0ff0, cr2: 0, syscall: [0; 5], tsc_aux: 0, hw })
    }

    fn area_ptr(&self) -> *mut u8 {
        memory::phys_to_virt(self.area)
    }

    /// Puts this vCPU's state into the CPU's registers (a slice begins).
    pub fn load(&self) {
        // SAFETY: all of this state is unused by the host (see the module doc); the area is
        // this vCPU's, aligned and sized for every supported component.
        unsafe {
            let host_xcr0 = HOST_XCR0.load(Ordering::Relaxed);
            if host_xcr0 != 0 {
                // Restore every component with the host's full XCR0, so that components the
                // guest has not enabled are put in their initial state rather than keeping
                // another guest's values (which this guest could otherwise read by enabling
                // them later), then switch to the guest's XCR0.
                xsetbv(host_xcr0);
                xrstor(self.area_ptr(), u64::MAX);
                if self.xcr0 != host_xcr0 {
                    xsetbv(self.xcr0);
                }
            } else {
                asm!("fxrstor64 [{}]", in(reg) self.area_ptr(), options(nostack, readonly));
            }
            asm!("mov dr0, {}", in(reg) self.dr[0], options(nostack, nomem));
            asm!("mov dr1, {}", in(reg) self.dr[1], options(nostack, nomem));
            asm!("mov dr2, {}", in(reg) self.dr[2], options(nostack, nomem));
            asm!("mov dr3, {}", in(reg) self.dr[3], options(nostack, nomem));
            if !self.hw.cr2_dr6 {
                asm!("mov dr6, {}", in(reg) self.dr6, options(nostack, nomem));
                asm!("mov cr2, {}", in(reg) self.cr2, options(nostack, nomem));
            }
            if !self.hw.syscall_msrs {
                for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall) {
                    wrmsr(*m, v);
                }
            }
            if HAS_TSC_AUX.load(Ordering::Relaxed) != 0 {
                wrmsr(msr::TSC_AUX, self.tsc_aux);
            }
        }
    }

    /// Takes this vCPU's state back from the CPU (a slice ends).
    pub fn save(&mut self) {
        // SAFETY: as for `load`; XCR0 is still the guest's, so XSAVE stores exactly the
        // components the guest can have touched.
        unsafe {
            if HOST_XCR0.load(Ordering::Relaxed) != 0 {
                xsave(self.area_ptr(), u64::MAX);
            } else {
                asm!("fxsave64 [{}]", in(reg) self.area_ptr(), options(nostack));
            }
            asm!("mov {}, dr0", out(reg) self.dr[0], options(nostack, nomem));
            asm!("mov {}, dr1", out(reg) self.dr[1], options(nostack, nomem));
            asm!("mov {}, dr2", out(reg) self.dr[2], options(nostack, nomem));
            asm!("mov {}, dr3", out(reg) self.dr[3], options(nostack, nomem));
            if !self.hw.cr2_dr6 {
                asm!("mov {}, dr6", out(reg) self.dr6, options(nostack, nomem));
                asm!("mov {}, cr2", out(reg) self.cr2, options(nostack, nomem));
            }
            if !self.hw.syscall_msrs {
                for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall.iter_mut()) {
                    *v = rdmsr(*m);
                }
            }
            if HAS_TSC_AUX.load(Ordering::Relaxed) != 0 {
                self.tsc_aux = rdmsr(msr::TSC_AUX);
            }
        }
    }

    /// Loads a new guest XCR0 while the vCPU holds the CPU (an emulated XSETBV).
    pub fn set_xcr0(&mut self, value: u64) {
        self.xcr0 = value;
        if HOST_XCR0.load(Ordering::Relaxed) != 0 {
            // SAFETY: the exit handler validated the value against the guest's CPUID, which
            // offers no component the CPU lacks.
            unsafe { xsetbv(value) };
        }
    }

    /// Sets the guest's CR2 while the vCPU holds the CPU (VMX, where CR2 is not in the VMCS).
    pub fn set_cr2_live(&mut self, value: u64) {
        self.cr2 = value;
        // SAFETY: CR2 is the guest's while its slice runs (see the module doc).
        unsafe { asm!("mov cr2, {}", in(reg) value, options(nostack, nomem)) };
    }

    /// The guest's CR2 while the vCPU holds the CPU (VMX: the register itself).
    pub fn cr2_live(&self) -> u64 {
        let v: u64;
        // SAFETY: reading CR2 has no side effect; it is the guest's while its slice runs.
        unsafe { asm!("mov {}, cr2", out(reg) v, options(nostack, nomem)) };
        v
    }

    pub fn free(self) {
        memory::free(self.area, self.pages);
    }
}

unsafe fn xsetbv(value: u64) {
    asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, nomem));
}

unsafe fn xsave(area: *mut u8, mask: u64) {
    if USE_XSAVEOPT.load(Ordering::Relaxed) != 0 {
        asm!("xsaveopt64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack));
    } else {
        asm!("xsave64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack));
    }
}

unsafe fn xrstor(area: *const u8, mask: u64) {
    asm!("xrstor64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack, readonly));
}

unsafe fn rdmsr(m: u32) -> u64 {
    let (lo, hi): (u32, u32);
    asm!("rdmsr", in("ecx") m, out("eax") lo, out("edx") hi, options(nostack, nomem));
    (hi as u64) << 32 | lo as u64
}

unsafe fn wrmsr(m: u32, v: u64) {
    asm!("wrmsr", in("ecx") m, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, nomem));
}

/// TSC cycles spent binding and unbinding vCPUs (`begin_slice` + `end_slice`, this context
/// included), summed over all CPUs; the slices they served; and the slices that put a
/// different vCPU on the CPU than the one before. Reported when a run ends.
pub static SWITCH_CYCLES: AtomicU64 = AtomicU64::new(0);
pub static SLICES: AtomicU64 = AtomicU64::new(0);
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);
