//! The validated, strongly typed form of a scenario file.
//!
//! Everything here has already passed [`crate::parse_scenario`]: names are unique, every
//! reference resolves, sizes are numbers. A runner (the model or the real-kernel probe) can use
//! these values without re-checking them.

use std::fmt;
use std::str::FromStr;

use hugepfn_units::counts::{LeafCounts, TableCounts};
use hugepfn_units::{ParseSizeError, format_size, parse_size};
use serde::Deserialize;
use thiserror::Error;

/// A parsed and validated scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// `name = "..."` (required).
    pub name: String,
    /// Where the text came from (a path, or whatever the caller passed as `origin`).
    pub origin: String,
    /// `arch`, default [`Arch::X86_64`].
    pub arch: Arch,
    /// `thp` (the sysfs `transparent_hugepage/enabled` mode), default [`ThpMode::Always`].
    pub thp: ThpMode,
    /// `fault_path`: which of the RFC's three fault-path designs the model runs (the real kernel
    /// always runs `huge_fault`), default [`FaultPathSpec::HugeFault`].
    pub fault_path: FaultPathSpec,
    /// `kernel`: the Linux version the model behaves as, its known bugs included (`None`: the
    /// corrected design, 6.12.95 with every known bug fixed). `--kernel` overrides it; the
    /// real-kernel probe ignores it.
    pub kernel: Option<Kernel>,
    /// `kernel_bugs`: known Linux bugs the model reproduces for this scenario on top of those of
    /// `kernel`, so that a lab scenario can match the real kernel step by step while the model's
    /// default (every bug fixed) is shown by its own tests. Empty by default; the real-kernel
    /// probe ignores it.
    pub kernel_bugs: Vec<KernelBug>,
    /// `memory`: the size of the model's simulated memory (page tables, IOMMU and EPT tables,
    /// CoW copies), `None` = the default, 4 GiB. A run that uses it up stops at that step with
    /// `ENOMEM` and says so. `--memory` overrides it; the real-kernel probe ignores it.
    pub memory: Option<u64>,
    /// Optional free text.
    pub description: Option<String>,
    /// `[[device]]` tables, in file order. Names are unique.
    pub devices: Vec<DeviceSpec>,
    /// `[[step]]` tables, in file order.
    pub steps: Vec<Step>,
}

impl Scenario {
    /// The device called `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceSpec> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The `mmap` step that creates the mapping called `name`.
    pub fn mapping(&self, name: &str) -> Option<&MmapStep> {
        self.steps.iter().find_map(|s| match s {
            Step::Mmap(m) if m.name == name => Some(m),
            _ => None,
        })
    }
}

pub use hugepfn_units::arch::Arch;

/// `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThpMode {
    /// Huge mappings unless the VMA has `MADV_NOHUGEPAGE`.
    #[default]
    Always,
    /// Huge mappings only for VMAs with `MADV_HUGEPAGE`.
    Madvise,
    /// Never huge: 4 KiB PTEs only.
    Never,
}

/// `fault_path = "huge_fault" | "early_fault" | "remap_overwrite"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPathSpec {
    /// Linux 6.12's `vm_ops->huge_fault`.
    #[default]
    HugeFault,
    /// The RFC's VM_HUGEPFNMAP flag: the driver is called before PUD/PMD tables are allocated.
    EarlyFault,
    /// The driver calls `remap_pfn_range` from `->fault`, overwriting tables.
    RemapOverwrite,
}

/// A known Linux bug the model can reproduce (`kernel_bugs = [...]`): the table is in
/// hugepfn-kernels.
pub use hugepfn_kernels::Bug as KernelBug;
pub use hugepfn_kernels::Kernel;

/// One `[[device]]`: a PCI function whose BARs can be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Unique name, referenced by steps.
    pub name: String,
    /// Line of the `[[device]]` table.
    pub line: usize,
    /// BARs in file order; indices are unique.
    pub bars: Vec<BarSpec>,
}

impl DeviceSpec {
    /// The BAR with this index.
    pub fn bar(&self, index: u8) -> Option<&BarSpec> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// One memory BAR. Invariants (checked by the parser): `index <= 5`, `phys` is 4 KiB aligned,
/// `size > 0`, `phys + size` does not overflow 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarSpec {
    /// BAR index 0..=5.
    pub index: u8,
    /// Physical (bus) address of the BAR.
    pub phys: u64,
    /// Size in bytes.
    pub size: u64,
}

impl BarSpec {
    /// One past the last byte of the BAR (cannot overflow, see the invariants).
    pub fn end(&self) -> u64 {
        self.phys.saturating_add(self.size)
    }
}

/// A length that defaults to "the rest" (of the BAR for `mmap`, of the mapping for `touch` and
/// `munmap`), counted from the step's `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Len {
    /// `"all"` or absent.
    #[default]
    All,
    /// An explicit byte count.
    Bytes(u64),
}

impl Len {
    /// The byte count, where `rest` is what `All` stands for.
    pub fn resolve(self, rest: u64) -> u64 {
        match self {
            Len::All => rest,
            Len::Bytes(n) => n,
        }
    }
}

