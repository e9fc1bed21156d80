//! Test guest `bench`: what a guest's work and its VM exits cost, measured by the guest with
//! its TSC, the same binary bare (`qemu-system-x86_64 -smp 2 -kernel bench.bin`) and under
//! Bastion (`format = "multiboot"`, 2 vCPUs, at least 32 MiB), for `cargo xtask bench cpu`.
//!
//! Loaded as a Multiboot kernel, vCPU 0 starts vCPU 1 with INIT-SIPI-SIPI (the `apic`
//! module); vCPU 1 then spins with interrupts enabled, answering IPIs. vCPU 0 measures, each
//! figure the least of [`ROUNDS`] rounds (the least is the run least disturbed by the host):
//!
//! - `bench: cpu intloop cycles=<n>`: 4 million rounds of a xorshift generator (registers only);
//! - `bench: cpu memwalk cycles=<n>`: 8 passes over 8 MiB at 8 MiB, a load and a store in each
//!   64-byte line, in an order that jumps 4 KiB and more between lines;
//! - `bench: cpu sieve cycles=<n>`: the sieve of Eratosthenes below 4 million in a byte array
//!   at 4 MiB (checked: 283146 primes);
//! - `bench: exit <kind> cycles=<n>`, per operation: `cpuid` (leaf 0), `pio` (IN from the
//!   8259's mask register, port 0x21), `hypercall` (Bastion's VERSION; bare, the instruction
//!   raises #UD and the figure is that exception's round trip), `self-ipi` (a fixed self IPI
//!   until its handler ran), `ipi` (a fixed IPI to vCPU 1 until its handler ran there).
//!
//! Then `bench: PASS`; exit code 0. A wrong sieve count or an IPI that never arrives (about
//! 5 s of TSC) prints a FAIL line and exits with 1.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use test_guests::apic::{self, ASSERT, FIXED, SELF};
use test_guests::cpu::{self, cpuid, rdtsc, Regs};
use test_guests::{interrupts, pic, say};

test_guests::guest!(name = "bench", main = main);

/// Rounds of each measurement; the least is reported.
const ROUNDS: u32 = 3;
/// The memory walk's buffer and the sieve's array: guest-physical RAM, identity-mapped, above
/// the image's stacks (which end at 1.25 MiB).
const WALK_AT: u64 = 8 << 20;
const WALK_BYTES: u64 = 8 << 20;
const SIEVE_AT: u64 = 4 << 20;
const SIEVE_LIMIT: usize = 4_000_000;
/// The number of primes below 4 million.
const PRIMES_BELOW_LIMIT: u32 = 283_146;
/// Operations per exit round.
const EXIT_OPS: u64 = 500;
const IPI_OPS: u64 = 200;
/// Bastion's hypercall VERSION (`bastion_core::vm::hypercall`).
const HC_VERSION: u64 = 0;

/// The vectors of the two IPIs measured.
const V_SELF: u8 = 0x21;
const V_OTHER: u8 = 0x22;
/// Interrupts taken with each vector (self on vCPU 0, other on vCPU 1).
static SELF_TAKEN: AtomicU32 = AtomicU32::new(0);
static OTHER_TAKEN: AtomicU32 = AtomicU32::new(0);
/// vCPU 1 sets it once it takes interrupts.
static READY: AtomicU32 = AtomicU32::new(0);

fn on_interrupt(vector: u8) {
    match vector {
        V_SELF => SELF_TAKEN.fetch_add(1, SeqCst),
        V_OTHER => OTHER_TAKEN.fetch_add(1, SeqCst),
        _ => 0,
    };
    apic::eoi();
}

/// The least TSC cycles `f` took over [`ROUNDS`] calls.
fn least(mut f: impl FnMut()) -> u64 {
    (0..ROUNDS)
        .map(|_| {
            let t = rdtsc();
            f();
            rdtsc().wrapping_sub(t)
        })
        .min()
        .unwrap_or(0)
}

fn intloop() -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..4_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    core::hint::black_box(x)
}

fn memwalk() {
    const LINES: u64 = WALK_BYTES / 64;
    for pass in 0..8u64 {
        // Line i is visited at step (i * 65 + pass) mod LINES: 65 lines = 4160 bytes apart,
        // a different page almost every step; 65 is odd and LINES a power of two, so every
        // line is visited once per pass.
        for i in 0..LINES {
            let line = (i * 65 + pass) & (LINES - 1);
            let p = (WALK_AT + line * 64) as *mut u64;
            // SAFETY: guest RAM at 8..16 MiB, identity-mapped, used by nothing else.
            unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
        }
    }
}

