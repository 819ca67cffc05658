//! The EPT: Intel's second-stage page table, as KVM's TDP MMU fills it — and, in the same
//! structure, arm64's stage 2 as KVM's `kvm_pgtable_stage2_*` fills it.
//!
//! The entry format is the engine's [`Stage2`]: [`Ept4`] on x86-64 (hugepfn-pt `format::ept`:
//! the SDM's layout as `make_spte` writes it; `vmx_get_mt_mask` gives UC without IPAT for MMIO
//! and WB with IPAT for RAM), [`Arm64S2`] on arm64 (`format::arm64_s2`: KVM's descriptor bits,
//! 48-bit IPA, FEAT_S2FWB). The tree is the engine's [`Tree`], in the simulated physical
//! memory, so [`PhysMem::leak_check`] sees a second stage that was not torn down. This file
//! holds KVM's policy; the callers choose the leaf (x86's and arm64's fault paths differ, see
//! [`crate::vm`]).
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

use hugepfn_mm::addr::GuestPhysAddr;
use hugepfn_mm::{LeafCounts, Level, PhysAddr, PhysMem};
use hugepfn_pt::Format;
use hugepfn_pt::format::arm64_s2::Arm64S2;
use hugepfn_pt::format::ept::Ept4;
use hugepfn_pt::format::stage2::Stage2;
use hugepfn_pt::{AtomicLeafCounts, Entry, Step, Tree, WalkError};
use thiserror::Error;

pub use hugepfn_pt::format::ept::{EptLeaf, MemType, bits, decode_leaf, encode_leaf};

/// The EPT could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EptError {
    /// No memory for a table (`-ENOMEM`).
    #[error("out of memory for EPT tables")]
    NoMemory,
    /// The format's tables do not fit the host memory's frames (a 16 KiB stage 2 in 4 KiB
    /// frames).
    #[error(
        "second-stage tables of {table_bytes} bytes do not fit the host's {frame_bytes}-byte frames"
    )]
    TableTooLarge {
        /// The format's table size.
        table_bytes: u64,
        /// The memory's frame size.
        frame_bytes: u64,
    },
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
    /// The walk met what KVM's never leaves (a leaf above the goal it did not zap, a
    /// non-present entry with stray bits).
    #[error("EPT walk: {0}")]
    Walk(WalkError),
    /// A table pointer in the EPT names no table: the tree is corrupt.
    #[error("EPT table pointer {0} names no table: the tree is corrupt")]
    Corrupt(PhysAddr),
}

impl From<WalkError> for EptError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Oom => EptError::NoMemory,
            WalkError::Corrupt(pa) => EptError::Corrupt(pa),
            e => EptError::Walk(e),
        }
    }
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

/// A second stage over simulated physical memory: the engine's [`Tree`] in a [`Stage2`]
/// format (a 4-level EPT unless built with [`Ept::with_format`]), with KVM's policy on top.
/// Callers serialise writers (`mmu_lock`).
pub struct Ept {
    tree: Tree<Stage2>,
    leaves: AtomicLeafCounts,
}

impl std::fmt::Debug for Ept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ept")
            .field("root", &self.root())
            .field("leaves", &self.leaves())
            .field("tables", &self.table_pages())
            .finish()
    }
}

/// The highest guest-physical address + 1 a 4-level EPT (and a 48-bit-IPA arm64 stage 2)
/// translates.
pub const GPA_LIMIT: u64 = 1 << 48;

impl Ept {
    /// An empty EPT (its PML4 allocated).
    pub fn new(phys: Arc<PhysMem>) -> Result<Self, EptError> {
        Ept::with_format(phys, Stage2::Ept(Ept4))
    }

    /// An empty second stage in `format` (KVM/arm64's `kvm_pgtable_stage2_init` for
    /// [`Arm64S2`]).
    pub fn with_format(phys: Arc<PhysMem>, format: Stage2) -> Result<Self, EptError> {
        let tree = Tree::new(phys, format).map_err(|e| match e {
            hugepfn_mm::phys::PhysError::TableTooLarge {
                table_bytes,
                frame_bytes,
                ..
            } => EptError::TableTooLarge {
                table_bytes,
                frame_bytes,
            },
            _ => EptError::NoMemory,
        })?;
        Ok(Ept {
            tree,
            leaves: AtomicLeafCounts::default(),
        })
    }

    /// The arm64 stage 2 KVM builds on a 4 KiB-page host with a 48-bit IPA and FEAT_S2FWB.
    pub fn arm64(phys: Arc<PhysMem>) -> Result<Self, EptError> {
        Ept::with_format(phys, Stage2::Arm64(Arm64S2::G4K_IPA48))
    }

    /// The engine's tree under this EPT (for walkers: the hardware model reads it).
    pub fn tree(&self) -> &Tree<Stage2> {
        &self.tree
    }

    /// The entry format.
    pub fn format(&self) -> Stage2 {
        *self.tree.format()
    }

    /// The highest guest-physical address + 1 this second stage translates: [`GPA_LIMIT`] for
    /// the EPT, `1 << ipa_bits` for an arm64 stage 2.
    pub fn gpa_limit(&self) -> u64 {
        match self.tree.format() {
            Stage2::Ept(_) => GPA_LIMIT,
            Stage2::Arm64(f) => 1 << f.ipa_bits(),
        }
    }

    /// The EPT pointer's table address.
    pub fn root(&self) -> PhysAddr {
        self.tree.root()
    }

    /// Leaves mapped now, by size.
    pub fn leaves(&self) -> LeafCounts {
        self.leaves.snapshot()
    }

    fn count(&self, level: Level, n: u64, add: bool) {
        if add {
            self.leaves.add(level, n);
        } else {
            self.leaves.sub(level, n);
        }
    }

