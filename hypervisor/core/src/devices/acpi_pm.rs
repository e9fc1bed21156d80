//! ACPI fixed-hardware power management: the PM1a event and control blocks and the PM timer,
//! at the ports the FADT of [`crate::loader::acpi`] names (PIIX4-style I/O space at 0x600).
//! Written by hand: no no_std crate models ACPI fixed hardware (the `acpi` crate only parses
//! tables).
//!
//! Offsets are from [`PM_BASE`] (ACPI 6.5 §4.8.3 "Power Management and Fixed Hardware
//! Registers"):
//!
//! | offset | register  | here |
//! |--------|-----------|------|
//! | 0x0    | PM1_STS (16 bits, §4.8.3.1.1) | write-1-to-clear; nothing ever sets a bit (no fixed events are raised: no power button, no timer-carry SCI), so it reads 0 |
//! | 0x2    | PM1_EN (16 bits, §4.8.3.1.2)  | reads back what was written (ACPICA probes GBL_EN this way) |
//! | 0x4    | PM1_CNT (16 bits, §4.8.3.2.1) | SCI_EN (bit 0) always 1: there is no SMI_CMD, so the platform is always in ACPI mode (§5.2.9); BM_RLS (1) and SLP_TYP (12:10) read back; GBL_RLS (2) and SLP_EN (13) are write-only and read 0. Writing SLP_EN with SLP_TYP = the `\_S5` value powers the machine off |
//! | 0x8    | PM_TMR (32 bits, §4.8.3.3)    | read-only, free running at 3.579545 MHz from power-on; all 32 bits count (the FADT sets TMR_VAL_EXT) |
//!
//! An access may be of any width and may straddle registers; each byte goes to the register it
//! belongs to, and a control write takes effect once the byte holding SLP_EN arrives. Sleep
//! states other than S5 are not offered (the DSDT names only `\_S5`), so writing SLP_EN with any
//! other type does nothing.

use crate::devices::bus::{BusDevice, IoOutcome};
use crate::loader::acpi::{pm1_cnt_requests_power_off, PM1A_EVT_PORT, PM_TIMER_HZ};

/// First port of the block: PM1a_EVT_BLK; PM1a_CNT_BLK at +4, PM_TMR_BLK at +8.
pub const PM_BASE: u16 = PM1A_EVT_PORT;
/// Ports the device answers: up to the end of PM_TMR.
pub const PM_LEN: u16 = 12;

const EN: usize = 2;
const CNT: usize = 4;
const TMR: usize = 8;

/// PM1_CNT bits that read back what was written: BM_RLS (bit 1) and SLP_TYP (12:10),
/// disjoint, so `+`.
const CNT_READ_BACK: u16 = (1 << 1) + (0b111 << 10);
/// PM1_CNT SCI_EN (bit 0): always set here.
const SCI_EN: u16 = 0x0001;

/// The registers; the timer is computed from the clock.
#[derive(Debug, Clone)]
pub struct AcpiPm {
    en: u16,
    cnt: u16,
    /// The clock reading at power-on: the timer counts from 0 there.
    epoch_ns: u64,
}

impl AcpiPm {
    /// Power-on state at clock reading `now_ns`.
    pub fn new(now_ns: u64) -> AcpiPm {
        AcpiPm { en: 0, cnt: 0, epoch_ns: now_ns }
    }

    /// PM_TMR at `now_ns`: ticks of the 3.579545 MHz clock since power-on, modulo 2^32.
    pub fn timer(&self, now_ns: u64) -> u32 {
        let ns = now_ns.saturating_sub(self.epoch_ns) as u128;
        (ns * PM_TIMER_HZ as u128 / 1_000_000_000) as u32
    }

    fn register(&self, at: usize, now_ns: u64) -> u32 {
        // PM1_STS, and the bytes of no register, read 0.
        match at {
            EN => u32::from(self.en),
            // SCI_EN is not among the bits read back: `+`.
            CNT => u32::from((self.cnt & CNT_READ_BACK) + SCI_EN),
            TMR => self.timer(now_ns),
            _ => 0,
        }
    }

