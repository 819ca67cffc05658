//! The CLI of the MMU model (`hugepfn-hw`): `calibrate`, `access`, `lat-mem-rd`, `report`.
//! docs/tlb.md describes the model and the calibration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hugepfn_hw::calib::{self, Calibration};
use hugepfn_hw::calibrate::{self, Options};
use hugepfn_hw::config::CpuModel;
use hugepfn_hw::latmemrd;
use hugepfn_hw::measure::MeasureOptions;
use hugepfn_hw::sweep::{self, SweepPoint};
use hugepfn_hw::{Costs, Mapping, Mmu, Pattern, Translation, Workload};
use hugepfn_mm::{LeafCap, Level};
use indicatif::{ProgressBar, ProgressStyle};

mod chart;

/// The MMU-model subcommands (flattened into the main command list).
#[derive(Subcommand)]
pub enum HwCmd {
    /// Measure a pointer chase on this machine (4 KiB pages, 2 MiB THP, 1 GiB hugetlb where
    /// reserved), fit the TLB model's costs and save them to calibration/local.toml, which the
    /// model then reads before the committed calibration/this-machine.toml (docs/tlb.md).
    Calibrate(CalibrateArgs),
    /// Run an access workload over a mapping on the MMU model and print TLB counters and time.
    Access(AccessArgs),
    /// Reproduce the lat_mem_rd PTE-vs-PMD table of the PMD remap_pfn_range RFC on the model.
    LatMemRd(CommonArgs),
    /// Draw faults, page-table memory, TLB misses and access time against BAR size (SVG).
    Report(ReportArgs),
}

/// Options every model command shares.
#[derive(Args, Clone)]
pub struct CommonArgs {
    /// Calibration file (default: calibration/local.toml in the working directory, written by
    /// `hugepfn calibrate`; else the repository's committed calibration/this-machine.toml; else
    /// built-in guesses).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// CPU preset: golden-cove or zen4 (default: the calibration's, else golden-cove).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hugepfn calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    /// Where to save (the default is read by the model before the committed
    /// calibration/this-machine.toml and is ignored by git; to replace the committed file, pass
    /// --out calibration/this-machine.toml).
    #[arg(long, default_value = calib::LOCAL_PATH)]
    pub out: PathBuf,
    /// Fewer, shorter runs (a rough calibration in a few seconds).
    #[arg(long)]
    pub quick: bool,
}

/// `hugepfn access`.
#[derive(Args)]
pub struct AccessArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Bytes mapped (e.g. 1G).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Largest leaf: 4k, 2m or 1g.
    #[arg(long, default_value = "2m")]
    leaf: String,
    /// In a VM whose EPT maps with this leaf (4k, 2m, 1g); native if absent.
    #[arg(long)]
    vm: Option<String>,
    /// sequential, strided, random or chase.
    #[arg(long, default_value = "chase")]
    pattern: String,
    /// Bytes between loads (strided).
    #[arg(long, default_value_t = 4096)]
    stride: u64,
    /// Lines per page (chase).
    #[arg(long, default_value_t = 64)]
    lines: u32,
    /// Counted loads.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Uncounted loads first.
    #[arg(long, default_value_t = 100_000)]
    warmup: u64,
}

/// `hugepfn report`.
#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The SVG to write.
    #[arg(long, default_value = "report.svg")]
    out: PathBuf,
    /// Largest BAR (powers of four from 64 MiB up to it).
    #[arg(long, default_value = "16G")]
    max_bar: String,
    /// Loads per point.
    #[arg(long, default_value_t = 20_000)]
    loads: u64,
}

fn fail(cmd: &str, e: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("hugepfn {cmd}: {e}");
    ExitCode::from(code)
}

fn size(s: &str) -> Result<u64, String> {
    hugepfn_units::parse_size(s).map_err(|e| format!("size {s:?}: {e}"))
}

fn leaf(s: &str) -> Result<Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "4k" | "pte" => Ok(Level::Pte),
        "2m" | "pmd" => Ok(Level::Pmd),
        "1g" | "pud" => Ok(Level::Pud),
        _ => Err(format!("leaf {s:?}: expected 4k, 2m or 1g")),
    }
}

fn cap(l: Level) -> LeafCap {
    match l {
        Level::Pte => LeafCap::Pte,
        Level::Pmd => LeafCap::Pmd,
        _ => LeafCap::Pud,
    }
}

