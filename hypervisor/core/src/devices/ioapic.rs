//! Intel 82093AA I/O APIC (24 inputs, version 0x20 with an EOI register) at 0xFEC0_0000, as a pure state machine.
//!
//! Every guest owns one [`IoApic`]. The kernel registers it on the device bus as MMIO at
//! [`IOAPIC_BASE`] with length [`IOAPIC_MMIO_LEN`] and forwards guest loads and stores there to
//! its [`BusDevice`] implementation; device models drive the 24 inputs with
//! [`IoApic::set_irq`]; the interrupt messages the chip sends wait in a queue that the
//! interrupt router (`irq.rs`) empties with [`IoApic::take_messages`] or [`IoApic::pop_message`],
//! and a broadcast EOI from a local APIC comes back through [`IoApic::eoi`]. Nothing here
//! touches hardware, so all of it is tested on the host.
//!
//! The rules follow the Intel 82093AA datasheet ("82093AA I/O Advanced Programmable Interrupt
//! Controller (IOAPIC)", order number 290566-001); section numbers such as §3.2.4 below are
//! its. The EOI register is not in the 82093AA: it came with I/O APIC version 0x20 as built
//! into Intel's chipsets (ICH/PCH, and e.g. the 6700PXH datasheet §3.8.2.5 "EOI—End of
//! Interrupt Register"), and QEMU's `hw/intc/ioapic.c` models that version; so does this model,
//! which is why [`IOAPIC_VERSION`] reads 0x20 and not the 82093AA's 0x11.
//!
//! # Registers
//!
//! The 82093AA puts two registers in memory space (§3.0, §3.1): IOREGSEL at offset 0x00 selects
//! one of the indirect registers through bits 7:0 (§3.1.1), and IOWIN at 0x10 reads and writes
//! the selected one (§3.1.2). Version 0x20 adds the EOI register at 0x40, which takes a vector
//! (see "EOI" below). The indirect registers (§3.2):
//!
//! | index       | register                                                                  |
//! |-------------|---------------------------------------------------------------------------|
//! | 0x00        | IOAPICID (§3.2.1): bits 27:24 read/write, the rest 0                      |
//! | 0x01        | IOAPICVER (§3.2.2): read-only 0x0017_0020 (max. entry 0x17, version 0x20) |
//! | 0x02        | IOAPICARB (§3.2.3): read-only, bits 27:24 = the ID                        |
//! | 0x10..=0x3F | IOREDTBL[0..=23] (§3.2.4): entry n low dword 0x10 + 2n, high 0x11 + 2n    |
//!
//! Every other index reads 0 and ignores writes. The arbitration ID is "loaded when the IOAPIC
//! ID Register is written" (§3.2.3) and then rotates with APIC-bus arbitration; there is no
//! APIC bus here, so it stays equal to the ID (as in QEMU).
//!
//! A redirection entry (§3.2.4) holds the vector (bits 7:0), delivery mode (10:8), destination
//! mode (11, 1 = logical), Delivery Status (12, read-only), polarity (13), Remote IRR (14,
//! read-only), trigger mode (15, 1 = level), mask (16) and destination (63:56). At reset
//! every entry is masked (bit 16 set) and every other bit is 0 (the datasheet leaves the
//! others undefined). Writes to the two read-only bits are ignored; every other bit, reserved
//! ones included, is stored as written (as in QEMU), so an entry reads back what was written.
//! Delivery is instantaneous here (a message goes into the queue at once), so Delivery Status
//! always reads 0 ("idle").
//!
//! # Access sizes
//!
//! The datasheet only defines dword accesses: "All APIC registers are accessed using 32 bit
//! loads and stores" and "The IOWIN Register must be accessed as a Dword quantity" (§3.0; the
//! same section allows a byte write to load IOREGSEL). A guest can issue any size, so the model
//! defines the others, and nothing is undefined. Every access of 1 to 8 bytes at offset `o` is
//! served byte by byte: byte `k` of the access is byte `(o + k) & 3` of the 32-bit register at
//! `(o + k) & !3`. So
//!
//! - IOREGSEL (0x00-0x03) stores bits 7:0 only: byte 0 reads and writes the selection, bytes
//!   1-3 read 0 and writes to them are ignored;
//! - IOWIN (0x10-0x13) reads the corresponding bytes of the selected register, and a write
//!   changes just the bytes written, keeping the read-only bits. The bytes of one access that
//!   fall into the same register are merged and written to it once, so a dword write takes
//!   effect as one store (an entry never passes through a half-written state that could send
//!   a message);
//! - the EOI register (0x40-0x43) reads 0; a write that includes byte 0 (offset 0x40) is an EOI
//!   for the vector in that byte, a write of bytes 1-3 only does nothing;
//! - every other offset of the 4 KiB page (0x04-0x0F, 0x14-0x3F, 0x44-0xFFF) reads 0 and ignores
//!   writes. Registers are not repeated through the page.
//!
//! # Interrupt delivery
//!
//! [`IoApic::set_irq`] gives the *asserted* state of an input. Whether an input is active high
//! or low (the polarity bit 13) is the board's business: the caller has already applied it, as
//! in QEMU and KVM, so bit 13 is stored only. Inputs 24 and above do not exist and are ignored.
//!
//! - **Edge-triggered** entries (bit 15 = 0) send one message for each rising edge (low to
//!   asserted) while unmasked. Holding the input asserted or lowering it sends nothing. An edge
//!   on a masked input is lost: "Edge-sensitive interrupts signaled on a masked interrupt pin
//!   are ignored (i.e., not delivered or held pending)" (§3.2.4, bit 16), so unmasking later
//!   sends nothing either.
//! - **Level-triggered** entries (bit 15 = 1) send a message while the input is asserted, the
//!   entry unmasked and Remote IRR clear; sending sets Remote IRR, which "is set to 1 when
//!   local APIC(s) accept the level interrupt" (§3.2.4, bit 14; every message is accepted
//!   here). While Remote IRR is set nothing more is sent, whatever the input does. The entry
//!   is re-examined whenever one of those conditions may have changed: on an input change, after
//!   every write to its low dword (so unmasking, or switching to level, with the input asserted
//!   and Remote IRR clear sends), and after an EOI.
//! - **EOI**: Remote IRR "is set to 0 when an EOI message with a matching interrupt vector is
//!   received from a local APIC" (§3.2.4). Two ways lead there: a write to the EOI register
//!   (version 0x20; a guest with directed EOI uses it) and [`IoApic::eoi`], which a local APIC
//!   model calls for a broadcast EOI. Either clears Remote IRR in every level-triggered entry
//!   with that vector (several entries may share one) and, where the input is still asserted
//!   and the entry unmasked, sends again: "If the interrupt signal is still active after the
//!   IRR bit is reset, the I/O APIC treats it as a new interrupt" (Intel 82801AA datasheet,
//!   "EOI Message For Level Triggered Interrupts"). Edge-triggered entries are untouched.
//! - **Switching an entry to edge** clears its Remote IRR, whose "meaning is undefined for edge
//!   triggered interrupts" (§3.2.4). Real I/O APICs do this, QEMU models it, and Linux's
//!   `clear_IO_APIC_pin` and its EOI for version-0x11 chips rely on it (they rewrite a stuck
//!   level entry as edge and back).
//! - **Masking** a level entry after its message went out leaves Remote IRR as it is
//!   ("Changing the mask bit from unmasked to masked after the interrupt is accepted by a local
//!   APIC has no effect on that interrupt", §3.2.4); an EOI while masked clears it and sends
//!   nothing, and unmasking then sends if the input is still asserted.
//!
//! A message ([`IrqMessage`]) carries the entry's vector, delivery mode (bits 10:8, kept as the
//! raw 3-bit value: [`DELIVERY_FIXED`], [`DELIVERY_LOWEST_PRIORITY`], [`DELIVERY_SMI`],
//! [`DELIVERY_NMI`], [`DELIVERY_INIT`], [`DELIVERY_EXTINT`]; 3 and 6 are reserved and passed on
//! as they are), destination mode, the 8-bit destination field (bits 63:56; in physical mode
//! the 82093AA only uses bits 59:56, an xAPIC all eight) and trigger mode, all as they are when
//! the message is sent.
//!
//! **Illegal vectors.** The datasheet gives vectors as "10h-FEh" (§3.2.4), and local APICs
//! treat vectors 0-15 as illegal: a local APIC receiving one sets "Received Illegal Vector" in
//! its Error Status Register and sets no IRR bit (SDM Vol. 3A 10.5.2 "Valid Interrupt Vectors"
//! and 10.5.3 "Error Handling"; 11.5.x in recent editions). The I/O APIC itself sends the
//! message anyway. The model drops it at the source instead: a fixed or lowest-priority message
//! with a vector below [`MIN_VECTOR`] is not sent and, for a level-triggered entry, Remote IRR
//! stays clear (nothing accepted it), so writing a valid vector while the input is asserted
//! then sends. SMI, NMI, INIT and ExtINT messages do not use the vector (§3.2.4: "the vector
//! information is ignored"; ExtINT's vector comes from the 8259A), so they are sent whatever
//! it holds. Vector 0xFF is sent: the SDM only rules out 0-15.
//!
//! **The queue** holds at most [`MAX_QUEUED_MESSAGES`] messages. A guest can make messages
//! without bound (an EOI write while a level input stays asserted sends each time); if nobody
//! drains the queue, further messages are dropped and counted ([`IoApic::dropped_messages`])
//! rather than growing the hypervisor's heap. A dropped message counts as sent (Remote IRR is
//! set), exactly as if the local APIC had lost it.
//!
//! # Left out
//!
//! - The datasheet says SMI, NMI, INIT and ExtINT are treated as edge-triggered "even if
//!   programmed as level" (§3.2.4) and must be programmed edge; the model follows bit 15 for
//!   every delivery mode. Guests program them edge-triggered.
//! - No APIC bus: no arbitration (see IOAPICARB), no retries, no Delivery Status.
//! - The physical-destination restriction to bits 59:56 is not applied; see the message above.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::bus::{BusDevice, IoOutcome};

