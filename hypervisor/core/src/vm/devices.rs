//! The port-I/O devices a guest sees today: a minimal 16550 at 0x3F8 (output only; the full
//! UART with FIFOs and interrupts comes with the console multiplexer) and the test-exit port.
//! Pure state machines: the exit handler feeds them accesses, they return what the guest reads.

use alloc::string::String;

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// The test-exit port: a write of 0 means PASS, anything else FAIL with that code. Same port as
/// QEMU's `isa-debug-exit`, so a test guest behaves alike under Bastion and bare QEMU.
pub const TEST_EXIT_PORT: u16 = 0xf4;

/// Longest line kept before it is flushed without a newline.
pub const MAX_LINE: usize = 240;

// 16550 register offsets and bits (PC16550D datasheet).
const RBR_THR: u16 = 0;
const IER: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;
const LCR_DLAB: u8 = 0x80;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const IIR_NO_INTERRUPT: u8 = 0x01;
/// DCD, DSR and CTS asserted: "a terminal is connected and ready".
const MSR_CONNECTED: u8 = 0xb0;

/// A transmit-only 16550: every written byte is sent at once, so the transmitter is always
/// empty; nothing is ever received; no interrupts.
#[derive(Debug, Clone)]
pub struct MiniUart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    line: String,
}

impl Default for MiniUart {
    fn default() -> Self {
        // Divisor 1 (115200 baud), 8N1: what firmware leaves.
        MiniUart { ier: 0, lcr: 0x03, mcr: 0, scr: 0, dll: 1, dlm: 0, line: String::new() }
    }
}

impl MiniUart {
    /// A register read at `offset` (0..=7).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            RBR_THR if dlab => self.dll,
            RBR_THR => 0,
            IER if dlab => self.dlm,
            IER => self.ier,
            IIR_FCR => IIR_NO_INTERRUPT,
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_THRE | LSR_TEMT,
            MSR => MSR_CONNECTED,
            SCR => self.scr,
            _ => 0xff,
        }
    }

    /// A register write; returns a complete output line when one ends.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            RBR_THR if dlab => self.dll = value,
            RBR_THR => return self.put(value),
            IER if dlab => self.dlm = value,
            IER => self.ier = value & 0x0f,
            LCR => self.lcr = value,
            MCR => self.mcr = value & 0x1f,
            SCR => self.scr = value,
            _ => {} // FCR and the read-only LSR/MSR: nothing to keep.
        }
        None
    }

    fn put(&mut self, b: u8) -> Option<String> {
        match b {
            b'\n' => Some(core::mem::take(&mut self.line)),
            b'\r' => None,
            _ => {
                // Control characters would garble the host console: show them escaped.
                if b.is_ascii_graphic() || b == b' ' {
                    self.line.push(b as char);
                } else {
                    self.line.push_str(&alloc::format!("\\x{b:02x}"));
                }
                (self.line.len() >= MAX_LINE).then(|| core::mem::take(&mut self.line))
            }
        }
    }

    /// Output not yet ended by a newline (printed when the guest stops, so nothing is lost).
    pub fn take_partial(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_lines_and_lsr_says_ready() {
        let mut u = MiniUart::default();
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        let mut out = Vec::new();
        for b in b"hi\r\nthere\n" {
            out.extend(u.write(RBR_THR, *b));
        }
        assert_eq!(out, ["hi", "there"]);
        assert_eq!(u.take_partial(), None);
    }

    #[test]
    fn dlab_switches_data_and_ier_to_the_divisor() {
        let mut u = MiniUart::default();
        u.write(LCR, 0x83);
        assert_eq!(u.write(RBR_THR, 0x0c), None, "a divisor write is not output");
        u.write(IER, 0x00);
        assert_eq!((u.read(RBR_THR), u.read(IER)), (0x0c, 0));
        u.write(LCR, 0x03);
        u.write(IER, 0xff);
        assert_eq!(u.read(IER), 0x0f, "IER keeps its four defined bits");
        assert_eq!(u.read(RBR_THR), 0, "nothing received");
        assert_eq!(u.read(IIR_FCR), IIR_NO_INTERRUPT);
    }

    #[test]
    fn long_lines_are_split_and_control_bytes_escaped() {
        let mut u = MiniUart::default();
        let mut lines = Vec::new();
        for _ in 0..MAX_LINE + 5 {
            lines.extend(u.write(RBR_THR, b'x'));
        }
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        u.write(RBR_THR, 0x1b);
        assert_eq!(u.take_partial().as_deref(), Some("xxxxx\\x1b"));
        assert_eq!(u.read(SCR), 0);
        u.write(SCR, 0x5a);
        assert_eq!(u.read(SCR), 0x5a);
    }
}
