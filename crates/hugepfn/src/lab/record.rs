//! `hugepfn lab record`: the kernel's measured counts become the scenario's expectations.
//!
//! For every `expect` step, the kernel's counters since the previous `expect` are written into
//! the TOML with `toml_edit`, so comments, order and layout stay as they were: `faults`,
//! `sigbus`, `sigsegv`, `skipped` when the step already checks them or the kernel saw some;
//! `errno` when the step checks it. Counters are per process: an `expect` with `process = P`
//! gets P's since P's previous `expect`. Checks only the model can make (`faults_by_level`,
//! `leaves`, IOMMU / EPT counts) are left alone. A scenario that crashed the kernel or could
//! not run is not touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hugepfn_scenario::{Counters, RunReport, Scenario, Step};
use toml_edit::{DocumentMut, Item, Table, Value};

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

/// Rewrites `text` (the file of `sc`) with the kernel's counts from `report`; returns the new
/// text and what changed.
pub fn record_text(
    text: &str,
    sc: &Scenario,
    report: &RunReport,
) -> Result<(String, Vec<Change>), String> {
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
        for (key, n, checked) in [
            ("faults", since.faults, e.expect.faults.is_some()),
            ("sigbus", since.sigbus, e.expect.sigbus.is_some()),
            ("sigsegv", since.sigsegv, e.expect.sigsegv.is_some()),
            ("skipped", since.skipped, e.expect.skipped.is_some()),
        ] {
            if checked || n > 0 {
                set(tbl, key, count(n), line, &mut changes);
            }
        }
        if e.expect.errno.is_some() {
            let v = last_errno.unwrap_or_else(|| "0".into());
            set(tbl, "errno", Value::from(v), line, &mut changes);
        }
    }
    Ok((doc.to_string(), changes))
}

fn record_file(path: &Path, sc: &Scenario, report: &RunReport) -> Result<Vec<Change>, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let (new, changes) = record_text(&text, sc, report)
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
    let scen = load_all(&expand_files(files)?)?;
    let (outcomes, _, _) = kernel_outcomes(&scen, o)?;
    let mut failed = 0;
    for (s, oc) in scen.iter().zip(&outcomes) {
        match oc {
            KernelOutcome::Report { report, warnings } => {
                for w in warnings {
                    eprintln!("lab: {}: warning: {w}", s.path.display());
                }
                let changes = record_file(&s.path, &s.sc, report)?;
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
    use hugepfn_scenario::parse_scenario;

    const SC: &str = r#"# a comment that must stay
name = "t"
[[device]]
name = "d"
bars = [{ index = 2, phys = "0xff00000000", size = "2G" }]

[[step]]
op = "mmap"
name = "m"
device = "d"
bar = 2
va = "kernel"    # kernel-chosen

[[step]]
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

    #[test]
    fn counts_are_written_and_comments_kept() {
        let sc = parse_scenario(SC, "t.toml").expect("parses");
        let model =
            crate::runner::run_scenario(&sc, crate::runner::RunOptions::default()).expect("model");
        let mut k = model.clone();
        k.source = "kernel test".into();
        k.steps[1].counters.faults = 1024;
        k.steps[1].counters.sigbus = 3;
        let (text, changes) = record_text(SC, &sc, &k).expect("records");
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
        let (text2, changes2) = record_text(&text, &again, &k).expect("records");
        assert!(changes2.is_empty());
        assert_eq!(text2, text);
    }

    const FORK: &str = r#"name = "f"
[[device]]
name = "d"
bars = [{ index = 2, phys = "0xff00000000", size = "2G" }]
[[step]]
op = "mmap"
name = "m"
device = "d"
bar = 2
[[step]]
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
        let sc = parse_scenario(FORK, "f.toml").expect("parses");
        let model =
            crate::runner::run_scenario(&sc, crate::runner::RunOptions::default()).expect("model");
        let mut k = model.clone();
        k.steps[1].counters.faults = 1024; // main's touch
        k.steps[4].counters.faults = 3; // the child's touch
        k.steps[4].counters.skipped = 7;
        let (text, _) = record_text(FORK, &sc, &k).expect("records");
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
