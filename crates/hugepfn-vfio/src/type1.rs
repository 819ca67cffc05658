//! vfio type1: `VFIO_IOMMU_MAP_DMA` / `VFIO_IOMMU_UNMAP_DMA` of BAR mappings through an IOMMU.
//!
//! Models `drivers/vfio/vfio_iommu_type1.c` (TYPE1v2 semantics, one IOMMU domain per
//! container) for PFNMAP memory:
//!
//! - `vfio_dma_do_map`: `-EINVAL` for a zero size, an `iova`/`vaddr`/`size` not aligned to the
//!   smallest IOMMU page, a wrapping range, or a range outside the valid IOVA list (the
//!   domain's aperture minus the x86 MSI window); `-EEXIST` when `vfio_find_dma` finds an
//!   overlapping mapping; `-ENOSPC` when `dma_avail` (the `dma_entry_limit`) is used up.
//! - `vfio_pin_map_dma` → `vfio_pin_pages_remote` → `vaddr_get_pfns`: each *round* first tries
//!   `pin_user_pages_remote(FOLL_LONGTERM)` (refused with `-EFAULT` on VM_IO|VM_PFNMAP by
//!   `check_vma_flags`), then `vma_lookup` and `follow_fault_pfn`: `follow_pfnmap_start`; on a
//!   miss `fixup_user_fault` and `follow_pfnmap_start` again; `-EFAULT` when the write is not
//!   allowed or the pfn is not an invalid/reserved (non-RAM) pfn. A round returns one page
//!   ([`PfnLookup::PerPage`], Linux before 6.15) or, with `addr_mask` (6.15+, 0fd06844de5d,
//!   [`PfnLookup::Batched`]), `min(npages, epfn - pfn)` with
//!   `epfn = (pfn | (~addr_mask >> PAGE_SHIFT)) + 1`: the rest of the host leaf.
//!   `vfio_pin_pages_remote` keeps going while the pfns stay contiguous; the physically
//!   contiguous run is handed to `vfio_iommu_map` → `iommu_map`, which picks the largest IOMMU
//!   pages alignment and the capability allow ([`crate::iommu`]). A failure anywhere removes
//!   the whole new `vfio_dma` (what it mapped is unmapped) and leaves every other one alone.
//! - `vfio_dma_do_unmap` (v2): `-EINVAL` for an unaligned or wrapping range or one that
//!   bisects a mapping; removes every mapping inside and returns the bytes unmapped (0 if none).
//!
//! Nothing here is told when the CPU mapping of the BAR goes away (revoke, munmap): as in
//! Linux, type1 holds no reference on PFNMAP pfns and registers no MMU notifier, so the IOMMU
//! keeps translating to the BAR until `UNMAP_DMA`.
//!
//! Deliberate differences: `pin_user_pages_remote` is modelled by checking the VMA flags under
//! the mmap read lock (what `check_vma_flags` does) instead of calling
//! [`hugepfn_mm::Mm::get_user_pages`], which copies the VMA; page-backed (RAM) DMA is outside
//! the model and fails with `-EFAULT`; the model's `fixup_user_fault` takes the mmap lock
//! itself, so `vaddr_get_pfns` drops it around the fixup and looks the VMA up again (the
//! kernel's "unlocked → -EAGAIN → retry" path); locked-memory accounting is not modelled.

use std::collections::BTreeMap;
use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hugepfn_mm::addr::{IoVirtAddr, PAGE_SHIFT, PagingMode, VirtAddr};
use hugepfn_mm::{LeafCounts, Mm, Pfn, VmFlags};
use hugepfn_pt::EncodeError;
use serde::Serialize;
use thiserror::Error;

use crate::iommu::{CapReg, IommuDomain, IommuError, IommuProt};

/// `dma_entry_limit` default (`U16_MAX`): mappings per container.
pub const DMA_ENTRY_LIMIT: u32 = u16::MAX as u32;

/// The x86 MSI window the IOMMU reserves (`IOMMU_RESV_MSI`, 0xfee00000..=0xfeefffff): never a
/// valid IOVA for `MAP_DMA`.
pub const X86_MSI_RANGE: (IoVirtAddr, IoVirtAddr) =
    (IoVirtAddr::new(0xfee0_0000), IoVirtAddr::new(0xfeef_ffff));

