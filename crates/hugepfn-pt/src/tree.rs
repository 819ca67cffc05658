//! The engine: one radix tree of page tables over simulated physical memory, generic over an
//! entry [`Format`].
//!
//! What every page-table user in the kernel does by hand, done once: walk to a level without
//! allocating (`pmd_off`, `pfn_to_dma_pte` with no allocation), walk allocating the tables on the
//! way down (`__pud_alloc`/`__pmd_alloc`/`__pte_alloc`: allocate outside the lock, install under
//! it if the entry is still none, free on a lost race), look up the leaf for an address, visit a
//! range (`walk_page_range`'s shape: an entry before and after its subtree), split a huge leaf
//! into a table of the next level's leaves with the same frames and attributes, free a subtree,
//! and free unlinked tables after a grace period (`tlb_remove_table` with RCU, `pte_free_defer`).
//!
//! **Locks.** A [`Ptl`] is the only way to write an entry: [`Tree::lock`] returns the lock that
//! protects a slot under the format's [`Locking`] (Linux's split locks for CPU tables, one lock
//! for an IOMMU domain or an EPT), and [`Ptl::set`]/[`Ptl::swap`] check (in debug builds) that
//! the guard covers the slot written. Readers walk without locks: every entry is an atomic.
//!
//! **Errors.** A pointer that names no table frame is [`WalkError::Corrupt`] wherever a walk
//! follows it; allocation failure is [`WalkError::Oom`]; a leaf that cannot be encoded is
//! [`WalkError::Encode`]. Nothing is turned into "out of memory" that is not.

use std::sync::Arc;

use thiserror::Error;

use crate::addr::{InputAddr, PAGE_SHIFT, Pfn, PhysAddr};
use crate::format::{EncodeError, Entry, Format, LeafOps, Locking};
use crate::level::{Geometry, Level};
use crate::phys::{Frames, LevelCounters, PhysError, PhysMem, TableCounts, TablePage};
use crate::sync::atomic::{AtomicU64, Ordering, fence};
use crate::sync::{Mutex, STRIPES, SpinGuard, SpinLock, lease};

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
    /// A table pointer names no page-table frame: the tree is corrupt.
    #[error("table pointer {0} names no page-table frame: the tree is corrupt")]
    Corrupt(PhysAddr),
}

impl From<EncodeError> for WalkError {
    fn from(e: EncodeError) -> Self {
        WalkError::Encode(e)
    }
}

/// A held page-table lock (`spinlock_t *ptl`): the proof a writer needs.
pub struct Ptl<'a> {
    _guard: SpinGuard<'a>,
    frames: &'a Frames,
    /// The tree's count of changed table entries, for the walk caches ([`Tree::lookup`]).
    relinks: &'a AtomicU64,
    scope: Scope,
    /// The locked table's page, for a split lock.
    page: Option<TablePage<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// One table's split lock.
    Table(PhysAddr),
    /// The tree's lock: every entry it protects under the format's locking.
    Tree(Locking),
}

