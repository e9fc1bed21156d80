//! The devices of one guest and the bus that reaches them: its 16550 at COM1 (the model lives
//! in `crate::devices::uart16550`), the 8259 pair, the 8254 PIT (ports 0x40-0x43 and 0x61,
//! counter 0 on IRQ 0), the test-exit port, and on the MMIO side the I/O APIC at its PC
//! address and each vCPU's local APIC page (`crate::devices::irq` wires those three).
//!
//! Every device sits behind its own lock on a [`Bus`] of port and MMIO ranges (overlaps are
//! refused when the guest is built), so two vCPUs touching different devices never contend.
//! The interrupt controllers share one lock, the [`IrqChip`]'s, since each of their accesses
//! can move interrupts between them. Interrupt lines are wires *between* devices, not calls
//! from one into another: after an access, [`GuestDevices`] samples the devices' lines and
//! copies them to the chip's ISA inputs, taking one device lock after the other, never two at
//! once (so there is no lock order to get wrong).
//! The exit handler reaches all of it through the [`DeviceIo`] trait, so the kernel can add
//! its console plumbing and wake-ups, and tests can use the devices directly.

pub use crate::devices::bus::IoOutcome;
use crate::devices::acpi_pm::{AcpiPm, PmDevice, PM_BASE, PM_LEN};
use crate::devices::bus::{Bus, BusDevice, DeviceHandle, Space};
use crate::devices::i8042::{I8042Port, I8042, KEYBOARD_IRQ};
use crate::devices::irq::IrqChip;
use crate::devices::pit8254::Pit;
use crate::devices::rtc::Rtc;
use crate::devices::uart16550::Uart16550;
use crate::vm::memmap::{IOAPIC_BASE, IOAPIC_SIZE, MMIO_HOLE_END, MMIO_HOLE_START};
use alloc::sync::Arc;
use spin::{Mutex, MutexGuard};

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// The test-exit port: a write of 0 means PASS, anything else FAIL with that code. Same port as
/// QEMU's `isa-debug-exit`, so a test guest behaves alike under Bastion and bare QEMU.
pub const TEST_EXIT_PORT: u16 = 0xf4;

/// Lets the guest reach `count` ports from `base` directly in an I/O permission bitmap: one
/// bit per port, set = intercept. VMX's bitmaps A and B (SDM Vol. 3C 25.6.4) placed back to
/// back, and SVM's IOPM (APM Vol. 2 15.10.1), both have exactly this layout.
pub fn io_bitmap_allow(bitmap: &mut [u8], base: u16, count: u16) {
    for port in base..base.saturating_add(count) {
        if let Some(b) = bitmap.get_mut(port as usize / 8) {
            *b &= !(1 << (port % 8));
        }
    }
}


/// The guest's devices as the exit handler sees them: port I/O (`size` is 1, 2 or 4) and
/// device memory.
pub trait DeviceIo {
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome;
    /// Whether `gpa` is device space: accesses there that miss the nested page tables are
    /// emulated (MMIO); anywhere else they are bad accesses.
    fn is_device(&self, _gpa: u64) -> bool {
        false
    }
    /// Reads device memory at `gpa`; `false` when `gpa` is no device space at all (neither a
    /// device nor the MMIO hole), which the handler treats as a bad access. Bytes in the hole
    /// that no device claims read as all ones.
    fn mmio_read(&mut self, _gpa: u64, _data: &mut [u8]) -> bool {
        false
    }
    /// Writes device memory at `gpa`; `false` as for [`mmio_read`](Self::mmio_read).
    fn mmio_write(&mut self, _gpa: u64, _data: &[u8]) -> bool {
        false
    }
    /// The accessing vCPU's IA32_APIC_BASE; `None` where there is no local APIC (RDMSR #GP).
    fn apic_base(&mut self) -> Option<u64> {
        None
    }
    /// WRMSR IA32_APIC_BASE by the accessing vCPU; `false` means #GP.
    fn set_apic_base(&mut self, _value: u64) -> bool {
        false
    }
}

/// The UART's interrupt line on the PC: IRQ 4 of the master PIC.
pub const UART_IRQ: u8 = 4;
/// The PICs' command and data ports.
pub const PIC_PORTS: [u16; 4] = [0x20, 0x21, 0xa0, 0xa1];

/// The PIT's ports: counters 0-2 and the control word.
pub const PIT_PORTS: core::ops::RangeInclusive<u16> = 0x40..=0x43;
/// The PC's port B (system control port B): PIT counter 2 gate and output, speaker.
pub const PORT_B: u16 = 0x61;
/// PIT counter 0's output drives IRQ 0 (the PC's system timer).
pub const PIT_IRQ: u8 = 0;
/// The CMOS RTC's index and data ports.
pub const RTC_PORT: u16 = 0x70;
/// The RTC's interrupt: IRQ 8, the slave PIC's first input.
pub const RTC_IRQ: u8 = 8;

/// The guest's monotonic clock in ns (the kernel's TSC clock; tests set their own).
pub type Clock = fn() -> u64;

