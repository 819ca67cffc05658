//! The Linux versions hugepfn models, and every behaviour of huge pfnmaps that differs between
//! them: one table of changes ([`CHANGES`]: a commit, the first mainline version that has it, the
//! stable releases it was backported to) and one of known bugs ([`BUGS`]: the versions they are
//! present in, and the function a crash dies in).
//!
//! The model asks a [`Behaviour`] what to do. [`Behaviour::CORRECTED`] is the design the model
//! stands for (no `kernel` key in a scenario): Linux 6.12.95's behaviour, THP sysfs gating
//! included, with every known bug fixed. [`Behaviour::of`] a [`Kernel`] is that kernel as
//! released, its known bugs included; where it is known to crash, the model reports the crash
//! ([`Bug::crash_function`]) and goes on as the corrected design would.
//!
//! Every entry says where it was read (the source tree of the Debian package the lab boots, or
//! the stable tree) and which lab scenario shows it; docs/kernels.md prints this table.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A Linux release number, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// 6 of 6.12.95.
    pub major: u16,
    /// 12 of 6.12.95.
    pub minor: u16,
    /// 95 of 6.12.95 (0 for a mainline release).
    pub patch: u16,
}

impl Version {
    /// `major.minor.patch`.
    pub const fn new(major: u16, minor: u16, patch: u16) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// The same stable series (`6.12.y`).
    pub const fn same_series(self, other: Version) -> bool {
        self.major == other.major && self.minor == other.minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patch == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
        }
    }
}

/// A kernel the model can behave as (`kernel = "..."` in a scenario, `--kernel` on the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kernel {
    /// Linux 6.12 as first released with huge pfnmaps (f9e54c3a2f5b's vfio huge fault, before
    /// both fixes). Model only: no kernel of it is booted in the lab.
    V6_12_0,
    /// Linux 6.13: 09dfc8a5f2ce checks the pfn, the address is still not aligned down. Model
    /// only.
    V6_13_0,
    /// Debian's 6.12.95 (bookworm-backports), the kernel the `lab-*` counts were first measured on.
    V6_12_95,
    /// Debian's 6.12.117 (bookworm).
    V6_12_117,
    /// Debian's 7.3.4 (trixie-backports).
    V7_3_4,
}

/// An unknown `kernel` value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown kernel `{given}`: the model knows {}", Kernel::accepted())]
pub struct UnknownKernel {
    /// What was given.
    pub given: String,
}

impl Kernel {
    /// Every kernel the model knows, oldest first.
    pub const ALL: [Kernel; 5] = [
        Kernel::V6_12_0,
        Kernel::V6_13_0,
        Kernel::V6_12_95,
        Kernel::V6_12_117,
        Kernel::V7_3_4,
    ];

    /// The kernels the lab boots (Debian packages), in the order their columns are printed.
    pub const LAB: [Kernel; 3] = [Kernel::V6_12_95, Kernel::V6_12_117, Kernel::V7_3_4];

    /// The release number.
    pub const fn version(self) -> Version {
        match self {
            Kernel::V6_12_0 => Version::new(6, 12, 0),
            Kernel::V6_13_0 => Version::new(6, 13, 0),
            Kernel::V6_12_95 => Version::new(6, 12, 95),
            Kernel::V6_12_117 => Version::new(6, 12, 117),
            Kernel::V7_3_4 => Version::new(7, 3, 4),
        }
    }

