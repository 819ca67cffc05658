//! Splitting huge leaves, zapping ranges (`unmap_page_range` → `zap_*_range`) and freeing the
//! tables no VMA can use (`free_pgtables`).

use crate::entry::Decoded;
use crate::level::Level;

use super::*;

impl PageTables {
    /// Splits the huge leaf in `slot` into a table of 512 next-level leaves with the same pfns and
    /// attributes (`__split_huge_pud_locked`/`__split_huge_pmd_locked` as the huge-remap RFC
    /// series does it for remap-populated pfnmaps). Returns false if `slot` holds no huge leaf.
    pub fn split_leaf(&self, slot: Slot) -> Result<bool, WalkError> {
        self.tree.split_leaf(slot)
    }

    /// Makes `addr` a leaf boundary before a VMA is split there (`vma_adjust_trans_huge`): a huge
    /// leaf straddling it is zapped (fault-backed VMAs: `__split_huge_pud/pmd` on a pfnmap) or
    /// split in place until a boundary falls at `addr` (remap-populated VMAs).
    pub fn adjust_trans_huge(&self, addr: UserAddr, partial: PartialHuge) -> Result<(), WalkError> {
        loop {
            let Some((leaf, slot)) = self.lookup(addr) else {
                return Ok(());
            };
            let size = self.geom.size(leaf.level);
            let base = addr.align_down(size);
            if leaf.level == Level::Pte || base == addr {
                return Ok(());
            }
            match partial {
                PartialHuge::ZapWhole => {
                    self.zap_range(base, base + size, PartialHuge::ZapWhole)?;
                    return Ok(());
                }
                PartialHuge::Split => {
                    if !self.split_leaf(slot)? {
                        return Ok(());
                    }
                    self.flush_tlb_range(base, base + size, FlushReason::Split);
                }
            }
        }
    }

    /// Clears every leaf in `[start, end)` (`zap_page_range_single`, `unmap_page_range`).
    /// A huge leaf only partly inside is split or zapped whole, as `partial` says. Tables are
    /// kept; [`PageTables::free_pgtables`] frees the ones no VMA can use any more.
    pub fn zap_range(
        &self,
        start: UserAddr,
        end: UserAddr,
        partial: PartialHuge,
    ) -> Result<ZapStats, WalkError> {
        let mut tlb = self.tlb_gather_mmu();
        let (st, r) = self.zap_range_unnotified(&mut tlb, start, end, partial);
        tlb.finish();
        // The MMU notifier hears of the whole range, whatever it held (unmap_vmas,
        // zap_page_range_single invalidate their range unconditionally: a secondary MMU may map
        // more than the host does, as KVM/arm64's stage-2 blocks over a BAR the host maps in
        // part), and of every huge leaf zapped whole past it (__split_huge_pud's own range).
        // One call after the change, as everywhere in the model.
        let (lo, hi) = st.notify_range(start, end);
        self.mmu_notifier_invalidate(lo, hi);
        r.map(|()| st)
    }

    /// [`PageTables::zap_range`] without the MMU notifier and into the caller's gather, for a
    /// caller that notifies and flushes once for several zaps (munmap over several VMAs:
    /// `unmap_vmas` has one range and one `mmu_gather`). Returns what was cleared even when the
    /// walk failed part-way.
    pub fn zap_range_unnotified(
        &self,
        tlb: &mut MmuGather<'_>,
        start: UserAddr,
        end: UserAddr,
        partial: PartialHuge,
    ) -> (ZapStats, Result<(), WalkError>) {
        let mut st = ZapStats {
            lo: UserAddr::new(u64::MAX),
            ..ZapStats::default()
        };
        let r = self.zap_pmd_range(start, end, partial, &mut st);
        self.zapped.add_all(st.cleared);
        if st.cleared.total() > 0 {
            tlb.add_range(st.lo, st.hi, FlushReason::Zap);
        }
        (st, r)
    }

    /// `unmap_page_range` → `zap_p4d_range` … `zap_pte_range`, as one engine walk: a leaf (or a
    /// non-present entry) wholly inside is cleared under its lock; a huge one only partly inside
    /// is split and its pieces visited again, or cleared whole, as `partial` says.
    fn zap_pmd_range(
        &self,
        start: UserAddr,
        end: UserAddr,
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
                            st.hi = st.hi.max(v.base + v.span);
                        }
                        Step::Next
                    } else if t.split_leaf(v.slot)? {
                        st.splits += 1;
                        self.flush_tlb_range(v.base, v.base + v.span, FlushReason::Split);
                        Step::Again // now a table
                    } else {
                        Step::Next
                    }
                }
            })
        })
    }

    /// Frees the tables under `[start, end)` whose whole span lies inside `[floor, ceiling)`,
    /// the addresses no VMA uses (`free_pgtables`/`free_pgd_range`), into the caller's gather
    /// (`tlb_remove_table`: flushed when it ends, freed after a grace period). Such tables are
    /// empty once their range has been zapped. Returns how many were freed.
    pub fn free_pgtables(
        &self,
        tlb: &mut MmuGather<'_>,
        start: UserAddr,
        end: UserAddr,
        floor: UserAddr,
        ceiling: UserAddr,
    ) -> u64 {
        let mut freed = 0;
        let _ = self.tree.walk_range::<WalkError>(start, end, &mut |t, v| {
            let Decoded::Table(pa) = v.entry else {
                return Ok(Step::Next);
            };
            if !v.post {
                return Ok(Step::Descend);
            }
            let span_end = v.base.saturating_add(v.span);
            if v.base >= floor && span_end <= ceiling && t.table(pa)?.is_empty() {
                t.lock(v.slot).set(v.slot, 0);
                t.free_subtree_deferred(pa, v.slot.level.lower().unwrap_or(Level::Pte));
                freed += 1;
            }
            Ok(Step::Next)
        });
        if freed > 0 {
            tlb.add_freed_tables(start, end);
        }
        freed
    }

    /// Drops the page reference a cleared leaf held (`zap_present_ptes` →
    /// `folio_remove_rmap`): only anonymous pages (not special) have one.
    pub fn release_leaf(&self, raw: u64, level: Level) {
        self.tree.format().release_leaf(self.phys(), raw, level);
    }
}
