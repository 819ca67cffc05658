//! Two-dimensional translation: a guest page table over KVM's EPT.
//!
//! [`EptTable`] lets the walker read `hugepfn_kvm::Ept` entries (the SDM's EPT format as KVM's
//! TDP MMU writes it: present = KVM's `SPTE_MMU_PRESENT` bit, bit 7 = a 2 MiB / 1 GiB leaf,
//! address in bits 12..51). [`Nested`] builds the two dimensions for one mapping: a guest
//! `PageTables` in guest-physical memory (its tables are guest frames) mapping a VA range with
//! the guest's leaf cap, and an EPT mapping both the guest's page-table frames and the mapped
//! range's guest-physical pages to host memory with the host's leaf size, as KVM would after
//! the guest touched everything (no EPT violations are modelled here; `hugepfn-kvm` does that).
//!
//! Layout (arbitrary but fixed): guest tables in guest RAM at 4 GiB (`PhysConfig::default`);
//! the mapped range at guest-physical [`GUEST_DATA_GPA`]; host-physical = guest-physical +
//! [`HOST_OFFSET`]; EPT tables in their own host memory.

use std::sync::Arc;

use hugepfn_kvm::ept::{Ept, EptError, EptLeaf, MemType};
use hugepfn_mm::addr::GuestPhysAddr;
use hugepfn_mm::{CacheMode, LeafCap, Level, PageTables, Pfn, Pgprot, PhysMem, UserAddr};
use thiserror::Error;

use crate::mmu::Space;
use crate::walk::{Entry, RadixTable};

/// The walker's view of an EPT: the EPT and the host memory its tables live in.
#[derive(Debug)]
pub struct EptTable {
    /// The EPT.
    pub ept: Ept,
    /// Host memory holding the EPT's tables.
    pub phys: Arc<PhysMem>,
}

impl RadixTable for EptTable {
    type Addr = GuestPhysAddr;

    fn root(&self) -> u64 {
        RadixTable::root(self.ept.tree())
    }

    fn top(&self) -> Level {
        RadixTable::top(self.ept.tree())
    }

    fn entry(&self, table: u64, level: Level, index: usize) -> Entry {
        self.ept.tree().entry(table, level, index)
    }
}

impl EptTable {
    /// An EPT that maps every host-leaf-sized page touching one of `ranges` (guest-physical
    /// `[start, end)` pairs) with leaves of `host_leaf` (`Pte`, `Pmd` or `Pud`), host-physical =
    /// guest-physical + [`HOST_OFFSET`] — what KVM holds after the guest touched all of them.
    /// This is how an existing page table (a scenario's process tables, whose table frames and
    /// leaves are taken as guest-physical) is put under a second stage: pass its table frames
    /// and the physical ranges of the leaves the workload uses.
    pub fn covering(
        host_leaf: Level,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<EptTable, NestedError> {
        if !host_leaf.can_be_leaf() {
            return Err(NestedError::Guest(format!(
                "host leaf {} cannot be a leaf",
                host_leaf.name()
            )));
        }
        let size = host_leaf.size();
        let mut pages = std::collections::BTreeSet::new();
        for (start, end) in ranges {
            let mut gpa = start & !(size - 1);
            while gpa < end {
                pages.insert(gpa);
                match gpa.checked_add(size) {
                    Some(n) => gpa = n,
                    None => break,
                }
            }
        }
        let phys = Arc::new(PhysMem::default());
        let ept = Ept::new(phys.clone())?;
        for gpa in pages {
            let hpa = gpa
                .checked_add(HOST_OFFSET)
                .ok_or(NestedError::BadRange { va: gpa, len: size })?;
            ept.map(gpa_of(gpa)?, &touched_leaf(hpa, host_leaf))?;
        }
        Ok(EptTable { ept, phys })
    }
}

/// Guest-physical address of the mapped range.
pub const GUEST_DATA_GPA: u64 = 64 << 30;
/// Host-physical = guest-physical + this.
pub const HOST_OFFSET: u64 = 256 << 30;

/// Building the two dimensions failed.
#[derive(Debug, Error)]
pub enum NestedError {
    /// The guest page table could not be built.
    #[error("guest page table: {0}")]
    Guest(String),
    /// The EPT could not be built.
    #[error("EPT: {0}")]
    Ept(#[from] EptError),
    /// The VA or length is not 4 KiB aligned or too large.
    #[error("bad range: va {va:#x}, len {len:#x}")]
    BadRange {
        /// VA.
        va: u64,
        /// Length.
        len: u64,
    },
}

/// A guest page table and the EPT under it, mapping `[va, va + len)`.
#[derive(Debug)]
pub struct Nested {
    /// First mapped guest-virtual address.
    pub va: UserAddr,
    /// Bytes mapped.
    pub len: u64,
    /// The guest's page tables (table addresses are guest-physical).
    pub guest: PageTables,
    /// The second stage.
    pub host: EptTable,
    /// EPT leaves that map the range itself (what EPT violations on it would install), as
    /// counted by the EPT.
    pub ept_data_leaves: u64,
}

/// An EPT leaf mapping host-physical `hpa` at `level` as KVM leaves it after the guest touched
/// the page: read, write and execute, write-back with IPAT, accessed and dirty.
fn touched_leaf(hpa: u64, level: Level) -> EptLeaf {
    EptLeaf {
        pfn: hpa >> 12,
        level,
        read: true,
        write: true,
        exec: true,
        mem_type: MemType::Wb,
        ipat: true,
        accessed: true,
        dirty: true,
    }
}

/// `gpa` as a guest physical address: past 52 bits it lies beyond any EPT.
fn gpa_of(gpa: u64) -> Result<GuestPhysAddr, EptError> {
    GuestPhysAddr::new(gpa).map_err(|_| EptError::OutOfRange(gpa))
}

fn ept_map_range(
    ept: &Ept,
    start: u64,
    end: u64,
    level: Level,
    offset: u64,
) -> Result<(), EptError> {
    let size = level.size();
    let mut gpa = start & !(size - 1);
    while gpa < end {
        ept.map(gpa_of(gpa)?, &touched_leaf(gpa + offset, level))?;
        gpa += size;
    }
    Ok(())
}

impl Nested {
    /// Maps `[va, va + len)` in a guest page table with leaves up to `guest_cap`, at
    /// guest-physical [`GUEST_DATA_GPA`], and everything the guest uses in an EPT with leaves
    /// of `host_leaf` (`Pte`, `Pmd` or `Pud`).
    pub fn build(
        guest_cap: LeafCap,
        host_leaf: Level,
        va: UserAddr,
        len: u64,
    ) -> Result<Nested, NestedError> {
        let bad = || NestedError::BadRange {
            va: va.as_u64(),
            len,
        };
        if len == 0 || !va.is_aligned(0x1000) || len & 0xfff != 0 || va.checked_add(len).is_none() {
            return Err(bad());
        }
        if !host_leaf.can_be_leaf() {
            return Err(NestedError::Guest(format!(
                "host leaf {} cannot be a leaf",
                host_leaf.name()
            )));
        }
        let gphys = Arc::new(PhysMem::default());
        let guest = PageTables::new(gphys.clone(), Default::default())
            .map_err(|e| NestedError::Guest(e.to_string()))?;
        guest
            .remap_range(
                va,
                va + len,
                Pfn::new(GUEST_DATA_GPA >> 12).map_err(|_| bad())?,
                Pgprot::SHARED.with_cache(CacheMode::Wb),
                guest_cap,
            )
            .map_err(|e| NestedError::Guest(e.to_string()))?;
        let hphys = Arc::new(PhysMem::default());
        let ept = Ept::new(hphys.clone())?;
        // Guest page-table frames are allocated upwards from the start of guest RAM.
        let cfg = gphys.config();
        let (allocs, _) = gphys.alloc_free_counts();
        ept_map_range(
            &ept,
            cfg.ram_base,
            cfg.ram_base + allocs * 4096,
            host_leaf,
            HOST_OFFSET,
        )?;
        let before = ept.leaves().total();
        ept_map_range(
            &ept,
            GUEST_DATA_GPA,
            GUEST_DATA_GPA + len,
            host_leaf,
            HOST_OFFSET,
        )?;
        let ept_data_leaves = ept.leaves().total() - before;
        Ok(Nested {
            va,
            len,
            ept_data_leaves,
            guest,
            host: EptTable { ept, phys: hphys },
        })
    }

