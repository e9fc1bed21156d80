//! Test guest `isolate-a`: the vCPU-isolation check ([`test_guests::isolation`]) with its own
//! patterns; run beside `isolate-b` on the same CPU.
#![no_std]
#![no_main]

test_guests::guest!(name = "isolate-a", main = main);

fn main() -> u32 {
    test_guests::isolation::run(0xA)
}
