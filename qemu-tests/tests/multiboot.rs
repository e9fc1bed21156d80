//! Multiboot kernels (issue "SMP guests and multiboot kernels"): the `multiboot` test guest,
//! loaded with `format = "multiboot"` (Multiboot 1, its header's address fields), starts in
//! 32-bit protected mode with EAX = 0x2BADB002 and EBX = the boot information (Multiboot spec
//! 3.2) and sees its command line and two modules exactly as the config gives them, its
//! memory as the guest's e820 map says, and "Bastion" as the boot loader (spec 3.3). The same
//! file given as `multiboot2` has no Multiboot 2 header: that guest is refused by name while
//! the other runs.

use bastion_core::exit::ExitStatus;
use qemu_tests::guests::guest_image;
use qemu_tests::{image_with_bundle, Emulator, Platform, RunOptions};

const CMDLINE: &str = "hello multiboot world --x=1";
const MODULES: [(&str, &str, Option<&str>); 2] = [("mods/alpha.txt", "first module, A", Some("alpha one")), ("mods/beta.txt", "beta!", None)];

fn multiboot_guest_sees_its_boot_information(p: Platform) {
    let mut cfg = format!(
        "[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"mb\"\nformat = \"multiboot\"\nkernel = \"guests/multiboot.bin\"\nmemory_mib = 4\ncmdline = \"{CMDLINE}\"\nmodules = ["
    );
    for (i, (path, _, cmdline)) in MODULES.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        match cmdline {
            Some(c) => cfg += &format!("{sep}{{ path = \"{path}\", cmdline = \"{c}\" }}"),
            None => cfg += &format!("{sep}{{ path = \"{path}\" }}"),
        }
    }
    cfg += "]\n\n[[guest]]\nname = \"mbtwo\"\nformat = \"multiboot2\"\nkernel = \"guests/multiboot.bin\"\nmemory_mib = 4\n";
    let kernel = std::fs::read(guest_image("multiboot")).unwrap();
    // Packed without `boot`'s validation, which would refuse the multiboot2 guest: the
    // hypervisor must refuse it itself.
    let mut files: Vec<(&str, &[u8])> = vec![("bastion.toml", cfg.as_bytes()), ("guests/multiboot.bin", &kernel)];
    files.extend(MODULES.iter().map(|(path, body, _)| (*path, body.as_bytes())));
    let bundle = boot::pack(&files).unwrap();
    let img = image_with_bundle(&format!("multiboot-{}", p.name()), &bundle);
    let mut emu = Emulator::start(p, &img, &RunOptions::default());
    let out = emu.expect_exit(p.boot_timeout() * 2).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();
    let has = |line: &str| assert!(text.lines().any(|l| l.contains(line)), "no `{line}`:\n{text}");
    has("[mb] multiboot: magic 0x2badb002");
    has("[mb] multiboot: loader [Bastion]");
    has(&format!("[mb] multiboot: cmdline [{CMDLINE}]"));
    // 4 MiB: 639 KiB below the EBDA at 0x9FC00, 3 MiB from 1 MiB; the e820 map has those
    // two RAM ranges and the reserved legacy area between them.
    has("[mb] multiboot: memory lower 639 KiB upper 3072 KiB");
    has("[mb] multiboot: mmap 3 entries, 3711 KiB available");
    has("[mb] multiboot: modules 2");
    for (i, (_, body, cmdline)) in MODULES.iter().enumerate() {
        has(&format!("[mb] multiboot: module {i} cmdline [{}] {} bytes [{body}]", cmdline.unwrap_or(""), body.len()));
    }
    has("guest mb: stopped: test exit: PASS");
    has("guest mbtwo: cannot start: multiboot: no Multiboot2 header");
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(out.status, ExitStatus::Pass, "{text}");
}

#[test]
fn multiboot_guest_sees_its_boot_information_under_svm_on_qemu() {
    multiboot_guest_sees_its_boot_information(Platform::QemuBios);
}

#[test]
fn multiboot_guest_sees_its_boot_information_under_vmx_on_bochs_intel() {
    multiboot_guest_sees_its_boot_information(Platform::BochsIntel);
}
