//! The per-CPU loop: ask the scheduler what to run, run that vCPU until its slice ends
//! (VMX-preemption timer, or the local APIC timer on SVM), it halts, or its guest stops; CPU 0
//! also services the console and reaps stopped guests between slices.

use super::guest::{hv, vcpu_id, Cause, After, VcpuSlot, HV, VCPU_STRIDE};
use super::io::{interrupt_pending_now, timer_deadline, GuestIo, HostCpu};
use super::lifecycle::{reap, stop_guest};
use super::monitor::poll_console;
use super::percpu::{arm_slice_timer, kick, take_host_interrupts, this_cpu, PerCpu};
use crate::{println, serial, time};
use alloc::vec::Vec;
use bastion_core::exit::ExitStatus;
use bastion_core::sched::{Decision, State as SchedState, VcpuId};
use bastion_core::vm::{handle_exit, Action, Env, Exit, StopReason, Vcpu};
use core::sync::atomic::Ordering;

/// Idle CPUs wake up this often to poll the console and reap stopped guests.
pub(super) const IDLE_TICK_NS: u64 = 10_000_000;

/// How often CPU 0 returns to the console at least (output, and input: a 16-byte FIFO fills
/// in 1.39 ms at 115200 baud); the rule and its proof are in `bastion_core::serial_policy`.
pub(super) const CONSOLE_TICK_NS: u64 = bastion_core::serial_policy::CONSOLE_TICK_NS;

/// The shortest run a guest timer can ask for (20 kHz at most).
const MIN_TIMER_BUDGET_NS: u64 = 50_000;

/// How a slice ended.
pub(super) enum SliceEnd {
    Preempted,
    /// The guest gave up the rest of its slice.
    Yielded,
    Halted { interrupts_enabled: bool },
    Stop(StopReason),
    /// The guest is being stopped or paused by someone else.
    Held,
    /// The vCPU waits for a STARTUP IPI (an application processor before the guest starts
    /// it, or after an INIT).
    Parked,
}

