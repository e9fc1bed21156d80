//! Several guests at once on 2 CPUs, on QEMU (SVM) and Bochs (VMX): progress under the
//! scheduler, a guest spinning with interrupts off, crashes with on_crash = stop and restart,
//! a config with a bad guest, input focus, echo and the monitor, and interrupt-driven input.

use qemu_tests::guests::{config_entry, guest_image, image_with_guests};
use qemu_tests::{image_with_bundle, Emulator, Platform, RunOptions};
use std::time::Duration;

const SMP2: RunOptions = RunOptions::SMP2;

fn timeout(p: Platform) -> Duration {
    if p.is_qemu() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(300)
    }
}

/// 4 guests, 6 vCPUs on 2 CPUs; one guest spins with interrupts disabled on CPU 0, pinned
/// there together with a busy guest that must still make progress.
fn four_guests_make_progress(p: Platform) {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n");
    cfg += &config_entry("wide", "busy", "vcpus = 2\n");
    cfg += &config_entry("wide2", "busy", "vcpus = 2\n");
    cfg += &config_entry("pinned", "busy", "affinity = [0]\n");
    cfg += &config_entry("hog", "irqoff", "affinity = [0]\n");
    let img = image_with_guests(&format!("progress-{}", p.name()), &cfg, &["busy", "irqoff"]);
    let mut emu = Emulator::start(p, &img, &SMP2);
    let t = timeout(p);
    emu.expect("2 CPUs (ACPI MADT), 2 online", t).unwrap_or_else(|e| panic!("{e}"));
    emu.expect("[hog] irqoff: spinning with interrupts disabled", t).unwrap_or_else(|e| panic!("{e}"));
    // Every busy vCPU ticks at least 3 times while the hog spins: they all run at once.
    for (g, v) in [("wide", 0), ("wide", 1), ("wide2", 0), ("wide2", 1), ("pinned", 0)] {
        emu.expect(&format!("[{g}] busy: vcpu {v} tick 3"), t).unwrap_or_else(|e| panic!("{e}"));
    }
    // The pinned guest shares CPU 0 with the hog and still moves on after the hog started.
    let hog = emu.mark();
    emu.expect_after(hog, "[pinned] busy: vcpu 0 tick", t).unwrap_or_else(|e| panic!("{e}"));
    let out = emu.transcript();
    assert!(!out.contains("BASTION CRASH") && !out.contains("PANIC"), "{out}");
}

#[test]
fn four_guests_six_vcpus_progress_on_qemu_smp2() {
    four_guests_make_progress(Platform::QemuBios);
}

#[test]
fn four_guests_six_vcpus_progress_on_bochs_intel_smp2() {
    four_guests_make_progress(Platform::BochsIntel);
}

/// A crashing guest is stopped (on_crash = stop) or restarted (restart) while others run.
fn crashes_are_contained(p: Platform) {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n");
    cfg += &config_entry("stays-down", "crash", "");
    cfg += &config_entry("comes-back", "crash", "on_crash = \"restart\"\n");
    cfg += &config_entry("bystander", "busy", "");
    let img = image_with_guests(&format!("crash-{}", p.name()), &cfg, &["busy", "crash"]);
    let mut emu = Emulator::start(p, &img, &SMP2);
    let t = timeout(p);
    let stopped = emu.expect("guest stays-down: stopped:", t).unwrap_or_else(|e| panic!("{e}"));
    assert!(stopped.contains("triple fault"), "{stopped}");
    emu.expect("guest comes-back: restarting", t).unwrap_or_else(|e| panic!("{e}"));
    emu.expect_count("[comes-back] crash: booted", 2, t).unwrap_or_else(|e| panic!("{e}"));
    let after = emu.mark();
    emu.expect_after(after, "[bystander] busy: vcpu 0 tick", t).unwrap_or_else(|e| panic!("{e}"));
    let out = emu.transcript();
    assert_eq!(emu.count("[stays-down] crash: booted"), 1, "on_crash = stop must not restart:\n{out}");
    assert!(!out.contains("BASTION EXIT: FAIL") && !out.contains("BASTION CRASH"), "{out}");
}

