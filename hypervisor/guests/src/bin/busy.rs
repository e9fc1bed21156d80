//! Test guest `busy`: every vCPU computes forever and prints `busy: vcpu <id> tick <k>` every
//! 250 ms of TSC time (the rate from Bastion's CPUID timing leaf; [`TICK_CYCLES`] when no
//! hypervisor says it); it never exits by itself.
//!
//! For scheduling tests: a guest that always wants its CPU (it never halts, pauses or does
//! I/O between ticks), whose progress per vCPU can be read off the console. The pace is set
//! by the TSC, not an iteration count, so it does not depend on how fast the (emulated) CPU
//! runs instructions: Bastion's guests see the host TSC, whose rate is the emulator's (in
//! Bochs, its IPS setting; under QEMU TCG it follows the host's own TSC).
//! Output, per vCPU, k = 1, 2, 3, ...: `busy: vcpu 0 tick 1`, `busy: vcpu 1 tick 1`, ...
#![no_std]
#![no_main]

use test_guests::cpu::{cpuid, rdtsc};
use test_guests::say;

test_guests::guest!(name = "busy", main = main);

/// TSC cycles between two lines of one vCPU when the hypervisor does not say its TSC rate:
/// 0.25 s of Bochs time at 200 MIPS (Bochs's TSC advances with its IPS setting). Under QEMU
/// TCG the TSC follows the host's, so this is about 20 ms there (bare QEMU 7.2 on a 2.4 GHz
/// host: ~50 lines/s per vCPU).
const TICK_CYCLES: u64 = 50_000_000;
/// Bastion's timing leaf (EAX = TSC kHz), as VMware and KVM define it.
const TSC_LEAF: u32 = 0x4000_0010;
/// Milliseconds between two lines when the TSC rate is known.
const TICK_MS: u64 = 250;

/// TSC cycles per tick: 250 ms from the hypervisor's timing leaf, else [`TICK_CYCLES`].
fn tick_cycles() -> u64 {
    let max = cpuid(0x4000_0000, 0).eax;
    let khz = if max >= TSC_LEAF { u64::from(cpuid(TSC_LEAF, 0).eax) } else { 0 };
    if khz == 0 {
        TICK_CYCLES
    } else {
        khz * TICK_MS
    }
}
/// Work steps between two TSC reads: enough that the RDTSC (and a VM exit, should a
/// hypervisor intercept it) is a small part of the loop, few enough that a tick is late by
/// a negligible amount.
const STEPS_PER_CHECK: u32 = 1000;

/// Runs on every vCPU, each on its own stack; nothing is shared but the console.
fn main(vcpu: u32) -> u32 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(vcpu);
    let mut last = rdtsc();
    let mut tick = 0u64;
    let tick_cycles = tick_cycles();
    loop {
        for _ in 0..STEPS_PER_CHECK {
            state = xorshift(state);
        }
        // The result must look used, or the optimizer would drop the work.
        core::hint::black_box(state);
        let now = rdtsc();
        if now.wrapping_sub(last) >= tick_cycles {
            tick += 1;
            say!("vcpu {vcpu} tick {tick}");
            last = now;
        }
    }
}

/// One step of Marsaglia's xorshift64: cheap, branch-free work.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
