//! `hugepfn guest-boot`: a VM with a GPU BAR passed through vfio-pci, booted twice — once with
//! the BAR mapped by 1 GiB host leaves, once with everything at 4 KiB — side by side.
//!
//! The boot follows what QEMU and the guest firmware do with a BAR (upstream.md §4: "BARs are
//! mapped in and out of the VM address space multiple times during guest boot"): the firmware
//! sizes BARs with memory decode off, toggling the command register `toggles` times. Each
//! disable revokes the host mapping (`vfio_pci_zap_bars` → `unmap_mapping_range`, which the
//! MMU notifier passes on to KVM) and makes QEMU remove the BAR from the guest (its memory
//! listener: `VFIO_IOMMU_UNMAP_DMA`, memslot delete); each enable makes QEMU add it back
//! (memslot create, `VFIO_IOMMU_MAP_DMA` at IOVA = guest-physical address, which faults the BAR
//! back in through `fixup_user_fault`). Then the guest touches the whole BAR once.
//!
//! The "huge" world mmaps the BAR at a 1 GiB-aligned VA: 1 GiB host leaves, one DMA lookup and
//! one EPT violation per GiB. The "4 KiB" world mmaps it at a 1 GiB-aligned VA plus 4 KiB (the
//! lab's `skew=4K`): every host leaf is 4 KiB, so every DMA lookup covers one page even with
//! the 6.15 batching, and KVM's `host_pfn_mapping_level` (and the memslot's gfn/hva
//! congruence) keep every EPT leaf at 4 KiB.
//!
//! Every figure comes from the model's counters; times are this machine's.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hugepfn_kernels::{Behaviour, Kernel};
use hugepfn_kvm::{KvmConfig, UserMemoryRegion, Vm};
use hugepfn_mm::addr::{GuestPhysAddr, IoVirtAddr, UserAddr};
use hugepfn_mm::{Arch, LeafCounts, Mm, MmConfig, MmapAddr, MmapRequest, PhysMem, Prot};
use hugepfn_units::{format_size, parse_size};
use hugepfn_vfio::iommu::CapReg;
use hugepfn_vfio::type1::{DmaMapRequest, PfnLookup, VfioIommu};
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, presets, region_offset};
use serde::Serialize;
use thiserror::Error;

/// Where the firmware puts the BAR in guest-physical space (also its IOVA).
pub const GUEST_BAR_GPA: GuestPhysAddr = match GuestPhysAddr::new(0x380_0000_0000) {
    Ok(gpa) => gpa,
    Err(_) => panic!("a 52-bit GPA"),
};

/// The IOVA QEMU maps the BAR at for the device: its guest-physical address.
pub const GUEST_BAR_IOVA: IoVirtAddr = IoVirtAddr::new(GUEST_BAR_GPA.as_u64());

/// The H100's BARs ([`presets::h100_bars`]) with BAR1 resized to `size` (128 GiB: as is).
pub fn h100_with_bar1(size: u64) -> Vec<Bar> {
    presets::h100_bars()
        .into_iter()
        .map(|b| {
            if b.index == presets::H100_APERTURE {
                Bar::mem64(b.index, b.phys, size)
            } else {
                b
            }
        })
        .collect()
}

/// Which `vaddr_get_pfns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum DmaLookupArg {
    /// Linux 6.15+: one lookup per host leaf (`addr_mask`).
    Batched,
    /// Before 6.15: one lookup per 4 KiB page.
    PerPage,
}

/// The two worlds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum WorldKind {
    /// BAR at a 1 GiB-aligned VA: 1 GiB host and EPT leaves.
    Huge,
    /// BAR at a 1 GiB-aligned VA + 4 KiB: everything at 4 KiB.
    #[value(name = "4k")]
    #[serde(rename = "4k")]
    Small,
}

