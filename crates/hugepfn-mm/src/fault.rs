//! The fault path: `handle_mm_fault`, the `vm_operations_struct` a driver implements, and the
//! pfn inserts a driver calls from its handlers.
//!
//! Models `mm/memory.c` (`handle_mm_fault`, `__handle_mm_fault`, `create_huge_pud`,
//! `create_huge_pmd`, `wp_huge_pud`, `wp_huge_pmd`, `handle_pte_fault`, `do_fault`,
//! `vmf_insert_pfn`), `mm/huge_memory.c` (`vmf_insert_pfn_pmd`, `vmf_insert_pfn_pud`,
//! `__thp_vma_allowable_orders` as in 6.12) and the access check of `arch/x86/mm/fault.c`
//! (`access_error`).
//!
//! Deliberate differences from Linux 6.12:
//! * `vmf_insert_pfn*` on an entry that holds a *different* pfn returns `SIGBUS` and counts a
//!   warning; Linux WARNs (only for `write` inserts) and returns `VM_FAULT_NOPAGE`, leaving the
//!   old mapping. An insert where a table or the same pfn already sits is `NOPAGE`, as in Linux.
//! * The PUD insert uses the VMA's protection including its cache mode; Linux 6.12 had the bug
//!   of upstream.md §3.5 (fixed 2025-06), which the PAT model here would show as a wrong memory type.
//! * A write fault in a private (CoW) pfnmap is not handled yet (`do_cow_fault`): it is SIGBUS.

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Lease, STRIPES, lease, stripe_add};
use std::fmt;

use serde::Serialize;

use crate::addr::{Pfn, UserAddr};
use crate::entry::{Decoded, Leaf, ProtFlags};
use crate::level::{Geometry, LeafCap, Level};
use crate::pgtable::{Hazard, LeafCounts, PageTables, PartialHuge, Slot, WalkError};
use crate::vma::{VmFlags, Vma};

/// `vm_fault_t`: the outcome of a fault handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum VmFaultResult {
    /// `VM_FAULT_NOPAGE`: the handler installed the entry itself (or found it installed).
    NoPage,
    /// `VM_FAULT_FALLBACK`: try the next smaller size.
    Fallback,
    /// `VM_FAULT_SIGBUS`.
    Sigbus,
    /// `VM_FAULT_SIGSEGV`.
    Sigsegv,
    /// `VM_FAULT_OOM`.
    Oom,
    /// `VM_FAULT_RETRY`: the lock was dropped; fault again.
    Retry,
    /// 0: handled without a handler (accessed bit set, spurious fault).
    Done,
}

impl VmFaultResult {
    /// `VM_FAULT_ERROR`: SIGBUS, SIGSEGV or OOM.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            VmFaultResult::Sigbus | VmFaultResult::Sigsegv | VmFaultResult::Oom
        )
    }
}

bitflags::bitflags! {
    /// `enum fault_flag`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FaultFlags: u32 {
        /// `FAULT_FLAG_WRITE`.
        const WRITE = 1 << 0;
        /// `FAULT_FLAG_MKWRITE`.
        const MKWRITE = 1 << 1;
        /// `FAULT_FLAG_ALLOW_RETRY`.
        const ALLOW_RETRY = 1 << 2;
        /// `FAULT_FLAG_RETRY_NOWAIT`.
        const RETRY_NOWAIT = 1 << 3;
        /// `FAULT_FLAG_KILLABLE`.
        const KILLABLE = 1 << 4;
        /// `FAULT_FLAG_TRIED`.
        const TRIED = 1 << 5;
        /// `FAULT_FLAG_USER`: the access came from user space.
        const USER = 1 << 6;
        /// `FAULT_FLAG_REMOTE`: GUP or `fixup_user_fault` on another mm.
        const REMOTE = 1 << 7;
        /// `FAULT_FLAG_INSTRUCTION`.
        const INSTRUCTION = 1 << 8;
    }
}

/// `struct vm_fault`: what a handler is told about the fault.
pub struct VmFault<'a> {
    /// The faulting VMA.
    pub vma: &'a Vma,
    /// `vmf->address`: the faulting address rounded down to the page.
    pub address: UserAddr,
    /// `vmf->real_address`.
    pub real_address: UserAddr,
    /// `vmf->flags`.
    pub flags: FaultFlags,
    /// `vmf->pgoff`: `linear_page_index(vma, address)`.
    pub pgoff: u64,
    /// `vmf->pmd`: the PMD slot of the address once the fault path has reached it.
    pmd: std::cell::Cell<Option<Slot>>,
    /// The level of the leaf a handler installed, if it installed one.
    installed: std::cell::Cell<Option<Level>>,
    /// The largest pfnmap leaf the architecture has (`vmf_insert_pfn_pud` exists only with
    /// `CONFIG_ARCH_SUPPORTS_PUD_PFNMAP`).
    pfnmap_cap: LeafCap,
    pt: &'a PageTables,
    stats: &'a FaultStats,
}

