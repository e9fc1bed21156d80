//! Guest loaders as pure code: given an image and a guest's memory map, decide where every
//! byte goes in guest-physical memory and in which state the vCPU starts. The kernel only
//! carries out the answer (copies the [`Write`]s into guest RAM, loads the [`Entry64`] state
//! into the VMCS/VMCB).
//!
//! - [`bzimage`]: Linux's x86 boot protocol (`Documentation/arch/x86/boot.rst`), entered
//!   through its 64-bit entry point.
//! - [`multiboot`]: Multiboot 1 and 2 kernels with modules, entered in 32-bit protected mode
//!   as GRUB and QEMU enter them.
//!
//! This module holds what any loader that starts a guest directly in 64-bit mode needs: the
//! fixed low-memory layout of the boot structures, a GDT with flat 64-bit descriptors,
//! identity-mapping page tables, and the architectural state at entry.
//!
//! # Fixed low-memory layout
//!
//! All boot structures live below the EBDA (0x9_FC00), in memory the e820 map reports as
//! ordinary RAM, and away from the areas guests and firmware tables use by convention (the
//! real-mode IVT and BIOS data area below 0x500; the EBDA and 0xE_0000..0x10_0000, where
//! firmware tables such as the MP table and the ACPI RSDP go):
//!
//! ```text
//! 0x0_0500..0x0_0520  GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18)      GDT_GPA
//! 0x0_7000..0x0_8000  zero page (struct boot_params)                            ZERO_PAGE_GPA
//! 0x0_8000..0x0_9000  boot stack, RSP = 0x9000 (nothing written)                BOOT_STACK
//! 0x0_9000..0x0_F000  page tables: PML4, PDPT, 4 page directories              PAGE_TABLES_GPA
//! 0x2_0000..0x9_FC00  kernel command line, NUL-terminated                       CMDLINE_GPA
//! ```
//!
//! A guest that boots this way sees all of it as free memory once it has copied its boot
//! parameters and built its own page tables and GDT, which Linux does first thing.

pub mod acpi;
pub mod bzimage;
pub mod multiboot;

use crate::config::{
    GuestConfig, ImageFitError, ImageFormat, DEFAULT_CMDLINE, FLAT_INITIAL_SP, FLAT_LOAD_ADDRESS,
};
use crate::vm::memmap::{
    GpaRange, MemMapError, MemoryMap, EBDA_START, MMIO_HOLE_END, MMIO_HOLE_START,
};
use crate::vm::regs::{Cr0, Cr4, Efer, Rflags};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// `N` bytes of a file from `at`, `None` past its end: the one bounds-checked read the loaders
/// take header fields with.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Little-endian fields of a file, `None` past its end.
pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    bytes_at(b, at).map(u64::from_le_bytes)
}

/// The GDT: 4 descriptors of 8 bytes.
pub const GDT_GPA: u64 = 0x500;
/// Null, null, code, data: the boot protocol's selectors are 0x10 and 0x18.
pub const GDT_ENTRIES: usize = 4;
/// The GDTR limit: the last valid byte of the table.
pub const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;
/// `__BOOT_CS`: the flat 64-bit code segment boot.rst's 64-bit protocol requires in CS.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: the flat data segment required in DS, ES and SS (and loaded into FS, GS too).
pub const BOOT_DS: u16 = 0x18;
/// 64-bit code, DPL 0: P, S, type 0xB (execute/read, accessed), L = 1, D = 0, G = 1,
/// limit 0xF_FFFF pages, base 0 (SDM Vol. 3A 3.4.5 "Segment Descriptors", 5.2.1 "Code-Segment
/// Descriptor in 64-bit Mode"). Accessed is preset so the CPU never writes the table.
pub const GDT_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// Flat 32-bit code, DPL 0: P, S, type 0xB (execute/read, accessed), D = 1, G = 1, limit 4 GiB,
/// base 0: what a multiboot kernel finds in CS (SDM Vol. 3A 3.4.5).
pub const GDT_CODE32: u64 = 0x00CF_9B00_0000_FFFF;
/// The selectors a multiboot kernel starts with: GRUB's (the specification leaves them open).
pub const PROTECTED32_CS: u16 = 0x08;
pub const PROTECTED32_DS: u16 = 0x10;
/// Flat data, DPL 0: P, S, type 0x3 (read/write, accessed), D/B = 1, G = 1, limit 4 GiB, base 0.
pub const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;

/// The boot structures' page (struct boot_params, "zero page").
pub const ZERO_PAGE_GPA: u64 = 0x7000;
/// A stack for the entry, should the guest use one before setting up its own (Linux does not).
pub const BOOT_STACK: GpaRange = GpaRange { base: 0x8000, len: 0x1000 };
/// PML4 at this address, the PDPT one page above, then [`PAGE_DIRECTORIES`] page directories.
pub const PAGE_TABLES_GPA: u64 = 0x9000;
/// Page directories of 2 MiB pages: 4 of them cover 0..4 GiB.
pub const PAGE_DIRECTORIES: u64 = 4;
/// Bytes of page tables: PML4 + PDPT + the page directories.
pub const PAGE_TABLES_LEN: u64 = (2 + PAGE_DIRECTORIES) * 4096;
/// The identity mapping covers guest-physical `0..IDENTITY_MAPPED`.
pub const IDENTITY_MAPPED: u64 = PAGE_DIRECTORIES << 30;
/// The kernel command line. It may run up to the EBDA (boot.rst: "anywhere between the end of
/// the setup heap and 0xA0000"; Bastion's e820 map ends conventional memory at the EBDA).
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// One past the last byte the command line (with its NUL) may use.
pub const CMDLINE_END: u64 = EBDA_START;

/// Every fixed region of the layout, for checks and log lines.
pub const LOW_LAYOUT: [(&str, GpaRange); 5] = [
    ("GDT", GpaRange { base: GDT_GPA, len: GDT_ENTRIES as u64 * 8 }),
    ("zero page", GpaRange { base: ZERO_PAGE_GPA, len: 4096 }),
    ("boot stack", BOOT_STACK),
    ("page tables", GpaRange { base: PAGE_TABLES_GPA, len: PAGE_TABLES_LEN }),
    ("command line", GpaRange { base: CMDLINE_GPA, len: CMDLINE_END - CMDLINE_GPA }),
];

