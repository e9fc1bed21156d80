//! MMIO instruction decoding and emulation: from the bytes of the instruction that touched a
//! device register to its length, access size, direction and operands, then the access itself
//! with the register and flag results the CPU would have produced.
//!
//! # Why
//!
//! When a guest touches guest-physical memory that is a device (the MMIO hole of
//! [`super::memmap`]), the hardware stops it with an EPT violation (SDM Vol. 3C 29.3.3.2) or a
//! nested page fault (APM Vol. 2 15.25.6) and reports only the guest-physical address and
//! whether it was a read or a write. Which register was stored, how many bytes, and where the
//! next instruction starts are in the instruction itself, so Bastion decodes it from its bytes
//! (the caller fetches up to 15 of them, e.g. with `guest_mem::Paging::fetch`). AMD's decode
//! assists give the bytes but still no decoding; Intel gives nothing for EPT violations.
//!
//! # What is decoded
//!
//! The instructions an OS uses on device registers, always with a memory operand:
//!
//! | form | opcodes |
//! |---|---|
//! | MOV r/m,reg · reg,r/m · r/m,imm · moffs | 88 89 8A 8B · C6 /0 C7 /0 · A0–A3 |
//! | MOVZX, MOVSX | 0F B6, 0F B7, 0F BE, 0F BF |
//! | XCHG r/m,reg (Linux's LAPIC writes on 11AP-bug CPUs) | 86 87 |
//! | ADD OR ADC SBB AND SUB XOR CMP (both directions) | 00–03 08–0B 10–13 18–1B 20–23 28–2B 30–33 38–3B |
//! | group 1 with an immediate | 80 81 83 (82 outside 64-bit mode) |
//! | TEST r/m,reg · r/m,imm | 84 85 · F6 /0 F7 /0 |
//! | PUSH r/m, POP r/m | FF /6, 8F /0 |
//! | MOVS, STOS, LODS, with REP | A4 A5, AA AB, AC AD |
//!
//! with the prefixes of SDM Vol. 2A 2.1.1 (operand size 66, address size 67, segment
//! overrides 26 2E 36 3E 64 65, REP/REPNE F3/F2, LOCK F0) and REX in 64-bit mode (2.2.1).
//! Anything else is [`DecodeError::Unsupported`]: the caller stops the guest with a report
//! rather than guess. Decoding never panics, whatever the bytes (a property test feeds it
//! random strings).
//!
//! # Instruction format (SDM Vol. 2A 2.1, Figure 2-1)
//!
//! `prefixes · [REX] · opcode (1 or 2 bytes) · [ModRM] · [SIB] · [displacement] · [immediate]`,
//! at most 15 bytes (2.3.11: a longer one raises #GP). ModRM and SIB are decoded per Tables 2-1
//! (16-bit addressing), 2-2 (32-bit) and 2-3 (SIB); 64-bit addressing is 2-2/2-3 with the
//! REX.B/REX.X extensions and RIP-relative addressing in place of `disp32` without a base
//! (2.2.1.6). The length is exact, because the caller advances RIP by it.
//!
//! # Execution
//!
//! [`execute`] performs the decoded access through an [`InsnMemory`] and updates registers
//! through a [`RegisterFile`]. The operand the ModRM byte (or moffs) names is accessed at the
//! guest-physical address the hardware reported, not recomputed from the guest's registers and
//! page tables: that is exactly what faulted, and it costs no page walk. The operands that
//! registers name — the string forms' rSI/rDI and the stack of PUSH/POP — are given as
//! segment:offset and the memory side routes them (to RAM or the device bus): for MOVS either
//! side may be the device, and a REP string moves on to other addresses after the first one.
//! An access the hardware reported is handed over as one piece even if it crosses a page
//! (device registers are naturally aligned; a guest that splits one across pages gets both
//! halves at consecutive guest-physical addresses).
//!
//! Read-modify-write forms (ALU to memory, XCHG, LOCK or not) are a device read followed by a
//! device write. They are atomic towards other vCPUs only if the [`InsnMemory`] holds the
//! device across both; the device bus locks per access, which is enough for device registers
//! (a guest that needs atomicity on a register takes its own lock around it, as drivers do).

use super::regs::{write_low, Rflags};
use super::rep::{self, Element, RepEnd};
use super::{Gprs, Seg};
use bitflags::bitflags;
use core::fmt;

/// The longest instruction the CPU executes (SDM Vol. 2A 2.3.11).
pub const MAX_INSN_LEN: usize = 15;

/// The code segment's defaults (SDM Vol. 1 3.6 "Operand-size and Address-size Attributes",
/// Table 3-4 for 64-bit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode, virtual-8086 mode, or a code segment with CS.D = 0: 16-bit operands and
    /// addresses by default.
    Bits16,
    /// Protected or compatibility mode with CS.D = 1.
    Bits32,
    /// 64-bit mode (IA32_EFER.LMA = 1 and CS.L = 1): 32-bit operands, 64-bit addresses, REX.
    Bits64,
}

