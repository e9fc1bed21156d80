//! A guest's ACPI tables, built as pure code: RSDP, XSDT, FADT, FACS, DSDT and MADT, laid out
//! contiguously for one guest-physical address, every checksum filled in.
//!
//! References are to the ACPI Specification 6.5 (August 2022); sections as numbered there.
//!
//! # Why these tables
//!
//! Debian's cloud kernel has no MP-table support: it learns about the I/O APIC and about every
//! vCPU beyond the first only from the MADT, which it reaches from the RSDP through the XSDT.
//! The FADT (with its FACS and DSDT) adds what Linux needs to power the guest off: an `\_S5_`
//! object in the DSDT names the sleep type, and the FADT names the PM1a control register to
//! write it to.
//!
//! # Layout
//!
//! [`build`] lays the tables out from `base` upwards in this order, the RSDP first so that a
//! guest scanning for it finds it at the start (ACPI 6.5 §5.2.5.1: on IA-PC the RSDP is found
//! on a 16-byte boundary in 0xE_0000..0xF_FFFF, or in the EBDA's first KiB):
//!
//! ```text
//! RSDP   36 bytes       16-byte aligned (§5.2.5.1)
//! XSDT   36 + 2*8       -> FADT, MADT (the FADT names the DSDT and FACS itself, §5.2.8)
//! FADT   276            revision 6 (§5.2.9)
//! FACS   64             64-byte aligned (§5.2.10)
//! DSDT   36 + 15        AML: Name (\_S5_, Package () {5, 5, 0, 0})
//! MADT   44 + 8*vCPUs + 12 + 2*10 + 6
//! ```
//!
//! Every SDT starts on a 16-byte boundary; alignment is of the guest-physical address, so a
//! `base` that is not aligned gets leading padding (zero bytes) in [`AcpiTables::bytes`]. With
//! 254 vCPUs the whole set is 2,690 bytes. The loader puts it at 0xE_0000: memory that the
//! nested page tables map as RAM and the e820 map reports reserved (`vm::memmap`), so the guest
//! neither loses it to its allocator nor faults reading it. Everything must end at or below
//! 1 MiB ([`HIGH_MEMORY_START`]); that also keeps every address within the FADT's 32-bit fields.
//!
//! # Fixed hardware the tables promise (to be emulated)
//!
//! The FADT describes the ACPI fixed hardware as I/O ports; the PM block follows the layout of
//! QEMU's PIIX4/ICH9 power-management I/O space (base 0x600):
//!
//! | Register        | Port            | Width | What the emulation owes the guest          |
//! |-----------------|-----------------|-------|--------------------------------------------|
//! | PM1a_EVT_BLK    | 0x600..0x604    | 4     | PM1_STS (0x600, write-1-to-clear) and PM1_EN (0x602, reads back what was written: ACPICA tests GBL_EN by writing and reading it) §4.8.3.1 |
//! | PM1a_CNT_BLK    | 0x604..0x606    | 2     | SCI_EN (bit 0) reads 1 (no SMI_CMD: always in ACPI mode, §5.2.9 SMI_CMD); SLP_TYP (12:10) with SLP_EN (bit 13) = [`S5_SLP_TYP`] powers off, see [`pm1_cnt_requests_power_off`] §4.8.3.2 |
//! | PM_TMR_BLK      | 0x608..0x60C    | 4     | a free-running 32-bit counter at [`PM_TIMER_HZ`] (TMR_VAL_EXT is set) §4.8.3.3 |
//!
//! No PM1b, PM2 or GPE blocks, no SMI command port (SMI_CMD = 0), no reset register. The SCI is
//! ISA IRQ 9, routed to I/O APIC pin 9 level-triggered, active high (the MADT's override; ACPI
//! leaves the SCI's default at level, active low, §5.2.9 SCI_INT), as on QEMU's PC machines.
//! CENTURY names CMOS index 0x32, where the RTC model keeps the century
//! ([`crate::devices::rtc::REG_CENTURY`]).
//!
//! # Interrupt model (MADT)
//!
//! The local APICs at 0xFEE0_0000, one Processor Local APIC structure per vCPU with ACPI
//! processor UID = APIC ID = vCPU index (vCPU 0, the bootstrap processor, first, §5.2.12.1), all
//! enabled; PCAT_COMPAT set (a PC's 8259 pair exists and must be masked before the APICs are
//! used). One I/O APIC at 0xFEC0_0000 with GSI base 0; its ID is the vCPU count, the first ID no
//! local APIC has (xAPIC IDs are 8 bits and 0xFF is the broadcast ID, hence at most 254 vCPUs
//! with 0..=253 for them and 254 for the I/O APIC at the limit). The I/O APIC model's own ID
//! register is 4 bits wide and resets to 0, so it cannot always equal this ID; the MADT's value
//! is the one the OS goes by. ISA IRQ 0 (the PIT) arrives on GSI 2, edge-triggered active high:
//! the PC chipsets' wiring (pin 0 carries the 8259's INTR), which guests expect an override to
//! describe; ISA IRQ 9 (the SCI) on GSI 9, level-triggered active high. LINT1 of every
//! processor (UID 0xFF) is the NMI input.
//!
//! # What is left out
//!
//! No RSDT: the RSDP's revision 2 sends every ACPI 2.0+ OS to the XSDT, and RsdtAddress is 0
//! (what Firecracker and Cloud Hypervisor do too). No HPET, MCFG, SRAT or SSDTs, and a DSDT that
//! declares no devices: with `pci=off` Linux needs none of them.

use crate::devices::rtc::REG_CENTURY;
use crate::vm::memmap::{GpaRange, HIGH_MEMORY_START, IOAPIC_BASE, LAPIC_BASE};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Most vCPUs the tables can describe: xAPIC IDs 0..=253 for them, the next ID for the I/O
/// APIC, and 0xFF is the broadcast destination (SDM Vol. 3A 11.6.2.1).
pub const MAX_VCPUS: u32 = 254;

/// PM1a event block: PM1_STS at +0, PM1_EN at +2 (ACPI 6.5 §4.8.3.1).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// Bytes in the PM1 event block: two 16-bit registers.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block: PM1_CNT (§4.8.3.2).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// Bytes in the PM1 control block.
pub const PM1_CNT_LEN: u8 = 2;
/// The ACPI power-management timer (§4.8.3.3).
pub const PM_TMR_PORT: u16 = 0x608;
/// Bytes in the PM timer block; the FADT requires 4.
pub const PM_TMR_LEN: u8 = 4;
/// The PM timer's rate: 3.579545 MHz (§4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The SCI: ISA IRQ 9, and GSI 9 on the I/O APIC.
pub const SCI_IRQ: u8 = 9;

/// PM1_CNT bit 0: SCI_EN, set while the platform is in ACPI mode (§4.8.3.2.1).
pub const PM1_CNT_SCI_EN: u16 = 1; // bit 0
/// PM1_CNT bits 12:10: SLP_TYP, the sleep state to enter when SLP_EN is written.
pub const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
pub const PM1_CNT_SLP_TYP_MASK: u16 = 0b111 << PM1_CNT_SLP_TYP_SHIFT;
/// PM1_CNT bit 13: SLP_EN (write-only): enter the sleep state SLP_TYP names.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// The SLP_TYP value of S5 (soft off): the DSDT's `\_S5_` package hands it to the OS, which
/// writes `S5_SLP_TYP << 10 | SLP_EN` (0x3400) to PM1a_CNT to power off. Any value 0..=7 would
/// do (QEMU's PIIX4 uses 0); 5 is not what an all-zero write looks like, so a stray write of 0
/// with SLP_EN cannot power the guest off.
pub const S5_SLP_TYP: u16 = 5;

