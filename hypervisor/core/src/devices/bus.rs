//! The device bus: port-I/O and MMIO address ranges, each claimed by one device behind its own lock.
//!
//! A guest's devices are found by address, not by a hand-written `match`: each device claims
//! one or more ranges `(base, len)` in one of two independent spaces — [`Space::Port`], the
//! 64 KiB I/O space of IN/OUT (SDM Vol. 1 19.2 "I/O Port Addressing"), and [`Space::Mmio`], the
//! guest-physical address space reached through EPT violations / NPT faults. The idea comes from
//! Firecracker's `devices/bus.rs` (and crosvm before it); the code is Bastion's own.
//!
//! # Rules
//!
//! - **Registration** refuses a zero length, a range running past the end of its space (port
//!   0xFFFF is the last port; the MMIO space ends at 2^64), and any overlap with a range
//!   already in the same space — with a [`BusError`] naming both ranges, so a configuration
//!   mistake reads as "0x3f8+8 overlaps 0x3f8+1 already registered". Ranges that merely touch
//!   (one ends where the next begins) are fine.
//! - **Lookup** of an address is a binary search over the space's ranges, kept sorted by base
//!   in a `Vec` (registration happens while building a guest; lookups happen on every exit).
//!   It returns the device and the offset of the address inside its range: a device never
//!   knows where it was placed, so the same model can sit at COM1 and COM2.
//! - **Accesses** ([`Bus::read`], [`Bus::write`]) are split at range boundaries: every byte
//!   goes to the device whose range holds it. Bytes no range holds are *unclaimed*: reads of
//!   them give all ones and writes to them are dropped. That is what a PC does — an I/O or
//!   memory read that no device decodes sees the bus floating high (the data lines are pulled
//!   up), and nothing latches a write nobody decodes — and what `vm::devices` already did for
//!   ports one byte at a time. An access straddling the end of a range therefore reaches the
//!   device with only the bytes inside it (at the right offset) and the rest floats; an access
//!   running past the end of the space (a word at port 0xFFFF) has its tail unclaimed. The
//!   return values say whether any byte was claimed, so a caller can still treat a complete
//!   miss differently (e.g. stop a guest that touches MMIO where nothing is).
//!
//! # Locking
//!
//! Each device sits in its own `Arc<spin::Mutex<…>>` ([`DeviceHandle`]): two vCPUs touching
//! different devices never contend, and the bus itself is only read while the guest runs, so
//! it can be shared without a lock of its own (it is `Send + Sync`). An access that spans two
//! devices locks them one after the other, never both at once, so no lock order exists to get
//! wrong. A device must not call back into the bus from `read`/`write` (the spin lock is not
//! re-entrant); device models here never call out anyway.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;


/// What a device write asks of the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    Done,
    /// The guest wrote to the test-exit port.
    TestExit(u32),
    /// The guest reset the machine (the keyboard controller's reset line).
    Reset,
    /// The guest turned the machine off (ACPI sleep state S5 through PM1_CNT).
    PowerOff,
}

/// A device model as the bus sees it: registers at offsets from the base of its range.
///
/// `data.len()` is the access size (1, 2, 4 or 8 for ordinary instructions; an access split at
/// a range boundary can give any smaller length). Multi-byte values are little-endian, as on
/// x86. Offsets are relative to the range the access hit, so a device registered over several
/// ranges sees the same offsets in each.
pub trait BusDevice {
    /// Fills `data` with the bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Stores `data` at `offset`; the answer says whether the run loop must act (e.g. the
    /// test-exit port stopping the guest).
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome;
}

/// A device on the bus: shared by every range it claims, locked for each access.
pub type DeviceHandle = Arc<Mutex<dyn BusDevice + Send>>;

/// Wraps a device model for the bus.
pub fn handle<D: BusDevice + Send + 'static>(device: D) -> DeviceHandle {
    Arc::new(Mutex::new(device))
}

/// The two address spaces of an x86 machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// I/O ports 0..=0xFFFF (SDM Vol. 1 19.2).
    Port,
    /// Guest-physical memory, 0..2^64.
    Mmio,
}

impl Space {
    /// One past the last address of the space.
    fn end(self) -> u128 {
        match self {
            Space::Port => 1 << 16,
            Space::Mmio => 1 << 64,
        }
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Port => "port",
            Space::Mmio => "MMIO",
        })
    }
}

