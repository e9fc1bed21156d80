//! A virtual machine: its guest-physical memory (host frames mapped through EPT/NPT), its
//! image loading, and the run loop that feeds every exit to the one handler in
//! `bastion_core::vm::handle_exit`.

use crate::memory;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bastion_core::config::GuestConfig;
use bastion_core::frame_alloc::FRAME_SIZE;
use bastion_core::loader::{self, Start};
use bastion_core::npt::{Format, FrameSource, NestedPageTable, PAGE_2M};
use bastion_core::vm::memmap::MemoryMap;


/// Nested page tables come from the frame allocator and are reached through the physical
/// mapping.
pub struct HostFrames;

impl FrameSource for HostFrames {
    fn alloc_table(&mut self) -> Option<u64> {
        memory::alloc_frame_zeroed()
    }
    fn free_table(&mut self, phys: u64) {
        memory::free(phys, 1);
    }
    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is a table frame owned by a NestedPageTable.
        unsafe { memory::frame_mut(phys) }
    }
}

/// A guest's RAM as the hypervisor reads it: through its nested page tables, so only what
/// the guest could reach is readable.
pub struct GuestRam(pub bastion_core::npt::NptView);

impl bastion_core::vm::guest_mem::GuestPhys for GuestRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        if (gpa & 0xfff) as usize + buf.len() > 4096 {
            return false;
        }
        match self.0.translate(&mut HostFrames, gpa) {
            Some(hpa) => {
                // SAFETY: `hpa` is guest RAM mapped by the VM's tables; reading it is harmless.
                unsafe { core::ptr::copy_nonoverlapping(memory::phys_to_virt(hpa), buf.as_mut_ptr(), buf.len()) };
                true
            }
            None => false,
        }
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) -> bool {
        if (gpa & 0xfff) as usize + buf.len() > 4096 {
            return false;
        }
        match self.0.translate(&mut HostFrames, gpa) {
            Some(hpa) => {
                // SAFETY: `hpa` is guest RAM mapped by the VM's tables: the guest's own memory.
                unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), memory::phys_to_virt(hpa), buf.len()) };
                true
            }
            None => false,
        }
    }
}

/// One contiguous piece of guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct RamChunk {
    pub gpa: u64,
    pub hpa: u64,
    pub len: u64,
}

/// A guest's files from the boot bundle.
#[derive(Debug, Clone, Copy)]
pub struct GuestFiles {
    pub kernel: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    /// A multiboot kernel's modules, in the config's order.
    pub modules: &'static [&'static [u8]],
}

pub struct Vm {
    pub ram: Vec<RamChunk>,
    pub npt: NestedPageTable,
    /// Where RAM and device memory are (what the nested tables map, what loaders report).
    pub map: MemoryMap,
    /// ASID (SVM) or VPID (VMX): tags this VM's TLB entries. Never 0 (the host's).
    pub tag: u16,
    /// Where its vCPUs start (`bastion_core::loader::prepare` decides).
    pub entry: Start,
    /// A physical UART handed to this guest (`console = "passthrough"`): its 8 ports are not
    /// intercepted.
    pub passthrough_port: Option<u16>,
}

