//! PC16550D (16550A) UART model: the COM1 every guest sees at ports 0x3F8-0x3FF, as a pure state machine.
//!
//! The exit handler turns each guest `IN`/`OUT` on the eight ports into [`Uart16550::read`] /
//! [`Uart16550::write`] with the offset from the base port; the console side feeds typed bytes
//! with [`Uart16550::receive`] (checking [`Uart16550::rx_space`] first so it can hold input back
//! instead of losing it) and takes what the guest sent out of the transmitter with
//! [`Uart16550::drain_output`] at the pace of its own serial line (or all of it with
//! [`Uart16550::take_output`]). After every call, draining included, the hypervisor samples
//! [`Uart16550::interrupt_line`] and drives the guest's IRQ 4 input with it. Nothing here
//! touches hardware or keeps time, so all of it is tested on the host.
//!
//! Register rules follow the National Semiconductor PC16550D datasheet ("PC16550D Universal
//! Asynchronous Receiver/Transmitter with FIFOs", June 1995; section 8 "Registers" and Table II
//! "Summary of Accessible Registers", Table III "UART Reset Configuration", Table IV "Interrupt
//! Control Functions"). Where the datasheet leaves room, the model does what QEMU's
//! `hw/char/serial.c` does, because that is what Linux's 8250 driver and other guests are known
//! to work with.
//!
//! # The transmitter: a FIFO the host drains
//!
//! A virtual UART has no baud clock: the divisor latch and LCR framing are stored and read back
//! but change nothing. The wire is the host's serial line, which is slower than a guest can
//! write, so the transmitter buffers as the chip does and the host applies the backpressure:
//!
//! * A THR write puts the byte in the TX FIFO, 16 bytes deep in FIFO mode (FCR bit 0: "In the
//!   FIFO mode transmitter and receiver are each buffered with 16 byte FIFO's", datasheet
//!   features list; section 8.11: "1 to 16 characters may be written to the XMIT FIFO" per THRE
//!   interrupt) and a single byte, the Transmitter Holding Register, in non-FIFO (16450) mode
//!   (section 8.4, LSR bit 5).
//! * The host moves bytes out, oldest first, with [`Uart16550::drain_output`] (at most `max` at
//!   a time, as many as its line has room for) or all of them with [`Uart16550::take_output`];
//!   [`Uart16550::tx_pending`] says how many wait.
//! * LSR.THRE (bit 5) is set exactly while the FIFO (non-FIFO mode: THR) is empty; LSR.TEMT
//!   (bit 6) while the FIFO *and* the transmitter shift register are (section 8.4; section
//!   8.12 for the FIFO polled mode). The shift register is not modelled: a byte goes from the
//!   FIFO to the host in one step, so the shift register counts as empty whenever the FIFO is,
//!   and TEMT always equals THRE.
//! * A THR write while the FIFO is full (16 bytes; non-FIFO mode: 1) loses the written byte,
//!   and [`Uart16550::tx_overruns`] counts it. The chip has no room for it and no status bit
//!   reports it (LSR.OE is the receiver's), so a correct driver never does this: it writes only
//!   after THRE, at most 16 bytes at a time. The bytes already queued are kept, in order.
//! * FCR bit 2 empties the TX FIFO, dropping its bytes, and so does any change of FCR bit 0
//!   (section 8.5); bytes already drained are gone to the host and not affected.
//!
//! A host that drains everything after every guest port write gets the ideal transmitter of
//! earlier versions of this model: THRE and TEMT are set whenever the guest looks, and the
//! THRE interrupt follows every THR write (raised by the drain; see below).
//!
//! # How interrupts leave the device
//!
//! The model never calls out. Every interrupt source is either a level derived from the state
//! (RX data, line status, modem status deltas) or one latched flag (THRE, below), and
//! [`Uart16550::interrupt_line`] reports the level of the chip's INTR output as gated on a PC:
//! the IBM PC routes INTR to the PIC through a buffer enabled by MCR.OUT2, so the line is high
//! only while some enabled source is pending *and* OUT2 is set (Linux's 8250 driver sets OUT2;
//! a guest that never sets it can still poll IIR). In loopback mode the datasheet forces the
//! modem-control outputs, OUT2 among them, to their inactive state, so the line stays low
//! while IIR keeps reporting interrupts internally (QEMU, which ignores OUT2, would raise it).
//!
//! # Interrupt rules chosen
//!
//! * **THRE** (QEMU's `thr_ipending`): a latched flag, only ever set while IER.ETBEI is set
//!   and the TX FIFO is empty (section 8.11: the interrupt "occurs when the XMIT FIFO is
//!   empty"). It is raised when a drain by the host empties the FIFO (a drain that moves
//!   nothing raises nothing), when ETBEI goes 0->1 with the FIFO empty (enabling it while bytes
//!   are queued raises nothing until the drain that empties the FIFO), when the TX FIFO is
//!   reset (FCR bit 2, or FCR bit 0 changing: "The first transmitter interrupt after changing
//!   FCR0 will be immediate, if it is enabled", section 8.11), and after a THR write in
//!   loopback mode (the byte leaves at once). It is cleared by writing THR and by an IIR read
//!   that reports THRE as the highest-priority source (Table IV), and by clearing ETBEI.
//!   Linux's start-up probe (enable ETBEI, read IIR, disable, enable, read IIR again) therefore
//!   sees a THRE interrupt both times, and its interrupt handler, which writes up to 16 bytes
//!   per THRE interrupt and clears ETBEI when it has nothing left, terminates.
//! * **Character timeout**: without a timer, the "no FIFO activity for four character times"
//!   condition is taken as already met. In FIFO mode, whenever the RX FIFO holds data but fewer
//!   bytes than the trigger level, IIR reports the timeout (0x0C) at once. This is what makes a
//!   guest see a single typed character although its trigger level is 8 or 14. Reading RBR
//!   leaves the indication pending for as long as data below the trigger level remains.
//! * **Received data available** (0x04): the RX FIFO holds at least the trigger level
//!   (non-FIFO mode: the holding register is full). It falls when reads bring it below.
//! * **Receiver line status** (0x06): LSR has OE (or PE/FE/BI, which this model never produces)
//!   set; reading LSR clears the bits and the interrupt.
//! * **Modem status** (0x00): any MSR delta bit set; reading MSR clears them.
//!
//! # Deviations from a physical 16550
//!
//! * Host input that does not fit is *not accepted* (returned to the caller by the count of
//!   [`Uart16550::receive`]) and sets OE once per call, instead of overwriting the holding
//!   register in non-FIFO mode: the data the guest has not read yet is never destroyed.
//! * In loopback mode the serial input is disconnected from the receiver (as on the chip), so
//!   `rx_space` is 0 and `receive` accepts nothing, without flagging an overrun.
//! * In loopback mode a THR write goes straight to the receiver ("data that is transmitted is
//!   immediately received", section 8.8) and never enters the TX FIFO. Bytes queued before
//!   loopback was entered stay in the TX FIFO for the host (on the chip they would be shifted
//!   into the receiver, the serial output being held marking).
//! * A THR write to a full transmitter loses the written byte. The datasheet does not say
//!   what a write to a full XMIT FIFO does; QEMU drops the oldest byte there, and in non-FIFO
//!   mode QEMU and other 16550-compatible cores overwrite the holding register, also losing
//!   the older byte. One byte is lost either way; this way the host gets the earlier ones
//!   intact, in the order the guest wrote them.
//! * Reading RBR with nothing received returns 0.
//! * The divisor latch is undefined at power-on on the chip (Table III); the model starts at 1
//!   (115200 baud with the PC's 1.8432 MHz clock), what PC firmware leaves.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

// Register offsets from the base port (Table II). Offsets 0 and 1 depend on LCR.DLAB.

/// Offset 0, read, DLAB=0: Receiver Buffer Register (pops the RX FIFO).
pub const RBR: u8 = 0;
/// Offset 0, write, DLAB=0: Transmitter Holding Register.
pub const THR: u8 = 0;
/// Offset 0, DLAB=1: Divisor Latch, least significant byte.
pub const DLL: u8 = 0;
/// Offset 1, DLAB=0: Interrupt Enable Register (bits 0-3; bits 4-7 always read 0).
pub const IER: u8 = 1;
/// Offset 1, DLAB=1: Divisor Latch, most significant byte.
pub const DLM: u8 = 1;
/// Offset 2, read: Interrupt Identification Register (independent of DLAB).
pub const IIR: u8 = 2;
/// Offset 2, write: FIFO Control Register (write-only; independent of DLAB).
pub const FCR: u8 = 2;
/// Offset 3: Line Control Register (read/write; bit 7 is DLAB).
pub const LCR: u8 = 3;
/// Offset 4: Modem Control Register (bits 0-4; bits 5-7 always read 0).
pub const MCR: u8 = 4;
/// Offset 5: Line Status Register (writes are for factory test only: ignored).
pub const LSR: u8 = 5;
/// Offset 6: Modem Status Register (writes ignored; reading clears the delta bits).
pub const MSR: u8 = 6;
/// Offset 7: Scratchpad Register, eight bits the CPU can use freely.
pub const SCR: u8 = 7;

