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
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
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
