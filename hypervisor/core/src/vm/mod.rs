//! The backend-neutral VM core: one exit type for VMX and SVM, and the one place every exit
//! is handled.
//!
//! `hypervisor/src/virt/vmx` and `virt/svm` translate their hardware exit codes into
//! [`Exit`] and implement [`Vcpu`] over their VMCS/VMCB; [`handle_exit`] decides what
//! happens, for both. It never sees a VMCS or VMCB, so it runs — and is tested — on the host.
//!
//! Every exit has a defined answer: emulate it, inject #GP/#UD, or stop this guest with a
//! [`StopReason`]. Nothing a guest does reaches a panic.

pub mod cpuid;
pub mod devices;
pub mod guest_mem;
pub mod msr;

use alloc::string::String;
use core::fmt;
use devices::{IoOutcome, PortIo};
use msr::{MsrResult, MsrState};

/// Exception vectors Bastion injects.
pub const UD: u8 = 6;
pub const GP: u8 = 13;

/// Hypercall ABI (VMCALL on Intel, VMMCALL on AMD; RAX = function, results in RAX, RBX, RCX).
pub mod hypercall {
    /// Returns RAX = 0, RBX = [`MAGIC`], RCX = [`ABI_VERSION`].
    pub const VERSION: u64 = 0;
    /// "BSTN" in little-endian byte order.
    pub const MAGIC: u64 = 0x4e54_5342;
    pub const ABI_VERSION: u64 = 1;
    /// RAX for an unknown function.
    pub const UNKNOWN: u64 = u64::MAX;
    /// RAX when the caller is not in ring 0.
    pub const NOT_PERMITTED: u64 = u64::MAX - 1;
}

/// General registers a backend saves on every exit (RSP and RIP live in the VMCS/VMCB).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gprs {
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

impl Gprs {
    /// A register by its number in instruction encodings (SDM Vol. 2A 2.1.5: RAX, RCX, RDX,
    /// RBX, RSP, RBP, RSI, RDI, R8..R15). RSP lives in the VMCS/VMCB, so the caller passes it.
    pub fn by_encoding(&self, n: usize, rsp: u64) -> u64 {
        [
            self.rax, self.rcx, self.rdx, self.rbx, rsp, self.rbp, self.rsi, self.rdi, self.r8, self.r9, self.r10, self.r11,
            self.r12, self.r13, self.r14, self.r15,
        ][n & 15]
    }
}

/// Why the guest stopped running, in backend-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Cpuid,
    Rdmsr,
    Wrmsr,
    /// Port I/O. For a write, the value is in RAX; for a read, the handler puts it there.
    Io { port: u16, size: u8, write: bool, string: bool },
    Hlt,
    /// VMCALL or VMMCALL.
    Hypercall,
    /// A write to CR0 or CR4 the backend intercepts (VMX's guest/host masks).
    CrWrite { cr: u8, value: u64 },
    /// An access to guest-physical memory with no RAM or device behind it (EPT violation,
    /// NPT fault).
    NestedPageFault { gpa: u64, write: bool, fetch: bool },
    TripleFault,
    /// A VMX or SVM instruction: Bastion offers no nested virtualization.
    VirtInstruction,
    /// An external interrupt, NMI window or timer: nothing for the guest, just resume.
    Interrupted,
    /// The guest can take an interrupt now (requested with `request_interrupt_window`).
    InterruptWindow,
    /// The hardware refused to enter the guest; the text says why.
    EntryFailed(String),
    /// Anything else, with the backend's own exit code and qualification for the report.
    Unhandled { code: u64, info1: u64, info2: u64 },
}

/// Exit classes counted per guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    Cpuid,
    Msr,
    Io,
    Hlt,
    Hypercall,
    Cr,
    NestedPageFault,
    TripleFault,
    VirtInstruction,
    Interrupted,
    EntryFailed,
    Unhandled,
}