/// The software-managed MSI window the arm SMMU (v2 and v3) reserves in every domain
/// (`IOMMU_RESV_SW_MSI` at `MSI_IOVA_BASE` 0x8000000, `MSI_IOVA_LENGTH` 0x100000;
/// `arm_smmu_get_resv_regions`), which type1 takes out of the valid IOVA list
/// (`vfio_iommu_resv_exclude`). The arm64 lab found `MAP_DMA` at 0xfee00000 accepted there.
pub const ARM_SMMU_SW_MSI_RANGE: (IoVirtAddr, IoVirtAddr) =
    (IoVirtAddr::new(0x0800_0000), IoVirtAddr::new(0x080f_ffff));

/// The MSI window the IOMMU of a machine of `arch` reserves: Intel VT-d's on x86-64, the arm
/// SMMU's on arm64; `None` on riscv, whose IOMMU driver's reserved regions are not read here.
pub fn reserved_msi_range(arch: hugepfn_mm::Arch) -> Option<(IoVirtAddr, IoVirtAddr)> {
    use hugepfn_mm::Arch;
    match arch {
        Arch::X86_64 | Arch::X86_64_5Level => Some(X86_MSI_RANGE),
        Arch::Arm64 | Arch::Arm64_16k | Arch::Arm64_64k => Some(ARM_SMMU_SW_MSI_RANGE),
        _ => None,
    }
}

/// How `vaddr_get_pfns` walks a PFNMAP range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum PfnLookup {
    /// Linux 6.15+: one `follow_pfnmap_start` per host leaf, through `addr_mask`.
    #[default]
    Batched,
    /// Before 6.15: one `follow_pfnmap_start` per 4 KiB page.
    PerPage,
}

/// A `VFIO_IOMMU_MAP_DMA` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapRequest {
    /// Process virtual address of the buffer (the BAR mapping).
    pub vaddr: UserAddr,
    /// I/O virtual address.
    pub iova: IoVirtAddr,
    /// Bytes.
    pub size: u64,
    /// `VFIO_DMA_MAP_FLAG_READ`: the device may read.
    pub read: bool,
    /// `VFIO_DMA_MAP_FLAG_WRITE`: the device may write.
    pub write: bool,
    /// Which `vaddr_get_pfns`.
    pub lookup: PfnLookup,
}

impl DmaMapRequest {
    /// Read and write, as QEMU maps a BAR.
    pub fn rw(vaddr: UserAddr, iova: IoVirtAddr, size: u64, lookup: PfnLookup) -> Self {
        DmaMapRequest {
            vaddr,
            iova,
            size,
            read: true,
            write: true,
            lookup,
        }
    }
}

/// Work counters of `MAP_DMA` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DmaCounters {
    /// `vaddr_get_pfns` rounds: one `follow_pfnmap` lookup each (a miss adds a fixup and a
    /// second `follow_pfnmap_start`).
    pub lookups: u64,
    /// `pin_user_pages_remote` attempts (all refused on PFNMAP).
    pub gup_attempts: u64,
    /// `follow_pfnmap_start` calls.
    pub follow_calls: u64,
    /// `fixup_user_fault` calls (the BAR was not mapped in the CPU page tables yet).
    pub fixups: u64,
    /// `vfio_iommu_map` calls: one per physically contiguous run.
    pub iommu_maps: u64,
    /// IOMMU leaves written, by size.
    pub entries: LeafCounts,
}

impl DmaCounters {
    fn add(&mut self, o: &DmaCounters) {
        self.lookups += o.lookups;
        self.gup_attempts += o.gup_attempts;
        self.follow_calls += o.follow_calls;
        self.fixups += o.fixups;
        self.iommu_maps += o.iommu_maps;
        self.entries.pud += o.entries.pud;
        self.entries.pmd += o.entries.pmd;
        self.entries.pte += o.entries.pte;
    }
}

/// What one `MAP_DMA` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DmaMapStats {
    /// Work done (also when it failed: what was done before the failure).
    pub counters: DmaCounters,
    /// Wall time of the ioctl.
    pub elapsed: Duration,
}

/// What one `UNMAP_DMA` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DmaUnmapStats {
    /// Bytes unmapped (`unmap->size` on return).
    pub bytes: u64,
    /// `vfio_dma` entries removed.
    pub dmas: u64,
    /// IOMMU leaves cleared.
    pub entries: LeafCounts,
}

