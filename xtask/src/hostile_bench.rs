//! `cargo xtask bench hostile`: the `hostile` test guest's seeded stream of privileged and odd
//! operations (see `hypervisor/guests/src/bin/hostile.rs`) at length, on QEMU TCG with AMD-V
//! (2 CPUs), beside a `worker` canary that counts units of CPU work and prints its total once a
//! second of TSC time; then the canary alone on the same machine, in the same invocation.
//!
//! Prints `bench: hostile ops=<n> faults=<n> host_faults=0 canary_rate_ratio=<x>
//! state_lost=<n> emulator_triple_faults=<n>`: the canary's units per second while the hostile
//! guest ran, over its rate alone (goal ≥ 0.9: a hostile guest must not slow its neighbour by
//! more than the CPU it is given). A host fault (Bastion's crash line, a panic, or the machine
//! resetting) fails the benchmark; so does any operation whose answer broke its rule, and any
//! stop of the hostile guest but the two QEMU 7.2's TCG causes now and then
//! ([`qemu_tests::EmulatorCause`]): the guest's state lost at an exit, which Bastion recognises
//! and stops the guest for, and a triple fault on pages the guest's tables map, which
//! Bastion's delivery walk shows. The guest then restarts (`on_crash`), its operations so far
//! count, and `state_lost` and `emulator_triple_faults` say how often each happened.
//!
//! Every run has a deadline and its emulator is killed at the end.

use crate::console_bench;
use anyhow::{bail, Result};
use qemu_tests::{EmulatorCause, Emulator, Platform, RunOptions};
use std::time::Duration;

/// The goal for the canary's rate next to the hostile guest over its rate alone.
const GOAL: f64 = 0.9;
/// The worker's lines (one a second of TSC time) measured alone.
const ALONE_LINES: usize = 30;

fn config(hostile: Option<(u64, u64)>) -> String {
    let mut cfg = String::from("[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"canary\"\nkernel = \"guests/worker.bin\"\nmemory_mib = 4\n");
    if let Some((seed, ops)) = hostile {
        // QEMU 7.2's TCG wakes `sti; hlt` wrongly under SVM (hostile.rs explains): no `hlt`.
        cfg += &format!(
            "\n[[guest]]\nname = \"hostile\"\nformat = \"multiboot\"\nkernel = \"guests/hostile.bin\"\nmemory_mib = 4\non_crash = \"restart\"\ncmdline = \"seed={seed} ops={ops} skip=hlt\"\n"
        );
    }
    cfg
}

/// The canary's units per line interval (per second of TSC time) over the lines of `text`,
/// from its `[canary] worker: units <n>` lines ([`console_bench::worker_rates`]); None with
/// fewer than two of them.
fn canary_rate(text: &str) -> Option<f64> {
    console_bench::worker_rates(text).get("canary").copied()
}

/// `key=<n>` from a line such as `hostile: done ops=1 faults=2 mismatches=0 quirks=3`.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a transcript shows of the host failing: Bastion's crash report or a panic.
fn host_fault(text: &str) -> bool {
    text.contains("BASTION CRASH") || text.contains("PANIC")
}

