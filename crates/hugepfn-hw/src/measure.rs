//! Measuring this machine: a dependent pointer chase (lmbench's `lat_mem_rd -t` order,
//! [`crate::pattern::Thrash`]) over anonymous memory backed by 4 KiB pages (`MADV_NOHUGEPAGE`),
//! 2 MiB transparent huge pages (`MADV_HUGEPAGE`) or 1 GiB hugetlb pages (`MAP_HUGETLB |
//! MAP_HUGE_1GB`, only where the administrator reserved some).
//!
//! Memory comes from `memmap2`'s safe anonymous mappings; nothing here is `unsafe`. How much of
//! a THP buffer really got huge pages is read back from `/proc/self/smaps` (`AnonHugePages`), so
//! a fit never takes a 4 KiB run for a 2 MiB one. Each point is the median of several runs: the
//! machines this runs on are shared.

use std::time::Instant;

use memmap2::{Advice, MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::pattern::{THRASH_PAGE, Thrash};

/// What backs the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// 4 KiB pages (`MADV_NOHUGEPAGE`).
    #[serde(rename = "4k")]
    Small,
    /// 2 MiB transparent huge pages (`MADV_HUGEPAGE`).
    #[serde(rename = "thp")]
    Thp,
    /// 1 GiB hugetlb pages.
    #[serde(rename = "1g")]
    Huge1G,
}

impl Backing {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Small => "4k",
            Backing::Thp => "thp",
            Backing::Huge1G => "1g",
        }
    }

    /// The page size the backing asks for.
    pub fn page_size(self) -> u64 {
        match self {
            Backing::Small => 4 << 10,
            Backing::Thp => 2 << 20,
            Backing::Huge1G => 1 << 30,
        }
    }
}

/// One point to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointSpec {
    /// Backing pages.
    pub backing: Backing,
    /// Buffer size in bytes (a multiple of 4 KiB).
    pub size: u64,
    /// Cache lines used per 4 KiB page (power of two, 1..=64).
    pub lines: u32,
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOptions {
    /// Timed accesses per run.
    pub accesses: u64,
    /// Untimed accesses before each run (capped at one cycle of the chain).
    pub warmup: u64,
    /// Runs per point; the median is kept.
    pub runs: u32,
    /// Seed of the page permutation.
    pub seed: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            accesses: 400_000,
            warmup: 1_000_000,
            runs: 5,
            seed: 1,
        }
    }
}

/// A measured point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// What was asked for.
    pub spec: PointSpec,
    /// Median nanoseconds per access.
    pub ns: f64,
    /// Every run's nanoseconds per access.
    pub runs: Vec<f64>,
    /// Fraction of the buffer the kernel backed with huge pages (`AnonHugePages` / size for THP;
    /// 1 for hugetlb; 0 for 4 KiB); `None` if `/proc/self/smaps` could not be read.
    pub huge_fraction: Option<f64>,
}

/// Why a measurement could not be made.
#[derive(Debug, Error)]
pub enum MeasureError {
    /// The anonymous mapping failed (for 1 GiB pages: none reserved in
    /// `/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages`).
    #[error("mmap of {size} bytes with {backing} pages failed: {source}")]
    Map {
        /// Backing.
        backing: &'static str,
        /// Size.
        size: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// `madvise` failed.
    #[error("madvise({advice}) failed: {source}")]
    Advise {
        /// Which advice.
        advice: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A size that is zero, not a multiple of the page or too large for this machine's usize.
    #[error("bad buffer size {0} bytes")]
    BadSize(u64),
}

fn map(spec: &PointSpec) -> Result<MmapMut, MeasureError> {
    let page = spec.backing.page_size();
    if spec.size == 0 || !spec.size.is_multiple_of(THRASH_PAGE) {
        return Err(MeasureError::BadSize(spec.size));
    }
    let len = usize::try_from(spec.size.div_ceil(page) * page)
        .map_err(|_| MeasureError::BadSize(spec.size))?;
    let map_err = |source| MeasureError::Map {
        backing: spec.backing.name(),
        size: spec.size,
        source,
    };
    match spec.backing {
        Backing::Small => {
            let m = MmapOptions::new().len(len).map_anon().map_err(map_err)?;
            m.advise(Advice::NoHugePage)
                .map_err(|source| MeasureError::Advise {
                    advice: "MADV_NOHUGEPAGE",
                    source,
                })?;
            Ok(m)
        }
        Backing::Thp => {
            // Over-allocate by 2 MiB and use the aligned part, so the first huge page is whole.
            let m = MmapOptions::new()
                .len(len + (2 << 20))
                .map_anon()
                .map_err(map_err)?;
            m.advise(Advice::HugePage)
                .map_err(|source| MeasureError::Advise {
                    advice: "MADV_HUGEPAGE",
                    source,
                })?;
            Ok(m)
        }
        Backing::Huge1G => MmapOptions::new()
            .len(len)
            .huge(Some(30))
            .map_anon()
            .map_err(map_err),
    }
}

/// `AnonHugePages` of the smaps entry containing `addr`, in bytes.
fn anon_huge_bytes(addr: usize) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a <= addr && addr < b;
            continue;
        }
        if inside && let Some(rest) = line.strip_prefix("AnonHugePages:") {
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            return Some(kb * 1024);
        }
    }
    None
}

