//! The arm64 stage-1 descriptor format as Linux writes user mappings, in the 4, 16 and 64 KiB
//! granules (`arch/arm64/include/asm/pgtable-hwdef.h`, `pgtable-prot.h`, `pgtable.h`, Linux 6.12
//! and 7.3; `CONFIG_ARM64_{4K,16K,64K}_PAGES`, `CONFIG_ARM64_VA_BITS_*`).
//!
//! - bits 1:0: `11` a table (levels 0–2) or a page (level 3), `01` a block (`PMD_TYPE_SECT`: a
//!   PMD or PUD leaf); bit 0 is `PTE_VALID`.
//! - Granules: a table is one page of 8-byte descriptors, so a level indexes 9, 11 or 13 bits
//!   and a PMD block maps 2 MiB, 32 MiB or 512 MiB. Blocks sit at level 2 (PMD) in every granule
//!   and at level 1 (PUD, 1 GiB) in the 4 KiB granule only: with 48-bit output addresses the
//!   Arm ARM has no level-1 block for 16 KiB (it needs FEAT_LPA2) or 64 KiB (FEAT_LPA), and
//!   Linux maps PUD-sized huge pages in the 4 KiB granule only (`arch_hugetlb_valid_size`,
//!   `arch/arm64/mm/hugetlbpage.c`). The levels a VA width needs: `ceil((va_bits - page_shift) /
//!   (page_shift - 3))` (`ARM64_HW_PGTABLE_LEVELS`): 4 for 4K/48, 4 for 16K/48 (a PGD of 2
//!   entries), 3 for 16K/47, 3 for 64K/48 and 64K/52.
//! - `PTE_ATTRINDX` bits 4:2, an index into MAIR as Linux programs it: `MT_NORMAL` 0,
//!   `MT_NORMAL_TAGGED` 1, `MT_NORMAL_NC` 2 (`pgprot_writecombine`), `MT_DEVICE_nGnRnE` 3
//!   (`pgprot_noncached`: what vfio-pci maps a BAR with), `MT_DEVICE_nGnRE` 4 (`pgprot_device`).
//! - `PTE_USER` 6 (AP[1]), `PTE_RDONLY` 7 (AP[2]), `PTE_SHARED` 9:8, `PTE_AF` 10, `PTE_NG` 11,
//!   `PTE_WRITE` = `PTE_DBM` 51, `PTE_CONT` 52, `PTE_PXN` 53, `PTE_UXN` 54, and the software
//!   bits `PTE_DIRTY` 55 and `PTE_SPECIAL` 56.
//! - Writable and dirty are Linux's encoding: a writable clean entry has `PTE_WRITE` and
//!   `PTE_RDONLY`; `pte_mkdirty` sets `PTE_DIRTY` and clears `PTE_RDONLY` (`pte_hw_dirty`).
//! - PROT_NONE is `PTE_PRESENT_INVALID` (= `PTE_NG`) with `PTE_VALID` clear; `pmd_mkhuge` keeps
//!   the valid bit, so a PROT_NONE block has bits 1:0 = `00`.
//! - A table pointer is `PMD_TYPE_TABLE | PMD_TABLE_AF | PMD_TABLE_PXN` (`__pmd_populate` for a
//!   user table).
//!
//! Output addresses are bits 47:`PAGE_SHIFT` (`CONFIG_ARM64_PA_BITS_48`). Memory types the
//! model's x86 names cannot all be told apart: UC- (the model's `pgprot_noncached`) is
//! Device-nGnRnE, UC is Device-nGnRE, WT and WP do not exist and fail to encode.
//!
//! Deliberate difference: 52-bit output addresses (LPA, LPA2) are not modelled, so neither are
//! level-1 blocks in the 16 and 64 KiB granules.

use crate::addr::{PhysAddr, UserAddr};
use crate::entry::{CacheMode, Leaf, Pgprot, ProtFlags};
use crate::format::{
    EncodeError, Entry, Format, Locking, check_placement, flags_where, release_cpu_leaf, set_bits,
};
use crate::level::{Geometry, Level};
use crate::phys::PhysMem;

