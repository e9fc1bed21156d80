//! Intel VT-x backend: VMXON, one VMCS per vCPU with EPT, VPID and unrestricted guest, the
//! VM-entry assembly, and the translation of VMX exit reasons into `bastion_core::vm::Exit`
//! (Intel SDM Vol. 3C, chapters 24-31).

pub mod caps;
mod insn;

use super::context::{GuestContext, HwSwitched};
use crate::memory;
use crate::vm::Vm;
use alloc::format;
use alloc::string::String;
use bastion_core::vm::fault_report::FaultState;
use bastion_core::virt::vmx::{self as vcaps, adjust_controls, VmxCaps};
use bastion_core::virt::vmx_exit::{self, VmxExitInfo, ENTRY_FAILURE};
use bastion_core::vm::msr::{self, EFER_LMA};
use bastion_core::vm::regs::{Cr4, GuestFeatures, ModeView};
use bastion_core::loader::InitialState;
use bastion_core::vm::{Exit, Gprs, Seg, Vcpu, VmExit};
use core::arch::{asm, global_asm};
use insn::{vmclear, vmptrld, vmread, vmwrite, vmxon, VmFail};
use x86::vmx::vmcs::{control, guest, host, ro};
use x86_64::registers::model_specific::Msr;

const MSR_CR0_FIXED0: u32 = 0x486;
const MSR_CR0_FIXED1: u32 = 0x487;
const MSR_CR4_FIXED0: u32 = 0x488;
const MSR_CR4_FIXED1: u32 = 0x489;

// Control bits (SDM Vol. 3C 25.6 / 25.7 / 25.8, "VM-execution/exit/entry control fields"):
// the `x86` crate's bitflags types.
use x86::vmx::vmcs::control::{
    EntryControls as EntryCtl, ExitControls as ExitCtl, PinbasedControls as Pin, PrimaryControls as Proc, SecondaryControls as Proc2,
};

/// Pause-loop exiting: the most TSC cycles between two PAUSEs of one spin loop, and how long
/// the loop may spin before it exits (SDM Vol. 3C 25.6.13; KVM's defaults).
const PLE_GAP: u64 = 128;
const PLE_WINDOW: u64 = 4096;

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;

/// VMX operation on this CPU.
pub struct Vmx {
    caps: VmxCaps,
    revision: u32,
    pin: u64,
    proc1: u64,
    proc2: u64,
    exit: u64,
    entry: u64,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
}

fn rdmsr(m: u32) -> u64 {
    crate::cpu::rdmsr_safe(m).unwrap_or(0)
}

impl Vmx {
    /// Enters VMX operation (SDM Vol. 3C 24.7 "Enabling and Entering VMX Operation").
    pub fn enable(caps: &VmxCaps) -> Result<Vmx, String> {
        if let Some(missing) = caps.missing().first() {
            return Err(format!("VMX lacks {missing}"));
        }
        let basic = rdmsr(vcaps::MSR_IA32_VMX_BASIC);
        let t = basic & (1 << 55) != 0;
        let v = Vmx {
            caps: caps.clone(),
            revision: (basic & 0x7fff_ffff) as u32,
            pin: rdmsr(if t { vcaps::MSR_IA32_VMX_TRUE_PINBASED_CTLS } else { vcaps::MSR_IA32_VMX_PINBASED_CTLS }),
            proc1: rdmsr(if t { vcaps::MSR_IA32_VMX_TRUE_PROCBASED_CTLS } else { vcaps::MSR_IA32_VMX_PROCBASED_CTLS }),
            proc2: rdmsr(vcaps::MSR_IA32_VMX_PROCBASED_CTLS2),
            exit: rdmsr(if t { 0x48f } else { 0x483 }),
            entry: rdmsr(if t { 0x490 } else { 0x484 }),
            cr0_fixed0: rdmsr(MSR_CR0_FIXED0),
            cr0_fixed1: rdmsr(MSR_CR0_FIXED1),
            cr4_fixed0: rdmsr(MSR_CR4_FIXED0),
            cr4_fixed1: rdmsr(MSR_CR4_FIXED1),
        };
        // IA32_FEATURE_CONTROL: if the firmware left it unlocked, enable VMX outside SMX and
        // lock it (24.7); locked without VMX was refused by `missing()` above.
        let fc = rdmsr(vcaps::MSR_IA32_FEATURE_CONTROL);
        if fc & vcaps::FEATURE_CONTROL_LOCK == 0 {
            // SAFETY: writing the documented enable and lock bits.
            unsafe {
                Msr::new(vcaps::MSR_IA32_FEATURE_CONTROL)
                    .write(fc | vcaps::FEATURE_CONTROL_LOCK | vcaps::FEATURE_CONTROL_VMX_OUTSIDE_SMX)
            };
        }
        let region = memory::alloc_frame_zeroed().ok_or("no memory for the VMXON region")?;
        // SAFETY: the region is ours; CR0/CR4 are adjusted to the fixed bits VMX requires
        // (24.8 "Restrictions on VMX Operation"), which include CR4.VMXE.
        unsafe {
            *(memory::phys_to_virt(region) as *mut u32) = v.revision;
            let cr0: u64;
            let cr4: u64;
            asm!("mov {}, cr0", out(reg) cr0);
            asm!("mov {}, cr4", out(reg) cr4);
            asm!("mov cr0, {}", in(reg) (cr0 | v.cr0_fixed0) & v.cr0_fixed1);
            asm!("mov cr4, {}", in(reg) (cr4 | v.cr4_fixed0) & v.cr4_fixed1);
            vmxon(region).map_err(|e| format!("VMXON failed: {e:?}"))?;
            if v.caps.invept {
                let _ = insn::invept_all();
            }
            if v.caps.invvpid {
                let _ = insn::invvpid_all();
            }
        }
        Ok(v)
    }

