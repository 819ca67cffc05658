//! One process's page-table tree: the engine's `Tree<Cpu>` (hugepfn-pt: walk, allocate, split,
//! free, locks) with the mm's policy on top, in files: `remap` (`remap_pfn_range`), `zap`
//! (split, zap, `free_pgtables`), `protect` (`change_protection`), `move_pt`
//! (`move_page_tables`); TLB flushes (with a [`FlushReason`]), MMU notifiers and hazards here.
//!
//! Models the page-table half of `mm/memory.c` and `mm/huge_memory.c`: `p4d_alloc`/`pud_alloc`/
//! `pmd_alloc`/`pte_alloc` (allocate outside the lock, install under it, free on a lost race),
//! `remap_p4d_range` … `remap_pte_range` (with the RFC's PUD/PMD leaves), `zap_pud_range` …
//! `zap_pte_range`, `free_pgtables` (free a table only when no VMA can use it: the floor/ceiling
//! rule of `free_pgd_range`), and splitting a huge leaf into next-level leaves of the same pfns
//! and attributes.
//!
//! Locks are Linux's split locks: entries of PGD, P4D and PUD tables are written under
//! `mm->page_table_lock` (`pud_lock`), entries of a PMD table under that table page's lock
//! (`pmd_lock` with split PMD locks), entries of a PTE table under its page's lock
//! (`pte_offset_map_lock`); the engine's [`Ptl`] guard is the only way to write an entry.
//! Readers may walk without locks: every entry is an atomic.
//!
//! TLB flushes are recorded (count and ranges), not simulated: no TLB is modelled here.

use crate::sync::atomic::{AtomicU64, Ordering};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::sync::{Mutex, MutexGuard, RwLock};

use hugepfn_pt::format::cpu::Cpu;
use hugepfn_pt::{EncodeError, Format, Geometry, Step, Tree, X86_64};
use serde::Serialize;

use crate::addr::{PAGE_SIZE, PagingMode, PhysAddr, UserAddr};
use crate::entry::{Decoded, Leaf};
use crate::level::{LeafCap, Level};
use crate::phys::{PhysError, PhysMem, TableCounts, TablePage};

pub use hugepfn_pt::counts::{AtomicLeafCounts, LeafCounts};
pub use hugepfn_pt::tree::{LockedLeaf, Ptl, RcuReadGuard, Slot, WalkError};

mod move_pt;
mod protect;
mod remap;
mod zap;

/// Why translations were flushed (the caller of `flush_tlb_range` / `tlb_finish_mmu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// Leaves cleared (`zap_page_range_single`, `unmap_page_range`).
    Zap,
    /// A huge leaf split into a table of smaller ones.
    Split,
    /// Tables unlinked (`free_pgtables`, a table replaced by a huge leaf).
    FreePgtables,
    /// `change_protection`.
    Protect,
    /// `move_page_tables`.
    Mremap,
    /// A CoW copy replaced a read-only leaf (`wp_page_copy`).
    Cow,
    /// fork write-protected the parent's leaves (`copy_present_ptes`).
    ForkWrprotect,
    /// The remap-overwrite design replaced tables under a fault.
    Overwrite,
}

impl FlushReason {
    /// The name in reports (`"free_pgtables"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            FlushReason::Zap => "zap",
            FlushReason::Split => "split",
            FlushReason::FreePgtables => "free_pgtables",
            FlushReason::Protect => "protect",
            FlushReason::Mremap => "mremap",
            FlushReason::Cow => "cow",
            FlushReason::ForkWrprotect => "fork-wrprotect",
            FlushReason::Overwrite => "overwrite",
        }
    }
}

