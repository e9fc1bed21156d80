//! vCPU scheduler policy: which vCPU runs on which physical CPU, and for how long (pure logic).
//!
//! The kernel owns the mechanism — per-CPU loops, the preemption timer, IPIs, VM entry and
//! exit — and asks this module for decisions. Nothing here reads a clock: every call that
//! depends on time takes `now` (monotonic nanoseconds) from the caller, so the policy is
//! deterministic and the unit tests below simulate whole machines on the host.
//!
//! # Policy
//!
//! A reduced form of Linux's CFS / Xen's credit2:
//!
//! - **Per-CPU run queues.** Each physical CPU has a queue of runnable vCPUs ordered by
//!   virtual runtime, plus at most one running vCPU. The *load* of a CPU is the sum of the
//!   weights of its queued and running vCPUs.
//! - **Placement.** A vCPU that is added, woken or resumed goes to the allowed CPU with the
//!   smallest load; on a tie its last CPU wins (its cache is warm there), then the lowest
//!   CPU number.
//! - **Fairness.** A vCPU that ran `ran` ns gains `ran * 256 / weight` ns of virtual runtime
//!   (`vruntime`), and [`Scheduler::pick_next`] runs the queued vCPU with the smallest
//!   vruntime (ties: lowest [`VcpuId`]). Over time vCPUs sharing a CPU therefore receive CPU
//!   time in proportion to their weights (default [`DEFAULT_WEIGHT`]; equal weights, equal
//!   shares).
//! - **vruntime floor.** Each CPU keeps `min_vruntime`, a monotonic lower bound of the
//!   vruntimes there. Whenever a vCPU is put on a queue from outside it (added, woken,
//!   resumed, stolen) its vruntime is first carried over as *lag* relative to its old CPU's
//!   `min_vruntime` (vruntimes of different CPUs advance at different rates and are not
//!   comparable) and then raised to at least `min_vruntime - slice_ns` of the new CPU. A
//!   vCPU that slept for a long time thus gets at most one slice of credit — enough to run
//!   promptly after its interrupt — and cannot monopolize the CPU to "catch up".
//! - **Time slices.** A vCPU picked to run gets `slice_ns` (default [`DEFAULT_SLICE_NS`],
//!   never less than [`MIN_SLICE_NS`]). The kernel arms its host preemption timer for that
//!   long and on expiry calls [`Scheduler::preempt`] (or just [`Scheduler::pick_next`] again,
//!   which preempts implicitly). Preemption is driven by the *host* timer, which fires in VMX
//!   root / SVM host mode regardless of what the guest does: a vCPU spinning with interrupts
//!   disabled still loses the CPU at the end of its slice. The policy never relies on the
//!   guest yielding, halting or taking interrupts.
//! - **Blocking.** A guest executing HLT is [`Scheduler::block`]ed: charged for what it ran,
//!   taken off the run queues, and it costs nothing until [`Scheduler::wake`].
//! - **Wake-up kick.** `wake` (and `resume`) return `Some(cpu)` — the CPU the kernel should
//!   IPI so that it calls `pick_next` — exactly when that CPU is idle (nothing running), or
//!   when the woken vCPU's vruntime is *strictly smaller* than the running vCPU's vruntime
//!   including the time it has run so far in its current slice (the woken one would be picked
//!   first, so it should not wait for the slice to end). Otherwise `None`: it waits at most
//!   one slice.
//! - **Work stealing and balancing.** When `pick_next` finds its own queue empty it steals,
//!   before idling: from the most loaded other CPU (ties: lowest number) that has a queued
//!   vCPU allowed here, it takes the one with the smallest vruntime. When its queue is not
//!   empty it still pulls such a vCPU of weight `w` if the other CPU's load exceeds its own by
//!   at least `2 * w`: the move then strictly reduces the imbalance (the sum of squared loads
//!   drops), so vCPUs never ping-pong. This repairs imbalances left behind by removals (3 + 1
//!   becomes 2 + 2), but does not rotate vCPUs: 3 busy vCPUs on 2 CPUs stay 2 + 1 and get
//!   ½, ½ and 1 CPU. Fairness is exact within a CPU and approximate across CPUs.
//! - **Affinity** is a bitmask of allowed CPUs (bits beyond the machine's CPUs are ignored).
//!   It is checked on every placement and every steal, so a vCPU never runs elsewhere; an
//!   affinity naming no existing CPU is refused by [`Scheduler::add`].
//! - **Pause, stop, remove.** Paused and stopped vCPUs are on no queue and are never picked.
//!   If the vCPU is running when paused, stopped or removed, the call returns its CPU: the
//!   kernel must kick it to force a VM exit (the scheduler already treats it as not running).
//!   Pausing a halted vCPU remembers the halt: resuming it leaves it blocked until a wake.
//!
//! # Accounting
//!
//! Per vCPU: total run time and how often it was scheduled; per CPU: busy and idle time.
//! Time is charged at state changes (preempt, block, pause, ...), so the figures are exact up
//! to the last call that touched the vCPU or CPU. A CPU's busy/idle clock starts at its first
//! `pick_next`.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

/// Weight of an ordinary vCPU; weights are relative (512 gets twice the CPU of 256).
pub const DEFAULT_WEIGHT: u32 = 256;
/// Default time slice: 10 ms.
pub const DEFAULT_SLICE_NS: u64 = 10_000_000;
/// Shortest time slice accepted: 1 ms. Shorter slices would spend more time in VM exits and
/// timer interrupts than in guests; [`Scheduler::new`] raises smaller values to this.
pub const MIN_SLICE_NS: u64 = 1_000_000;
/// Most physical CPUs supported: affinity is a `u64` bitmask.
pub const MAX_CPUS: usize = 64;

/// A vCPU, named by the caller (opaque to the scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u32);

/// Scheduling state of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// On a run queue, waiting for a CPU.
    Runnable,
    /// Running on `cpu` (picked by `pick_next` and not preempted, blocked, ... since).
    Running { cpu: usize },
    /// Halted (HLT), waiting for an interrupt: on no queue until woken.
    Blocked,
    /// Paused by the monitor: never picked until resumed.
    Paused,
    /// Stopped for good: never picked again; kept for its statistics until removed.
    Stopped,
}

/// What a CPU should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Enter `vcpu` and arm the host preemption timer for `slice_ns`.
    Run { vcpu: VcpuId, slice_ns: u64 },
    /// Nothing runnable here (even after trying to steal): halt until kicked.
    Idle,
}

/// Why [`Scheduler::add`] refused a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedError {
    /// The affinity mask names no existing CPU.
    EmptyAffinity { affinity: u64, ncpus: usize },
    /// Weight 0 would mean "infinitely slow virtual time".
    ZeroWeight,
    /// The id is already known to the scheduler.
    AlreadyAdded(VcpuId),
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedError::EmptyAffinity { affinity, ncpus } => {
                write!(f, "affinity {affinity:#x} allows none of the {ncpus} CPUs")
            }
            SchedError::ZeroWeight => write!(f, "vCPU weight must be at least 1"),
            SchedError::AlreadyAdded(v) => write!(f, "vCPU {} is already scheduled", v.0),
        }
    }
}

/// Statistics and scheduling data of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuStats {
    pub state: State,
    /// The CPU it is queued or running on, or last was.
    pub cpu: usize,
    /// Total time run, in ns.
    pub runtime_ns: u64,
    /// Number of times `pick_next` chose it.
    pub scheduled: u64,
    /// Current virtual runtime (in its CPU's virtual time).
    pub vruntime: u64,
    pub weight: u32,
    /// Allowed CPUs (restricted to existing ones).
    pub affinity: u64,
}

#[derive(Debug)]
struct Vcpu {
    /// Allowed CPUs, already restricted to existing ones (never 0).
    affinity: u64,
    weight: u32,
    state: State,
    /// Queue it is on (Runnable), CPU it runs on (Running), else the CPU it last was on:
    /// its vruntime is in that CPU's virtual time.
    cpu: usize,
    vruntime: u64,
    /// Paused while blocked: resume must return it to Blocked, not make it runnable, or the
    /// guest would continue past its HLT without an interrupt.
    halted: bool,
    /// When its current run started (meaningful while Running).
    started: u64,
    /// While blocked: when a guest timer wakes it even without an interrupt.
    wake_at: Option<u64>,
    runtime_ns: u64,
    scheduled: u64,
}

