//! remap_pfn_range: decomposition into the largest leaves, caps, errors, follow and munmap.

mod common;

use common::*;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{CacheMode, LeafCap, Level, MmConfig, MmError, Pgprot, TableCounts};

const BAR1: u64 = 0x1000_0000_0000;

fn prot() -> Pgprot {
    Pgprot::SHARED.with_cache(CacheMode::UcMinus)
}

fn sequence(mm: &hugepfn_mm::Mm, start: u64, end: u64) -> Vec<(u64, Level)> {
    let mut v = Vec::new();
    mm.page_tables()
        .for_each_leaf(ua(start), ua(end), &mut |va, l| {
            v.push((va.as_u64(), l.level))
        });
    v
}

#[test]
fn decomposition_3fdff000_to_80002000() {
    let (_p, mm) = mm();
    let (s, e) = (0x3fdf_f000u64, 0x8000_2000u64);
    vma(&mm, s, e - s);
    // PA congruent with VA modulo 1 GiB.
    let pfn = (BAR1 + s) >> 12;
    let c = mm
        .remap_pfn_range(uva(s), upfn(pfn), e - s, prot())
        .unwrap();
    assert_eq!((c.pud, c.pmd, c.pte), (1, 1, 3));
    let seq: Vec<Level> = sequence(&mm, s, e).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        seq,
        vec![Level::Pte, Level::Pmd, Level::Pud, Level::Pte, Level::Pte]
    );
    // Every page maps to its own pfn, at every level.
    for va in (s..e).step_by(4096) {
        let f = mm.follow_pfnmap(uva(va)).unwrap();
        assert_eq!(f.pfn.as_u64(), (BAR1 + va) >> 12, "{va:#x}");
        assert!(f.special && f.writable);
        assert_eq!(f.pgprot.cache, CacheMode::UcMinus);
    }
}

#[test]
fn decomposition_needs_congruence() {
    let (_p, mm) = mm();
    vma(&mm, 0x4000_0000, 2 * G);
    // PA ≡ VA + 2 MiB (mod 1 GiB): no PUD, all PMD.
    let c = mm
        .remap_pfn_range(uva(0x4000_0000), upfn((BAR1 + 2 * M) >> 12), 2 * G, prot())
        .unwrap();
    assert_eq!((c.pud, c.pmd, c.pte), (0, 1024, 0));
    let (_p, mm) = self::mm();
    vma(&mm, 0x4000_0000, 4 * M);
    // PA ≡ VA + 4 KiB: only PTEs.
    let c = mm
        .remap_pfn_range(uva(0x4000_0000), upfn((BAR1 + 4096) >> 12), 4 * M, prot())
        .unwrap();
    assert_eq!((c.pud, c.pmd, c.pte), (0, 0, 1024));
}

#[test]
fn caps_limit_the_leaf_size() {
    for (cap, want) in [
        (LeafCap::Pud, (2, 0, 0)),
        (LeafCap::Pmd, (0, 1024, 0)),
        (LeafCap::Pte, (0, 0, 524_288)),
    ] {
        let (_p, mm) = mm();
        vma(&mm, G, 2 * G);
        let c = mm
            .remap_pfn_range_capped(uva(G), upfn(BAR1 >> 12), 2 * G, prot(), cap)
            .unwrap();
        assert_eq!((c.pud, c.pmd, c.pte), want, "{cap:?}");
        assert_eq!(mm.all_leaves(), c);
    }
}

#[test]
fn page_tables_are_counted_per_level() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * G);
    mm.remap_pfn_range_capped(uva(G), upfn(BAR1 >> 12), 2 * G, prot(), LeafCap::Pte)
        .unwrap();
    let t = mm.table_counts();
    assert_eq!(
        t,
        TableCounts {
            pte: 1024,
            pmd: 2,
            pud: 1,
            p4d: 0,
            pgd: 1
        }
    );
}