impl fmt::Display for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Len::All => f.write_str("all"),
            Len::Bytes(n) => f.write_str(&format_size(*n)),
        }
    }
}

/// Where `mmap` puts the mapping (`va = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VaPlacement {
    /// `"kernel"`: `mmap(NULL, ...)`, the kernel's `get_unmapped_area` chooses.
    #[default]
    Kernel,
    /// `"align:SIZE"` / `"align:SIZE+SKEW"`: MAP_FIXED at a SIZE-aligned VA plus SKEW (the lab's
    /// `align=`/`skew=`; SKEW may be >= SIZE, e.g. `align:1G+1G`). SIZE is a power of two.
    Align {
        /// Alignment, a power of two.
        size: u64,
        /// Added to the aligned address.
        skew: u64,
    },
    /// `"congruent:SIZE"`: a VA congruent to the physical address of the mapped BAR offset,
    /// modulo SIZE (a power of two), i.e. the best VA for leaves up to SIZE.
    Congruent {
        /// Modulus, a power of two.
        size: u64,
    },
    /// `"0x7f0000000000"` (or any size/address string, or a TOML integer): MAP_FIXED here.
    Fixed(u64),
}

/// Why a `va` string is not a placement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    /// Not `kernel`, `align:`, `congruent:` nor an address.
    #[error(
        "`{0}` is not a VA placement: expected \"kernel\", \"align:SIZE\", \"align:SIZE+SKEW\", \"congruent:SIZE\" or an address like \"0x7f0000000000\""
    )]
    Unrecognized(String),
    /// A SIZE, SKEW or address part did not parse.
    #[error("VA placement `{value}`: {source}")]
    BadNumber {
        /// The whole `va` string.
        value: String,
        /// What `parse_size` said about the part.
        source: ParseSizeError,
    },
    /// The SIZE of `align:` / `congruent:` is not a power of two (or is zero).
    #[error(
        "VA placement `{value}`: {} is not a power of two (the alignment must be 4K, 2M, 1G, ...)",
        format_size(*size)
    )]
    NotPowerOfTwo {
        /// The whole `va` string.
        value: String,
        /// The offending SIZE.
        size: u64,
    },
}

impl FromStr for VaPlacement {
    type Err = PlacementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let num = |part: &str| {
            parse_size(part).map_err(|source| PlacementError::BadNumber {
                value: t.to_string(),
                source,
            })
        };
        let pow2 = |size: u64| {
            if size.is_power_of_two() {
                Ok(size)
            } else {
                Err(PlacementError::NotPowerOfTwo {
                    value: t.to_string(),
                    size,
                })
            }
        };
        if t == "kernel" {
            return Ok(VaPlacement::Kernel);
        }
        if let Some(rest) = t.strip_prefix("align:") {
            let (size, skew) = match rest.split_once('+') {
                Some((size, skew)) => (num(size)?, num(skew)?),
                None => (num(rest)?, 0),
            };
            return Ok(VaPlacement::Align {
                size: pow2(size)?,
                skew,
            });
        }
        if let Some(rest) = t.strip_prefix("congruent:") {
            return Ok(VaPlacement::Congruent {
                size: pow2(num(rest)?)?,
            });
        }
        if t.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(VaPlacement::Fixed(num(t)?));
        }
        Err(PlacementError::Unrecognized(t.to_string()))
    }
}

impl fmt::Display for VaPlacement {
    /// The canonical spelling, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VaPlacement::Kernel => f.write_str("kernel"),
            VaPlacement::Align { size, skew: 0 } => write!(f, "align:{}", format_size(size)),
            VaPlacement::Align { size, skew } => {
                write!(f, "align:{}+{}", format_size(size), format_size(skew))
            }
            VaPlacement::Congruent { size } => write!(f, "congruent:{}", format_size(size)),
            VaPlacement::Fixed(va) => write!(f, "{va:#x}"),
        }
    }
}

/// `madvise` advice applied right after `mmap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Madvise {
    /// `MADV_HUGEPAGE`.
    Hugepage,
    /// `MADV_NOHUGEPAGE`.
    Nohugepage,
}

/// How `touch` accesses each stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Load.
    Read,
    /// Store (the lab's default `touch=rw` writes then reads the same byte; the read never
    /// faults again, so `write` stands for it).
    #[default]
    Write,
}

/// The direction of a `touch` pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Lowest address first.
    #[default]
    Forward,
    /// Highest address first.
    Reverse,
}

/// PCI power state for `power`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// D0 (on).
    D0,
    /// D3hot.
    D3hot,
}

/// An errno name as `strerrorname_np` prints it (`"EINVAL"`), or `"0"` for "no error".
///
/// Only the names Linux defines on x86-64 for the errors these system calls return are
/// accepted (see [`ErrnoName::KNOWN`]), so that a typo is an error at parse time rather than an
/// expectation that can never hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrnoName(&'static str);

impl ErrnoName {
    /// `"0"`: no op failed.
    pub const NONE: ErrnoName = ErrnoName("0");

