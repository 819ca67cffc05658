//! `hugepfn vmm`: what a VM pays for a passed-through GPU under each VMM's BAR placement.
//!
//! For every BAR of a GPU preset (hugepfn-scenario's `presets`) and every VMM placement policy
//! (`vmm`), a scenario is written and run on the model as the chosen kernel: the VMM mmaps the
//! BAR where its policy puts it (`va = "vmm:NAME"`), maps it for peer-to-peer DMA through vfio
//! type1 (`VFIO_IOMMU_MAP_DMA`, as QEMU's memory listener does for a RAM-device region; that
//! map faults the whole BAR in through `fixup_user_fault`), gives it to the guest as a KVM
//! memslot, and the guest touches every 4 KiB page once (its first pass: EPT violations). The
//! same BAR at a VA congruent with its physical address modulo 1 GiB is run too: the best any
//! placement can do, which the verdict compares with. Policies that place alike run once.
//!
//! The DMA-map time is an estimate: the model's lookups times the cost per 4 KiB lookup
//! Linux's type1 paid in the one published measurement (0fd06844de5d's cover letter: "~1s for
//! DMA mapping a 32GB PCI BAR", 8,388,608 lookups: 119 ns each). Everything else is the
//! model's count.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use hugepfn_kernels::Kernel;
use hugepfn_scenario::presets::{GpuPreset, gpu_preset, gpu_preset_names};
use hugepfn_scenario::vmm::VmmPolicy;
use hugepfn_scenario::{LeafCounts, RunReport, VaPlacement, parse_scenario};
use hugepfn_units::format_size;
use serde::Serialize;

use crate::runner::{ModelRun, RunOptions};

/// Nanoseconds per 4 KiB `vaddr_get_pfns` lookup + IOMMU map in the published measurement
/// (0fd06844de5d cover letter: ~1 s for a 32 GiB BAR, 8,388,608 lookups).
pub const DMA_NS_PER_LOOKUP: f64 = 1e9 / 8_388_608.0;

/// Where the guest sees the BAR (its GPA and IOVA): the address a DGX H100 guest gave its
/// aperture (upstream.md §4), naturally aligned for every preset's BAR.
pub const GUEST_BAR_GPA: u64 = 0x3800_0000_0000;