/// A clock that stands still at 0: as the wall clock, 1970-01-01 00:00:00.
fn no_clock() -> u64 {
    0
}

/// The CMOS RTC with the clock it runs on.
#[derive(Debug, Clone)]
pub struct RtcDevice {
    pub rtc: Rtc,
    pub clock: Clock,
}

impl PortDevice for RtcDevice {
    fn read_port(&mut self, port: u16) -> u8 {
        self.rtc.read(port, (self.clock)())
    }
    fn write_port(&mut self, port: u16, value: u8) {
        self.rtc.write(port, value, (self.clock)())
    }
}

/// The 8254 with the clock it counts against.
#[derive(Debug, Clone)]
pub struct PitDevice {
    pub pit: Pit,
    pub clock: Clock,
}

/// Legacy devices address their registers by port number; the bus gives offsets from the base
/// of the range that was hit. One of these per range turns the offset back into the port.
struct Ports<D> {
    base: u16,
    dev: Arc<Mutex<D>>,
}

trait PortDevice {
    fn read_port(&mut self, port: u16) -> u8;
    fn write_port(&mut self, port: u16, value: u8);
}

/// The chip's PIC pair answers the 8259 ports.
impl PortDevice for IrqChip {
    fn read_port(&mut self, port: u16) -> u8 {
        self.pic.read(port)
    }
    fn write_port(&mut self, port: u16, value: u8) {
        self.pic.write(port, value)
    }
}

/// The I/O APIC's register window: an access can send messages (an unmasked entry whose line
/// is asserted, an EOI register write), which reach the local APICs before the lock is let go.
struct IoApicWindow(Arc<Mutex<IrqChip>>);

impl BusDevice for IoApicWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut chip = self.0.lock();
        chip.ioapic.read(offset, data);
        chip.route();
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        let mut chip = self.0.lock();
        let outcome = chip.ioapic.write(offset, data);
        chip.route();
        outcome
    }
}

impl PortDevice for Uart16550 {
    fn read_port(&mut self, port: u16) -> u8 {
        self.read((port - COM1) as u8)
    }
    fn write_port(&mut self, port: u16, value: u8) {
        self.write((port - COM1) as u8, value)
    }
}

impl PortDevice for PitDevice {
    fn read_port(&mut self, port: u16) -> u8 {
        let now = (self.clock)();
        if port == PORT_B {
            self.pit.read_port_b(now)
        } else {
            self.pit.read(port, now)
        }
    }
    fn write_port(&mut self, port: u16, value: u8) {
        let now = (self.clock)();
        if port == PORT_B {
            self.pit.write_port_b(value, now)
        } else {
            self.pit.write(port, value, now)
        }
    }
}

/// A multi-byte access covers consecutive ports (SDM Vol. 1 19.3), one register each.
impl<D: PortDevice> BusDevice for Ports<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut dev = self.dev.lock();
        for (i, b) in data.iter_mut().enumerate() {
            *b = dev.read_port(self.base.wrapping_add((offset as u16).wrapping_add(i as u16)));
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        let mut dev = self.dev.lock();
        for (i, b) in data.iter().enumerate() {
            dev.write_port(self.base.wrapping_add((offset as u16).wrapping_add(i as u16)), *b);
        }
        IoOutcome::Done
    }
}

/// The test-exit port: a write at its first byte ends the test with the written value (all of
/// it, whatever the access size); reads float.
struct TestExit;

impl BusDevice for TestExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        if offset != 0 {
            return IoOutcome::Done;
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        IoOutcome::TestExit(u32::from_le_bytes(b))
    }
}

/// The devices one guest owns, each behind its own lock, and the bus that finds them.
pub struct GuestDevices {
    pub bus: Bus,
    pub uart: Arc<Mutex<Uart16550>>,
    /// The 8259 pair, the I/O APIC and every vCPU's local APIC.
    pub irq: Arc<Mutex<IrqChip>>,
    pub pit: Arc<Mutex<PitDevice>>,
    pub rtc: Arc<Mutex<RtcDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// ACPI PM1 event/control blocks and PM timer (what the FADT of `loader::acpi` names).
    pub pm: Arc<Mutex<PmDevice>>,
    /// The Unix time in seconds now, for the RTC at power-on.
    wall: Clock,
}

impl Default for GuestDevices {
    fn default() -> Self {
        GuestDevices::with_clock(no_clock)
    }
}

impl core::fmt::Debug for GuestDevices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GuestDevices").field("bus", &self.bus).finish_non_exhaustive()
    }
}

fn ports<D: PortDevice + Send + 'static>(base: u16, dev: &Arc<Mutex<D>>) -> DeviceHandle {
    crate::devices::bus::handle(Ports { base, dev: dev.clone() })
}

impl GuestDevices {
    /// A one-vCPU PC's devices at their usual places, whose time comes from `clock`; the RTC
    /// shows 1970 at power-on.
    pub fn with_clock(clock: Clock) -> Self {
        GuestDevices::new(clock, no_clock, 1)
    }

