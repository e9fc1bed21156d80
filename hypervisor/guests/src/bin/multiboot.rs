//! Test guest `multiboot`: loaded as a Multiboot 1 or Multiboot 2 kernel (every test guest
//! has both headers and one entry, boot.s), it prints what the boot loader told it, for the
//! test to compare with the guest's config: the magic in EAX, the boot loader's name, the
//! command line, lower and upper memory, the memory map and each module's command line and
//! contents. The lines are the same for both versions: only where each reads them differs
//! (Multiboot spec 3.3, a fixed structure with flags; Multiboot 2 spec 3.6, a list of tags).
//!
//! Output (`<...>` are figures; strings in brackets, as given):
//! `multiboot: magic <0x2badb002 or 0x36d76289>`, `multiboot: loader [<name>]`,
//! `multiboot: cmdline [<s>]`, `multiboot: memory lower <n> KiB upper <n> KiB`,
//! `multiboot: mmap <n> entries, <n> KiB available`, `multiboot: modules <n>`, then per
//! module `multiboot: module <i> cmdline [<s>] <n> bytes [<contents>]` (contents as text, up
//! to 64 bytes). Exit code 0; 1 (with a FAIL line) if it was not started by a Multiboot
//! loader or the information lacks a field.
#![no_std]
#![no_main]

use test_guests::boot::{MULTIBOOT2_MAGIC, MULTIBOOT_MAGIC};
use test_guests::say;

test_guests::guest!(name = "multiboot", main = main);

/// Multiboot spec 3.3: the information structure's flags and field offsets.
const FLAG_MEMORY: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODULES: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_LOADER_NAME: u32 = 1 << 9;

fn read32(addr: u64) -> u32 {
    // SAFETY: the boot code identity-maps the first 4 GiB; the loader's information lies in
    // RAM (an address outside it reads whatever the hypervisor answers, never faults).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn read64(addr: u64) -> u64 {
    u64::from(read32(addr)) | u64::from(read32(addr + 4)) << 32
}

/// The NUL-terminated string at `addr` (at most 200 bytes), lossily as text.
fn cstr(addr: u32) -> &'static str {
    let p = addr as usize as *const u8;
    let mut len = 0;
    // SAFETY: as for read32; the scan stops at 200 bytes.
    while len < 200 && unsafe { p.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes from `p` were just read.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    core::str::from_utf8(bytes).unwrap_or("<not UTF-8>")
}

/// What the boot information says, whichever version gave it; `None` where it said nothing.
#[derive(Default)]
struct Info {
    loader: Option<u32>,
    cmdline: Option<u32>,
    /// mem_lower, mem_upper (KiB).
    memory: Option<(u32, u32)>,
    /// (address, length, size of each entry or 0 for Multiboot 1's self-sized entries).
    mmap: Option<(u64, u64, u64)>,
    modules: Modules,
}

/// The modules: Multiboot 1's array of 16-byte entries, or up to 16 Multiboot 2 module tags.
#[derive(Default)]
struct Modules {
    count: u32,
    /// (mod_start, mod_end, string address) of each.
    each: [(u32, u32, u32); 16],
}

/// Multiboot spec 3.3: a fixed structure whose flags say which fields are valid.
fn read_mb1(info: u64) -> Info {
    let flags = read32(info);
    let has = |bit: u32| flags & bit != 0;
    let mut out = Info::default();
    out.loader = has(FLAG_LOADER_NAME).then(|| read32(info + 64));
    out.cmdline = has(FLAG_CMDLINE).then(|| read32(info + 16));
    out.memory = has(FLAG_MEMORY).then(|| (read32(info + 4), read32(info + 8)));
    // Memory map entries: `size` (not counting itself), base, length, type (1 = available).
    out.mmap = has(FLAG_MMAP).then(|| (u64::from(read32(info + 48)), u64::from(read32(info + 44)), 0));
    if has(FLAG_MODULES) {
        let (count, mods) = (read32(info + 20), u64::from(read32(info + 24)));
        out.modules.count = count;
        for (i, m) in out.modules.each.iter_mut().enumerate().take(count as usize) {
            let e = mods + 16 * i as u64;
            *m = (read32(e), read32(e + 4), read32(e + 8));
        }
    }
    out
}

/// Multiboot 2 spec 3.6: a list of tags ([`test_guests::boot::multiboot2_tags`]).
fn read_mb2(info: u64) -> Info {
    let mut out = Info::default();
    for (kind, at, size) in test_guests::boot::multiboot2_tags(info) {
        match kind {
            1 => out.cmdline = Some(at as u32 + 8),
            2 => out.loader = Some(at as u32 + 8),
            3 => {
                let n = out.modules.count as usize;
                if n < out.modules.each.len() {
                    out.modules.each[n] = (read32(at + 8), read32(at + 12), at as u32 + 16);
                }
                out.modules.count += 1;
            }
            4 => out.memory = Some((read32(at + 8), read32(at + 12))),
            // entry_size, entry_version, then entries: base, length, type, reserved.
            6 => out.mmap = Some((at + 16, size.saturating_sub(16), u64::from(read32(at + 8)))),
            _ => {}
        }
        if size < 8 {
            say!("FAIL tag type {kind} at {at:#x} has size {size}");
        }
    }
    out
}

fn main() -> u32 {
    let (magic, info) = test_guests::boot::multiboot_registers();
    say!("magic {magic:#x}");
    say!("information at {info:#x}");
    let info = match magic {
        MULTIBOOT_MAGIC => read_mb1(u64::from(info)),
        MULTIBOOT2_MAGIC if info % 8 == 0 => read_mb2(u64::from(info)),
        MULTIBOOT2_MAGIC => {
            say!("FAIL the Multiboot 2 information at {info:#x} is not 8-byte aligned (spec 3.2)");
            return 1;
        }
        _ => {
            say!("FAIL not started by a Multiboot loader (EAX {magic:#x}, expected {MULTIBOOT_MAGIC:#x} or {MULTIBOOT2_MAGIC:#x})");
            return 1;
        }
    };
    let (Some(loader), Some(cmdline), Some((lower, upper)), Some((map, map_len, entry_size))) = (info.loader, info.cmdline, info.memory, info.mmap) else {
        say!("FAIL the boot information lacks the boot loader name, cmdline, memory sizes or memory map");
        return 1;
    };
    say!("loader [{}]", cstr(loader));
    say!("cmdline [{}]", cstr(cmdline));
    say!("memory lower {lower} KiB upper {upper} KiB");
    let (mut entries, mut available, mut off) = (0, 0, 0);
    while off < map_len {
        // Multiboot 1 entries start with their size (not counting itself); Multiboot 2's
        // all have the tag's entry_size and start with the base.
        let (entry, next) = if entry_size == 0 { (map + off + 4, u64::from(read32(map + off)) + 4) } else { (map + off, entry_size) };
        if read32(entry + 16) == 1 {
            available += read64(entry + 8);
        }
        entries += 1;
        off += next.max(1);
    }
    say!("mmap {entries} entries, {} KiB available", available / 1024);
    say!("modules {}", info.modules.count);
    for (i, &(start, end, string)) in info.modules.each.iter().enumerate().take(info.modules.count as usize) {
        let n = end.saturating_sub(start) as usize;
        // SAFETY: the module's bytes as the loader placed them (at most 64 read).
        let bytes = unsafe { core::slice::from_raw_parts(start as usize as *const u8, n.min(64)) };
        let text = core::str::from_utf8(bytes).unwrap_or("<not UTF-8>");
        say!("module {i} cmdline [{}] {n} bytes [{text}]", cstr(string));
    }
    0
}
