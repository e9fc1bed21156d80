//! Intel VT-x capability decoding (Intel SDM Vol. 3C, Appendix A "VMX Capability Reporting
//! Facility").

use alloc::vec::Vec;
use core::fmt;

/// IA32_FEATURE_CONTROL (SDM Vol. 4, MSR 0x3A).
pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3a;
/// IA32_VMX_BASIC (A.1).
pub const MSR_IA32_VMX_BASIC: u32 = 0x480;
pub const MSR_IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const MSR_IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const MSR_IA32_VMX_MISC: u32 = 0x485;
pub const MSR_IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const MSR_IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const MSR_IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const MSR_IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;

/// IA32_FEATURE_CONTROL bits: lock (bit 0) and "enable VMX outside SMX" (bit 2).
pub const FEATURE_CONTROL_LOCK: u64 = 1;
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Raw register values the kernel reads. `procbased2` is 0 when the primary controls do not
/// allow "activate secondary controls" (then the MSR may not exist, A.3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    pub feature_control: u64,
    pub basic: u64,
    /// IA32_VMX_TRUE_PINBASED_CTLS when BASIC bit 55 is set, else IA32_VMX_PINBASED_CTLS.
    pub pinbased: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS when BASIC bit 55 is set, else IA32_VMX_PROCBASED_CTLS.
    pub procbased: u64,
    pub procbased2: u64,
    pub ept_vpid_cap: u64,
    pub misc: u64,
}

/// Decoded VMX capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxCaps {
    pub vmcs_revision: u32,
    pub vmcs_size: u32,
    /// The firmware locked IA32_FEATURE_CONTROL with VMX disabled: VMXON would #GP.
    pub disabled_by_firmware: bool,
    pub true_controls: bool,
    pub io_bitmaps: bool,
    pub msr_bitmaps: bool,
    pub secondary_controls: bool,
    pub ept: bool,
    pub ept_4level: bool,
    pub ept_write_back: bool,
    pub ept_2m_pages: bool,
    pub ept_1g_pages: bool,
    pub ept_accessed_dirty: bool,
    pub invept: bool,
    pub vpid: bool,
    pub invvpid: bool,
    pub unrestricted_guest: bool,
    /// "PAUSE-loop exiting" may be set (secondary control bit 10, A.3.3; SDM Vol. 3C 25.6.13).
    pub pause_loop_exiting: bool,
    pub preemption_timer: bool,
    /// The preemption timer counts down once every 2^rate TSC ticks (A.6).
    pub preemption_timer_rate: u8,
}

/// "Allowed 1-settings" of a capability MSR are its high 32 bits (A.3).
fn allowed1(msr: u64, bit: u32) -> bool {
    (msr >> 32) & (1 << bit) != 0
}

impl VmxCaps {
    pub fn decode(m: &VmxMsrs) -> VmxCaps {
        let fc = m.feature_control;
        let secondary = allowed1(m.procbased, 31);
        let p2 = if secondary { m.procbased2 } else { 0 };
        let ept = allowed1(p2, 1);
        let vpid = allowed1(p2, 5);
        let cap = if ept || vpid { m.ept_vpid_cap } else { 0 };
        VmxCaps {
            vmcs_revision: (m.basic & 0x7fff_ffff) as u32,
            vmcs_size: ((m.basic >> 32) & 0x1fff) as u32,
            disabled_by_firmware: fc & FEATURE_CONTROL_LOCK != 0 && fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0,
            true_controls: m.basic & (1 << 55) != 0,
            io_bitmaps: allowed1(m.procbased, 25),
            msr_bitmaps: allowed1(m.procbased, 28),
            secondary_controls: secondary,
            ept,
            ept_4level: ept && cap & (1 << 6) != 0,
            ept_write_back: ept && cap & (1 << 14) != 0,
            ept_2m_pages: ept && cap & (1 << 16) != 0,
            ept_1g_pages: ept && cap & (1 << 17) != 0,
            ept_accessed_dirty: ept && cap & (1 << 21) != 0,
            invept: ept && cap & (1 << 20) != 0,
            vpid,
            invvpid: vpid && cap & (1 << 32) != 0,
            unrestricted_guest: allowed1(p2, 7),
            pause_loop_exiting: allowed1(p2, 10),
            preemption_timer: allowed1(m.pinbased, 6),
            preemption_timer_rate: (m.misc & 0x1f) as u8,
        }
    }

