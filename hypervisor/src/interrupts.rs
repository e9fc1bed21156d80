//! The IDT and the crash report.
//!
//! All 256 vectors enter through one assembly stub each (generated below with `.rept`), which
//! pushes a uniform [`TrapFrame`] — every general register, the vector and an error code (0
//! for vectors where the CPU pushes none, SDM Vol. 3A 6.13) — and calls [`trap`]. A Rust
//! `extern "x86-interrupt"` handler cannot see the general registers, and a crash report
//! without them is half a report.
//!
//! Today every exception in the hypervisor is fatal except a #GP at a known fix-up site
//! (`cpu::rdmsr_safe`). A fatal one prints the report and ends the run with a failure status
//! (`platform::exit`): never a silent hang, never a triple fault.

use crate::gdt;
use core::arch::global_asm;
use spin::Lazy;
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

/// Register state saved by the entry stubs, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
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
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3A Figure 6-9, 64-bit mode: always SS:RSP too).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Each stub is at most 12 bytes and aligned to 16, so stub N sits at
// bastion_isr_stubs + 16*N. Vectors with a CPU-pushed error code: 8, 10-14, 17, 21, 29, 30.
// The CPU aligns RSP to 16 before pushing its frame in 64-bit mode; 7 (CPU) + 2 (stub)
// + 15 (registers) quadwords keep it aligned for the call, as the SysV ABI requires.
global_asm!(
    r#"
.section .text.bastion_isr, "ax"
.global bastion_isr_stubs
.balign 16
bastion_isr_stubs:
.set vec, 0
.rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    .byte 0x68
    .long vec
    jmp bastion_isr_common
    .set vec, vec + 1
.endr

bastion_isr_common:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    cld
    call {trap}
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 16
    iretq
.text
"#,
    trap = sym trap,
);

unsafe extern "C" {
    static bastion_isr_stubs: u8;
}

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    let base = &raw const bastion_isr_stubs as u64;
    let stub = |v: u64| VirtAddr::new(base + 16 * v);
    // SAFETY (all set_handler_addr calls): each address is the entry stub for that vector,
    // which saves all state and returns with iretq; the IST indices exist in the TSS.
    unsafe {
        idt.divide_error.set_handler_addr(stub(0));
        idt.debug.set_handler_addr(stub(1));
        idt.non_maskable_interrupt.set_handler_addr(stub(2)).set_stack_index(gdt::IST_NMI);
        idt.breakpoint.set_handler_addr(stub(3));
        idt.overflow.set_handler_addr(stub(4));
        idt.bound_range_exceeded.set_handler_addr(stub(5));
        idt.invalid_opcode.set_handler_addr(stub(6));
        idt.device_not_available.set_handler_addr(stub(7));
        idt.double_fault.set_handler_addr(stub(8)).set_stack_index(gdt::IST_DOUBLE_FAULT);
        idt.invalid_tss.set_handler_addr(stub(10));
        idt.segment_not_present.set_handler_addr(stub(11));
        idt.stack_segment_fault.set_handler_addr(stub(12));
        idt.general_protection_fault.set_handler_addr(stub(13));
        idt.page_fault.set_handler_addr(stub(14));
        idt.x87_floating_point.set_handler_addr(stub(16));
        idt.alignment_check.set_handler_addr(stub(17));
        idt.machine_check.set_handler_addr(stub(18)).set_stack_index(gdt::IST_MACHINE_CHECK);
        idt.simd_floating_point.set_handler_addr(stub(19));
        idt.virtualization.set_handler_addr(stub(20));
        idt.cp_protection_exception.set_handler_addr(stub(21));
        idt.hv_injection_exception.set_handler_addr(stub(28));
        idt.vmm_communication_exception.set_handler_addr(stub(29));
        idt.security_exception.set_handler_addr(stub(30));
        for v in 32..=255u8 {
            idt[v].set_handler_addr(stub(v as u64));
        }
    }
    idt
});

pub fn init() {
    IDT.load();
    mask_legacy_pic();
}

/// Loads the shared IDT on an application processor.
pub fn init_ap() {
    IDT.load();
}

/// Masks both 8259 PICs. Firmware leaves the PIT's IRQ 0 unmasked; Bastion does not use the
/// legacy PIC (host interrupts will come through the local APIC), and an unmasked PIC would
/// keep raising external-interrupt VM exits while a guest runs.
fn mask_legacy_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: writing the interrupt mask registers of the master and slave 8259.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Mnemonic and name of an exception vector (SDM Vol. 3A Table 6-1).
pub fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "Divide Error"),
        1 => ("#DB", "Debug"),
        2 => ("NMI", "Non-Maskable Interrupt"),
        3 => ("#BP", "Breakpoint"),
        4 => ("#OF", "Overflow"),
        5 => ("#BR", "BOUND Range Exceeded"),
        6 => ("#UD", "Invalid Opcode"),
        7 => ("#NM", "Device Not Available"),
        8 => ("#DF", "Double Fault"),
        10 => ("#TS", "Invalid TSS"),
        11 => ("#NP", "Segment Not Present"),
        12 => ("#SS", "Stack-Segment Fault"),
        13 => ("#GP", "General Protection"),
        14 => ("#PF", "Page Fault"),
        16 => ("#MF", "x87 Floating-Point Error"),
        17 => ("#AC", "Alignment Check"),
        18 => ("#MC", "Machine Check"),
        19 => ("#XM", "SIMD Floating-Point"),
        20 => ("#VE", "Virtualization Exception"),
        21 => ("#CP", "Control Protection"),
        28 => ("#HV", "Hypervisor Injection"),
        29 => ("#VC", "VMM Communication"),
        30 => ("#SX", "Security Exception"),
        0..=31 => ("#??", "Reserved"),
        _ => ("IRQ", "Unexpected Interrupt"),
    }
}

