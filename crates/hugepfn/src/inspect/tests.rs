//! inspect against a fake /proc and /sys.

use super::*;

const H100_RESOURCE: &str = "\
0x0000102002000000 0x0000102002ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000100000000000 0x0000101fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000102000000000 0x0000102001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

/// Whether one of `notes` mentions `needle`.
fn noted(notes: &[String], needle: &str) -> bool {
    notes.iter().any(|n| n.contains(needle))
}

struct Fake {
    root: PathBuf,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Fake {
    fn new(tag: &str, maps: &str, release: &str, syspath_in_fdinfo: bool) -> Fake {
        let root =
            std::env::temp_dir().join(format!("hugepfn-inspect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let p = root.join("proc/4242");
        let dev = root.join("sys/bus/pci/devices/0000:00:06.0");
        for d in [
            p.join("fd"),
            p.join("fdinfo"),
            dev.clone(),
            root.join("proc/sys/kernel"),
            root.join("sys/kernel/mm/transparent_hugepage"),
            root.join("sys/bus/pci/drivers/vfio-pci"),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p.join("maps"), maps).expect("maps");
        std::os::unix::fs::symlink("anon_inode:[vfio-device]", p.join("fd/7")).expect("fd");
        std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).expect("fd");
        let info = if syspath_in_fdinfo {
            "pos:\t0\nflags:\t02\nvfio-device-syspath: /sys/devices/pci0000:00/0000:00:06.0\n"
        } else {
            "pos:\t0\nflags:\t02\n"
        };
        std::fs::write(p.join("fdinfo/7"), info).expect("fdinfo");
        std::fs::write(dev.join("resource"), H100_RESOURCE).expect("resource");
        std::os::unix::fs::symlink(
            "../../../../devices/pci0000:00/0000:00:06.0",
            root.join("sys/bus/pci/drivers/vfio-pci/0000:00:06.0"),
        )
        .expect("bound");
        std::fs::write(
            root.join("proc/sys/kernel/osrelease"),
            format!("{release}\n"),
        )
        .expect("rel");
        std::fs::write(
            root.join("sys/kernel/mm/transparent_hugepage/enabled"),
            "[always] madvise never\n",
        )
        .expect("thp");
        Fake { root }
    }

    fn args(&self) -> InspectArgs {
        InspectArgs {
            pid: 4242,
            json: false,
            kernel: None,
            arch: Some(Arch::X86_64),
            proc_root: self.root.join("proc"),
            sys_root: self.root.join("sys"),
        }
    }
}

/// `inspect` of a fake process with `maps` on a kernel `release` (see [`Fake::new`]).
fn inspected(tag: &str, maps: &str, release: &str, syspath_in_fdinfo: bool) -> InspectReport {
    let f = Fake::new(tag, maps, release, syspath_in_fdinfo);
    inspect(&f.args()).expect("inspect")
}

const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234                       /usr/bin/qemu-system-x86_64
7f0000000000-7f2000000000 rw-s 20000000000 00:0e 77                      anon_inode:[vfio-device]
7e0000001000-7e0002001000 rw-s 40000000000 00:0e 77                      anon_inode:[vfio-device]
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";

#[test]
fn maps_lines_parse() {
    let l = parse_maps_line(
        "7f0000000000-7f2000000000 rw-s 20000000000 00:0e 77   anon_inode:[vfio-device]",
    )
    .expect("line");
    assert_eq!(
        (l.start, l.end, l.offset),
        (0x7f00_0000_0000, 0x7f20_0000_0000, 2 << 40)
    );
    assert_eq!(l.path, "anon_inode:[vfio-device]");
    assert!(parse_maps_line("nonsense").is_none());
    assert!(parse_maps_line("2000-1000 rw-s 0 00:00 0").is_none());
}

#[test]
fn nearest_kernels() {
    assert_eq!(
        nearest_kernel("6.12.95+deb12-amd64"),
        (Some(Kernel::V6_12_95), true)
    );
    assert_eq!(
        nearest_kernel("7.3.4+bpo-amd64"),
        (Some(Kernel::V7_3_4), true)
    );
    assert_eq!(nearest_kernel("6.12.50"), (Some(Kernel::V6_12_95), false));
    assert_eq!(nearest_kernel("6.18.3"), (Some(Kernel::V7_3_4), false));
    assert_eq!(nearest_kernel("6.14.1"), (Some(Kernel::V6_12_117), false));
    assert_eq!(nearest_kernel("5.15.0-91-generic"), (None, false));
}

#[test]
fn a_qemu_like_process_on_7_3_4() {
    let r = inspected("q", MAPS, "7.3.4+bpo-amd64", true);
    assert_eq!(
        (r.modelled_as.as_str(), r.exact, r.thp.as_str()),
        ("7.3.4", true, "always")
    );
    assert_eq!(r.devices.len(), 1);
    assert_eq!(r.devices[0].found_by, "fdinfo");
    assert_eq!(r.mappings.len(), 2);
    // BAR2 at a 1 GiB-aligned VA: 128 GiB leaves, one lookup each (7.3.4 batches)
    let a = &r.mappings[0];
    assert_eq!(
        (a.region, a.bar_offset, a.phys, a.skew_1g),
        (2, 0, Some(0x1000_0000_0000), Some(0))
    );
    let p = a.prediction.as_ref().expect("prediction");
    assert_eq!(
        (p.faults, p.leaves.pud, p.dma_lookups),
        (128, 128, Some(128))
    );
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    // BAR4 4 KiB off: every page a PTE, and a note with the fix
    let b = &r.mappings[1];
    assert_eq!(b.region, 4);
    let p = b.prediction.as_ref().expect("prediction");
    assert_eq!((p.faults, p.leaves.pte), (8192, 8192));
    assert!(noted(&b.notes, "align the mmap to 2 MiB"), "{:?}", b.notes);
    let text = format(&r);
    assert!(
        text.contains("BAR2") && text.contains("0000:00:06.0"),
        "{text}"
    );
}

#[test]
fn on_arm64_a_bar_takes_2_mib_leaves_at_best_and_no_1_gib_advice() {
    let f = Fake::new("arm", MAPS, "7.3.4+deb13-arm64", true);
    let r = inspect(&InspectArgs {
        arch: Some(Arch::Arm64),
        ..f.args()
    })
    .expect("inspect");
    assert_eq!(r.arch, Arch::Arm64);
    // BAR2 at a 1 GiB-aligned VA: arm64 has no PUD pfnmaps, so 65,536 PMD leaves
    let a = &r.mappings[0];
    let p = a.prediction.as_ref().expect("prediction");
    assert_eq!((p.faults, p.leaves.pmd, p.leaves.pud), (65_536, 65_536, 0));
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    // BAR4 4 KiB off: the 2 MiB advice still holds
    assert!(noted(&r.mappings[1].notes, "align the mmap to 2 MiB"));
    assert!(
        format(&r).contains("modelled as 7.3.4 on arm64"),
        "{}",
        format(&r)
    );
}

#[test]
fn a_16k_arm64_machine_takes_32_mib_blocks_and_this_machines_page_is_read() {
    let maps = "\
7f0000000000-7f2000000000 rw-s 20000000000 00:0e 77   anon_inode:[vfio-device]
7e0000004000-7e0002004000 rw-s 40000000000 00:0e 77   anon_inode:[vfio-device]
";
    let f = Fake::new("arm16", maps, "7.3.4+deb13-arm64-16k", true);
    let r = inspect(&InspectArgs {
        arch: Some(Arch::Arm64_16k),
        ..f.args()
    })
    .expect("inspect");
    // BAR2, 128 GiB at a 1 GiB-aligned VA: 32 MiB PMD blocks, no PUD pfnmap on arm64
    let p = r.mappings[0].prediction.as_ref().expect("prediction");
    assert_eq!((p.faults, p.leaves.pmd, p.leaves.pud), (4096, 4096, 0));
    // BAR4 16 KiB off: 16 KiB pages, and the fix in the granule's block size
    let b = &r.mappings[1];
    let p = b.prediction.as_ref().expect("prediction");
    assert_eq!((p.faults, p.leaves.pte), (2048, 2048));
    assert!(noted(&b.notes, "align the mmap to 32 MiB"), "{:?}", b.notes);
    assert!(noted(&b.notes, "16 KiB leaves only"), "{:?}", b.notes);
    // the test machine's own page size, from its auxv
    assert_eq!(page_size(), Some(4096));
}

#[test]
fn without_fdinfo_devices_come_from_vfio_pci_and_a_guess_is_said() {
    let maps = "7f0000001000-7f0040001000 rw-s 20000000000 00:0e 77 anon_inode:[vfio-device]\n\
                7f0040001000-7f0080001000 r--s 20040000000 00:0e 77 anon_inode:[vfio-device]\n";
    let r = inspected("g", maps, "6.12.50-amd64", false);
    assert_eq!((r.modelled_as.as_str(), r.exact), ("6.12.95", false));
    assert!(noted(&r.notes, "a guess"), "{:?}", r.notes);
    assert!(noted(&r.notes, "matched"), "{:?}", r.notes);
    assert_eq!(r.devices[0].found_by, "bound to vfio-pci");
    let a = &r.mappings[0];
    assert_eq!(a.skew_1g, Some(4096));
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("(mod 1 GiB)") && n.contains("0x7f0040000000")),
        "{:?}",
        a.notes
    );
    // read-only: no DMA map
    assert_eq!(
        r.mappings[1]
            .prediction
            .as_ref()
            .and_then(|p| p.dma_lookups),
        None
    );
}

