//! Access workloads over a mapping, run on the [`Mmu`]: a sequential stream, a strided walk,
//! uniform random loads and lmbench's `lat_mem_rd -t` pointer chase ([`crate::pattern::Thrash`]).
//!
//! Every workload issues 8-byte loads at offsets inside `[offset, offset + len)` of a mapping
//! that starts at a VA. The first `warmup` loads fill the TLBs and caches and are not counted.
//! The estimated time ([`crate::calib::Costs::time_ns`]) treats every load as dependent on the
//! previous one (latency-bound, as a pointer chase is): no memory-level parallelism and no
//! prefetching are modelled, so a sequential or strided stream on real hardware is faster than
//! estimated; its TLB and walk counts are still the model's.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::calib::Costs;
use crate::mmu::{Counters, Mmu, Outcome, Space};
use crate::pattern::{Rng, THRASH_PAGE, Thrash};
use hugepfn_mm::UserAddr;

/// The order of the loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "pattern")]
pub enum Pattern {
    /// Consecutive 8-byte words, wrapping at the end.
    Sequential,
    /// Every `stride` bytes, wrapping (modulo the length).
    Strided {
        /// Bytes between loads (a multiple of 8).
        stride: u64,
    },
    /// Uniformly random 8-byte words.
    Random,
    /// `lat_mem_rd -t`: pages in random order, `lines` cache lines used per page.
    Chase {
        /// Cache lines of 64 bytes used per 4 KiB page (1..=64, a power of two).
        lines: u32,
    },
}

impl Pattern {
    /// Name as in scenarios.
    pub fn name(&self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Strided { .. } => "strided",
            Pattern::Random => "random",
            Pattern::Chase { .. } => "chase",
        }
    }
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Load order.
    pub pattern: Pattern,
    /// First byte of the range, from the mapping's start.
    pub offset: u64,
    /// Bytes in the range.
    pub len: u64,
    /// Counted loads.
    pub count: u64,
    /// Uncounted loads before them.
    pub warmup: u64,
    /// Seed of the random orders.
    pub seed: u64,
}

/// A workload that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WorkloadError {
    /// Zero or unaligned length or offset.
    #[error("range offset {offset:#x} len {len:#x}: {why}")]
    BadRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A stride of zero or not a multiple of 8.
    #[error("stride {0} must be a non-zero multiple of 8")]
    BadStride(u64),
    /// A chase line count outside 1..=64 or not a power of two.
    #[error("lines {0} must be a power of two from 1 to 64")]
    BadLines(u32),
}

/// The outcome of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AccessResult {
    /// Counted events.
    pub counters: Counters,
    /// Estimated nanoseconds for the counted loads.
    pub time_ns: f64,
}

impl AccessResult {
    /// Estimated nanoseconds per load.
    pub fn ns_per_access(&self) -> f64 {
        if self.counters.accesses == 0 {
            0.0
        } else {
            self.time_ns / self.counters.accesses as f64
        }
    }
}

/// A generator of the workload's offsets (relative to the mapping).
#[derive(Debug, Clone)]
pub struct Offsets {
    w: Workload,
    step: u64,
    rng: Rng,
    thrash: Option<Thrash>,
}

impl Offsets {
    /// Checks the workload and starts its sequence.
    pub fn new(w: &Workload) -> Result<Offsets, WorkloadError> {
        let bad = |why| WorkloadError::BadRange {
            offset: w.offset,
            len: w.len,
            why,
        };
        if w.len < 8 || !w.len.is_multiple_of(8) || !w.offset.is_multiple_of(8) {
            return Err(bad("must be non-zero multiples of 8"));
        }
        if w.offset.checked_add(w.len).is_none() {
            return Err(bad("overflows"));
        }
        let thrash = match w.pattern {
            Pattern::Strided { stride } if stride == 0 || !stride.is_multiple_of(8) => {
                return Err(WorkloadError::BadStride(stride));
            }
            Pattern::Chase { lines } => {
                if !(1..=64).contains(&lines) || !lines.is_power_of_two() {
                    return Err(WorkloadError::BadLines(lines));
                }
                if !w.len.is_multiple_of(THRASH_PAGE) {
                    return Err(bad("a chase needs whole 4 KiB pages"));
                }
                let pages =
                    usize::try_from(w.len / THRASH_PAGE).map_err(|_| bad("too many pages"))?;
                Some(Thrash::new(pages, lines, w.seed))
            }
            _ => None,
        };
        Ok(Offsets {
            w: *w,
            step: 0,
            rng: Rng::new(w.seed),
            thrash,
        })
    }
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let w = &self.w;
        let off = match (w.pattern, &self.thrash) {
            (Pattern::Sequential, _) => (self.step * 8) % w.len,
            (Pattern::Strided { stride }, _) => {
                (u128::from(self.step) * u128::from(stride) % u128::from(w.len)) as u64
            }
            (Pattern::Random, _) => self.rng.below(w.len / 8) * 8,
            (Pattern::Chase { .. }, Some(t)) => t.offset(self.step),
            (Pattern::Chase { .. }, None) => 0,
        };
        self.step += 1;
        Some(w.offset + off)
    }
}

