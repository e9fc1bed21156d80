//! Test guest `worker`: counts fixed units of CPU work and prints its running total once a
//! second of TSC time, so a benchmark can measure each guest's progress by the guest's own
//! account (not by what the scheduler believes it gave it).
//!
//! Output: `worker: units <n>` every second (rate from Bastion's timing leaf 0x40000010), where
//! <n> is the total since start; a unit is 1000 xorshift64 steps. It never exits by itself.
//! vCPU 0 only.
#![no_std]
#![no_main]

use test_guests::cpu::{cpuid, rdtsc};
use test_guests::say;

test_guests::guest!(name = "worker", main = main);

fn main() -> u32 {
    let khz = u64::from(cpuid(0x4000_0010, 0).eax).max(1);
    let second = khz * 1000;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut units = 0u64;
    let mut last = rdtsc();
    loop {
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
        }
        core::hint::black_box(state);
        units += 1;
        let now = rdtsc();
        if now.wrapping_sub(last) >= second {
            say!("units {units}");
            last = now;
        }
    }
}
