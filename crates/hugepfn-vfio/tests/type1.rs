//! vfio type1 `MAP_DMA`/`UNMAP_DMA` of BAR mappings: Linux's selftest cases
//! (`vfio_dma_mapping_mmio_test.c`), the published 32 GB figure (0fd06844de5d: 8M page-sized
//! lookups per page vs 32 PUD-sized ones batched), and every error path.

use std::sync::Arc;

use hugepfn_mm::addr::IoVirtAddr;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{LeafCounts, Mm, MmConfig, MmapAddr, MmapRequest, PhysAddr, PhysMem, Prot};
use hugepfn_vfio::iommu::{CapReg, IommuProt};
use hugepfn_vfio::type1::{DmaMapRequest, PfnLookup, Type1Error, VfioIommu};
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, presets, region_offset};

fn io(a: u64) -> IoVirtAddr {
    IoVirtAddr::new(a)
}

fn pa(a: u64) -> PhysAddr {
    PhysAddr::new(a).expect("52-bit")
}

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G: u64 = 1 << 30;
const IOVA: u64 = 0x1000_0000_0000;

struct World {
    phys: Arc<PhysMem>,
    dev: Arc<VfioPciDevice>,
    mm: Arc<Mm>,
}

fn world(bars: Vec<Bar>) -> World {
    let phys = Arc::new(PhysMem::default());
    let dev = VfioPciDevice::new(phys.clone(), "gpu", bars, HugeFaultLogic::Fixed).expect("dev");
    let mm = Mm::new(phys.clone(), MmConfig::default()).expect("mm");
    World { phys, dev, mm }
}

impl World {
    /// mmap `len` bytes of BAR `bar` from `offset` at a VA `align`-aligned plus `skew`.
    fn mmap(&self, bar: u8, offset: u64, len: u64, align: u64, skew: u64) -> u64 {
        let va = self
            .mm
            .find_aligned_area(len, align, skew)
            .expect("va")
            .as_u64();
        let f = self.dev.open();
        self.mm
            .mmap(MmapRequest {
                addr: MmapAddr::Fixed(UserAddr::new(va)),
                len,
                prot: Prot::RW,
                shared: true,
                offset: region_offset(bar) + offset,
                file: Some(&f),
            })
            .expect("mmap")
            .as_u64()
    }

    fn container(&self) -> VfioIommu {
        VfioIommu::new(self.mm.clone(), CapReg::SERVER).expect("container")
    }
}

fn leaves(pud: u64, pmd: u64, pte: u64) -> LeafCounts {
    LeafCounts { pud, pmd, pte }
}

fn map(c: &VfioIommu, va: u64, iova: u64, size: u64, lookup: PfnLookup) -> Result<(), Type1Error> {
    c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(iova),
        size,
        lookup,
    ))
    .1
}

/// Every IOVA of the range translates to the BAR address the CPU mapping shows.
fn assert_translates(w: &World, c: &VfioIommu, va: u64, iova: u64, size: u64) {
    let mut off = 0;
    while off < size {
        let cpu = w.mm.follow_pfnmap(uva(va + off)).expect("cpu mapping").pfn;
        let io = c
            .domain()
            .iova_to_phys(io(iova + off))
            .expect("iommu mapping");
        assert_eq!(io, cpu.phys(), "iova {:#x}", iova + off);
        off += (size / 7).max(K4) & !(K4 - 1);
    }
}

// ----- vfio_dma_mapping_mmio_test.c ------------------------------------------------------

#[test]
fn selftest_map_full_bar() {
    // The selftest library aligns BAR mmaps to min(size, 1G) (557dbdf6c4e9).
    let w = world(presets::h100_bars());
    let va = w.mmap(presets::H100_APERTURE, 0, 128 * G, G, 0);
    let c = w.container();
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        128 * G,
        PfnLookup::Batched,
    ));
    r.expect("type1 must succeed");
    assert_eq!(st.counters.lookups, 128);
    assert_eq!(
        st.counters.fixups, 128,
        "each GiB faulted in by fixup_user_fault"
    );
    assert_eq!(st.counters.iommu_maps, 1, "one contiguous run");
    assert_eq!(c.iommu_entries(), leaves(128, 0, 0));
    assert_translates(&w, &c, va, IOVA, 128 * G);
    let u = c.unmap_dma(IoVirtAddr::new(IOVA), 128 * G).expect("unmap");
    assert_eq!(
        (u.bytes, u.dmas, u.entries),
        (128 * G, 1, leaves(128, 0, 0))
    );
    assert_eq!(c.iommu_entries(), leaves(0, 0, 0));
}

