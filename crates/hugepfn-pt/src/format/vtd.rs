//! The Intel VT-d second-level entry format (VT-d spec 9.8; `drivers/iommu/intel/iommu.h`
//! `dma_pte_*`): `DMA_PTE_READ` bit 0, `DMA_PTE_WRITE` bit 1, `DMA_PTE_LARGE_PAGE` bit 7 (PS),
//! `DMA_PTE_SNP` bit 11, the address in bits 12..51. An entry is present when R or W is set
//! (`dma_pte_present`); a non-leaf entry is the next table's address with R and W.

use crate::addr::{IoVirtAddr, Pfn, PhysAddr};
use crate::format::{EncodeError, Entry, Format, LeafOps, Locking, check_placement, set_bits};
use crate::level::Level;

/// Second-level page-table entry bits (`DMA_PTE_*`).
pub mod bits {
    /// Read permission.
    pub const READ: u64 = 1 << 0;
    /// Write permission.
    pub const WRITE: u64 = 1 << 1;
    /// Execute permission (unused by vfio).
    pub const EXEC: u64 = 1 << 2;
    /// Page size: this PDE/PDPE is a 2 MiB / 1 GiB superpage (`DMA_PTE_LARGE_PAGE`).
    pub const LARGE_PAGE: u64 = 1 << 7;
    /// Snoop behaviour (`DMA_PTE_SNP`).
    pub const SNP: u64 = 1 << 11;
    /// Address bits 12..51.
    pub const ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;
}

/// What a mapping allows the device to do (`IOMMU_READ`, `IOMMU_WRITE`, `IOMMU_CACHE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IommuProt {
    /// `IOMMU_READ`: the device may read.
    pub read: bool,
    /// `IOMMU_WRITE`: the device may write.
    pub write: bool,
    /// `IOMMU_CACHE`: snooped (sets `DMA_PTE_SNP` when the domain forces snooping).
    pub cache: bool,
}

impl IommuProt {
    /// Read and write, as vfio maps a `VFIO_DMA_MAP_FLAG_READ | WRITE` request.
    pub const RW: IommuProt = IommuProt {
        read: true,
        write: true,
        cache: false,
    };
}

/// A decoded second-level leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VtdLeaf {
    /// First frame.
    pub pfn: Pfn,
    /// Permissions; `cache` is the SNP bit as found.
    pub prot: IommuProt,
}

impl LeafOps for VtdLeaf {
    fn first_pfn(&self) -> Pfn {
        self.pfn
    }

    fn at(&self, pfn: Pfn, _level: Level) -> VtdLeaf {
        VtdLeaf { pfn, ..*self }
    }
}

/// The VT-d second-level format of one domain: its depth (from SAGAW) and whether it forces
/// snooping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtd {
    /// The level of the root table's entries (`P4d` for 4-level tables).
    pub top: Level,
    /// `dmar_domain->force_snooping`: `IOMMU_CACHE` sets `DMA_PTE_SNP`.
    pub force_snooping: bool,
}

impl Format for Vtd {
    type Leaf = VtdLeaf;
    type Addr = IoVirtAddr;
    const LOCKING: Locking = Locking::Single;

    fn name(&self) -> &'static str {
        "VT-d second level"
    }

    fn top(&self) -> Level {
        self.top
    }

    #[inline]
    fn decode(&self, raw: u64, level: Level) -> Entry<VtdLeaf> {
        if raw == 0 {
            return Entry::None;
        }
        if raw & (bits::READ | bits::WRITE) == 0 {
            return Entry::NonPresent(raw);
        }
        let pa = PhysAddr::new(raw & bits::ADDR_MASK).unwrap_or_default();
        if level == Level::Pte || raw & bits::LARGE_PAGE != 0 {
            let base = PhysAddr::new(pa.as_u64() & !(level.size() - 1)).unwrap_or_default();
            return Entry::Leaf(VtdLeaf {
                pfn: base.pfn(),
                prot: IommuProt {
                    read: raw & bits::READ != 0,
                    write: raw & bits::WRITE != 0,
                    cache: raw & bits::SNP != 0,
                },
            });
        }
        Entry::Table(pa)
    }

    /// `pteval = (phys_pfn << VTD_PAGE_SHIFT) | attr`, plus `DMA_PTE_LARGE_PAGE` above 4 KiB.
    fn encode_leaf(&self, leaf: &VtdLeaf, level: Level) -> Result<u64, EncodeError> {
        check_placement(self, leaf.pfn, level)?;
        let mut raw = leaf.pfn.phys().as_u64() & bits::ADDR_MASK;
        let p = leaf.prot;
        raw = set_bits(
            raw,
            [
                (p.read, bits::READ),
                (p.write, bits::WRITE),
                (p.cache && self.force_snooping, bits::SNP),
                (level != Level::Pte, bits::LARGE_PAGE),
            ],
        );
        Ok(raw)
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        (table.as_u64() & bits::ADDR_MASK) | bits::READ | bits::WRITE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_and_tables_round_trip_at_every_leaf_level() {
        let f = Vtd {
            top: Level::P4d,
            force_snooping: true,
        };
        let prot = IommuProt {
            read: true,
            write: false,
            cache: true,
        };
        for level in Level::LEAF_LEVELS {
            let pfn = Pfn::new(0x1000_0000_0000 >> 12).unwrap();
            let raw = f.encode_leaf(&VtdLeaf { pfn, prot }, level).unwrap();
            assert_eq!(raw & bits::LARGE_PAGE != 0, level != Level::Pte);
            assert_eq!(raw & bits::SNP, bits::SNP);
            assert_eq!(f.decode(raw, level), Entry::Leaf(VtdLeaf { pfn, prot }));
        }
        let t = PhysAddr::new(0x1_2345_6000).unwrap();
        assert_eq!(
            f.decode(f.encode_table(t, Level::Pmd), Level::Pmd),
            Entry::Table(t)
        );
        assert_eq!(f.decode(0, Level::Pud), Entry::None);
        assert_eq!(
            f.decode(bits::SNP, Level::Pud),
            Entry::NonPresent(bits::SNP)
        );
        let odd = VtdLeaf {
            pfn: Pfn::new(1).unwrap(),
            prot,
        };
        assert!(matches!(
            f.encode_leaf(&odd, Level::Pmd),
            Err(EncodeError::Misaligned { .. })
        ));
        assert_eq!(
            f.encode_leaf(&odd, Level::P4d),
            Err(EncodeError::NotLeafLevel(Level::P4d))
        );
    }
}
