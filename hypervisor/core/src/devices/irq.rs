//! Interrupt routing of one guest: the wires between the 8259 pair, the I/O APIC and the local
//! APIC of every vCPU, as a PC chipset lays them out.
//!
//! The three models know nothing of each other (`pic8259.rs`, `ioapic.rs`, `lapic.rs`); an
//! [`IrqChip`] owns one PIC pair, one I/O APIC and a [`Lapic`] per vCPU behind a single lock
//! and carries what one sends to another:
//!
//! - **ISA lines** ([`IrqChip::set_isa_irq`], [`IrqChip::pulse_isa_irq`]) reach both the PIC
//!   input of the same number and an I/O APIC pin: pin = IRQ, except IRQ 0 (the PIT), which is
//!   wired to pin 2 as on PC chipsets whose pin 0 carries the 8259's INTR. The guest learns
//!   that from the MADT's interrupt source override (`loader::acpi`, ISO 0 -> 2; ACPI 6.5
//!   5.2.12.5).
//! - **I/O APIC messages** go to the local APICs their destination names (SDM Vol. 3A 11.6.2:
//!   physical = APIC ID, logical = flat or cluster LDR match, 0xFF = all): fixed into each
//!   matching IRR, lowest priority into the matching APIC with the lowest processor priority
//!   (11.6.2.4; ties go to the lowest APIC ID, as the APIC bus arbitration of the P6 family
//!   did), NMI to the matching vCPUs' NMI flags.
//! - **IPIs** a local APIC queued (ICR writes) are delivered the same way, with the shorthands
//!   (11.6.1). INIT puts an application processor into the wait-for-SIPI state, where it
//!   runs nothing and takes no interrupt; the first STARTUP there records its vector
//!   ([`IrqChip::take_start`]) and later ones are ignored until the next INIT (SDM Vol. 3A
//!   9.4.4.1, 11.6.1 "Start-Up"). INIT to the boot processor would restart the firmware,
//!   which Bastion has none of: it is counted as undeliverable.
//! - Every vCPU that receives something is marked in a set the caller takes
//!   ([`IrqChip::take_kicked`]), so that a vCPU running on another CPU can be made to exit
//!   and take it at once.
//! - **EOI broadcasts** of level-triggered vectors (11.8.5) go back to the I/O APIC, which
//!   clears Remote IRR and sends again while the line is still asserted (82093AA 3.2.4).
//! - **ExtINT**: the PIC's INTR reaches a vCPU whose LINT0 is programmed ExtINT and unmasked
//!   (11.5.1), or vCPU 0 when its local APIC is disabled in IA32_APIC_BASE (11.4.3: "the
//!   processor ... functionally equivalent to an IA-32 processor without an on-chip APIC"; the
//!   8259's INTR then drives the CPU's INTR pin). Its vectors come from the PIC's acknowledge
//!   cycle and take precedence over the local APIC's, as KVM gives them.
//!
//! Firmware stands in here: Bastion boots kernels without a BIOS, so [`IrqChip::new`] leaves
//! the local APICs as a PC BIOS does before it jumps to the OS (MP spec 1.4 3.6.2.2 "Virtual
//! Wire Mode"; SeaBIOS's `smp_setup` does the same): software-enabled, LINT0 ExtINT on the
//! boot processor, LINT1 NMI everywhere. A guest that never touches its APIC therefore takes
//! the PIC's interrupts exactly as before, and Linux in PIC mode finds the virtual wire it
//! expects.
//!
//! Written by hand: no no_std crate models a chipset's interrupt wiring.

use alloc::vec::Vec;

use super::bus::BusDevice;
use super::ioapic::{IoApic, IrqMessage, DELIVERY_INIT, DELIVERY_LOWEST_PRIORITY, DELIVERY_NMI};
use super::lapic::{
    Clock, Ipi, Lapic, Shorthand, DELIVERY_FIXED, DELIVERY_STARTUP, LAPIC_BASE, LAPIC_MMIO_LEN, REG_LVT_LINT0, REG_LVT_LINT1,
    REG_SVR, SVR_APIC_ENABLED, SVR_RESET,
};
use super::pic8259::Pic;

/// The local APIC timer's input clock: 1 GHz, as KVM and QEMU give it (the SDM leaves the bus
/// frequency to the platform; guests measure it).
pub const LAPIC_BUS_HZ: u64 = 1_000_000_000;

/// IA32_APIC_BASE (SDM Vol. 3A 11.4.4, Figure 11-5).
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE bit 8: this is the boot processor (read-only).
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (CPUID hides x2APIC, so setting it faults).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: the APIC is globally enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

/// The I/O APIC pin an ISA IRQ is wired to: its own number, but the PIT's IRQ 0 is on pin 2
/// (MADT interrupt source override 0 -> 2).
pub fn isa_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// The most vCPUs a chip serves: one bit each in `kicked` (and the config's limit).
pub const MAX_VCPUS: usize = 64;
const _: () = assert!(crate::config::MAX_VCPUS as usize <= MAX_VCPUS);

/// The interrupt controllers of one guest and the wires between them.
#[derive(Debug, Clone)]
pub struct IrqChip {
    pub pic: Pic,
    pub ioapic: IoApic,
    lapics: Vec<Lapic>,
    /// Per vCPU: IA32_APIC_BASE.EN. Clear = the local APIC is off (no page, no interrupts).
    enabled: Vec<bool>,
    /// Per vCPU: an NMI waits for delivery.
    nmi: Vec<bool>,
    /// Per vCPU: in the wait-for-SIPI state (after INIT, and from power-on for the
    /// application processors of a guest that starts them itself).
    parked: Vec<bool>,
    /// Per vCPU: the vector of the STARTUP that ends its wait, not yet taken.
    sipi: Vec<Option<u8>>,
    /// vCPUs (bit n = vCPU n) that received an interrupt, NMI, INIT or STARTUP since the last
    /// [`IrqChip::take_kicked`].
    kicked: u64,
    /// The level last driven on each ISA line (bit n = IRQ n): a device access re-samples
    /// every line, and only a change has anything to do.
    isa_lines: u16,
    /// Messages and IPIs that had nowhere to go (no matching APIC, unsupported delivery mode).
    undeliverable: u64,
    clock: Clock,
}