impl fmt::Debug for VmFault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmFault")
            .field("vma", self.vma)
            .field("address", &format_args!("{:#x}", self.address))
            .field("flags", &self.flags)
            .field("pgoff", &format_args!("{:#x}", self.pgoff))
            .finish()
    }
}

impl<'a> VmFault<'a> {
    /// A fault context for `vma` at `address` (used by `handle_mm_fault` and by tests that call a
    /// driver's handlers directly).
    pub fn new(
        vma: &'a Vma,
        address: UserAddr,
        flags: FaultFlags,
        pt: &'a PageTables,
        stats: &'a FaultStats,
    ) -> Self {
        let page = address.align_down(pt.geometry().page_size());
        VmFault {
            vma,
            address: page,
            real_address: address,
            flags,
            pgoff: vma.linear_page_index(page),
            pmd: std::cell::Cell::new(None),
            installed: std::cell::Cell::new(None),
            pfnmap_cap: pt.leaf_cap(),
            pt,
            stats,
        }
    }

    /// The same context on an architecture whose pfnmap leaves stop at `cap` (never above
    /// what the page-table format can hold).
    pub fn with_pfnmap_cap(self, cap: LeafCap) -> Self {
        VmFault {
            pfnmap_cap: cap.min(self.pt.leaf_cap()),
            ..self
        }
    }

    /// The largest pfnmap leaf this architecture has.
    pub fn pfnmap_cap(&self) -> LeafCap {
        self.pfnmap_cap
    }

    /// True for a write fault.
    pub fn is_write(&self) -> bool {
        self.flags.contains(FaultFlags::WRITE)
    }

    /// The page tables being filled.
    pub fn page_tables(&self) -> &PageTables {
        self.pt
    }

    /// The granule: `PAGE_SIZE << order` is the block a `huge_fault` of `order` maps.
    #[inline]
    pub fn geometry(&self) -> Geometry {
        self.pt.geometry()
    }
}

/// `struct vm_operations_struct`: a driver's handlers for a VMA.
pub trait VmOperations: Send + Sync {
    /// A name for messages.
    fn name(&self) -> &str;

    /// `->fault`: map the page at `vmf.address` (typically with [`vmf_insert_pfn`]).
    fn fault(&self, vmf: &VmFault<'_>) -> VmFaultResult;

    /// `->huge_fault`: map a block of `PAGE_SIZE << order` around the address, or return
    /// [`VmFaultResult::Fallback`].
    fn huge_fault(&self, vmf: &VmFault<'_>, order: u32) -> VmFaultResult {
        let _ = (vmf, order);
        VmFaultResult::Fallback
    }

    /// True if `huge_fault` is implemented (`vma->vm_ops->huge_fault != NULL`).
    fn has_huge_fault(&self) -> bool {
        false
    }

    /// The RFC's design (b): called first, before any PUD/PMD table is allocated, on VMAs with
    /// `VM_HUGEPFNMAP`; the driver picks the leaf size itself.
    fn early_fault(&self, vmf: &VmFault<'_>) -> VmFaultResult {
        let _ = vmf;
        VmFaultResult::Fallback
    }

    /// `->open`: a new VMA refers to the driver (split, fork).
    fn open(&self, vma: &Vma) {
        let _ = vma;
    }

    /// `->close`: a VMA goes away.
    fn close(&self, vma: &Vma) {
        let _ = vma;
    }
}

/// The RFC's three ways to let a driver install huge pfn leaves on fault ("which of these folks
/// find least offensive?").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultPath {
    /// (a) What Linux merged in 6.12: `vm_ops->huge_fault(vmf, order)` at the PUD and PMD levels
    /// of `__handle_mm_fault`, gated by `thp_vma_allowable_order`.
    #[default]
    HugeFault,
    /// (b) A `VM_HUGEPFNMAP` VMA flag: `__handle_mm_fault` calls the driver before allocating
    /// PUD/PMD tables; the driver chooses the size (no THP gate).
    EarlyFault,
    /// (c) The driver calls `remap_pfn_range` from `->fault`, overwriting the PMD/PTE tables the
    /// core allocated on the way down with a huge leaf, and freeing them.
    RemapOverwrite,
}

