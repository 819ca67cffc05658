//! A file's address space and its reverse map of VMAs (`struct address_space`, `i_mmap`).
//!
//! Models `unmap_mapping_range()`: find every VMA, in every process, that maps a range of a
//! file's pages and zap what they map there, under `i_mmap_rwsem` and the page-table locks, and
//! without any process's mmap lock (as Linux does, so a driver may revoke while faults wait on
//! the driver's own lock). vfio-pci uses it to revoke BAR mappings when memory decode goes off.
//!
//! The VMA tree of each `Mm` keeps this map up to date under its mmap write lock
//! (`vma_link`/`__split_vma`/`unlink_file_vma`), always before page tables are freed.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use crate::sync::RwLock;

use crate::addr::UserAddr;
use crate::mm::Mm;
use crate::pgtable::{PartialHuge, ZapStats};

/// One VMA as the reverse map sees it.
#[derive(Debug, Clone)]
pub struct IMmapEntry {
    /// The process.
    pub mm: Weak<Mm>,
    /// `vm_start`.
    pub start: UserAddr,
    /// `vm_end`.
    pub end: UserAddr,
    /// `vm_pgoff`.
    pub pgoff: u64,
}

/// A file's pages and who maps them.
#[derive(Debug, Default)]
pub struct AddressSpace {
    name: String,
    i_mmap: RwLock<BTreeMap<(u64, UserAddr), IMmapEntry>>,
}

/// What `unmap_mapping_range` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnmapMappingStats {
    /// VMAs visited.
    pub vmas: u64,
    /// Processes whose page tables changed.
    pub mms: u64,
    /// Leaves cleared, summed.
    pub zapped: crate::pgtable::LeafCounts,
}

impl AddressSpace {
    /// A new, unmapped address space.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(AddressSpace {
            name: name.to_string(),
            i_mmap: RwLock::new(BTreeMap::new()),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn link(&self, mm_id: u64, e: IMmapEntry) {
        self.i_mmap
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((mm_id, e.start), e);
    }

    pub(crate) fn unlink(&self, mm_id: u64, start: UserAddr) {
        self.i_mmap
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(mm_id, start));
    }

    /// Number of VMAs mapping this file now.
    pub fn mapcount(&self) -> usize {
        self.i_mmap.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The VMAs mapping this file now.
    pub fn vmas(&self) -> Vec<IMmapEntry> {
        self.i_mmap
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Zaps every mapping of file pages `[pgoff, pgoff + npages)` in every process
    /// (`unmap_mapping_pages`; `even_cows` is implied: pfnmaps have no anonymous copies).
    /// Huge leaves that straddle the range are zapped whole; faults refill them.
    pub fn unmap_mapping_pages(&self, pgoff: u64, npages: u64) -> UnmapMappingStats {
        let first = pgoff;
        let last = pgoff.saturating_add(npages);
        let mut st = UnmapMappingStats::default();
        let i_mmap = self.i_mmap.read().unwrap_or_else(|p| p.into_inner());
        let mut touched = std::collections::BTreeSet::new();
        for ((mm_id, _), e) in i_mmap.iter() {
            let vpages = (e.end - e.start) >> 12;
            let lo = first.max(e.pgoff);
            let hi = last.min(e.pgoff + vpages);
            if lo >= hi {
                continue;
            }
            let Some(mm) = e.mm.upgrade() else { continue };
            let start = e.start + ((lo - e.pgoff) << 12);
            let end = e.start + ((hi - e.pgoff) << 12);
            st.vmas += 1;
            // Zap within the VMA only: a huge leaf never crosses a VMA boundary.
            let z: ZapStats = mm
                .page_tables()
                .zap_range(start, end, PartialHuge::ZapWhole)
                .unwrap_or_default();
            if z.cleared.total() > 0 {
                touched.insert(*mm_id);
            }
            st.zapped.pud += z.cleared.pud;
            st.zapped.pmd += z.cleared.pmd;
            st.zapped.pte += z.cleared.pte;
        }
        st.mms = touched.len() as u64;
        st
    }

    /// `unmap_mapping_range(mapping, holebegin, holelen, even_cows)` with byte offsets.
    pub fn unmap_mapping_range(&self, offset: u64, len: u64) -> UnmapMappingStats {
        let first = offset >> 12;
        let last = offset.saturating_add(len).div_ceil(4096);
        self.unmap_mapping_pages(first, last - first)
    }
}
