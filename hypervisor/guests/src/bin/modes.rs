//! Test guest `modes`: prints one line in real mode, protected mode and long mode.
//!
//! `trace_modes` has the shared boot code print `modes: real mode` from 16-bit code before
//! CR0.PE is set and `modes: protected mode` from 32-bit code before paging is on; this file
//! runs in 64-bit mode. It also checks the entry state the ABI promises (recorded by the
//! first real-mode instructions) and that EFER.LMA reads back set.
#![no_std]
#![no_main]

use test_guests::cpu::{self, EFER_LMA, IA32_EFER};
use test_guests::{boot, say};

test_guests::guest!(name = "modes", main = main, trace_modes = true);

fn main() -> u32 {
    let mut failed = false;
    let e = boot::entry_state();
    // The ABI's entry state: real mode (CR0.PE = CR0.PG = 0); CS = DS = ES = FS = GS = SS = 0;
    // SP = 0x7000; interrupts disabled (EFLAGS.IF, bit 9). Only PE and PG of CR0 are checked:
    // Bochs 2.7 shows a real-mode unrestricted guest CR0 = 0x60000010 (CD and NW set) although
    // the VMCS holds 0x30 (measured), and caching bits are not part of the ABI.
    let entry = [
        ("CR0.PE|PG", u64::from(e.cr0) & 0x8000_0001, 0),
        ("SP", e.sp.into(), boot::STACK_TOP),
        ("CS", e.cs.into(), 0),
        ("DS", e.ds.into(), 0),
        ("ES", e.es.into(), 0),
        ("FS", e.fs.into(), 0),
        ("GS", e.gs.into(), 0),
        ("SS", e.ss.into(), 0),
        ("EFLAGS.IF", u64::from(e.flags >> 9 & 1), 0),
    ];
    for (what, got, expected) in entry {
        if got != expected {
            say!("FAIL entry {what} (got {got:#x}, expected {expected:#x})");
            failed = true;
        }
    }

    // Running this code already proves 64-bit mode; EFER.LMA must say so too (the CPU sets
    // it when CR0.PG is set with EFER.LME = 1, SDM Vol. 3A 9.8.5).
    match cpu::try_rdmsr(IA32_EFER) {
        Ok(efer) if efer & EFER_LMA != 0 => say!("long mode"),
        Ok(efer) => {
            say!("FAIL long mode (EFER = {efer:#x}, LMA clear)");
            failed = true;
        }
        Err(fault) => {
            say!("FAIL long mode (RDMSR IA32_EFER raised {fault})");
            failed = true;
        }
    }
    u32::from(failed)
}
