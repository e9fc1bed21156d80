//! VMX exit decoding: every basic exit reason (Intel SDM Vol. 3C Appendix C) named, and the
//! exit reason + qualification + the other exit-information fields turned into the
//! backend-neutral [`VmExit`], with the next RIP as data. Pure: the kernel reads the VMCS
//! fields and hands them over, so every reason is host-tested here.

use crate::vm::guest_mem::{cr0_after, CrWriteInsn};
use crate::vm::{Exit, Seg, StringIo, VmExit};

/// Basic exit reasons (SDM Vol. 3C Table C-1).
pub mod reason {
    pub const EXCEPTION_OR_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INIT: u32 = 3;
    pub const SIPI: u32 = 4;
    pub const IO_SMI: u32 = 5;
    pub const OTHER_SMI: u32 = 6;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const NMI_WINDOW: u32 = 8;
    pub const TASK_SWITCH: u32 = 9;
    pub const CPUID: u32 = 10;
    pub const GETSEC: u32 = 11;
    pub const HLT: u32 = 12;
    pub const INVD: u32 = 13;
    pub const INVLPG: u32 = 14;
    pub const RDPMC: u32 = 15;
    pub const RDTSC: u32 = 16;
    pub const RSM: u32 = 17;
    pub const VMCALL: u32 = 18;
    pub const VMCLEAR: u32 = 19;
    pub const VMLAUNCH: u32 = 20;
    pub const VMPTRLD: u32 = 21;
    pub const VMPTRST: u32 = 22;
    pub const VMREAD: u32 = 23;
    pub const VMRESUME: u32 = 24;
    pub const VMWRITE: u32 = 25;
    pub const VMXOFF: u32 = 26;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const DR_ACCESS: u32 = 29;
    pub const IO_INSTRUCTION: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const ENTRY_FAIL_GUEST_STATE: u32 = 33;
    pub const ENTRY_FAIL_MSR_LOADING: u32 = 34;
    pub const MWAIT: u32 = 36;
    pub const MONITOR_TRAP_FLAG: u32 = 37;
    pub const MONITOR: u32 = 39;
    pub const PAUSE: u32 = 40;
    pub const ENTRY_FAIL_MACHINE_CHECK: u32 = 41;
    pub const TPR_BELOW_THRESHOLD: u32 = 43;
    pub const APIC_ACCESS: u32 = 44;
    pub const VIRTUALIZED_EOI: u32 = 45;
    pub const GDTR_IDTR_ACCESS: u32 = 46;
    pub const LDTR_TR_ACCESS: u32 = 47;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const INVEPT: u32 = 50;
    pub const RDTSCP: u32 = 51;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const INVVPID: u32 = 53;
    pub const WBINVD: u32 = 54;
    pub const XSETBV: u32 = 55;
    pub const APIC_WRITE: u32 = 56;
    pub const RDRAND: u32 = 57;
    pub const INVPCID: u32 = 58;
    pub const VMFUNC: u32 = 59;
    pub const ENCLS: u32 = 60;
    pub const RDSEED: u32 = 61;
    pub const PML_FULL: u32 = 62;
    pub const XSAVES: u32 = 63;
    pub const XRSTORS: u32 = 64;
    pub const PCONFIG: u32 = 65;
    pub const SPP_EVENT: u32 = 66;
    pub const UMWAIT: u32 = 67;
    pub const TPAUSE: u32 = 68;
    pub const LOADIWKEY: u32 = 69;
    pub const ENCLV: u32 = 70;
    pub const ENQCMD_PASID_FAIL: u32 = 72;
    pub const ENQCMDS_PASID_FAIL: u32 = 73;
    pub const BUS_LOCK: u32 = 74;
    pub const INSTRUCTION_TIMEOUT: u32 = 75;
    pub const SEAMCALL: u32 = 76;
    pub const TDCALL: u32 = 77;
    pub const RDMSRLIST: u32 = 78;
    pub const WRMSRLIST: u32 = 79;
}