/// Costs and CPU model for a command: the calibration's (CPU preset with its fitted LLC size)
/// unless `--cpu` names another preset.
fn setup(c: &CommonArgs) -> Result<(CpuModel, Costs, String), String> {
    let found = Calibration::find(c.calibration.as_deref()).map_err(|e| e.to_string())?;
    let (costs, from, cal_cpu) = match &found {
        Some((cal, from)) => (cal.costs, from.clone(), cal.cpu_model()),
        None => (Costs::default(), "built-in default (a guess)".into(), None),
    };
    let cpu = match (&c.cpu, cal_cpu) {
        (Some(name), _) => CpuModel::preset(name)
            .ok_or(format!("unknown CPU preset {name:?} (golden-cove, zen4)"))?,
        (None, Some(cpu)) => cpu,
        (None, None) => CpuModel::default(),
    };
    Ok((cpu, costs, from))
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_string());
    // Drawn only if the run lasts longer than a second.
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Runs a model subcommand.
pub fn main(cmd: HwCmd) -> ExitCode {
    match cmd {
        HwCmd::Calibrate(a) => calibrate_cmd(&a),
        HwCmd::Access(a) => access_cmd(&a),
        HwCmd::LatMemRd(a) => lat_mem_rd_cmd(&a),
        HwCmd::Report(a) => report_cmd(&a),
    }
}

fn calibrate_cmd(a: &CalibrateArgs) -> ExitCode {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let machine = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let mut opts = Options::for_machine(&cpuinfo);
    if a.quick {
        opts.sizes = vec![16 << 10, 256 << 10, 4 << 20, 64 << 20, 256 << 20];
        opts.measure = MeasureOptions {
            accesses: 100_000,
            warmup: 200_000,
            runs: 3,
            seed: 1,
        };
        opts.sim_count = 10_000;
    }
    let points = opts.points();
    let pb = bar(points.len() as u64, "measuring");
    let results = calibrate::measure_all(&opts, |p| {
        pb.set_message(format!(
            "measuring {} {} KiB",
            p.backing.name(),
            p.size >> 10
        ));
        pb.inc(1);
    });
    pb.finish_and_clear();
    let mut measured = Vec::new();
    for (p, r) in points.iter().zip(results) {
        match r {
            Ok(m) => measured.push(m),
            Err(e) => eprintln!(
                "hugepfn calibrate: skipped {} {} KiB: {e}",
                p.backing.name(),
                p.size >> 10
            ),
        }
    }
    if measured.is_empty() {
        return fail("calibrate", "nothing could be measured", 1);
    }
    let pb = bar(
        (measured.len() * opts.candidates.len() * opts.llc_sizes.len().max(1)) as u64,
        "simulating",
    );
    let cal = match calibrate::fit(&opts, &measured, &machine, |tr, llc, m| {
        pb.set_message(format!(
            "simulating {} LLC {} MiB {} {} KiB",
            tr.name(),
            llc >> 20,
            m.spec.backing.name(),
            m.spec.size >> 10
        ));
        pb.inc(1);
    }) {
        Ok(c) => c,
        Err(e) => return fail("calibrate", e, 1),
    };
    pb.finish_and_clear();
    println!(
        "machine: {}; model: {} ({}, effective LLC {} MiB)",
        cal.machine,
        cal.cpu,
        cal.translation,
        cal.llc_size >> 20
    );
    println!(
        "{:>6} {:>10} {:>6} {:>11} {:>9} {:>7}",
        "pages", "size", "huge", "measured", "model", "error"
    );
    for p in &cal.points {
        println!(
            "{:>6} {:>10} {:>5.0}% {:>8.1} ns {:>6.1} ns {:>+6.1}%",
            p.backing,
            hugepfn_units::format_size(p.size),
            100.0 * p.huge_fraction,
            p.measured_ns,
            p.model_ns,
            100.0 * (p.model_ns - p.measured_ns) / p.measured_ns
        );
    }
    let c = &cal.costs;
    println!(
        "costs (ns): L1D {:.2}  L2 {:.2}  L3 {:.2}  DRAM {:.2}  STLB hit {:.2}  walk {:.2}",
        c.l1, c.l2, c.l3, c.mem, c.stlb_hit, c.walk
    );
    println!(
        "fit error: rms {:.1}%, max {:.1}%",
        100.0 * cal.rms_error,
        100.0 * cal.max_error
    );
    if let Err(e) = cal.save(&a.out) {
        return fail("calibrate", e, 1);
    }
    println!("saved {}", a.out.display());
    ExitCode::SUCCESS
}