impl FaultPath {
    /// All three, in the RFC's order.
    pub const ALL: [FaultPath; 3] = [
        FaultPath::HugeFault,
        FaultPath::EarlyFault,
        FaultPath::RemapOverwrite,
    ];

    /// The scenario-file name.
    pub const fn name(self) -> &'static str {
        match self {
            FaultPath::HugeFault => "huge_fault",
            FaultPath::EarlyFault => "early_fault",
            FaultPath::RemapOverwrite => "remap_overwrite",
        }
    }
}

impl std::str::FromStr for FaultPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultPath::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault path `{s}` (expected huge_fault, early_fault or remap_overwrite)"
                )
            })
    }
}

/// `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ThpPolicy {
    /// `[always]`.
    #[default]
    Always,
    /// `[madvise]`: only VMAs with `MADV_HUGEPAGE`.
    Madvise,
    /// `[never]`.
    Never,
}

impl std::str::FromStr for ThpPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(ThpPolicy::Always),
            "madvise" => Ok(ThpPolicy::Madvise),
            "never" => Ok(ThpPolicy::Never),
            _ => Err(format!(
                "unknown THP policy `{s}` (expected always, madvise or never)"
            )),
        }
    }
}

/// What `__thp_vma_allowable_orders` consults in a fault: the sysfs policy, and whether huge
/// pfnmaps bypass it (the 6.12.115+ / 7.x `vma_file_bypass_thp_tuneables`: "Huge PFN mappings
/// are uncompactable so the policy doesn't apply"; see the hugepfn-kernels table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ThpGate {
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub policy: ThpPolicy,
    /// VM_PFNMAP VMAs with a `huge_fault` handler ignore `policy` (MADV_NOHUGEPAGE still
    /// counts).
    pub bypass_pfnmap: bool,
    /// The largest pfnmap leaf the architecture allows ([`crate::MmConfig::pfnmap_cap`]).
    /// Deliberate difference: Linux offers the order to the driver, which falls back when
    /// `CONFIG_ARCH_SUPPORTS_PUD_PFNMAP` (PMD) is not set (`vfio_pci_vmf_insert_pfn`); the model
    /// does not offer it.
    pub pfnmap_cap: LeafCap,
    /// The granule, which says what `PMD_ORDER` and `PUD_ORDER` are.
    pub geometry: Geometry,
}

/// `thp_vma_allowable_order(vma, vm_flags, TVA_IN_PF | TVA_ENFORCE_SYSFS, order)` for a
/// file-backed VMA in Linux 6.12: the order must be one of `THP_ORDERS_ALL_SPECIAL` (PMD, PUD)
/// and the VMA special-huge (a file and VM_PFNMAP/VM_MIXEDMAP); THP not disabled for it
/// (VM_NOHUGEPAGE); the sysfs policy `always`, or `madvise` with VM_HUGEPAGE — unless
/// [`ThpGate::bypass_pfnmap`] and the VMA is VM_PFNMAP; and a `huge_fault` handler present. In a
/// fault, alignment is the handler's business, not this gate's.
pub fn thp_vma_allowable_order(vma: &Vma, thp: ThpGate, order: u32) -> bool {
    thp.geometry
        .level_of_order(order)
        .is_some_and(|level| thp_vma_allowable_level(vma, thp, level))
}

/// [`thp_vma_allowable_order`] for the order of `level`'s leaves (the fault path's form: it
/// knows the level it is at).
#[inline]
fn thp_vma_allowable_level(vma: &Vma, thp: ThpGate, level: Level) -> bool {
    if level == Level::Pte || level > thp.pfnmap_cap.max_level() {
        return false;
    }
    let special_huge =
        vma.mapping.is_some() && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP);
    if !special_huge || vma.flags.contains(VmFlags::NOHUGEPAGE) {
        return false;
    }
    // Huge pfnmaps never exist in CoW VMAs (the RFC's point 3). Linux leaves this to drivers and
    // BUG()s in vmf_insert_pfn_pmd/pud; the model's gate falls back to PTEs instead.
    if vma.flags.is_cow_mapping() {
        return false;
    }
    let has_huge_fault = vma.ops.as_ref().is_some_and(|o| o.has_huge_fault());
    let bypass = thp.bypass_pfnmap && vma.flags.contains(VmFlags::PFNMAP) && has_huge_fault;
    let sysfs = bypass
        || match thp.policy {
            ThpPolicy::Always => true,
            ThpPolicy::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
            ThpPolicy::Never => false,
        };
    sysfs && has_huge_fault
}

