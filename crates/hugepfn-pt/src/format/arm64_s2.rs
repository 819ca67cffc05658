//! The arm64 stage-2 descriptor format as KVM writes it (`arch/arm64/kvm/hyp/pgtable.c`,
//! `arch/arm64/include/asm/kvm_pgtable.h`, `memory.h`; the Arm ARM's "VMSAv8-64 Stage 2
//! translation"): what a guest's intermediate physical addresses (IPAs) map to, the second stage
//! of the RFC's item 5 on an arm64 host.
//!
//! - bits 1:0 as in stage 1: `11` a table (levels 0–2) or a page (level 3), `01` a block.
//!   A table descriptor is the next table's address with `KVM_PTE_TYPE_TABLE | KVM_PTE_VALID`
//!   and no attributes (`kvm_init_table_pte`).
//! - `MemAttr[3:0]` bits 5:2 (`KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR`): without FEAT_S2FWB
//!   `MT_S2_NORMAL` 0xf, `MT_S2_NORMAL_NC` 0x5, `MT_S2_DEVICE_nGnRE` 0x1, combined with the
//!   guest's stage 1; with FEAT_S2FWB (`KVM_PGTABLE_S2_FWB`) `MT_S2_FWB_NORMAL` 6,
//!   `MT_S2_FWB_NORMAL_NC` 5, `MT_S2_FWB_DEVICE_nGnRE` 1, and stage 2 forces the type.
//! - `S2AP` bits 7:6: bit 6 read, bit 7 write. `SH` bits 9:8, inner shareable (3) as KVM sets
//!   it. `AF` bit 10. `XN` bit 54 (`KVM_PTE_LEAF_ATTR_HI_S2_XN`).
//! - Output address bits 47:`PAGE_SHIFT` (48-bit PA).
//!
//! Levels follow the IPA size as KVM computes them (`stage2_pgtable_levels(ipa)` =
//! `ARM64_HW_PGTABLE_LEVELS(ipa - 4)`): 4 levels from level 0 for a 48-bit IPA with 4 KiB pages.
//! Blocks sit at level 2 in every granule and at level 1 with 4 KiB pages
//! (`KVM_PGTABLE_MIN_BLOCK_LEVEL`).
//!
//! The leaf is the engine's second-stage leaf, [`EptLeaf`]: R/W/X, the memory type (Wb =
//! Normal, Wc = Normal-NC, Uc = Device-nGnRE) and `ipat` — "stage 2 decides the type" — which
//! is FEAT_S2FWB's meaning here.
//!
//! Deliberate differences: IPA sizes whose start level KVM builds from concatenated tables (2
//! to 16 pages, e.g. the default 40-bit IPA with 4 KiB pages) are refused: the engine's root is
//! one table. No dirty bit (KVM logs dirty pages by write protection, so a dirty leaf cannot be
//! encoded), no software bits, no LPA2.

use crate::addr::{GuestPhysAddr, Pfn, PhysAddr};
use crate::format::arm64::{addr_mask_of, block_level, granule_of};
use crate::format::ept::{EptLeaf, MemType};
use crate::format::{EncodeError, Entry, Format, Locking, check_placement, set_bits};
use crate::level::{Geometry, Level};

/// Stage-2 descriptor bits (`KVM_PTE_*`).
pub mod bits {
    /// `KVM_PTE_VALID` and `KVM_PTE_TYPE` (a table at levels 0–2 or a page at level 3, clear in a
    /// block) are stage 1's bits 0 and 1.
    pub use crate::format::arm64::bits::{TABLE_OR_PAGE, VALID};
    /// `KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR` shift.
    pub const MEMATTR_SHIFT: u32 = 2;
    /// `KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR`, bits 5:2.
    pub const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
    /// `KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R`.
    pub const S2AP_R: u64 = 1 << 6;
    /// `KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W`.
    pub const S2AP_W: u64 = 1 << 7;
    /// `KVM_PTE_LEAF_ATTR_LO_S2_SH` with `KVM_PTE_LEAF_ATTR_LO_S2_SH_IS`.
    pub const SH_IS: u64 = 3 << 8;
    /// `KVM_PTE_LEAF_ATTR_LO_S2_AF`.
    pub const AF: u64 = 1 << 10;
    /// `KVM_PTE_LEAF_ATTR_HI_S2_XN`.
    pub const XN: u64 = 1 << 54;
}

