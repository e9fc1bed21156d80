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
// Test support, not Bastion's logic: `.cargo/mutants.toml` leaves it out of mutation testing.
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod fault_report;
pub mod guest_mem;
pub mod insn;
pub mod memmap;
pub mod mmio;
pub mod msr;
pub mod pv_eoi;
pub mod pvclock;
pub mod regs;
pub mod rep;
pub mod string_io;

use alloc::string::String;
use core::fmt;
use devices::{IoOutcome, DeviceIo};
use guest_mem::GuestPhys;
use msr::{MsrResult, MsrState};
use regs::{Cr0, Cr4, Efer, Fault, GuestFeatures, ModeView, Rflags};

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
    /// Gives up the rest of the vCPU's time slice (like KVM's `KVM_HC_SCHED_YIELD` and Xen's
    /// `SCHEDOP_yield`); returns RAX = 0.
    pub const YIELD: u64 = 1;
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

/// Segment registers, numbered as the VMX instruction-information field (SDM Vol. 3C Table
/// 28-8) and SVM's IOIO EXITINFO1.SEG (APM Vol. 2 15.10.2) both number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl Seg {
    pub fn from_index(n: u64) -> Option<Seg> {
        Some(match n {
            0 => Seg::Es,
            1 => Seg::Cs,
            2 => Seg::Ss,
            3 => Seg::Ds,
            4 => Seg::Fs,
            5 => Seg::Gs,
            _ => return None,
        })
    }
}

/// The string form of IN/OUT (INS/OUTS), with what the handler needs to emulate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIo {
    /// REP prefix: RCX counts the iterations.
    pub rep: bool,
    /// Address size in bytes (2, 4 or 8): which part of RSI/RDI/RCX is used.
    pub addr_size: u8,
    /// The memory operand's segment: ES for INS (fixed), DS or an override for OUTS.
    pub seg: Seg,
}

/// Why the guest stopped running, in backend-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Cpuid,
    Rdmsr,
    Wrmsr,
    /// Port I/O. For a write, the value is in RAX (or guest memory for OUTS); for a read, the
    /// handler puts it there.
    Io { port: u16, size: u8, write: bool, string: Option<StringIo> },
    Hlt,
    /// VMCALL or VMMCALL.
    Hypercall,
    /// A write to CR0 or CR4 that the backend intercepts (VMX's guest/host masks, SVM's CR
    /// write intercepts); `value` is the full new value (CLTS and LMSW already folded in).
    CrWrite { cr: u8, value: u64 },
    /// XSETBV: ECX selects the XCR, EDX:EAX is the value.
    Xsetbv,
    /// INVD: performed as WBINVD, since discarding dirty lines could lose host memory.
    Invd,
    /// An access to guest-physical memory with no RAM or device behind it (EPT violation,
    /// NPT fault).
    NestedPageFault { gpa: u64, write: bool, fetch: bool },
    TripleFault,
    /// A VMX or SVM instruction: Bastion offers no nested virtualization.
    VirtInstruction,
    /// RDPMC: Bastion virtualizes no performance counters (CPUID leaf 0xA reports none), so
    /// every counter is one the vCPU does not have: #GP (SDM Vol. 2B RDPMC, AMD APM Vol. 3
    /// RDPMC). Passed through, it would read the host's counters, which count other guests'
    /// work too.
    Rdpmc,
    /// An external interrupt, NMI window or timer: nothing for the guest, just resume.
    Interrupted,
    /// The guest spun in a PAUSE loop longer than the backend's threshold (VMX pause-loop
    /// exiting, SDM Vol. 3C 26.1.3 and 25.6.13; SVM's PAUSE filter, APM Vol. 2 15.14.4): it is
    /// most likely waiting for another vCPU that is not running, so it gives up the rest of
    /// its slice. The exit comes before the PAUSE, which runs again on resume.
    PauseLoop,
    /// A host NMI arrived while the guest ran. It belongs to the host; the guest resumes.
    HostNmi,
    /// The guest can take an interrupt now (requested with `request_interrupt_window`).
    InterruptWindow,
    /// The guest's NMIs may be unblocked now: VMX's NMI-window exit, or SVM's IRET intercept
    /// (the IRET ending an NMI handler, which the SVM backend records before it gets here).
    NmiWindow,
    /// The hardware refused to enter the guest; the text says why.
    EntryFailed(String),
    /// The exit saved something other than the guest's state, so the guest cannot go on (the
    /// backend says what it saw).
    StateLost(String),
    /// Anything else, with the backend's own exit code and qualification for the report.
    Unhandled { code: u64, info1: u64, info2: u64 },
}

