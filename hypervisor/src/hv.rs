//! The running hypervisor: guests and their vCPUs, the per-CPU scheduling loop, and the serial
//! console with its monitor.
//!
//! Policy lives in `bastion_core` (scheduler, console multiplexer, exit handling, devices);
//! this module is the glue that runs it on real CPUs:
//! - every CPU runs [`cpu_loop`]: ask the scheduler what to run, run that vCPU until its slice
//!   ends (VMX-preemption timer, or the local APIC timer on SVM), it halts, or its guest stops;
//! - a guest that stops (test exit, crash, `kill`, `reset`) is marked, its vCPUs are taken off
//!   the scheduler and their CPUs kicked with an IPI; CPU 0 then frees its memory ("reaps" it)
//!   once no CPU holds any of its vCPUs, and restarts it when asked to;
//! - CPU 0 polls COM1 for input and feeds the console multiplexer; guest output goes through
//!   the multiplexer to COM1, one tagged line at a time.
//!
//! Locks: a vCPU's slot is held by the CPU running it for the whole slice; a guest's devices
//! and control block are held briefly. The console lock is never held while taking another.

use crate::virt::{Backend, GuestVcpu};
use crate::vm::Vm;
use crate::{lapic, println, serial, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bastion_core::config::{Config, GuestConfig, OnCrash};
use bastion_core::console::{format_list, format_stats, Command, Console, Event, GuestRow};
use bastion_core::exit::ExitStatus;
use bastion_core::sched::{Decision, Scheduler, State as SchedState, VcpuId};
use bastion_core::virt::VirtCaps;
use bastion_core::vm::devices::{GuestDevices, IoOutcome, PortIo};
use bastion_core::vm::{handle_exit, Action, Env, Exit, ExitKind, Host, StopReason, VcpuState, Vcpu};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

/// Vector of the local APIC timer (time slices on SVM, idle wake-ups).
pub const TIMER_VECTOR: u8 = 0xef;
/// Vector of the "kick" IPI: makes a CPU leave its guest and look at the scheduler again.
pub const KICK_VECTOR: u8 = 0xf0;
/// Vector that stops a CPU for good (the run is ending).
pub const HALT_VECTOR: u8 = 0xf1;
/// Idle CPUs wake up this often to poll the console and reap stopped guests.
const IDLE_TICK_NS: u64 = 10_000_000;
/// How often CPU 0 returns to the console at least (output, and input: a 16-byte FIFO fills
/// in 1.39 ms at 115200 baud); the rule and its proof are in `bastion_core::serial_policy`.
const CONSOLE_TICK_NS: u64 = bastion_core::serial_policy::CONSOLE_TICK_NS;
/// vCPUs per guest in the scheduler's id space.
const VCPU_STRIDE: u32 = 64;
pub const MAX_CPUS: usize = 64;

/// One CPU's hypervisor state.
pub struct PerCpu {
    pub index: usize,
    pub apic_id: u32,
    pub backend: Backend,
    /// The vCPU that ran the last slice here, to count switches between vCPUs.
    last_vcpu: AtomicU64,
}

static CPUS: [Once<PerCpu>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
/// APIC ID -> CPU index + 1 (0 = unknown).
static APIC_INDEX: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static LAPIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);
static HV: Once<Hv> = Once::new();
static CPUS_READY: AtomicUsize = AtomicUsize::new(0);

/// Registers the calling CPU and enables virtualization on it.
pub fn init_cpu(index: usize, caps: &VirtCaps) -> Result<(), String> {
    let apic_id = lapic::id();
    crate::virt::context::init_cpu();
    if index == 0 {
        log::info!("virt: guest extended state switched with {}", crate::virt::context::describe());
    }
    let backend = Backend::enable(caps)?;
    CPUS[index].call_once(|| PerCpu { index, apic_id, backend, last_vcpu: AtomicU64::new(u64::MAX) });
    APIC_INDEX[apic_id as usize & 0xff].store(index + 1, Ordering::SeqCst);
    CPUS_READY.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Index of the calling CPU (0 before `init_cpu` ran on it).
pub fn cpu_index() -> usize {
    APIC_INDEX[lapic::id() as usize & 0xff].load(Ordering::Relaxed).saturating_sub(1)
}

fn this_cpu() -> &'static PerCpu {
    CPUS[cpu_index()].get().expect("CPU registered before it runs guests")
}

/// Measures the local APIC timer against the PIT (boot CPU; all CPUs share the bus clock).
pub fn calibrate_timer() {
    LAPIC_TICKS_PER_MS.store((lapic::timer_ticks_per(10_000) / 10).max(1) as u64, Ordering::Relaxed);
}

/// Arms this CPU's local APIC timer to interrupt after `ns`. At least one tick: an initial
/// count of 0 stops the timer (SDM Vol. 3A 11.5.4), and a guest that never exits would then
/// keep the CPU for good.
pub fn arm_slice_timer(ns: u64) {
    let ticks = (ns as u128 * LAPIC_TICKS_PER_MS.load(Ordering::Relaxed) as u128 / 1_000_000).clamp(1, u32::MAX as u128);
    lapic::timer_oneshot(TIMER_VECTOR, ticks as u32);
}

/// Lets interrupts that arrived while a guest ran (timer, kicks) reach the host IDT, whose
/// handlers acknowledge them. Without this they would stay pending and end every later
/// entry at once.
fn take_host_interrupts() {
    // SAFETY: a one-instruction interrupt window; the handlers only acknowledge and return.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// What a guest is doing, as the monitor shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// Not started yet (autostart off), or killed.
    Stopped,
    Running,
    Paused,
    /// All vCPUs halted with interrupts disabled.
    Halted,
    /// Stopped by a crash.
    Crashed,
    /// Ended by its own test exit.
    Exited,
    /// Being taken down; `then` says what follows.
    Stopping,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Stopped => "stopped",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Halted => "halted",
            Status::Crashed => "crashed",
            Status::Exited => "exited",
            Status::Stopping => "stopping",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Status::Stopped | Status::Halted | Status::Crashed | Status::Exited)
    }
}