/// Every named reason, for reports and for the tests that walk them all.
pub const REASONS: &[(u32, &str)] = &[
    (reason::EXCEPTION_OR_NMI, "exception or NMI"),
    (reason::EXTERNAL_INTERRUPT, "external interrupt"),
    (reason::TRIPLE_FAULT, "triple fault"),
    (reason::INIT, "INIT signal"),
    (reason::SIPI, "start-up IPI"),
    (reason::IO_SMI, "I/O SMI"),
    (reason::OTHER_SMI, "other SMI"),
    (reason::INTERRUPT_WINDOW, "interrupt window"),
    (reason::NMI_WINDOW, "NMI window"),
    (reason::TASK_SWITCH, "task switch"),
    (reason::CPUID, "CPUID"),
    (reason::GETSEC, "GETSEC"),
    (reason::HLT, "HLT"),
    (reason::INVD, "INVD"),
    (reason::INVLPG, "INVLPG"),
    (reason::RDPMC, "RDPMC"),
    (reason::RDTSC, "RDTSC"),
    (reason::RSM, "RSM"),
    (reason::VMCALL, "VMCALL"),
    (reason::VMCLEAR, "VMCLEAR"),
    (reason::VMLAUNCH, "VMLAUNCH"),
    (reason::VMPTRLD, "VMPTRLD"),
    (reason::VMPTRST, "VMPTRST"),
    (reason::VMREAD, "VMREAD"),
    (reason::VMRESUME, "VMRESUME"),
    (reason::VMWRITE, "VMWRITE"),
    (reason::VMXOFF, "VMXOFF"),
    (reason::VMXON, "VMXON"),
    (reason::CR_ACCESS, "control-register access"),
    (reason::DR_ACCESS, "MOV DR"),
    (reason::IO_INSTRUCTION, "I/O instruction"),
    (reason::RDMSR, "RDMSR"),
    (reason::WRMSR, "WRMSR"),
    (reason::ENTRY_FAIL_GUEST_STATE, "VM-entry failure: invalid guest state"),
    (reason::ENTRY_FAIL_MSR_LOADING, "VM-entry failure: MSR loading"),
    (reason::MWAIT, "MWAIT"),
    (reason::MONITOR_TRAP_FLAG, "monitor trap flag"),
    (reason::MONITOR, "MONITOR"),
    (reason::PAUSE, "PAUSE"),
    (reason::ENTRY_FAIL_MACHINE_CHECK, "VM-entry failure: machine-check event"),
    (reason::TPR_BELOW_THRESHOLD, "TPR below threshold"),
    (reason::APIC_ACCESS, "APIC access"),
    (reason::VIRTUALIZED_EOI, "virtualized EOI"),
    (reason::GDTR_IDTR_ACCESS, "access to GDTR or IDTR"),
    (reason::LDTR_TR_ACCESS, "access to LDTR or TR"),
    (reason::EPT_VIOLATION, "EPT violation"),
    (reason::EPT_MISCONFIG, "EPT misconfiguration"),
    (reason::INVEPT, "INVEPT"),
    (reason::RDTSCP, "RDTSCP"),
    (reason::PREEMPTION_TIMER, "VMX-preemption timer expired"),
    (reason::INVVPID, "INVVPID"),
    (reason::WBINVD, "WBINVD or WBNOINVD"),
    (reason::XSETBV, "XSETBV"),
    (reason::APIC_WRITE, "APIC write"),
    (reason::RDRAND, "RDRAND"),
    (reason::INVPCID, "INVPCID"),
    (reason::VMFUNC, "VMFUNC"),
    (reason::ENCLS, "ENCLS"),
    (reason::RDSEED, "RDSEED"),
    (reason::PML_FULL, "page-modification log full"),
    (reason::XSAVES, "XSAVES"),
    (reason::XRSTORS, "XRSTORS"),
    (reason::PCONFIG, "PCONFIG"),
    (reason::SPP_EVENT, "SPP-related event"),
    (reason::UMWAIT, "UMWAIT"),
    (reason::TPAUSE, "TPAUSE"),
    (reason::LOADIWKEY, "LOADIWKEY"),
    (reason::ENCLV, "ENCLV"),
    (reason::ENQCMD_PASID_FAIL, "ENQCMD PASID translation failure"),
    (reason::ENQCMDS_PASID_FAIL, "ENQCMDS PASID translation failure"),
    (reason::BUS_LOCK, "bus lock"),
    (reason::INSTRUCTION_TIMEOUT, "instruction timeout"),
    (reason::SEAMCALL, "SEAMCALL"),
    (reason::TDCALL, "TDCALL"),
    (reason::RDMSRLIST, "RDMSRLIST"),
    (reason::WRMSRLIST, "WRMSRLIST"),
];

