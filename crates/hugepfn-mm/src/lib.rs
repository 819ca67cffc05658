//! hugepfn-mm: the Linux memory-management core for huge PFN mappings of device memory, as an
//! executable model.
//!
//! Real x86-64 page-table entry formats (4- and 5-level) over simulated physical memory; an
//! [`Mm`] with VMAs, an mmap lock and split page-table locks; the RFC's huge
//! [`Mm::remap_pfn_range`] (PUD 1 GiB / PMD 2 MiB / PTE 4 KiB leaves wherever alignment allows);
//! [`MmapRead::follow_pfnmap_start`]; munmap with splitting; and the fault path
//! ([`fault::handle_mm_fault_locked`], [`fault::VmOperations`], `vmf_insert_pfn_{pmd,pud}`) a
//! driver such as vfio-pci plugs into. Module docs name the kernel code each part models.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use hugepfn_pt::{entry, level, phys, sync};
pub use hugepfn_units::addr;

pub mod error;
pub mod fault;
pub mod follow;
pub mod fork;
pub mod gup;
pub mod madvise;
pub mod mapping;
pub mod mm;
pub mod mprotect;
pub mod mremap;
pub mod pagewalk;
pub mod pgtable;
pub mod remap_file;
pub mod task_mmu;
pub mod vma;

pub use addr::{AddrError, PAGE_SHIFT, PAGE_SIZE, PagingMode, Pfn, PhysAddr, UserAddr, VirtAddr};
pub use entry::{CacheMode, Leaf, Pgprot, ProtFlags};
pub use error::{Errno, MmError};
pub use fault::{
    FaultCounts, FaultFlags, FaultPath, ThpGate, ThpPolicy, VmFault, VmFaultResult, VmOperations,
};
pub use follow::{FollowPfnmap, FollowPfnmapArgs};
pub use gup::{FollFlags, GupFast};
pub use hugepfn_units::arch::Arch;
pub use level::{LeafCap, Level};
pub use mapping::AddressSpace;
pub use mm::{
    Access, FileOps, Mm, MmConfig, MmapAddr, MmapCtx, MmapRead, MmapRequest, Prot, RangeAccess,
};
pub use pgtable::{LeafCounts, MmuNotifier, PageTables};
pub use phys::{PhysConfig, PhysMem, TableCounts};
pub use vma::{VmFlags, Vma};
