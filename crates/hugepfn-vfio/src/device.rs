//! A vfio-pci device: regions, mmap, the huge fault handler, and revocation.
//!
//! Models `drivers/vfio/pci/vfio_pci_core.c` and `vfio_pci_config.c`:
//! `vfio_pci_core_mmap` (VM_SHARED required; offset and length inside the page-aligned BAR;
//! `VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP`; `pgprot_noncached`; no entry installed at mmap
//! time), `vfio_pci_mmap_huge_fault` as fixed upstream (align the address down to the order,
//! fall back unless the block lies in the VMA and the pfn is aligned: 09dfc8a5f2ce and
//! c1d9dac0db16), `memory_lock` taken for read in the fault and for write around revocation,
//! SIGBUS while memory decode is off or the device is in D3hot, and
//! `vfio_pci_zap_and_down_write_memory_lock` → `unmap_mapping_range` over every BAR on a
//! command-register write that clears MEMORY, on entry to D3hot, and on reset.
//!
//! [`HugeFaultLogic`] also keeps the two earlier, buggy versions of the handler, so tests can
//! show what they did (upstream.md §3.3 and §3.4).

use std::sync::Arc;

// The mm's primitives: std's, or shuttle's with the `shuttle` feature, so the shuttle suite
// schedules threads at the real `memory_lock` (tests/shuttle.rs).
use hugepfn_mm::sync::atomic::{AtomicU64, Ordering};
use hugepfn_mm::sync::{PerThreadCounter, StripedReadGuard, StripedRwLock, StripedWriteGuard};

use hugepfn_mm::error::{Errno, MmError};
use hugepfn_mm::fault::{
    FaultPath, VmFault, VmFaultResult, VmOperations, vmf_insert_pfn, vmf_insert_pfn_pmd,
    vmf_insert_pfn_pud, vmf_remap_overwrite,
};
use hugepfn_mm::mapping::{AddressSpace, UnmapMappingStats};
use hugepfn_mm::vma::{VmFlags, pgprot_noncached};
use hugepfn_mm::{FileOps, Level, MmapCtx, PAGE_SHIFT, Pfn, PhysMem};
use serde::Serialize;
use thiserror::Error;

use crate::pci::{Bar, ConfigSpace, PCI_COMMAND_MEMORY, PowerState};

/// `VFIO_PCI_OFFSET_SHIFT`: region index in the top bits of the device-fd offset.
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
/// `VFIO_PCI_ROM_REGION_INDEX`: regions below it are BARs.
pub const VFIO_PCI_ROM_REGION_INDEX: u64 = 6;

/// `VFIO_PCI_INDEX_TO_OFFSET(index)`.
pub const fn region_offset(index: u8) -> u64 {
    (index as u64) << VFIO_PCI_OFFSET_SHIFT
}

/// Which version of `vfio_pci_mmap_huge_fault` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum HugeFaultLogic {
    /// Linux 6.15+ (and 6.12.29+ stable): align the address down to the order; the block must lie
    /// in the VMA and the pfn must be order-aligned.
    #[default]
    Fixed,
    /// f9e54c3a2f5b as merged in 6.12: the *faulting address* must be order-aligned and the block
    /// end inside the VMA; the pfn is not checked (§3.3: a misaligned pfn in a 1 GiB leaf —
    /// the model refuses to encode it and SIGBUSes, where the hardware would map the wrong memory).
    V6_12,
    /// 09dfc8a5f2ce (6.13): pfn checked, address still not aligned down (§3.4: faults inside a
    /// block fall back to 4 KiB and mix sizes).
    V6_13,
}

impl From<hugepfn_kernels::HugeFaultVersion> for HugeFaultLogic {
    fn from(v: hugepfn_kernels::HugeFaultVersion) -> HugeFaultLogic {
        match v {
            hugepfn_kernels::HugeFaultVersion::Fixed => HugeFaultLogic::Fixed,
            hugepfn_kernels::HugeFaultVersion::Original => HugeFaultLogic::V6_12,
            hugepfn_kernels::HugeFaultVersion::PfnChecked => HugeFaultLogic::V6_13,
        }
    }
}

