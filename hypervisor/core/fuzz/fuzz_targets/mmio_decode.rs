//! The MMIO instruction decoder and emulator: any 15 bytes in each CPU mode, then the decoded
//! instruction run against registers and memory the input chooses. Rules checked (SDM Vol. 2A
//! chapter 2): an instruction is at most 15 bytes and decodes the same from exactly its own
//! bytes; accesses are 1, 2, 4 or 8 bytes and addresses 2, 4 or 8; the device operand is
//! touched only at the faulting address with the instruction's access size; a REP string
//! instruction does at most MAX_PER_EXIT iterations per exit; every memory error reaches
//! the caller.
#![no_main]
use bastion_core::vm::insn::{decode, execute, CpuMode, InsnMemory, Op, RegState};
use bastion_core::vm::rep::MAX_PER_EXIT;
use bastion_core::vm::Seg;
use libfuzzer_sys::fuzz_target;

struct Mem {
    gpa: u64,
    size: usize,
    /// Accesses so far, and the access (counting from 1) that fails, if any.
    accesses: u64,
    fail_at: Option<u64>,
    string: bool,
}

impl Mem {
    fn access(&mut self) -> Result<(), ()> {
        self.accesses += 1;
        if Some(self.accesses) == self.fail_at {
            Err(())
        } else {
            Ok(())
        }
    }
}

impl InsnMemory for Mem {
    type Error = ();
    fn read_gpa(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), ()> {
        assert!(!self.string, "a string instruction read the fault address directly");
        assert_eq!((gpa, data.len()), (self.gpa, self.size), "a device read elsewhere or of another size");
        data.fill(0xa5);
        self.access()
    }
    fn write_gpa(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        assert!(!self.string, "a string instruction wrote the fault address directly");
        assert_eq!((gpa, data.len()), (self.gpa, self.size), "a device write elsewhere or of another size");
        self.access()
    }
    fn read_linear(&mut self, _seg: Seg, _offset: u64, data: &mut [u8]) -> Result<(), ()> {
        assert!(matches!(data.len(), 1 | 2 | 4 | 8), "{} bytes", data.len());
        data.fill(0x5a);
        self.access()
    }
    fn write_linear(&mut self, _seg: Seg, _offset: u64, data: &[u8]) -> Result<(), ()> {
        assert!(matches!(data.len(), 1 | 2 | 4 | 8), "{} bytes", data.len());
        self.access()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mode = [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64][u.int_in_range(0..=2usize).unwrap_or(0)];
    let mut bytes = [0u8; 15];
    let n = u.int_in_range(0..=15usize).unwrap_or(15);
    for b in bytes.iter_mut().take(n) {
        *b = u.arbitrary().unwrap_or(0);
    }
    let Ok(insn) = decode(&bytes[..n], mode) else { return };
    let len = usize::from(insn.len);
    assert!((1..=15).contains(&len) && len <= n, "length {len} of {n} bytes");
    assert_eq!(decode(&bytes[..len], mode), Ok(insn), "decodes differently from its own {len} bytes");
    assert!(matches!(insn.size, 1 | 2 | 4 | 8) && matches!(insn.addr_size, 2 | 4 | 8), "{insn:?}");
    if mode != CpuMode::Bits64 {
        assert!(insn.rex.is_empty() && insn.addr_size != 8, "64-bit forms outside 64-bit mode: {insn:?}");
    }

    let mut regs = RegState { rsp: u.arbitrary().unwrap_or(0), rflags: u.arbitrary::<u64>().unwrap_or(0) | 2, ..RegState::default() };
    regs.gprs.rcx = u.int_in_range(0..=3000).unwrap_or(0);
    regs.gprs.rsi = u.arbitrary().unwrap_or(0);
    regs.gprs.rdi = u.arbitrary().unwrap_or(0);
    regs.gprs.rax = u.arbitrary().unwrap_or(0);
    let string = matches!(insn.op, Op::Movs | Op::Stos | Op::Lods);
    let fail_at = u.arbitrary::<Option<u8>>().unwrap_or(None).map(|k| u64::from(k) + 1);
    let gpa = u.arbitrary().unwrap_or(0xfee0_0300);
    let mut mem = Mem { gpa, size: usize::from(insn.size), accesses: 0, fail_at, string };
    let stack = [2, 4, 8][u.int_in_range(0..=2usize).unwrap_or(2)];
    let rcx = regs.gprs.rcx;
    let r = execute(&insn, gpa, stack, &mut regs, &mut mem);
    if fail_at.is_some_and(|k| k <= mem.accesses) {
        assert!(r.is_err(), "a memory error was lost");
    } else {
        assert!(r.is_ok());
    }
    if string && insn.rep.is_some() {
        let done = rcx.saturating_sub(regs.gprs.rcx & mask(insn.addr_size));
        assert!(done <= MAX_PER_EXIT, "{done} iterations in one exit");
    }
    if !string {
        assert!(mem.accesses <= 2, "{} accesses by one instruction", mem.accesses);
    }
});

fn mask(addr_size: u8) -> u64 {
    if addr_size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * addr_size)) - 1
    }
}
