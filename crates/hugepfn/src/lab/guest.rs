//! Booting the guest: the initramfs (busybox, VFIO modules, the probe, `lab/guest-init.sh`, the
//! scenarios), QEMU with an ivshmem-plain BAR of the scenarios' size, and reading back what the
//! guest said on its data serial port (ttyS1; ttyAMA1 on arm64) and its console (ttyS0 or
//! ttyAMA0, for oops traces).
//!
//! A boot runs many scenarios, one probe process each. If the kernel crashes (the command line
//! has `oops=panic panic=-1`, QEMU `-no-reboot`, so a crash ends QEMU) or a step stops making
//! progress (then QEMU is killed), the scenario in progress is reported with the step the probe
//! announced last and the oops trace, and the scenarios after it run in a new boot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hugepfn_scenario::RunReport;

use super::env::LabEnv;
use super::{LabArch, LabError};

/// The initramfs `/init` (a busybox shell script).
const GUEST_INIT: &str = include_str!("../../../../lab/guest-init.sh");

/// The modules to load, with their dependencies (found in the modules' `depends=`).
const ROOT_MODULES: [&str; 2] = ["vfio-pci", "vfio_iommu_type1"];

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (works everywhere; the default).
    Tcg,
    /// KVM (`-cpu host`); does not work on hosts whose /dev/kvm cannot run a stock kernel.
    Kvm,
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM, QEMU syntax (`1G`).
    pub mem: String,
    /// Kill the guest when the data port is silent this long (a hung step).
    pub step_timeout: Duration,
    /// Kill the guest when it has not reached `/init` after this long.
    pub boot_timeout: Duration,
    /// Logs and initramfs images go here.
    pub run_dir: PathBuf,
}

/// Where a probe was when something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// 0-based step index.
    pub index: usize,
    /// Source line.
    pub line: usize,
    /// `op`.
    pub op: String,
}

impl std::fmt::Display for StepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} (line {}, {})",
            self.index + 1,
            self.line,
            self.op
        )
    }
}

/// What the real kernel did with one scenario.
// `Report` is the large variant (a report's totals include the TLB counters of `access`);
// there is one outcome per scenario, so boxing it would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum KernelOutcome {
    /// The probe ran every step and printed its report.
    Report {
        /// The report.
        report: RunReport,
        /// The probe's warnings (e.g. the BAR is elsewhere than the scenario says).
        warnings: Vec<String>,
        /// `hugepfn inspect`'s JSON of the held probe (`lab-inspect-*` scenarios).
        inspect: Option<String>,
    },
    /// The probe could not run the scenario (exit status 2, or no report).
    ProbeFailed {
        /// Exit status.
        rc: i32,
        /// What it printed.
        messages: Vec<String>,
    },
    /// The guest kernel crashed during the scenario.
    Crash {
        /// The step the probe had announced.
        step: Option<StepRef>,
        /// The oops / panic lines of the console.
        oops: Vec<String>,
    },
    /// The scenario stopped making progress and the guest was killed.
    Timeout {
        /// The step the probe had announced.
        step: Option<StepRef>,
        /// Seconds without output.
        secs: u64,
    },
    /// The guest never ran the scenario.
    BootFailure(String),
    /// The lab cannot run this scenario (reason).
    Skipped(String),
}

/// One boot's numbers, for the report.
#[derive(Debug, Clone)]
pub struct BootStat {
    /// BAR size.
    pub bar_size: u64,
    /// Scenarios it ran (to the end or to a crash).
    pub scenarios: usize,
    /// Wall time of QEMU.
    pub wall: Duration,
    /// Serial logs.
    pub console: PathBuf,
    /// The data port's log.
    pub data: PathBuf,
}

// ------------------------------------------------------------------------------------------
// initramfs

/// A newc cpio archive in memory.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data, (0, 0));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `dir`, by normalized name.
fn index_modules(dir: &Path, out: &mut HashMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            index_modules(&p, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            for ext in [".ko.xz", ".ko.zst", ".ko"] {
                if let Some(base) = name.strip_suffix(ext) {
                    out.insert(norm(base), p.clone());
                    break;
                }
            }
        }
    }
}

