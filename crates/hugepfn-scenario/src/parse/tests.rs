//! Unit tests of the parser: the documented example, then one test per error path.

use super::*;
use crate::scenario::{Access, Arch, Madvise, MunmapStep, Order, PlacementError, PowerState};
use hugepfn_units::{GIB, MIB, ParseSizeError};

/// The example of the format documentation, verbatim.
pub(crate) const EXAMPLE: &str = r#"name = "H100 BAR1 mapped by a VMM"
arch = "x86_64"                  # or "x86_64-5level"; default x86_64
thp = "always"                   # always | madvise | never; default always
description = "optional free text"

[[device]]
name = "gpu"
bars = [
  { index = 0, phys = "0x102002000000", size = "16M" },
  { index = 1, phys = "0x100000000000", size = "128G" },
]

[[step]]
op = "mmap"
name = "b1"                      # later steps name the mapping
device = "gpu"
bar = 1
offset = "0"                     # into the BAR; default 0
len = "128G"                     # default: the rest of the BAR
va = "align:1G"                  # "kernel" (default) | "align:SIZE" | "align:SIZE+SKEW" | "congruent:SIZE" | "0x7f0000000000"
madvise = "hugepage"             # optional: hugepage | nohugepage
shared = true                    # default true

[[step]]
op = "touch"                     # one access per stride
map = "b1"
offset = "0"                     # default 0
len = "all"                      # default all (the rest of the mapping from offset)
stride = "4K"                    # default 4K
access = "write"                 # read | write ; default write (lab default is write then read)
order = "forward"                # forward | reverse ; default forward

[[step]]
op = "munmap"
map = "b1"
offset = "1022M"
len = "2M"

[[step]]
op = "memory"                    # PCI command MEMORY bit through config space
device = "gpu"
enable = false

[[step]]
op = "reset"                     # function reset
device = "gpu"

[[step]]
op = "power"                     # PCI power state
device = "gpu"
state = "d3hot"                  # d0 | d3hot

[[step]]
op = "expect"                    # counters since the previous expect, or since the start
faults = 2
faults_by_level = { pud = 2, pmd = 0, pte = 0 }   # any subset
sigbus = 0                       # optional
skipped = 0                      # optional
leaves = { pud = 2 }             # optional: leaves mapped NOW (not a delta)
"#;

/// A small valid head used by the error tests: device `gpu` with BAR 1 (1 GiB) on lines 1-3.
const HEAD: &str = "name = \"t\"\n[[device]]\nname = \"gpu\"\nbars = [{ index = 1, phys = \"0x100000000000\", size = \"1G\" }]\n";

/// HEAD + an mmap step of `b1` (lines 5-9).
pub(super) fn with_map(rest: &str) -> String {
    format!("{HEAD}[[step]]\nop = \"mmap\"\nname = \"b1\"\ndevice = \"gpu\"\nbar = 1\n{rest}")
}

/// `with_map` + one `[[step]]` at line 10 with these lines (op first).
pub(super) fn step(lines: &str) -> String {
    with_map(&format!("[[step]]\n{lines}\n"))
}

pub(super) fn err(text: &str) -> ScenarioError {
    match parse_scenario(text, "x.toml") {
        Ok(s) => panic!("expected an error, parsed {s:#?}"),
        Err(e) => e,
    }
}

/// The problem and its line:column.
pub(super) fn problem(text: &str) -> (Problem, usize, usize) {
    match err(text) {
        ScenarioError::Invalid { at, problem } => (problem, at.line, at.column),
        other => panic!("expected a Problem, got: {other}"),
    }
}

/// A TOML/serde error: message and line.
pub(super) fn toml_err(text: &str) -> (String, usize) {
    match err(text) {
        ScenarioError::Toml { at, message } => {
            assert_eq!(at.origin, "x.toml");
            (message, at.line)
        }
        other => panic!("expected a TOML error, got: {other}"),
    }
}