    /// Features Bastion needs that this CPU lacks (empty when Bastion can run guests).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let need = [
            (!self.disabled_by_firmware, "VMX enabled in IA32_FEATURE_CONTROL"),
            (self.ept && self.ept_4level && self.ept_write_back, "EPT with 4-level walk and write-back"),
            (self.unrestricted_guest, "unrestricted guest"),
            (self.io_bitmaps && self.msr_bitmaps, "I/O and MSR bitmaps"),
        ];
        for (ok, what) in need {
            if !ok {
                v.push(what);
            }
        }
        v
    }
}

fn yes_no(f: &mut fmt::Formatter<'_>, name: &str, on: bool) -> fmt::Result {
    write!(f, ", {name}: {}", if on { "yes" } else { "no" })
}

impl fmt::Display for VmxCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Intel VT-x (VMX) rev {:#x}", self.vmcs_revision)?;
        if self.disabled_by_firmware {
            write!(f, " DISABLED by firmware (IA32_FEATURE_CONTROL locked)")?;
        }
        if self.ept {
            write!(f, ", EPT [")?;
            let flags = [
                (self.ept_4level, "4-level"),
                (self.ept_write_back, "WB"),
                (self.ept_2m_pages, "2M"),
                (self.ept_1g_pages, "1G"),
                (self.ept_accessed_dirty, "A/D"),
                (self.invept, "INVEPT"),
            ];
            let mut first = true;
            for (on, name) in flags {
                if on {
                    write!(f, "{}{name}", if first { "" } else { " " })?;
                    first = false;
                }
            }
            write!(f, "]")?;
        } else {
            write!(f, ", EPT: no")?;
        }
        if self.vpid {
            write!(f, ", VPID{}", if self.invvpid { " [INVVPID]" } else { "" })?;
        } else {
            write!(f, ", VPID: no")?;
        }
        yes_no(f, "unrestricted guest", self.unrestricted_guest)?;
        yes_no(f, "pause-loop exiting", self.pause_loop_exiting)?;
        if self.preemption_timer {
            write!(f, ", preemption timer: TSC/{}", 1u64 << self.preemption_timer_rate)
        } else {
            yes_no(f, "preemption timer", false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values Bastion read (log level debug) on Bochs 2.7 `corei7_skylake_x`.
    fn skylake() -> VmxMsrs {
        VmxMsrs {
            feature_control: 0x5,
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xf7f9_fffe_0400_6172,
            procbased2: 0x0217_7fff_0000_0000,
            ept_vpid_cap: 0x0f01_0633_4141,
            misc: 0x6004_01e0,
        }
    }

    #[test]
    fn decodes_a_full_featured_cpu() {
        let c = VmxCaps::decode(&skylake());
        assert_eq!(c.vmcs_revision, 0x2b);
        assert_eq!(c.vmcs_size, 0x1000);
        assert!(c.true_controls && c.secondary_controls && c.io_bitmaps && c.msr_bitmaps);
        assert!(c.ept && c.ept_4level && c.ept_write_back && c.ept_2m_pages && c.ept_1g_pages);
        assert!(c.vpid && c.invvpid && c.invept && c.unrestricted_guest);
        assert!(c.preemption_timer);
        assert_eq!(c.preemption_timer_rate, 0);
        assert!(!c.disabled_by_firmware);
        assert!(c.missing().is_empty(), "{:?}", c.missing());
        let s = alloc::string::ToString::to_string(&c);
        assert!(s.contains("EPT [4-level WB 2M 1G"), "{s}");
        assert!(s.contains("VPID [INVVPID]") && s.contains("unrestricted guest: yes"), "{s}");
        assert!(s.contains("preemption timer: TSC/1"), "{s}");
        assert!(c.pause_loop_exiting && s.contains("pause-loop exiting: yes"), "{s}");
        let mut m = skylake();
        m.procbased2 &= !(1 << (32 + 10));
        let c = VmxCaps::decode(&m);
        assert!(!c.pause_loop_exiting && alloc::string::ToString::to_string(&c).contains("pause-loop exiting: no"));
    }

    #[test]
    fn secondary_controls_gate_ept_vpid_and_unrestricted_guest() {
        let mut m = skylake();
        m.procbased &= !(1 << 63); // "activate secondary controls" not allowed
        let c = VmxCaps::decode(&m);
        assert!(!c.ept && !c.vpid && !c.unrestricted_guest && !c.ept_2m_pages);
        let missing = c.missing();
        assert!(missing.contains(&"unrestricted guest"));
        assert!(missing.iter().any(|m| m.starts_with("EPT")));
        let s = alloc::string::ToString::to_string(&c);
        assert!(s.contains("EPT: no") && s.contains("VPID: no"), "{s}");
    }

    #[test]
    fn each_capability_is_read_from_its_own_bit() {
        // Allowed 1-settings are bits 63:32 of a control MSR (A.3). Pin-based (A.3.1): bit 6
        // preemption timer. Primary processor-based (A.3.2): 25 I/O bitmaps, 28 MSR bitmaps.
        // Secondary (A.3.3): 7 unrestricted guest, 10 PAUSE-loop exiting. IA32_VMX_EPT_VPID_CAP
        // (A.10): 6 4-level walk, 14 write-back, 16 2-MiB pages, 17 1-GiB pages, 20 INVEPT,
        // 21 accessed/dirty flags, 32 INVVPID.
        type Field = fn(&mut VmxMsrs) -> &mut u64;
        let (pin, proc, proc2, cap): (Field, Field, Field, Field) =
            (|m| &mut m.pinbased, |m| &mut m.procbased, |m| &mut m.procbased2, |m| &mut m.ept_vpid_cap);
        let cases: [(&str, Field, u32, fn(&VmxCaps) -> bool); 13] = [
            ("preemption timer", pin, 32 + 6, |c| c.preemption_timer),
            ("I/O bitmaps", proc, 32 + 25, |c| c.io_bitmaps),
            ("MSR bitmaps", proc, 32 + 28, |c| c.msr_bitmaps),
            ("unrestricted guest", proc2, 32 + 7, |c| c.unrestricted_guest),
            ("PAUSE-loop exiting", proc2, 32 + 10, |c| c.pause_loop_exiting),
            ("EPT 4-level", cap, 6, |c| c.ept_4level),
            ("EPT write-back", cap, 14, |c| c.ept_write_back),
            ("EPT 2M", cap, 16, |c| c.ept_2m_pages),
            ("EPT 1G", cap, 17, |c| c.ept_1g_pages),
            ("INVEPT", cap, 20, |c| c.invept),
            ("EPT A/D", cap, 21, |c| c.ept_accessed_dirty),
            ("INVVPID", cap, 32, |c| c.invvpid),
            ("true controls", |m| &mut m.basic, 55, |c| c.true_controls),
        ];
        let full = VmxCaps::decode(&skylake());
        for (name, field, bit, get) in cases {
            assert!(get(&full), "{name}: set on the full CPU");
            let mut m = skylake();
            *field(&mut m) &= !(1u64 << bit);
            let c = VmxCaps::decode(&m);
            assert!(!get(&c), "{name}: bit {bit} clear");
        }
        // The preemption timer's rate is IA32_VMX_MISC bits 4:0 (A.6).
        let mut m = skylake();
        m.misc = 0x6004_01e0 | 5;
        let c = VmxCaps::decode(&m);
        assert_eq!(c.preemption_timer_rate, 5);
        assert!(alloc::string::ToString::to_string(&c).contains("preemption timer: TSC/32"));
    }

    #[test]
    fn ept_and_vpid_capabilities_count_only_with_their_control() {
        // The EPT/VPID capability MSR exists when either control may be 1 (A.10); its EPT bits
        // mean nothing without EPT, its INVVPID bit nothing without VPID.
        let mut m = skylake();
        m.procbased2 &= !(1 << (32 + 1)); // EPT not allowed
        let c = VmxCaps::decode(&m);
        assert!(!c.ept && !c.ept_4level && !c.ept_write_back && !c.ept_2m_pages && !c.ept_1g_pages);
        assert!(!c.ept_accessed_dirty && !c.invept);
        assert!(c.vpid && c.invvpid, "the MSR is still read for VPID");
        let mut m = skylake();
        m.procbased2 &= !(1 << (32 + 5)); // VPID not allowed
        let c = VmxCaps::decode(&m);
        assert!(!c.vpid && !c.invvpid);
        assert!(c.ept && c.ept_4level && c.ept_write_back && c.invept, "the MSR is still read for EPT");
    }

    #[test]
    fn bastion_needs_each_of_ept_4level_write_back_and_both_bitmaps() {
        let full = VmxCaps::decode(&skylake());
        let needs: [(fn(&mut VmxCaps), &str); 5] = [
            (|c| c.ept = false, "EPT with 4-level walk and write-back"),
            (|c| c.ept_4level = false, "EPT with 4-level walk and write-back"),
            (|c| c.ept_write_back = false, "EPT with 4-level walk and write-back"),
            (|c| c.io_bitmaps = false, "I/O and MSR bitmaps"),
            (|c| c.msr_bitmaps = false, "I/O and MSR bitmaps"),
        ];
        for (clear, what) in needs {
            let mut c = full.clone();
            clear(&mut c);
            assert_eq!(c.missing(), [what]);
        }
    }

    #[test]
    fn every_vm_instruction_error_number_of_the_sdm_has_a_meaning() {
        // SDM Vol. 3C 31.4, Table 31-1: numbers 1-13, 15-20, 22-26 and 28; 14, 21 and 27 are
        // not used.
        let known = (1..=13).chain(15..=20).chain(22..=26).chain([28]);
        let mut seen = alloc::collections::BTreeSet::new();
        for n in known {
            let m = instruction_error(n);
            assert_ne!(m, "unknown VM-instruction error", "{n}");
            assert!(seen.insert(m), "{n}: {m} twice");
        }
        for n in [0, 14, 21, 27, 29, u32::MAX] {
            assert_eq!(instruction_error(n), "unknown VM-instruction error", "{n}");
        }
        assert_eq!(instruction_error(7), "VM entry with invalid control field(s)");
    }

    #[test]
    fn firmware_lock_without_vmx_is_reported() {
        let mut m = skylake();
        m.feature_control = FEATURE_CONTROL_LOCK;
        let c = VmxCaps::decode(&m);
        assert!(c.disabled_by_firmware);
        assert!(c.missing().contains(&"VMX enabled in IA32_FEATURE_CONTROL"));
        // Unlocked is fine: Bastion sets the bits itself before VMXON.
        m.feature_control = 0;
        assert!(!VmxCaps::decode(&m).disabled_by_firmware);
    }
}

/// Combines the controls Bastion wants with what a capability MSR allows (SDM Vol. 3C A.3):
/// bits set in the low half must be 1, bits clear in the high half must be 0. Returns the
/// value to write, or the wanted bits the CPU cannot set.
pub fn adjust_controls(wanted: u32, cap_msr: u64) -> Result<u32, u32> {
    let must_be_one = cap_msr as u32;
    let may_be_one = (cap_msr >> 32) as u32;
    let value = (wanted | must_be_one) & may_be_one;
    match wanted & !value {
        0 => Ok(value),
        missing => Err(missing),
    }
}

/// The meaning of a VM-instruction error number (SDM Vol. 3C 31.4, Table 31-1).
pub fn instruction_error(n: u32) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// Name of a basic exit reason (SDM Vol. 3C Appendix C), for reports.
pub fn exit_reason_name(reason: u32) -> &'static str {
    super::vmx_exit::reason_name(reason)
}

/// The guest state the entry checks look at, as read back from the VMCS.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestStateView {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rflags: u64,
    pub ia32e_mode_guest: bool,
    pub unrestricted_guest: bool,
    pub cs_ar: u32,
    pub ss_ar: u32,
    pub tr_ar: u32,
    pub ldtr_ar: u32,
    pub link_pointer: u64,
    pub activity_state: u32,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

/// Re-checks the guest-state rules of SDM Vol. 3C 27.3.1 (26.3.1 in older editions) that a
/// hypervisor typically breaks, and names each one broken. The CPU only reports "invalid guest
/// state" (exit reason 33); this turns it into something a developer can act on.
pub fn check_guest_state(g: &GuestStateView) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut fixed0 = g.cr0_fixed0;
    if g.unrestricted_guest {
        fixed0 &= !(1 + (1 << 31)); // PE and PG may be 0 with unrestricted guest
    }
    if g.cr0 & fixed0 != fixed0 || g.cr0 & !g.cr0_fixed1 != 0 {
        v.push("CR0 violates IA32_VMX_CR0_FIXED0/FIXED1");
    }
    if g.cr4 & g.cr4_fixed0 != g.cr4_fixed0 || g.cr4 & !g.cr4_fixed1 != 0 {
        v.push("CR4 violates IA32_VMX_CR4_FIXED0/FIXED1");
    }
    if g.cr0 & (1 << 31) != 0 && g.cr0 & 1 == 0 {
        v.push("CR0.PG set without CR0.PE");
    }
    let lma = g.efer & (1 << 10) != 0;
    if g.ia32e_mode_guest != lma {
        v.push("EFER.LMA differs from the 'IA-32e mode guest' entry control");
    }
    if g.ia32e_mode_guest && (g.cr0 & (1 << 31) == 0 || g.cr4 & (1 << 5) == 0) {
        v.push("IA-32e mode guest without CR0.PG and CR4.PAE");
    }
    if g.rflags & 2 == 0 || g.rflags & 0xffff_ffff_ffc0_8028 != 0 {
        v.push("RFLAGS bit 1 clear or reserved bits set");
    }
    if g.tr_ar & (1 << 16) != 0 || !matches!(g.tr_ar & 0xf, 3 | 11) || g.tr_ar & 0x80 == 0 {
        v.push("TR is unusable, not a busy TSS, or not present");
    }
    if g.ldtr_ar & (1 << 16) == 0 && (g.ldtr_ar & 0xf != 2 || g.ldtr_ar & 0x80 == 0) {
        v.push("LDTR is usable but not a present LDT");
    }
    if g.cs_ar & (1 << 16) != 0 || g.cs_ar & 0x80 == 0 {
        v.push("CS is unusable or not present");
    }
    if g.cr0 & 1 == 0 && g.unrestricted_guest && g.ss_ar & (3 << 5) != 0 {
        v.push("SS.DPL is not 0 in real mode");
    }
    if g.link_pointer != u64::MAX {
        v.push("VMCS link pointer is not all ones");
    }
    if g.activity_state > 3 {
        v.push("activity state out of range");
    }
    v
}

