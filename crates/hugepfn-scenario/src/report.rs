//! The result JSON: one [`RunReport`] per scenario run, printed identically by the model
//! (`hugepfn run --json`, `source = "model"`) and by the real-kernel probe
//! (`source = "kernel <uname -r>"`), so the two can be diffed field by field.
//!
//! Unknown values are `null`, never a made-up 0: the kernel cannot tell which level a fault
//! installed, so its [`Counters::faults_by_level`] is `None`; a runner that cannot read page
//! tables leaves [`StepReport::leaves`] and [`StepReport::page_table_pages`] `None`.
//!
//! **An expectation on a value the run cannot know fails.** [`check_expect`] reports it as a
//! [`Mismatch`] with `actual: None` ("not measured"), so a scenario that checks
//! `faults_by_level` fails against the kernel instead of passing a check that never happened.
//! Scenarios meant for both sides check only `faults`, `sigbus`, `sigsegv`, `skipped`
//! (and `errno`). The consumer counters ([`Counters::dma_lookups`],
//! [`Counters::ept_violations`], [`Counters::mmu_invalidations`]) are plain numbers (0 in old
//! JSON); whether the run measured them is told to [`check_expect`] by
//! [`ExpectNow::consumers_measured`], so an expectation on them still fails against a run that
//! could not count them. The same holds for the TLB counters of `access` steps
//! ([`Counters::tlb`], [`ExpectNow::tlb_measured`]): only the model's MMU simulation counts
//! them. The time an `access` step is estimated to take depends on the machine's calibration
//! and is reported in [`StepReport::access`], never checked.
//!
//! All types reject unknown JSON fields: both producers use this crate, so an unknown field
//! means a version mismatch.

use std::fmt;

use hugepfn_units::addr::VirtAddr;
pub use hugepfn_units::counts::{LeafCounts, TableCounts};
use serde::{Deserialize, Serialize};

use crate::scenario::{ExpectSpec, LevelCounts, Step};

/// The outcome of running one scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// [`crate::Scenario::name`].
    pub scenario: String,
    /// `"model"` or `"kernel <uname -r>"`.
    pub source: String,
    /// The model only: the kernel it behaved as (`None`: the corrected design).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The model only: the run stopped because its simulated memory was used up (the step
    /// that used it up is the last one, with `ENOMEM`); what ran out, and how to raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_memory: Option<String>,
    /// One entry per step, in order (also for steps after a failed expectation).
    pub steps: Vec<StepReport>,
    /// Sum of the steps' counters.
    pub totals: Counters,
    /// Every `expect` step passed.
    pub ok: bool,
}

impl RunReport {
    /// Builds the report from its steps: `totals` is the sum of the step counters
    /// ([`Counters::add`]; `faults_by_level` only if every step knows it), `ok` is true when
    /// every step with an `expect` outcome passed. A step with an `errno` does not by itself
    /// make the run fail (a scenario may provoke an error on purpose); a runner that aborts on
    /// an unexpected error should set `ok = false` itself.
    pub fn new(
        scenario: impl Into<String>,
        source: impl Into<String>,
        steps: Vec<StepReport>,
    ) -> Self {
        let levels_known =
            !steps.is_empty() && steps.iter().all(|s| s.counters.faults_by_level.is_some());
        let mut totals = Counters::zero(levels_known);
        for s in &steps {
            totals.add(&s.counters);
        }
        let ok = steps
            .iter()
            .all(|s| s.expect.as_ref().is_none_or(|e| e.passed));
        RunReport {
            scenario: scenario.into(),
            source: source.into(),
            kernel: None,
            out_of_memory: None,
            steps,
            totals,
            ok,
        }
    }
}

/// What happened during one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    /// 0-based position in [`crate::Scenario::steps`] (messages to people print `index + 1`).
    pub index: usize,
    /// Source line of the step ([`Step::line`]).
    pub line: usize,
    /// [`Step::op`]: `"mmap"`, `"touch"`, ...
    pub op: String,
    /// Counters of this step alone (a delta).
    pub counters: Counters,
    /// Leaves mapped after the step, all mappings of the run; `None` if the runner cannot see
    /// page tables (the kernel).
    pub leaves: Option<LeafCounts>,
    /// Page-table pages allocated after the step; `None` if unknown.
    pub page_table_pages: Option<TableCounts>,
    /// IOMMU page-table leaves mapped after the step (all containers), by size; `None` if
    /// unknown or the run has no IOMMU.
    #[serde(default)]
    pub iommu_entries: Option<LeafCounts>,
    /// EPT leaves mapped after the step, by size; `None` if unknown or the run has no VM.
    #[serde(default)]
    pub ept_leaves: Option<LeafCounts>,
    /// The process the step acted in when the step names one ([`Step::process`]); `None` =
    /// the first process, [`crate::MAIN_PROCESS`] (or a step that is not per process).
    #[serde(default)]
    pub process: Option<String>,
    /// The error of the step's system call, e.g. `"EINVAL"`; `None` if it succeeded.
    pub errno: Option<String>,
    /// An `mmap` that succeeded: the VA the mapping got. Where the scenario left the placement
    /// to the kernel this is the kernel's choice, random modulo 2 MiB under ASLR on 7.x; the
    /// lab gives it back to the model (`hugepfn lab compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub va: Option<VirtAddr>,
    /// Outcome of an `expect` step; `None` for other ops.
    pub expect: Option<ExpectOutcome>,
    /// What an `access` step's simulation used and estimated (absent for other ops and in runs
    /// that cannot simulate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessEstimate>,
    /// The model only, running as a kernel with a known crashing bug: the function the
    /// kernel's oops names at this step (e.g. `"__split_huge_pmd"`). The model went on as the
    /// corrected design would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_crash: Option<String>,
}