/// Why a vfio operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VfioError {
    /// Physical-memory layout problem (a BAR overlapping RAM or another device).
    #[error(transparent)]
    Phys(#[from] hugepfn_mm::phys::PhysError),
    /// No such BAR.
    #[error("device {dev} has no BAR{index}")]
    NoBar {
        /// Device.
        dev: String,
        /// Index.
        index: u8,
    },
    /// A BAR that is empty, not 4 KiB aligned, or overflows.
    #[error("BAR{index} at {phys:#x} size {size:#x} is not a valid memory BAR")]
    BadBar {
        /// Index.
        index: u8,
        /// Address.
        phys: u64,
        /// Size.
        size: u64,
    },
}

/// Counters of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Revocations (`vfio_pci_zap_bars` calls).
    pub revokes: u64,
    /// Leaves zapped by revocations.
    pub zapped_leaves: u64,
    /// Faults refused with SIGBUS by the handler.
    pub sigbus: u64,
    /// Faults that fell back to a smaller order.
    pub fallbacks: u64,
}

#[derive(Debug, Clone)]
struct State {
    config: ConfigSpace,
    power: PowerState,
}

/// A PCI device bound to vfio-pci.
#[derive(Debug)]
pub struct VfioPciDevice {
    name: String,
    bars: Vec<Bar>,
    /// `vdev->memory_lock`: config state that gates MMIO access, and revocation.
    /// Split per thread ([`StripedRwLock`]): faults on several threads take it for read
    /// without bouncing one lock word (Linux's is one `rw_semaphore`).
    memory_lock: StripedRwLock<State>,
    /// The device fd's address space (`vdev->vdev.inode->i_mapping`).
    mapping: Arc<AddressSpace>,
    logic: HugeFaultLogic,
    revokes: AtomicU64,
    zapped: AtomicU64,
    sigbus: PerThreadCounter,
    fallbacks: PerThreadCounter,
    phys: Arc<PhysMem>,
}

impl VfioPciDevice {
    /// Binds a device with these BARs, registering them as device memory in `phys`.
    pub fn new(
        phys: Arc<PhysMem>,
        name: &str,
        bars: Vec<Bar>,
        logic: HugeFaultLogic,
    ) -> Result<Arc<Self>, VfioError> {
        let mut added: Vec<String> = Vec::new();
        for b in &bars {
            let ok = b.index < 6
                && b.size > 0
                && b.phys.is_multiple_of(4096)
                && b.phys.checked_add(b.size).is_some();
            if !ok {
                for n in &added {
                    phys.remove_device_range(n);
                }
                return Err(VfioError::BadBar {
                    index: b.index,
                    phys: b.phys,
                    size: b.size,
                });
            }
            let rname = format!("{name} BAR{}", b.index);
            if let Err(e) = phys.add_device_range(&rname, b.phys, b.size.next_multiple_of(4096)) {
                for n in &added {
                    phys.remove_device_range(n);
                }
                return Err(e.into());
            }
            added.push(rname);
        }
        Ok(Arc::new(VfioPciDevice {
            name: name.to_string(),
            memory_lock: StripedRwLock::new(State {
                config: ConfigSpace::new(&bars),
                power: PowerState::D0,
            }),
            bars,
            mapping: AddressSpace::new(name),
            logic,
            revokes: AtomicU64::new(0),
            zapped: AtomicU64::new(0),
            sigbus: PerThreadCounter::default(),
            fallbacks: PerThreadCounter::default(),
            phys,
        }))
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// BARs.
    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    /// One BAR.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The device fd's address space.
    pub fn mapping(&self) -> &Arc<AddressSpace> {
        &self.mapping
    }

    /// The fault-handler version.
    pub fn logic(&self) -> HugeFaultLogic {
        self.logic
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            revokes: self.revokes.load(Ordering::Relaxed),
            zapped_leaves: self.zapped.load(Ordering::Relaxed),
            sigbus: self.sigbus.get(),
            fallbacks: self.fallbacks.get(),
        }
    }