    /// The byte at `offset` (0..[`PM_LEN`]) at `now_ns`; bytes that belong to no register
    /// (0x6, 0x7) read 0.
    pub fn read_byte(&self, offset: u16, now_ns: u64) -> u8 {
        // PM1_STS (0-1) has no state: with the bytes of no register it reads 0.
        let (at, shift) = match offset {
            2..=3 => (EN, offset - 2),
            4..=5 => (CNT, offset - 4),
            8..=11 => (TMR, offset - 8),
            _ => return 0,
        };
        (self.register(at, now_ns) >> (8 * shift)) as u8
    }

    /// Stores one byte; [`IoOutcome::PowerOff`] when it completes a PM1_CNT write that asks
    /// for S5.
    pub fn write_byte(&mut self, offset: u16, value: u8) -> IoOutcome {
        let set = |reg: &mut u16, high: bool| {
            // The kept byte and the written one are disjoint: `+`.
            *reg = if high { (*reg & 0x00ff) + (u16::from(value) << 8) } else { (*reg & 0xff00) + u16::from(value) }
        };
        // PM1_STS (0-1: write-1-to-clear, and no bit is ever set) and the bytes of no register
        // take nothing.
        match offset {
            2..=3 => set(&mut self.en, offset == 3),
            4..=5 => {
                set(&mut self.cnt, offset == 5);
                if offset == 5 && pm1_cnt_requests_power_off(self.cnt) {
                    return IoOutcome::PowerOff;
                }
            }
            _ => {}
        }
        IoOutcome::Done
    }
}

/// The PM block with the clock its timer runs on, as the bus holds it.
#[derive(Debug, Clone)]
pub struct PmDevice {
    pub pm: AcpiPm,
    pub clock: fn() -> u64,
}

