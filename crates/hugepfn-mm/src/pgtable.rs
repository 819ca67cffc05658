//! One process's page-table tree: walk, allocate, install, split, zap and free.
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
//! (`pte_offset_map_lock`). Readers may walk without locks: every entry is an atomic.
//!
//! TLB flushes are recorded (count and ranges), not simulated: no TLB is modelled here.

use crate::sync::atomic::{AtomicU64, Ordering};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::sync::{Mutex, MutexGuard, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::addr::{PAGE_SIZE, PagingMode, Pfn, PhysAddr};
use crate::entry::{self, Decoded, EncodeError, Leaf, Pgprot, ProtFlags};
use crate::level::{LeafCap, Level};
use crate::phys::{LevelCounters, PhysError, PhysMem, TableCounts, TablePage};

/// Where one entry lives: a table and an index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The table.
    pub table: PhysAddr,
    /// Index in the table.
    pub index: usize,
    /// Level of the entry.
    pub level: Level,
}

/// A walk could not reach the level asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WalkError {
    /// A leaf sits above the level asked for (`pud_leaf`/`pmd_leaf` on the way down).
    #[error("a {} leaf maps this address", .0.level)]
    HugeAbove(Slot),
    /// An entry on the way down is neither none, a table, nor a leaf.
    #[error("non-present entry {1:#x} on the way down")]
    Bad(Slot, u64),
    /// Table allocation failed (`-ENOMEM`, `VM_FAULT_OOM`).
    #[error("out of memory for page tables")]
    Oom,
    /// A leaf could not be encoded: its pfn is too wide for the format or not aligned to the
    /// leaf's size (a caller's bug, never an allocation failure).
    #[error("cannot encode the leaf: {0}")]
    Encode(EncodeError),
    /// A pfn past the architecture's physical width (a split or remap that would run off the
    /// end of the pfn space).
    #[error("pfn {0:#x} is past the physical address width")]
    PfnTooWide(u64),
    /// An entry seen a moment ago is gone (the table changed under a walk that does not hold
    /// its lock).
    #[error("the {1} entry for {0:#x} vanished during the walk")]
    Vanished(u64, Level),
}

impl From<EncodeError> for WalkError {
    fn from(e: EncodeError) -> Self {
        WalkError::Encode(e)
    }
}

/// Leaves by level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LeafCounts {
    /// 1 GiB leaves.
    pub pud: u64,
    /// 2 MiB leaves.
    pub pmd: u64,
    /// 4 KiB leaves.
    pub pte: u64,
}

impl LeafCounts {
    /// Adds one leaf of `level`.
    pub fn add(&mut self, level: Level, n: u64) {
        match level {
            Level::Pud => self.pud += n,
            Level::Pmd => self.pmd += n,
            Level::Pte => self.pte += n,
            _ => {}
        }
    }

    /// Count at `level`.
    pub fn get(&self, level: Level) -> u64 {
        match level {
            Level::Pud => self.pud,
            Level::Pmd => self.pmd,
            Level::Pte => self.pte,
            _ => 0,
        }
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.pud * Level::Pud.size() + self.pmd * Level::Pmd.size() + self.pte * Level::Pte.size()
    }

    /// Leaves in all.
    pub fn total(&self) -> u64 {
        self.pud + self.pmd + self.pte
    }
}

/// One recorded TLB flush (`flush_tlb_range`, `tlb_finish_mmu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlbFlush {
    /// First address.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// Why: "zap", "split", "free_pgtables", "overwrite", "protect".
    pub reason: &'static str,
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
    pub lo: u64,
    /// End of the highest cleared leaf.
    pub hi: u64,
}

/// `struct mmu_notifier_ops`, the part secondary MMUs (KVM, IOMMU SVA) need: told of every range
/// whose translations are cleared or weakened, after the primary entries changed and before the
/// zap returns, so they drop their own copies (`mmu_notifier_invalidate_range_start/end`).
pub trait MmuNotifier: Send + Sync {
    /// `[start, end)` of this mm no longer maps what it did (zap, revoke, munmap, mprotect).
    fn invalidate_range(&self, start: u64, end: u64);
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

/// What one `move_page_tables` call carries through its extents.
struct Moving {
    /// End of the old range.
    end: u64,
    /// What to do with a huge leaf that cannot move whole.
    partial: PartialHuge,
    /// Leaves moved.
    moved: LeafCounts,
    /// Leaves zapped.
    zapped: LeafCounts,
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

/// The page tables of one `Mm`.
pub struct PageTables {
    phys: Arc<PhysMem>,
    mode: PagingMode,
    root: PhysAddr,
    tables: LevelCounters,
    page_table_lock: Mutex<()>,
    flushes: Mutex<FlushLog>,
    tables_allocated: AtomicU64,
    tables_freed: AtomicU64,
    notifiers: RwLock<Vec<Arc<dyn MmuNotifier>>>,
    /// `mmu_notifier_invalidate_range_start` calls made (whether or not anyone listens).
    notifier_calls: AtomicU64,
    /// Leaves cleared by zaps so far, by level (PUD, PMD, PTE).
    zapped: [AtomicU64; 3],
    hazards: [AtomicU64; 3],
    bugs: Bugs,
    /// Lockless walkers inside the tree now (`rcu_read_lock` sections).
    readers: AtomicU64,
    /// Unlinked tables waiting for a grace period.
    deferred: Mutex<Vec<(PhysAddr, Level)>>,
}

/// A lockless walk in progress (`rcu_read_lock()`…`rcu_read_unlock()`, or IRQs off for
/// gup-fast): tables unlinked meanwhile are not freed until it ends.
pub struct RcuReadGuard<'a> {
    pt: &'a PageTables,
}

impl Drop for RcuReadGuard<'_> {
    fn drop(&mut self) {
        self.pt.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for PageTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTables")
            .field("mode", &self.mode)
            .field("root", &self.root)
            .field("tables", &self.tables.snapshot())
            .finish_non_exhaustive()
    }
}