/// The `depends=` of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .enumerate()
        .filter(|(i, w)| *w == key && (*i == 0 || ko[i - 1] == 0))
        .map(|(i, _)| {
            let v = &ko[i + key.len()..];
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
        .next()
        .map(|s| s.split(',').filter(|d| !d.is_empty()).map(norm).collect())
        .unwrap_or_default()
}

/// Decompressed module `name` (cached).
fn load_module(
    env: &LabEnv,
    index: &HashMap<String, PathBuf>,
    name: &str,
) -> Result<Vec<u8>, LabError> {
    let cached = env.module_cache.join(format!("{name}.ko"));
    if let Ok(b) = fs::read(&cached) {
        return Ok(b);
    }
    let src = index.get(name).ok_or_else(|| LabError::Missing {
        what: format!("kernel module {name} in {}", env.modules.display()),
        hint: "this kernel does not build VFIO as modules; the lab needs them".into(),
    })?;
    let s = src.to_string_lossy();
    let bytes = if s.ends_with(".xz") || s.ends_with(".zst") {
        let tool = if s.ends_with(".xz") { "xz" } else { "zstd" };
        let out = Command::new(tool)
            .arg("-dc")
            .arg(src)
            .output()
            .map_err(|source| LabError::Io {
                what: format!("{tool} -dc {s}"),
                source,
            })?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("{tool} -dc {s}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        out.stdout
    } else {
        fs::read(src).map_err(|source| LabError::Io {
            what: format!("read {s}"),
            source,
        })?
    };
    if fs::create_dir_all(&env.module_cache).is_ok() {
        let _ = fs::write(&cached, &bytes);
    }
    Ok(bytes)
}

/// The modules to load, dependencies first.
fn modules_in_order(env: &LabEnv) -> Result<Vec<(String, Vec<u8>)>, LabError> {
    if env.builtin_vfio {
        return Ok(Vec::new()); // a lab build: VFIO is built in
    }
    let mut index = HashMap::new();
    index_modules(&env.modules.join("kernel"), &mut index);
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        env: &LabEnv,
        index: &HashMap<String, PathBuf>,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), LabError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let ko = load_module(env, index, name)?;
        for d in module_depends(&ko) {
            visit(env, index, &d, seen, order)?;
        }
        order.push((name.to_string(), ko));
        Ok(())
    }
    for m in ROOT_MODULES {
        visit(env, &index, &norm(m), &mut seen, &mut order)?;
    }
    Ok(order)
}

/// `lab-inspect-*` scenarios: the probe holds its mappings at the end while `hugepfn inspect`
/// reads its PID in the guest.
pub fn wants_inspect(f: &Path) -> bool {
    f.file_stem()
        .is_some_and(|s| s.to_string_lossy().starts_with("lab-inspect"))
}

/// The initramfs for one boot: scenarios get ids `0`, `1`, ... in `files` order.
fn build_initramfs(
    env: &LabEnv,
    modules: &[(String, Vec<u8>)],
    files: &[&Path],
) -> Result<Vec<u8>, LabError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| LabError::Io {
            what: format!("read {}", p.display()),
            source,
        })
    };
    let mut c = Cpio::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "lab",
        "lab/s",
    ] {
        c.dir(d);
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.file("init", GUEST_INIT.as_bytes(), true);
    c.file("bin/busybox", &read(&env.busybox)?, true);
    c.file("bin/hugepfn-probe", &read(&env.probe)?, true);
    let mut list = String::new();
    for (name, ko) in modules {
        c.file(&format!("lib/modules/{name}.ko"), ko, false);
        list.push_str(name);
        list.push('\n');
    }
    c.file("lab/modules", list.as_bytes(), false);
    let mut ids = String::new();
    if let Some(h) = &env.inspect {
        c.file("bin/hugepfn", &read(h)?, true);
    }
    for (i, f) in files.iter().enumerate() {
        c.file(&format!("lab/s/{i}.toml"), &read(f)?, false);
        if wants_inspect(f) {
            c.file(&format!("lab/s/{i}.inspect"), b"", false);
        }
        ids.push_str(&format!("{i}\n"));
    }
    c.file("lab/list", ids.as_bytes(), false);
    Ok(c.finish())
}

// ------------------------------------------------------------------------------------------
// the data port

#[derive(Debug, Default)]
struct Entry {
    report: Option<RunReport>,
    rc: Option<i32>,
    trace: Option<StepRef>,
    warnings: Vec<String>,
    messages: Vec<String>,
    /// `hugepfn inspect`'s JSON (lab-inspect-* scenarios).
    inspect: Option<String>,
}