#[test]
fn a_split_inside_a_gib_is_reported() {
    let maps = "7f0000000000-7f0000200000 rw-s 20000000000 00:0e 77 anon_inode:[vfio-device]\n\
                7f0000200000-7f0040000000 r--s 20000200000 00:0e 77 anon_inode:[vfio-device]\n";
    let r = inspected("s", maps, "7.3.4", true);
    assert!(
        noted(&r.mappings[0].notes, "split at 0x7f0000200000"),
        "{:?}",
        r.mappings[0].notes
    );
    // two separate mmaps side by side (offsets not contiguous) are not a split
    let maps = "7f0000000000-7f0000200000 rw-s 20000000000 00:0e 77 anon_inode:[vfio-device]\n\
                7f0000200000-7f0040000000 r--s 20040000000 00:0e 77 anon_inode:[vfio-device]\n";
    let r = inspected("s2", maps, "7.3.4", true);
    assert!(
        !noted(&r.mappings[0].notes, "split"),
        "{:?}",
        r.mappings[0].notes
    );
}

#[test]
fn errors_are_typed() {
    let f = Fake::new("e", "garbage line\n", "7.3.4", true);
    match inspect(&f.args()) {
        Err(InspectError::Maps { line: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut a = f.args();
    a.pid = 1;
    assert!(matches!(inspect(&a), Err(InspectError::Read { .. })));
    let f = Fake::new("k", MAPS, "7.3.4", true);
    let mut a = f.args();
    a.kernel = Some("9.9".into());
    assert!(matches!(inspect(&a), Err(InspectError::Kernel(_))));
}
