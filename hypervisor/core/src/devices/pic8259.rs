//! Intel 8259A PIC pair of the PC/AT (master at 0x20/0x21, slave at 0xA0/0xA1 cascaded on master IR2), as a pure state machine.
//!
//! Every guest owns one [`Pic`]. The exit handler forwards guest `IN`/`OUT` on ports 0x20, 0x21,
//! 0xA0 and 0xA1 (and the ELCR pair 0x4D0/0x4D1) to [`Pic::read`] / [`Pic::write`]; device models
//! drive the sixteen inputs with [`Pic::set_irq`]; before each VM entry the hypervisor asks
//! [`Pic::has_interrupt`] (the level of the master's INT pin, i.e. the CPU's INTR) and, when the
//! guest can take an interrupt (RFLAGS.IF set, no interrupt shadow), runs the acknowledge cycle
//! with [`Pic::acknowledge`] and injects the vector it returns. Nothing here touches hardware or
//! keeps time, so all of it is tested on the host.
//!
//! The rules follow the Intel 8259A datasheet ("8259A Programmable Interrupt Controller
//! (8259A/8259A-2)", order number 231468; its sections "Interrupt Sequence", "Initialization
//! Command Words", "Operation Command Words", "Fully Nested Mode", "End of Interrupt (EOI)",
//! "Automatic Rotation", "Specific Rotation", "Special Mask Mode", "Poll Command", "Reading the
//! 8259A Status", "Edge and Level Triggered Modes", "The Special Fully Nested Mode" and
//! "Cascade Mode" are cited by name below). Where the datasheet leaves room, the model does what
//! QEMU's `hw/intc/i8259.c` does, because that is what Linux and other guests are known to work
//! with.
//!
//! # Design
//!
//! Each of the two chips is a bundle of the datasheet's registers (IRR, ISR,
//! IMR), the programmed initialisation words and the OCW state (read-register select, poll,
//! special mask, rotation), plus the levels of its eight IR inputs, which the edge detector
//! needs. Priority is kept as "the IR level that currently has the highest priority" (0 after
//! initialisation, moved by the rotation commands); resolving a request is "the first set bit
//! of `IRR & !IMR`, walking from that level upwards modulo 8", and it wins if it has higher
//! priority than every in-service level ("Fully Nested Mode").
//!
//! The wiring is the PC/AT's: the slave's INT output drives the master's IR2 input. After every
//! operation the model recomputes the slave's INT and feeds it to master IR2 like any other
//! edge-triggered input, so a slave request appears in the master's IRR bit 2. During the
//! acknowledge cycle of the slave (and a poll read of it, which is an acknowledge too) the
//! slave's INT is dropped and then re-evaluated, as Bochs does: a slave request that is still
//! pending afterwards (auto-EOI on the slave, special mask mode, special fully nested mode)
//! reaches the master as a fresh edge instead of being lost behind an INT that never fell.
//!
//! # Initialisation
//!
//! A command-port write with D4 = 1 is ICW1 and starts the sequence ICW2 (vector base: bits
//! 7:3, bits 2:0 ignored, as in 8086 mode), ICW3 (only in cascade mode, `SNGL` = 0: on the
//! master a bit per IR line with a slave, on the slave its ID) and ICW4 (only if ICW1 `IC4` =
//! 1), all on the data port. ICW1 itself, per "Initialization Command Words", resets the edge
//! sense circuit (a line that is already high must go low and high again to request; latched
//! requests are dropped), clears the IMR, gives IR7 the lowest priority, clears special mask
//! mode and selects IRR for status reads, and, when `IC4` = 0, zeroes every ICW4 function. Like
//! QEMU it also clears the ISR and cancels a pending poll and rotate-in-auto-EOI.
//!
//! A chip whose sequence has not completed (never initialised since power-on, or between a
//! new ICW1 and its last ICW) never asserts INT: [`Pic::has_interrupt`] is false and
//! [`Pic::acknowledge`] returns `None` while the master is in that state, and the slave is
//! silent towards the master while it is. Requests are still latched in IRR meanwhile (but ICW1
//! drops them, see above).
//!
//! **Power-on IMR.** The datasheet leaves the registers undefined until ICW1. The model starts
//! with both IMRs at 0xFF (everything masked), the state a guest without firmware has to
//! program anyway; OCW1 writes (IMR) are accepted before initialisation, which Linux's probe
//! (write 0xFB or 0xFF to 0x21 and read it back) relies on. ICW1 clears the IMR as the
//! datasheet says, so after the ICW sequence every line is unmasked until the guest writes one.
//!
//! # Acknowledge and spurious interrupts
//!
//! [`Pic::acknowledge`] is the two-pulse 8086 INTA sequence ("Interrupt Sequence"): the master
//! resolves its highest-priority request, sets its ISR bit (not in auto-EOI mode) and clears the
//! IRR bit. If that request is the cascade input (IR2 with the master in cascade mode and ICW3
//! bit 2 set), the slave resolves and acknowledges its own request the same way and supplies
//! its vector; otherwise the master supplies `ICW2 base + level`. A master IR line flagged in
//! ICW3 other than IR2 has no slave behind it on a PC; the master answers for it itself.
//!
//! Spurious interrupts ("Edge and Level Triggered Modes": the IR input must stay high until the
//! first INTA, otherwise "a default IR7 will occur"), with QEMU's exact rule:
//!
//! * the master has no request that may be delivered (the line fell, or it was masked, or it is
//!   blocked by an in-service level) -> the master's base + 7, and *no* ISR bit is set (so the
//!   guest must not send an EOI, which is how Linux recognises a spurious IRQ 7);
//! * the master selected the cascade input but the slave has no request -> the slave's base + 7
//!   (IRQ 15's vector) with the master's ISR bit 2 set (unless the master is in auto-EOI mode)
//!   and nothing set in the slave: the guest must send an EOI to the master only. Since the
//!   model keeps the slave's INT and the master's IR2 consistent after every operation and the
//!   acknowledge is atomic, this second case cannot arise through the public API; the rule is
//!   there for completeness and tested by building the state directly.
//!
//! # Operation commands
//!
//! OCW1 is the IMR. OCW2 ("Operation Command Words", "End of Interrupt", "Automatic Rotation",
//! "Specific Rotation"): non-specific EOI (clears the highest-priority ISR bit), specific EOI,
//! rotate on non-specific / specific EOI (the level just cleared gets the lowest priority), set
//! priority, and rotate in auto-EOI mode set / clear (acknowledged levels get the lowest
//! priority). OCW3: read IRR / read ISR (command-port reads return the selected register until
//! changed; the data port always reads the IMR), poll (the next read of either port of that
//! chip is an acknowledge and returns `0x80 | level`, or 0 if nothing is pending; "polling
//! overrides status read"), and special mask mode (in-service levels that are masked do not
//! block other levels, and a non-specific EOI ignores them, per "Special Mask Mode" and "End of
//! Interrupt"). Special fully nested mode (ICW4 bit 4, master only) lets a request on a cascade
//! input through while that input is in service, so a higher-priority slave request can nest.
//!
//! # Left out
//!
//! * **Level-triggered inputs.** ICW1 `LTIM` and the ELCR (0x4D0/0x4D1, stored with QEMU's
//!   masks and read back) are accepted and remembered, but every input is edge-triggered: the
//!   PC default, and what the hypervisor's device models provide.
//! * MCS-80/85 mode (ICW4 bit 0 = 0, or no ICW4): the acknowledge still returns an 8086 vector;
//!   ICW1 `ADI` and bits 7:5 are ignored. Buffered mode and the M/S bit (ICW4 bits 3:2) are
//!   stored and have no effect. The slave's ICW3 ID is stored; the slave is always the one
//!   behind master IR2.
//! * `set_irq(2, ..)` is ignored: master IR2 is the cascade input. (On the AT, the bus's old
//!   IRQ 2 pin is routed to IRQ 9; a device model that wants it raises 9.)