/// `hugepfn guest-boot` arguments (a clap `Args`, for a `Subcommand` variant).
///
/// The 4 KiB world of a 128 GiB BAR is 100 million host faults and 33.5 million EPT violations:
/// about 35 s of CPU in a release build (BENCHMARKS-consumers.md); `--bar-size 8G` for a quick
/// look.
#[derive(Debug, Clone, Args)]
pub struct GuestBootArgs {
    /// BAR1 size (the H100's is 128G); a power of two from 1G to 128G.
    #[arg(long, default_value = "128G", value_parser = parse_bar_size)]
    pub bar_size: u64,
    /// Memory-decode off/on toggles by the firmware's BAR sizing before the guest uses the BAR
    /// (at most 1000: firmware toggles a handful of times; each toggle is a revocation and, in the
    /// 4 KiB world, millions of refaults).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub toggles: u32,
    /// `vaddr_get_pfns` of Linux 6.15+ (batched) or before (per-page); default: as `--kernel`
    /// does it (batched without one).
    #[arg(long, value_enum)]
    pub dma: Option<DmaLookupArg>,
    /// Behave as this Linux version (6.12.95, 6.12.117, 7.3.4; 6.12.0, 6.13.0 model only)
    /// instead of the corrected design.
    #[arg(long, value_name = "VERSION", value_parser = parse_kernel)]
    pub kernel: Option<Kernel>,
    /// Run one world only.
    #[arg(long, value_enum)]
    pub only: Option<WorldKind>,
    /// The host's architecture: x86_64 (default), x86_64-5level (Intel's EPT and the TDP MMU)
    /// or arm64 (KVM/arm64's stage 2 and `user_mem_abort`; the IOMMU's tables are modelled in
    /// VT-d's format, whose 4 KiB/2 MiB/1 GiB sizes the SMMU's 4 KiB granule shares). Others are
    /// refused (riscv's G-stage is not modelled).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_kernel(s: &str) -> Result<Kernel, String> {
    s.parse::<Kernel>().map_err(|e| e.to_string())
}

fn parse_bar_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s).map_err(|e| e.to_string())?;
    if !n.is_power_of_two() || n < (1 << 30) {
        return Err(format!(
            "{s}: a BAR size is a power of two, at least 1G here"
        ));
    }
    if n > (128 << 30) {
        return Err(format!(
            "{s}: at most 128G (the H100's BAR1 window: BAR0 and BAR3 sit above it)"
        ));
    }
    Ok(n)
}

/// What a guest boot could not do.
#[derive(Debug, Error)]
pub enum GuestBootError {
    /// Setting up the device, the process or the mapping failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A VMM step failed (its errno and what it was doing).
    #[error("{what}: {errno}: {detail}")]
    Step {
        /// The step.
        what: &'static str,
        /// The errno name.
        errno: &'static str,
        /// The error.
        detail: String,
    },
}

/// One world's boot.
#[derive(Debug, Clone, Serialize)]
pub struct WorldReport {
    /// Which world.
    pub world: WorldKind,
    /// VA of the BAR mapping.
    pub va: UserAddr,
    /// EPT leaves after the guest touched the BAR.
    pub ept_leaves: LeafCounts,
    /// EPT violations, whole boot.
    pub ept_violations: u64,
    /// Host faults of the VMM process (fault-ins by DMA mapping and by KVM), by level.
    pub host_faults: LeafCounts,
    /// Host faults in all.
    pub host_faults_total: u64,
    /// vfio revocations (memory decode off).
    pub revokes: u64,
    /// Host leaves zapped by revocations.
    pub host_leaves_zapped: u64,
    /// MMU-notifier invalidations KVM received.
    pub mmu_invalidations: u64,
    /// EPT leaves zapped.
    pub ept_leaves_zapped: u64,
    /// `MAP_DMA` ioctls.
    pub dma_maps: u64,
    /// `vaddr_get_pfns` rounds (follow_pfnmap lookups), all maps.
    pub dma_lookups: u64,
    /// `fixup_user_fault` calls made by type1.
    pub dma_fixups: u64,
    /// IOMMU leaves mapped at the end.
    pub iommu_entries: LeafCounts,
    /// Host page-table pages at the end.
    pub host_table_pages: u64,
    /// EPT table pages at the end.
    pub ept_table_pages: u64,
    /// Time in `MAP_DMA`, all maps.
    pub dma_map_time: Duration,
    /// Time of the firmware phase (toggles and the final enable, DMA maps included).
    pub firmware_time: Duration,
    /// Time of the guest's pass over the BAR.
    pub guest_touch_time: Duration,
    /// Whole boot.
    pub total_time: Duration,
}