/// A held page-table lock (`spinlock_t *ptl`).
pub type Ptl<'a> = MutexGuard<'a, ()>;

impl PageTables {
    /// A new tree with an empty PGD (`mm_alloc` → `pgd_alloc`).
    pub fn new(phys: Arc<PhysMem>, mode: PagingMode) -> Result<Self, PhysError> {
        let root = phys.alloc_table(Level::Pgd)?;
        let tables = LevelCounters::default();
        tables.add(Level::Pgd, 1);
        Ok(PageTables {
            phys,
            mode,
            root,
            tables,
            page_table_lock: Mutex::new(()),
            flushes: Mutex::new(FlushLog::default()),
            tables_allocated: AtomicU64::new(1),
            tables_freed: AtomicU64::new(0),
            notifiers: RwLock::new(Vec::new()),
            notifier_calls: AtomicU64::new(0),
            zapped: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            hazards: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            bugs: Bugs::empty(),
            readers: AtomicU64::new(0),
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// The paging mode.
    pub fn mode(&self) -> PagingMode {
        self.mode
    }

    /// The physical memory the tables live in.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }

    /// Physical address of the PGD (what CR3 would hold).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The top level of the walk.
    pub fn top(&self) -> Level {
        Level::top(self.mode)
    }

    /// Page-table pages this tree holds now, named as Linux names the tables.
    pub fn table_counts(&self) -> TableCounts {
        self.tables.snapshot()
    }

    /// Page-table pages allocated and freed over the tree's life.
    pub fn alloc_free_counts(&self) -> (u64, u64) {
        (
            self.tables_allocated.load(Ordering::Relaxed),
            self.tables_freed.load(Ordering::Relaxed),
        )
    }

    /// Enters a lockless walk.
    pub fn rcu_read_lock(&self) -> RcuReadGuard<'_> {
        self.readers.fetch_add(1, Ordering::SeqCst);
        RcuReadGuard { pt: self }
    }

    /// Frees an unlinked table once no lockless walker can still hold it (`pte_free_defer`,
    /// `tlb_remove_table` with RCU): at once if no walk is in progress, else with the next
    /// reclaim that finds none. A walker that starts after the unlink cannot reach the table.
    fn free_deferred(&self, pa: PhysAddr, level: Level) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((pa, level));
        self.reclaim_deferred();
    }

    /// Frees deferred tables if no lockless walk is in progress. Returns how many were freed.
    pub fn reclaim_deferred(&self) -> usize {
        if self.readers.load(Ordering::SeqCst) != 0 {
            return 0;
        }
        let batch: Vec<(PhysAddr, Level)> =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        let n = batch.len();
        for (pa, level) in batch {
            self.free(pa, level);
        }
        n
    }

    /// Tables unlinked but not yet freed.
    pub fn deferred_tables(&self) -> usize {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
        self.alloc(Level::Pte)
    }

    /// `pte_free` of an unused preallocated table.
    pub fn free_prealloc_pte(&self, pa: PhysAddr) {
        self.free(pa, Level::Pte);
    }

    /// Frees a subtree that has just been unlinked (its leaves' page references dropped).
    /// Returns the tables freed.
    pub fn free_table_tree(&self, pa: PhysAddr, level: Level) -> u64 {
        self.free_subtree(pa, level)
    }

    /// `mmu_notifier_register`: `n` is told of every invalidation from now on.
    pub fn register_mmu_notifier(&self, n: Arc<dyn MmuNotifier>) {
        self.notifiers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(n);
    }

    /// Tells every registered notifier that `[start, end)` changed.
    pub fn mmu_notifier_invalidate(&self, start: u64, end: u64) {
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
        let g = |i: usize| self.zapped[i].load(Ordering::Relaxed);
        LeafCounts {
            pud: g(0),
            pmd: g(1),
            pte: g(2),
        }
    }

    /// The TLB flushes recorded so far.
    pub fn flush_log(&self) -> FlushLog {
        self.lock_flushes().clone()
    }

    fn lock_flushes(&self) -> MutexGuard<'_, FlushLog> {
        self.flushes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a TLB flush of `[start, end)`.
    pub fn flush_tlb_range(&self, start: u64, end: u64, reason: &'static str) {
        if end > start {
            self.lock_flushes().record(TlbFlush { start, end, reason });
        }
    }

    fn table_name_level(&self, entry_level: Level) -> Level {
        if entry_level == self.top() {
            Level::Pgd
        } else {
            entry_level
        }
    }

    /// The table page at `pa`. Every pointer in this tree names an allocated table.
    #[inline]
    pub fn table(&self, pa: PhysAddr) -> &TablePage {
        match self.phys.table(pa) {
            Some(t) => t,
            None => unreachable_table(pa),
        }
    }

    /// Reads the entry in `slot`.
    #[inline]
    pub fn get(&self, slot: Slot) -> u64 {
        self.table(slot.table).get(slot.index)
    }

    /// Decodes the entry in `slot`.
    #[inline]
    pub fn decode(&self, slot: Slot) -> Decoded {
        entry::decode(self.get(slot), slot.level)
    }

    /// Writes the entry in `slot`; the caller holds [`PageTables::ptl`] for it.
    #[inline]
    pub fn set(&self, slot: Slot, raw: u64) {
        self.table(slot.table).set(slot.index, raw);
    }

    /// The lock protecting `slot`'s entry: `pud_lock` (= `mm->page_table_lock`) for PUD and
    /// above, the table page's split lock for PMD and PTE tables.
    pub fn ptl(&self, slot: Slot) -> Ptl<'_> {
        match slot.level {
            Level::Pte | Level::Pmd => self.table(slot.table).lock(),
            _ => self
                .page_table_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn alloc(&self, entry_level: Level) -> Result<PhysAddr, WalkError> {
        let pa = self
            .phys
            .alloc_table(self.table_name_level(entry_level))
            .map_err(|_| WalkError::Oom)?;
        self.tables.add(self.table_name_level(entry_level), 1);
        self.tables_allocated.fetch_add(1, Ordering::Relaxed);
        Ok(pa)
    }

    fn free(&self, pa: PhysAddr, entry_level: Level) {
        if self.phys.free_table(pa) {
            self.tables.sub(self.table_name_level(entry_level), 1);
            self.tables_freed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn top_slot(&self, va: u64) -> Slot {
        let level = self.top();
        Slot {
            table: self.root,
            index: level.index(va),
            level,
        }
    }

    /// Lockless walk to the slot holding `va`'s entry at `level`, without allocating
    /// (`pmd_off`, `pte_offset_map`). `Ok(None)`: a table on the way is missing.
    pub fn slot(&self, va: u64, level: Level) -> Result<Option<Slot>, WalkError> {
        let mut slot = self.top_slot(va);
        while slot.level > level {
            match self.decode(slot) {
                Decoded::None => return Ok(None),
                Decoded::Table(pa) => slot = self.child_slot(pa, slot.level, va),
                Decoded::Leaf(_) => return Err(WalkError::HugeAbove(slot)),
                Decoded::NonPresent(raw) => return Err(WalkError::Bad(slot, raw)),
            }
        }
        Ok(Some(slot))
    }

    fn child_slot(&self, pa: PhysAddr, parent: Level, va: u64) -> Slot {
        let level = parent.lower().unwrap_or(Level::Pte);
        Slot {
            table: pa,
            index: level.index(va),
            level,
        }
    }

    /// Walks to `va`'s slot at `level`, allocating missing tables (`p4d_alloc`, `pud_alloc`,
    /// `pmd_alloc`, `pte_alloc`): allocate, take the parent's lock, install if still none,
    /// otherwise free the new table (somebody else won the race).
    pub fn slot_alloc(&self, va: u64, level: Level) -> Result<Slot, WalkError> {
        self.slot_alloc_from(self.top_slot(va), va, level)
    }

    /// [`PageTables::slot_alloc`] starting from a slot already reached for `va` (Linux passes
    /// `vmf->pud`/`vmf->pmd` down instead of walking again).
    pub fn slot_alloc_from(&self, from: Slot, va: u64, level: Level) -> Result<Slot, WalkError> {
        let mut slot = from;
        while slot.level > level {
            match self.decode(slot) {
                Decoded::Table(pa) => slot = self.child_slot(pa, slot.level, va),
                Decoded::Leaf(_) => return Err(WalkError::HugeAbove(slot)),
                Decoded::NonPresent(raw) => return Err(WalkError::Bad(slot, raw)),
                Decoded::None => {
                    let child_level = slot.level.lower().unwrap_or(Level::Pte);
                    let new = self.alloc(child_level)?;
                    let ptl = self.ptl(slot);
                    if self.bugs.contains(Bugs::ALLOC_NO_RECHECK) || self.get(slot) == 0 {
                        self.set(slot, entry::encode_table(new));
                        drop(ptl);
                    } else {
                        drop(ptl);
                        self.free(new, child_level);
                    }
                    // Re-read under the new state (a leaf may have raced in).
                }
            }
        }
        Ok(slot)
    }

    /// Lockless lookup of the leaf mapping `va`, with its slot.
    pub fn lookup(&self, va: u64) -> Option<(Leaf, Slot)> {
        let _rcu = self.rcu_read_lock();
        let mut slot = self.top_slot(va);
        loop {
            match self.decode(slot) {
                Decoded::Table(pa) if slot.level != Level::Pte => {
                    slot = self.child_slot(pa, slot.level, va)
                }
                Decoded::Leaf(l) => return Some((l, slot)),
                _ => return None,
            }
        }
    }

    /// The first address in `[start, end)` that has a leaf or a non-present entry, if any.
    pub fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        self.first_mapped_in(self.root, self.top(), start, end)
    }

    fn first_mapped_in(&self, table: PhysAddr, level: Level, start: u64, end: u64) -> Option<u64> {
        let t = self.table(table);
        let mut va = start;
        while va < end {
            let next = (va | (level.size() - 1)).saturating_add(1).min(end);
            match entry::decode(t.get(level.index(va)), level) {
                Decoded::None => {}
                Decoded::Table(pa) if level != Level::Pte => {
                    if let Some(hit) = self.first_mapped_in(pa, level.lower()?, va, next) {
                        return Some(hit);
                    }
                }
                _ => return Some(va),
            }
            va = next;
        }
        None
    }

    /// Page-table pages reachable from the PGD (PGD included). Equal to
    /// [`PageTables::table_counts`]`.total()` unless a table leaked.
    pub fn reachable_tables(&self) -> u64 {
        fn count(pt: &PageTables, pa: PhysAddr, level: Level) -> u64 {
            let mut n = 1;
            if let Some(lower) = level.lower() {
                let t = pt.table(pa);
                for i in 0..512 {
                    if let Decoded::Table(c) = entry::decode(t.get(i), level) {
                        n += count(pt, c, lower);
                    }
                }
            }
            n
        }
        count(self, self.root, self.top())
    }

    /// Counts leaves (by level) whose first byte lies in `[start, end)`.
    pub fn count_leaves(&self, start: u64, end: u64) -> LeafCounts {
        let mut c = LeafCounts::default();
        self.for_each_leaf(start, end, &mut |_, leaf| c.add(leaf.level, 1));
        c
    }

    /// Calls `f(va, leaf)` for every leaf whose first byte lies in `[start, end)`, in address order.
    pub fn for_each_leaf(&self, start: u64, end: u64, f: &mut dyn FnMut(u64, Leaf)) {
        self.for_each_leaf_in(self.root, self.top(), start, end, f);
    }

    fn for_each_leaf_in(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, Leaf),
    ) {
        let t = self.table(table);
        let mut va = start;
        while va < end {
            let base = va & !(level.size() - 1);
            let next = base.saturating_add(level.size()).min(end);
            match entry::decode(t.get(level.index(va)), level) {
                Decoded::Table(pa) if level != Level::Pte => {
                    if let Some(lower) = level.lower() {
                        self.for_each_leaf_in(pa, lower, va, next, f);
                    }
                }
                Decoded::Leaf(l) if base >= start => f(base, l),
                _ => {}
            }
            if next == base {
                break;
            }
            va = next;
        }
    }

    /// Installs leaves for `[start, end)` mapping to consecutive pfns from `pfn`: at each step the
    /// largest leaf no bigger than `cap` whose block lies inside the range and whose pfn is
    /// aligned to it (VA ≡ PA modulo the block size). The range must be empty (checked by the
    /// caller under the mmap lock); an empty table where a huge leaf goes is freed.
    /// Returns the leaves installed.
    pub fn remap_range(
        &self,
        start: u64,
        end: u64,
        pfn: Pfn,
        prot: Pgprot,
        cap: LeafCap,
    ) -> Result<LeafCounts, WalkError> {
        let mut counts = LeafCounts::default();
        let r = RemapArgs {
            start,
            pfn: pfn.as_u64(),
            prot,
            cap: cap.max_level(),
        };
        self.remap_in(self.root, self.top(), start, end, &r, &mut counts)?;
        Ok(counts)
    }

    fn remap_in(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        r: &RemapArgs,
        counts: &mut LeafCounts,
    ) -> Result<(), WalkError> {
        let t = self.table(table);
        if level == Level::Pte {
            let first = level.index(start);
            let n = ((end - start) / PAGE_SIZE) as usize;
            let pfn = r.pfn + (start - r.start) / PAGE_SIZE;
            let leaf = Leaf {
                pfn: Pfn::new(pfn).map_err(|_| WalkError::PfnTooWide(pfn))?,
                prot: r.prot,
                level,
            };
            let base_raw = entry::encode_leaf(leaf)?;
            let _ptl = t.lock();
            for i in 0..n {
                t.set(first + i, base_raw + (i as u64) * PAGE_SIZE);
            }
            counts.add(Level::Pte, n as u64);
            return Ok(());
        }
        let mut va = start;
        while va < end {
            let base = va & !(level.size() - 1);
            let next = base.saturating_add(level.size()).min(end);
            let slot = Slot {
                table,
                index: level.index(va),
                level,
            };
            let pfn = r.pfn + (va - r.start) / PAGE_SIZE;
            let whole = base == va && next - va == level.size();
            if level.can_be_leaf()
                && level <= r.cap
                && whole
                && Pfn::new(pfn).is_ok_and(|p| p.is_aligned_order(level.order()))
            {
                let leaf = Leaf {
                    pfn: Pfn::new(pfn).map_err(|_| WalkError::PfnTooWide(pfn))?,
                    prot: r.prot,
                    level,
                };
                let raw = entry::encode_leaf(leaf)?;
                let ptl = self.ptl(slot);
                let old = self.get(slot);
                self.set(slot, raw);
                drop(ptl);
                if let Decoded::Table(pa) = entry::decode(old, level) {
                    // An empty table was in the way: free it after a grace period (paging-
                    // structure caches and lockless walkers may hold it).
                    self.free_subtree_deferred(pa, level.lower().unwrap_or(Level::Pte));
                    self.flush_tlb_range(base, base + level.size(), "free_pgtables");
                }
                counts.add(level, 1);
            } else {
                let child = self.slot_alloc_at(slot, va)?;
                self.remap_in(
                    child,
                    level.lower().unwrap_or(Level::Pte),
                    va,
                    next,
                    r,
                    counts,
                )?;
            }
            va = next;
        }
        Ok(())
    }

    /// Returns the table below `slot`, allocating it if the entry is none.
    fn slot_alloc_at(&self, slot: Slot, _va: u64) -> Result<PhysAddr, WalkError> {
        loop {
            match self.decode(slot) {
                Decoded::Table(pa) => return Ok(pa),
                Decoded::Leaf(_) => return Err(WalkError::HugeAbove(slot)),
                Decoded::NonPresent(raw) => return Err(WalkError::Bad(slot, raw)),
                Decoded::None => {
                    let child_level = slot.level.lower().unwrap_or(Level::Pte);
                    let new = self.alloc(child_level)?;
                    let ptl = self.ptl(slot);
                    if self.get(slot) == 0 {
                        self.set(slot, entry::encode_table(new));
                        return Ok(new);
                    }
                    drop(ptl);
                    self.free(new, child_level);
                }
            }
        }
    }

    /// Splits the huge leaf in `slot` into a table of 512 next-level leaves with the same pfns and
    /// attributes (`__split_huge_pud_locked`/`__split_huge_pmd_locked` as the huge-remap RFC
    /// series does it for remap-populated pfnmaps). Returns false if `slot` holds no huge leaf.
    pub fn split_leaf(&self, slot: Slot) -> Result<bool, WalkError> {
        let Some(lower) = slot.level.lower() else {
            return Ok(false);
        };
        let Decoded::Leaf(leaf) = self.decode(slot) else {
            return Ok(false);
        };
        let new = self.alloc(lower)?;
        let nt = self.table(new);
        let step = lower.size() / PAGE_SIZE;
        for i in 0..512u64 {
            let l = Leaf {
                pfn: Pfn::new(leaf.pfn.as_u64() + i * step)
                    .map_err(|_| WalkError::PfnTooWide(leaf.pfn.as_u64() + i * step))?,
                prot: leaf.prot,
                level: lower,
            };
            nt.set(i as usize, entry::encode_leaf(l)?);
        }
        let ptl = self.ptl(slot);
        if self.get(slot) != entry::encode_leaf(leaf).unwrap_or(0) {
            drop(ptl);
            self.free(new, lower);
            return Ok(false);
        }
        self.set(slot, entry::encode_table(new));
        drop(ptl);
        Ok(true)
    }

    /// Makes `addr` a leaf boundary before a VMA is split there (`vma_adjust_trans_huge`): a huge
    /// leaf straddling it is zapped (fault-backed VMAs: `__split_huge_pud/pmd` on a pfnmap) or
    /// split in place until a boundary falls at `addr` (remap-populated VMAs).
    pub fn adjust_trans_huge(&self, addr: u64, partial: PartialHuge) -> Result<(), WalkError> {
        loop {
            let Some((leaf, slot)) = self.lookup(addr) else {
                return Ok(());
            };
            let base = addr & !(leaf.level.size() - 1);
            if leaf.level == Level::Pte || base == addr {
                return Ok(());
            }
            match partial {
                PartialHuge::ZapWhole => {
                    self.zap_range(base, base + leaf.level.size(), PartialHuge::ZapWhole)?;
                    return Ok(());
                }
                PartialHuge::Split => {
                    if !self.split_leaf(slot)? {
                        return Ok(());
                    }
                    self.flush_tlb_range(base, base + leaf.level.size(), "split");
                }
            }
        }
    }

    /// Rewrites the protection of every leaf in `[start, end)` (`change_protection`,
    /// `change_huge_pud`/`change_huge_pmd`/`change_pte_range`): access bits from `newprot`,
    /// while pfn, special, accessed, dirty and the memory type are kept (`pte_modify`). Leaves
    /// must not straddle the range (split them first). Returns the leaves changed.
    pub fn change_protection(&self, start: u64, end: u64, newprot: Pgprot) -> LeafCounts {
        let mut items = Vec::new();
        self.for_each_leaf(start, end, &mut |va, l| items.push((va, l)));
        let mut n = LeafCounts::default();
        for (va, l) in items {
            let Ok(Some(slot)) = self.slot(va, l.level) else {
                continue;
            };
            let keep = l.prot.flags & (ProtFlags::ACCESSED | ProtFlags::DIRTY | ProtFlags::SPECIAL);
            let mut flags = newprot.flags | keep;
            if !l.prot.is_special() && self.phys.page_refs(l.pfn) > 1 {
                flags.remove(ProtFlags::WRITE); // still shared with a fork: keep CoW
            }
            let new = Leaf {
                pfn: l.pfn,
                prot: Pgprot {
                    flags,
                    cache: l.prot.cache,
                },
                level: l.level,
            };
            if let Ok(raw) = entry::encode_leaf(new) {
                let _ptl = self.ptl(slot);
                self.set(slot, raw);
                n.add(l.level, 1);
            }
        }
        if n.total() > 0 {
            self.flush_tlb_range(start, end, "protect");
            self.mmu_notifier_invalidate(start, end);
        }
        n
    }

    /// Moves `[old, old + len)` to `[new, new + len)` as `move_page_tables` does, extent by
    /// extent (`get_extent`: up to the next PUD/PMD boundary of either address):
    /// - a huge leaf moves whole when the extent is its size (`move_huge_pud`/`move_huge_pmd`);
    ///   otherwise it is zapped (fault-backed VMAs refault it) or split until its pieces can
    ///   move (remap-populated VMAs);
    /// - a table moves whole when the extent is the size its parent entry maps and the
    ///   destination entry is none (`move_normal_pud`/`move_normal_pmd`, HAVE_MOVE_PUD/PMD);
    /// - otherwise the destination gets a PMD table wherever the old PMD entry is not none
    ///   (`alloc_new_pmd`) and a PTE table wherever the old one is a table (`pte_alloc`), even
    ///   an empty one a zap left behind, and the PTEs move one by one (`move_ptes`). Those
    ///   tables at the new place keep later faults there from installing PUD or PMD leaves,
    ///   as on the kernel (measured in the lab: `lab-mremap-after-zap-keeps-tables`).
    ///
    /// Returns (leaves moved, leaves zapped).
    pub fn move_page_tables(
        &self,
        old: u64,
        new: u64,
        len: u64,
        partial: PartialHuge,
    ) -> Result<(LeafCounts, LeafCounts), WalkError> {
        let end = old.saturating_add(len);
        let mut mv = Moving {
            end,
            partial,
            moved: LeafCounts::default(),
            zapped: LeafCounts::default(),
        };
        // `get_extent`: up to the next `level` boundary of either address, at most to `end`.
        // Wrapping, as Linux's: at the top of the address space the next boundary wraps to 0
        // and the distance to it is still right.
        let extent = |level: Level, o: u64, n: u64| -> u64 {
            let size = level.size();
            let to = |a: u64| (a & !(size - 1)).wrapping_add(size).wrapping_sub(a);
            to(o).min(to(n)).min(end - o)
        };
        let (mut o, mut n) = (old, new);
        while o < end {
            let ext = extent(Level::Pud, o, n);
            // get_old_pud: nothing above or at the PUD entry → nothing to move here
            let Some(os) = self.slot(o, Level::Pud)? else {
                (o, n) = (o + ext, n + ext);
                continue;
            };
            match self.decode(os) {
                Decoded::None => {
                    (o, n) = (o + ext, n + ext);
                    continue;
                }
                Decoded::Leaf(_) | Decoded::NonPresent(_)
                    if self.bugs.contains(Bugs::MREMAP_PUD_CLEAR_BAD) =>
                {
                    // 6.12: pud_none_or_clear_bad() → pud_ERROR() + pud_clear(), no flush.
                    {
                        let _ptl = self.ptl(os);
                        self.set(os, 0);
                    }
                    self.note_hazard(Hazard::ClearedWithoutFlush);
                    mv.zapped.add(Level::Pud, 1);
                    (o, n) = (o + ext, n + ext);
                    continue;
                }
                Decoded::Leaf(_) | Decoded::NonPresent(_) => {
                    if self.move_leaf_or_break(os, o, n, ext, &mut mv)? {
                        (o, n) = (o + ext, n + ext);
                    }
                    continue; // else re-read: zapped or now a table
                }
                Decoded::Table(_) => {
                    let ds = self.slot_alloc(n, Level::Pud)?; // alloc_new_pud
                    if ext == Level::Pud.size() && self.move_table(os, ds, o, &mut mv.moved) {
                        (o, n) = (o + ext, n + ext);
                        continue;
                    }
                }
            }
            let ext = extent(Level::Pmd, o, n);
            let Some(om) = self.slot(o, Level::Pmd)? else {
                (o, n) = (o + ext, n + ext);
                continue;
            };
            match self.decode(om) {
                Decoded::None => {} // get_old_pmd: none → no new table
                Decoded::Leaf(_) | Decoded::NonPresent(_) => {
                    self.slot_alloc(n, Level::Pmd)?; // alloc_new_pmd
                    if !self.move_leaf_or_break(om, o, n, ext, &mut mv)? {
                        continue; // re-read: zapped or now a table
                    }
                }
                Decoded::Table(pa) => {
                    let dm = self.slot_alloc(n, Level::Pmd)?; // alloc_new_pmd
                    if !(ext == Level::Pmd.size() && self.move_table(om, dm, o, &mut mv.moved)) {
                        let dt = self.slot_alloc_at(dm, n)?; // pte_alloc, even for no PTE
                        let (ot, dtab) = (self.table(pa), self.table(dt));
                        let (oi, di) = (Level::Pte.index(o), Level::Pte.index(n));
                        let count = (ext / PAGE_SIZE) as usize;
                        let mut k = 0;
                        for i in 0..count {
                            let raw = ot.get(oi + i);
                            if raw == 0 {
                                continue;
                            }
                            let from = Slot {
                                table: pa,
                                index: oi + i,
                                level: Level::Pte,
                            };
                            let to = Slot {
                                table: dt,
                                index: di + i,
                                level: Level::Pte,
                            };
                            {
                                let _ptl = self.ptl(to);
                                dtab.set(to.index, raw);
                            }
                            let _ptl = self.ptl(from);
                            ot.set(from.index, 0);
                            k += 1;
                        }
                        mv.moved.add(Level::Pte, k);
                    }
                }
            }
            (o, n) = (o + ext, n + ext);
        }
        self.flush_tlb_range(old, end, "mremap");
        self.mmu_notifier_invalidate(old, end);
        Ok((mv.moved, mv.zapped))
    }

    /// A huge leaf (or non-present entry) in `slot`, met at `o` by an extent `ext` of the move:
    /// moves it whole to `n` when the extent is its size (`move_huge_pud`/`move_huge_pmd`) and
    /// returns true; otherwise zaps its part inside `[.., mv.end)` or splits it (as
    /// `mv.partial` says) and returns false: the caller reads the entry again.
    fn move_leaf_or_break(
        &self,
        slot: Slot,
        o: u64,
        n: u64,
        ext: u64,
        mv: &mut Moving,
    ) -> Result<bool, WalkError> {
        let level = slot.level;
        let size = level.size();
        if ext == size {
            let d = self.slot_alloc(n, level)?;
            if self.get(d) == 0 {
                let raw = self.get(slot);
                {
                    let _ptl = self.ptl(d);
                    self.set(d, raw);
                }
                let _ptl = self.ptl(slot);
                self.set(slot, 0);
                mv.moved.add(level, 1);
                return Ok(true);
            }
        }
        if mv.partial == PartialHuge::Split && matches!(self.decode(slot), Decoded::Leaf(_)) {
            // split (or lost a race to somebody who changed it): read it again
            self.split_leaf(slot)?;
            return Ok(false);
        }
        let base = o & !(size - 1);
        let z = self.zap_range(
            base.max(o),
            base.saturating_add(size).min(mv.end),
            PartialHuge::ZapWhole,
        )?;
        mv.zapped.add(level, z.cleared.get(level));
        Ok(false)
    }

    /// Moves the table `from` points to into the none entry `to` (`move_normal_pud`,
    /// `move_normal_pmd`); counts the leaves under it as moved. False if `to` is not none.
    fn move_table(&self, from: Slot, to: Slot, o: u64, moved: &mut LeafCounts) -> bool {
        if self.get(to) != 0 {
            return false;
        }
        let under = self.count_leaves(o, o + from.level.size());
        let raw = self.get(from);
        {
            let _ptl = self.ptl(to);
            self.set(to, raw);
        }
        let _ptl = self.ptl(from);
        self.set(from, 0);
        for l in Level::LEAF_LEVELS {
            moved.add(l, under.get(l));
        }
        true
    }

    /// Clears every leaf in `[start, end)` (`zap_page_range_single`, `unmap_page_range`).
    /// A huge leaf only partly inside is split or zapped whole, as `partial` says. Tables are
    /// kept; [`PageTables::free_pgtables`] frees the ones no VMA can use any more.
    pub fn zap_range(
        &self,
        start: u64,
        end: u64,
        partial: PartialHuge,
    ) -> Result<ZapStats, WalkError> {
        let mut st = ZapStats {
            lo: u64::MAX,
            ..ZapStats::default()
        };
        self.zap_in(self.root, self.top(), start, end, partial, &mut st)?;
        for (i, n) in [st.cleared.pud, st.cleared.pmd, st.cleared.pte]
            .into_iter()
            .enumerate()
        {
            if n > 0 {
                self.zapped[i].fetch_add(n, Ordering::Relaxed);
            }
        }
        if st.cleared.total() > 0 {
            self.flush_tlb_range(st.lo, st.hi, "zap");
            self.mmu_notifier_invalidate(st.lo, st.hi);
        }
        Ok(st)
    }

    fn zap_in(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        partial: PartialHuge,
        st: &mut ZapStats,
    ) -> Result<(), WalkError> {
        let t = self.table(table);
        let mut va = start;
        while va < end {
            let base = va & !(level.size() - 1);
            let next = base.saturating_add(level.size()).min(end);
            let slot = Slot {
                table,
                index: level.index(va),
                level,
            };
            match entry::decode(t.get(slot.index), level) {
                Decoded::None => {}
                Decoded::Table(pa) if level != Level::Pte => {
                    if let Some(lower) = level.lower() {
                        self.zap_in(pa, lower, va, next, partial, st)?;
                    }
                }
                Decoded::Leaf(_) | Decoded::NonPresent(_) | Decoded::Table(_) => {
                    let covered = base >= start && base + level.size() <= end;
                    if covered || partial == PartialHuge::ZapWhole || level == Level::Pte {
                        let ptl = self.ptl(slot);
                        let old = t.swap(slot.index, 0);
                        drop(ptl);
                        self.release_leaf(old, level);
                        if old != 0 {
                            st.cleared.add(level, 1);
                            st.lo = st.lo.min(base);
                            st.hi = st.hi.max(base + level.size());
                        }
                    } else if self.split_leaf(slot)? {
                        st.splits += 1;
                        self.flush_tlb_range(base, base + level.size(), "split");
                        continue; // re-read: now a table
                    }
                }
            }
            va = next;
        }
        Ok(())
    }

    /// Frees the tables under `[start, end)` whose whole span lies inside `[floor, ceiling)`,
    /// the addresses no VMA uses (`free_pgtables`/`free_pgd_range`). Such tables are empty once
    /// their range has been zapped. Returns how many were freed.
    pub fn free_pgtables(&self, start: u64, end: u64, floor: u64, ceiling: u64) -> u64 {
        let n = self.free_in(self.root, self.top(), start, end, floor, ceiling);
        if n > 0 {
            self.flush_tlb_range(start, end, "free_pgtables");
        }
        n
    }

    fn free_in(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        floor: u64,
        ceiling: u64,
    ) -> u64 {
        if level == Level::Pte {
            return 0;
        }
        let Some(lower) = level.lower() else { return 0 };
        let t = self.table(table);
        let mut freed = 0;
        let mut va = start;
        while va < end {
            let base = va & !(level.size() - 1);
            let span_end = base.saturating_add(level.size());
            let next = span_end.min(end);
            let slot = Slot {
                table,
                index: level.index(va),
                level,
            };
            if let Decoded::Table(pa) = entry::decode(t.get(slot.index), level) {
                freed += self.free_in(pa, lower, va, next, floor, ceiling);
                if base >= floor && span_end <= ceiling && self.table(pa).is_empty() {
                    let ptl = self.ptl(slot);
                    self.set(slot, 0);
                    drop(ptl);
                    self.free_deferred(pa, lower);
                    freed += 1;
                }
            }
            if span_end == base {
                break;
            }
            va = next;
        }
        freed
    }

    /// Drops the page reference a cleared leaf held (`zap_present_ptes` → `folio_remove_rmap`):
    /// only anonymous pages (not special) have one.
    pub fn release_leaf(&self, raw: u64, level: Level) {
        if let Decoded::Leaf(l) = entry::decode(raw, level)
            && !l.prot.is_special()
        {
            self.phys.put_page(l.pfn);
        }
    }

    /// Unlinked subtree: every table in it freed after a grace period.
    fn free_subtree_deferred(&self, pa: PhysAddr, level: Level) {
        let mut all = Vec::new();
        let mut stack = vec![(pa, level)];
        while let Some((t, l)) = stack.pop() {
            all.push((t, l));
            if let Some(lower) = l.lower() {
                let tp = self.table(t);
                for i in 0..512 {
                    match entry::decode(tp.get(i), l) {
                        Decoded::Table(c) => stack.push((c, lower)),
                        Decoded::Leaf(_) => self.release_leaf(tp.get(i), l),
                        _ => {}
                    }
                }
            }
        }
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(all);
        self.reclaim_deferred();
    }

    /// Frees a whole subtree (teardown, and tables replaced by a huge leaf), dropping the page
    /// references its leaves hold. Returns the tables freed.
    fn free_subtree(&self, pa: PhysAddr, level: Level) -> u64 {
        let mut n = 0;
        let t = self.table(pa);
        for i in 0..512 {
            match entry::decode(t.get(i), level) {
                Decoded::Table(child) if level != Level::Pte => {
                    if let Some(lower) = level.lower() {
                        n += self.free_subtree(child, lower);
                    }
                }
                Decoded::Leaf(_) => self.release_leaf(t.get(i), level),
                _ => {}
            }
        }
        self.free(pa, level);
        n + 1
    }
}

struct RemapArgs {
    start: u64,
    pfn: u64,
    prot: Pgprot,
    cap: Level,
}

#[cold]
fn unreachable_table(pa: PhysAddr) -> ! {
    panic!("page-table pointer {pa} does not name an allocated table: tree corrupted")
}

impl Drop for PageTables {
    /// `free_pgd_range` over everything, then `pgd_free`.
    fn drop(&mut self) {
        let pending: Vec<(PhysAddr, Level)> =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for (pa, level) in pending {
            self.free(pa, level);
        }
        let top = self.top();
        let t = self.table(self.root);
        let mut children = Vec::new();
        for i in 0..512 {
            if let Decoded::Table(child) = entry::decode(t.get(i), top) {
                children.push(child);
            }
        }
        for child in children {
            self.free_subtree(child, top.lower().unwrap_or(Level::Pte));
        }
        self.free(self.root, top);
    }
}