/// Whether a guest's write of `value` to PM1a_CNT asks to enter S5 (power off): SLP_EN set with
/// SLP_TYP = [`S5_SLP_TYP`] (ACPI 6.5 §4.8.3.2.1, §7.4.2.6 "\_S5 (Soft Off)"). Other bits
/// (SCI_EN) may be set along.
pub fn pm1_cnt_requests_power_off(value: u16) -> bool {
    value & PM1_CNT_SLP_EN != 0 && (value & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT == S5_SLP_TYP
}

/// OEM ID in the RSDP and every table header unless the configuration says otherwise.
pub const DEFAULT_OEM_ID: [u8; 6] = *b"BASTN ";
/// OEM table ID in every table header unless the configuration says otherwise.
pub const DEFAULT_OEM_TABLE_ID: [u8; 8] = *b"BASTION ";
/// The OEM revision of every table.
pub const OEM_REVISION: u32 = 1;
/// Creator ID: the tool that made the tables (for a DSDT, the "ASL compiler").
pub const CREATOR_ID: [u8; 4] = *b"BSTN";
pub const CREATOR_REVISION: u32 = 1;

/// What varies between guests' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs, 1..=[`MAX_VCPUS`]; vCPU `i` has APIC ID and ACPI processor UID `i`.
    pub vcpus: u32,
    /// Printable ASCII, padded with spaces (§5.2.6 "OEMID").
    pub oem_id: [u8; 6],
    /// Printable ASCII, padded with spaces (§5.2.6 "OEM Table ID").
    pub oem_table_id: [u8; 8],
    /// Describe the APICs (the MADT). Without one a guest finds no local or I/O APIC in the
    /// tables and keeps its interrupts on the 8259 pair (Linux: "APIC: Keep in PIC mode"),
    /// which is what a guest whose vCPUs offer no local APIC (CPUID.1:EDX.APIC clear) needs.
    pub madt: bool,
}

impl AcpiConfig {
    /// `vcpus` vCPUs with the default OEM identifiers.
    pub fn new(vcpus: u32) -> AcpiConfig {
        AcpiConfig { vcpus, oem_id: DEFAULT_OEM_ID, oem_table_id: DEFAULT_OEM_TABLE_ID, madt: true }
    }
}

/// Why no tables were built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// A guest needs a vCPU.
    NoVcpus,
    /// More vCPUs than [`MAX_VCPUS`].
    TooManyVcpus(u32),
    /// An OEM identifier with a byte outside printable ASCII (0x20..=0x7E).
    OemIdNotPrintable { field: &'static str },
    /// `len` bytes from `base` would run past 1 MiB (or past the end of the address space).
    DoesNotFit { base: u64, len: u64 },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoVcpus => write!(f, "ACPI tables need at least one vCPU"),
            BuildError::TooManyVcpus(n) => {
                write!(f, "{n} vCPUs: the MADT's 8-bit xAPIC IDs describe at most {MAX_VCPUS} (and the I/O APIC)")
            }
            BuildError::OemIdNotPrintable { field } => write!(f, "ACPI {field} must be printable ASCII"),
            BuildError::DoesNotFit { base, len } => {
                write!(f, "ACPI tables of {len} bytes at {base:#x} would not end at or below {HIGH_MEMORY_START:#x}")
            }
        }
    }
}

/// The tables, ready to be copied to guest-physical `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Where `bytes` go.
    pub base: u64,
    /// Everything from `base`: leading alignment padding, then the tables in the order of the
    /// module documentation.
    pub bytes: Vec<u8>,
    /// The RSDP, for a loader that passes it to the guest directly (Linux's
    /// `boot_params.acpi_rsdp_addr`, boot protocol 2.14).
    pub rsdp_gpa: u64,
    pub xsdt_gpa: u64,
    pub fadt_gpa: u64,
    pub facs_gpa: u64,
    pub dsdt_gpa: u64,
    /// `None` when the config asked for no MADT.
    pub madt_gpa: Option<u64>,
}

impl AcpiTables {
    /// The guest-physical range `bytes` occupy.
    pub fn range(&self) -> GpaRange {
        GpaRange { base: self.base, len: self.bytes.len() as u64 }
    }
}

/// RSDP length with the ACPI 2.0+ extension (§5.2.5.3).
pub const RSDP_LEN: usize = 36;
/// The part of the RSDP the legacy checksum covers (ACPI 1.0's structure).
const RSDP_V1_LEN: usize = 20;
/// §5.2.5.1: the RSDP is on a 16-byte boundary.
const RSDP_ALIGN: u64 = 16;
/// Alignment Bastion gives every SDT (the specification asks for none).
const TABLE_ALIGN: u64 = 16;
/// §5.2.10: the FACS is aligned on a 64-byte boundary.
const FACS_ALIGN: u64 = 64;
/// The common header of every SDT (§5.2.6).
const SDT_HEADER_LEN: usize = 36;
/// XSDT entries: FADT and (unless left out) MADT.
const XSDT_ENTRIES: usize = 2;
/// FADT revision 6 (ACPI 6.0 onwards): up to the Hypervisor Vendor Identity at 268.
const FADT_LEN: usize = 276;
const FACS_LEN: usize = 64;
/// MADT: header, Local Interrupt Controller Address, Flags (§5.2.12).
const MADT_FIXED_LEN: usize = 44;
/// Interrupt controller structure lengths (§5.2.12.2, .3, .5, .7).
const MADT_LAPIC_LEN: usize = 8;
const MADT_IOAPIC_LEN: usize = 12;
const MADT_ISO_LEN: usize = 10;
const MADT_LAPIC_NMI_LEN: usize = 6;

/// Table revisions as ACPI 6.5 defines them.
const RSDP_REVISION: u8 = 2;
const XSDT_REVISION: u8 = 1;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
/// FACS version 2: the layout with X_Firmware_Waking_Vector and OSPM flags (§5.2.10).
const FACS_VERSION: u8 = 2;
/// DSDT revision 2: AML integers are 64-bit (below 2 they would be 32-bit, §5.2.11.1).
const DSDT_REVISION: u8 = 2;
const MADT_REVISION: u8 = 6;

/// FADT Flags (§5.2.9, Table 5.10 "Fixed ACPI Description Table Fixed Feature Flags").
/// WBINVD works (bit 0, required on IA-PC).
const FADT_WBINVD: u32 = 1; // bit 0
/// C1 (HLT) is supported on all processors (bit 2).
const FADT_PROC_C1: u32 = 1 << 2;
/// No fixed-hardware power button (bit 4: "control method device, or no power button").
const FADT_PWR_BUTTON: u32 = 1 << 4;
/// No fixed-hardware sleep button (bit 5, likewise).
const FADT_SLP_BUTTON: u32 = 1 << 5;
/// The PM timer counts 32 bits, not 24 (bit 8).
const FADT_TMR_VAL_EXT: u32 = 1 << 8;
const FADT_FLAGS: u32 = FADT_WBINVD + FADT_PROC_C1 + FADT_PWR_BUTTON + FADT_SLP_BUTTON + FADT_TMR_VAL_EXT;

/// IAPC_BOOT_ARCH (§5.2.9.3): bit 1 "8042" (a keyboard controller at ports 0x60/0x64 exists,
/// `devices::i8042`), bit 2 "VGA Not Present" (don't probe VGA). Bit 0 LEGACY_DEVICES stays
/// clear: no further ISA devices to enumerate (Linux then skips PNPBIOS); bit 5 "CMOS RTC Not
/// Present" stays clear: the RTC is at 0x70/0x71.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_8042 + IAPC_BOOT_ARCH_VGA_NOT_PRESENT;

/// P_LVL2_LAT above 100 and P_LVL3_LAT above 1000 (microseconds) say C2 and C3 are not
/// supported (§5.2.9).
const P_LVL2_LAT_NONE: u16 = 101;
const P_LVL3_LAT_NONE: u16 = 1001;

/// Generic Address Structure fields (§5.2.3.2): address space 1 = System I/O; access sizes
/// 2 = word, 3 = dword.
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_WORD: u8 = 2;
const GAS_ACCESS_DWORD: u8 = 3;

