//! Bastion's pure logic: everything the hypervisor decides without touching hardware.
//!
//! This crate is `no_std` (with `alloc`) so the kernel links it, and it is a normal host crate
//! so `cargo test` runs its unit tests. Nothing in here executes a privileged instruction;
//! the kernel (`hypervisor/src`) feeds it values it read from the hardware and acts on the
//! answers. The host tools in `boot/` use the same code to validate what they pack.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bundle;
pub mod config;
pub mod console;
pub mod devices;
pub mod exit;
pub mod fbcon;
pub mod frame_alloc;
pub mod host_irq;
pub mod hostmem;
pub mod loader;
pub mod npt;
pub mod ring;
pub mod sched;
pub mod serial_policy;
pub mod time;
pub mod vm;
pub mod virt;
