//! Test guest `checks`: the CPUID, MSR and hypercall behaviour the guest ABI promises.
#![no_std]
#![no_main]

use test_guests::cpu::{self, cpuid, Regs, HC_ABI_VERSION, HC_UNKNOWN, HC_VERSION, HC_VERSION_MAGIC, IA32_PAT};
use test_guests::exceptions::GP;
use test_guests::Checks;

test_guests::guest!(name = "checks", main = main);

/// MSRs the hypervisor does not virtualize: RDMSR and WRMSR must raise #GP. 0x4B564DFF is in
/// KVM's range but no MSR (kvmclock's 0x4B564D00/01 now exist: the arch guest checks them).
const UNKNOWN_MSRS: [u32; 2] = [0x4B56_4DFF, 0xC001_1FFF];

/// The PAT value the ABI names (also the power-up default, SDM Vol. 3A 13.12.4).
const PAT_ABI: u64 = 0x0007_0406_0007_0406;
/// Another valid PAT (PA7 = WC instead of UC; our page tables never select PA7), written
/// first so that a hypervisor ignoring writes cannot pass by returning the default.
const PAT_OTHER: u64 = 0x0107_0406_0007_0406;

fn main() -> u32 {
    let mut c = Checks::new();
    check_cpuid(&mut c);
    check_pat(&mut c);
    for msr in UNKNOWN_MSRS {
        check_gp(&mut c, "RDMSR", msr, cpu::try_rdmsr(msr).map(|_| ()));
        // SAFETY: the hypervisor must refuse it (no MSR by that number exists for the guest).
        check_gp(&mut c, "WRMSR", msr, unsafe { cpu::try_wrmsr(msr, 0) });
    }
    check_hypercalls(&mut c);
    c.finish()
}

fn check_cpuid(c: &mut Checks) {
    let leaf1 = cpuid(1, 0);
    // CPUID.1:ECX bit 31 is reserved for hypervisors to say they are there.
    c.expect_eq("cpuid 1 ecx bit 31 (hypervisor present) = 1", u64::from(leaf1.ecx >> 31 & 1), 1);
    // CPUID.1:ECX bit 5 is VMX (SDM Vol. 2A CPUID, Table 3-10): hidden from guests.
    c.expect_eq("cpuid 1 ecx bit 5 (VMX) = 0", u64::from(leaf1.ecx >> 5 & 1), 0);
    // CPUID.8000_0001h:ECX bit 2 is SVM (AMD APM Vol. 3, E.4.2): hidden from guests.
    let ext1 = cpuid(0x8000_0001, 0);
    c.expect_eq("cpuid 0x80000001 ecx bit 2 (SVM) = 0", u64::from(ext1.ecx >> 2 & 1), 0);
    // Leaf 0x4000_0000: highest hypervisor leaf in EAX, vendor signature in EBX, ECX, EDX.
    let hv = cpuid(0x4000_0000, 0);
    let what = "cpuid 0x40000000 = \"Bastion\" with eax >= 0x40000001";
    if hv.eax >= 0x4000_0001 && (hv.ebx, hv.ecx, hv.edx) == (0x7473_6142, 0x006E_6F69, 0) {
        c.pass(what);
    } else {
        c.fail(
            what,
            format_args!(
                "got eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}, expected eax>=0x40000001 ebx=0x74736142 ecx=0x6e6f69 edx=0x0",
                hv.eax, hv.ebx, hv.ecx, hv.edx
            ),
        );
    }
}

