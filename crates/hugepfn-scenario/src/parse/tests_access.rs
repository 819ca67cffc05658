//! Unit tests of the issue-7 op `access` and its expectations: the documented example, the
//! defaults, then one test per error path.

use super::tests::{problem, step, toml_err, with_map};
use super::*;
use crate::scenario::{AccessPattern, CpuSpec};
use hugepfn_units::{KIB, MIB};

/// The `access` example of the format documentation (crate docs), without its `//! ` prefix.
pub(crate) const DOC_EXAMPLE: &str = r#"[[step]]
op = "access"              # loads over a mapping on the MMU model (crates/hugepfn-hw)
map = "b1"
offset = "0"               # default 0
len = "all"                # default all
pattern = "random"         # sequential | strided | random | chase
# stride = "64"            # strided only: bytes between loads; default 64, a multiple of 8
# lines = 64               # chase only: lines per 4 KiB page (lat_mem_rd -t); default 64
count = 100000             # counted loads; default one pass
warmup = 10000             # uncounted loads first; default 0
seed = 1                   # default 1
vm = "2M"                  # optional: in a VM whose EPT maps with 4K | 2M | 1G pages
cpu = "golden-cove"        # golden-cove | zen4; default golden-cove
[[step]]
op = "expect"              # deltas since the previous expect, any subset
loads = 100000
tlb_misses = { l1 = 99993, stlb = 99887 }  # L1 DTLB misses; STLB misses = page walks
walk_refs = 196719         # walk memory references, both dimensions
walk_refs_by_level = { p4d = 0, pud = 1, pmd = 96831, pte = 99887 }  # and pgd
walk_refs_ept = 0          # of walk_refs, second-stage (EPT) entries
walk_faults = 0            # walks that found no usable leaf
"#;

fn access_of(lines: &str) -> AccessStep {
    match parse_scenario(&step(lines), "x.toml") {
        Ok(s) => match &s.steps[1] {
            Step::Access(a) => a.clone(),
            other => panic!("not an access: {other:?}"),
        },
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_documented_example_is_in_the_docs_and_parses() {
    let docs = include_str!("../lib.rs");
    for line in DOC_EXAMPLE.lines() {
        assert!(
            docs.contains(&format!("//! {line}\n")),
            "not in the crate docs: {line}"
        );
    }
    let sc = parse_scenario(&with_map(DOC_EXAMPLE), "x.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sc.steps[1],
        Step::Access(AccessStep {
            line: 10,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            pattern: AccessPattern::Random,
            stride: 64,
            lines: 64,
            count: Some(100_000),
            warmup: 10_000,
            seed: 1,
            vm: Some(2 * MIB),
            cpu: CpuSpec::GoldenCove,
            process: None,
        })
    );
    assert_eq!(sc.steps[1].op(), "access");
    let Step::Expect(e) = &sc.steps[2] else {
        panic!("not an expect")
    };
    assert_eq!(e.expect.loads, Some(100_000));
    assert_eq!(
        e.expect.tlb_misses,
        Some(TlbMissCounts {
            l1: Some(99_993),
            stlb: Some(99_887)
        })
    );
    assert_eq!(e.expect.walk_refs, Some(196_719));
    assert_eq!(
        e.expect.walk_refs_by_level,
        Some(TableLevelCounts {
            pgd: None,
            p4d: Some(0),
            pud: Some(1),
            pmd: Some(96_831),
            pte: Some(99_887)
        })
    );
    assert_eq!(e.expect.walk_refs_ept, Some(0));
    assert_eq!(e.expect.walk_faults, Some(0));
}

#[test]
fn defaults_and_the_other_patterns() {
    let a = access_of("op = \"access\"\nmap = \"b1\"\npattern = \"sequential\"");
    assert_eq!(
        (
            a.offset, a.len, a.stride, a.lines, a.count, a.warmup, a.seed, a.vm, a.cpu
        ),
        (0, Len::All, 64, 64, None, 0, 1, None, CpuSpec::GoldenCove)
    );
    let a = access_of(
        "op = \"access\"\nmap = \"b1\"\npattern = \"strided\"\nstride = \"4K\"\nvm = \"1G\"\ncpu = \"zen4\"\nprocess = \"main\"",
    );
    assert_eq!(
        (a.pattern, a.stride, a.vm, a.cpu, a.process.as_deref()),
        (
            AccessPattern::Strided,
            4 * KIB,
            Some(1 << 30),
            CpuSpec::Zen4,
            Some("main")
        )
    );
    let a =
        access_of("op = \"access\"\nmap = \"b1\"\npattern = \"chase\"\nlines = 8\nlen = \"2M\"");
    assert_eq!((a.lines, a.len), (8, Len::Bytes(2 * MIB)));
}

#[test]
fn unknown_keys_and_values_are_refused_at_their_line() {
    let (msg, line) = toml_err(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\nloads = 5",
    ));
    assert!(msg.contains("loads"), "{msg}");
    assert_eq!(line, 14);
    let (msg, line) = toml_err(&step("op = \"access\"\nmap = \"b1\"\npattern = \"zigzag\""));
    assert!(
        msg.contains("zigzag") && msg.contains("sequential") && msg.contains("chase"),
        "{msg}"
    );
    assert_eq!(line, 13);
    let (msg, _) = toml_err(&step("op = \"access\"\nmap = \"b1\""));
    assert!(msg.contains("pattern"), "{msg}");
    let (msg, line) = toml_err(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\ncpu = \"m1\"",
    ));
    assert!(msg.contains("m1") && msg.contains("zen4"), "{msg}");
    assert_eq!(line, 14);
    // The expectations are checked too.
    let (msg, line) = toml_err(&step("op = \"expect\"\ntlb_misses = { l2 = 1 }"));
    assert!(msg.contains("l2"), "{msg}");
    assert_eq!(line, 12);
    let (msg, _) = toml_err(&step("op = \"expect\"\nwalk_refs_by_level = { pml4 = 1 }"));
    assert!(msg.contains("pml4"), "{msg}");
    let (msg, _) = toml_err(&step("op = \"expect\"\nwalk_refs = \"many\""));
    assert!(
        msg.contains("walk_refs") || msg.contains("integer"),
        "{msg}"
    );
}

