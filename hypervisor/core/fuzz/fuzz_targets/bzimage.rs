//! The bzImage loader (Linux boot protocol, Documentation/arch/x86/boot.rst): any image, with
//! its header's magic numbers planted when the input asks (so the fuzzer reaches the planning
//! code instead of stopping at the boot flag), any command line, initrd and memory size.
//! Rules checked: never a panic; an accepted image's writes each lie inside guest RAM, sorted,
//! without overlap, their bytes taken from the inputs (`check_prepared`); a refusal is an
//! error that names what is wrong.
#![no_main]
use bastion_core::loader::prepare;
use bastion_core_fuzz::{check_prepared, guest_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let ctrl: u8 = u.arbitrary().unwrap_or(0xff);
    let memory_mib = u.int_in_range(1..=4096u32).unwrap_or(64);
    let cmd_len = u.int_in_range(0..=64usize).unwrap_or(0);
    let cmdline = String::from_utf8_lossy(u.bytes(cmd_len).unwrap_or(&[])).into_owned();
    let initrd_len = u.int_in_range(0..=4096usize).unwrap_or(0);
    let initrd = u.bytes(initrd_len).unwrap_or(&[]).to_vec();
    let with_initrd = ctrl & 0x10 != 0;
    let mut image = u.take_rest().to_vec();
    if ctrl & 1 != 0 {
        // The setup header's fixed fields (boot.rst, "The Real-Mode Kernel Header").
        if image.len() < 0x268 {
            image.resize(0x268, 0);
        }
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x200..0x202].copy_from_slice(&[0xeb, 0x66]);
        image[0x202..0x206].copy_from_slice(b"HdrS");
        if ctrl & 2 != 0 {
            image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
            image[0x211] |= 1;
            image[0x236] |= 1;
        }
        if ctrl & 4 != 0 {
            image[0x1f1] = 4;
            let need = 5 * 512 + 16;
            if image.len() < need {
                image.resize(need, 0x90);
            }
            let syssize = ((image.len() - 5 * 512) / 16) as u32;
            image[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        }
    }
    let extra = if with_initrd { "initrd = \"i\"\n" } else { "" };
    let Some(cfg) = guest_config("bzimage", memory_mib, &cmdline, extra) else { return };
    let initrd = with_initrd.then_some(&initrd[..]);
    match prepare(&cfg, &image, initrd, &[]) {
        Ok(p) => check_prepared(&p, memory_mib, &image, initrd, &[]),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
