//! The backend-neutral exit handler over a fake vCPU: a sequence of exits of every kind, with
//! the fields a decoder can produce and registers the input picks, against one guest's devices
//! and 64 KiB of RAM whose bytes at RIP (the instruction an MMIO exit decodes) the input fills.
//!
//! Rules checked after every exit:
//! - RIP moves only to the exit's next RIP (the instruction's length, SDM Vol. 3C 28.2.5), and
//!   only when no fault was injected (a fault reports the instruction, SDM Vol. 3A 6.5);
//! - at most one exception per exit, of a vector the handler has rules for (#UD, #GP, #PF),
//!   with an error code
//!   exactly for the vectors that push one (SDM Vol. 3A 6.13, Table 6-1) and never in real
//!   mode (SDM Vol. 3A 21.1.4);
//! - (checked by `vm::fake::FakeCpu` itself) CR0 and CR4 reach the vCPU only with values MOV CR would not #GP on (SDM Vol. 3A 2.5,
//!   Vol. 2B MOV): bits 63:32 clear, PG only with PE, NW only with CD; EFER only with defined
//!   bits; XCR0 with x87 set and AVX only with SSE (SDM Vol. 1 13.3);
//! - guest RAM is written only by exits whose instruction writes memory (INS, MMIO emulation,
//!   the kvmclock and PV-EOI MSRs, hypercalls), always through `GuestPhys`, which refuses
//!   what lies outside RAM.
#![no_main]
use bastion_core::vm::devices::GuestDevices;
use bastion_core::vm::fake::{FakeCpu, FakeHost};
use bastion_core::vm::guest_mem::GuestPhys;
use bastion_core::vm::{handle_exit, Env, Exit, Seg, StringIo, VcpuState, VmExit};
use libfuzzer_sys::fuzz_target;

/// 64 KiB of guest RAM at guest-physical 0; counts writes.
struct Ram {
    bytes: Vec<u8>,
    writes: u32,
}

impl GuestPhys for Ram {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(src) = usize::try_from(gpa).ok().and_then(|a| self.bytes.get(a..a.checked_add(buf.len())?)) else { return false };
        buf.copy_from_slice(src);
        true
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> bool {
        let Some(dst) = usize::try_from(gpa).ok().and_then(|a| self.bytes.get_mut(a..a.checked_add(buf.len())?)) else { return false };
        dst.copy_from_slice(buf);
        self.writes += 1;
        true
    }
}

const RAM: usize = 0x10000;
const MSRS: [u32; 16] = [0x10, 0x1b, 0x3a, 0x8b, 0x1a0, 0x277, 0xc000_0080, 0xc000_0100, 0xc000_0102, 0x4b56_4d00, 0x4b56_4d01, 0x4b56_4d04, 0x4b56_4d03, 0x480, 0xc001_0114, 0xc001_0117];
const PORTS: [u16; 16] = [0x3f8, 0x3f9, 0x3fd, 0x20, 0x21, 0xa0, 0x40, 0x43, 0x61, 0x70, 0x71, 0x60, 0x64, 0x604, 0x608, 0xcf8];