/// Name of a basic exit reason, for reports.
pub fn reason_name(n: u32) -> &'static str {
    REASONS.iter().find(|(r, _)| *r == n).map_or("reserved exit reason", |(_, name)| name)
}

/// Exit-reason bit 31: the exit is a VM-entry failure (SDM Vol. 3C 28.2.1).
pub const ENTRY_FAILURE: u32 = 1 << 31;

/// The VMCS exit-information fields decoding needs (SDM Vol. 3C 25.9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmxExitInfo {
    /// Exit reason field (basic reason in bits 15:0).
    pub reason: u32,
    pub qualification: u64,
    /// Guest RIP and the VM-exit instruction length.
    pub rip: u64,
    pub insn_len: u64,
    /// VM-exit instruction-information field (INS/OUTS: address size, segment; SDM Vol. 3C
    /// 28.2.5, Table 28-8).
    pub insn_info: u32,
    /// Whether `insn_info` is filled for INS/OUTS (IA32_VMX_BASIC[54]).
    pub io_insn_info: bool,
    /// VM-exit interruption information (SDM Vol. 3C 25.9.2).
    pub intr_info: u32,
    /// Guest-physical address (EPT violations).
    pub gpa: u64,
    /// CR0 as the guest sees it (for CLTS and LMSW).
    pub guest_cr0: u64,
    /// The guest runs 64-bit code (IA-32e mode and CS.L), for the default address size.
    pub long_mode: bool,
    /// CS.D: 32-bit default operand and address size outside 64-bit mode.
    pub cs_db: bool,
}

/// Whether decoding `basic` looks at more than the reason, RIP and instruction length
/// (qualification, instruction and interruption information, guest-physical address, the
/// guest's CR0 and mode): the backend reads those VMCS fields only then, which keeps the
/// common exits (CPUID, MSRs, HLT, VMCALL) short.
pub fn needs_details(basic: u32) -> bool {
    use reason::*;
    matches!(basic, EXCEPTION_OR_NMI | CR_ACCESS | IO_INSTRUCTION | EPT_VIOLATION)
}

/// Which detail fields decoding `basic` with exit qualification `qualification` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Details {
    pub intr_info: bool,
    pub guest_cr0: bool,
    /// Instruction information and the CPU mode (INS/OUTS).
    pub string_io: bool,
    pub gpa: bool,
}

/// The detail fields a reason needs beyond its qualification (read first when
/// [`needs_details`]).
pub fn details(basic: u32, qualification: u64) -> Details {
    use reason::*;
    Details {
        intr_info: basic == EXCEPTION_OR_NMI,
        guest_cr0: basic == CR_ACCESS,
        string_io: basic == IO_INSTRUCTION && qualification & 16 != 0,
        gpa: basic == EPT_VIOLATION,
    }
}

