//! Virtual memory areas: Linux's `struct vm_area_struct`, its flags and `vm_get_page_prot`.

use std::fmt;
use std::sync::Arc;

use bitflags::bitflags;

use crate::addr::UserAddr;
use crate::entry::{CacheMode, Pgprot, ProtFlags};
use crate::fault::VmOperations;
use crate::mapping::AddressSpace;

bitflags! {
    /// `vm_flags` with Linux's bit values (`include/linux/mm.h`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VmFlags: u64 {
        /// `VM_READ`.
        const READ = 0x0000_0001;
        /// `VM_WRITE`.
        const WRITE = 0x0000_0002;
        /// `VM_EXEC`.
        const EXEC = 0x0000_0004;
        /// `VM_SHARED`.
        const SHARED = 0x0000_0008;
        /// `VM_MAYREAD`.
        const MAYREAD = 0x0000_0010;
        /// `VM_MAYWRITE`.
        const MAYWRITE = 0x0000_0020;
        /// `VM_MAYEXEC`.
        const MAYEXEC = 0x0000_0040;
        /// `VM_MAYSHARE`.
        const MAYSHARE = 0x0000_0080;
        /// `VM_GROWSDOWN`.
        const GROWSDOWN = 0x0000_0100;
        /// `VM_PFNMAP`: page-ranges managed without `struct page`, just pure PFN.
        const PFNMAP = 0x0000_0400;
        /// `VM_LOCKED`.
        const LOCKED = 0x0000_2000;
        /// `VM_IO`: memory-mapped I/O or similar.
        const IO = 0x0000_4000;
        /// `VM_SEQ_READ`.
        const SEQ_READ = 0x0000_8000;
        /// `VM_RAND_READ`.
        const RAND_READ = 0x0001_0000;
        /// `VM_DONTCOPY`: do not copy this VMA on fork.
        const DONTCOPY = 0x0002_0000;
        /// `VM_DONTEXPAND`: cannot expand with mremap().
        const DONTEXPAND = 0x0004_0000;
        /// `VM_ACCOUNT`.
        const ACCOUNT = 0x0010_0000;
        /// `VM_NORESERVE`.
        const NORESERVE = 0x0020_0000;
        /// `VM_HUGETLB`.
        const HUGETLB = 0x0040_0000;
        /// `VM_WIPEONFORK`.
        const WIPEONFORK = 0x0200_0000;
        /// `VM_DONTDUMP`.
        const DONTDUMP = 0x0400_0000;
        /// `VM_MIXEDMAP`.
        const MIXEDMAP = 0x1000_0000;
        /// `VM_HUGEPAGE`: MADV_HUGEPAGE.
        const HUGEPAGE = 0x2000_0000;
        /// `VM_NOHUGEPAGE`: MADV_NOHUGEPAGE.
        const NOHUGEPAGE = 0x4000_0000;
        /// `VM_HUGEPFNMAP`: the RFC's design (b), not in Linux: call the driver's fault handler
        /// before `__handle_mm_fault` allocates PUD/PMD tables. Bit 32 is unused on x86-64.
        const HUGEPFNMAP = 0x1_0000_0000;
        /// `VM_ALLOW_ANY_UNCACHED` (bit 39, Linux 6.10+): the driver (vfio-pci) says any
        /// uncached type is safe for this device memory, so KVM/arm64 maps it Normal-NC at stage 2
        /// instead of Device-nGnRE. Not shown in smaps' VmFlags.
        const ALLOW_ANY_UNCACHED = 1 << 39;
    }
}

impl VmFlags {
    /// `is_cow_mapping()`: private and may be written.
    pub fn is_cow_mapping(self) -> bool {
        self & (VmFlags::SHARED | VmFlags::MAYWRITE) == VmFlags::MAYWRITE
    }

