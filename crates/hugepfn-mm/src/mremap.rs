//! `mremap()`: shrink, move (MREMAP_MAYMOVE, MREMAP_FIXED) and the refused expand of pfnmaps.
//!
//! Models `mm/mremap.c` (6.12): `vma_to_resize` (`-EFAULT` when the old range is not inside one
//! VMA, or when a VM_DONTEXPAND|VM_PFNMAP mapping would grow), `mremap_to` (the destination is
//! unmapped first, MAP_FIXED-style; overlapping ranges are `-EINVAL`), `move_vma` with
//! `move_page_tables`: a huge leaf moves whole when the new address keeps its alignment,
//! otherwise it is split — which for a pfnmap means zapped, to be refaulted (fault-backed) — or,
//! for remap-populated VMAs that nothing would refill, split in place and moved in pieces.
//! From Linux 6.17 (d23cb648e365, [`crate::MmConfig::mremap_moves_multiple_vmas`]) an
//! MREMAP_FIXED move that keeps the length moves every VMA in the old range (`remap_move`);
//! 6.12 refuses a range over more than one VMA with EFAULT.

use crate::addr::UserAddr;
use crate::error::{Errno, MmError};
use crate::mm::Mm;
use crate::pgtable::{LeafCounts, PartialHuge};
use crate::vma::VmFlags;

/// `MREMAP_*` and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MremapFlags {
    /// `MREMAP_MAYMOVE`.
    pub maymove: bool,
    /// `MREMAP_FIXED` with this destination.
    pub fixed: Option<UserAddr>,
}

/// What an mremap did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MremapStats {
    /// The mapping's address now.
    pub addr: UserAddr,
    /// Leaves moved whole.
    pub moved: LeafCounts,
    /// Leaves zapped (to be refaulted at the new place).
    pub zapped: LeafCounts,
}

fn refused(errno: Errno, reason: String) -> MmError {
    MmError::Refused {
        op: "mremap",
        errno,
        reason,
    }
}

impl Mm {
    /// `mremap(old_addr, old_len, new_len, flags, new_addr)`.
    pub fn mremap(
        &self,
        old_addr: UserAddr,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
    ) -> Result<MremapStats, MmError> {
        let einval = |why: String| refused(Errno::EINVAL, why);
        if flags.fixed.is_some() && !flags.maymove {
            return Err(einval("MREMAP_FIXED needs MREMAP_MAYMOVE".into()));
        }
        if !old_addr.is_aligned(self.page_size()) {
            return Err(einval(format!(
                "old address {old_addr:#x} not page aligned"
            )));
        }
        // PAGE_ALIGN of both lengths (a length that wraps becomes 0)
        let align = |l: u64| self.page_align(l).unwrap_or(0);
        let (mut old_len, new_len) = (align(old_len), align(new_len));
        if new_len == 0 {
            return Err(einval("the new length is 0".into()));
        }
        if self.find_vma(old_addr).is_none() {
            return Err(refused(Errno::EFAULT, format!("no VMA at {old_addr:#x}")));
        }
        // vma_to_resize: the old range inside one VMA; a pfnmap never grows
        let vma_to_resize = |old_len: u64| -> Result<crate::vma::Vma, MmError> {
            let vma = self
                .find_vma(old_addr)
                .ok_or_else(|| refused(Errno::EFAULT, format!("no VMA at {old_addr:#x}")))?;
            if old_len > vma.end - old_addr {
                return Err(refused(
                    Errno::EFAULT,
                    "the old range is not inside one VMA".into(),
                ));
            }
            if new_len > old_len && vma.flags.intersects(VmFlags::DONTEXPAND | VmFlags::PFNMAP) {
                return Err(refused(
                    Errno::EFAULT,
                    "a VM_DONTEXPAND|VM_PFNMAP mapping cannot grow".into(),
                ));
            }
            Ok(vma)
        };
        let dst = match flags.fixed {
            // mremap_to: check the destination, unmap it, drop the old tail, then resize
            Some(d) => {
                if !d.is_aligned(self.page_size()) {
                    return Err(einval(format!("new address {d:#x} not page aligned")));
                }
                let dend = self
                    .check_syscall_range("mremap", d, new_len)
                    .map_err(|e| einval(e.to_string()))?;
                if old_addr.saturating_add(old_len) > d && old_addr < dend {
                    return Err(einval("old and new ranges overlap".into()));
                }
                if self.cfg.mremap_moves_multiple_vmas && old_len == new_len {
                    return self.remap_move(old_addr, old_len, d);
                }
                self.munmap(d, new_len)?;
                if old_len > new_len {
                    self.munmap(old_addr + new_len, old_len - new_len)?;
                    old_len = new_len;
                }
                vma_to_resize(old_len)?;
                d
            }
            None => {
                // Always allow a shrinking remap, whatever VMAs the old range covers.
                if old_len >= new_len {
                    if old_len > new_len {
                        self.munmap(old_addr + new_len, old_len - new_len)?;
                    }
                    return Ok(MremapStats {
                        addr: old_addr,
                        ..MremapStats::default()
                    });
                }
                let vma = vma_to_resize(old_len)?;
                if !flags.maymove {
                    return Err(refused(Errno::ENOMEM, "cannot grow in place".into()));
                }
                // the file offset of old_addr: vm_pgoff + ((addr - vm_start) >> PAGE_SHIFT)
                let pgoff_bytes = (vma.pgoff << 12).wrapping_add(old_addr - vma.start);
                self.get_unmapped_area(new_len, pgoff_bytes)?
            }
        };
        let move_len = old_len.min(new_len);
        let (moved, zapped) = self.move_piece(old_addr, move_len, dst)?;
        Ok(MremapStats {
            addr: dst,
            moved,
            zapped,
        })
    }