/// Guest-physical base of the I/O APIC's registers (the PC's default, §3.1 "FEC0 xy00h").
pub const IOAPIC_BASE: u64 = crate::vm::memmap::IOAPIC_BASE;
/// Length of the MMIO range the kernel registers: one 4 KiB page, though only the first
/// [`IOAPIC_REGISTER_WINDOW`] bytes hold registers.
pub const IOAPIC_MMIO_LEN: u64 = crate::vm::memmap::IOAPIC_SIZE;
/// The part of the page that holds registers (0x00-0xFF); the rest reads 0.
pub const IOAPIC_REGISTER_WINDOW: u64 = 0x100;

/// Offset of IOREGSEL, the register select (§3.1.1).
pub const IOREGSEL: u64 = 0x00;
/// Offset of IOWIN, the window onto the selected register (§3.1.2).
pub const IOWIN: u64 = 0x10;
/// Offset of the EOI register (version 0x20 I/O APICs).
pub const IOEOI: u64 = 0x40;

/// Index of IOAPICID (§3.2.1).
pub const REG_ID: u8 = 0x00;
/// Index of IOAPICVER (§3.2.2).
pub const REG_VER: u8 = 0x01;
/// Index of IOAPICARB (§3.2.3).
pub const REG_ARB: u8 = 0x02;
/// Index of the low dword of redirection entry 0 (§3.2.4); entry n is at `REG_REDTBL + 2n`.
pub const REG_REDTBL: u8 = 0x10;

/// Number of interrupt inputs and redirection entries.
pub const IOAPIC_PINS: u8 = 24;
/// IOAPICVER: maximum redirection entry 23 in bits 23:16, version 0x20 in bits 7:0 (disjoint
/// fields, so `+`).
pub const IOAPIC_VERSION: u32 = ((IOAPIC_PINS as u32 - 1) << 16) + 0x20;
/// IOAPICID and IOAPICARB: the ID is bits 27:24.
pub const ID_SHIFT: u32 = 24;
/// The ID is four bits wide.
pub const ID_MASK: u8 = 0x0f;

/// Redirection entry bits 7:0: the vector.
pub const RTE_VECTOR: u64 = 0xff;
/// Redirection entry bits 10:8: the delivery mode.
pub const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
/// Redirection entry bit 11: destination mode, 1 = logical, 0 = physical.
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// Redirection entry bit 12: Delivery Status (read-only; always 0 here).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Redirection entry bit 13: input polarity, 1 = active low (stored only).
pub const RTE_POLARITY_LOW: u64 = 1 << 13;
/// Redirection entry bit 14: Remote IRR (read-only).
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// Redirection entry bit 15: trigger mode, 1 = level, 0 = edge.
pub const RTE_LEVEL: u64 = 1 << 15;
/// Redirection entry bit 16: mask.
pub const RTE_MASKED: u64 = 1 << 16;
/// Redirection entry bits 63:56: the destination.
pub const RTE_DEST_SHIFT: u32 = 56;
/// The bits of a redirection entry a guest write cannot change (two single bits: `+`).
pub const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS + RTE_REMOTE_IRR;

/// Delivery mode 000: fixed.
pub const DELIVERY_FIXED: u8 = 0;
/// Delivery mode 001: lowest priority.
pub const DELIVERY_LOWEST_PRIORITY: u8 = 1;
/// Delivery mode 010: SMI.
pub const DELIVERY_SMI: u8 = 2;
/// Delivery mode 100: NMI.
pub const DELIVERY_NMI: u8 = 4;
/// Delivery mode 101: INIT.
pub const DELIVERY_INIT: u8 = 5;
/// Delivery mode 111: ExtINT (the vector comes from an 8259A's acknowledge cycle).
pub const DELIVERY_EXTINT: u8 = 7;

/// The lowest vector a fixed or lowest-priority message may carry (SDM Vol. 3A 10.5.2).
pub const MIN_VECTOR: u8 = 0x10;
/// How many messages wait in the queue at most; later ones are dropped and counted.
pub const MAX_QUEUED_MESSAGES: usize = 256;

/// An interrupt message sent by the I/O APIC to the local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqMessage {
    /// The entry's vector (bits 7:0).
    pub vector: u8,
    /// The entry's delivery mode (bits 10:8), one of the `DELIVERY_*` values or a reserved one.
    pub delivery_mode: u8,
    /// Logical destination mode (bit 11 set); physical otherwise.
    pub logical: bool,
    /// The destination field (bits 63:56).
    pub dest: u8,
    /// Level-triggered (bit 15 set); edge-triggered otherwise.
    pub level: bool,
}

/// The I/O APIC: registers, input levels and the queue of messages sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoApic {
    /// IOREGSEL bits 7:0.
    select: u8,
    /// IOAPICID bits 27:24.
    id: u8,
    /// The redirection table; bits 12 and 14 are the model's own state.
    entries: [u64; IOAPIC_PINS as usize],
    /// Asserted inputs, bit n for input n.
    lines: u32,
    /// Messages sent and not yet taken, oldest first.
    queue: VecDeque<IrqMessage>,
    /// Messages dropped because the queue was full.
    dropped: u64,
}

