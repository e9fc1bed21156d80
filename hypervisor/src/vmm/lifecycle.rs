//! A guest's life: built from the configuration at start, booted (memory, vCPUs, devices,
//! scheduler entries), stopped (by itself, a crash or the monitor: its vCPUs leave every CPU),
//! reaped by CPU 0 once no CPU holds any of its vCPUs (memory freed), and restarted when asked.

use super::guest::{console_update, hv, vcpu_id, After, Cause, Guest, GuestCtl, Hv, Status, VcpuSlot, HV};
use super::io::{drain_uart_all, HostCpu};
use super::percpu::{kick, this_cpu, CPUS, CPUS_READY, MAX_CPUS};
use crate::vm::{GuestFiles, Vm};
use crate::{println, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bastion_core::config::{Config, OnCrash, OnPowerOff, OnReboot};
use bastion_core::console::Console;
use bastion_core::sched::Scheduler;
use bastion_core::virt::tlb::VcpuTlb;
use bastion_core::vm::devices::GuestDevices;
use bastion_core::vm::{ExitKind, StopReason, VcpuState};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Builds the guest table from the configuration and starts the autostart guests. Runs on
/// CPU 0 after every CPU has called `init_cpu`.
pub fn start(config: &Config, images: Vec<Option<GuestFiles>>, online: usize) {
    // Give the APs a moment to register; a CPU that could not enable virtualization is left
    // out of every affinity mask, so nothing is ever queued where it cannot run.
    for _ in 0..1000 {
        if CPUS_READY.load(Ordering::SeqCst) >= online {
            break;
        }
        time::pit_delay_us(1000);
    }
    let all_cpus = (0..MAX_CPUS).filter(|&i| CPUS[i].is_completed()).fold(0u64, |m, i| m | (1 << i));
    let ncpus = 64 - all_cpus.leading_zeros() as usize;
    let mut console = Console::new(4096);
    let mut guests = Vec::new();
    for (cfg, image) in config.guests.iter().zip(images) {
        let Some(files) = image else { continue };
        let affinity = match &cfg.affinity {
            None => all_cpus,
            Some(list) => {
                let mask = list.iter().fold(0u64, |m, c| m | (1u64 << c)) & all_cpus;
                let dropped: Vec<&u32> = list.iter().filter(|c| (**c as usize) >= ncpus).collect();
                if !dropped.is_empty() {
                    log::warn!("guest {}: affinity names CPUs that do not exist ({dropped:?}); ignored", cfg.name);
                }
                if mask == 0 {
                    log::error!("guest {}: none of its affinity CPUs exist; not started", cfg.name);
                    continue;
                }
                mask
            }
        };
        let index = guests.len();
        let console_index = console.add_guest(&cfg.name);
        debug_assert_eq!(console_index, index);
        guests.push(Guest {
            cfg: cfg.clone(),
            index,
            files,
            affinity,
            vcpus: (0..cfg.vcpus).map(|v| Mutex::new(VcpuSlot { backend: None, state: VcpuState::new(v, 0, &HostCpu), tlb: VcpuTlb::new(0, 0) })).collect(),
            devices: GuestDevices::new(time::now_ns, time::unix_seconds, cfg.vcpus as usize),
            ctl: Mutex::new(GuestCtl {
                vm: None,
                status: Status::Stopped,
                then: After::Nothing,
                monitor_then: None,
                restart_pending: false,
                cause: None,
                at: (0, 0),
                dead: 0,
                boots: 0,
                started_ns: 0,
            }),
            hold: AtomicBool::new(true),
            exits: [const { AtomicU64::new(0) }; ExitKind::COUNT],
            tx_lock: Mutex::new(()),
            pending_input: Mutex::new(Vec::new()),
            waiting: (0..cfg.vcpus).map(|_| AtomicBool::new(false)).collect(),
            nmi_only: (0..cfg.vcpus).map(|_| AtomicBool::new(false)).collect(),
        });
    }
    let max_tag = CPUS[0].get().map_or(1, |c| c.backend.max_tag());
    HV.call_once(|| Hv {
        console_events: Mutex::new(Vec::new()),
        guests,
        sched: Mutex::new(Scheduler::new(ncpus.max(1), bastion_core::sched::DEFAULT_SLICE_NS)),
        console: Mutex::new(console),
        ncpus,
        exit_when_idle: config.hypervisor.exit_when_idle,
        stop_after_ns: config.debug.stop_after_ms.map(|ms| ms * 1_000_000),
        next_tag: AtomicU64::new(0),
        max_tag,
        baseline: Mutex::new((0, Vec::new())),
    });
    let h = hv();
    log::info!("memory: {} KiB free before any guest starts", crate::memory::free_frames() * 4);
    for g in &h.guests {
        if g.cfg.autostart {
            if !boot_guest(g, false) {
                // It could not start: no input focus for it (the console skips it).
                let _ = h.console.lock().set_accepts_input(g.index, false);
            }
        } else {
            log::info!("guest {}: not started (autostart = false); `reset {}` in the monitor starts it", g.cfg.name, g.cfg.name);
            // Not running: no input focus until it starts.
            let _ = h.console.lock().set_accepts_input(g.index, false);
        }
    }
    {
        let sched = h.sched.lock();
        let runtimes = h.guests.iter().flat_map(|g| (0..g.vcpus.len()).map(move |v| (g.index, v))).map(|(g, v)| sched.runtime_ns(vcpu_id(g, v))).collect();
        *h.baseline.lock() = (time::now_ns(), runtimes);
    }
    // The guest table, as the monitor's `list` prints it: what a person at the machine (or
    // at its screen console, which shows no guest output) sees running.
    super::monitor::run_command(bastion_core::console::Command::List);
    console_update(|c| c.announce());
}

/// Numbers every backend vCPU ever created, for `bastion_core::virt::tlb` (from 1: the
/// placeholder of a slot without a backend vCPU is 0).
static VCPU_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A VPID/ASID for a new VM: cycles through 1..=max, so a VM that is reset gets a fresh one
/// (and a CPU flushes a tag before a vCPU that did not use it last there enters with it).
pub(super) fn next_tag(h: &Hv) -> u16 {
    (h.next_tag.fetch_add(1, Ordering::Relaxed) % h.max_tag.max(1) as u64) as u16 + 1
}

/// Creates the guest's memory and vCPUs and hands them to the scheduler; `false` (logged, the
/// guest marked crashed) when it cannot start.
pub(super) fn boot_guest(g: &Guest, restart: bool) -> bool {
    let h = hv();
    let cpu = this_cpu();
    let mut ctl = g.ctl.lock();
    if !ctl.status.is_final() {
        // Started meanwhile (a monitor `reset` and an `on_crash` restart both decided to):
        // one boot only.
        return matches!(ctl.status, Status::Running | Status::Paused);
    }
    if restart && !ctl.restart_pending {
        // `reap`'s restart, cancelled by a monitor `kill` since the stop.
        log::warn!("guest {}: not restarted (killed from the monitor)", g.cfg.name);
        return false;
    }
    ctl.restart_pending = false;
    ctl.monitor_then = None;
    let vm = match Vm::new(&g.cfg, g.files, cpu.backend.npt_format(), next_tag(h)) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("guest {}: cannot start: {e}", g.cfg.name);
            ctl.status = Status::Crashed;
            ctl.cause = Some(Cause::NotStarted(format!("{e}")));
            return false;
        }
    };
    for (i, slot) in g.vcpus.iter().enumerate() {
        let mut slot = slot.lock();
        match cpu.backend.create_vcpu(&vm) {
            Ok(v) => {
                slot.backend = Some(v);
                slot.tlb = VcpuTlb::new(VCPU_SERIAL.fetch_add(1, Ordering::Relaxed), vm.tag);
            }
            Err(e) => {
                log::error!("guest {}: cannot create vCPU {i}: {e}", g.cfg.name);
                drop(slot);
                for s in &g.vcpus {
                    if let Some(b) = s.lock().backend.take() {
                        b.destroy();
                    }
                }
                vm.destroy();
                ctl.status = Status::Crashed;
                ctl.cause = Some(Cause::NotStarted(format!("vCPU {i}: {e}")));
                return false;
            }
        }
        slot.state = VcpuState::new(i as u32, time::tsc_khz().min(u32::MAX as u64) as u32, &HostCpu);
    }
    g.devices.reset();
    // A fresh machine has no keystrokes in its UART: what was typed for the last boot and
    // not yet taken is dropped.
    g.pending_input.lock().clear();
    if g.cfg.format != bastion_core::config::ImageFormat::Flat {
        // A PC runs only its boot processor at power-on; the others wait for the OS's
        // INIT-SIPI-SIPI (SDM Vol. 3A 9.4), as Linux and multiboot kernels expect. Flat
        // images keep "every vCPU starts at 0000:8000".
        let mut chip = g.devices.irq.lock();
        for v in 1..g.vcpus.len() {
            chip.park(v);
        }
    }
    ctl.boots += 1;
    log::info!(
        "guest {}: starting ({} MiB RAM, {} vCPU{}, {} bytes image, {}{})",
        g.cfg.name,
        vm.ram_bytes() >> 20,
        g.cfg.vcpus,
        if g.cfg.vcpus == 1 { "" } else { "s" },
        g.files.kernel.len(),
        vm.entry,
        if ctl.boots > 1 { format!(", boot {}", ctl.boots) } else { String::new() }
    );
    ctl.vm = Some(vm);
    ctl.status = Status::Running;
    ctl.dead = 0;
    for f in &g.nmi_only {
        f.store(false, Ordering::SeqCst);
    }
    ctl.cause = None;
    ctl.started_ns = time::now_ns();
    g.hold.store(false, Ordering::SeqCst);
    drop(ctl);
    let now = time::now_ns();
    let mut sched = h.sched.lock();
    let mut kicks = Vec::new();
    for v in 0..g.vcpus.len() {
        let id = vcpu_id(g.index, v);
        let _ = sched.remove(id, now);
        match sched.add(id, g.affinity, bastion_core::sched::DEFAULT_WEIGHT, now) {
            Ok(cpu) => kicks.push(cpu),
            Err(e) => log::error!("guest {}: scheduler refused vCPU {v}: {e:?}", g.cfg.name),
        }
    }
    drop(sched);
    for c in kicks {
        kick(c);
    }
    true
}

