//! Unit tests of the issue-5 ops (`mprotect`, `mremap`, `madvise`, `fork`, `process =`,
//! `errno`) and the issue-6 ops (`dma_map`, `dma_unmap`, `kvm_memslot`, `guest_touch`, the
//! consumer expectations): the documented example, then one test per error path.

use super::tests::{err, problem, step, toml_err, with_map};
use super::*;
use crate::scenario::{Access, Advice, DmaMode, ErrnoName, MemslotFlag, ProtSpec};
use crate::test_util::puds;
use hugepfn_units::{GIB, MIB};

/// The example of the format documentation for the new ops, verbatim.
pub(crate) const EXAMPLE_NEW_OPS: &str = r#"name = "new ops"
[[device]]
name = "gpu"
bars = [{ index = 1, phys = "0x100000000000", size = "128G" }]

[[step]]
op = "mmap"
name = "b1"
device = "gpu"
bar = 1
va = "align:1G"

[[step]]
op = "mprotect"
map = "b1"
offset = "1G"        # default 0
len = "2M"           # default all
prot = "read"        # none | read | write (write means read+write)

[[step]]
op = "mremap"        # moves the whole mapping (MREMAP_MAYMOVE|MREMAP_FIXED)
map = "b1"
va = "align:1G+2M"   # the same placement forms as mmap
new_len = "4G"       # optional: shrink/expand (default: same length)

[[step]]
op = "madvise"
map = "b1"
offset = "0"
len = "2M"
advice = "dontneed"

[[step]]
op = "fork"
child = "c1"

[[step]]
op = "touch"
map = "b1"
process = "c1"

[[step]]
op = "expect"
process = "c1"
sigsegv = 0
errno = "EINVAL"

[[step]]
op = "dma_map"
map = "b1"
offset = "0"
len = "all"
iova = "0x100000000000"
mode = "batched"     # batched | per_page

[[step]]
op = "dma_unmap"
iova = "0x100000000000"
len = "128G"

[[step]]
op = "kvm_memslot"
slot = 0
gpa = "0x4000000000"
map = "b1"
offset = "0"
len = "all"
flags = ["readonly"]

[[step]]
op = "guest_touch"
gpa = "0x4000000000"
len = "128G"
stride = "4K"
access = "write"

[[step]]
op = "expect"
dma_lookups = 32
iommu_entries = { pud = 32 }
ept_violations = 128
ept_leaves = { pud = 128 }
mmu_invalidations = 1

[[step]]
op = "munmap"
map = "b1"
process = "main"
"#;

fn parse_one(lines: &str) -> Step {
    let s = parse_scenario(&step(lines), "x.toml").unwrap_or_else(|e| panic!("{e}"));
    s.steps[1].clone()
}