/// An exit as decoded by a backend: what happened, and where the guest continues if the
/// exiting instruction completes (`None` for exits that are not instructions, or whose
/// length the hardware did not give).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    pub exit: Exit,
    pub next_rip: Option<u64>,
}

impl VmExit {
    /// An exit that is not an instruction (interrupts, faults, failed entries).
    pub fn event(exit: Exit) -> VmExit {
        VmExit { exit, next_rip: None }
    }
    /// An instruction exit; the guest continues at `next_rip` once it is emulated.
    pub fn insn(exit: Exit, next_rip: u64) -> VmExit {
        VmExit { exit, next_rip: Some(next_rip) }
    }
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
    Xsetbv,
    Invd,
    NestedPageFault,
    TripleFault,
    VirtInstruction,
    Interrupted,
    HostNmi,
    EntryFailed,
    Unhandled,
    PauseLoop,
}

impl ExitKind {
    pub const COUNT: usize = 16;
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::Cpuid,
        ExitKind::Msr,
        ExitKind::Io,
        ExitKind::Hlt,
        ExitKind::Hypercall,
        ExitKind::Cr,
        ExitKind::Xsetbv,
        ExitKind::Invd,
        ExitKind::NestedPageFault,
        ExitKind::TripleFault,
        ExitKind::VirtInstruction,
        ExitKind::Interrupted,
        ExitKind::HostNmi,
        ExitKind::EntryFailed,
        ExitKind::Unhandled,
        ExitKind::PauseLoop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "cpuid",
            ExitKind::Msr => "msr",
            ExitKind::Io => "io",
            ExitKind::Hlt => "hlt",
            ExitKind::Hypercall => "hypercall",
            ExitKind::Cr => "cr",
            ExitKind::Xsetbv => "xsetbv",
            ExitKind::Invd => "invd",
            ExitKind::NestedPageFault => "npf",
            ExitKind::TripleFault => "triple-fault",
            ExitKind::VirtInstruction => "vmx/svm-insn",
            ExitKind::Interrupted => "interrupt",
            ExitKind::HostNmi => "host-nmi",
            ExitKind::EntryFailed => "entry-failed",
            ExitKind::Unhandled => "unhandled",
            ExitKind::PauseLoop => "pause",
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
            Exit::Xsetbv => ExitKind::Xsetbv,
            Exit::Invd => ExitKind::Invd,
            Exit::NestedPageFault { .. } => ExitKind::NestedPageFault,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::VirtInstruction => ExitKind::VirtInstruction,
            // Counted with RDMSR/WRMSR: a read of a (performance-counter) model-specific register.
            Exit::Rdpmc => ExitKind::Msr,
            Exit::Interrupted | Exit::InterruptWindow | Exit::NmiWindow => ExitKind::Interrupted,
            Exit::HostNmi => ExitKind::HostNmi,
            // Counted with the entry failures: the CPU could not switch between host and guest.
            Exit::EntryFailed(_) | Exit::StateLost(_) => ExitKind::EntryFailed,
            Exit::Unhandled { .. } => ExitKind::Unhandled,
            Exit::PauseLoop => ExitKind::PauseLoop,
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
/// whose encoding differs between VMX and SVM. Every decision (which value is legal, which
/// exception with which error code) is the handler's; a backend only reads and writes.
pub trait Vcpu {
    fn gprs(&mut self) -> &mut Gprs;
    fn rsp(&self) -> u64;
    fn rip(&self) -> u64;
    fn rflags(&self) -> u64;
    /// Loads RSP and RFLAGS as an emulated instruction left them (MMIO: PUSH/POP, ALU flags).
    fn set_rsp(&mut self, value: u64);
    fn set_rflags(&mut self, value: u64);
    /// Current privilege level (SS.DPL).
    fn cpl(&self) -> u8;
    /// CR0, CR3, CR4 and EFER as the guest sees them (without Bastion's own bits), and CS.L.
    fn mode(&self) -> ModeView;
    /// CR4 as the guest sees it (a backend may answer it more cheaply than `mode`).
    fn guest_cr4(&self) -> u64 {
        self.mode().cr4
    }
    /// Loads EFER as the handler decided it (LMA included).
    fn set_guest_efer(&mut self, value: u64);
    /// Applies a guest write to CR0 or CR4 that the handler has validated.
    fn set_guest_cr(&mut self, cr: u8, value: u64);
    /// The base address of a segment register.
    fn segment_base(&self, seg: Seg) -> u64;
    /// The segment's D/B flag: CS.D selects 32-bit code outside 64-bit mode, SS.B a 32-bit
    /// stack pointer (SDM Vol. 3A 3.4.5).
    fn segment_db(&self, seg: Seg) -> bool;
    /// Sets the guest's CR2 (the faulting address of a #PF the handler injects).
    fn set_cr2(&mut self, value: u64);
    /// The value added to the host TSC for the guest's RDTSC/RDTSCP/RDMSR(TSC).
    fn tsc_offset(&self) -> u64;
    fn set_tsc_offset(&mut self, offset: u64);
    /// Loads a validated XCR0.
    fn set_xcr0(&mut self, value: u64);
    /// The exiting instruction is done: continue at `next_rip`. Executing an instruction ends
    /// blocking by STI or MOV SS (SDM Vol. 3C 27.3.1.5; APM Vol. 2 15.21.5), so the backend
    /// clears its interrupt shadow too.
    fn complete(&mut self, next_rip: u64);
    /// Makes the next entry deliver exception `vector`, pushing `error_code` if given. The
    /// handler has already decided whether one is pushed ([`regs::exception_error_code`]).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// True when an external interrupt can be delivered at the next entry: RFLAGS.IF set, no
    /// STI/MOV SS interrupt shadow, no event already queued (SDM Vol. 3A 7.6 / 6.8.3).
    fn interrupt_window_open(&self) -> bool;
    /// Delivers external interrupt `vector` at the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for an `Exit::InterruptWindow` as soon as the guest can take an interrupt (or stops
    /// asking).
    fn request_interrupt_window(&mut self, on: bool);
    /// True when an NMI can be delivered at the next entry: NMIs are not blocked by an earlier
    /// NMI whose handler has not yet executed IRET (SDM Vol. 3A 7.7 "Nonmaskable Interrupt
    /// (NMI)"; APM Vol. 2 8.2.19), nor by MOV SS, and no event is already queued.
    fn nmi_window_open(&self) -> bool;
    /// Delivers an NMI (vector 2) at the next entry; the vCPU's NMIs are blocked until its
    /// handler's IRET.
    fn inject_nmi(&mut self);
    /// Asks for an exit as soon as the guest can take an NMI, where the CPU can say when (VMX
    /// NMI-window exiting); elsewhere the next exit after the IRET serves (or stops asking).
    fn request_nmi_window(&mut self, on: bool);
    /// The task priority as MOV to CR8 left it, in the local APIC's TPR format (CR8[3:0] is
    /// TPR[7:4], SDM Vol. 3A 11.8.6.1): VMX keeps it in the virtual-APIC page (TPR shadow),
    /// SVM in V_TPR, so the guest's CR8 never reaches the host's.
    fn cr8_tpr(&self) -> u8;
    /// Loads the task priority the guest's CR8 shows from the local APIC's TPR.
    fn set_cr8_tpr(&mut self, tpr: u8);
}

/// What the handler needs of the host CPU. The kernel answers with real instructions; tests
/// with a fake.
pub trait Host {
    /// CPUID on the real CPU.
    fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4];
    /// The host's TSC now.
    fn rdtsc(&self) -> u64;
    /// Writes back and invalidates the caches (what a guest's INVD gets instead).
    fn wbinvd(&self);
    /// The Unix time in ns now (0 when the host does not know it), for kvmclock's wall clock.
    fn unix_time_ns(&self) -> u64 {
        0
    }
}

