//! What a running vCPU reaches besides itself: its guest's devices (ports and device memory,
//! with UART output sent to the console and wake-ups for vCPUs an access interrupts), the
//! interrupt routing between devices and vCPUs, and the host CPU as the exit handler sees it.
//!
//! # The console never blocks a CPU
//!
//! A guest's bytes wait in its virtual UART's transmit FIFO until [`drain_uart`] moves them to
//! the console multiplexer, and it moves only as many as the host's output ring has room for
//! (keeping [`OUTPUT_RESERVE`] free for host messages and line tags). A guest that outruns the
//! line therefore sees what hardware shows: LSR.THRE clear while its FIFO is full, and the
//! THRE interrupt once the FIFO empties (PC16550D datasheet, LSR bit 5 and IIR priority 3).
//! CPU 0 drains waiting guests every console tick, as the host line makes room.
//!
//! # Wake-ups are never lost
//!
//! A vCPU that halts with interrupts enabled checks for a pending interrupt and marks itself
//! waiting while holding its guest's interrupt-chip lock; every interrupt source (a device
//! line, an IPI, a timer) reaches the chip under that same lock and then wakes waiting vCPUs
//! ([`wake_if_interrupted`]). So either the halting vCPU sees the interrupt, or the source
//! sees the waiting flag.

use super::guest::{hv, vcpu_id, Guest};
use super::percpu::kick;
use crate::{serial, time};
use alloc::vec::Vec;
use bastion_core::devices::irq::IrqChip;
use bastion_core::vm::devices::{DeviceIo, GuestDevices, IoOutcome, COM1};
use bastion_core::sched::State as SchedState;
use bastion_core::vm::Host;
use core::sync::atomic::Ordering;

/// Room kept free in the host's output ring for host messages and line tags: guest output is
/// moved only beyond it. Larger than one tagged line (`console::MAX_LINE_BYTES` + tag).
pub(super) const OUTPUT_RESERVE: usize = 2048;

/// The guest side of an exit of vCPU `vcpu`: the guest's devices, with UART output sent to
/// the console, and the vCPU's own local APIC.
pub(super) struct GuestIo<'a> {
    pub(super) g: &'a Guest,
    pub(super) vcpu: usize,
}

/// Whether a port access touches the guest's UART (so its output or input may have moved).
fn is_uart(port: u16, size: u8) -> bool {
    port < COM1 + 8 && port.saturating_add(size as u16) > COM1
}

impl DeviceIo for GuestIo<'_> {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let d = &self.g.devices;
        let v = d.port_read(port, size);
        // A device access by any vCPU can raise an interrupt for another (the PIC's INTR
        // reaches vCPU 0 whoever touched the device, the I/O APIC routes anywhere): wake its
        // target.
        wake_if_interrupted(self.g, &mut d.update_irqs());
        if is_uart(port, size) {
            // A read may have made room in the receive FIFO: feed it what was typed meanwhile;
            // a guest polling LSR for THRE gets its FIFO drained as far as the line has room.
            feed_pending_input(self.g);
            drain_uart(self.g);
        }
        v
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome {
        let d = &self.g.devices;
        let outcome = d.port_write(port, size, value);
        wake_if_interrupted(self.g, &mut d.update_irqs());
        if is_uart(port, size) {
            drain_uart(self.g);
        }
        outcome
    }

    fn is_device(&self, gpa: u64) -> bool {
        GuestDevices::is_device_space(gpa)
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
        let d = &self.g.devices;
        let ok = d.mmio_read_by(self.vcpu, gpa, data);
        wake_if_interrupted(self.g, &mut d.update_irqs());
        ok
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let d = &self.g.devices;
        // An IPI or an EOI that lets a level interrupt through again can wake another vCPU.
        let ok = d.mmio_write_by(self.vcpu, gpa, data);
        wake_if_interrupted(self.g, &mut d.update_irqs());
        ok
    }

    fn apic_base(&mut self) -> Option<u64> {
        Some(self.g.devices.irq.lock().apic_base(self.vcpu))
    }

    fn set_apic_base(&mut self, value: u64) -> bool {
        self.g.devices.irq.lock().set_apic_base(self.vcpu, value).is_ok()
    }
}

