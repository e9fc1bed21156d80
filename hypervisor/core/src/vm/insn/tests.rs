//! Tests of the MMIO instruction decoder and executor. Encodings were checked against GNU as
//! and objdump; each is written next to its assembly (Intel syntax).

use super::*;
use crate::vm::rep::MAX_PER_EXIT;
use std::collections::BTreeMap;
use std::vec::Vec;
use CpuMode::{Bits16, Bits32, Bits64};

/// Decodes `b` in `mode`, checks the length is the whole array and that bytes after the
/// instruction change nothing.
fn dec(b: &[u8], mode: CpuMode) -> MmioInsn {
    let i = decode(b, mode).unwrap_or_else(|e| panic!("{b:02x?} in {mode:?}: {e}"));
    assert_eq!(i.len as usize, b.len(), "{b:02x?}: length");
    let mut longer = b.to_vec();
    longer.extend_from_slice(&[0x90, 0x0f, 0xff, 0x66]);
    assert_eq!(decode(&longer, mode), Ok(i), "{b:02x?}: trailing bytes changed the decode");
    i
}

fn d64(b: &[u8]) -> MmioInsn {
    dec(b, Bits64)
}

fn mem(base: Option<u8>, index: Option<u8>, scale: u8, disp: i64) -> Option<MemOperand> {
    Some(MemOperand { base, index, scale, disp, rip_relative: false })
}

fn reg(n: u8) -> Reg {
    Reg { index: n, high_byte: false }
}

fn high(n: u8) -> Reg {
    Reg { index: n, high_byte: true }
}

// ---- Decoding: the forms ----

#[test]
fn mov_store_register_with_disp32() {
    // mov dword [rax+0x300], ecx
    let i = d64(&[0x89, 0x88, 0x00, 0x03, 0x00, 0x00]);
    assert_eq!(
        i,
        MmioInsn {
            len: 6,
            op: Op::MovStore { src: Operand::Reg(reg(1)) },
            size: 4,
            addr_size: 8,
            mem: mem(Some(0), None, 1, 0x300),
            seg: Seg::Ds,
            seg_override: None,
            rep: None,
            lock: false,
            rex: Rex::empty(),
        }
    );
    assert_eq!(i.direction(), Direction::Write);
}

#[test]
fn mov_load_register_with_disp32() {
    // mov ecx, dword [rax+0x300]
    let i = d64(&[0x8b, 0x88, 0x00, 0x03, 0x00, 0x00]);
    assert_eq!((i.op, i.size, i.direction()), (Op::MovLoad { reg: reg(1) }, 4, Direction::Read));
}

#[test]
fn byte_registers_4_to_7_are_ah_to_bh_without_rex() {
    // mov byte [rdi], al
    assert_eq!(d64(&[0x88, 0x07]).op, Op::MovStore { src: Operand::Reg(reg(0)) });
    // mov al, byte [rdi]
    assert_eq!(d64(&[0x8a, 0x07]).op, Op::MovLoad { reg: reg(0) });
    // mov ah, byte [rbx]
    assert_eq!(d64(&[0x8a, 0x23]).op, Op::MovLoad { reg: high(0) });
    // mov byte [rdi], ah
    assert_eq!(d64(&[0x88, 0x27]).op, Op::MovStore { src: Operand::Reg(high(0)) });
    // mov bh, byte [rax] (32-bit code: no REX exists)
    assert_eq!(dec(&[0x8a, 0x38], Bits32).op, Op::MovLoad { reg: high(3) });
}

#[test]
fn any_rex_turns_byte_registers_4_to_7_into_spl_to_dil() {
    // mov sil, byte [rbx]  (REX 40: no bits, but present)
    let i = d64(&[0x40, 0x8a, 0x33]);
    assert_eq!((i.op, i.size), (Op::MovLoad { reg: reg(6) }, 1));
}

#[test]
fn rex_extends_reg_base_and_index() {
    // mov r9, qword [r12+r13*8+0x10]
    let i = d64(&[0x4f, 0x8b, 0x4c, 0xec, 0x10]);
    assert_eq!((i.op, i.size), (Op::MovLoad { reg: reg(9) }, 8));
    assert_eq!(i.mem, mem(Some(12), Some(13), 8, 0x10));
    assert_eq!(i.rex, Rex::W | Rex::R | Rex::X | Rex::B);
    // mov dword [r12+r12*1+0x7f], r15d: with REX.X, index 100 is R12, not "no index".
    let i = d64(&[0x47, 0x89, 0x7c, 0x24, 0x7f]);
    assert_eq!(i.mem, mem(Some(12), Some(12), 1, 0x7f));
    assert_eq!(i.op, Op::MovStore { src: Operand::Reg(reg(15)) });
    // mov eax, dword [rax+r12*2]
    assert_eq!(d64(&[0x42, 0x8b, 0x04, 0x60]).mem, mem(Some(0), Some(12), 2, 0));
}

#[test]
fn mov_immediate_forms() {
    // mov dword [rip+0x1000], 0x12345678: the immediate follows the displacement.
    let i = d64(&[0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12]);
    assert_eq!((i.op, i.size), (Op::MovStore { src: Operand::Imm(0x1234_5678) }, 4));
    assert!(i.mem.unwrap().rip_relative);
    // mov qword [rax], -1: imm32 sign-extended to 64 bits.
    let i = d64(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!((i.op, i.size), (Op::MovStore { src: Operand::Imm(u64::MAX) }, 8));
    // mov byte [rsp+8], 0x7f
    let i = d64(&[0xc6, 0x44, 0x24, 0x08, 0x7f]);
    assert_eq!((i.op, i.size, i.mem, i.seg), (Op::MovStore { src: Operand::Imm(0x7f) }, 1, mem(Some(4), None, 1, 8), Seg::Ss));
    // mov word [rbp-2], 0x1234: 66 makes the immediate 16 bits.
    let i = d64(&[0x66, 0xc7, 0x45, 0xfe, 0x34, 0x12]);
    assert_eq!((i.op, i.size, i.mem, i.seg), (Op::MovStore { src: Operand::Imm(0x1234) }, 2, mem(Some(5), None, 1, -2), Seg::Ss));
}

#[test]
fn movzx_and_movsx() {
    // movzx eax, byte [rdx]
    let i = d64(&[0x0f, 0xb6, 0x02]);
    assert_eq!((i.op, i.size), (Op::Movzx { reg: reg(0), dst_size: 4 }, 1));
    // movzx rax, word [rdx+4]
    let i = d64(&[0x48, 0x0f, 0xb7, 0x42, 0x04]);
    assert_eq!((i.op, i.size), (Op::Movzx { reg: reg(0), dst_size: 8 }, 2));
    // movsx ecx, byte [rsi]
    let i = d64(&[0x0f, 0xbe, 0x0e]);
    assert_eq!((i.op, i.size), (Op::Movsx { reg: reg(1), dst_size: 4 }, 1));
    // movsx r8, word [rsi]
    let i = d64(&[0x4c, 0x0f, 0xbf, 0x06]);
    assert_eq!((i.op, i.size), (Op::Movsx { reg: reg(8), dst_size: 8 }, 2));
    // movsx ax, byte [rsi]
    let i = d64(&[0x66, 0x0f, 0xbe, 0x06]);
    assert_eq!((i.op, i.size), (Op::Movsx { reg: reg(0), dst_size: 2 }, 1));
    // movzx eax, word [ecx] in 32-bit code
    let i = dec(&[0x0f, 0xb7, 0x01], Bits32);
    assert_eq!((i.op, i.size, i.addr_size), (Op::Movzx { reg: reg(0), dst_size: 4 }, 2, 4));
}

#[test]
fn group1_with_immediates() {
    // or dword [rax+0x10], 0x100
    let i = d64(&[0x81, 0x48, 0x10, 0x00, 0x01, 0x00, 0x00]);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Or, src: Operand::Imm(0x100) }, 4));
    assert_eq!(i.direction(), Direction::ReadWrite);
    // or dword [rax+0x10], 1 (83: imm8 sign-extended)
    let i = d64(&[0x83, 0x48, 0x10, 0x01]);
    assert_eq!(i.op, Op::AluToMem { op: AluOp::Or, src: Operand::Imm(1) });
    // and dword [rax], -16 (83 /4 with 0xf0)
    let i = d64(&[0x83, 0x20, 0xf0]);
    assert_eq!(i.op, Op::AluToMem { op: AluOp::And, src: Operand::Imm(-16i64 as u64) });
    // cmp dword [rdx], 5
    let i = d64(&[0x83, 0x3a, 0x05]);
    assert_eq!((i.op, i.direction()), (Op::AluToMem { op: AluOp::Cmp, src: Operand::Imm(5) }, Direction::Read));
    // adc dword [rax], 1
    assert_eq!(d64(&[0x83, 0x10, 0x01]).op, Op::AluToMem { op: AluOp::Adc, src: Operand::Imm(1) });
    // sbb byte [rax], 1
    let i = d64(&[0x80, 0x18, 0x01]);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Sbb, src: Operand::Imm(1) }, 1));
    // or word [bx], 0x8000 in 16-bit code: Iz is 16 bits there.
    let i = dec(&[0x81, 0x0f, 0x00, 0x80], Bits16);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Or, src: Operand::Imm(0x8000) }, 2));
}

