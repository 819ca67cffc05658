//! The Intel EPT entry format as KVM's TDP MMU writes it: the SDM's layout (vol. 3C, "EPT
//! Translation Mechanism") with KVM's choices (`arch/x86/kvm/mmu/spte.c` `make_spte`,
//! `arch/x86/include/asm/vmx.h`): R/W/X in bits 0..2, the EPT memory type in bits 3..5 and
//! ignore-PAT in bit 6 (leaves only), bit 7 = a 2 MiB or 1 GiB leaf, accessed/dirty in bits 8/9,
//! KVM's software `SPTE_MMU_PRESENT` bit 11, the address in bits 12..51. A non-leaf entry is the
//! next table's address with R, W, X (and bit 11). Four levels: a 48-bit guest-physical space.

use crate::addr::{GuestPhysAddr, Pfn, PhysAddr};
use crate::format::{EncodeError, Entry, Format, LeafOps, Locking, set_bits};
use crate::level::Level;

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
    if !l.level.can_be_leaf() || l.pfn & ((l.level.size() >> 12) - 1) != 0 || l.pfn >= Pfn::LIMIT {
        return None;
    }
    let mut raw = (l.pfn << 12) & bits::ADDR_MASK;
    raw = set_bits(
        raw,
        [
            (l.read, bits::READ),
            (l.write, bits::WRITE),
            (l.exec, bits::EXEC),
            (l.ipat, bits::IPAT),
            (l.level != Level::Pte, bits::LARGE),
            (l.accessed, bits::ACCESSED),
            (l.dirty, bits::DIRTY),
            (true, bits::MMU_PRESENT),
        ],
    );
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

/// True if an entry at `level` maps a page (always at 4 KiB; bit 7 above).
pub fn is_leaf(raw: u64, level: Level) -> bool {
    level == Level::Pte || raw & bits::LARGE != 0
}

/// KVM's present bit (`is_shadow_present_pte`).
pub fn present(raw: u64) -> bool {
    raw & bits::MMU_PRESENT != 0
}

/// A non-leaf entry: the table's address with R, W, X and KVM's present bit.
pub fn encode_table(pa: PhysAddr) -> u64 {
    (pa.as_u64() & bits::ADDR_MASK) | bits::READ | bits::WRITE | bits::EXEC | bits::MMU_PRESENT
}

impl LeafOps for EptLeaf {
    /// Leaves the engine decoded always fit (40 address bits); a leaf built by hand with a
    /// wider pfn reads as frame 0 here and is refused by [`Format::encode_leaf`].
    fn first_pfn(&self) -> Pfn {
        Pfn::new(self.pfn).unwrap_or_default()
    }

    fn at(&self, pfn: Pfn, level: Level) -> EptLeaf {
        EptLeaf {
            pfn: pfn.as_u64(),
            level,
            ..*self
        }
    }
}

/// The 4-level EPT format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ept4;

impl Format for Ept4 {
    type Leaf = EptLeaf;
    type Addr = GuestPhysAddr;
    const LOCKING: Locking = Locking::Single;

    fn name(&self) -> &'static str {
        "EPT 4-level"
    }

    fn top(&self) -> Level {
        Level::P4d
    }

    #[inline]
    fn decode(&self, raw: u64, level: Level) -> Entry<EptLeaf> {
        if raw == 0 {
            return Entry::None;
        }
        if !present(raw) {
            return Entry::NonPresent(raw);
        }
        match decode_leaf(raw, level) {
            Some(l) => Entry::Leaf(l),
            None => Entry::Table(PhysAddr::new(raw & bits::ADDR_MASK).unwrap_or_default()),
        }
    }

    fn encode_leaf(&self, leaf: &EptLeaf, level: Level) -> Result<u64, EncodeError> {
        let l = EptLeaf { level, ..*leaf };
        encode_leaf(&l).ok_or_else(|| match Pfn::new(l.pfn) {
            Err(_) => EncodeError::PfnTooWide(l.pfn),
            Ok(_) if !level.can_be_leaf() => EncodeError::NotLeafLevel(level),
            Ok(pfn) => EncodeError::Misaligned { pfn, level },
        })
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        encode_table(table)
    }
}
