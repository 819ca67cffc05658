//! The I/O page table of one IOMMU domain, in Intel VT-d second-level format.
//!
//! Models `drivers/iommu/intel/iommu.c` and `iommu.h` as vfio type1 uses them:
//! the second-level entry (`DMA_PTE_READ` bit 0, `DMA_PTE_WRITE` bit 1, `DMA_PTE_LARGE_PAGE`
//! bit 7 = PS, `DMA_PTE_SNP` bit 11, address bits 12..51; a non-leaf entry is the next table's
//! address with R and W set), the capability register fields that decide the superpage sizes
//! and the address width (`cap_super_page_val` = SLLPS bits 34..37, `cap_sagaw` bits 8..12,
//! `cap_mgaw` bits 16..21; `domain_update_iommu_superpage` → `iommu_superpage`),
//! `__domain_mapping` with `hardware_largepage_caps` (the largest superpage that the IOVA and
//! physical alignment, the remaining length and the capability allow), `pfn_to_dma_pte`
//! (allocating tables on the way down), `intel_iommu_unmap` → `domain_unmap` (a large page
//! partly inside the range is unmapped whole — "the horrid API" — and tables wholly inside the
//! range are freed), `intel_iommu_iova_to_phys`, and the iommu core's `iommu_map` →
//! `__iommu_map` → `iommu_pgsize` (split a range into the largest page sizes of the domain's
//! `pgsize_bitmap` that alignment allows; undo what was mapped when a step fails).
//!
//! The tables live in the same simulated physical memory as the CPU page tables
//! ([`PhysMem::alloc_table`], [`PhysMem::table`], [`PhysMem::free_table`]), so
//! [`PhysMem::leak_check`] sees a domain that was not torn down. Table pages are accounted with
//! the [`Level`] of the entries they hold (`Pte` = 4 KiB entries, …, `P4d` = 512 GiB entries).
//!
//! Deliberate differences: one mutex serialises map and unmap (the driver relies on cmpxchg and
//! on callers not racing on the same IOVA); mapping over a present entry fails with
//! [`IommuError::Busy`] where the driver prints "DMA PTE already set", WARNs and keeps the old
//! entry; the IOTLB is not modelled beyond counting flushes; snooping (`DMA_PTE_SNP`) is set only
//! when the caller asks for it and the domain forces it.

use std::sync::Arc;

use hugepfn_mm::sync::{Mutex, MutexGuard};

use hugepfn_mm::addr::IoVirtAddr;
use hugepfn_mm::phys::ENTRIES;
use hugepfn_mm::{LeafCounts, Level, Pfn, PhysAddr, PhysMem};
use hugepfn_pt::format::vtd::{Vtd, VtdLeaf};
use hugepfn_pt::{AtomicLeafCounts, EncodeError, Entry, Format, Slot, Step, Tree, WalkError};
use thiserror::Error;

pub use hugepfn_pt::format::vtd::{IommuProt, bits};

/// The VT-d capability register (`CAP_REG`), as far as page tables are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapReg(pub u64);

impl CapReg {
    /// SLLPS bit for 2 MiB second-level superpages.
    pub const SLLPS_2M: u64 = 1 << 0;
    /// SLLPS bit for 1 GiB second-level superpages.
    pub const SLLPS_1G: u64 = 1 << 1;
    /// SAGAW bit: 3-level tables (39-bit AGAW).
    pub const SAGAW_3LEVEL: u64 = 1 << 1;
    /// SAGAW bit: 4-level tables (48-bit AGAW).
    pub const SAGAW_4LEVEL: u64 = 1 << 2;
    /// SAGAW bit: 5-level tables (57-bit AGAW).
    pub const SAGAW_5LEVEL: u64 = 1 << 3;

    /// Encodes the fields this model reads: `sllps` (bits 34..37), `sagaw` (bits 8..12),
    /// `mgaw` (the maximum guest address width in bits, stored minus one in bits 16..21).
    pub const fn new(sllps: u64, sagaw: u64, mgaw: u32) -> CapReg {
        let mgaw_field = (mgaw.saturating_sub(1) as u64) & 0x3f;
        CapReg(((sllps & 0xf) << 34) | ((sagaw & 0x1f) << 8) | (mgaw_field << 16))
    }