/// Counters of one process's faults (`current->min_flt`, split by the level that served them),
/// kept per thread as the kernel keeps them per task ([`crate::sync::stripe`]) and folded when
/// read, so that threads faulting at once do not share a counter's cache line.
#[derive(Debug, Default)]
pub struct FaultStats {
    stripes: [StatStripe; STRIPES],
}

/// One thread's share of [`FaultStats`].
#[derive(Debug, Default)]
#[repr(align(128))]
struct StatStripe {
    minor: AtomicU64,
    by_level: [AtomicU64; 3],
    sigbus: AtomicU64,
    sigsegv: AtomicU64,
    oom: AtomicU64,
    retries: AtomicU64,
    insert_conflicts: AtomicU64,
}

/// A snapshot of [`FaultStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Minor faults (`ru_minflt`): handled faults, errors excluded.
    pub faults: u64,
    /// The level each was served at: the leaf its handler mapped (PTE also for faults handled
    /// without a handler). Flattened in JSON: `pud`, `pmd`, `pte`.
    #[serde(flatten)]
    pub by_level: LeafCounts,
    /// Faults that ended in SIGBUS.
    pub sigbus: u64,
    /// Faults that ended in SIGSEGV.
    pub sigsegv: u64,
    /// Faults that ended in OOM.
    pub oom: u64,
    /// Faults retried.
    pub retries: u64,
    /// Inserts that met a different pfn (Linux would WARN).
    pub insert_conflicts: u64,
}

impl FaultCounts {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &FaultCounts) -> FaultCounts {
        FaultCounts {
            faults: self.faults.saturating_sub(earlier.faults),
            by_level: self.by_level.saturating_sub(&earlier.by_level),
            sigbus: self.sigbus.saturating_sub(earlier.sigbus),
            sigsegv: self.sigsegv.saturating_sub(earlier.sigsegv),
            oom: self.oom.saturating_sub(earlier.oom),
            retries: self.retries.saturating_sub(earlier.retries),
            insert_conflicts: self
                .insert_conflicts
                .saturating_sub(earlier.insert_conflicts),
        }
    }
}

impl FaultStats {
    /// Snapshot.
    pub fn snapshot(&self) -> FaultCounts {
        let g = |f: fn(&StatStripe) -> &AtomicU64| {
            self.stripes
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        FaultCounts {
            faults: g(|s| &s.minor),
            by_level: LeafCounts {
                pud: g(|s| &s.by_level[2]),
                pmd: g(|s| &s.by_level[1]),
                pte: g(|s| &s.by_level[0]),
            },
            sigbus: g(|s| &s.sigbus),
            sigsegv: g(|s| &s.sigsegv),
            oom: g(|s| &s.oom),
            retries: g(|s| &s.retries),
            insert_conflicts: g(|s| &s.insert_conflicts),
        }
    }

    /// This thread's counters, and how to add to them ([`crate::sync::Lease`]).
    #[inline]
    fn mine(&self) -> (&StatStripe, Lease) {
        let l = lease();
        (&self.stripes[l.index()], l)
    }

    /// `mm_account_fault`: errors and retries are not minor faults.
    /// `n` more faults that ended in `r` (SIGBUS or SIGSEGV), as many accesses of one page
    /// each took (`Mm::access_range` counts them without faulting each again).
    pub(crate) fn account_signals(&self, r: VmFaultResult, n: u64) {
        let (s, l) = self.mine();
        match r {
            VmFaultResult::Sigbus => stripe_add(&s.sigbus, n, l),
            VmFaultResult::Sigsegv => stripe_add(&s.sigsegv, n, l),
            _ => {}
        }
    }

    pub(crate) fn account(&self, r: VmFaultResult, level: Level) {
        let (s, l) = self.mine();
        let inc = |a: &AtomicU64| stripe_add(a, 1, l);
        match r {
            VmFaultResult::Sigbus => inc(&s.sigbus),
            VmFaultResult::Sigsegv => inc(&s.sigsegv),
            VmFaultResult::Oom => inc(&s.oom),
            VmFaultResult::Retry => inc(&s.retries),
            VmFaultResult::NoPage | VmFaultResult::Done | VmFaultResult::Fallback => {
                inc(&s.minor);
                let i = match level {
                    Level::Pud => 2,
                    Level::Pmd => 1,
                    _ => 0,
                };
                inc(&s.by_level[i]);
            }
        }
    }

    /// An insert that met a different pfn.
    pub(crate) fn account_insert_conflict(&self) {
        let (s, l) = self.mine();
        stripe_add(&s.insert_conflicts, 1, l);
    }
}

fn check_insert(vmf: &VmFault<'_>, addr: UserAddr, level: Level) -> Option<VmFaultResult> {
    let vma = vmf.vma;
    // BUG_ON in Linux (vmf_insert_pfn_prot, vmf_insert_pfn_pmd/pud): a driver never inserts pfns
    // into a CoW pfnmap, so huge pfnmaps never exist in CoW VMAs. We refuse instead of crashing.
    if vma.flags.contains(VmFlags::PFNMAP) && vma.flags.is_cow_mapping() {
        return Some(VmFaultResult::Sigbus);
    }
    if !vma.flags.intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP) {
        return Some(VmFaultResult::Sigbus);
    }
    let size = vmf.geometry().size(level);
    let base = addr.align_down(size);
    if base < vma.start || base.saturating_add(size) > vma.end {
        return Some(VmFaultResult::Sigbus);
    }
    None
}