impl CpuMode {
    /// The mode from CS's attributes: CS.L in IA-32e mode, else CS.D.
    pub fn from_cs(in_64bit_mode: bool, cs_d: bool) -> CpuMode {
        match (in_64bit_mode, cs_d) {
            (true, _) => CpuMode::Bits64,
            (false, true) => CpuMode::Bits32,
            (false, false) => CpuMode::Bits16,
        }
    }
}

bitflags! {
    /// The REX prefix's bits (SDM Vol. 2A 2.2.1.2, Table 2-4): 0100WRXB.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rex: u8 {
        /// Extends ModRM.rm, SIB.base (or the opcode's register) to R8–R15.
        const B = 1 << 0;
        /// Extends SIB.index.
        const X = 1 << 1;
        /// Extends ModRM.reg.
        const R = 1 << 2;
        /// 64-bit operand size (wins over 66).
        const W = 1 << 3;
    }
}

/// The repeat prefixes (group 1, SDM Vol. 2A 2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rep {
    /// F3: REP/REPE.
    Rep,
    /// F2: REPNE. Only CMPS/SCAS read ZF; the SDM lists only F3 for MOVS/STOS/LODS, and
    /// Bastion repeats them on F2 like on F3, as KVM's x86 emulator does.
    Repne,
}

/// A general register as an instruction names it: its number (0 = rAX … 4 = rSP … 15 = R15,
/// SDM Vol. 2A Table 2-2's reg column and 2.2.1.2) and, for a byte operand, whether it is
/// AH/CH/DH/BH (bits 15:8 of register 0–3): the byte registers 4–7 mean AH–BH without a REX
/// prefix and SPL/BPL/SIL/DIL with any REX (SDM Vol. 2A 2.2.1.2, Table 3-1 of Vol. 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    pub index: u8,
    pub high_byte: bool,
}

impl Reg {
    pub const RAX: Reg = Reg { index: 0, high_byte: false };

    fn full(index: u8) -> Reg {
        Reg { index, high_byte: false }
    }

    /// The register `n` names in an instruction with operand size `size`.
    fn sized(n: u8, size: u8, rex: bool) -> Reg {
        if size == 1 && !rex && (4..8).contains(&n) {
            Reg { index: n - 4, high_byte: true }
        } else {
            Reg::full(n)
        }
    }
}

/// The other operand of a MOV/ALU instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    Reg(Reg),
    /// Sign-extended to 64 bits as the encoding says (imm8 of 83, imm32 with REX.W); the
    /// execution takes the operand-size part.
    Imm(u64),
}

/// The arithmetic and logic operations with a memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

impl AluOp {
    /// Group 1's ModRM.reg and the 00–3F opcodes' bits 5:3 (SDM Vol. 2A Table A-6 and the
    /// one-byte opcode map A-2) share one numbering.
    fn from_group1(n: u8) -> AluOp {
        [AluOp::Add, AluOp::Or, AluOp::Adc, AluOp::Sbb, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp][(n & 7) as usize]
    }

    /// Whether the result is stored (CMP and TEST only set flags).
    fn writes(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

/// What the instruction does. "mem" is the operand the ModRM byte or moffs names (the device
/// access at the reported guest-physical address); `size` of [`MmioInsn`] is its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `reg = mem` (8A, 8B, A0, A1).
    MovLoad { reg: Reg },
    /// `mem = src` (88, 89, A2, A3, C6 /0, C7 /0).
    MovStore { src: Operand },
    /// `reg = zero-extend(mem)` to `dst_size` bytes (0F B6, 0F B7).
    Movzx { reg: Reg, dst_size: u8 },
    /// `reg = sign-extend(mem)` to `dst_size` bytes (0F BE, 0F BF).
    Movsx { reg: Reg, dst_size: u8 },
    /// Swaps `reg` and `mem` (86, 87; always locked).
    Xchg { reg: Reg },
    /// `mem = mem op src`, flags set; CMP/TEST only set flags.
    AluToMem { op: AluOp, src: Operand },
    /// `reg = reg op mem`, flags set; CMP only sets flags.
    AluToReg { op: AluOp, reg: Reg },
    /// Pushes `mem` (FF /6).
    Push,
    /// Pops into `mem` (8F /0).
    Pop,
    /// Copies seg:rSI to ES:rDI (A4, A5).
    Movs,
    /// Stores rAX at ES:rDI (AA, AB).
    Stos,
    /// Loads rAX from seg:rSI (AC, AD).
    Lods,
}

/// How the device operand is accessed (to check against what the hardware reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
    /// Read, then written (ALU to memory, XCHG) — or, for MOVS, either side may be the device.
    ReadWrite,
}

/// A ModRM memory operand (or moffs): `base + index * scale + disp`, or `next RIP + disp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    pub base: Option<u8>,
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    pub disp: i64,
    /// 64-bit mode's RIP-relative form (SDM Vol. 2A 2.2.1.6): relative to the next instruction.
    pub rip_relative: bool,
}