    /// A current server IOMMU: 2 MiB and 1 GiB superpages, 4-level tables, 48-bit MGAW.
    pub const SERVER: CapReg = CapReg::new(
        CapReg::SLLPS_2M | CapReg::SLLPS_1G,
        CapReg::SAGAW_4LEVEL,
        48,
    );

    /// An IOMMU with 2 MiB superpages only.
    pub const ONLY_2M: CapReg = CapReg::new(CapReg::SLLPS_2M, CapReg::SAGAW_4LEVEL, 48);

    /// An IOMMU without superpages (4 KiB entries only).
    pub const NO_SUPERPAGES: CapReg = CapReg::new(0, CapReg::SAGAW_4LEVEL, 48);

    /// `cap_super_page_val(c)`: the SLLPS field.
    pub const fn super_page_val(self) -> u64 {
        (self.0 >> 34) & 0xf
    }

    /// `cap_sagaw(c)`.
    pub const fn sagaw(self) -> u64 {
        (self.0 >> 8) & 0x1f
    }

    /// `cap_mgaw(c)`: maximum guest address width in bits.
    pub const fn mgaw(self) -> u32 {
        (((self.0 >> 16) & 0x3f) + 1) as u32
    }

    /// `domain_update_iommu_superpage`: `fls(cap_super_page_val & 0x3)`: 0 = none, 1 = 2 MiB,
    /// 2 = 2 MiB and 1 GiB.
    pub const fn iommu_superpage(self) -> u32 {
        let v = self.super_page_val() & 0x3;
        64 - v.leading_zeros()
    }
}

impl Default for CapReg {
    fn default() -> Self {
        CapReg::SERVER
    }
}

/// Why the IOMMU refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IommuError {
    /// `iova`, `paddr` or `size` not aligned to the smallest page size, or a zero size
    /// (`-EINVAL` from `__iommu_map`).
    #[error("iova {iova:#x}, paddr {paddr:#x}, size {size:#x} not aligned to {min_pagesz:#x}")]
    Unaligned {
        /// IOVA.
        iova: u64,
        /// Physical address.
        paddr: u64,
        /// Size.
        size: u64,
        /// The smallest page size of the domain.
        min_pagesz: u64,
    },
    /// The range ends beyond the domain's address width (`-EFAULT` from `intel_iommu_map`).
    #[error("iova range ends at {end:#x}, beyond the domain's {width}-bit address width")]
    OutOfAperture {
        /// End of the range.
        end: u64,
        /// Address width in bits.
        width: u32,
    },
    /// Something is already mapped at `iova` ("DMA PTE for vPFN already set").
    #[error("iova {0:#x} is already mapped")]
    Busy(u64),
    /// The tables could not be allocated (`-ENOMEM`).
    #[error("out of memory for IOMMU page tables")]
    NoMemory,
    /// A leaf that the format cannot hold (a physical address past 52 bits).
    #[error("cannot encode the IOMMU leaf: {0}")]
    Encode(EncodeError),
    /// The walk met an entry the driver never writes (a non-present entry with stray bits).
    #[error("IOMMU page-table walk: {0}")]
    Walk(WalkError),
    /// A table pointer names no table: the domain's tree is corrupt.
    #[error("IOMMU table pointer {0} names no table: the tree is corrupt")]
    Corrupt(PhysAddr),
    /// The capability register names no table depth this model supports.
    #[error("CAP_REG {0:#x}: SAGAW supports neither 3-, 4- nor 5-level tables")]
    UnsupportedCap(u64),
}

impl IommuError {
    /// The errno the kernel returns.
    pub fn errno_name(&self) -> &'static str {
        match self {
            IommuError::Unaligned { .. }
            | IommuError::UnsupportedCap(_)
            | IommuError::Encode(_) => "EINVAL",
            IommuError::OutOfAperture { .. } => "EFAULT",
            IommuError::Busy(_) => "EBUSY",
            IommuError::NoMemory => "ENOMEM",
            IommuError::Corrupt(_) | IommuError::Walk(_) => "EIO",
        }
    }
}

/// Counters of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct IommuStats {
    /// `iommu_map` calls.
    pub map_calls: u64,
    /// `ops->map_pages` calls (one per `iommu_pgsize` chunk).
    pub map_pages_calls: u64,
    /// Leaves written.
    pub leaves_written: u64,
    /// `iommu_unmap` calls.
    pub unmap_calls: u64,
    /// Leaves cleared.
    pub leaves_cleared: u64,
    /// IOTLB flushes (`iommu_iotlb_sync` after an unmap).
    pub iotlb_flushes: u64,
    /// Page-table pages allocated over the domain's life.
    pub tables_allocated: u64,
    /// Page-table pages freed over the domain's life.
    pub tables_freed: u64,
}

