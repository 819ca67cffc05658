//! `follow_pfnmap_start()` / `follow_pfnmap_end()`: look up what maps an address in a VM_IO or
//! VM_PFNMAP VMA, at whatever level, without handing out the entry itself.
//!
//! Models `mm/memory.c` as fixed by "mm/memory: fix PMD/PUD checks in follow_pfnmap_start()"
//! (upstream.md §3.10): the leaf is found locklessly, then its page-table lock is taken and the
//! entry re-read; gone or not present → `-EINVAL`, turned into a table → walk again. The lock is
//! held until `end`: here the [`FollowPfnmap`] guard, whose drop is `follow_pfnmap_end`, and which
//! borrows the mmap read lock so the lock cannot be released first (the kerneldoc's rule).

use crate::addr::UserAddr;
use crate::addr::{Pfn, VirtAddr};
use crate::entry::{self, Decoded, Pgprot};
use crate::error::MmError;
use crate::level::Level;
use crate::mm::{Mm, MmapRead};
use crate::pgtable::LockedLeaf;

/// `struct follow_pfnmap_args`, output half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowPfnmapArgs {
    /// The pfn of the page holding the address (leaf base pfn + the page's offset in the
    /// leaf), in 4 KiB frames as every model pfn: with 16 KiB pages, the page's first frame.
    pub pfn: Pfn,
    /// `addr_mask`: `PAGE_MASK`, `PMD_MASK` or `PUD_MASK` of the leaf (6.15+).
    pub addr_mask: u64,
    /// The leaf's protection.
    pub pgprot: Pgprot,
    /// `pte_write()`.
    pub writable: bool,
    /// `pte_special()`.
    pub special: bool,
    /// The leaf's level (what `addr_mask` encodes).
    pub level: Level,
}

impl FollowPfnmapArgs {
    /// Bytes from the address to the end of its leaf.
    pub fn bytes_to_leaf_end(&self, addr: UserAddr) -> u64 {
        (addr.as_u64() | !self.addr_mask) - addr.as_u64() + 1
    }
}

/// The result of `follow_pfnmap_start`, valid while held; dropping it is `follow_pfnmap_end`.
pub struct FollowPfnmap<'a> {
    /// The page-table lock, held inside the walk's RCU section.
    _locked: LockedLeaf<'a>,
    /// What was found.
    pub args: FollowPfnmapArgs,
    /// Where the entry lives (its lock is held until the guard drops).
    pub slot: crate::pgtable::Slot,
}

impl std::fmt::Debug for FollowPfnmap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowPfnmap")
            .field("args", &self.args)
            .finish()
    }
}

impl FollowPfnmap<'_> {
    /// `follow_pfnmap_end()`: drops the page-table lock, then leaves the RCU section
    /// (`pte_unmap_unlock`).
    pub fn end(self) {}
}

impl MmapRead<'_> {
    /// `follow_pfnmap_start(args)` for `addr`, with the mmap lock held by `self`.
    pub fn follow_pfnmap_start(&self, addr: VirtAddr) -> Result<FollowPfnmap<'_>, MmError> {
        let addr = UserAddr::from(addr);
        let vma = self.find_vma(addr).ok_or(MmError::NoVma(addr))?;
        if !vma.is_pfnmap_or_io() {
            return Err(MmError::NotPfnmap(vma.start));
        }
        let pt = self.mm().page_tables();
        loop {
            // `pte_offset_map_lock`: the lock is taken inside the walk's RCU section, on the
            // table the walk reached while it is still linked.
            let Some(locked) = pt.lookup_lock(addr) else {
                return Err(MmError::NotMapped(addr));
            };
            let slot = locked.slot;
            // Re-read under the lock (§3.10); the buggy variant trusts the lockless read.
            let now = if pt.bugs().contains(crate::pgtable::Bugs::FOLLOW_NO_RECHECK) {
                locked.seen
            } else {
                locked.now
            };
            match pt.decode_raw(now, slot.level) {
                Decoded::Leaf(l) if l.prot.is_present() => {
                    if !l.prot.flags.contains(entry::ProtFlags::PRESENT) {
                        return Err(MmError::NotMapped(addr));
                    }
                    let g = pt.geometry();
                    let size = g.size(slot.level);
                    // the pfn of the page holding addr (its first 4 KiB frame)
                    let off = (addr.offset_in(size) & !(g.page_size() - 1)) >> 12;
                    let pfn = l.pfn.checked_add(off).ok_or(MmError::NotMapped(addr))?;
                    return Ok(FollowPfnmap {
                        _locked: locked,
                        slot,
                        args: FollowPfnmapArgs {
                            pfn,
                            addr_mask: !(size - 1),
                            pgprot: l.prot,
                            writable: l.prot.is_writable(),
                            special: l.prot.is_special(),
                            level: slot.level,
                        },
                    });
                }
                // Became a table under us: walk again.
                Decoded::Table(_) => continue,
                _ => return Err(MmError::NotMapped(addr)),
            }
        }
    }
}

impl Mm {
    /// `follow_pfnmap_start` + copy + `follow_pfnmap_end`, taking the mmap lock for read.
    pub fn follow_pfnmap(&self, addr: VirtAddr) -> Result<FollowPfnmapArgs, MmError> {
        let g = self.mmap_read();
        let f = g.follow_pfnmap_start(addr)?;
        Ok(f.args)
    }
}