/// A decoded MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInsn {
    /// Bytes, prefixes included: the caller advances RIP by this much.
    pub len: u8,
    pub op: Op,
    /// Bytes per memory access: 1, 2, 4 or 8 (for MOVZX/MOVSX the source width).
    pub size: u8,
    /// Address size in bytes (2, 4 or 8): how much of the address registers counts.
    pub addr_size: u8,
    /// The ModRM/moffs operand; `None` for the string forms (their operands are rSI/rDI).
    pub mem: Option<MemOperand>,
    /// The segment of the memory operand an override applies to: the ModRM/moffs operand, or
    /// the source of MOVS/LODS; ES for STOS, whose ES:rDI cannot be overridden. Defaults per
    /// SDM Vol. 1 Table 3-5: SS for rBP/rSP-based addresses, else DS.
    pub seg: Seg,
    /// A segment override prefix as given (the last one wins). In 64-bit mode only FS and GS
    /// have a base; the caller's segment bases say so.
    pub seg_override: Option<Seg>,
    pub rep: Option<Rep>,
    pub lock: bool,
    /// The REX prefix in effect (empty without one).
    pub rex: Rex,
}

impl MmioInsn {
    /// How the device operand is accessed.
    pub fn direction(&self) -> Direction {
        match self.op {
            Op::MovLoad { .. } | Op::Movzx { .. } | Op::Movsx { .. } | Op::Push | Op::Lods => Direction::Read,
            Op::AluToMem { op, .. } if !op.writes() => Direction::Read,
            Op::AluToReg { .. } => Direction::Read,
            Op::MovStore { .. } | Op::Pop | Op::Stos => Direction::Write,
            Op::AluToMem { .. } | Op::Xchg { .. } | Op::Movs => Direction::ReadWrite,
        }
    }

    /// The offset of the ModRM/moffs operand in its segment (without the segment base),
    /// computed from the registers; `rip` is this instruction's. `None` for the string forms.
    /// Execution does not need it (it uses the reported guest-physical address); it is here
    /// for checks and reports.
    pub fn effective_address(&self, regs: &(impl RegisterFile + ?Sized), rip: u64) -> Option<u64> {
        let m = self.mem?;
        let mut ea = m.disp as u64;
        if m.rip_relative {
            ea = ea.wrapping_add(rip.wrapping_add(self.len as u64));
        }
        if let Some(b) = m.base {
            ea = ea.wrapping_add(regs.gpr(b));
        }
        if let Some(i) = m.index {
            ea = ea.wrapping_add(regs.gpr(i).wrapping_mul(m.scale as u64));
        }
        // Address arithmetic wraps at the address size (SDM Vol. 1 3.3.7).
        Some(ea & mask(self.addr_size))
    }
}

/// Why bytes did not decode to a supported MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended before the instruction did (the fetch was cut short).
    Truncated,
    /// The instruction would be longer than 15 bytes: #GP on hardware (SDM Vol. 2A 2.3.11).
    TooLong,
    /// A valid or invalid instruction Bastion does not emulate; `opcode` is the opcode byte
    /// (0x0Fxx for two-byte opcodes), `ext` the ModRM.reg of a group opcode.
    Unsupported { opcode: u16, ext: Option<u8> },
    /// ModRM names a register where the instruction must have touched memory: it cannot be
    /// the instruction that faulted.
    RegisterOperand { opcode: u16 },
    /// LOCK on an instruction that does not allow it: #UD on hardware (SDM Vol. 2A "LOCK").
    BadLock { opcode: u16 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "instruction bytes end too early"),
            DecodeError::TooLong => write!(f, "instruction longer than 15 bytes"),
            DecodeError::Unsupported { opcode, ext: None } => write!(f, "opcode {opcode:#04x} is not emulated for MMIO"),
            DecodeError::Unsupported { opcode, ext: Some(e) } => write!(f, "opcode {opcode:#04x} /{e} is not emulated for MMIO"),
            DecodeError::RegisterOperand { opcode } => write!(f, "opcode {opcode:#04x} with a register operand cannot access MMIO"),
            DecodeError::BadLock { opcode } => write!(f, "LOCK prefix on opcode {opcode:#04x}"),
        }
    }
}

/// A value mask of `size` bytes.
fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Sign-extends the low `size` bytes of `v`.
fn sign_extend(v: u64, size: u8) -> u64 {
    let shift = 64 - 8 * size as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// Reads bytes one at a time, enforcing the 15-byte limit.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        // The limit comes first: with 16 bytes of prefixes at hand, the 16th is never read.
        if self.pos >= MAX_INSN_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// A little-endian value of `n` bytes (1, 2, 4 or 8), zero-extended.
    fn uint(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= (self.byte()? as u64) << (8 * i);
        }
        Ok(v)
    }

    /// A little-endian value of `n` bytes, sign-extended.
    fn int(&mut self, n: u8) -> Result<i64, DecodeError> {
        Ok(sign_extend(self.uint(n)?, n) as i64)
    }
}

/// The decoded ModRM byte (and what follows it up to the immediate).
struct ModRm {
    /// ModRM.reg with REX.R: a register number or a group opcode extension.
    reg: u8,
    /// `None` when mod = 11 (a register operand).
    mem: Option<MemOperand>,
    /// The default segment of the memory operand (SS for rBP/rSP bases).
    stack_default: bool,
}

