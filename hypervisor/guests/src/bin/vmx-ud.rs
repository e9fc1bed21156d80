//! Test guest `vmx-ud`: VMX and SVM instructions must raise #UD, and setting CR4.VMXE #GP,
//! because the hypervisor hides hardware virtualization from its guests.
#![no_std]
#![no_main]

use test_guests::cpu::{self, CR4_VMXE};
use test_guests::exceptions::{Fault, GP, UD};
use test_guests::{guarded, Checks};

test_guests::guest!(name = "vmx-ud", main = main);

/// IA32_VMX_BASIC: bits 30:0 are the VMCS revision identifier (SDM Vol. 3D A.1).
const IA32_VMX_BASIC: u32 = 0x480;

/// A 4 KiB-aligned page of .bss (zeroed by the boot code).
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// VMXON region (SDM Vol. 3C 25.11.5): 4 KiB aligned, revision identifier in its first dword.
static mut VMXON_REGION: Page = Page([0; 4096]);
/// Operand page for VMRUN, VMLOAD and VMSAVE (a VMCB must be 4 KiB aligned, AMD APM Vol. 2
/// 15.5.1).
static mut VMCB: Page = Page([0; 4096]);

fn main() -> u32 {
    let mut c = Checks::new();
    let vmxon_region = (&raw mut VMXON_REGION).cast::<u32>();
    let vmcb = (&raw mut VMCB) as u64;

    // Give VMXON a well-formed region, so a hypervisor that let it through could not pass by
    // VMXON failing on a bad revision id. IA32_VMX_BASIC itself should #GP (VMX is hidden);
    // then any id will do.
    let revision = cpu::try_rdmsr(IA32_VMX_BASIC).map_or(0, |basic| basic as u32 & 0x7FFF_FFFF);
    // SAFETY: our own static, nothing else refers to it.
    unsafe { vmxon_region.write_volatile(revision) };

    // Each instruction is guarded: it resumes right after itself on a fault, and its outcome
    // is the fault (or None). CR4.VMXE is clear here, so VMXON would #UD even on bare metal
    // (SDM Vol. 3C 31.3, VMXON); VMRUN/VMLOAD/VMSAVE #UD with EFER.SVME clear (AMD APM
    // Vol. 3). What this tests is that the hypervisor neither runs them nor crashes on the
    // VM exits they cause (SVM intercepts VMRUN unconditionally) but injects #UD.
    // SAFETY (all four): each must fault; if one ran, it would only read or write its own
    // page (and a VMRUN that really entered a guest would fail the test either way).
    // vmxon qword ptr [rax]: F3 0F C7 /6 with the region's physical address at [rax].
    expect_ud(&mut c, "VMXON", unsafe { guarded!("vmxon qword ptr [rax]", in("rax") vmxon_region as u64) });
    // VMRUN, VMLOAD, VMSAVE (0F 01 D8 / DA / DB) take the VMCB's physical address in RAX;
    // written as bytes so the encoding is exactly the one named.
    expect_ud(&mut c, "VMRUN", unsafe { guarded!(".byte 0x0f, 0x01, 0xd8", in("rax") vmcb) });
    expect_ud(&mut c, "VMLOAD", unsafe { guarded!(".byte 0x0f, 0x01, 0xda", in("rax") vmcb) });
    expect_ud(&mut c, "VMSAVE", unsafe { guarded!(".byte 0x0f, 0x01, 0xdb", in("rax") vmcb) });

    // CR4.VMXE: with VMX not reported by CPUID, setting it must #GP (a reserved bit, SDM
    // Vol. 3A 2.5; on AMD bit 13 is reserved outright, APM Vol. 2 3.1.3).
    let cr4 = cpu::read_cr4();
    let what = "setting CR4.VMXE raised #GP";
    // SAFETY: VMXE changes nothing else about the running guest.
    match unsafe { cpu::try_write_cr4(cr4 | CR4_VMXE) } {
        Err(f) if f.vector == GP => c.pass(what),
        Err(f) => c.fail(what, format_args!("raised {f}")),
        Ok(()) => {
            let now = cpu::read_cr4();
            c.fail(what, format_args!("no exception, CR4 now {now:#x}"));
            // SAFETY: the value CR4 had.
            let _ = unsafe { cpu::try_write_cr4(cr4) };
        }
    }
    c.finish()
}

fn expect_ud(c: &mut Checks, insn: &str, fault: Option<Fault>) {
    match fault {
        Some(f) if f.vector == UD => c.pass(format_args!("{insn} raised #UD")),
        Some(f) => c.fail(insn, format_args!("raised {f}, expected #UD")),
        None => c.fail(insn, "no exception, expected #UD"),
    }
}