#[test]
fn the_documented_example_parses() {
    let s = parse_scenario(EXAMPLE, "example.toml").expect("example");
    assert_eq!(s.name, "H100 BAR1 mapped by a VMM");
    assert_eq!(s.origin, "example.toml");
    assert_eq!(s.arch, Arch::X86_64);
    assert_eq!(s.thp, ThpMode::Always);
    assert_eq!(s.description.as_deref(), Some("optional free text"));
    assert_eq!(
        s.devices,
        vec![DeviceSpec {
            name: "gpu".into(),
            line: 6,
            bars: vec![
                BarSpec {
                    index: 0,
                    phys: 0x1020_0200_0000,
                    size: 16 * MIB
                },
                BarSpec {
                    index: 1,
                    phys: 0x1000_0000_0000,
                    size: 128 * GIB
                },
            ],
        }]
    );
    assert_eq!(
        s.steps,
        vec![
            Step::Mmap(MmapStep {
                line: 13,
                name: "b1".into(),
                device: "gpu".into(),
                bar: 1,
                offset: 0,
                len: Len::Bytes(128 * GIB),
                va: VaPlacement::Align { size: GIB, skew: 0 },
                madvise: Some(Madvise::Hugepage),
                shared: true,
            }),
            Step::Touch(TouchStep {
                line: 24,
                map: "b1".into(),
                offset: 0,
                len: Len::All,
                stride: 4096,
                access: Access::Write,
                order: Order::Forward,
                process: None,
            }),
            Step::Munmap(MunmapStep {
                line: 33,
                map: "b1".into(),
                offset: 1022 * MIB,
                len: Len::Bytes(2 * MIB),
                process: None,
            }),
            Step::Memory(MemoryStep {
                line: 39,
                device: "gpu".into(),
                enable: false,
            }),
            Step::Reset(ResetStep {
                line: 44,
                device: "gpu".into(),
            }),
            Step::Power(PowerStep {
                line: 48,
                device: "gpu".into(),
                state: PowerState::D3hot,
            }),
            Step::Expect(ExpectStep {
                line: 53,
                expect: ExpectSpec {
                    faults: Some(2),
                    faults_by_level: Some(LevelCounts {
                        pud: Some(2),
                        pmd: Some(0),
                        pte: Some(0)
                    }),
                    sigbus: Some(0),
                    sigsegv: None,
                    skipped: Some(0),
                    leaves: Some(LevelCounts {
                        pud: Some(2),
                        pmd: None,
                        pte: None
                    }),
                    ..ExpectSpec::default()
                },
                on_kernel: vec![],
                on_arch: vec![],
                process: None,
            }),
        ]
    );
    let ops: Vec<&str> = s.steps.iter().map(Step::op).collect();
    assert_eq!(ops, Step::OPS[..7]);
    assert_eq!(
        s.device("gpu").and_then(|d| d.bar(1)).map(|b| b.size),
        Some(128 * GIB)
    );
    assert_eq!(s.mapping("b1").map(|m| m.line), Some(13));
    assert!(s.device("nic").is_none());
    assert!(s.mapping("b2").is_none());
}

#[test]
fn defaults_apply() {
    let s = parse_scenario(
        &with_map(
            "[[step]]\nop = \"touch\"\nmap = \"b1\"\n[[step]]\nop = \"munmap\"\nmap = \"b1\"\n",
        ),
        "d.toml",
    )
    .expect("valid");
    assert_eq!(s.arch, Arch::X86_64);
    assert_eq!(s.thp, ThpMode::Always);
    assert_eq!(s.description, None);
    let Step::Mmap(m) = &s.steps[0] else {
        panic!("mmap first")
    };
    assert_eq!(
        (m.offset, m.len, m.va, m.madvise, m.shared),
        (0, Len::All, VaPlacement::Kernel, None, true)
    );
    let Step::Touch(t) = &s.steps[1] else {
        panic!("touch second")
    };
    assert_eq!(
        (t.offset, t.len, t.stride, t.access, t.order),
        (0, Len::All, 4096, Access::Write, Order::Forward)
    );
    let Step::Munmap(u) = &s.steps[2] else {
        panic!("munmap third")
    };
    assert_eq!((u.offset, u.len), (0, Len::All));
}

