//! How the host routes one of its ISA interrupts (COM1's IRQ 4, for console input) through its
//! own I/O APIC to the boot CPU: which I/O APIC and pin, with which polarity and trigger mode,
//! and the redirection entry to write. Pure: the kernel reads the MADT with the `acpi` crate
//! and writes the entry (`hypervisor/src/ioapic.rs`).
//!
//! The rules: an ISA IRQ reaches GSI = IRQ, active high and edge-triggered (the ISA bus's
//! conventions), unless the MADT has an Interrupt Source Override for it, which gives the GSI
//! and may give polarity and trigger mode ("conforms to the bus" keeps the ISA ones) (ACPI 6.5
//! 5.2.12.5, Table 5.25 MPS INTI flags). The GSI belongs to the I/O APIC whose range
//! [base, base + pins) holds it (5.2.12.3). The redirection entry (82093AA 3.2.4): vector in
//! bits 7:0, fixed delivery, physical destination, polarity bit 13, trigger bit 15, unmasked,
//! destination APIC ID in bits 63:56.
//!
//! Written by hand: the `acpi` crate parses the tables but does not resolve routes.

use crate::devices::ioapic::{RTE_DEST_SHIFT, RTE_LEVEL, RTE_POLARITY_LOW};

/// What an Interrupt Source Override says about one ISA IRQ; `None` = conforms to the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub isa_irq: u8,
    pub gsi: u32,
    pub active_low: Option<bool>,
    pub level: Option<bool>,
}

/// One I/O APIC of the host: its register base and first GSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIoApic {
    pub address: u64,
    pub gsi_base: u32,
}

/// Where an ISA IRQ arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index into the I/O APIC list given to [`route`].
    pub ioapic: usize,
    pub pin: u32,
    pub active_low: bool,
    pub level: bool,
}

/// The route of ISA `irq`, given the MADT's overrides and I/O APICs; `pins(i)` is how many
/// inputs I/O APIC `i` has (its version register's Max Redirection Entry + 1). `None` when no
/// I/O APIC has the GSI.
pub fn route(irq: u8, overrides: &[Override], ioapics: &[HostIoApic], pins: impl Fn(usize) -> u32) -> Option<Route> {
    let o = overrides.iter().find(|o| o.isa_irq == irq);
    let gsi = o.map_or(u32::from(irq), |o| o.gsi);
    let active_low = o.and_then(|o| o.active_low).unwrap_or(false);
    let level = o.and_then(|o| o.level).unwrap_or(false);
    let (i, a) = ioapics.iter().enumerate().find(|(i, a)| gsi >= a.gsi_base && gsi - a.gsi_base < pins(*i))?;
    Some(Route { ioapic: i, pin: gsi - a.gsi_base, active_low, level })
}

/// The redirection entry that delivers `r` as `vector` to the local APIC `dest`, unmasked.
pub fn redirection_entry(r: &Route, vector: u8, dest: u8) -> u64 {
    let mut e = u64::from(vector) + (u64::from(dest) << RTE_DEST_SHIFT);
    if r.active_low {
        e |= RTE_POLARITY_LOW;
    }
    if r.level {
        e |= RTE_LEVEL;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [HostIoApic; 1] = [HostIoApic { address: 0xfec0_0000, gsi_base: 0 }];

    #[test]
    fn an_isa_irq_without_override_is_its_own_gsi_active_high_edge() {
        // ACPI 6.5 5.2.12.5: ISA interrupts are identity-mapped unless overridden.
        let r = route(4, &[], &ONE, |_| 24).unwrap();
        assert_eq!(r, Route { ioapic: 0, pin: 4, active_low: false, level: false });
    }

    #[test]
    fn an_override_moves_the_irq_and_sets_polarity_and_trigger() {
        let o = [
            Override { isa_irq: 0, gsi: 2, active_low: None, level: None },
            Override { isa_irq: 4, gsi: 20, active_low: Some(true), level: Some(true) },
        ];
        assert_eq!(route(0, &o, &ONE, |_| 24).unwrap().pin, 2);
        assert_eq!(route(4, &o, &ONE, |_| 24).unwrap(), Route { ioapic: 0, pin: 20, active_low: true, level: true });
        // "Conforms to the bus" keeps ISA's active high, edge.
        let r = route(0, &o, &ONE, |_| 24).unwrap();
        assert!(!r.active_low && !r.level);
    }

    #[test]
    fn the_gsi_is_found_in_the_io_apic_whose_range_holds_it() {
        // ACPI 6.5 5.2.12.3: each I/O APIC serves [GSI base, base + its inputs).
        let two = [HostIoApic { address: 0xfec0_0000, gsi_base: 0 }, HostIoApic { address: 0xfec0_1000, gsi_base: 24 }];
        let o = [Override { isa_irq: 4, gsi: 27, active_low: None, level: None }];
        assert_eq!(route(4, &o, &two, |_| 24).unwrap(), Route { ioapic: 1, pin: 3, active_low: false, level: false });
        assert_eq!(route(4, &o, &two, |i| if i == 1 { 3 } else { 24 }), None, "pin 3 of a 3-input I/O APIC does not exist");
        assert_eq!(route(4, &[], &[], |_| 24), None, "no I/O APIC at all");
    }

    #[test]
    fn the_entry_carries_vector_destination_polarity_and_trigger_unmasked() {
        // 82093AA 3.2.4: bits 7:0 vector, 10:8 = 000 fixed, 11 = 0 physical, 13 polarity,
        // 15 trigger, 16 mask, 63:56 destination.
        let edge = Route { ioapic: 0, pin: 4, active_low: false, level: false };
        assert_eq!(redirection_entry(&edge, 0xe0, 3), 0x0300_0000_0000_00e0);
        let low_level = Route { active_low: true, level: true, ..edge };
        assert_eq!(redirection_entry(&low_level, 0xe0, 0), 0xa0e0);
    }
}
