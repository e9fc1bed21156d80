//! The CPUs of this machine, from the ACPI MADT, and the PM timer, from the FADT (both parsed
//! by the `acpi` crate).

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// Maps ACPI tables through the bootloader's physical-memory mapping: nothing to map or unmap.
#[derive(Clone, Copy)]
struct PhysMap;

impl AcpiHandler for PhysMap {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = NonNull::new(crate::memory::phys_to_virt(phys as u64) as *mut T).expect("physical mapping is never null");
        // SAFETY: all physical memory is mapped at the offset, for the whole run.
        unsafe { PhysicalMapping::new(phys, virt, size, size, *self) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// One usable CPU.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub apic_id: u32,
    pub is_bsp: bool,
}

#[derive(Debug)]
pub struct Topology {
    pub cpus: Vec<Cpu>,
}

/// The OEM ID in the RSDP (ACPI 6.5 5.2.5.3, offset 9), read before any parsing.
pub fn rsdp_oem_id(rsdp: u64) -> [u8; 6] {
    let mut id = [0u8; 6];
    // SAFETY: the bootloader found an RSDP at this address; its first 15 bytes always exist.
    unsafe { core::ptr::copy_nonoverlapping(crate::memory::phys_to_virt(rsdp + 9), id.as_mut_ptr(), 6) };
    id
}

/// Lists the enabled CPUs from the MADT. Errors are returned as text for the log.
pub fn topology(rsdp: u64) -> Result<Topology, acpi::AcpiError> {
    // SAFETY: the address comes from the bootloader, which found and checked the RSDP.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMap, rsdp as usize) }?;
    let info = tables.platform_info()?;
    let pi = info.processor_info.ok_or(acpi::AcpiError::InvalidMadt(acpi::MadtError::UnexpectedEntry))?;
    let mut cpus = Vec::new();
    cpus.push(Cpu { apic_id: pi.boot_processor.local_apic_id, is_bsp: true });
    for p in pi.application_processors.iter() {
        if p.state != acpi::platform::ProcessorState::Disabled {
            cpus.push(Cpu { apic_id: p.local_apic_id, is_bsp: false });
        }
    }
    Ok(Topology { cpus })
}

/// Where ISA `irq` reaches the host's I/O APICs, from the MADT's I/O APIC entries and
/// interrupt source overrides (the rules: `bastion_core::host_irq`): the I/O APIC's register
/// base and the route. `pins(address)` reads how many inputs the I/O APIC at `address` has.
pub fn isa_route(rsdp: u64, irq: u8, pins: impl Fn(u64) -> u32) -> Option<(u64, bastion_core::host_irq::Route)> {
    use acpi::platform::interrupt::{Polarity, TriggerMode};
    use bastion_core::host_irq::{route, HostIoApic, Override};
    // SAFETY: as in `topology`.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMap, rsdp as usize) }.ok()?;
    let info = tables.platform_info().ok()?;
    let acpi::InterruptModel::Apic(apic) = info.interrupt_model else { return None };
    let ioapics: Vec<HostIoApic> =
        apic.io_apics.iter().map(|a| HostIoApic { address: u64::from(a.address), gsi_base: a.global_system_interrupt_base }).collect();
    let overrides: Vec<Override> = apic
        .interrupt_source_overrides
        .iter()
        .map(|o| Override {
            isa_irq: o.isa_source,
            gsi: o.global_system_interrupt,
            active_low: match o.polarity {
                Polarity::SameAsBus => None,
                Polarity::ActiveHigh => Some(false),
                Polarity::ActiveLow => Some(true),
            },
            level: match o.trigger_mode {
                TriggerMode::SameAsBus => None,
                TriggerMode::Edge => Some(false),
                TriggerMode::Level => Some(true),
            },
        })
        .collect();
    let r = route(irq, &overrides, &ioapics, |i| pins(ioapics[i].address))?;
    Some((ioapics[r.ioapic].address, r))
}

/// The ACPI PM timer from the FADT (PM_TMR_BLK or X_PM_TMR_BLK, and the TMR_VAL_EXT flag for
/// 32 bits), when it is in I/O space; `None` if the FADT lists none or cannot be read (said in
/// the log). A timer in another address space is reported and not used.
pub fn pm_timer(rsdp: u64) -> Option<crate::time::PmTimer> {
    let found = || -> Result<Option<acpi::platform::PmTimer>, acpi::AcpiError> {
        // SAFETY: as in `topology`.
        let tables = unsafe { AcpiTables::from_rsdp(PhysMap, rsdp as usize) }?;
        acpi::platform::PmTimer::new(&*tables.find_table::<acpi::fadt::Fadt>()?)
    };
    match found() {
        Ok(Some(t)) => match (t.base.address_space, u16::try_from(t.base.address)) {
            (acpi::address::AddressSpace::SystemIo, Ok(port)) => Some(crate::time::PmTimer { port, bits32: t.supports_32bit }),
            (space, _) => {
                log::info!("ACPI: the PM timer is at {:#x} in {space:?}, not I/O space; not used", t.base.address);
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            log::warn!("ACPI: cannot read the FADT ({e:?}); no PM timer");
            None
        }
    }
}
