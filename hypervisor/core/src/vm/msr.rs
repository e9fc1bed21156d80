//! Which MSRs a guest may touch, and what the emulated ones answer.
//!
//! Three classes:
//! - **passed through** (not intercepted): the segment bases, SYSCALL/SYSENTER targets, PAT,
//!   TSC_AUX, and TSC reads. The hardware switches some of them at every entry and exit (VMCS
//!   guest/host fields, VMLOAD/VMSAVE); the kernel's per-vCPU context switches the rest (STAR,
//!   LSTAR, CSTAR, SFMASK and KERNEL_GS_BASE on VMX, TSC_AUX on both) whenever a different
//!   vCPU gets the CPU, so a guest only ever reads its own values;
//! - **emulated** (intercepted, answered here): EFER (checked by `regs::check_efer_write`;
//!   on SVM VMRUN needs EFER.SVME set in the guest state, APM 15.5.1, so the guest's own view
//!   is kept beside it), TSC writes (they move the vCPU's TSC offset), and a few
//!   identification MSRs that guests read at boot;
//! - **everything else**: #GP, as a CPU without that MSR would answer.

/// IA32_EFER.
pub const EFER: u32 = 0xc000_0080;
/// Bit 0 (written `1`: `1 << 0` and its mutant `1 >> 0` are the same value).
pub const EFER_SCE: u64 = 1;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;

pub const IA32_TSC: u32 = 0x10;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const SYSENTER_CS: u32 = 0x174;
pub const SYSENTER_ESP: u32 = 0x175;
pub const SYSENTER_EIP: u32 = 0x176;
pub const STAR: u32 = 0xc000_0081;
pub const LSTAR: u32 = 0xc000_0082;
pub const CSTAR: u32 = 0xc000_0083;
pub const SFMASK: u32 = 0xc000_0084;
pub const FS_BASE: u32 = 0xc000_0100;
pub const GS_BASE: u32 = 0xc000_0101;
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const TSC_AUX: u32 = 0xc000_0103;
pub const AMD_VM_CR: u32 = 0xc001_0114;
/// K8/family 10h "Interrupt Pending Message" (BKDG for family 0Fh, MSRC001_0055): Linux reads
/// it on CPUs with AMD erratum 400 (family 0Fh from model 0x40, family 10h) to see whether C1E
/// is active, and logs an unchecked-MSR warning with a stack trace if it faults.
pub const AMD_INT_PENDING_MSG: u32 = 0xc001_0055;

/// MSRs the guest reads and writes directly.
pub const PASSTHROUGH: &[u32] = &[
    SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP, IA32_PAT, STAR, LSTAR, CSTAR, SFMASK, FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX,
];
/// MSRs the guest reads directly but whose writes are intercepted.
pub const READ_ONLY_PASSTHROUGH: &[u32] = &[IA32_TSC];

/// Per-vCPU state of emulated MSRs.
#[derive(Debug, Clone, Default)]
pub struct MsrState {
    misc_enable: u64,
    /// What the guest last wrote to kvmclock's MSRs (read back as written, as KVM does).
    pub kvm_system_time: u64,
    pub kvm_wall_clock: u64,
}

/// The outcome of an emulated access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrResult {
    Value(u64),
    Done,
    /// Bastion's answer is #GP.
    Fault,
    /// EFER: the common handler checks the value and asks the backend.
    Efer,
    /// IA32_TSC: the common handler reads or moves the vCPU's TSC offset.
    Tsc,
    /// A kvmclock MSR (`pvclock`): the common handler checks that the clock is offered and
    /// writes the structure into guest memory.
    KvmClock,
    /// MSR_KVM_PV_EOI_EN (`pv_eoi`): offered with the KVM leaves, like kvmclock.
    PvEoi,
    /// IA32_APIC_BASE: per vCPU, kept by the guest's interrupt chip (`devices::irq`), which
    /// the common handler reaches through `DeviceIo`.
    ApicBase,
}

impl MsrState {
    pub fn new() -> Self {
        // Fast strings enabled, the value firmware usually leaves (SDM Vol. 4 Table 2-2).
        MsrState { misc_enable: 1, ..MsrState::default() }
    }

