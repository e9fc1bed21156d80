//! AMD-V capability decoding (AMD APM Vol. 2, 15.4 "Enabling SVM" and CPUID Fn8000_000A).

use alloc::vec::Vec;
use core::fmt;

/// VM_CR (APM Vol. 2, 15.30.1). Bochs does not implement it: read it fault-tolerantly.
pub const MSR_VM_CR: u32 = 0xc001_0114;
/// VM_CR.SVMDIS: firmware disabled SVM; EFER.SVME cannot be set.
pub const VM_CR_SVMDIS: u64 = 1 << 4;

/// Raw values the kernel reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvmRegs {
    /// CPUID Fn8000_000A EAX, EBX, EDX.
    pub eax: u32,
    pub ebx: u32,
    pub edx: u32,
    /// VM_CR, or `None` when reading it faulted.
    pub vm_cr: Option<u64>,
}

/// Decoded SVM capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvmCaps {
    pub revision: u8,
    pub asids: u32,
    pub disabled_by_firmware: bool,
    pub vm_cr_readable: bool,
    pub npt: bool,
    pub lbr_virt: bool,
    pub nrip_save: bool,
    pub vmcb_clean: bool,
    pub flush_by_asid: bool,
    pub decode_assists: bool,
    /// The PAUSE intercept may carry a filter count (Fn8000_000A EDX[10]; APM Vol. 2 15.14.4).
    pub pause_filter: bool,
    /// ... and a filter threshold in cycles between PAUSEs (EDX[12]).
    pub pause_filter_threshold: bool,
}

impl SvmCaps {
    pub fn decode(r: &SvmRegs) -> SvmCaps {
        let bit = |n: u32| r.edx & (1 << n) != 0;
        SvmCaps {
            revision: (r.eax & 0xff) as u8,
            asids: r.ebx,
            disabled_by_firmware: r.vm_cr.is_some_and(|v| v & VM_CR_SVMDIS != 0),
            vm_cr_readable: r.vm_cr.is_some(),
            npt: bit(0),
            lbr_virt: bit(1),
            nrip_save: bit(3),
            vmcb_clean: bit(5),
            flush_by_asid: bit(6),
            decode_assists: bit(7),
            pause_filter: bit(10),
            pause_filter_threshold: bit(12),
        }
    }

    /// Features Bastion needs that this CPU lacks.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.disabled_by_firmware {
            v.push("SVM enabled (VM_CR.SVMDIS is set)");
        }
        if !self.npt {
            v.push("nested paging (NPT)");
        }
        // ASID 0 belongs to the host (APM 15.16): a guest needs at least ASID 1.
        if self.asids < 2 {
            v.push("at least one guest ASID");
        }
        v
    }
}

impl fmt::Display for SvmCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(f, "AMD-V (SVM) rev {}", self.revision)?;
        if self.disabled_by_firmware {
            write!(f, " DISABLED by firmware (VM_CR.SVMDIS)")?;
        }
        write!(
            f,
            ", NPT: {}, nRIP save: {}, ASIDs: {}, VMCB clean bits: {}, flush by ASID: {}, decode assists: {}, PAUSE filter: {}",
            yn(self.npt),
            yn(self.nrip_save),
            self.asids,
            yn(self.vmcb_clean),
            yn(self.flush_by_asid),
            yn(self.decode_assists),
            match (self.pause_filter, self.pause_filter_threshold) {
                (true, true) => "yes, with threshold",
                (true, false) => "yes",
                _ => "no",
            }
        )?;
        if !self.vm_cr_readable {
            write!(f, " (VM_CR not implemented)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn qemu_tcg_shape() {
        // QEMU 7.2 TCG `-cpu qemu64,+svm,+npt`: NPT only, 16 ASIDs.
        let c = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 16, edx: 1, vm_cr: Some(0) });
        assert!(c.npt && !c.nrip_save && !c.vmcb_clean);
        assert_eq!(c.asids, 16);
        assert!(c.missing().is_empty());
        let s = c.to_string();
        assert!(s.contains("NPT: yes") && s.contains("nRIP save: no") && s.contains("ASIDs: 16"), "{s}");
        assert!(!c.pause_filter && s.contains("PAUSE filter: no"), "{s}");
    }

    #[test]
    fn missing_npt_and_firmware_disable_are_reported() {
        let c = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 1, edx: 0, vm_cr: Some(VM_CR_SVMDIS) });
        assert!(c.disabled_by_firmware);
        let m = c.missing();
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(c.to_string().contains("DISABLED"));
    }

    #[test]
    fn only_vm_cr_svmdis_disables_and_one_guest_asid_is_enough() {
        // VM_CR (MSR C001_0114h) bit 4 is SVMDIS, bit 3 LOCK (APM Vol. 2 15.30.1).
        assert_eq!(VM_CR_SVMDIS, 0x10);
        let locked = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 2, edx: 1, vm_cr: Some(0x08) });
        assert!(!locked.disabled_by_firmware, "LOCK alone does not disable SVM");
        // ASID 0 is the host's, so 2 ASIDs leave one for guests (APM 15.16).
        assert!(locked.missing().is_empty(), "{:?}", locked.missing());
        let one = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 1, edx: 1, vm_cr: Some(0) });
        assert_eq!(one.missing(), ["at least one guest ASID"]);
    }

    #[test]
    fn the_revision_is_eax_bits_7_to_0() {
        // CPUID Fn8000_000A EAX[7:0] SvmRev; bits 31:8 are reserved (APM Vol. 3, E.4.9).
        let c = SvmCaps::decode(&SvmRegs { eax: 0xab01, ebx: 16, edx: 1, vm_cr: Some(0) });
        assert_eq!(c.revision, 1);
        assert!(c.to_string().starts_with("AMD-V (SVM) rev 1,"), "{c}");
    }

    #[test]
    fn unreadable_vm_cr_is_not_a_disable() {
        // Bochs 2.7 `ryzen` as Bastion read it: VM_CR raises #GP, which must not read as
        // "disabled".
        let c = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 0x8000, edx: 0x44f, vm_cr: None });
        assert!(!c.disabled_by_firmware && c.npt && c.nrip_save && c.flush_by_asid && !c.decode_assists);
        assert!(c.pause_filter && !c.pause_filter_threshold && c.to_string().contains("PAUSE filter: yes (VM_CR"));
        let t = SvmCaps::decode(&SvmRegs { eax: 1, ebx: 16, edx: 1 << 10 | 1 << 12 | 1, vm_cr: Some(0) });
        assert!(t.to_string().contains("PAUSE filter: yes, with threshold"), "{t}");
        assert_eq!(c.asids, 32768);
        assert!(c.missing().is_empty());
        assert!(c.to_string().contains("VM_CR not implemented"));
    }
}
