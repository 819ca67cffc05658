//! Page-table levels, chosen at run time.
//!
//! Linux names the levels PGD, P4D, PUD, PMD and PTE and describes a leaf by its order
//! (`PMD_ORDER` = 9, `PUD_ORDER` = 18 on x86-64). The fault path picks the leaf size at run time
//! (upstream.md §3.7: orders are not compile-time constants on every architecture), so `Level`
//! is a plain enum, not a type parameter.
//!
//! A [`Level`] names the *entries* of a table: a `Pmd` entry maps (or points at the table for)
//! 2 MiB. With 4-level paging the P4D is folded as in Linux: the top table indexes bits 39–47 and
//! is accounted as the PGD.

use std::fmt;

use serde::Serialize;

use crate::addr::{InputAddr, PagingMode};

/// A level of the x86-64 page-table tree, named after the entries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
// A word, not a byte: a slot or a result that ends in a one-byte level is moved with its
// seven bytes of padding as overlapping 4-byte loads and stores, and the CPU cannot forward
// such stores to the load that follows (perf showed 40 % of a walk's time stalled there).
#[repr(u64)]
pub enum Level {
    /// 4 KiB entries.
    Pte,
    /// 2 MiB entries.
    Pmd,
    /// 1 GiB entries.
    Pud,
    /// 512 GiB entries (the top level with 4-level paging, accounted as PGD there).
    P4d,
    /// 256 TiB entries (5-level paging only).
    Pgd,
}

impl Level {
    /// The levels that can hold a leaf, largest first.
    pub const LEAF_LEVELS: [Level; 3] = [Level::Pud, Level::Pmd, Level::Pte];

    /// Every level, smallest first.
    pub const ALL: [Level; 5] = [Level::Pte, Level::Pmd, Level::Pud, Level::P4d, Level::Pgd];

    /// Address bit where this level's index starts (`PAGE_SHIFT`, `PMD_SHIFT`, …).
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            Level::Pte => 12,
            Level::Pmd => 21,
            Level::Pud => 30,
            Level::P4d => 39,
            Level::Pgd => 48,
        }
    }

    /// Bytes mapped by one entry of this level.
    #[inline]
    pub const fn size(self) -> u64 {
        1u64 << self.shift()
    }

    /// `log2(size / PAGE_SIZE)`: 0, 9 (`PMD_ORDER`), 18 (`PUD_ORDER`), …
    #[inline]
    pub const fn order(self) -> u32 {
        self.shift() - 12
    }

    /// The level whose leaves have this order, if any can be a leaf.
    #[inline]
    pub const fn from_order(order: u32) -> Option<Level> {
        match order {
            0 => Some(Level::Pte),
            9 => Some(Level::Pmd),
            18 => Some(Level::Pud),
            _ => None,
        }
    }

    /// Index of `va` in a table of this level.
    #[inline]
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 511) as usize
    }

    /// True if a leaf may sit at this level on x86-64 (PTE, 2 MiB PMD, 1 GiB PUD).
    #[inline]
    pub const fn can_be_leaf(self) -> bool {
        matches!(self, Level::Pte | Level::Pmd | Level::Pud)
    }

    /// Index of a leaf level in `[PTE, PMD, PUD]` arrays of per-level counters (0 for PTE and
    /// for levels that cannot hold a leaf).
    #[inline]
    pub const fn leaf_index(self) -> usize {
        match self {
            Level::Pud => 2,
            Level::Pmd => 1,
            _ => 0,
        }
    }

    /// The next level down, if any.
    #[inline]
    pub const fn lower(self) -> Option<Level> {
        match self {
            Level::Pte => None,
            Level::Pmd => Some(Level::Pte),
            Level::Pud => Some(Level::Pmd),
            Level::P4d => Some(Level::Pud),
            Level::Pgd => Some(Level::P4d),
        }
    }

    /// The top level of a walk in `mode`.
    #[inline]
    pub const fn top(mode: PagingMode) -> Level {
        match mode {
            PagingMode::Level4 => Level::P4d,
            PagingMode::Level5 => Level::Pgd,
        }
    }

    /// Lower-case name, as in `pud`.
    #[inline]
    pub const fn name(self) -> &'static str {
        match self {
            Level::Pte => "pte",
            Level::Pmd => "pmd",
            Level::Pud => "pud",
            Level::P4d => "p4d",
            Level::Pgd => "pgd",
        }
    }

    /// The name Linux uses for the *table* holding entries of this level in `mode`
    /// (the top table is always the PGD).
    #[inline]
    pub const fn table_name(self, mode: PagingMode) -> &'static str {
        if matches!((self, mode), (Level::P4d, PagingMode::Level4)) {
            "pgd"
        } else {
            self.name()
        }
    }

    /// Position in [`Level::ALL`].
    #[inline]
    pub const fn idx(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Pte => "PTE (4 KiB)",
            Level::Pmd => "PMD (2 MiB)",
            Level::Pud => "PUD (1 GiB)",
            Level::P4d => "P4D (512 GiB)",
            Level::Pgd => "PGD (256 TiB)",
        })
    }
}

