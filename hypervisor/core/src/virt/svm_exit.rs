//! SVM exit decoding: every exit code (AMD APM Vol. 2 Appendix C) named, and the exit code +
//! EXITINFO1/2 turned into the backend-neutral [`VmExit`], with the next RIP as data. Pure:
//! the kernel reads the VMCB and hands the fields over.
//!
//! Without nRIP save (QEMU's TCG) the CPU does not say where an intercepted instruction
//! ends: the lengths of the fixed-length instructions Bastion intercepts are known from their
//! encodings, IOIO gives the next RIP in EXITINFO2 (APM 15.10.2), and CR writes are decoded
//! from the instruction bytes (as are they when there are no decode assists, APM 15.33).

use crate::vm::guest_mem::{cr0_after, decode_cr_write, CrWriteInsn};
use crate::vm::{Exit, Seg, StringIo, VmExit};

/// Exit codes (APM Vol. 2 Table C-1).
pub mod code {
    pub const CR0_READ: u64 = 0x00;
    pub const CR15_READ: u64 = 0x0f;
    pub const CR0_WRITE: u64 = 0x10;
    pub const CR4_WRITE: u64 = 0x14;
    pub const CR15_WRITE: u64 = 0x1f;
    pub const DR0_READ: u64 = 0x20;
    pub const DR15_WRITE: u64 = 0x3f;
    pub const EXCP_BASE: u64 = 0x40;
    pub const EXCP_LAST: u64 = 0x5f;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const INIT: u64 = 0x63;
    pub const VINTR: u64 = 0x64;
    pub const CR0_SEL_WRITE: u64 = 0x65;
    pub const IDTR_READ: u64 = 0x66;
    pub const GDTR_READ: u64 = 0x67;
    pub const LDTR_READ: u64 = 0x68;
    pub const TR_READ: u64 = 0x69;
    pub const IDTR_WRITE: u64 = 0x6a;
    pub const GDTR_WRITE: u64 = 0x6b;
    pub const LDTR_WRITE: u64 = 0x6c;
    pub const TR_WRITE: u64 = 0x6d;
    pub const RDTSC: u64 = 0x6e;
    pub const RDPMC: u64 = 0x6f;
    pub const PUSHF: u64 = 0x70;
    pub const POPF: u64 = 0x71;
    pub const CPUID: u64 = 0x72;
    pub const RSM: u64 = 0x73;
    pub const IRET: u64 = 0x74;
    pub const SWINT: u64 = 0x75;
    pub const INVD: u64 = 0x76;
    pub const PAUSE: u64 = 0x77;
    pub const HLT: u64 = 0x78;
    pub const INVLPG: u64 = 0x79;
    pub const INVLPGA: u64 = 0x7a;
    pub const IOIO: u64 = 0x7b;
    pub const MSR: u64 = 0x7c;
    pub const TASK_SWITCH: u64 = 0x7d;
    pub const FERR_FREEZE: u64 = 0x7e;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const RDTSCP: u64 = 0x87;
    pub const ICEBP: u64 = 0x88;
    pub const WBINVD: u64 = 0x89;
    pub const MONITOR: u64 = 0x8a;
    pub const MWAIT: u64 = 0x8b;
    pub const MWAIT_CONDITIONAL: u64 = 0x8c;
    pub const XSETBV: u64 = 0x8d;
    pub const RDPRU: u64 = 0x8e;
    pub const EFER_WRITE_TRAP: u64 = 0x8f;
    pub const CR0_WRITE_TRAP: u64 = 0x90;
    pub const CR15_WRITE_TRAP: u64 = 0x9f;
    pub const INVLPGB: u64 = 0xa0;
    pub const INVLPGB_ILLEGAL: u64 = 0xa1;
    pub const INVPCID: u64 = 0xa2;
    pub const MCOMMIT: u64 = 0xa3;
    pub const TLBSYNC: u64 = 0xa4;
    pub const BUSLOCK: u64 = 0xa5;
    pub const IDLE_HLT: u64 = 0xa6;
    pub const NPF: u64 = 0x400;
    pub const AVIC_INCOMPLETE_IPI: u64 = 0x401;
    pub const AVIC_NOACCEL: u64 = 0x402;
    pub const VMGEXIT: u64 = 0x403;
    pub const INVALID: u64 = u64::MAX;
    pub const BUSY: u64 = u64::MAX - 1;
    pub const IDLE_REQUIRED: u64 = u64::MAX - 2;
    pub const INVALID_PMC: u64 = u64::MAX - 3;
}

