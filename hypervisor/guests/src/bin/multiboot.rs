//! Test guest `multiboot`: loaded as a Multiboot 1 kernel (the header and entry every test
//! guest has, boot.s), it prints what the boot loader told it, for the test to compare with
//! the guest's config: the magic in EAX, the boot loader's name, the command line, lower and
//! upper memory, the memory map and each module's command line and contents.
//!
//! Output (`<...>` are figures; strings in brackets, as given):
//! `multiboot: magic 0x2badb002`, `multiboot: loader [<name>]`, `multiboot: cmdline [<s>]`,
//! `multiboot: memory lower <n> KiB upper <n> KiB`, `multiboot: mmap <n> entries, <n> KiB
//! available`, `multiboot: modules <n>`, then per module `multiboot: module <i> cmdline [<s>]
//! <n> bytes [<contents>]` (contents as text, up to 64 bytes). Exit code 0; 1 (with a FAIL
//! line) if it was not started by a Multiboot loader or the information lacks a field.
#![no_std]
#![no_main]

use test_guests::boot::MULTIBOOT_MAGIC;
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

fn main() -> u32 {
    let (magic, info) = test_guests::boot::multiboot_registers();
    say!("magic {magic:#x}");
    say!("information at {info:#x}");
    if magic != MULTIBOOT_MAGIC {
        say!("FAIL not started by a Multiboot loader (EAX {magic:#x}, expected {MULTIBOOT_MAGIC:#x})");
        return 1;
    }
    let info = u64::from(info);
    let flags = read32(info);
    for (bit, what) in [(FLAG_MEMORY, "mem_lower/mem_upper"), (FLAG_CMDLINE, "cmdline"), (FLAG_MODULES, "mods"), (FLAG_MMAP, "mmap"), (FLAG_LOADER_NAME, "boot_loader_name")] {
        if flags & bit == 0 {
            say!("FAIL the boot information has no {what} (flags {flags:#x})");
            return 1;
        }
    }
    say!("loader [{}]", cstr(read32(info + 64)));
    say!("cmdline [{}]", cstr(read32(info + 16)));
    say!("memory lower {} KiB upper {} KiB", read32(info + 4), read32(info + 8));
    // Memory map entries: `size` (not counting itself), base, length, type (1 = available).
    let (len, at) = (u64::from(read32(info + 44)), u64::from(read32(info + 48)));
    let (mut entries, mut available, mut off) = (0, 0, 0);
    while off < len {
        let size = u64::from(read32(at + off));
        if read32(at + off + 20) == 1 {
            available += read64(at + off + 12);
        }
        entries += 1;
        off += size + 4;
    }
    say!("mmap {entries} entries, {} KiB available", available / 1024);
    let (count, mods) = (read32(info + 20), u64::from(read32(info + 24)));
    say!("modules {count}");
    for i in 0..u64::from(count.min(16)) {
        let e = mods + 16 * i;
        let (start, end) = (read32(e), read32(e + 4));
        let n = end.saturating_sub(start) as usize;
        // SAFETY: the module's bytes as the loader placed them (at most 64 read).
        let bytes = unsafe { core::slice::from_raw_parts(start as usize as *const u8, n.min(64)) };
        let text = core::str::from_utf8(bytes).unwrap_or("<not UTF-8>");
        say!("module {i} cmdline [{}] {n} bytes [{text}]", cstr(read32(e + 8)));
    }
    0
}
