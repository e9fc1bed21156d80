//! Emulated MMIO: a guest access to a registered MMIO range is a nested page fault (EPT
//! violation on VMX, NPF on SVM) that Bastion decodes, emulates against the device model and
//! completes, and an access to the rest of the MMIO hole (0xC000_0000..4 GiB) reads all ones
//! and drops writes. The `mmio` guest checks the I/O APIC at 0xFEC0_0000 and the floating bus
//! through every instruction form it knows (MOV of every size and form, MOVZX/MOVSX, XCHG,
//! group-1 and register ALU forms, CMP/TEST flags, PUSH/POP m64, STOS/MOVS/LODS with REP and
//! both directions); `hypervisor/guests/src/bin/mmio.rs` lists the rules and forms.

use bastion_core::exit::ExitStatus;
use qemu_tests::guests::{config_entry, image_with_guests};
use qemu_tests::{Emulator, Platform, RunOptions};
use std::time::Duration;

fn timeout(p: Platform) -> Duration {
    if p.is_qemu() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(480)
    }
}

/// The fewest checks the guest runs (it has more; this catches a guest that stopped
/// printing checks early yet still exited with 0).
const MIN_CHECKS: usize = 150;

fn mmio_guest_passes(p: Platform) {
    let cfg = format!("[hypervisor]\nexit_when_idle = true\n{}", config_entry("mmio", "mmio", ""));
    let img = image_with_guests(&format!("mmio-{}", p.name()), &cfg, &["mmio"]);
    let mut emu = Emulator::start(p, &img, &RunOptions::default());
    let out = emu.expect_exit(timeout(p)).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();

    // Every check passed, and the summary line agrees.
    let fails: Vec<&str> = text.lines().filter(|l| l.contains("mmio: FAIL")).collect();
    assert!(fails.is_empty(), "failed checks:\n{}\n--- console:\n{text}", fails.join("\n"));
    let passed = text.lines().filter(|l| l.contains("[mmio] mmio: PASS ")).count();
    assert!(passed >= MIN_CHECKS, "only {passed} checks passed (expected at least {MIN_CHECKS}):\n{text}");
    let summary = format!("[mmio] mmio: {passed} passed, 0 failed");
    assert!(text.lines().any(|l| l.contains(&summary)), "no `{summary}` line:\n{text}");

    // The guest ended through its test exit, with pass, and was stopped for nothing else.
    let stops: Vec<&str> = text.lines().filter(|l| l.contains("guest mmio: stopped:")).collect();
    assert_eq!(stops.len(), 1, "{text}");
    assert!(stops[0].contains("stopped: test exit: PASS"), "{}\n--- console:\n{text}", stops[0]);
    assert!(!text.contains("BASTION CRASH"), "{text}");
    assert_eq!(out.status, ExitStatus::Pass, "{text}");
}

#[test]
fn mmio_guest_passes_under_svm_on_qemu() {
    mmio_guest_passes(Platform::QemuBios);
}

#[test]
fn mmio_guest_passes_under_vmx_on_bochs_intel() {
    mmio_guest_passes(Platform::BochsIntel);
}

#[test]
fn mmio_guest_passes_under_svm_on_bochs_amd() {
    mmio_guest_passes(Platform::BochsAmd);
}
