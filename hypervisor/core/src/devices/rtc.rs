//! MC146818A-compatible CMOS real-time clock and RAM of the PC (index and NMI mask 0x70, data 0x71, IRQ 8), running on the caller's time.
//!
//! Every guest owns one [`Rtc`], created with [`Rtc::new`] from the wall-clock time the guest
//! should see and the host's monotonic time in nanoseconds. The exit handler forwards guest
//! `IN`/`OUT` on ports 0x70 and 0x71 to [`Rtc::read`] / [`Rtc::write`] with the current time.
//! After each access, and whenever [`Rtc::next_deadline`] comes due, the hypervisor drives
//! the guest's IRQ 8 input with [`Rtc::interrupt_line`]. Nothing here reads a clock or touches
//! hardware, so all of it is tested on the host.
//!
//! The rules follow the Motorola MC146818A datasheet ("MC146818A Real-Time Clock Plus RAM
//! (RTC)"; its sections "Address Map", "Time, Calendar, and Alarm Locations" with Table 3
//! "Time, Calendar, and Alarm Data Modes", "Update Cycle" with Figure "Update-Ended and
//! Periodic Interrupt Relationship", "Interrupts", "Divider Stages", "Register A" with Table 4
//! "Periodic Interrupt Rate and Square-Wave Output Frequency", "Register B", "Register C" and
//! "Register D" are cited by name below). Where it leaves room, the model does what QEMU's
//! `hw/rtc/mc146818rtc.c` does.
//!
//! # The clock runs on time
//!
//! The clock is not ticked. While it runs it is a base (the time shown at an instant) plus the
//! number of update cycles since then; update cycles happen once a second at instants fixed by
//! the divider chain's phase. [`Rtc::new`] starts that phase at its `now_ns`, so the first
//! update is exactly one second after creation, and the time read at any moment is the start
//! time plus the whole seconds elapsed. Registers are rendered from the time, in the format
//! register B selects, whenever they are read.
//!
//! The clock stops while register B's SET bit is 1 ("Register B": SET inhibits updates, the
//! guest may then initialise the time) and while register A's divider bits hold the divider
//! in reset (DV2-DV0 = 11x). It also stops for DV = 000 and 001 (4.194304 and 1.048576 MHz
//! time bases: a PC's crystal is 32.768 kHz, so only 010 keeps time; the others would run the
//! clock at the wrong rate, and the model prefers stopping it) and the test settings 011-101.
//! Stopped, the time registers are plain bytes: guest writes store what is written. When the
//! clock starts again its time is decoded from those bytes. SET does not stop the divider
//! chain, so the next update comes at the usual phase; releasing the divider from reset
//! restarts it, and "the first update cycle begins one-half second later" ("Divider Stages").
//! A time register written while the clock runs sets the clock from that instant, phase kept.
//!
//! **Invalid times.** The datasheet leaves the update of out-of-range values unspecified. The
//! model clamps each field into its range when it decodes stopped registers (seconds 0x75 BCD
//! become 59, day 31 in April becomes 30, month 0 becomes 1, a 12-hour hour 0 becomes 12;
//! BCD digits A-F count 10-15 before clamping). Only the stored bytes themselves read back
//! exactly as written, while the clock is stopped.
//!
//! **The weekday** register counts 1-7 (Sunday = 1, the PC convention) on its own: it starts
//! from the date given to `new`, advances at midnight, and keeps whatever offset from the date
//! the guest writes into it (the chip does not derive it from the date; Linux ignores it).
//!
//! **Years and the century.** The MC146818A counts years 00-99 only. PC chipsets keep the
//! century at CMOS 0x32, the index the ACPI FADT's CENTURY field conventionally names (ACPI
//! 6.5, 5.2.9 "Fixed ACPI Description Table"), and advance it with the year; so does the
//! model. The clock thus spans years 0000-9999 and wraps after 9999 (a wall-clock time
//! beyond that is taken modulo 10000 years, which the Gregorian calendar allows since 10000
//! years are 25 whole 400-year cycles, weekdays included).
//!
//! **Format changes.** Register B's DM (binary/BCD) and 24/12 bits select how the time is
//! shown. The chip does not convert stored bytes when they change (the datasheet asks the
//! guest to re-initialise the time); the model re-renders the running time in the new format,
//! and converts the stopped bytes, which is what a guest that rewrites the time anyway sees too.
//! The alarm bytes are compared as written, in the current format, as on the chip.
//!
//! **Time going backwards.** A `now_ns` smaller than one already seen is taken as that larger
//! time: the clock looks frozen until the caller catches up, and no event is counted twice.
//!
//! # UIP
//!
//! Register A bit 7 is 1 from tBUC = 244 µs before each update until the update ("Update
//! Cycle"). The chip's update itself then takes about 2 ms, during which UIP stays 1 and the
//! time registers must not be read; the model's update is instantaneous, so UIP covers only
//! the 244 µs warning. What guests rely on still holds: if UIP reads 0, no update happens for
//! at least 244 µs. UIP is 0 whenever updates are stopped (SET, divider not running).
//!
//! # Interrupts (IRQ 8)
//!
//! Register C's flags are set by time, whether or not their interrupt is enabled ("Register
//! C", "Interrupts"): UF at every update cycle, AF at every update whose new time matches the
//! three alarm bytes (an alarm byte with both top bits set, 0xC0-0xFF, matches anything), and
//! PF at every tap of the divider chain register A's RS3-RS0 select (Table 4; none for RS = 0
//! or while the divider is not running; SET does not stop it). IRQF, and the IRQ line, are
//! `PF & PIE | AF & AIE | UF & UIE`, so enabling a source whose flag is already set raises
//! the line at once. Reading register C returns the flags and IRQF and clears them all, which
//! lowers the line. While the line stays high further events change nothing a guest or the
//! PIC can see; the PC's 8259 takes IRQ 8 on the rising edge, so a guest that never reads C
//! gets one interrupt, as on real hardware.
//!
//! [`Rtc::next_deadline`] is the instant at which the line will next rise by itself (the
//! first enabled event after `now_ns`), for arming a host timer and waking a halted vCPU; it is
//! `None` while the line is already high (only a read of C, which the caller sees, can change
//! that) and when no enabled source will fire.
//!
//! # CMOS RAM
//!
//! The 113 bytes at indexes 0x0E-0x7F other than 0x32 are plain storage, zero at creation:
//! Linux reads nothing there it depends on (it writes the shutdown status byte 0x0F on its
//! warm-reset paths, and its floppy driver reads 0x10, where 0 means no drives). The values a
//! PC BIOS leaves in the clock's own registers are preset: register A 0x26 (32.768 kHz divider,
//! 1024 Hz periodic rate), register B 0x02 (24-hour mode, BCD: Linux on x86 assumes BCD,
//! `RTC_ALWAYS_BCD`, and `rtc-cmos` refuses 12-hour mode), register D 0x80 (valid RAM and
//! time), alarms 0.
//!
//! # Left out
//!
//! * DSE (register B bit 0, the 1980s US daylight-saving rule) is stored and read back but
//!   changes nothing; PCs run with it clear.
//! * SQWE and the SQW pin: stored only (not wired on a PC).
//! * The extended CMOS bank at ports 0x72/0x73 and the RTC's other alternate accesses.
//! * Reads of port 0x70 return the last byte written to it (index and NMI mask), so the
//!   NMI bit is readable by the guest too; real chipsets differ. The hypervisor reads the mask
//!   with [`Rtc::nmi_masked`]; nothing here delivers NMIs.

/// CMOS index port: bits 6-0 select the register, bit 7 masks NMI.
pub const INDEX_PORT: u16 = 0x70;
/// CMOS data port: reads and writes the register the index selects.
pub const DATA_PORT: u16 = 0x71;
/// Value read from a port the RTC does not decode.
pub const UNMAPPED: u8 = 0xff;
/// Index port bit 7: NMI disabled (the PC/AT wiring; not part of the MC146818A).
pub const INDEX_NMI_DISABLE: u8 = 0x80;
/// Index port bits 6-0: the register (128 bytes of clock registers and RAM).
pub const INDEX_MASK: u8 = 0x7f;
/// The first byte of battery-backed RAM after the clock's registers (0x00-0x0D).
pub const FIRST_RAM: u8 = 0x0e;
/// Bytes of CMOS: the 14 clock registers and 114 bytes of RAM ("Address Map").
pub const CMOS_SIZE: usize = 128;

// "Address Map": the clock registers.

/// Seconds (0-59).
pub const REG_SECONDS: u8 = 0x00;
/// Seconds alarm.
pub const REG_SECONDS_ALARM: u8 = 0x01;
/// Minutes (0-59).
pub const REG_MINUTES: u8 = 0x02;
/// Minutes alarm.
pub const REG_MINUTES_ALARM: u8 = 0x03;
/// Hours (0-23, or 1-12 with [`HOURS_PM`] in 12-hour mode).
pub const REG_HOURS: u8 = 0x04;
/// Hours alarm.
pub const REG_HOURS_ALARM: u8 = 0x05;
/// Day of the week (1-7, Sunday = 1).
pub const REG_WEEKDAY: u8 = 0x06;
/// Day of the month (1-31).
pub const REG_DAY: u8 = 0x07;
/// Month (1-12).
pub const REG_MONTH: u8 = 0x08;
/// Year (0-99).
pub const REG_YEAR: u8 = 0x09;
/// Register A: UIP, divider, rate select.
pub const REG_A: u8 = 0x0a;
/// Register B: SET, interrupt enables, formats.
pub const REG_B: u8 = 0x0b;
/// Register C: interrupt flags (read only, cleared by the read).
pub const REG_C: u8 = 0x0c;
/// Register D: valid RAM and time (read only).
pub const REG_D: u8 = 0x0d;
/// Century (19, 20, ...): PC chipset convention, named by the ACPI FADT CENTURY field.
pub const REG_CENTURY: u8 = 0x32;

// "Register A": UIP DV2 DV1 DV0 RS3 RS2 RS1 RS0.

/// Register A bit 7 (read only): an update cycle is in progress or less than 244 µs away.
pub const A_UIP: u8 = 0x80;
/// Register A bits 6-4: DV2-DV0, the divider control.
pub const A_DV_MASK: u8 = 0x70;
/// DV = 010: 32.768 kHz time base, the divider runs (the PC's setting).
pub const A_DV_32768: u8 = 0x20;
/// DV = 11x: the divider chain is held in reset (Linux's `RTC_DIV_RESET2` is 0x70).
pub const A_DV_RESET: u8 = 0x60;
/// Register A bits 3-0: RS3-RS0, the periodic interrupt rate (Table 4).
pub const A_RS_MASK: u8 = 0x0f;
/// Register A as a PC BIOS leaves it: 32.768 kHz, 1024 Hz periodic rate.
pub const A_PC_DEFAULT: u8 = A_DV_32768 + 0x06;