fn insert_leaf(vmf: &VmFault<'_>, addr: UserAddr, pfn: Pfn, level: Level) -> VmFaultResult {
    if level > vmf.pfnmap_cap.max_level() {
        // Not built on this architecture: drivers fall back (vfio-pci's `#ifdef
        // CONFIG_ARCH_SUPPORTS_PUD_PFNMAP`), whichever design calls them.
        return VmFaultResult::Fallback;
    }
    if let Some(r) = check_insert(vmf, addr, level) {
        return r;
    }
    let g = vmf.geometry();
    if !pfn.is_aligned_order(g.pfn_order(level)) {
        // The SDM forbids it and Linux's pud_mkhuge() does not check (upstream.md §3.3).
        return VmFaultResult::Sigbus;
    }
    let mut prot = vmf
        .vma
        .page_prot
        .with(ProtFlags::SPECIAL, ProtFlags::empty());
    if vmf.is_write() && prot.is_writable() {
        prot = prot.with(ProtFlags::ACCESSED | ProtFlags::DIRTY, ProtFlags::empty());
    }
    let Ok(raw) = vmf.pt.encode_leaf(Leaf { pfn, prot, level }) else {
        return VmFaultResult::Sigbus;
    };
    // A PTE insert at the faulting address starts from vmf->pmd, as Linux's does.
    let from = match (level, vmf.pmd.get()) {
        (Level::Pte, Some(pmd))
            if g.align_down(Level::Pmd, addr) == g.align_down(Level::Pmd, vmf.address) =>
        {
            Ok(pmd)
        }
        _ => Err(()),
    };
    let walked = match from {
        Ok(pmd) => vmf.pt.slot_alloc_from(pmd, addr, level),
        Err(()) => vmf.pt.slot_alloc(addr, level),
    };
    let slot: Slot = match walked {
        Ok(s) => s,
        Err(WalkError::Oom) => return VmFaultResult::Oom,
        // 6.12's get_locked_pte returned NULL here, and the fault ended in VM_FAULT_OOM.
        Err(WalkError::HugeAbove(_))
            if level == Level::Pte
                && vmf.pt.bugs().contains(crate::pgtable::Bugs::PTE_INSERT_OOM) =>
        {
            return VmFaultResult::Oom;
        }
        // A bigger leaf already maps it: nothing to do (Linux: pmd not none → NOPAGE).
        Err(WalkError::HugeAbove(_)) => return VmFaultResult::NoPage,
        Err(_) => return VmFaultResult::Sigbus,
    };
    let ptl = vmf.pt.ptl(slot);
    match vmf.pt.decode(slot) {
        Decoded::None => {
            ptl.set(slot, raw);
            vmf.installed.set(Some(level));
            VmFaultResult::NoPage
        }
        Decoded::Leaf(old) if old.pfn != pfn => {
            drop(ptl);
            vmf.stats.account_insert_conflict();
            VmFaultResult::Sigbus
        }
        // The same pfn (a racing fault won), or a table below (the PTE-vs-PMD race of §3.4):
        // Linux returns NOPAGE and the access faults again.
        _ => VmFaultResult::NoPage,
    }
}

/// `vmf_insert_pfn(vma, addr, pfn)`: a special page entry with the VMA's protection.
pub fn vmf_insert_pfn(vmf: &VmFault<'_>, addr: UserAddr, pfn: Pfn) -> VmFaultResult {
    let g = vmf.geometry();
    insert_leaf(vmf, g.align_down(Level::Pte, addr), pfn, Level::Pte)
}

/// `vmf_insert_pfn_pmd(vmf, pfn, write)`: a special PMD leaf (2 MiB; 32 MiB with 16 KiB
/// pages) at `vmf.address`'s block.
pub fn vmf_insert_pfn_pmd(vmf: &VmFault<'_>, pfn: Pfn) -> VmFaultResult {
    let g = vmf.geometry();
    insert_leaf(vmf, g.align_down(Level::Pmd, vmf.address), pfn, Level::Pmd)
}