/// Host NMIs taken so far. An NMI is the host's (a watchdog, a platform error signal, a
/// debugger, QEMU's `nmi` monitor command): it never belongs to a guest. It must not end the
/// run either, so it is only counted here (no lock: an NMI can arrive while any lock is held)
/// and CPU 0 reports it from its loop.
static NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts an NMI, taken through the IDT or as a VM exit (VMX's NMI exiting consumes it).
pub fn count_nmi() {
    NMIS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

pub fn nmi_count() -> u64 {
    NMIS.load(core::sync::atomic::Ordering::Relaxed)
}

/// Called by every entry stub.
extern "C" fn trap(frame: &mut TrapFrame) {
    if frame.vector == 2 {
        count_nmi();
        return;
    }
    // Host interrupts: the timer and kick IPIs only need acknowledging (their purpose, making
    // the CPU leave a guest or an idle wait, is already served); a spurious interrupt needs no
    // EOI (SDM Vol. 3A 11.9). Anything else is unexpected but harmless: acknowledge and log.
    if frame.vector >= 32 {
        let v = frame.vector as u8;
        if v == crate::lapic::SPURIOUS_VECTOR {
            return;
        }
        crate::lapic::eoi();
        if v == crate::vmm::HALT_VECTOR {
            crate::cpu::halt_forever();
        }
        if v == crate::vmm::SERIAL_VECTOR {
            crate::serial::rx_interrupt();
        } else if v != crate::vmm::TIMER_VECTOR && v != crate::vmm::KICK_VECTOR {
            log::warn!("unexpected interrupt, vector {v:#x}");
        }
        return;
    }
    if frame.vector == 13 {
        let (site, fixup) = crate::cpu::rdmsr_fixup();
        if frame.rip == site {
            frame.rip = fixup;
            return;
        }
    }
    crash(frame)
}

fn crash(f: &TrapFrame) -> ! {
    use crate::serial::print_emergency as p;
    let (mn, name) = exception_name(f.vector);
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let cr3 = x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64();
    p(format_args!(
        "\n!!! BASTION CRASH on CPU {}: {mn} {name} (vector {}), error code {:#x}{}\n",
        crate::cpu::current_id(),
        f.vector,
        f.error_code,
        page_fault_detail(f),
    ));
    p(format_args!("    RIP {:#018x}  CS  {:#06x}  RFLAGS {:#010x}\n", f.rip, f.cs, f.rflags));
    p(format_args!("    RSP {:#018x}  SS  {:#06x}  CR2 {:#018x}  CR3 {:#018x}\n", f.rsp, f.ss, cr2, cr3));
    p(format_args!("    RAX {:#018x}  RBX {:#018x}  RCX {:#018x}\n", f.rax, f.rbx, f.rcx));
    p(format_args!("    RDX {:#018x}  RSI {:#018x}  RDI {:#018x}\n", f.rdx, f.rsi, f.rdi));
    p(format_args!("    RBP {:#018x}  R8  {:#018x}  R9  {:#018x}\n", f.rbp, f.r8, f.r9));
    p(format_args!("    R10 {:#018x}  R11 {:#018x}  R12 {:#018x}\n", f.r10, f.r11, f.r12));
    p(format_args!("    R13 {:#018x}  R14 {:#018x}  R15 {:#018x}\n", f.r13, f.r14, f.r15));
    let mut reason = crate::platform::Reason::new();
    let _ = core::fmt::Write::write_fmt(&mut reason, format_args!("CPU exception {mn} at RIP {:#x}", f.rip));
    crate::platform::exit(bastion_core::exit::ExitStatus::Fail, reason.as_str())
}

/// Decodes the #PF error code (SDM Vol. 3A 4.7).
fn page_fault_detail(f: &TrapFrame) -> &'static str {
    if f.vector != 14 {
        return "";
    }
    let e = f.error_code;
    match (e & 1 != 0, e & 2 != 0, e & 16 != 0) {
        (_, _, true) => " [instruction fetch]",
        (false, false, _) => " [read of a not-present page]",
        (false, true, _) => " [write to a not-present page]",
        (true, false, _) => " [read protection violation]",
        (true, true, _) => " [write protection violation]",
    }
}
