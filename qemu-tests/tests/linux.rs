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
    // The ACPI tables Bastion built are Linux's: it found the RSDP, the PM timer and \_S5.
    assert!(text.contains("[tux] [") && text.contains("ACPI: PM-Timer IO Port: 0x608"), "{text}");
    // `poweroff -f` goes straight to the kernel's power-off: ACPI S5 through PM1a_CNT stops
    // the guest (on_poweroff = "stop", the default) and nothing else.
    let mark = emu.mark();
    emu.send(b"poweroff -f\r");
    emu.expect_after(mark, "guest tux: stopped: powered off by the guest (ACPI S5)", Duration::from_secs(120)).unwrap_or_else(fail);
    // The console moved the input focus to the next guest that takes input, which still runs.
    emu.expect_after(mark, "tux no longer takes input; input focus: echo", Duration::from_secs(30)).unwrap_or_else(fail);
    emu.send(b"z");
    emu.expect_after(mark, "[echo] echo: got z", Duration::from_secs(30)).unwrap_or_else(fail);
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

/// Two Linux guests and the echo guest side by side (QEMU-SVM): Ctrl-A x3 reaches each shell,
/// the monitor lists them and shows their exit counts, `reset` reboots one (its shell comes
/// back), and `kill` frees their memory: once every guest is killed Bastion has exactly the
/// memory it had before any guest started.
#[test]
fn two_linux_guests_share_the_console_and_obey_the_monitor() {
    let Some((kernel, initrd)) = linux_kit() else { return };
    let cfg = format!("[hypervisor]\nexit_when_idle = true\n{}{}{}", linux_entry("tux1", ""), linux_entry("tux2", ""), config_entry("echo", "echo", ""));
    let echo = guest_image("echo");
    let files = [("linux/vmlinuz", kernel.as_path()), ("linux/initramfs.cpio.gz", initrd.as_path()), ("guests/echo.bin", echo.as_path())];
    let img = image_with_files("linux-monitor", &cfg, &files);
    let opts = RunOptions { memory_mib: 512, interactive: true, ..RunOptions::SMP2 };
    let mut emu = Emulator::start(Platform::QemuBios, &img, &opts);
    let t = Duration::from_secs(300);
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(emu.expect("[tux1] Enter 'help' for a list of built-in commands.", t));
    ok(emu.expect("[tux2] Enter 'help' for a list of built-in commands.", t));
    // Focus: tux1 first; Ctrl-A x3 moves it to tux2, whose shell computes the answer.
    let m = emu.mark();
    emu.send(b"\x01\x01\x01");
    ok(emu.expect_after(m, "input focus: tux2", t));
    emu.send(b"echo two-$((1+1))\r");
    ok(emu.expect_after(m, "[tux2] two-2", t));
    assert_eq!(emu.count("[tux1] two-2"), 0, "only the focused guest sees input:\n{}", emu.transcript());
    // tux2 -> echo -> monitor.
    let m = emu.mark();
    emu.send(b"\x01\x01\x01\x01\x01\x01");
    ok(emu.expect_after(m, "input focus: monitor", t));
    emu.send(b"list\r");
    for name in ["tux1 ", "tux2 "] {
        let row = ok(emu.expect_after(m, name, t));
        assert!(row.contains("running") && row.contains("128"), "{row}");
    }
    let m = emu.mark();
    emu.send(b"stats tux1\r");
    ok(emu.expect_after(m, "io", t));
    // Reset reboots tux1 (a fresh VM from its image) while tux2 keeps running.
    let m = emu.mark();
    emu.send(b"reset tux1\r");
    ok(emu.expect_after(m, "guest tux1: stopped: reset from the monitor", t));
    ok(emu.expect_after(m, "guest tux1: starting (128 MiB RAM", t));
    ok(emu.expect_after(m, "[tux1] bastion-linux: ready", t));
    assert!(!emu.transcript().contains("guest tux2: stopped"), "{}", emu.transcript());
    let m = emu.mark();
    emu.send(b"kill tux1\r");
    ok(emu.expect_after(m, "guest tux1: stopped: killed from the monitor", t));
    emu.send(b"kill tux2\r");
    ok(emu.expect_after(m, "guest tux2: stopped: killed from the monitor", t));
    emu.send(b"kill echo\r");
    let outcome = emu.expect_exit(t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, bastion_core::exit::ExitStatus::Pass);
    let out = emu.transcript();
    let kib = |l: &str| l.split(" KiB free").next().and_then(|x| x.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok());
    let before = out.lines().find(|l| l.contains("KiB free before any guest starts")).and_then(kib).unwrap_or_else(|| panic!("{out}"));
    let after = out.lines().filter(|l| l.contains("stopped:") && l.contains("KiB free")).last().and_then(kib).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(after, before, "memory leaked by stopped guests:\n{out}");
}