    /// Every accepted spelling: `"0"`, then `errno-base.h` (1..=34) and the few others that
    /// mm, vfio and KVM ioctls return.
    pub const KNOWN: [&'static str; 41] = [
        "0",
        "EPERM",
        "ENOENT",
        "ESRCH",
        "EINTR",
        "EIO",
        "ENXIO",
        "E2BIG",
        "ENOEXEC",
        "EBADF",
        "ECHILD",
        "EAGAIN",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "ENOTBLK",
        "EBUSY",
        "EEXIST",
        "EXDEV",
        "ENODEV",
        "ENOTDIR",
        "EISDIR",
        "EINVAL",
        "ENFILE",
        "EMFILE",
        "ENOTTY",
        "ETXTBSY",
        "EFBIG",
        "ENOSPC",
        "ESPIPE",
        "EROFS",
        "EMLINK",
        "EPIPE",
        "EDOM",
        "ERANGE",
        "ENOSYS",
        "EOVERFLOW",
        "EOPNOTSUPP",
        "ETIMEDOUT",
        "EHWPOISON",
        "ENOTSUPP",
    ];

    /// The name (`"0"` for none).
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// True for `"0"`.
    pub fn is_none(self) -> bool {
        self.0 == "0"
    }

    /// True when `actual` (a runner's "errno of the last failed op", `None` = no failure)
    /// is this expectation. `Some("0")` counts as no failure.
    pub fn matches(self, actual: Option<&str>) -> bool {
        match actual {
            None => self.is_none(),
            Some(a) => a == self.0,
        }
    }
}

impl FromStr for ErrnoName {
    type Err = String;

    /// Accepts a name of [`ErrnoName::KNOWN`] (exact case); the error is the trimmed input.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        ErrnoName::KNOWN
            .iter()
            .find(|k| **k == t)
            .map(|k| ErrnoName(k))
            .ok_or_else(|| t.to_string())
    }
}

impl<'de> Deserialize<'de> for ErrnoName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|bad| {
            serde::de::Error::custom(format!(
                "`{bad}` is not an errno name (expected \"0\" or a name like \"EINVAL\")"
            ))
        })
    }
}

impl fmt::Display for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `mprotect` protection (`prot = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtSpec {
    /// `PROT_NONE`.
    None,
    /// `PROT_READ`.
    Read,
    /// `PROT_READ | PROT_WRITE` (`"write"`).
    Write,
}

/// `madvise` advice (`advice = ...`), the `MADV_*` names in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advice {
    /// `MADV_DONTNEED`.
    Dontneed,
    /// `MADV_DONTNEED_LOCKED`.
    DontneedLocked,
    /// `MADV_FREE`.
    Free,
    /// `MADV_WIPEONFORK`.
    Wipeonfork,
    /// `MADV_KEEPONFORK`.
    Keeponfork,
    /// `MADV_COLD`.
    Cold,
    /// `MADV_PAGEOUT`.
    Pageout,
    /// `MADV_POPULATE_READ`.
    PopulateRead,
    /// `MADV_POPULATE_WRITE`.
    PopulateWrite,
    /// `MADV_HUGEPAGE`.
    Hugepage,
    /// `MADV_NOHUGEPAGE`.
    Nohugepage,
    /// `MADV_NORMAL`.
    Normal,
    /// `MADV_RANDOM`.
    Random,
    /// `MADV_SEQUENTIAL`.
    Sequential,
    /// `MADV_WILLNEED`.
    Willneed,
    /// `MADV_DONTFORK`.
    Dontfork,
    /// `MADV_DOFORK`.
    Dofork,
    /// `MADV_DONTDUMP`.
    Dontdump,
    /// `MADV_DODUMP`.
    Dodump,
}

/// How vfio type1 walks a PFNMAP range in `vaddr_get_pfns` (`mode = ...` of `dma_map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmaMode {
    /// Linux 6.15+: one `follow_pfnmap_start` per host leaf, using `addr_mask`.
    #[default]
    Batched,
    /// Before 6.15: one `follow_pfnmap_start` per 4 KiB page.
    PerPage,
}

/// A `KVM_SET_USER_MEMORY_REGION` flag (`flags = [...]` of `kvm_memslot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemslotFlag {
    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    LogDirtyPages,
    /// `KVM_MEM_READONLY`.
    Readonly,
}

/// Load order of an `access` step (`pattern = ...`), as `hugepfn-hw` runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessPattern {
    /// Consecutive 8-byte words, wrapping at the end of the range.
    Sequential,
    /// One 8-byte load every `stride` bytes, wrapping (modulo the length).
    Strided,
    /// Uniformly random 8-byte words (a fixed seed).
    Random,
    /// lmbench's `lat_mem_rd -t` chase: 4 KiB pages in random order, `lines` lines per page.
    Chase,
}

impl AccessPattern {
    /// The spelling in scenarios.
    pub fn name(self) -> &'static str {
        match self {
            AccessPattern::Sequential => "sequential",
            AccessPattern::Strided => "strided",
            AccessPattern::Random => "random",
            AccessPattern::Chase => "chase",
        }
    }
}

