//! Reads the VMX capability MSRs (Intel SDM Vol. 3C Appendix A); decoding is in
//! `bastion_core::virt::vmx`.

use crate::cpu::rdmsr_safe;
use bastion_core::virt::vmx::*;

pub fn read() -> VmxCaps {
    let r = |msr| rdmsr_safe(msr).unwrap_or(0);
    let basic = r(MSR_IA32_VMX_BASIC);
    // With BASIC bit 55 set, the TRUE_* MSRs report the real allowed settings (A.2).
    let true_ctls = basic & (1 << 55) != 0;
    let procbased = r(if true_ctls { MSR_IA32_VMX_TRUE_PROCBASED_CTLS } else { MSR_IA32_VMX_PROCBASED_CTLS });
    let secondary = procbased & (1 << 63) != 0;
    let msrs = VmxMsrs {
        feature_control: r(MSR_IA32_FEATURE_CONTROL),
        basic,
        pinbased: r(if true_ctls { MSR_IA32_VMX_TRUE_PINBASED_CTLS } else { MSR_IA32_VMX_PINBASED_CTLS }),
        procbased,
        procbased2: if secondary { r(MSR_IA32_VMX_PROCBASED_CTLS2) } else { 0 },
        ept_vpid_cap: if secondary { r(MSR_IA32_VMX_EPT_VPID_CAP) } else { 0 },
        misc: r(MSR_IA32_VMX_MISC),
    };
    log::debug!("VMX MSRs: {msrs:x?}");
    VmxCaps::decode(&msrs)
}
