//! `hugepfn lab compare`: the model's report next to the kernel's, step by step.
//!
//! Compared per step (not `expect`): `faults`, `sigbus`, `sigsegv`, `skipped` and `errno`.
//! The kernel cannot tell fault levels; the model's are shown for reading, not compared.
//! Expectations are not what is compared: a scenario may expect `leaves`, which the kernel
//! cannot see, and still agree with the kernel on every count.
//!
//! A VA the kernel chose (an `mmap` with no `va`) is an input to the model, not something
//! compared: [`model_for`] gives it to the model after checking it against what the model
//! predicts of it (docs/kernels.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use std::collections::BTreeMap;

use hugepfn_mm::addr::VirtAddr;
use hugepfn_scenario::{RunReport, Scenario, Step, StepReport};

use super::{
    KernelOutcome, LabError, LabOpts, LabScenario, expand_files, kernel_outcomes, load_all,
};
use crate::runner::{ModelRun, RunOptions};

/// Per-scenario result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every compared field agrees.
    Same,
    /// Some step differs.
    Differ,
    /// The kernel crashed, hung, or the probe / model could not run.
    Failed,
    /// Not runnable in the lab.
    Skipped,
    /// The kernel crashed as a `--known-crashes` entry says it does (a kernel bug on record).
    KnownCrash,
}

/// `--known-crashes` entries: scenario name and a function that must appear in the oops.
pub type KnownCrashes = Vec<(String, String)>;