struct Decoder<'a> {
    c: Cursor<'a>,
    mode: CpuMode,
    rex: Rex,
    addr_size: u8,
    opcode: u16,
}

impl Decoder<'_> {
    /// ModRM, SIB and displacement (SDM Vol. 2A 2.1.5).
    fn modrm(&mut self) -> Result<ModRm, DecodeError> {
        let m = self.c.byte()?;
        let (md, rm) = (m >> 6, m & 7);
        // REX.R is bit 3 of the register number, above ModRM's three bits: added (disjoint).
        let reg = ((m >> 3) & 7) + if self.rex.contains(Rex::R) { 8 } else { 0 };
        if md == 3 {
            return Ok(ModRm { reg, mem: None, stack_default: false });
        }
        let mut mem = MemOperand { base: None, index: None, scale: 1, disp: 0, rip_relative: false };
        let stack_default;
        if self.addr_size == 2 {
            // Table 2-1: the eight base/index pairs; mod 00 with r/m 110 is a bare disp16.
            const PAIRS: [(u8, Option<u8>); 8] =
                [(3, Some(6)), (3, Some(7)), (5, Some(6)), (5, Some(7)), (6, None), (7, None), (5, None), (3, None)];
            if md == 0 && rm == 6 {
                mem.disp = self.c.int(2)?;
                stack_default = false;
            } else {
                let (base, index) = PAIRS[rm as usize];
                mem.base = Some(base);
                mem.index = index;
                // BP-based forms use SS (SDM Vol. 1 Table 3-5).
                stack_default = base == 5;
            }
            match md {
                1 => mem.disp = self.c.int(1)?,
                2 => mem.disp = self.c.int(2)?,
                _ => {}
            }
            return Ok(ModRm { reg, mem: Some(mem), stack_default });
        }
        // Tables 2-2 and 2-3; REX.B/REX.X extend the numbers, but the special cases (SIB
        // escape, no base) look at the low three bits only (SDM Vol. 2A 2.2.1.2, Table 2-5).
        let b = if self.rex.contains(Rex::B) { 8 } else { 0 };
        let mut disp32 = false;
        if rm == 4 {
            let sib = self.c.byte()?;
            let index = ((sib >> 3) & 7) + if self.rex.contains(Rex::X) { 8 } else { 0 };
            // Index 100 without REX.X means "no index" (with REX.X it is R12).
            if index != 4 {
                mem.index = Some(index);
                mem.scale = 1 << (sib >> 6);
            }
            if sib & 7 == 5 && md == 0 {
                disp32 = true; // no base: [index*scale + disp32]
            } else {
                mem.base = Some((sib & 7) + b);
            }
        } else if rm == 5 && md == 0 {
            // [disp32]; in 64-bit mode RIP-relative instead (SDM Vol. 2A 2.2.1.6).
            disp32 = true;
            mem.rip_relative = self.mode == CpuMode::Bits64;
        } else {
            mem.base = Some(rm + b);
        }
        if disp32 || md == 2 {
            mem.disp = self.c.int(4)?;
        } else if md == 1 {
            mem.disp = self.c.int(1)?;
        }
        stack_default = matches!(mem.base, Some(4) | Some(5));
        Ok(ModRm { reg, mem: Some(mem), stack_default })
    }

    /// A ModRM whose r/m must be memory.
    fn mem_modrm(&mut self) -> Result<(u8, MemOperand, bool), DecodeError> {
        let m = self.modrm()?;
        match m.mem {
            Some(mem) => Ok((m.reg, mem, m.stack_default)),
            None => Err(DecodeError::RegisterOperand { opcode: self.opcode }),
        }
    }

    /// An Iz immediate: 2 bytes at operand size 2, else 4 sign-extended (SDM Vol. 2A A.2.2).
    fn imm_z(&mut self, size: u8) -> Result<u64, DecodeError> {
        Ok(if size == 2 { self.c.uint(2)? } else { self.c.int(4)? as u64 })
    }
}