pub(super) fn run_slice(cpu: &PerCpu, id: VcpuId, slice_ns: u64) {
    let h = hv();
    let (gi, vi) = ((id.0 / VCPU_STRIDE) as usize, (id.0 % VCPU_STRIDE) as usize);
    let Some(g) = h.guests.get(gi) else { return };
    if g.nmi_only[vi].swap(false, Ordering::SeqCst) {
        // An NMI woke it from a HLT with interrupts disabled: it can run (and halt) again.
        // Before the slot lock: `ctl` is taken before slot locks elsewhere.
        g.ctl.lock().dead &= !(1 << vi);
    }
    let mut slot = g.vcpus[vi].lock();
    let VcpuSlot { backend, state, tlb } = &mut *slot;
    let Some(vcpu) = backend.as_mut() else {
        // Torn down meanwhile.
        drop(slot);
        h.sched.lock().stop(id, time::now_ns());
        return;
    };
    // Running now: whatever woke it (an interrupt or its deadline), it no longer waits.
    g.waiting[vi].store(false, Ordering::SeqCst);
    let t0 = time::rdtsc();
    let flush = cpu.tlb_owners.lock().enter(cpu.index, tlb);
    if let Err(e) = vcpu.begin_slice(&cpu.backend, flush) {
        drop(slot);
        stop_guest(g, Cause::Guest(StopReason::EntryFailed(e)), After::Nothing, (vi as u32, 0));
        return;
    }
    let mut switch_cycles = time::rdtsc() - t0;
    let deadline = time::now_ns() + slice_ns;
    // The TPR as last loaded into the guest's CR8 view: an exit that finds another value
    // there means the guest wrote CR8, and the local APIC's TPR follows.
    let mut tpr_loaded;
    let end = loop {
        if g.hold.load(Ordering::Relaxed) {
            break SliceEnd::Held;
        }
        let now = time::now_ns();
        if now >= deadline {
            break SliceEnd::Preempted;
        }
        let (start, timer) = {
            // Timers first (PIT ticks, local APIC timers), then whatever the chip holds for
            // this vCPU: a STARTUP that ends its wait-for-SIPI, its local APIC's vectors, or
            // the PIC's through LINT0.
            let (mut chip, timer) = g.devices.advance_for(vi, now);
            let mut ram = crate::vm::GuestRam(vcpu.ram_view());
            let parked = chip.is_parked(vi);
            let start = chip.take_start(vi);
            if parked && start.is_none() {
                break SliceEnd::Parked;
            }
            if start.is_none() {
                // An NMI first (it outranks interrupts); an interrupt then waits for a window.
                bastion_core::vm::deliver_nmi(vcpu, &mut chip, vi);
                bastion_core::vm::deliver_interrupt(vcpu, &mut chip, vi);
                bastion_core::vm::pv_eoi::sync_to_guest(&mut state.pv_eoi, &chip, vi, &mut ram);
            }
            vcpu.set_cr8_tpr(chip.tpr(vi));
            (start, timer)
        };
        if let Some(vector) = start {
            if let Err(e) = vcpu.load_state(&bastion_core::loader::sipi_state(vector)) {
                break SliceEnd::Stop(StopReason::EntryFailed(e));
            }
        }
        tpr_loaded = vcpu.cr8_tpr();
        // CPU 0 services the console (output waiting for the line, and input unless COM1's
        // receive interrupt brings it): its runs end within CONSOLE_TICK_NS then, so the UART
        // never sits idle or overflows. Other CPUs
        // pump only when their guests exit anyway, so a CPU-bound neighbour of a printing
        // guest is not interrupted for the console.
        let mut budget = if cpu.index == 0 && serial::console_tick_needed() { (deadline - now).min(CONSOLE_TICK_NS) } else { deadline - now };
        // A guest timer due before then ends the run at its deadline, so its interrupt is
        // delivered on time rather than folded into a later one: a guest that keeps time by
        // counting ticks (Linux before it switches to kvm-clock) would lose the folded ones.
        // The floor bounds the exit rate a guest can cause with a tiny timer period.
        if let Some(at) = timer {
            budget = budget.min(at.saturating_sub(now).max(MIN_TIMER_BUDGET_NS));
        }
        let exit = vcpu.run(budget, arm_slice_timer);
        let tpr = vcpu.cr8_tpr();
        if tpr != tpr_loaded {
            g.devices.irq.lock().set_tpr(vi, tpr);
        }
        if state.pv_eoi.armed.is_some() {
            // An interrupt the guest ended through the paravirtual EOI flag ends now, before
            // anything looks at what the vCPU can take (a HLT that follows must see the
            // interrupts that EOI lets through, or it would sleep past them).
            let mut ram = crate::vm::GuestRam(vcpu.ram_view());
            bastion_core::vm::pv_eoi::sync_from_guest(&mut state.pv_eoi, &mut g.devices.irq.lock(), vi, &mut ram);
        }
        take_host_interrupts();
        serial::pump_if_due(time::now_ns());
        g.exits[exit.exit.kind() as usize].fetch_add(1, Ordering::Relaxed);
        if exit.exit == Exit::HostNmi {
            crate::interrupts::count_nmi();
        }
        let mut io = GuestIo { g, vcpu: vi };
        let mut ram = crate::vm::GuestRam(vcpu.ram_view());
        let mut env = Env { io: &mut io, mem: &mut ram, host: &HostCpu };
        match handle_exit(&exit, vcpu, state, &mut env) {
            Action::Resume => {}
            Action::Yield => break SliceEnd::Yielded,
            // Halted with an interrupt already pending: deliver it instead of sleeping.
            Action::Halt { interrupts_enabled: true } if interrupt_pending_now(g, vi) => {}
            Action::Halt { interrupts_enabled } => break SliceEnd::Halted { interrupts_enabled },
            Action::Stop(r) => {
                if r == StopReason::TripleFault {
                    // What the guest's last moments looked like: a triple fault is the end of
                    // an exception that could not be delivered (SDM Vol. 3A 6.15, #DF).
                    let st = vcpu.fault_state();
                    log::warn!("guest {}: vCPU {vi} triple-faulted: {}", g.cfg.name, st.describe());
                    // Whether the guest's own tables and IDT hold what that delivery needed:
                    // if they do, the usual ways a guest breaks it are ruled out.
                    log::warn!("guest {}: vCPU {vi} delivery walk: {}", g.cfg.name, st.walk_delivery(&mut ram));
                }
                break SliceEnd::Stop(r);
            }
        }
    };
    let rip = vcpu.rip();
    let t1 = time::rdtsc();
    vcpu.end_slice();
    switch_cycles += time::rdtsc() - t1;
    crate::virt::context::SWITCH_CYCLES.fetch_add(switch_cycles, Ordering::Relaxed);
    crate::virt::context::SLICES.fetch_add(1, Ordering::Relaxed);
    if cpu.last_vcpu.swap(id.0 as u64, Ordering::Relaxed) != id.0 as u64 {
        crate::virt::context::SWITCHES.fetch_add(1, Ordering::Relaxed);
    }
    drop(slot);
    let now = time::now_ns();
    match end {
        SliceEnd::Preempted => h.sched.lock().preempt(cpu.index, now),
        SliceEnd::Yielded => h.sched.lock().yield_now(cpu.index, now),
        SliceEnd::Held => {
            let mut s = h.sched.lock();
            if s.state(id) == Some(SchedState::Running { cpu: cpu.index }) {
                s.preempt(cpu.index, now);
            }
        }
        SliceEnd::Parked => {
            // Asleep like a halted vCPU; only a STARTUP wakes it (`IrqChip::wakes`).
            let chip = g.devices.irq.lock();
            if chip.wakes(vi) {
                h.sched.lock().preempt(cpu.index, now);
            } else {
                g.waiting[vi].store(true, Ordering::SeqCst);
                h.sched.lock().block(id, now);
            }
            drop(chip);
            if let Some(interrupts_enabled) = stuck(g) {
                report_stuck(g, now);
                stop_guest(g, Cause::Guest(StopReason::Halted { interrupts_enabled }), After::Nothing, (vi as u32, rip));
            }
        }
        SliceEnd::Halted { interrupts_enabled } => {
            // A halted vCPU leaves the scheduler until an interrupt for it wakes it (checked
            // under the chip lock, the same lock interrupt sources hold to wake it); with
            // interrupts disabled nothing ever does. Once every vCPU sleeps and no interrupt
            // source can reach any of them, the guest is finished.
            if interrupts_enabled {
                // A guest timer that will fire wakes it then, even with no other interrupt.
                let timer = timer_deadline(&g.devices, vi, now);
                let chip = g.devices.advance(now);
                if chip.wakes(vi) {
                    h.sched.lock().preempt(cpu.index, now);
                } else {
                    g.waiting[vi].store(true, Ordering::SeqCst);
                    match timer {
                        Some(at) => h.sched.lock().block_until(id, at, now),
                        None => h.sched.lock().block(id, now),
                    }
                }
            } else {
                // Only an NMI ends it (an NMI IPI from another vCPU: nothing else raises one).
                // Counted dead first, so a guest whose other vCPUs are stuck too is stopped;
                // an NMI already pending undoes it at once.
                g.ctl.lock().dead |= 1 << vi;
                let chip = g.devices.irq.lock();
                if chip.has_nmi(vi) {
                    drop(chip);
                    g.ctl.lock().dead &= !(1 << vi);
                    h.sched.lock().preempt(cpu.index, now);
                } else {
                    g.nmi_only[vi].store(true, Ordering::SeqCst);
                    g.waiting[vi].store(true, Ordering::SeqCst);
                    h.sched.lock().block(id, now);
                }
            }
            if let Some(interrupts_enabled) = stuck(g) {
                report_stuck(g, now);
                stop_guest(g, Cause::Guest(StopReason::Halted { interrupts_enabled }), After::Nothing, (vi as u32, rip));
            }
        }
        SliceEnd::Stop(r) => {
            stop_guest(g, Cause::Guest(r), After::Nothing, (vi as u32, rip));
        }
    }
}

