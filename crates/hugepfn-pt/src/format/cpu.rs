//! The CPU page-table format of the architecture a machine runs, chosen at run time.
//!
//! Linux builds one architecture's `pgtable.h` into a kernel; the model picks it per `Mm` from
//! the scenario's `arch`, so one engine instance ([`crate::tree::Tree<Cpu>`]) serves every CPU
//! format: x86-64 ([`X86_64`]), arm64 ([`Arm64`]) and riscv ([`Riscv`]). All three decode to the
//! same [`Leaf`] (pfn, [`crate::entry::Pgprot`], level), as Linux's generic mm sees every
//! architecture's entries through `pte_pfn`, `pte_write`, `pte_special`, ….

use hugepfn_units::arch::Arch;

use crate::entry::{Leaf, ProtFlags, bits};
use crate::format::arm64::Arm64;
use crate::format::riscv::Riscv;
use crate::format::{Entry, Format, Locking, X86_64, enum_format};
use crate::level::Level;

/// A CPU page-table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// x86-64, 4- or 5-level.
    X86(X86_64),
    /// arm64 stage 1, 4, 16 or 64 KiB granule.
    Arm64(Arm64),
    /// riscv64 Sv39/48/57.
    Riscv(Riscv),
}

/// An architecture whose format the model does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the model has no page-table format for {0}")]
pub struct UnsupportedArch(pub Arch);

impl Cpu {
    /// The format `arch` walks.
    pub fn for_arch(arch: Arch) -> Result<Cpu, UnsupportedArch> {
        Ok(match arch {
            Arch::X86_64 | Arch::X86_64_5Level => Cpu::X86(X86_64 {
                mode: arch.paging_mode().unwrap_or_default(),
            }),
            Arch::Arm64 => Cpu::Arm64(Arm64::G4K_VA48),
            // Debian's arm64-16k (CONFIG_ARM64_VA_BITS_48) and arm64-64k (52-bit VA) kernels
            Arch::Arm64_16k | Arch::Arm64_64k => Cpu::Arm64(
                Arm64::new(arch.geometry(), arch.va_bits()).map_err(|_| UnsupportedArch(arch))?,
            ),
            Arch::Riscv64Sv39 | Arch::Riscv64Sv48 | Arch::Riscv64Sv57 => Cpu::Riscv(Riscv {
                levels: arch.levels(),
            }),
        })
    }
}

enum_format!(
    Cpu,
    Leaf,
    hugepfn_units::addr::UserAddr,
    Locking::Split,
    X86,
    Arm64,
    Riscv
);

