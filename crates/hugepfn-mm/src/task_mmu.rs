//! The /proc readers of `fs/proc/task_mmu.c` and `mincore(2)` of `mm/mincore.c`, each with its
//! ops table on the generic walker ([`crate::pagewalk`]) and its VMA filter, as Linux 6.12 and
//! 7.3 define them:
//!
//! | reader | entry point | filter | callbacks |
//! |---|---|---|---|
//! | `smaps`, `smaps_rollup` | `walk_page_vma` per VMA | none | `pmd_entry` (`smaps_pte_range`) |
//! | `numa_maps` | `walk_page_vma` per VMA | none | `pmd_entry` (`gather_pte_stats`) |
//! | `pagemap` (read) | `walk_page_range` | VM_PFNMAP → `pte_hole` | `pmd_entry`, `pte_hole` |
//! | `clear_refs` ("1") | `walk_page_range` | `test_walk`: VM_PFNMAP skipped | `pmd_entry` |
//! | `mincore` 6.12 | `walk_page_range` | VM_PFNMAP → `pte_hole` (page cache: 0) | `pmd_entry`, `pte_hole` |
//! | `mincore` 7.3 | `walk_page_range_vma` | none | `pud_entry` (a leaf: 1s, `ACTION_CONTINUE`), `pmd_entry`, `pte_hole` |
//!
//! `vm_normal_page` of a special entry is NULL, so none of them counts a BAR page (smaps: Rss 0 kB,
//! `KernelPageSize: 4 kB` whatever the leaf). But smaps and numa_maps have a `pmd_entry` and no
//! `pud_entry` and walk VM_PFNMAP VMAs: on the kernels (bug `pagewalk_splits_pfnmap_pud`) their
//! walk zaps every 1 GiB leaf of a BAR; the corrected design walks past it.

use std::fmt::Write as _;

use crate::addr::{PAGE_SHIFT, Pfn, UserAddr};
use crate::entry::Decoded;
use crate::error::{Errno, MmError};
use crate::level::{Geometry, Level};
use crate::mm::Mm;
use crate::pagewalk::{
    MmWalkOps, TestWalk, WalkAction, WalkEntry, WalkError, WalkStats, for_each_pte,
};
use crate::pgtable::PageTables;
use crate::vma::{VmFlags, Vma};

/// `/proc/PID/<file>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcFile {
    /// `smaps`.
    Smaps,
    /// `smaps_rollup`.
    SmapsRollup,
    /// `numa_maps`.
    NumaMaps,
    /// `pagemap` (read).
    Pagemap,
    /// `clear_refs` (written "1").
    ClearRefs,
}

/// What one read (or write) of a /proc file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcRead {
    /// The text the file shows (smaps, smaps_rollup, numa_maps), as the model renders it.
    pub text: String,
    /// `pagemap` entries, one per page (`PAGE_SIZE`) of the range read, pfns in pages.
    pub pagemap: Vec<u64>,
    /// What the walks did.
    pub walk: WalkStats,
}

/// `PM_PRESENT` (bit 63) of a pagemap entry.
pub const PM_PRESENT: u64 = 1 << 63;

/// `vm_normal_page()` / `vm_normal_page_pmd()`: a leaf with a `struct page` behind it.
fn normal(e: &Decoded) -> bool {
    matches!(e, Decoded::Leaf(l) if !l.prot.is_special())
}

/// `smaps_pte_range` / `gather_pte_stats`: resident bytes of normal pages.
#[derive(Debug, Default)]
struct Resident {
    bytes: u64,
}

impl MmWalkOps for Resident {
    fn has_pmd_entry(&self) -> bool {
        true
    }
    fn pmd_entry(&mut self, pt: &PageTables, e: &WalkEntry, _vma: &Vma) -> WalkAction {
        match e.entry {
            Decoded::Table(t) => {
                let page = pt.geometry().page_size();
                for_each_pte(pt, t, e.addr, e.end, |_, pte| {
                    if normal(&pte) {
                        self.bytes += page;
                    }
                })
            }
            ref leaf if normal(leaf) => self.bytes += e.end - e.addr,
            _ => {}
        }
        WalkAction::Subtree
    }
}

