//! The report of a guest's fatal fault, written once for both backends: the state the guest
//! left (each backend fills a [`FaultState`] from its VMCS or VMCB) and a walk of the guest's
//! own page tables for every page the failed event delivery needed.
//!
//! A triple fault is the end of an exception the CPU could not deliver (SDM Vol. 3A 6.15,
//! "Interrupt 8—Double Fault Exception"; APM Vol. 2 8.2.9): the delivery itself faulted, twice.
//! Whether that was the guest's doing shows in its tables: delivering an event in protected or
//! long mode reads the IDT entry and pushes onto the stack, then fetches at the handler (SDM
//! Vol. 3A 6.12). If the guest's tables map the code at RIP, the stack, the IDT entries and the
//! handlers for the access each needs (no reserved bit set that every CPU reserves; fetches
//! from executable pages, writes to writable ones where CR0.WP asks, SMEP and SMAP kept), the
//! gates are present interrupt or trap gates and the control block names the guest's own
//! nested tables, the usual ways a guest breaks its own delivery are ruled out — what remains
//! is what the walk does not check (address bits above the guest's MAXPHYADDR, protection
//! keys, the GDT and the code segment a gate's selector names), or the CPU: on an emulator,
//! the emulator. The stack checked is the current one: a gate with an
//! IST or a privilege change switches to a stack from the TSS, which the report names but does
//! not walk; a task gate is named, not followed.

use super::guest_mem::{GuestPhys, Paging};
use super::regs::{describe_event, Cr0, Cr4, Efer, ModeView};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What a vCPU's fatal fault left, read by the backend from its VMCS or VMCB.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultState {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cs_base: u64,
    pub ss_base: u64,
    pub mode: ModeView,
    pub idt_base: u64,
    pub idt_limit: u32,
    /// The event whose delivery the exit interrupted: VMX's IDT-vectoring information (SDM
    /// Vol. 3C 28.2.4), SVM's EXITINTINFO (APM Vol. 2 15.7.2).
    pub delivering: u64,
    /// The error code of that event, where bit 11 of `delivering` says it has one (SVM:
    /// EXITINTINFO bits 63:32; VMX: the IDT-vectoring error code, SDM Vol. 3C 25.9.3).
    pub delivering_error: u32,
    /// The guest's CR2: the linear address of its last #PF (SDM Vol. 3A 4.7).
    pub cr2: u64,
    /// The event Bastion injected at the last entry (VM-entry interruption information,
    /// 25.8.3; EVENTINJ, 15.20).
    pub injected: u64,
    /// The top nested table the control block names (SVM's N_CR3, the EPTP's address bits)
    /// and the one of the guest's own nested tables, which the walk reads through: a
    /// difference means the CPU walked another table than the report does.
    pub nested_root: u64,
    pub own_nested_root: u64,
    /// A word on how far the state can be trusted (after an SVM SHUTDOWN intercept the APM
    /// leaves the state save area undefined).
    pub caveat: Option<&'static str>,
}

const CR0_PE: u64 = 1;
const LONG_GATE: u64 = 16;
const LEGACY_GATE: u64 = 8;
/// The error-code frame pushed in long mode: SS, RSP, RFLAGS, CS, RIP and the error code, on a
/// stack first aligned to 16 bytes (SDM Vol. 3A 6.14.2).
const LONG_FRAME: u64 = 48;
/// The largest frame outside long mode with a privilege level kept: EFLAGS, CS, EIP and the
/// error code (SDM Vol. 3A 6.12.1, Figure 6-4).
const LEGACY_FRAME: u64 = 16;
/// Real mode pushes FLAGS, CS and IP, 2 bytes each (SDM Vol. 3A 21.1.4).
const REAL_FRAME: u64 = 6;
const DOUBLE_FAULT: u8 = 8;
pub const ALL_MAPPED: &str = "the guest's tables map every page of this delivery for the access it makes and its gates are present interrupt or trap gates (not checked: address bits above MAXPHYADDR, protection keys, the GDT, the gates' selectors, a stack switch)";
pub const NOT_ALL_MAPPED: &str = "the guest's tables do not map every page of this delivery for the access it makes";
const PARTLY_FOLLOWED: &str = "the pages walked are mapped by the guest's tables, but a gate was not followed";

impl FaultState {
    /// One line for the stop report: registers, IDT and the two event fields.
    pub fn describe(&self) -> String {
        let m = &self.mode;
        format!(
            "RIP {:#x} RSP {:#x} RFLAGS {:#x} CS {:#x} CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} IDT {:#x}/{:#x}; delivering {}{}; injected at entry {}{}",
            self.rip,
            self.rsp,
            self.rflags,
            self.cs,
            m.cr0,
            self.cr2,
            m.cr3,
            m.cr4,
            m.efer,
            self.idt_base,
            self.idt_limit,
            describe_event(self.delivering),
            self.delivering_error_code().map(|c| self.describe_error(c)).unwrap_or_default(),
            describe_event(self.injected),
            self.caveat.map(|c| format!(" ({c})")).unwrap_or_default()
        )
    }

    /// The error code of the event being delivered: valid (bit 31) with "error code
    /// delivered" (bit 11), the same layout on both vendors.
    fn delivering_error_code(&self) -> Option<u32> {
        (self.delivering >> 31 & 1 != 0 && self.delivering >> 11 & 1 != 0).then_some(self.delivering_error)
    }

    /// ` 0x…`, and for a #PF what its bits say (SDM Vol. 3A 4.7, Figure 4-12): present or not,
    /// read or write, supervisor or user, a reserved bit, an instruction fetch.
    fn describe_error(&self, code: u32) -> String {
        if self.delivering as u8 != 14 {
            return format!(" {code:#x}");
        }
        let bit = |n: u32, set: &'static str, clear: &'static str| if code >> n & 1 != 0 { set } else { clear };
        format!(
            " {code:#x} ({}, {}, {}{}{})",
            bit(0, "protection", "not present"),
            bit(1, "write", "read"),
            bit(2, "user", "supervisor"),
            bit(3, ", reserved bit set", ""),
            bit(4, ", instruction fetch", "")
        )
    }