    pub fn read(&self, msr: u32) -> MsrResult {
        match msr {
            EFER => MsrResult::Efer,
            IA32_TSC => MsrResult::Tsc,
            // Locked, VMX off: what a guest of a hypervisor without nested VMX should see.
            IA32_FEATURE_CONTROL => MsrResult::Value(1),
            IA32_BIOS_SIGN_ID => MsrResult::Value(0),
            IA32_MISC_ENABLE => MsrResult::Value(self.misc_enable),
            // LOCK | SVMDIS: SVM disabled by "firmware" (APM 15.30.1).
            AMD_VM_CR => MsrResult::Value(0x18),
            // No C1E (bits 28:27 clear) and no pending-message routing: the vCPU's idle is a
            // VM exit, never the CPU's C1E. Writes still fault (nothing to configure).
            AMD_INT_PENDING_MSG => MsrResult::Value(0),
            super::pvclock::MSR_WALL_CLOCK_NEW | super::pvclock::MSR_SYSTEM_TIME_NEW => MsrResult::KvmClock,
            crate::devices::irq::MSR_APIC_BASE => MsrResult::ApicBase,
            super::pv_eoi::MSR_PV_EOI_EN => MsrResult::PvEoi,
            _ => MsrResult::Fault,
        }
    }

    pub fn write(&mut self, msr: u32, value: u64) -> MsrResult {
        match msr {
            // Checked against the vCPU's mode and CPUID by `regs::check_efer_write`.
            EFER => MsrResult::Efer,
            IA32_TSC => MsrResult::Tsc,
            // The microcode-update trigger: accepted and ignored.
            IA32_BIOS_SIGN_ID => MsrResult::Done,
            IA32_MISC_ENABLE => {
                self.misc_enable = value;
                MsrResult::Done
            }
            super::pvclock::MSR_WALL_CLOCK_NEW | super::pvclock::MSR_SYSTEM_TIME_NEW => MsrResult::KvmClock,
            crate::devices::irq::MSR_APIC_BASE => MsrResult::ApicBase,
            super::pv_eoi::MSR_PV_EOI_EN => MsrResult::PvEoi,
            _ => MsrResult::Fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_msrs_fault_both_ways() {
        let mut s = MsrState::new();
        for msr in [0x4b56_4d02, 0xc001_1fff, 0x0] {
            assert_eq!(s.read(msr), MsrResult::Fault, "{msr:#x}");
            assert_eq!(s.write(msr, 0), MsrResult::Fault, "{msr:#x}");
        }
    }

    /// BKDG family 0Fh MSRC001_0055: C1eOnCmpHalt/SmiOnCmpHalt (bits 28:27) clear means no C1E,
    /// which is all Linux's erratum-400 check asks; the register is not writable here.
    #[test]
    fn amd_interrupt_pending_message_reads_zero_and_is_read_only() {
        let mut s = MsrState::new();
        assert_eq!(s.read(AMD_INT_PENDING_MSG), MsrResult::Value(0));
        assert_eq!(s.write(AMD_INT_PENDING_MSG, 1 << 27), MsrResult::Fault);
    }

    #[test]
    fn feature_control_reports_locked_without_vmx_and_is_read_only() {
        let mut s = MsrState::new();
        assert_eq!(s.read(IA32_FEATURE_CONTROL), MsrResult::Value(1));
        assert_eq!(s.write(IA32_FEATURE_CONTROL, 5), MsrResult::Fault);
    }

    #[test]
    fn efer_and_tsc_go_to_the_common_handler() {
        let mut s = MsrState::new();
        assert_eq!(s.write(EFER, EFER_LME | EFER_SCE | EFER_NXE), MsrResult::Efer);
        assert_eq!(s.read(EFER), MsrResult::Efer);
        // IA32_TSC (0x10) is writable on every CPU (SDM Vol. 3A 18.17): never #GP.
        assert_eq!(s.write(0x10, 1234), MsrResult::Tsc);
        assert_eq!(s.read(0x10), MsrResult::Tsc);
    }

    #[test]
    fn misc_enable_keeps_what_was_written() {
        let mut s = MsrState::new();
        assert_eq!(s.write(IA32_MISC_ENABLE, 0x801), MsrResult::Done);
        assert_eq!(s.read(IA32_MISC_ENABLE), MsrResult::Value(0x801));
    }

    /// The architectural numbers, written out from the manuals rather than the constants: SDM
    /// Vol. 4 Table 2-2 (IA32_TSC 10H, IA32_APIC_BASE 1BH, IA32_FEATURE_CONTROL 3AH,
    /// IA32_BIOS_SIGN_ID 8BH, IA32_SYSENTER_CS/ESP/EIP 174H-176H, IA32_MISC_ENABLE 1A0H,
    /// IA32_PAT 277H, IA32_EFER C000_0080H, STAR/LSTAR/CSTAR/FMASK C000_0081H-84H, FS/GS/
    /// KERNEL_GS base C000_0100H-102H, TSC_AUX C000_0103H); APM Vol. 2 15.30.1 (VM_CR
    /// C001_0114H); KVM's kvmclock and PV EOI MSRs (Documentation/virt/kvm/x86/msr.rst:
    /// 4b564d00, 4b564d01, 4b564d04). EFER bits (SDM Vol. 3A 2.2.1; APM Vol. 2 3.1.7): SCE 0,
    /// LME 8, LMA 10, NXE 11, SVME 12.
    #[test]
    fn msr_numbers_and_bits_are_the_manuals() {
        let mut s = MsrState::new();
        // Passed through exactly these: the segment bases, SYSCALL/SYSENTER, PAT, TSC_AUX.
        let mut pass: Vec<u32> = PASSTHROUGH.to_vec();
        pass.sort();
        assert_eq!(pass, [0x174, 0x175, 0x176, 0x277, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0100, 0xc000_0101, 0xc000_0102, 0xc000_0103]);
        assert_eq!(READ_ONLY_PASSTHROUGH, [0x10]);
        assert_eq!((EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME), (1, 0x100, 0x400, 0x800, 0x1000));
        assert_eq!(s.read(0xc000_0080), MsrResult::Efer);
        assert_eq!(s.write(0xc000_0080, 0), MsrResult::Efer);
        assert_eq!((s.read(0x10), s.write(0x10, 0)), (MsrResult::Tsc, MsrResult::Tsc));
        assert_eq!((s.read(0x1b), s.write(0x1b, 0)), (MsrResult::ApicBase, MsrResult::ApicBase));
        for kvm in [0x4b56_4d00, 0x4b56_4d01] {
            assert_eq!((s.read(kvm), s.write(kvm, 0)), (MsrResult::KvmClock, MsrResult::KvmClock), "{kvm:#x}");
        }
        assert_eq!((s.read(0x4b56_4d04), s.write(0x4b56_4d04, 0)), (MsrResult::PvEoi, MsrResult::PvEoi));
        // IA32_FEATURE_CONTROL: bit 0 lock, bits 1-2 (VMX inside/outside SMX) clear.
        assert_eq!(s.read(0x3a), MsrResult::Value(1));
        // VM_CR: bit 3 LOCK and bit 4 SVMDIS, as firmware that disabled SVM leaves it.
        assert_eq!(s.read(0xc001_0114), MsrResult::Value((1 << 3) | (1 << 4)));
        assert_eq!(s.write(0xc001_0114, 0), MsrResult::Fault, "VM_CR is locked");
        // The microcode revision reads 0 (none loaded); the update trigger is accepted.
        assert_eq!((s.read(0x8b), s.write(0x8b, 0x1234)), (MsrResult::Value(0), MsrResult::Done));
        // MISC_ENABLE starts with bit 0 (fast-string operation) set, as firmware leaves it.
        assert_eq!(s.read(0x1a0), MsrResult::Value(1));
        // The neighbours of each emulated MSR are unknown: #GP.
        for m in [0xf, 0x11, 0x1a, 0x1c, 0x39, 0x3b, 0x8a, 0x8c, 0x19f, 0x1a1, 0xc000_007f, 0xc000_0085, 0xc000_0104, 0xc001_0113, 0xc001_0115, 0x4b56_4cff, 0x4b56_4d02, 0x4b56_4d05] {
            assert_eq!((s.read(m), s.write(m, 0)), (MsrResult::Fault, MsrResult::Fault), "{m:#x}");
        }
    }

    #[test]
    fn passthrough_lists_exclude_efer_and_emulated_msrs() {
        for m in [EFER, IA32_FEATURE_CONTROL, IA32_MISC_ENABLE, AMD_VM_CR] {
            assert!(!PASSTHROUGH.contains(&m) && !READ_ONLY_PASSTHROUGH.contains(&m));
        }
    }
}