#[test]
fn other_spellings_parse() {
    let s = parse_scenario(
        &format!(
            "arch = \"x86_64-5level\"\nthp = \"madvise\"\n{}",
            with_map(
                "offset = 4096\nlen = 2097152\nva = \"align:1G+4K\"\nmadvise = \"nohugepage\"\nshared = false\n\
                 [[step]]\nop = \"touch\"\nmap = \"b1\"\nlen = \"2M\"\nstride = \"2M\"\naccess = \"read\"\norder = \"reverse\"\n\
                 [[step]]\nop = \"power\"\ndevice = \"gpu\"\nstate = \"d0\"\n\
                 [[step]]\nop = \"expect\"\n"
            )
        ),
        "o.toml",
    )
    .expect("valid");
    assert_eq!(s.arch, Arch::X86_64_5Level);
    assert_eq!(s.thp, ThpMode::Madvise);
    let Step::Mmap(m) = &s.steps[0] else { panic!() };
    assert_eq!(m.offset, 4096);
    assert_eq!(m.len, Len::Bytes(2 * MIB));
    assert_eq!(
        m.va,
        VaPlacement::Align {
            size: GIB,
            skew: 4096
        }
    );
    assert_eq!(m.madvise, Some(Madvise::Nohugepage));
    assert!(!m.shared);
    let Step::Touch(t) = &s.steps[1] else {
        panic!()
    };
    assert_eq!(
        (t.access, t.order, t.stride),
        (Access::Read, Order::Reverse, 2 * MIB)
    );
    assert!(matches!(&s.steps[2], Step::Power(p) if p.state == PowerState::D0));
    assert!(matches!(&s.steps[3], Step::Expect(e) if e.expect.is_empty()));

    for (va, want) in [
        ("\"kernel\"", VaPlacement::Kernel),
        ("\"congruent:1G\"", VaPlacement::Congruent { size: GIB }),
        ("\"0x7f0000000000\"", VaPlacement::Fixed(0x7f00_0000_0000)),
        ("139637976727552", VaPlacement::Fixed(0x7f00_0000_0000)),
    ] {
        let s = parse_scenario(&with_map(&format!("va = {va}\n")), "v.toml").expect(va);
        assert!(matches!(&s.steps[0], Step::Mmap(m) if m.va == want), "{va}");
    }
}

#[test]
fn a_file_without_devices_or_steps_is_valid() {
    let s = parse_scenario("name = \"empty\"\n", "e.toml").expect("valid");
    assert!(s.devices.is_empty() && s.steps.is_empty());
    let s = parse_scenario("name = \"empty\"\nstep = []\n", "e.toml").expect("valid");
    assert!(s.steps.is_empty());
}

#[test]
fn steps_may_be_inline_tables() {
    let s = parse_scenario(
        &format!("step = [\n  {{ op = \"reset\", device = \"gpu\" }},\n  {{ op = \"expect\", faults = 0 }},\n]\n{HEAD}"),
        "i.toml",
    )
    .expect("valid");
    assert_eq!(
        s.steps.iter().map(Step::line).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

// ----- TOML / serde level errors -----------------------------------------------------------

#[test]
fn syntax_error_names_line_and_column() {
    let e = err("name = \"t\"\nx = [1,\n  2 3]\n");
    let at = e.location().expect("located").clone();
    assert_eq!(
        (at.origin.as_str(), at.line, at.column),
        ("x.toml", 3, 3),
        "{e}"
    );
    assert!(matches!(e, ScenarioError::Toml { .. }));
    let e = err("name = \"t\"\nname = \"u\"\n");
    assert_eq!(e.location().map(|l| l.line), Some(2), "{e}");
}

#[test]
fn unknown_step_key_is_reported_at_its_line() {
    // The documented example with `len` misspelled in the touch step (line 28).
    let text = EXAMPLE.replace("len = \"all\"", "lenn = \"all\"");
    let e = err(&text);
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "x.toml:28:1: unknown field `lenn`, expected one of `op`, `map`, `offset`, `len`"
        ),
        "{msg}"
    );
}

#[test]
fn unknown_keys_everywhere_are_errors() {
    let (m, l) = toml_err("name = \"t\"\ncolour = \"red\"\n");
    assert!(
        m.contains("unknown field `colour`") && m.contains("`step`"),
        "{m}"
    );
    assert_eq!(l, 2);
    let (m, l) = toml_err("name = \"t\"\n[[device]]\nname = \"gpu\"\nbar = []\n");
    assert!(
        m.contains("unknown field `bar`, expected one of `name`, `bars`, `preset`"),
        "{m}"
    );
    assert_eq!(l, 4);
    let (m, l) = toml_err(
        "name = \"t\"\n[[device]]\nname = \"gpu\"\nbars = [\n { index = 1, phys = 0, size = 4096, prefetch = true },\n]\n",
    );
    assert!(m.contains("unknown field `prefetch`"), "{m}");
    assert_eq!(l, 5);
    let (m, l) =
        toml_err("name = \"t\"\n[[step]]\nop = \"expect\"\nfaults_by_level = { pgd = 1 }\n");
    assert!(
        m.contains("unknown field `pgd`, expected one of `pud`, `pmd`, `pte`"),
        "{m}"
    );
    assert_eq!(l, 4);
    let (m, l) = toml_err("name = \"t\"\n[[step]]\nop = \"expect\"\nleaves = { p4d = 1 }\n");
    assert!(m.contains("unknown field `p4d`"), "{m}");
    assert_eq!(l, 4);
    let (m, l) = toml_err(&format!(
        "{HEAD}[[step]]\nop = \"reset\"\ndevice = \"gpu\"\nforce = true\n"
    ));
    assert!(
        m.contains("unknown field `force`, expected `op` or `device`"),
        "{m}"
    );
    assert_eq!(l, 8);
    let (m, _) = toml_err(&with_map("shard = true\n"));
    assert!(m.contains("unknown field `shard`"), "{m}");
}

