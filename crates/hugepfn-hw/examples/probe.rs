use hugepfn_hw::measure::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lines: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let sizes: Vec<f64> = args[2..].iter().map(|s| s.parse().unwrap()).collect();
    let opts = MeasureOptions {
        accesses: 300_000,
        warmup: 1_000_000,
        runs: 5,
        seed: 1,
    };
    for size_mb in sizes {
        for b in [Backing::Small, Backing::Thp] {
            let size = (size_mb * 1048576.0) as u64;
            let t0 = std::time::Instant::now();
            match measure(
                PointSpec {
                    backing: b,
                    size,
                    lines,
                },
                &opts,
            ) {
                Ok(m) => println!(
                    "{:>8} MiB {:>4} {:7.1} ns  runs {:?} huge {:?} ({:?})",
                    size_mb,
                    b.name(),
                    m.ns,
                    m.runs
                        .iter()
                        .map(|x| (x * 10.0).round() / 10.0)
                        .collect::<Vec<_>>(),
                    m.huge_fraction,
                    t0.elapsed()
                ),
                Err(e) => println!("{size_mb} {b:?}: {e}"),
            }
        }
    }
}
