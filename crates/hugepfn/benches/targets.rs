//! Criterion benchmarks for the speed targets of the core and fault-path issues. The workloads
//! are `hugepfn::bench`'s, so `hugepfn bench` and `cargo bench` time the same code.
//!
//! `cargo bench -p hugepfn` (all; several minutes), or one group: `cargo bench -p hugepfn -- remap`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hugepfn::bench::{BAR1_SIZE, remap, remap_setup, touch, vfio_setup};
use hugepfn_mm::LeafCap;

fn remap_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("remap");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("remap_pfn_range 128G PUD", |b| {
        b.iter_batched(
            || remap_setup(BAR1_SIZE, LeafCap::Pud).expect("setup"),
            |(mm, va)| {
                remap(&mm, va, BAR1_SIZE).expect("remap");
                mm
            },
            BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Elements(BAR1_SIZE / 4096));
    g.bench_function("remap_pfn_range 128G 4K", |b| {
        b.iter_batched(
            || remap_setup(BAR1_SIZE, LeafCap::Pte).expect("setup"),
            |(mm, va)| {
                remap(&mm, va, BAR1_SIZE).expect("remap");
                mm
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn follow_benches(c: &mut Criterion) {
    let (mm, va) = remap_setup(1 << 30, LeafCap::Pte).expect("setup");
    remap(&mm, va, 1 << 30).expect("remap");
    let g = mm.mmap_read();
    c.bench_function("follow_pfnmap_start+end 4K leaf", |b| {
        b.iter(|| {
            let f = g
                .follow_pfnmap_start(uva(std::hint::black_box((va + 0x1234_5000).as_u64())))
                .expect("mapped");
            f.args.pfn
        })
    });
}

fn fault_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("touch 128G at 1G-aligned VA (128 faults)", |b| {
        b.iter_batched(
            || vfio_setup(BAR1_SIZE, 0).expect("setup"),
            |(mm, dev, va)| {
                assert_eq!(touch(&mm, va, BAR1_SIZE), 128);
                (mm, dev)
            },
            BatchSize::PerIteration,
        )
    });
    // The rate of 4 KiB faults, on 4 GiB (1 Mi faults) so a sample stays short; `hugepfn bench`
    // does the full 128 GiB once.
    let len = 4u64 << 30;
    g.throughput(Throughput::Elements(len / 4096));
    g.bench_function("touch 4G at 4K-skewed VA (4 KiB faults)", |b| {
        b.iter_batched(
            || vfio_setup(len, 4096).expect("setup"),
            |(mm, dev, va)| {
                assert_eq!(touch(&mm, va, len), len / 4096);
                (mm, dev)
            },
            BatchSize::PerIteration,
        )
    });
    // The floor under a fault's cost: its locks alone (hugepfn::bench::fault_lock_floor).
    g.throughput(Throughput::Elements(1));
    g.bench_function("the locks of one 4 KiB fault, alone", |b| {
        b.iter_custom(|iters| hugepfn::bench::fault_lock_floor(iters).expect("setup"))
    });
    g.finish();
}

criterion_group!(benches, remap_benches, follow_benches, fault_benches);
criterion_main!(benches);

/// A user VA for the typed calls.
fn uva(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new_user(a).expect("a user VA")
}
