//! The boot bundle (a tar archive): any bytes. Parsing never panics; names are unique, every
//! file is found again by its name with the same bytes, and those lie inside the bundle.
#![no_main]
use bastion_core::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Bundle::parse(data) else { return };
    let range = data.as_ptr_range();
    for f in bundle.files() {
        if !f.data.is_empty() {
            assert!(range.contains(&f.data.as_ptr()) && f.data.as_ptr_range().end <= range.end, "{} points outside the bundle", f.name);
        }
        let again = bundle.file(f.name).expect("a listed file is found by its name");
        assert!(core::ptr::eq(again, f.data), "{}: names are unique", f.name);
    }
    let _ = bundle.config_text();
});