#[test]
fn five_level_paging_walks_five_levels() {
    let (_p, mm) = mm_with(MmConfig {
        arch: hugepfn_units::arch::Arch::X86_64_5Level,
        ..MmConfig::default()
    });
    let va = 0x00f0_0000_0000_0000u64; // above 2^47: needs LA57
    vma(&mm, va, 2 * G);
    let c = mm
        .remap_pfn_range(uva5(va), upfn(BAR1 >> 12), 2 * G, prot())
        .unwrap();
    assert_eq!(c.pud, 2);
    let t = mm.table_counts();
    assert_eq!((t.pgd, t.p4d, t.pud, t.pmd, t.pte), (1, 1, 1, 0, 0));
    assert_eq!(
        mm.follow_pfnmap(uva5(va + G + 4096)).unwrap().pfn.as_u64(),
        (BAR1 + G + 4096) >> 12
    );
    // The same address is not canonical with 4-level paging.
    let (_p, mm4) = common::mm();
    assert!(matches!(
        mmap_at(&mm4, va, 2 * G, true, None),
        Err(MmError::Overflow { .. })
    ));
}

fn snapshot(mm: &hugepfn_mm::Mm) -> (Vec<(u64, Level)>, TableCounts, usize) {
    (sequence(mm, 0, 1 << 47), mm.table_counts(), mm.vmas().len())
}

#[test]
fn every_remap_error_leaves_everything_as_it_was() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * G);
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), G, prot())
        .unwrap();
    let before = snapshot(&mm);
    type Case = (u64, u64, u64, fn(&MmError) -> bool);
    let cases: Vec<Case> = vec![
        (G + 1, BAR1 >> 12, 4096, |e| {
            matches!(
                e,
                MmError::Unaligned {
                    what: "address",
                    ..
                }
            )
        }),
        (2 * G, BAR1 >> 12, 4095, |e| {
            matches!(e, MmError::Unaligned { what: "length", .. })
        }),
        (2 * G, BAR1 >> 12, 0, |e| {
            matches!(e, MmError::ZeroLength(_))
        }),
        (2 * G, BAR1 >> 12, u64::MAX - 4095, |e| {
            matches!(e, MmError::Overflow { .. })
        }),
        (2 * G, BAR1 >> 12, 2 * G, |e| {
            matches!(e, MmError::OutsideVma { .. })
        }),
        (8 * G, BAR1 >> 12, 4096, |e| matches!(e, MmError::NoVma(_))),
        (2 * G, (1 << 40) - 1, 8192, |e| {
            matches!(e, MmError::PfnTooWide { .. })
        }),
        // Overlaps the GiB already mapped by a PUD.
        (G + G - 4096, BAR1 >> 12, 8192, |e| {
            matches!(
                e,
                MmError::OutsideVma { .. } | MmError::AlreadyMapped { .. }
            )
        }),
        (
            G + 4096,
            BAR1 >> 12,
            4096,
            |e| matches!(e, MmError::AlreadyMapped { va } if *va == ua(G + 4096)),
        ),
    ];
    for (addr, pfn, size, ok) in cases {
        let e = mm
            .remap_pfn_range(uva(addr), upfn(pfn), size, prot())
            .unwrap_err();
        assert!(ok(&e), "{addr:#x} {pfn:#x} {size:#x}: {e}");
        assert_eq!(snapshot(&mm), before, "{e} changed something");
    }
    // A pfn past the 52-bit physical width cannot even be passed: the type refuses it.
    assert!(matches!(
        hugepfn_mm::Pfn::new(1 << 40),
        Err(hugepfn_mm::AddrError::PfnTooWide(_))
    ));
    // A half-overlapping range is refused whole: the free part stays free.
    let e = mm
        .remap_pfn_range(
            uva(G + G - 2 * M),
            upfn((BAR1 + G - 2 * M) >> 12),
            4 * M,
            prot(),
        )
        .unwrap_err();
    assert!(matches!(e, MmError::AlreadyMapped { va } if va == ua(2 * G - 2 * M)));
    assert_eq!(snapshot(&mm), before);
}