// "Register B": SET PIE AIE UIE SQWE DM 24/12 DSE.

/// Register B bit 7: stop updates so the time can be set. Setting it clears UIE.
pub const B_SET: u8 = 0x80;
/// Register B bit 6: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B bit 5: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B bit 4: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B bit 3: square-wave output enable (stored only).
pub const B_SQWE: u8 = 0x08;
/// Register B bit 2, DM: 1 = binary, 0 = BCD time and calendar.
pub const B_DM_BINARY: u8 = 0x04;
/// Register B bit 1: 1 = 24-hour mode, 0 = 12-hour mode.
pub const B_24H: u8 = 0x02;
/// Register B bit 0: daylight saving enable (stored only, see "Left out").
pub const B_DSE: u8 = 0x01;
/// Register B as a PC BIOS leaves it: 24-hour BCD, no interrupts.
pub const B_PC_DEFAULT: u8 = B_24H;

// "Register C": IRQF PF AF UF 0 0 0 0.

/// Register C bit 7: IRQ asserted (some flag with its enable set).
pub const C_IRQF: u8 = 0x80;
/// Register C bit 6: periodic interrupt flag.
pub const C_PF: u8 = 0x40;
/// Register C bit 5: alarm flag.
pub const C_AF: u8 = 0x20;
/// Register C bit 4: update-ended flag.
pub const C_UF: u8 = 0x10;
/// The three flags; register B's enables sit at the same bit positions.
const C_FLAGS: u8 = C_PF + C_AF + C_UF;

/// Register D bit 7: valid RAM and time (the battery is good). Always 1; bits 6-0 read 0.
pub const D_VRT: u8 = 0x80;

/// Hours register bit 7 in 12-hour mode: PM.
pub const HOURS_PM: u8 = 0x80;
/// An alarm byte with both of these bits set matches any value ("don't care").
pub const ALARM_DONT_CARE: u8 = 0xc0;

/// tBUC: UIP rises this long before each update: 8 cycles of 32.768 kHz, 244.140625 µs.
pub const UIP_LEAD_NS: u64 = 244_141;
/// After the divider leaves reset, the first update comes this much later ("Divider Stages").
pub const DIVIDER_RELEASE_DELAY_NS: u64 = 500_000_000;
/// The time base frequency on the PC.
pub const TIME_BASE_HZ: u64 = 32_768;

const NS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: u64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar (the shift of the
/// calendar algorithms below, whose years start in March).
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
/// Days from 0000-01-01 to 1970-01-01.
const DAYS_0000_TO_EPOCH: u64 = 719_528;
/// Days in 400 Gregorian years.
const DAYS_PER_400_YEARS: i64 = 146_097;
/// Seconds in 10000 Gregorian years: the span the RTC's century and year registers show.
const ERA_SECONDS: u64 = 25 * 146_097 * SECONDS_PER_DAY;
/// The last year with a second that fits a `u64` of Unix seconds (`DateTime::from_unix(u64::MAX)`
/// is in it; a test checks): years past it are out of range, and bounding them keeps the date
/// arithmetic far from overflowing an `i64`.
pub const MAX_YEAR: u64 = 584_554_051_223;

/// Whether `year` has a February 29 (Gregorian rules: every 4th year, not every 100th, but
/// every 400th).
pub fn is_leap_year(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Days in `month` (1-12) of `year`; 0 for a month outside 1-12.
pub fn days_in_month(year: u64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (negative before). Months are counted
/// from March so that February, with its leap day, comes last; 400 years are 146097 days
/// (the shape of Howard Hinnant's well-known "days_from_civil" algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400); // 0..=399
    let month_from_march = i64::from((month + 9) % 12); // March = 0 ... February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_400_YEARS + day_of_era - DAYS_0000_03_01_TO_EPOCH
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) `days` after 1970-01-01: the
/// inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + DAYS_0000_03_01_TO_EPOCH;
    let era = days.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = days.rem_euclid(DAYS_PER_400_YEARS); // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// A calendar date and time of day (UTC, no leap seconds, as the PC's RTC and Unix time count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// The full year (1970-... from Unix time; 0-9999 from the RTC).
    pub year: u64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
    /// Day of the week, 0 = Sunday ... 6 = Saturday (the RTC's register holds this + 1).
    pub weekday: u8,
}

/// The host's own RTC as read through ports 0x70/0x71: registers 0x00 (seconds), 0x02
/// (minutes), 0x04 (hours), 0x07 (day), 0x08 (month), 0x09 (year), the century byte (0x32 on
/// PCs, the ACPI FADT's CENTURY field names it; 0 if absent) and register B, whose DM bit (2)
/// says binary rather than BCD and whose 24/12 bit (1) says 24-hour ("Register B", Table 3).
/// Returns the Unix time, or `None` for values no clock shows. Without a century byte the
/// year is taken as 20xx.
pub fn host_cmos_to_unix(sec: u8, min: u8, hour: u8, day: u8, month: u8, year: u8, century: u8, reg_b: u8) -> Option<u64> {
    let binary = reg_b & 0x04 != 0;
    let h24 = reg_b & 0x02 != 0;
    let dec = |v: u8| -> Option<u8> {
        if binary {
            Some(v)
        } else if v >> 4 <= 9 && v & 0xf <= 9 {
            Some((v >> 4) * 10 + (v & 0xf))
        } else {
            None
        }
    };
    // In 12-hour mode bit 7 of the hours byte is PM; 12 AM is 0 h, 12 PM is 12 h.
    let pm = !h24 && hour & 0x80 != 0;
    let mut h = dec(hour & 0x7f)?;
    if !h24 {
        if !(1..=12).contains(&h) {
            return None;
        }
        h = (h % 12) + if pm { 12 } else { 0 };
    }
    let c = if century == 0 { 20 } else { dec(century)? as u64 };
    DateTime { year: c * 100 + dec(year)? as u64, month: dec(month)?, day: dec(day)?, hour: h, minute: dec(min)?, second: dec(sec)?, weekday: 0 }
        .to_unix()
}

impl DateTime {
    /// The date and time `unix_seconds` after 1970-01-01 00:00:00 UTC. Every `u64` works (the
    /// year is a `u64` for that reason).
    pub fn from_unix(unix_seconds: u64) -> DateTime {
        let days = unix_seconds / SECONDS_PER_DAY;
        // At most 2.2e14 (u64::MAX / 86400): the cast is exact.
        let mut dt = Self::from_days_and_time(days as i64, unix_seconds % SECONDS_PER_DAY);
        // 1970-01-01 was a Thursday.
        dt.weekday = ((days + 4) % 7) as u8;
        dt
    }

    /// Unix seconds of this date and time; `None` if a field is out of range, the date does
    /// not exist (February 29 of a common year) or it lies before 1970 or beyond `u64`.
    /// `weekday` is ignored (it follows from the date).
    pub fn to_unix(&self) -> Option<u64> {
        if self.year < 1970
            || self.year > MAX_YEAR
            || !(1..=days_in_month(self.year, self.month)).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return None;
        }
        let days = days_from_civil(
            i64::try_from(self.year).ok()?,
            u32::from(self.month),
            u32::from(self.day),
        );
        let days = u64::try_from(days).ok()?;
        days.checked_mul(SECONDS_PER_DAY)?
            .checked_add(self.seconds_of_day())
    }

    fn seconds_of_day(&self) -> u64 {
        u64::from(self.hour) * 3600 + u64::from(self.minute) * 60 + u64::from(self.second)
    }

    /// The date `days` after 1970-01-01 (non-negative) at `seconds_of_day`; weekday left 0.
    fn from_days_and_time(days: i64, seconds_of_day: u64) -> DateTime {
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year: u64::try_from(year).unwrap_or(0),
            month: month as u8,
            day: day as u8,
            hour: (seconds_of_day / 3600) as u8,
            minute: (seconds_of_day / 60 % 60) as u8,
            second: (seconds_of_day % 60) as u8,
            weekday: 0,
        }
    }
}

/// The RTC's own count: seconds since 0000-01-01 00:00:00, modulo 10000 years (below twice
/// that: every reader takes it modulo [`ERA_SECONDS`]).
fn clock_from_unix(unix_seconds: u64) -> u64 {
    unix_seconds % ERA_SECONDS + DAYS_0000_TO_EPOCH * SECONDS_PER_DAY
}

/// The date and time (year 0-9999) of an RTC count.
fn clock_to_datetime(clock: u64) -> DateTime {
    let clock = clock % ERA_SECONDS;
    let days = clock / SECONDS_PER_DAY;
    // days < 3.7e6: the conversions are exact.
    let mut dt = DateTime::from_days_and_time(
        days as i64 - DAYS_0000_TO_EPOCH as i64,
        clock % SECONDS_PER_DAY,
    );
    // 0000-01-01 was a Saturday.
    dt.weekday = ((days + 6) % 7) as u8;
    dt
}

/// The RTC count of a valid date and time with year 0-9999.
fn clock_from_fields(year: u32, month: u32, day: u32, seconds_of_day: u64) -> u64 {
    let days = days_from_civil(i64::from(year), month, day) + DAYS_0000_TO_EPOCH as i64;
    u64::try_from(days).unwrap_or(0) * SECONDS_PER_DAY + seconds_of_day
}

/// How register B says the time is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Format {
    binary: bool,
    hour24: bool,
}

impl Format {
    fn of(reg_b: u8) -> Format {
        Format {
            binary: reg_b & B_DM_BINARY != 0,
            hour24: reg_b & B_24H != 0,
        }
    }

    /// A value 0-99 as a register byte (Table 3).
    fn encode(self, value: u32) -> u8 {
        let value = (value % 100) as u8;
        if self.binary {
            value
        } else {
            // Tens in the high nibble, units in the low one: disjoint, so `+`.
            ((value / 10) << 4) + (value % 10)
        }
    }

    /// A register byte as a value; BCD digits A-F count 10-15 (the caller clamps).
    fn decode(self, byte: u8) -> u32 {
        if self.binary {
            u32::from(byte)
        } else {
            u32::from(byte >> 4) * 10 + u32::from(byte & 0xf)
        }
    }

    /// Hour 0-23 as the hours byte: 1-12 with [`HOURS_PM`] in 12-hour mode (Table 3).
    fn encode_hour(self, hour: u32) -> u8 {
        if self.hour24 {
            return self.encode(hour);
        }
        let hour12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        // PM is bit 7, above the 1-12 of either format: `+`.
        self.encode(hour12) + pm
    }

