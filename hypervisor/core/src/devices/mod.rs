//! Device models: pure state machines fed by the exit handler, unit-tested on the host.
pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod pic8259;
pub mod pit8254;
pub mod rtc;
pub mod uart16550;