/// Reads a known-crashes file: `SCENARIO-NAME FUNCTION` per line, `#` comments.
pub fn load_known_crashes(path: &Path) -> Result<KnownCrashes, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let mut it = l.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(n), Some(f), None) => out.push((n.to_string(), f.to_string())),
            _ => {
                return Err(LabError::Input(format!(
                    "{}:{}: expected `SCENARIO-NAME FUNCTION`",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

/// One table row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// "2 touch (l.26)".
    pub step: String,
    /// Model faults.
    pub model_faults: String,
    /// Model faults by level, "pud/pmd/pte".
    pub model_levels: String,
    /// Kernel faults.
    pub kernel_faults: String,
    /// SIGBUS model / kernel.
    pub sigbus: String,
    /// "same", "DIFF: ..." etc.
    pub verdict: String,
}

/// Everything about one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioCompare {
    /// File.
    pub path: PathBuf,
    /// Verdict.
    pub verdict: Verdict,
    /// Table rows.
    pub rows: Vec<Row>,
    /// Notes for the report (differences, crash traces, warnings).
    pub notes: Vec<String>,
}

fn step_label(s: &StepReport) -> String {
    format!("{} {} (l.{})", s.index + 1, s.op, s.line)
}

/// The fields that differ between the model's and the kernel's step.
pub fn step_differences(m: &StepReport, k: &StepReport) -> Vec<String> {
    let mut d = Vec::new();
    let (mc, kc) = (&m.counters, &k.counters);
    for (name, a, b) in [
        ("faults", mc.faults, kc.faults),
        ("sigbus", mc.sigbus, kc.sigbus),
        ("sigsegv", mc.sigsegv, kc.sigsegv),
        ("skipped", mc.skipped, kc.skipped),
        ("resident", mc.resident, kc.resident),
    ] {
        if a != b {
            d.push(format!("{name} model {a} kernel {b}"));
        }
    }
    if m.errno != k.errno {
        let show = |e: &Option<String>| e.clone().unwrap_or_else(|| "none".into());
        d.push(format!(
            "errno model {} kernel {}",
            show(&m.errno),
            show(&k.errno)
        ));
    }
    d
}

/// The model's run to set next to `kernel`'s. Where a scenario's `mmap` leaves the VA to the
/// kernel, the kernel's choice is an input, not a prediction (ASLR draws `mmap_base`): the
/// model takes it ([`ModelRun::take_kernel_vas`]) after checking it against what the model
/// does predict of it. What became of each VA is in the notes.
pub fn model_for(
    s: &LabScenario,
    opts: RunOptions,
    kernel: &KernelOutcome,
) -> (Result<RunReport, String>, Vec<String>) {
    let mut run = match ModelRun::new(&s.sc, opts) {
        Ok(r) => r,
        Err(e) => return (Err(e.to_string()), Vec::new()),
    };
    if let KernelOutcome::Report { report, .. } = kernel {
        run.take_kernel_vas(kernel_vas(&s.sc, report));
    }
    let report = run.run(&s.sc);
    (Ok(report), run.draw_notes().to_vec())
}

/// The VAs the kernel's `mmap` steps got (the model uses those of placements that leave part
/// of the alignment to the kernel).
fn kernel_vas(sc: &Scenario, kernel: &RunReport) -> BTreeMap<usize, VirtAddr> {
    sc.steps
        .iter()
        .zip(&kernel.steps)
        .enumerate()
        .filter_map(|(i, (step, k))| match step {
            Step::Mmap(_) => k.va.map(|va| (i, va)),
            _ => None,
        })
        .collect()
}

/// [`compare_one`] with the model run [`model_for`] makes.
pub fn compare_with_model(
    s: &LabScenario,
    opts: RunOptions,
    kernel: &KernelOutcome,
    known: &KnownCrashes,
) -> ScenarioCompare {
    let (model, notes) = model_for(s, opts, kernel);
    let mut c = compare_one(s, model, kernel, known);
    c.notes.extend(notes);
    c
}

/// Compares one scenario.
pub fn compare_one(
    s: &LabScenario,
    model: Result<RunReport, String>,
    kernel: &KernelOutcome,
    known: &KnownCrashes,
) -> ScenarioCompare {
    let name = s.sc.name.clone();
    let mut out = ScenarioCompare {
        path: s.path.clone(),
        verdict: Verdict::Same,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let fail_row = |verdict: String| Row {
        scenario: name.clone(),
        step: "-".into(),
        model_faults: "-".into(),
        model_levels: "-".into(),
        kernel_faults: "-".into(),
        sigbus: "-".into(),
        verdict,
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            out.verdict = Verdict::Failed;
            out.rows.push(fail_row("MODEL ERROR".into()));
            out.notes.push(format!("model: {e}"));
            return out;
        }
    };
    let (kernel, warnings, inspect) = match kernel {
        KernelOutcome::Report {
            report,
            warnings,
            inspect,
        } => (report, warnings, inspect),
        KernelOutcome::Skipped(why) => {
            out.verdict = Verdict::Skipped;
            out.rows.push(fail_row("skipped".into()));
            out.notes.push(format!("skipped: {why}"));
            return out;
        }
        other => {
            out.verdict = Verdict::Failed;
            let known_crash = match other {
                KernelOutcome::Crash { oops, step } => {
                    known.iter().any(|(n, f)| {
                        *n == s.sc.name && oops.iter().any(|l| l.contains(f.as_str()))
                    }) || predicted_crash(&model, step.as_ref(), oops)
                }
                _ => false,
            };
            if known_crash {
                out.verdict = Verdict::KnownCrash;
            }
            let (verdict, step) = match other {
                KernelOutcome::Crash { step, .. } if known_crash => {
                    ("known kernel crash", step.clone())
                }
                KernelOutcome::Crash { step, .. } => ("KERNEL CRASH", step.clone()),
                KernelOutcome::Timeout { step, .. } => ("TIMEOUT", step.clone()),
                KernelOutcome::ProbeFailed { .. } => ("PROBE FAILED", None),
                _ => ("GUEST FAILED", None),
            };
            let mut row = fail_row(verdict.into());
            if let Some(st) = &step {
                row.step = format!("{} {} (l.{})", st.index + 1, st.op, st.line);
                // the model's view of the step the kernel died in
                if let Some(ms) = model.steps.get(st.index) {
                    row.model_faults = ms.counters.faults.to_string();
                    row.model_levels = levels(ms);
                }
            }
            out.rows.push(row);
            if let Some(msg) = super::describe_failure(other) {
                out.notes.push(msg);
            }
            return out;
        }
    };
    for w in warnings {
        out.notes.push(format!("probe warning: {w}"));
    }
    if model.steps.len() != kernel.steps.len() {
        out.verdict = Verdict::Differ;
        out.notes.push(format!(
            "the model reported {} steps, the kernel {}",
            model.steps.len(),
            kernel.steps.len()
        ));
    }
    for (m, k) in model.steps.iter().zip(&kernel.steps) {
        if m.op == "expect" {
            continue;
        }
        let diffs = step_differences(m, k);
        if !diffs.is_empty() {
            out.verdict = Verdict::Differ;
            out.notes
                .push(format!("{}: {}", step_label(m), diffs.join(", ")));
        }
        let errno = |s: &StepReport| {
            s.errno
                .as_ref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default()
        };
        out.rows.push(Row {
            scenario: name.clone(),
            step: step_label(m),
            model_faults: format!("{}{}", m.counters.faults, errno(m)),
            model_levels: levels(m),
            kernel_faults: format!("{}{}", k.counters.faults, errno(k)),
            sigbus: format!("{} / {}", m.counters.sigbus, k.counters.sigbus),
            verdict: if diffs.is_empty() {
                "same".into()
            } else {
                format!(
                    "DIFF ({})",
                    diffs
                        .iter()
                        .map(|d| d.split(' ').next().unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
        });
    }
    if super::guest::wants_inspect(&s.path) {
        check_inspect(s, kernel, inspect.as_deref(), &mut out);
    }
    out
}

/// `lab-inspect-*`: `hugepfn inspect`, run in the guest on the held probe, against what the
/// probe measured. Each `touch` of a whole mapping is matched with inspect's mapping of the
/// same BAR offset and length; its predicted faults must be the probe's count.
fn check_inspect(
    s: &LabScenario,
    kernel: &RunReport,
    inspect: Option<&str>,
    out: &mut ScenarioCompare,
) {
    use hugepfn_scenario::{Len, Step};
    let name = s.sc.name.clone();
    let row = |step: String, pred: String, measured: String, verdict: String| Row {
        scenario: name.clone(),
        step,
        model_faults: pred,
        model_levels: "(inspect)".into(),
        kernel_faults: measured,
        sigbus: "-".into(),
        verdict,
    };
    let json = match inspect {
        // reports read from a directory (`--reports`): no guest ran inspect
        None => {
            out.notes
                .push("inspect: not checked (no live guest: reports from a directory)".into());
            return;
        }
        Some("MISSING") => {
            out.verdict = Verdict::Differ;
            out.notes.push(
                "inspect: the guest has no static hugepfn (build it with the probe: cargo build --release -p hugepfn-probe -p hugepfn --target <the guest's triple>, +crt-static; `hugepfn lab setup` does)"
                    .into(),
            );
            return;
        }
        Some(j) => j,
    };
    let rep: crate::inspect::InspectReport = match serde_json::from_str(json) {
        Ok(r) => r,
        Err(e) => {
            out.verdict = Verdict::Differ;
            out.notes
                .push(format!("inspect: unreadable answer ({e}): {json}"));
            return;
        }
    };
    let mut checked = 0;
    for (i, step) in s.sc.steps.iter().enumerate() {
        let Step::Touch(t) = step else { continue };
        if t.offset != 0 || t.len != Len::All || t.process.is_some() {
            continue;
        }
        let Some((j, Step::Mmap(m))) =
            s.sc.steps
                .iter()
                .enumerate()
                .find(|(_, st)| matches!(st, Step::Mmap(m) if m.name == t.map))
        else {
            continue;
        };
        // a mapping the kernel refused (a 4 KiB offset with 16 KiB pages) is not there to
        // inspect: the mmap step's own comparison covers it
        if kernel.steps.get(j).is_some_and(|k| k.errno.is_some()) {
            continue;
        }
        let bar_size =
            s.sc.devices
                .iter()
                .find(|d| d.name == m.device)
                .and_then(|d| d.bar(m.bar))
                .map_or(0, |b| b.size);
        let len = m
            .len
            .resolve(bar_size.saturating_sub(m.offset))
            .next_multiple_of(rep.arch.page_size());
        let measured = kernel.steps.get(i).map(|k| k.counters.faults);
        let found = rep.mappings.iter().find(|b| {
            b.region == u64::from(m.bar) && b.bar_offset == m.offset && b.end - b.start == len
        });
        let label = format!("inspect {} ({})", t.map, m.va);
        checked += 1;
        match (found.and_then(|b| b.prediction.as_ref()), measured) {
            (Some(p), Some(k)) => {
                let same = p.faults == k;
                if !same {
                    out.verdict = Verdict::Differ;
                    out.notes.push(format!(
                        "{label}: inspect predicts {} faults, the probe measured {k}",
                        p.faults
                    ));
                }
                out.rows.push(row(
                    label,
                    p.faults.to_string(),
                    k.to_string(),
                    if same {
                        "same".into()
                    } else {
                        "DIFF (inspect)".into()
                    },
                ));
            }
            _ => {
                out.verdict = Verdict::Differ;
                out.notes.push(format!(
                    "{label}: inspect has no prediction for it ({} mappings seen: {})",
                    rep.mappings.len(),
                    rep.notes.join("; ")
                ));
                out.rows
                    .push(row(label, "-".into(), "-".into(), "DIFF (inspect)".into()));
            }
        }
    }
    out.notes.push(format!(
        "inspect: {checked} mappings checked, as Linux {} (modelled as {})",
        rep.running_kernel, rep.modelled_as
    ));
}

/// The model, running as the lab's kernel, says that kernel oopses at this step in a function
/// the oops names (a known crashing bug of that version, hugepfn-kernels).
fn predicted_crash(model: &RunReport, step: Option<&super::StepRef>, oops: &[String]) -> bool {
    let Some(st) = step else {
        return false;
    };
    model
        .steps
        .get(st.index)
        .and_then(|m| m.kernel_crash.as_deref())
        .is_some_and(|f| oops.iter().any(|l| l.contains(f)))
}

fn levels(s: &StepReport) -> String {
    s.counters
        .faults_by_level
        .map_or("-".into(), |l| format!("{}/{}/{}", l.pud, l.pmd, l.pte))
}

const HEAD: [&str; 7] = [
    "scenario",
    "step",
    "model faults",
    "pud/pmd/pte",
    "kernel faults",
    "SIGBUS m/k",
    "verdict",
];

fn cells(r: &Row) -> [&str; 7] {
    [
        &r.scenario,
        &r.step,
        &r.model_faults,
        &r.model_levels,
        &r.kernel_faults,
        &r.sigbus,
        &r.verdict,
    ]
}

/// The plain-text table.
pub fn text_table(rows: &[Row]) -> String {
    let mut w = HEAD.map(str::len);
    for r in rows {
        for (i, c) in cells(r).iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, c: [&str; 7]| {
        let mut l = String::new();
        for (i, x) in c.iter().enumerate() {
            // numbers right-aligned
            if (2..=5).contains(&i) {
                let _ = write!(l, "{x:>width$}  ", width = w[i]);
            } else {
                let _ = write!(l, "{x:<width$}  ", width = w[i]);
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&mut s, HEAD);
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    line(&mut s, std::array::from_fn(|i| sep[i].as_str()));
    for r in rows {
        line(&mut s, cells(r));
    }
    s
}

/// The Markdown report.
pub fn markdown(
    results: &[ScenarioCompare],
    source: &str,
    wall: f64,
    boots: &[super::guest::BootStat],
) -> String {
    let mut s = String::new();
    let count = |v: Verdict| results.iter().filter(|r| r.verdict == v).count();
    let _ = writeln!(s, "# hugepfn lab: model vs kernel\n");
    let _ = writeln!(s, "Kernel: {source}\n");
    let _ = writeln!(
        s,
        "{} scenarios: {} same, {} different, {} failed, {} known kernel crashes, {} skipped. Wall time {wall:.1} s{}.\n",
        results.len(),
        count(Verdict::Same),
        count(Verdict::Differ),
        count(Verdict::Failed),
        count(Verdict::KnownCrash),
        count(Verdict::Skipped),
        if boots.is_empty() {
            String::new()
        } else {
            format!(
                " ({} guest boots: {})",
                boots.len(),
                boots
                    .iter()
                    .map(|b| format!(
                        "{} BAR {} scenarios {:.1} s",
                        hugepfn_units::format_size(b.bar_size),
                        b.scenarios,
                        b.wall.as_secs_f64()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    let _ = writeln!(
        s,
        "Compared per step: faults (`ru_minflt` delta in the kernel), SIGBUS, SIGSEGV, skipped strides, errno. \
         `pud/pmd/pte` is the model's split of its faults; the kernel cannot tell levels.\n"
    );
    let _ = writeln!(s, "| {} |", HEAD.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(HEAD.len()));
    for r in results.iter().flat_map(|r| &r.rows) {
        let _ = writeln!(
            s,
            "| {} |",
            cells(r).map(|c| c.replace('|', "\\|")).join(" | ")
        );
    }
    let noted: Vec<&ScenarioCompare> = results.iter().filter(|r| !r.notes.is_empty()).collect();
    if !noted.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for r in noted {
            let _ = writeln!(s, "### {} ({:?})\n", r.path.display(), r.verdict);
            for n in &r.notes {
                if n.contains('\n') {
                    let (first, rest) = n.split_once('\n').unwrap_or((n, ""));
                    let _ = writeln!(
                        s,
                        "{first}\n\n```\n{}\n```\n",
                        rest.lines().map(str::trim).collect::<Vec<_>>().join("\n")
                    );
                } else {
                    let _ = writeln!(s, "- {n}");
                }
            }
            let _ = writeln!(s);
        }
    }
    s
}

fn reports_from_dir(scen: &[LabScenario], dir: &Path) -> Vec<KernelOutcome> {
    scen.iter()
        .map(|s| {
            let stem = s
                .path
                .file_stem()
                .map_or(String::new(), |x| x.to_string_lossy().into_owned());
            let p = dir.join(format!("{stem}.json"));
            match std::fs::read_to_string(&p) {
                Ok(text) => match serde_json::from_str::<RunReport>(&text) {
                    Ok(report) => KernelOutcome::Report {
                        report,
                        warnings: Vec::new(),
                        inspect: None,
                    },
                    Err(e) => KernelOutcome::ProbeFailed {
                        rc: -1,
                        messages: vec![format!("{}: not a report: {e}", p.display())],
                    },
                },
                Err(e) => KernelOutcome::ProbeFailed {
                    rc: -1,
                    messages: vec![format!("{}: {e}", p.display())],
                },
            }
        })
        .collect()
}

/// One kernel's comparison.
struct KernelColumn {
    kernel: super::LabKernel,
    source: String,
    results: Vec<ScenarioCompare>,
    wall: f64,
    boots: Vec<super::guest::BootStat>,
}

fn compare_kernel(
    scen: &[LabScenario],
    reports: Option<&Path>,
    known: &KnownCrashes,
    o: &LabOpts,
) -> Result<KernelColumn, LabError> {
    let t0 = Instant::now();
    let kernel = o.lab_kernel();
    let (outcomes, boots) = match reports {
        Some(dir) => (reports_from_dir(scen, dir), Vec::new()),
        None => {
            let (o, _, b) = kernel_outcomes(scen, o)?;
            (o, b)
        }
    };
    let source = outcomes
        .iter()
        .find_map(|o| match o {
            KernelOutcome::Report { report, .. } => Some(report.source.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("no kernel report ({})", kernel.name()));
    let opts = kernel.run_options();
    let results = scen
        .iter()
        .zip(&outcomes)
        .map(|(s, k)| compare_with_model(s, opts, k, known))
        .collect();
    Ok(KernelColumn {
        kernel,
        source,
        results,
        wall: t0.elapsed().as_secs_f64(),
        boots,
    })
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Same => "same",
        Verdict::Differ => "DIFFERENT",
        Verdict::Failed => "FAILED",
        Verdict::Skipped => "skipped",
        Verdict::KnownCrash => "known crash",
    }
}

/// One verdict column per kernel.
fn summary_table(scen: &[LabScenario], cols: &[KernelColumn]) -> String {
    let mut s = String::new();
    let name_w = scen
        .iter()
        .map(|x| x.sc.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = write!(s, "{:<name_w$}", "scenario");
    for c in cols {
        let _ = write!(s, "  {:<13}", c.kernel.name());
    }
    s.push('\n');
    for (i, sc) in scen.iter().enumerate() {
        let _ = write!(s, "{:<name_w$}", sc.sc.name);
        for c in cols {
            let v = c.results.get(i).map_or("-", |r| verdict_word(r.verdict));
            let _ = write!(s, "  {v:<13}");
        }
        s.push('\n');
    }
    s
}

pub(super) fn cmd_compare(
    files: &[PathBuf],
    reports: Option<&Path>,
    md_path: &Path,
    strict: bool,
    known_crashes: Option<&Path>,
    opts: &[LabOpts],
) -> Result<ExitCode, LabError> {
    let known = match known_crashes {
        Some(p) => load_known_crashes(p)?,
        None => Vec::new(),
    };
    let scen = load_all(&expand_files(files)?)?;
    let mut cols = Vec::new();
    for ko in opts {
        cols.push(compare_kernel(&scen, reports, &known, ko)?);
    }
    let mut bad = 0;
    let mut md = String::new();
    for c in &cols {
        let rows: Vec<Row> = c.results.iter().flat_map(|r| r.rows.clone()).collect();
        println!("== Linux {} ({})", c.kernel.name(), c.source);
        print!("{}", text_table(&rows));
        for r in &c.results {
            if r.verdict != Verdict::Same {
                for n in &r.notes {
                    println!("{}: {n}", r.path.display());
                }
            }
        }
        md.push_str(&markdown(&c.results, &c.source, c.wall, &c.boots));
        md.push('\n');
        let count = |v: Verdict| c.results.iter().filter(|r| r.verdict == v).count();
        let (diff, failed, skipped) = (
            count(Verdict::Differ),
            count(Verdict::Failed),
            count(Verdict::Skipped),
        );
        println!(
            "{} scenarios against {}: {} same, {diff} different, {failed} failed, {} known kernel crashes, {skipped} skipped ({:.1} s)",
            c.results.len(),
            c.source,
            count(Verdict::Same),
            count(Verdict::KnownCrash),
            c.wall
        );
        bad += diff + failed + if strict { skipped } else { 0 };
    }
    if cols.len() > 1 {
        let table = summary_table(&scen, &cols);
        println!("== verdict per kernel\n{table}");
        md.push_str(&format!("# Verdict per kernel\n\n```\n{table}```\n"));
    }
    if let Some(parent) = md_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| LabError::Io {
            what: format!("mkdir {}", parent.display()),
            source,
        })?;
    }
    std::fs::write(md_path, md).map_err(|source| LabError::Io {
        what: format!("write {}", md_path.display()),
        source,
    })?;
    println!("report: {}", md_path.display());
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::run_scenario;
    use hugepfn_kernels::Kernel;
    use hugepfn_scenario::fixture::bar2_head;
    use hugepfn_scenario::parse_scenario;

    /// Touch all of a 1 GiB-aligned 2 GiB mapping: 2 faults.
    fn scenario() -> LabScenario {
        let steps =
            "[[step]]\nop = \"touch\"\nmap = \"m\"\n[[step]]\nop = \"expect\"\nfaults = 2\n";
        let text = bar2_head("2G", "va = \"align:1G\"\n") + steps;
        LabScenario {
            path: "t.toml".into(),
            sc: parse_scenario(&text, "t.toml").expect("parses"),
        }
    }

    fn as_kernel(mut r: RunReport) -> RunReport {
        r.source = "kernel test".into();
        for s in &mut r.steps {
            s.counters.faults_by_level = None;
            s.leaves = None;
            s.page_table_pages = None;
        }
        r
    }

    /// Touch all of a 2 GiB mapping whose VA the kernel chooses.
    fn kernel_placed() -> LabScenario {
        let text = bar2_head("2G", "") + "[[step]]\nop = \"touch\"\nmap = \"m\"\n";
        LabScenario {
            path: "k.toml".into(),
            sc: parse_scenario(&text, "k.toml").expect("parses"),
        }
    }

    fn with_va(report: RunReport, va: u64, faults: u64) -> KernelOutcome {
        let mut report = as_kernel(report);
        report.steps[0].va = Some(VirtAddr::new_user(va).expect("user VA"));
        report.steps[1].counters.faults = faults;
        KernelOutcome::Report {
            report,
            warnings: vec![],
            inspect: None,
        }
    }

    #[test]
    fn a_kernel_chosen_va_is_an_aslr_draw_the_model_takes() {
        // 7.3.4: the model's own top-down VA is page-granular (524288 PTE faults); a kernel
        // that drew a 1 GiB-aligned VA took 2 PUD faults, and the model given the VA agrees
        let s = kernel_placed();
        let opts = RunOptions {
            kernel: Some(Kernel::V7_3_4),
            ..RunOptions::default()
        };
        let own = run_scenario(&s.sc, opts).expect("model");
        assert_eq!(own.steps[1].counters.faults, 524_288);
        assert!(own.steps[0].va.is_some_and(|v| !v.is_aligned(2 << 20)));
        let k = with_va(own.clone(), 0x7f80_0000_0000, 2);
        assert_eq!(
            compare_one(&s, Ok(own), &k, &vec![]).verdict,
            Verdict::Differ
        );
        let c = compare_with_model(&s, opts, &k, &vec![]);
        assert_eq!(c.verdict, Verdict::Same, "{:?}", c.notes);
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("the same offset modulo 1 GiB")),
            "{:?}",
            c.notes
        );
        // a draw 4 KiB past a 2 MiB boundary: every pfn is 4 KiB off its VA's boundary, PTEs
        let k = with_va(
            run_scenario(&s.sc, opts).expect("model"),
            0x7f80_0020_1000,
            0,
        );
        let (m, _) = model_for(&s, opts, &k);
        let m = m.expect("model");
        assert_eq!(
            m.steps[0].va.map(|v| v.as_u64() % (1 << 30)),
            Some(0x20_1000)
        );
        assert_eq!(m.steps[1].counters.faults, 524_288);
    }

    #[test]
    fn a_kernel_va_that_breaks_6_12s_thp_alignment_is_refused() {
        // 6.12.95 THP-aligns a file mapping: its VA is congruent with the offset (0) modulo
        // 2 MiB, a prediction; a kernel VA 4 KiB off it is not taken, and the faults differ
        let s = kernel_placed();
        let opts = RunOptions {
            kernel: Some(Kernel::V6_12_95),
            ..RunOptions::default()
        };
        let own = run_scenario(&s.sc, opts).expect("model");
        assert!(own.steps[0].va.is_some_and(|v| v.is_aligned(2 << 20)));
        let pmd = own.steps[1].counters.faults;
        let k = with_va(own, 0x7f80_0000_1000, 524_288);
        let c = compare_with_model(&s, opts, &k, &vec![]);
        assert_eq!(c.verdict, Verdict::Differ);
        assert!(
            c.notes.iter().any(|n| n.contains("keeps its own choice")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains(&format!("faults model {pmd} kernel 524288")))
        );
        // a VA congruent with the offset is taken
        let k = with_va(
            run_scenario(&s.sc, opts).expect("model"),
            0x7f80_0020_0000,
            pmd,
        );
        assert_eq!(
            compare_with_model(&s, opts, &k, &vec![]).verdict,
            Verdict::Same
        );
    }

    #[test]
    fn identical_counts_are_the_same() {
        let s = scenario();
        let model = run_scenario(&s.sc, RunOptions::default()).expect("model");
        let k = KernelOutcome::Report {
            report: as_kernel(model.clone()),
            warnings: vec![],
            inspect: None,
        };
        let c = compare_one(&s, Ok(model), &k, &vec![]);
        assert_eq!(c.verdict, Verdict::Same);
        assert_eq!(c.rows.len(), 2); // mmap, touch; not expect
        assert_eq!(c.rows[1].model_levels, "2/0/0");
        assert!(text_table(&c.rows).contains("same"));
    }

    #[test]
    fn a_different_count_is_a_difference() {
        let s = scenario();
        let model = run_scenario(&s.sc, RunOptions::default()).expect("model");
        let mut kr = as_kernel(model.clone());
        kr.steps[1].counters.faults = 1024;
        kr.steps[0].errno = Some("EINVAL".into());
        let k = KernelOutcome::Report {
            report: kr,
            warnings: vec!["BAR elsewhere".into()],
            inspect: None,
        };
        let c = compare_one(&s, Ok(model), &k, &vec![]);
        assert_eq!(c.verdict, Verdict::Differ);
        assert!(c.rows[1].verdict.starts_with("DIFF (faults"));
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("faults model 2 kernel 1024"))
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("errno model none kernel EINVAL"))
        );
        let md = markdown(&[c], "kernel test", 1.0, &[]);
        assert!(
            md.contains("| t | 2 touch (l.11) | 2 | 2/0/0 | 1024 | 0 / 0 | DIFF (faults) |"),
            "{md}"
        );
    }

    #[test]
    fn a_crash_names_the_step() {
        let s = scenario();
        let model = run_scenario(&s.sc, RunOptions::default()).expect("model");
        let k = KernelOutcome::Crash {
            step: Some(super::super::StepRef {
                index: 1,
                line: 14,
                op: "touch".into(),
            }),
            oops: vec!["BUG: x".into(), "Kernel panic".into()],
        };
        let c = compare_one(&s, Ok(model.clone()), &k, &vec![]);
        assert_eq!(c.verdict, Verdict::Failed);
        assert_eq!(c.rows[0].verdict, "KERNEL CRASH");
        assert_eq!(c.rows[0].step, "2 touch (l.14)");
        assert!(c.notes[0].contains("BUG: x"));
        // on record: a known crash, but only with the right function in the oops
        let known = vec![("t".to_string(), "BUG: x".to_string())];
        let c = compare_one(&s, Ok(model.clone()), &k, &known);
        assert_eq!(c.verdict, Verdict::KnownCrash);
        let other = vec![("t".to_string(), "__split_huge_pud".to_string())];
        assert_eq!(
            compare_one(&s, Ok(model), &k, &other).verdict,
            Verdict::Failed
        );
    }

    #[test]
    fn a_crash_the_model_predicts_for_that_kernel_is_known_without_an_entry() {
        let sc = parse_scenario(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../scenarios/vfio-munmap-4k-hole-in-pud.toml"),
            )
            .expect("reads"),
            "hole.toml",
        )
        .expect("parses");
        let s = LabScenario {
            path: "hole.toml".into(),
            sc,
        };
        let crash_at = |index: usize, f: &str| KernelOutcome::Crash {
            step: Some(super::super::StepRef {
                index,
                line: 24,
                op: "munmap".into(),
            }),
            oops: vec![format!(" {f}+0xbb/0x150"), "Kernel panic".into()],
        };
        let as_7_3_4 = RunOptions {
            kernel: Some(Kernel::V7_3_4),
            ..RunOptions::default()
        };
        let model = run_scenario(&s.sc, as_7_3_4).expect("model");
        let k = crash_at(2, "__split_huge_pmd");
        assert_eq!(
            compare_one(&s, Ok(model.clone()), &k, &vec![]).verdict,
            Verdict::KnownCrash
        );
        // another step, another function, or the corrected design: not predicted
        for (k, m) in [
            (crash_at(4, "__split_huge_pmd"), model.clone()),
            (crash_at(2, "zap_pud_range"), model.clone()),
            (
                crash_at(2, "__split_huge_pmd"),
                run_scenario(&s.sc, RunOptions::default()).expect("model"),
            ),
        ] {
            assert_eq!(compare_one(&s, Ok(m), &k, &vec![]).verdict, Verdict::Failed);
        }
    }
}
