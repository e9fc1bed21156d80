//! VMX instructions as inline assembly that reads CF/ZF in the same block (SDM Vol. 3C 31.2
//! "Conventions": VMfailInvalid sets CF, VMfailValid sets ZF and leaves an error number in the
//! VMCS). The `x86` crate's wrappers read RFLAGS in a separate asm statement, which the
//! compiler may reorder; these do not.

use core::arch::asm;

/// A failed VMX instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFail {
    /// CF=1: no current VMCS, or the operand was invalid.
    Invalid,
    /// ZF=1: the VMCS holds the error number (VM-instruction error field).
    Valid,
}

impl core::fmt::Display for VmFail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmFail::Invalid => write!(f, "VMfailInvalid"),
            VmFail::Valid => {
                let n = vmread(x86::vmx::vmcs::ro::VM_INSTRUCTION_ERROR).unwrap_or(0) as u32;
                write!(f, "VMfailValid: error {n}: {}", bastion_core::virt::vmx::instruction_error(n))
            }
        }
    }
}

fn check(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid)
    } else {
        Ok(())
    }
}

/// Enters VMX operation with the VMXON region at `phys`.
///
/// # Safety
/// CR4.VMXE must be set, CR0/CR4 must respect the fixed bits, and `phys` must be a 4 KiB
/// region holding the VMCS revision identifier.
pub unsafe fn vmxon(phys: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe { asm!("vmxon [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf) };
    check(cf, zf)
}

/// Makes the VMCS at `phys` clear (inactive, not launched).
///
/// # Safety
/// VMX operation; `phys` is a VMCS region.
pub unsafe fn vmclear(phys: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe { asm!("vmclear [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf) };
    check(cf, zf)
}

/// Makes the VMCS at `phys` current.
///
/// # Safety
/// VMX operation; `phys` is a VMCS region.
pub unsafe fn vmptrld(phys: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe { asm!("vmptrld [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf) };
    check(cf, zf)
}

/// Reads a field of the current VMCS.
pub fn vmread(field: u32) -> Result<u64, VmFail> {
    let (v, cf, zf): (u64, u8, u8);
    // SAFETY: VMREAD has no side effects; without a current VMCS it fails with CF set.
    unsafe {
        asm!("vmread {v}, {f}", "setc {cf}", "setz {zf}", f = in(reg) field as u64, v = out(reg) v, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf).map(|()| v)
}

/// Writes a field of the current VMCS.
///
/// # Safety
/// The value must be valid for the field: the guest (or the host, on exit) runs with it.
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe {
        asm!("vmwrite {f}, {v}", "setc {cf}", "setz {zf}", f = in(reg) field as u64, v = in(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf)
}

/// INVEPT/INVVPID type 2: invalidate all contexts (SDM Vol. 3C 29.4.3).
///
/// # Safety
/// VMX operation, with the instruction supported (checked from the capability MSRs).
pub unsafe fn invept_all() -> Result<(), VmFail> {
    let desc = [0u64; 2];
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 2u64, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf)
}

/// # Safety
/// As for [`invept_all`].
pub unsafe fn invvpid_all() -> Result<(), VmFail> {
    let desc = [0u64; 2];
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 2u64, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf)
}

/// INVEPT type 1: invalidate the mappings of one EPT (SDM Vol. 3C 29.4.3.1).
///
/// # Safety
/// VMX operation with INVEPT supported.
pub unsafe fn invept_single(eptp: u64) -> Result<(), VmFail> {
    let desc = [eptp, 0u64];
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 1u64, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf)
}

/// INVVPID type 1: invalidate the mappings tagged with one VPID (29.4.3.3).
///
/// # Safety
/// VMX operation with INVVPID supported; `vpid` is not 0.
pub unsafe fn invvpid_single(vpid: u16) -> Result<(), VmFail> {
    let desc = [vpid as u64, 0u64];
    let (cf, zf): (u8, u8);
    // SAFETY: per the contract.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 1u64, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf)
    };
    check(cf, zf)
}
