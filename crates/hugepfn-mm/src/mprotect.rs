//! `mprotect()`: `do_mprotect_pkey` → `mprotect_fixup` → `change_protection`.
//!
//! VMAs are split at the range's edges (a huge leaf straddling an edge is zapped in a fault-backed
//! VMA, split in place in a remap-populated one), `vm_flags` and `vm_page_prot` change (the memory
//! type is kept, as `vm_pgprot_modify` keeps the cache bits), whole leaves get the new protection
//! (`change_huge_pud`, `change_huge_pmd`, `change_pte_range`), secondary MMUs are told, and
//! neighbours merge where Linux would (never for VM_SPECIAL VMAs).
//!
//! As in Linux, a range with a hole changes the VMAs before the hole and then fails with
//! `-ENOMEM`, and a VMA whose flags would not change is not split (`hugepfn fuzz` found the
//! model doing neither).

use crate::addr::UserAddr;
use crate::entry::Pgprot;
use crate::error::{Errno, MmError};
use crate::mm::{Mm, Prot};
use crate::pgtable::LeafCounts;
use crate::vma::{VmFlags, vm_get_page_prot};

/// What an mprotect changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MprotectStats {
    /// VMAs changed.
    pub vmas: u64,
    /// VMA splits.
    pub splits: u64,
    /// VMA merges.
    pub merges: u64,
    /// Leaves whose protection changed.
    pub leaves: LeafCounts,
}

fn refused(errno: Errno, reason: String) -> MmError {
    MmError::Refused {
        op: "mprotect",
        errno,
        reason,
    }
}

impl Mm {
    /// `mprotect(addr, len, prot)`.
    pub fn mprotect(&self, addr: UserAddr, len: u64, prot: Prot) -> Result<MprotectStats, MmError> {
        let mut st = MprotectStats::default();
        if len == 0 && addr.is_aligned(self.page_size()) {
            return Ok(st);
        }
        self.check_page_aligned(addr)?;
        // PAGE_ALIGN(len); `end <= start` is ENOMEM, and nothing else: a range past TASK_SIZE
        // is a hole like any other (found by `hugepfn fuzz`)
        let end = self
            .page_align(len)
            .and_then(|l| addr.checked_add(l))
            .filter(|&e| e > addr)
            .ok_or_else(|| refused(Errno::ENOMEM, format!("{addr:#x}+{len:#x} wraps")))?;
        let mut tree = self.mmap_write();
        // do_mprotect_pkey: the first VMA must hold `addr`; then VMA by VMA up to `end`, each
        // checked (EACCES) and changed (mprotect_fixup: split only where the flags change),
        // until a hole: what was changed stays changed and the call says ENOMEM.
        match tree.overlapping(addr, end).next() {
            Some(v) if v.start <= addr => {}
            _ => {
                return Err(refused(Errno::ENOMEM, format!("{addr:#x} is not mapped")));
            }
        }
        let want = prot.vm_flags();
        // One mmu_gather for the whole call: one flush at the end (do_mprotect_pkey).
        let mut tlb = self.pt.tlb_gather_mmu();
        let mut cursor = addr;
        let mut error = None;
        while cursor < end {
            let Some(v) = tree.find(cursor).cloned() else {
                error = Some(refused(
                    Errno::ENOMEM,
                    format!("{cursor:#x}..{end:#x} is not mapped"),
                ));
                break;
            };
            let may = VmFlags::from_bits_truncate((v.flags.bits() >> 4) & 0x7);
            if !may.contains(want) {
                error = Some(refused(
                    Errno::EACCES,
                    format!("VMA {:#x}..{:#x} may not become {want:?}", v.start, v.end),
                ));
                break;
            }
            let piece_end = v.end.min(end);
            let flags = (v.flags - (VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)) | want;
            if flags != v.flags {
                st.splits += u64::from(self.split_vma_at(&mut tree, cursor)?);
                st.splits += u64::from(self.split_vma_at(&mut tree, piece_end)?);
                self.split_straddling(&tree, cursor)?;
                self.split_straddling(&tree, piece_end)?;
                if let Some(v) = tree.vmas.get_mut(&cursor) {
                    let newprot: Pgprot = vm_get_page_prot(flags).with_cache(v.page_prot.cache);
                    v.flags = flags;
                    v.page_prot = newprot;
                    let c = self
                        .pt
                        .change_protection(&mut tlb, cursor, piece_end, newprot);
                    st.leaves.pud += c.pud;
                    st.leaves.pmd += c.pmd;
                    st.leaves.pte += c.pte;
                    st.vmas += 1;
                }
            }
            cursor = piece_end;
        }
        tlb.finish();
        st.merges = self.merge_around(&mut tree, addr, end);
        match error {
            Some(e) => Err(e),
            None => Ok(st),
        }
    }
}
