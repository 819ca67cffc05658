//! vfio-pci on the model: mmap checks, the huge fault path, revocation across processes, munmap
//! of fault-backed VMAs, and the upstream fixes as regression tests.

mod common;
use common::uva;

use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{
    Access, CacheMode, Errno, Level, Mm, MmConfig, MmError, MmapAddr, MmapRequest, PhysMem, Prot,
    ThpPolicy, VmFlags,
};
use hugepfn_vfio::{Bar, HugeFaultLogic, PowerState, VfioPciDevice, presets, region_offset};

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;

struct World {
    phys: Arc<PhysMem>,
    dev: Arc<VfioPciDevice>,
}

fn world(bars: Vec<Bar>, logic: HugeFaultLogic) -> World {
    let (phys, dev) = common::device("dev", bars, logic);
    World { phys, dev }
}

fn ivshmem(size: u64) -> World {
    world(presets::ivshmem_bars(size), HugeFaultLogic::Fixed)
}

fn process(w: &World, thp: ThpPolicy) -> Arc<Mm> {
    Mm::new(
        w.phys.clone(),
        MmConfig {
            thp,
            ..MmConfig::default()
        },
    )
    .unwrap()
}

fn map(w: &World, mm: &Mm, bar: u8, off: u64, len: u64, addr: MmapAddr) -> Result<u64, MmError> {
    common::map_bar(mm, &w.dev, bar, off, len, addr)
}

fn at(mm: &Mm, len: u64, align: u64, skew: u64) -> MmapAddr {
    MmapAddr::Fixed(UserAddr::new(
        mm.find_aligned_area(len, align, skew).unwrap().as_u64(),
    ))
}

fn touch(mm: &Mm, va: u64, len: u64) -> hugepfn_mm::RangeAccess {
    mm.access_range(UserAddr::new(va), len / 4096, 4096, true, false)
}

#[test]
fn mmap_is_checked_like_vfio_pci_core_mmap() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let f = w.dev.open();
    let req = |shared, off, len| MmapRequest {
        addr: MmapAddr::Kernel,
        len,
        prot: Prot::RW,
        shared,
        offset: off,
        file: Some(&f),
    };
    let private = mm.mmap(req(false, region_offset(2), 2 * M)).unwrap_err();
    assert_eq!(private.errno(), Errno::EINVAL, "{private}");
    assert!(private.to_string().contains("MAP_SHARED"));
    let beyond = mm
        .mmap(req(true, region_offset(2) + 2 * G - 4096, 8192))
        .unwrap_err();
    assert_eq!(beyond.errno(), Errno::EINVAL);
    assert!(
        mm.mmap(req(true, region_offset(0), 4096)).is_err(),
        "no BAR0"
    );
    assert!(
        mm.mmap(req(true, region_offset(7), 4096)).is_err(),
        "not a BAR region"
    );
    assert!(mm.vmas().is_empty(), "nothing mapped after refusals");
    assert_eq!(mm.table_counts().total(), 1);

    let va = mm
        .mmap(req(true, region_offset(2), 2 * G))
        .unwrap()
        .as_u64();
    let v = mm.find_vma(UserAddr::new(va)).unwrap();
    assert!(v.flags.contains(
        VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND | VmFlags::DONTDUMP | VmFlags::SHARED
    ));
    assert_eq!(v.page_prot.cache, CacheMode::UcMinus);
    assert_eq!(
        mm.all_leaves().total(),
        0,
        "nothing is installed at mmap time"
    );
    // 6.12 placement: 2 MiB-aligned, congruent with the file offset, never 1 GiB aligned here.
    assert_eq!(va % (2 * M), 0);
}

#[test]
fn lab_rules_pud_pmd_pte() {
    // The rule the lab data fits: the largest level whose block lies in the VMA and whose pfn is
    // aligned (VA ≡ PA mod the size), THP allowing.
    for (align, skew, off, len, want) in [
        (G, 0, 0, 2 * G, (2, 0, 0)),
        (G, 2 * M, 0, 2 * G, (0, 1024, 0)),
        (G, 0, 2 * M, G, (0, 512, 0)),
        (G, 0, 0, 1050 * M, (1, 13, 0)),
        (G, 4096, 4096, 2 * G - 4096, (1, 511, 511)),
        (G, 0, 0, G - 4096, (0, 511, 511)),
    ] {
        let w = ivshmem(2 * G);
        let mm = process(&w, ThpPolicy::Always);
        let va = map(&w, &mm, 2, off, len, at(&mm, len, align, skew)).unwrap();
        touch(&mm, va, len);
        let f = mm.fault_counts();
        assert_eq!(
            (f.by_level.pud, f.by_level.pmd, f.by_level.pte),
            want,
            "align {align:#x}+{skew:#x} off {off:#x} len {len:#x}"
        );
        assert_eq!(f.faults, want.0 + want.1 + want.2);
        let l = mm.all_leaves();
        assert_eq!((l.pud, l.pmd, l.pte), want);
        // The pfn of every leaf is the BAR address of its offset.
        mm.page_tables().for_each_leaf(
            UserAddr::new(va),
            UserAddr::new(va + len),
            &mut |lva, leaf| {
                assert_eq!(
                    leaf.pfn.as_u64(),
                    (0xff_0000_0000 + off + (lva.as_u64() - va)) >> 12
                );
                assert!(leaf.prot.is_special());
                assert_eq!(leaf.prot.cache, CacheMode::UcMinus);
            },
        );
        // Follow reports the level and addr_mask.
        let fl = mm.follow_pfnmap(uva(va + len - 4096)).unwrap();
        assert_eq!(fl.pfn.as_u64(), (0xff_0000_0000 + off + len - 4096) >> 12);
    }
}

