//! `mm/pagewalk.c`: the generic page walker that /proc readers, mincore and others drive with an
//! ops table ([`MmWalkOps`], `struct mm_walk_ops`).
//!
//! Entry points, as in Linux: [`Mm::walk_page_range`] applies `walk_page_test` to each VMA (the
//! ops' `test_walk`, or else the VM_PFNMAP rule: such a VMA is skipped, reported to `pte_hole`
//! if the ops have one); [`Mm::walk_page_vma`] and [`Mm::walk_page_range_vma`] do **not** — they
//! walk a VM_PFNMAP VMA's tables like any other.
//!
//! The descent follows `walk_pud_range`/`walk_pmd_range`/`walk_pte_range`: a callback may answer
//! [`WalkAction::Continue`] (do not descend), [`WalkAction::Again`] (look at the entry again) or
//! [`WalkAction::Subtree`]. A walk whose ops have lower-level callbacks but no `pud_entry` that
//! stops it calls `split_huge_pud` on every PUD leaf it meets, and one with a `pte_entry` calls
//! `split_huge_pmd` on PMD leaves. For a pfnmap leaf (`vma_is_special_huge`) that "split" is a
//! zap: `pudp_huge_clear_flush`, a TLB flush and an MMU-notifier invalidation; the process
//! refaults. That is how reading `/proc/PID/smaps` or `numa_maps` destroys a BAR's 1 GiB leaves
//! on Linux 6.12 … 7.3 ([`Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES`], the kernel bug
//! `pagewalk_splits_pfnmap_pud`). The corrected design (the default, and
//! kernel-patches/0003) does not split a pfnmap leaf for a walk without a `pte_entry`: nothing
//! below it has a `struct page` to report, so the walk goes on past it (`ACTION_CONTINUE`); a
//! walk with a `pte_entry` asks to see every PTE and still splits. docs/proc-readers.md has the
//! readers and the numbers.
//!
//! 9b25a6e3d243 "mm/pagewalk: fix race between concurrent split and refault" (upstream.md
//! §3.11) is modelled too: between the split and the descent a concurrent fault may install a
//! PUD leaf again; `walk_pmd_range` re-reads the PUD entry and asks for `ACTION_AGAIN` unless it
//! is a table. The buggy variant ([`Bugs::PAGEWALK_NO_RECHECK`]) descends into the leaf as if it
//! were a table — the kernel's "BUG: unable to handle page fault … walk_pgd_range"; here a
//! [`WalkOops`].

use crate::addr::UserAddr;
use crate::entry::{self, Decoded};
use crate::error::Errno;
use crate::level::Level;
use crate::mm::Mm;
use crate::pgtable::{Bugs, PageTables, PartialHuge, Slot};
use crate::vma::{VmFlags, Vma};

/// The walker followed a leaf's pfn as if it were a page-table pointer (an oops in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("walk_pmd_range descended into {pa:#x}, which is not a page table (PUD entry {raw:#x})")]
pub struct WalkOops {
    /// The address it followed.
    pub pa: u64,
    /// The PUD entry it misread.
    pub raw: u64,
}

/// Why a walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The kernel would have oopsed.
    #[error(transparent)]
    Oops(#[from] WalkOops),
    /// A callback (`test_walk`, `pte_hole`) returned an error.
    #[error("the walk failed with {0:?}")]
    Errno(Errno),
    /// A table pointer named no page-table page (a corrupt tree).
    #[error(transparent)]
    Table(#[from] crate::pgtable::WalkError),
}

/// `walk->action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalkAction {
    /// `ACTION_SUBTREE`: descend (the default).
    #[default]
    Subtree,
    /// `ACTION_CONTINUE`: do not descend below this entry.
    Continue,
    /// `ACTION_AGAIN`: look at this entry again.
    Again,
}

/// What `walk_page_test` decided for a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestWalk {
    /// 0: walk it.
    Walk,
    /// 1: skip it.
    Skip,
    /// < 0: stop the walk with this error.
    Fail(Errno),
}

