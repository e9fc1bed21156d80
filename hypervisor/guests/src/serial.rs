//! Console output on the ABI's 16550 UART at port 0x3F8, and the [`say!`](crate::say) macro.

use crate::cpu::{inb, outb};
use core::fmt::{self, Write};

/// I/O base of the UART (COM1); the boot code uses the same value.
pub const COM1: u16 = 0x3F8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5, transmitter holding register empty: the UART takes another byte.
const LSR_THRE: u8 = 1 << 5;

/// Writes one byte once the UART can take it (the ABI's protocol: poll LSR.THRE, then OUT).
pub fn putc(byte: u8) {
    while inb(LSR) & LSR_THRE == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

/// The console as a [`fmt::Write`]. Lines end with "\n" only (the ABI).
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putc);
        Ok(())
    }
}

/// Prints `<guest>: <args>\n`.
pub fn say(args: fmt::Arguments) {
    let _ = writeln!(Console, "{}: {}", crate::boot::name(), args);
}

/// Prints one line prefixed with the guest's name: `say!("PASS {}", what)` prints
/// `checks: PASS ...`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::serial::say(format_args!($($arg)*))
    };
}
