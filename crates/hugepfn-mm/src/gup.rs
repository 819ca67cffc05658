//! get_user_pages and friends on pfnmaps.
//!
//! Models `mm/gup.c`: `get_user_pages_fast` walks without locks and refuses special entries at
//! every level (`gup_fast_pte_range` checks `pte_special`; since ae3c99e650da `gup_fast_pmd_leaf`/
//! `gup_fast_pud_leaf` refuse `pmd_special`/`pud_special`), so on a pfnmap it pins fewer pages
//! than asked — no error; slow GUP refuses VM_IO|VM_PFNMAP VMAs with `-EFAULT`
//! (`check_vma_flags`); and `fixup_user_fault`, which callers that need a pfnmap present
//! (vfio type1, KVM's `hva_to_pfn_remapped`) use to fault it in and then `follow_pfnmap_start`.

use crate::addr::UserAddr;
use crate::entry::ProtFlags;
use crate::error::{Errno, MmError};
use crate::fault::{FaultFlags, VmFaultResult, access_error};
use crate::mm::Mm;
use crate::vma::VmFlags;

/// `FOLL_*` flags that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollFlags {
    /// `FOLL_WRITE`.
    pub write: bool,
    /// `FOLL_LONGTERM`.
    pub longterm: bool,
}

/// What gup-fast pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GupFast {
    /// Pages pinned, from the start of the range (stops at the first refused page).
    pub pinned: u64,
    /// Why it stopped, if it did: "special", "not present", "read-only".
    pub stopped: Option<&'static str>,
}

impl Mm {
    /// `get_user_pages_fast(start, nr_pages, gup_flags)`: lockless; special entries (pfnmaps at
    /// any level) are refused, and so is a write to a read-only entry.
    pub fn get_user_pages_fast(&self, start: UserAddr, nr_pages: u64, flags: FollFlags) -> GupFast {
        let pt = self.page_tables();
        let mut out = GupFast::default();
        for i in 0..nr_pages {
            // a range that wraps is refused as not present (Linux: check_add_overflow)
            let Some(addr) = i
                .checked_mul(self.page_size())
                .and_then(|o| start.checked_add(o))
            else {
                out.stopped = Some("not present");
                return out;
            };
            let Some((leaf, _)) = pt.lookup(addr) else {
                out.stopped = Some("not present");
                return out;
            };
            if !leaf.prot.flags.contains(ProtFlags::PRESENT) {
                out.stopped = Some("not present");
                return out;
            }
            if leaf.prot.is_special() {
                out.stopped = Some("special");
                return out;
            }
            if flags.write && !leaf.prot.is_writable() {
                out.stopped = Some("read-only");
                return out;
            }
            out.pinned += 1;
        }
        out
    }

    /// `get_user_pages_remote`/`pin_user_pages` (slow GUP): `-EFAULT` on VM_IO|VM_PFNMAP VMAs
    /// (`check_vma_flags`), faulting in ordinary pages otherwise. Returns the pages pinned.
    pub fn get_user_pages(
        &self,
        start: UserAddr,
        nr_pages: u64,
        flags: FollFlags,
    ) -> Result<u64, Errno> {
        for i in 0..nr_pages {
            let addr = i
                .checked_mul(self.page_size())
                .and_then(|o| start.checked_add(o))
                .ok_or(Errno::EFAULT)?;
            let vma = self.find_vma(addr).ok_or(Errno::EFAULT)?;
            if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
                return if i == 0 { Err(Errno::EFAULT) } else { Ok(i) };
            }
            if access_error(&vma, flags.write) {
                return if i == 0 { Err(Errno::EFAULT) } else { Ok(i) };
            }
            if self.get_user_pages_fast(addr, 1, flags).pinned == 0 {
                let mut ff = FaultFlags::REMOTE;
                if flags.write {
                    ff |= FaultFlags::WRITE;
                }
                let o = self.handle_mm_fault(addr, ff).map_err(|_| Errno::EFAULT)?;
                if o.result.is_error() {
                    return if i == 0 { Err(Errno::EFAULT) } else { Ok(i) };
                }
            }
        }
        Ok(nr_pages)
    }

    /// `fixup_user_fault(mm, address, fault_flags, &unlocked)`: fault `addr` in as if user space
    /// had touched it. `-EFAULT` for no VMA, a forbidden access, or a fault that ends in SIGBUS or
    /// SIGSEGV (vfio revoked, memory disabled); `-ENOMEM` on OOM.
    pub fn fixup_user_fault(&self, addr: UserAddr, write: bool) -> Result<(), Errno> {
        let mut ff = FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY;
        if write {
            ff |= FaultFlags::WRITE;
        }
        match self.handle_mm_fault(addr, ff) {
            Err(MmError::NoVma(_)) | Err(_) => Err(Errno::EFAULT),
            Ok(o) => match o.result {
                VmFaultResult::Oom => Err(Errno::ENOMEM),
                r if r.is_error() => Err(Errno::EFAULT),
                _ => Ok(()),
            },
        }
    }
}