/// Moves what the guest's UART has sent to the console, as far as the host's output ring has
/// room; the UART raises its THRE interrupt when its FIFO empties.
pub(super) fn drain_uart(g: &Guest) {
    move_uart_output(g, serial::output_room().saturating_sub(OUTPUT_RESERVE));
}

/// Moves everything the guest's UART holds to the console, waiting for the line if it must:
/// for a guest that has stopped, whose last bytes must not be lost (at most a FIFO's worth).
pub(super) fn drain_uart_all(g: &Guest) {
    move_uart_output(g, usize::MAX);
}

fn move_uart_output(g: &Guest, room: usize) {
    // Drained bytes and the lines they complete leave in one piece per guest: whoever holds
    // the UART's output next continues where this left off.
    let _order = g.tx_lock.lock();
    let mut out = Vec::new();
    let moved = g.devices.uart.lock().drain_output(&mut out, room);
    if moved == 0 {
        return;
    }
    wake_if_interrupted(g, &mut g.devices.update_irqs());
    let lines = hv().console.lock().guest_output(g.index, &out);
    for l in lines {
        serial::print_guest(format_args!("{l}\n"));
    }
}

/// Whether the guest's UART holds output the line had no room for yet.
pub(super) fn uart_output_waiting(g: &Guest) -> bool {
    g.devices.uart.lock().tx_pending() > 0
}

pub(super) fn feed_pending_input(g: &Guest) {
    let mut pending = g.pending_input.lock();
    if !pending.is_empty() {
        // Only what fits: the rest waits here, as behind a line with flow control, so the
        // guest never sees an overrun (LSR.OE) for input that is not lost (Linux logs one).
        let n = {
            let mut uart = g.devices.uart.lock();
            let room = uart.rx_space().min(pending.len());
            uart.receive(&pending[..room])
        };
        pending.drain(..n);
        wake_if_interrupted(g, &mut g.devices.update_irqs());
    }
}

/// Whether vCPU `vcpu` has an interrupt to take, after bringing the guest's timers up to now.
pub(super) fn interrupt_pending_now(g: &Guest, vcpu: usize) -> bool {
    g.devices.advance(time::now_ns()).has_interrupt(vcpu)
}

/// When a guest timer will next raise an interrupt for vCPU `vcpu`: its local APIC timer, and
/// for vCPU 0 the PIT and RTC too (vCPU 0 brings them up to date for the whole guest).
pub(super) fn timer_deadline(d: &GuestDevices, vcpu: usize, now: u64) -> Option<u64> {
    d.next_deadline_for(vcpu, now)
}

/// Wakes every vCPU of the guest that sleeps (in HLT, or waiting for a STARTUP) and now has
/// what ends its sleep, and makes a vCPU that received something while running on another CPU
/// exit there at once (the kick IPI), so an IPI or device interrupt is not left for its next
/// exit. Called with the chip locked, as is the check before a vCPU blocks, so no wake-up is
/// lost in between.
pub(super) fn wake_if_interrupted(g: &Guest, chip: &mut IrqChip) {
    let kicked = chip.take_kicked();
    for (v, waiting) in g.waiting.iter().enumerate() {
        // The flag first: it is one load, and most device accesses happen with no vCPU asleep.
        // A vCPU halted with interrupts disabled takes only an NMI.
        let wakes = if g.nmi_only[v].load(Ordering::SeqCst) { chip.has_nmi(v) } else { chip.wakes(v) };
        if waiting.load(Ordering::SeqCst) && wakes && waiting.swap(false, Ordering::SeqCst) {
            let kick_cpu = hv().sched.lock().wake(vcpu_id(g.index, v), time::now_ns());
            if let Some(c) = kick_cpu {
                kick(c);
            }
        } else if v < 64 && kicked & (1 << v) != 0 {
            if let Some(SchedState::Running { cpu }) = hv().sched.lock().state(vcpu_id(g.index, v)) {
                kick(cpu);
            }
        }
    }
}

/// The host CPU as the exit handler sees it.
pub(super) struct HostCpu;

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
    fn unix_time_ns(&self) -> u64 {
        time::unix_ns()
    }
}
