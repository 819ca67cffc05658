//! The instrument behind BENCHMARKS.md's instructions-per-fault figures: touches every page
//! of a vfio-pci BAR mapping of `MIB` MiB (argument 1, default 64) mmapped at a 4 KiB-skewed
//! VA, so that every page is one 4 KiB fault. Run it under
//! `valgrind --tool=cachegrind --cache-sim=no` for two sizes: the difference of the two totals
//! divided by the difference of the faults is the cost of one fault, free of setup and
//! teardown and of the machine's load.
fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let len = mib << 20;
    match hugepfn::bench::vfio_setup(len, 4096) {
        Ok((mm, _dev, va)) => println!("{} faults", hugepfn::bench::touch(&mm, va, len)),
        Err(e) => {
            eprintln!("fault_cost: {e}");
            std::process::exit(1);
        }
    }
}