/// Why `MAP_DMA`/`UNMAP_DMA` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Type1Error {
    /// `-EINVAL`: a zero size, an unaligned or wrapping range, an IOVA outside the valid
    /// ranges, an unmap that bisects a mapping, no permission bits.
    #[error("invalid argument: {0}")]
    Inval(String),
    /// `-EEXIST`: the IOVA range overlaps an existing mapping.
    #[error(
        "iova range {iova:#x}+{size:#x} overlaps the mapping at {existing_iova:#x}+{existing_size:#x}"
    )]
    Exist {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
        /// The mapping it overlaps.
        existing_iova: u64,
        /// Its size.
        existing_size: u64,
    },
    /// `-EFAULT`: the buffer could not be resolved to pfns.
    #[error("vaddr {vaddr:#x}: {reason}")]
    Fault {
        /// The address that failed.
        vaddr: u64,
        /// Why.
        reason: String,
    },
    /// `-ENOSPC`: `dma_entry_limit` reached.
    #[error("no room for another mapping ({0} in use)")]
    NoSpace(u32),
    /// The IOMMU refused (`iommu_map`).
    #[error(transparent)]
    Iommu(#[from] IommuError),
}

impl Type1Error {
    /// The errno name the ioctl returns.
    pub fn errno_name(&self) -> &'static str {
        match self {
            Type1Error::Inval(_) => "EINVAL",
            Type1Error::Exist { .. } => "EEXIST",
            Type1Error::Fault { .. } => "EFAULT",
            Type1Error::NoSpace(_) => "ENOSPC",
            Type1Error::Iommu(e) => e.errno_name(),
        }
    }
}

/// `struct vfio_dma`: one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VfioDma {
    /// First IOVA.
    pub iova: IoVirtAddr,
    /// Process address it came from.
    pub vaddr: UserAddr,
    /// Bytes.
    pub size: u64,
    /// Device permissions.
    #[serde(skip)]
    pub prot: IommuProt,
}

#[derive(Debug, Default)]
struct Inner {
    dma_list: BTreeMap<u64, VfioDma>,
    dma_avail: u32,
}

/// A type1 container (`struct vfio_iommu`) with one IOMMU domain, owned by the process `mm`.
pub struct VfioIommu {
    mm: Arc<Mm>,
    domain: Arc<IommuDomain>,
    /// `iommu->lock`.
    inner: Mutex<Inner>,
    totals: Mutex<DmaCounters>,
}

impl std::fmt::Debug for VfioIommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioIommu")
            .field("domain", &self.domain)
            .field("dmas", &self.lock().dma_list.len())
            .finish_non_exhaustive()
    }
}

fn fault(vaddr: u64, reason: impl Into<String>) -> Type1Error {
    Type1Error::Fault {
        vaddr,
        reason: reason.into(),
    }
}

impl VfioIommu {
    /// `VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)` on a container opened by the process `mm`, with a
    /// group behind an IOMMU whose capability register is `cap`.
    pub fn new(mm: Arc<Mm>, cap: CapReg) -> Result<Self, Type1Error> {
        let domain = IommuDomain::new(mm.page_tables().phys().clone(), cap)?;
        Ok(VfioIommu {
            mm,
            domain,
            inner: Mutex::new(Inner {
                dma_list: BTreeMap::new(),
                dma_avail: DMA_ENTRY_LIMIT,
            }),
            totals: Mutex::new(DmaCounters::default()),
        })
    }

    /// The IOMMU domain.
    pub fn domain(&self) -> &Arc<IommuDomain> {
        &self.domain
    }

    /// The owner's address space.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }

    /// The mappings now, by IOVA.
    pub fn dmas(&self) -> Vec<VfioDma> {
        self.lock().dma_list.values().copied().collect()
    }