/// What one unmap cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unmapped {
    /// Bytes unmapped (whole leaves, so possibly more than asked).
    pub bytes: u64,
    /// Leaves cleared, by size.
    pub leaves: LeafCounts,
}

/// `iommu_pgsize(domain, iova, paddr, size, &count)`: the largest page size of `bitmap` that
/// fits `size` and the alignment of `iova | paddr`, and how many of them to map before a larger
/// size becomes possible. `None` if no size fits (the kernel BUGs).
pub fn iommu_pgsize(
    bitmap: u64,
    iova: IoVirtAddr,
    paddr: PhysAddr,
    size: u64,
) -> Option<(u64, u64)> {
    pgsize_raw(bitmap, iova.as_u64(), paddr.as_u64(), size)
}

/// [`iommu_pgsize`] on raw numbers: the map loop's running addresses, which may have run past
/// the physical width (the leaf's encoding refuses them then, as the kernel's does).
fn pgsize_raw(bitmap: u64, iova: u64, paddr: u64, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    let addr_merge = paddr | iova;
    // Page sizes supported by the hardware and small enough for `size`.
    let fls_size = 63 - size.leading_zeros();
    let mut pgsizes = bitmap & genmask(fls_size);
    // Constrain the page sizes further based on the maximum alignment.
    if addr_merge != 0 {
        pgsizes &= genmask(addr_merge.trailing_zeros());
    }
    if pgsizes == 0 {
        return None;
    }
    let pgsize_idx = 63 - pgsizes.leading_zeros();
    let pgsize = 1u64 << pgsize_idx;
    let mut size = size;
    // The next bigger supported page size, if any.
    let bigger = bitmap & !genmask(pgsize_idx);
    if bigger != 0 {
        let pgsize_next = 1u64 << bigger.trailing_zeros();
        // No point trying a bigger size unless iova and paddr are equally offset in it.
        if (iova ^ paddr) & (pgsize_next - 1) == 0 {
            let offset = pgsize_next - (addr_merge & (pgsize_next - 1));
            if offset.saturating_add(pgsize_next) <= size {
                size = offset;
            }
        }
    }
    Some((pgsize, size >> pgsize_idx))
}

/// `GENMASK(h, 0)`.
fn genmask(h: u32) -> u64 {
    if h >= 63 {
        u64::MAX
    } else {
        (1u64 << (h + 1)) - 1
    }
}

/// One IOMMU domain (`struct dmar_domain`): a second-level page table (the engine's [`Tree`] in
/// the [`Vtd`] format) and its counters.
pub struct IommuDomain {
    tree: Tree<Vtd>,
    cap: CapReg,
    width: u32,
    /// Serialises map and unmap.
    lock: Mutex<()>,
    leaves: AtomicLeafCounts,
    stats: Mutex<IommuStats>,
}

impl std::fmt::Debug for IommuDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuDomain")
            .field("cap", &format_args!("{:#x}", self.cap.0))
            .field("top", &self.tree.top())
            .field("width", &self.width)
            .field("leaves", &self.leaves())
            .finish_non_exhaustive()
    }
}

impl From<WalkError> for IommuError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Oom => IommuError::NoMemory,
            WalkError::Corrupt(pa) => IommuError::Corrupt(pa),
            e => IommuError::Walk(e),
        }
    }
}

impl IommuDomain {
    /// A new, empty domain on `phys` for an IOMMU with capability register `cap`
    /// (`intel_iommu_domain_alloc_paging`: the table depth is the deepest SAGAW supports up to
    /// 4 levels, then 5; the address width is that depth's, capped by MGAW).
    pub fn new(phys: Arc<PhysMem>, cap: CapReg) -> Result<Arc<Self>, IommuError> {
        let sagaw = cap.sagaw();
        let (top, agaw_bits) = if sagaw & CapReg::SAGAW_4LEVEL != 0 {
            (Level::P4d, 48)
        } else if sagaw & CapReg::SAGAW_3LEVEL != 0 {
            (Level::Pud, 39)
        } else if sagaw & CapReg::SAGAW_5LEVEL != 0 {
            (Level::Pgd, 57)
        } else {
            return Err(IommuError::UnsupportedCap(cap.0));
        };
        let fmt = Vtd {
            top,
            force_snooping: false,
        };
        let tree = Tree::new(phys, fmt).map_err(|_| IommuError::NoMemory)?;
        Ok(Arc::new(IommuDomain {
            tree,
            cap,
            width: agaw_bits.min(cap.mgaw()),
            lock: Mutex::new(()),
            leaves: AtomicLeafCounts::default(),
            stats: Mutex::new(IommuStats::default()),
        }))
    }