fn exit(u: &mut arbitrary::Unstructured) -> Exit {
    let pick = |u: &mut arbitrary::Unstructured, n: usize| u.int_in_range(0..=n - 1).unwrap_or(0);
    match u.int_in_range(0..=19u8).unwrap_or(0) {
        0 => Exit::Cpuid,
        1 => Exit::Rdmsr,
        2 => Exit::Wrmsr,
        3 => {
            let port = if u.arbitrary().unwrap_or(true) { PORTS[pick(u, 16)] } else { u.arbitrary().unwrap_or(0) };
            let string = u.arbitrary::<bool>().unwrap_or(false).then(|| StringIo {
                rep: u.arbitrary().unwrap_or(false),
                addr_size: [2, 4, 8][pick(u, 3)],
                seg: Seg::from_index(pick(u, 6) as u64).unwrap_or(Seg::Ds),
            });
            Exit::Io { port, size: [1, 2, 4][pick(u, 3)], write: u.arbitrary().unwrap_or(false), string }
        }
        4 => Exit::Hlt,
        5 => Exit::Hypercall,
        6 => Exit::CrWrite { cr: if u.arbitrary().unwrap_or(true) { 0 } else { 4 }, value: u.arbitrary().unwrap_or(0) },
        7 => Exit::Xsetbv,
        8 => Exit::Invd,
        9 => {
            let gpa = match pick(u, 4) {
                0 => 0xfee0_0000 + u.int_in_range(0..=0xfffu64).unwrap_or(0),
                1 => 0xfec0_0000 + u.int_in_range(0..=0xffu64).unwrap_or(0),
                2 => u.int_in_range(0..=0x2_0000u64).unwrap_or(0),
                _ => u.arbitrary().unwrap_or(0),
            };
            Exit::NestedPageFault { gpa, write: u.arbitrary().unwrap_or(false), fetch: u.arbitrary().unwrap_or(false) }
        }
        10 => Exit::TripleFault,
        11 => Exit::VirtInstruction,
        12 => Exit::Rdpmc,
        13 => Exit::Interrupted,
        14 => Exit::PauseLoop,
        15 => Exit::HostNmi,
        16 => Exit::InterruptWindow,
        17 => Exit::NmiWindow,
        18 => if u.arbitrary().unwrap_or(true) { Exit::EntryFailed("fuzz".into()) } else { Exit::StateLost("fuzz".into()) },
        _ => Exit::Unhandled { code: u.arbitrary().unwrap_or(0), info1: 0, info2: 0 },
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let host = FakeHost { wbinvd: core::cell::Cell::new(0) };
    let mut state = VcpuState::new(0, 2_000_000, &host);
    let mut devices = GuestDevices::default();
    let mut ram = Ram { bytes: vec![0; RAM], writes: 0 };
    let mut cpu = FakeCpu { rflags: 2, cr0: 0x10, ..FakeCpu::default() };
    // The mode the guest runs in: real, protected, or long mode with identity paging off
    // (linear = physical is all the fake's translation needs).
    match u.int_in_range(0..=2u8).unwrap_or(0) {
        0 => {}
        1 => (cpu.cr0, cpu.cs_d, cpu.ss_b) = (0x11, true, true),
        _ => (cpu.cr0, cpu.cr4, cpu.efer, cpu.cs_l) = (0x11, 0x20, 0x500, true),
    }
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let e = exit(&mut u);
        cpu.rip = u.int_in_range(0..=(RAM as u64 - 16)).unwrap_or(0);
        for k in 0..16 {
            ram.bytes[cpu.rip as usize + k] = u.arbitrary().unwrap_or(0x90);
        }
        let regs: [u64; 6] = u.arbitrary().unwrap_or_default();
        cpu.gprs.rax = regs[0];
        cpu.gprs.rcx = if u.arbitrary().unwrap_or(true) { u64::from(MSRS[u.int_in_range(0..=15usize).unwrap_or(0)]) } else { regs[1] };
        cpu.gprs.rdx = regs[2];
        cpu.gprs.rbx = regs[3];
        cpu.gprs.rsi = regs[4] % RAM as u64;
        cpu.gprs.rdi = regs[5] % RAM as u64;
        if let Exit::Io { string: Some(_), .. } = e {
            cpu.gprs.rcx %= 64;
        }
        cpu.rsp = u.int_in_range(16..=(RAM as u64 - 16)).unwrap_or(0x8000);
        cpu.cpl = if u.arbitrary().unwrap_or(true) { 0 } else { 3 };
        cpu.window_open = u.arbitrary().unwrap_or(false);
        let len = u.int_in_range(1..=15u64).unwrap_or(2);
        let instruction = matches!(e, Exit::Cpuid | Exit::Rdmsr | Exit::Wrmsr | Exit::Io { .. } | Exit::Hlt | Exit::Hypercall | Exit::CrWrite { .. } | Exit::Xsetbv | Exit::Invd);
        let vm_exit = if instruction { VmExit::insn(e.clone(), cpu.rip + len) } else { VmExit::event(e.clone()) };

        let (rip, writes, completed, protected) = (cpu.rip, ram.writes, cpu.skipped, cpu.cr0 & 1 != 0);
        cpu.injected.clear();
        let mut env = Env { io: &mut devices, mem: &mut ram, host: &host };
        let _action = handle_exit(&vm_exit, &mut cpu, &mut state, &mut env);
        let _ = devices.uart.lock().take_output();

        assert!(cpu.injected.len() <= 1, "{e:?}: injected {:?}", cpu.injected);
        for &(v, code) in &cpu.injected {
            assert!(matches!(v, 6 | 13 | 14), "{e:?}: injected vector {v}");
            // Real mode pushes none (SDM Vol. 3A 21.1.4).
            assert_eq!(code.is_some(), protected && matches!(v, 8 | 10..=14 | 17 | 21), "{e:?}: vector {v} with error code {code:?}");
        }
        if cpu.rip != rip {
            // The MMIO path continues after the instruction it decoded, of its own length.
            let mmio = matches!(e, Exit::NestedPageFault { .. });
            assert!(vm_exit.next_rip == Some(cpu.rip) || mmio && cpu.rip > rip && cpu.rip - rip <= 15, "{e:?}: RIP {rip:#x} -> {:#x}, next RIP {:?}", cpu.rip, vm_exit.next_rip);
            assert!(cpu.injected.is_empty(), "{e:?}: a fault injected and RIP advanced");
        }
        assert!(cpu.skipped - completed <= 1, "{e:?}: completed twice");
        if ram.writes != writes {
            let writes_memory = matches!(e, Exit::Io { write: false, string: Some(_), .. } | Exit::NestedPageFault { .. } | Exit::Wrmsr | Exit::Hypercall);
            assert!(writes_memory, "{e:?} wrote guest RAM");
        }
    }
});
