//! `hugepfn inspect PID`: what the BAR mappings of a live process cost, predicted by the model.
//!
//! Reads only what does not disturb the process: `/proc/PID/maps` (never `smaps`: on Linux
//! 6.12 … 7.3 a `smaps` read splits, which for a pfnmap means zaps, every 1 GiB leaf it walks —
//! bug `pagewalk_splits_pfnmap_pud`, docs/kernels.md), the links in `/proc/PID/fd` and their
//! `fdinfo` (7.3 prints `vfio-device-syspath` for a VFIO device fd, 6.12 does not), `osrelease`, the THP mode
//! and the devices' sysfs `resource` files. No ptrace, no `unsafe`.
//!
//! A VFIO device mapping is a line whose path is `anon_inode:[vfio-device]` (a device fd from a
//! VFIO group) or `/dev/vfio/devices/vfioN` (the cdev of iommufd). Its file offset encodes the
//! region: `index << 40` (`VFIO_PCI_OFFSET_SHIFT`) plus the offset in the BAR. Each such VMA is
//! run on the model at its own VA, offset and length (one touch of every page, then a type1
//! DMA map of it), as the kernel version nearest to the running one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use hugepfn_kernels::{Behaviour, Kernel};
use hugepfn_scenario::{LeafCounts, parse_scenario};
use hugepfn_units::arch::Arch;
use hugepfn_units::format_size;
use hugepfn_units::level::Level;
use hugepfn_vfio::{Bar, parse_sysfs_resource};
use serde::{Deserialize, Serialize};

use crate::runner::{ModelRun, RunOptions};

const GIB: u64 = 1 << 30;
/// `VFIO_PCI_OFFSET_SHIFT`.
const REGION_SHIFT: u32 = 40;

/// `hugepfn inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The process.
    pub pid: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Model this kernel instead of the one nearest to the running kernel.
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Model this architecture instead of this machine's (x86_64 on x86-64, arm64 with 4 KiB
    /// pages on aarch64).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// Where procfs is (tests).
    #[arg(long, hide = true, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where sysfs is (tests).
    #[arg(long, hide = true, default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// Why inspect could not answer.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A maps line did not parse.
    #[error("{path}, line {line}: not a maps line: {text:?}")]
    Maps {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// `--kernel` names no modelled kernel.
    #[error("{0}")]
    Kernel(String),
    /// The machine's (or `--arch`'s) architecture is not one the model predicts.
    #[error("{0}")]
    Arch(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// Start VA.
    pub start: u64,
    /// End VA (exclusive).
    pub end: u64,
    /// `rwxp` / `rwxs`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// The path column (may be empty).
    pub path: String,
}

/// Parses `/proc/PID/maps`; `None` for a line that is not one.
pub fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut it = line.split_ascii_whitespace();
    let range = it.next()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path = it.collect::<Vec<_>>().join(" ");
    // the file of a mapping whose fd was closed and node removed
    let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_string();
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    if end <= start || perms.len() != 4 {
        return None;
    }
    Some(MapsLine {
        start,
        end,
        perms: perms.to_string(),
        offset,
        path,
    })
}

/// A VFIO device of the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// PCI address.
    pub bdf: String,
    /// How it was found.
    pub found_by: String,
    /// `/dev/vfio/devices/vfioN`, when the process opened the cdev.
    pub node: Option<String>,
    /// BARs from sysfs.
    #[serde(skip)]
    pub bars: Vec<Bar>,
}

/// What the model predicts for one VMA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    /// Faults to touch every page.
    pub faults: u64,
    /// Leaves afterwards.
    pub leaves: LeafCounts,
    /// Page-table bytes of the model process afterwards.
    pub page_table_bytes: u64,
    /// type1 `vaddr_get_pfns` lookups to DMA-map it (None: the map failed, e.g. read-only).
    pub dma_lookups: Option<u64>,
}

