//! Multiboot kernels, loaded as GRUB and QEMU load them: Multiboot 1 (the GNU Multiboot
//! Specification 0.6.96: its header in the first 8 KiB, an ELF32/ELF64 image or the
//! "a.out kludge" address fields) and Multiboot 2 (the Multiboot2 Specification 2.0: its
//! header in the first 32 KiB, tags, an ELF image or the address tag). The guest starts in
//! 32-bit protected mode with paging off, EAX holding the boot loader's magic and EBX the
//! physical address of the boot information Bastion builds from the guest's memory map:
//! lower/upper memory, the memory map, the command line, the modules with their command
//! lines, the boot loader's name ("Bastion") and, for Multiboot 2, a copy of the ACPI RSDP.
//!
//! # Where things go
//!
//! The kernel's segments go where its header or ELF program headers say (physical addresses,
//! as GRUB does: `p_paddr`), each inside one RAM range of the e820 map and below 4 GiB (the
//! kernel starts with paging off), never overlapping each other. After the highest byte the
//! kernel occupies (its bss included) come, page-aligned, the boot information (structures
//! and strings in one block) and then each module on a page boundary (Multiboot 1 flag 0 and
//! the Multiboot 2 module-alignment tag both ask for pages; Bastion always gives them). A block
//! that does not fit in the RAM range it would start in moves to the next one.
//!
//! # Why by hand
//!
//! The only parsing needed is the Multiboot headers (no crate reads them) and the ELF file
//! header and program headers. `xmas-elf` 0.8, the no_std ELF reader the bootloader uses,
//! slices the file at the program-header offset without checking it against the file's
//! length (`program.rs`, `parse_program_header`), so a truncated kernel would panic the
//! hypervisor; here every field is read with a bound check and a bad one is an error naming
//! it.

use super::{u16_at, u32_at, u64_at, Write};
use crate::vm::memmap::{E820Entry, E820Kind, MemoryMap, PAGE_SIZE};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Multiboot 1 header magic (spec 3.1.2).
pub const MB1_HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What EAX holds at a Multiboot 1 kernel's entry (spec 3.2).
pub const MB1_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Multiboot 2 header magic (Multiboot2 spec 3.1.1).
pub const MB2_HEADER_MAGIC: u32 = 0xE852_50D6;
/// What EAX holds at a Multiboot 2 kernel's entry (Multiboot2 spec 3.3).
pub const MB2_BOOTLOADER_MAGIC: u32 = 0x36D7_6289;
/// The header must lie entirely within this many bytes of the file, 4-byte aligned (MB1)...
pub const MB1_SEARCH_LEN: usize = 8192;
/// ...or 8-byte aligned within the first 32 KiB (MB2).
pub const MB2_SEARCH_LEN: usize = 32768;
/// The boot loader name both versions report.
pub const BOOT_LOADER_NAME: &str = "Bastion";

/// Multiboot 1 header flags (spec 3.1.2). Bits 0-15 are requirements: a boot loader that
/// does not understand one must refuse the kernel.
pub mod mb1_flags {
    /// Bit 0: modules must be page-aligned.
    pub const PAGE_ALIGN: u32 = 0x1;
    /// Bit 1: mem_* (and the memory map) must be provided.
    pub const MEMORY_INFO: u32 = 0x2;
    /// Bit 16: the address fields at offsets 12-28 are valid (the "a.out kludge").
    pub const ADDRESS_FIELDS: u32 = 0x1_0000;
    /// The requirement bits Bastion honours: bits 0 and 1. Bit 2 (a video mode) needs a
    /// framebuffer guests do not have; bits 3-15 are undefined.
    pub const UNDERSTOOD: u32 = 0x3;
}

/// Multiboot 1 boot information flags (spec 3.3): which fields are valid.
pub mod mb1_info {
    pub const MEMORY: u32 = 0x1;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODULES: u32 = 1 << 3;
    pub const MMAP: u32 = 1 << 6;
    pub const LOADER_NAME: u32 = 1 << 9;
    /// Size of the information structure up to and including the framebuffer fields.
    pub const SIZE: usize = 116;
    /// Offsets of the fields Bastion fills.
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const CMDLINE_ADDR: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const LOADER_NAME_ADDR: usize = 64;
}

/// Multiboot 2 tag types: in the header (spec 3.1.3-3.1.13)...
pub mod mb2_header_tag {
    pub const END: u16 = 0;
    pub const INFORMATION_REQUEST: u16 = 1;
    pub const ADDRESS: u16 = 2;
    pub const ENTRY_ADDRESS: u16 = 3;
    pub const CONSOLE_FLAGS: u16 = 4;
    pub const FRAMEBUFFER: u16 = 5;
    pub const MODULE_ALIGN: u16 = 6;
    pub const EFI_BOOT_SERVICES: u16 = 7;
    pub const ENTRY_ADDRESS_EFI32: u16 = 8;
    pub const ENTRY_ADDRESS_EFI64: u16 = 9;
    pub const RELOCATABLE: u16 = 10;
    /// Bit 0 of a header tag's flags: the kernel can do without it.
    pub const OPTIONAL: u16 = 1;
}

/// ...and in the boot information (spec 3.6).
pub mod mb2_info_tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const LOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const BASIC_MEMINFO: u32 = 4;
    pub const MMAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
    /// What Bastion provides, for information-request tags.
    pub const PROVIDED: [u32; 8] = [END, CMDLINE, LOADER_NAME, MODULE, BASIC_MEMINFO, MMAP, ACPI_OLD, ACPI_NEW];
}

/// Memory map entry types (both versions, spec 3.3 / 3.6.8): 1 available RAM, 2 reserved.
const MMAP_AVAILABLE: u32 = 1;
const MMAP_RESERVED: u32 = 2;

/// Which specification the config says the kernel follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    One,
    Two,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::One => "Multiboot",
            Version::Two => "Multiboot2",
        })
    }
}

/// How the kernel's load addresses were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The header's address fields (MB1 flag 16, MB2 address tag).
    AddressFields,
    Elf32,
    Elf64,
}

/// One piece of the kernel in guest memory: `file_len` bytes from the file at `offset`, then
/// zeros up to `mem_len` (the bss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub gpa: u64,
    pub offset: usize,
    pub file_len: usize,
    pub mem_len: u64,
}

impl Segment {
    /// One past the last byte; saturated, so an ELF64 segment that would wrap past 2^64 is
    /// simply beyond RAM (refused by [`plan`]) instead of an overflow.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.mem_len)
    }
}

/// What the header and the image say about loading the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub version: Version,
    /// Where the header starts in the file.
    pub header_offset: usize,
    pub layout: Layout,
    /// Sorted by address, non-overlapping.
    pub segments: Vec<Segment>,
    /// The 32-bit entry point (physical).
    pub entry: u32,
    /// Multiboot 2 information-request tags: the info types the kernel wants.
    pub requested: Vec<u32>,
}