/// Logs each vCPU's local APIC as the guest is found stuck: what a halted vCPU waited for
/// (an interrupt held back by the TPR or one in service shows in IRR and PPR).
fn report_stuck(g: &super::guest::Guest, now: u64) {
    let chip = g.devices.irq.lock();
    for v in 0..g.vcpus.len() {
        log::warn!("guest {}: vCPU {v} local APIC: {}", g.cfg.name, chip.lapic_summary(v, now));
    }
}

/// Whether nothing can ever run the guest again: every vCPU is halted, with interrupts
/// disabled or waiting for an interrupt that no source can send (`IrqChip::has_source`; no
/// vCPU runs to send an IPI or reprogram a device). Returns whether any of them waits with
/// interrupts enabled.
fn stuck(g: &super::guest::Guest) -> Option<bool> {
    let dead = g.ctl.lock().dead;
    let chip = g.devices.irq.lock();
    let mut any_waiting = false;
    for v in 0..g.vcpus.len() {
        if dead & (1 << v) != 0 {
            continue;
        }
        if !g.waiting[v].load(Ordering::SeqCst) || chip.has_source(v) {
            return None;
        }
        any_waiting = true;
    }
    Some(any_waiting)
}

/// Every CPU's main loop.
pub fn cpu_loop(index: usize) -> ! {
    // Wait until the boot CPU has built the guest table.
    while HV.get().is_none() {
        core::hint::spin_loop();
    }
    let h = hv();
    let cpu = this_cpu();
    let mut nmis_reported = 0;
    let mut input_lost_reported = 0;
    loop {
        if index == 0 {
            poll_console();
            reap();
            let lost = serial::input_overruns();
            if lost != input_lost_reported {
                log::warn!("console: {} typed byte(s) lost, the 4 KiB input buffer was full", lost - input_lost_reported);
                input_lost_reported = lost;
            }
            let nmis = crate::interrupts::nmi_count();
            if nmis != nmis_reported {
                log::warn!("host: {} NMI(s) received ({nmis} in all); handled by Bastion, guests continue", nmis - nmis_reported);
                nmis_reported = nmis;
            }
            // The screen, also when no vCPU runs (no VM exit pumps the console then; an idle
            // CPU 0 comes back every IDLE_TICK_NS, a tenth of a frame).
            crate::fbcon::refresh(time::now_ns());
            if let Some(limit) = h.stop_after_ns {
                if time::now_ns() >= limit {
                    finish_timed_run();
                }
            }
            if h.exit_when_idle && h.guests.iter().all(|g| g.ctl.lock().status.is_final()) {
                log::info!("all guests have ended; exiting as configured (exit_when_idle)");
                report_switches();
                report_stacks();
                crate::platform::exit(ExitStatus::Pass, "");
            }
        }
        crate::smp::check_stack(index);
        // Halted vCPUs whose guest timer is due become runnable (on whichever CPU suits them).
        let now = time::now_ns();
        let (decision, kicks, next) = {
            let mut sched = h.sched.lock();
            let kicks = sched.expire(now);
            (sched.pick_next(index, now), kicks, sched.next_deadline())
        };
        kicks.into_iter().for_each(kick);
        match decision {
            Decision::Run { vcpu, slice_ns } => run_slice(cpu, vcpu, slice_ns),
            Decision::Idle => {
                // Wake for the next guest timer, or the idle tick, whichever comes first; within
                // the console tick while output waits or on CPU 0 (input).
                let tick = if (index == 0 && serial::console_tick_needed()) || serial::output_pending() { CONSOLE_TICK_NS } else { IDLE_TICK_NS };
                let wait = next.map_or(tick, |d| d.saturating_sub(now).min(tick));
                arm_slice_timer(wait);
                x86_64::instructions::interrupts::enable_and_hlt();
                x86_64::instructions::interrupts::disable();
            }
        }
    }
}

