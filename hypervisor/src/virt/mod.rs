//! Hardware virtualization: the backend is chosen at run time from CPUID.
//!
//! `vmx/` (Intel VT-x) and `svm/` (AMD-V) are the only places that know the vendor's control
//! structures. Each turns its hardware exits into `bastion_core::vm::Exit` and implements
//! `bastion_core::vm::Vcpu`; everything else dispatches through [`Backend`] and
//! [`GuestVcpu`] (static dispatch: an enum, not a trait object, so the hot path inlines).

pub mod context;
pub mod svm;
pub mod vmx;

use crate::cpu::Identity;
use crate::vm::Vm;
use bastion_core::npt::Format;
use bastion_core::virt::VirtCaps;
use bastion_core::vm::guest_mem::Paging;
use bastion_core::vm::regs::ModeView;
use bastion_core::vm::{Gprs, Seg, Vcpu, VmExit};

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

/// Virtualization, enabled on this CPU.
pub enum Backend {
    Vmx(vmx::Vmx),
    Svm(svm::Svm),
}

impl Backend {
    /// Turns virtualization on for the calling CPU (VMXON, or EFER.SVME with a host save area).
    pub fn enable(caps: &VirtCaps) -> Result<Backend, alloc::string::String> {
        match caps {
            VirtCaps::Vmx(c) => vmx::Vmx::enable(c).map(Backend::Vmx),
            VirtCaps::Svm(c) => svm::Svm::enable(c).map(Backend::Svm),
            VirtCaps::None(why) => Err((*why).into()),
        }
    }

    /// The nested-paging format this backend's hardware walks.
    pub fn npt_format(&self) -> Format {
        match self {
            Backend::Vmx(_) => Format::Ept,
            Backend::Svm(_) => Format::Npt,
        }
    }

    /// Largest TLB tag (VPID/ASID) guests may use.
    pub fn max_tag(&self) -> u16 {
        match self {
            Backend::Vmx(_) => u16::MAX,
            Backend::Svm(s) => s.max_asid(),
        }
    }

    pub fn create_vcpu(&self, vm: &Vm) -> Result<GuestVcpu, alloc::string::String> {
        match self {
            Backend::Vmx(b) => b.create_vcpu(vm).map(GuestVcpu::Vmx),
            Backend::Svm(b) => b.create_vcpu(vm).map(GuestVcpu::Svm),
        }
    }
}

/// A vCPU of either backend.
pub enum GuestVcpu {
    Vmx(vmx::VmxVcpu),
    Svm(svm::SvmVcpu),
}

macro_rules! each {
    ($self:expr, $v:ident => $e:expr) => {
        match $self {
            GuestVcpu::Vmx($v) => $e,
            GuestVcpu::Svm($v) => $e,
        }
    };
}

impl GuestVcpu {
    /// Binds the vCPU to the calling CPU for a time slice; `flush`: drop its tag's cached
    /// translations on this CPU first (`bastion_core::virt::tlb`).
    pub fn begin_slice(&mut self, backend: &Backend, flush: bool) -> Result<(), alloc::string::String> {
        match (self, backend) {
            (GuestVcpu::Vmx(v), Backend::Vmx(_)) => v.begin_slice(flush),
            (GuestVcpu::Svm(v), Backend::Svm(b)) => v.begin_slice(b.host_vmcb(), flush.then(|| b.tlb_flush_control())),
            _ => Err("vCPU and CPU backends differ".into()),
        }
    }

    /// Unbinds it, so any CPU may run it next.
    pub fn end_slice(&mut self) {
        each!(self, v => v.end_slice())
    }

    /// Enters the guest and returns at its next exit, at the latest after `budget_ns`: the
    /// VMX-preemption timer ends the slice where the CPU has one, else `arm_host_timer`
    /// (the local APIC timer, whose interrupt exits the guest).
    pub fn run(&mut self, budget_ns: u64, arm_host_timer: impl FnOnce(u64)) -> VmExit {
        match self {
            GuestVcpu::Vmx(v) => {
                if !v.has_preemption_timer() {
                    arm_host_timer(budget_ns);
                }
                v.run(budget_ns)
            }
            GuestVcpu::Svm(v) => {
                arm_host_timer(budget_ns);
                v.run()
            }
        }
    }

