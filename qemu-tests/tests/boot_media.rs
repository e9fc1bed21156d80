//! Boot media (issue "Boot media and fleets"): the image a user writes to a USB stick boots
//! from QEMU's xHCI controller as a USB mass-storage device, with SeaBIOS (BIOS image) and
//! with OVMF (UEFI image), each firmware's own USB driver reading the bootloader and the
//! bundle; the PXE folder boots over the network from QEMU's built-in DHCP and TFTP server
//! with OVMF's network stack (UEFI) and through PXELINUX and MEMDISK (BIOS); the built-in
//! default config then runs and its demo guest answers input.
//!
//! Each test prints the time from QEMU's start to the first guest line (the USB tests also
//! boot the same image as a disk, for comparison; timing is not asserted).

use qemu_tests::guests::image_with_guests;
use qemu_tests::{workspace_root, Emulator, Platform, RunOptions};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Medium {
    Disk,
    Usb,
    Pxe,
}

/// Boots the default config from `medium`; its first guest, `echo`, answers a byte typed for
/// it. Returns the time to the first guest line.
fn default_demo_answers(p: Platform, medium: Medium) -> Duration {
    let cfg = std::fs::read_to_string(workspace_root().join("boot/configs/default.toml")).unwrap();
    let what = match medium {
        Medium::Disk => "a disk",
        Medium::Usb => "a USB stick",
        Medium::Pxe => "the network (PXE)",
    };
    let name = format!("media-{}-{}", p.name(), what.rsplit(' ').next().unwrap().trim_matches(|c| c == '(' || c == ')'));
    let img = image_with_guests(&name, &cfg, &["echo", "irqecho", "busy"]);
    let opts = RunOptions { interactive: true, usb: medium == Medium::Usb, pxe: medium == Medium::Pxe, ..RunOptions::SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let t = p.boot_timeout() * 2;
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(emu.expect("==== boot complete ====", t));
    ok(emu.expect("input focus: echo", t));
    let first = emu.time_of("[echo] ").or_else(|| emu.time_of("[irqecho] "));
    emu.send(b"u");
    ok(emu.expect("[echo] echo: got u", t));
    let first = first.or_else(|| emu.time_of("[echo] ")).expect("a guest line");
    let out = emu.transcript();
    assert!(out.contains("bundle: ") && !out.contains("BASTION CRASH"), "{out}");
    eprintln!("boot media: {} from {what}: first guest line {:.1} s after QEMU started", p.name(), first.as_secs_f64());
    first
}

#[test]
fn the_bios_image_boots_from_a_usb_stick() {
    default_demo_answers(Platform::QemuBios, Medium::Usb);
    default_demo_answers(Platform::QemuBios, Medium::Disk);
}

#[test]
fn the_uefi_image_boots_from_a_usb_stick() {
    default_demo_answers(Platform::QemuUefi, Medium::Usb);
    default_demo_answers(Platform::QemuUefi, Medium::Disk);
}

#[test]
fn uefi_boots_over_the_network_from_qemus_tftp_server() {
    default_demo_answers(Platform::QemuUefi, Medium::Pxe);
}

/// BIOS over the network: QEMU's iPXE ROM loads PXELINUX, which loads MEMDISK with the BIOS
/// image; MEMDISK serves it as a hard disk through INT 13h — copying with INT 15h AH=87h,
/// which leaves its own GDT loaded — and the bootloader's stage 2 boots from it, reloading its
/// GDT before its far jump to protected mode (`boot::stage2`; without that fix this run
/// triple-faults in stage 2 and QEMU ends with no output).
#[test]
fn bios_boots_over_the_network_through_pxelinux_and_memdisk() {
    default_demo_answers(Platform::QemuBios, Medium::Pxe);
}