/// `MemAttr` values KVM writes (`arch/arm64/include/asm/memory.h`).
pub mod memattr {
    /// `MT_S2_NORMAL`.
    pub const NORMAL: u64 = 0xf;
    /// `MT_S2_NORMAL_NC`.
    pub const NORMAL_NC: u64 = 0x5;
    /// `MT_S2_DEVICE_nGnRE`.
    pub const DEVICE_NGNRE: u64 = 0x1;
    /// `MT_S2_FWB_NORMAL`.
    pub const FWB_NORMAL: u64 = 6;
    /// `MT_S2_FWB_NORMAL_NC`.
    pub const FWB_NORMAL_NC: u64 = 5;
    /// `MT_S2_FWB_DEVICE_nGnRE`.
    pub const FWB_DEVICE_NGNRE: u64 = 1;
}

/// An IPA size and granule KVM would build with concatenated start-level tables, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {ipa_bits}-bit IPA with {page_kib} KiB pages {why} (the model's stage 2 has one root table; with 4 KiB pages 35-39 and 44-48 bits have one)"
)]
pub struct BadStage2Config {
    /// The granule's page size in KiB.
    pub page_kib: u64,
    /// The IPA size asked for.
    pub ipa_bits: u32,
    /// What KVM would do instead.
    pub why: &'static str,
}

/// arm64 stage 2: a granule, an IPA size, and whether the CPU has FEAT_S2FWB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64S2 {
    page_shift: u8,
    ipa_bits: u8,
    top: Level,
    fwb: bool,
}

impl Arm64S2 {
    /// 4 KiB pages, 48-bit IPA (4 levels from level 0), with FEAT_S2FWB (Neoverse V2, as in
    /// Grace).
    pub const G4K_IPA48: Arm64S2 = Arm64S2 {
        page_shift: 12,
        ipa_bits: 48,
        top: Level::P4d,
        fwb: true,
    };

    /// The stage 2 KVM builds for `ipa_bits` with `granule` pages (`kvm_get_vtcr`), if its
    /// start level is one table.
    pub fn new(granule: Geometry, ipa_bits: u32, fwb: bool) -> Result<Arm64S2, BadStage2Config> {
        let bad = |why| BadStage2Config {
            page_kib: granule.page_size() >> 10,
            ipa_bits,
            why,
        };
        if !(32..=48).contains(&ipa_bits) {
            return Err(bad("is outside the 32-48 bits KVM accepts without LPA2"));
        }
        // stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4), at least 2
        // (kvm_get_vtcr: `if (lvls < 2) lvls = 2`)
        let levels = ((ipa_bits - 8) / granule.index_bits()).max(2);
        let top = Level::ALL
            .get(levels as usize - 1)
            .copied()
            .ok_or(bad("needs more levels than the model has"))?;
        if ipa_bits - granule.shift(top) > granule.index_bits() {
            return Err(bad(
                "starts from concatenated tables in KVM (VTCR_EL2.SL0 one level lower)",
            ));
        }
        Ok(Arm64S2 {
            page_shift: granule.page_shift() as u8,
            ipa_bits: ipa_bits as u8,
            top,
            fwb,
        })
    }

    /// The IPA size.
    pub fn ipa_bits(&self) -> u32 {
        u32::from(self.ipa_bits)
    }

    /// The granule.
    #[inline]
    pub fn granule(&self) -> Geometry {
        granule_of(self.page_shift)
    }

    /// Output-address bits: 47:`PAGE_SHIFT`.
    #[inline]
    pub fn addr_mask(&self) -> u64 {
        addr_mask_of(self.page_shift)
    }