/// IA32_PAT is virtualized: it reads, and what is written reads back.
fn check_pat(c: &mut Checks) {
    let what = "IA32_PAT round trip";
    let original = match cpu::try_rdmsr(IA32_PAT) {
        Ok(v) => v,
        Err(f) => return c.fail(what, format_args!("RDMSR 0x277 raised {f}")),
    };
    for value in [PAT_OTHER, PAT_ABI] {
        // SAFETY: both are valid PATs, and the entries our page tables select (PA0) stay WB.
        if let Err(f) = unsafe { cpu::try_wrmsr(IA32_PAT, value) } {
            return c.fail(what, format_args!("WRMSR 0x277 <- {value:#x} raised {f}"));
        }
        match cpu::try_rdmsr(IA32_PAT) {
            Ok(got) if got == value => {}
            Ok(got) => return c.fail(what, format_args!("wrote {value:#x}, read {got:#x}")),
            Err(f) => return c.fail(what, format_args!("RDMSR 0x277 after writing {value:#x} raised {f}")),
        }
    }
    c.pass(what);
    // Leave the PAT as found (it is most likely the same value).
    // SAFETY: the value read at the start.
    let _ = unsafe { cpu::try_wrmsr(IA32_PAT, original) };
}

fn check_gp(c: &mut Checks, insn: &str, msr: u32, result: Result<(), test_guests::exceptions::Fault>) {
    match result {
        Err(f) if f.vector == GP => c.pass(format_args!("{insn} {msr:#x} raised #GP")),
        Err(f) => c.fail(format_args!("{insn} {msr:#x} raised #GP"), format_args!("raised {f}")),
        Ok(()) => c.fail(format_args!("{insn} {msr:#x} raised #GP"), "no exception"),
    }
}

/// Distinct values in every register, so a clobbered one shows.
fn sentinel_regs(rax: u64) -> Regs {
    let mut regs = Regs::default();
    let mut next = 0x5A5A_0000_0000_0101u64;
    for r in [
        &mut regs.rbx,
        &mut regs.rcx,
        &mut regs.rdx,
        &mut regs.rsi,
        &mut regs.rdi,
        &mut regs.rbp,
        &mut regs.r8,
        &mut regs.r9,
        &mut regs.r10,
        &mut regs.r11,
        &mut regs.r12,
        &mut regs.r13,
        &mut regs.r14,
        &mut regs.r15,
    ] {
        *r = next;
        next += 0x0101;
    }
    regs.rax = rax;
    regs
}

/// Compares every register but those in `skip` (indices into `Regs::NAMES`).
fn check_preserved(c: &mut Checks, what: &str, before: &Regs, after: &Regs, skip: &[usize]) {
    let (b, a) = (before.as_array(), after.as_array());
    for i in 0..b.len() {
        if !skip.contains(&i) && a[i] != b[i] {
            let name = Regs::NAMES[i];
            return c.fail(what, format_args!("{name} was {:#x}, now {:#x}", b[i], a[i]));
        }
    }
    c.pass(what);
}

fn check_hypercalls(c: &mut Checks) {
    const RAX: usize = 0;
    const RBX: usize = 1;
    const RCX: usize = 2;

    // VERSION: RAX = 0, RBX = "BSTN", RCX = 1; everything else preserved.
    let before = sentinel_regs(HC_VERSION);
    let mut after = before;
    let what = "hypercall VERSION returns rax=0 rbx=0x4e545342 rcx=1";
    match cpu::hypercall(&mut after) {
        // Nothing ran, so there is nothing to say about the other registers either.
        Some(f) => c.fail(what, format_args!("raised {f}")),
        None => {
            if (after.rax, after.rbx, after.rcx) == (0, HC_VERSION_MAGIC, HC_ABI_VERSION) {
                c.pass(what);
            } else {
                c.fail(what, format_args!("got rax={:#x} rbx={:#x} rcx={:#x}", after.rax, after.rbx, after.rcx));
            }
            check_preserved(c, "hypercall VERSION preserves other registers", &before, &after, &[RAX, RBX, RCX]);
        }
    }

    // An unknown function: RAX = all ones; everything else preserved.
    let before = sentinel_regs(0x1234);
    let mut after = before;
    let what = "hypercall 0x1234 (unknown) returns rax=0xffffffffffffffff";
    match cpu::hypercall(&mut after) {
        Some(f) => c.fail(what, format_args!("raised {f}")),
        None => {
            c.expect_eq(what, after.rax, HC_UNKNOWN);
            check_preserved(c, "hypercall 0x1234 (unknown) preserves other registers", &before, &after, &[RAX]);
        }
    }
}