/// The calibration-dependent side of an `access` step: the estimated time, and what the
/// counts were simulated on. Never checked by `expect` (it changes with the calibration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEstimate {
    /// The CPU preset simulated (`golden-cove`, `zen4`).
    pub cpu: String,
    /// `native`, or `nested-4k` / `nested-2m` / `nested-1g` (the second stage's page size).
    pub translation: String,
    /// The load order.
    pub pattern: String,
    /// Where the costs came from: a calibration file, or the built-in guesses.
    pub costs_from: String,
    /// Estimated nanoseconds for the counted loads (loads taken as dependent, as in a chase).
    pub time_ns: f64,
    /// `time_ns` per load.
    pub ns_per_load: f64,
    /// Walk references served by L1D, L2, L3, memory.
    pub walk_served: [u64; 4],
    /// Data loads served by L1D, L2, L3, memory.
    pub data_served: [u64; 4],
    /// Paging-structure cache hits (both dimensions).
    pub pwc_hits: u64,
    /// Nested-TLB hits (in a VM).
    pub nested_tlb_hits: u64,
}

// The estimate's floats are finite (costs are validated when a calibration is loaded, counts are
// integers), so equality is an equivalence; reports compare with `==` in tests.
impl Eq for AccessEstimate {}

impl StepReport {
    /// An empty report for `step` at `index`: zero counters (levels known or not), nothing else.
    pub fn for_step(index: usize, step: &Step, levels_known: bool) -> Self {
        StepReport {
            index,
            line: step.line(),
            op: step.op().to_string(),
            counters: Counters::zero(levels_known),
            leaves: None,
            page_table_pages: None,
            iommu_entries: None,
            ept_leaves: None,
            process: step.process().map(str::to_string),
            errno: None,
            va: None,
            expect: None,
            access: None,
            kernel_crash: None,
        }
    }
}

/// Event counters. In a [`StepReport`] they are the step's delta; in [`RunReport::totals`] the
/// whole run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Minor faults on the device mappings (the kernel: `ru_minflt` delta).
    pub faults: u64,
    /// Faults by the level of the leaf they installed; `None` when unknown (the kernel).
    pub faults_by_level: Option<LeafCounts>,
    /// Accesses that ended in SIGBUS (such faults are not in `faults`).
    pub sigbus: u64,
    /// Accesses that ended in SIGSEGV (not in `faults`).
    pub sigsegv: u64,
    /// Strides that `touch` skipped because they were unmapped or PROT_NONE.
    pub skipped: u64,
    /// `follow_pfnmap_start` lookups by vfio type1 `vaddr_get_pfns` (one per round).
    #[serde(default)]
    pub dma_lookups: u64,
    /// EPT violations the guest took.
    #[serde(default)]
    pub ept_violations: u64,
    /// MMU-notifier invalidations (`invalidate_range_start`) KVM received.
    #[serde(default)]
    pub mmu_invalidations: u64,
    /// TLB events of `access` steps (the MMU model).
    #[serde(default)]
    pub tlb: TlbCounters,
    /// Leaves cleared by zaps, by size; `None` when unknown (the kernel).
    #[serde(default)]
    pub leaves_zapped: Option<LeafCounts>,
    /// Pages `mincore` found resident.
    #[serde(default)]
    pub resident: u64,
    /// MMU-notifier invalidations the process's mm sent (whether or not a secondary MMU
    /// listens); `None` when unknown (the kernel).
    #[serde(default)]
    pub invalidations_sent: Option<u64>,
}

/// The MMU model's counters of `access` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlbCounters {
    /// Counted loads.
    pub loads: u64,
    /// L1 DTLB misses.
    pub l1_misses: u64,
    /// STLB misses (page walks).
    pub stlb_misses: u64,
    /// Walks that found no usable leaf (the load would fault).
    pub walk_faults: u64,
    /// Memory references made by walks, both dimensions.
    pub walk_refs: u64,
    /// Of those, references to second-stage (EPT) entries.
    pub walk_refs_ept: u64,
    /// References to first-dimension entries by entry level.
    pub walk_refs_by_level: TableCounts,
}