/// `hugepfn vmm`.
#[derive(Debug, Args)]
pub struct VmmArgs {
    /// The GPU (h100, h200, b200, b300, a100-40g, a100-80g, v100).
    #[arg(long)]
    gpu: String,
    /// VMMs, comma-separated, or `all`: qemu-9.2, qemu-9.1, cloud-hypervisor,
    /// cloud-hypervisor-old, firecracker, crosvm.
    #[arg(long, default_value = "all")]
    vmm: String,
    /// Behave as this Linux version (6.12.95, 6.12.117, 7.3.4, ...); default the corrected
    /// design.
    #[arg(long, value_name = "VERSION")]
    kernel: Option<String>,
    /// Only this BAR.
    #[arg(long)]
    bar: Option<u8>,
    /// The host's architecture: x86_64, x86_64-5level (the EPT) or arm64 (KVM/arm64's stage 2,
    /// 4 KiB pages). riscv hosts map BARs in the model (`hugepfn demo --arch`), but their KVM
    /// G-stage is not modelled.
    #[arg(long, default_value = "x86_64")]
    arch: String,
    /// The host's transparent_hugepage mode (always | madvise | never).
    #[arg(long, default_value = "always")]
    thp: String,
    /// The model's simulated memory per run (page, IOMMU and EPT tables).
    #[arg(long, value_name = "SIZE", default_value = "8G")]
    memory: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One BAR under one VMM.
#[derive(Debug, Clone, Serialize)]
pub struct VmmRow {
    /// BAR index.
    pub bar: u8,
    /// BAR size in bytes.
    pub size: u64,
    /// The VMM policy (`best` for the 1 GiB-congruent reference).
    pub vmm: String,
    /// The placement it resolves to.
    pub placement: String,
    /// The VA the mmap got.
    pub va: Option<u64>,
    /// Faults to fault the BAR in.
    pub faults: u64,
    /// Those faults by the level of the leaf they installed.
    pub faults_by_level: LeafCounts,
    /// Host leaves afterwards.
    pub leaves: LeafCounts,
    /// Page-table bytes of the host process afterwards.
    pub page_table_bytes: u64,
    /// `vaddr_get_pfns` lookups of the DMA map.
    pub dma_lookups: u64,
    /// Whether type1 batched lookups by leaf (Linux 6.15+).
    pub dma_batched: bool,
    /// Estimated DMA-map time, ms ([`DMA_NS_PER_LOOKUP`] per lookup).
    pub dma_ms_estimate: f64,
    /// IOMMU leaves.
    pub iommu_entries: LeafCounts,
    /// EPT leaves after the guest's first pass.
    pub ept_leaves: LeafCounts,
    /// EPT violations of that pass.
    pub ept_violations: u64,
    /// What to make of it.
    pub verdict: String,
    /// Why the run stopped early, if it did (the simulated memory ran out).
    pub out_of_memory: Option<String>,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct VmmReport {
    /// The preset.
    pub gpu: String,
    /// Its product name.
    pub title: String,
    /// What the model behaved as.
    pub model: String,
    /// Rows, by BAR then VMM.
    pub rows: Vec<VmmRow>,
}

/// Why `hugepfn vmm` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The generated scenario did not load or run (a bug).
    #[error("{0}")]
    Model(String),
}

fn usage(s: impl Into<String>) -> VmmError {
    VmmError::Usage(s.into())
}

fn parse_vmms(s: &str) -> Result<Vec<VmmPolicy>, VmmError> {
    if s.trim() == "all" {
        return Ok(VmmPolicy::ALL.to_vec());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let v: VmmPolicy = part.parse().map_err(|e| usage(format!("--vmm: {e}")))?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The scenario one row runs: mmap at `va`, DMA map, memslot, the guest's first pass.
fn scenario_text(gpu: &GpuPreset, bar: u8, size: u64, va: &str, thp: &str, arch: &str) -> String {
    format!(
        "name = \"vmm-{gpu}-bar{bar}\"\nthp = \"{thp}\"\narch = \"{arch}\"\n\
         [[device]]\nname = \"gpu\"\npreset = \"{gpu}\"\n\
         [[step]]\nop = \"mmap\"\nname = \"bar\"\ndevice = \"gpu\"\nbar = {bar}\nva = \"{va}\"\n\
         [[step]]\nop = \"dma_map\"\nmap = \"bar\"\niova = \"{GUEST_BAR_GPA:#x}\"\n\
         [[step]]\nop = \"kvm_memslot\"\nslot = 0\ngpa = \"{GUEST_BAR_GPA:#x}\"\nmap = \"bar\"\n\
         [[step]]\nop = \"guest_touch\"\ngpa = \"{GUEST_BAR_GPA:#x}\"\nlen = {size}\naccess = \"read\"\n",
        gpu = gpu.name,
    )
}

/// Runs one placement of one BAR; the row without its VMM name and verdict.
#[allow(clippy::too_many_arguments)]
fn run_one(
    gpu: &GpuPreset,
    bar: u8,
    size: u64,
    va: &str,
    thp: &str,
    arch: &str,
    opts: &RunOptions,
    batched: bool,
) -> Result<VmmRow, VmmError> {
    let text = scenario_text(gpu, bar, size, va, thp, arch);
    let sc = parse_scenario(&text, "hugepfn vmm").map_err(|e| VmmError::Model(e.to_string()))?;
    let mut model = ModelRun::new(&sc, *opts).map_err(|e| VmmError::Model(e.to_string()))?;
    let rep: RunReport = model.run(&sc);
    let step = |op: &str| rep.steps.iter().find(|s| s.op == op);
    let last = rep.steps.last();
    let dma = step("dma_map");
    let guest = step("guest_touch");
    let faults: u64 = rep.steps.iter().map(|s| s.counters.faults).sum();
    let mut by_level = LeafCounts::default();
    for s in &rep.steps {
        if let Some(l) = s.counters.faults_by_level {
            by_level += l;
        }
    }
    let dma_lookups = dma.map_or(0, |s| s.counters.dma_lookups);
    let pt = last.and_then(|s| s.page_table_pages);
    Ok(VmmRow {
        bar,
        size,
        vmm: String::new(),
        placement: va.to_string(),
        va: model.mapping_va("bar"),
        faults,
        faults_by_level: by_level,
        leaves: last.and_then(|s| s.leaves).unwrap_or_default(),
        page_table_bytes: pt.map_or(0, |p| p.bytes()),
        dma_lookups,
        dma_batched: batched,
        dma_ms_estimate: dma_lookups as f64 * DMA_NS_PER_LOOKUP / 1e6,
        iommu_entries: last.and_then(|s| s.iommu_entries).unwrap_or_default(),
        ept_leaves: last.and_then(|s| s.ept_leaves).unwrap_or_default(),
        ept_violations: guest.map_or(0, |s| s.counters.ept_violations),
        verdict: String::new(),
        out_of_memory: rep.out_of_memory.clone(),
    })
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The level most faults installed, named as the kernel does.
fn dominant(l: &LeafCounts) -> &'static str {
    if l.pte >= l.pmd && l.pte >= l.pud {
        "PTE"
    } else if l.pmd >= l.pud {
        "PMD"
    } else {
        "PUD"
    }
}

fn verdict(row: &VmmRow, best: &VmmRow) -> String {
    if let Some(m) = &row.out_of_memory {
        return format!("stopped: {m}");
    }
    let leaves = row.leaves.pud + row.leaves.pmd + row.leaves.pte;
    let dma = if !row.dma_batched && row.dma_lookups > leaves && row.dma_ms_estimate >= 100.0 {
        format!(
            "; DMA map ~{:.1} s: type1 looks up every 4 KiB page before Linux 6.15, whatever the leaves",
            row.dma_ms_estimate / 1e3
        )
    } else {
        String::new()
    };
    format!("{}{dma}", verdict_faults(row, best))
}

fn verdict_faults(row: &VmmRow, best: &VmmRow) -> String {
    let name = format!("BAR{}", row.bar);
    if row.faults <= best.faults && row.ept_violations <= best.ept_violations {
        return format!(
            "{name}: {} {} faults, the fewest any placement gets",
            count(row.faults),
            dominant(&row.faults_by_level)
        );
    }
    // The smallest alignment that reaches the best: the largest leaf the best run used.
    let fix = if best.leaves.pud > 0 {
        "align the mmap to 1 GiB (congruent with the BAR)"
    } else if best.leaves.pmd > 0 {
        "align the mmap to 2 MiB (congruent with the BAR)"
    } else {
        "nothing: 4 KiB leaves are the best here"
    };
    format!(
        "{name}: {} {} faults (best {}), fix: {fix}",
        count(row.faults),
        dominant(&row.faults_by_level),
        count(best.faults)
    )
}

/// Runs every BAR × VMM of `args`.
pub fn report(args: &VmmArgs) -> Result<VmmReport, VmmError> {
    let gpu = gpu_preset(&args.gpu).ok_or_else(|| {
        usage(format!(
            "unknown GPU `{}` (known: {})",
            args.gpu,
            gpu_preset_names().join(", ")
        ))
    })?;
    let vmms = parse_vmms(&args.vmm)?;
    if !["always", "madvise", "never"].contains(&args.thp.as_str()) {
        return Err(usage(format!(
            "--thp {}: expected always, madvise or never",
            args.thp
        )));
    }
    if !["x86_64", "x86_64-5level", "arm64"].contains(&args.arch.as_str()) {
        return Err(usage(format!(
            "--arch {}: a VM's cost needs the host's second-stage table; the model has the \
             x86 EPT and KVM/arm64's stage 2 (4 KiB pages) only (other host mappings: hugepfn \
             demo --arch)",
            args.arch
        )));
    }
    let kernel = match &args.kernel {
        None => None,
        Some(k) => Some(k.parse::<Kernel>().map_err(|e| usage(e.to_string()))?),
    };
    let memory = hugepfn_units::parse_size(&args.memory)
        .map_err(|e| usage(format!("--memory: {e}")))?
        .max(hugepfn_scenario::MIN_MEMORY);
    let opts = RunOptions {
        kernel,
        memory: Some(memory),
        ..RunOptions::default()
    };
    let behaviour = hugepfn_kernels::Behaviour::from_option(kernel);
    let batched = behaviour.type1_batches() != Some(false);
    let bars: Vec<_> = gpu
        .bars
        .iter()
        .filter(|b| args.bar.is_none_or(|i| i == b.index))
        .collect();
    if bars.is_empty() {
        let have: Vec<String> = gpu.bars.iter().map(|b| format!("BAR{}", b.index)).collect();
        return Err(usage(format!(
            "{} has no BAR{} (it has {})",
            gpu.name,
            args.bar.unwrap_or(0),
            have.join(", ")
        )));
    }
    let progress = indicatif::ProgressBar::new(0);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {pos}/{len} runs, {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(std::time::Duration::from_millis(1000));
    let mut rows = Vec::new();
    for b in bars {
        let placements: Vec<(VmmPolicy, VaPlacement)> =
            vmms.iter().map(|&v| (v, v.placement(b.size))).collect();
        let mut distinct: Vec<VaPlacement> = Vec::new();
        for (_, p) in &placements {
            if !distinct.contains(p) {
                distinct.push(*p);
            }
        }
        let best_at = VaPlacement::Congruent { size: 1 << 30 };
        progress.inc_length(distinct.len() as u64 + 1);
        progress.set_message(format!("BAR{} at {best_at}", b.index));
        let mut best = run_one(
            gpu,
            b.index,
            b.size,
            &best_at.to_string(),
            &args.thp,
            &args.arch,
            &opts,
            batched,
        )?;
        progress.inc(1);
        let mut done: HashMap<VaPlacement, VmmRow> = HashMap::new();
        for p in distinct {
            progress.set_message(format!("BAR{} at {p}", b.index));
            let r = if p == best_at {
                best.clone()
            } else {
                run_one(
                    gpu,
                    b.index,
                    b.size,
                    &p.to_string(),
                    &args.thp,
                    &args.arch,
                    &opts,
                    batched,
                )?
            };
            done.insert(p, r);
            progress.inc(1);
        }
        for (v, p) in placements {
            let Some(r) = done.get(&p) else { continue };
            let mut r = r.clone();
            r.vmm = v.name().to_string();
            r.verdict = verdict(&r, &best);
            rows.push(r);
        }
        best.vmm = "best".into();
        best.verdict = format!(
            "BAR{}: a VA congruent with the BAR modulo 1 GiB (for reference)",
            b.index
        );
        rows.push(best);
    }
    progress.finish_and_clear();
    Ok(VmmReport {
        gpu: gpu.name.to_string(),
        title: gpu.title.to_string(),
        model: behaviour.label(),
        rows,
    })
}

/// Bytes as K, M or G with one decimal where it matters.
fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.1}G", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1}M", f / (K * K))
    } else {
        format_size(n)
    }
}

