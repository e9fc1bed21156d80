//! Test guest `mmio`: emulated memory-mapped I/O. Every access below goes to guest-physical
//! addresses that are not RAM, so each one is a nested page fault (EPT violation / NPF) that
//! the hypervisor decodes and emulates; the guest checks the result of each instruction form
//! against the I/O APIC model Bastion promises at 0xFEC0_0000 and against the floating bus of
//! the rest of the MMIO hole. One line per check (`mmio: PASS <what>` or
//! `mmio: FAIL <what> (<detail>)`), then `mmio: <n> passed, <m> failed` and the test exit.
//!
//! The rules checked (the comments below cite them by name):
//! - **page**: the I/O APIC is the page 0xFEC0_0000..0xFEC0_1000: IOREGSEL at +0x00, IOWIN at
//!   +0x10, EOI at +0x40 (write-only, reads 0); every other offset reads 0, writes ignored.
//! - **bytes**: an access of 1, 2, 4 (and 8) bytes is served byte by byte: byte k of an access
//!   at offset o is byte (o+k)&3 of the 32-bit register at (o+k)&~3 of its 16-byte slot (a
//!   byte read at +0x11 is bits 15:8 of the selected register; an 8-byte access at +0x10
//!   covers IOWIN and +0x14..+0x17, which read 0 and ignore writes).
//! - **sel**: IOREGSEL stores bits 7:0 only; its bytes 1..3 read 0 and ignore writes.
//! - **regs**: index 0 = ID (bits 27:24 read/write, the rest read 0), 1 = VER = 0x0017_0020
//!   (read-only), 2 = ARB (bits 27:24 = ID's, read-only), 0x10 + 2n / 0x11 + 2n = redirection
//!   entry n (0..23) low / high dword; any other index reads 0 (writes ignored).
//! - **rte**: entries reset to low 0x0001_0000 (masked), high 0; low-dword bits 12 (delivery
//!   status) and 14 (Remote IRR) are read-only, every other bit is read/write.
//! - **hole**: in 0xC000_0000..0x1_0000_0000 an address no device claims reads all ones and
//!   drops writes (a PC's floating bus), e.g. 0xFED0_0000.
//!
//! Instruction forms (inline asm, so the encoding is known): MOV r/m with 8, 16, 32 and 64-bit
//! operands both ways, MOV m,imm (C6, C7, 66 C7, REX.W C7), MOV moffs (A1/A3 with a 64-bit
//! address), several ModRM/SIB forms (disp8, disp32, SIB with index, index without base,
//! R12/R13 bases, REX.R registers, AH and SIL, 32-bit address size with wrap-around, an FS
//! override), MOVZX/MOVSX (byte and word, 16/32/64-bit destinations), XCHG m8/m32, group 1
//! with imm32 (81), imm8 (83) and byte (80) on memory (ADD, OR, ADC, SBB, AND, SUB, XOR, CMP),
//! ALU m,r (01, 09, 20, 21, 29, 31, 39) and r,m (03, 0B, 23, 2B, 33, 3B, REX.W 03), TEST m,imm
//! (F6, F7) and m,r (85) with the flags they leave (PUSHFQ), PUSH m64 / POP m64, and STOS,
//! LODS, MOVS in byte, word, dword and qword sizes, single and REP, DF = 0 and DF = 1, between
//! RAM and MMIO and MMIO to MMIO, with the final RSI/RDI/RCX checked.
//!
//! The checks run in order and later ones rely on the state earlier ones left (and on the
//! 32-bit MOVs checked first, which the `read_reg`/`write_reg` helpers use). At the end the
//! entries used are masked again and ID restored. Needs 1 vCPU.
#![no_std]
#![no_main]

use core::arch::asm;
use core::fmt::Display;
use test_guests::{cpu, Checks};

test_guests::guest!(name = "mmio", main = main);

const IOAPIC: u64 = 0xFEC0_0000;
const IOREGSEL: u64 = IOAPIC;
const IOWIN: u64 = IOAPIC + 0x10;
const EOI: u64 = IOAPIC + 0x40;
/// An address in the MMIO hole that no device claims (rule hole).
const FLOATING: u64 = 0xFED0_0000;

const ID: u32 = 0;
const VER: u32 = 1;
const ARB: u32 = 2;
const VER_VALUE: u32 = 0x0017_0020;
const ID_BITS: u32 = 0x0F00_0000;
const RESET_LO: u32 = 0x0001_0000;
/// Read-only bits of an entry's low dword: delivery status (12), Remote IRR (14).
const RO_LO: u32 = 1 << 12 | 1 << 14;

/// IOREGSEL index of redirection entry `n`'s low dword.
const fn lo(n: u32) -> u32 {
    0x10 + 2 * n
}

/// IOREGSEL index of redirection entry `n`'s high dword.
const fn hi(n: u32) -> u32 {
    0x11 + 2 * n
}

const IA32_FS_BASE: u32 = 0xC000_0100;

// RFLAGS arithmetic flags (SDM Vol. 1 3.4.3.1).
const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// AND, OR, XOR and TEST leave AF undefined (SDM Vol. 2 AND, TEST): not compared.
const LOGIC: u64 = ARITH & !AF;

// The one-instruction accessors. SAFETY (all `unsafe` blocks in this file): they touch the
// I/O APIC page and the MMIO hole, which are not RAM (so no Rust object is affected), this
// function's own locals through pointers taken here, and the stack with balanced PUSH/POP;
// a block that sets DF clears it again, and RFLAGS as loaded by POPFQ keeps IF, TF and DF
// clear.

/// MOV m8, r8 (88 /r).
fn st8(addr: u64, v: u8) {
    unsafe { asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) v, options(nostack, preserves_flags)) };
}

/// MOV r8, m8 (8A /r).
fn ld8(addr: u64) -> u8 {
    let v;
    unsafe { asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = out(reg_byte) v, options(nostack, preserves_flags)) };
    v
}

/// MOV m16, r16 (66 89 /r).
fn st16(addr: u64, v: u16) {
    unsafe { asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags)) };
}

