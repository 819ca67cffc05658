//! Entry formats: what one page-table entry means at its level, for each kind of table the engine
//! builds.
//!
//! Linux keeps one generic mm and an `arch/*/include/asm/pgtable*.h` per architecture with
//! `pte_present`, `pmd_leaf`, `pfn_pmd`, `pmd_page_vaddr`, …; the IOMMU drivers and KVM have their
//! own (`dma_pte_*` in intel/iommu.h, `spte.h`). Here each is an implementation of [`Format`]:
//! the engine ([`crate::tree::Tree`]) walks, allocates, locks, splits and frees, and asks the
//! format only what an entry is and how to write one.
//!
//! Formats: [`X86_64`] (CPU, 4- and 5-level; its encoding lives in [`crate::entry`]), [`arm64`]
//! (stage 1 in the 4, 16 and 64 KiB granules), [`riscv`] (Sv39/48/57), [`cpu`] (whichever of
//! those a machine runs), [`vtd`] (VT-d second level), [`ept`] (Intel EPT as KVM's TDP MMU writes
//! it), [`arm64_s2`] (arm64 stage 2 as KVM writes it) and [`stage2`] (whichever of the last two a
//! host runs).

pub mod arm64;
pub mod arm64_s2;
pub mod cpu;
pub mod ept;
pub mod riscv;
pub mod stage2;
pub mod vtd;

use std::fmt;

use crate::addr::{InputAddr, PagingMode, Pfn, PhysAddr, UserAddr};
use crate::entry::{self, Leaf};
use crate::level::{Geometry, Level};
use crate::phys::PhysMem;

/// What an entry is, given its level (`pxx_none`, `pxx_present` + `pxx_leaf`, `pxx_page_vaddr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<L> {
    /// All zero: nothing here.
    None,
    /// A pointer to the next-level table.
    Table(PhysAddr),
    /// A leaf (for a CPU format: present, or PROT_NONE).
    Leaf(L),
    /// Not none, not a table, not a leaf: bits the model does not decode (swap or migration
    /// entries, a non-present IOMMU entry with stray bits).
    NonPresent(u64),
}

/// Encoding failed: a leaf at a level that cannot hold one, or a pfn not aligned to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The format has no leaves at this level (P4D/PGD on x86-64).
    #[error("no leaf can be encoded at the {0} level")]
    NotLeafLevel(Level),
    /// The low bits of a huge leaf's frame must be zero (SDM; upstream.md §3.3).
    #[error("pfn {pfn} is not aligned to a {level} leaf")]
    Misaligned {
        /// The pfn.
        pfn: Pfn,
        /// The level.
        level: Level,
    },
    /// The frame number does not fit the format's address field.
    #[error("pfn {0:#x} does not fit the entry's address field")]
    PfnTooWide(u64),
    /// An attribute the format cannot express (a memory type, a contiguous bit).
    #[error("the entry format cannot express it: {0}")]
    Unrepresentable(&'static str),
}

/// A leaf of `level` may start at `pfn` in format `f`: the level can hold leaves there and the
/// frame is aligned to the leaf's size in `f`'s granule (the SDM's and the Arm ARM's rule).
#[inline]
pub(crate) fn check_placement<F: Format + ?Sized>(
    f: &F,
    pfn: Pfn,
    level: Level,
) -> Result<(), EncodeError> {
    if !f.can_be_leaf(level) {
        return Err(EncodeError::NotLeafLevel(level));
    }
    if !pfn.phys().as_u64().is_multiple_of(f.geometry().size(level)) {
        return Err(EncodeError::Misaligned { pfn, level });
    }
    Ok(())
}

/// `raw` with every bit whose condition holds set (the encoders' bit tables).
#[inline]
pub(crate) fn set_bits<const N: usize>(raw: u64, bits: [(bool, u64); N]) -> u64 {
    bits.into_iter()
        .fold(raw, |r, (on, b)| if on { r | b } else { r })
}

/// The flags whose condition holds (the decoders' bit tables).
#[inline]
pub(crate) fn flags_where<const N: usize>(
    flags: [(crate::entry::ProtFlags, bool); N],
) -> crate::entry::ProtFlags {
    flags
        .into_iter()
        .filter(|(_, on)| *on)
        .fold(crate::entry::ProtFlags::empty(), |a, (f, _)| a | f)
}