/// `pagemap_ops`: one entry per page; holes and skipped VMAs read as not present. The pfns are
/// Linux's, in `PAGE_SIZE` units.
struct PagemapOps {
    out: Vec<u64>,
    geom: Geometry,
}

impl PagemapOps {
    fn fill(&mut self, start: UserAddr, end: UserAddr, v: impl Fn(UserAddr) -> u64) {
        let mut va = start;
        while va < end {
            self.out.push(v(va));
            va += self.geom.page_size();
        }
    }

    /// A model pfn (4 KiB frames) as pagemap writes it (`PAGE_SIZE` pages).
    fn pfn(&self, pfn: Pfn) -> u64 {
        pfn.as_u64() >> (self.geom.page_shift() - PAGE_SHIFT)
    }
}

impl MmWalkOps for PagemapOps {
    fn has_pmd_entry(&self) -> bool {
        true
    }
    fn has_pte_hole(&self) -> bool {
        true
    }
    fn pte_hole(&mut self, s: UserAddr, e: UserAddr, _: Option<&Vma>) -> Result<(), Errno> {
        self.fill(s, e, |_| 0);
        Ok(())
    }
    fn pmd_entry(&mut self, pt: &PageTables, e: &WalkEntry, _vma: &Vma) -> WalkAction {
        match e.entry {
            Decoded::Table(t) => {
                let mut v = Vec::new();
                for_each_pte(pt, t, e.addr, e.end, |_, pte| {
                    v.push(match pte {
                        Decoded::Leaf(l) => PM_PRESENT | self.pfn(l.pfn),
                        _ => 0,
                    });
                });
                self.out.extend(v);
            }
            Decoded::Leaf(l) => {
                let g = self.geom;
                let base = g.align_down(Level::Pmd, e.addr);
                let first = self.pfn(l.pfn);
                self.fill(e.addr, e.end, |va| {
                    PM_PRESENT | (first + ((va - base) >> g.page_shift()))
                });
            }
            _ => self.fill(e.addr, e.end, |_| 0),
        }
        WalkAction::Continue
    }
}

/// `clear_refs_walk_ops`: `clear_refs_test_walk` skips VM_PFNMAP (and nothing in the model
/// keeps an accessed bit to clear elsewhere).
struct ClearRefsOps;

impl MmWalkOps for ClearRefsOps {
    fn has_pmd_entry(&self) -> bool {
        true
    }
    fn has_test_walk(&self) -> bool {
        true
    }
    fn test_walk(&mut self, vma: &Vma) -> TestWalk {
        if vma.flags.contains(VmFlags::PFNMAP) {
            TestWalk::Skip
        } else {
            TestWalk::Walk
        }
    }
}

/// `mincore_walk_ops`: 1 per resident page. With `pud_entry` (7.3) a PUD leaf is 1s and the
/// walk does not descend; a hole of a file VMA looks the page cache up (a device has none: 0).
struct MincoreOps {
    vec: Vec<u8>,
    pud_entry: bool,
    page_shift: u32,
}

impl MincoreOps {
    fn fill(&mut self, start: UserAddr, end: UserAddr, v: u8) {
        let n = (end.as_u64().saturating_sub(start.as_u64()) >> self.page_shift) as usize;
        self.vec.extend(std::iter::repeat_n(v, n));
    }
}

