//! `hugepfn`: what mapping a device BAR really costs, modelled after Linux.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hugepfn::{bench, compare, demo, output, runner};
use hugepfn_kernels::Kernel;
use hugepfn_mm::Arch;

#[derive(Parser)]
#[command(
    name = "hugepfn",
    version,
    about = "Huge PFN mappings of device memory (PUD 1 GiB / PMD 2 MiB / PTE 4 KiB), modelled after Linux"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Logic {
    /// The corrected design (no `--kernel`).
    Fixed,
    /// `--kernel 6.12.0`: faulting address must be aligned; pfn not checked.
    V612,
    /// `--kernel 6.13.0`: pfn checked, address not aligned down.
    V613,
}

impl Logic {
    /// `--logic` is an alias of `--kernel` kept for old command lines.
    fn kernel(self) -> Option<Kernel> {
        match self {
            Logic::Fixed => None,
            Logic::V612 => Some(Kernel::V6_12_0),
            Logic::V613 => Some(Kernel::V6_13_0),
        }
    }
}

fn parse_kernel(s: &str) -> Result<Kernel, String> {
    s.parse::<Kernel>().map_err(|e| e.to_string())
}

/// `--kernel` of `run` and `compare`: a version, or `corrected` (the corrected design even
/// where the file names a kernel).
#[derive(Debug, Clone, Copy)]
enum KernelArg {
    Corrected,
    Version(Kernel),
    /// `7.3.4+hugepfn`: that kernel with every known bug fixed (kernel-patches/).
    Fixed(Kernel),
}

fn parse_kernel_arg(s: &str) -> Result<KernelArg, String> {
    if s == "corrected" {
        return Ok(KernelArg::Corrected);
    }
    if let Some(v) = s.strip_suffix("+hugepfn") {
        return parse_kernel(v).map(KernelArg::Fixed);
    }
    parse_kernel(s)
        .map(KernelArg::Version)
        .map_err(|e| format!("{e}, a version with +hugepfn (its bugs fixed), or \"corrected\""))
}

/// `bench --max SIZE`: the growth sweep's largest BAR, 64M … 512G.
fn parse_growth_max(s: &str) -> Result<u64, String> {
    let m = hugepfn_units::parse_size(s).map_err(|e| e.to_string())?;
    if !(64 << 20..=512 << 30).contains(&m) {
        return Err(format!("{s} is outside the sweep's 64M … 512G"));
    }
    Ok(m)
}