pub fn hostile(ops: u64) -> Result<()> {
    let seed = std::env::var("BASTION_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1u64);
    let (hostile, worker) = (qemu_tests::guests::guest_image("hostile"), qemu_tests::guests::guest_image("worker"));
    let files = [("guests/hostile.bin", hostile.as_path()), ("guests/worker.bin", worker.as_path())];
    let opts = RunOptions { smp: 2, ..RunOptions::default() };
    let p = Platform::QemuBios;
    let e = |f: qemu_tests::Failure| anyhow::anyhow!("{f}");

    // The canary alone: ALONE_LINES seconds after its first line.
    let image = qemu_tests::image_with_files("bench-hostile-alone", &config(None), &files);
    let mut emu = Emulator::start(p, &image, &opts);
    emu.expect("[canary] worker: units ", p.boot_timeout()).map_err(e)?;
    emu.expect_count("[canary] worker: units ", ALONE_LINES + 1, Duration::from_secs(ALONE_LINES as u64 * 10 + 60)).map_err(e)?;
    let text = emu.transcript();
    drop(emu);
    // The first line's interval includes the guest's start: measured from it, not over it.
    let Some(alone_rate) = canary_rate(&text) else { bail!("the canary printed too few lines alone:\n{text}") };

    // Beside the hostile guest, from the line where it starts until it has run `ops`
    // operations. QEMU 7.2's TCG now and then loses a guest's state at an exit (Bastion stops
    // the guest, naming it: `the CPU lost the guest's state`; measured every 100,000 to
    // 350,000 operations here), so the guest restarts when that happens (`on_crash =
    // "restart"`), and the operations of every run count; the losses are reported.
    let image = qemu_tests::image_with_files("bench-hostile", &config(Some((seed, ops))), &files);
    let mut emu = Emulator::start(p, &image, &opts);
    // ~700-3,000 operations a second on TCG; generous so a slow host still finishes.
    let deadline = std::time::Instant::now() + Duration::from_secs(300 + ops / 100);
    let started = std::time::Instant::now();
    emu.expect("[hostile] hostile: seed ", p.boot_timeout()).map_err(e)?;
    let mut mark = emu.mark();
    let tally = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Its own lines and Bastion's `guest hostile: stopped:` line both wake this loop.
        emu.expect_after(mark, "hostile: ", left).map_err(e)?;
        mark = emu.mark();
        let text = emu.transcript();
        let t = tally(&text);
        if t.ops >= ops || t.other_stops > 0 || t.mismatches > 0 || host_fault(&text) {
            break t;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    // A machine reset would have ended the waits above with the harness's reset report.
    let text = emu.transcript();
    drop(emu);
    let host_faults = u32::from(host_fault(&text));
    if host_faults != 0 || tally.mismatches != 0 || tally.other_stops != 0 {
        bail!("the hostile guest harmed the host, got a wrong answer or was stopped for another reason (seed {seed}, {} mismatches):\n{}", tally.mismatches, last_lines(&text, 60));
    }
    let from = text.find("[hostile] hostile: seed ").unwrap_or(0);
    let Some(beside_rate) = canary_rate(&text[from..]) else { bail!("the canary printed too few lines beside the hostile guest:\n{text}") };
    let ratio = beside_rate / alone_rate;
    println!(
        "hostile, {} with 2 CPUs, seed {seed}: {} operations in {secs:.0} s ({:.0}/s) over {} runs of the guest ({} stopped because the emulator lost its state, {} by a triple fault on mapped pages); canary {beside_rate:.0} units/s beside, {alone_rate:.0} alone (goal ratio ≥ {GOAL})",
        p.name(),
        tally.ops,
        tally.ops as f64 / secs,
        tally.state_lost + tally.emulator_triple_faults + 1,
        tally.state_lost,
        tally.emulator_triple_faults
    );
    println!(
        "bench: hostile ops={} faults={} host_faults={host_faults} canary_rate_ratio={ratio:.3} state_lost={} emulator_triple_faults={}",
        tally.ops, tally.faults, tally.state_lost, tally.emulator_triple_faults
    );
    if tally.ops < ops {
        bail!("only {} of {ops} operations ran", tally.ops);
    }
    Ok(())
}

/// What the hostile guest's runs did, from its lines: every 10,000 operations `hostile: <n>
/// ops <f> faults`, its last `hostile: done ops=<n> faults=<f> ...`, `FAIL` lines for
/// mismatches, and Bastion's `guest hostile: stopped: <reason>` between runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Operations of every run (a run cut short counts up to its last progress line).
    pub ops: u64,
    pub faults: u64,
    pub mismatches: u64,
    /// Runs Bastion stopped because the emulator lost the guest's state.
    pub state_lost: u64,
    /// Runs ended by a triple fault on pages the guest's tables map (Bastion's delivery walk
    /// found nothing the guest or Bastion did that could fail it).
    pub emulator_triple_faults: u64,
    /// Runs stopped for any other reason than their own end.
    pub other_stops: u64,
}

pub fn tally(text: &str) -> Tally {
    let mut t = Tally::default();
    let (mut ops, mut faults) = (0, 0);
    let mut stops = qemu_tests::GuestStops::default();
    for line in text.lines() {
        let cause = stops.emulator_cause(line);
        if let Some(rest) = line.split("[hostile] hostile: ").nth(1) {
            if let Some(done) = rest.strip_prefix("done ") {
                ops = field(done, "ops").unwrap_or(ops);
                faults = field(done, "faults").unwrap_or(faults);
                // The FAIL lines above stop at 20; the total is here.
                t.mismatches = t.mismatches.max(field(done, "mismatches").unwrap_or(0));
            } else if rest.starts_with("FAIL") {
                t.mismatches += 1;
            } else {
                let w: Vec<&str> = rest.split_whitespace().collect();
                if let [n, "ops", f, "faults"] = w[..] {
                    (ops, faults) = (n.parse().unwrap_or(ops), f.parse().unwrap_or(faults));
                }
            }
        } else if let Some(reason) = line.split("guest hostile: stopped: ").nth(1) {
            match cause {
                Some(EmulatorCause::StateLost) => t.state_lost += 1,
                Some(EmulatorCause::TripleFaultOnMappedPages) => t.emulator_triple_faults += 1,
                None if !reason.starts_with("test exit: PASS") => t.other_stops += 1,
                None => {}
            }
            t.ops += ops;
            t.faults += faults;
            (ops, faults) = (0, 0);
        }
    }
    t.ops += ops;
    t.faults += faults;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_rate_is_growth_over_intervals_between_two_offsets() {
        let text = "[canary] worker: units 10\n[hostile] hostile: seed 1 ops 5\n[canary] worker: units 110\n[canary] worker: units 200\n[canary] worker: units 290\n[hostile] hostile: done ops=5\n[canary] worker: units 1000\n";
        let (from, to) = (text.find("[hostile] hostile: seed").unwrap(), text.find("hostile: done").unwrap());
        // 110 -> 290 over two intervals: 90 a line; the lines before and after are not counted.
        assert_eq!(canary_rate(&text[from..to]), Some(90.0));
        assert_eq!(canary_rate(text), Some(990.0 / 4.0));
        // One line is no interval.
        assert_eq!(canary_rate(&text[..from]), None);
        assert_eq!(canary_rate(""), None);
    }

    #[test]
    fn operations_of_every_run_count_and_stops_are_told_apart() {
        let text = "[hostile] hostile: seed 1 ops 100\n[hostile] hostile: 10000 ops 400 faults\n[hostile] hostile: 20000 ops 800 faults\n\
            [WARN  cpu0] guest hostile: stopped: the CPU lost the guest's state at an exit: ...\n\
            [hostile] hostile: seed 1 ops 100\n[hostile] hostile: 10000 ops 390 faults\n[hostile] hostile: done ops=15000 faults=600 mismatches=0 quirks=2\n\
            [INFO  cpu0] guest hostile: stopped: test exit: PASS\n";
        assert_eq!(tally(text), Tally { ops: 35_000, faults: 1_400, mismatches: 0, state_lost: 1, emulator_triple_faults: 0, other_stops: 0 });
        // A run still going counts up to its last progress line; another stop reason is told.
        let text = "[hostile] hostile: 10000 ops 1 faults\nguest hostile: stopped: triple fault (shutdown)\n[hostile] hostile: 30000 ops 5 faults\n";
        assert_eq!(tally(text), Tally { ops: 40_000, faults: 6, mismatches: 0, state_lost: 0, emulator_triple_faults: 0, other_stops: 1 });
        // A triple fault whose delivery walk found every page mapped is the emulator's; the
        // canary's walk says nothing of the hostile guest's stop.
        let all_mapped = bastion_core::vm::fault_report::ALL_MAPPED;
        let text = format!(
            "[hostile] hostile: 20000 ops 9 faults\n[WARN  cpu0] guest hostile: vCPU 0 delivery walk: RIP 0x127fc -> 0x127fc; {all_mapped} (after SHUTDOWN the APM leaves this state undefined)\n\
             [WARN  cpu0] guest hostile: stopped: triple fault (shutdown) (vCPU 0, RIP 0x127fc)\n[hostile] hostile: 10000 ops 2 faults\n\
             [WARN  cpu1] guest canary: vCPU 0 delivery walk: RIP 0x1 -> 0x1; {all_mapped}\nguest hostile: stopped: triple fault (shutdown)\n"
        );
        assert_eq!(tally(&text), Tally { ops: 30_000, faults: 11, mismatches: 0, state_lost: 0, emulator_triple_faults: 1, other_stops: 1 });
        // Mismatches: each FAIL line, or the done line's total, whichever says more.
        let text = "[hostile] hostile: FAIL op 7 msr: x\n[hostile] hostile: done ops=10 faults=1 mismatches=30 quirks=0\n";
        assert_eq!(tally(text).mismatches, 30);
    }

    #[test]
    fn figures_are_read_by_key() {
        let line = "[hostile] hostile: done ops=1000000 faults=402311 mismatches=0 quirks=59120";
        assert_eq!(field(line, "ops"), Some(1_000_000));
        assert_eq!(field(line, "faults"), Some(402_311));
        assert_eq!(field(line, "mismatches"), Some(0));
        assert_eq!(field(line, "seed"), None);
    }

    #[test]
    fn the_hostile_guest_runs_beside_the_canary_without_hlt_on_qemu() {
        let cfg = config(Some((7, 1000)));
        assert!(cfg.contains("cmdline = \"seed=7 ops=1000 skip=hlt\"") && cfg.contains("on_crash = \"restart\""), "{cfg}");
        assert_eq!(cfg.matches("[[guest]]").count(), 2);
        assert_eq!(config(None).matches("[[guest]]").count(), 1);
        assert!(host_fault("x\nBASTION CRASH on cpu 0\n") && !host_fault("hostile: done"));
    }
}