/// Why a multiboot kernel cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultibootError {
    /// No header with the right magic, alignment and checksum in the first `searched` bytes.
    NoHeader { version: Version, searched: usize },
    /// The header's checksum does not make the fields sum to zero.
    BadChecksum { version: Version, offset: usize },
    /// The header runs past the end of the file or of the search area.
    HeaderTruncated { version: Version, offset: usize },
    /// MB1: a requirement flag (bits 0-15) Bastion does not honour.
    UnsupportedFlags(u32),
    /// MB2: the architecture field is not 0 (i386 protected mode).
    UnsupportedArchitecture(u32),
    /// MB2: a header tag Bastion does not know or cannot honour and that is not optional.
    UnsupportedTag { tag: u16 },
    /// MB2: a non-optional information request for a type Bastion does not provide.
    UnsupportedRequest { info_type: u32 },
    /// MB2: a tag whose size is too small for its type or runs past the header.
    BadTag { tag: u16, size: u32 },
    /// Address fields that contradict each other (`what` says which).
    BadAddressFields(&'static str),
    /// Not an ELF file, or one that cannot be a 32/64-bit x86 executable.
    BadElf(&'static str),
    /// No loadable segment.
    NothingToLoad,
    /// A segment's bytes run past the end of the file.
    SegmentTruncated { index: usize, offset: u64, len: u64, file_len: usize },
    /// A segment is not inside the guest's RAM below 4 GiB.
    SegmentOutsideRam { index: usize, gpa: u64, len: u64 },
    SegmentsOverlap { first: usize, second: usize },
    /// The entry point lies outside every loaded segment.
    EntryOutside(u64),
    /// The boot information or a module does not fit in the guest's RAM after the kernel.
    NoRoomFor { what: &'static str, len: u64 },
    CmdlineHasNul { what: &'static str },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MultibootError::*;
        match self {
            NoHeader { version, searched } => write!(
                f,
                "no {version} header (magic {:#x}, valid checksum) in the first {searched} bytes",
                if *version == Version::One { MB1_HEADER_MAGIC } else { MB2_HEADER_MAGIC }
            ),
            BadChecksum { version, offset } => write!(f, "the {version} header at {offset:#x} has a bad checksum"),
            HeaderTruncated { version, offset } => write!(f, "the {version} header at {offset:#x} runs past the first {} bytes of the file or its end", if *version == Version::One { MB1_SEARCH_LEN } else { MB2_SEARCH_LEN }),
            UnsupportedFlags(bits) => write!(f, "the header requires flags {bits:#x} Bastion cannot honour (bit 2: a video mode; guests have no framebuffer)"),
            UnsupportedArchitecture(a) => write!(f, "architecture {a} is not 0 (i386 protected mode)"),
            UnsupportedTag { tag } => write!(f, "the header has required tag type {tag}, which Bastion cannot honour"),
            UnsupportedRequest { info_type } => write!(f, "the header requires boot information of type {info_type}, which Bastion does not provide"),
            BadTag { tag, size } => write!(f, "header tag type {tag} has a bad size {size}"),
            BadAddressFields(what) => write!(f, "bad address fields: {what}"),
            BadElf(what) => write!(f, "not a loadable x86 ELF executable: {what}"),
            NothingToLoad => write!(f, "the kernel has nothing to load"),
            SegmentTruncated { index, offset, len, file_len } => write!(f, "segment {index}: {len} bytes at file offset {offset:#x} run past the end of the {file_len}-byte file"),
            SegmentOutsideRam { index, gpa, len } => write!(f, "segment {index} ({len:#x} bytes at {gpa:#x}) is not inside the guest's RAM below 4 GiB"),
            SegmentsOverlap { first, second } => write!(f, "segments {first} and {second} overlap"),
            EntryOutside(e) => write!(f, "the entry point {e:#x} is not inside a loaded segment"),
            NoRoomFor { what, len } => write!(f, "no room for {what} ({len} bytes) in the guest's RAM below 4 GiB after the kernel"),
            CmdlineHasNul { what } => write!(f, "the {what} contains a NUL byte"),
        }
    }
}

/// Parses the header `version` of `image` and finds what to load.
pub fn parse(image: &[u8], version: Version) -> Result<Kernel, MultibootError> {
    match version {
        Version::One => parse_mb1(image),
        Version::Two => parse_mb2(image),
    }
}

/// The first offset, `align`-aligned within `search` bytes, holding `magic`.
fn find_magic(image: &[u8], magic: u32, align: usize, search: usize) -> Option<usize> {
    let end = image.len().min(search);
    (0..end).step_by(align).find(|&at| u32_at(image, at) == Some(magic))
}

fn parse_mb1(image: &[u8]) -> Result<Kernel, MultibootError> {
    let v = Version::One;
    let at = find_magic(image, MB1_HEADER_MAGIC, 4, MB1_SEARCH_LEN).ok_or(MultibootError::NoHeader { version: v, searched: MB1_SEARCH_LEN })?;
    // magic, flags, checksum: 12 bytes, all inside the search area (spec 3.1.1).
    let field = |n: usize| u32_at(image, at + 4 * n).filter(|_| at + 4 * n + 4 <= MB1_SEARCH_LEN);
    let (Some(flags), Some(checksum)) = (field(1), field(2)) else {
        return Err(MultibootError::HeaderTruncated { version: v, offset: at });
    };
    if MB1_HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(MultibootError::BadChecksum { version: v, offset: at });
    }
    let required = flags & 0xffff;
    if required & !mb1_flags::UNDERSTOOD != 0 {
        return Err(MultibootError::UnsupportedFlags(required & !mb1_flags::UNDERSTOOD));
    }
    if flags & mb1_flags::ADDRESS_FIELDS != 0 {
        let f: Option<[u32; 5]> = (|| Some([field(3)?, field(4)?, field(5)?, field(6)?, field(7)?]))();
        let Some([header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr]) = f else {
            return Err(MultibootError::HeaderTruncated { version: v, offset: at });
        };
        let (segments, entry) = address_fields(image, at, header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr)?;
        return Ok(Kernel { version: v, header_offset: at, layout: Layout::AddressFields, segments, entry, requested: Vec::new() });
    }
    let (layout, segments, entry) = elf(image)?;
    Ok(Kernel { version: v, header_offset: at, layout, segments, entry, requested: Vec::new() })
}

/// The a.out kludge (MB1 spec 3.1.3) and the MB2 address tag (3.1.5): the file from
/// `header_addr - load_addr` bytes before the header is loaded at `load_addr`, up to
/// `load_end_addr` (0: the end of the file), then zeros up to `bss_end_addr` (0: none).
fn address_fields(image: &[u8], header_offset: usize, header_addr: u32, load_addr: u32, load_end_addr: u32, bss_end_addr: u32, entry_addr: u32) -> Result<(Vec<Segment>, u32), MultibootError> {
    let bad = MultibootError::BadAddressFields;
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let before = (header_addr - load_addr) as usize;
    let offset = header_offset.checked_sub(before).ok_or(bad("load_addr would start before the beginning of the file"))?;
    let file_len = if load_end_addr == 0 {
        image.len() - offset
    } else {
        if load_end_addr < header_addr {
            return Err(bad("load_end_addr is below header_addr"));
        }
        (load_end_addr - load_addr) as usize
    };
    if offset + file_len > image.len() {
        return Err(MultibootError::SegmentTruncated { index: 0, offset: offset as u64, len: file_len as u64, file_len: image.len() });
    }
    let load_end = u64::from(load_addr) + file_len as u64;
    let mem_end = if bss_end_addr == 0 { load_end } else { u64::from(bss_end_addr) };
    if mem_end < load_end {
        return Err(bad("bss_end_addr is below the end of the loaded image"));
    }
    let seg = Segment { gpa: u64::from(load_addr), offset, file_len, mem_len: mem_end - u64::from(load_addr) };
    if seg.mem_len == 0 {
        return Err(MultibootError::NothingToLoad);
    }
    if !(seg.gpa..seg.end()).contains(&u64::from(entry_addr)) {
        return Err(MultibootError::EntryOutside(u64::from(entry_addr)));
    }
    Ok((vec![seg], entry_addr))
}

/// ELF constants (System V ABI, ELF-64 Object File Format): identification, machine types,
/// program header type.
mod elf_consts {
    pub const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
    pub const CLASS32: u8 = 1;
    pub const CLASS64: u8 = 2;
    pub const DATA_LSB: u8 = 1;
    pub const ET_EXEC: u16 = 2;
    pub const EM_386: u16 = 3;
    pub const EM_X86_64: u16 = 62;
    pub const PT_LOAD: u32 = 1;
}

/// An ELF executable's loadable segments at their physical addresses, and its entry point
/// translated to a physical address through the segment holding it (as GRUB does).
fn elf(image: &[u8]) -> Result<(Layout, Vec<Segment>, u32), MultibootError> {
    use elf_consts::*;
    let bad = MultibootError::BadElf;
    if image.get(0..4) != Some(&MAGIC[..]) {
        return Err(bad("no ELF magic, and the header does not give address fields (flag 16)"));
    }
    let class = image.get(4).copied();
    let (layout, wide) = match class {
        Some(CLASS32) => (Layout::Elf32, false),
        Some(CLASS64) => (Layout::Elf64, true),
        _ => return Err(bad("unknown ELF class")),
    };
    if image.get(5) != Some(&DATA_LSB) {
        return Err(bad("not little-endian"));
    }
    let hdr_len = if wide { 64 } else { 52 };
    if image.len() < hdr_len {
        return Err(bad("the ELF header is truncated"));
    }
    let (e_type, machine) = (u16_at(image, 16).unwrap_or(0), u16_at(image, 18).unwrap_or(0));
    if e_type != ET_EXEC {
        return Err(bad("not an executable (e_type is not ET_EXEC)"));
    }
    if machine != if wide { EM_X86_64 } else { EM_386 } {
        return Err(bad("not an x86 machine type for its class"));
    }
    let word = |at: usize| if wide { u64_at(image, at) } else { u32_at(image, at).map(u64::from) };
    let (entry, phoff, phentsize, phnum) = if wide {
        (word(24), word(32), u16_at(image, 54), u16_at(image, 56))
    } else {
        (word(24), word(28), u16_at(image, 42), u16_at(image, 44))
    };
    let (Some(entry), Some(phoff), Some(phentsize), Some(phnum)) = (entry, phoff, phentsize, phnum) else {
        return Err(bad("the ELF header is truncated"));
    };
    let min_ph = if wide { 56 } else { 32 };
    if phnum == 0 {
        return Err(MultibootError::NothingToLoad);
    }
    if usize::from(phentsize) < min_ph {
        return Err(bad("program header entries are too small"));
    }
    let table_end = phoff.checked_add(u64::from(phentsize) * u64::from(phnum));
    if table_end.is_none_or(|e| e > image.len() as u64) {
        return Err(bad("the program header table runs past the end of the file"));
    }
    let mut segments = Vec::new();
    let mut entry_pa = None;
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        // Inside the file: checked against table_end above.
        let f = |o32: usize, o64: usize| if wide { u64_at(image, ph + o64).unwrap_or(0) } else { u32_at(image, ph + o32).map_or(0, u64::from) };
        if u32_at(image, ph) != Some(PT_LOAD) {
            continue;
        }
        let (offset, vaddr, paddr, filesz, memsz) = (f(4, 8), f(8, 16), f(12, 24), f(16, 32), f(20, 40));
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad("a segment's file size exceeds its memory size"));
        }
        if offset.checked_add(filesz).is_none_or(|e| e > image.len() as u64) {
            return Err(MultibootError::SegmentTruncated { index: i, offset, len: filesz, file_len: image.len() });
        }
        if (vaddr..vaddr.saturating_add(memsz)).contains(&entry) {
            entry_pa = Some(paddr.wrapping_add(entry - vaddr));
        }
        segments.push(Segment { gpa: paddr, offset: offset as usize, file_len: filesz as usize, mem_len: memsz });
    }
    if segments.is_empty() {
        return Err(MultibootError::NothingToLoad);
    }
    let entry_pa = entry_pa.ok_or(MultibootError::EntryOutside(entry))?;
    let entry = u32::try_from(entry_pa).map_err(|_| MultibootError::EntryOutside(entry_pa))?;
    Ok((layout, segments, entry))
}

