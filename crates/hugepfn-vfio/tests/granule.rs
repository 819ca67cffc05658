//! vfio-pci BARs on arm64 hosts with 16 KiB and 64 KiB pages (Debian's `arm64-16k` kernel,
//! the 64 KiB kernels Grace hosts often run): the mm core takes its page size and its PMD size
//! (32 MiB, 512 MiB) from the architecture's granule, while pfns and `vm_pgoff` keep counting
//! 4 KiB frames.

mod common;
use common::uva;

use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::task_mmu::ProcFile;
use hugepfn_mm::{
    Errno, FaultCounts, LeafCap, Level, Mm, MmConfig, MmError, MmapAddr, PhysConfig, PhysMem,
};
use hugepfn_units::arch::Arch;
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, presets};

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

struct World {
    mm: Arc<Mm>,
    dev: Arc<VfioPciDevice>,
}

/// A host of `arch` (memory in its granule, PMD pfnmaps as arm64 has them) with an ivshmem
/// BAR2 of `size` at the lab's address.
fn host(arch: Arch, size: u64) -> World {
    host_with(
        presets::ivshmem_bars(size),
        MmConfig {
            arch,
            pfnmap_cap: LeafCap::Pmd,
            // below 2^47: follow_pfnmap_start takes an x86-canonical VirtAddr
            mmap_base: Some(UserAddr::new(1 << 46)),
            ..MmConfig::default()
        },
    )
}

/// A host of `cfg.arch`, its memory in that granule, with a device of `bars`.
fn host_with(bars: Vec<Bar>, cfg: MmConfig) -> World {
    let phys = Arc::new(PhysMem::new(
        PhysConfig::default().with_granule(cfg.arch.geometry()),
    ));
    let dev = VfioPciDevice::new(phys.clone(), "dev", bars, HugeFaultLogic::Fixed).unwrap();
    let mm = Mm::new(phys, cfg).unwrap();
    World { mm, dev }
}

fn map(w: &World, off: u64, len: u64, align: u64, skew: u64) -> Result<u64, MmError> {
    let va = w.mm.find_aligned_area(len, align, skew)?;
    common::map_bar(&w.mm, &w.dev, 2, off, len, MmapAddr::Fixed(va))
}

/// Writes every page of `[va, va + len)`; returns the faults it took.
fn touch(mm: &Mm, va: u64, len: u64) -> FaultCounts {
    let page = mm.page_size();
    let before = mm.fault_counts();
    mm.access_range(UserAddr::new(va), len / page, page, true, false);
    mm.fault_counts().since(&before)
}

#[test]
fn arm64_16k_bar_faults_in_32m_pmd_leaves() {
    let w = host(Arch::Arm64_16k, 2 * G);
    assert_eq!(w.mm.page_size(), 16 * K);
    let va = map(&w, 0, 2 * G, 32 * M, 0).unwrap();
    let f = touch(&w.mm, va, 2 * G);
    assert_eq!(
        (f.faults, f.by_level.pmd, f.by_level.pte),
        (64, 64, 0),
        "{f:?}"
    );
    let leaves =
        w.mm.page_tables()
            .count_leaves(UserAddr::new(va), UserAddr::new(va + 2 * G));
    assert_eq!((leaves.pmd, leaves.pte), (64, 0));
    assert_eq!(leaves.bytes_with(w.mm.geometry()), 2 * G);
    assert_eq!(
        w.mm.table_counts().pte,
        0,
        "no PTE table under 32 MiB leaves"
    );

    // follow: the 32 MiB leaf, and the pfn of the 16 KiB page holding the address
    let bar = presets::ivshmem_bars(2 * G)[0].phys;
    let a = va + 32 * M + 3 * 16 * K + 5;
    let g = w.mm.mmap_read();
    let fl = g.follow_pfnmap_start(uva(a)).unwrap();
    assert_eq!(fl.args.level, Level::Pmd);
    assert_eq!(fl.args.addr_mask, !(32 * M - 1));
    assert_eq!(fl.args.pfn.as_u64(), (bar + 32 * M + 3 * 16 * K) >> 12);
}