    /// The vector of the event being delivered, if the field holds one (bit 31 valid,
    /// vector in bits 7:0; the same layout on both vendors).
    fn delivering_vector(&self) -> Option<u8> {
        (self.delivering >> 31 & 1 != 0).then_some(self.delivering as u8)
    }

    /// Every page the failed delivery needed, through the guest's own tables: the code at
    /// RIP, the current stack's frame, and for the vector being delivered and for #DF the IDT
    /// entry and its handler. Ends with a verdict: whether the tables map them all.
    pub fn walk_delivery(&self, mem: &mut (impl GuestPhys + ?Sized)) -> String {
        let m = &self.mode;
        let paging = Paging::from(m);
        let long = paging.long_mode();
        // In 64-bit mode CS and SS bases are ignored (SDM Vol. 3A 3.4.4); in compatibility
        // mode (IA-32e with CS.L = 0) they count, though the IDT and the frame are IA-32e's.
        let (cs_base, ss_base) = if m.in_64bit_mode() { (0, 0) } else { (self.cs_base, self.ss_base) };
        let real = m.cr0 & CR0_PE == 0;
        // CPL is CS.RPL (SDM Vol. 3A 5.5).
        let user = self.cs & 3 == 3;
        let mut walk = Walk { paging, mem, parts: Vec::new(), all_mapped: true, followed: true, user };
        if self.nested_root != self.own_nested_root {
            walk.note(format!("the control block names nested tables at {:#x}, not the guest's own at {:#x}", self.nested_root, self.own_nested_root));
        }
        walk.linear("RIP", cs_base.wrapping_add(self.rip), Access::Fetch);
        // The stack pointer's width: RSP in IA-32e mode (aligned to 16 first), SP in real
        // mode (it wraps within its 64 KiB segment), ESP otherwise — a 16-bit protected-mode
        // stack (SS.B = 0) is walked as a 32-bit one.
        let (top, frame, sp_mask) = match (long, real) {
            (true, _) => (self.rsp & !0xf, LONG_FRAME, u64::MAX),
            (false, false) => (self.rsp, LEGACY_FRAME, 0xffff_ffff),
            (false, true) => (self.rsp, REAL_FRAME, 0xffff),
        };
        walk.linear("stack top", ss_base.wrapping_add(top.wrapping_sub(1) & sp_mask), Access::Write);
        walk.linear("stack frame", ss_base.wrapping_add(top.wrapping_sub(frame) & sp_mask), Access::Write);
        let mut vectors = Vec::new();
        vectors.extend(self.delivering_vector());
        if !vectors.contains(&DOUBLE_FAULT) {
            vectors.push(DOUBLE_FAULT);
        }
        for v in vectors {
            if real {
                // Real mode: a 4-byte offset:segment pair per vector (SDM Vol. 3A 21.1.4).
                walk.real_mode_vector(v, self.idt_base, self.idt_limit);
            } else {
                walk.gate(v, self.idt_base, self.idt_limit, long);
            }
        }
        let verdict = match (walk.all_mapped, walk.followed) {
            (false, _) => NOT_ALL_MAPPED,
            (true, false) => PARTLY_FOLLOWED,
            (true, true) => ALL_MAPPED,
        };
        // The walk starts from the saved state, so the state's caveat holds for it too.
        format!("{}; {verdict}{}", walk.parts.join("; "), self.caveat.map(|c| format!(" ({c})")).unwrap_or_default())
    }
}

/// How the delivery uses a page: the IDT is read, the frame written, code fetched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Fetch,
}

/// Why the access `a` (a supervisor one, or a user-mode fetch with `user`) is refused through
/// `entries`, if it is (SDM Vol. 3A 4.6.1): a write to a read-only page with CR0.WP = 1, a
/// fetch from an execute-disable page with EFER.NXE = 1, a supervisor fetch from a user page
/// with CR4.SMEP, a supervisor data access to a user page with CR4.SMAP (event delivery's
/// accesses are implicit supervisor accesses, which SMAP always checks), a user fetch from a
/// supervisor page. A page's R/W and U/S are those of every level together; PAE's four
/// PDPTEs outside long mode have neither.
fn refusal(paging: &Paging, entries: &[(u8, u64)], a: Access, user: bool) -> Option<&'static str> {
    let (wp, nxe) = (Cr0::WP.bits(), Efer::NXE.bits());
    let (smep, smap) = (Cr4::SMEP.bits(), Cr4::SMAP.bits());
    let rights = entries.iter().filter(|(level, _)| paging.long_mode() || *level != 3);
    let writable = rights.clone().all(|(_, e)| e & 2 != 0);
    let user_page = rights.clone().all(|(_, e)| e & 4 != 0);
    let no_exec = paging.efer & nxe != 0 && entries.iter().any(|(_, e)| e >> 63 != 0);
    match a {
        Access::Fetch if no_exec => Some("execute-disable"),
        Access::Fetch if user && !user_page => Some("a supervisor page fetched in user mode"),
        Access::Fetch if !user && user_page && paging.cr4 & smep != 0 => Some("a user page, fetched in supervisor mode with SMEP"),
        Access::Read | Access::Write if user_page && paging.cr4 & smap != 0 => Some("a user page, reached by the CPU with SMAP"),
        Access::Write if !writable && paging.cr0 & wp != 0 => Some("read-only with CR0.WP = 1"),
        _ => None,
    }
}

/// The entries' names by level (index 0 is the PML4E: level 4 modulo 4).
const LEVEL_NAMES: [&str; 4] = ["PML4E", "PTE", "PDE", "PDPTE"];