/// The CPU whose TLBs and caches an `access` step simulates (`cpu = ...`), a `hugepfn-hw`
/// preset. Fixed by the scenario, never taken from the calibration, so that counts are the
/// same on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuSpec {
    /// Intel Golden Cove (Sapphire Rapids), the default.
    #[default]
    GoldenCove,
    /// AMD Zen 4 (EPYC 9004).
    Zen4,
}

impl CpuSpec {
    /// The preset's name in `hugepfn-hw` (`--cpu`).
    pub fn name(self) -> &'static str {
        match self {
            CpuSpec::GoldenCove => "golden-cove",
            CpuSpec::Zen4 => "zen4",
        }
    }
}

/// Per-entry-level counts of page-walk references in an expectation (`walk_refs_by_level`):
/// the per-level type with `None` = not checked. Levels are those of the entries read; with
/// 4-level paging the top entries (the PML4Es) are `p4d`, and `pgd` is only read with 5-level
/// paging.
pub type TableLevelCounts = TableCounts<Option<u64>>;

/// TLB misses in an expectation (`tlb_misses = { l1 = ..., stlb = ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlbMissCounts {
    /// L1 DTLB misses.
    pub l1: Option<u64>,
    /// STLB misses: page walks.
    pub stlb: Option<u64>,
}

/// Per-leaf-level counts in an expectation (1 GiB / 2 MiB / 4 KiB leaves or faults): the
/// per-level type with `None` = not checked.
pub type LevelCounts = LeafCounts<Option<u64>>;

/// What an `expect` step checks; every `None` field is not checked.
///
/// Counters (`faults`, `faults_by_level`, `sigbus`, `sigsegv`, `skipped`) are deltas since the
/// previous `expect` step (or since the start); `leaves` is the state now. See
/// [`crate::check_expect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// Minor faults.
    pub faults: Option<u64>,
    /// Faults by the level of the leaf they installed (the model only).
    pub faults_by_level: Option<LevelCounts>,
    /// Accesses that ended in SIGBUS.
    pub sigbus: Option<u64>,
    /// Accesses that ended in SIGSEGV.
    pub sigsegv: Option<u64>,
    /// Strides that `touch` skipped (unmapped or PROT_NONE).
    pub skipped: Option<u64>,
    /// Leaves mapped now (not a delta).
    pub leaves: Option<LevelCounts>,
    /// The errno of the last failed op since the previous `expect` of the same process;
    /// [`ErrnoName::NONE`] (`"0"`) = every op succeeded.
    pub errno: Option<ErrnoName>,
    /// `follow_pfnmap_start` lookups made by vfio type1 `vaddr_get_pfns` (one per round) since
    /// the previous `expect` (a delta).
    pub dma_lookups: Option<u64>,
    /// IOMMU page-table leaves mapped now, by size (1 GiB / 2 MiB / 4 KiB), all containers.
    pub iommu_entries: Option<LevelCounts>,
    /// EPT violations (second-stage faults) taken by the guest since the previous `expect`.
    pub ept_violations: Option<u64>,
    /// EPT leaves mapped now, by size.
    pub ept_leaves: Option<LevelCounts>,
    /// MMU-notifier invalidations KVM received since the previous `expect`.
    pub mmu_invalidations: Option<u64>,
    /// Loads made by `access` steps since the previous `expect` (counted ones, not warm-up).
    pub loads: Option<u64>,
    /// TLB misses of those loads, by TLB level (deltas).
    pub tlb_misses: Option<TlbMissCounts>,
    /// Memory references of their page walks, both dimensions (a delta).
    pub walk_refs: Option<u64>,
    /// Of those, references to the process's (in a VM: the guest's) page-table entries by
    /// entry level (a delta).
    pub walk_refs_by_level: Option<TableLevelCounts>,
    /// Of those, references to second-stage (EPT) entries (a delta; 0 without `vm`).
    pub walk_refs_ept: Option<u64>,
    /// Walks that found no usable leaf: the load would fault (a delta).
    pub walk_faults: Option<u64>,
    /// Leaves cleared by zaps since the previous `expect` (munmap, revocation, a split of a
    /// pfnmap leaf by a page walk, …), by size (the model only, like `faults_by_level`).
    pub leaves_zapped: Option<LevelCounts>,
    /// Pages `mincore` found resident since the previous `expect` (a delta).
    pub resident: Option<u64>,
}

impl ExpectSpec {
    /// True when the expectation checks nothing (it then only resets the "since" baseline).
    pub fn is_empty(&self) -> bool {
        *self == ExpectSpec::default()
    }