/// Begins stopping a guest: no vCPU of it runs again; CPU 0 frees it once all are off-CPU.
pub(super) fn stop_guest(g: &Guest, cause: Cause, then: After, at: (u32, u64)) -> Stop {
    let h = hv();
    {
        let mut ctl = g.ctl.lock();
        let monitor = matches!(cause, Cause::Killed | Cause::Reset);
        if ctl.status == Status::Stopping && monitor {
            // On its way out already (its own crash, say): the stop stays as it is, and the
            // monitor's latest word decides what follows it.
            ctl.monitor_then = Some(then);
            return Stop::AlreadyStopping;
        }
        if !matches!(ctl.status, Status::Running | Status::Paused) {
            if monitor && then == After::Nothing && ctl.restart_pending {
                // Stopped, and `reap` is about to boot it again: the kill cancels that.
                ctl.restart_pending = false;
                return Stop::RestartCancelled;
            }
            return Stop::NotRunning;
        }
        ctl.status = Status::Stopping;
        ctl.then = then;
        ctl.cause = Some(cause);
        ctl.at = at;
    }
    g.hold.store(true, Ordering::SeqCst);
    let now = time::now_ns();
    let kicks: Vec<usize> = {
        let mut sched = h.sched.lock();
        (0..g.vcpus.len()).filter_map(|v| sched.stop(vcpu_id(g.index, v), now)).collect()
    };
    for c in kicks {
        kick(c);
    }
    console_update(|c| c.set_accepts_input(g.index, false));
    Stop::Started
}