    /// The name scenarios and the CLI use: `"6.12.95"`.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::V6_12_0 => "6.12.0",
            Kernel::V6_13_0 => "6.13.0",
            Kernel::V6_12_95 => "6.12.95",
            Kernel::V6_12_117 => "6.12.117",
            Kernel::V7_3_4 => "7.3.4",
        }
    }

    /// The Debian package the lab boots for it (`None`: model only).
    pub const fn debian_package(self) -> Option<&'static str> {
        match self {
            Kernel::V6_12_0 | Kernel::V6_13_0 => None,
            Kernel::V6_12_95 => Some("linux-image-6.12.95+deb12-amd64-unsigned"),
            Kernel::V6_12_117 => Some("linux-image-6.12.117+deb12-amd64-unsigned"),
            Kernel::V7_3_4 => Some("linux-image-7.3.4+deb13-amd64"),
        }
    }

    /// Debian's arm64 package of this release that the arm64 lab boots (`None`: none; the
    /// research recipe `kernel-lab-arm64` booted these two). 6.12.117 for arm64 is trixie's,
    /// 7.3.4 trixie-backports' (a meta package over `linux-binary-…` and `linux-modules-…`).
    pub const fn debian_package_arm64(self) -> Option<&'static str> {
        match self {
            Kernel::V6_12_117 => Some("linux-image-6.12.117+deb13-arm64-unsigned"),
            Kernel::V7_3_4 => Some("linux-image-7.3.4+deb13-arm64"),
            _ => None,
        }
    }

    /// Debian's arm64 package of this release built with 16 KiB pages (the `arm64-16k`
    /// flavour: CONFIG_ARM64_16K_PAGES, 48-bit VA), which the arm64 lab boots for
    /// `arm64-16k:` kernels. 6.12.117's is trixie's, 7.3.4's trixie-backports' meta package.
    pub const fn debian_package_arm64_16k(self) -> Option<&'static str> {
        match self {
            Kernel::V6_12_117 => Some("linux-image-6.12.117+deb13-arm64-16k-unsigned"),
            Kernel::V7_3_4 => Some("linux-image-7.3.4+deb13-arm64-16k"),
            _ => None,
        }
    }

    /// The apt suite that has [`Kernel::debian_package`] (added to apt's sources by the lab,
    /// on the mirror this machine is configured with).
    pub const fn debian_suite(self) -> Option<&'static str> {
        match self {
            Kernel::V6_12_0 | Kernel::V6_13_0 => None,
            Kernel::V6_12_95 => Some("bookworm-backports"),
            Kernel::V6_12_117 => Some("bookworm"),
            Kernel::V7_3_4 => Some("trixie-backports"),
        }
    }

    /// The kernel whose Debian package is `pkg` (`linux-image-7.3.4+deb13-amd64`).
    pub fn from_package(pkg: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.debian_package() == Some(pkg))
    }

    /// The kernel whose `uname -r` is `release` (`7.3.4+deb13-amd64`).
    pub fn from_release(release: &str) -> Option<Kernel> {
        let ver: String = release
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Kernel::LAB.into_iter().find(|k| k.name() == ver)
    }

    /// `"6.12.0", "6.13.0" (model only), "6.12.95", "6.12.117" or "7.3.4"`.
    pub fn accepted() -> String {
        let names: Vec<String> = Kernel::ALL
            .iter()
            .map(|k| {
                if k.debian_package().is_some() {
                    format!("\"{}\"", k.name())
                } else {
                    format!("\"{}\" (model only)", k.name())
                }
            })
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = UnknownKernel;
    fn from_str(s: &str) -> Result<Kernel, UnknownKernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKernel {
                given: s.to_string(),
            })
    }
}

impl serde::Serialize for Kernel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A commit that changed what huge pfnmaps do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// 09dfc8a5f2ce: `vfio_pci_mmap_huge_fault` falls back unless the pfn is order-aligned.
    VfioHugeFaultChecksPfn,
    /// c1d9dac0db16: `vfio_pci_mmap_huge_fault` aligns the address down to the order.
    VfioHugeFaultAlignsToOrder,
    /// The THP sysfs mode no longer gates huge faults of VM_PFNMAP VMAs (only MADV_NOHUGEPAGE and
    /// the prctl do).
    ThpSysfsIgnoredForPfnmap,
    /// 0fd06844de5d: vfio type1 `vaddr_get_pfns` takes `addr_mask` from
    /// `follow_pfnmap_start` and maps a whole host leaf per lookup.
    Type1BatchesByAddrMask,
    /// f8e97613fed2: `pfnmap_track()` replaces VM_PAT tracking.
    PfnmapTrack,
    /// `__get_unmapped_area` THP-aligns anonymous mappings only (`&& !file`): a device-fd mmap
    /// with no hint no longer gets a 2 MiB-aligned, offset-congruent VA.
    NoThpAlignForFileMappings,
    /// `mincore` walks VM_PFNMAP VMAs (`walk_page_range_vma` and a `pud_entry`) and reports
    /// their mapped pages resident, where 6.12 skipped them as holes (0).
    MincoreWalksPfnmap,
    /// d23cb648e365: an MREMAP_FIXED move that keeps the length moves every VMA of the range.
    MremapMovesMultipleVmas,
    /// The RFC's huge `remap_pfn_range` (PUD/PMD leaves where alignment allows): in no Linux
    /// release (Yin Tirui's PMD-only RFC of 2025 was not merged); the corrected design has it.
    HugeRemapPfnRange,
}