#[test]
fn crashing_guest_is_stopped_or_restarted_on_qemu_smp2() {
    crashes_are_contained(Platform::QemuBios);
}

#[test]
fn crashing_guest_is_stopped_or_restarted_on_bochs_intel_smp2() {
    crashes_are_contained(Platform::BochsIntel);
}

/// A config with one bad guest (packed by hand: `boot` would refuse it) boots the others and
/// prints the error with file, line and field.
fn bad_guest_is_refused(p: Platform) {
    let cfg = "[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"broken\"\nkernel = \"guests/busy.bin\"\nmemory_mib = 1\n\n[[guest]]\nname = \"fine\"\nkernel = \"guests/busy.bin\"\nmemory_mib = 4\n";
    let busy = std::fs::read(guest_image("busy")).unwrap();
    let bundle = boot::pack(&[("bastion.toml", cfg.as_bytes()), ("guests/busy.bin", &busy)]).unwrap();
    let img = image_with_bundle(&format!("badguest-{}", p.name()), &bundle);
    let mut emu = Emulator::start(p, &img, &SMP2);
    let t = timeout(p);
    let err = emu.expect("config: bastion.toml:7:", t).unwrap_or_else(|e| panic!("{e}"));
    assert!(err.contains("guest[0].memory_mib") && err.contains("out of range"), "{err}");
    emu.expect("[fine] busy: vcpu 0 tick 2", t).unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.transcript().contains("guest broken: starting"), "{}", emu.transcript());
}

#[test]
fn config_with_a_bad_guest_boots_the_others_on_qemu_smp2() {
    bad_guest_is_refused(Platform::QemuBios);
}

#[test]
fn config_with_a_bad_guest_boots_the_others_on_bochs_intel_smp2() {
    bad_guest_is_refused(Platform::BochsIntel);
}