#[test]
fn thp_policy_gates_huge_faults() {
    for (thp, advice, huge) in [
        (ThpPolicy::Always, None, true),
        (ThpPolicy::Never, None, false),
        (ThpPolicy::Madvise, None, false),
        (ThpPolicy::Madvise, Some(VmFlags::HUGEPAGE), true),
        (ThpPolicy::Always, Some(VmFlags::NOHUGEPAGE), false),
    ] {
        let w = ivshmem(2 * G);
        let mm = process(&w, thp);
        let va = map(&w, &mm, 2, 0, 4 * M, at(&mm, 4 * M, G, 0)).unwrap();
        if let Some(a) = advice {
            mm.update_vma_flags(UserAddr::new(va), a, VmFlags::empty())
                .unwrap();
        }
        touch(&mm, va, 4 * M);
        let f = mm.fault_counts();
        assert_eq!(f.faults, if huge { 2 } else { 1024 }, "{thp:?} {advice:?}");
    }
}

#[test]
fn memory_disable_revokes_every_mapping_in_every_process() {
    let w = ivshmem(2 * G);
    let a = process(&w, ThpPolicy::Always);
    let b = process(&w, ThpPolicy::Always);
    let va1 = map(&w, &a, 2, 0, G, at(&a, G, G, 0)).unwrap();
    let va2 = map(&w, &a, 2, G, G, at(&a, G, G, 2 * M)).unwrap();
    let vb = map(&w, &b, 2, 0, 2 * G, MmapAddr::Kernel).unwrap();
    touch(&a, va1, G);
    touch(&a, va2, G);
    touch(&b, vb, 2 * G);
    assert_eq!(a.all_leaves().pud, 1);
    assert_eq!(a.all_leaves().pmd, 512);
    assert_eq!(b.all_leaves().pmd, 1024);
    assert_eq!(w.dev.mapping().mapcount(), 3);

    let st = w.dev.set_memory_enable(false).unwrap();
    assert_eq!(st.vmas, 3);
    assert_eq!(st.mms, 2);
    assert_eq!(st.zapped.total(), 1 + 512 + 1024);
    assert_eq!(a.all_leaves().total() + b.all_leaves().total(), 0);
    // Faults now SIGBUS, and are not counted as faults.
    let before = a.fault_counts();
    let r = touch(&a, va1, 4 * M);
    assert_eq!(r.sigbus, 1024);
    let d = a.fault_counts().since(&before);
    assert_eq!((d.faults, d.sigbus), (0, 1024));
    assert_eq!(a.access(UserAddr::new(va2), false), Access::Sigbus);

    // Re-enable: everything refaults at the size it had.
    assert!(
        w.dev.set_memory_enable(true).is_none(),
        "enabling revokes nothing"
    );
    let before = a.fault_counts();
    touch(&a, va1, G);
    touch(&a, va2, G);
    let d = a.fault_counts().since(&before);
    assert_eq!(
        (d.by_level.pud, d.by_level.pmd, d.by_level.pte),
        (1, 512, 0)
    );
    assert_eq!(w.dev.stats().revokes, 1);
}

#[test]
fn d3hot_and_reset_revoke() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    touch(&mm, va, 2 * G);
    w.dev.set_power_state(PowerState::D3hot).unwrap();
    assert_eq!(mm.all_leaves().total(), 0);
    assert_eq!(mm.access(UserAddr::new(va), true), Access::Sigbus);
    assert!(w.dev.set_power_state(PowerState::D0).is_none());
    touch(&mm, va, 2 * G);
    assert_eq!(mm.all_leaves().pud, 2);
    let st = w.dev.reset();
    assert_eq!(st.zapped.pud, 2);
    // After reset memory decode is restored: refault works at once.
    assert!(matches!(
        mm.access(UserAddr::new(va), true),
        Access::Ok {
            faults: 1,
            level: Level::Pud
        }
    ));
}

