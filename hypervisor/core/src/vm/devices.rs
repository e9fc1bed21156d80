//! The port-I/O devices of a guest: its 16550 at COM1 (the full model lives in
//! `crate::devices::uart16550`), the 8259 pair, the 8254 PIT (ports 0x40-0x43 and 0x61,
//! counter 0 on IRQ 0) and the test-exit port. The exit handler reaches them through
//! the [`PortIo`] trait, so the kernel can wrap them in its own locking and console plumbing,
//! and tests can use them directly.

use crate::devices::pic8259::Pic;
use crate::devices::pit8254::Pit;
use crate::devices::uart16550::Uart16550;

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// The test-exit port: a write of 0 means PASS, anything else FAIL with that code. Same port as
/// QEMU's `isa-debug-exit`, so a test guest behaves alike under Bastion and bare QEMU.
pub const TEST_EXIT_PORT: u16 = 0xf4;

/// Lets the guest reach `count` ports from `base` directly in an I/O permission bitmap: one
/// bit per port, set = intercept. VMX's bitmaps A and B (SDM Vol. 3C 25.6.4) placed back to
/// back, and SVM's IOPM (APM Vol. 2 15.10.1), both have exactly this layout.
pub fn io_bitmap_allow(bitmap: &mut [u8], base: u16, count: u16) {
    for port in base..base.saturating_add(count) {
        if let Some(b) = bitmap.get_mut(port as usize / 8) {
            *b &= !(1 << (port % 8));
        }
    }
}

/// What a port write asks of the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    Done,
    /// The guest wrote to the test-exit port.
    TestExit(u32),
}

/// Port I/O as the exit handler sees it. Accesses are split into bytes by the caller only
/// where devices need it; `size` is 1, 2 or 4.
pub trait PortIo {
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome;
}

/// The UART's interrupt line on the PC: IRQ 4 of the master PIC.
pub const UART_IRQ: u8 = 4;
/// The PICs' command and data ports.
pub const PIC_PORTS: [u16; 4] = [0x20, 0x21, 0xa0, 0xa1];

/// The PIT's ports: counters 0-2 and the control word.
pub const PIT_PORTS: core::ops::RangeInclusive<u16> = 0x40..=0x43;
/// The PC's port B (system control port B): PIT counter 2 gate and output, speaker.
pub const PORT_B: u16 = 0x61;
/// PIT counter 0's output drives IRQ 0 (the PC's system timer).
pub const PIT_IRQ: u8 = 0;

/// The devices one guest owns.
#[derive(Debug, Clone)]
pub struct GuestDevices {
    pub uart: Uart16550,
    pub pic: Pic,
    pub pit: Pit,
    /// The guest's monotonic clock in ns (the kernel's TSC-based clock; 0 forever in tests
    /// that do not set one), for the devices that count time.
    pub clock: fn() -> u64,
}

fn no_clock() -> u64 {
    0
}

impl Default for GuestDevices {
    fn default() -> Self {
        GuestDevices { uart: Uart16550::default(), pic: Pic::default(), pit: Pit::new(), clock: no_clock }
    }
}

impl GuestDevices {
    /// Devices whose time comes from `clock`.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        GuestDevices { clock, ..GuestDevices::default() }
    }

    /// Copies device interrupt lines to the PIC inputs; called after anything that may change
    /// a line (a register access, host input).
    fn update_irqs(&mut self) {
        let line = self.uart.interrupt_line();
        self.pic.set_irq(UART_IRQ, line);
    }

    /// Brings time-driven devices up to `now`: each rising edge of PIT OUT0 since the last call
    /// becomes one edge on IRQ 0 (several missed periods fold into one interrupt, as a PC's
    /// edge-triggered 8259 would see them). Call before a vCPU that takes the PIC's output
    /// enters the guest, and when its timer deadline has passed.
    pub fn advance(&mut self, now: u64) {
        if self.pit.irq0_edges(now) > 0 {
            // Lower, then raise: the 8259 latches a rising edge (8259A datasheet, edge mode).
            self.pic.set_irq(PIT_IRQ, false);
            self.pic.set_irq(PIT_IRQ, true);
        }
    }

    /// When the next time-driven interrupt is due (PIT IRQ 0), if any: a vCPU halted with
    /// interrupts enabled may sleep until then.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.pit.next_irq0_deadline(now)
    }

    /// Host input for the guest's console; returns how many bytes the UART took.
    pub fn receive_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.uart.receive(bytes);
        self.update_irqs();
        n
    }

    fn read_byte(&mut self, p: u16) -> u8 {
        match p {
            COM1..=0x3ff => self.uart.read((p - COM1) as u8),
            _ if PIT_PORTS.contains(&p) => self.pit.read(p, (self.clock)()),
            PORT_B => self.pit.read_port_b((self.clock)()),
            _ if PIC_PORTS.contains(&p) => self.pic.read(p),
            // An unclaimed port floats high on a PC: reads give all ones.
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, p: u16, v: u8) {
        match p {
            COM1..=0x3ff => self.uart.write((p - COM1) as u8, v),
            _ if PIT_PORTS.contains(&p) => self.pit.write(p, v, (self.clock)()),
            PORT_B => self.pit.write_port_b(v, (self.clock)()),
            _ if PIC_PORTS.contains(&p) => self.pic.write(p, v),
            // Any other port: nothing is there; the write goes nowhere, as on a PC.
            _ => {}
        }
    }
}