/// Decodes an exit. `gpr(n)` reads general register `n` in the instruction-encoding order
/// (RSP included); `insn()` fetches the instruction bytes at RIP, used only for OUTS when
/// the CPU gives no instruction information.
pub fn decode(i: &VmxExitInfo, gpr: &dyn Fn(usize) -> u64, insn: &mut dyn FnMut() -> Option<[u8; 15]>) -> VmExit {
    use reason::*;
    let q = i.qualification;
    let next = i.rip.wrapping_add(i.insn_len);
    let basic = i.reason & 0xffff;
    let unhandled = || VmExit::event(Exit::Unhandled { code: basic as u64, info1: q, info2: i.gpa });
    if i.reason & ENTRY_FAILURE != 0 {
        return VmExit::event(Exit::EntryFailed(alloc::format!("exit reason {basic} ({})", reason_name(basic))));
    }
    match basic {
        // With an empty exception bitmap only NMIs exit here: interruption type 2 (SDM Vol. 3C
        // 25.9.2, Table 25-18). They are the host's.
        EXCEPTION_OR_NMI if (i.intr_info >> 8) & 7 == 2 && i.intr_info >> 31 != 0 => VmExit::event(Exit::HostNmi),
        NMI_WINDOW => VmExit::event(Exit::NmiWindow),
        EXTERNAL_INTERRUPT | PREEMPTION_TIMER | IO_SMI | OTHER_SMI | TPR_BELOW_THRESHOLD | BUS_LOCK => {
            VmExit::event(Exit::Interrupted)
        }
        // Only pause-loop exiting makes PAUSE exit here ("PAUSE exiting" stays off); the exit
        // comes before the instruction, which runs again on resume (SDM Vol. 3C 26.1.3).
        PAUSE => VmExit::event(Exit::PauseLoop),
        INTERRUPT_WINDOW => VmExit::event(Exit::InterruptWindow),
        TRIPLE_FAULT => VmExit::event(Exit::TripleFault),
        CPUID => VmExit::insn(Exit::Cpuid, next),
        HLT => VmExit::insn(Exit::Hlt, next),
        VMCALL => VmExit::insn(Exit::Hypercall, next),
        RDMSR => VmExit::insn(Exit::Rdmsr, next),
        WRMSR => VmExit::insn(Exit::Wrmsr, next),
        XSETBV => VmExit::insn(Exit::Xsetbv, next),
        INVD | WBINVD => VmExit::insn(Exit::Invd, next),
        // The handler answers #GP: nothing completes.
        RDPMC => VmExit::event(Exit::Rdpmc),
        // Instructions of features the guest's CPUID hides (VMX, SMX, MONITOR/MWAIT, SGX,
        // WAITPKG, TDX): #UD, as on a CPU without them.
        VMCLEAR | VMLAUNCH | VMPTRLD | VMPTRST | VMREAD | VMRESUME | VMWRITE | VMXOFF | VMXON | INVEPT | INVVPID | VMFUNC
        | GETSEC | MWAIT | MONITOR | ENCLS | ENCLV | UMWAIT | TPAUSE | SEAMCALL | TDCALL => VmExit::event(Exit::VirtInstruction),
        CR_ACCESS => decode_cr(i, gpr, next).unwrap_or_else(unhandled),
        IO_INSTRUCTION => {
            let port = (q >> 16) as u16;
            let size = (q & 7) as u8 + 1;
            let write = q & 8 == 0;
            let string = (q & 16 != 0).then(|| {
                let rep = q & 32 != 0;
                let default = if i.long_mode { 8 } else if i.cs_db { 4 } else { 2 };
                let (addr_size, seg) = if i.io_insn_info {
                    let size = match (i.insn_info >> 7) & 7 {
                        0 => 2,
                        1 => 4,
                        _ => 8,
                    };
                    (size, Seg::from_index(((i.insn_info >> 15) & 7) as u64).unwrap_or(Seg::Ds))
                } else {
                    string_prefixes(insn(), i.long_mode, default)
                };
                StringIo { rep, addr_size, seg }
            });
            VmExit::insn(Exit::Io { port, size, write, string }, next)
        }
        // EPT violation qualification (SDM Vol. 3C Table 28-7): bit 1 write, bit 2 fetch.
        EPT_VIOLATION => VmExit::event(Exit::NestedPageFault { gpa: i.gpa, write: q & 2 != 0, fetch: q & 4 != 0 }),
        // Everything else is never enabled by Bastion, or cannot happen outside VMX's special
        // modes: a stop with the reason named.
        _ => unhandled(),
    }
}

/// Control-register access (SDM Vol. 3C Table 28-3): CR number in bits 3:0, access type in
/// 5:4 (0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW), register in 11:8, LMSW data in 31:16.
fn decode_cr(i: &VmxExitInfo, gpr: &dyn Fn(usize) -> u64, next: u64) -> Option<VmExit> {
    let q = i.qualification;
    let cr = (q & 0xf) as u8;
    let exit = match ((q >> 4) & 3, cr) {
        (0, 0 | 4) => Exit::CrWrite { cr, value: gpr(((q >> 8) & 0xf) as usize) },
        (2, 0) => Exit::CrWrite { cr: 0, value: cr0_after(CrWriteInsn::Clts, i.guest_cr0, 0) },
        (3, 0) => Exit::CrWrite { cr: 0, value: cr0_after(CrWriteInsn::Lmsw { gpr: 0 }, i.guest_cr0, (q >> 16) & 0xffff) },
        _ => return None,
    };
    Some(VmExit::insn(exit, next))
}

