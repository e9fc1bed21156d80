//! `cargo xtask bench cpu`: one binary, the `bench` test guest (a Multiboot kernel), bare under
//! QEMU's own loader and as a Bastion guest, in one invocation on the same emulator: QEMU TCG
//! with `-cpu qemu64,+svm,+npt`, 2 CPUs and 256 MiB both times (the Bastion guest has 2 vCPUs
//! and 32 MiB). The guest measures itself with its TSC, which runs at the host's rate in both
//! (Bastion only offsets it), and prints its figures (`hypervisor/guests/src/bin/bench.rs`):
//!
//! - `bench: cpu <name> bastion=<cycles> bare=<cycles> ratio=<x>` for an integer loop
//!   (`intloop`), a walk over 8 MiB (`memwalk`) and a sieve (`sieve`); goal ratio ≤ 1.02,
//!   printed beside the figure, not asserted;
//! - `bench: exit <kind> bastion=<cycles> bare=<cycles>`, per operation, for CPUID, port I/O
//!   (`pio`), Bastion's VERSION hypercall (bare: the #UD the instruction raises there, and its
//!   handler's return), a self IPI and an IPI to the other vCPU (each until its handler ran).
//!
//! Every run has a deadline and its emulator is killed at the end.

use anyhow::{bail, Result};
use qemu_tests::{BareKernel, Emulator, Platform, RunOptions};
use std::time::Duration;

const GOAL_CPU: f64 = 1.02;
/// The guest's name in Bastion (its output lines are `[bench] bench: ...`).
const CONFIG: &str = "[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"bench\"\nformat = \"multiboot\"\nkernel = \"guests/bench.bin\"\nmemory_mib = 32\nvcpus = 2\n";
const DEADLINE: Duration = Duration::from_secs(300);

/// The guest's figures in the order printed: (kind, name, cycles) from its `bench: <kind>
/// <name> cycles=<n>` lines, taken only from lines that start with `prefix` (Bastion tags a
/// guest's lines with `[<guest>] `; bare, there is no tag).
pub fn figures(transcript: &str, prefix: &str) -> Vec<(String, String, u64)> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix(prefix)?.strip_prefix("bench: "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (kind, name, cycles) = (w.next()?, w.next()?, w.next()?.strip_prefix("cycles=")?.parse().ok()?);
            Some((kind.to_string(), name.to_string(), cycles))
        })
        .collect()
}

pub fn cpu() -> Result<()> {
    let bench = qemu_tests::guests::guest_image("bench");
    let opts = RunOptions { smp: 2, ..RunOptions::default() };

    let dir = qemu_tests::work_dir("bench-cpu-bare");
    let mut emu = Emulator::start_bare(&BareKernel { kernel: &bench, cmdline: "", modules: &[] }, &dir, &opts);
    let code = emu.expect_bare_exit(DEADLINE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = emu.transcript();
    if code != 0 {
        bail!("the bench guest failed bare (exit code {code}):\n{out}");
    }
    let bare = figures(&out, "");

    let image = qemu_tests::image_with_files("bench-cpu", CONFIG, &[("guests/bench.bin", bench.as_path())]);
    let mut emu = Emulator::start(Platform::QemuBios, &image, &opts);
    let end = emu.expect_exit(DEADLINE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = emu.transcript();
    if end.status != bastion_core::exit::ExitStatus::Pass {
        bail!("the bench guest failed under Bastion:\n{out}");
    }
    let ours = figures(&out, "[bench] ");

    if bare.is_empty() || bare.len() != ours.len() {
        bail!("the two runs reported different figures: bare {bare:?}, Bastion {ours:?}");
    }
    for ((kind, name, b), (kind2, name2, o)) in bare.iter().zip(&ours) {
        if (kind, name) != (kind2, name2) {
            bail!("figures out of step: bare `{kind} {name}`, Bastion `{kind2} {name2}`");
        }
        match kind.as_str() {
            "cpu" => {
                let ratio = *o as f64 / (*b).max(1) as f64;
                println!("bench: cpu {name} bastion={o} bare={b} ratio={ratio:.3} (goal <= {GOAL_CPU})");
            }
            _ => println!("bench: {kind} {name} bastion={o} bare={b}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::figures;

    #[test]
    fn figures_are_read_from_the_guests_own_lines_only() {
        let bastion = "[INFO  cpu0] bench: cpu intloop cycles=9\n[bench] bench: cpu intloop cycles=120\n[bench] bench: exit ipi cycles=7000\n[bench] bench: PASS\n[other] bench: cpu sieve cycles=5";
        assert_eq!(figures(bastion, "[bench] "), vec![("cpu".into(), "intloop".into(), 120), ("exit".into(), "ipi".into(), 7000)]);
        let bare = "bench: cpu intloop cycles=100\nbench: exit self-ipi cycles=x\nbench: PASS";
        assert_eq!(figures(bare, ""), vec![("cpu".into(), "intloop".into(), 100)]);
    }
}
