//! The configuration file: any text. Every error names the file (and, when the parser knows
//! it, a line inside it); every guest kept is one the rules accept, once.
#![no_main]
use bastion_core::config::{Config, Console, MAX_GUEST_MIB, MAX_VCPUS, MIN_GUEST_MIB};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else { return };
    let lines = text.lines().count() + 1;
    match Config::parse("bastion.toml", text) {
        Ok(cfg) => {
            for e in &cfg.guest_errors {
                assert!(e.to_string().starts_with("bastion.toml"), "{e}");
                assert!(e.line <= lines, "{e} is past the end of the file");
            }
            for (i, g) in cfg.guests.iter().enumerate() {
                assert!(!cfg.guests[..i].iter().any(|o| o.name == g.name), "guest {} twice", g.name);
                assert!((1..=MAX_VCPUS).contains(&g.vcpus) && (MIN_GUEST_MIB..=MAX_GUEST_MIB).contains(&g.memory_mib), "{g:?}");
                if let Console::Passthrough { port } = g.console {
                    assert!(!cfg.guests[..i].iter().any(|o| o.console == Console::Passthrough { port }), "port {port:#x} passed through twice");
                }
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("bastion.toml"), "{e}");
            assert!(e.line <= lines, "{e} is past the end of the file");
        }
    }
});