    fn state(&self) -> StripedReadGuard<'_, State> {
        self.memory_lock.read()
    }

    fn state_mut(&self) -> StripedWriteGuard<'_, State> {
        self.memory_lock.write()
    }

    /// `__vfio_pci_memory_enabled`: D0 and MEMORY set.
    pub fn memory_enabled(&self) -> bool {
        let s = self.state();
        s.power == PowerState::D0 && s.config.memory_enabled()
    }

    /// `PCI_COMMAND` now.
    pub fn command(&self) -> u16 {
        self.state().config.command
    }

    /// `vfio_pci_zap_bars` with memory_lock held for write.
    fn zap_bars_locked(&self) -> UnmapMappingStats {
        let st = self.mapping.unmap_mapping_range(
            region_offset(0),
            region_offset(VFIO_PCI_ROM_REGION_INDEX as u8) - region_offset(0),
        );
        self.revokes.fetch_add(1, Ordering::Relaxed);
        self.zapped.fetch_add(st.zapped.total(), Ordering::Relaxed);
        st
    }

    /// A write to `PCI_COMMAND` through the config region (`vfio_basic_config_write`): clearing
    /// MEMORY first revokes every mapping of every BAR in every process.
    pub fn write_command(&self, val: u16) -> Option<UnmapMappingStats> {
        let mut s = self.state_mut();
        let was_on = s.config.memory_enabled();
        let zap = was_on && val & PCI_COMMAND_MEMORY == 0;
        let st = zap.then(|| self.zap_bars_locked());
        s.config.command = val;
        st
    }

    /// Sets or clears `PCI_COMMAND_MEMORY`, keeping the other command bits.
    pub fn set_memory_enable(&self, on: bool) -> Option<UnmapMappingStats> {
        let cmd = self.command();
        let val = if on {
            cmd | PCI_COMMAND_MEMORY
        } else {
            cmd & !PCI_COMMAND_MEMORY
        };
        self.write_command(val)
    }

    /// Firmware-style BAR register write (sizing and placement through config space).
    pub fn write_bar_register(&self, index: usize, val: u32) {
        self.state_mut().config.write_bar(index, val);
    }

    /// Reads a BAR register.
    pub fn read_bar_register(&self, index: usize) -> u32 {
        self.state().config.read_bar(index)
    }

    /// `vfio_pci_set_power_state`: entering D3hot revokes.
    pub fn set_power_state(&self, state: PowerState) -> Option<UnmapMappingStats> {
        let mut s = self.state_mut();
        let st = (state == PowerState::D3hot && s.power == PowerState::D0)
            .then(|| self.zap_bars_locked());
        s.power = state;
        st
    }

    /// `VFIO_DEVICE_RESET`: zap and take memory_lock for write, go to D0, reset the function
    /// (config state saved and restored around it, so MEMORY keeps its value).
    pub fn reset(&self) -> UnmapMappingStats {
        let mut s = self.state_mut();
        let st = self.zap_bars_locked();
        s.power = PowerState::D0;
        st
    }

    /// Opens the device fd: what `mmap` is called on.
    pub fn open(self: &Arc<Self>) -> VfioDeviceFile {
        VfioDeviceFile { dev: self.clone() }
    }

    /// `vma_to_pfn`: BAR base pfn plus the page offset inside the region.
    fn vma_to_pfn(&self, vm_pgoff: u64) -> Option<u64> {
        let index = (vm_pgoff >> (VFIO_PCI_OFFSET_SHIFT - 12)) as u8;
        let bar = self.bar(index)?;
        let low = vm_pgoff & ((1u64 << (VFIO_PCI_OFFSET_SHIFT - 12)) - 1);
        Some((bar.phys >> 12) + low)
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        for b in &self.bars {
            self.phys
                .remove_device_range(&format!("{} BAR{}", self.name, b.index));
        }
    }
}

/// An open vfio device fd.
#[derive(Debug, Clone)]
pub struct VfioDeviceFile {
    dev: Arc<VfioPciDevice>,
}

impl VfioDeviceFile {
    /// The device.
    pub fn device(&self) -> &Arc<VfioPciDevice> {
        &self.dev
    }
}

fn einval(dev: &str, reason: String) -> MmError {
    MmError::Driver {
        driver: format!("vfio-pci {dev}"),
        reason,
        errno: Errno::EINVAL,
    }
}

