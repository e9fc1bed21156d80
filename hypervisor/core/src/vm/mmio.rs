//! Device memory: a nested page fault in device space becomes the device access the faulting
//! instruction made.
//!
//! The hardware reports only the guest-physical address and whether the access was a read, a
//! write or a fetch (EPT violation exit qualification, SDM Vol. 3C 28.2.1 Table 28-7; NPF
//! EXITINFO1, APM Vol. 2 15.25.6). So the handler fetches the instruction through the guest's
//! own page tables, decodes it ([`super::insn::decode`]), performs it against the device bus
//! and guest RAM ([`super::insn::execute`]) and moves RIP past it. The rules:
//!
//! - Only **device space** is emulated: what [`DeviceIo::is_device`] says (the MMIO hole below
//!   4 GiB). A fault anywhere else is an access to nothing — beyond the guest's RAM — and
//!   stops the guest with [`StopReason::BadAccess`], as before MMIO existed.
//! - An **instruction fetch** from device space stops the guest the same way: there is no code
//!   in device registers to run.
//! - An instruction Bastion cannot **fetch or decode** stops the guest with a report naming
//!   the address, RIP and bytes. Guessing would corrupt the guest silently.
//! - A string or stack operand on a **page the guest has not mapped** gets the #PF the CPU would
//!   raise (CR2 = the linear address, error code per SDM Vol. 3A 4.7), with the iterations of a
//!   REP already done kept, as on hardware (SDM Vol. 2B REP: interruptible between iterations).
//! - A **long REP** ends its exit after [`super::rep::MAX_PER_EXIT`] elements with RIP
//!   unchanged, so the guest re-executes it for the rest and one exit never holds a CPU long.
//!
//! Segment limits and access rights are not checked for the operands registers name (the
//! guest can only ever reach its own RAM and devices this way).

use super::devices::DeviceIo;
use super::guest_mem::{GuestPhys, Paging};
use super::insn::{self, Completion, CpuMode, InsnMemory, Op, RegState};
use super::regs::Efer;
use super::{inject_exception, Action, Env, Seg, StopReason, Vcpu};
use alloc::format;

/// #PF error code bits (SDM Vol. 3A 4.7).
const PF_WRITE: u32 = 1 << 1;
const PF_USER: u32 = 1 << 2;
const PF: u8 = 14;

/// Why an emulated access could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The linear address is not mapped by the guest's page tables: a #PF for the guest.
    Page { linear: u64, write: bool },
    /// The guest-physical address is neither RAM nor device space.
    Nothing { gpa: u64, write: bool },
}

/// Guest memory as the emulated instruction reaches it: device space through the bus,
/// everything else as RAM.
struct Mem<'a> {
    io: &'a mut dyn DeviceIo,
    ram: &'a mut dyn GuestPhys,
    paging: Paging,
    /// Segment bases by [`Seg`] number (only read for string and stack operands).
    bases: [u64; 6],
}

impl Mem<'_> {
    fn phys(&mut self, gpa: u64, data: &mut [u8], write: bool) -> Result<(), Miss> {
        let ok = if self.io.is_device(gpa) {
            if write {
                self.io.mmio_write(gpa, data)
            } else {
                self.io.mmio_read(gpa, data)
            }
        } else if write {
            // RAM: `linear` hands it over a page at a time, and the operand the hardware
            // reported is device space, so a piece never crosses a page here.
            self.ram.write(gpa, data)
        } else {
            self.ram.read(gpa, data)
        };
        if ok {
            Ok(())
        } else {
            Err(Miss::Nothing { gpa, write })
        }
    }

    fn linear(&mut self, seg: Seg, offset: u64, data: &mut [u8], write: bool) -> Result<(), Miss> {
        let paging = self.paging;
        for (linear, piece) in paging.pieces(self.bases[seg as usize].wrapping_add(offset), data) {
            let gpa = paging.translate(linear, self.ram).ok_or(Miss::Page { linear, write })?;
            self.phys(gpa, piece, write)?;
        }
        Ok(())
    }
}

