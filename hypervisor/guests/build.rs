//! Build script of the test guests: links every guest binary with `link.ld` (image at
//! guest-physical 0x8000) as a non-PIE static executable.
//!
//! Why `--no-pie`: x86_64-unknown-none produces static PIEs by default, whose absolute
//! pointers (vtables, `&str` tables, the IDT gates) are left as `R_X86_64_RELATIVE` dynamic
//! relocations for a loader to apply. A flat binary has no loader, so the link must resolve
//! every address itself; `--no-pie` (given after rustc's own `-pie`, and the last one wins in
//! lld) makes lld produce an `ET_EXEC` with all relocations applied. The Rust code stays
//! compiled position-independent, which is harmless: it is simply linked at a fixed address.
//! This keeps a plain `cargo build -p test-guests --target x86_64-unknown-none --release`
//! working: no RUSTFLAGS and no `.cargo/config.toml` entry (which would apply to the kernel,
//! a PIE the bootloader relocates, as well).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
