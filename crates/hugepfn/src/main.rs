//! `hugepfn`: what mapping a device BAR really costs, modelled after Linux.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hugepfn::{bench, compare, demo, output, runner};
use hugepfn_vfio::HugeFaultLogic;

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
    /// Linux 6.15+ / 6.12.y stable: align down, check the pfn.
    Fixed,
    /// As merged in 6.12: faulting address must be aligned; pfn not checked.
    V612,
    /// 6.13: pfn checked, address not aligned down.
    V613,
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
        #[arg(long)]
        resource: Option<PathBuf>,
    },
    /// Run a scenario file on the model; exit 1 if an `expect` fails, 2 if the file is malformed.
    Run {
        /// The scenario (TOML).
        file: PathBuf,
        /// Print the report as JSON (the same format the real-kernel probe prints).
        #[arg(long)]
        json: bool,
        /// Which vfio_pci_mmap_huge_fault to run.
        #[arg(long, value_enum, default_value = "fixed")]
        logic: Logic,
    },
    /// Run one scenario under the RFC's three fault-path designs (huge_fault, early_fault,
    /// remap_overwrite) and print faults, page tables, TLB flushes, time and hazards side by side.
    Compare {
        /// The scenario (TOML).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    #[command(flatten)]
    Hw(hugepfn::hw_cli::HwCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Lab { cmd } => hugepfn::lab::main(cmd),
        Cmd::GuestBoot(a) => hugepfn::consumers_cli::main(a),
        Cmd::Hw(c) => hugepfn::hw_cli::main(c),
        Cmd::Demo {
            json,
            bar,
            resource,
        } => {
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
            match demo::run(bars, bar) {
                Ok(d) => {
                    if json {
                        match serde_json::to_string_pretty(&d) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("hugepfn: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", demo::format(&d));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hugepfn demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Compare { file, json } => {
            let sc = match hugepfn_scenario::load_scenario(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    return ExitCode::from(2);
                }
            };
            match compare::compare(&sc, runner::RunOptions::default()) {
                Ok(rows) => {
                    if json {
                        match serde_json::to_string_pretty(&rows) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("hugepfn: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", compare::format(&sc, &rows));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Bench { quick, json } => match bench::run_all(quick) {
            Ok(figs) => {
                if json {
                    match serde_json::to_string_pretty(&figs) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("hugepfn: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    print!("{}", bench::format(&figs));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hugepfn bench: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { file, json, logic } => {
            let sc = match hugepfn_scenario::load_scenario(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = runner::RunOptions {
                logic: match logic {
                    Logic::Fixed => HugeFaultLogic::Fixed,
                    Logic::V612 => HugeFaultLogic::V6_12,
                    Logic::V613 => HugeFaultLogic::V6_13,
                },
                ..runner::RunOptions::default()
            };
            let report = match runner::run_scenario(&sc, opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("hugepfn: {e}");
                    return ExitCode::from(2);
                }
            };
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("hugepfn: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", output::format_report(&sc, &report));
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