    pub fn create_vcpu(&self, vm: &Vm) -> Result<VmxVcpu, String> {
        let vmcs = memory::alloc_frame_zeroed().ok_or("no memory for a VMCS")?;
        // I/O bitmaps A and B (ports 0-0x7fff, 0x8000-0xffff) and the MSR bitmap: a set bit
        // means "exit" (25.6.4, 25.6.9). Everything exits except the pass-through MSRs.
        let io = memory::alloc_zeroed(2, 4096).ok_or("no memory for the I/O bitmaps")?;
        let msrs = memory::alloc_zeroed(1, 4096).ok_or("no memory for the MSR bitmap")?;
        // SAFETY: all three were just allocated for this vCPU.
        unsafe {
            core::ptr::write_bytes(memory::phys_to_virt(io), 0xff, 2 * 4096);
            core::ptr::write_bytes(memory::phys_to_virt(msrs), 0xff, 4096);
            *(memory::phys_to_virt(vmcs) as *mut u32) = self.revision;
        }
        vm.allow_ports(io, 2);
        for &m in msr::PASSTHROUGH {
            msr_bitmap_allow(msrs, m, true, true);
        }
        for &m in msr::READ_ONLY_PASSTHROUGH {
            msr_bitmap_allow(msrs, m, true, false);
        }
        // The virtual-APIC page holds the guest's TPR (offset 0x80) for MOV CR8 (SDM Vol. 3C
        // 30.1.1); zeroed = TPR 0, as at reset.
        let vapic = memory::alloc_frame_zeroed().ok_or("no memory for the virtual-APIC page")?;
        let ctx = GuestContext::new(HwSwitched { cr2_dr6: false, syscall_msrs: false })?;
        // CR4 bits the hardware would accept but the guest's CPUID does not offer (VMXE, MCE…)
        // are owned by Bastion too, so a write that sets one exits and the common handler
        // answers #GP; the others the CPU checks itself.
        let guest = GuestFeatures::from_cpuid(|l, s| {
            bastion_core::vm::cpuid::guest_cpuid(l, s, 0, true, 0, |l, s| {
                let (a, b, c, d) = crate::cpu::cpuid(l, s);
                [a, b, c, d]
            })
        });
        let cr4_mask = self.cr4_fixed0 | (self.cr4_fixed1 & !guest.cr4.bits()) | Cr4::VMXE.bits();
        let mut vcpu = VmxVcpu {
            vmcs,
            io,
            msrs,
            vapic,
            ctx,
            gprs: Gprs::default(),
            launched: false,
            cr0_fixed0: self.cr0_fixed0,
            cr0_fixed1: self.cr0_fixed1,
            cr4_fixed0: self.cr4_fixed0,
            cr4_fixed1: self.cr4_fixed1,
            cr0_mask: self.cr0_fixed0 & !(CR0_PE | CR0_PG),
            cr4_mask,
            io_insn_info: rdmsr(vcaps::MSR_IA32_VMX_BASIC) & (1 << 54) != 0,
            ram: vm.npt.view(),
            vpid: vm.tag,
            eptp: vm.npt.eptp(),
            timer_rate: self.caps.preemption_timer.then_some(self.caps.preemption_timer_rate),
            invept: self.caps.invept,
            invvpid: self.caps.invvpid,
            entry_event: 0,
            // Both controls' allowed-1 bits (the capability MSRs' high halves, A.3.1, A.3.2).
            virtual_nmis: (self.pin >> 32) & u64::from(Pin::VIRTUAL_NMIS.bits()) != 0
                && (self.proc1 >> 32) & u64::from(Proc::NMI_WINDOW_EXITING.bits()) != 0,
        };
        // SAFETY: the VMCS region was just initialised with the revision identifier.
        unsafe {
            vmclear(vmcs).map_err(|e| format!("VMCLEAR: {e}"))?;
            vmptrld(vmcs).map_err(|e| format!("VMPTRLD: {e}"))?;
        }
        self.setup_vmcs(vm, &vcpu).map_err(|(field, e)| format!("VMWRITE of field {field:#x} failed: {e}"))?;
        let st = vm.entry.initial_state();
        (vcpu.gprs.rax, vcpu.gprs.rbx, vcpu.gprs.rsi) = (st.rax, st.rbx, st.rsi);
        log::debug!(
            "VMX: guest CR0 {:#x} (shadow {:#x}, mask {:#x}), CR4 {:#x}, fixed0/1 CR0 {:#x}/{:#x}",
            r(guest::CR0),
            r(control::CR0_READ_SHADOW),
            r(control::CR0_GUEST_HOST_MASK),
            r(guest::CR4),
            self.cr0_fixed0,
            self.cr0_fixed1
        );
        // Leave it clear, so whichever CPU runs it first can load it (25.11.3).
        // SAFETY: the VMCS is ours and current on this CPU.
        unsafe { vmclear(vmcs) }.map_err(|e| format!("VMCLEAR: {e}"))?;
        vcpu.launched = false;
        Ok(vcpu)
    }