/// MOV r16, m16 (66 8B /r).
fn ld16(addr: u64) -> u16 {
    let v: u16;
    unsafe { asm!("mov {v:x}, word ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// MOV m32, r32 (89 /r).
fn st32(addr: u64, v: u32) {
    unsafe { asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags)) };
}

/// MOV r32, m32 (8B /r).
fn ld32(addr: u64) -> u32 {
    let v: u32;
    unsafe { asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// MOV m64, r64 (REX.W 89 /r).
fn st64(addr: u64, v: u64) {
    unsafe { asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags)) };
}

/// MOV r64, m64 (REX.W 8B /r).
fn ld64(addr: u64) -> u64 {
    let v: u64;
    unsafe { asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

fn select(index: u32) {
    st32(IOREGSEL, index);
}

fn read_reg(index: u32) -> u32 {
    select(index);
    ld32(IOWIN)
}

fn write_reg(index: u32, v: u32) {
    select(index);
    st32(IOWIN, v);
}

/// RFLAGS loaded before an instruction whose flags are checked: each arithmetic flag the
/// opposite of what the instruction must leave, so a flag it fails to write shows; bit 1
/// set (reserved, always 1), IF, TF and DF clear.
const fn preset(expected: u64) -> u64 {
    0x2 | (!expected & ARITH)
}

/// Runs one instruction with RFLAGS preset against `$expected` and returns RFLAGS after it
/// (PUSHFQ; POP).
macro_rules! flags_after {
    ($expected:expr, $insn:literal, $($operands:tt)*) => {{
        let f: u64;
        unsafe {
            asm!(
                "push {pre}",
                "popfq",
                $insn,
                "pushfq",
                "pop {f}",
                pre = in(reg) preset($expected),
                f = lateout(reg) f,
                $($operands)*
            )
        };
        f
    }};
}

fn expect_flags(c: &mut Checks, what: impl Display, got: u64, expected: u64, mask: u64) {
    if got & mask == expected & mask {
        c.pass(what);
    } else {
        c.fail(what, format_args!("RFLAGS {got:#x}: flags {:#x}, expected {:#x} (mask {mask:#x})", got & mask, expected & mask));
    }
}

/// Registers of a string instruction, before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Str {
    rsi: u64,
    rdi: u64,
    rcx: u64,
    rax: u64,
}

/// Runs string instruction(s) with RSI, RDI, RCX and RAX from `$s`; returns them after.
macro_rules! string_op {
    ($s:expr, $($insn:literal),+) => {{
        let mut s: Str = $s;
        unsafe {
            asm!(
                $($insn),+,
                inout("rsi") s.rsi,
                inout("rdi") s.rdi,
                inout("rcx") s.rcx,
                inout("rax") s.rax,
                options(nostack),
            )
        };
        s
    }};
}

fn expect_str(c: &mut Checks, what: impl Display, got: Str, rsi: u64, rdi: u64, rcx: u64) {
    if (got.rsi, got.rdi, got.rcx) == (rsi, rdi, rcx) {
        c.pass(what);
    } else {
        c.fail(
            what,
            format_args!(
                "RSI {:#x} RDI {:#x} RCX {}, expected RSI {rsi:#x} RDI {rdi:#x} RCX {rcx}",
                got.rsi, got.rdi, got.rcx
            ),
        );
    }
}

fn expect_bytes(c: &mut Checks, what: impl Display, got: &[u8], expected: &[u8]) {
    if got == expected {
        c.pass(what);
    } else {
        c.fail(what, format_args!("got {got:x?}, expected {expected:x?}"));
    }
}

fn expect_words(c: &mut Checks, what: impl Display, got: &[u32], expected: &[u32]) {
    if got == expected {
        c.pass(what);
    } else {
        c.fail(what, format_args!("got {got:x?}, expected {expected:x?}"));
    }
}

fn main() -> u32 {
    let mut c = Checks::new();
    map_uncached(IOAPIC);
    map_uncached(0xC000_0000);
    map_uncached(0xFEBF_F000);
    let id = registers(&mut c);
    other_offsets(&mut c);
    addressing(&mut c);
    bytes_and_words(&mut c);
    extensions(&mut c);
    exchange(&mut c);
    alu(&mut c);
    compare_and_test(&mut c);
    qwords(&mut c);
    push_pop(&mut c);
    strings(&mut c);
    floating_bus(&mut c);
    // Mask the entries this guest wrote (16..23) and put ID back.
    for n in 16..24 {
        write_reg(lo(n), RESET_LO);
        write_reg(hi(n), 0);
    }
    write_reg(ID, id);
    c.finish()
}

/// Marks the 2 MiB page holding `addr` uncacheable (PCD | PWT selects PAT entry 3, UC, in the
/// ABI's PAT), as an OS maps MMIO; the boot code's identity map is write-back.
fn map_uncached(addr: u64) {
    const FRAME: u64 = 0x000F_FFFF_FFFF_F000;
    let cr3: u64;
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let entry = |table: u64, index: u64| (table & FRAME) + 8 * (index & 511);
    // SAFETY: the boot code's page tables, identity-mapped RAM below 1 MiB; only the PDE's
    // cache bits change, and INVLPG drops the stale translation.
    unsafe {
        let pml4e = core::ptr::read_volatile(entry(cr3, addr >> 39) as *const u64);
        let pdpte = core::ptr::read_volatile(entry(pml4e, addr >> 30) as *const u64);
        let pde = entry(pdpte, addr >> 21) as *mut u64;
        core::ptr::write_volatile(pde, core::ptr::read_volatile(pde) | 1 << 4 | 1 << 3);
        asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags));
    }
}

