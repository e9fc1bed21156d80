//! A minimal 8042 keyboard controller (ports 0x60 data, 0x64 status/command) with a keyboard
//! that answers but never types, and no mouse: enough for an OS to probe it, and to reset the
//! machine through it (`reboot=k` in Linux).
//!
//! Written by hand: no no_std crate models the controller. The behaviour follows the IBM PC AT
//! Technical Reference's "Keyboard Controller" (status bits, commands 0x20-0xFF) and the PS/2
//! keyboard's command set; where those leave room, it does what QEMU's `hw/input/pckbd.c` does
//! and what Linux's `drivers/input/serio/i8042.c` expects:
//!
//! - Commands complete at once: the input buffer is never full (status bit 1 reads 0), and
//!   replies queue in the output buffer (status bit 0 OBF; bit 5 when the byte is from the
//!   auxiliary port). Reading port 0x60 takes the oldest; reading it empty repeats the last.
//! - The controller command byte (0x20 read, 0x60 write): bit 0 keyboard interrupt (IRQ 1),
//!   bit 1 aux interrupt (IRQ 12), bit 2 system flag (mirrored in status bit 2), bit 4 keyboard
//!   disabled, bit 5 aux disabled. Reset value 0x45 with the system flag set (what a BIOS
//!   leaves after its self-test).
//! - **No auxiliary device**: 0xA8 (enable aux) leaves command byte bit 5 set, which is how
//!   Linux's `i8042_check_aux` tells that no mouse port exists (its "bit assignment test"),
//!   after a working 0xD3 loopback — so the probe ends at once instead of waiting for time-outs.
//! - **Reset**: command 0xFE (pulse output-port bit 0) and 0xD1 with bit 0 clear (write the
//!   output port with the reset line low) return [`IoOutcome::Reset`]; the run loop reboots the
//!   guest.
//! - The keyboard answers 0xFA (ACK) to every command (and to a command's parameter byte),
//!   0xFF reset with ACK + 0xAA (self-test passed), 0xF2 identify with ACK + 0xAB 0x83 (an MF2
//!   keyboard), 0xEE echo with 0xEE.

use super::bus::{BusDevice, IoOutcome};
use alloc::collections::VecDeque;

pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;
/// The keyboard's interrupt line (IRQ 1 on the master PIC).
pub const KEYBOARD_IRQ: u8 = 1;

const STATUS_OBF: u8 = 1; // bit 0
const STATUS_SYS: u8 = 1 << 2;
const STATUS_CMD: u8 = 1 << 3;
/// Keyboard not inhibited (the key lock is open).
const STATUS_UNLOCKED: u8 = 1 << 4;
const STATUS_AUX: u8 = 1 << 5;

const CCB_KBD_INT: u8 = 1; // bit 0
const CCB_SYS: u8 = 1 << 2;
const CCB_KBD_DISABLED: u8 = 1 << 4;
const CCB_AUX_DISABLED: u8 = 1 << 5;

/// Longest reply queue kept: a guest that never reads cannot grow it without bound.
const MAX_OUTPUT: usize = 16;

/// What the next byte written to port 0x60 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A byte for the keyboard.
    Keyboard,
    /// The parameter of keyboard command `0`: ACKed, otherwise ignored.
    KeyboardParam,
    CommandByte,
    OutputPort,
    /// 0xD2: echo as if the keyboard had sent it.
    KeyboardEcho,
    /// 0xD3: echo as if the aux port had sent it.
    AuxEcho,
    /// 0xD4: a byte for the (absent) aux device: dropped.
    AuxWrite,
}

#[derive(Debug, Clone)]
pub struct I8042 {
    ccb: u8,
    out: VecDeque<(u8, bool)>,
    last: u8,
    pending: Pending,
    /// The last port written was 0x64 (status bit 3).
    last_was_command: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 { ccb: 0x45 | CCB_AUX_DISABLED, out: VecDeque::new(), last: 0, pending: Pending::Keyboard, last_was_command: false }
    }
}

impl I8042 {
    fn reply(&mut self, byte: u8, aux: bool) {
        if self.out.len() < MAX_OUTPUT {
            self.out.push_back((byte, aux));
        }
    }

