//! Test guest `ipi`: an SMP kernel loaded the standard way. Booted as a Multiboot 1 kernel,
//! only vCPU 0 runs at first, as on a PC; it finds the other processors in the ACPI MADT,
//! starts them with INIT-SIPI-SIPI through its local APIC, and then every vCPU sends every
//! other one interrupts through the local APICs' interrupt command registers (SDM Vol. 3A
//! 11.6.1), each of which must arrive exactly once, on the right vCPU:
//!
//! - INIT with the all-excluding-self shorthand, then STARTUP with vector 0x0A twice to each
//!   application processor by physical destination (SDM Vol. 3A 9.4.4.1): each starts once,
//!   in real mode at 0A00:0000 (`sipi_entry` in boot.s); a STARTUP that finds its target
//!   running is ignored (SDM Vol. 3A 11.6.1, "Start-Up").
//! - In turn, each vCPU sends each other vCPU a fixed interrupt and an NMI by physical
//!   destination, then itself a fixed interrupt with the self shorthand, waiting for each to
//!   arrive before the next (two fixed interrupts of one vector pending at once are one IRR
//!   bit, and an NMI that comes while one is pending is lost: SDM Vol. 3A 11.8.4, 7.7).
//! - vCPU 0 sends a fixed interrupt to all the others in logical destination mode (flat
//!   model, SDM Vol. 3A 11.6.2.2: each vCPU's LDR has the bit of its index) and one to all
//!   vCPUs with the all-including-self shorthand.
//!
//! Output: `ipi: MADT lists <n> processors`, `ipi: vcpu <i> started in real mode with CS
//! 0a00` per AP, `ipi: <n-1> application processors started`, then per vCPU `ipi: vcpu
//! <i> took fixed <n-1> nmi <n-1> self 1 logical <0|1> all 1`, then `ipi: PASS`; exit code 0.
//! A count that differs, an interrupt that never comes (about 5 s of TSC), or a start as a
//! flat image (every vCPU at once) prints a FAIL line and exits with 1.
//!
//! It runs bare as well (`qemu-system-x86_64 -smp 4 -kernel ipi.bin`, with the isa-debug-exit
//! device at port 0xF4 for the test exit), which is why it masks the 8259s the BIOS left
//! programmed before it enables interrupts.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use test_guests::boot::{entry_state_of, started_by_multiboot, vcpu_id, MAX_VCPUS};
use test_guests::apic::{self, send, ALL_INCLUDING_SELF, ASSERT, FIXED, LOGICAL, NMI, SELF, SIPI_VECTOR};
use test_guests::{cpu, interrupts, pic, say};

test_guests::guest!(name = "ipi", main = main);


/// The kinds of interrupt counted, and the vector each arrives with (all in the IDT's
/// 0x20..0x2F, `interrupts::install`).
const KINDS: usize = 5;
const K_FIXED: usize = 0;
const K_SELF: usize = 1;
const K_LOGICAL: usize = 2;
const K_ALL: usize = 3;
const K_NMI: usize = 4;
const VECTOR: [u8; 4] = [0x21, 0x22, 0x23, 0x24];

/// Interrupts taken, per vCPU and kind.
static TAKEN: [[AtomicU32; KINDS]; MAX_VCPUS as usize] = [const { [const { AtomicU32::new(0) }; KINDS] }; MAX_VCPUS as usize];
/// How often each vCPU reached `main` (must be once).
static STARTED: [AtomicU32; MAX_VCPUS as usize] = [const { AtomicU32::new(0) }; MAX_VCPUS as usize];
/// Whose turn it is to send (vCPU index); the number of vCPUs once every one had its turn.
static TURN: AtomicU32 = AtomicU32::new(0);
/// The number of vCPUs, set by vCPU 0 from the MADT before it starts the others.
static VCPUS: AtomicU32 = AtomicU32::new(0);

fn on_interrupt(vector: u8) {
    if let (Some(kind), Some(t)) = (VECTOR.iter().position(|&v| v == vector), TAKEN.get(vcpu_id() as usize)) {
        t[kind].fetch_add(1, SeqCst);
    }
    apic::eoi();
}

fn on_nmi() {
    if let Some(t) = TAKEN.get(vcpu_id() as usize) {
        t[K_NMI].fetch_add(1, SeqCst);
    }
}

