//! Scenario files for huge PFN mapping experiments, and the report JSON of a run.
//!
//! A *scenario* (TOML) describes PCI devices with memory BARs (as vfio-pci exposes them) and a
//! sequence of steps: `mmap` a BAR range at a chosen kind of virtual address, `touch` it,
//! `munmap` part of it, toggle the PCI memory-decode bit, reset, change the power state,
//! `mprotect` / `mremap` / `madvise` / `fork`, DMA-map it through vfio type1, give it to a KVM
//! guest, and `expect` fault / signal / leaf / IOMMU / EPT counts. The same file drives the executable mm model
//! (`hugepfn run`) and the real-kernel probe; both print a [`RunReport`] as JSON.
//!
//! This crate is only the format: serde types, parsing, validation and the pure expectation
//! check [`check_expect`]. It knows nothing about page tables.
//!
//! # Format
//!
//! ```toml
//! name = "H100 BAR1 mapped by a VMM"
//! arch = "x86_64"             # or "x86_64-5level"; default x86_64
//! thp = "always"              # always | madvise | never; default always
//! memory = "4G"               # the model's simulated memory (page tables etc.); default 4G
//! description = "optional free text"
//!
//! [[device]]
//! name = "gpu"
//! bars = [ { index = 1, phys = "0x100000000000", size = "128G" } ]
//! # or, instead of bars: preset = "h200" (a published GPU layout, crate::presets)
//!
//! [[step]]
//! op = "mmap"                 # name, device, bar required
//! name = "b1"
//! device = "gpu"
//! bar = 1
//! offset = "0"                # default 0
//! len = "128G"                # default "all": the rest of the BAR
//! va = "align:1G"             # kernel | align:SIZE[+SKEW] | congruent:SIZE | 0xADDRESS |
//!                             # vmm:NAME (qemu-9.2, qemu-9.1, cloud-hypervisor, ...: that
//!                             # VMM's placement for this mmap's length, crate::vmm)
//! madvise = "hugepage"        # optional: hugepage | nohugepage
//! shared = true               # default true
//!
//! [[step]]
//! op = "touch"                # map required; offset 0, len "all", stride "4K",
//! map = "b1"                  # access "write" (| "read"), order "forward" (| "reverse")
//!
//! [[step]]
//! op = "expect"               # deltas since the previous expect; any subset
//! faults = 128
//! faults_by_level = { pud = 128 }
//! sigbus = 0
//! leaves = { pud = 128 }      # mapped now, not a delta
//! ```
//!
//! Other ops: `munmap` (map, offset, len), `memory` (device, enable), `reset` (device),
//! `power` (device, state = "d0" | "d3hot"). Sizes are strings read by
//! [`hugepfn_units::parse_size`] (`"4K"`, `"1G"`, `"0x1000"`) or TOML integers.
//!
//! ## Processes, mprotect, mremap, madvise, fork (issue 5)
//!
//! ```toml
//! [[step]]
//! op = "mprotect"
//! map = "b1"
//! offset = "1G"              # default 0
//! len = "2M"                 # default all
//! prot = "read"              # none | read | write (write means read+write)
//! [[step]]
//! op = "mremap"              # moves the whole mapping (MREMAP_MAYMOVE|MREMAP_FIXED)
//! map = "b1"
//! va = "align:1G+2M"         # the placement forms of mmap; default "kernel" (MAYMOVE only)
//! new_len = "4G"             # optional: shrink/expand (default: same length)
//! [[step]]
//! op = "madvise"
//! map = "b1"
//! offset = "0"               # default 0
//! len = "2M"                 # default all
//! advice = "dontneed"        # dontneed | dontneed_locked | free | wipeonfork | keeponfork |
//!                            # cold | pageout | populate_read | populate_write | hugepage |
//!                            # nohugepage | normal | random | sequential | willneed |
//!                            # dontfork | dofork | dontdump | dodump
//! [[step]]
//! op = "fork"                # of the first process
//! child = "c1"               # a new process; later steps may say process = "c1"
//! [[step]]
//! op = "expect"
//! process = "c1"             # that process's counters since its previous expect
//! errno = "EINVAL"           # the errno of the last failed op since the previous expect;
//!                            # "0" = none failed
//! ```
//!
//! `process = "NAME"` is accepted by `touch`, `munmap`, `mprotect`, `mremap`, `madvise`,
//! `expect`, `dma_map`, `dma_unmap`, `kvm_memslot`, `guest_touch` and `access`; without it a step acts in
//! the first process, [`MAIN_PROCESS`] (`"main"`). `mmap`, `memory`, `reset`, `power` and `fork`
//! always act in the first process. A name must be created by an earlier `fork`.
//!
//! ## Consumers: vfio type1 DMA and KVM (issue 6)
//!
//! ```toml
//! [[step]]
//! op = "dma_map"             # VFIO_IOMMU_MAP_DMA of (part of) a mapping
//! map = "b1"
//! offset = "0"               # default 0
//! len = "all"                # default all
//! iova = "0x100000000000"    # required
//! mode = "batched"           # batched (addr_mask, Linux 6.15+; default) | per_page (before)
//! [[step]]
//! op = "dma_unmap"           # VFIO_IOMMU_UNMAP_DMA
//! iova = "0x100000000000"    # required
//! len = "128G"               # required
//! [[step]]
//! op = "kvm_memslot"         # KVM_SET_USER_MEMORY_REGION of a mapping
//! slot = 0                   # required
//! gpa = "0x4000000000"       # required
//! map = "b1"                 # required
//! offset = "0"               # default 0
//! len = "all"                # default all; 0 deletes the slot (as KVM does)
//! flags = []                 # readonly | log_dirty_pages
//! [[step]]
//! op = "guest_touch"         # the guest accesses guest-physical memory (EPT violations)
//! gpa = "0x4000000000"       # required
//! len = "128G"               # required
//! stride = "4K"              # default 4K
//! access = "write"           # read | write; default write
//! [[step]]
//! op = "expect"
//! dma_lookups = 32           # follow_pfnmap lookups by vaddr_get_pfns since the previous expect
//! iommu_entries = { pud = 32 }   # IOMMU leaves mapped now (1G/2M/4K), any subset
//! ept_violations = 128       # since the previous expect
//! ept_leaves = { pud = 128 } # EPT leaves mapped now
//! mmu_invalidations = 1      # MMU-notifier invalidations since the previous expect
//! ```
//!
//! ## What the TLB sees: `access` (issue 7)
//!
//! ```toml
//! [[step]]
//! op = "access"              # loads over a mapping on the MMU model (crates/hugepfn-hw)
//! map = "b1"
//! offset = "0"               # default 0
//! len = "all"                # default all
//! pattern = "random"         # sequential | strided | random | chase
//! # stride = "64"            # strided only: bytes between loads; default 64, a multiple of 8
//! # lines = 64               # chase only: lines per 4 KiB page (lat_mem_rd -t); default 64
//! count = 100000             # counted loads; default one pass
//! warmup = 10000             # uncounted loads first; default 0
//! seed = 1                   # default 1
//! vm = "2M"                  # optional: in a VM whose EPT maps with 4K | 2M | 1G pages
//! cpu = "golden-cove"        # golden-cove | zen4; default golden-cove
//! [[step]]
//! op = "expect"              # deltas since the previous expect, any subset
//! loads = 100000
//! tlb_misses = { l1 = 99993, stlb = 99887 }  # L1 DTLB misses; STLB misses = page walks
//! walk_refs = 196719         # walk memory references, both dimensions
//! walk_refs_by_level = { p4d = 0, pud = 1, pmd = 96831, pte = 99887 }  # and pgd
//! walk_refs_ept = 0          # of walk_refs, second-stage (EPT) entries
//! walk_faults = 0            # walks that found no usable leaf
//! ```
//!
//! The range is touched for reading through the fault path first (its faults are the step's);
//! the counts depend only on the file (CPU preset, seed). The estimated time depends on the
//! machine's calibration: it is in [`StepReport::access`], never in an `expect`. The real
//! kernel cannot count these: the probe and the lab refuse `access` with that reason.
//!
//! ## Kernel versions (issue 11)
//!
//! ```toml
//! kernel = "7.3.4"           # top level, optional: behave as 6.12.95 | 6.12.117 | 7.3.4, its known
//!                            # bugs included (6.12.0 | 6.13.0: model only); absent: the corrected design
//! [[step]]
//! op = "expect"
//! faults = 1024              # for the file's kernel (absent: the corrected design and 6.12.95)
//! on_kernel."7.3.4" = { faults = 524288 }  # replaces those checks on that kernel
//! on_kernel.corrected = { faults = 0 }     # and for the corrected design
//! on_kernel."arm64:7.3.4" = { faults = 1024 }  # run on arm64 (not the file's `arch`): over
//!                            # 7.3.4's faults, sigbus, sigsegv, skipped, resident and errno;
//!                            # the model-only checks are the file's architecture's and not used
//! ```
//!
//! ## /proc readers and mincore (issue 12)
//!
//! ```toml
//! [[step]]
//! op = "read_proc"           # read /proc/self/FILE in the process (clear_refs: write "1")
//! file = "pagemap"           # smaps | smaps_rollup | numa_maps | pagemap | clear_refs
//! map = "b1"                 # pagemap only (required there): the entries of this mapping
//! offset = "0"               # pagemap only; default 0
//! len = "2M"                 # pagemap only; default all
//! [[step]]
//! op = "mincore"             # mincore(2) of (part of) a mapping
//! map = "b1"
//! offset = "0"               # default 0
//! len = "all"                # default all
//! [[step]]
//! op = "expect"
//! resident = 512             # pages mincore found resident since the previous expect
//! leaves_zapped = { pud = 2 }  # leaves zapped since the previous expect (the model only)
//! ```
//!
//! `read_proc` and `mincore` accept `process`, like `touch`.
//!
//! Only the format is checked here (names, references, sizes, that ranges fit in 64 bits);
//! what the kernel would refuse (an unaligned `iova`, an overlapping range, `len = 0`, a slot
//! number above `KVM_USER_MEM_SLOTS`) is the runner's business, reported as the step's errno.
//!
//! # Errors
//!
//! Unknown keys, ops and enum values are errors. Every error names `file:line:column`
//! ([`ScenarioError`], [`Problem`]); every [`Step`] carries its line so that a runner can say
//! "step 5 (line 40): expect failed". The parser never panics.

