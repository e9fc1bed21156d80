//! `cargo xtask bench linux`: Debian's cloud kernel (the Linux kit, [`crate::linux`]) as a
//! Bastion guest against the same kernel, initramfs and command line booted directly by QEMU
//! (`-kernel -initrd -append`), in one invocation on the same emulator: QEMU TCG with
//! `-cpu qemu64,+svm,+npt` (Bastion uses AMD-V there). Bastion's host gets `-m 512 -smp 2`;
//! the bare kernel gets the machine the guest sees, `-m 128 -smp 1` (1 vCPU, 128 MiB), so the
//! kernels boot the same amount of hardware.
//!
//! - `bench: linux-boot bastion=<s> bare=<s> ratio=<x>`: the kernel's own boot, from its entry
//!   to `/init`'s ready line, as `/proc/uptime` read by `/init` says (`bastion-linux: ready
//!   uptime=<s>`). Cross-checked against the host's wall clock from the first kernel console
//!   line to the ready line, printed with and without the kernel's own time before its serial
//!   console came up (the first line only leaves then, with the log so far), and a warning when
//!   the wall figure from the kernel's entry and the uptime differ by more than 25 %: the
//!   uptime counts only what the guest's clock saw, and a clock that loses ticks while the
//!   kernel still keeps time by jiffies makes it short.
//! - `bench: linux-firmware bastion=<s> bare=<s>`: host wall time from the emulator's start to
//!   the kernel's first console line: BIOS, bootloader, Bastion's start and the guest's load
//!   for Bastion; QEMU's `-kernel` path for bare.
//! - `bench: linux-work <name> bastion=<s> bare=<s> ratio=<x>`: commands typed in the guest's
//!   shell over the serial console, each timed by the guest itself (`/proc/uptime` before and
//!   after, read with the shell's `read` builtin so no process is started for it): a 100,000
//!   iteration shell loop, 16 MiB through `dd | md5sum`, 200 fork+exec of `/bin/true`. Each
//!   is also timed by the host (last key typed to the marker line), and the guest's clock rate
//!   over all the work against the host's is printed, with a warning when it is 5 % off.
//! - `bench: linux-idle exits_per_s=<n>`: the Bastion guest idle at its prompt; its VM exits
//!   from the monitor's `stats NAME` twice, 10 s apart of host wall time.
//! - `bench: linux-smp parallel-md5 vcpus=<n> s=<t>`: 4 processes hashing 16 MiB each at once
//!   in a Bastion guest of 1, 2 and 4 vCPUs (one boot each), timed by the guest's uptime.
//!
//! The goals (boot ratio ≤ 1.10, work ratios ≤ 1.05, idle ≤ 100 exits/s) are printed beside
//! the figures, not asserted. Every run has a deadline and its emulator is killed at the end
//! (the harness's [`Emulator`] also kills it when dropped, on errors too).

use crate::linux;
use anyhow::{bail, Context, Result};
use qemu_tests::{Emulator, Platform, RunOptions, TestImage};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The guest's command line, the one boot/configs/linux.toml gives its Linux guests.
pub const CMDLINE: &str = "console=ttyS0 pci=off 8250.nr_uarts=1 reboot=k panic=-1 cryptomgr.notests=1";
/// The guest's name in Bastion (its output lines are `[tux] ...`).
const GUEST: &str = "tux";
/// The emulated machine, the same for both runs.
const MEMORY_MIB: u32 = 512;
const SMP: u32 = 2;
/// The guest's RAM, and the bare kernel's.
const GUEST_MIB: u32 = 128;

const GOAL_BOOT: f64 = 1.10;
const GOAL_WORK: f64 = 1.05;
const GOAL_IDLE: f64 = 100.0;
/// How far the wall-clock boot span may be from the guest's uptime before a warning.
const WALL_TOLERANCE: f64 = 0.25;
/// How far the guest's clock may run from the host's over the work before a warning (the
/// span starts when the last key of the first command is sent and ends when the last marker
/// arrives, so it carries a few tens of milliseconds of console latency).
const CLOCK_TOLERANCE: f64 = 0.05;
/// Host wall time between the two exit counts of the idle guest.
const IDLE: Duration = Duration::from_secs(10);

