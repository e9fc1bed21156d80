//! Time: the PIT for calibrated delays at boot, and the TSC, calibrated against it, as
//! Bastion's clock (nanoseconds since boot).
//!
//! The PIT (8254) runs at a fixed 1.193182 MHz on every PC and emulator, which makes it the
//! reference for calibrating the TSC and the local APIC timer. Only channel 2 is used, in
//! one-shot mode with its output read back through port 0x61 (IBM PC/AT technical reference),
//! so no PIT interrupt is involved.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged and side-effect free.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Busy-waits `us` microseconds on PIT channel 2.
pub fn pit_delay_us(us: u64) {
    let mut left = us * PIT_HZ / 1_000_000;
    while left > 0 {
        let count = left.min(0xffff);
        left -= count;
        // SAFETY: PIT channel 2 and the speaker/gate port are standard PC I/O; the speaker
        // output stays off (bit 1 clear).
        unsafe {
            let mut p61 = Port::<u8>::new(0x61);
            let gate = p61.read() & !0x03;
            p61.write(gate); // gate low: hold the counter
            Port::<u8>::new(0x43).write(0b1011_0000); // channel 2, lo/hi byte, mode 0
            Port::<u8>::new(0x42).write(count as u8);
            Port::<u8>::new(0x42).write((count >> 8) as u8);
            p61.write(gate | 1); // gate high: start counting
            // OUT2 (bit 5) rises when the count reaches zero. Bound the wait: a machine
            // without a working PIT must not hang here forever.
            for _ in 0..100_000_000u32 {
                if p61.read() & 0x20 != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            p61.write(gate);
        }
    }
}

/// Measures the TSC rate over 20 ms of PIT time.
pub fn init() -> u64 {
    let t0 = rdtsc();
    pit_delay_us(20_000);
    let khz = ((rdtsc() - t0) / 20).max(1);
    TSC_KHZ.store(khz, Ordering::Relaxed);
    TSC_AT_BOOT.store(t0, Ordering::Relaxed);
    khz
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed).max(1)
}

/// Nanoseconds since `init`.
pub fn now_ns() -> u64 {
    let ticks = rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (ticks as u128 * 1_000_000 / tsc_khz() as u128) as u64
}
