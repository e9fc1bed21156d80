//! What the fuzz targets share: reading a stream of operations out of libFuzzer's bytes.
//!
//! Each device target turns its input into a sequence of guest operations (register reads and
//! writes, interrupt lines, input bytes) interleaved with the passing of time, as a guest and
//! the run loop would drive the model, and checks the invariants its datasheet gives after
//! every step. Running out of bytes ends the sequence (`arbitrary` answers zeros then).

use arbitrary::Unstructured;

/// A clock that only moves forward, by steps the input chooses: most small (a few
/// microseconds, what separates two port accesses), some up to about a second, so that
/// periodic timers fire, wrap and are reprogrammed while they run.
pub struct Clock {
    pub now_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { now_ns: 1_000_000_000 }
    }

    /// Advances by an amount read from `u`; returns the new time.
    pub fn step(&mut self, u: &mut Unstructured) -> u64 {
        let small: bool = u.arbitrary().unwrap_or(true);
        let by: u64 = if small { u.int_in_range(0..=20_000).unwrap_or(0) } else { u.int_in_range(0..=1_100_000_000).unwrap_or(0) };
        self.now_ns += by;
        self.now_ns
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// An access size a guest instruction can make (1, 2, 4 or 8 bytes), or, rarely, any length
/// from 1 to 8 (an access split at a range boundary).
pub fn access_len(u: &mut Unstructured) -> usize {
    match u.int_in_range(0..=9u8).unwrap_or(0) {
        0..=1 => 1,
        2..=3 => 2,
        4..=6 => 4,
        7..=8 => 8,
        _ => u.int_in_range(1..=8usize).unwrap_or(1),
    }
}

use bastion_core::config::{Config, GuestConfig};
use bastion_core::loader::{Prepared, Write};
use bastion_core::vm::memmap::MemoryMap;

/// A guest entry of a config, as `boot validate` and the hypervisor parse it: `extra` holds
/// more `key = value` lines. None when the config refuses it (the loader is not reached then).
pub fn guest_config(format: &str, memory_mib: u32, cmdline: &str, extra: &str) -> Option<GuestConfig> {
    let cmdline: String = cmdline.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ').collect();
    let text = format!("[[guest]]\nname = \"g\"\nkernel = \"k\"\nformat = \"{format}\"\nmemory_mib = {memory_mib}\ncmdline = \"{cmdline}\"\n{extra}");
    let cfg = Config::parse("fuzz.toml", &text).ok()?;
    cfg.guests.into_iter().next()
}

/// What every prepared image must satisfy (the loader's contract, `loader::Prepared`): each
/// write lies inside one RAM region of the guest's memory map, the writes are sorted and do
/// not overlap, and the bytes of each are there in the inputs, exactly as long as it says.
pub fn check_prepared(p: &Prepared, memory_mib: u32, image: &[u8], initrd: Option<&[u8]>, modules: &[&[u8]]) {
    let map = MemoryMap::new(u64::from(memory_mib) << 20).expect("the loader accepted this memory size");
    let mut end = 0u64;
    for w in &p.writes {
        let r = w.range();
        assert!(r.base >= end, "writes overlap or are out of order at {:#x}: {:?}", r.base, p.writes.iter().map(Write::range).collect::<Vec<_>>());
        end = r.end();
        if w.is_empty() {
            continue;
        }
        assert!(map.ram_regions().any(|ram| ram.base <= r.base && r.end() <= ram.end()), "write {r:?} is not inside guest RAM ({memory_mib} MiB)");
        match w {
            Write::Zero { .. } => {}
            _ => {
                let data = w.data(image, initrd, modules).expect("the write's bytes are in the inputs");
                assert_eq!(data.len() as u64, w.len(), "{r:?}");
            }
        }
    }
}