impl Serialize for FlushReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One recorded TLB flush (`flush_tlb_range`, `tlb_finish_mmu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlbFlush {
    /// First address.
    pub start: UserAddr,
    /// End (exclusive).
    pub end: UserAddr,
    /// Why.
    pub reason: FlushReason,
}

/// Record of TLB flushes: all counted, the most recent ranges kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlushLog {
    /// Flushes in all.
    pub count: u64,
    /// Sum of the flushed ranges, in 4 KiB pages.
    pub pages: u64,
    /// The last [`FlushLog::KEEP`] flushes.
    pub recent: VecDeque<TlbFlush>,
}

impl FlushLog {
    /// How many ranges are kept.
    pub const KEEP: usize = 4096;

    fn record(&mut self, f: TlbFlush) {
        self.count += 1;
        self.pages += (f.end - f.start) / PAGE_SIZE;
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(f);
    }
}

/// `struct mmu_gather` (`tlb_gather_mmu` … `tlb_finish_mmu`): what an operation over a range
/// (munmap, mprotect, fork) has cleared, weakened or unlinked, flushed once at the end, over the
/// union of the ranges, as `tlb_flush_mmu` does. The flush is recorded when the gather is
/// finished or dropped. Its reason is the first one added (a munmap's `zap`, which the tables
/// it frees ride along with: `tlb->freed_tables`).
///
/// A split is not gathered: `__split_huge_pmd`/`__split_huge_pud` flush the leaf at once
/// (`pmdp_huge_clear_flush`), and so does the model.
#[must_use = "a gather flushes when it is finished or dropped"]
pub struct MmuGather<'a> {
    pt: &'a PageTables,
    range: Option<(UserAddr, UserAddr, FlushReason)>,
    freed_tables: bool,
}

impl MmuGather<'_> {
    /// `tlb_flush_pte_range` and its kind: `[start, end)` must be flushed before the gather
    /// ends.
    pub fn add_range(&mut self, start: UserAddr, end: UserAddr, reason: FlushReason) {
        if end <= start {
            return;
        }
        self.range = Some(match self.range {
            None => (start, end, reason),
            Some((s, e, r)) => (s.min(start), e.max(end), r),
        });
    }

    /// `tlb->freed_tables`: page tables were unlinked under `[start, end)`.
    pub fn add_freed_tables(&mut self, start: UserAddr, end: UserAddr) {
        self.freed_tables = true;
        self.add_range(start, end, FlushReason::FreePgtables);
    }

    /// Whether tables were unlinked in this gather.
    pub fn freed_tables(&self) -> bool {
        self.freed_tables
    }

    /// `tlb_finish_mmu`: the one flush of everything gathered.
    pub fn finish(self) {}
}

impl Drop for MmuGather<'_> {
    fn drop(&mut self) {
        if let Some((start, end, reason)) = self.range.take() {
            self.pt.flush_tlb_range(start, end, reason);
        }
    }
}

/// What to do with a huge leaf only partly inside a zapped range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialHuge {
    /// Split it into next-level leaves with the same pfns and attributes, then zap the covered
    /// part (remap-populated VMAs: nothing would refill it).
    Split,
    /// Zap all of it (`__split_huge_pud`/`__split_huge_pmd` on a pfnmap: the fault handler
    /// refills what is still mapped).
    ZapWhole,
}

/// What a zap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ZapStats {
    /// Leaves cleared, by level.
    pub cleared: LeafCounts,
    /// Huge leaves split in place.
    pub splits: u64,
    /// Lowest address cleared (the range actually zapped can exceed the request: `ZapWhole`).
    pub lo: UserAddr,
    /// End of the highest cleared leaf.
    pub hi: UserAddr,
}

impl ZapStats {
    /// The range an MMU notifier hears of for a zap of `[start, end)`: the request, widened
    /// to every leaf cleared whole past it.
    pub fn notify_range(&self, start: UserAddr, end: UserAddr) -> (UserAddr, UserAddr) {
        if self.cleared.total() > 0 {
            (start.min(self.lo), end.max(self.hi))
        } else {
            (start, end)
        }
    }
}

/// `struct mmu_notifier_ops`, the part secondary MMUs (KVM, IOMMU SVA) need: told of every range
/// whose translations are cleared or weakened, after the primary entries changed and before the
/// zap returns, so they drop their own copies (`mmu_notifier_invalidate_range_start/end`).
pub trait MmuNotifier: Send + Sync {
    /// `[start, end)` of this mm no longer maps what it did (zap, revoke, munmap, mprotect).
    fn invalidate_range(&self, start: UserAddr, end: UserAddr);
}

bitflags::bitflags! {
    /// Known-buggy variants of the lock protocol, selectable so that the concurrency tests can
    /// show their checker catches each upstream race. Empty (all fixed) unless a test asks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Bugs: u32 {
        /// `__pmd_alloc`/`__pte_alloc` install the new table without re-checking, under the lock,
        /// that the entry is still empty (two racing faults: a leaked table and a lost entry).
        const ALLOC_NO_RECHECK = 1 << 0;
        /// `follow_pfnmap_start` before "mm/memory: fix PMD/PUD checks in follow_pfnmap_start()"
        /// (upstream.md §3.10): uses the entry it read locklessly instead of re-reading it under
        /// the page-table lock, so a concurrent zap hands back a stale pfn.
        const FOLLOW_NO_RECHECK = 1 << 1;
        /// `walk_pmd_range` before 9b25a6e3d243 (§3.11): after splitting a PUD it descends into
        /// whatever the PUD entry holds, even a leaf a concurrent fault just installed.
        const PAGEWALK_NO_RECHECK = 1 << 2;
        /// 6.12's `vmf_insert_pfn`: `get_locked_pte` meets a PMD leaf a concurrent PMD fault
        /// installed and returns NULL → VM_FAULT_OOM (§3.4, the VM killed with "Bad address").
        const PTE_INSERT_OOM = 1 << 3;
        /// Linux 6.12's `move_page_tables` (mm/mremap.c, still so in 2026's mm tree):
        /// `get_old_pud` calls `pud_none_or_clear_bad`, and x86's `pud_bad` takes any entry with
        /// flags beyond `_KERNPG_TABLE | _PAGE_USER` — a leaf's PS, special and cache bits — for
        /// a corrupt table: "bad pud" is printed and the whole leaf cleared, so
        /// `move_huge_pud` is never reached. The leaf is dropped (also the part of it outside
        /// the moved range) with no TLB flush of its own, and the new range refaults. Measured
        /// in the lab (`life-mremap-move-expand-shrink`). Fixed (default): the leaf moves.
        const MREMAP_PUD_CLEAR_BAD = 1 << 4;
        /// Linux 6.12 … 7.3's `vma_adjust_trans_huge` splits PMDs only: a VMA split at an
        /// address inside a PUD leaf that is not 2 MiB aligned oopses in `__split_huge_pmd`
        /// (`mm_find_pmd` walks into the leaf). Detected, not reproduced: the mm counts the
        /// oops ([`crate::Mm::kernel_oopses`]) and goes on as the corrected design. Measured in
        /// the lab (`vfio-munmap-4k-hole-in-pud`).
        const SPLIT_VMA_IN_PUD_OOPS = 1 << 5;
        /// Linux 6.12 … 7.3's `walk_pud_range`/`walk_pmd_range`: a walk with lower callbacks
        /// and no `pud_entry` (`pte_entry`) that stops it calls `split_huge_pud`
        /// (`split_huge_pmd`) on a leaf, which for a pfnmap is a zap: reading
        /// `/proc/PID/smaps` or `numa_maps` destroys a BAR's 1 GiB leaves. Fixed (default):
        /// a special leaf is walked past. Measured in the lab (`lab-proc-*`).
        const PAGEWALK_SPLITS_SPECIAL_LEAVES = 1 << 6;
    }
}

/// A correctness hazard a fault-path design ran into (for `hugepfn compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Hazard {
    /// A page-table page still linked into the tree was freed outside the mmap write lock, with
    /// no RCU grace period: a lockless walker may be reading it (use after free).
    LiveTableFreed,
    /// `remap_pfn_range` ran with the mmap lock held only for read (lockdep complains; concurrent
    /// faults on the same range race).
    RemapUnderReadLock,
    /// A present leaf was cleared with no TLB flush for it (`pud_clear_bad`): until something
    /// else flushes, the CPU may keep translating the old address to the device.
    ClearedWithoutFlush,
}

/// Hazard counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HazardCounts {
    /// [`Hazard::LiveTableFreed`].
    pub live_table_freed: u64,
    /// [`Hazard::RemapUnderReadLock`].
    pub remap_under_read_lock: u64,
    /// [`Hazard::ClearedWithoutFlush`].
    pub cleared_without_flush: u64,
}