/// The 32-bit MOVs the helpers rely on, then every register's rules. Returns ID as found.
fn registers(c: &mut Checks) -> u32 {
    // sel: only bits 7:0 stored, so 0xABCDEF01 selects 1 and reads back 0x01.
    st32(IOREGSEL, 0xABCD_EF01);
    c.expect_eq("MOV m32,r32 (89) of 0xabcdef01 to IOREGSEL, MOV r32,m32 (8B) reads 0x1 (bits 7:0 only)", ld32(IOREGSEL).into(), 0x01);
    // regs: index 1 is VER.
    c.expect_eq("MOV r32,m32 from IOWIN with IOREGSEL = 1 reads VER 0x00170020", ld32(IOWIN).into(), VER_VALUE.into());
    let mut v = u64::MAX;
    unsafe { asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    // A 32-bit destination is zero-extended to 64 bits (SDM Vol. 1 3.4.1.1).
    c.expect_eq("MOV r32,m32 zero-extends into the 64-bit register (all ones before)", v, VER_VALUE.into());
    unsafe { asm!("mov dword ptr [{a}], 0x7ffff002", a = in(reg) IOREGSEL, options(nostack, preserves_flags)) };
    // sel: 0x7ffff002 stores 0x02.
    c.expect_eq("MOV m32,imm32 (C7 /0) of 0x7ffff002 to IOREGSEL selects 0x2", ld32(IOREGSEL).into(), 0x02);

    // rte: reset values, read before this guest writes any entry.
    let mut bad = None;
    for n in 0..24 {
        let (l, h) = (read_reg(lo(n)), read_reg(hi(n)));
        if bad.is_none() && (l, h) != (RESET_LO, 0) {
            bad = Some((n, l, h));
        }
    }
    let what = "all 24 redirection entries read their reset value (low 0x10000, masked; high 0)";
    match bad {
        None => c.pass(what),
        Some((n, l, h)) => c.fail(what, format_args!("entry {n}: low {l:#x}, high {h:#x}")),
    }

    // regs: ID has only bits 27:24; ARB shows ID's bits 27:24.
    let id = read_reg(ID);
    c.expect_eq("ID reads 0 outside bits 27:24", (id & !ID_BITS).into(), 0);
    c.expect_eq("ARB reads ID's bits 27:24", read_reg(ARB).into(), (id & ID_BITS).into());
    write_reg(ID, 0xFFFF_FFFF);
    c.expect_eq("ID written with all ones reads 0x0f000000 (bits 27:24 only)", read_reg(ID).into(), ID_BITS.into());
    c.expect_eq("ARB follows the written ID: 0x0f000000", read_reg(ARB).into(), ID_BITS.into());
    write_reg(ARB, 0x0300_0000);
    c.expect_eq("ARB is read-only (0x03000000 written, still 0x0f000000)", read_reg(ARB).into(), ID_BITS.into());
    write_reg(ID, 0x0A00_0000);
    c.expect_eq("ID 0x0a000000 reads back, and ARB with it", (u64::from(read_reg(ID)) << 32) | u64::from(read_reg(ARB)), 0x0A00_0000_0A00_0000);
    select(VER);
    unsafe { asm!("mov dword ptr [{a} + 0x10], 0", a = in(reg) IOAPIC, options(nostack, preserves_flags)) };
    c.expect_eq("VER is read-only (MOV m32,imm32 of 0 to IOWIN, still 0x00170020)", read_reg(VER).into(), VER_VALUE.into());

    // rte: bits 12 and 14 of the low dword are read-only (and 0), the others read/write.
    write_reg(lo(16), 0xFFFF_FFFF);
    c.expect_eq("entry 16 low written with all ones reads 0xffffafff (bits 12, 14 read-only)", read_reg(lo(16)).into(), 0xFFFF_AFFF);
    write_reg(lo(16), RO_LO);
    c.expect_eq("entry 16 low written with only bits 12 and 14 reads 0", read_reg(lo(16)).into(), 0);
    write_reg(lo(16), RESET_LO);
    c.expect_eq("entry 16 low written back to 0x10000", read_reg(lo(16)).into(), RESET_LO.into());
    write_reg(hi(16), 0xFFFF_FFFF);
    c.expect_eq("entry 16 high written with all ones reads all ones", read_reg(hi(16)).into(), 0xFFFF_FFFF);
    write_reg(hi(16), 0);
    write_reg(lo(23), 0x0001_80FE);
    write_reg(hi(23), 0xFF00_0000);
    let what = "entry 23 (last) low/high hold 0x180fe / 0xff000000, entry 22 untouched";
    let got = [read_reg(lo(23)), read_reg(hi(23)), read_reg(lo(22)), read_reg(hi(22))];
    expect_words(c, what, &got, &[0x0001_80FE, 0xFF00_0000, RESET_LO, 0]);
    // regs: any other index reads 0 and ignores writes (0x40 would be entry 24).
    let unknown = [0x03, 0x0F, 0x40, 0x41, 0x80, 0xFF];
    let got = unknown.map(|i| {
        write_reg(i, 0xFFFF_FFFF);
        read_reg(i)
    });
    expect_words(c, "indices 0x3, 0xf, 0x40, 0x41, 0x80, 0xff read 0 after writing all ones", &got, &[0; 6]);
    id
}

/// page: every offset but IOREGSEL and IOWIN reads 0 and ignores writes (EOI included).
fn other_offsets(c: &mut Checks) {
    const OFFSETS: [u64; 16] = [0x04, 0x08, 0x0C, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30, 0x3C, 0x40, 0x44, 0x50, 0x100, 0x800, 0xFFC];
    write_reg(hi(23), 0x1234_5678);
    // IOREGSEL = 0x3f and IOWIN = 0x12345678: an offset aliasing either would show it.
    let reads = OFFSETS.map(|o| ld32(IOAPIC + o));
    expect_words(c, "dword reads at +0x4..+0xffc (not IOREGSEL/IOWIN; EOI +0x40 included) read 0", &reads, &[0; 16]);
    for o in OFFSETS {
        st32(IOAPIC + o, 0xFFFF_FFFF);
    }
    let got = [ld32(IOREGSEL), ld32(IOWIN)];
    expect_words(c, "all ones written at those offsets change neither IOREGSEL (0x3f) nor IOWIN", &got, &[0x3F, 0x1234_5678]);
    let reads = OFFSETS.map(|o| ld32(IOAPIC + o));
    expect_words(c, "and those offsets still read 0", &reads, &[0; 16]);
    unsafe { asm!("mov byte ptr [{a}], 0x3f", a = in(reg) EOI, options(nostack, preserves_flags)) };
    c.expect_eq("EOI (+0x40) after a byte write of 0x3f reads 0, IOREGSEL still 0x3f", u64::from(ld8(EOI)) << 8 | u64::from(ld32(IOREGSEL)), 0x3F);
}

/// ModRM/SIB/prefix forms of the 32-bit load (VER selected) and a few of the store.
fn addressing(c: &mut Checks) {
    select(VER);
    let mut v: u32;
    unsafe { asm!("mov {v:e}, dword ptr [{b} + 0x10]", b = in(reg) IOAPIC, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r32,[base+disp8] reads VER", v.into(), VER_VALUE.into());
    unsafe { asm!("mov {v:e}, dword ptr [{b} + 0x1010]", b = in(reg) IOAPIC - 0x1000, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r32,[base+disp32] reads VER", v.into(), VER_VALUE.into());
    unsafe { asm!("mov {v:e}, dword ptr [{b} + {i}*4 + 0x8]", b = in(reg) IOAPIC, i = in(reg) 2u64, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r32,[base+index*4+disp8] reads VER", v.into(), VER_VALUE.into());
    unsafe { asm!("mov {v:e}, dword ptr [{i}*8 + 0x10]", i = in(reg) IOAPIC / 8, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r32,[index*8+disp32] (SIB, no base) reads VER", v.into(), VER_VALUE.into());
    let mut r9 = u64::MAX;
    unsafe { asm!("mov r9d, dword ptr [r12 + 0x10]", in("r12") IOAPIC, inout("r9") r9, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r9d,[r12+0x10] (REX.R, REX.B, SIB for r12) reads VER", r9, VER_VALUE.into());
    let mut r10 = u64::MAX;
    unsafe { asm!("mov r10d, dword ptr [r13]", in("r13") IOWIN, inout("r10") r10, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r10d,[r13] (disp8 0 for r13) reads VER", r10, VER_VALUE.into());
    // 32-bit address size (67): 0xfffffff0 + 0xfec00020 wraps to 0xfec00010.
    unsafe {
        asm!("mov {v:e}, dword ptr [{b:e} + {i:e}]", b = in(reg) 0xFFFF_FFFF_FFFF_FFF0u64, i = in(reg) 0xFEC0_0020u64, v = out(reg) v, options(nostack, preserves_flags))
    };
    c.expect_eq("MOV r32,[ebx+ecx] (67, address wraps at 4 GiB) reads VER", v.into(), VER_VALUE.into());
    unsafe { asm!("movabs eax, dword ptr [0xfec00010]", out("eax") v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV eax,moffs (A1, 64-bit address) reads VER", v.into(), VER_VALUE.into());
    match cpu::try_rdmsr(IA32_FS_BASE) {
        Ok(fs) => {
            // SAFETY: this guest keeps nothing FS-relative (no TLS); restored right after.
            let set = unsafe { cpu::try_wrmsr(IA32_FS_BASE, IOAPIC) };
            v = 0;
            if set.is_ok() {
                unsafe { asm!("mov {v:e}, dword ptr fs:[{z} + 0x10]", z = in(reg) 0u64, v = out(reg) v, options(nostack, preserves_flags)) };
            }
            let _ = unsafe { cpu::try_wrmsr(IA32_FS_BASE, fs) };
            c.expect_eq("MOV r32,fs:[reg+0x10] with FS base 0xfec00000 reads VER", v.into(), VER_VALUE.into());
        }
        Err(f) => c.fail("MOV r32,fs:[...]", format_args!("RDMSR IA32_FS_BASE raised {f}")),
    }
    // Stores: sel keeps bits 7:0.
    unsafe { asm!("mov dword ptr [r13 - 0x10], r10d", in("r13") IOWIN, in("r10") 0xAAAA_AAAA_0000_013Du64, options(nostack, preserves_flags)) };
    c.expect_eq("MOV [r13-0x10],r10d (REX.RB, negative disp8) selects 0x3d", ld32(IOREGSEL).into(), 0x3D);
    unsafe { asm!("movabs dword ptr [0xfec00000], eax", in("eax") VER, options(nostack, preserves_flags)) };
    c.expect_eq("MOV moffs,eax (A3, 64-bit address) selects VER", ld32(IOWIN).into(), VER_VALUE.into());
}

/// 8- and 16-bit MOVs and unaligned dwords, against the bytes rule.
fn bytes_and_words(c: &mut Checks) {
    write_reg(hi(20), 0x4433_2211);
    // bytes: +0x10..+0x13 are bytes 0..3 of the selected register.
    let got = [ld8(IOWIN), ld8(IOWIN + 1), ld8(IOWIN + 2), ld8(IOWIN + 3)];
    expect_bytes(c, "MOV r8,m8 (8A) at IOWIN+0..3 reads bytes 0..3 of 0x44332211", &got, &[0x11, 0x22, 0x33, 0x44]);
    // sel: IOREGSEL is 0x39, its bytes 1..3 read 0.
    let got = [ld8(IOREGSEL), ld8(IOREGSEL + 1), ld8(IOREGSEL + 2), ld8(IOREGSEL + 3)];
    expect_bytes(c, "MOV r8,m8 at IOREGSEL+0..3 reads 0x39, 0, 0, 0", &got, &[0x39, 0, 0, 0]);
    let mut rax = u64::MAX << 8;
    unsafe { asm!("mov al, byte ptr [rdx + 0x11]", in("rdx") IOAPIC, inout("rax") rax, options(nostack, preserves_flags)) };
    c.expect_eq("MOV al,m8 keeps RAX bits 63:8", rax, 0xFFFF_FFFF_FFFF_FF22);
    let mut rax = 0x1111_1111_1111_1111u64;
    unsafe { asm!("mov ah, byte ptr [rdx + 0x12]", in("rdx") IOAPIC, inout("rax") rax, options(nostack, preserves_flags)) };
    c.expect_eq("MOV ah,m8 (no REX) writes RAX bits 15:8 only", rax, 0x1111_1111_1111_3311);
    let mut rsi = 0u64;
    unsafe { asm!("mov sil, byte ptr [rdx + 0x13]", in("rdx") IOAPIC, inout("rsi") rsi, options(nostack, preserves_flags)) };
    c.expect_eq("MOV sil,m8 (REX 40, not dh) reads byte 3", rsi, 0x44);
    let mut r11 = 0u64;
    unsafe { asm!("mov r11b, byte ptr [rdx + 0x10]", in("rdx") IOAPIC, inout("r11") r11, options(nostack, preserves_flags)) };
    c.expect_eq("MOV r11b,m8 (REX.R) reads byte 0", r11, 0x11);

    // Byte stores change only their byte of the selected register.
    st8(IOWIN + 2, 0xAA);
    c.expect_eq("MOV m8,r8 (88) of 0xaa at IOWIN+2 gives 0x44aa2211", read_reg(hi(20)).into(), 0x44AA_2211);
    unsafe { asm!("mov byte ptr [{a} + 0x10], 0x5c", a = in(reg) IOAPIC, options(nostack, preserves_flags)) };
    c.expect_eq("MOV m8,imm8 (C6 /0) of 0x5c at IOWIN+0 gives 0x44aa225c", read_reg(hi(20)).into(), 0x44AA_225C);
    unsafe { asm!("mov byte ptr [rdx + 0x13], ah", in("rdx") IOAPIC, in("rax") 0x9900u64, options(nostack, preserves_flags)) };
    c.expect_eq("MOV m8,ah of 0x99 at IOWIN+3 gives 0x99aa225c", read_reg(hi(20)).into(), 0x99AA_225C);
    // sel: byte 0 stores, bytes 1..3 ignore writes.
    st8(IOREGSEL, 0x37);
    st8(IOREGSEL + 1, 0xFF);
    unsafe { asm!("mov byte ptr [{a} + 3], 0xff", a = in(reg) IOREGSEL, options(nostack, preserves_flags)) };
    c.expect_eq("MOV m8 of 0x37 to IOREGSEL+0, 0xff to +1 and +3: IOREGSEL reads 0x37", ld32(IOREGSEL).into(), 0x37);
    // rte: a byte write to bits 15:8 of a low dword leaves bits 12 and 14 alone.
    write_reg(lo(21), 0);
    st8(IOWIN + 1, 0xFF);
    c.expect_eq("MOV m8 of 0xff at IOWIN+1 on entry 21 low gives 0xaf00 (bits 12, 14 read-only)", read_reg(lo(21)).into(), 0xAF00);
    write_reg(lo(21), RESET_LO);
    // regs: a byte write of 0x35 to ID's bits 31:24 keeps 27:24.
    select(ID);
    st8(IOWIN + 3, 0x35);
    c.expect_eq("MOV m8 of 0x35 at IOWIN+3 on ID gives ID 0x05000000", read_reg(ID).into(), 0x0500_0000);

    // Words.
    write_reg(hi(20), 0x4433_2211);
    let got = [ld16(IOWIN), ld16(IOWIN + 2), ld16(IOWIN + 1), ld16(IOWIN + 3), ld16(IOAPIC + 0xF)];
    // bytes: +0x13..+0x14 = (byte 3, 0); +0x0f..+0x10 = (0, byte 0).
    let expected = [0x2211, 0x4433, 0x3322, 0x0044, 0x1100];
    if got == expected {
        c.pass("MOV r16,m16 (66 8B) at IOWIN+0, +2, +1, +3 and +0xf reads 0x2211, 0x4433, 0x3322, 0x44, 0x1100");
    } else {
        c.fail("MOV r16,m16 at IOWIN+0, +2, +1, +3, +0xf", format_args!("got {got:x?}, expected {expected:x?}"));
    }
    let mut rax = 0xAAAA_AAAA_AAAA_AAAAu64;
    unsafe { asm!("mov ax, word ptr [rdx + 0x12]", in("rdx") IOAPIC, inout("rax") rax, options(nostack, preserves_flags)) };
    c.expect_eq("MOV ax,m16 keeps RAX bits 63:16", rax, 0xAAAA_AAAA_AAAA_4433);
    st16(IOWIN + 2, 0xBEEF);
    c.expect_eq("MOV m16,r16 (66 89) of 0xbeef at IOWIN+2 gives 0xbeef2211", read_reg(hi(20)).into(), 0xBEEF_2211);
    unsafe { asm!("mov word ptr [{a} + 0x10], 0xcafe", a = in(reg) IOAPIC, options(nostack, preserves_flags)) };
    c.expect_eq("MOV m16,imm16 (66 C7) of 0xcafe at IOWIN gives 0xbeefcafe", read_reg(hi(20)).into(), 0xBEEF_CAFE);
    // bytes: at +0x13, 0x88 -> byte 3, 0x77 -> +0x14 (ignored); at +0x0f, 0x55 -> +0x0f
    // (ignored), 0x66 -> byte 0.
    st16(IOWIN + 3, 0x7788);
    st16(IOAPIC + 0xF, 0x6655);
    c.expect_eq("unaligned MOV m16 of 0x7788 at IOWIN+3 and 0x6655 at +0xf give 0x88efca66", read_reg(hi(20)).into(), 0x88EF_CA66);
    select(VER);
    st16(IOREGSEL, 0x1239);
    c.expect_eq("MOV m16 of 0x1239 to IOREGSEL selects 0x39", ld32(IOREGSEL).into(), 0x39);

    // Unaligned dwords. bytes: +0x0e..+0x11 = (0, 0, byte 0, byte 1); +0x12..+0x15 = (byte 2,
    // byte 3, 0, 0).
    write_reg(hi(20), 0x4433_2211);
    let got = [ld32(IOAPIC + 0xE), ld32(IOWIN + 2)];
    expect_words(c, "unaligned MOV r32,m32 at +0xe and +0x12 read 0x22110000 and 0x4433", &got, &[0x2211_0000, 0x4433]);
    // At +0x0f: 0xdd -> +0x0f (ignored), 0xcc, 0xbb, 0xaa -> bytes 0..2; at +0x12: 0x44, 0x33 ->
    // bytes 2, 3 and the rest ignored.
    st32(IOAPIC + 0xF, 0xAABB_CCDD);
    c.expect_eq("unaligned MOV m32 of 0xaabbccdd at +0xf gives 0x44aabbcc", read_reg(hi(20)).into(), 0x44AA_BBCC);
    st32(IOWIN + 2, 0x1122_3344);
    c.expect_eq("unaligned MOV m32 of 0x11223344 at +0x12 gives 0x3344bbcc", read_reg(hi(20)).into(), 0x3344_BBCC);
}

/// MOVZX and MOVSX from the selected register 0x7ff08090 (bytes 0x90, 0x80, 0xf0, 0x7f).
fn extensions(c: &mut Checks) {
    write_reg(hi(20), 0x7FF0_8090);
    let mut v = u64::MAX;
    unsafe { asm!("movzx {v:e}, byte ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVZX r32,m8 (0F B6) of byte 0x90 gives 0x90 (RAX all ones before)", v, 0x90);
    let mut v = u64::MAX;
    unsafe { asm!("movzx {v:e}, word ptr [{a} + 2]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVZX r32,m16 (0F B7) of word 0x7ff0 at IOWIN+2 gives 0x7ff0", v, 0x7FF0);
    let mut v = u64::MAX;
    unsafe { asm!("movzx {v:x}, byte ptr [{a} + 1]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVZX r16,m8 (66 0F B6) of byte 0x80 keeps bits 63:16", v, 0xFFFF_FFFF_FFFF_0080);
    let mut v = u64::MAX;
    unsafe { asm!("movsx {v:e}, byte ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r32,m8 (0F BE) of byte 0x90 gives 0xffffff90", v, 0xFFFF_FF90);
    let mut v = u64::MAX;
    unsafe { asm!("movsx {v:e}, byte ptr [{a} + 3]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r32,m8 of byte 0x7f gives 0x7f", v, 0x7F);
    let v: u64;
    unsafe { asm!("movsx {v}, byte ptr [{a} + 2]", a = in(reg) IOWIN, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r64,m8 (REX.W 0F BE) of byte 0xf0 gives 0xfffffffffffffff0", v, 0xFFFF_FFFF_FFFF_FFF0);
    let v: u64;
    unsafe { asm!("movsx {v}, word ptr [{a}]", a = in(reg) IOWIN, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r64,m16 (REX.W 0F BF) of word 0x8090 gives 0xffffffffffff8090", v, 0xFFFF_FFFF_FFFF_8090);
    let mut v = u64::MAX;
    unsafe { asm!("movsx {v:e}, word ptr [{a} + 2]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r32,m16 (0F BF) of word 0x7ff0 gives 0x7ff0", v, 0x7FF0);
    // sel: byte 2 of IOREGSEL reads 0; hole: a byte reads 0xff.
    let mut v = u64::MAX;
    unsafe { asm!("movzx {v:e}, byte ptr [{a} + 2]", a = in(reg) IOREGSEL, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVZX r32,m8 of IOREGSEL+2 gives 0", v, 0);
    let v: u64;
    unsafe { asm!("movsx {v}, byte ptr [{a}]", a = in(reg) FLOATING, v = out(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("MOVSX r64,m8 of the floating bus gives all ones", v, u64::MAX);
}

fn exchange(c: &mut Checks) {
    write_reg(hi(20), 0x1234_5678);
    let mut v = 0xFFFF_FFFF_9ABC_DEF0u64;
    unsafe { asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) IOWIN, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("XCHG m32,r32 (87) returns the old 0x12345678 (zero-extended)", v, 0x1234_5678);
    c.expect_eq("XCHG m32,r32 stored 0x9abcdef0", read_reg(hi(20)).into(), 0x9ABC_DEF0);
    // sel: the old IOREGSEL (0x39) comes back, 0x37 of 0x12345637 is stored.
    select(hi(20));
    let mut v = 0x1234_5637u64;
    unsafe { asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) IOREGSEL, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("XCHG m32,r32 on IOREGSEL: 0x39 back, 0x37 selected", v << 32 | u64::from(ld32(IOREGSEL)), 0x39 << 32 | 0x37);
    write_reg(hi(20), 0x1234_5678);
    let mut b = 0xA5u8;
    unsafe { asm!("xchg byte ptr [{a} + 1], {b}", a = in(reg) IOWIN, b = inout(reg_byte) b, options(nostack, preserves_flags)) };
    c.expect_eq("XCHG m8,r8 (86) at IOWIN+1: 0x56 back, register 0x1234a578", u64::from(b) << 32 | u64::from(read_reg(hi(20))), 0x56_1234_A578);
    // hole: reads all ones, the write is dropped.
    let mut v = 0u64;
    unsafe { asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) FLOATING, v = inout(reg) v, options(nostack, preserves_flags)) };
    c.expect_eq("XCHG m32,r32 on the floating bus returns all ones and stores nothing", v << 32 | u64::from(ld32(FLOATING)), 0xFFFF_FFFF_FFFF_FFFF);
}

/// Read-modify-write ALU forms. Entry 22 low follows an OS's unmask sequence; each result
/// below follows from the one before (rte: bits 12 and 14 keep their 0).
fn alu(c: &mut Checks) {
    write_reg(lo(22), RESET_LO);
    select(lo(22));
    let exp = PF; // 0x10000 | 0x8a0 = 0x108a0: low byte 0xa0 has even parity
    let f = flags_after!(exp, "or dword ptr [{a}], 0x8a0", a = in(reg) IOWIN);
    c.expect_eq("OR m32,imm32 (81 /1) of 0x8a0 on 0x10000 gives 0x108a0", ld32(IOWIN).into(), 0x0001_08A0);
    expect_flags(c, "OR m32,imm32 flags: PF only", f, exp, LOGIC);
    unsafe { asm!("and dword ptr [{a}], 0xfffeffff", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("AND m32,imm32 (81 /4) of 0xfffeffff (unmask) gives 0x8a0", ld32(IOWIN).into(), 0x08A0);
    unsafe { asm!("add dword ptr [{a}], 0x10", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("ADD m32,imm8 (83 /0) of 0x10 gives 0x8b0", ld32(IOWIN).into(), 0x08B0);
    unsafe { asm!("sub dword ptr [{a}], -2", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("SUB m32,imm8 (83 /5) of -2 (sign-extended) gives 0x8b2", ld32(IOWIN).into(), 0x08B2);
    // 0x8b2 + 0x1100 = 0x19b2, and bit 12 is read-only (0): 0x9b2 stored.
    unsafe { asm!("add dword ptr [{a}], 0x1100", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("ADD m32,imm32 (81 /0) of 0x1100 gives 0x9b2 (bit 12 of 0x19b2 read-only)", ld32(IOWIN).into(), 0x09B2);
    unsafe { asm!("xor dword ptr [{a}], 0x7f", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("XOR m32,imm8 (83 /6) of 0x7f gives 0x9cd", ld32(IOWIN).into(), 0x09CD);
    unsafe { asm!("stc", "adc dword ptr [{a}], 3", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("ADC m32,imm8 (83 /2) of 3 with CF = 1 gives 0x9d1", ld32(IOWIN).into(), 0x09D1);
    unsafe { asm!("stc", "sbb dword ptr [{a}], 0x100", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("SBB m32,imm32 (81 /3) of 0x100 with CF = 1 gives 0x8d0", ld32(IOWIN).into(), 0x08D0);
    // Byte 1 = 0x08 | 0x5f = 0x5f, whose bits 4 and 6 are bits 12 and 14: 0x0f stored.
    unsafe { asm!("or byte ptr [{a} + 1], 0x5f", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("OR m8,imm8 (80 /1) of 0x5f at IOWIN+1 gives 0xfd0 (bits 12, 14 read-only)", ld32(IOWIN).into(), 0x0FD0);
    unsafe { asm!("and byte ptr [{a}], {r}", a = in(reg) IOWIN, r = in(reg_byte) 0x0Fu8, options(nostack)) };
    c.expect_eq("AND m8,r8 (20) of 0x0f at IOWIN gives 0xf00", ld32(IOWIN).into(), 0x0F00);
    unsafe { asm!("add word ptr [{a}], 0x1234", a = in(reg) IOWIN, options(nostack)) };
    c.expect_eq("ADD m16,imm16 (66 81 /0) of 0x1234 gives 0x2134", ld32(IOWIN).into(), 0x2134);
    write_reg(lo(22), RESET_LO);

    // ALU m32, r32 on entry 22 high (all bits read/write).
    write_reg(hi(22), 0x0F0F_0000);
    let r = |v: u32| u64::from(v) | 0xDEAD_0000_0000_0000;
    unsafe { asm!("or dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) r(0x0000_F0F0), options(nostack)) };
    c.expect_eq("OR m32,r32 (09) of 0xf0f0 gives 0x0f0ff0f0", ld32(IOWIN).into(), 0x0F0F_F0F0);
    unsafe { asm!("and dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) r(0xFF00_FF00), options(nostack)) };
    c.expect_eq("AND m32,r32 (21) of 0xff00ff00 gives 0x0f00f000", ld32(IOWIN).into(), 0x0F00_F000);
    unsafe { asm!("add dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) r(0x0100_0100), options(nostack)) };
    c.expect_eq("ADD m32,r32 (01) of 0x01000100 gives 0x1000f100", ld32(IOWIN).into(), 0x1000_F100);
    unsafe { asm!("sub dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) r(0x0000_0100), options(nostack)) };
    c.expect_eq("SUB m32,r32 (29) of 0x100 gives 0x1000f000", ld32(IOWIN).into(), 0x1000_F000);
    unsafe { asm!("xor dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) r(0x1000_F00F), options(nostack)) };
    c.expect_eq("XOR m32,r32 (31) of 0x1000f00f gives 0xf", ld32(IOWIN).into(), 0x0F);

    // ALU r32, m32: the CPU register gets the result (zero-extended); the I/O APIC register
    // keeps its 0xf.
    let mut v = r(0x10);
    unsafe { asm!("add {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("ADD r32,m32 (03): 0x10 + 0xf = 0x1f", v, 0x1F);
    let mut v = r(0xF0);
    unsafe { asm!("or {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("OR r32,m32 (0B): 0xf0 | 0xf = 0xff", v, 0xFF);
    let mut v = r(0xFC);
    unsafe { asm!("and {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("AND r32,m32 (23): 0xfc & 0xf = 0xc", v, 0x0C);
    let mut v = r(0x100);
    unsafe { asm!("sub {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("SUB r32,m32 (2B): 0x100 - 0xf = 0xf1", v, 0xF1);
    let mut v = r(0xFF);
    unsafe { asm!("xor {v:e}, dword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("XOR r32,m32 (33): 0xff ^ 0xf = 0xf0", v, 0xF0);
    // bytes: the qword at IOWIN is 0xf with +0x14..+0x17 reading 0.
    let mut v = 0x1_0000_0000u64;
    unsafe { asm!("add {v}, qword ptr [{a}]", a = in(reg) IOWIN, v = inout(reg) v, options(nostack)) };
    c.expect_eq("ADD r64,m64 (REX.W 03): 0x100000000 + 0xf", v, 0x1_0000_000F);
    c.expect_eq("the register operand forms left the register at 0xf", read_reg(hi(22)).into(), 0x0F);

    // Flags of RMW forms, computed from the full result even where less is stored.
    select(0x10);
    let exp = PF; // sel: 0x10 + 0x101 = 0x111 (PF of 0x11: even), 0x11 stored
    let f = flags_after!(exp, "add dword ptr [{a}], 0x101", a = in(reg) IOREGSEL);
    c.expect_eq("ADD m32,imm32 of 0x101 on IOREGSEL 0x10 selects 0x11 (bits 7:0 of 0x111)", ld32(IOREGSEL).into(), 0x11);
    expect_flags(c, "ADD m32,imm32 on IOREGSEL flags: PF only (result 0x111)", f, exp, ARITH);
    let exp = CF | PF | AF | ZF; // hole: 0xffffffff + 1 = 0 with carry
    let f = flags_after!(exp, "add dword ptr [{a}], 1", a = in(reg) FLOATING);
    expect_flags(c, "ADD m32,imm8 of 1 on the floating bus: CF, PF, AF, ZF", f, exp, ARITH);
    c.expect_eq("the floating bus still reads all ones after the ADD", ld32(FLOATING).into(), 0xFFFF_FFFF);
    write_reg(hi(22), 0x8000_0000);
    let exp = PF | AF | OF; // 0x80000000 - 1 = 0x7fffffff: signed overflow
    let f = flags_after!(exp, "sub dword ptr [{a}], 1", a = in(reg) IOWIN);
    c.expect_eq("SUB m32,imm8 of 1 on 0x80000000 gives 0x7fffffff", ld32(IOWIN).into(), 0x7FFF_FFFF);
    expect_flags(c, "SUB m32,imm8 flags: PF, AF, OF", f, exp, ARITH);
}

/// CMP and TEST: flags as for the register values the rules give; memory unchanged.
fn compare_and_test(c: &mut Checks) {
    select(VER); // 0x00170020
    let exp = ZF | PF;
    let f = flags_after!(exp, "cmp dword ptr [{a}], 0x00170020", a = in(reg) IOWIN);
    expect_flags(c, "CMP m32,imm32 (81 /7) VER vs 0x00170020: ZF, PF", f, exp, ARITH);
    let exp = CF | PF | AF | SF; // 0x00170020 - 0x00170021 = 0xffffffff
    let f = flags_after!(exp, "cmp dword ptr [{a}], 0x00170021", a = in(reg) IOWIN);
    expect_flags(c, "CMP m32,imm32 VER vs 0x00170021: CF, PF, AF, SF", f, exp, ARITH);
    let exp = CF | PF | AF; // 0x00170020 - 0xffffffff = 0x00170021, borrow
    let f = flags_after!(exp, "cmp dword ptr [{a}], -1", a = in(reg) IOWIN);
    expect_flags(c, "CMP m32,imm8 (83 /7) VER vs -1: CF, PF, AF", f, exp, ARITH);
    let exp = 0; // 0x00170020 - 0x10 = 0x00170010
    let f = flags_after!(exp, "cmp dword ptr [{a}], 0x10", a = in(reg) IOWIN);
    expect_flags(c, "CMP m32,imm8 VER vs 0x10: no flag", f, exp, ARITH);
    let exp = CF | SF; // 0 - 0x00170020 = 0xffe8ffe0
    let f = flags_after!(exp, "cmp {r:e}, dword ptr [{a}]", a = in(reg) IOWIN, r = in(reg) 0u64);
    expect_flags(c, "CMP r32,m32 (3B) 0 vs VER: CF, SF", f, exp, ARITH);
    let exp = ZF | PF;
    let f = flags_after!(exp, "cmp dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) u64::from(VER_VALUE));
    expect_flags(c, "CMP m32,r32 (39) VER vs 0x00170020: ZF, PF", f, exp, ARITH);
    let exp = ZF | PF; // bytes: IOWIN+2 is 0x17
    let f = flags_after!(exp, "cmp byte ptr [{a} + 2], 0x17", a = in(reg) IOWIN);
    expect_flags(c, "CMP m8,imm8 (80 /7) IOWIN+2 vs 0x17: ZF, PF", f, exp, ARITH);
    let exp = PF; // 0x00170000
    let f = flags_after!(exp, "test dword ptr [{a}], 0x00ff0000", a = in(reg) IOWIN);
    expect_flags(c, "TEST m32,imm32 (F7 /0) VER & 0x00ff0000: PF only", f, exp, LOGIC);
    let exp = ZF | PF;
    let f = flags_after!(exp, "test dword ptr [{a}], 0xff000000", a = in(reg) IOWIN);
    expect_flags(c, "TEST m32,imm32 VER & 0xff000000: ZF, PF", f, exp, LOGIC);
    let exp = 0; // 0x20: odd parity
    let f = flags_after!(exp, "test dword ptr [{a}], {r:e}", a = in(reg) IOWIN, r = in(reg) 0x20u64);
    expect_flags(c, "TEST m32,r32 (85) VER & 0x20: no flag", f, exp, LOGIC);
    let exp = ZF | PF; // bytes: IOWIN+3 is 0
    let f = flags_after!(exp, "test byte ptr [{a} + 3], 0xff", a = in(reg) IOWIN);
    expect_flags(c, "TEST m8,imm8 (F6 /0) IOWIN+3 & 0xff: ZF, PF", f, exp, LOGIC);

    write_reg(hi(22), 0x8000_0000);
    let exp = PF | AF | OF; // 0x80000000 - 1 = 0x7fffffff
    let f = flags_after!(exp, "cmp dword ptr [{a}], 1", a = in(reg) IOWIN);
    expect_flags(c, "CMP m32,imm8 0x80000000 vs 1: PF, AF, OF", f, exp, ARITH);
    let exp = SF | PF; // 0x80000000
    let f = flags_after!(exp, "test dword ptr [{a}], 0x800000ff", a = in(reg) IOWIN);
    expect_flags(c, "TEST m32,imm32 0x80000000 & 0x800000ff: SF, PF", f, exp, LOGIC);
    c.expect_eq("CMP and TEST left the register at 0x80000000", read_reg(hi(22)).into(), 0x8000_0000);
    let exp = ZF | PF; // hole: 0xffffffff
    let f = flags_after!(exp, "cmp dword ptr [{a}], -1", a = in(reg) FLOATING);
    expect_flags(c, "CMP m32,imm8 floating bus vs -1: ZF, PF", f, exp, ARITH);
    let exp = SF | PF; // hole: 0xffff - 0x7fff = 0x8000
    let f = flags_after!(exp, "cmp word ptr [{a}], 0x7fff", a = in(reg) FLOATING);
    expect_flags(c, "CMP m16,imm16 (66 81 /7) floating bus vs 0x7fff: SF, PF", f, exp, ARITH);
}

/// 8-byte accesses (bytes: the upper four bytes of a qword at IOWIN are +0x14..+0x17).
fn qwords(c: &mut Checks) {
    write_reg(hi(23), 0x1234_5678);
    c.expect_eq("MOV r64,m64 (REX.W 8B) at IOWIN reads 0x12345678 (+0x14..+0x17 read 0)", ld64(IOWIN), 0x1234_5678);
    c.expect_eq("MOV r64,m64 at +0xc reads 0x12345678 << 32", ld64(IOAPIC + 0xC), 0x1234_5678_0000_0000);
    c.expect_eq("MOV r64,m64 at +0x8 reads 0", ld64(IOAPIC + 0x8), 0);
    c.expect_eq("MOV r64,m64 at IOREGSEL reads 0x3f", ld64(IOREGSEL), 0x3F);
    let v: u64;
    unsafe { asm!("movabs rax, qword ptr [0xfec00010]", out("rax") v, options(nostack, preserves_flags)) };
    c.expect_eq("MOV rax,moffs (REX.W A1) at IOWIN reads 0x12345678", v, 0x1234_5678);
    st64(IOWIN, 0x1122_3344_5566_7788);
    c.expect_eq("MOV m64,r64 (REX.W 89) of 0x1122334455667788 at IOWIN stores 0x55667788", read_reg(hi(23)).into(), 0x5566_7788);
    st64(IOAPIC + 0xC, 0x99AA_BBCC_DDEE_FF00);
    c.expect_eq("MOV m64,r64 of 0x99aabbccddeeff00 at +0xc stores 0x99aabbcc", read_reg(hi(23)).into(), 0x99AA_BBCC);
    unsafe { asm!("mov qword ptr [{a}], -2", a = in(reg) IOWIN, options(nostack, preserves_flags)) };
    c.expect_eq("MOV m64,imm32 (REX.W C7) of -2 at IOWIN stores 0xfffffffe", read_reg(hi(23)).into(), 0xFFFF_FFFE);
    st64(IOREGSEL, 0xFFFF_FFFF_FFFF_FF3D);
    c.expect_eq("MOV m64,r64 of 0xffffffffffffff3d at IOREGSEL selects 0x3d", ld32(IOREGSEL).into(), 0x3D);
    c.expect_eq("MOV r64,m64 of the floating bus reads all ones", ld64(FLOATING), u64::MAX);
}

/// PUSH m64 / POP m64 (bytes rule over 8 bytes); RSP must come back where it was.
fn push_pop(c: &mut Checks) {
    write_reg(hi(23), 0x0BAD_CAFE);
    let (v, before, after): (u64, u64, u64);
    unsafe {
        asm!("mov {b}, rsp", "push qword ptr [{a}]", "pop {v}", "mov {e}, rsp", a = in(reg) IOWIN, v = out(reg) v, b = out(reg) before, e = out(reg) after)
    };
    c.expect_eq("PUSH m64 (FF /6) of IOWIN pushes 0xbadcafe", v, 0x0BAD_CAFE);
    c.expect_eq("PUSH m64 and POP r64 leave RSP as it was", after.wrapping_sub(before), 0);
    let v: u64;
    unsafe { asm!("push qword ptr [{a}]", "pop {v}", a = in(reg) IOAPIC + 0xC, v = out(reg) v) };
    c.expect_eq("PUSH m64 of +0xc pushes 0xbadcafe << 32", v, 0x0BAD_CAFE_0000_0000);
    let v: u64;
    unsafe { asm!("push qword ptr [{a}]", "pop {v}", a = in(reg) FLOATING, v = out(reg) v) };
    c.expect_eq("PUSH m64 of the floating bus pushes all ones", v, u64::MAX);

    let (before, after): (u64, u64);
    unsafe {
        asm!("mov {b}, rsp", "push {v}", "pop qword ptr [{a}]", "mov {e}, rsp", a = in(reg) IOWIN, v = in(reg) 0xFFFF_FFFF_1357_9BDFu64, b = out(reg) before, e = out(reg) after)
    };
    c.expect_eq("POP m64 (8F /0) of 0xffffffff13579bdf to IOWIN stores 0x13579bdf", read_reg(hi(23)).into(), 0x1357_9BDF);
    c.expect_eq("PUSH r64 and POP m64 leave RSP as it was", after.wrapping_sub(before), 0);
    unsafe { asm!("push {v}", "pop qword ptr [{a}]", a = in(reg) IOAPIC + 0xC, v = in(reg) 0x2468_ACE0_FFFF_FFFFu64) };
    c.expect_eq("POP m64 of 0x2468ace0ffffffff to +0xc stores 0x2468ace0", read_reg(hi(23)).into(), 0x2468_ACE0);
    unsafe { asm!("push {v}", "pop qword ptr [{a}]", a = in(reg) IOREGSEL, v = in(reg) 0xEEEE_EEEE_EEEE_EE3Bu64) };
    c.expect_eq("POP m64 of 0xeeeeeeeeeeeeee3b to IOREGSEL selects 0x3b", ld32(IOREGSEL).into(), 0x3B);
    unsafe { asm!("push {v}", "pop qword ptr [{a}]", a = in(reg) FLOATING, v = in(reg) 0u64) };
    c.expect_eq("POP m64 of 0 to the floating bus is dropped", ld64(FLOATING), u64::MAX);
}

/// STOS, MOVS, LODS. With DF = 0 a REP STOSD of 3 from +0x00 writes +0x00, +0x04, +0x08: only
/// the first stores (into IOREGSEL); with 5 it reaches IOWIN at +0x10 too.
fn strings(c: &mut Checks) {
    let s = |rsi: u64, rdi: u64, rcx: u64, rax: u64| Str { rsi, rdi, rcx, rax };

    let r = string_op!(s(0, IOREGSEL, 0, 0x1234_5633), "stosd");
    c.expect_eq("STOSD of 0x12345633 to IOREGSEL selects 0x33", ld32(IOREGSEL).into(), 0x33);
    expect_str(c, "STOSD leaves RDI at IOREGSEL+4", r, 0, IOREGSEL + 4, 0);

    write_reg(hi(18), 0x1111_1111);
    select(VER);
    let r = string_op!(s(0, IOREGSEL, 3, 0xFFFF_FF35), "rep stosd");
    c.expect_eq("REP STOSD x3 (DF = 0) of 0xffffff35 from +0x0 selects 0x35 only", ld32(IOREGSEL).into(), 0x35);
    c.expect_eq("REP STOSD x3 did not reach IOWIN (entry 18 high still 0x11111111)", ld32(IOWIN).into(), 0x1111_1111);
    expect_str(c, "REP STOSD x3 ends with RDI = +0xc, RCX = 0", r, 0, IOAPIC + 0xC, 0);

    let r = string_op!(s(0, IOREGSEL, 5, 0x31), "rep stosd");
    c.expect_eq("REP STOSD x5 of 0x31 from +0x0: IOREGSEL = 0x31, then IOWIN: entry 16 high = 0x31", read_reg(hi(16)).into(), 0x31);
    expect_str(c, "REP STOSD x5 ends with RDI = +0x14, RCX = 0", r, 0, IOAPIC + 0x14, 0);

    // DF = 1 from +0x10: IOWIN first (entry 16 high, still selected), IOREGSEL last.
    write_reg(hi(19), 0x2222_2222);
    select(hi(16));
    let r = string_op!(s(0, IOWIN, 5, 0x37), "std", "rep stosd", "cld");
    c.expect_eq("REP STOSD x5 (DF = 1) of 0x37 from IOWIN: IOREGSEL = 0x37 last", ld32(IOREGSEL).into(), 0x37);
    let got = [read_reg(hi(16)), read_reg(hi(19))];
    expect_words(c, "REP STOSD x5 (DF = 1): entry 16 high (selected first) = 0x37, entry 19 high untouched", &got, &[0x37, 0x2222_2222]);
    expect_str(c, "REP STOSD x5 (DF = 1) ends with RDI = 0xfebffffc, RCX = 0", r, 0, IOAPIC - 4, 0);

    select(hi(17));
    let r = string_op!(s(0, IOWIN, 4, 0x5A), "rep stosb");
    c.expect_eq("REP STOSB x4 of 0x5a at IOWIN gives 0x5a5a5a5a", read_reg(hi(17)).into(), 0x5A5A_5A5A);
    expect_str(c, "REP STOSB x4 ends with RDI = +0x14", r, 0, IOWIN + 4, 0);
    select(hi(17));
    let r = string_op!(s(0, IOWIN, 2, 0xBEEF), "rep stosw");
    c.expect_eq("REP STOSW x2 of 0xbeef at IOWIN gives 0xbeefbeef", read_reg(hi(17)).into(), 0xBEEF_BEEF);
    expect_str(c, "REP STOSW x2 ends with RDI = +0x14", r, 0, IOWIN + 4, 0);
    select(hi(17));
    let r = string_op!(s(0, IOWIN, 1, 0x0123_4567_89AB_CDEF), "rep stosq");
    c.expect_eq("REP STOSQ x1 of 0x0123456789abcdef at IOWIN stores 0x89abcdef", read_reg(hi(17)).into(), 0x89AB_CDEF);
    expect_str(c, "REP STOSQ x1 ends with RDI = +0x18", r, 0, IOWIN + 8, 0);

    // RAM to MMIO: +0x00 <- 0x3c (entry 22 low), +0x04..+0x0c ignored, IOWIN <- 0xf0c1 | bit 16,
    // whose bits 12 and 14 are read-only (0): 0x1a0c1.
    write_reg(lo(22), RESET_LO);
    select(VER);
    let src: [u32; 5] = [0x3C, 0xAAAA_AAAA, 0xBBBB_BBBB, 0xCCCC_CCCC, 0x0001_F0C1];
    let from = src.as_ptr() as u64;
    let r = string_op!(s(from, IOREGSEL, 5, 0), "rep movsd");
    c.expect_eq("REP MOVSD x5 RAM -> +0x0: selects 0x3c, then entry 22 low = 0x1a0c1", read_reg(lo(22)).into(), 0x0001_A0C1);
    expect_str(c, "REP MOVSD x5 RAM -> MMIO ends with RSI, RDI 20 bytes on, RCX = 0", r, from + 20, IOAPIC + 0x14, 0);

    // MMIO to RAM: IOREGSEL (0x3c), 0, 0, 0, IOWIN; the sixth word is not written.
    select(lo(22));
    let mut dst = [0xEEEE_EEEEu32; 6];
    let to = dst.as_mut_ptr() as u64;
    let r = string_op!(s(IOREGSEL, to, 5, 0), "rep movsd");
    expect_words(c, "REP MOVSD x5 +0x0 -> RAM copies 0x3c, 0, 0, 0, 0x1a0c1", &dst, &[0x3C, 0, 0, 0, 0x0001_A0C1, 0xEEEE_EEEE]);
    expect_str(c, "REP MOVSD x5 MMIO -> RAM ends with RSI, RDI 20 bytes on, RCX = 0", r, IOAPIC + 0x14, to + 20, 0);

    // MMIO to MMIO: IOWIN (entry 21 high = 0x39) -> IOREGSEL selects 0x39.
    write_reg(hi(21), 0x39);
    let r = string_op!(s(IOWIN, IOREGSEL, 0, 0), "movsd");
    c.expect_eq("MOVSD IOWIN -> IOREGSEL copies 0x39 into IOREGSEL", ld32(IOREGSEL).into(), 0x39);
    expect_str(c, "MOVSD MMIO -> MMIO ends with RSI = +0x14, RDI = +0x4", r, IOAPIC + 0x14, IOAPIC + 4, 0);

    // DF = 1, RAM to MMIO from IOWIN down: IOWIN (0x39 = entry 20 high) <- 0x76543210 first,
    // IOREGSEL <- 0x3f last.
    let src: [u32; 5] = [0x3F, 0xAAAA_AAAA, 0xBBBB_BBBB, 0xCCCC_CCCC, 0x7654_3210];
    let from = src.as_ptr() as u64;
    let r = string_op!(s(from + 16, IOWIN, 5, 0), "std", "rep movsd", "cld");
    c.expect_eq("REP MOVSD x5 (DF = 1) RAM -> IOWIN down to IOREGSEL selects 0x3f last", ld32(IOREGSEL).into(), 0x3F);
    c.expect_eq("REP MOVSD x5 (DF = 1) stored 0x76543210 into entry 20 high first", read_reg(hi(20)).into(), 0x7654_3210);
    expect_str(c, "REP MOVSD x5 (DF = 1) ends with RSI 4 below the source, RDI = 0xfebffffc", r, from - 4, IOAPIC - 4, 0);

    select(hi(23));
    let src = [0x11u8, 0x22, 0x33, 0x44];
    let from = src.as_ptr() as u64;
    let r = string_op!(s(from, IOWIN, 4, 0), "rep movsb");
    c.expect_eq("REP MOVSB x4 RAM -> IOWIN gives 0x44332211", read_reg(hi(23)).into(), 0x4433_2211);
    expect_str(c, "REP MOVSB x4 ends with RSI, RDI 4 bytes on", r, from + 4, IOWIN + 4, 0);
    let mut dst = [0xEEu8; 7];
    let to = dst.as_mut_ptr() as u64;
    let r = string_op!(s(IOAPIC + 0xE, to, 6, 0), "rep movsb");
    expect_bytes(c, "REP MOVSB x6 +0xe -> RAM copies 0, 0, 0x11, 0x22, 0x33, 0x44", &dst, &[0, 0, 0x11, 0x22, 0x33, 0x44, 0xEE]);
    expect_str(c, "REP MOVSB x6 ends with RSI = +0x14, RDI 6 bytes on", r, IOAPIC + 0x14, to + 6, 0);

    let r = string_op!(s(IOWIN, 0, 0, u64::MAX), "lodsd");
    c.expect_eq("LODSD at IOWIN loads 0x44332211 (zero-extended)", r.rax, 0x4433_2211);
    expect_str(c, "LODSD leaves RSI at +0x14", r, IOWIN + 4, 0, 0);
    let r = string_op!(s(IOAPIC + 0xC, 0, 2, 0), "rep lodsd");
    c.expect_eq("REP LODSD x2 from +0xc loads +0xc then IOWIN: 0x44332211", r.rax, 0x4433_2211);
    expect_str(c, "REP LODSD x2 ends with RSI = +0x14, RCX = 0", r, IOWIN + 4, 0, 0);
    let r = string_op!(s(IOWIN + 2, 0, 0, u64::MAX << 8), "lodsb");
    c.expect_eq("LODSB at IOWIN+2 loads 0x33 into AL only", r.rax, 0xFFFF_FFFF_FFFF_FF33);
    expect_str(c, "LODSB leaves RSI at +0x13", r, IOWIN + 3, 0, 0);
    let r = string_op!(s(IOWIN + 2, 0, 0, 0), "std", "lodsw", "cld");
    c.expect_eq("LODSW (DF = 1) at IOWIN+2 loads 0x4433", r.rax, 0x4433);
    expect_str(c, "LODSW (DF = 1) leaves RSI at IOWIN", r, IOWIN, 0, 0);
    let r = string_op!(s(IOWIN, 0, 0, u64::MAX), "lodsq");
    c.expect_eq("LODSQ at IOWIN loads 0x44332211 (+0x14..+0x17 read 0)", r.rax, 0x4433_2211);
    expect_str(c, "LODSQ leaves RSI at +0x18", r, IOWIN + 8, 0, 0);

    // hole: reads all ones, writes dropped.
    let mut dst = [0u32; 4];
    let to = dst.as_mut_ptr() as u64;
    let r = string_op!(s(FLOATING, to, 3, 0), "rep movsd");
    expect_words(c, "REP MOVSD x3 floating bus -> RAM copies all ones", &dst, &[u32::MAX, u32::MAX, u32::MAX, 0]);
    expect_str(c, "REP MOVSD x3 floating bus -> RAM ends with RSI, RDI 12 bytes on", r, FLOATING + 12, to + 12, 0);
    let r = string_op!(s(0, FLOATING, 3, 0), "rep stosd");
    c.expect_eq("REP STOSD x3 of 0 to the floating bus is dropped", ld64(FLOATING), u64::MAX);
    expect_str(c, "REP STOSD x3 to the floating bus ends with RDI 12 bytes on", r, 0, FLOATING + 12, 0);
}

/// hole: reads of every size give all ones, writes are dropped; also right next to the I/O
/// APIC page on both sides and at the start of the hole (each qword within one page).
fn floating_bus(c: &mut Checks) {
    let got = [u64::from(ld8(FLOATING)), u64::from(ld16(FLOATING)), u64::from(ld32(FLOATING)), ld64(FLOATING)];
    if got == [0xFF, 0xFFFF, 0xFFFF_FFFF, u64::MAX] {
        c.pass("the floating bus at 0xfed00000 reads all ones at 1, 2, 4 and 8 bytes");
    } else {
        c.fail("the floating bus at 0xfed00000 reads all ones", format_args!("got {got:x?}"));
    }
    for a in [0xC000_0000u64, IOAPIC - 8, IOAPIC + 0x1000, FLOATING + 0xFF8] {
        st8(a, 0);
        st16(a, 0);
        st32(a, 0);
        st64(a, 0);
        let got = ld64(a);
        c.expect_eq(format_args!("{a:#x} reads all ones after writes of 0 of each size"), got, u64::MAX);
    }
}
