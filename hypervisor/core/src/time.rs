//! The TSC rate: what CPUID says it is, what calibration against the PIT and the ACPI PM
//! timer measures, and which of the two Bastion believes.
//!
//! The kernel (`hypervisor/src/time.rs`) executes CPUID, programs and reads the timers and
//! hands the raw values to these functions; the rules live here, host-tested.
//!
//! # The rules
//!
//! **CPUID** (Intel only; leaves 0x15 and 0x16 are Intel-defined, reserved on AMD):
//! - Nothing from CPUID unless the TSC is invariant (CPUID 0x80000007 EDX[8]): without it the
//!   TSC may change rate with P-states or stop in deep C-states, so no fixed rate describes it.
//! - A leaf above the maximum basic leaf (CPUID 0 EAX) is not read: Intel CPUs answer such a
//!   leaf with the data of the highest basic leaf, not zeros (SDM Vol. 2A, CPUID).
//! - Leaf 0x15 (SDM Vol. 2A Table 3-8; Vol. 3B 18.18.3 "Determining the Processor Base
//!   Frequency"): TSC Hz = ECX (core crystal Hz) × EBX / EAX, when EAX and EBX are non-zero
//!   (EBX = 0: the ratio is not enumerated).
//! - Leaf 0x15 with ECX = 0 (crystal not enumerated): the SDM's table of nominal core crystal
//!   clock frequencies (Vol. 3B 18.18.3) gives 24 MHz for the 6th and 7th generation Core
//!   processors (signatures 06_4EH, 06_5EH, 06_8EH, 06_9EH) and 19.2 MHz for Goldmont Atom
//!   (06_5CH). The same table gives 25 MHz for Xeon Scalable (06_55H) but 24 MHz for Xeon W,
//!   which shares that signature, so 06_55H gets no crystal from the table.
//! - Otherwise leaf 0x16 EAX[15:0], the processor base frequency in MHz, is taken as the TSC
//!   rate (as Linux does). The SDM warns that leaf 0x16 reports the specification, not
//!   measured values, which is why it is the last CPUID resort. (Deriving the crystal from
//!   leaf 0x16 and multiplying it back by the leaf 0x15 ratio, as Linux does, gives the same
//!   number up to rounding, so it is not a separate rule.)
//! - AMD: no CPUID leaf gives the TSC rate, and the P-state MSRs whose P0 frequency the TSC
//!   follows are defined per family in the PPRs, not in the APM, so they are not used.
//!
//! **Calibration**: several windows of [`WINDOW_US`] each, measured against the PIT (1.193182
//! MHz, channel 2 counting down through 65536) and, when the FADT lists one, against the ACPI
//! PM timer (3.579545 MHz, counting up, 24 or 32 bits). Every timer read is bracketed by two
//! TSC reads and the TSC at the middle of the bracket is used, so a host that deschedules an
//! emulator between two reads costs nothing. The rate is the median over all windows; the
//! spread is (max − min) / median.
//!
//! **The choice** ([`choose`]): CPUID is an unverified claim — emulators copy the leaves of
//! real CPUs while their TSC runs at another rate (Bochs's `corei7_skylake_x` claims 3.5 GHz
//! through leaf 0x16, but its TSC counts emulated instructions, `ips` per emulated second).
//! So calibration always runs, and the CPUID rate is used only if it agrees with the measured
//! median within [`CPUID_TOLERANCE_PPM`] (or within the measured spread, if that is larger);
//! otherwise the measurement is used and the disagreement reported.

use alloc::vec::Vec;
use core::fmt;

/// The PIT's input clock (8254; IBM PC/AT technical reference).
pub const PIT_HZ: u64 = 1_193_182;
/// The ACPI PM timer's clock (ACPI 6.5 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Calibration windows per boot.
pub const WINDOWS: usize = 5;
/// Length of one calibration window in microseconds.
pub const WINDOW_US: u64 = 10_000;
/// How far (parts per million) a CPUID rate may be from the measured one and still be used.
pub const CPUID_TOLERANCE_PPM: u64 = 20_000;
/// The rate assumed when neither CPUID nor any timer gives one (a guess, reported as such).
pub const FALLBACK_KHZ: u64 = 2_000_000;