impl ExitKind {
    pub const COUNT: usize = 12;
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::Cpuid,
        ExitKind::Msr,
        ExitKind::Io,
        ExitKind::Hlt,
        ExitKind::Hypercall,
        ExitKind::Cr,
        ExitKind::NestedPageFault,
        ExitKind::TripleFault,
        ExitKind::VirtInstruction,
        ExitKind::Interrupted,
        ExitKind::EntryFailed,
        ExitKind::Unhandled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "cpuid",
            ExitKind::Msr => "msr",
            ExitKind::Io => "io",
            ExitKind::Hlt => "hlt",
            ExitKind::Hypercall => "hypercall",
            ExitKind::Cr => "cr",
            ExitKind::NestedPageFault => "npf",
            ExitKind::TripleFault => "triple-fault",
            ExitKind::VirtInstruction => "vmx/svm-insn",
            ExitKind::Interrupted => "interrupt",
            ExitKind::EntryFailed => "entry-failed",
            ExitKind::Unhandled => "unhandled",
        }
    }
}

impl Exit {
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::Cpuid => ExitKind::Cpuid,
            Exit::Rdmsr | Exit::Wrmsr => ExitKind::Msr,
            Exit::Io { .. } => ExitKind::Io,
            Exit::Hlt => ExitKind::Hlt,
            Exit::Hypercall => ExitKind::Hypercall,
            Exit::CrWrite { .. } => ExitKind::Cr,
            Exit::NestedPageFault { .. } => ExitKind::NestedPageFault,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::VirtInstruction => ExitKind::VirtInstruction,
            Exit::Interrupted | Exit::InterruptWindow => ExitKind::Interrupted,
            Exit::EntryFailed(_) => ExitKind::EntryFailed,
            Exit::Unhandled { .. } => ExitKind::Unhandled,
        }
    }
}

/// Exit counts of one guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    pub counts: [u64; ExitKind::COUNT],
}

impl ExitStats {
    pub fn count(&mut self, kind: ExitKind) {
        self.counts[kind as usize] += 1;
    }
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl fmt::Display for ExitStats {
    /// `total 42: cpuid 3, io 37, hlt 1, hypercall 1` (zero counts left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "total {}", self.total())?;
        let mut sep = ":";
        for k in ExitKind::ALL {
            let n = self.get(k);
            if n > 0 {
                write!(f, "{sep} {} {n}", k.name())?;
                sep = ",";
            }
        }
        Ok(())
    }
}

/// What a backend offers the exit handler: the guest's registers and the few operations
/// whose encoding differs between VMX and SVM.
pub trait Vcpu {
    fn gprs(&mut self) -> &mut Gprs;
    fn rip(&self) -> u64;
    fn rflags(&self) -> u64;
    /// Current privilege level (SS.DPL).
    fn cpl(&self) -> u8;
    /// CR4 as the guest sees it.
    fn guest_cr4(&self) -> u64;
    /// EFER as the guest sees it (without Bastion's own bits).
    fn guest_efer(&self) -> u64;
    fn set_guest_efer(&mut self, value: u64);
    /// Applies a guest write to CR0 or CR4 that the handler has validated.
    fn set_guest_cr(&mut self, cr: u8, value: u64);
    /// Moves RIP past the instruction that exited.
    fn skip_instruction(&mut self);
    /// Makes the next entry deliver an exception (the faulting instruction is not skipped).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// True when an external interrupt can be delivered at the next entry: RFLAGS.IF set, no
    /// STI/MOV SS interrupt shadow, no event already queued (SDM Vol. 3A 7.6 / 6.8.3).
    fn interrupt_window_open(&self) -> bool;
    /// Delivers external interrupt `vector` at the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for an `Exit::InterruptWindow` as soon as the guest can take an interrupt (or stops
    /// asking).
    fn request_interrupt_window(&mut self, on: bool);
}