fn parse_mb2(image: &[u8]) -> Result<Kernel, MultibootError> {
    let v = Version::Two;
    let at = find_magic(image, MB2_HEADER_MAGIC, 8, MB2_SEARCH_LEN).ok_or(MultibootError::NoHeader { version: v, searched: MB2_SEARCH_LEN })?;
    let truncated = MultibootError::HeaderTruncated { version: v, offset: at };
    let (Some(arch), Some(len), Some(checksum)) = (u32_at(image, at + 4), u32_at(image, at + 8), u32_at(image, at + 12)) else {
        return Err(truncated);
    };
    if MB2_HEADER_MAGIC.wrapping_add(arch).wrapping_add(len).wrapping_add(checksum) != 0 {
        return Err(MultibootError::BadChecksum { version: v, offset: at });
    }
    let end = at as u64 + u64::from(len);
    // At least the four fields and the end tag (spec 3.1.1, 3.1.3).
    if len < 24 || end > image.len().min(MB2_SEARCH_LEN) as u64 {
        return Err(truncated);
    }
    if arch != 0 {
        return Err(MultibootError::UnsupportedArchitecture(arch));
    }
    let header = &image[..end as usize];
    let mut address = None;
    let mut entry = None;
    let mut requested = Vec::new();
    let mut tag_at = at + 16;
    // Every tag takes 8 bytes or more, so a header of `len` bytes holds at most len / 8 of
    // them: the loop is bounded even if a size field were misread.
    let mut ended = false;
    for _ in 0..len / 8 {
        let (Some(tag), Some(flags), Some(size)) = (u16_at(header, tag_at), u16_at(header, tag_at + 2), u32_at(header, tag_at + 4)) else {
            return Err(truncated);
        };
        let optional = flags & mb2_header_tag::OPTIONAL != 0;
        let body = |min: u32| -> Result<&[u8], MultibootError> {
            if size < min || tag_at as u64 + u64::from(size) > end {
                return Err(MultibootError::BadTag { tag, size });
            }
            Ok(&header[tag_at + 8..tag_at + size as usize])
        };
        match tag {
            mb2_header_tag::END => {
                body(8)?;
                ended = true;
                break;
            }
            mb2_header_tag::INFORMATION_REQUEST => {
                let b = body(8)?;
                for chunk in b.chunks_exact(4) {
                    let t = u32::from_le_bytes(chunk.try_into().unwrap_or_default());
                    if !mb2_info_tag::PROVIDED.contains(&t) && !optional {
                        return Err(MultibootError::UnsupportedRequest { info_type: t });
                    }
                    requested.push(t);
                }
            }
            mb2_header_tag::ADDRESS => {
                let b = body(24)?;
                let w = |n: usize| u32_at(b, 4 * n).unwrap_or(0);
                address = Some([w(0), w(1), w(2), w(3)]);
            }
            mb2_header_tag::ENTRY_ADDRESS => entry = Some(u32_at(body(12)?, 0).unwrap_or(0)),
            // Module alignment: modules are always page-aligned. Relocatable: loading at the
            // preferred address is allowed (spec 3.1.13). EFI tags: Bastion is not EFI
            // firmware and enters through the i386 entry, as a BIOS boot would.
            mb2_header_tag::MODULE_ALIGN
            | mb2_header_tag::RELOCATABLE
            | mb2_header_tag::EFI_BOOT_SERVICES
            | mb2_header_tag::ENTRY_ADDRESS_EFI32
            | mb2_header_tag::ENTRY_ADDRESS_EFI64 => {
                body(8)?;
            }
            // Console flags: honourable only when no console is required (bit 0): guests
            // have a serial console, no EGA text console. Framebuffer: none to give.
            mb2_header_tag::CONSOLE_FLAGS => {
                let b = body(12)?;
                if u32_at(b, 0).unwrap_or(0) & 1 != 0 && !optional {
                    return Err(MultibootError::UnsupportedTag { tag });
                }
            }
            _ => {
                body(8)?;
                if !optional {
                    return Err(MultibootError::UnsupportedTag { tag });
                }
            }
        }
        // Tags are 8-byte aligned (spec 3.1.3).
        tag_at += (size as usize).div_ceil(8) * 8;
    }
    if !ended {
        return Err(truncated);
    }
    let (layout, segments, entry) = match address {
        Some([header_addr, load_addr, load_end_addr, bss_end_addr]) => {
            // The address tag's load_addr may be -1: the file is loaded from its start.
            let load_addr = if load_addr == u32::MAX { header_addr.wrapping_sub(at as u32) } else { load_addr };
            let entry_addr = entry.ok_or(MultibootError::BadAddressFields("an address tag without an entry address tag"))?;
            let (s, e) = address_fields(image, at, header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr)?;
            (Layout::AddressFields, s, e)
        }
        None => {
            let (layout, s, elf_entry) = elf(image)?;
            // An entry address tag overrides the ELF entry (spec 3.1.6).
            (layout, s, entry.unwrap_or(elf_entry))
        }
    };
    Ok(Kernel { version: v, header_offset: at, layout, segments, entry, requested })
}

/// A module to place: its length and command line (the config's, exactly as given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleInput<'a> {
    pub len: usize,
    pub cmdline: &'a str,
}

/// Where the loader put things, for the entry state and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// EIP at entry.
    pub entry: u32,
    /// EAX at entry.
    pub magic: u32,
    /// EBX at entry: the boot information.
    pub info: u32,
    /// Each module's guest-physical range, in the config's order.
    pub modules: Vec<(u64, u64)>,
}

/// Finds room for blocks in the e820 RAM ranges below 4 GiB, upwards from a start address.
struct Placer {
    ram: Vec<E820Entry>,
    next: u64,
}

const FOUR_GIB: u64 = 1 << 32;

impl Placer {
    /// `len` bytes at the next page boundary that has room; `None` if no RAM below 4 GiB does.
    fn place(&mut self, len: u64) -> Option<u64> {
        for r in &self.ram {
            let start = self.next.max(r.addr).next_multiple_of(PAGE_SIZE);
            let end = start.checked_add(len)?;
            if end <= r.addr + r.size && end <= FOUR_GIB {
                self.next = end;
                return Some(start);
            }
        }
        None
    }
}

