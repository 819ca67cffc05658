//! `hugepfn lab`: runs scenarios on the real Linux kernel and compares them with the model.
//!
//! The lab boots a Debian kernel (downloaded with apt and unpacked, never installed) or our
//! build under QEMU with an emulated IOMMU (x86-64: q35 + Intel IOMMU; arm64, [`LabArch`]:
//! virt + GICv3 + SMMUv3) and an `ivshmem-plain` device whose BAR2 (RAM-backed, as large as the
//! scenario's BAR) is bound to vfio-pci, and runs `hugepfn-probe` (built static from this
//! workspace, cross-built for aarch64) on each scenario inside it. The probe prints the same
//! [`hugepfn_scenario::RunReport`] JSON as `hugepfn run --json`; `compare` puts the two side by
//! side, `record` writes the kernel's counts into the scenario's `expect` steps.
//!
//! Scenarios are grouped by the BAR size they need, one guest boot per group (more if a
//! scenario crashes the kernel: the rest runs in a new boot). See `docs/lab.md`.

mod build;
mod compare;
mod env;
mod fuzz;
mod guest;
mod record;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use hugepfn_scenario::{ModelOnly, Scenario, Step};
use thiserror::Error;

pub use guest::{Accel, KernelOutcome, StepRef};

/// Why the lab could not do its job (as opposed to a difference it found).
#[derive(Debug, Error)]
pub enum LabError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A command exited with an error.
    #[error("{cmd} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(":\n{stderr}") })]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A prerequisite is missing.
    #[error("missing {what}: {hint}")]
    Missing {
        /// What.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A scenario file did not load.
    #[error(transparent)]
    Scenario(#[from] hugepfn_scenario::ScenarioError),
    /// Bad command-line input.
    #[error("{0}")]
    Input(String),
}

/// Options shared by the lab commands.
#[derive(Debug, Clone, clap::Args)]
pub struct LabOpts {
    /// Lab directory: downloaded packages, decompressed modules, serial logs of the boots.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/hugepfn-lab")]
    lab_dir: PathBuf,
    /// The kernel to boot, by version (6.12.95, 6.12.117, 7.3.4: Debian's package of it, from
    /// the apt suite that has it; the model runs with the same `kernel`), or our build of 7.3.4
    /// (`7.3.4+hugepfn` with kernel-patches/, the model as the corrected design; `7.3.4-base`
    /// without, the model as 7.3.4), built on first use. Default 6.12.95.
    #[arg(long, value_name = "VERSION", value_parser = parse_lab_kernel, conflicts_with = "kernel_package")]
    kernel: Option<LabKernel>,
    /// Another Debian kernel package (e.g. linux-image-6.12.113+deb12-amd64-unsigned); the model
    /// runs as the modelled kernel of that package, or as 6.12.95 if it has none.
    #[arg(long, value_name = "PACKAGE")]
    kernel_package: Option<String>,
    /// The machine the kernels boot on: x86_64 (QEMU q35, Intel IOMMU) or arm64 (QEMU virt,
    /// GICv3, SMMUv3; Debian's arm64 kernels, 6.12.117 and 7.3.4). A kernel in --kernels may
    /// also name it: `arm64:7.3.4`.
    #[arg(long, value_enum, default_value = "x86_64")]
    arch: LabArch,
    /// A prebuilt static hugepfn-probe for x86-64 (default: build it from this workspace).
    #[arg(long, value_name = "FILE")]
    probe: Option<PathBuf>,
    /// A prebuilt static hugepfn-probe for aarch64 (default: cross-build it from this
    /// workspace with aarch64-linux-gnu-gcc).
    #[arg(long, value_name = "FILE")]
    probe_arm64: Option<PathBuf>,
    /// Never apt-get install anything nor add apt sources (fail instead).
    #[arg(long)]
    no_install: bool,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: Accel,
    /// Guest RAM.
    #[arg(long, default_value = "1G")]
    mem: String,
    /// Kill a guest whose probe printed nothing for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    step_timeout: u64,
    /// Guests to run at the same time.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Largest BAR the lab emulates (guest BAR memory is host RAM).
    #[arg(long, value_name = "SIZE", default_value = "16G")]
    max_bar: String,
}

/// The kernels a `lab compare` or `lab fuzz` runs on, and the crashes on record. The help
/// here is `compare`'s; `fuzz` words it for itself (`mut_arg` on `LabCmd::Fuzz`).
#[derive(Debug, Clone, clap::Args)]
pub struct Campaign {
    /// Kernel crashes on record (`SCENARIO-NAME FUNCTION` per line, e.g.
    /// lab/known-crashes.txt): such a crash, with FUNCTION in the oops, is reported but not
    /// a failure. A crash the model predicts (a known crashing bug of that kernel version,
    /// at that step, in that function) is accepted too.
    #[arg(long, value_name = "FILE")]
    known_crashes: Option<PathBuf>,
    /// The kernels to compare, one verdict column each (ignored with --kernel,
    /// --kernel-package or --reports). `arm64:V` is Debian's arm64 kernel of release V; with
    /// --arch arm64 every V is. Default: 6.12.95,7.3.4 (arm64: 6.12.117,7.3.4).
    #[arg(long, value_name = "V,V", value_delimiter = ',', value_parser = parse_lab_kernel)]
    kernels: Vec<LabKernel>,
}

impl Campaign {
    /// The options of each kernel's run: `--kernel` / `--kernel-package` (or `single`, e.g.
    /// `--reports`) name one; else each of `--kernels`, on `--arch`.
    pub fn per_kernel(&self, o: &LabOpts, single: bool) -> Result<Vec<LabOpts>, LabError> {
        use hugepfn_kernels::Kernel;
        if o.names_kernel() || single {
            return Ok(vec![o.clone()]);
        }
        let kernels = match (self.kernels.is_empty(), o.arch) {
            (false, _) => self.kernels.clone(),
            (true, LabArch::X86_64) => vec![
                LabKernel::Debian(Kernel::V6_12_95),
                LabKernel::Debian(Kernel::V7_3_4),
            ],
            (true, LabArch::Arm64) => vec![
                LabKernel::Arm64(Kernel::V6_12_117),
                LabKernel::Arm64(Kernel::V7_3_4),
            ],
            (true, LabArch::Arm64_16k) => vec![
                LabKernel::Arm64_16k(Kernel::V6_12_117),
                LabKernel::Arm64_16k(Kernel::V7_3_4),
            ],
        };
        kernels
            .into_iter()
            .map(|k| match o.arch {
                LabArch::X86_64 => Ok(k),
                a => k.on(a).map_err(LabError::Input),
            })
            .map(|k| k.map(|k| o.with_kernel(k)))
            .collect()
    }
}

/// `hugepfn lab ...`.
#[derive(Debug, clap::Subcommand)]
pub enum LabCmd {
    /// Get QEMU, the kernel and busybox (apt), build the static probe; print what the lab uses.
    Setup {
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
    /// Run scenarios on the real kernel in the guest and print the kernel's report JSON for
    /// each; exit 1 if an expectation failed or a scenario could not run.
    Run {
        /// Scenario files or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write each report to DIR/<file stem>.json.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
    /// Run scenarios on the model and on the real kernel and compare them step by step; exit 1
    /// on any difference, crash or failure.
    Compare {
        /// Scenario files or directories (default: scenarios/).
        files: Vec<PathBuf>,
        /// Compare with kernel reports already measured (DIR/<file stem>.json, as written by
        /// `hugepfn-probe FILE > DIR/STEM.json` on a real machine or `lab run --out DIR`)
        /// instead of booting the guest.
        #[arg(long, value_name = "DIR")]
        reports: Option<PathBuf>,
        /// Where to write the Markdown report.
        #[arg(long, value_name = "FILE", default_value = "out/lab/compare.md")]
        markdown: PathBuf,
        /// Also fail when a scenario cannot run in the lab (skipped).
        #[arg(long)]
        strict: bool,
        /// The kernels and the crashes on record.
        #[command(flatten)]
        campaign: Campaign,
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
    /// The fuzzer's random scenarios (`hugepfn fuzz`, lab shapes) on each kernel, compared
    /// step by step with the model as that kernel; divergences are shrunk on the kernel and
    /// written to --out. Exit 1 if any case differs or fails.
    #[command(mut_arg("known_crashes", |a| a.help("Kernel crashes on record (lab/known-crashes.txt)")))]
    #[command(mut_arg("kernels", |a| a.help("The kernels, one campaign each")))]
    Fuzz {
        /// Campaign seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Cases per kernel.
        #[arg(long, default_value_t = 50)]
        count: u64,
        /// Where shrunk divergences go.
        #[arg(long, value_name = "DIR", default_value = "scenarios/found")]
        out: PathBuf,
        /// The kernels and the crashes on record.
        #[command(flatten)]
        campaign: Campaign,
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
    /// Build Linux 7.3.4 for the lab (`lab kernel build`).
    Kernel {
        /// What to do.
        #[command(subcommand)]
        cmd: KernelCmd,
    },
    /// Run scenarios on the real kernel and write its counts into their `expect` steps (the
    /// TOML is edited in place; comments and layout are kept).
    Record {
        /// Scenario files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
}

/// `hugepfn lab kernel ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCmd {
    /// Debian's linux-source-7.3 with kernel-patches/ applied, configured by lab/kernel.config
    /// (VFIO built in), built with every core; cached by a hash of source, config and patches.
    Build {
        /// The release (the patches are for 7.3.4).
        #[arg(long, default_value = "7.3.4")]
        version: String,
        /// The patches (default: kernel-patches/ of this repository).
        #[arg(long, value_name = "DIR")]
        patches: Option<PathBuf>,
        /// Build without patches: the control, which must behave as Debian's 7.3.4.
        #[arg(long)]
        base_only: bool,
        /// Options shared by the lab commands.
        #[command(flatten)]
        opts: Box<LabOpts>,
    },
}

/// A scenario file and its parsed content.
#[derive(Debug, Clone)]
pub struct LabScenario {
    /// The file.
    pub path: PathBuf,
    /// Its content.
    pub sc: Scenario,
}

/// Files and directories (their `*.toml`, sorted) → scenario files.
pub fn expand_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, LabError> {
    let args: Vec<PathBuf> = if args.is_empty() {
        let local = PathBuf::from("scenarios");
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        vec![if local.is_dir() || !ws.is_dir() {
            local
        } else {
            ws
        }]
    } else {
        args.to_vec()
    };
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let rd = std::fs::read_dir(&a).map_err(|source| LabError::Io {
                what: format!("read {}", a.display()),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else if a.is_file() {
            out.push(a);
        } else {
            return Err(LabError::Input(format!(
                "{}: no such file or directory",
                a.display()
            )));
        }
    }
    if out.is_empty() {
        return Err(LabError::Input("no scenario files".into()));
    }
    Ok(out)
}

pub(super) fn load_all(files: &[PathBuf]) -> Result<Vec<LabScenario>, LabError> {
    files
        .iter()
        .map(|p| {
            Ok(LabScenario {
                path: p.clone(),
                sc: hugepfn_scenario::load_scenario(p)?,
            })
        })
        .collect()
}

/// The ivshmem BAR size a scenario needs on a lab of `arch`, or why that lab cannot run it.
///
/// The x86-64 lab runs the x86-64 scenarios (4- and 5-level). The arm64 lab runs the arm64
/// ones and every `x86_64` one as arm64 (the model with `arch = "arm64"`): what a scenario
/// does is the same there, only the leaves differ, and those the model predicts per
/// architecture. 5-level paging is x86-64's own; `hugepfn inspect` in the guest needs a
/// static hugepfn the arm64 lab does not build.
pub fn lab_bar_size(sc: &Scenario, max_bar: u64, arch: LabArch) -> Result<u64, String> {
    use hugepfn_units::arch::Arch;
    match (arch, sc.arch) {
        (LabArch::X86_64, Arch::X86_64 | Arch::X86_64_5Level) => {}
        (LabArch::X86_64, a) => {
            return Err(format!(
                "arch = \"{a}\": the x86-64 lab boots x86-64 guests{}",
                if a == Arch::Arm64 {
                    " (this one runs with --arch arm64)"
                } else {
                    ""
                }
            ));
        }
        (LabArch::Arm64, Arch::Arm64 | Arch::X86_64) => {}
        (LabArch::Arm64, a) => {
            return Err(format!(
                "arch = \"{a}\": the arm64 lab boots arm64 guests with 4 KiB pages{}",
                if a == Arch::Arm64_16k {
                    " (this one runs with --arch arm64-16k)"
                } else {
                    ""
                }
            ));
        }
        (LabArch::Arm64_16k, Arch::Arm64_16k | Arch::Arm64 | Arch::X86_64) => {}
        (LabArch::Arm64_16k, a) => {
            return Err(format!(
                "arch = \"{a}\": the arm64-16k lab boots arm64 guests with 16 KiB pages"
            ));
        }
    }
    if let Some((s, why)) = sc
        .steps
        .iter()
        .find_map(|s| lab_step_unsupported(s).map(|why| (s, why)))
    {
        return Err(format!("line {}: `{}`: {why}", s.line(), s.op()));
    }
    let [dev] = sc.devices.as_slice() else {
        return Err(format!(
            "the lab emulates one device, the scenario has {}",
            sc.devices.len()
        ));
    };
    let mut size = None;
    for s in &sc.steps {
        if let Step::Mmap(m) = s {
            if m.bar != 2 {
                return Err(format!(
                    "line {}: the lab's ivshmem device has its memory in BAR2, the scenario maps BAR{}",
                    m.line, m.bar
                ));
            }
            size = dev.bar(2).map(|b| b.size);
        }
    }
    let size = size
        .or_else(|| dev.bar(2).map(|b| b.size))
        .ok_or("the device has no BAR2")?;
    if !size.is_power_of_two() || size < (1 << 20) {
        return Err(format!(
            "BAR2 of {} is not a power of two >= 1M (ivshmem needs one)",
            hugepfn_units::format_size(size)
        ));
    }
    if size > max_bar {
        return Err(format!(
            "BAR2 of {} exceeds --max-bar {}",
            hugepfn_units::format_size(size),
            hugepfn_units::format_size(max_bar)
        ));
    }
    Ok(size)
}

/// Prints the probe's `warnings` about the scenario at `path` to stderr, one line each.
fn warn_each(path: &Path, warnings: &[String]) {
    for w in warnings {
        eprintln!("lab: {}: warning: {w}", path.display());
    }
}

/// Why the probe in the lab cannot run `step` (`None`: it can). The probe runs every op in
/// the first process and in forked children (DMA too, on the container the child inherits),
/// except KVM ops (the TCG guest has no KVM of its own) and `access` (the MMU model's TLB
/// counters have no kernel counterpart); the probe refuses the same steps.
pub fn lab_step_unsupported(step: &Step) -> Option<&'static str> {
    hugepfn_scenario::model_only(step).map(|why| match why {
        ModelOnly::Kvm => {
            "KVM ops need /dev/kvm in the guest, i.e. nested KVM; the lab's guest runs under QEMU TCG without it"
        }
        ModelOnly::Access => {
            "a workload on the MMU model whose TLB and page-walk counts the kernel does not expose; the probe cannot count them"
        }
    })
}

/// A kernel the lab boots: Debian's package of a modelled release, or our build of 7.3.4
/// (`hugepfn lab kernel build`) with or without kernel-patches/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabKernel {
    /// Debian's package (`6.12.95`, `6.12.117`, `7.3.4`); the model runs as that kernel.
    Debian(hugepfn_kernels::Kernel),
    /// `7.3.4+hugepfn`: our build with the patches; the model runs as 7.3.4 with every known
    /// bug fixed (the corrected design's fixes on 7.3.4's other behaviour).
    Patched,
    /// `7.3.4-base`: the same build without them, the control; the model runs as 7.3.4.
    Base,
    /// `arm64:7.3.4`: Debian's arm64 package of that release (`6.12.117`, `7.3.4`), booted under
    /// `qemu-system-aarch64`; the model runs as that kernel with `arch = "arm64"`.
    Arm64(hugepfn_kernels::Kernel),
    /// `arm64-16k:7.3.4`: Debian's arm64 package with 16 KiB pages of that release, on the same
    /// machine; the model runs as that kernel with `arch = "arm64-16k"`.
    Arm64_16k(hugepfn_kernels::Kernel),
}

/// The machine a lab kernel boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LabArch {
    /// x86-64: QEMU `q35` with an emulated Intel IOMMU.
    #[default]
    #[value(name = "x86_64")]
    X86_64,
    /// arm64 (4 KiB pages): QEMU `virt,gic-version=3,iommu=smmuv3`.
    Arm64,
    /// arm64 with 16 KiB pages: the same machine (`-cpu max` has the 16 KiB granule) booting
    /// Debian's `arm64-16k` kernels.
    #[value(name = "arm64-16k")]
    Arm64_16k,
}

impl LabArch {
    /// The `arch` the model runs with against a kernel of this machine.
    pub fn model_arch(self) -> hugepfn_units::arch::Arch {
        match self {
            LabArch::X86_64 => hugepfn_units::arch::Arch::X86_64,
            LabArch::Arm64 => hugepfn_units::arch::Arch::Arm64,
            LabArch::Arm64_16k => hugepfn_units::arch::Arch::Arm64_16k,
        }
    }

    /// The machine QEMU emulates and the probe is built for: arm64 in either granule is one.
    pub fn machine(self) -> LabArch {
        match self {
            LabArch::Arm64_16k => LabArch::Arm64,
            a => a,
        }
    }
}

impl LabKernel {
    /// The column name.
    pub fn name(self) -> String {
        match self {
            LabKernel::Debian(k) => k.name().to_string(),
            LabKernel::Patched => "7.3.4+hugepfn".into(),
            LabKernel::Base => "7.3.4-base".into(),
            LabKernel::Arm64(k) => format!("arm64:{}", k.name()),
            LabKernel::Arm64_16k(k) => format!("arm64-16k:{}", k.name()),
        }
    }

    /// The machine it boots on.
    pub fn arch(self) -> LabArch {
        match self {
            LabKernel::Arm64(_) => LabArch::Arm64,
            LabKernel::Arm64_16k(_) => LabArch::Arm64_16k,
            _ => LabArch::X86_64,
        }
    }

    /// The same release on `arch` (`--arch arm64`), or why there is none: our build is x86-64's.
    pub fn on(self, arch: LabArch) -> Result<LabKernel, String> {
        match (self, arch) {
            (
                LabKernel::Debian(k) | LabKernel::Arm64(k) | LabKernel::Arm64_16k(k),
                LabArch::Arm64_16k,
            ) => {
                if k.debian_package_arm64_16k().is_some() {
                    Ok(LabKernel::Arm64_16k(k))
                } else {
                    Err(format!(
                        "Debian has no arm64-16k package of {k} the lab boots; arm64 kernels: {}",
                        arm64_kernels()
                    ))
                }
            }
            (
                LabKernel::Debian(k) | LabKernel::Arm64(k) | LabKernel::Arm64_16k(k),
                LabArch::Arm64,
            ) => {
                if k.debian_package_arm64().is_some() {
                    Ok(LabKernel::Arm64(k))
                } else {
                    Err(format!(
                        "Debian has no arm64 package of {k} the lab boots; arm64 kernels: {}",
                        arm64_kernels()
                    ))
                }
            }
            (LabKernel::Arm64(k) | LabKernel::Arm64_16k(k), LabArch::X86_64) => {
                Ok(LabKernel::Debian(k))
            }
            (LabKernel::Patched | LabKernel::Base, _) => Err(format!(
                "{} is our x86-64 build; the arm64 lab boots Debian's kernels ({})",
                self.name(),
                arm64_kernels()
            )),
            (k, LabArch::X86_64) => Ok(k),
        }
    }

    /// How the model runs to be compared with this kernel.
    pub fn run_options(self) -> crate::runner::RunOptions {
        match self {
            LabKernel::Debian(k) => crate::runner::RunOptions {
                kernel: Some(k),
                ..Default::default()
            },
            LabKernel::Patched => crate::runner::RunOptions {
                kernel: Some(hugepfn_kernels::Kernel::V7_3_4),
                bugs_fixed: true,
                ..Default::default()
            },
            LabKernel::Base => crate::runner::RunOptions {
                kernel: Some(hugepfn_kernels::Kernel::V7_3_4),
                ..Default::default()
            },
            LabKernel::Arm64(k) => crate::runner::RunOptions {
                kernel: Some(k),
                arch: Some(hugepfn_units::arch::Arch::Arm64),
                ..Default::default()
            },
            LabKernel::Arm64_16k(k) => crate::runner::RunOptions {
                kernel: Some(k),
                arch: Some(hugepfn_units::arch::Arch::Arm64_16k),
                ..Default::default()
            },
        }
    }
}

/// The releases the arm64 lab boots, for messages.
fn arm64_kernels() -> String {
    hugepfn_kernels::Kernel::LAB
        .into_iter()
        .filter(|k| k.debian_package_arm64().is_some())
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--kernel`: a kernel the lab boots (not a model-only one), or our build.
fn parse_lab_kernel(s: &str) -> Result<LabKernel, String> {
    if let Some(v) = s.strip_prefix("arm64:") {
        return parse_lab_kernel(v)?.on(LabArch::Arm64);
    }
    if let Some(v) = s.strip_prefix("arm64-16k:") {
        return parse_lab_kernel(v)?.on(LabArch::Arm64_16k);
    }
    match s {
        "7.3.4+hugepfn" => return Ok(LabKernel::Patched),
        "7.3.4-base" => return Ok(LabKernel::Base),
        _ => {}
    }
    let k: hugepfn_kernels::Kernel = s
        .parse()
        .map_err(|e| format!("{e}; the lab also boots 7.3.4+hugepfn and 7.3.4-base (our build)"))?;
    if k.debian_package().is_none() {
        return Err(format!(
            "{k} is model only: the lab boots {}, 7.3.4+hugepfn and 7.3.4-base",
            hugepfn_kernels::Kernel::LAB.map(|k| k.name()).join(", ")
        ));
    }
    Ok(LabKernel::Debian(k))
}

impl LabOpts {
    /// The same options for another kernel.
    pub fn with_kernel(&self, k: LabKernel) -> LabOpts {
        LabOpts {
            kernel: Some(k),
            kernel_package: None,
            arch: k.arch(),
            ..self.clone()
        }
    }

    /// Whether `--kernel` or `--kernel-package` chose the kernel.
    pub fn names_kernel(&self) -> bool {
        self.kernel.is_some() || self.kernel_package.is_some()
    }

    /// The kernel these options boot (on `--arch`, checked by [`LabOpts::check_arch`]).
    pub fn lab_kernel(&self) -> LabKernel {
        let k = self.lab_kernel_x86();
        match self.arch {
            LabArch::X86_64 => k,
            a => k.on(a).unwrap_or(k),
        }
    }

    /// `--arch arm64` with a kernel that has no arm64 build here (our patched build, or
    /// `--kernel-package`): refused up front.
    pub fn check_arch(&self) -> Result<(), LabError> {
        if self.arch != LabArch::X86_64 && self.kernel_package.is_some() {
            return Err(LabError::Input(
                "--kernel-package names an x86-64 package; with --arch arm64 use --kernel".into(),
            ));
        }
        match self.arch {
            LabArch::X86_64 => Ok(()),
            a => self
                .lab_kernel_x86()
                .on(a)
                .map(|_| ())
                .map_err(LabError::Input),
        }
    }

    /// `--kernel` / `--kernel-package` as given (an `arm64:` kernel stays one).
    fn lab_kernel_x86(&self) -> LabKernel {
        match (&self.kernel, &self.kernel_package) {
            (Some(k), _) => *k,
            (None, Some(p)) => LabKernel::Debian(
                hugepfn_kernels::Kernel::from_package(p)
                    .unwrap_or(hugepfn_kernels::Kernel::V6_12_95),
            ),
            (None, None) if self.arch != LabArch::X86_64 => {
                LabKernel::Debian(hugepfn_kernels::Kernel::V7_3_4)
            }
            (None, None) => LabKernel::Debian(hugepfn_kernels::Kernel::V6_12_95),
        }
    }
}

fn env_options(o: &LabOpts) -> env::EnvOptions {
    let lab_kernel = o.lab_kernel();
    let (kernel_package, built) = match (o.kernel, lab_kernel) {
        (_, LabKernel::Arm64(k)) => (k.debian_package_arm64().map(str::to_string), None),
        (_, LabKernel::Arm64_16k(k)) => (k.debian_package_arm64_16k().map(str::to_string), None),
        (Some(LabKernel::Debian(k)), _) => (k.debian_package().map(str::to_string), None),
        (Some(LabKernel::Patched), _) => (None, Some(true)),
        (Some(LabKernel::Base), _) => (None, Some(false)),
        _ => (o.kernel_package.clone(), None),
    };
    let arch = lab_kernel.arch().machine();
    env::EnvOptions {
        dir: o.lab_dir.clone(),
        kernel_package,
        probe: match arch {
            LabArch::X86_64 => o.probe.clone(),
            _ => o.probe_arm64.clone(),
        },
        no_install: o.no_install,
        built,
        arch,
    }
}

/// Runs every scenario in the guest: an outcome per scenario (in order), the kernel package,
/// and the boots' numbers.
pub fn kernel_outcomes(
    scen: &[LabScenario],
    o: &LabOpts,
) -> Result<(Vec<KernelOutcome>, String, Vec<guest::BootStat>), LabError> {
    let max_bar = hugepfn_units::parse_size(&o.max_bar)
        .map_err(|e| LabError::Input(format!("--max-bar {}: {e}", o.max_bar)))?;
    let mut outcomes: Vec<Option<KernelOutcome>> = vec![None; scen.len()];
    let mut groups: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    for (i, s) in scen.iter().enumerate() {
        match lab_bar_size(&s.sc, max_bar, o.lab_kernel().arch()) {
            Ok(size) => groups.entry(size).or_default().push(i),
            Err(why) => outcomes[i] = Some(KernelOutcome::Skipped(why)),
        }
    }
    if groups.is_empty() {
        let out = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(KernelOutcome::Skipped("".into())))
            .collect();
        return Ok((out, String::new(), Vec::new()));
    }
    let env = env::prepare(&env_options(o), true)?;
    eprintln!(
        "lab: kernel {} ({}), {} accel",
        env.kernel_release,
        env.kernel_package,
        match o.accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        }
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run_dir = o
        .lab_dir
        .join("runs")
        .join(format!("{stamp}-{}", std::process::id()));
    prune_runs(&o.lab_dir.join("runs"), 8);
    let gopts = guest::GuestOptions {
        accel: o.accel,
        mem: o.mem.clone(),
        step_timeout: Duration::from_secs(o.step_timeout.max(10)),
        boot_timeout: Duration::from_secs(120),
        run_dir,
    };
    // Tasks: each group split into `jobs` interleaved chunks, run by `jobs` workers.
    let jobs = o.jobs.max(1);
    let mut tasks: Vec<(u64, Vec<usize>, String)> = Vec::new();
    for (size, idx) in &groups {
        let chunks = jobs.min(idx.len());
        for c in 0..chunks {
            let part: Vec<usize> = idx.iter().copied().skip(c).step_by(chunks).collect();
            let tag = format!("{}-{c}", hugepfn_units::format_size(*size));
            tasks.push((*size, part, tag));
        }
    }
    let queue = Mutex::new(tasks);
    let results = Mutex::new(Vec::new());
    let failure: Mutex<Option<LabError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let task = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((size, idx, tag)) = task else { break };
                    let files: Vec<&Path> = idx.iter().map(|&i| scen[i].path.as_path()).collect();
                    match guest::run_group(&env, &gopts, size, &files, &tag) {
                        Ok((outs, stats)) => {
                            if let Ok(mut r) = results.lock() {
                                r.push((idx, outs, stats));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut stats = Vec::new();
    for (idx, outs, st) in results.into_inner().unwrap_or_default() {
        for (i, out) in idx.into_iter().zip(outs) {
            outcomes[i] = Some(out);
        }
        stats.extend(st);
    }
    let out = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| KernelOutcome::BootFailure("not run".into())))
        .collect();
    Ok((out, env.kernel_package, stats))
}

/// Keeps the newest `keep` run directories.
fn prune_runs(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    v.sort();
    let n = v.len();
    for p in v.into_iter().take(n.saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(p);
    }
}

fn describe_failure(o: &KernelOutcome) -> Option<String> {
    match o {
        KernelOutcome::Report { .. } => None,
        KernelOutcome::ProbeFailed { rc, messages } => Some(format!(
            "the probe failed (exit {rc}): {}",
            messages.join("; ")
        )),
        KernelOutcome::Crash { step, oops } => Some(format!(
            "the guest kernel crashed at {}:\n    {}",
            step.as_ref()
                .map_or("an unknown step".into(), |s| s.to_string()),
            oops.join("\n    ")
        )),
        KernelOutcome::Timeout { step, secs } => Some(format!(
            "no progress for {secs} s at {}; the guest was killed",
            step.as_ref()
                .map_or("an unknown step".into(), |s| s.to_string())
        )),
        KernelOutcome::BootFailure(why) => Some(format!("the guest failed: {why}")),
        KernelOutcome::Skipped(why) => Some(format!("not run in the lab: {why}")),
    }
}

fn cmd_setup(o: &LabOpts) -> Result<ExitCode, LabError> {
    let t0 = std::time::Instant::now();
    let env = env::prepare(&env_options(o), true)?;
    println!("qemu:    {}", env.qemu.display());
    println!("kernel:  {} ({})", env.kernel_release, env.kernel_package);
    println!("         {}", env.vmlinuz.display());
    println!("busybox: {}", env.busybox.display());
    println!("probe:   {}", env.probe.display());
    println!("ready in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn cmd_kernel_build(
    version: &str,
    patches: Option<&Path>,
    base_only: bool,
    o: &LabOpts,
) -> Result<ExitCode, LabError> {
    if version != "7.3.4" {
        return Err(LabError::Input(format!(
            "--version {version}: the lab builds 7.3.4 (Debian's linux-source-7.3; the patches are for it)"
        )));
    }
    let t0 = std::time::Instant::now();
    let b = build::build(&env_options(o), patches, base_only)?;
    println!(
        "kernel:  {} ({})",
        b.release,
        if b.patched { "patched" } else { "base" }
    );
    println!("tree:    {}", b.dir.display());
    println!("bzImage: {}", b.bzimage.display());
    println!("key:     {}", b.key);
    println!("ready in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn cmd_run(files: &[PathBuf], out: Option<&Path>, o: &LabOpts) -> Result<ExitCode, LabError> {
    let scen = load_all(&expand_files(files)?)?;
    let (outcomes, _, _) = kernel_outcomes(&scen, o)?;
    if let Some(d) = out {
        std::fs::create_dir_all(d).map_err(|source| LabError::Io {
            what: format!("mkdir {}", d.display()),
            source,
        })?;
    }
    let mut all_ok = true;
    for (s, oc) in scen.iter().zip(&outcomes) {
        match oc {
            KernelOutcome::Report {
                report, warnings, ..
            } => {
                warn_each(&s.path, warnings);
                let json = serde_json::to_string_pretty(report)
                    .map_err(|e| LabError::Input(e.to_string()))?;
                println!("{json}");
                all_ok &= report.ok;
                if let Some(d) = out {
                    let stem = s
                        .path
                        .file_stem()
                        .map_or("report".into(), |x| x.to_string_lossy().into_owned());
                    let p = d.join(format!("{stem}.json"));
                    std::fs::write(&p, format!("{json}\n")).map_err(|source| LabError::Io {
                        what: format!("write {}", p.display()),
                        source,
                    })?;
                }
            }
            other => {
                all_ok = false;
                if let Some(msg) = describe_failure(other) {
                    eprintln!("lab: {}: {msg}", s.path.display());
                }
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hugepfn lab ...`: exit 0 = all good, 1 = a difference / failed expectation / crash,
/// 2 = the lab could not run.
pub fn main(cmd: LabCmd) -> ExitCode {
    let opts = match &cmd {
        LabCmd::Setup { opts }
        | LabCmd::Run { opts, .. }
        | LabCmd::Compare { opts, .. }
        | LabCmd::Fuzz { opts, .. }
        | LabCmd::Record { opts, .. }
        | LabCmd::Kernel {
            cmd: KernelCmd::Build { opts, .. },
        } => opts,
    };
    if let Err(e) = opts.check_arch() {
        eprintln!("hugepfn lab: {e}");
        return ExitCode::from(2);
    }
    let r = match &cmd {
        LabCmd::Setup { opts } => cmd_setup(opts),
        LabCmd::Run { files, out, opts } => cmd_run(files, out.as_deref(), opts),
        LabCmd::Compare {
            files,
            reports,
            markdown,
            strict,
            campaign,
            opts,
        } => campaign
            .per_kernel(opts, reports.is_some())
            .and_then(|runs| {
                compare::cmd_compare(
                    files,
                    reports.as_deref(),
                    markdown,
                    *strict,
                    campaign.known_crashes.as_deref(),
                    &runs,
                )
            }),
        LabCmd::Record { files, opts } => record::cmd_record(files, opts),
        LabCmd::Fuzz {
            seed,
            count,
            out,
            campaign,
            opts,
        } => campaign.per_kernel(opts, false).and_then(|runs| {
            fuzz::cmd_fuzz(*seed, *count, &runs, out, campaign.known_crashes.as_deref())
        }),
        LabCmd::Kernel {
            cmd:
                KernelCmd::Build {
                    version,
                    patches,
                    base_only,
                    opts,
                },
        } => cmd_kernel_build(version, patches.as_deref(), *base_only, opts),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hugepfn lab: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepfn_scenario::fixture::bar2_head;
    use hugepfn_scenario::parse_scenario;

    fn size_of(steps: &str) -> Result<u64, String> {
        let text = bar2_head("2G", "va = \"align:1G\"\n") + steps;
        let sc = parse_scenario(&text, "t.toml").expect("parses");
        lab_bar_size(&sc, 16 << 30, LabArch::X86_64)
    }

    #[test]
    fn fork_and_child_steps_run_in_the_lab() {
        let steps = r#"
[[step]]
op = "fork"
child = "c1"
[[step]]
op = "touch"
map = "m"
process = "c1"
[[step]]
op = "munmap"
map = "m"
len = "2M"
process = "c1"
[[step]]
op = "expect"
process = "c1"
faults = 0
"#;
        assert_eq!(size_of(steps), Ok(2 << 30));
    }

    #[test]
    fn dma_steps_run_in_every_process() {
        let main = r#"
[[step]]
op = "dma_map"
map = "m"
iova = "0x4000000000"
[[step]]
op = "dma_unmap"
iova = "0x4000000000"
len = "2G"
"#;
        assert_eq!(size_of(main), Ok(2 << 30));
        let child = r#"
[[step]]
op = "fork"
child = "c1"
[[step]]
op = "dma_map"
map = "m"
iova = "0x4000000000"
process = "c1"
"#;
        // the child shares its parent's container, in the model as on the kernel
        assert_eq!(size_of(child), Ok(2 << 30));
    }

    #[test]
    fn lab_kernels_by_name_and_how_the_model_runs_against_them() {
        use hugepfn_kernels::Kernel;
        assert_eq!(
            parse_lab_kernel("7.3.4"),
            Ok(LabKernel::Debian(Kernel::V7_3_4))
        );
        assert_eq!(parse_lab_kernel("7.3.4+hugepfn"), Ok(LabKernel::Patched));
        assert_eq!(parse_lab_kernel("7.3.4-base"), Ok(LabKernel::Base));
        let e = parse_lab_kernel("6.12.0").expect_err("model only");
        assert!(e.contains("model only"), "{e}");
        let e = parse_lab_kernel("7.4").expect_err("unknown");
        assert!(e.contains("7.3.4+hugepfn"), "{e}");
        let p = LabKernel::Patched.run_options();
        assert_eq!(
            (p.kernel, p.bugs_fixed, p.corrected),
            (Some(Kernel::V7_3_4), true, false)
        );
        let b = LabKernel::Base.run_options();
        assert_eq!((b.kernel, b.bugs_fixed), (Some(Kernel::V7_3_4), false));
        // arm64: Debian's arm64 packages of 6.12.117 and 7.3.4; the model runs as arm64
        let a = parse_lab_kernel("arm64:6.12.117").expect("arm64 6.12.117");
        assert_eq!(a, LabKernel::Arm64(Kernel::V6_12_117));
        assert_eq!(a.name(), "arm64:6.12.117");
        assert_eq!(a.arch(), LabArch::Arm64);
        let o = a.run_options();
        assert_eq!(
            (o.kernel, o.arch),
            (
                Some(Kernel::V6_12_117),
                Some(hugepfn_units::arch::Arch::Arm64)
            )
        );
        for (k, why) in [
            ("arm64:6.12.95", "no arm64 package"),
            ("arm64:7.3.4+hugepfn", "x86-64 build"),
        ] {
            let e = parse_lab_kernel(k).expect_err(k);
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(
            LabKernel::Arm64(Kernel::V7_3_4).on(LabArch::X86_64),
            Ok(LabKernel::Debian(Kernel::V7_3_4))
        );
        // arm64-16k: Debian's 16 KiB-page packages, the same machine, the model as arm64-16k
        let a = parse_lab_kernel("arm64-16k:7.3.4").expect("arm64-16k 7.3.4");
        assert_eq!(a, LabKernel::Arm64_16k(Kernel::V7_3_4));
        assert_eq!(
            (a.name().as_str(), a.arch()),
            ("arm64-16k:7.3.4", LabArch::Arm64_16k)
        );
        assert_eq!(a.arch().machine(), LabArch::Arm64);
        assert_eq!(
            a.run_options().arch,
            Some(hugepfn_units::arch::Arch::Arm64_16k)
        );
        assert_eq!(
            Kernel::V6_12_117.debian_package_arm64_16k(),
            Some("linux-image-6.12.117+deb13-arm64-16k-unsigned")
        );
        let e = parse_lab_kernel("arm64-16k:6.12.95").expect_err("no package");
        assert!(e.contains("no arm64-16k package"), "{e}");
        assert_eq!(
            a.on(LabArch::Arm64),
            Ok(LabKernel::Arm64(Kernel::V7_3_4)),
            "the same release with 4 KiB pages"
        );
    }

    #[test]
    fn campaign_columns_follow_kernels_and_arch() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            opts: LabOpts,
            #[command(flatten)]
            campaign: Campaign,
        }
        let columns = |args: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(
                std::iter::once("t").chain(args.iter().copied()),
            )
            .expect("parses");
            cli.opts.check_arch().map_err(|e| e.to_string())?;
            cli.campaign
                .per_kernel(&cli.opts, false)
                .map(|v| {
                    v.iter()
                        .map(|o| o.lab_kernel().name())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(columns(&[]), Ok("6.12.95,7.3.4".into()));
        assert_eq!(
            columns(&["--arch", "arm64"]),
            Ok("arm64:6.12.117,arm64:7.3.4".into())
        );
        assert_eq!(
            columns(&["--kernels", "7.3.4,7.3.4+hugepfn,arm64:7.3.4"]),
            Ok("7.3.4,7.3.4+hugepfn,arm64:7.3.4".into())
        );
        assert_eq!(
            columns(&["--arch", "arm64", "--kernels", "6.12.117,7.3.4"]),
            Ok("arm64:6.12.117,arm64:7.3.4".into())
        );
        assert!(
            columns(&["--arch", "arm64", "--kernels", "7.3.4+hugepfn"])
                .is_err_and(|e| e.contains("x86-64 build"))
        );
        assert_eq!(
            columns(&["--kernel", "arm64:7.3.4"]),
            Ok("arm64:7.3.4".into())
        );
        assert_eq!(
            columns(&["--arch", "arm64-16k"]),
            Ok("arm64-16k:6.12.117,arm64-16k:7.3.4".into())
        );
        assert_eq!(
            columns(&["--kernels", "arm64:7.3.4,arm64-16k:7.3.4"]),
            Ok("arm64:7.3.4,arm64-16k:7.3.4".into())
        );
        assert_eq!(
            columns(&["--kernel", "7.3.4", "--arch", "arm64"]),
            Ok("arm64:7.3.4".into())
        );
        assert!(
            columns(&["--kernel", "6.12.95", "--arch", "arm64"])
                .is_err_and(|e| e.contains("no arm64 package"))
        );
    }

    #[test]
    fn the_arm64_lab_runs_x86_64_and_arm64_scenarios_as_arm64() {
        let with = |head: &str, name: &str| {
            let text = format!("arch = \"{head}\"\n")
                + &bar2_head("2G", "").replacen("name = \"t\"", &format!("name = \"{name}\""), 1);
            let sc = parse_scenario(&text, "t.toml").expect("parses");
            (
                lab_bar_size(&sc, 16 << 30, LabArch::X86_64),
                lab_bar_size(&sc, 16 << 30, LabArch::Arm64),
            )
        };
        assert_eq!(with("x86_64", "t"), (Ok(2 << 30), Ok(2 << 30)));
        let (x, a) = with("arm64", "t");
        assert!(x.is_err_and(|e| e.contains("--arch arm64")));
        assert_eq!(a, Ok(2 << 30));
        let (x, a) = with("x86_64-5level", "t");
        assert_eq!(x, Ok(2 << 30));
        assert!(a.is_err_and(|e| e.contains("arm64 guests")));
        let (x, a) = with("riscv64-sv48", "t");
        assert!(x.is_err() && a.is_err());
        // inspect runs in either guest (a static hugepfn is built for each)
        assert_eq!(with("x86_64", "lab-inspect-x"), (Ok(2 << 30), Ok(2 << 30)));
    }

    #[test]
    fn kvm_steps_are_skipped_with_the_reason() {
        let kvm = r#"
[[step]]
op = "kvm_memslot"
slot = 0
gpa = "0x100000000"
map = "m"
"#;
        let e = size_of(kvm).expect_err("skipped");
        assert!(
            e.contains("`kvm_memslot`") && e.contains("nested KVM"),
            "{e}"
        );
    }

    #[test]
    fn access_steps_are_skipped_with_the_reason() {
        let access = r#"
[[step]]
op = "touch"
map = "m"
[[step]]
op = "access"
map = "m"
pattern = "random"
count = 10
[[step]]
op = "expect"
tlb_misses = { stlb = 2 }
"#;
        let e = size_of(access).expect_err("skipped");
        assert!(
            e.starts_with("line 15: `access`: ") && e.contains("MMU model"),
            "{e}"
        );
    }
}
