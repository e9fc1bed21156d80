//! Test guest `halt`: halts with interrupts disabled and never exits; the hypervisor must
//! notice and report that the guest halted.
#![no_std]
#![no_main]

use test_guests::say;

test_guests::guest!(name = "halt", main = main);

fn main() -> u32 {
    say!("halting with interrupts disabled");
    // With IF = 0 only NMI, SMI, INIT or a debug/machine-check event ends HLT (SDM Vol. 2A
    // HLT), none of which a test guest should see: resuming here means the hypervisor let
    // the guest run past HLT.
    // SAFETY: halting has no memory effects.
    unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    say!("FAIL hlt returned with interrupts disabled");
    1
}