impl IrqChip {
    /// The chip of a guest with `vcpus` vCPUs (APIC IDs 0..vcpus; 1 to 64, what the config
    /// allows and `kicked` holds), in the state firmware leaves it; local APIC timers run on
    /// `clock` (ns).
    pub fn new(vcpus: usize, clock: Clock) -> Self {
        let n = vcpus.clamp(1, MAX_VCPUS);
        let mut chip = IrqChip {
            pic: Pic::new(),
            ioapic: IoApic::new(),
            lapics: (0..n).map(|i| Lapic::with_clock(i as u8, LAPIC_BUS_HZ, clock)).collect(),
            enabled: alloc::vec![true; n],
            nmi: alloc::vec![false; n],
            parked: alloc::vec![false; n],
            sipi: alloc::vec![None; n],
            kicked: 0,
            isa_lines: 0,
            undeliverable: 0,
            clock,
        };
        for v in 0..n {
            chip.firmware_setup(v);
        }
        chip
    }

    /// What a BIOS leaves in local APIC `v` (see the module documentation).
    fn firmware_setup(&mut self, v: usize) {
        let now = (self.clock)();
        let lapic = &mut self.lapics[v];
        // Spurious vector 0xFF (bits 7:0) and APIC enabled (bit 8): disjoint, so `+`.
        lapic.write_register(REG_SVR, SVR_RESET + SVR_APIC_ENABLED, now);
        if v == 0 {
            lapic.write_register(REG_LVT_LINT0, u32::from(super::lapic::DELIVERY_EXTINT) << 8, now);
        }
        lapic.write_register(REG_LVT_LINT1, u32::from(DELIVERY_NMI) << 8, now);
    }

    /// How many vCPUs (local APICs) the chip serves.
    pub fn vcpus(&self) -> usize {
        self.lapics.len()
    }

    /// Local APIC `v`, for inspection.
    pub fn lapic(&self, v: usize) -> Option<&Lapic> {
        self.lapics.get(v)
    }

    /// Drives ISA line `irq` (0..=15) to `level`, at the PIC and the I/O APIC. Driving a line
    /// to the level it has does nothing (neither chip sees an edge, and a level input that
    /// stays asserted is the I/O APIC's to re-send after an EOI).
    pub fn set_isa_irq(&mut self, irq: u8, level: bool) {
        let bit = 1u16 << (irq & 15);
        if irq > 15 || (self.isa_lines & bit != 0) == level {
            return;
        }
        self.isa_lines ^= bit;
        self.pic.set_irq(irq, level);
        self.ioapic.set_irq(isa_pin(irq), level);
        self.route();
    }

    /// One edge on ISA line `irq`: lowered, then raised (the 8259 and an edge-triggered I/O
    /// APIC input both latch the rising edge; 8259A datasheet, 82093AA 3.2.4 bit 15).
    pub fn pulse_isa_irq(&mut self, irq: u8) {
        self.set_isa_irq(irq, false);
        self.set_isa_irq(irq, true);
    }

    /// Whether the 8259's INTR reaches vCPU `v`: LINT0 unmasked in ExtINT mode, or the boot
    /// processor with its APIC disabled.
    pub fn accepts_pic(&self, v: usize) -> bool {
        match self.lapics.get(v) {
            Some(l) if self.enabled[v] => l.lint0_extint_enabled(),
            Some(_) => v == 0,
            None => false,
        }
    }

    /// Whether vCPU `v` has an external interrupt to take (from the PIC or its local APIC).
    pub fn has_interrupt(&self, v: usize) -> bool {
        (self.accepts_pic(v) && self.pic.has_interrupt()) || self.lapics.get(v).is_some_and(|l| l.pending_vector().is_some())
    }

    /// Whether vCPU `v` should run again: in wait-for-SIPI, a STARTUP came; otherwise an
    /// interrupt or NMI waits, or an INIT has just parked it (it must stop what it runs).
    pub fn wakes(&self, v: usize) -> bool {
        if v >= self.lapics.len() {
            return false;
        }
        if self.parked[v] {
            return self.sipi[v].is_some();
        }
        self.has_interrupt(v) || self.nmi[v]
    }

    /// Puts application processor `v` into wait-for-SIPI (as power-on does on a PC, where
    /// only the boot processor runs the firmware).
    pub fn park(&mut self, v: usize) {
        if let Some(p) = self.parked.get_mut(v) {
            *p = true;
        }
    }

    /// Whether vCPU `v` waits for a STARTUP.
    pub fn is_parked(&self, v: usize) -> bool {
        self.parked.get(v) == Some(&true)
    }

    /// The STARTUP vector that ends vCPU `v`'s wait-for-SIPI, if one came: the vCPU starts in
    /// real mode at `vector * 0x1000` (CS = vector << 8, IP = 0; SDM Vol. 3A 11.6.1).
    pub fn take_start(&mut self, v: usize) -> Option<u8> {
        let vector = self.sipi.get_mut(v)?.take()?;
        self.parked[v] = false;
        Some(vector)
    }

    /// The vCPUs that received something since the last call (bit n = vCPU n).
    pub fn take_kicked(&mut self) -> u64 {
        core::mem::take(&mut self.kicked)
    }