/// CR0 at the 64-bit entry: protected mode (PE), paging (PG), ET (hard-wired to 1 on modern
/// CPUs). Caching is on (CD, NW clear). A VMX backend ORs in what IA32_VMX_CR0_FIXED0 demands
/// (NE); SDM Vol. 3A 9.8.5 "Initializing IA-32e Mode" for the PE/PG/PAE/LME sequence.
pub const ENTRY_CR0: u64 = Cr0::PE.union(Cr0::ET).union(Cr0::PG).bits();
/// CR4 at the 64-bit entry: PAE, required for long mode.
pub const ENTRY_CR4: u64 = Cr4::PAE.bits();
/// EFER at the 64-bit entry: long mode enabled (LME) and active (LMA, what the CPU sets once
/// paging is on with LME; a VMM loading the state directly must set it itself).
pub const ENTRY_EFER: u64 = Efer::LME.union(Efer::LMA).bits();
/// RFLAGS at entry: only the always-one bit 1; IF clear (interrupts disabled, as the protocol
/// requires), DF clear.
pub const ENTRY_RFLAGS: u64 = Rflags::FIXED1.bits();

/// Page-table entry bits (SDM Vol. 3A 4.5, "4-Level Paging and 5-Level Paging").
pub const PTE_PRESENT: u64 = 1; // bit 0
pub const PTE_WRITABLE: u64 = 1 << 1;
pub const PTE_PWT: u64 = 1 << 3;
pub const PTE_PCD: u64 = 1 << 4;
/// PS in a page-directory entry: it maps a 2 MiB page.
pub const PTE_LARGE: u64 = 1 << 7;

/// The architectural state a vCPU starts in for a 64-bit entry point. Segment registers hold
/// the selectors with their hidden parts loaded from [`GDT_CODE64`] (CS) and [`GDT_DATA`] (DS,
/// ES, SS, FS, GS); every general-purpose register not named here is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry64 {
    pub rip: u64,
    /// For Linux: the zero page (struct boot_params).
    pub rsi: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub cs: u16,
    /// DS, ES, SS, FS and GS.
    pub ds: u16,
}

impl Entry64 {
    /// The state for entering at `rip` with `rsi` in RSI, using the fixed GDT, page tables and
    /// stack of this module.
    pub fn new(rip: u64, rsi: u64) -> Entry64 {
        Entry64 {
            rip,
            rsi,
            rsp: BOOT_STACK.end(),
            rflags: ENTRY_RFLAGS,
            cr0: ENTRY_CR0,
            cr3: PAGE_TABLES_GPA,
            cr4: ENTRY_CR4,
            efer: ENTRY_EFER,
            gdt_base: GDT_GPA,
            gdt_limit: GDT_LIMIT,
            cs: BOOT_CS,
            ds: BOOT_DS,
        }
    }
}

/// Something a loader wants in guest memory. The big pieces (the kernel, the initrd) are
/// named by where they are in the inputs the loader was given instead of copied: the caller
/// still has them, and a second 14 MB copy of a kernel in the hypervisor's heap buys nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Bytes the loader built (zero page, command line, GDT, page tables).
    Bytes { gpa: u64, bytes: Vec<u8> },
    /// `len` bytes of the image from `offset`.
    Image { gpa: u64, offset: usize, len: usize },
    /// The whole initrd, `len` bytes.
    Initrd { gpa: u64, len: usize },
    /// The whole of module `index` (a multiboot guest's), `len` bytes.
    Module { index: usize, gpa: u64, len: usize },
    /// `len` zero bytes (a kernel's bss): guest RAM is not zeroed again when a guest restarts.
    Zero { gpa: u64, len: u64 },
}

impl Write {
    pub fn gpa(&self) -> u64 {
        match self {
            Write::Bytes { gpa, .. } | Write::Image { gpa, .. } | Write::Initrd { gpa, .. } | Write::Module { gpa, .. } | Write::Zero { gpa, .. } => *gpa,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Write::Bytes { bytes, .. } => bytes.len() as u64,
            Write::Image { len, .. } | Write::Initrd { len, .. } | Write::Module { len, .. } => *len as u64,
            Write::Zero { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The guest-physical range written.
    pub fn range(&self) -> GpaRange {
        GpaRange { base: self.gpa(), len: self.len() }
    }

    /// The bytes to copy, taken from the image, initrd and modules the plan was made from;
    /// `None` if they are not those (too short, or no initrd or module where the plan has
    /// one), and for [`Write::Zero`], which has no bytes to copy: the caller zeroes.
    pub fn data<'a>(&'a self, image: &'a [u8], initrd: Option<&'a [u8]>, modules: &[&'a [u8]]) -> Option<&'a [u8]> {
        match self {
            Write::Bytes { bytes, .. } => Some(bytes),
            Write::Image { offset, len, .. } => image.get(*offset..offset.checked_add(*len)?),
            Write::Initrd { len, .. } => initrd.filter(|i| i.len() == *len),
            Write::Module { index, len, .. } => modules.get(*index).copied().filter(|m| m.len() == *len),
            Write::Zero { .. } => None,
        }
    }
}

/// Where a guest's first vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Real mode at CS:IP = 0:ip, stack at SP (a flat image, like a boot sector).
    RealMode { ip: u16, sp: u16 },
    /// 64-bit mode with the given state (a bzImage).
    Long64(Entry64),
    /// 32-bit protected mode, paging off, flat segments (a multiboot kernel): EIP, EAX (the
    /// boot loader's magic) and EBX (the boot information).
    Protected32 { eip: u32, eax: u32, ebx: u32 },
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::RealMode { ip, sp } => write!(f, "real mode at 0000:{ip:04x}, SP {sp:#x}"),
            Start::Long64(e) => write!(f, "64-bit mode at {:#x}, RSI {:#x}", e.rip, e.rsi),
            Start::Protected32 { eip, eax, ebx } => write!(f, "32-bit protected mode at {eip:#x}, EAX {eax:#x}, EBX {ebx:#x}"),
        }
    }
}

/// Where a bzImage guest's ACPI tables go: the BIOS read-only area the OS scans for the RSDP
/// (ACPI 6.5 §5.2.5.1), which the e820 map reports reserved.
pub const ACPI_TABLES_GPA: u64 = 0xE_0000;

/// A segment register as loaded at reset or entry: selector and the hidden part (SDM Vol. 3A
/// 3.4.3 "Segment Registers"), the latter described by the descriptor it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentState {
    pub selector: u16,
    pub desc: Descriptor,
}

impl SegmentState {
    pub fn base(&self) -> u64 {
        u64::from(self.desc.base)
    }
    /// The byte limit both VMCS and VMCB keep (the granularity already applied).
    pub fn limit(&self) -> u32 {
        self.desc.limit_bytes() as u32
    }
}

