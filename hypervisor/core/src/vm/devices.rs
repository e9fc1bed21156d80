//! The port-I/O devices of a guest: its 16550 at COM1 (the full model lives in
//! `crate::devices::uart16550`) and the test-exit port. The exit handler reaches them through
//! the [`PortIo`] trait, so the kernel can wrap them in its own locking and console plumbing,
//! and tests can use them directly.

use crate::devices::pic8259::Pic;
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

/// The devices one guest owns.
#[derive(Debug, Clone, Default)]
pub struct GuestDevices {
    pub uart: Uart16550,
    pub pic: Pic,
}

impl GuestDevices {
    /// Copies device interrupt lines to the PIC inputs; called after anything that may change
    /// a line (a register access, host input).
    fn update_irqs(&mut self) {
        let line = self.uart.interrupt_line();
        self.pic.set_irq(UART_IRQ, line);
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
            _ if PIC_PORTS.contains(&p) => self.pic.read(p),
            // An unclaimed port floats high on a PC: reads give all ones.
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, p: u16, v: u8) {
        match p {
            COM1..=0x3ff => self.uart.write((p - COM1) as u8, v),
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
        for b in b"ok\n" {
            assert_eq!(d.io_write(COM1, 1, *b as u32), IoOutcome::Done);
        }
        assert_eq!(d.uart.take_output(), b"ok\n");
        assert_eq!(d.io_read(COM1 + 5, 1) & 0x60, 0x60);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_per_byte() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_read(0x80, 4), 0xffff_ffff);
        assert_eq!(d.io_read(0x60, 2), 0xffff);
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

    #[test]
    fn test_exit_carries_the_code() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 0), IoOutcome::TestExit(0));
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 7), IoOutcome::TestExit(7));
    }
}