/// Why a guest was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote to the test-exit port.
    TestExit(u32),
    /// The guest reset its machine (keyboard controller reset): a reboot it asked for.
    Reboot,
    /// The guest powered its machine off (ACPI S5).
    PowerOff,
    /// Every vCPU halted with nothing that could ever wake it (`interrupts_enabled`: some
    /// waited with RFLAGS.IF set, for an interrupt no source can send).
    Halted { interrupts_enabled: bool },
    TripleFault,
    /// Access to guest-physical memory that is neither RAM nor a device.
    BadAccess { gpa: u64, write: bool, fetch: bool },
    EntryFailed(String),
    /// The exit did not save the guest's state ([`Exit::StateLost`]).
    StateLost(String),
    Unsupported(String),
    Unhandled { code: u64, info1: u64, info2: u64 },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::TestExit(0) => write!(f, "test exit: PASS"),
            StopReason::TestExit(c) => write!(f, "test exit: FAIL (code {c:#x})"),
            StopReason::Reboot => write!(f, "rebooted by the guest (keyboard controller reset)"),
            StopReason::PowerOff => write!(f, "powered off by the guest (ACPI S5)"),
            StopReason::Halted { interrupts_enabled: false } => write!(f, "halted with interrupts disabled"),
            StopReason::Halted { interrupts_enabled: true } => {
                write!(f, "halted waiting for an interrupt that no source can send")
            }
            StopReason::TripleFault => write!(f, "triple fault (shutdown)"),
            StopReason::BadAccess { gpa, write, fetch } => write!(
                f,
                "{} guest-physical {gpa:#x}, which is neither RAM nor a device",
                if *fetch { "executed" } else if *write { "wrote" } else { "read" }
            ),
            StopReason::EntryFailed(s) => write!(f, "VM entry failed: {s}"),
            StopReason::StateLost(s) => write!(f, "the CPU lost the guest's state at an exit: {s}"),
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
    /// The guest gave up the rest of its time slice (the yield hypercall).
    Yield,
    /// The vCPU executed HLT: it waits for an interrupt. With interrupts disabled only an NMI
    /// (an NMI IPI from another vCPU of the guest) can wake it.
    Halt { interrupts_enabled: bool },
    /// Stop the whole guest.
    Stop(StopReason),
}

