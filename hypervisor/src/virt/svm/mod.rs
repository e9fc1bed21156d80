//! AMD-V (SVM) backend: enabling SVM, the VMCB of each vCPU, VMRUN, and the translation of
//! SVM exit codes into `bastion_core::vm::Exit` (AMD APM Vol. 2, chapter 15).

pub mod caps;
pub mod vmcb;

use super::context::{GuestContext, HwSwitched};
use crate::memory;
use crate::vm::Vm;
use alloc::format;
use alloc::string::String;
use bastion_core::vm::fault_report::FaultState;
use bastion_core::virt::svm::{SvmCaps, VM_CR_SVMDIS};
use bastion_core::virt::svm_exit::{self, SvmExitInfo};
use bastion_core::vm::msr::{self, EFER_LMA, EFER_SVME};
use bastion_core::vm::regs::ModeView;
use bastion_core::loader::InitialState;
use bastion_core::vm::{Exit, Gprs, Seg, Vcpu, VmExit};
use core::arch::global_asm;
use vmcb::*;

/// The PAUSE filter (APM 15.14.4): PAUSEs before the intercept exits, and the most cycles
/// between two PAUSEs of one spin loop where the CPU has a threshold (KVM's defaults).
const PAUSE_FILTER_COUNT_DEFAULT: u16 = 3000;
const PAUSE_FILTER_THRESHOLD_DEFAULT: u16 = 128;

/// VM_HSAVE_PA: where VMRUN saves host state (APM 15.30.4).
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// SVM enabled on this CPU.
pub struct Svm {
    caps: SvmCaps,
    /// A VMCB used only to VMSAVE/VMLOAD the host's FS, GS, TR, LDTR and syscall MSRs around
    /// each VMRUN, which VMRUN itself does not switch (APM 15.5.2).
    host_vmcb: u64,
}

impl Svm {
    pub fn enable(caps: &SvmCaps) -> Result<Svm, String> {
        if let Some(missing) = caps.missing().first() {
            return Err(format!("SVM lacks {missing}"));
        }
        if crate::cpu::rdmsr_safe(bastion_core::virt::svm::MSR_VM_CR).is_some_and(|v| v & VM_CR_SVMDIS != 0) {
            return Err("SVM is disabled by firmware (VM_CR.SVMDIS)".into());
        }
        let hsave = memory::alloc_frame_zeroed().ok_or("no memory for the host save area")?;
        let host_vmcb = memory::alloc_frame_zeroed().ok_or("no memory for the host VMCB")?;
        // SAFETY: setting EFER.SVME enables the SVM instructions (APM 15.4); the host save
        // area is a page we own for the rest of the run.
        unsafe {
            let efer = x86_64::registers::model_specific::Msr::new(msr::EFER).read();
            x86_64::registers::model_specific::Msr::new(msr::EFER).write(efer | EFER_SVME);
            x86_64::registers::model_specific::Msr::new(MSR_VM_HSAVE_PA).write(hsave);
        }
        Ok(Svm { caps: caps.clone(), host_vmcb })
    }

    /// This CPU's VMCB for VMSAVE/VMLOAD of the host's state.
    pub fn host_vmcb(&self) -> u64 {
        self.host_vmcb
    }

    /// The VMCB TLB_CONTROL value that drops one guest's translations (APM 15.16.1): 3
    /// flushes only this ASID's entries; without flush-by-ASID (QEMU) only 1, the entire TLB.
    pub fn tlb_flush_control(&self) -> u8 {
        if self.caps.flush_by_asid {
            3
        } else {
            1
        }
    }

    pub fn max_asid(&self) -> u16 {
        (self.caps.asids.saturating_sub(1)).min(u16::MAX as u32) as u16
    }