/// The page tables of one `Mm`: the engine's [`Tree`] in the architecture's [`Cpu`] format, and what the
/// mm adds to it: TLB-flush records, MMU notifiers, zap counters, hazards and the selectable
/// upstream bugs.
pub struct PageTables {
    tree: Tree<Cpu>,
    /// The format's granule, cached for the hot paths.
    geom: Geometry,
    /// The largest leaf the format can hold (no PUD blocks with 16 or 64 KiB arm64 pages).
    leaf_cap: LeafCap,
    flushes: Mutex<FlushLog>,
    notifiers: RwLock<Vec<Arc<dyn MmuNotifier>>>,
    /// `mmu_notifier_invalidate_range_start` calls made (whether or not anyone listens).
    notifier_calls: AtomicU64,
    /// Leaves cleared by zaps so far, by level (PUD, PMD, PTE).
    zapped: AtomicLeafCounts,
    hazards: [AtomicU64; 3],
    bugs: Bugs,
}

impl std::fmt::Debug for PageTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTables")
            .field("format", &self.tree.format().name())
            .field("root", &self.root())
            .field("tables", &self.table_counts())
            .finish_non_exhaustive()
    }
}

impl PageTables {
    /// A new x86-64 tree with an empty PGD (`mm_alloc` → `pgd_alloc`).
    pub fn new(phys: Arc<PhysMem>, mode: PagingMode) -> Result<Self, PhysError> {
        Self::with_format(phys, Cpu::X86(X86_64 { mode }))
    }

