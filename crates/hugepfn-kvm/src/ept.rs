//! The EPT: Intel's second-stage page table, as KVM's TDP MMU fills it.
//!
//! Models the entry format of the SDM (vol. 3C, "EPT Translation Mechanism") as KVM writes it
//! (`arch/x86/kvm/mmu/spte.c` `make_spte`, `arch/x86/include/asm/vmx.h`): R/W/X in bits 0..2,
//! the EPT memory type in bits 3..5 and ignore-PAT in bit 6 (leaves only:
//! `vmx_get_mt_mask` gives UC without IPAT for MMIO and WB with IPAT for RAM), bit 7 = the
//! entry is a 2 MiB or 1 GiB leaf, accessed/dirty in bits 8/9 (EPT A/D enabled), KVM's
//! software `SPTE_MMU_PRESENT` bit 11, the address in bits 12..51. A non-leaf entry is the
//! next table's address with R, W, X (and bit 11). Four levels (a 48-bit guest-physical
//! space), tables in the simulated physical memory, so [`PhysMem::leak_check`] sees an EPT
//! that was not torn down.
//!
//! The operations are the TDP MMU's (`arch/x86/kvm/mmu/tdp_mmu.c`): `kvm_tdp_mmu_map`
//! ([`Ept::map`]: walk to the goal level, allocating tables; a huge leaf above the goal is
//! zapped first, a table at the goal level is replaced by the huge leaf and freed —
//! `handle_removed_pt`), `tdp_mmu_zap_leafs` ([`Ept::zap_gfn_range`]: leaves only, a huge
//! leaf that intersects the range is zapped whole; tables stay until teardown) and the hardware
//! walk ([`Ept::translate`]).
//!
//! Deliberate differences: one lock (the caller's `mmu_lock`) instead of atomic SPTE updates
//! under a read lock; no shadow paging, no MMIO SPTEs (a miss on a gfn without a memslot is an
//! exit every time), no NX-huge-page mitigation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hugepfn_mm::phys::ENTRIES;
use hugepfn_mm::{LeafCounts, Level, PhysAddr, PhysMem};
use thiserror::Error;

/// EPT entry bits.
pub mod bits {
    /// Read access.
    pub const READ: u64 = 1 << 0;
    /// Write access.
    pub const WRITE: u64 = 1 << 1;
    /// Execute access (supervisor).
    pub const EXEC: u64 = 1 << 2;
    /// EPT memory type, bits 3..5 (`VMX_EPT_MT_EPTE_SHIFT` = 3).
    pub const MT_SHIFT: u32 = 3;
    /// Mask of the memory type field.
    pub const MT_MASK: u64 = 0b111 << MT_SHIFT;
    /// Ignore guest PAT (`VMX_EPT_IPAT_BIT`).
    pub const IPAT: u64 = 1 << 6;
    /// The entry maps a 2 MiB / 1 GiB page (`PT_PAGE_SIZE_MASK`).
    pub const LARGE: u64 = 1 << 7;
    /// Accessed (`VMX_EPT_ACCESS_BIT`).
    pub const ACCESSED: u64 = 1 << 8;
    /// Dirty (`VMX_EPT_DIRTY_BIT`).
    pub const DIRTY: u64 = 1 << 9;
    /// KVM's software "this SPTE is present" bit (`SPTE_MMU_PRESENT_MASK`).
    pub const MMU_PRESENT: u64 = 1 << 11;
    /// Address bits 12..51.
    pub const ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;
}

/// EPT memory types (the MTRR encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MemType {
    /// `MTRR_TYPE_UNCACHABLE` (0).
    Uc,
    /// `MTRR_TYPE_WRCOMB` (1).
    Wc,
    /// `MTRR_TYPE_WRTHROUGH` (4).
    Wt,
    /// `MTRR_TYPE_WRPROT` (5).
    Wp,
    /// `MTRR_TYPE_WRBACK` (6).
    Wb,
}