#[test]
fn arm64_16k_bar_at_a_16k_skew_faults_page_by_page() {
    let w = host(Arch::Arm64_16k, 256 * M);
    let va = map(&w, 0, 128 * M, 32 * M, 16 * K).unwrap();
    let f = touch(&w.mm, va, 128 * M);
    assert_eq!(
        (f.faults, f.by_level.pmd, f.by_level.pte),
        (8192, 0, 8192),
        "128 MiB / 16 KiB"
    );
    // 128 MiB starting 16 KiB into a 32 MiB block spans 5 PMD entries: 5 PTE tables of 2048
    assert_eq!(w.mm.table_counts().pte, 5);
}

#[test]
fn arm64_64k_bar_faults_in_512m_pmd_leaves() {
    let w = host(Arch::Arm64_64k, 2 * G);
    assert_eq!(w.mm.page_size(), 64 * K);
    let va = map(&w, 0, 2 * G, 512 * M, 0).unwrap();
    let f = touch(&w.mm, va, 2 * G);
    assert_eq!((f.faults, f.by_level.pmd), (4, 4), "{f:?}");
    // a BAR offset that is 64 KiB but not 512 MiB aligned: 64 KiB pages
    let va2 = map(&w, 64 * K, 64 * M, 512 * M, 0).unwrap();
    let f = touch(&w.mm, va2, 64 * M);
    assert_eq!((f.faults, f.by_level.pte), (1024, 1024), "{f:?}");
}

#[test]
fn arm64_16k_refuses_what_is_not_on_a_16k_page() {
    let w = host(Arch::Arm64_16k, 256 * M);
    // an mmap offset on a 4 KiB but not a 16 KiB page
    let e = map(&w, 4 * K, 32 * M, 32 * M, 0).unwrap_err();
    assert!(
        matches!(e, MmError::Unaligned { align, .. } if align == 16 * K),
        "{e}"
    );
    // an address only 4 KiB aligned
    let e = w.mm.find_aligned_area(32 * M, 32 * M, 4 * K).unwrap_err();
    assert!(matches!(e, MmError::Unaligned { what: "skew", .. }), "{e}");
    let va = map(&w, 0, 64 * M, 32 * M, 0).unwrap();
    let e = w.mm.munmap(UserAddr::new(va + 4 * K), 16 * K).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL, "{e}");
    // a length is rounded up to the page, as Linux does: 4 KiB unmaps a whole 16 KiB page
    touch(&w.mm, va, 64 * M);
    w.mm.munmap(UserAddr::new(va + 32 * M), 4 * K).unwrap();
    assert!(w.mm.find_vma(UserAddr::new(va + 32 * M)).is_none());
    let after = w.mm.find_vma(UserAddr::new(va + 32 * M + 16 * K)).unwrap();
    assert_eq!(after.start, UserAddr::new(va + 32 * M + 16 * K));
    // nothing else was lost: the first 32 MiB leaf is still there
    let first = w.mm.page_tables().lookup(UserAddr::new(va)).unwrap().0;
    assert_eq!(first.level, Level::Pmd);
}

#[test]
fn arm64_16k_proc_files_count_16k_pages() {
    let w = host(Arch::Arm64_16k, 256 * M);
    let va = map(&w, 0, 64 * M, 32 * M, 0).unwrap();
    touch(&w.mm, va, 32 * M);
    let smaps = w.mm.read_proc(ProcFile::Smaps, None).unwrap();
    assert!(
        smaps.text.contains("KernelPageSize: 16 kB"),
        "{}",
        smaps.text
    );
    let pm =
        w.mm.read_proc(
            ProcFile::Pagemap,
            Some((UserAddr::new(va), UserAddr::new(va + 64 * M))),
        )
        .unwrap();
    // one entry per 16 KiB page, all holes: pagemap's walk skips VM_PFNMAP
    assert_eq!(pm.pagemap.len(), 4096);
    assert!(pm.pagemap.iter().all(|&e| e == 0));
    let (vec, _) = w.mm.mincore(UserAddr::new(va), 64 * M).unwrap();
    assert_eq!(vec.len(), 4096);
}

