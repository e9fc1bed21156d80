//! Thin wrappers over the instructions the guests use: port I/O, CPUID, MSRs, control
//! registers, the hypercall and the test exit.

use crate::exceptions::Fault;
use core::arch::asm;

/// Port of the ABI's test-exit device: a 32-bit OUT of EAX, 0 = pass, anything else = fail.
pub const EXIT_PORT: u16 = 0xF4;

pub const IA32_EFER: u32 = 0xC000_0080;
/// EFER.LMA, long mode active (set by the CPU, SDM Vol. 3A 9.8.5).
pub const EFER_LMA: u64 = 1 << 10;
pub const IA32_PAT: u32 = 0x277;
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE, bit 13 (SDM Vol. 3A 2.5).
pub const CR4_VMXE: u64 = 1 << 13;

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no memory effects.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: port output has no memory effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Ends the test: 32-bit OUT of `code` to [`EXIT_PORT`]. The hypervisor stops the guest
/// there, all its vCPUs; if it did not, park.
pub fn test_exit(code: u32) -> ! {
    // SAFETY: port output; the guest ends here.
    unsafe { asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") code, options(nomem, nostack, preserves_flags)) };
    park()
}

/// Parks this vCPU for good: CLI; HLT. With IF = 0 only NMI, SMI, INIT or a debug or
/// machine-check event would end the HLT (SDM Vol. 2A HLT); the hypervisor treats a vCPU
/// halted with interrupts disabled as finished, and the guest as halted once all its vCPUs
/// are. For a vCPU that is done but must not end the guest (the test exit would end all
/// of them).
pub fn park() -> ! {
    loop {
        // SAFETY: halting with interrupts disabled has no memory effects.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// RDTSC: the time-stamp counter (SDM Vol. 2B RDTSC). Under Bastion it counts at the host
/// TSC's rate, which in an emulator is the emulator's rate, not wall time.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads a counter; CR4.TSD does not matter at CPL 0.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Spins (with PAUSE) until the TSC has advanced by at least `cycles` since this call.
pub fn wait_tsc(cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// Spins (with PAUSE) until `done` returns true, or `seconds` of TSC at 1 GHz have passed
/// (more real time on a slower TSC, less on a faster one: a bound against hanging, not a
/// clock); false on the timeout.
pub fn wait_until(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    while !done() {
        if rdtsc().wrapping_sub(start) > seconds * 1_000_000_000 {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// One CPUID result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx);
    // SAFETY: CPUID only writes the four registers. RBX cannot be an asm operand (LLVM
    // reserves it), so it is swapped through another register.
    unsafe {
        asm!(
            "mov {b:r}, rbx",
            "cpuid",
            "xchg {b:r}, rbx",
            b = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    };
    Cpuid { eax, ebx, ecx, edx }
}

/// CPUID leaf 0 vendor "GenuineIntel" (EBX, EDX, ECX = "Genu", "ineI", "ntel"): the ABI
/// uses this to choose VMCALL (Intel) over VMMCALL (everything else).
pub fn is_intel() -> bool {
    let c = cpuid(0, 0);
    (c.ebx, c.edx, c.ecx) == (0x756E_6547, 0x4965_6E69, 0x6C65_746E)
}

/// RDMSR that may fault: `Err` carries the exception (#GP for an MSR the hypervisor does not
/// virtualize, per the ABI).
pub fn try_rdmsr(msr: u32) -> Result<u64, Fault> {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no memory effects; a fault is caught.
    let fault = unsafe { crate::guarded!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
    match fault {
        None => Ok(u64::from(hi) << 32 | u64::from(lo)),
        Some(f) => Err(f),
    }
}

/// WRMSR that may fault.
///
/// # Safety
/// Writing an MSR can change how the CPU behaves (memory types, modes); the caller picks
/// MSRs and values that leave the guest running.
pub unsafe fn try_wrmsr(msr: u32, value: u64) -> Result<(), Fault> {
    // SAFETY: as the caller promised; a fault is caught.
    let fault =
        unsafe { crate::guarded!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32) };
    match fault {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

pub fn read_cr0() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr4() -> u64 {
    let v;
    // SAFETY: as above.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR4, which may fault (#GP on a reserved or unsupported bit, SDM Vol. 3A 2.5).
///
/// # Safety
/// CR4 controls paging and other modes; the caller must only change bits the guest does not
/// depend on.
pub unsafe fn try_write_cr4(value: u64) -> Result<(), Fault> {
    // SAFETY: as the caller promised; a fault is caught.
    match unsafe { crate::guarded!("mov cr4, {v}", v = in(reg) value) } {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// ABI hypercall function 0: returns RAX = 0, RBX = "BSTN", RCX = ABI version.
pub const HC_VERSION: u64 = 0;
/// RBX from [`HC_VERSION`]: the bytes "BSTN" in memory order.
pub const HC_VERSION_MAGIC: u64 = 0x4E54_5342;
pub const HC_ABI_VERSION: u64 = 1;
/// RAX for a function the hypervisor does not know.
pub const HC_UNKNOWN: u64 = u64::MAX;

/// All general registers but RSP, in and out of a hypercall.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl Regs {
    pub const NAMES: [&'static str; 15] =
        ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

    pub fn as_array(&self) -> [u64; 15] {
        [
            self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.r8, self.r9, self.r10, self.r11,
            self.r12, self.r13, self.r14, self.r15,
        ]
    }
}

/// Loads every general register from `regs`, runs `$insn`, stores them all back; armed with
/// [`guarded!`](crate::guarded)'s resume mechanism so a fault (say #UD from a hypervisor
/// that does not handle the call) comes back as `Some(fault)` with `regs` unchanged.
/// RBX and RBP cannot be asm operands, hence all registers go through memory.
macro_rules! call_with_regs {
    ($insn:literal, $regs:expr) => {{
        let regs: *mut Regs = $regs;
        let slot = crate::exceptions::arm();
        // SAFETY: the asm saves RBX and RBP itself, declares every other register clobbered,
        // and only touches `*regs`, this vCPU's resume slot and the stack.
        unsafe {
            asm!(
                "lea rax, [rip + 2f]",
                "mov qword ptr [rsi], rax",     // RSI: the resume slot
                "push rbp",
                "push rbx",
                "push rsi",
                "push rdi",
                "mov rax, [rdi + 0]",
                "mov rbx, [rdi + 8]",
                "mov rcx, [rdi + 16]",
                "mov rdx, [rdi + 24]",
                "mov rsi, [rdi + 32]",
                "mov rbp, [rdi + 48]",
                "mov r8, [rdi + 56]",
                "mov r9, [rdi + 64]",
                "mov r10, [rdi + 72]",
                "mov r11, [rdi + 80]",
                "mov r12, [rdi + 88]",
                "mov r13, [rdi + 96]",
                "mov r14, [rdi + 104]",
                "mov r15, [rdi + 112]",
                "mov rdi, [rdi + 40]",
                $insn,
                "2:",
                "push rdi",
                "mov rdi, [rsp + 8]",
                "mov [rdi + 0], rax",
                "mov [rdi + 8], rbx",
                "mov [rdi + 16], rcx",
                "mov [rdi + 24], rdx",
                "mov [rdi + 32], rsi",
                "mov [rdi + 48], rbp",
                "mov [rdi + 56], r8",
                "mov [rdi + 64], r9",
                "mov [rdi + 72], r10",
                "mov [rdi + 80], r11",
                "mov [rdi + 88], r12",
                "mov [rdi + 96], r13",
                "mov [rdi + 104], r14",
                "mov [rdi + 112], r15",
                "pop rax",
                "mov [rdi + 40], rax",
                "pop rdi",
                "pop rsi",
                "mov qword ptr [rsi], 0",
                "pop rbx",
                "pop rbp",
                inout("rdi") regs => _,
                inout("rsi") slot.resume() => _,
                out("rax") _, out("rcx") _, out("rdx") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            )
        };
        crate::exceptions::take_fault(slot)
    }};
}

/// The ABI hypercall: function number in `regs.rax`, VMCALL on Intel and VMMCALL otherwise.
/// `regs` holds every general register before and after. `Some(fault)` if the instruction
/// raised an exception.
pub fn hypercall(regs: &mut Regs) -> Option<Fault> {
    if is_intel() {
        call_with_regs!("vmcall", regs)
    } else {
        call_with_regs!("vmmcall", regs)
    }
}