    /// `self` with every check that `over` sets replaced by `over`'s.
    pub fn overlaid(&self, over: &ExpectSpec) -> ExpectSpec {
        ExpectSpec {
            faults: over.faults.or(self.faults),
            faults_by_level: over.faults_by_level.or(self.faults_by_level),
            sigbus: over.sigbus.or(self.sigbus),
            sigsegv: over.sigsegv.or(self.sigsegv),
            skipped: over.skipped.or(self.skipped),
            leaves: over.leaves.or(self.leaves),
            errno: over.errno.or(self.errno),
            dma_lookups: over.dma_lookups.or(self.dma_lookups),
            iommu_entries: over.iommu_entries.or(self.iommu_entries),
            ept_violations: over.ept_violations.or(self.ept_violations),
            ept_leaves: over.ept_leaves.or(self.ept_leaves),
            mmu_invalidations: over.mmu_invalidations.or(self.mmu_invalidations),
            loads: over.loads.or(self.loads),
            tlb_misses: over.tlb_misses.or(self.tlb_misses),
            walk_refs: over.walk_refs.or(self.walk_refs),
            walk_refs_by_level: over.walk_refs_by_level.or(self.walk_refs_by_level),
            walk_refs_ept: over.walk_refs_ept.or(self.walk_refs_ept),
            walk_faults: over.walk_faults.or(self.walk_faults),
            leaves_zapped: over.leaves_zapped.or(self.leaves_zapped),
            resident: over.resident.or(self.resident),
        }
    }
}

/// One `[[step]]`. Every variant carries the line of its `[[step]]` header.
// `Expect` is the largest variant (a dozen optional checks); a scenario has tens of steps,
// parsed once, so boxing it would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `op = "mmap"`.
    Mmap(MmapStep),
    /// `op = "touch"`.
    Touch(TouchStep),
    /// `op = "munmap"`.
    Munmap(MunmapStep),
    /// `op = "memory"`.
    Memory(MemoryStep),
    /// `op = "reset"`.
    Reset(ResetStep),
    /// `op = "power"`.
    Power(PowerStep),
    /// `op = "expect"`.
    Expect(ExpectStep),
    /// `op = "mprotect"`.
    Mprotect(MprotectStep),
    /// `op = "mremap"`.
    Mremap(MremapStep),
    /// `op = "madvise"`.
    Madvise(MadviseStep),
    /// `op = "fork"`.
    Fork(ForkStep),
    /// `op = "dma_map"`.
    DmaMap(DmaMapStep),
    /// `op = "dma_unmap"`.
    DmaUnmap(DmaUnmapStep),
    /// `op = "kvm_memslot"`.
    KvmMemslot(KvmMemslotStep),
    /// `op = "guest_touch"`.
    GuestTouch(GuestTouchStep),
    /// `op = "access"`.
    Access(AccessStep),
    /// `op = "read_proc"`.
    ReadProc(ReadProcStep),
    /// `op = "mincore"`.
    Mincore(MincoreStep),
}

impl Step {
    /// All `op` values, in the order the documentation lists them.
    pub const OPS: [&'static str; 18] = [
        "mmap",
        "touch",
        "munmap",
        "memory",
        "reset",
        "power",
        "expect",
        "mprotect",
        "mremap",
        "madvise",
        "fork",
        "dma_map",
        "dma_unmap",
        "kvm_memslot",
        "guest_touch",
        "access",
        "read_proc",
        "mincore",
    ];

    /// Source line of the step (1-based).
    pub fn line(&self) -> usize {
        match self {
            Step::Mmap(s) => s.line,
            Step::Touch(s) => s.line,
            Step::Munmap(s) => s.line,
            Step::Memory(s) => s.line,
            Step::Reset(s) => s.line,
            Step::Power(s) => s.line,
            Step::Expect(s) => s.line,
            Step::Mprotect(s) => s.line,
            Step::Mremap(s) => s.line,
            Step::Madvise(s) => s.line,
            Step::Fork(s) => s.line,
            Step::DmaMap(s) => s.line,
            Step::DmaUnmap(s) => s.line,
            Step::KvmMemslot(s) => s.line,
            Step::GuestTouch(s) => s.line,
            Step::Access(s) => s.line,
            Step::ReadProc(s) => s.line,
            Step::Mincore(s) => s.line,
        }
    }

    /// The `process = ...` the step names, `None` when it names none (then it acts in the
    /// first process, [`crate::MAIN_PROCESS`]) or cannot name one (`mmap`, `memory`, `reset`,
    /// `power`, `fork`).
    pub fn process(&self) -> Option<&str> {
        match self {
            Step::Touch(s) => s.process.as_deref(),
            Step::Munmap(s) => s.process.as_deref(),
            Step::Expect(s) => s.process.as_deref(),
            Step::Mprotect(s) => s.process.as_deref(),
            Step::Mremap(s) => s.process.as_deref(),
            Step::Madvise(s) => s.process.as_deref(),
            Step::DmaMap(s) => s.process.as_deref(),
            Step::DmaUnmap(s) => s.process.as_deref(),
            Step::KvmMemslot(s) => s.process.as_deref(),
            Step::GuestTouch(s) => s.process.as_deref(),
            Step::Access(s) => s.process.as_deref(),
            Step::ReadProc(s) => s.process.as_deref(),
            Step::Mincore(s) => s.process.as_deref(),
            Step::Mmap(_) | Step::Memory(_) | Step::Reset(_) | Step::Power(_) | Step::Fork(_) => {
                None
            }
        }
    }