impl BusDevice for PmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = (self.clock)();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.pm.read_byte(offset as u16 + i as u16, now);
        }
    }
    /// Bytes go in ascending order, so a 16-bit PM1_CNT write is whole when its high byte
    /// (with SLP_EN) arrives.
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        let mut outcome = IoOutcome::Done;
        for (i, b) in data.iter().enumerate() {
            if let IoOutcome::PowerOff = self.pm.write_byte(offset as u16 + i as u16, *b) {
                outcome = IoOutcome::PowerOff;
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::acpi::{PM1A_CNT_PORT, PM_TMR_PORT, S5_SLP_TYP};

    std::thread_local! {
        /// Each test thread's own clock (tests run in parallel).
        static NOW: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    fn clock() -> u64 {
        NOW.with(|n| n.get())
    }

    /// The device powered on at 0, with this thread's clock at `now`.
    fn at(now: u64) -> PmDevice {
        NOW.with(|n| n.set(now));
        PmDevice { pm: AcpiPm::new(0), clock }
    }

    fn read(d: &mut PmDevice, offset: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        d.read(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    /// The register offsets are the ones the FADT publishes.
    #[test]
    fn registers_sit_where_the_fadt_says() {
        assert_eq!(PM_BASE, 0x600);
        assert_eq!(PM1A_CNT_PORT - PM_BASE, CNT as u16);
        assert_eq!(PM_TMR_PORT - PM_BASE, TMR as u16);
        assert_eq!(PM_BASE + PM_LEN, PM_TMR_PORT + 4);
    }

    /// §4.8.3.3: the PM timer runs at 3.579545 MHz from power-on and wraps at 2^32
    /// (TMR_VAL_EXT).
    #[test]
    fn the_pm_timer_counts_at_3_579545_mhz() {
        let pm = AcpiPm::new(1_000);
        assert_eq!(pm.timer(1_000), 0);
        assert_eq!(pm.timer(500), 0, "before power-on it reads 0, never backwards");
        assert_eq!(pm.timer(1_000 + 1_000_000_000), 3_579_545);
        assert_eq!(pm.timer(1_000 + 1_000_000), 3_579);
        // 2^32 ticks take 1199.9 s; the counter wraps there.
        let wrap_ns = (1u128 << 32) * 1_000_000_000 / 3_579_545;
        assert!(pm.timer(1_000 + wrap_ns as u64 + 1_000_000) < 3_600);
        let mut d = at(2_000_000_000);
        assert_eq!(read(&mut d, TMR as u64, 4), 7_159_090);
        // Byte reads see the same value, byte by byte.
        assert_eq!(read(&mut d, TMR as u64 + 1, 1), (7_159_090 >> 8) & 0xff);
        assert_eq!(read(&mut d, TMR as u64 + 3, 1), 0);
    }

    /// §4.8.3.2.1: SCI_EN reads 1 (always in ACPI mode); SLP_TYP and BM_RLS read back; the
    /// write-only GBL_RLS and SLP_EN read 0. §4.8.3.1: PM1_EN reads back, PM1_STS stays 0.
    #[test]
    fn control_and_enable_read_back_what_they_should() {
        let mut d = at(0);
        assert_eq!(read(&mut d, CNT as u64, 2), 1, "SCI_EN at power-on");
        assert_eq!(d.write(CNT as u64, &0x0c06u16.to_le_bytes()), IoOutcome::Done, "SLP_TYP 3 without SLP_EN");
        assert_eq!(read(&mut d, CNT as u64, 2), 0x0c03, "SLP_TYP and BM_RLS kept, GBL_RLS gone, SCI_EN set");
        d.write(EN as u64, &0x0120u16.to_le_bytes());
        assert_eq!(read(&mut d, EN as u64, 2), 0x0120);
        d.write(0 /* PM1_STS */, &0xffffu16.to_le_bytes());
        assert_eq!(read(&mut d, 0 /* PM1_STS */, 2), 0);
        // One 32-bit read of the event block gives STS then EN.
        assert_eq!(read(&mut d, 0, 4), 0x0120_0000);
        // The gap between the control block and the timer reads 0.
        assert_eq!(read(&mut d, 6, 2), 0);
        // A byte write changes its own byte of a register only.
        d.write(EN as u64, &[0x21]);
        assert_eq!(read(&mut d, EN as u64, 2), 0x0121);
        d.write(EN as u64 + 1, &[0x04]);
        assert_eq!(read(&mut d, EN as u64, 2), 0x0421);
        d.write(CNT as u64, &[0x00]);
        assert_eq!(read(&mut d, CNT as u64, 2), 0x0c01, "SLP_TYP kept by a low-byte write");
    }

    /// §4.8.3.2.1 and §7.4.2 (\_S5): SLP_EN with the S5 type powers off; with another type, or
    /// SLP_TYP alone, nothing happens.
    #[test]
    fn slp_en_with_the_s5_type_powers_off() {
        let mut d = at(0);
        let s5 = (S5_SLP_TYP << 10) | (1 << 13);
        assert_eq!(d.write(CNT as u64, &s5.to_le_bytes()), IoOutcome::PowerOff);
        let mut d = at(0);
        assert_eq!(d.write(CNT as u64, &((1u16 << 10) | (1 << 13)).to_le_bytes()), IoOutcome::Done, "S1 is not offered");
        assert_eq!(d.write(CNT as u64, &(S5_SLP_TYP << 10).to_le_bytes()), IoOutcome::Done, "no SLP_EN");
        // Byte by byte (low then high): it happens with the high byte.
        let mut d = at(0);
        assert_eq!(d.write(CNT as u64, &[s5 as u8]), IoOutcome::Done);
        assert_eq!(d.write(CNT as u64 + 1, &[(s5 >> 8) as u8]), IoOutcome::PowerOff);
        // A 32-bit write across PM1_EN and PM1_CNT reaches both.
        let mut d = at(0);
        assert_eq!(d.write(EN as u64, &(u32::from(s5) << 16 | 0x21).to_le_bytes()), IoOutcome::PowerOff);
        assert_eq!(read(&mut d, EN as u64, 2), 0x21);
    }
}