/// Decodes the instruction at the start of `bytes` (only the first 15 count) executed in
/// `mode`.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<MmioInsn, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (mut p66, mut p67, mut lock) = (false, false, false);
    let mut seg_override = None;
    let mut rep = None;
    let mut rex: Option<Rex> = None;
    // Legacy prefixes in any order (SDM Vol. 2A 2.1.1); a REX prefix counts only if the
    // opcode follows it directly, otherwise it is ignored (2.2.1, "REX prefixes ... must
    // immediately precede the opcode").
    // At most 15 bytes: a bounded loop (the cursor refuses the 16th byte anyway).
    let opcode = 'prefixes: {
        for _ in 0..MAX_INSN_LEN {
            let b = c.byte()?;
            match b {
                0x66 => p66 = true,
                0x67 => p67 = true,
                0xf0 => lock = true,
                0xf2 => rep = Some(Rep::Repne),
                0xf3 => rep = Some(Rep::Rep),
                0x26 => seg_override = Some(Seg::Es),
                0x2e => seg_override = Some(Seg::Cs),
                0x36 => seg_override = Some(Seg::Ss),
                0x3e => seg_override = Some(Seg::Ds),
                0x64 => seg_override = Some(Seg::Fs),
                0x65 => seg_override = Some(Seg::Gs),
                // Outside 64-bit mode 40–4F are INC/DEC, which the opcode match refuses.
                0x40..=0x4f if mode == CpuMode::Bits64 => {
                    rex = Some(Rex::from_bits_truncate(b));
                    continue;
                }
                _ => break 'prefixes b,
            }
            rex = None;
        }
        return Err(DecodeError::TooLong);
    };
    let has_rex = rex.is_some();
    let rex = rex.unwrap_or(Rex::empty());
    // Operand size (SDM Vol. 1 3.6 and Table 3-4): REX.W gives 64 bits and wins over 66.
    let opsize: u8 = if rex.contains(Rex::W) {
        8
    } else {
        match (mode, p66) {
            (CpuMode::Bits16, false) | (CpuMode::Bits32 | CpuMode::Bits64, true) => 2,
            _ => 4,
        }
    };
    let addr_size: u8 = match (mode, p67) {
        (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
        (CpuMode::Bits16, true) | (CpuMode::Bits32, false) | (CpuMode::Bits64, true) => 4,
        (CpuMode::Bits64, false) => 8,
    };
    let mut d = Decoder { c, mode, rex, addr_size, opcode: opcode as u16 };
    let default_seg = |stack: bool| if stack { Seg::Ss } else { Seg::Ds };

    // Each arm yields (op, access size, memory operand, segment, LOCK allowed).
    let (op, size, mem, seg, lockable) = match opcode {
        // ADD OR ADC SBB AND SUB XOR CMP: bits 5:3 the operation, bit 1 the direction
        // (1 = to the register), bit 0 byte/full size (SDM Vol. 2A Table A-2).
        o if o < 0x40 && o & 7 < 4 => {
            let alu = AluOp::from_group1(o >> 3);
            let size = if o & 1 == 0 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            let reg = Reg::sized(r, size, has_rex);
            if o & 2 == 0 {
                (Op::AluToMem { op: alu, src: Operand::Reg(reg) }, size, Some(mem), default_seg(stack), alu.writes())
            } else {
                (Op::AluToReg { op: alu, reg }, size, Some(mem), default_seg(stack), false)
            }
        }
        0x0f => {
            let o2 = d.c.byte()?;
            d.opcode = 0x0f00 + o2 as u16;
            let (size, signed) = match o2 {
                0xb6 => (1, false),
                0xb7 => (2, false),
                0xbe => (1, true),
                0xbf => (2, true),
                _ => return Err(DecodeError::Unsupported { opcode: d.opcode, ext: None }),
            };
            let (r, mem, stack) = d.mem_modrm()?;
            let reg = Reg::full(r);
            let op = if signed { Op::Movsx { reg, dst_size: opsize } } else { Op::Movzx { reg, dst_size: opsize } };
            (op, size, Some(mem), default_seg(stack), false)
        }
        // Group 1 with an immediate; 82 is 80's alias, invalid in 64-bit mode (Table A-2).
        0x80..=0x83 if !(opcode == 0x82 && mode == CpuMode::Bits64) => {
            let size = if opcode & 1 == 0 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            let alu = AluOp::from_group1(r);
            let imm = match opcode {
                0x81 => d.imm_z(size)?,
                0x83 => d.c.int(1)? as u64,
                _ => d.c.uint(1)?,
            };
            (Op::AluToMem { op: alu, src: Operand::Imm(imm) }, size, Some(mem), default_seg(stack), alu.writes())
        }
        0x84 | 0x85 => {
            let size = if opcode == 0x84 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            let src = Operand::Reg(Reg::sized(r, size, has_rex));
            (Op::AluToMem { op: AluOp::Test, src }, size, Some(mem), default_seg(stack), false)
        }
        0x86 | 0x87 => {
            let size = if opcode == 0x86 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            (Op::Xchg { reg: Reg::sized(r, size, has_rex) }, size, Some(mem), default_seg(stack), true)
        }
        0x88..=0x8b => {
            let size = if opcode & 1 == 0 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            let reg = Reg::sized(r, size, has_rex);
            let op = if opcode & 2 == 0 { Op::MovStore { src: Operand::Reg(reg) } } else { Op::MovLoad { reg } };
            (op, size, Some(mem), default_seg(stack), false)
        }
        // MOV with a moffs: an address of address-size bytes, no ModRM (Table A-2, "O").
        0xa0..=0xa3 => {
            let size = if opcode & 1 == 0 { 1 } else { opsize };
            let disp = d.c.uint(addr_size)? as i64;
            let mem = MemOperand { base: None, index: None, scale: 1, disp, rip_relative: false };
            let op = if opcode & 2 == 0 { Op::MovLoad { reg: Reg::RAX } } else { Op::MovStore { src: Operand::Reg(Reg::RAX) } };
            (op, size, Some(mem), Seg::Ds, false)
        }
        0xa4 | 0xa5 | 0xaa | 0xab | 0xac | 0xad => {
            let size = if opcode & 1 == 0 { 1 } else { opsize };
            let (op, seg) = match opcode {
                0xa4 | 0xa5 => (Op::Movs, Seg::Ds),
                0xaa | 0xab => (Op::Stos, Seg::Es),
                _ => (Op::Lods, Seg::Ds),
            };
            (op, size, None, seg, false)
        }
        0xc6 | 0xc7 => {
            let size = if opcode == 0xc6 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            if r & 7 != 0 {
                return Err(DecodeError::Unsupported { opcode: d.opcode, ext: Some(r & 7) });
            }
            let imm = if size == 1 { d.c.uint(1)? } else { d.imm_z(size)? };
            (Op::MovStore { src: Operand::Imm(imm) }, size, Some(mem), default_seg(stack), false)
        }
        0xf6 | 0xf7 => {
            let size = if opcode == 0xf6 { 1 } else { opsize };
            let (r, mem, stack) = d.mem_modrm()?;
            if r & 7 != 0 {
                return Err(DecodeError::Unsupported { opcode: d.opcode, ext: Some(r & 7) });
            }
            let imm = if size == 1 { d.c.uint(1)? } else { d.imm_z(size)? };
            (Op::AluToMem { op: AluOp::Test, src: Operand::Imm(imm) }, size, Some(mem), default_seg(stack), false)
        }
        // PUSH r/m (FF /6) and POP r/m (8F /0): in 64-bit mode the operand is 64 bits unless
        // 66 makes it 16; 32 bits cannot be encoded (SDM Vol. 2B PUSH, POP).
        0xff | 0x8f => {
            let size = match mode {
                CpuMode::Bits64 if p66 && !rex.contains(Rex::W) => 2,
                CpuMode::Bits64 => 8,
                _ => opsize,
            };
            let (r, mem, stack) = d.mem_modrm()?;
            let op = match (opcode, r & 7) {
                (0xff, 6) => Op::Push,
                (0x8f, 0) => Op::Pop,
                (_, e) => return Err(DecodeError::Unsupported { opcode: d.opcode, ext: Some(e) }),
            };
            (op, size, Some(mem), default_seg(stack), false)
        }
        _ => return Err(DecodeError::Unsupported { opcode: d.opcode, ext: None }),
    };
    if lock && !lockable {
        return Err(DecodeError::BadLock { opcode: d.opcode });
    }
    // STOS writes ES:rDI, which no override changes (SDM Vol. 2B STOS).
    let seg = if op == Op::Stos { Seg::Es } else { seg_override.unwrap_or(seg) };
    Ok(MmioInsn {
        len: d.c.pos as u8,
        op,
        size,
        addr_size,
        mem,
        seg,
        seg_override,
        rep,
        lock,
        rex,
    })
}

