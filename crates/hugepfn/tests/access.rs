//! The `access` op on the model runner: the walker reads the leaves the scenario's faults
//! installed, populating faults are the step's, counts are deterministic, the time estimate is
//! reported, and a revoked BAR makes every walk fault.

use hugepfn::runner::{RunOptions, run_scenario};
use hugepfn_scenario::fixture::{mmap_step, one_bar_device, step};
use hugepfn_scenario::{RunReport, StepReport, parse_scenario};

/// Runs these steps after device `d`, an 8 MiB BAR 2, mapped twice: `pmd` 1 GiB-aligned
/// (2 MiB leaves) and `pte` 4 KiB off that (4 KiB leaves).
fn run(steps: &[String]) -> RunReport {
    let text = format!(
        "name = \"access\"\n{}{}{}{}",
        one_bar_device("d", 2, "0xff00000000", "8M"),
        mmap_step("pmd", "d", 2, "va = \"align:1G\"\n"),
        mmap_step("pte", "d", 2, "va = \"align:1G+4K\"\n"),
        steps.concat()
    );
    let sc = parse_scenario(&text, "t.toml").expect("parses");
    run_scenario(&sc, RunOptions::default()).expect("runs")
}

/// An `access` step over all of `map`, in `pattern`, with `keys` (TOML lines, or nothing).
fn access(map: &str, pattern: &str, keys: &str) -> String {
    step(
        "access",
        &format!("map = \"{map}\"\npattern = \"{pattern}\"\n{keys}"),
    )
}

fn accesses(r: &RunReport) -> Vec<&StepReport> {
    r.steps.iter().filter(|s| s.op == "access").collect()
}

#[test]
fn access_walks_the_installed_leaves() {
    let r = run(&[
        access("pmd", "random", "count = 2000\n"),
        access("pte", "random", "count = 2000\n"),
        access("pte", "random", "count = 2000\nvm = \"4K\"\n"),
    ]);
    assert!(r.ok, "{r:?}");
    let a = accesses(&r);
    // Populated through the fault path first: 4 PMD faults, then 2048 PTE faults.
    assert_eq!(a[0].counters.faults, 4);
    assert_eq!(a[1].counters.faults, 2048);
    assert_eq!(a[2].counters.faults, 0);
    let (pmd, pte, vm) = (a[0].counters.tlb, a[1].counters.tlb, a[2].counters.tlb);
    for t in [pmd, pte, vm] {
        assert_eq!(t.loads, 2000);
        assert_eq!(t.walk_faults, 0);
        let l = t.walk_refs_by_level;
        assert_eq!(
            l.pgd + l.p4d + l.pud + l.pmd + l.pte,
            t.walk_refs - t.walk_refs_ept
        );
    }
    // Four 2 MiB leaves: four cold walks ending at the PMD level.
    assert_eq!(pmd.stlb_misses, 4);
    assert_eq!(pmd.walk_refs_by_level.pte, 0);
    assert_eq!(pmd.walk_refs_by_level.pmd, 4);
    // 2048 4 KiB leaves fit the STLB: each is walked once, to a PTE.
    assert_eq!(pte.stlb_misses, pte.walk_refs_by_level.pte);
    assert!(pte.stlb_misses > 1000 && pte.stlb_misses <= 2048, "{pte:?}");
    // In a VM, the same guest walks plus EPT references.
    assert_eq!(vm.walk_refs_by_level, pte.walk_refs_by_level);
    assert!(vm.walk_refs_ept > 0);
    let est = a[2].access.as_ref().expect("estimate");
    assert_eq!(
        (est.cpu.as_str(), est.translation.as_str()),
        ("golden-cove", "nested-4k")
    );
    assert!(est.time_ns > 0.0 && est.ns_per_load > 0.0);
    assert_eq!(
        a[0].access.as_ref().expect("estimate").translation,
        "native"
    );
    assert!(r.steps[0].access.is_none());
    // Deterministic: the same counts again.
    let again = run(&[access("pmd", "random", "count = 2000\n")]);
    assert_eq!(accesses(&again)[0].counters.tlb, pmd);
}

#[test]
fn expects_check_the_counts_and_revoked_bars_fault() {
    let r = run(&[
        step("touch", "map = \"pmd\"\n"),
        access("pmd", "sequential", ""),
        step(
            "expect",
            "faults = 4\n\
             loads = 1048576\n\
             tlb_misses = { l1 = 4, stlb = 4 }\n\
             walk_refs_by_level = { pte = 0 }\n\
             walk_faults = 0\n",
        ),
        step("memory", "device = \"d\"\nenable = false\n"),
        access("pmd", "strided", "stride = \"4K\"\n"),
        step(
            "expect",
            "sigbus = 2048\nloads = 2048\nwalk_faults = 2048\n",
        ),
    ]);
    assert!(
        r.ok,
        "{:?}",
        r.steps
            .iter()
            .filter_map(|s| s.expect.as_ref())
            .collect::<Vec<_>>()
    );
    // A wrong expectation fails and names the field.
    let r = run(&[
        access("pmd", "random", "count = 10\n"),
        step("expect", "tlb_misses = { stlb = 0 }\n"),
    ]);
    assert!(!r.ok);
    let e = r.steps[3].expect.as_ref().expect("outcome");
    assert_eq!(e.mismatches[0].field, "tlb_misses.stlb");
}

#[test]
fn bad_workloads_and_failed_mmaps_are_errnos() {
    let r = run(&[
        access("pmd", "chase", "len = \"6K\"\n"),
        mmap_step("bad", "d", 2, "va = \"0x1001\"\n"),
        access("bad", "random", ""),
        step("expect", "errno = \"EFAULT\"\n"),
    ]);
    assert_eq!(r.steps[2].errno.as_deref(), Some("EINVAL"));
    assert!(r.ok, "{r:?}");
}

/// issue 17: a chase over 16 TiB (a page count that overflowed u32 and an allocation that
/// aborted) and 10^18 loads (hours) are refused up front with E2BIG, nothing allocated or run.
#[test]
fn workloads_over_the_limits_are_refused_up_front() {
    let text = [
        "name = \"big\"\n".to_string(),
        one_bar_device("d", 2, "0x100000000000", "16T"),
        mmap_step("m", "d", 2, "va = \"align:1G\"\n"),
        access("m", "chase", ""),
        access("m", "random", "len = \"1G\"\ncount = 1000000000000000000\n"),
        step("expect", "errno = \"E2BIG\"\nfaults = 0\n"),
    ]
    .concat();
    let sc = hugepfn_scenario::parse_scenario(&text, "big.toml").expect("parses");
    let r =
        hugepfn::runner::run_scenario(&sc, hugepfn::runner::RunOptions::default()).expect("runs");
    assert_eq!(r.steps[1].errno.as_deref(), Some("E2BIG"));
    assert_eq!(r.steps[2].errno.as_deref(), Some("E2BIG"));
    assert!(r.ok, "{r:?}");
}