/// One VFIO BAR mapping of the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BarMapping {
    /// VA range.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// maps permissions.
    pub perms: String,
    /// The device (None: none found).
    pub device: Option<String>,
    /// VFIO region = BAR index.
    pub region: u64,
    /// Offset in the BAR.
    pub bar_offset: u64,
    /// Physical address of the first byte (None: no such BAR in sysfs).
    pub phys: Option<u64>,
    /// (VA − PA) mod 1 GiB: 0 means 1 GiB leaves are possible.
    pub skew_1g: Option<u64>,
    /// The model's prediction.
    pub prediction: Option<Prediction>,
    /// Problems and the fix.
    pub notes: Vec<String>,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectReport {
    /// The process.
    pub pid: u32,
    /// `osrelease`.
    pub running_kernel: String,
    /// The kernel modelled.
    pub modelled_as: String,
    /// The architecture modelled (this machine's unless `--arch`).
    #[serde(default)]
    pub arch: Arch,
    /// Whether that is the running kernel or only the nearest modelled one.
    pub exact: bool,
    /// THP mode.
    pub thp: String,
    /// VFIO devices found.
    pub devices: Vec<DeviceInfo>,
    /// Mappings, by VA.
    pub mappings: Vec<BarMapping>,
    /// Notes on the whole process.
    pub notes: Vec<String>,
}

fn read(path: &Path) -> Result<String, InspectError> {
    std::fs::read_to_string(path).map_err(|source| InspectError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The modelled kernel nearest to `release` (`6.12.95+deb12-amd64`), and whether it is exact.
pub fn nearest_kernel(release: &str) -> (Option<Kernel>, bool) {
    let nums: Vec<u64> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let (maj, min, patch) = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    let version = |k: Kernel| -> (u64, u64, u64) {
        let v: Vec<u64> = k
            .name()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        (v[0], v[1], v.get(2).copied().unwrap_or(0))
    };
    if (maj, min) < (6, 12) {
        return (None, false);
    }
    let exact = Kernel::ALL
        .into_iter()
        .find(|&k| version(k) == (maj, min, patch));
    if let Some(k) = exact {
        return (Some(k), true);
    }
    // same major.minor: the nearest patch level; else the nearest Debian release by series
    // (6.19 is followed by 7.0; the model-only 6.12.0 and 6.13.0 only for their own series)
    let series = |a: u64, b: u64| a * 20 + b;
    let same: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|&k| (version(k).0, version(k).1) == (maj, min))
        .collect();
    let best = if same.is_empty() {
        [Kernel::V6_12_117, Kernel::V7_3_4]
            .into_iter()
            .min_by_key(|&k| series(version(k).0, version(k).1).abs_diff(series(maj, min)))
    } else {
        same.into_iter()
            .min_by_key(|&k| version(k).2.abs_diff(patch))
    };
    (best, false)
}

fn bdf_of(path: &str) -> Option<String> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    (last.matches(':').count() == 2 && last.contains('.')).then(|| last.to_string())
}

fn device_bars(sys: &Path, bdf: &str) -> Vec<Bar> {
    let p = sys.join("bus/pci/devices").join(bdf).join("resource");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| parse_sysfs_resource(&t).ok())
        .unwrap_or_default()
}