#[test]
fn opcode_82_is_80_outside_64_bit_mode_only() {
    // or byte [eax], 1 through the 82 alias
    let i = dec(&[0x82, 0x08, 0x01], Bits32);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Or, src: Operand::Imm(1) }, 1));
    assert_eq!(decode(&[0x82, 0x08, 0x01], Bits64), Err(DecodeError::Unsupported { opcode: 0x82, ext: None }));
}

#[test]
fn alu_register_forms_in_both_directions() {
    // and dword [rax+0x10], ecx
    assert_eq!(d64(&[0x21, 0x48, 0x10]).op, Op::AluToMem { op: AluOp::And, src: Operand::Reg(reg(1)) });
    // and ecx, dword [rax+0x10]
    let i = d64(&[0x23, 0x48, 0x10]);
    assert_eq!((i.op, i.direction()), (Op::AluToReg { op: AluOp::And, reg: reg(1) }, Direction::Read));
    // xor dword [rdx], ebx
    assert_eq!(d64(&[0x31, 0x1a]).op, Op::AluToMem { op: AluOp::Xor, src: Operand::Reg(reg(3)) });
    // add qword [rdx], rbx
    let i = d64(&[0x48, 0x01, 0x1a]);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Add, src: Operand::Reg(reg(3)) }, 8));
    // sub eax, dword [rdx]
    assert_eq!(d64(&[0x2b, 0x02]).op, Op::AluToReg { op: AluOp::Sub, reg: reg(0) });
    // cmp ecx, dword [rax] (3B)
    assert_eq!(d64(&[0x3b, 0x08]).op, Op::AluToReg { op: AluOp::Cmp, reg: reg(1) });
    // or byte [rax], ch (08)
    assert_eq!(d64(&[0x08, 0x28]).op, Op::AluToMem { op: AluOp::Or, src: Operand::Reg(high(1)) });
    // add al, byte [rax] (02)
    assert_eq!(d64(&[0x02, 0x00]).op, Op::AluToReg { op: AluOp::Add, reg: reg(0) });
}

#[test]
fn test_forms() {
    // test byte [rdx], 0x80
    let i = d64(&[0xf6, 0x02, 0x80]);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Test, src: Operand::Imm(0x80) }, 1));
    // test dword [rdx], 0x80000000: the Iz immediate, sign-extended but masked when used.
    let i = d64(&[0xf7, 0x02, 0x00, 0x00, 0x00, 0x80]);
    assert_eq!(i.op, Op::AluToMem { op: AluOp::Test, src: Operand::Imm(0xffff_ffff_8000_0000) });
    // test dword [rdx], ecx
    let i = d64(&[0x85, 0x0a]);
    assert_eq!((i.op, i.direction()), (Op::AluToMem { op: AluOp::Test, src: Operand::Reg(reg(1)) }, Direction::Read));
    assert_eq!(i.size, 4);
    // test byte [rdx], cl: 84 is the byte form.
    let i = d64(&[0x84, 0x0a]);
    assert_eq!((i.op, i.size), (Op::AluToMem { op: AluOp::Test, src: Operand::Reg(reg(1)) }, 1));
}

#[test]
fn forty_and_the_accumulator_forms_are_not_alu_memory_opcodes() {
    // The ALU opcodes are 00-3F with bits 2:0 below 4 (SDM Vol. 2A Table A-2); 40 is INC eAX
    // outside 64-bit mode, which is not emulated.
    assert_eq!(decode(&[0x40, 0x00], Bits32), Err(DecodeError::Unsupported { opcode: 0x40, ext: None }));
    // 04 (ADD AL, imm8) has bits 2:0 = 4: an immediate to AL, no memory operand.
    assert_eq!(decode(&[0x04, 0x00], Bits32), Err(DecodeError::Unsupported { opcode: 0x04, ext: None }));
    assert!(matches!(dec(&[0x3a, 0x00], Bits32).op, Op::AluToReg { op: AluOp::Cmp, .. }), "cmp al, [eax]: 3A is");
}

#[test]
fn xchg_with_memory() {
    // xchg dword [rax], ecx
    let i = d64(&[0x87, 0x08]);
    assert_eq!((i.op, i.size, i.direction()), (Op::Xchg { reg: reg(1) }, 4, Direction::ReadWrite));
    // lock xchg is allowed (it is locked anyway).
    assert!(d64(&[0xf0, 0x87, 0x08]).lock);
}

#[test]
fn moffs_forms_take_an_address_of_address_size() {
    // movabs eax, dword [0xfee000b0]: 8-byte address in 64-bit mode.
    let i = d64(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00]);
    assert_eq!((i.op, i.size, i.mem, i.seg), (Op::MovLoad { reg: Reg::RAX }, 4, mem(None, None, 1, 0xfee0_00b0), Seg::Ds));
    // movabs dword [0xfee000b0], eax
    let i = d64(&[0xa3, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00]);
    assert_eq!(i.op, Op::MovStore { src: Operand::Reg(Reg::RAX) });
    // addr32 mov eax, [0xfee000b0]: 67 shrinks it to 4 bytes.
    let i = d64(&[0x67, 0xa1, 0xb0, 0x00, 0xe0, 0xfe]);
    assert_eq!((i.addr_size, i.mem), (4, mem(None, None, 1, 0xfee0_00b0)));
    // mov eax, [0xfee000b0] in 32-bit code: the common LAPIC read of 32-bit kernels.
    let i = dec(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe], Bits32);
    assert_eq!((i.op, i.mem), (Op::MovLoad { reg: Reg::RAX }, mem(None, None, 1, 0xfee0_00b0)));
    // mov [0x1234], ax in 16-bit code; mov al, [0x10] (A0)
    assert_eq!(dec(&[0xa3, 0x34, 0x12], Bits16).size, 2);
    assert_eq!(d64(&[0xa0, 0x10, 0, 0, 0, 0, 0, 0, 0]).size, 1);
}

#[test]
fn push_and_pop_with_memory_operands() {
    // push qword [rax]: 64 bits by default in 64-bit mode.
    let i = d64(&[0xff, 0x30]);
    assert_eq!((i.op, i.size, i.direction()), (Op::Push, 8, Direction::Read));
    // pop qword [rax]
    let i = d64(&[0x8f, 0x00]);
    assert_eq!((i.op, i.size, i.direction()), (Op::Pop, 8, Direction::Write));
    // push word [rax]
    assert_eq!(d64(&[0x66, 0xff, 0x30]).size, 2);
    // data16 rex.W push qword [rax]: REX.W wins over 66.
    assert_eq!(d64(&[0x66, 0x48, 0xff, 0x30]).size, 8);
    // push dword [eax] in 32-bit code, push word [bx] in 16-bit code
    assert_eq!(dec(&[0xff, 0x30], Bits32).size, 4);
    assert_eq!(dec(&[0xff, 0x37], Bits16).size, 2);
    // pop dword [eax]
    assert_eq!(dec(&[0x8f, 0x00], Bits32).op, Op::Pop);
}