    /// The guest's RAM, as its nested page tables map it.
    pub fn ram_view(&self) -> bastion_core::npt::NptView {
        each!(self, v => v.ram)
    }

    /// Restarts the vCPU in a whole new state (an application processor at its STARTUP
    /// vector); only between `begin_slice` and `end_slice`.
    pub fn load_state(&mut self, st: &bastion_core::loader::InitialState) -> Result<(), alloc::string::String> {
        each!(self, v => v.load_state(st))
    }

    /// Registers and pending events as a fatal fault left them, for the guest's stop report;
    /// only between `begin_slice` and `end_slice`.
    pub fn fault_state(&self) -> bastion_core::vm::fault_report::FaultState {
        each!(self, v => v.fault_state())
    }

    /// Frees the control structure.
    pub fn destroy(self) {
        each!(self, v => v.destroy())
    }
}

impl Vcpu for GuestVcpu {
    fn gprs(&mut self) -> &mut Gprs {
        each!(self, v => v.gprs())
    }
    fn rsp(&self) -> u64 {
        each!(self, v => v.rsp())
    }
    fn rip(&self) -> u64 {
        each!(self, v => v.rip())
    }
    fn rflags(&self) -> u64 {
        each!(self, v => v.rflags())
    }
    fn set_rsp(&mut self, value: u64) {
        each!(self, v => v.set_rsp(value))
    }
    fn set_rflags(&mut self, value: u64) {
        each!(self, v => v.set_rflags(value))
    }
    fn segment_db(&self, seg: Seg) -> bool {
        each!(self, v => v.segment_db(seg))
    }
    fn cpl(&self) -> u8 {
        each!(self, v => v.cpl())
    }
    fn mode(&self) -> ModeView {
        each!(self, v => v.mode())
    }
    fn guest_cr4(&self) -> u64 {
        each!(self, v => v.guest_cr4())
    }
    fn set_guest_efer(&mut self, value: u64) {
        each!(self, v => v.set_guest_efer(value))
    }
    fn set_guest_cr(&mut self, cr: u8, value: u64) {
        each!(self, v => v.set_guest_cr(cr, value))
    }
    fn segment_base(&self, seg: Seg) -> u64 {
        each!(self, v => v.segment_base(seg))
    }
    fn set_cr2(&mut self, value: u64) {
        each!(self, v => v.set_cr2(value))
    }
    fn tsc_offset(&self) -> u64 {
        each!(self, v => v.tsc_offset())
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        each!(self, v => v.set_tsc_offset(offset))
    }
    fn set_xcr0(&mut self, value: u64) {
        each!(self, v => v.set_xcr0(value))
    }
    fn complete(&mut self, next_rip: u64) {
        each!(self, v => v.complete(next_rip))
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        each!(self, v => v.inject_exception(vector, error_code))
    }
    fn interrupt_window_open(&self) -> bool {
        each!(self, v => v.interrupt_window_open())
    }
    fn inject_interrupt(&mut self, vector: u8) {
        each!(self, v => v.inject_interrupt(vector))
    }
    fn request_interrupt_window(&mut self, on: bool) {
        each!(self, v => v.request_interrupt_window(on))
    }
    fn nmi_window_open(&self) -> bool {
        each!(self, v => v.nmi_window_open())
    }
    fn inject_nmi(&mut self) {
        each!(self, v => v.inject_nmi())
    }
    fn request_nmi_window(&mut self, on: bool) {
        each!(self, v => v.request_nmi_window(on))
    }
    fn cr8_tpr(&self) -> u8 {
        each!(self, v => v.cr8_tpr())
    }
    fn set_cr8_tpr(&mut self, tpr: u8) {
        each!(self, v => v.set_cr8_tpr(tpr))
    }
}

/// Reads up to 15 bytes of the guest's instruction at CS:RIP through its own page tables, for
/// the exits the hardware does not fully decode. `None` if it is not in RAM.
pub fn fetch_insn(ram: bastion_core::npt::NptView, mode: &ModeView, cs_base: u64, rip: u64) -> Option<[u8; 15]> {
    let paging = Paging::from(mode);
    let linear = if paging.long_mode() { rip } else { cs_base.wrapping_add(rip) };
    paging.fetch(linear, &mut crate::vm::GuestRam(ram))
}