/// Every register a vCPU starts with, whatever the vendor: the VMX and SVM backends copy it
/// into their VMCS/VMCB and differ only in how they encode segment attributes
/// ([`Descriptor::vmx_access_rights`], [`Descriptor::svm_attributes`]). LDTR is unusable and
/// TR a busy 32/64-bit TSS at 0 (VM entry wants a usable TR, SDM Vol. 3C 27.3.1.2; Bochs's SVM
/// wants one that is not a 16-bit TSS before long mode); IDTR is base 0 limit 0xFFFF, as
/// after reset (SDM Vol. 3A 10.1.1 Table 10-1) and left for the guest to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialState {
    pub cs: SegmentState,
    /// DS, ES, SS, FS and GS.
    pub data: SegmentState,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    /// What the guest reads: a VMX backend adds the bits IA32_VMX_CR0/CR4_FIXED0 force.
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// Without EFER.SVME, which an SVM backend adds for VMRUN.
    pub efer: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
}

/// A real-mode code segment at reset (SDM Vol. 3A Table 10-1): base 0, limit 0xFFFF,
/// present, execute/read, accessed.
const REAL_CODE: u64 = 0x0000_9B00_0000_FFFF;
/// A real-mode data segment: base 0, limit 0xFFFF, present, read/write, accessed.
const REAL_DATA: u64 = 0x0000_9300_0000_FFFF;

impl Start {
    /// The full register state this start means.
    pub fn initial_state(&self) -> InitialState {
        match *self {
            Start::RealMode { ip, sp } => InitialState {
                cs: SegmentState {
                    selector: 0,
                    desc: Descriptor::decode(REAL_CODE),
                },
                data: SegmentState {
                    selector: 0,
                    desc: Descriptor::decode(REAL_DATA),
                },
                gdt_base: 0,
                gdt_limit: 0xFFFF,
                cr0: Cr0::ET.bits(),
                cr3: 0,
                cr4: 0,
                efer: 0,
                rip: u64::from(ip),
                rsp: u64::from(sp),
                rflags: Rflags::FIXED1.bits(),
                rax: 0,
                rbx: 0,
                rsi: 0,
            },
            Start::Long64(e) => InitialState {
                cs: SegmentState {
                    selector: e.cs,
                    desc: Descriptor::decode(GDT_CODE64),
                },
                data: SegmentState {
                    selector: e.ds,
                    desc: Descriptor::decode(GDT_DATA),
                },
                gdt_base: e.gdt_base,
                gdt_limit: e.gdt_limit,
                cr0: e.cr0,
                cr3: e.cr3,
                cr4: e.cr4,
                efer: e.efer,
                rip: e.rip,
                rsp: e.rsp,
                rflags: e.rflags,
                rax: 0,
                rbx: 0,
                rsi: e.rsi,
            },
            // Multiboot spec 3.2 "Machine state": CS a 32-bit read/execute segment with offset 0
            // and limit 0xFFFFFFFF, the data segments read/write with the same, A20 on, CR0.PG
            // clear and PE set, EFLAGS.VM and IF clear; GDTR and IDTR are left for the kernel
            // to load (here as after reset), ESP undefined (0).
            Start::Protected32 { eip, eax, ebx } => InitialState {
                cs: SegmentState {
                    selector: PROTECTED32_CS,
                    desc: Descriptor::decode(GDT_CODE32),
                },
                data: SegmentState {
                    selector: PROTECTED32_DS,
                    desc: Descriptor::decode(GDT_DATA),
                },
                gdt_base: 0,
                gdt_limit: 0xFFFF,
                cr0: Cr0::PE.union(Cr0::ET).bits(),
                cr3: 0,
                cr4: 0,
                efer: 0,
                rip: u64::from(eip),
                rsp: 0,
                rflags: Rflags::FIXED1.bits(),
                rax: u64::from(eax),
                rbx: u64::from(ebx),
                rsi: 0,
            },
        }
    }
}

/// Where an application processor starts after STARTUP with `vector` (SDM Vol. 3A 11.6.1,
/// 9.4.4.1 "Typical AP Initialization Sequence"): real mode at `vector * 0x1000`, CS =
/// `vector << 8` with that base and IP = 0, everything else as after INIT (SDM Vol. 3A 10.1.1
/// Table 10-1, which is also what [`Start::RealMode`] gives).
pub fn sipi_state(vector: u8) -> InitialState {
    let mut st = Start::RealMode { ip: 0, sp: 0 }.initial_state();
    st.cs.selector = u16::from(vector) << 8;
    st.cs.desc.base = u32::from(vector) << 12;
    st
}

/// A guest's image, ready to be copied in: what goes where, and how it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Lowest address first; each inside the guest's RAM.
    pub writes: Vec<Write>,
    pub start: Start,
}

/// Why a guest's image cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    Memory(MemMapError),
    Flat(ImageFitError),
    BzImage(bzimage::BzImageError),
    Multiboot(multiboot::MultibootError),
    /// The config names more or fewer modules than were given (the caller could not find one).
    MissingModule,
    Acpi(acpi::BuildError),
    /// The config names an initrd but none was given (the caller could not find it).
    MissingInitrd,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Memory(e) => write!(f, "{e}"),
            LoadError::Flat(e) => write!(f, "{e}"),
            LoadError::BzImage(e) => write!(f, "bzImage: {e}"),
            LoadError::Multiboot(e) => write!(f, "multiboot: {e}"),
            LoadError::MissingModule => write!(f, "a module is missing"),
            LoadError::Acpi(e) => write!(f, "ACPI tables: {e}"),
            LoadError::MissingInitrd => write!(f, "the initrd is missing"),
        }
    }
}

