//! Device models: pure state machines fed by the exit handler, unit-tested on the host.
pub mod uart16550;