/// `vmf_insert_pfn_pud(vmf, pfn, write)`: a special PUD leaf (1 GiB) at `vmf.address`'s
/// block.
pub fn vmf_insert_pfn_pud(vmf: &VmFault<'_>, pfn: Pfn) -> VmFaultResult {
    let g = vmf.geometry();
    insert_leaf(vmf, g.align_down(Level::Pud, vmf.address), pfn, Level::Pud)
}

/// How a fault ended, and at which level it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultOutcome {
    /// The result.
    pub result: VmFaultResult,
    /// The level whose handler returned it (PTE for faults handled without one).
    pub level: Level,
}

/// `access_error()` of the x86 fault handler: may this VMA be accessed this way at all?
pub fn access_error(vma: &Vma, write: bool) -> bool {
    if write {
        !vma.flags.contains(VmFlags::WRITE)
    } else {
        !vma.flags
            .intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    }
}

/// `__handle_mm_fault`: walk down, giving the driver a chance at PUD and PMD level, then the PTE
/// path. The caller holds the mmap lock for read and has checked `access_error`.
pub fn handle_mm_fault_locked(
    vma: &Vma,
    pt: &PageTables,
    thp: ThpGate,
    address: UserAddr,
    flags: FaultFlags,
    stats: &FaultStats,
) -> FaultOutcome {
    let vmf = VmFault::new(vma, address, flags, pt, stats).with_pfnmap_cap(thp.pfnmap_cap);
    let write = vmf.is_write();
    let g = pt.geometry();
    let (pud_order, pmd_order) = (g.order(Level::Pud), g.order(Level::Pmd));
    // The level a fault is counted at: the leaf its handler installed, else the path's level.
    let done = |result, level| FaultOutcome {
        result,
        level: vmf.installed.get().unwrap_or(level),
    };
    let ops = vma.ops.as_deref();

    // Design (b): the driver first, before any table is allocated for it.
    if vma.flags.contains(VmFlags::HUGEPFNMAP)
        && let Some(o) = ops
    {
        let r = o.early_fault(&vmf);
        if r != VmFaultResult::Fallback {
            return done(r, Level::Pte);
        }
    }

    // p4d_alloc + pud_alloc.
    let pud = match pt.slot_alloc(address, Level::Pud) {
        Ok(s) => s,
        Err(WalkError::Oom) => return done(VmFaultResult::Oom, Level::Pud),
        Err(_) => return done(VmFaultResult::Sigbus, Level::Pud),
    };
    let mut retries = 0;
    'retry_pud: loop {
        retries += 1;
        if retries > 8 {
            return done(VmFaultResult::Retry, Level::Pud);
        }
        match pt.decode(pud) {
            Decoded::None if thp_vma_allowable_level(vma, thp, Level::Pud) => {
                // create_huge_pud
                if let Some(o) = ops {
                    let r = o.huge_fault(&vmf, pud_order);
                    if r != VmFaultResult::Fallback {
                        return done(r, Level::Pud);
                    }
                }
            }
            Decoded::Leaf(l) => {
                if write && !l.prot.is_writable() {
                    // wp_huge_pud
                    if vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE)
                        && let Some(o) = ops.filter(|o| o.has_huge_fault())
                    {
                        let r = o.huge_fault(&vmf, pud_order);
                        if r != VmFaultResult::Fallback {
                            return done(r, Level::Pud);
                        }
                    }
                    // __split_huge_pud on a pfnmap: zap, then fall through.
                    let b = g.align_down(Level::Pud, address);
                    let _ = pt.zap_range(b, b + g.size(Level::Pud), PartialHuge::ZapWhole);
                } else {
                    set_accessed(pt, pud, write);
                    return done(VmFaultResult::Done, Level::Pud);
                }
            }
            _ => {}
        }
        // pmd_alloc
        let pmd = match pt.slot_alloc_from(pud, address, Level::Pmd) {
            Ok(s) => s,
            Err(WalkError::Oom) => return done(VmFaultResult::Oom, Level::Pmd),
            // pud_trans_unstable: a PUD leaf raced in.
            Err(WalkError::HugeAbove(_)) => continue 'retry_pud,
            Err(_) => return done(VmFaultResult::Sigbus, Level::Pmd),
        };
        match pt.decode(pmd) {
            Decoded::None if thp_vma_allowable_level(vma, thp, Level::Pmd) => {
                if let Some(o) = ops {
                    let r = o.huge_fault(&vmf, pmd_order);
                    if r != VmFaultResult::Fallback {
                        return done(r, Level::Pmd);
                    }
                }
            }
            Decoded::Leaf(l) => {
                if write && !l.prot.is_writable() {
                    if vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE)
                        && let Some(o) = ops.filter(|o| o.has_huge_fault())
                    {
                        let r = o.huge_fault(&vmf, pmd_order);
                        if r != VmFaultResult::Fallback {
                            return done(r, Level::Pmd);
                        }
                    }
                    let b = g.align_down(Level::Pmd, address);
                    let _ = pt.zap_range(b, b + g.size(Level::Pmd), PartialHuge::ZapWhole);
                } else {
                    set_accessed(pt, pmd, write);
                    return done(VmFaultResult::Done, Level::Pmd);
                }
            }
            _ => {}
        }
        vmf.pmd.set(Some(pmd));
        break;
    }
    done(handle_pte_fault(&vmf, ops), Level::Pte)
}