/// MADT Flags bit 0: PCAT_COMPAT, the system also has a PC-AT-compatible dual 8259 (§5.2.12).
const MADT_PCAT_COMPAT: u32 = 1; // bit 0
/// Interrupt controller structure types (§5.2.12, Table 5.21).
const MADT_TYPE_LAPIC: u8 = 0;
const MADT_TYPE_IOAPIC: u8 = 1;
const MADT_TYPE_ISO: u8 = 2;
const MADT_TYPE_LAPIC_NMI: u8 = 4;
/// Processor Local APIC Flags bit 0: Enabled (§5.2.12.2). Online Capable (bit 1) stays clear,
/// as it must when Enabled is set.
const MADT_LAPIC_ENABLED: u32 = 1; // bit 0
/// MPS INTI flags (§5.2.12.5, Table 5.26): polarity in bits 1:0 (01 active high, 11 active
/// low, 00 as the bus), trigger mode in bits 3:2 (01 edge, 11 level, 00 as the bus).
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_EDGE: u16 = 0b01 << 2;
const MPS_INTI_LEVEL: u16 = 0b11 << 2;
/// Local APIC NMI: "all processors" as the ACPI processor UID (§5.2.12.7).
const MADT_ALL_PROCESSORS: u8 = 0xFF;
/// Local APIC NMI flags: as the bus defines them (NMI delivery is edge-triggered whatever the
/// LVT says, SDM Vol. 3A 11.5.1), like QEMU.
const MADT_LAPIC_NMI_FLAGS: u16 = 0;
/// The LAPIC input wired to NMI on a PC.
const MADT_LINT1: u8 = 1;
/// ISA IRQ 0 (PIT) to GSI 2; ISA IRQ 9 (SCI) to GSI 9.
const ISO_TIMER: (u8, u32, u16) = (0, 2, MPS_INTI_ACTIVE_HIGH + MPS_INTI_EDGE);
const ISO_SCI: (u8, u32, u16) = (SCI_IRQ, SCI_IRQ as u32, MPS_INTI_ACTIVE_HIGH + MPS_INTI_LEVEL);

/// The DSDT's AML (ACPI 6.5 chapter 20, "ACPI Machine Language (AML) Specification"): one
/// DefName, the ASL `Name (\_S5, Package () {5, 5, 0, 0})`:
///
/// ```text
/// 08               NameOp                         DefName := NameOp NameString DataRefObject
/// 5C               RootChar '\'                   NameString := RootChar NamePath
/// 5F 53 35 5F      NameSeg "_S5_"                 (4 chars; '_' pads the 3-letter name)
/// 12               PackageOp                      DefPackage := PackageOp PkgLength
/// 08               PkgLength = 8 (1-byte form:                  NumElements PackageElementList
///                  bits 7:6 = 0, bits 5:0 = length, counting itself and all that follows:
///                  1 + 1 + 2 + 2 + 1 + 1)
/// 04               NumElements = 4
/// 0A 05            BytePrefix 5: SLP_TYPa, the value for PM1a_CNT.SLP_TYP
/// 0A 05            BytePrefix 5: SLP_TYPb (there is no PM1b block; same value by convention)
/// 00               ZeroOp: reserved
/// 00               ZeroOp: reserved
/// ```
///
/// Linux's `acpi_get_sleep_type_data` evaluates `\_S5_` and takes SLP_TYPa/SLP_TYPb from the
/// first two elements (§7.4.2 "\_Sx (System States)").
pub const DSDT_AML: [u8; 15] = [
    0x08, // NameOp
    b'\\', b'_', b'S', b'5', b'_', // \_S5_
    0x12, // PackageOp
    0x08, // PkgLength
    0x04, // NumElements
    0x0A, S5_SLP_TYP as u8, // SLP_TYPa
    0x0A, S5_SLP_TYP as u8, // SLP_TYPb
    0x00, 0x00, // reserved
];
const DSDT_LEN: usize = SDT_HEADER_LEN + DSDT_AML.len();

/// Builds the tables for `cfg` at guest-physical `base` (see the module documentation for the
/// layout and the values). Refuses 0 or more than [`MAX_VCPUS`] vCPUs, OEM identifiers that are
/// not printable ASCII, and a `base` from which the tables would not end at or below 1 MiB.
pub fn build(cfg: &AcpiConfig, base: u64) -> Result<AcpiTables, BuildError> {
    if cfg.vcpus == 0 {
        return Err(BuildError::NoVcpus);
    }
    if cfg.vcpus > MAX_VCPUS {
        return Err(BuildError::TooManyVcpus(cfg.vcpus));
    }
    if !printable(&cfg.oem_id) {
        return Err(BuildError::OemIdNotPrintable { field: "OEM ID" });
    }
    if !printable(&cfg.oem_table_id) {
        return Err(BuildError::OemIdNotPrintable { field: "OEM table ID" });
    }

    let madt_len = MADT_FIXED_LEN + MADT_LAPIC_LEN * cfg.vcpus as usize + MADT_IOAPIC_LEN + 2 * MADT_ISO_LEN + MADT_LAPIC_NMI_LEN;
    let mut cursor = Cursor { base, end: 0 };
    let rsdp = cursor.place(RSDP_ALIGN, RSDP_LEN);
    let xsdt_entries = if cfg.madt { XSDT_ENTRIES } else { XSDT_ENTRIES - 1 };
    let xsdt = cursor.place(TABLE_ALIGN, SDT_HEADER_LEN + 8 * xsdt_entries);
    let fadt = cursor.place(TABLE_ALIGN, FADT_LEN);
    let facs = cursor.place(FACS_ALIGN, FACS_LEN);
    let dsdt = cursor.place(TABLE_ALIGN, DSDT_LEN);
    let madt = cfg.madt.then(|| cursor.place(TABLE_ALIGN, madt_len));
    let len = cursor.end as u64;
    if !base.checked_add(len).is_some_and(|end| end <= HIGH_MEMORY_START) {
        return Err(BuildError::DoesNotFit { base, len });
    }

    let gpa = |offset: usize| base + offset as u64;
    let mut bytes = vec![0u8; cursor.end];
    let mut put = |offset: usize, table: &[u8]| bytes[offset..offset + table.len()].copy_from_slice(table);
    put(rsdp, &rsdp_bytes(cfg, gpa(xsdt)));
    let entries: Vec<u64> = [Some(gpa(fadt)), madt.map(gpa)].into_iter().flatten().collect();
    put(xsdt, &xsdt_bytes(cfg, &entries));
    put(fadt, &fadt_bytes(cfg, gpa(facs), gpa(dsdt)));
    put(facs, &facs_bytes());
    put(dsdt, &dsdt_bytes(cfg));
    if let Some(madt) = madt {
        put(madt, &madt_bytes(cfg));
    }
    Ok(AcpiTables {
        base,
        bytes,
        rsdp_gpa: gpa(rsdp),
        xsdt_gpa: gpa(xsdt),
        fadt_gpa: gpa(fadt),
        facs_gpa: gpa(facs),
        dsdt_gpa: gpa(dsdt),
        madt_gpa: madt.map(gpa),
    })
}

fn printable(id: &[u8]) -> bool {
    id.iter().all(|b| (0x20..=0x7E).contains(b))
}

/// Lays structures out one after the other, each aligned in guest-physical terms.
struct Cursor {
    base: u64,
    /// Bytes used so far (offset from `base`).
    end: usize,
}

impl Cursor {
    /// The offset of a `len`-byte structure at the next `align`-aligned guest-physical address.
    fn place(&mut self, align: u64, len: usize) -> usize {
        let padding = self.base.wrapping_add(self.end as u64).wrapping_neg() & (align - 1);
        let at = self.end + padding as usize;
        self.end = at + len;
        at
    }
}

/// The value that makes `bytes` sum to 0 mod 256 when added to them.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