#[test]
fn selftest_map_partial_bar() {
    let w = world(presets::h100_bars());
    let va = w.mmap(presets::H100_APERTURE, 0, 128 * G, G, 0);
    let c = w.container();
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        K4,
        PfnLookup::Batched,
    ));
    r.expect("one page");
    // the lookup saw a 1 GiB host leaf but npages = 1 caps the round
    assert_eq!((st.counters.lookups, st.counters.iommu_maps), (1, 1));
    assert_eq!(c.iommu_entries(), leaves(0, 0, 1));
    assert_eq!(
        c.domain().iova_to_phys(io(IOVA + 123)),
        Some(pa(0x1000_0000_0000 + 123))
    );
    c.unmap_dma(IoVirtAddr::new(IOVA), K4).expect("unmap");
}

#[test]
fn selftest_map_bar_misaligned() {
    // VA = 1 GiB-aligned + PAGE_SIZE, size = min(BAR, 1G): every host leaf is 4 KiB, so even
    // the batched lookup covers one page per round; the IOMMU still gets one 1 GiB page
    // because iova and the physical address are both aligned.
    let w = world(presets::h100_bars());
    let va = w.mmap(presets::H100_APERTURE, 0, G, G, K4);
    assert_eq!(va % G, K4);
    let c = w.container();
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        G,
        PfnLookup::Batched,
    ));
    r.expect("type1 must succeed");
    assert_eq!(st.counters.lookups, G / K4);
    assert_eq!(w.mm.all_leaves(), leaves(0, 0, G / K4));
    assert_eq!(c.iommu_entries(), leaves(1, 0, 0));
    assert_translates(&w, &c, va, IOVA, G);
    c.unmap_dma(IoVirtAddr::new(IOVA), G).expect("unmap");
    assert_eq!(w.mm.munmap(UserAddr::new(va), G).map(|_| ()), Ok(()));
}

// ----- the published figure ---------------------------------------------------------------

/// "an overhead of ~1s for DMA mapping a 32GB PCI BAR is reduced to sub-millisecond (8M page
/// sized operations reduced to 32 pud sized operations)" (0fd06844de5d).
#[test]
fn a_32g_bar_is_8m_lookups_per_page_and_32_batched() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 32 * G)]);
    let va = w.mmap(1, 0, 32 * G, G, 0);
    let c = w.container();
    let (per_page, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        32 * G,
        PfnLookup::PerPage,
    ));
    r.expect("per page");
    c.unmap_dma(IoVirtAddr::new(IOVA), 32 * G).expect("unmap");
    let (batched, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        32 * G,
        PfnLookup::Batched,
    ));
    r.expect("batched");
    assert_eq!(per_page.counters.lookups, 8_388_608);
    assert_eq!(batched.counters.lookups, 32);
    assert_eq!(
        per_page.counters.lookups / batched.counters.lookups,
        262_144
    );
    // both end in 32 IOMMU superpages: the win is in the lookups, not the IOMMU
    assert_eq!(per_page.counters.entries, leaves(32, 0, 0));
    assert_eq!(batched.counters.entries, leaves(32, 0, 0));
    // the first map faulted the BAR in; the second found it mapped
    assert_eq!((per_page.counters.fixups, batched.counters.fixups), (32, 0));
    // (times: BENCHMARKS-consumers.md; speed is checked by benchmarks, not by timed tests)
    assert_eq!(
        (
            per_page.counters.follow_calls,
            batched.counters.follow_calls
        ),
        (8_388_608 + 32, 32)
    );
}

#[test]
fn host_leaf_size_sets_the_batch() {
    // BAR mapped at a 2 MiB- but not 1 GiB-congruent VA: 2 MiB host leaves, 512 rounds per GiB.
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 4 * G)]);
    let va = w.mmap(1, 0, 4 * G, G, M2);
    let c = w.container();
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        4 * G - M2,
        PfnLookup::Batched,
    ));
    r.expect("map");
    assert_eq!(st.counters.lookups, (4 * G - M2) / M2);
    // iova 1G-aligned, pa 1G-aligned: 3 x 1G then 511 x 2M
    assert_eq!(c.iommu_entries(), leaves(3, 511, 0));
}

#[test]
fn iommu_capability_caps_the_entries() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 4 * G)]);
    let va = w.mmap(1, 0, 4 * G, G, 0);
    for (cap, want) in [
        (CapReg::SERVER, leaves(4, 0, 0)),
        (CapReg::ONLY_2M, leaves(0, 2048, 0)),
        (CapReg::NO_SUPERPAGES, leaves(0, 0, 1 << 20)),
    ] {
        let c = VfioIommu::new(w.mm.clone(), cap).expect("container");
        map(&c, va, IOVA, 4 * G, PfnLookup::Batched).expect("map");
        assert_eq!(c.iommu_entries(), want, "{cap:?}");
    }
    // an iova offset from the physical address by 4K within 2M forces 4K IOMMU pages
    let c = w.container();
    map(&c, va, IOVA + K4, 4 * M2, PfnLookup::Batched).expect("map");
    assert_eq!(c.iommu_entries(), leaves(0, 0, 2048));
}