fn set_accessed(pt: &PageTables, slot: Slot, write: bool) {
    let ptl = pt.ptl(slot);
    let raw = ptl.get(slot);
    if let Decoded::Leaf(mut l) = pt.decode_raw(raw, slot.level) {
        l.prot.flags |= ProtFlags::ACCESSED;
        if write && l.prot.is_writable() {
            l.prot.flags |= ProtFlags::DIRTY;
        }
        if let Ok(new) = pt.encode_leaf(l) {
            ptl.set(slot, new);
        }
    }
}

/// `handle_pte_fault` → `do_pte_missing` → `do_fault` → `__do_fault` → `vm_ops->fault`.
fn handle_pte_fault(vmf: &VmFault<'_>, ops: Option<&dyn VmOperations>) -> VmFaultResult {
    let pt = vmf.pt;
    let pte = match vmf.pmd.get() {
        Some(pmd) => match pt.decode(pmd) {
            Decoded::Table(pa) => Ok(Some(Slot {
                table: pa,
                index: pt.geometry().index(Level::Pte, vmf.address.as_u64()),
                level: Level::Pte,
            })),
            Decoded::None => Ok(None),
            Decoded::Leaf(_) => Err(WalkError::HugeAbove(pmd)),
            Decoded::NonPresent(raw) => Err(WalkError::Bad(pmd, raw)),
        },
        None => pt.slot(vmf.address, Level::Pte),
    };
    match pte {
        Ok(Some(slot)) => {
            if let Decoded::Leaf(l) = pt.decode(slot) {
                if !l.prot.flags.contains(ProtFlags::PRESENT) {
                    // PROT_NONE entry in an accessible VMA (NUMA hinting): not modelled.
                    return VmFaultResult::Sigsegv;
                }
                if vmf.is_write() && !l.prot.is_writable() {
                    return do_wp_page(vmf, slot, l);
                }
                set_accessed(pt, slot, vmf.is_write());
                return VmFaultResult::Done;
            }
        }
        Ok(None) => {}
        Err(WalkError::HugeAbove(_)) => return VmFaultResult::Done,
        Err(_) => return VmFaultResult::Sigbus,
    }
    // do_fault
    let Some(ops) = ops else {
        return VmFaultResult::Sigbus;
    };
    if vmf.is_write() && !vmf.vma.flags.contains(VmFlags::SHARED) {
        // do_cow_fault on a pfnmap: drivers never insert into CoW pfnmaps (see check_insert).
        return VmFaultResult::Sigbus;
    }
    // __do_fault preallocates a PTE table when the PMD is empty (and frees it if unused).
    let prealloc = match vmf.pmd.get() {
        Some(pmd) if pt.get(pmd) == 0 => pt.prealloc_pte().ok(),
        _ => None,
    };
    let r = ops.fault(vmf);
    if let Some(t) = prealloc {
        pt.free_prealloc_pte(t);
    }
    r
}

/// `vm_normal_page()`: the page behind a leaf, if it has one. Special entries (pfnmaps) have
/// none; in a CoW pfnmap a non-special entry is an anonymous copy.
pub fn vm_normal_page(pt: &PageTables, leaf: &Leaf) -> Option<Pfn> {
    (!leaf.prot.is_special() && pt.phys().page_refs(leaf.pfn) > 0).then_some(leaf.pfn)
}

