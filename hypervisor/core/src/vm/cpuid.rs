//! What CPUID tells a guest: the host's answers, minus what Bastion does not virtualize, plus
//! the hypervisor leaves.
//!
//! Policy: a guest must never be told about a feature whose use would fault or silently
//! misbehave under Bastion. So VMX/SVM are hidden (no nested virtualization), as are x2APIC
//! and the TSC-deadline timer (the local APIC is an xAPIC: `devices::lapic`), MTRRs,
//! machine-check and the power/thermal/perf-monitoring interfaces (none is virtualized yet). Leaf 1 ECX bit 31 and leaves 0x4000_0000+ say "you run on Bastion"
//! (the convention Linux's `x86_hyper` detection and others follow).

/// Leaf 0x4000_0000's EBX, ECX, EDX: the 12 bytes "Bastion\0\0\0\0\0".
pub const SIGNATURE: [u32; 3] = [u32::from_le_bytes(*b"Bast"), u32::from_le_bytes(*b"ion\0"), 0];
/// The timing leaf: EAX = TSC frequency in kHz (the convention VMware and KVM use), so a guest
/// can time itself without calibrating against a PIT it may not have.
pub const TSC_LEAF: u32 = 0x4000_0010;
/// Highest hypervisor leaf.
pub const MAX_HV_LEAF: u32 = TSC_LEAF;

mod bit {
    // Leaf 1 ECX.
    pub const MONITOR: u32 = 1 << 3;
    pub const DS_CPL: u32 = 1 << 4;
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const EST: u32 = 1 << 7;
    pub const TM2: u32 = 1 << 8;
    pub const PDCM: u32 = 1 << 15;
    pub const X2APIC: u32 = 1 << 21;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
    // Leaf 1 EDX.
    pub const MCE: u32 = 1 << 7;
    pub const APIC: u32 = 1 << 9;
    pub const MTRR: u32 = 1 << 12;
    pub const MCA: u32 = 1 << 14;
    pub const DS: u32 = 1 << 21;
    pub const ACPI: u32 = 1 << 22;
    pub const HTT: u32 = 1 << 28;
    pub const TM: u32 = 1 << 29;
    pub const PBE: u32 = 1 << 31;
    // Leaf 7.0 EBX / ECX.
    pub const SGX: u32 = 1 << 2;
    pub const WAITPKG: u32 = 1 << 5;
    pub const SGX_LC: u32 = 1 << 30;
    // Leaf 0x8000_0001 ECX.
    pub const SVM: u32 = 1 << 2;
    pub const EXTAPIC: u32 = 1 << 3;
    pub const SKINIT: u32 = 1 << 12;
    pub const WDT: u32 = 1 << 13;
    pub const TOPOEXT: u32 = 1 << 22;
    pub const PERFCTR_CORE: u32 = 1 << 23;
    pub const MONITORX: u32 = 1 << 29;
}

/// What each filtered register hides, as sets (the policy of the module documentation).
// Skipped by cargo-mutants: its mutants turn a `|` between two distinct single bits into `^`,
// the same set (equivalent mutants, which would count as missed), or into `&`, which the
// exact-bits tests catch like any other change of a bit: they pin every bit of every set.
// (The `mutants` crate's attribute does nothing to the code.)
#[mutants::skip]
mod hidden {
    use super::bit::*;
    /// Leaf 1 ECX: MONITOR/MWAIT, CPL-qualified debug store, VMX, SMX, EIST, TM2, PDCM,
    /// x2APIC, TSC-deadline, and OSXSAVE (which mirrors the guest's own CR4 instead).
    pub const LEAF1_ECX: u32 = MONITOR | DS_CPL | VMX | SMX | EST | TM2 | PDCM | X2APIC | TSC_DEADLINE | OSXSAVE;
    /// Leaf 1 EDX: machine check, MTRRs, debug store, ACPI thermal control, HTT, TM, PBE.
    pub const LEAF1_EDX: u32 = MCE | MTRR | MCA | DS | ACPI | HTT | TM | PBE;
    /// Leaf 7.0 ECX: WAITPKG (UMWAIT/TPAUSE) and SGX launch control.
    pub const LEAF7_ECX: u32 = WAITPKG | SGX_LC;
    /// Leaf 0x8000_0001 ECX: SVM, extended APIC space, SKINIT, watchdog, topology
    /// extensions, core performance counters, MONITORX/MWAITX.
    pub const EXT1_ECX: u32 = SVM | EXTAPIC | SKINIT | WDT | TOPOEXT | PERFCTR_CORE | MONITORX;
}

