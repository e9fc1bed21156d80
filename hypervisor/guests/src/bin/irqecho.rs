//! Test guest `irqecho`: the interrupt-driven twin of `echo`; it learns about input only
//! from the UART's interrupt (IRQ 4 through the 8259A PICs) while halted in `sti; hlt`.
//!
//! Output: `irqecho: ready (interrupt-driven)`, then per received byte `irqecho: got <c>`
//! (escaped as `echo` does: 0x21..=0x7E as themselves, anything else `\xNN`, two lowercase
//! hex digits); after `irqecho: got q` it prints
//! `irqecho: bye after <n> interrupts (<w> wake-ups, <m> other vectors)` and exits with 0.
//! <n> counts IRQ 4 interrupts (with or without data), <w> the returns from HLT, <m> every
//! other PIC vector (a spurious IRQ 7, say), which is counted and otherwise ignored. If the
//! ring buffer overflowed it prints `irqecho: FAIL ...` and exits with 1. vCPU 0 only (any
//! other vCPU parks at once, see `guest!`).
//!
//! How: vCPU 0 loads an IDT with gates for vectors 0x20..0x2F (`interrupts::install`),
//! programs the PICs as Linux's `init_8259A` does with only IRQ 4 unmasked, and the UART to
//! interrupt on received data; then it loops on `sti; hlt; cli`. The handler of vector 0x24
//! reads IIR, moves bytes from the UART into a ring buffer while LSR.DR is set, sends the
//! EOI and returns; after each wake-up the main loop empties the ring buffer, printing.
//! Nothing outside the handler ever reads LSR.DR or the receive buffer: if the hypervisor
//! does not deliver the interrupt, the guest stays halted and prints nothing more.
//! On bare QEMU (real PIC and UART, no hypervisor) it behaves the same way.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering::Relaxed};
use test_guests::cpu::{inb, outb};
use test_guests::interrupts::{self, IRQ_BASE};
use test_guests::serial::{COM1, FCR, IER, IIR, LCR, LSR, LSR_DR, MCR};
use test_guests::{pic, say};

test_guests::guest!(name = "irqecho", main = main);

/// The PC's COM1 interrupt line.
const UART_IRQ: u8 = 4;

// UART settings (PC16550D datasheet, "Registers").
/// LCR: 8 data bits, 1 stop bit, no parity (bits 1:0 = 11) and DLAB (bit 7) = 0, so that
/// port +1 is IER and port +0 the data registers, not the divisor latch. The divisor (baud
/// rate) is left as it is: the ABI's UART has no wire.
const LCR_8N1: u8 = 0x03;
/// FCR: FIFO enable (bit 0; the other bits are only written with it set), clear the receive
/// (bit 1) and transmit (bit 2) FIFOs, receive trigger level 1 byte (bits 7:6 = 00).
/// FIFOs rather than FCR = 0 (16450 mode, one receive byte): the main loop prints with
/// interrupts disabled, and bytes typed meanwhile (`ab` sent at once) wait in the 16-byte
/// receive FIFO; without it the second byte overruns the first (LSR.OE) on any UART that
/// does not hold input back. Trigger level 1: the "received data available" interrupt is
/// raised by the first byte, so nothing depends on the character-timeout interrupt that a
/// higher level needs for input shorter than the level. Clearing the receive FIFO also
/// drops stale input, so the IRQ line starts low and the first byte makes the rising edge
/// the edge-triggered PIC waits for.
const FCR_FIFO_TRIGGER_1: u8 = 0x07;
/// IER: only "received data available" (bit 0); no transmitter-empty interrupt, the console
/// code polls LSR.THRE to send.
const IER_RX_DATA: u8 = 0x01;
/// MCR: DTR (bit 0), RTS (bit 1) and OUT2 (bit 3). On a PC, OUT2 enables the buffer between
/// the UART's INTR pin and the IRQ line: without it no interrupt reaches the PIC.
const MCR_DTR_RTS_OUT2: u8 = 0x0B;

/// Bytes the handler has taken from the UART and the main loop has not printed yet.
/// A single producer (the handler) and a single consumer (the main loop) on one vCPU; the
/// consumer only runs with IF = 0, so the two never overlap and Relaxed atomics suffice.
const RING_SIZE: usize = 64;
#[allow(clippy::declare_interior_mutable_const)] // only to initialise the array below
const EMPTY: AtomicU8 = AtomicU8::new(0);
static RING: [AtomicU8; RING_SIZE] = [EMPTY; RING_SIZE];
/// Bytes ever written to / read from RING (free-running; index = count % RING_SIZE).
static RING_HEAD: AtomicUsize = AtomicUsize::new(0);
static RING_TAIL: AtomicUsize = AtomicUsize::new(0);
/// Bytes the handler had to drop because RING was full.
static DROPPED: AtomicU32 = AtomicU32::new(0);
/// IRQ 4 interrupts handled, with or without data.
static UART_IRQS: AtomicU32 = AtomicU32::new(0);
/// Interrupts on any other PIC vector (spurious ones included).
static OTHER_IRQS: AtomicU32 = AtomicU32::new(0);

