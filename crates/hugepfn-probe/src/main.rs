//! `hugepfn-probe`: runs a hugepfn scenario on the running Linux kernel through vfio-pci and
//! prints the same [`hugepfn_scenario::RunReport`] JSON as `hugepfn run --json`, with
//! `source = "kernel <uname -r>"`. Fault counts are `getrusage(RUSAGE_SELF).ru_minflt` deltas;
//! the kernel cannot say which level a fault installed, so `faults_by_level`, `leaves` and
//! `page_table_pages` are `null`.
//!
//! Exit status: 0 = every `expect` passed, 1 = an expectation failed (or data read back wrong),
//! 2 = the scenario could not be run (bad input, no device, VFIO refused).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[cfg(probe_host)]
mod error;
#[cfg(probe_host)]
mod exec;
#[cfg(probe_host)]
mod pci;
#[cfg(probe_host)]
#[allow(unsafe_code)]
mod sys;
#[cfg(probe_host)]
mod vfio;

#[derive(Parser)]
#[command(
    name = "hugepfn-probe",
    version,
    about = "Run a hugepfn scenario on this Linux kernel (vfio-pci BAR mmap, ru_minflt fault counts) and print the report JSON"
)]
struct Cli {
    /// The scenario (TOML).
    file: PathBuf,
    /// The real device for a scenario device: BDF (when the scenario has one device) or
    /// NAME=BDF; repeat for several. BAR addresses and sizes come from
    /// /sys/bus/pci/devices/BDF/resource. Default: the first ivshmem device (1af4:1110),
    /// which is bound to vfio-pci automatically.
    #[arg(long, value_name = "[NAME=]BDF")]
    device: Vec<String>,
    /// Rebind --device devices to vfio-pci if they are bound to another driver (root).
    #[arg(long)]
    bind: bool,
    /// Write the scenario's `thp` mode to /sys/kernel/mm/transparent_hugepage/enabled for the
    /// run and restore it afterwards (root). Without it, a different mode is an error.
    #[arg(long)]
    set_thp: bool,
    /// VFIO IOMMU backend.
    #[cfg(probe_host)]
    #[arg(long, value_enum, default_value = "auto")]
    iommu: vfio::IommuChoice,
    /// Print the report on one line.
    #[arg(long)]
    compact: bool,
    /// Before each step print `hugepfn-probe: trace step=I of=N line=L op=OP` on stderr and
    /// wait until a terminal has sent it (so a kernel crash is attributed to its step).
    #[arg(long)]
    trace: bool,
    /// After the last step, with every mapping still in place, create FILE (this process's
    /// pid in it) and wait until it is removed: `hugepfn inspect PID` reads the mappings
    /// meanwhile (the lab's `lab-inspect-*` scenarios).
    #[arg(long, value_name = "FILE")]
    hold: Option<PathBuf>,
}

#[cfg(probe_host)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hugepfn-probe: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(probe_host)]
fn run(cli: &Cli) -> Result<ExitCode, error::ProbeError> {
    use std::io::Write;
    let sc = hugepfn_scenario::load_scenario(&cli.file)?;
    let devices = cli
        .device
        .iter()
        .map(|d| exec::parse_device_arg(d))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = exec::Options {
        devices,
        bind: cli.bind,
        set_thp: cli.set_thp,
        iommu: cli.iommu,
        trace: cli.trace,
        hold: cli.hold.clone(),
    };
    let out = exec::run(&sc, &opts)?;
    let json = if cli.compact {
        serde_json::to_string(&out.report)
    } else {
        serde_json::to_string_pretty(&out.report)
    }
    .map_err(std::io::Error::other)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json}")?;
    stdout.flush()?;
    if !out.warnings.is_empty() {
        eprintln!(
            "hugepfn-probe: {} warning(s) above; the report is still the kernel's measurement",
            out.warnings.len()
        );
    }
    Ok(if out.report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(not(probe_host))]
fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("hugepfn-probe: error: hugepfn-probe runs on Linux x86_64 and aarch64 only");
    ExitCode::from(2)
}
