//! Long-mode exception handling: expected faults resume at an armed address, anything else
//! prints `<guest>: FAIL unexpected exception <vector> at <rip>` and ends the test.
//!
//! The IDT and the per-vector stubs are in `boot.s`; the stubs save the registers as a
//! [`Frame`] and call [`exception_dispatch`]. A guest that takes interrupts loads a larger
//! IDT ([`crate::interrupts`]) whose IRQ vectors enter through the same path; those vectors
//! (>= 32) go to its handler.
//!
//! Catching a fault: [`guarded!`](crate::guarded) runs one instruction after storing the
//! address just past it in this vCPU's resume slot. A fault is reported with RIP at the faulting
//! instruction (faults, SDM Vol. 3A 6.5), so resuming at the armed address skips exactly that
//! instruction whatever its encoding length, and execution continues with the registers as
//! they were when it faulted.
//!
//! The resume address and the caught fault are kept per vCPU (indexed by
//! [`vcpu_id`](crate::boot::vcpu_id)), so vCPUs can guard instructions at the same time.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Saved state of an exception or interrupt, lowest address first (the order
/// `lm_exc_common` pushes).
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 pushed by the stub for vectors without one (interrupts
    /// included).
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3A 6.14.2, Figure 6-9).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

pub const DE: u8 = 0;
pub const UD: u8 = 6;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

/// An exception caught by [`guarded!`](crate::guarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: u64,
}

impl fmt::Display for Fault {
    /// `#GP(0x0)`, `#UD`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(mnemonic(self.vector))?;
        if has_error_code(self.vector) {
            write!(f, "({:#x})", self.error_code)?;
        }
        Ok(())
    }
}

/// `#UD` for 6 and so on (SDM Vol. 3A Table 6-1; 29 and 30 from AMD APM Vol. 2 Table 8-1).
pub fn mnemonic(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "vector 9",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "vector 15",
        "#MF",
        "#AC",
        "#MC",
        "#XM",
        "#VE",
        "#CP",
        "vector 22",
        "vector 23",
        "vector 24",
        "vector 25",
        "vector 26",
        "vector 27",
        "#HV",
        "#VC",
        "#SX",
        "vector 31",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("interrupt")
}

/// The vectors whose exceptions push an error code (same list as `boot.s`).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

const NO_FAULT: u64 = u64::MAX;
const VCPUS: usize = crate::boot::MAX_VCPUS as usize;
#[allow(clippy::declare_interior_mutable_const)] // only to initialise the arrays below
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NONE: AtomicU64 = AtomicU64::new(NO_FAULT);
/// Per vCPU: where to resume after a fault of the instruction being guarded; 0 when none
/// is. Written by [`guarded!`](crate::guarded) through a pointer from [`arm`].
static RESUME: [AtomicU64; VCPUS] = [ZERO; VCPUS];
static FAULT_VECTOR: [AtomicU64; VCPUS] = [NONE; VCPUS];
static FAULT_ERROR: [AtomicU64; VCPUS] = [ZERO; VCPUS];

/// The slot of the running vCPU in the arrays above.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Slot(usize);

impl Slot {
    /// Where [`guarded!`](crate::guarded) stores the resume address (and 0 after).
    pub fn resume(self) -> *const AtomicU64 {
        &RESUME[self.0]
    }
}

/// Forgets any previous fault of this vCPU (called before a guarded instruction) and returns
/// its slot.
#[doc(hidden)]
pub fn arm() -> Slot {
    let slot = Slot(crate::boot::vcpu_id() as usize);
    FAULT_VECTOR[slot.0].store(NO_FAULT, SeqCst);
    slot
}

/// The fault the last guarded instruction of this vCPU raised, if any.
#[doc(hidden)]
pub fn take_fault(slot: Slot) -> Option<Fault> {
    match FAULT_VECTOR[slot.0].swap(NO_FAULT, SeqCst) {
        NO_FAULT => None,
        v => Some(Fault { vector: v as u8, error_code: FAULT_ERROR[slot.0].load(SeqCst) }),
    }
}

/// Runs one instruction (an `asm!` template string plus operands) and returns
/// `Option<Fault>`: `None` if it completed, `Some` with the vector and error code if it
/// raised an exception, in which case execution resumed right after it.
///
/// ```ignore
/// let fault = unsafe { guarded!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
/// ```
/// After a fault, outputs hold whatever the registers held at the fault.
///
/// Like `asm!`, it must be used inside `unsafe`: the caller vouches for the instruction. The
/// code around it only stores the resume address (label 2, right after the instruction) in
/// this vCPU's resume slot and clears it again. The slot's address is an input operand, so
/// it is in a register the instruction's own operands do not use, and a faulting
/// instruction changes no register.
#[macro_export]
macro_rules! guarded {
    ($insn:literal $(, $($operands:tt)*)?) => {{
        let slot = $crate::exceptions::arm();
        core::arch::asm!(
            "lea {resume_at}, [rip + 2f]",
            "mov qword ptr [{resume}], {resume_at}",
            $insn,
            "2:",
            "mov qword ptr [{resume}], 0",
            resume = in(reg) slot.resume(),
            resume_at = out(reg) _,
            $($($operands)*)?
        );
        $crate::exceptions::take_fault(slot)
    }};
}

/// Called by `lm_exc_common` for every exception, and every interrupt, in long mode.
#[no_mangle]
extern "C" fn exception_dispatch(frame: &mut Frame) {
    // Interrupts first: one that arrives while an instruction is guarded must reach its
    // handler and leave the resume slot alone. Without a handler it is reported below.
    if frame.vector >= 32 && crate::interrupts::dispatch(frame.vector as u8) {
        return;
    }
    // An NMI (vector 2) goes to its handler if one is installed, like an interrupt.
    if frame.vector == 2 && crate::interrupts::dispatch_nmi() {
        return;
    }
    let vcpu = crate::boot::vcpu_id() as usize;
    let resume = if frame.vector < 32 { RESUME[vcpu].swap(0, SeqCst) } else { 0 };
    if resume != 0 {
        FAULT_ERROR[vcpu].store(frame.error_code, SeqCst);
        FAULT_VECTOR[vcpu].store(frame.vector, SeqCst);
        frame.rip = resume;
        return;
    }
    // Unexpected: one line in the boot code's format, then the failing exit. The line lock
    // lets it through if this vCPU faulted while printing.
    let vector = frame.vector as u8;
    let _line = crate::serial::LineLock::take();
    let mut out = crate::serial::Console;
    let _ = write!(
        out,
        "{}: FAIL unexpected exception {} at {:#x} ({}",
        crate::boot::name(),
        frame.vector,
        frame.rip,
        mnemonic(vector)
    );
    if has_error_code(vector) {
        let _ = write!(out, ", error code {:#x}", frame.error_code);
    }
    if vector == PF {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
        let _ = write!(out, ", cr2 {cr2:#x}");
    }
    let _ = writeln!(out, ", long mode)");
    crate::cpu::test_exit(1)
}