/// Both worlds and the parameters.
#[derive(Debug, Clone, Serialize)]
pub struct GuestBootReport {
    /// What the model behaved as ("the corrected design", "Linux 7.3.4").
    pub model: String,
    /// The host's architecture (x86-64: EPT; arm64: KVM/arm64's stage 2).
    pub arch: Arch,
    /// BAR size.
    pub bar_size: u64,
    /// Decode toggles.
    pub toggles: u32,
    /// DMA lookup mode.
    pub dma: DmaLookupArg,
    /// The worlds run, huge first.
    pub worlds: Vec<WorldReport>,
}

fn step_err<E: std::fmt::Display>(what: &'static str, errno: &'static str, e: E) -> GuestBootError {
    GuestBootError::Step {
        what,
        errno,
        detail: e.to_string(),
    }
}

/// Boots one world.
pub fn boot_world(
    world: WorldKind,
    bar_size: u64,
    toggles: u32,
    dma: DmaLookupArg,
    behaviour: Behaviour,
    arch: Arch,
) -> Result<WorldReport, GuestBootError> {
    let t0 = Instant::now();
    let phys = Arc::new(PhysMem::default());
    let dev = VfioPciDevice::new(
        phys.clone(),
        "gpu",
        h100_with_bar1(bar_size),
        HugeFaultLogic::from(behaviour.huge_fault()),
    )
    .map_err(|e| GuestBootError::Setup(e.to_string()))?;
    let mm = Mm::new(
        phys.clone(),
        crate::runner::mm_config(
            behaviour,
            MmConfig {
                arch,
                ..MmConfig::default()
            },
        ),
    )
    .map_err(|e| GuestBootError::Setup(e.to_string()))?;
    let skew = match world {
        WorldKind::Huge => 0,
        WorldKind::Small => 4096,
    };
    let setup = |e: hugepfn_mm::MmError| GuestBootError::Setup(e.to_string());
    let uva = mm
        .find_aligned_area(bar_size, 1 << 30, skew)
        .map_err(setup)?;
    let va = uva;
    let file = dev.open();
    mm.mmap(MmapRequest {
        addr: MmapAddr::Fixed(uva),
        len: bar_size,
        prot: Prot::RW,
        shared: true,
        offset: region_offset(presets::H100_APERTURE),
        file: Some(&file),
    })
    .map_err(setup)?;
    let container = VfioIommu::new(mm.clone(), CapReg::SERVER)
        .map_err(|e| GuestBootError::Setup(e.to_string()))?;
    let vm = Vm::new(mm.clone(), KvmConfig::default())
        .map_err(|e| GuestBootError::Setup(e.to_string()))?;
    let lookup = match dma {
        DmaLookupArg::Batched => PfnLookup::Batched,
        DmaLookupArg::PerPage => PfnLookup::PerPage,
    };
    let region = |size: u64| UserMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_BAR_GPA,
        memory_size: size,
        userspace_addr: if size == 0 { UserAddr::default() } else { va },
    };
    let mut dma_time = Duration::ZERO;
    let mut dma_maps = 0u64;
    // The firmware starts with memory decode off.
    dev.set_memory_enable(false);
    let dev0 = dev.stats();
    let faults0 = mm.fault_counts();
    let fw0 = Instant::now();
    // QEMU's memory listener when the BAR appears: memslot, then DMA map.
    let add = |dma_time: &mut Duration, dma_maps: &mut u64| -> Result<(), GuestBootError> {
        dev.set_memory_enable(true);
        vm.set_user_memory_region(&region(bar_size))
            .map_err(|e| step_err("KVM_SET_USER_MEMORY_REGION", e.errno_name(), e))?;
        let (st, r) = container.map_dma(DmaMapRequest::rw(va, GUEST_BAR_IOVA, bar_size, lookup));
        *dma_time += st.elapsed;
        *dma_maps += 1;
        r.map_err(|e| step_err("VFIO_IOMMU_MAP_DMA", e.errno_name(), e))
    };
    for _ in 0..toggles {
        add(&mut dma_time, &mut dma_maps)?;
        // Memory decode off: vfio revokes; QEMU removes the BAR from the guest.
        dev.set_memory_enable(false);
        container
            .unmap_dma(GUEST_BAR_IOVA, bar_size)
            .map_err(|e| step_err("VFIO_IOMMU_UNMAP_DMA", e.errno_name(), e))?;
        vm.set_user_memory_region(&region(0))
            .map_err(|e| step_err("KVM_SET_USER_MEMORY_REGION (delete)", e.errno_name(), e))?;
    }
    add(&mut dma_time, &mut dma_maps)?;
    let firmware_time = fw0.elapsed();
    // The guest driver touches the whole BAR.
    let g0 = Instant::now();
    let (_, r) = vm.guest_touch(GUEST_BAR_GPA, bar_size / 4096, 4096, true);
    r.map_err(|e| step_err("KVM_RUN", e.errno_name(), e))?;
    let guest_touch_time = g0.elapsed();
    let faults = mm.fault_counts().since(&faults0);
    let ks = vm.stats();
    let ds = dev.stats();
    let ts = container.totals();
    let report = WorldReport {
        world,
        va,
        ept_leaves: vm.ept_leaves(),
        ept_violations: ks.ept_violations,
        host_faults: LeafCounts {
            pud: faults.by_level.pud,
            pmd: faults.by_level.pmd,
            pte: faults.by_level.pte,
        },
        host_faults_total: faults.faults,
        revokes: ds.revokes - dev0.revokes,
        host_leaves_zapped: ds.zapped_leaves - dev0.zapped_leaves,
        mmu_invalidations: ks.invalidations,
        ept_leaves_zapped: ks.zapped.total(),
        dma_maps,
        dma_lookups: ts.lookups,
        dma_fixups: ts.fixups,
        iommu_entries: container.iommu_entries(),
        host_table_pages: mm.table_counts().total(),
        ept_table_pages: vm.ept_table_pages(),
        dma_map_time: dma_time,
        firmware_time,
        guest_touch_time,
        total_time: t0.elapsed(),
    };
    Ok(report)
}