/// Per-vCPU state the handler works on (devices are per guest: see [`DeviceIo`]).
#[derive(Debug, Clone)]
pub struct VcpuState {
    pub vcpu_id: u32,
    pub msrs: MsrState,
    pub stats: ExitStats,
    /// The TSC rate the guest sees, for CPUID's timing leaf (0 = unknown).
    pub tsc_khz: u32,
    /// What the guest's CPUID offers, for the register rules.
    pub features: GuestFeatures,
    /// The paravirtual EOI (`pv_eoi`).
    pub pv_eoi: pv_eoi::PvEoi,
}

impl VcpuState {
    pub fn new(vcpu_id: u32, tsc_khz: u32, host: &dyn Host) -> Self {
        let features = GuestFeatures::from_cpuid(|leaf, sub| cpuid::guest_cpuid(leaf, sub, vcpu_id, true, tsc_khz, |l, s| host.cpuid(l, s)));
        VcpuState { vcpu_id, msrs: MsrState::new(), stats: ExitStats::default(), tsc_khz, features, pv_eoi: pv_eoi::PvEoi::default() }
    }
}

/// Delivers vCPU `v`'s pending external interrupt (its local APIC's, or the PIC's through
/// LINT0) if the vCPU can take it now, or asks for an exit as soon as it can (interrupt
/// window). Call before every entry. Returns whether an interrupt was injected.
pub fn deliver_interrupt(cpu: &mut dyn Vcpu, chip: &mut crate::devices::irq::IrqChip, v: usize) -> bool {
    if !chip.has_interrupt(v) {
        cpu.request_interrupt_window(false);
        return false;
    }
    if !cpu.interrupt_window_open() {
        cpu.request_interrupt_window(true);
        return false;
    }
    cpu.request_interrupt_window(false);
    match chip.acknowledge(v) {
        Some(vector) => {
            cpu.inject_interrupt(vector);
            true
        }
        None => false,
    }
}