    /// Whether anything could still interrupt vCPU `v` if no vCPU ran again: its local APIC
    /// timer is armed, the PIC is initialised and reaches it, or an unmasked I/O APIC entry
    /// names it. When every vCPU of a guest is halted and none has a source, nothing can ever
    /// wake the guest.
    pub fn has_source(&self, v: usize) -> bool {
        if v >= self.lapics.len() || self.parked[v] {
            return false;
        }
        if self.next_deadline(v, 0).is_some() || (self.accepts_pic(v) && self.pic.is_initialised()) {
            return true;
        }
        (0..super::ioapic::IOAPIC_PINS).filter_map(|pin| self.ioapic.redirection_entry(pin)).any(|e| {
            let logical = e & (1 << 11) != 0;
            e & super::ioapic::RTE_MASKED == 0
                && self.enabled[v]
                && self.lapics[v].matches_destination((e >> super::ioapic::RTE_DEST_SHIFT) as u8, logical)
        })
    }

    /// The interrupt acknowledge cycle for vCPU `v`: the vector to inject, taken from the PIC
    /// (ExtINT) or moved from the local APIC's IRR to its ISR.
    pub fn acknowledge(&mut self, v: usize) -> Option<u8> {
        if self.accepts_pic(v) && self.pic.has_interrupt() {
            return self.pic.acknowledge();
        }
        self.lapics.get_mut(v)?.acknowledge()
    }

    /// Whether vCPU `v` has an NMI to take.
    pub fn has_nmi(&self, v: usize) -> bool {
        self.nmi.get(v) == Some(&true)
    }

    /// Takes vCPU `v`'s pending NMI.
    pub fn take_nmi(&mut self, v: usize) -> bool {
        self.nmi.get_mut(v).is_some_and(core::mem::take)
    }

