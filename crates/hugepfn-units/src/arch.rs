//! The architectures the model knows: which page-table format a CPU walks, how many levels it
//! has and how wide a user virtual address is.
//!
//! Names are the scenario key's (`arch = "arm64"`) and the CLI's (`--arch arm64`). `arm64` is the
//! 4 KiB granule with 48-bit virtual addresses (Debian's arm64 kernels: `CONFIG_ARM64_4K_PAGES`,
//! `CONFIG_ARM64_VA_BITS_48`); `riscv64-sv39/48/57` are the RISC-V satp modes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::{AddrError, PAGE_SIZE, PagingMode};

/// A CPU architecture and paging configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Arch {
    /// x86-64, 4-level paging (PGD → PUD → PMD → PTE, P4D folded). `"x86_64"`.
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// x86-64, 5-level paging (LA57). `"x86_64-5level"`.
    #[serde(rename = "x86_64-5level")]
    X86_64_5Level,
    /// arm64, 4 KiB granule, 48-bit VA: four levels, blocks at 1 GiB and 2 MiB. `"arm64"`.
    #[serde(rename = "arm64")]
    Arm64,
    /// arm64, 16 KiB granule (Apple-style kernels). `"arm64-16k"`.
    #[serde(rename = "arm64-16k")]
    Arm64_16k,
    /// arm64, 64 KiB granule (RHEL-style kernels). `"arm64-64k"`.
    #[serde(rename = "arm64-64k")]
    Arm64_64k,
    /// RISC-V Sv39: three levels, 39-bit VA. `"riscv64-sv39"`.
    #[serde(rename = "riscv64-sv39")]
    Riscv64Sv39,
    /// RISC-V Sv48: four levels. `"riscv64-sv48"`.
    #[serde(rename = "riscv64-sv48")]
    Riscv64Sv48,
    /// RISC-V Sv57: five levels. `"riscv64-sv57"`.
    #[serde(rename = "riscv64-sv57")]
    Riscv64Sv57,
}

impl Arch {
    /// Every architecture, in the order the docs list them.
    pub const ALL: [Arch; 8] = [
        Arch::X86_64,
        Arch::X86_64_5Level,
        Arch::Arm64,
        Arch::Arm64_16k,
        Arch::Arm64_64k,
        Arch::Riscv64Sv39,
        Arch::Riscv64Sv48,
        Arch::Riscv64Sv57,
    ];

