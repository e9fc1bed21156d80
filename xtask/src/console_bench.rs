//! `cargo xtask bench console`: what the console costs the guests, by their own progress.
//!
//! - `bench: printing-neighbour slowdown=<x>`: a CPU-bound `worker` alone on CPU 1, then the
//!   same beside a `printer` flooding the console from CPU 0; slowdown = units alone / units
//!   beside the printer (goal ≤ 1.05).
//! - `bench: fairness <platform> guests=16 cpu_share=<x> max_min=<x>`: 16 `worker` guests, each
//!   printing a line a second, on 2 CPUs; cpu_share = their units together / (2 × the units of
//!   a worker alone on a CPU for as long), max_min = the most / the fewest units of one guest
//!   (goals on Bochs: share ≥ 0.90, max/min ≤ 1.10).
//! All runs of one platform use the same duration (`--fair-ms`), in one invocation.

use anyhow::{bail, Result};
use qemu_tests::{Platform, RunOptions};
use std::time::Duration;

/// The last running total each guest printed (`[<guest>] worker: units <n>`), by guest name.
pub fn units(transcript: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in transcript.lines() {
        let Some(rest) = line.strip_prefix('[') else { continue };
        let Some((name, tail)) = rest.split_once("] worker: units ") else { continue };
        if name.contains(' ') {
            continue; // `[name history]` replays
        }
        if let Ok(n) = tail.trim().parse::<u64>() {
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// max / min of the figures (1.0 for an empty list; infinite if one is 0 and another not).
pub fn max_min(v: &[u64]) -> f64 {
    let (Some(&max), Some(&min)) = (v.iter().max(), v.iter().min()) else { return 1.0 };
    if min == 0 {
        return if max == 0 { 1.0 } else { f64::INFINITY };
    }
    max as f64 / min as f64
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
        let Some(&solo) = units(&alone).get("w") else { bail!("no worker progress on {}:\n{alone}", p.name()) };
        let noisy = run(p, "bench-con-noisy", &[("w", "worker", Some(1)), ("p", "printer", Some(0))], ms)?;
        let Some(&beside) = units(&noisy).get("w") else { bail!("no worker progress beside the printer on {}:\n{noisy}", p.name()) };
        println!("console, {}: worker alone {solo} units, beside a printing guest {beside} units in {ms} ms", p.name());
        println!("bench: printing-neighbour {} slowdown={:.3}", p.name(), solo as f64 / beside.max(1) as f64);
        let names: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
        let guests: Vec<(&str, &str, Option<u32>)> = names.iter().map(|n| (n.as_str(), "worker", None)).collect();
        let many = run(p, "bench-con-16", &guests, ms)?;
        let got = units(&many);
        let v: Vec<u64> = names.iter().map(|n| got.get(n).copied().unwrap_or(0)).collect();
        let share = v.iter().sum::<u64>() as f64 / (2.0 * solo as f64);
        println!("console, {}: 16 printing workers on 2 CPUs: {v:?} units in {ms} ms", p.name());
        println!("bench: fairness {} guests=16 cpu_share={share:.3} max_min={:.3}", p.name(), max_min(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_take_each_guests_last_total_and_skip_history() {
        let t = "[w1] worker: units 5\n[w2] worker: units 7\n[w1] worker: units 9\n[w1 history] worker: units 100\n[x] other: units 3\n";
        let u = units(t);
        assert_eq!(u.get("w1"), Some(&9));
        assert_eq!(u.get("w2"), Some(&7));
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn max_min_of_progress() {
        assert_eq!(max_min(&[10, 20, 15]), 2.0);
        assert_eq!(max_min(&[]), 1.0);
        assert!(max_min(&[0, 3]).is_infinite());
    }
}