/// The address size and segment of an INS/OUTS from its prefixes (SDM Vol. 2A 2.1.1): 67h
/// switches the address size (64 -> 32 in 64-bit mode, 16 <-> 32 otherwise), a segment
/// override replaces DS for OUTS. Without the bytes, the defaults.
pub fn string_prefixes(bytes: Option<[u8; 15]>, long_mode: bool, default_addr: u8) -> (u8, Seg) {
    let (mut addr, mut seg) = (default_addr, Seg::Ds);
    for b in bytes.into_iter().flatten() {
        match b {
            0x67 => addr = if long_mode { 4 } else if default_addr == 4 { 2 } else { 4 },
            0x26 => seg = Seg::Es,
            0x2e => seg = Seg::Cs,
            0x36 => seg = Seg::Ss,
            0x3e => seg = Seg::Ds,
            0x64 => seg = Seg::Fs,
            0x65 => seg = Seg::Gs,
            0x66 | 0xf2 | 0xf3 | 0xf0 => {}
            0x40..=0x4f if long_mode => {}
            _ => break,
        }
    }
    (addr, seg)
}

#[cfg(test)]
mod tests {
    use super::reason::*;
    use super::*;

    fn info(reason: u32, q: u64) -> VmxExitInfo {
        VmxExitInfo { reason, qualification: q, rip: 0x1000, insn_len: 3, ..Default::default() }
    }

    fn dec(i: &VmxExitInfo) -> VmExit {
        decode(i, &|n| 0x100 + n as u64, &mut || None)
    }

    #[test]
    fn every_reason_in_appendix_c_has_a_name_and_a_defined_exit() {
        for n in 0..=80u32 {
            let named = REASONS.iter().any(|(r, _)| *r == n);
            // SDM Vol. 3C Table C-1 leaves 35, 38, 42 and 71 unused; all others up to 79 are named.
            assert_eq!(named, !matches!(n, 35 | 38 | 42 | 71 | 80), "reason {n}");
            // Decoding never panics, whatever the fields hold.
            let _ = decode(&VmxExitInfo { reason: n, qualification: u64::MAX, intr_info: u32::MAX, ..info(n, 0) }, &|_| 0, &mut || None);
        }
        assert_eq!(reason_name(48), "EPT violation");
        assert_eq!(reason_name(35), "reserved exit reason");
    }

    #[test]
    fn only_the_exits_that_use_them_need_the_detail_fields() {
        // A decoder that reads nothing but reason, RIP and length must give the same answer
        // for every reason that does not need details (the backend skips those VMREADs).
        for n in 0..=80u32 {
            if needs_details(n) {
                continue;
            }
            let full = VmxExitInfo { qualification: 0x1234_5678, insn_info: 0xffff, intr_info: (1 << 31) | (2 << 8) | 2, gpa: 0xfee0_0000, guest_cr0: 0x11, long_mode: true, cs_db: false, io_insn_info: true, ..info(n, 0) };
            let bare = VmxExitInfo { reason: n, rip: full.rip, insn_len: full.insn_len, ..Default::default() };
            let (a, b) = (dec(&full), dec(&bare));
            // Unhandled exits report their qualification: equal but for the info fields.
            match (&a.exit, &b.exit) {
                (Exit::Unhandled { code: x, .. }, Exit::Unhandled { code: y, .. }) => assert_eq!(x, y, "reason {n}"),
                _ => assert_eq!(a, b, "reason {n}"),
            }
        }
        for n in [EXCEPTION_OR_NMI, CR_ACCESS, IO_INSTRUCTION, EPT_VIOLATION] {
            assert!(needs_details(n), "reason {n}");
        }
        // Within those, a field left at 0 because `details` says it is unused changes nothing.
        let full = |n, q| VmxExitInfo { intr_info: (1 << 31) | (2 << 8) | 2, gpa: 0xfee0_0000, guest_cr0: 0x3b, insn_info: (1 << 7) | (4 << 15), io_insn_info: true, long_mode: true, ..info(n, q) };
        for (n, q) in [(EXCEPTION_OR_NMI, 0), (CR_ACCESS, 2 << 4), (CR_ACCESS, 4 | (1 << 8)), (IO_INSTRUCTION, 0x3f8 << 16), (IO_INSTRUCTION, (0x80 << 16) | 16 | 1), (EPT_VIOLATION, 2)] {
            let f = full(n, q);
            let d = details(n, q);
            let trimmed = VmxExitInfo {
                intr_info: if d.intr_info { f.intr_info } else { 0 },
                guest_cr0: if d.guest_cr0 { f.guest_cr0 } else { 0 },
                insn_info: if d.string_io { f.insn_info } else { 0 },
                io_insn_info: d.string_io && f.io_insn_info,
                long_mode: d.string_io && f.long_mode,
                gpa: if d.gpa { f.gpa } else { 0 },
                ..f
            };
            assert_eq!(dec(&f), dec(&trimmed), "reason {n}, qualification {q:#x}");
        }
    }