fn push(byte: u8) {
    let head = RING_HEAD.load(Relaxed);
    if head - RING_TAIL.load(Relaxed) == RING_SIZE {
        DROPPED.fetch_add(1, Relaxed);
        return;
    }
    RING[head % RING_SIZE].store(byte, Relaxed);
    RING_HEAD.store(head + 1, Relaxed);
}

fn pop() -> Option<u8> {
    let tail = RING_TAIL.load(Relaxed);
    if tail == RING_HEAD.load(Relaxed) {
        return None;
    }
    let byte = RING[tail % RING_SIZE].load(Relaxed);
    RING_TAIL.store(tail + 1, Relaxed);
    Some(byte)
}

/// The handler of every PIC vector (`interrupts::install`), running with IF = 0.
fn on_interrupt(vector: u8) {
    let irq = vector - IRQ_BASE;
    if irq != UART_IRQ {
        // Masked lines do not interrupt, but a spurious IRQ 7 comes whatever the masks
        // (pic::end_of_interrupt: no EOI for it). Count, end, and otherwise ignore.
        OTHER_IRQS.fetch_add(1, Relaxed);
        pic::end_of_interrupt(irq);
        return;
    }
    UART_IRQS.fetch_add(1, Relaxed);
    // IIR says which UART interrupt is pending (received data, 0x4, with FIFO bits 7:6 set);
    // the only one enabled is received data, so the value only matters to a model that
    // counts the read. Reading RBR is what clears that interrupt.
    let _ = inb(IIR);
    // Take every byte there is. Emptying the receive FIFO lowers INTR, so the next byte
    // makes a new rising edge; a byte that arrives after the last LSR read but before the
    // EOI sets IRR 4 again, and the PIC delivers it after the EOI and IRETQ. The bound only
    // keeps a UART whose DR never clears from hanging the handler (the ring then overflows
    // and the main loop says so); an interrupt without data is fine and counted above.
    for _ in 0..RING_SIZE {
        if inb(LSR) & LSR_DR == 0 {
            break;
        }
        push(inb(COM1));
    }
    // Non-specific EOI, 0x20 to port 0x20: IRQ 4 is on the master, and it is the
    // highest-priority interrupt in service (8259A datasheet, "End of Interrupt").
    pic::eoi(UART_IRQ);
}

fn main() -> u32 {
    // Interrupts are disabled (the ABI starts with IF = 0, nothing has set it) until the
    // loop below, so the order here only has to be complete before the first STI.
    interrupts::install(on_interrupt);
    // Master at 0x20 (IRQ 0-7), slave at 0x28 (IRQ 8-15); masks: master 0xEF, only IRQ 4
    // open (the cascade, IRQ 2, stays closed: nothing on the slave is wanted), slave 0xFF.
    pic::init(IRQ_BASE, IRQ_BASE + 8, !(1 << UART_IRQ), 0xFF);
    outb(LCR, LCR_8N1);
    outb(FCR, FCR_FIFO_TRIGGER_1);
    outb(IER, IER_RX_DATA);
    outb(MCR, MCR_DTR_RTS_OUT2);
    say!("ready (interrupt-driven)");

    let mut wakeups = 0u32;
    loop {
        interrupts::halt_until_interrupt();
        wakeups += 1;
        // IF = 0 from here to the next STI: the handler cannot run while the ring drains.
        while let Some(byte) = pop() {
            if byte.is_ascii_graphic() {
                say!("got {}", byte as char);
            } else {
                say!("got \\x{byte:02x}");
            }
            if byte == b'q' {
                say!(
                    "bye after {} interrupts ({wakeups} wake-ups, {} other vectors)",
                    UART_IRQS.load(Relaxed),
                    OTHER_IRQS.load(Relaxed)
                );
                return 0;
            }
        }
        let dropped = DROPPED.load(Relaxed);
        if dropped != 0 {
            say!("FAIL the {RING_SIZE}-byte ring buffer overflowed: {dropped} bytes dropped");
            return 1;
        }
    }
}
