//! `hugepfn compare FILE.toml`: one scenario under the RFC's three fault-path designs, side by
//! side — faults, page-table pages allocated and freed, TLB flushes, time — and the correctness
//! hazards each design ran into (each hazard is also shown by a test in
//! `crates/hugepfn/tests/designs.rs`).

use std::time::Instant;

use hugepfn_mm::FaultPath;
use hugepfn_mm::pgtable::HazardCounts;
use hugepfn_scenario::Scenario;
use serde::Serialize;

use crate::runner::{ModelRun, RunError, RunOptions};

/// One design's run.
#[derive(Debug, Clone, Serialize)]
pub struct DesignRow {
    /// `huge_fault`, `early_fault` or `remap_overwrite`.
    pub design: &'static str,
    /// Faults in all.
    pub faults: u64,
    /// By the level of the leaf installed.
    pub faults_pud: u64,
    /// PMD.
    pub faults_pmd: u64,
    /// PTE.
    pub faults_pte: u64,
    /// SIGBUS.
    pub sigbus: u64,
    /// Page-table pages allocated over the run (PGD included).
    pub tables_allocated: u64,
    /// Page-table pages freed over the run.
    pub tables_freed: u64,
    /// TLB flushes recorded.
    pub tlb_flushes: u64,
    /// Leaves mapped at the end: PUD/PMD/PTE.
    pub leaves: [u64; 3],
    /// Wall time of the run.
    pub elapsed_ns: u64,
    /// Hazards met.
    pub hazards: HazardCounts,
    /// Whether the scenario's own expectations held under this design.
    pub expectations_met: bool,
    /// Hazards that are properties of the design rather than events (e.g. the THP policy bypass).
    pub notes: Vec<String>,
}

/// Runs `sc` under each design.
pub fn compare(sc: &Scenario, opts: RunOptions) -> Result<Vec<DesignRow>, RunError> {
    let mut rows = Vec::new();
    for d in FaultPath::ALL {
        let o = RunOptions {
            fault_path: Some(d),
            ..opts
        };
        let mut m = ModelRun::new(sc, o)?;
        let t0 = Instant::now();
        let report = m.run(sc);
        let elapsed_ns = t0.elapsed().as_nanos() as u64;
        let pt = m.mm.page_tables();
        let f = m.mm.fault_counts();
        let (alloc, freed) = pt.alloc_free_counts();
        let l = m.mm.all_leaves();
        let mut notes = Vec::new();
        if d == FaultPath::EarlyFault {
            notes.push(
                "bypasses thp_vma_allowable_order: huge leaves even with THP never or MADV_NOHUGEPAGE"
                    .into(),
            );
        }
        if d == FaultPath::RemapOverwrite && pt.hazards().live_table_freed > 0 {
            notes.push("frees page tables a lockless walker (gup-fast, hardware) may hold".into());
        }
        rows.push(DesignRow {
            design: d.name(),
            faults: f.faults,
            faults_pud: f.by_level.pud,
            faults_pmd: f.by_level.pmd,
            faults_pte: f.by_level.pte,
            sigbus: f.sigbus,
            tables_allocated: alloc,
            tables_freed: freed,
            tlb_flushes: pt.flush_log().count,
            leaves: [l.pud, l.pmd, l.pte],
            elapsed_ns,
            hazards: pt.hazards(),
            expectations_met: report.ok,
            notes,
        });
    }
    Ok(rows)
}

/// The comparison as a table.
pub fn format(sc: &Scenario, rows: &[DesignRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "scenario: {} ({})\n", sc.name, sc.origin);
    let _ = writeln!(
        s,
        "{:<16} {:>9} {:>16} {:>7} {:>9} {:>8} {:>8} {:>16} {:>11} {:>9} {:>9}  expect",
        "design",
        "faults",
        "pud/pmd/pte",
        "SIGBUS",
        "PT alloc",
        "PT free",
        "TLB fl",
        "leaves",
        "time",
        "freed-live",
        "remap-rd"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>16} {:>7} {:>9} {:>8} {:>8} {:>16} {:>11} {:>9} {:>9}  {}",
            r.design,
            r.faults,
            format!("{}/{}/{}", r.faults_pud, r.faults_pmd, r.faults_pte),
            r.sigbus,
            r.tables_allocated,
            r.tables_freed,
            r.tlb_flushes,
            format!("{}/{}/{}", r.leaves[0], r.leaves[1], r.leaves[2]),
            format!("{:.2} ms", r.elapsed_ns as f64 / 1e6),
            r.hazards.live_table_freed,
            r.hazards.remap_under_read_lock,
            if r.expectations_met { "met" } else { "differ" }
        );
    }
    let _ = writeln!(s, "\nhazards:");
    for r in rows {
        let mut hz: Vec<String> = r.notes.clone();
        if r.hazards.remap_under_read_lock > 0 {
            hz.push(format!(
                "remap_pfn_range under the mmap read lock {} times (lockdep; racing faults)",
                r.hazards.remap_under_read_lock
            ));
        }
        if hz.is_empty() {
            hz.push("none found".into());
        }
        let _ = writeln!(s, "  {:<16} {}", r.design, hz.join("; "));
    }
    s
}