    pub fn create_vcpu(&self, vm: &Vm) -> Result<SvmVcpu, String> {
        let mut v = Vmcb::alloc().ok_or("no memory for a VMCB")?;
        // I/O permission map: 12 KiB, one bit per port, set = intercept (APM 15.10.1).
        // MSR permission map: 8 KiB, two bits per MSR (read, write), set = intercept (15.11).
        let iopm = memory::alloc_zeroed(3, 4096).ok_or("no memory for the IOPM")?;
        let msrpm = memory::alloc_zeroed(2, 4096).ok_or("no memory for the MSRPM")?;
        // SAFETY: both were just allocated for this vCPU.
        unsafe {
            core::ptr::write_bytes(memory::phys_to_virt(iopm), 0xff, 3 * 4096);
            core::ptr::write_bytes(memory::phys_to_virt(msrpm), 0xff, 2 * 4096);
        }
        vm.allow_ports(iopm, 3);
        for &m in msr::PASSTHROUGH {
            msrpm_allow(msrpm, m, true, true);
        }
        for &m in msr::READ_ONLY_PASSTHROUGH {
            msrpm_allow(msrpm, m, true, false);
        }

        // CR0 and CR4 writes are intercepted so that every value is checked by the common
        // handler against the guest's CPUID and mode (#GP for VMXE, reserved bits, NW
        // without CD…): QEMU's TCG does not make these checks itself and would otherwise fail
        // the next VMRUN with VMEXIT_INVALID (measured, QEMU 7.2). CR3 stays with the
        // hardware: real CPUs and Bochs check it, and Linux writes it at every context switch.
        v.write(INTERCEPT_CR, (InterceptCr::CR0_WRITE | InterceptCr::CR4_WRITE).bits());
        // INVD is intercepted and performed as WBINVD (it would discard dirty lines of host
        // memory); RDPMC is #GP (Exit::Rdpmc: no counters are virtualized, and the host's
        // count other guests' work); NMIs and interrupts belong to the host.
        v.write(
            INTERCEPT_MISC1,
            (InterceptMisc1::INTR
                | InterceptMisc1::NMI
                | InterceptMisc1::CPUID
                | InterceptMisc1::INVD
                | InterceptMisc1::RDPMC
                | InterceptMisc1::HLT
                | InterceptMisc1::INVLPGA
                | InterceptMisc1::IOIO
                | InterceptMisc1::MSR
                | InterceptMisc1::SHUTDOWN)
                .bits(),
        );
        // VMRUN must be intercepted or VMRUN fails (APM 15.5.1); all SVM instructions, and
        // MONITOR/MWAIT (hidden by CPUID), are #UD for the guest; XSETBV is checked by the
        // common handler as on VMX, where it always exits. WBINVD is intercepted too: QEMU's
        // TCG checks a guest's INVD against the WBINVD intercept (measured: with only the INVD
        // intercept, INVD never exits there); both are performed as WBINVD by the host.
        v.write(
            INTERCEPT_MISC2,
            (InterceptMisc2::VMRUN
                | InterceptMisc2::VMMCALL
                | InterceptMisc2::VMLOAD
                | InterceptMisc2::VMSAVE
                | InterceptMisc2::STGI
                | InterceptMisc2::CLGI
                | InterceptMisc2::SKINIT
                | InterceptMisc2::WBINVD
                | InterceptMisc2::MONITOR
                | InterceptMisc2::MWAIT
                | InterceptMisc2::XSETBV)
                .bits(),
        );
        if self.caps.pause_filter {
            // The PAUSE filter: the PAUSE intercept exits only once the count of PAUSEs has run
            // out (with a threshold, PAUSEs more than that many cycles apart restart it), so a
            // vCPU spinning on a lock held by a vCPU that is not running gives up its slice
            // (Exit::PauseLoop) instead of burning it (APM Vol. 2 15.14.4; KVM's defaults).
            let misc: u32 = v.read(INTERCEPT_MISC1);
            v.write(INTERCEPT_MISC1, misc | InterceptMisc1::PAUSE.bits());
            v.write(PAUSE_FILTER_COUNT, PAUSE_FILTER_COUNT_DEFAULT);
            if self.caps.pause_filter_threshold {
                v.write(PAUSE_FILTER_THRESHOLD, PAUSE_FILTER_THRESHOLD_DEFAULT);
            }
        }
        v.w64(IOPM_BASE_PA, iopm);
        v.w64(MSRPM_BASE_PA, msrpm);
        v.write(GUEST_ASID, vm.tag as u32);
        // V_INTR_MASKING: the guest's RFLAGS.IF masks only virtual interrupts; physical ones
        // stay with the host (APM 15.21.1).
        v.write(INT_CTL, 1u32 << 24);
        v.w64(NP_ENABLE, 1);
        v.w64(N_CR3, vm.npt.root());

        // What the loader decided: the reset-like state in real mode for a flat image (APM
        // 14.1.3), 64-bit mode for a bzImage.
        let st = vm.entry.initial_state();
        write_guest_state(&mut v, &st);
        let ctx = GuestContext::new(HwSwitched { cr2_dr6: true, syscall_msrs: true })?;
        Ok(SvmVcpu {
            ctx,
            vmcb: v,
            iopm,
            msrpm,
            host_vmcb: self.host_vmcb,
            gprs: Gprs { rax: st.rax, rbx: st.rbx, rsi: st.rsi, ..Gprs::default() },
            nrip_save: self.caps.nrip_save,
            ram: vm.npt.view(),
            nmi: NmiBlocking::Open,
            entry_event: 0,
        })
    }
}

