//! fork: `dup_mmap` and `copy_page_range` for pfnmaps.
//!
//! Models `kernel/fork.c` (`dup_mmap`: VM_DONTCOPY VMAs are not copied, VM_WIPEONFORK ones get no
//! entries, each copy is linked into its file's reverse map so revocation reaches the child) and
//! `mm/memory.c`/`mm/huge_memory.c` (`vma_needs_copy`: VM_PFNMAP|VM_MIXEDMAP VMAs are copied, not
//! refaulted; `__copy_present_ptes`: a CoW mapping's writable entries are write-protected in
//! both, shared ones made clean; `copy_huge_pmd`/`copy_huge_pud` after bc02afbd4d73: special
//! leaves copied as they are, made old, the write bit kept — and, since 47fa30118f02, `special`
//! is only looked at on a *present* entry: a non-present huge entry (a migration entry) whose
//! software bits happen to include bit 9 is copied as the non-present entry it is).

use crate::addr::UserAddr;
use crate::sync::atomic::Ordering;
use std::sync::Arc;

use crate::entry::{Decoded, ProtFlags};
use crate::error::MmError;
use crate::fault::FaultStats;
use crate::level::Level;
use crate::mm::{Mm, VmaTree};
use crate::pgtable::{PageTables, WalkError};
use crate::vma::VmFlags;
use hugepfn_pt::Step;

/// What a fork copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForkStats {
    /// VMAs copied.
    pub vmas: u64,
    /// VMAs left out (VM_DONTCOPY).
    pub skipped_vmas: u64,
    /// Leaves copied, by level.
    pub leaves: crate::pgtable::LeafCounts,
    /// Entries write-protected in the parent (CoW).
    pub wrprotected: u64,
    /// Non-present entries copied verbatim.
    pub non_present: u64,
    /// `VM_WARN_ON_ONCE(is_cow_mapping && pxd_write)` on a special leaf: must stay 0.
    pub warnings: u64,
}

// A plain std atomic: shared by every shuttle execution, not part of any protocol.
static FORK_WARNINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How often the fork sanity check fired in this process (tests look at it).
pub fn fork_warnings() -> u64 {
    FORK_WARNINGS.load(Ordering::Relaxed)
}

impl Mm {
    /// `fork()`: a child address space sharing the parent's pfnmaps.
    pub fn fork(&self) -> Result<(Arc<Mm>, ForkStats), MmError> {
        let child = Mm::new(self.pt.phys().clone(), self.cfg)?;
        let mut st = ForkStats::default();
        // dup_mmap holds the parent's mmap lock for write.
        let parent_tree = self.mmap_write();
        let mut child_tree = child.mmap_write();
        for vma in parent_tree.vmas.values() {
            if vma.flags.contains(VmFlags::DONTCOPY) {
                st.skipped_vmas += 1;
                continue;
            }
            let copy_entries = vma.flags.intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP)
                && !vma.flags.contains(VmFlags::WIPEONFORK);
            if copy_entries {
                copy_range(&self.pt, &child.pt, vma.start, vma.end, vma.flags, &mut st)
                    .map_err(MmError::from)?;
            }
            if let Some(o) = &vma.ops {
                o.open(vma);
            }
            child.link(&mut child_tree, vma.clone());
            st.vmas += 1;
        }
        if st.wrprotected > 0 {
            // The parent's TLB must forget the writable entries it had: one flush
            // (`dup_mmap`'s `flush_tlb_mm`) over its CoW mappings.
            let mut tlb = self.pt.tlb_gather_mmu();
            for v in parent_tree.vmas.values() {
                if v.flags.is_cow_mapping() {
                    tlb.add_range(v.start, v.end, crate::pgtable::FlushReason::ForkWrprotect);
                }
            }
            tlb.finish();
        }
        drop(child_tree);
        let _: &VmaTree = &parent_tree;
        drop(parent_tree);
        FORK_WARNINGS.fetch_add(st.warnings, Ordering::Relaxed);
        Ok((child, st))
    }

    /// The fault counters of this process.
    pub fn fault_stats(&self) -> &FaultStats {
        &self.stats
    }
}

fn copy_range(
    src: &PageTables,
    dst: &PageTables,
    start: UserAddr,
    end: UserAddr,
    flags: VmFlags,
    st: &mut ForkStats,
) -> Result<(), WalkError> {
    let cow = flags.is_cow_mapping();
    let shared = flags.contains(VmFlags::SHARED);
    let mut items: Vec<(UserAddr, Level, u64)> = Vec::new();
    collect(src, start, end, &mut items);
    for (va, level, raw) in items {
        let slot_src = src
            .slot(va, level)?
            .ok_or(WalkError::Vanished(va.as_u64(), level))?;
        let new_raw = match src.decode_raw(raw, level) {
            // Present checked before special (47fa30118f02): non-present entries are copied as
            // they are, whatever their software bits say.
            Decoded::NonPresent(r) => {
                st.non_present += 1;
                r
            }
            Decoded::Leaf(mut l) => {
                let special = l.prot.is_special();
                if special && level != Level::Pte && cow && l.prot.is_writable() {
                    st.warnings += 1;
                }
                if cow && l.prot.is_writable() {
                    // Write-protect both (the parent under its lock).
                    l.prot.flags.remove(ProtFlags::WRITE);
                    let ptl = src.ptl(slot_src);
                    if let Ok(p) = src.encode_leaf(l) {
                        ptl.set(slot_src, p);
                    }
                    st.wrprotected += 1;
                }
                if !special {
                    src.phys().get_page(l.pfn);
                }
                if level == Level::Pte && shared {
                    l.prot.flags.remove(ProtFlags::DIRTY);
                }
                l.prot.flags.remove(ProtFlags::ACCESSED);
                st.leaves.add(level, 1);
                src.encode_leaf(l)?
            }
            Decoded::None | Decoded::Table(_) => continue,
        };
        let slot = dst.slot_alloc(va, level)?;
        dst.ptl(slot).set(slot, new_raw);
    }
    Ok(())
}

/// Every leaf or non-present entry whose first byte is in `[start, end)`, with its level and
/// raw value (the part of `copy_page_range` that reads the parent).
fn collect(pt: &PageTables, start: UserAddr, end: UserAddr, out: &mut Vec<(UserAddr, Level, u64)>) {
    let _ = pt.tree().walk_range::<WalkError>(start, end, &mut |_, v| {
        Ok(match v.entry {
            Decoded::None => Step::Next,
            Decoded::Table(_) => Step::Descend,
            Decoded::Leaf(_) | Decoded::NonPresent(_) => {
                if v.base >= start {
                    out.push((v.base, v.slot.level, v.raw));
                }
                Step::Next
            }
        })
    });
}