/// One row of [`CHANGES`].
#[derive(Debug, Clone, Copy)]
pub struct ChangeInfo {
    /// Which change.
    pub change: Change,
    /// Its key in reports and docs.
    pub key: &'static str,
    /// The commit (12 hex digits) and its subject.
    pub commit: &'static str,
    /// Its subject line.
    pub subject: &'static str,
    /// The first mainline release with it.
    pub mainline: Version,
    /// The first release of each stable series it was backported to.
    pub stable: &'static [Version],
    /// In the corrected design whatever the version: a bug fix, or the RFC's huge
    /// `remap_pfn_range`; `false`: a change of behaviour the corrected design takes from
    /// [`Behaviour::CORRECTED_BASE`].
    pub fix: bool,
    /// What it changes, as a user sees it.
    pub effect: &'static str,
    /// Where it was read.
    pub source: &'static str,
    /// The lab scenario that shows it.
    pub lab: &'static str,
}

impl ChangeInfo {
    /// Whether release `v` has it.
    pub fn in_version(&self, v: Version) -> bool {
        v >= self.mainline
            || self
                .stable
                .iter()
                .any(|s| s.same_series(v) && v.patch >= s.patch)
    }
}

/// Every change the model knows, in the order of their mainline release.
pub const CHANGES: &[ChangeInfo] = &[
    ChangeInfo {
        change: Change::VfioHugeFaultChecksPfn,
        key: "vfio_huge_fault_checks_pfn",
        commit: "09dfc8a5f2ce",
        subject: "vfio/pci: Fallback huge faults for unaligned pfn",
        mainline: Version::new(6, 13, 0),
        stable: &[Version::new(6, 12, 10)],
        fix: true,
        effect: "a BAR whose pfn is not aligned to the fault's order gets smaller leaves instead of a leaf mapping the wrong memory (bug 219619)",
        source: "drivers/vfio/pci/vfio_pci_core.c vfio_pci_mmap_huge_fault",
        lab: "regress-09dfc8a5f2ce-unaligned-pfn (model only: the lab's BAR is 1 GiB aligned)",
    },
    ChangeInfo {
        change: Change::VfioHugeFaultAlignsToOrder,
        key: "vfio_huge_fault_aligns_to_order",
        commit: "c1d9dac0db16",
        subject: "vfio/pci: Align huge faults to order",
        mainline: Version::new(6, 15, 0),
        stable: &[Version::new(6, 12, 29)],
        fix: true,
        effect: "a fault anywhere inside an aligned 2 MiB / 1 GiB block maps the whole block; before it only a fault at the block's first byte did, the others fell back to 4 KiB",
        source: "drivers/vfio/pci/vfio_pci_core.c vfio_pci_mmap_huge_fault",
        lab: "lab-predict-va_skew4K_off4K, regress-c1d9dac0db16-align-to-order",
    },
    ChangeInfo {
        change: Change::Type1BatchesByAddrMask,
        key: "type1_batches_by_addr_mask",
        commit: "0fd06844de5d",
        subject: "vfio/type1: Use mapping page mask for pfnmaps",
        mainline: Version::new(6, 15, 0),
        stable: &[],
        fix: false,
        effect: "VFIO_IOMMU_MAP_DMA of a BAR mapping looks up one host leaf per follow_pfnmap_start (addr_mask) instead of one 4 KiB page: a 128 GiB BAR in 128 lookups instead of 33.5 M",
        source: "drivers/vfio/vfio_iommu_type1.c vaddr_get_pfns, follow_fault_pfn",
        lab: "dma-32g-per-page-vs-batched (model only: the kernel does not count lookups)",
    },
    ChangeInfo {
        change: Change::PfnmapTrack,
        key: "pfnmap_track",
        commit: "f8e97613fed2",
        subject: "mm: convert VM_PFNMAP tracking to pfnmap_track() + pfnmap_untrack()",
        mainline: Version::new(6, 16, 0),
        stable: &[],
        fix: false,
        effect: "PAT memtype tracking of remap_pfn_range moves from VM_PAT to pfnmap_track(); nothing a vfio BAR mapping (fault-backed, never remap_pfn_range) shows",
        source: "mm/memory.c remap_pfn_range, arch/x86/mm/pat/memtype.c",
        lab: "none: no observable difference for vfio BARs",
    },
    ChangeInfo {
        change: Change::ThpSysfsIgnoredForPfnmap,
        key: "thp_sysfs_ignored_for_pfnmap",
        commit: "e384abeb559d",
        subject: "mm/huge_memory: bypass THP tuneables for huge pfnmap mappings",
        mainline: Version::new(7, 3, 0),
        stable: &[Version::new(6, 12, 115)],
        fix: false,
        effect: "the sysfs transparent_hugepage/enabled mode (never, or madvise without MADV_HUGEPAGE) no longer keeps a vfio BAR at 4 KiB: only MADV_NOHUGEPAGE does",
        source: "mm/huge_memory.c __thp_vma_allowable_orders",
        lab: "lab-2g-va_1G_thp_never, lab-2g-va_1G_thp_madvise, lab-4g-va_1G_thp_never, lab-2g-kernel_va_thp_never (2 faults instead of 524288 at a 1 GiB-aligned VA)",
    },
    ChangeInfo {
        change: Change::NoThpAlignForFileMappings,
        key: "no_thp_align_for_file_mappings",
        commit: "34d7cf637c43",
        subject: "mm: don't try THP alignment for FS without get_unmapped_area",
        mainline: Version::new(6, 13, 0),
        stable: &[],
        fix: false,
        effect: "mmap of a vfio BAR with no address hint: 6.12 pads the search and returns a VA congruent with the BAR offset modulo 2 MiB when the length is a multiple of 2 MiB (PMD leaves); 7.3 returns the plain top-down VA, page-granular under ASLR, so 511 in 512 such mappings fault in 4 KiB pages",
        source: "mm/mmap.c __get_unmapped_area (6.12.117: no `!file` test; 7.3.4: `IS_ENABLED(CONFIG_TRANSPARENT_HUGEPAGE) && !file && !addr && IS_ALIGNED(len, PMD_SIZE)`)",
        lab: "lab-2g-kernel_va, lab-2g-kernel_va_again, lab-4g-kernel_va, lab-predict-kernel_va_off4K_len2044M, lab-2g-kernel_va_thp_never (524288 faults instead of 1024 for 2 GiB)",
    },
    ChangeInfo {
        change: Change::MincoreWalksPfnmap,
        key: "mincore_walks_pfnmap",
        commit: "",
        subject: "mm/mincore: do_mincore() walks the VMA with walk_page_range_vma(); mincore_pud_entry()",
        mainline: Version::new(7, 3, 0),
        stable: &[],
        fix: false,
        effect: "mincore on a BAR mapping: 6.12 skips the VM_PFNMAP VMA (walk_page_test) and reports every page not resident; 7.3 walks it and reports 1 for each mapped page, at any leaf size (a PUD leaf through mincore_pud_entry, which stops the walk there: no split)",
        source: "mm/mincore.c do_mincore, mincore_walk_ops (7.3.4: .pud_entry = mincore_pud_entry, walk_page_range_vma; 6.12.117: walk_page_range). The commit was not identified; 7.3 is the first release read, not necessarily the first that has it",
        lab: "lab-proc-pud, lab-proc-pmd, lab-proc-pte (`resident`)",
    },
    ChangeInfo {
        change: Change::MremapMovesMultipleVmas,
        key: "mremap_moves_multiple_vmas",
        commit: "d23cb648e365",
        subject: "mm/mremap: permit mremap() move of multiple VMAs",
        mainline: Version::new(6, 17, 0),
        stable: &[],
        fix: false,
        effect: "mremap(MREMAP_MAYMOVE|MREMAP_FIXED) with the same length over a BAR mapping that mprotect or madvise split into several VMAs: 6.12 refuses it (EFAULT, vma_to_resize: the old range is not inside one VMA); 7.3 moves every VMA, gaps kept (vfio's device file has no get_unmapped_area, so vma_multi_allowed)",
        source: "mm/mremap.c remap_move, vrm_move_only, vma_multi_allowed (7.3.4); vma_to_resize (6.12.117). Found by `hugepfn lab fuzz`",
        lab: "lab-mremap-moves-split-vmas",
    },
    ChangeInfo {
        change: Change::HugeRemapPfnRange,
        key: "huge_remap_pfn_range",
        commit: "",
        subject: "mm: add huge pfnmap support for remap_pfn_range() (RFC v2, 2025-10-16, not merged)",
        mainline: Version::new(u16::MAX, 0, 0),
        stable: &[],
        fix: true,
        effect: "remap_pfn_range installs PUD/PMD leaves where VA and pfn alignment allow; every Linux release installs 4 KiB PTEs only",
        source: "mm/memory.c remap_pfn_range_internal (7.3.4: remap_pte_range only)",
        lab: "none: vfio-pci does not use remap_pfn_range since 6.12",
    },
];

