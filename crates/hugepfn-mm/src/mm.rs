//! `struct mm_struct`: a process's VMAs, page tables, mmap lock and fault counters.
//!
//! Models `mm/mmap.c` and `mm/vma.c` (`mmap_region`, `__get_unmapped_area` with 6.12's THP
//! alignment, `arch_get_unmapped_area_topdown`, `do_vmi_munmap`, `__split_vma`, `free_pgtables`),
//! `remap_pfn_range` of `mm/memory.c` with the RFC's PUD and PMD leaves, and the CPU side of a
//! user access (walk, fault, retry).
//!
//! Deliberate differences: lengths must be page-aligned (Linux rounds `len` up silently; we refuse,
//! so no address is ever rounded behind the caller's back); a fixed mapping onto an existing one is
//! refused (`MAP_FIXED_NOREPLACE`), never silently replaced; the mmap base is fixed, not randomised,
//! so runs are reproducible.

use crate::addr::UserAddr;
use crate::sync::atomic::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use crate::sync::{StripedReadGuard, StripedRwLock, StripedWriteGuard};

use crate::addr::{PAGE_SIZE, Pfn, VirtAddr};
use crate::entry::{Pgprot, ProtFlags};
use crate::error::MmError;
use crate::fault::{
    FaultCounts, FaultFlags, FaultOutcome, FaultPath, FaultStats, ThpGate, ThpPolicy,
    VmFaultResult, access_error, handle_mm_fault_locked,
};
use crate::level::{Geometry, LeafCap, Level};
use crate::mapping::{AddressSpace, IMmapEntry};
use crate::pgtable::{Bugs, LeafCounts, PageTables, PartialHuge};
use crate::phys::{PhysError, PhysMem, TableCounts};
use crate::vma::{VmFlags, Vma, vm_get_page_prot};
use hugepfn_pt::format::cpu::Cpu;
use hugepfn_units::arch::Arch;

// A plain std atomic: shared by every shuttle execution, not part of any protocol.
static NEXT_MM_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `mmap_min_addr`.
pub const MMAP_MIN_ADDR: UserAddr = UserAddr::new(0x10000);

/// How an `Mm` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmConfig {
    /// The architecture: its page-table format, levels and user address range.
    pub arch: Arch,
    /// The largest leaf a pfnmap may have on this architecture and kernel
    /// (`ARCH_SUPPORTS_PMD_PFNMAP`, `ARCH_SUPPORTS_PUD_PFNMAP`: x86-64 PUD; arm64 PMD, having no
    /// `HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD`; riscv PUD from 7.x, 4 KiB in 6.12). Caps both the
    /// fault path and `remap_pfn_range`.
    pub pfnmap_cap: LeafCap,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp: ThpPolicy,
    /// Huge pfnmap faults ignore [`MmConfig::thp`] (Linux 6.12.115+ and 7.x; the corrected
    /// design and 6.12.95 gate them).
    pub thp_bypass_pfnmap: bool,
    /// `get_unmapped_area` pads and offset-aligns file mappings whose length is a multiple of
    /// 2 MiB, as 6.12 does (7.3 does it for anonymous mappings only).
    pub thp_align_file_mappings: bool,
    /// `mincore` walks VM_PFNMAP VMAs (7.3: `walk_page_range_vma` with `mincore_pud_entry`)
    /// instead of skipping them as holes (6.12, the corrected design).
    pub mincore_walks_pfnmap: bool,
    /// An MREMAP_FIXED move that keeps the length may span several VMAs (6.17+,
    /// d23cb648e365: `remap_move`); 6.12 and the corrected design refuse it with EFAULT.
    pub mremap_moves_multiple_vmas: bool,
    /// Largest leaf `remap_pfn_range` installs (the RFC: PUD).
    pub remap_cap: LeafCap,
    /// Top of the mmap area (`mm->mmap_base`); default: 128 MiB below `DEFAULT_MAP_WINDOW`.
    pub mmap_base: Option<UserAddr>,
    /// How drivers get to install huge leaves on fault (the RFC's three designs).
    pub fault_path: FaultPath,
    /// Known-buggy protocol variants, for the concurrency tests (empty: all fixed).
    pub bugs: crate::pgtable::Bugs,
}

impl Default for MmConfig {
    fn default() -> Self {
        MmConfig {
            arch: Arch::X86_64,
            pfnmap_cap: LeafCap::Pud,
            thp: ThpPolicy::Always,
            thp_bypass_pfnmap: false,
            thp_align_file_mappings: true,
            mincore_walks_pfnmap: false,
            mremap_moves_multiple_vmas: false,
            remap_cap: LeafCap::Pud,
            mmap_base: None,
            fault_path: FaultPath::HugeFault,
            bugs: crate::pgtable::Bugs::empty(),
        }
    }
}

/// `PROT_*` of an mmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Prot {
    /// `PROT_READ | PROT_WRITE`.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };
    /// `PROT_READ`.
    pub const R: Prot = Prot {
        read: true,
        write: false,
        exec: false,
    };
    /// `PROT_NONE`.
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
        exec: false,
    };

    /// The `VM_READ|VM_WRITE|VM_EXEC` bits.
    pub fn vm_flags(self) -> VmFlags {
        let mut f = VmFlags::empty();
        if self.read {
            f |= VmFlags::READ;
        }
        if self.write {
            f |= VmFlags::WRITE;
        }
        if self.exec {
            f |= VmFlags::EXEC;
        }
        f
    }
}

/// Where an mmap goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmapAddr {
    /// `mmap(NULL, …)`: the kernel chooses (`get_unmapped_area`).
    Kernel,
    /// `MAP_FIXED_NOREPLACE` at this address: refused if anything is mapped there.
    Fixed(UserAddr),
}