/// Delivers vCPU `v`'s pending NMI (from an NMI IPI, SDM Vol. 3A 11.6.1 delivery mode 100b)
/// if the vCPU can take one now, or asks for an exit as soon as it can. Call before every
/// entry, before [`deliver_interrupt`]: an NMI has priority over a maskable interrupt (SDM
/// Vol. 3A 7.9 "Priority Among Concurrent Events"), and once it is queued the interrupt waits
/// for the next window. Returns whether an NMI was injected.
pub fn deliver_nmi(cpu: &mut dyn Vcpu, chip: &mut crate::devices::irq::IrqChip, v: usize) -> bool {
    if !chip.has_nmi(v) {
        cpu.request_nmi_window(false);
        return false;
    }
    if !cpu.nmi_window_open() {
        cpu.request_nmi_window(true);
        return false;
    }
    cpu.request_nmi_window(false);
    chip.take_nmi(v);
    cpu.inject_nmi();
    true
}

/// Injects exception `vector` with the error code the architecture gives it in the vCPU's
/// current mode: the one place either backend's exceptions are decided.
pub fn inject_exception(cpu: &mut dyn Vcpu, vector: u8, error_code: Option<u32>) {
    let protected = cpu.mode().cr0 & Cr0::PE.bits() != 0;
    cpu.inject_exception(vector, regs::exception_error_code(vector, error_code, protected));
}

fn fault(cpu: &mut dyn Vcpu, f: Fault) {
    match f {
        Fault::Gp => inject_exception(cpu, GP, Some(0)),
        Fault::Ud => inject_exception(cpu, UD, None),
    }
}

fn lo32(v: u64) -> u64 {
    v & 0xffff_ffff
}

/// EDX:EAX as one value (WRMSR, XSETBV): the halves do not overlap, so they are added (an OR
/// would make `|` -> `^` an equivalent mutant).
fn edx_eax(r: &Gprs) -> u64 {
    (lo32(r.rdx) << 32) + lo32(r.rax)
}

/// What an exit handler reaches besides the vCPU: the guest's ports and RAM, and the host.
pub struct Env<'a> {
    pub io: &'a mut dyn DeviceIo,
    pub mem: &'a mut dyn GuestPhys,
    pub host: &'a dyn Host,
}

/// The instruction completed: continue after it, or stop the guest if the backend could not
/// say where "after" is (never expected: every instruction exit carries its next RIP).
fn complete(cpu: &mut dyn Vcpu, e: &VmExit) -> Action {
    match e.next_rip {
        Some(rip) => {
            cpu.complete(rip);
            Action::Resume
        }
        None => Action::Stop(StopReason::Unsupported(alloc::format!("{:?} exit without an instruction length", e.exit.kind()))),
    }
}

