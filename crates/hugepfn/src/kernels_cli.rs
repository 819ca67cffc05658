//! `hugepfn kernels`: the version table of hugepfn-kernels — every change and known bug, with
//! its commit, and whether each modelled kernel (and the corrected design) has it. The same
//! Markdown is in docs/kernels.md (a test keeps the two equal).

use std::fmt::Write as _;

use hugepfn_kernels::{BUGS, Behaviour, CHANGES, Kernel, Version};
use serde::Serialize;

/// One change, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    /// Key.
    pub key: &'static str,
    /// Commit and subject.
    pub commit: &'static str,
    /// Subject.
    pub subject: &'static str,
    /// First mainline release ("-" if none).
    pub mainline: String,
    /// Stable backports ("6.12.29").
    pub stable: Vec<String>,
    /// What it does.
    pub effect: &'static str,
    /// Where it was read.
    pub source: &'static str,
    /// The lab scenario that shows it.
    pub lab: &'static str,
    /// Per modelled kernel (then "corrected"): in effect or not.
    pub present: Vec<(String, bool)>,
}

/// One known bug, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct BugRow {
    /// Key.
    pub key: &'static str,
    /// Origin.
    pub introduced_by: &'static str,
    /// The function an oops names.
    pub crash_function: Option<&'static str>,
    /// What happens.
    pub effect: &'static str,
    /// How it was found.
    pub evidence: &'static str,
    /// Per modelled kernel (then "corrected"): present or not.
    pub present: Vec<(String, bool)>,
}

/// The whole table.
#[derive(Debug, Clone, Serialize)]
pub struct KernelTable {
    /// Changes.
    pub changes: Vec<ChangeRow>,
    /// Bugs.
    pub bugs: Vec<BugRow>,
}

fn columns() -> Vec<(String, Behaviour)> {
    let mut v: Vec<(String, Behaviour)> = Kernel::ALL
        .iter()
        .map(|k| (k.name().to_string(), Behaviour::of(*k)))
        .collect();
    v.push(("corrected".into(), Behaviour::CORRECTED));
    v
}

fn release(v: Version) -> String {
    if v.major == u16::MAX {
        "-".into()
    } else {
        v.to_string()
    }
}

/// Builds the table from hugepfn-kernels.
pub fn table() -> KernelTable {
    let cols = columns();
    KernelTable {
        changes: CHANGES
            .iter()
            .map(|c| ChangeRow {
                key: c.key,
                commit: c.commit,
                subject: c.subject,
                mainline: release(c.mainline),
                stable: c.stable.iter().map(|v| v.to_string()).collect(),
                effect: c.effect,
                source: c.source,
                lab: c.lab,
                present: cols
                    .iter()
                    .map(|(n, b)| (n.clone(), b.has(c.change)))
                    .collect(),
            })
            .collect(),
        bugs: BUGS
            .iter()
            .map(|b| BugRow {
                key: b.key,
                introduced_by: b.introduced_by,
                crash_function: b.crash_function,
                effect: b.effect,
                evidence: b.evidence,
                present: cols
                    .iter()
                    .map(|(n, beh)| (n.clone(), beh.has_bug(b.bug)))
                    .collect(),
            })
            .collect(),
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The Markdown tables (what docs/kernels.md shows).
pub fn markdown(t: &KernelTable) -> String {
    let mut s = String::new();
    let names: Vec<String> = columns().into_iter().map(|(n, _)| n).collect();
    let _ = writeln!(s, "### Changes\n");
    let _ = writeln!(
        s,
        "| change | commit | mainline | stable | {} |",
        names.join(" | ")
    );
    let _ = writeln!(s, "|---|---|---|---|{}", "---|".repeat(names.len()));
    for c in &t.changes {
        let commit = if c.commit.is_empty() {
            c.subject.to_string()
        } else {
            format!("{} \"{}\"", c.commit, c.subject)
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            c.key,
            commit,
            c.mainline,
            if c.stable.is_empty() {
                "-".into()
            } else {
                c.stable.join(", ")
            },
            c.present
                .iter()
                .map(|(_, p)| yes(*p))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(s);
    for c in &t.changes {
        let _ = writeln!(
            s,
            "- `{}`: {}. Read in {}. Lab: {}.",
            c.key, c.effect, c.source, c.lab
        );
    }
    let _ = writeln!(s, "\n### Known bugs\n");
    let _ = writeln!(s, "| bug | crash | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(names.len()));
    for b in &t.bugs {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} |",
            b.key,
            b.crash_function
                .map_or("no".to_string(), |f| format!("oops in `{f}`")),
            b.present
                .iter()
                .map(|(_, p)| yes(*p))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(s);
    for b in &t.bugs {
        let _ = writeln!(
            s,
            "- `{}`: {}. Origin: {}. Evidence: {}.",
            b.key, b.effect, b.introduced_by, b.evidence
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_kernels_md_holds_the_table_the_code_prints() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kernels.md"),
        )
        .expect("docs/kernels.md");
        let md = markdown(&table());
        assert!(
            doc.contains(&md),
            "docs/kernels.md is out of date: paste the output of `hugepfn kernels --markdown`:\n{md}"
        );
    }

    #[test]
    fn the_lab_kernels_differ_where_the_lab_saw_them_differ() {
        let t = table();
        let row = |key: &str| {
            t.changes
                .iter()
                .find(|c| c.key == key)
                .map(|c| c.present.clone())
                .expect("row")
        };
        let at = |p: &[(String, bool)], k: &str| p.iter().find(|(n, _)| n == k).map(|x| x.1);
        let thp = row("thp_sysfs_ignored_for_pfnmap");
        assert_eq!(at(&thp, "6.12.95"), Some(false));
        assert_eq!(at(&thp, "6.12.117"), Some(true));
        assert_eq!(at(&thp, "7.3.4"), Some(true));
        assert_eq!(at(&thp, "corrected"), Some(false));
        let align = row("no_thp_align_for_file_mappings");
        assert_eq!(at(&align, "6.12.117"), Some(false));
        assert_eq!(at(&align, "7.3.4"), Some(true));
    }
}
