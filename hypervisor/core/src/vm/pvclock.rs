//! kvmclock: the paravirtual clock Linux already understands, offered without modifying the
//! guest.
//!
//! Linux looks for the signature "KVMKVMKVM\0\0\0" at every 0x100 step from CPUID leaf
//! 0x4000_0000 (`hypervisor_cpuid_base`), so Bastion keeps its own signature at 0x4000_0000 and
//! puts a KVM-compatible one at [`KVM_BASE`] = 0x4000_0100, with [`KVM_FEATURES`] offering the
//! clock, `KVM_FEATURE_CLOCKSOURCE2` (the MSRs at 0x4b564d00/01) and
//! `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`, and the paravirtual EOI, `KVM_FEATURE_PV_EOI`
//! (`vm::pv_eoi`) (Linux's `Documentation/virt/kvm/x86/cpuid.rst` and `msr.rst`). Nothing else
//! of KVM's interface is offered, so nothing else is used.
//!
//! The guest writes a guest-physical address to `MSR_KVM_SYSTEM_TIME_NEW` (bit 0 = enable) and
//! Bastion writes a `pvclock_vcpu_time_info` there (32 bytes, `pvclock-abi.h`): a TSC value,
//! the guest's time in ns at that TSC, and a multiplier and shift that turn TSC ticks into ns:
//! `time = system_time + (((tsc - tsc_timestamp) << shift or >> -shift) * mul >> 32)`. The
//! host's TSC is invariant and a guest's TSC is the host's plus a fixed offset, so one write
//! stays right for good: the structure is written once per enable, with the TSC-stable flag
//! (the guest then need not keep its vCPUs' readings monotonic against each other). The
//! guest's "system time" is its TSC converted to ns, so it counts from when the guest's TSC
//! was 0. `MSR_KVM_WALL_CLOCK_NEW` asks for a `pvclock_wall_clock` (12 bytes): the Unix time
//! at system time 0.
//!
//! Versions are written even (2): an odd version tells the guest an update is in progress,
//! and Bastion writes each structure whole while the guest waits in its WRMSR.
//! A guest that writes its TSC afterwards moves its TSC but not this clock's base: its
//! kvmclock would jump. Linux never does; the limitation is stated, not hidden.

/// The KVM-compatible signature leaf: EAX = highest KVM leaf, EBX:ECX:EDX = "KVMKVMKVM\0\0\0".
pub const KVM_BASE: u32 = 0x4000_0100;
/// KVM's feature leaf: EAX = feature bits.
pub const KVM_FEATURES: u32 = 0x4000_0101;
pub const KVM_SIGNATURE: [u32; 3] = [u32::from_le_bytes(*b"KVMK"), u32::from_le_bytes(*b"VMKV"), u32::from_le_bytes(*b"M\0\0\0")];
/// `KVM_FEATURE_CLOCKSOURCE2`: the "new" clock MSRs below.
pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// `KVM_FEATURE_PV_EOI`: the guest may end an interrupt by clearing a flag in its memory
/// instead of writing the EOI register (`vm::pv_eoi`).
pub const FEATURE_PV_EOI: u32 = 1 << 6;
/// `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`: the TSC-stable flag may be set.
pub const FEATURE_STABLE_BIT: u32 = 1 << 24;
pub const MSR_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// `PVCLOCK_TSC_STABLE_BIT` in `pvclock_vcpu_time_info.flags`.
pub const TSC_STABLE: u8 = 1; // bit 0
/// Size of `pvclock_vcpu_time_info`.
pub const TIME_INFO_BYTES: usize = 32;
/// Size of `pvclock_wall_clock`.
pub const WALL_CLOCK_BYTES: usize = 12;

/// The CPUID answer for the KVM leaves (`leaf` in 0x4000_0100..=0x4000_01ff), or `None` when
/// the clock cannot be offered (TSC rate unknown).
pub fn cpuid(leaf: u32, tsc_khz: u32) -> Option<[u32; 4]> {
    if tsc_khz == 0 {
        return None;
    }
    match leaf {
        KVM_BASE => Some([KVM_FEATURES, KVM_SIGNATURE[0], KVM_SIGNATURE[1], KVM_SIGNATURE[2]]),
        // Three distinct bits (msr.rst's feature list), added.
        KVM_FEATURES => Some([FEATURE_CLOCKSOURCE2 + FEATURE_PV_EOI + FEATURE_STABLE_BIT, 0, 0, 0]),
        _ => None,
    }
}

/// Multiplier and shift that turn TSC ticks at `tsc_hz` into ns as the guest computes it:
/// `ns = (ticks shifted by shift) * mul >> 32`. The shift brings the rate into (1 GHz, 2 GHz],
/// so `mul` = 10^9 * 2^32 / rate lies in [2^31, 2^32): 31 or 32 significant bits.
pub fn scale(tsc_hz: u64) -> (u32, i8) {
    let mut rate = tsc_hz.max(1) as u128;
    let mut shift: i8 = 0;
    while rate <= 1_000_000_000 {
        rate <<= 1;
        shift += 1;
    }
    while rate > 2_000_000_000 {
        rate >>= 1;
        shift -= 1;
    }
    let mul = ((1_000_000_000u128 << 32) / rate).min(u32::MAX as u128) as u32;
    (mul, shift)
}

