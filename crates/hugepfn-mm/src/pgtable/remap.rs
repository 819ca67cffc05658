//! `remap_pfn_range` → `remap_p4d_range` … `remap_pte_range`, with the RFC's PUD/PMD leaves.

use crate::addr::{PAGE_SIZE, Pfn, PhysAddr, UserAddr};
use crate::entry::{Decoded, Leaf, Pgprot};
use crate::level::{LeafCap, Level};

use super::*;

impl PageTables {
    /// Installs leaves for `[start, end)` mapping to consecutive pfns from `pfn`: at each step the
    /// largest leaf no bigger than `cap` whose block lies inside the range and whose pfn is
    /// aligned to it (VA ≡ PA modulo the block size). The range must be empty (checked by the
    /// caller under the mmap lock); an empty table where a huge leaf goes is freed.
    /// Returns the leaves installed.
    pub fn remap_range(
        &self,
        start: UserAddr,
        end: UserAddr,
        pfn: Pfn,
        prot: Pgprot,
        cap: LeafCap,
    ) -> Result<LeafCounts, WalkError> {
        let mut counts = LeafCounts::default();
        let (start, end) = (start.as_u64(), end.as_u64());
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
        let g = self.geom;
        if level == Level::Pte {
            let first = g.index(level, start);
            let n = ((end - start) >> g.page_shift()) as usize;
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
            self.ptl(slot).fill(slot, n, base_raw, g.page_size());
            counts.add(Level::Pte, n as u64);
            return Ok(());
        }
        let mut va = start;
        while va < end {
            let size = g.size(level);
            let base = va & !(size - 1);
            let next = base.saturating_add(size).min(end);
            let slot = Slot {
                table,
                index: g.index(level, va),
                level,
            };
            let pfn = r.pfn + (va - r.start) / PAGE_SIZE;
            let whole = base == va && next - va == size;
            if self.format().can_be_leaf(level)
                && level <= r.cap
                && whole
                && Pfn::new(pfn).is_ok_and(|p| p.is_aligned_order(g.pfn_order(level)))
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
                    self.flush_tlb_range(
                        UserAddr::new(base),
                        UserAddr::new(base + size),
                        FlushReason::FreePgtables,
                    );
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
}

struct RemapArgs {
    start: u64,
    pfn: u64,
    prot: Pgprot,
    cap: Level,
}