impl TlbCounters {
    fn zip(&self, o: &TlbCounters, f: impl Fn(u64, u64) -> u64 + Copy) -> TlbCounters {
        TlbCounters {
            loads: f(self.loads, o.loads),
            l1_misses: f(self.l1_misses, o.l1_misses),
            stlb_misses: f(self.stlb_misses, o.stlb_misses),
            walk_faults: f(self.walk_faults, o.walk_faults),
            walk_refs: f(self.walk_refs, o.walk_refs),
            walk_refs_ept: f(self.walk_refs_ept, o.walk_refs_ept),
            walk_refs_by_level: self.walk_refs_by_level.zip(o.walk_refs_by_level, f),
        }
    }

    /// Adds `o` (saturating).
    pub fn add(&mut self, o: &TlbCounters) {
        *self = self.zip(o, u64::saturating_add);
    }

    /// `self − earlier` (saturating at 0).
    pub fn since(&self, earlier: &TlbCounters) -> TlbCounters {
        self.zip(earlier, u64::saturating_sub)
    }
}

impl Counters {
    /// All zero; `faults_by_level` is `Some(zero)` if the runner knows levels, else `None`.
    pub fn zero(levels_known: bool) -> Self {
        Counters {
            faults_by_level: levels_known.then_some(LeafCounts::default()),
            leaves_zapped: levels_known.then_some(LeafCounts::default()),
            invalidations_sent: levels_known.then_some(0),
            ..Counters::default()
        }
    }

    /// Adds `other` (saturating). `faults_by_level` stays known only if both sides know it:
    /// an unknown part makes the sum unknown.
    pub fn add(&mut self, other: &Counters) {
        self.faults = self.faults.saturating_add(other.faults);
        self.sigbus = self.sigbus.saturating_add(other.sigbus);
        self.sigsegv = self.sigsegv.saturating_add(other.sigsegv);
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.dma_lookups = self.dma_lookups.saturating_add(other.dma_lookups);
        self.ept_violations = self.ept_violations.saturating_add(other.ept_violations);
        self.mmu_invalidations = self
            .mmu_invalidations
            .saturating_add(other.mmu_invalidations);
        self.tlb.add(&other.tlb);
        self.faults_by_level = match (self.faults_by_level, other.faults_by_level) {
            (Some(a), Some(b)) => Some(a.saturating_add(&b)),
            _ => None,
        };
        self.leaves_zapped = match (self.leaves_zapped, other.leaves_zapped) {
            (Some(a), Some(b)) => Some(a.saturating_add(&b)),
            _ => None,
        };
        self.resident = self.resident.saturating_add(other.resident);
        self.invalidations_sent = match (self.invalidations_sent, other.invalidations_sent) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
    }

    /// `self − earlier` (saturating at 0), for cumulative counters read at two points in time.
    /// `faults_by_level` is known only if known at both points.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            faults: self.faults.saturating_sub(earlier.faults),
            faults_by_level: match (self.faults_by_level, earlier.faults_by_level) {
                (Some(a), Some(b)) => Some(a.saturating_sub(&b)),
                _ => None,
            },
            sigbus: self.sigbus.saturating_sub(earlier.sigbus),
            sigsegv: self.sigsegv.saturating_sub(earlier.sigsegv),
            skipped: self.skipped.saturating_sub(earlier.skipped),
            dma_lookups: self.dma_lookups.saturating_sub(earlier.dma_lookups),
            ept_violations: self.ept_violations.saturating_sub(earlier.ept_violations),
            mmu_invalidations: self
                .mmu_invalidations
                .saturating_sub(earlier.mmu_invalidations),
            tlb: self.tlb.since(&earlier.tlb),
            leaves_zapped: match (self.leaves_zapped, earlier.leaves_zapped) {
                (Some(a), Some(b)) => Some(a.saturating_sub(&b)),
                _ => None,
            },
            resident: self.resident.saturating_sub(earlier.resident),
            invalidations_sent: match (self.invalidations_sent, earlier.invalidations_sent) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                _ => None,
            },
        }
    }
}

/// The outcome of one `expect` step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectOutcome {
    /// No mismatches.
    pub passed: bool,
    /// Every checked field that differed or could not be measured, in a fixed order.
    pub mismatches: Vec<Mismatch>,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mismatch {
    /// `"faults"`, `"faults_by_level.pud"`, `"sigbus"`, `"sigsegv"`, `"skipped"`,
    /// `"leaves.pmd"`, `"errno"`, `"dma_lookups"`, `"iommu_entries.pud"`, ...
    pub field: String,
    /// The value the scenario expected.
    pub expected: ExpectValue,
    /// The measured value; `None` = this run cannot measure it (JSON `null`), which fails too.
    pub actual: Option<ExpectValue>,
}

/// A checked value: a count (JSON number), or a name (`errno`, JSON string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExpectValue {
    /// A count.
    Count(u64),
    /// A name, e.g. `"EINVAL"` or `"0"`.
    Text(String),
}

impl From<u64> for ExpectValue {
    fn from(n: u64) -> Self {
        ExpectValue::Count(n)
    }
}