/// A vCPU's registers as [`execute`] sees them.
pub trait RegisterFile {
    /// A general register by number (0 = RAX … 4 = RSP … 15 = R15).
    fn gpr(&self, n: u8) -> u64;
    fn set_gpr(&mut self, n: u8, value: u64);
    fn rflags(&self) -> u64;
    fn set_rflags(&mut self, value: u64);
}

/// The registers as plain values: load them from a vCPU ([`super::Vcpu::gprs`], `rsp()`,
/// `rflags()`), execute, and store back what changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegState {
    pub gprs: Gprs,
    pub rsp: u64,
    pub rflags: u64,
}

impl RegisterFile for RegState {
    fn gpr(&self, n: u8) -> u64 {
        self.gprs.by_encoding(n as usize, self.rsp)
    }

    fn set_gpr(&mut self, n: u8, value: u64) {
        let g = &mut self.gprs;
        let r = match n & 15 {
            0 => &mut g.rax,
            1 => &mut g.rcx,
            2 => &mut g.rdx,
            3 => &mut g.rbx,
            4 => &mut self.rsp,
            5 => &mut g.rbp,
            6 => &mut g.rsi,
            7 => &mut g.rdi,
            8 => &mut g.r8,
            9 => &mut g.r9,
            10 => &mut g.r10,
            11 => &mut g.r11,
            12 => &mut g.r12,
            13 => &mut g.r13,
            14 => &mut g.r14,
            _ => &mut g.r15,
        };
        *r = value;
    }

    fn rflags(&self) -> u64 {
        self.rflags
    }

    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
}

/// Memory as [`execute`] reaches it. Errors are the implementation's (e.g. a #PF to inject
/// for an unmapped linear address, or "no device there"); `execute` passes them through.
pub trait InsnMemory {
    type Error;
    /// The ModRM/moffs operand: the access at the guest-physical address the hardware reported.
    fn read_gpa(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), Self::Error>;
    fn write_gpa(&mut self, gpa: u64, data: &[u8]) -> Result<(), Self::Error>;
    /// Memory that registers name (string operands, the stack), as segment and offset (already
    /// wrapped at the address size); RAM or device, the implementation translates and routes.
    fn read_linear(&mut self, seg: Seg, offset: u64, data: &mut [u8]) -> Result<(), Self::Error>;
    fn write_linear(&mut self, seg: Seg, offset: u64, data: &[u8]) -> Result<(), Self::Error>;
}