/// `zap_present_ptes` → `folio_remove_rmap` for a CPU format whose leaves are [`Leaf`]s: only
/// anonymous pages (not special) hold a reference.
#[inline]
pub(crate) fn release_cpu_leaf<F: Format<Leaf = Leaf>>(
    f: &F,
    phys: &PhysMem,
    raw: u64,
    level: Level,
) {
    if let Entry::Leaf(l) = f.decode(raw, level)
        && !l.prot.is_special()
    {
        phys.put_page(l.pfn);
    }
}

/// `impl Format` for an enum whose every variant holds a format with the same leaf (a
/// machine's CPU format, a host's second stage): each call goes to the variant's format.
macro_rules! enum_format {
    ($ty:ident, $leaf:ty, $addr:ty, $locking:expr, $($v:ident),+) => {
        impl $crate::format::Format for $ty {
            type Leaf = $leaf;
            type Addr = $addr;
            const LOCKING: $crate::format::Locking = $locking;

            fn name(&self) -> &'static str {
                match self { $($ty::$v(f) => f.name()),+ }
            }

            fn top(&self) -> $crate::level::Level {
                match self { $($ty::$v(f) => f.top()),+ }
            }

            #[inline]
            fn geometry(&self) -> $crate::level::Geometry {
                match self { $($ty::$v(f) => f.geometry()),+ }
            }

            #[inline]
            fn can_be_leaf(&self, level: $crate::level::Level) -> bool {
                match self { $($ty::$v(f) => f.can_be_leaf(level)),+ }
            }

            #[inline(always)]
            fn decode(&self, raw: u64, level: $crate::level::Level) -> $crate::format::Entry<$leaf> {
                match self { $($ty::$v(f) => f.decode(raw, level)),+ }
            }

            #[inline]
            fn table_of(&self, raw: u64, level: $crate::level::Level) -> Option<$crate::addr::PhysAddr> {
                match self { $($ty::$v(f) => f.table_of(raw, level)),+ }
            }

            #[inline]
            fn is_leaf(&self, raw: u64, level: $crate::level::Level) -> bool {
                match self { $($ty::$v(f) => f.is_leaf(raw, level)),+ }
            }

            #[inline]
            fn encode_leaf(&self, leaf: &$leaf, level: $crate::level::Level) -> Result<u64, $crate::format::EncodeError> {
                match self { $($ty::$v(f) => f.encode_leaf(leaf, level)),+ }
            }

            #[inline]
            fn encode_table(&self, table: $crate::addr::PhysAddr, level: $crate::level::Level) -> u64 {
                match self { $($ty::$v(f) => f.encode_table(table, level)),+ }
            }

            #[inline]
            fn account_level(&self, level: $crate::level::Level) -> $crate::level::Level {
                match self { $($ty::$v(f) => f.account_level(level)),+ }
            }

            #[inline]
            fn release_leaf(&self, phys: &$crate::phys::PhysMem, raw: u64, level: $crate::level::Level) {
                match self { $($ty::$v(f) => f.release_leaf(phys, raw, level)),+ }
            }
        }
    };
}
pub(crate) use enum_format;

/// What the engine needs of a decoded leaf to split it.
pub trait LeafOps: Copy + fmt::Debug + PartialEq {
    /// The first frame the leaf maps.
    fn first_pfn(&self) -> Pfn;

    /// The same attributes at another frame and level (a piece of a split leaf).
    fn at(&self, pfn: Pfn, level: Level) -> Self;

    /// True if the hardware walker uses it (a CPU's PROT_NONE leaf is the kernel's, not the
    /// MMU's).
    fn hw_present(&self) -> bool {
        true
    }
}

impl LeafOps for Leaf {
    fn first_pfn(&self) -> Pfn {
        self.pfn
    }

    fn at(&self, pfn: Pfn, level: Level) -> Leaf {
        Leaf {
            pfn,
            prot: self.prot,
            level,
        }
    }

    fn hw_present(&self) -> bool {
        self.prot.flags.contains(crate::entry::ProtFlags::PRESENT)
    }
}

/// How a tree's entries are locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Linux's split page-table locks: entries of PMD and PTE tables under their table page's
    /// lock (`pmd_lock`, `pte_offset_map_lock`), every higher entry under the tree's one lock
    /// (`mm->page_table_lock`, `pud_lock`).
    Split,
    /// One lock for every entry (an IOMMU domain's map/unmap lock, KVM's `mmu_lock`).
    Single,
}