    /// The process the step acts in: its `process`, or [`crate::MAIN_PROCESS`].
    pub fn process_or_main(&self) -> &str {
        self.process().unwrap_or(crate::MAIN_PROCESS)
    }

    /// The `op` string (`"mmap"`, `"touch"`, ...), as used in [`crate::StepReport::op`].
    pub fn op(&self) -> &'static str {
        match self {
            Step::Mmap(_) => "mmap",
            Step::Touch(_) => "touch",
            Step::Munmap(_) => "munmap",
            Step::Memory(_) => "memory",
            Step::Reset(_) => "reset",
            Step::Power(_) => "power",
            Step::Expect(_) => "expect",
            Step::Mprotect(_) => "mprotect",
            Step::Mremap(_) => "mremap",
            Step::Madvise(_) => "madvise",
            Step::Fork(_) => "fork",
            Step::DmaMap(_) => "dma_map",
            Step::DmaUnmap(_) => "dma_unmap",
            Step::KvmMemslot(_) => "kvm_memslot",
            Step::GuestTouch(_) => "guest_touch",
            Step::Access(_) => "access",
            Step::ReadProc(_) => "read_proc",
            Step::Mincore(_) => "mincore",
        }
    }
}

/// Map (part of) a BAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmapStep {
    /// Source line.
    pub line: usize,
    /// Mapping name, unique in the scenario.
    pub name: String,
    /// Device name (exists).
    pub device: String,
    /// BAR index (the device has it).
    pub bar: u8,
    /// Offset into the BAR, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = BAR size − offset.
    pub len: Len,
    /// VA placement, default [`VaPlacement::Kernel`].
    pub va: VaPlacement,
    /// Optional `madvise` right after the mmap.
    pub madvise: Option<Madvise>,
    /// `MAP_SHARED` (default true) or `MAP_PRIVATE`.
    pub shared: bool,
}

/// Access a range of a mapping, one access per stride.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchStep {
    /// Source line.
    pub line: usize,
    /// Mapping name (created by an earlier `mmap`).
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// Distance between accesses, default 4 KiB, never 0.
    pub stride: u64,
    /// Read or write, default write.
    pub access: Access,
    /// Forward or reverse, default forward.
    pub order: Order,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// A step on a range of a mapping with nothing more to say: `munmap` ([`MunmapStep`]) and
/// `mincore` ([`MincoreStep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeStep {
    /// Source line.
    pub line: usize,
    /// Mapping name (created by an earlier `mmap`).
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// Unmap a range of a mapping.
pub type MunmapStep = RangeStep;

/// Set or clear PCI_COMMAND_MEMORY through config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStep {
    /// Source line.
    pub line: usize,
    /// Device name.
    pub device: String,
    /// New value of the memory-decode bit.
    pub enable: bool,
}

/// Function-level reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetStep {
    /// Source line.
    pub line: usize,
    /// Device name.
    pub device: String,
}

/// PCI power-state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerStep {
    /// Source line.
    pub line: usize,
    /// Device name.
    pub device: String,
    /// Target state.
    pub state: PowerState,
}

/// Check counters since the previous `expect` and the leaves mapped now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStep {
    /// Source line.
    pub line: usize,
    /// What to check.
    pub expect: ExpectSpec,
    /// `on_kernel."7.3.4" = { faults = 2 }`: checks that differ when the model runs as (or the
    /// lab boots) that kernel; each replaces the same check of `expect`. The key `corrected`
    /// (`None` here) is the corrected design, for a scenario whose `kernel` names a kernel.
    pub on_kernel: Vec<(Option<Kernel>, ExpectSpec)>,
    /// `on_kernel."arm64:7.3.4" = { faults = 1024 }`: checks that differ when the scenario runs
    /// on another architecture than its own `arch` (the arm64 lab runs the x86-64 scenarios as
    /// arm64; `hugepfn lab record --arch arm64` writes these), over those of that kernel.
    pub on_arch: Vec<(Arch, Kernel, ExpectSpec)>,
    /// `process = ...`: whose counters (since that process's previous `expect`); `None` = the
    /// first process.
    pub process: Option<String>,
}

impl ExpectStep {
    /// The checks that hold under `kernel` (`None`: the corrected design, `expect` as written).
    pub fn spec_for(&self, kernel: Option<Kernel>) -> ExpectSpec {
        match self.on_kernel.iter().find(|(o, _)| *o == kernel) {
            Some((_, over)) => self.expect.overlaid(over),
            None => self.expect,
        }
    }

