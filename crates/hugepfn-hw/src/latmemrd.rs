//! The `lat_mem_rd` figure of the PMD `remap_pfn_range` RFC, reproduced on the model.
//!
//! Published (upstream.md §4; Yin Tirui, 20251016112704.179280-1-yintirui@huawei.com, custom
//! device driver, CPU not stated): `lat_mem_rd -t` (stride 64) on `mmap(device_fd)` mapped with
//! PTEs and with PMDs, 64 MiB to 4 GiB. The model maps the same sizes with
//! `remap_pfn_range`'s table builder (4 KiB leaves only, then up to PMD), runs the same chase
//! ([`crate::pattern::Thrash`], 64 lines per page as lmbench) natively on a CPU model, prices it
//! with a calibration, and reports the reduction `1 - pmd/pte` next to the published one.

use hugepfn_mm::LeafCap;
use serde::Serialize;

use crate::calib::Costs;
use crate::config::CpuModel;
use crate::sim::{self, Chase, SimError, Translation};

/// The published table: (MiB, PTE ns, PMD ns), upstream.md §4.
pub const PUBLISHED: [(u64, f64, f64); 7] = [
    (64, 148.858, 100.780),
    (128, 164.745, 103.537),
    (256, 169.907, 103.179),
    (512, 171.285, 103.072),
    (1024, 173.054, 103.055),
    (2048, 172.820, 103.091),
    (4096, 172.877, 103.115),
];

/// One row: the model's latencies and reduction next to the published reduction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Row {
    /// Buffer MiB.
    pub mib: u64,
    /// Model, PTE leaves, ns per load.
    pub pte_ns: f64,
    /// Model, PMD leaves, ns per load.
    pub pmd_ns: f64,
    /// Model reduction in percent.
    pub reduction: f64,
    /// Published reduction in percent.
    pub published: f64,
}

/// The text table of `rows` that `hugepfn hw lat-mem-rd` prints: a header line, then a line
/// per row (each line ends in a newline).
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:>6} {:>9} {:>9} {:>10} {:>10} {:>7}\n",
        "MiB", "PTE ns", "PMD ns", "reduction", "published", "diff"
    );
    for r in rows {
        out += &format!(
            "{:>6} {:>9.1} {:>9.1} {:>9.1}% {:>9.1}% {:>+6.1}\n",
            r.mib,
            r.pte_ns,
            r.pmd_ns,
            r.reduction,
            r.published,
            r.reduction - r.published
        );
    }
    out
}

/// Loads simulated per point after warm-up.
pub const DEFAULT_COUNT: u64 = 20_000;

/// Runs the reproduction at `sizes` (MiB; those of [`PUBLISHED`] if empty).
pub fn reproduce(
    cpu: &CpuModel,
    costs: &Costs,
    count: u64,
    mut progress: impl FnMut(u64, LeafCap),
) -> Result<Vec<Row>, SimError> {
    let mut rows = Vec::new();
    for (mib, pte_pub, pmd_pub) in PUBLISHED {
        let len = mib << 20;
        let mut ns = [0.0; 2];
        for (i, cap) in [LeafCap::Pte, LeafCap::Pmd].into_iter().enumerate() {
            progress(mib, cap);
            let c = Chase {
                cap,
                tr: Translation::Native,
                len,
                lines: 64,
                count,
            };
            ns[i] = sim::chase(cpu, &c, costs)?.ns_per_access();
        }
        rows.push(Row {
            mib,
            pte_ns: ns[0],
            pmd_ns: ns[1],
            reduction: 100.0 * (1.0 - ns[1] / ns[0]),
            published: 100.0 * (1.0 - pmd_pub / pte_pub),
        });
    }
    Ok(rows)
}
