//! Text rendering of run reports.

use std::fmt::Write as _;

use hugepfn_scenario::{RunReport, Scenario};

/// A human-readable table of a run: one row per step, then every failed expectation.
pub fn format_report(sc: &Scenario, r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario: {} ({}) on the {}{}",
        r.scenario,
        sc.origin,
        r.source,
        r.kernel
            .as_ref()
            .map_or(String::new(), |k| format!(", as Linux {k}"))
    );
    let _ = writeln!(
        s,
        "{:>4} {:>5}  {:<7} {:>9} {:>7} {:>7} {:>9} {:>6} {:>7}  {:<22} result",
        "step",
        "line",
        "op",
        "faults",
        "pud",
        "pmd",
        "pte",
        "sigbus",
        "skipped",
        "leaves pud/pmd/pte",
    );
    for st in &r.steps {
        let lv = st.counters.faults_by_level.unwrap_or_default();
        let leaves = st
            .leaves
            .map(|l| format!("{}/{}/{}", l.pud, l.pmd, l.pte))
            .unwrap_or_else(|| "-".into());
        let mut result = match (&st.expect, &st.errno) {
            (Some(e), _) if e.passed => "expect ok".to_string(),
            (Some(e), _) => format!("EXPECT FAILED ({} mismatches)", e.mismatches.len()),
            (None, Some(errno)) => errno.clone(),
            (None, None) => String::new(),
        };
        if let Some(f) = &st.kernel_crash {
            result = format!(
                "{result}{}KERNEL CRASH in {f} (this kernel oopses here; the model goes on as the corrected design)",
                if result.is_empty() { "" } else { "; " }
            );
        }
        let _ = writeln!(
            s,
            "{:>4} {:>5}  {:<7} {:>9} {:>7} {:>7} {:>9} {:>6} {:>7}  {:<22} {}",
            st.index,
            st.line,
            st.op,
            st.counters.faults,
            lv.pud,
            lv.pmd,
            lv.pte,
            st.counters.sigbus,
            st.counters.skipped,
            leaves,
            result
        );
    }
    for st in &r.steps {
        if let Some(e) = &st.expect {
            for m in &e.mismatches {
                let actual = m
                    .actual
                    .as_ref()
                    .map_or_else(|| "unknown to this run".to_string(), |a| a.to_string());
                let _ = writeln!(
                    s,
                    "{}:{}: step {} expect {}: expected {}, got {}",
                    sc.origin, st.line, st.index, m.field, m.expected, actual
                );
            }
        }
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "total: {} faults, {} SIGBUS, {} SIGSEGV, {} skipped — {}",
        t.faults,
        t.sigbus,
        t.sigsegv,
        t.skipped,
        if r.out_of_memory.is_some() {
            "STOPPED: the simulated memory is used up"
        } else if r.ok {
            "all expectations met"
        } else {
            "EXPECTATIONS FAILED"
        }
    );
    s
}
