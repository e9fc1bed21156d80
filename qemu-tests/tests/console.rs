//! The host console loses nothing: a page of text pasted at once reaches the focused guest
//! whole and in order (the host takes COM1's input into a 4 KiB buffer at least every
//! 0.5 ms, so the 16-byte FIFO never overflows at 115200 baud), and the guest's answer, about
//! 100 KiB of output, comes back whole through the output ring.

use qemu_tests::guests::{config_entry, image_with_guests};
use qemu_tests::{Emulator, Platform, RunOptions};
use std::time::Duration;

fn paste_4k_into_an_echo_guest(p: Platform, bytes: usize, t: Duration) {
    let cfg = format!("[hypervisor]\nexit_when_idle = true\n{}", config_entry("echo", "echo", ""));
    let img = image_with_guests(&format!("paste-{}", p.name()), &cfg, &["echo"]);
    let opts = RunOptions { interactive: true, ..RunOptions::SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    emu.expect("input focus: echo", t).unwrap_or_else(|e| panic!("{e}"));
    // Printable ASCII without 'q' (which ends the guest), in a pattern whose order shows.
    let text: Vec<u8> = (0..bytes).map(|i| b"abcdefghijklmnoprstuvwxyz0123456789ABCDEFGHIJ"[i % 45]).collect();
    emu.send(&text);
    emu.send(b"q");
    emu.expect("guest echo: stopped: test exit: PASS", t).unwrap_or_else(|e| panic!("{e}"));
    let out = emu.transcript();
    let got: Vec<u8> = out.lines().filter_map(|l| l.strip_prefix("[echo] echo: got ")).filter(|c| c.len() == 1).map(|c| c.as_bytes()[0]).collect();
    assert_eq!(got.len(), bytes + 1, "bytes lost: {} of {} echoed", got.len(), bytes + 1);
    assert_eq!(&got[..bytes], &text[..], "order changed");
    assert!(!out.contains("input buffer was full"), "{out}");
}

#[test]
fn a_pasted_4k_page_reaches_the_guest_whole_on_qemu() {
    paste_4k_into_an_echo_guest(Platform::QemuBios, 4096, Duration::from_secs(180));
}

#[test]
fn a_pasted_burst_reaches_the_guest_whole_on_bochs_intel() {
    // Bochs paces its UART like hardware; 256 bytes keep the run short.
    paste_4k_into_an_echo_guest(Platform::BochsIntel, 256, Duration::from_secs(600));
}

/// A guest that prints faster than the line carries meets backpressure (its UART shows the
/// transmitter busy) and loses nothing: every numbered line arrives once and in order.
fn flood_arrives_whole(p: Platform, expect_backpressure: bool) {
    let cfg = format!("[hypervisor]\nexit_when_idle = true\n{}", config_entry("flood", "flood", ""));
    let img = image_with_guests(&format!("flood-{}", p.name()), &cfg, &["flood"]);
    let mut emu = Emulator::start(p, &img, &RunOptions::SMP2);
    emu.expect("guest flood: stopped: test exit: PASS", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
    let out = emu.transcript();
    let numbers: Vec<u32> =
        out.lines().filter_map(|l| l.strip_prefix("[flood] flood: line ")).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(numbers, (1..=2400).collect::<Vec<u32>>(), "lines lost, repeated or reordered");
    let busy: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("[flood] flood: transmitter busy "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no busy count in {out}"));
    if expect_backpressure {
        assert!(busy > 0, "the guest outran a paced line without ever seeing THRE clear");
    }
}

#[test]
fn a_flooding_guest_meets_backpressure_and_loses_nothing_on_bochs_intel() {
    // Bochs paces COM1 at the baud rate, as hardware does: 154 KB take about 13 s of line time.
    flood_arrives_whole(Platform::BochsIntel, true);
}

#[test]
fn a_flooding_guest_loses_nothing_on_qemu() {
    // QEMU's UART does not pace output, so the ring may never fill: only the content counts.
    flood_arrives_whole(Platform::QemuBios, false);
}
