//! The RISC-V Sv39/Sv48/Sv57 entry format as Linux writes user mappings
//! (`arch/riscv/include/asm/pgtable-bits.h`, `pgtable-64.h`, `pgtable.h`, Linux 6.12 and 7.3).
//!
//! - `V` 0, `R` 1, `W` 2, `X` 3, `U` 4, `G` 5, `A` 6, `D` 7, `_PAGE_SPECIAL` 8 (RSW), the PPN in
//!   bits 53:10 (`_PAGE_PFN_MASK`), Svpbmt's memory type in bits 62:61 (`PMA` 0, `NC` 1 =
//!   `pgprot_writecombine`, `IO` 2 = `pgprot_noncached`), Svnapot's `N` 63.
//! - An entry with any of R, W, X is a leaf at any level (`pmd_leaf`: present and
//!   `_PAGE_LEAF`); a valid entry without them points at the next table (`_PAGE_TABLE` = `V`).
//! - PROT_NONE is `_PAGE_PROT_NONE` (= `_PAGE_GLOBAL`) with `V` clear, and `R` so that it is
//!   still a leaf (`PAGE_NONE = _PAGE_PROT_NONE | _PAGE_READ`).
//! - Svnapot (64 KiB runs of 16 PTEs): `N` set and PPN bits 3:0 = `1000`.
//!
//! Memory types: UC- (the model's `pgprot_noncached`) and UC are both `IO` and read back as
//! UC-; WT and WP do not exist and fail to encode. The model assumes Svpbmt.

use crate::addr::{PhysAddr, UserAddr};
use crate::entry::{CacheMode, Leaf, Pgprot, ProtFlags};
use crate::format::{
    EncodeError, Entry, Format, Locking, check_placement, flags_where, release_cpu_leaf, set_bits,
};
use crate::level::Level;
use crate::phys::PhysMem;

/// Entry bits.
pub mod bits {
    /// Valid.
    pub const V: u64 = 1 << 0;
    /// Readable.
    pub const R: u64 = 1 << 1;
    /// Writable.
    pub const W: u64 = 1 << 2;
    /// Executable.
    pub const X: u64 = 1 << 3;
    /// User.
    pub const U: u64 = 1 << 4;
    /// Global; `_PAGE_PROT_NONE` when `V` is clear.
    pub const G: u64 = 1 << 5;
    /// Accessed.
    pub const A: u64 = 1 << 6;
    /// Dirty.
    pub const D: u64 = 1 << 7;
    /// `_PAGE_SPECIAL` (RSW bit 8).
    pub const SPECIAL: u64 = 1 << 8;
    /// PPN shift.
    pub const PPN_SHIFT: u32 = 10;
    /// `_PAGE_PFN_MASK`: bits 53:10.
    pub const PPN_MASK: u64 = ((1u64 << 54) - 1) & !((1 << 10) - 1);
    /// Svpbmt shift.
    pub const PBMT_SHIFT: u32 = 61;
    /// Svpbmt mask.
    pub const PBMT_MASK: u64 = 3 << PBMT_SHIFT;
    /// Svpbmt `NC`.
    pub const PBMT_NC: u64 = 1;
    /// Svpbmt `IO`.
    pub const PBMT_IO: u64 = 2;
    /// Svnapot `N`.
    pub const N: u64 = 1 << 63;
}

/// RISC-V Sv39 (3 levels), Sv48 (4) or Sv57 (5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Riscv {
    /// 3, 4 or 5.
    pub levels: u32,
}

impl Format for Riscv {
    type Leaf = Leaf;
    type Addr = UserAddr;
    const LOCKING: Locking = Locking::Split;

