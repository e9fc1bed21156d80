//! The Multiboot 1 and 2 loaders (Multiboot Specification 0.6.96 section 3.1; Multiboot2
//! Specification 1.0 section 3.1): any image, with a header's magic and checksum planted at an
//! offset the input picks when it asks, any command line, modules and memory size. Rules
//! checked: never a panic; an accepted kernel's writes lie inside guest RAM, sorted, without
//! overlap, their bytes taken from the inputs; a refusal is an error with a message.
#![no_main]
use bastion_core::loader::prepare;
use bastion_core_fuzz::{check_prepared, guest_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let ctrl: u8 = u.arbitrary().unwrap_or(0xff);
    let two = ctrl & 0x20 != 0;
    let memory_mib = u.int_in_range(1..=512u32).unwrap_or(16);
    let cmd_len = u.int_in_range(0..=64usize).unwrap_or(0);
    let cmdline = String::from_utf8_lossy(u.bytes(cmd_len).unwrap_or(&[])).into_owned();
    let count = u.int_in_range(0..=3usize).unwrap_or(0);
    let mut modules = Vec::new();
    for _ in 0..count {
        let len = u.int_in_range(0..=2048usize).unwrap_or(0);
        modules.push(u.bytes(len).unwrap_or(&[]).to_vec());
    }
    let at = u.int_in_range(0..=1023usize).unwrap_or(0) * 8;
    let mut image = u.take_rest().to_vec();
    if ctrl & 1 != 0 {
        if image.len() < at + 48 {
            image.resize(at + 48, 0);
        }
        let w = |image: &mut Vec<u8>, off: usize, v: u32| image[at + off..at + off + 4].copy_from_slice(&v.to_le_bytes());
        let r = |image: &Vec<u8>, off: usize| u32::from_le_bytes(image[at + off..at + off + 4].try_into().unwrap());
        if two {
            // magic, architecture 0 (i386), header_length, checksum: the four sum to 0 mod 2^32.
            w(&mut image, 0, 0xe852_50d6);
            w(&mut image, 4, 0);
            let len = r(&image, 8);
            w(&mut image, 12, 0u32.wrapping_sub(0xe852_50d6u32.wrapping_add(len)));
        } else {
            // magic, flags, checksum: the three sum to 0 mod 2^32.
            w(&mut image, 0, 0x1bad_b002);
            let flags = r(&image, 4);
            w(&mut image, 8, 0u32.wrapping_sub(0x1bad_b002u32.wrapping_add(flags)));
        }
    }
    let mut extra = String::new();
    if count > 0 {
        extra += "modules = [";
        for i in 0..count {
            extra += &format!("{{ path = \"m{i}\", cmdline = \"mod {i}\" }}, ");
        }
        extra += "]\n";
    }
    let Some(cfg) = guest_config(if two { "multiboot2" } else { "multiboot" }, memory_mib, &cmdline, &extra) else { return };
    let mods: Vec<&[u8]> = modules.iter().map(|m| &m[..]).collect();
    match prepare(&cfg, &image, None, &mods) {
        Ok(p) => check_prepared(&p, memory_mib, &image, None, &mods),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
