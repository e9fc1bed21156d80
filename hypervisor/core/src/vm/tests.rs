//! Exit-handler tests over a fake vCPU: every exit's answer, without hardware.

use super::fake::*;
use super::*;
use alloc::vec::Vec;

/// Flat guest RAM of 64 KiB at guest-physical 0.
struct Ram(Vec<u8>);

impl GuestPhys for Ram {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(src) = self.0.get(gpa as usize..gpa as usize + buf.len()) else { return false };
        buf.copy_from_slice(src);
        true
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> bool {
        let Some(dst) = self.0.get_mut(gpa as usize..gpa as usize + buf.len()) else { return false };
        dst.copy_from_slice(buf);
        true
    }
}

use super::devices::GuestDevices;

struct Guest {
    state: VcpuState,
    devices: GuestDevices,
    ram: Ram,
    host: FakeHost,
}

/// The length every fake instruction exit reports: 2 bytes, so `rip` shows it was used.
const LEN: u64 = 2;

/// Runs one instruction exit (next RIP = RIP + 2); returns the action and the UART output.
fn run(exit: Exit, cpu: &mut FakeCpu, g: &mut Guest) -> (Action, Vec<u8>) {
    let e = VmExit::insn(exit, cpu.rip + LEN);
    run_exit(&e, cpu, g)
}

fn run_exit(e: &VmExit, cpu: &mut FakeCpu, g: &mut Guest) -> (Action, Vec<u8>) {
    let mut io = DrainingIo { devices: &mut g.devices, out: Vec::new() };
    let mut env = Env { io: &mut io, mem: &mut g.ram, host: &g.host };
    let a = handle_exit(e, cpu, &mut g.state, &mut env);
    (a, io.out)
}

/// The guest's devices with the UART output taken after every port write, so each THR write
/// of a string OUTS finds the transmitter empty. Forwards every `DeviceIo` method.
struct DrainingIo<'a> {
    devices: &'a mut GuestDevices,
    out: Vec<u8>,
}

impl DeviceIo for DrainingIo<'_> {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.devices.io_read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) -> IoOutcome {
        let o = self.devices.io_write(port, size, value);
        self.devices.uart.lock().drain_output(&mut self.out, usize::MAX);
        o
    }
    fn is_device(&self, gpa: u64) -> bool {
        self.devices.is_device(gpa)
    }
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
        self.devices.mmio_read(gpa, data)
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        self.devices.mmio_write(gpa, data)
    }
    fn apic_base(&mut self) -> Option<u64> {
        self.devices.apic_base()
    }
    fn set_apic_base(&mut self, value: u64) -> bool {
        self.devices.set_apic_base(value)
    }
}

fn guest() -> Guest {
    let host = FakeHost { wbinvd: core::cell::Cell::new(0) };
    Guest { state: VcpuState::new(0, 2_000_000, &host), devices: GuestDevices::default(), ram: Ram(vec![0; 65536]), host }
}

#[test]
fn cpuid_answers_from_policy_and_skips() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = 0x4000_0000;
    cpu.gprs.rbx = 0xdead;
    assert_eq!(run(Exit::Cpuid, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!(cpu.gprs.rbx, cpuid::SIGNATURE[0] as u64);
    assert_eq!(cpu.skipped, 1);
    assert_eq!(g.state.stats.get(ExitKind::Cpuid), 1);
}

#[test]
fn unknown_msr_injects_gp_without_skipping() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = 0x4b56_4d02;
    cpu.cr0 = 1;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0)), (GP, Some(0))]);
    assert_eq!(cpu.skipped, 0, "a faulting instruction must not be skipped");
    assert_eq!(g.state.stats.get(ExitKind::Msr), 2);
}

#[test]
fn emulated_msr_reads_split_into_edx_eax() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = msr::IA32_MISC_ENABLE as u64;
    cpu.gprs.rax = 0x1_2345_6789;
    cpu.gprs.rdx = 0xabcd;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    cpu.gprs.rax = 0;
    cpu.gprs.rdx = 0;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    assert_eq!((cpu.gprs.rdx, cpu.gprs.rax), (0xabcd, 0x2345_6789), "WRMSR takes EDX:EAX, upper halves ignored");
    assert_eq!(cpu.skipped, 2);
}

/// SDM Vol. 3A 11.4.4: IA32_APIC_BASE holds the base, BSP (bit 8) and EN (bit 11); Bastion
/// keeps the base fixed, so a relocation faults rather than silently not moving the page.
#[test]
fn apic_base_msr_reads_base_bsp_and_enable_and_faults_on_relocation() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 1;
    cpu.gprs.rcx = crate::devices::irq::MSR_APIC_BASE as u64;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    assert_eq!((cpu.gprs.rdx, cpu.gprs.rax), (0, 0xfee0_0900));
    assert_eq!(cpu.skipped, 1);
    cpu.gprs.rax = 0xfed0_0900;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0))]);
    assert_eq!(cpu.skipped, 1, "the faulting WRMSR is not skipped");
    // Clearing EN turns the APIC off: the PIC's INTR goes to the CPU directly.
    cpu.gprs.rax = 0xfee0_0100;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.skipped, 2);
    assert_eq!(g.devices.irq.lock().apic_base(0), 0xfee0_0100);
}

#[test]
fn efer_writes_keep_lma_and_reject_svme() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.efer = msr::EFER_LMA;
    cpu.gprs.rcx = msr::EFER as u64;
    cpu.gprs.rax = msr::EFER_LME | msr::EFER_SCE;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.efer, msr::EFER_LME | msr::EFER_SCE | msr::EFER_LMA);
    cpu.gprs.rax = msr::EFER_SVME;
    cpu.cr0 = 1; // protected mode: #GP carries error code 0
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0))]);
    run(Exit::Rdmsr, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, msr::EFER_LME | msr::EFER_SCE | msr::EFER_LMA);
}

#[test]
fn uart_output_becomes_lines_and_lsr_reads_ready() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    let mut all = Vec::new();
    for b in b"ok\n" {
        cpu.gprs.rax = 0xffff_ff00 | *b as u64;
        let (a, out) = run(Exit::Io { port: 0x3f8, size: 1, write: true, string: None }, &mut cpu, &mut g);
        assert_eq!(a, Action::Resume);
        all.extend(out);
    }
    assert_eq!(all, b"ok\n", "only AL is written");
    cpu.gprs.rax = 0x1234_5600;
    run(Exit::Io { port: 0x3fd, size: 1, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0x1234_5660, "IN AL keeps the upper bits of RAX");
    assert_eq!(g.state.stats.get(ExitKind::Io), 4);
}

#[test]
fn unclaimed_ports_read_all_ones_and_in_eax_zero_extends() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = u64::MAX;
    run(Exit::Io { port: 0x80, size: 4, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff_ffff);
    cpu.gprs.rax = 0;
    run(Exit::Io { port: 0x66, size: 2, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff);
}

#[test]
fn test_exit_port_stops_with_the_code() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = 0;
    let (a, _) = run(Exit::Io { port: 0xf4, size: 4, write: true, string: None }, &mut cpu, &mut g);
    assert_eq!(a, Action::Stop(StopReason::TestExit(0)));
    cpu.gprs.rax = 0xffff_0000_0000_0007;
    let (a, _) = run(Exit::Io { port: 0xf4, size: 4, write: true, string: None }, &mut cpu, &mut g);
    assert_eq!(a, Action::Stop(StopReason::TestExit(7)));
    assert_eq!(StopReason::TestExit(7).to_string(), "test exit: FAIL (code 0x7)");
}

#[test]
fn hypercall_version_unknown_and_user_mode() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = hypercall::VERSION;
    run(Exit::Hypercall, &mut cpu, &mut g);
    assert_eq!((cpu.gprs.rax, cpu.gprs.rbx, cpu.gprs.rcx), (0, hypercall::MAGIC, 1));
    cpu.gprs.rax = 0x1234;
    run(Exit::Hypercall, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, u64::MAX);
    cpu.cpl = 3;
    cpu.gprs.rax = hypercall::VERSION;
    run(Exit::Hypercall, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, hypercall::NOT_PERMITTED);
    assert_eq!(cpu.skipped, 3);
    // The ABI's numbers, as guests (and README) have them: VERSION 0 answers "BSTN" (RBX,
    // little-endian) and ABI 1; YIELD 1; -1 for an unknown function, -2 outside ring 0.
    assert_eq!((hypercall::VERSION, hypercall::YIELD, hypercall::ABI_VERSION), (0, 1, 1));
    assert_eq!(hypercall::MAGIC.to_le_bytes()[..4], *b"BSTN");
    assert_eq!((hypercall::UNKNOWN as i64, hypercall::NOT_PERMITTED as i64), (-1, -2));
}