impl PortIo for GuestDevices {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let mut value = 0u32;
        // A multi-byte access covers consecutive ports (SDM Vol. 1 19.3).
        for i in 0..size as u16 {
            value |= (self.read_byte(port.wrapping_add(i)) as u32) << (8 * i);
        }
        self.update_irqs();
        value
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome {
        if port == TEST_EXIT_PORT {
            return IoOutcome::TestExit(value);
        }
        for i in 0..size as u16 {
            self.write_byte(port.wrapping_add(i), (value >> (8 * i)) as u8);
        }
        self.update_irqs();
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_bytes_reach_the_output_and_lsr_reads_ready() {
        let mut d = GuestDevices::default();
        let mut out = Vec::new();
        for b in b"ok\n" {
            assert_eq!(d.io_write(COM1, 1, *b as u32), IoOutcome::Done);
            // The host drains after every write, as the kernel does: THR holds one byte.
            d.uart.drain_output(&mut out, usize::MAX);
        }
        assert_eq!(out, b"ok\n");
        assert_eq!(d.io_read(COM1 + 5, 1) & 0x60, 0x60);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_per_byte() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_read(0x80, 4), 0xffff_ffff);
        assert_eq!(d.io_read(0x64, 2), 0xffff);
        // A word read straddling COM1's last register and the next port.
        let v = d.io_read(COM1 + 7, 2);
        assert_eq!(v >> 8, 0xff);
    }

    #[test]
    fn passthrough_clears_exactly_the_uart_ports() {
        let mut bm = vec![0xffu8; 8192];
        io_bitmap_allow(&mut bm, 0x2f8, 8);
        for port in 0..=0xffffu32 {
            let intercepted = bm[port as usize / 8] & (1 << (port % 8)) != 0;
            assert_eq!(intercepted, !(0x2f8..0x300).contains(&port), "port {port:#x}");
        }
    }

    #[test]
    fn uart_receive_interrupt_reaches_the_pic_as_irq4() {
        let mut d = GuestDevices::default();
        // Linux's init_8259A: vector base 0x20 on the master, cascade, 8086 mode; unmask IRQ 4.
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            d.io_write(p, 1, v);
        }
        d.io_write(0x21, 1, 0xef);
        // UART: receive interrupts on, OUT2 gates the line to the PIC.
        d.io_write(COM1 + 1, 1, 0x01);
        d.io_write(COM1 + 4, 1, 0x0b);
        assert!(!d.pic.has_interrupt());
        assert_eq!(d.receive_input(b"x"), 1);
        assert!(d.pic.has_interrupt());
        assert_eq!(d.pic.acknowledge(), Some(0x24));
        assert_eq!(d.io_read(COM1, 1), b'x' as u32);
        d.io_write(0x20, 1, 0x20); // EOI
        assert!(!d.pic.has_interrupt(), "the line dropped when the byte was read");
        d.receive_input(b"y");
        assert_eq!(d.pic.acknowledge(), Some(0x24), "the next byte interrupts again");
    }

    /// A clock the PIT tests move by hand.
    static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn test_clock() -> u64 {
        NOW.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn pit_counter0_periodic_ticks_reach_the_pic_as_irq0_with_deadlines() {
        NOW.store(1_000_000, std::sync::atomic::Ordering::SeqCst);
        let mut d = GuestDevices::with_clock(test_clock);
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            d.io_write(p, 1, v);
        }
        d.io_write(0x21, 1, 0xfe); // only IRQ 0
        // Linux's PIT setup for HZ = 100: counter 0, LSB then MSB, mode 2 (control 0x34),
        // count 11932 = 1193182 / 100 (8254 datasheet, mode 2: rate generator).
        d.io_write(0x43, 1, 0x34);
        d.io_write(0x40, 1, 11932 & 0xff);
        d.io_write(0x40, 1, 11932 >> 8);
        let now = test_clock();
        let deadline = d.next_deadline(now).expect("a periodic timer has a next edge");
        // One period of 11932 ticks at 1.193182 MHz is 10 ms.
        let period = deadline - now;
        assert!((9_990_000..=10_010_000).contains(&period), "{period}");
        d.advance(deadline - 1);
        assert!(!d.pic.has_interrupt(), "no tick before the deadline");
        d.advance(deadline);
        assert!(d.pic.has_interrupt());
        assert_eq!(d.pic.acknowledge(), Some(0x20), "IRQ 0 at the master's base vector");
        d.io_write(0x20, 1, 0x20);
        // Three periods late: one interrupt for all of them, and the next deadline is ahead.
        d.advance(deadline + 3 * period + 5);
        assert_eq!(d.pic.acknowledge(), Some(0x20));
        d.io_write(0x20, 1, 0x20);
        assert!(d.next_deadline(deadline + 3 * period + 5).unwrap() > deadline + 3 * period + 5);
    }

    #[test]
    fn port_0x61_reaches_the_pit_gate_and_reads_back() {
        let mut d = GuestDevices::with_clock(test_clock);
        d.io_write(0x61, 1, 0x01);
        assert_eq!(d.io_read(0x61, 1) & 0x03, 0x01, "gate bit 0 reads back (system control port B)");
        assert_ne!(d.io_read(0x61, 1), 0xff, "port 0x61 is claimed");
    }

    #[test]
    fn test_exit_carries_the_code() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 0), IoOutcome::TestExit(0));
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 7), IoOutcome::TestExit(7));
    }
}