    fn setup_vmcs(&self, vm: &Vm, v: &VmxVcpu) -> Result<(), (u32, VmFail)> {
        let w = |field: u32, value: u64| -> Result<(), (u32, VmFail)> {
            // SAFETY: each value below follows the SDM's rules for its field.
            unsafe { vmwrite(field, value) }.map_err(|e| (field, e))
        };
        let ctl = |wanted: u32, cap: u64, what: &str| -> Result<u64, (u32, VmFail)> {
            adjust_controls(wanted, cap).map(|x| x as u64).map_err(|missing| {
                log::error!("VMX: the CPU cannot set {what} controls {missing:#x}");
                (0, VmFail::Invalid)
            })
        };
        // Optional secondary features are enabled when allowed, so guests can use RDTSCP,
        // INVPCID and XSAVES (without the control they raise #UD, 25.6.2).
        // Pause-loop exiting too: a vCPU spinning on a lock held by a vCPU that is not running
        // gives up its slice (Exit::PauseLoop) instead of burning it (25.6.13).
        let optional = (Proc2::ENABLE_RDTSCP | Proc2::ENABLE_INVPCID | Proc2::ENABLE_XSAVES_XRSTORS | Proc2::PAUSE_LOOP_EXITING).bits()
            & (self.proc2 >> 32) as u32;
        // The VMX-preemption timer ends each time slice without a host interrupt (25.5.1);
        // external interrupts (kicks from other CPUs) exit too and are left pending for the
        // host IDT (no "acknowledge interrupt on exit"), as on SVM.
        let timer = if self.caps.preemption_timer { Pin::VMX_PREEMPTION_TIMER } else { Pin::empty() };
        // Virtual NMIs, where the CPU has them: the VMCS tracks whether the guest's NMI handler
        // still runs (interruptibility bit 3, cleared by its IRET) and NMI-window exiting says
        // when an NMI for the guest can go in (25.3, 26.6.1.2).
        let vnmi = if v.virtual_nmis { Pin::VIRTUAL_NMIS } else { Pin::empty() };
        w(control::PINBASED_EXEC_CONTROLS, ctl((Pin::EXTERNAL_INTERRUPT_EXITING | Pin::NMI_EXITING | vnmi | timer).bits(), self.pin, "pin-based")?)?;
        w(
            control::PRIMARY_PROCBASED_EXEC_CONTROLS,
            ctl(
                // TPR shadow: the guest's MOV CR8 reads and writes the virtual TPR in its own
                // virtual-APIC page instead of the host's TPR (SDM Vol. 3C 30.1.2); TSC
                // offsetting: the guest's TSC is the host's plus its own offset (26.3). RDPMC
                // exits (25.6.2) and is #GP (Exit::Rdpmc): no counters are virtualized.
                (Proc::HLT_EXITING
                    | Proc::RDPMC_EXITING
                    | Proc::MWAIT_EXITING
                    | Proc::MONITOR_EXITING
                    | Proc::USE_IO_BITMAPS
                    | Proc::USE_MSR_BITMAPS
                    | Proc::SECONDARY_CONTROLS
                    | Proc::USE_TPR_SHADOW
                    | Proc::USE_TSC_OFFSETTING)
                    .bits(),
                self.proc1,
                "processor-based",
            )?,
        )?;
        w(
            control::SECONDARY_PROCBASED_EXEC_CONTROLS,
            ctl((Proc2::ENABLE_EPT | Proc2::ENABLE_VPID | Proc2::UNRESTRICTED_GUEST).bits() | optional, self.proc2, "secondary")?,
        )?;
        w(
            control::VMEXIT_CONTROLS,
            ctl(
                (ExitCtl::HOST_ADDRESS_SPACE_SIZE | ExitCtl::SAVE_IA32_PAT | ExitCtl::LOAD_IA32_PAT | ExitCtl::SAVE_IA32_EFER | ExitCtl::LOAD_IA32_EFER).bits(),
                self.exit,
                "VM-exit",
            )?,
        )?;
        w(control::VMENTRY_CONTROLS, ctl((EntryCtl::LOAD_IA32_PAT | EntryCtl::LOAD_IA32_EFER).bits(), self.entry, "VM-entry")?)?;
        if optional & Proc2::PAUSE_LOOP_EXITING.bits() != 0 {
            // PAUSEs at most PLE_GAP TSC cycles apart form one loop; the loop exits once it
            // has lasted PLE_WINDOW cycles (SDM Vol. 3C 25.6.13, 26.1.3). KVM's defaults: a
            // gap of 128 cycles, a window of 4096.
            w(control::PLE_GAP, PLE_GAP)?;
            w(control::PLE_WINDOW, PLE_WINDOW)?;
        }
        w(control::EXCEPTION_BITMAP, 0)?;
        w(control::IO_BITMAP_A_ADDR_FULL, v.io)?;
        w(control::IO_BITMAP_B_ADDR_FULL, v.io + 4096)?;
        w(control::MSR_BITMAPS_ADDR_FULL, v.msrs)?;
        w(control::EPTP_FULL, vm.npt.eptp())?;
        w(control::VIRT_APIC_ADDR_FULL, v.vapic)?;
        w(control::TPR_THRESHOLD, 0)?;
        w(control::TSC_OFFSET_FULL, 0)?;
        w(control::VPID, vm.tag as u64)?;
        w(control::CR3_TARGET_COUNT, 0)?;
        w(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
        // Guest/host masks: the CR0/CR4 bits VMX forces to 1 (NE, VMXE) are owned by Bastion;
        // the guest reads its own values from the shadows and a write that changes them
        // exits (25.6.6), where the common handler decides.
        w(control::CR0_GUEST_HOST_MASK, v.cr0_mask)?;
        w(control::CR4_GUEST_HOST_MASK, v.cr4_mask)?;

        write_host_state().map_err(|e| (0, e))?;

        // Guest state: what the loader decided (real mode at reset for a flat image, thanks to
        // unrestricted guest, 27.3.1.2; 64-bit mode for a bzImage).
        write_guest_state(v, &vm.entry.initial_state())?;
        w(guest::LINK_PTR_FULL, u64::MAX)?;
        Ok(())
    }
}

/// Loads a whole start state into the current VMCS (SDM Vol. 3C 25.4.1): at creation, and
/// when an application processor starts at its STARTUP vector.
fn write_guest_state(v: &VmxVcpu, st: &InitialState) -> Result<(), (u32, VmFail)> {
    let w = |field: u32, value: u64| -> Result<(), (u32, VmFail)> {
        // SAFETY: each value below follows the SDM's rules for its field.
        unsafe { vmwrite(field, value) }.map_err(|e| (field, e))
    };
    for (s, b, l, ar, seg) in [
        (guest::ES_SELECTOR, guest::ES_BASE, guest::ES_LIMIT, guest::ES_ACCESS_RIGHTS, st.data),
        (guest::SS_SELECTOR, guest::SS_BASE, guest::SS_LIMIT, guest::SS_ACCESS_RIGHTS, st.data),
        (guest::DS_SELECTOR, guest::DS_BASE, guest::DS_LIMIT, guest::DS_ACCESS_RIGHTS, st.data),
        (guest::FS_SELECTOR, guest::FS_BASE, guest::FS_LIMIT, guest::FS_ACCESS_RIGHTS, st.data),
        (guest::GS_SELECTOR, guest::GS_BASE, guest::GS_LIMIT, guest::GS_ACCESS_RIGHTS, st.data),
        (guest::CS_SELECTOR, guest::CS_BASE, guest::CS_LIMIT, guest::CS_ACCESS_RIGHTS, st.cs),
    ] {
        w(s, seg.selector as u64)?;
        w(b, seg.base())?;
        w(l, seg.limit() as u64)?;
        w(ar, seg.desc.vmx_access_rights() as u64)?;
    }
    w(guest::LDTR_SELECTOR, 0)?;
    w(guest::LDTR_BASE, 0)?;
    w(guest::LDTR_LIMIT, 0xffff)?;
    w(guest::LDTR_ACCESS_RIGHTS, 1 << 16)?; // unusable
    w(guest::TR_SELECTOR, 0)?;
    w(guest::TR_BASE, 0)?;
    w(guest::TR_LIMIT, 0xffff)?;
    w(guest::TR_ACCESS_RIGHTS, 0x8b)?; // present, busy 32/64-bit TSS: TR must be usable
    w(guest::GDTR_BASE, st.gdt_base)?;
    w(guest::GDTR_LIMIT, st.gdt_limit as u64)?;
    w(guest::IDTR_BASE, 0)?;
    w(guest::IDTR_LIMIT, 0xffff)?;
    w(guest::CR0, v.real_cr0(st.cr0))?;
    w(control::CR0_READ_SHADOW, st.cr0)?;
    w(guest::CR4, v.real_cr4(st.cr4))?;
    w(control::CR4_READ_SHADOW, st.cr4)?;
    w(guest::CR3, st.cr3)?;
    w(guest::DR7, 0x400)?;
    w(guest::RSP, st.rsp)?;
    w(guest::RIP, st.rip)?;
    w(guest::RFLAGS, st.rflags)?;
    w(guest::IA32_EFER_FULL, st.efer)?;
    // "IA-32e mode guest" must equal the EFER.LMA being loaded (27.3.1.1).
    let entry = r(control::VMENTRY_CONTROLS) & !(EntryCtl::IA32E_MODE_GUEST.bits() as u64);
    let lma = if st.efer & EFER_LMA != 0 { EntryCtl::IA32E_MODE_GUEST.bits() as u64 } else { 0 };
    w(control::VMENTRY_CONTROLS, entry | lma)?;
    w(guest::IA32_PAT_FULL, 0x0007_0406_0007_0406)?;
    w(guest::IA32_DEBUGCTL_FULL, 0)?;
    w(guest::IA32_SYSENTER_CS, 0)?;
    w(guest::IA32_SYSENTER_ESP, 0)?;
    w(guest::IA32_SYSENTER_EIP, 0)?;
    w(guest::INTERRUPTIBILITY_STATE, 0)?;
    w(guest::ACTIVITY_STATE, 0)?;
    w(guest::PENDING_DBG_EXCEPTIONS, 0)?;
    // No event carried over into the new state.
    w(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
    Ok(())
}

/// Host state (25.5, 28.5): what a VM exit returns to. Written whenever a vCPU is loaded on a
/// CPU, because the GDT, TSS and segment bases differ from CPU to CPU.
fn write_host_state() -> Result<(), VmFail> {
    let w = |field: u32, value: u64| -> Result<(), VmFail> {
        // SAFETY: the values are this CPU's own control registers, selectors and bases.
        unsafe { vmwrite(field, value) }
    };
        let (cr0, cr3, cr4): (u64, u64, u64);
        // SAFETY: reading control registers.
        unsafe {
            asm!("mov {}, cr0", out(reg) cr0);
            asm!("mov {}, cr3", out(reg) cr3);
            asm!("mov {}, cr4", out(reg) cr4);
        }
        w(host::CR0, cr0)?;
        w(host::CR3, cr3)?;
        w(host::CR4, cr4)?;
        let sel = |s: u16| (s & !7) as u64; // RPL and TI must be 0 (26.2.3)
        let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
        // SAFETY: reading segment selectors.
        unsafe {
            asm!("mov {0:x}, cs", out(reg) cs);
            asm!("mov {0:x}, ss", out(reg) ss);
            asm!("mov {0:x}, ds", out(reg) ds);
            asm!("mov {0:x}, es", out(reg) es);
            asm!("mov {0:x}, fs", out(reg) fs);
            asm!("mov {0:x}, gs", out(reg) gs);
            asm!("str {0:x}", out(reg) tr);
        }
        w(host::CS_SELECTOR, sel(cs))?;
        w(host::SS_SELECTOR, sel(ss))?;
        w(host::DS_SELECTOR, sel(ds))?;
        w(host::ES_SELECTOR, sel(es))?;
        w(host::FS_SELECTOR, sel(fs))?;
        w(host::GS_SELECTOR, sel(gs))?;
        w(host::TR_SELECTOR, sel(tr))?;
        let gdt = x86_64::instructions::tables::sgdt();
        let idt = x86_64::instructions::tables::sidt();
        w(host::GDTR_BASE, gdt.base.as_u64())?;
        w(host::IDTR_BASE, idt.base.as_u64())?;
        w(host::TR_BASE, tss_base(gdt.base.as_u64(), tr))?;
        w(host::FS_BASE, rdmsr(msr::FS_BASE))?;
        w(host::GS_BASE, rdmsr(msr::GS_BASE))?;
        w(host::IA32_SYSENTER_CS, rdmsr(msr::SYSENTER_CS))?;
        w(host::IA32_SYSENTER_ESP, rdmsr(msr::SYSENTER_ESP))?;
        w(host::IA32_SYSENTER_EIP, rdmsr(msr::SYSENTER_EIP))?;
        w(host::IA32_EFER_FULL, rdmsr(msr::EFER))?;
        w(host::IA32_PAT_FULL, rdmsr(msr::IA32_PAT))?;
        w(host::RIP, bastion_vmx_exit as *const () as u64)?;
        // HOST_RSP is written by the entry assembly, right before VMLAUNCH/VMRESUME.
    Ok(())
}

/// The TSS base from its 16-byte GDT descriptor (SDM Vol. 3A 8.2.3).
fn tss_base(gdt_base: u64, tr: u16) -> u64 {
    let d = (gdt_base + (tr & !7) as u64) as *const u64;
    // SAFETY: TR indexes a TSS descriptor in the loaded GDT.
    let (lo, hi) = unsafe { (d.read(), d.add(1).read()) };
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32)
}

/// Clears the exit bits of `msr` in the 4 KiB MSR bitmap (SDM 25.6.9: read-low at 0,
/// read-high at 1 KiB, write-low at 2 KiB, write-high at 3 KiB; low = 0-0x1fff,
/// high = 0xc000_0000-0xc000_1fff).
fn msr_bitmap_allow(bitmap: u64, msr: u32, read: bool, write: bool) {
    let (base, off) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (1024, msr - 0xc000_0000),
        _ => return,
    };
    let p = memory::phys_to_virt(bitmap);
    let (byte, bit) = (off as usize / 8, off % 8);
    // SAFETY: inside the 4 KiB bitmap owned by this vCPU.
    unsafe {
        if read {
            *p.add(base + byte) &= !(1 << bit);
        }
        if write {
            *p.add(base + 2048 + byte) &= !(1 << bit);
        }
    }
}