    /// How many messages and IPIs reached no APIC or asked for a delivery mode nobody serves.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable
    }

    /// Fires every local APIC timer due by `now`.
    pub fn advance(&mut self, now: u64) {
        for l in &mut self.lapics {
            l.advance(now);
        }
    }

    /// When vCPU `v`'s local APIC timer next raises an interrupt.
    pub fn next_deadline(&self, v: usize, now: u64) -> Option<u64> {
        let l = self.lapics.get(v)?;
        if self.enabled[v] {
            l.next_deadline(now)
        } else {
            None
        }
    }

    /// Whether vCPU `v` may end its current interrupt without an EOI write (the paravirtual
    /// EOI, `vm::pv_eoi`): the vector in service is edge-triggered, so its EOI concerns no I/O
    /// APIC, and nothing waits in the IRR that the EOI would let through.
    pub fn eoi_can_be_skipped(&self, v: usize) -> Option<u8> {
        let l = self.lapics.get(v).filter(|_| self.enabled[v])?;
        let vector = l.in_service()?;
        (!l.irr_pending() && !l.level_triggered(vector)).then_some(vector)
    }

    /// Whether `vector` is the highest in service on vCPU `v`.
    pub fn in_service(&self, v: usize) -> Option<u8> {
        self.lapics.get(v)?.in_service()
    }

    /// An EOI on vCPU `v` as if written to its EOI register (11.8.5).
    pub fn eoi(&mut self, v: usize) {
        let broadcast = match self.lapics.get_mut(v) {
            Some(l) => l.eoi(),
            None => return,
        };
        if let Some(vector) = broadcast {
            self.ioapic.eoi(vector);
        }
        self.route();
    }

    /// vCPU `v`'s local APIC state for a report ([`Lapic::summary`]).
    pub fn lapic_summary(&self, v: usize, now_ns: u64) -> alloc::string::String {
        self.lapics.get(v).map_or_else(|| alloc::string::String::from("no local APIC"), |l| l.summary(now_ns))
    }

    /// TPR of vCPU `v` (what CR8 shows in its bits 7:4, SDM Vol. 3A 11.8.6.1).
    pub fn tpr(&self, v: usize) -> u8 {
        self.lapics.get(v).map_or(0, |l| l.tpr())
    }

    /// Loads TPR of vCPU `v` as a MOV to CR8 left it.
    pub fn set_tpr(&mut self, v: usize, tpr: u8) {
        if let Some(l) = self.lapics.get_mut(v) {
            l.set_tpr(tpr);
        }
    }

    /// Whether `gpa` is vCPU `v`'s local APIC page (each vCPU sees its own at the same
    /// address; a disabled APIC has none, 11.4.3).
    pub fn claims(&self, v: usize, gpa: u64) -> bool {
        self.enabled.get(v) == Some(&true) && (LAPIC_BASE..LAPIC_BASE + LAPIC_MMIO_LEN).contains(&gpa)
    }

    /// A load by vCPU `v` from its local APIC page.
    pub fn lapic_read(&mut self, v: usize, gpa: u64, data: &mut [u8]) {
        if let Some(l) = self.lapics.get_mut(v) {
            l.read(gpa - LAPIC_BASE, data);
        }
        self.route();
    }

    /// A store by vCPU `v` to its local APIC page: EOIs, IPIs and timer writes take effect.
    pub fn lapic_write(&mut self, v: usize, gpa: u64, data: &[u8]) {
        if let Some(l) = self.lapics.get_mut(v) {
            l.write(gpa - LAPIC_BASE, data);
        }
        self.route();
    }

    /// IA32_APIC_BASE of vCPU `v` as RDMSR shows it: the fixed base, BSP on vCPU 0, EN.
    pub fn apic_base(&self, v: usize) -> u64 {
        let bsp = if v == 0 { APIC_BASE_BSP } else { 0 };
        let en = if self.enabled.get(v) == Some(&true) { APIC_BASE_ENABLE } else { 0 };
        // Bits 35:12, 8 and 11: disjoint, so `+`.
        LAPIC_BASE + bsp + en
    }

    /// WRMSR IA32_APIC_BASE on vCPU `v`; `Err` means #GP. The base cannot move (Bastion keeps
    /// every local APIC page at 0xFEE0_0000, where the MADT says it is), bits above the
    /// 36-bit physical address width and the reserved bits 0-7 and 9 fault (11.4.4), and so
    /// does x2APIC mode (bit 10), which CPUID does not offer. Clearing EN disables the APIC:
    /// it returns to its power-up state, with LINT0/LINT1 gone to the CPU's INTR/NMI pins;
    /// setting EN again brings it back in that state (11.4.3).
    pub fn set_apic_base(&mut self, v: usize, value: u64) -> Result<(), ()> {
        if v >= self.lapics.len() || value & !(APIC_BASE_ENABLE + APIC_BASE_BSP) != LAPIC_BASE {
            return Err(());
        }
        if value & APIC_BASE_BSP != self.apic_base(v) & APIC_BASE_BSP {
            return Err(());
        }
        let on = value & APIC_BASE_ENABLE != 0;
        if on != self.enabled[v] {
            self.enabled[v] = on;
            self.lapics[v] = Lapic::with_clock(v as u8, LAPIC_BUS_HZ, self.clock);
        }
        Ok(())
    }

    /// A reset of the whole machine: every controller in its firmware state.
    pub fn reset(&mut self) {
        *self = IrqChip::new(self.lapics.len(), self.clock);
    }

    /// Carries everything the models queued for each other: EOI broadcasts to the I/O APIC,
    /// then its messages (an EOI can make it send again) and the IPIs to the local APICs. One
    /// pass is enough: delivering a message or an IPI queues no EOI, message or IPI.
    pub fn route(&mut self) {
        for v in 0..self.lapics.len() {
            for vector in self.lapics[v].take_eoi_broadcasts() {
                self.ioapic.eoi(vector);
            }
        }
        while let Some(m) = self.ioapic.pop_message() {
            self.deliver_message(m);
        }
        for v in 0..self.lapics.len() {
            while let Some(ipi) = self.lapics[v].pop_ipi() {
                self.deliver_ipi(v, ipi);
            }
        }
    }

    /// The vCPUs a destination names (11.6.2), in APIC ID order.
    fn targets(&self, dest: u8, logical: bool) -> Vec<usize> {
        (0..self.lapics.len()).filter(|&v| self.enabled[v] && self.lapics[v].matches_destination(dest, logical)).collect()
    }

    fn deliver_message(&mut self, m: IrqMessage) {
        let targets = self.targets(m.dest, m.logical);
        self.deliver(&targets, m.delivery_mode, m.vector, m.level);
    }

    fn deliver_ipi(&mut self, from: usize, ipi: Ipi) {
        let targets: Vec<usize> = match ipi.shorthand {
            Shorthand::None => self.targets(ipi.dest, ipi.dest_mode_logical),
            // The sending APIC handled its own part of "self" (lapic.rs); nothing is queued.
            Shorthand::SelfOnly => return,
            Shorthand::AllIncludingSelf => (0..self.lapics.len()).filter(|&v| self.enabled[v]).collect(),
            Shorthand::AllExcludingSelf => (0..self.lapics.len()).filter(|&v| v != from && self.enabled[v]).collect(),
        };
        // An INIT level de-assert (INIT, level-triggered, level 0) does nothing on xAPICs
        // (Table 11-3 note; KVM ignores it too).
        if ipi.delivery_mode == DELIVERY_INIT && ipi.trigger_level && !ipi.level {
            return;
        }
        // IPIs are edge-triggered on the xAPIC (Table 11-3).
        self.deliver(&targets, ipi.delivery_mode, ipi.vector, false);
    }

    fn deliver(&mut self, targets: &[usize], mode: u8, vector: u8, level: bool) {
        if targets.is_empty() {
            self.undeliverable += 1;
            return;
        }
        for &v in targets {
            self.kicked |= 1 << v;
        }
        match mode {
            DELIVERY_FIXED => {
                for &v in targets {
                    self.lapics[v].accept(vector, level);
                }
            }
            DELIVERY_LOWEST_PRIORITY => {
                // min_by_key keeps the first of equals: the lowest APIC ID wins a tie.
                if let Some(&v) = targets.iter().min_by_key(|&&v| self.lapics[v].ppr()) {
                    self.lapics[v].accept(vector, level);
                }
            }
            DELIVERY_NMI => targets.iter().for_each(|&v| self.nmi[v] = true),
            DELIVERY_INIT => {
                for &v in targets {
                    if v == 0 {
                        self.undeliverable += 1;
                    } else {
                        // INIT resets the APIC too, except its ID (11.4.7.3); LINT1 and SVR
                        // as firmware left them would be the OS's to set again.
                        self.parked[v] = true;
                        self.sipi[v] = None;
                        self.nmi[v] = false;
                        self.lapics[v] = Lapic::with_clock(v as u8, LAPIC_BUS_HZ, self.clock);
                    }
                }
            }
            DELIVERY_STARTUP => {
                for &v in targets {
                    if self.parked[v] && self.sipi[v].is_none() {
                        self.sipi[v] = Some(vector);
                    }
                }
            }
            // SMI (no SMM here), ExtINT through the I/O APIC and the reserved modes.
            _ => self.undeliverable += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::ioapic::{RTE_LEVEL, RTE_MASKED};
    use crate::devices::lapic::{REG_EOI, REG_ICR_HIGH, REG_ICR_LOW, REG_LDR, REG_TPR};

    fn zero() -> u64 {
        0
    }

    fn chip(vcpus: usize) -> IrqChip {
        IrqChip::new(vcpus, zero)
    }

    /// Linux's 8259 initialisation (`init_8259A`): vector base 0x20/0x28, cascade on IR2,
    /// 8086 mode; then `mask` on the master.
    fn init_pic(c: &mut IrqChip, mask: u8) {
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            c.pic.write(p, v);
        }
        c.pic.write(0x21, mask);
    }

    /// Redirection entry for `pin` through IOREGSEL/IOWIN indices 0x10 + 2*pin (82093AA 3.2.4).
    fn program_pin(c: &mut IrqChip, pin: u8, low: u32, dest: u8) {
        c.ioapic.write_register(0x10 + 2 * pin + 1, u32::from(dest) << 24);
        c.ioapic.write_register(0x10 + 2 * pin, low);
    }

    fn write_reg(c: &mut IrqChip, v: usize, reg: u64, value: u32) {
        c.lapic_write(v, LAPIC_BASE + reg, &value.to_le_bytes());
    }

    fn read_reg(c: &mut IrqChip, v: usize, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        c.lapic_read(v, LAPIC_BASE + reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_pic_reaches_the_boot_processor_through_lint0_in_virtual_wire_mode() {
        // MP spec 3.6.2.2: firmware leaves LINT0 ExtINT on the BSP only.
        let mut c = chip(2);
        init_pic(&mut c, 0xfe);
        c.pulse_isa_irq(0);
        assert!(c.accepts_pic(0) && !c.accepts_pic(1));
        assert!(c.has_interrupt(0));
        assert!(!c.has_interrupt(1), "an AP's LINT0 is masked");
        assert_eq!(c.acknowledge(1), None);
        assert_eq!(c.acknowledge(0), Some(0x20), "the vector comes from the 8259's INTA cycle");
        assert!(!c.has_interrupt(0));
    }

    #[test]
    fn masking_lint0_cuts_the_pic_off_as_linux_does_in_io_apic_mode() {
        // SDM 11.5.1: a masked LVT entry delivers nothing.
        let mut c = chip(1);
        init_pic(&mut c, 0xfe);
        write_reg(&mut c, 0, REG_LVT_LINT0, 0x0001_0700);
        c.pulse_isa_irq(0);
        assert!(c.pic.has_interrupt());
        assert!(!c.has_interrupt(0));
        assert_eq!(c.acknowledge(0), None);
    }

    #[test]
    fn the_pit_irq0_arrives_on_io_apic_pin_2_and_reaches_its_destination_lapic() {
        // The MADT's override: ISA IRQ 0 -> GSI 2. Fixed, physical destination 1.
        let mut c = chip(2);
        program_pin(&mut c, 2, 0x31, 1);
        c.pulse_isa_irq(0);
        assert!(!c.has_interrupt(0));
        assert!(c.has_interrupt(1));
        assert_eq!(c.acknowledge(1), Some(0x31));
        // An edge-triggered entry sends once per rising edge (82093AA 3.2.4 bit 15).
        assert!(!c.has_interrupt(1));
        c.set_isa_irq(0, true);
        assert!(!c.has_interrupt(1), "no edge while the line stays high");
        c.pulse_isa_irq(0);
        assert!(!c.has_interrupt(1), "0x31 is in service: its own class waits (SDM 11.8.3.1)");
        write_reg(&mut c, 1, REG_EOI, 0);
        assert_eq!(c.acknowledge(1), Some(0x31), "the edge was latched in the IRR meanwhile");
    }

    #[test]
    fn isa_irqs_other_than_0_use_the_pin_of_their_own_number() {
        assert_eq!((isa_pin(0), isa_pin(1), isa_pin(4), isa_pin(8), isa_pin(9)), (2, 1, 4, 8, 9));
        let mut c = chip(1);
        program_pin(&mut c, 4, 0x24, 0);
        c.set_isa_irq(4, true);
        assert_eq!(c.acknowledge(0), Some(0x24));
    }

    #[test]
    fn a_chip_serves_1_to_64_vcpus() {
        assert_eq!(chip(0).vcpus(), 1);
        let mut c = chip(65);
        assert_eq!(c.vcpus(), MAX_VCPUS);
        // The last one is kicked like the first (bit 63 of the kick mask).
        write_reg(&mut c, 0, REG_ICR_HIGH, 63 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, 0x40);
        assert_eq!(c.take_kicked(), 1 << 63);
    }

    #[test]
    fn only_isa_lines_0_to_15_are_driven_and_never_a_pci_pin_of_the_io_apic() {
        // ISA has IRQs 0-15; I/O APIC pins 16-23 are PCI's (MP spec 5.3; the MADT names no
        // ISA override above 15). A number past 15 reaches neither chip.
        let mut c = chip(1);
        program_pin(&mut c, 16, 0x50, 0);
        c.set_isa_irq(16, true);
        assert!(!c.has_interrupt(0));
        c.ioapic.set_irq(16, true);
        c.route();
        assert_eq!(c.acknowledge(0), Some(0x50), "pin 16 itself works");
    }

    #[test]
    fn a_level_interrupt_is_sent_again_after_the_eoi_while_its_line_stays_asserted() {
        // SDM 11.8.5: EOI of a level vector is broadcast to the I/O APIC; 82093AA 3.2.4 bit
        // 14: Remote IRR blocks until that EOI, then the still-asserted line sends again.
        let mut c = chip(1);
        program_pin(&mut c, 9, RTE_LEVEL as u32 | 0x49, 0);
        c.set_isa_irq(9, true);
        assert_eq!(c.acknowledge(0), Some(0x49));
        assert!(!c.has_interrupt(0), "Remote IRR holds the line back until the EOI");
        write_reg(&mut c, 0, REG_EOI, 0);
        assert!(c.has_interrupt(0), "still asserted: sent again");
        assert_eq!(c.acknowledge(0), Some(0x49));
        c.set_isa_irq(9, false);
        write_reg(&mut c, 0, REG_EOI, 0);
        assert!(!c.has_interrupt(0), "deasserted: nothing more");
    }

    #[test]
    fn a_masked_redirection_entry_sends_nothing() {
        let mut c = chip(1);
        program_pin(&mut c, 4, RTE_MASKED as u32 | 0x24, 0);
        c.set_isa_irq(4, true);
        assert!(!c.has_interrupt(0));
    }

    #[test]
    fn logical_flat_destinations_reach_every_apic_whose_ldr_bit_matches() {
        // SDM 11.6.2.2: flat model, a message reaches the APICs whose LDR shares a set bit.
        let mut c = chip(3);
        for v in 0..3 {
            write_reg(&mut c, v, REG_LDR, 1 << (24 + v));
        }
        program_pin(&mut c, 1, (1 << 11) | 0x41, 0b101);
        c.set_isa_irq(1, true);
        assert_eq!((c.has_interrupt(0), c.has_interrupt(1), c.has_interrupt(2)), (true, false, true));
    }

    #[test]
    fn lowest_priority_goes_to_the_apic_with_the_lowest_processor_priority() {
        // SDM 11.6.2.4: the lowest-priority processor among the destination accepts it.
        let mut c = chip(2);
        for v in 0..2 {
            write_reg(&mut c, v, REG_LDR, 1 << (24 + v));
        }
        write_reg(&mut c, 0, REG_TPR, 0x40);
        program_pin(&mut c, 1, (1 << 11) | (1 << 8) | 0x51, 0b11);
        c.set_isa_irq(1, true);
        assert!(!c.has_interrupt(0) && c.has_interrupt(1), "vCPU 1's PPR 0 is below vCPU 0's 0x40");
        // Equal priorities: the lowest APIC ID.
        write_reg(&mut c, 0, REG_TPR, 0);
        c.set_isa_irq(1, false);
        c.set_isa_irq(1, true);
        assert_eq!(c.acknowledge(0), Some(0x51));
    }

    #[test]
    fn a_fixed_ipi_reaches_the_named_vcpu_and_shorthands_select_the_others() {
        // SDM 11.6.1: ICR high holds the destination, the low write sends.
        let mut c = chip(3);
        write_reg(&mut c, 0, REG_ICR_HIGH, 2 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, 0x61);
        assert_eq!((c.has_interrupt(1), c.has_interrupt(2)), (false, true));
        assert_eq!(c.acknowledge(2), Some(0x61));
        write_reg(&mut c, 2, REG_EOI, 0);
        // All excluding self (shorthand 11), from vCPU 1.
        write_reg(&mut c, 1, REG_ICR_LOW, (3 << 18) | 0x62);
        assert_eq!((c.acknowledge(0), c.acknowledge(1), c.acknowledge(2)), (Some(0x62), None, Some(0x62)));
        for v in [0, 2] {
            write_reg(&mut c, v, REG_EOI, 0);
        }
        // All including self (shorthand 10).
        write_reg(&mut c, 1, REG_ICR_LOW, (2 << 18) | 0x63);
        assert_eq!((c.acknowledge(0), c.acknowledge(1), c.acknowledge(2)), (Some(0x63), Some(0x63), Some(0x63)));
    }

    #[test]
    fn nmi_ipis_are_kept_for_their_target_and_wake_it() {
        let mut c = chip(2);
        write_reg(&mut c, 0, REG_ICR_HIGH, 1 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_NMI)) << 8);
        assert!(c.wakes(1) && !c.has_interrupt(1));
        assert_eq!(c.take_kicked(), 0b10, "the target is marked for a kick");
        assert_eq!(c.take_kicked(), 0, "taken once");
        assert!(c.take_nmi(1));
        assert!(!c.take_nmi(1), "taken once");
        assert!(!c.wakes(1));
    }

    #[test]
    fn init_parks_an_application_processor_until_the_first_startup() {
        // SDM 9.4.4.1 (the INIT-SIPI-SIPI sequence) and 11.6.1: INIT puts the AP in
        // wait-for-SIPI; STARTUP with vector VV starts it at VV000; a second STARTUP is ignored.
        let mut c = chip(2);
        write_reg(&mut c, 0, REG_ICR_HIGH, 1 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_INIT) << 8) | (1 << 14));
        assert!(c.is_parked(1) && !c.wakes(1));
        assert_eq!(c.take_kicked(), 0b10, "a running AP must stop at once");
        // Interrupts do not reach a CPU waiting for SIPI.
        assert!(!c.has_source(1));
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_STARTUP) << 8) | 0x08);
        // An INIT level de-assert does nothing (Table 11-3): the STARTUP stays recorded.
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_INIT) << 8) | (1 << 15));
        assert!(c.is_parked(1));
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_STARTUP) << 8) | 0x09);
        assert!(c.wakes(1));
        assert_eq!(c.take_start(1), Some(0x08), "the first STARTUP counts");
        assert!(!c.is_parked(1));
        assert_eq!(c.take_start(1), None);
        // Running now: a STARTUP is ignored (not in wait-for-SIPI).
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_STARTUP) << 8) | 0x0a);
        assert_eq!(c.take_start(1), None);
        assert!(!c.is_parked(0) && c.take_start(0).is_none(), "the sender is not a target");
    }

    #[test]
    fn init_resets_the_target_apic_but_its_id_and_never_parks_the_boot_processor() {
        // SDM 11.4.7.3: INIT resets the local APIC except the APIC ID (and arbitration ID).
        let mut c = chip(2);
        write_reg(&mut c, 1, REG_TPR, 0x30);
        write_reg(&mut c, 0, REG_ICR_HIGH, 1 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_INIT) << 8) | (1 << 14));
        assert_eq!(c.tpr(1), 0);
        assert_eq!(read_reg(&mut c, 1, 0x20) >> 24, 1);
        assert!(!c.lapic(1).unwrap().software_enabled());
        // INIT to vCPU 0 (all including self from vCPU 1): would rerun firmware; refused.
        write_reg(&mut c, 1, REG_ICR_LOW, (2 << 18) | (u32::from(DELIVERY_INIT) << 8) | (1 << 14));
        assert!(!c.is_parked(0));
        assert_eq!(c.undeliverable(), 1);
    }

    #[test]
    fn a_parked_vcpu_is_woken_only_by_a_startup() {
        let mut c = chip(2);
        c.park(1);
        assert!(c.is_parked(1) && !c.wakes(1) && !c.has_source(1));
        write_reg(&mut c, 0, REG_ICR_HIGH, 1 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_NMI)) << 8);
        assert!(!c.wakes(1), "an NMI does not end wait-for-SIPI");
        write_reg(&mut c, 0, REG_ICR_LOW, (u32::from(DELIVERY_STARTUP) << 8) | 0x10);
        assert!(c.wakes(1));
    }

    #[test]
    fn an_ipi_to_nobody_is_counted_as_undeliverable() {
        let mut c = chip(2);
        assert_eq!(c.undeliverable(), 0);
        write_reg(&mut c, 0, REG_ICR_HIGH, 7 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, 0x61);
        assert_eq!(c.undeliverable(), 1);
        write_reg(&mut c, 0, REG_ICR_LOW, 0x62);
        assert_eq!(c.undeliverable(), 2, "counted, one each");
        // A mode nobody serves here: SMI (no SMM), ExtINT through the I/O APIC.
        program_pin(&mut c, 3, (2 << 8) | 0x23, 0);
        c.set_isa_irq(3, true);
        program_pin(&mut c, 5, (7 << 8) | 0x25, 0);
        c.set_isa_irq(5, true);
        assert_eq!(c.undeliverable(), 4);
        assert!(!c.has_interrupt(0) && !c.take_nmi(0));
        assert!(!c.has_interrupt(0) && !c.has_interrupt(1));
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_at_the_same_address() {
        // SDM 11.4.1: every processor's APIC registers are at its own APIC base.
        let mut c = chip(2);
        assert_eq!(read_reg(&mut c, 0, 0x20) >> 24, 0);
        assert_eq!(read_reg(&mut c, 1, 0x20) >> 24, 1);
        assert!(c.claims(1, LAPIC_BASE + 0x3f0) && !c.claims(1, LAPIC_BASE + LAPIC_MMIO_LEN) && !c.claims(2, LAPIC_BASE));
    }

    #[test]
    fn apic_base_reads_the_fixed_base_with_bsp_and_enable_and_faults_on_relocation_or_x2apic() {
        // SDM 11.4.4 Figure 11-5.
        let mut c = chip(2);
        assert_eq!(c.apic_base(0), 0xfee0_0900);
        assert_eq!(c.apic_base(1), 0xfee0_0800);
        assert_eq!(c.set_apic_base(0, 0xfee0_0900), Ok(()));
        assert_eq!(c.set_apic_base(0, 0xfed0_0900), Err(()), "relocation");
        assert_eq!(c.set_apic_base(0, 0xfee0_0900 | APIC_BASE_EXTD), Err(()), "x2APIC");
        assert_eq!(c.set_apic_base(0, 0xfee0_0901), Err(()), "reserved bit 0");
        assert_eq!(c.set_apic_base(1, 0xfee0_0900), Err(()), "BSP is read-only");
        assert_eq!(c.set_apic_base(0, 1 << 40 | 0xfee0_0900), Err(()), "beyond the address width");
        assert_eq!(c.set_apic_base(2, 0xfee0_0800), Err(()), "no such vCPU");
    }

    #[test]
    fn a_disabled_apic_has_no_page_and_hands_the_pic_to_the_boot_processor() {
        // SDM 11.4.3: with IA32_APIC_BASE.EN clear the processor works as one without an APIC.
        let mut c = chip(2);
        init_pic(&mut c, 0xfe);
        write_reg(&mut c, 0, REG_LVT_LINT0, 0x0001_0700);
        assert!(!c.accepts_pic(0));
        c.set_apic_base(0, 0xfee0_0100).unwrap();
        assert_eq!(c.apic_base(0), 0xfee0_0100);
        assert!(!c.claims(0, LAPIC_BASE));
        assert!(c.accepts_pic(0), "the 8259 drives INTR directly");
        c.pulse_isa_irq(0);
        assert_eq!(c.acknowledge(0), Some(0x20));
        // Interrupts for the disabled APIC go nowhere.
        program_pin(&mut c, 4, 0x24, 0);
        c.set_isa_irq(4, true);
        assert_eq!(c.undeliverable(), 1);
        // Enabled again: the power-up state, LINT0 masked, software-disabled (11.4.7.1).
        c.set_apic_base(0, 0xfee0_0900).unwrap();
        assert!(c.claims(0, LAPIC_BASE));
        assert!(!c.accepts_pic(0));
        assert!(!c.lapic(0).unwrap().software_enabled());
    }

    std::thread_local! {
        static NOW: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }
    fn now() -> u64 {
        NOW.with(|n| n.get())
    }

    #[test]
    fn the_lapic_timer_fires_on_its_own_vcpu_at_its_deadline() {
        // SDM 11.5.4: one-shot, divide by 1, 1 GHz bus: initial count N fires N ns later.
        NOW.with(|n| n.set(1_000));
        let mut c = IrqChip::new(2, now);
        write_reg(&mut c, 1, 0x3e0, 0b1011);
        write_reg(&mut c, 1, 0x320, 0x40);
        write_reg(&mut c, 1, 0x380, 5_000);
        assert_eq!(c.next_deadline(1, 1_000), Some(6_000));
        assert_eq!(c.next_deadline(0, 1_000), None);
        c.advance(5_999);
        assert!(!c.has_interrupt(1));
        c.advance(6_000);
        assert_eq!(c.acknowledge(1), Some(0x40));
        assert!(!c.has_interrupt(0));
    }

    #[test]
    fn each_vcpus_summary_is_its_own_local_apics() {
        let mut c = chip(2);
        c.set_tpr(1, 0x50);
        assert!(c.lapic_summary(0, 0).contains(" TPR 0x00 "), "{}", c.lapic_summary(0, 0));
        assert!(c.lapic_summary(1, 0).contains(" TPR 0x50 "), "{}", c.lapic_summary(1, 0));
        assert_eq!(c.lapic_summary(2, 0), "no local APIC");
    }

    #[test]
    fn tpr_loads_and_reads_back_per_vcpu_and_holds_back_lower_classes() {
        // SDM 11.8.3.1: an interrupt whose class is not above the PPR's waits.
        let mut c = chip(2);
        c.set_tpr(1, 0x50);
        assert_eq!((c.tpr(0), c.tpr(1)), (0, 0x50));
        write_reg(&mut c, 0, REG_ICR_HIGH, 1 << 24);
        write_reg(&mut c, 0, REG_ICR_LOW, 0x55);
        assert!(!c.has_interrupt(1));
        c.set_tpr(1, 0x40);
        assert_eq!(c.acknowledge(1), Some(0x55));
    }

    #[test]
    fn a_vcpu_has_a_source_while_a_timer_the_pic_or_an_io_apic_entry_can_reach_it() {
        let mut c = chip(2);
        assert!(!c.has_source(0), "an uninitialised 8259 never raises INTR");
        init_pic(&mut c, 0xff);
        assert!(c.has_source(0) && !c.has_source(1), "the PIC reaches the BSP only");
        program_pin(&mut c, 4, RTE_MASKED as u32 | 0x24, 1);
        assert!(!c.has_source(1), "a masked entry reaches nobody");
        program_pin(&mut c, 4, 0x24, 1);
        assert!(c.has_source(1));
        // Logical destinations count too (flat model, LDR bit 1 for vCPU 1).
        program_pin(&mut c, 4, RTE_MASKED as u32, 1);
        write_reg(&mut c, 1, REG_LDR, 2 << 24);
        program_pin(&mut c, 5, (1 << 11) | 0x25, 0b10);
        assert!(c.has_source(1));
        program_pin(&mut c, 5, RTE_MASKED as u32, 0);
        assert!(!c.has_source(1));
        write_reg(&mut c, 1, 0x320, 0x40);
        write_reg(&mut c, 1, 0x380, 100);
        assert!(c.has_source(1), "an armed timer");
        assert!(!c.has_source(2), "no such vCPU");
    }

    #[test]
    fn driving_a_line_to_the_level_it_has_sends_nothing_new() {
        // An edge input sends on the rising edge only (82093AA 3.2.4 bit 15): re-sampling a
        // line that stays high (every device access does) must not look like a new edge.
        let mut c = chip(1);
        program_pin(&mut c, 4, 0x34, 0);
        c.set_isa_irq(4, true);
        assert_eq!(c.acknowledge(0), Some(0x34));
        write_reg(&mut c, 0, REG_EOI, 0);
        c.set_isa_irq(4, true);
        assert!(!c.has_interrupt(0));
        c.set_isa_irq(4, false);
        c.set_isa_irq(4, true);
        assert_eq!(c.acknowledge(0), Some(0x34));
        // ISA has lines 0-15: "IRQ 16" drives nothing, not even an I/O APIC pin 16.
        program_pin(&mut c, 16, 0x36, 0);
        c.set_isa_irq(16, true);
        assert!(!c.has_interrupt(0), "no ISA line 16");
        write_reg(&mut c, 0, REG_EOI, 0);
        program_pin(&mut c, 15, 0x3f, 0);
        c.set_isa_irq(15, true);
        assert_eq!(c.acknowledge(0), Some(0x3f), "line 15 is the last ISA line");
    }

    #[test]
    fn firmware_leaves_lint1_as_nmi_on_every_vcpu_and_lint0_extint_on_the_bsp_only() {
        // MP spec 3.6.2.2 / SeaBIOS: LINT0 ExtINT (BSP), LINT1 NMI, APIC software-enabled.
        let mut c = chip(2);
        for v in 0..2 {
            assert_eq!(read_reg(&mut c, v, REG_LVT_LINT1), 0x400, "vCPU {v}");
            assert_eq!(read_reg(&mut c, v, REG_SVR), 0x1ff);
        }
        assert_eq!(read_reg(&mut c, 0, REG_LVT_LINT0), 0x700);
        assert_eq!(read_reg(&mut c, 1, REG_LVT_LINT0), 0x0001_0000);
    }

    #[test]
    fn reset_brings_back_the_firmware_state() {
        let mut c = chip(2);
        write_reg(&mut c, 0, REG_LVT_LINT0, 0x0001_0700);
        c.set_apic_base(1, 0xfee0_0000).unwrap();
        c.reset();
        assert!(c.accepts_pic(0));
        assert_eq!(c.apic_base(1), 0xfee0_0800);
        assert_eq!(c.vcpus(), 2);
    }
}