/// Value read from an offset outside 0..=7 (nothing decodes it: the bus floats high).
pub const UNMAPPED: u8 = 0xff;

// IER bits.

/// IER bit 0, ERBFI: received data available (and, in FIFO mode, character timeout).
pub const IER_ERBFI: u8 = 0x01;
/// IER bit 1, ETBEI: transmitter holding register empty.
pub const IER_ETBEI: u8 = 0x02;
/// IER bit 2, ELSI: receiver line status.
pub const IER_ELSI: u8 = 0x04;
/// IER bit 3, EDSSI: modem status.
pub const IER_EDSSI: u8 = 0x08;
/// IER bits that exist; the datasheet says bits 4-7 are always 0.
const IER_MASK: u8 = 0x0f;

// IIR values (Table IV, "Interrupt Control Functions"). Bits 3:0 identify the source.

/// IIR bit 0 set: no interrupt pending.
pub const IIR_NONE: u8 = 0x01;
/// Priority 1: receiver line status (OE, PE, FE or BI). Cleared by reading LSR.
pub const IIR_RLS: u8 = 0x06;
/// Priority 2: received data available (trigger level reached). Cleared when RBR reads bring
/// the FIFO below the trigger level.
pub const IIR_RDA: u8 = 0x04;
/// Priority 2: character timeout (FIFO mode only). Cleared by reading RBR.
pub const IIR_CTI: u8 = 0x0c;
/// Priority 3: transmitter holding register empty. Cleared by reading IIR (when it is the
/// source reported) or writing THR.
pub const IIR_THRI: u8 = 0x02;
/// Priority 4: modem status. Cleared by reading MSR.
pub const IIR_MSI: u8 = 0x00;
/// IIR bits 7:6: both set when FCR bit 0 has enabled the FIFOs.
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

// FCR bits.

/// FCR bit 0: enable both FIFOs. Changing it clears them; the other FCR bits are only
/// programmed in a write that has this bit set ("FCR0 must be 1 when other FCR bits are written
/// to or they will not be programmed").
pub const FCR_FIFO_ENABLE: u8 = 0x01;
/// FCR bit 1: clear the RX FIFO (self-clearing; the shift register and LSR errors stay).
pub const FCR_CLEAR_RX: u8 = 0x02;
/// FCR bit 2: clear the TX FIFO, dropping the bytes the host has not drained (self-clearing).
pub const FCR_CLEAR_TX: u8 = 0x04;
/// FCR bit 3: DMA mode select (RXRDY/TXRDY pin behaviour; no pins here, kept for completeness).
pub const FCR_DMA_MODE: u8 = 0x08;
/// FCR bits 7:6: RX trigger level, 00 = 1, 01 = 4, 10 = 8, 11 = 14 bytes.
pub const FCR_TRIGGER_MASK: u8 = 0xc0;
/// The FCR bits kept as programmed: FIFO enable, DMA mode, trigger (bits 0, 3, 7:6; a test
/// checks the number against the bits).
const FCR_KEPT: u8 = 0xc9;

// LCR bits.

/// LCR bit 7, DLAB: offsets 0 and 1 address the divisor latch.
pub const LCR_DLAB: u8 = 0x80;

// MCR bits.

/// MCR bit 0: DTR output (loopback: drives DSR).
pub const MCR_DTR: u8 = 0x01;
/// MCR bit 1: RTS output (loopback: drives CTS).
pub const MCR_RTS: u8 = 0x02;
/// MCR bit 2: OUT1 output (loopback: drives RI).
pub const MCR_OUT1: u8 = 0x04;
/// MCR bit 3: OUT2 output (loopback: drives DCD). On a PC it enables the IRQ line to the PIC.
pub const MCR_OUT2: u8 = 0x08;
/// MCR bit 4: loopback mode.
pub const MCR_LOOP: u8 = 0x10;
/// MCR bits that exist; the datasheet says bits 5-7 are always 0.
const MCR_MASK: u8 = 0x1f;

// LSR bits.

/// LSR bit 0, DR: at least one byte is waiting in RBR / the RX FIFO.
pub const LSR_DR: u8 = 0x01;
/// LSR bit 1, OE: a byte arrived with no room for it. Cleared by reading LSR.
pub const LSR_OE: u8 = 0x02;
/// LSR bit 2, PE: parity error (never produced: host bytes have no parity).
pub const LSR_PE: u8 = 0x04;
/// LSR bit 3, FE: framing error (never produced).
pub const LSR_FE: u8 = 0x08;
/// LSR bit 4, BI: break interrupt (never produced).
pub const LSR_BI: u8 = 0x10;
/// LSR bit 5, THRE: THR (FIFO mode: the TX FIFO) is empty.
pub const LSR_THRE: u8 = 0x20;
/// LSR bit 6, TEMT: THR (FIFO mode: the TX FIFO) and the transmit shift register are both
/// empty. The shift register counts as empty whenever the FIFO is, so this equals THRE here.
pub const LSR_TEMT: u8 = 0x40;
/// LSR bit 7: FIFO mode, a PE/FE/BI is in the RX FIFO. Never set here (no such errors).
pub const LSR_RX_FIFO_ERROR: u8 = 0x80;
/// The LSR bits that raise a receiver-line-status interrupt: OE, PE, FE, BI (bits 4:1).
/// Written as a number: only OE is ever produced, so an OR of the four would make every
/// mutation of the OR an equivalent mutant (a test checks the value).
const LSR_ERROR_BITS: u8 = 0x1e;

// MSR bits.

/// MSR bit 0, DCTS: CTS changed since MSR was last read.
pub const MSR_DCTS: u8 = 0x01;
/// MSR bit 1, DDSR: DSR changed since MSR was last read.
pub const MSR_DDSR: u8 = 0x02;
/// MSR bit 2, TERI: RI went from active to inactive (trailing edge) since the last read.
pub const MSR_TERI: u8 = 0x04;
/// MSR bit 3, DDCD: DCD changed since MSR was last read.
pub const MSR_DDCD: u8 = 0x08;
/// MSR bit 4: CTS (loopback: MCR.RTS).
pub const MSR_CTS: u8 = 0x10;
/// MSR bit 5: DSR (loopback: MCR.DTR).
pub const MSR_DSR: u8 = 0x20;
/// MSR bit 6: RI (loopback: MCR.OUT1).
pub const MSR_RI: u8 = 0x40;
/// MSR bit 7: DCD (loopback: MCR.OUT2).
pub const MSR_DCD: u8 = 0x80;
/// Modem inputs outside loopback: DCD, DSR and CTS asserted, RI not, "a terminal is connected
/// and ready", so guests that honour flow control transmit.
/// (DCD, DSR and CTS, written as a number as the next: a test checks it against the bits.)
pub const MSR_CONNECTED: u8 = 0xb0;
/// The four delta bits (3:0).
const MSR_DELTA_BITS: u8 = 0x0f;

/// Depth of each FIFO on the 16550A.
pub const FIFO_SIZE: usize = 16;
/// Divisor after power-on: 1, i.e. 115200 baud from the PC's 1.8432 MHz clock.
pub const DEFAULT_DIVISOR: u16 = 1;

