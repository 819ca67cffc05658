//! `hugepfn calibrate`: measure a pointer chase on this machine, simulate the same chase on the
//! model, fit the costs.
//!
//! Points: buffers from 16 KiB (L1D) to 1 GiB backed by 4 KiB pages and by 2 MiB THP, and by
//! 1 GiB hugetlb pages where some are reserved. The model replays each point's chase on the
//! CPU preset closest to this machine ([`CpuModel::detect`]) and turns it into counters per
//! load. When `/proc/cpuinfo` has the `hypervisor` flag the measuring process runs in a VM and
//! its loads are 2-D walks over an EPT/NPT whose page size the guest cannot see: the fit is
//! done for each host page size (4 KiB, 2 MiB, 1 GiB) and natively, and the candidate with the
//! smallest error is kept and named in the file. The same is done for the last-level cache's
//! size (the full size and 1/2, 1/4, 1/8 of it): what one core of a shared, possibly
//! virtualised machine gets is less than the datasheet says.

use hugepfn_mm::{LeafCap, Level};

use crate::calib::{self, CalibPoint, Calibration, NPARAM};
use crate::config::CpuModel;
use crate::measure::{self, Backing, MeasureError, MeasureOptions, Measured, PointSpec};
use crate::sim::{self, SimError, Translation};

/// What to measure and simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Buffer sizes in bytes.
    pub sizes: Vec<u64>,
    /// Cache lines per page in the chase.
    pub lines: u32,
    /// Measurement options.
    pub measure: MeasureOptions,
    /// Loads simulated per point after warm-up.
    pub sim_count: u64,
    /// The CPU model simulated.
    pub cpu: CpuModel,
    /// Translation candidates to fit.
    pub candidates: Vec<Translation>,
    /// Last-level cache sizes to try (bytes): the share of a shared LLC one core really gets
    /// on a loaded or virtualised machine is smaller than the datasheet's.
    pub llc_sizes: Vec<u64>,
}

/// Sizes measured by default.
pub const DEFAULT_SIZES: [u64; 8] = [
    16 << 10,
    256 << 10,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    512 << 20,
    1 << 30,
];

impl Options {
    /// Defaults for this machine, from `/proc/cpuinfo`'s text.
    pub fn for_machine(cpuinfo: &str) -> Options {
        let vm = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let candidates = if vm {
            vec![
                Translation::Nested(Level::Pte),
                Translation::Nested(Level::Pmd),
                Translation::Nested(Level::Pud),
                Translation::Native,
            ]
        } else {
            vec![Translation::Native]
        };
        let cpu = CpuModel::detect(cpuinfo).unwrap_or_default();
        let full = cpu.caches.last().map_or(32 << 20, |c| c.size);
        let llc_sizes = vec![full, full / 2, full / 4, full / 8];
        Options {
            llc_sizes,
            sizes: DEFAULT_SIZES.to_vec(),
            lines: 16,
            measure: MeasureOptions::default(),
            sim_count: 20_000,
            cpu,
            candidates,
        }
    }

    /// The points to measure.
    pub fn points(&self) -> Vec<PointSpec> {
        let mut v = Vec::new();
        for backing in [Backing::Small, Backing::Thp, Backing::Huge1G] {
            for &size in &self.sizes {
                if backing == Backing::Huge1G && size < (1 << 30) {
                    continue;
                }
                v.push(PointSpec {
                    backing,
                    size,
                    lines: self.lines,
                });
            }
        }
        v
    }
}

/// The leaf cap the model uses for a measured point: THP counts as 2 MiB only when most of the
/// buffer really got huge pages.
pub fn model_cap(m: &Measured) -> LeafCap {
    match m.spec.backing {
        Backing::Small => LeafCap::Pte,
        Backing::Thp if m.huge_fraction.unwrap_or(0.0) >= 0.5 => LeafCap::Pmd,
        Backing::Thp => LeafCap::Pte,
        Backing::Huge1G => LeafCap::Pud,
    }
}

/// Measures every point; a point that cannot be measured (no 1 GiB pages) is returned as its
/// error.
pub fn measure_all(
    opts: &Options,
    mut progress: impl FnMut(&PointSpec),
) -> Vec<Result<Measured, MeasureError>> {
    opts.points()
        .into_iter()
        .map(|p| {
            progress(&p);
            measure::measure(p, &opts.measure)
        })
        .collect()
}

/// Simulates and fits; `machine` is the model name for the file.
pub fn fit(
    opts: &Options,
    measured: &[Measured],
    machine: &str,
    mut progress: impl FnMut(Translation, u64, &Measured),
) -> Result<Calibration, SimError> {
    let mut best: Option<Calibration> = None;
    let llcs = if opts.llc_sizes.is_empty() {
        vec![opts.cpu.caches.last().map_or(0, |c| c.size)]
    } else {
        opts.llc_sizes.clone()
    };
    for (&tr, &llc) in opts
        .candidates
        .iter()
        .flat_map(|t| llcs.iter().map(move |l| (t, l)))
    {
        let cpu = opts.cpu.with_llc_size(llc);
        let mut rows: Vec<[f64; NPARAM]> = Vec::new();
        for m in measured {
            progress(tr, llc, m);
            let chase = sim::Chase {
                cap: model_cap(m),
                tr,
                len: m.spec.size,
                lines: m.spec.lines,
                count: opts.sim_count,
            };
            let c = sim::chase_counters(&cpu, &chase)?;
            let n = c.accesses.max(1) as f64;
            rows.push(calib::features(&c).map(|x| x / n));
        }
        let ns: Vec<f64> = measured.iter().map(|m| m.ns).collect();
        let (costs, rms, max) = calib::fit(&rows, &ns);
        let points = measured
            .iter()
            .zip(&rows)
            .map(|(m, r)| CalibPoint {
                backing: m.spec.backing.name().into(),
                size: m.spec.size,
                lines: m.spec.lines,
                measured_ns: m.ns,
                huge_fraction: m.huge_fraction.unwrap_or(0.0),
                model_ns: r.iter().zip(costs.to_vec()).map(|(a, b)| a * b).sum(),
            })
            .collect();
        let cal = Calibration {
            cpu: opts.cpu.name.clone(),
            machine: machine.into(),
            translation: tr.name().into(),
            llc_size: cpu.caches.last().map_or(0, |c| c.size),
            rms_error: rms,
            max_error: max,
            costs,
            points,
        };
        if best.as_ref().is_none_or(|b| cal.rms_error < b.rms_error) {
            best = Some(cal);
        }
    }
    Ok(best.unwrap_or_else(|| Calibration {
        cpu: opts.cpu.name.clone(),
        machine: machine.into(),
        translation: "none".into(),
        llc_size: opts.cpu.caches.last().map_or(0, |c| c.size),
        rms_error: 0.0,
        max_error: 0.0,
        costs: calib::Costs::default(),
        points: Vec::new(),
    }))
}