#[test]
fn discontiguous_pfns_split_the_run() {
    // Two mappings adjacent in VA, swapped in the BAR: two contiguous runs, two
    // vfio_iommu_map calls; the lookup that found the break is done again for the second run.
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 2 * G)]);
    let va = w.mm.find_aligned_area(2 * G, G, 0).expect("va").as_u64();
    let f = w.dev.open();
    for (at, bar_offset) in [(va, G), (va + G, 0)] {
        w.mm.mmap(MmapRequest {
            addr: MmapAddr::Fixed(UserAddr::new(at)),
            len: G,
            prot: Prot::RW,
            shared: true,
            offset: region_offset(1) + bar_offset,
            file: Some(&f),
        })
        .expect("half");
    }
    let c = w.container();
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va),
        IoVirtAddr::new(IOVA),
        2 * G,
        PfnLookup::Batched,
    ));
    r.expect("map");
    assert_eq!((st.counters.iommu_maps, st.counters.lookups), (2, 3));
    assert_eq!(
        c.domain().iova_to_phys(io(IOVA)),
        Some(pa(0x1000_4000_0000))
    );
    assert_eq!(
        c.domain().iova_to_phys(io(IOVA + G)),
        Some(pa(0x1000_0000_0000))
    );
}

// ----- errors ------------------------------------------------------------------------------

#[test]
fn einval_for_bad_ranges_and_eexist_for_overlaps() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 4 * G)]);
    let va = w.mmap(1, 0, 4 * G, G, 0);
    let c = w.container();
    map(&c, va, IOVA, G, PfnLookup::Batched).expect("first");
    let errno = |r: Result<(), Type1Error>| r.map_err(|e| e.errno_name()).err();
    assert_eq!(
        errno(map(&c, va, IOVA + K4 + 1, K4, PfnLookup::Batched)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(map(&c, va + 1, IOVA + G, K4, PfnLookup::Batched)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(map(&c, va, IOVA + G, K4 + 1, PfnLookup::Batched)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(map(&c, va, IOVA + G, 0, PfnLookup::Batched)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(map(&c, va, u64::MAX - K4 + 1, 2 * K4, PfnLookup::Batched)),
        Some("EINVAL")
    );
    // the MSI window and beyond the 48-bit aperture
    assert_eq!(
        errno(map(&c, va, 0xfee0_0000, M2, PfnLookup::Batched)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(map(&c, va, 1 << 48, K4, PfnLookup::Batched)),
        Some("EINVAL")
    );
    // no permission at all
    let none = DmaMapRequest {
        read: false,
        write: false,
        ..DmaMapRequest::rw(
            UserAddr::new(va),
            IoVirtAddr::new(IOVA + G),
            K4,
            PfnLookup::Batched,
        )
    };
    assert_eq!(c.map_dma(none).1.map_err(|e| e.errno_name()), Err("EINVAL"));
    // overlapping iova ranges, from either side
    for (iova, size) in [
        (IOVA, K4),
        (IOVA + G - K4, 2 * K4),
        (IOVA - K4, 2 * K4),
        (IOVA - G, 4 * G),
    ] {
        let e = map(&c, va + G, iova, size, PfnLookup::Batched).unwrap_err();
        assert!(
            matches!(
                e,
                Type1Error::Exist {
                    existing_iova: IOVA,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.errno_name(), "EEXIST");
    }
    // nothing already mapped was lost
    assert_eq!(c.dmas().len(), 1);
    assert_eq!(c.iommu_entries(), leaves(1, 0, 0));
    assert_translates(&w, &c, va, IOVA, G);
}

#[test]
fn efault_when_the_bar_cannot_be_faulted_in() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 4 * G)]);
    let va = w.mmap(1, 0, 4 * G, G, 0);
    let c = w.container();
    map(&c, va, IOVA, G, PfnLookup::Batched).expect("first");
    // memory decode off: revoked, and the fault path SIGBUSes → fixup_user_fault fails
    w.dev.set_memory_enable(false);
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va + G),
        IoVirtAddr::new(IOVA + G),
        G,
        PfnLookup::Batched,
    ));
    let e = r.unwrap_err();
    assert_eq!(e.errno_name(), "EFAULT", "{e}");
    assert_eq!((st.counters.fixups, st.counters.iommu_maps), (1, 0));
    // the earlier DMA mapping is untouched: type1 is not told of the revocation
    assert_eq!(c.iommu_entries(), leaves(1, 0, 0));
    assert_eq!(
        c.domain().iova_to_phys(io(IOVA)),
        Some(pa(0x1000_0000_0000))
    );
    w.dev.set_memory_enable(true);
    // a failure in the middle unmaps what the new mapping had mapped, nothing else
    w.mm.munmap(UserAddr::new(va + 3 * G), G).expect("hole");
    let (st, r) = c.map_dma(DmaMapRequest::rw(
        UserAddr::new(va + G),
        IoVirtAddr::new(IOVA + G),
        3 * G,
        PfnLookup::Batched,
    ));
    assert_eq!(r.map_err(|e| e.errno_name()), Err("EFAULT"));
    assert_eq!(
        st.counters.iommu_maps, 0,
        "the run broke before the first map"
    );
    assert_eq!(c.iommu_entries(), leaves(1, 0, 0));
    assert_eq!(c.dmas().len(), 1);
    // an unmapped VA
    let e = map(&c, va + 3 * G, IOVA + 8 * G, K4, PfnLookup::Batched).unwrap_err();
    assert_eq!(e.errno_name(), "EFAULT");
    assert!(e.to_string().contains("no VMA"), "{e}");
}