impl MemType {
    /// The 3-bit encoding.
    pub const fn encoding(self) -> u64 {
        match self {
            MemType::Uc => 0,
            MemType::Wc => 1,
            MemType::Wt => 4,
            MemType::Wp => 5,
            MemType::Wb => 6,
        }
    }

    /// Decodes the 3-bit field (2, 3 and 7 are reserved: `None`).
    pub const fn from_encoding(v: u64) -> Option<MemType> {
        match v {
            0 => Some(MemType::Uc),
            1 => Some(MemType::Wc),
            4 => Some(MemType::Wt),
            5 => Some(MemType::Wp),
            6 => Some(MemType::Wb),
            _ => None,
        }
    }
}

/// A leaf as KVM builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptLeaf {
    /// Host pfn of the first page of the leaf (aligned to the leaf size).
    pub pfn: u64,
    /// 4 KiB (`Pte`), 2 MiB (`Pmd`) or 1 GiB (`Pud`).
    pub level: Level,
    /// Guest may read.
    pub read: bool,
    /// Guest may write.
    pub write: bool,
    /// Guest may execute.
    pub exec: bool,
    /// Memory type.
    pub mem_type: MemType,
    /// Ignore the guest's PAT.
    pub ipat: bool,
    /// Accessed.
    pub accessed: bool,
    /// Dirty.
    pub dirty: bool,
}

/// Encodes a leaf. `None` if the level cannot hold one or the pfn is not aligned to it.
pub fn encode_leaf(l: &EptLeaf) -> Option<u64> {
    if !l.level.can_be_leaf() || l.pfn & ((l.level.size() >> 12) - 1) != 0 {
        return None;
    }
    let mut raw = (l.pfn << 12) & bits::ADDR_MASK;
    for (on, b) in [
        (l.read, bits::READ),
        (l.write, bits::WRITE),
        (l.exec, bits::EXEC),
        (l.ipat, bits::IPAT),
        (l.level != Level::Pte, bits::LARGE),
        (l.accessed, bits::ACCESSED),
        (l.dirty, bits::DIRTY),
        (true, bits::MMU_PRESENT),
    ] {
        if on {
            raw |= b;
        }
    }
    Some(raw | (l.mem_type.encoding() << bits::MT_SHIFT))
}

/// Decodes a leaf found at `level` (`None` if not present or not a leaf there).
pub fn decode_leaf(raw: u64, level: Level) -> Option<EptLeaf> {
    if raw & bits::MMU_PRESENT == 0 || !is_leaf(raw, level) {
        return None;
    }
    Some(EptLeaf {
        pfn: (raw & bits::ADDR_MASK & !(level.size() - 1)) >> 12,
        level,
        read: raw & bits::READ != 0,
        write: raw & bits::WRITE != 0,
        exec: raw & bits::EXEC != 0,
        mem_type: MemType::from_encoding((raw & bits::MT_MASK) >> bits::MT_SHIFT)
            .unwrap_or(MemType::Uc),
        ipat: raw & bits::IPAT != 0,
        accessed: raw & bits::ACCESSED != 0,
        dirty: raw & bits::DIRTY != 0,
    })
}

fn is_leaf(raw: u64, level: Level) -> bool {
    level == Level::Pte || raw & bits::LARGE != 0
}

fn present(raw: u64) -> bool {
    raw & bits::MMU_PRESENT != 0
}

fn encode_table(pa: PhysAddr) -> u64 {
    (pa.as_u64() & bits::ADDR_MASK) | bits::READ | bits::WRITE | bits::EXEC | bits::MMU_PRESENT
}

/// The EPT could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EptError {
    /// No memory for a table (`-ENOMEM`).
    #[error("out of memory for EPT tables")]
    NoMemory,
    /// A leaf that cannot be encoded (level or alignment).
    #[error("cannot encode an EPT leaf for pfn {pfn:#x} at {level}")]
    BadLeaf {
        /// The pfn.
        pfn: u64,
        /// The level.
        level: Level,
    },
    /// The guest-physical address is beyond the 48-bit EPT.
    #[error("gpa {0:#x} is beyond the 4-level EPT")]
    OutOfRange(u64),
}