#[test]
fn unknown_enum_values_are_errors() {
    let (m, l) = toml_err("name = \"t\"\nthp = \"sometimes\"\n");
    assert!(
        m.contains("unknown variant `sometimes`, expected one of `always`, `madvise`, `never`"),
        "{m}"
    );
    assert_eq!(l, 2);
    let (m, _) = toml_err("name = \"t\"\narch = \"aarch64\"\n");
    assert!(m.contains("unknown variant `aarch64`"), "{m}");
    let (m, _) = toml_err(&with_map("madvise = \"huge\"\n"));
    assert!(
        m.contains("unknown variant `huge`, expected `hugepage` or `nohugepage`"),
        "{m}"
    );
    let touch = |kv: &str| with_map(&format!("[[step]]\nop = \"touch\"\nmap = \"b1\"\n{kv}\n"));
    let (m, l) = toml_err(&touch("access = \"rw\""));
    assert!(
        m.contains("unknown variant `rw`, expected `read` or `write`"),
        "{m}"
    );
    assert_eq!(l, 13);
    let (m, _) = toml_err(&touch("order = \"random\""));
    assert!(m.contains("unknown variant `random`"), "{m}");
    let (m, _) = toml_err(&format!(
        "{HEAD}[[step]]\nop = \"power\"\ndevice = \"gpu\"\nstate = \"d3cold\"\n"
    ));
    assert!(
        m.contains("unknown variant `d3cold`, expected `d0` or `d3hot`"),
        "{m}"
    );
}

#[test]
fn wrong_types_and_missing_keys_are_errors() {
    let (m, l) = toml_err("name = 1\n");
    assert!(m.contains("expected a string"), "{m}");
    assert_eq!(l, 1);
    let (m, _) = toml_err("description = \"no name\"\n");
    assert!(m.contains("missing field `name`"), "{m}");
    // missing `device` in an mmap: reported at the step
    let (m, l) = toml_err(&format!(
        "{HEAD}[[step]]\nop = \"mmap\"\nname = \"b1\"\nbar = 1\n"
    ));
    assert!(m.contains("missing field `device`"), "{m}");
    assert_eq!(l, 5);
    let (m, _) = toml_err(&format!(
        "{HEAD}[[step]]\nop = \"memory\"\ndevice = \"gpu\"\n"
    ));
    assert!(m.contains("missing field `enable`"), "{m}");
    let (m, _) = toml_err(&format!(
        "{HEAD}[[step]]\nop = \"memory\"\ndevice = \"gpu\"\nenable = \"no\"\n"
    ));
    assert!(m.contains("expected a boolean"), "{m}");
    let (m, l) = toml_err("name = \"t\"\n[[step]]\nop = \"expect\"\nfaults = -1\n");
    assert!(m.contains("expected u64"), "{m}");
    assert_eq!(l, 4);
    let (m, _) = toml_err("name = \"t\"\n[[step]]\nop = \"expect\"\nfaults = \"2\"\n");
    assert!(m.contains("in `faults`"), "{m}");
    let (m, _) = toml_err(&with_map("offset = true\n"));
    assert!(m.contains("expected a size string"), "{m}");
    let (m, _) = toml_err("name = \"t\"\n[device]\nname = \"gpu\"\n");
    assert!(
        m.contains("expected a sequence") || m.contains("array"),
        "{m}"
    );
}

// ----- semantic problems -------------------------------------------------------------------