#[test]
fn the_documented_example_of_the_new_ops_parses() {
    let s = parse_scenario(EXAMPLE_NEW_OPS, "n.toml").unwrap_or_else(|e| panic!("{e}"));
    let ops: Vec<&str> = s.steps.iter().map(Step::op).collect();
    assert_eq!(
        ops,
        [
            "mmap",
            "mprotect",
            "mremap",
            "madvise",
            "fork",
            "touch",
            "expect",
            "dma_map",
            "dma_unmap",
            "kvm_memslot",
            "guest_touch",
            "expect",
            "munmap"
        ]
    );
    // Every op of the format appears in one of the documented examples (`access`: its own,
    // in tests_access.rs).
    for op in Step::OPS {
        assert!(
            ops.contains(&op)
                || super::tests::EXAMPLE.contains(&format!("op = \"{op}\""))
                || super::tests_access::DOC_EXAMPLE.contains(&format!("op = \"{op}\""))
                || DOC_EXAMPLE_PROC.contains(&format!("op = \"{op}\"")),
            "{op} is not in a documented example"
        );
    }
    assert_eq!(
        s.steps[1],
        Step::Mprotect(MprotectStep {
            line: 13,
            map: "b1".into(),
            offset: GIB,
            len: Len::Bytes(2 * MIB),
            prot: ProtSpec::Read,
            process: None,
        })
    );
    assert_eq!(
        s.steps[2],
        Step::Mremap(MremapStep {
            line: 20,
            map: "b1".into(),
            va: VaPlacement::Align {
                size: GIB,
                skew: 2 * MIB
            },
            new_len: Some(4 * GIB),
            process: None,
        })
    );
    assert_eq!(
        s.steps[3],
        Step::Madvise(MadviseStep {
            line: 26,
            map: "b1".into(),
            offset: 0,
            len: Len::Bytes(2 * MIB),
            advice: Advice::Dontneed,
            process: None,
        })
    );
    assert_eq!(
        s.steps[4],
        Step::Fork(ForkStep {
            line: 33,
            child: "c1".into()
        })
    );
    assert!(matches!(&s.steps[5], Step::Touch(t) if t.process.as_deref() == Some("c1")));
    assert_eq!(s.steps[5].process(), Some("c1"));
    assert_eq!(
        s.steps[6],
        Step::Expect(ExpectStep {
            line: 42,
            expect: ExpectSpec {
                sigsegv: Some(0),
                errno: "EINVAL".parse().ok(),
                ..ExpectSpec::default()
            },
            on_kernel: vec![],
            on_arch: vec![],
            process: Some("c1".into()),
        })
    );
    assert_eq!(
        s.steps[7],
        Step::DmaMap(DmaMapStep {
            line: 48,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            iova: 0x1000_0000_0000,
            mode: Some(DmaMode::Batched),
            process: None,
        })
    );
    assert_eq!(
        s.steps[8],
        Step::DmaUnmap(DmaUnmapStep {
            line: 56,
            iova: 0x1000_0000_0000,
            len: 128 * GIB,
            process: None,
        })
    );
    assert_eq!(
        s.steps[9],
        Step::KvmMemslot(KvmMemslotStep {
            line: 61,
            slot: 0,
            gpa: 0x40_0000_0000,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            flags: vec![MemslotFlag::Readonly],
            process: None,
        })
    );
    assert_eq!(
        s.steps[10],
        Step::GuestTouch(GuestTouchStep {
            line: 70,
            gpa: 0x40_0000_0000,
            len: 128 * GIB,
            stride: 4096,
            access: Access::Write,
            process: None,
        })
    );
    let Step::Expect(e) = &s.steps[11] else {
        panic!("expect")
    };
    assert_eq!(
        e.expect,
        ExpectSpec {
            dma_lookups: Some(32),
            iommu_entries: puds(32),
            ept_violations: Some(128),
            ept_leaves: puds(128),
            mmu_invalidations: Some(1),
            ..ExpectSpec::default()
        }
    );
    assert_eq!(e.process, None);
    assert_eq!(s.steps[11].process_or_main(), "main");
    // naming the first process explicitly is allowed
    assert_eq!(s.steps[12].process(), Some("main"));
}

#[test]
fn defaults_of_the_new_ops() {
    assert_eq!(
        parse_one("op = \"mprotect\"\nmap = \"b1\"\nprot = \"none\""),
        Step::Mprotect(MprotectStep {
            line: 10,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            prot: ProtSpec::None,
            process: None,
        })
    );
    assert_eq!(
        parse_one("op = \"mremap\"\nmap = \"b1\""),
        Step::Mremap(MremapStep {
            line: 10,
            map: "b1".into(),
            va: VaPlacement::Kernel,
            new_len: None,
            process: None,
        })
    );
    assert_eq!(
        parse_one("op = \"madvise\"\nmap = \"b1\"\nadvice = \"populate_write\""),
        Step::Madvise(MadviseStep {
            line: 10,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            advice: Advice::PopulateWrite,
            process: None,
        })
    );
    assert_eq!(
        parse_one("op = \"dma_map\"\nmap = \"b1\"\niova = 0"),
        Step::DmaMap(DmaMapStep {
            line: 10,
            map: "b1".into(),
            offset: 0,
            len: Len::All,
            iova: 0,
            mode: None,
            process: None,
        })
    );
    assert_eq!(
        parse_one("op = \"kvm_memslot\"\nslot = 3\ngpa = \"4G\"\nmap = \"b1\"\nlen = 0"),
        Step::KvmMemslot(KvmMemslotStep {
            line: 10,
            slot: 3,
            gpa: 4 * GIB,
            map: "b1".into(),
            offset: 0,
            len: Len::Bytes(0),
            flags: vec![],
            process: None,
        })
    );
    assert_eq!(
        parse_one("op = \"guest_touch\"\ngpa = 0\nlen = \"2M\""),
        Step::GuestTouch(GuestTouchStep {
            line: 10,
            gpa: 0,
            len: 2 * MIB,
            stride: 4096,
            access: Access::Write,
            process: None,
        })
    );
    assert!(matches!(
        parse_one("op = \"dma_map\"\nmap = \"b1\"\niova = 0\nmode = \"per_page\""),
        Step::DmaMap(DmaMapStep {
            mode: Some(DmaMode::PerPage),
            ..
        })
    ));
    assert!(matches!(
        parse_one("op = \"guest_touch\"\ngpa = 0\nlen = 4096\naccess = \"read\"\nstride = \"2M\""),
        Step::GuestTouch(GuestTouchStep {
            access: Access::Read,
            stride: 0x20_0000,
            ..
        })
    ));
    assert!(matches!(
        parse_one("op = \"kvm_memslot\"\nslot = 1\ngpa = 0\nmap = \"b1\"\nflags = [\"log_dirty_pages\", \"readonly\"]"),
        Step::KvmMemslot(KvmMemslotStep { flags, .. })
            if flags == vec![MemslotFlag::LogDirtyPages, MemslotFlag::Readonly]
    ));
}