/// What [`Ept::map`] did besides writing the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapOutcome {
    /// The same leaf was already there (`RET_PF_SPURIOUS`).
    pub spurious: bool,
    /// A huge leaf above the goal level was zapped first.
    pub zapped_huge: bool,
    /// A table at the goal level was replaced by the huge leaf (leaves below it zapped).
    pub collapsed: LeafCounts,
}

/// A 4-level EPT over simulated physical memory. Callers serialise writers (`mmu_lock`).
pub struct Ept {
    phys: Arc<PhysMem>,
    root: PhysAddr,
    leaves: [AtomicU64; 3],
    tables: AtomicU64,
}

impl std::fmt::Debug for Ept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ept")
            .field("root", &self.root)
            .field("leaves", &self.leaves())
            .field("tables", &self.table_pages())
            .finish()
    }
}

const TOP: Level = Level::P4d;
/// The highest guest-physical address + 1 a 4-level EPT translates.
pub const GPA_LIMIT: u64 = 1 << 48;

impl Ept {
    /// An empty EPT (its PML4 allocated).
    pub fn new(phys: Arc<PhysMem>) -> Result<Self, EptError> {
        let root = phys.alloc_table(TOP).map_err(|_| EptError::NoMemory)?;
        Ok(Ept {
            phys,
            root,
            leaves: [const { AtomicU64::new(0) }; 3],
            tables: AtomicU64::new(1),
        })
    }

    /// The EPT pointer's table address.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Leaves mapped now, by size.
    pub fn leaves(&self) -> LeafCounts {
        let g = |l: Level| self.leaves[l.leaf_index()].load(Ordering::Relaxed);
        LeafCounts {
            pud: g(Level::Pud),
            pmd: g(Level::Pmd),
            pte: g(Level::Pte),
        }
    }

    /// Table pages held now (including the PML4).
    pub fn table_pages(&self) -> u64 {
        self.tables.load(Ordering::Relaxed)
    }

    fn get(&self, t: PhysAddr, i: usize) -> u64 {
        self.phys.table(t).map_or(0, |p| p.get(i))
    }

    fn set(&self, t: PhysAddr, i: usize, raw: u64) {
        if let Some(p) = self.phys.table(t) {
            p.set(i, raw);
        }
    }

    fn child(raw: u64) -> Option<PhysAddr> {
        PhysAddr::new(raw & bits::ADDR_MASK).ok()
    }

    fn alloc(&self, level: Level) -> Result<PhysAddr, EptError> {
        let pa = self
            .phys
            .alloc_table(level)
            .map_err(|_| EptError::NoMemory)?;
        self.tables.fetch_add(1, Ordering::Relaxed);
        Ok(pa)
    }