/// The kernel's first console line (`[    0.000000] Linux version ...`, `[tux] ` before it in
/// Bastion).
const FIRST_LINE: &str = "] Linux version ";
/// The kernel's line when its serial console comes up: the log so far, from its first line,
/// follows at once, so the first line reaches the host at the kernel time this line carries.
const CONSOLE_UP: &str = "console [ttyS0] enabled";
/// busybox's shell banner, after `/init`'s ready line: the shell reads the console.
const SHELL_UP: &str = "Enter 'help' for a list of built-in commands.";
/// What the guest prints after a timed command: `bench-work <name> <start> <end> <check>`.
const MARKER: &str = "bench-work ";
/// md5 of 16 MiB of zeros: the `dd | md5sum` work really ran.
const ZEROS_16M_MD5: &str = "2c7ab85a893283e98c931e9511add182";

/// A command timed in the guest.
struct Work {
    name: &'static str,
    body: &'static str,
    /// What the shell prints as the marker's last field ("-" when nothing).
    check: &'static str,
    /// The value it must have.
    expect: &'static str,
}

const WORK: [Work; 3] = [
    Work { name: "loop", body: "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done", check: "$i", expect: "100000" },
    Work { name: "dd-md5", body: "dd if=/dev/zero bs=1M count=16 2>/dev/null | md5sum", check: "-", expect: "-" },
    Work { name: "fork-exec", body: "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done", check: "$i", expect: "200" },
];

/// The line typed for `w`: uptime before, the work, uptime after, the marker. The marker's
/// word is split by quotes in what is typed (`bench-wo''rk`), so the shell's echo of the
/// command never looks like its output.
fn work_command(w: &Work) -> String {
    format!("read a x </proc/uptime; {}; read b x </proc/uptime; echo bench-wo''rk {} $a $b {}\r", w.body, w.name, w.check)
}

/// A marker line the guest printed: (name, uptime before, uptime after, check field). `None`
/// for other lines, the echo of a typed command and replayed history among them.
fn parse_work(line: &str) -> Option<(String, f64, f64, String)> {
    if line.contains(" history] ") {
        return None;
    }
    let (_, rest) = line.split_once(MARKER)?;
    let mut t = rest.split_whitespace();
    let name = t.next()?.to_string();
    let a: f64 = t.next()?.parse().ok()?;
    let b: f64 = t.next()?.parse().ok()?;
    let check = t.next().unwrap_or("").to_string();
    (b >= a).then_some((name, a, b, check))
}

/// The kernel's timestamp on a console line (`[    0.251489] ...`, after `[tux] ` in Bastion).
fn printk_time(line: &str) -> Option<f64> {
    line.split('[').find_map(|part| part.split_once(']')?.0.trim().parse().ok())
}

/// `/init`'s ready line: (uptime in seconds, kernel release).
fn parse_ready(line: &str) -> Option<(f64, String)> {
    let (_, rest) = line.split_once(linux::READY)?;
    let uptime = rest.split_whitespace().find_map(|w| w.strip_prefix("uptime="))?.parse().ok()?;
    let kernel = rest.split_whitespace().find_map(|w| w.strip_prefix("kernel="))?.to_string();
    Some((uptime, kernel))
}

/// The monitor's `stats NAME` answer among `lines` (the first one): exits by reason and the
/// total. Other lines between its rows (log lines, the prompt) are skipped.
fn parse_stats<'a>(lines: impl IntoIterator<Item = &'a str>, guest: &str) -> Option<(BTreeMap<String, u64>, u64)> {
    let header = format!("{guest}: VM exits by reason");
    let mut lines = lines.into_iter().skip_while(|l| !l.trim_end().ends_with(&header));
    lines.next()?;
    let mut reasons = BTreeMap::new();
    for l in lines {
        if !l.starts_with("  ") {
            continue;
        }
        let mut w = l.split_whitespace();
        let (Some(reason), Some(count)) = (w.next(), w.next().and_then(|n| n.parse::<u64>().ok())) else { continue };
        if reason == "total" {
            return Some((reasons, count));
        }
        reasons.insert(reason.to_string(), count);
    }
    None
}