/// Boots the worlds `args` asks for (huge first).
pub fn guest_boot(args: &GuestBootArgs) -> Result<GuestBootReport, GuestBootError> {
    let kinds: Vec<WorldKind> = match args.only {
        Some(k) => vec![k],
        None => vec![WorldKind::Huge, WorldKind::Small],
    };
    let behaviour = Behaviour::from_option(args.kernel);
    let arch = args.arch.unwrap_or_default();
    if arch.paging_mode().is_none() && arch != Arch::Arm64 {
        return Err(GuestBootError::Setup(format!(
            "--arch {arch}: the guest's second stage is modelled for x86-64 (EPT) and arm64 \
             (4 KiB pages) only; {arch} hosts map BARs in the model (hugepfn demo --arch \
             {arch}) but their KVM stage 2 is not built"
        )));
    }
    let dma = args.dma.unwrap_or(match behaviour.type1_batches() {
        Some(false) => DmaLookupArg::PerPage,
        Some(true) | None => DmaLookupArg::Batched,
    });
    let mut worlds = Vec::new();
    for k in kinds {
        worlds.push(boot_world(
            k,
            args.bar_size,
            args.toggles,
            dma,
            behaviour,
            arch,
        )?);
    }
    Ok(GuestBootReport {
        model: behaviour.label(),
        arch,
        bar_size: args.bar_size,
        toggles: args.toggles,
        dma,
        worlds,
    })
}

fn lv(l: &LeafCounts) -> String {
    format!("{}/{}/{}", l.pud, l.pmd, l.pte)
}

fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The side-by-side table.
pub fn format(r: &GuestBootReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let arm64 = r.arch == Arch::Arm64;
    let _ = writeln!(
        s,
        "guest boot ({}, {} host, {}): {} BAR at gpa/iova {:#x}, {} memory-decode toggles, DMA lookups {}",
        r.model,
        r.arch,
        if arm64 { "KVM/arm64 stage 2" } else { "EPT" },
        format_size(r.bar_size),
        GUEST_BAR_GPA,
        r.toggles,
        match r.dma {
            DmaLookupArg::Batched => "batched (6.15+)",
            DmaLookupArg::PerPage => "per page (< 6.15)",
        }
    );
    let col = |w: &WorldReport| match w.world {
        WorldKind::Huge if arm64 => "VA 1 GiB-aligned",
        WorldKind::Huge => "1 GiB host leaves",
        WorldKind::Small => "4 KiB (VA skewed 4K)",
    };
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        ("", r.worlds.iter().map(|w| col(w).to_string()).collect()),
        (
            "BAR VA",
            r.worlds.iter().map(|w| format!("{:#x}", w.va)).collect(),
        ),
        (
            "EPT leaves 1G/2M/4K",
            r.worlds.iter().map(|w| lv(&w.ept_leaves)).collect(),
        ),
        (
            "EPT violations",
            r.worlds
                .iter()
                .map(|w| w.ept_violations.to_string())
                .collect(),
        ),
        (
            "host faults",
            r.worlds
                .iter()
                .map(|w| w.host_faults_total.to_string())
                .collect(),
        ),
        (
            "  by level 1G/2M/4K",
            r.worlds.iter().map(|w| lv(&w.host_faults)).collect(),
        ),
        (
            "vfio revokes",
            r.worlds.iter().map(|w| w.revokes.to_string()).collect(),
        ),
        (
            "host leaves zapped",
            r.worlds
                .iter()
                .map(|w| w.host_leaves_zapped.to_string())
                .collect(),
        ),
        (
            "MMU-notifier invalidations",
            r.worlds
                .iter()
                .map(|w| w.mmu_invalidations.to_string())
                .collect(),
        ),
        (
            "EPT leaves zapped",
            r.worlds
                .iter()
                .map(|w| w.ept_leaves_zapped.to_string())
                .collect(),
        ),
        (
            "MAP_DMA calls",
            r.worlds.iter().map(|w| w.dma_maps.to_string()).collect(),
        ),
        (
            "DMA pfn lookups",
            r.worlds.iter().map(|w| w.dma_lookups.to_string()).collect(),
        ),
        (
            "DMA fixup_user_fault",
            r.worlds.iter().map(|w| w.dma_fixups.to_string()).collect(),
        ),
        (
            "IOMMU entries 1G/2M/4K",
            r.worlds.iter().map(|w| lv(&w.iommu_entries)).collect(),
        ),
        (
            "host page-table pages",
            r.worlds
                .iter()
                .map(|w| w.host_table_pages.to_string())
                .collect(),
        ),
        (
            "EPT table pages",
            r.worlds
                .iter()
                .map(|w| w.ept_table_pages.to_string())
                .collect(),
        ),
        (
            "time in MAP_DMA",
            r.worlds.iter().map(|w| dur(w.dma_map_time)).collect(),
        ),
        (
            "firmware phase",
            r.worlds.iter().map(|w| dur(w.firmware_time)).collect(),
        ),
        (
            "guest touches the BAR",
            r.worlds.iter().map(|w| dur(w.guest_touch_time)).collect(),
        ),
        (
            "whole boot",
            r.worlds.iter().map(|w| dur(w.total_time)).collect(),
        ),
    ];
    if r.worlds.len() == 2 {
        let ratio = |f: &dyn Fn(&WorldReport) -> f64| {
            let (a, b) = (f(&r.worlds[0]), f(&r.worlds[1]));
            if a > 0.0 {
                format!("{:.0}x", b / a)
            } else {
                "-".into()
            }
        };
        rows.push((
            "4 KiB / huge: violations, lookups, time",
            vec![
                String::new(),
                format!(
                    "{}, {}, {}",
                    ratio(&|w| w.ept_violations as f64),
                    ratio(&|w| w.dma_lookups as f64),
                    ratio(&|w| w.total_time.as_secs_f64())
                ),
            ],
        ));
    }
    // the second stage by its name on arm64
    let rows: Vec<(String, Vec<String>)> = rows
        .into_iter()
        .map(|(k, v)| {
            let k = if arm64 {
                k.replace("EPT", "stage-2")
            } else {
                k.to_string()
            };
            (k, v)
        })
        .collect();
    let w0 = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, vals) in rows {
        let _ = write!(s, "{k:<w0$}");
        for v in vals {
            let _ = write!(s, "  {v:>24}");
        }
        let _ = writeln!(s);
    }
    s
}