/// The name of an exit code, for reports.
pub fn code_name(c: u64) -> &'static str {
    use code::*;
    const CR_READ: [&str; 16] = ["CR0 read", "CR1 read", "CR2 read", "CR3 read", "CR4 read", "CR5 read", "CR6 read", "CR7 read", "CR8 read", "CR9 read", "CR10 read", "CR11 read", "CR12 read", "CR13 read", "CR14 read", "CR15 read"];
    match c {
        CR0_READ..=CR15_READ => CR_READ[c as usize],
        CR0_WRITE..=CR15_WRITE => "CR write",
        DR0_READ..=0x2f => "DR read",
        0x30..=DR15_WRITE => "DR write",
        EXCP_BASE..=EXCP_LAST => "exception",
        INTR => "physical interrupt",
        NMI => "physical NMI",
        SMI => "SMI",
        INIT => "INIT",
        VINTR => "virtual interrupt",
        CR0_SEL_WRITE => "selective CR0 write",
        IDTR_READ => "IDTR read",
        GDTR_READ => "GDTR read",
        LDTR_READ => "LDTR read",
        TR_READ => "TR read",
        IDTR_WRITE => "IDTR write",
        GDTR_WRITE => "GDTR write",
        LDTR_WRITE => "LDTR write",
        TR_WRITE => "TR write",
        RDTSC => "RDTSC",
        RDPMC => "RDPMC",
        PUSHF => "PUSHF",
        POPF => "POPF",
        CPUID => "CPUID",
        RSM => "RSM",
        IRET => "IRET",
        SWINT => "software interrupt",
        INVD => "INVD",
        PAUSE => "PAUSE",
        HLT => "HLT",
        INVLPG => "INVLPG",
        INVLPGA => "INVLPGA",
        IOIO => "I/O instruction",
        MSR => "RDMSR/WRMSR",
        TASK_SWITCH => "task switch",
        FERR_FREEZE => "FERR freeze",
        SHUTDOWN => "shutdown",
        VMRUN => "VMRUN",
        VMMCALL => "VMMCALL",
        VMLOAD => "VMLOAD",
        VMSAVE => "VMSAVE",
        STGI => "STGI",
        CLGI => "CLGI",
        SKINIT => "SKINIT",
        RDTSCP => "RDTSCP",
        ICEBP => "ICEBP",
        WBINVD => "WBINVD",
        MONITOR => "MONITOR",
        MWAIT => "MWAIT",
        MWAIT_CONDITIONAL => "MWAIT (conditional)",
        XSETBV => "XSETBV",
        RDPRU => "RDPRU",
        EFER_WRITE_TRAP => "EFER write trap",
        CR0_WRITE_TRAP..=CR15_WRITE_TRAP => "CR write trap",
        INVLPGB => "INVLPGB",
        INVLPGB_ILLEGAL => "illegal INVLPGB",
        INVPCID => "INVPCID",
        MCOMMIT => "MCOMMIT",
        TLBSYNC => "TLBSYNC",
        BUSLOCK => "bus lock",
        IDLE_HLT => "idle HLT",
        NPF => "nested page fault",
        AVIC_INCOMPLETE_IPI => "AVIC incomplete IPI",
        AVIC_NOACCEL => "AVIC unaccelerated access",
        VMGEXIT => "VMGEXIT",
        // QEMU stores -1 as a 32-bit value; the APM defines it as 64-bit -1.
        INVALID | 0xffff_ffff => "invalid guest state (VMEXIT_INVALID)",
        BUSY => "VMSA busy",
        IDLE_REQUIRED => "idle required",
        INVALID_PMC => "invalid PMC state",
        _ => "reserved exit code",
    }
}