/// Descriptor bits.
pub mod bits {
    /// `PTE_VALID`.
    pub const VALID: u64 = 1 << 0;
    /// Bit 1: table (levels 0–2) or page (level 3); clear in a block.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    /// `PTE_ATTRINDX` shift.
    pub const ATTRINDX_SHIFT: u32 = 2;
    /// `PTE_ATTRINDX_MASK`.
    pub const ATTRINDX_MASK: u64 = 7 << ATTRINDX_SHIFT;
    /// `PTE_USER` (AP[1]).
    pub const USER: u64 = 1 << 6;
    /// `PTE_RDONLY` (AP[2]).
    pub const RDONLY: u64 = 1 << 7;
    /// `PTE_SHARED` (inner shareable).
    pub const SHARED: u64 = 3 << 8;
    /// `PTE_AF`.
    pub const AF: u64 = 1 << 10;
    /// `PTE_NG`; `PTE_PRESENT_INVALID` when `PTE_VALID` is clear.
    pub const NG: u64 = 1 << 11;
    /// `PTE_DBM`, used by Linux as `PTE_WRITE`.
    pub const WRITE: u64 = 1 << 51;
    /// `PTE_CONT`.
    pub const CONT: u64 = 1 << 52;
    /// `PTE_PXN`.
    pub const PXN: u64 = 1 << 53;
    /// `PTE_UXN`.
    pub const UXN: u64 = 1 << 54;
    /// `PTE_DIRTY` (software).
    pub const DIRTY: u64 = 1 << 55;
    /// `PTE_SPECIAL` (software).
    pub const SPECIAL: u64 = 1 << 56;
    /// `PMD_TABLE_PXN` in a table descriptor (user tables).
    pub const TABLE_PXN: u64 = 1 << 59;
    /// Output address in the 4 KiB granule, bits 47:12 ([`super::Arm64::addr_mask`] for every
    /// granule).
    pub const ADDR_MASK: u64 = ((1u64 << 48) - 1) & !0xfff;
}

/// MAIR indices Linux programs (`arch/arm64/include/asm/memory.h`).
pub mod mair {
    /// `MT_NORMAL`.
    pub const NORMAL: u64 = 0;
    /// `MT_NORMAL_TAGGED`.
    pub const NORMAL_TAGGED: u64 = 1;
    /// `MT_NORMAL_NC`.
    pub const NORMAL_NC: u64 = 2;
    /// `MT_DEVICE_nGnRnE`.
    pub const DEVICE_NGNRNE: u64 = 3;
    /// `MT_DEVICE_nGnRE`.
    pub const DEVICE_NGNRE: u64 = 4;
}

/// arm64 stage 1: a granule and a VA width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64 {
    // bytes, not a `Geometry`: `Cpu` stays small, and its dispatch cheap on the walkers' path
    page_shift: u8,
    va_bits: u8,
    top: Level,
}

/// A granule and VA width Linux/arm64 does not build, or the model does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "arm64 has no {va_bits}-bit VA with {page_kib} KiB pages (Linux: 39 or 48 bits with 4K; 36, 47 or 48 with 16K; 42, 48 or 52 with 64K)"
)]
pub struct BadArm64Config {
    /// The granule's page size in KiB.
    pub page_kib: u64,
    /// The VA width asked for.
    pub va_bits: u32,
}

impl Arm64 {
    /// 4 KiB granule, 48-bit VA: Debian's `arm64` kernels.
    pub const G4K_VA48: Arm64 = Arm64 {
        page_shift: 12,
        va_bits: 48,
        top: Level::P4d,
    };

    /// The format of a kernel built with `granule` pages and `va_bits` of user VA (the
    /// `CONFIG_ARM64_VA_BITS_*` choices each granule offers; 52-bit with 4 KiB pages needs LPA2
    /// and five levels, which the model does not have).
    pub fn new(granule: Geometry, va_bits: u32) -> Result<Arm64, BadArm64Config> {
        let bad = BadArm64Config {
            page_kib: granule.page_size() >> 10,
            va_bits,
        };
        let allowed: &[u32] = match granule.page_shift() {
            12 => &[39, 48],
            14 => &[36, 47, 48],
            16 => &[42, 48, 52],
            _ => &[],
        };
        if !allowed.contains(&va_bits) {
            return Err(bad);
        }
        let levels = (va_bits - granule.page_shift()).div_ceil(granule.index_bits());
        let top = Level::ALL.get(levels as usize - 1).copied().ok_or(bad)?;
        Ok(Arm64 {
            page_shift: granule.page_shift() as u8,
            va_bits: va_bits as u8,
            top,
        })
    }

