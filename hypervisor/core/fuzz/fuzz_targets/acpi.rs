//! The ACPI table builder, built then parsed back by the `acpi` crate as a guest's ACPI code
//! would find them: any vCPU count, OEM identifiers, MADT or not, and base address. Rules
//! checked (ACPI 6.5 chapter 5): the tables lie below 1 MiB where the base says; the RSDP is
//! found at its address with revision 2; every table's bytes sum to 0 (5.2.5.3, 5.2.6); the
//! MADT, when asked for, lists one processor per vCPU with APIC ID = UID = index (5.2.12.2);
//! a refusal is exactly the rule the input broke.
#![no_main]
use acpi::{AcpiHandler, PhysicalMapping};
use bastion_core::loader::acpi::{build, AcpiConfig, BuildError, MAX_VCPUS};
use core::ptr::NonNull;
use libfuzzer_sys::fuzz_target;

/// 1 MiB and a page of guest memory (the parser maps a little past the RSDP).
const GUEST_BYTES: usize = 0x10_1000;

/// Guest memory: one zeroed 1 MiB buffer for the whole process (allocating and zeroing it
/// for every run was most of a run's cost), as words so that every table the parser maps is
/// aligned as in a guest. The handler is a plain pointer to it: the `acpi` crate keeps (never
/// drops) the handler clone inside one mapping per parse, so a handler owning the memory
/// would leak it each time.
#[derive(Clone, Copy)]
struct Guest(*mut u64);

impl Guest {
    fn get() -> Guest {
        thread_local! {
            static MEMORY: Guest = Guest(Box::leak(vec![0u64; GUEST_BYTES / 8].into_boxed_slice()).as_mut_ptr());
        }
        MEMORY.with(|m| *m)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer holds GUEST_BYTES initialised bytes and lives for the process;
        // runs are sequential, and nothing writes it while a run reads it.
        unsafe { core::slice::from_raw_parts(self.0.cast::<u8>(), GUEST_BYTES) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the caller holds the only view while it writes.
        unsafe { core::slice::from_raw_parts_mut(self.0.cast::<u8>(), GUEST_BYTES) }
    }
}

impl AcpiHandler for Guest {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        assert!(physical_address.checked_add(size).is_some_and(|end| end <= GUEST_BYTES), "the parser read {size} bytes at {physical_address:#x}, outside guest memory");
        let ptr = NonNull::new(self.bytes()[physical_address..].as_ptr().cast::<T>().cast_mut()).unwrap();
        // SAFETY: `size` bytes from `ptr` are inside the process-long buffer.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let vcpus = u.int_in_range(0..=300u32).unwrap_or(1);
    let mut oem_id = *b"BASTN ";
    let mut oem_table_id = *b"BASTION ";
    if u.arbitrary().unwrap_or(false) {
        oem_id = u.arbitrary().unwrap_or(oem_id);
        oem_table_id = u.arbitrary().unwrap_or(oem_table_id);
    }
    let madt = u.arbitrary().unwrap_or(true);
    let base = if u.arbitrary().unwrap_or(true) { u.int_in_range(0xe_0000..=0xf_ffffu64).unwrap_or(0xe_0000) } else { u.arbitrary().unwrap_or(0) };
    let cfg = AcpiConfig { vcpus, oem_id, oem_table_id, madt };
    let printable = |b: &[u8]| b.iter().all(|c| (0x20..=0x7e).contains(c));
    let t = match build(&cfg, base) {
        Ok(t) => t,
        Err(e) => {
            match e {
                BuildError::NoVcpus => assert_eq!(vcpus, 0),
                BuildError::TooManyVcpus(n) => assert!(n == vcpus && n > MAX_VCPUS),
                BuildError::OemIdNotPrintable { .. } => assert!(!printable(&oem_id) || !printable(&oem_table_id)),
                BuildError::DoesNotFit { base: b, .. } => assert_eq!(b, base),
            }
            return;
        }
    };
    assert!((1..=MAX_VCPUS).contains(&vcpus) && printable(&oem_id) && printable(&oem_table_id), "{cfg:?} was accepted");
    assert_eq!(t.base, base);
    let end = t.base + t.bytes.len() as u64;
    assert!(end <= 0x10_0000, "tables end at {end:#x}, past 1 MiB");
    let mut guest = Guest::get();
    guest.bytes_mut()[t.base as usize..end as usize].copy_from_slice(&t.bytes);
    let mem = &guest.bytes()[..end as usize];
    // Every SDT's checksum byte makes its bytes sum to 0, as long as its header says.
    for gpa in [t.xsdt_gpa, t.fadt_gpa, t.dsdt_gpa].into_iter().chain(t.madt_gpa) {
        let at = gpa as usize;
        let len = u32::from_le_bytes(mem[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(at + len <= end as usize, "table at {gpa:#x} runs past the tables");
        assert_eq!(mem[at..at + len].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "table at {gpa:#x}");
    }
    // SAFETY: the handler maps only guest memory and panics outside it.
    let parsed = unsafe { acpi::AcpiTables::from_rsdp(guest, t.rsdp_gpa as usize) }.expect("the RSDP and XSDT validate");
    assert_eq!(parsed.revision(), 2);
    assert!(parsed.dsdt().is_ok());
    assert_eq!(parsed.find_table::<acpi::madt::Madt>().is_ok(), madt);
    if madt {
        let info = parsed.platform_info().expect("FADT and MADT parse");
        let cpus = info.processor_info.expect("the MADT lists processors");
        let all: Vec<_> = core::iter::once(cpus.boot_processor).chain(cpus.application_processors.iter().copied()).collect();
        assert_eq!(all.len(), vcpus as usize);
        for (i, p) in all.iter().enumerate() {
            assert_eq!((p.processor_uid, p.local_apic_id, p.is_ap), (i as u32, i as u32, i != 0));
        }
    }
    drop(parsed);
    guest.bytes_mut()[t.base as usize..end as usize].fill(0);
});
