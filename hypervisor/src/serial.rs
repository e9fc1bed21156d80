//! The host console: COM1 (16550, driven by `uart_16550`) behind the `log` facade.
//!
//! Nothing here waits for the line: output goes into a 64 KiB ring and leaves through the
//! UART's 16-byte FIFO whenever [`pump`] finds it empty (after each VM exit and in every CPU's
//! loop; slices and idle waits are kept short while output is pending), and [`pump`] also
//! moves received bytes into a 4 KiB input ring, so a pasted page survives the time between
//! two polls. Only a full output ring (a flood faster than the line) makes a printer wait, and
//! guests never fill it: their output leaves their virtual UARTs only while [`output_room`]
//! says the ring has room.
//!
//! Every byte also goes to port 0xE9 when Bochs's `port_e9_hack` is present: Bochs writes its
//! COM1 file through a buffer, so a test harness streaming the log needs the unbuffered copy
//! Bochs prints on its stdout. The hack is detected by reading 0xE9 back (it answers 0xE9;
//! QEMU and real hardware answer 0xFF for an unclaimed port).

use bastion_core::ring::ByteRing;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Bytes printed and not yet handed to the UART.
    out: ByteRing<OUT_BYTES>,
    /// Bytes received and not yet read by [`try_read`].
    input: ByteRing<IN_BYTES>,
    /// What is being printed also goes to the screen console (everything but guests'
    /// console lines: [`print_guest`]).
    screen: bool,
}

const OUT_BYTES: usize = 64 * 1024;
const IN_BYTES: usize = bastion_core::serial_policy::INPUT_RING_BYTES;
/// The 16550's transmit FIFO (PC16550D datasheet, "FIFO Control Register").
const TX_FIFO: usize = 16;

static CONSOLE: Mutex<Console> =
    Mutex::new(Console { uart: None, at_line_start: true, out: ByteRing::new(), input: ByteRing::new(), screen: true });
static E9: AtomicBool = AtomicBool::new(false);
/// Output waits in the ring: CPUs pump often until it is empty.
static PENDING: AtomicBool = AtomicBool::new(false);
/// COM1's receive interrupt reaches CPU 0 (routed through the host's I/O APIC): input is read
/// when it arrives, and CPU 0 need not return to the console every tick for it.
static RX_IRQ: AtomicBool = AtomicBool::new(false);
/// The receive interrupt fired since the last poll.
static RX_PENDING: AtomicBool = AtomicBool::new(false);
/// Bytes lost because the input ring was full (a paste larger than 4 KiB arriving while no
/// CPU pumped).
static INPUT_OVERRUNS: AtomicU64 = AtomicU64::new(0);

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
    if uart.init(config(bastion_core::config::SerialBaud::DEFAULT)).is_ok() {
        CONSOLE.lock().uart = Some(uart);
    }
}

fn config(baud: bastion_core::config::SerialBaud) -> uart_16550::Config {
    let baud_rate = match baud.0 {
        115_200 => uart_16550::BaudRate::Baud115200,
        b => uart_16550::BaudRate::Custom(b),
    };
    // The receive interrupt when it is routed, at 8 bytes: half the FIFO left for the exit
    // and the poll that follows it (`bastion_core::serial_policy`).
    let interrupts = if RX_IRQ.load(Ordering::Relaxed) { uart_16550::spec::registers::IER::DATA_READY } else { uart_16550::spec::registers::IER::empty() };
    uart_16550::Config { baud_rate, interrupts, fifo_trigger_level: Some(uart_16550::spec::registers::FifoTriggerLevel::Eight), ..uart_16550::Config::DEFAULT }
}

/// Whether the emulator's debug console answers on port 0xE9 (it gets every byte too).
pub fn e9_present() -> bool {
    E9.load(Ordering::Relaxed)
}

/// Whether COM1 is there to take input from.
pub fn present() -> bool {
    x86_64::instructions::interrupts::without_interrupts(|| CONSOLE.lock().uart.is_some())
}

/// Turns on COM1's receive interrupt (its line is routed to CPU 0 by now): with the FIFO at
/// its 8-byte trigger level, and the character timeout for fewer (PC16550D, "FIFO Interrupt
/// Mode Operation").
pub fn enable_rx_interrupt() {
    RX_IRQ.store(true, Ordering::Relaxed);
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(u) = CONSOLE.lock().uart.as_mut() {
            u.enable_interrupts(uart_16550::spec::registers::IER::DATA_READY);
        }
    });
}

/// The receive interrupt's handler: the next `pump_if_due` polls. (Reading the FIFO here
/// would take the console lock inside an interrupt; the poll that follows the VM exit or
/// idle wake-up this interrupt causes does it.)
pub fn rx_interrupt() {
    RX_PENDING.store(true, Ordering::Relaxed);
}

/// Whether CPU 0 must come back to the console every `CONSOLE_TICK_NS` (rule:
/// `bastion_core::serial_policy::console_tick_needed`).
pub fn console_tick_needed() -> bool {
    bastion_core::serial_policy::console_tick_needed(RX_IRQ.load(Ordering::Relaxed), output_pending())
}

/// Sets COM1's line speed (`[hypervisor] serial_baud`), after what is queued has been sent at
/// the old speed.
pub fn set_baud(baud: bastion_core::config::SerialBaud) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.lock();
        c.drain_all();
        if let Some(u) = c.uart.as_mut() {
            let _ = u.init(config(baud));
        }
    });
}

