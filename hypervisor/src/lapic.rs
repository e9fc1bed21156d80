//! The local APIC in xAPIC mode, through MMIO (Intel SDM Vol. 3A chapter 11).
//!
//! xAPIC rather than x2APIC: QEMU's TCG has no x2APIC (see shared notes), and the MMIO page
//! works everywhere. The page is mapped uncached by `memory::map_mmio`.

use core::sync::atomic::{AtomicU64, Ordering};

static BASE: AtomicU64 = AtomicU64::new(0);

const ID: usize = 0x20;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;

/// Vector for spurious interrupts (SVR).
pub const SPURIOUS_VECTOR: u8 = 0xff;

fn reg(off: usize) -> *mut u32 {
    (BASE.load(Ordering::Relaxed) as usize + off) as *mut u32
}

fn read(off: usize) -> u32 {
    // SAFETY: the APIC page is mapped (init ran) and registers are 32-bit aligned.
    unsafe { reg(off).read_volatile() }
}

fn write(off: usize, v: u32) {
    // SAFETY: as for `read`.
    unsafe { reg(off).write_volatile(v) }
}

/// Maps the APIC page (once, on the boot CPU) and enables this CPU's APIC.
pub fn init_bsp() -> Result<(), &'static str> {
    let msr = crate::cpu::rdmsr_safe(0x1b).ok_or("IA32_APIC_BASE is not readable")?;
    if msr & (1 << 11) == 0 {
        // Re-enabling a hardware-disabled APIC does not work on QEMU TCG (shared notes).
        return Err("the local APIC is disabled in IA32_APIC_BASE");
    }
    let virt = crate::memory::map_mmio(msr & 0xf_ffff_f000, 4096).ok_or("cannot map the local APIC")?;
    BASE.store(virt, Ordering::Relaxed);
    enable();
    Ok(())
}

/// Software-enables the APIC of the calling CPU (SVR bit 8).
pub fn enable() {
    write(SVR, 0x100 | SPURIOUS_VECTOR as u32);
}

/// Whether `init_bsp` mapped the APIC (early failures happen before it).
pub fn ready() -> bool {
    BASE.load(Ordering::Relaxed) != 0
}

pub fn id() -> u32 {
    read(ID) >> 24
}

pub fn eoi() {
    write(EOI, 0);
}

fn send_icr(apic_id: u32, low: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, low);
    // Delivery status (bit 12) clears once the IPI is sent.
    for _ in 0..10_000_000u32 {
        if read(ICR_LOW) & (1 << 12) == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// INIT IPI, level assert (SDM Vol. 3A 11.6.1).
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, 0x0000_4500);
}

/// Start-up IPI with the trampoline at physical `page << 12`.
pub fn send_sipi(apic_id: u32, page: u8) {
    send_icr(apic_id, 0x0000_4600 | page as u32);
}

/// A fixed interrupt to another CPU.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, 0x0000_4000 | vector as u32);
}

/// Counts APIC timer ticks (divide by 16) over `us` microseconds of PIT time.
pub fn timer_ticks_per(us: u64) -> u32 {
    write(TIMER_DIVIDE, 0x3); // divide by 16
    write(LVT_TIMER, 1 << 16); // masked, one-shot
    write(TIMER_INITIAL, u32::MAX);
    crate::time::pit_delay_us(us);
    let elapsed = u32::MAX - read(TIMER_CURRENT);
    write(TIMER_INITIAL, 0);
    elapsed
}

/// Arms a one-shot timer interrupt on `vector` after `ticks` (divide-by-16 ticks).
pub fn timer_oneshot(vector: u8, ticks: u32) {
    write(TIMER_DIVIDE, 0x3);
    write(LVT_TIMER, vector as u32);
    write(TIMER_INITIAL, ticks.max(1));
}

/// A fixed interrupt to every other CPU (destination shorthand "all excluding self",
/// SDM Vol. 3A 11.6.1).
pub fn send_ipi_all_others(vector: u8) {
    send_icr(0, 0x000c_4000 | vector as u32);
}