impl InsnMemory for Mem<'_> {
    type Error = Miss;
    fn read_gpa(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), Miss> {
        self.phys(gpa, data, false)
    }
    fn write_gpa(&mut self, gpa: u64, data: &[u8]) -> Result<(), Miss> {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        self.phys(gpa, &mut b[..n], true)
    }
    fn read_linear(&mut self, seg: Seg, offset: u64, data: &mut [u8]) -> Result<(), Miss> {
        self.linear(seg, offset, data, false)
    }
    fn write_linear(&mut self, seg: Seg, offset: u64, data: &[u8]) -> Result<(), Miss> {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        self.linear(seg, offset, &mut b[..n], true)
    }
}

/// Handles a nested page fault at `gpa` (see the module documentation for the rules).
pub fn handle(gpa: u64, write: bool, fetch: bool, cpu: &mut dyn Vcpu, env: &mut Env) -> Action {
    let bad = Action::Stop(StopReason::BadAccess { gpa, write, fetch });
    if fetch || !env.io.is_device(gpa) {
        return bad;
    }
    let m = cpu.mode();
    let paging = Paging::from(&m);
    let long_mode = m.efer & Efer::LMA.bits() != 0;
    let bits64 = long_mode && m.cs_l;
    let mode = CpuMode::from_cs(bits64, cpu.segment_db(Seg::Cs));
    let rip = cpu.rip();
    let linear_rip = cpu.segment_base(Seg::Cs).wrapping_add(rip);
    let linear_rip = if bits64 { linear_rip } else { linear_rip & 0xffff_ffff };
    let what = if write { "write to" } else { "read of" };
    let Some(bytes) = paging.fetch(linear_rip, env.mem) else {
        return Action::Stop(StopReason::Unsupported(format!(
            "device memory {what} {gpa:#x}: the instruction at RIP {rip:#x} cannot be read"
        )));
    };
    let insn = match insn::decode(&bytes, mode) {
        Ok(i) => i,
        Err(e) => {
            return Action::Stop(StopReason::Unsupported(format!(
                "device memory {what} {gpa:#x} by an instruction Bastion does not emulate at RIP {rip:#x}: {e} (bytes {bytes:02x?})"
            )))
        }
    };
    let mut bases = [0u64; 6];
    if matches!(insn.op, Op::Movs | Op::Stos | Op::Lods | Op::Push | Op::Pop) {
        for (i, b) in bases.iter_mut().enumerate() {
            *b = Seg::from_index(i as u64).map_or(0, |s| cpu.segment_base(s));
        }
    }
    let stack_size = if bits64 {
        8
    } else if cpu.segment_db(Seg::Ss) {
        4
    } else {
        2
    };
    let mut regs = RegState { gprs: *cpu.gprs(), rsp: cpu.rsp(), rflags: cpu.rflags() };
    let before = regs;
    let result = {
        let mut mem = Mem { io: &mut *env.io, ram: &mut *env.mem, paging, bases };
        insn::execute(&insn, gpa, stack_size, &mut regs, &mut mem)
    };
    // Whatever happened, the registers hold what the executed part of the instruction left.
    *cpu.gprs() = regs.gprs;
    if regs.rsp != before.rsp {
        cpu.set_rsp(regs.rsp);
    }
    if regs.rflags != before.rflags {
        cpu.set_rflags(regs.rflags);
    }
    match result {
        Ok(Completion::Done) => {
            let next = rip.wrapping_add(insn.len as u64);
            cpu.complete(if bits64 { next } else { next & 0xffff_ffff });
            Action::Resume
        }
        Ok(Completion::Again) => Action::Resume,
        Err(Miss::Page { linear, write }) => {
            // Disjoint bits of the #PF error code (SDM Vol. 3A 4.7).
            let code = if write { PF_WRITE } else { 0 } + if cpu.cpl() == 3 { PF_USER } else { 0 };
            cpu.set_cr2(linear);
            inject_exception(cpu, PF, Some(code));
            Action::Resume
        }
        Err(Miss::Nothing { gpa, write }) => Action::Stop(StopReason::BadAccess { gpa, write, fetch: false }),
    }
}
