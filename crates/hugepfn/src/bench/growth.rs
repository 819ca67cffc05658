//! `hugepfn bench --growth`: time and memory against BAR size. Each point is a fresh process
//! image of the model (its own simulated memory, a device with one BAR of that size mmapped
//! through vfio-pci at a 1 GiB-aligned VA skewed by 4 KiB, so every page is a 4 KiB fault) with
//! every page touched once; measured are the wall time of the touches, the faults, the
//! page-table pages the kernel would have allocated (`PhysMem::tables_in_use`, 4 KiB each) and
//! this process's peak RSS during the point (`VmHWM`, reset before it). Issue 16's target is the
//! 512 GiB point: faulted in completely in < 10 s with peak RSS ≤ 1.5 GiB.

use std::time::{Duration, Instant};

use hugepfn_mm::MmError;
use hugepfn_vfio::Bar;
use serde::Serialize;

use super::{touch, vfio_setup_on};

/// Where the sweep's BAR sits: 16 TiB, like the H100's aperture (1 GiB aligned, above RAM).
const BAR_PHYS: u64 = 0x1000_0000_0000;

/// Issue 16: a 512 GiB BAR at 4 KiB leaves faulted in completely in under this.
pub const TARGET_TIME: Duration = Duration::from_secs(10);
/// Issue 16: … with peak RSS at most this.
pub const TARGET_RSS: u64 = 3 << 29;

/// One BAR size of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthPoint {
    /// BAR size, bytes.
    pub bar: u64,
    /// Faults taken touching every 4 KiB page once.
    pub faults: u64,
    /// Wall time of the touches, ns.
    pub elapsed_ns: u64,
    /// Page-table pages in use after the touches, in bytes (4 KiB each, as the kernel counts
    /// `PageTables` in /proc/meminfo).
    pub table_bytes: u64,
    /// This process's RSS before the point's setup, bytes (None without procfs).
    pub rss_before: Option<u64>,
    /// This process's peak RSS during the point (setup, touches, teardown), bytes (None if
    /// the kernel refused to reset the peak, or without procfs).
    pub peak_rss: Option<u64>,
    /// Issue 16's 512 GiB target ([`GrowthPoint::meets_target`]): None below 512 GiB or when
    /// the peak RSS was not measured.
    pub target_met: Option<bool>,
}

impl GrowthPoint {
    /// Faults per second.
    pub fn rate(&self) -> f64 {
        self.faults as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    /// Issue 16's 512 GiB target, for a point of at least that size whose peak RSS was
    /// measured.
    pub fn meets_target(&self) -> Option<bool> {
        let rss = self.peak_rss?;
        (self.bar >= 512 << 30)
            .then(|| Duration::from_nanos(self.elapsed_ns) < TARGET_TIME && rss <= TARGET_RSS)
    }
}

/// The sizes of the sweep up to `max`: 64 MiB, ×4 up to 64 GiB, then 128 GiB (the H100's
/// aperture) and 512 GiB (a B300's), each at most `max`.
pub fn sizes(max: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..6).map(|i| (64u64 << 20) << (2 * i)).collect();
    v.extend([128 << 30, 512 << 30]);
    v.retain(|&s| s <= max);
    v
}

/// Measures one point.
pub fn point(bar: u64) -> Result<GrowthPoint, MmError> {
    let rss_before = hugepfn_hw::measure::rss().map(|(r, _)| r);
    let reset = hugepfn_hw::measure::reset_peak_rss();
    let (mm, dev, va) = vfio_setup_on(vec![Bar::mem64(2, BAR_PHYS, bar)], 2, bar, 4096)?;
    let t0 = Instant::now();
    let faults = touch(&mm, va, bar);
    let elapsed_ns = t0.elapsed().as_nanos() as u64;
    // the device allocates no tables: the process's are all there are
    let table_bytes = mm.table_counts().bytes();
    drop(mm);
    drop(dev);
    let peak_rss = if reset {
        hugepfn_hw::measure::rss().map(|(_, hwm)| hwm)
    } else {
        None
    };
    let mut p = GrowthPoint {
        bar,
        faults,
        elapsed_ns,
        table_bytes,
        rss_before,
        peak_rss,
        target_met: None,
    };
    p.target_met = p.meets_target();
    Ok(p)
}

/// The sweep, smallest first; `progress` is told each point as it is done.
pub fn sweep(
    max: u64,
    mut progress: impl FnMut(&GrowthPoint),
) -> Result<Vec<GrowthPoint>, MmError> {
    let mut out = Vec::new();
    for bar in sizes(max) {
        let p = point(bar)?;
        progress(&p);
        out.push(p);
    }
    Ok(out)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

/// One line of the table.
pub fn format_point(p: &GrowthPoint) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), mib);
    format!(
        "{:>9} {:>11} {:>11.3} {:>8.2} {:>15} {:>14} {:>12}{}",
        hugepfn_units::format_size(p.bar),
        p.faults,
        p.elapsed_ns as f64 / 1e9,
        p.rate() / 1e6,
        mib(p.table_bytes),
        opt(p.rss_before),
        opt(p.peak_rss),
        match (p.meets_target(), p.bar >= 512 << 30) {
            (Some(true), _) => "  (target met)",
            (Some(false), _) => "  (target NOT met: < 10 s and peak RSS <= 1536 MiB)",
            (None, true) => "  (target not checked: peak RSS not measured)",
            (None, false) => "",
        }
    )
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:>9} {:>11} {:>11} {:>8} {:>15} {:>14} {:>12}",
        "BAR", "faults", "time (s)", "M/s", "page tables MiB", "RSS before MiB", "peak RSS MiB"
    )
}

/// The whole table.
pub fn format(pts: &[GrowthPoint]) -> String {
    let mut s = header();
    s.push('\n');
    for p in pts {
        s.push_str(&format_point(p));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_to_512g_and_stops_at_max() {
        let all = sizes(512 << 30);
        assert_eq!(all.first(), Some(&(64 << 20)));
        assert_eq!(all.last(), Some(&(512 << 30)));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all.contains(&(128 << 30)), "the H100's aperture");
        assert_eq!(sizes(1 << 30), vec![64 << 20, 256 << 20, 1 << 30]);
    }

    #[test]
    fn a_point_faults_every_page_once_and_counts_its_tables() {
        let p = point(64 << 20).expect("point");
        // 4 KiB-skewed: no huge leaf fits, every page is a 4 KiB fault
        assert_eq!(p.faults, (64 << 20) / 4096);
        // 16,384 PTEs span 33 PTE tables (the skew crosses one more 2 MiB boundary), plus the
        // PMD, PUD and top tables above them
        assert_eq!(p.table_bytes, (33 + 3) * 4096);
        assert_eq!(p.meets_target(), None, "only a 512 GiB point has a target");
        assert!(format_point(&p).contains("64M"));
    }
}
