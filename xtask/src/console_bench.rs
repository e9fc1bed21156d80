//! `cargo xtask bench console`: what the console costs the guests, by their own progress.
//!
//! - `bench: printing-neighbour slowdown=<x>`: a CPU-bound `worker` alone on CPU 1, then the
//!   same beside a `printer` flooding the console from CPU 0; slowdown = units alone / units
//!   beside the printer (goal ≤ 1.05).
//! - `bench: fairness <platform> guests=16 cpu_share=<x> max_min=<x>`: 16 `worker` guests, each
//!   printing a line a second, on 2 CPUs; cpu_share = their progress rates together / (2 × the
//!   rate of a worker alone on a CPU), max_min = the fastest / the slowest guest's rate (goals on
//!   Bochs: share ≥ 0.90, max/min ≤ 1.10). Rates count from when every guest has started.
//!
//! All runs of one platform use the same duration (`--fair-ms`), in one invocation.

use anyhow::{bail, Result};
use qemu_tests::{Platform, RunOptions};
use std::time::Duration;

/// Each guest's progress rate in units per second, from the `[<guest>] worker: units <n>` lines
/// it printed (one a second of its TSC time) after the last guest had started (`guest <name>:
/// starting`), so staggered start-ups do not count: (last - first) / (lines - 1). Guests with
/// fewer than two such lines are left out.
pub fn rates(transcript: &str) -> std::collections::BTreeMap<String, f64> {
    let lines: Vec<&str> = transcript.lines().collect();
    let start = lines.iter().rposition(|l| l.contains(": starting (")).map_or(0, |i| i + 1);
    rates_of(lines[start..].iter().copied())
}

/// Each guest's progress rate as [`rates`] gives it, over every line of `text` (the caller
/// chooses the window).
pub fn worker_rates(text: &str) -> std::collections::BTreeMap<String, f64> {
    rates_of(text.lines())
}

fn rates_of<'a>(lines: impl Iterator<Item = &'a str>) -> std::collections::BTreeMap<String, f64> {
    let mut seen: std::collections::BTreeMap<String, (u64, u64, u64)> = std::collections::BTreeMap::new();
    for line in lines {
        let Some(rest) = line.strip_prefix('[') else { continue };
        let Some((name, tail)) = rest.split_once("] worker: units ") else { continue };
        if name.contains(' ') {
            continue; // `[name history]` replays
        }
        if let Ok(n) = tail.trim().parse::<u64>() {
            let e = seen.entry(name.to_string()).or_insert((n, n, 0));
            e.1 = n;
            e.2 += 1;
        }
    }
    seen.into_iter().filter(|(_, (_, _, k))| *k >= 2).map(|(name, (first, last, k))| (name, (last - first) as f64 / (k - 1) as f64)).collect()
}

/// max / min of the figures (1.0 for an empty list; infinite if one is 0 and another not).
pub fn max_min(v: &[f64]) -> f64 {
    let max = v.iter().cloned().fold(f64::NAN, f64::max);
    let min = v.iter().cloned().fold(f64::NAN, f64::min);
    if v.is_empty() || max == 0.0 {
        return 1.0;
    }
    if min == 0.0 {
        return f64::INFINITY;
    }
    max / min
}

fn run(platform: Platform, name: &str, guests: &[(&str, &str, Option<u32>)], ms: u32) -> Result<String> {
    let mut cfg = format!("[hypervisor]\nexit_when_idle = true\n[debug]\nstop_after_ms = {ms}\n");
    for (guest, image, cpu) in guests {
        cfg += &format!("\n[[guest]]\nname = \"{guest}\"\nkernel = \"guests/{image}.bin\"\nmemory_mib = 4\n");
        if let Some(c) = cpu {
            cfg += &format!("affinity = [{c}]\n");
        }
    }
    let worker = qemu_tests::guests::guest_image("worker");
    let printer = qemu_tests::guests::guest_image("printer");
    let image = qemu_tests::image_with_files(name, &cfg, &[("guests/worker.bin", worker.as_path()), ("guests/printer.bin", printer.as_path())]);
    let opts = RunOptions { smp: 2, ..RunOptions::default() };
    let mut emu = qemu_tests::Emulator::start(platform, &image, &opts);
    emu.expect_exit(Duration::from_secs(1800)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(emu.transcript())
}

pub fn console(platforms: &[Platform], ms: u32) -> Result<()> {
    for &p in platforms {
        let alone = run(p, "bench-con-alone", &[("w", "worker", Some(1))], ms)?;
        let Some(&solo) = rates(&alone).get("w") else { bail!("no worker progress on {}:\n{alone}", p.name()) };
        let noisy = run(p, "bench-con-noisy", &[("w", "worker", Some(1)), ("p", "printer", Some(0))], ms)?;
        let Some(&beside) = rates(&noisy).get("w") else { bail!("no worker progress beside the printer on {}:\n{noisy}", p.name()) };
        println!("console, {}: worker alone {solo:.0} units/s, beside a printing guest {beside:.0} units/s", p.name());
        println!("bench: printing-neighbour {} slowdown={:.3}", p.name(), solo / beside.max(1.0));
        let names: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
        let guests: Vec<(&str, &str, Option<u32>)> = names.iter().map(|n| (n.as_str(), "worker", None)).collect();
        let many = run(p, "bench-con-16", &guests, ms)?;
        let got = rates(&many);
        let v: Vec<f64> = names.iter().map(|n| got.get(n).copied().unwrap_or(0.0)).collect();
        let share = v.iter().sum::<f64>() / (2.0 * solo);
        println!("console, {}: 16 printing workers on 2 CPUs, units/s: {:?}", p.name(), v.iter().map(|r| *r as u64).collect::<Vec<_>>());
        println!("bench: fairness {} guests=16 cpu_share={share:.3} max_min={:.3}", p.name(), max_min(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_only_after_the_last_start_and_skip_history() {
        let t = "[w1] worker: units 1\nguest w2: starting (4 MiB)\n[w1] worker: units 10\n[w2] worker: units 5\n[w1] worker: units 30\n[w2] worker: units 25\n[w1 history] worker: units 999\n[w1] worker: units 50\n";
        let r = rates(t);
        // w1: 10 -> 50 over 2 intervals; w2: 5 -> 25 over 1; the line before the start is out.
        assert_eq!(r.get("w1"), Some(&20.0));
        assert_eq!(r.get("w2"), Some(&20.0));
        assert_eq!(rates("guest a: starting (x)\n[a] worker: units 3\n").len(), 0, "one line gives no rate");
    }

    #[test]
    fn max_min_of_progress() {
        assert_eq!(max_min(&[10.0, 20.0, 15.0]), 2.0);
        assert_eq!(max_min(&[]), 1.0);
        assert!(max_min(&[0.0, 3.0]).is_infinite());
    }
}