/// How many slices ran, how many of them put a different vCPU on its CPU than the slice
/// before, and what a slice's context switch cost on average: the TSC cycles of
/// `begin_slice` + `end_slice` (VMCS/VMCB binding and the context the hardware does not
/// switch).
pub(super) fn report_switches() {
    use crate::virt::context::{SLICES, SWITCHES, SWITCH_CYCLES};
    let slices = SLICES.load(Ordering::Relaxed);
    let cycles = SWITCH_CYCLES.load(Ordering::Relaxed);
    println!(
        "bench: vCPU context switches: {} between vCPUs in {slices} slices ({} TSC cycles per slice to switch the context)",
        SWITCHES.load(Ordering::Relaxed),
        cycles / slices.max(1)
    );
}

/// How deep each application processor's stack has been (see `smp::check_stack`).
fn report_stacks() {
    for (cpu, peak) in crate::smp::stack_peaks() {
        log::info!("stack: CPU {cpu} used at most {} KiB of its {} KiB", peak.div_ceil(1024), crate::smp::AP_STACK_KIB);
    }
}

/// `[debug] stop_after_ms`: report each guest's share of CPU time, then end the run.
pub(super) fn finish_timed_run() -> ! {
    report_switches();
    let h = hv();
    let sched = h.sched.lock();
    let (since, base) = h.baseline.lock().clone();
    let mut base = base.into_iter();
    let mut shares = Vec::new();
    for g in &h.guests {
        let ns: u64 = (0..g.vcpus.len()).map(|v| sched.runtime_ns(vcpu_id(g.index, v)).saturating_sub(base.next().unwrap_or(0))).sum();
        shares.push(ns);
        println!("bench: guest {} ran {} ms on {} vCPU(s)", g.cfg.name, ns / 1_000_000, g.vcpus.len());
    }
    for c in 0..h.ncpus {
        println!("bench: cpu {c} busy {} ms, idle {} ms (since boot)", sched.cpu_busy_ns(c) / 1_000_000, sched.cpu_idle_ns(c) / 1_000_000);
    }
    println!(
        "bench: fairness max/min = {:.3} over the {} ms after every guest had started",
        bastion_core::sched::fairness(&shares),
        (time::now_ns() - since) / 1_000_000
    );
    drop(sched);
    crate::platform::exit(ExitStatus::Pass, "")
}