/// The CPUID values the TSC rate depends on, read raw by the kernel (whatever the maximum
/// leaf: the rules above decide which to believe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidLeaves {
    /// Leaf 0: EAX (maximum basic leaf), EBX, ECX, EDX (vendor).
    pub leaf_0: [u32; 4],
    /// Leaf 1 EAX (family, model, stepping).
    pub leaf_1_eax: u32,
    /// Leaf 0x15: EAX (ratio denominator), EBX (ratio numerator), ECX (crystal Hz).
    pub leaf_15: [u32; 3],
    /// Leaf 0x16 EAX (base frequency, MHz, bits 15:0).
    pub leaf_16_eax: u32,
    /// Leaf 0x80000000 EAX (maximum extended leaf).
    pub ext_max: u32,
    /// Leaf 0x80000007 EDX (bit 8: invariant TSC).
    pub ext_7_edx: u32,
}

impl CpuidLeaves {
    pub fn is_intel(&self) -> bool {
        // "GenuineIntel" in EBX, EDX, ECX order.
        self.leaf_0[1] == u32::from_le_bytes(*b"Genu")
            && self.leaf_0[3] == u32::from_le_bytes(*b"ineI")
            && self.leaf_0[2] == u32::from_le_bytes(*b"ntel")
    }

    pub fn max_basic(&self) -> u32 {
        self.leaf_0[0]
    }

    /// CPUID 0x80000007 EDX[8], when that leaf exists.
    pub fn invariant_tsc(&self) -> bool {
        self.ext_max >= 0x8000_0007 && self.ext_7_edx & (1 << 8) != 0
    }

    /// DisplayFamily and DisplayModel from leaf 1 EAX (SDM Vol. 2A, CPUID, Figure 3-6).
    pub fn family_model(&self) -> (u32, u32) {
        let eax = self.leaf_1_eax;
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        let family = if base_family == 0xf { base_family + ((eax >> 20) & 0xff) } else { base_family };
        let model = if base_family == 0x6 || base_family == 0xf { base_model + (((eax >> 16) & 0xf) << 4) } else { base_model };
        (family, model)
    }
}

/// The nominal core crystal clock for CPUs whose leaf 0x15 ECX is 0 (SDM Vol. 3B 18.18.3,
/// "Nominal Core Crystal Clock Frequency"), by DisplayFamily_DisplayModel.
pub fn table_crystal_hz(family: u32, model: u32) -> Option<u64> {
    match (family, model) {
        // 6th (Skylake) and 7th (Kaby Lake) generation Core.
        (6, 0x4e | 0x5e | 0x8e | 0x9e) => Some(24_000_000),
        // Atom based on Goldmont.
        (6, 0x5c) => Some(19_200_000),
        // 06_55H is both Xeon Scalable (25 MHz in the table) and Xeon W (24 MHz): ambiguous.
        _ => None,
    }
}

/// Which CPUID rule gave a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidSource {
    /// Leaf 0x15 with the crystal frequency in ECX.
    Leaf15,
    /// Leaf 0x15's ratio with the crystal from the SDM's table.
    Leaf15Table { crystal_hz: u64 },
    /// Leaf 0x16 EAX, the base frequency.
    Leaf16,
}

impl fmt::Display for CpuidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuidSource::Leaf15 => f.write_str("CPUID 0x15"),
            CpuidSource::Leaf15Table { crystal_hz } => {
                write!(f, "CPUID 0x15 with the SDM's {} crystal", Mhz(*crystal_hz / 1000))
            }
            CpuidSource::Leaf16 => f.write_str("CPUID 0x16"),
        }
    }
}

/// A rate CPUID claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidRate {
    pub hz: u64,
    pub source: CpuidSource,
}

/// Why CPUID gives no rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCpuidRate {
    NotIntel,
    NotInvariant,
    /// Leaves 0x15 and 0x16 are absent or report nothing usable.
    NotEnumerated,
}

impl fmt::Display for NoCpuidRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoCpuidRate::NotIntel => "not an Intel CPU: no CPUID leaf gives the TSC rate",
            NoCpuidRate::NotInvariant => "the TSC is not invariant (CPUID 0x80000007 EDX[8] = 0)",
            NoCpuidRate::NotEnumerated => "CPUID 0x15/0x16 do not enumerate the TSC rate",
        })
    }
}

