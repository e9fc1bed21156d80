//! Debian's unmodified cloud kernel boots to its busybox shell inside Bastion, next to a test
//! guest, on AMD-V (QEMU) and VT-x (Bochs): loaded by the boot protocol's 64-bit entry
//! (`format = "bzimage"`), talking to the virtual 16550 with interrupts, keeping time with
//! kvm-clock; the shell answers what is typed on the console.

use qemu_tests::guests::{config_entry, guest_image};
use qemu_tests::{image_with_files, linux_kit, Emulator, Platform, RunOptions};
use std::time::Duration;

/// The command line: the console on the virtual UART; no PCI (there is none); the crypto
/// self-tests skipped (they cost ~10 s under Bochs, ../shared/notes/linux-guest.md);
/// `reboot=k` so a reboot goes through the 8042; `panic=-1` so a panic reboots at once.
pub const CMDLINE: &str = "console=ttyS0 pci=off 8250.nr_uarts=1 reboot=k panic=-1 cryptomgr.notests=1";

fn linux_entry(name: &str, extra: &str) -> String {
    format!("\n[[guest]]\nname = \"{name}\"\nformat = \"bzimage\"\nkernel = \"linux/vmlinuz\"\ninitrd = \"linux/initramfs.cpio.gz\"\nmemory_mib = 128\ncmdline = \"{CMDLINE}\"\n{extra}")
}

fn boots_to_a_shell(p: Platform, timeout: Duration) {
    let Some((kernel, initrd)) = linux_kit() else { return };
    let cfg = format!("[hypervisor]\n{}{}", linux_entry("tux", ""), config_entry("echo", "echo", ""));
    let echo = guest_image("echo");
    let files = [("linux/vmlinuz", kernel.as_path()), ("linux/initramfs.cpio.gz", initrd.as_path()), ("guests/echo.bin", echo.as_path())];
    let img = image_with_files(&format!("linux-{}", p.name()), &cfg, &files);
    let opts = RunOptions { memory_mib: 512, interactive: true, ..RunOptions::SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let fail = |e| panic!("{e}");
    emu.expect("[tux] bastion-linux: ready", timeout).unwrap_or_else(fail);
    emu.expect("[tux] Enter 'help' for a list of built-in commands.", Duration::from_secs(60)).unwrap_or_else(fail);
    // The console's focus starts on the first guest: what is typed reaches Linux's shell
    // through the UART's receive interrupt, and the answer (computed, so not an echo of
    // the input) comes back tagged.
    let mark = emu.mark();
    emu.send(b"echo linux-says-$((6*7)); cat /proc/uptime\r");
    emu.expect_after(mark, "[tux] linux-says-42", Duration::from_secs(60)).unwrap_or_else(fail);
    // Wall-clock milestones, for the record (not asserted: emulator speed varies).
    for m in ["Bastion 0.1.0 starting", "guest tux: starting", "[tux] bastion-linux: ready", "[tux] linux-says-42"] {
        eprintln!("{}: {m:?} at {:.1} s", p.name(), emu.time_of(m).map_or(f64::NAN, |d| d.as_secs_f64()));
    }
    let text = emu.transcript();
    assert!(text.contains("guest tux: starting (128 MiB RAM, 1 vCPU") && text.contains("64-bit mode at 0x1000200"), "{text}");
    assert!(text.contains("[tux] ") && text.contains("clocksource: Switched to clocksource kvm-clock"), "kvm-clock is Linux's clock: {text}");
    assert!(text.contains("serial8250: ttyS0 at I/O 0x3f8 (irq = 4"), "{text}");
    assert!(!text.contains("Kernel panic") && !text.contains("guest tux: stopped"), "{text}");
    emu.kill();
}

#[test]
fn debian_linux_boots_to_a_shell_on_qemu_svm() {
    boots_to_a_shell(Platform::QemuBios, Duration::from_secs(180));
}

#[test]
fn debian_linux_boots_to_a_shell_on_bochs_intel() {
    boots_to_a_shell(Platform::BochsIntel, Duration::from_secs(600));
}