/// What [`stop_guest`] did, decided under the guest's lock (so the monitor says what happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Started,
    /// It was stopping already; the monitor's word decides what follows.
    AlreadyStopping,
    /// It was not running.
    NotRunning,
    /// It had stopped and was about to restart: it stays off.
    RestartCancelled,
}

/// Frees guests whose vCPUs have all left their CPUs; restarts those that asked for it.
pub(super) fn reap() {
    let h = hv();
    for g in &h.guests {
        if g.ctl.lock().status != Status::Stopping {
            continue;
        }
        // A vCPU slot still held means a CPU is finishing a slice with it: try again later.
        let mut slots = Vec::new();
        for s in &g.vcpus {
            match s.try_lock() {
                Some(s) => slots.push(s),
                None => break,
            }
        }
        if slots.len() != g.vcpus.len() {
            continue;
        }
        for s in slots.iter_mut() {
            if let Some(b) = s.backend.take() {
                b.destroy();
            }
        }
        drop(slots);
        let mut ctl = g.ctl.lock();
        if let Some(vm) = ctl.vm.take() {
            vm.destroy();
        }
        let cause = ctl.cause.clone();
        let (vcpu, rip) = ctl.at;
        let ran_ms = (time::now_ns() - ctl.started_ns) / 1_000_000;
        let exits = exit_summary(g);
        let (status, then) = match &cause {
            Some(Cause::Guest(StopReason::TestExit(_))) => (Status::Exited, ctl.then),
            Some(Cause::Guest(StopReason::Halted { .. })) => (Status::Halted, ctl.then),
            // A reboot the guest asked for is no crash: it restarts unless configured not to.
            Some(Cause::Guest(StopReason::Reboot)) if g.cfg.on_reboot == OnReboot::Restart => (Status::Stopped, After::Restart),
            Some(Cause::Guest(StopReason::Reboot)) => (Status::Stopped, ctl.then),
            // Powering off is the guest's orderly end: it stays off unless configured otherwise.
            Some(Cause::Guest(StopReason::PowerOff)) if g.cfg.on_poweroff == OnPowerOff::Restart => (Status::Stopped, After::Restart),
            Some(Cause::Guest(StopReason::PowerOff)) => (Status::Stopped, ctl.then),
            Some(Cause::Guest(_)) if g.cfg.on_crash == OnCrash::Restart => (Status::Crashed, After::Restart),
            Some(Cause::Guest(_)) => (Status::Crashed, ctl.then),
            Some(Cause::Killed) | None => (Status::Stopped, ctl.then),
            // (Not reached: a guest that could not start has no vCPUs to stop.)
            Some(Cause::NotStarted(_)) => (Status::Crashed, ctl.then),
            Some(Cause::Reset) => (Status::Stopped, After::Restart),
        };
        let by_monitor = ctl.monitor_then.take();
        let then = by_monitor.unwrap_or(then);
        ctl.status = status;
        ctl.restart_pending = then == After::Restart;
        drop(ctl);
        drain_uart_all(g);
        let rest = h.console.lock().flush_partial(g.index);
        if let Some(line) = rest {
            crate::serial::print_guest(format_args!("{line}\n"));
        }
        let what = cause.as_ref().map_or_else(|| "stopped".into(), |c| format!("{c}"));
        let line = format!(
            "guest {}: stopped: {what} (vCPU {vcpu}, RIP {rip:#x}); exits {exits}; ran {ran_ms} ms; memory freed, {} KiB free",
            g.cfg.name,
            crate::memory::free_frames() * 4
        );
        if status == Status::Exited && matches!(cause, Some(Cause::Guest(StopReason::TestExit(0)))) {
            log::info!("{line}");
        } else {
            log::warn!("{line}");
        }
        for e in &g.exits {
            e.store(0, Ordering::Relaxed);
        }
        if then == After::Restart {
            if by_monitor.is_some() {
                log::warn!("guest {}: restarting (reset from the monitor while it stopped)", g.cfg.name);
            } else if status == Status::Crashed {
                log::warn!("guest {}: restarting (on_crash = \"restart\")", g.cfg.name);
            }
            // Booted only if no monitor `kill` came since (`restart_pending`).
            let started = boot_guest(g, true);
            console_update(|c| c.set_accepts_input(g.index, started));
        }
    }
}

