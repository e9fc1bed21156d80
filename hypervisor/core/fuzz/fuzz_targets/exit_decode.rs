//! The VMX and SVM exit decoders: any exit reason or code with any qualification, exit
//! information and instruction bytes. Rules checked: an event exit carries no next RIP; an
//! instruction exit on VMX continues at RIP + the VM-exit instruction length (SDM Vol. 3C
//! 28.2.5), on SVM at NRIP when the CPU saves it (APM Vol. 2 15.7.1) and otherwise at most 15
//! bytes on (SDM Vol. 2A 2.3.11), IOIO at EXITINFO2 (APM 15.10.2); only registers 0-15 are
//! read; the instruction bytes are fetched at most once; a string I/O's address size is 2, 4
//! or 8 bytes; only CR0 and CR4 writes are reported.
#![no_main]
use bastion_core::virt::svm_exit::{self, SvmExitInfo};
use bastion_core::virt::vmx_exit::{self, VmxExitInfo};
use bastion_core::vm::{Exit, VmExit};
use core::cell::Cell;
use libfuzzer_sys::fuzz_target;

fn check_common(e: &VmExit) {
    match &e.exit {
        Exit::Io { string: Some(s), .. } => assert!(matches!(s.addr_size, 2 | 4 | 8), "{e:?}"),
        Exit::CrWrite { cr, .. } => assert!(matches!(cr, 0 | 4), "{e:?}"),
        _ => {}
    }
    let insn_exit = matches!(e.exit, Exit::Cpuid | Exit::Rdmsr | Exit::Wrmsr | Exit::Io { .. } | Exit::Hlt | Exit::Hypercall | Exit::CrWrite { .. } | Exit::Xsetbv | Exit::Invd);
    if !insn_exit {
        assert_eq!(e.next_rip, None, "an event exit with a next RIP: {e:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let vmx: bool = u.arbitrary().unwrap_or(true);
    let mut bytes = [0u8; 15];
    for b in &mut bytes {
        *b = u.arbitrary().unwrap_or(0x90);
    }
    let have_bytes: bool = u.arbitrary().unwrap_or(true);
    let fetches = Cell::new(0u32);
    let gpr = |n: usize| {
        assert!(n < 16, "register {n} read");
        0x1000 + n as u64
    };
    let mut insn = || {
        fetches.set(fetches.get() + 1);
        have_bytes.then_some(bytes)
    };
    let rip: u64 = u.arbitrary().unwrap_or(0);
    if vmx {
        let reason = if u.arbitrary().unwrap_or(true) { u.int_in_range(0..=80u32).unwrap_or(0) } else { u.arbitrary().unwrap_or(0) };
        let i = VmxExitInfo {
            reason,
            qualification: u.arbitrary().unwrap_or(0),
            rip,
            insn_len: u.int_in_range(1..=15).unwrap_or(1),
            insn_info: u.arbitrary().unwrap_or(0),
            io_insn_info: u.arbitrary().unwrap_or(false),
            intr_info: u.arbitrary().unwrap_or(0),
            gpa: u.arbitrary().unwrap_or(0),
            guest_cr0: u.arbitrary().unwrap_or(0),
            long_mode: u.arbitrary().unwrap_or(false),
            cs_db: u.arbitrary().unwrap_or(false),
        };
        let e = vmx_exit::decode(&i, &gpr, &mut insn);
        check_common(&e);
        if let Some(next) = e.next_rip {
            assert_eq!(next, rip.wrapping_add(i.insn_len), "{e:?}");
        }
        let _ = vmx_exit::reason_name(reason & 0xffff);
        let _ = vmx_exit::details(reason & 0xffff, i.qualification);
    } else {
        let code = if u.arbitrary().unwrap_or(true) { u.int_in_range(0..=0xa6u64).unwrap_or(0) } else { u.arbitrary().unwrap_or(0) };
        let i = SvmExitInfo {
            code,
            info1: u.arbitrary().unwrap_or(0),
            info2: u.arbitrary().unwrap_or(0),
            rip,
            nrip: u.arbitrary().unwrap_or(None),
            guest_cr0: u.arbitrary().unwrap_or(0),
            long_mode: u.arbitrary().unwrap_or(false),
            cs_db: u.arbitrary().unwrap_or(false),
        };
        let e = svm_exit::decode(&i, &gpr, &mut insn);
        check_common(&e);
        match (e.next_rip, &e.exit) {
            (Some(next), Exit::Io { .. }) => assert_eq!(next, i.info2, "{e:?}"),
            (Some(next), _) => match i.nrip {
                Some(nrip) => assert_eq!(next, nrip, "{e:?}"),
                None => assert!((1..=15).contains(&next.wrapping_sub(rip)), "{e:?} from RIP {rip:#x}"),
            },
            (None, _) => {}
        }
        let _ = svm_exit::code_name(code);
    }
    assert!(fetches.get() <= 1, "the instruction was fetched {} times", fetches.get());
});