/// IN to AL or AX leaves the rest of RAX alone, IN to EAX zero-extends into RAX (SDM Vol. 1
/// 3.4.1.1); OUT sends only the operand size's bytes.
#[test]
fn in_and_out_use_exactly_their_operand_size_of_rax() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    // The scratch register of COM1 (0x3FF) keeps the byte written.
    cpu.gprs.rax = 0xdead_beef_1234_5678;
    run(Exit::Io { port: 0x3ff, size: 1, write: true, string: None }, &mut cpu, &mut g);
    cpu.gprs.rax = 0xffff_ffff_ffff_ff00;
    run(Exit::Io { port: 0x3ff, size: 1, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff_ffff_ffff_ff78);
    // A 16-bit read of an unclaimed port is all ones in AX only: EAX 31:16 and above stay.
    cpu.gprs.rax = 0x1111_2222_3333_4444;
    run(Exit::Io { port: 0x1230, size: 2, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0x1111_2222_3333_ffff);
    cpu.gprs.rax = 0x1111_2222_3333_4444;
    run(Exit::Io { port: 0x1230, size: 4, write: false, string: None }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff_ffff, "a 32-bit IN clears RAX 63:32");
}

/// The segment-register field of VMX's instruction information (SDM Vol. 3C 28.2.5, Table
/// 28-8) and of SVM's IOIO EXITINFO1 (APM Vol. 2 15.10.2): 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS;
/// 6 and 7 name none.
#[test]
fn segment_register_numbers_are_the_architectures() {
    let all = [Seg::Es, Seg::Cs, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs];
    for (n, seg) in all.iter().enumerate() {
        assert_eq!(Seg::from_index(n as u64), Some(*seg), "{n}");
    }
    assert_eq!((Seg::from_index(6), Seg::from_index(7), Seg::from_index(u64::MAX)), (None, None, None));
}

#[test]
fn hlt_halts_and_says_whether_interrupts_were_on() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    assert_eq!(run(Exit::Hlt, &mut cpu, &mut g).0, Action::Halt { interrupts_enabled: false });
    cpu.rflags = 1 << 9;
    assert_eq!(run(Exit::Hlt, &mut cpu, &mut g).0, Action::Halt { interrupts_enabled: true });
    assert_eq!(cpu.skipped, 2, "HLT completes: the vCPU resumes after it when woken");
}

#[test]
fn virtualization_instructions_get_ud() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    assert_eq!(run(Exit::VirtInstruction, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!(cpu.injected, [(UD, None)]);
    assert_eq!(cpu.skipped, 0);
}

/// No performance counter is virtualized (CPUID leaf 0xA is zero), so RDPMC of any counter,
/// 0 included, is #GP(0) in protected mode (SDM Vol. 2B RDPMC: "#GP(0) if ECX does not
/// specify a valid counter"), with RIP left at the RDPMC and nothing in EDX:EAX.
#[test]
fn rdpmc_is_gp_for_every_counter() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 1;
    for counter in [0u64, 1, 3, 0x4000_0000, 0xffff_ffff] {
        cpu.gprs.rcx = counter;
        (cpu.gprs.rax, cpu.gprs.rdx) = (0x1111, 0x2222);
        assert_eq!(run(Exit::Rdpmc, &mut cpu, &mut g).0, Action::Resume);
        assert_eq!((cpu.gprs.rax, cpu.gprs.rdx), (0x1111, 0x2222), "counter {counter:#x}");
    }
    assert_eq!(cpu.injected, [(GP, Some(0)); 5]);
    assert_eq!(cpu.skipped, 0);
    assert_eq!(Exit::Rdpmc.kind(), ExitKind::Msr);
}

#[test]
fn cr_writes_are_checked() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 0x11;
    run(Exit::CrWrite { cr: 0, value: 0x8000_0011 }, &mut cpu, &mut g);
    assert_eq!(cpu.cr0, 0x8000_0011);
    run(Exit::CrWrite { cr: 0, value: 0x8000_0010 }, &mut cpu, &mut g); // PG without PE
    run(Exit::CrWrite { cr: 4, value: 1 << 13 }, &mut cpu, &mut g); // VMXE: VMX is hidden
    run(Exit::CrWrite { cr: 0, value: 1 << 32 }, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0)); 3]);
    run(Exit::CrWrite { cr: 4, value: 0x20 }, &mut cpu, &mut g);
    assert_eq!((cpu.cr4, cpu.skipped), (0x20, 2));
    assert_eq!(cpu.rip, 2 * LEN, "each completed write moved RIP by its instruction length");
}

#[test]
fn fatal_exits_stop_with_a_report_and_stats_count_everything() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    let (a, _) = run(Exit::NestedPageFault { gpa: 0x4000_0000, write: false, fetch: false }, &mut cpu, &mut g);
    let Action::Stop(r) = a else { panic!() };
    assert_eq!(r.to_string(), "read guest-physical 0x40000000, which is neither RAM nor a device");
    assert_eq!(run(Exit::TripleFault, &mut cpu, &mut g).0, Action::Stop(StopReason::TripleFault));
    let (a, _) = run(Exit::Unhandled { code: 99, info1: 1, info2: 2 }, &mut cpu, &mut g);
    assert_eq!(a, Action::Stop(StopReason::Unhandled { code: 99, info1: 1, info2: 2 }));
    assert_eq!(run(Exit::Interrupted, &mut cpu, &mut g).0, Action::Resume);
    // An exit that saved the host's state instead of the guest's: the guest cannot go on, and
    // its stop line says what the backend saw. Counted with the entry failures.
    let (a, _) = run(Exit::StateLost("RIP at VMRUN's return".into()), &mut cpu, &mut g);
    let Action::Stop(r) = a else { panic!() };
    assert_eq!(r.to_string(), "the CPU lost the guest's state at an exit: RIP at VMRUN's return");
    assert_eq!((cpu.skipped, cpu.injected.len()), (0, 0), "nothing of the guest is touched");
    assert_eq!(g.state.stats.total(), 5);
    assert_eq!(g.state.stats.to_string(), "total 5: npf 1, triple-fault 1, interrupt 1, entry-failed 1, unhandled 1");
}

#[test]
fn registers_by_encoding_follow_the_sdm_order() {
    let g = Gprs { rax: 1, rcx: 2, rdx: 3, rbx: 4, rbp: 6, rsi: 7, rdi: 8, r8: 9, r15: 16, ..Gprs::default() };
    let got: Vec<u64> = [0, 1, 2, 3, 4, 5, 6, 7, 8, 15].iter().map(|&n| g.by_encoding(n, 5)).collect();
    assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 16]);
}

#[test]
fn interrupt_window_exit_stops_asking_and_resumes() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.window_requested = true;
    assert_eq!(run(Exit::InterruptWindow, &mut cpu, &mut g).0, Action::Resume);
    assert!(!cpu.window_requested);
    assert_eq!(g.state.stats.get(ExitKind::Interrupted), 1);
}

#[test]
fn nmi_window_exit_stops_asking_and_resumes() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.nmi_window_requested = true;
    cpu.window_requested = true;
    assert_eq!(run(Exit::NmiWindow, &mut cpu, &mut g).0, Action::Resume);
    assert!(!cpu.nmi_window_requested);
    assert!(cpu.window_requested, "an interrupt window asked for stays asked for");
    assert_eq!(g.state.stats.get(ExitKind::Interrupted), 1);
}

#[test]
fn pending_pic_interrupt_is_injected_only_through_an_open_window() {
    use crate::devices::irq::IrqChip;
    let mut chip = IrqChip::new(2, || 0);
    let mut cpu = FakeCpu::default();
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 0), "nothing pending");
    assert!(!cpu.window_requested);
    for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)] {
        chip.pic.write(p, v);
    }
    chip.set_isa_irq(4, true);
    // The PIC's INTR reaches the boot processor only (LINT0 ExtINT, virtual wire).
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 1));
    assert!(!cpu.window_requested);
    // Interrupts off in the guest: ask for a window, inject nothing.
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 0));
    assert!(cpu.window_requested && cpu.interrupts.is_empty());
    // Window open: the vector goes in and the request is withdrawn.
    cpu.window_open = true;
    assert!(deliver_interrupt(&mut cpu, &mut chip, 0));
    assert_eq!(cpu.interrupts, [0x24]);
    assert!(!cpu.window_requested);
    // In service until EOI: nothing more to deliver.
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 0));
    assert_eq!(cpu.interrupts.len(), 1);
}