#[test]
fn every_advice_and_prot_spelling_parses() {
    let advices = [
        ("dontneed", Advice::Dontneed),
        ("dontneed_locked", Advice::DontneedLocked),
        ("free", Advice::Free),
        ("wipeonfork", Advice::Wipeonfork),
        ("keeponfork", Advice::Keeponfork),
        ("cold", Advice::Cold),
        ("pageout", Advice::Pageout),
        ("populate_read", Advice::PopulateRead),
        ("populate_write", Advice::PopulateWrite),
        ("hugepage", Advice::Hugepage),
        ("nohugepage", Advice::Nohugepage),
        ("normal", Advice::Normal),
        ("random", Advice::Random),
        ("sequential", Advice::Sequential),
        ("willneed", Advice::Willneed),
        ("dontfork", Advice::Dontfork),
        ("dofork", Advice::Dofork),
        ("dontdump", Advice::Dontdump),
        ("dodump", Advice::Dodump),
    ];
    for (name, want) in advices {
        let st = parse_one(&format!(
            "op = \"madvise\"\nmap = \"b1\"\nadvice = \"{name}\""
        ));
        assert!(
            matches!(st, Step::Madvise(MadviseStep { advice, .. }) if advice == want),
            "{name}"
        );
    }
    for (name, want) in [
        ("none", ProtSpec::None),
        ("read", ProtSpec::Read),
        ("write", ProtSpec::Write),
    ] {
        let st = parse_one(&format!(
            "op = \"mprotect\"\nmap = \"b1\"\nprot = \"{name}\""
        ));
        assert!(
            matches!(st, Step::Mprotect(MprotectStep { prot, .. }) if prot == want),
            "{name}"
        );
    }
}

#[test]
fn process_names_must_come_from_a_fork() {
    // unknown
    let (p, l, c) = problem(&step("op = \"touch\"\nmap = \"b1\"\nprocess = \"c9\""));
    assert_eq!(
        (p, l, c),
        (
            Problem::UnknownProcess {
                name: "c9".into(),
                known: vec!["main".into()]
            },
            13,
            11
        )
    );
    // used before the fork that creates it
    let text = with_map(
        "[[step]]\nop = \"expect\"\nprocess = \"c1\"\n[[step]]\nop = \"fork\"\nchild = \"c1\"\n",
    );
    assert_eq!(
        problem(&text),
        (
            Problem::ProcessUsedBeforeFork {
                name: "c1".into(),
                fork_line: 13
            },
            12,
            11
        )
    );
    // duplicate child, and `main`
    let text = with_map(
        "[[step]]\nop = \"fork\"\nchild = \"c1\"\n[[step]]\nop = \"fork\"\nchild = \"c1\"\n",
    );
    assert_eq!(
        problem(&text),
        (
            Problem::DuplicateProcess {
                name: "c1".into(),
                first_line: 10
            },
            15,
            9
        )
    );
    assert_eq!(
        problem(&step("op = \"fork\"\nchild = \"main\"")).0,
        Problem::DuplicateProcess {
            name: "main".into(),
            first_line: 0
        }
    );
    // every op with a `process` key checks it
    for op in [
        "op = \"touch\"\nmap = \"b1\"",
        "op = \"munmap\"\nmap = \"b1\"",
        "op = \"mprotect\"\nmap = \"b1\"\nprot = \"read\"",
        "op = \"mremap\"\nmap = \"b1\"",
        "op = \"madvise\"\nmap = \"b1\"\nadvice = \"cold\"",
        "op = \"expect\"",
        "op = \"dma_map\"\nmap = \"b1\"\niova = 0",
        "op = \"dma_unmap\"\niova = 0\nlen = 4096",
        "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b1\"",
        "op = \"guest_touch\"\ngpa = 0\nlen = 4096",
    ] {
        let (p, _, _) = problem(&step(&format!("{op}\nprocess = \"nobody\"")));
        assert!(
            matches!(p, Problem::UnknownProcess { ref name, .. } if name == "nobody"),
            "{op}: {p}"
        );
        // and a forked child is accepted
        let text = with_map(&format!(
            "[[step]]\nop = \"fork\"\nchild = \"c1\"\n[[step]]\n{op}\nprocess = \"c1\"\n"
        ));
        let s = parse_scenario(&text, "x.toml").unwrap_or_else(|e| panic!("{op}: {e}"));
        assert_eq!(s.steps[2].process(), Some("c1"), "{op}");
    }
    // ops that act on the first process only reject the key
    for op in [
        "op = \"fork\"\nchild = \"c2\"",
        "op = \"memory\"\ndevice = \"gpu\"\nenable = true",
    ] {
        let (m, l) = toml_err(&step(&format!("{op}\nprocess = \"main\"")));
        assert!(m.contains("unknown field `process`"), "{op}: {m}");
        assert!(l >= 10, "{op}: {l}");
    }
}