#[test]
fn string_forms_with_and_without_rep() {
    // rep movsb
    let i = d64(&[0xf3, 0xa4]);
    assert_eq!((i.op, i.size, i.rep, i.mem, i.seg), (Op::Movs, 1, Some(Rep::Rep), None, Seg::Ds));
    assert_eq!(i.direction(), Direction::ReadWrite);
    // rep movsd
    assert_eq!(d64(&[0xf3, 0xa5]).size, 4);
    // rep stosq
    let i = d64(&[0xf3, 0x48, 0xab]);
    assert_eq!((i.op, i.size, i.seg, i.direction()), (Op::Stos, 8, Seg::Es, Direction::Write));
    // stosb, movsq, lodsd, lodsb
    assert_eq!((d64(&[0xaa]).op, d64(&[0xaa]).rep), (Op::Stos, None));
    assert_eq!(d64(&[0x48, 0xa5]).size, 8);
    assert_eq!((d64(&[0xad]).op, d64(&[0xad]).size), (Op::Lods, 4));
    assert_eq!(d64(&[0xac]).size, 1);
    // rep movsw in 16-bit code
    let i = dec(&[0xf3, 0xa5], Bits16);
    assert_eq!((i.size, i.addr_size), (2, 2));
    // rep movs with addr32 in 64-bit code: ESI/EDI/ECX
    assert_eq!(d64(&[0x67, 0xf3, 0xa4]).addr_size, 4);
}

#[test]
fn string_source_segment_can_be_overridden_but_not_stos_destination() {
    // movs byte [rdi], byte fs:[rsi]
    assert_eq!(d64(&[0x64, 0xa4]).seg, Seg::Fs);
    // fs stosb: ES:rDI regardless.
    let i = d64(&[0x64, 0xaa]);
    assert_eq!((i.seg, i.seg_override), (Seg::Es, Some(Seg::Fs)));
}

// ---- Decoding: addressing modes ----

#[test]
fn sib_without_base_and_without_index() {
    // mov eax, dword [rbx*4+0]: SIB base 101 with mod 00 means disp32 and no base.
    assert_eq!(d64(&[0x8b, 0x04, 0x9d, 0x00, 0x00, 0x00, 0x00]).mem, mem(None, Some(3), 4, 0));
    // mov eax, dword gs:[0x10]: no base, no index (index 100), an absolute disp32.
    let i = d64(&[0x65, 0x8b, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00]);
    assert_eq!((i.mem, i.seg, i.seg_override), (mem(None, None, 1, 0x10), Seg::Gs, Some(Seg::Gs)));
    // The same with REX.B: the "no base" case looks at the low three bits only.
    assert_eq!(d64(&[0x41, 0x8b, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00]).mem, mem(None, None, 1, 0x10));
}

#[test]
fn rbp_r13_rsp_r12_bases() {
    // mov eax, [rbp+0]: rBP as base needs mod 01 and a disp8; default segment SS.
    let i = d64(&[0x8b, 0x45, 0x00]);
    assert_eq!((i.mem, i.seg), (mem(Some(5), None, 1, 0), Seg::Ss));
    // mov eax, [r13+0]
    let i = d64(&[0x41, 0x8b, 0x45, 0x00]);
    assert_eq!((i.mem, i.seg), (mem(Some(13), None, 1, 0), Seg::Ds));
    // mov eax, [r12]: r/m 100 always escapes to a SIB, even with REX.B.
    assert_eq!(d64(&[0x41, 0x8b, 0x04, 0x24]).mem, mem(Some(12), None, 1, 0));
    // mov eax, [rsp]: SS.
    let i = d64(&[0x8b, 0x04, 0x24]);
    assert_eq!((i.mem, i.seg), (mem(Some(4), None, 1, 0), Seg::Ss));
}

#[test]
fn rip_relative_in_64_bit_mode_only() {
    // mov r10d, dword [rip+0x1000]
    let i = d64(&[0x44, 0x8b, 0x15, 0x00, 0x10, 0x00, 0x00]);
    assert_eq!(i.mem, Some(MemOperand { base: None, index: None, scale: 1, disp: 0x1000, rip_relative: true }));
    assert_eq!(i.op, Op::MovLoad { reg: reg(10) });
    // mov eax, [rip+0x10] with REX.B: still RIP-relative, not r13.
    assert!(d64(&[0x41, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00]).mem.unwrap().rip_relative);
    // mov dword [0xfec00000], ecx in 32-bit code: the same ModRM is an absolute disp32.
    let i = dec(&[0x89, 0x0d, 0x00, 0x00, 0xc0, 0xfe], Bits32);
    assert_eq!(i.mem, mem(None, None, 1, 0xfec0_0000u32 as i32 as i64));
}

#[test]
fn addressing_32_bit() {
    // mov dword [ebx+0x20], 0
    let i = dec(&[0xc7, 0x43, 0x20, 0x00, 0x00, 0x00, 0x00], Bits32);
    assert_eq!((i.mem, i.op), (mem(Some(3), None, 1, 0x20), Op::MovStore { src: Operand::Imm(0) }));
    // mov eax, [ebp+esi*4-8]
    let i = dec(&[0x8b, 0x44, 0xb5, 0xf8], Bits32);
    assert_eq!((i.mem, i.seg), (mem(Some(5), Some(6), 4, -8), Seg::Ss));
    // mov ax, word [ebx]
    assert_eq!(dec(&[0x66, 0x8b, 0x03], Bits32).size, 2);
    // mov eax, [esp+4]
    assert_eq!(dec(&[0x8b, 0x44, 0x24, 0x04], Bits32).mem, mem(Some(4), None, 1, 4));
    // mov eax, es:[eax]
    assert_eq!(dec(&[0x26, 0x8b, 0x00], Bits32).seg, Seg::Es);
    // mov eax, [eax] with addr32 in 64-bit code
    assert_eq!(d64(&[0x67, 0x8b, 0x00]).addr_size, 4);
}

#[test]
fn addressing_16_bit_table_2_1() {
    // The eight r/m combinations with mod 00 (r/m 110 is a bare disp16).
    let cases: [(&[u8], Option<MemOperand>, Seg); 8] = [
        (&[0x8b, 0x00], mem(Some(3), Some(6), 1, 0), Seg::Ds),       // mov ax, [bx+si]
        (&[0x8b, 0x01], mem(Some(3), Some(7), 1, 0), Seg::Ds),       // mov ax, [bx+di]
        (&[0x8b, 0x02], mem(Some(5), Some(6), 1, 0), Seg::Ss),       // mov ax, [bp+si]
        (&[0x8b, 0x03], mem(Some(5), Some(7), 1, 0), Seg::Ss),       // mov ax, [bp+di]
        (&[0x8b, 0x04], mem(Some(6), None, 1, 0), Seg::Ds),          // mov ax, [si]
        (&[0x8b, 0x05], mem(Some(7), None, 1, 0), Seg::Ds),          // mov ax, [di]
        (&[0x8b, 0x06, 0x34, 0x12], mem(None, None, 1, 0x1234), Seg::Ds), // mov ax, [0x1234]
        (&[0x8b, 0x07], mem(Some(3), None, 1, 0), Seg::Ds),          // mov ax, [bx]
    ];
    for (bytes, m, seg) in cases {
        let i = dec(bytes, Bits16);
        assert_eq!((i.mem, i.seg, i.size, i.addr_size), (m, seg, 2, 2), "{bytes:02x?}");
    }
}

#[test]
fn addressing_16_bit_displacements() {
    // mov ax, [bp+di+0x10]: disp8
    assert_eq!(dec(&[0x8b, 0x43, 0x10], Bits16).mem, mem(Some(5), Some(7), 1, 0x10));
    // mov ax, [bp+0]: BP needs mod 01; SS.
    let i = dec(&[0x8b, 0x46, 0x00], Bits16);
    assert_eq!((i.mem, i.seg), (mem(Some(5), None, 1, 0), Seg::Ss));
    // mov ax, [bp+si-1]: disp8 sign-extended
    assert_eq!(dec(&[0x8b, 0x42, 0xff], Bits16).mem, mem(Some(5), Some(6), 1, -1));
    // mov al, [si+0x1234]: disp16
    assert_eq!(dec(&[0x8a, 0x84, 0x34, 0x12], Bits16).mem, mem(Some(6), None, 1, 0x1234));
    // mov ax, [bx+0x7fff]
    assert_eq!(dec(&[0x8b, 0x87, 0xff, 0x7f], Bits16).mem, mem(Some(3), None, 1, 0x7fff));
    // mov eax, [bx] (66), and mov eax, [eax+0x10] (67 66): 32-bit addressing from 16-bit code.
    assert_eq!(dec(&[0x66, 0x8b, 0x07], Bits16).size, 4);
    let i = dec(&[0x67, 0x66, 0x8b, 0x40, 0x10], Bits16);
    assert_eq!((i.size, i.addr_size, i.mem), (4, 4, mem(Some(0), None, 1, 0x10)));
    // mov eax, [bx+si+0x10] from 32-bit code (67 selects 16-bit addressing)
    let i = dec(&[0x67, 0x8b, 0x40, 0x10], Bits32);
    assert_eq!((i.addr_size, i.mem), (2, mem(Some(3), Some(6), 1, 0x10)));
    // mov byte [di], 0x5a; mov word [bx], 0x1234
    assert_eq!(dec(&[0xc6, 0x05, 0x5a], Bits16).op, Op::MovStore { src: Operand::Imm(0x5a) });
    assert_eq!(dec(&[0xc7, 0x07, 0x34, 0x12], Bits16).op, Op::MovStore { src: Operand::Imm(0x1234) });
}