    /// Short flag names as `/proc/<pid>/smaps` prints them in `VmFlags:` (`show_smap_vma_flags`,
    /// in bit order, for the flags the model has).
    pub fn smaps(self) -> String {
        let names = [
            (VmFlags::READ, "rd"),
            (VmFlags::WRITE, "wr"),
            (VmFlags::EXEC, "ex"),
            (VmFlags::SHARED, "sh"),
            (VmFlags::MAYREAD, "mr"),
            (VmFlags::MAYWRITE, "mw"),
            (VmFlags::MAYEXEC, "me"),
            (VmFlags::MAYSHARE, "ms"),
            (VmFlags::GROWSDOWN, "gd"),
            (VmFlags::PFNMAP, "pf"),
            (VmFlags::LOCKED, "lo"),
            (VmFlags::IO, "io"),
            (VmFlags::DONTCOPY, "dc"),
            (VmFlags::DONTEXPAND, "de"),
            (VmFlags::ACCOUNT, "ac"),
            (VmFlags::NORESERVE, "nr"),
            (VmFlags::HUGETLB, "ht"),
            (VmFlags::WIPEONFORK, "wf"),
            (VmFlags::DONTDUMP, "dd"),
            (VmFlags::MIXEDMAP, "mm"),
            (VmFlags::HUGEPAGE, "hg"),
            (VmFlags::NOHUGEPAGE, "nh"),
        ];
        names
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `vm_get_page_prot()` on x86-64 (`protection_map`): what a user mapping's entries carry.
/// A private writable mapping is read-only in the page tables (CoW).
pub fn vm_get_page_prot(flags: VmFlags) -> Pgprot {
    let r = flags.contains(VmFlags::READ);
    let w = flags.contains(VmFlags::WRITE);
    let x = flags.contains(VmFlags::EXEC);
    if !r && !w && !x {
        return Pgprot::NONE;
    }
    let mut p = Pgprot::READONLY;
    if w && flags.contains(VmFlags::SHARED) {
        p = Pgprot::SHARED;
    }
    if x {
        p = p.with(ProtFlags::empty(), ProtFlags::NX);
    }
    p
}

/// `pgprot_noncached()` on x86: UC- through PAT.
pub fn pgprot_noncached(p: Pgprot) -> Pgprot {
    p.with_cache(CacheMode::UcMinus)
}

/// `pgprot_writecombine()`.
pub fn pgprot_writecombine(p: Pgprot) -> Pgprot {
    p.with_cache(CacheMode::Wc)
}

/// A virtual memory area.
#[derive(Clone)]
pub struct Vma {
    /// `vm_start`.
    pub start: UserAddr,
    /// `vm_end` (exclusive).
    pub end: UserAddr,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// `vm_pgoff`: offset into the file in pages (for a CoW pfnmap: the first pfn).
    pub pgoff: u64,
    /// `vm_page_prot`.
    pub page_prot: Pgprot,
    /// `vm_ops`: the driver's fault handlers, if any.
    pub ops: Option<Arc<dyn VmOperations>>,
    /// `vm_file->f_mapping`: the address space `unmap_mapping_range` finds this VMA through.
    pub mapping: Option<Arc<AddressSpace>>,
    /// A label for tables and errors (the file name in `/proc/<pid>/maps`).
    pub name: String,
}

impl fmt::Debug for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Vma({:#x}-{:#x} pgoff {:#x} [{}] {})",
            self.start,
            self.end,
            self.pgoff,
            self.flags.smaps(),
            self.name
        )
    }
}

impl Vma {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Never true: a VMA has at least one page.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// True if `addr` lies inside.
    pub fn contains(&self, addr: UserAddr) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `linear_page_index()`: the file page behind `addr`.
    pub fn linear_page_index(&self, addr: UserAddr) -> u64 {
        ((addr - self.start) >> 12) + self.pgoff
    }

    /// True for VM_IO or VM_PFNMAP (what `follow_pfnmap_start` accepts).
    pub fn is_pfnmap_or_io(&self) -> bool {
        self.flags.intersects(VmFlags::IO | VmFlags::PFNMAP)
    }

    /// True if a driver fault handler refills this VMA (zap, don't split, on partial unmaps).
    pub fn is_fault_backed(&self) -> bool {
        self.ops.is_some()
    }

    /// The part of this VMA from `at` on, with `vm_pgoff` advanced (`__split_vma`).
    pub(crate) fn split_off(&mut self, at: UserAddr) -> Vma {
        let mut tail = self.clone();
        tail.start = at;
        tail.pgoff = self.pgoff + ((at - self.start) >> 12);
        self.end = at;
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cow_rule_and_page_prot() {
        let shared_rw = VmFlags::READ
            | VmFlags::WRITE
            | VmFlags::SHARED
            | VmFlags::MAYWRITE
            | VmFlags::MAYSHARE;
        assert!(!shared_rw.is_cow_mapping());
        let private_rw = VmFlags::READ | VmFlags::WRITE | VmFlags::MAYWRITE;
        assert!(private_rw.is_cow_mapping());
        assert!(!VmFlags::READ.is_cow_mapping());
        assert!(vm_get_page_prot(shared_rw).is_writable());
        assert!(!vm_get_page_prot(private_rw).is_writable());
        assert_eq!(vm_get_page_prot(VmFlags::empty()), Pgprot::NONE);
        assert_eq!(pgprot_noncached(Pgprot::SHARED).cache, CacheMode::UcMinus);
        assert_eq!(
            (VmFlags::READ | VmFlags::PFNMAP | VmFlags::IO).smaps(),
            "rd pf io"
        );
    }
}
