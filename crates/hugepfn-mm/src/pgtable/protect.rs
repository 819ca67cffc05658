//! `change_protection`: mprotect's page-table half.

use crate::entry::{Leaf, Pgprot, ProtFlags};

use super::*;

impl PageTables {
    /// Rewrites the protection of every leaf in `[start, end)` (`change_protection`,
    /// `change_huge_pud`/`change_huge_pmd`/`change_pte_range`): access bits from `newprot`,
    /// while pfn, special, accessed, dirty and the memory type are kept (`pte_modify`). Leaves
    /// must not straddle the range (split them first). The flush goes into `tlb`
    /// (`do_mprotect_pkey` gathers every VMA's, then flushes once). Returns the leaves changed.
    ///
    /// The MMU notifier is told about `[addr, end)` from the first `addr` whose PUD entry is
    /// populated (`change_pud_range`), whether or not a leaf changed: KVM/arm64 may map a
    /// stage-2 block over host addresses with no leaf.
    pub fn change_protection(
        &self,
        tlb: &mut MmuGather<'_>,
        start: UserAddr,
        end: UserAddr,
        newprot: Pgprot,
    ) -> LeafCounts {
        let pud = self.geom.size(Level::Pud);
        let mut notify = None;
        let mut addr = start;
        while addr < end {
            if let Ok(Some(slot)) = self.slot(addr, Level::Pud)
                && self.tree.get(slot) != 0
            {
                notify = Some(addr);
                break;
            }
            addr = match addr.align_down(pud).checked_add(pud) {
                Some(next) => next,
                None => break,
            };
        }
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
            tlb.add_range(start, end, FlushReason::Protect);
        }
        if let Some(from) = notify {
            self.mmu_notifier_invalidate(from, end);
        }
        n
    }
}
