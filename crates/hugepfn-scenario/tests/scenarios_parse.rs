//! Every file in the repository's `scenarios/` directory must parse and validate.

use std::path::PathBuf;

use hugepfn_scenario::{Step, load_scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_file_parses() {
    let files = scenario_files();
    let errors: Vec<String> = files
        .iter()
        .filter_map(|p| load_scenario(p).err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "invalid scenario files:\n{}",
        errors.join("\n")
    );
    assert!(
        files.len() >= 29,
        "expected at least the 29 kernel-lab scenarios, found {}",
        files.len()
    );
}

/// The kernel-lab README's cases (`lab-*`, less the later `lab-dma-*`/`lab-fork-*`/`lab-proc-*`) follow one shape: mmap, touch, expect(faults, sigbus = 0), touch,
/// expect(faults = 0), and never expect what the kernel cannot measure.
#[test]
fn lab_scenarios_have_the_lab_shape() {
    let labs: Vec<PathBuf> = scenario_files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // The cases of the kernel-lab README; lab-dma-*, lab-fork-*, lab-proc-* and
                // lab-mremap-*, lab-inspect-* are later lab scenarios of other shapes.
                .is_some_and(|n| {
                    n.starts_with("lab-")
                        && !n.starts_with("lab-dma-")
                        && !n.starts_with("lab-fork-")
                        && !n.starts_with("lab-proc-")
                        && !n.starts_with("lab-mremap-")
                        && !n.starts_with("lab-inspect-")
                })
        })
        .collect();
    assert!(
        labs.len() >= 29,
        "13 + 9 + 7 lab cases, then the kernel-version ones"
    );
    for p in &labs {
        let s = load_scenario(p).unwrap_or_else(|e| panic!("{e}"));
        let stem = p.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(s.name, stem, "{}: name = file name", p.display());
        let ops: Vec<&str> = s.steps.iter().map(Step::op).collect();
        assert_eq!(
            ops,
            ["mmap", "touch", "expect", "touch", "expect"],
            "{}",
            p.display()
        );
        let expects: Vec<_> = s
            .steps
            .iter()
            .filter_map(|st| match st {
                Step::Expect(e) => Some(e.expect),
                _ => None,
            })
            .collect();
        assert!(expects[0].faults.is_some_and(|f| f > 0), "{}", p.display());
        assert_eq!(expects[0].sigbus, Some(0), "{}", p.display());
        assert_eq!(expects[1].faults, Some(0), "{}", p.display());
        for e in &expects {
            assert!(
                e.faults_by_level.is_none() && e.leaves.is_none(),
                "{}: the kernel cannot measure levels",
                p.display()
            );
        }
        let dev = s.device("ivshmem").expect("ivshmem device");
        let bar = dev.bar(2).expect("BAR 2");
        assert!(
            (bar.phys, bar.size) == (0xff_0000_0000, 2 << 30)
                || (bar.phys, bar.size) == (0xfe_0000_0000, 4 << 30),
            "{}",
            p.display()
        );
    }
}