impl MmWalkOps for MincoreOps {
    fn has_pud_entry(&self) -> bool {
        self.pud_entry
    }
    fn has_pmd_entry(&self) -> bool {
        true
    }
    fn has_pte_hole(&self) -> bool {
        true
    }
    fn pte_hole(&mut self, s: UserAddr, e: UserAddr, _: Option<&Vma>) -> Result<(), Errno> {
        self.fill(s, e, 0);
        Ok(())
    }
    fn pud_entry(&mut self, _pt: &PageTables, e: &WalkEntry, _vma: &Vma) -> WalkAction {
        if let Decoded::Leaf(_) = e.entry {
            self.fill(e.addr, e.end, 1);
            return WalkAction::Continue;
        }
        WalkAction::Subtree
    }
    fn pmd_entry(&mut self, pt: &PageTables, e: &WalkEntry, _vma: &Vma) -> WalkAction {
        match e.entry {
            Decoded::Table(t) => {
                let mut v = Vec::new();
                for_each_pte(pt, t, e.addr, e.end, |_, pte| {
                    v.push(u8::from(matches!(pte, Decoded::Leaf(_))));
                });
                self.vec.extend(v);
            }
            Decoded::Leaf(_) => self.fill(e.addr, e.end, 1),
            _ => self.fill(e.addr, e.end, 0),
        }
        WalkAction::Continue
    }
}

fn perms(v: &Vma) -> String {
    let c = |b: bool, ch: char| if b { ch } else { '-' };
    format!(
        "{}{}{}{}",
        c(v.flags.contains(VmFlags::READ), 'r'),
        c(v.flags.contains(VmFlags::WRITE), 'w'),
        c(v.flags.contains(VmFlags::EXEC), 'x'),
        if v.flags.contains(VmFlags::SHARED) {
            's'
        } else {
            'p'
        }
    )
}

fn walk_err(e: WalkError) -> MmError {
    match e {
        WalkError::Errno(n) => MmError::Invalid(format!("the walk failed: {n:?}")),
        WalkError::Oops(o) => MmError::Invalid(format!("kernel oops: {o}")),
        WalkError::Table(e) => e.into(),
    }
}

fn add(a: &mut WalkStats, b: WalkStats) {
    a.vmas_walked += b.vmas_walked;
    a.vmas_skipped += b.vmas_skipped;
    a.puds_split += b.puds_split;
    a.pmds_split += b.pmds_split;
    a.pmds += b.pmds;
    a.again += b.again;
}

impl Mm {
    /// `smap_gather_stats` of every VMA (`walk_page_vma`): the resident bytes of each.
    fn gather_resident(&self) -> Result<(Vec<(Vma, u64)>, WalkStats), MmError> {
        let mut out = Vec::new();
        let mut st = WalkStats::default();
        for v in self.vmas() {
            let mut ops = Resident::default();
            add(
                &mut st,
                self.walk_page_vma(v.start, &mut ops).map_err(walk_err)?,
            );
            out.push((v, ops.bytes));
        }
        Ok((out, st))
    }