/// `hugepfn guest-boot`: prints both worlds side by side (or JSON); exit 1 on a failed step.
pub fn main(args: GuestBootArgs) -> ExitCode {
    match guest_boot(&args) {
        Ok(r) => {
            if args.json {
                match serde_json::to_string_pretty(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("hugepfn guest-boot: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", format(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hugepfn guest-boot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A process with a `bar_size` BAR1 mmapped at a 1 GiB-aligned VA plus `skew`, and a type1
/// container: the setup of the DMA benchmarks (nothing timed here).
pub struct DmaBench {
    /// The device.
    pub dev: Arc<VfioPciDevice>,
    /// The process.
    pub mm: Arc<Mm>,
    /// The BAR's VA.
    pub va: UserAddr,
    /// The container.
    pub container: VfioIommu,
    /// BAR size.
    pub size: u64,
}

impl DmaBench {
    /// Builds it; with `prefault`, the BAR is touched once so that MAP_DMA finds it mapped.
    pub fn new(size: u64, skew: u64, prefault: bool) -> Result<DmaBench, GuestBootError> {
        let setup = |e: &dyn std::fmt::Display| GuestBootError::Setup(e.to_string());
        let phys = Arc::new(PhysMem::default());
        let dev = VfioPciDevice::new(
            phys.clone(),
            "gpu",
            h100_with_bar1(size),
            HugeFaultLogic::Fixed,
        )
        .map_err(|e| setup(&e))?;
        let mm = Mm::new(phys, MmConfig::default()).map_err(|e| setup(&e))?;
        let uva = mm
            .find_aligned_area(size, 1 << 30, skew)
            .map_err(|e| setup(&e))?;
        let va = uva;
        let file = dev.open();
        mm.mmap(MmapRequest {
            addr: MmapAddr::Fixed(uva),
            len: size,
            prot: Prot::RW,
            shared: true,
            offset: region_offset(presets::H100_APERTURE),
            file: Some(&file),
        })
        .map_err(|e| setup(&e))?;
        if prefault {
            mm.access_range(va, size / 4096, 4096, true, false);
        }
        let container = VfioIommu::new(mm.clone(), CapReg::SERVER).map_err(|e| setup(&e))?;
        Ok(DmaBench {
            dev,
            mm,
            va,
            container,
            size,
        })
    }

    /// The timed part: `MAP_DMA` of the whole BAR at [`GUEST_BAR_GPA`]. Returns the lookups
    /// and the time the ioctl took.
    pub fn map(&self, lookup: PfnLookup) -> Result<(u64, Duration), GuestBootError> {
        let (st, r) = self.container.map_dma(DmaMapRequest::rw(
            self.va,
            GUEST_BAR_IOVA,
            self.size,
            lookup,
        ));
        r.map_err(|e| step_err("VFIO_IOMMU_MAP_DMA", e.errno_name(), e))?;
        Ok((st.counters.lookups, st.elapsed))
    }

    /// Untimed: `UNMAP_DMA` of it again.
    pub fn unmap(&self) -> Result<(), GuestBootError> {
        self.container
            .unmap_dma(GUEST_BAR_IOVA, self.size)
            .map(|_| ())
            .map_err(|e| step_err("VFIO_IOMMU_UNMAP_DMA", e.errno_name(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn five_level_and_arm64_hosts_boot_and_riscv_is_refused_with_the_reason() {
        let mut args = GuestBootArgs {
            bar_size: G,
            toggles: 0,
            dma: Some(DmaLookupArg::Batched),
            kernel: None,
            only: Some(WorldKind::Huge),
            arch: Some(Arch::X86_64_5Level),
            json: false,
        };
        let r = guest_boot(&args).expect("boot");
        assert_eq!(r.worlds[0].ept_leaves.pud, 1);
        // arm64: the host maps PMDs at most, KVM's stage 2 still maps the GiB as one block
        args.arch = Some(Arch::Arm64);
        let r = guest_boot(&args).expect("arm64 boot");
        let w = &r.worlds[0];
        assert_eq!((w.ept_leaves.pud, w.ept_violations), (1, 1));
        assert_eq!(w.host_faults.pud, 0, "no PUD pfnmaps on arm64");
        args.arch = Some(Arch::Riscv64Sv48);
        let e = guest_boot(&args).unwrap_err().to_string();
        assert!(e.contains("stage 2"), "{e}");
    }

    #[test]
    fn both_worlds_differ_as_the_host_leaves_say() {
        let args = GuestBootArgs {
            bar_size: G,
            toggles: 2,
            dma: Some(DmaLookupArg::Batched),
            kernel: None,
            only: None,
            arch: None,
            json: false,
        };
        let r = guest_boot(&args).expect("boot");
        let (h, s) = (&r.worlds[0], &r.worlds[1]);
        let pages = G / 4096;
        assert_eq!(
            h.ept_leaves,
            LeafCounts {
                pud: 1,
                pmd: 0,
                pte: 0
            }
        );
        assert_eq!(
            s.ept_leaves,
            LeafCounts {
                pud: 0,
                pmd: 0,
                pte: pages
            }
        );
        assert_eq!((h.ept_violations, s.ept_violations), (1, pages));
        // 3 maps (2 toggles + the final enable), each one lookup per host leaf
        assert_eq!((h.dma_maps, h.dma_lookups), (3, 3));
        assert_eq!(s.dma_lookups, 3 * pages);
        // every map faulted the BAR back in: the revokes zapped it
        assert_eq!((h.dma_fixups, s.dma_fixups), (3, 3 * pages));
        assert_eq!(h.host_faults.pud, 3);
        assert_eq!(s.host_faults.pte, 3 * pages);
        assert_eq!((h.revokes, s.revokes), (2, 2));
        // the IOMMU mapping depends on iova/PA alignment only: 1 GiB in both
        assert_eq!(
            h.iommu_entries,
            LeafCounts {
                pud: 1,
                pmd: 0,
                pte: 0
            }
        );
        assert_eq!(s.iommu_entries, h.iommu_entries);
        // KVM heard of every revoke
        assert!(h.mmu_invalidations >= 2 && s.mmu_invalidations >= 2);
        let t = format(&r);
        assert!(t.contains("EPT leaves 1G/2M/4K"), "{t}");
        assert!(t.contains(&format!("0/0/{pages}")), "{t}");
    }

    /// The two lines main.rs needs: a `GuestBoot(GuestBootArgs)` variant and an arm calling
    /// [`main`]; checked here with the same derive.
    #[test]
    fn the_args_fit_a_clap_subcommand() {
        use clap::{Parser, Subcommand};
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Cmd,
        }
        #[derive(Subcommand)]
        enum Cmd {
            GuestBoot(GuestBootArgs),
        }
        let cli = Cli::try_parse_from([
            "hugepfn",
            "guest-boot",
            "--bar-size",
            "2G",
            "--toggles",
            "1",
            "--only",
            "4k",
            "--dma",
            "per-page",
            "--json",
        ])
        .expect("parses");
        let Cmd::GuestBoot(a) = cli.cmd;
        assert_eq!(
            (a.bar_size, a.toggles, a.only, a.dma, a.json),
            (
                2 * G,
                1,
                Some(WorldKind::Small),
                Some(DmaLookupArg::PerPage),
                true
            )
        );
        let d = Cli::try_parse_from(["hugepfn", "guest-boot"]).expect("defaults");
        let Cmd::GuestBoot(a) = d.cmd;
        assert_eq!((a.bar_size, a.toggles, a.only), (128 * G, 2, None));
        assert!(Cli::try_parse_from(["hugepfn", "guest-boot", "--bar-size", "3G"]).is_err());
        let k = Cli::try_parse_from(["hugepfn", "guest-boot", "--kernel", "6.12.95"])
            .expect("a kernel");
        let Cmd::GuestBoot(a) = k.cmd;
        assert_eq!(a.kernel, Some(Kernel::V6_12_95));
        // issue 17: a toggle count that would run for hours is refused up front
        let many = Cli::try_parse_from(["hugepfn", "guest-boot", "--toggles", "100000000"]);
        let msg = many.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("0..=1000"), "{msg}");
        let bad = Cli::try_parse_from(["hugepfn", "guest-boot", "--kernel", "5.10"]);
        let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("unknown kernel `5.10`") && msg.contains("7.3.4"),
            "{msg}"
        );
    }

    #[test]
    fn bar_sizes_are_checked() {
        assert!(parse_bar_size("128G").is_ok());
        assert!(parse_bar_size("3G").is_err());
        assert!(parse_bar_size("2M").is_err());
        assert!(parse_bar_size("2T").is_err());
        assert!(parse_bar_size("256G").is_err());
        assert!(parse_bar_size("x").is_err());
    }
}
