//! The PC's 8259A interrupt controller pair: initialisation, masks, end of interrupt and
//! spurious-IRQ detection, for a guest that takes interrupts through it.
//!
//! A PC has two 8259As: the master at ports 0x20/0x21 takes IRQ 0-7, the slave at
//! 0xA0/0xA1 takes IRQ 8-15 and drives the master's input 2 (the cascade). Each has a
//! command port (A0 = 0) and a data port (A0 = 1).
//!
//! References: the Intel 8259A datasheet (order number 231468), sections "Initialization
//! Command Words", "Operation Command Words", "End of Interrupt", "Edge and Level Triggered
//! Modes" and "Reading the 8259A Status"; Linux `arch/x86/kernel/i8259.c` (`init_8259A`,
//! `mask_and_ack_8259A`) for the PC conventions followed here.

use crate::cpu::{inb, outb};

/// Master command port (ICW1, OCW2, OCW3; reads IRR or ISR).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-4 during initialisation, then OCW1, the interrupt mask).
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xA0;
pub const SLAVE_DATA: u16 = 0xA1;
/// The master input the slave's INT output is wired to on a PC.
pub const CASCADE_IRQ: u8 = 2;

/// ICW1 (command port): bit 4 = 1 is what makes a command byte ICW1; IC4 (bit 0) = 1: an
/// ICW4 follows; SNGL (bit 1) = 0: cascaded, so an ICW3 follows; LTIM (bit 3) = 0: edge
/// triggered, as on every PC. Linux writes the same 0x11.
pub const ICW1_INIT: u8 = 0x11;
/// ICW4: uPM (bit 0) = 1, 8086 mode (the PIC answers INTA with a vector byte, ICW2 | IR);
/// AEOI = 0 (the handler sends the EOI), not buffered, not special fully nested.
pub const ICW4_8086: u8 = 0x01;
/// OCW2 (command port): EOI (bit 5) with R = SL = 0, a non-specific EOI: it clears the
/// highest-priority bit set in the ISR, which in the fully nested mode (the default after
/// ICW4) is the interrupt being handled ("End of Interrupt").
pub const OCW2_NON_SPECIFIC_EOI: u8 = 0x20;
/// OCW3 (command port, bit 3 = 1): RR = 1 (bit 1) and RIS (bit 0) choose what the next read
/// of the command port returns: RIS = 1 the ISR, RIS = 0 the IRR (the state after ICW1).
pub const OCW3_READ_ISR: u8 = 0x0B;
pub const OCW3_READ_IRR: u8 = 0x0A;

/// Initialises both PICs with Linux's `init_8259A` sequence, the master's vectors starting
/// at `master_base` and the slave's at `slave_base`, and leaves the masks (OCW1, bit set =
/// IRQ masked) at `master_mask` and `slave_mask`.
///
/// Run it with interrupts disabled: ICW1 clears the interrupt mask register ("Initialization
/// Command Words": whenever a command is written with A0 = 0 and D4 = 1 it is ICW1, and then
/// the edge sense circuit is reset, the IMR is cleared, IR7 gets the lowest priority, the
/// slave address is set to 7, special mask mode is cleared and status read is set to IRR),
/// so every IRQ is unmasked until the last two writes. Linux masks everything first for the
/// same reason and writes the real masks only at the end; so does this.
/// Linux's `outb_pic` also writes port 0x80 after every byte, a delay for old chipsets, and
/// waits 100 us at the end; neither is done here: port 0x80 is not part of the guest ABI.
///
/// Panics unless both bases are multiples of 8: in 8086 mode ICW2 gives vector bits 7:3
/// and the PIC fills in bits 2:0 with the IR number.
pub fn init(master_base: u8, slave_base: u8, master_mask: u8, slave_mask: u8) {
    assert!(master_base.is_multiple_of(8) && slave_base.is_multiple_of(8), "PIC vector bases must be multiples of 8");
    outb(MASTER_DATA, 0xFF); // mask all of the master
    outb(SLAVE_DATA, 0xFF); // and of the slave
    outb(MASTER_CMD, ICW1_INIT);
    outb(MASTER_DATA, master_base); // ICW2: IRQ 0-7 at master_base..master_base + 8
    outb(MASTER_DATA, 1 << CASCADE_IRQ); // ICW3 (master): a slave on IR2, one bit per input
    outb(MASTER_DATA, ICW4_8086);
    outb(SLAVE_CMD, ICW1_INIT);
    outb(SLAVE_DATA, slave_base); // ICW2: IRQ 8-15
    outb(SLAVE_DATA, CASCADE_IRQ); // ICW3 (slave): its ID, the master input it drives
    outb(SLAVE_DATA, ICW4_8086);
    set_masks(master_mask, slave_mask);
}

/// OCW1: writes both interrupt masks (bit n set = IR n masked).
pub fn set_masks(master: u8, slave: u8) {
    outb(MASTER_DATA, master);
    outb(SLAVE_DATA, slave);
}

/// Whether IRQ `irq` (0-15) is in service: reads the ISR of its PIC through OCW3, then sets
/// the read back to the IRR, as ICW1 left it.
pub fn in_service(irq: u8) -> bool {
    let cmd = if irq < 8 { MASTER_CMD } else { SLAVE_CMD };
    outb(cmd, OCW3_READ_ISR);
    let isr = inb(cmd);
    outb(cmd, OCW3_READ_IRR);
    isr & (1 << (irq % 8)) != 0
}

/// Non-specific EOI for IRQ `irq` (0-15): to the slave first for IRQ 8-15, whose interrupt is
/// also in service at the master's cascade input, then to the master. Handlers run with
/// IF = 0 (interrupt gates) and so never nest: the bit a non-specific EOI clears is the one
/// of the interrupt being handled.
pub fn eoi(irq: u8) {
    if irq >= 8 {
        outb(SLAVE_CMD, OCW2_NON_SPECIFIC_EOI);
    }
    outb(MASTER_CMD, OCW2_NON_SPECIFIC_EOI);
}

/// Ends the interrupt of IRQ `irq` (0-15) at the PIC(s) and returns true; or, for a spurious
/// IRQ 7 or 15, returns false and sends no EOI to the PIC that made it up.
///
/// An IR input that drops before the CPU's first INTA pulse leaves the 8259A nothing to
/// deliver, and it answers with IR7's vector anyway (a "default IR7"); unlike a real IR7 it
/// sets no ISR bit, and reading the ISR is how to tell them apart ("Edge and Level Triggered
/// Modes"). An EOI for it would clear the bit of some other interrupt in service, so it gets
/// none. If the slave made it up (IRQ 15), the master still acknowledged a real request on
/// its cascade input, whose ISR bit is set: that one EOI is due (Linux does the same).
pub fn end_of_interrupt(irq: u8) -> bool {
    match irq {
        7 if !in_service(7) => false,
        15 if !in_service(15) => {
            outb(MASTER_CMD, OCW2_NON_SPECIFIC_EOI);
            false
        }
        _ => {
            eoi(irq);
            true
        }
    }
}
