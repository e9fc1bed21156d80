//! Test guest `echo`: reads the console's UART by polling and answers every byte it
//! receives with a line; `q` ends the test with PASS.
//!
//! Output: `echo: ready`, then per received byte `echo: got <c>`, where <c> is the character
//! if it is printable ASCII other than space (0x21..=0x7E), else `\xNN` (two lowercase hex
//! digits; a space is `\x20`, so no line ends in blank); after `echo: got q` it prints
//! `echo: bye` and exits with 0. vCPU 0 only (any other vCPU parks at once, see `guest!`).
//! The UART is used as the guest ABI leaves it (no initialisation): poll LSR.DR, then read
//! the receive buffer, which clears DR (the 16550's data-ready protocol).
#![no_std]
#![no_main]

use test_guests::cpu::inb;
use test_guests::say;
use test_guests::serial::{COM1, LSR, LSR_DR};

test_guests::guest!(name = "echo", main = main);

fn main() -> u32 {
    say!("ready");
    loop {
        while inb(LSR) & LSR_DR == 0 {
            core::hint::spin_loop(); // PAUSE: a polling loop, SDM Vol. 2B PAUSE
        }
        let byte = inb(COM1);
        if byte.is_ascii_graphic() {
            say!("got {}", byte as char);
        } else {
            say!("got \\x{byte:02x}");
        }
        if byte == b'q' {
            say!("bye");
            return 0;
        }
    }
}