/// The guest's view of CPUID `leaf`/`sub`. `host` answers for the real CPU; `vcpu_id` becomes
/// the APIC ID; `guest_cr4_osxsave` is the guest's CR4.OSXSAVE (leaf 1 ECX bit 27 mirrors it,
/// SDM Vol. 2A CPUID); `tsc_khz` is reported in [`TSC_LEAF`].
pub fn guest_cpuid(
    leaf: u32,
    sub: u32,
    vcpu_id: u32,
    guest_cr4_osxsave: bool,
    tsc_khz: u32,
    host: impl Fn(u32, u32) -> [u32; 4],
) -> [u32; 4] {
    let max_basic = host(0, 0)[0];
    let max_ext = host(0x8000_0000, 0)[0];
    match leaf {
        0x4000_0000 => [MAX_HV_LEAF, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]],
        TSC_LEAF => [tsc_khz, 0, 0, 0],
        // The KVM-compatible clock leaves (see `pvclock`), when the TSC rate is known.
        super::pvclock::KVM_BASE..=0x4000_01ff => super::pvclock::cpuid(leaf, tsc_khz).unwrap_or([0; 4]),
        0x4000_0001..=0x4fff_ffff => [0; 4],
        // Neither basic, hypervisor nor extended: an Intel CPU answers with its highest basic
        // leaf (SDM Vol. 2A CPUID, "If a value entered for CPUID.EAX is higher than the
        // maximum input value ... the data for the highest basic information leaf is
        // returned"), which would pass a leaf this policy filters; AMD answers 0 (APM Vol. 3
        // CPUID), and so does Bastion.
        0x5000_0000..0x8000_0000 => [0; 4],
        0x8000_0000.. if leaf > max_ext => [0; 4],
        0..0x4000_0000 if leaf > max_basic => [0; 4],
        1 => {
            let [eax, ebx, ecx, edx] = host(1, 0);
            // Three disjoint fields, added: the host's bits 15:0 (brand index, CLFLUSH line
            // size), one logical processor (23:16) and the initial APIC ID (31:24).
            let ebx = (ebx & 0x0000_ffff) + (1 << 16) + ((vcpu_id & 0xff) << 24);
            let mut ecx = ecx & !hidden::LEAF1_ECX;
            if guest_cr4_osxsave {
                ecx |= bit::OSXSAVE;
            }
            ecx |= bit::HYPERVISOR;
            // The local APIC is Bastion's model, there whatever the host has.
            let edx = (edx & !hidden::LEAF1_EDX) | bit::APIC;
            [eax, ebx, ecx, edx]
        }
        // MONITOR/MWAIT, thermal/power, perf monitoring, topology: not virtualized.
        5 | 6 | 0xa | 0xb | 0x1f => [0; 4],
        7 => {
            let [eax, ebx, ecx, edx] = host(7, sub);
            if sub == 0 {
                [eax, ebx & !bit::SGX, ecx & !hidden::LEAF7_ECX, edx]
            } else {
                [eax, ebx, ecx, edx]
            }
        }
        0x8000_0001 => {
            let [eax, ebx, ecx, edx] = host(leaf, 0);
            // MONITORX/MWAITX: not intercepted, and under Bochs a guest waiting in MWAITX with its
            // timer is never woken (Linux's AMD delay loop hangs there).
            let ecx = ecx & !hidden::EXT1_ECX;
            [eax, ebx, ecx, edx]
        }
        // SVM features leaf: hidden with SVM.
        0x8000_000a => [0; 4],
        _ => host(leaf, sub),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that sets every bit of every leaf up to 0xd / 0x8000_000a.
    fn host(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            0x8000_0000 => [0x8000_000a, 0, 0, 0],
            _ => [u32::MAX; 4],
        }
    }

    #[test]
    fn leaf1_says_hypervisor_offers_an_xapic_and_hides_vmx_and_unvirtualized_features() {
        let [_, ebx, ecx, edx] = guest_cpuid(1, 0, 3, false, 2_000_000, host);
        assert_ne!(ecx & bit::HYPERVISOR, 0);
        assert_eq!(ecx & (bit::VMX | bit::SMX | bit::MONITOR | bit::X2APIC | bit::TSC_DEADLINE), 0);
        assert_eq!(edx & (bit::MTRR | bit::MCE | bit::MCA), 0);
        // SDM Vol. 2A CPUID leaf 1 EDX bit 9: an on-chip APIC, here an xAPIC without x2APIC.
        assert_ne!(edx & bit::APIC, 0);
        let no_apic_host = |l: u32, s: u32| {
            let mut r = host(l, s);
            r[3] &= !bit::APIC;
            r
        };
        assert_ne!(guest_cpuid(1, 0, 0, false, 2_000_000, no_apic_host)[3] & bit::APIC, 0, "the model is there whatever the host has");
        assert_eq!(ebx >> 24, 3, "APIC ID is the vCPU id");
        assert_eq!(ecx & bit::OSXSAVE, 0, "OSXSAVE follows the guest's CR4, which is clear");
        assert_ne!(guest_cpuid(1, 0, 0, true, 2_000_000, host)[2] & bit::OSXSAVE, 0);
    }

    #[test]
    fn hypervisor_leaves_carry_the_signature() {
        let r = guest_cpuid(0x4000_0000, 0, 0, false, 2_000_000, host);
        assert!(r[0] >= 0x4000_0001);
        let mut sig = Vec::new();
        for w in &r[1..] {
            sig.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&sig, b"Bastion\0\0\0\0\0");
        assert_eq!(guest_cpuid(0x4000_0001, 0, 0, false, 2_000_000, host), [0; 4]);
        assert!(r[0] >= TSC_LEAF);
        assert_eq!(guest_cpuid(TSC_LEAF, 0, 0, false, 1_234_567, host), [1_234_567, 0, 0, 0]);
    }

    #[test]
    fn svm_is_hidden_on_amd_leaves() {
        assert_eq!(guest_cpuid(0x8000_0001, 0, 0, false, 2_000_000, host)[2] & bit::SVM, 0);
        assert_eq!(guest_cpuid(0x8000_0001, 0, 0, false, 2_000_000, host)[2] & bit::MONITORX, 0, "MONITORX/MWAITX hidden");
        assert_eq!(guest_cpuid(0x8000_000a, 0, 0, false, 2_000_000, host), [0; 4]);
    }

    /// A host with every feature bit set and leaves up to 0x20 / 0x8000_000a.
    fn full_host(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            0x8000_0000 => [0x8000_000a, 0, 0, 0],
            _ => [u32::MAX; 4],
        }
    }

    /// A host with no feature bit set, and the same leaves.
    fn bare_host(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            0 | 0x8000_0000 => full_host(leaf, sub),
            _ => [0; 4],
        }
    }

    /// Leaf 1 bit by bit, with the SDM's bit numbers (Vol. 2A CPUID, Tables 3-10 and 3-11)
    /// written out here rather than taken from the code's constants. ECX cleared: 3 MONITOR,
    /// 4 DS-CPL, 5 VMX, 6 SMX, 7 EIST, 8 TM2, 15 PDCM, 21 x2APIC, 24 TSC-Deadline, 27 OSXSAVE
    /// (follows the guest's CR4); set: 31 (hypervisor present). EDX cleared: 7 MCE, 12 MTRR,
    /// 14 MCA, 21 DS, 22 ACPI, 28 HTT, 29 TM, 31 PBE; set: 9 APIC. EBX: bits 31:24 the initial
    /// APIC ID, 23:16 one logical processor, 15:0 the host's (brand index, CLFLUSH size).
    #[test]
    fn leaf1_exact_bits() {
        let cleared_ecx: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 15) | (1 << 21) | (1 << 24) | (1 << 27);
        let cleared_edx: u32 = (1 << 7) | (1 << 12) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 28) | (1 << 29) | (1 << 31);
        assert_eq!(guest_cpuid(1, 0, 3, false, 1, full_host), [u32::MAX, 0x0301_ffff, !cleared_ecx, !cleared_edx]);
        assert_eq!(guest_cpuid(1, 0, 3, true, 1, full_host)[2], !cleared_ecx | (1 << 27));
        assert_eq!(guest_cpuid(1, 0, 63, false, 1, bare_host), [0, 0x3f01_0000, 1 << 31, 1 << 9]);
        assert_eq!(guest_cpuid(1, 0, 0, true, 1, bare_host)[2], (1 << 31) | (1 << 27));
    }

    /// Leaf 7 subleaf 0 (SDM Vol. 2A Table 3-8): EBX bit 2 SGX, ECX bit 5 WAITPKG and bit 30
    /// SGX_LC hidden (their instructions are not virtualized: ENCLS/ENCLV and UMWAIT/TPAUSE
    /// exits answer #UD); everything else, and every other subleaf, as the host has it.
    #[test]
    fn leaf7_hides_sgx_and_waitpkg_only() {
        assert_eq!(guest_cpuid(7, 0, 0, false, 1, full_host), [u32::MAX, !(1 << 2), !((1 << 5) | (1 << 30)), u32::MAX]);
        assert_eq!(guest_cpuid(7, 1, 0, false, 1, full_host), [u32::MAX; 4]);
        assert_eq!(guest_cpuid(7, 0, 0, false, 1, bare_host), [0; 4]);
    }

    /// Leaf 0x8000_0001 ECX (APM Vol. 3 CPUID Fn8000_0001_ECX): cleared 2 SVM, 3 ExtApicSpace,
    /// 12 SKINIT, 13 WDT, 22 TopologyExtensions, 23 PerfCtrExtCore, 29 MONITORX; EAX, EBX and
    /// EDX (LM, NX, SYSCALL...) as the host has them. Leaf 0x8000_000a (SVM features): zero.
    #[test]
    fn leaf_8000_0001_exact_bits() {
        let cleared: u32 = (1 << 2) | (1 << 3) | (1 << 12) | (1 << 13) | (1 << 22) | (1 << 23) | (1 << 29);
        assert_eq!(guest_cpuid(0x8000_0001, 0, 0, false, 1, full_host), [u32::MAX, u32::MAX, !cleared, u32::MAX]);
        assert_eq!(guest_cpuid(0x8000_000a, 0, 0, false, 1, full_host), [0; 4]);
        assert_eq!(guest_cpuid(0x8000_0008, 0, 0, false, 1, full_host), [u32::MAX; 4], "other extended leaves pass");
    }

    /// The leaves of what is not virtualized are zero even where the host has them (SDM Vol.
    /// 2A: 5 MONITOR/MWAIT, 6 thermal and power, 0xA performance monitoring, 0xB and 0x1F
    /// topology); their neighbours pass.
    #[test]
    fn unvirtualized_leaves_are_zero_within_the_hosts_range() {
        for leaf in [5, 6, 0xa, 0xb, 0x1f] {
            assert_eq!(guest_cpuid(leaf, 0, 0, false, 1, full_host), [0; 4], "leaf {leaf:#x}");
        }
        for leaf in [2, 4, 8, 0xd, 0x1e, 0x20] {
            assert_eq!(guest_cpuid(leaf, 0, 0, false, 1, full_host), [u32::MAX; 4], "leaf {leaf:#x}");
        }
        assert_eq!(guest_cpuid(0x21, 0, 0, false, 1, full_host), [0; 4], "past the host's maximum");
        // The highest extended leaf itself is the host's (SDM Vol. 2A CPUID: 8000_0000H EAX is
        // the maximum input value, inclusive).
        let ext_8 = |leaf: u32, sub: u32| if leaf == 0x8000_0000 { [0x8000_0008, 0, 0, 0] } else { full_host(leaf, sub) };
        assert_eq!(guest_cpuid(0x8000_0008, 0, 0, false, 1, ext_8), [u32::MAX; 4]);
        assert_eq!(guest_cpuid(0x8000_0009, 0, 0, false, 1, ext_8), [0; 4]);
    }

    /// The hypervisor range: 0x4000_0000 names Bastion with 0x4000_0010 its highest leaf, the
    /// timing leaf gives the TSC rate, the KVM clock leaves sit at 0x4000_0100, and every other
    /// leaf up to 0x4fff_ffff is zero; so is 0x5000_0000..0x7fff_ffff (no leaves there on
    /// either vendor), which an Intel CPU would answer with its highest basic leaf.
    #[test]
    fn hypervisor_range_and_the_gap_above_it() {
        assert_eq!(guest_cpuid(0x4000_0000, 0, 0, false, 1, full_host)[0], 0x4000_0010);
        assert_eq!(guest_cpuid(0x4000_0010, 0, 0, false, 7, full_host), [7, 0, 0, 0]);
        for leaf in [0x4000_0001, 0x4000_000f, 0x4000_0011, 0x4000_00ff, 0x4000_0200, 0x4fff_ffff, 0x5000_0000, 0x7fff_ffff] {
            assert_eq!(guest_cpuid(leaf, 0, 0, false, 1, full_host), [0; 4], "leaf {leaf:#x}");
        }
        assert_eq!(guest_cpuid(0x4000_0100, 0, 0, false, 2_000_000, full_host)[1..], super::super::pvclock::KVM_SIGNATURE);
    }

    #[test]
    fn leaves_beyond_the_host_maximum_are_zero_and_others_pass_through() {
        assert_eq!(guest_cpuid(0x14, 0, 0, false, 2_000_000, host), [0; 4]);
        assert_eq!(guest_cpuid(0x8000_0010, 0, 0, false, 2_000_000, host), [0; 4]);
        assert_eq!(guest_cpuid(0xd, 1, 0, false, 2_000_000, host), [u32::MAX; 4]);
        assert_eq!(guest_cpuid(0, 0, 0, false, 2_000_000, host), host(0, 0));
        assert_eq!(guest_cpuid(0xb, 0, 0, false, 2_000_000, host), [0; 4]);
    }
}
