//! x86-64 page-table entry formats, encoded and decoded per level.
//!
//! Models `arch/x86/include/asm/pgtable_types.h` and `pgtable.h`: the bit layout of a PTE and of
//! huge PMD/PUD leaves (`pmd_mkhuge`, `pfn_pmd`, `pmd_pfn`, `pmd_leaf`, `pud_leaf`), the software
//! special bit Linux uses for pfnmaps (`_PAGE_SPECIAL`, bit 9, the same bit in PMD/PUD leaves
//! since 75182022a043), `_PAGE_PROTNONE` (bit 8 on a non-present entry), and the cache mode
//! carried by the PAT/PCD/PWT bits through the PAT MSR as Linux programs it (`pat_init`:
//! WB, WC, UC-, UC, WB, WP, UC-, WT).
//!
//! The level matters: bit 7 is PS in a PMD or PUD entry but PAT in a PTE, and the PAT bit of a
//! huge leaf is bit 12, inside what is the address field of a PTE. Encoding takes the level and
//! decoding takes the level; there is no level-free flags type.

use std::fmt;

use bitflags::bitflags;
use serde::Serialize;

use crate::addr::{PHYS_ADDR_BITS, Pfn, PhysAddr};
use crate::level::Level;

pub use crate::format::{EncodeError, Entry};

/// Raw bit positions (`_PAGE_BIT_*`).
pub mod bits {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User accessible.
    pub const USER: u64 = 1 << 2;
    /// Page write-through (PAT index bit 0).
    pub const PWT: u64 = 1 << 3;
    /// Page cache disable (PAT index bit 1).
    pub const PCD: u64 = 1 << 4;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty (leaves only).
    pub const DIRTY: u64 = 1 << 6;
    /// Page size: this PMD/PUD entry is a leaf.
    pub const PSE: u64 = 1 << 7;
    /// PAT index bit 2 in a 4 KiB PTE.
    pub const PAT: u64 = 1 << 7;
    /// Global (present entries).
    pub const GLOBAL: u64 = 1 << 8;
    /// `_PAGE_PROTNONE`: a PROT_NONE leaf, on an entry with P clear (aliases GLOBAL).
    pub const PROTNONE: u64 = 1 << 8;
    /// `_PAGE_SPECIAL` (`_PAGE_BIT_SOFTW1`): no `struct page` behind this pfn.
    pub const SPECIAL: u64 = 1 << 9;
    /// PAT index bit 2 in a huge (PMD/PUD) leaf.
    pub const PAT_LARGE: u64 = 1 << 12;
    /// No execute.
    pub const NX: u64 = 1 << 63;
    /// Address bits of a PTE or of a table pointer (`PTE_PFN_MASK`).
    pub const PTE_ADDR_MASK: u64 = ((1 << super::PHYS_ADDR_BITS) - 1) & !0xfff;
}

/// Memory types reachable through Linux's PAT programming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum CacheMode {
    /// Write-back (normal RAM).
    #[default]
    Wb,
    /// Write-combining (`ioremap_wc`, `pgprot_writecombine`).
    Wc,
    /// Uncached, overridable by MTRR WC (`pgprot_noncached` on x86).
    UcMinus,
    /// Strongly uncached.
    Uc,
    /// Write-through.
    Wt,
    /// Write-protected.
    Wp,
}

/// Linux's PAT MSR programming (`pat_init`): the memory type behind each PAT index.
pub const LINUX_PAT: [CacheMode; 8] = [
    CacheMode::Wb,
    CacheMode::Wc,
    CacheMode::UcMinus,
    CacheMode::Uc,
    CacheMode::Wb,
    CacheMode::Wp,
    CacheMode::UcMinus,
    CacheMode::Wt,
];

impl CacheMode {
    /// The lowest PAT index holding this mode in [`LINUX_PAT`] (what `cachemode2protval` picks).
    pub fn pat_index(self) -> u8 {
        LINUX_PAT
            .iter()
            .position(|&m| m == self)
            .map_or(0, |i| i as u8)
    }

    /// The mode of a PAT index (0..8).
    pub fn from_pat_index(idx: u8) -> CacheMode {
        LINUX_PAT[usize::from(idx & 7)]
    }

    /// Short name as in `/sys/kernel/debug/x86/pat_memtype_list`.
    pub const fn name(self) -> &'static str {
        match self {
            CacheMode::Wb => "write-back",
            CacheMode::Wc => "write-combining",
            CacheMode::UcMinus => "uncached-minus",
            CacheMode::Uc => "uncached",
            CacheMode::Wt => "write-through",
            CacheMode::Wp => "write-protected",
        }
    }
}