impl Console {
    fn put(&mut self, bytes: &[u8]) {
        if self.screen {
            crate::fbcon::put(bytes);
        }
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
        if self.uart.is_some() {
            // A full ring is the only case where a printer waits: for the line to take a
            // FIFO's worth, so nothing is dropped.
            while !self.out.push(b) {
                self.pump_out();
                core::hint::spin_loop();
            }
        }
        if e9 {
            // SAFETY: writing 0xE9 only prints on Bochs's console.
            unsafe { Port::<u8>::new(bastion_core::exit::E9_PORT).write(b) };
        }
    }

    /// Hands the UART as much queued output as its empty FIFO takes (nothing if it is still
    /// sending), and takes what it received. Never waits.
    fn pump(&mut self) {
        self.pump_out();
        if let Some(u) = self.uart.as_mut() {
            while let Ok(b) = u.try_receive_byte() {
                if !self.input.push(b) {
                    INPUT_OVERRUNS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn pump_out(&mut self) {
        if let Some(u) = self.uart.as_mut() {
            let front = self.out.front();
            let n = u.send_bytes(&front[..front.len().min(TX_FIFO)]);
            self.out.consume(n);
        }
        PENDING.store(!self.out.is_empty(), Ordering::Relaxed);
    }

    /// Sends everything queued, waiting for the line.
    fn drain_all(&mut self) {
        while !self.out.is_empty() && self.uart.is_some() {
            self.pump_out();
            core::hint::spin_loop();
        }
    }

    /// Waits until the transmitter is completely empty (LSR bit 6, TEMT). Bochs sends on a
    /// baud timer and drops what is still in the FIFO when it shuts down.
    fn flush(&mut self) {
        self.drain_all();
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

impl Console {
    /// Writes formatted text, on the screen console too or not.
    fn write_to(&mut self, args: fmt::Arguments, screen: bool) {
        self.screen = screen;
        let _ = self.write_fmt(args);
        self.screen = true;
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
    print_line(args, true);
}

/// Prints a guest's console line ([`print`] without the screen console, which shows
/// Bastion's own output only).
pub fn print_guest(args: fmt::Arguments) {
    print_line(args, false);
}

fn print_line(args: fmt::Arguments, screen: bool) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.lock();
        if !c.at_line_start {
            c.put(b"\n");
        }
        c.write_to(args, screen);
        c.pump();
    });
}

/// The screen console's share of the crash path.
struct EmergencyScreen;

impl Write for EmergencyScreen {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::fbcon::put_emergency(s.as_bytes());
        Ok(())
    }
}

/// Moves console bytes between the rings and the UART without waiting. Cheap when there is
/// nothing to do; skipped if another CPU holds the console.
pub fn pump() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(mut c) = CONSOLE.try_lock() {
            c.pump();
        }
    });
}

/// When [`pump_if_due`] last polled for input.
static LAST_POLL_NS: AtomicU64 = AtomicU64::new(0);
/// [`pump`], but only when output waits or the last input poll is `POLL_NS` old (the rule and
/// its proof: `bastion_core::serial_policy`): cheap to call after every VM exit.
pub fn pump_if_due(now_ns: u64) {
    let rx = RX_PENDING.swap(false, Ordering::Relaxed);
    if rx || bastion_core::serial_policy::poll_due(now_ns, LAST_POLL_NS.load(Ordering::Relaxed), output_pending()) {
        LAST_POLL_NS.store(now_ns, Ordering::Relaxed);
        pump();
    }
    crate::fbcon::refresh(now_ns);
}

/// Output is waiting for the line: callers keep slices and idle waits short.
pub fn output_pending() -> bool {
    PENDING.load(Ordering::Relaxed)
}

/// How many more bytes the output ring takes before a printer would have to wait for the line.
/// Guest output is only moved out of a guest's virtual UART while there is room (see
/// `vmm::io`), so a guest that outruns the line finds its transmitter busy instead of making
/// a host CPU wait.
pub fn output_room() -> usize {
    x86_64::instructions::interrupts::without_interrupts(|| CONSOLE.try_lock().map_or(0, |c| if c.uart.is_some() { c.out.free() } else { OUT_BYTES }))
}

/// Input bytes dropped because the 4 KiB input ring was full.
pub fn input_overruns() -> u64 {
    INPUT_OVERRUNS.load(Ordering::Relaxed)
}

/// Prints on the crash path: if the console lock is held (the crash happened while printing,
/// or another CPU died holding it), wait a bounded time, then take it anyway. A garbled line
/// is better than a crash report that never appears.
pub fn print_emergency(args: fmt::Arguments) {
    let _ = EmergencyScreen.write_fmt(args);
    crate::fbcon::refresh_now();
    for _ in 0..50_000_000u32 {
        if let Some(mut c) = CONSOLE.try_lock() {
            c.write_to(args, false);
            c.drain_all();
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: see above; the holder is not making progress.
    unsafe { CONSOLE.force_unlock() };
    let mut c = CONSOLE.lock();
    c.write_to(args, false);
    c.drain_all();
}

/// A byte typed on the console, if any.
pub fn try_read() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.try_lock()?;
        c.pump();
        c.input.pop()
    })
}

/// Writes bytes as they are (no newline translation): echo of the monitor's line editor.
pub fn write_raw(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLE.lock();
        let e9 = E9.load(Ordering::Relaxed);
        crate::fbcon::put(bytes);
        for &b in bytes {
            c.raw(b, e9);
        }
        c.pump();
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
