//! `hugepfn lab record`: the kernel's measured counts become the scenario's expectations.
//!
//! For every `expect` step, the kernel's counters since the previous `expect` are written into
//! the TOML with `toml_edit`, so comments, order and layout stay as they were: `faults`,
//! `sigbus`, `sigsegv`, `skipped`, `resident` when the step already checks them or the kernel
//! saw some;
//! `errno` when the step checks it. Counters are per process: an `expect` with `process = P`
//! gets P's since P's previous `expect`. Checks only the model can make (`faults_by_level`,
//! `leaves`, IOMMU / EPT counts) are left alone. A scenario that crashed the kernel or could
//! not run is not touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hugepfn_kernels::{Behaviour, Kernel};
use hugepfn_scenario::{Counters, RunReport, Scenario, Step};
use hugepfn_units::arch::Arch;
use toml_edit::{DocumentMut, InlineTable, Item, Table, Value};

use super::{KernelOutcome, LabError, LabOpts, expand_files, kernel_outcomes, load_all};

/// One value written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Line of the `expect` step.
    pub line: usize,
    /// Key.
    pub key: &'static str,
    /// Old value (`None` = absent).
    pub old: Option<String>,
    /// New value.
    pub new: String,
}

/// The value as written, without its surrounding whitespace and comment.
fn bare(v: &Value) -> String {
    let mut c = v.clone();
    c.decor_mut().clear();
    c.to_string().trim().to_string()
}

fn set(tbl: &mut Table, key: &'static str, new: Value, line: usize, changes: &mut Vec<Change>) {
    let new_text = bare(&new);
    match tbl.get_mut(key) {
        Some(Item::Value(v)) => {
            let old_text = bare(v);
            if old_text == new_text {
                return;
            }
            let decor = v.decor().clone();
            *v = new;
            *v.decor_mut() = decor;
            changes.push(Change {
                line,
                key,
                old: Some(old_text),
                new: new_text,
            });
        }
        _ => {
            tbl.insert(key, Item::Value(new));
            changes.push(Change {
                line,
                key,
                old: None,
                new: new_text,
            });
        }
    }
}

fn count(n: u64) -> Value {
    Value::from(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The step's `on_kernel."K"` inline table, created (dotted) if absent.
fn override_table<'t>(tbl: &'t mut Table, kernel: &str) -> Option<&'t mut InlineTable> {
    let on = tbl.entry("on_kernel").or_insert_with(|| {
        let mut t = Table::new();
        t.set_dotted(true);
        Item::Table(t)
    });
    let on = on.as_table_like_mut()?;
    if on.get(kernel).is_none() {
        on.insert(kernel, Item::Value(Value::InlineTable(InlineTable::new())));
    }
    on.get_mut(kernel)?.as_inline_table_mut()
}

/// Writes `key = new` into `on_kernel."K"` of the step where it differs from the base check
/// `base` (as text), and removes it there where it is the same; empty tables go.
fn set_override(
    tbl: &mut Table,
    kernel: &str,
    key: &'static str,
    new: Value,
    base: Option<String>,
    line: usize,
    changes: &mut Vec<Change>,
) {
    let new_text = bare(&new);
    let Some(over) = override_table(tbl, kernel) else {
        return;
    };
    let old = over.get(key).map(bare);
    if base.as_deref() == Some(new_text.as_str()) {
        if old.is_some() {
            over.remove(key);
            changes.push(Change {
                line,
                key,
                old,
                new: format!("(as the base, on_kernel.\"{kernel}\" entry removed)"),
            });
        }
    } else if old.as_deref() != Some(new_text.as_str()) {
        over.insert(key, new);
        changes.push(Change {
            line,
            key,
            old,
            new: format!("{new_text} (on_kernel.\"{kernel}\")"),
        });
    }
    // drop what is empty now
    if let Some(on) = tbl.get_mut("on_kernel").and_then(Item::as_table_like_mut) {
        if on
            .get(kernel)
            .and_then(Item::as_inline_table)
            .is_some_and(|t| t.is_empty())
        {
            on.remove(kernel);
        }
        if on.is_empty() {
            tbl.remove("on_kernel");
        }
    }
}