/// What follows a stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    Nothing,
    Restart,
}

/// Why a guest is being stopped.
#[derive(Clone, Debug)]
enum Cause {
    Guest(StopReason),
    Killed,
    Reset,
}

struct GuestCtl {
    vm: Option<Vm>,
    status: Status,
    then: After,
    cause: Option<Cause>,
    /// vCPU and RIP where the stop happened.
    at: (u32, u64),
    /// vCPUs that halted for good (nothing can wake them), and whether any of them had
    /// interrupts enabled (with no interrupt routed to it).
    halted: u32,
    halted_with_if: bool,
    boots: u32,
    started_ns: u64,
}

struct VcpuSlot {
    backend: Option<GuestVcpu>,
    state: VcpuState,
}

struct Guest {
    cfg: GuestConfig,
    index: usize,
    image: &'static [u8],
    affinity: u64,
    vcpus: Vec<Mutex<VcpuSlot>>,
    devices: Mutex<GuestDevices>,
    ctl: Mutex<GuestCtl>,
    /// Set while the guest should not run (stopping, paused): CPUs check it after each exit.
    hold: AtomicBool,
    exits: [AtomicU64; ExitKind::COUNT],
    /// Console bytes typed for the guest that its UART had no room for yet.
    pending_input: Mutex<Vec<u8>>,
    /// Per vCPU: it executed HLT with interrupts enabled and sleeps until an interrupt for it
    /// is pending (or its deadline comes).
    waiting: Vec<AtomicBool>,
}

struct Hv {
    guests: Vec<Guest>,
    sched: Mutex<Scheduler>,
    console: Mutex<Console>,
    ncpus: usize,
    exit_when_idle: bool,
    stop_after_ns: Option<u64>,
    next_tag: AtomicU64,
    max_tag: u16,
    /// Each vCPU's run time and the clock when every autostart guest had started: the
    /// `stop_after_ms` report measures from here, so the start-up (guest RAM zeroed on CPU 0
    /// while other CPUs already run guests) does not skew the shares.
    baseline: Mutex<(u64, Vec<u64>)>,
}

