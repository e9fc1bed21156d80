//! The local APIC: MMIO reads and writes of any size at any offset of its page, interrupts
//! accepted, acknowledged and ended, and time passing for its timer. Rules checked (SDM Vol. 3A
//! chapter 11): only vectors 16-255 are ever delivered (11.5.2), the acknowledge cycle takes
//! the vector that was pending, PPR's class is never below TPR's (11.8.3.1), and a timer
//! deadline is kept (at that instant the timer interrupt goes into the IRR).
#![no_main]
use bastion_core::devices::bus::BusDevice;
use bastion_core::devices::lapic::Lapic;
use bastion_core_fuzz::{access_len, Clock};
use core::sync::atomic::{AtomicU64, Ordering};
use libfuzzer_sys::fuzz_target;

/// The time MMIO accesses see (the kernel's clock is a plain function too).
static NOW: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    NOW.load(Ordering::Relaxed)
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut clock = Clock::new();
    NOW.store(clock.now_ns, Ordering::Relaxed);
    let mut apic = Lapic::with_clock(u.arbitrary().unwrap_or(0), 1_000_000_000, now);
    while !u.is_empty() {
        let t = clock.step(&mut u);
        NOW.store(t, Ordering::Relaxed);
        match u.int_in_range(0..=7u8).unwrap_or(0) {
            0 => {
                let offset = u.int_in_range(0..=0x1003u64).unwrap_or(0);
                let mut buf = [0u8; 8];
                apic.read(offset, &mut buf[..access_len(&mut u)]);
            }
            1 => {
                // Mostly the registers' own slots, 16 bytes apart.
                let offset = if u.arbitrary().unwrap_or(true) { u.int_in_range(0..=0x3fu64).unwrap_or(0) * 0x10 } else { u.int_in_range(0..=0x1003u64).unwrap_or(0) };
                let len = access_len(&mut u);
                let bytes = u.bytes(len).unwrap_or(&[0; 8][..len]).to_vec();
                let _ = apic.write(offset, &bytes);
            }
            2 => {
                let _ = apic.accept(u.arbitrary().unwrap_or(0), u.arbitrary().unwrap_or(false));
            }
            3 => {
                let pending = apic.pending_vector();
                let taken = apic.acknowledge();
                assert_eq!(pending, taken, "the acknowledge cycle took another vector");
                if let Some(v) = taken {
                    assert!(v >= 16, "vector {v} delivered (0-15 are illegal)");
                    assert_eq!(apic.in_service(), Some(v), "the acknowledged vector is the highest in service");
                }
            }
            4 => {
                let _ = apic.eoi();
                let _ = apic.take_eoi_broadcasts().count();
                assert_eq!(apic.take_eoi_broadcasts().next(), None, "broadcasts are taken once");
            }
            5 => {
                let _ = apic.advance(t);
            }
            6 => {
                apic.set_lint(u.int_in_range(0..=2).unwrap_or(0), u.arbitrary().unwrap_or(false));
                let _ = apic.take_nmi();
            }
            _ => {
                let _ = apic.take_ipis();
                apic.set_tpr(u.arbitrary().unwrap_or(0));
            }
        }
        if let Some(v) = apic.pending_vector() {
            assert!(v >= 16, "vector {v} pending for delivery");
        }
        assert!(apic.ppr() >> 4 >= apic.tpr() >> 4, "PPR {:#x} below TPR {:#x}", apic.ppr(), apic.tpr());
        if let Some(deadline) = apic.next_deadline(t) {
            // A software-disabled APIC or an illegal timer vector (below 16) takes nothing
            // into the IRR (11.4.7.2, 11.5.2); otherwise the vector is there at the deadline.
            // Each on its own copy: a register read brings the timer up to its time too.
            let vector = apic.clone().read_register(0x320, t) & 0xff;
            let fired = apic.clone().advance(deadline);
            assert!(fired || !apic.software_enabled() || vector < 16, "the timer did not fire at its deadline {deadline}");
            // And not before it: a deadline in the future is the first instant it fires.
            if deadline > t {
                assert!(!apic.clone().advance(deadline - 1), "the timer fired before its deadline {deadline}");
            }
        }
    }
});