#[cfg(test)]
mod control_tests {
    use super::*;

    #[test]
    fn controls_take_required_ones_and_refuse_impossible_bits() {
        // Must-be-one 0x16, may-be-one 0x7f (Bochs's pin-based controls).
        assert_eq!(adjust_controls(0x9, 0x0000_007f_0000_0016), Ok(0x1f));
        assert_eq!(adjust_controls(0x80, 0x0000_007f_0000_0016), Err(0x80));
        assert_eq!(adjust_controls(0x16, 0x0000_007f_0000_0016), Ok(0x16), "wanted and required");
    }

    #[test]
    fn exit_reasons_are_named() {
        assert_eq!(exit_reason_name(48), "EPT violation");
    }

    fn real_mode_ok() -> GuestStateView {
        GuestStateView {
            cr0: 0x30,
            cr4: 0x2000,
            rflags: 2,
            unrestricted_guest: true,
            cs_ar: 0x9b,
            ss_ar: 0x93,
            tr_ar: 0x8b,
            ldtr_ar: 1 << 16,
            link_pointer: u64::MAX,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x3f_ffff,
            ..GuestStateView::default()
        }
    }

    #[test]
    fn a_valid_real_mode_state_passes() {
        assert!(check_guest_state(&real_mode_ok()).is_empty(), "{:?}", check_guest_state(&real_mode_ok()));
    }