    /// The `MemAttr` for a memory type (`stage2_set_prot_attr`).
    pub fn memattr(&self, t: MemType) -> Result<u64, EncodeError> {
        use memattr::*;
        Ok(match (t, self.fwb) {
            (MemType::Wb, false) => NORMAL,
            (MemType::Wc, false) => NORMAL_NC,
            (MemType::Uc, false) => DEVICE_NGNRE,
            (MemType::Wb, true) => FWB_NORMAL,
            (MemType::Wc, true) => FWB_NORMAL_NC,
            (MemType::Uc, true) => FWB_DEVICE_NGNRE,
            (MemType::Wt | MemType::Wp, _) => {
                return Err(EncodeError::Unrepresentable(
                    "KVM's arm64 stage 2 has no write-through or write-protect type",
                ));
            }
        })
    }

    /// The memory type of a `MemAttr` (other values read as device memory).
    pub fn mem_type(&self, attr: u64) -> MemType {
        use memattr::*;
        match (attr, self.fwb) {
            (NORMAL, false) | (FWB_NORMAL, true) => MemType::Wb,
            (NORMAL_NC, false) | (FWB_NORMAL_NC, true) => MemType::Wc,
            _ => MemType::Uc,
        }
    }
}

impl Format for Arm64S2 {
    type Leaf = EptLeaf;
    type Addr = GuestPhysAddr;
    // KVM/arm64 takes `mmu_lock` around stage-2 changes: one lock for the tree.
    const LOCKING: Locking = Locking::Single;

    fn name(&self) -> &'static str {
        match self.page_shift {
            12 => "arm64 stage 2, 4K granule",
            14 => "arm64 stage 2, 16K granule",
            _ => "arm64 stage 2, 64K granule",
        }
    }

    fn top(&self) -> Level {
        self.top
    }

    #[inline]
    fn geometry(&self) -> Geometry {
        self.granule()
    }

    /// Pages at level 3, blocks at level 2, and at level 1 with 4 KiB pages.
    #[inline]
    fn can_be_leaf(&self, level: Level) -> bool {
        block_level(self.page_shift, level)
    }

    fn decode(&self, raw: u64, level: Level) -> Entry<EptLeaf> {
        if raw == 0 {
            return Entry::None;
        }
        if raw & bits::VALID == 0 {
            return Entry::NonPresent(raw);
        }
        let addr = raw & self.addr_mask();
        let type_bit = raw & bits::TABLE_OR_PAGE != 0;
        if level != Level::Pte && type_bit {
            return Entry::Table(PhysAddr::from_masked(addr));
        }
        if !self.can_be_leaf(level) || (level == Level::Pte && !type_bit) {
            return Entry::NonPresent(raw);
        }
        let on = |b: u64| raw & b != 0;
        Entry::Leaf(EptLeaf {
            pfn: (addr & !(self.granule().size(level) - 1)) >> 12,
            level,
            read: on(bits::S2AP_R),
            write: on(bits::S2AP_W),
            exec: !on(bits::XN),
            mem_type: self.mem_type((raw & bits::MEMATTR_MASK) >> bits::MEMATTR_SHIFT),
            ipat: self.fwb,
            accessed: on(bits::AF),
            dirty: false,
        })
    }

    fn encode_leaf(&self, leaf: &EptLeaf, level: Level) -> Result<u64, EncodeError> {
        let pfn = Pfn::new(leaf.pfn).map_err(|_| EncodeError::PfnTooWide(leaf.pfn))?;
        check_placement(self, pfn, level)?;
        let pa = pfn.phys().as_u64();
        if pa & !self.addr_mask() != 0 {
            return Err(EncodeError::PfnTooWide(leaf.pfn));
        }
        if leaf.dirty {
            return Err(EncodeError::Unrepresentable(
                "KVM's arm64 stage 2 keeps no dirty bit (dirty logging write-protects)",
            ));
        }
        let raw = pa | bits::VALID | (self.memattr(leaf.mem_type)? << bits::MEMATTR_SHIFT);
        Ok(set_bits(
            raw,
            [
                (level == Level::Pte, bits::TABLE_OR_PAGE),
                (leaf.read, bits::S2AP_R),
                (leaf.write, bits::S2AP_W),
                (true, bits::SH_IS),
                (leaf.accessed, bits::AF),
                (!leaf.exec, bits::XN),
            ],
        ))
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        (table.as_u64() & self.addr_mask()) | bits::VALID | bits::TABLE_OR_PAGE
    }
}

#[cfg(test)]
mod tests;