impl Vm {
    /// Allocates the guest's RAM where its memory map puts it (below the MMIO hole, the rest
    /// from 4 GiB), in 2 MiB-aligned runs so EPT/NPT can use 2 MiB pages, maps exactly that,
    /// and loads the image. The map is the one source: what is not RAM in it stays unmapped,
    /// so a guest access there is a nested page fault (device memory or a bad access).
    pub fn new(cfg: &GuestConfig, files: GuestFiles, format: Format, tag: u16) -> Result<Vm, String> {
        // Decided before any memory is taken: an image that cannot boot costs nothing.
        let prepared = loader::prepare(cfg, files.kernel, files.initrd, files.modules).map_err(|e| format!("{e}"))?;
        let bytes = cfg.memory_mib as u64 * 1024 * 1024;
        let map = MemoryMap::new(bytes).map_err(|e| format!("{e}"))?;
        let npt = NestedPageTable::new(format, &mut HostFrames).map_err(|e| format!("{e}"))?;
        let passthrough_port = match cfg.console {
            bastion_core::config::Console::Passthrough { port } => Some(port),
            bastion_core::config::Console::Virtual => None,
        };
        let mut vm = Vm { ram: Vec::new(), npt, map, tag, entry: prepared.start, passthrough_port };
        // Every path from here returns the VM or destroys it, which counts it out.
        memory::count_vm(true);
        for region in map.ram_regions() {
            // One run if possible; otherwise 2 MiB runs (fragmented host memory still works).
            let mut gpa = region.base;
            while gpa < region.end() {
                let left = region.end() - gpa;
                let (hpa, len) = match memory::alloc_guest_ram(left / FRAME_SIZE, PAGE_2M) {
                    Some(h) => (h, left),
                    None => match memory::alloc_guest_ram(PAGE_2M.min(left) / FRAME_SIZE, PAGE_2M) {
                        Some(h) => (h, PAGE_2M.min(left)),
                        None => {
                            vm.destroy();
                            return Err(format!("out of host memory for {} MiB of guest RAM", cfg.memory_mib));
                        }
                    },
                };
                vm.ram.push(RamChunk { gpa, hpa, len });
                if let Err(e) = vm.npt.map(&mut HostFrames, gpa, hpa, len) {
                    vm.destroy();
                    return Err(format!("cannot map guest RAM: {e}"));
                }
                gpa += len;
            }
        }
        for w in &prepared.writes {
            // The plan was made from these very files and this memory map: every write has
            // its bytes and lies in RAM.
            let in_ram = vm.map.ram_regions().any(|r| r.base <= w.gpa() && w.gpa() + w.len() <= r.end());
            match (w, w.data(files.kernel, files.initrd, files.modules)) {
                (loader::Write::Zero { gpa, len }, _) if in_ram => vm.zero(*gpa, *len),
                (_, Some(data)) if in_ram => vm.write(w.gpa(), data),
                _ => {
                    vm.destroy();
                    return Err(format!("the loader's write of {} bytes at {:#x} does not fit the guest's RAM", w.len(), w.gpa()));
                }
            }
        }
        Ok(vm)
    }

    /// The host memory behind guest RAM `gpa..gpa + len`, piece by piece (one per RAM chunk it
    /// crosses): `f(offset into the range, host pointer, bytes)`. The caller checked the range
    /// is RAM.
    fn for_each_piece(&self, gpa: u64, len: u64, mut f: impl FnMut(usize, *mut u8, usize)) {
        let end = gpa + len;
        for c in &self.ram {
            let (from, to) = (gpa.max(c.gpa), end.min(c.gpa + c.len));
            if from < to {
                f((from - gpa) as usize, memory::phys_to_virt(c.hpa + (from - c.gpa)), (to - from) as usize);
            }
        }
    }

    /// Copies `data` into guest RAM at `gpa` (the caller checked the range is RAM).
    fn write(&self, gpa: u64, data: &[u8]) {
        self.for_each_piece(gpa, data.len() as u64, |at, host, n| {
            // SAFETY: `host..host + n` lies inside one chunk of the VM's own RAM, and
            // `at..at + n` inside `data`.
            unsafe { core::ptr::copy_nonoverlapping(data[at..at + n].as_ptr(), host, n) }
        });
    }

    /// Zeroes `len` bytes of guest RAM at `gpa` (the caller checked the range is RAM).
    fn zero(&self, gpa: u64, len: u64) {
        self.for_each_piece(gpa, len, |_, host, n| {
            // SAFETY: `host..host + n` lies inside one chunk of the VM's own RAM.
            unsafe { core::ptr::write_bytes(host, 0, n) }
        });
    }

    /// Applies the guest's port pass-through to an I/O bitmap of `pages` pages at `phys`.
    pub fn allow_ports(&self, phys: u64, pages: usize) {
        if let Some(port) = self.passthrough_port {
            // SAFETY: the bitmap pages belong to the vCPU being created.
            let bm = unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(phys), pages * 4096) };
            bastion_core::vm::devices::io_bitmap_allow(bm, port, 8);
        }
    }

    pub fn ram_bytes(&self) -> u64 {
        self.map.ram_bytes()
    }

    /// Frees the guest's RAM and page tables.
    pub fn destroy(self) {
        for c in &self.ram {
            memory::free_guest_ram(c.hpa, c.len / FRAME_SIZE);
        }
        self.npt.destroy(&mut HostFrames);
        memory::count_vm(false);
    }
}

