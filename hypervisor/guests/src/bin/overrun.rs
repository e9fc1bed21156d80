//! Test guest `overrun`: reads guest-physical 1 GiB, far beyond its RAM; the hypervisor must
//! stop it there.
#![no_std]
#![no_main]

use test_guests::say;

test_guests::guest!(name = "overrun", main = main);

/// Beyond the guest's RAM (the ABI gives it 2 MiB or so, never 1 GiB), yet inside the boot
/// code's identity map, so the guest's own paging allows the access and only the
/// hypervisor's nested paging (EPT / NPT) can catch it.
const BEYOND_RAM: u64 = 0x4000_0000;

fn main() -> u32 {
    say!("reading {BEYOND_RAM:#x}");
    // One 8-byte load from a fixed guest-physical address (identity-mapped).
    // SAFETY: the address is mapped by the boot code's page tables; what backs it is the
    // hypervisor's business, which is the point of the test.
    let value = unsafe { core::ptr::read_volatile(BEYOND_RAM as *const u64) };
    say!("FAIL read returned {value:#x}");
    1
}
