//! Test guest `pit`: the 8254 PIT's counter 0 as the system timer, delivered through the
//! 8259 on IRQ 0 to a vCPU that sleeps in `sti; hlt` between ticks — the hypervisor must wake
//! the halted vCPU at each timer deadline, with no other interrupt to wake it.
//!
//! It programs counter 0 the way Linux does for HZ = 100 (control word 0x34: counter 0, LSB
//! then MSB, mode 2 rate generator; count 11932 = 1193182 / 100, Intel 8254 datasheet), waits
//! for 50 ticks halting between them, and measures them against the TSC (rate from Bastion's
//! timing leaf 0x40000010): 50 ticks must take at least 475 ms (a tick is never early) and at
//! most 750 ms (under an emulator sharing a loaded host a late tick is possible, a missing
//! one is not). Then it reads counter 2 through Linux's calibration sequence (port 0x61 gate,
//! mode 0, OUT2 on port 0x61 bit 5): terminal count after 9.5 to 15 ms of a 10 ms count.
//!
//! Output: `pit: PASS 50 ticks in <ms> ms (<w> wake-ups)` and `pit: PASS counter 2 ...`, or
//! `pit: FAIL ...`; then the test exit.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use test_guests::cpu::{cpuid, inb, outb, rdtsc};
use test_guests::interrupts::{self, IRQ_BASE};
use test_guests::{pic, Checks};

test_guests::guest!(name = "pit", main = main);

static TICKS: AtomicU32 = AtomicU32::new(0);
const TICKS_WANTED: u32 = 50;
const LATCH: u16 = 11932;

fn handler(vector: u8) {
    if vector == IRQ_BASE {
        TICKS.fetch_add(1, SeqCst);
    }
    pic::eoi(vector - IRQ_BASE);
}

fn main() -> u32 {
    let mut c = Checks::new();
    let khz = u64::from(cpuid(0x4000_0010, 0).eax);
    if khz == 0 {
        c.fail("TSC rate from leaf 0x40000010", "0");
        return c.finish();
    }
    interrupts::install(handler);
    pic::init(IRQ_BASE, IRQ_BASE + 8, !1, 0xff);
    outb(0x43, 0x34);
    outb(0x40, (LATCH & 0xff) as u8);
    outb(0x40, (LATCH >> 8) as u8);
    let start_ticks = TICKS.load(SeqCst);
    let t0 = rdtsc();
    let mut wakeups = 0u32;
    // At most 5 s of TSC time, so a missing timer fails instead of hanging.
    while TICKS.load(SeqCst) - start_ticks < TICKS_WANTED && rdtsc() - t0 < khz * 5000 {
        interrupts::halt_until_interrupt();
        wakeups += 1;
    }
    let ms = (rdtsc() - t0) / khz;
    let got = TICKS.load(SeqCst) - start_ticks;
    let what = format_args!("{TICKS_WANTED} ticks in {ms} ms ({wakeups} wake-ups)");
    if got >= TICKS_WANTED && (475..=750).contains(&ms) {
        c.pass(what);
    } else {
        c.fail(what, format_args!("{got} ticks; expected {TICKS_WANTED} in 475 to 750 ms"));
    }
    // Mask IRQ 0 again before the calibration check.
    pic::set_masks(0xff, 0xff);
    // Linux's pit_calibrate_tsc: gate on, speaker off; counter 2 mode 0 with a count of
    // 11932 (10 ms); OUT2 (port 0x61 bit 5) goes high at terminal count.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, (LATCH & 0xff) as u8);
    outb(0x42, (LATCH >> 8) as u8);
    let t0 = rdtsc();
    let mut polls = 0u64;
    while inb(0x61) & 0x20 == 0 && rdtsc() - t0 < khz * 1000 {
        polls += 1;
    }
    let us = (rdtsc() - t0) * 1000 / khz;
    let what = format_args!("counter 2 reached terminal count after {us} us ({polls} polls of port 0x61)");
    if (9_500..=15_000).contains(&us) {
        c.pass(what);
    } else {
        c.fail(what, "expected 9.5 to 15 ms for a 10 ms count");
    }
    c.finish()
}