#[test]
fn cow_mappings_get_small_entries_and_whole_vma_only() {
    let (_p, mm) = mm();
    cow_vma(&mm, G, 4 * M);
    let before = snapshot(&mm);
    let e = mm
        .remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * M, Pgprot::READONLY)
        .unwrap_err();
    assert!(matches!(e, MmError::CowPartial { .. }));
    assert_eq!(snapshot(&mm), before);
    let c = mm
        .remap_pfn_range(uva(G), upfn(BAR1 >> 12), 4 * M, Pgprot::READONLY)
        .unwrap();
    assert_eq!((c.pud, c.pmd, c.pte), (0, 0, 1024));
    let v = mm.find_vma(UserAddr::new(G)).unwrap();
    assert_eq!(v.pgoff, BAR1 >> 12, "vm_pgoff = pfn for CoW pfnmaps");
    assert!(v.flags.contains(
        hugepfn_mm::VmFlags::PFNMAP
            | hugepfn_mm::VmFlags::IO
            | hugepfn_mm::VmFlags::DONTEXPAND
            | hugepfn_mm::VmFlags::DONTDUMP
    ));
    assert!(!mm.follow_pfnmap(uva(G)).unwrap().writable);
}

#[test]
fn follow_errors() {
    let (_p, mm) = mm();
    vma(&mm, G, 4 * M);
    // Not VM_PFNMAP yet: nothing remapped.
    assert!(matches!(
        mm.follow_pfnmap(uva(G)),
        Err(MmError::NotPfnmap(_))
    ));
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * M, prot())
        .unwrap();
    assert!(matches!(
        mm.follow_pfnmap(uva(G - 4096)),
        Err(MmError::NoVma(_))
    ));
    assert!(matches!(
        mm.follow_pfnmap(uva(G + 2 * M)),
        Err(MmError::NotMapped(_))
    ));
    let f = mm.follow_pfnmap(uva(G + 0x1234)).unwrap();
    assert_eq!(f.level, Level::Pmd);
    assert_eq!(f.addr_mask, !(2 * M - 1));
    assert_eq!(f.pfn.as_u64(), (BAR1 >> 12) + 1);
    assert_eq!(f.bytes_to_leaf_end(ua(G + 0x1000)), 2 * M - 0x1000);
}

#[test]
fn follow_guard_holds_the_page_table_lock() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * M);
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * M, prot())
        .unwrap();
    let g = mm.mmap_read();
    let f = g.follow_pfnmap_start(uva(G)).unwrap();
    let (_, slot) = mm.page_tables().lookup(ua(G)).unwrap();
    // The PMD lock is the PMD table's split lock: taken, so try_lock fails.
    let t = mm.page_tables().table(slot.table).unwrap();
    assert!(
        t.try_lock().is_none(),
        "PMD lock held between start and end"
    );
    assert_eq!(f.args.level, Level::Pmd);
    f.end();
    assert!(t.try_lock().is_some(), "end() released it");
}

#[test]
fn munmap_splits_huge_leaves_of_remapped_vmas() {
    let (phys, mm) = mm();
    vma(&mm, G, 2 * G);
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * G, prot())
        .unwrap();
    // A 4 KiB hole in the middle of the first GiB.
    let hole = G + 0x3fe0_3000;
    let st = mm.munmap(UserAddr::new(hole), 4096).unwrap();
    assert_eq!(st.splits, 2, "PUD → PMDs, then one PMD → PTEs");
    assert_eq!(st.vmas_split, 2, "one split at each edge of the hole");
    let c = mm.all_leaves();
    assert_eq!((c.pud, c.pmd, c.pte), (1, 511, 511));
    assert!(matches!(
        mm.follow_pfnmap(uva(hole)),
        Err(MmError::NoVma(_))
    ));
    for va in [
        G,
        hole - 4096,
        hole + 4096,
        2 * G - 4096,
        2 * G,
        3 * G - 4096,
    ] {
        assert_eq!(
            mm.follow_pfnmap(uva(va)).unwrap().pfn.as_u64(),
            (BAR1 + va - G) >> 12
        );
    }
    assert_eq!(mm.vmas().len(), 2);
    // VM_PFNMAP and pgoff carried to the right-hand VMA.
    let right = mm.find_vma(UserAddr::new(hole + 4096)).unwrap();
    assert_eq!(right.start, ua(hole + 4096));
    assert_eq!(right.pgoff, (hole + 4096 - G) >> 12);
    // Unmap everything: every table but the PGD goes; then drop the mm: nothing leaks.
    let st = mm.munmap(UserAddr::new(G), 2 * G).unwrap();
    assert_eq!(st.vmas_removed, 2);
    assert_eq!(mm.all_leaves().total(), 0);
    assert_eq!(mm.table_counts().total(), 1);
    assert!(mm.page_tables().flush_log().count >= 3);
    drop(mm);
    assert!(phys.leak_check().is_empty());
}

