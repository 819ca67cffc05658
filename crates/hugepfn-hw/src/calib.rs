//! What events cost in time, and the calibration file that holds it.
//!
//! The time model is linear in the MMU's counters ([`Costs::time_ns`]): a load served by cache
//! level *i* (L1D, L2, L3, DRAM) costs `lat[i]`, whether it is the data load or a walker
//! reference; an L1 DTLB miss that hits the STLB adds `stlb_hit`; a page walk adds `walk` on
//! top of its references. Every load is taken as dependent on the previous one (a pointer
//! chase), so the six costs add up. `hugepfn calibrate` measures a chase on this machine and
//! fits the six costs by non-negative least squares on relative error ([`fit`]); the result is
//! saved as TOML ([`Calibration`]) and read back by the model.
//!
//! Without a file, [`Costs::default`] is used: a guess in round numbers for a recent server
//! core (about 1 ns L1D, 4 ns L2, 15 ns L3, 100 ns DRAM, 2 ns for an STLB hit (Intel's
//! optimization manual gives 7 cycles for Golden Cove's STLB; AMD's guide similar), 3 ns of walk
//! overhead). It is not a measurement.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::mmu::Counters;

/// Costs in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    /// A load served by L1D.
    pub l1: f64,
    /// Served by L2.
    pub l2: f64,
    /// Served by L3.
    pub l3: f64,
    /// Served by DRAM.
    pub mem: f64,
    /// Extra for an L1 DTLB miss that hits the STLB.
    pub stlb_hit: f64,
    /// Extra per page walk, beyond its references.
    pub walk: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            l1: 1.0,
            l2: 4.0,
            l3: 15.0,
            mem: 100.0,
            stlb_hit: 2.0,
            walk: 3.0,
        }
    }
}

/// Number of fitted parameters.
pub const NPARAM: usize = 6;

impl Costs {
    /// The costs as a vector (order of [`features`]).
    pub fn to_vec(&self) -> [f64; NPARAM] {
        [
            self.l1,
            self.l2,
            self.l3,
            self.mem,
            self.stlb_hit,
            self.walk,
        ]
    }

    /// From a vector (order of [`features`]).
    pub fn from_vec(v: [f64; NPARAM]) -> Self {
        Costs {
            l1: v[0],
            l2: v[1],
            l3: v[2],
            mem: v[3],
            stlb_hit: v[4],
            walk: v[5],
        }
    }

    /// Estimated nanoseconds for the loads counted in `c`.
    pub fn time_ns(&self, c: &Counters) -> f64 {
        features(c)
            .iter()
            .zip(self.to_vec())
            .map(|(f, p)| f * p)
            .sum()
    }
}

/// The counters the costs multiply: loads served by L1D, L2, L3, DRAM (data and walker),
/// STLB hits, walks that completed.
pub fn features(c: &Counters) -> [f64; NPARAM] {
    let s = |i: usize| (c.data_served[i] + c.walk_served[i]) as f64;
    [
        s(0),
        s(1),
        s(2),
        s(3),
        c.stlb_hits as f64,
        (c.walks - c.faults) as f64,
    ]
}

/// One measured point and what the fitted model says about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibPoint {
    /// `4k`, `thp` or `1g`.
    pub backing: String,
    /// Buffer bytes.
    pub size: u64,
    /// Cache lines used per page.
    pub lines: u32,
    /// Measured nanoseconds per load (median of runs).
    pub measured_ns: f64,
    /// Fraction of the buffer the kernel backed with huge pages.
    pub huge_fraction: f64,
    /// The fitted model's nanoseconds per load.
    pub model_ns: f64,
}

/// A calibration: the costs, how they were obtained, and the points behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The CPU model preset the fit simulated.
    pub cpu: String,
    /// `/proc/cpuinfo`'s model name.
    pub machine: String,
    /// How the measured process's translations were modelled: `native`, or `nested-4k`,
    /// `nested-2m`, `nested-1g` (a VM whose host backs guest memory with that page size; the
    /// candidate with the smallest error is kept).
    pub translation: String,
    /// Effective last-level cache bytes that fitted best (the model uses it in place of the
    /// preset's LLC size; see [`crate::config::CpuModel::with_llc_size`]).
    pub llc_size: u64,
    /// Root-mean-square relative error of the fit over the points.
    pub rms_error: f64,
    /// Largest relative error of the fit.
    pub max_error: f64,
    /// The fitted costs.
    pub costs: Costs,
    /// The points.
    #[serde(default, rename = "point")]
    pub points: Vec<CalibPoint>,
}