pub struct VmxVcpu {
    vmcs: u64,
    io: u64,
    msrs: u64,
    /// The virtual-APIC page (TPR shadow).
    vapic: u64,
    /// What VMX does not switch (XSAVE state, DRs, CR2, SYSCALL MSRs, TSC_AUX).
    ctx: GuestContext,
    /// The CPU reports address size and segment of INS/OUTS (IA32_VMX_BASIC[54]).
    io_insn_info: bool,
    /// The guest's RAM, to read instructions the hardware did not decode.
    pub(super) ram: bastion_core::npt::NptView,
    gprs: Gprs,
    launched: bool,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    cr0_mask: u64,
    cr4_mask: u64,
    vpid: u16,
    eptp: u64,
    /// Virtual NMIs and NMI-window exiting are on (the CPU has both).
    virtual_nmis: bool,
    /// Preemption-timer rate (TSC >> rate), if the CPU has the timer.
    timer_rate: Option<u8>,
    invept: bool,
    invvpid: bool,
    /// The VM-entry interruption information at the last entry (an entry clears its valid
    /// bit), for the report of a fault that ends the guest.
    entry_event: u64,
}

// bastion_vmx_run(gprs: *mut Gprs, launched: u64) -> u64
// Returns 0 after a VM exit, 1 for VMfailInvalid, 2 for VMfailValid. The general registers
// are not part of the VMCS (27.3, 28.5): we load the guest's before entry and save them at
// the exit label, which is HOST_RIP; HOST_RSP is written here so the exit lands on this frame.
global_asm!(
    ".global bastion_vmx_run",
    ".global bastion_vmx_exit",
    "bastion_vmx_run:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rdi",
    "    mov rdx, 0x6c14", // HOST_RSP
    "    vmwrite rdx, rsp",
    "    jc 3f",
    "    jz 3f",
    "    cmp rsi, 0",
    "    mov rax, [rdi + 0]",
    "    mov rbx, [rdi + 8]",
    "    mov rcx, [rdi + 16]",
    "    mov rdx, [rdi + 24]",
    "    mov rsi, [rdi + 32]",
    "    mov rbp, [rdi + 48]",
    "    mov r8,  [rdi + 56]",
    "    mov r9,  [rdi + 64]",
    "    mov r10, [rdi + 72]",
    "    mov r11, [rdi + 80]",
    "    mov r12, [rdi + 88]",
    "    mov r13, [rdi + 96]",
    "    mov r14, [rdi + 104]",
    "    mov r15, [rdi + 112]",
    "    mov rdi, [rdi + 40]",
    "    jne 2f",
    "    vmlaunch",
    "    jmp 3f",
    "2:",
    "    vmresume",
    "3:",
    // Entry failed: CF or ZF tells which (31.2).
    "    mov eax, 1",
    "    jc 4f",
    "    mov eax, 2",
    "4:",
    "    pop rdi",
    "    jmp 5f",
    "bastion_vmx_exit:",
    "    push rax",
    "    mov rax, [rsp + 8]",
    "    mov [rax + 8], rbx",
    "    mov [rax + 16], rcx",
    "    mov [rax + 24], rdx",
    "    mov [rax + 32], rsi",
    "    mov [rax + 40], rdi",
    "    mov [rax + 48], rbp",
    "    mov [rax + 56], r8",
    "    mov [rax + 64], r9",
    "    mov [rax + 72], r10",
    "    mov [rax + 80], r11",
    "    mov [rax + 88], r12",
    "    mov [rax + 96], r13",
    "    mov [rax + 104], r14",
    "    mov [rax + 112], r15",
    "    pop rbx",
    "    mov [rax], rbx",
    "    pop rdi",
    "    xor eax, eax",
    "5:",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
);