/// SDM 11.6.1: a fixed IPI lands in the target's IRR and is injected on the target's entry.
#[test]
fn a_local_apic_interrupt_is_injected_into_its_own_vcpu() {
    use crate::devices::irq::IrqChip;
    use crate::devices::lapic::{LAPIC_BASE, REG_ICR_HIGH, REG_ICR_LOW};
    let mut chip = IrqChip::new(2, || 0);
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_HIGH, &(1u32 << 24).to_le_bytes());
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &0x61u32.to_le_bytes());
    let mut cpu = FakeCpu { window_open: true, ..FakeCpu::default() };
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 0));
    assert!(deliver_interrupt(&mut cpu, &mut chip, 1));
    assert_eq!(cpu.interrupts, [0x61]);
}

/// SDM Vol. 3A 11.6.1: an IPI with delivery mode NMI (100b) is an NMI for the target, whose
/// vector field is ignored; it is delivered only when the target's NMIs are not blocked by a
/// handler still running (SDM Vol. 3A 7.7), and not taken from the chip before.
#[test]
fn an_nmi_ipi_is_injected_into_its_target_once_nmis_are_unblocked() {
    use crate::devices::irq::IrqChip;
    use crate::devices::lapic::{LAPIC_BASE, REG_ICR_HIGH, REG_ICR_LOW};
    let mut chip = IrqChip::new(2, || 0);
    let mut cpu = FakeCpu::default();
    assert!(!deliver_nmi(&mut cpu, &mut chip, 1), "nothing pending");
    assert!(!cpu.nmi_window_requested);
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_HIGH, &(1u32 << 24).to_le_bytes());
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &(0x400u32 | 0x61).to_le_bytes());
    assert!(chip.has_nmi(1) && !chip.has_nmi(0), "to vCPU 1 only");
    assert!(!chip.has_interrupt(1), "an NMI is no vector in the IRR");
    // Blocked: ask for the window, keep the NMI.
    assert!(!deliver_nmi(&mut cpu, &mut chip, 1));
    assert!(cpu.nmi_window_requested && chip.has_nmi(1) && cpu.nmis == 0);
    cpu.nmi_window_open = true;
    assert!(deliver_nmi(&mut cpu, &mut chip, 1));
    assert_eq!(cpu.nmis, 1);
    assert!(!cpu.nmi_window_requested && !chip.has_nmi(1), "taken, and no more window wanted");
    assert!(!deliver_nmi(&mut cpu, &mut chip, 1), "one NMI, one injection");
    assert_eq!(cpu.nmis, 1);
}

/// SDM Vol. 3A 7.9: an NMI is served before a maskable interrupt pending at the same time;
/// the interrupt waits for a window after the NMI is delivered.
#[test]
fn an_nmi_goes_before_a_pending_interrupt() {
    use crate::devices::irq::IrqChip;
    use crate::devices::lapic::{LAPIC_BASE, REG_ICR_HIGH, REG_ICR_LOW};
    let mut chip = IrqChip::new(2, || 0);
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_HIGH, &(1u32 << 24).to_le_bytes());
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &0x61u32.to_le_bytes());
    chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &0x400u32.to_le_bytes());
    let mut cpu = FakeCpu { window_open: true, nmi_window_open: true, ..FakeCpu::default() };
    assert!(deliver_nmi(&mut cpu, &mut chip, 1));
    assert!(!deliver_interrupt(&mut cpu, &mut chip, 1), "the injection field is taken");
    assert!(cpu.window_requested && cpu.interrupts.is_empty());
    cpu.nmis_delivered = cpu.nmis;
    assert!(deliver_interrupt(&mut cpu, &mut chip, 1));
    assert_eq!(cpu.interrupts, [0x61]);
}

#[test]
fn completed_instructions_continue_at_the_next_rip_the_backend_gave() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.rip = 0x1000;
    let e = VmExit::insn(Exit::Cpuid, 0x1003);
    assert_eq!(run_exit(&e, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!(cpu.rip, 0x1003);
    // An instruction exit whose length is unknown cannot be completed: the guest stops with a
    // reason instead of re-running (or skipping) an instruction by guesswork.
    let e = VmExit::event(Exit::Cpuid);
    assert!(matches!(run_exit(&e, &mut cpu, &mut g).0, Action::Stop(StopReason::Unsupported(_))));
    assert_eq!(cpu.rip, 0x1003);
}

#[test]
fn exceptions_carry_error_codes_only_in_protected_mode() {
    // SDM Vol. 3A 6.13 / 21.1.4: #GP pushes an error code in protected mode, none in real mode.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = 0x4b56_4d02;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    cpu.cr0 = 1;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    run(Exit::VirtInstruction, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, None), (GP, Some(0)), (UD, None)]);
}

#[test]
fn cr0_write_entering_long_mode_sets_lma_and_leaving_clears_it() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 0x11;
    cpu.cr4 = 0x20;
    cpu.efer = msr::EFER_LME;
    run(Exit::CrWrite { cr: 0, value: 0x8000_0011 }, &mut cpu, &mut g);
    assert_eq!(cpu.efer, msr::EFER_LME | msr::EFER_LMA, "SDM Vol. 3A 10.8.5: LMA = LME and PG");
    // In 64-bit code, PG cannot be cleared.
    cpu.cs_l = true;
    run(Exit::CrWrite { cr: 0, value: 0x11 }, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0))]);
    // From compatibility mode it can, and IA-32e mode ends.
    cpu.cs_l = false;
    run(Exit::CrWrite { cr: 0, value: 0x11 }, &mut cpu, &mut g);
    assert_eq!((cpu.cr0, cpu.efer), (0x11, msr::EFER_LME));
    // NW without CD: #GP and nothing changes.
    run(Exit::CrWrite { cr: 0, value: 0x2000_0011 }, &mut cpu, &mut g);
    assert_eq!((cpu.cr0, cpu.injected.len()), (0x11, 2));
}

#[test]
fn efer_lme_cannot_change_while_paging_is_on() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 0x8000_0011;
    cpu.gprs.rcx = msr::EFER as u64;
    cpu.gprs.rax = msr::EFER_LME;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!((cpu.efer, cpu.injected.as_slice()), (0, [(GP, Some(0))].as_slice()));
    // NX is offered by this host's CPUID (8000_0001H:EDX[20]): NXE may be set.
    cpu.gprs.rax = msr::EFER_NXE;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.efer, msr::EFER_NXE);
}

#[test]
fn xsetbv_loads_valid_values_and_faults_otherwise() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 1;
    // Without CR4.OSXSAVE: #UD (SDM XSETBV).
    cpu.gprs.rax = 3;
    run(Exit::Xsetbv, &mut cpu, &mut g);
    cpu.cr4 = 1 << 18;
    // x87+SSE+AVX is what this host offers.
    cpu.gprs.rax = 7;
    assert_eq!(run(Exit::Xsetbv, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!((cpu.xcr0, cpu.skipped), (7, 1));
    // AVX-512 is not offered: #GP, XCR0 unchanged, RIP unchanged.
    cpu.gprs.rax = 0xe7;
    run(Exit::Xsetbv, &mut cpu, &mut g);
    // Bit 0 (x87) clear: #GP.
    cpu.gprs.rax = 6;
    run(Exit::Xsetbv, &mut cpu, &mut g);
    // Not XCR0 (ECX = 1): #GP.
    cpu.gprs.rcx = 1;
    cpu.gprs.rax = 3;
    run(Exit::Xsetbv, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(UD, None), (GP, Some(0)), (GP, Some(0)), (GP, Some(0))]);
    assert_eq!((cpu.xcr0, cpu.skipped), (7, 1));
    assert_eq!(g.state.stats.get(ExitKind::Xsetbv), 5);
}

#[test]
fn invd_is_performed_as_wbinvd() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    assert_eq!(run(Exit::Invd, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!((g.host.wbinvd.get(), cpu.skipped), (1, 1));
    // INVD is privileged (SDM Vol. 2A INVD: #GP(0) if CPL > 0).
    cpu.cpl = 3;
    cpu.cr0 = 1;
    run(Exit::Invd, &mut cpu, &mut g);
    assert_eq!((g.host.wbinvd.get(), cpu.injected.as_slice()), (1, [(GP, Some(0))].as_slice()));
}

#[test]
fn writing_the_tsc_moves_the_offset_and_reads_follow() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    // WRMSR IA32_TSC is allowed (SDM Vol. 3A 18.17): the guest's TSC then reads the value.
    cpu.gprs.rcx = msr::IA32_TSC as u64;
    cpu.gprs.rdx = 0x1;
    cpu.gprs.rax = 0x0;
    assert_eq!(run(Exit::Wrmsr, &mut cpu, &mut g).0, Action::Resume);
    assert!(cpu.injected.is_empty());
    assert_eq!(HOST_TSC.wrapping_add(cpu.tsc_offset), 1 << 32);
    cpu.gprs.rax = 0;
    cpu.gprs.rdx = 0;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    assert_eq!((cpu.gprs.rdx, cpu.gprs.rax), (1, 0));
    // Going backwards works too (the offset wraps).
    cpu.gprs.rdx = 0;
    cpu.gprs.rax = 5;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(HOST_TSC.wrapping_add(cpu.tsc_offset), 5);
}