    /// The devices of a PC with `vcpus` vCPUs at their usual places: time-driven ones run on
    /// `clock` (ns), and the RTC starts at the Unix time `wall` gives (seconds).
    pub fn new(clock: Clock, wall: Clock, vcpus: usize) -> Self {
        let uart = Arc::new(Mutex::new(Uart16550::default()));
        let irq = Arc::new(Mutex::new(IrqChip::new(vcpus, clock)));
        let pit = Arc::new(Mutex::new(PitDevice { pit: Pit::new(), clock }));
        let rtc = Arc::new(Mutex::new(RtcDevice { rtc: Rtc::new(wall(), clock()), clock }));
        let i8042 = Arc::new(Mutex::new(I8042::default()));
        let pm = Arc::new(Mutex::new(PmDevice { pm: AcpiPm::new(clock()), clock }));
        let mut bus = Bus::new();
        let ioapic_dev = crate::devices::bus::handle(IoApicWindow(irq.clone()));
        let pm_dev: DeviceHandle = pm.clone();
        let map: [(Space, u64, u64, DeviceHandle); 11] = [
            (Space::Port, COM1 as u64, 8, ports(COM1, &uart)),
            (Space::Port, 0x20, 2, ports(0x20, &irq)),
            (Space::Port, 0xa0, 2, ports(0xa0, &irq)),
            (Space::Port, *PIT_PORTS.start() as u64, 4, ports(*PIT_PORTS.start(), &pit)),
            (Space::Port, PORT_B as u64, 1, ports(PORT_B, &pit)),
            (Space::Port, TEST_EXIT_PORT as u64, 4, crate::devices::bus::handle(TestExit)),
            (Space::Port, RTC_PORT as u64, 2, ports(RTC_PORT, &rtc)),
            (Space::Port, 0x60, 1, crate::devices::bus::handle(I8042Port { dev: i8042.clone(), command: false })),
            (Space::Port, 0x64, 1, crate::devices::bus::handle(I8042Port { dev: i8042.clone(), command: true })),
            (Space::Port, PM_BASE as u64, PM_LEN as u64, pm_dev),
            // The I/O APIC's registers. The local APIC page is not on the bus: each vCPU sees
            // its own there, so the access path asks the chip first (`lapic_mmio`).
            (Space::Mmio, IOAPIC_BASE, IOAPIC_SIZE, ioapic_dev),
        ];
        for (space, base, len, dev) in map {
            // The layout is fixed here; a clash is a programming error that the tests catch.
            bus.insert(space, base, len, dev).expect("the PC device layout has no overlaps");
        }
        GuestDevices { bus, uart, irq, pit, rtc, i8042, pm, wall }
    }

    /// Puts every device back in its power-on state (a guest reset), keeping the bus.
    pub fn reset(&self) {
        *self.uart.lock() = Uart16550::default();
        self.irq.lock().reset();
        self.pit.lock().pit = Pit::new();
        {
            let mut r = self.rtc.lock();
            r.rtc = Rtc::new((self.wall)(), (r.clock)());
        }
        *self.i8042.lock() = I8042::default();
        {
            let mut p = self.pm.lock();
            p.pm = AcpiPm::new((p.clock)());
        }
    }

