//! The host console: COM1 (16550, driven by `uart_16550`) behind the `log` facade.
//!
//! Every byte also goes to port 0xE9 when Bochs's `port_e9_hack` is present: Bochs writes its
//! COM1 file through a buffer, so a test harness streaming the log needs the unbuffered copy
//! Bochs prints on its stdout. The hack is detected by reading 0xE9 back (it answers 0xE9;
//! QEMU and real hardware answer 0xFF for an unclaimed port).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::Uart16550;
use x86_64::instructions::port::Port;

pub const COM1: u16 = 0x3f8;

struct Console {
    uart: Option<Uart16550<PioBackend>>,
    /// The last byte sent ended a line. Raw echo (the monitor's prompt and typed text) leaves
    /// a line open; the next whole line printed starts on a fresh line instead of gluing on.
    at_line_start: bool,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None, at_line_start: true });
static E9: AtomicBool = AtomicBool::new(false);

/// Brings up COM1 (115200 8N1, FIFOs on) and detects the Bochs 0xE9 port.
pub fn init() {
    // SAFETY: port reads have no side effects on 0xE9 (unclaimed or Bochs's hack).
    let e9 = unsafe { Port::<u8>::new(bastion_core::exit::E9_PORT).read() } == 0xe9;
    E9.store(e9, Ordering::Relaxed);
    // SAFETY: COM1 is the standard PC serial port and Bastion owns it exclusively.
    let mut uart = match unsafe { Uart16550::new_port(COM1) } {
        Ok(u) => u,
        Err(_) => return,
    };
    // A machine without COM1 still boots (headless real hardware); logs then only reach 0xE9.
    if uart.init(uart_16550::Config::default()).is_ok() {
        CONSOLE.lock().uart = Some(uart);
    }
}

impl Console {
    fn put(&mut self, bytes: &[u8]) {
        let e9 = E9.load(Ordering::Relaxed);
        for &b in bytes {
            if b == b'\n' {
                self.raw(b'\r', e9);
            }
            self.raw(b, e9);
        }
    }

    fn raw(&mut self, b: u8, e9: bool) {
        self.at_line_start = b == b'\n';
        if let Some(u) = self.uart.as_mut() {
            u.send_bytes_exact(&[b]);
        }
        if e9 {
            // SAFETY: writing 0xE9 only prints on Bochs's console.
            unsafe { Port::<u8>::new(bastion_core::exit::E9_PORT).write(b) };
        }
    }

    /// Waits until the transmitter is completely empty (LSR bit 6, TEMT). Bochs sends on a
    /// baud timer and drops what is still in the FIFO when it shuts down.
    fn flush(&mut self) {
        if let Some(u) = self.uart.as_mut() {
            for _ in 0..10_000_000u32 {
                if u.lsr().contains(uart_16550::spec::registers::LSR::TRANSMITTER_EMPTY) {
                    break;
                }
                core::hint::spin_loop();
            }
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// Prints formatted text on the console, starting on a fresh line.
pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.lock();
        if !c.at_line_start {
            c.put(b"\n");
        }
        let _ = c.write_fmt(args);
    });
}

/// Prints on the crash path: if the console lock is held (the crash happened while printing,
/// or another CPU died holding it), wait a bounded time, then take it anyway. A garbled line
/// is better than a crash report that never appears.
pub fn print_emergency(args: fmt::Arguments) {
    for _ in 0..50_000_000u32 {
        if let Some(mut c) = CONSOLE.try_lock() {
            let _ = c.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: see above; the holder is not making progress.
    unsafe { CONSOLE.force_unlock() };
    let _ = CONSOLE.lock().write_fmt(args);
}

/// A byte typed on the console, if any.
pub fn try_read() -> Option<u8> {
    let mut c = CONSOLE.try_lock()?;
    c.uart.as_mut()?.try_receive_byte().ok()
}

/// Writes bytes as they are (no newline translation): echo of the monitor's line editor.
pub fn write_raw(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.lock();
        let e9 = E9.load(Ordering::Relaxed);
        for &b in bytes {
            c.raw(b, e9);
        }
    });
}

/// Waits for the UART to finish sending.
pub fn flush() {
    if let Some(mut c) = CONSOLE.try_lock() {
        c.flush();
    }
}

#[macro_export]
macro_rules! println {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
