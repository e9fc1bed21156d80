//! Test guest `flood`: prints [`LINES`] numbered lines as fast as its UART takes them, then
//! how often it found the transmitter busy, and exits with PASS.
//!
//! Output: `flood: line <n> ...` (64 characters a line, n = 1..=LINES), then
//! `flood: transmitter busy <k> times`. 2400 lines are about 154 KB: more than Bastion's 64 KiB
//! console ring plus what the line carries while the guest prints (at 1200 lines the margin
//! was thin enough that a few per cent more hypervisor work per exit hid the backpressure), so
//! on a line paced like hardware (115200 baud under Bochs) the guest outruns it and must meet
//! backpressure — LSR.THRE clear (PC16550D datasheet, LSR bit 5) — rather
//! than lose lines. vCPU 0 only.
#![no_std]
#![no_main]

use test_guests::say;
use test_guests::serial::transmitter_busy_count;

test_guests::guest!(name = "flood", main = main);

/// Lines printed.
const LINES: u32 = 2400;

fn main() -> u32 {
    for n in 1..=LINES {
        say!("line {n:>6} ................................................");
    }
    say!("transmitter busy {} times", transmitter_busy_count());
    0
}
