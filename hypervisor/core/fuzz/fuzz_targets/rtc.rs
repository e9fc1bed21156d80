//! The MC146818 RTC/CMOS: index and data port accesses of any register and value, with time
//! passing. Rules checked (MC146818A datasheet; the model's contract with the run loop): a
//! deadline given for IRQ 8 is kept (the line is high at that instant), and while the guest
//! has not written the clock's own registers the date it shows is a real one.
#![no_main]
use bastion_core::devices::rtc::{days_in_month, Rtc};
use bastion_core_fuzz::Clock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut clock = Clock::new();
    // 2026-12-04 and a second-resolution start the input picks.
    let start = 1_796_342_400 + u64::from(u.arbitrary::<u16>().unwrap_or(0));
    let mut rtc = Rtc::new(start, clock.now_ns);
    let mut index = 0u8;
    let mut touched_clock = false;
    while !u.is_empty() {
        let now = clock.step(&mut u);
        match u.int_in_range(0..=4u8).unwrap_or(0) {
            0 => {
                index = u.arbitrary().unwrap_or(0);
                rtc.write(0x70, index, now);
            }
            1 => {
                let v = u.arbitrary().unwrap_or(0);
                // Time and date (0-9) and register B (formats) change what the date reads as.
                touched_clock |= matches!(index & 0x7f, 0..=9 | 0x0b | 0x32);
                rtc.write(0x71, v, now);
            }
            2 => {
                let _ = rtc.read(if u.arbitrary().unwrap_or(true) { 0x71 } else { 0x70 }, now);
            }
            3 => {
                let port = u.arbitrary().unwrap_or(0);
                let v = u.arbitrary().unwrap_or(0);
                touched_clock |= port == 0x71 && matches!(index & 0x7f, 0..=9 | 0x0b | 0x32);
                if port == 0x70 {
                    index = v;
                }
                rtc.write(port, v, now);
            }
            _ => {
                let _ = rtc.interrupt_line(now);
                let _ = rtc.nmi_masked();
            }
        }
        if let Some(deadline) = rtc.next_deadline(now) {
            assert!(rtc.interrupt_line(deadline.max(now)), "IRQ 8 low at its deadline {deadline} (now {now})");
        }
        if !touched_clock {
            let d = rtc.date_time(now);
            assert!((1..=12).contains(&d.month) && d.day >= 1 && d.day <= days_in_month(d.year, d.month), "{d:?}");
            assert!(d.hour < 24 && d.minute < 60 && d.second < 60, "{d:?}");
        }
    }
});