/// One entry handed to a callback.
#[derive(Debug, Clone, Copy)]
pub struct WalkEntry {
    /// The address the entry maps from (within the walked range).
    pub addr: UserAddr,
    /// The end of what this entry covers within the walked range.
    pub end: UserAddr,
    /// The level of the entry.
    pub level: Level,
    /// What it holds.
    pub entry: Decoded,
}

/// `struct mm_walk_ops`. Which callbacks exist changes the walk (descent, splits), so each is
/// announced by a `has_*` method, as a non-NULL pointer is in Linux.
pub trait MmWalkOps {
    /// `.pud_entry` is set.
    fn has_pud_entry(&self) -> bool {
        false
    }
    /// `.pmd_entry` is set.
    fn has_pmd_entry(&self) -> bool {
        false
    }
    /// `.pte_entry` is set.
    fn has_pte_entry(&self) -> bool {
        false
    }
    /// `.pte_hole` is set.
    fn has_pte_hole(&self) -> bool {
        false
    }
    /// `.test_walk` is set (it then replaces the VM_PFNMAP rule of `walk_page_test`).
    fn has_test_walk(&self) -> bool {
        false
    }
    /// `.test_walk`.
    fn test_walk(&mut self, _vma: &Vma) -> TestWalk {
        TestWalk::Walk
    }
    /// `.pte_hole(start, end, depth)`: nothing mapped in `[start, end)` (`vma` is `None`
    /// outside every VMA).
    fn pte_hole(&mut self, _: UserAddr, _: UserAddr, _: Option<&Vma>) -> Result<(), Errno> {
        Ok(())
    }
    /// `.pud_entry`.
    fn pud_entry(&mut self, _pt: &PageTables, _e: &WalkEntry, _vma: &Vma) -> WalkAction {
        WalkAction::Subtree
    }
    /// `.pmd_entry`: for a PMD table the callback reads the PTEs itself (Linux's
    /// `pte_offset_map_lock` loop; see [`for_each_pte`]).
    fn pmd_entry(&mut self, _pt: &PageTables, _e: &WalkEntry, _vma: &Vma) -> WalkAction {
        WalkAction::Subtree
    }
    /// `.pte_entry`, once per PTE (also for empty ones, as `walk_pte_range` does).
    fn pte_entry(&mut self, _pt: &PageTables, _e: &WalkEntry, _vma: &Vma) -> WalkAction {
        WalkAction::Subtree
    }
}

/// What a walk did besides calling the ops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// VMAs walked.
    pub vmas_walked: u64,
    /// VMAs skipped by `walk_page_test`.
    pub vmas_skipped: u64,
    /// PUD leaves split (for a pfnmap: zapped) on the way.
    pub puds_split: u64,
    /// PMD leaves split (for a pfnmap: zapped) on the way.
    pub pmds_split: u64,
    /// PMD entries visited.
    pub pmds: u64,
    /// Times an entry was looked at again (`ACTION_AGAIN`).
    pub again: u64,
}

/// Calls `f(va, entry)` for each PTE of the table at `table` that maps `[start, end)`.
pub fn for_each_pte(
    pt: &PageTables,
    table: crate::addr::PhysAddr,
    start: UserAddr,
    end: UserAddr,
    mut f: impl FnMut(UserAddr, Decoded),
) {
    // The walker checked the table before it called the ops (`walk_pmd`): a pointer that
    // names no table cannot reach here, and would visit nothing.
    let Ok(t) = pt.table(table) else {
        debug_assert!(false, "for_each_pte on {table}: no page-table page");
        return;
    };
    let g = pt.geometry();
    let mut va = start;
    while va < end {
        f(
            va,
            pt.decode_raw(t.get(g.index(Level::Pte, va.as_u64())), Level::Pte),
        );
        va += g.page_size();
    }
}

/// `vma_is_special_huge`: a file mapping with VM_PFNMAP or VM_MIXEDMAP (its huge leaves have no
/// `struct page` and cannot be split into a table, only zapped).
fn is_special_huge(vma: &Vma) -> bool {
    vma.mapping.is_some() && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP)
}