#[test]
fn effective_address_follows_each_addressing_mode() {
    let mut r = RegState::default();
    r.gprs.rax = 0x1000;
    r.gprs.rbx = 0xffff;
    r.gprs.rsi = 2;
    r.gprs.r12 = 0x10;
    r.gprs.r13 = 0x3;
    r.rsp = 0x7000;
    // [r12+r13*8+0x10] = 0x10 + 0x18 + 0x10
    assert_eq!(d64(&[0x4f, 0x8b, 0x4c, 0xec, 0x10]).effective_address(&r, 0), Some(0x38));
    // [rip+0x1000] from an instruction of 7 bytes at 0x40_0000
    assert_eq!(d64(&[0x44, 0x8b, 0x15, 0x00, 0x10, 0x00, 0x00]).effective_address(&r, 0x40_0000), Some(0x40_1007));
    // [rsp+8]
    assert_eq!(d64(&[0xc6, 0x44, 0x24, 0x08, 0x7f]).effective_address(&r, 0), Some(0x7008));
    // [bx+si] wraps at 16 bits: 0xffff + 2 = 0x0001.
    assert_eq!(dec(&[0x8b, 0x00], Bits16).effective_address(&r, 0), Some(1));
    // [eax-8] with eax = 0 wraps at 32 bits (67 in 64-bit code).
    r.gprs.rax = 0;
    assert_eq!(d64(&[0x67, 0x8b, 0x40, 0xf8]).effective_address(&r, 0), Some(0xffff_fff8));
    // moffs and string forms
    assert_eq!(d64(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0]).effective_address(&r, 0), Some(0xfee0_00b0));
    assert_eq!(d64(&[0xa4]).effective_address(&r, 0), None);
}

// ---- Decoding: prefixes ----

#[test]
fn rex_counts_only_right_before_the_opcode() {
    // 48 66 89 08: a REX followed by another prefix is ignored (SDM Vol. 2A 2.2.1):
    // mov word [rax], cx.
    let i = d64(&[0x48, 0x66, 0x89, 0x08]);
    assert_eq!((i.size, i.rex), (2, Rex::empty()));
    // 41 66 8a 30: the ignored REX does not make the byte register SIL either: mov dh, [rax].
    assert_eq!(d64(&[0x41, 0x66, 0x8a, 0x30]).op, Op::MovLoad { reg: high(2) });
}

#[test]
fn rex_w_wins_over_66() {
    // 66 48 89 08: mov qword [rax], rcx
    let i = d64(&[0x66, 0x48, 0x89, 0x08]);
    assert_eq!((i.size, i.rex), (8, Rex::W));
}

#[test]
fn operand_size_defaults_per_mode() {
    // 89 08 is mov [rax], ecx / mov [eax], ecx / mov [bx+si], cx
    assert_eq!(dec(&[0x89, 0x08], Bits64).size, 4);
    assert_eq!(dec(&[0x89, 0x08], Bits32).size, 4);
    assert_eq!(dec(&[0x89, 0x08], Bits16).size, 2);
    // 66 flips 16 <-> 32
    assert_eq!(dec(&[0x66, 0x89, 0x08], Bits32).size, 2);
    assert_eq!(dec(&[0x66, 0x89, 0x08], Bits16).size, 4);
    // 67 flips the address size
    assert_eq!(dec(&[0x89, 0x08], Bits32).addr_size, 4);
    assert_eq!(dec(&[0x67, 0x89, 0x08], Bits32).addr_size, 2);
    assert_eq!(dec(&[0x67, 0x89, 0x08], Bits16).addr_size, 4);
}

#[test]
fn rex_bytes_are_inc_dec_outside_64_bit_mode() {
    // 40 is "inc eax" in 32-bit code, not a prefix.
    assert_eq!(decode(&[0x40, 0x8b, 0x00], Bits32), Err(DecodeError::Unsupported { opcode: 0x40, ext: None }));
    assert_eq!(decode(&[0x48, 0x89, 0x08], Bits16), Err(DecodeError::Unsupported { opcode: 0x48, ext: None }));
}

#[test]
fn segment_overrides_are_reported_and_the_last_wins() {
    // mov eax, fs:[rax]
    let i = d64(&[0x64, 0x8b, 0x00]);
    assert_eq!((i.seg, i.seg_override), (Seg::Fs, Some(Seg::Fs)));
    // cs fs mov eax, [rax]
    assert_eq!(d64(&[0x2e, 0x64, 0x8b, 0x00]).seg, Seg::Fs);
    // ss: on a DS default, ds: on an SS default ([ebp])
    assert_eq!(dec(&[0x36, 0x8b, 0x00], Bits32).seg, Seg::Ss);
    assert_eq!(dec(&[0x3e, 0x8b, 0x45, 0x00], Bits32).seg, Seg::Ds);
    assert_eq!(d64(&[0x8b, 0x00]).seg_override, None);
}

#[test]
fn rep_and_lock_are_reported() {
    // f3 89 08: XRELEASE-style F3 on a store is legal and reported; execution ignores it.
    assert_eq!(d64(&[0xf3, 0x89, 0x08]).rep, Some(Rep::Rep));
    // repne movsb
    assert_eq!(d64(&[0xf2, 0xa4]).rep, Some(Rep::Repne));
    // lock or dword [rax], 1
    let i = d64(&[0xf0, 0x83, 0x08, 0x01]);
    assert!(i.lock);
    assert_eq!(i.op, Op::AluToMem { op: AluOp::Or, src: Operand::Imm(1) });
}

#[test]
fn fifteen_bytes_is_the_limit() {
    // 13 prefixes + mov [rax], ecx = 15 bytes: fine.
    let mut b = vec![0x3e; 13];
    b.extend_from_slice(&[0x89, 0x08]);
    assert_eq!(d64(&b).len, 15);
    // 14 prefixes + mov = 16 bytes: #GP on hardware.
    let mut b = vec![0x3e; 14];
    b.extend_from_slice(&[0x89, 0x08]);
    assert_eq!(decode(&b, Bits64), Err(DecodeError::TooLong));
    // 16 bytes of prefixes.
    assert_eq!(decode(&[0x66; 16], Bits64), Err(DecodeError::TooLong));
    // A displacement that would run past byte 15.
    let mut b = vec![0x66; 10];
    b.extend_from_slice(&[0x89, 0x88, 0x00, 0x03, 0x00, 0x00]);
    assert_eq!(decode(&b, Bits64), Err(DecodeError::TooLong));
}

// ---- Decoding: bad encodings ----

#[test]
fn truncated_bytes_are_an_error() {
    for b in [
        &[][..],
        &[0x66],                         // a prefix only
        &[0x89],                         // no ModRM
        &[0x89, 0x88, 0x00, 0x03],       // disp32 cut short
        &[0xc7, 0x00, 0x78, 0x56],       // imm32 cut short
        &[0x8b, 0x04],                   // no SIB
        &[0x0f],                         // no second opcode byte
        &[0xa1, 0xb0, 0x00, 0xe0, 0xfe], // moffs64 cut short
    ] {
        assert_eq!(decode(b, Bits64), Err(DecodeError::Truncated), "{b:02x?}");
    }
    // A 16-bit disp16 cut short.
    assert_eq!(decode(&[0x8b, 0x06, 0x34], Bits16), Err(DecodeError::Truncated));
}

