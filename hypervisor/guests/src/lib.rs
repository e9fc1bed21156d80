//! Shared runtime of Bastion's test guests: boot code, console, exceptions, CPU helpers.
//!
//! Each guest (`src/bin/*.rs`) is a tiny OS image that the hypervisor loads as a flat binary
//! at guest-physical 0x8000 and starts in real mode (the guest ABI; see `boot.s` for the
//! entry state). The boot code in this crate takes it to 64-bit long mode with paging (an
//! identity map of the first 4 GiB) and an IDT, then calls the guest's `main`, declared with
//! [`guest!`]; `main` returns the test exit code. Everything a guest prints is one line
//! starting with its name ([`say!`]).
//!
//! A guest may run several vCPUs, which all start at the same entry: the boot code gives
//! each its own stack and lets vCPU 0 do the one-time setup ([`boot`] has the protocol);
//! `main` then runs on vCPU 0 only (`fn() -> u32`) or on every vCPU (`fn(vcpu: u32) -> u32`);
//! lines from different vCPUs never interleave; a vCPU that is done without ending the guest
//! parks ([`cpu::park`]), while the test exit ends the whole guest.
//!
//! Interrupts stay disabled unless a guest asks for them: [`interrupts`] loads an IDT with
//! the PIC's vectors and runs the guest's handler for them, [`pic`] programs the 8259As.
//!
//! Layout and build: `link.ld` (memory map) and `build.rs` (linker flags).
//! Only for x86_64-unknown-none:
//! `cargo build -p test-guests --target x86_64-unknown-none --release`.
#![no_std]

#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
compile_error!("test-guests builds only for x86_64-unknown-none: cargo build -p test-guests --target x86_64-unknown-none --release");

pub mod apic;
pub mod boot;
pub mod checks;
pub mod cpu;
pub mod exceptions;
pub mod interrupts;
pub mod isolation;
pub mod pic;
pub mod serial;

pub use checks::Checks;

/// A panic is a failed test: print it and exit with 1.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => say!("FAIL panic at {}:{}: {}", l.file(), l.line(), info.message()),
        None => say!("FAIL panic: {}", info.message()),
    }
    cpu::test_exit(1)
}