impl Ptl<'_> {
    /// True if this lock protects `slot`'s entry.
    pub fn covers(&self, slot: Slot) -> bool {
        match self.scope {
            Scope::Table(t) => t == slot.table,
            Scope::Tree(Locking::Single) => true,
            Scope::Tree(Locking::Split) => slot.level > Level::Pmd,
        }
    }

    #[inline]
    fn page(&self, slot: Slot) -> Option<TablePage<'_>> {
        debug_assert!(
            self.covers(slot),
            "{slot:?} written without its page-table lock"
        );
        match (self.scope, self.page) {
            (Scope::Table(t), Some(p)) if t == slot.table => Some(p),
            _ => self.frames.table(slot.table),
        }
    }

    /// Reads the entry in `slot`.
    #[inline]
    pub fn get(&self, slot: Slot) -> u64 {
        match (self.scope, self.page) {
            (Scope::Table(t), Some(p)) if t == slot.table => p.get(slot.index),
            _ => self
                .frames
                .table(slot.table)
                .map_or(0, |t| t.get(slot.index)),
        }
    }

    /// Writes the entry in `slot` (`set_pte_at`, `set_pmd_at`, `set_pud_at`).
    #[inline]
    pub fn set(&self, slot: Slot, raw: u64) {
        if let Some(t) = self.page(slot) {
            if slot.level > Level::Pte {
                let old = t.swap(slot.index, raw);
                self.relinked(old, raw);
            } else {
                t.set(slot.index, raw);
            }
        }
    }

    /// An entry above the PTEs changed from `old` to `raw`: if it held something (a table
    /// pointer, or a leaf a walk cache cannot hold but need not tell apart), the walk caches
    /// are stale (the `flush_tlb_*` that drops a CPU's paging-structure caches).
    #[inline]
    fn relinked(&self, old: u64, raw: u64) {
        if old != 0 && old != raw {
            self.relinks.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Writes `n` consecutive entries of one table from `slot` on: `first`, `first + step`, …
    /// (`remap_pte_range`'s loop, `set_ptes`).
    #[inline]
    pub fn fill(&self, slot: Slot, n: usize, first: u64, step: u64) {
        if let Some(t) = self.page(slot) {
            for i in 0..n {
                let raw = first + (i as u64) * step;
                if slot.level > Level::Pte {
                    self.relinked(t.swap(slot.index + i, raw), raw);
                } else {
                    t.set(slot.index + i, raw);
                }
            }
        }
    }

    /// Clears the entry in `slot` and returns what it held (`ptep_get_and_clear`).
    #[inline]
    pub fn swap(&self, slot: Slot, raw: u64) -> u64 {
        let old = self.page(slot).map_or(0, |t| t.swap(slot.index, raw));
        if slot.level > Level::Pte {
            self.relinked(old, raw);
        }
        old
    }
}

/// A lockless walk in progress (`rcu_read_lock()`…`rcu_read_unlock()`, or IRQs off for
/// gup-fast): tables unlinked meanwhile are not freed until it ends.
pub struct RcuReadGuard<'a> {
    readers: &'a AtomicU64,
    /// Whether this thread owns the counter's stripe ([`crate::sync::Lease`]).
    owned: bool,
    /// Not `Send`: it leaves the section on the thread that entered it (an owned stripe is
    /// written by its thread alone).
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RcuReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.owned {
            // Only this thread writes its stripe: a release store ends the section (the
            // grace period's SeqCst loads read it), as `rcu_read_unlock` is no atomic
            // instruction in the kernel.
            let n = self.readers.load(Ordering::Relaxed);
            self.readers.store(n - 1, Ordering::Release);
        } else {
            self.readers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What [`Tree::lookup_lock`] found: the leaf entry as the lockless walk saw it and as it is
/// under its lock, where it is, and the lock, held inside the walk's RCU section. Dropping it
/// unlocks, then leaves the section (`pte_unmap_unlock`).
pub struct LockedLeaf<'a> {
    /// The entry the lockless walk read.
    pub seen: u64,
    /// The entry read under the lock.
    pub now: u64,
    /// Where it is.
    pub slot: Slot,
    /// Its page-table lock (declared before the guard: dropped first).
    pub ptl: Ptl<'a>,
    _rcu: RcuReadGuard<'a>,
}

/// Reader counts of lockless walks, one per cache line and a thread to each (like the
/// kernel's per-CPU RCU state): two threads walking the same tree do not bounce one counter's
/// line between their cores on every walk. A grace period needs all of them at zero.
struct Readers([Stripe; STRIPES]);

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

impl Default for Readers {
    fn default() -> Self {
        Readers(std::array::from_fn(|_| Stripe::default()))
    }
}

impl Readers {
    /// This thread's counter, and whether the thread owns it.
    #[inline]
    fn mine(&self) -> (&AtomicU64, bool) {
        let l = lease();
        (&self.0[l.index()].0, l.owned())
    }

    /// Whether no walk is in progress on any thread.
    fn idle(&self) -> bool {
        self.0.iter().all(|s| s.0.load(Ordering::SeqCst) == 0)
    }
}

/// One entry met by [`Tree::walk_range`].
#[derive(Debug, Clone, Copy)]
pub struct Visit<L, A> {
    /// Where the entry is.
    pub slot: Slot,
    /// What it held when read.
    pub raw: u64,
    /// Decoded.
    pub entry: Entry<L>,
    /// First address the entry maps.
    pub base: A,
    /// The walked range clipped to the entry: `[start, end)`.
    pub start: A,
    /// Bytes the entry maps (its level's size in the tree's granule).
    pub span: u64,
    /// End of the clipped range.
    pub end: A,
    /// True on the second visit of a table entry, after its subtree was walked.
    pub post: bool,
}

impl<L, A: InputAddr> Visit<L, A> {
    /// True if the walked range covers all the entry maps.
    pub fn covered(&self) -> bool {
        self.start == self.base && self.end.raw().wrapping_sub(self.base.raw()) == self.span
    }
}

/// The callback of [`Tree::walk_range`]: sees the tree and one entry, says what to do next.
pub type Visitor<'a, F, E> =
    dyn FnMut(&Tree<F>, &Visit<<F as Format>::Leaf, <F as Format>::Addr>) -> Result<Step, E> + 'a;

/// What [`Tree::walk_range`] does after a visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with the next entry (a table's subtree is not walked).
    Next,
    /// Walk the table this entry points to, then visit the entry again with `post` set.
    Descend,
    /// Read the entry again and visit it anew (it was split or replaced).
    Again,
}