    /// The space to translate through.
    pub fn space(&self) -> Space<'_> {
        Space::Nested {
            guest: &self.guest,
            host: &self.host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::{SecondStage, walk};

    #[test]
    fn ept_view_walks_like_translate() {
        for level in [Level::Pte, Level::Pmd, Level::Pud] {
            let n = Nested::build(LeafCap::Pmd, level, UserAddr::new(1 << 30), 4 << 20).unwrap();
            let gpa = GUEST_DATA_GPA + 0x20_1234;
            let mut reads = Vec::new();
            let t = walk(&n.host, gpa_of(gpa).unwrap(), &mut reads).unwrap();
            assert_eq!(t.pa, gpa + HOST_OFFSET);
            assert_eq!(t.level, level);
            assert_eq!(
                n.host.ept.translate(gpa_of(gpa).unwrap()).unwrap().level,
                level
            );
            assert_eq!(
                n.host.walk_refs(gpa_of(gpa).unwrap()),
                4 - level.idx() as u32
            );
        }
    }

    #[test]
    fn guest_tables_are_mapped() {
        let n = Nested::build(LeafCap::Pte, Level::Pmd, UserAddr::new(1 << 30), 4 << 20).unwrap();
        let root = RadixTable::root(&n.guest);
        assert!(n.host.leaf_level(gpa_of(root).unwrap()).is_some());
    }

    #[test]
    fn covering_maps_each_host_page_once() {
        let e = EptTable::covering(
            Level::Pmd,
            [
                (0x20_0000, 0x20_1000),
                (0x20_0800, 0x40_0001),
                (1 << 30, (1 << 30) + 1),
            ],
        )
        .unwrap();
        assert_eq!(e.ept.leaves().total(), 3);
        assert_eq!(e.leaf_level(gpa_of(0x40_0000).unwrap()), Some(Level::Pmd));
        assert_eq!(e.leaf_level(gpa_of(0x60_0000).unwrap()), None);
        assert!(EptTable::covering(Level::P4d, [(0, 1)]).is_err());
    }

    #[test]
    fn bad_range_is_an_error() {
        assert!(Nested::build(LeafCap::Pte, Level::Pte, UserAddr::new(1 << 30), 1000).is_err());
        assert!(Nested::build(LeafCap::Pte, Level::P4d, UserAddr::new(1 << 30), 4096).is_err());
    }
}