#[test]
fn errno_expectations() {
    for name in [
        "0", "EINVAL", "EFAULT", "EEXIST", "ENOMEM", "ENOSYS", "EAGAIN",
    ] {
        let st = parse_one(&format!("op = \"expect\"\nerrno = \"{name}\""));
        let Step::Expect(e) = st else { panic!() };
        assert_eq!(e.expect.errno.map(ErrnoName::as_str), Some(name));
    }
    assert_eq!("0".parse::<ErrnoName>().map(ErrnoName::is_none), Ok(true));
    let (p, l, c) = problem(&step("op = \"expect\"\nerrno = \"EINVALID\""));
    assert_eq!(
        (p, l, c),
        (
            Problem::UnknownErrno {
                value: "EINVALID".into()
            },
            12,
            9
        )
    );
    assert!(matches!(
        problem(&step("op = \"expect\"\nerrno = \"einval\"")).0,
        Problem::UnknownErrno { .. }
    ));
    let msg = err(&step("op = \"expect\"\nerrno = \"22\"")).to_string();
    assert!(
        msg.starts_with("x.toml:12:9: `errno`: `22` is not an errno name"),
        "{msg}"
    );
    let (m, _) = toml_err(&step("op = \"expect\"\nerrno = 22"));
    assert!(m.contains("in `errno`") || m.contains("string"), "{m}");
    // the list has no duplicates and starts with "0"
    let mut k = ErrnoName::KNOWN.to_vec();
    k.sort_unstable();
    k.dedup();
    assert_eq!(k.len(), ErrnoName::KNOWN.len());
    assert_eq!(ErrnoName::KNOWN[0], "0");
}

#[test]
fn consumer_expectations_check_their_types() {
    let (m, l) = toml_err(&step("op = \"expect\"\niommu_entries = { p4d = 1 }"));
    assert!(m.contains("unknown field `p4d`"), "{m}");
    assert_eq!(l, 12);
    let (m, _) = toml_err(&step("op = \"expect\"\nept_leaves = { pud = -1 }"));
    assert!(m.contains("u64"), "{m}");
    let (m, _) = toml_err(&step("op = \"expect\"\ndma_lookups = \"32\""));
    assert!(m.contains("in `dma_lookups`"), "{m}");
    let (m, _) = toml_err(&step("op = \"expect\"\nmmu_invalidation = 1"));
    assert!(m.contains("unknown field `mmu_invalidation`"), "{m}");
}