#[test]
fn unsupported_opcodes_are_named() {
    // nop, syscall, call [rax] (FF /2), C6 /1, neg dword [rax] (F7 /3), pop with 8F /1 (XOP on AMD)
    assert_eq!(decode(&[0x90], Bits64), Err(DecodeError::Unsupported { opcode: 0x90, ext: None }));
    assert_eq!(decode(&[0x0f, 0x05], Bits64), Err(DecodeError::Unsupported { opcode: 0x0f05, ext: None }));
    assert_eq!(decode(&[0xff, 0x10], Bits64), Err(DecodeError::Unsupported { opcode: 0xff, ext: Some(2) }));
    assert_eq!(decode(&[0xc6, 0x08, 0x01], Bits64), Err(DecodeError::Unsupported { opcode: 0xc6, ext: Some(1) }));
    assert_eq!(decode(&[0xf7, 0x18], Bits64), Err(DecodeError::Unsupported { opcode: 0xf7, ext: Some(3) }));
    assert_eq!(decode(&[0x8f, 0x08], Bits64), Err(DecodeError::Unsupported { opcode: 0x8f, ext: Some(1) }));
    let e = decode(&[0xff, 0x10], Bits64).unwrap_err();
    assert_eq!(std::format!("{e}"), "opcode 0xff /2 is not emulated for MMIO");
}

#[test]
fn register_operands_cannot_be_mmio() {
    // mov eax, ecx (89 C8); movzx eax, al (0F B6 C0); or eax, 1 (83 C8 01); push rax via FF /6
    assert_eq!(decode(&[0x89, 0xc8], Bits64), Err(DecodeError::RegisterOperand { opcode: 0x89 }));
    assert_eq!(decode(&[0x0f, 0xb6, 0xc0], Bits64), Err(DecodeError::RegisterOperand { opcode: 0x0fb6 }));
    assert_eq!(decode(&[0x83, 0xc8, 0x01], Bits64), Err(DecodeError::RegisterOperand { opcode: 0x83 }));
    assert_eq!(decode(&[0xff, 0xf0], Bits64), Err(DecodeError::RegisterOperand { opcode: 0xff }));
    assert_eq!(decode(&[0x8b, 0xc0], Bits16), Err(DecodeError::RegisterOperand { opcode: 0x8b }));
}

#[test]
fn lock_is_refused_where_the_cpu_raises_ud() {
    // lock mov [rax], ecx; lock test [rax], ecx; lock cmp ecx, [rax]; lock cmp [rax], 1;
    // lock add ecx, [rax] (destination is a register); lock movsd
    for b in [
        &[0xf0, 0x89, 0x08][..],
        &[0xf0, 0x85, 0x08],
        &[0xf0, 0x3b, 0x08],
        &[0xf0, 0x83, 0x38, 0x01],
        &[0xf0, 0x03, 0x08],
        &[0xf0, 0xa5],
    ] {
        assert!(matches!(decode(b, Bits64), Err(DecodeError::BadLock { .. })), "{b:02x?}");
    }
    // lock add [rax], ecx is fine.
    assert!(d64(&[0xf0, 0x01, 0x08]).lock);
}

// ---- Execution ----

/// Device memory at guest-physical addresses and ordinary memory at (segment, offset), both
/// sparse; every access is logged. `fail_at` makes a linear access at that offset fail.
#[derive(Default)]
struct Fake {
    dev: BTreeMap<u64, u8>,
    lin: BTreeMap<(u8, u64), u8>,
    log: Vec<(&'static str, u64, Vec<u8>)>,
    fail_at: Option<u64>,
}

impl Fake {
    fn put_dev(&mut self, gpa: u64, v: u64, n: usize) {
        for (i, b) in v.to_le_bytes()[..n].iter().enumerate() {
            self.dev.insert(gpa + i as u64, *b);
        }
    }
    fn dev_u64(&self, gpa: u64, n: usize) -> u64 {
        let mut x = [0u8; 8];
        for (i, b) in x[..n].iter_mut().enumerate() {
            *b = *self.dev.get(&(gpa + i as u64)).unwrap_or(&0);
        }
        u64::from_le_bytes(x)
    }
    fn put_lin(&mut self, seg: Seg, off: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.lin.insert((seg as u8, off + i as u64), *b);
        }
    }
    fn lin(&self, seg: Seg, off: u64, n: usize) -> Vec<u8> {
        (0..n as u64).map(|i| *self.lin.get(&(seg as u8, off + i)).unwrap_or(&0)).collect()
    }
    fn writes(&self) -> usize {
        self.log.iter().filter(|(k, ..)| k.starts_with("write")).count()
    }
}

#[derive(Debug, PartialEq)]
struct Fail(u64);

impl InsnMemory for Fake {
    type Error = Fail;
    fn read_gpa(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), Fail> {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.dev.get(&(gpa + i as u64)).unwrap_or(&0);
        }
        self.log.push(("read_gpa", gpa, data.to_vec()));
        Ok(())
    }
    fn write_gpa(&mut self, gpa: u64, data: &[u8]) -> Result<(), Fail> {
        for (i, b) in data.iter().enumerate() {
            self.dev.insert(gpa + i as u64, *b);
        }
        self.log.push(("write_gpa", gpa, data.to_vec()));
        Ok(())
    }
    fn read_linear(&mut self, seg: Seg, offset: u64, data: &mut [u8]) -> Result<(), Fail> {
        if self.fail_at == Some(offset) {
            return Err(Fail(offset));
        }
        data.copy_from_slice(&self.lin(seg, offset, data.len()));
        self.log.push(("read_linear", offset, data.to_vec()));
        Ok(())
    }
    fn write_linear(&mut self, seg: Seg, offset: u64, data: &[u8]) -> Result<(), Fail> {
        if self.fail_at == Some(offset) {
            return Err(Fail(offset));
        }
        self.put_lin(seg, offset, data);
        self.log.push(("write_linear", offset, data.to_vec()));
        Ok(())
    }
}

const GPA: u64 = 0xfee0_0300;

/// Decodes `bytes` in 64-bit mode and runs it against `m` with the device operand at [`GPA`].
fn run(bytes: &[u8], r: &mut RegState, m: &mut Fake) -> Completion {
    run_in(bytes, Bits64, 8, r, m)
}

fn run_in(bytes: &[u8], mode: CpuMode, stack: u8, r: &mut RegState, m: &mut Fake) -> Completion {
    let i = dec(bytes, mode);
    execute(&i, GPA, stack, r, m).unwrap()
}

fn flags(r: &RegState) -> Rflags {
    Rflags::from_bits_truncate(r.rflags) & status_flags()
}

#[test]
fn load_into_32_bit_register_zero_extends() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rcx = u64::MAX;
    m.put_dev(GPA, 0x1234_5678, 4);
    // mov ecx, dword [rax+0x300]
    assert_eq!(run(&[0x8b, 0x88, 0x00, 0x03, 0x00, 0x00], &mut r, &mut m), Completion::Done);
    assert_eq!(r.gprs.rcx, 0x1234_5678);
}

#[test]
fn load_into_8_and_16_bit_registers_keeps_the_rest() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0xabcd, 2);
    r.gprs.rax = 0x1122_3344_5566_7788;
    // mov al, byte [rdi]
    run(&[0x8a, 0x07], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x1122_3344_5566_77cd);
    // mov ah, byte [rbx]
    run(&[0x8a, 0x23], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x1122_3344_5566_cdcd);
    // mov sil, byte [rbx]
    r.gprs.rsi = 0xffff_ffff_ffff_ffff;
    run(&[0x40, 0x8a, 0x33], &mut r, &mut m);
    assert_eq!(r.gprs.rsi, 0xffff_ffff_ffff_ffcd);
    // mov ax, word [rax] (66 8b 00)
    r.gprs.rax = u64::MAX;
    run(&[0x66, 0x8b, 0x00], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0xffff_ffff_ffff_abcd);
}

#[test]
fn load_64_bit_and_into_extended_registers() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0x0102_0304_0506_0708, 8);
    // mov r9, qword [r12+r13*8+0x10]
    run(&[0x4f, 0x8b, 0x4c, 0xec, 0x10], &mut r, &mut m);
    assert_eq!(r.gprs.r9, 0x0102_0304_0506_0708);
    // movabs eax, [0xfee000b0]
    run(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x0506_0708);
}