/// `do_wp_page`: a write to a present, read-only PTE. Shared mappings are made writable
/// (`wp_pfn_shared`); in a private mapping the page is copied (`wp_page_copy`) unless it is an
/// anonymous page only this mapping uses (`wp_can_reuse_anon_folio`).
fn do_wp_page(vmf: &VmFault<'_>, slot: Slot, l: Leaf) -> VmFaultResult {
    let pt = vmf.pt;
    let vma = vmf.vma;
    if !vma.flags.contains(VmFlags::WRITE) {
        return VmFaultResult::Sigsegv;
    }
    let ptl = pt.ptl(slot);
    if pt.get(slot) != pt.encode_leaf(l).unwrap_or(0) {
        return VmFaultResult::Done; // changed under us: retry the access
    }
    let writable = ProtFlags::WRITE | ProtFlags::DIRTY | ProtFlags::ACCESSED;
    if vma.flags.contains(VmFlags::SHARED) {
        let mut w = l;
        w.prot.flags |= writable;
        if let Ok(raw) = pt.encode_leaf(w) {
            ptl.set(slot, raw);
        }
        return VmFaultResult::Done;
    }
    let phys = pt.phys();
    if let Some(page) = vm_normal_page(pt, &l)
        && phys.page_refs(page) == 1
    {
        let mut w = l;
        w.prot.flags |= writable;
        if let Ok(raw) = pt.encode_leaf(w) {
            ptl.set(slot, raw);
        }
        return VmFaultResult::Done;
    }
    // wp_page_copy: the data of the old page (device memory, or a shared anon page) is copied.
    let content = match vm_normal_page(pt, &l) {
        Some(p) => phys.page_content(p).unwrap_or(0),
        None => l.pfn.as_u64(),
    };
    let Ok(new) = phys.alloc_anon_page(content) else {
        return VmFaultResult::Oom;
    };
    let prot = vma.page_prot.with(writable, ProtFlags::SPECIAL);
    let Ok(raw) = pt.encode_leaf(Leaf {
        pfn: new,
        prot,
        level: Level::Pte,
    }) else {
        phys.put_page(new);
        return VmFaultResult::Sigbus;
    };
    let old = ptl.swap(slot, raw);
    drop(ptl);
    pt.release_leaf(old, Level::Pte);
    let (base, page) = (vmf.address, pt.geometry().page_size());
    pt.flush_tlb_range(base, base + page, crate::pgtable::FlushReason::Cow);
    pt.mmu_notifier_invalidate(base, base + page);
    VmFaultResult::Done
}

/// Design (c): `remap_pfn_range` called from `->fault` for the block of `level` around the
/// fault, overwriting whatever the core put there on the way down (a PMD table, a PTE table) and
/// freeing it. Linux's `remap_pfn_range` wants the mmap lock held for write; a fault holds it for
/// read, and lockless walkers (gup-fast, the hardware walker, other CPUs' TLB fills) may still
/// be inside the tables freed here: both are counted as hazards on the page tables.
pub fn vmf_remap_overwrite(vmf: &VmFault<'_>, pfn: Pfn, level: Level) -> VmFaultResult {
    if level > vmf.pfnmap_cap.max_level() {
        return VmFaultResult::Fallback;
    }
    let g = vmf.geometry();
    let addr = g.align_down(level, vmf.address);
    if let Some(r) = check_insert(vmf, addr, level) {
        return r;
    }
    if !pfn.is_aligned_order(g.pfn_order(level)) {
        return VmFaultResult::Sigbus;
    }
    let prot = vmf
        .vma
        .page_prot
        .with(ProtFlags::SPECIAL, ProtFlags::empty());
    let Ok(raw) = vmf.pt.encode_leaf(Leaf { pfn, prot, level }) else {
        return VmFaultResult::Sigbus;
    };
    let pt = vmf.pt;
    pt.note_hazard(Hazard::RemapUnderReadLock);
    let slot = match pt.slot_alloc(addr, level) {
        Ok(s) => s,
        Err(WalkError::Oom) => return VmFaultResult::Oom,
        Err(WalkError::HugeAbove(_)) => return VmFaultResult::NoPage,
        Err(_) => return VmFaultResult::Sigbus,
    };
    let ptl = pt.ptl(slot);
    let old = ptl.swap(slot, raw);
    drop(ptl);
    vmf.installed.set(Some(level));
    if let (Decoded::Table(t), Some(lower)) = (pt.decode_raw(old, level), level.lower()) {
        let freed = pt.free_table_tree(t, lower);
        for _ in 0..freed {
            pt.note_hazard(Hazard::LiveTableFreed);
        }
        pt.flush_tlb_range(
            addr,
            addr + g.size(level),
            crate::pgtable::FlushReason::Overwrite,
        );
    }
    VmFaultResult::NoPage
}