/// Loads a whole start state into the VMCB's state save area (APM Vol. 2 15.5.1, Appendix B):
/// at creation, and when an application processor starts at its STARTUP vector.
fn write_guest_state(v: &mut Vmcb, st: &InitialState) {
    for (seg, s) in [(CS, st.cs), (DS, st.data), (ES, st.data), (SS, st.data), (FS, st.data), (GS, st.data)] {
        v.set_segment(seg, s.selector, s.desc.svm_attributes(), s.limit(), s.base());
    }
    v.set_segment(GDTR, 0, 0, st.gdt_limit as u32, st.gdt_base);
    v.set_segment(IDTR, 0, 0, 0xffff, 0);
    v.set_segment(LDTR, 0, 0x82, 0xffff, 0);
    // A busy 32/64-bit TSS, as on VMX: Bochs refuses to enter long mode with a 16-bit TSS
    // in TR, and nothing is lost by describing the reset TR this way.
    v.set_segment(TR, 0, 0x8b, 0xffff, 0);
    v.w64(CR0, st.cr0);
    v.w64(CR3, st.cr3);
    v.w64(CR4, st.cr4);
    // VMRUN requires EFER.SVME in the guest state (APM 15.5.1); the guest sees EFER
    // without it (EFER accesses are intercepted).
    v.w64(EFER, st.efer | EFER_SVME);
    v.w64(RFLAGS, st.rflags);
    v.w64(RIP, st.rip);
    v.w64(RSP, st.rsp);
    v.w64(DR6, 0xffff_0ff0);
    v.w64(DR7, 0x400);
    v.w64(G_PAT, 0x0007_0406_0007_0406);
    // Nothing pending into the new state: no event to inject, no interrupt shadow.
    v.w64(EVENTINJ, 0);
    v.w64(INT_STATE, 0);
}

/// Clears the intercept bits of `msr` in the MSR permission map (APM 15.11: three 2 KiB
/// ranges for MSRs 0-0x1fff, 0xc000_0000-0xc000_1fff and 0xc001_0000-0xc001_1fff; other MSRs
/// are always intercepted).
fn msrpm_allow(msrpm: u64, msr: u32, read: bool, write: bool) {
    let (base, off) = match msr {
        0..=0x1fff => (0x0, msr),
        0xc000_0000..=0xc000_1fff => (0x800, msr - 0xc000_0000),
        0xc001_0000..=0xc001_1fff => (0x1000, msr - 0xc001_0000),
        _ => return,
    };
    let bit = off as usize * 2;
    let byte = memory::phys_to_virt(msrpm).wrapping_add(base + bit / 8);
    // SAFETY: inside the 8 KiB map owned by this vCPU.
    unsafe {
        if read {
            *byte &= !(1 << (bit % 8));
        }
        if write {
            *byte &= !(1 << (bit % 8 + 1));
        }
    }
}

pub struct SvmVcpu {
    /// What SVM does not switch (XSAVE state, DR0-3, TSC_AUX).
    ctx: GuestContext,
    vmcb: Vmcb,
    iopm: u64,
    msrpm: u64,
    host_vmcb: u64,
    gprs: Gprs,
    nrip_save: bool,
    /// The guest's RAM, to read instructions the hardware did not decode.
    pub(super) ram: bastion_core::npt::NptView,
    /// Whether the guest's NMIs are blocked by one Bastion injected: SVM keeps no such state
    /// for the VMM without vNMI, so Bastion tracks it as KVM does (`NmiBlocking`).
    nmi: NmiBlocking,
    /// EVENTINJ at the last VMRUN (VMRUN clears it), for the report of a fault that ends the
    /// guest.
    entry_event: u64,
}

