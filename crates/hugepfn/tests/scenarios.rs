//! Every scenario in `scenarios/` runs on the model and meets its expectations (the lab ones
//! hold the real kernel's measured fault counts).

use std::path::PathBuf;

use hugepfn::output::format_report;
use hugepfn::runner::{RunOptions, run_scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_meets_its_expectations() {
    let files = scenario_files();
    assert!(files.len() >= 29, "only {} scenarios", files.len());
    let mut failed = Vec::new();
    for f in &files {
        let sc = hugepfn_scenario::load_scenario(f).expect("parses");
        let r = run_scenario(&sc, RunOptions::default()).expect("runs");
        let expects = r.steps.iter().filter(|s| s.expect.is_some()).count();
        assert!(expects > 0, "{}: no expect step", f.display());
        if !r.ok {
            failed.push(format_report(&sc, &r));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