    /// The name used in scenarios and on the command line.
    #[inline]
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::X86_64_5Level => "x86_64-5level",
            Arch::Arm64 => "arm64",
            Arch::Arm64_16k => "arm64-16k",
            Arch::Arm64_64k => "arm64-64k",
            Arch::Riscv64Sv39 => "riscv64-sv39",
            Arch::Riscv64Sv48 => "riscv64-sv48",
            Arch::Riscv64Sv57 => "riscv64-sv57",
        }
    }

    /// The translation granule's geometry: `PAGE_SIZE` and what each level's entry maps.
    #[inline]
    pub const fn geometry(self) -> crate::level::Geometry {
        use crate::level::Geometry;
        match self {
            Arch::Arm64_16k => Geometry::G16K,
            Arch::Arm64_64k => Geometry::G64K,
            _ => Geometry::G4K,
        }
    }

    /// Base page size in bytes (the translation granule).
    #[inline]
    pub const fn page_size(self) -> u64 {
        match self {
            Arch::Arm64_16k => 16 << 10,
            Arch::Arm64_64k => 64 << 10,
            _ => PAGE_SIZE,
        }
    }

    /// Width of a user virtual address in bits.
    #[inline]
    pub const fn va_bits(self) -> u32 {
        match self {
            Arch::X86_64 => 48,
            Arch::X86_64_5Level => 57,
            Arch::Arm64 | Arch::Arm64_16k => 48,
            Arch::Arm64_64k => 52,
            Arch::Riscv64Sv39 => 39,
            Arch::Riscv64Sv48 => 48,
            Arch::Riscv64Sv57 => 57,
        }
    }

    /// Levels in a walk.
    #[inline]
    pub const fn levels(self) -> u32 {
        match self {
            Arch::X86_64 | Arch::Arm64 | Arch::Riscv64Sv48 => 4,
            Arch::X86_64_5Level | Arch::Riscv64Sv57 => 5,
            Arch::Riscv64Sv39 | Arch::Arm64_64k => 3,
            Arch::Arm64_16k => 4,
        }
    }

    /// The x86-64 paging mode, for the x86-64 family.
    #[inline]
    pub const fn paging_mode(self) -> Option<PagingMode> {
        match self {
            Arch::X86_64 => Some(PagingMode::Level4),
            Arch::X86_64_5Level => Some(PagingMode::Level5),
            _ => None,
        }
    }

    /// True for arm64 in any granule.
    #[inline]
    pub const fn is_arm64(self) -> bool {
        matches!(self, Arch::Arm64 | Arch::Arm64_16k | Arch::Arm64_64k)
    }

    /// True for riscv64 in any mode.
    #[inline]
    pub const fn is_riscv(self) -> bool {
        matches!(
            self,
            Arch::Riscv64Sv39 | Arch::Riscv64Sv48 | Arch::Riscv64Sv57
        )
    }

    /// The end of user space (`TASK_SIZE`): x86-64 stops one page below the canonical hole
    /// (`TASK_SIZE_MAX`), arm64 gives user space all of TTBR0's range (`1 << vabits_actual`),
    /// riscv the lower half of the sign-extended space (`PGDIR_SIZE * PTRS_PER_PGD / 2`).
    #[inline]
    pub const fn task_size(self) -> u64 {
        match self {
            Arch::X86_64 | Arch::X86_64_5Level => (1u64 << (self.va_bits() - 1)) - PAGE_SIZE,
            Arch::Arm64 | Arch::Arm64_16k | Arch::Arm64_64k => 1u64 << self.va_bits(),
            _ => 1u64 << (self.va_bits() - 1),
        }
    }

    /// `DEFAULT_MAP_WINDOW`: the top of the range an mmap without a hint above it is placed
    /// in. Wider address spaces are opt-in (a hint above the window): x86-64 with 5-level
    /// paging keeps 4-level's 47 bits, arm64 with 52-bit VA 48 bits (`VA_BITS_MIN`), riscv's
    /// Sv57 the 47 bits of Sv48 (`MMAP_VA_BITS`).
    #[inline]
    pub const fn mmap_window(self) -> u64 {
        match self {
            Arch::X86_64 | Arch::X86_64_5Level => (1u64 << 47) - PAGE_SIZE,
            Arch::Arm64 | Arch::Arm64_16k | Arch::Arm64_64k if self.va_bits() > 48 => 1u64 << 48,
            Arch::Riscv64Sv57 => 1u64 << 47,
            _ => self.task_size(),
        }
    }

    /// Checks that `addr` is a well-formed virtual address for this architecture: canonical
    /// (sign-extended) on x86-64 and riscv, bits 63..VA_BITS all zero (TTBR0) or all one
    /// (TTBR1) on arm64.
    #[inline]
    pub const fn check_va(self, addr: u64) -> Result<(), AddrError> {
        let bits = self.va_bits();
        let ok = if self.is_arm64() {
            let top = addr >> bits;
            top == 0 || top == (u64::MAX >> bits)
        } else {
            let top = (addr as i64) >> (bits - 1);
            top == 0 || top == -1
        };
        if ok {
            Ok(())
        } else {
            Err(AddrError::NotCanonical { addr, bits })
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                format!("unknown arch `{s}` (expected one of: {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_follow_linux() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>(), Ok(a));
        }
        assert!("sparc".parse::<Arch>().unwrap_err().contains("arm64"));
        assert_eq!(Arch::X86_64.task_size(), PagingMode::Level4.task_size());
        assert_eq!(
            Arch::X86_64_5Level.task_size(),
            PagingMode::Level5.task_size()
        );
        assert_eq!(Arch::Arm64.task_size(), 1 << 48);
        assert_eq!(Arch::Riscv64Sv39.task_size(), 1 << 38);
        assert!(Arch::Arm64.check_va(0xffff_0000_0000_0000).is_ok());
        assert!(Arch::Arm64.check_va(0x0001_0000_0000_0000).is_err());
        assert!(Arch::X86_64.check_va(0xffff_8000_0000_0000).is_ok());
        assert!(Arch::X86_64.check_va(0x0000_8000_0000_0000).is_err());
        assert!(Arch::Riscv64Sv39.check_va(1 << 38).is_err());
        assert!(Arch::Riscv64Sv39.check_va((1 << 38) - 1).is_ok());
    }
}