/// The process's VFIO devices: from its fds (cdev node or fdinfo's syspath), else every device
/// bound to vfio-pci.
fn find_devices(args: &InspectArgs, notes: &mut Vec<String>) -> Vec<DeviceInfo> {
    let pid_dir = args.proc_root.join(args.pid.to_string());
    let mut found: BTreeMap<String, DeviceInfo> = BTreeMap::new();
    let mut unknown = 0;
    let fds = match std::fs::read_dir(pid_dir.join("fd")) {
        Ok(d) => d.flatten().collect::<Vec<_>>(),
        Err(e) => {
            notes.push(format!(
                "cannot list the process's fds ({e}): devices guessed from vfio-pci"
            ));
            Vec::new()
        }
    };
    for fd in fds {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let t = target.to_string_lossy().to_string();
        if let Some(node) = t.strip_prefix("/dev/vfio/devices/") {
            let link = args
                .sys_root
                .join("class/vfio-dev")
                .join(node)
                .join("device");
            match std::fs::read_link(&link)
                .ok()
                .and_then(|l| bdf_of(&l.to_string_lossy()))
            {
                Some(bdf) => {
                    found.entry(bdf.clone()).or_insert(DeviceInfo {
                        bars: device_bars(&args.sys_root, &bdf),
                        bdf,
                        found_by: "cdev".into(),
                        node: Some(t.clone()),
                    });
                }
                None => notes.push(format!(
                    "{t}: no device found behind /sys/class/vfio-dev/{node}: its mappings get no prediction"
                )),
            }
        } else if t == "anon_inode:[vfio-device]" {
            let info = std::fs::read_to_string(pid_dir.join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let syspath = info
                .lines()
                .find_map(|l| l.strip_prefix("vfio-device-syspath:"))
                .map(str::trim);
            match syspath.and_then(bdf_of) {
                Some(bdf) => {
                    found.entry(bdf.clone()).or_insert(DeviceInfo {
                        bars: device_bars(&args.sys_root, &bdf),
                        bdf,
                        found_by: "fdinfo".into(),
                        node: None,
                    });
                }
                None => unknown += 1,
            }
        }
    }
    if unknown > 0 || found.is_empty() {
        if let Ok(d) = std::fs::read_dir(args.sys_root.join("bus/pci/drivers/vfio-pci")) {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(bdf) = bdf_of(&name) {
                    found.entry(bdf.clone()).or_insert(DeviceInfo {
                        bars: device_bars(&args.sys_root, &bdf),
                        bdf,
                        found_by: "bound to vfio-pci".into(),
                        node: None,
                    });
                }
            }
        }
        if unknown > 0 {
            notes.push(format!(
                "{unknown} VFIO device fd(s) do not say which device they are (no \
                 vfio-device-syspath in their fdinfo: 6.12 prints none, 7.3 does): their \
                 mappings are matched to devices bound to vfio-pci by BAR size"
            ));
        }
    }
    found.into_values().collect()
}

fn is_vfio(path: &str) -> bool {
    path == "anon_inode:[vfio-device]" || path.starts_with("/dev/vfio/devices/vfio")
}

/// Picks the device of a mapping.
fn device_for<'d>(
    line: &MapsLine,
    devices: &'d [DeviceInfo],
    notes: &mut Vec<String>,
) -> Option<&'d DeviceInfo> {
    if line.path.starts_with("/dev/vfio/devices/") {
        return devices
            .iter()
            .find(|d| d.node.as_deref() == Some(line.path.as_str()));
    }
    let region = line.offset >> REGION_SHIFT;
    let off = line.offset & ((1 << REGION_SHIFT) - 1);
    let len = line.end - line.start;
    let fits: Vec<&DeviceInfo> = devices
        .iter()
        .filter(|d| d.node.is_none())
        .filter(|d| {
            d.bars
                .iter()
                .any(|b| u64::from(b.index) == region && off + len <= b.size)
        })
        .collect();
    if fits.len() > 1 {
        notes.push(format!(
            "{} devices have a BAR{region} this mapping fits: assumed {}",
            fits.len(),
            fits[0].bdf
        ));
    }
    fits.first().copied()
}