fn main(vcpu: u32) -> u32 {
    if !started_by_multiboot() {
        // Started as a flat image: every vCPU is here at once. One line, from vCPU 0.
        if vcpu == 0 {
            say!("FAIL not started by a Multiboot loader: load ipi with format = \"multiboot\"");
            return 1;
        }
        cpu::park();
    }
    if STARTED[vcpu as usize].fetch_add(1, SeqCst) != 0 {
        say!("FAIL vcpu {vcpu} started a second time");
        return 1;
    }
    if vcpu == 0 {
        if let Err(code) = start_application_processors() {
            return code;
        }
    } else {
        interrupts::load();
        apic::init(vcpu);
    }
    let n = VCPUS.load(SeqCst);
    // From here on every vCPU takes interrupts: waits spin with IF = 1.
    // SAFETY: the IDT is loaded and handles every vector that can come.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };

    // Every vCPU's turn: a fixed interrupt and an NMI to each other vCPU, one self IPI.
    if !cpu::wait_until(5, || TURN.load(SeqCst) == vcpu) {
        say!("FAIL vcpu {vcpu} never got its turn (turn {})", TURN.load(SeqCst));
        return 1;
    }
    for to in (0..n).filter(|&t| t != vcpu) {
        for (kind, low) in [(K_FIXED, FIXED | ASSERT | u32::from(VECTOR[K_FIXED])), (K_NMI, NMI | ASSERT)] {
            let before = TAKEN[to as usize][kind].load(SeqCst);
            send(to, low);
            if !cpu::wait_until(5, || TAKEN[to as usize][kind].load(SeqCst) != before) {
                let what = if kind == K_NMI { "NMI" } else { "fixed interrupt" };
                say!("FAIL vcpu {to} never took the {what} from vcpu {vcpu}");
                return 1;
            }
        }
    }
    send(0, FIXED | ASSERT | SELF | u32::from(VECTOR[K_SELF]));
    if !cpu::wait_until(5, || TAKEN[vcpu as usize][K_SELF].load(SeqCst) != 0) {
        say!("FAIL vcpu {vcpu} never took its self IPI");
        return 1;
    }
    TURN.fetch_add(1, SeqCst);
    if vcpu != 0 {
        loop {
            interrupts::halt_until_interrupt();
        }
    }

    if !cpu::wait_until(5, || TURN.load(SeqCst) == n) {
        say!("FAIL the vCPUs' turns did not end (turn {})", TURN.load(SeqCst));
        return 1;
    }
    // Logical destination: the bits of vCPUs 1..n-1.
    let others = ((1u32 << n) - 2) & 0xFF;
    send(others, FIXED | ASSERT | LOGICAL | u32::from(VECTOR[K_LOGICAL]));
    send(0, FIXED | ASSERT | ALL_INCLUDING_SELF | u32::from(VECTOR[K_ALL]));
    let arrived = |kind: usize, from: u32| (from..n).all(|v| TAKEN[v as usize][kind].load(SeqCst) != 0);
    if !cpu::wait_until(5, || arrived(K_LOGICAL, 1) && arrived(K_ALL, 0)) {
        say!("FAIL the logical and broadcast IPIs did not all arrive");
    }
    // Let a duplicate, if any, arrive before counting.
    cpu::wait_tsc(20_000_000);
    let mut ok = true;
    for v in 0..n {
        let t = |k: usize| TAKEN[v as usize][k].load(SeqCst);
        let (fixed, nmi, own, logical, all) = (t(K_FIXED), t(K_NMI), t(K_SELF), t(K_LOGICAL), t(K_ALL));
        say!("vcpu {v} took fixed {fixed} nmi {nmi} self {own} logical {logical} all {all}");
        ok &= (fixed, nmi, own, logical, all) == (n - 1, n - 1, 1, u32::from(v != 0), 1) && STARTED[v as usize].load(SeqCst) == 1;
    }
    if !ok {
        say!("FAIL each IPI must arrive exactly once, at its destination");
        return 1;
    }
    say!("PASS");
    0
}

/// vCPU 0: reads the MADT, takes interrupts, and starts every other processor it lists with
/// INIT-SIPI-SIPI (SDM Vol. 3A 9.4.4.1); returns once all of them reached `main`.
fn start_application_processors() -> Result<(), u32> {
    let Some((ids, n)) = apic::madt_apic_ids() else {
        say!("FAIL no ACPI MADT (RSDP searched in 0xE0000..0xFFFFF)");
        return Err(1);
    };
    say!("MADT lists {n} processors");
    // This guest numbers vCPUs by initial APIC ID (boot.s) and sends by APIC ID.
    // The flat logical model has 8 destination bits.
    if !(2..=8).contains(&n) || ids[..n].iter().enumerate().any(|(i, &id)| usize::from(id) != i) {
        say!("FAIL expected APIC IDs 0..n-1 for 2 to 8 processors, got {:?}", &ids[..n]);
        return Err(1);
    }
    let n = n as u32;
    VCPUS.store(n, SeqCst);
    // Mask both 8259s: on bare hardware the BIOS left them programmed (IRQ 0 at vector 8,
    // which here is #DF), and vCPU 0's LINT0 is in ExtINT mode.
    pic::set_masks(0xFF, 0xFF);
    interrupts::install(on_interrupt);
    interrupts::install_nmi(on_nmi);
    apic::init(0);

    apic::start_application_processors(n);
    if !cpu::wait_until(5, || (1..n).all(|v| STARTED[v as usize].load(SeqCst) != 0)) {
        let started = (1..n).filter(|&v| STARTED[v as usize].load(SeqCst) != 0).count();
        say!("FAIL only {started} of {} application processors started", n - 1);
        return Err(1);
    }
    for ap in 1..n {
        let st = entry_state_of(ap);
        say!("vcpu {ap} started in real mode with CS {:04x}", st.cs);
        if st.cs != (SIPI_VECTOR << 8) as u16 || st.cr0 & 1 != 0 {
            say!("FAIL vcpu {ap} must start in real mode with CS {:04x} (CR0 {:#x})", SIPI_VECTOR << 8, st.cr0);
            return Err(1);
        }
    }
    say!("{} application processors started", n - 1);
    Ok(())
}