bitflags! {
    /// Level-independent protection and state bits of a leaf (Linux's `pgprot_t` minus the
    /// cache-mode bits, which live in [`Pgprot::cache`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ProtFlags: u32 {
        /// `_PAGE_PRESENT`.
        const PRESENT = 1 << 0;
        /// `_PAGE_RW`.
        const WRITE = 1 << 1;
        /// `_PAGE_USER`.
        const USER = 1 << 2;
        /// `_PAGE_ACCESSED`.
        const ACCESSED = 1 << 3;
        /// `_PAGE_DIRTY`.
        const DIRTY = 1 << 4;
        /// `_PAGE_GLOBAL` (present entries only).
        const GLOBAL = 1 << 5;
        /// `_PAGE_SPECIAL`.
        const SPECIAL = 1 << 6;
        /// `_PAGE_NX`.
        const NX = 1 << 7;
        /// `_PAGE_PROTNONE` (non-present entries only).
        const PROTNONE = 1 << 8;
        /// One of a run of entries the TLB may cache as one: arm64's `PTE_CONT` (16 PTEs = 64 KiB,
        /// 16 PMDs = 32 MiB with the 4 KiB granule), riscv's Svnapot `N` (16 PTEs). x86-64 has no
        /// such bit: encoding it there fails. Linux never sets it on a pfnmap (`contpte_try_fold`
        /// skips special entries).
        const CONT = 1 << 9;
    }
}

/// Protection of a leaf: flags plus memory type. Linux's `pgprot_t`, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pgprot {
    /// Access and state bits.
    pub flags: ProtFlags,
    /// Memory type, through PAT.
    pub cache: CacheMode,
}

impl Pgprot {
    /// `PAGE_NONE`: not present, PROT_NONE.
    pub const NONE: Pgprot = Pgprot {
        flags: ProtFlags::PROTNONE.union(ProtFlags::ACCESSED),
        cache: CacheMode::Wb,
    };
    /// `PAGE_READONLY`.
    pub const READONLY: Pgprot = Pgprot {
        flags: ProtFlags::PRESENT
            .union(ProtFlags::USER)
            .union(ProtFlags::ACCESSED)
            .union(ProtFlags::NX),
        cache: CacheMode::Wb,
    };
    /// `PAGE_SHARED`: present, writable, user, no-exec.
    pub const SHARED: Pgprot = Pgprot {
        flags: Pgprot::READONLY.flags.union(ProtFlags::WRITE),
        cache: CacheMode::Wb,
    };

    /// Same flags, another memory type (`pgprot_noncached` = UC-, `pgprot_writecombine` = WC).
    pub const fn with_cache(self, cache: CacheMode) -> Pgprot {
        Pgprot {
            flags: self.flags,
            cache,
        }
    }

    /// `pte_present()`: present or PROT_NONE.
    pub const fn is_present(self) -> bool {
        self.flags.contains(ProtFlags::PRESENT) || self.flags.contains(ProtFlags::PROTNONE)
    }

    /// `pte_write()`.
    pub const fn is_writable(self) -> bool {
        self.flags.contains(ProtFlags::WRITE)
    }

    /// `pte_special()`.
    pub const fn is_special(self) -> bool {
        self.flags.contains(ProtFlags::SPECIAL)
    }

    /// Adds or removes flags.
    pub const fn with(self, add: ProtFlags, remove: ProtFlags) -> Pgprot {
        Pgprot {
            flags: self.flags.union(add).difference(remove),
            cache: self.cache,
        }
    }

    /// The flags that describe an access right rather than state (what two entries must share
    /// to be "the same mapping"): everything but ACCESSED and DIRTY.
    pub fn access_part(self) -> Pgprot {
        self.with(ProtFlags::empty(), ProtFlags::ACCESSED | ProtFlags::DIRTY)
    }
}

impl fmt::Display for Pgprot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fl = self.flags;
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "{}{}{}{}{}{} {}",
            c(fl.contains(ProtFlags::PRESENT), 'p'),
            c(fl.contains(ProtFlags::WRITE), 'w'),
            c(fl.contains(ProtFlags::USER), 'u'),
            c(!fl.contains(ProtFlags::NX), 'x'),
            c(fl.contains(ProtFlags::SPECIAL), 's'),
            c(fl.contains(ProtFlags::DIRTY), 'd'),
            self.cache.name()
        )
    }
}