/// Runs one mapping on the model.
fn predict(
    bar: &Bar,
    m: &MapsLine,
    bar_offset: u64,
    thp: &str,
    kernel: Option<Kernel>,
    arch: Arch,
) -> Result<Prediction, String> {
    let shared = m.perms.ends_with('s');
    let text = format!(
        "name = \"inspect\"\nthp = \"{thp}\"\n\
         [[device]]\nname = \"dev\"\nbars = [{{ index = {i}, phys = \"{phys:#x}\", size = {size} }}]\n\
         [[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"dev\"\nbar = {i}\noffset = {bar_offset}\n\
         len = {len}\nva = \"{va:#x}\"\nshared = {shared}\n\
         [[step]]\nop = \"mprotect\"\nmap = \"m\"\nprot = \"{prot}\"\n\
         [[step]]\nop = \"touch\"\nmap = \"m\"\naccess = \"read\"\n\
         [[step]]\nop = \"dma_map\"\nmap = \"m\"\niova = \"0x380000000000\"\n",
        i = bar.index,
        phys = bar.phys,
        size = bar.size,
        len = m.end - m.start,
        va = m.start,
        prot = match (
            m.perms.starts_with('r'),
            m.perms.as_bytes().get(1) == Some(&b'w')
        ) {
            (_, true) => "write",
            (true, false) => "read",
            (false, false) => "none",
        },
    );
    let sc = parse_scenario(&text, "hugepfn inspect").map_err(|e| e.to_string())?;
    let mut model = ModelRun::new(
        &sc,
        RunOptions {
            kernel,
            arch: Some(arch),
            ..RunOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let rep = model.run(&sc);
    if let Some(e) = rep.steps.first().and_then(|s| s.errno.clone()) {
        return Err(format!("the model's mmap failed: {e}"));
    }
    let touch = rep.steps.get(2);
    let dma = rep.steps.get(3);
    let pt = touch.and_then(|s| s.page_table_pages);
    Ok(Prediction {
        faults: touch.map_or(0, |s| s.counters.faults),
        leaves: touch.and_then(|s| s.leaves).unwrap_or_default(),
        page_table_bytes: pt.map_or(0, |p| p.bytes_with(arch.geometry())),
        dma_lookups: dma
            .filter(|s| s.errno.is_none())
            .map(|s| s.counters.dma_lookups),
    })
}

/// The architecture this binary runs on, as the model names it: on aarch64 the kernel's page
/// size (`AT_PAGESZ` in `/proc/self/auxv`) picks the granule.
fn machine_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::X86_64),
        "aarch64" => match page_size() {
            Some(0x4000) => Some(Arch::Arm64_16k),
            Some(0x10000) => Some(Arch::Arm64_64k),
            _ => Some(Arch::Arm64),
        },
        _ => None,
    }
}

/// The kernel's page size: `AT_PAGESZ` (6) in this process's auxiliary vector.
fn page_size() -> Option<u64> {
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    auxv.chunks_exact(16).find_map(|kv| {
        let word = |b: &[u8]| b.try_into().ok().map(u64::from_ne_bytes);
        (word(&kv[..8])? == 6).then(|| word(&kv[8..])).flatten()
    })
}