    fn free_subtree(&self, t: PhysAddr, level: Level, zapped: &mut LeafCounts) {
        for i in 0..ENTRIES {
            let raw = self.get(t, i);
            if !present(raw) {
                continue;
            }
            if is_leaf(raw, level) {
                self.leaves[level.leaf_index()].fetch_sub(1, Ordering::Relaxed);
                zapped.add(level, 1);
            } else if let (Some(c), Some(lower)) = (Self::child(raw), level.lower()) {
                self.free_subtree(c, lower, zapped);
            }
        }
        if self.phys.free_table(t) {
            self.tables.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The hardware walk: the leaf that maps `gpa`, if any.
    pub fn translate(&self, gpa: u64) -> Option<EptLeaf> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut t = self.root;
        let mut level = TOP;
        loop {
            let raw = self.get(t, level.index(gpa));
            if !present(raw) {
                return None;
            }
            if is_leaf(raw, level) {
                return decode_leaf(raw, level);
            }
            t = Self::child(raw)?;
            level = level.lower()?;
        }
    }

    /// The raw entry mapping `gpa` and its level (for format checks).
    pub fn raw_leaf(&self, gpa: u64) -> Option<(u64, Level)> {
        let mut t = self.root;
        let mut level = TOP;
        loop {
            let raw = self.get(t, level.index(gpa));
            if !present(raw) {
                return None;
            }
            if is_leaf(raw, level) {
                return Some((raw, level));
            }
            t = Self::child(raw)?;
            level = level.lower()?;
        }
    }

    /// `kvm_tdp_mmu_map`: installs `leaf` for the block containing `gpa`.
    pub fn map(&self, gpa: u64, leaf: &EptLeaf) -> Result<MapOutcome, EptError> {
        if gpa >= GPA_LIMIT {
            return Err(EptError::OutOfRange(gpa));
        }
        let raw_leaf = encode_leaf(leaf).ok_or(EptError::BadLeaf {
            pfn: leaf.pfn,
            level: leaf.level,
        })?;
        let mut out = MapOutcome::default();
        let mut t = self.root;
        let mut level = TOP;
        while level != leaf.level {
            let i = level.index(gpa);
            let raw = self.get(t, i);
            let lower = level.lower().ok_or(EptError::BadLeaf {
                pfn: leaf.pfn,
                level: leaf.level,
            })?;
            if present(raw) && is_leaf(raw, level) {
                // A huge leaf where a smaller one is wanted: zap it, then build tables.
                self.set(t, i, 0);
                self.leaves[level.leaf_index()].fetch_sub(1, Ordering::Relaxed);
                out.zapped_huge = true;
            }
            let raw = self.get(t, i);
            if present(raw) {
                t = Self::child(raw).ok_or(EptError::NoMemory)?;
            } else {
                let c = self.alloc(lower)?;
                self.set(t, i, encode_table(c));
                t = c;
            }
            level = lower;
        }
        let i = level.index(gpa);
        let old = self.get(t, i);
        if old == raw_leaf {
            out.spurious = true;
            return Ok(out);
        }
        if present(old) {
            if is_leaf(old, level) {
                self.leaves[level.leaf_index()].fetch_sub(1, Ordering::Relaxed);
            } else if let (Some(c), Some(lower)) = (Self::child(old), level.lower()) {
                // handle_removed_pt: the old table and everything under it goes.
                self.set(t, i, 0);
                self.free_subtree(c, lower, &mut out.collapsed);
            }
        }
        self.set(t, i, raw_leaf);
        self.leaves[level.leaf_index()].fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// `tdp_mmu_zap_leafs`: clears every leaf intersecting `[start, end)` (guest-physical),
    /// whole; tables stay. Returns the leaves cleared.
    pub fn zap_gfn_range(&self, start: u64, end: u64) -> LeafCounts {
        let mut z = LeafCounts::default();
        if end > start {
            self.zap_in(self.root, TOP, 0, start, end.min(GPA_LIMIT), &mut z);
        }
        z
    }

    fn zap_in(
        &self,
        t: PhysAddr,
        level: Level,
        base: u64,
        start: u64,
        end: u64,
        z: &mut LeafCounts,
    ) {
        let size = level.size();
        let first = if start > base {
            ((start - base) / size) as usize
        } else {
            0
        };
        for i in first..ENTRIES {
            let lo = base + i as u64 * size;
            if lo >= end {
                break;
            }
            let raw = self.get(t, i);
            if !present(raw) {
                continue;
            }
            if is_leaf(raw, level) {
                self.set(t, i, 0);
                self.leaves[level.leaf_index()].fetch_sub(1, Ordering::Relaxed);
                z.add(level, 1);
            } else if let (Some(c), Some(lower)) = (Self::child(raw), level.lower()) {
                self.zap_in(c, lower, lo, start, end, z);
            }
        }
    }
}

impl Drop for Ept {
    /// `kvm_mmu_uninit_tdp_mmu` / root teardown: every table back to the allocator.
    fn drop(&mut self) {
        let mut z = LeafCounts::default();
        self.free_subtree(self.root, TOP, &mut z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn leaf(pfn: u64, level: Level) -> EptLeaf {
        EptLeaf {
            pfn,
            level,
            read: true,
            write: true,
            exec: true,
            mem_type: MemType::Uc,
            ipat: false,
            accessed: true,
            dirty: false,
        }
    }

    #[test]
    fn the_entry_format_is_the_sdms() {
        let l = EptLeaf {
            mem_type: MemType::Wb,
            ipat: true,
            dirty: true,
            ..leaf(0x1000_0000_0000 >> 12, Level::Pud)
        };
        let raw = encode_leaf(&l).expect("aligned");
        assert_eq!(raw & 0x7, 0b111, "R W X");
        assert_eq!((raw >> 3) & 0b111, 6, "WB");
        assert_ne!(raw & (1 << 6), 0, "IPAT");
        assert_ne!(raw & (1 << 7), 0, "large page");
        assert_ne!(raw & (1 << 8), 0, "accessed");
        assert_ne!(raw & (1 << 9), 0, "dirty");
        assert_eq!(raw & bits::ADDR_MASK, 0x1000_0000_0000);
        assert_eq!(decode_leaf(raw, Level::Pud), Some(l));
        // a 4 KiB leaf has no large-page bit; UC is 0
        let p = encode_leaf(&leaf(0x12345, Level::Pte)).expect("pte");
        assert_eq!(p & (bits::LARGE | bits::MT_MASK), 0);
        // misaligned pfn for a 2 MiB leaf, and a level that cannot be a leaf
        assert_eq!(encode_leaf(&leaf(0x12345, Level::Pmd)), None);
        assert_eq!(encode_leaf(&leaf(0, Level::P4d)), None);
        assert_eq!(MemType::from_encoding(2), None);
    }

    #[test]
    fn map_translate_zap_and_teardown() {
        let phys = Arc::new(PhysMem::default());
        let ept = Ept::new(phys.clone()).expect("ept");
        let pfn = 0x1000_0000_0000u64 >> 12;
        ept.map(4 * G, &leaf(pfn, Level::Pud)).expect("1G");
        assert_eq!(ept.leaves().pud, 1);
        assert_eq!(ept.table_pages(), 2);
        let t = ept.translate(4 * G + 12345).expect("mapped");
        assert_eq!((t.pfn, t.level), (pfn, Level::Pud));
        assert!(
            ept.map(4 * G, &leaf(pfn, Level::Pud))
                .expect("again")
                .spurious
        );
        // a 4K leaf inside the 1G leaf: the huge leaf is zapped first
        let o = ept.map(5 * G, &leaf(pfn + 1, Level::Pte)).expect("4K");
        assert!(!o.zapped_huge, "different 1G block");
        let o = ept
            .map(4 * G + 4096, &leaf(pfn + 1, Level::Pte))
            .expect("4K");
        assert!(o.zapped_huge);
        assert_eq!(
            ept.leaves(),
            LeafCounts {
                pud: 0,
                pmd: 0,
                pte: 2
            }
        );
        // and a 1G leaf over that table collapses it
        let o = ept.map(4 * G, &leaf(pfn, Level::Pud)).expect("collapse");
        assert_eq!(o.collapsed.pte, 1);
        assert_eq!(
            ept.leaves(),
            LeafCounts {
                pud: 1,
                pmd: 0,
                pte: 1
            }
        );
        // zap: the 1G leaf intersecting the range goes whole
        let z = ept.zap_gfn_range(4 * G + 8192, 4 * G + 12288);
        assert_eq!(z.pud, 1);
        assert!(ept.translate(4 * G).is_none());
        assert!(ept.translate(5 * G).is_some());
        assert_eq!(
            ept.map(GPA_LIMIT, &leaf(pfn, Level::Pte)),
            Err(EptError::OutOfRange(GPA_LIMIT))
        );
        drop(ept);
        assert!(phys.leak_check().is_empty());
    }
}