fn hv() -> &'static Hv {
    HV.get().expect("hypervisor initialised")
}

fn vcpu_id(guest: usize, vcpu: usize) -> VcpuId {
    VcpuId(guest as u32 * VCPU_STRIDE + vcpu as u32)
}

/// Builds the guest table from the configuration and starts the autostart guests. Runs on
/// CPU 0 after every CPU has called `init_cpu`.
pub fn start(config: &Config, images: Vec<Option<&'static [u8]>>, online: usize) {
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
        let Some(image) = image else { continue };
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
            image,
            affinity,
            vcpus: (0..cfg.vcpus).map(|v| Mutex::new(VcpuSlot { backend: None, state: VcpuState::new(v, 0, &HostCpu) })).collect(),
            devices: Mutex::new(GuestDevices::default()),
            ctl: Mutex::new(GuestCtl {
                vm: None,
                status: Status::Stopped,
                then: After::Nothing,
                cause: None,
                at: (0, 0),
                halted: 0,
                halted_with_if: false,
                boots: 0,
                started_ns: 0,
            }),
            hold: AtomicBool::new(true),
            exits: [const { AtomicU64::new(0) }; ExitKind::COUNT],
            pending_input: Mutex::new(Vec::new()),
            waiting: (0..cfg.vcpus).map(|_| AtomicBool::new(false)).collect(),
        });
    }
    let max_tag = CPUS[0].get().map_or(1, |c| c.backend.max_tag());
    HV.call_once(|| Hv {
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
            boot_guest(g);
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
    let events = h.console.lock().announce();
    perform(events);
}

/// A VPID/ASID for a new VM: cycles through 1..=max, so a VM that is reset gets a fresh one
/// (and each CPU flushes a tag the first time a vCPU uses it there).
fn next_tag(h: &Hv) -> u16 {
    (h.next_tag.fetch_add(1, Ordering::Relaxed) % h.max_tag.max(1) as u64) as u16 + 1
}

/// Creates the guest's memory and vCPUs and hands them to the scheduler.
fn boot_guest(g: &Guest) {
    let h = hv();
    let cpu = this_cpu();
    let mut ctl = g.ctl.lock();
    let vm = match Vm::new(&g.cfg, g.image, cpu.backend.npt_format(), next_tag(h)) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("guest {}: cannot start: {e}", g.cfg.name);
            ctl.status = Status::Crashed;
            return;
        }
    };
    for (i, slot) in g.vcpus.iter().enumerate() {
        let mut slot = slot.lock();
        match cpu.backend.create_vcpu(&vm) {
            Ok(v) => slot.backend = Some(v),
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
                return;
            }
        }
        slot.state = VcpuState::new(i as u32, time::tsc_khz().min(u32::MAX as u64) as u32, &HostCpu);
    }
    *g.devices.lock() = GuestDevices::with_clock(time::now_ns);
    ctl.boots += 1;
    log::info!(
        "guest {}: starting ({} MiB RAM, {} vCPU{}, {} bytes image, {}{})",
        g.cfg.name,
        vm.ram_bytes() >> 20,
        g.cfg.vcpus,
        if g.cfg.vcpus == 1 { "" } else { "s" },
        g.image.len(),
        vm.entry,
        if ctl.boots > 1 { format!(", boot {}", ctl.boots) } else { String::new() }
    );
    ctl.vm = Some(vm);
    ctl.status = Status::Running;
    ctl.halted = 0;
    ctl.halted_with_if = false;
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
}

/// Interrupts CPU `cpu` so it leaves its guest (or its idle wait) and asks the scheduler.
fn kick(cpu: usize) {
    if cpu == cpu_index() {
        return;
    }
    if let Some(c) = CPUS.get(cpu).and_then(|c| c.get()) {
        lapic::send_ipi(c.apic_id, KICK_VECTOR);
    }
}

