//! Benchmarks of the BAR's consumers: vfio type1 `MAP_DMA` of the H100's 128 GiB BAR1 (batched
//! by `addr_mask` as in Linux 6.15+, and per page as before), and a KVM guest's pass over it.
//!
//! `cargo bench -p hugepfn --bench consumers` first prints the one-run figures (32 GB and
//! 128 GiB, per page vs batched, and their ratio, measured back to back), then the criterion
//! statistics. `HUGEPFN_GUEST_BOOT=1` also prints the guest-boot table (`hugepfn guest-boot`).
//! Results: BENCHMARKS-consumers.md.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use hugepfn::consumers_cli::{
    DmaBench, DmaLookupArg, GUEST_BAR_GPA, GuestBootArgs, format, guest_boot,
};
use hugepfn_kvm::{KvmConfig, UserMemoryRegion, Vm};
use hugepfn_vfio::type1::PfnLookup;

const G: u64 = 1 << 30;
const BAR1: u64 = 128 * G;

/// `MAP_DMA` timed, `UNMAP_DMA` not.
fn map_loop(d: &DmaBench, lookup: PfnLookup, iters: u64, cold: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        if cold {
            // memory decode off and on: the BAR is zapped, MAP_DMA must fault it back in
            d.dev.set_memory_enable(false);
            d.dev.set_memory_enable(true);
        }
        let (_, t) = d.map(lookup).expect("map");
        total += t;
        d.unmap().expect("unmap");
    }
    total
}

fn dma_benches(c: &mut Criterion) {
    let warm = DmaBench::new(BAR1, 0, true).expect("setup");
    let mut g = c.benchmark_group("dma_map");
    g.bench_function("128G batched, BAR mapped (128 lookups)", |b| {
        b.iter_custom(|n| map_loop(&warm, PfnLookup::Batched, n, false))
    });
    g.bench_function(
        "128G batched, BAR revoked (128 lookups + 128 fixups)",
        |b| b.iter_custom(|n| map_loop(&warm, PfnLookup::Batched, n, true)),
    );
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("128G per page (33.5M lookups)", |b| {
        b.iter_custom(|n| map_loop(&warm, PfnLookup::PerPage, n, false))
    });
    g.finish();
}

fn kvm_benches(c: &mut Criterion) {
    let d = DmaBench::new(BAR1, 0, true).expect("setup");
    let vm = Vm::new(d.mm.clone(), KvmConfig::default()).expect("vm");
    let slot = |size: u64| UserMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_BAR_GPA,
        memory_size: size,
        userspace_addr: if size == 0 {
            hugepfn_mm::UserAddr::default()
        } else {
            d.va
        },
    };
    c.bench_function("guest touches 128G BAR, 1G EPT (128 violations)", |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                vm.set_user_memory_region(&slot(BAR1)).expect("slot");
                let t0 = Instant::now();
                let (t, r) = vm.guest_touch(GUEST_BAR_GPA, BAR1 / 4096, 4096, true);
                total += t0.elapsed();
                r.expect("touch");
                assert_eq!(t.violations, 128);
                vm.set_user_memory_region(&slot(0)).expect("delete");
            }
            total
        })
    });
}

criterion_group!(benches, dma_benches, kvm_benches);

/// Batched and per-page `MAP_DMA` of the same BAR, back to back in one run.
fn one_run_figures() {
    println!("one run, BAR already faulted in, VA 1 GiB-aligned:");
    for size in [32 * G, BAR1] {
        let d = DmaBench::new(size, 0, true).expect("setup");
        let (pl, pt) = d.map(PfnLookup::PerPage).expect("per page");
        d.unmap().expect("unmap");
        let (bl, bt) = d.map(PfnLookup::Batched).expect("batched");
        d.unmap().expect("unmap");
        println!(
            "  {:>4} GiB: per page {:>9} lookups {:>10.3} ms | batched {:>4} lookups {:>8.1} µs | time ratio {:.0}x, lookup ratio {}x",
            size / G,
            pl,
            pt.as_secs_f64() * 1e3,
            bl,
            bt.as_secs_f64() * 1e6,
            pt.as_secs_f64() / bt.as_secs_f64(),
            pl / bl.max(1)
        );
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    if benching {
        one_run_figures();
        if std::env::var_os("HUGEPFN_GUEST_BOOT").is_some() {
            let args = GuestBootArgs {
                bar_size: BAR1,
                toggles: std::env::var("HUGEPFN_GUEST_BOOT_TOGGLES")
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(2),
                dma: Some(DmaLookupArg::Batched),
                kernel: None,
                only: None,
                arch: None,
                json: false,
            };
            match guest_boot(&args) {
                Ok(r) => print!("{}", format(&r)),
                Err(e) => eprintln!("guest-boot: {e}"),
            }
        }
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
