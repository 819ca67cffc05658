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

/// Every scenario also runs as each kernel the lab boots (`--kernel`), meeting the checks its
/// `on_kernel` entries give for that kernel (recorded by `hugepfn lab record --kernel`). The
/// model-only 6.12.0 / 6.13.0 (the buggy huge-fault handlers) are shown by the vfio tests.
#[test]
fn every_scenario_meets_its_expectations_as_every_lab_kernel() {
    let files = scenario_files();
    let mut failed = Vec::new();
    for kernel in hugepfn_kernels::Kernel::LAB {
        for f in &files {
            let sc = hugepfn_scenario::load_scenario(f).expect("parses");
            let opts = RunOptions {
                kernel: Some(kernel),
                ..RunOptions::default()
            };
            let r = run_scenario(&sc, opts).expect("runs");
            assert_eq!(r.kernel.as_deref(), Some(kernel.name()));
            if !r.ok {
                failed.push(format!("as {kernel}:\n{}", format_report(&sc, &r)));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Every scenario the arm64 lab runs (`hugepfn lab --arch arm64`: the arm64 ones, and the
/// x86-64 ones as arm64) meets, as each arm64 kernel the lab boots, the checks recorded there
/// (`hugepfn lab record --arch arm64`: the arm64 scenarios' own, the others' `"arm64:K"`
/// entries). The model's arm64 predictions against the counts of Linux/arm64, without a boot.
#[test]
fn every_scenario_meets_its_arm64_expectations_as_every_arm64_lab_kernel() {
    use hugepfn::lab::{LabArch, lab_bar_size};
    use hugepfn_units::arch::Arch;
    let mut failed = Vec::new();
    let mut ran = 0;
    for kernel in hugepfn_kernels::Kernel::LAB {
        if kernel.debian_package_arm64().is_none() {
            continue;
        }
        for f in &scenario_files() {
            let sc = hugepfn_scenario::load_scenario(f).expect("parses");
            if lab_bar_size(&sc, 16 << 30, LabArch::Arm64).is_err() {
                continue;
            }
            let opts = RunOptions {
                kernel: Some(kernel),
                arch: Some(Arch::Arm64),
                ..RunOptions::default()
            };
            let r = run_scenario(&sc, opts).expect("runs");
            ran += 1;
            if !r.ok {
                failed.push(format!("as arm64 {kernel}:\n{}", format_report(&sc, &r)));
            }
        }
    }
    assert!(ran >= 2 * 60, "only {ran} arm64 runs");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// `--kernel corrected` on every scenario: the corrected design meets the checks (its
/// `on_kernel.corrected` entries where the file names a kernel), and no /proc reader or mincore
/// step zaps a leaf (issue: a read-only reader keeps every leaf it walks).
#[test]
fn every_scenario_meets_its_expectations_as_the_corrected_design() {
    let mut failed = Vec::new();
    for f in &scenario_files() {
        let sc = hugepfn_scenario::load_scenario(f).expect("parses");
        let opts = RunOptions {
            corrected: true,
            ..RunOptions::default()
        };
        let r = run_scenario(&sc, opts).expect("runs");
        assert_eq!(r.kernel, None);
        if !r.ok {
            failed.push(format_report(&sc, &r));
        }
        for s in &r.steps {
            if s.op == "read_proc" || s.op == "mincore" {
                let z = s.counters.leaves_zapped.expect("the model counts zaps");
                assert_eq!(
                    (z.pud, z.pmd, z.pte),
                    (0, 0, 0),
                    "{}: step {} zapped leaves",
                    f.display(),
                    s.index + 1
                );
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A kernel with the split-VMA-in-a-PUD oops says so at the step; the corrected design does not,
/// and both go on alike.
#[test]
fn regress_split_vma_in_pud_oops_is_reported_as_a_kernel_crash() {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios/vfio-munmap-4k-hole-in-pud.toml");
    let sc = hugepfn_scenario::load_scenario(&f).expect("parses");
    let fixed = run_scenario(&sc, RunOptions::default()).expect("runs");
    assert!(fixed.steps.iter().all(|s| s.kernel_crash.is_none()));
    for kernel in hugepfn_kernels::Kernel::LAB {
        let opts = RunOptions {
            kernel: Some(kernel),
            ..RunOptions::default()
        };
        let r = run_scenario(&sc, opts).expect("runs");
        let crashed: Vec<(usize, &str)> = r
            .steps
            .iter()
            .filter_map(|s| s.kernel_crash.as_deref().map(|f| (s.index, f)))
            .collect();
        assert_eq!(crashed, vec![(2, "__split_huge_pmd")], "{kernel}");
        let counts = |r: &hugepfn_scenario::RunReport| {
            r.steps
                .iter()
                .map(|s| s.counters.faults)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counts(&r),
            counts(&fixed),
            "{kernel}: goes on as the corrected design"
        );
    }
}

/// issue 17: mprotect, madvise and mremap of a mapping whose mmap failed report EINVAL (as
/// munmap and the probe do), not success.
#[test]
fn lifecycle_ops_on_a_failed_mmap_fail_with_einval() {
    let mut text = String::from(
        "name = \"t\"\n[[device]]\nname = \"d\"\nbars = [{ index = 2, phys = \"0xff00000000\", size = \"2G\" }]\n[[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 2\nshared = false\n[[step]]\nop = \"expect\"\nerrno = \"EINVAL\"\n",
    );
    for op in [
        "op = \"mprotect\"\nmap = \"m\"\nprot = \"read\"",
        "op = \"madvise\"\nmap = \"m\"\nadvice = \"hugepage\"",
        "op = \"mremap\"\nmap = \"m\"\nva = \"align:1G\"",
    ] {
        text.push_str(&format!(
            "[[step]]\n{op}\n[[step]]\nop = \"expect\"\nerrno = \"EINVAL\"\n"
        ));
    }
    let sc = hugepfn_scenario::parse_scenario(&text, "t.toml").expect("parses");
    let r = run_scenario(&sc, RunOptions::default()).expect("runs");
    assert!(r.ok, "{}", format_report(&sc, &r));
}
