//! The `access` op on the model runner: the walker reads the leaves the scenario's faults
//! installed, populating faults are the step's, counts are deterministic, the time estimate is
//! reported, and a revoked BAR makes every walk fault.

use hugepfn::runner::{RunOptions, run_scenario};
use hugepfn_scenario::{RunReport, StepReport, parse_scenario};

const HEAD: &str = r#"
name = "access"
[[device]]
name = "d"
bars = [{ index = 2, phys = "0xff00000000", size = "8M" }]
[[step]]
op = "mmap"
name = "pmd"
device = "d"
bar = 2
va = "align:1G"
[[step]]
op = "mmap"
name = "pte"
device = "d"
bar = 2
va = "align:1G+4K"
"#;

fn run(steps: &str) -> RunReport {
    let sc = parse_scenario(&format!("{HEAD}{steps}"), "t.toml").expect("parses");
    run_scenario(&sc, RunOptions::default()).expect("runs")
}

fn accesses(r: &RunReport) -> Vec<&StepReport> {
    r.steps.iter().filter(|s| s.op == "access").collect()
}

#[test]
fn access_walks_the_installed_leaves() {
    let r = run(r#"
[[step]]
op = "access"
map = "pmd"
pattern = "random"
count = 2000
[[step]]
op = "access"
map = "pte"
pattern = "random"
count = 2000
[[step]]
op = "access"
map = "pte"
pattern = "random"
count = 2000
vm = "4K"
"#);
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
    let again = run(r#"
[[step]]
op = "access"
map = "pmd"
pattern = "random"
count = 2000
"#);
    assert_eq!(accesses(&again)[0].counters.tlb, pmd);
}

#[test]
fn expects_check_the_counts_and_revoked_bars_fault() {
    let r = run(r#"
[[step]]
op = "touch"
map = "pmd"
[[step]]
op = "access"
map = "pmd"
pattern = "sequential"
[[step]]
op = "expect"
faults = 4
loads = 1048576
tlb_misses = { l1 = 4, stlb = 4 }
walk_refs_by_level = { pte = 0 }
walk_faults = 0
[[step]]
op = "memory"
device = "d"
enable = false
[[step]]
op = "access"
map = "pmd"
pattern = "strided"
stride = "4K"
[[step]]
op = "expect"
sigbus = 2048
loads = 2048
walk_faults = 2048
"#);
    assert!(
        r.ok,
        "{:?}",
        r.steps
            .iter()
            .filter_map(|s| s.expect.as_ref())
            .collect::<Vec<_>>()
    );
    // A wrong expectation fails and names the field.
    let r = run(r#"
[[step]]
op = "access"
map = "pmd"
pattern = "random"
count = 10
[[step]]
op = "expect"
tlb_misses = { stlb = 0 }
"#);
    assert!(!r.ok);
    let e = r.steps[3].expect.as_ref().expect("outcome");
    assert_eq!(e.mismatches[0].field, "tlb_misses.stlb");
}

#[test]
fn bad_workloads_and_failed_mmaps_are_errnos() {
    let r = run(r#"
[[step]]
op = "access"
map = "pmd"
pattern = "chase"
len = "6K"
[[step]]
op = "mmap"
name = "bad"
device = "d"
bar = 2
va = "0x1001"
[[step]]
op = "access"
map = "bad"
pattern = "random"
[[step]]
op = "expect"
errno = "EFAULT"
"#);
    assert_eq!(r.steps[2].errno.as_deref(), Some("EINVAL"));
    assert!(r.ok, "{r:?}");
}

/// issue 17: a chase over 16 TiB (a page count that overflowed u32 and an allocation that
/// aborted) and 10^18 loads (hours) are refused up front with E2BIG, nothing allocated or run.
#[test]
fn workloads_over_the_limits_are_refused_up_front() {
    let sc = hugepfn_scenario::parse_scenario(
        r#"name = "big"
[[device]]
name = "d"
bars = [{ index = 2, phys = "0x100000000000", size = "16T" }]
[[step]]
op = "mmap"
name = "m"
device = "d"
bar = 2
va = "align:1G"
[[step]]
op = "access"
map = "m"
pattern = "chase"
[[step]]
op = "access"
map = "m"
pattern = "random"
len = "1G"
count = 1000000000000000000
[[step]]
op = "expect"
errno = "E2BIG"
faults = 0
"#,
        "big.toml",
    )
    .expect("parses");
    let r =
        hugepfn::runner::run_scenario(&sc, hugepfn::runner::RunOptions::default()).expect("runs");
    assert_eq!(r.steps[1].errno.as_deref(), Some("E2BIG"));
    assert_eq!(r.steps[2].errno.as_deref(), Some("E2BIG"));
    assert!(r.ok, "{r:?}");
}
