//! `mprotect()`: `do_mprotect_pkey` → `mprotect_fixup` → `change_protection`.
//!
//! VMAs are split at the range's edges (a huge leaf straddling an edge is zapped in a fault-backed
//! VMA, split in place in a remap-populated one), `vm_flags` and `vm_page_prot` change (the memory
//! type is kept, as `vm_pgprot_modify` keeps the cache bits), whole leaves get the new protection
//! (`change_huge_pud`, `change_huge_pmd`, `change_pte_range`), secondary MMUs are told, and
//! neighbours merge where Linux would (never for VM_SPECIAL VMAs).
//!
//! Deliberate difference: a range with a hole is refused (`-ENOMEM`) before anything changes;
//! Linux changes the VMAs before the hole and then returns `-ENOMEM`.

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
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<MprotectStats, MmError> {
        let mut st = MprotectStats::default();
        if len == 0 && addr.is_multiple_of(4096) {
            return Ok(st);
        }
        let end = self
            .check_range("mprotect", addr, len)
            .map_err(|e| match e {
                MmError::Overflow { .. } => refused(Errno::ENOMEM, e.to_string()),
                other => other,
            })?;
        let mut tree = self.mmap_write();
        // The whole range must be mapped, and every VMA must allow the new protection.
        let mut cursor = addr;
        for v in tree.overlapping(addr, end) {
            if v.start > cursor {
                return Err(refused(
                    Errno::ENOMEM,
                    format!("{cursor:#x}..{:#x} is not mapped", v.start),
                ));
            }
            let want = prot.vm_flags();
            let may = VmFlags::from_bits_truncate((v.flags.bits() >> 4) & 0x7);
            if !may.contains(want) {
                return Err(refused(
                    Errno::EACCES,
                    format!("VMA {:#x}..{:#x} may not become {want:?}", v.start, v.end),
                ));
            }
            cursor = v.end;
        }
        if cursor < end {
            return Err(refused(
                Errno::ENOMEM,
                format!("{cursor:#x}..{end:#x} is not mapped"),
            ));
        }
        st.splits += u64::from(self.split_vma_at(&mut tree, addr)?);
        st.splits += u64::from(self.split_vma_at(&mut tree, end)?);
        let keys: Vec<u64> = tree.overlapping(addr, end).map(|v| v.start).collect();
        for k in keys {
            let Some(v) = tree.vmas.get_mut(&k) else {
                continue;
            };
            let flags =
                (v.flags - (VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)) | prot.vm_flags();
            let newprot: Pgprot = vm_get_page_prot(flags).with_cache(v.page_prot.cache);
            v.flags = flags;
            v.page_prot = newprot;
            let (s, e) = (v.start, v.end);
            let c = self.pt.change_protection(s, e, newprot);
            st.leaves.pud += c.pud;
            st.leaves.pmd += c.pmd;
            st.leaves.pte += c.pte;
            st.vmas += 1;
        }
        st.merges = self.merge_around(&mut tree, addr, end);
        Ok(st)
    }
}
