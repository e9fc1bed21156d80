//! The 8254 PIT: control words, count bytes and reads of its ports and port 0x61, interleaved
//! with time. Rules checked (8254 datasheet; the model's contract with the run loop): a
//! deadline it gives for IRQ 0 is kept (at that instant the edge is there to collect), and the
//! edges over an interval are no more than the fastest counter allows (count 2 in mode 2:
//! one per 2 / 1.193182 MHz = 1.68 µs).
#![no_main]
use bastion_core::devices::pit8254::Pit;
use bastion_core_fuzz::Clock;
use libfuzzer_sys::fuzz_target;

const PORTS: [u16; 6] = [0x40, 0x41, 0x42, 0x43, 0x44, 0x3f];

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut pit = Pit::new();
    let mut clock = Clock::new();
    let mut collected_at = clock.now_ns;
    // A control word or count that moves OUT0 from low to high is an edge too (8254 mode
    // definitions), at no time cost: each write since the last collection may add one.
    let mut writes = 0u64;
    while !u.is_empty() {
        let now = clock.step(&mut u);
        let port = PORTS[u.int_in_range(0..=5usize).unwrap_or(0)];
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => {
                let _ = pit.read(port, now);
            }
            1 => {
                writes += u64::from(port == 0x40 || port == 0x43);
                pit.write(port, u.arbitrary().unwrap_or(0), now);
            }
            2 => {
                let _ = pit.read_port_b(now);
            }
            3 => pit.write_port_b(u.arbitrary().unwrap_or(0), now),
            4 => {
                let _ = pit.out(u.int_in_range(0..=3).unwrap_or(0), now);
            }
            _ => {
                let edges = pit.irq0_edges(now);
                let bound = (now - collected_at) / 1676 + 2 + writes;
                assert!(u64::from(edges) <= bound, "{edges} edges in {} ns after {writes} writes", now - collected_at);
                (collected_at, writes) = (now, 0);
            }
        }
        if let Some(deadline) = pit.next_irq0_deadline(now) {
            let at = deadline.max(now);
            let mut later = pit.clone();
            assert!(later.irq0_edges(at) > 0, "no IRQ 0 edge at the deadline {deadline} (now {now})");
        }
    }
});