/// The TSC rate CPUID claims, by the rules in the module documentation.
pub fn cpuid_rate(l: &CpuidLeaves) -> Result<CpuidRate, NoCpuidRate> {
    if !l.is_intel() {
        return Err(NoCpuidRate::NotIntel);
    }
    if !l.invariant_tsc() {
        return Err(NoCpuidRate::NotInvariant);
    }
    if l.max_basic() >= 0x15 {
        let [den, num, crystal] = l.leaf_15;
        if den != 0 && num != 0 {
            if crystal != 0 {
                return Ok(CpuidRate { hz: crystal as u64 * num as u64 / den as u64, source: CpuidSource::Leaf15 });
            }
            let (family, model) = l.family_model();
            if let Some(crystal_hz) = table_crystal_hz(family, model) {
                return Ok(CpuidRate { hz: crystal_hz * num as u64 / den as u64, source: CpuidSource::Leaf15Table { crystal_hz } });
            }
        }
    }
    if l.max_basic() >= 0x16 {
        let mhz = (l.leaf_16_eax & 0xffff) as u64;
        if mhz != 0 {
            return Ok(CpuidRate { hz: mhz * 1_000_000, source: CpuidSource::Leaf16 });
        }
    }
    Err(NoCpuidRate::NotEnumerated)
}

/// A timer Bastion calibrates against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// PIT channel 2, counting down through 16 bits.
    Pit,
    /// The ACPI PM timer, counting up through 24 or 32 bits.
    PmTimer { bits32: bool },
}

impl Reference {
    pub fn hz(self) -> u64 {
        match self {
            Reference::Pit => PIT_HZ,
            Reference::PmTimer { .. } => PM_TIMER_HZ,
        }
    }

    /// The mask of the counter's valid bits.
    pub fn mask(self) -> u32 {
        match self {
            Reference::Pit => 0xffff,
            Reference::PmTimer { bits32: false } => 0x00ff_ffff,
            Reference::PmTimer { bits32: true } => 0xffff_ffff,
        }
    }

    /// Ticks from `start` to `end`, across at most one wraparound (the counter's period, 55 ms
    /// for the PIT and 4.7 s for a 24-bit PM timer, is longer than a window). Bits above the
    /// counter's width are ignored (a 24-bit PM timer's upper byte reads as anything).
    pub fn elapsed(self, start: u32, end: u32) -> u32 {
        let m = self.mask();
        match self {
            Reference::Pit => (start & m).wrapping_sub(end & m) & m,
            Reference::PmTimer { .. } => (end & m).wrapping_sub(start & m) & m,
        }
    }

    /// Counter ticks in `us` microseconds, rounded up.
    pub fn ticks_in_us(self, us: u64) -> u32 {
        (us * self.hz()).div_ceil(1_000_000).min(self.mask() as u64) as u32
    }
}

/// One timer read: the counter and the TSC just before and just after reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub tsc_before: u64,
    pub counter: u32,
    pub tsc_after: u64,
}

impl Sample {
    /// The TSC when the counter was read, as well as it is known: the middle of the bracket.
    pub fn tsc_mid(&self) -> u64 {
        self.tsc_before + self.tsc_after.saturating_sub(self.tsc_before) / 2
    }

    /// How uncertain `tsc_mid` is (the bracket's width).
    pub fn width(&self) -> u64 {
        self.tsc_after.saturating_sub(self.tsc_before)
    }

    /// Of several reads of the same counter, the one with the narrowest bracket.
    pub fn narrowest(samples: &[Sample]) -> Option<Sample> {
        samples.iter().copied().min_by_key(Sample::width)
    }
}

/// The TSC rate in Hz over one window, or `None` if the window is unusable (the counter did
/// not move, or the TSC went backwards).
pub fn window_hz(reference: Reference, start: Sample, end: Sample) -> Option<u64> {
    let ticks = reference.elapsed(start.counter, end.counter) as u128;
    let tsc = end.tsc_mid().checked_sub(start.tsc_mid())? as u128;
    if ticks == 0 || tsc == 0 {
        return None;
    }
    u64::try_from((tsc * reference.hz() as u128 + ticks / 2) / ticks).ok()
}

/// The median: the middle value, or the mean of the two middle values. `None` when empty.
pub fn median(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { ((v[n / 2 - 1] as u128 + v[n / 2] as u128) / 2) as u64 })
}

/// (max − min) / median in parts per million (0 for fewer than two values).
pub fn spread_ppm(values: &[u64]) -> u64 {
    let (Some(min), Some(max), Some(med)) = (values.iter().min(), values.iter().max(), median(values)) else {
        return 0;
    };
    if med == 0 {
        return 0;
    }
    (((max - min) as u128 * 1_000_000 + med as u128 / 2) / med as u128) as u64
}

