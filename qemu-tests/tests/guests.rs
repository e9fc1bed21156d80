//! Test guests built from this repository run under VMX (Bochs Intel) and SVM (QEMU TCG and
//! Bochs AMD) with the same expectations: one Bastion image runs all five guests in turn, and
//! each guest's outcome is checked from the console. The backend is chosen by Bastion at run
//! time; the image is the same on every platform.

use bastion_core::exit::ExitStatus;
use qemu_tests::guests::{guest_image, GUESTS};

/// The guests of this test: the first five, which all end by themselves (the others run
/// forever and are exercised by `multi.rs`).
const ISSUE3_GUESTS: &[&str] = {
    let (first, _) = GUESTS.split_at(5);
    first
};
use qemu_tests::{image_with_files, run_image_emulator, Platform, RunOptions};

fn config() -> String {
    let mut c = String::from("[hypervisor]\nexit_when_idle = true\n");
    for g in ISSUE3_GUESTS {
        c.push_str(&format!("\n[[guest]]\nname = \"{g}\"\nkernel = \"guests/{g}.bin\"\nmemory_mib = 4\n"));
    }
    c
}

fn run_all(platform: Platform) {
    let paths: Vec<(String, std::path::PathBuf)> = ISSUE3_GUESTS.iter().map(|g| (format!("guests/{g}.bin"), guest_image(g))).collect();
    let files: Vec<(&str, &std::path::Path)> = paths.iter().map(|(d, p)| (d.as_str(), p.as_path())).collect();
    let image = image_with_files(&format!("guests-{}", platform.name()), &config(), &files);
    let (emu, outcome) = run_image_emulator(platform, &image, &RunOptions::default());
    let out = emu.transcript();
    // Bastion itself survives every guest, including the one it had to stop.
    assert_eq!(outcome.status, ExitStatus::Pass, "{out}");
    let stopped = |g: &str| {
        out.lines()
            .find(|l| l.contains(&format!("guest {g}: stopped:")))
            .unwrap_or_else(|| panic!("guest {g} never stopped:\n{out}"))
            .to_string()
    };
    let has = |needle: &str| assert!(out.contains(needle), "missing `{needle}`:\n{out}");

    // (a) real mode -> protected mode -> long mode, printing at each step.
    has("[modes] modes: real mode");
    has("[modes] modes: protected mode");
    has("[modes] modes: long mode");
    assert!(stopped("modes").contains("test exit: PASS"), "{out}");

    // (b) CPUID, MSR and hypercall answers, checked by the guest itself.
    assert!(!out.lines().any(|l| l.starts_with("[checks]") && l.contains("FAIL")), "{out}");
    let summary = out.lines().find(|l| l.starts_with("[checks] checks:") && l.contains("passed")).unwrap_or_else(|| panic!("{out}"));
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    let s = stopped("checks");
    assert!(s.contains("test exit: PASS"), "{s}");
    // The HLT-free guest still exercised every intercept it checks.
    for kind in ["cpuid", "msr", "hypercall", "io"] {
        assert!(s.contains(&format!(" {kind} ")), "no {kind} exits counted: {s}");
    }

    // (c) reading past the end of RAM stops that guest, with guest, vCPU, RIP, exit, address.
    has("[overrun] overrun: reading 0x40000000");
    assert!(!out.contains("[overrun] overrun: FAIL"), "{out}");
    let s = stopped("overrun");
    assert!(s.contains("read guest-physical 0x40000000, which is neither RAM nor a device"), "{s}");
    assert!(s.contains("vCPU 0, RIP 0x") && s.contains("npf 1"), "{s}");

    // (d) VMX/SVM instructions raise #UD; CR4.VMXE raises #GP.
    for insn in ["VMXON", "VMRUN", "VMLOAD", "VMSAVE"] {
        assert!(out.lines().any(|l| l.starts_with("[vmx-ud] vmx-ud: PASS") && l.contains(insn)), "no PASS for {insn}:\n{out}");
    }
    assert!(!out.lines().any(|l| l.starts_with("[vmx-ud]") && l.contains("FAIL")), "{out}");
    assert!(stopped("vmx-ud").contains("test exit: PASS"), "{out}");

    // HLT with interrupts disabled ends the guest; Bastion reports it.
    has("[halt] halt: halting with interrupts disabled");
    let s = stopped("halt");
    assert!(s.contains("halted with interrupts disabled") && s.contains("hlt 1"), "{s}");

    // Figures for the notes: wall time of each guest, from its start line to its stop line.
    for g in ISSUE3_GUESTS {
        let (a, b) = (emu.time_of(&format!("guest {g}: starting")), emu.time_of(&format!("guest {g}: stopped")));
        if let (Some(a), Some(b)) = (a, b) {
            eprintln!("[{}] guest {g}: {:.0} ms; {}", platform.name(), (b - a).as_secs_f64() * 1000.0, stopped(g).split("; ").nth(1).unwrap_or(""));
        }
    }
}

#[test]
fn guests_under_svm_on_qemu() {
    run_all(Platform::QemuBios);
}

#[test]
fn guests_under_vmx_on_bochs_intel() {
    run_all(Platform::BochsIntel);
}

#[test]
fn guests_under_svm_on_bochs_amd() {
    run_all(Platform::BochsAmd);
}