/// Begins stopping a guest: no vCPU of it runs again; CPU 0 frees it once all are off-CPU.
fn stop_guest(g: &Guest, cause: Cause, then: After, at: (u32, u64)) {
    let h = hv();
    {
        let mut ctl = g.ctl.lock();
        if !matches!(ctl.status, Status::Running | Status::Paused) {
            return;
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
    perform_console(|c| c.set_accepts_input(g.index, false));
}

/// Frees guests whose vCPUs have all left their CPUs; restarts those that asked for it.
fn reap() {
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
            Some(Cause::Guest(_)) if g.cfg.on_crash == OnCrash::Restart => (Status::Crashed, After::Restart),
            Some(Cause::Guest(_)) => (Status::Crashed, ctl.then),
            Some(Cause::Killed) | None => (Status::Stopped, ctl.then),
            Some(Cause::Reset) => (Status::Stopped, After::Restart),
        };
        ctl.status = status;
        drop(ctl);
        let rest = h.console.lock().flush_partial(g.index);
        if let Some(line) = rest {
            println!("{line}");
        }
        let what = match &cause {
            Some(Cause::Guest(r)) => format!("{r}"),
            Some(Cause::Killed) => "killed from the monitor".into(),
            Some(Cause::Reset) => "reset from the monitor".into(),
            None => "stopped".into(),
        };
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
            if status == Status::Crashed {
                log::warn!("guest {}: restarting (on_crash = \"restart\")", g.cfg.name);
            }
            boot_guest(g);
            perform_console(|c| c.set_accepts_input(g.index, true));
        }
    }
}

fn exit_summary(g: &Guest) -> String {
    let mut stats = bastion_core::vm::ExitStats::default();
    for (i, e) in g.exits.iter().enumerate() {
        stats.counts[i] = e.load(Ordering::Relaxed);
    }
    format!("{stats}")
}

/// Runs `f` on the console and performs the events it returns (outside the lock).
fn perform_console(f: impl FnOnce(&mut Console) -> Vec<Event>) {
    let Some(h) = HV.get() else { return };
    let events = f(&mut h.console.lock());
    perform(events);
}

/// The guest side of port I/O: the guest's devices, with UART output sent to the console.
struct GuestIo<'a> {
    g: &'a Guest,
}

impl PortIo for GuestIo<'_> {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let v = {
            let mut d = self.g.devices.lock();
            let v = d.io_read(port, size);
            // A device access by any vCPU can raise an interrupt for another (SDM: the PIC's
            // INTR reaches vCPU 0 whoever touched the device): wake its target.
            wake_if_interrupted(self.g, &d);
            v
        };
        // A read may have made room in the receive FIFO: feed it what was typed meanwhile.
        feed_pending_input(self.g);
        v
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome {
        let (outcome, out) = {
            let mut d = self.g.devices.lock();
            let o = d.io_write(port, size, value);
            wake_if_interrupted(self.g, &d);
            (o, d.uart.take_output())
        };
        if !out.is_empty() {
            let lines = hv().console.lock().guest_output(self.g.index, &out);
            for l in lines {
                println!("{l}");
            }
        }
        outcome
    }
}

fn feed_pending_input(g: &Guest) {
    let mut pending = g.pending_input.lock();
    if !pending.is_empty() {
        let mut d = g.devices.lock();
        let n = d.receive_input(&pending);
        pending.drain(..n);
        wake_if_interrupted(g, &d);
    }
}

/// Whether vCPU `vcpu` of a guest has an interrupt to take: the PIC's output is wired to
/// vCPU 0, as the 8259's INTR pin is to the boot processor on a PC; no other source exists
/// yet (a virtual local APIC per vCPU will route to the others).
fn interrupt_pending(d: &GuestDevices, vcpu: usize) -> bool {
    vcpu == 0 && d.pic.has_interrupt()
}