#[test]
fn efault_for_a_read_only_mapping_when_the_device_writes() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 2 * G)]);
    let va = w.mm.find_aligned_area(2 * G, G, 0).expect("va").as_u64();
    let f = w.dev.open();
    w.mm.mmap(MmapRequest {
        addr: MmapAddr::Fixed(UserAddr::new(va)),
        len: 2 * G,
        prot: Prot::R,
        shared: true,
        offset: region_offset(1),
        file: Some(&f),
    })
    .expect("mmap");
    let c = w.container();
    let e = map(&c, va, IOVA, G, PfnLookup::Batched).unwrap_err();
    assert_eq!(e.errno_name(), "EFAULT", "{e}");
    // read-only DMA works
    let ro = DmaMapRequest {
        write: false,
        ..DmaMapRequest::rw(
            UserAddr::new(va),
            IoVirtAddr::new(IOVA),
            G,
            PfnLookup::Batched,
        )
    };
    c.map_dma(ro).1.expect("read-only DMA");
    let (_, _, prot) = c.domain().translate(io(IOVA)).expect("mapped");
    assert_eq!((prot.read, prot.write), (true, false));
    assert_ne!(prot, IommuProt::RW);
}

#[test]
fn unmap_follows_type1v2() {
    let w = world(vec![Bar::mem64(1, 0x1000_0000_0000, 4 * G)]);
    let va = w.mmap(1, 0, 4 * G, G, 0);
    let c = w.container();
    map(&c, va, IOVA, G, PfnLookup::Batched).expect("a");
    map(&c, va + G, IOVA + G, G, PfnLookup::Batched).expect("b");
    map(&c, va + 2 * G, IOVA + 4 * G, M2, PfnLookup::Batched).expect("c");
    let errno = |r: Result<_, Type1Error>| r.map_err(|e| e.errno_name()).err();
    // bisecting a mapping
    assert_eq!(
        errno(c.unmap_dma(IoVirtAddr::new(IOVA + K4), G)),
        Some("EINVAL")
    );
    assert_eq!(
        errno(c.unmap_dma(IoVirtAddr::new(IOVA), G + K4)),
        Some("EINVAL")
    );
    assert_eq!(errno(c.unmap_dma(IoVirtAddr::new(IOVA), 0)), Some("EINVAL"));
    assert_eq!(
        errno(c.unmap_dma(IoVirtAddr::new(IOVA + 1), K4)),
        Some("EINVAL")
    );
    // nothing there: success, zero bytes
    assert_eq!(
        c.unmap_dma(IoVirtAddr::new(IOVA + 8 * G), G)
            .map(|u| u.bytes),
        Ok(0)
    );
    // two whole mappings at once
    let u = c.unmap_dma(IoVirtAddr::new(IOVA), 2 * G).expect("unmap");
    assert_eq!((u.bytes, u.dmas, u.entries), (2 * G, 2, leaves(2, 0, 0)));
    assert_eq!(c.iommu_entries(), leaves(0, 1, 0));
    // and the slot can be mapped again
    map(&c, va, IOVA, 2 * G, PfnLookup::Batched).expect("again");
}

#[test]
fn teardown_frees_every_table() {
    let w = world(presets::h100_bars());
    let va = w.mmap(presets::H100_APERTURE, 0, 128 * G, G, K4);
    let c = w.container();
    map(&c, va, IOVA, 8 * M2, PfnLookup::Batched).expect("map");
    map(
        &c,
        va + 8 * M2,
        IOVA + 4 * G + K4,
        4 * M2,
        PfnLookup::Batched,
    )
    .expect("4K iommu pages");
    assert!(c.domain().table_pages() > 2);
    drop(c);
    let World { phys, dev, mm } = w;
    drop(mm);
    drop(dev);
    assert!(phys.leak_check().is_empty(), "{:?}", phys.leak_check());
}

/// A user VA for the typed calls.
fn uva(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new_user(a).expect("a user VA")
}
