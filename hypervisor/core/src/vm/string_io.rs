//! INS and OUTS (with or without REP), emulated: each element moves between a port and guest
//! memory at ES:rDI (INS) or seg:rSI (OUTS), rSI/rDI step by the element size (down when
//! RFLAGS.DF = 1) and, with REP, rCX counts down (SDM Vol. 2A "INS/INSB/INSW/INSD", Vol. 2B
//! "OUTS/OUTSB/OUTSW/OUTSD", "REP/REPE/REPZ…").
//!
//! Guest memory is reached through the guest's own page tables. A page that is not mapped
//! gets the #PF the CPU would raise, with CR2 = the linear address; the iterations already
//! done stay done, as on hardware (a REP string instruction is interruptible between
//! iterations, SDM Vol. 2B REP). A long REP is split: after [`super::rep::MAX_PER_EXIT`] elements
//! the guest re-executes the instruction to continue, so one exit never holds a CPU for long.
//! Segment limits and page protections (read-only, user/supervisor) are not checked: the
//! guest can only ever reach its own RAM through [`GuestPhys`].

use super::guest_mem::{GuestPhys, Paging};
use super::regs::{write_low, Rflags};
use super::rep::{self, Element, RepEnd};
use super::{complete, inject_exception, io_mask, Action, Env, Exit, IoOutcome, Seg, StopReason, StringIo, Vcpu, VmExit};

/// #PF error code bits (SDM Vol. 3A 4.7).
const PF_WRITE: u32 = 1 << 1;
const PF_USER: u32 = 1 << 2;
const PF: u8 = 14;

/// Copies `buf.len()` bytes between `linear` and `buf`, page by page; `Err(address)` names the
/// first linear address that is not mapped.
fn access(paging: &Paging, linear: u64, buf: &mut [u8], write: bool, mem: &mut dyn GuestPhys) -> Result<(), u64> {
    for (addr, piece) in paging.pieces(linear, buf) {
        let gpa = paging.translate(addr, mem).ok_or(addr)?;
        let ok = if write { mem.write(gpa, piece) } else { mem.read(gpa, piece) };
        if !ok {
            return Err(addr);
        }
    }
    Ok(())
}

/// Handles one INS/OUTS exit.
pub fn handle(port: u16, size: u8, out: bool, s: &StringIo, next_rip: Option<u64>, cpu: &mut dyn Vcpu, env: &mut Env) -> Action {
    let m = cpu.mode();
    let paging = Paging::from(&m);
    let amask: u64 = match s.addr_size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let step = if cpu.rflags() & Rflags::DF.bits() != 0 { (size as u64).wrapping_neg() } else { size as u64 };
    // INS always writes ES:rDI; OUTS reads seg:rSI (DS unless overridden). In 64-bit mode the
    // backends report base 0 for ES/CS/SS/DS, as the CPU uses.
    let seg = if out { s.seg } else { Seg::Es };
    let base = cpu.segment_base(seg);
    // Updates a register through the address-size part of it (SDM Vol. 1 3.4.1.1).
    let merge = |old: u64, new: u64| write_low(old, s.addr_size, new);
    let cpl = cpu.cpl();
    let end = rep::run(
        cpu,
        s.rep,
        |cpu| cpu.gprs().rcx & amask,
        |cpu, left| cpu.gprs().rcx = merge(cpu.gprs().rcx, left),
        |cpu| {
            let r = cpu.gprs();
            let index = if out { r.rsi } else { r.rdi } & amask;
            let linear = base.wrapping_add(index);
            let mut buf = [0u8; 4];
            let buf = &mut buf[..size.min(4) as usize];
            let result = if out {
                access(&paging, linear, buf, false, env.mem).map(|()| {
                    let value = buf.iter().rev().fold(0u32, |v, b| (v << 8) + *b as u32);
                    env.io.io_write(port, size, value)
                })
            } else {
                let value = env.io.io_read(port, size) as u64 & io_mask(size);
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (value >> (8 * i)) as u8;
                }
                access(&paging, linear, buf, true, env.mem).map(|()| IoOutcome::Done)
            };
            let outcome = match result {
                Err(addr) => {
                    // Not present (P = 0), a write for INS, a user access at CPL 3 (SDM Vol.
                    // 3A 4.7).
                    let code = if out { 0 } else { PF_WRITE } + if cpl == 3 { PF_USER } else { 0 };
                    cpu.set_cr2(addr);
                    inject_exception(cpu, PF, Some(code));
                    return Element::Fault(Action::Resume);
                }
                Ok(outcome) => outcome,
            };
            let r = cpu.gprs();
            if out {
                r.rsi = merge(r.rsi, index.wrapping_add(step));
            } else {
                r.rdi = merge(r.rdi, index.wrapping_add(step));
            }
            match outcome {
                IoOutcome::TestExit(code) => Element::Last(Action::Stop(StopReason::TestExit(code))),
                IoOutcome::Reset => Element::Last(Action::Stop(StopReason::Reboot)),
                IoOutcome::PowerOff => Element::Last(Action::Stop(StopReason::PowerOff)),
                IoOutcome::Done => Element::Next,
            }
        },
    );
    match end {
        RepEnd::Stopped(action) => return action,
        // The budget ran out with elements left: re-execute the instruction for the rest (RIP
        // stays), so the guest can take interrupts between the parts, as between iterations.
        RepEnd::Again => return Action::Resume,
        RepEnd::Done => {}
    }
    let e = VmExit { exit: Exit::Io { port, size, write: out, string: Some(*s) }, next_rip };
    complete(cpu, &e)
}