impl PartialEq<u64> for ExpectValue {
    fn eq(&self, other: &u64) -> bool {
        matches!(self, ExpectValue::Count(n) if n == other)
    }
}

impl fmt::Display for ExpectValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectValue::Count(n) => write!(f, "{n}"),
            ExpectValue::Text(t) => f.write_str(t),
        }
    }
}

/// What [`check_expect`] compares the state-now fields of an `expect` against. `None` in a
/// `LeafCounts` field = the run cannot see it (the kernel cannot see page tables); the default is
/// "nothing known, no error".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpectNow {
    /// CPU leaves mapped now (`leaves`).
    pub leaves: Option<LeafCounts>,
    /// IOMMU leaves mapped now (`iommu_entries`).
    pub iommu_entries: Option<LeafCounts>,
    /// EPT leaves mapped now (`ept_leaves`).
    pub ept_leaves: Option<LeafCounts>,
    /// The errno name of the last failed op since the previous `expect` (`errno`); `None` (or
    /// `Some("0")`) = none failed.
    pub last_errno: Option<String>,
    /// The run counts [`Counters::dma_lookups`], [`Counters::ept_violations`] and
    /// [`Counters::mmu_invalidations`] (the model does). When false, expecting one of them
    /// fails with `actual: None`.
    pub consumers_measured: bool,
    /// The run simulates `access` steps and counts [`Counters::tlb`] (the model does). When
    /// false, expecting `loads`, `tlb_misses`, `walk_refs*` or `walk_faults` fails with
    /// `actual: None`.
    pub tlb_measured: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.actual {
            Some(a) => write!(f, "{}: expected {}, got {a}", self.field, self.expected),
            None => write!(
                f,
                "{}: expected {}, but this run cannot measure it (not checked, counted as a failure)",
                self.field, self.expected
            ),
        }
    }
}

/// Checks an `expect` step: counters against `since_last` (the delta since the previous
/// `expect`, or since the start), state-now fields against `now`. A field the runner cannot
/// know (`faults_by_level` when `since_last.faults_by_level` is `None`, `leaves` /
/// `iommu_entries` / `ept_leaves` when `now` has `None`, the consumer counters when
/// `now.consumers_measured` is false) fails with `actual: None`. Mismatch order: faults,
/// faults_by_level.{pud,pmd,pte}, sigbus, sigsegv, skipped, leaves.{pud,pmd,pte}, errno,
/// dma_lookups, iommu_entries.*, ept_violations, ept_leaves.*, mmu_invalidations, loads,
/// tlb_misses.{l1,stlb}, walk_refs, walk_refs_by_level.{pgd,p4d,pud,pmd,pte}, walk_refs_ept,
/// walk_faults.
pub fn check_expect(expect: &ExpectSpec, since_last: &Counters, now: &ExpectNow) -> ExpectOutcome {
    let mut out: Vec<Mismatch> =
        scalar_mismatches([("faults", expect.faults, Some(since_last.faults))]).collect();
    out.extend(level_mismatches(
        "faults_by_level",
        expect.faults_by_level.as_ref(),
        since_last.faults_by_level.as_ref(),
    ));
    out.extend(scalar_mismatches([
        ("sigbus", expect.sigbus, Some(since_last.sigbus)),
        ("sigsegv", expect.sigsegv, Some(since_last.sigsegv)),
        ("skipped", expect.skipped, Some(since_last.skipped)),
    ]));
    out.extend(level_mismatches(
        "leaves",
        expect.leaves.as_ref(),
        now.leaves.as_ref(),
    ));
    if let Some(want) = expect.errno {
        let have = now.last_errno.as_deref();
        if !want.matches(have) {
            out.push(Mismatch {
                field: "errno".to_string(),
                expected: ExpectValue::Text(want.as_str().to_string()),
                actual: Some(ExpectValue::Text(have.unwrap_or("0").to_string())),
            });
        }
    }
    let measured = |n: u64| now.consumers_measured.then_some(n);
    out.extend(scalar(
        "dma_lookups",
        expect.dma_lookups,
        measured(since_last.dma_lookups),
    ));
    out.extend(levels(
        "iommu_entries",
        &expect.iommu_entries,
        &now.iommu_entries,
    ));
    out.extend(scalar(
        "ept_violations",
        expect.ept_violations,
        measured(since_last.ept_violations),
    ));
    out.extend(levels("ept_leaves", &expect.ept_leaves, &now.ept_leaves));
    out.extend(scalar(
        "mmu_invalidations",
        expect.mmu_invalidations,
        measured(since_last.mmu_invalidations),
    ));
    out.extend(tlb_mismatches(expect, &since_last.tlb, now.tlb_measured));
    out.extend(levels(
        "leaves_zapped",
        &expect.leaves_zapped,
        &since_last.leaves_zapped,
    ));
    out.extend(scalar(
        "resident",
        expect.resident,
        Some(since_last.resident),
    ));
    ExpectOutcome {
        passed: out.is_empty(),
        mismatches: out,
    }
}