/// A translation granule: the base page size and the index bits each level takes
/// (`PAGE_SHIFT` and `PTRS_PER_PTE`; arm64's `CONFIG_ARM64_{4K,16K,64K}_PAGES`).
///
/// A table is one granule-sized page holding `page_size / 8` entries, so every level indexes
/// `page_shift - 3` bits: with 4 KiB pages a PMD entry maps 2 MiB, with 16 KiB pages 32 MiB, with
/// 64 KiB pages 512 MiB. [`Level`]'s own `shift`/`size`/`index` are the 4 KiB granule's (x86-64,
/// riscv, VT-d, EPT, arm64 with 4 KiB pages); code that serves every granule asks the geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Geometry {
    /// Each level's shift, `Level as usize` indexed (the walkers' hot path: no multiply).
    shifts: [u8; 5],
    /// Entries per table minus one.
    mask: u16,
}

impl Geometry {
    /// 4 KiB pages, 512 entries per table: 4 KiB / 2 MiB / 1 GiB / 512 GiB / 256 TiB.
    pub const G4K: Geometry = Geometry::with_page_shift(12);
    /// 16 KiB pages, 2048 entries per table: 16 KiB / 32 MiB / 64 GiB / 128 TiB.
    pub const G16K: Geometry = Geometry::with_page_shift(14);
    /// 64 KiB pages, 8192 entries per table: 64 KiB / 512 MiB / 4 TiB.
    pub const G64K: Geometry = Geometry::with_page_shift(16);

    const fn with_page_shift(p: u8) -> Geometry {
        let b = p - 3;
        // A level past bit 63 (the PGD with 64 KiB pages would start at bit 68) exists in no
        // format of that granule; its shift is clamped so that `size` cannot overflow.
        let top = if p + 4 * b > 63 { 63 } else { p + 4 * b };
        Geometry {
            shifts: [p, p + b, p + 2 * b, p + 3 * b, top],
            mask: (1 << b) - 1,
        }
    }

    /// `PAGE_SHIFT`.
    #[inline]
    pub const fn page_shift(self) -> u32 {
        self.shifts[0] as u32
    }

    /// `PAGE_SIZE`: the granule, and the size of every table page.
    #[inline]
    pub const fn page_size(self) -> u64 {
        1 << self.shifts[0]
    }

    /// Index bits per level (`page_shift - 3`: a table is one page of 8-byte entries).
    #[inline]
    pub const fn index_bits(self) -> u32 {
        self.page_shift() - 3
    }

    /// Entries per table (`PTRS_PER_PTE`).
    #[inline]
    pub const fn entries(self) -> usize {
        self.mask as usize + 1
    }

    /// Address bit where `level`'s index starts.
    #[inline]
    pub const fn shift(&self, level: Level) -> u32 {
        self.shifts[level as usize] as u32
    }

    /// Bytes one entry of `level` maps.
    #[inline]
    pub const fn size(&self, level: Level) -> u64 {
        1u64 << self.shift(level)
    }

    /// `log2(size / PAGE_SIZE)` of a `level` leaf, in this granule's pages.
    #[inline]
    pub const fn order(&self, level: Level) -> u32 {
        self.index_bits() * level as u32
    }

    /// Index of `va` in a table of `level`.
    #[inline]
    pub const fn index(&self, level: Level, va: u64) -> usize {
        ((va >> self.shift(level)) as usize) & self.mask as usize
    }

    /// `va` rounded down to the start of its `level` entry (`addr & PMD_MASK`, …).
    #[inline]
    pub fn align_down<A: InputAddr>(&self, level: Level, va: A) -> A {
        A::from_raw(va.raw() & !(self.size(level) - 1))
    }

    /// The leaf level whose order (in this granule's pages) is `order`: `PMD_ORDER` names the
    /// PMD, `PUD_ORDER` the PUD, 0 the PTE; any other order names none.
    #[inline]
    pub const fn level_of_order(&self, order: u32) -> Option<Level> {
        let b = self.index_bits();
        if order == 0 {
            Some(Level::Pte)
        } else if order == b {
            Some(Level::Pmd)
        } else if order == 2 * b {
            Some(Level::Pud)
        } else {
            None
        }
    }

    /// The alignment, as an order of 4 KiB frames, that a `level` leaf's first pfn needs: the
    /// model's pfns and `vm_pgoff` count 4 KiB frames whatever the granule (a deliberate
    /// difference: Linux counts them in `PAGE_SIZE` units), so a 32 MiB leaf of the 16 KiB
    /// granule needs a pfn aligned to 2^13.
    #[inline]
    pub const fn pfn_order(&self, level: Level) -> u32 {
        self.shift(level) - 12
    }

    /// Human-readable size of a `level` entry, as in `32 MiB`.
    pub fn size_name(self, level: Level) -> String {
        let s = self.shift(level);
        let (n, unit) = match s {
            0..10 => (1u64 << s, "B"),
            10..20 => (1 << (s - 10), "KiB"),
            20..30 => (1 << (s - 20), "MiB"),
            30..40 => (1 << (s - 30), "GiB"),
            _ => (1 << (s - 40), "TiB"),
        };
        format!("{n} {unit}")
    }
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry::G4K
    }
}

