//! Failures end cleanly: a hypervisor fault prints a crash report and a failure status; a
//! corrupt or incomplete bundle prints a clear error.

use bastion_core::exit::ExitStatus;
use qemu_tests::{boot_to_exit, image_with_bundle, run_image, Platform, RunOptions};

fn crash(name: &str, platform: Platform, kind: &str) -> String {
    let cfg = format!("[debug]\ncrash = \"{kind}\"\n");
    let (out, outcome) = boot_to_exit(name, platform, &cfg, &RunOptions::default());
    assert_eq!(outcome.status, ExitStatus::Fail, "{out}");
    out
}

/// The report has every register, on one CPU, then the failure line.
fn assert_full_report(out: &str, mnemonic: &str, vector: u32) {
    let head = format!("BASTION CRASH on CPU 0: {mnemonic}");
    assert!(out.contains(&head), "no `{head}`:\n{out}");
    assert!(out.contains(&format!("(vector {vector})")), "{out}");
    for reg in ["RIP 0x", "RSP 0x", "CR2 0x", "CR3 0x", "RAX 0x", "RBX 0x", "RCX 0x", "RDX 0x", "RSI 0x", "RDI 0x", "RBP 0x", "R8  0x", "R15 0x", "RFLAGS 0x"] {
        assert!(out.contains(reg), "report lacks {reg}:\n{out}");
    }
    let exit = out.lines().find(|l| l.contains("BASTION EXIT:")).unwrap();
    assert!(exit.contains(&format!("FAIL (CPU exception {mnemonic} at RIP 0x")), "{exit}");
}

#[test]
fn page_fault_prints_crash_report_with_cr2_and_fails() {
    let out = crash("crash-pf", Platform::QemuBios, "page-fault");
    assert_full_report(&out, "#PF", 14);
    let cr2 = format!("CR2 {:#018x}", bastion_core::config::CRASH_PAGE_FAULT_ADDRESS);
    assert!(out.contains(&cr2), "no `{cr2}`:\n{out}");
    assert!(out.contains("[read of a not-present page]"), "{out}");
}

#[test]
fn invalid_opcode_on_bochs_intel_ends_with_failure() {
    let out = crash("crash-ud-bochs", Platform::BochsIntel, "invalid-opcode");
    assert_full_report(&out, "#UD", 6);
}

#[test]
fn general_protection_on_uefi_ends_with_failure() {
    let out = crash("crash-gp-uefi", Platform::QemuUefi, "general-protection");
    assert_full_report(&out, "#GP", 13);
}

#[test]
fn divide_error_on_bochs_amd_ends_with_failure() {
    let out = crash("crash-de-bochs", Platform::BochsAmd, "divide-error");
    assert_full_report(&out, "#DE", 0);
}

#[test]
fn panic_prints_message_and_fails() {
    let out = crash("crash-panic", Platform::QemuBios, "panic");
    assert!(out.contains("BASTION PANIC on CPU 0") && out.contains("deliberate panic requested by [debug] crash"), "{out}");
    assert!(out.contains("BASTION EXIT: FAIL (hypervisor panic)"), "{out}");
}

#[test]
fn corrupt_bundle_prints_clear_error() {
    let mut bundle = boot::pack(&[("bastion.toml", b"[hypervisor]\n")]).unwrap();
    bundle[0] ^= 0x20; // the first header's name changes, its checksum no longer matches
    let image = image_with_bundle("corrupt-bundle", &bundle);
    let (out, outcome) = run_image(Platform::QemuBios, &image, &RunOptions::default());
    assert_eq!(outcome.status, ExitStatus::Fail, "{out}");
    assert!(out.contains("bundle: boot bundle is corrupt: header at block 0 has an invalid checksum"), "{out}");
}

#[test]
fn bundle_without_config_is_named() {
    let bundle = boot::pack(&[("readme.txt", b"hello")]).unwrap();
    let image = image_with_bundle("no-config", &bundle);
    let (out, outcome) = run_image(Platform::QemuBios, &image, &RunOptions::default());
    assert_eq!(outcome.status, ExitStatus::Fail, "{out}");
    assert!(out.contains("boot bundle has no file `bastion.toml`"), "{out}");
}

#[test]
fn invalid_config_in_bundle_names_file_line_and_field() {
    // Packed without `boot`'s validation, as a hand-made bundle would be.
    let bundle = boot::pack(&[("bastion.toml", b"[hypervisor]\nlog_level = \"loud\"\n")]).unwrap();
    let image = image_with_bundle("bad-config", &bundle);
    let (out, outcome) = run_image(Platform::QemuBios, &image, &RunOptions::default());
    assert_eq!(outcome.status, ExitStatus::Fail, "{out}");
    let err = out.lines().find(|l| l.contains("config: bastion.toml:2:")).unwrap_or_else(|| panic!("{out}"));
    assert!(err.contains("hypervisor.log_level") && err.contains("loud"), "{err}");
}