#[test]
fn arm64_16k_bar_not_on_a_page_is_not_mmap_capable() {
    let w = host_with(
        vec![Bar::mem64(2, (1 << 40) + 4 * K, 4 * K)],
        MmConfig {
            arch: Arch::Arm64_16k,
            ..MmConfig::default()
        },
    );
    let (mm, dev) = (&w.mm, &w.dev);
    let e = common::map_bar(mm, dev, 2, 0, 16 * K, MmapAddr::Kernel).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL);
    assert!(e.to_string().contains("not mmap-capable"), "{e}");
}

#[test]
fn a_16k_mm_on_4k_frames_is_refused_by_name() {
    let e = Mm::new(
        Arc::new(PhysMem::default()),
        MmConfig {
            arch: Arch::Arm64_16k,
            ..MmConfig::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("frames"), "{e}");
}

/// `hugepfn lab fuzz --seed 2` on Debian's arm64-16k kernels (cases 4121414464375343189 and
/// 9687895025574581520): mprotect, madvise and mremap round a length up to the 16 KiB page
/// (`PAGE_ALIGN`), where the model rounded to 4 KiB and left the last page out.
#[test]
fn arm64_16k_lengths_round_up_to_the_16k_page() {
    let w = host(Arch::Arm64_16k, 256 * M);
    let va = map(&w, 0, 64 * M, 32 * M, 0).unwrap();
    w.mm.mprotect(UserAddr::new(va), 2 * M + 4 * K, hugepfn_mm::Prot::R)
        .unwrap();
    let vmas = w.mm.vmas();
    assert_eq!(vmas[0].end - vmas[0].start, 2 * M + 16 * K, "{vmas:?}");
    // a mapping of 8 KiB is one 16 KiB page, and mremap moves all of it
    let small = map(&w, 64 * M, 8 * K, 32 * M, 0).unwrap();
    let dst = w.mm.find_aligned_area(16 * K, 32 * M, 0).unwrap();
    let st =
        w.mm.mremap(
            UserAddr::new(small),
            8 * K,
            8 * K,
            hugepfn_mm::mremap::MremapFlags {
                maymove: true,
                fixed: Some(dst),
            },
        )
        .unwrap();
    let moved = w.mm.find_vma(st.addr).unwrap();
    assert_eq!(moved.end - moved.start, 16 * K);
    assert!(
        w.mm.find_vma(UserAddr::new(small))
            .is_none_or(|v| v.start.as_u64() > small)
    );
}

/// Found in review: with 16 KiB pages the format has no PUD block (level-1 blocks need the
/// 4 KiB granule), so a configuration that allows PUD pfnmaps must fall back to 32 MiB PMDs at
/// a 64 GiB-aligned address, not end in SIGBUS when the PUD leaf cannot be encoded.
#[test]
fn arm64_16k_falls_back_to_pmd_where_a_pud_would_be_aligned() {
    let w = host_with(
        presets::h100_bars(),
        MmConfig {
            arch: Arch::Arm64_16k,
            // asks for PUD pfnmaps, which this format cannot hold
            pfnmap_cap: LeafCap::Pud,
            ..MmConfig::default()
        },
    );
    let (mm, dev) = (&w.mm, &w.dev);
    assert_eq!(mm.page_tables().leaf_cap(), LeafCap::Pmd);
    let at = mm.find_aligned_area(128 * G, 64 * G, 0).unwrap();
    let va = common::map_bar(mm, dev, 2, 0, 128 * G, MmapAddr::Fixed(at)).unwrap();
    let f = touch(mm, va, 64 * M);
    assert_eq!((f.faults, f.by_level.pmd, f.sigbus), (2, 2, 0), "{f:?}");
}