/// Handles one exit.
pub fn handle_exit(e: &VmExit, cpu: &mut dyn Vcpu, g: &mut VcpuState, env: &mut Env) -> Action {
    g.stats.count(e.exit.kind());
    match &e.exit {
        Exit::Cpuid => {
            let r = cpu.gprs();
            let (leaf, sub) = (r.rax as u32, r.rcx as u32);
            let osxsave = cpu.guest_cr4() & Cr4::OSXSAVE.bits() != 0;
            let [a, b, c, d] = cpuid::guest_cpuid(leaf, sub, g.vcpu_id, osxsave, g.tsc_khz, |l, s| env.host.cpuid(l, s));
            let r = cpu.gprs();
            (r.rax, r.rbx, r.rcx, r.rdx) = (a as u64, b as u64, c as u64, d as u64);
            complete(cpu, e)
        }
        Exit::Rdmsr => {
            let msr = cpu.gprs().rcx as u32;
            let value = match g.msrs.read(msr) {
                MsrResult::Value(v) => Some(v),
                MsrResult::Efer => Some(cpu.mode().efer),
                MsrResult::Tsc => Some(env.host.rdtsc().wrapping_add(cpu.tsc_offset())),
                // kvmclock's MSRs exist only where CPUID offers them.
                MsrResult::KvmClock if g.tsc_khz == 0 => None,
                MsrResult::KvmClock if msr == pvclock::MSR_SYSTEM_TIME_NEW => Some(g.msrs.kvm_system_time),
                MsrResult::KvmClock => Some(g.msrs.kvm_wall_clock),
                MsrResult::ApicBase => env.io.apic_base(),
                // Like kvmclock, only where the KVM leaves are offered.
                MsrResult::PvEoi if g.tsc_khz == 0 => None,
                MsrResult::PvEoi => Some(g.pv_eoi.msr),
                MsrResult::Done | MsrResult::Fault => None,
            };
            match value {
                Some(v) => {
                    let r = cpu.gprs();
                    (r.rax, r.rdx) = (lo32(v), v >> 32);
                    complete(cpu, e)
                }
                None => {
                    fault(cpu, Fault::Gp);
                    Action::Resume
                }
            }
        }
        Exit::Wrmsr => {
            let r = cpu.gprs();
            let (msr, value) = (r.rcx as u32, edx_eax(r));
            let outcome = match g.msrs.write(msr, value) {
                MsrResult::Done | MsrResult::Value(_) => Ok(()),
                MsrResult::Efer => regs::check_efer_write(&cpu.mode(), value, &g.features).map(|v| cpu.set_guest_efer(v)),
                // Writing the TSC sets the guest's offset so that it now reads `value` (SDM
                // Vol. 3A 18.17; the host TSC keeps running for everyone else).
                MsrResult::Tsc => {
                    cpu.set_tsc_offset(value.wrapping_sub(env.host.rdtsc()));
                    Ok(())
                }
                MsrResult::KvmClock if g.tsc_khz == 0 => Err(Fault::Gp),
                MsrResult::KvmClock => {
                    kvm_clock_write(msr, value, cpu, g, env);
                    Ok(())
                }
                MsrResult::ApicBase if env.io.set_apic_base(value) => Ok(()),
                MsrResult::PvEoi if g.tsc_khz != 0 => g.pv_eoi.write_msr(value).map_err(|()| Fault::Gp),
                MsrResult::Fault | MsrResult::ApicBase | MsrResult::PvEoi => Err(Fault::Gp),
            };
            match outcome {
                Ok(()) => complete(cpu, e),
                Err(f) => {
                    fault(cpu, f);
                    Action::Resume
                }
            }
        }
        Exit::Io { port, size, write, string: Some(s) } => string_io::handle(*port, *size, *write, s, e.next_rip, cpu, env),
        Exit::Io { port, size, write, string: None } => handle_io(*port, *size, *write, cpu, env.io, e),
        Exit::Hlt => {
            let interrupts_enabled = cpu.rflags() & Rflags::IF.bits() != 0;
            match complete(cpu, e) {
                Action::Resume => Action::Halt { interrupts_enabled },
                stop => stop,
            }
        }
        Exit::Hypercall => {
            let cpl = cpu.cpl();
            let r = cpu.gprs();
            let mut action = Action::Resume;
            if cpl != 0 {
                r.rax = hypercall::NOT_PERMITTED;
            } else {
                match r.rax {
                    hypercall::VERSION => (r.rax, r.rbx, r.rcx) = (0, hypercall::MAGIC, hypercall::ABI_VERSION),
                    hypercall::YIELD => {
                        r.rax = 0;
                        action = Action::Yield;
                    }
                    _ => r.rax = hypercall::UNKNOWN,
                }
            }
            match complete(cpu, e) {
                Action::Resume => action,
                stop => stop,
            }
        }
        Exit::CrWrite { cr, value } => {
            let m = cpu.mode();
            let outcome = match cr {
                0 => regs::check_cr0_write(&m, *value).map(|(v, lma)| {
                    cpu.set_guest_cr(0, v);
                    let efer = if lma { m.efer | Efer::LMA.bits() } else { m.efer & !Efer::LMA.bits() };
                    if efer != m.efer {
                        cpu.set_guest_efer(efer);
                    }
                }),
                4 => regs::check_cr4_write(&m, *value, &g.features).map(|v| cpu.set_guest_cr(4, v)),
                _ => Err(Fault::Gp),
            };
            match outcome {
                Ok(()) => complete(cpu, e),
                Err(f) => {
                    fault(cpu, f);
                    Action::Resume
                }
            }
        }
        Exit::Xsetbv => {
            let m = cpu.mode();
            let cpl = cpu.cpl();
            let r = cpu.gprs();
            let (ecx, value) = (r.rcx as u32, edx_eax(r));
            match regs::check_xsetbv(cpl, m.cr4, ecx, value, &g.features) {
                Ok(x) => {
                    cpu.set_xcr0(x.bits());
                    complete(cpu, e)
                }
                Err(f) => {
                    fault(cpu, f);
                    Action::Resume
                }
            }
        }
        Exit::Invd => {
            // INVD would discard dirty cache lines, the host's included; WBINVD gives the guest
            // everything INVD promises (SDM Vol. 2A INVD: "data ... may be lost") safely.
            if cpu.cpl() != 0 {
                fault(cpu, Fault::Gp);
                return Action::Resume;
            }
            env.host.wbinvd();
            complete(cpu, e)
        }
        Exit::VirtInstruction => {
            fault(cpu, Fault::Ud);
            Action::Resume
        }
        Exit::Rdpmc => {
            fault(cpu, Fault::Gp);
            Action::Resume
        }
        Exit::Interrupted | Exit::HostNmi => Action::Resume,
        Exit::PauseLoop => Action::Yield,
        Exit::InterruptWindow => {
            // The run loop delivers the pending interrupt before the next entry.
            cpu.request_interrupt_window(false);
            Action::Resume
        }
        Exit::NmiWindow => {
            // Likewise for the pending NMI (`deliver_nmi`).
            cpu.request_nmi_window(false);
            Action::Resume
        }
        Exit::NestedPageFault { gpa, write, fetch } => mmio::handle(*gpa, *write, *fetch, cpu, env),
        Exit::TripleFault => Action::Stop(StopReason::TripleFault),
        Exit::EntryFailed(s) => Action::Stop(StopReason::EntryFailed(s.clone())),
        Exit::StateLost(s) => Action::Stop(StopReason::StateLost(s.clone())),
        Exit::Unhandled { code, info1, info2 } => {
            Action::Stop(StopReason::Unhandled { code: *code, info1: *info1, info2: *info2 })
        }
    }
}

