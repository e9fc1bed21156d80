//! The screen console (issue "Boot media and fleets", item 4): a machine without COM1
//! (`-serial none`) boots the default config, runs its guests, and shows Bastion's boot log
//! and the guest list on the framebuffer the bootloader handed over (SeaBIOS's VESA mode,
//! OVMF's GOP mode). The test takes screenshots through QEMU's monitor (`screendump`) and
//! reads them back into text with the font code that drew them
//! (`bastion_core::fbcon::read_text`, exact glyph matching), then compares the screen with
//! Bastion's own lines as QEMU's debug console (port 0xE9) streamed them: the screen must be
//! their tail, wrapped at its width. Guests' console lines are not on it.

use qemu_tests::guests::image_with_guests;
use qemu_tests::{workspace_root, Emulator, Platform, RunOptions};
use std::time::{Duration, Instant};

const GUESTS: [&str; 3] = ["echo", "irqecho", "counter"];

/// Bastion's own lines from the transcript (from its first line on, guests' lines left out),
/// each wrapped at `cols` as the screen wraps them and drawn as its font draws them.
fn expected_screen(transcript: &str, cols: usize) -> Vec<String> {
    let start = transcript.find("Bastion ").map_or(0, |i| transcript[..i].rfind('\n').map_or(0, |n| n + 1));
    let mut out = Vec::new();
    for line in transcript[start..].lines() {
        let line = line.trim_end_matches('\r');
        if GUESTS.iter().any(|g| line.starts_with(&format!("[{g}] ")) || line.starts_with(&format!("[{g} history] "))) {
            continue;
        }
        let chars: Vec<char> = line.chars().map(bastion_core::fbcon::glyph_char).collect();
        if chars.is_empty() {
            out.push(String::new());
        }
        for piece in chars.chunks(cols) {
            out.push(piece.iter().collect::<String>().trim_end().to_string());
        }
    }
    out
}

fn screen_shows_the_log_and_the_guest_list(p: Platform) {
    let cfg = std::fs::read_to_string(workspace_root().join("boot/configs/default.toml")).unwrap();
    let img = image_with_guests(&format!("screen-{}", p.name()), &cfg, &["echo", "irqecho", "busy"]);
    let opts = RunOptions { no_com1: true, ..RunOptions::SMP2 };
    let mut emu = Emulator::start(p, &img, &opts);
    let t = p.boot_timeout() * 2;
    let ok = |r: Result<String, qemu_tests::Failure>| r.unwrap_or_else(|e| panic!("{e}"));
    // Without COM1 the guests run all the same (their lines reach the debug console).
    ok(emu.expect("==== boot complete ====", t));
    ok(emu.expect("[echo] echo: ready", t));
    ok(emu.expect("[irqecho] ", t));
    ok(emu.expect("input focus: echo", t));
    // The screen catches up within a refresh (100 ms); allow for a slow machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (screen, want) = loop {
        let (width, screen) = emu.screen_text().unwrap_or_else(|e| panic!("{e}"));
        let mut shown = screen.clone();
        while shown.last().is_some_and(|l| l.is_empty()) {
            shown.pop();
        }
        let all = expected_screen(&emu.transcript(), width);
        let want: Vec<String> = all[all.len().saturating_sub(shown.len())..].to_vec();
        // The whole tail: as many lines as fit (the last row holds the cursor).
        let enough = shown.len() >= all.len().min(screen.len() - 1);
        if shown == want && enough {
            break (screen, want);
        }
        if Instant::now() > deadline {
            panic!(
                "the screen does not show Bastion's lines.\nscreen ({} rows):\n{}\n\nexpected tail:\n{}\n\ntranscript:\n{}",
                screen.len(),
                screen.join("\n"),
                want.join("\n"),
                emu.transcript()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = screen.join("\n");
    // The guest list, as the monitor's `list` prints it, and the end of the boot log.
    let header = screen.iter().find(|l| l.starts_with("NAME ")).unwrap_or_else(|| panic!("no guest list on the screen:\n{text}"));
    assert!(header.contains("STATE") && header.contains("VCPUS") && header.contains("EXITS"), "{header}");
    for (name, state) in [("echo", "running"), ("irqecho", "running"), ("counter", "stopped")] {
        let row = screen.iter().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
        assert!(row.contains(state), "{row}");
    }
    assert!(text.contains("==== boot complete ====") && text.contains("screen: ") && text.contains("framebuffer"), "{text}");
    // Guests' console lines stay off the screen.
    assert!(!screen.iter().any(|l| l.starts_with("[echo] ") || l.starts_with("[irqecho] ")), "{text}");
    assert!(want.iter().any(|l| l.starts_with("NAME ")));
    emu.kill();
}

#[test]
fn a_bios_machine_without_com1_shows_bastion_on_its_screen() {
    screen_shows_the_log_and_the_guest_list(Platform::QemuBios);
}

#[test]
fn a_uefi_machine_without_com1_shows_bastion_on_its_screen() {
    screen_shows_the_log_and_the_guest_list(Platform::QemuUefi);
}