fn put_u16(t: &mut [u8], at: usize, v: u16) {
    t[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(t: &mut [u8], at: usize, v: u32) {
    t[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(t: &mut [u8], at: usize, v: u64) {
    t[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The RSDP (§5.2.5.3): signature "RSD PTR " at 0, checksum of bytes 0..20 at 8, OEMID at 9,
/// revision at 15, RsdtAddress at 16 (0: no RSDT), Length at 20, XsdtAddress at 24, extended
/// checksum of all 36 bytes at 32, 3 reserved bytes.
fn rsdp_bytes(cfg: &AcpiConfig, xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&cfg.oem_id);
    r[15] = RSDP_REVISION;
    put_u32(&mut r, 20, RSDP_LEN as u32);
    put_u64(&mut r, 24, xsdt);
    // The legacy checksum first: the extended one covers it.
    r[8] = checksum(&r[..RSDP_V1_LEN]);
    r[32] = checksum(&r);
    r
}

/// An SDT from `table` (whose first 36 bytes are left for the header): the header of §5.2.6
/// (signature, length, revision, checksum at 9, OEMID, OEM table ID, OEM revision, creator ID
/// and revision) filled in, checksum last.
fn sdt(signature: [u8; 4], revision: u8, cfg: &AcpiConfig, mut table: Vec<u8>) -> Vec<u8> {
    let len = table.len() as u32;
    table[0..4].copy_from_slice(&signature);
    put_u32(&mut table, 4, len);
    table[8] = revision;
    table[10..16].copy_from_slice(&cfg.oem_id);
    table[16..24].copy_from_slice(&cfg.oem_table_id);
    put_u32(&mut table, 24, OEM_REVISION);
    table[28..32].copy_from_slice(&CREATOR_ID);
    put_u32(&mut table, 32, CREATOR_REVISION);
    table[9] = checksum(&table);
    table
}

/// The XSDT (§5.2.8): the header, then 64-bit addresses of the other description tables.
fn xsdt_bytes(cfg: &AcpiConfig, entries: &[u64]) -> Vec<u8> {
    let mut t = vec![0u8; SDT_HEADER_LEN];
    for e in entries {
        t.extend_from_slice(&e.to_le_bytes());
    }
    sdt(*b"XSDT", XSDT_REVISION, cfg, t)
}

/// The DSDT (§5.2.11.1): the header, then [`DSDT_AML`].
fn dsdt_bytes(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = vec![0u8; SDT_HEADER_LEN];
    t.extend_from_slice(&DSDT_AML);
    sdt(*b"DSDT", DSDT_REVISION, cfg, t)
}

/// A Generic Address Structure (§5.2.3.2) for `width_bytes` bytes of System I/O at `port`, into
/// zeroed `t`: address space ID, register bit width, bit offset (0, left as is), access size,
/// address.
fn io_gas(t: &mut [u8], at: usize, port: u16, width_bytes: u8, access: u8) {
    t[at] = GAS_SYSTEM_IO;
    t[at + 1] = width_bytes * 8;
    t[at + 3] = access;
    put_u64(t, at + 4, u64::from(port));
}

/// The FADT, revision 6 (§5.2.9, Table 5.9); offsets are the table's. Fields not set here are 0:
/// Preferred_PM_Profile (unspecified), SMI_CMD and ACPI_ENABLE/DISABLE (no SMM: the platform is
/// always in ACPI mode), PM1b/PM2/GPE blocks, duty cycle, RTC alarms, RESET_REG, ARM_BOOT_ARCH,
/// X_FIRMWARE_CTRL (at most one of FIRMWARE_CTRL and X_FIRMWARE_CTRL may be non-zero; the FACS
/// is below 4 GiB, so the 32-bit one), SLEEP_CONTROL/STATUS_REG (hardware-reduced only), and the
/// hypervisor vendor identity.
fn fadt_bytes(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    let mut t = vec![0u8; FADT_LEN];
    put_u32(&mut t, 36, facs as u32); // FIRMWARE_CTRL
    put_u32(&mut t, 40, dsdt as u32); // DSDT
    put_u16(&mut t, 46, u16::from(SCI_IRQ)); // SCI_INT
    put_u32(&mut t, 56, u32::from(PM1A_EVT_PORT)); // PM1a_EVT_BLK
    put_u32(&mut t, 64, u32::from(PM1A_CNT_PORT)); // PM1a_CNT_BLK
    put_u32(&mut t, 76, u32::from(PM_TMR_PORT)); // PM_TMR_BLK
    t[88] = PM1_EVT_LEN;
    t[89] = PM1_CNT_LEN;
    t[91] = PM_TMR_LEN;
    put_u16(&mut t, 96, P_LVL2_LAT_NONE);
    put_u16(&mut t, 98, P_LVL3_LAT_NONE);
    t[108] = REG_CENTURY; // CENTURY: the RTC's CMOS index of the century
    put_u16(&mut t, 109, IAPC_BOOT_ARCH);
    put_u32(&mut t, 112, FADT_FLAGS);
    t[131] = FADT_MINOR_REVISION;
    put_u64(&mut t, 140, dsdt); // X_DSDT: the same table as DSDT
    // The 64-bit copies of the register blocks, consistent with the 32-bit fields (ACPICA warns
    // about a length or address mismatch). PM1 registers are 16 bits each, the timer 32.
    io_gas(&mut t, 148, PM1A_EVT_PORT, PM1_EVT_LEN, GAS_ACCESS_WORD); // X_PM1a_EVT_BLK
    io_gas(&mut t, 172, PM1A_CNT_PORT, PM1_CNT_LEN, GAS_ACCESS_WORD); // X_PM1a_CNT_BLK
    io_gas(&mut t, 208, PM_TMR_PORT, PM_TMR_LEN, GAS_ACCESS_DWORD); // X_PM_TMR_BLK
    sdt(*b"FACP", FADT_REVISION, cfg, t)
}

/// The FACS (§5.2.10, Table 5.14): no checksum (the OS writes to it). Signature, length 64,
/// hardware signature 0 (never changes: there is no hibernation), waking vectors 0 (no S3),
/// the Global Lock 0 (free), no flags (no S4BIOS, no 64-bit wake), version 2.
fn facs_bytes() -> [u8; FACS_LEN] {
    let mut f = [0u8; FACS_LEN];
    f[0..4].copy_from_slice(b"FACS");
    put_u32(&mut f, 4, FACS_LEN as u32);
    f[32] = FACS_VERSION;
    f
}

/// The MADT (§5.2.12): Local Interrupt Controller Address at 36, Flags at 40, then the
/// interrupt controller structures of the module documentation.
fn madt_bytes(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = vec![0u8; MADT_FIXED_LEN];
    put_u32(&mut t, 36, LAPIC_BASE as u32);
    put_u32(&mut t, 40, MADT_PCAT_COMPAT);
    // §5.2.12.2 Processor Local APIC: type, length, ACPI processor UID, APIC ID, flags (u32).
    for cpu in 0..cfg.vcpus as u8 {
        t.extend_from_slice(&[MADT_TYPE_LAPIC, MADT_LAPIC_LEN as u8, cpu, cpu]);
        t.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    // §5.2.12.3 I/O APIC: type, length, I/O APIC ID, reserved, address (u32), GSI base (u32).
    t.extend_from_slice(&[MADT_TYPE_IOAPIC, MADT_IOAPIC_LEN as u8, cfg.vcpus as u8, 0]);
    t.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    // §5.2.12.5 Interrupt Source Override: type, length, bus (0 = ISA), source IRQ, GSI (u32),
    // MPS INTI flags (u16).
    for (irq, gsi, flags) in [ISO_TIMER, ISO_SCI] {
        t.extend_from_slice(&[MADT_TYPE_ISO, MADT_ISO_LEN as u8, 0, irq]);
        t.extend_from_slice(&gsi.to_le_bytes());
        t.extend_from_slice(&flags.to_le_bytes());
    }
    // §5.2.12.7 Local APIC NMI: type, length, ACPI processor UID, flags (u16), LINT#.
    t.extend_from_slice(&[MADT_TYPE_LAPIC_NMI, MADT_LAPIC_NMI_LEN as u8, MADT_ALL_PROCESSORS]);
    t.extend_from_slice(&MADT_LAPIC_NMI_FLAGS.to_le_bytes());
    t.push(MADT_LINT1);
    sdt(*b"APIC", MADT_REVISION, cfg, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::acpi::address::{AccessSize, AddressSpace, GenericAddress};
    use ::acpi::fadt::Fadt;
    use ::acpi::madt::{Madt, MadtEntry};
    use ::acpi::platform::interrupt::{LocalInterruptLine, NmiProcessor, Polarity, TriggerMode};
    use ::acpi::platform::{Processor, ProcessorState};
    use ::acpi::rsdp::Rsdp;
    use ::acpi::sdt::Signature;
    use ::acpi::{AcpiHandler, AcpiTable, InterruptModel, PhysicalMapping, PowerProfile};
    use core::ptr::NonNull;
    use std::rc::Rc;

    /// Where the loader puts the tables: the start of the BIOS area Linux scans for the RSDP.
    const BASE: u64 = 0xE_0000;
    /// Guest memory for the parser: 1 MiB and a page (the `acpi` crate's BIOS search maps the
    /// RSDP's extension length past 0xF_FFFF).
    const GUEST_BYTES: usize = 0x10_1000;

    /// Guest-physical memory holding the tables, as the guest sees it; the `acpi` crate reads it
    /// through [`AcpiHandler`]. Words, so that the 16-bit EBDA pointer at 0x40E is aligned.
    #[derive(Clone)]
    struct Guest(Rc<Vec<u64>>);

    impl Guest {
        fn with(t: &AcpiTables) -> Guest {
            let mut words = vec![0u64; GUEST_BYTES / 8];
            for (i, b) in t.bytes.iter().enumerate() {
                let at = t.base as usize + i;
                words[at / 8] |= u64::from(*b) << (8 * (at % 8));
            }
            Guest(Rc::new(words))
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: the vector's GUEST_BYTES / 8 words are GUEST_BYTES initialised bytes.
            unsafe { core::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), GUEST_BYTES) }
        }
    }

    impl AcpiHandler for Guest {
        unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
            assert!(
                physical_address.checked_add(size).is_some_and(|end| end <= GUEST_BYTES),
                "the parser read {size} bytes at {physical_address:#x}, outside guest memory"
            );
            let ptr = NonNull::new(self.bytes()[physical_address..].as_ptr().cast::<T>().cast_mut()).unwrap();
            // SAFETY: `size` bytes from `ptr` lie in the memory `self` keeps alive (checked
            // above), and nothing writes them while mapped.
            unsafe { PhysicalMapping::new(physical_address, ptr, size, size, self.clone()) }
        }

        fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    }

    type Parsed = ::acpi::AcpiTables<Guest>;

    fn tables(vcpus: u32) -> AcpiTables {
        build(&AcpiConfig::new(vcpus), BASE).unwrap()
    }

    /// The tables as a guest's ACPI code finds them from the RSDP's address.
    fn parse(t: &AcpiTables) -> Parsed {
        let guest = Guest::with(t);
        // SAFETY: the handler maps only guest memory and panics outside it.
        unsafe { Parsed::from_rsdp(guest, t.rsdp_gpa as usize) }.expect("the RSDP and XSDT validate")
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// The bytes of the table at `gpa`, as long as its header says.
    fn table_at(t: &AcpiTables, gpa: u64) -> &[u8] {
        let at = (gpa - t.base) as usize;
        let len = u32_at(&t.bytes, at + 4) as usize;
        &t.bytes[at..at + len]
    }

    /// Every SDT's address with its signature.
    fn sdts(t: &AcpiTables) -> [(&'static [u8; 4], u64); 4] {
        [(b"XSDT", t.xsdt_gpa), (b"FACP", t.fadt_gpa), (b"DSDT", t.dsdt_gpa), (b"APIC", t.madt_gpa.unwrap())]
    }

    fn processors(p: &Parsed) -> Vec<Processor> {
        let info = p.platform_info().expect("FADT and MADT parse");
        let cpus = info.processor_info.expect("the MADT lists processors");
        core::iter::once(cpus.boot_processor).chain(cpus.application_processors.iter().copied()).collect()
    }

    /// ACPI 6.5 §5.2.5.1: on IA-PC the OS finds the RSDP by scanning 0xE_0000..0xF_FFFF on
    /// 16-byte boundaries for "RSD PTR " with valid checksums; §5.2.5.3: revision 2 points at
    /// the XSDT. Both a parser handed the address and one scanning the BIOS area find it.
    #[test]
    fn the_rsdp_is_found_by_address_and_by_the_bios_area_scan() {
        let t = tables(2);
        assert_eq!(t.rsdp_gpa, BASE, "first in the tables, at the aligned base");
        let parsed = parse(&t);
        assert_eq!(parsed.revision(), 2);
        // SAFETY: a BIOS-style guest memory; the handler stays inside it.
        let found = unsafe { Rsdp::search_for_on_bios(Guest::with(&t)) }.expect("the scan finds the RSDP");
        assert_eq!(found.physical_start() as u64, t.rsdp_gpa);
        assert_eq!((found.revision(), found.length(), found.xsdt_address()), (2, 36, t.xsdt_gpa));
        assert_eq!((found.oem_id(), found.rsdt_address()), ("BASTN ", 0));
        // At the top of the area too, for a base that is not 16-byte aligned.
        let high = build(&AcpiConfig::new(2), 0xF_F003).unwrap();
        let found = unsafe { Rsdp::search_for_on_bios(Guest::with(&high)) }.expect("found near 1 MiB");
        assert_eq!(found.physical_start() as u64, high.rsdp_gpa);
        assert_eq!(high.rsdp_gpa, 0xF_F010);
    }

    /// §5.2.8: the XSDT lists the description tables other than the DSDT and FACS, which the
    /// FADT names (§5.2.9 FIRMWARE_CTRL, DSDT, X_DSDT).
    #[test]
    fn the_xsdt_lists_fadt_and_madt_and_the_fadt_names_dsdt_and_facs() {
        let t = tables(4);
        let parsed = parse(&t);
        let signatures: Vec<Signature> = parsed.headers().map(|h| h.signature).collect();
        assert_eq!(signatures, [Signature::FADT, Signature::MADT]);
        let fadt = parsed.find_table::<Fadt>().unwrap();
        assert_eq!(fadt.physical_start() as u64, t.fadt_gpa);
        assert_eq!(parsed.find_table::<Madt>().unwrap().physical_start() as u64, t.madt_gpa.unwrap());
        assert_eq!(fadt.dsdt_address().unwrap() as u64, t.dsdt_gpa);
        assert_eq!(fadt.facs_address().unwrap() as u64, t.facs_gpa);
        let aml = parsed.dsdt().expect("the DSDT validates");
        assert_eq!((aml.address as u64, aml.length as usize), (t.dsdt_gpa + 36, DSDT_AML.len()));
        let guest = Guest::with(&t);
        assert_eq!(&guest.bytes()[aml.address..aml.address + DSDT_AML.len()], DSDT_AML);
        assert_eq!(parsed.ssdts().count(), 0);
    }

    /// A guest without local APICs gets no MADT: the XSDT lists the FADT alone, still
    /// checksummed and parsed back, one entry shorter.
    #[test]
    fn without_apics_there_is_no_madt() {
        let t = build(&AcpiConfig { madt: false, ..AcpiConfig::new(1) }, BASE).unwrap();
        assert_eq!(t.madt_gpa, None);
        let parsed = parse(&t);
        let signatures: Vec<Signature> = parsed.headers().map(|h| h.signature).collect();
        assert_eq!(signatures, [Signature::FADT]);
        assert!(parsed.find_table::<Madt>().is_err());
        let xsdt = table_at(&t, t.xsdt_gpa);
        assert_eq!((xsdt.len(), u64_at(xsdt, 36)), (44, t.fadt_gpa));
        // Packed: the FADT follows the one-entry XSDT at the next 16-byte boundary.
        assert_eq!(t.fadt_gpa - t.xsdt_gpa, 48);
        assert!(parsed.dsdt().is_ok());
        assert!(t.bytes.len() < tables(1).bytes.len());
    }

    /// §5.2.12.2: one Processor Local APIC structure per processor, the boot processor first
    /// (§5.2.12.1), here with ACPI processor UID = APIC ID = vCPU index, all enabled; §5.2.12.3:
    /// the I/O APIC with its ID, address and GSI base; §5.2.12: the local APIC address and
    /// PCAT_COMPAT (8259s present).
    #[test]
    fn the_madt_lists_every_vcpu_and_the_io_apic() {
        for n in [1u32, 2, 3, 8, 16, 100, 254] {
            let parsed = parse(&tables(n));
            let cpus = processors(&parsed);
            assert_eq!(cpus.len(), n as usize);
            for (i, cpu) in cpus.iter().enumerate() {
                let state = if i == 0 { ProcessorState::Running } else { ProcessorState::WaitingForSipi };
                let expect = Processor { processor_uid: i as u32, local_apic_id: i as u32, state, is_ap: i != 0 };
                assert_eq!(*cpu, expect, "{n} vCPUs: vCPU {i}");
            }
            let InterruptModel::Apic(apic) = parsed.platform_info().unwrap().interrupt_model else {
                panic!("{n} vCPUs: not the APIC model");
            };
            assert_eq!(apic.local_apic_address, 0xFEE0_0000);
            assert!(apic.also_has_legacy_pics, "PCAT_COMPAT");
            let ioapics: Vec<_> = apic.io_apics.iter().map(|a| (a.id, a.address, a.global_system_interrupt_base)).collect();
            assert_eq!(ioapics, [(n as u8, 0xFEC0_0000, 0)], "{n} vCPUs: the I/O APIC's ID follows the last APIC ID");
        }
    }

    /// §5.2.12.5: ISA IRQ 0 arrives at GSI 2 (edge, active high) and the SCI's IRQ 9 at GSI 9
    /// (level, active high); §5.2.12.7: LINT1 of every processor (UID 0xFF) is the NMI input.
    /// Nothing else: no NMI sources, a single I/O APIC.
    #[test]
    fn the_madt_overrides_irq_0_and_the_sci_and_wires_nmi_to_lint1() {
        let parsed = parse(&tables(2));
        let InterruptModel::Apic(apic) = parsed.platform_info().unwrap().interrupt_model else {
            panic!("not the APIC model");
        };
        let overrides: Vec<_> = apic
            .interrupt_source_overrides
            .iter()
            .map(|o| (o.isa_source, o.global_system_interrupt, o.polarity, o.trigger_mode))
            .collect();
        assert_eq!(
            overrides,
            [(0, 2, Polarity::ActiveHigh, TriggerMode::Edge), (9, 9, Polarity::ActiveHigh, TriggerMode::Level)]
        );
        let nmi: Vec<_> = apic.local_apic_nmi_lines.iter().map(|l| (l.processor, l.line)).collect();
        assert_eq!(nmi, [(NmiProcessor::All, LocalInterruptLine::Lint1)]);
        assert!(apic.nmi_sources.is_empty());
    }

    /// §5.2.9: the FADT (revision 6, not hardware-reduced) names the PM1a event and control
    /// blocks and the PM timer as System I/O (§4.8.3), a 32-bit timer (TMR_VAL_EXT), no PM1b,
    /// PM2 or GPE blocks, SCI_INT 9, no SMI command port, CENTURY 0x32, and IAPC_BOOT_ARCH with
    /// "8042" and "VGA Not Present" (§5.2.9.3).
    #[test]
    fn the_fadt_describes_pm_registers_sci_century_and_boot_flags() {
        let parsed = parse(&tables(1));
        let fadt = parsed.find_table::<Fadt>().unwrap();
        let io = |address, bit_width, access_size| GenericAddress {
            address_space: AddressSpace::SystemIo,
            bit_width,
            bit_offset: 0,
            access_size,
            address,
        };
        assert_eq!(fadt.pm1a_event_block().unwrap(), io(0x600, 32, AccessSize::WordAccess));
        assert_eq!(fadt.pm1a_control_block().unwrap(), io(0x604, 16, AccessSize::WordAccess));
        assert_eq!(fadt.pm_timer_block().unwrap(), Some(io(0x608, 32, AccessSize::DWordAccess)));
        assert_eq!(fadt.pm1b_event_block().unwrap(), None);
        assert_eq!(fadt.pm1b_control_block().unwrap(), None);
        assert_eq!(fadt.pm2_control_block().unwrap(), None);
        assert_eq!((fadt.gpe0_block().unwrap(), fadt.gpe1_block().unwrap()), (None, None));
        let timer = parsed.platform_info().unwrap().pm_timer.expect("a PM timer");
        assert!(timer.supports_32bit);
        assert_eq!(timer.base.address, 0x608);
        let (sci, smi, century, revision) = (fadt.sci_interrupt, fadt.smi_cmd_port, fadt.century, fadt.header().revision);
        assert_eq!((sci, smi, century, revision), (9, 0, 0x32, 6));
        assert_eq!(fadt.power_profile(), PowerProfile::Unspecified);
        let boot = { fadt.iapc_boot_arch };
        assert!(boot.motherboard_implements_8042() && boot.dont_probe_vga());
        assert!(!boot.legacy_devices_are_accessible() && !boot.dont_enable_msi() && !boot.dont_enable_pcie_aspm());
        assert!(!boot.use_time_and_alarm_namespace_for_rtc(), "the CMOS RTC is there");
        let flags = { fadt.flags };
        assert!(!flags.system_is_hw_reduced_acpi());
        assert!(flags.supports_equivalent_to_wbinvd() && flags.all_procs_support_c1_power_state());
        assert!(flags.power_button_is_control_method() && flags.sleep_button_is_control_method());
        assert!(!flags.supports_system_reset_via_fadt() && !flags.local_xapics_must_use_physical_destination_mode());
    }

    /// §5.2.5.3: the RSDP's checksum makes its first 20 bytes sum to 0 and the extended
    /// checksum all 36; §5.2.6: every SDT's checksum makes the whole table (Length bytes) sum
    /// to 0. The FACS has no checksum (§5.2.10).
    #[test]
    fn every_checksum_makes_its_bytes_sum_to_zero() {
        for (vcpus, base) in [(1, BASE), (2, BASE + 8), (254, BASE + 0x35), (17, 0x9_FC00)] {
            let t = build(&AcpiConfig::new(vcpus), base).unwrap();
            let r = (t.rsdp_gpa - t.base) as usize;
            assert_eq!(sum(&t.bytes[r..r + 20]), 0, "legacy RSDP checksum");
            assert_eq!(sum(&t.bytes[r..r + 36]), 0, "extended RSDP checksum");
            for (sig, gpa) in sdts(&t) {
                let table = table_at(&t, gpa);
                assert_eq!(&table[..4], sig);
                assert_eq!(sum(table), 0, "{} checksum", String::from_utf8_lossy(sig));
            }
        }
    }

    /// §5.2.5.3 RSDP structure: "RSD PTR ", OEMID, revision 2, RsdtAddress (0: no RSDT),
    /// Length 36, XsdtAddress, reserved bytes 0; §5.2.5.1: on a 16-byte boundary.
    #[test]
    fn the_rsdp_holds_signature_revision_length_and_xsdt() {
        let t = tables(3);
        let r = &t.bytes[(t.rsdp_gpa - t.base) as usize..][..36];
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(&r[9..15], b"BASTN ");
        assert_eq!(r[15], 2, "revision 2: ACPI 2.0+ with an XSDT");
        assert_eq!(u32_at(r, 16), 0, "no RSDT");
        assert_eq!(u32_at(r, 20), 36);
        assert_eq!(u64_at(r, 24), t.xsdt_gpa);
        assert_eq!(&r[33..36], [0, 0, 0]);
        // Each checksum byte is the one that balances its range, so neither is trivially 0 here.
        assert_ne!((r[8], r[32]), (0, 0));
    }

    /// §5.2.8: the XSDT's entries are 64-bit addresses of SDTs; each must lie in the tables
    /// handed to the loader, and each table there must end inside them.
    #[test]
    fn xsdt_entries_point_at_tables_inside_the_buffer() {
        for base in [BASE, BASE + 4, 0x8_0000] {
            let t = build(&AcpiConfig::new(5), base).unwrap();
            let xsdt = table_at(&t, t.xsdt_gpa);
            assert_eq!(xsdt.len(), 36 + 16);
            assert_eq!((xsdt[8], u32_at(xsdt, 4)), (1, 52), "XSDT revision 1, Length");
            let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
            assert_eq!(entries, [t.fadt_gpa, t.madt_gpa.unwrap()]);
            for gpa in entries {
                assert!(t.range().contains(gpa), "{gpa:#x} outside {}", t.range());
                let end = gpa + u64::from(u32_at(&t.bytes, (gpa - base) as usize + 4));
                assert!(end <= t.range().end());
            }
        }
    }

    /// ACPI 6.5 chapter 20 (AML): the DSDT's body is exactly `Name (\_S5_, Package () {5, 5, 0,
    /// 0})`: NameOp 0x08, RootChar, NameSeg "_S5_", PackageOp 0x12, PkgLength (1-byte form,
    /// counting itself), NumElements 4, BytePrefix 0x0A values, ZeroOp 0x00. §7.4.2: SLP_TYPa
    /// is the value Linux writes to PM1a_CNT.SLP_TYP with SLP_EN to power off.
    #[test]
    fn the_dsdt_aml_is_the_s5_package() {
        let t = tables(1);
        let dsdt = table_at(&t, t.dsdt_gpa);
        assert_eq!((dsdt.len(), dsdt[8]), (51, 2), "header + 15 bytes of AML; revision 2 (64-bit integers)");
        let aml = &dsdt[36..];
        assert_eq!(aml, [0x08, 0x5C, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00]);
        // Decoded: PkgLength covers the rest of the package from its own byte.
        assert_eq!(aml[7] as usize, aml.len() - 7);
        assert_eq!(aml[7] & 0xC0, 0, "one-byte PkgLength");
        let slp_typ_a = u16::from(aml[10]);
        assert!(pm1_cnt_requests_power_off(slp_typ_a << 10 | PM1_CNT_SLP_EN));
    }

    /// PM1_CNT (§4.8.3.2.1): SLP_TYP in bits 12:10, SLP_EN bit 13; only SLP_EN with the S5
    /// type from `\_S5_` powers off, whatever SCI_EN says.
    #[test]
    fn pm1_cnt_power_off_needs_slp_en_with_the_s5_type() {
        assert!(pm1_cnt_requests_power_off(0x3400));
        assert!(pm1_cnt_requests_power_off(0x3400 | PM1_CNT_SCI_EN));
        assert!(!pm1_cnt_requests_power_off(0x1400), "SLP_TYP alone (Linux writes it first)");
        assert!(!pm1_cnt_requests_power_off(0x2000), "SLP_EN with type 0");
        assert!(!pm1_cnt_requests_power_off(0x2000 | 4 << 10), "another sleep type");
        assert!(!pm1_cnt_requests_power_off(0x2000 | 7 << 10));
        assert!(!pm1_cnt_requests_power_off(0x3400 & !PM1_CNT_SLP_EN | 1 << 14));
        assert_eq!((PM1_CNT_SLP_TYP_MASK, PM1_CNT_SLP_EN, PM1_CNT_SCI_EN), (0x1C00, 0x2000, 1));
    }

    /// §5.2.9 Table 5.9 at the byte level: what the parser does not show. FIRMWARE_CTRL names the
    /// FACS and X_FIRMWARE_CTRL is 0 (at most one may be non-zero); DSDT and X_DSDT name the
    /// same DSDT; PM block lengths 4/2/4 and no others; C2/C3 latencies above 100/1000 µs (not
    /// supported); CENTURY; IAPC_BOOT_ARCH exactly 8042 | VGA Not Present; the feature flags;
    /// FADT minor version 5; the X_ register blocks as System I/O GAS; everything else 0.
    #[test]
    fn the_fadt_bytes_are_at_their_offsets() {
        let t = tables(2);
        let f = table_at(&t, t.fadt_gpa);
        assert_eq!((f.len(), f[8], f[131]), (276, 6, 5), "Length, revision 6, minor version 5");
        assert_eq!(u32_at(f, 36), t.facs_gpa as u32, "FIRMWARE_CTRL");
        assert_eq!(u64_at(f, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u32_at(f, 40), t.dsdt_gpa as u32, "DSDT");
        assert_eq!(u64_at(f, 140), t.dsdt_gpa, "X_DSDT");
        assert_eq!((f[44], f[45], u16_at(f, 46)), (0, 0, 9), "reserved, profile, SCI_INT");
        assert_eq!((u32_at(f, 48), f[52], f[53], f[54], f[55]), (0, 0, 0, 0, 0), "SMI_CMD and its commands");
        let blocks = [56, 60, 64, 68, 72, 76, 80, 84].map(|o| u32_at(f, o));
        assert_eq!(blocks, [0x600, 0, 0x604, 0, 0, 0x608, 0, 0], "PM1a/b EVT, PM1a/b CNT, PM2, TMR, GPE0/1");
        assert_eq!(&f[88..96], [4, 2, 0, 4, 0, 0, 0, 0], "block lengths, GPE1_BASE, CST_CNT");
        assert_eq!((u16_at(f, 96), u16_at(f, 98)), (101, 1001), "P_LVL2_LAT, P_LVL3_LAT");
        assert_eq!(&f[100..108], [0; 8], "flush size/stride, duty cycle, RTC alarms");
        assert_eq!((f[108], u16_at(f, 109), f[111]), (0x32, 0x0006, 0), "CENTURY, IAPC_BOOT_ARCH");
        assert_eq!(u32_at(f, 112), 0x135, "WBINVD | PROC_C1 | PWR_BUTTON | SLP_BUTTON | TMR_VAL_EXT");
        assert_eq!(&f[116..131], [0; 15], "no RESET_REG, RESET_VALUE, ARM_BOOT_ARCH");
        let gas = |o: usize| (f[o], f[o + 1], f[o + 2], f[o + 3], u64_at(f, o + 4));
        assert_eq!(gas(148), (1, 32, 0, 2, 0x600), "X_PM1a_EVT_BLK");
        assert_eq!(gas(172), (1, 16, 0, 2, 0x604), "X_PM1a_CNT_BLK");
        assert_eq!(gas(208), (1, 32, 0, 3, 0x608), "X_PM_TMR_BLK");
        for o in [160, 184, 196, 220, 232, 244, 256] {
            assert_eq!(gas(o), (0, 0, 0, 0, 0), "GAS at {o}");
        }
        assert_eq!(u64_at(f, 268), 0, "hypervisor vendor identity");
    }

    /// §5.2.10: the FACS is 64 bytes on a 64-byte boundary, signature "FACS", version 2, no
    /// waking vector, a free Global Lock, no flags; whatever the base's alignment.
    #[test]
    fn the_facs_is_64_byte_aligned_and_empty() {
        for offset in 0..64 {
            let t = build(&AcpiConfig::new(3), BASE + offset).unwrap();
            assert_eq!(t.facs_gpa % 64, 0, "base {:#x}", t.base);
            let f = &t.bytes[(t.facs_gpa - t.base) as usize..][..64];
            assert_eq!((&f[0..4], u32_at(f, 4), f[32]), (&b"FACS"[..], 64, 2));
            assert!(f[8..32].iter().chain(&f[33..]).all(|b| *b == 0));
        }
    }

    /// The layout: RSDP on a 16-byte boundary (§5.2.5.1), each table on one too, FACS on a
    /// 64-byte one (§5.2.10), in the documented order without overlaps, the buffer exactly
    /// from `base` to the MADT's end and zero between structures.
    #[test]
    fn the_layout_is_aligned_ordered_and_tight() {
        for offset in 0..64 {
            let base = BASE + offset;
            let t = build(&AcpiConfig::new(7), base).unwrap();
            assert_eq!(t.base, base);
            let lens = [36u64, 52, 276, 64, 51, 44 + 7 * 8 + 12 + 20 + 6];
            let gpas = [t.rsdp_gpa, t.xsdt_gpa, t.fadt_gpa, t.facs_gpa, t.dsdt_gpa, t.madt_gpa.unwrap()];
            let aligns = [16u64, 16, 16, 64, 16, 16];
            let mut end = base;
            let mut used = vec![false; t.bytes.len()];
            for ((gpa, len), align) in gpas.iter().zip(lens).zip(aligns) {
                assert_eq!(gpa % align, 0, "{gpa:#x} for base {base:#x}");
                assert!(*gpa >= end && *gpa - end < align, "{gpa:#x}: next aligned address after {end:#x}");
                end = gpa + len;
                used[(gpa - base) as usize..(end - base) as usize].fill(true);
            }
            assert_eq!(t.range(), GpaRange { base, len: end - base });
            assert_eq!(t.bytes.len() as u64, end - base);
            let padding = t.bytes.iter().zip(&used).filter(|(_, u)| !**u).map(|(b, _)| *b);
            assert!(padding.into_iter().all(|b| b == 0));
        }
        // At an aligned base nothing pads the RSDP, the XSDT follows at the next 16 bytes.
        let t = tables(2);
        assert_eq!([t.rsdp_gpa, t.xsdt_gpa, t.fadt_gpa, t.facs_gpa, t.dsdt_gpa, t.madt_gpa.unwrap()].map(|g| g - BASE), [0, 48, 112, 448, 512, 576]);
    }

    /// §5.2.12 at the byte level for 2 vCPUs: header (revision 6), Local Interrupt Controller
    /// Address, Flags = PCAT_COMPAT, then each structure's type, length and fields.
    #[test]
    fn the_madt_bytes_for_two_vcpus() {
        let t = tables(2);
        let m = table_at(&t, t.madt_gpa.unwrap());
        assert_eq!((m.len(), m[8]), (44 + 16 + 12 + 20 + 6, 6));
        assert_eq!((u32_at(m, 36), u32_at(m, 40)), (0xFEE0_0000, 1));
        #[rustfmt::skip]
        let entries: [u8; 54] = [
            0, 8, 0, 0, 1, 0, 0, 0,                       // LAPIC: UID 0, APIC ID 0, enabled
            0, 8, 1, 1, 1, 0, 0, 0,                       // LAPIC: UID 1, APIC ID 1, enabled
            1, 12, 2, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0, // I/O APIC 2 at 0xFEC00000, GSI 0
            2, 10, 0, 0, 2, 0, 0, 0, 0x05, 0x00,          // ISA IRQ 0 -> GSI 2, edge, high
            2, 10, 0, 9, 9, 0, 0, 0, 0x0D, 0x00,          // ISA IRQ 9 -> GSI 9, level, high
            4, 6, 0xFF, 0, 0, 1,                          // NMI on LINT1 of all processors
        ];
        assert_eq!(m[44..], entries);
        // Through the parser, in the same order: the boot processor's entry first.
        let parsed = parse(&t);
        let madt = parsed.find_table::<Madt>().unwrap();
        let kinds: Vec<u8> = madt
            .get()
            .entries()
            .map(|e| match e {
                MadtEntry::LocalApic(l) => l.apic_id,
                MadtEntry::IoApic(_) => 100,
                MadtEntry::InterruptSourceOverride(_) => 200,
                MadtEntry::LocalApicNmi(_) => 250,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kinds, [0, 1, 100, 200, 200, 250]);
    }

    /// Every vCPU count from 1 to 254 builds, fits below 1 MiB from 0xE_0000, and parses back
    /// with that many processors and the I/O APIC's ID after theirs.
    #[test]
    fn every_vcpu_count_from_1_to_254_builds_and_parses() {
        for n in 1..=MAX_VCPUS {
            let t = tables(n);
            assert!(t.range().end() <= HIGH_MEMORY_START);
            assert_eq!(table_at(&t, t.madt_gpa.unwrap()).len(), 82 + 8 * n as usize);
            let parsed = parse(&t);
            let cpus = processors(&parsed);
            assert_eq!(cpus.len(), n as usize);
            assert_eq!(cpus.last().unwrap().local_apic_id, n - 1);
            let InterruptModel::Apic(apic) = parsed.platform_info().unwrap().interrupt_model else { panic!() };
            assert_eq!(u32::from(apic.io_apics[0].id), n);
        }
        assert_eq!(tables(254).bytes.len(), 2690, "the size the module documentation gives");
    }

    /// 8-bit xAPIC IDs, 0xFF broadcast, one ID for the I/O APIC: 1..=254 vCPUs; 0 and 255 (and
    /// beyond) are refused with a message.
    #[test]
    fn vcpu_counts_outside_1_to_254_are_refused() {
        assert_eq!(build(&AcpiConfig::new(0), BASE), Err(BuildError::NoVcpus));
        assert_eq!(build(&AcpiConfig::new(255), BASE), Err(BuildError::TooManyVcpus(255)));
        assert_eq!(build(&AcpiConfig::new(u32::MAX), BASE), Err(BuildError::TooManyVcpus(u32::MAX)));
        assert_eq!(BuildError::NoVcpus.to_string(), "ACPI tables need at least one vCPU");
        assert_eq!(
            BuildError::TooManyVcpus(255).to_string(),
            "255 vCPUs: the MADT's 8-bit xAPIC IDs describe at most 254 (and the I/O APIC)"
        );
    }

    /// The tables must end at or below 1 MiB (the legacy area the loader puts them in, and the
    /// FADT's 32-bit addresses); a base they would run past it from is refused, also one where
    /// base + length overflows.
    #[test]
    fn tables_that_would_cross_1_mib_are_refused() {
        let len = tables(254).bytes.len() as u64; // at a 64-byte aligned base: no padding
        let top = (HIGH_MEMORY_START - len) & !63;
        let t = build(&AcpiConfig::new(254), top).unwrap();
        assert!(t.range().end() <= HIGH_MEMORY_START && t.range().end() > HIGH_MEMORY_START - 64);
        for base in [top + 64, HIGH_MEMORY_START, 0x1_0000_0000] {
            assert_eq!(build(&AcpiConfig::new(254), base), Err(BuildError::DoesNotFit { base, len }), "{base:#x}");
        }
        let base = HIGH_MEMORY_START - 1;
        let padded = len + 1; // 1 byte before the RSDP's 16-byte boundary
        assert_eq!(build(&AcpiConfig::new(254), base), Err(BuildError::DoesNotFit { base, len: padded }));
        // Every base near the top, padding included: the layout (and so the length) depends
        // only on the base modulo 64, so the same base 64 KiB lower gives the length to expect.
        for vcpus in [1, 2] {
            let cfg = AcpiConfig::new(vcpus);
            for base in HIGH_MEMORY_START - 800..HIGH_MEMORY_START + 64 {
                let len = build(&cfg, base - 0x1_0000).unwrap().bytes.len() as u64;
                match build(&cfg, base) {
                    Ok(t) => assert!(base + len <= HIGH_MEMORY_START && t.bytes.len() as u64 == len, "{base:#x}"),
                    Err(e) => assert!(base + len > HIGH_MEMORY_START && e == BuildError::DoesNotFit { base, len }, "{base:#x}"),
                }
            }
        }
        let err = build(&AcpiConfig::new(1), u64::MAX - 0x100).unwrap_err();
        assert!(matches!(err, BuildError::DoesNotFit { base, .. } if base == u64::MAX - 0x100));
        assert_eq!(
            BuildError::DoesNotFit { base: 0xFFF00, len: 690 }.to_string(),
            "ACPI tables of 690 bytes at 0xfff00 would not end at or below 0x100000"
        );
        // Low memory is fine (a loader could pass the RSDP's address in boot_params).
        assert_eq!(build(&AcpiConfig::new(1), 0).unwrap().rsdp_gpa, 0);
    }

    /// §5.2.6: OEMID and OEM Table ID are strings; ours must be printable ASCII (0x20..=0x7E),
    /// and land in the RSDP and in every SDT header with the OEM revision and creator fields.
    #[test]
    fn oem_identifiers_are_printable_and_in_every_header() {
        let cfg = AcpiConfig { vcpus: 2, oem_id: *b"ACME~ ", oem_table_id: *b" GUEST42", madt: true };
        let t = build(&cfg, BASE).unwrap();
        parse(&t); // the parser accepts them
        assert_eq!(&t.bytes[9..15], b"ACME~ ");
        for (sig, gpa) in sdts(&t) {
            let h = table_at(&t, gpa);
            assert_eq!((&h[10..16], &h[16..24]), (&b"ACME~ "[..], &b" GUEST42"[..]), "{sig:?}");
            assert_eq!((u32_at(h, 24), &h[28..32], u32_at(h, 32)), (1, &b"BSTN"[..], 1));
        }
        for bad in [0x00, 0x1F, 0x7F, 0x80, 0xFF] {
            let mut c = cfg;
            c.oem_id[3] = bad;
            assert_eq!(build(&c, BASE), Err(BuildError::OemIdNotPrintable { field: "OEM ID" }), "{bad:#x}");
            let mut c = cfg;
            c.oem_table_id[7] = bad;
            assert_eq!(build(&c, BASE), Err(BuildError::OemIdNotPrintable { field: "OEM table ID" }), "{bad:#x}");
        }
        assert_eq!(BuildError::OemIdNotPrintable { field: "OEM ID" }.to_string(), "ACPI OEM ID must be printable ASCII");
        let defaults = AcpiConfig::new(3);
        assert_eq!((defaults.vcpus, &defaults.oem_id, &defaults.oem_table_id), (3, b"BASTN ", b"BASTION "));
    }
}
