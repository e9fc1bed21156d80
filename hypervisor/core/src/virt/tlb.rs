//! When a vCPU's cached guest translations must be flushed before it enters on a CPU.
//!
//! The TLB caches a guest's linear translations tagged with its VPID (VMX, SDM Vol. 3C
//! 29.1) or ASID (SVM, APM 15.16), per physical CPU. Bastion gives one tag to all vCPUs of a
//! VM, and tags wrap when there are more guests than the CPU has ASIDs (QEMU offers 16), so an
//! entry in one CPU's TLB under a tag may have been made by another vCPU than the one entering
//! now, with another CR3 and other page tables. A guest keeps only its own vCPU's TLB
//! coherent: its INVLPG and MOV to CR3 act on the CPU the vCPU runs on at that moment, so
//! entries a vCPU left on a CPU it has since left are stale once it changed its page tables
//! elsewhere. Hence the rule (KVM's, which gives a vCPU a fresh ASID when it moves between
//! CPUs or the CPU's ASIDs were recycled): before a vCPU enters on a CPU, flush its tag there
//! unless that vCPU was the last to enter with this tag on this CPU *and* the last CPU this
//! vCPU entered on is this one.
//!
//! No crate models this; it is Bastion's scheduling, kept here so the rule is host-tested.

use alloc::collections::BTreeMap;

/// A vCPU as the TLB knows it: a serial number unique for the whole run (the vCPUs of a reset
/// guest are new ones), its VM's tag and the CPU it last entered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuTlb {
    serial: u64,
    tag: u16,
    last_cpu: Option<usize>,
}

impl VcpuTlb {
    pub fn new(serial: u64, tag: u16) -> Self {
        VcpuTlb { serial, tag, last_cpu: None }
    }
}

/// One physical CPU's record of which vCPU entered last with each tag.
#[derive(Debug, Default)]
pub struct TagOwners {
    last: BTreeMap<u16, u64>,
}

impl TagOwners {
    pub const fn new() -> Self {
        TagOwners { last: BTreeMap::new() }
    }

    /// Records that `vcpu` enters on CPU `cpu` (the CPU this record belongs to) and says
    /// whether its tag must be flushed there first.
    pub fn enter(&mut self, cpu: usize, vcpu: &mut VcpuTlb) -> bool {
        let previous = self.last.insert(vcpu.tag, vcpu.serial);
        let moved = vcpu.last_cpu.replace(cpu) != Some(cpu);
        previous != Some(vcpu.serial) || moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_of_a_vcpu_on_a_cpu_flushes() {
        // A new vCPU's tag may have served an earlier VM on this CPU (tags are reused).
        let mut cpu0 = TagOwners::new();
        let mut v = VcpuTlb::new(1, 5);
        assert!(cpu0.enter(0, &mut v));
        let mut w = VcpuTlb::new(2, 5);
        assert!(cpu0.enter(0, &mut w), "a newer vCPU with a reused tag");
    }

    #[test]
    fn a_vcpu_that_stays_keeps_its_translations() {
        let mut cpu0 = TagOwners::new();
        let mut v = VcpuTlb::new(1, 5);
        cpu0.enter(0, &mut v);
        assert!(!cpu0.enter(0, &mut v));
        assert!(!cpu0.enter(0, &mut v));
    }

    #[test]
    fn other_tags_in_between_leave_a_vcpus_entries_valid() {
        // Another VM's entries are tagged apart (SDM 29.1, APM 15.16).
        let mut cpu0 = TagOwners::new();
        let (mut v, mut other) = (VcpuTlb::new(1, 5), VcpuTlb::new(2, 6));
        cpu0.enter(0, &mut v);
        assert!(cpu0.enter(0, &mut other));
        assert!(!cpu0.enter(0, &mut v));
        assert!(!cpu0.enter(0, &mut other));
    }

    #[test]
    fn a_sibling_vcpu_with_the_same_tag_in_between_flushes() {
        // Two vCPUs of one SMP guest share the tag but not CR3 or page tables.
        let mut cpu0 = TagOwners::new();
        let (mut a, mut b) = (VcpuTlb::new(1, 5), VcpuTlb::new(2, 5));
        cpu0.enter(0, &mut a);
        assert!(cpu0.enter(0, &mut b));
        assert!(cpu0.enter(0, &mut a));
        assert!(!cpu0.enter(0, &mut a));
    }

    #[test]
    fn a_vcpu_back_from_another_cpu_flushes_even_if_no_one_else_ran_here() {
        // Its INVLPGs while it ran on CPU 1 never reached CPU 0's TLB.
        let (mut cpu0, mut cpu1) = (TagOwners::new(), TagOwners::new());
        let mut v = VcpuTlb::new(1, 5);
        assert!(cpu0.enter(0, &mut v));
        assert!(cpu1.enter(1, &mut v));
        assert!(cpu0.enter(0, &mut v), "back on CPU 0");
        assert!(!cpu0.enter(0, &mut v));
        assert!(cpu1.enter(1, &mut v), "back on CPU 1");
    }
}