/// The VMCB fields decoding needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvmExitInfo {
    pub code: u64,
    pub info1: u64,
    pub info2: u64,
    pub rip: u64,
    /// NRIP, when the CPU has nRIP save (CPUID 8000_000AH:EDX[3]).
    pub nrip: Option<u64>,
    /// CR0 as the guest sees it (for CLTS and LMSW).
    pub guest_cr0: u64,
    /// 64-bit code (IA-32e mode and CS.L), and CS.D.
    pub long_mode: bool,
    pub cs_db: bool,
}

/// Decodes an exit. `gpr(n)` reads general register `n` in the instruction-encoding order;
/// `insn()` fetches up to 15 instruction bytes at RIP (used only for CR writes and OUTS
/// prefixes, when the hardware gives less).
pub fn decode(i: &SvmExitInfo, gpr: &dyn Fn(usize) -> u64, insn: &mut dyn FnMut() -> Option<[u8; 15]>) -> VmExit {
    use code::*;
    // Known lengths of the intercepted instructions: CPUID 0F A2, RDMSR 0F 32, WRMSR 0F 30,
    // HLT F4, VMMCALL 0F 01 D9, INVD 0F 08, WBINVD 0F 09, XSETBV 0F 01 D1.
    let insn_exit = |e: Exit, len: u64| VmExit::insn(e, i.nrip.unwrap_or(i.rip.wrapping_add(len)));
    let unhandled = || VmExit::event(Exit::Unhandled { code: i.code, info1: i.info1, info2: i.info2 });
    match i.code {
        CPUID => insn_exit(Exit::Cpuid, 2),
        // EXITINFO1 = 1 for WRMSR, 0 for RDMSR (APM 15.11).
        MSR => insn_exit(if i.info1 == 1 { Exit::Wrmsr } else { Exit::Rdmsr }, 2),
        HLT => insn_exit(Exit::Hlt, 1),
        VMMCALL => insn_exit(Exit::Hypercall, 3),
        // An intercept is checked before the instruction's own exceptions (APM 15.7.1): the
        // handler answers #GP, nothing completes.
        RDPMC => VmExit::event(Exit::Rdpmc),
        INVD => insn_exit(Exit::Invd, 2),
        WBINVD => insn_exit(Exit::Invd, 2),
        XSETBV => insn_exit(Exit::Xsetbv, 3),
        IOIO => decode_io(i, insn),
        CR0_WRITE | CR4_WRITE => decode_cr_write_exit(i, gpr, insn).unwrap_or_else(unhandled),
        // EXITINFO1 bit 1: write; bit 4: instruction fetch (APM 15.25.6).
        NPF => VmExit::event(Exit::NestedPageFault { gpa: i.info2, write: i.info1 & 2 != 0, fetch: i.info1 & 16 != 0 }),
        SHUTDOWN => VmExit::event(Exit::TripleFault),
        VMRUN | VMLOAD | VMSAVE | STGI | CLGI | SKINIT | INVLPGA | MONITOR | MWAIT | MWAIT_CONDITIONAL | VMGEXIT => {
            VmExit::event(Exit::VirtInstruction)
        }
        INTR | SMI | BUSLOCK => VmExit::event(Exit::Interrupted),
        // The PAUSE intercept with a filter count: the count ran out (APM Vol. 2 15.14.4); the
        // exit comes before the PAUSE, which runs again on resume.
        PAUSE => VmExit::event(Exit::PauseLoop),
        NMI => VmExit::event(Exit::HostNmi),
        VINTR => VmExit::event(Exit::InterruptWindow),
        // Intercepted only while an injected NMI's handler runs: its IRET ends the blocking
        // (APM 15.21.4; SVM keeps no NMI-blocked state of its own without vNMI).
        IRET => VmExit::event(Exit::NmiWindow),
        INVALID | 0xffff_ffff => VmExit::event(Exit::EntryFailed(code_name(INVALID).into())),
        _ => unhandled(),
    }
}