/// Touches every page of the two buffers and reloads CR3, 64 times. QEMU's TCG sizes its
/// software TLB when the guest flushes it (accel/tcg/cputlb.c grows a table that was busy
/// since the last flush): a bare kernel that never reloads CR3 keeps the smallest table (256
/// pages) and misses on every page of an 8 MiB walk, while under a hypervisor every world
/// switch flushes and the table grows. Warming up both runs the same way makes them compare
/// the work, not that policy. On hardware it costs a few page walks.
fn warm_tlb() {
    for _ in 0..64 {
        for page in (SIEVE_AT..WALK_AT + WALK_BYTES).step_by(4096) {
            // SAFETY: guest RAM at 4..16 MiB, identity-mapped, used by nothing else.
            unsafe { core::ptr::read_volatile(page as *const u8) };
        }
        // SAFETY: reloading CR3 with its own value only flushes the TLB.
        unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
    }
}

fn sieve() -> u32 {
    // SAFETY: guest RAM at 4..8 MiB, identity-mapped, used by nothing else.
    let a = unsafe { core::slice::from_raw_parts_mut(SIEVE_AT as *mut u8, SIEVE_LIMIT) };
    a.fill(1);
    a[0] = 0;
    a[1] = 0;
    let mut i = 2;
    while i * i < SIEVE_LIMIT {
        if a[i] != 0 {
            let mut j = i * i;
            while j < SIEVE_LIMIT {
                a[j] = 0;
                j += i;
            }
        }
        i += 1;
    }
    a.iter().map(|&b| u32::from(b)).sum()
}

/// Cycles per operation of `op`, the least over [`ROUNDS`] batches of `ops`.
fn per_op(ops: u64, mut op: impl FnMut()) -> u64 {
    least(|| (0..ops).for_each(|_| op())) / ops
}

/// Sends `vector` (to vCPU `to`, or to itself with `shorthand`) and waits until `taken` moves.
fn ipi_round_trip(to: u32, shorthand: u32, vector: u8, taken: &AtomicU32) -> bool {
    let before = taken.load(SeqCst);
    apic::send(to, FIXED | ASSERT | shorthand | u32::from(vector));
    cpu::wait_until(5, || taken.load(SeqCst) != before)
}

fn main(vcpu: u32) -> u32 {
    if !test_guests::boot::started_by_multiboot() {
        if vcpu == 0 {
            say!("FAIL not started by a Multiboot loader: load bench with format = \"multiboot\"");
            return 1;
        }
        cpu::park();
    }
    if vcpu != 0 {
        // vCPU 1: take IPIs until the guest ends.
        interrupts::load();
        apic::init(vcpu);
        READY.store(1, SeqCst);
        // SAFETY: the IDT handles every vector that can come; interrupts stay enabled.
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        loop {
            core::hint::spin_loop();
        }
    }
    // Mask both 8259s (bare, the BIOS left them programmed) before enabling interrupts.
    pic::set_masks(0xFF, 0xFF);
    interrupts::install(on_interrupt);
    apic::init(0);
    apic::start_application_processors(2);

    warm_tlb();
    say!("cpu intloop cycles={}", least(|| {
        intloop();
    }));
    say!("cpu memwalk cycles={}", least(memwalk));
    let mut primes = 0;
    say!("cpu sieve cycles={}", least(|| primes = sieve()));
    if primes != PRIMES_BELOW_LIMIT {
        say!("FAIL the sieve found {primes} primes below {SIEVE_LIMIT}, not {PRIMES_BELOW_LIMIT}");
        return 1;
    }

    say!("exit cpuid cycles={}", per_op(EXIT_OPS, || {
        core::hint::black_box(cpuid(0, 0));
    }));
    say!("exit pio cycles={}", per_op(EXIT_OPS, || {
        core::hint::black_box(cpu::inb(0x21));
    }));
    say!("exit hypercall cycles={}", per_op(EXIT_OPS, || {
        let mut r = Regs { rax: HC_VERSION, ..Regs::default() };
        // Under Bastion it returns; bare, #UD (no hypervisor), which is caught and resumed.
        let _ = cpu::hypercall(&mut r);
    }));
    // SAFETY: the IDT handles every vector that can come.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    let mut ok = true;
    say!("exit self-ipi cycles={}", per_op(IPI_OPS, || ok &= ipi_round_trip(0, SELF, V_SELF, &SELF_TAKEN)));
    cpu::wait_until(5, || READY.load(SeqCst) != 0);
    say!("exit ipi cycles={}", per_op(IPI_OPS, || ok &= READY.load(SeqCst) != 0 && ipi_round_trip(1, 0, V_OTHER, &OTHER_TAKEN)));
    if !ok {
        say!("FAIL an IPI never arrived (vcpu 1 ready: {})", READY.load(SeqCst));
        return 1;
    }
    say!("PASS");
    0
}
