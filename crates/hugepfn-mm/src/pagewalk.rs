//! `walk_page_range` as `/proc/<pid>/numa_maps` drives it over a huge pfnmap: a PUD leaf is split
//! first (`split_huge_pud`, which for a pfnmap zaps it), then the walk descends to the PMD level.
//!
//! Models `mm/pagewalk.c` `walk_pud_range`/`walk_pmd_range` with 9b25a6e3d243 "mm/pagewalk: fix
//! race between concurrent split and refault" (upstream.md §3.11): between the split and the
//! descent a concurrent fault may install a PUD leaf again; the fixed `walk_pmd_range` snapshots
//! the PUD entry and walks again (`ACTION_AGAIN`) unless it is a table. The buggy variant
//! ([`crate::pgtable::Bugs::PAGEWALK_NO_RECHECK`]) descends into the leaf as if it were a table —
//! the kernel's "BUG: unable to handle page fault … walk_pgd_range"; here an [`WalkOops`].

use crate::entry::{self, Decoded};
use crate::level::Level;
use crate::mm::Mm;
use crate::pgtable::{Bugs, PartialHuge, Slot};

/// The walker followed a leaf's pfn as if it were a page-table pointer (an oops in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("walk_pmd_range descended into {pa:#x}, which is not a page table (PUD entry {raw:#x})")]
pub struct WalkOops {
    /// The address it followed.
    pub pa: u64,
    /// The PUD entry it misread.
    pub raw: u64,
}

/// What a walk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// PUD leaves split (zapped) on the way.
    pub puds_split: u64,
    /// PMD entries visited.
    pub pmds: u64,
    /// Times the PMD walk had to start again.
    pub again: u64,
}

impl Mm {
    /// Walks `[start, end)` at PMD granularity, splitting PUD leaves, under the mmap read lock.
    pub fn walk_page_range(&self, start: u64, end: u64) -> Result<WalkStats, WalkOops> {
        let _g = self.mmap_read();
        let pt = self.page_tables();
        let mut st = WalkStats::default();
        let mut va = start & !(Level::Pud.size() - 1);
        while va < end {
            let next = va + Level::Pud.size();
            let pud: Slot = match pt.slot(va, Level::Pud) {
                Ok(Some(s)) => s,
                _ => {
                    va = next;
                    continue;
                }
            };
            let mut tries = 0;
            loop {
                tries += 1;
                if tries > 64 {
                    break;
                }
                // walk_pud_range: a leaf is split first (for a pfnmap: zapped).
                if let Decoded::Leaf(_) = pt.decode(pud) {
                    let _ = pt.zap_range(va, next, PartialHuge::ZapWhole);
                    st.puds_split += 1;
                }
                if pt.get(pud) == 0 {
                    break; // pud_none: a hole, nothing to walk
                }
                // walk_pmd_range
                let raw = pt.get(pud);
                let table = match entry::decode(raw, Level::Pud) {
                    Decoded::Table(t) => t,
                    _ if pt.bugs().contains(Bugs::PAGEWALK_NO_RECHECK) => {
                        // pmd_offset() on a leaf: the leaf's address taken for a table.
                        let pa = raw & entry::bits::PTE_ADDR_MASK;
                        return Err(WalkOops { pa, raw });
                    }
                    _ => {
                        st.again += 1;
                        continue; // ACTION_AGAIN
                    }
                };
                let t = pt.table(table);
                for i in 0..512 {
                    let _ = t.get(i);
                    st.pmds += 1;
                }
                break;
            }
            va = next;
        }
        Ok(st)
    }
}