#[derive(Debug, Default)]
struct Cpu {
    /// Runnable vCPUs, ordered by (vruntime, id): `first()` is the next to run.
    queue: BTreeSet<(u64, VcpuId)>,
    current: Option<VcpuId>,
    /// Monotonic lower bound of the vruntimes here (see the module doc).
    min_vruntime: u64,
    /// Start of the current busy or idle period; `None` before the CPU's first event.
    since: Option<u64>,
    busy_ns: u64,
    idle_ns: u64,
}

/// The scheduler: per-CPU run queues plus every known vCPU. See the module doc for the policy.
#[derive(Debug)]
pub struct Scheduler {
    slice_ns: u64,
    cpus: Vec<Cpu>,
    vcpus: BTreeMap<VcpuId, Vcpu>,
    /// Blocked vCPUs with a deadline, ordered by it.
    timers: BTreeSet<(u64, VcpuId)>,
}

/// Virtual time gained by running `ran_ns` at `weight`.
fn scaled(ran_ns: u64, weight: u32) -> u64 {
    // u128: ran * 256 must not overflow for absurd durations.
    let v = ran_ns as u128 * DEFAULT_WEIGHT as u128 / weight.max(1) as u128;
    v.min(u64::MAX as u128) as u64
}

/// Fairness of a set of shares: max / min (1.0 is perfectly fair). 1.0 for an empty slice or
/// all zeros; infinite when someone got nothing while another got something.
pub fn fairness(shares: &[u64]) -> f64 {
    let (Some(&max), Some(&min)) = (shares.iter().max(), shares.iter().min()) else {
        return 1.0;
    };
    if max == 0 {
        1.0
    } else if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    }
}

impl Scheduler {
    /// A scheduler for CPUs `0..ncpus`, all idle, with time slice `slice_ns` (raised to at
    /// least [`MIN_SLICE_NS`]).
    ///
    /// # Panics
    /// If `ncpus` is 0 or more than [`MAX_CPUS`] (a boot-time bug, not a runtime condition).
    pub fn new(ncpus: usize, slice_ns: u64) -> Self {
        assert!(
            (1..=MAX_CPUS).contains(&ncpus),
            "scheduler supports 1..={MAX_CPUS} CPUs, got {ncpus}"
        );
        Scheduler {
            slice_ns: slice_ns.max(MIN_SLICE_NS),
            cpus: (0..ncpus).map(|_| Cpu::default()).collect(),
            vcpus: BTreeMap::new(),
            timers: BTreeSet::new(),
        }
    }

    pub fn ncpus(&self) -> usize {
        self.cpus.len()
    }

    pub fn slice_ns(&self) -> u64 {
        self.slice_ns
    }

    fn all_cpus(&self) -> u64 {
        if self.cpus.len() == 64 {
            u64::MAX
        } else {
            (1u64 << self.cpus.len()) - 1
        }
    }

    /// Adds a runnable vCPU and queues it on the least loaded allowed CPU, which is returned;
    /// the kernel should kick that CPU if it is idle (`current(cpu)` is `None`).
    pub fn add(
        &mut self,
        vcpu: VcpuId,
        affinity: u64,
        weight: u32,
        now: u64,
    ) -> Result<usize, SchedError> {
        let _ = now; // Nothing is charged at creation; kept for symmetry with the other calls.
        let allowed = affinity & self.all_cpus();
        if allowed == 0 {
            return Err(SchedError::EmptyAffinity {
                affinity,
                ncpus: self.cpus.len(),
            });
        }
        if weight == 0 {
            return Err(SchedError::ZeroWeight);
        }
        if self.vcpus.contains_key(&vcpu) {
            return Err(SchedError::AlreadyAdded(vcpu));
        }
        let cpu = self.choose_cpu(allowed, None);
        self.vcpus.insert(
            vcpu,
            Vcpu {
                affinity: allowed,
                weight,
                state: State::Blocked,
                cpu,
                vruntime: 0,
                halted: false,
                started: 0,
                wake_at: None,
                runtime_ns: 0,
                scheduled: 0,
            },
        );
        // A new vCPU starts from vruntime 0 in `cpu`'s time; the floor lifts it to
        // min_vruntime - slice like any newly runnable vCPU.
        self.place_on(vcpu, cpu);
        Ok(cpu)
    }

    /// Chooses what `cpu` runs next. If a vCPU is still running there, it is preempted first
    /// (charged and requeued). An empty queue triggers work stealing; otherwise a clearly
    /// busier CPU may hand over one vCPU (see the module doc). Out-of-range CPUs get `Idle`.
    pub fn pick_next(&mut self, cpu: usize, now: u64) -> Decision {
        if cpu >= self.cpus.len() {
            return Decision::Idle;
        }
        self.preempt(cpu, now);
        // Closes the gap since the last event as idle time (nothing is running now).
        self.close_period(cpu, now);
        let idle = self.cpus[cpu].queue.is_empty();
        self.pull(cpu, idle);
        let Some((_, id)) = self.cpus[cpu].queue.pop_first() else {
            return Decision::Idle;
        };
        let v = self.vcpus.get_mut(&id).expect("queued vCPU is known");
        v.state = State::Running { cpu };
        v.started = now;
        v.scheduled += 1;
        self.cpus[cpu].current = Some(id);
        self.update_min(cpu);
        Decision::Run {
            vcpu: id,
            slice_ns: self.slice_ns,
        }
    }

    /// The running vCPU's slice on `cpu` ended: charge it and put it back on the queue.
    /// Nothing happens if `cpu` runs nothing. The kernel then calls `pick_next`.
    pub fn preempt(&mut self, cpu: usize, now: u64) {
        let Some(id) = self.cpus.get(cpu).and_then(|c| c.current) else {
            return;
        };
        self.stop_running(id, now, State::Runnable);
        self.enqueue(id, cpu);
    }

    /// The running vCPU on `cpu` gives up the rest of its slice (a yield hypercall): it is
    /// charged and queued behind every vCPU waiting on `cpu`, so one of them runs next even if
    /// the yielder has used less CPU time (as Linux's `sched_yield` skips the yielder).
    pub fn yield_now(&mut self, cpu: usize, now: u64) {
        let Some(id) = self.cpus.get(cpu).and_then(|c| c.current) else {
            return;
        };
        self.stop_running(id, now, State::Runnable);
        if let Some(&(last, _)) = self.cpus[cpu].queue.last() {
            let v = self.vcpus.get_mut(&id).expect("running vCPU is known");
            v.vruntime = v.vruntime.max(last.saturating_add(1));
        }
        self.enqueue(id, cpu);
    }

    /// The vCPU halted (HLT): charge what it ran and take it off the CPU and the queues until
    /// [`Scheduler::wake`]. Ignored unless it is running or runnable.
    pub fn block(&mut self, vcpu: VcpuId, now: u64) {
        match self.vcpus.get(&vcpu).map(|v| v.state) {
            Some(State::Running { .. }) => self.stop_running(vcpu, now, State::Blocked),
            Some(State::Runnable) => {
                self.dequeue(vcpu);
                self.set_state(vcpu, State::Blocked);
            }
            _ => {}
        }
    }

    /// Like [`Scheduler::block`], and the vCPU also wakes by itself at `deadline` (a guest
    /// timer that will fire then): [`Scheduler::expire`] wakes it, [`Scheduler::next_deadline`]
    /// tells an idle CPU when to look. A wake before the deadline cancels it.
    pub fn block_until(&mut self, vcpu: VcpuId, deadline: u64, now: u64) {
        self.block(vcpu, now);
        if self.vcpus.get(&vcpu).map(|v| v.state) == Some(State::Blocked) {
            self.cancel_timer(vcpu);
            if let Some(v) = self.vcpus.get_mut(&vcpu) {
                v.wake_at = Some(deadline);
            }
            self.timers.insert((deadline, vcpu));
        }
    }

    fn cancel_timer(&mut self, vcpu: VcpuId) {
        if let Some(d) = self.vcpus.get_mut(&vcpu).and_then(|v| v.wake_at.take()) {
            self.timers.remove(&(d, vcpu));
        }
    }