#[test]
fn munmap_errors_change_nothing() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * M);
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * M, prot())
        .unwrap();
    let before = snapshot(&mm);
    assert!(matches!(
        mm.munmap(UserAddr::new(G + 1), 4096),
        Err(MmError::Unaligned { .. })
    ));
    assert!(matches!(
        mm.munmap(UserAddr::new(G), 0),
        Err(MmError::ZeroLength(_))
    ));
    assert!(matches!(
        mm.munmap(UserAddr::new(G), u64::MAX - 4095),
        Err(MmError::Overflow { .. })
    ));
    assert!(matches!(
        mm.munmap(UserAddr::new(0x7fff_ffff_f000), 8192),
        Err(MmError::Overflow { .. })
    ));
    assert_eq!(snapshot(&mm), before);
    // Nothing mapped there: fine, and still nothing changed.
    assert_eq!(
        mm.munmap(UserAddr::new(8 * G), 4096).unwrap().vmas_removed,
        0
    );
    assert_eq!(snapshot(&mm), before);
    // A length that is not a page multiple is rounded up (PAGE_ALIGN), as munmap(2) says:
    // 4097 bytes unmap two pages.
    mm.munmap(UserAddr::new(G), 4097).unwrap();
    assert!(
        mm.find_vma(UserAddr::new(G)).is_none() && mm.find_vma(UserAddr::new(G + 4096)).is_none()
    );
    assert_eq!(
        mm.find_vma(UserAddr::new(G + 8192)).map(|v| v.start),
        Some(ua(G + 8192))
    );
}

#[test]
fn mm_drop_frees_every_table() {
    let (phys, mm) = mm();
    vma(&mm, G, 4 * G);
    mm.remap_pfn_range_capped(uva(G), upfn(BAR1 >> 12), 4 * G, prot(), LeafCap::Pte)
        .unwrap();
    assert!(phys.tables_in_use().total() > 2000);
    drop(mm);
    assert!(phys.leak_check().is_empty());
    let (a, f) = phys.alloc_free_counts();
    assert_eq!(a, f);
}

#[test]
fn mmap_fixed_refuses_overlap() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * M);
    let e = mmap_at(&mm, G + M, 2 * M, true, None).unwrap_err();
    assert!(matches!(e, MmError::Overlap { .. }));
    assert_eq!(e.errno(), hugepfn_mm::Errno::EEXIST);
}

#[test]
fn mm_and_page_tables_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<hugepfn_mm::Mm>();
    check::<hugepfn_mm::PageTables>();
    check::<hugepfn_mm::PhysMem>();
    // And an Mm really is used from several threads at once.
    let (_p, mm) = common::mm();
    common::vma(&mm, G, 2 * M);
    mm.remap_pfn_range(uva(G), upfn(BAR1 >> 12), 2 * M, prot())
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for i in 0..512 {
                    assert_eq!(
                        mm.follow_pfnmap(uva(G + i * 4096)).unwrap().pfn.as_u64(),
                        (BAR1 >> 12) + i
                    );
                }
            });
        }
    });
}