    /// The checks that hold under `kernel` on `foreign`, an architecture other than the
    /// scenario's own (`None`: its own): of [`ExpectStep::spec_for`] the checks a kernel
    /// measures (`faults`, `sigbus`, `sigsegv`, `skipped`, `resident`, `errno`: what `hugepfn
    /// lab record` writes), with the `"ARCH:KERNEL"` entry of `on_kernel` over them. The
    /// model-only checks (leaves, faults by level, IOMMU and EPT entries, ...) are about the
    /// scenario's own architecture's page tables and do not carry over.
    pub fn spec_on(&self, foreign: Option<Arch>, kernel: Option<Kernel>) -> ExpectSpec {
        let own = self.spec_for(kernel);
        let Some(a) = foreign else {
            return own;
        };
        let measured = ExpectSpec {
            faults: own.faults,
            sigbus: own.sigbus,
            sigsegv: own.sigsegv,
            skipped: own.skipped,
            resident: own.resident,
            errno: own.errno,
            ..ExpectSpec::default()
        };
        match self
            .on_arch
            .iter()
            .find(|(x, y, _)| *x == a && Some(*y) == kernel)
        {
            Some((_, _, over)) => measured.overlaid(over),
            None => measured,
        }
    }
}

/// `mprotect(va + offset, len, prot)` on a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MprotectStep {
    /// Source line.
    pub line: usize,
    /// Mapping name.
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// New protection.
    pub prot: ProtSpec,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// `mremap` of a whole mapping, `MREMAP_MAYMOVE | MREMAP_FIXED` to the placement `va`
/// ([`VaPlacement::Kernel`]: `MREMAP_MAYMOVE` only, the kernel picks). The mapping keeps its
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MremapStep {
    /// Source line.
    pub line: usize,
    /// Mapping name.
    pub map: String,
    /// Where to move it, default [`VaPlacement::Kernel`].
    pub va: VaPlacement,
    /// New length; `None` = the same length.
    pub new_len: Option<u64>,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// `madvise(va + offset, len, advice)` on a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadviseStep {
    /// Source line.
    pub line: usize,
    /// Mapping name.
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// The advice.
    pub advice: Advice,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// A file of `/proc/PID/` (`file = "..."` of `read_proc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcFileSpec {
    /// `smaps`: read whole.
    Smaps,
    /// `smaps_rollup`: read whole.
    SmapsRollup,
    /// `numa_maps`: read whole.
    NumaMaps,
    /// `pagemap`: the entries of a mapping's range, with `pread`.
    Pagemap,
    /// `clear_refs`: "1" written.
    ClearRefs,
}

impl ProcFileSpec {
    /// The file name.
    pub fn name(self) -> &'static str {
        match self {
            ProcFileSpec::Smaps => "smaps",
            ProcFileSpec::SmapsRollup => "smaps_rollup",
            ProcFileSpec::NumaMaps => "numa_maps",
            ProcFileSpec::Pagemap => "pagemap",
            ProcFileSpec::ClearRefs => "clear_refs",
        }
    }
}

/// Read (or, for `clear_refs`, write "1" to) `/proc/self/<file>` in a process: what monitoring
/// agents, `pmap -X` and accounting daemons do to a VMM all day (docs/proc-readers.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadProcStep {
    /// Source line.
    pub line: usize,
    /// Which file.
    pub file: ProcFileSpec,
    /// `pagemap` only (required there): the mapping whose entries are read.
    pub map: Option<String>,
    /// `pagemap` only: offset into the mapping, default 0.
    pub offset: u64,
    /// `pagemap` only: length, default the rest of the mapping.
    pub len: Len,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

/// `mincore(va + offset, len, vec)` on a mapping; the step reports the pages found resident.
pub type MincoreStep = RangeStep;

/// `fork()` of the first process: a child that later steps name with `process = child`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkStep {
    /// Source line.
    pub line: usize,
    /// The child's name, unique, not [`crate::MAIN_PROCESS`].
    pub child: String,
}

/// `VFIO_IOMMU_MAP_DMA` of (part of) a mapping at `iova`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaMapStep {
    /// Source line.
    pub line: usize,
    /// Mapping name (its VA is the `vaddr`).
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// The I/O virtual address.
    pub iova: u64,
    /// `vaddr_get_pfns` per page or batched by `addr_mask` (`None`: as the modelled kernel
    /// does it — per page before 6.15 — or batched for the corrected design).
    pub mode: Option<DmaMode>,
    /// `process = ...` (whose container): `None` = the first process.
    pub process: Option<String>,
}

/// `VFIO_IOMMU_UNMAP_DMA(iova, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaUnmapStep {
    /// Source line.
    pub line: usize,
    /// The I/O virtual address.
    pub iova: u64,
    /// Bytes.
    pub len: u64,
    /// `process = ...` (whose container): `None` = the first process.
    pub process: Option<String>,
}

/// `KVM_SET_USER_MEMORY_REGION`: slot `slot` maps guest-physical `gpa` to the mapping's VA
/// plus `offset`, for `len` bytes (`len = 0` deletes the slot, as in KVM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmMemslotStep {
    /// Source line.
    pub line: usize,
    /// Slot id.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// Mapping name (the memslot's `userspace_addr` is in it).
    pub map: String,
    /// Offset into the mapping, default 0.
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping; 0 deletes the slot.
    pub len: Len,
    /// Flags, default none; no duplicates.
    pub flags: Vec<MemslotFlag>,
    /// `process = ...` (whose VM): `None` = the first process.
    pub process: Option<String>,
}

