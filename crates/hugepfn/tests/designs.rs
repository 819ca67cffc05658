//! The RFC's three fault-path designs: same leaves where all work, and the hazards that set
//! them apart, each shown here.

use std::sync::Arc;

use hugepfn::compare::compare;
use hugepfn::runner::RunOptions;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{
    Access, FaultPath, Level, Mm, MmConfig, MmapAddr, MmapRequest, PhysMem, Prot, ThpPolicy,
};
use hugepfn_vfio::{HugeFaultLogic, VfioPciDevice, presets, region_offset};

const G: u64 = 1 << 30;

fn setup(design: FaultPath, thp: ThpPolicy) -> (Arc<PhysMem>, Arc<VfioPciDevice>, Arc<Mm>, u64) {
    let phys = Arc::new(PhysMem::default());
    let dev = VfioPciDevice::new(
        phys.clone(),
        "d",
        presets::ivshmem_bars(2 * G),
        HugeFaultLogic::Fixed,
    )
    .unwrap();
    let mm = Mm::new(
        phys.clone(),
        MmConfig {
            fault_path: design,
            thp,
            ..MmConfig::default()
        },
    )
    .unwrap();
    let va = mm.find_aligned_area(2 * G, G, 0).unwrap().as_u64();
    let f = dev.open();
    mm.mmap(MmapRequest {
        addr: MmapAddr::Fixed(UserAddr::new(va)),
        len: 2 * G,
        prot: Prot::RW,
        shared: true,
        offset: region_offset(2),
        file: Some(&f),
    })
    .unwrap();
    (phys, dev, mm, va)
}

#[test]
fn all_three_designs_map_the_h100_bar_the_same_way() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/h100-bar1-vmm.toml"
    );
    let sc = hugepfn_scenario::load_scenario(path).unwrap();
    let rows = compare(&sc, RunOptions::default()).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r.expectations_met, "{}", r.design);
        assert_eq!(r.leaves, [128, 8, 0], "{}", r.design);
    }
    // Only the remap design allocates and frees tables on the way, and flushes for them.
    let (a, c) = (&rows[0], &rows[2]);
    assert_eq!(a.tables_freed, 0);
    assert!(c.tables_freed >= 128, "{}", c.tables_freed);
    assert!(c.tlb_flushes > a.tlb_flushes);
}

/// Design (c) frees page tables that are linked into the tree while another walker may be inside
/// them. Here the "other walker" is a concurrent fault elsewhere in the same GiB that has already
/// walked down to the PTE table (the core allocated it on the way to `->fault`): the remap that
/// installs the 1 GiB leaf frees that table under its feet, and the frame is handed out again.
#[test]
fn hazard_remap_overwrite_frees_tables_a_walker_still_holds() {
    for design in [FaultPath::HugeFault, FaultPath::RemapOverwrite] {
        let (phys, _dev, mm, va) = setup(design, ThpPolicy::Always);
        let pt = mm.page_tables();
        // CPU 1 is inside its fault: tables down to the PTE level exist, it holds the PTE table.
        let held = pt
            .slot_alloc(hugepfn_mm::UserAddr::new(va + 0x1234_5000), Level::Pte)
            .unwrap();
        // CPU 0 faults at the start of the GiB.
        assert!(matches!(
            mm.access(UserAddr::new(va), true),
            Access::Ok { .. }
        ));
        let freed = phys.table(held.table).unwrap().level().is_none();
        match design {
            FaultPath::RemapOverwrite => {
                assert!(freed, "the table CPU 1 holds was freed");
                assert!(pt.hazards().live_table_freed >= 2);
                // ...and reused: CPU 1 now reads another process's page table.
                let others: Vec<_> = (0..4)
                    .map(|_| Mm::new(phys.clone(), MmConfig::default()).unwrap())
                    .collect();
                let reused = phys.table(held.table).unwrap().level().is_some();
                assert!(reused, "the frame went to another process's PGD");
                drop(others);
            }
            _ => {
                assert!(!freed, "huge_fault never frees a linked table");
                assert_eq!(pt.hazards().live_table_freed, 0);
                // The price: the table the walker allocated keeps this GiB below 1 GiB leaves.
                assert_eq!(mm.follow_pfnmap(uva(va)).unwrap().level, Level::Pmd);
            }
        }
    }
}

/// Design (b) calls the driver before the core's THP gate: `thp = never` and MADV_NOHUGEPAGE no
/// longer keep huge leaves away (the sysfs policy is what users and distros rely on).
#[test]
fn hazard_early_fault_bypasses_the_thp_policy() {
    for (design, want) in [
        (FaultPath::HugeFault, Level::Pte),
        (FaultPath::EarlyFault, Level::Pud),
    ] {
        let (_p, _d, mm, va) = setup(design, ThpPolicy::Never);
        assert!(matches!(
            mm.access(UserAddr::new(va), false),
            Access::Ok { .. }
        ));
        assert_eq!(mm.follow_pfnmap(uva(va)).unwrap().level, want, "{design:?}");
    }
}

/// Design (c) runs remap_pfn_range with the mmap lock held only for read.
#[test]
fn hazard_remap_overwrite_remaps_under_the_read_lock() {
    for design in FaultPath::ALL {
        let (_p, _d, mm, va) = setup(design, ThpPolicy::Always);
        mm.access_range(UserAddr::new(va), 2 * G / 4096, 4096, true, false);
        let h = mm.page_tables().hazards();
        let want = if design == FaultPath::RemapOverwrite {
            2
        } else {
            0
        };
        assert_eq!(h.remap_under_read_lock, want, "{design:?}");
        assert_eq!(mm.all_leaves().pud, 2, "{design:?}");
    }
}

/// Every design stops at the architecture's largest pfnmap leaf: PMD on arm64 (no
/// `ARCH_SUPPORTS_PUD_PFNMAP`), 4 KiB on riscv with 6.12 (no `ARCH_SUPPORTS_HUGE_PFNMAP`), PUD on
/// x86-64 — early_fault and remap_overwrite included, which bypass the THP gate.
#[test]
fn every_design_stops_at_the_architectures_largest_pfnmap_leaf() {
    let text = |arch: &str| {
        format!(
            "name = \"t\"\narch = \"{arch}\"\n[[device]]\nname = \"d\"\n\
             bars = [{{ index = 2, phys = \"0x4000000000\", size = \"2G\" }}]\n\
             [[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 2\nva = \"align:1G\"\n\
             [[step]]\nop = \"touch\"\nmap = \"m\"\n[[step]]\nop = \"expect\"\nsigbus = 0\n"
        )
    };
    for (arch, kernel, want) in [
        ("x86_64", None, [2, 0, 0]),
        ("arm64", None, [0, 1024, 0]),
        ("arm64", Some(hugepfn_kernels::Kernel::V7_3_4), [0, 1024, 0]),
        ("riscv64-sv39", None, [2, 0, 0]),
        (
            "riscv64-sv39",
            Some(hugepfn_kernels::Kernel::V6_12_95),
            [0, 0, 524288],
        ),
    ] {
        let sc = hugepfn_scenario::parse_scenario(&text(arch), "t.toml").unwrap();
        let opts = RunOptions {
            kernel,
            ..RunOptions::default()
        };
        for row in compare(&sc, opts).unwrap() {
            assert_eq!(
                [row.faults_pud, row.faults_pmd, row.faults_pte],
                want,
                "{arch} {kernel:?} {}",
                row.design
            );
        }
    }
}

/// A user VA for the typed calls.
fn uva(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new_user(a).expect("a user VA")
}
