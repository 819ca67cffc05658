//! What the page walker reads: a radix page table, level by level.
//!
//! [`RadixTable`] is the walker's view of any x86-style tree (the process page tables of
//! `hugepfn_mm::PageTables`, or a second stage such as an EPT): where the root is, and what the
//! entry at an index of a table holds. [`SecondStage`] is the small interface a nested walk
//! needs from the host dimension — the leaf level that maps a guest-physical address and the
//! references a cold walk of it makes — and every `RadixTable` is one: `hugepfn_mm::PageTables`
//! here, `hugepfn_kvm::Ept` in [`crate::nested::EptTable`].
//!
//! A walk here reads the real simulated entries through the engine's read side
//! ([`Format::table_of`], [`Format::decode`] of the tree's own format), so a mapping built by
//! `remap_pfn_range` or by vfio-pci faults is walked exactly as it was built, leaf sizes
//! included, in whichever format it was built.

use hugepfn_mm::addr::InputAddr;
use hugepfn_mm::{Level, PageTables, PhysAddr, UserAddr};
use hugepfn_pt::format::LeafOps;
use hugepfn_pt::{Entry as PtEntry, Format, Tree};

/// What the walker sees in an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Not present: the walk ends in a fault.
    Absent,
    /// The next table's physical address.
    Table(u64),
    /// A leaf: the physical address of the first byte of the page.
    Leaf(u64),
}

/// A radix page table the walker can read.
pub trait RadixTable {
    /// The address the table translates: a user address for a process's tables, a
    /// guest-physical one for a second stage.
    type Addr: InputAddr;
    /// Physical address of the top table (CR3, or the EPT pointer).
    fn root(&self) -> u64;
    /// Level of the top table's entries (`P4d` with 4-level paging, `Pgd` with 5).
    fn top(&self) -> Level;
    /// The entry at `index` of the table at `table`, whose entries are of `level`.
    fn entry(&self, table: u64, level: Level, index: usize) -> Entry;
}

/// Every 4 KiB-granule tree the engine builds is walkable: the CPU formats, the VT-d second
/// level, the EPT, KVM/arm64's stage 2 (the walker indexes with [`Level`]'s 4 KiB shifts; a
/// 16 or 64 KiB tree would be misread, and none reaches it: the mm core refuses them).
impl<F: Format> RadixTable for Tree<F> {
    type Addr = F::Addr;

    fn root(&self) -> u64 {
        Tree::root(self).as_u64()
    }

    fn top(&self) -> Level {
        Tree::top(self)
    }

    fn entry(&self, table: u64, level: Level, index: usize) -> Entry {
        let Some(raw) = PhysAddr::new(table)
            .ok()
            .and_then(|pa| self.phys().table(pa))
            .map(|t| t.get(index))
        else {
            return Entry::Absent;
        };
        let fmt = self.format();
        if let Some(pa) = fmt.table_of(raw, level) {
            return Entry::Table(pa.as_u64());
        }
        match fmt.decode(raw, level) {
            // A PROT_NONE leaf is not present to the hardware.
            PtEntry::Leaf(l) if fmt.can_be_leaf(level) && l.hw_present() => {
                Entry::Leaf(l.first_pfn().phys().as_u64())
            }
            _ => Entry::Absent,
        }
    }
}

impl RadixTable for PageTables {
    type Addr = UserAddr;

    fn root(&self) -> u64 {
        RadixTable::root(self.tree())
    }

    fn top(&self) -> Level {
        PageTables::top(self)
    }

    fn entry(&self, table: u64, level: Level, index: usize) -> Entry {
        self.tree().entry(table, level, index)
    }
}

/// One step of a cold walk: the physical address of the entry read and its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRead {
    /// Physical address of the 8-byte entry.
    pub pa: u64,
    /// Level of the entry.
    pub level: Level,
}

/// Where a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Level of the leaf.
    pub level: Level,
    /// Physical address the input address translates to.
    pub pa: u64,
}