/// Places the kernel's segments, the boot information and the modules in a guest with memory
/// map `map`; `rsdp` is the guest's ACPI RSDP (copied into the Multiboot 2 information).
pub fn plan(image: &[u8], kernel: &Kernel, cmdline: &str, modules: &[ModuleInput<'_>], map: &MemoryMap, rsdp: Option<&[u8]>) -> Result<Plan, MultibootError> {
    let e820 = map.e820();
    let ram: Vec<E820Entry> = e820.iter().copied().filter(|e| e.kind == E820Kind::Ram).collect();
    let mut writes = Vec::new();
    let mut sorted: Vec<(usize, Segment)> = kernel.segments.iter().copied().enumerate().collect();
    sorted.sort_by_key(|(_, s)| s.gpa);
    for (i, s) in &sorted {
        // A plan is made from the image its kernel was parsed from; refuse any other.
        if s.offset.checked_add(s.file_len).is_none_or(|e| e > image.len()) {
            return Err(MultibootError::SegmentTruncated { index: *i, offset: s.offset as u64, len: s.file_len as u64, file_len: image.len() });
        }
        let inside = s.end() <= FOUR_GIB && ram.iter().any(|r| r.addr <= s.gpa && s.end() <= r.addr + r.size);
        if !inside {
            return Err(MultibootError::SegmentOutsideRam { index: *i, gpa: s.gpa, len: s.mem_len });
        }
    }
    for w in sorted.windows(2) {
        if w[1].1.gpa < w[0].1.end() {
            return Err(MultibootError::SegmentsOverlap { first: w[0].0, second: w[1].0 });
        }
    }
    for (_, s) in &sorted {
        if s.file_len > 0 {
            writes.push(Write::Image { gpa: s.gpa, offset: s.offset, len: s.file_len });
        }
        let bss = s.mem_len - s.file_len as u64;
        if bss > 0 {
            writes.push(Write::Zero { gpa: s.gpa + s.file_len as u64, len: bss });
        }
    }
    if cmdline.contains('\0') {
        return Err(MultibootError::CmdlineHasNul { what: "command line" });
    }
    if modules.iter().any(|m| m.cmdline.contains('\0')) {
        return Err(MultibootError::CmdlineHasNul { what: "module command line" });
    }
    let kernel_end = sorted.iter().map(|(_, s)| s.end()).max().unwrap_or(0);
    let mut placer = Placer { ram, next: kernel_end };
    // The information block's size does not depend on where it goes: build it once with the
    // module addresses unknown to learn its length, place it, place the modules, build again.
    let info_len = match kernel.version {
        Version::One => mb1_info(0, cmdline, modules, &[], &e820).len(),
        Version::Two => mb2_info(cmdline, modules, &[], &e820, rsdp).len(),
    } as u64;
    let info_gpa = placer.place(info_len).ok_or(MultibootError::NoRoomFor { what: "the boot information", len: info_len })?;
    let mut placed = Vec::new();
    for m in modules {
        let len = m.len as u64;
        let gpa = placer.place(len.max(1)).ok_or(MultibootError::NoRoomFor { what: "a module", len })?;
        placed.push((gpa, gpa + len));
    }
    let info = match kernel.version {
        Version::One => mb1_info(info_gpa, cmdline, modules, &placed, &e820),
        Version::Two => mb2_info(cmdline, modules, &placed, &e820, rsdp),
    };
    debug_assert_eq!(info.len() as u64, info_len);
    writes.push(Write::Bytes { gpa: info_gpa, bytes: info });
    for (i, (gpa, end)) in placed.iter().enumerate() {
        if end > gpa {
            writes.push(Write::Module { index: i, gpa: *gpa, len: (end - gpa) as usize });
        }
    }
    writes.sort_by_key(Write::gpa);
    let magic = if kernel.version == Version::One { MB1_BOOTLOADER_MAGIC } else { MB2_BOOTLOADER_MAGIC };
    Ok(Plan { writes, entry: kernel.entry, magic, info: info_gpa as u32, modules: placed })
}

/// KiB of RAM from 0 up to the first non-RAM byte (mem_lower, at most 640) and from 1 MiB up
/// to the first hole (mem_upper), as the specifications define them.
fn mem_lower_upper(e820: &[E820Entry]) -> (u32, u32) {
    let ram_from = |start: u64| e820.iter().find(|e| e.kind == E820Kind::Ram && e.addr <= start && start < e.addr + e.size).map_or(0, |e| e.addr + e.size - start);
    let lower = ram_from(0).min(640 * 1024);
    let upper = ram_from(1 << 20);
    ((lower / 1024) as u32, (upper / 1024).min(u64::from(u32::MAX)) as u32)
}

fn mmap_type(kind: E820Kind) -> u32 {
    match kind {
        E820Kind::Ram => MMAP_AVAILABLE,
        E820Kind::Reserved => MMAP_RESERVED,
    }
}

/// A string table appended after fixed structures: returns each string's address.
struct Strings {
    base: u64,
    bytes: Vec<u8>,
}

impl Strings {
    fn add(&mut self, s: &str) -> u32 {
        let at = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        at as u32
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The Multiboot 1 information block at `base` (spec 3.3): the structure, then the module
/// table (16 bytes each), the memory map (24-byte entries whose `size` field says 20), then
/// the strings.
fn mb1_info(base: u64, cmdline: &str, modules: &[ModuleInput<'_>], placed: &[(u64, u64)], e820: &[E820Entry]) -> Vec<u8> {
    use mb1_info::*;
    let mods_at = SIZE;
    let mmap_at = mods_at + 16 * modules.len();
    let strings_at = mmap_at + 24 * e820.len();
    let mut b = vec![0u8; strings_at];
    let mut s = Strings { base: base + strings_at as u64, bytes: Vec::new() };
    let (lower, upper) = mem_lower_upper(e820);
    put32(&mut b, FLAGS, MEMORY + CMDLINE + MODULES + MMAP + LOADER_NAME);
    put32(&mut b, MEM_LOWER, lower);
    put32(&mut b, MEM_UPPER, upper);
    put32(&mut b, CMDLINE_ADDR, s.add(cmdline));
    put32(&mut b, MODS_COUNT, modules.len() as u32);
    put32(&mut b, MODS_ADDR, (base + mods_at as u64) as u32);
    put32(&mut b, MMAP_LENGTH, (24 * e820.len()) as u32);
    put32(&mut b, MMAP_ADDR, (base + mmap_at as u64) as u32);
    put32(&mut b, LOADER_NAME_ADDR, s.add(BOOT_LOADER_NAME));
    for (i, m) in modules.iter().enumerate() {
        let (start, end) = placed.get(i).copied().unwrap_or_default();
        let at = mods_at + 16 * i;
        put32(&mut b, at, start as u32);
        put32(&mut b, at + 4, end as u32);
        put32(&mut b, at + 8, s.add(m.cmdline));
    }
    for (i, e) in e820.iter().enumerate() {
        let at = mmap_at + 24 * i;
        // `size` counts the entry without itself (spec 3.3): base, length, type.
        put32(&mut b, at, 20);
        b[at + 4..at + 12].copy_from_slice(&e.addr.to_le_bytes());
        b[at + 12..at + 20].copy_from_slice(&e.size.to_le_bytes());
        put32(&mut b, at + 20, mmap_type(e.kind));
    }
    b.extend_from_slice(&s.bytes);
    b
}

/// The Multiboot 2 information block (spec 3.6): total size, reserved, then 8-byte-aligned
/// tags and the end tag. Nothing in it points into itself, so it is the same wherever it goes.
fn mb2_info(cmdline: &str, modules: &[ModuleInput<'_>], placed: &[(u64, u64)], e820: &[E820Entry], rsdp: Option<&[u8]>) -> Vec<u8> {
    use mb2_info_tag::*;
    let mut b = vec![0u8; 8];
    let tag = |b: &mut Vec<u8>, kind: u32, body: &[u8]| {
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        b.resize(b.len().next_multiple_of(8), 0);
    };
    let cstr = |s: &str| s.bytes().chain([0]).collect::<Vec<u8>>();
    tag(&mut b, CMDLINE, &cstr(cmdline));
    tag(&mut b, LOADER_NAME, &cstr(BOOT_LOADER_NAME));
    for (i, m) in modules.iter().enumerate() {
        let (start, end) = placed.get(i).copied().unwrap_or_default();
        let mut body = Vec::new();
        body.extend_from_slice(&(start as u32).to_le_bytes());
        body.extend_from_slice(&(end as u32).to_le_bytes());
        body.extend_from_slice(&cstr(m.cmdline));
        tag(&mut b, MODULE, &body);
    }
    let (lower, upper) = mem_lower_upper(e820);
    let mut mem = Vec::new();
    mem.extend_from_slice(&lower.to_le_bytes());
    mem.extend_from_slice(&upper.to_le_bytes());
    tag(&mut b, BASIC_MEMINFO, &mem);
    // entry_size 24, entry_version 0, then base, length, type, reserved (spec 3.6.8).
    let mut mmap = Vec::new();
    mmap.extend_from_slice(&24u32.to_le_bytes());
    mmap.extend_from_slice(&0u32.to_le_bytes());
    for e in e820 {
        mmap.extend_from_slice(&e.addr.to_le_bytes());
        mmap.extend_from_slice(&e.size.to_le_bytes());
        mmap.extend_from_slice(&mmap_type(e.kind).to_le_bytes());
        mmap.extend_from_slice(&0u32.to_le_bytes());
    }
    tag(&mut b, MMAP, &mmap);
    if let Some(r) = rsdp {
        // The ACPI 1.0 part of the RSDP (20 bytes, its own checksum), and the whole of an
        // ACPI 2.0+ one (spec 3.6.14, 3.6.15).
        tag(&mut b, ACPI_OLD, &r[..r.len().min(20)]);
        if r.len() > 20 {
            tag(&mut b, ACPI_NEW, r);
        }
    }
    tag(&mut b, END, &[]);
    let total = b.len() as u32;
    put32(&mut b, 0, total);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    const MIB: u64 = 1 << 20;

    fn put(b: &mut Vec<u8>, at: usize, v: &[u8]) {
        if b.len() < at + v.len() {
            b.resize(at + v.len(), 0);
        }
        b[at..at + v.len()].copy_from_slice(v);
    }

    /// mem_lower is RAM from 0, mem_upper RAM from 1 MiB, each up to the first byte that is
    /// not RAM (Multiboot 1 spec 3.3; Multiboot 2 "Basic memory information"): a region that
    /// ends where the other starts is not the one that holds it.
    #[test]
    fn basic_memory_counts_ram_from_0_and_from_1_mib_up_to_the_first_hole() {
        let ram = |addr: u64, size: u64| E820Entry { addr, size, kind: E820Kind::Ram };
        // Adjacent entries: [0, 1 MiB) then [1 MiB, 9 MiB).
        assert_eq!(mem_lower_upper(&[ram(0, 1 << 20), ram(1 << 20, 8 << 20)]), (640, 8 * 1024));
        // Nothing at 1 MiB: no upper memory; lower stops at the EBDA.
        assert_eq!(mem_lower_upper(&[ram(0, 0x9_fc00), ram(2 << 20, 1 << 20)]), (639, 0));
        let reserved = E820Entry { addr: 0, size: 1 << 20, kind: E820Kind::Reserved };
        assert_eq!(mem_lower_upper(&[reserved, ram(1 << 20, 1 << 20)]), (0, 1024), "not RAM");
    }

    fn rd32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn rd64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// A Multiboot 1 header with `flags` at `at` in `b`, its checksum right, followed by
    /// `fields` (the address fields when flag 16 is set).
    fn mb1_header(b: &mut Vec<u8>, at: usize, flags: u32, fields: &[u32]) {
        let checksum = 0u32.wrapping_sub(MB1_HEADER_MAGIC).wrapping_sub(flags);
        for (i, w) in [MB1_HEADER_MAGIC, flags, checksum].iter().chain(fields).enumerate() {
            put(b, at + 4 * i, &w.to_le_bytes());
        }
    }

    /// A flat "a.out kludge" kernel as the test guests are: loaded at 0x10_0000 from its
    /// first byte, header at 16, `len` bytes of file, bss up to 0x10_0000 + `bss_end`, entry
    /// 0x10_0040.
    fn aout(len: usize, bss_end: u32) -> Vec<u8> {
        let mut b = vec![0x90u8; len];
        let base = 0x10_0000u32;
        mb1_header(&mut b, 16, mb1_flags::ADDRESS_FIELDS | mb1_flags::PAGE_ALIGN, &[base + 16, base, base + len as u32, if bss_end == 0 { 0 } else { base + bss_end }, base + 0x40]);
        b
    }

    /// A minimal ELF executable (32- or 64-bit) with the given PT_LOAD segments (paddr,
    /// vaddr, file bytes, memsz), entry `entry`, program headers right after the ELF header,
    /// segment contents from 0x1000 on, in order.
    fn elf(wide: bool, entry: u64, segs: &[(u64, u64, usize, u64)]) -> Vec<u8> {
        let (ehsize, phsize) = if wide { (64usize, 56usize) } else { (52, 32) };
        let mut b = vec![0u8; 0x1000];
        put(&mut b, 0, &[0x7f, b'E', b'L', b'F', if wide { 2 } else { 1 }, 1, 1]);
        put(&mut b, 16, &2u16.to_le_bytes());
        put(&mut b, 18, &(if wide { 62u16 } else { 3 }).to_le_bytes());
        let mut data_at = 0x1000usize;
        let mut phs = Vec::new();
        for &(paddr, vaddr, filesz, memsz) in segs {
            phs.push((data_at, paddr, vaddr, filesz, memsz));
            data_at += filesz;
        }
        if wide {
            put(&mut b, 24, &entry.to_le_bytes());
            put(&mut b, 32, &(ehsize as u64).to_le_bytes());
            put(&mut b, 54, &(phsize as u16).to_le_bytes());
            put(&mut b, 56, &(segs.len() as u16).to_le_bytes());
        } else {
            put(&mut b, 24, &(entry as u32).to_le_bytes());
            put(&mut b, 28, &(ehsize as u32).to_le_bytes());
            put(&mut b, 42, &(phsize as u16).to_le_bytes());
            put(&mut b, 44, &(segs.len() as u16).to_le_bytes());
        }
        for (i, &(off, paddr, vaddr, filesz, memsz)) in phs.iter().enumerate() {
            let ph = ehsize + i * phsize;
            put(&mut b, ph, &1u32.to_le_bytes());
            if wide {
                for (o, v) in [(8, off as u64), (16, vaddr), (24, paddr), (32, filesz as u64), (40, memsz)] {
                    put(&mut b, ph + o, &v.to_le_bytes());
                }
            } else {
                for (o, v) in [(4, off as u64), (8, vaddr), (12, paddr), (16, filesz as u64), (20, memsz)] {
                    put(&mut b, ph + o, &(v as u32).to_le_bytes());
                }
            }
            let fill = 0xA0 + i as u8;
            put(&mut b, off, &vec![fill; filesz]);
        }
        b
    }

    fn map(mib: u64) -> MemoryMap {
        MemoryMap::new(mib * MIB).unwrap()
    }

    // ---- Multiboot 1 header (spec 3.1.1, 3.1.2) ----

    #[test]
    fn the_header_is_found_4_byte_aligned_within_the_first_8_kib() {
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x1ff8, mb1_flags::ADDRESS_FIELDS, &[0x10_1ff8, 0x10_0000, 0, 0, 0x10_0000]);
        assert!(parse(&b, Version::One).is_err_and(|e| e == MultibootError::HeaderTruncated { version: Version::One, offset: 0x1ff8 }), "address fields past 8 KiB");
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x2000, 0, &[]);
        assert_eq!(parse(&b, Version::One), Err(MultibootError::NoHeader { version: Version::One, searched: 8192 }), "at 8 KiB: too late");
        let mut b = vec![0u8; 4096];
        mb1_header(&mut b, 0x102, 0, &[]);
        assert_eq!(parse(&b, Version::One), Err(MultibootError::NoHeader { version: Version::One, searched: 8192 }), "not 4-byte aligned");
        let k = parse(&aout(0x3000, 0), Version::One).unwrap();
        assert_eq!((k.header_offset, k.layout, k.version), (16, Layout::AddressFields, Version::One));
    }

    #[test]
    fn magic_flags_and_checksum_must_sum_to_zero() {
        let mut b = aout(0x1000, 0);
        let c = rd32(&b, 24);
        put(&mut b, 24, &c.wrapping_add(1).to_le_bytes());
        assert_eq!(parse(&b, Version::One), Err(MultibootError::BadChecksum { version: Version::One, offset: 16 }));
    }

    #[test]
    fn requirements_in_bits_0_to_15_that_bastion_cannot_honour_refuse_the_kernel() {
        // Spec 3.1.2: bit 2 (video mode) needs a framebuffer; bit 3 is undefined. Bits 16-31
        // are optional features: an unknown one is ignored.
        for (flags, refused) in [(1 << 2, Some(1 << 2)), (1 << 3, Some(1 << 3)), (1 << 15 | 1, Some(1 << 15)), (1 << 17, None), (3, None)] {
            let mut b = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 16, 16)]);
            mb1_header(&mut b, 0x200, flags, &[]);
            match refused {
                Some(bits) => assert_eq!(parse(&b, Version::One), Err(MultibootError::UnsupportedFlags(bits)), "flags {flags:#x}"),
                None => assert!(parse(&b, Version::One).is_ok(), "flags {flags:#x}"),
            }
        }
    }

    // ---- The a.out kludge (spec 3.1.3) ----

    #[test]
    fn address_fields_load_from_header_addr_minus_load_addr_before_the_header() {
        let k = parse(&aout(0x3000, 0x8000), Version::One).unwrap();
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, offset: 0, file_len: 0x3000, mem_len: 0x8000 }]);
        assert_eq!(k.entry, 0x10_0040);
        // Loading starts 16 bytes before the header when header_addr - load_addr is 16, even
        // with the header further into the file.
        let mut b = vec![0u8; 0x2000];
        mb1_header(&mut b, 0x100, mb1_flags::ADDRESS_FIELDS, &[0x20_0010, 0x20_0000, 0x20_1000, 0, 0x20_0010]);
        let k = parse(&b, Version::One).unwrap();
        assert_eq!(k.segments, vec![Segment { gpa: 0x20_0000, offset: 0xf0, file_len: 0x1000, mem_len: 0x1000 }]);
    }

    #[test]
    fn load_end_addr_zero_means_the_rest_of_the_file_and_bss_end_addr_zero_no_bss() {
        let mut b = vec![0u8; 0x2345];
        mb1_header(&mut b, 0, mb1_flags::ADDRESS_FIELDS, &[0x10_0000, 0x10_0000, 0, 0, 0x10_0000]);
        let k = parse(&b, Version::One).unwrap();
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, offset: 0, file_len: 0x2345, mem_len: 0x2345 }]);
    }

    #[test]
    fn contradictory_address_fields_are_refused_with_the_reason() {
        let cases: [([u32; 5], &str); 5] = [
            ([0x10_0000, 0x10_0010, 0, 0, 0x10_0010], "load_addr above header_addr"),
            ([0x10_0100, 0x10_0000, 0, 0, 0x10_0100], "starts before the file (header at 16)"),
            ([0x10_0010, 0x10_0000, 0x10_0008, 0, 0x10_0000], "load_end_addr below header_addr"),
            ([0x10_0010, 0x10_0000, 0x10_1000, 0x10_0800, 0x10_0000], "bss_end_addr below the end"),
            ([0x10_0010, 0x10_0000, 0, 0, 0x30_0000], "entry outside"),
        ];
        for (fields, what) in cases {
            let mut b = vec![0u8; 0x2000];
            mb1_header(&mut b, 16, mb1_flags::ADDRESS_FIELDS, &fields);
            assert!(matches!(parse(&b, Version::One), Err(MultibootError::BadAddressFields(_) | MultibootError::EntryOutside(_))), "{what}");
        }
        let mut b = vec![0u8; 0x800];
        mb1_header(&mut b, 16, mb1_flags::ADDRESS_FIELDS, &[0x10_0010, 0x10_0000, 0x10_1000, 0, 0x10_0000]);
        assert_eq!(parse(&b, Version::One), Err(MultibootError::SegmentTruncated { index: 0, offset: 0, len: 0x1000, file_len: 0x800 }), "load_end_addr past the file");
    }

    // ---- ELF (spec 3.1.3: without flag 16 the image is ELF) ----

    #[test]
    fn elf32_segments_load_at_their_physical_addresses_with_bss_and_the_entry_translated() {
        // A higher-half kernel: linked at 0xC010_0000, loaded at 1 MiB; GRUB enters at the
        // physical address of e_entry.
        let mut b = elf(false, 0xC010_0010, &[(0x10_0000, 0xC010_0000, 0x100, 0x3000), (0x20_0000, 0xC020_0000, 0x20, 0x20)]);
        mb1_header(&mut b, 0x400, mb1_flags::PAGE_ALIGN, &[]);
        let k = parse(&b, Version::One).unwrap();
        assert_eq!(k.layout, Layout::Elf32);
        assert_eq!(k.entry, 0x10_0010);
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, offset: 0x1000, file_len: 0x100, mem_len: 0x3000 }, Segment { gpa: 0x20_0000, offset: 0x1100, file_len: 0x20, mem_len: 0x20 }]);
    }

    #[test]
    fn elf64_kernels_are_loaded_too() {
        let mut b = elf(true, 0xFFFF_FFFF_8010_0000, &[(0x10_0000, 0xFFFF_FFFF_8010_0000, 0x40, 0x40)]);
        mb1_header(&mut b, 0x400, 0, &[]);
        let k = parse(&b, Version::One).unwrap();
        assert_eq!((k.layout, k.entry), (Layout::Elf64, 0x10_0000));
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, offset: 0x1000, file_len: 0x40, mem_len: 0x40 }]);
    }

    #[test]
    fn malformed_elf_files_are_errors_never_panics() {
        let good = || {
            let mut b = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x10, 0x10)]);
            mb1_header(&mut b, 0x400, 0, &[]);
            b
        };
        let mut not_elf = good();
        not_elf[0] = 0;
        assert!(matches!(parse(&not_elf, Version::One), Err(MultibootError::BadElf(_))));
        let mut big_endian = good();
        big_endian[5] = 2;
        assert!(matches!(parse(&big_endian, Version::One), Err(MultibootError::BadElf(_))));
        let mut arm = good();
        arm[18] = 40;
        assert!(matches!(parse(&arm, Version::One), Err(MultibootError::BadElf(_))));
        let mut relocatable = good();
        relocatable[16] = 1;
        assert!(matches!(parse(&relocatable, Version::One), Err(MultibootError::BadElf(_))));
        let mut ph_past_end = good();
        put(&mut ph_past_end, 28, &0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(parse(&ph_past_end, Version::One), Err(MultibootError::BadElf(_))));
        let mut no_load = good();
        put(&mut no_load, 52, &4u32.to_le_bytes());
        assert_eq!(parse(&no_load, Version::One), Err(MultibootError::NothingToLoad));
        let mut seg_past_end = good();
        put(&mut seg_past_end, 52 + 16, &0x10_0000u32.to_le_bytes());
        put(&mut seg_past_end, 52 + 20, &0x10_0000u32.to_le_bytes());
        assert!(matches!(parse(&seg_past_end, Version::One), Err(MultibootError::SegmentTruncated { index: 0, .. })));
        let mut entry_elsewhere = good();
        put(&mut entry_elsewhere, 24, &0x50_0000u32.to_le_bytes());
        assert_eq!(parse(&entry_elsewhere, Version::One), Err(MultibootError::EntryOutside(0x50_0000)));
        // Every truncation of a valid kernel is an error, not a panic.
        let b = good();
        for len in 0..b.len() {
            assert!(parse(&b[..len], Version::One).is_err() || len > 0x1010, "{len}");
        }
    }

    /// Spec 3.1.1: the whole header lies within the first 8192 bytes: the 12 bytes of magic,
    /// flags and checksum, and with flag 16 the 20 bytes of address fields after them.
    #[test]
    fn every_header_field_used_must_lie_in_the_first_8_kib() {
        let truncated = |at| Err(MultibootError::HeaderTruncated { version: Version::One, offset: at });
        // Checksum at 0x2000..0x2004: past the area, though in the file.
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x1ff8, 0, &[]);
        assert_eq!(parse(&b, Version::One), truncated(0x1ff8));
        // Checksum ends at 0x2000 exactly: the header is there (and the image is no ELF).
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x1ff4, 0, &[]);
        assert!(matches!(parse(&b, Version::One), Err(MultibootError::BadElf(_))));
        // With address fields: 32 bytes from 0x1fe0 end at 0x2000 exactly; from 0x1fe4 they
        // would end 4 bytes past it.
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x1fe0, mb1_flags::ADDRESS_FIELDS, &[0x10_1fe0, 0x10_0000, 0, 0, 0x10_0000]);
        assert_eq!(parse(&b, Version::One).map(|k| k.header_offset), Ok(0x1fe0));
        let mut b = vec![0u8; 12 * 1024];
        mb1_header(&mut b, 0x1fe4, mb1_flags::ADDRESS_FIELDS, &[0x10_1fe4, 0x10_0000, 0, 0, 0x10_0000]);
        assert_eq!(parse(&b, Version::One), truncated(0x1fe4));
    }

    #[test]
    fn address_fields_edge_cases() {
        // load_end_addr 0 loads from the start offset to the end of the file: here the file
        // starts 16 bytes before the load address (header_addr - load_addr = 0).
        let mut b = vec![0u8; 0x1000];
        mb1_header(&mut b, 16, mb1_flags::ADDRESS_FIELDS, &[0x10_0000, 0x10_0000, 0, 0, 0x10_0000]);
        let k = parse(&b, Version::One).unwrap();
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, offset: 16, file_len: 0x1000 - 16, mem_len: 0x1000 - 16 }]);
        // load_end_addr may equal header_addr: the data ends where the header starts.
        let mut b = vec![0u8; 0x1000];
        mb1_header(&mut b, 0x100, mb1_flags::ADDRESS_FIELDS, &[0x10_0100, 0x10_0000, 0x10_0100, 0, 0x10_0000]);
        assert_eq!(parse(&b, Version::One).unwrap().segments[0].file_len, 0x100);
        // Nothing to load at all: refused, not entered.
        let mut b = vec![0u8; 0x1000];
        mb1_header(&mut b, 0, mb1_flags::ADDRESS_FIELDS, &[0x10_0000, 0x10_0000, 0x10_0000, 0, 0x10_0000]);
        assert_eq!(parse(&b, Version::One), Err(MultibootError::NothingToLoad));
        // The entry may be anywhere in the loaded range, bss included, but not at its end.
        let mut b = vec![0u8; 0x1000];
        mb1_header(&mut b, 0, mb1_flags::ADDRESS_FIELDS, &[0x10_0000, 0x10_0000, 0, 0x10_2000, 0x10_1fff]);
        assert_eq!(parse(&b, Version::One).unwrap().entry, 0x10_1fff);
        let mut b = vec![0u8; 0x1000];
        mb1_header(&mut b, 0, mb1_flags::ADDRESS_FIELDS, &[0x10_0000, 0x10_0000, 0, 0x10_2000, 0x10_2000]);
        assert_eq!(parse(&b, Version::One), Err(MultibootError::EntryOutside(0x10_2000)));
    }

    /// The ELF header's and program header table's bounds (ELF-64 Object File Format 3, 6).
    #[test]
    fn elf_headers_are_bounded_exactly() {
        let one = |wide| elf(wide, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x10, 0x10)]);
        // A file holding just the ELF header (52 bytes for ELF32) gets past the header check
        // and fails on the program header table; one byte less fails on the header.
        let b = one(false);
        assert_eq!(super::elf(&b[..52]), Err(MultibootError::BadElf("the program header table runs past the end of the file")));
        assert_eq!(super::elf(&b[..51]), Err(MultibootError::BadElf("the ELF header is truncated")));
        let b = one(true);
        assert_eq!(super::elf(&b[..64]), Err(MultibootError::BadElf("the program header table runs past the end of the file")));
        assert_eq!(super::elf(&b[..63]), Err(MultibootError::BadElf("the ELF header is truncated")));
        // e_phentsize below the 32-byte entry is refused; larger entries are stepped over.
        let mut small = one(false);
        put(&mut small, 42, &31u16.to_le_bytes());
        assert_eq!(super::elf(&small), Err(MultibootError::BadElf("program header entries are too small")));
        let mut large = one(false);
        put(&mut large, 42, &48u16.to_le_bytes());
        assert!(super::elf(&large).is_ok(), "48-byte entries");
        // 200 entries of 32 bytes from offset 52 end past the 4 KiB + 16 file.
        let mut many = one(false);
        put(&mut many, 44, &200u16.to_le_bytes());
        assert_eq!(super::elf(&many), Err(MultibootError::BadElf("the program header table runs past the end of the file")));
        // A table that ends exactly at the end of the file is whole.
        let mut at_end = one(false);
        let entry = at_end[52..84].to_vec();
        let phoff = at_end.len() as u32;
        at_end.extend_from_slice(&entry);
        put(&mut at_end, 28, &phoff.to_le_bytes());
        let (layout, segs, entry_pa) = super::elf(&at_end).unwrap();
        assert_eq!((layout, segs.len(), entry_pa), (Layout::Elf32, 1, 0x10_0000));
    }

    // ---- Placement and the Multiboot 1 information (spec 3.3) ----

    fn cstr_at(info: &[u8], base: u64, addr: u32) -> String {
        let at = (u64::from(addr) - base) as usize;
        let end = info[at..].iter().position(|&c| c == 0).unwrap();
        String::from_utf8(info[at..at + end].to_vec()).unwrap()
    }

    fn info_block(p: &Plan) -> &[u8] {
        p.writes.iter().find_map(|w| match w {
            Write::Bytes { gpa, bytes } if *gpa == u64::from(p.info) => Some(&bytes[..]),
            _ => None,
        }).unwrap()
    }

    #[test]
    fn the_information_follows_the_kernel_and_modules_follow_it_page_aligned_in_order() {
        let image = aout(0x3000, 0x8000);
        let k = parse(&image, Version::One).unwrap();
        let mods = [ModuleInput { len: 5000, cmdline: "first a=1" }, ModuleInput { len: 10, cmdline: "" }];
        let p = plan(&image, &k, "kernel -v", &mods, &map(16), None).unwrap();
        assert_eq!(p.info, 0x10_8000, "right after the bss");
        let info_len = info_block(&p).len() as u64;
        let first = (0x10_8000 + info_len).next_multiple_of(4096);
        assert_eq!(p.modules, vec![(first, first + 5000), (first + 8192, first + 8192 + 10)]);
        assert_eq!((p.entry, p.magic), (0x10_0040, MB1_BOOTLOADER_MAGIC));
        assert_eq!(
            p.writes.iter().filter(|w| !matches!(w, Write::Bytes { .. })).cloned().collect::<Vec<_>>(),
            vec![
                Write::Image { gpa: 0x10_0000, offset: 0, len: 0x3000 },
                Write::Zero { gpa: 0x10_3000, len: 0x5000 },
                Write::Module { index: 0, gpa: first, len: 5000 },
                Write::Module { index: 1, gpa: first + 8192, len: 10 },
            ]
        );
        assert!(p.writes.windows(2).all(|w| w[0].range().end() <= w[1].gpa()), "sorted and disjoint");
    }

    /// Writes carry bytes: a segment with nothing from the file gets only zeros, one without
    /// bss no zero write, an empty module no copy (but still its entry in the information).
    /// Segments may touch without overlapping.
    #[test]
    fn writes_are_only_made_for_bytes_that_exist() {
        let mut b = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x100), (0x10_0100, 0x10_0100, 0, 0x2000)]);
        mb1_header(&mut b, 0x400, 0, &[]);
        let k = parse(&b, Version::One).unwrap();
        let empty = [ModuleInput { len: 0, cmdline: "empty" }];
        let p = plan(&b, &k, "", &empty, &map(4), None).unwrap();
        let not_info: Vec<Write> = p.writes.iter().filter(|w| !matches!(w, Write::Bytes { .. })).cloned().collect();
        assert_eq!(not_info, vec![Write::Image { gpa: 0x10_0000, offset: 0x1000, len: 0x100 }, Write::Zero { gpa: 0x10_0100, len: 0x2000 }]);
        let (start, end) = p.modules[0];
        assert_eq!(end, start, "an empty module still has its place");
        let info = info_block(&p);
        assert_eq!(rd32(info, 20), 1, "and its entry");
    }

    /// Spec 3.3's structure, then the module table, the memory map and the strings, with
    /// nothing in between and nothing overlapping, with or without modules.
    #[test]
    fn the_mb1_information_block_is_packed_in_order() {
        let image = aout(0x3000, 0);
        let k = parse(&image, Version::One).unwrap();
        let e820 = map(16).e820().len();
        for mods in [&[][..], &[ModuleInput { len: 8, cmdline: "m" }][..]] {
            let p = plan(&image, &k, "ab", mods, &map(16), None).unwrap();
            let (base, info) = (u64::from(p.info), info_block(&p));
            let mods_at = 116 + base;
            let mmap_at = mods_at + 16 * mods.len() as u64;
            let strings_at = mmap_at + 24 * e820 as u64;
            assert_eq!((u64::from(rd32(info, 24)), u64::from(rd32(info, 48))), (mods_at, mmap_at), "{} modules", mods.len());
            assert_eq!(u64::from(rd32(info, 16)), strings_at, "the command line is the first string");
            // "ab\0", "Bastion\0", and each module's command line.
            let strings = 3 + 8 + mods.iter().map(|m| m.cmdline.len() + 1).sum::<usize>();
            assert_eq!(info.len() as u64, strings_at - base + strings as u64);
            assert_eq!((rd32(info, 0), rd32(info, 4)), (0x24d, 639), "flags and mem_lower intact");
        }
    }

    #[test]
    fn an_acpi_1_rsdp_gets_only_the_old_tag() {
        let image = mb2_elf(&[]);
        let k = parse(&image, Version::Two).unwrap();
        let rsdp: Vec<u8> = (0..20u8).collect();
        let p = plan(&image, &k, "", &[], &map(8), Some(&rsdp)).unwrap();
        let info = info_block(&p);
        let mut at = 8;
        let mut kinds = Vec::new();
        while at < info.len() {
            kinds.push(rd32(info, at));
            let size = rd32(info, at + 4) as usize;
            // Every tag holds at least its type and size (spec 3.6.2): the walk moves on.
            assert!(size >= 8, "tag {} of size {size}", rd32(info, at));
            at += size.next_multiple_of(8);
        }
        assert_eq!(kinds, vec![1, 2, 4, 6, 14, 0]);
    }

    #[test]
    fn the_mb1_information_describes_memory_cmdline_modules_mmap_and_loader() {
        let image = aout(0x3000, 0);
        let k = parse(&image, Version::One).unwrap();
        let mods = [ModuleInput { len: 100, cmdline: "mod1 x" }, ModuleInput { len: 200, cmdline: "mod2" }];
        let p = plan(&image, &k, "hello world", &mods, &map(32), None).unwrap();
        let (base, info) = (u64::from(p.info), info_block(&p));
        let flags = rd32(info, 0);
        // Bits 0 (mem_*), 2 (cmdline), 3 (mods), 6 (mmap), 9 (boot_loader_name).
        assert_eq!(flags, 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9);
        // mem_lower: KiB from 0 to the EBDA at 0x9FC00; mem_upper: KiB from 1 MiB to the end.
        assert_eq!((rd32(info, 4), rd32(info, 8)), (639, 31 * 1024));
        assert_eq!(cstr_at(info, base, rd32(info, 16)), "hello world");
        assert_eq!(rd32(info, 20), 2, "mods_count");
        let mods_at = (u64::from(rd32(info, 24)) - base) as usize;
        for (i, (want, cmd)) in p.modules.iter().zip(["mod1 x", "mod2"]).enumerate() {
            let e = mods_at + 16 * i;
            assert_eq!((u64::from(rd32(info, e)), u64::from(rd32(info, e + 4))), *want);
            assert_eq!(cstr_at(info, base, rd32(info, e + 8)), cmd);
        }
        assert_eq!(cstr_at(info, base, rd32(info, 64)), "Bastion");
        let (len, at) = (rd32(info, 44) as usize, (u64::from(rd32(info, 48)) - base) as usize);
        let e820 = map(32).e820();
        assert_eq!(len, 24 * e820.len());
        for (i, e) in e820.iter().enumerate() {
            let x = at + 24 * i;
            assert_eq!(rd32(info, x), 20, "size excludes itself");
            assert_eq!((rd64(info, x + 4), rd64(info, x + 12)), (e.addr, e.size));
            assert_eq!(rd32(info, x + 20), if e.kind == E820Kind::Ram { 1 } else { 2 });
        }
    }

    #[test]
    fn segments_must_be_in_ram_below_4_gib_and_must_not_overlap() {
        let outside = |segs: &[(u64, u64, usize, u64)], mib: u64| {
            let entry = segs[0].0;
            let mut b = elf(true, entry, segs);
            mb1_header(&mut b, 0x400, 0, &[]);
            let k = parse(&b, Version::One).unwrap();
            plan(&b, &k, "", &[], &map(mib), None)
        };
        assert!(matches!(outside(&[(0x10_0000, 0x10_0000, 16, 0x10_1000)], 2), Err(MultibootError::SegmentOutsideRam { index: 0, .. })), "past a 2 MiB guest's RAM");
        assert!(matches!(outside(&[(0xA_0000, 0xA_0000, 16, 16)], 16), Err(MultibootError::SegmentOutsideRam { .. })), "in the legacy area the e820 map reserves");
        assert!(matches!(outside(&[(0x9_F000, 0x9_F000, 16, 0x2000)], 16), Err(MultibootError::SegmentOutsideRam { .. })), "across the EBDA");
        assert!(matches!(outside(&[(0x10_0000, 0x10_0000, 16, 16), (0x1_0000_0000, 0x1_0000_0000, 16, 16)], 5 * 1024), Err(MultibootError::SegmentOutsideRam { index: 1, .. })), "above 4 GiB, though RAM");
        assert_eq!(outside(&[(0x10_0000, 0x10_0000, 16, 0x2000), (0x10_1000, 0x10_1000, 16, 16)], 16), Err(MultibootError::SegmentsOverlap { first: 0, second: 1 }));
        assert!(outside(&[(0x1000, 0x1000, 16, 16), (0x10_0000, 0x10_0000, 16, 16)], 16).is_ok(), "low memory is RAM too");
        assert!(
            matches!(outside(&[(0x10_0000, 0x10_0000, 16, 16), (u64::MAX - 0xfff, 0x20_0000, 16, 0x2000)], 16), Err(MultibootError::SegmentOutsideRam { index: 1, .. })),
            "an ELF64 segment whose end would wrap past 2^64"
        );
    }

    #[test]
    fn what_does_not_fit_is_named() {
        let image = aout(0x3000, 0);
        let k = parse(&image, Version::One).unwrap();
        let big = [ModuleInput { len: 2 * MIB as usize, cmdline: "" }];
        assert_eq!(plan(&image, &k, "", &big, &map(2), None), Err(MultibootError::NoRoomFor { what: "a module", len: 2 * MIB }));
        assert_eq!(plan(&image, &k, "a\0b", &[], &map(2), None), Err(MultibootError::CmdlineHasNul { what: "command line" }));
        let nul = [ModuleInput { len: 1, cmdline: "\0" }];
        assert_eq!(plan(&image, &k, "", &nul, &map(2), None), Err(MultibootError::CmdlineHasNul { what: "module command line" }));
        let other = aout(0x1000, 0);
        assert!(matches!(plan(&other, &k, "", &[], &map(16), None), Err(MultibootError::SegmentTruncated { .. })), "a plan for another image");
    }

    #[test]
    fn a_kernel_in_low_memory_gets_its_information_above_1_mib_when_low_memory_is_full() {
        // The kernel ends 1 KiB below the EBDA: the information cannot start in the reserved
        // legacy area and goes to the next RAM range, from 1 MiB.
        let mut b = elf(false, 0x9_0000, &[(0x9_0000, 0x9_0000, 16, 0xF800)]);
        mb1_header(&mut b, 0x400, 0, &[]);
        let k = parse(&b, Version::One).unwrap();
        let p = plan(&b, &k, "", &[], &map(4), None).unwrap();
        assert_eq!(p.info, 0x10_0000);
    }

    // ---- Multiboot 2 (spec 3.1, 3.6) ----

    /// A Multiboot 2 header at `at` with `tags` (type, flags, body), the end tag appended.
    fn mb2_header(b: &mut Vec<u8>, at: usize, arch: u32, tags: &[(u16, u16, Vec<u8>)]) {
        let mut t = Vec::new();
        for (kind, flags, body) in tags.iter().cloned().chain([(0u16, 0u16, Vec::new())]) {
            t.extend_from_slice(&kind.to_le_bytes());
            t.extend_from_slice(&flags.to_le_bytes());
            t.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            t.extend_from_slice(&body);
            t.resize(t.len().next_multiple_of(8), 0);
        }
        let len = 16 + t.len() as u32;
        let checksum = 0u32.wrapping_sub(MB2_HEADER_MAGIC).wrapping_sub(arch).wrapping_sub(len);
        for (i, w) in [MB2_HEADER_MAGIC, arch, len, checksum].iter().enumerate() {
            put(b, at + 4 * i, &w.to_le_bytes());
        }
        put(b, at + 16, &t);
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn mb2_elf(tags: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x1000)]);
        mb2_header(&mut b, 0x800, 0, tags);
        b
    }

    #[test]
    fn the_mb2_header_is_8_byte_aligned_in_the_first_32_kib_with_its_checksum() {
        let k = parse(&mb2_elf(&[]), Version::Two).unwrap();
        assert_eq!((k.header_offset, k.layout, k.entry), (0x800, Layout::Elf32, 0x10_0000));
        let mut b = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x1000)]);
        mb2_header(&mut b, 0x804, 0, &[]);
        assert_eq!(parse(&b, Version::Two), Err(MultibootError::NoHeader { version: Version::Two, searched: 32768 }), "4- but not 8-aligned");
        let mut bad = mb2_elf(&[]);
        bad[0x80c] ^= 1;
        assert_eq!(parse(&bad, Version::Two), Err(MultibootError::BadChecksum { version: Version::Two, offset: 0x800 }));
        let mut mips = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x1000)]);
        mb2_header(&mut mips, 0x800, 4, &[]);
        assert_eq!(parse(&mips, Version::Two), Err(MultibootError::UnsupportedArchitecture(4)));
        assert!(matches!(parse(&mb2_elf(&[])[..0x810], Version::Two), Err(MultibootError::HeaderTruncated { .. })), "header_length past the file");
        // A Multiboot 1 kernel is not a Multiboot 2 one, and the other way round.
        assert!(matches!(parse(&aout(0x1000, 0), Version::Two), Err(MultibootError::NoHeader { .. })));
        assert!(matches!(parse(&mb2_elf(&[]), Version::One), Err(MultibootError::NoHeader { .. })));
    }

    #[test]
    fn an_mb2_header_may_end_exactly_at_the_end_of_the_file() {
        use mb2_header_tag::*;
        let mut b = vec![0x90u8; 0x40];
        mb2_header(&mut b, 0x40, 0, &[(ADDRESS, 0, words(&[0x20_0040, u32::MAX, 0, 0])), (ENTRY_ADDRESS, 0, words(&[0x20_0000]))]);
        let k = parse(&b, Version::Two).unwrap();
        assert_eq!(k.segments, vec![Segment { gpa: 0x20_0000, offset: 0, file_len: b.len(), mem_len: b.len() as u64 }]);
        // header_length below the 24 bytes of fields and end tag: refused as truncated.
        let mut short = mb2_elf(&[]);
        let len = 16u32;
        let checksum = 0u32.wrapping_sub(MB2_HEADER_MAGIC).wrapping_sub(len);
        put(&mut short, 0x808, &len.to_le_bytes());
        put(&mut short, 0x80c, &checksum.to_le_bytes());
        assert_eq!(parse(&short, Version::Two), Err(MultibootError::HeaderTruncated { version: Version::Two, offset: 0x800 }));
    }

    #[test]
    fn required_tags_bastion_cannot_honour_refuse_the_kernel_and_optional_ones_do_not() {
        use mb2_header_tag::*;
        let fb = words(&[1024, 768, 32]);
        assert_eq!(parse(&mb2_elf(&[(FRAMEBUFFER, 0, fb.clone())]), Version::Two), Err(MultibootError::UnsupportedTag { tag: FRAMEBUFFER }));
        assert!(parse(&mb2_elf(&[(FRAMEBUFFER, OPTIONAL, fb)]), Version::Two).is_ok());
        assert_eq!(parse(&mb2_elf(&[(CONSOLE_FLAGS, 0, words(&[1]))]), Version::Two), Err(MultibootError::UnsupportedTag { tag: CONSOLE_FLAGS }), "an EGA console required");
        assert!(parse(&mb2_elf(&[(CONSOLE_FLAGS, 0, words(&[2]))]), Version::Two).is_ok(), "EGA text supported: not a requirement");
        assert_eq!(parse(&mb2_elf(&[(42, 0, words(&[0]))]), Version::Two), Err(MultibootError::UnsupportedTag { tag: 42 }));
        assert!(parse(&mb2_elf(&[(42, OPTIONAL, words(&[0]))]), Version::Two).is_ok());
        for ok in [MODULE_ALIGN, RELOCATABLE, EFI_BOOT_SERVICES] {
            assert!(parse(&mb2_elf(&[(ok, 0, words(&[0, 0, 0, 0]))]), Version::Two).is_ok(), "tag {ok}");
        }
        // Information requests: what Bastion provides, or optional.
        let k = parse(&mb2_elf(&[(INFORMATION_REQUEST, 0, words(&[1, 3, 6]))]), Version::Two).unwrap();
        assert_eq!(k.requested, vec![1, 3, 6]);
        assert_eq!(parse(&mb2_elf(&[(INFORMATION_REQUEST, 0, words(&[1, 8]))]), Version::Two), Err(MultibootError::UnsupportedRequest { info_type: 8 }), "framebuffer info");
        assert!(parse(&mb2_elf(&[(INFORMATION_REQUEST, OPTIONAL, words(&[8]))]), Version::Two).is_ok());
    }

    #[test]
    fn a_tag_too_small_or_past_the_header_is_refused() {
        let mut b = mb2_elf(&[(mb2_header_tag::ENTRY_ADDRESS, 0, words(&[0x10_0000]))]);
        // Shrink the entry tag's size to 4 (below its 8-byte tag header); fix the checksum
        // (the size field is not part of it).
        put(&mut b, 0x814, &4u32.to_le_bytes());
        assert_eq!(parse(&b, Version::Two), Err(MultibootError::BadTag { tag: mb2_header_tag::ENTRY_ADDRESS, size: 4 }));
        let mut b = mb2_elf(&[(mb2_header_tag::ENTRY_ADDRESS, 0, words(&[0x10_0000]))]);
        put(&mut b, 0x814, &0x1000u32.to_le_bytes());
        assert!(matches!(parse(&b, Version::Two), Err(MultibootError::BadTag { .. })));
    }

    #[test]
    fn the_entry_tag_overrides_the_elf_entry_and_the_address_tag_replaces_elf() {
        use mb2_header_tag::*;
        let k = parse(&mb2_elf(&[(ENTRY_ADDRESS, 0, words(&[0x10_0080]))]), Version::Two).unwrap();
        assert_eq!(k.entry, 0x10_0080);
        // Address tag: header_addr, load_addr (-1: from the file's start), load_end, bss_end.
        let mut b = vec![0u8; 0x3000];
        mb2_header(&mut b, 0x40, 0, &[(ADDRESS, 0, words(&[0x20_0040, u32::MAX, 0, 0x20_4000])), (ENTRY_ADDRESS, 0, words(&[0x20_0100]))]);
        let k = parse(&b, Version::Two).unwrap();
        assert_eq!(k.layout, Layout::AddressFields);
        assert_eq!(k.segments, vec![Segment { gpa: 0x20_0000, offset: 0, file_len: 0x3000, mem_len: 0x4000 }]);
        assert_eq!(k.entry, 0x20_0100);
        let mut no_entry = vec![0u8; 0x3000];
        mb2_header(&mut no_entry, 0x40, 0, &[(ADDRESS, 0, words(&[0x20_0040, u32::MAX, 0, 0]))]);
        assert!(matches!(parse(&no_entry, Version::Two), Err(MultibootError::BadAddressFields(_))));
    }

    #[test]
    fn the_mb2_information_is_a_tag_list_with_modules_memory_mmap_and_acpi() {
        let image = mb2_elf(&[]);
        let k = parse(&image, Version::Two).unwrap();
        let mods = [ModuleInput { len: 300, cmdline: "one" }, ModuleInput { len: 7, cmdline: "two 2" }];
        let rsdp: Vec<u8> = (0..36u8).collect();
        let p = plan(&image, &k, "root=x", &mods, &map(8), Some(&rsdp)).unwrap();
        assert_eq!(p.magic, MB2_BOOTLOADER_MAGIC);
        assert_eq!(p.info % 8, 0, "8-byte aligned (spec 3.6.1)");
        let info = info_block(&p);
        assert_eq!(rd32(info, 0) as usize, info.len(), "total_size");
        assert_eq!(rd32(info, 4), 0, "reserved");
        let mut at = 8;
        let mut seen = Vec::new();
        loop {
            assert_eq!(at % 8, 0);
            let (kind, size) = (rd32(info, at), rd32(info, at + 4) as usize);
            assert!(size >= 8, "tag {kind} of size {size}");
            let body = &info[at + 8..at + size];
            let text = |b: &[u8]| String::from_utf8(b[..b.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap();
            match kind {
                1 => assert_eq!(text(body), "root=x"),
                2 => assert_eq!(text(body), "Bastion"),
                3 => {
                    let i = seen.iter().filter(|&&k| k == 3).count();
                    assert_eq!((u64::from(rd32(body, 0)), u64::from(rd32(body, 4))), p.modules[i]);
                    assert_eq!(text(&body[8..]), ["one", "two 2"][i]);
                }
                4 => assert_eq!((rd32(body, 0), rd32(body, 4)), (639, 7 * 1024)),
                6 => {
                    assert_eq!((rd32(body, 0), rd32(body, 4)), (24, 0), "entry_size, entry_version");
                    let e820 = map(8).e820();
                    assert_eq!(body.len(), 8 + 24 * e820.len());
                    for (i, e) in e820.iter().enumerate() {
                        let x = 8 + 24 * i;
                        assert_eq!((rd64(body, x), rd64(body, x + 8), rd32(body, x + 16)), (e.addr, e.size, if e.kind == E820Kind::Ram { 1 } else { 2 }));
                    }
                }
                14 => assert_eq!(body, &rsdp[..20]),
                15 => assert_eq!(body, &rsdp[..]),
                0 => {
                    assert_eq!(size, 8);
                    assert_eq!(at + 8, info.len(), "the end tag is last");
                    break;
                }
                other => panic!("unexpected tag {other}"),
            }
            seen.push(kind);
            at += size.next_multiple_of(8);
        }
        assert_eq!(seen, vec![1, 2, 3, 3, 4, 6, 14, 15]);
    }
}