    /// Reads (or, for `clear_refs`, writes "1" to) `/proc/PID/<file>` of this process; `range`
    /// is the part of `pagemap` read (`[start, end)`, page aligned).
    pub fn read_proc(
        &self,
        file: ProcFile,
        range: Option<(UserAddr, UserAddr)>,
    ) -> Result<ProcRead, MmError> {
        let mut r = ProcRead::default();
        match file {
            ProcFile::Smaps | ProcFile::SmapsRollup => {
                let (vmas, st) = self.gather_resident()?;
                r.walk = st;
                let kb = |b: u64| b >> 10;
                let page_kb = kb(self.page_size());
                if file == ProcFile::Smaps {
                    for (v, rss) in &vmas {
                        let _ = writeln!(
                            r.text,
                            "{:x}-{:x} {} {:08x} 00:00 0 {}\nSize: {} kB\nKernelPageSize: {page_kb} kB\nMMUPageSize: {page_kb} kB\nRss: {} kB\nVmFlags: {}",
                            v.start,
                            v.end,
                            perms(v),
                            v.pgoff << PAGE_SHIFT,
                            v.name,
                            kb(v.len()),
                            kb(*rss),
                            v.flags.smaps()
                        );
                    }
                } else {
                    let rss: u64 = vmas.iter().map(|(_, b)| b).sum();
                    let lo = vmas.first().map_or(UserAddr::default(), |(v, _)| v.start);
                    let hi = vmas.last().map_or(UserAddr::default(), |(v, _)| v.end);
                    let _ = writeln!(
                        r.text,
                        "{lo:x}-{hi:x} ---p 00000000 00:00 0 [rollup]\nRss: {} kB",
                        kb(rss)
                    );
                }
            }
            ProcFile::NumaMaps => {
                let (vmas, st) = self.gather_resident()?;
                r.walk = st;
                for (v, rss) in &vmas {
                    let _ = write!(r.text, "{:x} default file={}", v.start, v.name);
                    if *rss > 0 {
                        let _ = write!(
                            r.text,
                            " mapped={} kernelpagesize_kB={}",
                            rss / self.page_size(),
                            self.page_size() >> 10
                        );
                    }
                    r.text.push('\n');
                }
            }
            ProcFile::Pagemap => {
                let (start, end) =
                    range.ok_or_else(|| MmError::Invalid("a pagemap read needs a range".into()))?;
                let geom = self.geometry();
                // pagemap is indexed by page: the entries of the pages the range touches
                let page = geom.page_size();
                let (start, end) = (
                    start.align_down(page),
                    end.saturating_add(page - 1).align_down(page),
                );
                let mut ops = PagemapOps {
                    out: Vec::new(),
                    geom,
                };
                r.walk = self
                    .walk_page_range(start, end, &mut ops)
                    .map_err(walk_err)?;
                r.pagemap = ops.out;
                // gaps outside every VMA read as not present too
                r.pagemap
                    .resize(((end - start) >> geom.page_shift()) as usize, 0);
            }
            ProcFile::ClearRefs => {
                r.walk = self
                    .walk_page_range(
                        UserAddr::default(),
                        UserAddr::new(self.config().arch.task_size()),
                        &mut ClearRefsOps,
                    )
                    .map_err(walk_err)?;
            }
        }
        Ok(r)
    }

    /// `mincore(addr, len)`: one byte per page, 1 = resident. EINVAL for an unaligned `addr`,
    /// ENOMEM where no VMA maps the range. Linux 6.12 skips a VM_PFNMAP VMA (its holes look up
    /// the device's empty page cache: 0); 7.3 walks it ([`crate::MmConfig::mincore_walks_pfnmap`]).
    pub fn mincore(&self, addr: UserAddr, len: u64) -> Result<(Vec<u8>, WalkStats), MmError> {
        self.check_page_aligned(addr)?;
        let page = self.page_size();
        let end = self
            .page_align(len)
            .and_then(|l| addr.checked_add(l))
            .ok_or(MmError::NoSpace(len))?;
        let mut vec = Vec::new();
        let mut st = WalkStats::default();
        let mut va = addr;
        while va < end {
            // do_mincore: one VMA per round; no VMA at `va` is ENOMEM
            let Some(v) = self.find_vma(va).filter(|v| v.start <= va) else {
                return Err(MmError::Unmapped {
                    what: "mincore",
                    addr: va,
                });
            };
            let e = v.end.min(end);
            let mut ops = MincoreOps {
                vec: Vec::new(),
                pud_entry: self.config().mincore_walks_pfnmap,
                page_shift: page.trailing_zeros(),
            };
            let s = if self.config().mincore_walks_pfnmap {
                self.walk_page_range_vma(va, e, &mut ops)
            } else {
                self.walk_page_range(va, e, &mut ops)
            }
            .map_err(walk_err)?;
            add(&mut st, s);
            ops.vec.resize(((e - va) / page) as usize, 0);
            vec.extend(ops.vec);
            va = e;
        }
        Ok((vec, st))
    }
}

impl std::str::FromStr for ProcFile {
    type Err = String;
    fn from_str(s: &str) -> Result<ProcFile, String> {
        Ok(match s {
            "smaps" => ProcFile::Smaps,
            "smaps_rollup" => ProcFile::SmapsRollup,
            "numa_maps" => ProcFile::NumaMaps,
            "pagemap" => ProcFile::Pagemap,
            "clear_refs" => ProcFile::ClearRefs,
            _ => {
                return Err(format!(
                    "unknown /proc file `{s}` (expected smaps, smaps_rollup, numa_maps, pagemap or clear_refs)"
                ));
            }
        })
    }
}