impl Default for IoApic {
    fn default() -> Self {
        IoApic::new()
    }
}

impl IoApic {
    /// The chip after reset: ID 0, IOREGSEL 0, every entry masked with all other bits 0, every
    /// input low, no message.
    pub fn new() -> Self {
        IoApic {
            select: 0,
            id: 0,
            entries: [RTE_MASKED; IOAPIC_PINS as usize],
            lines: 0,
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Reads the indirect register `index` (what IOWIN shows with IOREGSEL = `index`).
    pub fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << ID_SHIFT,
            REG_VER => IOAPIC_VERSION,
            _ => match Self::entry_half(index) {
                Some((pin, false)) => self.entries[pin] as u32,
                Some((pin, true)) => (self.entries[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    /// Writes the indirect register `index` (a dword store to IOWIN with IOREGSEL = `index`).
    pub fn write_register(&mut self, index: u8, value: u32) {
        self.write_register_bytes(index, value, u32::MAX);
    }

    /// Redirection entry `pin` as the guest reads it, or `None` for a pin that does not exist.
    pub fn redirection_entry(&self, pin: u8) -> Option<u64> {
        self.entries.get(usize::from(pin)).copied()
    }

    /// Drives input `pin`: `asserted` is its active state (polarity already applied). Inputs
    /// from [`IOAPIC_PINS`] up are ignored.
    pub fn set_irq(&mut self, pin: u8, asserted: bool) {
        if pin >= IOAPIC_PINS {
            return;
        }
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        if asserted {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let entry = self.entries[usize::from(pin)];
        if entry & RTE_LEVEL != 0 {
            self.service_level(usize::from(pin));
        } else if asserted && !was && entry & RTE_MASKED == 0 {
            // A rising edge on an unmasked edge-triggered input (§3.2.4 bits 15 and 16).
            self.send(entry);
        }
    }

    /// An EOI for `vector`, from a local APIC's broadcast or the EOI register: clears Remote IRR
    /// in every level-triggered entry with that vector and sends again where the input is still
    /// asserted (§3.2.4 bit 14).
    pub fn eoi(&mut self, vector: u8) {
        // Edge-triggered entries need no test: their Remote IRR is always clear (only a level
        // message sets it, and switching to edge clears it) and `service_level` skips them.
        for pin in 0..usize::from(IOAPIC_PINS) {
            let entry = self.entries[pin];
            if (entry & RTE_VECTOR) as u8 == vector {
                self.entries[pin] = entry & !RTE_REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }

    /// All messages sent since the last call, oldest first.
    pub fn take_messages(&mut self) -> Vec<IrqMessage> {
        self.queue.drain(..).collect()
    }

    /// The oldest message not yet taken.
    pub fn pop_message(&mut self) -> Option<IrqMessage> {
        self.queue.pop_front()
    }

    /// Whether a message waits in the queue.
    pub fn has_messages(&self) -> bool {
        !self.queue.is_empty()
    }

    /// How many messages were dropped because the queue held [`MAX_QUEUED_MESSAGES`].
    pub fn dropped_messages(&self) -> u64 {
        self.dropped
    }

    /// The redirection entry and half (`true` = high dword) an index selects (§3.2.4).
    fn entry_half(index: u8) -> Option<(usize, bool)> {
        let n = index.checked_sub(REG_REDTBL)?;
        let pin = usize::from(n / 2);
        (pin < usize::from(IOAPIC_PINS)).then_some((pin, n % 2 == 1))
    }

    /// Writes the bytes of register `index` selected by `mask` (0xff per byte lane) from
    /// `value`, keeping the other bytes and the read-only bits.
    fn write_register_bytes(&mut self, index: u8, value: u32, mask: u32) {
        // The kept bytes and the written ones are disjoint (`!mask`, `mask`): `+` merges them.
        let merged = (self.read_register(index) & !mask) + (value & mask);
        match index {
            // §3.2.1: the ID is bits 27:24; the arbitration ID follows it (§3.2.3).
            REG_ID => self.id = (merged >> ID_SHIFT) as u8 & ID_MASK,
            _ => match Self::entry_half(index) {
                Some((pin, true)) => {
                    let entry = &mut self.entries[pin];
                    *entry = (*entry & 0xffff_ffff) + (u64::from(merged) << 32);
                }
                Some((pin, false)) => {
                    let old = self.entries[pin];
                    // High half, written low half without the read-only bits, those bits: disjoint.
                    let mut entry = (old & !0xffff_ffff) + (u64::from(merged) & !RTE_READ_ONLY) + (old & RTE_READ_ONLY);
                    if entry & RTE_LEVEL == 0 {
                        // Remote IRR means nothing for an edge-triggered entry (§3.2.4 bit 14).
                        entry &= !RTE_REMOTE_IRR;
                    }
                    self.entries[pin] = entry;
                    self.service_level(pin);
                }
                // IOAPICVER, IOAPICARB and unknown indices are read-only or absent.
                None => {}
            },
        }
    }

    /// Sends for a level-triggered entry if it may: input asserted, unmasked, Remote IRR clear.
    /// A message that went out sets Remote IRR (§3.2.4 bit 14).
    fn service_level(&mut self, pin: usize) {
        let entry = self.entries[pin];
        let ready = entry & (RTE_LEVEL + RTE_MASKED + RTE_REMOTE_IRR) == RTE_LEVEL;
        if ready && self.lines & (1 << pin) != 0 && self.send(entry) {
            self.entries[pin] |= RTE_REMOTE_IRR;
        }
    }

    /// Queues the message `entry` describes; returns whether it was sent (see "Illegal
    /// vectors" in the module docs).
    fn send(&mut self, entry: u64) -> bool {
        let message = IrqMessage {
            vector: (entry & RTE_VECTOR) as u8,
            delivery_mode: (entry >> RTE_DELIVERY_MODE_SHIFT) as u8 & 7,
            logical: entry & RTE_DEST_LOGICAL != 0,
            dest: (entry >> RTE_DEST_SHIFT) as u8,
            level: entry & RTE_LEVEL != 0,
        };
        let uses_vector = matches!(message.delivery_mode, DELIVERY_FIXED | DELIVERY_LOWEST_PRIORITY);
        if uses_vector && message.vector < MIN_VECTOR {
            return false;
        }
        if self.queue.len() < MAX_QUEUED_MESSAGES {
            self.queue.push_back(message);
        } else {
            self.dropped += 1;
        }
        true
    }

    /// The 32-bit memory-mapped register at the dword-aligned `offset`, as read.
    fn read_mmio_dword(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(self.select),
            // The EOI register is write-only and reads 0, like everything else.
            _ => 0,
        }
    }

    /// Stores the bytes `mask` selects of `value` into the memory-mapped register at the
    /// dword-aligned `offset`.
    fn write_mmio_dword(&mut self, offset: u64, value: u32, mask: u32) {
        match offset {
            // §3.1.1: only bits 7:0 exist.
            IOREGSEL if mask & 0xff != 0 => self.select = value as u8,
            IOWIN => self.write_register_bytes(self.select, value, mask),
            IOEOI if mask & 0xff != 0 => self.eoi(value as u8),
            _ => {}
        }
    }
}

/// The dword-aligned register offset and byte lane of byte `k` of an access at `offset`, or
/// `None` past the end of the address space.
fn lane(offset: u64, k: usize) -> Option<(u64, u32)> {
    let at = offset.checked_add(k as u64)?;
    Some((at & !3, (at & 3) as u32))
}

impl BusDevice for IoApic {
    /// Byte k of the access is byte `(offset + k) & 3` of the register at `(offset + k) & !3`
    /// (see "Access sizes" in the module docs).
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (k, byte) in data.iter_mut().enumerate() {
            *byte = match lane(offset, k) {
                Some((reg, lane)) => (self.read_mmio_dword(reg) >> (8 * lane)) as u8,
                None => 0,
            };
        }
    }

    /// The bytes of the access falling into one register are merged and stored together, in
    /// the order of the access.
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        // (register offset, value, byte-lane mask) being gathered.
        let mut pending: Option<(u64, u32, u32)> = None;
        for (k, &byte) in data.iter().enumerate() {
            let Some((reg, lane)) = lane(offset, k) else { break };
            match &mut pending {
                Some((r, value, mask)) if *r == reg => {
                    *value |= u32::from(byte) << (8 * lane);
                    *mask |= 0xff << (8 * lane);
                }
                _ => {
                    if let Some((r, value, mask)) = pending {
                        self.write_mmio_dword(r, value, mask);
                    }
                    pending = Some((reg, u32::from(byte) << (8 * lane), 0xff << (8 * lane)));
                }
            }
        }
        if let Some((r, value, mask)) = pending {
            self.write_mmio_dword(r, value, mask);
        }
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::{handle, Bus, Space};
    use alloc::sync::Arc;
    use spin::Mutex;

    /// Index of entry `pin`'s low dword.
    fn low(pin: u8) -> u8 {
        REG_REDTBL + 2 * pin
    }

    /// Index of entry `pin`'s high dword.
    fn high(pin: u8) -> u8 {
        REG_REDTBL + 2 * pin + 1
    }

    /// A dword store through IOREGSEL and IOWIN, as a guest does it.
    fn mmio_write(a: &mut IoApic, index: u8, value: u32) {
        a.write(IOREGSEL, &u32::from(index).to_le_bytes());
        a.write(IOWIN, &value.to_le_bytes());
    }

    /// A dword load through IOREGSEL and IOWIN.
    fn mmio_read(a: &mut IoApic, index: u8) -> u32 {
        a.write(IOREGSEL, &u32::from(index).to_le_bytes());
        let mut d = [0u8; 4];
        a.read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    fn read_bytes(a: &mut IoApic, offset: u64, len: usize) -> Vec<u8> {
        let mut d = alloc::vec![0u8; len];
        a.read(offset, &mut d);
        d
    }

    /// Programs entry `pin` through MMIO: `low_bits` in the low dword, `dest` in bits 63:56.
    fn program(a: &mut IoApic, pin: u8, low_bits: u32, dest: u8) {
        mmio_write(a, high(pin), u32::from(dest) << 24);
        mmio_write(a, low(pin), low_bits);
    }

    const LEVEL: u32 = RTE_LEVEL as u32;
    const MASKED: u32 = RTE_MASKED as u32;
    const REMOTE_IRR: u32 = RTE_REMOTE_IRR as u32;

    fn fixed(vector: u8, level: bool) -> IrqMessage {
        IrqMessage { vector, delivery_mode: DELIVERY_FIXED, logical: false, dest: 0, level }
    }

    fn remote_irr(a: &IoApic, pin: u8) -> bool {
        a.redirection_entry(pin).unwrap() & RTE_REMOTE_IRR != 0
    }

    #[test]
    fn reset_state_masks_every_entry_and_clears_everything_else() {
        // §3.2.4: redirection entries come out of reset masked (bit 16); the other bits are
        // undefined on the chip and 0 here. §3.2.1 / §3.1.1: ID and IOREGSEL default to 0.
        let mut a = IoApic::new();
        for pin in 0..IOAPIC_PINS {
            assert_eq!(a.redirection_entry(pin), Some(RTE_MASKED), "entry {pin}");
            assert_eq!(mmio_read(&mut a, low(pin)), MASKED);
            assert_eq!(mmio_read(&mut a, high(pin)), 0);
        }
        let mut fresh = IoApic::new();
        assert_eq!(read_bytes(&mut fresh, IOREGSEL, 4), [0; 4]);
        assert_eq!(fresh.read_register(REG_ID), 0);
        assert_eq!(fresh.read_register(REG_ARB), 0);
        assert!(!fresh.has_messages());
        assert_eq!(fresh.pop_message(), None);
        assert_eq!(fresh.dropped_messages(), 0);
        assert_eq!(IoApic::default(), IoApic::new());
    }

    #[test]
    fn version_register_reads_0x00170020_and_ignores_writes() {
        // §3.2.2: maximum redirection entry 17h (24 entries) in bits 23:16; version 20h
        // (the 0x20 of ICH and QEMU, which have the EOI register) in bits 7:0. Read-only.
        let mut a = IoApic::new();
        assert_eq!(IOAPIC_VERSION, 0x0017_0020);
        assert_eq!(mmio_read(&mut a, REG_VER), 0x0017_0020);
        assert_eq!(((IOAPIC_VERSION >> 16) & 0xff) + 1, u32::from(IOAPIC_PINS));
        let before = a.clone();
        mmio_write(&mut a, REG_VER, 0xffff_ffff);
        mmio_write(&mut a, REG_VER, 0);
        assert_eq!(mmio_read(&mut a, REG_VER), 0x0017_0020);
        a.select = before.select;
        assert_eq!(a, before);
    }

    #[test]
    fn id_register_keeps_only_bits_27_24() {
        // §3.2.1: bits 27:24 are the ID (R/W), 31:28 and 23:0 are reserved (read 0 here).
        let mut a = IoApic::new();
        mmio_write(&mut a, REG_ID, 0xffff_ffff);
        assert_eq!(mmio_read(&mut a, REG_ID), 0x0f00_0000);
        mmio_write(&mut a, REG_ID, 0x0500_0000);
        assert_eq!(mmio_read(&mut a, REG_ID), 0x0500_0000);
        mmio_write(&mut a, REG_ID, 0xf0ff_ffff);
        assert_eq!(mmio_read(&mut a, REG_ID), 0);
    }

    #[test]
    fn arbitration_register_follows_the_id_and_is_read_only() {
        // §3.2.3: IOAPICARB is loaded when the ID is written (bits 27:24) and is read-only.
        let mut a = IoApic::new();
        mmio_write(&mut a, REG_ID, 0x0a00_0000);
        assert_eq!(mmio_read(&mut a, REG_ARB), 0x0a00_0000);
        mmio_write(&mut a, REG_ARB, 0x0300_0000);
        assert_eq!(mmio_read(&mut a, REG_ARB), 0x0a00_0000);
        assert_eq!(mmio_read(&mut a, REG_ID), 0x0a00_0000, "an ARB write does not reach the ID");
    }

    #[test]
    fn redirection_entries_sit_at_0x10_plus_2n_low_and_0x11_plus_2n_high() {
        // §3.2.4: IOREDTBL[n] is the dword pair 10h+2n (bits 31:0) and 11h+2n (bits 63:32).
        let mut a = IoApic::new();
        for pin in 0..IOAPIC_PINS {
            mmio_write(&mut a, low(pin), 0x0001_0000 | u32::from(0x20 + pin));
            mmio_write(&mut a, high(pin), u32::from(pin) << 24 | 0x00ab_cdef);
        }
        for pin in 0..IOAPIC_PINS {
            let expected = (u64::from(pin) << 56) | 0x00ab_cdef_0000_0000 | 0x1_0000 | u64::from(0x20 + pin);
            assert_eq!(a.redirection_entry(pin), Some(expected), "entry {pin}");
            assert_eq!(mmio_read(&mut a, low(pin)), expected as u32);
            assert_eq!(mmio_read(&mut a, high(pin)), (expected >> 32) as u32);
        }
        assert_eq!(low(23), 0x3e);
        assert_eq!(high(23), 0x3f);
        assert_eq!(a.redirection_entry(IOAPIC_PINS), None);
    }

    #[test]
    fn delivery_status_and_remote_irr_ignore_writes() {
        // §3.2.4: bit 12 (Delivery Status) and bit 14 (Remote IRR) are read-only; every other
        // bit of the low dword is stored as written.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(3), 0xffff_ffff);
        assert_eq!(mmio_read(&mut a, low(3)), 0xffff_afff);
        mmio_write(&mut a, low(3), REMOTE_IRR | RTE_DELIVERY_STATUS as u32 | 0x31);
        assert_eq!(mmio_read(&mut a, low(3)), 0x31);
        // A set Remote IRR survives a write of 0 to bit 14 while the entry stays level.
        mmio_write(&mut a, low(5), LEVEL | 0x40);
        a.set_irq(5, true);
        assert!(remote_irr(&a, 5));
        mmio_write(&mut a, low(5), LEVEL | MASKED | 0x40);
        assert_eq!(mmio_read(&mut a, low(5)), LEVEL | MASKED | REMOTE_IRR | 0x40);
        // The high dword is all read/write.
        mmio_write(&mut a, high(5), 0xffff_ffff);
        assert_eq!(mmio_read(&mut a, high(5)), 0xffff_ffff);
    }

    #[test]
    fn switching_an_entry_to_edge_clears_remote_irr() {
        // §3.2.4 bit 14: Remote IRR is undefined for edge-triggered entries; rewriting a stuck
        // level entry as edge clears it (Linux's clear_IO_APIC_pin relies on this).
        let mut a = IoApic::new();
        mmio_write(&mut a, low(9), LEVEL | 0x49);
        a.set_irq(9, true);
        assert!(remote_irr(&a, 9));
        a.take_messages();
        mmio_write(&mut a, low(9), MASKED | 0x49);
        assert!(!remote_irr(&a, 9));
        a.set_irq(9, false);
        // Back to level, unmasked, with the input asserted again: delivered at once.
        a.set_irq(9, true);
        mmio_write(&mut a, low(9), LEVEL | 0x49);
        assert_eq!(a.take_messages(), [fixed(0x49, true)]);
    }

    #[test]
    fn unknown_indices_read_zero_and_ignore_writes() {
        // §3.2: only indices 00h-02h and 10h-3Fh exist.
        let mut a = IoApic::new();
        let unknown = (0x03..0x10u8).chain(0x40..=0xff);
        for index in unknown.clone() {
            let before = a.clone();
            mmio_write(&mut a, index, 0xffff_ffff);
            assert_eq!(mmio_read(&mut a, index), 0, "index {index:#x}");
            a.select = before.select;
            assert_eq!(a, before, "index {index:#x} changed state");
        }
        for index in unknown {
            assert_eq!(a.read_register(index), 0);
        }
    }

    #[test]
    fn ioregsel_byte_write_then_byte_read() {
        // §3.0 allows a byte write to load IOREGSEL; §3.1.1: bits 7:0 select, 31:8 reserved.
        let mut a = IoApic::new();
        a.write(IOREGSEL, &[0x12]);
        assert_eq!(read_bytes(&mut a, IOREGSEL, 1), [0x12]);
        assert_eq!(read_bytes(&mut a, IOREGSEL, 4), [0x12, 0, 0, 0]);
        // The window now shows entry 1's low dword.
        assert_eq!(read_bytes(&mut a, IOWIN, 4), MASKED.to_le_bytes());
    }

    #[test]
    fn ioregsel_upper_bytes_read_zero_and_ignore_writes() {
        // §3.1.1: only bits 7:0 are stored.
        let mut a = IoApic::new();
        a.write(IOREGSEL, &[0x01, 0xaa, 0xbb, 0xcc]);
        assert_eq!(read_bytes(&mut a, IOREGSEL, 4), [0x01, 0, 0, 0]);
        // Writes of bytes 1-3 alone leave the selection alone.
        a.write(IOREGSEL + 1, &[0x10, 0x10, 0x10]);
        a.write(IOREGSEL + 2, &[0x10, 0x10]);
        a.write(IOREGSEL + 3, &[0x10]);
        assert_eq!(read_bytes(&mut a, IOREGSEL, 4), [0x01, 0, 0, 0]);
        assert_eq!(read_bytes(&mut a, IOREGSEL + 1, 3), [0, 0, 0]);
        // A word write at offset 0 stores its low byte.
        a.write(IOREGSEL, &[0x02, 0xff]);
        assert_eq!(read_bytes(&mut a, IOREGSEL, 2), [0x02, 0]);
    }

    #[test]
    fn iowin_word_read_of_the_high_half() {
        // Narrow accesses (the datasheet defines only dwords, §3.0): a word at 0x12 is bits
        // 31:16 of the selected register, a byte at 0x13 bits 31:24.
        let mut a = IoApic::new();
        a.write(IOREGSEL, &[REG_VER]);
        assert_eq!(read_bytes(&mut a, IOWIN + 2, 2), [0x17, 0x00]);
        assert_eq!(read_bytes(&mut a, IOWIN, 2), [0x20, 0x00]);
        assert_eq!(read_bytes(&mut a, IOWIN + 1, 2), [0x00, 0x17]);
        mmio_write(&mut a, REG_ID, 0x0700_0000);
        assert_eq!(read_bytes(&mut a, IOWIN + 3, 1), [0x07]);
    }

    #[test]
    fn iowin_byte_write_changes_only_that_byte() {
        // A partial write changes only the bytes written, keeping the read-only bits (§3.2.4).
        let mut a = IoApic::new();
        mmio_write(&mut a, low(2), LEVEL | MASKED | 0x0800 | 0x31);
        a.write(IOREGSEL, &[low(2)]);
        a.write(IOWIN, &[0x42]); // the vector only
        assert_eq!(mmio_read(&mut a, low(2)), LEVEL | MASKED | 0x0800 | 0x42);
        a.write(IOREGSEL, &[low(2)]);
        a.write(IOWIN + 1, &[0x00]); // delivery mode, destination mode, trigger: edge, physical
        assert_eq!(mmio_read(&mut a, low(2)), MASKED | 0x42);
        a.write(IOREGSEL, &[low(2)]);
        a.write(IOWIN + 1, &[0xff]); // bits 12 and 14 are read-only
        assert_eq!(mmio_read(&mut a, low(2)), MASKED | 0xaf00 | 0x42);
        // The destination byte of the high dword.
        a.write(IOREGSEL, &[high(2)]);
        a.write(IOWIN + 3, &[0x0e]);
        assert_eq!(a.redirection_entry(2).unwrap() >> 32, 0x0e00_0000);
        // A word write to the ID register: bits 31:16, of which 27:24 stick.
        a.write(IOREGSEL, &[REG_ID]);
        a.write(IOWIN + 2, &[0xff, 0xf3]);
        assert_eq!(mmio_read(&mut a, REG_ID), 0x0300_0000);
        // A byte write to bits 7:0 of the ID leaves the ID alone.
        a.write(IOREGSEL, &[REG_ID]);
        a.write(IOWIN, &[0xff]);
        assert_eq!(mmio_read(&mut a, REG_ID), 0x0300_0000);
    }

    #[test]
    fn one_access_writes_a_register_once() {
        // The bytes of one access in one register are merged: a dword that changes the vector
        // and masks the entry never sends, even if the entry could send between the bytes.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(4), LEVEL | 0x05); // illegal vector: nothing sent, IRR clear
        a.set_irq(4, true);
        assert!(!a.has_messages());
        mmio_write(&mut a, low(4), LEVEL | MASKED | 0x40);
        assert!(!a.has_messages(), "byte 0 alone would have sent 0x40");
        // An 8-byte access at IOWIN is the dword and four bytes of nothing.
        a.write(IOREGSEL, &[low(4)]);
        a.write(IOWIN, &[0x41, 0x80, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(a.take_messages(), [fixed(0x41, true)]);
    }

    #[test]
    fn eoi_register_reads_zero_and_acts_on_byte_0_only() {
        // Version 0x20 EOI register at 0x40 (6700PXH §3.8.2.5): write-only, the vector in bits
        // 7:0. Reads give 0; writes of bytes 1-3 alone do nothing.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(6), LEVEL | 0x66);
        a.set_irq(6, true);
        a.take_messages();
        assert_eq!(read_bytes(&mut a, IOEOI, 4), [0; 4]);
        for (offset, bytes) in [(IOEOI + 1, &[0x66u8, 0x66, 0x66][..]), (IOEOI + 2, &[0x66]), (IOEOI + 3, &[0x66])] {
            a.write(offset, bytes);
            assert!(remote_irr(&a, 6), "write at {offset:#x}");
        }
        a.write(IOEOI, &[0x65]);
        assert!(remote_irr(&a, 6), "another vector");
        a.write(IOEOI, &[0x66]);
        assert_eq!(a.take_messages(), [fixed(0x66, true)], "input still asserted: sent again");
        // A dword write works the same, its upper bytes ignored.
        a.write(IOEOI, &[0x66, 0xff, 0xff, 0xff]);
        assert_eq!(a.take_messages(), [fixed(0x66, true)]);
        // A write of bytes 1-3 is not an EOI for vector 0 either (an NMI entry may hold 0).
        mmio_write(&mut a, low(7), LEVEL | u32::from(DELIVERY_NMI) << 8);
        a.set_irq(7, true);
        assert_eq!(a.take_messages().len(), 1);
        a.write(IOEOI + 1, &[0x66, 0x66, 0x66]);
        assert!(!a.has_messages(), "no EOI, so nothing sent again");
        a.set_irq(7, false);
        a.write(IOEOI + 1, &[0x66, 0x66, 0x66]);
        assert!(remote_irr(&a, 7));
        a.write(IOEOI, &[0x00]);
        assert!(!remote_irr(&a, 7));
    }

    #[test]
    fn the_register_interface_is_the_iowin_interface() {
        // read_register / write_register are dword accesses through IOREGSEL and IOWIN (§3.1).
        let mut a = IoApic::new();
        let mut b = IoApic::new();
        for (index, value) in [(REG_ID, 0xffff_ffffu32), (REG_VER, 0), (low(4), 0xffff_ffff), (high(4), 0x1234_5678), (0x40, 1)] {
            a.write_register(index, value);
            mmio_write(&mut b, index, value);
            assert_eq!(a.read_register(index), mmio_read(&mut b, index), "index {index:#x}");
        }
        b.select = a.select;
        assert_eq!(a, b);
        assert_eq!(a.read_register(REG_ID), 0x0f00_0000);
        assert_eq!(a.redirection_entry(4), Some(0x1234_5678_ffff_afff));
    }

    #[test]
    fn other_offsets_read_zero_and_ignore_writes() {
        // Only 0x00, 0x10 and 0x40 hold registers; nothing repeats through the 4 KiB page.
        let mut a = IoApic::new();
        mmio_write(&mut a, REG_ID, 0x0100_0000);
        a.write(IOREGSEL, &[REG_ID]);
        let before = a.clone();
        for offset in [0x04u64, 0x08, 0x0c, 0x14, 0x20, 0x30, 0x3c, 0x44, 0x50, 0xf0, 0xfc, 0x100, 0x110, 0x140, 0x800, 0xffc] {
            assert_eq!(read_bytes(&mut a, offset, 4), [0; 4], "offset {offset:#x}");
            a.write(offset, &[0x10, 0, 0, 0]);
            assert_eq!(a, before, "offset {offset:#x}");
        }
        // An 8-byte read at 0x0c: four bytes of nothing, then IOWIN (the ID register).
        assert_eq!(read_bytes(&mut a, 0x0c, 8), [0, 0, 0, 0, 0, 0, 0, 0x01]);
        assert_eq!(read_bytes(&mut a, IOWIN, 8), [0, 0, 0, 0x01, 0, 0, 0, 0]);
    }

    #[test]
    fn an_access_straddling_two_registers_splits_by_byte() {
        // Byte k goes to register (o+k) & !3: a dword at 0x0e writes IOWIN's bytes 0 and 1
        // (bytes 0x0e-0x0f are nothing).
        let mut a = IoApic::new();
        a.write(IOREGSEL, &[low(0)]);
        a.write(0x0e, &[0xaa, 0xbb, 0x30, 0x01]);
        assert_eq!(mmio_read(&mut a, low(0)), MASKED | 0x0130);
        assert_eq!(read_bytes(&mut a, 0x0e, 4), [0, 0, 0x30, 0x01]);
    }

    #[test]
    fn the_bus_reaches_the_registers_at_0xfec00000() {
        // Registered as the kernel does: 0xFEC0_0000, 4 KiB.
        let apic = Arc::new(Mutex::new(IoApic::new()));
        let mut bus = Bus::new();
        bus.insert(Space::Mmio, IOAPIC_BASE, IOAPIC_MMIO_LEN, apic.clone()).unwrap();
        bus.write(Space::Mmio, IOAPIC_BASE, &u32::from(REG_VER).to_le_bytes());
        let mut d = [0u8; 4];
        assert!(bus.read(Space::Mmio, IOAPIC_BASE + IOWIN, &mut d));
        assert_eq!(u32::from_le_bytes(d), IOAPIC_VERSION);
        bus.write(Space::Mmio, IOAPIC_BASE, &u32::from(low(1)).to_le_bytes());
        bus.write(Space::Mmio, IOAPIC_BASE + IOWIN, &0x31u32.to_le_bytes());
        apic.lock().set_irq(1, true);
        assert_eq!(apic.lock().take_messages(), [fixed(0x31, false)]);
        // The last byte of the page is the device's and reads 0.
        let mut last = [0xeeu8; 1];
        assert!(bus.read(Space::Mmio, IOAPIC_BASE + IOAPIC_MMIO_LEN - 1, &mut last));
        assert_eq!(last, [0]);
        let _ = handle(IoApic::new()); // the model is Send
    }

    #[test]
    fn edge_entry_sends_one_message_per_rising_edge() {
        // §3.2.4 bit 15 = 0: an edge on an unmasked input is delivered; holding or lowering
        // the input is not an edge.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(1), 0x31);
        a.set_irq(1, true);
        assert_eq!(a.take_messages(), [fixed(0x31, false)]);
        a.set_irq(1, true);
        a.set_irq(1, false);
        a.set_irq(1, false);
        assert!(!a.has_messages());
        a.set_irq(1, true);
        a.set_irq(1, false);
        a.set_irq(1, true);
        assert_eq!(a.take_messages(), [fixed(0x31, false), fixed(0x31, false)]);
        // Edge entries never get Remote IRR and ignore EOIs.
        assert!(!remote_irr(&a, 1));
        a.eoi(0x31);
        assert!(!a.has_messages());
    }

    #[test]
    fn masked_edge_is_lost_not_held_pending() {
        // §3.2.4 bit 16: "Edge-sensitive interrupts signaled on a masked interrupt pin are
        // ignored (i.e., not delivered or held pending)".
        let mut a = IoApic::new();
        mmio_write(&mut a, low(7), MASKED | 0x37);
        a.set_irq(7, true);
        assert!(!a.has_messages());
        mmio_write(&mut a, low(7), 0x37);
        assert!(!a.has_messages(), "unmasking with the input high sends nothing");
        a.set_irq(7, false);
        a.set_irq(7, true);
        assert_eq!(a.take_messages(), [fixed(0x37, false)]);
    }

    #[test]
    fn level_entry_sends_once_and_sets_remote_irr() {
        // §3.2.4 bits 14-15: a level entry sends while the input is asserted, then Remote IRR
        // holds further messages back until an EOI.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(10), LEVEL | 0x4a);
        assert!(!remote_irr(&a, 10));
        a.set_irq(10, true);
        assert_eq!(a.take_messages(), [fixed(0x4a, true)]);
        assert!(remote_irr(&a, 10));
        assert_eq!(mmio_read(&mut a, low(10)), LEVEL | REMOTE_IRR | 0x4a);
        // The input going low and high again sends nothing while Remote IRR is set.
        a.set_irq(10, true);
        a.set_irq(10, false);
        a.set_irq(10, true);
        assert!(!a.has_messages());
        assert!(remote_irr(&a, 10), "lowering the input does not clear Remote IRR");
    }

    #[test]
    fn eoi_register_clears_remote_irr_and_nothing_more_when_the_input_is_low() {
        // §3.2.4 bit 14: "set to 0 when an EOI message with a matching interrupt vector is
        // received"; with the input deasserted there is nothing to send.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(11), LEVEL | 0x4b);
        a.set_irq(11, true);
        a.take_messages();
        a.set_irq(11, false);
        a.write(IOEOI, &0x4bu32.to_le_bytes());
        assert!(!remote_irr(&a, 11));
        assert!(!a.has_messages());
        // The next assertion is a new interrupt.
        a.set_irq(11, true);
        assert_eq!(a.take_messages(), [fixed(0x4b, true)]);
    }

    #[test]
    fn eoi_with_the_input_still_asserted_sends_again() {
        // "If the interrupt signal is still active after the IRR bit is reset, the I/O APIC
        // treats it as a new interrupt" (82801AA, EOI message): one message per EOI.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(12), LEVEL | 0x4c);
        a.set_irq(12, true);
        assert_eq!(a.take_messages().len(), 1);
        for _ in 0..3 {
            a.write(IOEOI, &[0x4c]);
            assert_eq!(a.take_messages(), [fixed(0x4c, true)]);
            assert!(remote_irr(&a, 12), "set again by the new message");
        }
    }

    #[test]
    fn broadcast_eoi_from_a_local_apic_does_the_same() {
        // IoApic::eoi is the EOI message a local APIC broadcasts (§3.2.4 bit 14).
        let mut a = IoApic::new();
        mmio_write(&mut a, low(13), LEVEL | 0x4d);
        a.set_irq(13, true);
        a.take_messages();
        a.eoi(0x4e);
        assert!(remote_irr(&a, 13), "a different vector leaves it set");
        a.eoi(0x4d);
        assert_eq!(a.take_messages(), [fixed(0x4d, true)]);
        a.set_irq(13, false);
        a.eoi(0x4d);
        assert!(!remote_irr(&a, 13));
        assert!(!a.has_messages());
    }

    #[test]
    fn eoi_clears_every_level_entry_with_the_vector_and_no_other() {
        // 6700PXH §3.8.2.5: entries sharing a vector all have Remote IRR cleared. Edge entries
        // with that vector and level entries with other vectors are untouched.
        let mut a = IoApic::new();
        for pin in [14u8, 15] {
            mmio_write(&mut a, low(pin), LEVEL | 0x50);
        }
        mmio_write(&mut a, low(16), LEVEL | 0x51);
        mmio_write(&mut a, low(17), 0x50);
        for pin in 14..=17 {
            a.set_irq(pin, true);
        }
        assert_eq!(a.take_messages(), [fixed(0x50, true), fixed(0x50, true), fixed(0x51, true), fixed(0x50, false)]);
        a.set_irq(15, false);
        a.eoi(0x50);
        assert!(remote_irr(&a, 14), "pin 14 still asserted: sent again");
        assert!(!remote_irr(&a, 15));
        assert!(remote_irr(&a, 16));
        assert_eq!(a.take_messages(), [fixed(0x50, true)], "only pin 14 sends, not edge pin 17");
    }

    #[test]
    fn masked_level_input_sends_when_unmasked() {
        // §3.2.4 bit 16: a masked level input delivers nothing; unmasking it while asserted
        // with Remote IRR clear delivers (the entry is re-examined after every low-dword write).
        let mut a = IoApic::new();
        mmio_write(&mut a, low(18), LEVEL | MASKED | 0x52);
        a.set_irq(18, true);
        assert!(!a.has_messages());
        assert!(!remote_irr(&a, 18));
        mmio_write(&mut a, low(18), LEVEL | 0x52);
        assert_eq!(a.take_messages(), [fixed(0x52, true)]);
        // Rewriting the entry unchanged while Remote IRR is set sends nothing.
        mmio_write(&mut a, low(18), LEVEL | 0x52);
        assert!(!a.has_messages());
        // Unmasking with the input low sends nothing.
        let mut b = IoApic::new();
        mmio_write(&mut b, low(18), LEVEL | MASKED | 0x52);
        mmio_write(&mut b, low(18), LEVEL | 0x52);
        assert!(!b.has_messages());
    }

    #[test]
    fn masking_after_delivery_keeps_remote_irr_until_eoi() {
        // §3.2.4 bit 16: masking after the local APIC accepted the interrupt has no effect on
        // it. An EOI while masked clears Remote IRR and sends nothing; unmasking then sends.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(19), LEVEL | 0x53);
        a.set_irq(19, true);
        a.take_messages();
        mmio_write(&mut a, low(19), LEVEL | MASKED | 0x53);
        assert!(remote_irr(&a, 19));
        a.eoi(0x53);
        assert!(!remote_irr(&a, 19));
        assert!(!a.has_messages());
        mmio_write(&mut a, low(19), LEVEL | 0x53);
        assert_eq!(a.take_messages(), [fixed(0x53, true)]);
    }

    #[test]
    fn switching_to_level_with_the_input_asserted_sends() {
        // The entry is re-examined after every write to its low dword: an unmasked edge entry
        // whose input is held asserted becomes a pending level interrupt.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(20), 0x54);
        a.set_irq(20, true);
        assert_eq!(a.take_messages(), [fixed(0x54, false)]);
        mmio_write(&mut a, low(20), LEVEL | 0x55);
        assert_eq!(a.take_messages(), [fixed(0x55, true)]);
        // Writing the high dword does not re-examine (and the entry is waiting for an EOI).
        mmio_write(&mut a, high(20), 0x0100_0000);
        assert!(!a.has_messages());
    }

    #[test]
    fn pins_from_24_up_are_ignored() {
        // §3.2.2: the maximum redirection entry is 23; there is no input 24.
        let mut a = IoApic::new();
        for pin in 0..IOAPIC_PINS {
            mmio_write(&mut a, low(pin), 0x60);
        }
        let before = a.clone();
        for pin in [24u8, 25, 31, 32, 200, 255] {
            a.set_irq(pin, true);
            a.set_irq(pin, false);
            a.set_irq(pin, true);
        }
        assert_eq!(a, before);
        a.set_irq(23, true);
        assert_eq!(a.take_messages(), [fixed(0x60, false)], "input 23 is the last one");
    }

    #[test]
    fn illegal_vectors_are_not_sent_in_fixed_and_lowest_priority_modes() {
        // §3.2.4: vectors are 10h-FEh; a local APIC rejects 0-15 (SDM Vol. 3A 10.5.2). The
        // model drops such messages at the source.
        let mut a = IoApic::new();
        for mode in [DELIVERY_FIXED, DELIVERY_LOWEST_PRIORITY] {
            for vector in [0x00u8, 0x01, 0x0f] {
                mmio_write(&mut a, low(0), u32::from(mode) << 8 | u32::from(vector));
                a.set_irq(0, true);
                a.set_irq(0, false);
                assert!(!a.has_messages(), "mode {mode} vector {vector:#x}");
            }
            for vector in [0x10u8, 0xfe, 0xff] {
                mmio_write(&mut a, low(0), u32::from(mode) << 8 | u32::from(vector));
                a.set_irq(0, true);
                a.set_irq(0, false);
                let m = a.pop_message().unwrap();
                assert_eq!((m.vector, m.delivery_mode), (vector, mode));
            }
        }
    }

    #[test]
    fn illegal_vector_on_a_level_entry_leaves_remote_irr_clear() {
        // Nothing accepted the message, so Remote IRR stays clear and a valid vector written
        // while the input is asserted is delivered.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(2), LEVEL | 0x0e);
        a.set_irq(2, true);
        assert!(!a.has_messages());
        assert!(!remote_irr(&a, 2));
        a.eoi(0x0e);
        assert!(!a.has_messages());
        mmio_write(&mut a, low(2), LEVEL | 0x22);
        assert_eq!(a.take_messages(), [fixed(0x22, true)]);
        assert!(remote_irr(&a, 2));
    }

    #[test]
    fn modes_without_a_vector_are_sent_whatever_it_holds() {
        // §3.2.4: for SMI, NMI, INIT and ExtINT the vector is not used, so 0 is fine.
        let mut a = IoApic::new();
        for mode in [DELIVERY_SMI, DELIVERY_NMI, DELIVERY_INIT, DELIVERY_EXTINT, 3, 6] {
            mmio_write(&mut a, low(0), u32::from(mode) << 8);
            a.set_irq(0, true);
            a.set_irq(0, false);
            assert_eq!(a.take_messages(), [IrqMessage { delivery_mode: mode, ..fixed(0, false) }], "mode {mode}");
        }
    }

    #[test]
    fn messages_carry_the_entry_fields_at_the_time_of_sending() {
        // §3.2.4: delivery mode 10:8, destination mode 11, trigger mode 15, destination 63:56.
        let mut a = IoApic::new();
        program(&mut a, 8, 0x0100 | 0x0800 | 0x38, 0xf0); // lowest priority, logical
        program(&mut a, 21, 0x0400 | LEVEL, 0x03); // NMI, physical, level (kept as programmed)
        program(&mut a, 22, 0x0700, 0xff); // ExtINT
        a.set_irq(8, true);
        a.set_irq(21, true);
        a.set_irq(22, true);
        assert_eq!(
            a.take_messages(),
            [
                IrqMessage { vector: 0x38, delivery_mode: DELIVERY_LOWEST_PRIORITY, logical: true, dest: 0xf0, level: false },
                IrqMessage { vector: 0x00, delivery_mode: DELIVERY_NMI, logical: false, dest: 0x03, level: true },
                IrqMessage { vector: 0x00, delivery_mode: DELIVERY_EXTINT, logical: false, dest: 0xff, level: false },
            ]
        );
        // A new destination applies to the next message.
        mmio_write(&mut a, high(8), 0x0200_0000);
        a.set_irq(8, false);
        a.set_irq(8, true);
        assert_eq!(a.pop_message().unwrap().dest, 0x02);
        // Reserved high-dword bits do not leak into the destination.
        mmio_write(&mut a, high(8), 0x00ff_ffff);
        a.set_irq(8, false);
        a.set_irq(8, true);
        assert_eq!(a.pop_message().unwrap().dest, 0x00);
    }

    #[test]
    fn polarity_bit_is_stored_only() {
        // set_irq takes the asserted state; bit 13 (§3.2.4) is the board's business.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(3), RTE_POLARITY_LOW as u32 | 0x33);
        assert_eq!(mmio_read(&mut a, low(3)), 0x2033);
        a.set_irq(3, false);
        assert!(!a.has_messages());
        a.set_irq(3, true);
        assert_eq!(a.take_messages(), [fixed(0x33, false)]);
    }

    #[test]
    fn messages_come_out_oldest_first() {
        let mut a = IoApic::new();
        for pin in 0..4u8 {
            mmio_write(&mut a, low(pin), 0x70 + u32::from(pin));
        }
        for pin in [2u8, 0, 3, 1] {
            a.set_irq(pin, true);
        }
        assert!(a.has_messages());
        assert_eq!(a.pop_message().unwrap().vector, 0x72);
        assert_eq!(a.take_messages().iter().map(|m| m.vector).collect::<Vec<_>>(), [0x70, 0x73, 0x71]);
        assert!(!a.has_messages());
        assert!(a.take_messages().is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_messages() {
        // A guest can make messages without bound (EOI writes with a level input asserted);
        // the queue stops at MAX_QUEUED_MESSAGES.
        let mut a = IoApic::new();
        mmio_write(&mut a, low(5), LEVEL | 0x45);
        a.set_irq(5, true);
        for _ in 0..MAX_QUEUED_MESSAGES + 9 {
            a.write(IOEOI, &[0x45]);
        }
        assert_eq!(a.dropped_messages(), 10);
        assert!(remote_irr(&a, 5), "a dropped message counts as sent");
        assert_eq!(a.take_messages().len(), MAX_QUEUED_MESSAGES);
        a.write(IOEOI, &[0x45]);
        assert_eq!(a.take_messages().len(), 1, "room again");
        assert_eq!(a.dropped_messages(), 10);
    }

    #[test]
    fn no_offset_or_size_panics() {
        // Every offset of the page, every size 1-8, reads and writes, with IOREGSEL pointing
        // at each kind of register; plus offsets the bus never sends.
        for select in [REG_ID, REG_VER, REG_ARB, 0x03, low(0), high(23), 0x40, 0xff] {
            let mut a = IoApic::new();
            mmio_write(&mut a, low(0), LEVEL | 0x20);
            a.set_irq(0, true);
            for offset in 0..IOAPIC_MMIO_LEN {
                for size in 1..=8usize {
                    a.write(IOREGSEL, &[select]);
                    let mut d = alloc::vec![0u8; size];
                    a.read(offset, &mut d);
                    for (k, &b) in d.iter().enumerate() {
                        let at = offset + k as u64;
                        let expected = match at {
                            0x00 => select,
                            0x10..=0x13 => (a.read_register(select) >> (8 * (at - 0x10))) as u8,
                            _ => 0,
                        };
                        assert_eq!(b, expected, "byte {k} of {offset:#x}+{size}, IOREGSEL {select:#x}");
                    }
                    assert_eq!(a.write(offset, &d), IoOutcome::Done);
                    assert_eq!(a.write(offset, &[0xff; 8][..size]), IoOutcome::Done);
                }
            }
            for offset in [u64::MAX, u64::MAX - 3, 1 << 63] {
                let mut d = [0xeeu8; 8];
                a.read(offset, &mut d);
                assert_eq!(d, [0; 8]);
                a.write(offset, &[0xff; 8]);
            }
            a.read(0, &mut []);
            a.write(0, &[]);
        }
    }
}
