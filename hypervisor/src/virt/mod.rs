//! Hardware virtualization: the backend is chosen at run time from CPUID.
//!
//! `vmx/` (Intel VT-x) and `svm/` (AMD-V) are the only places that know the vendor's
//! registers and control structures. Today they read and report capabilities; running guests
//! behind one backend-neutral exit type comes next.

pub mod svm;
pub mod vmx;

use crate::cpu::Identity;
use bastion_core::virt::VirtCaps;

/// Probes the extension this CPU has.
pub fn detect(id: &Identity) -> VirtCaps {
    if id.has_vmx {
        VirtCaps::Vmx(vmx::caps::read())
    } else if id.has_svm {
        VirtCaps::Svm(svm::caps::read())
    } else {
        VirtCaps::None("CPUID reports neither VMX nor SVM")
    }
}