/// Rewrites `text` (the file of `sc`) with the kernel's counts from `report`; returns the new
/// text and what changed. `kernel` is the kernel that measured them: the scenario's own
/// (`kernel`, else 6.12.95, the corrected design's base) writes the checks themselves; another
/// writes `on_kernel."K"` entries where its counts differ from them (and removes those that no
/// longer do). A kernel of `foreign`, an architecture other than the scenario's own, writes
/// `on_kernel."ARCH:K"` entries where its counts differ from the checks that hold for `K` on
/// the scenario's own architecture.
pub fn record_text(
    text: &str,
    sc: &Scenario,
    report: &RunReport,
    kernel: Kernel,
    foreign: Option<Arch>,
) -> Result<(String, Vec<Change>), String> {
    let base_kernel = match foreign {
        // never the base checks: they are the scenario's own architecture's
        Some(_) => None,
        None => Some(sc.kernel.unwrap_or(Behaviour::CORRECTED_BASE)),
    };
    let key_name = match foreign {
        Some(a) => format!("{a}:{}", kernel.name()),
        None => kernel.name().to_string(),
    };
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("TOML: {e}"))?;
    let steps = doc
        .get_mut("step")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("no [[step]] tables")?;
    if steps.len() != sc.steps.len() || report.steps.len() != sc.steps.len() {
        return Err(format!(
            "{} [[step]] tables, {} steps parsed, {} in the kernel report",
            steps.len(),
            sc.steps.len(),
            report.steps.len()
        ));
    }
    let mut changes = Vec::new();
    // Per process, as the model and the probe count: an `expect` with `process = P` checks
    // P's counters and last errno since P's previous `expect`.
    let mut since: HashMap<&str, Counters> = HashMap::new();
    let mut last_errno: HashMap<&str, String> = HashMap::new();
    for (i, step) in sc.steps.iter().enumerate() {
        let proc = step.process_or_main();
        let k = &report.steps[i];
        if k.op != step.op() {
            return Err(format!(
                "step {}: the report has `{}`, the file `{}`",
                i + 1,
                k.op,
                step.op()
            ));
        }
        let Step::Expect(e) = step else {
            since
                .entry(proc)
                .or_insert_with(|| Counters::zero(false))
                .add(&k.counters);
            if let Some(err) = &k.errno {
                last_errno.insert(proc, err.clone());
            }
            continue;
        };
        let since = since.remove(proc).unwrap_or_else(|| Counters::zero(false));
        let last_errno = last_errno.remove(proc);
        let Some(tbl) = steps.get_mut(i) else {
            return Err(format!("step {}: no table", i + 1));
        };
        let line = e.line;
        let x = &match foreign {
            Some(_) => e.spec_for(Some(kernel)),
            None => e.expect,
        };
        let text = |v: Option<u64>| v.map(|n| n.to_string());
        for (key, n, base) in [
            ("faults", since.faults, text(x.faults)),
            ("sigbus", since.sigbus, text(x.sigbus)),
            ("sigsegv", since.sigsegv, text(x.sigsegv)),
            ("skipped", since.skipped, text(x.skipped)),
            ("resident", since.resident, text(x.resident)),
        ] {
            if base.is_none() && n == 0 {
                continue;
            }
            if Some(kernel) == base_kernel {
                set(tbl, key, count(n), line, &mut changes);
            } else {
                set_override(tbl, &key_name, key, count(n), base, line, &mut changes);
            }
        }
        if let Some(base) = x.errno {
            let v = Value::from(last_errno.unwrap_or_else(|| "0".into()));
            if Some(kernel) == base_kernel {
                set(tbl, "errno", v, line, &mut changes);
            } else {
                let base = Some(bare(&Value::from(base.to_string())));
                set_override(tbl, &key_name, "errno", v, base, line, &mut changes);
            }
        }
    }
    Ok((doc.to_string(), changes))
}

fn record_file(
    path: &Path,
    sc: &Scenario,
    report: &RunReport,
    kernel: Kernel,
    foreign: Option<Arch>,
) -> Result<Vec<Change>, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let (new, changes) = record_text(&text, sc, report, kernel, foreign)
        .map_err(|e| LabError::Input(format!("{}: {e}", path.display())))?;
    if !changes.is_empty() {
        std::fs::write(path, new).map_err(|source| LabError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
    }
    Ok(changes)
}

