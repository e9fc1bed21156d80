//! Test guest `isolate-b`: the vCPU-isolation check ([`test_guests::isolation`]) with its own
//! patterns; run beside `isolate-a` on the same CPU.
#![no_std]
#![no_main]

test_guests::guest!(name = "isolate-b", main = main);

fn main() -> u32 {
    test_guests::isolation::run(0xB)
}