#[test]
fn steps_must_be_tables_with_a_known_op() {
    assert_eq!(
        problem("name = \"t\"\nstep = 5\n"),
        (Problem::StepsNotTables, 2, 8)
    );
    assert_eq!(
        problem("name = \"t\"\nstep = [1]\n"),
        (Problem::StepsNotTables, 2, 9)
    );
    assert_eq!(
        problem("name = \"t\"\n[step]\nop = \"reset\"\n").0,
        Problem::StepsNotTables
    );
    assert_eq!(
        problem("name = \"t\"\n\n[[step]]\nmap = \"b1\"\n"),
        (Problem::MissingOp, 3, 1)
    );
    assert_eq!(
        problem("name = \"t\"\n[[step]]\nop = 3\n"),
        (Problem::OpNotString, 3, 6)
    );
    let (p, l, c) = problem("name = \"t\"\n[[step]]\nop = \"mmapp\"\n");
    assert_eq!((p, l, c), (Problem::UnknownOp { op: "mmapp".into() }, 3, 6));
    let msg = err("name = \"t\"\n[[step]]\nop = \"mmapp\"\n").to_string();
    assert!(
        msg.starts_with("x.toml:3:6: unknown op `mmapp`, expected one of `mmap`"),
        "{msg}"
    );
}

#[test]
fn device_problems() {
    let dup = format!("{HEAD}[[device]]\nname = \"gpu\"\n");
    assert_eq!(
        problem(&dup),
        (
            Problem::DuplicateDevice {
                name: "gpu".into(),
                first_line: 2
            },
            6,
            8
        )
    );
    let bars = |b: &str| format!("name = \"t\"\n[[device]]\nname = \"gpu\"\nbars = [{b}]\n");
    for (index, col) in [("6", 19), ("-1", 19), ("300", 19)] {
        let (p, l, c) = problem(&bars(&format!(
            "{{ index = {index}, phys = 0, size = 4096 }}"
        )));
        assert_eq!(
            p,
            Problem::BarIndexOutOfRange {
                index: index.parse().expect("int")
            }
        );
        assert_eq!((l, c), (4, col));
    }
    let (p, _, _) = problem(&bars(
        "{ index = 2, phys = 0, size = 4096 }, { index = 2, phys = 0x1000, size = 4096 }",
    ));
    assert_eq!(
        p,
        Problem::DuplicateBar {
            device: "gpu".into(),
            index: 2
        }
    );
    let (p, l, c) = problem(&bars(
        "{ index = 0, phys = \"0xff00000800\", size = \"2G\" }",
    ));
    assert_eq!(
        (p, l, c),
        (
            Problem::BarPhysUnaligned {
                index: 0,
                phys: 0xff_0000_0800
            },
            4,
            29
        )
    );
    let (p, _, _) = problem(&bars("{ index = 0, phys = 0, size = \"0\" }"));
    assert_eq!(p, Problem::BarSizeZero { index: 0 });
    let (p, _, _) = problem(&bars(
        "{ index = 5, phys = \"0xfffffffffffff000\", size = \"8K\" }",
    ));
    assert_eq!(
        p,
        Problem::BarOverflow {
            index: 5,
            phys: 0xffff_ffff_ffff_f000,
            size: 8192
        }
    );
    let (p, _, _) = problem(&bars(
        "{ index = 0, phys = \"0xfe00000000\", size = \"2Q\" }",
    ));
    assert_eq!(
        p,
        Problem::BadSize {
            field: "size",
            source: ParseSizeError::Invalid("2Q".into())
        }
    );
    let (p, _, _) = problem(&bars("{ index = 0, phys = -4096, size = \"2G\" }"));
    assert_eq!(
        p,
        Problem::NegativeSize {
            field: "phys",
            value: -4096
        }
    );
}

#[test]
fn unknown_devices_and_bars() {
    for op in [
        "op = \"mmap\"\nname = \"b1\"\ndevice = \"nic\"\nbar = 1",
        "op = \"memory\"\ndevice = \"nic\"\nenable = true",
        "op = \"reset\"\ndevice = \"nic\"",
        "op = \"power\"\ndevice = \"nic\"\nstate = \"d0\"",
    ] {
        let text = format!("{HEAD}[[step]]\n{op}\n");
        let (p, _, _) = problem(&text);
        assert_eq!(
            p,
            Problem::UnknownDevice {
                name: "nic".into(),
                known: vec!["gpu".into()]
            },
            "{op}"
        );
    }
    let e = err("name = \"t\"\n[[step]]\nop = \"reset\"\ndevice = \"gpu\"\n");
    assert_eq!(
        e.to_string(),
        "x.toml:4:10: unknown device `gpu` (no devices are defined)"
    );
    for bar in ["0", "9", "-1"] {
        let text = format!(
            "{HEAD}[[step]]\nop = \"mmap\"\nname = \"b1\"\ndevice = \"gpu\"\nbar = {bar}\n"
        );
        let (p, l, c) = problem(&text);
        assert_eq!(
            (p, l, c),
            (
                Problem::UnknownBar {
                    device: "gpu".into(),
                    index: bar.parse().expect("int"),
                    available: vec![1]
                },
                9,
                7
            )
        );
    }
}