/// Master command port (A0 = 0): ICW1, OCW2, OCW3 writes; IRR / ISR / poll reads.
pub const MASTER_COMMAND: u16 = 0x20;
/// Master data port (A0 = 1): ICW2-ICW4 during initialisation, otherwise OCW1 (IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_COMMAND: u16 = 0xa0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xa1;
/// Edge/Level Control Register for IRQ 0-7 (PIIX/EISA; stored only, see the module docs).
pub const ELCR_MASTER: u16 = 0x4d0;
/// Edge/Level Control Register for IRQ 8-15.
pub const ELCR_SLAVE: u16 = 0x4d1;
/// ELCR bits that exist for IRQ 0-7: IRQ 0, 1 and 2 are always edge-triggered (QEMU's mask).
pub const ELCR_MASTER_MASK: u8 = 0xf8;
/// ELCR bits that exist for IRQ 8-15: IRQ 8 and 13 are always edge-triggered (QEMU's mask).
pub const ELCR_SLAVE_MASK: u8 = 0xde;

/// Value read from a port the PIC does not decode.
pub const UNMAPPED: u8 = 0xff;
/// Number of inputs of the pair (IRQ 0-15).
pub const IRQ_COUNT: u8 = 16;
/// The master input the slave's INT output drives.
pub const CASCADE_IRQ: u8 = 2;
/// The level whose vector a chip supplies for a spurious acknowledge ("default IR7").
pub const SPURIOUS_LEVEL: u8 = 7;

// ICW1 (command port, D4 = 1): "Initialization Command Words".

/// ICW1 bit 0, IC4: ICW4 follows.
pub const ICW1_IC4: u8 = 0x01;
/// ICW1 bit 1, SNGL: single chip, no ICW3 (0: cascade mode).
pub const ICW1_SNGL: u8 = 0x02;
/// ICW1 bit 2, ADI: call address interval 4 (MCS-80/85 only; ignored).
pub const ICW1_ADI: u8 = 0x04;
/// ICW1 bit 3, LTIM: level-triggered inputs (stored; the model is edge-triggered only).
pub const ICW1_LTIM: u8 = 0x08;
/// ICW1 bit 4: marks a command-port write as ICW1.
pub const ICW1_INIT: u8 = 0x10;

/// ICW2: the vector base is T7-T3; bits 2:0 are replaced by the IR level (8086 mode).
pub const ICW2_VECTOR_MASK: u8 = 0xf8;

// ICW4: "Initialization Command Words".

/// ICW4 bit 0, uPM: 8086/8088 mode (0: MCS-80/85; treated as 8086 anyway).
pub const ICW4_8086: u8 = 0x01;
/// ICW4 bit 1, AEOI: automatic EOI at the end of the acknowledge.
pub const ICW4_AEOI: u8 = 0x02;
/// ICW4 bit 2, M/S: in buffered mode, 1 = master (stored only).
pub const ICW4_MASTER: u8 = 0x04;
/// ICW4 bit 3, BUF: buffered mode (stored only).
pub const ICW4_BUF: u8 = 0x08;
/// ICW4 bit 4, SFNM: special fully nested mode (meaningful on the master only).
pub const ICW4_SFNM: u8 = 0x10;

// OCW2 (command port, D4 = 0, D3 = 0): R (bit 7), SL (bit 6), EOI (bit 5), L2-L0.

/// OCW2 bits 2:0: the IR level a specific command acts on.
pub const OCW2_LEVEL: u8 = 0x07;
/// OCW2 bits 7:5: the command.
pub const OCW2_COMMAND: u8 = 0xe0;
/// R=0 SL=0 EOI=0: rotate in automatic EOI mode (clear).
pub const OCW2_CLEAR_ROTATE_AEOI: u8 = 0x00;
/// R=0 SL=0 EOI=1: non-specific EOI.
pub const OCW2_EOI: u8 = 0x20;
/// R=0 SL=1 EOI=0: no operation.
pub const OCW2_NOP: u8 = 0x40;
/// R=0 SL=1 EOI=1: specific EOI (level in bits 2:0).
pub const OCW2_SPECIFIC_EOI: u8 = 0x60;
/// R=1 SL=0 EOI=0: rotate in automatic EOI mode (set).
pub const OCW2_SET_ROTATE_AEOI: u8 = 0x80;
/// R=1 SL=0 EOI=1: rotate on non-specific EOI.
pub const OCW2_ROTATE_EOI: u8 = 0xa0;
/// R=1 SL=1 EOI=0: set priority (the level in bits 2:0 becomes the lowest).
pub const OCW2_SET_PRIORITY: u8 = 0xc0;
/// R=1 SL=1 EOI=1: rotate on specific EOI.
pub const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0xe0;

// OCW3 (command port, D4 = 0, D3 = 1): ESMM, SMM, 0, 1, P, RR, RIS.

/// OCW3 bit 0, RIS: with RR, 1 selects the ISR, 0 the IRR.
pub const OCW3_RIS: u8 = 0x01;
/// OCW3 bit 1, RR: act on RIS.
pub const OCW3_RR: u8 = 0x02;
/// OCW3 bit 2, P: poll command.
pub const OCW3_POLL: u8 = 0x04;
/// OCW3 bit 3: marks a command-port write (with D4 = 0) as OCW3.
pub const OCW3_SELECT: u8 = 0x08;
/// OCW3 bit 5, SMM: with ESMM, 1 sets special mask mode, 0 resets it.
pub const OCW3_SMM: u8 = 0x20;
/// OCW3 bit 6, ESMM: act on SMM.
pub const OCW3_ESMM: u8 = 0x40;
/// OCW3 "read IRR on next RD pulse": OCW3_SELECT | OCW3_RR, written as the datasheet's byte
/// (a test checks it against the bits).
pub const OCW3_READ_IRR: u8 = 0x0a;
/// OCW3 "read ISR on next RD pulse": OCW3_SELECT | OCW3_RR | OCW3_RIS.
pub const OCW3_READ_ISR: u8 = 0x0b;

/// Poll word bit 7, I: an interrupt was pending (bits 2:0 hold its level).
pub const POLL_INTERRUPT: u8 = 0x80;

/// Where a chip is in its initialisation sequence: the next data-port write is...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// ...OCW1 (the IMR).
    Ready,
    /// ...ICW2.
    Icw2,
    /// ...ICW3 (cascade mode only).
    Icw3,
    /// ...ICW4 (ICW1.IC4 only).
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chip {
    /// The master of the pair (SFNM and cascade inputs exist on it only).
    is_master: bool,
    /// Current level of each IR input, for edge detection.
    lines: u8,
    /// Interrupt Request Register: edges latched and not yet acknowledged.
    irr: u8,
    /// In-Service Register.
    isr: u8,
    /// Interrupt Mask Register (OCW1).
    imr: u8,
    /// ELCR as written (masked); stored only.
    elcr: u8,
    /// ICW1 as written.
    icw1: u8,
    /// ICW2 with bits 2:0 cleared.
    vector_base: u8,
    /// ICW3 as written (master: slave lines; slave: its ID).
    icw3: u8,
    /// ICW4 as written (0 if ICW1.IC4 = 0).
    icw4: u8,
    /// Position in the initialisation sequence.
    init: Init,
    /// The ICW sequence has completed at least once since power-on.
    initialised: bool,
    /// The IR level with the highest priority (0 unless rotated).
    highest_priority: u8,
    /// OCW3: command-port reads return the ISR (else the IRR).
    read_isr: bool,
    /// OCW3 poll command issued: the next read is a poll.
    poll: bool,
    /// OCW3 special mask mode.
    special_mask: bool,
    /// OCW2 rotate in automatic EOI mode.
    rotate_on_aeoi: bool,
}