/// `move_page_tables` moves tables, not only leaves: where the old PMD entry is a table (here
/// one a zap emptied) the new place gets a PTE table (`pte_alloc` before `move_ptes`), so a
/// fault there cannot install a PMD or PUD leaf; where the old PMD entry is none, nothing is
/// allocated. Measured in the lab: scenarios/lab-mremap-after-zap-keeps-tables.toml.
#[test]
fn move_page_tables_keeps_emptied_tables() {
    use hugepfn_mm::pgtable::PartialHuge;
    let (_p, mm) = mm();
    let pt = mm.page_tables();
    let (old, new) = (G + 4 * K, 4 * G);
    let pfn = hugepfn_mm::Pfn::new(BAR1 >> 12).unwrap();
    let c = pt
        .remap_range(ua(old), ua(old + 4 * M), pfn, prot(), LeafCap::Pud)
        .unwrap();
    assert_eq!((c.pud, c.pmd, c.pte), (0, 0, 1024));
    pt.zap_range(ua(old), ua(old + 4 * M), PartialHuge::ZapWhole)
        .unwrap();
    let (moved, zapped) = pt
        .move_page_tables(ua(old), ua(new), 512 * M, PartialHuge::ZapWhole)
        .unwrap();
    assert_eq!((moved.total(), zapped.total()), (0, 0));
    // PTE tables under the first 4 MiB + 4 KiB of the new place (three old PTE tables' worth)
    for va in [new, new + 2 * M, new + 4 * M] {
        assert!(pt.slot(ua(va), Level::Pte).unwrap().is_some(), "{va:#x}");
    }
    // the old PMD entries past that were none: no PTE table there
    assert!(pt.slot(ua(new + 8 * M), Level::Pte).unwrap().is_none());
    assert!(pt.slot(ua(new + 8 * M), Level::Pmd).unwrap().is_some());
    // leaves still present move with their pfns
    pt.remap_range(ua(old), ua(old + 2 * M), pfn, prot(), LeafCap::Pud)
        .unwrap();
    let (moved, _) = pt
        .move_page_tables(ua(old), ua(8 * G), 2 * M, PartialHuge::ZapWhole)
        .unwrap();
    assert_eq!(moved.pte, 512);
    let (leaf, _) = pt.lookup(ua(8 * G + 4 * K)).unwrap();
    assert_eq!(leaf.pfn.as_u64(), (BAR1 >> 12) + 1);
    assert!(pt.lookup(ua(old + 4 * K)).is_none());
}

/// A PMD entry that points at no page-table page (a corrupt tree) is an error in the walks
/// that meet it (follow, mremap's PTE move), not a panic; the hardware walk sees nothing.
/// (`PageTables::table` used to panic.)
#[test]
fn a_corrupt_table_pointer_is_an_error_not_a_panic() {
    let (_p, mm) = mm();
    vma(&mm, G, 2 * M);
    mm.remap_pfn_range_capped(uva(G), upfn(BAR1 >> 12), 2 * M, prot(), LeafCap::Pte)
        .unwrap();
    let pt = mm.page_tables();
    let pmd = pt.slot(ua(G), Level::Pmd).unwrap().unwrap();
    let good = pt.get(pmd);
    // a table pointer into device memory (not RAM): no page-table page there
    let bogus = hugepfn_mm::PhysAddr::new(BAR1).unwrap();
    pt.ptl(pmd).set(
        pmd,
        hugepfn_pt::format::Format::encode_table(pt.format(), bogus, Level::Pmd),
    );
    assert!(pt.lookup(ua(G)).is_none());
    assert!(mm.mmap_read().follow_pfnmap_start(uva(G)).is_err());
    // half the PMD's range: its PTEs are moved one by one (a whole PMD would move the pointer)
    let moved = mm.mremap(
        UserAddr::new(G),
        M,
        M,
        hugepfn_mm::mremap::MremapFlags {
            maymove: true,
            fixed: Some(UserAddr::new(4 * G)),
        },
    );
    let e = moved.unwrap_err();
    assert!(e.to_string().contains("0x100000000000"), "{e}");
    // refused before anything changed: the VMA is where it was, nothing is at the target
    assert_eq!(
        mm.mmap_read()
            .find_vma(UserAddr::new(G))
            .map(|v| (v.start, v.end)),
        Some((ua(G), ua(G + 2 * M)))
    );
    assert!(mm.mmap_read().find_vma(UserAddr::new(4 * G)).is_none());
    assert_eq!(pt.first_mapped(ua(4 * G), ua(4 * G + M)), None);
    // the real pointer back: the mapping is whole again, and munmap clears it
    pt.ptl(pmd).set(pmd, good);
    assert_eq!(
        pt.lookup(ua(G)).map(|(l, _)| l.pfn.as_u64()),
        Some(BAR1 >> 12)
    );
    mm.munmap(UserAddr::new(G), 2 * M).unwrap();
    assert_eq!(pt.first_mapped(ua(G), ua(G + 2 * M)), None);
}