#[test]
fn unknown_keys_and_values_in_the_new_ops() {
    for (lines, key) in [
        (
            "op = \"mprotect\"\nmap = \"b1\"\nprot = \"read\"\nprots = 1",
            "prots",
        ),
        ("op = \"mremap\"\nmap = \"b1\"\nlen = \"4G\"", "len"),
        (
            "op = \"madvise\"\nmap = \"b1\"\nadvice = \"cold\"\nflags = 0",
            "flags",
        ),
        ("op = \"fork\"\nchild = \"c1\"\nparent = \"main\"", "parent"),
        (
            "op = \"dma_map\"\nmap = \"b1\"\niova = 0\nvaddr = 0",
            "vaddr",
        ),
        ("op = \"dma_unmap\"\niova = 0\nlen = 1\nmap = \"b1\"", "map"),
        (
            "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b1\"\nhva = 0",
            "hva",
        ),
        (
            "op = \"guest_touch\"\ngpa = 0\nlen = 1\norder = \"reverse\"",
            "order",
        ),
    ] {
        let (m, l) = toml_err(&step(lines));
        assert!(
            m.contains(&format!("unknown field `{key}`")),
            "{lines}: {m}"
        );
        assert!(l > 10, "{lines}: line {l}");
    }
    for (lines, value) in [
        (
            "op = \"mprotect\"\nmap = \"b1\"\nprot = \"rw\"",
            "unknown variant `rw`, expected one of `none`, `read`, `write`",
        ),
        (
            "op = \"madvise\"\nmap = \"b1\"\nadvice = \"dont_need\"",
            "unknown variant `dont_need`",
        ),
        (
            "op = \"dma_map\"\nmap = \"b1\"\niova = 0\nmode = \"perpage\"",
            "unknown variant `perpage`, expected `batched` or `per_page`",
        ),
        (
            "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b1\"\nflags = [\"rw\"]",
            "unknown variant `rw`, expected `log_dirty_pages` or `readonly`",
        ),
        (
            "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b1\"\nflags = \"readonly\"",
            "sequence",
        ),
        (
            "op = \"kvm_memslot\"\nslot = -1\ngpa = 0\nmap = \"b1\"",
            "u32",
        ),
        (
            "op = \"kvm_memslot\"\nslot = 4294967296\ngpa = 0\nmap = \"b1\"",
            "u32",
        ),
        (
            "op = \"guest_touch\"\ngpa = 0\nlen = 1\naccess = \"exec\"",
            "unknown variant `exec`",
        ),
    ] {
        let (m, _) = toml_err(&step(lines));
        assert!(m.contains(value), "{lines}: {m}");
    }
}

#[test]
fn missing_required_keys_in_the_new_ops() {
    for (lines, key) in [
        ("op = \"mprotect\"\nmap = \"b1\"", "prot"),
        ("op = \"mprotect\"\nprot = \"read\"", "map"),
        ("op = \"mremap\"", "map"),
        ("op = \"madvise\"\nmap = \"b1\"", "advice"),
        ("op = \"fork\"", "child"),
        ("op = \"dma_map\"\nmap = \"b1\"", "iova"),
        ("op = \"dma_unmap\"\niova = 0", "len"),
        ("op = \"dma_unmap\"\nlen = 0", "iova"),
        ("op = \"kvm_memslot\"\ngpa = 0\nmap = \"b1\"", "slot"),
        ("op = \"kvm_memslot\"\nslot = 0\nmap = \"b1\"", "gpa"),
        ("op = \"kvm_memslot\"\nslot = 0\ngpa = 0", "map"),
        ("op = \"guest_touch\"\nlen = 1", "gpa"),
        ("op = \"guest_touch\"\ngpa = 1", "len"),
    ] {
        let (m, l) = toml_err(&step(lines));
        assert!(
            m.contains(&format!("missing field `{key}`")),
            "{lines}: {m}"
        );
        assert_eq!(l, 10, "{lines}");
    }
}

#[test]
fn mapping_references_in_the_new_ops() {
    for lines in [
        "op = \"mprotect\"\nmap = \"b2\"\nprot = \"read\"",
        "op = \"mremap\"\nmap = \"b2\"",
        "op = \"madvise\"\nmap = \"b2\"\nadvice = \"cold\"",
        "op = \"dma_map\"\nmap = \"b2\"\niova = 0",
        "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b2\"",
    ] {
        let (p, l, _) = problem(&step(lines));
        assert_eq!(
            (p, l),
            (
                Problem::UnknownMapping {
                    name: "b2".into(),
                    known: vec!["b1".into()]
                },
                l
            ),
            "{lines}"
        );
        assert!(l > 10, "{lines}");
    }
}