fn access_cmd(a: &AccessArgs) -> ExitCode {
    let run = || -> Result<(hugepfn_hw::AccessResult, String, String), String> {
        let (cpu, costs, from) = setup(&a.common)?;
        let len = size(&a.size)?;
        let leaf = leaf(&a.leaf)?;
        let tr = match &a.vm {
            Some(v) => Translation::Nested(self::leaf(v)?),
            None => Translation::Native,
        };
        let pattern = match a.pattern.as_str() {
            "sequential" => Pattern::Sequential,
            "strided" => Pattern::Strided { stride: a.stride },
            "random" => Pattern::Random,
            "chase" => Pattern::Chase { lines: a.lines },
            p => {
                return Err(format!(
                    "pattern {p:?}: sequential, strided, random or chase"
                ));
            }
        };
        // over the tool's limits: refused before anything is built (issue 17: 64T at 4k
        // aborted on memory, a count of 1e18 ran for hours)
        let leaves = len / leaf.size();
        if leaves > crate::runner::access::MAX_CHASE_PAGES {
            return Err(format!(
                "{} at {} leaves is {leaves} leaves: over this tool's limit of {} (the page tables are built in memory)",
                hugepfn_units::format_size(len),
                hugepfn_units::format_size(leaf.size()),
                crate::runner::access::MAX_CHASE_PAGES
            ));
        }
        if a.count.saturating_add(a.warmup) > crate::runner::access::MAX_LOADS {
            return Err(format!(
                "{} loads: over this tool's limit of {}",
                a.count.saturating_add(a.warmup),
                crate::runner::access::MAX_LOADS
            ));
        }
        let map = Mapping::build(cap(leaf), tr, len).map_err(|e| e.to_string())?;
        let mut mmu = Mmu::new(&cpu);
        let w = Workload {
            pattern,
            offset: 0,
            len,
            count: a.count,
            warmup: a.warmup,
            seed: 1,
        };
        let r =
            hugepfn_hw::workload::run(&mut mmu, map.space(), hugepfn_hw::sim::MAP_VA, &w, &costs)
                .map_err(|e| e.to_string())?;
        Ok((r, cpu.name, from))
    };
    match run() {
        Ok((r, cpu, from)) => {
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                let c = &r.counters;
                println!("cpu {cpu}, costs from {from}");
                println!(
                    "loads {}  L1 DTLB hits {}  STLB hits {}  walks {}  faults {}",
                    c.accesses, c.l1_hits, c.stlb_hits, c.walks, c.faults
                );
                println!(
                    "walk refs {} (EPT {})  PWC hits {}  nested-TLB hits {}",
                    c.walk_refs, c.walk_refs_host, c.pwc_hits, c.nested_tlb_hits
                );
                println!(
                    "walk refs served L1D/L2/L3/DRAM {:?}  data {:?}",
                    c.walk_served, c.data_served
                );
                println!(
                    "estimated {:.1} ns per load, {:.3} ms in all",
                    r.ns_per_access(),
                    r.time_ns / 1e6
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("access", e, 2),
    }
}

fn lat_mem_rd_cmd(a: &CommonArgs) -> ExitCode {
    let (cpu, costs, from) = match setup(a) {
        Ok(x) => x,
        Err(e) => return fail("lat-mem-rd", e, 2),
    };
    let pb = bar(14, "lat_mem_rd");
    let rows = latmemrd::reproduce(&cpu, &costs, latmemrd::DEFAULT_COUNT, |mib, cap| {
        pb.set_message(format!("{mib} MiB {cap:?}"));
        pb.inc(1);
    });
    pb.finish_and_clear();
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return fail("lat-mem-rd", e, 1),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!("cpu {}, costs from {from}", cpu.name);
    print!("{}", latmemrd::table(&rows));
    ExitCode::SUCCESS
}

fn report_cmd(a: &ReportArgs) -> ExitCode {
    let (cpu, costs, from) = match setup(&a.common) {
        Ok(x) => x,
        Err(e) => return fail("report", e, 2),
    };
    let max = match size(&a.max_bar) {
        Ok(m) => m,
        Err(e) => return fail("report", e, 2),
    };
    let mut bars = Vec::new();
    let mut b = 64u64 << 20;
    while b <= max {
        bars.push(b);
        b *= 4;
    }
    if bars.is_empty() {
        return fail("report", "--max-bar must be at least 64M", 2);
    }
    let warmup = 4 * a.loads;
    let total = (bars.len() * sweep::LEAVES.len() * 2) as u64;
    let pb = bar(total, "report");
    let mut pts: Vec<SweepPoint> = Vec::new();
    for &bar_size in &bars {
        for (_, leaf) in sweep::LEAVES {
            for vm in [false, true] {
                pb.set_message(format!(
                    "{} {} {}",
                    hugepfn_units::format_size(bar_size),
                    leaf.name(),
                    if vm { "vm" } else { "native" }
                ));
                match sweep::point(&cpu, &costs, bar_size, leaf, vm, a.loads, warmup) {
                    Ok(p) => pts.push(p),
                    Err(e) => {
                        pb.finish_and_clear();
                        return fail("report", e, 1);
                    }
                }
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    if let Err(e) = chart::draw(&a.out, &pts, &cpu.name, &from) {
        return fail("report", e, 1);
    }
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&pts).unwrap_or_default());
    } else {
        println!(
            "{:>8} {:>5} {:>6} {:>10} {:>12} {:>9} {:>9}",
            "BAR", "leaf", "where", "faults", "tables", "walks/1k", "ns/load"
        );
        for p in &pts {
            println!(
                "{:>8} {:>5} {:>6} {:>10} {:>12} {:>9.1} {:>9.1}",
                hugepfn_units::format_size(p.bar),
                hugepfn_units::format_size(p.leaf),
                if p.vm { "vm" } else { "native" },
                p.faults,
                hugepfn_units::format_size(p.table_bytes),
                p.walks_per_k,
                p.ns_per_load
            );
        }
    }
    println!(
        "wrote {} (cpu {}, costs from {from})",
        a.out.display(),
        cpu.name
    );
    ExitCode::SUCCESS
}