/// A 16550A UART. See the module documentation for the rules it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uart16550 {
    /// Interrupt Enable Register (bits 0-3 only).
    ier: u8,
    /// Line Control Register.
    lcr: u8,
    /// Modem Control Register (bits 0-4 only).
    mcr: u8,
    /// Scratchpad Register.
    scr: u8,
    /// Divisor latch, low byte.
    dll: u8,
    /// Divisor latch, high byte.
    dlm: u8,
    /// FCR as programmed: FIFO enable, DMA mode and trigger bits (the clear bits self-clear).
    fcr: u8,
    /// LSR error bits (OE only, in practice) not yet cleared by an LSR read.
    lsr_errors: u8,
    /// THRE interrupt latch (QEMU's `thr_ipending`): set when the TX FIFO becomes empty (or is
    /// empty when IER.ETBEI rises), reset by writing THR or by the IIR read that reports it.
    /// Only `interrupt_id` applies IER.ETBEI to it (one place, so no guard elsewhere can
    /// disagree with it): a latch set while ETBEI is clear is reset by the THR write that
    /// must come before the FIFO holds a byte again, so it never shows stale.
    thr_pending: bool,
    /// MSR delta bits not yet cleared by an MSR read.
    msr_delta: u8,
    /// RX FIFO (holds at most 1 byte in non-FIFO mode: the receiver buffer register).
    rx: VecDeque<u8>,
    /// TX FIFO (holds at most 1 byte in non-FIFO mode: the transmitter holding register):
    /// bytes the guest wrote to THR that the host has not drained yet.
    tx: VecDeque<u8>,
    /// THR writes lost because the TX FIFO was full.
    tx_overruns: u64,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// The power-on state (Table III, "UART Reset Configuration"): IER, LCR, MCR, FCR and SCR
    /// 0, IIR 0x01, LSR 0x60, modem inputs "connected" (MSR 0xB0, no deltas), empty FIFOs,
    /// divisor [`DEFAULT_DIVISOR`].
    pub fn new() -> Self {
        let [dll, dlm] = DEFAULT_DIVISOR.to_le_bytes();
        Uart16550 {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll,
            dlm,
            fcr: 0,
            lsr_errors: 0,
            thr_pending: false,
            msr_delta: 0,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            tx: VecDeque::with_capacity(FIFO_SIZE),
            tx_overruns: 0,
        }
    }

    /// A guest read of the register at `offset` (0..=7) from the base port. Reads have side
    /// effects, as on the chip: RBR pops the RX FIFO, an IIR read reporting THRE clears it, an
    /// LSR read clears the error bits, an MSR read clears the delta bits. Other offsets read
    /// [`UNMAPPED`].
    pub fn read(&mut self, offset: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DLL if dlab => self.dll,
            // Empty: 0 (the chip would show the last byte again).
            RBR => self.rx.pop_front().unwrap_or(0),
            DLM if dlab => self.dlm,
            IER => self.ier,
            IIR => {
                let id = self.interrupt_id();
                // Table IV: the THRE interrupt is reset by reading IIR "if source of interrupt".
                if id == IIR_THRI {
                    self.thr_pending = false;
                }
                // Bits 3:0 and 7:6, disjoint: `+` is their OR.
                id + self.iir_fifo_bits()
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let lsr = self.lsr();
                // LSR bits 1-4 "are reset whenever the CPU reads the contents of the LSR".
                self.lsr_errors = 0;
                lsr
            }
            MSR => {
                // Bits 7:4 and 3:0, disjoint: `+` is their OR.
                let msr = self.modem_inputs() + self.msr_delta;
                // Delta bits are reset whenever the CPU reads the MSR.
                self.msr_delta = 0;
                msr
            }
            SCR => self.scr,
            _ => UNMAPPED,
        }
    }

    /// A guest write of `value` to the register at `offset` (0..=7) from the base port. Writes
    /// to LSR and MSR (factory test on the chip) and to other offsets are ignored.
    pub fn write(&mut self, offset: u8, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DLL if dlab => self.dll = value,
            THR => self.transmit(value),
            DLM if dlab => self.dlm = value,
            IER => self.write_ier(value),
            FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => self.write_mcr(value),
            SCR => self.scr = value,
            _ => {}
        }
    }

    /// Host -> guest: bytes typed on this guest's console. Returns how many were accepted, in
    /// order from the start of `bytes`; the rest did not fit the RX FIFO (1 byte in non-FIFO
    /// mode) and stay the caller's. If any byte did not fit, LSR.OE is set, as a 16550 does when
    /// a byte arrives at a full FIFO (the byte is not stored). Nothing is accepted in loopback
    /// mode, where the serial input is disconnected.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let n = bytes.len().min(self.rx_space());
        self.rx.extend(&bytes[..n]);
        if n < bytes.len() {
            self.lsr_errors |= LSR_OE;
        }
        n
    }

    /// Room left in the RX FIFO (0 in loopback mode), so the caller can hold input back
    /// instead of losing it.
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.fifo_capacity() - self.rx.len()
        }
    }

    /// Guest -> host: moves at most `max` bytes from the TX FIFO to the end of `out`, oldest
    /// first, and returns how many it moved. This is the transmitter sending them: a drain that
    /// empties the FIFO sets LSR.THRE and LSR.TEMT and, with IER.ETBEI set, raises the THRE
    /// interrupt, so sample [`interrupt_line`](Self::interrupt_line) afterwards. A host whose
    /// line is slower than the guest passes the room it has; `usize::MAX` drains everything.
    pub fn drain_output(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.tx.len());
        out.extend(self.tx.drain(..n));
        if n > 0 && self.tx.is_empty() {
            self.thr_pending = true;
        }
        n
    }

    /// Guest -> host: everything in the TX FIFO, in order ([`drain_output`](Self::drain_output)
    /// with no limit), for hosts with unlimited room.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tx.len());
        self.drain_output(&mut out, usize::MAX);
        out
    }

    /// Bytes in the TX FIFO waiting for the host (at most 16; 1 in non-FIFO mode).
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// THR writes lost so far because the TX FIFO was full: the guest did not wait for THRE.
    pub fn tx_overruns(&self) -> u64 {
        self.tx_overruns
    }

    /// Level of the guest's IRQ 4 input: some enabled interrupt is pending, MCR.OUT2 is set
    /// (on a PC it gates the UART's INTR to the PIC) and the UART is not in loopback mode (where
    /// OUT2 is forced inactive).
    pub fn interrupt_line(&self) -> bool {
        self.interrupt_id() != IIR_NONE && self.mcr & MCR_OUT2 != 0 && !self.loopback()
    }

    /// The 16-bit divisor latch (the baud rate is 115200 / divisor on a PC; informational).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_FIFO_ENABLE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Depth of each FIFO: 16 bytes in FIFO mode; otherwise only the receiver buffer register
    /// and the transmitter holding register.
    fn fifo_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Bytes at which "received data available" is raised (FCR bits 7:6; 1 in non-FIFO mode).
    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn iir_fifo_bits(&self) -> u8 {
        if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        }
    }

    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
        // The shift register is empty whenever the FIFO is: TEMT follows THRE.
        let tx = if self.tx.is_empty() { LSR_THRE + LSR_TEMT } else { 0 };
        // Bit 0, bits 4:1 and bits 6:5, disjoint: `+` is their OR.
        dr + self.lsr_errors + tx
    }

    /// MSR bits 7:4. In loopback the four modem-control outputs are wired to the four inputs
    /// inside the chip (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD); otherwise a terminal is there.
    fn modem_inputs(&self) -> u8 {
        if self.loopback() {
            // Four different bits: `+` is their OR.
            (if self.mcr & MCR_DTR != 0 { MSR_DSR } else { 0 })
                + (if self.mcr & MCR_RTS != 0 { MSR_CTS } else { 0 })
                + (if self.mcr & MCR_OUT1 != 0 { MSR_RI } else { 0 })
                + (if self.mcr & MCR_OUT2 != 0 { MSR_DCD } else { 0 })
        } else {
            MSR_CONNECTED
        }
    }

    /// IIR bits 3:0 for the highest-priority enabled pending source (Table IV).
    fn interrupt_id(&self) -> u8 {
        let ier = self.ier;
        let count = self.rx.len();
        if ier & IER_ELSI != 0 && self.lsr_errors & LSR_ERROR_BITS != 0 {
            IIR_RLS
        } else if ier & IER_ERBFI != 0 && count >= self.rx_trigger() {
            IIR_RDA
        } else if ier & IER_ERBFI != 0 && count > 0 && self.fifo_enabled() {
            // Below the trigger level: the timeout would fire; with no timer, it has.
            IIR_CTI
        } else if ier & IER_ETBEI != 0 && self.thr_pending {
            IIR_THRI
        } else if ier & IER_EDSSI != 0 && self.msr_delta & MSR_DELTA_BITS != 0 {
            IIR_MSI
        } else {
            IIR_NONE
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            // Loopback: the transmitter output is looped back to the receiver input; a full
            // receiver overruns as it would for a byte from the line. The byte never enters the
            // TX FIFO: it leaves at once, the transmitter is as empty as before, and the THRE
            // interrupt is re-armed as by a drain that empties the FIFO.
            if self.rx.len() < self.fifo_capacity() {
                self.rx.push_back(byte);
            } else {
                self.lsr_errors |= LSR_OE;
            }
            self.thr_pending = self.tx.is_empty();
        } else {
            if self.tx.len() < self.fifo_capacity() {
                self.tx.push_back(byte);
            } else {
                // No room: the byte is lost, as on the chip (see the module documentation).
                self.tx_overruns += 1;
            }
            // Writing THR clears the THRE interrupt (Table IV); the FIFO holds a byte now, so
            // it stays clear until the drain that empties the FIFO.
            self.thr_pending = false;
        }
    }

    fn write_ier(&mut self, value: u8) {
        let value = value & IER_MASK;
        let rising = value & !self.ier;
        self.ier = value;
        if rising & IER_ETBEI != 0 && self.tx.is_empty() {
            // Enabling ETBEI with the TX FIFO empty raises THRE at once. QEMU and Bochs do this
            // on the 0->1 edge; Linux's THRE probe and Windows rely on it. With bytes queued,
            // the drain that empties the FIFO raises it.
            self.thr_pending = true;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        let mut clear_rx = false;
        let mut clear_tx = false;
        if enable != self.fifo_enabled() {
            // Changing FCR0 resets both FIFOs.
            clear_rx = true;
            clear_tx = true;
        }
        if enable {
            // The other bits are only programmed together with FCR0 = 1.
            clear_rx |= value & FCR_CLEAR_RX != 0;
            clear_tx |= value & FCR_CLEAR_TX != 0;
            self.fcr = value & FCR_KEPT;
        } else {
            self.fcr = 0;
        }
        if clear_rx {
            // Only the FIFO: the LSR error bits stay until LSR is read.
            self.rx.clear();
        }
        if clear_tx {
            // Its bytes are dropped (the host never sees them); bytes already drained are gone.
            self.tx.clear();
            // An emptied TX FIFO is an empty THR (QEMU re-arms thr_ipending here too).
            self.thr_pending = true;
        }
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.modem_inputs();
        self.mcr = value & MCR_MASK;
        let after = self.modem_inputs();
        let changed = before ^ after;
        // In loopback the modem status interrupts stay operational, their sources being MCR
        // bits 0-3; entering or leaving loopback changes the inputs the MSR sees as well.
        if changed & MSR_CTS != 0 {
            self.msr_delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_delta |= MSR_DDSR;
        }
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            // TERI: only the trailing edge of RI (active -> inactive).
            self.msr_delta |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_delta |= MSR_DDCD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Uart16550 {
        /// THR writes of `bytes`, one by one.
        fn write_all(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.write(THR, b);
            }
        }
    }

    /// A UART with the given FCR programmed and IER set, OUT2 on (as Linux leaves it).
    fn uart(fcr: u8, ier: u8) -> Uart16550 {
        let mut u = Uart16550::new();
        u.write(FCR, fcr);
        u.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        u.write(IER, ier);
        u
    }

    #[test]
    fn power_on_state() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(IER), 0);
        assert_eq!(u.read(IIR), 0x01);
        assert_eq!(u.read(LCR), 0);
        assert_eq!(u.read(MCR), 0);
        assert_eq!(u.read(LSR), 0x60);
        assert_eq!(u.read(MSR), 0xb0);
        assert_eq!(u.read(SCR), 0);
        assert_eq!(u.divisor(), DEFAULT_DIVISOR);
        assert_eq!(u.rx_space(), 1);
        assert!(!u.interrupt_line());
        assert!(u.take_output().is_empty());
        assert_eq!(Uart16550::default(), Uart16550::new());
    }

    #[test]
    fn dlab_switches_offsets_0_and_1_to_the_divisor_latch() {
        let mut u = Uart16550::new();
        u.write(IER, 0x05);
        u.write(LCR, LCR_DLAB | 0x03);
        u.write(DLL, 0x0c);
        u.write(DLM, 0x01);
        assert_eq!(u.read(DLL), 0x0c);
        assert_eq!(u.read(DLM), 0x01);
        assert_eq!(u.divisor(), 0x010c);
        // Neither write reached THR or IER.
        assert!(u.take_output().is_empty());
        u.write(LCR, 0x03);
        assert_eq!(u.read(IER), 0x05);
        u.write(THR, b'x');
        assert_eq!(u.take_output(), b"x");
        assert_eq!(u.divisor(), 0x010c, "THR/IER accesses must not touch the latch");
        // With DLAB set again, offset 0 reads the latch, not the RX FIFO.
        u.receive(b"q");
        u.write(LCR, LCR_DLAB);
        assert_eq!(u.read(RBR), 0x0c);
        u.write(LCR, 0);
        assert_eq!(u.read(RBR), b'q');
    }

    #[test]
    fn thr_writes_reach_a_host_that_drains_after_each_write_in_order() {
        // The exit handler's host takes everything after every port write: the transmitter is
        // then empty whenever the guest looks (LSR bits 5 and 6 set, section 8.4).
        let mut u = Uart16550::new();
        let mut out = Vec::new();
        for &b in b"hello\n" {
            u.write(THR, b);
            assert_eq!(u.drain_output(&mut out, usize::MAX), 1);
            assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        }
        assert_eq!(out, b"hello\n");
        assert!(u.take_output().is_empty(), "draining must empty the FIFO");
        u.write(THR, b'a');
        assert_eq!(u.take_output(), b"a");
        assert!(u.take_output().is_empty(), "take_output must empty the FIFO");
        u.write(THR, b'b');
        let mut buf = b"> ".to_vec();
        assert_eq!(u.drain_output(&mut buf, usize::MAX), 1, "drain_output appends");
        assert_eq!(buf, b"> b");
    }

    #[test]
    fn ier_keeps_only_bits_0_to_3_and_mcr_bits_0_to_4() {
        let mut u = Uart16550::new();
        u.write(IER, 0xff);
        assert_eq!(u.read(IER), 0x0f);
        u.write(IER, 0xa5);
        assert_eq!(u.read(IER), 0x05);
        u.write(MCR, 0xe3);
        assert_eq!(u.read(MCR), 0x03);
    }

    #[test]
    fn lcr_and_scr_read_back() {
        let mut u = Uart16550::new();
        u.write(LCR, 0x1b);
        u.write(SCR, 0x5a);
        assert_eq!(u.read(LCR), 0x1b);
        assert_eq!(u.read(SCR), 0x5a);
        u.write(SCR, 0xa5);
        assert_eq!(u.read(SCR), 0xa5);
        assert!(u.take_output().is_empty(), "LCR/SCR writes are not transmitted");
    }

    #[test]
    fn offsets_beyond_7_read_ff_and_ignore_writes() {
        let mut u = uart(0x01, 0x0f);
        u.receive(b"abc");
        let before = u.clone();
        for off in [8u8, 9, 0x10, 0xff] {
            assert_eq!(u.read(off), 0xff);
            u.write(off, 0x00);
        }
        assert_eq!(u, before);
    }

    #[test]
    fn lsr_and_msr_writes_are_ignored() {
        let mut u = Uart16550::new();
        u.write(LSR, 0x00);
        u.write(MSR, 0x00);
        assert_eq!(u.read(LSR), 0x60);
        assert_eq!(u.read(MSR), 0xb0);
    }

    #[test]
    fn thre_interrupt_raised_when_etbei_is_enabled_and_cleared_by_iir_read() {
        let mut u = uart(0, 0);
        assert_eq!(u.read(IIR), IIR_NONE);
        u.write(IER, IER_ETBEI);
        assert!(u.interrupt_line());
        assert_eq!(u.read(IIR), IIR_THRI);
        // The read that reported THRE cleared it.
        assert_eq!(u.read(IIR), IIR_NONE);
        assert!(!u.interrupt_line());
        // Rewriting the same IER value is no 0->1 edge.
        u.write(IER, IER_ETBEI);
        assert_eq!(u.read(IIR), IIR_NONE);
    }

    #[test]
    fn thr_write_rearms_thre_interrupt() {
        let mut u = uart(0, IER_ETBEI);
        assert_eq!(u.read(IIR), IIR_THRI);
        assert_eq!(u.read(IIR), IIR_NONE);
        u.write(THR, b'a');
        // The host drains after the write (THR is empty again: section 8.11, THRE "occurs when
        // the XMIT FIFO is empty").
        assert_eq!(u.take_output(), b"a");
        assert!(u.interrupt_line());
        assert_eq!(u.read(IIR), IIR_THRI);
        assert_eq!(u.read(IIR), IIR_NONE);
    }

    #[test]
    fn no_thre_interrupt_without_etbei_and_disabling_drops_it() {
        let mut u = uart(0, 0);
        u.write(THR, b'a');
        assert_eq!(u.read(IIR), IIR_NONE);
        u.write(IER, IER_ETBEI);
        u.write(IER, 0);
        assert_eq!(u.read(IIR), IIR_NONE, "clearing ETBEI drops the pending THRE");
        // Other IER bits toggling do not raise THRE.
        u.write(IER, IER_ERBFI);
        assert_eq!(u.read(IIR), IIR_NONE);
    }

    #[test]
    fn linux_thre_probe_sees_the_interrupt_reasserted() {
        // serial8250_do_startup: IER=THRI, read IIR, IER=0, IER=THRI, read IIR; a UART whose
        // second read shows no interrupt is flagged UART_BUG_THRE.
        let mut u = uart(0, 0);
        u.write(IER, IER_ETBEI);
        let iir1 = u.read(IIR);
        u.write(IER, 0);
        u.write(IER, IER_ETBEI);
        let iir2 = u.read(IIR);
        u.write(IER, 0);
        assert_eq!(iir1 & IIR_NONE, 0);
        assert_eq!(iir2 & IIR_NONE, 0);
    }

    #[test]
    fn linux_style_interrupt_driven_transmit_terminates() {
        // The 8250 driver: on THRE, write up to 16 bytes; with nothing left, clear ETBEI. The
        // host drains after every write.
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        let mut out = Vec::new();
        let mut u = uart(0xc1, IER_ERBFI);
        let mut pending = &text[..];
        u.write(IER, IER_ERBFI | IER_ETBEI); // start_tx
        let mut rounds = 0;
        while u.interrupt_line() {
            rounds += 1;
            assert!(rounds < 20, "interrupt storm");
            // The handler's loop, bounded so that a broken IIR fails the test instead of
            // hanging it (Linux's serial8250_handle_irq loop is bounded too: PASS_LIMIT).
            let mut passes = 0;
            loop {
                passes += 1;
                assert!(passes < 64, "IIR never reported no interrupt pending");
                let iir = u.read(IIR);
                if iir & IIR_NONE != 0 {
                    break;
                }
                let lsr = u.read(LSR);
                if lsr & LSR_THRE != 0 && u.read(IER) & IER_ETBEI != 0 {
                    if pending.is_empty() {
                        u.write(IER, IER_ERBFI); // stop_tx
                    } else {
                        let n = pending.len().min(FIFO_SIZE);
                        for &b in &pending[..n] {
                            u.write(THR, b);
                            u.drain_output(&mut out, usize::MAX);
                        }
                        pending = &pending[n..];
                    }
                }
            }
        }
        assert_eq!(out, text);
        assert_eq!(u.read(IER), IER_ERBFI);
    }

    #[test]
    fn received_bytes_set_dr_and_pop_in_order() {
        let mut u = uart(0x01, 0);
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        assert_eq!(u.receive(b"abc"), 3);
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR), b'a');
        assert_eq!(u.read(RBR), b'b');
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR), b'c');
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        assert_eq!(u.read(RBR), 0, "empty RBR reads 0");
        assert_eq!(u.read(IIR), 0xc1, "no interrupts enabled");
    }

    #[test]
    fn receive_returns_accepted_count_and_rx_space_tracks_the_fifo() {
        let mut u = uart(0x01, 0);
        assert_eq!(u.rx_space(), 16);
        assert_eq!(u.receive(b"0123456789"), 10);
        assert_eq!(u.rx_space(), 6);
        assert_eq!(u.read(LSR) & LSR_OE, 0, "no overrun while it fits");
        assert_eq!(u.receive(b"abcdefgh"), 6);
        assert_eq!(u.rx_space(), 0);
        let got: Vec<u8> = (0..16).map(|_| u.read(RBR)).collect();
        assert_eq!(got, b"0123456789abcdef");
        assert_eq!(u.rx_space(), 16);
        assert_eq!(u.receive(b""), 0);
    }

    #[test]
    fn overrun_on_full_fifo_sets_oe_until_lsr_is_read() {
        let mut u = uart(0x01, 0);
        assert_eq!(u.receive(&[0x55; 20]), 16);
        let lsr = u.read(LSR);
        assert_eq!(lsr & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        let lsr = u.read(LSR);
        assert_eq!(lsr & LSR_OE, 0, "reading LSR clears OE");
        assert_eq!(lsr & LSR_DR, LSR_DR, "but not DR");
        // The stored bytes are intact and the dropped ones were not stored.
        for _ in 0..16 {
            assert_eq!(u.read(RBR), 0x55);
        }
        assert_eq!(u.read(LSR) & LSR_DR, 0);
    }

    #[test]
    fn non_fifo_mode_holds_one_byte() {
        let mut u = uart(0, IER_ERBFI);
        assert_eq!(u.rx_space(), 1);
        assert_eq!(u.receive(b"xy"), 1);
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.read(LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        // No FIFO: no timeout indication, the single byte is "data available" at once.
        assert_eq!(u.read(IIR), IIR_RDA);
        assert_eq!(u.read(RBR), b'x');
        assert_eq!(u.read(IIR), IIR_NONE);
        assert_eq!(u.receive(b"y"), 1);
        assert_eq!(u.read(RBR), b'y');
    }

    #[test]
    fn fifo_trigger_levels_raise_rda_and_timeout_below_them() {
        for (bits, level) in [(0x00u8, 1usize), (0x40, 4), (0x80, 8), (0xc0, 14)] {
            let mut u = uart(FCR_FIFO_ENABLE | bits, IER_ERBFI);
            assert_eq!(u.read(IIR), 0xc1, "level {level}: nothing yet");
            assert_eq!(u.receive(&vec![b'z'; level - 1]), level - 1);
            let expected = if level == 1 { 0xc1 } else { 0xc0 | IIR_CTI };
            assert_eq!(u.read(IIR), expected, "level {level}: one byte short");
            assert_eq!(u.receive(b"z"), 1);
            assert_eq!(u.read(IIR), 0xc0 | IIR_RDA, "level {level}: reached");
            assert!(u.interrupt_line());
        }
    }

    #[test]
    fn rda_falls_back_to_timeout_then_none_as_the_fifo_is_read() {
        let mut u = uart(0x41, IER_ERBFI); // trigger 4
        u.receive(b"abcd");
        assert_eq!(u.read(IIR), 0xc4);
        assert_eq!(u.read(RBR), b'a');
        assert_eq!(u.read(IIR), 0xcc, "3 bytes left, below the trigger: timeout");
        assert!(u.interrupt_line());
        for _ in 0..3 {
            u.read(RBR);
        }
        assert_eq!(u.read(IIR), 0xc1);
        assert!(!u.interrupt_line());
    }

    #[test]
    fn single_typed_character_reaches_a_guest_with_trigger_8() {
        // Linux programs a 16550A with FIFOs on and an 8-byte trigger (UART_FCR_R_TRIG_10).
        let mut u = uart(0x81, IER_ERBFI | IER_ELSI);
        assert_eq!(u.receive(b"k"), 1);
        assert!(u.interrupt_line());
        assert_eq!(u.read(IIR), 0xcc);
        let mut got = Vec::new();
        while u.read(LSR) & LSR_DR != 0 {
            got.push(u.read(RBR));
            assert!(got.len() <= FIFO_SIZE, "LSR.DR stays set past the FIFO's depth");
        }
        assert_eq!(got, b"k");
        assert!(!u.interrupt_line());
    }

    #[test]
    fn iir_fifo_bits_follow_fcr_bit_0() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(IIR) & 0xc0, 0);
        u.write(FCR, 0x01);
        assert_eq!(u.read(IIR), 0xc1);
        u.write(FCR, 0xc0); // bit 0 clear: FIFOs off, trigger bits not programmed
        assert_eq!(u.read(IIR), 0x01);
        assert_eq!(u.rx_space(), 1);
    }

    #[test]
    fn fcr_clear_rx_empties_the_fifo_and_keeps_fifo_mode() {
        let mut u = uart(0x01, IER_ERBFI);
        u.receive(b"abc");
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX);
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        assert_eq!(u.rx_space(), 16);
        assert_eq!(u.read(IIR), 0xc1);
        u.receive(b"d");
        assert_eq!(u.read(RBR), b'd');
    }

    #[test]
    fn fcr_clear_bits_need_fifo_enable_in_the_same_write() {
        let mut u = uart(0, 0);
        u.receive(b"a");
        u.write(FCR, FCR_CLEAR_RX | FCR_CLEAR_TX);
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR, "ignored without FCR0");
        assert_eq!(u.read(RBR), b'a');
    }

    #[test]
    fn changing_fifo_enable_flushes_the_receiver() {
        let mut u = uart(0, 0);
        u.receive(b"a");
        u.write(FCR, 0x01);
        assert_eq!(u.read(LSR) & LSR_DR, 0, "enabling flushed the holding register");
        u.receive(b"hello");
        u.write(FCR, 0x01); // same value: no change, no flush
        assert_eq!(u.rx_space(), 11);
        u.write(FCR, 0x00);
        assert_eq!(u.read(LSR) & LSR_DR, 0, "disabling flushed the FIFO");
        assert_eq!(u.rx_space(), 1);
    }

    #[test]
    fn register_bit_groups_are_the_datasheets() {
        // PC16550D: LSR bits 1-4 are OE, PE, FE, BI (each raises the line-status interrupt);
        // MSR bits 7, 5, 4 are DCD, DSR, CTS and bits 3:0 the deltas; FCR bits 0, 3, 7:6 are
        // FIFO enable, DMA mode and the trigger (1, 2 are self-clearing, 5:4 reserved).
        assert_eq!(LSR_ERROR_BITS, 0x02 | 0x04 | 0x08 | 0x10);
        assert_eq!(LSR_ERROR_BITS, LSR_OE | LSR_PE | LSR_FE | LSR_BI);
        assert_eq!(MSR_CONNECTED, 0x80 | 0x20 | 0x10);
        assert_eq!(MSR_CONNECTED, MSR_DCD | MSR_DSR | MSR_CTS);
        assert_eq!(MSR_DELTA_BITS, MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
        assert_eq!(FCR_KEPT, FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK);
        assert_eq!(FCR_KEPT, 0x01 | 0x08 | 0xc0);
    }

    #[test]
    fn an_emptied_fifo_interrupts_only_with_etbei_and_the_latch_never_shows_stale() {
        // Table IV: the THRE interrupt needs IER bit 1. Bytes drained with ETBEI clear raise
        // nothing, IIR says "none" and the line stays low.
        let mut u = uart(FCR_FIFO_ENABLE, 0);
        u.write(THR, b'a');
        assert_eq!(u.take_output(), b"a");
        assert_eq!(u.read(IIR), 0xc1);
        assert!(!u.interrupt_line());
        // Loopback and a TX clear, likewise.
        u.write(MCR, MCR_LOOP | MCR_OUT2);
        u.write(THR, b'b');
        u.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_TX);
        assert_eq!(u.read(IIR), 0xc1);
        // A byte queued, then ETBEI enabled: no THRE while it waits (the FIFO is not empty),
        // then one when the drain empties it.
        u.write(THR, b'c');
        u.write(IER, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc1, "THRE with a byte still queued");
        assert!(!u.interrupt_line());
        assert_eq!(u.take_output(), b"c");
        assert_eq!(u.read(IIR), 0xc2);
    }

    #[test]
    fn fcr_clear_tx_rearms_thre() {
        let mut u = uart(0x01, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc2);
        assert_eq!(u.read(IIR), 0xc1);
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_TX);
        assert_eq!(u.read(IIR), 0xc2);
        // Not without ETBEI.
        u.write(IER, 0);
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_TX);
        assert_eq!(u.read(IIR), 0xc1);
    }

    #[test]
    fn line_status_interrupt_is_highest_priority_then_rx_then_thre() {
        let mut u = uart(0, IER_ERBFI | IER_ETBEI | IER_ELSI);
        assert_eq!(u.receive(b"ab"), 1); // overrun
        assert_eq!(u.read(IIR), IIR_RLS);
        assert_eq!(u.read(IIR), IIR_RLS, "an IIR read does not clear line status");
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(IIR), IIR_RDA);
        assert_eq!(u.read(RBR), b'a');
        // THRE was raised when ETBEI was enabled and survived the higher-priority reads.
        assert_eq!(u.read(IIR), IIR_THRI);
        assert_eq!(u.read(IIR), IIR_NONE);
    }

    #[test]
    fn overrun_without_elsi_raises_no_line_status_interrupt() {
        let mut u = uart(0, IER_ETBEI);
        u.receive(b"ab");
        assert_eq!(u.read(IIR), IIR_THRI);
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
    }

    #[test]
    fn rx_interrupt_takes_priority_over_thre_and_modem_status() {
        let mut u = uart(0x81, IER_ERBFI | IER_ETBEI | IER_EDSSI);
        u.write(MCR, MCR_LOOP); // deltas: DCD, DSR and CTS dropped
        u.write(MCR, MCR_OUT2); // and back
        u.receive(b"x");
        assert_eq!(u.read(IIR), 0xcc);
        u.read(RBR);
        assert_eq!(u.read(IIR), 0xc2);
        assert_eq!(u.read(IIR), 0xc0, "modem status: lowest priority");
        assert_eq!(u.read(MSR) & MSR_DELTA_BITS, MSR_DCTS | MSR_DDSR | MSR_DDCD);
        assert_eq!(u.read(IIR), 0xc1);
    }

    #[test]
    fn out2_gates_the_interrupt_line() {
        let mut u = Uart16550::new();
        u.write(IER, IER_ETBEI);
        assert!(!u.interrupt_line(), "OUT2 clear: the PIC does not see it");
        u.write(MCR, MCR_DTR | MCR_RTS);
        assert!(!u.interrupt_line());
        u.write(MCR, MCR_OUT2);
        assert!(u.interrupt_line());
        // IIR still reports it whatever OUT2 says; reading clears it.
        u.write(MCR, 0);
        assert_eq!(u.read(IIR), IIR_THRI);
        u.write(MCR, MCR_OUT2);
        assert!(!u.interrupt_line());
    }

    #[test]
    fn loopback_sends_thr_to_the_receiver_not_the_output() {
        let mut u = uart(0x01, 0);
        u.write(MCR, MCR_LOOP);
        u.write(THR, b'A');
        u.write(THR, b'B');
        assert!(u.take_output().is_empty());
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR), b'A');
        assert_eq!(u.read(RBR), b'B');
        // Host input is disconnected in loopback: held back, no overrun.
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.receive(b"host"), 0);
        assert_eq!(u.read(LSR) & (LSR_DR | LSR_OE), 0);
        u.write(MCR, 0);
        u.write(THR, b'C');
        assert_eq!(u.take_output(), b"C");
        assert_eq!(u.receive(b"h"), 1);
    }

    #[test]
    fn loopback_overruns_a_full_receiver() {
        let mut u = uart(0, 0);
        u.write(MCR, MCR_LOOP);
        u.write(THR, b'1');
        u.write(THR, b'2');
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(RBR), b'1');
    }

    #[test]
    fn loopback_msr_mirrors_mcr() {
        let mut u = Uart16550::new();
        // Linux's 8250 autoconfig: MCR = LOOP | OUT2 | RTS must read MSR & 0xF0 == DCD | CTS.
        u.write(MCR, MCR_LOOP | 0x0a);
        assert_eq!(u.read(MSR) & 0xf0, 0x90);
        u.write(MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        assert_eq!(u.read(MSR) & 0xf0, MSR_DSR | MSR_RI);
        u.write(MCR, MCR_LOOP | 0x0f);
        assert_eq!(u.read(MSR) & 0xf0, 0xf0);
        u.write(MCR, MCR_LOOP);
        assert_eq!(u.read(MSR) & 0xf0, 0x00);
        u.write(MCR, 0);
        assert_eq!(u.read(MSR) & 0xf0, 0xb0, "a terminal again outside loopback");
    }

    #[test]
    fn msr_delta_bits_set_on_change_and_cleared_by_read() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_LOOP); // DCD, DSR, CTS drop
        assert_eq!(u.read(MSR), MSR_DDCD | MSR_DDSR | MSR_DCTS);
        assert_eq!(u.read(MSR), 0x00, "reading MSR clears the deltas");
        u.write(MCR, MCR_LOOP | MCR_OUT1); // RI rises: no TERI
        assert_eq!(u.read(MSR), MSR_RI);
        u.write(MCR, MCR_LOOP); // RI falls: TERI
        assert_eq!(u.read(MSR), MSR_TERI);
        u.write(MCR, MCR_LOOP | MCR_RTS);
        assert_eq!(u.read(MSR), MSR_CTS | MSR_DCTS);
        // Outside loopback nothing changes by itself.
        u.write(MCR, MCR_OUT2);
        u.read(MSR);
        u.write(MCR, MCR_OUT2 | MCR_DTR | MCR_RTS | MCR_OUT1);
        assert_eq!(u.read(MSR), 0xb0);
    }

    #[test]
    fn modem_status_interrupt_needs_edssi_and_is_cleared_by_msr_read() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_LOOP);
        assert_eq!(u.read(IIR), IIR_NONE, "EDSSI clear");
        u.write(IER, IER_EDSSI);
        assert_eq!(u.read(IIR), IIR_MSI);
        assert_eq!(u.read(IIR), IIR_MSI, "an IIR read does not clear it");
        u.read(MSR);
        assert_eq!(u.read(IIR), IIR_NONE);
    }

    #[test]
    fn loopback_keeps_interrupts_internal() {
        let mut u = uart(0x81, IER_ERBFI);
        u.write(MCR, MCR_LOOP | MCR_OUT2);
        u.write(THR, b'x');
        assert_eq!(u.read(IIR), 0xcc, "pending internally");
        assert!(!u.interrupt_line(), "OUT2 is forced inactive in loopback");
        u.write(MCR, MCR_OUT2);
        assert!(u.interrupt_line(), "leaving loopback drives the line again");
    }

    #[test]
    fn dlab_does_not_hide_iir_lsr_or_the_interrupt_line() {
        let mut u = uart(0x81, IER_ERBFI);
        u.receive(b"a");
        u.write(LCR, LCR_DLAB);
        assert!(u.interrupt_line());
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(IIR), 0xcc);
        u.write(IER, 0); // DLM, not IER
        assert!(u.interrupt_line());
    }

    // The transmitter (module documentation, "The transmitter: a FIFO the host drains").

    #[test]
    fn fifo_mode_holds_16_bytes_and_the_17th_is_lost_and_counted() {
        // Features list and section 8.11: in FIFO mode the XMIT FIFO holds 16 bytes; there is
        // no room for a 17th, and no status bit reports it (LSR.OE is the receiver's, 8.4).
        let mut u = uart(FCR_FIFO_ENABLE, 0);
        for b in 0..16u8 {
            u.write(THR, b);
        }
        assert_eq!((u.tx_pending(), u.tx_overruns()), (16, 0));
        u.write(THR, 16);
        assert_eq!((u.tx_pending(), u.tx_overruns()), (16, 1), "the 17th did not fit");
        u.write(THR, 17);
        assert_eq!(u.tx_overruns(), 2, "each lost byte counts");
        assert_eq!(u.read(LSR) & LSR_OE, 0);
        let want: Vec<u8> = (0..16).collect();
        assert_eq!(u.take_output(), want, "the queued bytes are kept, in order");
        u.write(THR, 18);
        assert_eq!(u.take_output(), [18], "room again after the drain");
        assert_eq!(u.tx_overruns(), 2);
    }

    #[test]
    fn non_fifo_mode_holds_one_byte_in_thr() {
        // 16450 (non-FIFO) mode: a single Transmitter Holding Register (section 8.4, LSR bit 5:
        // THRE is reset "concurrently with the loading of the Transmitter Holding Register").
        let mut u = uart(0, 0);
        u.write(THR, b'a');
        assert_eq!((u.tx_pending(), u.tx_overruns()), (1, 0));
        u.write(THR, b'b');
        assert_eq!((u.tx_pending(), u.tx_overruns()), (1, 1));
        assert_eq!(u.take_output(), b"a");
        // Leaving FIFO mode brings the depth back to 1 (section 8.5, FCR bit 0).
        let mut u = uart(FCR_FIFO_ENABLE, 0);
        u.write(FCR, 0);
        u.write(THR, b'x');
        u.write(THR, b'y');
        assert_eq!((u.tx_pending(), u.tx_overruns()), (1, 1));
        assert_eq!(u.take_output(), b"x");
    }

    #[test]
    fn thre_and_temt_are_clear_while_bytes_are_pending_and_set_after_a_full_drain() {
        // Section 8.4 bits 5 and 6 (8.12 in FIFO polled mode): THRE = XMIT FIFO empty, TEMT =
        // FIFO and shift register empty; the model's shift register is empty with the FIFO.
        for fcr in [0, FCR_FIFO_ENABLE] {
            let mut u = uart(fcr, 0);
            assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
            u.write(THR, b'z');
            assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), 0, "FCR {fcr:#x}: one byte pending");
            let mut out = Vec::new();
            assert_eq!(u.drain_output(&mut out, 1), 1);
            assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT, "FCR {fcr:#x}");
            assert_eq!(out, b"z");
        }
    }

    #[test]
    fn a_partial_drain_keeps_thre_clear_and_moves_the_oldest_bytes() {
        // THRE is set only when the XMIT FIFO is empty (section 8.4 bit 5), not when it has room.
        let mut u = uart(FCR_FIFO_ENABLE, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc2);
        u.write_all(b"hello");
        let mut out = Vec::new();
        assert_eq!(u.drain_output(&mut out, 0), 0, "max 0 moves nothing");
        assert_eq!(u.drain_output(&mut out, 2), 2);
        assert_eq!(out, b"he");
        assert_eq!(u.tx_pending(), 3);
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), 0);
        assert_eq!(u.read(IIR), 0xc1, "no THRE interrupt while bytes remain");
        assert_eq!(u.drain_output(&mut out, 10), 3, "at most what is there");
        assert_eq!(out, b"hello");
        assert_eq!(u.tx_pending(), 0);
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn thre_interrupt_is_raised_when_a_drain_empties_the_fifo_with_etbei_set() {
        // Section 8.11: the THRE interrupt "occurs when the XMIT FIFO is empty"; Table IV: it is
        // reset by writing THR or by the IIR read that reports it.
        let mut u = uart(FCR_FIFO_ENABLE, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc2);
        u.write_all(b"ab");
        assert!(!u.interrupt_line());
        let mut out = Vec::new();
        u.drain_output(&mut out, 1);
        assert!(!u.interrupt_line(), "one byte left");
        u.drain_output(&mut out, 1);
        assert!(u.interrupt_line(), "the FIFO became empty");
        assert_eq!(u.read(IIR), 0xc2);
        assert_eq!(u.read(IIR), 0xc1);
        // A drain that moves nothing empties nothing: the cleared interrupt stays cleared.
        assert_eq!(u.drain_output(&mut out, usize::MAX), 0);
        assert_eq!(u.read(IIR), 0xc1);
        // A THR write clears a pending THRE before the IIR read does.
        u.write(THR, b'c');
        u.take_output();
        u.write(THR, b'd');
        assert_eq!(u.read(IIR), 0xc1);
        // Not without ETBEI.
        u.write(IER, 0);
        u.take_output();
        u.write(THR, b'e');
        u.take_output();
        assert_eq!(u.read(IIR), 0xc1);
        assert_eq!(out, b"ab");
    }

    #[test]
    fn enabling_etbei_with_bytes_pending_raises_nothing_until_the_drain() {
        // The THRE interrupt needs an empty XMIT FIFO (section 8.11); the 0->1 edge of ETBEI
        // only raises it at once when the FIFO is already empty.
        let mut u = uart(FCR_FIFO_ENABLE, 0);
        u.write(THR, b'x');
        u.write(IER, IER_ETBEI);
        assert!(!u.interrupt_line());
        assert_eq!(u.read(IIR), 0xc1);
        assert_eq!(u.take_output(), b"x");
        assert!(u.interrupt_line(), "the drain that empties the FIFO raises it");
        assert_eq!(u.read(IIR), 0xc2);
        assert_eq!(u.read(IIR), 0xc1);
    }

    #[test]
    fn fcr_clear_tx_drops_the_queued_bytes_and_rearms_thre() {
        // Section 8.5 bit 2: "clears all bytes in the XMIT FIFO"; bit 1 (RCVR) leaves it alone.
        let mut u = uart(FCR_FIFO_ENABLE, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc2);
        u.write_all(b"abc");
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX);
        assert_eq!(u.tx_pending(), 3, "clearing the RX FIFO keeps the TX FIFO");
        assert_eq!(u.read(IIR), 0xc1);
        u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_TX);
        assert_eq!(u.tx_pending(), 0);
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(u.read(IIR), 0xc2, "an emptied FIFO is an empty THR");
        assert!(u.take_output().is_empty(), "the dropped bytes never reach the host");
        assert_eq!(u.tx_overruns(), 0, "dropped by the guest, not lost to a full FIFO");
        // Section 8.5 bit 0: changing FCR0 clears both FIFOs, and (8.11) "the first transmitter
        // interrupt after changing FCR0 will be immediate, if it is enabled".
        u.write_all(b"def");
        u.write(FCR, 0);
        assert_eq!(u.tx_pending(), 0);
        assert_eq!(u.read(IIR), IIR_THRI);
        u.write(THR, b'g');
        u.write(FCR, FCR_FIFO_ENABLE);
        assert_eq!(u.tx_pending(), 0);
        assert_eq!(u.read(IIR), 0xc2);
        assert!(u.take_output().is_empty());
    }

    #[test]
    fn loopback_bytes_bypass_the_tx_fifo() {
        // Section 8.8 bit 4: in loopback "data that is transmitted is immediately received".
        let mut u = uart(FCR_FIFO_ENABLE, IER_ETBEI);
        assert_eq!(u.read(IIR), 0xc2);
        u.write(THR, b'q'); // queued for the host before loopback
        u.write(MCR, MCR_LOOP);
        for &b in b"0123456789abcdefgh" {
            u.write(THR, b);
        }
        assert_eq!(u.tx_pending(), 1, "looped bytes never enter the TX FIFO");
        assert_eq!(u.tx_overruns(), 0);
        assert_eq!(u.read(LSR) & (LSR_OE | LSR_THRE), LSR_OE, "16 received, 2 overran the RX FIFO");
        assert_eq!(u.read(IIR), 0xc1, "no THRE while the earlier byte waits");
        assert_eq!(u.take_output(), b"q");
        assert_eq!(u.read(IIR), 0xc2);
        let got: Vec<u8> = (0..16).map(|_| u.read(RBR)).collect();
        assert_eq!(got, b"0123456789abcdef");
        assert_eq!(u.read(IIR), 0xc1);
        // With the FIFO empty a looped byte re-arms THRE at once, as before.
        u.write(THR, b'!');
        assert_eq!(u.read(IIR), 0xc2);
        assert_eq!(u.read(RBR), b'!');
    }

    /// A guest's view of time against a host whose serial line is slower than the guest: the
    /// guest's port accesses take no time, and at every step (one `udelay` of a polling loop,
    /// one interrupt, one idle instant) the host sends 1 byte.
    struct SlowHost {
        u: Uart16550,
        wire: Vec<u8>,
        steps: usize,
    }

    impl SlowHost {
        fn step(&mut self) {
            self.u.drain_output(&mut self.wire, 1);
            self.steps += 1;
        }
    }

    /// Linux's 8250 driver (drivers/tty/serial/8250/8250_port.c), as far as transmitting goes.
    struct Linux8250 {
        /// `up->ier`, the driver's copy of IER.
        ier: u8,
        /// The tty's transmit buffer.
        xmit: VecDeque<u8>,
        /// `up->tx_loadsz`: 16 for a 16550A, 1 for a 16450.
        tx_loadsz: usize,
        /// What the driver wrote to THR, in order.
        sent: Vec<u8>,
    }

    impl Linux8250 {
        /// serial8250_do_startup: clear the FIFOs, program them, 8N1, OUT2, the THRE probe,
        /// then receive interrupts only.
        fn startup(&mut self, h: &mut SlowHost, fcr: u8) {
            let u = &mut h.u;
            u.write(FCR, FCR_FIFO_ENABLE);
            u.write(FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
            u.write(FCR, 0);
            u.write(FCR, fcr);
            u.write(LCR, 0x03);
            u.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
            u.write(IER, IER_ETBEI);
            let iir1 = u.read(IIR);
            u.write(IER, 0);
            u.write(IER, IER_ETBEI);
            let iir2 = u.read(IIR);
            u.write(IER, 0);
            assert_eq!((iir1 | iir2) & IIR_NONE, 0, "the THRE probe passes");
            self.ier = IER_ERBFI | IER_ELSI;
            u.write(IER, self.ier);
        }

        /// serial8250_start_tx: set ETBEI unless it is set; the THRE interrupt does the rest.
        fn start_tx(&mut self, h: &mut SlowHost) {
            if self.ier & IER_ETBEI == 0 {
                self.ier |= IER_ETBEI;
                h.u.write(IER, self.ier);
            }
        }

        fn stop_tx(&mut self, h: &mut SlowHost) {
            if self.ier & IER_ETBEI != 0 {
                self.ier &= !IER_ETBEI;
                h.u.write(IER, self.ier);
            }
        }

        /// serial8250_tx_chars: up to tx_loadsz bytes, then stop when the buffer is empty.
        fn tx_chars(&mut self, h: &mut SlowHost) {
            if self.xmit.is_empty() {
                self.stop_tx(h);
                return;
            }
            for _ in 0..self.tx_loadsz {
                let Some(b) = self.xmit.pop_front() else { break };
                h.u.write(THR, b);
                self.sent.push(b);
            }
            if self.xmit.is_empty() {
                self.stop_tx(h);
            }
        }

        /// serial8250_interrupt / serial8250_handle_irq, until IIR shows nothing pending.
        fn interrupt(&mut self, h: &mut SlowHost) {
            for _ in 0..100 {
                if h.u.read(IIR) & IIR_NONE != 0 {
                    return;
                }
                let lsr = h.u.read(LSR);
                assert_eq!(lsr & LSR_DR, 0, "nothing is received here");
                if lsr & LSR_THRE != 0 && self.ier & IER_ETBEI != 0 {
                    self.tx_chars(h);
                }
            }
            panic!("interrupt storm");
        }

        /// wait_for_xmitr: poll LSR, udelay(1) between polls, give up after 10000.
        fn wait_for_xmitr(h: &mut SlowHost, bits: u8) {
            for _ in 0..10_000 {
                if h.u.read(LSR) & bits == bits {
                    return;
                }
                h.step();
            }
            panic!("LSR {bits:#x} timed out: Linux would write into a full FIFO");
        }

        /// serial8250_console_write: IER off, each byte after THRE ('\n' as "\r\n"), wait for
        /// TEMT, restore IER.
        fn console_write(&mut self, h: &mut SlowHost, text: &[u8]) {
            let ier = h.u.read(IER);
            h.u.write(IER, 0);
            for &c in text {
                for b in if c == b'\n' { &b"\r\n"[..] } else { core::slice::from_ref(&c) } {
                    Self::wait_for_xmitr(h, LSR_THRE);
                    h.u.write(THR, *b);
                    self.sent.push(*b);
                }
            }
            Self::wait_for_xmitr(h, LSR_THRE | LSR_TEMT);
            h.u.write(IER, ier);
        }
    }

    #[test]
    fn linux_8250_driver_loses_nothing_to_a_host_draining_one_byte_per_step() {
        // The driver's rules (section 8.11: 1 to 16 bytes per THRE interrupt in FIFO mode;
        // polled console output waits for THRE before each byte, 8.4) against a slow host:
        // a tty write interrupted by printk, and a second tty write whose start_tx enables
        // ETBEI while the FIFO still holds the end of the first.
        let tty1: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let tty2 = b"second write after stop_tx\n";
        let printk = b"printk: console line\n";
        for (fcr, tx_loadsz) in [(FCR_FIFO_ENABLE | 0x80, FIFO_SIZE), (0, 1)] {
            let mut h = SlowHost { u: Uart16550::new(), wire: Vec::new(), steps: 0 };
            let mut linux =
                Linux8250 { ier: 0, xmit: VecDeque::new(), tx_loadsz, sent: Vec::new() };
            linux.startup(&mut h, fcr);
            linux.xmit.extend(&tty1);
            linux.start_tx(&mut h);
            let (mut printk_done, mut tty2_queued) = (false, false);
            let (mut printk_waited, mut tty2_waited) = (false, false);
            while h.steps < 10_000 {
                if h.u.interrupt_line() {
                    linux.interrupt(&mut h);
                }
                // Right after the handler (no time passes), the rest of the kernel runs.
                if !printk_done && linux.sent.len() >= 40 {
                    printk_waited = h.u.tx_pending() > 0;
                    linux.console_write(&mut h, printk);
                    printk_done = true;
                } else if printk_done && !tty2_queued && linux.xmit.is_empty() {
                    // stop_tx ran with the last bytes of tty1 still queued.
                    tty2_waited = h.u.tx_pending() > 0 && linux.ier & IER_ETBEI == 0;
                    linux.xmit.extend(tty2);
                    linux.start_tx(&mut h);
                    tty2_queued = true;
                    assert!(!h.u.interrupt_line(), "FCR {fcr:#x}: no THRE while bytes are queued");
                    assert_eq!(h.u.read(IIR) & IIR_NONE, IIR_NONE);
                } else if tty2_queued && linux.xmit.is_empty() && h.u.tx_pending() == 0 {
                    break;
                }
                h.step();
            }
            assert!(printk_waited && tty2_waited, "FCR {fcr:#x}: the scenario did not happen");
            let mut console = Vec::new();
            for &c in printk {
                if c == b'\n' {
                    console.push(b'\r');
                }
                console.push(c);
            }
            let printk_at = linux.sent.windows(console.len()).position(|w| w == console).unwrap();
            let mut want = tty1[..printk_at].to_vec();
            want.extend(&console);
            want.extend(&tty1[printk_at..]);
            want.extend(tty2);
            assert_eq!(h.wire, want, "FCR {fcr:#x}: all text, in order");
            assert_eq!(h.u.tx_overruns(), 0, "FCR {fcr:#x}");
            assert!(h.wire.len() < h.steps, "FCR {fcr:#x}: one byte per step at most");
        }
    }
}