/// `value` relative to `reference`, |value − reference| / reference, in parts per million.
pub fn deviation_ppm(value: u64, reference: u64) -> u64 {
    if reference == 0 {
        return u64::MAX;
    }
    ((value.abs_diff(reference) as u128 * 1_000_000 + reference as u128 / 2) / reference as u128).min(u64::MAX as u128) as u64
}

/// What calibration measured: the rate of every usable window, per reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calibration {
    pub pit_hz: Vec<u64>,
    pub pm_hz: Vec<u64>,
}

impl Calibration {
    pub fn windows(&self) -> usize {
        self.pit_hz.len() + self.pm_hz.len()
    }

    fn all(&self) -> Vec<u64> {
        self.pit_hz.iter().chain(&self.pm_hz).copied().collect()
    }

    /// The median over every window of both references.
    pub fn median_hz(&self) -> Option<u64> {
        median(&self.all())
    }

    /// The spread over every window of both references, in ppm.
    pub fn spread_ppm(&self) -> u64 {
        spread_ppm(&self.all())
    }

    /// How far the two references' medians disagree (ppm), when both were used.
    pub fn references_disagree_ppm(&self) -> Option<u64> {
        Some(deviation_ppm(median(&self.pit_hz)?, median(&self.pm_hz)?))
    }
}

/// Where the rate Bastion uses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID, confirmed by the measurement (or, if no window was usable, unconfirmed).
    Cpuid(CpuidSource),
    /// The median of the calibration windows.
    Calibrated,
    /// Nothing worked: [`FALLBACK_KHZ`].
    Guess,
}

/// The TSC rate Bastion uses, and how it was decided (its `Display` is the boot log's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TscRate {
    pub khz: u64,
    pub source: TscSource,
    pub calibration: Calibration,
    /// The CPUID claim, used or not.
    pub cpuid: Option<CpuidRate>,
}

impl TscRate {
    /// A CPUID claim that calibration contradicted.
    pub fn cpuid_rejected(&self) -> Option<CpuidRate> {
        self.cpuid.filter(|_| self.source == TscSource::Calibrated)
    }
}

/// Chooses the rate: CPUID if it agrees with the measurement within
/// max([`CPUID_TOLERANCE_PPM`], the measured spread), else the measurement; CPUID alone if no
/// window was usable; [`FALLBACK_KHZ`] if neither.
pub fn choose(cpuid: Option<CpuidRate>, calibration: Calibration) -> TscRate {
    let measured = calibration.median_hz();
    let (hz, source) = match (cpuid, measured) {
        (Some(c), Some(m)) if deviation_ppm(c.hz, m) <= CPUID_TOLERANCE_PPM.max(calibration.spread_ppm()) => {
            (c.hz, TscSource::Cpuid(c.source))
        }
        (_, Some(m)) => (m, TscSource::Calibrated),
        (Some(c), None) => (c.hz, TscSource::Cpuid(c.source)),
        (None, None) => (FALLBACK_KHZ * 1000, TscSource::Guess),
    };
    TscRate { khz: ((hz + 500) / 1000).max(1), source, calibration, cpuid }
}

/// A frequency in kHz shown as MHz with three decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mhz(pub u64);

impl fmt::Display for Mhz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03} MHz", self.0 / 1000, self.0 % 1000)
    }
}

/// Parts per million shown as a percentage with two decimals, rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hundredths = (self.0 as u128 + 50) / 100;
        write!(f, "{}.{:02} %", hundredths / 100, hundredths % 100)
    }
}

struct Windows<'a>(&'a Calibration);

impl fmt::Display for Windows<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match (c.pit_hz.len(), c.pm_hz.len()) {
            (n, 0) => write!(f, "median of {n} PIT windows")?,
            (0, n) => write!(f, "median of {n} ACPI PM timer windows")?,
            (p, a) => write!(f, "median of {} windows: {p} PIT, {a} ACPI PM timer", p + a)?,
        }
        write!(f, ", spread {}", Percent(c.spread_ppm()))
    }
}