    /// Copies device interrupt lines to the chip's ISA inputs (PIC and I/O APIC); called after
    /// anything that may change a line (a register access, host input). Returns the chip,
    /// locked, so the caller can act on its new state (wake a vCPU) before anyone else changes
    /// it.
    pub fn update_irqs(&self) -> MutexGuard<'_, IrqChip> {
        let line = self.uart.lock().interrupt_line();
        let rtc = self.rtc_line();
        let kbd = self.i8042.lock().interrupt_line();
        let mut chip = self.irq.lock();
        chip.set_isa_irq(UART_IRQ, line);
        chip.set_isa_irq(KEYBOARD_IRQ, kbd);
        chip.set_isa_irq(RTC_IRQ, rtc);
        chip
    }

    fn rtc_line(&self) -> bool {
        let r = self.rtc.lock();
        r.rtc.interrupt_line((r.clock)())
    }

    /// Brings time-driven devices up to `now`: each rising edge of PIT OUT0 since the last call
    /// becomes one edge on IRQ 0 (several missed periods fold into one interrupt, as a PC's
    /// edge-triggered 8259 and I/O APIC input would see them), and local APIC timers due by
    /// then fire. Call before a vCPU enters the guest, and when its timer deadline has passed.
    /// Returns the chip, locked.
    pub fn advance(&self, now: u64) -> MutexGuard<'_, IrqChip> {
        self.advance_for(usize::MAX, now).0
    }

    /// [`advance`](Self::advance), and [`next_deadline_for`](Self::next_deadline_for) vCPU
    /// `vcpu` from the same locks: what the run loop needs before every entry.
    pub fn advance_for(&self, vcpu: usize, now: u64) -> (MutexGuard<'_, IrqChip>, Option<u64>) {
        let (edges, pit_at) = {
            let mut p = self.pit.lock();
            let edges = p.pit.irq0_edges(now);
            (edges, if vcpu == 0 { p.pit.next_irq0_deadline(now) } else { None })
        };
        let (rtc, rtc_at) = {
            let r = self.rtc.lock();
            (r.rtc.interrupt_line(now), if vcpu == 0 { r.rtc.next_deadline(now) } else { None })
        };
        let mut chip = self.irq.lock();
        // The RTC's IRQ 8 is a level the chip holds until register C is read ("Register C").
        chip.set_isa_irq(RTC_IRQ, rtc);
        if edges > 0 {
            chip.pulse_isa_irq(PIT_IRQ);
        }
        chip.advance(now);
        let at = earliest(earliest(pit_at, rtc_at), chip.next_deadline(vcpu, now));
        (chip, at)
    }

    /// When the next time-driven interrupt of the platform is due (PIT IRQ 0, RTC IRQ 8), if
    /// any: a vCPU halted with interrupts enabled may sleep until then.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let pit = self.pit.lock().pit.next_irq0_deadline(now);
        let rtc = self.rtc.lock().rtc.next_deadline(now);
        earliest(pit, rtc)
    }

    /// When the next timer interrupt for vCPU `vcpu` is due: its local APIC timer, and for
    /// vCPU 0 also the platform's timers (their interrupts reach whichever vCPU the guest
    /// routes them to; vCPU 0 brings them up to date, and wakes the target when they fire).
    pub fn next_deadline_for(&self, vcpu: usize, now: u64) -> Option<u64> {
        let lapic = self.irq.lock().next_deadline(vcpu, now);
        if vcpu == 0 {
            earliest(lapic, self.next_deadline(now))
        } else {
            lapic
        }
    }

    /// Host input for the guest's console; returns how many bytes the UART took.
    pub fn receive_input(&self, bytes: &[u8]) -> usize {
        let n = self.uart.lock().receive(bytes);
        drop(self.update_irqs());
        n
    }

    /// A load from device memory by vCPU `vcpu`: its local APIC page, or the bus. `false`
    /// when `gpa` is no device space at all.
    pub fn mmio_read_by(&self, vcpu: usize, gpa: u64, data: &mut [u8]) -> bool {
        if !Self::is_device_space(gpa) {
            return false;
        }
        {
            let mut chip = self.irq.lock();
            if chip.claims(vcpu, gpa) {
                chip.lapic_read(vcpu, gpa, data);
                return true;
            }
        }
        self.bus.read(Space::Mmio, gpa, data);
        true
    }

    /// A store to device memory by vCPU `vcpu`, as [`mmio_read_by`](Self::mmio_read_by).
    pub fn mmio_write_by(&self, vcpu: usize, gpa: u64, data: &[u8]) -> bool {
        if !Self::is_device_space(gpa) {
            return false;
        }
        {
            let mut chip = self.irq.lock();
            if chip.claims(vcpu, gpa) {
                chip.lapic_write(vcpu, gpa, data);
                return true;
            }
        }
        self.bus.write(Space::Mmio, gpa, data);
        true
    }

    /// Whether `gpa` is device space: the MMIO hole below 4 GiB, where the PC's devices live.
    pub fn is_device_space(gpa: u64) -> bool {
        (MMIO_HOLE_START..MMIO_HOLE_END).contains(&gpa)
    }

    /// Port read through the bus (unclaimed ports float high: all ones).
    pub fn port_read(&self, port: u16, size: u8) -> u32 {
        let mut b = [0u8; 4];
        let n = (size as usize).clamp(1, 4);
        self.bus.read(Space::Port, port as u64, &mut b[..n]);
        u32::from_le_bytes(b)
    }

    /// Port write through the bus (unclaimed ports drop the write).
    pub fn port_write(&self, port: u16, size: u8, value: u32) -> IoOutcome {
        let n = (size as usize).clamp(1, 4);
        self.bus.write(Space::Port, port as u64, &value.to_le_bytes()[..n]).unwrap_or(IoOutcome::Done)
    }
}

impl DeviceIo for GuestDevices {
    fn is_device(&self, gpa: u64) -> bool {
        Self::is_device_space(gpa)
    }

    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let v = self.port_read(port, size);
        drop(self.update_irqs());
        v
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome {
        let o = self.port_write(port, size, value);
        drop(self.update_irqs());
        o
    }