/// bastion / bare (infinite when bare is 0).
fn ratio(bastion: f64, bare: f64) -> f64 {
    if bare > 0.0 {
        bastion / bare
    } else {
        f64::INFINITY
    }
}

/// `(goal <= 1.10: met)`, for a figure that should stay at or below `goal`.
fn goal_note(value: f64, goal: f64, digits: usize) -> String {
    format!("(goal <= {goal:.digits$}: {})", if value <= goal { "met" } else { "not met" })
}

/// How fast the guest's clock ran against the host's wall clock over the same span: guest
/// seconds per host second (NaN for an empty span).
fn clock_rate(guest: f64, wall: f64) -> f64 {
    if wall > 0.0 {
        guest / wall
    } else {
        f64::NAN
    }
}

/// Whether the wall-clock span and the guest's uptime differ by more than the tolerance.
fn wall_disagrees(uptime: f64, wall: f64) -> bool {
    (wall - uptime).abs() > WALL_TOLERANCE * uptime
}

fn boot_line(bastion: f64, bare: f64) -> String {
    let r = ratio(bastion, bare);
    format!("bench: linux-boot bastion={bastion:.2} bare={bare:.2} ratio={r:.3} {}", goal_note(r, GOAL_BOOT, 2))
}

fn firmware_line(bastion: f64, bare: f64) -> String {
    format!("bench: linux-firmware bastion={bastion:.2} bare={bare:.2}")
}

fn work_line(name: &str, bastion: f64, bare: f64) -> String {
    let r = ratio(bastion, bare);
    format!("bench: linux-work {name} bastion={bastion:.2} bare={bare:.2} ratio={r:.3} {}", goal_note(r, GOAL_WORK, 2))
}

fn idle_line(per_s: f64) -> String {
    format!("bench: linux-idle exits_per_s={per_s:.1} {}", goal_note(per_s, GOAL_IDLE, 0))
}

/// What one run measured.
struct Measured {
    /// `/proc/uptime` at `/init`'s ready line.
    uptime: f64,
    kernel: String,
    /// Host wall time from the emulator's start to the kernel's first console line, and to the
    /// ready line.
    first_line: Duration,
    ready: Duration,
    /// The kernel's own time when its first line went out (its console came up).
    before_console: f64,
    /// Seconds per work, by the guest's uptime, in [`WORK`]'s order.
    work: Vec<f64>,
}

