//! Bastion boots to its banner on every platform and reports what the hardware offers.

use bastion_core::exit::ExitStatus;
use qemu_tests::{boot_to_exit, Platform, RunOptions};

/// A run that prints the banner and ends by itself.
const EXIT_WHEN_IDLE: &str = "[hypervisor]\nexit_when_idle = true\n";

fn banner(name: &str, platform: Platform, opts: &RunOptions) -> String {
    let (out, outcome) = boot_to_exit(name, platform, EXIT_WHEN_IDLE, opts);
    assert_eq!(outcome.status, ExitStatus::Pass, "{out}");
    for needle in ["==== Bastion", "cpu:", "cpus:", "memory:", "virt:", "bundle: 1 files", "==== boot complete ===="] {
        assert!(out.contains(needle), "banner lacks `{needle}`:\n{out}");
    }
    assert!(!out.contains("cannot run guests"), "{out}");
    out
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.contains(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line:\n{out}"))
}

fn assert_svm_npt(out: &str) {
    let virt = line(out, "virt:");
    assert!(virt.contains("AMD-V (SVM)") && virt.contains("NPT: yes"), "{virt}");
}

#[test]
fn qemu_bios_banner_shows_svm_with_npt() {
    let out = banner("qemu-bios", Platform::QemuBios, &RunOptions::default());
    assert_svm_npt(&out);
    // Usable RAM is reported and plausible for -m 256.
    let mem = line(&out, "memory:");
    let mib: u64 = mem.split("memory:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!((200..=256).contains(&mib), "{mem}");
}

#[test]
fn qemu_uefi_banner_shows_svm_with_npt() {
    let out = banner("qemu-uefi", Platform::QemuUefi, &RunOptions::default());
    assert_svm_npt(&out);
}

#[test]
fn bochs_intel_banner_shows_vmx_with_ept_vpid_unrestricted_guest() {
    let out = banner("bochs-intel", Platform::BochsIntel, &RunOptions::default());
    let virt = line(&out, "virt:");
    assert!(virt.contains("Intel VT-x (VMX)"), "{virt}");
    assert!(virt.contains("EPT [4-level WB"), "{virt}");
    assert!(virt.contains("VPID"), "{virt}");
    assert!(virt.contains("unrestricted guest: yes"), "{virt}");
    assert!(virt.contains("preemption timer: TSC/"), "{virt}");
}

#[test]
fn bochs_amd_banner_shows_svm_with_npt_and_nrip() {
    let out = banner("bochs-amd", Platform::BochsAmd, &RunOptions::default());
    assert_svm_npt(&out);
    assert!(line(&out, "virt:").contains("nRIP save: yes"), "{out}");
}

#[test]
fn qemu_smp4_lists_four_cpus_from_acpi() {
    let out = banner("qemu-smp4", Platform::QemuBios, &RunOptions { smp: 4, ..RunOptions::default() });
    assert!(line(&out, "cpus:").contains("4 CPUs (ACPI MADT), 4 online"), "{out}");
    for cpu in 1..4 {
        assert!(out.contains(&format!("smp: CPU {cpu} online")), "CPU {cpu} did not start:\n{out}");
    }
}

#[test]
fn bochs_intel_smp2_starts_the_second_cpu() {
    let out = banner("bochs-smp2", Platform::BochsIntel, &RunOptions { smp: 2, ..RunOptions::default() });
    assert!(line(&out, "cpus:").contains("2 CPUs (ACPI MADT), 2 online"), "{out}");
}