mod error;
pub mod fixture;
mod model_only;
mod parse;
pub mod presets;
mod report;
mod scenario;
#[cfg(test)]
mod test_util;
pub mod vmm;

pub use error::{Location, Problem, ScenarioError};
pub use model_only::{ModelOnly, model_only};
pub use parse::{MIN_MEMORY, load_scenario, parse_scenario};
pub use report::{
    AccessEstimate, Counters, ExpectNow, ExpectOutcome, ExpectValue, LeafCounts, Mismatch,
    RunReport, StepReport, TableCounts, TlbCounters, check_expect,
};
pub use scenario::{
    Access, AccessPattern, AccessStep, Advice, Arch, BarSpec, CpuSpec, DeviceSpec, DmaMapStep,
    DmaMode, DmaUnmapStep, ErrnoName, ExpectSpec, ExpectStep, FaultPathSpec, ForkStep,
    GuestTouchStep, Kernel, KernelBug, KvmMemslotStep, Len, LevelCounts, Madvise, MadviseStep,
    MemoryStep, MemslotFlag, MincoreStep, MmapStep, MprotectStep, MremapStep, MunmapStep, Order,
    PlacementError, PowerState, PowerStep, ProcFileSpec, ProtSpec, RangeStep, ReadProcStep,
    ResetStep, Scenario, Step, TableLevelCounts, ThpMode, TlbMissCounts, TouchStep, VaPlacement,
};

/// The name of the first process, the one every step acts in unless it says `process = ...`.
pub const MAIN_PROCESS: &str = "main";
