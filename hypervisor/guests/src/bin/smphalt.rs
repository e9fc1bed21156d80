//! Test guest `smphalt`: every vCPU halts for good, vCPU 0 with interrupts disabled and the
//! others with interrupts enabled but no interrupt routed to them (their local APIC timers are
//! off, no I/O APIC entry names them, their LINT0 is masked, and no vCPU is left to send an
//! IPI). Bastion must see that nothing can ever wake the guest and report it halted, whatever
//! mix of RFLAGS.IF its vCPUs halted with.
//!
//! Output: `smphalt: vcpu <n> halting` per vCPU; it never exits by itself.
#![no_std]
#![no_main]

use test_guests::say;

test_guests::guest!(name = "smphalt", main = main);

fn main(vcpu: u32) -> u32 {
    say!("vcpu {vcpu} halting");
    loop {
        // SAFETY: halting has no memory effects; vCPU 0 with IF = 0, the others with IF = 1.
        unsafe {
            if vcpu == 0 {
                core::arch::asm!("cli", "hlt", options(nomem, nostack));
            } else {
                core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack));
            }
        }
    }
}