#[test]
fn yield_hypercall_ends_the_slice() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = hypercall::YIELD;
    assert_eq!(run(Exit::Hypercall, &mut cpu, &mut g).0, Action::Yield);
    assert_eq!((cpu.gprs.rax, cpu.skipped), (0, 1));
    cpu.cpl = 3;
    cpu.gprs.rax = hypercall::YIELD;
    assert_eq!(run(Exit::Hypercall, &mut cpu, &mut g).0, Action::Resume, "user mode cannot yield the vCPU");
}

/// A vCPU that spun in a PAUSE loop past the hardware's threshold is waiting for another
/// (SDM Vol. 3C 25.6.13, APM Vol. 2 15.14.4): it gives up its slice, in user mode too (the
/// spinning may be a user-space lock), and the PAUSE is not skipped (it runs again).
#[test]
fn a_pause_loop_gives_up_the_slice_without_skipping_the_pause() {
    for cpl in [0, 3] {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        cpu.cpl = cpl;
        let rip = cpu.rip;
        assert_eq!(run(Exit::PauseLoop, &mut cpu, &mut g).0, Action::Yield);
        assert_eq!((cpu.rip, cpu.skipped), (rip, 0));
        assert_eq!(g.state.stats.get(ExitKind::PauseLoop), 1);
    }
    assert_eq!(Exit::PauseLoop.kind().name(), "pause");
}

#[test]
fn host_nmi_resumes_the_guest_and_is_counted() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    assert_eq!(run_exit(&VmExit::event(Exit::HostNmi), &mut cpu, &mut g).0, Action::Resume);
    assert!(cpu.injected.is_empty() && cpu.skipped == 0);
    assert_eq!(g.state.stats.get(ExitKind::HostNmi), 1);
}

fn outs(rep: bool) -> Exit {
    Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep, addr_size: 4, seg: Seg::Ds }) }
}

#[test]
fn rep_outsb_sends_memory_to_the_port_and_updates_registers() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    g.ram.0[0x100..0x106].copy_from_slice(b"hello\n");
    cpu.ds_base = 0x100;
    cpu.gprs.rsi = 0;
    cpu.gprs.rcx = 6;
    let (a, out) = run(outs(true), &mut cpu, &mut g);
    assert_eq!((a, out.as_slice()), (Action::Resume, b"hello\n".as_slice()));
    // REP: RCX counts to 0, RSI advances by the element size each time (SDM OUTS).
    assert_eq!((cpu.gprs.rcx, cpu.gprs.rsi, cpu.skipped), (0, 6, 1));
}

#[test]
fn outs_without_rep_moves_one_element_and_df_counts_down() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    g.ram.0[0x200] = b'x';
    cpu.gprs.rsi = 0x200;
    cpu.gprs.rcx = 9;
    cpu.rflags = 1 << 10; // DF
    let (_, out) = run(outs(false), &mut cpu, &mut g);
    assert_eq!(out, b"x");
    assert_eq!((cpu.gprs.rcx, cpu.gprs.rsi), (9, 0x1ff), "RCX untouched without REP; DF = 1 decrements RSI");
}

#[test]
fn rep_insw_reads_ports_into_memory_at_es_di() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.es_base = 0x1000;
    cpu.gprs.rdi = 0x10;
    cpu.gprs.rcx = 3;
    // An unclaimed port reads all ones.
    let e = Exit::Io { port: 0x1234, size: 2, write: false, string: Some(StringIo { rep: true, addr_size: 2, seg: Seg::Ds }) };
    run(e, &mut cpu, &mut g);
    assert_eq!(&g.ram.0[0x1010..0x1016], &[0xff; 6]);
    assert_eq!(g.ram.0[0x1016], 0);
    assert_eq!((cpu.gprs.rdi, cpu.gprs.rcx), (0x16, 0));
}

#[test]
fn sixteen_bit_addressing_wraps_and_keeps_upper_register_bits() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    // SI = 0xffff with a 16-bit address size: the next element comes from offset 0 (the
    // address wraps within the segment), and bits 63:16 of RSI/RCX stay.
    g.ram.0[0xffff] = b'a';
    g.ram.0[0] = b'b';
    cpu.gprs.rsi = 0xdead_0000_ffff;
    cpu.gprs.rcx = 0xbeef_0000_0002;
    let e = Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: true, addr_size: 2, seg: Seg::Ds }) };
    let (_, out) = run(e, &mut cpu, &mut g);
    assert_eq!(out, b"ab");
    assert_eq!((cpu.gprs.rsi, cpu.gprs.rcx), (0xdead_0000_0001, 0xbeef_0000_0000));
}

#[test]
fn rep_count_zero_does_nothing_but_completes() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = 0;
    let (a, out) = run(outs(true), &mut cpu, &mut g);
    assert_eq!((a, out.len(), cpu.skipped), (Action::Resume, 0, 1));
}

#[test]
fn a_long_rep_is_split_and_resumes_where_it_stopped() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    let n = super::rep::MAX_PER_EXIT + 10;
    cpu.gprs.rcx = n;
    let (_, first) = run(outs(true), &mut cpu, &mut g);
    assert_eq!(first.len() as u64, super::rep::MAX_PER_EXIT);
    assert_eq!((cpu.gprs.rcx, cpu.skipped), (10, 0), "RIP stays: the guest re-executes the REP for the rest");
    let (_, rest) = run(outs(true), &mut cpu, &mut g);
    assert_eq!((rest.len(), cpu.gprs.rcx, cpu.skipped), (10, 0, 1));
}

#[test]
fn string_io_on_an_unmapped_page_raises_page_fault_with_cr2() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    // Paging on with CR3 pointing at an all-zero PML4... in 32-bit paging: PD at 0x2000, empty.
    cpu.cr0 = 0x8000_0011;
    cpu.cr3 = 0x2000;
    cpu.gprs.rdi = 0x40_0000;
    cpu.gprs.rcx = 4;
    cpu.cpl = 3;
    let e = Exit::Io { port: 0x60, size: 1, write: false, string: Some(StringIo { rep: true, addr_size: 4, seg: Seg::Es }) };
    assert_eq!(run(e, &mut cpu, &mut g).0, Action::Resume);
    // SDM Vol. 3A 4.7: not present (P = 0), write (W/R = 1), user (U/S = 1).
    assert_eq!(cpu.injected, [(14, Some(0b110))]);
    assert_eq!((cpu.cr2, cpu.gprs.rcx, cpu.skipped), (0x40_0000, 4, 0));
}

#[test]
fn string_outs_to_the_test_exit_port_stops_the_guest() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    g.ram.0[0x300..0x304].copy_from_slice(&7u32.to_le_bytes());
    cpu.gprs.rsi = 0x300;
    let e = Exit::Io { port: 0xf4, size: 4, write: true, string: Some(StringIo { rep: false, addr_size: 8, seg: Seg::Ds }) };
    assert_eq!(run(e, &mut cpu, &mut g).0, Action::Stop(StopReason::TestExit(7)));
}

/// 32-bit paging (SDM Vol. 3A 4.3) in the fake RAM: page directory at 0x2000 whose entry 0
/// points at a page table at 0x3000; `maps` gives (linear page number, physical address) pairs
/// for the first 4 MiB. Every entry is present, writable and user (bits 0, 1, 2).
fn paging_32(cpu: &mut FakeCpu, g: &mut Guest, maps: &[(usize, u32)]) {
    g.ram.0[0x2000..0x2004].copy_from_slice(&(0x3000u32 | 0b111).to_le_bytes());
    for &(page, phys) in maps {
        let pte = 0x3000 + 4 * page;
        g.ram.0[pte..pte + 4].copy_from_slice(&(phys | 0b111).to_le_bytes());
    }
    cpu.cr0 = (1 << 31) | 1; // PG, PE
    cpu.cr3 = 0x2000;
}