fn harness<T>(r: Result<T, qemu_tests::Failure>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Waits for the shell, reads the boot figures, then types and times every [`WORK`].
fn measure(emu: &mut Emulator, who: &str, boot_timeout: Duration) -> Result<Measured> {
    harness(emu.expect(SHELL_UP, boot_timeout))?;
    let ready = harness(emu.expect(linux::READY, Duration::from_secs(1)))?;
    let (uptime, kernel) = parse_ready(&ready).with_context(|| format!("{who}: malformed ready line `{ready}`"))?;
    let first_line = emu.time_of(FIRST_LINE).with_context(|| format!("{who}: no `{FIRST_LINE}` line before the shell"))?;
    let ready = emu.time_of(linux::READY).context("the ready line has no time")?;
    let t = emu.transcript();
    let before_console = t.lines().find(|l| l.contains(CONSOLE_UP)).and_then(printk_time).unwrap_or_else(|| {
        println!("linux, {who}: warning: no `{CONSOLE_UP}` line with a timestamp; the wall-clock boot starts at the first line");
        0.0
    });
    let span = (ready - first_line).as_secs_f64();
    let wall = span + before_console;
    println!(
        "linux, {who}: kernel {kernel}; first kernel line {:.2} s after the emulator's start (its console up at kernel time \
         {before_console:.2} s), ready {:.2} s; uptime at ready {uptime:.2} s; host wall clock first line -> ready {span:.2} s, \
         kernel entry -> ready {wall:.2} s",
        first_line.as_secs_f64(),
        ready.as_secs_f64()
    );
    if wall_disagrees(uptime, wall) {
        println!(
            "linux, {who}: warning: the boot by the host's wall clock ({wall:.2} s) and by the guest's uptime ({uptime:.2} s) \
             differ by more than {:.0} %",
            WALL_TOLERANCE * 100.0
        );
    }
    // Let the shell settle into reading the console before typing.
    std::thread::sleep(Duration::from_secs(1));
    let mut work = Vec::new();
    // The guest's clock against the host's over all the work: (first uptime, last key sent)
    // and (last uptime, last marker received).
    let mut span: Option<((f64, Instant), (f64, Instant))> = None;
    for w in &WORK {
        let m = emu.mark();
        emu.send(work_command(w).as_bytes());
        let sent = Instant::now();
        let line = harness(emu.expect_after(m, &format!("{MARKER}{} ", w.name), Duration::from_secs(900)))?;
        let got = Instant::now();
        let Some((_, a, b, check)) = parse_work(&line) else { bail!("{who}: malformed marker `{line}`") };
        if check != w.expect {
            bail!("{who}: {} ended with {check}, not {}:\n{}", w.name, w.expect, emu.transcript());
        }
        if w.name == "dd-md5" && !emu.transcript().lines().skip(m).any(|l| l.contains(ZEROS_16M_MD5)) {
            bail!("{who}: md5sum did not print {ZEROS_16M_MD5}:\n{}", emu.transcript());
        }
        println!(
            "linux, {who}: {} took {:.2} s by the guest's uptime ({a:.2} -> {b:.2}), {:.2} s by the host's wall clock from the last key typed to the marker",
            w.name,
            b - a,
            (got - sent).as_secs_f64()
        );
        work.push(b - a);
        span = Some((span.map_or((a, sent), |s| s.0), (b, got)));
    }
    if let Some(((a, sent), (b, got))) = span {
        let rate = clock_rate(b - a, (got - sent).as_secs_f64());
        println!("linux, {who}: guest clock / host wall clock over the work: {rate:.3}");
        if (rate - 1.0).abs() > CLOCK_TOLERANCE {
            println!("linux, {who}: warning: the guest's clock is {:.1} % off the host's: its timings are not host time", (rate - 1.0) * 100.0);
        }
    }
    Ok(Measured { uptime, kernel, first_line, ready, before_console, work })
}

/// The host's 1, 5 and 15 minute load averages: other emulators on the machine slow both runs.
fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn options(qemu_args: Vec<String>) -> RunOptions {
    RunOptions { smp: SMP, memory_mib: MEMORY_MIB, kvm: Some(false), qemu_args, interactive: true, ..RunOptions::default() }
}

/// The bare kernel's machine: what the Bastion guest has (1 vCPU, [`GUEST_MIB`]).
fn bare_options(qemu_args: Vec<String>) -> RunOptions {
    RunOptions { smp: 1, memory_mib: GUEST_MIB, ..options(qemu_args) }
}

/// The monitor's `stats` for the guest: (exits by reason, total, when the answer arrived).
fn stats(emu: &mut Emulator) -> Result<(BTreeMap<String, u64>, u64, Instant)> {
    let m = emu.mark();
    emu.send(format!("stats {GUEST}\r").as_bytes());
    harness(emu.expect_after(m, "  total ", Duration::from_secs(60)))?;
    let at = Instant::now();
    let t = emu.transcript();
    let (reasons, total) = parse_stats(t.lines().skip(m), GUEST).with_context(|| format!("no `stats {GUEST}` answer:\n{t}"))?;
    Ok((reasons, total, at))
}

/// Bastion with one Linux guest: boot and work figures, then its idle exit rate.
fn bastion(kit: &linux::Kit) -> Result<(Measured, f64)> {
    let cfg = format!(
        "[hypervisor]\n\n[[guest]]\nname = \"{GUEST}\"\nformat = \"bzimage\"\nkernel = \"linux/vmlinuz\"\n\
         initrd = \"linux/initramfs.cpio.gz\"\nmemory_mib = {GUEST_MIB}\ncmdline = \"{CMDLINE}\"\n"
    );
    let image = qemu_tests::image_with_files(
        "bench-linux",
        &cfg,
        &[("linux/vmlinuz", kit.vmlinuz.as_path()), ("linux/initramfs.cpio.gz", kit.initramfs.as_path())],
    );
    println!("linux, bastion: host load average {}", loadavg());
    let mut emu = Emulator::start(Platform::QemuBios, &image, &options(Vec::new()));
    // Under TCG the BIOS alone loads the 12 MB image for about a minute.
    let m = measure(&mut emu, "bastion", Duration::from_secs(900))?;
    let start = emu.time_of(&format!("guest {GUEST}: starting")).context("no guest start line")?;
    println!("linux, bastion: guest started {:.2} s after the emulator's start", start.as_secs_f64());

    // Idle: the shell waits at its prompt; the monitor counts its exits.
    std::thread::sleep(Duration::from_secs(2));
    let mark = emu.mark();
    emu.send(b"\x01\x01\x01");
    harness(emu.expect_after(mark, "input focus: monitor", Duration::from_secs(60)))?;
    let (r1, n1, t1) = stats(&mut emu)?;
    std::thread::sleep((t1 + IDLE).saturating_duration_since(Instant::now()));
    let (r2, n2, t2) = stats(&mut emu)?;
    let secs = (t2 - t1).as_secs_f64();
    let per_s = n2.saturating_sub(n1) as f64 / secs;
    let mut by_reason: Vec<(String, u64)> = r2.iter().map(|(k, v)| (k.clone(), v.saturating_sub(r1.get(k).copied().unwrap_or(0)))).collect();
    by_reason.retain(|(_, n)| *n > 0);
    by_reason.sort_by_key(|r| std::cmp::Reverse(r.1));
    let reasons: Vec<String> = by_reason.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("linux, bastion: idle for {secs:.2} s: {} exits ({})", n2.saturating_sub(n1), reasons.join(", "));
    emu.kill();
    Ok((m, per_s))
}

/// The parallel work of `linux-smp`: 4 processes hashing 16 MiB each at once.
const PARALLEL_MD5: Work = Work {
    name: "parallel-md5",
    body: "for j in 1 2 3 4; do (dd if=/dev/zero bs=1M count=16 2>/dev/null | md5sum >/dev/null) & done; wait",
    check: "-",
    expect: "-",
};
/// The guest sizes `linux-smp` runs, one Bastion boot each.
const SMP_VCPUS: [u32; 3] = [1, 2, 4];

/// `bench: linux-smp parallel-md5 vcpus=<n> s=<t>`: [`PARALLEL_MD5`] timed by the guest's
/// uptime in a Linux guest of `n` vCPUs, alone on Bastion's 2 host CPUs, for each n in
/// [`SMP_VCPUS`]: 4 vCPUs on 2 CPUs share them, so the figure for 4 shows what the
/// oversubscription costs over 2.
fn smp(kit: &linux::Kit) -> Result<Vec<(u32, f64)>> {
    let mut out = Vec::new();
    for n in SMP_VCPUS {
        let cfg = format!(
            "[hypervisor]\n\n[[guest]]\nname = \"{GUEST}\"\nformat = \"bzimage\"\nkernel = \"linux/vmlinuz\"\n\
             initrd = \"linux/initramfs.cpio.gz\"\nmemory_mib = {GUEST_MIB}\nvcpus = {n}\ncmdline = \"{CMDLINE}\"\n"
        );
        let image = qemu_tests::image_with_files(
            &format!("bench-linux-smp{n}"),
            &cfg,
            &[("linux/vmlinuz", kit.vmlinuz.as_path()), ("linux/initramfs.cpio.gz", kit.initramfs.as_path())],
        );
        let mut emu = Emulator::start(Platform::QemuBios, &image, &options(Vec::new()));
        harness(emu.expect(SHELL_UP, Duration::from_secs(900)))?;
        std::thread::sleep(Duration::from_secs(1));
        let m = emu.mark();
        emu.send(work_command(&PARALLEL_MD5).as_bytes());
        let line = harness(emu.expect_after(m, &format!("{MARKER}{} ", PARALLEL_MD5.name), Duration::from_secs(900)))?;
        let Some((_, a, b, _)) = parse_work(&line) else { bail!("linux-smp, {n} vCPUs: malformed marker `{line}`") };
        println!("linux-smp, {n} vCPUs: {} took {:.2} s by the guest's uptime ({a:.2} -> {b:.2})", PARALLEL_MD5.name, b - a);
        emu.kill();
        out.push((n, b - a));
    }
    Ok(out)
}

/// The same kernel, initramfs and command line booted by QEMU itself. The harness boots a
/// disk image; QEMU's `-kernel` option ROM boots before any disk, so an empty one does.
fn bare(kit: &linux::Kit) -> Result<Measured> {
    let dir = qemu_tests::work_dir("bench-linux-bare");
    let blank = dir.join("blank.img");
    std::fs::write(&blank, [0u8; 512]).with_context(|| format!("cannot write {}", blank.display()))?;
    let image = TestImage { dir, bios: blank.clone(), uefi: blank.clone(), pxe: blank };
    let path = |p: &Path| p.display().to_string();
    let args = vec!["-kernel".into(), path(&kit.vmlinuz), "-initrd".into(), path(&kit.initramfs), "-append".into(), CMDLINE.into()];
    println!("linux, bare: host load average {}", loadavg());
    let mut emu = Emulator::start(Platform::QemuBios, &image, &bare_options(args));
    let m = measure(&mut emu, "bare", Duration::from_secs(300))?;
    emu.kill();
    Ok(m)
}

pub fn linux(root: &Path) -> Result<()> {
    let kit = linux::fetch(root)?;
    println!(
        "linux: {} on QEMU TCG (-cpu qemu64,+svm,+npt), in Bastion (host -m {MEMORY_MIB} -smp {SMP}; guest 1 vCPU, {GUEST_MIB} MiB) and bare (-kernel, -m {GUEST_MIB} -smp 1)",
        kit.package
    );
    let (b, idle) = bastion(&kit)?;
    let q = bare(&kit)?;
    if b.kernel != q.kernel {
        println!("linux: warning: the two runs report different kernels ({} and {})", b.kernel, q.kernel);
    }
    println!("{}", boot_line(b.uptime, q.uptime));
    let span = |m: &Measured| (m.ready - m.first_line).as_secs_f64();
    let (bw, qw) = (span(&b) + b.before_console, span(&q) + q.before_console);
    println!(
        "linux: boot by the host's wall clock: first kernel line -> ready bastion={:.2} bare={:.2}; kernel entry -> ready \
         (plus the kernel's time before its console) bastion={bw:.2} bare={qw:.2} ratio={:.3}",
        span(&b),
        span(&q),
        ratio(bw, qw)
    );
    println!("{}", firmware_line(b.first_line.as_secs_f64(), q.first_line.as_secs_f64()));
    for (i, w) in WORK.iter().enumerate() {
        println!("{}", work_line(w.name, b.work[i], q.work[i]));
    }
    println!("{}", idle_line(idle));
    for (n, secs) in smp(&kit)? {
        println!("bench: linux-smp {} vcpus={n} s={secs:.2}", PARALLEL_MD5.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_markers_parse_and_the_typed_command_never_looks_like_one() {
        assert_eq!(parse_work("[tux] bench-work loop 12.34 15.60 100000"), Some(("loop".into(), 12.34, 15.60, "100000".into())));
        assert_eq!(parse_work("bench-work dd-md5 3.00 3.50 -"), Some(("dd-md5".into(), 3.0, 3.5, "-".into())));
        assert_eq!(parse_work("bench-work loop 1.0 2.0"), Some(("loop".into(), 1.0, 2.0, String::new())));
        assert_eq!(parse_work("[tux] / # echo bench-work loop $a $b $i"), None, "unexpanded");
        assert_eq!(parse_work("[tux history] bench-work loop 1.00 2.00 100000"), None, "replayed");
        assert_eq!(parse_work("bench-work loop 5.00 4.00 1"), None, "time runs forward");
        assert_eq!(parse_work("[tux] hello"), None);
        for w in &WORK {
            let typed = work_command(w);
            assert!(!typed.contains(MARKER.trim_end()), "{typed}");
            assert!(typed.ends_with('\r') && typed.matches("/proc/uptime").count() == 2, "{typed}");
            assert!(typed.contains(w.body) && typed.contains(&format!(" {} $a $b {}", w.name, w.check)), "{typed}");
        }
        assert_eq!(WORK.map(|w| w.name), ["loop", "dd-md5", "fork-exec"]);
    }

    #[test]
    fn the_ready_line_gives_uptime_and_kernel() {
        let l = "[tux] bastion-linux: ready uptime=5.66 kernel=6.12.118+deb12-cloud-amd64";
        assert_eq!(parse_ready(l), Some((5.66, "6.12.118+deb12-cloud-amd64".into())));
        assert_eq!(parse_ready("bastion-linux: ready uptime=2.15 kernel=6.1"), Some((2.15, "6.1".into())));
        assert_eq!(parse_ready("[tux] / # echo \"bastion-linux: ready uptime=$up kernel=$(uname -r)\""), None);
        assert_eq!(parse_ready("bastion-linux: ready kernel=6.1"), None);
        assert_eq!(parse_ready("something else uptime=1.0 kernel=x"), None);
    }

    #[test]
    fn kernel_timestamps_parse_with_or_without_the_guest_tag() {
        assert_eq!(printk_time("[tux] [    0.251489] printk: legacy console [ttyS0] enabled"), Some(0.251489));
        assert_eq!(printk_time("[    2.435204] Run /init as init process"), Some(2.435204));
        assert_eq!(printk_time("[tux] bastion-linux: ready uptime=1"), None);
        assert_eq!(printk_time("no brackets"), None);
    }

    #[test]
    fn stats_answers_give_reasons_and_total() {
        let out = "bastion> stats tux\n[tux] late guest line\ntux: VM exits by reason\n  io          1200   96.8%\n\
                   [INFO  cpu1] a log line\n  cpuid         40    3.2%\n  total       1240\nbastion> ";
        let (reasons, total) = parse_stats(out.lines(), "tux").unwrap();
        assert_eq!(total, 1240);
        assert_eq!(reasons, BTreeMap::from([("io".to_string(), 1200), ("cpuid".to_string(), 40)]));
        let (reasons, total) = parse_stats("tux: VM exits by reason\n  (none yet)\n  total  0".lines(), "tux").unwrap();
        assert!(reasons.is_empty() && total == 0);
        assert_eq!(parse_stats("web: VM exits by reason\n  total  3".lines(), "tux"), None, "another guest");
        assert_eq!(parse_stats("tux: VM exits by reason\n  io  3  100.0%".lines(), "tux"), None, "no total yet");
    }

    #[test]
    fn figures_print_with_ratios_and_goals() {
        assert_eq!(boot_line(5.5, 5.0), "bench: linux-boot bastion=5.50 bare=5.00 ratio=1.100 (goal <= 1.10: met)");
        assert_eq!(boot_line(6.0, 2.0), "bench: linux-boot bastion=6.00 bare=2.00 ratio=3.000 (goal <= 1.10: not met)");
        assert_eq!(firmware_line(70.123, 1.5), "bench: linux-firmware bastion=70.12 bare=1.50");
        assert_eq!(work_line("loop", 2.0, 2.0), "bench: linux-work loop bastion=2.00 bare=2.00 ratio=1.000 (goal <= 1.05: met)");
        assert_eq!(idle_line(250.04), "bench: linux-idle exits_per_s=250.0 (goal <= 100: not met)");
        assert_eq!(idle_line(12.0), "bench: linux-idle exits_per_s=12.0 (goal <= 100: met)");
        assert!(ratio(1.0, 0.0).is_infinite());
        assert_eq!(work_line("x", 1.0, 0.0), "bench: linux-work x bastion=1.00 bare=0.00 ratio=inf (goal <= 1.05: not met)");
    }

    #[test]
    fn the_guest_boots_with_the_linux_configs_command_line() {
        let path = crate::root().join("boot/configs/linux.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = bastion_core::config::Config::parse("linux.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.guests.iter().any(|g| g.cmdline.as_deref() == Some(CMDLINE)), "{}", path.display());
    }

    #[test]
    fn clock_rate_is_guest_seconds_per_host_second() {
        assert_eq!(clock_rate(9.0, 10.0), 0.9);
        assert!(clock_rate(1.0, 0.0).is_nan());
    }

    #[test]
    fn wall_clock_cross_check_tolerates_a_quarter() {
        assert!(!wall_disagrees(4.0, 4.9));
        assert!(!wall_disagrees(4.0, 3.1));
        assert!(wall_disagrees(4.0, 5.1));
        assert!(wall_disagrees(4.0, 2.9));
    }
}
