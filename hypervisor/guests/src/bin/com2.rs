//! Test guest `com2`: writes a line straight to the second PC serial port (0x2F8), which the
//! hypervisor passes through to it (`console = "passthrough"`), then exits.
//!
//! It also says on its own console (COM1, virtual) how many bytes it sent, so a test can
//! check both paths: the physical port gets the line, the multiplexed console gets the report.
#![no_std]
#![no_main]

use test_guests::cpu::{inb, outb};
use test_guests::say;

test_guests::guest!(name = "com2", main = main);

/// COM2 base port and its line status register (PC16550D: LSR at base + 5, bit 5 THRE).
const COM2: u16 = 0x2f8;
const LSR_THRE: u8 = 0x20;

fn main() -> u32 {
    // A physical UART starts in whatever state the firmware left (Bochs: 5-bit words), so set
    // 115200 8N1 like any driver: divisor 1 through the DLAB, then LCR = 8 data bits, no
    // parity, 1 stop bit (PC16550D LCR).
    outb(COM2 + 3, 0x80);
    outb(COM2, 1);
    outb(COM2 + 1, 0);
    outb(COM2 + 3, 0x03);
    let line = b"com2: hello from the passed-through port\n";
    for &b in line {
        // Bounded wait: a missing or stuck UART must not hang the guest forever.
        let mut spins = 0u32;
        while inb(COM2 + 5) & LSR_THRE == 0 && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        outb(COM2, b);
    }
    say!("sent {} bytes to COM2", line.len());
    0
}