    /// The capability register.
    pub fn cap(&self) -> CapReg {
        self.cap
    }

    /// Address width in bits (`dmar_domain->gaw`).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The last IOVA the domain can translate (`geometry.aperture_end`).
    pub fn aperture_end(&self) -> u64 {
        if self.width >= 64 {
            u64::MAX
        } else {
            (1u64 << self.width) - 1
        }
    }

    /// `domain->pgsize_bitmap`: 4 KiB, plus 2 MiB and 1 GiB as the superpage capability allows.
    pub fn pgsize_bitmap(&self) -> u64 {
        let mut b = Level::Pte.size();
        let sp = self.cap.iommu_superpage();
        if sp >= 1 {
            b |= Level::Pmd.size();
        }
        if sp >= 2 {
            b |= Level::Pud.size();
        }
        b
    }

    /// Physical address of the root table (what the context entry points at).
    pub fn root(&self) -> PhysAddr {
        self.tree.root()
    }

    /// Leaves mapped now, by size.
    pub fn leaves(&self) -> LeafCounts {
        self.leaves.snapshot()
    }

    /// Page-table pages held now (including the root).
    pub fn table_pages(&self) -> u64 {
        self.tree.table_counts().total()
    }

    /// Counters so far.
    pub fn stats(&self) -> IommuStats {
        let (allocated, freed) = self.tree.alloc_free_counts();
        IommuStats {
            tables_allocated: allocated,
            tables_freed: freed,
            ..*self.stats_mut()
        }
    }

    fn stats_mut(&self) -> MutexGuard<'_, IommuStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encodes a leaf (`pteval = (phys_pfn << VTD_PAGE_SHIFT) | attr`, plus
    /// `DMA_PTE_LARGE_PAGE` above 4 KiB): the [`Vtd`] format's encoding.
    pub fn encode_leaf(
        &self,
        pa: PhysAddr,
        level: Level,
        prot: IommuProt,
    ) -> Result<u64, EncodeError> {
        self.tree.format().encode_leaf(
            &VtdLeaf {
                pfn: pa.pfn(),
                prot,
            },
            level,
        )
    }

    /// `hardware_largepage_caps(domain, iov_pfn, phy_pfn, pages)`: the largest level whose
    /// alignment both pfns have, that `pages` can fill, and that the hardware supports.
    pub fn hardware_largepage_caps(&self, iov_pfn: u64, phy_pfn: u64, pages: u64) -> Level {
        let mut support = self.cap.iommu_superpage();
        let mut level = Level::Pte;
        let mut pfnmerge = iov_pfn | phy_pfn;
        let mut pages = pages;
        while support > 0 && pfnmerge & (ENTRIES as u64 - 1) == 0 {
            pages >>= 9;
            if pages == 0 {
                break;
            }
            pfnmerge >>= 9;
            match level_above(level) {
                Some(up) => level = up,
                None => break,
            }
            support -= 1;
        }
        level
    }

    /// `pfn_to_dma_pte(domain, iov_pfn, &target_level)`: the slot of the `target`-level entry
    /// for `iova`, allocating tables on the way down. `Busy` when a superpage sits above.
    fn pfn_to_dma_pte(&self, iova: u64, target: Level) -> Result<Slot, IommuError> {
        match self.tree.slot_alloc(IoVirtAddr::new(iova), target) {
            Err(WalkError::HugeAbove(_)) => Err(IommuError::Busy(iova)),
            r => Ok(r?),
        }
    }