unsafe extern "C" {
    fn bastion_vmx_run(gprs: *mut Gprs, launched: u64) -> u64;
    fn bastion_vmx_exit();
}

fn r(field: u32) -> u64 {
    vmread(field).unwrap_or(0)
}

fn wr(field: u32, value: u64) {
    // SAFETY: callers write architecturally valid values for the guest; a refused write is
    // logged (it would surface as a failed entry with a reason).
    if let Err(e) = unsafe { vmwrite(field, value) } {
        log::error!("VMWRITE {field:#x} = {value:#x} failed: {e}");
    }
}

impl VmxVcpu {
    fn real_cr0(&self, guest: u64) -> u64 {
        (guest | (self.cr0_fixed0 & !(CR0_PE | CR0_PG))) & self.cr0_fixed1
    }

    fn real_cr4(&self, guest: u64) -> u64 {
        (guest | self.cr4_fixed0) & self.cr4_fixed1
    }

    /// Loads the VMCS and the vCPU's context on the calling CPU for a time slice.
    /// Restarts the vCPU in `st` (an application processor at its STARTUP vector): every
    /// register of the new state, general registers zeroed, nothing pending. The VMCS must be
    /// current (between `begin_slice` and `end_slice`).
    pub fn load_state(&mut self, st: &InitialState) -> Result<(), String> {
        write_guest_state(self, st).map_err(|(field, e)| format!("VMWRITE of field {field:#x} failed: {e}"))?;
        self.gprs = Gprs { rax: st.rax, rbx: st.rbx, rsi: st.rsi, ..Gprs::default() };
        self.request_interrupt_window(false);
        Ok(())
    }

