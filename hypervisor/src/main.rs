//! Bastion: a bare-metal type-1 hypervisor for x86_64. This is the kernel's entry and boot
//! sequence; each step lives in its own module.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi_tables;
mod cpu;
mod fbcon;
mod gdt;
mod interrupts;
mod ioapic;
mod lapic;
mod logger;
mod memory;
mod platform;
mod serial;
mod smp;
mod time;
mod virt;
mod vm;
mod vmm;

use bastion_core::bundle::{Bundle, CONFIG_FILE};
use bastion_core::config::{Config, Crash};
use bastion_core::exit::ExitStatus;
use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::{entry_point, BootInfo};
use log::{error, info, warn};

const BOOT_CONFIG: BootloaderConfig = {
    let mut c = BootloaderConfig::new_default();
    // All physical memory mapped at one offset: page tables, VMCS/VMCB and guest RAM are
    // reached through it without per-use mappings.
    c.mappings.physical_memory = Some(Mapping::Dynamic);
    c.kernel_stack_size = 256 * 1024;
    c
};

entry_point!(kernel_main, config = &BOOT_CONFIG);

/// Ends the run with a failure after printing why.
fn fail(what: core::fmt::Arguments) -> ! {
    error!("{what}");
    let mut r = platform::Reason::new();
    let _ = core::fmt::Write::write_fmt(&mut r, what);
    platform::exit(ExitStatus::Fail, r.as_str())
}

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    serial::init();
    // The screen console before the first line, so the whole boot log is on it.
    let screen = fbcon::init(boot_info.framebuffer.take());
    logger::init();
    gdt::init();
    interrupts::init();
    info!("Bastion {} starting", env!("CARGO_PKG_VERSION"));
    if let Some(s) = screen {
        info!("{s}");
    }

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        fail(format_args!("the bootloader did not map physical memory"));
    };
    memory::set_phys_offset(phys_offset);
    let rsdp = boot_info.rsdp_addr.into_option();
    platform::init(rsdp.map(acpi_tables::rsdp_oem_id));

    let mem = match memory::init(&boot_info.memory_regions, boot_info.ramdisk_len) {
        Ok(m) => m,
        Err(e) => fail(format_args!("memory: {e}")),
    };
    let have_trampoline = smp::reserve_trampoline();

    // The bundle first: it may change the log level and how the run ends.
    let ramdisk = match boot_info.ramdisk_addr.into_option() {
        // SAFETY: the bootloader mapped the ramdisk at this address with this length, read-only
        // data that stays mapped for the whole run.
        Some(addr) => unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) },
        None => &[],
    };
    let bundle = match Bundle::parse(ramdisk) {
        Ok(b) => b,
        Err(e) => fail(format_args!("bundle: {e}")),
    };
    let config = match bundle.config_text().map(|t| Config::parse(CONFIG_FILE, t)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => fail(format_args!("config: {e}")),
        Err(e) => fail(format_args!("bundle: {e}")),
    };
    logger::set_level(config.hypervisor.log_level.to_filter());
    platform::set_shutdown(config.hypervisor.shutdown);
    if config.hypervisor.serial_baud != bastion_core::config::SerialBaud::DEFAULT {
        info!("serial: COM1 at {} baud (serial_baud)", config.hypervisor.serial_baud.0);
        serial::set_baud(config.hypervisor.serial_baud);
    }

    let id = cpu::identify();
    let caps = virt::detect(&id);
    AP_CAPS.call_once(|| caps.clone());
    let cpus = match rsdp.map(acpi_tables::topology) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            warn!("ACPI: cannot read the MADT ({e:?}); running on the boot CPU only");
            None
        }
        None => {
            warn!("ACPI: no RSDP from the firmware; running on the boot CPU only");
            None
        }
    };

    let tsc = time::init(rsdp.and_then(acpi_tables::pm_timer));
    let online = match lapic::init_bsp() {
        Ok(()) => {
            let aps: alloc::vec::Vec<u32> = cpus.as_ref().map_or(alloc::vec::Vec::new(), |t| {
                t.cpus.iter().filter(|c| !c.is_bsp).map(|c| c.apic_id).collect()
            });
            if !have_trampoline && !aps.is_empty() {
                warn!("smp: no free page below 1 MiB for the AP trampoline");
            }
            smp::start_aps(&aps).len() + 1
        }
        Err(e) => {
            warn!("lapic: {e}; running on the boot CPU only");
            1
        }
    };

    // Console input by interrupt: COM1's IRQ 4 through the host's I/O APIC to this CPU.
    match rsdp.filter(|_| serial::present() && lapic::ready()).and_then(|r| acpi_tables::isa_route(r, 4, ioapic::pins)) {
        Some((base, r)) => {
            ioapic::route(base, &r, vmm::SERIAL_VECTOR, lapic::id() as u8);
            serial::enable_rx_interrupt();
            info!("serial: COM1 input by interrupt (IRQ 4 -> I/O APIC {base:#x} pin {}, vector {:#x})", r.pin, vmm::SERIAL_VECTOR);
        }
        None if serial::present() => info!("serial: COM1 input polled (no I/O APIC route for IRQ 4)"),
        // A machine without a serial port: the screen console (if any) shows Bastion's
        // output, guests run all the same, and nothing can be typed.
        None => {
            let to = match (fbcon::active(), serial::e9_present()) {
                (true, true) => "the screen and port 0xE9",
                (true, false) => "the screen",
                (false, true) => "port 0xE9",
                (false, false) => "nowhere",
            };
            warn!("serial: no COM1: Bastion's output goes to {to}, and nothing can be typed");
        }
    }
    info!("==== Bastion {} — x86_64 hypervisor ====", env!("CARGO_PKG_VERSION"));
    info!(
        "cpu:    {} \"{}\" family {:#x} model {:#x} stepping {}",
        id.vendor_string.as_str(),
        id.brand.as_str(),
        id.family,
        id.model,
        id.stepping
    );
    match &cpus {
        Some(t) => {
            let bsp = t.cpus.iter().find(|c| c.is_bsp).map_or(0, |c| c.apic_id);
            info!("cpus:   {} CPUs (ACPI MADT), {online} online, boot CPU APIC ID {bsp}", t.cpus.len());
        }
        None => info!("cpus:   1 CPUs (no ACPI), {online} online"),
    }
    info!(
        "memory: {} MiB usable in {} regions, {} KiB heap at start, {} MiB free",
        mem.usable_bytes >> 20,
        mem.regions,
        mem.heap_bytes >> 10,
        (memory::free_frames() * 4096) >> 20
    );
    info!("memory: {}", memory::footprint());
    info!("virt:   {caps}");
    let missing = match &caps {
        bastion_core::virt::VirtCaps::Vmx(c) => c.missing(),
        bastion_core::virt::VirtCaps::Svm(c) => c.missing(),
        bastion_core::virt::VirtCaps::None(_) => alloc::vec!["VMX or SVM"],
    };
    if !missing.is_empty() {
        warn!("virt:   cannot run guests on this CPU, it lacks: {}", missing.join(", "));
    }
    info!("clock:  TSC {tsc}");
    info!("bundle: {} files, {} bytes", bundle.files().count(), ramdisk.len());
    info!("==== boot complete ====");

    trigger_crash(config.debug.crash);

    for e in &config.guest_errors {
        error!("config: {e} (guest refused; the others still run)");
    }
    // Each guest's files from the bundle; a guest whose files are missing is not started.
    let images: alloc::vec::Vec<Option<vm::GuestFiles>> = config
        .guests
        .iter()
        .map(|g| {
            let file = |path: &str| bundle.file(path).map_err(|e| error!("guest {}: {e}; not started", g.name)).ok();
            let kernel = file(&g.kernel)?;
            let initrd = match &g.initrd {
                None => None,
                Some(path) => Some(file(path)?),
            };
            let mut modules = alloc::vec::Vec::new();
            for m in &g.modules {
                modules.push(file(&m.path)?);
            }
            // The bundle lives as long as Bastion; so does the list of a guest's modules.
            Some(vm::GuestFiles { kernel, initrd, modules: alloc::boxed::Box::leak(modules.into_boxed_slice()) })
        })
        .collect();
    match vmm::init_cpu(0, &caps) {
        Ok(()) => {
            info!("virt: hardware virtualization enabled on CPU 0");
            vmm::calibrate_timer();
            memory::mark_baseline();
            let vcpus = config.guests.iter().map(|g| g.vcpus as u64).sum();
            memory::presize_heap(config.guests.len() as u64, vcpus);
            vmm::start(&config, images, online);
            info!("memory: {}", memory::footprint());
            vmm::cpu_loop(0)
        }
        Err(e) if !config.guests.is_empty() => {
            error!("virt: cannot enable hardware virtualization: {e}; no guest can run");
            if config.hypervisor.exit_when_idle {
                platform::exit(ExitStatus::Fail, "no hardware virtualization");
            }
        }
        Err(_) => {}
    }

    if config.hypervisor.exit_when_idle {
        info!("nothing to run; exiting as configured (exit_when_idle)");
        platform::exit(ExitStatus::Pass, "");
    }
    info!("nothing to run; idling");
    cpu::halt_forever()
}