fn levels(l: &LeafCounts) -> String {
    format!("{}/{}/{}", count(l.pud), count(l.pmd), count(l.pte))
}

/// The report as a table.
pub fn format(r: &VmmReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}) on the model as {}", r.title, r.gpu, r.model);
    let _ = writeln!(
        s,
        "each VMM mmaps the BAR, DMA-maps it (faulting it in), gives it to KVM; the guest reads every 4 KiB page once"
    );
    let _ = writeln!(
        s,
        "{:<4} {:>6} {:<21} {:<13} {:>16} {:>12} {:>19} {:>9} {:>12} {:>14} {:>12}",
        "bar",
        "size",
        "vmm",
        "placement",
        "va",
        "faults",
        "leaves 1G/2M/4K",
        "pt bytes",
        "dma lookups",
        "dma map (est.)",
        "ept viol."
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<4} {:>6} {:<21} {:<13} {:>16} {:>12} {:>19} {:>9} {:>12} {:>14} {:>12}",
            format!("BAR{}", row.bar),
            format_size(row.size),
            row.vmm,
            row.placement,
            row.va.map_or("-".into(), |v| format!("{v:#x}")),
            count(row.faults),
            levels(&row.leaves),
            bytes(row.page_table_bytes),
            count(row.dma_lookups),
            format!("{:.3} ms", row.dma_ms_estimate),
            count(row.ept_violations),
        );
    }
    let _ = writeln!(s);
    for row in r.rows.iter().filter(|r| r.vmm != "best") {
        let _ = writeln!(s, "{:<21} {}", row.vmm, row.verdict);
    }
    let _ = writeln!(
        s,
        "\ndma map (est.): lookups x {DMA_NS_PER_LOOKUP:.0} ns, the one published figure (0fd06844de5d: ~1 s for a 32 GiB BAR at 4 KiB); type1 here looks up {}",
        if r.rows.first().is_some_and(|r| r.dma_batched) {
            "once per host leaf (Linux 6.15+)"
        } else {
            "every 4 KiB page (before Linux 6.15)"
        }
    );
    let _ = writeln!(
        s,
        "kernel: the VA mmap(NULL) returns in the model (6.12: congruent with the BAR modulo 2 MiB when the length is a multiple of 2 MiB; 7.3: page-granular, 2 MiB aligned in 1 of 512 ASLR draws; docs/kernels.md)"
    );
    s
}