    pub fn begin_slice(&mut self, flush: bool) -> Result<(), String> {
        // SAFETY: this VMCS belongs to this vCPU and is clear (end_slice or create_vcpu).
        unsafe { vmptrld(self.vmcs) }.map_err(|e| format!("VMPTRLD: {e}"))?;
        write_host_state().map_err(|e| format!("host state: {e}"))?;
        if flush {
            // SAFETY: single-context invalidations of this vCPU's own tags (29.4.3.3). The
            // EPT context too: a new VM's EPT root may sit where a freed one was.
            unsafe {
                if self.invvpid {
                    let _ = insn::invvpid_single(self.vpid);
                }
                if self.invept {
                    let _ = insn::invept_single(self.eptp);
                }
            }
        }
        self.ctx.load();
        Ok(())
    }

    /// Saves the context and releases the VMCS so another CPU may load it next (VMCLEAR
    /// writes its cached state back).
    pub fn end_slice(&mut self) {
        self.ctx.save();
        // SAFETY: the VMCS is ours and current.
        let _ = unsafe { vmclear(self.vmcs) };
        self.launched = false;
    }

    /// Whether slices end by the VMX-preemption timer (else the caller arms a host timer).
    pub fn has_preemption_timer(&self) -> bool {
        self.timer_rate.is_some()
    }

    /// Runs the guest until its next exit; with the preemption timer, at the latest after
    /// `budget_ns` (then an `Exit::Interrupted`).
    pub fn run(&mut self, budget_ns: u64) -> VmExit {
        if let Some(rate) = self.timer_rate {
            let ticks = (budget_ns as u128 * crate::time::tsc_khz() as u128 / 1_000_000) >> rate;
            wr(guest::VMX_PREEMPTION_TIMER_VALUE, ticks.clamp(1, u32::MAX as u128) as u64);
        }
        self.entry_event = r(control::VMENTRY_INTERRUPTION_INFO_FIELD);
        // SAFETY: the VMCS is current and complete; the assembly restores the host registers.
        let rc = unsafe { bastion_vmx_run(&mut self.gprs, self.launched as u64) };
        match rc {
            0 => {}
            1 => return VmExit::event(Exit::EntryFailed(format!("{} failed: {}", self.entry_insn(), VmFail::Invalid))),
            _ => return VmExit::event(Exit::EntryFailed(format!("{} failed: {}", self.entry_insn(), VmFail::Valid))),
        }
        self.launched = true;
        self.sync_ia32e_mode();
        self.reinject_interrupted_event();
        self.decode_exit()
    }

    /// An event whose delivery the exit interrupted (an interrupt Bastion injected, an
    /// exception the guest raised) is reported in the IDT-vectoring information (SDM Vol. 3C
    /// 28.2.4) and must be injected again at the next entry, or the guest loses it — a lost
    /// external interrupt leaves its 8259 line in service for good. The entry field takes the
    /// same format (25.8.3) without bit 12 (undefined here, reserved there); software
    /// interrupts and exceptions need their instruction length back (27.6.1.1).
    fn reinject_interrupted_event(&mut self) {
        let idt = r(ro::IDT_VECTORING_INFO);
        if idt >> 31 & 1 == 0 {
            return;
        }
        if idt & (1 << 11) != 0 {
            wr(control::VMENTRY_EXCEPTION_ERR_CODE, r(ro::IDT_VECTORING_ERR_CODE));
        }
        if matches!((idt >> 8) & 7, 4..=6) {
            wr(control::VMENTRY_INSTRUCTION_LEN, r(ro::VMEXIT_INSTRUCTION_LEN));
        }
        wr(control::VMENTRY_INTERRUPTION_INFO_FIELD, idt & !(1 << 12));
    }

    /// The state a guest's fatal fault left, for its stop report: where it was, its control
    /// registers (as the guest sees them) and IDT, the event whose delivery the exit
    /// interrupted (IDT-vectoring information, SDM Vol. 3C 28.2.4) and the one Bastion
    /// injected at the last entry (VM-entry interruption information, 25.8.3).
    pub fn fault_state(&self) -> FaultState {
        FaultState {
            rip: r(guest::RIP),
            rsp: r(guest::RSP),
            rflags: r(guest::RFLAGS),
            cs: r(guest::CS_SELECTOR) as u16,
            cs_base: r(guest::CS_BASE),
            ss_base: r(guest::SS_BASE),
            mode: self.mode(),
            idt_base: r(guest::IDTR_BASE),
            idt_limit: r(guest::IDTR_LIMIT) as u32,
            delivering: r(ro::IDT_VECTORING_INFO),
            delivering_error: r(ro::IDT_VECTORING_ERR_CODE) as u32,
            cr2: self.ctx.cr2_live(),
            nested_root: r(control::EPTP_FULL) & 0x000f_ffff_ffff_f000,
            own_nested_root: self.ram.root(),
            injected: self.entry_event,
            caveat: None,
        }
    }