/// What the APs need to enable virtualization themselves.
static AP_CAPS: spin::Once<bastion_core::virt::VirtCaps> = spin::Once::new();

/// Where an application processor goes once it is set up (see `smp`): it enables VMX/SVM
/// for itself and joins the scheduler.
pub fn ap_main(cpu_index: usize) -> ! {
    info!("smp: CPU {cpu_index} online (APIC ID {})", lapic::id());
    let Some(caps) = AP_CAPS.get() else { cpu::halt_forever() };
    match vmm::init_cpu(cpu_index, caps) {
        Ok(()) => vmm::cpu_loop(cpu_index),
        Err(e) => {
            if !matches!(caps, bastion_core::virt::VirtCaps::None(_)) {
                warn!("virt: CPU {cpu_index} cannot enable virtualization: {e}; it stays idle");
            }
            cpu::halt_forever()
        }
    }
}

/// `[debug] crash`: fault on purpose so tests can see the crash report.
fn trigger_crash(kind: Crash) {
    if kind != Crash::None {
        warn!("debug: triggering {kind:?} as configured");
    }
    // SAFETY (all arms): each deliberately faults; the fault handler ends the run.
    unsafe {
        match kind {
            Crash::None => {}
            Crash::PageFault => {
                core::ptr::read_volatile(bastion_core::config::CRASH_PAGE_FAULT_ADDRESS as *const u64);
            }
            Crash::GeneralProtection => {
                // A non-canonical address: #GP, not #PF (SDM Vol. 3A 3.3.7.1).
                core::ptr::read_volatile(0x8000_0000_0000_0000u64 as *const u64);
            }
            Crash::InvalidOpcode => core::arch::asm!("ud2"),
            Crash::DivideError => core::arch::asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _),
            Crash::Panic => panic!("deliberate panic requested by [debug] crash"),
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::print_emergency(format_args!("\n!!! BASTION PANIC on CPU {}: {info}\n", cpu::current_id()));
    platform::exit(ExitStatus::Fail, "hypervisor panic")
}
