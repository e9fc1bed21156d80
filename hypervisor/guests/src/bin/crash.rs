//! Test guest `crash`: prints `crash: booted`, waits 1e8 TSC cycles, prints `crash: triple
//! faulting now` and triple-faults; the hypervisor must stop (or restart) the guest.
//!
//! The guest keeps nothing across a restart (the hypervisor reloads its image), so a test
//! counts restarts by the `crash: booted` lines. vCPU 0 only (any other vCPU parks at once,
//! see `guest!`).
#![no_std]
#![no_main]

use test_guests::cpu::wait_tsc;
use test_guests::say;

test_guests::guest!(name = "crash", main = main);

/// Time between the two lines, so a restarting guest does not flood the console.
const WAIT_CYCLES: u64 = 100_000_000;

/// IDTR contents for LIDT in 64-bit mode: limit 0, base 0 (SDM Vol. 3A 6.10 "Interrupt
/// Descriptor Table (IDT)", Figure 6-1).
#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

static EMPTY_IDTR: Idtr = Idtr { limit: 0, base: 0 };

fn main() -> u32 {
    say!("booted");
    wait_tsc(WAIT_CYCLES);
    say!("triple faulting now");
    // With an IDT limit of 0 no gate is inside the IDT: INT3 raises #BP, whose gate (vector
    // 3, bytes 48..63) is beyond the limit, so delivering it raises #GP (SDM Vol. 3A 6.10:
    // a vector that references a descriptor beyond the limit); delivering the #GP fails the
    // same way, and a #GP while delivering a #GP is a double fault (SDM Vol. 3A 6.15,
    // interrupt 8 "Double Fault Exception", Table 6-5: contributory then contributory);
    // its gate is beyond the limit too, and a fault while delivering #DF is a triple fault:
    // the CPU enters shutdown (same section). Under VMX that is a "triple fault" VM exit
    // (SDM Vol. 3C "Basic Exit Reasons", reason 2), under SVM a SHUTDOWN intercept (AMD APM
    // Vol. 2 15.9); interrupts are disabled, so nothing else can arrive first.
    // SAFETY: ends the guest; nothing runs after the INT3.
    unsafe {
        core::arch::asm!(
            "lidt [{idtr}]",
            "int3",
            "2:",
            "jmp 2b",
            idtr = in(reg) &raw const EMPTY_IDTR,
            options(noreturn, nostack),
        )
    }
}