pub(super) fn cmd_record(files: &[PathBuf], o: &LabOpts) -> Result<ExitCode, LabError> {
    // an arm64 kernel's counts go into the arm64 scenarios as theirs, into the others as
    // `on_kernel."arm64:K"` entries
    let (kernel, arch) = match o.lab_kernel() {
        super::LabKernel::Debian(k) => (k, None),
        super::LabKernel::Arm64(k) => (k, Some(Arch::Arm64)),
        super::LabKernel::Arm64_16k(k) => (k, Some(Arch::Arm64_16k)),
        other => {
            return Err(LabError::Input(format!(
                "record writes what a released kernel measures; {} is our build (compare it instead)",
                other.name()
            )));
        }
    };
    let scen = load_all(&expand_files(files)?)?;
    let (outcomes, _, _) = kernel_outcomes(&scen, o)?;
    let mut failed = 0;
    for (s, oc) in scen.iter().zip(&outcomes) {
        match oc {
            KernelOutcome::Report {
                report, warnings, ..
            } => {
                super::warn_each(&s.path, warnings);
                let foreign = arch.filter(|a| *a != s.sc.arch);
                let changes = record_file(&s.path, &s.sc, report, kernel, foreign)?;
                if changes.is_empty() {
                    println!("{}: unchanged ({})", s.path.display(), report.source);
                }
                for c in changes {
                    println!(
                        "{}:{}: {} {} -> {} ({})",
                        s.path.display(),
                        c.line,
                        c.key,
                        c.old.as_deref().unwrap_or("(absent)"),
                        c.new,
                        report.source
                    );
                }
            }
            other => {
                failed += 1;
                let msg = super::describe_failure(other).unwrap_or_default();
                eprintln!("lab: {}: not recorded: {msg}", s.path.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepfn_scenario::fixture::bar2_head;
    use hugepfn_scenario::parse_scenario;

    /// [`bar2_head`] under a comment, then touch, expect, touch, expect, with comments and blank
    /// lines that recording must keep (the first `expect` is at line 18).
    fn sc_text() -> String {
        format!(
            "# a comment that must stay\n\n{}\n{SC_STEPS}",
            bar2_head("2G", "va = \"kernel\"    # kernel-chosen\n")
        )
    }

    const SC_STEPS: &str = r#"[[step]]
op = "touch"
map = "m"

[[step]]
op = "expect"     # the first pass
faults = 2        # was predicted
leaves = { pud = 2 }

[[step]]
op = "touch"
map = "m"

[[step]]
op = "expect"
faults = 0
"#;

    /// The test scenario with 7.3.4's count recorded (524,288 faults: 4 KiB at the kernel's
    /// VA, where the model predicts 2): the text, the changes, and the kernel's report.
    fn recorded_7_3_4() -> (String, Vec<Change>, RunReport) {
        let text = sc_text();
        let sc = parse_scenario(&text, "t.toml").expect("parses");
        let model =
            crate::runner::run_scenario(&sc, crate::runner::RunOptions::default()).expect("model");
        let mut k = model.clone();
        k.steps[1].counters.faults = 524288;
        let (text, changes) = record_text(&text, &sc, &k, Kernel::V7_3_4, None).expect("records");
        assert!(
            text.contains("on_kernel.\"7.3.4\" = { faults = 524288 }"),
            "{text}"
        );
        assert!(
            text.contains("faults = 2        # was predicted"),
            "base kept: {text}"
        );
        (text, changes, k)
    }

    #[test]
    fn another_kernel_writes_on_kernel_entries_where_it_differs_only() {
        let (text, changes, mut k) = recorded_7_3_4();
        assert_eq!(changes.len(), 1, "{changes:?}");
        let again = parse_scenario(&text, "t.toml").expect("still parses");
        let Step::Expect(e) = &again.steps[2] else {
            panic!("expect")
        };
        assert_eq!(e.spec_for(Some(Kernel::V7_3_4)).faults, Some(524288));
        assert_eq!(e.spec_for(Some(Kernel::V6_12_117)).faults, Some(2));
        assert_eq!(
            e.spec_for(None).faults,
            Some(2),
            "the corrected design: the base"
        );
        // the kernel now agrees with the base: the entry goes
        k.steps[1].counters.faults = 2;
        let (text2, changes2) =
            record_text(&text, &again, &k, Kernel::V7_3_4, None).expect("records");
        assert!(!text2.contains("on_kernel"), "{text2}");
        assert_eq!(changes2.len(), 1, "{changes2:?}");
    }

    #[test]
    fn another_architecture_writes_arch_kernel_entries_over_that_kernels_checks() {
        // 7.3.4 on x86-64 first, then arm64's 7.3.4: 1024 PMD faults where x86 takes 524288
        let (text, _, mut k) = recorded_7_3_4();
        let sc = parse_scenario(&text, "t.toml").expect("parses");
        k.steps[1].counters.faults = 1024;
        let (text, changes) =
            record_text(&text, &sc, &k, Kernel::V7_3_4, Some(Arch::Arm64)).expect("records");
        assert!(
            text.contains("on_kernel.\"arm64:7.3.4\" = { faults = 1024 }"),
            "{text}"
        );
        assert!(
            text.contains("faults = 2        # was predicted"),
            "base kept: {text}"
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        let again = parse_scenario(&text, "t.toml").expect("still parses");
        let Step::Expect(e) = &again.steps[2] else {
            panic!("expect")
        };
        let k7 = Some(Kernel::V7_3_4);
        assert_eq!(e.spec_on(Some(Arch::Arm64), k7).faults, Some(1024));
        assert_eq!(e.spec_on(None, k7).faults, Some(524288));
        assert_eq!(
            e.spec_on(Some(Arch::Arm64), Some(Kernel::V6_12_117)).faults,
            Some(2)
        );
        // the second touch agrees with 7.3.4's checks: nothing written for it
        assert!(
            !text.contains("on_kernel.\"arm64:7.3.4\" = { faults = 0 }"),
            "{text}"
        );
    }

    #[test]
    fn counts_are_written_and_comments_kept() {
        let text = sc_text();
        let sc = parse_scenario(&text, "t.toml").expect("parses");
        let model =
            crate::runner::run_scenario(&sc, crate::runner::RunOptions::default()).expect("model");
        let mut k = model.clone();
        k.source = "kernel test".into();
        k.steps[1].counters.faults = 1024;
        k.steps[1].counters.sigbus = 3;
        let (text, changes) = record_text(&text, &sc, &k, Kernel::V6_12_95, None).expect("records");
        assert!(text.contains("# a comment that must stay"));
        assert!(
            text.contains("faults = 1024        # was predicted"),
            "{text}"
        );
        assert!(text.contains("leaves = { pud = 2 }"));
        assert!(text.contains("sigbus = 3"));
        assert_eq!(
            changes,
            vec![
                Change {
                    line: 18,
                    key: "faults",
                    old: Some("2".into()),
                    new: "1024".into()
                },
                Change {
                    line: 18,
                    key: "sigbus",
                    old: None,
                    new: "3".into()
                },
            ]
        );
        // the result parses back to the recorded numbers
        let again = parse_scenario(&text, "t.toml").expect("parses");
        let Step::Expect(e) = &again.steps[2] else {
            panic!("expect")
        };
        assert_eq!(e.expect.faults, Some(1024));
        // recording the same numbers again changes nothing
        let (text2, changes2) =
            record_text(&text, &again, &k, Kernel::V6_12_95, None).expect("records");
        assert!(changes2.is_empty());
        assert_eq!(text2, text);
    }

    /// After [`bar2_head`]: main touches, forks `c1`, `c1` unmaps the second GiB and touches.
    const FORK_STEPS: &str = r#"[[step]]
op = "touch"
map = "m"
[[step]]
op = "fork"
child = "c1"
[[step]]
op = "munmap"
process = "c1"
map = "m"
offset = "1G"
[[step]]
op = "touch"
process = "c1"
map = "m"
[[step]]
op = "expect"
process = "c1"
faults = 9
errno = "EINVAL"
[[step]]
op = "expect"
faults = 9
errno = "EINVAL"
"#;

    #[test]
    fn expects_get_their_own_process_counts() {
        let fork = bar2_head("2G", "") + FORK_STEPS;
        let sc = parse_scenario(&fork, "f.toml").expect("parses");
        let model =
            crate::runner::run_scenario(&sc, crate::runner::RunOptions::default()).expect("model");
        let mut k = model.clone();
        k.steps[1].counters.faults = 1024; // main's touch
        k.steps[4].counters.faults = 3; // the child's touch
        k.steps[4].counters.skipped = 7;
        let (text, _) = record_text(&fork, &sc, &k, Kernel::V6_12_95, None).expect("records");
        let again = parse_scenario(&text, "f.toml").expect("parses");
        let (Step::Expect(child), Step::Expect(main)) = (&again.steps[5], &again.steps[6]) else {
            panic!("expects")
        };
        assert_eq!(
            (child.expect.faults, child.expect.skipped),
            (Some(3), Some(7))
        );
        assert_eq!(child.expect.errno.map(|e| e.as_str()), Some("0"));
        assert_eq!(
            (main.expect.faults, main.expect.skipped),
            (Some(1024), None)
        );
        assert_eq!(main.expect.errno.map(|e| e.as_str()), Some("0"));
    }
}