#[test]
fn pattern_specific_keys_and_bad_values() {
    let (p, line, col) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\nstride = \"4K\"",
    ));
    assert_eq!(
        p,
        Problem::KeyNotForPattern {
            key: "stride",
            wants: "strided",
            pattern: "random"
        }
    );
    assert_eq!((line, col), (14, 10));
    assert!(p.to_string().contains("pattern = \"strided\" only"), "{p}");
    let (p, line, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"sequential\"\nlines = 8",
    ));
    assert!(matches!(p, Problem::KeyNotForPattern { key: "lines", .. }));
    assert_eq!(line, 14);
    let (p, _, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"strided\"\nstride = 12",
    ));
    assert_eq!(p, Problem::BadAccessStride { stride: 12 });
    let (p, _, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"strided\"\nstride = 0",
    ));
    assert_eq!(p, Problem::BadAccessStride { stride: 0 });
    for bad in [0i64, 3, 128, -1] {
        let (p, _, _) = problem(&step(&format!(
            "op = \"access\"\nmap = \"b1\"\npattern = \"chase\"\nlines = {bad}"
        )));
        assert_eq!(p, Problem::BadChaseLines { lines: bad });
    }
    let (p, line, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\nvm = \"64K\"",
    ));
    assert_eq!(p, Problem::BadHostPage { size: 64 * KIB });
    assert_eq!(line, 14);
    assert!(p.to_string().contains("\"4K\", \"2M\" or \"1G\""), "{p}");
    let (p, _, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\nvm = \"2Q\"",
    ));
    assert!(matches!(p, Problem::BadSize { field: "vm", .. }), "{p:?}");
}

#[test]
fn references_are_checked() {
    let (p, line, _) = problem(&step("op = \"access\"\nmap = \"b2\"\npattern = \"random\""));
    assert!(matches!(p, Problem::UnknownMapping { .. }), "{p:?}");
    assert_eq!(line, 12);
    let (p, _, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\nprocess = \"c9\"",
    ));
    assert!(matches!(p, Problem::UnknownProcess { .. }), "{p:?}");
    let (p, _, _) = problem(&step(
        "op = \"access\"\nmap = \"b1\"\npattern = \"random\"\noffset = \"16E\"\nlen = \"16E\"",
    ));
    assert!(
        matches!(p, Problem::RangeOverflow { .. } | Problem::BadSize { .. }),
        "{p:?}"
    );
}