    /// Table pages held now (including the PML4).
    pub fn table_pages(&self) -> u64 {
        self.tree.table_counts().total()
    }

    /// The hardware walk: the leaf that maps `gpa`, if any.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<EptLeaf> {
        if gpa.as_u64() >= self.gpa_limit() {
            return None;
        }
        self.tree.lookup(gpa).map(|(l, _)| l)
    }

    /// The raw entry mapping `gpa` and its level (for format checks).
    pub fn raw_leaf(&self, gpa: GuestPhysAddr) -> Option<(u64, Level)> {
        if gpa.as_u64() >= self.gpa_limit() {
            return None;
        }
        let (_, slot) = self.tree.lookup(gpa)?;
        Some((self.tree.get(slot), slot.level))
    }

    /// `kvm_tdp_mmu_map`: installs `leaf` for the block containing `gpa`.
    pub fn map(&self, gpa: GuestPhysAddr, leaf: &EptLeaf) -> Result<MapOutcome, EptError> {
        if gpa.as_u64() >= self.gpa_limit() {
            return Err(EptError::OutOfRange(gpa.as_u64()));
        }
        let raw_leaf = self
            .tree
            .format()
            .encode_leaf(leaf, leaf.level)
            .map_err(|_| EptError::BadLeaf {
                pfn: leaf.pfn,
                level: leaf.level,
            })?;
        let mut out = MapOutcome::default();
        let mut slot = self.tree.top_slot(gpa);
        while slot.level > leaf.level {
            match self.tree.decode(slot) {
                Entry::Table(pa) => slot = self.tree.child_slot(pa, slot.level, gpa)?,
                Entry::Leaf(_) => {
                    // A huge leaf where a smaller one is wanted: zap it, then build tables.
                    self.tree.lock(slot).set(slot, 0);
                    self.count(slot.level, 1, false);
                    out.zapped_huge = true;
                }
                Entry::NonPresent(_) => self.tree.lock(slot).set(slot, 0),
                Entry::None => {
                    self.tree.table_below(slot)?;
                }
            }
        }
        let old = self.tree.get(slot);
        if old == raw_leaf {
            out.spurious = true;
            return Ok(out);
        }
        match self.tree.decode(slot) {
            Entry::Leaf(_) => self.count(slot.level, 1, false),
            Entry::Table(pa) => {
                // handle_removed_pt: the old table and everything under it goes.
                let size = self.tree.geometry().size(slot.level);
                let base = gpa.align_down(size);
                let mut gone = LeafCounts::default();
                self.tree
                    .for_each_leaf(base, base + size, &mut |_, _, l| gone.add(l, 1));
                self.tree.lock(slot).set(slot, 0);
                self.tree
                    .free_subtree(pa, slot.level.lower().unwrap_or(Level::Pte));
                for l in Level::LEAF_LEVELS {
                    self.count(l, gone.get(l), false);
                }
                out.collapsed = gone;
            }
            Entry::None | Entry::NonPresent(_) => {}
        }
        self.tree.lock(slot).set(slot, raw_leaf);
        self.count(slot.level, 1, true);
        Ok(out)
    }

    /// `tdp_mmu_zap_leafs`: clears every leaf intersecting `[start, end)` (guest-physical),
    /// whole; tables stay. Returns the leaves cleared.
    pub fn zap_gfn_range(&self, start: GuestPhysAddr, end: GuestPhysAddr) -> LeafCounts {
        let mut z = LeafCounts::default();
        let end = GuestPhysAddr::new(end.as_u64().min(self.gpa_limit())).unwrap_or(end);
        let _ = self.tree.walk_range::<WalkError>(start, end, &mut |t, v| {
            Ok(match v.entry {
                Entry::Table(_) if !v.post => Step::Descend,
                Entry::Leaf(_) => {
                    t.lock(v.slot).set(v.slot, 0);
                    self.count(v.slot.level, 1, false);
                    z.add(v.slot.level, 1);
                    Step::Next
                }
                _ => Step::Next,
            })
        });
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa_of(a: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(a).expect("52-bit")
    }

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
        ept.map(gpa_of(4 * G), &leaf(pfn, Level::Pud)).expect("1G");
        assert_eq!(ept.leaves().pud, 1);
        assert_eq!(ept.table_pages(), 2);
        let t = ept.translate(gpa_of(4 * G + 12345)).expect("mapped");
        assert_eq!((t.pfn, t.level), (pfn, Level::Pud));
        assert!(
            ept.map(gpa_of(4 * G), &leaf(pfn, Level::Pud))
                .expect("again")
                .spurious
        );
        // a 4K leaf inside the 1G leaf: the huge leaf is zapped first
        let o = ept
            .map(gpa_of(5 * G), &leaf(pfn + 1, Level::Pte))
            .expect("4K");
        assert!(!o.zapped_huge, "different 1G block");
        let o = ept
            .map(gpa_of(4 * G + 4096), &leaf(pfn + 1, Level::Pte))
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
        let o = ept
            .map(gpa_of(4 * G), &leaf(pfn, Level::Pud))
            .expect("collapse");
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
        let z = ept.zap_gfn_range(gpa_of(4 * G + 8192), gpa_of(4 * G + 12288));
        assert_eq!(z.pud, 1);
        assert!(ept.translate(gpa_of(4 * G)).is_none());
        assert!(ept.translate(gpa_of(5 * G)).is_some());
        assert_eq!(
            ept.map(gpa_of(GPA_LIMIT), &leaf(pfn, Level::Pte)),
            Err(EptError::OutOfRange(GPA_LIMIT))
        );
        drop(ept);
        assert!(phys.leak_check().is_empty());
    }
}
