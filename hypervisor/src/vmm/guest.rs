//! What the hypervisor knows of each guest: its configuration, lifecycle state, vCPU slots,
//! devices and counters, and the table of all guests with the scheduler and the console.
//!
//! Locks: a vCPU's slot is held by the CPU running it for the whole slice; a guest's devices
//! (each behind its own lock) and control block are held briefly. The console lock is never
//! held while taking another.

use crate::virt::GuestVcpu;
use crate::vm::Vm;
use alloc::vec::Vec;
use bastion_core::config::GuestConfig;
use bastion_core::console::{Console, Event};
use bastion_core::sched::{Scheduler, VcpuId};
use bastion_core::virt::tlb::VcpuTlb;
use bastion_core::vm::devices::GuestDevices;
use bastion_core::vm::{ExitKind, StopReason, VcpuState};
use core::sync::atomic::{AtomicBool, AtomicU64};
use spin::{Mutex, Once};

/// vCPUs per guest in the scheduler's id space.
pub(super) const VCPU_STRIDE: u32 = 64;

pub(super) static HV: Once<Hv> = Once::new();

/// What a guest is doing, as the monitor shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Status {
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
    pub(super) fn name(self) -> &'static str {
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

    pub(super) fn is_final(self) -> bool {
        matches!(self, Status::Stopped | Status::Halted | Status::Crashed | Status::Exited)
    }
}

/// What follows a stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum After {
    Nothing,
    Restart,
}

/// Why a guest is being stopped.
#[derive(Clone, Debug)]
pub(super) enum Cause {
    Guest(StopReason),
    Killed,
    Reset,
    /// Its VM or a vCPU could not be created (the image does not load, no memory).
    NotStarted(alloc::string::String),
}

impl core::fmt::Display for Cause {
    /// What the `stopped:` line and the monitor's `list` say.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Cause::Guest(r) => write!(f, "{r}"),
            Cause::Killed => f.write_str("killed from the monitor"),
            Cause::Reset => f.write_str("reset from the monitor"),
            Cause::NotStarted(why) => write!(f, "could not start: {why}"),
        }
    }
}

pub(super) struct GuestCtl {
    pub(super) vm: Option<Vm>,
    pub(super) status: Status,
    pub(super) then: After,
    /// What the monitor asked for while the guest was already stopping (a `kill` during an
    /// `on_crash` restart, a `reset` during a kill): it decides what follows the stop.
    pub(super) monitor_then: Option<After>,
    /// Stopped, and `reap` is about to boot it again (between its stop line and the new
    /// boot): a monitor `kill` now cancels that restart.
    pub(super) restart_pending: bool,
    pub(super) cause: Option<Cause>,
    /// vCPU and RIP where the stop happened.
    pub(super) at: (u32, u64),
    /// vCPUs (bit n = vCPU n) that halted with interrupts disabled: nothing wakes them (no
    /// NMI source reaches a vCPU yet).
    pub(super) dead: u64,
    pub(super) boots: u32,
    pub(super) started_ns: u64,
}

pub(super) struct VcpuSlot {
    pub(super) backend: Option<GuestVcpu>,
    pub(super) state: VcpuState,
    /// The backend vCPU as the TLB knows it (new with each backend vCPU).
    pub(super) tlb: VcpuTlb,
}

pub(super) struct Guest {
    pub(super) cfg: GuestConfig,
    pub(super) index: usize,
    pub(super) files: crate::vm::GuestFiles,
    pub(super) affinity: u64,
    pub(super) vcpus: Vec<Mutex<VcpuSlot>>,
    pub(super) devices: GuestDevices,
    pub(super) ctl: Mutex<GuestCtl>,
    /// Set while the guest should not run (stopping, paused): CPUs check it after each exit.
    pub(super) hold: AtomicBool,
    pub(super) exits: [AtomicU64; ExitKind::COUNT],
    /// Held while moving the guest's UART output to the console, so two CPUs draining the
    /// same UART (the vCPU's after its write, CPU 0 on its console tick) cannot reorder it.
    pub(super) tx_lock: Mutex<()>,
    /// Console bytes typed for the guest that its UART had no room for yet.
    pub(super) pending_input: Mutex<Vec<u8>>,
    /// Per vCPU: it executed HLT with interrupts enabled and sleeps until an interrupt for it
    /// is pending (or its deadline comes).
    pub(super) waiting: Vec<AtomicBool>,
    /// Per vCPU: it halted with interrupts disabled, which only an NMI ends (SDM Vol. 2A HLT);
    /// its `GuestCtl::dead` bit is set meanwhile.
    pub(super) nmi_only: Vec<AtomicBool>,
}

pub(super) struct Hv {
    /// Console events that guest lifecycle changes produced (focus notices, the start-up
    /// announcement), performed by CPU 0's next console poll: the lifecycle never calls into
    /// the monitor, whose commands call into the lifecycle.
    pub(super) console_events: Mutex<Vec<Event>>,
    pub(super) guests: Vec<Guest>,
    pub(super) sched: Mutex<Scheduler>,
    pub(super) console: Mutex<Console>,
    pub(super) ncpus: usize,
    pub(super) exit_when_idle: bool,
    pub(super) stop_after_ns: Option<u64>,
    pub(super) next_tag: AtomicU64,
    pub(super) max_tag: u16,
    /// Each vCPU's run time and the clock when every autostart guest had started: the
    /// `stop_after_ms` report measures from here, so the start-up (guest RAM zeroed on CPU 0
    /// while other CPUs already run guests) does not skew the shares.
    pub(super) baseline: Mutex<(u64, Vec<u64>)>,
}

pub(super) fn hv() -> &'static Hv {
    HV.get().expect("hypervisor initialised")
}

pub(super) fn vcpu_id(guest: usize, vcpu: usize) -> VcpuId {
    VcpuId(guest as u32 * VCPU_STRIDE + vcpu as u32)
}

/// Runs `f` on the console and queues the events it returns for CPU 0's next console poll.
pub(super) fn console_update(f: impl FnOnce(&mut Console) -> Vec<Event>) {
    let Some(h) = HV.get() else { return };
    let events = f(&mut h.console.lock());
    h.console_events.lock().extend(events);
}