/// A VA canonical with 5-level paging (above 2^47).
fn uva5(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new(a, hugepfn_mm::PagingMode::Level5).expect("canonical with LA57")
}

/// A driver whose `f_op->mmap` remaps `size` bytes at `at` bytes into its new VMA from the
/// physical address `phys` (bad arguments on purpose).
struct RemapAt {
    at: u64,
    phys: u64,
    size: u64,
}

impl hugepfn_mm::FileOps for RemapAt {
    fn name(&self) -> String {
        "remap-at".into()
    }
    fn mapping(&self) -> Option<std::sync::Arc<hugepfn_mm::AddressSpace>> {
        None
    }
    fn mmap(&self, ctx: &mut hugepfn_mm::MmapCtx<'_>) -> Result<(), MmError> {
        let start = ctx.vma.start;
        ctx.remap_pfn_range(start + self.at, upfn(self.phys >> 12), self.size, prot())
            .map(|_| ())
    }
}

/// One bad input, one error, whichever path it comes by: a physical address off the 16 KiB
/// page and a range past the VMA is refused for the address by the public call and by a
/// driver's `f_op->mmap` alike (the driver's path used to report the VMA's bounds).
#[test]
fn remap_reports_the_same_error_from_a_driver_and_from_the_public_call() {
    let (_p, mm) = mm_on(hugepfn_mm::Arch::Arm64_16k);
    let len = 64 << 20;
    let phys = BAR1 + 4096; // on a 4 KiB page, not on a 16 KiB one
    let va = 0x7f00_0000_0000u64;
    vma(&mm, va, len);
    let public = mm
        .remap_pfn_range(uva(va + len - 16384), upfn(phys >> 12), 32768, prot())
        .unwrap_err();
    let driver = RemapAt {
        at: len - 16384,
        phys,
        size: 32768,
    };
    let by_driver = mmap_at(&mm, va + 2 * len, len, true, Some(&driver)).unwrap_err();
    for e in [&public, &by_driver] {
        assert!(
            matches!(
                e,
                MmError::Unaligned {
                    what: "physical address",
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(public.to_string(), by_driver.to_string());
}

/// `unmap_region` and `do_mprotect_pkey` gather what they change in one `mmu_gather` and flush
/// once at `tlb_finish_mmu`, whatever number of VMAs the range covers; a fork flushes the
/// parent once (`flush_tlb_mm`). The model flushed once per VMA, and once more for the tables
/// freed.
#[test]
fn munmap_and_mprotect_over_several_vmas_flush_once() {
    let (phys, mm) = mm();
    // three adjacent VM_PFNMAP VMAs (never merged) of a 2 MiB leaf each
    for i in 0..3 {
        let va = G + i * 2 * M;
        vma(&mm, va, 2 * M);
        mm.remap_pfn_range(uva(va), upfn((BAR1 + i * 2 * M) >> 12), 2 * M, prot())
            .unwrap();
    }
    assert_eq!(mm.vmas().len(), 3);
    let flushes = |mm: &hugepfn_mm::Mm| mm.page_tables().flush_log();
    let before = flushes(&mm).count;
    let st = mm
        .mprotect(UserAddr::new(G), 6 * M, hugepfn_mm::Prot::R)
        .unwrap();
    assert_eq!((st.vmas, st.leaves.pmd), (3, 3));
    assert_eq!(flushes(&mm).count, before + 1, "mprotect: one flush");
    let before = flushes(&mm).count;
    let st = mm.munmap(UserAddr::new(G), 6 * M).unwrap();
    assert_eq!((st.vmas_removed, st.zapped.pmd), (3, 3));
    assert!(st.tables_freed > 0);
    let log = flushes(&mm);
    assert_eq!(
        log.count,
        before + 1,
        "munmap: one flush for the zaps and the tables"
    );
    let last = log.recent.back().unwrap();
    assert_eq!((last.start, last.end), (ua(G), ua(G + 6 * M)));
    drop(mm);
    assert!(phys.leak_check().is_empty());
}