/// An injected NMI blocks further NMIs until its handler's IRET has executed (SDM Vol. 3A
/// 7.7; APM Vol. 2 8.2.19). The IRET is intercepted while blocked; its exit comes before the
/// IRET runs, so NMIs count as open again only once RIP has moved past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NmiBlocking {
    Open,
    /// An injected NMI's handler runs; IRET is intercepted.
    Blocked,
    /// The handler's IRET at this RIP is about to run.
    AtIret(u64),
}

// bastion_svm_run(gprs: *mut Gprs, guest_vmcb_pa: u64, host_vmcb_pa: u64)
//
// VMRUN switches only part of the state (APM 15.5.1): the general registers other than RAX
// are ours to switch, and FS/GS/TR/LDTR/KernelGSBase/STAR/LSTAR/CSTAR/SFMASK/SYSENTER_* are
// switched with VMSAVE/VMLOAD around it. GIF is cleared around the switch so no host
// interrupt lands between VMLOAD and VMRUN with half-guest state (15.17); host RFLAGS.IF is
// set for VMRUN so physical interrupts end the guest (see below).
global_asm!(
    ".global bastion_svm_run",
    "bastion_svm_run:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rdi",           // [rsp+16]: gprs pointer
    "    push rdx",           // [rsp+8]: host VMCB
    "    push rsi",           // [rsp]: guest VMCB
    "    clgi",
    // RFLAGS.IF as saved by VMRUN decides whether physical interrupts reach the host while
    // the guest runs (V_INTR_MASKING, APM 15.21.1): it must be 1, or a guest that never exits
    // could never be preempted by the timer. GIF=0 keeps them off until VMRUN.
    "    sti",
    "    mov rax, rdx",
    "    vmsave rax",
    "    mov rax, rsi",
    "    vmload rax",
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
    "    mov rax, [rsp]",
    "    vmrun rax",
    // Guest GPRs are live; RAX holds the VMCB address again (guest RAX is in the VMCB).
    ".global bastion_svm_vmrun_return",
    "bastion_svm_vmrun_return:",
    "    push rdi",
    "    mov rdi, [rsp + 24]",
    "    mov [rdi + 8], rbx",
    "    mov [rdi + 16], rcx",
    "    mov [rdi + 24], rdx",
    "    mov [rdi + 32], rsi",
    "    mov [rdi + 48], rbp",
    "    mov [rdi + 56], r8",
    "    mov [rdi + 64], r9",
    "    mov [rdi + 72], r10",
    "    mov [rdi + 80], r11",
    "    mov [rdi + 88], r12",
    "    mov [rdi + 96], r13",
    "    mov [rdi + 104], r14",
    "    mov [rdi + 112], r15",
    "    pop rax",
    "    mov [rdi + 40], rax",
    "    pop rax",            // guest VMCB
    "    vmsave rax",
    "    pop rax",            // host VMCB
    "    vmload rax",
    // Interrupts that ended the guest stay pending until the run loop opens a window.
    "    cli",
    "    stgi",
    "    pop rdi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
);

unsafe extern "C" {
    fn bastion_svm_run(gprs: *mut Gprs, guest_vmcb: u64, host_vmcb: u64);
    /// The host instruction after VMRUN, where #VMEXIT returns (a label, never called).
    fn bastion_svm_vmrun_return();
}

/// Whether the state an exit saved as the guest's is the host's own, taken at the instruction
/// after VMRUN: QEMU 7.2's TCG (measured in the hostile battery and in SMP Linux runs) now and
/// then translates the host's first memory access after a #VMEXIT through the guest's nested
/// page tables, faults there, and takes a second #VMEXIT (a nested page fault) that saves the
/// host's registers over the guest's (APM Vol. 2 15.6: #VMEXIT writes the guest state to the
/// VMCB). Only a nested page fault saved at the host's RIP after VMRUN with the host's CR3
/// counts: a guest would have to load the host's CR3 and map and run that very address to look
/// the same (and would only stop itself); the guest's own state is gone and it cannot go on.
fn saved_host_state(code: u64, rip: u64, cr3: u64) -> bool {
    code == bastion_core::virt::svm_exit::code::NPF
        && rip == bastion_svm_vmrun_return as *const () as u64
        && cr3 == x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64()
}