/// A walk in progress (`struct mm_walk`).
struct Walk<'a, O: MmWalkOps> {
    mm: &'a Mm,
    ops: &'a mut O,
    st: WalkStats,
}

impl<O: MmWalkOps> Walk<'_, O> {
    fn pt(&self) -> &PageTables {
        self.mm.page_tables()
    }

    fn bugs(&self) -> Bugs {
        self.pt().bugs()
    }

    /// `split_huge_pud`/`split_huge_pmd` of the leaf at `[base, base + size)`: a fault-backed
    /// special VMA loses it (the fault handler refills), a remap-populated one gets it split in
    /// place. Returns false when the corrected design leaves a special leaf alone.
    fn split_leaf(&mut self, vma: &Vma, base: UserAddr, level: Level) -> bool {
        // The fix (kernel-patches/0003): a pfnmap leaf is walked past unless the walk has a
        // pte_entry, which asks to see every PTE (the L1TF PROT_NONE check does).
        let special = vma.flags.contains(VmFlags::PFNMAP) && is_special_huge(vma);
        if special
            && !self.ops.has_pte_entry()
            && !self.bugs().contains(Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES)
        {
            return false;
        }
        let pt = self.pt();
        let g = pt.geometry();
        if vma.is_fault_backed() {
            let _ = pt.zap_range(base, base + g.size(level), PartialHuge::ZapWhole);
        } else {
            let lower = g.size(level.lower().unwrap_or(Level::Pte));
            let _ = pt.adjust_trans_huge(base + lower, PartialHuge::Split);
        }
        match level {
            Level::Pud => self.st.puds_split += 1,
            _ => self.st.pmds_split += 1,
        }
        true
    }

    /// An entry of `walk_pud_range`/`walk_pmd_range`: an empty one goes to `pte_hole` (`None`:
    /// nothing more to do here), else to the level's callback if the ops have it.
    fn visit(&mut self, vma: &Vma, e: &WalkEntry) -> Result<Option<WalkAction>, WalkError> {
        if matches!(e.entry, Decoded::None) {
            self.ops
                .pte_hole(e.addr, e.end, Some(vma))
                .map_err(WalkError::Errno)?;
            return Ok(None);
        }
        let pt = self.mm.page_tables();
        let action = match e.level {
            Level::Pud if self.ops.has_pud_entry() => self.ops.pud_entry(pt, e, vma),
            Level::Pmd if self.ops.has_pmd_entry() => self.ops.pmd_entry(pt, e, vma),
            _ => WalkAction::Subtree,
        };
        if action == WalkAction::Again {
            self.st.again += 1;
        }
        Ok(Some(action))
    }

    /// `__walk_page_range` → `walk_pgd_range` … for `[start, end)` inside `vma`.
    fn walk_range(&mut self, vma: &Vma, start: UserAddr, end: UserAddr) -> Result<(), WalkError> {
        self.st.vmas_walked += 1;
        let o = &*self.ops;
        if !(o.has_pud_entry() || o.has_pmd_entry() || o.has_pte_entry()) {
            // walk_pgd_range descends only for a lower callback: a hole-only walk sees holes.
            return self
                .ops
                .pte_hole(start, end, Some(vma))
                .map_err(WalkError::Errno);
        }
        let g = self.pt().geometry();
        let mut va = start;
        while va < end {
            let next = g
                .align_down(Level::Pud, va)
                .saturating_add(g.size(Level::Pud))
                .min(end);
            self.walk_pud(vma, va, next)?;
            va = next;
        }
        Ok(())
    }

    /// One PUD entry of `walk_pud_range`.
    fn walk_pud(&mut self, vma: &Vma, addr: UserAddr, next: UserAddr) -> Result<(), WalkError> {
        for _ in 0..64 {
            let slot = match self.pt().slot(addr, Level::Pud) {
                Ok(Some(s)) => s,
                _ => {
                    return self
                        .ops
                        .pte_hole(addr, next, Some(vma))
                        .map_err(WalkError::Errno);
                }
            };
            let e = WalkEntry {
                addr,
                end: next,
                level: Level::Pud,
                entry: self.pt().decode(slot),
            };
            let action = match self.visit(vma, &e)? {
                None => return Ok(()),
                Some(WalkAction::Again) => continue,
                Some(a) => a,
            };
            if action == WalkAction::Continue
                || !(self.ops.has_pmd_entry() || self.ops.has_pte_entry())
            {
                return Ok(());
            }
            if let Decoded::Leaf(_) = e.entry
                && !self.split_leaf(
                    vma,
                    self.pt().geometry().align_down(Level::Pud, addr),
                    Level::Pud,
                )
            {
                return Ok(()); // the corrected design: a special leaf is walked past
            }
            match self.walk_pmd_range(vma, slot, addr, next)? {
                WalkAction::Again => {
                    self.st.again += 1;
                    continue;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// `walk_pmd_range` under the PUD at `pud`: first re-reads the PUD (9b25a6e3d243).
    fn walk_pmd_range(
        &mut self,
        vma: &Vma,
        pud: Slot,
        start: UserAddr,
        end: UserAddr,
    ) -> Result<WalkAction, WalkError> {
        let raw = self.pt().get(pud);
        let table = match self.pt().decode_raw(raw, Level::Pud) {
            Decoded::Table(t) => t,
            Decoded::Leaf(_) if self.bugs().contains(Bugs::PAGEWALK_NO_RECHECK) => {
                // pmd_offset() on a leaf: the leaf's address taken for a table.
                let pa = raw & entry::bits::PTE_ADDR_MASK;
                return Err(WalkOops { pa, raw }.into());
            }
            // not present, or a leaf a concurrent fault installed: ACTION_AGAIN
            _ => return Ok(WalkAction::Again),
        };
        let g = self.pt().geometry();
        let mut va = start;
        while va < end {
            let next = g
                .align_down(Level::Pmd, va)
                .saturating_add(g.size(Level::Pmd))
                .min(end);
            let slot = Slot {
                table,
                index: g.index(Level::Pmd, va.as_u64()),
                level: Level::Pmd,
            };
            self.walk_pmd(vma, slot, va, next)?;
            va = next;
        }
        Ok(WalkAction::Subtree)
    }

    /// One PMD entry of `walk_pmd_range`.
    fn walk_pmd(
        &mut self,
        vma: &Vma,
        slot: Slot,
        addr: UserAddr,
        next: UserAddr,
    ) -> Result<(), WalkError> {
        for _ in 0..64 {
            self.st.pmds += 1;
            let e = WalkEntry {
                addr,
                end: next,
                level: Level::Pmd,
                entry: self.pt().decode(slot),
            };
            if let Decoded::Table(t) = e.entry {
                // The ops read the PTE table it points at (`for_each_pte`): it must be one.
                self.pt().table(t)?;
            }
            let action = match self.visit(vma, &e)? {
                None => return Ok(()),
                Some(WalkAction::Again) => continue,
                Some(a) => a,
            };
            if action == WalkAction::Continue || !self.ops.has_pte_entry() {
                return Ok(());
            }
            let g = self.pt().geometry();
            if let Decoded::Leaf(_) = e.entry {
                if !self.split_leaf(vma, g.align_down(Level::Pmd, addr), Level::Pmd) {
                    return Ok(());
                }
                continue; // look again: now a table, or nothing
            }
            if let Decoded::Table(t) = e.entry {
                let table = self.mm.page_tables().table(t)?;
                let mut va = addr;
                while va < next {
                    let pte = WalkEntry {
                        addr: va,
                        end: va + g.page_size(),
                        level: Level::Pte,
                        entry: self
                            .pt()
                            .decode_raw(table.get(g.index(Level::Pte, va.as_u64())), Level::Pte),
                    };
                    self.ops.pte_entry(self.mm.page_tables(), &pte, vma);
                    va += g.page_size();
                }
            }
            return Ok(());
        }
        Ok(())
    }
}

impl Mm {
    /// `walk_page_range(mm, start, end, ops)`: every VMA in the range, each through
    /// `walk_page_test` (the ops' `test_walk`, else: VM_PFNMAP is skipped and reported as a
    /// hole); the gaps between VMAs go to `pte_hole` with no VMA.
    pub fn walk_page_range<O: MmWalkOps>(
        &self,
        start: UserAddr,
        end: UserAddr,
        ops: &mut O,
    ) -> Result<WalkStats, WalkError> {
        let g = self.mmap_read();
        let vmas: Vec<Vma> = g
            .vmas()
            .iter()
            .filter(|v| v.end > start && v.start < end)
            .cloned()
            .collect();
        let mut w = Walk {
            mm: self,
            ops,
            st: WalkStats::default(),
        };
        let mut va = start;
        for vma in &vmas {
            if vma.start > va {
                w.ops
                    .pte_hole(va, vma.start, None)
                    .map_err(WalkError::Errno)?;
            }
            let (s, e) = (vma.start.max(start), vma.end.min(end));
            va = e;
            let verdict = if w.ops.has_test_walk() {
                w.ops.test_walk(vma)
            } else if vma.flags.contains(VmFlags::PFNMAP) {
                // walk_page_test: `err = ops->pte_hole(...)` if present; skip.
                if w.ops.has_pte_hole() {
                    w.ops.pte_hole(s, e, Some(vma)).map_err(WalkError::Errno)?;
                }
                TestWalk::Skip
            } else {
                TestWalk::Walk
            };
            match verdict {
                TestWalk::Skip => w.st.vmas_skipped += 1,
                TestWalk::Fail(err) => return Err(WalkError::Errno(err)),
                TestWalk::Walk => w.walk_range(vma, s, e)?,
            }
        }
        if va < end && !vmas.is_empty() {
            w.ops.pte_hole(va, end, None).map_err(WalkError::Errno)?;
        }
        Ok(w.st)
    }

    /// `walk_page_vma(vma, ops)`: the whole VMA that starts at `vma_start`, with no
    /// `walk_page_test` — a VM_PFNMAP VMA is walked like any other.
    pub fn walk_page_vma<O: MmWalkOps>(
        &self,
        vma_start: UserAddr,
        ops: &mut O,
    ) -> Result<WalkStats, WalkError> {
        match self.find_vma(vma_start).filter(|v| v.start == vma_start) {
            Some(v) => self.walk_page_range_vma(v.start, v.end, ops),
            None => Ok(WalkStats::default()),
        }
    }

    /// `walk_page_range_vma(vma, start, end, ops)`: `[start, end)` of the VMA containing
    /// `start`, with no `walk_page_test`.
    pub fn walk_page_range_vma<O: MmWalkOps>(
        &self,
        start: UserAddr,
        end: UserAddr,
        ops: &mut O,
    ) -> Result<WalkStats, WalkError> {
        let g = self.mmap_read();
        let Some(vma) = g.find_vma(start).cloned() else {
            return Ok(WalkStats::default());
        };
        let mut w = Walk {
            mm: self,
            ops,
            st: WalkStats::default(),
        };
        w.walk_range(&vma, start.max(vma.start), end.min(vma.end))?;
        Ok(w.st)
    }
}

/// A walker with only a `pmd_entry` that counts what it sees: the shape of `numa_maps`'s walk.
#[derive(Debug, Default)]
pub struct CountPmds {
    /// PMD entries handed to `pmd_entry`.
    pub pmds: u64,
}

impl MmWalkOps for CountPmds {
    fn has_pmd_entry(&self) -> bool {
        true
    }
    fn pmd_entry(&mut self, _pt: &PageTables, _e: &WalkEntry, _vma: &Vma) -> WalkAction {
        self.pmds += 1;
        WalkAction::Subtree
    }
}