/// `interrupt_pending` after bringing the guest's timers up to now.
fn interrupt_pending_now(g: &Guest, vcpu: usize) -> bool {
    let mut d = g.devices.lock();
    d.advance(time::now_ns());
    interrupt_pending(&d, vcpu)
}

/// When a guest timer will next raise an interrupt for vCPU `vcpu` (the PIT, through the PIC,
/// reaches vCPU 0 only).
fn timer_deadline(d: &GuestDevices, vcpu: usize, now: u64) -> Option<u64> {
    if vcpu == 0 {
        d.next_deadline(now)
    } else {
        None
    }
}

/// Whether any interrupt source can ever reach vCPU `vcpu`.
fn has_interrupt_source(vcpu: usize) -> bool {
    vcpu == 0
}

/// Wakes every vCPU of the guest that sleeps in HLT and now has an interrupt. Called with the
/// devices locked, as is the check before a vCPU blocks, so no wake-up is lost in between.
fn wake_if_interrupted(g: &Guest, d: &GuestDevices) {
    for (v, waiting) in g.waiting.iter().enumerate() {
        // The flag first: it is one load, and most device accesses happen with no vCPU asleep.
        if waiting.load(Ordering::SeqCst) && interrupt_pending(d, v) && waiting.swap(false, Ordering::SeqCst) {
            let kick_cpu = hv().sched.lock().wake(vcpu_id(g.index, v), time::now_ns());
            if let Some(c) = kick_cpu {
                kick(c);
            }
        }
    }
}

/// The host CPU as the exit handler sees it.
struct HostCpu;

impl Host for HostCpu {
    fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        let (a, b, c, d) = crate::cpu::cpuid(leaf, sub);
        [a, b, c, d]
    }
    fn rdtsc(&self) -> u64 {
        // SAFETY: RDTSC has no side effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    fn wbinvd(&self) {
        // SAFETY: writing back and invalidating caches is always safe, only slow.
        unsafe { core::arch::asm!("wbinvd", options(nostack)) };
    }
}

/// How a slice ended.
enum SliceEnd {
    Preempted,
    /// The guest gave up the rest of its slice.
    Yielded,
    Halted { interrupts_enabled: bool },
    Stop(StopReason),
    /// The guest is being stopped or paused by someone else.
    Held,
}