    pub fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if let Some(&(_, aux)) = self.out.front() {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX;
            }
        }
        if self.ccb & CCB_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.last_was_command {
            s |= STATUS_CMD;
        }
        s
    }

    pub fn read_data(&mut self) -> u8 {
        if let Some((b, _)) = self.out.pop_front() {
            self.last = b;
        }
        self.last
    }

    /// IRQ 1: a keyboard byte waits and the command byte enables its interrupt.
    pub fn interrupt_line(&self) -> bool {
        matches!(self.out.front(), Some(&(_, false))) && self.ccb & CCB_KBD_INT != 0
    }

    pub fn write_command(&mut self, cmd: u8) -> IoOutcome {
        self.last_was_command = true;
        self.pending = Pending::Keyboard;
        match cmd {
            0x20 => self.reply(self.ccb, false),
            0x60 => self.pending = Pending::CommandByte,
            0xa7 => self.ccb |= CCB_AUX_DISABLED,
            // Interface tests: 0 = no error.
            0xa9 | 0xab => self.reply(0x00, false),
            // Self-test passed; the system flag is set by it.
            0xaa => {
                self.ccb |= CCB_SYS;
                self.reply(0x55, false);
            }
            0xad => self.ccb |= CCB_KBD_DISABLED,
            0xae => self.ccb &= !CCB_KBD_DISABLED,
            // The output port: reset line high (bit 0), A20 enabled (bit 1).
            0xd0 => self.reply(0x03, false),
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KeyboardEcho,
            0xd3 => self.pending = Pending::AuxEcho,
            0xd4 => self.pending = Pending::AuxWrite,
            // Pulse output-port bits 3-0 low for 6 us; bit 0 is the CPU's reset line.
            0xf0..=0xff if cmd & 1 == 0 => return IoOutcome::Reset,
            // Among the commands that do nothing here: 0xA8, enable the aux port. There is
            // none, so "enabling" it leaves it disabled (see the module documentation).
            _ => {}
        }
        IoOutcome::Done
    }

    pub fn write_data(&mut self, value: u8) -> IoOutcome {
        self.last_was_command = false;
        let pending = core::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::CommandByte => self.ccb = value,
            Pending::OutputPort if value & 1 == 0 => return IoOutcome::Reset,
            Pending::OutputPort | Pending::AuxWrite => {}
            Pending::KeyboardEcho => self.reply(value, false),
            Pending::AuxEcho => self.reply(value, true),
            Pending::KeyboardParam => self.reply(0xfa, false),
            Pending::Keyboard => self.keyboard(value),
        }
        IoOutcome::Done
    }

    fn keyboard(&mut self, cmd: u8) {
        match cmd {
            0xee => self.reply(0xee, false),
            0xff => {
                self.reply(0xfa, false);
                self.reply(0xaa, false);
            }
            0xf2 => {
                self.reply(0xfa, false);
                self.reply(0xab, false);
                self.reply(0x83, false);
            }
            // Set LEDs, scan code set, typematic rate: a parameter byte follows.
            0xed | 0xf0 | 0xf3 => {
                self.reply(0xfa, false);
                self.pending = Pending::KeyboardParam;
            }
            _ => self.reply(0xfa, false),
        }
    }
}

/// Registered over two one-port ranges: offset 0 of the range at 0x60 is data, of the range at
/// 0x64 the command/status port; [`I8042Port`] says which.
#[derive(Debug)]
pub struct I8042Port {
    pub dev: alloc::sync::Arc<spin::Mutex<I8042>>,
    pub command: bool,
}

