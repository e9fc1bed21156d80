//! Time: the PIT for calibrated delays at boot, and the TSC as Bastion's clock (nanoseconds
//! since boot), its rate from CPUID or calibrated against the PIT and the ACPI PM timer.
//!
//! The PIT (8254) runs at a fixed 1.193182 MHz on every PC and emulator, the ACPI PM timer at
//! 3.579545 MHz; they are the references for the TSC and the local APIC timer. Only PIT
//! channel 2 is used, its gate and output through port 0x61 (IBM PC/AT technical reference),
//! so no timer interrupt is involved.
//!
//! This file only touches the hardware: which CPUID leaves to believe, the window arithmetic,
//! the median and spread and the final choice are `bastion_core::time` (rules documented and
//! host-tested there).

use bastion_core::time::{self as rules, Calibration, CpuidLeaves, Reference, Sample, TscRate};
use core::sync::atomic::{AtomicU64, Ordering};
use log::{debug, warn};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = rules::PIT_HZ;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged and side-effect free.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// RDTSC after every earlier instruction has completed (LFENCE first, SDM Vol. 2B RDTSC), so
/// a bracket of two of these really encloses the port read between them.
fn rdtsc_ordered() -> u64 {
    // SAFETY: LFENCE and RDTSC are unprivileged and side-effect free.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
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

/// The ACPI PM timer's I/O port, from the FADT.
#[derive(Debug, Clone, Copy)]
pub struct PmTimer {
    pub port: u16,
    pub bits32: bool,
}

/// The CPUID leaves the TSC rate depends on, read raw (`rules::cpuid_rate` decides which
/// exist and what they mean).
fn cpuid_leaves() -> CpuidLeaves {
    use crate::cpu::cpuid;
    let (a, b, c, d) = cpuid(0, 0);
    let (a15, b15, c15, _) = cpuid(0x15, 0);
    CpuidLeaves {
        leaf_0: [a, b, c, d],
        leaf_1_eax: cpuid(1, 0).0,
        leaf_15: [a15, b15, c15],
        leaf_16_eax: cpuid(0x16, 0).0,
        ext_max: cpuid(0x8000_0000, 0).0,
        ext_7_edx: cpuid(0x8000_0007, 0).3,
    }
}

/// Decides the TSC rate (see `bastion_core::time` for the rules) and starts the clock.
/// Takes about [`rules::WINDOWS`] × [`rules::WINDOW_US`] of timer time.
pub fn init(pm_timer: Option<PmTimer>) -> TscRate {
    let t0 = rdtsc();
    let cpuid = rules::cpuid_rate(&cpuid_leaves());
    if let Err(why) = cpuid {
        debug!("clock:  no TSC rate from CPUID: {why}");
    }
    let calibration = calibrate(pm_timer);
    if let Some(d) = calibration.references_disagree_ppm().filter(|&d| d > 10_000) {
        warn!("clock:  the PIT and the ACPI PM timer disagree by {} about the TSC rate", rules::Percent(d));
    }
    let rate = rules::choose(cpuid.ok(), calibration);
    TSC_KHZ.store(rate.khz, Ordering::Relaxed);
    TSC_AT_BOOT.store(t0, Ordering::Relaxed);
    match read_host_rtc() {
        Some(unix) => {
            UNIX_AT_BOOT_NS.store(unix * 1_000_000_000, Ordering::Relaxed);
            let d = bastion_core::devices::rtc::DateTime::from_unix(unix);
            log::info!(
                "clock:  host RTC {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                d.year,
                d.month,
                d.day,
                d.hour,
                d.minute,
                d.second
            );
        }
        None => warn!("clock:  the host RTC shows no valid time; guests' wall clocks start at 1970"),
    }
    rate
}

/// Unix time in ns when the TSC read `TSC_AT_BOOT` (0 = unknown).
static UNIX_AT_BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// The Unix time in ns now, from the host RTC read at boot and the TSC since (0 = unknown).
pub fn unix_ns() -> u64 {
    match UNIX_AT_BOOT_NS.load(Ordering::Relaxed) {
        0 => 0,
        at_boot => at_boot + now_ns(),
    }
}

/// The Unix time in whole seconds now (0 = unknown): what a guest's RTC shows at power-on.
pub fn unix_seconds() -> u64 {
    unix_ns() / 1_000_000_000
}

/// Reads the host's CMOS RTC (ports 0x70/0x71): waits out an update in progress (register A
/// bit 7, MC146818A "Update Cycle"), then reads until two readings agree, so no field is
/// taken from either side of an update. The century is register 0x32, as PC firmware keeps it.
fn read_host_rtc() -> Option<u64> {
    fn reg(i: u8) -> u8 {
        // SAFETY: the CMOS index/data ports; bit 7 of the index (NMI disable) is left clear.
        unsafe {
            Port::<u8>::new(0x70).write(i);
            Port::<u8>::new(0x71).read()
        }
    }
    let read = || {
        for _ in 0..1_000_000 {
            if reg(0x0a) & 0x80 == 0 {
                break;
            }
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0b].map(reg)
    };
    let mut last = read();
    for _ in 0..10 {
        let now = read();
        if now == last {
            let [s, m, h, d, mo, y, c, b] = now;
            return bastion_core::devices::rtc::host_cmos_to_unix(s, m, h, d, mo, y, c, b);
        }
        last = now;
    }
    None
}

/// Polls allowed while waiting for a window to end, and without the counter changing. Far
/// above what a working timer needs — a poll is one or three port reads, at least a few
/// hundred nanoseconds on hardware; in Bochs, whose time is counted in instructions, a 10 ms
/// window at `ips=200000000` is 2 million instructions, some tens of thousands of polls —
/// and low enough that a dead timer costs seconds, not hours.
const MAX_POLLS: u32 = 20_000_000;
const MAX_STUCK_POLLS: u32 = 200_000;

/// A counter Bastion calibrates against.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Pit,
    Pm(PmTimer),
}