impl FileOps for VfioDeviceFile {
    fn name(&self) -> String {
        format!("vfio-device:{}", self.dev.name)
    }

    fn mapping(&self) -> Option<Arc<AddressSpace>> {
        Some(self.dev.mapping.clone())
    }

    /// `vfio_pci_core_mmap`.
    fn mmap(&self, ctx: &mut MmapCtx<'_>) -> Result<(), MmError> {
        let design = ctx.config().fault_path;
        let page = ctx.geometry().page_size();
        let vma = &mut *ctx.vma;
        let dev = &self.dev;
        let index = vma.pgoff >> (VFIO_PCI_OFFSET_SHIFT - 12);
        if index >= VFIO_PCI_ROM_REGION_INDEX {
            return Err(einval(
                &dev.name,
                format!(
                    "region {index} is not a BAR (offset {:#x})",
                    vma.pgoff << 12
                ),
            ));
        }
        if !vma.flags.contains(VmFlags::SHARED) {
            return Err(einval(
                &dev.name,
                "BAR mappings must be MAP_SHARED (private mmaps of a BAR are refused)".into(),
            ));
        }
        let Some(bar) = dev.bar(index as u8) else {
            return Err(einval(&dev.name, format!("BAR{index} is not mmap-capable")));
        };
        if !bar.phys.is_multiple_of(page) {
            // vfio_pci_probe_mmaps: a BAR that does not start on a page is not mmap-capable
            return Err(einval(
                &dev.name,
                format!(
                    "BAR{index} at {:#x} does not start on a {page:#x}-byte page: not mmap-capable",
                    bar.phys
                ),
            ));
        }
        // PAGE_ALIGN(pci_resource_len())
        let phys_len = bar.size.next_multiple_of(page);
        let req_start = (vma.pgoff & ((1u64 << (VFIO_PCI_OFFSET_SHIFT - 12)) - 1)) << 12;
        let req_len = vma.len();
        if req_start.checked_add(req_len).is_none_or(|e| e > phys_len) {
            return Err(einval(
                &dev.name,
                format!(
                    "offset {req_start:#x} + length {req_len:#x} is outside BAR{index} ({phys_len:#x} bytes)"
                ),
            ));
        }
        vma.page_prot = pgprot_noncached(vma.page_prot);
        vma.flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        // "vfio: Convey kvm that the vfio-pci device is wc safe" (6.10)
        vma.flags |= VmFlags::ALLOW_ANY_UNCACHED;
        if design == FaultPath::EarlyFault {
            ctx.vma.flags |= VmFlags::HUGEPFNMAP;
        }
        ctx.vma.ops = Some(Arc::new(VfioPciMmapOps {
            dev: self.dev.clone(),
            design,
        }));
        Ok(())
    }
}

/// `vfio_pci_mmap_ops`: `.fault` = `.huge_fault(vmf, 0)`, `.huge_fault` below — or, for the
/// RFC's other two designs, an early fault that picks the size itself (b), or a `.fault` that
/// remaps the largest aligned block over whatever tables the core allocated (c).
#[derive(Debug)]
pub struct VfioPciMmapOps {
    dev: Arc<VfioPciDevice>,
    design: FaultPath,
}