impl fmt::Display for TscRate {
    /// `2400.123 MHz (median of 10 windows: 5 PIT, 5 ACPI PM timer, spread 0.08 %)`,
    /// `2419.200 MHz (CPUID 0x15, 0.02 % from the median of 10 windows: …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", Mhz(self.khz))?;
        let c = &self.calibration;
        match self.source {
            TscSource::Cpuid(s) => match c.median_hz() {
                Some(m) => write!(f, "{s}, {} from the {}", Percent(deviation_ppm(self.khz * 1000, m)), Windows(c))?,
                None => write!(f, "{s}; no timer to check it against")?,
            },
            TscSource::Calibrated => {
                Windows(c).fmt(f)?;
                if let Some(r) = self.cpuid_rejected() {
                    write!(
                        f,
                        "; {} claims {}, {} off: not used",
                        r.source,
                        Mhz((r.hz + 500) / 1000),
                        Percent(deviation_ppm(r.hz, self.khz * 1000))
                    )?;
                }
            }
            TscSource::Guess => f.write_str("a guess: no CPUID rate and no working timer")?,
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e]; // EBX, EDX, ECX
    const AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];

    fn intel(max: u32) -> CpuidLeaves {
        CpuidLeaves {
            leaf_0: [max, INTEL[0], INTEL[2], INTEL[1]],
            leaf_1_eax: 0x0009_06ea, // 06_9EH, Coffee Lake
            ext_max: 0x8000_0008,
            ext_7_edx: 1 << 8,
            ..CpuidLeaves::default()
        }
    }

    /// Bochs 2.7 `corei7_skylake_x`, as its source defines it.
    fn bochs_skylake_x() -> CpuidLeaves {
        CpuidLeaves { leaf_1_eax: 0x0005_0654, leaf_15: [2, 0x124, 0], leaf_16_eax: 0xdac, ..intel(0x16) }
    }

    #[test]
    fn vendor_and_invariance_are_read_from_their_leaves() {
        assert!(intel(0x16).is_intel());
        let amd = CpuidLeaves { leaf_0: [0x10, AMD[0], AMD[2], AMD[1]], ..intel(0x10) };
        assert!(!amd.is_intel());
        // All three words must match: Transmeta's "GenuineTMx86" shares EBX ("Genu") with
        // "GenuineIntel", and a string matching in EDX or ECX alone is not Intel either.
        let vendor = |b: &[u8; 12]| [0x10, u32::from_le_bytes(b[0..4].try_into().unwrap()), u32::from_le_bytes(b[8..12].try_into().unwrap()), u32::from_le_bytes(b[4..8].try_into().unwrap())];
        for other in [b"GenuineTMx86", b"xxxxineIxxxx", b"xxxxxxxxntel", b"GenuineIxxxx"] {
            assert!(!CpuidLeaves { leaf_0: vendor(other), ..intel(0x10) }.is_intel(), "{}", String::from_utf8_lossy(other));
        }
        assert!(CpuidLeaves { leaf_0: vendor(b"GenuineIntel"), ..intel(0x10) }.is_intel());
        assert!(intel(0x16).invariant_tsc());
        // Bit 8 of a leaf beyond the maximum extended leaf means nothing.
        assert!(!CpuidLeaves { ext_max: 0x8000_0006, ..intel(0x16) }.invariant_tsc());
        assert!(!CpuidLeaves { ext_7_edx: 0, ..intel(0x16) }.invariant_tsc());
    }

    #[test]
    fn display_family_and_model_include_the_extended_fields() {
        assert_eq!(bochs_skylake_x().family_model(), (6, 0x55));
        assert_eq!(intel(0).family_model(), (6, 0x9e));
        // Family 0xF adds the extended family; family 5 ignores the extended model.
        assert_eq!(CpuidLeaves { leaf_1_eax: 0x00a0_0f11, ..intel(0) }.family_model(), (0x19, 0x01));
        assert_eq!(CpuidLeaves { leaf_1_eax: 0x0001_0543, ..intel(0) }.family_model(), (5, 4));
    }

    #[test]
    fn leaf_15_with_a_crystal_gives_crystal_times_ratio() {
        // Tiger Lake: 38.4 MHz × 126/2 = 2419.2 MHz.
        let l = CpuidLeaves { leaf_15: [2, 126, 38_400_000], leaf_16_eax: 2400, ..intel(0x1b) };
        assert_eq!(cpuid_rate(&l), Ok(CpuidRate { hz: 2_419_200_000, source: CpuidSource::Leaf15 }));
    }

    #[test]
    fn leaf_15_without_a_crystal_uses_the_sdm_table_only_for_the_listed_signatures() {
        // 06_9EH: 24 MHz × 200/2 = 2400 MHz.
        let l = CpuidLeaves { leaf_15: [2, 200, 0], leaf_16_eax: 2401, ..intel(0x16) };
        assert_eq!(cpuid_rate(&l), Ok(CpuidRate { hz: 2_400_000_000, source: CpuidSource::Leaf15Table { crystal_hz: 24_000_000 } }));
        // Goldmont 06_5CH: 19.2 MHz.
        let l = CpuidLeaves { leaf_1_eax: 0x0005_06c9, leaf_15: [1, 100, 0], ..intel(0x16) };
        assert_eq!(cpuid_rate(&l).unwrap().hz, 1_920_000_000);
        // 06_55H is ambiguous in the table: falls through to leaf 0x16.
        assert_eq!(cpuid_rate(&bochs_skylake_x()), Ok(CpuidRate { hz: 3_500_000_000, source: CpuidSource::Leaf16 }));
        // A signature the table does not list, no leaf 0x16 value: nothing.
        let l = CpuidLeaves { leaf_1_eax: 0x0008_06c1, leaf_15: [2, 200, 0], ..intel(0x16) };
        assert_eq!(cpuid_rate(&l), Err(NoCpuidRate::NotEnumerated));
        // What the log says for each.
        assert_eq!(NoCpuidRate::NotEnumerated.to_string(), "CPUID 0x15/0x16 do not enumerate the TSC rate");
        let amd = CpuidLeaves { leaf_0: [0x10, AMD[0], AMD[2], AMD[1]], ..intel(0x10) };
        assert_eq!(cpuid_rate(&amd).unwrap_err().to_string(), "not an Intel CPU: no CPUID leaf gives the TSC rate");
        let variant = CpuidLeaves { ext_7_edx: 0, ..intel(0x16) };
        assert_eq!(cpuid_rate(&variant).unwrap_err().to_string(), "the TSC is not invariant (CPUID 0x80000007 EDX[8] = 0)");
    }

    #[test]
    fn a_zero_ratio_means_not_enumerated() {
        let l = CpuidLeaves { leaf_15: [2, 0, 24_000_000], ..intel(0x15) };
        assert_eq!(cpuid_rate(&l), Err(NoCpuidRate::NotEnumerated));
        let l = CpuidLeaves { leaf_15: [0, 200, 24_000_000], ..intel(0x15) };
        assert_eq!(cpuid_rate(&l), Err(NoCpuidRate::NotEnumerated));
    }

    #[test]
    fn leaves_above_the_maximum_basic_leaf_are_ignored() {
        // A Haswell (max leaf 0xF) answers leaf 0x15 with leaf 0xF's data.
        let l = CpuidLeaves { leaf_15: [7, 0x340, 0x340], leaf_16_eax: 7, ..intel(0xf) };
        assert_eq!(cpuid_rate(&l), Err(NoCpuidRate::NotEnumerated));
        // Max leaf 0x15: leaf 0x16 is not read.
        let l = CpuidLeaves { leaf_16_eax: 3000, ..intel(0x15) };
        assert_eq!(cpuid_rate(&l), Err(NoCpuidRate::NotEnumerated));
    }

    #[test]
    fn leaf_16_uses_only_the_low_16_bits() {
        let l = CpuidLeaves { leaf_16_eax: 0xffff_0bb8, ..intel(0x16) };
        assert_eq!(cpuid_rate(&l).unwrap().hz, 3_000_000_000);
    }

    #[test]
    fn cpuid_is_trusted_only_on_intel_with_an_invariant_tsc() {
        let l = CpuidLeaves { leaf_15: [2, 126, 38_400_000], ..intel(0x16) };
        assert_eq!(cpuid_rate(&CpuidLeaves { ext_7_edx: 0, ..l }), Err(NoCpuidRate::NotInvariant));
        assert_eq!(cpuid_rate(&CpuidLeaves { leaf_0: [0x16, AMD[0], AMD[2], AMD[1]], ..l }), Err(NoCpuidRate::NotIntel));
        // QEMU's qemu64: max basic leaf 0xD, no invariant TSC, vendor AMD.
        let qemu64 = CpuidLeaves { leaf_0: [0xd, AMD[0], AMD[2], AMD[1]], ext_max: 0x8000_000a, ext_7_edx: 0, ..l };
        assert_eq!(cpuid_rate(&qemu64), Err(NoCpuidRate::NotIntel));
    }

    #[test]
    fn pit_elapsed_counts_down_through_zero() {
        assert_eq!(Reference::Pit.elapsed(50_000, 38_068), 11_932);
        assert_eq!(Reference::Pit.elapsed(5_000, 60_604), 9_932); // wrapped past 0 (65536)
        assert_eq!(Reference::Pit.elapsed(0, 65_535), 1); // 0 is the reload value 65536
        assert_eq!(Reference::Pit.elapsed(7, 7), 0);
    }

    #[test]
    fn pm_timer_elapsed_counts_up_through_24_or_32_bits() {
        let t24 = Reference::PmTimer { bits32: false };
        let t32 = Reference::PmTimer { bits32: true };
        assert_eq!(t24.elapsed(100, 35_896), 35_796);
        assert_eq!(t24.elapsed(0x00ff_fff0, 0x0000_0010), 0x20);
        // A 24-bit timer's upper byte is not part of the count.
        assert_eq!(t24.elapsed(0xab00_0005, 0x0000_0015), 0x10);
        assert_eq!(t32.elapsed(0xffff_fff0, 0x0000_0010), 0x20);
        assert_eq!(t32.elapsed(0x00ff_fff0, 0x0100_0010), 0x20);
    }

    #[test]
    fn ticks_in_a_window() {
        assert_eq!(Reference::Pit.ticks_in_us(10_000), 11_932);
        assert_eq!(Reference::PmTimer { bits32: false }.ticks_in_us(10_000), 35_796);
        assert_eq!(Reference::Pit.ticks_in_us(1_000_000), 0xffff); // capped below one period
    }

    fn s(tsc_before: u64, counter: u32, tsc_after: u64) -> Sample {
        Sample { tsc_before, counter, tsc_after }
    }

    #[test]
    fn a_window_uses_the_middle_of_each_bracket() {
        // 2 GHz TSC, 11932 PIT ticks (10.00015 ms, 20000302 TSC ticks), reads bracketed by
        // 100 and 300 TSC ticks: the middles are 20000302 apart.
        let start = s(1_000_000, 60_000, 1_000_100);
        let end = s(1_000_050 + 20_000_302 - 150, 48_068, 1_000_050 + 20_000_302 + 150);
        assert_eq!(window_hz(Reference::Pit, start, end), Some(2_000_000_029));
        // A host that stalls the emulator between the reads does not matter: both counters ran.
        let pm = Reference::PmTimer { bits32: false };
        assert_eq!(window_hz(pm, s(0, 0, 0), s(2_000_000_000, 3_579_545, 2_000_000_000)), Some(2_000_000_000));
    }

    #[test]
    fn an_unusable_window_gives_nothing() {
        assert_eq!(window_hz(Reference::Pit, s(0, 100, 10), s(1000, 100, 1010)), None); // counter stuck
        assert_eq!(window_hz(Reference::Pit, s(1000, 100, 1010), s(0, 50, 10)), None); // TSC backwards
    }

    #[test]
    fn the_narrowest_bracket_wins() {
        let reads = [s(0, 1, 500), s(600, 2, 610), s(700, 3, 900)];
        assert_eq!(Sample::narrowest(&reads), Some(s(600, 2, 610)));
        assert_eq!(Sample::narrowest(&[]), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7]), Some(7));
        assert_eq!(median(&[5, 1, 9]), Some(5));
        assert_eq!(median(&[4, 1, 9, 2]), Some(3));
        assert_eq!(median(&[u64::MAX, u64::MAX - 2]), Some(u64::MAX - 1));
        // One outlier moves the mean, not the median.
        assert_eq!(median(&[2400, 2401, 2399, 2400, 3100]), Some(2400));
    }

    #[test]
    fn spread_is_max_minus_min_over_the_median() {
        assert_eq!(spread_ppm(&[]), 0);
        assert_eq!(spread_ppm(&[2400]), 0);
        assert_eq!(spread_ppm(&[1_000_000, 1_000_800, 1_000_400]), 800);
        assert_eq!(spread_ppm(&[1000, 1026, 1000]), 26_000); // the old drift of 2.6 %
        // Deviations round to the nearest ppm: 4/7 is 571,428.57 ppm.
        assert_eq!(deviation_ppm(11, 7), 571_429);
        assert_eq!(deviation_ppm(3, 7), 571_429, "either side of the reference");
        assert_eq!(deviation_ppm(8, 7), 142_857, "1/7 = 142,857.14 ppm");
        assert_eq!(deviation_ppm(5, 0), u64::MAX, "no reference: as far off as can be");
        assert_eq!(Percent(800).to_string(), "0.08 %");
        assert_eq!(Percent(26_000).to_string(), "2.60 %");
        assert_eq!(Percent(4).to_string(), "0.00 %");
        assert_eq!(Percent(16_500_000).to_string(), "1650.00 %");
    }

    #[test]
    fn calibration_pools_both_references() {
        let c = Calibration { pit_hz: vec![1000, 1002, 1001], pm_hz: vec![999, 1001, 1000] };
        assert_eq!(c.windows(), 6);
        assert_eq!(c.median_hz(), Some(1000)); // (1000 + 1001) / 2
        assert_eq!(c.spread_ppm(), 3000);
        assert_eq!(c.references_disagree_ppm(), Some(1000));
        assert_eq!(Calibration { pit_hz: vec![5], pm_hz: vec![] }.references_disagree_ppm(), None);
    }

    fn calibrated(mhz: &[u64]) -> Calibration {
        Calibration { pit_hz: mhz.iter().map(|m| m * 1_000_000).collect(), pm_hz: vec![] }
    }

    #[test]
    fn cpuid_is_used_when_calibration_confirms_it() {
        let c = Some(CpuidRate { hz: 2_419_200_000, source: CpuidSource::Leaf15 });
        let r = choose(c, calibrated(&[2400, 2410, 2405]));
        assert_eq!((r.khz, r.source), (2_419_200, TscSource::Cpuid(CpuidSource::Leaf15)));
        assert_eq!(r.cpuid_rejected(), None);
    }

    #[test]
    fn cpuid_contradicted_by_calibration_is_not_used() {
        // Bochs: CPUID 0x16 says 3500 MHz, the TSC counts 200 M instructions per emulated second.
        let c = cpuid_rate(&bochs_skylake_x()).ok();
        let r = choose(c, calibrated(&[200, 200, 200]));
        assert_eq!((r.khz, r.source), (200_000, TscSource::Calibrated));
        assert_eq!(r.cpuid_rejected(), c);
        // 3 % off is too far when the windows agree ...
        let c = Some(CpuidRate { hz: 1_030_000_000, source: CpuidSource::Leaf16 });
        assert_eq!(choose(c, calibrated(&[1000, 1000, 1000])).source, TscSource::Calibrated);
        // ... but within the spread of windows that disagree by 5 %, CPUID is the better value.
        assert_eq!(choose(c, calibrated(&[980, 1000, 1030])).source, TscSource::Cpuid(CpuidSource::Leaf16));
    }

    #[test]
    fn without_windows_cpuid_alone_or_a_guess() {
        let c = Some(CpuidRate { hz: 3_000_000_000, source: CpuidSource::Leaf16 });
        let r = choose(c, Calibration::default());
        assert_eq!((r.khz, r.source), (3_000_000, TscSource::Cpuid(CpuidSource::Leaf16)));
        let r = choose(None, Calibration::default());
        assert_eq!((r.khz, r.source), (FALLBACK_KHZ, TscSource::Guess));
    }

    #[test]
    fn the_log_text_names_the_source_and_the_spread() {
        let r = choose(None, Calibration { pit_hz: vec![2_400_123_000; 5], pm_hz: vec![] });
        assert_eq!(r.to_string(), "2400.123 MHz (median of 5 PIT windows, spread 0.00 %)");
        let cal = Calibration { pit_hz: vec![200_000_000, 200_100_000], pm_hz: vec![200_000_000, 199_990_000] };
        let r = choose(cpuid_rate(&bochs_skylake_x()).ok(), cal);
        assert_eq!(
            r.to_string(),
            "200.000 MHz (median of 4 windows: 2 PIT, 2 ACPI PM timer, spread 0.06 %; CPUID 0x16 claims 3500.000 MHz, 1650.00 % off: not used)"
        );
        let c = Some(CpuidRate { hz: 2_400_000_000, source: CpuidSource::Leaf15Table { crystal_hz: 24_000_000 } });
        let r = choose(c, Calibration { pit_hz: vec![], pm_hz: vec![2_401_200_000; 3] });
        assert_eq!(
            r.to_string(),
            "2400.000 MHz (CPUID 0x15 with the SDM's 24.000 MHz crystal, 0.05 % from the median of 3 ACPI PM timer windows, spread 0.00 %)"
        );
        let r = choose(None, Calibration::default());
        assert_eq!(r.to_string(), "2000.000 MHz (a guess: no CPUID rate and no working timer)");
        assert_eq!(Mhz(19_200).to_string(), "19.200 MHz");
    }
}