    #[test]
    fn detail_fields_are_read_only_for_the_reasons_and_forms_that_define_them() {
        // Of the reasons Bastion handles, only these four decode more than reason, RIP and
        // length: exception/NMI 0 (interruption information), control-register access 28
        // (qualification, guest CR0), I/O instruction 30 (qualification) and EPT violation 48
        // (qualification, guest-physical address) (SDM Vol. 3C 28.2.1-28.2.5).
        let needing: Vec<u32> = (0..=80).filter(|&n| needs_details(n)).collect();
        assert_eq!(needing, [0, 28, 30, 48]);
        // The instruction-information field is defined for INS/OUTS only: an I/O exit with
        // bit 4 of its qualification (string instruction, Table 28-5) clear does not need it.
        let none = Details::default();
        assert_eq!(details(30, 0x3f8 << 16), none);
        assert_eq!(details(30, (0x60 << 16) | 8 | 1), none);
        assert_eq!(details(30, (0x3f8 << 16) | 16), Details { string_io: true, ..none });
        assert_eq!(details(30, 16 | 32), Details { string_io: true, ..none });
        assert_eq!(details(0, 0), Details { intr_info: true, ..none });
        assert_eq!(details(28, 0), Details { guest_cr0: true, ..none });
        assert_eq!(details(48, 16), Details { gpa: true, ..none });
        assert_eq!(details(10, 16), none, "CPUID reads no detail field");
    }

    #[test]
    fn instruction_exits_carry_rip_plus_length() {
        for (r, exit) in [
            (CPUID, Exit::Cpuid),
            (HLT, Exit::Hlt),
            (VMCALL, Exit::Hypercall),
            (RDMSR, Exit::Rdmsr),
            (WRMSR, Exit::Wrmsr),
            (XSETBV, Exit::Xsetbv),
            (INVD, Exit::Invd),
            (WBINVD, Exit::Invd),
        ] {
            assert_eq!(dec(&info(r, 0)), VmExit::insn(exit, 0x1003), "reason {r}");
        }
    }

    #[test]
    fn asynchronous_exits_complete_nothing() {
        for r in [EXTERNAL_INTERRUPT, PREEMPTION_TIMER] {
            assert_eq!(dec(&info(r, 0)), VmExit::event(Exit::Interrupted), "reason {r}");
        }
        assert_eq!(dec(&info(PAUSE, 0)), VmExit::event(Exit::PauseLoop));
        assert_eq!(dec(&info(INTERRUPT_WINDOW, 0)), VmExit::event(Exit::InterruptWindow));
        assert_eq!(dec(&info(NMI_WINDOW, 0)), VmExit::event(Exit::NmiWindow));
        assert_eq!(dec(&info(TRIPLE_FAULT, 0)), VmExit::event(Exit::TripleFault));
    }

    #[test]
    fn an_nmi_exit_is_the_hosts_nmi() {
        // Interruption information: vector 2, type 2 (NMI), valid (SDM Vol. 3C Table 25-18).
        let mut i = info(EXCEPTION_OR_NMI, 0);
        i.intr_info = (1 << 31) | (2 << 8) | 2;
        assert_eq!(dec(&i), VmExit::event(Exit::HostNmi));
        // A hardware exception (type 3) would be a bug (the exception bitmap is empty): named.
        i.intr_info = (1 << 31) | (3 << 8) | 14;
        assert!(matches!(dec(&i).exit, Exit::Unhandled { code: 0, .. }));
    }

    #[test]
    fn rdpmc_is_its_own_exit_and_does_not_complete() {
        assert_eq!(dec(&info(RDPMC, 2)), VmExit::event(Exit::Rdpmc));
    }

