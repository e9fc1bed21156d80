//! The host's own I/O APIC, for the one interrupt Bastion takes from a device: COM1's receive
//! interrupt, so console input is read when it arrives instead of by polling every
//! millisecond (which cost the guest on CPU 0 a VM exit each time). Which pin and how, from the
//! MADT: `bastion_core::host_irq`; here only the register accesses (82093AA 3.0-3.2: IOREGSEL
//! at +0x00 selects, IOWIN at +0x10 reads or writes the selected 32-bit register).

use bastion_core::host_irq::{redirection_entry, Route};

fn select(base: u64, index: u32) -> (*mut u32, *mut u32) {
    let regs = crate::memory::phys_to_virt(base) as *mut u32;
    // SAFETY: IOREGSEL and IOWIN of an I/O APIC the MADT names, in the physical mapping.
    unsafe {
        core::ptr::write_volatile(regs, index);
        (regs, regs.add(4))
    }
}

/// How many inputs the I/O APIC at `base` has: its version register's bits 23:16 + 1.
pub fn pins(base: u64) -> u32 {
    let (_, win) = select(base, 1);
    // SAFETY: IOWIN after selecting the version register.
    let ver = unsafe { core::ptr::read_volatile(win) };
    ((ver >> 16) & 0xff) + 1
}

/// Writes pin `r.pin`'s redirection entry: `vector` to local APIC `dest`, unmasked. The high
/// half first, so the entry is never live with a half-written destination.
pub fn route(base: u64, r: &Route, vector: u8, dest: u8) {
    let e = redirection_entry(r, vector, dest);
    let index = 0x10 + 2 * r.pin;
    for (i, v) in [(index + 1, (e >> 32) as u32), (index, e as u32)] {
        let (_, win) = select(base, i);
        // SAFETY: IOWIN after selecting that half of the entry.
        unsafe { core::ptr::write_volatile(win, v) };
    }
}