/// `hugepfn vmm`.
pub fn main(args: VmmArgs) -> ExitCode {
    match report(&args) {
        Ok(r) => {
            if args.json {
                match serde_json::to_string_pretty(&r) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("hugepfn vmm: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", format(&r));
            }
            if r.rows.iter().any(|r| r.out_of_memory.is_some()) {
                eprintln!("hugepfn vmm: the simulated memory ran out (--memory raises it)");
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(VmmError::Usage(m)) => {
            eprintln!("hugepfn vmm: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("hugepfn vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(gpu: &str, vmm: &str, kernel: Option<&str>, bar: Option<u8>) -> VmmArgs {
        VmmArgs {
            gpu: gpu.into(),
            vmm: vmm.into(),
            kernel: kernel.map(Into::into),
            bar,
            arch: "x86_64".into(),
            thp: "always".into(),
            memory: "8G".into(),
            json: false,
        }
    }

    #[test]
    fn h100_bar4_under_each_vmm() {
        // 32 MiB keeps the 4 KiB runs short.
        let r = report(&args("h100", "all", Some("7.3.4"), Some(4))).expect("report");
        let row = |v: &str| r.rows.iter().find(|x| x.vmm == v).expect(v);
        let q = row("qemu-9.2");
        assert_eq!(q.placement, "align:32M");
        assert_eq!((q.leaves.pmd, q.faults, q.ept_violations), (16, 16, 16));
        assert!(q.verdict.contains("the fewest"), "{}", q.verdict);
        // 7.3.4's kernel placement is page-granular: every page a PTE fault
        let old = row("qemu-9.1");
        assert_eq!(old.placement, "kernel");
        assert_eq!((old.faults, old.leaves.pte), (8192, 8192));
        assert!(
            old.verdict.contains("fix: align the mmap to 2 MiB"),
            "{}",
            old.verdict
        );
        // 7.3.4 batches type1 lookups: one per leaf
        assert!(q.dma_batched);
        assert_eq!((q.dma_lookups, old.dma_lookups), (16, 8192));
        assert!(old.page_table_bytes > q.page_table_bytes);
        assert_eq!(row("firecracker").faults, old.faults);
        assert_eq!(row("cloud-hypervisor").faults, q.faults);
        assert_eq!(row("best").faults, 16);
        assert!(format(&r).contains("BAR4"));
        // 6.12.95: type1 looks up every page, whatever the leaf
        let r = report(&args("h100", "qemu-9.2", Some("6.12.95"), Some(4))).expect("report");
        assert_eq!(r.rows[0].dma_lookups, 8192);
        assert!(!r.rows[0].dma_batched);
    }

    #[test]
    fn v100_aperture_takes_1g_leaves_at_qemu_9_2() {
        let r = report(&args("v100", "qemu-9.2", None, Some(1))).expect("report");
        let q = &r.rows[0];
        assert_eq!(q.placement, "align:1G");
        assert_eq!((q.leaves.pud, q.faults, q.ept_leaves.pud), (16, 16, 16));
    }

    #[test]
    fn on_arm64_the_host_maps_2m_and_stage_2_still_1g() {
        let mut a = args("v100", "qemu-9.2", None, Some(1));
        a.arch = "arm64".into();
        let r = report(&a).expect("report");
        let q = &r.rows[0];
        assert_eq!(q.placement, "align:1G");
        // 16 GiB: no PUD pfnmap on arm64, 8192 PMD faults; get_vma_page_shift gives 1 GiB
        assert_eq!((q.leaves.pud, q.leaves.pmd), (0, 8192));
        assert_eq!((q.ept_leaves.pud, q.ept_violations), (16, 16));
        a.arch = "riscv64-sv48".into();
        assert!(matches!(report(&a), Err(VmmError::Usage(_))));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for (a, want) in [
            (args("h300", "all", None, None), "unknown GPU `h300`"),
            (args("h100", "qemu-10", None, None), "unknown VMM `qemu-10`"),
            (args("h100", "all", Some("5.4"), None), "5.4"),
            (
                args("h100", "all", None, Some(1)),
                "no BAR1 (it has BAR0, BAR2, BAR4)",
            ),
        ] {
            match report(&a) {
                Err(VmmError::Usage(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