/// The bits of a present paging-structure entry that are reserved whatever the guest's
/// MAXPHYADDR, if any is set (SDM Vol. 3A 4.4.2, 4.5.4; a #PF with RSVD = 1 on any access
/// through it): XD (bit 63) while EFER.NXE = 0, PS in a PML4E, bits 29:13 of a 1-GiB PDPTE and
/// 20:13 of a 2-MiB PDE. Address bits above MAXPHYADDR are not checked (the walk does not know
/// the guest's); the RIP part shows the entries for that.
fn reserved_bits(paging: &Paging, level: u8, e: u64) -> Option<u64> {
    const XD: u64 = 1 << 63;
    const PS: u64 = 1 << 7;
    if e & 1 == 0 || paging.cr4 & Cr4::PAE.bits() == 0 {
        // Not present, or 32-bit paging (no XD bit, no such layout): nothing to say.
        return None;
    }
    let mut r = if paging.efer & Efer::NXE.bits() == 0 { e & XD } else { 0 };
    r |= match (level, e & PS != 0) {
        (4, _) => e & PS,
        (3, true) if paging.long_mode() => e & 0x3fff_e000,
        (2, true) => e & 0x1f_e000,
        _ => 0,
    };
    (r != 0).then_some(r)
}

/// The walk's findings so far.
struct Walk<'a, M: GuestPhys + ?Sized> {
    paging: Paging,
    mem: &'a mut M,
    parts: Vec<String>,
    all_mapped: bool,
    /// Every gate was one the walk follows (an interrupt or trap gate).
    followed: bool,
    /// The guest ran at CPL 3: its code at RIP is fetched in user mode.
    user: bool,
}