/// Decides how `cfg`'s guest is loaded from its `kernel` (and `initrd`) bytes: the one rule
/// `boot validate` applies on the host before packing and the hypervisor applies at every
/// boot of the guest. A flat image goes to [`FLAT_LOAD_ADDRESS`] (checked by
/// [`crate::config::image_fits`]); a bzImage is parsed and placed by [`bzimage::plan`] with
/// the config's command line ([`DEFAULT_CMDLINE`] if it has none).
pub fn prepare(cfg: &GuestConfig, kernel: &[u8], initrd: Option<&[u8]>, modules: &[&[u8]]) -> Result<Prepared, LoadError> {
    let map = MemoryMap::new(u64::from(cfg.memory_mib) << 20).map_err(LoadError::Memory)?;
    match cfg.format {
        ImageFormat::Flat => {
            cfg.image_fits(kernel.len() as u64).map_err(LoadError::Flat)?;
            Ok(Prepared {
                writes: vec![Write::Image { gpa: FLAT_LOAD_ADDRESS, offset: 0, len: kernel.len() }],
                start: Start::RealMode { ip: FLAT_LOAD_ADDRESS as u16, sp: FLAT_INITIAL_SP as u16 },
            })
        }
        ImageFormat::BzImage => {
            if cfg.initrd.is_some() && initrd.is_none() {
                return Err(LoadError::MissingInitrd);
            }
            let hdr = bzimage::parse(kernel).map_err(LoadError::BzImage)?;
            let cmdline = cfg.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
            let plan = bzimage::plan(kernel, &hdr, initrd, cmdline, &map).map_err(LoadError::BzImage)?;
            // The ACPI tables: the FADT's PM block is how the guest powers off, and its PM
            // timer a clock to calibrate against; the MADT lists a local APIC per vCPU, the
            // I/O APIC and its overrides (`devices::irq` wires them as it says).
            let tables = acpi::build(&acpi::AcpiConfig::new(cfg.vcpus), ACPI_TABLES_GPA).map_err(LoadError::Acpi)?;
            let mut writes = plan.writes;
            for w in &mut writes {
                if let Write::Bytes { gpa: ZERO_PAGE_GPA, bytes } = w {
                    let at = bzimage::offsets::ACPI_RSDP_ADDR;
                    bytes[at..at + 8].copy_from_slice(&tables.rsdp_gpa.to_le_bytes());
                }
            }
            writes.push(Write::Bytes { gpa: tables.base, bytes: tables.bytes });
            writes.sort_by_key(Write::gpa);
            Ok(Prepared { writes, start: Start::Long64(plan.entry) })
        }
        ImageFormat::Multiboot | ImageFormat::Multiboot2 => {
            if modules.len() != cfg.modules.len() {
                return Err(LoadError::MissingModule);
            }
            let version = if cfg.format == ImageFormat::Multiboot { multiboot::Version::One } else { multiboot::Version::Two };
            let kernel_info = multiboot::parse(kernel, version).map_err(LoadError::Multiboot)?;
            // The same ACPI tables as a Linux guest's, where a PC has them: a multiboot kernel
            // finds its CPUs and interrupt controllers in the MADT (by scanning for the RSDP,
            // or, with Multiboot 2, through the RSDP copy in the boot information).
            let tables = acpi::build(&acpi::AcpiConfig::new(cfg.vcpus), ACPI_TABLES_GPA).map_err(LoadError::Acpi)?;
            let rsdp_at = (tables.rsdp_gpa - tables.base) as usize;
            let rsdp = tables.bytes.get(rsdp_at..rsdp_at + acpi::RSDP_LEN);
            let inputs: Vec<multiboot::ModuleInput<'_>> =
                cfg.modules.iter().zip(modules).map(|(m, data)| multiboot::ModuleInput { len: data.len(), cmdline: m.cmdline.as_deref().unwrap_or("") }).collect();
            let plan = multiboot::plan(kernel, &kernel_info, cfg.cmdline.as_deref().unwrap_or(""), &inputs, &map, rsdp).map_err(LoadError::Multiboot)?;
            let mut writes = plan.writes;
            writes.push(Write::Bytes { gpa: tables.base, bytes: tables.bytes });
            writes.sort_by_key(Write::gpa);
            Ok(Prepared { writes, start: Start::Protected32 { eip: plan.entry, eax: plan.magic, ebx: plan.info } })
        }
    }
}