    /// Work counters of every `MAP_DMA` so far (successful or not).
    pub fn totals(&self) -> DmaCounters {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// IOMMU leaves mapped now.
    pub fn iommu_entries(&self) -> LeafCounts {
        self.domain.leaves()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `iommu->pgsize_bitmap`'s smallest page (`1 << __ffs(pgsize_bitmap)`), after
    /// `vfio_update_pgsize_bitmap` hid the IOMMU's sizes below `PAGE_SIZE` and offered
    /// `PAGE_SIZE` instead: with 16 KiB pages a 4 KiB map is refused (measured on Debian's
    /// arm64-16k kernels: `lab-dma-map-partial-bar`).
    fn min_pgsize(&self) -> u64 {
        let iommu = 1u64 << self.domain.pgsize_bitmap().trailing_zeros();
        iommu.max(self.mm.page_size())
    }

    /// `vfio_iommu_iova_dma_valid`: `[start, end]` inside one valid IOVA range (the aperture
    /// minus the reserved MSI window of the machine, [`reserved_msi_range`]).
    fn iova_valid(&self, start: u64, end: u64) -> bool {
        end <= self.domain.aperture_end()
            && reserved_msi_range(self.mm.config().arch)
                .is_none_or(|(msi_lo, msi_hi)| end < msi_lo.as_u64() || start > msi_hi.as_u64())
    }

    /// `vfio_find_dma`: a mapping overlapping `[start, start + size)`.
    fn find_dma(inner: &Inner, start: u64, size: u64) -> Option<VfioDma> {
        let end = start.saturating_add(size.max(1));
        inner
            .dma_list
            .range(..end)
            .next_back()
            .map(|(_, d)| *d)
            .filter(|d| d.iova.as_u64().saturating_add(d.size) > start)
    }

    /// `VFIO_IOMMU_MAP_DMA`. On success the range is mapped in the IOMMU; on failure nothing
    /// of it is, and every earlier mapping is untouched.
    pub fn map_dma(&self, req: DmaMapRequest) -> (DmaMapStats, Result<(), Type1Error>) {
        let mm = self.mm.clone();
        self.map_dma_as(&mm, req)
    }

    /// `VFIO_IOMMU_MAP_DMA` issued by the process `mm` (`current->mm`): the container is the
    /// one its opener set up, but `vaddr` is looked up in the caller's address space — after
    /// `fork` the child shares its parent's container (the same file), maps its own VAs into
    /// the shared IOVA space and can unmap the parent's (vfio_dma_do_map records
    /// `dma->mm = current->mm`; vfio_dma_do_unmap checks no owner).
    pub fn map_dma_as(
        &self,
        mm: &Arc<Mm>,
        req: DmaMapRequest,
    ) -> (DmaMapStats, Result<(), Type1Error>) {
        let t0 = Instant::now();
        let mut c = DmaCounters::default();
        let r = self.map_dma_inner(mm, req, &mut c);
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&c);
        (
            DmaMapStats {
                counters: c,
                elapsed: t0.elapsed(),
            },
            r,
        )
    }

    fn map_dma_inner(
        &self,
        mm: &Mm,
        req: DmaMapRequest,
        c: &mut DmaCounters,
    ) -> Result<(), Type1Error> {
        let DmaMapRequest {
            vaddr, iova, size, ..
        } = req;
        let (vaddr, iova) = (vaddr.as_u64(), iova.as_u64());
        if size == 0 {
            return Err(Type1Error::Inval("size is 0".into()));
        }
        if !req.read && !req.write {
            return Err(Type1Error::Inval(
                "neither VFIO_DMA_MAP_FLAG_READ nor WRITE".into(),
            ));
        }
        let prot = IommuProt {
            read: req.read,
            write: req.write,
            cache: true,
        };
        let mut inner = self.lock();
        let pgsize = self.min_pgsize();
        if (size | iova | vaddr) & (pgsize - 1) != 0 {
            return Err(Type1Error::Inval(format!(
                "iova {iova:#x}, vaddr {vaddr:#x} or size {size:#x} not aligned to {pgsize:#x}"
            )));
        }
        let (Some(iova_last), Some(_)) = (iova.checked_add(size - 1), vaddr.checked_add(size - 1))
        else {
            return Err(Type1Error::Inval("the range wraps".into()));
        };
        if let Some(d) = Self::find_dma(&inner, iova, size) {
            return Err(Type1Error::Exist {
                iova,
                size,
                existing_iova: d.iova.as_u64(),
                existing_size: d.size,
            });
        }
        if inner.dma_avail == 0 {
            return Err(Type1Error::NoSpace(DMA_ENTRY_LIMIT));
        }
        if !self.iova_valid(iova, iova_last) {
            return Err(Type1Error::Inval(format!(
                "iova range {iova:#x}..={iova_last:#x} is outside the valid IOVA ranges"
            )));
        }
        let dma = VfioDma {
            iova: req.iova,
            vaddr: req.vaddr,
            size,
            prot,
        };
        // vfio_pin_map_dma
        let mut mapped = 0u64;
        let result = loop {
            if mapped == size {
                break Ok(());
            }
            let (pfn, npage) = match self.pin_pages_remote(
                mm,
                vaddr + mapped,
                (size - mapped) >> PAGE_SHIFT,
                req,
                c,
            ) {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            // vfio_iommu_map
            c.iommu_maps += 1;
            let before = self.domain.leaves();
            let r = match Pfn::new(pfn) {
                Ok(p) => self.domain.iommu_map(
                    IoVirtAddr::new(iova + mapped),
                    p.phys(),
                    npage << PAGE_SHIFT,
                    prot,
                ),
                Err(_) => Err(IommuError::Encode(EncodeError::PfnTooWide(pfn))),
            };
            let after = self.domain.leaves();
            c.entries.pud += after.pud.saturating_sub(before.pud);
            c.entries.pmd += after.pmd.saturating_sub(before.pmd);
            c.entries.pte += after.pte.saturating_sub(before.pte);
            if let Err(e) = r {
                break Err(e.into());
            }
            mapped += npage << PAGE_SHIFT;
        };
        match result {
            Ok(()) => {
                inner.dma_list.insert(iova, dma);
                inner.dma_avail -= 1;
                Ok(())
            }
            Err(e) => {
                // vfio_remove_dma: unmap what this dma mapped.
                if mapped > 0 {
                    self.domain.iommu_unmap(IoVirtAddr::new(iova), mapped);
                }
                Err(e)
            }
        }
    }

    /// `vfio_pin_pages_remote`: the first pfn of `vaddr` and how many pages from it are
    /// physically contiguous (at most `npage`).
    fn pin_pages_remote(
        &self,
        mm: &Mm,
        vaddr: u64,
        npage: u64,
        req: DmaMapRequest,
        c: &mut DmaCounters,
    ) -> Result<(u64, u64), Type1Error> {
        let mut pinned = 0u64;
        let mut pfn_base: Option<u64> = None;
        let mut npage = npage;
        let mut va = vaddr;
        while npage > 0 {
            let (pfn, ret) = self.vaddr_get_pfns(mm, va, npage, req, c)?;
            let base = *pfn_base.get_or_insert(pfn);
            if pfn != base + pinned {
                break;
            }
            pinned += ret;
            npage -= ret;
            va += ret << PAGE_SHIFT;
        }
        Ok((pfn_base.unwrap_or_default(), pinned))
    }

    /// `vaddr_get_pfns(mm, vaddr, npages, prot, &pfn, batch)` for PFNMAP memory: the pfn of
    /// `vaddr` and how many pages from it this round covers.
    fn vaddr_get_pfns(
        &self,
        mm: &Mm,
        vaddr: u64,
        npages: u64,
        req: DmaMapRequest,
        c: &mut DmaCounters,
    ) -> Result<(u64, u64), Type1Error> {
        c.lookups += 1;
        let write = req.write;
        let mut fixed_up = false;
        loop {
            let g = mm.mmap_read();
            // pin_user_pages_remote(FOLL_LONGTERM): check_vma_flags refuses VM_IO|VM_PFNMAP.
            c.gup_attempts += 1;
            let Some(vma) = g.find_vma(UserAddr::new(vaddr)) else {
                return Err(fault(vaddr, "no VMA maps the address"));
            };
            if !vma.flags.contains(VmFlags::PFNMAP) {
                return Err(fault(
                    vaddr,
                    "not a VM_PFNMAP mapping (page-backed DMA is outside this model)",
                ));
            }
            // follow_fault_pfn
            c.follow_calls += 1;
            // (a vaddr checked canonical for the widest mode; the mm checks its own range)
            let found = VirtAddr::new(vaddr, PagingMode::Level5)
                .map_err(hugepfn_mm::MmError::from)
                .and_then(|va| g.follow_pfnmap_start(va))
                .map(|f| {
                    let args = f.args;
                    f.end();
                    args
                });
            drop(g);
            match found {
                Ok(args) => {
                    if write && !args.writable {
                        return Err(fault(vaddr, "write wanted but the mapping is read-only"));
                    }
                    let pfn = args.pfn.as_u64();
                    if !self.is_invalid_reserved_pfn(pfn) {
                        return Err(fault(vaddr, "the pfn is RAM, not a reserved/MMIO pfn"));
                    }
                    let ret = match req.lookup {
                        // one PAGE_SIZE page: 4, 16 frames with 16, 64 KiB pages
                        PfnLookup::PerPage => (mm.page_size() >> PAGE_SHIFT).min(npages),
                        PfnLookup::Batched => {
                            let epfn = (pfn | (!args.addr_mask >> PAGE_SHIFT)) + 1;
                            npages.min(epfn - pfn)
                        }
                    };
                    return Ok((pfn, ret));
                }
                Err(_) if !fixed_up => {
                    c.fixups += 1;
                    fixed_up = true;
                    mm.fixup_user_fault(UserAddr::new(vaddr), write).map_err(|e| {
                        fault(
                            vaddr,
                            format!(
                                "fixup_user_fault: {e} (memory decode off, device in D3hot, or the access is not allowed)"
                            ),
                        )
                    })?;
                }
                Err(e) => return Err(fault(vaddr, format!("follow_pfnmap_start: {e}"))),
            }
        }
    }

    /// `is_invalid_reserved_pfn`: no `struct page` (not RAM) or a reserved page.
    fn is_invalid_reserved_pfn(&self, pfn: u64) -> bool {
        let cfg = self.mm.page_tables().phys().config();
        let first = cfg.ram_base >> PAGE_SHIFT;
        // RAM frames are the machine's pages; pfns count 4 KiB frames
        let frames = cfg.ram_frames << (cfg.granule.page_shift() - PAGE_SHIFT);
        !(first..first + frames).contains(&pfn)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` (v2): every mapping inside `[iova, iova + size)`; a range that
    /// bisects a mapping is `-EINVAL`.
    pub fn unmap_dma(&self, iova: IoVirtAddr, size: u64) -> Result<DmaUnmapStats, Type1Error> {
        let iova = iova.as_u64();
        let mut inner = self.lock();
        let pgsize = self.min_pgsize();
        if size == 0 || (iova | size) & (pgsize - 1) != 0 {
            return Err(Type1Error::Inval(format!(
                "iova {iova:#x} or size {size:#x} is zero or not aligned to {pgsize:#x}"
            )));
        }
        let Some(last) = iova.checked_add(size - 1) else {
            return Err(Type1Error::Inval("the range wraps".into()));
        };
        if let Some(d) = Self::find_dma(&inner, iova, 1)
            && d.iova.as_u64() != iova
        {
            return Err(Type1Error::Inval(format!(
                "the range starts inside the mapping at {:#x}",
                d.iova
            )));
        }
        if let Some(d) = Self::find_dma(&inner, last, 1)
            && d.iova.as_u64() + d.size != last + 1
        {
            return Err(Type1Error::Inval(format!(
                "the range ends inside the mapping at {:#x}",
                d.iova
            )));
        }
        let keys: Vec<u64> = inner.dma_list.range(iova..=last).map(|(k, _)| *k).collect();
        let mut st = DmaUnmapStats::default();
        for k in keys {
            if let Some(d) = inner.dma_list.remove(&k) {
                let u = self.domain.iommu_unmap(d.iova, d.size);
                st.bytes += d.size;
                st.dmas += 1;
                st.entries.pud += u.leaves.pud;
                st.entries.pmd += u.leaves.pmd;
                st.entries.pte += u.leaves.pte;
                inner.dma_avail += 1;
            }
        }
        Ok(st)
    }
}

impl Drop for VfioIommu {
    /// `vfio_iommu_type1_release` → `vfio_iommu_unmap_unpin_all`.
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for d in std::mem::take(&mut inner.dma_list).into_values() {
            self.domain.iommu_unmap(d.iova, d.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepfn_mm::Arch;

    #[test]
    fn the_reserved_msi_window_is_the_machines_iommu_s() {
        assert_eq!(
            reserved_msi_range(Arch::X86_64).map(|(a, b)| (a.as_u64(), b.as_u64())),
            Some((0xfee0_0000, 0xfeef_ffff))
        );
        assert_eq!(reserved_msi_range(Arch::X86_64_5Level), Some(X86_MSI_RANGE));
        assert_eq!(
            reserved_msi_range(Arch::Arm64).map(|(a, b)| (a.as_u64(), b.as_u64())),
            Some((0x0800_0000, 0x080f_ffff))
        );
        assert_eq!(reserved_msi_range(Arch::Riscv64Sv48), None);
    }
}