/// One CPU's paging-structure cache ([`Tree::lookup`]): the PTE table that maps one
/// PMD-sized region of one tree, remembered with that tree's count of changed upper entries at
/// the time (any change since makes it stale). Every check is against the tree's own state, so
/// an entry is right whichever thread reads it (under shuttle all threads share one).
#[derive(Debug, Clone, Copy)]
struct WalkCache {
    tree: u64,
    relinks: u64,
    region: u64,
    table: Option<PhysAddr>,
}

impl WalkCache {
    const EMPTY: WalkCache = WalkCache {
        tree: 0,
        relinks: 0,
        region: 0,
        table: None,
    };

    /// The cached PTE table, if it still serves `region` of tree `tree`.
    #[inline]
    fn hit(&self, tree: u64, relinks: u64, region: u64) -> Option<PhysAddr> {
        self.table
            .filter(|_| self.relinks == relinks && self.region == region && self.tree == tree)
    }
}

thread_local! {
    /// This thread's paging-structure cache: one entry, for the tree it walked last.
    static WALKS: std::cell::Cell<WalkCache> = const { std::cell::Cell::new(WalkCache::EMPTY) };
}

/// Tree ids for [`WalkCache`] (never 0, never reused: a cache entry cannot outlive its tree's
/// meaning).
static NEXT_TREE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A radix tree of page tables in format `F`.
pub struct Tree<F: Format> {
    phys: Arc<PhysMem>,
    /// The memory's frame directory, held here too: walks read tables through it.
    frames: Frames,
    fmt: F,
    geo: Geometry,
    root: PhysAddr,
    tables: LevelCounters,
    allocated: AtomicU64,
    freed: AtomicU64,
    tree_lock: SpinLock,
    /// What lockless walkers share (boxed: the readers' stripes are cache-line aligned).
    walkers: Box<Walkers>,
    deferred: Mutex<Vec<(PhysAddr, Level)>>,
}

/// The state lockless walks of one tree share.
#[derive(Default)]
struct Walkers {
    readers: Readers,
    /// Entries above the PTEs that held something and were changed: a walk cache filled
    /// before the last change is stale ([`Tree::lookup`]).
    relinks: AtomicU64,
    /// This tree among all trees, for the walk caches.
    id: u64,
}

impl<F: Format> std::fmt::Debug for Tree<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("format", &self.fmt.name())
            .field("root", &self.root)
            .field("tables", &self.tables.snapshot())
            .finish_non_exhaustive()
    }
}

impl<F: Format> Tree<F> {
    /// A tree with an empty root table (`pgd_alloc`, a domain's or an EPT's root).
    ///
    /// [`PhysError::TableTooLarge`] if the format's tables do not fit the memory's frames.
    pub fn new(phys: Arc<PhysMem>, fmt: F) -> Result<Self, PhysError> {
        let geo = fmt.geometry();
        if geo.entries() > phys.entries_per_table() {
            return Err(PhysError::TableTooLarge {
                format: fmt.name(),
                table_bytes: geo.page_size(),
                frame_bytes: phys.frame_size(),
            });
        }
        let acct = fmt.account_level(fmt.top());
        let root = phys.alloc_table(acct)?;
        let tables = LevelCounters::default();
        tables.add(acct, 1);
        Ok(Tree {
            frames: phys.frames().clone(),
            phys,
            fmt,
            geo,
            root,
            tables,
            allocated: AtomicU64::new(1),
            freed: AtomicU64::new(0),
            tree_lock: SpinLock::new(),
            walkers: Box::new(Walkers {
                id: NEXT_TREE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ..Walkers::default()
            }),
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The granule: page size, entries per table and each level's size.
    #[inline]
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The physical memory the tables live in.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }

    /// Physical address of the root table (CR3, the context entry, the EPT pointer).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The level of the root table's entries.
    pub fn top(&self) -> Level {
        self.fmt.top()
    }

    /// Table pages held now, by the level each is accounted as.
    pub fn table_counts(&self) -> TableCounts {
        self.tables.snapshot()
    }

    /// Table pages allocated and freed over the tree's life (the root included).
    pub fn alloc_free_counts(&self) -> (u64, u64) {
        (
            self.allocated.load(Ordering::Relaxed),
            self.freed.load(Ordering::Relaxed),
        )
    }

    /// The table page at `pa`, or [`WalkError::Corrupt`].
    #[inline]
    pub fn table(&self, pa: PhysAddr) -> Result<TablePage<'_>, WalkError> {
        self.frames.table(pa).ok_or(WalkError::Corrupt(pa))
    }

    /// Reads the entry in `slot` (0 if the slot names no table frame).
    #[inline]
    pub fn get(&self, slot: Slot) -> u64 {
        self.frames
            .table(slot.table)
            .map_or(0, |t| t.get(slot.index))
    }

    /// Decodes the entry in `slot`.
    #[inline]
    pub fn decode(&self, slot: Slot) -> Entry<F::Leaf> {
        self.fmt.decode(self.get(slot), slot.level)
    }

    /// The lock protecting `slot`'s entry: under [`Locking::Split`] the table page's own lock for
    /// PMD and PTE tables and the tree's lock above; under [`Locking::Single`] the tree's lock.
    pub fn lock(&self, slot: Slot) -> Ptl<'_> {
        match F::LOCKING {
            Locking::Split if slot.level <= Level::Pmd => {
                if let Some(t) = self.frames.table(slot.table) {
                    return Ptl {
                        _guard: t.lock(),
                        frames: &self.frames,
                        relinks: &self.walkers.relinks,
                        scope: Scope::Table(slot.table),
                        page: Some(t),
                    };
                }
                self.lock_tree()
            }
            _ => self.lock_tree(),
        }
    }