#[test]
fn sizes_and_ranges_in_the_new_ops() {
    let (p, l, c) = problem(&step("op = \"dma_map\"\nmap = \"b1\"\niova = \"0x1Q\""));
    assert_eq!(
        (p, l, c),
        (
            Problem::BadSize {
                field: "iova",
                source: hugepfn_units::ParseSizeError::Invalid("0x1Q".into())
            },
            13,
            8
        )
    );
    assert_eq!(
        problem(&step("op = \"dma_map\"\nmap = \"b1\"\niova = -1")).0,
        Problem::NegativeSize {
            field: "iova",
            value: -1
        }
    );
    assert_eq!(
        problem(&step(
            "op = \"dma_map\"\nmap = \"b1\"\niova = \"0xfffffffffffff000\"\nlen = \"8K\""
        ))
        .0,
        Problem::RangeOverflow {
            key: "iova",
            offset: 0xffff_ffff_ffff_f000,
            len: 8192
        }
    );
    // issue 17: the message names the key that overflows, not `offset`
    let msg = any_err(&step(
        "op = \"dma_map\"\nmap = \"b1\"\niova = \"0xfffffffffffff000\"\nlen = \"8K\"",
    ));
    assert!(
        msg.contains("`iova` 0xfffffffffffff000 + `len` 8K") || msg.contains("`iova`"),
        "{msg}"
    );
    assert!(!msg.contains("`offset`"), "{msg}");
    assert_eq!(
        problem(&step(
            "op = \"dma_unmap\"\niova = \"0xfffffffffffff000\"\nlen = \"8K\""
        )),
        (
            Problem::RangeOverflow {
                key: "iova",
                offset: 0xffff_ffff_ffff_f000,
                len: 8192
            },
            13,
            7
        )
    );
    assert!(matches!(
        problem(&step(
            "op = \"kvm_memslot\"\nslot = 0\ngpa = \"0xffffffffffffffff\"\nmap = \"b1\"\nlen = 2"
        ))
        .0,
        Problem::RangeOverflow { .. }
    ));
    assert!(matches!(
        problem(&step(
            "op = \"guest_touch\"\ngpa = \"0xffffffffffffffff\"\nlen = 2"
        ))
        .0,
        Problem::RangeOverflow { .. }
    ));
    assert_eq!(
        problem(&step("op = \"guest_touch\"\ngpa = 0\nlen = 1\nstride = 0")),
        (Problem::ZeroStride, 14, 10)
    );
    assert_eq!(
        problem(&step("op = \"mremap\"\nmap = \"b1\"\nnew_len = \"1X\"")).0,
        Problem::BadSize {
            field: "new_len",
            source: hugepfn_units::ParseSizeError::Invalid("1X".into())
        }
    );
    assert!(matches!(
        problem(&step("op = \"mremap\"\nmap = \"b1\"\nva = \"align:3M\"")).0,
        Problem::BadPlacement(_)
    ));
    assert!(matches!(
        problem(&step("op = \"madvise\"\nmap = \"b1\"\nadvice = \"cold\"\noffset = \"2G\"\nlen = \"0xffffffffffffffff\"")).0,
        Problem::RangeOverflow { .. }
    ));
    assert!(matches!(
        problem(&step(
            "op = \"mprotect\"\nmap = \"b1\"\nprot = \"read\"\noffset = \"z\""
        ))
        .0,
        Problem::BadSize {
            field: "offset",
            ..
        }
    ));
    assert_eq!(
        problem(&step(
            "op = \"kvm_memslot\"\nslot = 0\ngpa = 0\nmap = \"b1\"\nflags = [\"readonly\", \"readonly\"]"
        )),
        (
            Problem::DuplicateFlag {
                flag: "readonly".into()
            },
            15,
            9
        )
    );
}