    /// A new tree in the CPU format `fmt`, with an empty PGD. The physical memory's frames must
    /// be the format's granule ([`PhysError::TableTooLarge`] otherwise).
    pub fn with_format(phys: Arc<PhysMem>, fmt: Cpu) -> Result<Self, PhysError> {
        let geom = fmt.geometry();
        let leaf_cap = match (fmt.can_be_leaf(Level::Pud), fmt.can_be_leaf(Level::Pmd)) {
            (true, _) => LeafCap::Pud,
            (false, true) => LeafCap::Pmd,
            (false, false) => LeafCap::Pte,
        };
        Ok(PageTables {
            tree: Tree::new(phys, fmt)?,
            geom,
            leaf_cap,
            flushes: Mutex::new(FlushLog::default()),
            notifiers: RwLock::new(Vec::new()),
            notifier_calls: AtomicU64::new(0),
            zapped: AtomicLeafCounts::default(),
            hazards: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            bugs: Bugs::empty(),
        })
    }

    /// The engine under this tree.
    pub fn tree(&self) -> &Tree<Cpu> {
        &self.tree
    }

    /// The granule: `PAGE_SIZE` and what each level's entry maps (`PMD_SIZE`, …).
    #[inline]
    pub fn geometry(&self) -> Geometry {
        self.geom
    }

    /// The largest leaf this format can hold: what a pfnmap's leaves are capped at whatever
    /// the configuration asks (arm64 with 16 or 64 KiB pages has no level-1 block).
    #[inline]
    pub fn leaf_cap(&self) -> LeafCap {
        self.leaf_cap
    }

    /// The CPU format.
    pub fn format(&self) -> &Cpu {
        self.tree.format()
    }

    /// Encodes a leaf in this tree's format (`pfn_pte`, `pfn_pmd` + `pmd_mkhuge`, …).
    #[inline]
    pub fn encode_leaf(&self, leaf: Leaf) -> Result<u64, EncodeError> {
        self.tree.format().encode_leaf(&leaf, leaf.level)
    }

    /// Decodes a raw entry found at `level` in this tree's format.
    #[inline]
    pub fn decode_raw(&self, raw: u64, level: Level) -> Decoded {
        self.tree.format().decode(raw, level)
    }

    /// The physical memory the tables live in.
    pub fn phys(&self) -> &Arc<PhysMem> {
        self.tree.phys()
    }

    /// Physical address of the PGD (what CR3 would hold).
    pub fn root(&self) -> PhysAddr {
        self.tree.root()
    }

    /// The top level of the walk.
    pub fn top(&self) -> Level {
        self.tree.top()
    }

    /// Page-table pages this tree holds now, named as Linux names the tables.
    pub fn table_counts(&self) -> TableCounts {
        self.tree.table_counts()
    }

    /// Page-table pages allocated and freed over the tree's life.
    pub fn alloc_free_counts(&self) -> (u64, u64) {
        self.tree.alloc_free_counts()
    }