    /// Wakes every vCPU whose deadline has come; returns the CPUs to kick.
    pub fn expire(&mut self, now: u64) -> Vec<usize> {
        let mut kicks = Vec::new();
        while let Some(&(d, id)) = self.timers.first() {
            if d > now {
                break;
            }
            // Taken off here, not left to `wake`: each pass of the loop removes one timer,
            // so it ends whatever the wake does.
            self.timers.pop_first();
            if let Some(v) = self.vcpus.get_mut(&id) {
                v.wake_at = None;
            }
            if let Some(cpu) = self.wake(id, now) {
                kicks.push(cpu);
            }
        }
        kicks
    }

    /// The earliest deadline of a blocked vCPU.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|(d, _)| *d)
    }

    /// An interrupt is pending for a blocked vCPU: queue it on the least loaded allowed CPU
    /// (preferring its last one). Returns the CPU to kick, if any (see the module doc). A wake
    /// of a paused, halted vCPU only cancels the halt; other wakes are ignored.
    pub fn wake(&mut self, vcpu: VcpuId, now: u64) -> Option<usize> {
        self.cancel_timer(vcpu);
        let v = self.vcpus.get_mut(&vcpu)?;
        match v.state {
            State::Blocked => self.make_runnable(vcpu, now),
            State::Paused => {
                v.halted = false;
                None
            }
            _ => None,
        }
    }

    /// The monitor pauses the vCPU. Returns its CPU if it was running there: kick it to force
    /// a VM exit.
    pub fn pause(&mut self, vcpu: VcpuId, now: u64) -> Option<usize> {
        match self.vcpus.get(&vcpu)?.state {
            State::Running { cpu } => {
                self.stop_running(vcpu, now, State::Paused);
                self.vcpus.get_mut(&vcpu)?.halted = false;
                Some(cpu)
            }
            State::Runnable => {
                self.dequeue(vcpu);
                self.set_state(vcpu, State::Paused);
                self.vcpus.get_mut(&vcpu)?.halted = false;
                None
            }
            State::Blocked => {
                self.set_state(vcpu, State::Paused);
                self.vcpus.get_mut(&vcpu)?.halted = true;
                None
            }
            State::Paused | State::Stopped => None,
        }
    }

    /// The monitor resumes a paused vCPU: it becomes runnable (like a wake, with the same
    /// kick rule), or blocked again if it was halted when paused. Other states: ignored.
    pub fn resume(&mut self, vcpu: VcpuId, now: u64) -> Option<usize> {
        let v = self.vcpus.get_mut(&vcpu)?;
        if v.state != State::Paused {
            return None;
        }
        if v.halted {
            v.halted = false;
            v.state = State::Blocked;
            return None;
        }
        self.make_runnable(vcpu, now)
    }

    /// Stops the vCPU for good (its statistics stay readable). Returns its CPU if it was
    /// running there: kick it to force a VM exit.
    pub fn stop(&mut self, vcpu: VcpuId, now: u64) -> Option<usize> {
        self.cancel_timer(vcpu);
        match self.vcpus.get(&vcpu)?.state {
            State::Running { cpu } => {
                self.stop_running(vcpu, now, State::Stopped);
                Some(cpu)
            }
            State::Runnable => {
                self.dequeue(vcpu);
                self.set_state(vcpu, State::Stopped);
                None
            }
            State::Blocked | State::Paused => {
                self.set_state(vcpu, State::Stopped);
                None
            }
            State::Stopped => None,
        }
    }

    /// Forgets the vCPU entirely (it may be added again). Returns its CPU if it was running
    /// there: kick it to force a VM exit.
    pub fn remove(&mut self, vcpu: VcpuId, now: u64) -> Option<usize> {
        let kick = self.stop(vcpu, now);
        self.vcpus.remove(&vcpu);
        kick
    }

    /// State of a vCPU, `None` if unknown.
    pub fn state(&self, vcpu: VcpuId) -> Option<State> {
        self.vcpus.get(&vcpu).map(|v| v.state)
    }

    /// The vCPU `cpu` is running, `None` if idle (or out of range).
    pub fn current(&self, cpu: usize) -> Option<VcpuId> {
        self.cpus.get(cpu).and_then(|c| c.current)
    }

    /// Total time the vCPU has run, charged up to its last state change (0 if unknown).
    pub fn runtime_ns(&self, vcpu: VcpuId) -> u64 {
        self.vcpus.get(&vcpu).map_or(0, |v| v.runtime_ns)
    }

    /// How many times the vCPU was picked to run (0 if unknown).
    pub fn scheduled_count(&self, vcpu: VcpuId) -> u64 {
        self.vcpus.get(&vcpu).map_or(0, |v| v.scheduled)
    }

    /// Everything known about one vCPU.
    pub fn stats(&self, vcpu: VcpuId) -> Option<VcpuStats> {
        self.vcpus.get(&vcpu).map(|v| VcpuStats {
            state: v.state,
            cpu: v.cpu,
            runtime_ns: v.runtime_ns,
            scheduled: v.scheduled,
            vruntime: v.vruntime,
            weight: v.weight,
            affinity: v.affinity,
        })
    }

    /// Time `cpu` spent running vCPUs, up to its last event.
    pub fn cpu_busy_ns(&self, cpu: usize) -> u64 {
        self.cpus.get(cpu).map_or(0, |c| c.busy_ns)
    }

    /// Time `cpu` spent with nothing to run, from its first `pick_next` to its last event.
    pub fn cpu_idle_ns(&self, cpu: usize) -> u64 {
        self.cpus.get(cpu).map_or(0, |c| c.idle_ns)
    }

    /// Load of `cpu`: sum of the weights of its queued and running vCPUs.
    pub fn load(&self, cpu: usize) -> u64 {
        let Some(c) = self.cpus.get(cpu) else {
            return 0;
        };
        let w = |id: &VcpuId| self.vcpus.get(id).map_or(0, |v| v.weight as u64);
        c.current.iter().map(w).sum::<u64>() + c.queue.iter().map(|(_, id)| w(id)).sum::<u64>()
    }

    /// Number of vCPUs queued (not running) on `cpu`.
    pub fn queued(&self, cpu: usize) -> usize {
        self.cpus.get(cpu).map_or(0, |c| c.queue.len())
    }

    // ----- internals -----

    /// Least loaded CPU in `allowed`; ties go to `last`, then to the lowest number.
    fn choose_cpu(&self, allowed: u64, last: Option<usize>) -> usize {
        let mut best: Option<(u64, usize)> = None;
        for cpu in (0..self.cpus.len()).filter(|c| allowed & (1 << c) != 0) {
            let load = self.load(cpu);
            let better = match best {
                None => true,
                Some((bl, bc)) => {
                    load < bl || (load == bl && Some(cpu) == last && Some(bc) != last)
                }
            };
            if better {
                best = Some((load, cpu));
            }
        }
        best.expect("affinity is never empty").1
    }

    /// Adds the time since the CPU's last event to its busy or idle total.
    fn close_period(&mut self, cpu: usize, now: u64) {
        let c = &mut self.cpus[cpu];
        if let Some(since) = c.since {
            let d = now.saturating_sub(since);
            if c.current.is_some() {
                c.busy_ns += d;
            } else {
                c.idle_ns += d;
            }
        }
        c.since = Some(now.max(c.since.unwrap_or(0)));
    }

    fn update_min(&mut self, cpu: usize) {
        let c = &self.cpus[cpu];
        let running = c
            .current
            .and_then(|id| self.vcpus.get(&id))
            .map(|v| v.vruntime);
        let queued = c.queue.first().map(|&(vr, _)| vr);
        let lowest = match (running, queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = lowest {
            let c = &mut self.cpus[cpu];
            c.min_vruntime = c.min_vruntime.max(m);
        }
    }

    fn set_state(&mut self, id: VcpuId, state: State) {
        if let Some(v) = self.vcpus.get_mut(&id) {
            v.state = state;
        }
    }

    /// Charges a running vCPU up to `now`, frees its CPU and gives it `state`.
    fn stop_running(&mut self, id: VcpuId, now: u64, state: State) {
        let v = self.vcpus.get_mut(&id).expect("running vCPU is known");
        let cpu = v.cpu;
        let ran = now.saturating_sub(v.started);
        v.runtime_ns = v.runtime_ns.saturating_add(ran);
        v.vruntime = v.vruntime.saturating_add(scaled(ran, v.weight));
        v.state = state;
        self.close_period(cpu, now); // still counts as busy: current is set
        self.cpus[cpu].current = None;
        self.update_min(cpu);
    }

    /// Puts a vCPU whose vruntime is already in `cpu`'s time on `cpu`'s queue.
    fn enqueue(&mut self, id: VcpuId, cpu: usize) {
        let v = self.vcpus.get_mut(&id).expect("vCPU is known");
        v.state = State::Runnable;
        v.cpu = cpu;
        self.cpus[cpu].queue.insert((v.vruntime, id));
        self.update_min(cpu);
    }

    fn dequeue(&mut self, id: VcpuId) {
        let v = &self.vcpus[&id];
        self.cpus[v.cpu].queue.remove(&(v.vruntime, id));
    }

    /// Moves a vCPU that is on no queue into `dst`'s queue: its lag relative to its old CPU's
    /// min_vruntime carries over, then the floor `min_vruntime - slice` applies.
    fn place_on(&mut self, id: VcpuId, dst: usize) {
        let slice = self.slice_ns;
        let v = self.vcpus.get_mut(&id).expect("vCPU is known");
        let lag = v.vruntime as i128 - self.cpus[v.cpu].min_vruntime as i128;
        let dst_min = self.cpus[dst].min_vruntime;
        let carried = (dst_min as i128 + lag).clamp(0, u64::MAX as i128) as u64;
        v.vruntime = carried.max(dst_min.saturating_sub(slice));
        self.enqueue(id, dst);
    }

    /// Blocked/paused → runnable on the best allowed CPU; returns the CPU to kick, if any.
    fn make_runnable(&mut self, id: VcpuId, now: u64) -> Option<usize> {
        let v = &self.vcpus[&id];
        let dst = self.choose_cpu(v.affinity, Some(v.cpu));
        self.place_on(id, dst);
        let woken = self.vcpus[&id].vruntime;
        match self.cpus[dst].current {
            None => Some(dst),
            Some(cur) => {
                let c = &self.vcpus[&cur];
                let cur_now = c
                    .vruntime
                    .saturating_add(scaled(now.saturating_sub(c.started), c.weight));
                (woken < cur_now).then_some(dst)
            }
        }
    }

    /// Steals (`idle`) or balances one queued vCPU from another CPU onto `cpu`. Sources are
    /// tried from the most loaded; from each, the allowed queued vCPU with the smallest
    /// vruntime. Balancing requires the source's load to exceed ours by twice its weight.
    fn pull(&mut self, cpu: usize, idle: bool) -> bool {
        let here = 1u64 << cpu;
        let my_load = self.load(cpu);
        let mut sources: Vec<(u64, usize)> = (0..self.cpus.len())
            // (A CPU with an empty queue offers no candidate below.)
            .filter(|&c| c != cpu)
            .map(|c| (self.load(c), c))
            .collect();
        sources.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (load, src) in sources {
            let cand = self.cpus[src]
                .queue
                .iter()
                .map(|&(_, id)| id)
                .find(|id| self.vcpus[id].affinity & here != 0);
            let Some(id) = cand else { continue };
            let w = self.vcpus[&id].weight as u64;
            if !idle && load < my_load + 2 * w {
                continue;
            }
            self.dequeue(id);
            self.place_on(id, cpu);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    #[test]
    fn errors_say_what_was_refused() {
        assert_eq!(SchedError::EmptyAffinity { affinity: 0x4, ncpus: 2 }.to_string(), "affinity 0x4 allows none of the 2 CPUs");
        assert_eq!(SchedError::ZeroWeight.to_string(), "vCPU weight must be at least 1");
        assert_eq!(SchedError::AlreadyAdded(VcpuId(7)).to_string(), "vCPU 7 is already scheduled");
    }

    #[test]
    fn a_busy_cpu_pulls_only_when_the_source_is_heavier_by_twice_the_candidates_weight() {
        // CPU 0: B (movable, weight 1024) and A (pinned, weight `a`) queued; CPU 1: X (pinned,
        // 1024). CPU 1 has work, so it balances rather than steals: it takes B only if CPU 0's
        // load exceeds its own by at least 2 x 1024 (the rule of `pull`).
        for (a, pulled) in [(1500u32, false), (2047, false), (2048, true), (3000, true)] {
            let mut s = Scheduler::new(2, 10 * MS);
            assert_eq!(s.add(VcpuId(2), 0b11, 1024, 0).unwrap(), 0);
            assert_eq!(s.add(VcpuId(1), 0b01, a, 0).unwrap(), 0);
            assert_eq!(s.add(VcpuId(3), 0b10, 1024, 0).unwrap(), 1);
            assert_eq!((s.load(0), s.load(1)), (1024 + u64::from(a), 1024));
            let _ = s.pick_next(1, MS);
            let on = s.stats(VcpuId(2)).unwrap().cpu;
            assert_eq!(on == 1, pulled, "A weighs {a}: CPU 0's load {} against CPU 1's 1024", 1024 + a);
        }
    }

    #[test]
    fn a_queued_vcpu_that_halts_leaves_the_queue_until_woken() {
        // One CPU, two vCPUs: 1 runs, 2 waits in the queue. 2 halts (its HLT exit was taken
        // before it was queued behind 1): it must not be picked while blocked.
        let mut s = Scheduler::new(1, 10 * MS);
        s.add(VcpuId(1), 1, DEFAULT_WEIGHT, 0).unwrap();
        s.add(VcpuId(2), 1, DEFAULT_WEIGHT, 0).unwrap();
        let Decision::Run { vcpu: first, .. } = s.pick_next(0, 0) else { panic!("nothing to run") };
        let other = if first == VcpuId(1) { VcpuId(2) } else { VcpuId(1) };
        assert_eq!(s.state(other), Some(State::Runnable));
        s.block(other, MS);
        assert_eq!(s.state(other), Some(State::Blocked));
        for t in 2..6 {
            s.preempt(0, t * 10 * MS);
            assert!(matches!(s.pick_next(0, t * 10 * MS), Decision::Run { vcpu, .. } if vcpu == first), "a blocked vCPU was picked");
        }
        s.wake(other, 60 * MS);
        s.preempt(0, 70 * MS);
        assert!(matches!(s.pick_next(0, 70 * MS), Decision::Run { vcpu, .. } if vcpu == other), "woken, it runs (it is behind in virtual time)");
    }

    const MS: u64 = 1_000_000;

    /// Drives the scheduler like the kernel would: every simulated millisecond, each CPU whose
    /// slice expired is preempted and picks again, and idle CPUs look for work. Every vCPU is
    /// busy (never halts on its own); tests block/wake/pause explicitly. Invariants are
    /// checked after every step.
    struct Sim {
        s: Scheduler,
        now: u64,
        slice_end: Vec<u64>,
        affinity: Map<VcpuId, u64>,
        /// Bitmask of the CPUs each vCPU was ever picked on.
        ran_on: Map<VcpuId, u64>,
    }

    impl Sim {
        fn new(ncpus: usize, slice_ms: u64) -> Self {
            Sim {
                s: Scheduler::new(ncpus, slice_ms * MS),
                now: 0,
                slice_end: vec![0; ncpus],
                affinity: Map::new(),
                ran_on: Map::new(),
            }
        }

        fn add(&mut self, id: u32, affinity: u64, weight: u32) -> usize {
            self.affinity.insert(VcpuId(id), affinity);
            self.s.add(VcpuId(id), affinity, weight, self.now).unwrap()
        }

        fn run_ms(&mut self, ms: u64) {
            for _ in 0..ms {
                for cpu in 0..self.s.ncpus() {
                    let cur = self.s.current(cpu);
                    if cur.is_some() && self.now < self.slice_end[cpu] {
                        continue;
                    }
                    if cur.is_some() {
                        self.s.preempt(cpu, self.now);
                    }
                    if let Decision::Run { vcpu, slice_ns } = self.s.pick_next(cpu, self.now) {
                        self.slice_end[cpu] = self.now + slice_ns;
                        *self.ran_on.entry(vcpu).or_default() |= 1 << cpu;
                    }
                }
                self.check();
                self.now += MS;
            }
        }

        /// Charges the running vCPUs up to now (as a timer expiry would).
        fn settle(&mut self) {
            for cpu in 0..self.s.ncpus() {
                self.s.preempt(cpu, self.now);
            }
        }

        fn check(&self) {
            for cpu in 0..self.s.ncpus() {
                if let Some(v) = self.s.current(cpu) {
                    assert_eq!(self.s.state(v), Some(State::Running { cpu }));
                    assert_ne!(
                        self.affinity[&v] & (1 << cpu),
                        0,
                        "{v:?} runs on disallowed CPU {cpu}"
                    );
                }
            }
            for &v in self.affinity.keys() {
                if let Some(State::Running { cpu }) = self.s.state(v) {
                    assert_eq!(self.s.current(cpu), Some(v));
                }
            }
        }

        fn runtimes(&self, ids: &[u32]) -> Vec<u64> {
            ids.iter().map(|&i| self.s.runtime_ns(VcpuId(i))).collect()
        }
    }

    fn deltas(after: &[u64], before: &[u64]) -> Vec<u64> {
        after.iter().zip(before).map(|(a, b)| a - b).collect()
    }

    #[test]
    fn fairness_is_max_over_min() {
        assert_eq!(fairness(&[100, 100, 100]), 1.0);
        assert_eq!(fairness(&[200, 100, 150]), 2.0);
        assert_eq!(fairness(&[]), 1.0);
        assert_eq!(fairness(&[0, 0]), 1.0);
        assert!(fairness(&[0, 5]).is_infinite());
    }

    #[test]
    fn four_equal_vcpus_on_two_cpus_share_equally() {
        let mut sim = Sim::new(2, 10);
        for i in 0..4 {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(1000);
        sim.settle();
        let r = sim.runtimes(&[0, 1, 2, 3]);
        assert!(fairness(&r) <= 1.05, "{r:?}");
        // Work-conserving: both CPUs busy the whole second.
        assert_eq!(r.iter().sum::<u64>(), 2000 * MS);
        assert_eq!(sim.s.cpu_busy_ns(0) + sim.s.cpu_busy_ns(1), 2000 * MS);
    }

    #[test]
    fn six_vcpus_on_two_cpus_all_progress() {
        let mut sim = Sim::new(2, 10);
        for i in 0..6 {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(1000);
        sim.settle();
        let r = sim.runtimes(&[0, 1, 2, 3, 4, 5]);
        assert!(r.iter().all(|&t| t >= 300 * MS), "{r:?}");
        assert!(fairness(&r) <= 1.05, "{r:?}");
    }

    #[test]
    fn many_more_vcpus_than_cpus() {
        let mut sim = Sim::new(4, 5);
        let ids: Vec<u32> = (0..13).collect();
        for &i in &ids {
            sim.add(i, 0b1111, DEFAULT_WEIGHT);
        }
        sim.run_ms(1000);
        sim.settle();
        let r = sim.runtimes(&ids);
        // 13 on 4: three queues of 3 and one of 4 → shares 1/4..1/3 of a CPU.
        assert!(r.iter().all(|&t| t >= 240 * MS), "{r:?}");
        assert_eq!(r.iter().sum::<u64>(), 4000 * MS);
        for cpu in 0..4 {
            assert_eq!(sim.s.cpu_idle_ns(cpu), 0);
        }
    }

    #[test]
    fn weights_512_vs_256_get_two_to_one() {
        let mut sim = Sim::new(1, 10);
        sim.add(0, 0b1, 512);
        sim.add(1, 0b1, 256);
        sim.run_ms(1500);
        sim.settle();
        let r = sim.runtimes(&[0, 1]);
        let ratio = r[0] as f64 / r[1] as f64;
        assert!((ratio - 2.0).abs() <= 0.05, "{r:?} ratio {ratio}");
    }

    #[test]
    fn weighted_placement_across_cpus() {
        // The heavy vCPU fills CPU 0 alone; the two light ones share CPU 1.
        let mut sim = Sim::new(2, 10);
        assert_eq!(sim.add(0, 0b11, 512), 0);
        assert_eq!(sim.add(1, 0b11, 256), 1);
        assert_eq!(sim.add(2, 0b11, 256), 1);
        sim.run_ms(1000);
        sim.settle();
        let r = sim.runtimes(&[0, 1, 2]);
        assert_eq!(r, vec![1000 * MS, 500 * MS, 500 * MS]);
    }

    #[test]
    fn pinned_vcpus_never_run_elsewhere_even_when_another_cpu_idles() {
        let mut sim = Sim::new(2, 10);
        for i in 0..3 {
            assert_eq!(sim.add(i, 0b01, DEFAULT_WEIGHT), 0);
        }
        let free = VcpuId(9);
        assert_eq!(sim.add(9, 0b11, DEFAULT_WEIGHT), 1);
        sim.run_ms(50);
        sim.s.block(free, sim.now);
        // CPU 1 now polls pick_next every ms: it tries to steal and must find nothing.
        let idle_before = sim.s.cpu_idle_ns(1);
        sim.run_ms(500);
        sim.settle();
        for i in 0..3 {
            assert_eq!(sim.ran_on[&VcpuId(i)], 0b01, "vCPU {i} ran off CPU 0");
            assert!(sim.s.runtime_ns(VcpuId(i)) > 150 * MS);
        }
        assert!(sim.s.cpu_idle_ns(1) - idle_before >= 499 * MS);
        // The unpinned one, woken, still may go to either CPU; it picks idle CPU 1.
        assert_eq!(sim.s.wake(free, sim.now), Some(1));
    }

    #[test]
    fn idle_cpu_steals_smallest_vruntime_from_busiest_cpu() {
        let mut s = Scheduler::new(3, 10 * MS);
        // Heavy pinned vCPUs make CPUs 1 and 2 look loaded, so the movable ones go to CPU 0.
        s.add(VcpuId(100), 0b010, 4096, 0).unwrap();
        s.add(VcpuId(101), 0b100, 4096, 0).unwrap(); // busiest, but not stealable to CPU 1
        for i in 0..3 {
            assert_eq!(s.add(VcpuId(i), 0b111, 256, 0).unwrap(), 0);
        }
        // Give the movable vCPUs different vruntimes on CPU 0.
        let mut now = 0;
        for ran in [3, 7, 1] {
            let Decision::Run { vcpu, .. } = s.pick_next(0, now) else {
                panic!()
            };
            assert!(vcpu.0 < 3);
            now += ran * MS;
            s.preempt(0, now);
        }
        // One of them is now running on CPU 0; the other two are queued there.
        let Decision::Run { vcpu: running, .. } = s.pick_next(0, now) else {
            panic!()
        };
        let queued: Vec<VcpuId> = (0..3).map(VcpuId).filter(|&v| v != running).collect();
        let want = *queued
            .iter()
            .min_by_key(|v| (s.stats(**v).unwrap().vruntime, v.0))
            .unwrap();
        // CPU 1 has nothing runnable (its vCPU is removed): it must steal, not idle.
        s.remove(VcpuId(100), now);
        assert_eq!(
            s.pick_next(1, now),
            Decision::Run {
                vcpu: want,
                slice_ns: 10 * MS
            }
        );
        assert_eq!(s.state(want), Some(State::Running { cpu: 1 }));
        assert_eq!(s.queued(0), 1);
    }

    #[test]
    fn idle_cpu_steals_from_the_most_loaded_cpu() {
        let mut s = Scheduler::new(3, 10 * MS);
        // A heavy vCPU pinned to CPU 2 keeps the others off it until it is removed.
        s.add(VcpuId(100), 0b100, 4096, 0).unwrap();
        let cpus: Vec<usize> = (0..5)
            .map(|i| s.add(VcpuId(i), 0b111, 256, 0).unwrap())
            .collect();
        assert_eq!(cpus, vec![0, 1, 0, 1, 0]); // CPU 0: load 3, CPU 1: load 2
        s.pick_next(0, 0);
        s.pick_next(1, 0);
        s.remove(VcpuId(100), 0);
        let Decision::Run { vcpu, .. } = s.pick_next(2, 0) else {
            panic!("should steal")
        };
        assert!(
            vcpu == VcpuId(2) || vcpu == VcpuId(4),
            "stole {vcpu:?}, not from CPU 0"
        );
        assert_eq!((s.load(0), s.load(1), s.load(2)), (512, 512, 256));
    }

    #[test]
    fn migrated_vcpu_keeps_its_lag_not_its_old_cpus_clock() {
        // Virtual time runs at different speeds on different CPUs: alone on CPU 0, A's
        // vruntime grows twice as fast as B's and C's, which share CPU 1.
        let mut sim = Sim::new(2, 10);
        let a = VcpuId(0);
        sim.add(0, 0b11, DEFAULT_WEIGHT);
        sim.add(1, 0b11, DEFAULT_WEIGHT);
        sim.add(2, 0b10, DEFAULT_WEIGHT);
        sim.run_ms(2000);
        sim.s.block(a, sim.now);
        // A heavy vCPU pinned to CPU 0 makes A wake onto CPU 1.
        sim.add(3, 0b01, 1024);
        assert_eq!(sim.s.wake(a, sim.now), None);
        assert_eq!(sim.s.stats(a).unwrap().cpu, 1);
        let before = sim.runtimes(&[0, 1, 2]);
        sim.run_ms(300);
        sim.settle();
        // Carrying A's absolute vruntime (2 s vs ~1 s there) would keep it off CPU 1 for 1 s.
        let d = deltas(&sim.runtimes(&[0, 1, 2]), &before);
        assert!(d.iter().all(|&t| t >= 80 * MS), "{d:?}");
    }

    #[test]
    fn blocked_vcpu_gets_no_runtime_and_wakes_on_allowed_cpu() {
        let mut sim = Sim::new(4, 10);
        for i in 0..4 {
            sim.add(i, 0b1111, DEFAULT_WEIGHT);
        }
        let pinned = VcpuId(7);
        sim.add(7, 0b0100, DEFAULT_WEIGHT);
        sim.run_ms(100);
        sim.s.block(pinned, sim.now);
        assert_eq!(sim.s.state(pinned), Some(State::Blocked));
        let before = sim.s.runtime_ns(pinned);
        assert!(before > 0);
        sim.run_ms(500);
        assert_eq!(sim.s.runtime_ns(pinned), before);
        assert_eq!(sim.s.state(pinned), Some(State::Blocked));
        sim.s.wake(pinned, sim.now);
        assert_eq!(sim.s.state(pinned), Some(State::Runnable));
        assert_eq!(sim.s.stats(pinned).unwrap().cpu, 2);
        sim.run_ms(200);
        assert!(sim.s.runtime_ns(pinned) > before);
        assert_eq!(sim.ran_on[&pinned], 0b0100);
    }

    #[test]
    fn a_yielding_vcpu_lets_the_others_on_its_cpu_run_first() {
        let mut sim = Sim::new(1, 10);
        for i in 0..3 {
            sim.add(i, 1, DEFAULT_WEIGHT);
        }
        // Each yields right after being picked: all three take turns, none runs twice in a row.
        let mut order = Vec::new();
        for _ in 0..9 {
            let Decision::Run { vcpu, .. } = sim.s.pick_next(0, sim.now) else { panic!("idle") };
            order.push(vcpu.0);
            sim.now += 1000;
            sim.s.yield_now(0, sim.now);
        }
        for w in order.windows(3) {
            let mut w = w.to_vec();
            w.sort_unstable();
            assert_eq!(w, [0, 1, 2], "{order:?}");
        }
        // Alone on its CPU, a yielder simply runs again.
        let mut solo = Sim::new(1, 10);
        solo.add(5, 1, DEFAULT_WEIGHT);
        solo.s.pick_next(0, 0);
        solo.s.yield_now(0, 10);
        assert!(matches!(solo.s.pick_next(0, 10), Decision::Run { vcpu: VcpuId(5), .. }));
    }

    #[test]
    fn a_yielder_goes_behind_a_waiting_vcpu_that_has_run_longer() {
        let mut s = Scheduler::new(1, 10 * MS);
        let (a, b) = (VcpuId(0), VcpuId(1));
        s.add(a, 1, DEFAULT_WEIGHT, 0).unwrap();
        s.add(b, 1, DEFAULT_WEIGHT, 0).unwrap();
        assert!(matches!(s.pick_next(0, 0), Decision::Run { vcpu, .. } if vcpu == a));
        // A used a whole slice; B runs 1 ms and yields. By vruntime B (1 ms) would be picked
        // again before A (10 ms), but a yield puts it behind every vCPU waiting there.
        assert!(matches!(s.pick_next(0, 10 * MS), Decision::Run { vcpu, .. } if vcpu == b));
        s.yield_now(0, 11 * MS);
        assert_eq!((s.current(0), s.state(b)), (None, Some(State::Runnable)), "the yielder left the CPU");
        assert_eq!(s.runtime_ns(b), MS, "and was charged for what it ran");
        assert!(matches!(s.pick_next(0, 11 * MS), Decision::Run { vcpu, .. } if vcpu == a));
        // A yield on a CPU that runs nothing (or does not exist) changes nothing.
        let mut idle = Scheduler::new(1, 10 * MS);
        idle.yield_now(0, 0);
        idle.yield_now(7, 0);
        assert_eq!(idle.current(0), None);
    }

    #[test]
    fn a_deadline_wakes_a_blocked_vcpu_at_that_time_and_not_before() {
        let mut sim = Sim::new(1, 10);
        let (a, b) = (VcpuId(0), VcpuId(1));
        sim.add(0, 1, DEFAULT_WEIGHT);
        sim.add(1, 1, DEFAULT_WEIGHT);
        sim.run_ms(20);
        let deadline = sim.now + 50 * MS;
        sim.s.block_until(b, deadline, sim.now);
        assert_eq!(sim.s.next_deadline(), Some(deadline));
        // Before the deadline nothing wakes.
        assert!(sim.s.expire(deadline - 1).is_empty());
        assert_eq!(sim.s.state(b), Some(State::Blocked));
        sim.run_ms(50);
        // At the deadline it is runnable again, and no timer is left.
        sim.s.expire(deadline);
        assert_eq!(sim.s.state(b), Some(State::Runnable));
        assert_eq!(sim.s.next_deadline(), None);
        assert_eq!(sim.s.state(a), Some(State::Running { cpu: 0 }));
    }

    #[test]
    fn an_interrupt_before_the_deadline_cancels_it() {
        let mut sim = Sim::new(2, 10);
        let b = VcpuId(1);
        sim.add(0, 0b11, DEFAULT_WEIGHT);
        sim.add(1, 0b11, DEFAULT_WEIGHT);
        sim.run_ms(5);
        sim.s.block_until(b, sim.now + 100 * MS, sim.now);
        sim.s.wake(b, sim.now);
        assert_eq!(sim.s.next_deadline(), None, "woken early: the timer is gone");
        sim.run_ms(5);
        // Blocking again without a deadline waits for an interrupt only.
        sim.s.block(b, sim.now);
        assert!(sim.s.expire(u64::MAX).is_empty());
        assert_eq!(sim.s.state(b), Some(State::Blocked));
    }

    #[test]
    fn deadlines_expire_in_order_and_stopped_vcpus_drop_theirs() {
        let mut sim = Sim::new(2, 10);
        for i in 0..3 {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(5);
        let t = sim.now;
        sim.s.block_until(VcpuId(0), t + 30 * MS, t);
        sim.s.block_until(VcpuId(1), t + 10 * MS, t);
        sim.s.block_until(VcpuId(2), t + 20 * MS, t);
        assert_eq!(sim.s.next_deadline(), Some(t + 10 * MS));
        sim.s.stop(VcpuId(2), t);
        sim.s.expire(t + 25 * MS);
        assert_eq!(sim.s.state(VcpuId(1)), Some(State::Runnable));
        assert_eq!(sim.s.state(VcpuId(2)), Some(State::Stopped), "a stopped vCPU is never woken by its old deadline");
        assert_eq!(sim.s.state(VcpuId(0)), Some(State::Blocked));
        assert_eq!(sim.s.next_deadline(), Some(t + 30 * MS));
    }

    #[test]
    fn long_sleeper_does_not_starve_others_after_waking() {
        let mut sim = Sim::new(1, 10);
        let (a, b) = (VcpuId(0), VcpuId(1));
        sim.add(0, 1, DEFAULT_WEIGHT);
        sim.add(1, 1, DEFAULT_WEIGHT);
        sim.run_ms(100);
        sim.s.block(b, sim.now);
        sim.run_ms(2000); // A alone: its vruntime runs 2 s ahead of B's
        sim.settle();
        let kick = sim.s.wake(b, sim.now);
        assert_eq!(kick, Some(0), "the CPU is between slices: idle, so kick");
        let floor = sim.s.stats(a).unwrap().vruntime - sim.s.slice_ns();
        assert!(sim.s.stats(b).unwrap().vruntime >= floor);
        let before = sim.runtimes(&[0, 1]);
        sim.run_ms(200);
        sim.settle();
        let d = deltas(&sim.runtimes(&[0, 1]), &before);
        // Without the floor B would run the whole 200 ms to catch up.
        assert!(d[0] >= 90 * MS && d[1] >= 90 * MS, "{d:?}");
    }

    #[test]
    fn busy_vcpu_that_never_yields_cannot_starve_another() {
        let mut sim = Sim::new(1, 10);
        let (a, b) = (VcpuId(0), VcpuId(1));
        sim.add(0, 1, DEFAULT_WEIGHT);
        sim.run_ms(5); // A is running mid-slice (say with interrupts disabled, spinning)
        sim.add(1, 1, DEFAULT_WEIGHT);
        sim.run_ms(6); // the host timer expires at 10 ms: B must get the CPU then
        assert_eq!(sim.s.current(0), Some(b));
        sim.run_ms(1000);
        sim.settle();
        let r = [sim.s.runtime_ns(a), sim.s.runtime_ns(b)];
        assert!(fairness(&r) <= 1.05, "{r:?}");
        // Every slice alternates: A was scheduled about 50 times, not once.
        assert!(sim.s.scheduled_count(a) >= 50);
    }

    #[test]
    fn paused_never_runs_and_resumed_runs_again() {
        let mut sim = Sim::new(1, 10);
        let (a, b) = (VcpuId(0), VcpuId(1));
        sim.add(0, 1, DEFAULT_WEIGHT);
        sim.add(1, 1, DEFAULT_WEIGHT);
        sim.run_ms(15);
        let running = sim.s.current(0).unwrap();
        let other = if running == a { b } else { a };
        // Pausing the running vCPU asks for a kick; pausing a queued one does not.
        assert_eq!(sim.s.pause(running, sim.now), Some(0));
        assert_eq!(sim.s.pause(other, sim.now), None);
        assert_eq!(sim.s.state(running), Some(State::Paused));
        let frozen = sim.runtimes(&[0, 1]);
        sim.run_ms(200);
        assert_eq!(sim.runtimes(&[0, 1]), frozen);
        assert_eq!(sim.s.current(0), None);
        assert!(sim.s.cpu_idle_ns(0) >= 199 * MS);
        // Resuming onto the idle CPU asks for a kick; both run again.
        assert_eq!(sim.s.resume(running, sim.now), Some(0));
        sim.s.resume(other, sim.now);
        sim.run_ms(200);
        sim.settle();
        let d = deltas(&sim.runtimes(&[0, 1]), &frozen);
        assert!(d.iter().all(|&t| t >= 90 * MS), "{d:?}");
    }

    #[test]
    fn pausing_a_halted_vcpu_keeps_it_halted() {
        let mut s = Scheduler::new(1, 10 * MS);
        let v = VcpuId(3);
        s.add(v, 1, DEFAULT_WEIGHT, 0).unwrap();
        s.pick_next(0, 0);
        s.block(v, MS);
        assert_eq!(s.pause(v, 2 * MS), None);
        assert_eq!(s.resume(v, 3 * MS), None);
        assert_eq!(
            s.state(v),
            Some(State::Blocked),
            "no interrupt came: still halted"
        );
        assert_eq!(s.pick_next(0, 4 * MS), Decision::Idle);
        // A wake while paused is remembered.
        s.pause(v, 5 * MS);
        assert_eq!(s.wake(v, 6 * MS), None);
        assert_eq!(s.state(v), Some(State::Paused));
        assert_eq!(s.resume(v, 7 * MS), Some(0));
        assert_eq!(
            s.pick_next(0, 8 * MS),
            Decision::Run {
                vcpu: v,
                slice_ns: 10 * MS
            }
        );
    }

    #[test]
    fn stopped_vcpu_never_runs_again() {
        let mut s = Scheduler::new(2, 10 * MS);
        let v = VcpuId(1);
        s.add(v, 0b11, DEFAULT_WEIGHT, 0).unwrap();
        assert!(matches!(s.pick_next(0, 0), Decision::Run { vcpu, .. } if vcpu == v));
        assert_eq!(s.stop(v, 4 * MS), Some(0));
        assert_eq!(s.state(v), Some(State::Stopped));
        assert_eq!(s.runtime_ns(v), 4 * MS, "stats survive stop");
        assert_eq!(s.wake(v, 5 * MS), None);
        assert_eq!(s.resume(v, 5 * MS), None);
        assert_eq!(s.pick_next(0, 6 * MS), Decision::Idle);
        assert_eq!(s.pick_next(1, 6 * MS), Decision::Idle);
        assert_eq!(s.state(v), Some(State::Stopped));
    }

    #[test]
    fn remove_frees_the_queue() {
        let mut sim = Sim::new(2, 10);
        for i in 0..4 {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(25);
        let running = sim.s.current(0).unwrap();
        let queued = (0..4)
            .map(VcpuId)
            .find(|v| sim.s.state(*v) == Some(State::Runnable) && sim.s.stats(*v).unwrap().cpu == 0)
            .unwrap();
        assert_eq!(sim.s.load(0), 512);
        assert_eq!(sim.s.remove(queued, sim.now), None);
        assert_eq!(sim.s.load(0), 256);
        assert_eq!(sim.s.queued(0), 0);
        assert_eq!(sim.s.state(queued), None);
        assert_eq!(
            sim.s.remove(running, sim.now),
            Some(0),
            "running: kick to force an exit"
        );
        assert_eq!(sim.s.load(0), 0);
        assert_eq!(sim.s.remove(running, sim.now), None, "already gone");
        sim.run_ms(200);
        for v in [running, queued] {
            assert_eq!(sim.s.runtime_ns(v), 0);
            assert!(sim.ran_on[&v] != 0); // it did run before removal...
        }
        // ...and the two left share both CPUs, one each (CPU 0 stole one).
        sim.settle();
        assert_eq!(sim.s.queued(0) + sim.s.queued(1), 2);
        assert!(sim.s.cpu_idle_ns(0) <= MS);
        // The id can be reused.
        assert!(sim.s.add(running, 0b11, DEFAULT_WEIGHT, sim.now).is_ok());
    }

    #[test]
    fn bad_adds_are_refused() {
        let mut s = Scheduler::new(2, 10 * MS);
        assert_eq!(
            s.add(VcpuId(0), 0, DEFAULT_WEIGHT, 0),
            Err(SchedError::EmptyAffinity {
                affinity: 0,
                ncpus: 2
            })
        );
        // Only CPUs that do not exist: just as empty.
        assert!(matches!(
            s.add(VcpuId(0), 0b1100, DEFAULT_WEIGHT, 0),
            Err(SchedError::EmptyAffinity { .. })
        ));
        assert_eq!(s.add(VcpuId(0), 0b1, 0, 0), Err(SchedError::ZeroWeight));
        assert_eq!(s.state(VcpuId(0)), None);
        assert_eq!(s.add(VcpuId(0), 0b1, DEFAULT_WEIGHT, 0), Ok(0));
        assert_eq!(
            s.add(VcpuId(0), 0b1, DEFAULT_WEIGHT, 0),
            Err(SchedError::AlreadyAdded(VcpuId(0)))
        );
        // Bits beyond the machine are dropped, the rest respected.
        assert_eq!(s.add(VcpuId(1), 0b110, DEFAULT_WEIGHT, 0), Ok(1));
        assert_eq!(s.stats(VcpuId(1)).unwrap().affinity, 0b10);
    }

    #[test]
    fn wake_kicks_an_idle_cpu() {
        let mut s = Scheduler::new(2, 10 * MS);
        let (busy, io) = (VcpuId(0), VcpuId(1));
        s.add(busy, 0b01, DEFAULT_WEIGHT, 0).unwrap();
        s.add(io, 0b10, DEFAULT_WEIGHT, 0).unwrap();
        s.pick_next(0, 0);
        s.pick_next(1, 0);
        s.block(io, 2 * MS);
        assert_eq!(s.pick_next(1, 2 * MS), Decision::Idle);
        assert_eq!(s.wake(io, 5 * MS), Some(1));
        // Waking something not blocked changes nothing.
        assert_eq!(s.wake(io, 6 * MS), None);
        assert_eq!(s.wake(busy, 6 * MS), None);
        assert_eq!(s.wake(VcpuId(42), 6 * MS), None);
    }

    #[test]
    fn wake_kicks_a_busy_cpu_only_when_the_woken_vcpu_should_preempt() {
        let mut s = Scheduler::new(1, 10 * MS);
        let (a, b) = (VcpuId(0), VcpuId(1));
        s.add(a, 1, DEFAULT_WEIGHT, 0).unwrap();
        s.add(b, 1, DEFAULT_WEIGHT, 0).unwrap();
        let run = |s: &mut Scheduler, now| match s.pick_next(0, now) {
            Decision::Run { vcpu, .. } => vcpu,
            Decision::Idle => panic!("idle"),
        };
        assert_eq!(run(&mut s, 0), a); // equal vruntimes: lowest id
        assert_eq!(run(&mut s, 10 * MS), b); // A: 10 ms
        s.block(b, 11 * MS); // B: 1 ms
        assert_eq!(run(&mut s, 11 * MS), a);
        // B (1 ms) is behind A (10 + 1 ms): kick to let it run now.
        assert_eq!(s.wake(b, 12 * MS), Some(0));
        assert_eq!(run(&mut s, 12 * MS), b); // A: 12 ms
        s.block(b, 30 * MS); // B ran 18 ms more: 19 ms
        assert_eq!(run(&mut s, 30 * MS), a);
        // B (19 ms) is ahead of A (12 + 1 ms): no kick, it waits for the slice to end.
        assert_eq!(s.wake(b, 31 * MS), None);
        assert_eq!(s.state(b), Some(State::Runnable));
        // Once A has run past B's vruntime, B gets the CPU at the slice end anyway.
        assert_eq!(run(&mut s, 40 * MS), b);
    }

    #[test]
    fn placement_least_loaded_then_last_cpu_then_lowest() {
        let mut s = Scheduler::new(3, 10 * MS);
        let v = |i| VcpuId(i);
        assert_eq!(s.add(v(0), 0b111, 256, 0), Ok(0)); // all empty → lowest
        assert_eq!(s.add(v(1), 0b111, 256, 0), Ok(1));
        assert_eq!(s.add(v(2), 0b111, 256, 0), Ok(2));
        for cpu in 0..3 {
            s.pick_next(cpu, 0);
        }
        s.block(v(0), MS);
        s.block(v(2), MS);
        // CPUs 0 and 2 are both empty; vCPU 2 last ran on 2: cache affinity wins the tie.
        assert_eq!(s.wake(v(2), 2 * MS), Some(2));
        assert_eq!(s.stats(v(2)).unwrap().cpu, 2);
        // Least loaded beats last CPU: vCPU 0's CPU is free anyway; vCPU 1 blocks and a heavy
        // newcomer restricted to CPUs 1-2 goes to the now empty CPU 1.
        s.block(v(1), 3 * MS);
        assert_eq!(s.add(v(3), 0b110, 1024, 3 * MS), Ok(1));
        // vCPU 1 last ran on CPU 1 (load 1024) but CPU 0 is empty: it moves.
        assert_eq!(s.wake(v(1), 4 * MS), Some(0));
        // Weighted load: CPU 0 has 256, CPU 1 1024, CPU 2 256 → ties go to the lowest.
        assert_eq!(s.add(v(4), 0b111, 256, 4 * MS), Ok(0));
        assert_eq!(s.add(v(5), 0b111, 256, 4 * MS), Ok(2));
    }

    #[test]
    fn imbalance_left_by_removals_is_repaired() {
        let mut sim = Sim::new(2, 10);
        let ids = [0u32, 1, 2, 3, 4, 5];
        for &i in &ids {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(100);
        // Remove two of CPU 1's three: 3 + 1 remain. CPU 1 never idles (its last vCPU is busy),
        // so only balancing can even things out.
        let on1: Vec<VcpuId> = ids
            .iter()
            .map(|&i| VcpuId(i))
            .filter(|v| sim.s.stats(*v).unwrap().cpu == 1)
            .collect();
        assert_eq!(on1.len(), 3);
        sim.s.remove(on1[0], sim.now);
        sim.s.remove(on1[1], sim.now);
        sim.run_ms(100);
        sim.settle();
        assert_eq!(sim.s.load(0), 512);
        assert_eq!(sim.s.load(1), 512);
        let left: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| sim.s.state(VcpuId(i)).is_some())
            .collect();
        let before = sim.runtimes(&left);
        sim.run_ms(1000);
        sim.settle();
        let d = deltas(&sim.runtimes(&left), &before);
        assert!(fairness(&d) <= 1.05, "{d:?}");
    }

    #[test]
    fn balancing_does_not_ping_pong() {
        // 3 on 2 cannot be balanced by moving: loads 2 + 1 must stay put, not bounce.
        let mut sim = Sim::new(2, 10);
        for i in 0..3 {
            sim.add(i, 0b11, DEFAULT_WEIGHT);
        }
        sim.run_ms(1000);
        for i in 0..3 {
            assert_eq!(sim.ran_on[&VcpuId(i)].count_ones(), 1, "vCPU {i} migrated");
        }
    }

    #[test]
    fn accounting_of_vcpus_and_cpus() {
        let mut sim = Sim::new(2, 10);
        let v = VcpuId(0);
        sim.add(0, 0b01, DEFAULT_WEIGHT);
        sim.run_ms(100);
        sim.settle();
        assert_eq!(sim.s.runtime_ns(v), 100 * MS);
        assert_eq!(sim.s.scheduled_count(v), 10);
        assert_eq!(sim.s.cpu_busy_ns(0), 100 * MS);
        assert_eq!(sim.s.cpu_idle_ns(0), 0);
        assert_eq!(sim.s.cpu_busy_ns(1), 0);
        assert_eq!(sim.s.cpu_idle_ns(1), 99 * MS); // up to its last poll
                                                   // Blocked time is idle time, not busy time.
        sim.run_ms(5);
        sim.s.block(v, sim.now);
        sim.run_ms(50);
        sim.settle();
        assert_eq!(sim.s.runtime_ns(v), 105 * MS);
        assert_eq!(sim.s.cpu_busy_ns(0), 105 * MS);
        assert_eq!(sim.s.cpu_idle_ns(0), 49 * MS);
    }

    #[test]
    fn slice_has_a_floor_and_is_returned_with_each_decision() {
        let mut s = Scheduler::new(1, 10);
        assert_eq!(s.slice_ns(), MIN_SLICE_NS);
        s.add(VcpuId(0), 1, DEFAULT_WEIGHT, 0).unwrap();
        assert_eq!(
            s.pick_next(0, 0),
            Decision::Run {
                vcpu: VcpuId(0),
                slice_ns: MIN_SLICE_NS
            }
        );
        assert_eq!(
            Scheduler::new(64, DEFAULT_SLICE_NS).slice_ns(),
            DEFAULT_SLICE_NS
        );
        assert_eq!(s.pick_next(5, 0), Decision::Idle, "unknown CPU");
    }

    #[test]
    fn pick_next_preempts_implicitly_and_all_64_cpus_work() {
        let mut s = Scheduler::new(64, 10 * MS);
        let v = VcpuId(1);
        s.add(v, 1 << 63, DEFAULT_WEIGHT, 0).unwrap();
        assert_eq!(
            s.pick_next(63, 0),
            Decision::Run {
                vcpu: v,
                slice_ns: 10 * MS
            }
        );
        // Calling pick_next again without preempt charges and re-picks the same vCPU.
        assert_eq!(
            s.pick_next(63, 10 * MS),
            Decision::Run {
                vcpu: v,
                slice_ns: 10 * MS
            }
        );
        assert_eq!(s.runtime_ns(v), 10 * MS);
        assert_eq!(s.scheduled_count(v), 2);
        assert_eq!(
            s.pick_next(0, 10 * MS),
            Decision::Idle,
            "CPU 0 may not steal it"
        );
    }
}