/// Ctrl-A three times moves the input focus; typed bytes reach only the focused guest; the
/// monitor lists, pauses, resumes, resets and kills.
fn console_focus_echo_and_monitor(p: Platform) {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n");
    cfg += &config_entry("left", "echo", "");
    cfg += &config_entry("right", "echo", "");
    let img = image_with_guests(&format!("console-{}", p.name()), &cfg, &["echo"]);
    let opts = RunOptions { interactive: true, ..SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let t = timeout(p);
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(emu.expect("[left] echo: ready", t));
    ok(emu.expect("[right] echo: ready", t));
    ok(emu.expect("input focus: left", t));

    // Typed input goes to the focused guest only.
    let m = emu.mark();
    emu.send(b"a");
    ok(emu.expect_after(m, "[left] echo: got a", t));
    // Two Ctrl-As and a letter are not a switch: all three bytes reach the guest.
    let m = emu.mark();
    emu.send(b"\x01\x01z");
    ok(emu.expect_after(m, "[left] echo: got z", t));
    assert_eq!(emu.count("[left] echo: got \\x01"), 2, "{}", emu.transcript());

    let m = emu.mark();
    emu.send(b"\x01\x01\x01");
    ok(emu.expect_after(m, "input focus: right", t));
    emu.send(b"b");
    ok(emu.expect_after(m, "[right] echo: got b", t));
    assert_eq!(emu.count("echo: got b"), 1, "only the focused guest may see input:\n{}", emu.transcript());
    assert_eq!(emu.count("[right] echo: got a"), 0, "{}", emu.transcript());

    // To the monitor.
    let m = emu.mark();
    emu.send(b"\x01\x01\x01");
    ok(emu.expect_after(m, "input focus: monitor", t));
    emu.send(b"list\r");
    let header = ok(emu.expect_after(m, "NAME", t));
    assert!(header.contains("STATE") && header.contains("VCPUS") && header.contains("MEMORY") && header.contains("EXITS"), "{header}");
    let row = ok(emu.expect_after(m, "left ", t));
    assert!(row.contains("running"), "{row}");

    // Pause left: input typed for it waits until it is resumed.
    let m = emu.mark();
    emu.send(b"pause left\r");
    ok(emu.expect_after(m, "left paused", t));
    emu.send(b"list\r");
    let row = ok(emu.expect_after(m, "paused", t));
    assert!(row.contains("left"), "{row}");
    let m = emu.mark();
    emu.send(b"\x01\x01\x01"); // monitor -> left
    ok(emu.expect_after(m, "input focus: left", t));
    emu.send(b"p");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(emu.count("[left] echo: got p"), 0, "a paused guest must not run:\n{}", emu.transcript());
    emu.send(b"\x01\x01\x01\x01\x01\x01"); // -> right -> monitor
    let m = emu.mark();
    emu.send(b"resume left\r");
    ok(emu.expect_after(m, "left resumed", t));
    ok(emu.expect_after(m, "[left] echo: got p", t));

    // Stats, reset and kill.
    let m = emu.mark();
    emu.send(b"stats right\r");
    ok(emu.expect_after(m, "io", t));
    let m = emu.mark();
    emu.send(b"reset right\r");
    ok(emu.expect_after(m, "guest right: stopped: reset from the monitor", t));
    ok(emu.expect_after(m, "[right] echo: ready", t));
    let m = emu.mark();
    emu.send(b"kill left\r");
    ok(emu.expect_after(m, "guest left: stopped: killed from the monitor", t));
    emu.send(b"list\r");
    let row = ok(emu.expect_after(m, "left ", t));
    assert!(row.contains("stopped"), "{row}");
    // With the last guest killed nothing is left and Bastion exits; every frame the guests
    // used (RAM, page tables, VMCBs, bitmaps) is back.
    emu.send(b"kill right\r");
    let outcome = emu.expect_exit(t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, bastion_core::exit::ExitStatus::Pass);
    let out = emu.transcript();
    qemu_tests::assert_all_memory_returned(&out);
}

#[test]
fn console_focus_echo_and_monitor_on_qemu_smp2() {
    console_focus_echo_and_monitor(Platform::QemuBios);
}

#[test]
fn console_focus_echo_and_monitor_on_bochs_intel_smp2() {
    console_focus_echo_and_monitor(Platform::BochsIntel);
}

/// The guest UART's receive interrupt reaches a guest through the virtual PIC and wakes its
/// vCPU from HLT; while it waits, the halted vCPU costs no CPU time.
fn interrupt_driven_guest_sleeps_until_typed_input(p: Platform) {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n[debug]\nstop_after_ms = 6000\n");
    cfg += &config_entry("sleeper", "irqecho", "");
    cfg += &config_entry("worker", "busy", "");
    let img = image_with_guests(&format!("irqecho-{}", p.name()), &cfg, &["irqecho", "busy"]);
    let opts = RunOptions { interactive: true, ..SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let t = timeout(p);
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(emu.expect("[sleeper] irqecho: ready (interrupt-driven)", t));
    std::thread::sleep(Duration::from_secs(2));
    let m = emu.mark();
    emu.send(b"hi");
    ok(emu.expect_after(m, "[sleeper] irqecho: got h", t));
    ok(emu.expect_after(m, "[sleeper] irqecho: got i", t));
    emu.send(b"q");
    let bye = ok(emu.expect_after(m, "[sleeper] irqecho: bye after", t));
    let stop = ok(emu.expect("guest sleeper: stopped:", t));
    assert!(stop.contains("test exit: PASS"), "{stop}\n{bye}");
    // The run ends at stop_after_ms with each guest's CPU time from the scheduler.
    let outcome = emu.expect_exit(timeout(p)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, bastion_core::exit::ExitStatus::Pass);
    let out = emu.transcript();
    let ran = |g: &str| -> u64 {
        out.lines()
            .find_map(|l| l.split(&format!("bench: guest {g} ran ")).nth(1))
            .and_then(|r| r.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no run time for {g}:\n{out}"))
    };
    let (sleeper, worker) = (ran("sleeper"), ran("worker"));
    assert!(sleeper * 5 < worker, "a vCPU waiting in HLT must not use CPU time: sleeper {sleeper} ms, worker {worker} ms");
}

#[test]
fn interrupt_driven_guest_sleeps_until_typed_input_on_qemu_smp2() {
    interrupt_driven_guest_sleeps_until_typed_input(Platform::QemuBios);
}

#[test]
fn interrupt_driven_guest_sleeps_until_typed_input_on_bochs_intel_smp2() {
    interrupt_driven_guest_sleeps_until_typed_input(Platform::BochsIntel);
}

/// A physical UART passed through to one guest: its bytes reach the port directly, while the
/// same writes from another guest are intercepted and go nowhere.
fn passthrough_uart(p: Platform) {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n");
    cfg += &config_entry("owner", "com2", "console = \"passthrough\"\nconsole_port = \"com2\"\n");
    cfg += &config_entry("stranger", "com2", "");
    let img = image_with_guests(&format!("passthrough-{}", p.name()), &cfg, &["com2"]);
    let com2 = img.dir.join("com2.txt");
    let opts = RunOptions { com2_file: Some(com2.clone()), ..SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let outcome = emu.expect_exit(timeout(p)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, bastion_core::exit::ExitStatus::Pass);
    let out = emu.transcript();
    for g in ["owner", "stranger"] {
        assert!(out.contains(&format!("[{g}] com2: sent 41 bytes to COM2")), "{out}");
        assert!(out.lines().any(|l| l.contains(&format!("guest {g}: stopped: test exit: PASS"))), "{out}");
    }
    // Bochs writes its COM2 file through a buffer that is flushed when it exits.
    let text = std::fs::read_to_string(&com2).unwrap_or_default();
    assert_eq!(text.matches("com2: hello from the passed-through port").count(), 1, "COM2 got {text:?}:\n{out}");
}

#[test]
fn passthrough_uart_belongs_to_one_guest_on_qemu_smp2() {
    passthrough_uart(Platform::QemuBios);
}

#[test]
fn passthrough_uart_belongs_to_one_guest_on_bochs_intel_smp2() {
    passthrough_uart(Platform::BochsIntel);
}

/// The built-in default config (`cargo xtask run`) boots, its two echo guests answer, and the
/// counter starts from the monitor.
#[test]
fn default_config_demo_works_on_qemu_smp2() {
    let cfg = std::fs::read_to_string(qemu_tests::workspace_root().join("boot/configs/default.toml")).unwrap();
    let img = image_with_guests("default-config", &cfg, &["echo", "irqecho", "busy"]);
    let opts = RunOptions { interactive: true, ..SMP2 };
    let mut emu = Emulator::start(Platform::QemuBios, &img, &opts);
    let t = Duration::from_secs(60);
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(emu.expect("[echo] echo: ready", t));
    ok(emu.expect("[irqecho] irqecho: ready", t));
    ok(emu.expect("guest counter: not started (autostart = false)", t));
    let m = emu.mark();
    emu.send(b"x");
    ok(emu.expect_after(m, "[echo] echo: got x", t));
    emu.send(b"\x01\x01\x01y");
    ok(emu.expect_after(m, "[irqecho] irqecho: got y", t));
    // A guest that is not running takes no input: the next stop is the monitor.
    emu.send(b"\x01\x01\x01");
    ok(emu.expect_after(m, "input focus: monitor", t));
    emu.send(b"reset counter\r");
    ok(emu.expect_after(m, "[counter] busy: vcpu 1 tick 1", t));
    ok(emu.expect_after(m, "[counter] busy: vcpu 0 tick 1", t));
}