#[test]
fn mapping_problems() {
    let (p, l, c) = problem(&with_map(
        "[[step]]\nop = \"mmap\"\nname = \"b1\"\ndevice = \"gpu\"\nbar = 1\n",
    ));
    assert_eq!(
        (p, l, c),
        (
            Problem::DuplicateMapping {
                name: "b1".into(),
                first_line: 5
            },
            12,
            8
        )
    );
    let (p, l, _) = problem(&with_map("[[step]]\nop = \"touch\"\nmap = \"b2\"\n"));
    assert_eq!(
        (p, l),
        (
            Problem::UnknownMapping {
                name: "b2".into(),
                known: vec!["b1".into()]
            },
            12
        )
    );
    let (p, _, _) = problem(&with_map("[[step]]\nop = \"munmap\"\nmap = \"b2\"\n"));
    assert!(matches!(p, Problem::UnknownMapping { .. }));
    let (p, l, _) = problem(&format!(
        "{HEAD}[[step]]\nop = \"touch\"\nmap = \"b1\"\n[[step]]\nop = \"mmap\"\nname = \"b1\"\ndevice = \"gpu\"\nbar = 1\n"
    ));
    assert_eq!(
        (p, l),
        (
            Problem::MappingUsedBeforeMmap {
                name: "b1".into(),
                mmap_line: 8
            },
            7
        )
    );
    let msg = err(&format!("{HEAD}[[step]]\nop = \"munmap\"\nmap = \"x\"\n")).to_string();
    assert_eq!(
        msg,
        "x.toml:7:7: unknown mapping `x` (no mappings created so far are defined)"
    );
}

#[test]
fn size_and_range_problems() {
    let (p, l, c) = problem(&with_map("offset = \"4Q\"\n"));
    assert_eq!(
        (p, l, c),
        (
            Problem::BadSize {
                field: "offset",
                source: ParseSizeError::Invalid("4Q".into())
            },
            10,
            10
        )
    );
    let (p, _, _) = problem(&with_map("len = \"\"\n"));
    assert_eq!(
        p,
        Problem::BadSize {
            field: "len",
            source: ParseSizeError::Empty
        }
    );
    let (p, _, _) = problem(&with_map("len = -2\n"));
    assert_eq!(
        p,
        Problem::NegativeSize {
            field: "len",
            value: -2
        }
    );
    let (p, _, _) = problem(&with_map("offset = \"0xffffffffffff0000\"\nlen = \"1M\"\n"));
    assert_eq!(
        p,
        Problem::RangeOverflow {
            key: "offset",
            offset: 0xffff_ffff_ffff_0000,
            len: MIB
        }
    );
    let touch = |kv: &str| with_map(&format!("[[step]]\nop = \"touch\"\nmap = \"b1\"\n{kv}\n"));
    assert_eq!(problem(&touch("stride = 0")), (Problem::ZeroStride, 13, 10));
    assert_eq!(problem(&touch("stride = \"0K\"")).0, Problem::ZeroStride);
    assert!(matches!(
        problem(&touch("stride = \"4 K\"")).0,
        Problem::BadSize {
            field: "stride",
            ..
        }
    ));
    assert!(matches!(
        problem(&touch("offset = \"1G\"\nlen = \"0xffffffffffffffff\"")).0,
        Problem::RangeOverflow { .. }
    ));
    let munmap = with_map("[[step]]\nop = \"munmap\"\nmap = \"b1\"\noffset = \"x\"\n");
    assert!(matches!(
        problem(&munmap).0,
        Problem::BadSize {
            field: "offset",
            ..
        }
    ));
}

#[test]
fn placement_problems() {
    let (p, l, c) = problem(&with_map("va = \"somewhere\"\n"));
    assert_eq!(
        (p, l, c),
        (
            Problem::BadPlacement(PlacementError::Unrecognized("somewhere".into())),
            10,
            6
        )
    );
    let (p, _, _) = problem(&with_map("va = \"align:3M\"\n"));
    assert_eq!(
        p,
        Problem::BadPlacement(PlacementError::NotPowerOfTwo {
            value: "align:3M".into(),
            size: 3 * MIB
        })
    );
    let (p, _, _) = problem(&with_map("va = \"congruent:0\"\n"));
    assert!(matches!(
        p,
        Problem::BadPlacement(PlacementError::NotPowerOfTwo { size: 0, .. })
    ));
    let (p, _, _) = problem(&with_map("va = \"align:1G+2X\"\n"));
    assert!(matches!(
        p,
        Problem::BadPlacement(PlacementError::BadNumber { .. })
    ));
    let (p, _, _) = problem(&with_map("va = -4096\n"));
    assert_eq!(
        p,
        Problem::NegativeSize {
            field: "va",
            value: -4096
        }
    );
    let msg = err(&with_map("va = \"align:3M\"\n")).to_string();
    assert!(
        msg.starts_with("x.toml:10:6: `va`: VA placement `align:3M`: 3M is not a power of two"),
        "{msg}"
    );
}