pub(super) fn exit_summary(g: &Guest) -> String {
    let mut stats = bastion_core::vm::ExitStats::default();
    for (i, e) in g.exits.iter().enumerate() {
        stats.counts[i] = e.load(Ordering::Relaxed);
    }
    format!("{stats}")
}

/// The monitor's pause and resume: the scheduler keeps paused vCPUs off every CPU.
pub(super) fn set_paused(g: &Guest, pause: bool) {
    let h = hv();
    let (from, to) = if pause { (Status::Running, Status::Paused) } else { (Status::Paused, Status::Running) };
    {
        let mut ctl = g.ctl.lock();
        if ctl.status != from {
            println!("{} is {}, not {}", g.cfg.name, ctl.status.name(), from.name());
            return;
        }
        ctl.status = to;
    }
    g.hold.store(pause, Ordering::SeqCst);
    let now = time::now_ns();
    let kicks: Vec<usize> = {
        let mut s = h.sched.lock();
        (0..g.vcpus.len())
            .filter_map(|v| if pause { s.pause(vcpu_id(g.index, v), now) } else { s.resume(vcpu_id(g.index, v), now) })
            .collect()
    };
    kicks.into_iter().for_each(kick);
    println!("{} {}", g.cfg.name, if pause { "paused" } else { "resumed" });
}