    #[test]
    fn each_guest_state_rule_is_named_alone_when_it_alone_is_broken() {
        // SDM Vol. 3C 27.3.1.1 (control registers, RFLAGS), 27.3.1.2 (segment access rights),
        // 27.3.1.5 (activity state, VMCS link pointer).
        const CR0: &str = "CR0 violates IA32_VMX_CR0_FIXED0/FIXED1";
        const CR4: &str = "CR4 violates IA32_VMX_CR4_FIXED0/FIXED1";
        const PG: &str = "CR0.PG set without CR0.PE";
        const LMA: &str = "EFER.LMA differs from the 'IA-32e mode guest' entry control";
        const IA32E: &str = "IA-32e mode guest without CR0.PG and CR4.PAE";
        const RFLAGS: &str = "RFLAGS bit 1 clear or reserved bits set";
        const TR: &str = "TR is unusable, not a busy TSS, or not present";
        const LDTR: &str = "LDTR is usable but not a present LDT";
        const CS: &str = "CS is unusable or not present";
        const SS: &str = "SS.DPL is not 0 in real mode";
        const LINK: &str = "VMCS link pointer is not all ones";
        const ACT: &str = "activity state out of range";
        fn long(g: &mut GuestStateView) {
            g.ia32e_mode_guest = true;
            g.efer = 1 << 10;
            g.cr0 = 0x8000_0031;
            g.cr4 = 0x2020;
        }
        let cases: &[(fn(&mut GuestStateView), &[&str])] = &[
            (|_| {}, &[]),
            (|g| g.cr0 = 0x10, &[CR0]), // NE (bit 5) is fixed to 1
            (|g| g.cr0 = 0x1_0000_0030, &[CR0]), // bit 32 is fixed to 0
            (|g| g.cr4 = 0, &[CR4]), // VMXE (bit 13) is fixed to 1
            (|g| g.cr4 = 0x2000 | 1 << 22, &[CR4]),
            (|g| g.cr0 = 0x8000_0030, &[PG]),
            (|g| g.cr0 = 0x31, &[]), // protected mode, no paging
            (|g| g.efer = 1 << 10, &[LMA]),
            (|g| g.ia32e_mode_guest = true, &[LMA, IA32E]),
            (long, &[]),
            (|g| (long(g), g.cr4 = 0x2000).0, &[IA32E]),
            (|g| (long(g), g.cr0 = 0x31).0, &[IA32E]),
            (|g| g.rflags = 0, &[RFLAGS]),
            (|g| g.rflags = 2 | 1 << 3, &[RFLAGS]),
            (|g| g.rflags = 2 | 1 << 15, &[RFLAGS]),
            (|g| g.rflags = 2 | 1 << 22, &[RFLAGS]),
            (|g| g.rflags = 2 | 0x3f_7fd7 & !0x8028, &[]), // every flag that exists
            (|g| g.tr_ar = 0x83, &[]), // busy 16-bit TSS
            (|g| g.tr_ar = 1 << 16 | 0x8b, &[TR]),
            (|g| g.tr_ar = 0x89, &[TR]), // available, not busy
            (|g| g.tr_ar = 0x0b, &[TR]), // not present
            (|g| g.ldtr_ar = 0x82, &[]),
            (|g| g.ldtr_ar = 0x83, &[LDTR]),
            (|g| g.ldtr_ar = 0x02, &[LDTR]),
            (|g| g.cs_ar = 1 << 16 | 0x9b, &[CS]),
            (|g| g.cs_ar = 0x1b, &[CS]),
            (|g| g.ss_ar = 0xf3, &[SS]), // DPL 3
            (|g| g.ss_ar = 0xb3, &[SS]), // DPL 1
            (|g| (g.ss_ar = 0xf3, g.cr0 = 0x31).0, &[]), // protected mode: SS.DPL is the CPL
            (|g| g.link_pointer = 0, &[LINK]),
            (|g| g.activity_state = 3, &[]), // wait-for-SIPI
            (|g| g.activity_state = 4, &[ACT]),
        ];
        for (i, (change, want)) in cases.iter().enumerate() {
            let mut g = real_mode_ok();
            change(&mut g);
            assert_eq!(check_guest_state(&g), *want, "case {i}: {g:x?}");
        }
    }

    #[test]
    fn broken_states_are_named() {
        let mut g = real_mode_ok();
        g.cr0 = 0x10; // NE missing
        g.tr_ar = 0x89; // available, not busy... type 9 is fine? no: must be 3 or 11
        g.link_pointer = 0;
        g.efer = 1 << 10;
        let v = check_guest_state(&g);
        assert!(v.contains(&"CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"), "{v:?}");
        assert!(v.contains(&"TR is unusable, not a busy TSS, or not present"), "{v:?}");
        assert!(v.contains(&"VMCS link pointer is not all ones"), "{v:?}");
        assert!(v.contains(&"EFER.LMA differs from the 'IA-32e mode guest' entry control"), "{v:?}");
        let mut g = real_mode_ok();
        g.unrestricted_guest = false;
        assert!(check_guest_state(&g).contains(&"CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"));
    }
}