/// The guest accesses guest-physical memory, one access per stride (EPT violations on a miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTouchStep {
    /// Source line.
    pub line: usize,
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Distance between accesses, default 4 KiB, never 0.
    pub stride: u64,
    /// Read or write, default write.
    pub access: Access,
    /// `process = ...` (whose VM): `None` = the first process.
    pub process: Option<String>,
}

/// A workload of 8-byte loads over a range of a mapping, simulated on the MMU model
/// (`hugepfn-hw`): TLBs, paging-structure caches and walks that read the process's real page
/// tables. The range is first touched for reading through the fault path (one access per
/// 4 KiB, as a `touch` with `access = "read"`; its faults count as the step's); loads that
/// still find no leaf (SIGBUS regions, PROT_NONE) are `walk_faults`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessStep {
    /// Source line.
    pub line: usize,
    /// Mapping name.
    pub map: String,
    /// Offset into the mapping, default 0 (a multiple of 8).
    pub offset: u64,
    /// Length, default [`Len::All`] = the rest of the mapping.
    pub len: Len,
    /// Load order.
    pub pattern: AccessPattern,
    /// Bytes between loads (`strided` only), default 64, a non-zero multiple of 8.
    pub stride: u64,
    /// Cache lines used per 4 KiB page (`chase` only), default 64 (lmbench), a power of two.
    pub lines: u32,
    /// Counted loads; `None` = one pass over the range (see the runner).
    pub count: Option<u64>,
    /// Uncounted loads before them (TLBs and caches warm up), default 0.
    pub warmup: u64,
    /// Seed of the random orders, default 1.
    pub seed: u64,
    /// In a VM whose second stage maps with pages of this size (4 KiB, 2 MiB or 1 GiB):
    /// 2-D walks. `None` = bare metal.
    pub vm: Option<u64>,
    /// The simulated CPU, default golden-cove.
    pub cpu: CpuSpec,
    /// `process = ...`: `None` = the first process.
    pub process: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepfn_units::{GIB, KIB, MIB};

    #[test]
    fn placements_parse_and_print_back() {
        for (s, want) in [
            ("kernel", VaPlacement::Kernel),
            ("align:1G", VaPlacement::Align { size: GIB, skew: 0 }),
            (
                "align:1G+2M",
                VaPlacement::Align {
                    size: GIB,
                    skew: 2 * MIB,
                },
            ),
            (
                "align:1G+1G",
                VaPlacement::Align {
                    size: GIB,
                    skew: GIB,
                },
            ),
            ("congruent:2M", VaPlacement::Congruent { size: 2 * MIB }),
            ("0x7f0000000000", VaPlacement::Fixed(0x7f00_0000_0000)),
            ("4096", VaPlacement::Fixed(4 * KIB)),
        ] {
            let got: VaPlacement = s.parse().expect(s);
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string().parse::<VaPlacement>(), Ok(want), "{s}");
        }
        assert_eq!(VaPlacement::default().to_string(), "kernel");
    }

    #[test]
    fn placement_errors() {
        assert!(matches!(
            "somewhere".parse::<VaPlacement>(),
            Err(PlacementError::Unrecognized(_))
        ));
        assert!(matches!(
            "".parse::<VaPlacement>(),
            Err(PlacementError::Unrecognized(_))
        ));
        assert!(matches!(
            "align:".parse::<VaPlacement>(),
            Err(PlacementError::BadNumber { .. })
        ));
        assert!(matches!(
            "align:1G+".parse::<VaPlacement>(),
            Err(PlacementError::BadNumber { .. })
        ));
        assert!(matches!(
            "align:1G+2Q".parse::<VaPlacement>(),
            Err(PlacementError::BadNumber { .. })
        ));
        assert!(matches!(
            "0x7g".parse::<VaPlacement>(),
            Err(PlacementError::BadNumber { .. })
        ));
        assert_eq!(
            "align:3M".parse::<VaPlacement>(),
            Err(PlacementError::NotPowerOfTwo {
                value: "align:3M".into(),
                size: 3 * MIB
            })
        );
        assert!(matches!(
            "align:0".parse::<VaPlacement>(),
            Err(PlacementError::NotPowerOfTwo { size: 0, .. })
        ));
        assert!(matches!(
            "congruent:1050M".parse::<VaPlacement>(),
            Err(PlacementError::NotPowerOfTwo { .. })
        ));
        let msg = "align:3M".parse::<VaPlacement>().unwrap_err().to_string();
        assert!(msg.contains("3M is not a power of two"), "{msg}");
    }

    #[test]
    fn len_and_bar_helpers() {
        assert_eq!(Len::All.resolve(7), 7);
        assert_eq!(Len::Bytes(3).resolve(7), 3);
        assert_eq!(Len::All.to_string(), "all");
        assert_eq!(Len::Bytes(2 * MIB).to_string(), "2M");
        let b = BarSpec {
            index: 2,
            phys: 0xff_0000_0000,
            size: 2 * GIB,
        };
        assert_eq!(b.end(), 0xff_8000_0000);
        assert!(ExpectSpec::default().is_empty());
    }
}