/// The largest leaf a mapping may use: the RFC's huge `remap_pfn_range` (`Pud`), PMD only, or
/// the pre-RFC behaviour of 4 KiB entries everywhere (`Pte`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeafCap {
    /// 4 KiB only.
    Pte,
    /// Up to 2 MiB.
    Pmd,
    /// Up to 1 GiB.
    #[default]
    Pud,
}

impl LeafCap {
    /// The largest level allowed.
    #[inline]
    pub const fn max_level(self) -> Level {
        match self {
            LeafCap::Pte => Level::Pte,
            LeafCap::Pmd => Level::Pmd,
            LeafCap::Pud => Level::Pud,
        }
    }

    /// Every cap, smallest first.
    pub const ALL: [LeafCap; 3] = [LeafCap::Pte, LeafCap::Pmd, LeafCap::Pud];

    /// Lower-case name.
    #[inline]
    pub const fn name(self) -> &'static str {
        self.max_level().name()
    }
}

impl std::str::FromStr for LeafCap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pte" | "4k" | "4K" => Ok(LeafCap::Pte),
            "pmd" | "2m" | "2M" => Ok(LeafCap::Pmd),
            "pud" | "1g" | "1G" => Ok(LeafCap::Pud),
            _ => Err(format!("unknown leaf cap `{s}` (expected pte, pmd or pud)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::UserAddr;

    #[test]
    fn sizes_orders_indices() {
        assert_eq!(Level::Pmd.size(), 2 << 20);
        assert_eq!(Level::Pud.size(), 1 << 30);
        assert_eq!(Level::Pmd.order(), 9);
        assert_eq!(Level::Pud.order(), 18);
        assert_eq!(Level::from_order(18), Some(Level::Pud));
        assert_eq!(Level::from_order(1), None);
        assert_eq!(Level::Pud.index(0x4000_0000), 1);
        assert_eq!(Level::P4d.index(0x7f00_0000_0000), 254);
        assert_eq!(
            Level::top(PagingMode::Level4).table_name(PagingMode::Level4),
            "pgd"
        );
        assert_eq!(Level::P4d.table_name(PagingMode::Level5), "p4d");
        assert!(!Level::P4d.can_be_leaf());
        assert_eq!("pmd".parse::<LeafCap>(), Ok(LeafCap::Pmd));
        assert!("huge".parse::<LeafCap>().is_err());
    }

    #[test]
    fn every_granule_indexes_page_shift_minus_three_bits() {
        for level in Level::ALL {
            assert_eq!(Geometry::G4K.shift(level), level.shift());
            assert_eq!(Geometry::G4K.order(level), level.order());
            assert_eq!(
                Geometry::G4K.index(level, 0x7f12_3456_7000),
                level.index(0x7f12_3456_7000)
            );
        }
        let g = Geometry::G16K;
        assert_eq!((g.page_size(), g.entries()), (16 << 10, 2048));
        assert_eq!(g.size(Level::Pmd), 32 << 20, "arm64 16K: PMD_SIZE");
        assert_eq!(g.size(Level::Pud), 64 << 30);
        assert_eq!(g.order(Level::Pmd), 11);
        assert_eq!(
            g.index(Level::Pte, 0x0123_4567_c000),
            (0x0123_4567_c000 >> 14) & 2047
        );
        assert_eq!(
            g.index(Level::P4d, 0xffff_ffff_ffff),
            1,
            "48-bit VA: a 2-entry PGD, index 1 at the top"
        );
        let g = Geometry::G64K;
        assert_eq!((g.page_size(), g.entries()), (64 << 10, 8192));
        assert_eq!(g.size(Level::Pmd), 512 << 20);
        assert_eq!(g.size(Level::Pud), 4 << 40);
        assert_eq!(g.size_name(Level::Pmd), "512 MiB");
        assert_eq!(
            g.size(Level::Pgd),
            1 << 63,
            "no overflow past the 64-bit address"
        );
        assert_eq!(Geometry::G16K.size_name(Level::Pte), "16 KiB");
    }

    #[test]
    fn orders_name_levels_and_pfn_alignment_counts_4k_frames() {
        for g in [Geometry::G4K, Geometry::G16K, Geometry::G64K] {
            for l in Level::LEAF_LEVELS {
                assert_eq!(g.level_of_order(g.order(l)), Some(l));
                assert_eq!(4096u64 << g.pfn_order(l), g.size(l));
            }
            assert_eq!(g.level_of_order(1), None);
            assert_eq!(g.level_of_order(3 * g.index_bits()), None);
        }
        let g = Geometry::G16K;
        assert_eq!(g.level_of_order(11), Some(Level::Pmd));
        assert_eq!(Geometry::G4K.level_of_order(11), None);
        assert_eq!(g.pfn_order(Level::Pmd), 13);
        assert_eq!(
            g.align_down(Level::Pmd, UserAddr::new(0x0300_0000 + 0x4000)),
            UserAddr::new(0x0200_0000)
        );
    }
}