impl SvmVcpu {
    /// Restarts the vCPU in `st` (an application processor at its STARTUP vector): every
    /// register of the new state, general registers zeroed, nothing pending.
    pub fn load_state(&mut self, st: &InitialState) -> Result<(), String> {
        write_guest_state(&mut self.vmcb, st);
        // RAX lives in the VMCB (APM 15.5.1); the others in `gprs`.
        self.gprs = Gprs { rax: st.rax, rbx: st.rbx, rsi: st.rsi, ..Gprs::default() };
        self.vmcb.w64(RAX, 0);
        self.request_interrupt_window(false);
        self.set_iret_intercept(false);
        self.nmi = NmiBlocking::Open;
        Ok(())
    }

    /// Prepares a time slice on the calling CPU: its host VMCB for VMSAVE/VMLOAD, a TLB flush
    /// (`flush`: the TLB_CONTROL value that drops this ASID's translations) when
    /// `bastion_core::virt::tlb` says the CPU may hold stale ones, and the vCPU's context.
    pub fn begin_slice(&mut self, host_vmcb: u64, flush: Option<u8>) -> Result<(), String> {
        self.host_vmcb = host_vmcb;
        if let Some(control) = flush {
            self.vmcb.write(TLB_CONTROL, control);
        }
        self.ctx.load();
        // VMRUN loads the guest's CR2 from the VMCB (APM 15.5.1) — except in Bochs 2.7, whose
        // VMRUN reads the field and never loads it (measured: a guest read another guest's
        // CR2 after a switch). Loading the register here as well gives the same result on
        // hardware and works around it: the host does not use CR2, and #VMEXIT saves it.
        set_physical_cr2(self.vmcb.r64(CR2));
        Ok(())
    }

    pub fn end_slice(&mut self) {
        self.ctx.save();
    }

    /// Runs the guest until its next exit; the caller's local APIC timer ends the slice (an
    /// INTR exit, `Exit::Interrupted`).
    pub fn run(&mut self) -> VmExit {
        self.vmcb.w64(RAX, self.gprs.rax);
        self.entry_event = self.vmcb.r64(EVENTINJ);
        // SAFETY: the VMCB is fully initialised, SVM is enabled on this CPU (Svm::enable ran
        // on it), and the assembly restores every host register it changes.
        unsafe { bastion_svm_run(&mut self.gprs, self.vmcb.phys, self.host_vmcb) };
        self.gprs.rax = self.vmcb.r64(RAX);
        // Later entries keep this ASID's translations.
        self.vmcb.write(TLB_CONTROL, 0u8);
        // An event whose delivery the exit interrupted (an interrupt Bastion injected, an
        // exception the guest raised) is in EXITINTINFO; it must be delivered at the next
        // VMRUN or the guest loses it — a lost external interrupt leaves its 8259 line in
        // service for good (APM 15.7.2, 15.20). EXITINTINFO has EVENTINJ's format. A software
        // interrupt (type 4) is left out: without nRIP save its INTn is simply executed again.
        let pending = self.vmcb.r64(EXITINTINFO);
        let valid = pending >> 31 & 1 != 0 && (pending >> 8) & 7 != 4;
        self.vmcb.w64(EVENTINJ, if valid { pending } else { 0 });
        if saved_host_state(self.vmcb.r64(EXITCODE), self.vmcb.r64(RIP), self.vmcb.r64(CR3) & !0xfff) {
            return VmExit::event(Exit::StateLost(alloc::format!(
                "exit code {:#x} saved the hypervisor's own state (RIP {:#x} after VMRUN, the host's CR3): the emulator translated the host through the guest's nested page tables (a QEMU TCG defect)",
                self.vmcb.r64(EXITCODE),
                self.vmcb.r64(RIP)
            )));
        }
        let exit = self.decode_exit();
        if let NmiBlocking::AtIret(at) = self.nmi {
            if self.vmcb.r64(RIP) != at {
                self.nmi = NmiBlocking::Open;
            }
        }
        if exit.exit == Exit::NmiWindow {
            // The NMI handler's IRET (the only IRET intercepted): NMIs unblock once it ran.
            self.set_iret_intercept(false);
            self.nmi = NmiBlocking::AtIret(self.vmcb.r64(RIP));
        }
        if let Exit::EntryFailed(ref why) = exit.exit {
            return VmExit::event(Exit::EntryFailed(alloc::format!("{why}; {}", self.explain_invalid())));
        }
        exit
    }

