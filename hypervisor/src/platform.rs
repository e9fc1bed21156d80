//! Ending a run: the final status line, then whatever stops this machine (see
//! `bastion_core::exit` for the protocol the test harness relies on).

use bastion_core::config::Shutdown;
use bastion_core::exit::{ExitStatus, BOCHS_SHUTDOWN_PORT, EXIT_MARKER, QEMU_DEBUG_EXIT_PORT};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use x86_64::instructions::port::Port;

static METHOD: AtomicU8 = AtomicU8::new(Shutdown::Auto as u8);
static EMULATOR: AtomicBool = AtomicBool::new(false);
static EXITING: AtomicBool = AtomicBool::new(false);

/// Records whether this machine is an emulator. QEMU's and Bochs's firmware both build ACPI
/// tables with OEM ID "BOCHS " (QEMU inherited Bochs's BIOS); real machines carry their
/// vendor's. Only on an emulator does `auto` poke the emulator's exit ports.
pub fn init(acpi_oem_id: Option<[u8; 6]>) {
    EMULATOR.store(acpi_oem_id.is_some_and(|id| &id == b"BOCHS "), Ordering::Relaxed);
}

pub fn is_emulator() -> bool {
    EMULATOR.load(Ordering::Relaxed)
}

pub fn set_shutdown(method: Shutdown) {
    METHOD.store(method as u8, Ordering::Relaxed);
}

fn method() -> Shutdown {
    match METHOD.load(Ordering::Relaxed) {
        x if x == Shutdown::Qemu as u8 => Shutdown::Qemu,
        x if x == Shutdown::Bochs as u8 => Shutdown::Bochs,
        x if x == Shutdown::Halt as u8 => Shutdown::Halt,
        x if x == Shutdown::Reboot as u8 => Shutdown::Reboot,
        _ => Shutdown::Auto,
    }
}

/// A fixed-size text buffer for exit reasons (usable without the heap): room for the longest
/// configuration error with its file, line and field (a 120-byte buffer cut a bad
/// `log_level`'s list of allowed values).
pub struct Reason {
    buf: [u8; 512],
    len: usize,
}

impl Reason {
    pub fn new() -> Self {
        Reason { buf: [0; 512], len: 0 }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Reason {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for c in s.chars() {
            let mut tmp = [0u8; 4];
            let b = c.encode_utf8(&mut tmp).as_bytes();
            if self.len + b.len() > self.buf.len() {
                break;
            }
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        Ok(())
    }
}

/// Prints the final status line and stops the machine. Never returns. If a second CPU or a
/// nested fault gets here while an exit is under way, it just stops.
pub fn exit(status: ExitStatus, reason: &str) -> ! {
    x86_64::instructions::interrupts::disable();
    if EXITING.swap(true, Ordering::SeqCst) {
        crate::cpu::halt_forever();
    }
    // Stop every other CPU first: on real hardware the machine halts with nothing running.
    // They take the IPI at their next interrupt window (guests exit on it).
    if crate::lapic::ready() {
        crate::lapic::send_ipi_all_others(crate::vmm::HALT_VECTOR);
    }
    match status {
        ExitStatus::Pass => crate::serial::print_emergency(format_args!("{EXIT_MARKER} PASS\n")),
        ExitStatus::Fail => crate::serial::print_emergency(format_args!("{EXIT_MARKER} FAIL ({reason})\n")),
    }
    crate::serial::flush();
    let m = method();
    let emulator = m == Shutdown::Auto && is_emulator();
    if m == Shutdown::Qemu || emulator {
        // SAFETY: port 0xf4 is QEMU's isa-debug-exit when present; on an emulator without it
        // the write is ignored.
        unsafe { Port::<u32>::new(QEMU_DEBUG_EXIT_PORT).write(status.qemu_code()) };
    }
    if m == Shutdown::Bochs || emulator {
        for b in b"Shutdown" {
            // SAFETY: Bochs's shutdown port; ignored elsewhere on an emulator.
            unsafe { Port::<u8>::new(BOCHS_SHUTDOWN_PORT).write(*b) };
        }
    }
    if m == Shutdown::Reboot {
        reboot();
    }
    crate::cpu::halt_forever()
}

/// Resets the machine: the keyboard controller's reset line (0xFE to port 0x64), then a
/// triple fault through an empty IDT if that did nothing.
fn reboot() -> ! {
    // SAFETY: standard PC reset sequences; the machine goes away.
    unsafe {
        Port::<u8>::new(0x64).write(0xfe);
        for _ in 0..1_000_000 {
            core::hint::spin_loop();
        }
        let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::zero() };
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3", options(noreturn));
    }
}