/// A write to a kvmclock MSR: the wall clock is written at once to the address given; the
/// system time structure when bit 0 (enable) is set. A structure that would cross a page or
/// that is not in RAM is not written (the guest then reads no clock there, as under KVM).
fn kvm_clock_write(msr: u32, value: u64, cpu: &mut dyn Vcpu, g: &mut VcpuState, env: &mut Env) {
    let guest_tsc = env.host.rdtsc().wrapping_add(cpu.tsc_offset());
    let fits = |gpa: u64, len: usize| (gpa & 0xfff) as usize + len <= 4096;
    if msr == pvclock::MSR_SYSTEM_TIME_NEW {
        g.msrs.kvm_system_time = value;
        let gpa = value & !1;
        if value & 1 != 0 && fits(gpa, pvclock::TIME_INFO_BYTES) {
            env.mem.write(gpa, &pvclock::time_info(guest_tsc, g.tsc_khz));
        }
    } else {
        g.msrs.kvm_wall_clock = value;
        if fits(value, pvclock::WALL_CLOCK_BYTES) {
            let now = pvclock::guest_ns(guest_tsc, g.tsc_khz);
            env.mem.write(value, &pvclock::wall_clock(env.host.unix_time_ns(), now));
        }
    }
}

/// The mask of an I/O access of `size` bytes.
fn io_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

fn handle_io(port: u16, size: u8, write: bool, cpu: &mut dyn Vcpu, io: &mut dyn DeviceIo, e: &VmExit) -> Action {
    let mask = io_mask(size);
    if write {
        let value = (cpu.gprs().rax & mask) as u32;
        let done = complete(cpu, e);
        match io.io_write(port, size, value) {
            IoOutcome::TestExit(code) => Action::Stop(StopReason::TestExit(code)),
            IoOutcome::Reset => Action::Stop(StopReason::Reboot),
            IoOutcome::PowerOff => Action::Stop(StopReason::PowerOff),
            IoOutcome::Done => done,
        }
    } else {
        let value = io.io_read(port, size) as u64 & mask;
        let r = cpu.gprs();
        // IN to AL/AX leaves the rest of RAX alone; IN to EAX zero-extends (SDM Vol. 1 3.4.1.1).
        // The kept bits and the value do not overlap: added (an OR gave an equivalent mutant).
        r.rax = if size == 4 { value } else { (r.rax & !mask) + value };
        complete(cpu, e)
    }
}

#[cfg(test)]
mod tests;