    /// Enters a lockless walk.
    pub fn rcu_read_lock(&self) -> RcuReadGuard<'_> {
        self.tree.rcu_read_lock()
    }

    /// Frees deferred tables if no lockless walk is in progress. Returns how many were freed.
    pub fn reclaim_deferred(&self) -> usize {
        self.tree.reclaim_deferred()
    }

    /// Tables unlinked but not yet freed.
    pub fn deferred_tables(&self) -> usize {
        self.tree.deferred_tables()
    }

    /// Selects buggy protocol variants (tests only; see [`Bugs`]).
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// The buggy variants in force.
    pub fn bugs(&self) -> Bugs {
        self.bugs
    }

    /// Counts a hazard.
    pub fn note_hazard(&self, h: Hazard) {
        let i = match h {
            Hazard::LiveTableFreed => 0,
            Hazard::RemapUnderReadLock => 1,
            Hazard::ClearedWithoutFlush => 2,
        };
        self.hazards[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Hazards met so far.
    pub fn hazards(&self) -> HazardCounts {
        HazardCounts {
            live_table_freed: self.hazards[0].load(Ordering::Relaxed),
            remap_under_read_lock: self.hazards[1].load(Ordering::Relaxed),
            cleared_without_flush: self.hazards[2].load(Ordering::Relaxed),
        }
    }

    /// `pte_alloc_one`: a PTE table not linked anywhere yet (`vmf->prealloc_pte`).
    pub fn prealloc_pte(&self) -> Result<PhysAddr, WalkError> {
        self.tree.alloc(Level::Pte)
    }

    /// `pte_free` of an unused preallocated table.
    pub fn free_prealloc_pte(&self, pa: PhysAddr) {
        self.tree.free(pa, Level::Pte);
    }

    /// Frees a subtree that has just been unlinked (its leaves' page references dropped).
    /// Returns the tables freed.
    pub fn free_table_tree(&self, pa: PhysAddr, level: Level) -> u64 {
        self.tree.free_subtree(pa, level)
    }

    /// `mmu_notifier_register`: `n` is told of every invalidation from now on.
    pub fn register_mmu_notifier(&self, n: Arc<dyn MmuNotifier>) {
        self.notifiers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(n);
    }

    /// Tells every registered notifier that `[start, end)` changed.
    pub fn mmu_notifier_invalidate(&self, start: UserAddr, end: UserAddr) {
        if end <= start {
            return;
        }
        self.notifier_calls.fetch_add(1, Ordering::Relaxed);
        let ns = self.notifiers.read().unwrap_or_else(|e| e.into_inner());
        for n in ns.iter() {
            n.invalidate_range(start, end);
        }
    }

    /// MMU-notifier invalidations sent so far (`mmu_notifier_invalidate_range_start`).
    pub fn mmu_notifier_calls(&self) -> u64 {
        self.notifier_calls.load(Ordering::Relaxed)
    }

    /// Leaves cleared by zaps so far (munmap, revocation, a split of a pfnmap leaf, …).
    pub fn zapped_leaves(&self) -> LeafCounts {
        self.zapped.snapshot()
    }

    /// The TLB flushes recorded so far.
    pub fn flush_log(&self) -> FlushLog {
        self.lock_flushes().clone()
    }

    fn lock_flushes(&self) -> MutexGuard<'_, FlushLog> {
        self.flushes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `tlb_gather_mmu`: a gather that flushes once, at its end ([`MmuGather`]).
    pub fn tlb_gather_mmu(&self) -> MmuGather<'_> {
        MmuGather {
            pt: self,
            range: None,
            freed_tables: false,
        }
    }

    /// Records a TLB flush of `[start, end)`.
    pub fn flush_tlb_range(&self, start: UserAddr, end: UserAddr, reason: FlushReason) {
        if end > start {
            self.lock_flushes().record(TlbFlush { start, end, reason });
        }
    }

    /// The table page at `pa`, or [`WalkError::Corrupt`] if `pa` names no allocated table (a
    /// corrupt tree: an error like the engine's walks report, not a panic).
    #[inline]
    pub fn table(&self, pa: PhysAddr) -> Result<TablePage<'_>, WalkError> {
        self.tree.table(pa)
    }

    /// Reads the entry in `slot`.
    #[inline]
    pub fn get(&self, slot: Slot) -> u64 {
        self.tree.get(slot)
    }

    /// Decodes the entry in `slot`. A none entry and a table pointer (what a fault's walk
    /// meets at every level but the last) are told apart from the raw bits, without the
    /// attribute decode a leaf needs.
    #[inline]
    pub fn decode(&self, slot: Slot) -> Decoded {
        let raw = self.get(slot);
        if raw == 0 {
            debug_assert!(matches!(self.decode_raw(0, slot.level), Decoded::None));
            return Decoded::None;
        }
        if let Some(pa) = self.format().table_of(raw, slot.level) {
            return Decoded::Table(pa);
        }
        self.decode_raw(raw, slot.level)
    }

    /// The lock protecting `slot`'s entry: `pud_lock` (= `mm->page_table_lock`) for PUD and
    /// above, the table page's split lock for PMD and PTE tables. Its guard is the only way to
    /// write the entry.
    pub fn ptl(&self, slot: Slot) -> Ptl<'_> {
        self.tree.lock(slot)
    }

    /// Lockless walk to the slot holding `va`'s entry at `level`, without allocating
    /// (`pmd_off`, `pte_offset_map`). `Ok(None)`: a table on the way is missing.
    pub fn slot(&self, va: UserAddr, level: Level) -> Result<Option<Slot>, WalkError> {
        self.tree.slot(va, level)
    }

    /// Walks to `va`'s slot at `level`, allocating missing tables (`p4d_alloc`, `pud_alloc`,
    /// `pmd_alloc`, `pte_alloc`): allocate, take the parent's lock, install if still none,
    /// otherwise free the new table (somebody else won the race).
    pub fn slot_alloc(&self, va: UserAddr, level: Level) -> Result<Slot, WalkError> {
        self.slot_alloc_from(self.tree.top_slot(va), va, level)
    }

    /// [`PageTables::slot_alloc`] starting from a slot already reached for `va` (Linux passes
    /// `vmf->pud`/`vmf->pmd` down instead of walking again).
    pub fn slot_alloc_from(
        &self,
        from: Slot,
        va: UserAddr,
        level: Level,
    ) -> Result<Slot, WalkError> {
        let recheck = !self.bugs.contains(Bugs::ALLOC_NO_RECHECK);
        self.tree.slot_alloc_from(from, va, level, recheck)
    }

    /// Lockless lookup of the leaf mapping `va`, with its slot.
    pub fn lookup(&self, va: UserAddr) -> Option<(Leaf, Slot)> {
        self.tree.lookup(va)
    }

    /// [`PageTables::lookup`] without decoding: the raw leaf entry and its slot.
    pub fn lookup_raw(&self, va: UserAddr) -> Option<(u64, Slot)> {
        self.tree.lookup_raw(va)
    }

    /// A lockless walk to `va`'s leaf that ends holding its lock, inside the walk's RCU
    /// section (`pte_offset_map_lock`; [`Tree::lookup_lock`]).
    #[inline]
    pub fn lookup_lock(&self, va: UserAddr) -> Option<LockedLeaf<'_>> {
        self.tree.lookup_lock(va)
    }

    /// The CPU's access to `va` (a user access; a write if `write`): the level of the leaf
    /// that lets it through, if one does. A walk that decodes nothing and, like the hardware's,
    /// enters no RCU section ([`hugepfn_pt::Tree::hw_lookup_raw`]).
    pub fn user_access(&self, va: UserAddr, write: bool) -> Option<Level> {
        let (raw, slot) = self.tree.hw_lookup_raw(va)?;
        self.format()
            .user_access(raw, slot.level, write)
            .then_some(slot.level)
    }

    /// Checks that every table pointer under `[start, end)` names a page-table page
    /// ([`WalkError::Corrupt`] otherwise), so that an operation that must not stop halfway
    /// (mremap's move) can refuse a corrupt tree before it changes anything.
    pub fn check_tables(&self, start: UserAddr, end: UserAddr) -> Result<(), WalkError> {
        self.tree.walk_range::<WalkError>(start, end, &mut |t, v| {
            Ok(match v.entry {
                // a PTE table: its page must exist; its 512 entries need no visit
                hugepfn_pt::Entry::Table(pa) if v.slot.level == Level::Pmd => {
                    t.table(pa)?;
                    Step::Next
                }
                // above: the walk checks each table as it descends into it
                hugepfn_pt::Entry::Table(_) if !v.post => Step::Descend,
                _ => Step::Next,
            })
        })
    }

    /// The first address in `[start, end)` that has a leaf or a non-present entry, if any.
    pub fn first_mapped(&self, start: UserAddr, end: UserAddr) -> Option<UserAddr> {
        self.tree.first_mapped(start, end)
    }

    /// Page-table pages reachable from the PGD (PGD included). Equal to
    /// [`PageTables::table_counts`]`.total()` unless a table leaked.
    pub fn reachable_tables(&self) -> u64 {
        self.tree.reachable_tables()
    }

    /// Counts leaves (by level) whose first byte lies in `[start, end)`.
    pub fn count_leaves(&self, start: UserAddr, end: UserAddr) -> LeafCounts {
        let [pte, pmd, pud] = self.tree.count_leaves(start, end);
        LeafCounts { pud, pmd, pte }
    }

    /// Calls `f(va, leaf)` for every leaf whose first byte lies in `[start, end)`, in address order.
    pub fn for_each_leaf(&self, start: UserAddr, end: UserAddr, f: &mut dyn FnMut(UserAddr, Leaf)) {
        self.tree
            .for_each_leaf(start, end, &mut |va, l, _| f(va, l));
    }
}