/// How an executed instruction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Done: continue at RIP + `len`.
    Done,
    /// A REP string instruction with iterations left (after [`rep::MAX_PER_EXIT`]): leave RIP
    /// where it is so the guest executes it again.
    Again,
}

/// The status flags an arithmetic instruction defines (SDM Vol. 1 3.4.3.1).
fn status_flags() -> Rflags {
    Rflags::CF.union(Rflags::PF).union(Rflags::AF).union(Rflags::ZF).union(Rflags::SF).union(Rflags::OF)
}

/// The result and status flags of `a op b` at `size` bytes (SDM Vol. 2A/2B, each
/// instruction's "Flags Affected"): ADD/ADC/SUB/SBB/CMP set all six; AND/OR/XOR/TEST clear CF
/// and OF, set SF/ZF/PF from the result, and leave AF undefined — Bastion clears it.
pub fn alu(op: AluOp, a: u64, b: u64, size: u8, carry_in: bool) -> (u64, Rflags) {
    let m = mask(size);
    let sign = 1u64 << (8 * size as u32 - 1);
    let (a, b) = (a & m, b & m);
    let c = carry_in as u64;
    let mut f = Rflags::empty();
    let r = match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { c } else { 0 };
            let wide = a as u128 + b as u128 + c as u128;
            let r = wide as u64 & m;
            f.set(Rflags::CF, wide > m as u128);
            f.set(Rflags::OF, (a ^ r) & (b ^ r) & sign != 0);
            f.set(Rflags::AF, (a ^ b ^ r) & 0x10 != 0);
            r
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp => {
            let c = if op == AluOp::Sbb { c } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            f.set(Rflags::CF, (a as u128) < b as u128 + c as u128);
            f.set(Rflags::OF, (a ^ b) & (a ^ r) & sign != 0);
            f.set(Rflags::AF, (a ^ b ^ r) & 0x10 != 0);
            r
        }
        AluOp::And | AluOp::Test => a & b,
        AluOp::Or => a | b,
        AluOp::Xor => a ^ b,
    };
    f.set(Rflags::ZF, r == 0);
    f.set(Rflags::SF, r & sign != 0);
    // PF: even number of set bits in the low byte.
    f.set(Rflags::PF, (r as u8).count_ones().is_multiple_of(2));
    (r, f)
}

fn read_reg(regs: &(impl RegisterFile + ?Sized), r: Reg, size: u8) -> u64 {
    let v = regs.gpr(r.index);
    if r.high_byte {
        (v >> 8) & 0xff
    } else {
        v & mask(size)
    }
}

/// Writes the `size`-byte part of a register (SDM Vol. 1 3.4.1.1): a 32-bit result is
/// zero-extended to 64 bits; 8- and 16-bit results leave the other bits alone.
fn write_reg(regs: &mut (impl RegisterFile + ?Sized), r: Reg, size: u8, value: u64) {
    let old = regs.gpr(r.index);
    let new = match size {
        // AH, CH, DH, BH: bits 15:8, the rest kept (the parts are disjoint: added).
        1 if r.high_byte => (old & !0xff00) + ((value & 0xff) << 8),
        _ => write_low(old, size, value),
    };
    regs.set_gpr(r.index, new);
}

/// Updates an address register (rSI, rDI, rCX, rSP) through its `addr_size` part.
fn write_addr_reg(regs: &mut (impl RegisterFile + ?Sized), n: u8, addr_size: u8, value: u64) {
    write_reg(regs, Reg::full(n), addr_size, value);
}

fn operand(regs: &(impl RegisterFile + ?Sized), o: Operand, size: u8) -> u64 {
    match o {
        Operand::Reg(r) => read_reg(regs, r, size),
        Operand::Imm(v) => v & mask(size),
    }
}

fn to_bytes(v: u64, size: u8) -> ([u8; 8], usize) {
    (v.to_le_bytes(), size as usize)
}

fn from_bytes(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(x)
}