/// Runs `w` over the mapping at `va` through `space`.
pub fn run(
    mmu: &mut Mmu,
    space: Space<'_>,
    va: UserAddr,
    w: &Workload,
    costs: &Costs,
) -> Result<AccessResult, WorkloadError> {
    let mut offs = Offsets::new(w)?;
    for off in offs.by_ref().take(w.warmup as usize) {
        let _: Outcome = mmu.load(space, UserAddr::new(va.as_u64().wrapping_add(off)));
    }
    let before = mmu.counters;
    for off in offs.take(w.count as usize) {
        mmu.load(space, UserAddr::new(va.as_u64().wrapping_add(off)));
    }
    let counters = mmu.counters.since(&before);
    Ok(AccessResult {
        counters,
        time_ns: costs.time_ns(&counters),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CpuModel;
    use crate::test_tables::native;
    use hugepfn_mm::LeafCap;

    fn w(pattern: Pattern, len: u64, count: u64) -> Workload {
        Workload {
            pattern,
            offset: 0,
            len,
            count,
            warmup: 0,
            seed: 1,
        }
    }

    #[test]
    fn sequential_misses_once_per_page() {
        let t = native(LeafCap::Pte, 1 << 20);
        let mut m = Mmu::new(&CpuModel::golden_cove());
        let r = run(
            &mut m,
            Space::Native(&t),
            UserAddr::new(1 << 30),
            &w(Pattern::Sequential, 1 << 20, 512 * 16),
            &Costs::default(),
        )
        .unwrap();
        assert_eq!(r.counters.l1_misses(), 16);
        assert_eq!(r.counters.walks, 16);
        assert!(r.time_ns > 0.0);
    }

    #[test]
    fn chase_over_huge_pages_stays_in_the_tlb() {
        let len = 256 << 20;
        let mut miss = Vec::new();
        for cap in [LeafCap::Pte, LeafCap::Pmd] {
            let t = native(cap, len);
            let mut m = Mmu::new(&CpuModel::golden_cove());
            let mut wl = w(Pattern::Chase { lines: 8 }, len, 20_000);
            wl.warmup = 20_000;
            let r = run(
                &mut m,
                Space::Native(&t),
                UserAddr::new(1 << 30),
                &wl,
                &Costs::default(),
            )
            .unwrap();
            miss.push(r.counters.walks);
        }
        assert!(miss[0] > 19_000, "{miss:?}");
        assert_eq!(miss[1], 0, "{miss:?}");
    }

    #[test]
    fn strided_and_random_stay_in_range() {
        for p in [Pattern::Strided { stride: 4160 }, Pattern::Random] {
            let wl = Workload {
                offset: 4096,
                ..w(p, 1 << 20, 0)
            };
            for o in Offsets::new(&wl).unwrap().take(10_000) {
                assert!((4096..4096 + (1 << 20)).contains(&o) && o % 8 == 0);
            }
        }
    }

    #[test]
    fn bad_workloads_are_errors() {
        assert!(Offsets::new(&w(Pattern::Strided { stride: 3 }, 4096, 1)).is_err());
        assert!(Offsets::new(&w(Pattern::Chase { lines: 3 }, 4096, 1)).is_err());
        assert!(Offsets::new(&w(Pattern::Chase { lines: 4 }, 4000, 1)).is_err());
        assert!(Offsets::new(&w(Pattern::Random, 0, 1)).is_err());
    }
}