    /// The hours byte as an hour 0-23, clamped (see "Invalid times").
    fn decode_hour(self, byte: u8) -> u32 {
        if self.hour24 {
            return self.decode(byte).min(23);
        }
        let hour12 = self.decode(byte & !HOURS_PM).clamp(1, 12);
        let pm = if byte & HOURS_PM != 0 { 12 } else { 0 };
        hour12 % 12 + pm
    }

    /// What an alarm byte for a field 0..=`max` matches.
    fn alarm(self, byte: u8, max: u32) -> Match {
        if byte & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return Match::Any;
        }
        let value = self.decode(byte);
        if value <= max && self.encode(value) == byte {
            Match::Is(value)
        } else {
            Match::Never
        }
    }

    /// What the hours alarm byte matches (an hour 0-23).
    fn alarm_hour(self, byte: u8) -> Match {
        if byte & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return Match::Any;
        }
        if self.hour24 {
            return self.alarm(byte, 23);
        }
        let hour12 = self.decode(byte & !HOURS_PM);
        if (1..=12).contains(&hour12) && self.encode(hour12) == byte & !HOURS_PM {
            let pm = if byte & HOURS_PM != 0 { 12 } else { 0 };
            Match::Is(hour12 % 12 + pm)
        } else {
            Match::Never
        }
    }
}

/// What one alarm byte matches: a byte that cannot equal any time byte (not a valid value in
/// the current format) never matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Any,
    Is(u32),
    Never,
}

impl Match {
    /// The smallest matching value in `from..limit`.
    fn first_from(self, from: u32, limit: u32) -> Option<u32> {
        match self {
            Match::Any => (from < limit).then_some(from),
            Match::Is(v) => (from <= v && v < limit).then_some(v),
            Match::Never => None,
        }
    }
}

/// Seconds from time of day `from` (0..86400) to the first time of day at or after it (next
/// day included) whose hour, minute and second match: 0..86400, or `None` if nothing matches.
fn seconds_to_match(from: u32, hour: Match, minute: Match, second: Match) -> Option<u32> {
    if [hour, minute, second].contains(&Match::Never) {
        return None;
    }
    let (h0, m0, s0) = (from / 3600, from / 60 % 60, from % 60);
    let tod = |h: u32, m: u32, s: u32| h * 3600 + m * 60 + s;
    // The same hour and minute, a later second; then a later minute; then a later hour; then
    // the first match of the next day.
    let found = (|| {
        if hour.first_from(h0, h0 + 1).is_some() {
            if minute.first_from(m0, m0 + 1).is_some() {
                if let Some(s) = second.first_from(s0, 60) {
                    return Some(tod(h0, m0, s));
                }
            }
            if let Some(m) = minute.first_from(m0 + 1, 60) {
                return Some(tod(h0, m, second.first_from(0, 60)?));
            }
        }
        let h = hour.first_from(h0 + 1, 24)?;
        Some(tod(h, minute.first_from(0, 60)?, second.first_from(0, 60)?))
    })();
    let target = match found {
        Some(t) => t,
        None => {
            let first = tod(
                hour.first_from(0, 24)?,
                minute.first_from(0, 60)?,
                second.first_from(0, 60)?,
            );
            first + 86_400
        }
    };
    Some(target - from)
}

/// The time and calendar registers as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimeRegs {
    second: u8,
    minute: u8,
    hour: u8,
    weekday: u8,
    day: u8,
    month: u8,
    year: u8,
    century: u8,
}

impl TimeRegs {
    /// The registers showing RTC count `clock` with the weekday register `weekday_offset`
    /// days ahead of the date's weekday.
    fn render(clock: u64, weekday_offset: u8, format: Format) -> TimeRegs {
        let dt = clock_to_datetime(clock);
        // Years 0-9999 (the count is modulo 10000 years): the cast is exact.
        let year = dt.year as u32;
        TimeRegs {
            second: format.encode(u32::from(dt.second)),
            minute: format.encode(u32::from(dt.minute)),
            hour: format.encode_hour(u32::from(dt.hour)),
            weekday: format.encode(u32::from((dt.weekday + weekday_offset) % 7) + 1),
            day: format.encode(u32::from(dt.day)),
            month: format.encode(u32::from(dt.month)),
            // `encode` keeps the last two digits.
            year: format.encode(year),
            century: format.encode(year / 100),
        }
    }

    /// The RTC count and weekday offset these registers stand for, each field clamped into
    /// its range ("Invalid times" in the module documentation).
    fn parse(&self, format: Format) -> (u64, u8) {
        let year = format.decode(self.century).min(99) * 100 + format.decode(self.year).min(99);
        let month = format.decode(self.month).clamp(1, 12);
        let max_day = u32::from(days_in_month(u64::from(year), month as u8));
        let day = format.decode(self.day).clamp(1, max_day);
        let seconds_of_day = u64::from(format.decode_hour(self.hour)) * 3600
            + u64::from(format.decode(self.minute).min(59)) * 60
            + u64::from(format.decode(self.second).min(59));
        let clock = clock_from_fields(year, month, day, seconds_of_day);
        let weekday = format.decode(self.weekday).clamp(1, 7) - 1;
        let date_weekday = u32::from(clock_to_datetime(clock).weekday);
        // 1..=13 days; `render` takes the weekday modulo 7.
        let offset = weekday + 7 - date_weekday;
        (clock, offset as u8)
    }

    fn get(&self, index: u8) -> u8 {
        match index {
            REG_SECONDS => self.second,
            REG_MINUTES => self.minute,
            REG_HOURS => self.hour,
            REG_WEEKDAY => self.weekday,
            REG_DAY => self.day,
            REG_MONTH => self.month,
            REG_YEAR => self.year,
            _ => self.century,
        }
    }

    fn set(&mut self, index: u8, value: u8) {
        let field = match index {
            REG_SECONDS => &mut self.second,
            REG_MINUTES => &mut self.minute,
            REG_HOURS => &mut self.hour,
            REG_WEEKDAY => &mut self.weekday,
            REG_DAY => &mut self.day,
            REG_MONTH => &mut self.month,
            REG_YEAR => &mut self.year,
            _ => &mut self.century,
        };
        *field = value;
    }
}

/// Whether `index` is one of the time and calendar registers (0x32 included).
fn is_time_register(index: u8) -> bool {
    matches!(
        index,
        REG_SECONDS
            | REG_MINUTES
            | REG_HOURS
            | REG_WEEKDAY
            | REG_DAY
            | REG_MONTH
            | REG_YEAR
            | REG_CENTURY
    )
}

/// The clock: counting, or stopped with its registers as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    /// Shows `base` (an RTC count) at `base_ns`, plus one second per update since.
    Running {
        base: u64,
        base_ns: u64,
        weekday_offset: u8,
    },
    /// Updates stopped (SET, or the divider not running): the registers as written.
    Stopped(TimeRegs),
}

/// The PC's CMOS RTC. See the module documentation for the rules it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtc {
    /// The register port 0x71 reaches (index port bits 6-0).
    index: u8,
    /// Index port bit 7 as last written.
    nmi_disabled: bool,
    /// CMOS RAM; the clock registers' slots (0x00-0x0D, 0x32) are unused.
    ram: [u8; CMOS_SIZE],
    /// Register A bits 6-0 (UIP is computed).
    reg_a: u8,
    /// Register B.
    reg_b: u8,
    /// Register C's PF, AF and UF for events up to `checked_ns`, not yet read.
    flags: u8,
    /// Seconds, minutes and hours alarm bytes as written.
    alarm: [u8; 3],
    clock: Clock,
    /// Update cycles happen at the instants congruent to this modulo one second.
    phase: u64,
    /// `flags` accounts for every event up to this instant.
    checked_ns: u64,
    /// The latest `now_ns` seen: time never runs backwards for the model.
    now_seen: u64,
}

impl Rtc {
    /// An RTC showing `unix_seconds` (UTC) at host time `now_ns`, its first update one second
    /// later, with the registers a PC BIOS leaves (module documentation, "CMOS RAM").
    pub fn new(unix_seconds: u64, now_ns: u64) -> Rtc {
        Rtc {
            index: 0,
            nmi_disabled: false,
            ram: [0; CMOS_SIZE],
            reg_a: A_PC_DEFAULT,
            reg_b: B_PC_DEFAULT,
            flags: 0,
            alarm: [0; 3],
            clock: Clock::Running {
                base: clock_from_unix(unix_seconds),
                base_ns: now_ns,
                weekday_offset: 0,
            },
            phase: now_ns % NS_PER_SECOND,
            checked_ns: now_ns,
            now_seen: now_ns,
        }
    }