/// IOIO EXITINFO1 (APM 15.10.2): bit 0 IN, bit 2 string, bit 3 REP, bits 4-6 size (8/16/32),
/// bits 7-9 address size (16/32/64), bits 10-12 segment (with decode assists), port in 31:16;
/// EXITINFO2 = the next RIP.
fn decode_io(i: &SvmExitInfo, insn: &mut dyn FnMut() -> Option<[u8; 15]>) -> VmExit {
    let q = i.info1;
    let size = if q & (1 << 4) != 0 {
        1
    } else if q & (1 << 5) != 0 {
        2
    } else {
        4
    };
    let string = (q & 4 != 0).then(|| {
        let addr_size = if q & (1 << 7) != 0 {
            2
        } else if q & (1 << 8) != 0 {
            4
        } else {
            8
        };
        // The segment field is only filled with decode assists; read the prefixes otherwise.
        // INS always uses ES, so only OUTS needs it.
        let (_, seg) = if q & 1 == 0 { super::vmx_exit::string_prefixes(insn(), i.long_mode, addr_size) } else { (addr_size, Seg::Es) };
        StringIo { rep: q & 8 != 0, addr_size, seg }
    });
    VmExit::insn(Exit::Io { port: (q >> 16) as u16, size, write: q & 1 == 0, string }, i.info2)
}

/// A CR0/CR4 write intercept. With decode assists EXITINFO1 bit 63 marks a MOV and bits 3:0
/// name its register (APM 15.33.2); otherwise (and for CLTS/LMSW) the bytes are decoded.
fn decode_cr_write_exit(i: &SvmExitInfo, gpr: &dyn Fn(usize) -> u64, insn: &mut dyn FnMut() -> Option<[u8; 15]>) -> Option<VmExit> {
    let cr = (i.code - code::CR0_WRITE) as u8;
    let decoded = insn().and_then(|b| decode_cr_write(&b, i.long_mode));
    let (value, len) = match (i.info1 >> 63 != 0, decoded) {
        (true, d) => (gpr((i.info1 & 0xf) as usize), d.map(|(_, l)| l)),
        (false, Some((CrWriteInsn::Mov { cr: c, gpr: g }, len))) if c == cr => (gpr(g), Some(len)),
        (false, Some((form @ (CrWriteInsn::Clts | CrWriteInsn::Lmsw { .. }), len))) if cr == 0 => {
            let src = match form {
                CrWriteInsn::Lmsw { gpr: g } => gpr(g),
                _ => 0,
            };
            (cr0_after(form, i.guest_cr0, src), Some(len))
        }
        _ => return None,
    };
    let next = i.nrip.or_else(|| len.map(|l| i.rip.wrapping_add(l as u64)))?;
    Some(VmExit::insn(Exit::CrWrite { cr, value }, next))
}

#[cfg(test)]
mod tests {
    use super::code::*;
    use super::*;

    fn info(code: u64, info1: u64, info2: u64) -> SvmExitInfo {
        SvmExitInfo { code, info1, info2, rip: 0x2000, ..Default::default() }
    }

    fn dec(i: &SvmExitInfo) -> VmExit {
        decode(i, &|n| 0x100 + n as u64, &mut || None)
    }

    fn bytes(b: &[u8]) -> Option<[u8; 15]> {
        let mut out = [0x90; 15];
        out[..b.len()].copy_from_slice(b);
        Some(out)
    }