    #[test]
    fn hidden_features_instructions_get_ud() {
        for r in [VMXON, VMCLEAR, VMLAUNCH, VMRESUME, VMPTRLD, VMPTRST, VMREAD, VMWRITE, VMXOFF, INVEPT, INVVPID, VMFUNC, GETSEC, MWAIT, MONITOR, ENCLS, UMWAIT, TPAUSE] {
            assert_eq!(dec(&info(r, 0)).exit, Exit::VirtInstruction, "reason {r}");
        }
    }

    #[test]
    fn cr_access_forms() {
        // MOV CR4, RCX: CR 4, type 0, register 1.
        assert_eq!(dec(&info(CR_ACCESS, 4 | (1 << 8))), VmExit::insn(Exit::CrWrite { cr: 4, value: 0x101 }, 0x1003));
        // MOV CR0, R9.
        assert_eq!(dec(&info(CR_ACCESS, 9 << 8)).exit, Exit::CrWrite { cr: 0, value: 0x109 });
        // CLTS clears TS from the guest's CR0.
        let mut i = info(CR_ACCESS, 2 << 4);
        i.guest_cr0 = 0x3b;
        assert_eq!(dec(&i).exit, Exit::CrWrite { cr: 0, value: 0x33 });
        // LMSW 0x0001 (source data in bits 31:16) sets PE.
        let mut i = info(CR_ACCESS, (3 << 4) | (1 << 16));
        i.guest_cr0 = 0x10;
        assert_eq!(dec(&i).exit, Exit::CrWrite { cr: 0, value: 0x11 });
        // MOV from CR3 / MOV to CR8 are never enabled: named as unhandled.
        assert!(matches!(dec(&info(CR_ACCESS, 3 | (1 << 4))).exit, Exit::Unhandled { code: 28, .. }));
        assert!(matches!(dec(&info(CR_ACCESS, 8)).exit, Exit::Unhandled { code: 28, .. }));
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to 0x3f8: size 0 (1 byte), direction 0 (out), port in 31:16 (Table 28-5).
        assert_eq!(
            dec(&info(IO_INSTRUCTION, 0x3f8 << 16)),
            VmExit::insn(Exit::Io { port: 0x3f8, size: 1, write: true, string: None }, 0x1003)
        );
        // IN EAX, DX from 0xcfc: size 3 (4 bytes), direction 1.
        assert_eq!(dec(&info(IO_INSTRUCTION, (0xcfc << 16) | 8 | 3)).exit, Exit::Io { port: 0xcfc, size: 4, write: false, string: None });
        // REP OUTSW with instruction information: 32-bit addresses (1 << 7), FS (4 << 15).
        let mut i = info(IO_INSTRUCTION, (0x80 << 16) | 16 | 32 | 1);
        i.io_insn_info = true;
        i.insn_info = (1 << 7) | (4 << 15);
        assert_eq!(
            dec(&i).exit,
            Exit::Io { port: 0x80, size: 2, write: true, string: Some(StringIo { rep: true, addr_size: 4, seg: Seg::Fs }) }
        );
    }

