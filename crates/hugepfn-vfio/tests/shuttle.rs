//! The real vfio-pci device under shuttle: faults race memory-decode changes on the device's own
//! `memory_lock` (hugepfn-mm's primitives are shuttle's with the `shuttle` feature), where
//! hugepfn-mm's suite has a copy of the driver.
//!
//! `cargo test -p hugepfn-vfio --features shuttle --test shuttle` (CI). More schedules:
//! `SHUTTLE_ITERATIONS=100000 cargo test --release -p hugepfn-vfio --features shuttle --test shuttle`.
#![cfg(feature = "shuttle")]

mod common;

use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{Access, Mm, MmConfig, MmapAddr, PhysMem};
use hugepfn_vfio::{HugeFaultLogic, VfioPciDevice, presets};

const M: u64 = 1 << 20;

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Runs `f` under shuttle's random and PCT schedulers.
fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = f.clone();
    let config = || {
        let mut c = shuttle::Config::new();
        c.stack_size = 8 << 20;
        c
    };
    shuttle::Runner::new(
        shuttle::scheduler::RandomScheduler::new(iterations()),
        config(),
    )
    .run(move || f());
    shuttle::Runner::new(
        shuttle::scheduler::PctScheduler::new(3, iterations()),
        config(),
    )
    .run(move || g());
}

/// A 4 MiB ivshmem BAR mapped at a 2 MiB-aligned VA in a fresh process: (memory, device, mm, VA).
fn bar_mapped() -> (Arc<PhysMem>, Arc<VfioPciDevice>, Arc<Mm>, u64) {
    let (phys, dev) = common::device("d", presets::ivshmem_bars(4 * M), HugeFaultLogic::Fixed);
    let mm = Mm::new(phys.clone(), MmConfig::default()).unwrap();
    let at = mm.find_aligned_area(4 * M, 2 * M, 0).unwrap();
    let va = common::map_bar(&mm, &dev, 2, 0, 4 * M, MmapAddr::Fixed(at)).unwrap();
    (phys, dev, mm, va)
}

/// Two faults (one in each 2 MiB block of a 4 MiB BAR) race memory decode going off. Whatever
/// the order, once the disable has returned no leaf is left: a fault either installed its leaf
/// before `vfio_pci_zap_and_down_write_memory_lock` zapped it, or saw memory off under the read
/// lock and raised SIGBUS. And every access that succeeded did so while memory was on.
#[test]
fn faults_racing_memory_disable_leave_no_leaf() {
    check(|| {
        let (phys, dev, mm, va) = bar_mapped();
        let faulting: Vec<_> = [0, 2 * M + 4096]
            .into_iter()
            .map(|off| {
                let mm = mm.clone();
                shuttle::thread::spawn(move || mm.access(UserAddr::new(va + off), true))
            })
            .collect();
        let d2 = dev.clone();
        let disable = shuttle::thread::spawn(move || d2.set_memory_enable(false));
        let results: Vec<Access> = faulting.into_iter().map(|t| t.join().unwrap()).collect();
        disable.join().unwrap();
        assert!(!dev.memory_enabled());
        assert_eq!(
            mm.leaves(UserAddr::new(va), UserAddr::new(va + 4 * M))
                .total(),
            0,
            "a leaf survived memory disable: {results:?}"
        );
        for r in &results {
            assert!(
                matches!(r, Access::Ok { .. } | Access::Sigbus),
                "unexpected outcome {r:?}"
            );
        }
        drop(mm);
        drop(dev);
        assert!(phys.leak_check().is_empty(), "page tables leaked");
    });
}

/// A fault races memory decode going off and on again: it ends mapped or with SIGBUS, never
/// with a leaf installed while memory is off (checked by the zap the disable did), and the
/// tables stay consistent.
#[test]
fn a_fault_racing_a_decode_toggle_ends_consistent() {
    check(|| {
        let (_phys, dev, mm, va) = bar_mapped();
        let m2 = mm.clone();
        let fault = shuttle::thread::spawn(move || m2.access(UserAddr::new(va + 12288), false));
        let d2 = dev.clone();
        let toggle = shuttle::thread::spawn(move || {
            d2.set_memory_enable(false);
            d2.set_memory_enable(true);
        });
        let r = fault.join().unwrap();
        toggle.join().unwrap();
        assert!(matches!(r, Access::Ok { .. } | Access::Sigbus), "{r:?}");
        let pt = mm.page_tables();
        assert_eq!(pt.reachable_tables(), pt.table_counts().total());
        // Memory is on again: the next access maps (refaults if it was zapped).
        assert!(matches!(
            mm.access(UserAddr::new(va + 12288), false),
            Access::Ok { .. }
        ));
    });
}