/// Walks `t` for `addr` from the table `table` of `level` entries, pushing every entry read.
/// `None`: no leaf maps `addr` (a fault).
pub fn walk_from<T: RadixTable + ?Sized>(
    t: &T,
    mut table: u64,
    mut level: Level,
    addr: T::Addr,
    reads: &mut Vec<EntryRead>,
) -> Option<Translation> {
    let addr = addr.raw();
    loop {
        let index = level.index(addr);
        reads.push(EntryRead {
            pa: table + index as u64 * 8,
            level,
        });
        match t.entry(table, level, index) {
            Entry::Table(pa) => {
                table = pa;
                level = level.lower()?;
            }
            Entry::Leaf(base) => {
                let off = addr & (level.size() - 1);
                return Some(Translation {
                    level,
                    pa: base + off,
                });
            }
            Entry::Absent => return None,
        }
    }
}

/// A cold walk of `t` for `addr` from the root.
pub fn walk<T: RadixTable + ?Sized>(
    t: &T,
    addr: T::Addr,
    reads: &mut Vec<EntryRead>,
) -> Option<Translation> {
    walk_from(t, t.root(), t.top(), addr, reads)
}

/// The host (second) dimension of a nested walk, as the issue names it.
pub trait SecondStage {
    /// The address it translates (guest-physical for a second stage proper).
    type Addr: InputAddr;
    /// Level of the leaf mapping guest-physical `gpa`, if any.
    fn leaf_level(&self, gpa: Self::Addr) -> Option<Level>;
    /// Memory references a walk of `gpa` makes with no paging-structure cache hit (0 if
    /// nothing maps it).
    fn walk_refs(&self, gpa: Self::Addr) -> u32;
}

impl<T: RadixTable + ?Sized> SecondStage for T {
    type Addr = T::Addr;

    fn leaf_level(&self, gpa: T::Addr) -> Option<Level> {
        let mut reads = Vec::with_capacity(5);
        walk(self, gpa, &mut reads).map(|t| t.level)
    }

    fn walk_refs(&self, gpa: T::Addr) -> u32 {
        let mut reads = Vec::with_capacity(5);
        match walk(self, gpa, &mut reads) {
            Some(_) => reads.len() as u32,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepfn_mm::{CacheMode, LeafCap, Pfn, Pgprot, PhysMem, UserAddr};
    use std::sync::Arc;

    fn tables(cap: LeafCap) -> PageTables {
        let pt = PageTables::new(Arc::new(PhysMem::default()), Default::default()).unwrap();
        pt.remap_range(
            UserAddr::new(1 << 30),
            UserAddr::new(3 << 30),
            Pfn::new((64u64 << 30) >> 12).unwrap(),
            Pgprot::SHARED.with_cache(CacheMode::Wb),
            cap,
        )
        .unwrap();
        pt
    }

    #[test]
    fn refs_follow_leaf_size() {
        for (cap, level, refs) in [
            (LeafCap::Pte, Level::Pte, 4),
            (LeafCap::Pmd, Level::Pmd, 3),
            (LeafCap::Pud, Level::Pud, 2),
        ] {
            let pt = tables(cap);
            let va = (1 << 30) + 0x12_3456;
            assert_eq!(pt.leaf_level(UserAddr::new(va)), Some(level));
            assert_eq!(pt.walk_refs(UserAddr::new(va)), refs);
            let mut r = Vec::new();
            let t = walk(&pt, UserAddr::new(va), &mut r).unwrap();
            assert_eq!(t.pa, (64u64 << 30) + 0x12_3456);
            assert_eq!(r.last().unwrap().level, level);
        }
    }

    #[test]
    fn unmapped_is_none() {
        let pt = tables(LeafCap::Pmd);
        assert_eq!(pt.leaf_level(UserAddr::new(5 << 30)), None);
        assert_eq!(pt.walk_refs(UserAddr::new(5 << 30)), 0);
    }
}
