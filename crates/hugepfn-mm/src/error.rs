//! Typed errors of the mm API, each with the errno Linux would return.

use thiserror::Error;

use crate::addr::{AddrError, UserAddr};
use crate::level::Level;
use crate::pgtable::WalkError;

/// Why an mm operation was refused. Nothing was changed when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MmError {
    /// An address or length that must be page- (or block-) aligned is not.
    #[error("{what} {value:#x} is not aligned to {align:#x}")]
    Unaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The alignment required.
        align: u64,
    },
    /// A zero length.
    #[error("{0}: length is zero")]
    ZeroLength(&'static str),
    /// `addr + len` overflows or leaves user space.
    #[error("range {addr:#x}+{len:#x} overflows or leaves user space (ends at {limit:#x})")]
    Overflow {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// End of user space.
        limit: u64,
    },
    /// An address is not canonical or not a valid pfn.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// No VMA contains the address.
    #[error("no VMA maps {0:#x}")]
    NoVma(UserAddr),
    /// The range is not inside one VMA.
    #[error("range {start:#x}..{end:#x} is not inside the VMA {vma_start:#x}..{vma_end:#x}")]
    OutsideVma {
        /// Range start.
        start: UserAddr,
        /// Range end.
        end: UserAddr,
        /// VMA start.
        vma_start: UserAddr,
        /// VMA end.
        vma_end: UserAddr,
    },
    /// The pfn range runs past the 52-bit physical address width.
    #[error("pfn range {pfn:#x}+{pages:#x} pages runs past the 52-bit physical address width")]
    PfnTooWide {
        /// First pfn.
        pfn: u64,
        /// Pages.
        pages: u64,
    },
    /// Part of the range is already mapped (Linux: `BUG_ON(!pte_none(*pte))` in `remap_pte_range`).
    #[error("{va:#x} is already mapped (remap_pfn_range needs an empty range)")]
    AlreadyMapped {
        /// The first mapped address.
        va: UserAddr,
    },
    /// A CoW mapping must be remapped whole, with `vm_pgoff` = pfn (`remap_pfn_range_internal`).
    #[error(
        "private writable (CoW) mapping {vma_start:#x}..{vma_end:#x}: remap_pfn_range must cover the whole VMA"
    )]
    CowPartial {
        /// VMA start.
        vma_start: UserAddr,
        /// VMA end.
        vma_end: UserAddr,
    },
    /// `follow_pfnmap_start` on a VMA without VM_IO or VM_PFNMAP.
    #[error("VMA {0:#x}.. is not VM_IO|VM_PFNMAP")]
    NotPfnmap(UserAddr),
    /// Nothing is mapped at the address.
    #[error("nothing is mapped at {0:#x}")]
    NotMapped(UserAddr),
    /// A call that needs every page of its range mapped met one no VMA maps (`mincore`,
    /// `mprotect`: ENOMEM).
    #[error("{what}: no mapping at {addr:#x}")]
    Unmapped {
        /// The call.
        what: &'static str,
        /// The first unmapped address.
        addr: UserAddr,
    },
    /// A fixed mapping would overlap an existing VMA (`MAP_FIXED_NOREPLACE`).
    #[error(
        "range {start:#x}..{end:#x} overlaps the existing mapping {vma_start:#x}..{vma_end:#x}"
    )]
    Overlap {
        /// Range start.
        start: UserAddr,
        /// Range end.
        end: UserAddr,
        /// Existing VMA start.
        vma_start: UserAddr,
        /// Existing VMA end.
        vma_end: UserAddr,
    },
    /// No free virtual range is large enough.
    #[error("no free virtual range of {0:#x} bytes")]
    NoSpace(u64),
    /// Page-table memory ran out.
    #[error("out of page-table memory")]
    Oom,
    /// A driver refused the mmap (its own reason).
    #[error("mmap refused by {driver}: {reason}")]
    Driver {
        /// Which driver.
        driver: String,
        /// Why.
        reason: String,
        /// The errno it returned.
        errno: Errno,
    },
    /// An invalid argument combination, explained.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A system call refused with the errno Linux returns, and why.
    #[error("{op}: {reason} ({errno})")]
    Refused {
        /// The call: "mprotect", "madvise", "mremap".
        op: &'static str,
        /// Linux's errno.
        errno: Errno,
        /// Why, for a person.
        reason: String,
    },
    /// A leaf of this level cannot be placed here.
    #[error("{0} leaf not possible here")]
    Level(Level),
}

/// The errno names the model returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Errno {
    /// Invalid argument.
    EINVAL,
    /// Out of memory / no address space.
    ENOMEM,
    /// Bad address.
    EFAULT,
    /// Exists.
    EEXIST,
    /// Operation not permitted.
    EPERM,
    /// Permission denied.
    EACCES,
    /// No such device.
    ENODEV,
    /// Try again.
    EAGAIN,
    /// Device or resource busy.
    EBUSY,
    /// Invalid seek / offset.
    ENXIO,
}

impl Errno {
    /// The name, as `strerrorname_np` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::ENOMEM => "ENOMEM",
            Errno::EFAULT => "EFAULT",
            Errno::EEXIST => "EEXIST",
            Errno::EPERM => "EPERM",
            Errno::EACCES => "EACCES",
            Errno::ENODEV => "ENODEV",
            Errno::EAGAIN => "EAGAIN",
            Errno::EBUSY => "EBUSY",
            Errno::ENXIO => "ENXIO",
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl MmError {
    /// The errno Linux returns for this error.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::NoSpace(_) | MmError::Oom | MmError::Unmapped { .. } => Errno::ENOMEM,
            MmError::Overlap { .. } => Errno::EEXIST,
            MmError::Driver { errno, .. } | MmError::Refused { errno, .. } => *errno,
            MmError::NotMapped(_) | MmError::NoVma(_) => Errno::EINVAL,
            _ => Errno::EINVAL,
        }
    }
}

impl From<WalkError> for MmError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Oom => MmError::Oom,
            WalkError::HugeAbove(s) => MmError::Level(s.level),
            WalkError::Bad(s, _) => MmError::Level(s.level),
            WalkError::Encode(e) => MmError::Invalid(format!("page-table entry: {e}")),
            WalkError::PfnTooWide(p) => {
                MmError::Invalid(format!("pfn {p:#x} is past the physical address width"))
            }
            WalkError::Vanished(va, l) => {
                MmError::Invalid(format!("the {l} entry for {va:#x} vanished during a walk"))
            }
            WalkError::Corrupt(pa) => MmError::Invalid(format!(
                "page-table pointer {pa} names no table: the tree is corrupt"
            )),
        }
    }
}