#[derive(Debug, Default)]
struct Parsed {
    started: bool,
    done: bool,
    entries: BTreeMap<usize, Entry>,
    /// The id of the last `@@BEGIN`.
    current: Option<usize>,
}

fn parse_trace(rest: &str) -> Option<StepRef> {
    let mut index = None;
    let mut line = None;
    let mut op = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("step", v)) => index = v.parse().ok(),
            Some(("line", v)) => line = v.parse().ok(),
            Some(("op", v)) => op = Some(v.to_string()),
            _ => {}
        }
    }
    Some(StepRef {
        index: index?,
        line: line?,
        op: op?,
    })
}

fn parse_data(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim_start_matches('\0');
        if line.starts_with("@@HUGEPFN-LAB") {
            p.started = true;
        } else if line.starts_with("@@DONE") {
            p.done = true;
        } else if let Some(id) = line.strip_prefix("@@BEGIN ") {
            if let Ok(id) = id.trim().parse() {
                p.entries.entry(id).or_default();
                p.current = Some(id);
            }
        } else if let Some(rest) = line.strip_prefix("@@INSPECT ") {
            if let Some((id, json)) = rest.split_once(' ')
                && let Ok(id) = id.trim().parse::<usize>()
            {
                p.entries.entry(id).or_default().inspect = Some(json.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("@@END ") {
            let mut it = rest.split_whitespace();
            if let (Some(Ok(id)), Some(rc)) = (it.next().map(str::parse::<usize>), it.next()) {
                let e = p.entries.entry(id).or_default();
                e.rc = rc.strip_prefix("rc=").and_then(|v| v.parse().ok());
            }
        } else if let Some(e) = p.current.and_then(|c| p.entries.get_mut(&c)) {
            if let Some(rest) = line.strip_prefix("hugepfn-probe: trace ") {
                e.trace = parse_trace(rest);
            } else if let Some(w) = line.strip_prefix("hugepfn-probe: warning: ") {
                e.warnings.push(w.to_string());
            } else if line.starts_with('{') {
                match serde_json::from_str::<RunReport>(line) {
                    Ok(r) => e.report = Some(r),
                    Err(err) => e.messages.push(format!("unreadable report JSON: {err}")),
                }
            } else if !line.is_empty() && !line.starts_with("hugepfn-probe: info:") {
                e.messages.push(line.to_string());
            }
        }
    }
    p
}

/// The oops / panic lines of a console log.
fn oops_lines(console: &str) -> Vec<String> {
    // x86-64's and arm64's words ("Unable to handle kernel paging request", "Call trace:")
    const MARKS: [&str; 9] = [
        "BUG:",
        "Oops:",
        "general protection fault",
        "kernel BUG at",
        "WARNING: CPU:",
        "Kernel panic",
        "Call Trace:",
        "Unable to handle kernel",
        "Call trace:",
    ];
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let Some(start) = lines
        .iter()
        .position(|l| MARKS.iter().any(|m| l.contains(m)))
    else {
        return lines
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(|s| s.to_string())
            .collect();
    };
    let end = lines[start..]
        .iter()
        .position(|l| l.contains("Kernel panic") || l.contains("end Kernel panic"))
        .map_or(lines.len(), |i| start + i + 1);
    lines[start..end.min(start + 80)]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------
// booting

fn qemu_size(bytes: u64) -> String {
    format!("{}M", bytes >> 20)
}

/// Boots once with `files`; returns what the data port and console said.
fn boot(
    env: &LabEnv,
    opts: &GuestOptions,
    bar_size: u64,
    files: &[&Path],
    modules: &[(String, Vec<u8>)],
    tag: &str,
) -> Result<(Parsed, String, bool, BootStat), LabError> {
    fs::create_dir_all(&opts.run_dir).map_err(|source| LabError::Io {
        what: format!("mkdir {}", opts.run_dir.display()),
        source,
    })?;
    let initrd = opts.run_dir.join(format!("{tag}.cpio"));
    let console = opts.run_dir.join(format!("{tag}.console.log"));
    let data = opts.run_dir.join(format!("{tag}.data.log"));
    let image = build_initramfs(env, modules, files)?;
    fs::File::create(&initrd)
        .and_then(|mut f| f.write_all(&image))
        .map_err(|source| LabError::Io {
            what: format!("write {}", initrd.display()),
            source,
        })?;
    // x86-64: q35 with an Intel IOMMU, consoles on ttyS0 / ttyS1. arm64: virt with GICv3 (its
    // ITS gives the MSI isolation vfio type1 asks for) and an SMMUv3, ttyAMA0 / ttyAMA1.
    let accel = match opts.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    let cpu = match opts.accel {
        Accel::Tcg => "max",
        Accel::Kvm => "host",
    };
    let (machine, append) = match env.arch {
        LabArch::X86_64 => (
            format!("q35,accel={accel}"),
            "console=ttyS0 hugepfn_data=ttyS1 intel_iommu=on oops=panic panic=-1 loglevel=4",
        ),
        LabArch::Arm64 | LabArch::Arm64_16k => (
            format!("virt,gic-version=3,iommu=smmuv3,accel={accel}"),
            "console=ttyAMA0 hugepfn_data=ttyAMA1 oops=panic panic=-1 loglevel=4",
        ),
    };
    let mut cmd = Command::new(&env.qemu);
    cmd.args([
        "-machine", &machine, "-cpu", cpu, "-smp", "1", "-m", &opts.mem,
    ]);
    if env.arch.machine() == LabArch::X86_64 {
        cmd.args(["-device", "intel-iommu"]);
    }
    cmd.args([
        "-object",
        &format!("memory-backend-ram,id=barmem,size={}", qemu_size(bar_size)),
    ])
    .args(["-device", "ivshmem-plain,memdev=barmem"])
    .arg("-kernel")
    .arg(&env.vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", append])
    .args([
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-serial")
    .arg(format!("file:{}", data.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|source| LabError::Io {
        what: format!("start {}", env.qemu.display()),
        source,
    })?;
    let mut last_len = 0u64;
    let mut last_change = Instant::now();
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        std::thread::sleep(Duration::from_millis(100));
        let len = fs::metadata(&data).map_or(0, |m| m.len());
        if len != last_len {
            last_len = len;
            last_change = Instant::now();
        }
        let limit = if last_len == 0 {
            opts.boot_timeout
        } else {
            opts.step_timeout
        };
        if last_change.elapsed() > limit {
            let _ = child.kill();
            killed = true;
            break child.wait().ok();
        }
    };
    let wall = t0.elapsed();
    let _ = fs::remove_file(&initrd);
    let mut qemu_err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut qemu_err);
    }
    let data_text = fs::read_to_string(&data).unwrap_or_default();
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    let parsed = parse_data(&data_text);
    if !parsed.started && !killed && status.is_some_and(|s| !s.success()) {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}"),
            status: status.map_or("unknown".into(), |s| s.to_string()),
            stderr: qemu_err,
        });
    }
    let stat = BootStat {
        bar_size,
        scenarios: parsed.entries.len(),
        wall,
        console,
        data,
    };
    Ok((parsed, console_text, killed, stat))
}

/// Runs `files` (all needing a `bar_size` BAR) in as many boots as crashes require. Returns an
/// outcome per file, in order, and the boots' numbers.
pub fn run_group(
    env: &LabEnv,
    opts: &GuestOptions,
    bar_size: u64,
    files: &[&Path],
    tag: &str,
) -> Result<(Vec<KernelOutcome>, Vec<BootStat>), LabError> {
    let modules = modules_in_order(env)?;
    let mut outcomes: Vec<Option<KernelOutcome>> = vec![None; files.len()];
    let mut stats = Vec::new();
    let mut next = 0;
    let mut n = 0;
    while next < files.len() {
        n += 1;
        let batch = &files[next..];
        let (parsed, console, killed, stat) = boot(
            env,
            opts,
            bar_size,
            batch,
            &modules,
            &format!("{tag}-boot{n}"),
        )?;
        eprintln!(
            "lab: boot {tag}-{n}: BAR {}, {} of {} scenarios, {:.1} s",
            hugepfn_units::format_size(bar_size),
            parsed.entries.len(),
            batch.len(),
            stat.wall.as_secs_f64()
        );
        stats.push(stat);
        if !parsed.started || parsed.entries.is_empty() {
            let why = if killed {
                format!(
                    "the guest did not reach the lab's /init within {} s",
                    opts.boot_timeout.as_secs()
                )
            } else {
                format!(
                    "the guest stopped before running a scenario: {}",
                    oops_lines(&console).join("\n")
                )
            };
            for o in outcomes.iter_mut().skip(next) {
                *o = Some(KernelOutcome::BootFailure(why.clone()));
            }
            break;
        }
        let mut advanced = 0;
        for (id, e) in parsed.entries {
            let slot = next + id;
            if slot >= files.len() {
                continue;
            }
            advanced = advanced.max(id + 1);
            outcomes[slot] = Some(match (e.rc, e.report) {
                (Some(_), Some(report)) => KernelOutcome::Report {
                    report,
                    warnings: e.warnings,
                    inspect: e.inspect,
                },
                (Some(rc), None) => KernelOutcome::ProbeFailed {
                    rc,
                    messages: e.messages,
                },
                (None, _) if killed => KernelOutcome::Timeout {
                    step: e.trace,
                    secs: opts.step_timeout.as_secs(),
                },
                (None, _) => KernelOutcome::Crash {
                    step: e.trace,
                    oops: oops_lines(&console),
                },
            });
        }
        if parsed.done || advanced == 0 {
            if !parsed.done {
                for o in outcomes.iter_mut().skip(next) {
                    o.get_or_insert_with(|| KernelOutcome::BootFailure("no progress".into()));
                }
            }
            next = files.len();
        } else {
            next += advanced;
        }
    }
    let out = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| KernelOutcome::BootFailure("not run".into())))
        .collect();
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("bin/x", b"hello", true);
        let b = c.finish();
        assert!(b.starts_with(b"070701"));
        assert!(b.len().is_multiple_of(4));
        let s = String::from_utf8_lossy(&b);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        // mode of the file entry: 0o100755
        assert!(s.contains(&format!("{:08x}", 0o100755)));
    }

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF....\0license=GPL\0depends=vfio,vfio-pci-core,irqbypass\0intree=Y\0";
        assert_eq!(module_depends(ko), ["vfio", "vfio_pci_core", "irqbypass"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn data_port_protocol() {
        let text = "@@HUGEPFN-LAB uname=6.12.95+deb12-amd64 uptime=3.0\r\n\
            @@BEGIN 0\r\n\
            hugepfn-probe: info: devices 0000:00:01.0 (vfio-pci, iommu type1v2)\r\n\
            hugepfn-probe: trace step=0 of=2 line=10 op=mmap\r\n\
            hugepfn-probe: warning: device ivshmem BAR2 is at 0xfe00000000\r\n\
            {\"scenario\":\"s\",\"source\":\"kernel x\",\"steps\":[],\"totals\":{\"faults\":0,\"faults_by_level\":null,\"sigbus\":0,\"sigsegv\":0,\"skipped\":0},\"ok\":true}\r\n\
            @@END 0 rc=0\r\n\
            @@BEGIN 1\r\n\
            hugepfn-probe: error: line 9: `fork` is not supported\r\n\
            @@END 1 rc=2\r\n\
            @@BEGIN 2\r\n\
            hugepfn-probe: trace step=2 of=6 line=24 op=munmap\r\n";
        let p = parse_data(text);
        assert!(p.started && !p.done);
        let e0 = &p.entries[&0];
        assert_eq!(e0.rc, Some(0));
        assert_eq!(e0.report.as_ref().map(|r| r.scenario.as_str()), Some("s"));
        assert_eq!(e0.warnings.len(), 1);
        assert_eq!(p.entries[&1].rc, Some(2));
        assert_eq!(p.entries[&1].messages.len(), 1);
        let e2 = &p.entries[&2];
        assert_eq!(e2.rc, None);
        assert_eq!(
            e2.trace,
            Some(StepRef {
                index: 2,
                line: 24,
                op: "munmap".into()
            })
        );
    }

    #[test]
    fn oops_is_cut_from_the_console() {
        let console = "[    1.0] boot\n[    9.2] BUG: unable to handle page fault\n[    9.3] Call Trace:\n[    9.4]  __split_huge_pmd+0xc3/0x160\n[    9.5] Kernel panic - not syncing: Fatal exception\n[    9.6] Kernel Offset: 0x0\n";
        let o = oops_lines(console);
        assert_eq!(o.len(), 4);
        assert!(o[0].contains("BUG:"));
        assert!(o[3].contains("Kernel panic"));
    }
}