/// Reading or writing a calibration failed.
#[derive(Debug, Error)]
pub enum CalibError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Not a calibration file.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An LLC size the MMU model cannot simulate (its caches are arrays in memory).
    #[error("{path}: llc_size = {value} bytes is over the limit of {max} bytes (1 GiB)")]
    LlcTooLarge {
        /// File.
        path: PathBuf,
        /// Value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A cost that is negative or not finite.
    #[error("{path}: cost {name} = {value} must be finite and non-negative")]
    BadCost {
        /// File.
        path: PathBuf,
        /// Which cost.
        name: &'static str,
        /// Value.
        value: f64,
    },
}

/// Where `hugepfn calibrate` saves by default, relative to the working directory: this
/// machine's own calibration, never committed (`.gitignore`), read before the committed one.
pub const LOCAL_PATH: &str = "calibration/local.toml";

/// The committed calibration, relative to the repository root (tests read it through
/// [`committed_path`], so a local `hugepfn calibrate` never changes what they see).
pub const COMMITTED_PATH: &str = "calibration/this-machine.toml";

/// The repository's committed calibration (absolute, from the build).
pub fn committed_path() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/hugepfn-hw: the repository is two levels up.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    repo.parent()
        .and_then(Path::parent)
        .unwrap_or(repo)
        .join(COMMITTED_PATH)
}

/// The largest LLC a calibration may give the model (1 GiB; today's CPUs have at most a few
/// hundred MiB).
pub const MAX_LLC_SIZE: u64 = 1 << 30;

impl Calibration {
    /// Reads a calibration file.
    pub fn load(path: &Path) -> Result<Calibration, CalibError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibError::Io {
            path: path.into(),
            source,
        })?;
        let c: Calibration = toml::from_str(&text).map_err(|e| CalibError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        // issue 17: a huge llc_size made the model allocate its cache arrays (128 TiB)
        if c.llc_size > MAX_LLC_SIZE {
            return Err(CalibError::LlcTooLarge {
                path: path.into(),
                value: c.llc_size,
                max: MAX_LLC_SIZE,
            });
        }
        let names = ["l1", "l2", "l3", "mem", "stlb_hit", "walk"];
        for (name, value) in names.into_iter().zip(c.costs.to_vec()) {
            if !value.is_finite() || value < 0.0 {
                return Err(CalibError::BadCost {
                    path: path.into(),
                    name,
                    value,
                });
            }
        }
        Ok(c)
    }

    /// Writes it as TOML with a header comment.
    pub fn save(&self, path: &Path) -> Result<(), CalibError> {
        let io = |source| CalibError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let body = toml::to_string(self).map_err(|e| CalibError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# Written by `hugepfn calibrate` (crates/hugepfn-hw, docs/tlb.md): a pointer chase\n\
             # measured on this machine and the MMU model's costs fitted to it (nanoseconds).\n{body}"
        );
        std::fs::write(path, text).map_err(io)
    }

    /// The calibration the model uses: `path` if given (an error if unreadable); else
    /// [`LOCAL_PATH`] in the working directory (what `hugepfn calibrate` wrote), else the
    /// repository's committed file ([`committed_path`]), if either exists; else `None` (use
    /// [`Costs::default`]). Returns it and where it came from. A file that exists but does not
    /// parse is an error, not skipped.
    pub fn find(path: Option<&Path>) -> Result<Option<(Calibration, String)>, CalibError> {
        if let Some(p) = path {
            return Ok(Some((Calibration::load(p)?, p.display().to_string())));
        }
        for p in [PathBuf::from(LOCAL_PATH), committed_path()] {
            if p.exists() {
                return Ok(Some((Calibration::load(&p)?, p.display().to_string())));
            }
        }
        Ok(None)
    }

    /// The CPU model this calibration was fitted with: its preset, with the fitted LLC size.
    pub fn cpu_model(&self) -> Option<crate::config::CpuModel> {
        crate::config::CpuModel::preset(&self.cpu).map(|c| c.with_llc_size(self.llc_size))
    }
}

/// Non-negative least squares for a small dense problem: minimises `|A x - b|²` with `x >= 0`
/// by trying every support set (2^NPARAM normal-equation solves) — exact and cheap for six
/// unknowns. Rows are weighted by the caller.
pub fn nnls(a: &[[f64; NPARAM]], b: &[f64]) -> [f64; NPARAM] {
    let mut best = ([0.0; NPARAM], f64::INFINITY);
    for mask in 0u32..(1 << NPARAM) {
        let idx: Vec<usize> = (0..NPARAM).filter(|i| mask & (1 << i) != 0).collect();
        let k = idx.len();
        let mut m = vec![vec![0.0; k + 1]; k];
        for (row, &bi) in a.iter().zip(b) {
            for (r, &i) in idx.iter().enumerate() {
                for (c, &j) in idx.iter().enumerate() {
                    m[r][c] += row[i] * row[j];
                }
                m[r][k] += row[i] * bi;
            }
        }
        let Some(sol) = solve(m) else { continue };
        if sol.iter().any(|&v| v < 0.0 || !v.is_finite()) {
            continue;
        }
        let mut x = [0.0; NPARAM];
        for (&i, v) in idx.iter().zip(sol) {
            x[i] = v;
        }
        let err: f64 = a
            .iter()
            .zip(b)
            .map(|(row, bi)| {
                let p: f64 = row.iter().zip(&x).map(|(r, x)| r * x).sum();
                (p - bi) * (p - bi)
            })
            .sum();
        if err < best.1 - 1e-12 {
            best = (x, err);
        }
    }
    best.0
}