#[test]
fn munmap_of_a_fault_backed_vma_zaps_whole_leaves_and_the_rest_refaults() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    touch(&mm, va, 2 * G);
    // A 4 KiB hole at 1022 MiB + 4 KiB of the first GiB.
    let hole = va + 1022 * M + 4096;
    let st = mm.munmap(UserAddr::new(hole), 4096).unwrap();
    assert_eq!(
        st.zapped.pud, 1,
        "the PUD leaf cut by the hole is zapped whole"
    );
    assert_eq!(st.splits, 0, "no in-place split for fault-backed VMAs");
    assert_eq!(mm.all_leaves().pud, 1, "the second GiB stays");
    let before = mm.fault_counts();
    let r = touch(&mm, va, 2 * G);
    assert_eq!(r.no_vma, 1);
    let d = mm.fault_counts().since(&before);
    // Left VMA [0, 1022M+4K): 511 PMDs + 1 PTE; right VMA [1022M+8K, 1G): its 2 MiB block is
    // cut, so 510 PTEs.
    assert_eq!(
        (d.by_level.pud, d.by_level.pmd, d.by_level.pte),
        (0, 511, 511)
    );
    // The whole 2 GiB unmapped: every table goes, nothing leaks once the mm is gone.
    mm.munmap(UserAddr::new(va), 2 * G).unwrap();
    assert_eq!(mm.table_counts().total(), 1);
    assert_eq!(w.dev.mapping().mapcount(), 0);
    drop(mm);
    assert!(w.phys.leak_check().is_empty());
}

#[test]
fn two_vmas_of_one_bar_map_independently() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let v0 = map(&w, &mm, 2, 0, G, at(&mm, G, G, 0)).unwrap();
    let v1 = map(&w, &mm, 2, G, G, at(&mm, G, G, 2 * M)).unwrap();
    touch(&mm, v0, G);
    touch(&mm, v1, G);
    let f = mm.fault_counts();
    assert_eq!((f.by_level.pud, f.by_level.pmd), (1, 512));
    assert_eq!(
        mm.follow_pfnmap(uva(v1)).unwrap().pfn.as_u64(),
        (0xff_0000_0000u64 + G) >> 12
    );
}

/// 09dfc8a5f2ce "vfio/pci: Fallback huge faults for unaligned pfn" (upstream.md §3.3): a VMA at
/// BAR offset 2 MiB and a 1 GiB-aligned VA. The fixed handler falls back to PMDs (what the lab's
/// kernel measured: 512 faults). 6.12 as first merged built a 1 GiB leaf from a misaligned pfn
/// (corrupted GPU mappings); the model refuses to encode such a leaf and SIGBUSes instead.
#[test]
fn regress_09dfc8a5f2ce_unaligned_pfn_falls_back() {
    for (logic, want_faults, want_sigbus) in [
        (HugeFaultLogic::Fixed, 512, 0),
        (HugeFaultLogic::V6_13, 512, 0),
        (HugeFaultLogic::V6_12, 0, 1),
    ] {
        let w = world(presets::ivshmem_bars(2 * G), logic);
        let mm = process(&w, ThpPolicy::Always);
        let va = map(&w, &mm, 2, 2 * M, G, at(&mm, G, G, 0)).unwrap();
        let r = mm.access_range(UserAddr::new(va), 1, 4096, true, false);
        let full = if r.sigbus == 0 { touch(&mm, va, G) } else { r };
        let f = mm.fault_counts();
        assert_eq!(f.faults, want_faults, "{logic:?}");
        assert_eq!(full.sigbus.min(1), want_sigbus, "{logic:?}");
        // Never a leaf whose pfn is not aligned to its size.
        mm.page_tables()
            .for_each_leaf(UserAddr::new(va), UserAddr::new(va + G), &mut |_, l| {
                assert!(l.pfn.is_aligned_order(l.level.order()));
            });
    }
}

/// c1d9dac0db16 "vfio/pci: Align huge faults to order" (upstream.md §3.4): a first touch in the
/// middle of an eligible 1 GiB block still maps the block. Before it, such a fault fell back to
/// 4 KiB and later faults mixed PTE and PMD/PUD inserts.
#[test]
fn regress_c1d9dac0db16_align_huge_fault_to_order() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    let a = mm.access(UserAddr::new(va + 0x4000_3000 - G), true);
    assert!(
        matches!(
            a,
            Access::Ok {
                faults: 1,
                level: Level::Pud
            }
        ),
        "{a:?}"
    );
    touch(&mm, va, 2 * G);
    assert_eq!(mm.fault_counts().faults, 2);

    let w = world(presets::ivshmem_bars(2 * G), HugeFaultLogic::V6_13);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    let a = mm.access(UserAddr::new(va + 0x3000), true);
    assert!(
        matches!(
            a,
            Access::Ok {
                faults: 1,
                level: Level::Pte
            }
        ),
        "{a:?}"
    );
    touch(&mm, va, 2 * G);
    let f = mm.fault_counts();
    // The first GiB is now a PMD table: 511 PMDs + the 2 MiB block of 4 KiB pages; the second a PUD.
    assert_eq!(
        (f.by_level.pud, f.by_level.pmd, f.by_level.pte),
        (1, 511, 512)
    );
}