    /// The state a guest's fatal fault left, for its stop report: where it was, its control
    /// registers and IDT, the event whose delivery the exit interrupted (EXITINTINFO, APM Vol.
    /// 2 15.7.2) and the one Bastion injected at the last entry (EVENTINJ, 15.20).
    pub fn fault_state(&self) -> FaultState {
        let v = &self.vmcb;
        FaultState {
            rip: v.r64(RIP),
            rsp: v.r64(RSP),
            rflags: v.r64(RFLAGS),
            cs: v.read(CS),
            cs_base: self.segment_base(Seg::Cs),
            ss_base: self.segment_base(Seg::Ss),
            mode: self.mode(),
            idt_base: v.r64(IDTR + 8),
            idt_limit: v.read(IDTR + 4),
            delivering: v.r64(EXITINTINFO),
            delivering_error: (v.r64(EXITINTINFO) >> 32) as u32,
            cr2: v.r64(CR2),
            nested_root: v.r64(N_CR3) & 0x000f_ffff_ffff_f000,
            own_nested_root: self.ram.root(),
            injected: self.entry_event,
            // After a shutdown intercept the state save area is undefined (APM Vol. 2, the
            // SHUTDOWN intercept; KVM resets the VMCB there for that reason): what this CPU
            // left there is shown, with that caveat.
            caveat: (v.r64(EXITCODE) == bastion_core::virt::svm_exit::code::SHUTDOWN)
                .then_some("after SHUTDOWN the APM leaves this state undefined"),
        }
    }

    fn set_iret_intercept(&mut self, on: bool) {
        let misc: u32 = self.vmcb.read(INTERCEPT_MISC1);
        let bit = InterceptMisc1::IRET.bits();
        self.vmcb.write(INTERCEPT_MISC1, if on { misc | bit } else { misc & !bit });
    }

    /// Reads the exit fields and lets bastion-core decode them.
    fn decode_exit(&mut self) -> VmExit {
        let attrib: u16 = self.vmcb.read(CS + 2);
        let mode = self.mode();
        let info = SvmExitInfo {
            code: self.vmcb.r64(EXITCODE),
            info1: self.vmcb.r64(EXITINFO1),
            info2: self.vmcb.r64(EXITINFO2),
            rip: self.vmcb.r64(RIP),
            nrip: self.nrip_save.then(|| self.vmcb.r64(NRIP)),
            guest_cr0: mode.cr0,
            long_mode: mode.efer & EFER_LMA != 0 && attrib & (1 << 9) != 0,
            cs_db: attrib & (1 << 10) != 0,
        };
        let rsp = self.vmcb.r64(RSP);
        let gprs = self.gprs;
        let cs_base: u64 = self.vmcb.read(CS + 8);
        let ram = self.ram;
        svm_exit::decode(&info, &|n| gprs.by_encoding(n, rsp), &mut || super::fetch_insn(ram, &mode, cs_base, info.rip))
    }