impl Chip {
    fn new(is_master: bool) -> Self {
        Chip {
            is_master,
            lines: 0,
            irr: 0,
            isr: 0,
            imr: 0xff,
            elcr: 0,
            icw1: 0,
            vector_base: 0,
            icw3: 0,
            icw4: 0,
            init: Init::Ready,
            initialised: false,
            highest_priority: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            rotate_on_aeoi: false,
        }
    }

    /// Initialised and not in the middle of a new ICW sequence: allowed to assert INT.
    fn ready(&self) -> bool {
        self.initialised && self.init == Init::Ready
    }

    fn auto_eoi(&self) -> bool {
        self.icw4 & ICW4_AEOI != 0
    }

    fn single(&self) -> bool {
        self.icw1 & ICW1_SNGL != 0
    }

    /// IR lines with a slave behind them: the master's ICW3 (asked of the master only; a
    /// slave's ICW3 is its own ID). In single mode there is none: ICW1 zeroes ICW3 and single
    /// mode skips it.
    fn slave_lines(&self) -> u8 {
        debug_assert!(self.is_master);
        self.icw3
    }

    /// Priority rank of `level`: 0 is the highest, 7 the lowest.
    fn rank(&self, level: u8) -> u8 {
        level.wrapping_sub(self.highest_priority) & 7
    }

    /// The highest-priority level set in `mask`.
    fn highest(&self, mask: u8) -> Option<u8> {
        (0..8)
            .map(|rank| (rank + self.highest_priority) & 7)
            .find(|&level| mask & (1 << level) != 0)
    }

    /// The request the priority resolver would pass on ("Fully Nested Mode"): the
    /// highest-priority unmasked IRR bit, if it has higher priority than every in-service level.
    /// In special mask mode, masked in-service levels do not count ("Special Mask Mode"); in
    /// special fully nested mode a cascade input is not blocked by its own ISR bit ("The Special
    /// Fully Nested Mode": the master "responds to all requests of equal or higher priority").
    fn pending(&self) -> Option<u8> {
        let candidate = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.is_master
            && self.icw4 & ICW4_SFNM != 0
            && self.slave_lines() & (1 << candidate) != 0
        {
            in_service &= !(1 << candidate);
        }
        match self.highest(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(candidate) => None,
            _ => Some(candidate),
        }
    }

    /// The INT output.
    fn int_output(&self) -> bool {
        self.ready() && self.pending().is_some()
    }

    /// Drives IR input `level`. Edge-triggered ("Edge and Level Triggered Modes"): a low-to-high
    /// transition latches a request in IRR, and "the IR input can remain high without generating
    /// another interrupt"; the input must stay high until the acknowledge, so a falling line
    /// withdraws a request that has not been acknowledged yet (the acknowledge then finds
    /// nothing and gives the default IR7).
    fn set_line(&mut self, level: u8, high: bool) {
        let bit = 1 << level;
        if high {
            if self.lines & bit == 0 {
                self.irr |= bit;
            }
            self.lines |= bit;
        } else {
            self.irr &= !bit;
            self.lines &= !bit;
        }
    }

    /// The acknowledge of `level` ("Interrupt Sequence"): the ISR bit is set and the IRR bit
    /// reset; in auto-EOI mode the ISR bit is reset again at the end of the sequence, so it is
    /// never seen set ("Automatic End of Interrupt (AEOI) Mode"), and with rotate-in-AEOI the
    /// level gets the lowest priority ("Automatic Rotation").
    fn acknowledge(&mut self, level: u8) {
        if self.auto_eoi() {
            if self.rotate_on_aeoi {
                self.highest_priority = (level + 1) & 7;
            }
        } else {
            self.isr |= 1 << level;
        }
        self.irr &= !(1 << level);
    }

    /// A read in poll mode ("Poll Command"): an acknowledge without INTA; returns the poll word.
    /// The poll command is good for one read only.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        if !self.ready() {
            return 0;
        }
        match self.pending() {
            Some(level) => {
                self.acknowledge(level);
                // Disjoint fields (bit 7, bits 2:0).
                POLL_INTERRUPT + level
            }
            None => 0,
        }
    }

    /// Read of the command port (A0 = 0): the poll word, or the register OCW3 selected
    /// ("Reading the 8259A Status": "polling overrides status read").
    fn read_command(&mut self) -> u8 {
        if self.poll {
            self.poll_read()
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    /// Read of the data port (A0 = 1): the IMR, unless a poll is pending (QEMU takes the poll on
    /// either port; the datasheet says "the next RD pulse").
    fn read_data(&mut self) -> u8 {
        if self.poll {
            self.poll_read()
        } else {
            self.imr
        }
    }

    /// Write to the command port: D4 = 1 is ICW1, else D3 = 1 is OCW3, else OCW2.
    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.write_icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.write_ocw3(value);
        } else {
            self.write_ocw2(value);
        }
    }

    /// Write to the data port: the next ICW during initialisation, otherwise OCW1.
    fn write_data(&mut self, value: u8) {
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                // 8086 mode: T7-T3 from ICW2, the IR level in the low three bits.
                self.vector_base = value & ICW2_VECTOR_MASK;
                if self.single() {
                    self.after_icw3();
                } else {
                    self.init = Init::Icw3;
                }
            }
            Init::Icw3 => {
                self.icw3 = value;
                self.after_icw3();
            }
            Init::Icw4 => {
                self.icw4 = value;
                self.finish_init();
            }
        }
    }

    fn after_icw3(&mut self) {
        if self.icw1 & ICW1_IC4 != 0 {
            self.init = Init::Icw4;
        } else {
            self.finish_init();
        }
    }

    fn finish_init(&mut self) {
        self.init = Init::Ready;
        self.initialised = true;
    }

    /// ICW1 ("Initialization Command Words", items a-f): the edge sense circuit is reset (the
    /// latched requests are forgotten; `lines` keeps the input levels, so a line that is high
    /// must fall and rise again), the IMR is cleared, IR7 gets the lowest priority, special mask
    /// mode is cleared and status reads select the IRR, and without IC4 every ICW4 function is
    /// zero. As in QEMU, the ISR, a pending poll and rotate-in-AEOI are cleared as well.
    fn write_icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.init = Init::Icw2;
        self.irr = 0;
        self.isr = 0;
        self.imr = 0;
        self.vector_base = 0;
        self.icw3 = 0;
        self.icw4 = 0;
        self.highest_priority = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.rotate_on_aeoi = false;
    }

    /// OCW2 ("Operation Command Words"; "End of Interrupt"; "Automatic Rotation"; "Specific
    /// Rotation").
    fn write_ocw2(&mut self, value: u8) {
        let level = value & OCW2_LEVEL;
        match value & OCW2_COMMAND {
            OCW2_EOI => self.non_specific_eoi(false),
            OCW2_ROTATE_EOI => self.non_specific_eoi(true),
            OCW2_SPECIFIC_EOI => self.isr &= !(1 << level),
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                self.highest_priority = (level + 1) & 7;
            }
            // "Set priority": the level given becomes the lowest.
            OCW2_SET_PRIORITY => self.highest_priority = (level + 1) & 7,
            OCW2_SET_ROTATE_AEOI => self.rotate_on_aeoi = true,
            OCW2_CLEAR_ROTATE_AEOI => self.rotate_on_aeoi = false,
            _ => {} // OCW2_NOP
        }
    }

    /// Clears the highest-priority ISR bit, "the last level acknowledged and serviced" in fully
    /// nested operation. "An ISR bit that is masked by an IMR bit will not be cleared by a
    /// non-specific EOI if the 8259A is in the Special Mask Mode" ("End of Interrupt"). With
    /// `rotate`, the cleared level gets the lowest priority ("Automatic Rotation").
    fn non_specific_eoi(&mut self, rotate: bool) {
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if let Some(level) = self.highest(in_service) {
            self.isr &= !(1 << level);
            if rotate {
                self.highest_priority = (level + 1) & 7;
            }
        }
    }

    /// OCW3 ("Operation Command Words"; "Special Mask Mode"; "Poll Command"; "Reading the 8259A
    /// Status"). Each field only acts with its enable bit (ESMM, RR); the others are kept.
    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
        if value & OCW3_POLL != 0 {
            self.poll = true;
        }
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
    }
}