#[test]
fn load_scenario_reads_files_and_reports_io_errors() {
    let dir = std::env::temp_dir().join(format!("hugepfn-scenario-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let good = dir.join("good.toml");
    std::fs::write(&good, EXAMPLE).expect("write");
    let s = load_scenario(&good).expect("loads");
    assert_eq!(s.origin, good.display().to_string());
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"t\"\noops = 1\n").expect("write");
    let e = load_scenario(&bad).expect_err("unknown key");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:1: ", bad.display())),
        "{e}"
    );
    let missing = dir.join("missing.toml");
    let e = load_scenario(&missing).expect_err("missing");
    assert!(matches!(e, ScenarioError::Io { .. }));
    assert!(e.location().is_none());
    assert!(e.to_string().contains("missing.toml: cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The parser must never panic, whatever the text: random strings, and random mutations of the
/// documented example (which keep most of the structure, so they reach the deep paths).
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Mutation {
        Delete { at: usize, len: usize },
        Insert { at: usize, text: String },
        DropLine(usize),
        DuplicateLine(usize),
        SwapLines(usize, usize),
        ReplaceValue { line: usize, value: String },
    }

    fn toml_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[\\[\\]{}=\"#,.\\n0-9a-zA-Z:+_ -]{0,12}",
            Just("\n[[step]]\n".to_string()),
            Just("\n[[device]]\n".to_string()),
            Just("op = \"touch\"\n".to_string()),
            Just("map = \"b1\"\n".to_string()),
            Just("\"".to_string()),
            Just("é\u{0}\u{feff}".to_string()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"all\"".to_string()),
            Just("\"kernel\"".to_string()),
            Just("\"align:1G+4K\"".to_string()),
            Just("\"congruent:3M\"".to_string()),
            Just("-1".to_string()),
            Just("9223372036854775807".to_string()),
            Just("\"0xffffffffffffffff\"".to_string()),
            Just("\"16777216T\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("{ pud = -1 }".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just("1979-05-27".to_string()),
            "\"[a-z0-9:+]{0,8}\"",
            any::<i64>().prop_map(|n| n.to_string()),
        ]
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 0usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
            (any::<usize>(), toml_fragment()).prop_map(|(at, text)| Mutation::Insert { at, text }),
            any::<usize>().prop_map(Mutation::DropLine),
            any::<usize>().prop_map(Mutation::DuplicateLine),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
            (any::<usize>(), value())
                .prop_map(|(line, value)| Mutation::ReplaceValue { line, value }),
        ]
    }

    fn apply(text: &str, m: &Mutation) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let n = lines.len().max(1);
        match m {
            Mutation::Delete { at, len } => {
                let at = at % (chars.len() + 1);
                let end = (at + len).min(chars.len());
                chars[..at].iter().chain(&chars[end..]).collect()
            }
            Mutation::Insert { at, text } => {
                let at = at % (chars.len() + 1);
                let mut s: String = chars[..at].iter().collect();
                s.push_str(text);
                s.extend(&chars[at..]);
                s
            }
            Mutation::DropLine(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
                lines.join("\n")
            }
            Mutation::DuplicateLine(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
                lines.join("\n")
            }
            Mutation::SwapLines(a, b) => {
                if !lines.is_empty() {
                    lines.swap(a % n, b % n);
                }
                lines.join("\n")
            }
            Mutation::ReplaceValue { line, value } => {
                if let Some(l) = lines.get_mut(line % n)
                    && let Some((key, _)) = l.split_once('=')
                {
                    *l = format!("{key}= {value}");
                }
                lines.join("\n")
            }
        }
    }

    /// Parses and checks the invariants that hold for any input.
    fn check(text: &str) {
        let max_line = text.split('\n').count();
        match parse_scenario(text, "fuzz.toml") {
            Ok(s) => {
                for step in &s.steps {
                    assert!((1..=max_line).contains(&step.line()), "{step:?}");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("fuzz.toml"), "{msg}");
                if let Some(at) = e.location() {
                    assert!(at.line <= max_line, "{msg}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_strings(s in "\\PC{0,200}") {
            check(&s);
        }

        #[test]
        fn random_toml_looking_strings(s in "[\\[\\]{}=\"#,.\\n0-9a-z:+_ -]{0,300}") {
            check(&s);
        }

        #[test]
        fn mutated_example(ms in proptest::collection::vec(mutation(), 1..5)) {
            let mut text = EXAMPLE.to_string();
            for m in &ms {
                text = apply(&text, m);
            }
            check(&text);
        }
    }
}

#[test]
fn gpu_presets_and_vmm_placements() {
    let text = "name = \"t\"\n[[device]]\nname = \"gpu\"\npreset = \"H200\"\n\
                [[step]]\nop = \"mmap\"\nname = \"a\"\ndevice = \"gpu\"\nbar = 2\nva = \"vmm:qemu-9.2\"\n\
                [[step]]\nop = \"mmap\"\nname = \"b\"\ndevice = \"gpu\"\nbar = 0\noffset = \"4K\"\nva = \"vmm:cloud-hypervisor\"\n\
                [[step]]\nop = \"mmap\"\nname = \"c\"\ndevice = \"gpu\"\nbar = 4\nva = \"vmm:firecracker\"\n";
    let sc = parse_scenario(text, "x.toml").expect("parses");
    assert_eq!(sc.devices[0].bars.len(), 3);
    assert_eq!(sc.devices[0].bar(2).map(|b| b.size), Some(256 * GIB));
    let va = |i: usize| match &sc.steps[i] {
        Step::Mmap(m) => m.va,
        other => panic!("{other:?}"),
    };
    assert_eq!(va(0), VaPlacement::Align { size: GIB, skew: 0 });
    // 16M - 4K rounded up to a power of two
    assert_eq!(
        va(1),
        VaPlacement::Align {
            size: 16 * MIB,
            skew: 0
        }
    );
    assert_eq!(va(2), VaPlacement::Kernel);

    let (p, l, _) = problem("name = \"t\"\n[[device]]\nname = \"gpu\"\npreset = \"h300\"\n");
    assert!(matches!(p, Problem::UnknownPreset { ref name, .. } if name == "h300"));
    assert_eq!(l, 4);
    assert!(p.to_string().contains("h100, h200"), "{p}");
    let (p, _, _) = problem(
        "name = \"t\"\n[[device]]\nname = \"gpu\"\npreset = \"h100\"\n\
         bars = [{ index = 1, phys = 0, size = 4096 }]\n",
    );
    assert_eq!(
        p,
        Problem::PresetWithBars {
            device: "gpu".into()
        }
    );
    let (p, _, _) = problem(&with_map("va = \"vmm:qemu-10\"\n"));
    assert!(p.to_string().contains("unknown VMM `qemu-10`"), "{p}");
    let (p, _, _) = problem(&with_map(
        "[[step]]\nop = \"mremap\"\nmap = \"b1\"\nva = \"vmm:qemu-9.2\"\n",
    ));
    assert_eq!(p, Problem::VmmPlacementNotMmap { op: "mremap" });
}

#[test]
fn on_kernel_with_the_files_own_arch_is_an_error() {
    // x86_64 (the default): `x86_64:7.3.4` is the plain `7.3.4`; `arm64:7.3.4` is another arch
    let own = "name = \"t\"\n[[step]]\nop = \"expect\"\nfaults = 0\non_kernel.\"x86_64:7.3.4\" = { faults = 1 }\n";
    let (p, l, _) = problem(own);
    assert_eq!(
        (p, l),
        (
            Problem::OnKernelOwnArch {
                key: "x86_64:7.3.4".into(),
                kernel: "7.3.4".into()
            },
            5
        )
    );
    assert!(
        err(own)
            .to_string()
            .contains("its checks for 7.3.4 go in `on_kernel.\"7.3.4\"`")
    );
    let other = own.replace("x86_64:", "arm64:");
    assert!(parse_scenario(&other, "x.toml").is_ok());
    // an arm64 file: the roles swap
    let arm = format!("arch = \"arm64\"\n{other}");
    assert!(matches!(problem(&arm).0, Problem::OnKernelOwnArch { .. }));
    assert!(parse_scenario(&format!("arch = \"arm64\"\n{own}"), "x.toml").is_ok());
}