/// The parser never panics on mutations of the new-ops example either.
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn check(text: &str) {
        let max_line = text.split('\n').count();
        match parse_scenario(text, "fuzz.toml") {
            Ok(s) => {
                for st in &s.steps {
                    assert!((1..=max_line).contains(&st.line()), "{st:?}");
                }
            }
            Err(e) => {
                if let Some(at) = e.location() {
                    assert!(at.line <= max_line, "{e}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_new_ops_example(
            cuts in proptest::collection::vec((any::<usize>(), 0usize..30, "[\\[\\]{}=\"#,.\\n0-9a-z:+_ -]{0,10}"), 1..4)
        ) {
            let mut text: Vec<char> = EXAMPLE_NEW_OPS.chars().collect();
            for (at, len, ins) in &cuts {
                let at = at % (text.len() + 1);
                let end = (at + len).min(text.len());
                text.splice(at..end, ins.chars());
            }
            check(&text.into_iter().collect::<String>());
        }
    }
}

#[test]
fn kernel_bugs_name_known_bugs_only() {
    let s = parse_scenario(
        &format!(
            "kernel_bugs = [\"mremap_pud_clear_bad\"]\n{}",
            step("op = \"touch\"\nmap = \"b1\"")
        ),
        "k.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.kernel_bugs,
        vec![crate::scenario::KernelBug::MremapPudClearBad]
    );
    let plain = parse_scenario(&step("op = \"touch\"\nmap = \"b1\""), "k.toml").unwrap();
    assert!(plain.kernel_bugs.is_empty(), "no bug unless asked");
    let (msg, line) = toml_err(&format!(
        "kernel_bugs = [\"no_such_bug\"]\n{}",
        step("op = \"touch\"\nmap = \"b1\"")
    ));
    assert_eq!(line, 1);
    assert!(msg.contains("mremap_pud_clear_bad"), "{msg}");
}

#[test]
fn kernel_key_names_a_modelled_kernel_and_lists_them_otherwise() {
    let touch = step("op = \"touch\"\nmap = \"b1\"");
    let s = parse_scenario(&format!("kernel = \"7.3.4\"\n{touch}"), "k.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.kernel, Some(crate::scenario::Kernel::V7_3_4));
    let plain = parse_scenario(&touch, "k.toml").unwrap();
    assert_eq!(plain.kernel, None, "absent: the corrected design");
    let msg = any_err(&format!("kernel = \"6.12\"\n{touch}"));
    assert!(msg.starts_with("k.toml:1:10: `kernel`"), "{msg}");
    for v in ["6.12.95", "6.12.117", "7.3.4"] {
        assert!(msg.contains(v), "{msg}");
    }
    let e = parse_scenario(&format!("kernel = \"6.12\"\n{touch}"), "k.toml").unwrap_err();
    assert!(e.to_string().contains("unknown kernel `6.12`"), "{e}");
}

#[test]
fn on_kernel_overrides_only_the_checks_it_names() {
    let text = step(
        "op = \"expect\"\nfaults = 1024\nsigbus = 0\non_kernel.\"7.3.4\" = { faults = 524288 }\non_kernel.\"6.12.117\" = { sigbus = 1 }",
    );
    let s = parse_scenario(&text, "k.toml").unwrap_or_else(|e| panic!("{e}"));
    let Some(Step::Expect(e)) = s.steps.last() else {
        panic!("expect step")
    };
    use crate::scenario::Kernel;
    let k7 = e.spec_for(Some(Kernel::V7_3_4));
    assert_eq!((k7.faults, k7.sigbus), (Some(524288), Some(0)));
    let k117 = e.spec_for(Some(Kernel::V6_12_117));
    assert_eq!((k117.faults, k117.sigbus), (Some(1024), Some(1)));
    assert_eq!(e.spec_for(None), e.expect);
    assert_eq!(e.spec_for(Some(Kernel::V6_12_95)), e.expect);
    // unknown kernels and nested keys are refused where they stand
    let msg = any_err(&step(
        "op = \"expect\"\nfaults = 1\non_kernel.\"9.9.9\" = { faults = 2 }",
    ));
    assert!(msg.contains("unknown kernel `9.9.9`"), "{msg}");
    let msg = any_err(&step(
        "op = \"expect\"\nfaults = 1\non_kernel.\"7.3.4\" = { process = \"main\" }",
    ));
    assert!(msg.contains("on_kernel"), "{msg}");
    let msg = any_err(&step(
        "op = \"expect\"\non_kernel.\"7.3.4\" = { fault = 2 }",
    ));
    assert!(msg.contains("fault"), "{msg}");
}

#[test]
fn an_arch_kernel_key_holds_that_architectures_measured_checks() {
    let text = step(
        "op = \"expect\"\nfaults = 2\nsigbus = 0\nleaves = { pud = 2 }\non_kernel.\"7.3.4\" = { faults = 4 }\non_kernel.\"arm64:7.3.4\" = { faults = 1024 }",
    );
    let s = parse_scenario(&text, "k.toml").unwrap_or_else(|e| panic!("{e}"));
    let Some(Step::Expect(e)) = s.steps.last() else {
        panic!("expect step")
    };
    use crate::scenario::Kernel;
    use hugepfn_units::arch::Arch;
    let k7 = Some(Kernel::V7_3_4);
    assert_eq!(e.on_arch.len(), 1);
    // on its own architecture the entry is not used
    assert_eq!(e.spec_on(None, k7), e.spec_for(k7));
    assert_eq!(e.spec_for(k7).faults, Some(4));
    // on arm64: the entry over 7.3.4's measured checks; the leaves are x86-64's, not checked
    let a = e.spec_on(Some(Arch::Arm64), k7);
    assert_eq!((a.faults, a.sigbus, a.leaves), (Some(1024), Some(0), None));
    // no entry for that kernel: its measured checks
    let b = e.spec_on(Some(Arch::Arm64), Some(Kernel::V6_12_117));
    assert_eq!((b.faults, b.sigbus, b.leaves), (Some(2), Some(0), None));
    let msg = any_err(&step(
        "op = \"expect\"\non_kernel.\"mips:7.3.4\" = { faults = 2 }",
    ));
    assert!(msg.contains("`mips`"), "{msg}");
    let msg = any_err(&step(
        "op = \"expect\"\non_kernel.\"arm64:9.9\" = { faults = 2 }",
    ));
    assert!(msg.contains("unknown kernel `9.9`"), "{msg}");
}

fn any_err(text: &str) -> String {
    match parse_scenario(text, "k.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn read_proc_and_mincore_parse_and_refuse_what_does_not_fit() {
    let s = parse_scenario(
        &step(
            "op = \"read_proc\"\nfile = \"pagemap\"\nmap = \"b1\"\noffset = \"2M\"\nlen = \"4M\"",
        ),
        "p.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Some(Step::ReadProc(r)) = s.steps.last() else {
        panic!("read_proc")
    };
    assert_eq!(r.file, crate::scenario::ProcFileSpec::Pagemap);
    assert_eq!((r.map.as_deref(), r.offset), (Some("b1"), 2 * MIB));
    let s = parse_scenario(&step("op = \"read_proc\"\nfile = \"smaps\""), "p.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(s.steps.last(), Some(Step::ReadProc(r)) if r.map.is_none()));
    let s = parse_scenario(
        &step("op = \"mincore\"\nmap = \"b1\"\nlen = \"2M\""),
        "p.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(s.steps.last(), Some(Step::Mincore(m)) if m.map == "b1"));
    for (text, want) in [
        ("op = \"read_proc\"\nfile = \"pagemap\"", "needs `map`"),
        (
            "op = \"read_proc\"\nfile = \"smaps\"\nmap = \"b1\"",
            "`map` is for",
        ),
        (
            "op = \"read_proc\"\nfile = \"numa_maps\"\nlen = \"4K\"",
            "`len` is for",
        ),
        ("op = \"read_proc\"\nfile = \"maps\"", "smaps_rollup"),
        ("op = \"mincore\"\nmap = \"nope\"", "nope"),
    ] {
        let msg = any_err(&step(text));
        assert!(msg.contains(want), "{text}: {msg}");
    }
}

/// The /proc-readers example of the crate docs, verbatim.
const DOC_EXAMPLE_PROC: &str = r#"[[step]]
op = "read_proc"           # read /proc/self/FILE in the process (clear_refs: write "1")
file = "pagemap"           # smaps | smaps_rollup | numa_maps | pagemap | clear_refs
map = "b1"                 # pagemap only (required there): the entries of this mapping
offset = "0"               # pagemap only; default 0
len = "2M"                 # pagemap only; default all
[[step]]
op = "mincore"             # mincore(2) of (part of) a mapping
map = "b1"
offset = "0"               # default 0
len = "all"                # default all
[[step]]
op = "expect"
resident = 512             # pages mincore found resident since the previous expect
leaves_zapped = { pud = 2 }  # leaves zapped since the previous expect (the model only)
"#;

#[test]
fn the_documented_proc_example_parses_and_is_in_the_docs() {
    let docs = include_str!("../lib.rs");
    for line in DOC_EXAMPLE_PROC.lines() {
        assert!(
            docs.contains(&format!("//! {line}\n")),
            "not in the crate docs: {line}"
        );
    }
    let sc =
        parse_scenario(&with_map(DOC_EXAMPLE_PROC), "x.toml").unwrap_or_else(|e| panic!("{e}"));
    let ops: Vec<&str> = sc.steps.iter().map(Step::op).collect();
    assert_eq!(ops, ["mmap", "read_proc", "mincore", "expect"]);
    let Some(Step::Expect(e)) = sc.steps.last() else {
        panic!("expect")
    };
    assert_eq!(e.expect.resident, Some(512));
    assert_eq!(e.expect.leaves_zapped.and_then(|l| l.pud), Some(2));
}