/// Why a guest was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote to the test-exit port.
    TestExit(u32),
    /// HLT with nothing that could ever wake the vCPU.
    Halted { interrupts_enabled: bool },
    TripleFault,
    /// Access to guest-physical memory that is neither RAM nor a device.
    BadAccess { gpa: u64, write: bool, fetch: bool },
    EntryFailed(String),
    Unsupported(String),
    Unhandled { code: u64, info1: u64, info2: u64 },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::TestExit(0) => write!(f, "test exit: PASS"),
            StopReason::TestExit(c) => write!(f, "test exit: FAIL (code {c:#x})"),
            StopReason::Halted { interrupts_enabled: false } => write!(f, "halted with interrupts disabled"),
            StopReason::Halted { interrupts_enabled: true } => {
                write!(f, "halted waiting for an interrupt, and no interrupt source exists yet")
            }
            StopReason::TripleFault => write!(f, "triple fault (shutdown)"),
            StopReason::BadAccess { gpa, write, fetch } => write!(
                f,
                "{} guest-physical {gpa:#x}, which is neither RAM nor a device",
                if *fetch { "executed" } else if *write { "wrote" } else { "read" }
            ),
            StopReason::EntryFailed(s) => write!(f, "VM entry failed: {s}"),
            StopReason::Unsupported(s) => write!(f, "unsupported: {s}"),
            StopReason::Unhandled { code, info1, info2 } => {
                write!(f, "unhandled exit {code:#x} (info {info1:#x}, {info2:#x})")
            }
        }
    }
}

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Resume,
    /// The vCPU executed HLT: it waits for an interrupt. With interrupts disabled nothing can
    /// wake it (no NMI source exists), so it is done for good.
    Halt { interrupts_enabled: bool },
    /// Stop the whole guest.
    Stop(StopReason),
}

/// Per-vCPU state the handler works on (devices are per guest: see [`PortIo`]).
#[derive(Debug, Clone)]
pub struct VcpuState {
    pub vcpu_id: u32,
    pub msrs: MsrState,
    pub stats: ExitStats,
    /// The TSC rate the guest sees, for CPUID's timing leaf (0 = unknown).
    pub tsc_khz: u32,
}

impl VcpuState {
    pub fn new(vcpu_id: u32) -> Self {
        VcpuState { vcpu_id, msrs: MsrState::new(), stats: ExitStats::default(), tsc_khz: 0 }
    }
}

/// Delivers the PIC's pending interrupt if the vCPU can take it now, or asks for an exit as
/// soon as it can (interrupt window). Call before every entry of the vCPU the PIC's output is
/// wired to (vCPU 0: on a PC the 8259 INTR pin reaches the boot processor). Returns whether an
/// interrupt was injected.
pub fn deliver_interrupt(cpu: &mut dyn Vcpu, pic: &mut crate::devices::pic8259::Pic) -> bool {
    if !pic.has_interrupt() {
        cpu.request_interrupt_window(false);
        return false;
    }
    if !cpu.interrupt_window_open() {
        cpu.request_interrupt_window(true);
        return false;
    }
    cpu.request_interrupt_window(false);
    match pic.acknowledge() {
        Some(vector) => {
            cpu.inject_interrupt(vector);
            true
        }
        None => false,
    }
}

/// CR0 bits (SDM Vol. 3A 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
/// CR4.VMXE and CR4.SMXE: hidden features, so setting them faults.
const CR4_VMXE: u64 = 1 << 13;
const CR4_SMXE: u64 = 1 << 14;

fn lo32(v: u64) -> u64 {
    v & 0xffff_ffff
}