/// The GDT at [`GDT_GPA`]: null, null, [`GDT_CODE64`] at 0x10, [`GDT_DATA`] at 0x18.
pub fn gdt() -> Vec<u8> {
    [0, 0, GDT_CODE64, GDT_DATA].iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Page tables identity-mapping `0..IDENTITY_MAPPED` (4 GiB) with 2 MiB pages, to be placed at
/// `base`: PML4 at `base`, PDPT at `base + 0x1000`, page directory `i` at `base + 0x2000 +
/// i * 0x1000`. Pages in the MMIO hole are uncached (PCD|PWT), so an early access to a device
/// register is not cached; RAM pages are write-back.
pub fn identity_page_tables(base: u64) -> Vec<u8> {
    let mut t = vec![0u8; PAGE_TABLES_LEN as usize];
    let mut put = |index: u64, value: u64| {
        let at = (index * 8) as usize;
        t[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    let table = |n: u64| base + n * 4096;
    // An entry's frame address and its flags are disjoint bits: they are added.
    // PML4[0] -> PDPT.
    put(0, table(1) + PTE_PRESENT + PTE_WRITABLE);
    for pd in 0..PAGE_DIRECTORIES {
        // PDPT[pd] -> page directory pd, at table 2 + pd.
        put(512 + pd, table(2 + pd) + PTE_PRESENT + PTE_WRITABLE);
        for i in 0..512 {
            let addr = ((pd << 9) + i) << 21;
            let uncached = if (MMIO_HOLE_START..MMIO_HOLE_END).contains(&addr) { PTE_PCD + PTE_PWT } else { 0 };
            put((2 + pd) * 512 + i, addr + PTE_PRESENT + PTE_WRITABLE + PTE_LARGE + uncached);
        }
    }
    t
}

/// A segment descriptor's fields (SDM Vol. 3A 3.4.5, Figure 3-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub base: u32,
    /// The 20-bit limit field as stored (in 4 KiB units when `granularity`).
    pub limit: u32,
    /// Type (bits 43:40): for code/data (S = 1) bit 3 = code, then conforming/expand-down,
    /// readable/writable, accessed.
    pub kind: u8,
    /// S: code or data (not a system descriptor).
    pub code_or_data: bool,
    pub dpl: u8,
    pub present: bool,
    pub available: bool,
    /// L: 64-bit code segment.
    pub long: bool,
    /// D/B: default operand size 32 bits / big.
    pub default_big: bool,
    pub granularity: bool,
}

impl Descriptor {
    pub fn decode(d: u64) -> Descriptor {
        let bit = |n: u32| d >> n & 1 == 1;
        Descriptor {
            base: (((d >> 16) & 0xFF_FFFF) + (((d >> 56) & 0xFF) << 24)) as u32,
            limit: ((d & 0xFFFF) + (((d >> 48) & 0xF) << 16)) as u32,
            kind: ((d >> 40) & 0xF) as u8,
            code_or_data: bit(44),
            dpl: ((d >> 45) & 3) as u8,
            present: bit(47),
            available: bit(52),
            long: bit(53),
            default_big: bit(54),
            granularity: bit(55),
        }
    }

    /// The limit in bytes minus one, as the CPU checks it.
    pub fn limit_bytes(&self) -> u64 {
        if self.granularity {
            (u64::from(self.limit) << 12) + 0xFFF
        } else {
            u64::from(self.limit)
        }
    }

    /// The access-rights word in the layout VMX keeps in the VMCS (SDM Vol. 3C 25.4.1, Table
    /// 25-2): type, S, DPL, P in bits 7:0, AVL, L, D/B, G in bits 15:12.
    pub fn vmx_access_rights(&self) -> u32 {
        self.attr_low() + (self.attr_high() << 12)
    }

    /// The attribute word in the layout SVM keeps in the VMCB (APM Vol. 2 15.5.1 / Appendix B):
    /// type, S, DPL, P in bits 7:0, AVL, L, D/B, G in bits 11:8.
    pub fn svm_attributes(&self) -> u16 {
        (self.attr_low() + (self.attr_high() << 8)) as u16
    }

    fn attr_low(&self) -> u32 {
        // Disjoint fields, added.
        u32::from(self.kind) + (u32::from(self.code_or_data) << 4) + (u32::from(self.dpl) << 5) + (u32::from(self.present) << 7)
    }

    fn attr_high(&self) -> u32 {
        u32::from(self.available) + (u32::from(self.long) << 1) + (u32::from(self.default_big) << 2) + (u32::from(self.granularity) << 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(t: &[u8], at: u64) -> u64 {
        u64::from_le_bytes(t[at as usize..at as usize + 8].try_into().unwrap())
    }

    /// Walks the tables as the CPU does for a 2 MiB page (SDM Vol. 3A 4.5.4): PML4 entry from
    /// bits 47:39, PDPT entry from 38:30, PDE from 29:21; `None` where an entry is not present
    /// or points outside the tables.
    fn translate(t: &[u8], base: u64, va: u64) -> Option<(u64, u64)> {
        let entry = |table: u64, index: u64| -> Option<u64> {
            let off = table.checked_sub(base)?;
            if off >= PAGE_TABLES_LEN || off % 4096 != 0 {
                return None;
            }
            let e = u64_at(t, off + index * 8);
            (e & PTE_PRESENT != 0).then_some(e)
        };
        let addr = |e: u64| e & 0x000F_FFFF_FFFF_F000;
        let pml4e = entry(base, (va >> 39) & 511)?;
        assert_eq!(pml4e & PTE_LARGE, 0, "no large page at the PML4 level");
        let pdpte = entry(addr(pml4e), (va >> 30) & 511)?;
        assert_eq!(pdpte & PTE_LARGE, 0, "1 GiB pages are not used");
        let pde = entry(addr(pdpte), (va >> 21) & 511)?;
        assert_ne!(pde & PTE_LARGE, 0, "page directories map 2 MiB pages");
        assert_ne!(pde & PTE_WRITABLE, 0);
        Some(((pde & 0x000F_FFFF_FFE0_0000) | (va & 0x1F_FFFF), pde))
    }

    /// boot.rst, "64-bit Boot Protocol": the kernel's init_size span, the zero page and the
    /// command line must be identity-mapped. The tables map all of 0..4 GiB, every 2 MiB page
    /// to itself, and nothing above.
    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let t = identity_page_tables(PAGE_TABLES_GPA);
        assert_eq!(t.len() as u64, PAGE_TABLES_LEN);
        for page in 0..(IDENTITY_MAPPED >> 21) {
            let va = (page << 21) | 0x1_2345;
            let (pa, pde) = translate(&t, PAGE_TABLES_GPA, va).unwrap_or_else(|| panic!("{va:#x} unmapped"));
            assert_eq!(pa, va);
            let hole = (MMIO_HOLE_START..MMIO_HOLE_END).contains(&va);
            let expect = if hole { 0x9B } else { 0x83 }; // P, RW, PS; and PWT|PCD (UC) in the hole
            assert_eq!(pde & 0xFFF, expect, "{va:#x}: uncached exactly in the MMIO hole");
        }
        for va in [IDENTITY_MAPPED, IDENTITY_MAPPED + (1 << 21), 1 << 39, (1 << 47) - 1] {
            assert_eq!(translate(&t, PAGE_TABLES_GPA, va), None, "{va:#x} must not be mapped");
        }
        // Tables refer to each other by absolute address: another base moves every pointer.
        // The upper levels: present and writable, nothing else (SDM Vol. 3A Table 4-15, 4-17).
        assert_eq!(u64_at(&t, 0), PAGE_TABLES_GPA + 0x1000 + 0x3, "PML4[0] -> the PDPT");
        for pd in 0..4 {
            assert_eq!(u64_at(&t, 4096 + 8 * pd), PAGE_TABLES_GPA + 0x2000 + 0x1000 * pd + 0x3, "PDPT[{pd}]");
        }
        let moved = identity_page_tables(0x10_0000);
        assert_eq!(translate(&moved, 0x10_0000, 0xBFE0_0000).map(|p| p.0), Some(0xBFE0_0000));
        assert_eq!(u64_at(&moved, 0) & !0xFFF, 0x10_1000);
    }

    /// boot.rst, "64-bit Boot Protocol": "a GDT must be loaded with the descriptors for
    /// selectors __BOOT_CS(0x10) and __BOOT_DS(0x18); both descriptors must be 4G flat
    /// segment; __BOOT_CS must have execute/read permission, and __BOOT_DS must have read/write
    /// permission". In 64-bit mode CS also needs L = 1 and D = 0 (SDM Vol. 3A 5.2.1).
    #[test]
    fn gdt_holds_flat_64_bit_code_and_data_at_the_boot_selectors() {
        let g = gdt();
        assert_eq!(g.len(), GDT_LIMIT as usize + 1);
        let desc = |sel: u16| Descriptor::decode(u64_at(&g, u64::from(sel & !7)));
        assert_eq!(u64_at(&g, 0), 0, "entry 0 is the null descriptor");
        let cs = desc(BOOT_CS);
        assert_eq!((cs.base, cs.limit_bytes(), cs.present, cs.code_or_data, cs.dpl), (0, 0xFFFF_FFFF, true, true, 0));
        assert_eq!(cs.kind & 0b1010, 0b1010, "code, readable");
        assert_eq!(cs.kind & 0b0100, 0, "not conforming");
        assert!(cs.long && !cs.default_big, "64-bit code: L=1 requires D=0");
        let ds = desc(BOOT_DS);
        assert_eq!((ds.base, ds.limit_bytes(), ds.present, ds.code_or_data, ds.dpl), (0, 0xFFFF_FFFF, true, true, 0));
        assert_eq!(ds.kind & 0b1110, 0b0010, "data, writable, expand-up");
        assert!(!ds.long && ds.default_big);
        // Accessed preset: the CPU has nothing to write back into the table.
        assert_eq!((cs.kind & 1, ds.kind & 1), (1, 1));
        // Hidden-part attributes as the two vendors store them.
        assert_eq!((cs.vmx_access_rights(), cs.svm_attributes()), (0xA09B, 0xA9B));
        assert_eq!((ds.vmx_access_rights(), ds.svm_attributes()), (0xC093, 0xC93));
        let other = Descriptor::decode(0x1234_5678_9ABC_DEF0);
        let seg = SegmentState { selector: 0x2B, desc: other };
        assert_eq!((seg.base(), seg.limit()), (0x1278_9ABC, 0x4DEF0), "a segment's base and byte limit come from its descriptor");
        assert_eq!((other.base, other.limit, other.kind, other.dpl, other.available), (0x1278_9ABC, 0x4DEF0, 6, 2, true));
        assert_eq!((other.code_or_data, other.present, other.long, other.default_big, other.granularity), (true, false, true, false, false));
        assert_eq!(other.limit_bytes(), 0x4DEF0);
        // Type 6, S, DPL 2, not present; AVL and L (SDM Vol. 3C Table 25-2, APM Vol. 2 15.5.1).
        assert_eq!((other.vmx_access_rights(), other.svm_attributes()), (0x3056, 0x356));
    }

    /// The fixed structures do not overlap one another, stay below the EBDA, and the whole
    /// layout is inside what the page tables map.
    #[test]
    fn fixed_layout_is_disjoint_and_below_the_ebda() {
        for (i, (name, r)) in LOW_LAYOUT.iter().enumerate() {
            assert!(r.base >= 0x500 && r.end() <= EBDA_START, "{name} {r}");
            assert!(r.end() <= IDENTITY_MAPPED);
            for (other, s) in &LOW_LAYOUT[i + 1..] {
                assert!(!r.overlaps(s), "{name} {r} overlaps {other} {s}");
            }
        }
        assert_eq!(GDT_LIMIT, 31);
        // The addresses the module documentation promises.
        let documented = [(0x500, 0x520), (0x7000, 0x8000), (0x8000, 0x9000), (0x9000, 0xF000), (0x2_0000, 0x9_FC00)];
        assert_eq!(LOW_LAYOUT.map(|(_, r)| (r.base, r.end())), documented);
        assert_eq!((PAGE_TABLES_LEN, IDENTITY_MAPPED), (0x6000, 1 << 32));
    }

    /// SDM Vol. 3A 9.8.5: IA-32e mode needs CR0.PE, CR0.PG, CR4.PAE and EFER.LME (LMA then
    /// reads 1); the protocol wants interrupts disabled.
    #[test]
    fn entry_state_is_long_mode_with_interrupts_off() {
        let e = Entry64::new(0x100_0200, ZERO_PAGE_GPA);
        assert_eq!((e.cr0, e.cr4, e.efer, e.rflags), (0x8000_0011, 0x20, 0x500, 0x2));
        assert_eq!(e.rflags & Rflags::IF.bits(), 0);
        assert_eq!((e.rip, e.rsi, e.rsp, e.cr3), (0x100_0200, 0x7000, 0x9000, 0x9000));
        assert_eq!((e.gdt_base, e.gdt_limit, e.cs, e.ds), (0x500, 31, 0x10, 0x18));
    }

    fn guest(extra: &str) -> GuestConfig {
        let text = alloc::format!("[[guest]]\nname = \"g\"\nkernel = \"k\"\n{extra}");
        let mut c = crate::config::Config::parse("t.toml", &text).unwrap();
        assert!(c.guest_errors.is_empty(), "{:?}", c.guest_errors);
        c.guests.remove(0)
    }

    fn cmdline_of(p: &Prepared) -> &[u8] {
        p.writes
            .iter()
            .find_map(|w| match w {
                Write::Bytes {
                    gpa: CMDLINE_GPA,
                    bytes,
                } => Some(&bytes[..]),
                _ => None,
            })
            .expect("a command line write")
    }

    /// A flat image is copied whole to 0x8000 and entered in real mode there, like a boot
    /// sector; one that does not fit is refused with the config's own rule.
    #[test]
    fn prepare_loads_a_flat_image_at_0x8000_in_real_mode() {
        let g = guest("memory_mib = 4\n");
        let p = prepare(&g, &[0x90; 300], None, &[]).unwrap();
        assert_eq!(
            p.writes,
            vec![Write::Image {
                gpa: 0x8000,
                offset: 0,
                len: 300
            }]
        );
        assert_eq!(
            p.start,
            Start::RealMode {
                ip: 0x8000,
                sp: 0x7000
            }
        );
        assert_eq!(p.start.to_string(), "real mode at 0000:8000, SP 0x7000");
        let e = prepare(&g, &alloc::vec![0; 0x9_9000], None, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Flat(ImageFitError::PastConventionalMemory { .. })
            ),
            "{e:?}"
        );
        assert_eq!(
            prepare(&g, &[], None, &[]),
            Err(LoadError::Flat(ImageFitError::Empty))
        );
    }

    /// A bzImage is placed by the boot protocol and entered at load address + 0x200 in 64-bit
    /// mode with RSI = the zero page (boot.rst, "64-bit Boot Protocol"); the config's command
    /// line goes to the kernel, `console=ttyS0` when it has none.
    #[test]
    fn prepare_plans_a_bzimage_with_the_configs_command_line() {
        let image = bzimage::tests::Synth::new().build();
        let g = guest("format = \"bzimage\"\nmemory_mib = 64\ncmdline = \"console=ttyS0 quiet\"\n");
        let p = prepare(&g, &image, None, &[]).unwrap();
        let Start::Long64(e) = p.start else {
            panic!("{:?}", p.start)
        };
        assert_eq!(
            (e.rip, e.rsi, e.cr3),
            (0x100_0200, ZERO_PAGE_GPA, PAGE_TABLES_GPA)
        );
        assert_eq!(p.start.to_string(), "64-bit mode at 0x1000200, RSI 0x7000");
        assert_eq!(cmdline_of(&p), b"console=ttyS0 quiet\0");
        assert!(
            p.writes.iter().any(|w| matches!(
                w,
                Write::Image {
                    gpa: 0x100_0000,
                    ..
                }
            )),
            "kernel at 16 MiB"
        );
        let plain = prepare(
            &guest("format = \"bzimage\"\nmemory_mib = 64\n"),
            &image,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(cmdline_of(&plain), b"console=ttyS0\0");
        // ACPI tables at 0xE0000 with the RSDP first, and the zero page's acpi_rsdp_addr
        // (boot protocol 2.14) pointing there; writes stay sorted and disjoint.
        let bytes_at = |gpa: u64| {
            plain.writes.iter().find_map(|w| match w {
                Write::Bytes { gpa: g, bytes } if *g == gpa => Some(bytes.clone()),
                _ => None,
            })
        };
        let tables = bytes_at(ACPI_TABLES_GPA).expect("ACPI tables written");
        assert_eq!(&tables[..8], b"RSD PTR ");
        // FADT and MADT ("APIC", ACPI 6.5 5.2.12): the guest finds its local and I/O APICs.
        assert!(tables.windows(4).any(|w| w == b"FACP") && tables.windows(4).any(|w| w == b"APIC"));
        let at = bzimage::offsets::ACPI_RSDP_ADDR;
        let zp = bytes_at(ZERO_PAGE_GPA).unwrap();
        assert_eq!(u64::from_le_bytes(zp[at..at + 8].try_into().unwrap()), ACPI_TABLES_GPA);
        for pair in plain.writes.windows(2) {
            assert!(pair[0].range().end() <= pair[1].gpa(), "{:?} / {:?}", pair[0].range(), pair[1].range());
        }
        // With an initrd, it is written where the plan puts it.
        let with = guest("format = \"bzimage\"\nmemory_mib = 64\ninitrd = \"i\"\n");
        let p = prepare(&with, &image, Some(&[5; 1000]), &[]).unwrap();
        assert!(p
            .writes
            .iter()
            .any(|w| matches!(w, Write::Initrd { len: 1000, .. })));
    }

    /// What cannot be loaded is refused with the reason: not a bzImage, too little RAM, an
    /// initrd the config names but nobody supplied.
    #[test]
    fn prepare_refuses_what_cannot_boot() {
        let image = bzimage::tests::Synth::new().build();
        let g = guest("format = \"bzimage\"\nmemory_mib = 64\n");
        let e = prepare(&g, &[0x90; 4096], None, &[]).unwrap_err();
        assert!(
            matches!(e, LoadError::BzImage(bzimage::BzImageError::BadBootFlag(_))),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("bzImage: not a bzImage"), "{e}");
        let small = guest("format = \"bzimage\"\nmemory_mib = 16\n");
        let e = prepare(&small, &image, None, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::BzImage(bzimage::BzImageError::KernelDoesNotFit { .. })
            ),
            "{e:?}"
        );
        let named = guest("format = \"bzimage\"\nmemory_mib = 64\ninitrd = \"i\"\n");
        assert_eq!(prepare(&named, &image, None, &[]), Err(LoadError::MissingInitrd));
        assert_eq!(
            LoadError::MissingInitrd.to_string(),
            "the initrd is missing"
        );
    }

    /// Reset state (SDM Vol. 3A 10.1.1, Table 10-1) for a flat image: real mode, 64 KiB
    /// segments at base 0 with the attributes both vendors' tables use (0x9B code, 0x93 data).
    #[test]
    fn a_startup_ipi_starts_the_ap_in_real_mode_at_the_vectors_page() {
        // SDM 11.6.1: vector 0x9A -> CS 0x9A00, base 0x9A000, IP 0.
        let st = sipi_state(0x9a);
        assert_eq!((st.cs.selector, st.cs.base(), st.rip), (0x9a00, 0x9a000, 0));
        assert_eq!((st.cr0 & 1, st.efer, st.cs.limit()), (0, 0, 0xffff), "real mode, no long mode");
        assert_eq!(st.data.base(), 0);
    }

    #[test]
    fn real_mode_start_is_the_reset_state_at_the_image() {
        let s = Start::RealMode {
            ip: 0x8000,
            sp: 0x7000,
        }
        .initial_state();
        assert_eq!((s.cs.selector, s.cs.base(), s.cs.limit()), (0, 0, 0xFFFF));
        assert_eq!(
            (s.cs.desc.vmx_access_rights(), s.cs.desc.svm_attributes()),
            (0x9B, 0x9B)
        );
        assert_eq!(
            (s.data.selector, s.data.base(), s.data.limit()),
            (0, 0, 0xFFFF)
        );
        assert_eq!(
            (
                s.data.desc.vmx_access_rights(),
                s.data.desc.svm_attributes()
            ),
            (0x93, 0x93)
        );
        assert_eq!(
            (s.gdt_base, s.gdt_limit, s.cr0, s.cr3, s.cr4, s.efer),
            (0, 0xFFFF, 0x10, 0, 0, 0)
        );
        assert_eq!((s.rip, s.rsp, s.rflags, s.rsi), (0x8000, 0x7000, 2, 0));
    }

    /// Multiboot spec 3.2 "Machine state": 32-bit protected mode, paging off, flat 4 GiB code
    /// (read/execute, D = 1, L = 0) and data segments, EAX = the boot loader's magic, EBX =
    /// the boot information, IF clear.
    #[test]
    fn protected_mode_start_is_the_multiboot_machine_state() {
        let s = Start::Protected32 { eip: 0x10_0040, eax: 0x2BAD_B002, ebx: 0x10_9000 }.initial_state();
        assert_eq!((s.cs.selector, s.cs.base(), s.cs.limit()), (0x08, 0, 0xFFFF_FFFF));
        assert!(s.cs.desc.default_big && !s.cs.desc.long && s.cs.desc.kind == 0xB, "32-bit execute/read code");
        assert_eq!((s.cs.desc.vmx_access_rights(), s.cs.desc.svm_attributes()), (0xC09B, 0xC9B));
        assert_eq!((s.data.selector, s.data.base(), s.data.limit(), s.data.desc.kind), (0x10, 0, 0xFFFF_FFFF, 0x3));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0), "PE and ET, no paging, no long mode");
        assert_eq!((s.rip, s.rax, s.rbx, s.rflags), (0x10_0040, 0x2BAD_B002, 0x10_9000, 2));
        assert_eq!(alloc::format!("{}", Start::Protected32 { eip: 0x10_0040, eax: 0x2BAD_B002, ebx: 0x10_9000 }), "32-bit protected mode at 0x100040, EAX 0x2badb002, EBX 0x109000");
    }

    #[test]
    fn a_multiboot_guest_is_prepared_with_its_modules_acpi_tables_and_entry_state() {
        // A Multiboot 2 "address tag" kernel: loaded at 1 MiB from its start, entry 1 MiB.
        let mut k = alloc::vec![0x90u8; 0x2000];
        let tags: [u32; 12] = [2 | (0 << 16), 24, 0x10_0000, 0x10_0000, 0, 0, 3, 12, 0x10_0000, 0, 0, 8];
        let len = 16 + 4 * tags.len() as u32;
        let head = [multiboot::MB2_HEADER_MAGIC, 0, len, 0u32.wrapping_sub(multiboot::MB2_HEADER_MAGIC).wrapping_sub(len)];
        for (i, w) in head.iter().chain(&tags).enumerate() {
            k[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let g = guest("format = \"multiboot2\"\nmemory_mib = 8\nvcpus = 2\ncmdline = \"hi\"\nmodules = [{ path = \"a\", cmdline = \"A\" }]\n");
        let module: &[u8] = &[9; 100];
        let p = prepare(&g, &k, None, &[module]).unwrap();
        let Start::Protected32 { eip, eax, ebx } = p.start else { panic!("{}", p.start) };
        assert_eq!((eip, eax), (0x10_0000, multiboot::MB2_BOOTLOADER_MAGIC));
        assert!(p.writes.iter().any(|w| matches!(w, Write::Bytes { gpa, .. } if *gpa == u64::from(ebx))), "EBX points at the boot information");
        let m = p.writes.iter().find(|w| matches!(w, Write::Module { .. })).unwrap();
        assert_eq!(m.data(&k, None, &[module]), Some(module));
        assert_eq!(m.data(&k, None, &[]), None, "without the module");
        // The ACPI tables as for Linux, their RSDP copied into the boot information.
        let acpi = p.writes.iter().find_map(|w| match w {
            Write::Bytes { gpa: ACPI_TABLES_GPA, bytes } => Some(bytes.clone()),
            _ => None,
        });
        let acpi = acpi.expect("ACPI tables at 0xE0000");
        let info = p.writes.iter().find_map(|w| match w {
            Write::Bytes { gpa, bytes } if *gpa == u64::from(ebx) => Some(bytes.clone()),
            _ => None,
        });
        let info = info.unwrap();
        let rsdp = &acpi[..acpi::RSDP_LEN];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(info.windows(acpi::RSDP_LEN).any(|w| w == rsdp), "the ACPI 2.0 RSDP tag");
        assert!(p.writes.windows(2).all(|w| w[0].range().end() <= w[1].gpa()), "sorted and disjoint");
        assert_eq!(prepare(&g, &k, None, &[]), Err(LoadError::MissingModule));
        let e = prepare(&g, &[0x90; 4096], None, &[module]).unwrap_err();
        assert_eq!(alloc::format!("{e}"), "multiboot: no Multiboot2 header (magic 0xe85250d6, valid checksum) in the first 32768 bytes");
    }

    /// boot.rst "64-bit Boot Protocol": CS = __BOOT_CS flat 64-bit code, DS/ES/SS = __BOOT_DS
    /// flat data, the GDT loaded, paging on, RSI = boot_params.
    #[test]
    fn long_mode_start_loads_the_boot_selectors_from_the_gdt() {
        let s = Start::Long64(Entry64::new(0x100_0200, ZERO_PAGE_GPA)).initial_state();
        assert_eq!(
            (
                s.cs.selector,
                s.cs.base(),
                s.cs.limit(),
                s.cs.desc.vmx_access_rights()
            ),
            (0x10, 0, 0xFFFF_FFFF, 0xA09B)
        );
        assert_eq!(
            (
                s.data.selector,
                s.data.base(),
                s.data.limit(),
                s.data.desc.svm_attributes()
            ),
            (0x18, 0, 0xFFFF_FFFF, 0xC93)
        );
        assert_eq!((s.gdt_base, s.gdt_limit), (GDT_GPA, GDT_LIMIT));
        assert_eq!(
            (s.cr0, s.cr3, s.cr4, s.efer),
            (ENTRY_CR0, PAGE_TABLES_GPA, ENTRY_CR4, ENTRY_EFER)
        );
        assert_eq!(
            (s.rip, s.rsp, s.rflags, s.rsi),
            (0x100_0200, 0x9000, 2, ZERO_PAGE_GPA)
        );
        // What the hidden parts say is what the GDT in guest memory says.
        let g = gdt();
        let at =
            |sel: u16| u64::from_le_bytes(g[sel as usize..sel as usize + 8].try_into().unwrap());
        assert_eq!(
            (
                Descriptor::decode(at(s.cs.selector)),
                Descriptor::decode(at(s.data.selector))
            ),
            (s.cs.desc, s.data.desc)
        );
    }

    #[test]
    fn writes_resolve_to_their_bytes() {
        let image = [1u8, 2, 3, 4, 5];
        let initrd = [9u8; 3];
        let b = Write::Bytes { gpa: 0x10, bytes: vec![7, 7] };
        assert_eq!((b.data(&image, None, &[]), b.range()), (Some(&[7u8, 7][..]), GpaRange { base: 0x10, len: 2 }));
        let i = Write::Image { gpa: 0x100, offset: 1, len: 3 };
        assert_eq!((i.data(&image, None, &[]), i.gpa(), i.len()), (Some(&[2u8, 3, 4][..]), 0x100, 3));
        assert_eq!(Write::Image { gpa: 0, offset: 3, len: 3 }.data(&image, None, &[]), None, "past the image");
        assert_eq!(Write::Image { gpa: 0, offset: usize::MAX, len: 2 }.data(&image, None, &[]), None);
        let r = Write::Initrd { gpa: 0x200, len: 3 };
        assert_eq!(r.data(&image, Some(&initrd), &[]), Some(&initrd[..]));
        assert_eq!(r.data(&image, None, &[]), None);
        assert_eq!(r.data(&image, Some(&initrd[..2]), &[]), None, "another initrd");
        assert!(!r.is_empty() && Write::Bytes { gpa: 0, bytes: vec![] }.is_empty());
    }
}