/// Measures one point: maps, builds the chain, chases it `opts.runs` times.
pub fn measure(spec: PointSpec, opts: &MeasureOptions) -> Result<Measured, MeasureError> {
    let mut m = map(&spec)?;
    let base = m.as_ptr() as usize;
    let skip = match spec.backing {
        Backing::Thp => (base.next_multiple_of(2 << 20) - base) / 8,
        _ => 0,
    };
    let words: &mut [u64] = bytemuck::cast_slice_mut(&mut m[..]);
    let pages = (spec.size / THRASH_PAGE) as usize;
    let buf = &mut words[skip..skip + pages * (THRASH_PAGE as usize / 8)];
    let t = Thrash::new(pages, spec.lines, opts.seed);
    t.write_chain(buf);
    let huge_fraction = match spec.backing {
        Backing::Small => Some(0.0),
        Backing::Huge1G => Some(1.0),
        Backing::Thp => {
            anon_huge_bytes(base + skip * 8).map(|b| (b as f64 / spec.size as f64).min(1.0))
        }
    };
    let buf: &[u64] = buf;
    let mut idx = (t.offset(0) / 8) as usize;
    let warm = opts.warmup.min(t.cycle_len());
    idx = chase(buf, idx, warm);
    let mut runs = Vec::with_capacity(opts.runs as usize);
    for _ in 0..opts.runs.max(1) {
        let t0 = Instant::now();
        idx = chase(buf, idx, opts.accesses.max(1));
        let ns = t0.elapsed().as_nanos() as f64 / opts.accesses.max(1) as f64;
        runs.push(ns);
    }
    std::hint::black_box(idx);
    Ok(Measured {
        spec,
        ns: median(&runs),
        runs,
        huge_fraction,
    })
}

/// This process's minor faults so far: field 10 (`minflt`) of `/proc/self/stat`, the counter
/// `getrusage(RUSAGE_SELF).ru_minflt` reports (read from procfs: no `unsafe` here).
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the command name is in parentheses and may hold spaces: count from the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(7)?.parse().ok()
}

/// This process's resident set: (`VmRSS`, `VmHWM`, the peak since start or the last
/// [`reset_peak_rss`]) in bytes, from `/proc/self/status`.
pub fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k << 10)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS: writes `5` to
/// `/proc/self/clear_refs` (Linux ≥ 4.0). False if the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What anonymous 4 KiB minor faults cost on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MinorFaultCost {
    /// Pages touched.
    pub pages: u64,
    /// Minor faults the kernel counted meanwhile.
    pub faults: u64,
    /// Wall time of the touches, ns.
    pub elapsed_ns: u64,
}

impl MinorFaultCost {
    /// ns per counted fault.
    pub fn ns_per_fault(&self) -> f64 {
        self.elapsed_ns as f64 / self.faults.max(1) as f64
    }
}

/// Touches (writes) each page of a fresh `pages` × 4 KiB anonymous mapping with
/// `MADV_NOHUGEPAGE` once: each write is one minor fault that allocates and zeroes a page.
pub fn anon_minor_fault_cost(pages: u64) -> Result<MinorFaultCost, MeasureError> {
    let size = pages
        .checked_mul(4096)
        .ok_or(MeasureError::BadSize(u64::MAX))?;
    let len = usize::try_from(size)
        .ok()
        .filter(|&l| l > 0)
        .ok_or(MeasureError::BadSize(size))?;
    let mut m = MmapOptions::new()
        .len(len)
        .map_anon()
        .map_err(|source| MeasureError::Map {
            backing: "4k",
            size,
            source,
        })?;
    m.advise(Advice::NoHugePage)
        .map_err(|source| MeasureError::Advise {
            advice: "MADV_NOHUGEPAGE",
            source,
        })?;
    let f0 = minor_faults().unwrap_or(0);
    let t0 = Instant::now();
    for p in 0..pages as usize {
        m[p * 4096] = 1;
    }
    let elapsed_ns = t0.elapsed().as_nanos() as u64;
    let f1 = minor_faults().unwrap_or(0);
    std::hint::black_box(&m[..]);
    Ok(MinorFaultCost {
        pages,
        faults: f1.saturating_sub(f0),
        elapsed_ns,
    })
}

#[inline(never)]
fn chase(buf: &[u64], mut idx: usize, n: u64) -> usize {
    for _ in 0..n {
        idx = buf.get(idx).copied().unwrap_or(0) as usize;
    }
    idx
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_touches_are_counted_as_minor_faults() {
        assert!(minor_faults().is_some(), "/proc/self/stat has minflt");
        let c = anon_minor_fault_cost(256).expect("measure");
        // one fault per page (a few more from the process itself are possible)
        assert!(c.faults >= 256 && c.faults < 256 + 64, "{c:?}");
        assert!(c.ns_per_fault() > 0.0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn small_chase_runs() {
        let m = measure(
            PointSpec {
                backing: Backing::Small,
                size: 64 << 10,
                lines: 4,
            },
            &MeasureOptions {
                accesses: 10_000,
                warmup: 1000,
                runs: 3,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(m.runs.len(), 3);
        assert!(m.ns > 0.0 && m.ns < 10_000.0, "{}", m.ns);
    }

    #[test]
    fn bad_size_is_an_error() {
        let e = measure(
            PointSpec {
                backing: Backing::Small,
                size: 1000,
                lines: 1,
            },
            &MeasureOptions::default(),
        );
        assert!(matches!(e, Err(MeasureError::BadSize(1000))));
    }
}
