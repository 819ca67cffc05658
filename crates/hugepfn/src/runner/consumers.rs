//! The runner's steps for the consumers of a BAR mapping: vfio type1 DMA (`dma_map`,
//! `dma_unmap`) and a KVM guest (`kvm_memslot`, `guest_touch`), and the counters they add to
//! the report (`dma_lookups`, `iommu_entries`, `ept_violations`, `ept_leaves`,
//! `mmu_invalidations`).
//!
//! The run has one type1 container with one IOMMU domain (a VT-d unit with 2 MiB and 1 GiB
//! superpages, [`CapReg::SERVER`]), set up on first use by the first process and shared by
//! its forked children, as on the kernel (the child inherits the container's file; a DMA map
//! it issues looks its `vaddr` up in its own address space). Each process gets, on first use,
//! one VM (EPT with 1 GiB pages) over its address space — what a VMM such as QEMU holds.

use std::collections::HashMap;

use hugepfn_kvm::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KvmConfig, UserMemoryRegion, Vm};
use hugepfn_mm::addr::{GuestPhysAddr, IoVirtAddr, UserAddr};
use hugepfn_scenario::{Access, Counters, DmaMode, MemslotFlag, Step, StepReport};
use hugepfn_vfio::iommu::CapReg;
use hugepfn_vfio::type1::{DmaMapRequest, PfnLookup, VfioIommu};

use super::{MAIN, ModelRun};

/// A process's consumers.
#[derive(Default)]
pub(super) struct ProcessConsumers {
    /// `vaddr_get_pfns` lookups of the DMA maps this process issued.
    dma_lookups: u64,
    vm: Option<Vm>,
}

/// Every process's consumers, by process name, and the shared type1 container.
#[derive(Default)]
pub(super) struct Consumers(HashMap<String, ProcessConsumers>, Option<VfioIommu>);

/// Cumulative consumer counters of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ConsumerCounts {
    dma_lookups: u64,
    ept_violations: u64,
    mmu_invalidations: u64,
}

impl ProcessConsumers {
    fn counts(&self) -> ConsumerCounts {
        let (ept_violations, mmu_invalidations) = self.vm.as_ref().map_or((0, 0), |v| {
            let s = v.stats();
            (s.ept_violations, s.invalidations)
        });
        ConsumerCounts {
            dma_lookups: self.dma_lookups,
            ept_violations,
            mmu_invalidations,
        }
    }
}