    #[test]
    fn string_io_without_instruction_information_reads_the_prefixes() {
        let mut i = info(IO_INSTRUCTION, (0x80 << 16) | 16);
        i.long_mode = true;
        // 64-bit mode, `67 65 6e` = outsb with a 32-bit address from GS.
        let bytes = {
            let mut b = [0x90u8; 15];
            b[..3].copy_from_slice(&[0x67, 0x65, 0x6e]);
            b
        };
        let e = decode(&i, &|_| 0, &mut || Some(bytes));
        assert_eq!(e.exit, Exit::Io { port: 0x80, size: 1, write: true, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Gs }) });
        // 16-bit code, no prefixes: 16-bit addresses from DS.
        assert_eq!(string_prefixes(Some([0x6e; 15]), false, 2), (2, Seg::Ds));
        assert_eq!(string_prefixes(Some([0x67, 0x6e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), false, 2), (4, Seg::Ds));
        assert_eq!(string_prefixes(None, false, 4), (4, Seg::Ds));
    }

    #[test]
    fn instruction_information_address_size_and_segment() {
        // SDM Vol. 3C Table 28-8 (INS/OUTS): bits 9:7 address size, 0 = 16-bit, 1 = 32-bit,
        // 2 = 64-bit; bits 17:15 segment register, 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS.
        for (size_field, addr_size) in [(0u32, 2u8), (1, 4), (2, 8)] {
            for (seg_field, seg) in [(0u32, Seg::Es), (1, Seg::Cs), (2, Seg::Ss), (3, Seg::Ds), (4, Seg::Fs), (5, Seg::Gs)] {
                let mut i = info(IO_INSTRUCTION, (0x3f8 << 16) | 16);
                i.io_insn_info = true;
                i.insn_info = (size_field << 7) | (seg_field << 15);
                assert_eq!(
                    dec(&i).exit,
                    Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: false, addr_size, seg }) },
                    "address-size field {size_field}, segment field {seg_field}"
                );
            }
        }
    }

    #[test]
    fn every_segment_override_prefix_names_its_segment() {
        // SDM Vol. 2A 2.1.1, group 2: 2E CS, 36 SS, 3E DS, 26 ES, 64 FS, 65 GS.
        let with = |prefixes: &[u8]| {
            let mut b = [0x6eu8; 15];
            b[..prefixes.len()].copy_from_slice(prefixes);
            Some(b)
        };
        for (p, seg) in [(0x2e, Seg::Cs), (0x36, Seg::Ss), (0x3e, Seg::Ds), (0x26, Seg::Es), (0x64, Seg::Fs), (0x65, Seg::Gs)] {
            assert_eq!(string_prefixes(with(&[p]), false, 4), (4, seg), "prefix {p:#x}");
            // Prefixes come in any order: a 67h after the override still counts (16-bit
            // code: 67h selects 32-bit addresses).
            assert_eq!(string_prefixes(with(&[p, 0x67]), false, 2), (4, seg), "prefix {p:#x} then 67h");
        }
        // Operand size (66h), REP/REPNE (F3h/F2h) and LOCK (F0h) do not end the prefixes either.
        for p in [0x66, 0xf3, 0xf2, 0xf0] {
            assert_eq!(string_prefixes(with(&[p, 0x67, 0x64]), false, 2), (4, Seg::Fs), "prefix {p:#x}");
        }
    }

    #[test]
    fn rex_is_a_prefix_only_in_64_bit_mode() {
        // SDM Vol. 2A 2.2.1: REX (40h-4Fh) exists only in 64-bit mode; a REX that is not
        // immediately before the opcode is ignored, and the prefixes after it still apply.
        let bytes = |b: &[u8]| {
            let mut out = [0x6eu8; 15];
            out[..b.len()].copy_from_slice(b);
            Some(out)
        };
        assert_eq!(string_prefixes(bytes(&[0x48, 0x67, 0x65]), true, 8), (4, Seg::Gs));
        // Outside 64-bit mode 40h-4Fh are INC/DEC opcodes: the prefixes end there.
        assert_eq!(string_prefixes(bytes(&[0x48, 0x67, 0x65]), false, 4), (4, Seg::Ds));
    }

    #[test]
    fn ept_violation_reports_the_access() {
        let mut i = info(EPT_VIOLATION, 2);
        i.gpa = 0xfee0_0000;
        assert_eq!(dec(&i), VmExit::event(Exit::NestedPageFault { gpa: 0xfee0_0000, write: true, fetch: false }));
        i.qualification = 4;
        assert_eq!(dec(&i).exit, Exit::NestedPageFault { gpa: 0xfee0_0000, write: false, fetch: true });
    }

    #[test]
    fn entry_failures_name_the_reason() {
        let e = dec(&info(ENTRY_FAILURE | ENTRY_FAIL_GUEST_STATE, 0));
        assert_eq!(e, VmExit::event(Exit::EntryFailed("exit reason 33 (VM-entry failure: invalid guest state)".into())));
    }

    #[test]
    fn never_enabled_reasons_stop_with_their_number() {
        for r in [TASK_SWITCH, INVLPG, RDTSC, DR_ACCESS, EPT_MISCONFIG, INIT, SIPI, APIC_ACCESS, XSAVES, RDRAND] {
            assert!(matches!(dec(&info(r, 0)).exit, Exit::Unhandled { code, .. } if code == r as u64), "reason {r}");
        }
    }
}
