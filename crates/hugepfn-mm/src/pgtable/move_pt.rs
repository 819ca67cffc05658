//! `move_page_tables` (mm/mremap.c): mremap's page-table half, extent by extent.

use crate::entry::Decoded;
use crate::level::Level;

use super::*;

impl PageTables {
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
        old: UserAddr,
        new: UserAddr,
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
        let g = self.geom;
        let extent = |level: Level, o: UserAddr, n: UserAddr| -> u64 {
            let size = g.size(level);
            let to = |a: UserAddr| {
                let a = a.as_u64();
                (a & !(size - 1)).wrapping_add(size).wrapping_sub(a)
            };
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
                    if ext == g.size(Level::Pud) && self.move_table(os, ds, o, &mut mv.moved) {
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
                    if !(ext == g.size(Level::Pmd) && self.move_table(om, dm, o, &mut mv.moved)) {
                        let dt = self.tree.table_below(dm)?; // pte_alloc, even for no PTE
                        let ot = self.table(pa)?;
                        let (oi, di) = (
                            g.index(Level::Pte, o.as_u64()),
                            g.index(Level::Pte, n.as_u64()),
                        );
                        let count = (ext >> g.page_shift()) as usize;
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
        self.flush_tlb_range(old, end, FlushReason::Mremap);
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
        o: UserAddr,
        n: UserAddr,
        ext: u64,
        mv: &mut Moving,
    ) -> Result<bool, WalkError> {
        let level = slot.level;
        let size = self.geom.size(level);
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
        let base = o.align_down(size);
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
    fn move_table(&self, from: Slot, to: Slot, o: UserAddr, moved: &mut LeafCounts) -> bool {
        if self.get(to) != 0 {
            return false;
        }
        let under = self.count_leaves(o, o + self.geom.size(from.level));
        self.move_entry(from, to);
        for l in Level::LEAF_LEVELS {
            moved.add(l, under.get(l));
        }
        true
    }
}

/// What one `move_page_tables` call carries through its extents.
struct Moving {
    /// End of the old range.
    end: UserAddr,
    /// What to do with a huge leaf that cannot move whole.
    partial: PartialHuge,
    /// Leaves moved.
    moved: LeafCounts,
    /// Leaves zapped.
    zapped: LeafCounts,
}
