//! The local APIC (xAPIC, memory-mapped) and the ACPI MADT, for guests that start their own
//! application processors and send IPIs, as a PC kernel does (`ipi`, `bench`).
//!
//! Guest code runs identity-mapped with the APIC page at its reset base 0xFEE00000 (SDM Vol.
//! 3A 11.4.1); under Bastion each vCPU's accesses there reach its own virtual local APIC.

/// xAPIC registers (SDM Vol. 3A 11.4.1 Table 11-1).
pub const APIC: u64 = 0xFEE0_0000;
pub const EOI: u64 = 0xB0;
pub const LDR: u64 = 0xD0;
pub const DFR: u64 = 0xE0;
pub const SVR: u64 = 0xF0;
pub const ICR_LOW: u64 = 0x300;
pub const ICR_HIGH: u64 = 0x310;

/// ICR fields (SDM Vol. 3A 11.6.1, Figure 11-12).
pub const FIXED: u32 = 0b000 << 8;
pub const NMI: u32 = 0b100 << 8;
pub const INIT: u32 = 0b101 << 8;
pub const STARTUP: u32 = 0b110 << 8;
pub const LOGICAL: u32 = 1 << 11;
pub const DELIVERY_PENDING: u32 = 1 << 12;
pub const ASSERT: u32 = 1 << 14;
pub const SELF: u32 = 0b01 << 18;
pub const ALL_INCLUDING_SELF: u32 = 0b10 << 18;
pub const ALL_EXCLUDING_SELF: u32 = 0b11 << 18;

/// The STARTUP vector the boot code answers: APs begin at 0x0A000 (`sipi_entry` in boot.s).
pub const SIPI_VECTOR: u32 = 0x0A;

pub fn write(reg: u64, value: u32) {
    // SAFETY: the local APIC's registers, identity-mapped; 32-bit aligned accesses.
    unsafe { core::ptr::write_volatile((APIC + reg) as *mut u32, value) }
}

pub fn read(reg: u64) -> u32 {
    // SAFETY: as for write.
    unsafe { core::ptr::read_volatile((APIC + reg) as *const u32) }
}

/// Writes the ICR (high half first: the write to the low half sends, SDM Vol. 3A 11.6.1)
/// once the previous IPI has left (delivery status idle). `destination` is an APIC ID, or a
/// logical destination with [`LOGICAL`]; ignored with a shorthand.
pub fn send(destination: u32, low: u32) {
    while read(ICR_LOW) & DELIVERY_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, destination << 24);
    write(ICR_LOW, low);
}

/// Ends the interrupt in service (any value written to EOI, SDM Vol. 3A 11.8.5).
pub fn eoi() {
    write(EOI, 0);
}

/// This vCPU's local APIC, ready for IPIs: software-enabled (SVR bit 8, spurious vector
/// 0xFF), flat logical model with the bit of its index as logical ID (SDM Vol. 3A 11.6.2.2).
pub fn init(vcpu: u32) {
    write(SVR, 0x1FF);
    write(DFR, 0xFFFF_FFFF);
    write(LDR, (1 << vcpu) << 24);
}

fn read8(addr: u64) -> u8 {
    // SAFETY: the boot code identity-maps the first 4 GiB; ACPI tables lie in RAM.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn read32(addr: u64) -> u32 {
    u32::from_le_bytes([read8(addr), read8(addr + 1), read8(addr + 2), read8(addr + 3)])
}

fn signature(addr: u64, sig: &[u8]) -> bool {
    sig.iter().enumerate().all(|(i, &b)| read8(addr + i as u64) == b)
}

/// The APIC IDs of the enabled processors in the MADT (ACPI 6.5 5.2.12.2), found through the
/// RSDP in 0xE0000..0xFFFFF (ACPI 6.5 5.2.5.1), its RSDT or XSDT; None without one.
pub fn madt_apic_ids() -> Option<([u8; 16], usize)> {
    let rsdp = (0xE_0000..0x10_0000u64).step_by(16).find(|&a| signature(a, b"RSD PTR ") && (0..20).fold(0u8, |s, i| s.wrapping_add(read8(a + i))) == 0)?;
    // Revision 2 and up: the XSDT's 64-bit address at 24; otherwise the RSDT's at 16.
    let (sdt, entry) = if read8(rsdp + 15) >= 2 { (u64::from(read32(rsdp + 24)) | u64::from(read32(rsdp + 28)) << 32, 8) } else { (u64::from(read32(rsdp + 16)), 4) };
    let entries = (u64::from(read32(sdt + 4)).saturating_sub(36) / entry).min(64);
    let madt = (0..entries).map(|i| u64::from(read32(sdt + 36 + i * entry))).find(|&t| signature(t, b"APIC"))?;
    let (mut ids, mut n) = ([0u8; 16], 0);
    let (mut at, end) = (madt + 44, madt + u64::from(read32(madt + 4)));
    while at + 2 <= end {
        let (kind, len) = (read8(at), u64::from(read8(at + 1)));
        // Type 0, processor local APIC: APIC ID at 3, flags at 4 (bit 0: enabled).
        if kind == 0 && read32(at + 4) & 1 != 0 && n < ids.len() {
            ids[n] = read8(at + 3);
            n += 1;
        }
        at += len.max(2);
    }
    Some((ids, n))
}

/// Starts the processors with APIC IDs 1..n, as SDM Vol. 3A 9.4.4.1 describes: INIT to all
/// others (level assert), 10 ms, then two STARTUPs with [`SIPI_VECTOR`] 200 us apart to each
/// (TSC delays for a TSC of 1 GHz or more). Each begins in real mode at `sipi_entry` and
/// reaches the guest's `main` with its index. A STARTUP that finds its target running is
/// ignored (SDM Vol. 3A 11.6.1, "Start-Up").
pub fn start_application_processors(n: u32) {
    send(0, INIT | ASSERT | ALL_EXCLUDING_SELF);
    crate::cpu::wait_tsc(10_000_000);
    for _ in 0..2 {
        for ap in 1..n {
            send(ap, STARTUP | ASSERT | SIPI_VECTOR);
        }
        crate::cpu::wait_tsc(200_000);
    }
}