    /// Device memory as vCPU 0 sees it (tests of single-vCPU guests).
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
        let ok = self.mmio_read_by(0, gpa, data);
        drop(self.update_irqs());
        ok
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let ok = self.mmio_write_by(0, gpa, data);
        drop(self.update_irqs());
        ok
    }

    fn apic_base(&mut self) -> Option<u64> {
        Some(self.irq.lock().apic_base(0))
    }

    fn set_apic_base(&mut self, value: u64) -> bool {
        self.irq.lock().set_apic_base(0, value).is_ok()
    }
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_bytes_reach_the_output_and_lsr_reads_ready() {
        let mut d = GuestDevices::default();
        let mut out = Vec::new();
        for b in b"ok\n" {
            assert_eq!(d.io_write(COM1, 1, *b as u32), IoOutcome::Done);
            // A host that drains after every write (THR holds one byte).
            d.uart.lock().drain_output(&mut out, usize::MAX);
        }
        assert_eq!(out, b"ok\n");
        assert_eq!(d.io_read(COM1 + 5, 1) & 0x60, 0x60);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_per_byte() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_read(0x80, 4), 0xffff_ffff);
        assert_eq!(d.io_read(0x66, 2), 0xffff);
        // A word read straddling COM1's last register and the next port.
        let v = d.io_read(COM1 + 7, 2);
        assert_eq!(v >> 8, 0xff);
    }

    #[test]
    fn passthrough_clears_exactly_the_uart_ports() {
        let mut bm = vec![0xffu8; 8192];
        io_bitmap_allow(&mut bm, 0x2f8, 8);
        for port in 0..=0xffffu32 {
            let intercepted = bm[port as usize / 8] & (1 << (port % 8)) != 0;
            assert_eq!(intercepted, !(0x2f8..0x300).contains(&port), "port {port:#x}");
        }
    }

    #[test]
    fn uart_receive_interrupt_reaches_the_pic_as_irq4() {
        let mut d = GuestDevices::default();
        // Linux's init_8259A: vector base 0x20 on the master, cascade, 8086 mode; unmask IRQ 4.
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            d.io_write(p, 1, v);
        }
        d.io_write(0x21, 1, 0xef);
        // UART: receive interrupts on, OUT2 gates the line to the PIC.
        d.io_write(COM1 + 1, 1, 0x01);
        d.io_write(COM1 + 4, 1, 0x0b);
        assert!(!d.irq.lock().pic.has_interrupt());
        assert_eq!(d.receive_input(b"x"), 1);
        assert!(d.irq.lock().pic.has_interrupt());
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x24));
        assert_eq!(d.io_read(COM1, 1), b'x' as u32);
        d.io_write(0x20, 1, 0x20); // EOI
        assert!(!d.irq.lock().pic.has_interrupt(), "the line dropped when the byte was read");
        d.receive_input(b"y");
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x24), "the next byte interrupts again");
    }

    /// A clock the PIT tests move by hand.
    static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn test_clock() -> u64 {
        NOW.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn pit_counter0_periodic_ticks_reach_the_pic_as_irq0_with_deadlines() {
        NOW.store(1_000_000, std::sync::atomic::Ordering::SeqCst);
        let mut d = GuestDevices::with_clock(test_clock);
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            d.io_write(p, 1, v);
        }
        d.io_write(0x21, 1, 0xfe); // only IRQ 0
        // Linux's PIT setup for HZ = 100: counter 0, LSB then MSB, mode 2 (control 0x34),
        // count 11932 = 1193182 / 100 (8254 datasheet, mode 2: rate generator).
        d.io_write(0x43, 1, 0x34);
        d.io_write(0x40, 1, 11932 & 0xff);
        d.io_write(0x40, 1, 11932 >> 8);
        let now = test_clock();
        let deadline = d.next_deadline(now).expect("a periodic timer has a next edge");
        // One period of 11932 ticks at 1.193182 MHz is 10 ms.
        let period = deadline - now;
        assert!((9_990_000..=10_010_000).contains(&period), "{period}");
        d.advance(deadline - 1);
        assert!(!d.irq.lock().pic.has_interrupt(), "no tick before the deadline");
        d.advance(deadline);
        assert!(d.irq.lock().pic.has_interrupt());
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x20), "IRQ 0 at the master's base vector");
        d.io_write(0x20, 1, 0x20);
        // Three periods late: one interrupt for all of them, and the next deadline is ahead.
        d.advance(deadline + 3 * period + 5);
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x20));
        d.io_write(0x20, 1, 0x20);
        assert!(d.next_deadline(deadline + 3 * period + 5).unwrap() > deadline + 3 * period + 5);
    }

    #[test]
    fn port_0x61_reaches_the_pit_gate_and_reads_back() {
        let mut d = GuestDevices::with_clock(test_clock);
        d.io_write(0x61, 1, 0x01);
        assert_eq!(d.io_read(0x61, 1) & 0x03, 0x01, "gate bit 0 reads back (system control port B)");
        assert_ne!(d.io_read(0x61, 1), 0xff, "port 0x61 is claimed");
    }

    #[test]
    fn test_exit_carries_the_code() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 0), IoOutcome::TestExit(0));
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 7), IoOutcome::TestExit(7));
    }

    #[test]
    fn every_pc_device_sits_on_the_bus_at_its_place() {
        let d = GuestDevices::default();
        let ports: Vec<(u64, u64)> = d.bus.ranges(Space::Port).map(|r| (r.base, r.len)).collect();
        assert_eq!(ports, [(0x20, 2), (0x40, 4), (0x60, 1), (0x61, 1), (0x64, 1), (0x70, 2), (0xa0, 2), (0xf4, 4), (0x3f8, 8), (0x600, 12)]);
        let mmio: Vec<(u64, u64)> = d.bus.ranges(Space::Mmio).map(|r| (r.base, r.len)).collect();
        assert_eq!(mmio, [(0xfec0_0000, 0x1000)]);
    }

    #[test]
    fn a_test_exit_carries_all_four_bytes_and_only_at_its_first_port() {
        let mut d = GuestDevices::default();
        assert_eq!(d.io_write(TEST_EXIT_PORT, 4, 0x0102_0304), IoOutcome::TestExit(0x0102_0304));
        assert_eq!(d.io_write(TEST_EXIT_PORT, 2, 0x0506), IoOutcome::TestExit(0x0506));
        assert_eq!(d.io_write(TEST_EXIT_PORT + 1, 1, 3), IoOutcome::Done);
        assert_eq!(d.io_read(TEST_EXIT_PORT, 1), 0xff);
    }

    #[test]
    fn device_memory_is_the_hole_below_4_gib_and_unclaimed_bytes_float() {
        let mut d = GuestDevices::default();
        let mut b = [0u8; 4];
        // RAM or nothing at all is not device space: the handler stops the guest there.
        assert!(!d.mmio_read(0x4000_0000, &mut b));
        assert!(!d.mmio_write(0xbfff_ffff, &[1]));
        assert!(!d.mmio_read(0x1_0000_0000, &mut b));
        // The hole where no device is: a PC's floating bus reads all ones, drops writes.
        assert!(d.mmio_write(0xfed0_0000, &[1, 2, 3, 4]));
        assert!(d.mmio_read(0xfed0_0000, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(d.mmio_read(0xc000_0000, &mut b));
        assert!(d.mmio_read(0xffff_fffc, &mut b));
    }

    #[test]
    fn the_ioapic_answers_in_the_hole() {
        let mut d = GuestDevices::default();
        // IOREGSEL = 1 (the version register), then IOWIN (82093AA datasheet 3.2.2).
        assert!(d.mmio_write(IOAPIC_BASE, &[1, 0, 0, 0]));
        let mut b = [0u8; 4];
        assert!(d.mmio_read(IOAPIC_BASE + 0x10, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x0017_0020);
    }

    #[test]
    fn the_local_apic_page_answers_in_the_hole_for_the_accessing_vcpu() {
        // SDM 11.4.1: the APIC registers at 0xFEE0_0000; ID in bits 31:24 of offset 0x20,
        // version at 0x30 (11.4.8).
        let d = GuestDevices::new(no_clock, no_clock, 2);
        let read = |v: usize, off: u64| {
            let mut b = [0u8; 4];
            assert!(d.mmio_read_by(v, crate::vm::memmap::LAPIC_BASE + off, &mut b));
            u32::from_le_bytes(b)
        };
        assert_eq!((read(0, 0x20) >> 24, read(1, 0x20) >> 24), (0, 1));
        assert_eq!(read(1, 0x30), crate::devices::lapic::LAPIC_VERSION);
        // A vCPU whose APIC is disabled (IA32_APIC_BASE.EN clear) finds the floating hole.
        d.irq.lock().set_apic_base(1, 0xfee0_0000).unwrap();
        assert_eq!(read(1, 0x30), 0xffff_ffff);
    }

    #[test]
    fn the_uart_interrupt_reaches_the_local_apic_through_io_apic_pin_4() {
        // Linux in APIC mode: LINT0 masked, ISA IRQ 4 on pin 4 edge/high, fixed, to APIC 0.
        let mut d = GuestDevices::default();
        assert!(d.mmio_write(LAPIC_BASE_FOR_TESTS + 0x350, &0x0001_0700u32.to_le_bytes()));
        assert!(d.mmio_write(IOAPIC_BASE, &[0x10 + 2 * 4 + 1, 0, 0, 0]));
        assert!(d.mmio_write(IOAPIC_BASE + 0x10, &0u32.to_le_bytes()));
        assert!(d.mmio_write(IOAPIC_BASE, &[0x10 + 2 * 4, 0, 0, 0]));
        assert!(d.mmio_write(IOAPIC_BASE + 0x10, &0x34u32.to_le_bytes()));
        d.io_write(COM1 + 1, 1, 0x01);
        d.io_write(COM1 + 4, 1, 0x0b);
        assert!(!d.irq.lock().has_interrupt(0));
        d.receive_input(b"x");
        assert_eq!(d.irq.lock().acknowledge(0), Some(0x34));
        // EOI through the page (11.8.5), the byte read: the line drops, nothing is pending.
        assert!(d.mmio_write(LAPIC_BASE_FOR_TESTS + 0xb0, &0u32.to_le_bytes()));
        assert_eq!(d.io_read(COM1, 1), b'x' as u32);
        assert!(!d.irq.lock().has_interrupt(0));
        d.receive_input(b"y");
        assert_eq!(d.irq.lock().acknowledge(0), Some(0x34), "the next byte's edge sends again");
    }

    const LAPIC_BASE_FOR_TESTS: u64 = crate::vm::memmap::LAPIC_BASE;

    #[test]
    fn a_vcpus_timer_deadline_is_its_lapic_timer_and_for_vcpu_0_also_the_platforms() {
        MY_NOW.with(|n| n.set(1_000));
        let d = GuestDevices::new(my_clock, no_clock, 2);
        assert_eq!((d.next_deadline_for(0, 1_000), d.next_deadline_for(1, 1_000)), (None, None));
        let w = |v: usize, off: u64, val: u32| assert!(d.mmio_write_by(v, LAPIC_BASE_FOR_TESTS + off, &val.to_le_bytes()));
        // LAPIC timer of vCPU 1: divide by 1, vector 0x40, 10 us at the 1 GHz bus (11.5.4).
        w(1, 0x3e0, 0b1011);
        w(1, 0x320, 0x40);
        w(1, 0x380, 10_000);
        assert_eq!((d.next_deadline_for(0, 1_000), d.next_deadline_for(1, 1_000)), (None, Some(11_000)));
        // The PIT (counter 0, mode 2, count 2: 1.68 us) is vCPU 0's to bring up to date.
        d.port_write(0x43, 1, 0x34);
        d.port_write(0x40, 1, 2);
        d.port_write(0x40, 1, 0);
        let pit = d.next_deadline_for(0, 1_000).expect("the PIT runs");
        assert!(pit < 11_000 && d.next_deadline_for(1, 1_000) == Some(11_000));
        drop(d.advance(11_000));
        assert!(d.irq.lock().has_interrupt(1));
        // The run loop's combined call gives the same deadlines.
        let (_, at1) = d.advance_for(1, 11_000);
        assert_eq!(at1, d.next_deadline_for(1, 11_000));
        let (_, at0) = d.advance_for(0, 11_000);
        assert_eq!(at0, d.next_deadline_for(0, 11_000));
        assert!(at0.is_some(), "the PIT keeps running");
    }

    #[test]
    fn reset_returns_devices_to_power_on_but_keeps_the_bus() {
        let mut d = GuestDevices::default();
        d.io_write(COM1 + 7, 1, 0x5a); // scratch register
        d.io_write(0x21, 1, 0x00);
        d.io_write(0x602, 2, 0x0120); // PM1_EN
        d.reset();
        assert_eq!(d.io_read(COM1 + 7, 1), 0, "scratch register back to 0");
        assert_eq!(d.io_read(0x602, 2), 0, "PM1_EN back to 0");
        assert_eq!(d.bus.ranges(Space::Port).count(), 10);
    }

    #[test]
    fn the_pic_pair_answers_at_both_of_its_port_ranges() {
        let mut d = GuestDevices::default();
        // OCW1 writes the interrupt mask; a read of the data port returns it (8259A datasheet).
        d.io_write(0x21, 1, 0xa5);
        d.io_write(0xa1, 1, 0x5a);
        assert_eq!((d.io_read(0x21, 1), d.io_read(0xa1, 1)), (0xa5, 0x5a));
    }

    #[test]
    fn pit_counters_read_back_through_the_bus() {
        let mut d = GuestDevices::default();
        // Counter 0, LSB then MSB, mode 0, count 0x1234; latch (counter-latch command) and read
        // low then high (8254 datasheet: read operations). The test clock stands still.
        d.io_write(0x43, 1, 0x30);
        d.io_write(0x40, 1, 0x34);
        d.io_write(0x40, 1, 0x12);
        d.io_write(0x43, 1, 0x00);
        assert_eq!((d.io_read(0x40, 1), d.io_read(0x40, 1)), (0x34, 0x12));
    }

    #[test]
    fn passthrough_of_a_range_inside_a_bitmap_byte_keeps_its_neighbours_intercepted() {
        let mut bm = vec![0xffu8; 8192];
        io_bitmap_allow(&mut bm, 0x3f9, 3);
        assert_eq!(bm[0x3f8 / 8], 0b1111_0001, "ports 0x3f9..0x3fc cleared, the rest of the byte kept");
    }

    /// Fixed clocks for the RTC tests (the PIT tests move `NOW`, in parallel).
    fn at_5ms() -> u64 {
        5_000_000
    }
    fn at_1s() -> u64 {
        1_000_000_000
    }

    fn wall_2026() -> u64 {
        1_796_227_778 // 2026-12-02 16:09:38 UTC
    }

    #[test]
    fn the_rtc_shows_the_wall_clock_it_was_given_at_ports_0x70_and_0x71() {
        let mut d = GuestDevices::new(at_5ms, wall_2026, 1);
        // Register B as a PC BIOS leaves it: BCD, 24-hour ("Register B").
        let reg = |d: &mut GuestDevices, i: u32| {
            d.io_write(0x70, 1, i);
            d.io_read(0x71, 1)
        };
        assert_eq!((reg(&mut d, 9), reg(&mut d, 8), reg(&mut d, 7)), (0x26, 0x12, 0x02));
        assert_eq!((reg(&mut d, 4), reg(&mut d, 2), reg(&mut d, 0)), (0x16, 0x09, 0x38));
    }

    /// The PIC pair initialised as a PC BIOS does (ICW1-4: master at vector 0x20, slave at
    /// 0x28 on IRQ 2), then masked down to IRQ 8; the RTC's periodic interrupt on at 1024 Hz
    /// (register A rate 6, "Register A" Table 4; PIE in register B).
    fn irq8_only_and_the_rtc_ticking(d: &mut GuestDevices) {
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            d.io_write(p, 1, v);
        }
        d.io_write(0x21, 1, 0xfb); // cascade only
        d.io_write(0xa1, 1, 0xfe); // IRQ 8 only
        d.io_write(0x70, 1, 0x0a);
        d.io_write(0x71, 1, 0x26);
        d.io_write(0x70, 1, 0x0b);
        d.io_write(0x71, 1, 0x42);
    }

    #[test]
    fn the_rtc_line_is_sampled_at_every_port_access_and_its_deadline_is_vcpu_0s() {
        MY_NOW.with(|n| n.set(1_000_000_000));
        let mut d = GuestDevices::new(my_clock, wall_2026, 2);
        irq8_only_and_the_rtc_ticking(&mut d);
        let now = my_clock();
        let at = d.next_deadline(now).unwrap();
        // The ISA timers' deadlines wake vCPU 0, the one that brings them up to date.
        assert_eq!(d.advance_for(1, now).1, None);
        assert_eq!(d.advance_for(0, now).1, Some(at));
        assert!(!d.irq.lock().has_interrupt(0), "not due yet");
        // Due now: any port access brings the interrupt lines up to date, not only advance().
        MY_NOW.with(|n| n.set(at));
        d.io_read(0x80, 1);
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x28));
    }

    #[test]
    fn debug_output_names_the_bus_ranges() {
        let s = format!("{:?}", GuestDevices::default());
        assert!(s.starts_with("GuestDevices { bus: Bus { port: [") && s.ends_with(", .. }"), "{s}");
        assert!(s.contains("Range { base: 1016, len: 8 }"), "COM1 at 0x3f8: {s}");
    }

    #[test]
    fn without_a_wall_clock_the_rtc_shows_the_unix_epoch() {
        let mut d = GuestDevices::default();
        let mut reg = |i: u32| {
            d.io_write(0x70, 1, i);
            d.io_read(0x71, 1)
        };
        // BCD (register B as the BIOS leaves it): year 70, month 1, day 1, 00:00:00.
        assert_eq!([9, 8, 7, 4, 2, 0].map(&mut reg), [0x70, 0x01, 0x01, 0, 0, 0]);
    }

    #[test]
    fn the_rtc_periodic_interrupt_reaches_the_slave_pic_as_irq8_with_a_deadline() {
        let mut d = GuestDevices::new(at_1s, wall_2026, 1);
        irq8_only_and_the_rtc_ticking(&mut d);
        let now = at_1s();
        let at = d.next_deadline(now).expect("a periodic interrupt has a deadline");
        assert!(at - now <= 976_563, "{} ns to the next 1024 Hz tick", at - now);
        drop(d.advance(at));
        assert_eq!(d.irq.lock().pic.acknowledge(), Some(0x28), "IRQ 8 at the slave's base vector");
    }

    #[test]
    fn the_keyboard_controller_resets_the_machine_through_the_port_bus() {
        let mut d = GuestDevices::default();
        d.io_write(0x64, 1, 0xaa);
        assert_eq!(d.io_read(0x60, 1), 0x55, "8042 self-test through port 0x60");
        assert_eq!(d.io_write(0x64, 1, 0xfe), IoOutcome::Reset);
    }

    // What Linux's ACPI power-off does at the end (`acpi_hw_legacy_sleep`): write SLP_TYP,
    // then SLP_TYP | SLP_EN, as 16-bit writes to PM1a_CNT; the PM timer runs on the guest's
    // clock; a reset restarts it.
    std::thread_local! {
        /// A clock of this test thread's own (tests run in parallel).
        static MY_NOW: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }
    fn my_clock() -> u64 {
        MY_NOW.with(|n| n.get())
    }

    #[test]
    fn the_acpi_pm_block_powers_off_and_times_through_the_port_bus() {
        MY_NOW.with(|n| n.set(5_000_000));
        let mut d = GuestDevices::with_clock(my_clock);
        assert_eq!(d.io_read(0x604, 2) & 1, 1, "SCI_EN: in ACPI mode");
        assert_eq!(d.io_write(0x604, 2, 5 << 10), IoOutcome::Done);
        assert_eq!(d.io_write(0x604, 2, (5 << 10) | (1 << 13)), IoOutcome::PowerOff);
        let t0 = d.io_read(0x608, 4);
        MY_NOW.with(|n| n.set(6_000_000));
        assert_eq!(d.io_read(0x608, 4).wrapping_sub(t0), 3_579, "1 ms of PM timer");
        d.reset();
        assert!(d.io_read(0x608, 4) < 3, "counts from 0 again after a reset");
    }
}