#[test]
fn stores_write_exactly_the_operand_size() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rcx = 0xdead_beef_cafe_f00d;
    // mov dword [rax+0x300], ecx
    run(&[0x89, 0x88, 0x00, 0x03, 0x00, 0x00], &mut r, &mut m);
    assert_eq!(m.log, vec![("write_gpa", GPA, vec![0x0d, 0xf0, 0xfe, 0xca])]);
    // mov byte [rdi], ah
    r.gprs.rax = 0x1234;
    run(&[0x88, 0x27], &mut r, &mut m);
    assert_eq!(m.log[1], ("write_gpa", GPA, vec![0x12]));
    // mov qword [rax], -1
    run(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], &mut r, &mut m);
    assert_eq!(m.log[2], ("write_gpa", GPA, vec![0xff; 8]));
    // mov word [rbp-2], 0x1234
    run(&[0x66, 0xc7, 0x45, 0xfe, 0x34, 0x12], &mut r, &mut m);
    assert_eq!(m.log[3], ("write_gpa", GPA, vec![0x34, 0x12]));
    // mov dword [rip+0x1000], 0x12345678
    run(&[0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12], &mut r, &mut m);
    assert_eq!(m.log[4], ("write_gpa", GPA, vec![0x78, 0x56, 0x34, 0x12]));
    assert_eq!(r.gprs.rcx, 0xdead_beef_cafe_f00d, "a store changes no register");
}

#[test]
fn movzx_and_movsx_extend_correctly() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0x80, 1);
    r.gprs.rax = u64::MAX;
    // movzx eax, byte [rdx]
    run(&[0x0f, 0xb6, 0x02], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x80);
    // movsx ecx, byte [rsi]: sign-extended to 32 bits, then zero-extended to 64.
    r.gprs.rcx = u64::MAX;
    run(&[0x0f, 0xbe, 0x0e], &mut r, &mut m);
    assert_eq!(r.gprs.rcx, 0xffff_ff80);
    // movsx r8, word [rsi]
    m.put_dev(GPA, 0x8000, 2);
    run(&[0x4c, 0x0f, 0xbf, 0x06], &mut r, &mut m);
    assert_eq!(r.gprs.r8, 0xffff_ffff_ffff_8000);
    // movzx rax, word [rdx+4]
    run(&[0x48, 0x0f, 0xb7, 0x42, 0x04], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x8000);
    // movsx ax, byte [rsi]: 16-bit destination keeps bits 63:16.
    m.put_dev(GPA, 0xff, 1);
    r.gprs.rax = 0x1111_2222_3333_4444;
    run(&[0x66, 0x0f, 0xbe, 0x06], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x1111_2222_3333_ffff);
}

#[test]
fn or_read_modify_write_sets_logic_flags() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.rflags = (Rflags::FIXED1 | Rflags::IF | Rflags::CF | Rflags::OF | Rflags::ZF).bits();
    m.put_dev(GPA, 1, 4);
    // or dword [rax+0x10], 0x100
    run(&[0x81, 0x48, 0x10, 0x00, 0x01, 0x00, 0x00], &mut r, &mut m);
    assert_eq!(m.log, vec![("read_gpa", GPA, vec![1, 0, 0, 0]), ("write_gpa", GPA, vec![1, 1, 0, 0])]);
    // 0x101: CF = OF = 0 always; ZF = 0; SF = 0; low byte 0x01 has one set bit, so PF = 0.
    assert_eq!(flags(&r), Rflags::empty());
    assert_eq!(r.rflags & (Rflags::IF | Rflags::FIXED1).bits(), (Rflags::IF | Rflags::FIXED1).bits(), "other flags kept");
}

#[test]
fn and_to_zero_sets_zf_and_pf() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0xf0, 4);
    r.gprs.rcx = 0x0f;
    // and dword [rax+0x10], ecx
    run(&[0x21, 0x48, 0x10], &mut r, &mut m);
    assert_eq!(m.dev_u64(GPA, 4), 0);
    assert_eq!(flags(&r), Rflags::ZF | Rflags::PF);
    // and ecx, dword [rax+0x10]: the register is the destination, memory is not written.
    m.put_dev(GPA, 0x8000_0003, 4);
    r.gprs.rcx = u64::MAX;
    let before = m.writes();
    run(&[0x23, 0x48, 0x10], &mut r, &mut m);
    assert_eq!((r.gprs.rcx, m.writes()), (0x8000_0003, before));
    // 0x80000003: SF (bit 31), low byte 0x03 has two bits: PF.
    assert_eq!(flags(&r), Rflags::SF | Rflags::PF);
}

#[test]
fn test_and_cmp_only_set_flags() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0x8000_0000, 4);
    // test dword [rdx], 0x80000000
    run(&[0xf7, 0x02, 0x00, 0x00, 0x00, 0x80], &mut r, &mut m);
    assert_eq!(flags(&r), Rflags::SF | Rflags::PF);
    // test byte [rdx], 0x80: the low byte is 0.
    run(&[0xf6, 0x02, 0x80], &mut r, &mut m);
    assert_eq!(flags(&r), Rflags::ZF | Rflags::PF);
    // cmp dword [rdx], 5 with 3: borrow; 0xfffffffe has seven bits in its low byte (no PF),
    // and bit 4 borrows (AF).
    m.put_dev(GPA, 3, 4);
    run(&[0x83, 0x3a, 0x05], &mut r, &mut m);
    assert_eq!(flags(&r), Rflags::CF | Rflags::SF | Rflags::AF);
    // ... and with 5: equal.
    m.put_dev(GPA, 5, 4);
    run(&[0x83, 0x3a, 0x05], &mut r, &mut m);
    assert_eq!(flags(&r), Rflags::ZF | Rflags::PF);
    // cmp ecx, dword [rax]: ecx - mem.
    r.gprs.rcx = 7;
    run(&[0x3b, 0x08], &mut r, &mut m);
    assert_eq!(flags(&r), Rflags::empty(), "7 - 5 = 2: no flag");
    assert_eq!(m.writes(), 0);
}

#[test]
fn add_sub_adc_sbb_compute_carry_and_overflow() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    // add qword [rdx], rbx: i64::MAX + 1 overflows into the sign.
    m.put_dev(GPA, i64::MAX as u64, 8);
    r.gprs.rbx = 1;
    run(&[0x48, 0x01, 0x1a], &mut r, &mut m);
    assert_eq!(m.dev_u64(GPA, 8), 1 << 63);
    assert_eq!(flags(&r), Rflags::OF | Rflags::SF | Rflags::AF | Rflags::PF);
    // sub eax, dword [rdx]: 10 - 3 = 7, zero-extended.
    m.put_dev(GPA, 3, 4);
    r.gprs.rax = 0xffff_ffff_0000_000a;
    run(&[0x2b, 0x02], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 7);
    // adc dword [rax], 1 with CF set: 1 + 1 + 1.
    m.put_dev(GPA, 1, 4);
    r.rflags = Rflags::CF.bits();
    run(&[0x83, 0x10, 0x01], &mut r, &mut m);
    assert_eq!(m.dev_u64(GPA, 4), 3);
    // sbb byte [rax], 1 with CF set: 0 - 1 - 1 = 0xfe, borrow.
    m.put_dev(GPA, 0, 1);
    r.rflags = Rflags::CF.bits();
    run(&[0x80, 0x18, 0x01], &mut r, &mut m);
    assert_eq!(m.dev_u64(GPA, 1), 0xfe);
    assert!(flags(&r).contains(Rflags::CF | Rflags::SF));
    // add byte: 0xff + 1 carries out and is zero.
    assert_eq!(alu(AluOp::Add, 0xff, 1, 1, false), (0, Rflags::CF | Rflags::ZF | Rflags::PF | Rflags::AF));
    // sub dword: 0x80000000 - 1 overflows (negative minus positive gives positive).
    assert_eq!(alu(AluOp::Sub, 0x8000_0000, 1, 4, false).1, Rflags::OF | Rflags::AF | Rflags::PF);
}

