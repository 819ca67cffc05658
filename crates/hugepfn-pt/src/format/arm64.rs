//! The arm64 stage-1 descriptor format as Linux writes user mappings, 4 KiB granule
//! (`arch/arm64/include/asm/pgtable-hwdef.h`, `pgtable-prot.h`, `pgtable.h`, Linux 6.12 and 7.3).
//!
//! - bits 1:0: `11` a table (levels 0–2) or a page (level 3), `01` a block (`PMD_TYPE_SECT`: a
//!   2 MiB PMD or 1 GiB PUD leaf); bit 0 is `PTE_VALID`.
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
//! Output addresses are bits 47:12 (`CONFIG_ARM64_PA_BITS_48`). Memory types the model's x86
//! names cannot all be told apart: UC- (the model's `pgprot_noncached`) is Device-nGnRnE, UC is
//! Device-nGnRE, WT and WP do not exist and fail to encode.
//!
//! Deliberate difference: 16 KiB and 64 KiB granules are not modelled yet (their levels index
//! 11 and 13 bits and their tables are 16 and 64 KiB).

use crate::addr::PhysAddr;
use crate::entry::{CacheMode, Leaf, Pgprot, ProtFlags};
use crate::format::{EncodeError, Entry, Format, Locking, check_placement, flags_where, set_bits};
use crate::level::Level;

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
    /// Output address, bits 47:12.
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

/// arm64 stage 1 with the 4 KiB granule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64 {
    /// 48-bit VA (four levels, `false`) or 39-bit (three, `true`).
    pub va39: bool,
}

impl Arm64 {
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
    const LOCKING: Locking = Locking::Split;

    fn name(&self) -> &'static str {
        if self.va39 {
            "arm64 4K granule, 39-bit VA"
        } else {
            "arm64 4K granule, 48-bit VA"
        }
    }

    fn top(&self) -> Level {
        if self.va39 { Level::Pud } else { Level::P4d }
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
        let addr = raw & bits::ADDR_MASK;
        // pmd_table(): type bits 11, with the valid bit forced for a present-invalid entry
        let table = (raw | bits::VALID) & 3 == 3;
        if level != Level::Pte && table {
            if !valid {
                return Entry::NonPresent(raw);
            }
            return Entry::Table(PhysAddr::new(addr).unwrap_or_default());
        }
        if !level.can_be_leaf() || (level == Level::Pte && !table) {
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
        let base = addr & !(level.size() - 1);
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
        check_placement(leaf.pfn, level)?;
        let pa = leaf.pfn.phys().as_u64();
        if pa & !bits::ADDR_MASK != 0 {
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
        (table.as_u64() & bits::ADDR_MASK)
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
}

#[cfg(test)]
mod tests;