    /// The tree's lock (`mm->page_table_lock`; the whole tree for [`Locking::Single`]).
    pub fn lock_tree(&self) -> Ptl<'_> {
        Ptl {
            _guard: self.tree_lock.lock(),
            frames: &self.frames,
            relinks: &self.walkers.relinks,
            scope: Scope::Tree(F::LOCKING),
            page: None,
        }
    }

    /// Allocates a table for entries of `level` (`pagetable_alloc` + `ptlock_init`).
    pub fn alloc(&self, level: Level) -> Result<PhysAddr, WalkError> {
        let acct = self.fmt.account_level(level);
        let pa = self.phys.alloc_table(acct).map_err(|_| WalkError::Oom)?;
        self.tables.add(acct, 1);
        self.allocated.fetch_add(1, Ordering::Relaxed);
        Ok(pa)
    }

    /// Frees a table for entries of `level` that is linked nowhere (`pagetable_free`).
    pub fn free(&self, pa: PhysAddr, level: Level) {
        if self.phys.free_table(pa) {
            self.tables.sub(self.fmt.account_level(level), 1);
            self.freed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The slot of `va`'s entry in the root table.
    #[inline]
    pub fn top_slot(&self, va: F::Addr) -> Slot {
        self.top_slot_raw(va.raw())
    }

    #[inline(always)]
    fn top_slot_raw(&self, va: u64) -> Slot {
        let level = self.top();
        Slot {
            table: self.root,
            index: self.geo.index(level, va),
            level,
        }
    }

    /// The slot of `va`'s entry in the table at `pa`, which holds entries one level below
    /// `parent`; [`WalkError::Corrupt`] if `pa` names no table frame.
    #[inline]
    pub fn child_slot(&self, pa: PhysAddr, parent: Level, va: F::Addr) -> Result<Slot, WalkError> {
        self.descend(pa, parent, va.raw()).map(|(slot, _)| slot)
    }

    /// Lockless walk to the slot holding `va`'s entry at `level`, without allocating
    /// (`pmd_off`, `pte_offset_map`). `Ok(None)`: a table on the way is missing.
    pub fn slot(&self, va: F::Addr, level: Level) -> Result<Option<Slot>, WalkError> {
        let va = va.raw();
        self.walk_to(self.top_slot_raw(va), va, level, None)
    }

    /// The walk under [`Tree::slot`] and [`Tree::slot_alloc_from`]: from `from` down to
    /// `level`; a none entry on the way ends it (`alloc` none) or gets a table (`alloc` =
    /// whether to recheck the entry under the lock).
    #[inline(always)]
    fn walk_to(
        &self,
        from: Slot,
        va: u64,
        level: Level,
        alloc: Option<bool>,
    ) -> Result<Option<Slot>, WalkError> {
        let mut slot = from;
        let mut page = self.table(slot.table)?;
        while slot.level > level {
            let raw = page.get(slot.index);
            if let Some(pa) = self.fmt.table_of(raw, slot.level) {
                (slot, page) = self.descend(pa, slot.level, va)?;
                continue;
            }
            match self.not_table(slot, raw, va, alloc)? {
                Some(next) => (slot, page) = next,
                None => return Ok(None),
            }
        }
        Ok(Some(slot))
    }

    /// [`Tree::walk_to`] meeting an entry that [`Format::table_of`] did not take for a table:
    /// where the walk goes from `slot` (`Some`: on, from the returned slot; `None`: it ends
    /// at a none entry). Out of the hot loop: most walks meet only tables.
    #[cold]
    #[inline(never)]
    fn not_table(
        &self,
        slot: Slot,
        raw: u64,
        va: u64,
        alloc: Option<bool>,
    ) -> Result<Option<(Slot, TablePage<'_>)>, WalkError> {
        match (self.fmt.decode(raw, slot.level), alloc) {
            (Entry::Table(pa), _) => self.descend(pa, slot.level, va).map(Some),
            (Entry::Leaf(_), _) => Err(WalkError::HugeAbove(slot)),
            (Entry::NonPresent(raw), _) => Err(WalkError::Bad(slot, raw)),
            (Entry::None, None) => Ok(None),
            // Re-read under the new state (a leaf may have raced in).
            (Entry::None, Some(recheck)) => {
                self.install_table(slot, recheck)?;
                Ok(Some((slot, self.table(slot.table)?)))
            }
        }
    }

    /// Follows a table pointer met at `parent` for `va`: the child's slot and page.
    #[inline]
    fn descend(
        &self,
        pa: PhysAddr,
        parent: Level,
        va: u64,
    ) -> Result<(Slot, TablePage<'_>), WalkError> {
        let page = self.table(pa)?;
        let level = parent.lower().ok_or(WalkError::Corrupt(pa))?;
        Ok((
            Slot {
                table: pa,
                index: self.geo.index(level, va),
                level,
            },
            page,
        ))
    }

    /// Walks to `va`'s slot at `level`, allocating missing tables.
    pub fn slot_alloc(&self, va: F::Addr, level: Level) -> Result<Slot, WalkError> {
        self.slot_alloc_from(self.top_slot(va), va, level, true)
    }

    /// [`Tree::slot_alloc`] from a slot already reached for `va` (Linux passes `vmf->pud` down
    /// instead of walking again). `recheck` false is the race bug of a missing recheck under the
    /// lock (two racing faults: a leaked table and a lost entry); the engine's users pass true.
    pub fn slot_alloc_from(
        &self,
        from: Slot,
        va: F::Addr,
        level: Level,
        recheck: bool,
    ) -> Result<Slot, WalkError> {
        let va = va.raw();
        self.walk_to(from, va, level, Some(recheck))?
            .ok_or(WalkError::Vanished(va, level))
    }

    /// The table below `slot`, allocated and linked if the entry is none.
    pub fn table_below(&self, slot: Slot) -> Result<PhysAddr, WalkError> {
        loop {
            match self.decode(slot) {
                Entry::Table(pa) => return Ok(pa),
                Entry::Leaf(_) => return Err(WalkError::HugeAbove(slot)),
                Entry::NonPresent(raw) => return Err(WalkError::Bad(slot, raw)),
                Entry::None => {
                    self.install_table(slot, true)?;
                }
            }
        }
    }

    /// Allocates a table and links it into the none entry `slot`; frees it again if somebody
    /// else filled the entry first.
    fn install_table(&self, slot: Slot, recheck: bool) -> Result<(), WalkError> {
        let child = slot.level.lower().ok_or(WalkError::Corrupt(slot.table))?;
        let new = self.alloc(child)?;
        let ptl = self.lock(slot);
        if !recheck || ptl.get(slot) == 0 {
            ptl.set(slot, self.fmt.encode_table(new, slot.level));
        } else {
            drop(ptl);
            self.free(new, child);
        }
        Ok(())
    }

    /// Enters a lockless walk.
    pub fn rcu_read_lock(&self) -> RcuReadGuard<'_> {
        let (readers, owned) = self.walkers.readers.mine();
        // A read-modify-write even on an owned stripe: the entry must be ordered before the
        // walk's loads (the store-load order a grace period relies on).
        readers.fetch_add(1, Ordering::SeqCst);
        RcuReadGuard {
            readers,
            owned,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Lockless lookup of the leaf mapping `va`, with its slot (the hardware walk, gup-fast,
    /// `follow_pfnmap_start`'s walk).
    ///
    /// The walk starts from this thread's paging-structure cache when it holds `va`'s PTE
    /// table and no entry above the PTEs has changed since it was filled (Intel SDM §4.10.3's
    /// PDE cache, arm64's walk cache): it then reads the PTE alone. The answer is the one a
    /// walk from the root gives; only the work differs.
    pub fn lookup(&self, va: F::Addr) -> Option<(F::Leaf, Slot)> {
        let (raw, slot) = self.lookup_raw(va)?;
        match self.fmt.decode(raw, slot.level) {
            Entry::Leaf(l) => Some((l, slot)),
            _ => None,
        }
    }

    /// [`Tree::lookup`] without decoding: the raw leaf entry and its slot (what the
    /// hardware's permission check reads).
    #[inline(always)]
    pub fn lookup_raw(&self, va: F::Addr) -> Option<(u64, Slot)> {
        let _rcu = self.rcu_read_lock();
        // Read after entering the walk: a table unlinked after this read is not freed before
        // the walk ends, and one unlinked before it changed `relinks`.
        let relinks = self.walkers.relinks.load(Ordering::SeqCst);
        self.walk_cached(va.raw(), relinks)
    }

    /// The hardware walker's lookup (the simulated CPU's page walk before and after a fault):
    /// [`Tree::lookup_raw`] without an RCU section, as a hardware walk takes none. It reads the
    /// relink count before and after, like a seqlock reader: a table can be freed under it only
    /// after being unlinked, which changes the count, and a walk that saw the count change is
    /// done again. So the answer is the one a walk from the root gives at some instant of the
    /// call, and the walk costs no atomic read-modify-write (Linux's hardware walker is kept off
    /// freed tables by the TLB shootdown before the free, which the model does not simulate).
    /// Any relink in the tree during the walk makes it walk again: a thread that relinks
    /// without pause could hold it off (the model's price; a hardware walk has none).
    #[inline(always)]
    pub fn hw_lookup_raw(&self, va: F::Addr) -> Option<(u64, Slot)> {
        self.hw_lookup_with(va.raw(), || {})
    }

    /// [`Tree::hw_lookup_raw`], calling `between` after each read of the count and before the
    /// walk (the white-box tests' window for another CPU's unlink).
    #[inline(always)]
    fn hw_lookup_with(&self, va: u64, mut between: impl FnMut()) -> Option<(u64, Slot)> {
        loop {
            let relinks = self.walkers.relinks.load(Ordering::Acquire);
            between();
            let found = self.walk_cached(va, relinks);
            // The walk's reads before the recheck (the seqlock reader's fence).
            fence(Ordering::Acquire);
            if self.walkers.relinks.load(Ordering::Relaxed) == relinks {
                return found;
            }
        }
    }

    /// The walk of [`Tree::walk_leaf`] through this thread's cache. The cache is copied out
    /// and back, not walked inside `with`: the answer stays in registers.
    #[inline(always)]
    fn walk_cached(&self, va: u64, relinks: u64) -> Option<(u64, Slot)> {
        let mut cache = WALKS.with(std::cell::Cell::get);
        let found = self.walk_leaf(va, relinks, &mut cache);
        WALKS.with(|w| w.set(cache));
        found
    }

    /// A walk through `cache` in an RCU section of its own (the white-box tests' handle).
    #[cfg(test)]
    fn lookup_in(&self, va: u64, cache: &mut WalkCache) -> Option<(u64, Slot)> {
        let _rcu = self.rcu_read_lock();
        let relinks = self.walkers.relinks.load(Ordering::SeqCst);
        self.walk_leaf(va, relinks, cache)
    }

    /// A lockless walk to `va`'s leaf that ends holding the leaf's page-table lock
    /// (`pte_offset_map_lock`, as `follow_pfnmap_start` walks): the lock is taken inside the
    /// walk's RCU section, and for a PTE the walk is done again if any entry above the PTEs
    /// changed meanwhile (Linux's `pmd_same` recheck: the table locked is the one walked,
    /// still linked). The RCU section lasts as long as the lock (`pte_unmap_unlock`).
    #[inline]
    pub fn lookup_lock(&self, va: F::Addr) -> Option<LockedLeaf<'_>> {
        let va = va.raw();
        loop {
            let rcu = self.rcu_read_lock();
            let relinks = self.walkers.relinks.load(Ordering::SeqCst);
            let (seen, slot) = self.walk_cached(va, relinks)?;
            let ptl = self.lock(slot);
            // `pmd_same`, for a PTE: the table is the one walked and still linked. A PMD or
            // PUD leaf is rechecked by its caller under this lock (`follow_pfnmap_start`
            // re-reads it; a kernel whose version does not is a bug the model reproduces).
            if slot.level == Level::Pte && self.walkers.relinks.load(Ordering::SeqCst) != relinks {
                continue;
            }
            let now = ptl.get(slot);
            return Some(LockedLeaf {
                seen,
                now,
                slot,
                ptl,
                _rcu: rcu,
            });
        }
    }

    /// The lockless walk inside an RCU section entered by the caller, which read `relinks`
    /// after entering it.
    #[inline(always)]
    fn walk_leaf(&self, va: u64, relinks: u64, cache: &mut WalkCache) -> Option<(u64, Slot)> {
        let region = va >> self.geo.shift(Level::Pmd);
        let (mut table, mut level) = match cache.hit(self.walkers.id, relinks, region) {
            Some(t) => (t, Level::Pte),
            None => (self.root, self.top()),
        };
        loop {
            let index = self.geo.index(level, va);
            let raw = self.frames.table(table)?.get(index);
            if let Some(pa) = self.fmt.table_of(raw, level) {
                (table, level) = (pa, level.lower()?);
                if level == Level::Pte {
                    *cache = WalkCache {
                        tree: self.walkers.id,
                        relinks,
                        region,
                        table: Some(pa),
                    };
                }
                continue;
            }
            // `table_of` said no: a leaf or nothing here
            return self.fmt.is_leaf(raw, level).then_some((
                raw,
                Slot {
                    table,
                    index,
                    level,
                },
            ));
        }
    }

    /// Visits every entry that maps part of `[start, end)`, top-down and in address order
    /// (`walk_page_range`'s shape): `f` sees each entry once, and a table entry a second time
    /// after its subtree when it asked to descend. Stops at the first error `f` returns.
    pub fn walk_range<E>(
        &self,
        start: F::Addr,
        end: F::Addr,
        f: &mut Visitor<'_, F, E>,
    ) -> Result<(), E>
    where
        E: From<WalkError>,
    {
        if end > start {
            self.walk_in(self.root, self.top(), start.raw(), end.raw(), f)?;
        }
        Ok(())
    }

    fn walk_in<E>(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        f: &mut Visitor<'_, F, E>,
    ) -> Result<(), E>
    where
        E: From<WalkError>,
    {
        let t = self.table(table)?;
        let size = self.geo.size(level);
        let mut va = start;
        while va < end {
            let base = va & !(size - 1);
            let next = base.wrapping_add(size);
            let clip_end = if next == 0 || next > end { end } else { next };
            let slot = Slot {
                table,
                index: self.geo.index(level, va),
                level,
            };
            let raw = t.get(slot.index);
            let mut v = Visit {
                slot,
                raw,
                entry: self.fmt.decode(raw, level),
                base: F::Addr::from_raw(base),
                start: F::Addr::from_raw(va),
                span: size,
                end: F::Addr::from_raw(clip_end),
                post: false,
            };
            match f(self, &v)? {
                Step::Next => {}
                Step::Again => continue,
                Step::Descend => {
                    if let Entry::Table(pa) = v.entry
                        && let Some(lower) = level.lower()
                    {
                        self.walk_in(pa, lower, va, clip_end, f)?;
                        v.raw = t.get(slot.index);
                        v.entry = self.fmt.decode(v.raw, level);
                        v.post = true;
                        if f(self, &v)? == Step::Again {
                            continue;
                        }
                    }
                }
            }
            if clip_end == end {
                break;
            }
            va = clip_end;
        }
        Ok(())
    }

    /// Calls `f(va, leaf, level)` for every leaf whose first byte lies in `[start, end)`, in
    /// address order.
    pub fn for_each_leaf(
        &self,
        start: F::Addr,
        end: F::Addr,
        f: &mut dyn FnMut(F::Addr, F::Leaf, Level),
    ) {
        if end > start {
            let (start, end) = (start.raw(), end.raw());
            self.leaves_in(self.root, self.top(), start, end, &mut |raw, va, level| {
                if let Entry::Leaf(l) = self.fmt.decode(raw, level) {
                    f(F::Addr::from_raw(va), l, level);
                }
            });
        }
    }

    /// Counts the leaves whose first byte lies in `[start, end)`, by level (the leaf levels
    /// only: `[PTE, PMD, PUD]`, as [`Level::leaf_index`] numbers them).
    pub fn count_leaves(&self, start: F::Addr, end: F::Addr) -> [u64; 3] {
        let mut n = [0u64; 3];
        if end > start {
            self.leaves_in(
                self.root,
                self.top(),
                start.raw(),
                end.raw(),
                &mut |_, _, level| n[level.leaf_index()] += 1,
            );
        }
        n
    }

    /// The leaf iteration under [`Tree::for_each_leaf`] and [`Tree::count_leaves`]: `f(raw, va,
    /// level)` for each leaf entry, without decoding what the caller does not ask for.
    fn leaves_in(
        &self,
        table: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Level),
    ) {
        let Ok(t) = self.table(table) else { return };
        let size = self.geo.size(level);
        let mut va = start;
        while va < end {
            let base = va & !(size - 1);
            let next = base.wrapping_add(size);
            let clip = if next == 0 || next > end { end } else { next };
            let raw = t.get(self.geo.index(level, va));
            if raw != 0 {
                if let Some(pa) = self.fmt.table_of(raw, level) {
                    if let Some(lower) = level.lower() {
                        self.leaves_in(pa, lower, va, clip, f);
                    }
                } else if base >= start && self.fmt.is_leaf(raw, level) {
                    f(raw, base, level);
                }
            }
            if clip == end {
                break;
            }
            va = clip;
        }
    }

    /// The first address in `[start, end)` that has a leaf or a non-present entry, if any.
    pub fn first_mapped(&self, start: F::Addr, end: F::Addr) -> Option<F::Addr> {
        let mut hit = None;
        let _ = self.walk_range::<WalkError>(start, end, &mut |_, v| {
            if hit.is_some() {
                return Ok(Step::Next);
            }
            Ok(match v.entry {
                Entry::None => Step::Next,
                Entry::Table(_) => Step::Descend,
                Entry::Leaf(_) | Entry::NonPresent(_) => {
                    hit = Some(v.start);
                    Step::Next
                }
            })
        });
        hit
    }

    /// Table pages reachable from the root (the root included). Equal to
    /// [`Tree::table_counts`]`.total()` unless a table leaked.
    pub fn reachable_tables(&self) -> u64 {
        let mut stack = vec![(self.root, self.top())];
        let mut n = 0;
        while let Some((pa, level)) = stack.pop() {
            n += 1;
            let (Ok(t), Some(lower)) = (self.table(pa), level.lower()) else {
                continue;
            };
            for raw in t.values(self.geo.entries()) {
                if let Entry::Table(c) = self.fmt.decode(raw, level) {
                    stack.push((c, lower));
                }
            }
        }
        n
    }

    /// Splits the huge leaf in `slot` into a table of next-level leaves with the same frames and
    /// attributes (`__split_huge_pud_locked`/`__split_huge_pmd_locked` for a remap-populated
    /// pfnmap; `split_large_page` in the IOMMU drivers). False if `slot` holds no huge leaf or it
    /// changed before the lock was taken.
    pub fn split_leaf(&self, slot: Slot) -> Result<bool, WalkError> {
        let Some(lower) = slot.level.lower() else {
            return Ok(false);
        };
        let seen = self.get(slot);
        let Entry::Leaf(leaf) = self.fmt.decode(seen, slot.level) else {
            return Ok(false);
        };
        let new = self.alloc(lower)?;
        let nt = self.table(new)?;
        let first = leaf.first_pfn().as_u64();
        let step = self.geo.size(lower) >> PAGE_SHIFT;
        for i in 0..self.geo.entries() as u64 {
            let p = first + i * step;
            let pfn = Pfn::new(p).map_err(|_| WalkError::PfnTooWide(p));
            let raw = pfn.and_then(|pfn| Ok(self.fmt.encode_leaf(&leaf.at(pfn, lower), lower)?));
            match raw {
                // not linked yet: nobody else can see the new table
                Ok(raw) => nt.set(i as usize, raw),
                Err(e) => {
                    self.free(new, lower);
                    return Err(e);
                }
            }
        }
        let ptl = self.lock(slot);
        if ptl.get(slot) != seen {
            drop(ptl);
            self.free(new, lower);
            return Ok(false);
        }
        ptl.set(slot, self.fmt.encode_table(new, slot.level));
        Ok(true)
    }

    /// Frees a whole unlinked subtree at once, releasing its leaves (teardown; a table replaced
    /// by a huge leaf while nothing can walk it). Returns the tables freed.
    pub fn free_subtree(&self, pa: PhysAddr, level: Level) -> u64 {
        let mut all = Vec::new();
        self.collect_subtree(pa, level, &mut all);
        let n = all.len() as u64;
        for (t, l) in all {
            self.free(t, l);
        }
        n
    }

    /// The tables of a subtree (post-order), releasing its leaves on the way.
    fn collect_subtree(&self, pa: PhysAddr, level: Level, out: &mut Vec<(PhysAddr, Level)>) {
        if let Ok(t) = self.table(pa) {
            for raw in t.values(self.geo.entries()) {
                if raw == 0 {
                    continue;
                }
                match (self.fmt.table_of(raw, level), level.lower()) {
                    (Some(c), Some(lower)) => self.collect_subtree(c, lower, out),
                    _ if self.fmt.is_leaf(raw, level) => {
                        self.fmt.release_leaf(&self.phys, raw, level)
                    }
                    _ => {}
                }
            }
        }
        out.push((pa, level));
    }

    /// Frees an unlinked subtree once no lockless walker can still hold it: at once if no walk
    /// is in progress, else with the next reclaim that finds none. Leaves are released now.
    pub fn free_subtree_deferred(&self, pa: PhysAddr, level: Level) {
        let mut all = Vec::new();
        self.collect_subtree(pa, level, &mut all);
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(all);
        self.reclaim_deferred();
    }

    /// Frees deferred tables if no lockless walk is in progress. Returns how many were freed.
    ///
    /// The batch is taken before the readers are checked: every table in it was unlinked
    /// before that, so a walk that can still be inside one began before it too and is counted.
    /// (Checking first let a walk that began between the check and the take keep a table of a
    /// batch unlinked after the check: freed under it.)
    pub fn reclaim_deferred(&self) -> usize {
        let batch: Vec<(PhysAddr, Level)> =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        if !self.walkers.readers.idle() {
            self.deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
            return 0;
        }
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
}

impl<F: Format> Drop for Tree<F> {
    /// Every table back to the allocator (`free_pgd_range` + `pgd_free`, `domain_exit`,
    /// `kvm_mmu_free_roots`).
    fn drop(&mut self) {
        let pending: Vec<(PhysAddr, Level)> =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for (pa, level) in pending {
            self.free(pa, level);
        }
        self.free_subtree(self.root, self.top());
    }
}

#[cfg(test)]
mod tests;