    /// `move_vma` of `[old_addr, old_addr + len)`, inside one VMA, to `dst` (already free).
    fn move_piece(
        &self,
        old_addr: UserAddr,
        len: u64,
        dst: UserAddr,
    ) -> Result<(LeafCounts, LeafCounts), MmError> {
        let mut tree = self.mmap_write();
        // A corrupt table under the range would stop the move halfway: refuse it first.
        self.pt.check_tables(old_addr, old_addr + len)?;
        self.split_vma_at(&mut tree, old_addr)?;
        self.split_vma_at(&mut tree, old_addr + len)?;
        self.split_straddling(&tree, old_addr)?;
        self.split_straddling(&tree, old_addr + len)?;
        let piece = self
            .unlink(&mut tree, old_addr)
            .ok_or_else(|| refused(Errno::EFAULT, "VMA vanished".into()))?;
        let policy = if piece.is_fault_backed() {
            PartialHuge::ZapWhole
        } else {
            PartialHuge::Split
        };
        let (moved, zapped) = match self.pt.move_page_tables(old_addr, dst, len, policy) {
            Ok(m) => m,
            Err(e) => {
                // Out of memory for a destination table (the tree was checked above): the VMA
                // stays where it was, so that nothing mapped is left without one; extents
                // moved before the failure stay at `dst` (Linux moves them back).
                self.link(&mut tree, piece);
                return Err(e.into());
            }
        };
        let mut newv = piece.clone();
        newv.start = dst;
        newv.end = dst + len;
        self.link(&mut tree, newv);
        let floor = tree.floor(old_addr);
        let ceiling = tree.ceiling(old_addr + len);
        let mut tlb = self.pt.tlb_gather_mmu();
        self.pt
            .free_pgtables(&mut tlb, old_addr, old_addr + len, floor, ceiling);
        tlb.finish();
        Ok((moved, zapped))
    }

    /// `remap_move` (d23cb648e365, Linux 6.17): an MREMAP_FIXED move that keeps the length
    /// moves every VMA of the old range, each to the same offset from `dst` (gaps between them
    /// kept), each target unmapped first (`mremap_to` per VMA); a gap at the start is EFAULT.
    fn remap_move(
        &self,
        old_addr: UserAddr,
        len: u64,
        dst: UserAddr,
    ) -> Result<MremapStats, MmError> {
        let end = old_addr + len;
        let pieces: Vec<(UserAddr, UserAddr)> = {
            let tree = self.mmap_read();
            tree.vmas()
                .overlapping(old_addr, end)
                .map(|v| (v.start.max(old_addr), v.end.min(end)))
                .collect()
        };
        if pieces.first().is_none_or(|&(a, _)| a > old_addr) {
            return Err(refused(Errno::EFAULT, format!("no VMA at {old_addr:#x}")));
        }
        let mut st = MremapStats {
            addr: dst,
            ..MremapStats::default()
        };
        for (a, b) in pieces {
            let target = dst + (a - old_addr);
            self.munmap(target, b - a)?;
            let (m, z) = self.move_piece(a, b - a, target)?;
            st.moved.pud += m.pud;
            st.moved.pmd += m.pmd;
            st.moved.pte += m.pte;
            st.zapped.pud += z.pud;
            st.zapped.pmd += z.pmd;
            st.zapped.pte += z.pte;
        }
        Ok(st)
    }
}
