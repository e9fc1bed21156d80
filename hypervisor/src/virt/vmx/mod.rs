//! Intel VT-x backend.
pub mod caps;

use crate::vm::Vm;
use alloc::string::String;
use bastion_core::virt::vmx::VmxCaps;
use bastion_core::vm::{Exit, Gprs, Vcpu};

pub struct Vmx;

impl Vmx {
    pub fn enable(_caps: &VmxCaps) -> Result<Vmx, String> {
        Err("VMX backend not written yet".into())
    }
    pub fn create_vcpu(&self, _vm: &Vm) -> Result<VmxVcpu, String> {
        Err("VMX backend not written yet".into())
    }
}

pub struct VmxVcpu {
    gprs: Gprs,
}

impl VmxVcpu {
    pub fn run(&mut self) -> Exit {
        Exit::EntryFailed("unimplemented".into())
    }
    pub fn destroy(self) {}
}

impl Vcpu for VmxVcpu {
    fn gprs(&mut self) -> &mut Gprs {
        &mut self.gprs
    }
    fn rip(&self) -> u64 {
        0
    }
    fn rflags(&self) -> u64 {
        0
    }
    fn cpl(&self) -> u8 {
        0
    }
    fn guest_cr4(&self) -> u64 {
        0
    }
    fn guest_efer(&self) -> u64 {
        0
    }
    fn set_guest_efer(&mut self, _value: u64) {}
    fn set_guest_cr(&mut self, _cr: u8, _value: u64) {}
    fn skip_instruction(&mut self) {}
    fn inject_exception(&mut self, _vector: u8, _error_code: Option<u32>) {}
}