#[test]
fn adc_takes_the_carry_in_from_rflags_cf_in_both_directions() {
    // ADC adds CF (SDM Vol. 2A ADC): 5 + 1 is 6 with CF clear, 7 with CF set.
    for (cf, want) in [(false, 6), (true, 7)] {
        let (mut r, mut m) = (RegState::default(), Fake::default());
        r.rflags = if cf { Rflags::CF.bits() } else { 0 } | 2;
        // adc dword [rax], 1
        m.put_dev(GPA, 5, 4);
        run(&[0x83, 0x10, 0x01], &mut r, &mut m);
        assert_eq!(m.dev_u64(GPA, 4), want, "to memory, CF {cf}");
        // adc edx, [rax]
        r.rflags = if cf { Rflags::CF.bits() } else { 0 } | 2;
        r.gprs.rdx = 1;
        m.put_dev(GPA, 5, 4);
        run(&[0x13, 0x10], &mut r, &mut m);
        assert_eq!(r.gprs.rdx, want, "to a register, CF {cf}");
        assert_eq!(r.rflags & 2, 2, "RFLAGS bit 1 kept");
    }
}

/// The six status flags of `a op b` from their definitions (SDM Vol. 1 3.4.3.1 and
/// Appendix A): CF the unsigned carry or borrow out of the operand, OF the signed result out
/// of range, AF the carry or borrow out of bit 3, ZF/SF/PF from the result; the logical
/// operations clear CF, OF and (as Bastion chooses for the undefined one) AF.
fn reference(op: AluOp, a: u64, b: u64, size: u8, carry: bool) -> (u64, Rflags) {
    let bits = 8 * size as u32;
    let m = if size == 8 { u64::MAX } else { (1 << bits) - 1 };
    let (a, b, c) = (a & m, b & m, carry as i128);
    let signed = |v: u64| ((v << (64 - bits)) as i64 >> (64 - bits)) as i128;
    let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
    let mut f = Rflags::empty();
    let r = match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { c } else { 0 };
            f.set(Rflags::CF, a as i128 + b as i128 + c > m as i128);
            f.set(Rflags::OF, !(min..=max).contains(&(signed(a) + signed(b) + c)));
            f.set(Rflags::AF, (a & 0xf) as i128 + (b & 0xf) as i128 + c > 0xf);
            (a as i128 + b as i128 + c) as u64 & m
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp => {
            let c = if op == AluOp::Sbb { c } else { 0 };
            f.set(Rflags::CF, (a as i128) < b as i128 + c);
            f.set(Rflags::OF, !(min..=max).contains(&(signed(a) - signed(b) - c)));
            f.set(Rflags::AF, ((a & 0xf) as i128) < (b & 0xf) as i128 + c);
            (a as i128 - b as i128 - c) as u64 & m
        }
        AluOp::And | AluOp::Test => a & b,
        AluOp::Or => a | b,
        AluOp::Xor => a ^ b,
    };
    f.set(Rflags::ZF, r == 0);
    f.set(Rflags::SF, r >> (bits - 1) & 1 == 1);
    f.set(Rflags::PF, (r & 0xff).count_ones() % 2 == 0);
    (r, f)
}

#[test]
fn alu_results_and_flags_match_their_definitions_for_every_byte_pair() {
    use AluOp::*;
    for op in [Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Test] {
        for carry in [false, true] {
            for a in 0..=0xffu64 {
                for b in 0..=0xffu64 {
                    assert_eq!(alu(op, a, b, 1, carry), reference(op, a, b, 1, carry), "{op:?} {a:#x}, {b:#x}, CF {carry}");
                }
            }
        }
    }
    // Wider operands: the values around each size's sign and carry boundaries.
    for size in [2u8, 4, 8] {
        let top = 1u64 << (8 * size - 1);
        let edges = [0, 1, 0xf, 0x10, top - 1, top, top + 1, (top - 1) * 2, (top - 1) * 2 + 1, u64::MAX];
        for op in [Add, Adc, Sub, Sbb, Cmp, And, Or, Xor] {
            for (a, b, carry) in edges.iter().flat_map(|&a| edges.iter().flat_map(move |&b| [(a, b, false), (a, b, true)])) {
                assert_eq!(alu(op, a, b, size, carry), reference(op, a, b, size, carry), "{op:?} size {size} {a:#x}, {b:#x}, CF {carry}");
            }
        }
    }
}

#[test]
fn xchg_swaps_register_and_device() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0xaaaa, 4);
    r.gprs.rcx = 0xffff_ffff_0000_5555;
    // xchg dword [rax], ecx
    run(&[0x87, 0x08], &mut r, &mut m);
    assert_eq!((m.dev_u64(GPA, 4), r.gprs.rcx), (0x5555, 0xaaaa));
}

#[test]
fn push_reads_the_device_and_writes_the_stack() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_dev(GPA, 0x1122_3344_5566_7788, 8);
    r.rsp = 0x8000;
    // push qword [rax]
    run(&[0xff, 0x30], &mut r, &mut m);
    assert_eq!(r.rsp, 0x7ff8);
    assert_eq!(m.lin(Seg::Ss, 0x7ff8, 8), 0x1122_3344_5566_7788u64.to_le_bytes());
    // push word [bx] in real mode with a 16-bit stack: SP wraps, RSP's upper bits stay.
    r.rsp = 0xabcd_0000;
    run_in(&[0xff, 0x37], Bits16, 2, &mut r, &mut m);
    assert_eq!(r.rsp, 0xabcd_fffe);
    assert_eq!(m.lin(Seg::Ss, 0xfffe, 2), vec![0x88, 0x77]);
}

#[test]
fn pop_reads_the_stack_and_writes_the_device() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_lin(Seg::Ss, 0x8000, &[1, 2, 3, 4]);
    r.rsp = 0x8000;
    // pop dword [eax] in 32-bit code with a 32-bit stack
    run_in(&[0x8f, 0x00], Bits32, 4, &mut r, &mut m);
    assert_eq!((m.dev_u64(GPA, 4), r.rsp), (0x0403_0201, 0x8004));
}

#[test]
fn failed_stack_write_leaves_rsp_alone() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.rsp = 0x8000;
    m.fail_at = Some(0x7ff8);
    let i = d64(&[0xff, 0x30]);
    assert_eq!(execute(&i, GPA, 8, &mut r, &mut m), Err(Fail(0x7ff8)));
    assert_eq!(r.rsp, 0x8000);
}

#[test]
fn rep_movsb_copies_and_counts_down() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_lin(Seg::Ds, 0x100, &[1, 2, 3]);
    (r.gprs.rcx, r.gprs.rsi, r.gprs.rdi) = (3, 0x100, 0x200);
    // rep movsb
    assert_eq!(run(&[0xf3, 0xa4], &mut r, &mut m), Completion::Done);
    assert_eq!(m.lin(Seg::Es, 0x200, 3), vec![1, 2, 3]);
    assert_eq!((r.gprs.rcx, r.gprs.rsi, r.gprs.rdi), (0, 0x103, 0x203));
}

#[test]
fn movs_steps_down_with_df() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_lin(Seg::Ds, 0x100, &[1, 2, 3, 4, 5, 6, 7, 8]);
    (r.gprs.rcx, r.gprs.rsi, r.gprs.rdi) = (2, 0x104, 0x204);
    r.rflags = Rflags::DF.bits();
    // rep movsd, backwards
    run(&[0xf3, 0xa5], &mut r, &mut m);
    assert_eq!(m.lin(Seg::Es, 0x200, 8), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!((r.gprs.rsi, r.gprs.rdi), (0xfc, 0x1fc));
}

#[test]
fn stos_and_lods_use_rax() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rax = 0x0102_0304_0506_0708;
    (r.gprs.rcx, r.gprs.rdi) = (2, 0x300);
    // rep stosq
    run(&[0xf3, 0x48, 0xab], &mut r, &mut m);
    assert_eq!(m.lin(Seg::Es, 0x308, 8), 0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!((r.gprs.rcx, r.gprs.rdi), (0, 0x310));
    // lodsd: loads EAX (zero-extended) from DS:rSI.
    m.put_lin(Seg::Ds, 0x40, &[0xaa, 0xbb, 0xcc, 0xdd]);
    r.gprs.rsi = 0x40;
    run(&[0xad], &mut r, &mut m);
    assert_eq!((r.gprs.rax, r.gprs.rsi), (0xddcc_bbaa, 0x44));
    // lodsb keeps the rest of RAX.
    run(&[0xac], &mut r, &mut m);
    assert_eq!(r.gprs.rax, 0x0000_0000_ddcc_bb00);
}