/// A leaf, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// First frame of the leaf.
    pub pfn: Pfn,
    /// Protection and memory type.
    pub prot: Pgprot,
    /// PTE, PMD or PUD.
    pub level: Level,
}

/// What an entry is, given its level (the engine's [`Entry`] with x86-64 leaves).
pub type Decoded = Entry<Leaf>;

/// The flags that are one bit each at every level, and that bit.
const FLAG_BITS: [(ProtFlags, u64); 7] = [
    (ProtFlags::PRESENT, bits::PRESENT),
    (ProtFlags::WRITE, bits::RW),
    (ProtFlags::USER, bits::USER),
    (ProtFlags::ACCESSED, bits::ACCESSED),
    (ProtFlags::DIRTY, bits::DIRTY),
    (ProtFlags::SPECIAL, bits::SPECIAL),
    (ProtFlags::NX, bits::NX),
];

/// The [`FLAG_BITS`] of `raw` as flags, by shifts instead of a loop over the table (the
/// walkers decode a leaf on every lookup): P, RW, US stay at bits 0–2; A, D (5, 6) move to 3, 4;
/// SPECIAL (9) to 6; NX (63) to 7.
#[inline]
fn flags_of(raw: u64) -> ProtFlags {
    let f = (raw & 0b111) | ((raw >> 2) & 0b1_1000) | ((raw >> 3) & 0x40) | ((raw >> 56) & 0x80);
    ProtFlags::from_bits_retain(f as u32)
}

#[inline]
fn addr_mask(level: Level) -> u64 {
    ((1u64 << PHYS_ADDR_BITS) - 1) & !(level.size() - 1)
}

/// Encodes a leaf (`pfn_pte`, `pmd_mkhuge(pfn_pmd())`, `pud_mkhuge(pfn_pud())`).
#[inline]
pub fn encode_leaf(leaf: Leaf) -> Result<u64, EncodeError> {
    let level = leaf.level;
    let x86 = crate::format::X86_64 {
        mode: crate::addr::PagingMode::Level4,
    };
    crate::format::check_placement(&x86, leaf.pfn, level)?;
    if leaf.prot.flags.contains(ProtFlags::CONT) {
        return Err(EncodeError::Unrepresentable("x86-64 has no contiguous bit"));
    }
    let fl = leaf.prot.flags;
    let mut raw = leaf.pfn.phys().as_u64();
    for &(f, b) in &FLAG_BITS {
        if fl.contains(f) {
            raw |= b;
        }
    }
    if fl.contains(ProtFlags::PRESENT) {
        if fl.contains(ProtFlags::GLOBAL) {
            raw |= bits::GLOBAL;
        }
    } else if fl.contains(ProtFlags::PROTNONE) {
        raw |= bits::PROTNONE;
    }
    let idx = leaf.prot.cache.pat_index();
    if idx & 1 != 0 {
        raw |= bits::PWT;
    }
    if idx & 2 != 0 {
        raw |= bits::PCD;
    }
    if level == Level::Pte {
        if idx & 4 != 0 {
            raw |= bits::PAT;
        }
    } else {
        raw |= bits::PSE;
        if idx & 4 != 0 {
            raw |= bits::PAT_LARGE;
        }
    }
    Ok(raw)
}

/// Encodes a pointer to a next-level table (`_PAGE_TABLE`: P, RW, US, A, D).
#[inline]
pub fn encode_table(table: PhysAddr) -> u64 {
    (table.as_u64() & bits::PTE_ADDR_MASK)
        | bits::PRESENT
        | bits::RW
        | bits::USER
        | bits::ACCESSED
        | bits::DIRTY
}

/// The table an entry at `level` points to: present, above the PTE level, and not a leaf
/// (`pxd_present && !pxd_leaf`).
#[inline]
pub fn table_of(raw: u64, level: Level) -> Option<PhysAddr> {
    // Bits that make a present entry at each level not a table: a PTE never is one, a PMD or
    // PUD with PSE is a leaf, P4D and PGD entries are always tables.
    const NOT_TABLE: [u64; 5] = [u64::MAX, bits::PSE, bits::PSE, 0, 0];
    let table = raw & bits::PRESENT != 0 && raw & NOT_TABLE[level as usize] == 0;
    table.then_some(PhysAddr::from_masked(raw & bits::PTE_ADDR_MASK))
}

/// True if an entry at `level` is a leaf: present or PROT_NONE, and a PTE or a PSE entry.
#[inline]
pub fn is_leaf(raw: u64, level: Level) -> bool {
    let present = raw & bits::PRESENT != 0;
    (present || raw & bits::PROTNONE != 0)
        && match level {
            Level::Pte => true,
            Level::Pmd | Level::Pud => raw & bits::PSE != 0,
            Level::P4d | Level::Pgd => false,
        }
}