fn tlb_mismatches(expect: &ExpectSpec, t: &TlbCounters, measured: bool) -> Vec<Mismatch> {
    let m = |n: u64| measured.then_some(n);
    let misses = expect.tlb_misses.unwrap_or_default();
    let by = expect.walk_refs_by_level.unwrap_or_default();
    let l = &t.walk_refs_by_level;
    scalar_mismatches([
        ("loads", expect.loads, m(t.loads)),
        ("tlb_misses.l1", misses.l1, m(t.l1_misses)),
        ("tlb_misses.stlb", misses.stlb, m(t.stlb_misses)),
        ("walk_refs", expect.walk_refs, m(t.walk_refs)),
        ("walk_refs_by_level.pgd", by.pgd, m(l.pgd)),
        ("walk_refs_by_level.p4d", by.p4d, m(l.p4d)),
        ("walk_refs_by_level.pud", by.pud, m(l.pud)),
        ("walk_refs_by_level.pmd", by.pmd, m(l.pmd)),
        ("walk_refs_by_level.pte", by.pte, m(l.pte)),
        ("walk_refs_ept", expect.walk_refs_ept, m(t.walk_refs_ept)),
        ("walk_faults", expect.walk_faults, m(t.walk_faults)),
    ])
    .collect()
}

fn scalar_mismatches<const N: usize>(
    checks: [(&str, Option<u64>, Option<u64>); N],
) -> impl Iterator<Item = Mismatch> {
    checks.into_iter().filter_map(|(field, want, have)| {
        let expected = want?;
        (have != Some(expected)).then(|| Mismatch {
            field: field.to_string(),
            expected: expected.into(),
            actual: have.map(ExpectValue::Count),
        })
    })
}

/// The mismatch of one expected counter, if any (see [`scalar_mismatches`]).
fn scalar(field: &str, want: Option<u64>, have: Option<u64>) -> impl Iterator<Item = Mismatch> {
    scalar_mismatches([(field, want, have)])
}

/// The mismatches of one expected per-level count (see [`level_mismatches`]).
fn levels(prefix: &str, want: &Option<LevelCounts>, have: &Option<LeafCounts>) -> Vec<Mismatch> {
    level_mismatches(prefix, want.as_ref(), have.as_ref())
}

