//! Hardware-virtualization capabilities, decoded from raw CPUID/MSR values.
//!
//! The kernel reads the registers (`hypervisor/src/virt/{vmx,svm}`); the decoding lives here so
//! it is unit-tested on the host with values recorded from real CPUs and emulators.

pub mod svm;
pub mod svm_exit;
pub mod tlb;
pub mod vmx;
pub mod vmx_exit;

/// What the CPU offers, as far as Bastion cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtCaps {
    Vmx(vmx::VmxCaps),
    Svm(svm::SvmCaps),
    /// Neither extension is usable; the string says why (shown in the banner).
    None(&'static str),
}

impl core::fmt::Display for VirtCaps {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtCaps::Vmx(c) => c.fmt(f),
            VirtCaps::Svm(c) => c.fmt(f),
            VirtCaps::None(why) => write!(f, "no hardware virtualization: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_the_extension_or_why_there_is_none() {
        assert_eq!(VirtCaps::None("VT-x is locked off").to_string(), "no hardware virtualization: VT-x is locked off");
        let svm = svm::SvmCaps::decode(&svm::SvmRegs::default());
        assert_eq!(VirtCaps::Svm(svm.clone()).to_string(), svm.to_string());
        let vmx = vmx::VmxCaps::decode(&vmx::VmxMsrs::default());
        assert_eq!(VirtCaps::Vmx(vmx.clone()).to_string(), vmx.to_string());
    }
}