impl BusDevice for I8042Port {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let mut d = self.dev.lock();
        for b in data.iter_mut() {
            *b = if self.command { d.status() } else { d.read_data() };
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) -> IoOutcome {
        let mut d = self.dev.lock();
        let mut outcome = IoOutcome::Done;
        for &b in data {
            let o = if self.command { d.write_command(b) } else { d.write_data(b) };
            if o != IoOutcome::Done {
                outcome = o;
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads port 0x60 while status bit 0 (OBF) says a byte waits; the queue holds at most
    /// `MAX_OUTPUT`, so more reads than that mean the buffer never empties.
    fn read_all(k: &mut I8042) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::new();
        while k.status() & STATUS_OBF != 0 {
            assert!(v.len() < MAX_OUTPUT, "OBF stays set after {} reads", v.len());
            v.push(k.read_data());
        }
        v
    }

    /// Writes the controller command byte (command 0x60) and reads it back (command 0x20).
    fn command_byte_after(k: &mut I8042, cmds: &[u8]) -> u8 {
        for &c in cmds {
            k.write_command(c);
        }
        k.write_command(0x20);
        let v = read_all(k);
        assert_eq!(v.len(), 1, "{v:x?}");
        v[0]
    }

    #[test]
    fn status_and_command_byte_bits_are_the_at_technical_references() {
        // Status register (port 0x64 read): bit 0 output buffer full, bit 2 system flag, bit 3
        // last write was a command, bit 4 keyboard not inhibited, bit 5 aux data.
        let mut k = I8042::default();
        assert_eq!(k.status(), 0x14, "reset: not inhibited, system flag from command byte 0x45");
        assert_eq!(command_byte_after(&mut k, &[]), 0x65, "0x45 and bit 5: no aux port");
        k.write_command(0xaa);
        assert_eq!(k.status(), 0x1d, "a reply waits, the last write was a command");
        read_all(&mut k);
        k.write_command(0xd3);
        k.write_data(0x5a);
        assert_eq!(k.status(), 0x35, "aux loopback: bit 5 with bit 0; bit 3 clear after a data write");
        read_all(&mut k);
        k.write_command(0x60);
        k.write_data(0x00);
        assert_eq!(k.status(), 0x10, "command byte bit 2 clear: no system flag in status bit 2");
    }

    #[test]
    fn commands_that_disable_and_enable_the_ports_change_only_their_bit() {
        let mut k = I8042::default();
        k.write_command(0x60);
        k.write_data(0x01);
        assert_eq!(command_byte_after(&mut k, &[0xa7]), 0x21, "0xA7 disables aux: bit 5");
        assert_eq!(command_byte_after(&mut k, &[0xa8]), 0x21, "0xA8 cannot enable an absent aux port");
        assert_eq!(command_byte_after(&mut k, &[0xad]), 0x31, "0xAD disables the keyboard: bit 4");
        assert_eq!(command_byte_after(&mut k, &[0xae]), 0x21, "0xAE enables it again");
    }

    #[test]
    fn the_output_port_reads_reset_line_high_and_a20_on() {
        let mut k = I8042::default();
        k.write_command(0xd0);
        assert_eq!(read_all(&mut k), [0x03]);
    }

    #[test]
    fn d2_echoes_as_keyboard_data_and_d4_sends_to_the_absent_aux_device() {
        let mut k = I8042::default();
        // 0xD2: the byte comes back as if the keyboard sent it (bit 5 clear, IRQ 1).
        k.write_command(0xd2);
        k.write_data(0xff);
        assert_eq!(k.status() & 0x21, 0x01);
        assert!(k.interrupt_line());
        assert_eq!(read_all(&mut k), [0xff], "not the keyboard's reset reply");
        // 0xD4: for the aux device, which does not exist: no reply, and the keyboard never saw it.
        k.write_command(0xd4);
        k.write_data(0xff);
        assert_eq!(read_all(&mut k), []);
    }

    #[test]
    fn keyboard_commands_with_a_parameter_ack_the_parameter_without_running_it() {
        for cmd in [0xed, 0xf0, 0xf3] {
            let mut k = I8042::default();
            k.write_data(cmd);
            k.write_data(0xff); // as a command, 0xFF would reset and add 0xAA
            assert_eq!(read_all(&mut k), [0xfa, 0xfa], "{cmd:#x}");
            k.write_data(0xff);
            assert_eq!(read_all(&mut k), [0xfa, 0xaa], "{cmd:#x}: the next byte is a command again");
        }
    }

    #[test]
    fn self_tests_pass_and_set_the_system_flag() {
        let mut k = I8042::default();
        k.write_command(0x60);
        k.write_data(0x01); // system flag clear
        k.write_command(0xaa);
        assert_eq!(read_all(&mut k), [0x55], "controller self-test passed");
        assert_ne!(k.status() & STATUS_SYS, 0);
        assert_eq!(command_byte_after(&mut k, &[]), 0x05, "the self-test set command byte bit 2");
        k.write_command(0xab);
        assert_eq!(read_all(&mut k), [0x00], "keyboard interface test: no error");
    }

    #[test]
    fn the_command_byte_reads_back_what_was_written() {
        let mut k = I8042::default();
        k.write_command(0x60);
        k.write_data(0x61);
        k.write_command(0x20);
        assert_eq!(read_all(&mut k), [0x61]);
        assert_ne!(k.status() & STATUS_CMD, 0, "status bit 3: the last write went to port 0x64");
        k.write_data(0xee);
        assert_eq!(k.status() & STATUS_CMD, 0);
    }

    #[test]
    fn there_is_no_aux_port_by_linuxs_bit_assignment_test() {
        let mut k = I8042::default();
        // Loopback answers, flagged as aux data (status bit 5)...
        k.write_command(0xd3);
        k.write_data(0x5a);
        assert_eq!(k.status() & (STATUS_OBF | STATUS_AUX), STATUS_OBF | STATUS_AUX);
        assert_eq!(k.read_data(), 0x5a);
        // ...but enabling the port leaves command-byte bit 5 (aux disabled) set.
        k.write_command(0xa8);
        k.write_command(0x20);
        assert_ne!(read_all(&mut k)[0] & CCB_AUX_DISABLED, 0);
    }

    #[test]
    fn the_keyboard_acks_resets_and_identifies() {
        let mut k = I8042::default();
        k.write_data(0xff);
        assert_eq!(read_all(&mut k), [0xfa, 0xaa]);
        k.write_data(0xf2);
        assert_eq!(read_all(&mut k), [0xfa, 0xab, 0x83]);
        k.write_data(0xed); // set LEDs, then its parameter
        k.write_data(0x07);
        assert_eq!(read_all(&mut k), [0xfa, 0xfa]);
        k.write_data(0xee);
        assert_eq!(read_all(&mut k), [0xee]);
        assert_eq!(k.read_data(), 0xee, "reading an empty buffer repeats the last byte");
    }

    #[test]
    fn keyboard_bytes_raise_irq1_only_when_the_command_byte_enables_it() {
        let mut k = I8042::default();
        k.write_data(0xf4);
        assert!(k.interrupt_line(), "reset command byte 0x45 enables IRQ 1");
        k.read_data();
        assert!(!k.interrupt_line());
        k.write_command(0x60);
        k.write_data(0x44);
        k.write_data(0xf4);
        assert!(!k.interrupt_line());
    }

    #[test]
    fn pulsing_the_reset_line_or_writing_it_low_resets_the_machine() {
        let mut k = I8042::default();
        assert_eq!(k.write_command(0xfe), IoOutcome::Reset, "0xFE pulses output-port bit 0");
        assert_eq!(k.write_command(0xff), IoOutcome::Done, "0xFF pulses no line");
        k.write_command(0xd1);
        assert_eq!(k.write_data(0x03), IoOutcome::Done, "reset line high");
        k.write_command(0xd1);
        assert_eq!(k.write_data(0x02), IoOutcome::Reset, "reset line low");
    }

    #[test]
    fn the_reply_queue_is_bounded() {
        let mut k = I8042::default();
        for _ in 0..100 {
            k.write_data(0xf4);
        }
        assert_eq!(read_all(&mut k).len(), MAX_OUTPUT);
    }

    #[test]
    fn the_bus_reaches_data_and_command_ports() {
        let dev = alloc::sync::Arc::new(spin::Mutex::new(I8042::default()));
        let (mut data, mut cmd) = (I8042Port { dev: dev.clone(), command: false }, I8042Port { dev, command: true });
        assert_eq!(cmd.write(0, &[0xaa]), IoOutcome::Done);
        let mut b = [0u8];
        cmd.read(0, &mut b);
        assert_eq!(b[0] & STATUS_OBF, STATUS_OBF);
        data.read(0, &mut b);
        assert_eq!(b[0], 0x55);
        assert_eq!(cmd.write(0, &[0xfe]), IoOutcome::Reset);
    }
}