fn level_mismatches(
    prefix: &str,
    want: Option<&LevelCounts>,
    have: Option<&LeafCounts>,
) -> Vec<Mismatch> {
    let Some(w) = want else { return Vec::new() };
    [
        ("pud", w.pud, have.map(|h| h.pud)),
        ("pmd", w.pmd, have.map(|h| h.pmd)),
        ("pte", w.pte, have.map(|h| h.pte)),
    ]
    .into_iter()
    .filter_map(|(lvl, expected, actual)| {
        let expected = expected?;
        (actual != Some(expected)).then(|| Mismatch {
            field: format!("{prefix}.{lvl}"),
            expected: expected.into(),
            actual: actual.map(ExpectValue::Count),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{ErrnoName, ExpectStep, ResetStep};
    use crate::test_util::puds;

    fn counters(faults: u64, levels: Option<(u64, u64, u64)>) -> Counters {
        Counters {
            faults,
            faults_by_level: levels.map(|(pud, pmd, pte)| LeafCounts { pud, pmd, pte }),
            ..Counters::default()
        }
    }

    fn now(leaves: Option<LeafCounts>) -> ExpectNow {
        ExpectNow {
            leaves,
            ..ExpectNow::default()
        }
    }

    fn spec(faults: Option<u64>, by_level: Option<LevelCounts>) -> ExpectSpec {
        ExpectSpec {
            faults,
            faults_by_level: by_level,
            ..ExpectSpec::default()
        }
    }

    #[test]
    fn matching_expectation_passes() {
        let e = ExpectSpec {
            faults: Some(2),
            faults_by_level: Some(LevelCounts {
                pud: Some(2),
                pmd: Some(0),
                pte: None,
            }),
            sigbus: Some(0),
            sigsegv: Some(0),
            skipped: Some(0),
            leaves: puds(2),
            ..ExpectSpec::default()
        };
        let leaves = LeafCounts {
            pud: 2,
            pmd: 0,
            pte: 7,
        };
        let out = check_expect(&e, &counters(2, Some((2, 0, 9))), &now(Some(leaves)));
        assert_eq!(
            out,
            ExpectOutcome {
                passed: true,
                mismatches: vec![]
            }
        );
        // an empty expectation always passes
        assert!(check_expect(&ExpectSpec::default(), &counters(5, None), &now(None)).passed);
    }

    #[test]
    fn every_field_can_mismatch_in_a_fixed_order() {
        let some = |n| Some(n);
        let all = LevelCounts {
            pud: some(1),
            pmd: some(1),
            pte: some(1),
        };
        let e = ExpectSpec {
            faults: some(1),
            faults_by_level: Some(all),
            sigbus: some(1),
            sigsegv: some(1),
            skipped: some(1),
            leaves: Some(all),
            ..ExpectSpec::default()
        };
        let out = check_expect(
            &e,
            &counters(0, Some((0, 0, 0))),
            &now(Some(LeafCounts::default())),
        );
        assert!(!out.passed);
        let fields: Vec<&str> = out.mismatches.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "faults",
                "faults_by_level.pud",
                "faults_by_level.pmd",
                "faults_by_level.pte",
                "sigbus",
                "sigsegv",
                "skipped",
                "leaves.pud",
                "leaves.pmd",
                "leaves.pte"
            ]
        );
        assert!(
            out.mismatches
                .iter()
                .all(|m| m.expected == 1 && m.actual == Some(ExpectValue::Count(0)))
        );
        assert_eq!(out.mismatches[0].to_string(), "faults: expected 1, got 0");
    }

    #[test]
    fn expecting_what_the_run_cannot_know_fails() {
        // the kernel: no fault levels, no leaves
        let e = ExpectSpec {
            faults: Some(2),
            faults_by_level: puds(2),
            leaves: Some(LevelCounts {
                pmd: Some(0),
                ..LevelCounts::default()
            }),
            ..ExpectSpec::default()
        };
        let out = check_expect(&e, &counters(2, None), &now(None));
        assert!(!out.passed);
        assert_eq!(
            out.mismatches,
            vec![
                Mismatch {
                    field: "faults_by_level.pud".into(),
                    expected: ExpectValue::Count(2),
                    actual: None
                },
                Mismatch {
                    field: "leaves.pmd".into(),
                    expected: ExpectValue::Count(0),
                    actual: None
                },
            ]
        );
        assert!(out.mismatches[0].to_string().contains("cannot measure"));
        // expecting only faults works against the kernel
        assert!(check_expect(&spec(Some(2), None), &counters(2, None), &now(None)).passed);
    }

    #[test]
    fn counters_add_and_subtract() {
        let mut t = Counters::zero(true);
        assert_eq!(t.faults_by_level, Some(LeafCounts::default()));
        t.add(&counters(3, Some((1, 2, 0))));
        t.add(&Counters {
            sigbus: 1,
            sigsegv: 2,
            skipped: 3,
            ..counters(1, Some((0, 0, 1)))
        });
        assert_eq!(
            t,
            Counters {
                faults: 4,
                faults_by_level: Some(LeafCounts {
                    pud: 1,
                    pmd: 2,
                    pte: 1
                }),
                sigbus: 1,
                sigsegv: 2,
                skipped: 3,
                ..Counters::default()
            }
        );
        assert_eq!(t.faults_by_level.map(|l| l.total()), Some(4));
        let d = t.since(&counters(1, Some((1, 0, 0))));
        assert_eq!((d.faults, d.faults_by_level.map(|l| l.pud)), (3, Some(0)));
        // unknown levels make the sum / difference unknown; subtraction saturates
        t.add(&counters(1, None));
        assert_eq!(t.faults_by_level, None);
        assert_eq!(
            counters(1, None).since(&counters(5, Some((0, 0, 0)))),
            counters(0, None)
        );
        let mut big = counters(u64::MAX, None);
        big.add(&counters(1, None));
        assert_eq!(big.faults, u64::MAX);
    }

    #[test]
    fn run_report_totals_ok_and_json_round_trip() {
        let reset = Step::Reset(ResetStep {
            line: 7,
            device: "gpu".into(),
        });
        let expect = Step::Expect(ExpectStep {
            line: 12,
            expect: spec(Some(2), None),
            on_kernel: vec![],
            on_arch: vec![],
            process: None,
        });
        let mut s0 = StepReport::for_step(0, &reset, false);
        s0.counters.faults = 2;
        s0.errno = Some("EINVAL".into());
        let mut s1 = StepReport::for_step(1, &expect, false);
        s1.expect = Some(check_expect(&spec(Some(2), None), &s0.counters, &now(None)));
        let r = RunReport::new(
            "lab",
            "kernel 6.12.95+deb12-amd64",
            vec![s0.clone(), s1.clone()],
        );
        assert!(r.ok);
        assert_eq!(r.totals, counters(2, None));
        assert_eq!((s1.index, s1.line, s1.op.as_str()), (1, 12, "expect"));

        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains("\"faults_by_level\":null"), "{json}");
        assert!(json.contains("\"errno\":\"EINVAL\""), "{json}");
        let back: RunReport = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);

        let mut bad = s1;
        bad.expect = Some(check_expect(&spec(Some(3), None), &s0.counters, &now(None)));
        let r = RunReport::new("lab", "model", vec![s0, bad]);
        assert!(!r.ok);
        let json = serde_json::to_string_pretty(&r).expect("serialize");
        assert!(json.contains("\"actual\": 2"), "{json}");

        // the model: levels known everywhere → totals know them too
        let mut m = StepReport::for_step(0, &reset, true);
        m.counters = counters(2, Some((2, 0, 0)));
        m.leaves = Some(LeafCounts {
            pud: 2,
            pmd: 0,
            pte: 0,
        });
        m.page_table_pages = Some(TableCounts {
            pgd: 1,
            p4d: 0,
            pud: 1,
            pmd: 0,
            pte: 0,
        });
        let r = RunReport::new("x", "model", vec![m]);
        assert_eq!(r.totals.faults_by_level.map(|l| l.pud), Some(2));
        let back: RunReport =
            serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("de");
        assert_eq!(back, r);
        assert_eq!(
            RunReport::new("x", "model", vec![]).totals,
            Counters::zero(false)
        );
    }

    #[test]
    fn json_rejects_unknown_fields() {
        let j = r#"{"faults":1,"faults_by_level":null,"sigbus":0,"sigsegv":0,"skipped":0,"majfaults":0}"#;
        assert!(serde_json::from_str::<Counters>(j).is_err());
        let j = r#"{"faults":1,"sigbus":0,"sigsegv":0,"skipped":0}"#;
        assert_eq!(
            serde_json::from_str::<Counters>(j).expect("faults_by_level may be omitted"),
            counters(1, None)
        );
    }

    fn consumer_spec() -> ExpectSpec {
        ExpectSpec {
            errno: Some("EINVAL".parse().expect("errno")),
            dma_lookups: Some(32),
            iommu_entries: puds(32),
            ept_violations: Some(128),
            ept_leaves: Some(LevelCounts {
                pud: Some(128),
                pte: Some(0),
                ..LevelCounts::default()
            }),
            mmu_invalidations: Some(1),
            ..ExpectSpec::default()
        }
    }

    fn consumer_counters() -> Counters {
        Counters {
            dma_lookups: 32,
            ept_violations: 128,
            mmu_invalidations: 1,
            ..counters(0, Some((0, 0, 0)))
        }
    }

    #[test]
    fn consumer_fields_pass_when_measured_and_equal() {
        let n = ExpectNow {
            iommu_entries: Some(LeafCounts {
                pud: 32,
                pmd: 0,
                pte: 0,
            }),
            ept_leaves: Some(LeafCounts {
                pud: 128,
                pmd: 0,
                pte: 0,
            }),
            last_errno: Some("EINVAL".into()),
            consumers_measured: true,
            ..ExpectNow::default()
        };
        let out = check_expect(&consumer_spec(), &consumer_counters(), &n);
        assert!(out.passed, "{:?}", out.mismatches);
    }

    #[test]
    fn consumer_fields_mismatch_in_order() {
        let n = ExpectNow {
            iommu_entries: Some(LeafCounts::default()),
            ept_leaves: Some(LeafCounts {
                pud: 0,
                pmd: 0,
                pte: 7,
            }),
            last_errno: None,
            consumers_measured: true,
            ..ExpectNow::default()
        };
        let out = check_expect(&consumer_spec(), &counters(0, Some((0, 0, 0))), &n);
        let got: Vec<(String, String, Option<String>)> = out
            .mismatches
            .iter()
            .map(|m| {
                (
                    m.field.clone(),
                    m.expected.to_string(),
                    m.actual.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            vec![
                (s("errno"), s("EINVAL"), Some(s("0"))),
                (s("dma_lookups"), s("32"), Some(s("0"))),
                (s("iommu_entries.pud"), s("32"), Some(s("0"))),
                (s("ept_violations"), s("128"), Some(s("0"))),
                (s("ept_leaves.pud"), s("128"), Some(s("0"))),
                (s("ept_leaves.pte"), s("0"), Some(s("7"))),
                (s("mmu_invalidations"), s("1"), Some(s("0"))),
            ]
        );
        assert_eq!(
            out.mismatches[0].to_string(),
            "errno: expected EINVAL, got 0"
        );
    }

    #[test]
    fn consumer_fields_unknown_to_the_run_fail_with_null() {
        // the kernel probe: no IOMMU/EPT view, no consumer counters
        let out = check_expect(&consumer_spec(), &consumer_counters(), &now(None));
        let unknown: Vec<&str> = out
            .mismatches
            .iter()
            .filter(|m| m.actual.is_none())
            .map(|m| m.field.as_str())
            .collect();
        assert_eq!(
            unknown,
            [
                "dma_lookups",
                "iommu_entries.pud",
                "ept_violations",
                "ept_leaves.pud",
                "ept_leaves.pte",
                "mmu_invalidations"
            ]
        );
        // errno is always known: no error happened, EINVAL was expected
        assert_eq!(out.mismatches[0].field, "errno");
        assert_eq!(
            out.mismatches[0].actual,
            Some(ExpectValue::Text("0".into()))
        );
    }

    #[test]
    fn tlb_fields_check_in_order_and_fail_with_null_when_not_simulated() {
        use crate::scenario::{TableLevelCounts, TlbMissCounts};
        let e = ExpectSpec {
            loads: Some(10),
            tlb_misses: Some(TlbMissCounts {
                l1: Some(4),
                stlb: Some(3),
            }),
            walk_refs: Some(5),
            walk_refs_by_level: Some(TableLevelCounts {
                pmd: Some(2),
                pte: Some(3),
                ..TableLevelCounts::default()
            }),
            walk_refs_ept: Some(0),
            walk_faults: Some(0),
            ..ExpectSpec::default()
        };
        let mut c = Counters::zero(true);
        c.tlb = TlbCounters {
            loads: 10,
            l1_misses: 4,
            stlb_misses: 3,
            walk_refs: 5,
            walk_refs_by_level: TableCounts {
                pmd: 2,
                pte: 3,
                ..TableCounts::default()
            },
            ..TlbCounters::default()
        };
        let sim = ExpectNow {
            tlb_measured: true,
            ..ExpectNow::default()
        };
        assert!(check_expect(&e, &c, &sim).passed);
        // deltas: since() of two readings, add() of two steps
        let mut twice = c;
        twice.add(&c);
        assert_eq!(twice.since(&c).tlb, c.tlb);
        let out = check_expect(&e, &twice, &sim);
        let fields: Vec<&str> = out.mismatches.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "loads",
                "tlb_misses.l1",
                "tlb_misses.stlb",
                "walk_refs",
                "walk_refs_by_level.pmd",
                "walk_refs_by_level.pte"
            ]
        );
        // the kernel probe cannot count them
        let out = check_expect(&e, &c, &ExpectNow::default());
        assert_eq!(out.mismatches.len(), 8);
        assert!(out.mismatches.iter().all(|m| m.actual.is_none()));
    }

    #[test]
    fn errno_zero_means_none_failed() {
        let e = ExpectSpec {
            errno: Some(ErrnoName::NONE),
            ..ExpectSpec::default()
        };
        assert!(check_expect(&e, &Counters::default(), &now(None)).passed);
        let zero = ExpectNow {
            last_errno: Some("0".into()),
            ..ExpectNow::default()
        };
        assert!(check_expect(&e, &Counters::default(), &zero).passed);
        let failed = ExpectNow {
            last_errno: Some("EFAULT".into()),
            ..ExpectNow::default()
        };
        let out = check_expect(&e, &Counters::default(), &failed);
        assert_eq!(
            out.mismatches,
            vec![Mismatch {
                field: "errno".into(),
                expected: ExpectValue::Text("0".into()),
                actual: Some(ExpectValue::Text("EFAULT".into())),
            }]
        );
    }

    #[test]
    fn new_counters_add_subtract_and_default_in_old_json() {
        let mut t = Counters::zero(true);
        t.add(&consumer_counters());
        t.add(&consumer_counters());
        assert_eq!(
            (t.dma_lookups, t.ept_violations, t.mmu_invalidations),
            (64, 256, 2)
        );
        let d = t.since(&consumer_counters());
        assert_eq!(
            (d.dma_lookups, d.ept_violations, d.mmu_invalidations),
            (32, 128, 1)
        );
        // JSON written before these counters existed still reads
        let j = r#"{"faults":1,"faults_by_level":null,"sigbus":0,"sigsegv":0,"skipped":0}"#;
        let c: Counters = serde_json::from_str(j).expect("old counters");
        assert_eq!(c.dma_lookups, 0);
        let j = r#"{"index":0,"line":3,"op":"touch","counters":{"faults":0,"sigbus":0,"sigsegv":0,"skipped":0},"leaves":null,"page_table_pages":null,"errno":null,"expect":null}"#;
        let r: StepReport = serde_json::from_str(j).expect("old step report");
        assert_eq!(
            (r.iommu_entries, r.ept_leaves, r.process),
            (None, None, None)
        );
        // mismatches keep numbers as numbers and names as strings
        let m = Mismatch {
            field: "errno".into(),
            expected: ExpectValue::Text("EEXIST".into()),
            actual: Some(ExpectValue::Text("0".into())),
        };
        let json = serde_json::to_string(&m).expect("ser");
        assert_eq!(
            json,
            r#"{"field":"errno","expected":"EEXIST","actual":"0"}"#
        );
        assert_eq!(serde_json::from_str::<Mismatch>(&json).expect("de"), m);
        let m = Mismatch {
            field: "faults".into(),
            expected: 2.into(),
            actual: None,
        };
        let json = serde_json::to_string(&m).expect("ser");
        assert_eq!(json, r#"{"field":"faults","expected":2,"actual":null}"#);
        assert_eq!(serde_json::from_str::<Mismatch>(&json).expect("de"), m);
    }

    #[test]
    fn step_reports_carry_the_process_of_the_step() {
        let touch = Step::Touch(crate::scenario::TouchStep {
            line: 4,
            map: "b1".into(),
            offset: 0,
            len: crate::scenario::Len::All,
            stride: 4096,
            access: crate::scenario::Access::Write,
            order: crate::scenario::Order::Forward,
            process: Some("c1".into()),
        });
        let r = StepReport::for_step(0, &touch, true);
        assert_eq!(r.process.as_deref(), Some("c1"));
        let reset = Step::Reset(ResetStep {
            line: 7,
            device: "gpu".into(),
        });
        assert_eq!(StepReport::for_step(1, &reset, true).process, None);
    }
}
