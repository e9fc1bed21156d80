//! A guest that resets its machine through the keyboard controller (as Linux's `reboot=k`
//! does) is restarted by default, and stopped with `on_reboot = "stop"`; either way the other
//! guests go on.

use qemu_tests::guests::{config_entry, image_with_guests};
use qemu_tests::{Emulator, Platform, RunOptions};
use std::time::Duration;

fn reboot(p: Platform) {
    let cfg = format!(
        "[hypervisor]\nexit_when_idle = true\n{}{}",
        config_entry("again", "reboot", ""),
        config_entry("once", "reboot", "on_reboot = \"stop\"\n")
    );
    let img = image_with_guests(&format!("reboot-{}", p.name()), &cfg, &["reboot"]);
    let mut emu = Emulator::start(p, &img, &RunOptions::SMP2);
    let t = Duration::from_secs(300);
    emu.expect("guest once: stopped: rebooted by the guest (keyboard controller reset)", t).unwrap_or_else(|e| panic!("{e}"));
    // The default guest comes back each time: three boots prove the restart repeats.
    emu.expect_count("[again] reboot: booted, 8042 self-test 0x55", 3, t).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();
    assert_eq!(text.matches("[once] reboot: booted, 8042 self-test 0x55").count(), 1, "{text}");
    assert!(!text.contains("still running after the reset pulse"), "{text}");
    assert!(text.contains("guest again: starting") && text.contains("boot 3"), "{text}");
}

#[test]
fn a_guest_reboot_restarts_or_stops_it_on_qemu() {
    reboot(Platform::QemuBios);
}

#[test]
fn a_guest_reboot_restarts_or_stops_it_on_bochs_intel() {
    reboot(Platform::BochsIntel);
}