/// An entry format: the levels a tree has, which of them hold leaves, and how entries are
/// encoded and decoded. Everything else is the engine's.
pub trait Format: Send + Sync + 'static {
    /// A decoded leaf: frame, attributes, and whatever the format records of its level.
    type Leaf: LeafOps;

    /// The address the tables translate: a user address, an IOVA or a guest physical address.
    type Addr: InputAddr;

    /// How entries of this format are locked.
    const LOCKING: Locking;

    /// Short name, as in `x86-64 4-level`.
    fn name(&self) -> &'static str;

    /// The level of the root table's entries.
    fn top(&self) -> Level;

    /// The granule: page size and index bits per level. The default is 4 KiB pages with 512
    /// entries per table (x86-64, riscv, VT-d, EPT, arm64 with 4 KiB pages).
    #[inline]
    fn geometry(&self) -> Geometry {
        Geometry::G4K
    }

    /// True if an entry at `level` may be a leaf in this format. The default: PTE, PMD and PUD,
    /// the levels the 4 KiB-granule formats here (and Linux's pfnmaps on them) use.
    fn can_be_leaf(&self, level: Level) -> bool {
        level.can_be_leaf()
    }

    /// Decodes an entry found at `level`. An all-zero entry must be [`Entry::None`]: a fresh
    /// table is zeroed, and its entries are none.
    fn decode(&self, raw: u64, level: Level) -> Entry<Self::Leaf>;

    /// The table a raw entry at `level` points to, if it is a table pointer: the walkers' fast
    /// path, which need not decode a leaf's attributes to step down (`pmd_page_vaddr` after
    /// `pmd_present && !pmd_leaf`). The default decodes.
    #[inline]
    fn table_of(&self, raw: u64, level: Level) -> Option<PhysAddr> {
        match self.decode(raw, level) {
            Entry::Table(pa) => Some(pa),
            _ => None,
        }
    }

    /// True if a raw entry at `level` is a leaf (counting needs no attributes). The default
    /// decodes.
    #[inline]
    fn is_leaf(&self, raw: u64, level: Level) -> bool {
        matches!(self.decode(raw, level), Entry::Leaf(_))
    }

    /// Encodes a leaf at `level`.
    fn encode_leaf(&self, leaf: &Self::Leaf, level: Level) -> Result<u64, EncodeError>;

    /// Encodes a pointer to a table holding entries one level below `level`.
    fn encode_table(&self, table: PhysAddr, level: Level) -> u64;

    /// The level a table holding entries of `level` is accounted as (x86-64 with 4-level paging
    /// names its top table the PGD although it holds P4D-sized entries).
    fn account_level(&self, level: Level) -> Level {
        level
    }

    /// Drops what a cleared leaf held (a CPU format: the page reference of an anonymous page).
    fn release_leaf(&self, _phys: &PhysMem, _raw: u64, _level: Level) {}
}

/// The x86-64 CPU page-table format (`arch/x86/include/asm/pgtable*.h`), 4- or 5-level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64 {
    /// 4-level (48-bit) or 5-level (57-bit, LA57) paging.
    pub mode: PagingMode,
}

impl Format for X86_64 {
    type Leaf = Leaf;
    type Addr = UserAddr;
    const LOCKING: Locking = Locking::Split;

    fn name(&self) -> &'static str {
        match self.mode {
            PagingMode::Level4 => "x86-64 4-level",
            PagingMode::Level5 => "x86-64 5-level",
        }
    }

    fn top(&self) -> Level {
        Level::top(self.mode)
    }

    #[inline]
    fn decode(&self, raw: u64, level: Level) -> Entry<Leaf> {
        entry::decode(raw, level)
    }

    #[inline]
    fn table_of(&self, raw: u64, level: Level) -> Option<PhysAddr> {
        entry::table_of(raw, level)
    }

    #[inline]
    fn is_leaf(&self, raw: u64, level: Level) -> bool {
        entry::is_leaf(raw, level)
    }

    #[inline]
    fn encode_leaf(&self, leaf: &Leaf, level: Level) -> Result<u64, EncodeError> {
        entry::encode_leaf(Leaf { level, ..*leaf })
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        entry::encode_table(table)
    }

    fn account_level(&self, level: Level) -> Level {
        if level == self.top() {
            Level::Pgd
        } else {
            level
        }
    }

    /// `zap_present_ptes` → `folio_remove_rmap`: only anonymous pages (not special) hold a
    /// reference.
    #[inline]
    fn release_leaf(&self, phys: &PhysMem, raw: u64, level: Level) {
        // `_PAGE_SPECIAL` is bit 9 at every level: a pfnmap leaf holds nothing (no decode)
        if raw & entry::bits::SPECIAL != 0 {
            return;
        }
        if let Entry::Leaf(l) = entry::decode(raw, level)
            && !l.prot.is_special()
        {
            phys.put_page(l.pfn);
        }
    }
}
