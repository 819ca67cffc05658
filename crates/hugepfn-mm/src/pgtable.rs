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

use hugepfn_pt::format::cpu::Cpu;
use hugepfn_pt::{EncodeError, Format, Step, Tree, X86_64};
use serde::Serialize;

use crate::addr::{PAGE_SIZE, PagingMode, Pfn, PhysAddr};
use crate::entry::{Decoded, Leaf, Pgprot, ProtFlags};
use crate::level::{LeafCap, Level};
use crate::phys::{PhysError, PhysMem, TableCounts, TablePage};

pub use hugepfn_pt::tree::{Ptl, RcuReadGuard, Slot, WalkError};

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

/// The page tables of one `Mm`: the engine's [`Tree`] in the architecture's [`Cpu`] format, and what the
/// mm adds to it: TLB-flush records, MMU notifiers, zap counters, hazards and the selectable
/// upstream bugs.
pub struct PageTables {
    tree: Tree<Cpu>,
    flushes: Mutex<FlushLog>,
    notifiers: RwLock<Vec<Arc<dyn MmuNotifier>>>,
    /// `mmu_notifier_invalidate_range_start` calls made (whether or not anyone listens).
    notifier_calls: AtomicU64,
    /// Leaves cleared by zaps so far, by level (PUD, PMD, PTE).
    zapped: [AtomicU64; 3],
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

    /// A new tree in the CPU format `fmt`, with an empty PGD.
    pub fn with_format(phys: Arc<PhysMem>, fmt: Cpu) -> Result<Self, PhysError> {
        Ok(PageTables {
            tree: Tree::new(phys, fmt)?,
            flushes: Mutex::new(FlushLog::default()),
            notifiers: RwLock::new(Vec::new()),
            notifier_calls: AtomicU64::new(0),
            zapped: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            hazards: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            bugs: Bugs::empty(),
        })
    }

    /// The engine under this tree.
    pub fn tree(&self) -> &Tree<Cpu> {
        &self.tree
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

    /// The table page at `pa`. Every pointer in this tree names an allocated table: one that
    /// does not is a corrupt tree (the engine's walks report [`WalkError::Corrupt`]).
    #[inline]
    pub fn table(&self, pa: PhysAddr) -> &TablePage {
        match self.tree.table(pa) {
            Ok(t) => t,
            Err(_) => unreachable_table(pa),
        }
    }

    /// Reads the entry in `slot`.
    #[inline]
    pub fn get(&self, slot: Slot) -> u64 {
        self.tree.get(slot)
    }

    /// Decodes the entry in `slot`.
    #[inline]
    pub fn decode(&self, slot: Slot) -> Decoded {
        self.tree.decode(slot)
    }

    /// The lock protecting `slot`'s entry: `pud_lock` (= `mm->page_table_lock`) for PUD and
    /// above, the table page's split lock for PMD and PTE tables. Its guard is the only way to
    /// write the entry.
    pub fn ptl(&self, slot: Slot) -> Ptl<'_> {
        self.tree.lock(slot)
    }

    /// Lockless walk to the slot holding `va`'s entry at `level`, without allocating
    /// (`pmd_off`, `pte_offset_map`). `Ok(None)`: a table on the way is missing.
    pub fn slot(&self, va: u64, level: Level) -> Result<Option<Slot>, WalkError> {
        self.tree.slot(va, level)
    }

    /// Walks to `va`'s slot at `level`, allocating missing tables (`p4d_alloc`, `pud_alloc`,
    /// `pmd_alloc`, `pte_alloc`): allocate, take the parent's lock, install if still none,
    /// otherwise free the new table (somebody else won the race).
    pub fn slot_alloc(&self, va: u64, level: Level) -> Result<Slot, WalkError> {
        self.slot_alloc_from(self.tree.top_slot(va), va, level)
    }

    /// [`PageTables::slot_alloc`] starting from a slot already reached for `va` (Linux passes
    /// `vmf->pud`/`vmf->pmd` down instead of walking again).
    pub fn slot_alloc_from(&self, from: Slot, va: u64, level: Level) -> Result<Slot, WalkError> {
        let recheck = !self.bugs.contains(Bugs::ALLOC_NO_RECHECK);
        self.tree.slot_alloc_from(from, va, level, recheck)
    }

    /// Lockless lookup of the leaf mapping `va`, with its slot.
    pub fn lookup(&self, va: u64) -> Option<(Leaf, Slot)> {
        self.tree.lookup(va)
    }