/// `hugepfn bench --growth`: the table (each line as its point is done) or JSON, the chart.
fn bench_growth(json: bool, max: u64, plot: Option<&std::path::Path>) -> ExitCode {
    use bench::growth;
    if !json {
        println!("{}", growth::header());
    }
    let pts = match growth::sweep(max, |p| {
        if !json {
            println!("{}", growth::format_point(p));
        }
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hugepfn bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json && !emit(true, &pts, String::new) {
        return ExitCode::FAILURE;
    }
    if let Some(out) = plot {
        let title = "hugepfn bench --growth: a vfio-pci BAR mmapped 4 KiB-skewed, every page faulted once (model, one thread)";
        if let Err(e) = bench::chart::draw(out, &pts, title) {
            eprintln!("hugepfn bench: drawing {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
        if !json {
            println!("chart: {}", out.display());
        }
    }
    ExitCode::SUCCESS
}

/// `--memory SIZE`: the model's simulated memory, at least 1M.
fn parse_memory(s: &str) -> Result<u64, String> {
    let m = hugepfn_units::parse_size(s).map_err(|e| e.to_string())?;
    if m < hugepfn_scenario::MIN_MEMORY {
        return Err(format!("{s} is below the 1M minimum"));
    }
    Ok(m)
}

fn run_options(
    k: Option<KernelArg>,
    memory: Option<u64>,
    arch: Option<Arch>,
) -> runner::RunOptions {
    runner::RunOptions {
        memory,
        arch,
        kernel: match k {
            Some(KernelArg::Version(v) | KernelArg::Fixed(v)) => Some(v),
            _ => None,
        },
        corrected: matches!(k, Some(KernelArg::Corrected)),
        bugs_fixed: matches!(k, Some(KernelArg::Fixed(_))),
        ..runner::RunOptions::default()
    }
}

/// What `run` and `compare` override in a scenario.
#[derive(clap::Args)]
struct ModelArgs {
    /// The architecture, overriding the file's `arch`: x86_64, x86_64-5level, arm64 (4 KiB
    /// pages), arm64-16k, arm64-64k, riscv64-sv39, riscv64-sv48, riscv64-sv57.
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,
    /// The model's simulated memory (page tables, IOMMU and EPT tables, CoW pages), e.g.
    /// 16G; default the scenario's `memory`, else 4G. Using it up stops the run: exit 3.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    // Subcommands are listed in the order a user meets them: demo, run, bench, lab.
    /// Map the built-in H100-like device (or a sysfs resource file): huge remap_pfn_range per
    /// leaf policy, and the vfio-pci fault path at a kernel-chosen and a 1 GiB-aligned VA.
    Demo {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Only this BAR.
        #[arg(long)]
        bar: Option<u8>,
        /// BARs from a sysfs `resource` file (e.g. /sys/bus/pci/devices/0000:01:00.0/resource).
        #[arg(long, conflicts_with = "gpu")]
        resource: Option<PathBuf>,
        /// A GPU preset's BARs (h100, h200, b200, b300, a100-40g, a100-80g, v100; docs/vmm.md).
        #[arg(long)]
        gpu: Option<String>,
        /// Behave as this Linux version (6.12.95, 6.12.117, 7.3.4; 6.12.0, 6.13.0 model only)
        /// instead of the corrected design.
        #[arg(long, value_name = "VERSION", value_parser = parse_kernel)]
        kernel: Option<Kernel>,
        /// The model's simulated memory per mapping run, e.g. 64G (default 4G); using it up
        /// is exit 3.
        #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
        memory: Option<u64>,
        /// The architecture (default x86_64): x86_64, x86_64-5level, arm64 (4 KiB pages),
        /// arm64-16k, arm64-64k, riscv64-sv39, riscv64-sv48, riscv64-sv57.
        #[arg(long, value_name = "ARCH")]
        arch: Option<Arch>,
    },
    /// Run a scenario file on the model; exit 1 if an `expect` fails, 2 if the file is
    /// malformed, 3 if the model's simulated memory runs out (--memory raises it).
    Run {
        /// The scenario (TOML).
        file: PathBuf,
        /// Print the report as JSON (the same format the real-kernel probe prints).
        #[arg(long)]
        json: bool,
        /// Behave as this Linux version (6.12.95, 6.12.117, 7.3.4; 6.12.0, 6.13.0 model only),
        /// its known bugs included, or as the corrected design (`corrected`), overriding the
        /// file's `kernel`.
        #[arg(long, value_name = "VERSION", value_parser = parse_kernel_arg)]
        kernel: Option<KernelArg>,
        /// Old spelling of --kernel: fixed = the corrected design, v612 = 6.12.0, v613 = 6.13.0.
        #[arg(long, value_enum, hide = true, conflicts_with = "kernel")]
        logic: Option<Logic>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run one scenario under the RFC's three fault-path designs (huge_fault, early_fault,
    /// remap_overwrite) and print faults, page tables, TLB flushes, time and hazards side by side.
    Compare {
        /// The scenario (TOML).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Behave as this Linux version (or `corrected`), overriding the file's `kernel`.
        #[arg(long, value_name = "VERSION", value_parser = parse_kernel_arg)]
        kernel: Option<KernelArg>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// The kernel versions the model knows: every change of huge-pfnmap behaviour and every
    /// known bug, with its commit, and which kernel has it (docs/kernels.md).
    Kernels {
        /// Print JSON.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// Print the Markdown of docs/kernels.md (the default).
        #[arg(long)]
        markdown: bool,
    },
    /// Time the workloads behind the speed targets once (build with --release) and print
    /// the ratios between them; `cargo bench` gives the statistics.
    Bench {
        /// 8 GiB instead of 128 GiB.
        #[arg(long)]
        quick: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Instead: time and memory against BAR size (64M … 512G, every 4 KiB page faulted
        /// once), issue 16's 512 GiB target checked.
        #[arg(long)]
        growth: bool,
        /// With --growth: the largest BAR of the sweep (64M … 512G).
        #[arg(long, value_name = "SIZE", value_parser = parse_growth_max, default_value = "512G", requires = "growth")]
        max: u64,
        /// With --growth: also draw the sweep as an SVG chart to FILE.
        #[arg(long, value_name = "FILE", requires = "growth")]
        plot: Option<std::path::PathBuf>,
    },
    /// The real-kernel lab: run scenarios on Linux 6.12 in a QEMU guest (vfio-pci, ivshmem
    /// BAR), compare them with the model, record the kernel's counts (docs/lab.md).
    Lab {
        #[command(subcommand)]
        cmd: hugepfn::lab::LabCmd,
    },
    /// Boot a guest's memory from a BAR: KVM memslots over the BAR's VMA, EPT leaves at the
    /// host's mapping level, and the cost against a 4 KiB world.
    GuestBoot(hugepfn::consumers_cli::GuestBootArgs),
    /// What a VM pays for a passed-through GPU under each VMM's BAR placement: faults, leaves,
    /// page tables, DMA-map lookups and EPT violations per BAR and VMM, with a verdict
    /// (docs/vmm.md).
    Vmm(hugepfn::vmm_cli::VmmArgs),
    /// What the VFIO BAR mappings of a live process cost: reads /proc/PID/maps (never smaps),
    /// its fds and sysfs, and predicts leaves, faults, page tables and DMA lookups per mapping,
    /// with the VA that would fix a misplaced one (docs/vmm.md). Does not disturb the process.
    Inspect(hugepfn::inspect::InspectArgs),
    /// Random operation sequences on the model, each step checked against a page-granular
    /// reference of Linux's rules; divergences are shrunk to minimal scenarios (docs/testing.md).
    Fuzz(hugepfn::fuzz::cli::FuzzArgs),
    #[command(flatten)]
    Hw(hugepfn::hw_cli::HwCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Lab { cmd } => hugepfn::lab::main(cmd),
        Cmd::GuestBoot(a) => hugepfn::consumers_cli::main(a),
        Cmd::Fuzz(a) => hugepfn::fuzz::cli::main(a),
        Cmd::Vmm(a) => hugepfn::vmm_cli::main(a),
        Cmd::Inspect(a) => hugepfn::inspect::main(a),
        Cmd::Hw(c) => hugepfn::hw_cli::main(c),
        Cmd::Demo {
            json,
            bar,
            resource,
            gpu,
            kernel,
            memory,
            arch,
        } => {
            let opts = demo::DemoOptions {
                bar,
                kernel,
                memory,
                arch: arch.unwrap_or_default(),
            };
            if let Some(g) = gpu {
                let Some(p) = hugepfn_scenario::presets::gpu_preset(&g) else {
                    eprintln!(
                        "hugepfn demo: unknown GPU `{g}` (known: {})",
                        hugepfn_scenario::presets::gpu_preset_names().join(", ")
                    );
                    return ExitCode::from(2);
                };
                return demo_main(Some(demo::preset_bars(p)), opts, json);
            }
            let bars = match resource {
                Some(p) => {
                    let text = match std::fs::read_to_string(&p) {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("hugepfn: {}: {e}", p.display());
                            return ExitCode::from(2);
                        }
                    };
                    match hugepfn_vfio::parse_sysfs_resource(&text) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            eprintln!("hugepfn: {}: {e}", p.display());
                            return ExitCode::from(2);
                        }
                    }
                }
                None => None,
            };
            demo_main(bars, opts, json)
        }
        Cmd::Compare {
            file,
            json,
            kernel,
            model: ModelArgs { arch, memory },
        } => {
            let sc = match load(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match compare::compare(&sc, run_options(kernel, memory, arch)) {
                Ok(rows) => {
                    if !emit(json, &rows, || compare::format(&sc, &rows)) {
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Kernels { json, markdown: _ } => {
            let t = hugepfn::kernels_cli::table();
            if !emit(json, &t, || hugepfn::kernels_cli::markdown(&t)) {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            growth: true,
            json,
            max,
            plot,
            ..
        } => bench_growth(json, max, plot.as_deref()),
        Cmd::Bench { quick, json, .. } => match bench::run_all(quick) {
            Ok(figs) => {
                if !emit(json, &figs, || bench::format(&figs)) {
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hugepfn bench: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            file,
            json,
            kernel,
            logic,
            model: ModelArgs { arch, memory },
        } => {
            let sc = match load(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let opts = run_options(
                kernel.or(logic.and_then(Logic::kernel).map(KernelArg::Version)),
                memory,
                arch,
            );
            let mut model = match runner::ModelRun::new(&sc, opts) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    return ExitCode::from(2);
                }
            };
            // Progress on stderr for long runs (drawn only on a terminal, after a second).
            let bar = indicatif::ProgressBar::new(sc.steps.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} step {pos}/{len} done, {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(1000));
            let report = model.run_observed(&sc, &mut |_, rep| {
                bar.set_position(rep.index as u64 + 1);
                bar.set_message(format!("last: {} (line {})", rep.op, rep.line));
            });
            bar.finish_and_clear();
            if !emit(json, &report, || output::format_report(&sc, &report)) {
                return ExitCode::FAILURE;
            }
            if let Some(m) = &report.out_of_memory {
                eprintln!("hugepfn: {}: {m}", sc.origin);
                ExitCode::from(3)
            } else if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Prints `v` as JSON (`json`) or the text `text` makes; false if JSON serialisation failed
/// (said on stderr).
fn emit<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce() -> String) -> bool {
    if !json {
        print!("{}", text());
        return true;
    }
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            true
        }
        Err(e) => {
            eprintln!("hugepfn: {e}");
            false
        }
    }
}

/// Loads a scenario; a malformed file is said on stderr (exit 2). (`--arch` goes to the run's
/// options: on another architecture than its own a scenario checks its `"ARCH:KERNEL"`
/// expectations.)
fn load(file: &std::path::Path) -> Result<hugepfn_scenario::Scenario, ExitCode> {
    hugepfn_scenario::load_scenario(file).map_err(|e| {
        eprintln!("hugepfn: {e}");
        ExitCode::from(2)
    })
}

fn demo_main(
    bars: Option<Vec<hugepfn_vfio::Bar>>,
    opts: demo::DemoOptions,
    json: bool,
) -> ExitCode {
    match demo::run(bars, opts) {
        Ok(d) => {
            if !emit(json, &d, || demo::format(&d)) {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e @ demo::DemoError::OutOfMemory { .. }) => {
            eprintln!("hugepfn demo: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("hugepfn demo: {e}");
            ExitCode::FAILURE
        }
    }
}
