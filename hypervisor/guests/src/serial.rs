//! Console output on the ABI's 16550 UART at port 0x3F8, and the [`say!`](crate::say) macro.
//!
//! Several vCPUs may print at once: every line is printed holding the line lock
//! ([`LineLock`], the same lock the boot code takes), so lines never interleave. Write
//! through [`say!`], or take a [`LineLock`] around the whole line when writing to
//! [`Console`] directly.

use crate::cpu::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

/// I/O base of the UART (COM1); the boot code uses the same value. With LCR.DLAB = 0,
/// reading it reads the receive buffer (RBR) and writing it writes the transmit holding
/// register (THR).
pub const COM1: u16 = 0x3F8;
/// The other registers (PC16550D datasheet, Table II "Register Summary"); the three below
/// LSR are for a guest that takes the UART's interrupt (`irqecho`), the others use only
/// RBR, THR and LSR as the ABI leaves them. Interrupt enable register (DLAB = 0).
pub const IER: u16 = COM1 + 1;
/// Interrupt identification register (read).
pub const IIR: u16 = COM1 + 2;
/// FIFO control register (write; same port as IIR).
pub const FCR: u16 = COM1 + 2;
/// Line control register (bit 7: DLAB, which turns ports +0 and +1 into the divisor latch).
pub const LCR: u16 = COM1 + 3;
/// Modem control register.
pub const MCR: u16 = COM1 + 4;
/// Line status register.
pub const LSR: u16 = COM1 + 5;
/// LSR bit 0, data ready: the receive buffer (read at [`COM1`]) holds a byte.
pub const LSR_DR: u8 = 1 << 0;
/// LSR bit 5, transmitter holding register empty: the UART takes another byte.
const LSR_THRE: u8 = 1 << 5;

extern "C" {
    /// The line lock, in `.data.boot` (boot.s): 0 = free, else the owner's vCPU index + 1.
    static boot_serial_lock: AtomicU32;
}

fn lock_word() -> &'static AtomicU32 {
    // SAFETY: a 4-byte aligned u32 in the image, only ever accessed atomically.
    unsafe { &boot_serial_lock }
}

/// Held while one vCPU prints one line; released when dropped.
///
/// If this vCPU holds the lock already (an exception or a panic while it was printing a
/// line), [`LineLock::take`] returns at once without taking it again, so the report of the
/// fault is printed rather than deadlocking; only the outer holder releases it.
#[must_use = "the lock is released when this is dropped"]
pub struct LineLock {
    taken: bool,
}

impl LineLock {
    /// Spins (with PAUSE) until the console is free, then takes it.
    pub fn take() -> LineLock {
        let me = crate::boot::vcpu_id() + 1;
        let lock = lock_word();
        loop {
            // Acquire: nothing of the line is printed before the lock is ours.
            match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return LineLock { taken: true },
                Err(owner) if owner == me => return LineLock { taken: false },
                Err(_) => {
                    while lock.load(Ordering::Relaxed) != 0 {
                        core::hint::spin_loop();
                    }
                }
            }
        }
    }
}

impl Drop for LineLock {
    fn drop(&mut self) {
        if self.taken {
            // Release: the line's bytes are out (an OUT completes before the next
            // instruction, SDM Vol. 1 "Ordering I/O") before the lock reads free.
            lock_word().store(0, Ordering::Release);
        }
    }
}

/// Writes one byte once the UART can take it (the ABI's protocol: poll LSR.THRE, then OUT).
/// Not locked: see [`LineLock`].
pub fn putc(byte: u8) {
    if inb(LSR) & LSR_THRE == 0 {
        BUSY.fetch_add(1, Ordering::Relaxed);
        while inb(LSR) & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
    }
    outb(COM1, byte);
}

/// How many times [`putc`] found the transmitter busy (LSR.THRE clear) and had to wait: the
/// backpressure a guest meets when it outruns the console's line.
static BUSY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn transmitter_busy_count() -> u64 {
    BUSY.load(Ordering::Relaxed)
}

/// The console as a [`fmt::Write`]. Lines end with "\n" only (the ABI). Not locked: see
/// [`LineLock`].
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putc);
        Ok(())
    }
}

/// Prints `<guest>: <args>\n` as one line, holding the line lock.
pub fn say(args: fmt::Arguments) {
    let _line = LineLock::take();
    let _ = writeln!(Console, "{}: {}", crate::boot::name(), args);
}

/// Prints one line prefixed with the guest's name: `say!("PASS {}", what)` prints
/// `checks: PASS ...`. Lines from several vCPUs never interleave.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::serial::say(format_args!($($arg)*))
    };
}