    /// VMRUN refused the state (EXITCODE -1). The APM lists the consistency checks (15.5.1);
    /// name the ones our state could break.
    fn explain_invalid(&self) -> String {
        let efer = self.vmcb.r64(EFER);
        let cr0 = self.vmcb.r64(CR0);
        let cr4 = self.vmcb.r64(CR4);
        let cr3 = self.vmcb.r64(CR3);
        let mut why = String::from("the VMCB state failed VMRUN's consistency checks (APM 15.5.1)");
        // Guest-made values VMRUN refuses that a real CPU would have refused at the MOV
        // itself (QEMU's TCG does not check them): name them.
        if efer & EFER_LMA != 0 && cr3 >> 52 != 0 {
            why.push_str("; CR3[63:52] not zero (the guest loaded a reserved CR3, which this CPU did not refuse)");
        }
        if cr4 & !0x01ff_ffff != 0 || cr4 & (1 << 15) != 0 {
            why.push_str("; CR4 reserved bits set");
        }
        if efer & EFER_SVME == 0 {
            why.push_str("; EFER.SVME is clear");
        }
        if cr0 & (1 << 29) != 0 && cr0 & (1 << 30) == 0 {
            why.push_str("; CR0.NW set without CR0.CD");
        }
        if cr0 >> 32 != 0 {
            why.push_str("; CR0[63:32] not zero");
        }
        if efer & msr::EFER_LME != 0 && cr0 & (1 << 31) != 0 && cr4 & (1 << 5) == 0 {
            why.push_str("; long mode paging without CR4.PAE");
        }
        if self.vmcb.read::<u32>(GUEST_ASID) == 0 {
            why.push_str("; ASID 0");
        }
        if self.vmcb.read::<u32>(INTERCEPT_MISC2) & InterceptMisc2::VMRUN.bits() == 0 {
            why.push_str("; VMRUN not intercepted");
        }
        why
    }

    pub fn destroy(self) {
        self.ctx.free();
        memory::free(self.iopm, 3);
        memory::free(self.msrpm, 2);
        self.vmcb.free();
    }
}

fn set_physical_cr2(value: u64) {
    // SAFETY: CR2 only reports page-fault addresses; the host never reads it outside its
    // crash report, and the guest's value is what VMRUN would load anyway.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) value, options(nostack, nomem)) };
}

/// Where a segment register's 16-byte save area starts in the VMCB (APM Vol. 2 Table B-2).
fn segment_offset(seg: Seg) -> usize {
    match seg {
        Seg::Es => ES,
        Seg::Cs => CS,
        Seg::Ss => SS,
        Seg::Ds => DS,
        Seg::Fs => FS,
        Seg::Gs => GS,
    }
}