    fn name(&self) -> &'static str {
        match self.levels {
            3 => "riscv64 Sv39",
            4 => "riscv64 Sv48",
            _ => "riscv64 Sv57",
        }
    }

    fn top(&self) -> Level {
        match self.levels {
            3 => Level::Pud,
            4 => Level::P4d,
            _ => Level::Pgd,
        }
    }

    #[inline(never)]
    fn decode(&self, raw: u64, level: Level) -> Entry<Leaf> {
        if raw == 0 {
            return Entry::None;
        }
        let valid = raw & bits::V != 0;
        let rwx = raw & (bits::R | bits::W | bits::X) != 0;
        let protnone = !valid && raw & bits::G != 0 && rwx;
        let mut pa = ((raw & bits::PPN_MASK) >> bits::PPN_SHIFT) << 12;
        if valid && !rwx {
            if level == Level::Pte {
                return Entry::NonPresent(raw);
            }
            return Entry::Table(PhysAddr::new(pa).unwrap_or_default());
        }
        if !(valid || protnone) || !level.can_be_leaf() {
            return Entry::NonPresent(raw);
        }
        let on = |b: u64| raw & b != 0;
        let flags = flags_where([
            (ProtFlags::PRESENT, valid),
            (ProtFlags::PROTNONE, protnone),
            (ProtFlags::WRITE, on(bits::W)),
            (ProtFlags::USER, on(bits::U)),
            (ProtFlags::ACCESSED, on(bits::A)),
            (ProtFlags::DIRTY, on(bits::D)),
            (ProtFlags::SPECIAL, on(bits::SPECIAL)),
            (ProtFlags::NX, valid && !on(bits::X)),
            (ProtFlags::GLOBAL, valid && on(bits::G)),
            (ProtFlags::CONT, on(bits::N)),
        ]);
        let cache = match (raw & bits::PBMT_MASK) >> bits::PBMT_SHIFT {
            0 => CacheMode::Wb,
            bits::PBMT_NC => CacheMode::Wc,
            _ => CacheMode::UcMinus,
        };
        if on(bits::N) {
            // every PTE of a Svnapot run holds the run's base with PPN[3:0] = 1000
            pa &= !(0xf << 12);
        }
        let base = pa & !(level.size() - 1);
        Entry::Leaf(Leaf {
            pfn: PhysAddr::new(base).unwrap_or_default().pfn(),
            prot: Pgprot { flags, cache },
            level,
        })
    }

    fn encode_leaf(&self, leaf: &Leaf, level: Level) -> Result<u64, EncodeError> {
        check_placement(self, leaf.pfn, level)?;
        let fl = leaf.prot.flags;
        let napot = fl.contains(ProtFlags::CONT);
        if napot && (level != Level::Pte || !leaf.pfn.is_aligned_order(4)) {
            return Err(EncodeError::Unrepresentable(
                "Svnapot runs are 16 PTEs of 4 KiB, 64 KiB aligned",
            ));
        }
        let pbmt = match leaf.prot.cache {
            CacheMode::Wb => 0,
            CacheMode::Wc => bits::PBMT_NC,
            CacheMode::UcMinus | CacheMode::Uc => bits::PBMT_IO,
            CacheMode::Wt | CacheMode::Wp => {
                return Err(EncodeError::Unrepresentable(
                    "RISC-V has no write-through or write-protect memory type",
                ));
            }
        };
        let present = fl.contains(ProtFlags::PRESENT);
        let protnone = !present && fl.contains(ProtFlags::PROTNONE);
        let mut ppn = leaf.pfn.as_u64();
        if napot {
            ppn |= 0b1000;
        }
        let mut raw = (ppn << bits::PPN_SHIFT) | (pbmt << bits::PBMT_SHIFT);
        raw = set_bits(
            raw,
            [
                (present, bits::V),
                (present || protnone, bits::R),
                (fl.contains(ProtFlags::WRITE), bits::W),
                (present && !fl.contains(ProtFlags::NX), bits::X),
                (fl.contains(ProtFlags::USER), bits::U),
                (
                    protnone || (present && fl.contains(ProtFlags::GLOBAL)),
                    bits::G,
                ),
                (fl.contains(ProtFlags::ACCESSED), bits::A),
                (fl.contains(ProtFlags::DIRTY), bits::D),
                (fl.contains(ProtFlags::SPECIAL), bits::SPECIAL),
                (napot, bits::N),
            ],
        );
        Ok(raw)
    }

    fn encode_table(&self, table: PhysAddr, _level: Level) -> u64 {
        ((table.as_u64() >> 12) << bits::PPN_SHIFT) | bits::V
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