/// Gaussian elimination with partial pivoting on an augmented `k × (k+1)` matrix.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = m.len();
    for c in 0..k {
        let p = (c..k).max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))?;
        if m[p][c].abs() < 1e-9 {
            return None;
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..k).map(|r| m[r][k] / m[r][r]).collect())
}

/// Fits costs to points: `rows[i]` are the model's features per load for point i, `measured[i]`
/// its measured nanoseconds per load. Minimises the relative error. Returns the costs, the RMS
/// and the largest relative error.
pub fn fit(rows: &[[f64; NPARAM]], measured: &[f64]) -> (Costs, f64, f64) {
    let a: Vec<[f64; NPARAM]> = rows
        .iter()
        .zip(measured)
        .map(|(r, &m)| r.map(|x| x / m.max(1e-9)))
        .collect();
    let b = vec![1.0; rows.len()];
    let x = nnls(&a, &b);
    let costs = Costs::from_vec(x);
    let errs: Vec<f64> = rows
        .iter()
        .zip(measured)
        .map(|(r, &m)| {
            let p: f64 = r.iter().zip(&x).map(|(r, x)| r * x).sum();
            (p - m) / m.max(1e-9)
        })
        .collect();
    let n = errs.len().max(1) as f64;
    let rms = (errs.iter().map(|e| e * e).sum::<f64>() / n).sqrt();
    let max = errs.iter().fold(0.0f64, |a, e| a.max(e.abs()));
    (costs, rms, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnls_recovers_known_costs() {
        let truth = [1.0, 4.0, 15.0, 90.0, 2.0, 5.0];
        let rows: Vec<[f64; NPARAM]> = (0..12)
            .map(|i| {
                let f = i as f64;
                [
                    1.0,
                    (f * 0.37).sin().abs(),
                    (f * 0.11).cos().abs(),
                    f / 12.0,
                    (f * 0.5).sin().abs(),
                    f * f / 144.0,
                ]
            })
            .collect();
        let meas: Vec<f64> = rows
            .iter()
            .map(|r| r.iter().zip(truth).map(|(a, b)| a * b).sum())
            .collect();
        let (c, rms, max) = fit(&rows, &meas);
        for (a, b) in c.to_vec().iter().zip(truth) {
            assert!((a - b).abs() < 1e-6, "{c:?}");
        }
        assert!(rms < 1e-9 && max < 1e-9);
    }

    #[test]
    fn negative_solutions_are_clamped() {
        let rows = vec![
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        ];
        let (c, _, _) = fit(&rows, &[10.0, 5.0]);
        assert!(c.l2 >= 0.0 && c.l1 > 0.0);
    }

    #[test]
    fn file_round_trip_and_bad_cost() {
        let dir = std::env::temp_dir().join(format!("hugepfn-calib-{}", std::process::id()));
        let p = dir.join("c.toml");
        let cal = Calibration {
            cpu: "zen4".into(),
            machine: "test".into(),
            translation: "native".into(),
            llc_size: 8 << 20,
            rms_error: 0.1,
            max_error: 0.2,
            costs: Costs::default(),
            points: vec![CalibPoint {
                backing: "4k".into(),
                size: 4096,
                lines: 1,
                measured_ns: 1.0,
                huge_fraction: 0.0,
                model_ns: 1.1,
            }],
        };
        cal.save(&p).unwrap();
        assert_eq!(Calibration::load(&p).unwrap(), cal);
        assert_eq!(
            Calibration::find(Some(&p)).unwrap().unwrap().0.costs,
            Costs::default()
        );
        assert_eq!(
            cal.cpu_model().unwrap().caches.last().unwrap().size,
            8 << 20
        );
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("mem = 100.0", "mem = -1.0");
        std::fs::write(&p, text).unwrap();
        assert!(matches!(
            Calibration::load(&p),
            Err(CalibError::BadCost { name: "mem", .. })
        ));
        std::fs::write(&p, "cpu = 1\n").unwrap();
        assert!(matches!(
            Calibration::load(&p),
            Err(CalibError::Parse { .. })
        ));
        // issue 17: a huge llc_size is refused, not allocated
        let big = Calibration {
            llc_size: 128 << 40,
            ..cal.clone()
        };
        big.save(&p).unwrap();
        let e = Calibration::load(&p).unwrap_err();
        assert!(matches!(e, CalibError::LlcTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("llc_size = 140737488355328"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