impl ModelRun {
    /// Runs a `dma_map`, `dma_unmap`, `kvm_memslot` or `guest_touch` step; returns its errno
    /// (if it failed) and the strides skipped (none: a guest access always happens).
    pub(super) fn consumer_step(&mut self, step: &Step) -> (Option<String>, u64) {
        let proc = step.process().unwrap_or(MAIN).to_string();
        let Some(mm) = self.process(Some(&proc)) else {
            return (Some("ESRCH".into()), 0);
        };
        // `vaddr_get_pfns`: the file's `mode`, else as the modelled kernel does it (batched by
        // `addr_mask` from 6.15 on; the corrected design batches).
        let dma_default = match self.behaviour().type1_batches() {
            Some(false) => DmaMode::PerPage,
            Some(true) | None => DmaMode::Batched,
        };
        let entry = self.consumers.0.entry(proc.clone()).or_default();
        match step {
            Step::DmaMap(d) => {
                let (va, maplen) = match self.maps.get(&d.map) {
                    Some(m) => (m.va(&proc), m.len),
                    None => return (Some("EINVAL".into()), 0),
                };
                let Some(va) = va else {
                    // The mmap failed: the address is not mapped.
                    return (Some("EFAULT".into()), 0);
                };
                let container = match &mut self.consumers.1 {
                    Some(c) => c,
                    slot @ None => match VfioIommu::new(self.mm.clone(), CapReg::SERVER) {
                        Ok(c) => slot.insert(c),
                        Err(e) => return (Some(e.errno_name().into()), 0),
                    },
                };
                let len = d.len.resolve(maplen.saturating_sub(d.offset));
                let lookup = match d.mode.unwrap_or(dma_default) {
                    DmaMode::Batched => PfnLookup::Batched,
                    DmaMode::PerPage => PfnLookup::PerPage,
                };
                let req = DmaMapRequest::rw(
                    UserAddr::new(va.wrapping_add(d.offset)),
                    IoVirtAddr::new(d.iova),
                    len,
                    lookup,
                );
                let (st, r) = container.map_dma_as(&mm, req);
                self.consumers
                    .0
                    .entry(proc.clone())
                    .or_default()
                    .dma_lookups += st.counters.lookups;
                (r.err().map(|e| e.errno_name().to_string()), 0)
            }
            Step::DmaUnmap(u) => {
                let container = match &mut self.consumers.1 {
                    Some(c) => c,
                    slot @ None => match VfioIommu::new(self.mm.clone(), CapReg::SERVER) {
                        Ok(c) => slot.insert(c),
                        Err(e) => return (Some(e.errno_name().into()), 0),
                    },
                };
                let r = container.unmap_dma(IoVirtAddr::new(u.iova), u.len);
                (r.err().map(|e| e.errno_name().to_string()), 0)
            }
            Step::KvmMemslot(k) => {
                let (va, maplen) = match self.maps.get(&k.map) {
                    Some(m) => (m.va(&proc), m.len),
                    None => return (Some("EINVAL".into()), 0),
                };
                let vm = match &entry.vm {
                    Some(v) => v,
                    None => match Vm::new(mm, KvmConfig::default()) {
                        Ok(v) => entry.vm.insert(v),
                        Err(e) => return (Some(e.errno_name().into()), 0),
                    },
                };
                let size = k.len.resolve(maplen.saturating_sub(k.offset));
                let flags = k.flags.iter().fold(0, |f, x| {
                    f | match x {
                        MemslotFlag::LogDirtyPages => KVM_MEM_LOG_DIRTY_PAGES,
                        MemslotFlag::Readonly => KVM_MEM_READONLY,
                    }
                });
                let userspace_addr = match (va, size) {
                    (_, 0) => 0,
                    (Some(va), _) => va.wrapping_add(k.offset),
                    // The mmap failed: KVM accepts any user address; the guest will fault.
                    (None, _) => 0,
                };
                // A GPA past the physical width: KVM refuses a new slot (`kvm_mmu_max_gfn`); a
                // delete (size 0) reads only its alignment.
                let guest_phys_addr = match GuestPhysAddr::new(k.gpa) {
                    Ok(g) => g,
                    Err(_) if size == 0 && k.gpa.is_multiple_of(4096) => GuestPhysAddr::default(),
                    Err(_) => return (Some("EINVAL".into()), 0),
                };
                let r = vm.set_user_memory_region(&UserMemoryRegion {
                    slot: k.slot,
                    flags,
                    guest_phys_addr,
                    memory_size: size,
                    userspace_addr: UserAddr::new(userspace_addr),
                });
                (r.err().map(|e| e.errno_name().to_string()), 0)
            }
            Step::GuestTouch(g) => {
                let vm = match &entry.vm {
                    Some(v) => v,
                    None => match Vm::new(mm, KvmConfig::default()) {
                        Ok(v) => entry.vm.insert(v),
                        Err(e) => return (Some(e.errno_name().into()), 0),
                    },
                };
                let count = g.len.div_ceil(g.stride);
                // (a guest address past the physical width is in no memslot: MMIO exits)
                let (_, r) = vm.guest_touch_raw(g.gpa, count, g.stride, g.access == Access::Write);
                (r.err().map(|e| e.errno_name().to_string()), 0)
            }
            _ => (Some("EINVAL".into()), 0),
        }
    }

    /// The consumer counters of every process now (taken before a step).
    pub(super) fn consumer_counts(&self) -> HashMap<String, ConsumerCounts> {
        self.consumers
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.counts()))
            .collect()
    }

    /// Adds process `name`'s consumer counters since `before` to `c`.
    pub(super) fn add_consumer_delta(
        &self,
        name: &str,
        before: &HashMap<String, ConsumerCounts>,
        c: &mut Counters,
    ) {
        let now = self
            .consumers
            .0
            .get(name)
            .map(ProcessConsumers::counts)
            .unwrap_or_default();
        let b = before.get(name).copied().unwrap_or_default();
        c.dma_lookups += now.dma_lookups.saturating_sub(b.dma_lookups);
        c.ept_violations += now.ept_violations.saturating_sub(b.ept_violations);
        c.mmu_invalidations += now.mmu_invalidations.saturating_sub(b.mmu_invalidations);
    }

    /// Fills the step report's IOMMU and EPT leaves of process `name` (zero when it has no
    /// container or VM: the model can see that nothing is mapped).
    pub(super) fn fill_consumer_report(&self, name: &str, rep: &mut StepReport) {
        let pc = self.consumers.0.get(name);
        let iommu = self
            .consumers
            .1
            .as_ref()
            .map(VfioIommu::iommu_entries)
            .unwrap_or_default();
        let ept = pc
            .and_then(|p| p.vm.as_ref())
            .map(Vm::ept_leaves)
            .unwrap_or_default();
        rep.iommu_entries = Some(iommu);
        rep.ept_leaves = Some(ept);
    }
}