    #[test]
    fn every_code_in_appendix_c_is_named_and_decodes_without_panicking() {
        let named: Vec<u64> = (0..=0xa6).chain(0x400..=0x403).chain([INVALID, BUSY, IDLE_REQUIRED, INVALID_PMC]).collect();
        for c in named {
            assert_ne!(code_name(c), "reserved exit code", "code {c:#x}");
            let _ = decode(&info(c, u64::MAX, u64::MAX), &|_| 0, &mut || None);
        }
        assert_eq!(code_name(0xa7), "reserved exit code");
        assert_eq!(code_name(0x404), "reserved exit code");
        assert_eq!(code_name(NPF), "nested page fault");
    }

    #[test]
    fn fixed_length_instructions_without_nrip() {
        // Lengths by encoding (APM Vol. 3): CPUID 2, RDMSR/WRMSR 2, HLT 1, VMMCALL 3, INVD 2,
        // WBINVD 2, XSETBV 3.
        for (c, info1, exit, len) in [
            (CPUID, 0, Exit::Cpuid, 2),
            (MSR, 0, Exit::Rdmsr, 2),
            (MSR, 1, Exit::Wrmsr, 2),
            (HLT, 0, Exit::Hlt, 1),
            (VMMCALL, 0, Exit::Hypercall, 3),
            (INVD, 0, Exit::Invd, 2),
            (WBINVD, 0, Exit::Invd, 2),
            (XSETBV, 0, Exit::Xsetbv, 3),
        ] {
            assert_eq!(dec(&info(c, info1, 0)), VmExit::insn(exit, 0x2000 + len), "code {c:#x}");
        }
    }

    #[test]
    fn nrip_wins_when_the_cpu_saves_it() {
        let mut i = info(CPUID, 0, 0);
        i.nrip = Some(0x2005);
        assert_eq!(dec(&i).next_rip, Some(0x2005));
    }

    #[test]
    fn ioio_fields() {
        // OUT DX, AL to 0x3f8: SZ8 (bit 4), type OUT (bit 0 = 0); EXITINFO2 = next RIP.
        assert_eq!(dec(&info(IOIO, (0x3f8 << 16) | (1 << 4), 0x2001)), VmExit::insn(Exit::Io { port: 0x3f8, size: 1, write: true, string: None }, 0x2001));
        // IN AX, DX from 0x60: SZ16, IN.
        assert_eq!(dec(&info(IOIO, (0x60 << 16) | (1 << 5) | 1, 0x2002)).exit, Exit::Io { port: 0x60, size: 2, write: false, string: None });
        // REP INSD with 64-bit addresses: ES is implied.
        assert_eq!(
            dec(&info(IOIO, (0x1f0 << 16) | (1 << 6) | (1 << 9) | 8 | 4 | 1, 0x2003)).exit,
            Exit::Io { port: 0x1f0, size: 4, write: false, string: Some(StringIo { rep: true, addr_size: 8, seg: Seg::Es }) }
        );
        // OUTSB with 16-bit addresses and an ES override in the bytes (26 6e).
        let i = info(IOIO, (0x80 << 16) | (1 << 4) | (1 << 7) | 4, 0x2002);
        assert_eq!(
            decode(&i, &|_| 0, &mut || bytes(&[0x26, 0x6e])).exit,
            Exit::Io { port: 0x80, size: 1, write: true, string: Some(StringIo { rep: false, addr_size: 2, seg: Seg::Es }) }
        );
    }