/// Inspects the process.
pub fn inspect(args: &InspectArgs) -> Result<InspectReport, InspectError> {
    let maps_path = args.proc_root.join(args.pid.to_string()).join("maps");
    let text = read(&maps_path)?;
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let m = parse_maps_line(l).ok_or_else(|| InspectError::Maps {
            path: maps_path.clone(),
            line: i + 1,
            text: l.to_string(),
        })?;
        lines.push(m);
    }
    let release = read(&args.proc_root.join("sys/kernel/osrelease"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut notes = Vec::new();
    let (kernel, exact) = match &args.kernel {
        Some(k) => (
            Some(
                k.parse::<Kernel>()
                    .map_err(|e| InspectError::Kernel(e.to_string()))?,
            ),
            true,
        ),
        None => nearest_kernel(&release),
    };
    let modelled_as = match kernel {
        Some(k) if exact => k.name().to_string(),
        Some(k) => {
            notes.push(format!(
                "Linux {release} is not modelled: predicted as {}, the nearest modelled version (a guess)",
                k.name()
            ));
            k.name().to_string()
        }
        None => {
            notes.push(format!(
                "Linux {release} predates huge pfnmaps (6.12): vfio-pci maps every BAR page with a 4 KiB PTE; the model has no such kernel, so no predictions"
            ));
            "none".into()
        }
    };
    let thp_raw =
        read(&args.sys_root.join("kernel/mm/transparent_hugepage/enabled")).unwrap_or_default();
    let thp = thp_raw
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or("always")
        .to_string();
    if thp != "always"
        && kernel.is_some_and(|k| Behaviour::from_option(Some(k)).thp_sysfs_gates_pfnmap())
    {
        notes.push(format!(
            "transparent_hugepage is `{thp}`: on this kernel that keeps BARs at 4 KiB unless MADV_HUGEPAGE (maps does not show VMA flags; smaps would, but reading it zaps 1 GiB leaves on 6.12-7.3)"
        ));
    }
    let arch = match args.arch {
        Some(a) => a,
        None => machine_arch().ok_or_else(|| {
            InspectError::Arch(format!(
                "this machine is {}: no modelled architecture; pass --arch",
                std::env::consts::ARCH
            ))
        })?,
    };
    // the PMD block of the architecture's granule: 2 MiB, 32 MiB with 16 KiB pages, 512 MiB
    // with 64 KiB pages
    let geom = arch.geometry();
    let pmd = geom.size(Level::Pmd);
    // the largest leaf a pfnmap takes here (arm64: 2 MiB; riscv 6.12: 4 KiB)
    let leaves = Behaviour::from_option(kernel).pfnmap_leaves(arch);
    let devices = find_devices(args, &mut notes);
    let mut mappings = Vec::new();
    let vfio: Vec<&MapsLine> = lines.iter().filter(|l| is_vfio(&l.path)).collect();
    for (k, m) in vfio.iter().enumerate() {
        let mut mnotes = Vec::new();
        let region = m.offset >> REGION_SHIFT;
        let bar_offset = m.offset & ((1 << REGION_SHIFT) - 1);
        let dev = device_for(m, &devices, &mut mnotes);
        let bar = dev.and_then(|d| d.bars.iter().find(|b| u64::from(b.index) == region));
        if region > 5 {
            mnotes.push(format!(
                "region {region} is not a BAR (config space, ROM or a device-specific region)"
            ));
        } else if dev.is_none() {
            mnotes.push("no VFIO device found for this mapping".into());
        } else if bar.is_none() {
            mnotes.push(format!("the device has no memory BAR{region} in sysfs"));
        }
        let phys = bar.map(|b| b.phys + bar_offset);
        let len = m.end - m.start;
        let skew_1g = phys.map(|pa| m.start.wrapping_sub(pa) % GIB);
        if let Some(pa) = phys {
            let skew_2m = m.start.wrapping_sub(pa) % pmd;
            if leaves.pud && len >= GIB && skew_1g != Some(0) {
                let skew = skew_1g.unwrap_or(0);
                // the next VA up that is congruent with the PA (rounding down could fall below
                // the mapping space or into the previous VMA)
                let fix = m
                    .start
                    .checked_add((GIB - skew) % GIB)
                    .map_or_else(String::new, |f| format!(" such as {f:#x}"));
                mnotes.push(format!(
                    "VA ≡ PA + {} (mod 1 GiB): no 1 GiB leaves{}; a VA ≡ PA (mod 1 GiB){fix} would take them",
                    format_size(skew),
                    if skew_2m == 0 { "" } else { " and no PMD leaves" },
                ));
            } else if leaves.pmd && len >= pmd && skew_2m != 0 {
                let (pmd_name, page_name) =
                    (geom.size_name(Level::Pmd), geom.size_name(Level::Pte));
                mnotes.push(format!(
                    "VA ≡ PA + {} (mod {pmd_name}): {page_name} leaves only; align the mmap to {pmd_name} (congruent with the BAR)",
                    format_size(skew_2m)
                ));
            }
        }
        // a VMA boundary that cuts a 1 GiB block between two VMAs of one mapping: the same
        // file, adjacent in VA and in file offset
        let left = vfio.iter().enumerate().any(|(j, o)| {
            j != k
                && o.path == m.path
                && o.end == m.start
                && o.offset + (o.end - o.start) == m.offset
        });
        let right = vfio.iter().enumerate().any(|(j, o)| {
            j != k && o.path == m.path && o.start == m.end && m.offset + len == o.offset
        });
        for (cut, has) in [(m.start, left), (m.end, right)] {
            if leaves.pud && has && cut % GIB != 0 && skew_1g == Some(0) {
                mnotes.push(format!(
                    "the VMA is split at {cut:#x}, inside a 1 GiB block: that block maps with 2 MiB leaves at best (mprotect/madvise split it; on 6.12-7.3 a split inside a mapped 1 GiB leaf oopses)"
                ));
            }
        }
        let prediction = match (bar, kernel) {
            (Some(b), Some(k)) => match predict(b, m, bar_offset, &thp, Some(k), arch) {
                Ok(p) => Some(p),
                Err(e) => {
                    mnotes.push(format!("no prediction: {e}"));
                    None
                }
            },
            _ => None,
        };
        mappings.push(BarMapping {
            start: m.start,
            end: m.end,
            perms: m.perms.clone(),
            device: dev.map(|d| d.bdf.clone()),
            region,
            bar_offset,
            phys,
            skew_1g,
            prediction,
            notes: mnotes,
        });
    }
    if mappings.is_empty() {
        notes.push("no VFIO device mappings in this process".into());
    }
    Ok(InspectReport {
        pid: args.pid,
        running_kernel: release,
        modelled_as,
        arch,
        exact,
        thp,
        devices,
        mappings,
        notes,
    })
}

/// The report as text.
pub fn format(r: &InspectReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pid {}: Linux {}, modelled as {}{} on {}, THP {}",
        r.pid,
        r.running_kernel,
        r.modelled_as,
        if r.exact { "" } else { " (nearest)" },
        r.arch.name(),
        r.thp
    );
    for d in &r.devices {
        let bars: Vec<String> = d
            .bars
            .iter()
            .map(|b| format!("BAR{} {} at {:#x}", b.index, format_size(b.size), b.phys))
            .collect();
        let _ = writeln!(s, "device {} ({}): {}", d.bdf, d.found_by, bars.join(", "));
    }
    let _ = writeln!(
        s,
        "{:<31} {:<4} {:<13} {:<5} {:>9} {:>16} {:>10} {:>14} {:>10} {:>11}",
        "va",
        "perm",
        "device",
        "bar",
        "offset",
        "phys",
        "faults",
        "leaves 1G/2M/4K",
        "pt bytes",
        "dma lookups"
    );
    for m in &r.mappings {
        let p = m.prediction.as_ref();
        let _ = writeln!(
            s,
            "{:<31} {:<4} {:<13} {:<5} {:>9} {:>16} {:>10} {:>14} {:>10} {:>11}",
            format!("{:#x}-{:#x}", m.start, m.end),
            m.perms,
            m.device.as_deref().unwrap_or("?"),
            format!("BAR{}", m.region),
            format_size(m.bar_offset),
            m.phys.map_or("-".into(), |p| format!("{p:#x}")),
            p.map_or("-".into(), |p| p.faults.to_string()),
            p.map_or("-".into(), |p| format!(
                "{}/{}/{}",
                p.leaves.pud, p.leaves.pmd, p.leaves.pte
            )),
            p.map_or("-".into(), |p| format_size(p.page_table_bytes)),
            p.and_then(|p| p.dma_lookups)
                .map_or("-".into(), |n| n.to_string()),
        );
        for n in &m.notes {
            let _ = writeln!(s, "    {n}");
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// `hugepfn inspect`.
pub fn main(args: InspectArgs) -> ExitCode {
    match inspect(&args) {
        Ok(r) => {
            if args.json {
                match serde_json::to_string_pretty(&r) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("hugepfn inspect: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", format(&r));
            }
            ExitCode::SUCCESS
        }
        // a PID that is gone (or not ours to read), a --kernel that is not modelled: the input
        Err(e @ (InspectError::Kernel(_) | InspectError::Read { .. })) => {
            eprintln!("hugepfn inspect: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("hugepfn inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