impl Cpu {
    /// The hardware's permission check on a leaf found at `level` by a user access: present,
    /// user-accessible and, for a write, writable. x86-64 tests the entry's bits
    /// (`_PAGE_PRESENT`, `_PAGE_USER`, `_PAGE_RW` are the same at every leaf level); the other
    /// formats decode.
    #[inline]
    pub fn user_access(&self, raw: u64, level: Level, write: bool) -> bool {
        match self {
            Cpu::X86(_) => {
                let need = bits::PRESENT | bits::USER | if write { bits::RW } else { 0 };
                self.is_leaf(raw, level) && raw & need == need
            }
            _ => match self.decode(raw, level) {
                Entry::Leaf(l) => {
                    l.prot.flags.contains(ProtFlags::PRESENT | ProtFlags::USER)
                        && (!write || l.prot.is_writable())
                }
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::addr::{Pfn, PhysAddr, UserAddr};
    use crate::entry::{CacheMode, Pgprot, ProtFlags};
    use crate::format::Format;
    use crate::format::{EncodeError, Entry};
    use crate::level::Level;
    use crate::phys::PhysMem;
    use crate::tree::Tree;

    fn cpus() -> Vec<Cpu> {
        [
            Arch::X86_64,
            Arch::X86_64_5Level,
            Arch::Arm64,
            Arch::Riscv64Sv39,
            Arch::Riscv64Sv48,
            Arch::Riscv64Sv57,
        ]
        .into_iter()
        .map(|a| Cpu::for_arch(a).unwrap())
        .collect()
    }

    #[test]
    fn the_access_check_reads_what_decoding_reads() {
        // Cpu::user_access tests x86-64's bits and decodes the others: for every leaf a CPU
        // format holds, both must say what the decoded protection says.
        let prots = [
            Pgprot::SHARED,
            Pgprot::READONLY,
            Pgprot::NONE,
            Pgprot::SHARED.with(ProtFlags::SPECIAL | ProtFlags::DIRTY, ProtFlags::empty()),
            Pgprot::READONLY.with(ProtFlags::empty(), ProtFlags::NX),
        ];
        for f in cpus() {
            for level in Level::LEAF_LEVELS {
                for prot in prots {
                    let leaf = Leaf {
                        pfn: Pfn::new(0x4_0000 << 9).unwrap(),
                        prot,
                        level,
                    };
                    let raw = f.encode_leaf(&leaf, level).unwrap();
                    let Entry::Leaf(l) = f.decode(raw, level) else {
                        panic!("{} {level}: {raw:#x} is not a leaf", f.name())
                    };
                    for write in [false, true] {
                        let want = l.prot.flags.contains(ProtFlags::PRESENT | ProtFlags::USER)
                            && (!write || l.prot.is_writable());
                        assert_eq!(
                            f.user_access(raw, level, write),
                            want,
                            "{} {level} {prot} write {write}",
                            f.name()
                        );
                    }
                }
                assert!(!f.user_access(0, level, false), "none lets nothing through");
            }
            // a table pointer is no leaf, whatever its bits
            let t = f.encode_table(PhysAddr::new(0x1_0000_3000).unwrap(), Level::Pmd);
            assert!(!f.user_access(t, Level::Pmd, false), "{}", f.name());
        }
    }

    #[test]
    fn every_cpu_format_round_trips_every_leaf_it_can_hold() {
        let prots = [
            Pgprot::SHARED,
            Pgprot::READONLY,
            Pgprot::NONE,
            Pgprot::SHARED.with(
                ProtFlags::SPECIAL | ProtFlags::DIRTY | ProtFlags::ACCESSED,
                ProtFlags::empty(),
            ),
            Pgprot::READONLY.with(ProtFlags::empty(), ProtFlags::NX),
        ];
        for f in cpus() {
            for level in Level::LEAF_LEVELS {
                for prot in prots {
                    for cache in [CacheMode::Wb, CacheMode::Wc, CacheMode::UcMinus] {
                        let leaf = Leaf {
                            pfn: Pfn::new(0x4_0000 << 9).unwrap(),
                            prot: prot.with_cache(cache),
                            level,
                        };
                        let raw = f.encode_leaf(&leaf, level).unwrap();
                        assert_eq!(
                            f.decode(raw, level),
                            Entry::Leaf(leaf),
                            "{} {level} {prot} {raw:#x}",
                            f.name()
                        );
                    }
                }
            }
            let t = PhysAddr::new(0x1_0000_3000).unwrap();
            for level in [Level::Pmd, Level::Pud] {
                assert_eq!(f.decode(f.encode_table(t, level), level), Entry::Table(t));
            }
            assert_eq!(f.decode(0, Level::Pte), Entry::None);
        }
        for (arch, page, top) in [
            (Arch::Arm64_16k, 16 << 10, Level::P4d),
            (Arch::Arm64_64k, 64 << 10, Level::Pud),
        ] {
            let f = Cpu::for_arch(arch).unwrap();
            assert_eq!((f.geometry().page_size(), f.top()), (page, top), "{arch}");
        }
    }

    #[test]
    fn the_engine_splits_a_pud_leaf_the_same_way_in_every_format() {
        for f in cpus() {
            let phys = Arc::new(PhysMem::default());
            let tree = Tree::new(phys.clone(), f).unwrap();
            let va = UserAddr::new(5 << 30);
            let slot = tree.slot_alloc(va, Level::Pud).unwrap();
            let prot = Pgprot::SHARED
                .with_cache(CacheMode::UcMinus)
                .with(ProtFlags::SPECIAL, ProtFlags::empty());
            let leaf = Leaf {
                pfn: Pfn::new(0x1000_0000_0000 >> 12).unwrap(),
                prot,
                level: Level::Pud,
            };
            let raw = f.encode_leaf(&leaf, Level::Pud).unwrap();
            tree.lock(slot).set(slot, raw);
            assert!(tree.split_leaf(slot).unwrap(), "{}", f.name());
            let mut n = 0;
            tree.for_each_leaf(va, va + (1 << 30), &mut |at, l, level| {
                assert_eq!(level, Level::Pmd);
                assert_eq!(l.prot, prot);
                assert_eq!(l.pfn.as_u64(), leaf.pfn.as_u64() + ((at - va) >> 12));
                n += 1;
            });
            assert_eq!(n, 512, "{}", f.name());
            let (l, s) = tree.lookup(va + (3 << 21) + 5).unwrap();
            assert_eq!(
                (s.level, l.pfn.as_u64()),
                (Level::Pmd, leaf.pfn.as_u64() + 3 * 512)
            );
            assert_eq!(tree.reachable_tables(), tree.table_counts().total());
            drop(tree);
            assert!(phys.leak_check().is_empty(), "{}", f.name());
        }
    }

    #[test]
    fn riscv_prot_none_and_napot_are_linuxs() {
        let f = Cpu::for_arch(Arch::Riscv64Sv48).unwrap();
        let none = Leaf {
            pfn: Pfn::new(0x200).unwrap(),
            prot: Pgprot::NONE,
            level: Level::Pmd,
        };
        let raw = f.encode_leaf(&none, Level::Pmd).unwrap();
        use crate::format::riscv::bits;
        assert_eq!(
            raw & (bits::V | bits::G | bits::R),
            bits::G | bits::R,
            "PAGE_NONE"
        );
        let run = Leaf {
            pfn: Pfn::new(0x1230).unwrap(),
            prot: Pgprot::SHARED.with(ProtFlags::CONT, ProtFlags::empty()),
            level: Level::Pte,
        };
        let raw = f.encode_leaf(&run, Level::Pte).unwrap();
        assert_ne!(raw & bits::N, 0);
        assert_eq!((raw >> bits::PPN_SHIFT) & 0xf, 0b1000, "PPN[3:0] = 1000");
        assert_eq!(f.decode(raw, Level::Pte), Entry::Leaf(run));
        let odd = Leaf {
            pfn: Pfn::new(0x1231).unwrap(),
            ..run
        };
        assert!(matches!(
            f.encode_leaf(&odd, Level::Pte),
            Err(EncodeError::Unrepresentable(_))
        ));
    }
}
