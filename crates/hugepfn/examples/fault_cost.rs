//! The instrument behind BENCHMARKS.md's instructions-per-operation figures, to run under
//! `valgrind --tool=cachegrind --cache-sim=no` for two sizes: the difference of the two totals
//! divided by the difference of the operations is the cost of one, free of setup and teardown
//! and of the machine's load.
//!
//! - `fault_cost MIB` touches every page of a vfio-pci BAR mapping of `MIB` MiB mmapped at a
//!   4 KiB-skewed VA: every page is one 4 KiB fault;
//! - `fault_cost follow N` calls `follow_pfnmap_start` + end `N` times on one address of a
//!   1 GiB `remap_pfn_range` with 4 KiB leaves;
//! - `fault_cost floor N`: the locks of one 4 KiB fault alone, `N` times
//!   ([`bench::fault_lock_floor`]; a timing);
//! - `fault_cost mmaps N`: `N` private 1 MiB mmaps into one process (a timing: the VMA
//!   tree's cost per change);
//! - `fault_cost remap MIB` remaps `MIB` MiB with 4 KiB leaves;
//! - `fault_cost threads N MIB [shared]`: `N` threads fault in `MIB` MiB, each its own part or
//!   (`shared`) all of it; prints faults per second (a timing, for ratios within one run).
use hugepfn::bench;
use hugepfn_mm::addr::VirtAddr;
use hugepfn_mm::level::LeafCap;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run() -> Result<String, Box<dyn std::error::Error>> {
    Ok(match std::env::args().nth(1).as_deref() {
        Some("follow") => {
            let (mm, va) = bench::remap_setup(1 << 30, LeafCap::Pte)?;
            bench::remap(&mm, va, 1 << 30)?;
            let g = mm.mmap_read();
            let addr = VirtAddr::new_user((va + 12345 * 4096).as_u64())?;
            let mut sum = 0u64;
            for _ in 0..arg(2, 1000) {
                let f = g.follow_pfnmap_start(addr)?;
                sum = sum.wrapping_add(f.args.pfn.as_u64());
                f.end();
            }
            format!("pfn sum {sum:#x}")
        }
        Some("threads") => {
            // `fault_cost threads N MIB [shared]`: N threads fault in a 4 KiB-skewed mapping
            let (threads, len) = (arg(2, 2).max(1), arg(3, 1024) << 20);
            let shared = std::env::args().nth(4).as_deref() == Some("shared");
            let (faults, t) = bench::parallel_touch(len, threads, shared)?;
            format!(
                "{faults} faults in {:.3} s: {:.2} M/s",
                t.as_secs_f64(),
                faults as f64 / t.as_secs_f64() / 1e6
            )
        }
        Some("floor") => {
            let n = arg(2, 1 << 22);
            let d = bench::fault_lock_floor(n)?;
            format!(
                "lock floor: {:.1} ns per fault",
                d.as_nanos() as f64 / n as f64
            )
        }
        Some("mmaps") => {
            // `fault_cost mmaps N`: N private 1 MiB mmaps, none merging with the last (each
            // changes the VMA tree under the mmap lock for write)
            let n = arg(2, 1000);
            let mm = hugepfn_mm::Mm::new(
                std::sync::Arc::new(hugepfn_mm::PhysMem::default()),
                hugepfn_mm::MmConfig::default(),
            )?;
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                mm.mmap(hugepfn_mm::MmapRequest {
                    addr: hugepfn_mm::MmapAddr::Kernel,
                    len: 1 << 20,
                    prot: hugepfn_mm::Prot::RW,
                    shared: false,
                    offset: 0,
                    file: None,
                })?;
            }
            let t = t0.elapsed();
            format!(
                "{} VMAs, {n} mmaps in {:.3} s: {:.1} us each",
                mm.vmas().len(),
                t.as_secs_f64(),
                t.as_secs_f64() * 1e6 / n.max(1) as f64
            )
        }
        Some("remap") => {
            let len = arg(2, 64) << 20;
            let (mm, va) = bench::remap_setup(len, LeafCap::Pte)?;
            format!("{} leaves", bench::remap(&mm, va, len)?)
        }
        _ => {
            let len = arg(1, 64) << 20;
            let (mm, _dev, va) = bench::vfio_setup(len, 4096)?;
            let t0 = std::time::Instant::now();
            let n = bench::touch(&mm, va, len);
            let t = t0.elapsed();
            format!(
                "{n} faults in {:.3} s: {:.1} ns each",
                t.as_secs_f64(),
                t.as_nanos() as f64 / n.max(1) as f64
            )
        }
    })
}

fn main() {
    match run() {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("fault_cost: {e}");
            std::process::exit(1);
        }
    }
}