impl<M: GuestPhys + ?Sized> Walk<'_, M> {
    /// Guest-physical address of `linear` if it is mapped and RAM, noting the finding.
    fn linear(&mut self, what: &str, linear: u64, access: Access) -> Option<u64> {
        let mut entries = Vec::new();
        let gpa = self.paging.translate_noting(linear, self.mem, &mut |level, e| entries.push((level, e)));
        let ram = gpa.filter(|&g| self.mem.read(g, &mut [0u8]));
        let mut part = match (gpa, ram) {
            (Some(g), Some(_)) => format!("{what} {linear:#x} -> {g:#x}"),
            (Some(g), None) => format!("{what} {linear:#x} -> {g:#x}, not RAM"),
            (None, _) => format!("{what} {linear:#x} not mapped"),
        };
        // The code's translation is shown entry by entry (the rest share most of it).
        if what == "RIP" && !entries.is_empty() {
            let list: Vec<String> = entries.iter().map(|(_, e)| format!("{e:#x}")).collect();
            part += &format!(" (entries {})", list.join(" "));
        }
        let bad = entries.iter().find_map(|&(level, e)| reserved_bits(&self.paging, level, e).map(|r| (level, e, r)));
        if let Some((level, e, r)) = bad {
            part += &format!(", but its {} {e:#x} sets reserved bits {r:#x}", LEVEL_NAMES[level as usize & 3]);
        }
        // The code at RIP is fetched at the guest's CPL; everything else the delivery does
        // is the CPU's own (supervisor) access.
        let refused = gpa.and_then(|_| refusal(&self.paging, &entries, access, what == "RIP" && self.user));
        if let Some(why) = refused {
            part += &format!(", but the page is {why}");
        }
        self.parts.push(part);
        let ok = ram.is_some() && bad.is_none() && refused.is_none();
        self.all_mapped &= ok;
        ram.filter(|_| ok)
    }

    fn note(&mut self, text: String) {
        self.parts.push(text);
        self.all_mapped = false;
    }

    /// A protected- or long-mode gate (SDM Vol. 3A 6.11, 6.14.1): entry, present bit, and the
    /// handler it names. Outside long mode the handler's offset is relative to a code segment
    /// the report does not look up; it is walked as a flat address.
    fn gate(&mut self, vector: u8, base: u64, limit: u32, long: bool) {
        let size = if long { LONG_GATE } else { LEGACY_GATE };
        let offset = vector as u64 * size;
        if offset + size - 1 > limit as u64 {
            return self.note(format!("IDT[{vector}] past the limit {limit:#x}"));
        }
        let at = if long { base.wrapping_add(offset) } else { base.wrapping_add(offset) & 0xffff_ffff };
        if self.linear(&format!("IDT[{vector}]"), at, Access::Read).is_none() {
            return;
        }
        let mut raw = [0u8; 16];
        let paging = self.paging;
        let whole = paging.pieces(at, &mut raw[..size as usize]).all(|(linear, piece)| {
            paging.translate(linear, self.mem).is_some_and(|gpa| self.mem.read(gpa, piece))
        });
        if !whole {
            return self.note(format!("IDT[{vector}] runs into a page that is not mapped RAM"));
        }
        let low = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
        let high = u64::from_le_bytes(raw[8..].try_into().unwrap_or_default());
        if low >> 47 & 1 == 0 {
            return self.note(format!("IDT[{vector}] not present"));
        }
        // Type in bits 43:40 (SDM Vol. 3A 6.11, 6.14.1): 0xE interrupt and 0xF trap gates in
        // either mode (0x6/0x7 are their 16-bit forms), 0x5 a task gate outside IA-32e mode
        // only; anything else is #GP on delivery.
        match (low >> 40 & 0xf, long) {
            (0xe | 0xf, _) | (0x6 | 0x7, false) => {}
            (0x5, false) => {
                self.parts.push(format!("IDT[{vector}] is a task gate (not followed)"));
                self.followed = false;
                return;
            }
            (kind, _) => return self.note(format!("IDT[{vector}] has type {kind:#x}, not an interrupt or trap gate")),
        }
        // Offset 15:0 in bits 15:0, 31:16 in bits 63:48, and in long mode 63:32 in the next
        // 8 bytes; the IST index in bits 34:32 (long mode only).
        let mut handler = (low & 0xffff) + ((low >> 48) << 16);
        if long {
            handler += (high & 0xffff_ffff) << 32;
            let ist = low >> 32 & 7;
            if ist != 0 {
                self.parts.push(format!("IDT[{vector}] uses IST {ist} (not walked)"));
            }
        }
        self.linear(&format!("handler {vector}"), handler, Access::Fetch);
    }

    /// A real-mode vector: the IVT entry at `base + 4 * vector`, and its handler at
    /// segment * 16 + offset (SDM Vol. 3A 21.1.4). Paging is off: linear is physical.
    fn real_mode_vector(&mut self, vector: u8, base: u64, limit: u32) {
        // The IDTR limit holds in real mode too: an entry past it is #GP (SDM Vol. 3A 21.1.4).
        if 4 * vector as u64 + 3 > limit as u64 {
            return self.note(format!("IVT[{vector}] past the limit {limit:#x}"));
        }
        let at = base.wrapping_add(4 * vector as u64);
        let Some(gpa) = self.linear(&format!("IVT[{vector}]"), at, Access::Read) else { return };
        let mut raw = [0u8; 4];
        if !self.mem.read(gpa, &mut raw) {
            return self.note(format!("IVT[{vector}] unreadable"));
        }
        let (offset, segment) = (u16::from_le_bytes([raw[0], raw[1]]), u16::from_le_bytes([raw[2], raw[3]]));
        self.linear(&format!("handler {vector}"), ((segment as u64) << 4) + offset as u64, Access::Fetch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::guest_mem::tests::Mem;

    const PG: u64 = 1 << 31;
    const PAE: u64 = 1 << 5;
    const LMA: u64 = 1 << 10;
    const LME: u64 = 1 << 8;
    const P_RW: u64 = 0x3;

    /// A long-mode guest whose tables map the first 2 MiB 1:1 with 4 KiB pages, except the
    /// pages in `holes`; RAM is every page of `ram` (sparse: only what is touched).
    fn long_guest(holes: &[u64]) -> (FaultState, Mem) {
        let mut m = Mem::default();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 (SDM Vol. 3A 4.5).
        m.put_u64(0x1000, 0x2000 | P_RW);
        m.put_u64(0x2000, 0x3000 | P_RW);
        m.put_u64(0x3000, 0x4000 | P_RW);
        for page in 0..512u64 {
            let present = if holes.contains(&(page << 12)) { 0 } else { P_RW };
            m.put_u64(0x4000 + 8 * page, page << 12 | present);
        }
        // RAM behind what the report reads: code, stack, IDT, handlers.
        for gpa in [0x12bdc, 0x7fff, 0x7fd0, 0x9000, 0x10000, 0x11000] {
            m.put(gpa, &[0x90]);
        }
        // Gates (16 bytes each) at IDT 0x9000: #DF -> 0x10000 (IST 1), #PF -> 0x11000.
        let gate = |handler: u64, ist: u64| (handler & 0xffff) | 8 << 16 | ist << 32 | 0x8e << 40 | (handler >> 16 & 0xffff) << 48;
        m.put_u64(0x9000 + 16 * 8, gate(0x10000, 1));
        m.put_u64(0x9000 + 16 * 8 + 8, 0);
        m.put_u64(0x9000 + 16 * 14, gate(0x11000, 0));
        m.put_u64(0x9000 + 16 * 14 + 8, 0);
        let st = FaultState {
            rip: 0x12bdc,
            rsp: 0x8008,
            mode: ModeView { cr0: PG | CR0_PE, cr3: 0x1000, cr4: PAE, efer: LMA | LME, cs_l: true },
            idt_base: 0x9000,
            idt_limit: 0xfff,
            // EXITINTINFO / IDT-vectoring: valid, hardware exception, error code, vector 14.
            delivering: 1 << 31 | 1 << 11 | 3 << 8 | 14,
            ..FaultState::default()
        };
        (st, m)
    }

    #[test]
    fn a_delivery_whose_pages_are_all_mapped_says_so_and_names_each_address() {
        let (st, mut m) = long_guest(&[]);
        let r = st.walk_delivery(&mut m);
        assert!(r.ends_with(ALL_MAPPED), "{r}");
        // Long mode aligns RSP to 16 before pushing the 48-byte frame (SDM Vol. 3A 6.14.2).
        for part in ["RIP 0x12bdc -> 0x12bdc", "stack top 0x7fff -> 0x7fff", "stack frame 0x7fd0 -> 0x7fd0"] {
            assert!(r.contains(part), "{part} in {r}");
        }
        // The vector being delivered first, then #DF, each gate and its handler.
        let pf = r.find("IDT[14] 0x90e0 -> 0x90e0; handler 14 0x11000 -> 0x11000").expect(&r);
        let df = r.find("IDT[8] 0x9080 -> 0x9080; IDT[8] uses IST 1 (not walked); handler 8 0x10000 -> 0x10000").expect(&r);
        assert!(pf < df, "{r}");
    }

    #[test]
    fn an_unmapped_page_anywhere_in_the_delivery_is_named_and_changes_the_verdict() {
        for (hole, part) in [
            (0x12000, "RIP 0x12bdc not mapped"),
            (0x7000, "stack frame 0x7fd0 not mapped"),
            (0x9000, "IDT[14] 0x90e0 not mapped"),
            (0x11000, "handler 14 0x11000 not mapped"),
            (0x10000, "handler 8 0x10000 not mapped"),
        ] {
            let (st, mut m) = long_guest(&[hole]);
            let r = st.walk_delivery(&mut m);
            assert!(r.contains(part), "{part} in {r}");
            assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
        }
    }

    #[test]
    fn mapped_but_not_ram_is_not_mapped_memory() {
        let (st, mut m) = long_guest(&[]);
        m.0.remove(&0x11000);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("handler 14 0x11000 -> 0x11000, not RAM"), "{r}");
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
    }

    #[test]
    fn gates_past_the_idt_limit_or_not_present_are_named() {
        // A long-mode gate is 16 bytes: vector 14 needs a limit of at least 14 * 16 + 15.
        let (mut st, mut m) = long_guest(&[]);
        st.idt_limit = 14 * 16 + 14;
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IDT[14] past the limit 0xee"), "{r}");
        assert!(!r.contains("IDT[8] past"), "#DF is inside it: {r}");
        st.idt_limit = 14 * 16 + 15;
        assert!(!st.walk_delivery(&mut m).contains("past the limit"));
        // Present is bit 47 of the gate (SDM Vol. 3A Figure 6-8).
        let low = m.read_u64(0x9000 + 16 * 14).unwrap();
        m.put_u64(0x9000 + 16 * 14, low & !(1 << 47));
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IDT[14] not present"), "{r}");
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
    }

    #[test]
    fn a_gate_that_runs_into_an_unmapped_page_is_named() {
        // IDT base 0x8f78: #DF's 16 bytes at 0x8ff8 reach into page 0x9000.
        let (mut st, mut m) = long_guest(&[0x9000]);
        m.put(0x8ff8, &[0; 8]);
        st.idt_base = 0x8f78;
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IDT[8] 0x8ff8 -> 0x8ff8; IDT[8] runs into a page that is not mapped RAM"), "{r}");
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
    }

    #[test]
    fn a_long_mode_handler_takes_all_64_bits_of_its_offset() {
        let (st, mut m) = long_guest(&[]);
        // Offset 63:32 in the gate's second 8 bytes (SDM Vol. 3A Figure 6-8).
        m.put_u64(0x9000 + 16 * 14 + 8, 0xffff_8000);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("handler 14 0xffff800000011000 not mapped"), "{r}");
    }

    #[test]
    fn without_an_event_being_delivered_only_the_double_fault_gate_is_walked() {
        let (mut st, mut m) = long_guest(&[]);
        st.delivering = 14; // valid bit (31) clear: the field means nothing
        let r = st.walk_delivery(&mut m);
        assert!(!r.contains("IDT[14]") && r.contains("IDT[8]"), "{r}");
        // A #DF being delivered is walked once.
        st.delivering = 1 << 31 | 3 << 8 | 8;
        assert_eq!(st.walk_delivery(&mut m).matches("IDT[8] 0x").count(), 1);
    }

    #[test]
    fn nested_tables_other_than_the_guests_own_are_named_and_change_the_verdict() {
        // The CPU walks the guest's tables through the nested tables the VMCB (N_CR3, APM
        // Vol. 2 15.25) or VMCS (EPTP, SDM Vol. 3C 25.6.11) names; the walk reads through
        // the guest's own, so it holds only if they are the same.
        let (mut st, mut m) = long_guest(&[]);
        st.own_nested_root = 0x20_0000;
        st.nested_root = 0x20_0000;
        assert!(st.walk_delivery(&mut m).ends_with(ALL_MAPPED));
        st.nested_root = 0x30_0000;
        let r = st.walk_delivery(&mut m);
        assert!(r.starts_with("the control block names nested tables at 0x300000, not the guest's own at 0x200000; RIP 0x12bdc -> 0x12bdc"), "{r}");
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
    }

    #[test]
    fn the_codes_translation_is_shown_entry_by_entry() {
        let (st, mut m) = long_guest(&[]);
        let r = st.walk_delivery(&mut m);
        assert!(r.starts_with("RIP 0x12bdc -> 0x12bdc (entries 0x2003 0x3003 0x4003 0x12003); stack top"), "{r}");
        // Only the code's: the other parts share most of its entries.
        assert_eq!(r.matches("(entries").count(), 1, "{r}");
    }

    #[test]
    fn an_entry_with_reserved_bits_set_faults_every_access_through_it() {
        // SDM Vol. 3A 4.5.4: a present entry with a reserved bit set is a #PF (RSVD = 1) for
        // any access through it, though it names a page. The walk says so and changes the
        // verdict; the same entries are fine where the bits are not reserved.
        const XD: u64 = 1 << 63;
        const NXE: u64 = 1 << 11;
        const PS: u64 = 1 << 7;
        for (at, entry, nxe, found) in [
            // XD while EFER.NXE = 0, in the PDE; with NXE = 1 it is the execute-disable bit.
            (0x3000, 0x4000 | P_RW | XD, false, Some("its PDE 0x8000000000004003 sets reserved bits 0x8000000000000000")),
            (0x4000 + 8 * 7, 0x7000 | P_RW | XD, true, None),
            // PS in a PML4E.
            (0x1000, 0x2000 | P_RW | PS, false, Some("its PML4E 0x2083 sets reserved bits 0x80")),
            // A 2-MiB page with bit 13 set (bits 20:13 reserved; bit 12 is PAT).
            (0x3000, P_RW | PS | 1 << 13, false, Some("its PDE 0x2083 sets reserved bits 0x2000")),
            (0x3000, P_RW | PS | 1 << 12, false, None),
            (0x3000, P_RW | PS | 1 << 20, false, Some("its PDE 0x100083 sets reserved bits 0x100000")),
            // A 1-GiB page with bit 13 or 29 set (bits 29:13 reserved).
            (0x2000, P_RW | PS | 1 << 13, false, Some("its PDPTE 0x2083 sets reserved bits 0x2000")),
            (0x2000, P_RW | PS | 1 << 29, false, Some("its PDPTE 0x20000083 sets reserved bits 0x20000000")),
            (0x2000, P_RW | PS | 1 << 12, false, None),
            // A PTE's bit 7 is PAT, not PS.
            (0x4000 + 8 * 0x12, 0x12000 | P_RW | PS, false, None),
        ] {
            let (mut st, mut m) = long_guest(&[]);
            if nxe {
                st.mode.efer |= NXE;
            }
            m.put_u64(at, entry);
            let r = st.walk_delivery(&mut m);
            match found {
                Some(text) => {
                    assert!(r.contains(&format!("RIP 0x12bdc -> 0x12bdc")) && r.contains(text), "{entry:#x}: {r}");
                    assert!(r.ends_with(NOT_ALL_MAPPED), "{entry:#x}: {r}");
                    // Without NXE the bit is reserved, not execute-disable.
                    assert!(!r.contains("execute-disable"), "{entry:#x}: {r}");
                }
                None => assert!(r.ends_with(ALL_MAPPED) && !r.contains("reserved"), "{entry:#x}: {r}"),
            }
        }
        // A not-present entry's other bits are the OS's to use (SDM Vol. 3A 4.5.4): not
        // reserved, only not mapped.
        let (st, mut m) = long_guest(&[]);
        m.put_u64(0x3000, 0x4000 | 2 | XD | PS | 1 << 13);
        let r = st.walk_delivery(&mut m);
        assert!(r.starts_with("RIP 0x12bdc not mapped") && !r.contains("reserved"), "{r}");
        // PAE paging outside long mode: XD without NXE is reserved there too, and a 2-MiB PDE
        // has the same reserved bits (SDM Vol. 3A 4.4.2).
        let (mut st, mut m) = long_guest(&[]);
        st.mode.efer = 0;
        st.mode.cs_l = false;
        st.mode.cr3 = 0x5000;
        m.put_u64(0x5000, 0x3000 | 1 | XD);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("its PDPTE 0x8000000000003001 sets reserved bits 0x8000000000000000"), "{r}");
        m.put_u64(0x5000, 0x3001);
        m.put_u64(0x3000, P_RW | PS | 1 << 14);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("its PDE 0x4083 sets reserved bits 0x4000"), "{r}");
        // …but a PDPTE's bit 7 there is not a 1-GiB page: nothing said of it.
        m.put_u64(0x3000, 0x4003);
        m.put_u64(0x5000, 0x3001 | PS | 1 << 13);
        let r = st.walk_delivery(&mut m);
        assert!(!r.contains("reserved"), "{r}");
    }

    #[test]
    fn each_access_of_the_delivery_must_be_allowed_by_the_pages_rights() {
        // SDM Vol. 3A 4.6.1. Pages of long_guest: code 0x12000, stack 0x7000, IDT 0x9000,
        // handlers 0x10000/0x11000. Each case gives one page's PTE bits, the controls added
        // to CR0, CR4 and EFER, CS (0x10: CPL 0, 0x2b: CPL 3), whether the upper levels are
        // user, and what the walk must say.
        const WP: u64 = 1 << 16;
        const NXE: u64 = 1 << 11;
        const SMEP: u64 = 1 << 20;
        const SMAP: u64 = 1 << 21;
        const US: u64 = 4;
        const XD: u64 = 1 << 63;
        let pte = |page: u64| 0x4000 + 8 * (page >> 12);
        let user_all = |m: &mut Mem| {
            for at in [0x1000, 0x2000, 0x3000] {
                m.put_u64(at, (at + 0x1000) | P_RW | US);
            }
        };
        type Case = (u64, u64, u64, u64, u64, u16, bool, Option<&'static str>);
        let cases: [Case; 12] = [
            (0x7000, 1, WP, 0, 0, 0x10, false, Some("stack top 0x7fff -> 0x7fff, but the page is read-only with CR0.WP = 1")),
            (0x7000, 1, 0, 0, 0, 0x10, false, None),
            (0x9000, 1, WP, 0, 0, 0x10, false, None),
            (0x12000, P_RW | XD, 0, 0, NXE, 0x10, false, Some("RIP 0x12bdc -> 0x12bdc (entries 0x2003 0x3003 0x4003 0x8000000000012003), but the page is execute-disable")),
            (0x11000, P_RW | XD, 0, 0, NXE, 0x10, false, Some("handler 14 0x11000 -> 0x11000, but the page is execute-disable")),
            (0x9000, P_RW | XD, 0, 0, NXE, 0x10, false, None),
            (0x12000, P_RW | US, 0, SMEP, 0, 0x10, true, Some("RIP 0x12bdc -> 0x12bdc (entries 0x2007 0x3007 0x4007 0x12007), but the page is a user page, fetched in supervisor mode with SMEP")),
            (0x12000, P_RW | US, 0, 0, 0, 0x10, true, None),
            (0x9000, P_RW | US, 0, SMAP, 0, 0x2b, true, Some("IDT[14] 0x90e0 -> 0x90e0, but the page is a user page, reached by the CPU with SMAP")),
            (0x7000, P_RW | US, 0, SMAP, 0, 0x10, true, Some("stack frame 0x7fd0 -> 0x7fd0, but the page is a user page, reached by the CPU with SMAP")),
            // User-mode code needs U/S at every level; the upper levels here are supervisor.
            (0x12000, P_RW | US, 0, 0, 0, 0x2b, false, Some("RIP 0x12bdc -> 0x12bdc (entries 0x2003 0x3003 0x4003 0x12007), but the page is a supervisor page fetched in user mode")),
            (0x12000, P_RW | US, 0, 0, 0, 0x2b, true, None),
        ];
        for (page, bits, cr0, cr4, efer, cs, user, said) in cases {
            let (mut st, mut m) = long_guest(&[]);
            if user {
                user_all(&mut m);
            }
            m.put_u64(pte(page), page | bits);
            st.mode.cr0 |= cr0;
            st.mode.cr4 |= cr4;
            st.mode.efer |= efer;
            st.cs = cs;
            let r = st.walk_delivery(&mut m);
            match said {
                Some(text) => assert!(r.contains(&format!("{text};")) && r.ends_with(NOT_ALL_MAPPED), "{page:#x} {bits:#x}: {r}"),
                None => assert!(r.ends_with(ALL_MAPPED) && !r.contains(", but"), "{page:#x} {bits:#x}: {r}"),
            }
        }
        // In long mode the PDPTE's R/W counts like every other level's.
        let (mut st, mut m) = long_guest(&[]);
        st.mode.cr0 |= WP;
        m.put_u64(0x2000, 0x3001);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("stack top 0x7fff -> 0x7fff, but the page is read-only with CR0.WP = 1;"), "{r}");
        // Only the code at RIP is fetched at CPL 3: the handlers are the CPU's, in supervisor
        // mode, and need no U/S.
        let (mut st, mut m) = long_guest(&[]);
        user_all(&mut m);
        m.put_u64(pte(0x12000), 0x12000 | P_RW | US);
        st.cs = 0x2b;
        assert!(st.walk_delivery(&mut m).ends_with(ALL_MAPPED));
        // PAE's PDPTEs outside long mode have no R/W or U/S bits: the rest decide.
        let (mut st, mut m) = long_guest(&[]);
        st.mode.efer = 0;
        st.mode.cs_l = false;
        st.mode.cr3 = 0x5000;
        st.mode.cr0 |= WP;
        m.put_u64(0x5000, 0x3001);
        m.put(0x8007, &[0]);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("stack top 0x8007 -> 0x8007; "), "{r}");
        // A user page there: the PDE and PTE say so, the PDPTE cannot.
        user_all(&mut m);
        m.put_u64(0x5000, 0x3001);
        m.put_u64(pte(0x8000), 0x8000 | P_RW | US);
        st.mode.cr4 |= SMAP;
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("stack top 0x8007 -> 0x8007, but the page is a user page, reached by the CPU with SMAP; "), "{r}");
    }

    #[test]
    fn thirty_two_bit_paging_has_no_such_reserved_bits() {
        // 32-bit paging with CR4.PSE: a 4-MiB PDE's bits 20:13 are address bits 39:32
        // (PSE-36), and entries have no XD bit (SDM Vol. 3A 4.3).
        let (mut st, mut m) = legacy_guest();
        st.mode.cr4 = 1 << 4;
        m.put_u32(0x1000, (P_RW | 1 << 7) as u32 | 1 << 13);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("RIP 0x5100 -> 0x100005100") && !r.contains("reserved"), "{r}");
    }

    /// A 32-bit protected-mode guest: 4 MiB mapped 1:1, IDT at 0x9000 with 8-byte gates for
    /// #DF (-> 0x30000) and #GP (-> 0x31000), CS and SS based at 0x5000, delivering #GP.
    fn legacy_guest() -> (FaultState, Mem) {
        let mut m = Mem::default();
        // 32-bit paging: PD at 0x1000, PDE[0] -> PT 0x2000 mapping 4 MiB 1:1 (SDM Vol. 3A 4.3).
        m.put_u32(0x1000, 0x2000 | P_RW as u32);
        for page in 0..1024u32 {
            m.put_u32(0x2000 + 4 * page as u64, page << 12 | P_RW as u32);
        }
        for gpa in [0x5100, 0x6fff, 0x6ff0, 0x9000, 0x30000, 0x31000] {
            m.put(gpa, &[0x90]);
        }
        let gate = |handler: u64| (handler & 0xffff) | 8 << 16 | 0x8e << 40 | (handler >> 16) << 48;
        m.put_u64(0x9000 + 8 * 8, gate(0x30000));
        m.put_u64(0x9000 + 8 * 13, gate(0x31000));
        let st = FaultState {
            rip: 0x100,
            cs_base: 0x5000,
            rsp: 0x2000,
            ss_base: 0x5000,
            mode: ModeView { cr0: PG | CR0_PE, cr3: 0x1000, ..ModeView::default() },
            idt_base: 0x9000,
            idt_limit: 8 * 14 - 1,
            delivering: 1 << 31 | 1 << 11 | 3 << 8 | 13,
            ..FaultState::default()
        };
        (st, m)
    }

    #[test]
    fn legacy_protected_mode_gates_are_8_bytes_and_segments_add_their_bases() {
        let (st, mut m) = legacy_guest();
        let r = st.walk_delivery(&mut m);
        for part in [
            "RIP 0x5100 -> 0x5100",
            "stack top 0x6fff",
            // EFLAGS, CS, EIP and an error code: 16 bytes (SDM Vol. 3A Figure 6-4).
            "stack frame 0x6ff0 -> 0x6ff0",
            "IDT[13] 0x9068 -> 0x9068; handler 13 0x31000 -> 0x31000",
            "IDT[8] 0x9040 -> 0x9040; handler 8 0x30000 -> 0x30000",
        ] {
            assert!(r.contains(part), "{part} in {r}");
        }
        assert!(r.ends_with(ALL_MAPPED), "{r}");
        // An 8-byte gate: vector 13 fits a limit of 13 * 8 + 7, not one less.
        let r = FaultState { idt_limit: 13 * 8 + 6, ..st }.walk_delivery(&mut m);
        assert!(r.contains("IDT[13] past the limit"), "{r}");
    }

    #[test]
    fn real_mode_vectors_are_offset_segment_pairs_of_4_bytes() {
        let mut m = Mem::default();
        // IVT at 0: vector 8 at 0x20 -> F000:FEA5, vector 13 at 0x34 -> 0070:0010.
        m.put(0x20, &[0xa5, 0xfe, 0x00, 0xf0]);
        m.put(0x34, &[0x10, 0x00, 0x70, 0x00]);
        for gpa in [0xf_fea5, 0x710, 0x7c00, 0x10ffe, 0x10ff9] {
            m.put(gpa, &[0]);
        }
        let st = FaultState {
            rip: 0x7c00,
            rsp: 0xfff,
            ss_base: 0x10000,
            idt_limit: 0x3ff,
            delivering: 1 << 31 | 3 << 8 | 13,
            ..FaultState::default()
        };
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IVT[13] 0x34 -> 0x34; handler 13 0x710 -> 0x710"), "{r}");
        assert!(r.contains("IVT[8] 0x20 -> 0x20; handler 8 0xffea5 -> 0xffea5"), "{r}");
        assert!(r.ends_with(ALL_MAPPED), "{r}");
        // SP wraps within its segment: SP = 4 pushes FLAGS, CS, IP down to 0xfffe.
        let r = FaultState { rsp: 4, ..st }.walk_delivery(&mut m);
        assert!(r.contains("stack top 0x10003") && r.contains("stack frame 0x1fffe"), "{r}");
        // The limit holds in real mode too: vector 13's entry ends at byte 55.
        let r = FaultState { idt_limit: 54, ..st }.walk_delivery(&mut m);
        assert!(r.contains("IVT[13] past the limit 0x36") && r.contains("IVT[8] 0x20"), "{r}");
        assert!(FaultState { idt_limit: 55, ..st }.walk_delivery(&mut m).ends_with(ALL_MAPPED));
        // A base near the top of the address space wraps instead of overflowing.
        let r = FaultState { idt_base: u64::MAX - 0xf, ..st }.walk_delivery(&mut m);
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
    }

    #[test]
    fn compatibility_mode_adds_the_code_segment_base_but_keeps_ia32e_gates() {
        // IA-32e mode with CS.L = 0: CS base counts (SDM Vol. 3A 3.4.4), the IDT still holds
        // 16-byte gates and the frame is still aligned to 16 (6.14).
        let (mut st, mut m) = long_guest(&[]);
        st.mode.cs_l = false;
        st.cs_base = 0x10000;
        st.rip = 0x2bdc;
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("RIP 0x12bdc -> 0x12bdc"), "{r}");
        assert!(r.contains("stack frame 0x7fd0") && r.contains("IDT[14] 0x90e0"), "{r}");
    }

    #[test]
    fn gates_must_be_interrupt_or_trap_gates_and_task_gates_are_named() {
        let (st, mut m) = long_guest(&[]);
        // Type 0xC (a call gate), present: #GP on delivery in IA-32e mode (SDM Vol. 3A 6.14.1).
        let low = m.read_u64(0x9000 + 16 * 14).unwrap();
        m.put_u64(0x9000 + 16 * 14, (low & !(0xf << 40)) | 0xc << 40);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IDT[14] has type 0xc, not an interrupt or trap gate"), "{r}");
        assert!(r.ends_with(NOT_ALL_MAPPED), "{r}");
        // A trap gate (0xF) is followed like an interrupt gate.
        m.put_u64(0x9000 + 16 * 14, low | 0x1 << 40);
        assert!(st.walk_delivery(&mut m).ends_with(ALL_MAPPED));
        // A task gate (type 5) outside IA-32e mode is named, not followed; inside it is #GP.
        m.put_u64(0x9000 + 16 * 14, (low & !(0xf << 40)) | 0x5 << 40);
        assert!(st.walk_delivery(&mut m).contains("IDT[14] has type 0x5"));
    }

    #[test]
    fn a_32_bit_task_gate_is_named_not_followed() {
        let (st, mut m) = legacy_guest();
        let low = m.read_u64(0x9000 + 8 * 8).unwrap();
        m.put_u64(0x9000 + 8 * 8, (low & !(0xf << 40)) | 0x5 << 40);
        let r = st.walk_delivery(&mut m);
        assert!(r.contains("IDT[8] is a task gate (not followed)") && !r.contains("handler 8"), "{r}");
        assert!(r.ends_with(PARTLY_FOLLOWED), "{r}");
    }

    #[test]
    fn the_report_line_names_every_register_and_both_events() {
        let (mut st, _) = long_guest(&[]);
        st.cs = 0x10;
        st.rflags = 0x2;
        assert_eq!(
            st.describe(),
            "RIP 0x12bdc RSP 0x8008 RFLAGS 0x2 CS 0x10 CR0 0x80000001 CR2 0x0 CR3 0x1000 CR4 0x20 EFER 0x500 IDT 0x9000/0xfff; delivering exception 14 with an error code 0x0 (not present, read, supervisor); injected at entry none"
        );
        st.caveat = Some("undefined");
        assert!(st.describe().ends_with("injected at entry none (undefined)"));
    }

    #[test]
    fn a_page_faults_error_code_and_cr2_are_spelled_out() {
        // #PF error code bits (SDM Vol. 3A 4.7): 0 P, 1 W/R, 2 U/S, 3 RSVD, 4 I/D.
        let (mut st, _) = long_guest(&[]);
        st.cr2 = 0x12bdc;
        for (code, words) in [
            (0x1, "0x1 (protection, read, supervisor)"),
            (0x2, "0x2 (not present, write, supervisor)"),
            (0x4, "0x4 (not present, read, user)"),
            (0x9, "0x9 (protection, read, supervisor, reserved bit set)"),
            (0x10, "0x10 (not present, read, supervisor, instruction fetch)"),
        ] {
            st.delivering_error = code;
            let d = st.describe();
            assert!(d.contains(&format!("CR2 0x12bdc CR3 0x1000 ")), "{d}");
            assert!(d.contains(&format!("delivering exception 14 with an error code {words};")), "{d}");
        }
        // Another vector's code is given as a number; none without bit 11 or bit 31.
        st.delivering = 1 << 31 | 1 << 11 | 3 << 8 | 13;
        st.delivering_error = 0x18;
        assert!(st.describe().contains("exception 13 with an error code 0x18;"), "{}", st.describe());
        st.delivering = 1 << 31 | 3 << 8 | 14;
        assert!(st.describe().contains("delivering exception 14; injected"), "{}", st.describe());
        st.delivering = 1 << 11 | 3 << 8 | 14;
        assert!(st.describe().contains("delivering none; injected"), "{}", st.describe());
    }

    #[test]
    fn the_walk_carries_the_caveat_of_the_state_it_starts_from() {
        // After an SVM SHUTDOWN intercept the saved state is undefined (APM Vol. 2, the SHUTDOWN intercept): a
        // walk from it is worth no more than the state, and its line says so on its own.
        let (mut st, mut m) = long_guest(&[]);
        st.caveat = Some("undefined");
        let r = st.walk_delivery(&mut m);
        assert!(r.ends_with(&format!("{ALL_MAPPED} (undefined)")), "{r}");
    }
}