/// Handles one exit. `host_cpuid` answers CPUID on the real CPU; `io` is the guest's ports.
pub fn handle_exit(exit: &Exit, cpu: &mut dyn Vcpu, g: &mut VcpuState, io: &mut dyn PortIo, host_cpuid: &dyn Fn(u32, u32) -> [u32; 4]) -> Action {
    g.stats.count(exit.kind());
    match exit {
        Exit::Cpuid => {
            let r = cpu.gprs();
            let (leaf, sub) = (r.rax as u32, r.rcx as u32);
            let osxsave = cpu.guest_cr4() & (1 << 18) != 0;
            let [a, b, c, d] = cpuid::guest_cpuid(leaf, sub, g.vcpu_id, osxsave, g.tsc_khz, host_cpuid);
            let r = cpu.gprs();
            (r.rax, r.rbx, r.rcx, r.rdx) = (a as u64, b as u64, c as u64, d as u64);
            cpu.skip_instruction();
            Action::Resume
        }
        Exit::Rdmsr => {
            let msr = cpu.gprs().rcx as u32;
            let value = match g.msrs.read(msr) {
                MsrResult::Value(v) => Some(v),
                MsrResult::Efer => Some(cpu.guest_efer()),
                MsrResult::Done | MsrResult::Fault => None,
            };
            match value {
                Some(v) => {
                    let r = cpu.gprs();
                    (r.rax, r.rdx) = (lo32(v), v >> 32);
                    cpu.skip_instruction();
                }
                None => cpu.inject_exception(GP, Some(0)),
            }
            Action::Resume
        }
        Exit::Wrmsr => {
            let r = cpu.gprs();
            let (msr, value) = (r.rcx as u32, (r.rdx << 32) | lo32(r.rax));
            match g.msrs.write(msr, value) {
                MsrResult::Done | MsrResult::Value(_) => cpu.skip_instruction(),
                MsrResult::Efer => {
                    // LMA is the CPU's: keep the current value, whatever was written.
                    let lma = cpu.guest_efer() & msr::EFER_LMA;
                    cpu.set_guest_efer((value & msr::EFER_GUEST_WRITABLE) | lma);
                    cpu.skip_instruction();
                }
                MsrResult::Fault => cpu.inject_exception(GP, Some(0)),
            }
            Action::Resume
        }
        Exit::Io { port, size, write, string } => {
            if *string {
                return Action::Stop(StopReason::Unsupported(alloc::format!("string I/O (INS/OUTS) on port {port:#x}")));
            }
            handle_io(*port, *size, *write, cpu, io)
        }
        Exit::Hlt => {
            let interrupts_enabled = cpu.rflags() & (1 << 9) != 0;
            cpu.skip_instruction();
            Action::Halt { interrupts_enabled }
        }
        Exit::Hypercall => {
            let cpl = cpu.cpl();
            let r = cpu.gprs();
            if cpl != 0 {
                r.rax = hypercall::NOT_PERMITTED;
            } else {
                match r.rax {
                    hypercall::VERSION => (r.rax, r.rbx, r.rcx) = (0, hypercall::MAGIC, hypercall::ABI_VERSION),
                    _ => r.rax = hypercall::UNKNOWN,
                }
            }
            cpu.skip_instruction();
            Action::Resume
        }
        Exit::CrWrite { cr, value } => {
            let ok = match cr {
                // Bits 63:32 are reserved; PG needs PE; NW needs CD (SDM Vol. 3A 2.5, MOV CR).
                0 => value >> 32 == 0 && !(value & CR0_PG != 0 && value & CR0_PE == 0) && !(value & CR0_NW != 0 && value & CR0_CD == 0),
                4 => value & (CR4_VMXE | CR4_SMXE) == 0 && value >> 32 == 0,
                _ => false,
            };
            if ok {
                cpu.set_guest_cr(*cr, *value);
                cpu.skip_instruction();
            } else {
                cpu.inject_exception(GP, Some(0));
            }
            Action::Resume
        }
        Exit::VirtInstruction => {
            cpu.inject_exception(UD, None);
            Action::Resume
        }
        Exit::Interrupted => Action::Resume,
        Exit::InterruptWindow => {
            // The run loop delivers the pending interrupt before the next entry.
            cpu.request_interrupt_window(false);
            Action::Resume
        }
        Exit::NestedPageFault { gpa, write, fetch } => {
            Action::Stop(StopReason::BadAccess { gpa: *gpa, write: *write, fetch: *fetch })
        }
        Exit::TripleFault => Action::Stop(StopReason::TripleFault),
        Exit::EntryFailed(s) => Action::Stop(StopReason::EntryFailed(s.clone())),
        Exit::Unhandled { code, info1, info2 } => {
            Action::Stop(StopReason::Unhandled { code: *code, info1: *info1, info2: *info2 })
        }
    }
}

fn handle_io(port: u16, size: u8, write: bool, cpu: &mut dyn Vcpu, io: &mut dyn PortIo) -> Action {
    let mask = match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    if write {
        let value = (cpu.gprs().rax & mask) as u32;
        cpu.skip_instruction();
        if let IoOutcome::TestExit(code) = io.io_write(port, size, value) {
            return Action::Stop(StopReason::TestExit(code));
        }
    } else {
        let value = io.io_read(port, size) as u64 & mask;
        let r = cpu.gprs();
        // IN to AL/AX leaves the rest of RAX alone; IN to EAX zero-extends (SDM Vol. 1 3.4.1.1).
        r.rax = if size == 4 { value } else { (r.rax & !mask) | value };
        cpu.skip_instruction();
    }
    Action::Resume
}

#[cfg(test)]
mod tests;