/// What the guest computes from the structure for a TSC delta (the reader's arithmetic, for
/// tests and for anyone checking a structure).
pub fn ticks_to_ns(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 { delta << shift } else { delta >> (-shift) };
    ((d as u128 * mul as u128) >> 32) as u64
}

/// The guest's "system time" in ns for a guest TSC value: TSC ticks since 0 at `tsc_khz`.
pub fn guest_ns(tsc: u64, tsc_khz: u32) -> u64 {
    (tsc as u128 * 1_000_000 / tsc_khz.max(1) as u128) as u64
}

/// `pvclock_vcpu_time_info` for guest TSC `tsc`: version 2, the TSC, its time, the scale, the
/// TSC-stable flag.
pub fn time_info(tsc: u64, tsc_khz: u32) -> [u8; TIME_INFO_BYTES] {
    let (mul, shift) = scale(tsc_khz as u64 * 1000);
    let mut b = [0u8; TIME_INFO_BYTES];
    b[0..4].copy_from_slice(&2u32.to_le_bytes());
    b[8..16].copy_from_slice(&tsc.to_le_bytes());
    b[16..24].copy_from_slice(&guest_ns(tsc, tsc_khz).to_le_bytes());
    b[24..28].copy_from_slice(&mul.to_le_bytes());
    b[28] = shift as u8;
    b[29] = TSC_STABLE;
    b
}

/// `pvclock_wall_clock`: version 2 and the Unix time (seconds, ns) at guest system time 0,
/// given the Unix time in ns now and the guest's system time now.
pub fn wall_clock(unix_now_ns: u64, guest_now_ns: u64) -> [u8; WALL_CLOCK_BYTES] {
    let at_zero = unix_now_ns.saturating_sub(guest_now_ns);
    let mut b = [0u8; WALL_CLOCK_BYTES];
    b[0..4].copy_from_slice(&2u32.to_le_bytes());
    b[4..8].copy_from_slice(&((at_zero / 1_000_000_000) as u32).to_le_bytes());
    b[8..12].copy_from_slice(&((at_zero % 1_000_000_000) as u32).to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kvm_leaves_carry_the_signature_and_only_the_clock_features() {
        let [max, b, c, d] = cpuid(KVM_BASE, 2_000_000).unwrap();
        assert_eq!(max, KVM_FEATURES);
        let sig: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0", "the bytes Linux's hypervisor_cpuid_base compares");
        assert_eq!(cpuid(KVM_FEATURES, 2_000_000), Some([(1 << 3) | (1 << 6) | (1 << 24), 0, 0, 0]));
        assert_eq!(cpuid(KVM_BASE + 2, 2_000_000), None);
        assert_eq!(cpuid(KVM_BASE, 0), None, "no clock without a known TSC rate");
    }

    #[test]
    fn the_scale_turns_one_second_of_ticks_into_one_second_within_a_part_per_million() {
        for hz in [1u64, 1_000, 4_000_000, 200_000_000, 999_999_999, 1_000_000_000, 1_000_000_001, 2_000_000_000, 2_596_160_000, 3_500_000_000, 10_000_000_000] {
            let (mul, shift) = scale(hz);
            assert!(mul >= 1 << 31, "{hz} Hz: mul {mul:#x} keeps 32 significant bits");
            let ns = ticks_to_ns(hz, mul, shift);
            assert!(ns.abs_diff(1_000_000_000) <= 1_000 + (1_000_000_000 / hz), "{hz} Hz: {ns} ns for a second");
        }
    }

    #[test]
    fn the_shifted_rate_lies_in_the_half_open_interval_above_1_ghz() {
        // (1 GHz, 2 GHz]: 2 GHz stays as it is (mul = 2^31), 1 GHz doubles once.
        assert_eq!(scale(2_000_000_000), (1 << 31, 0));
        assert_eq!(scale(1_000_000_000), (1 << 31, 1));
        assert_eq!(scale(4_000_000_000), (1 << 31, -1));
    }

    #[test]
    fn time_info_has_the_pvclock_abi_layout() {
        let b = time_info(3_000_000_000, 1_500_000);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 2, "an even version: not being updated");
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 3_000_000_000);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 2_000_000_000, "3e9 ticks at 1.5 GHz are 2 s");
        let (mul, shift) = scale(1_500_000_000);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), mul);
        assert_eq!(b[28] as i8, shift);
        assert_eq!(b[29], TSC_STABLE);
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(&b[30..32], &[0; 2]);
    }

    #[test]
    fn a_guest_reading_later_sees_time_advance_at_the_tsc_rate() {
        let khz = 2_596_160;
        let b = time_info(10_000_000, khz);
        let ts = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let sys = u64::from_le_bytes(b[16..24].try_into().unwrap());
        let (mul, shift) = (u32::from_le_bytes(b[24..28].try_into().unwrap()), b[28] as i8);
        // The guest's reading at any later TSC matches a direct conversion of that TSC.
        for later in [ts, ts + 1, ts + 2_596_160, ts + 2_596_160_000 * 60] {
            let t = sys + ticks_to_ns(later - ts, mul, shift);
            assert!(t.abs_diff(guest_ns(later, khz)) <= 2 + (later - ts) / 1_000_000_000, "{later}");
        }
    }

    #[test]
    fn the_wall_clock_is_unix_time_at_guest_time_zero() {
        let b = wall_clock(1_764_000_000_123_456_789, 5_000_000_000);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 1_763_999_995);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 123_456_789);
    }
}