/// The row of `c`.
pub fn change_info(c: Change) -> &'static ChangeInfo {
    CHANGES
        .iter()
        .find(|i| i.change == c)
        .unwrap_or(&CHANGES[0])
}

/// A known Linux bug the model reproduces by name (`kernel_bugs = ["mremap_pud_clear_bad"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bug {
    /// mremap drops PUD leaves as "bad pud" (`get_old_pud` → `pud_none_or_clear_bad`).
    MremapPudClearBad,
    /// A VMA split inside a PUD leaf oopses in `__split_huge_pmd` (`vma_adjust_trans_huge`
    /// splits PMDs only; `mm_find_pmd` walks into the PUD leaf as if it were a table).
    SplitVmaInPudOops,
    /// The generic page walker splits — for a pfnmap: zaps — every PUD leaf a walk with a
    /// `pmd_entry` and no `pud_entry` meets: reading `/proc/PID/smaps`, `smaps_rollup` or
    /// `numa_maps` destroys a BAR's 1 GiB leaves.
    PagewalkSplitsPfnmapPud,
}

/// One row of [`BUGS`].
#[derive(Debug, Clone, Copy)]
pub struct BugInfo {
    /// Which bug.
    pub bug: Bug,
    /// Its key (`kernel_bugs = [...]`, reports).
    pub key: &'static str,
    /// The commit that made the path reachable, and its subject.
    pub introduced_by: &'static str,
    /// The first release with it.
    pub introduced_in: Version,
    /// The commit that fixed it and its first release (`None`: present in every modelled
    /// release after `introduced_in`).
    pub fixed: Option<(&'static str, Version)>,
    /// The function the oops names, for a bug that crashes the kernel.
    pub crash_function: Option<&'static str>,
    /// What happens.
    pub effect: &'static str,
    /// How it was found and confirmed.
    pub evidence: &'static str,
}

impl BugInfo {
    /// Whether release `v` has the bug.
    pub fn in_version(&self, v: Version) -> bool {
        v >= self.introduced_in && self.fixed.is_none_or(|(_, f)| v < f)
    }
}

/// Every known bug.
pub const BUGS: &[BugInfo] = &[
    BugInfo {
        bug: Bug::MremapPudClearBad,
        key: "mremap_pud_clear_bad",
        introduced_by: "75182022a043 (\"mm/x86: support large pfn mappings\") and f9e54c3a2f5b (\"vfio/pci: implement huge_fault support\"): PUD pfnmap leaves reach get_old_pud(), whose pud_none_or_clear_bad() takes an x86 leaf for a bad table",
        introduced_in: Version::new(6, 12, 0),
        fixed: None,
        crash_function: None,
        effect: "mremap of a range holding a 1 GiB leaf prints \"bad pud\" and clears the leaf instead of moving it; the new range refaults",
        evidence: "lab: life-mremap-move-expand-shrink (2 refaults on 6.12.95, 6.12.117 and 7.3.4), guest console `mm/pgtable-generic.c:42: bad pud`; get_old_pud() unchanged in the 7.3.4 source",
    },
    BugInfo {
        bug: Bug::SplitVmaInPudOops,
        key: "split_vma_in_pud_oops",
        introduced_by: "75182022a043 (\"mm/x86: support large pfn mappings\") and f9e54c3a2f5b (\"vfio/pci: implement huge_fault support\"): PUD pfnmap leaves in splittable VMAs, and vma_adjust_trans_huge() has no PUD case",
        introduced_in: Version::new(6, 12, 0),
        fixed: None,
        crash_function: Some("__split_huge_pmd"),
        effect: "munmap / mprotect / mremap that splits a VMA at an address inside a 1 GiB leaf (not 2 MiB aligned) oopses",
        evidence: "lab: vfio-munmap-4k-hole-in-pud oopses on 6.12.95, 6.12.117 and 7.3.4 (__split_huge_pmd <- vma_adjust_trans_huge <- __split_vma <- vms_gather_munmap_vmas on 7.3.4)",
    },
    BugInfo {
        bug: Bug::PagewalkSplitsPfnmapPud,
        key: "pagewalk_splits_pfnmap_pud",
        introduced_by: "75182022a043 (\"mm/x86: support large pfn mappings\") and f9e54c3a2f5b (\"vfio/pci: implement huge_fault support\"): PUD pfnmap leaves in VMAs that walk_page_vma() walks without walk_page_test(); walk_pud_range() calls split_huge_pud() on any PUD leaf of a walk with lower callbacks, and __split_huge_pud() of a special PUD is pudp_huge_clear_flush()",
        introduced_in: Version::new(6, 12, 0),
        fixed: None,
        crash_function: None,
        effect: "reading /proc/PID/smaps, smaps_rollup or numa_maps zaps every 1 GiB leaf of a BAR mapping (TLB flush, MMU-notifier invalidation: KVM drops its EPT entries too); the process refaults each GiB on its next touch. 2 MiB and 4 KiB leaves are untouched",
        evidence: "source: mm/pagewalk.c walk_pud_range (6.12.117 187-193, 7.3.4 216-237), fs/proc/task_mmu.c smap_gather_stats / show_numa_map (walk_page_vma); lab: lab-proc-pud (one refault per GiB after each of smaps, smaps_rollup, numa_maps on 6.12.95, 6.12.117 and 7.3.4)",
    },
];

/// The row of `b`.
pub fn bug_info(b: Bug) -> &'static BugInfo {
    BUGS.iter().find(|i| i.bug == b).unwrap_or(&BUGS[0])
}