impl VfioPciMmapOps {
    /// `vfio_pci_mmap_huge_fault(vmf, order)`.
    fn huge_fault_impl(&self, vmf: &VmFault<'_>, order: u32) -> VmFaultResult {
        let dev = &self.dev;
        let vma = vmf.vma;
        let g = vmf.geometry();
        let size = g.page_size() << order;
        // Linux's pfns count pages, the model's 4 KiB frames: `pfn & ((1 << order) - 1)` is
        // this mask in frames.
        let pfn_mask = (size >> PAGE_SHIFT) - 1;
        let Some(base_pfn) = dev.vma_to_pfn(vma.pgoff) else {
            return VmFaultResult::Sigbus;
        };
        let fallback = |dev: &VfioPciDevice| {
            dev.fallbacks.add(1);
            VmFaultResult::Fallback
        };
        let (addr, pfn) = match dev.logic {
            HugeFaultLogic::Fixed => {
                let addr = vmf.address.align_down(size);
                let pfn = base_pfn + ((addr.as_u64().wrapping_sub(vma.start.as_u64())) >> 12);
                if order > 0 && (addr < vma.start || addr + size > vma.end || pfn & pfn_mask != 0) {
                    return fallback(dev);
                }
                (addr, pfn)
            }
            HugeFaultLogic::V6_12 | HugeFaultLogic::V6_13 => {
                let addr = vmf.address;
                let pfn = base_pfn + ((addr - vma.start) >> 12);
                if order > 0
                    && (!addr.is_aligned(size)
                        || addr.align_down(size) + size > vma.end
                        || (dev.logic == HugeFaultLogic::V6_13 && pfn & pfn_mask != 0))
                {
                    return fallback(dev);
                }
                (addr, pfn)
            }
        };
        let _ = addr;
        let s = dev.state();
        if s.power != PowerState::D0 || !s.config.memory_enabled() {
            dev.sigbus.add(1);
            return VmFaultResult::Sigbus;
        }
        let Ok(pfn) = Pfn::new(pfn) else {
            return VmFaultResult::Sigbus;
        };
        let r = match g.level_of_order(order) {
            Some(Level::Pte) => vmf_insert_pfn(vmf, vmf.address, pfn),
            Some(Level::Pmd) => vmf_insert_pfn_pmd(vmf, pfn),
            Some(Level::Pud) => vmf_insert_pfn_pud(vmf, pfn),
            _ => return fallback(dev),
        };
        drop(s);
        r
    }
}

impl VfioPciMmapOps {
    /// Design (c): the pre-6.10 style `.fault` that remaps, here with the RFC's huge
    /// `remap_pfn_range`: the largest block around the address that lies in the VMA and whose
    /// pfn is aligned, installed over whatever is there.
    fn remap_fault(&self, vmf: &VmFault<'_>) -> VmFaultResult {
        let dev = &self.dev;
        let vma = vmf.vma;
        let Some(base_pfn) = dev.vma_to_pfn(vma.pgoff) else {
            return VmFaultResult::Sigbus;
        };
        let s = dev.state();
        if s.power != PowerState::D0 || !s.config.memory_enabled() {
            dev.sigbus.add(1);
            return VmFaultResult::Sigbus;
        }
        for level in Level::LEAF_LEVELS {
            if level > vmf.pfnmap_cap().max_level() {
                continue;
            }
            let size = vmf.geometry().size(level);
            let addr = vmf.address.align_down(size);
            let pfn = base_pfn + (addr.as_u64().wrapping_sub(vma.start.as_u64()) >> PAGE_SHIFT);
            if addr >= vma.start && addr + size <= vma.end && pfn & ((size >> PAGE_SHIFT) - 1) == 0
            {
                let Ok(pfn) = Pfn::new(pfn) else {
                    return VmFaultResult::Sigbus;
                };
                return vmf_remap_overwrite(vmf, pfn, level);
            }
        }
        VmFaultResult::Sigbus
    }
}

impl VmOperations for VfioPciMmapOps {
    fn name(&self) -> &str {
        "vfio_pci_mmap_ops"
    }

    fn fault(&self, vmf: &VmFault<'_>) -> VmFaultResult {
        match self.design {
            FaultPath::RemapOverwrite => self.remap_fault(vmf),
            _ => self.huge_fault_impl(vmf, 0),
        }
    }

    fn huge_fault(&self, vmf: &VmFault<'_>, order: u32) -> VmFaultResult {
        self.huge_fault_impl(vmf, order)
    }

    fn has_huge_fault(&self) -> bool {
        self.design == FaultPath::HugeFault
    }

    fn early_fault(&self, vmf: &VmFault<'_>) -> VmFaultResult {
        if self.design != FaultPath::EarlyFault {
            return VmFaultResult::Fallback;
        }
        for level in Level::LEAF_LEVELS {
            let r = self.huge_fault_impl(vmf, vmf.geometry().order(level));
            if r != VmFaultResult::Fallback {
                return r;
            }
        }
        VmFaultResult::Fallback
    }
}
