//! Reads the SVM capabilities (CPUID Fn8000_000A, VM_CR; AMD APM Vol. 2 15.4); decoding is
//! in `bastion_core::virt::svm`.

use crate::cpu::{cpuid, rdmsr_safe};
use bastion_core::virt::svm::*;

pub fn read() -> SvmCaps {
    let (eax, ebx, _, edx) = cpuid(0x8000_000a, 0);
    // Bochs does not implement VM_CR and raises #GP: a missing MSR is not a disable.
    let regs = SvmRegs { eax, ebx, edx, vm_cr: rdmsr_safe(MSR_VM_CR) };
    log::debug!("SVM regs: {regs:x?}");
    SvmCaps::decode(&regs)
}