impl Bug {
    /// Every bug.
    pub const ALL: [Bug; 3] = [
        Bug::MremapPudClearBad,
        Bug::SplitVmaInPudOops,
        Bug::PagewalkSplitsPfnmapPud,
    ];

    /// The key (`mremap_pud_clear_bad`).
    pub fn key(self) -> &'static str {
        bug_info(self).key
    }

    /// The function an oops of this bug names (`None`: the bug does not crash).
    pub fn crash_function(self) -> Option<&'static str> {
        bug_info(self).crash_function
    }
}

/// Which `vfio_pci_mmap_huge_fault` a kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HugeFaultVersion {
    /// Both fixes (09dfc8a5f2ce and c1d9dac0db16).
    Fixed,
    /// Neither: the address must be order-aligned, the pfn is not checked (6.12.0).
    Original,
    /// 09dfc8a5f2ce only: pfn checked, address not aligned down (6.13).
    PfnChecked,
}

/// Which huge leaves a pfnmap may have ([`Behaviour::pfnmap_leaves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PfnmapLeaves {
    /// `CONFIG_ARCH_SUPPORTS_PMD_PFNMAP`.
    pub pmd: bool,
    /// `CONFIG_ARCH_SUPPORTS_PUD_PFNMAP`.
    pub pud: bool,
}

