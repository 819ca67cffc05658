//! Stress: threads faulting, following, revoking and unmapping/remapping one vfio BAR mapping at
//! random, for a bounded time; then the reference model's invariants and a leak check.
//!
//! CI runs it for 2 s. A long run: `HUGEPFN_STRESS_SECS=600 cargo test --release -p hugepfn-vfio --test stress -- --nocapture`.

mod common;
use common::uva;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{Access, Mm, MmConfig, MmapAddr};
use hugepfn_vfio::{HugeFaultLogic, presets};

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;
const BAR: u64 = 0xff_0000_0000;
const LEN: u64 = 2 * G;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn secs() -> u64 {
    std::env::var("HUGEPFN_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

#[test]
fn random_faults_follows_revokes_and_unmaps_keep_every_invariant() {
    let (phys, dev) = common::device("d", presets::ivshmem_bars(2 * G), HugeFaultLogic::Fixed);
    let mm = Mm::new(phys.clone(), MmConfig::default()).unwrap();
    let va = mm.find_aligned_area(LEN, G, 0).unwrap().as_u64();
    let map = |addr: u64, len: u64| {
        common::map_bar(
            &mm,
            &dev,
            2,
            addr - va,
            len,
            MmapAddr::Fixed(UserAddr::new(addr)),
        )
    };
    map(va, LEN).unwrap();
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(secs());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (mm, dev, stop, ops, map) = (&mm, &dev, &stop, &ops, &map);
            s.spawn(move || {
                let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t + 1) * 0x1234_5678));
                while !stop.load(Ordering::Relaxed) {
                    let off = (r.next() % (LEN / 4096)) * 4096;
                    match r.next() % 100 {
                        0..=59 => {
                            let a = mm.access(UserAddr::new(va + off), r.next().is_multiple_of(2));
                            assert!(
                                matches!(a, Access::Ok { .. } | Access::Sigbus | Access::NoVma),
                                "{a:?}"
                            );
                        }
                        60..=89 => {
                            if let Ok(f) = mm.follow_pfnmap(uva(va + off)) {
                                assert_eq!(f.pfn.as_u64(), (BAR + off) >> 12, "follow at {off:#x}");
                            }
                        }
                        90..=93 => {
                            dev.set_memory_enable(false);
                            dev.set_memory_enable(true);
                        }
                        _ => {
                            // Unmap a 2 MiB piece and map it again at the same place.
                            let piece = off & !(2 * M - 1);
                            if mm.munmap(UserAddr::new(va + piece), 2 * M).is_ok() {
                                let _ = map(va + piece, 2 * M);
                            }
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ops.load(Ordering::Relaxed) > 1000, "the threads ran");
    // Afterwards: fill any hole, memory on, touch everything; every page maps its own pfn.
    dev.set_memory_enable(true);
    let mut off = 0;
    while off < LEN {
        if mm.find_vma(UserAddr::new(va + off)).is_none() {
            map(va + off, 2 * M).unwrap();
        }
        off += 2 * M;
    }
    let r = mm.access_range(UserAddr::new(va), LEN / 4096, 4096, true, false);
    assert_eq!((r.sigbus, r.no_vma, r.oom), (0, 0, 0));
    mm.page_tables()
        .for_each_leaf(UserAddr::new(va), UserAddr::new(va + LEN), &mut |lva, l| {
            assert_eq!(
                l.pfn.as_u64(),
                (BAR + lva.as_u64() - va) >> 12,
                "leaf at {:#x}",
                lva.as_u64() - va
            );
            assert!(l.pfn.is_aligned_order(l.level.order()));
        });
    let pt = mm.page_tables();
    pt.reclaim_deferred();
    assert_eq!(
        pt.reachable_tables() + pt.deferred_tables() as u64,
        pt.table_counts().total()
    );
    println!(
        "{} operations in {} s; leaves {:?}",
        ops.load(Ordering::Relaxed),
        secs(),
        mm.all_leaves()
    );
    drop(mm);
    assert!(
        phys.leak_check().is_empty(),
        "{:?}",
        phys.leak_check().len()
    );
}
