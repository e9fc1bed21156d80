//! Test guest `printer`: prints numbered lines as fast as its UART takes them, forever — the
//! noisy neighbour of the console benchmarks.
//!
//! Output: `printer: line <n> ....` (60 characters a line). vCPU 0 only.
#![no_std]
#![no_main]

use test_guests::say;

test_guests::guest!(name = "printer", main = main);

fn main() -> u32 {
    let mut n = 0u64;
    loop {
        n += 1;
        say!("line {n:>10} ..........................................");
    }
}