/// What the model does: the corrected design, or one kernel as released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Behaviour {
    kernel: Option<Kernel>,
    /// The kernel with every known bug fixed (kernel-patches/: `7.3.4+hugepfn`).
    bugs_fixed: bool,
}

impl Behaviour {
    /// The corrected design: 6.12.95's behaviour with every known bug fixed.
    pub const CORRECTED: Behaviour = Behaviour {
        kernel: None,
        bugs_fixed: true,
    };

    /// The kernel on which the corrected design is based.
    pub const CORRECTED_BASE: Kernel = Kernel::V6_12_95;

    /// `kernel` as released, bugs included.
    pub const fn of(kernel: Kernel) -> Behaviour {
        Behaviour {
            kernel: Some(kernel),
            bugs_fixed: false,
        }
    }

    /// `kernel` with every known bug fixed (its other behaviour as released): what Linux
    /// with kernel-patches/ applied does (the lab's `7.3.4+hugepfn`).
    pub const fn fixed(kernel: Kernel) -> Behaviour {
        Behaviour {
            kernel: Some(kernel),
            bugs_fixed: true,
        }
    }

    /// `Some(k)` → [`Behaviour::of`], `None` → [`Behaviour::CORRECTED`].
    pub const fn from_option(kernel: Option<Kernel>) -> Behaviour {
        Behaviour {
            kernel,
            bugs_fixed: kernel.is_none(),
        }
    }

    /// The kernel, `None` for the corrected design.
    pub const fn kernel(self) -> Option<Kernel> {
        self.kernel
    }