/// Decodes an entry found at `level`.
#[inline]
pub fn decode(raw: u64, level: Level) -> Decoded {
    if raw == 0 {
        return Decoded::None;
    }
    let present = raw & bits::PRESENT != 0;
    let protnone = !present && raw & bits::PROTNONE != 0;
    if !present && !protnone {
        return Decoded::NonPresent(raw);
    }
    let is_leaf = match level {
        Level::Pte => true,
        Level::Pmd | Level::Pud => raw & bits::PSE != 0,
        Level::P4d | Level::Pgd => false,
    };
    if !is_leaf {
        if !present {
            return Decoded::NonPresent(raw);
        }
        // The mask keeps the address within 52 bits, so this cannot fail.
        let pa = PhysAddr::new(raw & bits::PTE_ADDR_MASK).unwrap_or_default();
        return Decoded::Table(pa);
    }
    let pa = raw & addr_mask(level);
    let pfn = PhysAddr::new(pa).unwrap_or_default().pfn();
    let mut flags = flags_of(raw);
    if raw & bits::GLOBAL != 0 {
        flags |= if present {
            ProtFlags::GLOBAL
        } else {
            ProtFlags::PROTNONE
        };
    }
    let pat = if level == Level::Pte {
        raw & bits::PAT != 0
    } else {
        raw & bits::PAT_LARGE != 0
    };
    let idx = u8::from(raw & bits::PWT != 0)
        | (u8::from(raw & bits::PCD != 0) << 1)
        | (u8::from(pat) << 2);
    Decoded::Leaf(Leaf {
        pfn,
        prot: Pgprot {
            flags,
            cache: CacheMode::from_pat_index(idx),
        },
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shifted_flag_decode_agrees_with_the_flag_table() {
        // every combination of the table's bits, with stray bits around them
        for combo in 0u32..(1 << FLAG_BITS.len()) {
            let mut raw = 0x1234_5000 | bits::GLOBAL | bits::PCD;
            let mut want = ProtFlags::empty();
            for (i, &(f, b)) in FLAG_BITS.iter().enumerate() {
                if combo & (1 << i) != 0 {
                    raw |= b;
                    want |= f;
                }
            }
            assert_eq!(flags_of(raw), want, "{raw:#x}");
        }
    }

    #[test]
    fn the_fast_classifiers_agree_with_decode() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // keep the flag bits random and the address sometimes zero
            let raw = if i % 4 == 0 {
                x & 0x8000_0000_0000_0fff
            } else {
                x
            };
            for level in Level::ALL {
                let d = decode(raw, level);
                assert_eq!(
                    is_leaf(raw, level),
                    matches!(d, Decoded::Leaf(_)),
                    "{raw:#x} {level}"
                );
                let t = match d {
                    Decoded::Table(pa) => Some(pa),
                    _ => None,
                };
                assert_eq!(table_of(raw, level), t, "{raw:#x} {level}");
            }
        }
    }

    fn pfn(p: u64) -> Pfn {
        Pfn::new(p).unwrap()
    }

    #[test]
    fn pte_pat_is_bit7_huge_pat_is_bit12() {
        let prot = Pgprot::SHARED.with_cache(CacheMode::Wt);
        let pte = encode_leaf(Leaf {
            pfn: pfn(0x12344),
            prot,
            level: Level::Pte,
        })
        .unwrap();
        assert_ne!(pte & bits::PAT, 0);
        assert_eq!(
            pte & bits::PAT_LARGE,
            0,
            "bit 12 is address here, and pfn is even"
        );
        assert_eq!(pte & bits::PTE_ADDR_MASK, 0x12344 << 12);
        let pmd = encode_leaf(Leaf {
            pfn: pfn(0x200),
            prot,
            level: Level::Pmd,
        })
        .unwrap();
        assert_ne!(pmd & bits::PSE, 0);
        assert_ne!(pmd & bits::PAT_LARGE, 0);
        let Decoded::Leaf(l) = decode(pmd, Level::Pmd) else {
            panic!("not a leaf")
        };
        assert_eq!(l.pfn, pfn(0x200));
        assert_eq!(l.prot, prot);
        // The same bits read as a PTE: bit 7 is PAT, bit 12 is part of the address.
        let Decoded::Leaf(as_pte) = decode(pmd, Level::Pte) else {
            panic!()
        };
        assert_eq!(as_pte.pfn, pfn(0x201));
        assert_eq!(as_pte.prot.cache, CacheMode::Wt);
    }

    #[test]
    fn every_cache_mode_round_trips_at_every_leaf_level() {
        for cache in [
            CacheMode::Wb,
            CacheMode::Wc,
            CacheMode::UcMinus,
            CacheMode::Uc,
            CacheMode::Wt,
            CacheMode::Wp,
        ] {
            for level in Level::LEAF_LEVELS {
                for base in [Pgprot::SHARED, Pgprot::READONLY, Pgprot::NONE] {
                    let prot = base
                        .with_cache(cache)
                        .with(ProtFlags::SPECIAL | ProtFlags::DIRTY, ProtFlags::empty());
                    let leaf = Leaf {
                        pfn: pfn(1 << 18),
                        prot,
                        level,
                    };
                    let raw = encode_leaf(leaf).unwrap();
                    assert_eq!(decode(raw, level), Decoded::Leaf(leaf), "{cache:?} {level}");
                }
            }
        }
    }

    #[test]
    fn uc_minus_is_pcd_only() {
        let raw = encode_leaf(Leaf {
            pfn: pfn(1),
            prot: Pgprot::SHARED.with_cache(CacheMode::UcMinus),
            level: Level::Pte,
        })
        .unwrap();
        assert_eq!(raw & (bits::PWT | bits::PCD | bits::PAT), bits::PCD);
    }

    #[test]
    fn tables_and_non_leaves() {
        let t = encode_table(PhysAddr::new(0x1_0000_3000).unwrap());
        assert_eq!(
            decode(t, Level::Pmd),
            Decoded::Table(PhysAddr::new(0x1_0000_3000).unwrap())
        );
        assert_eq!(
            decode(t, Level::P4d),
            Decoded::Table(PhysAddr::new(0x1_0000_3000).unwrap())
        );
        assert_eq!(decode(0, Level::Pud), Decoded::None);
        assert!(matches!(decode(0x2, Level::Pte), Decoded::NonPresent(2)));
        assert_eq!(
            encode_leaf(Leaf {
                pfn: pfn(0),
                prot: Pgprot::SHARED,
                level: Level::P4d
            }),
            Err(EncodeError::NotLeafLevel(Level::P4d))
        );
        assert!(matches!(
            encode_leaf(Leaf {
                pfn: pfn(0x100),
                prot: Pgprot::SHARED,
                level: Level::Pmd
            }),
            Err(EncodeError::Misaligned { .. })
        ));
    }

    /// Cross-check against the `x86_64` crate where its API covers the format: PTE flags and
    /// addresses, and the PS bit of huge entries. (Its `PageTableEntry::addr` masks bits 12..51
    /// at every level, so it cannot decode a huge leaf's address when PAT is set: rust-osdev
    /// x86_64 issues #612/#613; we check that we do.)
    #[test]
    fn cross_check_with_x86_64_crate() {
        use x86_64::structures::paging::{PageTableFlags as F, page_table::PageTableEntry};
        let raw = encode_leaf(Leaf {
            pfn: pfn(0xabcde),
            prot: Pgprot::SHARED
                .with(ProtFlags::SPECIAL | ProtFlags::DIRTY, ProtFlags::empty())
                .with_cache(CacheMode::Uc),
            level: Level::Pte,
        })
        .unwrap();
        let mut e = PageTableEntry::new();
        e.set_addr(
            x86_64::PhysAddr::new(raw & bits::PTE_ADDR_MASK),
            F::from_bits_truncate(raw),
        );
        let f = e.flags();
        assert_eq!(e.addr().as_u64(), 0xabcde << 12);
        assert!(f.contains(F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE | F::ACCESSED));
        assert!(f.contains(F::DIRTY | F::BIT_9 | F::NO_EXECUTE));
        assert!(f.contains(F::WRITE_THROUGH | F::NO_CACHE));
        assert!(!f.contains(F::HUGE_PAGE));
        assert_eq!(f.bits(), raw & !bits::PTE_ADDR_MASK);

        let huge = encode_leaf(Leaf {
            pfn: pfn(1 << 18),
            prot: Pgprot::SHARED,
            level: Level::Pud,
        })
        .unwrap();
        let f = F::from_bits_truncate(huge);
        assert!(f.contains(F::HUGE_PAGE | F::PRESENT | F::WRITABLE));
        let t = encode_table(PhysAddr::new(0x5000).unwrap());
        let f = F::from_bits_truncate(t);
        assert!(!f.contains(F::HUGE_PAGE));
        assert!(f.contains(F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE));
    }
}