    #[test]
    fn ioio_address_sizes_and_the_outs_segment() {
        // APM Vol. 2 15.10.2, IOIO EXITINFO1: bit 2 STR, bit 4 SZ8, bits 7/8/9 A16/A32/A64.
        for (bit, addr_size) in [(7, 2u8), (8, 4), (9, 8)] {
            let q = (0x3f8 << 16) | (1 << 4) | 4 | (1 << bit);
            assert_eq!(
                dec(&info(IOIO, q, 0x2002)).exit,
                Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: false, addr_size, seg: Seg::Ds }) },
                "address-size bit {bit}"
            );
        }
        // OUTS (bit 0 = 0) reads DS:rSI unless a prefix overrides it (SDM Vol. 2B OUTS): FS
        // here (64 6e); without a prefix, DS.
        let q = (0x3f8 << 16) | (1 << 4) | 4 | (1 << 8);
        let outs = decode(&info(IOIO, q, 0x2002), &|_| 0, &mut || bytes(&[0x64, 0x6e]));
        assert_eq!(outs.exit, Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Fs }) });
        let outs = decode(&info(IOIO, q, 0x2001), &|_| 0, &mut || bytes(&[0x6e]));
        assert_eq!(outs.exit, Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Ds }) });
        // INS (bit 0 = 1) always writes ES:rDI, whatever prefix is there.
        let ins = decode(&info(IOIO, q | 1, 0x2002), &|_| 0, &mut || bytes(&[0x64, 0x6c]));
        assert_eq!(ins.exit, Exit::Io { port: 0x3f8, size: 1, write: false, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Es }) });
    }

    #[test]
    fn the_negative_exit_codes_have_their_own_names() {
        // APM Vol. 2 Table C-1: VMEXIT_INVALID -1, VMEXIT_BUSY -2, VMEXIT_IDLE_REQUIRED -3,
        // VMEXIT_INVALID_PMC -4 (64-bit two's complement).
        assert_eq!(code_name(-1i64 as u64), "invalid guest state (VMEXIT_INVALID)");
        assert_eq!(code_name(-2i64 as u64), "VMSA busy");
        assert_eq!(code_name(-3i64 as u64), "idle required");
        assert_eq!(code_name(-4i64 as u64), "invalid PMC state");
        assert_eq!(code_name(-5i64 as u64), "reserved exit code");
        // Bastion never runs SEV-SNP guests: -2 stops as an unhandled exit with its number.
        assert!(matches!(dec(&info(-2i64 as u64, 0, 0)).exit, Exit::Unhandled { code, .. } if code == -2i64 as u64));
    }

    #[test]
    fn cr_writes_decode_mov_clts_and_lmsw_from_the_bytes() {
        // mov cr4, rax = 0f 22 e0
        let i = info(CR4_WRITE, 0, 0);
        assert_eq!(decode(&i, &|n| 0x100 + n as u64, &mut || bytes(&[0x0f, 0x22, 0xe0])), VmExit::insn(Exit::CrWrite { cr: 4, value: 0x100 }, 0x2003));
        // mov cr0, ebx = 0f 22 c3
        let i = info(CR0_WRITE, 0, 0);
        assert_eq!(decode(&i, &|n| 0x100 + n as u64, &mut || bytes(&[0x0f, 0x22, 0xc3])).exit, Exit::CrWrite { cr: 0, value: 0x103 });
        // clts = 0f 06: CR0 without TS.
        let mut i = info(CR0_WRITE, 0, 0);
        i.guest_cr0 = 0x8000_003b;
        assert_eq!(decode(&i, &|_| 0, &mut || bytes(&[0x0f, 0x06])), VmExit::insn(Exit::CrWrite { cr: 0, value: 0x8000_0033 }, 0x2002));
        // lmsw ax = 0f 01 f0 with AX = 1: sets PE.
        i.guest_cr0 = 0x10;
        assert_eq!(decode(&i, &|_| 1, &mut || bytes(&[0x0f, 0x01, 0xf0])).exit, Exit::CrWrite { cr: 0, value: 0x11 });
        // Bytes that are not a CR write (or cannot be read): a named stop, never a guess.
        assert!(matches!(decode(&info(CR4_WRITE, 0, 0), &|_| 0, &mut || bytes(&[0x90])).exit, Exit::Unhandled { code: CR4_WRITE, .. }));
        assert!(matches!(dec(&info(CR0_WRITE, 0, 0)).exit, Exit::Unhandled { .. }));
        // A MOV to the other CR than the intercept says is refused as well.
        assert!(matches!(decode(&info(CR4_WRITE, 0, 0), &|_| 0, &mut || bytes(&[0x0f, 0x22, 0xc3])).exit, Exit::Unhandled { .. }));
    }

    #[test]
    fn cr_write_with_decode_assists_names_the_register() {
        // EXITINFO1[63] = 1, GPR 9 (R9); NRIP from the CPU.
        let mut i = info(CR4_WRITE, (1 << 63) | 9, 0);
        i.nrip = Some(0x2004);
        assert_eq!(dec(&i), VmExit::insn(Exit::CrWrite { cr: 4, value: 0x109 }, 0x2004));
    }

    #[test]
    fn decode_assists_name_every_register_and_only_cr0_has_clts_and_lmsw() {
        // APM Vol. 2 15.33.2: for MOV CRn, EXITINFO1 bit 63 = 1 and bits 3:0 = the GPR number
        // (0 = RAX ... 15 = R15), whichever register it is.
        for gpr in 0..16u64 {
            let mut i = info(CR0_WRITE, (1 << 63) | gpr, 0);
            i.nrip = Some(0x2003);
            assert_eq!(dec(&i), VmExit::insn(Exit::CrWrite { cr: 0, value: 0x100 + gpr }, 0x2003), "GPR {gpr}");
        }
        // CLTS (0f 06) and LMSW (0f 01 /6) write CR0 only (SDM Vol. 2A CLTS, LMSW): decoded
        // under a CR4 write intercept they are not what the CPU reported, so no guess is made.
        for b in [&[0x0f, 0x06][..], &[0x0f, 0x01, 0xf0][..]] {
            let e = decode(&info(CR4_WRITE, 0, 0), &|_| 1, &mut || bytes(b));
            assert!(matches!(e.exit, Exit::Unhandled { code: CR4_WRITE, .. }), "{b:x?}");
        }
    }

    #[test]
    fn events_and_faults() {
        assert_eq!(dec(&info(NPF, 2, 0xfee0_0000)), VmExit::event(Exit::NestedPageFault { gpa: 0xfee0_0000, write: true, fetch: false }));
        assert_eq!(dec(&info(NPF, 16, 0x1000)).exit, Exit::NestedPageFault { gpa: 0x1000, write: false, fetch: true });
        assert_eq!(dec(&info(SHUTDOWN, 0, 0)).exit, Exit::TripleFault);
        assert_eq!(dec(&info(INTR, 0, 0)).exit, Exit::Interrupted);
        assert_eq!(dec(&info(PAUSE, 0, 0)), VmExit::event(Exit::PauseLoop), "before the PAUSE: nothing to complete");
        assert_eq!(dec(&info(NMI, 0, 0)).exit, Exit::HostNmi);
        assert_eq!(dec(&info(RDPMC, 0, 0)), VmExit::event(Exit::Rdpmc), "faulted, not completed");
        assert_eq!(dec(&info(VINTR, 0, 0)).exit, Exit::InterruptWindow);
        assert_eq!(dec(&info(IRET, 0, 0)).exit, Exit::NmiWindow);
        for c in [VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA, MONITOR, MWAIT] {
            assert_eq!(dec(&info(c, 0, 0)), VmExit::event(Exit::VirtInstruction), "code {c:#x}");
        }
        assert!(matches!(dec(&info(INVALID, 0, 0)).exit, Exit::EntryFailed(ref s) if s.contains("VMEXIT_INVALID")));
        assert!(matches!(dec(&info(0xffff_ffff, 0, 0)).exit, Exit::EntryFailed(_)), "QEMU's 32-bit -1");
        assert!(matches!(dec(&info(TASK_SWITCH, 0, 0)).exit, Exit::Unhandled { code: TASK_SWITCH, .. }));
    }
}
