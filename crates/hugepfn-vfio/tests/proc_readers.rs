//! The /proc readers and mincore over a vfio BAR mapped with 1 GiB, 2 MiB and 4 KiB leaves
//! (`hugepfn_mm::task_mmu` on the generic walker): what each one walks, what it reports, and
//! which leaves it destroys — on the kernels (`Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES`) and in the
//! corrected design.

mod common;

use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::pgtable::Bugs;
use hugepfn_mm::task_mmu::{PM_PRESENT, ProcFile};
use hugepfn_mm::{Mm, MmConfig, MmapAddr};
use hugepfn_vfio::{HugeFaultLogic, VfioPciDevice, presets};

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;

/// A 2 GiB ivshmem BAR mapped at a VA `skew` past a 1 GiB boundary and touched; returns the mm
/// and the VA.
fn mapped(skew: u64, cfg: MmConfig) -> (Arc<Mm>, u64, Arc<VfioPciDevice>) {
    let bars = presets::ivshmem_bars(2 * G);
    let (phys, dev) = common::device("ivshmem", bars, HugeFaultLogic::Fixed);
    let mm = Mm::new(phys, cfg).unwrap();
    let at = MmapAddr::Fixed(UserAddr::new(
        mm.find_aligned_area(2 * G, G, skew).unwrap().as_u64(),
    ));
    let va = common::map_bar(&mm, &dev, 2, 0, 2 * G, at).unwrap();
    mm.access_range(UserAddr::new(va), 2 * G / 4096, 4096, true, false);
    (mm, va, dev)
}

fn kernel_cfg() -> MmConfig {
    MmConfig {
        bugs: Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES,
        ..MmConfig::default()
    }
}

#[test]
fn smaps_and_numa_maps_zap_pud_leaves_on_the_kernels_only() {
    for file in [ProcFile::Smaps, ProcFile::SmapsRollup, ProcFile::NumaMaps] {
        let (mm, va, _d) = mapped(0, kernel_cfg());
        let before = mm.page_tables().zapped_leaves();
        let n0 = mm.page_tables().mmu_notifier_calls();
        let r = mm.read_proc(file, None).unwrap();
        let z = mm.page_tables().zapped_leaves();
        assert_eq!(z.pud - before.pud, 2, "{file:?}");
        assert_eq!(r.walk.puds_split, 2);
        assert_eq!(mm.page_tables().mmu_notifier_calls() - n0, 2, "one per GiB");
        assert_eq!(
            mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G)).pud,
            0
        );
        // the corrected design walks past the special leaves
        let (mm, va, _d) = mapped(0, MmConfig::default());
        let r = mm.read_proc(file, None).unwrap();
        assert_eq!(
            (
                r.walk.puds_split,
                mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G)).pud
            ),
            (0, 2)
        );
    }
}

#[test]
fn smaps_reports_nothing_resident_for_a_bar_and_4k_kernel_pages() {
    let (mm, va, _d) = mapped(2 * M, kernel_cfg());
    let r = mm.read_proc(ProcFile::Smaps, None).unwrap();
    assert!(
        r.text.contains(&format!("{va:x}-{:x} rw-s", va + 2 * G)),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("Size: 2097152 kB\nKernelPageSize: 4 kB\nMMUPageSize: 4 kB\nRss: 0 kB")
    );
    assert!(r.text.contains("pf io de dd"), "{}", r.text);
    // PMD leaves are left alone even by the kernels (no pte_entry: no split_huge_pmd)
    assert_eq!(
        mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G)).pmd,
        1024
    );
    let n = mm.read_proc(ProcFile::NumaMaps, None).unwrap();
    assert!(
        n.text.starts_with(&format!("{va:x} default file=")),
        "{}",
        n.text
    );
    assert!(!n.text.contains("kernelpagesize_kB"));
}

#[test]
fn pagemap_and_clear_refs_skip_vm_pfnmap() {
    for skew in [0, 2 * M, 4096] {
        let (mm, va, _d) = mapped(skew, kernel_cfg());
        let leaves = mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G));
        let r = mm
            .read_proc(
                ProcFile::Pagemap,
                Some((UserAddr::new(va), UserAddr::new(va + 4 * M))),
            )
            .unwrap();
        assert_eq!(r.pagemap.len(), 1024);
        assert!(
            r.pagemap.iter().all(|e| e & PM_PRESENT == 0),
            "never present"
        );
        assert_eq!(r.walk.vmas_skipped, 1);
        let c = mm.read_proc(ProcFile::ClearRefs, None).unwrap();
        assert_eq!((c.walk.vmas_walked, c.walk.vmas_skipped), (0, 1));
        assert_eq!(
            mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G)),
            leaves,
            "nothing zapped"
        );
    }
}

#[test]
fn mincore_skips_a_bar_on_6_12_and_sees_every_mapped_page_on_7_3() {
    for skew in [0, 2 * M, 4096] {
        let (mm, va, _d) = mapped(skew, kernel_cfg());
        let (v, _) = mm.mincore(UserAddr::new(va), 2 * G).unwrap();
        assert_eq!(v.len(), 524_288);
        assert!(
            v.iter().all(|b| *b == 0),
            "6.12: a hole, the device has no page cache"
        );
        let cfg = MmConfig {
            mincore_walks_pfnmap: true,
            ..kernel_cfg()
        };
        let (mm, va, _d) = mapped(skew, cfg);
        let leaves = mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G));
        let (v, st) = mm.mincore(UserAddr::new(va), 2 * G).unwrap();
        assert_eq!(
            v.iter().filter(|b| **b == 1).count(),
            524_288,
            "skew {skew}"
        );
        assert_eq!(
            st.puds_split, 0,
            "mincore_pud_entry stops the walk at a PUD leaf"
        );
        assert_eq!(
            mm.leaves(UserAddr::new(va), UserAddr::new(va + 2 * G)),
            leaves
        );
        // unmapped: ENOMEM; unaligned: EINVAL
        assert_eq!(
            mm.mincore(UserAddr::new(va + 2 * G), 4096)
                .unwrap_err()
                .errno(),
            hugepfn_mm::Errno::ENOMEM
        );
        assert_eq!(
            mm.mincore(UserAddr::new(va + 1), 4096).unwrap_err().errno(),
            hugepfn_mm::Errno::EINVAL
        );
    }
}