    /// The granule.
    #[inline]
    pub fn granule(&self) -> Geometry {
        granule_of(self.page_shift)
    }

    /// The user VA width.
    pub fn va_bits(&self) -> u32 {
        u32::from(self.va_bits)
    }

    /// Output-address bits of a descriptor: 47:`PAGE_SHIFT`.
    #[inline]
    pub fn addr_mask(&self) -> u64 {
        addr_mask_of(self.page_shift)
    }

    /// The MAIR index for a memory type.
    pub fn attr_index(cache: CacheMode) -> Result<u64, EncodeError> {
        Ok(match cache {
            CacheMode::Wb => mair::NORMAL,
            CacheMode::Wc => mair::NORMAL_NC,
            CacheMode::UcMinus => mair::DEVICE_NGNRNE,
            CacheMode::Uc => mair::DEVICE_NGNRE,
            CacheMode::Wt | CacheMode::Wp => {
                return Err(EncodeError::Unrepresentable(
                    "arm64 Linux has no write-through or write-protect memory type",
                ));
            }
        })
    }

    /// The memory type of a MAIR index (reserved indices read as device memory).
    pub fn cache_of(index: u64) -> CacheMode {
        match index {
            mair::NORMAL | mair::NORMAL_TAGGED => CacheMode::Wb,
            mair::NORMAL_NC => CacheMode::Wc,
            mair::DEVICE_NGNRE => CacheMode::Uc,
            _ => CacheMode::UcMinus,
        }
    }
}

impl Format for Arm64 {
    type Leaf = Leaf;
    type Addr = UserAddr;
    const LOCKING: Locking = Locking::Split;