    /// Whether the change is in effect. The corrected design has every fix and the
    /// behaviour of [`Behaviour::CORRECTED_BASE`] otherwise.
    pub fn has(self, c: Change) -> bool {
        let info = change_info(c);
        match self.kernel {
            Some(k) => info.in_version(k.version()),
            None => info.fix || info.in_version(Behaviour::CORRECTED_BASE.version()),
        }
    }

    /// Whether the model reproduces the bug (never in the corrected design).
    pub fn has_bug(self, b: Bug) -> bool {
        !self.bugs_fixed
            && self
                .kernel
                .is_some_and(|k| bug_info(b).in_version(k.version()))
    }

    /// The known bugs this behaviour has.
    pub fn bugs(self) -> impl Iterator<Item = Bug> {
        Bug::ALL.into_iter().filter(move |b| self.has_bug(*b))
    }

    /// Whether the THP sysfs mode gates huge faults of VM_PFNMAP VMAs.
    pub fn thp_sysfs_gates_pfnmap(self) -> bool {
        !self.has(Change::ThpSysfsIgnoredForPfnmap)
    }

    /// The `vfio_pci_mmap_huge_fault` that runs.
    pub fn huge_fault(self) -> HugeFaultVersion {
        match (
            self.has(Change::VfioHugeFaultChecksPfn),
            self.has(Change::VfioHugeFaultAlignsToOrder),
        ) {
            (_, true) => HugeFaultVersion::Fixed,
            (true, false) => HugeFaultVersion::PfnChecked,
            (false, false) => HugeFaultVersion::Original,
        }
    }

    /// Whether `dma_map` batches by `addr_mask` when the scenario does not say: `None` for the
    /// corrected design (the file's `mode`, batched by default).
    pub fn type1_batches(self) -> Option<bool> {
        self.kernel
            .map(|_| self.has(Change::Type1BatchesByAddrMask))
    }

    /// Whether `get_unmapped_area` THP-aligns a file mapping with no hint (6.12).
    pub fn thp_aligns_file_mappings(self) -> bool {
        !self.has(Change::NoThpAlignForFileMappings)
    }

    /// Whether `mincore` walks VM_PFNMAP VMAs (7.3) instead of skipping them (6.12).
    pub fn mincore_walks_pfnmap(self) -> bool {
        self.has(Change::MincoreWalksPfnmap)
    }

    /// Whether an MREMAP_FIXED move of the same length may span several VMAs (6.17+).
    pub fn mremap_moves_multiple_vmas(self) -> bool {
        self.has(Change::MremapMovesMultipleVmas)
    }

    /// The pfnmap leaves the architecture's Kconfig allows in this kernel
    /// (`ARCH_SUPPORTS_PMD_PFNMAP` = `ARCH_SUPPORTS_HUGE_PFNMAP` && `HAVE_ARCH_TRANSPARENT_HUGEPAGE`,
    /// `ARCH_SUPPORTS_PUD_PFNMAP` = … && `HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD`, mm/Kconfig), as
    /// read in the 6.12.117 and 7.3.4 sources:
    /// - x86-64 selects all three in both: PMD and PUD;
    /// - arm64 selects `ARCH_SUPPORTS_HUGE_PFNMAP` and THP but not THP_PUD in both: PMD only
    ///   (a Grace host maps a BAR with 2 MiB blocks at best);
    /// - riscv selects THP only in 6.12 (4 KiB pfnmaps); 7.3 adds `ARCH_SUPPORTS_HUGE_PFNMAP` and
    ///   THP_PUD: PMD and PUD. The model takes 6.12.x as without and 7.x as with (the commit
    ///   between them is not identified).
    ///
    /// The corrected design allows what 7.3's Kconfig allows.
    pub fn pfnmap_leaves(self, arch: hugepfn_units::arch::Arch) -> PfnmapLeaves {
        let seven = self
            .kernel
            .is_none_or(|k| k.version() >= Version::new(7, 0, 0));
        let (pmd, pud) = if arch.is_arm64() {
            (true, false)
        } else if arch.is_riscv() {
            (seven, seven)
        } else {
            (true, true)
        };
        PfnmapLeaves { pmd, pud }
    }

    /// Whether `remap_pfn_range` may install PUD/PMD leaves (the RFC's design).
    pub fn huge_remap_pfn_range(self) -> bool {
        self.has(Change::HugeRemapPfnRange)
    }