#[test]
fn overlapping_bars_and_bad_bars_are_refused() {
    let phys = Arc::new(PhysMem::default());
    let a = VfioPciDevice::new(
        phys.clone(),
        "a",
        presets::h100_bars(),
        HugeFaultLogic::Fixed,
    )
    .unwrap();
    let e = VfioPciDevice::new(
        phys.clone(),
        "b",
        presets::h100_bars(),
        HugeFaultLogic::Fixed,
    )
    .unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    let e = VfioPciDevice::new(
        phys.clone(),
        "c",
        vec![Bar::mem64(0, 0x1234, 4096)],
        HugeFaultLogic::Fixed,
    )
    .unwrap_err();
    assert!(matches!(e, hugepfn_vfio::VfioError::BadBar { .. }));
    drop(a);
    // Unbinding frees the physical ranges.
    assert!(VfioPciDevice::new(phys, "b", presets::h100_bars(), HugeFaultLogic::Fixed).is_ok());
}

/// e384abeb559d ("mm/huge_memory: bypass THP tuneables for huge pfnmap mappings", 7.3, stable
/// 6.12.115): with the bypass a vfio BAR gets huge leaves whatever the sysfs mode, and only
/// MADV_NOHUGEPAGE keeps it at 4 KiB; without it (6.12.95, the corrected design) the mode gates.
#[test]
fn regress_e384abeb559d_thp_tuneables_bypassed_for_huge_pfnmaps() {
    use hugepfn_mm::madvise::Advice;
    for (bypass, policy, nohuge, want) in [
        (false, ThpPolicy::Never, false, 524_288),
        (false, ThpPolicy::Madvise, false, 524_288),
        (false, ThpPolicy::Always, false, 2),
        (true, ThpPolicy::Never, false, 2),
        (true, ThpPolicy::Madvise, false, 2),
        (true, ThpPolicy::Never, true, 524_288),
    ] {
        let w = ivshmem(2 * G);
        let mm = Mm::new(
            w.phys.clone(),
            MmConfig {
                thp: policy,
                thp_bypass_pfnmap: bypass,
                ..MmConfig::default()
            },
        )
        .unwrap();
        let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
        if nohuge {
            mm.madvise(UserAddr::new(va), 2 * G, Advice::Nohugepage)
                .unwrap();
        }
        let before = mm.fault_counts();
        touch(&mm, va, 2 * G);
        let f = mm.fault_counts().since(&before);
        assert_eq!(f.faults, want, "bypass {bypass} {policy:?} nohuge {nohuge}");
    }
}

/// issue 17: a touch far past the mapping skips the gap as a range (2^40 strides: one step per
/// gap, not per stride), forward and in reverse, and counts every stride it skipped.
#[test]
fn regress_touch_far_past_the_mapping_skips_gaps_as_ranges() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    let n = 1u64 << 40;
    let stride = 4096;
    let limit = (mm.config().arch.task_size() - va) / stride;
    let count = n.min(limit);
    for reverse in [false, true] {
        let r = mm.access_range(UserAddr::new(va), count, stride, true, reverse);
        assert_eq!(r.accesses, 2 * G / stride, "reverse {reverse}");
        assert_eq!(r.no_vma, count - 2 * G / stride, "reverse {reverse}");
    }
}

/// issue 17: a byte-stride touch of a revoked 2 GiB BAR counts a SIGBUS per stride (2^31 of
/// them, in the process's counters too) without faulting each byte of a page again.
#[test]
fn regress_byte_stride_touch_of_a_revoked_bar_counts_every_sigbus() {
    let w = ivshmem(2 * G);
    let mm = process(&w, ThpPolicy::Always);
    let va = map(&w, &mm, 2, 0, 2 * G, at(&mm, 2 * G, G, 0)).unwrap();
    let _ = w.dev.set_memory_enable(false);
    let before = mm.fault_counts();
    for reverse in [false, true] {
        let r = mm.access_range(UserAddr::new(va), 2 * G, 1, false, reverse);
        assert_eq!((r.sigbus, r.accesses), (2 * G, 2 * G), "reverse {reverse}");
    }
    assert_eq!(mm.fault_counts().since(&before).sigbus, 4 * G);
}