/// An address range `[base, base + len)`; `len` is never 0 for a registered range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub base: u64,
    pub len: u64,
}

impl Range {
    /// One past the last address, as u128 so a range ending at 2^64 is representable.
    fn end(&self) -> u128 {
        self.base as u128 + self.len as u128
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && (addr as u128) < self.end()
    }

    fn overlaps(&self, other: &Range) -> bool {
        (self.base as u128) < other.end() && (other.base as u128) < self.end()
    }
}

impl fmt::Display for Range {
    /// `0x3f8+8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.base, self.len)
    }
}

/// Why a range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// A range of zero bytes claims nothing and would make lookups ambiguous.
    ZeroLength { space: Space, base: u64 },
    /// The range runs past the last address of its space.
    OutOfSpace { space: Space, range: Range },
    /// The range shares at least one address with a registered one.
    Overlap { space: Space, range: Range, existing: Range },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::ZeroLength { space, base } => write!(f, "{space} range at {base:#x} has zero length"),
            BusError::OutOfSpace { space, range } => write!(f, "{space} range {range} runs past the end of the {space} space"),
            BusError::Overlap { space, range, existing } => {
                write!(f, "{space} range {range} overlaps {existing} already registered")
            }
        }
    }
}

/// The device at an address: which one, the range it claimed, and where in it the address is.
#[derive(Clone)]
pub struct Hit<'a> {
    pub device: &'a DeviceHandle,
    pub range: Range,
    pub offset: u64,
}

impl fmt::Debug for Hit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hit").field("range", &self.range).field("offset", &self.offset).finish_non_exhaustive()
    }
}

struct Entry {
    range: Range,
    device: DeviceHandle,
}

/// The port and MMIO ranges of one guest.
#[derive(Default)]
pub struct Bus {
    /// Sorted by base, never overlapping.
    port: Vec<Entry>,
    mmio: Vec<Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &Vec<Entry>| v.iter().map(|e| e.range).collect::<Vec<_>>();
        f.debug_struct("Bus").field("port", &list(&self.port)).field("mmio", &list(&self.mmio)).finish()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    fn entries(&self, space: Space) -> &Vec<Entry> {
        match space {
            Space::Port => &self.port,
            Space::Mmio => &self.mmio,
        }
    }

    fn entries_mut(&mut self, space: Space) -> &mut Vec<Entry> {
        match space {
            Space::Port => &mut self.port,
            Space::Mmio => &mut self.mmio,
        }
    }

    /// Index of the first entry whose base is above `addr` (so the candidate holding `addr`,
    /// if any, is the one before it).
    fn upper(&self, space: Space, addr: u64) -> usize {
        self.entries(space).partition_point(|e| e.range.base <= addr)
    }