#[test]
fn string_segments_follow_the_prefixes() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    m.put_lin(Seg::Fs, 0, &[0x5a]);
    // fs movsb: from FS:rSI to ES:rDI
    run(&[0x64, 0xa4], &mut r, &mut m);
    assert_eq!(m.lin(Seg::Es, 0, 1), vec![0x5a]);
    // fs stosb: still ES
    r.gprs.rax = 0x77;
    r.gprs.rdi = 0x10;
    run(&[0x64, 0xaa], &mut r, &mut m);
    assert_eq!(m.lin(Seg::Es, 0x10, 1), vec![0x77]);
    assert_eq!(m.lin(Seg::Fs, 0x10, 1), vec![0]);
}

#[test]
fn rep_with_zero_count_does_nothing() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rcx = 0xffff_ffff_0000_0000; // ECX = 0 with addr32
    // rep movsb with addr32: only ECX counts.
    assert_eq!(run(&[0x67, 0xf3, 0xa4], &mut r, &mut m), Completion::Done);
    assert!(m.log.is_empty());
}

#[test]
fn long_rep_is_split_across_exits() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rcx = 3000;
    let i = d64(&[0xf3, 0xaa]); // rep stosb
    let mut exits = 0;
    while execute(&i, GPA, 8, &mut r, &mut m).unwrap() == Completion::Again {
        exits += 1;
        assert_eq!(r.gprs.rcx, 3000 - exits * MAX_PER_EXIT);
    }
    assert_eq!((exits, r.gprs.rcx, r.gprs.rdi, m.writes()), (2, 0, 3000, 3000));
}

#[test]
fn a_rep_that_ends_with_the_budget_is_done_and_without_rep_rcx_is_ignored() {
    // Exactly MAX_PER_EXIT elements: all done in this exit, RIP moves on.
    let (mut r, mut m) = (RegState::default(), Fake::default());
    r.gprs.rcx = MAX_PER_EXIT;
    assert_eq!(run(&[0xf3, 0xaa], &mut r, &mut m), Completion::Done); // rep stosb
    assert_eq!((r.gprs.rcx, m.writes()), (0, MAX_PER_EXIT as usize));
    // Without REP one element, whatever RCX holds (SDM Vol. 2B STOS), and RCX is untouched.
    r.gprs.rcx = 5;
    assert_eq!(run(&[0xaa], &mut r, &mut m), Completion::Done); // stosb
    assert_eq!(r.gprs.rcx, 5);
}

#[test]
fn rep_stops_at_a_failing_access_with_progress_kept() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    (r.gprs.rcx, r.gprs.rsi, r.gprs.rdi) = (4, 0x100, 0x200);
    m.fail_at = Some(0x202);
    let i = d64(&[0xf3, 0xa4]); // rep movsb
    assert_eq!(execute(&i, GPA, 8, &mut r, &mut m), Err(Fail(0x202)));
    assert_eq!((r.gprs.rcx, r.gprs.rsi, r.gprs.rdi), (2, 0x102, 0x202), "two iterations done");
}

#[test]
fn string_registers_wrap_at_the_address_size() {
    let (mut r, mut m) = (RegState::default(), Fake::default());
    // rep movsb in 16-bit code: SI/DI/CX are 16 bits; bits above stay.
    (r.gprs.rcx, r.gprs.rsi, r.gprs.rdi) = (0x7_0001, 0x1_ffff, 0x2_0000);
    run_in(&[0xf3, 0xa4], Bits16, 2, &mut r, &mut m);
    assert_eq!(m.log[0], ("read_linear", 0xffff, vec![0]));
    assert_eq!((r.gprs.rcx, r.gprs.rsi, r.gprs.rdi), (0x7_0000, 0x1_0000, 0x2_0001));
    // addr32 in 64-bit code: ESI/EDI results are zero-extended.
    (r.gprs.rcx, r.gprs.rsi, r.gprs.rdi) = (1, 0xffff_ffff_ffff_ffff, 0x1_0000_0000);
    run(&[0x67, 0xa4], &mut r, &mut m);
    assert_eq!((r.gprs.rsi, r.gprs.rdi), (0, 1));
}

#[test]
fn reg_state_maps_encodings_to_registers() {
    let mut r = RegState::default();
    for n in 0..16u8 {
        r.set_gpr(n, 0x100 + n as u64);
    }
    assert_eq!((r.gprs.rax, r.gprs.rcx, r.gprs.rdx, r.gprs.rbx), (0x100, 0x101, 0x102, 0x103));
    assert_eq!((r.rsp, r.gprs.rbp, r.gprs.rsi, r.gprs.rdi), (0x104, 0x105, 0x106, 0x107));
    assert_eq!((r.gprs.r8, r.gprs.r15), (0x108, 0x10f));
    for n in 0..16u8 {
        assert_eq!(r.gpr(n), 0x100 + n as u64);
    }
}

#[test]
fn cpu_mode_from_code_segment() {
    assert_eq!(CpuMode::from_cs(true, false), Bits64);
    assert_eq!(CpuMode::from_cs(false, true), Bits32);
    assert_eq!(CpuMode::from_cs(false, false), Bits16);
}

// ---- Property: no byte string makes the decoder (or the executor) panic ----

/// Memory that answers everything with zeros and stores nothing (fast, never fails).
struct Null;

impl InsnMemory for Null {
    type Error = ();
    fn read_gpa(&mut self, _: u64, d: &mut [u8]) -> Result<(), ()> {
        d.fill(0);
        Ok(())
    }
    fn write_gpa(&mut self, _: u64, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
    fn read_linear(&mut self, _: Seg, _: u64, d: &mut [u8]) -> Result<(), ()> {
        d.fill(0);
        Ok(())
    }
    fn write_linear(&mut self, _: Seg, _: u64, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
}

/// xorshift64 (Marsaglia 2003): a fixed, dependency-free generator for reproducible inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic_and_lengths_are_sane() {
    // Bytes that steer the decoder into interesting places: prefixes, REX, every supported
    // opcode and the two-byte escape.
    const INTERESTING: &[u8] = &[
        0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x40, 0x41, 0x44, 0x48, 0x4f, 0x0f, 0xb6,
        0xb7, 0xbe, 0xbf, 0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x20, 0x21, 0x23, 0x31, 0x38, 0x3b, 0x80, 0x81,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8f, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xaa,
        0xab, 0xac, 0xad, 0xc6, 0xc7, 0xf6, 0xf7, 0xff, 0x04, 0x05, 0x24, 0x25, 0x44, 0x84, 0xc0,
    ];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut ok = 0;
    for n in 0..40_000u32 {
        let len = (rng.next() % 21) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let x = rng.next();
                if x & 1 == 0 {
                    INTERESTING[(x >> 8) as usize % INTERESTING.len()]
                } else {
                    (x >> 8) as u8
                }
            })
            .collect();
        let mode = [Bits16, Bits32, Bits64][n as usize % 3];
        let Ok(i) = decode(&bytes, mode) else { continue };
        ok += 1;
        let l = i.len as usize;
        assert!((1..=MAX_INSN_LEN).contains(&l) && l <= bytes.len(), "{bytes:02x?}: len {l}");
        // The instruction is exactly its first `len` bytes: fewer is truncated, more changes
        // nothing.
        assert_eq!(decode(&bytes[..l], mode), Ok(i), "{bytes:02x?}");
        assert_eq!(decode(&bytes[..l - 1], mode), Err(DecodeError::Truncated), "{bytes:02x?}");
        assert!([1, 2, 4, 8].contains(&i.size) && [2, 4, 8].contains(&i.addr_size));
        // Executing it with arbitrary registers does not panic either.
        let mut r = RegState { rsp: rng.next(), rflags: rng.next(), ..Default::default() };
        for k in 0..16 {
            r.set_gpr(k, if rng.next() & 1 == 0 { rng.next() } else { rng.next() % 3 });
        }
        let _ = execute(&i, rng.next(), [2, 4, 8][n as usize % 3], &mut r, &mut Null);
        let _ = i.effective_address(&r, rng.next());
    }
    assert!(ok > 2_000, "the generator reaches valid instructions ({ok})");
}