    fn entry_insn(&self) -> &'static str {
        if self.launched {
            "VMRESUME"
        } else {
            "VMLAUNCH"
        }
    }

    /// Keeps the "IA-32e mode guest" entry control equal to the guest's EFER.LMA, which the
    /// guest changes by itself when it turns paging on or off with EFER.LME set (27.3.1.1
    /// requires them to agree at the next entry).
    fn sync_ia32e_mode(&mut self) {
        let lma = r(guest::IA32_EFER_FULL) & EFER_LMA != 0;
        let entry = r(control::VMENTRY_CONTROLS);
        let want = if lma { entry | EntryCtl::IA32E_MODE_GUEST.bits() as u64 } else { entry & !(EntryCtl::IA32E_MODE_GUEST.bits() as u64) };
        if want != entry {
            wr(control::VMENTRY_CONTROLS, want);
        }
    }

    /// Reads the exit-information fields and lets bastion-core decode them.
    fn decode_exit(&mut self) -> VmExit {
        let reason = r(ro::EXIT_REASON) as u32;
        if reason & ENTRY_FAILURE != 0 {
            return VmExit::event(Exit::EntryFailed(self.explain_entry_failure(reason & 0xffff)));
        }
        let mut info = VmxExitInfo { reason, rip: r(guest::RIP), insn_len: r(ro::VMEXIT_INSTRUCTION_LEN), ..Default::default() };
        // The other fields only for the reasons whose decoding uses them: CPUID, MSR, HLT and
        // VMCALL exits stay short.
        if vmx_exit::needs_details(reason & 0xffff) {
            info.qualification = r(ro::EXIT_QUALIFICATION);
            let d = vmx_exit::details(reason & 0xffff, info.qualification);
            if d.intr_info {
                info.intr_info = r(ro::VMEXIT_INTERRUPTION_INFO) as u32;
            }
            if d.guest_cr0 {
                info.guest_cr0 = (r(guest::CR0) & !self.cr0_mask) | (r(control::CR0_READ_SHADOW) & self.cr0_mask);
            }
            if d.string_io {
                let cs_ar = r(guest::CS_ACCESS_RIGHTS);
                info.insn_info = r(ro::VMEXIT_INSTRUCTION_INFO) as u32;
                info.io_insn_info = self.io_insn_info;
                info.long_mode = r(guest::IA32_EFER_FULL) & EFER_LMA != 0 && cs_ar & (1 << 13) != 0;
                info.cs_db = cs_ar & (1 << 14) != 0;
            }
            if d.gpa {
                info.gpa = r(ro::GUEST_PHYSICAL_ADDR_FULL);
            }
        }
        let gprs = self.gprs;
        let ram = self.ram;
        vmx_exit::decode(&info, &|n| gprs.by_encoding(n, r(guest::RSP)), &mut || {
            super::fetch_insn(ram, &self.mode(), r(guest::CS_BASE), info.rip)
        })
    }

    fn explain_entry_failure(&self, reason: u32) -> String {
        let mut s = format!("exit reason {reason} ({})", vcaps::exit_reason_name(reason));
        if reason == 33 {
            let view = vcaps::GuestStateView {
                cr0: r(guest::CR0),
                cr4: r(guest::CR4),
                efer: r(guest::IA32_EFER_FULL),
                rflags: r(guest::RFLAGS),
                ia32e_mode_guest: r(control::VMENTRY_CONTROLS) & EntryCtl::IA32E_MODE_GUEST.bits() as u64 != 0,
                unrestricted_guest: r(control::SECONDARY_PROCBASED_EXEC_CONTROLS) & Proc2::UNRESTRICTED_GUEST.bits() as u64 != 0,
                cs_ar: r(guest::CS_ACCESS_RIGHTS) as u32,
                ss_ar: r(guest::SS_ACCESS_RIGHTS) as u32,
                tr_ar: r(guest::TR_ACCESS_RIGHTS) as u32,
                ldtr_ar: r(guest::LDTR_ACCESS_RIGHTS) as u32,
                link_pointer: r(guest::LINK_PTR_FULL),
                activity_state: r(guest::ACTIVITY_STATE) as u32,
                cr0_fixed0: self.cr0_fixed0,
                cr0_fixed1: self.cr0_fixed1,
                cr4_fixed0: self.cr4_fixed0,
                cr4_fixed1: self.cr4_fixed1,
            };
            let broken = vcaps::check_guest_state(&view);
            if broken.is_empty() {
                s.push_str("; no known guest-state rule is broken (see SDM 27.3.1)");
            } else {
                s.push_str(": ");
                s.push_str(&broken.join("; "));
            }
        }
        s
    }

    pub fn destroy(self) {
        // SAFETY: the VMCS is ours; clearing it flushes its cached state before the frame is
        // reused (25.11.3).
        let _ = unsafe { vmclear(self.vmcs) };
        memory::free(self.io, 2);
        memory::free(self.msrs, 1);
        memory::free(self.vapic, 1);
        memory::free(self.vmcs, 1);
        self.ctx.free();
    }
}