/// An mmap call.
#[derive(Clone, Copy)]
pub struct MmapRequest<'a> {
    /// Placement.
    pub addr: MmapAddr,
    /// Length (page-aligned, non-zero).
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// `MAP_SHARED` (else `MAP_PRIVATE`).
    pub shared: bool,
    /// Offset into the file in bytes (page-aligned).
    pub offset: u64,
    /// The file (its `f_op->mmap` runs), or none for a bare VMA of pfnmap kind.
    pub file: Option<&'a dyn FileOps>,
}

/// A file's `file_operations` as far as mmap is concerned.
pub trait FileOps: Send + Sync {
    /// Name for messages and `/proc/<pid>/maps`.
    fn name(&self) -> String;
    /// The file's address space (`file->f_mapping`), if revocation through
    /// `unmap_mapping_range` must find its VMAs.
    fn mapping(&self) -> Option<Arc<AddressSpace>>;
    /// `f_op->mmap`: set up the VMA (flags, `vm_ops`, `vm_page_prot`), possibly remap pfns.
    fn mmap(&self, ctx: &mut MmapCtx<'_>) -> Result<(), MmError>;
}

/// What `f_op->mmap` may touch: the new VMA, and the page tables through `remap_pfn_range`.
pub struct MmapCtx<'a> {
    /// The VMA being created (not yet visible to anyone else).
    pub vma: &'a mut Vma,
    mm: &'a Mm,
    /// Leaves installed by `remap_pfn_range` calls from the handler.
    pub remapped: LeafCounts,
}

impl MmapCtx<'_> {
    /// `remap_pfn_range(vma, addr, pfn, size, prot)` from inside `f_op->mmap`.
    pub fn remap_pfn_range(
        &mut self,
        addr: UserAddr,
        pfn: Pfn,
        size: u64,
        prot: Pgprot,
    ) -> Result<LeafCounts, MmError> {
        let c =
            self.mm
                .remap_pfn_range_vma(self.vma, addr, pfn, size, prot, self.mm.cfg.remap_cap)?;
        self.remapped.pud += c.pud;
        self.remapped.pmd += c.pmd;
        self.remapped.pte += c.pte;
        Ok(c)
    }

    /// The mm's granule (`PAGE_SIZE`, `PMD_SIZE`, …).
    pub fn geometry(&self) -> Geometry {
        self.mm.geometry()
    }

    /// The mm's configuration.
    pub fn config(&self) -> MmConfig {
        self.mm.cfg
    }
}

/// The VMAs of an `Mm`, ordered by start address (Linux's maple tree).
#[derive(Debug, Default, Clone)]
pub struct VmaTree {
    pub(crate) vmas: BTreeMap<UserAddr, Vma>,
}

impl VmaTree {
    /// `vma_lookup()`: the VMA containing `addr`.
    pub fn find(&self, addr: UserAddr) -> Option<&Vma> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.contains(addr))
    }

    /// VMAs overlapping `[start, end)`, in order.
    pub fn overlapping(&self, start: UserAddr, end: UserAddr) -> impl Iterator<Item = &Vma> {
        let first = self
            .vmas
            .range(..=start)
            .next_back()
            .filter(|(_, v)| v.end > start)
            .map(|(&k, _)| k)
            .unwrap_or(start);
        self.vmas
            .range(first..end)
            .map(|(_, v)| v)
            .filter(move |v| v.end > start)
    }

    /// All VMAs in order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.values()
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }

    /// End of the last VMA ending at or before `addr` (the `floor` of `free_pgtables`).
    pub(crate) fn floor(&self, addr: UserAddr) -> UserAddr {
        self.vmas
            .range(..addr)
            .next_back()
            .map(|(_, v)| v.end)
            .filter(|&e| e <= addr)
            .unwrap_or_default()
    }

    /// Start of the first VMA starting at or after `addr` (the `ceiling`).
    pub(crate) fn ceiling(&self, addr: UserAddr) -> UserAddr {
        self.vmas
            .range(addr..)
            .next()
            .map(|(&s, _)| s)
            .unwrap_or(UserAddr::new(u64::MAX))
    }

    /// Highest free gap below `high` of at least `len` bytes: its end minus `len`
    /// (`vm_unmapped_area` top-down, no alignment).
    pub(crate) fn topdown(&self, len: u64, low: UserAddr, high: UserAddr) -> Option<UserAddr> {
        let mut gap_end = high;
        for (&s, v) in self.vmas.range(..high).rev() {
            if v.end < gap_end && gap_end - v.end.max(low) >= len && gap_end >= low + len {
                return Some(gap_end - len);
            }
            gap_end = gap_end.min(s);
            if gap_end < low + len {
                return None;
            }
        }
        (gap_end >= low.saturating_add(len)).then(|| gap_end - len)
    }
}

/// A process address space.
pub struct Mm {
    pub(crate) id: u64,
    pub(crate) me: Weak<Mm>,
    pub(crate) cfg: MmConfig,
    pub(crate) pt: PageTables,
    /// `mmap_lock`: split per thread ([`StripedRwLock`]), so that threads faulting at once
    /// do not bounce its lock word (Linux's faults avoid it with `lock_vma_under_rcu`).
    pub(crate) mmap_lock: StripedRwLock<VmaTree>,
    pub(crate) stats: FaultStats,
    /// Oopses a kernel with [`Bugs::SPLIT_VMA_IN_PUD_OOPS`] would have died of here.
    kernel_oopses: crate::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Mm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mm")
            .field("id", &self.id)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// How one user access went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The walk found a leaf that allows the access; `faults` page faults were taken first.
    Ok {
        /// Faults taken (0: TLB/walk hit).
        faults: u32,
        /// Level of the leaf that served the access.
        level: Level,
    },
    /// SIGBUS (the driver refused: memory decode off, out of the BAR…).
    Sigbus,
    /// SIGSEGV (no VMA, or the VMA forbids the access).
    Sigsegv,
    /// The fault path ran out of memory.
    Oom,
    /// No VMA maps the address (the CPU would raise SIGSEGV; a prober skips such pages).
    NoVma,
}

