//! The running hypervisor: guests and their vCPUs on the physical CPUs, and the serial
//! console with its monitor.
//!
//! Policy lives in `bastion_core` (scheduler, console multiplexer, exit handling, devices);
//! this module is the glue that runs it on real CPUs, one concept per file:
//! - [`percpu`]: each CPU's registration, its slice timer and the kick IPI;
//! - [`guest`]: the guest table (configuration, lifecycle state, vCPU slots, devices);
//! - [`lifecycle`]: booting, stopping, reaping and restarting guests;
//! - [`run`]: every CPU's loop — ask the scheduler, run a slice, account for how it ended;
//! - [`io`]: what an exit reaches — the guest's devices, interrupt routing, wake-ups;
//! - [`monitor`]: console input, guest output lines and the monitor's commands.
//!
//! The virtualization backends (`crate::virt`) never call into this module: they get what
//! they need (the slice timer) as arguments.

mod guest;
mod io;
mod lifecycle;
mod monitor;
mod percpu;
mod run;

pub use lifecycle::start;
pub use percpu::{calibrate_timer, init_cpu, HALT_VECTOR, KICK_VECTOR, MAX_CPUS, SERIAL_VECTOR, TIMER_VECTOR};
pub use run::cpu_loop;