impl Counter {
    fn read(self) -> u32 {
        match self {
            Counter::Pit => pit_read(),
            Counter::Pm(t) => pm_read(t),
        }
    }

    fn reference(self) -> Reference {
        match self {
            Counter::Pit => Reference::Pit,
            Counter::Pm(t) => Reference::PmTimer { bits32: t.bits32 },
        }
    }
}

/// Measures the TSC over [`rules::WINDOWS`] windows, each against the PIT and (when given)
/// the ACPI PM timer at once.
fn calibrate(pm: Option<PmTimer>) -> Calibration {
    let mut cal = Calibration::default();
    pit_free_run();
    let mut pm = pm.map(Counter::Pm);
    // One read of each counter first: the first run of code under a binary translator (QEMU
    // TCG) costs microseconds, which would widen the first window's brackets.
    let _ = sample(Counter::Pit);
    if let Some(c) = pm {
        let _ = sample(c);
    }
    let mut windows = 0;
    let mut attempts = 0;
    while windows < rules::WINDOWS && attempts < 2 * rules::WINDOWS {
        attempts += 1;
        let pit_start = sample(Counter::Pit);
        let pm_start = pm.map(|c| (c, sample(c)));
        // Wait on the PM timer when there is one (one port read per poll), else on the PIT.
        let (waited_on, from) = pm_start.unwrap_or((Counter::Pit, pit_start));
        if !wait_window(waited_on, from.counter) {
            match waited_on {
                Counter::Pm(t) => {
                    warn!("clock:  the ACPI PM timer at port {:#x} does not count; calibrating against the PIT only", t.port);
                    pm = None;
                    continue;
                }
                Counter::Pit => {
                    warn!("clock:  PIT channel 2 does not count; cannot calibrate the TSC");
                    break;
                }
            }
        }
        if let Some((c, start)) = pm_start {
            cal.pm_hz.extend(rules::window_hz(c.reference(), start, sample(c)));
        }
        cal.pit_hz.extend(rules::window_hz(Reference::Pit, pit_start, sample(Counter::Pit)));
        windows += 1;
    }
    pit_stop();
    debug!("clock:  windows (Hz): PIT {:?}, ACPI PM {:?}", cal.pit_hz, cal.pm_hz);
    cal
}

/// Reads a counter three times, each read bracketed by the TSC, and keeps the read with the
/// narrowest bracket: an emulator descheduled by its host in the middle of one read is
/// outvoted by the others. One copy of this code for every caller (see the warm-up in
/// `calibrate`).
#[inline(never)]
fn sample(c: Counter) -> Sample {
    let mut reads = [Sample { tsc_before: 0, counter: 0, tsc_after: u64::MAX }; 3];
    for r in &mut reads {
        let tsc_before = rdtsc_ordered();
        let counter = c.read();
        let tsc_after = rdtsc_ordered();
        *r = Sample { tsc_before, counter, tsc_after };
    }
    Sample::narrowest(&reads).expect("three reads")
}

/// Polls until the counter has advanced a window's worth of ticks from `start`. False if it
/// stops counting or takes far too long.
fn wait_window(c: Counter, start: u32) -> bool {
    let reference = c.reference();
    let target = reference.ticks_in_us(rules::WINDOW_US);
    let (mut last, mut stuck) = (start, 0);
    for _ in 0..MAX_POLLS {
        let now = c.read();
        if reference.elapsed(start, now) >= target {
            return true;
        }
        if now == last {
            stuck += 1;
            if stuck > MAX_STUCK_POLLS {
                return false;
            }
        } else {
            (last, stuck) = (now, 0);
        }
        core::hint::spin_loop();
    }
    false
}

/// Starts PIT channel 2 counting down through 65536 for ever (mode 2, count 0), gate high,
/// speaker off.
fn pit_free_run() {
    // SAFETY: PIT channel 2 and port 0x61 are standard PC I/O; only the speaker gate and
    // data bits (1:0) change, and the speaker data bit stays clear.
    unsafe {
        let mut p61 = Port::<u8>::new(0x61);
        let gate = p61.read() & !0x03;
        p61.write(gate);
        Port::<u8>::new(0x43).write(0b1011_0100); // channel 2, lo/hi byte, mode 2, binary
        Port::<u8>::new(0x42).write(0);
        Port::<u8>::new(0x42).write(0);
        p61.write(gate | 1);
    }
}

fn pit_stop() {
    // SAFETY: as in `pit_free_run`: gate low, speaker off.
    unsafe {
        let mut p61 = Port::<u8>::new(0x61);
        let v = p61.read() & !0x03;
        p61.write(v);
    }
}

/// PIT channel 2's current count (counter latch command, then low and high byte).
fn pit_read() -> u32 {
    // SAFETY: latching and reading channel 2 has no effect beyond the read.
    unsafe {
        Port::<u8>::new(0x43).write(0b1000_0000);
        let lo = Port::<u8>::new(0x42).read();
        let hi = Port::<u8>::new(0x42).read();
        u16::from_le_bytes([lo, hi]) as u32
    }
}

fn pm_read(t: PmTimer) -> u32 {
    // SAFETY: the FADT names this port as the PM timer, a read-only counter.
    unsafe { Port::<u32>::new(t.port).read() }
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed).max(1)
}

/// Nanoseconds since `init`.
pub fn now_ns() -> u64 {
    let ticks = rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (ticks as u128 * 1_000_000 / tsc_khz() as u128) as u64
}
