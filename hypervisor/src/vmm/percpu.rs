//! The physical CPUs as the hypervisor uses them: each one's registration (APIC ID, enabled
//! virtualization backend), the local APIC timer that ends slices and wakes idle CPUs, and the
//! "kick" IPI that makes another CPU look at the scheduler again.

use crate::lapic;
use crate::virt::Backend;
use alloc::string::String;
use bastion_core::virt::VirtCaps;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Once;

/// Vector of COM1's receive interrupt (through the host's I/O APIC, to CPU 0).
pub const SERIAL_VECTOR: u8 = 0xe0;

/// Vector of the local APIC timer (time slices on SVM, idle wake-ups).
pub const TIMER_VECTOR: u8 = 0xef;

/// Vector of the "kick" IPI: makes a CPU leave its guest and look at the scheduler again.
pub const KICK_VECTOR: u8 = 0xf0;

/// Vector that stops a CPU for good (the run is ending).
pub const HALT_VECTOR: u8 = 0xf1;

pub const MAX_CPUS: usize = 64;

/// One CPU's hypervisor state.
pub struct PerCpu {
    pub index: usize,
    pub apic_id: u32,
    pub backend: Backend,
    /// The vCPU that ran the last slice here, to count switches between vCPUs.
    pub(super) last_vcpu: AtomicU64,
    /// Which vCPU entered last here with each VPID/ASID (only this CPU takes the lock).
    pub(super) tlb_owners: spin::Mutex<bastion_core::virt::tlb::TagOwners>,
}

pub(super) static CPUS: [Once<PerCpu>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

/// APIC ID -> CPU index + 1 (0 = unknown).
pub(super) static APIC_INDEX: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

pub(super) static LAPIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

pub(super) static CPUS_READY: AtomicUsize = AtomicUsize::new(0);

/// Registers the calling CPU and enables virtualization on it.
pub fn init_cpu(index: usize, caps: &VirtCaps) -> Result<(), String> {
    let apic_id = lapic::id();
    crate::virt::context::init_cpu();
    if index == 0 {
        log::info!("virt: guest extended state switched with {}", crate::virt::context::describe());
    }
    let backend = Backend::enable(caps)?;
    CPUS[index].call_once(|| PerCpu { index, apic_id, backend, last_vcpu: AtomicU64::new(u64::MAX), tlb_owners: spin::Mutex::new(bastion_core::virt::tlb::TagOwners::new()) });
    APIC_INDEX[apic_id as usize & 0xff].store(index + 1, Ordering::SeqCst);
    CPUS_READY.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Index of the calling CPU (0 before `init_cpu` ran on it).
pub fn cpu_index() -> usize {
    APIC_INDEX[lapic::id() as usize & 0xff].load(Ordering::Relaxed).saturating_sub(1)
}

pub(super) fn this_cpu() -> &'static PerCpu {
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
pub(super) fn take_host_interrupts() {
    // SAFETY: a one-instruction interrupt window; the handlers only acknowledge and return.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Interrupts CPU `cpu` so it leaves its guest (or its idle wait) and asks the scheduler.
pub(super) fn kick(cpu: usize) {
    if cpu == cpu_index() {
        return;
    }
    if let Some(c) = CPUS.get(cpu).and_then(|c| c.get()) {
        lapic::send_ipi(c.apic_id, KICK_VECTOR);
    }
}
