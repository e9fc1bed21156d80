//! Exit-handler tests over a fake vCPU: every exit's answer, without hardware.

use super::*;
use alloc::vec::Vec;

#[derive(Default)]
struct FakeCpu {
    gprs: Gprs,
    rip: u64,
    rflags: u64,
    cpl: u8,
    cr0: u64,
    cr4: u64,
    efer: u64,
    skipped: u32,
    injected: Vec<(u8, Option<u32>)>,
    window_open: bool,
    window_requested: bool,
    interrupts: Vec<u8>,
}

impl Vcpu for FakeCpu {
    fn gprs(&mut self) -> &mut Gprs {
        &mut self.gprs
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn guest_cr4(&self) -> u64 {
        self.cr4
    }
    fn guest_efer(&self) -> u64 {
        self.efer
    }
    fn set_guest_efer(&mut self, v: u64) {
        self.efer = v;
    }
    fn set_guest_cr(&mut self, cr: u8, v: u64) {
        match cr {
            0 => self.cr0 = v,
            4 => self.cr4 = v,
            _ => panic!("cr{cr}"),
        }
    }
    fn skip_instruction(&mut self) {
        self.skipped += 1;
    }
    fn inject_exception(&mut self, v: u8, e: Option<u32>) {
        self.injected.push((v, e));
    }
    fn interrupt_window_open(&self) -> bool {
        self.window_open
    }
    fn inject_interrupt(&mut self, vector: u8) {
        self.interrupts.push(vector);
    }
    fn request_interrupt_window(&mut self, on: bool) {
        self.window_requested = on;
    }
}

fn host(leaf: u32, _: u32) -> [u32; 4] {
    match leaf {
        0 => [0xd, 1, 2, 3],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        _ => [0x11, 0x22, 0x33, 0x44],
    }
}

use super::devices::GuestDevices;

/// Runs one exit against a fresh-per-test guest; returns the action and the UART output.
fn run(exit: Exit, cpu: &mut FakeCpu, g: &mut (VcpuState, GuestDevices)) -> (Action, Vec<u8>) {
    let a = handle_exit(&exit, cpu, &mut g.0, &mut g.1, &host);
    (a, g.1.uart.take_output())
}

fn guest() -> (VcpuState, GuestDevices) {
    (VcpuState::new(0), GuestDevices::default())
}

#[test]
fn cpuid_answers_from_policy_and_skips() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = 0x4000_0000;
    cpu.gprs.rbx = 0xdead;
    assert_eq!(run(Exit::Cpuid, &mut cpu, &mut g).0, Action::Resume);
    assert_eq!(cpu.gprs.rbx, cpuid::SIGNATURE[0] as u64);
    assert_eq!(cpu.skipped, 1);
    assert_eq!(g.0.stats.get(ExitKind::Cpuid), 1);
}

#[test]
fn unknown_msr_injects_gp_without_skipping() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rcx = 0x4b56_4d00;
    run(Exit::Rdmsr, &mut cpu, &mut g);
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0)), (GP, Some(0))]);
    assert_eq!(cpu.skipped, 0, "a faulting instruction must not be skipped");
    assert_eq!(g.0.stats.get(ExitKind::Msr), 2);
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

#[test]
fn efer_writes_keep_lma_and_reject_svme() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.efer = msr::EFER_LMA;
    cpu.gprs.rcx = msr::EFER as u64;
    cpu.gprs.rax = msr::EFER_LME | msr::EFER_SCE;
    run(Exit::Wrmsr, &mut cpu, &mut g);
    assert_eq!(cpu.efer, msr::EFER_LME | msr::EFER_SCE | msr::EFER_LMA);
    cpu.gprs.rax = msr::EFER_SVME;
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
        let (a, out) = run(Exit::Io { port: 0x3f8, size: 1, write: true, string: false }, &mut cpu, &mut g);
        assert_eq!(a, Action::Resume);
        all.extend(out);
    }
    assert_eq!(all, b"ok\n", "only AL is written");
    cpu.gprs.rax = 0x1234_5600;
    run(Exit::Io { port: 0x3fd, size: 1, write: false, string: false }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0x1234_5660, "IN AL keeps the upper bits of RAX");
    assert_eq!(g.0.stats.get(ExitKind::Io), 4);
}