fn run_slice(cpu: &PerCpu, id: VcpuId, slice_ns: u64) {
    let h = hv();
    let (gi, vi) = ((id.0 / VCPU_STRIDE) as usize, (id.0 % VCPU_STRIDE) as usize);
    let Some(g) = h.guests.get(gi) else { return };
    let mut slot = g.vcpus[vi].lock();
    let VcpuSlot { backend, state } = &mut *slot;
    let Some(vcpu) = backend.as_mut() else {
        // Torn down meanwhile.
        drop(slot);
        h.sched.lock().stop(id, time::now_ns());
        return;
    };
    // Running now: whatever woke it (an interrupt or its deadline), it no longer waits.
    g.waiting[vi].store(false, Ordering::SeqCst);
    let t0 = time::rdtsc();
    if let Err(e) = vcpu.begin_slice(cpu.index, &cpu.backend) {
        drop(slot);
        stop_guest(g, Cause::Guest(StopReason::EntryFailed(e)), After::Nothing, (vi as u32, 0));
        return;
    }
    let mut switch_cycles = time::rdtsc() - t0;
    let deadline = time::now_ns() + slice_ns;
    let end = loop {
        if g.hold.load(Ordering::Relaxed) {
            break SliceEnd::Held;
        }
        let now = time::now_ns();
        if now >= deadline {
            break SliceEnd::Preempted;
        }
        if vi == 0 {
            // The PIC's output is wired to vCPU 0, as the 8259's INTR pin is to the boot
            // processor on a PC; the PIT's ticks reach the PIC first.
            let mut d = g.devices.lock();
            d.advance(now);
            bastion_core::vm::deliver_interrupt(vcpu, &mut d.pic);
        }
        // CPU 0 services the console (output waiting for the line, and input): its slices
        // end within CONSOLE_TICK_NS so the UART never sits idle or overflows. Other CPUs
        // pump only when their guests exit anyway, so a CPU-bound neighbour of a printing
        // guest is not interrupted for the console.
        let budget = if cpu.index == 0 { (deadline - now).min(CONSOLE_TICK_NS) } else { deadline - now };
        let exit = vcpu.run(budget, arm_slice_timer);
        take_host_interrupts();
        serial::pump_if_due(time::now_ns());
        g.exits[exit.exit.kind() as usize].fetch_add(1, Ordering::Relaxed);
        if exit.exit == Exit::HostNmi {
            crate::interrupts::count_nmi();
        }
        let mut io = GuestIo { g };
        let mut ram = crate::vm::GuestRam(vcpu.ram_view());
        let mut env = Env { io: &mut io, mem: &mut ram, host: &HostCpu };
        match handle_exit(&exit, vcpu, state, &mut env) {
            Action::Resume => {}
            Action::Yield => break SliceEnd::Yielded,
            // Halted with an interrupt already pending: deliver it instead of sleeping.
            Action::Halt { interrupts_enabled: true } if interrupt_pending_now(g, vi) => {}
            Action::Halt { interrupts_enabled } => break SliceEnd::Halted { interrupts_enabled },
            Action::Stop(r) => break SliceEnd::Stop(r),
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
        SliceEnd::Halted { interrupts_enabled } => {
            // A halted vCPU leaves the scheduler until an interrupt for it wakes it (checked
            // under the devices lock, the same lock interrupt sources take to wake it). A vCPU
            // that no interrupt can ever reach — interrupts disabled, or no source routed to
            // it — is finished, and the guest with it once all its vCPUs are.
            let wakeable = interrupts_enabled && has_interrupt_source(vi);
            if wakeable {
                let mut d = g.devices.lock();
                d.advance(now);
                if interrupt_pending(&d, vi) {
                    h.sched.lock().preempt(cpu.index, now);
                } else {
                    g.waiting[vi].store(true, Ordering::SeqCst);
                    // A guest timer that will fire wakes it then, even with no other interrupt.
                    match timer_deadline(&d, vi, now) {
                        Some(at) => h.sched.lock().block_until(id, at, now),
                        None => h.sched.lock().block(id, now),
                    }
                }
            } else {
                h.sched.lock().block(id, now);
                let all = {
                    let mut ctl = g.ctl.lock();
                    ctl.halted += 1;
                    ctl.halted_with_if |= interrupts_enabled;
                    ctl.halted as usize == g.vcpus.len()
                };
                if all {
                    let interrupts_enabled = g.ctl.lock().halted_with_if;
                    stop_guest(g, Cause::Guest(StopReason::Halted { interrupts_enabled }), After::Nothing, (vi as u32, rip));
                }
            }
        }
        SliceEnd::Stop(r) => stop_guest(g, Cause::Guest(r), After::Nothing, (vi as u32, rip)),
    }
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
            if let Some(limit) = h.stop_after_ns {
                if time::now_ns() >= limit {
                    finish_timed_run();
                }
            }
            if h.exit_when_idle && h.guests.iter().all(|g| g.ctl.lock().status.is_final()) {
                log::info!("all guests have ended; exiting as configured (exit_when_idle)");
                report_switches();
                crate::platform::exit(ExitStatus::Pass, "");
            }
        }
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
                let tick = if serial::output_pending() || index == 0 { CONSOLE_TICK_NS } else { IDLE_TICK_NS };
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
fn report_switches() {
    use crate::virt::context::{SLICES, SWITCHES, SWITCH_CYCLES};
    let slices = SLICES.load(Ordering::Relaxed);
    let cycles = SWITCH_CYCLES.load(Ordering::Relaxed);
    println!(
        "bench: vCPU context switches: {} between vCPUs in {slices} slices ({} TSC cycles per slice to switch the context)",
        SWITCHES.load(Ordering::Relaxed),
        cycles / slices.max(1)
    );
}

/// `[debug] stop_after_ms`: report each guest's share of CPU time, then end the run.
fn finish_timed_run() -> ! {
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

/// Reads what was typed on COM1 and hands it to the console multiplexer.
fn poll_console() {
    let h = hv();
    for g in &h.guests {
        feed_pending_input(g);
    }
    while let Some(b) = serial::try_read() {
        let events = h.console.lock().input(b);
        perform(events);
    }
}

/// Carries out console events: output lines, input for guests, monitor commands.
fn perform(events: Vec<Event>) {
    for e in events {
        match e {
            Event::ToGuest { guest, bytes } => {
                if let Some(g) = HV.get().and_then(|h| h.guests.get(guest)) {
                    g.pending_input.lock().extend_from_slice(&bytes);
                    feed_pending_input(g);
                }
            }
            Event::Notice(s) => println!("{s}"),
            Event::Replay { guest, lines } => {
                // Marked as history, so nobody (person or test) mistakes it for new output.
                let name = HV.get().and_then(|h| h.guests.get(guest)).map_or("?", |g| g.cfg.name.as_str());
                let live = format!("[{name}] ");
                for l in lines {
                    println!("[{name} history] {}", l.strip_prefix(&live).unwrap_or(&l));
                }
            }
            Event::Echo(bytes) => serial::write_raw(&bytes),
            Event::Reply(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Event::Command(c) => run_command(c),
        }
    }
}

/// The monitor's pause and resume: the scheduler keeps paused vCPUs off every CPU.
fn set_paused(g: &Guest, pause: bool) {
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

fn run_command(c: Command) {
    let h = hv();
    match c {
        Command::List => {
            let sched = h.sched.lock();
            let rows: Vec<GuestRow> = h
                .guests
                .iter()
                .map(|g| {
                    let mut cpus: Vec<usize> =
                        (0..g.vcpus.len()).filter_map(|v| sched.stats(vcpu_id(g.index, v)).map(|s| s.cpu)).collect();
                    cpus.sort_unstable();
                    cpus.dedup();
                    GuestRow {
                        name: g.cfg.name.clone(),
                        state: g.ctl.lock().status.name(),
                        vcpus: g.cfg.vcpus,
                        cpus: if cpus.is_empty() { "-".into() } else { cpus.iter().map(|c| format!("{c}")).collect::<Vec<_>>().join(",") },
                        memory_mib: g.cfg.memory_mib,
                        exits: g.exits.iter().map(|e| e.load(Ordering::Relaxed)).sum(),
                    }
                })
                .collect();
            drop(sched);
            for l in format_list(&rows) {
                println!("{l}");
            }
        }
        Command::Stats { guest } => {
            let g = &h.guests[guest];
            let counts: Vec<(&str, u64)> = ExitKind::ALL.iter().map(|k| (k.name(), g.exits[*k as usize].load(Ordering::Relaxed))).collect();
            for l in format_stats(&g.cfg.name, &counts) {
                println!("{l}");
            }
        }
        Command::Pause { guest } => set_paused(&h.guests[guest], true),
        Command::Resume { guest } => set_paused(&h.guests[guest], false),
        Command::Reset { guest } => {
            let g = &h.guests[guest];
            let status = g.ctl.lock().status;
            if status.is_final() {
                println!("{}: starting", g.cfg.name);
                boot_guest(g);
                perform_console(|c| c.set_accepts_input(g.index, true));
            } else {
                println!("{}: resetting", g.cfg.name);
                stop_guest(g, Cause::Reset, After::Restart, (0, 0));
            }
        }
        Command::Kill { guest } => {
            let g = &h.guests[guest];
            if g.ctl.lock().status.is_final() {
                println!("{} is not running", g.cfg.name);
                return;
            }
            println!("{}: killing", g.cfg.name);
            stop_guest(g, Cause::Killed, After::Nothing, (0, 0));
        }
    }
}