impl Vcpu for SvmVcpu {
    fn gprs(&mut self) -> &mut Gprs {
        &mut self.gprs
    }
    fn rsp(&self) -> u64 {
        self.vmcb.r64(RSP)
    }
    fn rip(&self) -> u64 {
        self.vmcb.r64(RIP)
    }
    fn rflags(&self) -> u64 {
        self.vmcb.r64(RFLAGS)
    }
    fn set_rsp(&mut self, value: u64) {
        self.vmcb.w64(RSP, value);
    }
    fn set_rflags(&mut self, value: u64) {
        self.vmcb.w64(RFLAGS, value);
    }
    fn segment_db(&self, seg: Seg) -> bool {
        let off = segment_offset(seg);
        // The VMCB's packed attributes: D/B is bit 10 (descriptor bit 54, APM Vol. 2 15.5.1).
        let attrib: u16 = self.vmcb.read(off + 2);
        attrib & (1 << 10) != 0
    }
    fn cpl(&self) -> u8 {
        self.vmcb.read(CPL)
    }
    fn mode(&self) -> ModeView {
        let attrib: u16 = self.vmcb.read(CS + 2);
        ModeView {
            cr0: self.vmcb.r64(CR0),
            cr3: self.vmcb.r64(CR3),
            cr4: self.vmcb.r64(CR4),
            // The guest sees EFER without Bastion's SVME (EFER accesses are intercepted).
            efer: self.vmcb.r64(EFER) & !EFER_SVME,
            // The VMCB's packed attributes: L is bit 9 (descriptor bit 53, APM 15.5.1).
            cs_l: attrib & (1 << 9) != 0,
        }
    }
    fn set_guest_efer(&mut self, value: u64) {
        self.vmcb.w64(EFER, value | EFER_SVME);
    }
    fn set_guest_cr(&mut self, cr: u8, value: u64) {
        match cr {
            0 => self.vmcb.w64(CR0, value),
            4 => self.vmcb.w64(CR4, value),
            _ => {}
        }
    }
    fn segment_base(&self, seg: Seg) -> u64 {
        let off = segment_offset(seg);
        self.vmcb.read(off + 8)
    }
    fn set_cr2(&mut self, value: u64) {
        self.vmcb.w64(CR2, value);
        // See `begin_slice`: Bochs's VMRUN does not load CR2 from the VMCB.
        set_physical_cr2(value);
    }
    fn tsc_offset(&self) -> u64 {
        self.vmcb.r64(TSC_OFFSET)
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        self.vmcb.w64(TSC_OFFSET, offset);
    }
    fn set_xcr0(&mut self, value: u64) {
        self.ctx.set_xcr0(value);
    }
    fn complete(&mut self, next_rip: u64) {
        self.vmcb.w64(RIP, next_rip);
        // The instruction executed: the STI/MOV SS shadow is over (APM 15.21.5).
        let st = self.vmcb.r64(INT_STATE);
        if st & 1 != 0 {
            self.vmcb.w64(INT_STATE, st & !1);
        }
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // EVENTINJ (APM 15.20): vector, type 3 = exception, EV = error code valid, V = valid.
        let mut ev = vector as u64 | (3 << 8) | (1 << 31);
        if let Some(e) = error_code {
            ev |= (1 << 11) | ((e as u64) << 32);
        }
        self.vmcb.w64(EVENTINJ, ev);
    }
    fn interrupt_window_open(&self) -> bool {
        self.vmcb.r64(RFLAGS) & (1 << 9) != 0 && self.vmcb.r64(INT_STATE) & 1 == 0 && self.vmcb.r64(EVENTINJ) >> 31 & 1 == 0
    }
    fn inject_interrupt(&mut self, vector: u8) {
        // EVENTINJ type 0: external interrupt (APM 15.20).
        self.vmcb.w64(EVENTINJ, vector as u64 | (1 << 31));
    }
    fn request_interrupt_window(&mut self, on: bool) {
        // A virtual interrupt (V_IRQ, INT_CTL bit 8) with VINTR intercepted exits as soon as the
        // guest could take it (APM 15.21.4); its vector is never delivered.
        let ctl: u32 = self.vmcb.read(INT_CTL);
        let misc: u32 = self.vmcb.read(INTERCEPT_MISC1);
        if on {
            self.vmcb.write(INT_CTL, ctl | (1 << 8) | (0xf << 16));
            self.vmcb.write(INTERCEPT_MISC1, misc | InterceptMisc1::VINTR.bits());
        } else {
            self.vmcb.write(INT_CTL, ctl & !(1 << 8));
            self.vmcb.write(INTERCEPT_MISC1, misc & !InterceptMisc1::VINTR.bits());
        }
    }
    fn nmi_window_open(&self) -> bool {
        let blocked = match self.nmi {
            NmiBlocking::Open => false,
            NmiBlocking::Blocked => true,
            NmiBlocking::AtIret(rip) => self.vmcb.r64(RIP) == rip,
        };
        // The interrupt shadow (INT_STATE bit 0) covers MOV SS, which blocks NMIs too.
        !blocked && self.vmcb.r64(INT_STATE) & 1 == 0 && self.vmcb.r64(EVENTINJ) >> 31 & 1 == 0
    }
    fn inject_nmi(&mut self) {
        // EVENTINJ type 2: NMI, vector 2 (APM 15.20).
        self.vmcb.w64(EVENTINJ, 2 | (2 << 8) | (1 << 31));
        self.nmi = NmiBlocking::Blocked;
        self.set_iret_intercept(true);
    }
    fn request_nmi_window(&mut self, _on: bool) {
        // Nothing to arm: while an NMI handler runs its IRET exits anyway (`inject_nmi`), and
        // an NMI held back by the interrupt shadow goes in at the next exit.
    }
    fn cr8_tpr(&self) -> u8 {
        // V_TPR, INT_CTL bits 3:0: what the guest's MOV CR8 reads and writes with
        // V_INTR_MASKING set (APM 15.21.4); the TPR's priority class.
        let ctl: u32 = self.vmcb.read(INT_CTL);
        ((ctl & 0xf) << 4) as u8
    }
    fn set_cr8_tpr(&mut self, tpr: u8) {
        let ctl: u32 = self.vmcb.read(INT_CTL);
        self.vmcb.write(INT_CTL, (ctl & !0xf) | u32::from(tpr >> 4));
    }
}
