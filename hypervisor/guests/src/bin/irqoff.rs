//! Test guest `irqoff`: prints one line, then spins forever with interrupts disabled, never
//! exiting and never doing I/O; the hypervisor must still share the CPU with other guests.
//!
//! With IF = 0 and nothing that exits (no I/O, no HLT, no PAUSE), only the hypervisor's own
//! preemption can take the CPU back, and the guest's IF must not stop it: under VMX the
//! VMX-preemption timer or "external-interrupt exiting" (SDM Vol. 3C "Pin-Based VM-Execution
//! Controls"), under SVM the INTR intercept with V_INTR_MASKING set (AMD APM Vol. 2 "Virtual
//! Interrupt Masking"; without it the guest's IF masks physical interrupts too).
//! Output: `irqoff: spinning with interrupts disabled` (vCPU 0; any other vCPU parks at
//! once, see `guest!`).
#![no_std]
#![no_main]

use test_guests::say;

test_guests::guest!(name = "irqoff", main = main);

fn main() -> u32 {
    say!("spinning with interrupts disabled");
    // SAFETY: CLI and a jump to itself: no memory, no stack, no end.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn, nomem, nostack)) }
}