impl Vcpu for VmxVcpu {
    fn gprs(&mut self) -> &mut Gprs {
        &mut self.gprs
    }
    fn rsp(&self) -> u64 {
        r(guest::RSP)
    }
    fn rip(&self) -> u64 {
        r(guest::RIP)
    }
    fn rflags(&self) -> u64 {
        r(guest::RFLAGS)
    }
    fn set_rsp(&mut self, value: u64) {
        wr(guest::RSP, value);
    }
    fn set_rflags(&mut self, value: u64) {
        wr(guest::RFLAGS, value);
    }
    fn segment_db(&self, seg: Seg) -> bool {
        // Access rights: D/B is bit 14 (SDM Vol. 3C 25.4.1, Table 25-2).
        let ar = r(match seg {
            Seg::Es => guest::ES_ACCESS_RIGHTS,
            Seg::Cs => guest::CS_ACCESS_RIGHTS,
            Seg::Ss => guest::SS_ACCESS_RIGHTS,
            Seg::Ds => guest::DS_ACCESS_RIGHTS,
            Seg::Fs => guest::FS_ACCESS_RIGHTS,
            Seg::Gs => guest::GS_ACCESS_RIGHTS,
        });
        ar & (1 << 14) != 0
    }
    fn cpl(&self) -> u8 {
        ((r(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8
    }
    fn mode(&self) -> ModeView {
        // Bits Bastion owns (the guest/host masks) read from the shadows (SDM Vol. 3C 25.6.6).
        ModeView {
            cr0: (r(guest::CR0) & !self.cr0_mask) | (r(control::CR0_READ_SHADOW) & self.cr0_mask),
            cr3: r(guest::CR3),
            cr4: (r(guest::CR4) & !self.cr4_mask) | (r(control::CR4_READ_SHADOW) & self.cr4_mask),
            efer: r(guest::IA32_EFER_FULL),
            cs_l: r(guest::CS_ACCESS_RIGHTS) & (1 << 13) != 0,
        }
    }
    fn guest_cr4(&self) -> u64 {
        (r(guest::CR4) & !self.cr4_mask) | (r(control::CR4_READ_SHADOW) & self.cr4_mask)
    }
    fn set_guest_efer(&mut self, value: u64) {
        wr(guest::IA32_EFER_FULL, value);
        self.sync_ia32e_mode();
    }
    fn set_guest_cr(&mut self, cr: u8, value: u64) {
        match cr {
            0 => {
                wr(control::CR0_READ_SHADOW, value);
                wr(guest::CR0, self.real_cr0(value));
            }
            4 => {
                wr(control::CR4_READ_SHADOW, value);
                wr(guest::CR4, self.real_cr4(value));
            }
            _ => {}
        }
    }
    fn segment_base(&self, seg: Seg) -> u64 {
        r(match seg {
            Seg::Es => guest::ES_BASE,
            Seg::Cs => guest::CS_BASE,
            Seg::Ss => guest::SS_BASE,
            Seg::Ds => guest::DS_BASE,
            Seg::Fs => guest::FS_BASE,
            Seg::Gs => guest::GS_BASE,
        })
    }
    fn set_cr2(&mut self, value: u64) {
        self.ctx.set_cr2_live(value);
    }
    fn tsc_offset(&self) -> u64 {
        r(control::TSC_OFFSET_FULL)
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        wr(control::TSC_OFFSET_FULL, offset);
    }
    fn set_xcr0(&mut self, value: u64) {
        self.ctx.set_xcr0(value);
    }
    fn complete(&mut self, next_rip: u64) {
        wr(guest::RIP, next_rip);
        // Executing an instruction ends blocking by STI or MOV SS (SDM Vol. 3C 27.3.1.5).
        let intr = r(guest::INTERRUPTIBILITY_STATE);
        if intr & 3 != 0 {
            wr(guest::INTERRUPTIBILITY_STATE, intr & !3);
        }
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // VM-entry interruption information (25.8.3): vector, type 3 (hardware exception),
        // deliver-error-code, valid. Whether there is an error code was decided by the common
        // handler (never in real mode, 27.2.1.3).
        let mut info = vector as u64 | (3 << 8) | (1 << 31);
        if let Some(e) = error_code {
            info |= 1 << 11;
            wr(control::VMENTRY_EXCEPTION_ERR_CODE, e as u64);
        }
        wr(control::VMENTRY_INTERRUPTION_INFO_FIELD, info);
    }
    fn interrupt_window_open(&self) -> bool {
        r(guest::RFLAGS) & (1 << 9) != 0
            && r(guest::INTERRUPTIBILITY_STATE) & 3 == 0
            && r(control::VMENTRY_INTERRUPTION_INFO_FIELD) >> 31 & 1 == 0
    }
    fn inject_interrupt(&mut self, vector: u8) {
        // Type 0: external interrupt (25.8.3).
        wr(control::VMENTRY_INTERRUPTION_INFO_FIELD, vector as u64 | (1 << 31));
    }
    fn request_interrupt_window(&mut self, on: bool) {
        // Interrupt-window exiting (25.6.2): an exit as soon as RFLAGS.IF = 1 and nothing blocks.
        let c = r(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let bit = Proc::INTERRUPT_WINDOW_EXITING.bits() as u64;
        let want = if on { c | bit } else { c & !bit };
        if want != c {
            wr(control::PRIMARY_PROCBASED_EXEC_CONTROLS, want);
        }
    }
    fn nmi_window_open(&self) -> bool {
        // Blocking by STI (bit 0), MOV SS (bit 1) or NMI (bit 3) keeps an NMI out (SDM Vol. 3C
        // 25.4.2 Table 25-3; an NMI cannot be injected under the first two, 27.3.1.5).
        r(guest::INTERRUPTIBILITY_STATE) & 0b1011 == 0 && r(control::VMENTRY_INTERRUPTION_INFO_FIELD) >> 31 & 1 == 0
    }
    fn inject_nmi(&mut self) {
        // Type 2: NMI, vector 2 (25.8.3). With virtual NMIs the entry sets virtual-NMI
        // blocking until the handler's IRET (26.6.1.2).
        wr(control::VMENTRY_INTERRUPTION_INFO_FIELD, 2 | (2 << 8) | (1 << 31));
    }
    fn request_nmi_window(&mut self, on: bool) {
        // NMI-window exiting (25.6.2) exists only with virtual NMIs; without them an NMI held
        // back goes in at the next exit.
        if !self.virtual_nmis {
            return;
        }
        let c = r(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let bit = Proc::NMI_WINDOW_EXITING.bits() as u64;
        let want = if on { c | bit } else { c & !bit };
        if want != c {
            wr(control::PRIMARY_PROCBASED_EXEC_CONTROLS, want);
        }
    }
    fn cr8_tpr(&self) -> u8 {
        // VTPR, byte 0x80 of the virtual-APIC page: MOV to CR8 writes CR8[3:0] into bits 7:4
        // and clears bits 3:0; MOV from CR8 reads bits 7:4 (SDM Vol. 3C 30.3).
        // SAFETY: the page is this vCPU's own, mapped for its lifetime.
        unsafe { *(memory::phys_to_virt(self.vapic) as *const u8).add(0x80) }
    }
    fn set_cr8_tpr(&mut self, tpr: u8) {
        // SAFETY: as above; nothing else writes the page while this vCPU's slot is held.
        unsafe { *(memory::phys_to_virt(self.vapic) as *mut u8).add(0x80) = tpr };
    }
}