    /// A guest read of port 0x70 (the last byte written there) or 0x71 (the selected
    /// register) at `now_ns`; other ports read [`UNMAPPED`].
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            INDEX_PORT => {
                // The index is bits 6:0, the NMI bit 7: `+`.
                self.index
                    + if self.nmi_disabled {
                        INDEX_NMI_DISABLE
                    } else {
                        0
                    }
            }
            DATA_PORT => self.read_register(self.index, now_ns),
            _ => UNMAPPED,
        }
    }

    /// A guest write of port 0x70 (register index and NMI mask) or 0x71 (the selected
    /// register) at `now_ns`; other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            INDEX_PORT => {
                self.index = value & INDEX_MASK;
                self.nmi_disabled = value & INDEX_NMI_DISABLE != 0;
            }
            DATA_PORT => self.write_register(self.index, value, now_ns),
            _ => {}
        }
    }

    /// Whether the guest has masked NMIs (bit 7 of its last write to port 0x70).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_disabled
    }

    /// Reads CMOS register `index` (bit 7 ignored) at `now_ns`, with its side effects
    /// (reading register C clears it).
    pub fn read_register(&mut self, index: u8, now_ns: u64) -> u8 {
        let now = self.sync(now_ns);
        let index = index & INDEX_MASK;
        match index {
            _ if is_time_register(index) => self.time_registers(now).get(index),
            REG_SECONDS_ALARM => self.alarm[0],
            REG_MINUTES_ALARM => self.alarm[1],
            REG_HOURS_ALARM => self.alarm[2],
            REG_A => {
                // `write_a` keeps UIP out of reg_a: `+`.
                self.reg_a
                    + if self.update_in_progress(now) {
                        A_UIP
                    } else {
                        0
                    }
            }
            REG_B => self.reg_b,
            REG_C => {
                // "Register C": all flags are cleared by the read, and so is IRQF.
                let mut value = self.flags;
                if self.irqf(value) {
                    value |= C_IRQF;
                }
                self.flags = 0;
                value
            }
            REG_D => D_VRT,
            _ => self.ram[usize::from(index)],
        }
    }

    /// Writes CMOS register `index` (bit 7 ignored) at `now_ns`. Registers C and D and
    /// register A's UIP bit are read only.
    pub fn write_register(&mut self, index: u8, value: u8, now_ns: u64) {
        let now = self.sync(now_ns);
        let index = index & INDEX_MASK;
        match index {
            _ if is_time_register(index) => self.write_time(index, value, now),
            REG_SECONDS_ALARM => self.alarm[0] = value,
            REG_MINUTES_ALARM => self.alarm[1] = value,
            REG_HOURS_ALARM => self.alarm[2] = value,
            REG_A => self.write_a(value, now),
            REG_B => self.write_b(value, now),
            FIRST_RAM..=INDEX_MASK => self.ram[usize::from(index)] = value,
            // Registers C and D.
            _ => {}
        }
    }

    /// The level of IRQ 8 at `now_ns`: some flag of register C is set with its enable.
    pub fn interrupt_line(&self, now_ns: u64) -> bool {
        let now = now_ns.max(self.now_seen);
        self.irqf(self.flags | self.events(self.checked_ns, now))
    }

    /// The instant (ns) at which IRQ 8 will next rise by itself: `None` while it is high
    /// (the guest must read register C first) or when no enabled source will fire.
    pub fn next_deadline(&self, now_ns: u64) -> Option<u64> {
        let now = now_ns.max(self.now_seen);
        if self.interrupt_line(now) {
            return None;
        }
        let mut deadlines = [None; 3];
        if self.reg_b & B_PIE != 0 {
            deadlines[0] = self.next_periodic(now);
        }
        if self.reg_b & B_UIE != 0 && self.updating() {
            deadlines[1] = self.nth_update_after(now, 1);
        }
        if self.reg_b & B_AIE != 0 {
            deadlines[2] = self.next_alarm(now);
        }
        deadlines.into_iter().flatten().min()
    }

    /// The date and time the clock shows at `now_ns` (for the monitor and logs).
    pub fn date_time(&self, now_ns: u64) -> DateTime {
        let now = now_ns.max(self.now_seen);
        let clock = match self.clock {
            Clock::Running { .. } => self.running_clock(now),
            Clock::Stopped(regs) => regs.parse(self.format()).0,
        };
        clock_to_datetime(clock)
    }

    /// Takes `now_ns` (never earlier than a time already seen) and latches into register C
    /// every event up to it, so that a change of state never rewrites the past.
    fn sync(&mut self, now_ns: u64) -> u64 {
        let now = now_ns.max(self.now_seen);
        self.now_seen = now;
        self.flags |= self.events(self.checked_ns, now);
        self.checked_ns = now;
        now
    }

    fn format(&self) -> Format {
        Format::of(self.reg_b)
    }

    fn irqf(&self, flags: u8) -> bool {
        flags & self.reg_b & C_FLAGS != 0
    }

    /// The divider chain runs on a 32.768 kHz time base.
    fn divider_running(&self) -> bool {
        self.reg_a & A_DV_MASK == A_DV_32768
    }

    /// Update cycles happen: divider running and SET clear.
    fn updating(&self) -> bool {
        self.divider_running() && self.reg_b & B_SET == 0
    }

    /// Periodic interrupt period in 32.768 kHz cycles (Table 4), if RS selects one and the
    /// divider runs: RS 1 and 2 are 256 and 128 Hz, RS 3-15 are 2^(RS-1) cycles.
    fn periodic_cycles(&self) -> Option<u64> {
        if !self.divider_running() {
            return None;
        }
        match self.reg_a & A_RS_MASK {
            0 => None,
            rs @ 1..=2 => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    /// `t` shifted so that the divider's second boundaries fall on multiples of 1e9.
    fn shifted(&self, t: u64) -> u128 {
        u128::from(t) + u128::from(NS_PER_SECOND - self.phase)
    }

    /// A shifted instant back in host time (`None` beyond `u64::MAX`).
    fn unshifted(&self, t: u128) -> Option<u64> {
        u64::try_from(t - u128::from(NS_PER_SECOND - self.phase)).ok()
    }

    /// Update cycles (second boundaries) in `(from, to]`.
    fn updates_between(&self, from: u64, to: u64) -> u64 {
        if to <= from {
            return 0;
        }
        let second = u128::from(NS_PER_SECOND);
        let count = self.shifted(to) / second - self.shifted(from) / second;
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// The instant of the `n`-th update after `after` (n >= 1).
    fn nth_update_after(&self, after: u64, n: u64) -> Option<u64> {
        let second = u128::from(NS_PER_SECOND);
        let first = (self.shifted(after) / second + 1) * second;
        self.unshifted(first + u128::from(n.saturating_sub(1)) * second)
    }

    /// Periodic taps in `(from, to]`, if the periodic interrupt runs.
    fn periodic_between(&self, from: u64, to: u64) -> bool {
        let Some(cycles) = self.periodic_cycles() else {
            return false;
        };
        let tap = |t: u64| {
            self.shifted(t) * u128::from(TIME_BASE_HZ)
                / (u128::from(cycles) * u128::from(NS_PER_SECOND))
        };
        // `tap` never decreases, so a later tap count also means `to > from`.
        tap(to) > tap(from)
    }

    /// The first periodic tap after `after`.
    fn next_periodic(&self, after: u64) -> Option<u64> {
        let cycles = u128::from(self.periodic_cycles()?);
        let hz = u128::from(TIME_BASE_HZ);
        let ns = u128::from(NS_PER_SECOND);
        let next_tap = self.shifted(after) * hz / (cycles * ns) + 1;
        self.unshifted((next_tap * cycles * ns).div_ceil(hz))
    }

    /// The running clock's count at `now`.
    fn running_clock(&self, now: u64) -> u64 {
        match self.clock {
            // Not reduced: every reader takes it modulo ERA_SECONDS or a day (which divides
            // it). base < 2 ERA_SECONDS and there are fewer than 2^35 updates in 2^64 ns: no
            // overflow.
            Clock::Running { base, base_ns, .. } => base + self.updates_between(base_ns, now),
            Clock::Stopped(regs) => regs.parse(self.format()).0,
        }
    }

    /// The time registers as they read at `now`.
    fn time_registers(&self, now: u64) -> TimeRegs {
        match self.clock {
            Clock::Running { weekday_offset, .. } => {
                TimeRegs::render(self.running_clock(now), weekday_offset, self.format())
            }
            Clock::Stopped(regs) => regs,
        }
    }

    /// The instant of the first update after `after` at which the new time matches the
    /// alarm bytes ("Interrupts": the alarm is checked at each update).
    fn next_alarm(&self, after: u64) -> Option<u64> {
        if !matches!(self.clock, Clock::Running { .. }) {
            return None;
        }
        let format = self.format();
        let [second, minute, hour] = self.alarm;
        let next_second = (self.running_clock(after) + 1) % SECONDS_PER_DAY;
        let wait = seconds_to_match(
            next_second as u32,
            format.alarm_hour(hour),
            format.alarm(minute, 59),
            format.alarm(second, 59),
        )?;
        self.nth_update_after(after, 1 + u64::from(wait))
    }

    /// Register C flags the events in `(from, to]` set.
    fn events(&self, from: u64, to: u64) -> u8 {
        if to <= from {
            return 0;
        }
        let mut flags = 0;
        if self.periodic_between(from, to) {
            flags |= C_PF;
        }
        if matches!(self.clock, Clock::Running { .. }) {
            if self.updates_between(from, to) > 0 {
                flags |= C_UF;
            }
            if self.next_alarm(from).is_some_and(|t| t <= to) {
                flags |= C_AF;
            }
        }
        flags
    }

    /// UIP: updates run and the next one is at most tBUC away.
    fn update_in_progress(&self, now: u64) -> bool {
        let into_second = self.shifted(now) % u128::from(NS_PER_SECOND);
        self.updating() && into_second >= u128::from(NS_PER_SECOND - UIP_LEAD_NS)
    }

    /// A write to a time register: stored while stopped; while running, the clock is set
    /// from the registers as they read now with this byte changed.
    fn write_time(&mut self, index: u8, value: u8, now: u64) {
        let mut regs = self.time_registers(now);
        regs.set(index, value);
        self.clock = match self.clock {
            Clock::Stopped(_) => Clock::Stopped(regs),
            Clock::Running { .. } => self.started(regs, now),
        };
    }

    /// A running clock showing `regs` at `now`.
    fn started(&self, regs: TimeRegs, now: u64) -> Clock {
        let (base, weekday_offset) = regs.parse(self.format());
        Clock::Running {
            base,
            base_ns: now,
            weekday_offset,
        }
    }

    /// Stops or starts the clock to match SET and the divider.
    fn update_clock_state(&mut self, now: u64) {
        let running = matches!(self.clock, Clock::Running { .. });
        if running && !self.updating() {
            self.clock = Clock::Stopped(self.time_registers(now));
        } else if !running && self.updating() {
            if let Clock::Stopped(regs) = self.clock {
                self.clock = self.started(regs, now);
            }
        }
    }

    /// "Register A": UIP is read only; DV and RS are stored.
    fn write_a(&mut self, value: u8, now: u64) {
        let was_running = self.divider_running();
        self.reg_a = value & !A_UIP;
        if !was_running && self.divider_running() {
            // "Divider Stages": the first update comes half a second after the release.
            self.phase = (now % NS_PER_SECOND + DIVIDER_RELEASE_DELAY_NS) % NS_PER_SECOND;
        }
        self.update_clock_state(now);
    }

    /// "Register B": SET going to 1 also clears UIE; a format change re-renders the time.
    fn write_b(&mut self, value: u8, now: u64) {
        let value = if value & B_SET != 0 {
            value & !B_UIE
        } else {
            value
        };
        let (old, new) = (self.format(), Format::of(value));
        if let Clock::Stopped(regs) = self.clock {
            if old != new {
                let (clock, weekday_offset) = regs.parse(old);
                self.clock = Clock::Stopped(TimeRegs::render(clock, weekday_offset, new));
            }
        }
        self.reg_b = value;
        self.update_clock_state(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary host time for creation, not a multiple of a second.
    const T0: u64 = 7_123_456_789;
    const SECOND: u64 = NS_PER_SECOND;

    fn unix(year: u64, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> u64 {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            weekday: 0,
        }
        .to_unix()
        .unwrap()
    }

    fn reg(rtc: &mut Rtc, index: u8, now: u64) -> u8 {
        rtc.write(INDEX_PORT, index, now);
        rtc.read(DATA_PORT, now)
    }

    fn set_reg(rtc: &mut Rtc, index: u8, value: u8, now: u64) {
        rtc.write(INDEX_PORT, index, now);
        rtc.write(DATA_PORT, value, now);
    }

    /// Seconds, minutes, hours, weekday, day, month, year, century as read at `now`.
    fn time(rtc: &mut Rtc, now: u64) -> [u8; 8] {
        [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ]
        .map(|index| reg(rtc, index, now))
    }

    #[test]
    fn unix_epoch_and_known_dates() {
        let epoch = DateTime::from_unix(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        assert_eq!(epoch.weekday, 4, "1970-01-01 was a Thursday");
        // 2000-03-01 00:00:00 = 951868800; 2038-01-19 03:14:08 = 2^31.
        assert_eq!(unix(2000, 3, 1, 0, 0, 0), 951_868_800);
        let dt = DateTime::from_unix(1 << 31);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second),
            (2038, 1, 19, 3, 14, 8)
        );
        assert_eq!(dt.weekday, 2, "a Tuesday");
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(is_leap_year(2000), "divisible by 400");
        assert!(!is_leap_year(2100), "divisible by 100, not 400");
        assert!(!is_leap_year(1900));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(2023));
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2024, 13), 0);
        // Feb 29 exists in 2000 and 2024, not in 2100 or 2023.
        let day = |y, m, d| {
            DateTime {
                year: y,
                month: m,
                day: d,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 0,
            }
            .to_unix()
        };
        assert!(day(2000, 2, 29).is_some());
        assert!(day(2024, 2, 29).is_some());
        assert!(day(2100, 2, 29).is_none());
        assert!(day(2023, 2, 29).is_none());
        assert_eq!(
            day(2100, 3, 1).unwrap() - day(2100, 2, 28).unwrap(),
            SECONDS_PER_DAY
        );
        assert_eq!(
            day(2000, 3, 1).unwrap() - day(2000, 2, 28).unwrap(),
            2 * SECONDS_PER_DAY
        );
    }

    #[test]
    fn month_ends_roll_over() {
        for (y, m, d, next) in [
            (2023u64, 1u8, 31u8, (2, 1)),
            (2023, 2, 28, (3, 1)),
            (2024, 2, 29, (3, 1)),
            (2024, 4, 30, (5, 1)),
            (2100, 2, 28, (3, 1)),
        ] {
            let t = unix(y, m, d, 23, 59, 59) + 1;
            let dt = DateTime::from_unix(t);
            assert_eq!(
                (dt.month, dt.day, dt.hour),
                (next.0, next.1, 0),
                "{y}-{m}-{d}"
            );
        }
        let dt = DateTime::from_unix(unix(1999, 12, 31, 23, 59, 59) + 1);
        assert_eq!((dt.year, dt.month, dt.day), (2000, 1, 1));
    }

    #[test]
    fn calendar_conversion_round_trips_and_rejects_bad_fields() {
        // Every 7919th day (a prime) over 1970-2400, at a varying time of day.
        let mut days = 0u64;
        while days < 157_000 {
            let t = days * SECONDS_PER_DAY + (days * 7_777) % SECONDS_PER_DAY;
            let dt = DateTime::from_unix(t);
            assert_eq!(dt.to_unix(), Some(t));
            assert_eq!(u64::from(dt.weekday), (days + 4) % 7);
            days += 7919;
        }
        let good = DateTime::from_unix(0);
        for bad in [
            DateTime { month: 0, ..good },
            DateTime { month: 13, ..good },
            DateTime { day: 0, ..good },
            DateTime { day: 32, ..good },
            DateTime { hour: 24, ..good },
            DateTime { minute: 60, ..good },
            DateTime { second: 60, ..good },
            DateTime { year: 1969, ..good },
            DateTime {
                year: u64::MAX,
                ..good
            },
        ] {
            assert_eq!(bad.to_unix(), None, "{bad:?}");
        }
        // The far end of u64 converts without overflow.
        let end = DateTime::from_unix(u64::MAX);
        assert!(end.year > 500_000_000_000);
        assert_eq!(end.to_unix(), Some(u64::MAX));
    }

    #[test]
    fn power_on_registers_are_what_a_pc_bios_leaves() {
        // Module docs, "CMOS RAM": A 0x26, B 0x02, C 0, D 0x80, RAM and alarms 0.
        let mut rtc = Rtc::new(0, T0);
        assert_eq!(reg(&mut rtc, REG_A, T0), 0x26);
        assert_eq!(reg(&mut rtc, REG_B, T0), 0x02);
        assert_eq!(reg(&mut rtc, REG_C, T0), 0x00);
        assert_eq!(reg(&mut rtc, REG_D, T0), D_VRT);
        for index in [
            REG_SECONDS_ALARM,
            REG_MINUTES_ALARM,
            REG_HOURS_ALARM,
            0x0e,
            0x0f,
            0x10,
            0x7f,
        ] {
            assert_eq!(reg(&mut rtc, index, T0), 0, "index {index:#x}");
        }
        assert!(!rtc.interrupt_line(T0));
        assert_eq!(rtc.next_deadline(T0), None);
    }

    #[test]
    fn time_reads_in_bcd_24_hour_mode() {
        // Table 3: BCD by default; 2024-02-29 13:45:56 was a Thursday (weekday 5).
        let mut rtc = Rtc::new(unix(2024, 2, 29, 13, 45, 56), T0);
        assert_eq!(
            time(&mut rtc, T0),
            [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn time_reads_in_binary_mode() {
        // Table 3: DM = 1 gives binary values.
        let mut rtc = Rtc::new(unix(2024, 2, 29, 13, 45, 56), T0);
        set_reg(&mut rtc, REG_B, B_24H | B_DM_BINARY, T0);
        assert_eq!(time(&mut rtc, T0), [56, 45, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode_uses_1_to_12_and_the_pm_bit() {
        // Table 3: 12-hour mode, hours 1-12 with bit 7 set for PM, BCD or binary.
        for (hour, bcd, binary) in [
            (0u8, 0x12u8, 12u8),
            (1, 0x01, 1),
            (11, 0x11, 11),
            (12, 0x92, 0x8c),
            (13, 0x81, 0x81),
            (23, 0x91, 0x8b),
        ] {
            let mut rtc = Rtc::new(unix(2024, 6, 1, hour, 0, 0), T0);
            set_reg(&mut rtc, REG_B, 0, T0);
            assert_eq!(reg(&mut rtc, REG_HOURS, T0), bcd, "{hour}h BCD");
            set_reg(&mut rtc, REG_B, B_DM_BINARY, T0);
            assert_eq!(reg(&mut rtc, REG_HOURS, T0), binary, "{hour}h binary");
        }
    }

    #[test]
    fn time_advances_one_second_per_update_across_every_boundary() {
        // "Update Cycle": once a second the time advances, carrying into minutes, hours,
        // weekday, day, month, year and (at the PC's 0x32) century.
        let mut rtc = Rtc::new(unix(2099, 12, 31, 23, 59, 58), T0);
        assert_eq!(
            time(&mut rtc, T0 + SECOND - 1),
            [0x58, 0x59, 0x23, 0x05, 0x31, 0x12, 0x99, 0x20]
        );
        assert_eq!(
            time(&mut rtc, T0 + SECOND),
            [0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x99, 0x20]
        );
        assert_eq!(
            time(&mut rtc, T0 + 2 * SECOND),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21],
            "Friday 2100-01-01"
        );
        // Months of different lengths and 2100's February of 28 days.
        let start = unix(2100, 1, 31, 12, 0, 0);
        let mut rtc = Rtc::new(start, T0);
        let feb_1 = T0 + 12 * 3600 * SECOND;
        assert_eq!(reg(&mut rtc, REG_MONTH, feb_1), 0x02);
        assert_eq!(reg(&mut rtc, REG_DAY, feb_1), 0x01);
        let mar_1 = feb_1 + 28 * 86_400 * SECOND;
        assert_eq!(reg(&mut rtc, REG_DAY, mar_1 - 1), 0x28, "Feb 28 until then");
        assert_eq!(reg(&mut rtc, REG_MONTH, mar_1), 0x03);
        assert_eq!(reg(&mut rtc, REG_DAY, mar_1), 0x01);
        // A minute and an hour.
        let mut rtc = Rtc::new(unix(2023, 5, 5, 9, 59, 59), T0);
        assert_eq!(reg(&mut rtc, REG_MINUTES, T0 + SECOND), 0x00);
        assert_eq!(reg(&mut rtc, REG_HOURS, T0 + SECOND), 0x10);
    }

    #[test]
    fn set_freezes_the_clock_and_the_written_time_runs_from_its_release() {
        // "Register B": SET = 1 stops updates and the guest writes the time; SET = 0 resumes
        // updates, at the divider's usual phase (SET does not reset the divider).
        let mut rtc = Rtc::new(unix(2024, 1, 1, 0, 0, 0), T0);
        let t1 = T0 + 10 * SECOND + 300_000_000;
        set_reg(&mut rtc, REG_B, B_SET | B_24H, t1);
        assert_eq!(
            reg(&mut rtc, REG_SECONDS, t1 + 5 * SECOND),
            0x10,
            "frozen at :10"
        );
        for (index, value) in [
            (REG_SECONDS, 0x30),
            (REG_MINUTES, 0x15),
            (REG_HOURS, 0x08),
            (REG_DAY, 0x04),
            (REG_MONTH, 0x07),
            (REG_YEAR, 0x26),
        ] {
            set_reg(&mut rtc, index, value, t1 + 6 * SECOND);
        }
        assert_eq!(reg(&mut rtc, REG_SECONDS, t1 + 9 * SECOND), 0x30);
        let t2 = t1 + 9 * SECOND;
        set_reg(&mut rtc, REG_B, B_24H, t2);
        // T0 + k seconds are the update instants; t2 = T0 + 19.3 s, next update at T0 + 20 s.
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 20 * SECOND - 1), 0x30);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 20 * SECOND), 0x31);
        let dt = rtc.date_time(T0 + 20 * SECOND);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second),
            (2026, 7, 4, 8, 15, 31)
        );
    }

    #[test]
    fn setting_set_clears_uie() {
        // "Register B": UIE is cleared when SET goes to 1.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_UIE, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_UIE | B_SET, T0);
        assert_eq!(reg(&mut rtc, REG_B, T0), B_24H | B_SET);
    }

    #[test]
    fn a_time_register_written_while_running_sets_the_clock_and_keeps_the_phase() {
        let mut rtc = Rtc::new(unix(2024, 1, 1, 0, 0, 0), T0);
        let t = T0 + 3 * SECOND + 700_000_000;
        set_reg(&mut rtc, REG_MINUTES, 0x42, t);
        assert_eq!(reg(&mut rtc, REG_MINUTES, t), 0x42);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 4 * SECOND - 1), 0x03);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 4 * SECOND), 0x04);
    }

    #[test]
    fn uip_is_set_for_the_244_us_before_each_update() {
        // "Update Cycle": UIP goes to 1 tBUC = 244 us before the update.
        let mut rtc = Rtc::new(0, T0);
        let update = T0 + 5 * SECOND;
        assert_eq!(reg(&mut rtc, REG_A, update - UIP_LEAD_NS - 1) & A_UIP, 0);
        assert_eq!(reg(&mut rtc, REG_A, update - UIP_LEAD_NS) & A_UIP, A_UIP);
        assert_eq!(reg(&mut rtc, REG_A, update - 1) & A_UIP, A_UIP);
        assert_eq!(reg(&mut rtc, REG_SECONDS, update - 1), 0x04);
        assert_eq!(reg(&mut rtc, REG_A, update) & A_UIP, 0);
        assert_eq!(reg(&mut rtc, REG_SECONDS, update), 0x05);
        // SET stops updates: no UIP; nor with the divider in reset.
        let window = T0 + 6 * SECOND - 100_000;
        set_reg(&mut rtc, REG_B, B_SET | B_24H, window);
        assert_eq!(reg(&mut rtc, REG_A, window), A_PC_DEFAULT);
        set_reg(&mut rtc, REG_B, B_24H, window);
        assert_eq!(reg(&mut rtc, REG_A, window) & A_UIP, A_UIP);
        set_reg(&mut rtc, REG_A, A_DV_RESET | 0x06, window);
        assert_eq!(
            reg(&mut rtc, REG_A, window),
            A_DV_RESET | 0x06,
            "UIP is read only"
        );
        set_reg(&mut rtc, REG_A, 0xff, window);
        assert_eq!(reg(&mut rtc, REG_A, window), 0x7f);
    }

    #[test]
    fn divider_reset_stops_the_clock_and_the_first_update_is_half_a_second_after_release() {
        // "Divider Stages": DV = 11x holds the divider in reset; after the release to 010 the
        // first update comes 500 ms later.
        let mut rtc = Rtc::new(unix(2024, 1, 1, 0, 0, 0), T0);
        let t1 = T0 + 2 * SECOND + 100;
        set_reg(&mut rtc, REG_A, A_DV_RESET | 0x06, t1);
        assert_eq!(reg(&mut rtc, REG_SECONDS, t1 + 10 * SECOND), 0x02);
        let t2 = t1 + 10 * SECOND + 123_456;
        set_reg(&mut rtc, REG_A, A_PC_DEFAULT, t2);
        assert_eq!(reg(&mut rtc, REG_SECONDS, t2 + SECOND / 2 - 1), 0x02);
        assert_eq!(reg(&mut rtc, REG_SECONDS, t2 + SECOND / 2), 0x03);
        assert_eq!(reg(&mut rtc, REG_SECONDS, t2 + 3 * SECOND / 2), 0x04);
        // Time bases other than 32.768 kHz stop it too (module docs).
        set_reg(&mut rtc, REG_A, 0x06, t2 + 2 * SECOND);
        assert_eq!(reg(&mut rtc, REG_SECONDS, t2 + 9 * SECOND), 0x04);
    }

    #[test]
    fn linux_set_time_sequence() {
        // drivers/rtc/rtc-mc146818-lib.c mc146818_set_time(): SET, divider reset
        // (RTC_DIV_RESET2 = 0x70), write the registers, restore B, restore A.
        let mut rtc = Rtc::new(unix(2020, 1, 1, 0, 0, 0), T0);
        let t = T0 + 123 * SECOND / 10;
        let control = reg(&mut rtc, REG_B, t);
        set_reg(&mut rtc, REG_B, control | B_SET, t);
        let freq_select = reg(&mut rtc, REG_A, t);
        set_reg(&mut rtc, REG_A, freq_select | 0x70, t);
        for (index, value) in [
            (REG_YEAR, 0x25),
            (REG_MONTH, 0x12),
            (REG_DAY, 0x24),
            (REG_HOURS, 0x18),
            (REG_MINUTES, 0x30),
            (REG_SECONDS, 0x00),
        ] {
            set_reg(&mut rtc, index, value, t + 1000);
        }
        set_reg(&mut rtc, REG_B, control, t + 2000);
        let release = t + 3000;
        set_reg(&mut rtc, REG_A, freq_select, release);
        let dt = rtc.date_time(release);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second),
            (2025, 12, 24, 18, 30, 0)
        );
        assert_eq!(dt.weekday, 3, "2025-12-24 is a Wednesday");
        assert_eq!(reg(&mut rtc, REG_SECONDS, release + SECOND / 2), 0x01);
    }

    #[test]
    fn register_c_flags_are_set_regardless_of_enables_and_cleared_by_reading() {
        // "Register C": PF, AF and UF are set independently of the enables; IRQF only with
        // an enable; "all flag bits are cleared after register C is read".
        let mut rtc = Rtc::new(0, T0);
        // Alarm 0xC0 everywhere: every update. Periodic at 1024 Hz is on by default.
        for index in [REG_HOURS_ALARM, REG_MINUTES_ALARM, REG_SECONDS_ALARM] {
            set_reg(&mut rtc, index, ALARM_DONT_CARE, T0);
        }
        let t = T0 + 2 * SECOND + 1;
        assert!(!rtc.interrupt_line(t));
        assert_eq!(reg(&mut rtc, REG_C, t), C_PF | C_AF | C_UF);
        assert_eq!(reg(&mut rtc, REG_C, t), 0, "read clears");
        // Enabling a source whose flag is already set raises IRQ at once.
        let t2 = t + SECOND;
        set_reg(&mut rtc, REG_B, B_24H | B_UIE, t2);
        assert!(rtc.interrupt_line(t2));
        assert_eq!(reg(&mut rtc, REG_C, t2), C_IRQF | C_PF | C_AF | C_UF);
        assert!(!rtc.interrupt_line(t2));
        // Writes to C and D change nothing.
        set_reg(&mut rtc, REG_C, 0xff, t2);
        set_reg(&mut rtc, REG_D, 0x00, t2);
        assert_eq!(reg(&mut rtc, REG_C, t2), 0);
        assert_eq!(reg(&mut rtc, REG_D, t2), D_VRT);
    }

    #[test]
    fn update_ended_interrupt_every_second_with_deadlines() {
        // "Interrupts": UF at the end of each update cycle; IRQ with UIE.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_UIE, T0);
        let mut now = T0;
        for k in 1..=5u64 {
            let deadline = rtc.next_deadline(now).unwrap();
            assert_eq!(deadline, T0 + k * SECOND);
            assert!(!rtc.interrupt_line(deadline - 1));
            assert!(rtc.interrupt_line(deadline));
            assert_eq!(rtc.next_deadline(deadline), None, "line high: nothing new");
            assert_eq!(
                reg(&mut rtc, REG_C, deadline) & (C_IRQF | C_UF),
                C_IRQF | C_UF
            );
            now = deadline;
        }
    }

    #[test]
    fn periodic_interrupt_rates_follow_table_4() {
        // Table 4 for a 32.768 kHz time base: RS 1 = 3.90625 ms, 2 = 7.8125 ms, 3 = 122.070
        // us, ..., 15 = 500 ms.
        let periods_ns: [(u8, u64, u64); 6] = [
            (1, 3_906_250, 1),
            (2, 7_812_500, 1),
            (3, 1_000_000_000, 8192),
            (6, 1_000_000_000, 1024),
            (13, 125_000_000, 1),
            (15, 500_000_000, 1),
        ];
        for (rs, num, den) in periods_ns {
            let mut rtc = Rtc::new(0, T0);
            set_reg(&mut rtc, REG_A, A_DV_32768 | rs, T0);
            set_reg(&mut rtc, REG_B, B_24H | B_PIE, T0);
            let mut now = T0;
            for k in 1..=4u64 {
                let deadline = rtc.next_deadline(now).unwrap();
                // Tap k is at T0 + ceil(k * period).
                assert_eq!(deadline, T0 + (k * num).div_ceil(den), "RS {rs}, tap {k}");
                assert_eq!(reg(&mut rtc, REG_C, deadline) & C_PF, C_PF);
                now = deadline;
            }
        }
        // RS = 0: none.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_A, A_DV_32768, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_PIE, T0);
        assert_eq!(rtc.next_deadline(T0), None);
        assert_eq!(reg(&mut rtc, REG_C, T0 + 10 * SECOND) & C_PF, 0);
    }

    #[test]
    fn periodic_interrupt_continues_during_set_but_not_in_divider_reset() {
        // SET stops updates, not the divider chain ("Register B"); DV = 11x stops both.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_PIE | B_SET, T0);
        let deadline = rtc.next_deadline(T0).unwrap();
        assert_eq!(deadline, T0 + 976_563);
        assert_eq!(
            reg(&mut rtc, REG_C, T0 + 3 * SECOND),
            C_IRQF | C_PF,
            "no UF or AF under SET"
        );
        set_reg(&mut rtc, REG_A, A_DV_RESET | 0x06, T0 + 3 * SECOND);
        assert_eq!(rtc.next_deadline(T0 + 3 * SECOND), None);
        assert_eq!(reg(&mut rtc, REG_C, T0 + 5 * SECOND), 0);
    }

    #[test]
    fn alarm_fires_when_the_time_matches() {
        // "Interrupts": AF is set at the update at which the time equals the alarm bytes.
        let mut rtc = Rtc::new(unix(2024, 3, 10, 6, 59, 50), T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x07, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x05, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        let fire = T0 + 15 * SECOND;
        assert_eq!(rtc.next_deadline(T0), Some(fire));
        assert!(!rtc.interrupt_line(fire - 1));
        assert!(rtc.interrupt_line(fire));
        assert_eq!(reg(&mut rtc, REG_C, fire) & (C_IRQF | C_AF), C_IRQF | C_AF);
        // The next match is the same time tomorrow.
        assert_eq!(rtc.next_deadline(fire), Some(fire + 86_400 * SECOND));
    }

    #[test]
    fn alarm_dont_care_bytes_match_any_value() {
        // "Interrupts": an alarm byte 0xC0-0xFF is "don't care": seconds only = once a
        // minute; hours don't care = once an hour; all three = every second.
        let mut rtc = Rtc::new(unix(2024, 3, 10, 6, 59, 50), T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0xc0, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0xff, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x30, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        assert_eq!(rtc.next_deadline(T0), Some(T0 + 40 * SECOND), "07:00:30");
        reg(&mut rtc, REG_C, T0 + 40 * SECOND);
        assert_eq!(rtc.next_deadline(T0 + 40 * SECOND), Some(T0 + 100 * SECOND));
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0x15, T0 + 40 * SECOND);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0 + 40 * SECOND);
        // 07:15:00 is 910 s after 06:59:50.
        assert_eq!(rtc.next_deadline(T0 + 40 * SECOND), Some(T0 + 910 * SECOND));
        for index in [REG_HOURS_ALARM, REG_MINUTES_ALARM, REG_SECONDS_ALARM] {
            set_reg(&mut rtc, index, 0xc3, T0 + 41 * SECOND);
        }
        assert_eq!(rtc.next_deadline(T0 + 41 * SECOND), Some(T0 + 42 * SECOND));
    }

    #[test]
    fn alarm_search_covers_wraps_and_impossible_bytes() {
        // Pure search: the next match strictly follows the rules, across hour and day ends.
        let any = Match::Any;
        assert_eq!(seconds_to_match(0, any, any, any), Some(0));
        assert_eq!(
            seconds_to_match(59, any, Match::Is(0), Match::Is(0)),
            Some(3541)
        );
        assert_eq!(
            seconds_to_match(86_399, Match::Is(0), Match::Is(0), Match::Is(0)),
            Some(1)
        );
        assert_eq!(
            seconds_to_match(3600, Match::Is(0), any, any),
            Some(86_400 - 3600)
        );
        assert_eq!(
            seconds_to_match(3599, Match::Is(0), any, Match::Is(59)),
            Some(0)
        );
        assert_eq!(seconds_to_match(10, any, any, Match::Never), None);
        // Exhaustive check against brute force for a few patterns.
        let patterns = [
            (Match::Is(23), any, Match::Is(59)),
            (any, Match::Is(30), any),
            (Match::Is(5), Match::Is(5), Match::Is(5)),
            (any, any, Match::Is(0)),
        ];
        for (h, m, s) in patterns {
            let matches = |t: u32| {
                let ok = |sel: Match, v: u32| sel == Match::Any || sel == Match::Is(v);
                ok(h, t / 3600) && ok(m, t / 60 % 60) && ok(s, t % 60)
            };
            for from in (0..86_400).step_by(4999) {
                let brute = (0..86_400).find(|d| matches((from + d) % 86_400));
                assert_eq!(seconds_to_match(from, h, m, s), brute, "from {from}");
            }
        }
    }

    #[test]
    fn an_alarm_byte_no_time_can_show_never_fires() {
        // BCD 0x5A or 75 seconds cannot equal a time byte: no AF, no deadline.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x5a, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        assert_eq!(rtc.next_deadline(T0), None);
        assert_eq!(reg(&mut rtc, REG_C, T0 + 200 * SECOND) & C_AF, 0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x24, T0 + 200 * SECOND);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0 + 200 * SECOND);
        assert_eq!(rtc.next_deadline(T0 + 200 * SECOND), None, "hour 24");
    }

    #[test]
    fn alarm_in_12_hour_mode_compares_the_pm_bit() {
        // Table 3: in 12-hour mode the alarm hours byte has the same form as the hours.
        let mut rtc = Rtc::new(unix(2024, 3, 10, 11, 59, 59), T0);
        set_reg(&mut rtc, REG_B, B_AIE, T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x92, T0); // 12 PM
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0);
        assert_eq!(rtc.next_deadline(T0), Some(T0 + SECOND));
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x12, T0); // 12 AM: midnight
        assert_eq!(rtc.next_deadline(T0), Some(T0 + (12 * 3600 + 1) * SECOND));
    }

    #[test]
    fn index_register_keeps_the_nmi_bit_readable_and_out_of_the_index() {
        // PC/AT: port 0x70 bit 7 masks NMI; bits 6-0 are the index.
        let mut rtc = Rtc::new(0, T0);
        rtc.write(INDEX_PORT, INDEX_NMI_DISABLE | 0x20, T0);
        assert!(rtc.nmi_masked());
        assert_eq!(rtc.read(INDEX_PORT, T0), 0xa0);
        rtc.write(DATA_PORT, 0x5a, T0);
        rtc.write(INDEX_PORT, 0x20, T0);
        assert!(!rtc.nmi_masked());
        assert_eq!(rtc.read(DATA_PORT, T0), 0x5a, "the same register 0x20");
        rtc.write(INDEX_PORT, INDEX_NMI_DISABLE | REG_D, T0);
        assert_eq!(rtc.read(DATA_PORT, T0), D_VRT);
        assert_eq!(rtc.read(0x72, T0), UNMAPPED);
        rtc.write(0x72, 0x00, T0);
        assert!(rtc.nmi_masked());
    }

    #[test]
    fn cmos_ram_is_plain_storage() {
        // "Address Map": 0x0E-0x3F are user RAM (the PC extends it to 0x7F); 0x32 is the clock.
        let mut rtc = Rtc::new(0, T0);
        for index in (0x0e..=0x7f).filter(|&i| i != REG_CENTURY) {
            set_reg(&mut rtc, index, index ^ 0xa5, T0);
        }
        for index in (0x0e..=0x7f).filter(|&i| i != REG_CENTURY) {
            assert_eq!(reg(&mut rtc, index, T0 + SECOND), index ^ 0xa5);
        }
        assert_eq!(reg(&mut rtc, REG_CENTURY, T0), 0x19, "1970's century");
    }

    #[test]
    fn century_register_is_part_of_the_clock() {
        // ACPI FADT CENTURY: the guest can set the century; the year carries into it.
        let mut rtc = Rtc::new(unix(2099, 12, 31, 23, 59, 59), T0);
        assert_eq!(reg(&mut rtc, REG_CENTURY, T0), 0x20);
        assert_eq!(reg(&mut rtc, REG_CENTURY, T0 + SECOND), 0x21);
        set_reg(&mut rtc, REG_B, B_SET | B_24H, T0 + SECOND);
        set_reg(&mut rtc, REG_CENTURY, 0x19, T0 + SECOND);
        set_reg(&mut rtc, REG_YEAR, 0x99, T0 + SECOND);
        set_reg(&mut rtc, REG_B, B_24H, T0 + SECOND);
        assert_eq!(rtc.date_time(T0 + SECOND).year, 1999);
        set_reg(&mut rtc, REG_B, B_24H | B_DM_BINARY, T0 + SECOND);
        assert_eq!(reg(&mut rtc, REG_CENTURY, T0 + SECOND), 19);
    }

    #[test]
    fn format_changes_rerender_the_time_running_or_stopped() {
        let mut rtc = Rtc::new(unix(2024, 3, 10, 18, 7, 9), T0);
        set_reg(&mut rtc, REG_B, B_DM_BINARY, T0);
        assert_eq!(reg(&mut rtc, REG_HOURS, T0), 0x86, "6 PM, binary");
        set_reg(&mut rtc, REG_B, B_SET | B_DM_BINARY, T0);
        set_reg(&mut rtc, REG_B, B_SET | B_24H, T0);
        assert_eq!(reg(&mut rtc, REG_HOURS, T0), 0x18);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0), 0x09);
        set_reg(&mut rtc, REG_B, B_24H, T0);
        assert_eq!(rtc.date_time(T0).hour, 18);
    }

    #[test]
    fn invalid_values_written_under_set_read_back_and_are_clamped_when_the_clock_runs() {
        // Module docs, "Invalid times".
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_B, B_SET | B_24H, T0);
        for (index, value) in [
            (REG_SECONDS, 0x7f),
            (REG_MINUTES, 0x60),
            (REG_HOURS, 0x99),
            (REG_DAY, 0x31),
            (REG_MONTH, 0x04),
            (REG_YEAR, 0xab),
            (REG_CENTURY, 0x20),
            (REG_WEEKDAY, 0x00),
        ] {
            set_reg(&mut rtc, index, value, T0);
            assert_eq!(reg(&mut rtc, index, T0), value, "stored as written");
        }
        set_reg(&mut rtc, REG_B, B_24H, T0);
        let dt = rtc.date_time(T0);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second),
            (2099, 4, 30, 23, 59, 59)
        );
        assert_eq!(
            reg(&mut rtc, REG_WEEKDAY, T0),
            0x01,
            "weekday 0 clamped to Sunday"
        );
    }

    #[test]
    fn the_weekday_register_keeps_the_guests_offset_and_advances_at_midnight() {
        let mut rtc = Rtc::new(unix(2024, 3, 9, 23, 59, 59), T0); // a Saturday
        assert_eq!(reg(&mut rtc, REG_WEEKDAY, T0), 0x07);
        assert_eq!(reg(&mut rtc, REG_WEEKDAY, T0 + SECOND), 0x01, "Sunday");
        set_reg(&mut rtc, REG_WEEKDAY, 0x04, T0 + SECOND);
        assert_eq!(reg(&mut rtc, REG_WEEKDAY, T0 + 86_401 * SECOND), 0x05);
    }

    #[test]
    fn linux_mc146818_get_time_waits_out_uip_and_reads_a_consistent_time() {
        // drivers/rtc/rtc-mc146818-lib.c mc146818_avoid_UIP() + mc146818_get_time(): read
        // seconds, retry while A.UIP is set, re-read seconds, read the rest and B, check UIP
        // and seconds again. Each port access is a VM exit: ~2 us apart here. Start inside the
        // UIP window.
        let mut rtc = Rtc::new(unix(2024, 12, 31, 23, 59, 59), T0);
        let mut now = T0 + SECOND - 200_000;
        fn step(now: &mut u64) -> u64 {
            *now += 2_000;
            *now
        }
        let mut attempts = 0;
        let read = loop {
            attempts += 1;
            assert!(attempts <= 10, "mc146818_avoid_UIP gives up after 10 tries");
            let seconds = reg(&mut rtc, REG_SECONDS, step(&mut now));
            if reg(&mut rtc, REG_A, step(&mut now)) & A_UIP != 0 {
                now += 1_000_000; // mdelay(1)
                continue;
            }
            if seconds != reg(&mut rtc, REG_SECONDS, step(&mut now)) {
                continue;
            }
            let mut values = [seconds, 0, 0, 0, 0, 0, 0];
            for (slot, index) in values[1..].iter_mut().zip([
                REG_MINUTES,
                REG_HOURS,
                REG_DAY,
                REG_MONTH,
                REG_YEAR,
                REG_CENTURY,
            ]) {
                *slot = reg(&mut rtc, index, step(&mut now));
            }
            let control = reg(&mut rtc, REG_B, step(&mut now));
            if reg(&mut rtc, REG_A, step(&mut now)) & A_UIP != 0 {
                continue;
            }
            if seconds != reg(&mut rtc, REG_SECONDS, step(&mut now)) {
                continue;
            }
            assert_eq!(control & B_DM_BINARY, 0, "BCD, as x86 Linux assumes");
            break values;
        };
        assert_eq!(attempts, 2, "one wait for the update");
        assert_eq!(read, [0x00, 0x00, 0x00, 0x01, 0x01, 0x25, 0x20]);
    }

    #[test]
    fn time_going_backwards_is_taken_as_the_latest_time_seen() {
        let mut rtc = Rtc::new(0, T0);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 5 * SECOND), 0x05);
        assert_eq!(
            reg(&mut rtc, REG_SECONDS, T0),
            0x05,
            "does not run backwards"
        );
        assert_eq!(reg(&mut rtc, REG_C, 0), C_PF | C_UF);
        assert_eq!(
            reg(&mut rtc, REG_C, T0 + SECOND),
            0,
            "no event counted twice"
        );
        set_reg(&mut rtc, REG_B, B_24H | B_UIE, 0);
        assert_eq!(rtc.next_deadline(0), Some(T0 + 6 * SECOND));
    }

    #[test]
    fn extreme_times_and_any_register_access_are_safe() {
        // Creation at the end of time, then every register written with every kind of byte,
        // at times that jump around. No panic; deadlines lie in the future or are None.
        let mut rtc = Rtc::new(u64::MAX, u64::MAX - 3 * SECOND);
        assert_eq!(rtc.next_deadline(u64::MAX), None);
        for index in 0..=0x7f {
            reg(&mut rtc, index, u64::MAX);
        }
        let mut rtc = Rtc::new(u64::MAX, 0);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut now = 0u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = state >> 16;
            now = match r % 16 {
                0 => now.wrapping_sub(r % SECOND),
                1 => now.wrapping_add(r),
                _ => now.wrapping_add((r >> 8) % (3 * SECOND)),
            };
            let index = (r >> 20) as u8 % 0x40;
            let value = (r >> 28) as u8;
            match (r >> 36) % 4 {
                0 => set_reg(&mut rtc, index, value, now),
                1 => {
                    reg(&mut rtc, index, now);
                }
                2 => {
                    rtc.write((r >> 40) as u16, value, now);
                    rtc.read((r >> 40) as u16, now);
                }
                _ => {
                    rtc.interrupt_line(now);
                    rtc.date_time(now);
                    if let Some(deadline) = rtc.next_deadline(now) {
                        assert!(deadline > now.max(rtc.now_seen));
                    }
                }
            }
        }
    }

    #[test]
    fn the_hosts_cmos_time_decodes_in_every_data_mode() {
        // 2026-12-02 16:09:38 UTC is Unix 1796227778.
        let unix = DateTime { year: 2026, month: 12, day: 2, hour: 16, minute: 9, second: 38, weekday: 0 }.to_unix().unwrap();
        // BCD, 24-hour (register B = 0x02), century byte 0x20.
        assert_eq!(host_cmos_to_unix(0x38, 0x09, 0x16, 0x02, 0x12, 0x26, 0x20, 0x02), Some(unix));
        // Binary, 24-hour, no century byte.
        assert_eq!(host_cmos_to_unix(38, 9, 16, 2, 12, 26, 0, 0x06), Some(unix));
        // BCD, 12-hour: 4 PM is 0x84; 12 AM is 0x12 = hour 0.
        assert_eq!(host_cmos_to_unix(0x38, 0x09, 0x84, 0x02, 0x12, 0x26, 0x20, 0x00), Some(unix));
        assert_eq!(host_cmos_to_unix(0, 0, 0x12, 0x02, 0x12, 0x26, 0x20, 0x00), Some(unix - 16 * 3600 - 9 * 60 - 38));
        // Not BCD, or no such date: refused.
        assert_eq!(host_cmos_to_unix(0x3a, 0, 0, 1, 1, 0x26, 0x20, 0x02), None);
        assert_eq!(host_cmos_to_unix(0, 0, 0, 0x30, 0x02, 0x26, 0x20, 0x02), None);
        assert_eq!(host_cmos_to_unix(0, 0, 0x13, 1, 1, 0x26, 0x20, 0x00), None, "hour 13 in 12-hour mode");
    }

    #[test]
    fn the_last_day_of_a_400_year_era_is_a_leap_day() {
        // Eras run from March 1 of a year divisible by 400: the last day of one is February
        // 29 of the next such year (2000 is a leap year: divisible by 400). 2000-02-29 is
        // 10957 (2000-01-01) + 31 + 28 days after 1970-01-01.
        assert_eq!(days_from_civil(2000, 2, 29), 11016);
        assert_eq!(civil_from_days(11016), (2000, 2, 29));
        assert_eq!(civil_from_days(11017), (2000, 3, 1));
        assert_eq!(civil_from_days(11016 + 146_097), (2400, 2, 29));
    }

    #[test]
    fn unix_seconds_cover_years_1970_to_max_year() {
        assert_eq!(DateTime::from_unix(u64::MAX).year, MAX_YEAR);
        let jan1 = |year| DateTime { year, month: 1, day: 1, hour: 0, minute: 0, second: 0, weekday: 0 };
        assert!(jan1(MAX_YEAR).to_unix().is_some(), "its first second fits");
        assert_eq!(jan1(MAX_YEAR + 1).to_unix(), None);
        assert_eq!(jan1(1 << 62).to_unix(), None, "no overflow on the way");
        assert_eq!(jan1(u64::MAX).to_unix(), None);
        assert_eq!(jan1(1969).to_unix(), None);
        assert_eq!(jan1(1970).to_unix(), Some(0));
    }

    #[test]
    fn an_hour_written_in_12_hour_mode_is_that_hour() {
        // Table 3: 12-hour BCD 0x83 is 3 PM, which 24-hour mode then shows as 0x15.
        let mut rtc = Rtc::new(unix(2024, 6, 1, 10, 0, 0), T0);
        set_reg(&mut rtc, REG_B, 0, T0);
        set_reg(&mut rtc, REG_HOURS, 0x83, T0);
        assert_eq!(reg(&mut rtc, REG_HOURS, T0), 0x83);
        set_reg(&mut rtc, REG_B, B_24H, T0);
        assert_eq!(reg(&mut rtc, REG_HOURS, T0), 0x15);
    }

    #[test]
    fn alarm_bytes_that_are_not_valid_bcd_or_12_hour_values_never_match() {
        // 0x1A is no BCD number; 0x13 is no 12-hour hour (1-12 only): no time shows them.
        let mut rtc = Rtc::new(unix(2024, 6, 1, 0, 0, 0), T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x1a, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, ALARM_DONT_CARE, T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, ALARM_DONT_CARE, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        assert_eq!(rtc.next_deadline(T0), None, "seconds 0x1a");
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_B, B_AIE, T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x13, T0);
        assert_eq!(rtc.next_deadline(T0), None, "12-hour 0x13");
        // A valid 12-hour alarm: 0x83, 3 PM, 15 hours away.
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x83, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0x00, T0);
        assert_eq!(rtc.next_deadline(T0), Some(T0 + 15 * 3600 * SECOND));
    }

    #[test]
    fn an_alarm_search_never_steps_past_the_last_minute_or_hour() {
        // Hours 10, any minute, second 0, at 10:59:30: this hour has no later minute, so the
        // next match is 10:00:00 tomorrow, not a 60th minute; at 23:59:30 with any hour, the
        // next is 00:00:00, not a 24th hour.
        let mut rtc = Rtc::new(unix(2024, 6, 1, 10, 59, 30), T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, 0x10, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, ALARM_DONT_CARE, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        assert_eq!(rtc.next_deadline(T0), Some(T0 + (86_400 - 3570) * SECOND));
        let mut rtc = Rtc::new(unix(2024, 6, 1, 23, 59, 30), T0);
        set_reg(&mut rtc, REG_HOURS_ALARM, ALARM_DONT_CARE, T0);
        set_reg(&mut rtc, REG_MINUTES_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_SECONDS_ALARM, 0x00, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_AIE, T0);
        assert_eq!(rtc.next_deadline(T0), Some(T0 + 30 * SECOND));
    }

    #[test]
    fn alarm_registers_read_back_what_was_written() {
        // Registers 1, 3, 5 are read/write (Table 2), apart from RAM.
        let mut rtc = Rtc::new(0, T0);
        for (index, value) in [(REG_SECONDS_ALARM, 0x45), (REG_MINUTES_ALARM, 0x30), (REG_HOURS_ALARM, 0xc0)] {
            set_reg(&mut rtc, index, value, T0);
            assert_eq!(reg(&mut rtc, index, T0), value, "register {index}");
        }
    }

    #[test]
    fn the_periodic_flag_is_set_at_each_tap_and_not_between() {
        // Table 4, RS = 0110: 1024 Hz, a tap every 976.5625 us. PF is set at a tap (the
        // instant next_deadline names) and not before it; reading C clears it.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_B, B_24H | B_PIE, T0);
        let tap = rtc.next_deadline(T0).unwrap();
        assert_eq!(reg(&mut rtc, REG_C, tap - 1) & C_PF, 0, "before the tap");
        assert_eq!(reg(&mut rtc, REG_C, tap) & C_PF, C_PF, "at the tap");
        let next = rtc.next_deadline(tap).unwrap();
        assert_eq!(next - tap, 976_562, "the next tap, 1/1024 s later (to the ns)");
        assert_eq!(reg(&mut rtc, REG_C, next - 1) & C_PF, 0);
        assert_eq!(reg(&mut rtc, REG_C, next) & C_PF, C_PF);
        // A tap while PF is still set keeps IRQ 8 high (flags are ORed, not toggled).
        let third = rtc.next_deadline(next).unwrap();
        reg(&mut rtc, REG_A, third);
        assert!(rtc.interrupt_line(third) && rtc.next_deadline(third).is_none(), "high: no deadline");
        assert!(rtc.interrupt_line(third + 976_563), "a second tap with PF unread");
    }

    #[test]
    fn a_new_rate_keeps_the_update_phase_and_only_a_divider_release_moves_it() {
        // "Divider Stages": the first update comes half a second after DV leaves reset; a
        // write of A that changes only the rate (DV running before and after) moves nothing.
        let mut rtc = Rtc::new(0, T0);
        set_reg(&mut rtc, REG_A, A_DV_32768 | 0x0f, T0 + 300_000_000);
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + 900_000_000), 0x00, "still second 0");
        assert_eq!(reg(&mut rtc, REG_SECONDS, T0 + SECOND), 0x01, "the update on its old phase");
        // Near the end of time a release neither overflows nor panics.
        let end = u64::MAX - 1_000;
        set_reg(&mut rtc, REG_B, B_24H | B_UIE, end - 20);
        set_reg(&mut rtc, REG_A, A_DV_RESET, end - 10);
        set_reg(&mut rtc, REG_A, A_PC_DEFAULT, end);
        assert_eq!(rtc.next_deadline(end), None, "the first update lies past u64::MAX");
        reg(&mut rtc, REG_SECONDS, u64::MAX);
    }
}