#[test]
fn unclaimed_ports_read_all_ones_and_in_eax_zero_extends() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = u64::MAX;
    run(Exit::Io { port: 0x80, size: 4, write: false, string: false }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff_ffff);
    cpu.gprs.rax = 0;
    run(Exit::Io { port: 0x60, size: 2, write: false, string: false }, &mut cpu, &mut g);
    assert_eq!(cpu.gprs.rax, 0xffff);
}

#[test]
fn test_exit_port_stops_with_the_code() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    cpu.gprs.rax = 0;
    let (a, _) = run(Exit::Io { port: 0xf4, size: 4, write: true, string: false }, &mut cpu, &mut g);
    assert_eq!(a, Action::Stop(StopReason::TestExit(0)));
    cpu.gprs.rax = 0xffff_0000_0000_0007;
    let (a, _) = run(Exit::Io { port: 0xf4, size: 4, write: true, string: false }, &mut cpu, &mut g);
    assert_eq!(a, Action::Stop(StopReason::TestExit(7)));
    assert_eq!(StopReason::TestExit(7).to_string(), "test exit: FAIL (code 0x7)");
}

#[test]
fn string_io_is_refused_with_a_reason() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    let (a, _) = run(Exit::Io { port: 0x3f8, size: 1, write: true, string: true }, &mut cpu, &mut g);
    assert!(matches!(a, Action::Stop(StopReason::Unsupported(ref s)) if s.contains("0x3f8")), "{a:?}");
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

#[test]
fn cr_writes_are_checked() {
    let (mut cpu, mut g) = (FakeCpu::default(), guest());
    run(Exit::CrWrite { cr: 0, value: 0x8000_0011 }, &mut cpu, &mut g);
    assert_eq!(cpu.cr0, 0x8000_0011);
    run(Exit::CrWrite { cr: 0, value: 0x8000_0010 }, &mut cpu, &mut g); // PG without PE
    run(Exit::CrWrite { cr: 4, value: CR4_VMXE }, &mut cpu, &mut g);
    run(Exit::CrWrite { cr: 0, value: 1 << 32 }, &mut cpu, &mut g);
    assert_eq!(cpu.injected, [(GP, Some(0)); 3]);
    run(Exit::CrWrite { cr: 4, value: 0x20 }, &mut cpu, &mut g);
    assert_eq!((cpu.cr4, cpu.skipped), (0x20, 2));
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
    assert_eq!(g.0.stats.total(), 4);
    assert_eq!(g.0.stats.to_string(), "total 4: npf 1, triple-fault 1, interrupt 1, unhandled 1");
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
    assert_eq!(g.0.stats.get(ExitKind::Interrupted), 1);
}

#[test]
fn pending_pic_interrupt_is_injected_only_through_an_open_window() {
    use crate::devices::pic8259::Pic;
    let mut pic = Pic::new();
    let mut cpu = FakeCpu::default();
    assert!(!deliver_interrupt(&mut cpu, &mut pic), "nothing pending");
    assert!(!cpu.window_requested);
    for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)] {
        pic.write(p, v);
    }
    pic.set_irq(4, true);
    // Interrupts off in the guest: ask for a window, inject nothing.
    assert!(!deliver_interrupt(&mut cpu, &mut pic));
    assert!(cpu.window_requested && cpu.interrupts.is_empty());
    // Window open: the vector goes in and the request is withdrawn.
    cpu.window_open = true;
    assert!(deliver_interrupt(&mut cpu, &mut pic));
    assert_eq!(cpu.interrupts, [0x24]);
    assert!(!cpu.window_requested);
    // In service until EOI: nothing more to deliver.
    assert!(!deliver_interrupt(&mut cpu, &mut pic));
    assert_eq!(cpu.interrupts.len(), 1);
}