/// The PC/AT pair of 8259As: IRQ 0-7 on the master, IRQ 8-15 on the slave, whose INT output
/// drives master IR2. See the module documentation for the rules it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// The power-on state: both chips uninitialised (no INT, [`acknowledge`](Self::acknowledge)
    /// returns `None`), both IMRs 0xFF (the datasheet leaves them undefined; see the module
    /// documentation), no requests, all input lines low.
    pub fn new() -> Self {
        Pic {
            master: Chip::new(true),
            slave: Chip::new(false),
        }
    }

    /// A guest read of `port`: 0x20/0xA0 return the IRR or ISR (OCW3 selects; IRR after
    /// initialisation) or, after a poll command, the poll word; 0x21/0xA1 return the IMR (or the
    /// poll word); 0x4D0/0x4D1 return the ELCR. Other ports read [`UNMAPPED`].
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            MASTER_COMMAND => {
                let value = self.master.read_command();
                self.update_cascade(false);
                value
            }
            MASTER_DATA => {
                let value = self.master.read_data();
                self.update_cascade(false);
                value
            }
            SLAVE_COMMAND => {
                let polled = self.slave.poll;
                let value = self.slave.read_command();
                self.update_cascade(polled);
                value
            }
            SLAVE_DATA => {
                let polled = self.slave.poll;
                let value = self.slave.read_data();
                self.update_cascade(polled);
                value
            }
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => UNMAPPED,
        }
    }

    /// A guest write of `value` to `port` (0x20, 0x21, 0xA0, 0xA1, or the ELCR at 0x4D0/0x4D1);
    /// writes to other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_COMMAND => self.master.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_COMMAND => self.slave.write_command(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.elcr = value & ELCR_MASTER_MASK,
            ELCR_SLAVE => self.slave.elcr = value & ELCR_SLAVE_MASK,
            _ => return,
        }
        self.update_cascade(false);
    }

    /// Sets the level of input `irq` (0..=15). Edge-triggered (the PC default): a 0->1
    /// transition latches a request in IRR; lowering the line clears a not-yet-acknowledged
    /// request. IRQ 2 (the cascade input, driven by the slave) and numbers above 15 are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        // IRQ 2 needs no arm of its own: the master's IR2 is the slave's INT output, which
        // `update_cascade` drives after every change, so whatever is written there is replaced.
        match irq {
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => return,
        }
        self.update_cascade(false);
    }

    /// Whether the master has completed its initialisation sequence (ICW1..ICW4): only then
    /// can it ever interrupt the CPU.
    pub fn is_initialised(&self) -> bool {
        self.master.ready()
    }

    /// True if an unmasked, not-in-service-blocked request exists on an initialised master
    /// (what the master's INT pin, the CPU's INTR, would show).
    pub fn has_interrupt(&self) -> bool {
        self.master.int_output()
    }

    /// The interrupt acknowledge cycle: returns the vector (ICW2 base + irq) of the
    /// highest-priority pending request, moving it from IRR to ISR (unless auto-EOI); a slave
    /// request sets ISR bit 2 on the master too. When nothing may be delivered, the spurious
    /// rules of the module documentation apply: master base + 7 with no ISR bit set. Returns
    /// `None` if the master has not completed its initialisation sequence (ICW1..ICW4).
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.master.ready() {
            return None;
        }
        // The vector is ICW2's T7-T3 plus the level in bits 2:0 (ICW2 keeps bits 2:0 zero):
        // disjoint fields, so `+`.
        let Some(level) = self.master.pending() else {
            // Default IR7: nothing is set in the ISR.
            return Some(self.master.vector_base + SPURIOUS_LEVEL);
        };
        let cascaded = level == CASCADE_IRQ && self.master.slave_lines() & (1 << CASCADE_IRQ) != 0;
        let vector = if cascaded {
            let slave_level = if self.slave.ready() {
                self.slave.pending()
            } else {
                None
            };
            match slave_level {
                Some(slave_level) => {
                    self.slave.acknowledge(slave_level);
                    self.slave.vector_base + slave_level
                }
                // Spurious on the slave: its default IR7, nothing in its ISR; the master's
                // cascade level is acknowledged all the same (QEMU).
                None => self.slave.vector_base + SPURIOUS_LEVEL,
            }
        } else {
            self.master.vector_base + level
        };
        self.master.acknowledge(level);
        self.update_cascade(cascaded);
        Some(vector)
    }

    /// Feeds the slave's INT output to master IR2. `slave_acknowledged`: the slave just went
    /// through an acknowledge (INTA or poll), during which its INT drops; if it is still (or
    /// again) high afterwards, the master sees a new edge.
    fn update_cascade(&mut self, slave_acknowledged: bool) {
        if slave_acknowledged {
            self.master.set_line(CASCADE_IRQ, false);
        }
        let int = self.slave.int_output();
        self.master.set_line(CASCADE_IRQ, int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector bases Linux programs (ISA_IRQ_VECTOR(0) = 0x30).
    const MASTER_BASE: u8 = 0x30;
    const SLAVE_BASE: u8 = 0x38;

    /// Linux's `init_8259A`: mask everything, ICW1 0x11, ICW2 base, ICW3 0x04 / 0x02, ICW4
    /// `icw4` on each chip, then restore the masks (`master_mask`, `slave_mask`).
    fn linux_init(pic: &mut Pic, icw4: u8, master_mask: u8, slave_mask: u8) {
        pic.write(MASTER_DATA, 0xff);
        pic.write(SLAVE_DATA, 0xff);
        pic.write(MASTER_COMMAND, 0x11);
        pic.write(MASTER_DATA, MASTER_BASE);
        pic.write(MASTER_DATA, 1 << CASCADE_IRQ);
        pic.write(MASTER_DATA, icw4);
        pic.write(SLAVE_COMMAND, 0x11);
        pic.write(SLAVE_DATA, SLAVE_BASE);
        pic.write(SLAVE_DATA, CASCADE_IRQ);
        pic.write(SLAVE_DATA, icw4);
        pic.write(MASTER_DATA, master_mask);
        pic.write(SLAVE_DATA, slave_mask);
    }

    /// A pair initialised like Linux, everything unmasked.
    fn pic() -> Pic {
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086, 0x00, 0x00);
        p
    }

    fn isr(p: &mut Pic, command: u16) -> u8 {
        p.write(command, OCW3_READ_ISR);
        let v = p.read(command);
        p.write(command, OCW3_READ_IRR);
        v
    }

    fn irr(p: &mut Pic, command: u16) -> u8 {
        p.write(command, OCW3_READ_IRR);
        p.read(command)
    }

    #[test]
    fn power_on_state_is_uninitialised_and_masked() {
        let mut p = Pic::new();
        assert_eq!(p, Pic::default());
        assert_eq!(p.read(MASTER_DATA), 0xff);
        assert_eq!(p.read(SLAVE_DATA), 0xff);
        assert_eq!(p.read(MASTER_COMMAND), 0);
        assert_eq!(p.read(SLAVE_COMMAND), 0);
        assert!(!p.has_interrupt());
        assert_eq!(p.acknowledge(), None);
    }

    #[test]
    fn nothing_is_delivered_before_initialisation_even_unmasked() {
        let mut p = Pic::new();
        p.write(MASTER_DATA, 0x00);
        p.set_irq(4, true);
        // The edge is latched (IRR is visible) but an uninitialised chip asserts no INT.
        assert_eq!(p.read(MASTER_COMMAND), 1 << 4);
        assert!(!p.has_interrupt());
        assert_eq!(p.acknowledge(), None);
        assert_eq!(
            p.read(MASTER_COMMAND),
            1 << 4,
            "acknowledge must not consume the request"
        );
    }

    #[test]
    fn linux_probe_reads_back_the_mask() {
        let mut p = Pic::new();
        // probe_8259A: mask the slave, write ~(1 << cascade) to the master and read it back.
        p.write(SLAVE_DATA, 0xff);
        p.write(MASTER_DATA, 0xfb);
        assert_eq!(p.read(MASTER_DATA), 0xfb);
        p.write(MASTER_DATA, 0xff);
        assert_eq!(p.read(MASTER_DATA), 0xff);
        assert_eq!(p.read(SLAVE_DATA), 0xff);
        // Same after initialisation.
        let mut p = pic();
        p.write(MASTER_DATA, 0xff);
        assert_eq!(p.read(MASTER_DATA), 0xff);
        p.write(SLAVE_DATA, 0x5a);
        assert_eq!(p.read(SLAVE_DATA), 0x5a);
    }

    #[test]
    fn linux_init_sequence_programs_both_chips() {
        let mut p = Pic::new();
        p.write(MASTER_DATA, 0xff);
        p.write(MASTER_COMMAND, 0x11);
        // ICW1 clears the IMR; the chip waits for ICW2 and asserts nothing meanwhile.
        assert_eq!(p.master.init, Init::Icw2);
        assert_eq!(p.read(MASTER_DATA), 0x00);
        p.write(MASTER_DATA, MASTER_BASE);
        assert_eq!(p.master.init, Init::Icw3);
        p.write(MASTER_DATA, 0x04);
        assert_eq!(p.master.init, Init::Icw4);
        p.write(MASTER_DATA, 0x01);
        assert!(p.master.ready());
        assert_eq!(
            (p.master.vector_base, p.master.icw3, p.master.icw4),
            (0x30, 0x04, 0x01)
        );
        // The ICWs did not land in the IMR.
        assert_eq!(p.read(MASTER_DATA), 0x00);
        p.write(SLAVE_COMMAND, 0x11);
        p.write(SLAVE_DATA, SLAVE_BASE);
        p.write(SLAVE_DATA, 0x02);
        p.write(SLAVE_DATA, 0x01);
        assert!(p.slave.ready());
        assert_eq!(
            (p.slave.vector_base, p.slave.icw3, p.slave.icw4),
            (0x38, 0x02, 0x01)
        );
        // Now data-port writes are OCW1 again.
        p.write(MASTER_DATA, 0xfa);
        p.write(SLAVE_DATA, 0xfe);
        assert_eq!(p.read(MASTER_DATA), 0xfa);
        assert_eq!(p.read(SLAVE_DATA), 0xfe);
        assert_eq!(
            p.master.vector_base, 0x30,
            "OCW1 must not touch the vector base"
        );
        // IRQ 0 and IRQ 8 are unmasked: their vectors are base + 0.
        pulse_and_check(&mut p, 0, 0x30);
        p.write(MASTER_COMMAND, OCW2_EOI);
        p.set_irq(8, true);
        assert_eq!(p.acknowledge(), Some(0x38));
    }

    fn pulse_and_check(p: &mut Pic, irq: u8, vector: u8) {
        p.set_irq(irq, true);
        assert!(p.has_interrupt(), "IRQ {irq} should be pending");
        assert_eq!(p.acknowledge(), Some(vector));
        p.set_irq(irq, false);
    }

    #[test]
    fn icw2_low_three_bits_are_ignored() {
        let mut p = Pic::new();
        p.write(MASTER_COMMAND, ICW1_INIT | ICW1_IC4);
        p.write(MASTER_DATA, 0x47);
        p.write(MASTER_DATA, 0x04);
        p.write(MASTER_DATA, ICW4_8086);
        pulse_and_check(&mut p, 3, 0x43);
    }

    #[test]
    fn icw1_without_ic4_ends_after_icw3_and_zeroes_icw4_functions() {
        let mut p = pic();
        // Previously auto-EOI.
        p.write(MASTER_COMMAND, 0x11);
        p.write(MASTER_DATA, 0x20);
        p.write(MASTER_DATA, 0x04);
        p.write(MASTER_DATA, ICW4_8086 | ICW4_AEOI);
        assert!(p.master.auto_eoi());
        // ICW1 without IC4: ICW2, ICW3, done; the next data write is the IMR.
        p.write(MASTER_COMMAND, ICW1_INIT);
        p.write(MASTER_DATA, 0x20);
        assert!(!p.master.ready());
        p.write(MASTER_DATA, 0x04);
        assert!(p.master.ready());
        assert!(!p.master.auto_eoi(), "no ICW4: its functions are zero");
        p.write(MASTER_DATA, 0xef);
        assert_eq!(p.read(MASTER_DATA), 0xef);
        pulse_and_check(&mut p, 4, 0x24);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 1 << 4, "no auto-EOI: ISR set");
    }

    #[test]
    fn single_mode_skips_icw3_and_the_master_answers_for_ir2() {
        // Initialised in cascade mode first (ICW3 = 0x04): a new ICW1 with SNGL = 1 leaves no
        // slave behind IR2, whatever ICW3 said before ("ICW1 ... SNGL: single; no ICW3").
        let mut p = pic();
        p.write(MASTER_COMMAND, ICW1_INIT | ICW1_SNGL | ICW1_IC4);
        p.write(MASTER_DATA, 0x08);
        assert_eq!(p.master.init, Init::Icw4, "single mode: no ICW3");
        p.write(MASTER_DATA, ICW4_8086);
        assert!(p.master.ready());
        p.write(MASTER_DATA, 0x00);
        assert_eq!(p.read(MASTER_DATA), 0x00);
        // Single mode without ICW4: only ICW2.
        let mut q = Pic::new();
        q.write(MASTER_COMMAND, ICW1_INIT | ICW1_SNGL);
        q.write(MASTER_DATA, 0x08);
        assert!(q.master.ready());
        // A slave request still raises master IR2, but in single mode the master has no slave
        // to ask: it supplies its own vector, and the slave is not acknowledged.
        linux_init_slave_only(&mut p);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), Some(0x08 + 2));
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 1 << 2);
    }

    fn linux_init_slave_only(p: &mut Pic) {
        p.write(SLAVE_COMMAND, 0x11);
        p.write(SLAVE_DATA, SLAVE_BASE);
        p.write(SLAVE_DATA, 0x02);
        p.write(SLAVE_DATA, 0x01);
        p.write(SLAVE_DATA, 0x00);
    }

    #[test]
    fn icw3_decides_whether_ir2_is_a_cascade() {
        // ICW3 = 0x04: IR2 has a slave; its vector comes from the slave.
        let mut p = pic();
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 1));
        // ICW3 = 0x00: no slave on IR2; the master answers base + 2 itself.
        let mut p = Pic::new();
        p.write(MASTER_COMMAND, 0x11);
        p.write(MASTER_DATA, MASTER_BASE);
        p.write(MASTER_DATA, 0x00);
        p.write(MASTER_DATA, 0x01);
        linux_init_slave_only(&mut p);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 2));
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
    }

    #[test]
    fn masked_request_stays_in_irr_and_is_delivered_after_unmasking() {
        let mut p = pic();
        p.write(MASTER_DATA, 1 << 5);
        p.set_irq(5, true);
        assert!(!p.has_interrupt());
        assert_eq!(
            irr(&mut p, MASTER_COMMAND),
            1 << 5,
            "IRR is not affected by the IMR"
        );
        // An acknowledge now finds nothing deliverable: spurious, the request stays.
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        assert_eq!(irr(&mut p, MASTER_COMMAND), 1 << 5);
        p.write(MASTER_DATA, 0x00);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0);
        // Masking a slave input works the same way through the cascade.
        p.write(MASTER_COMMAND, OCW2_EOI);
        p.write(SLAVE_DATA, 1 << 4);
        p.set_irq(12, true);
        assert!(!p.has_interrupt());
        p.write(SLAVE_DATA, 0x00);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 4));
    }

    #[test]
    fn command_port_reads_irr_by_default_and_isr_after_ocw3() {
        let mut p = pic();
        p.set_irq(3, true);
        p.set_irq(6, true);
        assert_eq!(p.read(MASTER_COMMAND), 0x48, "IRR after initialisation");
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        assert_eq!(p.read(MASTER_COMMAND), 0x40);
        p.write(MASTER_COMMAND, OCW3_READ_ISR);
        assert_eq!(p.read(MASTER_COMMAND), 0x08);
        // The selection sticks across reads and OCW3s without RR.
        assert_eq!(p.read(MASTER_COMMAND), 0x08);
        p.write(MASTER_COMMAND, OCW3_SELECT);
        assert_eq!(p.read(MASTER_COMMAND), 0x08);
        // The data port still reads the IMR.
        assert_eq!(p.read(MASTER_DATA), 0x00);
        p.write(MASTER_COMMAND, OCW3_READ_IRR);
        assert_eq!(p.read(MASTER_COMMAND), 0x40);
        // ICW1 resets the selection to IRR.
        p.write(MASTER_COMMAND, OCW3_READ_ISR);
        p.write(MASTER_COMMAND, 0x11);
        assert!(!p.master.read_isr);
    }

    #[test]
    fn lower_irq_number_has_higher_priority() {
        let mut p = pic();
        p.set_irq(5, true);
        p.set_irq(3, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        // A real IRQ 7 sets the ISR (unlike the spurious one).
        assert_eq!(isr(&mut p, MASTER_COMMAND), 1 << 7);
    }

    #[test]
    fn in_service_level_blocks_lower_and_equal_but_not_higher() {
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.set_irq(5, true);
        assert!(!p.has_interrupt(), "IRQ 5 must wait for the EOI of IRQ 3");
        // The same level again (a new edge) is blocked too.
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(!p.has_interrupt());
        // A higher priority nests.
        p.set_irq(1, true);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x0a);
        assert!(!p.has_interrupt());
        p.write(MASTER_COMMAND, OCW2_EOI); // ends IRQ 1
        assert!(!p.has_interrupt(), "IRQ 3 still in service");
        p.write(MASTER_COMMAND, OCW2_EOI); // ends IRQ 3
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
    }

    #[test]
    fn non_specific_eoi_clears_the_highest_priority_isr_bit() {
        let mut p = pic();
        p.set_irq(3, true);
        p.acknowledge();
        p.set_irq(1, true);
        p.acknowledge();
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x0a);
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x08);
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x00);
        // An EOI with nothing in service is harmless.
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x00);
    }

    #[test]
    fn specific_eoi_clears_only_the_named_level() {
        let mut p = pic();
        p.set_irq(3, true);
        p.acknowledge();
        p.set_irq(1, true);
        p.acknowledge();
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 3);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x02);
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 6); // not in service: no effect
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x02);
        p.write(MASTER_COMMAND, OCW2_NOP | 1);
        assert_eq!(
            isr(&mut p, MASTER_COMMAND),
            0x02,
            "SL without EOI is a no-op"
        );
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 1);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x00);
    }

    #[test]
    fn rotate_on_non_specific_eoi_makes_the_served_level_lowest() {
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.write(MASTER_COMMAND, OCW2_ROTATE_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        // Priority order is now 4, 5, 6, 7, 0, 1, 2, 3.
        p.set_irq(1, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        // IRQ 5 in service now blocks IRQ 1 (lower priority after the rotation).
        assert!(!p.has_interrupt());
        // Rotating again at the EOI of IRQ 5: order 6, 7, 0, 1, ...
        p.write(MASTER_COMMAND, OCW2_ROTATE_EOI);
        p.set_irq(0, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn set_priority_and_rotate_on_specific_eoi() {
        let mut p = pic();
        // Make IRQ 4 the lowest: order 5, 6, 7, 0, 1, 2, 3, 4.
        p.write(MASTER_COMMAND, OCW2_SET_PRIORITY | 4);
        p.set_irq(4, true);
        p.set_irq(6, true);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 6));
        // Rotate on specific EOI for level 0: order 1, 2, ..., 7, 0.
        p.write(MASTER_COMMAND, OCW2_ROTATE_SPECIFIC_EOI);
        assert_eq!(
            isr(&mut p, MASTER_COMMAND),
            1 << 6,
            "EOI for level 0 leaves 6 in service"
        );
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 6);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 4));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE));
        // ICW1 restores the default priority (IR7 lowest).
        p.write(MASTER_COMMAND, 0x11);
        assert_eq!(p.master.highest_priority, 0);
    }

    #[test]
    fn slave_request_goes_through_master_ir2_and_sets_isr_on_both() {
        let mut p = pic();
        p.set_irq(10, true);
        assert!(p.has_interrupt());
        assert_eq!(
            irr(&mut p, MASTER_COMMAND),
            1 << 2,
            "the slave's INT shows as master IRR2"
        );
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 2));
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 1 << 2);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 1 << 2);
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0);
        // Master IR2 in service blocks IRQ 3-7 and IRQ 8-15, not IRQ 0-1.
        p.set_irq(4, true);
        p.set_irq(11, true);
        assert!(!p.has_interrupt());
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
        p.write(MASTER_COMMAND, OCW2_EOI);
        // Linux's order: EOI to the slave, then to the master.
        p.write(SLAVE_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
        assert!(!p.has_interrupt(), "master IR2 still in service");
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        // IRQ 11 (via IR2) beats IRQ 4.
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 3));
        p.write(SLAVE_COMMAND, OCW2_EOI);
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 4));
        p.write(MASTER_COMMAND, OCW2_EOI);
        // A new edge on IRQ 10 is delivered again.
        p.set_irq(10, false);
        p.set_irq(10, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 2));
    }

    #[test]
    fn slave_request_blocked_inside_the_slave_does_not_hold_master_ir2() {
        // A slave request blocked by the slave's own ISR must not hold master IR2.
        let mut p = pic();
        p.set_irq(8, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE));
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 2); // master EOI first (unusual, legal)
        p.set_irq(9, true); // blocked on the slave by IRQ 8 in service
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0, "slave INT is low");
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        p.write(MASTER_COMMAND, OCW2_EOI);
        p.write(SLAVE_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 1));
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086 | ICW4_AEOI, 0x00, 0x00);
        pulse_and_check(&mut p, 4, MASTER_BASE + 4);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        // No EOI needed: the next edge and lower priorities get through.
        pulse_and_check(&mut p, 4, MASTER_BASE + 4);
        pulse_and_check(&mut p, 6, MASTER_BASE + 6);
        // Through the cascade: neither chip keeps an ISR bit.
        p.set_irq(13, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 5));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
        assert!(!p.has_interrupt());
    }

    #[test]
    fn auto_eoi_slave_with_two_requests_delivers_both() {
        // The slave's INT stays high across the first acknowledge; the master must still see
        // the second request (the slave's INT drops during its INTA and rises again).
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086 | ICW4_AEOI, 0x00, 0x00);
        p.set_irq(9, true);
        p.set_irq(12, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 1));
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 4));
        assert!(!p.has_interrupt());
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086 | ICW4_AEOI, 0x00, 0x00);
        p.write(MASTER_COMMAND, OCW2_SET_ROTATE_AEOI);
        p.set_irq(1, true);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
        // IRQ 1 became the lowest (order 2, 3, ..., 7, 0, 1): a new IRQ 1 edge loses to IRQ 3.
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        // After 3 was served, the order is 4..7, 0, 1, 2, 3: IRQ 0 beats the pending IRQ 1.
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE));
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
        assert_eq!(p.master.highest_priority, 2);
        // Clearing the rotation: priorities stay where they are but no longer move.
        p.write(MASTER_COMMAND, OCW2_CLEAR_ROTATE_AEOI);
        for irq in [3, 5] {
            p.set_irq(irq, false);
            p.set_irq(irq, true);
        }
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3)); // order is 2, 3, 4, ...
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        assert_eq!(p.master.highest_priority, 2);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
    }

    #[test]
    fn spurious_master_interrupt_when_the_request_disappears() {
        let mut p = pic();
        p.set_irq(4, true);
        assert!(p.has_interrupt());
        // The line falls before the acknowledge: the request is withdrawn.
        p.set_irq(4, false);
        assert!(!p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        assert_eq!(
            isr(&mut p, MASTER_COMMAND),
            0,
            "a spurious IRQ 7 sets no ISR bit"
        );
        // The same if it was masked in between.
        p.set_irq(4, true);
        p.write(MASTER_DATA, 1 << 4);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        // A slave request that disappears: the master's IR2 falls with the slave's INT.
        p.write(MASTER_DATA, 0x00);
        p.set_irq(4, false);
        p.set_irq(14, true);
        p.set_irq(14, false);
        assert!(!p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 7));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
    }

    #[test]
    fn spurious_slave_interrupt_sets_only_master_ir2() {
        // Built directly: master IR2 latched but the slave has nothing (see the module docs).
        let mut p = pic();
        p.master.irr |= 1 << CASCADE_IRQ;
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 7));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 1 << 2);
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0);
        // One EOI to the master cleans up.
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
    }

    #[test]
    fn edge_triggering_needs_a_new_rising_edge() {
        let mut p = pic();
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 4));
        p.write(MASTER_COMMAND, OCW2_EOI);
        // The line stays high: no new request.
        p.set_irq(4, true);
        assert!(!p.has_interrupt());
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0);
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert!(p.has_interrupt());
        // Lowering clears the not-yet-acknowledged request.
        p.set_irq(4, false);
        assert_eq!(irr(&mut p, MASTER_COMMAND), 0);
        assert!(!p.has_interrupt());
    }

    #[test]
    fn linux_irq4_cycle_with_non_specific_eoi() {
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086, 0xfb, 0xff);
        p.write(MASTER_DATA, 0xfb & !(1 << 4)); // request_irq(4)
        for _ in 0..3 {
            p.set_irq(4, true);
            assert!(p.has_interrupt());
            assert_eq!(p.acknowledge(), Some(0x34));
            assert!(!p.has_interrupt());
            // The UART's handler runs, its line falls; then the EOI.
            p.set_irq(4, false);
            p.write(MASTER_COMMAND, 0x20);
            assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
            assert!(!p.has_interrupt());
        }
    }

    #[test]
    fn linux_mask_and_ack_with_specific_eoi_and_real_irq_check() {
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086, 0xfb, 0xff);
        let mut master_mask = 0xfbu8 & !(1 << 4);
        let mut slave_mask = !(1u8 << 4); // only IRQ 12 unmasked
        p.write(MASTER_DATA, master_mask);
        p.write(SLAVE_DATA, slave_mask);
        for (irq, vector) in [(4u8, 0x34u8), (12, 0x3c), (4, 0x34), (12, 0x3c)] {
            p.set_irq(irq, true);
            let v = p.acknowledge().unwrap();
            assert_eq!(v, vector);
            // i8259A_irq_real: read the ISR with OCW3 0x0B, back to IRR with 0x0A.
            let (cmd, bit) = if irq < 8 {
                (MASTER_COMMAND, irq)
            } else {
                (SLAVE_COMMAND, irq - 8)
            };
            p.write(cmd, 0x0b);
            assert_ne!(p.read(cmd) & (1 << bit), 0, "real IRQ {irq} is in service");
            p.write(cmd, 0x0a);
            // mask_and_ack_8259A: mask, specific EOI (to the slave and master IR2).
            if irq >= 8 {
                slave_mask |= 1 << (irq - 8);
                p.read(SLAVE_DATA);
                p.write(SLAVE_DATA, slave_mask);
                p.write(SLAVE_COMMAND, 0x60 + (irq & 7));
                p.write(MASTER_COMMAND, 0x60 + CASCADE_IRQ);
            } else {
                master_mask |= 1 << irq;
                p.read(MASTER_DATA);
                p.write(MASTER_DATA, master_mask);
                p.write(MASTER_COMMAND, 0x60 + irq);
            }
            p.set_irq(irq, false);
            // unmask after the handler.
            if irq >= 8 {
                slave_mask &= !(1 << (irq - 8));
                p.write(SLAVE_DATA, slave_mask);
            } else {
                master_mask &= !(1 << irq);
                p.write(MASTER_DATA, master_mask);
            }
            assert_eq!(isr(&mut p, MASTER_COMMAND), 0);
            assert_eq!(isr(&mut p, SLAVE_COMMAND), 0);
            assert!(!p.has_interrupt());
        }
    }

    #[test]
    fn poll_mode_acknowledges_on_the_next_read() {
        let mut p = pic();
        p.write(MASTER_COMMAND, OCW3_SELECT | OCW3_POLL);
        assert_eq!(p.read(MASTER_COMMAND), 0x00, "nothing pending: I = 0");
        // The poll was good for one read.
        p.set_irq(5, true);
        assert_eq!(p.read(MASTER_COMMAND), 1 << 5);
        p.write(MASTER_COMMAND, OCW3_SELECT | OCW3_POLL | OCW3_READ_ISR);
        assert_eq!(
            p.read(MASTER_COMMAND),
            POLL_INTERRUPT | 5,
            "poll overrides status read"
        );
        assert_eq!(
            p.read(MASTER_COMMAND),
            1 << 5,
            "ISR now, as RR/RIS selected"
        );
        assert!(!p.has_interrupt());
        p.write(MASTER_COMMAND, OCW2_EOI);
        // Polling the slave directly (poll also works on the data port, as in QEMU).
        p.set_irq(11, true);
        p.write(SLAVE_COMMAND, OCW3_SELECT | OCW3_POLL);
        assert_eq!(p.read(SLAVE_DATA), POLL_INTERRUPT | 3);
        assert_eq!(isr(&mut p, SLAVE_COMMAND), 1 << 3);
        assert!(
            !p.has_interrupt(),
            "the polled slave request no longer reaches the master"
        );
        assert_eq!(p.read(SLAVE_DATA), 0x00, "an IMR read again");
    }

    #[test]
    fn special_mask_mode_unblocks_lower_levels() {
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.set_irq(5, true);
        assert!(!p.has_interrupt());
        // The handler masks its own level and enters special mask mode.
        p.write(MASTER_DATA, 1 << 3);
        p.write(MASTER_COMMAND, OCW3_ESMM | OCW3_SMM | OCW3_SELECT);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x28);
        // A non-specific EOI skips the masked in-service level 3.
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x08);
        // OCW3 without ESMM leaves the mode alone; with ESMM and SMM = 0 it ends.
        p.write(MASTER_COMMAND, OCW3_SMM | OCW3_SELECT);
        assert!(p.master.special_mask);
        p.write(MASTER_COMMAND, OCW3_ESMM | OCW3_SELECT);
        assert!(!p.master.special_mask);
        p.set_irq(6, true);
        p.write(MASTER_DATA, 0x00);
        assert!(
            !p.has_interrupt(),
            "level 3 blocks again outside special mask mode"
        );
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 3);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 6));
    }

    #[test]
    fn special_fully_nested_mode_lets_higher_slave_requests_nest() {
        for sfnm in [false, true] {
            let mut p = Pic::new();
            linux_init(&mut p, ICW4_8086, 0x00, 0x00);
            if sfnm {
                p.write(MASTER_COMMAND, 0x11);
                p.write(MASTER_DATA, MASTER_BASE);
                p.write(MASTER_DATA, 0x04);
                p.write(MASTER_DATA, ICW4_8086 | ICW4_SFNM);
            }
            p.set_irq(12, true);
            assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 4));
            p.set_irq(9, true); // higher priority on the slave
            assert_eq!(p.has_interrupt(), sfnm, "SFNM = {sfnm}");
            if sfnm {
                assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 1));
                assert_eq!(isr(&mut p, SLAVE_COMMAND), 0x12);
            }
            // A lower-priority master level stays blocked by master IR2 in either mode.
            p.set_irq(5, true);
            p.set_irq(13, true);
            assert!(!p.has_interrupt());
        }
    }

    #[test]
    fn icw1_reinitialisation_resets_state_and_silences_the_chip() {
        let mut p = pic();
        p.set_irq(3, true);
        p.acknowledge();
        p.set_irq(6, true);
        p.write(MASTER_DATA, 0x80);
        p.write(MASTER_COMMAND, OCW3_READ_ISR);
        p.write(MASTER_COMMAND, 0x11);
        assert_eq!(p.read(MASTER_DATA), 0x00, "ICW1 clears the IMR");
        assert_eq!(
            p.read(MASTER_COMMAND),
            0x00,
            "IRR selected, latched edges dropped"
        );
        assert_eq!(p.master.isr, 0);
        assert!(!p.has_interrupt());
        p.set_irq(1, true);
        assert!(!p.has_interrupt(), "mid-sequence the chip asserts nothing");
        assert_eq!(p.acknowledge(), None);
        p.write(MASTER_DATA, 0x50);
        p.write(MASTER_DATA, 0x04);
        p.write(MASTER_DATA, 0x01);
        // IRQ 1's edge came after ICW1 and is delivered with the new base; IRQ 3 and 6, high
        // since before ICW1, need a new edge.
        assert_eq!(p.acknowledge(), Some(0x51));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert!(!p.has_interrupt());
        p.set_irq(6, false);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), Some(0x56));
    }

    #[test]
    fn elcr_is_stored_with_its_mask_and_other_ports_are_unmapped() {
        let mut p = pic();
        p.write(ELCR_MASTER, 0xff);
        p.write(ELCR_SLAVE, 0xff);
        assert_eq!(p.read(ELCR_MASTER), 0xf8);
        assert_eq!(p.read(ELCR_SLAVE), 0xde);
        // Still edge-triggered: a held line is one request.
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 5));
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert!(!p.has_interrupt());
        let before = p.clone();
        for port in [0x22u16, 0x40, 0x9f, 0xa2, 0x4d2, 0xffff] {
            assert_eq!(p.read(port), UNMAPPED);
            p.write(port, 0x11);
        }
        assert_eq!(p, before);
    }

    #[test]
    fn irq_2_and_out_of_range_inputs_are_ignored() {
        let mut p = pic();
        let before = p.clone();
        p.set_irq(2, true);
        p.set_irq(16, true);
        p.set_irq(255, true);
        assert_eq!(p, before);
        assert!(!p.has_interrupt());
        // IRQ 15 is the last valid input.
        p.set_irq(15, true);
        assert_eq!(p.acknowledge(), Some(SLAVE_BASE + 7));
        assert_eq!(
            isr(&mut p, SLAVE_COMMAND),
            1 << 7,
            "a real IRQ 15 sets the slave ISR"
        );
    }

    #[test]
    fn ocw3_read_commands_are_the_datasheets_bytes() {
        // OCW3: D3 = 1 marks it, RR (D1) = 1 reads, RIS (D0) picks ISR over IRR.
        assert_eq!(OCW3_READ_IRR, OCW3_SELECT | OCW3_RR);
        assert_eq!(OCW3_READ_ISR, OCW3_SELECT | OCW3_RR | OCW3_RIS);
        assert_eq!((OCW3_SELECT, OCW3_RR, OCW3_RIS), (0x08, 0x02, 0x01));
    }

    #[test]
    fn rotation_at_eoi_puts_the_level_after_the_served_one_first() {
        // "Automatic Rotation": the level just served becomes the lowest, so the next one up
        // (level + 1, mod 8) the highest: after serving 3, a request on 4 beats one on 3.
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.write(MASTER_COMMAND, OCW2_ROTATE_EOI);
        p.set_irq(3, false);
        p.set_irq(3, true);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 4));
        // Rotate on specific EOI (OCW2 R SL EOI = 111): clears exactly the named level's ISR
        // bit and makes the next level the highest.
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 1));
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x0a);
        p.write(MASTER_COMMAND, OCW2_ROTATE_SPECIFIC_EOI | 3);
        assert_eq!(isr(&mut p, MASTER_COMMAND), 0x02);
        p.write(MASTER_COMMAND, OCW2_SPECIFIC_EOI | 1);
        for irq in [3, 4] {
            p.set_irq(irq, false);
            p.set_irq(irq, true);
        }
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 4));
    }

    #[test]
    fn special_fully_nested_mode_is_for_slave_lines_only() {
        // SFNM lets a request through on a level in service only where a slave sits (the
        // slave's own priority logic decides); a plain master line in service still blocks
        // a new request on itself.
        let mut p = Pic::new();
        linux_init(&mut p, ICW4_8086 | ICW4_SFNM, 0x00, 0x00);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(!p.has_interrupt(), "IR3 in service blocks IR3");
        p.write(MASTER_COMMAND, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(MASTER_BASE + 3));
    }

}