    /// The first address in `[start, end)` that has a leaf or a non-present entry, if any.
    pub fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        self.tree.first_mapped(start, end)
    }

    /// Page-table pages reachable from the PGD (PGD included). Equal to
    /// [`PageTables::table_counts`]`.total()` unless a table leaked.
    pub fn reachable_tables(&self) -> u64 {
        self.tree.reachable_tables()
    }

    /// Counts leaves (by level) whose first byte lies in `[start, end)`.
    pub fn count_leaves(&self, start: u64, end: u64) -> LeafCounts {
        let [pte, pmd, pud] = self.tree.count_leaves(start, end);
        LeafCounts { pud, pmd, pte }
    }

    /// Calls `f(va, leaf)` for every leaf whose first byte lies in `[start, end)`, in address order.
    pub fn for_each_leaf(&self, start: u64, end: u64, f: &mut dyn FnMut(u64, Leaf)) {
        self.tree
            .for_each_leaf(start, end, &mut |va, l, _| f(va, l));
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
        self.remap_in(self.root(), self.top(), start, end, &r, &mut counts)?;
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
        if level == Level::Pte {
            let first = level.index(start);
            let n = ((end - start) / PAGE_SIZE) as usize;
            let pfn = r.pfn + (start - r.start) / PAGE_SIZE;
            let leaf = Leaf {
                pfn: Pfn::new(pfn).map_err(|_| WalkError::PfnTooWide(pfn))?,
                prot: r.prot,
                level,
            };
            let base_raw = self.encode_leaf(leaf)?;
            let slot = Slot {
                table,
                index: first,
                level,
            };
            self.ptl(slot).fill(slot, n, base_raw, PAGE_SIZE);
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
                let raw = self.encode_leaf(leaf)?;
                let old = self.ptl(slot).swap(slot, raw);
                if let Decoded::Table(pa) = self.decode_raw(old, level) {
                    // An empty table was in the way: free it after a grace period (paging-
                    // structure caches and lockless walkers may hold it).
                    self.tree
                        .free_subtree_deferred(pa, level.lower().unwrap_or(Level::Pte));
                    self.flush_tlb_range(base, base + level.size(), "free_pgtables");
                }
                counts.add(level, 1);
            } else {
                let child = self.tree.table_below(slot)?;
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

    /// Splits the huge leaf in `slot` into a table of 512 next-level leaves with the same pfns and
    /// attributes (`__split_huge_pud_locked`/`__split_huge_pmd_locked` as the huge-remap RFC
    /// series does it for remap-populated pfnmaps). Returns false if `slot` holds no huge leaf.
    pub fn split_leaf(&self, slot: Slot) -> Result<bool, WalkError> {
        self.tree.split_leaf(slot)
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
            if !l.prot.is_special() && self.phys().page_refs(l.pfn) > 1 {
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
            if let Ok(raw) = self.encode_leaf(new) {
                self.ptl(slot).set(slot, raw);
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
                    self.ptl(os).set(os, 0);
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
                        let dt = self.tree.table_below(dm)?; // pte_alloc, even for no PTE
                        let ot = self.table(pa);
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
                            self.move_entry(from, to);
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
                self.move_entry(slot, d);
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

    /// Moves one entry: cleared at `from` under its lock (`ptep_get_and_clear`), written at `to`
    /// under its lock (`set_pte_at`). The two locks are taken one after the other, not nested
    /// as in `move_ptes`: the mmap lock is held for writing, so no fault can fill either slot
    /// in between, and a lockless reader sees the entry in neither place (as after a zap).
    fn move_entry(&self, from: Slot, to: Slot) {
        let raw = self.ptl(from).swap(from, 0);
        self.ptl(to).set(to, raw);
    }

    /// Moves the table `from` points to into the none entry `to` (`move_normal_pud`,
    /// `move_normal_pmd`); counts the leaves under it as moved. False if `to` is not none.
    fn move_table(&self, from: Slot, to: Slot, o: u64, moved: &mut LeafCounts) -> bool {
        if self.get(to) != 0 {
            return false;
        }
        let under = self.count_leaves(o, o + from.level.size());
        self.move_entry(from, to);
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
        self.zap_pmd_range(start, end, partial, &mut st)?;
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

    /// `unmap_page_range` → `zap_p4d_range` … `zap_pte_range`, as one engine walk: a leaf (or a
    /// non-present entry) wholly inside is cleared under its lock; a huge one only partly inside
    /// is split and its pieces visited again, or cleared whole, as `partial` says.
    fn zap_pmd_range(
        &self,
        start: u64,
        end: u64,
        partial: PartialHuge,
        st: &mut ZapStats,
    ) -> Result<(), WalkError> {
        self.tree.walk_range(start, end, &mut |t, v| {
            let level = v.slot.level;
            Ok(match v.entry {
                Decoded::None => Step::Next,
                Decoded::Table(_) => Step::Descend,
                Decoded::Leaf(_) | Decoded::NonPresent(_) => {
                    if v.covered() || partial == PartialHuge::ZapWhole || level == Level::Pte {
                        let old = t.lock(v.slot).swap(v.slot, 0);
                        self.release_leaf(old, level);
                        if old != 0 {
                            st.cleared.add(level, 1);
                            st.lo = st.lo.min(v.base);
                            st.hi = st.hi.max(v.base + level.size());
                        }
                        Step::Next
                    } else if t.split_leaf(v.slot)? {
                        st.splits += 1;
                        self.flush_tlb_range(v.base, v.base + level.size(), "split");
                        Step::Again // now a table
                    } else {
                        Step::Next
                    }
                }
            })
        })
    }

    /// Frees the tables under `[start, end)` whose whole span lies inside `[floor, ceiling)`,
    /// the addresses no VMA uses (`free_pgtables`/`free_pgd_range`). Such tables are empty once
    /// their range has been zapped. Returns how many were freed.
    pub fn free_pgtables(&self, start: u64, end: u64, floor: u64, ceiling: u64) -> u64 {
        let mut freed = 0;
        let _ = self.tree.walk_range::<WalkError>(start, end, &mut |t, v| {
            let Decoded::Table(pa) = v.entry else {
                return Ok(Step::Next);
            };
            if !v.post {
                return Ok(Step::Descend);
            }
            let span_end = v.base.saturating_add(v.slot.level.size());
            if v.base >= floor && span_end <= ceiling && t.table(pa)?.is_empty() {
                t.lock(v.slot).set(v.slot, 0);
                t.free_subtree_deferred(pa, v.slot.level.lower().unwrap_or(Level::Pte));
                freed += 1;
            }
            Ok(Step::Next)
        });
        if freed > 0 {
            self.flush_tlb_range(start, end, "free_pgtables");
        }
        freed
    }

    /// Drops the page reference a cleared leaf held (`zap_present_ptes` →
    /// `folio_remove_rmap`): only anonymous pages (not special) have one.
    pub fn release_leaf(&self, raw: u64, level: Level) {
        self.tree.format().release_leaf(self.phys(), raw, level);
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