const RCX: u8 = 1;
const RSP: u8 = 4;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// Performs `insn`, whose device operand faulted at `gpa`. `stack_size` is the stack's address
/// size in bytes for PUSH/POP (8 in 64-bit mode, else 4 or 2 by SS.B). On an error from
/// `mem`, the registers reflect the iterations of a REP string instruction already done, as
/// on hardware, and nothing else has changed.
pub fn execute<R, M>(insn: &MmioInsn, gpa: u64, stack_size: u8, regs: &mut R, mem: &mut M) -> Result<Completion, M::Error>
where
    R: RegisterFile + ?Sized,
    M: InsnMemory + ?Sized,
{
    let size = insn.size.clamp(1, 8);
    let n = size as usize;
    let mut buf = [0u8; 8];
    let mut read_dev = |mem: &mut M| -> Result<u64, M::Error> {
        mem.read_gpa(gpa, &mut buf[..n])?;
        Ok(from_bytes(&buf[..n]))
    };
    match insn.op {
        Op::MovLoad { reg } => {
            let v = read_dev(mem)?;
            write_reg(regs, reg, size, v);
        }
        Op::MovStore { src } => {
            let (b, n) = to_bytes(operand(regs, src, size), size);
            mem.write_gpa(gpa, &b[..n])?;
        }
        Op::Movzx { reg, dst_size } => {
            let v = read_dev(mem)?;
            write_reg(regs, reg, dst_size, v);
        }
        Op::Movsx { reg, dst_size } => {
            let v = sign_extend(read_dev(mem)?, size);
            write_reg(regs, reg, dst_size, v);
        }
        Op::Xchg { reg } => {
            let old = read_dev(mem)?;
            let (b, n) = to_bytes(read_reg(regs, reg, size), size);
            mem.write_gpa(gpa, &b[..n])?;
            write_reg(regs, reg, size, old);
        }
        Op::AluToMem { op, src } => {
            let a = read_dev(mem)?;
            let cf = regs.rflags() & Rflags::CF.bits() != 0;
            let (r, flags) = alu(op, a, operand(regs, src, size), size, cf);
            if op.writes() {
                let (b, n) = to_bytes(r, size);
                mem.write_gpa(gpa, &b[..n])?;
            }
            set_status(regs, flags);
        }
        Op::AluToReg { op, reg } => {
            let b = read_dev(mem)?;
            let cf = regs.rflags() & Rflags::CF.bits() != 0;
            let (r, flags) = alu(op, read_reg(regs, reg, size), b, size, cf);
            if op.writes() {
                write_reg(regs, reg, size, r);
            }
            set_status(regs, flags);
        }
        Op::Push => {
            let v = read_dev(mem)?;
            let sp = regs.gpr(RSP).wrapping_sub(size as u64) & mask(stack_size);
            let (b, n) = to_bytes(v, size);
            mem.write_linear(Seg::Ss, sp, &b[..n])?;
            write_addr_reg(regs, RSP, stack_size, sp);
        }
        Op::Pop => {
            let sp = regs.gpr(RSP) & mask(stack_size);
            let mut b = [0u8; 8];
            mem.read_linear(Seg::Ss, sp, &mut b[..n])?;
            mem.write_gpa(gpa, &b[..n])?;
            write_addr_reg(regs, RSP, stack_size, sp.wrapping_add(size as u64));
        }
        Op::Movs | Op::Stos | Op::Lods => return string(insn, size, regs, mem),
    }
    Ok(Completion::Done)
}

fn set_status(regs: &mut (impl RegisterFile + ?Sized), flags: Rflags) {
    let keep = regs.rflags() & !status_flags().bits();
    regs.set_rflags(keep + (flags & status_flags()).bits());
}

/// MOVS, STOS, LODS, each iteration through linear addresses; with REP, rCX counts down
/// (SDM Vol. 2B MOVS, STOS, LODS, REP). rSI/rDI step by the size, down when RFLAGS.DF = 1.
fn string<R, M>(insn: &MmioInsn, size: u8, regs: &mut R, mem: &mut M) -> Result<Completion, M::Error>
where
    R: RegisterFile + ?Sized,
    M: InsnMemory + ?Sized,
{
    let am = mask(insn.addr_size);
    let step = if regs.rflags() & Rflags::DF.bits() != 0 { (size as u64).wrapping_neg() } else { size as u64 };
    let n = size as usize;
    let end = rep::run(
        regs,
        insn.rep.is_some(),
        |regs| regs.gpr(RCX) & am,
        |regs, left| write_addr_reg(regs, RCX, insn.addr_size, left),
        |regs| {
            let (si, di) = (regs.gpr(RSI) & am, regs.gpr(RDI) & am);
            let mut b = [0u8; 8];
            let moved = match insn.op {
                Op::Movs => mem.read_linear(insn.seg, si, &mut b[..n]).and_then(|()| mem.write_linear(Seg::Es, di, &b[..n])).map(|()| {
                    write_addr_reg(regs, RSI, insn.addr_size, si.wrapping_add(step));
                    write_addr_reg(regs, RDI, insn.addr_size, di.wrapping_add(step));
                }),
                Op::Stos => {
                    let (b, n) = to_bytes(regs.gpr(0), size);
                    mem.write_linear(Seg::Es, di, &b[..n]).map(|()| write_addr_reg(regs, RDI, insn.addr_size, di.wrapping_add(step)))
                }
                _ => mem.read_linear(insn.seg, si, &mut b[..n]).map(|()| {
                    write_reg(regs, Reg::RAX, size, from_bytes(&b[..n]));
                    write_addr_reg(regs, RSI, insn.addr_size, si.wrapping_add(step));
                }),
            };
            match moved {
                Ok(()) => Element::Next,
                Err(e) => Element::Fault(e),
            }
        },
    );
    match end {
        RepEnd::Done => Ok(Completion::Done),
        // Elements left after the budget: the guest executes the instruction again for them.
        RepEnd::Again => Ok(Completion::Again),
        RepEnd::Stopped(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