    /// The name of what runs: `None` for the corrected design, `"7.3.4"`, or `"7.3.4+hugepfn"`
    /// for a kernel whose known bugs are fixed.
    pub fn name(self) -> Option<String> {
        self.kernel.map(|k| {
            if self.bugs_fixed && Behaviour::of(k).bugs().next().is_some() {
                format!("{k}+hugepfn")
            } else {
                k.name().to_string()
            }
        })
    }

    /// "Linux 7.3.4" or "the corrected design".
    pub fn label(self) -> String {
        match (self.kernel, self.bugs_fixed) {
            (Some(k), false) => format!("Linux {k}"),
            (Some(k), true) => format!("Linux {k} with the known bugs fixed"),
            (None, _) => "the corrected design".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_lists_the_accepted() {
        for k in Kernel::ALL {
            assert_eq!(k.name().parse::<Kernel>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        let e = "6.12".parse::<Kernel>().expect_err("not a full version");
        let msg = e.to_string();
        for k in Kernel::LAB {
            assert!(msg.contains(k.name()), "{msg}");
        }
        assert!(msg.contains("unknown kernel `6.12`"), "{msg}");
    }

    #[test]
    fn stable_backports_count_in_their_series_only() {
        let c = change_info(Change::VfioHugeFaultAlignsToOrder);
        assert!(c.in_version(Version::new(6, 12, 29)));
        assert!(!c.in_version(Version::new(6, 12, 28)));
        assert!(
            !c.in_version(Version::new(6, 13, 30)),
            "6.13.y has no backport"
        );
        assert!(c.in_version(Version::new(7, 3, 4)));
    }

    #[test]
    fn the_corrected_design_has_every_fix_and_no_bug() {
        let b = Behaviour::CORRECTED;
        assert_eq!(b.huge_fault(), HugeFaultVersion::Fixed);
        assert!(b.thp_sysfs_gates_pfnmap());
        assert_eq!(b.type1_batches(), None);
        assert_eq!(b.bugs().count(), 0);
    }

    #[test]
    fn a_fixed_kernel_keeps_its_changes_and_loses_its_bugs() {
        let f = Behaviour::fixed(Kernel::V7_3_4);
        assert_eq!(f.bugs().count(), 0);
        assert!(
            !f.thp_sysfs_gates_pfnmap(),
            "the bypass is a change, not a bug"
        );
        assert!(!f.thp_aligns_file_mappings());
        assert_eq!(Behaviour::of(Kernel::V7_3_4).bugs().count(), Bug::ALL.len());
        assert_eq!(f.label(), "Linux 7.3.4 with the known bugs fixed");
    }

    #[test]
    fn model_only_kernels_run_the_old_huge_fault_handlers() {
        assert_eq!(
            Behaviour::of(Kernel::V6_12_0).huge_fault(),
            HugeFaultVersion::Original
        );
        assert_eq!(
            Behaviour::of(Kernel::V6_13_0).huge_fault(),
            HugeFaultVersion::PfnChecked
        );
        for k in Kernel::LAB {
            assert_eq!(
                Behaviour::of(k).huge_fault(),
                HugeFaultVersion::Fixed,
                "{k}"
            );
        }
    }

    #[test]
    fn kernels_map_to_their_packages_and_releases() {
        for k in Kernel::LAB {
            let pkg = k.debian_package().expect("lab kernel");
            assert_eq!(Kernel::from_package(pkg), Some(k));
        }
        assert_eq!(
            Kernel::from_release("7.3.4+deb13-amd64"),
            Some(Kernel::V7_3_4)
        );
        assert_eq!(
            Kernel::from_release("6.12.95+deb12-amd64"),
            Some(Kernel::V6_12_95)
        );
        assert_eq!(Kernel::from_release("6.1.0-30-amd64"), None);
    }

    #[test]
    fn every_change_and_bug_has_one_row() {
        for c in [
            Change::VfioHugeFaultChecksPfn,
            Change::VfioHugeFaultAlignsToOrder,
            Change::ThpSysfsIgnoredForPfnmap,
            Change::Type1BatchesByAddrMask,
            Change::PfnmapTrack,
            Change::HugeRemapPfnRange,
            Change::NoThpAlignForFileMappings,
            Change::MincoreWalksPfnmap,
            Change::MremapMovesMultipleVmas,
        ] {
            assert_eq!(CHANGES.iter().filter(|i| i.change == c).count(), 1);
        }
        for b in Bug::ALL {
            assert_eq!(BUGS.iter().filter(|i| i.bug == b).count(), 1);
        }
    }
}