#[test]
fn an_element_crossing_a_page_boundary_is_split_between_the_two_pages() {
    // Linear pages 0x10 and 0x11 are the physical pages 0x5000 and 0x8000: an access that
    // crosses from one to the other takes its first bytes from the end of the first page and
    // the rest from the start of the second (each byte goes through its own translation,
    // SDM Vol. 3A 4.3), not from the physical bytes after the first.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    paging_32(&mut cpu, &mut g, &[(0x10, 0x5000), (0x11, 0x8000)]);
    g.ram.0[0x5ffe..0x6002].copy_from_slice(&[0x04, 0x03, 0xee, 0xee]);
    g.ram.0[0x8000..0x8002].copy_from_slice(&[0x02, 0x01]);
    // OUTSD from DS:0x10ffe: the dword is read little-endian (SDM Vol. 1 1.3.1).
    cpu.gprs.rsi = 0x10ffe;
    let e = Exit::Io { port: 0xf4, size: 4, write: true, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Ds }) };
    assert_eq!(run(e, &mut cpu, &mut g).0, Action::Stop(StopReason::TestExit(0x0102_0304)));
    assert_eq!(cpu.gprs.rsi, 0x11002);
    // INSW to ES:0x10fff: one byte at the end of physical page 0x5000, one at 0x8000 (an
    // unclaimed port reads all ones).
    cpu.gprs.rdi = 0x10fff;
    let e = Exit::Io { port: 0x1234, size: 2, write: false, string: Some(StringIo { rep: false, addr_size: 4, seg: Seg::Es }) };
    assert_eq!(run(e, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!((g.ram.0[0x5fff], g.ram.0[0x6000], g.ram.0[0x8000], g.ram.0[0x8001]), (0xff, 0xee, 0xff, 0x01));
    assert_eq!((cpu.gprs.rdi, cpu.injected.len()), (0x11001, 0));
}

#[test]
fn insb_stores_the_byte_the_port_returns() {
    // INSB from COM1's LSR (0x3fd): the 16550 reports THRE (bit 5) and TEMT (bit 6) with
    // nothing to send, 0x60; exactly one byte is stored at ES:DI (SDM INS).
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    g.ram.0[0x400..0x402].copy_from_slice(&[0xaa, 0xaa]);
    cpu.gprs.rdi = 0x400;
    let e = Exit::Io { port: 0x3fd, size: 1, write: false, string: Some(StringIo { rep: false, addr_size: 2, seg: Seg::Es }) };
    assert_eq!(run(e, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!(&g.ram.0[0x400..0x402], &[0x60, 0xaa]);
    assert_eq!((cpu.gprs.rdi, cpu.skipped), (0x401, 1));
}

#[test]
fn a32_string_io_in_64_bit_mode_uses_esi_and_ecx_and_zero_extends_them() {
    // 64-bit mode with a 67h prefix: the address size is 32 bits, so OUTS reads at ESI and
    // REP counts ECX, ignoring bits 63:32; the updated registers are 32-bit results and are
    // zero-extended to 64 bits (SDM Vol. 1 3.4.1.1, Vol. 2B OUTS and REP).
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    // 4-level paging (SDM Vol. 3A 4.5): PML4 0x2000 -> PDPT 0x3000 -> PD 0x4000, whose entry 0
    // maps the first 2 MiB as one page (PS, bit 7), identity.
    g.ram.0[0x2000..0x2008].copy_from_slice(&(0x3000u64 | 0b11).to_le_bytes());
    g.ram.0[0x3000..0x3008].copy_from_slice(&(0x4000u64 | 0b11).to_le_bytes());
    g.ram.0[0x4000..0x4008].copy_from_slice(&((1u64 << 7) | 0b11).to_le_bytes());
    cpu.cr0 = (1 << 31) | 1;
    cpu.cr3 = 0x2000;
    cpu.cr4 = 1 << 5; // PAE
    cpu.efer = (1 << 8) | (1 << 10); // LME, LMA
    cpu.cs_l = true;
    g.ram.0[0x100..0x102].copy_from_slice(b"ok");
    cpu.gprs.rsi = 0xdead_0000_0100;
    cpu.gprs.rcx = 0xbeef_0000_0002;
    let e = Exit::Io { port: 0x3f8, size: 1, write: true, string: Some(StringIo { rep: true, addr_size: 4, seg: Seg::Ds }) };
    let (a, out) = run(e, &mut cpu, &mut g);
    assert_eq!((a, out.as_slice()), (Action::Resume, b"ok".as_slice()));
    assert_eq!((cpu.gprs.rsi, cpu.gprs.rcx, cpu.skipped), (0x102, 0, 1));
    assert!(cpu.injected.is_empty());
}

#[test]
fn a_rep_of_exactly_the_split_size_completes_in_one_exit() {
    // When the count reaches 0 on the last element an exit may move, the instruction is done:
    // the guest continues after it instead of re-executing a REP with RCX = 0.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = super::rep::MAX_PER_EXIT;
    let (a, out) = run(outs(true), &mut cpu, &mut g);
    assert_eq!((a, out.len() as u64), (Action::Resume, super::rep::MAX_PER_EXIT));
    assert_eq!((cpu.gprs.rcx, cpu.skipped, cpu.rip), (0, 1, LEN));
}

#[test]
fn cpuid_osxsave_mirrors_the_guests_cr4_osxsave() {
    // SDM Vol. 2A CPUID, leaf 1 ECX bit 27 (OSXSAVE): set exactly when the OS has set
    // CR4.OSXSAVE (bit 18); ECX bit 26 (XSAVE) is the CPU's and does not depend on it.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    let leaf1_ecx = |cpu: &mut FakeCpu, g: &mut Guest| {
        cpu.gprs.rax = 1;
        cpu.gprs.rcx = 0;
        assert_eq!(run(Exit::Cpuid, cpu, g).0, Action::Resume);
        cpu.gprs.rcx
    };
    let ecx = leaf1_ecx(&mut cpu, &mut g);
    assert_eq!((ecx & (1 << 27), ecx & (1 << 26)), (0, 1 << 26));
    cpu.cr4 = 1 << 5; // PAE only
    assert_eq!(leaf1_ecx(&mut cpu, &mut g) & (1 << 27), 0);
    cpu.cr4 = 1 << 18;
    assert_eq!(leaf1_ecx(&mut cpu, &mut g) & (1 << 27), 1 << 27);
    cpu.cr4 = (1 << 18) | (1 << 5);
    assert_eq!(leaf1_ecx(&mut cpu, &mut g) & (1 << 27), 1 << 27);
}

#[test]
fn cr0_writes_that_keep_paging_keep_ia32e_mode() {
    // SDM Vol. 3A 10.8.5: EFER.LMA = EFER.LME and CR0.PG. Setting CR0.WP (bit 16) in 64-bit
    // mode leaves PG = 1, so LMA stays 1 and EFER is untouched.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = (1 << 31) | (1 << 4) | 1;
    cpu.cr4 = 1 << 5;
    cpu.efer = (1 << 8) | (1 << 10);
    cpu.cs_l = true;
    assert_eq!(run(Exit::CrWrite { cr: 0, value: cpu.cr0 | (1 << 16) }, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!((cpu.cr0, cpu.efer), ((1 << 31) | (1 << 16) | (1 << 4) | 1, (1 << 8) | (1 << 10)));
    assert!(cpu.injected.is_empty());
}

#[test]
fn xsetbv_value_is_edx_eax() {
    // SDM Vol. 2D XSETBV: XCR0 <- EDX:EAX; bits 63:32 of RAX and RDX are ignored. EDX = 1 asks
    // for XCR0 bit 32, which this CPU does not offer: #GP(0), XCR0 unchanged.
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.cr0 = 1;
    cpu.cr4 = 1 << 18;
    cpu.gprs.rax = 0b111;
    cpu.gprs.rdx = 1;
    run(Exit::Xsetbv, &mut cpu, &mut g);
    assert_eq!((cpu.injected.as_slice(), cpu.xcr0, cpu.skipped), ([(GP, Some(0))].as_slice(), 0, 0));
    cpu.gprs.rax = 0xffff_ffff_0000_0001; // EAX = 1: x87 only
    cpu.gprs.rdx = 0xffff_ffff_0000_0000; // EDX = 0
    assert_eq!(run(Exit::Xsetbv, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!((cpu.xcr0, cpu.skipped, cpu.injected.len()), (1, 1, 1));
}

// ---- Device memory (MMIO): `mmio::handle` -------------------------------------------------

mod mmio_exits {
    use super::*;
    use crate::vm::memmap::IOAPIC_BASE;

    const CODE: u64 = 0x1000;
    const IOREGSEL: u64 = IOAPIC_BASE;
    const IOWIN: u64 = IOAPIC_BASE + 0x10;

    /// A vCPU in 32-bit protected mode without paging (CS.D = SS.B = 1), about to run `code`.
    fn protected32(g: &mut Guest, code: &[u8]) -> FakeCpu {
        g.ram.0[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
        FakeCpu { cr0: Cr0::PE.bits(), cs_d: true, ss_b: true, rip: CODE, ..FakeCpu::default() }
    }

    /// A vCPU in 64-bit mode whose page tables map the first 4 GiB 1:1 with 1 GiB pages (SDM
    /// Vol. 3A 4.5: PML4 at 0x2000, PDPT at 0x3000 with PS set).
    fn long64(g: &mut Guest, code: &[u8]) -> FakeCpu {
        let mut cpu = protected32(g, code);
        g.ram.0[0x2000..0x2008].copy_from_slice(&(0x3000u64 | 3).to_le_bytes());
        for i in 0..4u64 {
            let e = (i << 30) | (1 << 7) | 3;
            g.ram.0[0x3000 + 8 * i as usize..0x3008 + 8 * i as usize].copy_from_slice(&e.to_le_bytes());
        }
        cpu.cr0 = (Cr0::PE | Cr0::PG).bits();
        cpu.cr3 = 0x2000;
        cpu.cr4 = Cr4::PAE.bits();
        cpu.efer = (Efer::LME | Efer::LMA).bits();
        cpu.cs_l = true;
        cpu.cs_d = false;
        cpu
    }

    fn npf(cpu: &mut FakeCpu, g: &mut Guest, gpa: u64, write: bool) -> Action {
        run_exit(&VmExit::event(Exit::NestedPageFault { gpa, write, fetch: false }), cpu, g).0
    }

    fn ioapic_reg(g: &Guest, index: u8) -> u32 {
        g.devices.irq.lock().ioapic.read_register(index)
    }

    #[test]
    fn a_mov_store_reaches_the_device_and_rip_moves_past_the_instruction() {
        let mut g = guest();
        // mov [edi], eax (89 /r, SDM Vol. 2B MOV).
        let mut cpu = protected32(&mut g, &[0x89, 0x07]);
        cpu.gprs.rdi = IOREGSEL;
        cpu.gprs.rax = 1;
        assert_eq!(npf(&mut cpu, &mut g, IOREGSEL, true), Action::Resume);
        assert_eq!((cpu.rip, cpu.skipped), (CODE + 2, 1));
        // IOREGSEL now selects VER: IOWIN shows it (82093AA datasheet 3.2.2).
        let mut b = [0u8; 4];
        assert!(g.devices.mmio_read(IOWIN, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x0017_0020);
    }

    #[test]
    fn a_mov_load_fills_the_register_from_the_device() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        // mov eax, [edi] (8B /r); a 32-bit load zero-extends into RAX (SDM Vol. 1 3.4.1.1).
        let mut cpu = protected32(&mut g, &[0x8b, 0x07]);
        cpu.gprs.rdi = IOWIN;
        cpu.gprs.rax = 0xffff_ffff_ffff_ffff;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.gprs.rax, 0x0017_0020);
        assert_eq!(cpu.rip, CODE + 2);
    }

    #[test]
    fn xchg_swaps_the_register_and_the_device_register() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[0x10, 0, 0, 0]);
        // xchg [edi], eax (87 /r): redirection entry 0's low dword, reset value masked.
        let mut cpu = protected32(&mut g, &[0x87, 0x07]);
        cpu.gprs.rdi = IOWIN;
        cpu.gprs.rax = 0x31;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, true), Action::Resume);
        assert_eq!(cpu.gprs.rax, 0x0001_0000);
        assert_eq!(ioapic_reg(&g, 0x10), 0x31);
    }

    #[test]
    fn a_64_bit_load_walks_the_guests_page_tables_for_the_instruction() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        // movzx ecx, word [rdi] (0F B7 /r) at a 64-bit RIP.
        let mut cpu = long64(&mut g, &[0x0f, 0xb7, 0x0f]);
        cpu.gprs.rdi = IOWIN;
        cpu.gprs.rcx = u64::MAX;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.gprs.rcx, 0x0020);
        assert_eq!(cpu.rip, CODE + 3);
    }

    #[test]
    fn an_alu_op_sets_the_flags_through_the_vcpu() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        // cmp dword [edi], 0x20 (83 /7 ib): VER is 0x170020, so the result is non-zero, no borrow.
        let mut cpu = protected32(&mut g, &[0x83, 0x3f, 0x20]);
        cpu.gprs.rdi = IOWIN;
        cpu.rflags = 0x2 | Rflags::ZF.bits() | Rflags::CF.bits();
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.rflags & (Rflags::ZF | Rflags::CF).bits(), 0, "{:#x}", cpu.rflags);
        assert_eq!(cpu.rflags & 0x2, 0x2, "the reserved bit 1 stays set");
    }

    #[test]
    fn push_from_a_device_writes_the_stack_in_ram_and_moves_rsp() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        // push dword [edi] (FF /6) with a 32-bit stack (SS.B = 1).
        let mut cpu = protected32(&mut g, &[0xff, 0x37]);
        cpu.gprs.rdi = IOWIN;
        cpu.rsp = 0x8000;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.rsp, 0x7ffc);
        assert_eq!(&g.ram.0[0x7ffc..0x8000], &0x0017_0020u32.to_le_bytes());
    }

    #[test]
    fn a_16_bit_stack_wraps_sp_only() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        let mut cpu = protected32(&mut g, &[0xff, 0x37]);
        cpu.ss_b = false;
        cpu.gprs.rdi = IOWIN;
        cpu.rsp = 0xdead_0000_0000_2000;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.rsp, 0xdead_0000_0000_1ffc, "SP changes, bits 63:16 of RSP do not (SDM Vol. 1 3.4.1.1)");
    }

    #[test]
    fn rep_stos_stores_every_element_and_counts_rcx_down() {
        let mut g = guest();
        // rep stosd (F3 AB): three dwords at IOREGSEL, +4, +8; only the first is a register.
        let mut cpu = protected32(&mut g, &[0xf3, 0xab]);
        cpu.gprs.rdi = IOREGSEL;
        cpu.gprs.rcx = 3;
        cpu.gprs.rax = 0x12;
        assert_eq!(npf(&mut cpu, &mut g, IOREGSEL, true), Action::Resume);
        assert_eq!((cpu.gprs.rcx, cpu.gprs.rdi, cpu.rip), (0, IOREGSEL + 12, CODE + 2));
        let mut b = [0u8; 4];
        g.devices.mmio_read(IOREGSEL, &mut b);
        assert_eq!(b[0], 0x12);
    }

    #[test]
    fn a_long_rep_leaves_rip_so_the_guest_continues_it() {
        let mut g = guest();
        let mut cpu = protected32(&mut g, &[0xf3, 0xab]);
        cpu.gprs.rdi = 0xfed0_0000;
        cpu.gprs.rcx = super::rep::MAX_PER_EXIT + 5;
        assert_eq!(npf(&mut cpu, &mut g, 0xfed0_0000, true), Action::Resume);
        assert_eq!((cpu.rip, cpu.skipped, cpu.gprs.rcx), (CODE, 0, 5));
        assert_eq!(npf(&mut cpu, &mut g, 0xfed0_0000 + 4 * super::rep::MAX_PER_EXIT, true), Action::Resume);
        assert_eq!((cpu.rip, cpu.gprs.rcx), (CODE + 2, 0));
    }

    #[test]
    fn a_string_operand_on_an_unmapped_page_gets_a_page_fault_and_keeps_rip() {
        let mut g = guest();
        // movsd (A5) from the device to ES:RDI, which the guest's tables do not map.
        let mut cpu = long64(&mut g, &[0xa5]);
        cpu.gprs.rsi = IOWIN;
        cpu.gprs.rdi = 0x1_0000_0000;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.injected, [(14, Some(2))], "#PF, error code W (SDM Vol. 3A 4.7)");
        assert_eq!(cpu.cr2, 0x1_0000_0000);
        assert_eq!((cpu.rip, cpu.skipped), (CODE, 0));
    }

    #[test]
    fn the_hole_where_no_device_is_reads_all_ones() {
        let mut g = guest();
        let mut cpu = protected32(&mut g, &[0x8b, 0x07]);
        cpu.gprs.rdi = 0xfed0_0000;
        assert_eq!(npf(&mut cpu, &mut g, 0xfed0_0000, false), Action::Resume);
        assert_eq!(cpu.gprs.rax, 0xffff_ffff);
    }

    #[test]
    fn outside_device_space_or_a_fetch_is_a_bad_access() {
        let mut g = guest();
        let mut cpu = protected32(&mut g, &[0x8b, 0x07]);
        assert_eq!(
            npf(&mut cpu, &mut g, 0x4000_0000, false),
            Action::Stop(StopReason::BadAccess { gpa: 0x4000_0000, write: false, fetch: false })
        );
        let e = VmExit::event(Exit::NestedPageFault { gpa: IOAPIC_BASE, write: false, fetch: true });
        assert_eq!(run_exit(&e, &mut cpu, &mut g).0, Action::Stop(StopReason::BadAccess { gpa: IOAPIC_BASE, write: false, fetch: true }));
        assert_eq!(cpu.skipped, 0);
    }

    #[test]
    fn an_instruction_bastion_cannot_emulate_stops_the_guest_with_its_bytes() {
        let mut g = guest();
        // movdqa xmm0, [edi] (66 0F 6F /r): SSE on a device register is not emulated.
        let mut cpu = protected32(&mut g, &[0x66, 0x0f, 0x6f, 0x07]);
        match npf(&mut cpu, &mut g, IOWIN, false) {
            Action::Stop(StopReason::Unsupported(s)) => {
                assert!(s.contains("0xfec00010") && s.contains("0x1000") && s.contains("66, 0f, 6f"), "{s}");
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn an_instruction_that_cannot_be_fetched_stops_the_guest() {
        let mut g = guest();
        let mut cpu = protected32(&mut g, &[]);
        cpu.rip = 0x10_0000; // beyond the 64 KiB of RAM
        match npf(&mut cpu, &mut g, IOWIN, false) {
            Action::Stop(StopReason::Unsupported(s)) => assert!(s.contains("cannot be read"), "{s}"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_page_fault_at_cpl_3_says_user() {
        let mut g = guest();
        let mut cpu = long64(&mut g, &[0xad]); // lodsd from an unmapped page
        cpu.cpl = 3;
        cpu.gprs.rsi = 0x1_0000_0000;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(cpu.injected, [(14, Some(4))], "#PF, error code U/S for a CPL-3 read (SDM Vol. 3A 4.7)");
    }

    /// 32-bit paging (CR4.PSE): a page directory at 0x2000 whose first entry points to a page
    /// table at 0x3000 mapping the first 4 MiB 1:1 except linear 0x5000 -> physical 0x7000, and
    /// a 4 MiB page over the I/O APIC (SDM Vol. 3A 4.3).
    fn paged32(g: &mut Guest, code: &[u8]) -> FakeCpu {
        let mut cpu = protected32(g, code);
        let pd = |i: usize, v: u32, g: &mut Guest| g.ram.0[0x2000 + 4 * i..0x2004 + 4 * i].copy_from_slice(&v.to_le_bytes());
        pd(0, 0x3000 | 3, g);
        pd((IOAPIC_BASE >> 22) as usize, IOAPIC_BASE as u32 | (1 << 7) | 3, g);
        for page in 0..16u32 {
            let phys = if page == 5 { 0x7000 } else { page << 12 };
            g.ram.0[0x3000 + 4 * page as usize..0x3004 + 4 * page as usize].copy_from_slice(&(phys | 3).to_le_bytes());
        }
        cpu.cr0 = (Cr0::PE | Cr0::PG).bits();
        cpu.cr3 = 0x2000;
        cpu.cr4 = Cr4::PSE.bits();
        cpu
    }

    #[test]
    fn a_string_operand_crossing_a_page_follows_the_guests_mapping_of_each_page() {
        let mut g = guest();
        // rep movsd from RAM at linear 0x4ffe (crossing into linear 0x5000 = physical 0x7000)
        // to IOREGSEL: one dword, the first two bytes from 0x4ffe, the next two from 0x7000.
        let mut cpu = paged32(&mut g, &[0xf3, 0xa5]);
        g.ram.0[0x4ffe..0x5000].copy_from_slice(&[0x11, 0x22]);
        g.ram.0[0x5000..0x5002].copy_from_slice(&[0xee, 0xee]);
        g.ram.0[0x7000..0x7002].copy_from_slice(&[0x33, 0x44]);
        cpu.gprs.rsi = 0x4ffe;
        cpu.gprs.rdi = IOREGSEL;
        cpu.gprs.rcx = 1;
        assert_eq!(npf(&mut cpu, &mut g, IOREGSEL, true), Action::Resume);
        let mut b = [0u8; 4];
        g.devices.mmio_read(IOREGSEL, &mut b);
        assert_eq!(b[0], 0x11, "IOREGSEL keeps the low byte of what was copied");
        // The copy went to IOREGSEL whole: select VER through the same path and read it back.
        g.ram.0[0x4ffe..0x5000].copy_from_slice(&[0x01, 0x00]);
        g.ram.0[0x7000..0x7002].copy_from_slice(&[0x00, 0x00]);
        let mut cpu = paged32(&mut g, &[0xa5]); // movsd IOWIN -> RAM at linear 0x4ffe
        cpu.gprs.rsi = 0x4ffe;
        cpu.gprs.rdi = IOREGSEL;
        npf(&mut cpu, &mut g, IOREGSEL, true);
        let mut cpu = paged32(&mut g, &[0xa5]);
        cpu.gprs.rsi = IOWIN;
        cpu.gprs.rdi = 0x4ffe;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!(&g.ram.0[0x4ffe..0x5000], &[0x20, 0x00], "VER's low half on the first page");
        assert_eq!(&g.ram.0[0x7000..0x7002], &[0x17, 0x00], "its high half where linear 0x5000 maps");
        assert_eq!(&g.ram.0[0x5000..0x5002], &[0xee, 0xee], "physical 0x5000 is not linear 0x5000");
    }

    #[test]
    fn outside_64_bit_mode_linear_addresses_wrap_at_4_gib() {
        let mut g = guest();
        // stosd with ES base 0xffff_f000 + EDI 0x2000 = linear 0x1_0000_1000, which wraps to
        // 0x1000 in 32-bit mode (SDM Vol. 3A 3.4: linear addresses are 32 bits wide).
        let mut cpu = protected32(&mut g, &[0xab]);
        cpu.es_base = 0xffff_f000;
        cpu.gprs.rdi = 0x2000;
        cpu.gprs.rax = 0x5566_7788;
        // The fault reported the device for the source of another operand; the string store
        // itself lands in RAM at the wrapped address.
        assert_eq!(npf(&mut cpu, &mut g, IOREGSEL, true), Action::Resume);
        assert_eq!(&g.ram.0[0x1000..0x1004], &0x5566_7788u32.to_le_bytes());
    }

    /// Devices without device memory (the trait's defaults): every nested page fault is a bad
    /// access, even in the hole.
    struct PortsOnly;
    impl DeviceIo for PortsOnly {
        fn io_read(&mut self, _: u16, _: u8) -> u32 {
            0
        }
        fn io_write(&mut self, _: u16, _: u8, _: u32) -> IoOutcome {
            IoOutcome::Done
        }
    }

    #[test]
    fn without_a_local_apic_its_base_msr_faults() {
        // IA32_APIC_BASE (0x1B) exists only with an APIC (CPUID.01H:EDX.APIC, SDM Vol. 3A
        // 11.4.4); a platform without one gives #GP to both RDMSR and WRMSR.
        let mut g = guest();
        let mut cpu = FakeCpu { cr0: 1, ..FakeCpu::default() };
        let mut io = PortsOnly;
        let mut env = Env { io: &mut io, mem: &mut g.ram, host: &g.host };
        cpu.gprs.rcx = 0x1b;
        let e = VmExit::insn(Exit::Rdmsr, cpu.rip + LEN);
        assert_eq!(handle_exit(&e, &mut cpu, &mut g.state, &mut env), Action::Resume);
        cpu.gprs.rax = 0xfee0_0900;
        let e = VmExit::insn(Exit::Wrmsr, cpu.rip + LEN);
        assert_eq!(handle_exit(&e, &mut cpu, &mut g.state, &mut env), Action::Resume);
        assert_eq!((cpu.injected.as_slice(), cpu.skipped), ([(GP, Some(0)), (GP, Some(0))].as_slice(), 0));
    }

    #[test]
    fn without_device_memory_the_hole_is_a_bad_access_too() {
        let mut g = guest();
        let mut cpu = protected32(&mut g, &[0x8b, 0x07]);
        let mut io = PortsOnly;
        let mut env = Env { io: &mut io, mem: &mut g.ram, host: &g.host };
        let e = VmExit::event(Exit::NestedPageFault { gpa: IOWIN, write: false, fetch: false });
        assert_eq!(handle_exit(&e, &mut cpu, &mut g.state, &mut env), Action::Stop(StopReason::BadAccess { gpa: IOWIN, write: false, fetch: false }));
        let mut b = [0u8; 4];
        assert!(!io.mmio_read(IOWIN, &mut b) && !io.mmio_write(IOWIN, &b) && !io.is_device(IOWIN));
    }

    #[test]
    fn cs_l_outside_ia32e_mode_is_ignored_and_the_code_is_32_bit() {
        let mut g = guest();
        g.devices.mmio_write(IOREGSEL, &[1, 0, 0, 0]);
        // mov eax, [moffs] (A1): a 4-byte address in 32-bit code, 8 bytes in 64-bit code. CS.L
        // means nothing without EFER.LMA (SDM Vol. 3A 3.4.5: L is for IA-32e mode only).
        let mut cpu = protected32(&mut g, &[0xa1, 0x10, 0x00, 0xc0, 0xfe]);
        cpu.cs_l = true;
        assert_eq!(npf(&mut cpu, &mut g, IOWIN, false), Action::Resume);
        assert_eq!((cpu.rip, cpu.gprs.rax), (CODE + 5, 0x0017_0020));
    }
}

// ---- kvmclock (`pvclock`) -------------------------------------------------------------

mod kvm_clock {
    use super::*;

    fn wrmsr(cpu: &mut FakeCpu, g: &mut Guest, msr: u32, value: u64) -> Action {
        cpu.gprs.rcx = msr as u64;
        (cpu.gprs.rax, cpu.gprs.rdx) = (value & 0xffff_ffff, value >> 32);
        run(Exit::Wrmsr, cpu, g).0
    }

    #[test]
    fn enabling_system_time_writes_the_structure_at_the_guests_tsc() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        cpu.tsc_offset = 500;
        assert_eq!(wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x2000 | 1), Action::Resume);
        assert_eq!(cpu.skipped, 1);
        assert_eq!(&g.ram.0[0x2000..0x2020], &pvclock::time_info(HOST_TSC + 500, 2_000_000), "at guest TSC = host TSC + offset");
        // Read back as written (KVM's msr.rst).
        cpu.gprs.rcx = pvclock::MSR_SYSTEM_TIME_NEW as u64;
        run(Exit::Rdmsr, &mut cpu, &mut g);
        assert_eq!((cpu.gprs.rax, cpu.gprs.rdx), (0x2001, 0));
    }

    #[test]
    fn disabled_or_page_crossing_structures_are_not_written() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x3000);
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x3ff0 | 1);
        assert!(g.ram.0[0x3000..0x4010].iter().all(|b| *b == 0));
        assert!(cpu.injected.is_empty(), "no #GP: the MSR exists, the clock just is not there");
    }

    #[test]
    fn the_wall_clock_is_written_where_the_guest_asks() {
        let host = FakeHost { wbinvd: core::cell::Cell::new(0) };
        struct Wall(FakeHost);
        impl Host for Wall {
            fn cpuid(&self, l: u32, s: u32) -> [u32; 4] {
                self.0.cpuid(l, s)
            }
            fn rdtsc(&self) -> u64 {
                self.0.rdtsc()
            }
            fn wbinvd(&self) {}
            fn unix_time_ns(&self) -> u64 {
                1_700_000_000_000_000_000
            }
        }
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        let wall = Wall(host);
        cpu.gprs.rcx = pvclock::MSR_WALL_CLOCK_NEW as u64;
        cpu.gprs.rax = 0x2100;
        let mut env = Env { io: &mut g.devices, mem: &mut g.ram, host: &wall };
        let e = VmExit::insn(Exit::Wrmsr, cpu.rip + LEN);
        assert_eq!(handle_exit(&e, &mut cpu, &mut g.state, &mut env), Action::Resume);
        // Guest TSC 1e6 at 2 GHz is 0.5 ms of guest time: the wall clock at time 0 is earlier.
        assert_eq!(&g.ram.0[0x2100..0x210c], &pvclock::wall_clock(1_700_000_000_000_000_000, 500_000));
    }

    /// msr.rst MSR_KVM_PV_EOI_EN: read back as written, bit 1 reserved (#GP), and only
    /// where the KVM leaves (and KVM_FEATURE_PV_EOI) are offered.
    #[test]
    fn the_pv_eoi_msr_reads_back_and_faults_on_its_reserved_bit_or_without_kvm_leaves() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        cpu.cr0 = 1;
        assert_eq!(wrmsr(&mut cpu, &mut g, pv_eoi::MSR_PV_EOI_EN, 0x2000 | 1), Action::Resume);
        assert_eq!((cpu.skipped, g.state.pv_eoi.msr), (1, 0x2001));
        cpu.gprs.rcx = pv_eoi::MSR_PV_EOI_EN as u64;
        run(Exit::Rdmsr, &mut cpu, &mut g);
        assert_eq!((cpu.gprs.rax, cpu.gprs.rdx), (0x2001, 0));
        wrmsr(&mut cpu, &mut g, pv_eoi::MSR_PV_EOI_EN, 0x2000 | 3);
        assert_eq!(cpu.injected, [(GP, Some(0))]);
        assert_eq!(g.state.pv_eoi.msr, 0x2001, "the faulting write changed nothing");
        g.state.tsc_khz = 0;
        cpu.gprs.rcx = pv_eoi::MSR_PV_EOI_EN as u64;
        run(Exit::Rdmsr, &mut cpu, &mut g);
        wrmsr(&mut cpu, &mut g, pv_eoi::MSR_PV_EOI_EN, 0x2000 | 1);
        assert_eq!(cpu.injected.len(), 3, "no KVM leaves, no MSR");
    }

    #[test]
    fn without_a_known_tsc_rate_there_is_no_kvm_clock() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        g.state.tsc_khz = 0;
        cpu.cr0 = 1;
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x2001);
        assert_eq!(cpu.injected, [(GP, Some(0))]);
        assert!(g.ram.0[0x2000..0x2020].iter().all(|b| *b == 0));
        // Reading them faults the same way: the MSRs do not exist without the KVM leaves.
        for msr in [pvclock::MSR_SYSTEM_TIME_NEW, pvclock::MSR_WALL_CLOCK_NEW] {
            cpu.gprs.rcx = msr as u64;
            run(Exit::Rdmsr, &mut cpu, &mut g);
        }
        assert_eq!(cpu.injected.len(), 3, "{:?}", cpu.injected);
        assert_eq!(cpu.skipped, 0);
    }

    /// msr.rst: each of the two MSRs reads back its own last write (the system-time one with
    /// its enable bit, the wall-clock one as the address given).
    #[test]
    fn the_two_clock_msrs_read_back_each_its_own_value() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x2001);
        wrmsr(&mut cpu, &mut g, pvclock::MSR_WALL_CLOCK_NEW, 0x2100);
        let read = |cpu: &mut FakeCpu, g: &mut Guest, msr: u32| {
            cpu.gprs.rcx = msr as u64;
            run(Exit::Rdmsr, cpu, g);
            (cpu.gprs.rdx << 32) | cpu.gprs.rax
        };
        assert_eq!(read(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW), 0x2001);
        assert_eq!(read(&mut cpu, &mut g, pvclock::MSR_WALL_CLOCK_NEW), 0x2100);
        assert!(cpu.injected.is_empty());
    }

    /// A structure that ends exactly at the end of its page is written (32 bytes at page
    /// offset 0xFE0); two bytes further (bit 0 is the enable bit) it would cross the page and is not.
    #[test]
    fn a_structure_ending_at_its_pages_end_is_written() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x2fe0 | 1);
        assert_eq!(&g.ram.0[0x2fe0..0x3000], &pvclock::time_info(HOST_TSC, 2_000_000));
        wrmsr(&mut cpu, &mut g, pvclock::MSR_SYSTEM_TIME_NEW, 0x3fe2 | 1);
        assert!(g.ram.0[0x3fe0..0x4010].iter().all(|b| *b == 0));
    }

    /// A host that cannot tell the time says 0 (`Host::unix_time_ns`'s default): the guest's
    /// wall clock then starts at the Unix epoch, not at a made-up time.
    #[test]
    fn a_host_without_a_clock_gives_the_epoch() {
        let host = FakeHost { wbinvd: core::cell::Cell::new(0) };
        assert_eq!(host.unix_time_ns(), 0);
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        wrmsr(&mut cpu, &mut g, pvclock::MSR_WALL_CLOCK_NEW, 0x2100);
        assert_eq!(&g.ram.0[0x2100..0x210c], &pvclock::wall_clock(0, 500_000));
    }

    #[test]
    fn cpuid_offers_the_kvm_leaves_beside_bastions_own() {
        let (mut cpu, mut g) = (FakeCpu::default(), guest());
        cpu.gprs.rax = pvclock::KVM_BASE as u64;
        run(Exit::Cpuid, &mut cpu, &mut g);
        assert_eq!([cpu.gprs.rbx as u32, cpu.gprs.rcx as u32, cpu.gprs.rdx as u32], pvclock::KVM_SIGNATURE);
        cpu.gprs.rax = 0x4000_0000;
        run(Exit::Cpuid, &mut cpu, &mut g);
        assert_eq!(cpu.gprs.rbx as u32, cpuid::SIGNATURE[0], "Bastion's signature stays first");
    }
}