    /// Claims `[base, base + len)` in `space` for `device`. The same device may claim several
    /// ranges (a PIC pair at 0x20 and 0xA0).
    pub fn insert(&mut self, space: Space, base: u64, len: u64, device: DeviceHandle) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { space, base });
        }
        let range = Range { base, len };
        if range.end() > space.end() {
            return Err(BusError::OutOfSpace { space, range });
        }
        // Ranges are sorted and disjoint, so only the neighbours around the insertion point
        // can overlap the new one: the last one starting at or below `base` (it may run
        // into the new range), and the first one starting above it.
        let at = self.upper(space, base);
        let v = self.entries(space);
        for e in v[at.saturating_sub(1)..v.len().min(at + 1)].iter() {
            if e.range.overlaps(&range) {
                return Err(BusError::Overlap { space, range, existing: e.range });
            }
        }
        self.entries_mut(space).insert(at, Entry { range, device });
        Ok(())
    }

    /// Gives up the range that starts exactly at `base`; returns its device (still shared by
    /// any other range it claims), or `None` if no range starts there.
    pub fn remove(&mut self, space: Space, base: u64) -> Option<DeviceHandle> {
        let v = self.entries_mut(space);
        let i = v.binary_search_by_key(&base, |e| e.range.base).ok()?;
        Some(v.remove(i).device)
    }

    /// The device holding `addr`, with the offset of `addr` in its range.
    pub fn lookup(&self, space: Space, addr: u64) -> Option<Hit<'_>> {
        let i = self.upper(space, addr).checked_sub(1)?;
        let e = &self.entries(space)[i];
        e.range.contains(addr).then(|| Hit { device: &e.device, range: e.range, offset: addr - e.range.base })
    }

    /// The registered ranges of `space`, lowest first.
    pub fn ranges(&self, space: Space) -> impl Iterator<Item = Range> + '_ {
        self.entries(space).iter().map(|e| e.range)
    }

    /// Splits an access of `len` bytes at `addr` into pieces that each lie in one range or in
    /// none, and calls `f(piece start in the access, piece length, hit)` for each.
    fn split(&self, space: Space, addr: u64, len: usize, mut f: impl FnMut(usize, usize, Option<Hit<'_>>)) {
        let (start, end) = (addr as u128, addr as u128 + len as u128);
        let mut at = start;
        while at < end {
            // Each piece ends at the end of the range holding `at`, at the start of the next
            // range, or at the end of the space, whichever comes first (and at the end of the
            // access): `at` moves to that end.
            let (piece_end, hit) = if at >= space.end() {
                // Past the last address of the space: unclaimed.
                (end, None)
            } else {
                match self.lookup(space, at as u64) {
                    Some(hit) => (hit.range.end().min(end), Some(hit)),
                    // Unclaimed up to the next range (or the end of the space).
                    None => {
                        let next = self.entries(space).get(self.upper(space, at as u64));
                        (next.map_or(space.end(), |e| e.range.base as u128).min(end), None)
                    }
                }
            };
            // Every piece holds at least the byte at `at` (a range holding it runs past it, and
            // the next range starts above it): a lookup that broke this would spin here.
            debug_assert!(piece_end > at, "empty piece at {at:#x}");
            f((at - start) as usize, (piece_end - at) as usize, hit);
            at = piece_end;
        }
    }

    /// Reads `data.len()` bytes at `addr`; unclaimed bytes read as 0xFF. Returns whether any
    /// byte was claimed by a device.
    pub fn read(&self, space: Space, addr: u64, data: &mut [u8]) -> bool {
        let mut claimed = false;
        self.split(space, addr, data.len(), |at, n, hit| {
            let piece = &mut data[at..at + n];
            match hit {
                Some(h) => {
                    claimed = true;
                    h.device.lock().read(h.offset, piece);
                }
                None => piece.fill(0xff),
            }
        });
        claimed
    }

    /// Writes `data` at `addr`; unclaimed bytes are dropped. Returns `None` when no byte was
    /// claimed, otherwise the first outcome other than [`IoOutcome::Done`] a device gave (or
    /// `Done`).
    pub fn write(&self, space: Space, addr: u64, data: &[u8]) -> Option<IoOutcome> {
        let mut outcome = None;
        self.split(space, addr, data.len(), |at, n, hit| {
            if let Some(h) = hit {
                let o = h.device.lock().write(h.offset, &data[at..at + n]);
                outcome = match outcome {
                    None | Some(IoOutcome::Done) => Some(o),
                    first => first,
                };
            }
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that remembers every access and answers reads with `offset + i` in each byte
    /// (so a test sees which offsets reached it).
    #[derive(Default)]
    struct Probe {
        log: Vec<(bool, u64, Vec<u8>)>,
        outcome: Option<IoOutcome>,
    }

    /// More accesses than any test makes: a split that stopped advancing fails here instead
    /// of spinning.
    const MAX_ACCESSES: usize = 4096;

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            assert!(self.log.len() < MAX_ACCESSES, "access split without end");
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
            self.log.push((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
            assert!(self.log.len() < MAX_ACCESSES, "access split without end");
            self.log.push((true, offset, data.to_vec()));
            self.outcome.unwrap_or(IoOutcome::Done)
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, DeviceHandle) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let h: DeviceHandle = p.clone();
        (p, h)
    }

    fn dev() -> DeviceHandle {
        handle(Probe::default())
    }

    fn r(base: u64, len: u64) -> Range {
        Range { base, len }
    }

    /// A bus with one range `[0x100, 0x110)` in `space`.
    fn bus_with_one(space: Space) -> Bus {
        let mut b = Bus::new();
        b.insert(space, 0x100, 0x10, dev()).unwrap();
        b
    }

    #[test]
    fn zero_length_is_refused() {
        let mut b = Bus::new();
        assert_eq!(b.insert(Space::Port, 0x3f8, 0, dev()), Err(BusError::ZeroLength { space: Space::Port, base: 0x3f8 }));
        assert_eq!(b.insert(Space::Mmio, 0, 0, dev()), Err(BusError::ZeroLength { space: Space::Mmio, base: 0 }));
        assert_eq!(b.ranges(Space::Port).count() + b.ranges(Space::Mmio).count(), 0);
    }

    #[test]
    fn port_ranges_end_at_ffff() {
        let mut b = Bus::new();
        // The last port may be claimed, one byte past it may not (64 KiB space, SDM Vol. 1 19.2).
        b.insert(Space::Port, 0xfff8, 8, dev()).unwrap();
        assert_eq!(
            b.insert(Space::Port, 0xfffc, 0x10, dev()),
            Err(BusError::OutOfSpace { space: Space::Port, range: r(0xfffc, 0x10) })
        );
        assert_eq!(
            b.insert(Space::Port, 0x1_0000, 1, dev()),
            Err(BusError::OutOfSpace { space: Space::Port, range: r(0x1_0000, 1) })
        );
    }

    #[test]
    fn mmio_ranges_may_end_at_2_pow_64_but_not_wrap() {
        let mut b = Bus::new();
        b.insert(Space::Mmio, u64::MAX - 0xfff, 0x1000, dev()).unwrap();
        assert!(b.lookup(Space::Mmio, u64::MAX).is_some());
        assert_eq!(
            b.insert(Space::Mmio, u64::MAX, 2, dev()),
            Err(BusError::OutOfSpace { space: Space::Mmio, range: r(u64::MAX, 2) })
        );
        // 2 + (2^64 - 1) is one past 2^64.
        assert!(matches!(b.insert(Space::Mmio, 2, u64::MAX, dev()), Err(BusError::OutOfSpace { .. })));
    }

    #[test]
    fn adjacent_ranges_are_fine_on_both_sides() {
        let mut b = bus_with_one(Space::Port);
        b.insert(Space::Port, 0x110, 4, dev()).unwrap(); // starts where the first ends
        b.insert(Space::Port, 0xf0, 0x10, dev()).unwrap(); // ends where the first starts
        assert_eq!(b.ranges(Space::Port).collect::<Vec<_>>(), vec![r(0xf0, 0x10), r(0x100, 0x10), r(0x110, 4)]);
    }

    #[test]
    fn an_access_starting_just_below_a_range_reaches_it_from_its_first_byte() {
        // Port 1 floats, ports 2 and 3 are the device's offsets 0 and 1, port 4 floats.
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Port, 2, 2, h).unwrap();
        let mut data = [0u8; 4];
        assert!(b.read(Space::Port, 1, &mut data));
        assert_eq!(data, [0xff, 0, 1, 0xff]);
        assert_eq!(p.lock().log, [(false, 0, vec![0, 1])]);
    }

    #[test]
    fn debug_output_shows_the_ranges_and_offsets_not_the_devices() {
        // Device models are `dyn` behind locks: what a log or a failed assertion can show is
        // where they sit.
        let mut b = bus_with_one(Space::Port);
        b.insert(Space::Mmio, 0xfee0_0000, 0x1000, dev()).unwrap();
        assert_eq!(
            format!("{b:?}"),
            "Bus { port: [Range { base: 256, len: 16 }], mmio: [Range { base: 4276092928, len: 4096 }] }"
        );
        let hit = b.lookup(Space::Port, 0x103).unwrap();
        assert_eq!(format!("{hit:?}"), "Hit { range: Range { base: 256, len: 16 }, offset: 3, .. }");
    }

    #[test]
    fn identical_range_is_an_overlap_naming_both() {
        let mut b = bus_with_one(Space::Port);
        let e = b.insert(Space::Port, 0x100, 0x10, dev()).unwrap_err();
        assert_eq!(e, BusError::Overlap { space: Space::Port, range: r(0x100, 0x10), existing: r(0x100, 0x10) });
        assert_eq!(std::format!("{e}"), "port range 0x100+0x10 overlaps 0x100+0x10 already registered");
    }

    #[test]
    fn contained_range_is_an_overlap() {
        let mut b = bus_with_one(Space::Mmio);
        let e = b.insert(Space::Mmio, 0x104, 4, dev());
        assert_eq!(e, Err(BusError::Overlap { space: Space::Mmio, range: r(0x104, 4), existing: r(0x100, 0x10) }));
        // A single byte at either end is contained too.
        assert!(b.insert(Space::Mmio, 0x100, 1, dev()).is_err());
        assert!(b.insert(Space::Mmio, 0x10f, 1, dev()).is_err());
    }

    #[test]
    fn containing_range_is_an_overlap() {
        let mut b = bus_with_one(Space::Mmio);
        let e = b.insert(Space::Mmio, 0, 0x1000, dev());
        assert_eq!(e, Err(BusError::Overlap { space: Space::Mmio, range: r(0, 0x1000), existing: r(0x100, 0x10) }));
    }

    #[test]
    fn containing_several_ranges_names_one_of_them() {
        let mut b = bus_with_one(Space::Port);
        b.insert(Space::Port, 0x200, 0x10, dev()).unwrap();
        let e = b.insert(Space::Port, 0x80, 0x200, dev()).unwrap_err();
        assert!(matches!(e, BusError::Overlap { existing, .. } if existing == r(0x100, 0x10) || existing == r(0x200, 0x10)));
    }

    #[test]
    fn partial_overlap_at_the_start_is_refused() {
        let mut b = bus_with_one(Space::Port);
        // [0xf8, 0x101) shares 0x100 with [0x100, 0x110).
        let e = b.insert(Space::Port, 0xf8, 9, dev());
        assert_eq!(e, Err(BusError::Overlap { space: Space::Port, range: r(0xf8, 9), existing: r(0x100, 0x10) }));
    }

    #[test]
    fn partial_overlap_at_the_end_is_refused() {
        let mut b = bus_with_one(Space::Port);
        // [0x10f, 0x120) shares 0x10f.
        let e = b.insert(Space::Port, 0x10f, 0x11, dev());
        assert_eq!(e, Err(BusError::Overlap { space: Space::Port, range: r(0x10f, 0x11), existing: r(0x100, 0x10) }));
    }

    #[test]
    fn overlap_with_a_range_further_down_is_found() {
        // The candidate that can overlap from below is the last range starting at or below the
        // new base, even if other ranges come later.
        let mut b = Bus::new();
        b.insert(Space::Mmio, 0x1000, 0x1000, dev()).unwrap();
        b.insert(Space::Mmio, 0x4000, 0x10, dev()).unwrap();
        let e = b.insert(Space::Mmio, 0x1800, 0x10, dev());
        assert_eq!(e, Err(BusError::Overlap { space: Space::Mmio, range: r(0x1800, 0x10), existing: r(0x1000, 0x1000) }));
    }

    #[test]
    fn refused_insert_leaves_the_bus_unchanged() {
        let mut b = bus_with_one(Space::Port);
        let before: Vec<_> = b.ranges(Space::Port).collect();
        let _ = b.insert(Space::Port, 0x108, 0x10, dev());
        assert_eq!(b.ranges(Space::Port).collect::<Vec<_>>(), before);
    }

    #[test]
    fn ranges_stay_sorted_whatever_the_insertion_order() {
        let mut b = Bus::new();
        for base in [0x500u64, 0x100, 0x300, 0x200, 0x400, 0] {
            b.insert(Space::Mmio, base, 0x80, dev()).unwrap();
        }
        let bases: Vec<u64> = b.ranges(Space::Mmio).map(|r| r.base).collect();
        assert_eq!(bases, vec![0, 0x100, 0x200, 0x300, 0x400, 0x500]);
    }

    #[test]
    fn lookup_hits_first_and_last_byte_with_offsets() {
        let b = bus_with_one(Space::Port);
        let first = b.lookup(Space::Port, 0x100).unwrap();
        assert_eq!((first.range, first.offset), (r(0x100, 0x10), 0));
        let last = b.lookup(Space::Port, 0x10f).unwrap();
        assert_eq!((last.range, last.offset), (r(0x100, 0x10), 0xf));
    }

    #[test]
    fn lookup_misses_just_outside_and_in_gaps() {
        let mut b = bus_with_one(Space::Port);
        b.insert(Space::Port, 0x200, 8, dev()).unwrap();
        for addr in [0, 0xff, 0x110, 0x1ff, 0x208, 0xffff] {
            assert!(b.lookup(Space::Port, addr).is_none(), "{addr:#x} hit");
        }
        assert!(Bus::new().lookup(Space::Mmio, 0).is_none(), "empty bus");
    }

    #[test]
    fn lookup_finds_the_right_device_among_many() {
        let mut b = Bus::new();
        let mut probes = Vec::new();
        for i in 0..50u64 {
            let (p, h) = probe();
            b.insert(Space::Mmio, 0x1000 * i, 0x100, h).unwrap();
            probes.push(p);
        }
        for i in 0..50u64 {
            let hit = b.lookup(Space::Mmio, 0x1000 * i + 0x42).unwrap();
            assert_eq!((hit.range.base, hit.offset), (0x1000 * i, 0x42));
            let mut d = [0u8; 1];
            b.read(Space::Mmio, 0x1000 * i + 0x42, &mut d);
            assert_eq!(probes[i as usize].lock().log.len(), 1, "device {i} got the read");
        }
    }

    #[test]
    fn the_two_spaces_are_independent() {
        let mut b = Bus::new();
        b.insert(Space::Port, 0x3f8, 8, dev()).unwrap();
        // The same numbers in the other space are a different place.
        b.insert(Space::Mmio, 0x3f8, 8, dev()).unwrap();
        b.insert(Space::Mmio, 0x400, 8, dev()).unwrap();
        assert!(b.lookup(Space::Port, 0x400).is_none());
        assert_eq!(b.ranges(Space::Port).count(), 1);
        assert_eq!(b.ranges(Space::Mmio).count(), 2);
        assert!(b.remove(Space::Port, 0x3f8).is_some());
        assert!(b.lookup(Space::Mmio, 0x3f8).is_some(), "removing a port range leaves MMIO alone");
    }

    #[test]
    fn read_and_write_reach_the_device_at_the_offset() {
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Mmio, 0xfec0_0000, 0x1000, h).unwrap();
        let mut d = [0u8; 4];
        assert!(b.read(Space::Mmio, 0xfec0_0010, &mut d));
        assert_eq!(d, [0x10, 0x11, 0x12, 0x13]);
        assert_eq!(b.write(Space::Mmio, 0xfec0_0000, &[1, 2, 3, 4]), Some(IoOutcome::Done));
        assert_eq!(p.lock().log, vec![(false, 0x10, vec![0x10, 0x11, 0x12, 0x13]), (true, 0, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_writes_dropped() {
        let b = bus_with_one(Space::Port);
        let mut d = [0u8; 4];
        assert!(!b.read(Space::Port, 0x80, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert_eq!(b.write(Space::Port, 0x80, &[0; 4]), None);
        let mut q = [0u8; 8];
        assert!(!Bus::new().read(Space::Mmio, 0xdead_0000, &mut q));
        assert_eq!(q, [0xff; 8]);
    }

    #[test]
    fn access_straddling_the_end_of_a_range_gives_the_device_its_part() {
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Port, 0x100, 0x10, h).unwrap();
        // A dword at 0x10e: bytes 0x10e and 0x10f are the device's (offsets 0xe, 0xf), the
        // other two float.
        let mut d = [0u8; 4];
        assert!(b.read(Space::Port, 0x10e, &mut d));
        assert_eq!(d, [0x0e, 0x0f, 0xff, 0xff]);
        assert_eq!(b.write(Space::Port, 0x10e, &[1, 2, 3, 4]), Some(IoOutcome::Done));
        assert_eq!(p.lock().log[1], (true, 0xe, vec![1, 2]));
    }

    #[test]
    fn access_straddling_the_start_of_a_range_gives_the_device_its_part() {
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Mmio, 0x100, 0x10, h).unwrap();
        let mut d = [0u8; 4];
        assert!(b.read(Space::Mmio, 0xfe, &mut d));
        assert_eq!(d, [0xff, 0xff, 0x00, 0x01]);
        assert_eq!(p.lock().log[0].1, 0, "the device saw offset 0");
    }

    #[test]
    fn access_spanning_two_adjacent_devices_reaches_both() {
        let mut b = Bus::new();
        let (p1, h1) = probe();
        let (p2, h2) = probe();
        b.insert(Space::Port, 0x60, 1, h1).unwrap();
        b.insert(Space::Port, 0x61, 1, h2).unwrap();
        assert_eq!(b.write(Space::Port, 0x60, &[0xaa, 0xbb]), Some(IoOutcome::Done));
        assert_eq!(p1.lock().log, vec![(true, 0, vec![0xaa])]);
        assert_eq!(p2.lock().log, vec![(true, 0, vec![0xbb])]);
    }

    #[test]
    fn access_past_the_end_of_the_port_space_floats() {
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Port, 0xffff, 1, h).unwrap();
        let mut d = [0u8; 2];
        assert!(b.read(Space::Port, 0xffff, &mut d));
        assert_eq!(d, [0x00, 0xff]);
        assert_eq!(p.lock().log, vec![(false, 0, vec![0])]);
        // The same at the top of the MMIO space.
        let mut m = [0u8; 4];
        assert!(!Bus::new().read(Space::Mmio, u64::MAX - 1, &mut m));
        assert_eq!(m, [0xff; 4]);
    }

    #[test]
    fn the_first_special_write_outcome_wins() {
        let mut b = Bus::new();
        let (p, h) = probe();
        p.lock().outcome = Some(IoOutcome::TestExit(7));
        b.insert(Space::Port, 0xf4, 1, h).unwrap();
        b.insert(Space::Port, 0xf5, 1, dev()).unwrap();
        assert_eq!(b.write(Space::Port, 0xf4, &[7, 0]), Some(IoOutcome::TestExit(7)));
        assert_eq!(b.write(Space::Port, 0xf3, &[0, 7]), Some(IoOutcome::TestExit(7)));
    }

    #[test]
    fn zero_length_access_touches_nothing() {
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Port, 0x100, 1, h).unwrap();
        assert!(!b.read(Space::Port, 0x100, &mut []));
        assert_eq!(b.write(Space::Port, 0x100, &[]), None);
        assert!(p.lock().log.is_empty());
    }

    #[test]
    fn one_device_may_claim_several_ranges() {
        // The PIC pair: one model at 0x20 and 0xA0.
        let mut b = Bus::new();
        let (p, h) = probe();
        b.insert(Space::Port, 0x20, 2, h.clone()).unwrap();
        b.insert(Space::Port, 0xa0, 2, h).unwrap();
        b.write(Space::Port, 0x21, &[1]);
        b.write(Space::Port, 0xa1, &[2]);
        assert_eq!(p.lock().log, vec![(true, 1, vec![1]), (true, 1, vec![2])]);
    }

    #[test]
    fn remove_frees_the_range_for_reuse() {
        let mut b = bus_with_one(Space::Port);
        assert!(b.remove(Space::Port, 0x101).is_none(), "only an exact base removes");
        assert!(b.remove(Space::Port, 0x100).is_some());
        assert!(b.lookup(Space::Port, 0x100).is_none());
        assert!(b.remove(Space::Port, 0x100).is_none(), "already gone");
        b.insert(Space::Port, 0x108, 0x10, dev()).unwrap();
    }

    #[test]
    fn removed_device_stays_alive_in_its_other_ranges() {
        let mut b = Bus::new();
        let h = dev();
        b.insert(Space::Mmio, 0x1000, 0x10, h.clone()).unwrap();
        b.insert(Space::Mmio, 0x2000, 0x10, h).unwrap();
        let removed = b.remove(Space::Mmio, 0x1000).unwrap();
        let other = b.lookup(Space::Mmio, 0x2000).unwrap();
        assert!(Arc::ptr_eq(&removed, other.device));
    }

    #[test]
    fn the_bus_can_be_shared_between_vcpus() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Bus>();
        // Two threads hammering two devices through one shared bus.
        let mut b = Bus::new();
        let (p1, h1) = probe();
        let (p2, h2) = probe();
        b.insert(Space::Mmio, 0x1000, 4, h1).unwrap();
        b.insert(Space::Mmio, 0x2000, 4, h2).unwrap();
        let b = Arc::new(b);
        let threads: Vec<_> = [0x1000u64, 0x2000]
            .into_iter()
            .map(|addr| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        b.write(Space::Mmio, addr, &[1]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((p1.lock().log.len(), p2.lock().log.len()), (1000, 1000));
    }

    #[test]
    fn errors_read_as_sentences() {
        let z = BusError::ZeroLength { space: Space::Mmio, base: 0xfee0_0000 };
        assert_eq!(std::format!("{z}"), "MMIO range at 0xfee00000 has zero length");
        let o = BusError::OutOfSpace { space: Space::Port, range: r(0xfffe, 4) };
        assert_eq!(std::format!("{o}"), "port range 0xfffe+0x4 runs past the end of the port space");
    }
}