    /// `__domain_mapping(domain, iov_pfn, phys_pfn, nr_pages, prot)`: writes leaves, each the
    /// largest [`IommuDomain::hardware_largepage_caps`] allows. Returns bytes mapped before an
    /// error, and the error.
    fn domain_mapping(
        &self,
        iova: u64,
        paddr: u64,
        size: u64,
        prot: IommuProt,
    ) -> (u64, Result<(), IommuError>) {
        let mut done = 0u64;
        let mut written = 0u64;
        let out = loop {
            if done >= size {
                break Ok(());
            }
            let (va, pa) = (iova + done, paddr + done);
            let level = self.hardware_largepage_caps(va >> 12, pa >> 12, (size - done) >> 12);
            let slot = match self.pfn_to_dma_pte(va, level) {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            match self.tree.decode(slot) {
                Entry::None | Entry::NonPresent(_) => {}
                // Room for a superpage: old small tables that map nothing are freed
                // (dma_pte_free_pagetable); anything mapped is a conflict.
                Entry::Table(t)
                    if self
                        .tree
                        .first_mapped(IoVirtAddr::new(va), IoVirtAddr::new(va + level.size()))
                        .is_none() =>
                {
                    self.tree.lock(slot).set(slot, 0);
                    self.tree
                        .free_subtree(t, level.lower().unwrap_or(Level::Pte));
                }
                Entry::Table(_) | Entry::Leaf(_) => break Err(IommuError::Busy(va)),
            }
            let raw = match Pfn::new(pa >> 12) {
                Ok(pfn) => self
                    .tree
                    .format()
                    .encode_leaf(&VtdLeaf { pfn, prot }, level),
                Err(_) => Err(EncodeError::PfnTooWide(pa >> 12)),
            };
            let raw = match raw {
                Ok(raw) => raw,
                Err(e) => break Err(IommuError::Encode(e)),
            };
            self.tree.lock(slot).set(slot, raw);
            self.leaves.add(level, 1);
            written += 1;
            done += level.size();
        };
        self.stats_mut().leaves_written += written;
        (done, out)
    }

    /// `iommu_map(domain, iova, paddr, size, prot)`: checks alignment to the smallest page
    /// size and the aperture, then maps chunk by chunk as [`iommu_pgsize`] splits the range; on
    /// failure, unmaps what this call mapped.
    pub fn iommu_map(
        &self,
        iova: IoVirtAddr,
        paddr: PhysAddr,
        size: u64,
        prot: IommuProt,
    ) -> Result<(), IommuError> {
        let (iova, paddr) = (iova.as_u64(), paddr.as_u64());
        let _g = self.guard();
        self.stats_mut().map_calls += 1;
        let bitmap = self.pgsize_bitmap();
        let min_pagesz = 1u64 << bitmap.trailing_zeros();
        if size == 0 || (iova | paddr | size) & (min_pagesz - 1) != 0 {
            return Err(IommuError::Unaligned {
                iova,
                paddr,
                size,
                min_pagesz,
            });
        }
        let end = iova
            .checked_add(size - 1)
            .ok_or(IommuError::OutOfAperture {
                end: u64::MAX,
                width: self.width,
            })?;
        if end > self.aperture_end() {
            return Err(IommuError::OutOfAperture {
                end,
                width: self.width,
            });
        }
        let mut mapped = 0u64;
        let mut result = Ok(());
        while mapped < size {
            let (va, pa) = (iova + mapped, paddr + mapped);
            let Some((pgsize, count)) = pgsize_raw(bitmap, va, pa, size - mapped) else {
                result = Err(IommuError::Unaligned {
                    iova: va,
                    paddr: pa,
                    size: size - mapped,
                    min_pagesz,
                });
                break;
            };
            self.stats_mut().map_pages_calls += 1;
            let (n, r) = self.domain_mapping(va, pa, pgsize * count, prot);
            mapped += n;
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        if result.is_err() && mapped > 0 {
            // Unroll (`iommu_unmap(domain, orig_iova, orig_size - size)`).
            self.unmap_locked(iova, mapped);
        }
        result
    }

    /// `iommu_unmap(domain, iova, size)` with the VT-d driver's semantics: every leaf
    /// intersecting the range is cleared whole; tables wholly inside the range are freed; one
    /// IOTLB flush. Returns what was cleared.
    pub fn iommu_unmap(&self, iova: IoVirtAddr, size: u64) -> Unmapped {
        let _g = self.guard();
        self.unmap_locked(iova.as_u64(), size)
    }

    fn unmap_locked(&self, iova: u64, size: u64) -> Unmapped {
        let mut out = Unmapped::default();
        if size == 0 {
            return out;
        }
        let end = iova.saturating_add(size);
        self.dma_pte_clear_level(iova, end, &mut out);
        let mut st = self.stats_mut();
        st.unmap_calls += 1;
        st.leaves_cleared += out.leaves.total();
        if out.leaves.total() > 0 {
            st.iotlb_flushes += 1;
        }
        out
    }

    /// `dma_pte_clear_level` + `dma_pte_free_level`: clears every leaf intersecting
    /// `[start, end)` whole, and frees each table whose span lies wholly inside the range once
    /// its subtree is clear.
    fn dma_pte_clear_level(&self, start: u64, end: u64, out: &mut Unmapped) {
        let (start, end) = (IoVirtAddr::new(start), IoVirtAddr::new(end));
        let r = self.tree.walk_range::<WalkError>(start, end, &mut |t, v| {
            Ok(match v.entry {
                Entry::Leaf(_) => {
                    t.lock(v.slot).set(v.slot, 0);
                    let level = v.slot.level;
                    self.leaves.sub(level, 1);
                    out.leaves.add(level, 1);
                    out.bytes += level.size();
                    Step::Next
                }
                Entry::Table(_) if !v.post => Step::Descend,
                Entry::Table(pa) if v.covered() => {
                    // The whole table is inside the range: free it (its leaves are cleared).
                    t.lock(v.slot).set(v.slot, 0);
                    t.free_subtree(pa, v.slot.level.lower().unwrap_or(Level::Pte));
                    Step::Next
                }
                _ => Step::Next,
            })
        });
        debug_assert!(r.is_ok(), "{r:?}");
    }

    /// `intel_iommu_iova_to_phys`: the physical address `iova` translates to, with the leaf's
    /// level and permissions.
    pub fn translate(&self, iova: IoVirtAddr) -> Option<(PhysAddr, Level, IommuProt)> {
        if iova.as_u64() > self.aperture_end() {
            return None;
        }
        let (leaf, slot) = self.tree.lookup(iova)?;
        let off = iova.offset_in(slot.level.size());
        let pa = PhysAddr::new(leaf.pfn.phys().as_u64() | off).ok()?;
        Some((pa, slot.level, leaf.prot))
    }

    /// `iommu_iova_to_phys`.
    pub fn iova_to_phys(&self, iova: IoVirtAddr) -> Option<PhysAddr> {
        self.translate(iova).map(|(pa, _, _)| pa)
    }

    /// The raw entry that maps `iova` and its level (for format tests).
    pub fn raw_leaf(&self, iova: IoVirtAddr) -> Option<(u64, Level)> {
        if iova.as_u64() > self.aperture_end() {
            return None;
        }
        let (_, slot) = self.tree.lookup(iova)?;
        Some((self.tree.get(slot), slot.level))
    }
}

/// The leaf level above `l` (4 KiB → 2 MiB → 1 GiB).
fn level_above(l: Level) -> Option<Level> {
    match l {
        Level::Pte => Some(Level::Pmd),
        Level::Pmd => Some(Level::Pud),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(a: u64) -> IoVirtAddr {
        IoVirtAddr::new(a)
    }

    fn pa_of(a: u64) -> PhysAddr {
        PhysAddr::new(a).expect("52-bit")
    }

    const G: u64 = 1 << 30;
    const M2: u64 = 2 << 20;
    const K4: u64 = 4096;

    fn domain(cap: CapReg) -> (Arc<PhysMem>, Arc<IommuDomain>) {
        let phys = Arc::new(PhysMem::default());
        let d = IommuDomain::new(phys.clone(), cap).expect("domain");
        (phys, d)
    }

    #[test]
    fn cap_reg_fields_round_trip() {
        let c = CapReg::SERVER;
        assert_eq!(c.super_page_val(), 0b11);
        assert_eq!(c.sagaw(), CapReg::SAGAW_4LEVEL);
        assert_eq!(c.mgaw(), 48);
        assert_eq!(c.iommu_superpage(), 2);
        assert_eq!(CapReg::ONLY_2M.iommu_superpage(), 1);
        assert_eq!(CapReg::NO_SUPERPAGES.iommu_superpage(), 0);
        // SLLPS lives in bits 34..37, SAGAW in 8..12, MGAW-1 in 16..21
        assert_eq!((CapReg::SERVER.0 >> 34) & 0xf, 0b11);
        assert_eq!((CapReg::SERVER.0 >> 8) & 0x1f, 0b00100);
        assert_eq!((CapReg::SERVER.0 >> 16) & 0x3f, 47);
        // only SLLPS bit 1 (1 GiB): fls gives 2, as domain_update_iommu_superpage computes
        assert_eq!(
            CapReg::new(CapReg::SLLPS_1G, CapReg::SAGAW_4LEVEL, 48).iommu_superpage(),
            2
        );
    }

    #[test]
    fn pgsize_bitmap_follows_the_capability() {
        assert_eq!(domain(CapReg::SERVER).1.pgsize_bitmap(), K4 | M2 | G);
        assert_eq!(domain(CapReg::ONLY_2M).1.pgsize_bitmap(), K4 | M2);
        assert_eq!(domain(CapReg::NO_SUPERPAGES).1.pgsize_bitmap(), K4);
    }

    #[test]
    fn iommu_pgsize_is_the_kernels() {
        let b = K4 | M2 | G;
        // aligned: the biggest page, as many as fit
        assert_eq!(
            iommu_pgsize(b, io(0), pa_of(0x1000_0000_0000), 32 * G),
            Some((G, 32))
        );
        // 4K-misaligned iova: 4K pages up to the next 2M boundary
        assert_eq!(
            iommu_pgsize(b, io(K4), pa_of(0x1000_0000_1000), G),
            Some((K4, 511))
        );
        // iova and paddr differently offset within 2M: 4K all the way
        assert_eq!(iommu_pgsize(b, io(0), pa_of(K4), G), Some((K4, G / K4)));
        // a 2M-aligned start, 1G boundary ahead: 2M pages up to it
        assert_eq!(
            iommu_pgsize(b, io(G - M2), pa_of(G - M2), 2 * G),
            Some((M2, 1))
        );
        assert_eq!(iommu_pgsize(b, io(0), pa_of(0), 0), None);
        assert_eq!(iommu_pgsize(K4, io(0), pa_of(0), 2048), None);
    }

    #[test]
    fn a_32g_range_is_32_superpages_in_the_real_format() {
        let (phys, d) = domain(CapReg::SERVER);
        let pa = 0x1000_0000_0000;
        d.iommu_map(io(0x4000_0000_0000 >> 6), pa_of(pa), 32 * G, IommuProt::RW)
            .expect("map");
        assert_eq!(
            d.leaves(),
            LeafCounts {
                pud: 32,
                pmd: 0,
                pte: 0
            }
        );
        let iova = 0x4000_0000_0000u64 >> 6;
        let (raw, level) = d.raw_leaf(io(iova + 5 * G + 12345)).expect("mapped");
        assert_eq!(level, Level::Pud);
        assert_eq!(raw & bits::ADDR_MASK, pa + 5 * G);
        assert_eq!(raw & 0xfff, bits::READ | bits::WRITE | bits::LARGE_PAGE);
        assert_eq!(
            d.iova_to_phys(io(iova + 5 * G + 12345)),
            Some(pa_of(pa + 5 * G + 12345))
        );
        // root + one PDPT table: 1 GiB entries need no lower tables
        assert_eq!(d.table_pages(), 2);
        let u = d.iommu_unmap(io(iova), 32 * G);
        assert_eq!((u.bytes, u.leaves.pud), (32 * G, 32));
        assert_eq!(d.leaves().total(), 0);
        // the PDPT covers 512 GiB, not wholly inside the range: it stays until teardown
        assert_eq!(d.table_pages(), 2);
        drop(d);
        assert!(phys.leak_check().is_empty());
    }

    #[test]
    fn alignment_and_capability_pick_the_leaf_size() {
        // 4K-skewed iova: 511 4K pages, then 2M pages, then 1G pages, mirrored at the end
        let (_p, d) = domain(CapReg::SERVER);
        let pa = 0x10_0000_0000 + K4;
        d.iommu_map(io(K4), pa_of(pa), 2 * G, IommuProt::RW)
            .expect("map");
        let l = d.leaves();
        assert_eq!(l.bytes(), 2 * G);
        // [4K, 2M): 511 x 4K; [2M, 1G): 511 x 2M; [1G, 2G): 1 x 1G; [2G, 2G+4K): 1 x 4K
        assert_eq!((l.pud, l.pmd, l.pte), (1, 511, 512));
        // same range on an IOMMU without 1G pages
        let (_p, d2) = domain(CapReg::ONLY_2M);
        d2.iommu_map(io(0), pa_of(0x10_0000_0000), 2 * G, IommuProt::RW)
            .expect("map");
        assert_eq!(d2.leaves().pmd, 1024);
        assert_eq!(d2.leaves().pud, 0);
        let (_p, d3) = domain(CapReg::NO_SUPERPAGES);
        d3.iommu_map(io(0), pa_of(0x10_0000_0000), 4 * M2, IommuProt::RW)
            .expect("map");
        assert_eq!(d3.leaves().pte, 2048);
        // differently offset iova and pa: 4K only
        let (_p, d4) = domain(CapReg::SERVER);
        d4.iommu_map(io(0), pa_of(0x10_0000_0000 + K4), 4 * M2, IommuProt::RW)
            .expect("map");
        assert_eq!(d4.leaves().pte, 2048);
    }

    #[test]
    fn errors_leave_existing_mappings_alone() {
        let (phys, d) = domain(CapReg::SERVER);
        d.iommu_map(io(G), pa_of(0x10_0000_0000), G, IommuProt::RW)
            .expect("map");
        // unaligned
        assert!(matches!(
            d.iommu_map(io(K4 + 1), pa_of(0), K4, IommuProt::RW),
            Err(IommuError::Unaligned { .. })
        ));
        assert!(matches!(
            d.iommu_map(io(0), pa_of(0), 0, IommuProt::RW),
            Err(IommuError::Unaligned { .. })
        ));
        // beyond 48 bits
        let e = d
            .iommu_map(io(1 << 48), pa_of(0), K4, IommuProt::RW)
            .unwrap_err();
        assert_eq!(e.errno_name(), "EFAULT");
        // overlapping the superpage: refused, and the 2M mapped before it is unrolled
        let e = d
            .iommu_map(io(G - 2 * M2), pa_of(0x20_0000_0000), 4 * M2, IommuProt::RW)
            .unwrap_err();
        assert_eq!(e, IommuError::Busy(G));
        assert_eq!(e.errno_name(), "EBUSY");
        assert_eq!(
            d.leaves(),
            LeafCounts {
                pud: 1,
                pmd: 0,
                pte: 0
            }
        );
        assert_eq!(d.iova_to_phys(io(G + 7)), Some(pa_of(0x10_0000_0007)));
        assert_eq!(d.iova_to_phys(io(G - M2)), None);
        drop(d);
        assert!(phys.leak_check().is_empty());
    }

    #[test]
    fn a_superpage_replaces_empty_small_tables_and_unmap_takes_whole_leaves() {
        let (phys, d) = domain(CapReg::SERVER);
        d.iommu_map(io(0), pa_of(0x10_0000_0000), K4, IommuProt::RW)
            .expect("4K");
        assert_eq!(d.table_pages(), 4);
        let u = d.iommu_unmap(io(0), K4);
        assert_eq!(u.leaves.pte, 1);
        // the 4K table chain stays (not wholly inside the range) ...
        assert_eq!(d.table_pages(), 4);
        // ... and is replaced by a 1G superpage
        d.iommu_map(io(0), pa_of(0x10_0000_0000), G, IommuProt::RW)
            .expect("1G");
        assert_eq!((d.leaves().pud, d.table_pages()), (1, 2));
        // unmapping 4K of a 1G leaf unmaps the whole leaf (intel_iommu_unmap)
        let u = d.iommu_unmap(io(K4), K4);
        assert_eq!((u.bytes, u.leaves.pud), (G, 1));
        assert_eq!(d.stats().iotlb_flushes, 2);
        drop(d);
        assert!(phys.leak_check().is_empty());
    }

    #[test]
    fn three_level_tables_and_bad_caps() {
        let (_p, d) = domain(CapReg::new(0b11, CapReg::SAGAW_3LEVEL, 39));
        assert_eq!(d.width(), 39);
        d.iommu_map(io(0), pa_of(0x10_0000_0000), G, IommuProt::RW)
            .expect("map");
        assert_eq!(d.leaves().pud, 1);
        assert_eq!(d.table_pages(), 1, "the 1G entry sits in the root");
        let phys = Arc::new(PhysMem::default());
        assert!(matches!(
            IommuDomain::new(phys, CapReg::new(0, 0, 48)),
            Err(IommuError::UnsupportedCap(_))
        ));
    }
}