/// What a run of accesses met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeAccess {
    /// Accesses made.
    pub accesses: u64,
    /// Of which served by the previous walk's leaf.
    pub tlb_hits: u64,
    /// Accesses that ended in SIGBUS.
    pub sigbus: u64,
    /// Accesses that ended in SIGSEGV.
    pub sigsegv: u64,
    /// Addresses skipped because no VMA maps them (not accessed, so no SIGSEGV).
    pub no_vma: u64,
    /// Accesses whose fault ran out of memory.
    pub oom: u64,
}

/// The mmap lock held for read (`mmap_read_lock`).
pub struct MmapRead<'a> {
    mm: &'a Mm,
    tree: StripedReadGuard<'a, VmaTree>,
}

impl<'a> MmapRead<'a> {
    /// The VMAs.
    pub fn vmas(&self) -> &VmaTree {
        &self.tree
    }

    /// The mm.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }

    /// `vma_lookup(mm, addr)`.
    pub fn find_vma(&self, addr: UserAddr) -> Option<&Vma> {
        self.tree.find(addr)
    }
}

impl Mm {
    /// A new, empty address space on `phys` (`mm_alloc`).
    pub fn new(phys: Arc<PhysMem>, cfg: MmConfig) -> Result<Arc<Mm>, MmError> {
        let fmt = Cpu::for_arch(cfg.arch).map_err(|e| MmError::Invalid(e.to_string()))?;
        let pt = PageTables::with_format(phys, fmt)
            .map_err(|e| match e {
                PhysError::OutOfMemory { .. } => MmError::Oom,
                e => MmError::Invalid(e.to_string()),
            })?
            .with_bugs(cfg.bugs);
        Ok(Arc::new_cyclic(|me| Mm {
            id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed),
            me: me.clone(),
            cfg,
            pt,
            mmap_lock: StripedRwLock::new(VmaTree::default()),
            stats: FaultStats::default(),
            kernel_oopses: crate::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The granule: `PAGE_SIZE`, and what a PMD or PUD entry maps.
    #[inline]
    pub fn geometry(&self) -> Geometry {
        self.pt.geometry()
    }

    /// `PAGE_SIZE` of this mm's architecture.
    #[inline]
    pub fn page_size(&self) -> u64 {
        self.pt.geometry().page_size()
    }

    /// `PAGE_ALIGN(len)`: `len` rounded up to this mm's page, `None` if that wraps. The system
    /// calls round their lengths so (found by `hugepfn lab fuzz` on the 16 KiB-page kernels,
    /// where 4 KiB rounding left mprotect, madvise and mremap a page short).
    #[inline]
    pub fn page_align(&self, len: u64) -> Option<u64> {
        let page = self.page_size();
        len.checked_add(page - 1).map(|l| l & !(page - 1))
    }

    /// What `__thp_vma_allowable_orders` consults in this mm's faults.
    pub fn thp_gate(&self) -> ThpGate {
        ThpGate {
            policy: self.cfg.thp,
            bypass_pfnmap: self.cfg.thp_bypass_pfnmap,
            pfnmap_cap: self.cfg.pfnmap_cap.min(self.pt.leaf_cap()),
            geometry: self.geometry(),
        }
    }

    /// Kernel oopses so far that a kernel with the bugs in [`MmConfig::bugs`] would have died
    /// of ([`Bugs::SPLIT_VMA_IN_PUD_OOPS`]); the model went on as the corrected design.
    pub fn kernel_oopses(&self) -> u64 {
        self.kernel_oopses.load(Ordering::Relaxed)
    }

    /// `__split_vma(vma, addr)` → `vma_adjust_trans_huge` → `split_huge_pmd_if_needed`, as
    /// Linux 6.12 … 7.3 have it: a split at an address that is not 2 MiB aligned, whose 2 MiB
    /// block lies in the VMA, calls `split_huge_pmd_address`, whose `mm_find_pmd` takes a PUD
    /// leaf there for a table and hands `__split_huge_pmd` a "PMD" inside the BAR: an oops.
    /// With [`Bugs::SPLIT_VMA_IN_PUD_OOPS`] the model counts it; it never changes what the
    /// model does (the corrected `vma_adjust_trans_huge` also splits PUDs).
    fn note_split_vma(&self, v: &Vma, addr: UserAddr) {
        if !self.cfg.bugs.contains(Bugs::SPLIT_VMA_IN_PUD_OOPS) {
            return;
        }
        let pmd = self.geometry().size(Level::Pmd);
        let lo = addr.align_down(pmd);
        if addr == lo || lo < v.start || lo + pmd > v.end {
            return;
        }
        if self
            .pt
            .lookup(addr)
            .is_some_and(|(leaf, _)| leaf.level == Level::Pud)
        {
            self.kernel_oopses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> MmConfig {
        self.cfg
    }

    /// The page tables.
    pub fn page_tables(&self) -> &PageTables {
        &self.pt
    }

    /// Fault counters so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.stats.snapshot()
    }

    /// Page-table pages held now.
    pub fn table_counts(&self) -> TableCounts {
        self.pt.table_counts()
    }

    /// Leaves mapped now in `[start, end)`.
    pub fn leaves(&self, start: UserAddr, end: UserAddr) -> LeafCounts {
        self.pt.count_leaves(start, end)
    }

    /// Leaves mapped now anywhere.
    pub fn all_leaves(&self) -> LeafCounts {
        self.pt.count_leaves(
            UserAddr::default(),
            UserAddr::new(self.cfg.arch.task_size()),
        )
    }

    /// `mmap_read_lock`.
    pub fn mmap_read(&self) -> MmapRead<'_> {
        MmapRead {
            mm: self,
            tree: self.mmap_lock.read(),
        }
    }

    pub(crate) fn mmap_write(&self) -> StripedWriteGuard<'_, VmaTree> {
        self.mmap_lock.write()
    }

    /// A copy of the VMA containing `addr`.
    pub fn find_vma(&self, addr: UserAddr) -> Option<Vma> {
        self.mmap_read().find_vma(addr).cloned()
    }

    /// Copies of all VMAs, in order.
    pub fn vmas(&self) -> Vec<Vma> {
        self.mmap_read().vmas().iter().cloned().collect()
    }

    pub(crate) fn mmap_base(&self) -> UserAddr {
        self.cfg
            .mmap_base
            .unwrap_or(UserAddr::new(self.cfg.arch.mmap_window() - (128 << 20)))
    }

    /// [`Mm::check_range`] for a system call's `(addr, len)`: the length is rounded up to
    /// whole pages first (`PAGE_ALIGN(len)`, as munmap, mprotect, madvise, mremap, mincore
    /// and mmap do: "length need not be a multiple of the page size"); the address is never
    /// rounded. Found by `hugepfn fuzz`: the model refused an unaligned length with EINVAL.
    pub(crate) fn check_syscall_range(
        &self,
        what: &'static str,
        addr: UserAddr,
        len: u64,
    ) -> Result<UserAddr, MmError> {
        let aligned = self.page_align(len).ok_or(MmError::Overflow {
            addr: addr.as_u64(),
            len,
            limit: self.cfg.arch.task_size(),
        })?;
        if len != 0 && aligned == 0 {
            return Err(MmError::Overflow {
                addr: addr.as_u64(),
                len,
                limit: self.cfg.arch.task_size(),
            });
        }
        self.check_range(what, addr, aligned)
    }

    /// EINVAL unless `addr` is on a page: a system call's address is never rounded.
    pub(crate) fn check_page_aligned(&self, addr: UserAddr) -> Result<(), MmError> {
        let page = self.page_size();
        if addr.is_aligned(page) {
            Ok(())
        } else {
            Err(MmError::Unaligned {
                what: "address",
                value: addr.as_u64(),
                align: page,
            })
        }
    }

    pub(crate) fn check_range(
        &self,
        what: &'static str,
        addr: UserAddr,
        len: u64,
    ) -> Result<UserAddr, MmError> {
        if len == 0 {
            return Err(MmError::ZeroLength(what));
        }
        self.check_page_aligned(addr)?;
        let page = self.page_size();
        if !len.is_multiple_of(page) {
            return Err(MmError::Unaligned {
                what: "length",
                value: len,
                align: page,
            });
        }
        let limit = self.cfg.arch.task_size();
        match addr.checked_add(len) {
            Some(end) if end.as_u64() <= limit => Ok(end),
            _ => Err(MmError::Overflow {
                addr: addr.as_u64(),
                len,
                limit,
            }),
        }
    }

    /// `get_unmapped_area` for a file mapping in 6.12: with no hint and a length that is a
    /// multiple of 2 MiB, `thp_get_unmapped_area` pads the search by 2 MiB and returns an address
    /// congruent with the file offset modulo 2 MiB; otherwise (and always without
    /// [`MmConfig::thp_align_file_mappings`]) plain top-down.
    pub fn get_unmapped_area(&self, len: u64, offset: u64) -> Result<UserAddr, MmError> {
        let tree = self.mmap_read();
        self.get_unmapped_area_locked(&tree.tree, len, offset)
    }

    fn get_unmapped_area_locked(
        &self,
        tree: &VmaTree,
        len: u64,
        offset: u64,
    ) -> Result<UserAddr, MmError> {
        let size = self.geometry().size(Level::Pmd);
        let low = MMAP_MIN_ADDR;
        let high = self.mmap_base();
        if self.cfg.thp_align_file_mappings && len.is_multiple_of(size) {
            // __thp_get_unmapped_area
            let off_align = offset.div_ceil(size).saturating_mul(size);
            let off_end = offset.saturating_add(len);
            if off_end > off_align
                && off_end - off_align >= size
                && let Some(ret) = len
                    .checked_add(size)
                    .and_then(|pad| tree.topdown(pad, low, high))
            {
                let off_sub = offset.wrapping_sub(ret.as_u64()) & (size - 1);
                return Ok(if off_sub == 0 {
                    ret + size
                } else {
                    ret + off_sub
                });
            }
        }
        tree.topdown(len, low, high).ok_or(MmError::NoSpace(len))
    }

    /// What [`Mm::get_unmapped_area`] determines of the address it returns for a file mapping of
    /// `len` bytes at file `offset`, as `(modulus, residue)`: the kernel's choice is congruent
    /// with `residue` modulo `modulus`, and the rest is the layout and ASLR's draw of
    /// `mmap_base`, which the model cannot know. With 6.12's THP alignment and a length that
    /// is a multiple of 2 MiB: the file offset modulo 2 MiB; otherwise only page alignment.
    /// The lab holds a kernel's VA to this rule before it gives the VA to the model.
    pub fn unmapped_area_rule(&self, len: u64, offset: u64) -> (u64, u64) {
        let size = self.geometry().size(Level::Pmd);
        let off_align = offset.div_ceil(size).saturating_mul(size);
        let off_end = offset.saturating_add(len);
        if self.cfg.thp_align_file_mappings
            && len.is_multiple_of(size)
            && off_end > off_align
            && off_end - off_align >= size
        {
            (size, offset % size)
        } else {
            (self.page_size(), 0)
        }
    }

    /// A free range of `len` bytes starting at `skew` modulo `align`: what user space gets by
    /// reserving `len + align + skew` bytes PROT_NONE and mapping MAP_FIXED at the first aligned
    /// address plus `skew` (QEMU 9.2's `vfio/helpers: Align mmaps`, cloud-hypervisor).
    pub fn find_aligned_area(&self, len: u64, align: u64, skew: u64) -> Result<UserAddr, MmError> {
        let page = self.page_size();
        if !align.is_power_of_two() || align < page {
            return Err(MmError::Invalid(format!(
                "alignment {align:#x} is not a power of two of at least the page size ({page:#x})"
            )));
        }
        if !skew.is_multiple_of(page) {
            return Err(MmError::Unaligned {
                what: "skew",
                value: skew,
                align: page,
            });
        }
        let pad = len
            .checked_add(align)
            .and_then(|p| p.checked_add(skew))
            .ok_or(MmError::NoSpace(len))?;
        let tree = self.mmap_read();
        let r = tree
            .tree
            .topdown(pad, MMAP_MIN_ADDR, self.mmap_base())
            .ok_or(MmError::NoSpace(pad))?;
        Ok(UserAddr::new(r.as_u64().div_ceil(align) * align + skew))
    }

    /// `mmap()`: creates a VMA and runs the file's `mmap` handler. Returns the address.
    pub fn mmap(&self, req: MmapRequest<'_>) -> Result<UserAddr, MmError> {
        if !req.offset.is_multiple_of(self.page_size()) {
            return Err(MmError::Unaligned {
                what: "offset",
                value: req.offset,
                align: self.page_size(),
            });
        }
        if req.len == 0 {
            return Err(MmError::ZeroLength("mmap"));
        }
        if req.offset.checked_add(req.len).is_none() {
            return Err(MmError::Overflow {
                addr: req.offset,
                len: req.len,
                limit: u64::MAX,
            });
        }
        let mut tree = self.mmap_write();
        let start = match req.addr {
            MmapAddr::Fixed(a) => {
                let end = self.check_syscall_range("mmap", a, req.len)?;
                if a < MMAP_MIN_ADDR {
                    return Err(MmError::Overflow {
                        addr: a.as_u64(),
                        len: req.len,
                        limit: self.cfg.arch.task_size(),
                    });
                }
                if let Some(v) = tree.overlapping(a, end).next() {
                    return Err(MmError::Overlap {
                        start: a,
                        end,
                        vma_start: v.start,
                        vma_end: v.end,
                    });
                }
                a
            }
            MmapAddr::Kernel => {
                let len = self.check_syscall_range("mmap", UserAddr::default(), req.len)?;
                self.get_unmapped_area_locked(&tree, len.as_u64(), req.offset)?
            }
        };
        let end = self.check_syscall_range("mmap", start, req.len)?;
        let mut flags =
            req.prot.vm_flags() | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if req.shared {
            flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        let mut vma = Vma {
            start,
            end,
            flags,
            pgoff: req.offset / PAGE_SIZE,
            page_prot: vm_get_page_prot(flags),
            ops: None,
            mapping: req.file.and_then(|f| f.mapping()),
            name: req.file.map(|f| f.name()).unwrap_or_default(),
        };
        if let Some(file) = req.file {
            let mut ctx = MmapCtx {
                vma: &mut vma,
                mm: self,
                remapped: LeafCounts::default(),
            };
            if let Err(e) = file.mmap(&mut ctx) {
                // unmap_region: undo whatever the handler mapped, in one gather.
                let mut tlb = self.pt.tlb_gather_mmu();
                let (z, _) =
                    self.pt
                        .zap_range_unnotified(&mut tlb, start, end, PartialHuge::ZapWhole);
                let (lo, hi) = z.notify_range(start, end);
                self.pt.mmu_notifier_invalidate(lo, hi);
                self.pt
                    .free_pgtables(&mut tlb, start, end, tree.floor(start), tree.ceiling(end));
                tlb.finish();
                return Err(e);
            }
        }
        self.link(&mut tree, vma);
        Ok(start)
    }

    /// `__split_vma` at `addr` if a VMA straddles it, making `addr` a leaf boundary first
    /// (`vma_adjust_trans_huge`). Returns whether a split happened.
    /// Splits what `split_vma_at` may have left straddling `addr` (a PUD leaf kept at a
    /// 2 MiB-aligned boundary under the bug), as the operation's own walk does in Linux
    /// (`change_pud_range`, `zap_pud_range`, `move_page_tables` split a partial PUD).
    pub(crate) fn split_straddling(&self, tree: &VmaTree, addr: UserAddr) -> Result<(), MmError> {
        let policy = match tree.find(addr) {
            Some(v) if !v.is_fault_backed() => PartialHuge::Split,
            _ => PartialHuge::ZapWhole,
        };
        self.pt.adjust_trans_huge(addr, policy)?;
        Ok(())
    }

    pub(crate) fn split_vma_at(&self, tree: &mut VmaTree, addr: UserAddr) -> Result<bool, MmError> {
        let Some(v) = tree.find(addr).filter(|v| v.start < addr).cloned() else {
            return Ok(false);
        };
        let policy = if v.is_fault_backed() {
            PartialHuge::ZapWhole
        } else {
            PartialHuge::Split
        };
        self.note_split_vma(&v, addr);
        // Linux's vma_adjust_trans_huge only knows PMD leaves: at a 2 MiB-aligned boundary a
        // PUD leaf stays where it is, straddling both VMAs, until an unaligned split oopses
        // on it (the bug) or the operation's own page-table walk splits it. With the bug the
        // model keeps it too, so that the oops of a later unaligned split in the same call is
        // foreseen (`hugepfn lab fuzz` found mprotect [2M-aligned, unaligned) oopsing on 6.12.95
        // where the model had zapped the leaf at the first boundary).
        let keeps_pud = self.cfg.bugs.contains(Bugs::SPLIT_VMA_IN_PUD_OOPS)
            && addr.is_aligned(self.geometry().size(Level::Pmd))
            && self
                .pt
                .lookup(addr)
                .is_some_and(|(leaf, _)| leaf.level == Level::Pud);
        if !keeps_pud {
            self.pt.adjust_trans_huge(addr, policy)?;
        }
        let mut head = self.unlink(tree, v.start).unwrap_or(v);
        let tail = head.split_off(addr);
        if let Some(o) = &tail.ops {
            o.open(&tail);
        }
        self.link(tree, head);
        self.link(tree, tail);
        Ok(true)
    }

    /// `vma_merge` after a change to the VMAs around `[start, end)`: neighbours with the same
    /// flags, protection, file, ops and contiguous `vm_pgoff` become one. VM_SPECIAL VMAs
    /// (VM_IO, VM_DONTEXPAND, VM_PFNMAP, VM_MIXEDMAP) are never merged, as in Linux.
    pub(crate) fn merge_around(&self, tree: &mut VmaTree, start: UserAddr, end: UserAddr) -> u64 {
        let special = VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::PFNMAP | VmFlags::MIXEDMAP;
        let mut merged = 0;
        let lo = tree.floor(start).min(start);
        let keys: Vec<UserAddr> = tree
            .vmas
            .range(lo.checked_sub(1).unwrap_or_default()..=end)
            .map(|(k, _)| *k)
            .collect();
        for w in keys.windows(2) {
            let (Some(a), Some(b)) = (tree.vmas.get(&w[0]).cloned(), tree.vmas.get(&w[1]).cloned())
            else {
                continue;
            };
            let same_ops = match (&a.ops, &b.ops) {
                (None, None) => true,
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                _ => false,
            };
            let same_file = match (&a.mapping, &b.mapping) {
                (None, None) => true,
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                _ => false,
            };
            if a.end == b.start
                && !a.flags.intersects(special)
                && a.flags == b.flags
                && a.page_prot == b.page_prot
                && same_ops
                && same_file
                && a.pgoff + a.len() / PAGE_SIZE == b.pgoff
            {
                let mut m = self.unlink(tree, a.start).unwrap_or(a);
                self.unlink(tree, b.start);
                m.end = b.end;
                self.link(tree, m);
                merged += 1;
            }
        }
        merged
    }

    pub(crate) fn link(&self, tree: &mut VmaTree, vma: Vma) {
        if let Some(m) = &vma.mapping {
            m.link(
                self.id,
                IMmapEntry {
                    mm: self.me.clone(),
                    start: vma.start,
                    end: vma.end,
                    pgoff: vma.pgoff,
                },
            );
        }
        tree.vmas.insert(vma.start, vma);
    }

    pub(crate) fn unlink(&self, tree: &mut VmaTree, start: UserAddr) -> Option<Vma> {
        let v = tree.vmas.remove(&start)?;
        if let Some(m) = &v.mapping {
            m.unlink(self.id, v.start);
        }
        Some(v)
    }

    /// `remap_pfn_range(vma, addr, pfn, size, prot)` on the VMA containing `addr`, outside of
    /// `f_op->mmap` (the caller of Linux's would hold the mmap lock for write: we take it).
    /// Installs the largest leaves the alignment allows, up to the mm's `remap_cap`.
    pub fn remap_pfn_range(
        &self,
        addr: VirtAddr,
        pfn: Pfn,
        size: u64,
        prot: Pgprot,
    ) -> Result<LeafCounts, MmError> {
        self.remap_pfn_range_capped(addr, pfn, size, prot, self.cfg.remap_cap)
    }

    /// [`Mm::remap_pfn_range`] with an explicit cap on the leaf size.
    pub fn remap_pfn_range_capped(
        &self,
        addr: VirtAddr,
        pfn: Pfn,
        size: u64,
        prot: Pgprot,
        cap: LeafCap,
    ) -> Result<LeafCounts, MmError> {
        let addr = UserAddr::from(addr);
        self.check_range("remap_pfn_range", addr, size)?;
        self.check_pfn_on_page(pfn)?;
        let mut tree = self.mmap_write();
        let key = tree
            .find(addr)
            .map(|v| v.start)
            .ok_or(MmError::NoVma(addr))?;
        let mut vma = tree.vmas.get(&key).cloned().ok_or(MmError::NoVma(addr))?;
        let r = self.remap_pfn_range_vma(&mut vma, addr, pfn, size, prot, cap)?;
        tree.vmas.insert(key, vma);
        Ok(r)
    }

    /// pfns count 4 KiB frames (hugepfn-units' `PAGE_SIZE`) whatever the granule: with larger
    /// pages the physical address must still be page-aligned, or the call is refused as
    /// unaligned (a Linux pfn cannot name such an address).
    fn check_pfn_on_page(&self, pfn: Pfn) -> Result<(), MmError> {
        let phys = pfn.phys().as_u64();
        if phys.is_multiple_of(self.page_size()) {
            Ok(())
        } else {
            Err(MmError::Unaligned {
                what: "physical address",
                value: phys,
                align: self.page_size(),
            })
        }
    }

    /// The body of `remap_pfn_range` on a given VMA. Checks everything before changing anything.
    pub(crate) fn remap_pfn_range_vma(
        &self,
        vma: &mut Vma,
        addr: UserAddr,
        first: Pfn,
        size: u64,
        prot: Pgprot,
        cap: LeafCap,
    ) -> Result<LeafCounts, MmError> {
        let end = self.check_range("remap_pfn_range", addr, size)?;
        // Every alignment before the VMA's bounds, as the public call checks them: one bad
        // input, one error, whichever path it comes by.
        self.check_pfn_on_page(first)?;
        let pfn = first.as_u64();
        if addr < vma.start || end > vma.end {
            return Err(MmError::OutsideVma {
                start: addr,
                end,
                vma_start: vma.start,
                vma_end: vma.end,
            });
        }
        let pages = size / PAGE_SIZE;
        if pfn.checked_add(pages).is_none_or(|e| e > Pfn::LIMIT) {
            return Err(MmError::PfnTooWide { pfn, pages });
        }
        let mut cap = cap.min(self.cfg.pfnmap_cap);
        let cow = vma.flags.is_cow_mapping();
        if cow {
            if addr != vma.start || end != vma.end {
                return Err(MmError::CowPartial {
                    vma_start: vma.start,
                    vma_end: vma.end,
                });
            }
            // The RFC's point 3: CoW mappings keep small entries.
            cap = LeafCap::Pte;
        }
        if let Some(va) = self.pt.first_mapped(addr, end) {
            return Err(MmError::AlreadyMapped { va });
        }
        if cow {
            vma.pgoff = pfn;
        }
        vma.flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        let prot = prot.with(ProtFlags::SPECIAL, ProtFlags::empty());
        Ok(self.pt.remap_range(addr, end, first, prot, cap)?)
    }

    /// `munmap(addr, len)`: splits VMAs at the edges, zaps the range (a huge leaf partly inside is
    /// split first in a remap-populated VMA, zapped whole in a fault-backed one), and frees the
    /// page tables no VMA can use any more. Unmapping a range with no VMA succeeds, as in Linux.
    pub fn munmap(&self, addr: UserAddr, len: u64) -> Result<MunmapStats, MmError> {
        let end = self.check_syscall_range("munmap", addr, len)?;
        let mut tree = self.mmap_write();
        let hit: Vec<Vma> = tree.overlapping(addr, end).cloned().collect();
        let mut st = MunmapStats::default();
        if hit.is_empty() {
            return Ok(st);
        }
        for v in &hit {
            if v.start < addr {
                self.note_split_vma(v, addr);
            }
            if v.end > end {
                self.note_split_vma(v, end);
            }
        }
        // Page tables first, while the VMAs still say how to treat partial leaves; the MMU
        // notifier hears of the whole range once, as unmap_vmas tells it.
        // One mmu_gather for the zaps and the tables freed (unmap_region): one flush at the end.
        let mut tlb = self.pt.tlb_gather_mmu();
        let (mut lo, mut hi) = (addr, end);
        let mut failed = None;
        for v in &hit {
            let s = v.start.max(addr);
            let e = v.end.min(end);
            let policy = if v.is_fault_backed() {
                PartialHuge::ZapWhole
            } else {
                PartialHuge::Split
            };
            let (z, r) = self.pt.zap_range_unnotified(&mut tlb, s, e, policy);
            let (zl, zh) = z.notify_range(s, e);
            (lo, hi) = (lo.min(zl), hi.max(zh));
            st.zapped += z.cleared;
            st.splits += z.splits;
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        self.pt.mmu_notifier_invalidate(lo, hi);
        if let Some(e) = failed {
            return Err(e.into());
        }
        // Then the VMAs (__split_vma, unlink_file_vma) — before any table is freed.
        for v in hit {
            let mut v = self.unlink(&mut tree, v.start).unwrap_or(v);
            if v.start < addr {
                let tail = v.split_off(addr);
                if let Some(o) = &tail.ops {
                    o.open(&tail);
                }
                self.link(&mut tree, v);
                st.vmas_split += 1;
                v = tail;
            }
            if v.end > end {
                let tail = v.split_off(end);
                if let Some(o) = &tail.ops {
                    o.open(&tail);
                }
                self.link(&mut tree, tail);
                st.vmas_split += 1;
            }
            if let Some(o) = &v.ops {
                o.close(&v);
            }
            st.vmas_removed += 1;
        }
        let floor = tree.floor(addr);
        let ceiling = tree.ceiling(end);
        st.tables_freed = self.pt.free_pgtables(&mut tlb, addr, end, floor, ceiling);
        tlb.finish();
        Ok(st)
    }

    /// A user access to `addr`, as the CPU does it: walk; if no leaf allows the access, fault
    /// (`handle_mm_fault` under the mmap read lock) and retry.
    pub fn access(&self, addr: UserAddr, write: bool) -> Access {
        self.access_inner(addr, write, true)
    }

    fn access_inner(&self, addr: UserAddr, write: bool, count_segv: bool) -> Access {
        if self.cfg.arch.check_va(addr.as_u64()).is_err() {
            // Past TASK_SIZE (or not canonical): in no VMA, like any unmapped address (found
            // by `hugepfn fuzz`: such strides were neither skipped nor counted).
            if count_segv {
                self.stats.account(VmFaultResult::Sigsegv, Level::Pte);
            }
            return Access::NoVma;
        }
        let mut faults = 0u32;
        for _ in 0..8 {
            if let Some(level) = self.pt.user_access(addr, write) {
                return Access::Ok { faults, level };
            }
            let mut flags = FaultFlags::USER | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
            if write {
                flags |= FaultFlags::WRITE;
            }
            match self.handle_mm_fault(addr, flags) {
                Ok(o) => match o.result {
                    VmFaultResult::Sigbus => return Access::Sigbus,
                    VmFaultResult::Sigsegv => return Access::Sigsegv,
                    VmFaultResult::Oom => return Access::Oom,
                    _ => faults += 1,
                },
                Err(MmError::NoVma(_)) => {
                    if count_segv {
                        self.stats.account(VmFaultResult::Sigsegv, Level::Pte);
                    }
                    return Access::NoVma;
                }
                Err(_) => return Access::Sigsegv,
            }
        }
        Access::Sigbus
    }

    /// Accesses `count` addresses `start, start + stride, …` (or the same set from the top down
    /// with `reverse`), like a program touching a buffer. Accesses that land in a leaf the
    /// previous access already walked are TLB hits and are not walked again (a one-entry TLB:
    /// the mapping cannot change under a single-threaded loop).
    pub fn access_range(
        &self,
        start: UserAddr,
        count: u64,
        stride: u64,
        write: bool,
        reverse: bool,
    ) -> RangeAccess {
        let start = start.as_u64();
        let mut out = RangeAccess::default();
        let stride = stride.max(1);
        let g = self.geometry();
        let mut i = 0u64;
        while i < count {
            let k = if reverse { count - 1 - i } else { i };
            let Some(addr) = k.checked_mul(stride).and_then(|o| start.checked_add(o)) else {
                // Past the end of the address space: in no VMA, like every later stride going
                // up (forward), or every stride down to the last one that fits (reverse).
                let fits = (u64::MAX - start) / stride;
                let n = if reverse { k - fits } else { count - i };
                out.no_vma += n;
                i += n;
                continue;
            };
            let a = self.access_inner(UserAddr::new(addr), write, false);
            if a == Access::NoVma {
                // Unmapped: a prober skips it rather than take the SIGSEGV. The whole gap up to
                // the next VMA in the direction of travel is skipped at once (issue 17: a
                // length far past the mapping was visited one stride at a time).
                let gap = self
                    .strides_in_gap(UserAddr::new(addr), stride, reverse)
                    .min(count - i);
                out.no_vma += gap.max(1);
                i += gap.max(1);
                continue;
            }
            out.accesses += 1;
            match a {
                Access::Ok { level, .. } => {
                    // Every later stride inside the same leaf hits the TLB.
                    let size = g.size(level);
                    let base = addr & !(size - 1);
                    let more = if reverse {
                        (addr - base) / stride
                    } else {
                        (base + size - 1 - addr) / stride
                    };
                    let more = more.min(count - 1 - i);
                    out.accesses += more;
                    out.tlb_hits += more;
                    i += more;
                }
                Access::Sigbus | Access::Sigsegv => {
                    // Every later stride in the same page faults the same way (nothing maps
                    // it, and the handler's answer does not change within the loop): counted
                    // at once, not walked and faulted one byte at a time (issue 17).
                    let page = g.page_size();
                    let base = addr & !(page - 1);
                    let more = if reverse {
                        (addr - base) / stride
                    } else {
                        (base + page - 1 - addr) / stride
                    };
                    let n = 1 + more.min(count - 1 - i);
                    out.accesses += n - 1;
                    let r = if a == Access::Sigbus {
                        out.sigbus += n;
                        VmFaultResult::Sigbus
                    } else {
                        out.sigsegv += n;
                        VmFaultResult::Sigsegv
                    };
                    // the faults the kernel would have taken for them, for the counters
                    self.stats.account_signals(r, n - 1);
                    i += n - 1;
                }
                Access::Oom => {
                    // The simulated memory is used up: the kernel would OOM-kill the task;
                    // the loop stops (issue 17: the rest would each fail the same way).
                    out.oom += 1;
                    break;
                }
                Access::NoVma => out.no_vma += 1,
            }
            i += 1;
        }
        out
    }

    /// How many strides from `addr` (itself in no VMA) fall before the next VMA in the direction
    /// of travel (at least 1).
    fn strides_in_gap(&self, addr: UserAddr, stride: u64, reverse: bool) -> u64 {
        let g = self.mmap_read();
        let vmas = &g.vmas().vmas;
        if reverse {
            // strides addr, addr - stride, … that are still >= the end of the VMA below
            match vmas.range(..=addr).next_back() {
                Some((_, v)) if v.end <= addr => (addr - v.end) / stride + 1,
                Some(_) => 1,
                None => addr.as_u64() / stride + 1,
            }
        } else {
            match vmas.range(addr..).next() {
                Some((&start, _)) => (start - addr).div_ceil(stride).max(1),
                None => u64::MAX,
            }
        }
    }

    /// `handle_mm_fault(vma, address, flags)` after `lock_vma_under_rcu`/`find_vma` and
    /// `access_error`: `Err` is a bad area (no VMA, or an access the VMA forbids): SIGSEGV.
    pub fn handle_mm_fault(
        &self,
        addr: UserAddr,
        flags: FaultFlags,
    ) -> Result<FaultOutcome, MmError> {
        self.cfg.arch.check_va(addr.as_u64())?;
        let g = self.mmap_read();
        let Some(vma) = g.find_vma(addr) else {
            // bad_area: the caller (the CPU, GUP) decides what to raise and count.
            return Err(MmError::NoVma(addr));
        };
        // A fault taken for GUP (FaultFlags::REMOTE here, `regs == NULL` in Linux) that ends in
        // SIGBUS or SIGSEGV raises no signal: the caller (fixup_user_fault, get_user_pages)
        // returns -EFAULT. Only the CPU's faults (do_user_addr_fault) deliver signals.
        let signal = !flags.contains(FaultFlags::REMOTE);
        if access_error(vma, flags.contains(FaultFlags::WRITE)) {
            if signal {
                self.stats.account(VmFaultResult::Sigsegv, Level::Pte);
            }
            return Ok(FaultOutcome {
                result: VmFaultResult::Sigsegv,
                level: Level::Pte,
            });
        }
        let o = handle_mm_fault_locked(vma, &self.pt, self.thp_gate(), addr, flags, &self.stats);
        let raised = matches!(o.result, VmFaultResult::Sigbus | VmFaultResult::Sigsegv);
        if signal || !raised {
            self.stats.account(o.result, o.level);
        }
        Ok(o)
    }

    /// Changes VMA flags on the VMA containing `addr` (used by madvise-like callers).
    pub fn update_vma_flags(
        &self,
        addr: UserAddr,
        set: VmFlags,
        clear: VmFlags,
    ) -> Result<(), MmError> {
        let mut tree = self.mmap_write();
        let key = tree
            .find(addr)
            .map(|v| v.start)
            .ok_or(MmError::NoVma(addr))?;
        if let Some(v) = tree.vmas.get_mut(&key) {
            v.flags = (v.flags | set) - clear;
        }
        Ok(())
    }

    /// A weak handle to this mm.
    pub fn weak(&self) -> Weak<Mm> {
        self.me.clone()
    }
}

impl Default for Vma {
    fn default() -> Self {
        Vma {
            start: UserAddr::default(),
            end: UserAddr::default(),
            flags: VmFlags::empty(),
            pgoff: 0,
            page_prot: Pgprot::NONE,
            ops: None,
            mapping: None,
            name: String::new(),
        }
    }
}

/// What a munmap did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MunmapStats {
    /// Leaves cleared.
    pub zapped: LeafCounts,
    /// Huge leaves split in place.
    pub splits: u64,
    /// VMAs removed (wholly or the part inside the range).
    pub vmas_removed: u64,
    /// VMA splits.
    pub vmas_split: u64,
    /// Page-table pages freed.
    pub tables_freed: u64,
}

impl Drop for Mm {
    /// `exit_mmap`: unlink every file VMA from its reverse map; the page tables free themselves.
    fn drop(&mut self) {
        let mut tree = self.mmap_lock.write();
        for v in tree.vmas.values() {
            if let Some(m) = &v.mapping {
                m.unlink(self.id, v.start);
            }
            if let Some(o) = &v.ops {
                o.close(v);
            }
        }
        tree.vmas.clear();
    }
}