    fn name(&self) -> &'static str {
        match (self.page_shift, self.va_bits) {
            (12, 39) => "arm64 4K granule, 39-bit VA",
            (12, _) => "arm64 4K granule, 48-bit VA",
            (14, 36) => "arm64 16K granule, 36-bit VA",
            (14, 47) => "arm64 16K granule, 47-bit VA",
            (14, _) => "arm64 16K granule, 48-bit VA",
            (_, 42) => "arm64 64K granule, 42-bit VA",
            (_, 48) => "arm64 64K granule, 48-bit VA",
            _ => "arm64 64K granule, 52-bit VA",
        }
    }

    fn top(&self) -> Level {
        self.top
    }

    #[inline]
    fn geometry(&self) -> Geometry {
        self.granule()
    }

    /// Pages at level 3, blocks at level 2; level-1 blocks in the 4 KiB granule only.
    #[inline]
    fn can_be_leaf(&self, level: Level) -> bool {
        block_level(self.page_shift, level)
    }

    #[inline(never)]
    fn decode(&self, raw: u64, level: Level) -> Entry<Leaf> {
        if raw == 0 {
            return Entry::None;
        }
        let valid = raw & bits::VALID != 0;
        let protnone = !valid && raw & bits::NG != 0;
        if !valid && !protnone {
            return Entry::NonPresent(raw);
        }
        let addr = raw & self.addr_mask();
        // pmd_table(): type bits 11, with the valid bit forced for a present-invalid entry
        let table = (raw | bits::VALID) & 3 == 3;
        if level != Level::Pte && table {
            if !valid {
                return Entry::NonPresent(raw);
            }
            return Entry::Table(PhysAddr::new(addr).unwrap_or_default());
        }
        if !self.can_be_leaf(level) || (level == Level::Pte && !table) {
            return Entry::NonPresent(raw);
        }
        let on = |b: u64| raw & b != 0;
        let flags = flags_where([
            (ProtFlags::PRESENT, valid),
            (ProtFlags::PROTNONE, protnone),
            (ProtFlags::WRITE, on(bits::WRITE)),
            (ProtFlags::USER, on(bits::USER)),
            (ProtFlags::ACCESSED, on(bits::AF)),
            (
                ProtFlags::DIRTY,
                on(bits::DIRTY) || (on(bits::WRITE) && !on(bits::RDONLY)),
            ),
            (ProtFlags::SPECIAL, on(bits::SPECIAL)),
            (ProtFlags::NX, on(bits::UXN)),
            (ProtFlags::GLOBAL, valid && !on(bits::NG)),
            (ProtFlags::CONT, on(bits::CONT)),
        ]);
        let base = addr & !(self.granule().size(level) - 1);
        Entry::Leaf(Leaf {
            pfn: PhysAddr::new(base).unwrap_or_default().pfn(),
            prot: Pgprot {
                flags,
                cache: Arm64::cache_of((raw & bits::ATTRINDX_MASK) >> bits::ATTRINDX_SHIFT),
            },
            level,
        })
    }

    fn encode_leaf(&self, leaf: &Leaf, level: Level) -> Result<u64, EncodeError> {
        check_placement(self, leaf.pfn, level)?;
        let pa = leaf.pfn.phys().as_u64();
        if pa & !self.addr_mask() != 0 {
            return Err(EncodeError::PfnTooWide(leaf.pfn.as_u64()));
        }
        let fl = leaf.prot.flags;
        let present = fl.contains(ProtFlags::PRESENT);
        let protnone = !present && fl.contains(ProtFlags::PROTNONE);
        let mut raw =
            pa | bits::SHARED | (Arm64::attr_index(leaf.prot.cache)? << bits::ATTRINDX_SHIFT);
        let write = fl.contains(ProtFlags::WRITE);
        let dirty = fl.contains(ProtFlags::DIRTY);
        raw = set_bits(
            raw,
            [
                (present, bits::VALID),
                (level == Level::Pte, bits::TABLE_OR_PAGE),
                (
                    protnone || (present && !fl.contains(ProtFlags::GLOBAL)),
                    bits::NG,
                ),
                (fl.contains(ProtFlags::USER), bits::USER),
                (write, bits::WRITE),
                (!(write && dirty), bits::RDONLY),
                (dirty, bits::DIRTY),
                (fl.contains(ProtFlags::ACCESSED), bits::AF),
                (fl.contains(ProtFlags::SPECIAL), bits::SPECIAL),
                (fl.contains(ProtFlags::NX), bits::UXN),
                (fl.contains(ProtFlags::CONT), bits::CONT),
                (true, bits::PXN),
            ],
        );
        Ok(raw)
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        (table.as_u64() & self.addr_mask())
            | bits::VALID
            | bits::TABLE_OR_PAGE
            | bits::AF
            | bits::TABLE_PXN
    }

    fn account_level(&self, level: Level) -> Level {
        if level == self.top() {
            Level::Pgd
        } else {
            level
        }
    }

    fn release_leaf(&self, phys: &PhysMem, raw: u64, level: Level) {
        release_cpu_leaf(self, phys, raw, level);
    }
}

/// The granule of a page shift of 12, 14 or 16 (stage 1 and stage 2 keep the shift, not the
/// `Geometry`, so that their enums stay small).
#[inline]
pub(crate) const fn granule_of(page_shift: u8) -> Geometry {
    match page_shift {
        14 => Geometry::G16K,
        16 => Geometry::G64K,
        _ => Geometry::G4K,
    }
}

/// Whether a descriptor at `level` may map (a page or a block) with `page_shift`-bit pages, in
/// stage 1 and stage 2 alike: pages at level 3, blocks at level 2, level-1 blocks with 4 KiB
/// pages only (48-bit output addresses: no LPA/LPA2; `KVM_PGTABLE_MIN_BLOCK_LEVEL`).
#[inline]
pub(crate) const fn block_level(page_shift: u8, level: Level) -> bool {
    match level {
        Level::Pte | Level::Pmd => true,
        Level::Pud => page_shift == 12,
        Level::P4d | Level::Pgd => false,
    }
}

/// Output-address bits of a descriptor with 48-bit output addresses: 47:`page_shift`.
#[inline]
pub(crate) const fn addr_mask_of(page_shift: u8) -> u64 {
    ((1u64 << 48) - 1) & !((1u64 << page_shift) - 1)
}

#[cfg(test)]
mod tests;
