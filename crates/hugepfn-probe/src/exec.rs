//! Runs a scenario's steps on the real kernel and builds the [`RunReport`].
//!
//! Fault counting: every measured window is `ru_minflt` after − before, around exactly the
//! system call(s) or the access loop of one step. Before each window the probe pre-faults
//! everything the window itself touches (its stack, the access loop's and the signal handler's
//! code, the clock): otherwise the first `getrusage`/`clock_gettime` or the first run of a code
//! page shows up as one extra fault (the lab README's "one-fault pitfall").
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Write};

use hugepfn_scenario::{
    Access as ScAccess, Advice as ScAdvice, Counters, ExpectNow, Kernel, MAIN_PROCESS, Madvise,
    ModelOnly, Order, PowerState, ProcFileSpec, ProtSpec, RunReport, Scenario, Step, StepReport,
    ThpMode, VaPlacement, check_expect, model_only,
};
use hugepfn_units::addr::{PagingMode, VirtAddr};
use hugepfn_units::format_size;

use crate::error::ProbeError;
use crate::pci;
use crate::sys::{self, Access, Advice, DevMap, Place, RegionInfo, Signal};
use crate::vfio::{Device, IommuChoice, PCI_COMMAND_MEMORY, Vfio};

/// Knobs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--device` values: `(Some(name), bdf)` or `(None, bdf)`.
    pub devices: Vec<(Option<String>, String)>,
    /// `--bind`: rebind explicitly named devices to vfio-pci.
    pub bind: bool,
    /// `--set-thp`: write the scenario's THP mode to sysfs (restored afterwards).
    pub set_thp: bool,
    /// VFIO IOMMU backend.
    pub iommu: IommuChoice,
    /// `--trace`: a line on stderr before each step, drained to the terminal.
    pub trace: bool,
    /// `--hold FILE`: after the last step, with every mapping still in place, create FILE
    /// (holding this process's pid) and wait until it is removed (for `hugepfn inspect`).
    pub hold: Option<std::path::PathBuf>,
}

/// Creates `file` with our pid and waits (at most 10 minutes) until somebody removes it.
fn hold(file: &std::path::Path, warnings: &mut Vec<String>) {
    if let Err(e) = std::fs::write(file, format!("{}\n", std::process::id())) {
        warn(warnings, format!("--hold {}: {e}", file.display()));
        return;
    }
    let t0 = std::time::Instant::now();
    while file.exists() {
        if t0.elapsed() > std::time::Duration::from_secs(600) {
            warn(
                warnings,
                format!("--hold {}: not released in 600 s", file.display()),
            );
            let _ = std::fs::remove_file(file);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Parses one `--device` value.
pub fn parse_device_arg(s: &str) -> Result<(Option<String>, String), ProbeError> {
    let (name, bdf) = match s.split_once('=') {
        Some((n, b)) if !n.is_empty() => (Some(n.to_string()), b),
        Some(_) => return Err(ProbeError::DeviceArg(s.to_string())),
        None => (None, s),
    };
    if !is_bdf(bdf) {
        return Err(ProbeError::DeviceArg(s.to_string()));
    }
    Ok((name, bdf.to_string()))
}

/// `DDDD:BB:DD.F` with hex digits.
fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.char_indices()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Name of an errno as Linux spells it.
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(1) => "EPERM",
        Some(2) => "ENOENT",
        Some(4) => "EINTR",
        Some(5) => "EIO",
        Some(6) => "ENXIO",
        Some(9) => "EBADF",
        Some(11) => "EAGAIN",
        Some(12) => "ENOMEM",
        Some(13) => "EACCES",
        Some(14) => "EFAULT",
        Some(16) => "EBUSY",
        Some(17) => "EEXIST",
        Some(19) => "ENODEV",
        Some(22) => "EINVAL",
        Some(25) => "ENOTTY",
        Some(28) => "ENOSPC",
        Some(75) => "EOVERFLOW",
        Some(95) => "EOPNOTSUPP",
        Some(n) => return format!("errno {n}"),
        None => return format!("{e}"),
    };
    name.to_string()
}

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

fn thp_word(m: ThpMode) -> &'static str {
    match m {
        ThpMode::Always => "always",
        ThpMode::Madvise => "madvise",
        ThpMode::Never => "never",
    }
}

/// The bracketed word of `always [madvise] never`.
fn thp_current(text: &str) -> Option<String> {
    let s = text.find('[')?;
    let e = text[s..].find(']')? + s;
    Some(text[s + 1..e].to_string())
}

/// Restores the THP mode it changed.
pub struct ThpGuard {
    old: Option<String>,
}

impl Drop for ThpGuard {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = std::fs::write(THP_ENABLED, old);
        }
    }
}

/// Checks (or, with `set`, sets) the kernel's THP mode.
pub fn apply_thp(want: ThpMode, set: bool) -> Result<ThpGuard, ProbeError> {
    let sysfs = |source| ProbeError::Sysfs {
        path: THP_ENABLED.into(),
        source,
    };
    let text = std::fs::read_to_string(THP_ENABLED).map_err(sysfs)?;
    let have = thp_current(&text).ok_or_else(|| ProbeError::SysfsFormat {
        path: THP_ENABLED.into(),
        msg: format!("no [selected] mode in {text:?}"),
    })?;
    let want = thp_word(want);
    if have == want {
        return Ok(ThpGuard { old: None });
    }
    if !set {
        return Err(ProbeError::ThpMismatch { want, have });
    }
    std::fs::write(THP_ENABLED, want).map_err(sysfs)?;
    Ok(ThpGuard { old: Some(have) })
}

/// The report plus what the probe had to say about the run.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON report.
    pub report: RunReport,
    /// Everything printed as a warning (also already printed on stderr).
    pub warnings: Vec<String>,
}

fn warn(warnings: &mut Vec<String>, msg: String) {
    eprintln!("hugepfn-probe: warning: {msg}");
    warnings.push(msg);
}

/// A scenario device resolved to a real one.
struct RealDevice {
    name: String,
    bdf: String,
    auto: bool,
}

fn resolve_devices(
    sc: &Scenario,
    args: &[(Option<String>, String)],
) -> Result<Vec<RealDevice>, ProbeError> {
    let names: Vec<&str> = sc.devices.iter().map(|d| d.name.as_str()).collect();
    let mut given: HashMap<String, String> = HashMap::new();
    for (name, bdf) in args {
        let name = match name {
            Some(n) if names.contains(&n.as_str()) => n.clone(),
            Some(n) => {
                return Err(ProbeError::UnknownDevice {
                    name: n.clone(),
                    have: names.join(", "),
                });
            }
            None if names.len() == 1 => names[0].to_string(),
            None => {
                return Err(ProbeError::Unresolved {
                    name: names.join(", "),
                    why: format!(
                        "a bare --device {bdf} is ambiguous: the scenario has {} devices",
                        names.len()
                    ),
                });
            }
        };
        if !pci::exists(bdf) {
            return Err(ProbeError::NoSuchDevice(bdf.clone()));
        }
        given.insert(name, bdf.clone());
    }
    let mut ivshmem = pci::find_devices(pci::IVSHMEM.0, pci::IVSHMEM.1)?
        .into_iter()
        .filter(|b| !given.values().any(|g| g == b));
    let mut out = Vec::new();
    for d in &sc.devices {
        if let Some(bdf) = given.get(&d.name) {
            out.push(RealDevice {
                name: d.name.clone(),
                bdf: bdf.clone(),
                auto: false,
            });
        } else if let Some(bdf) = ivshmem.next() {
            out.push(RealDevice {
                name: d.name.clone(),
                bdf,
                auto: true,
            });
        } else {
            return Err(ProbeError::Unresolved {
                name: d.name.clone(),
                why: "no --device for it and no (further) ivshmem device 1af4:1110".into(),
            });
        }
    }
    Ok(out)
}

/// Deterministic per-run byte pattern for BAR offset `off`.
fn pattern(off: u64, salt: u64) -> u8 {
    let mut z = off ^ salt;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u8
}

const SAMPLES: usize = 64;

/// What one pass of accesses saw.
#[derive(Debug, Clone, Copy)]
struct TouchResult {
    sigbus: u64,
    sigsegv: u64,
    skipped: u64,
    /// Writes whose read-back differed.
    mismatches: u64,
    /// Offsets (in the mapping) of accessed strides kept for the pread cross-check.
    samples: [u64; SAMPLES],
    nsamples: usize,
}

impl Default for TouchResult {
    fn default() -> Self {
        TouchResult {
            sigbus: 0,
            sigsegv: 0,
            skipped: 0,
            mismatches: 0,
            samples: [0; SAMPLES],
            nsamples: 0,
        }
    }
}

/// Parameters of one pass.
#[derive(Debug, Clone, Copy)]
struct Pass {
    bar_off: u64,
    offset: u64,
    n: u64,
    stride: u64,
    write: bool,
    reverse: bool,
    salt: u64,
}

/// The access loop. It must not allocate or print: it runs inside the measured window.
#[inline(never)]
fn touch_loop(map: &DevMap, p: Pass) -> TouchResult {
    let mut r = TouchResult::default();
    let every = (p.n / SAMPLES as u64).max(1);
    let count = |s: Signal, r: &mut TouchResult| match s {
        Signal::Bus => r.sigbus += 1,
        Signal::Segv => r.sigsegv += 1,
    };
    for k in 0..p.n {
        let idx = if p.reverse { p.n - 1 - k } else { k };
        let Some(off) = idx
            .checked_mul(p.stride)
            .and_then(|x| x.checked_add(p.offset))
        else {
            r.skipped += 1;
            continue;
        };
        let done = if p.write {
            let v = pattern(p.bar_off.wrapping_add(off), p.salt);
            match map.write8(off, v) {
                Access::NotMapped => {
                    r.skipped += 1;
                    false
                }
                Access::Faulted(s) => {
                    count(s, &mut r);
                    false
                }
                Access::Done(()) => match map.read8(off) {
                    Access::Done(b) => {
                        if b != v {
                            r.mismatches += 1;
                        }
                        true
                    }
                    Access::Faulted(s) => {
                        count(s, &mut r);
                        false
                    }
                    Access::NotMapped => false,
                },
            }
        } else {
            match map.read8(off) {
                Access::Done(_) => true,
                Access::Faulted(s) => {
                    count(s, &mut r);
                    false
                }
                Access::NotMapped => {
                    r.skipped += 1;
                    false
                }
            }
        };
        if done && idx % every == 0 && r.nsamples < SAMPLES {
            r.samples[r.nsamples] = off;
            r.nsamples += 1;
        }
    }
    r
}

/// Pre-faults the stack below the current frame.
#[inline(never)]
fn warm_stack() {
    let mut buf = [0u8; 256 * 1024];
    for i in (0..buf.len()).step_by(512) {
        buf[i] = i as u8;
    }
    std::hint::black_box(&buf);
}

struct MapState {
    map: Option<DevMap>,
    len: u64,
    /// Physical address of the BAR (for `congruent:` placements).
    phys: u64,
    dev: usize,
    bar_off: u64,
    region: RegionInfo,
}

struct Runner<'a> {
    sc: &'a Scenario,
    vfio: Vfio,
    devices: Vec<Device>,
    dev_index: HashMap<String, usize>,
    phys: HashMap<(usize, u8), (u64, RegionInfo)>,
    maps: HashMap<String, MapState>,
    warm: DevMap,
    salt: u64,
    warnings: Vec<String>,
    data_errors: u64,
    /// Where /proc files, pagemap entries and mincore vectors are read to: faulted in before
    /// any measured window, so reading them takes no fault of its own.
    proc_buf: Vec<u8>,
}

impl Runner<'_> {
    /// Everything a measured window runs, run once outside it.
    fn warm(&mut self, write: bool, reverse: bool) {
        let _ = sys::warm_fault_path();
        let pass = Pass {
            bar_off: 0,
            offset: 0,
            n: self.warm.len() / 4096,
            stride: 4096,
            write,
            reverse,
            salt: self.salt,
        };
        std::hint::black_box(touch_loop(&self.warm, pass));
        warm_stack();
        let _ = sys::minflt();
        let _ = std::hint::black_box(std::time::Instant::now());
    }

    fn measure<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, u64) {
        self.warm(true, false);
        let f0 = sys::minflt();
        let out = f(self);
        let f1 = sys::minflt();
        (out, f1.saturating_sub(f0))
    }

    fn step(&mut self, i: usize, step: &Step) -> StepReport {
        let mut rep = StepReport::for_step(i, step, false);
        let mut errno: Option<io::Error> = None;
        match step {
            Step::Mmap(m) => {
                let dev = self.dev_index[&m.device];
                let Some(&(phys, region)) = self.phys.get(&(dev, m.bar)) else {
                    rep.errno = Some("ENODEV".into());
                    return rep;
                };
                let len = m.len.resolve(region.size.saturating_sub(m.offset));
                let place = match m.va {
                    VaPlacement::Kernel => Place::Kernel,
                    VaPlacement::Align { size, skew } => Place::Reserve { align: size, skew },
                    VaPlacement::Congruent { size } => Place::Reserve {
                        align: size,
                        skew: phys.wrapping_add(m.offset) % size,
                    },
                    VaPlacement::Fixed(a) => Place::Fixed(a),
                };
                let file_off = region.offset.saturating_add(m.offset);
                let shared = m.shared;
                let advice = m.madvise.map(|a| match a {
                    Madvise::Hugepage => Advice::Hugepage,
                    Madvise::Nohugepage => Advice::Nohugepage,
                });
                let ((map, adv_err), faults) = self.measure(|r| {
                    let mut map = DevMap::map(&r.devices[dev].file, file_off, len, place, shared);
                    let adv_err = match (&mut map, advice) {
                        (Ok(mp), Some(a)) => mp.madvise(0, len, a).err(),
                        _ => None,
                    };
                    (map, adv_err)
                });
                rep.counters.faults = faults;
                let map = match map {
                    Ok(mp) => Some(mp),
                    Err(e) => {
                        errno = Some(e);
                        None
                    }
                };
                if let Some(e) = adv_err {
                    warn(
                        &mut self.warnings,
                        format!("step {} (line {}): madvise: {e}", i + 1, m.line),
                    );
                    errno = Some(e);
                }
                // (checked as 57-bit: arm64's 48-bit user VAs are above x86-64's 47 bits)
                rep.va = map
                    .as_ref()
                    .and_then(|mp| VirtAddr::new(mp.va(), PagingMode::Level5).ok());
                self.maps.insert(
                    m.name.clone(),
                    MapState {
                        map,
                        len,
                        phys,
                        dev,
                        bar_off: m.offset,
                        region,
                    },
                );
            }
            Step::Touch(t) => {
                let Some(ms) = self.maps.get(&t.map) else {
                    rep.errno = Some("EINVAL".into());
                    return rep;
                };
                let len = t.len.resolve(ms.len.saturating_sub(t.offset));
                let n = len.div_ceil(t.stride);
                let (dev, region, bar_off) = (ms.dev, ms.region, ms.bar_off);
                let pass = Pass {
                    bar_off,
                    offset: t.offset,
                    n,
                    stride: t.stride,
                    write: t.access == ScAccess::Write,
                    reverse: t.order == Order::Reverse,
                    salt: self.salt,
                };
                if ms.map.is_none() {
                    // the mmap failed: every stride is unmapped
                    rep.counters.skipped = n;
                    return rep;
                }
                self.warm(pass.write, pass.reverse);
                // taken out of the table for the pass (put back below) so that the cross-check
                // can borrow `self` mutably
                let Some(ms) = self.maps.remove(&t.map) else {
                    return rep;
                };
                let Some(map) = ms.map.as_ref() else {
                    self.maps.insert(t.map.clone(), ms);
                    return rep;
                };
                let f0 = sys::minflt();
                let r = touch_loop(map, pass);
                let f1 = sys::minflt();
                rep.counters.faults = f1.saturating_sub(f0);
                rep.counters.sigbus = r.sigbus;
                rep.counters.sigsegv = r.sigsegv;
                rep.counters.skipped = r.skipped;
                let bad = r.mismatches + self.cross_check(map, dev, &region, &pass, &r);
                self.maps.insert(t.map.clone(), ms);
                if bad > 0 {
                    let msg = format!(
                        "step {} (line {}): {bad} accesses read back the wrong data (the mapping does not show the BAR's memory at that offset)",
                        i + 1,
                        t.line
                    );
                    warn(&mut self.warnings, msg);
                    self.data_errors += bad;
                    rep.errno = Some("EIO".into());
                }
            }
            Step::Munmap(u) => {
                let Some(ms) = self.maps.get(&u.map) else {
                    rep.errno = Some("EINVAL".into());
                    return rep;
                };
                let len = u.len.resolve(ms.len.saturating_sub(u.offset));
                let (off, name) = (u.offset, u.map.clone());
                let (r, faults) =
                    self.measure(
                        |s| match s.maps.get_mut(&name).and_then(|m| m.map.as_mut()) {
                            Some(mp) => mp.munmap(off, len),
                            None => Err(io::Error::from_raw_os_error(22)),
                        },
                    );
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::Memory(m) => {
                let dev = self.dev_index[&m.device];
                let enable = m.enable;
                let (r, faults) = self.measure(|s| s.devices[dev].set_memory_enable(enable));
                rep.counters.faults = faults;
                match r {
                    Ok(cmd) if (cmd & PCI_COMMAND_MEMORY != 0) != enable => warn(
                        &mut self.warnings,
                        format!(
                            "step {} (line {}): PCI_COMMAND reads {cmd:#06x} after the write",
                            i + 1,
                            m.line
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => errno = Some(e),
                }
            }
            Step::Reset(r) => {
                let dev = self.dev_index[&r.device];
                let (res, faults) = self.measure(|s| s.devices[dev].reset());
                rep.counters.faults = faults;
                errno = res.err();
            }
            Step::Power(p) => {
                let dev = self.dev_index[&p.device];
                let d3 = p.state == PowerState::D3hot;
                let (res, faults) = self.measure(|s| s.devices[dev].set_power(d3));
                rep.counters.faults = faults;
                errno = res.err();
            }
            Step::Mprotect(p) => {
                let prot = match p.prot {
                    ProtSpec::None => libc::PROT_NONE,
                    ProtSpec::Read => libc::PROT_READ,
                    ProtSpec::Write => libc::PROT_READ | libc::PROT_WRITE,
                };
                let (off, lenspec, name) = (p.offset, p.len, p.map.clone());
                let (r, faults) = self.measure(|s| match s.maps.get(&name) {
                    Some(MapState {
                        map: Some(mp), len, ..
                    }) => mp.mprotect(off, lenspec.resolve(len.saturating_sub(off)), prot),
                    _ => Err(io::Error::from_raw_os_error(22)),
                });
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::Madvise(a) => {
                let adv = madv(a.advice);
                let (off, lenspec, name) = (a.offset, a.len, a.map.clone());
                let (r, faults) = self.measure(|s| match s.maps.get_mut(&name) {
                    Some(MapState {
                        map: Some(mp), len, ..
                    }) => mp.madvise_raw(off, lenspec.resolve(len.saturating_sub(off)), adv),
                    _ => Err(io::Error::from_raw_os_error(22)),
                });
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::Mremap(m) => {
                let Some(ms) = self.maps.get(&m.map) else {
                    rep.errno = Some("EINVAL".into());
                    return rep;
                };
                let new_len = m.new_len.unwrap_or(ms.len);
                let place = match m.va {
                    VaPlacement::Kernel => Place::Kernel,
                    VaPlacement::Align { size, skew } => Place::Reserve { align: size, skew },
                    VaPlacement::Congruent { size } => Place::Reserve {
                        align: size,
                        skew: ms.phys.wrapping_add(ms.bar_off) % size,
                    },
                    VaPlacement::Fixed(a) => Place::Fixed(a),
                };
                let name = m.map.clone();
                let (r, faults) = self.measure(|s| match s.maps.get_mut(&name) {
                    Some(MapState {
                        map: Some(mp), len, ..
                    }) => mp.mremap(new_len, place).map(|()| *len = new_len),
                    _ => Err(io::Error::from_raw_os_error(22)),
                });
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::DmaMap(d) => {
                let Some(ms) = self.maps.get(&d.map) else {
                    rep.errno = Some("EINVAL".into());
                    return rep;
                };
                let Some(mp) = ms.map.as_ref() else {
                    // the mmap failed: there is no address to map (the model says EFAULT)
                    rep.errno = Some("EFAULT".into());
                    return rep;
                };
                let len = d.len.resolve(ms.len.saturating_sub(d.offset));
                let vaddr = mp.va().wrapping_add(d.offset);
                let iova = d.iova;
                // `mode` (per_page / batched) is how the kernel walks the range, not an ioctl
                // argument: Linux 6.12 always looks up one page per follow_pfnmap_start.
                let (r, faults) =
                    self.measure(|s| sys::vfio_map_dma(s.vfio.container(), vaddr, iova, len));
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::DmaUnmap(u) => {
                let (iova, len) = (u.iova, u.len);
                let (r, faults) =
                    self.measure(|s| sys::vfio_unmap_dma(s.vfio.container(), iova, len));
                rep.counters.faults = faults;
                errno = r.err();
            }
            Step::ReadProc(r) => {
                let file = r.file;
                let range = r.map.as_ref().map(|name| {
                    let (va, len) = match self.maps.get(name) {
                        Some(MapState {
                            map: Some(mp), len, ..
                        }) => (mp.va(), *len),
                        Some(MapState { len, .. }) => (0, *len),
                        None => (0, 0),
                    };
                    let n = r.len.resolve(len.saturating_sub(r.offset));
                    (va.saturating_add(r.offset), n)
                });
                let (res, faults) = self.measure(|s| read_proc(file, range, &mut s.proc_buf));
                rep.counters.faults = faults;
                errno = res.err();
            }
            Step::Mincore(c) => {
                let (off, lenspec, name) = (c.offset, c.len, c.map.clone());
                let (r, faults) = self.measure(|s| match s.maps.get(&name) {
                    Some(MapState {
                        map: Some(mp), len, ..
                    }) => mp.mincore(
                        off,
                        lenspec.resolve(len.saturating_sub(off)),
                        &mut s.proc_buf,
                    ),
                    _ => Err(io::Error::from_raw_os_error(libc::ENOMEM)),
                });
                rep.counters.faults = faults;
                match r {
                    Ok(pages) => {
                        rep.counters.resident = self.proc_buf[..pages]
                            .iter()
                            .filter(|b| **b & 1 == 1)
                            .count() as u64;
                    }
                    Err(e) => errno = Some(e),
                }
            }
            Step::Expect(_) => {}
            // Run by `run` (fork) or refused up front by `unsupported` (KVM, access).
            Step::Fork(_) | Step::KvmMemslot(_) | Step::GuestTouch(_) | Step::Access(_) => {
                rep.errno = Some("ENOSYS".into());
            }
        }
        if let Some(e) = errno {
            rep.errno = Some(errno_name(&e));
        }
        rep
    }

    /// Compares sampled strides as seen through the mapping with the BAR read by the kernel
    /// (`pread` on the region) and, for writes, with the pattern written. Runs after the
    /// measured window, only on strides that were just accessed (already mapped: no fault).
    fn cross_check(
        &mut self,
        map: &DevMap,
        dev: usize,
        region: &RegionInfo,
        pass: &Pass,
        r: &TouchResult,
    ) -> u64 {
        let mut bad = 0;
        let mut unreadable = None;
        for &off in &r.samples[..r.nsamples] {
            let Access::Done(via_map) = map.read8(off) else {
                continue;
            };
            let bar = pass.bar_off.wrapping_add(off);
            match self.devices[dev].pread_byte(region, bar) {
                Ok(b) => {
                    if b != via_map || (pass.write && b != pattern(bar, pass.salt)) {
                        bad += 1;
                    }
                }
                Err(e) => unreadable = Some(e),
            }
        }
        if let Some(e) = unreadable {
            warn(
                &mut self.warnings,
                format!("could not read the BAR through the region to cross-check: {e}"),
            );
        }
        bad
    }
}

/// The `MADV_*` value of an advice.
fn madv(a: ScAdvice) -> libc::c_int {
    match a {
        ScAdvice::Normal => 0,
        ScAdvice::Random => 1,
        ScAdvice::Sequential => 2,
        ScAdvice::Willneed => 3,
        ScAdvice::Dontneed => 4,
        ScAdvice::Free => 8,
        ScAdvice::Dontfork => 10,
        ScAdvice::Dofork => 11,
        ScAdvice::Hugepage => 14,
        ScAdvice::Nohugepage => 15,
        ScAdvice::Dontdump => 16,
        ScAdvice::Dodump => 17,
        ScAdvice::Wipeonfork => 18,
        ScAdvice::Keeponfork => 19,
        ScAdvice::Cold => 20,
        ScAdvice::Pageout => 21,
        ScAdvice::PopulateRead => 22,
        ScAdvice::PopulateWrite => 23,
        ScAdvice::DontneedLocked => 24,
    }
}

/// The proc buffer: a 4 GiB BAR's pagemap entries (8 MiB) and mincore vector.
const PROC_BUF: usize = 8 << 20;

/// Reads `/proc/self/<file>` into `buf` (whole, or `pagemap`'s entries of `range` = (va, len)
/// with `pread`); `clear_refs` is written "1". Returns the bytes read.
fn read_proc(file: ProcFileSpec, range: Option<(u64, u64)>, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::{Read, Write as _};
    use std::os::unix::fs::FileExt;
    match file {
        ProcFileSpec::ClearRefs => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/clear_refs")?;
            f.write_all(b"1")?;
            Ok(0)
        }
        ProcFileSpec::Pagemap => {
            let (va, len) = range.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            // one entry per page the range touches (pagemap is indexed by page)
            let page = sys::page_size();
            let pages = va.saturating_add(len).div_ceil(page) - va / page;
            let want = (pages * 8) as usize;
            if want > buf.len() {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            let f = std::fs::File::open("/proc/self/pagemap")?;
            let mut done = 0;
            while done < want {
                let n = f.read_at(&mut buf[done..want], (va / page) * 8 + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        }
        _ => {
            let mut f = std::fs::File::open(match file {
                ProcFileSpec::Smaps => "/proc/self/smaps",
                ProcFileSpec::SmapsRollup => "/proc/self/smaps_rollup",
                _ => "/proc/self/numa_maps",
            })?;
            let mut done = 0;
            loop {
                if done == buf.len() {
                    return Err(io::Error::from_raw_os_error(libc::E2BIG));
                }
                let n = f.read(&mut buf[done..])?;
                if n == 0 {
                    return Ok(done);
                }
                done += n;
            }
        }
    }
}

/// Why the probe cannot run `step`, if it cannot: KVM ops (the probe runs no guest) and
/// `access` (its counts are the MMU model's TLB and walk counters, not the kernel's). DMA ops
/// in a forked child run on the container the child inherited, as the model has it.
pub fn unsupported_reason(step: &Step) -> Option<&'static str> {
    model_only(step).map(|why| match why {
        ModelOnly::Kvm => {
            "KVM ops need a VM (/dev/kvm and a vCPU running guest code); the probe runs no guest"
        }
        ModelOnly::Access => {
            "a workload on the MMU model whose TLB and page-walk counts a process cannot read from the kernel"
        }
    })
}

/// The first step the probe cannot perform (see [`unsupported_reason`]).
pub fn unsupported(sc: &Scenario) -> Option<ProbeError> {
    sc.steps.iter().find_map(|s| {
        unsupported_reason(s).map(|why| ProbeError::UnsupportedOp {
            op: s.op(),
            line: s.line(),
            why,
        })
    })
}

/// A forked child: it runs the steps the parent sends it (see [`child_loop`]).
struct ChildProc {
    pid: libc::pid_t,
    /// Step indices, one per line; `exit` ends it.
    cmd: std::fs::File,
    /// One [`ChildResult`] JSON line per step.
    res: io::BufReader<std::fs::File>,
}

/// What a child sends back for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildResult {
    /// The step's report, measured in the child.
    pub report: StepReport,
    /// Warnings the child printed during the step.
    pub warnings: Vec<String>,
    /// Accesses that read back wrong data.
    pub data_errors: u64,
}

impl ChildResult {
    /// The line the child writes (one JSON object, newline-terminated).
    pub fn to_line(&self) -> String {
        let v = serde_json::json!({
            "report": self.report,
            "warnings": self.warnings,
            "data_errors": self.data_errors,
        });
        format!("{v}\n")
    }

    /// Parses a line written by [`ChildResult::to_line`].
    pub fn parse(line: &str) -> Result<ChildResult, String> {
        let mut v: serde_json::Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not JSON: {e}"))?;
        let report = serde_json::from_value::<StepReport>(v["report"].take())
            .map_err(|e| format!("no step report: {e}"))?;
        let warnings = match v["warnings"].take() {
            serde_json::Value::Null => Vec::new(),
            w => serde_json::from_value::<Vec<String>>(w)
                .map_err(|e| format!("bad warnings: {e}"))?,
        };
        let data_errors = match &v["data_errors"] {
            serde_json::Value::Null => 0,
            d => d.as_u64().ok_or("bad data_errors")?,
        };
        Ok(ChildResult {
            report,
            warnings,
            data_errors,
        })
    }
}

/// The child's side: makes its memory its own (so that copy-on-write faults do not land in
/// measured steps), then runs each step index read from `cmd` with its copy of the runner
/// (it inherited the mappings) and writes a [`ChildResult`] line to `res`. Never returns.
fn child_loop(runner: &mut Runner<'_>, cmd: std::fs::File, mut res: std::fs::File) -> ! {
    use std::io::BufRead;
    let _ = sys::unshare_own_memory();
    let mut reader = io::BufReader::new(cmd);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => sys::exit_now(0),
            Ok(_) => {}
        }
        let t = line.trim();
        if t == "exit" {
            sys::exit_now(0);
        }
        let Some((i, step)) = t
            .parse::<usize>()
            .ok()
            .and_then(|i| runner.sc.steps.get(i).map(|s| (i, s)))
        else {
            eprintln!("hugepfn-probe: error: child: bad command {t:?}");
            sys::exit_now(3);
        };
        let (w0, d0) = (runner.warnings.len(), runner.data_errors);
        let report = runner.step(i, step);
        let out = ChildResult {
            report,
            warnings: runner.warnings[w0..].to_vec(),
            data_errors: runner.data_errors - d0,
        };
        if res.write_all(out.to_line().as_bytes()).is_err() {
            sys::exit_now(4);
        }
    }
}

/// A `fork` step: the parent's faults during the fork system call, the child's pipes. The
/// child never returns from here (it runs [`child_loop`]).
fn fork_step(
    runner: &mut Runner<'_>,
    children: &mut HashMap<String, ChildProc>,
    i: usize,
    step: &Step,
) -> (StepReport, Option<ChildProc>) {
    let mut rep = StepReport::for_step(i, step, false);
    let pipes = sys::pipe().and_then(|a| sys::pipe().map(|b| (a, b)));
    let ((cmd_r, cmd_w), (res_r, res_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            rep.errno = Some(errno_name(&e));
            return (rep, None);
        }
    };
    // once per run, before the first fork (see rseq_unregister): if the area stays, the fork
    // step counts the kernel's copy-on-write fault on it
    if let Err(e) = sys::rseq_unregister() {
        warn(
            &mut runner.warnings,
            format!(
                "step {} (line {}): rseq unregister: {e}; a fork may count one fault more",
                i + 1,
                step.line()
            ),
        );
    }
    runner.warm(true, false);
    match sys::fork_measured() {
        Err(e) => {
            rep.errno = Some(errno_name(&e));
            (rep, None)
        }
        Ok(sys::Forked::Child) => {
            sys::die_with_parent();
            // the other children's pipes are the parent's business
            children.clear();
            for m in runner.maps.values_mut().filter_map(|m| m.map.as_mut()) {
                m.after_fork_in_child();
            }
            drop(cmd_w);
            drop(res_r);
            child_loop(runner, cmd_r, res_w)
        }
        Ok(sys::Forked::Parent { pid, faults }) => {
            drop(cmd_r);
            drop(res_w);
            rep.counters.faults = faults;
            // after the measured fork: copy-on-write of our own memory happens now, not in a
            // later step
            let _ = sys::unshare_own_memory();
            let child = ChildProc {
                pid,
                cmd: cmd_w,
                res: io::BufReader::new(res_r),
            };
            (rep, Some(child))
        }
    }
}

/// Sends step `i` to a child and reads its result.
fn dispatch(name: &str, c: &mut ChildProc, i: usize) -> Result<ChildResult, ProbeError> {
    use std::io::BufRead;
    let err = |why: String| ProbeError::Child {
        name: name.to_string(),
        pid: c.pid,
        why,
    };
    c.cmd
        .write_all(format!("{i}\n").as_bytes())
        .map_err(|e| err(format!("sending step {}: {e}", i + 1)))?;
    let mut line = String::new();
    match c.res.read_line(&mut line) {
        Ok(0) => Err(err(format!("exited during step {}", i + 1))),
        Err(e) => Err(err(format!("reading the result of step {}: {e}", i + 1))),
        Ok(_) => ChildResult::parse(&line)
            .map_err(|e| err(format!("result of step {}: {e}: {line:?}", i + 1))),
    }
}

/// Tells every child to exit and reaps it; an abnormal end is a warning.
fn reap(children: HashMap<String, ChildProc>, warnings: &mut Vec<String>) {
    let mut v: Vec<(String, ChildProc)> = children.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut c) in v {
        let _ = c.cmd.write_all(b"exit\n");
        drop(c.cmd);
        match sys::wait_child(c.pid) {
            Ok(sys::ChildExit::Code(0)) => {}
            Ok(how) => warn(
                warnings,
                format!("child process {name:?} (pid {}) ended with {how:?}", c.pid),
            ),
            Err(e) => warn(
                warnings,
                format!("waitpid of child process {name:?} (pid {}): {e}", c.pid),
            ),
        }
    }
}

/// Runs `sc` on the running kernel.
pub fn run(sc: &Scenario, opts: &Options) -> Result<Outcome, ProbeError> {
    if let Some(e) = unsupported(sc) {
        return Err(e);
    }
    let mut warnings = Vec::new();
    let real = resolve_devices(sc, &opts.devices)?;
    let _thp = apply_thp(sc.thp, opts.set_thp)?;
    for d in &real {
        match pci::driver(&d.bdf) {
            Some(drv) if drv == "vfio-pci" => {}
            _ if d.auto || opts.bind => pci::bind_vfio_pci(&d.bdf)?,
            other => {
                return Err(ProbeError::NotVfio {
                    bdf: d.bdf.clone(),
                    driver: other.unwrap_or_else(|| "no driver".into()),
                });
            }
        }
    }
    let bdfs: Vec<String> = real.iter().map(|d| d.bdf.clone()).collect();
    let (vfio, devices) = Vfio::open(&bdfs, opts.iommu)?;
    if opts.trace {
        eprintln!(
            "hugepfn-probe: info: devices {} (vfio-pci, iommu {})",
            bdfs.join(" "),
            vfio.iommu
        );
    }
    let mut dev_index = HashMap::new();
    let mut phys = HashMap::new();
    for (i, (d, spec)) in real.iter().zip(&sc.devices).enumerate() {
        dev_index.insert(d.name.clone(), i);
        let dev = &devices[i];
        let cmd = dev.command().map_err(|source| ProbeError::Vfio {
            what: format!("{}: read PCI_COMMAND", d.bdf),
            source,
        })?;
        if cmd & PCI_COMMAND_MEMORY == 0 {
            dev.set_memory_enable(true)
                .map_err(|source| ProbeError::Vfio {
                    what: format!("{}: enable memory decode", d.bdf),
                    source,
                })?;
            warn(
                &mut warnings,
                format!(
                    "{}: memory decode was off (PCI_COMMAND {cmd:#06x}); turned it on",
                    d.bdf
                ),
            );
        }
        let used: Vec<u8> = sc
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Mmap(m) if m.device == d.name => Some(m.bar),
                _ => None,
            })
            .collect();
        for b in &spec.bars {
            if !used.contains(&b.index) {
                continue;
            }
            let res = pci::bar_resource(&d.bdf, b.index)?;
            let region = dev.bar_region(b.index)?;
            if res.start != b.phys {
                warn(
                    &mut warnings,
                    format!(
                        "device {} BAR{} is at {:#x} on this machine, the scenario says {:#x}: faults are measured at the real address",
                        d.name, b.index, res.start, b.phys
                    ),
                );
            }
            if region.size != b.size {
                warn(
                    &mut warnings,
                    format!(
                        "device {} BAR{} is {} on this machine, the scenario says {}",
                        d.name,
                        b.index,
                        format_size(region.size),
                        format_size(b.size)
                    ),
                );
            }
            phys.insert((i, b.index), (res.start, region));
        }
    }
    sys::install_fault_handler().map_err(|source| ProbeError::Vfio {
        what: "sigaction(SIGBUS/SIGSEGV)".into(),
        source,
    })?;
    if !sys::warm_fault_path().unwrap_or(false) {
        return Err(ProbeError::FaultHandler);
    }
    let warm =
        DevMap::anonymous(16 * 4096, libc::PROT_READ | libc::PROT_WRITE).map_err(|source| {
            ProbeError::Vfio {
                what: "mmap (warm-up buffer)".into(),
                source,
            }
        })?;
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut runner = Runner {
        sc,
        vfio,
        devices,
        dev_index,
        phys,
        maps: HashMap::new(),
        warm,
        salt,
        warnings,
        data_errors: 0,
        proc_buf: vec![1u8; PROC_BUF],
    };
    let mut reports = Vec::new();
    // Per process: counters and the last errno since its previous expect.
    let mut since: HashMap<String, Counters> = HashMap::new();
    let mut last_errno: HashMap<String, String> = HashMap::new();
    let mut children: HashMap<String, ChildProc> = HashMap::new();
    let total = sc.steps.len();
    let mut failure = None;
    for (i, step) in sc.steps.iter().enumerate() {
        if opts.trace {
            eprintln!(
                "hugepfn-probe: trace step={i} of={total} line={} op={}",
                step.line(),
                step.op()
            );
            let _ = io::stderr().flush();
            sys::drain(2);
        }
        let actor = step.process_or_main().to_string();
        let mut rep = match step {
            Step::Expect(_) => StepReport::for_step(i, step, false),
            Step::Fork(f) => {
                let (rep, child) = fork_step(&mut runner, &mut children, i, step);
                if let Some(c) = child {
                    children.insert(f.child.clone(), c);
                }
                rep
            }
            _ if actor == MAIN_PROCESS => runner.step(i, step),
            _ => {
                let Some(c) = children.get_mut(&actor) else {
                    // the parser only accepts forked children; a failed fork leaves none
                    let mut rep = StepReport::for_step(i, step, false);
                    rep.errno = Some("ESRCH".into());
                    reports.push(rep);
                    continue;
                };
                match dispatch(&actor, c, i) {
                    Ok(r) => {
                        runner.warnings.extend(r.warnings);
                        runner.data_errors += r.data_errors;
                        r.report
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        };
        if let Step::Expect(e) = step {
            let now = ExpectNow {
                last_errno: last_errno.remove(&actor),
                ..ExpectNow::default()
            };
            let since_last = since
                .remove(&actor)
                .unwrap_or_else(|| Counters::zero(false));
            // the checks for this kernel: its `on_kernel` entry when it is a modelled one
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .and_then(|r| Kernel::from_release(r.trim()));
            // and of this machine, when the scenario was written for another (the arm64 lab
            // runs the x86-64 scenarios): its `"arm64:KERNEL"` entries
            let here = if cfg!(target_arch = "aarch64") {
                Some(hugepfn_units::arch::Arch::Arm64)
            } else {
                None
            };
            let foreign = here.filter(|a| *a != sc.arch);
            rep.expect = Some(check_expect(&e.spec_on(foreign, kernel), &since_last, &now));
        } else {
            since
                .entry(actor.clone())
                .or_insert_with(|| Counters::zero(false))
                .add(&rep.counters);
            if let Some(e) = &rep.errno {
                last_errno.insert(actor, e.clone());
            }
        }
        reports.push(rep);
    }
    reap(children, &mut runner.warnings);
    if let Some(e) = failure {
        return Err(e);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut report = RunReport::new(sc.name.clone(), format!("kernel {release}"), reports);
    if runner.data_errors > 0 {
        report.ok = false;
    }
    if let Some(f) = &opts.hold {
        hold(f, &mut runner.warnings);
    }
    drop(runner.maps);
    drop(runner.vfio);
    Ok(Outcome {
        report,
        warnings: runner.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_args() {
        assert_eq!(
            parse_device_arg("0000:01:00.0").expect("bdf"),
            (None, "0000:01:00.0".to_string())
        );
        assert_eq!(
            parse_device_arg("gpu=0000:af:00.1").expect("named"),
            (Some("gpu".to_string()), "0000:af:00.1".to_string())
        );
        for bad in [
            "01:00.0",
            "=0000:01:00.0",
            "gpu=",
            "0000:01:00.g",
            "0000-01:00.0",
        ] {
            assert!(parse_device_arg(bad).is_err(), "{bad}");
        }
    }

    /// A 2 GiB mapping `m`, a fork of `c1`, and a touch of `m` in `c1` (steps 0 to 2).
    fn fork_sc() -> String {
        hugepfn_scenario::fixture::bar2_head("2G", "")
            + "[[step]]\nop = \"fork\"\nchild = \"c1\"\n\
               [[step]]\nop = \"touch\"\nmap = \"m\"\nprocess = \"c1\"\n"
    }

    #[test]
    fn child_results_round_trip() {
        let sc = hugepfn_scenario::parse_scenario(&fork_sc(), "t.toml").expect("parses");
        let mut report = StepReport::for_step(2, &sc.steps[2], false);
        report.counters.faults = 2;
        report.counters.sigbus = 1;
        report.errno = Some("EIO".into());
        let r = ChildResult {
            report,
            warnings: vec!["a \"quoted\"\nwarning".into()],
            data_errors: 3,
        };
        let line = r.to_line();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        assert!(line.ends_with('\n'));
        let back = ChildResult::parse(&line).expect("parses back");
        assert_eq!(back, r);
        assert_eq!(back.report.process.as_deref(), Some("c1"));
    }

    #[test]
    fn bad_child_results_are_errors() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"report": {"index": 0}}"#,
            r#"{"report": null, "warnings": []}"#,
        ] {
            assert!(ChildResult::parse(bad).is_err(), "{bad:?}");
        }
        let sc = hugepfn_scenario::parse_scenario(&fork_sc(), "t.toml").expect("parses");
        let ok = ChildResult {
            report: StepReport::for_step(2, &sc.steps[2], false),
            warnings: vec![],
            data_errors: 0,
        };
        let mut v: serde_json::Value = serde_json::from_str(&ok.to_line()).expect("json");
        v["data_errors"] = serde_json::json!(-1);
        assert!(ChildResult::parse(&v.to_string()).is_err());
        v["data_errors"] = serde_json::json!(0);
        v["warnings"] = serde_json::json!([1]);
        assert!(ChildResult::parse(&v.to_string()).is_err());
    }

    #[test]
    fn only_kvm_and_access_are_unsupported() {
        let sc = hugepfn_scenario::parse_scenario(&fork_sc(), "t.toml").expect("parses");
        assert!(unsupported(&sc).is_none());
        let dma_child = format!(
            "{}[[step]]\nop = \"dma_map\"\nmap = \"m\"\niova = \"0x4000000000\"\nprocess = \"c1\"\n",
            fork_sc()
        );
        let sc = hugepfn_scenario::parse_scenario(&dma_child, "t.toml").expect("parses");
        assert!(
            unsupported(&sc).is_none(),
            "DMA in a child runs on the inherited container"
        );
        let kvm = format!(
            "{}[[step]]\nop = \"guest_touch\"\ngpa = \"0\"\nlen = \"4K\"\n",
            fork_sc()
        );
        let sc = hugepfn_scenario::parse_scenario(&kvm, "t.toml").expect("parses");
        let e = unsupported(&sc).expect("refused").to_string();
        assert!(e.contains("guest_touch") && e.contains("no guest"), "{e}");
        let access = format!(
            "{}[[step]]\nop = \"access\"\nmap = \"m\"\npattern = \"random\"\n",
            fork_sc()
        );
        let sc = hugepfn_scenario::parse_scenario(&access, "t.toml").expect("parses");
        let e = unsupported(&sc).expect("refused").to_string();
        assert!(e.contains("access") && e.contains("MMU model"), "{e}");
    }

    #[test]
    fn maps_lines() {
        let l = sys::parse_maps_line(
            "7f12a0000000-7f1320000000 rw-s 20000000000 00:0e 1043   anon_inode:[vfio-device]",
        )
        .expect("parses");
        assert_eq!(
            (l.start, l.end, l.read, l.write, l.private),
            (0x7f12_a000_0000, 0x7f13_2000_0000, true, true, false)
        );
        assert_eq!(l.path, "anon_inode:[vfio-device]");
        let anon = sys::parse_maps_line("7ffd1000-7ffd3000 rw-p 00000000 00:00 0").expect("anon");
        assert!(anon.private && anon.path.is_empty());
        let stack =
            sys::parse_maps_line("7ffc1000-7ffd3000 rw-p 00000000 00:00 0    [stack]").expect("s");
        assert_eq!(stack.path, "[stack]");
        assert!(sys::parse_maps_line("garbage").is_none());
        assert!(sys::parse_maps_line("1000-zz rw-p 0 00:00 0").is_none());
    }

    #[test]
    fn a_forked_child_runs_steps_and_answers() {
        // the fork/pipe/reap machinery without a device: the child echoes step reports
        let (cmd_r, cmd_w) = sys::pipe().expect("pipe");
        let (res_r, res_w) = sys::pipe().expect("pipe");
        let sc = hugepfn_scenario::parse_scenario(&fork_sc(), "t.toml").expect("parses");
        match sys::fork_measured().expect("fork") {
            sys::Forked::Child => {
                drop(cmd_w);
                drop(res_r);
                let _ = sys::unshare_own_memory();
                let mut reader = io::BufReader::new(cmd_r);
                let mut res_w = res_w;
                let mut line = String::new();
                use std::io::BufRead;
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "exit" {
                    let i: usize = line.trim().parse().unwrap_or(0);
                    let mut rep = StepReport::for_step(i, &sc.steps[2], false);
                    rep.counters.faults = i as u64;
                    let out = ChildResult {
                        report: rep,
                        warnings: vec![],
                        data_errors: 0,
                    };
                    let _ = res_w.write_all(out.to_line().as_bytes());
                    line.clear();
                }
                sys::exit_now(0);
            }
            // (the parent's `faults` are not checked here: the test harness's other threads
            // fault too, and RUSAGE_SELF counts the whole process)
            sys::Forked::Parent { pid, .. } => {
                drop(cmd_r);
                drop(res_w);
                let mut c = ChildProc {
                    pid,
                    cmd: cmd_w,
                    res: io::BufReader::new(res_r),
                };
                let r = dispatch("c1", &mut c, 7).expect("answer");
                assert_eq!((r.report.index, r.report.counters.faults), (7, 7));
                let mut children = HashMap::new();
                children.insert("c1".to_string(), c);
                let mut warnings = Vec::new();
                reap(children, &mut warnings);
                assert!(warnings.is_empty(), "{warnings:?}");
            }
        }
    }

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        assert_eq!(
            thp_current("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            thp_current("[always] madvise never").as_deref(),
            Some("always")
        );
        assert_eq!(thp_current("always madvise never"), None);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(&io::Error::from_raw_os_error(22)), "EINVAL");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(95)), "EOPNOTSUPP");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(200)), "errno 200");
    }

    #[test]
    fn pattern_differs_between_pages() {
        let salt = 0x1234;
        let distinct: std::collections::HashSet<u8> =
            (0..64u64).map(|p| pattern(p << 12, salt)).collect();
        assert!(distinct.len() > 32);
    }

    #[test]
    fn touch_loop_counts_skips_and_reads_back() {
        let m = DevMap::anonymous(8 * 4096, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
        let pass = Pass {
            bar_off: 0,
            offset: 4096,
            n: 10, // the last 3 strides are past the end of the mapping
            stride: 4096,
            write: true,
            reverse: true,
            salt: 7,
        };
        let r = touch_loop(&m, pass);
        assert_eq!((r.skipped, r.sigbus, r.sigsegv, r.mismatches), (3, 0, 0, 0));
        assert_eq!(r.nsamples, 7);
        let mut m = m;
        m.munmap(2 * 4096, 4096).expect("munmap");
        let r = touch_loop(
            &m,
            Pass {
                write: false,
                ..pass
            },
        );
        assert_eq!(r.skipped, 4);
        // unmapping outside the mapping is refused
        assert!(m.munmap(7 * 4096, 2 * 4096).is_err());
    }

    #[test]
    fn dontfork_ranges_are_holes_in_a_child() {
        let mut m = DevMap::anonymous(8 * 4096, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
        m.madvise_raw(4096, 3 * 4096, libc::MADV_DONTFORK)
            .expect("dontfork");
        // DOFORK on the middle page leaves two DONTFORK pieces
        m.madvise_raw(2 * 4096, 1, libc::MADV_DOFORK)
            .expect("dofork");
        let live = |m: &DevMap| (0..8).filter(|p| m.is_live(p * 4096)).collect::<Vec<u64>>();
        assert_eq!(live(&m), [0, 1, 2, 3, 4, 5, 6, 7]);
        m.after_fork_in_child();
        assert_eq!(live(&m), [0, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn faults_are_caught_and_counted() {
        sys::install_fault_handler().expect("sigaction");
        let m = DevMap::anonymous(2 * 4096, libc::PROT_NONE).expect("mmap");
        let pass = Pass {
            bar_off: 0,
            offset: 0,
            n: 2,
            stride: 4096,
            write: true,
            reverse: false,
            salt: 1,
        };
        let r = touch_loop(&m, pass);
        assert_eq!((r.sigsegv, r.sigbus, r.nsamples), (2, 0, 0));
        let r = touch_loop(
            &m,
            Pass {
                write: false,
                ..pass
            },
        );
        assert_eq!(r.sigsegv, 2);
    }

    #[test]
    fn sigbus_beyond_end_of_file_is_caught() {
        sys::install_fault_handler().expect("sigaction");
        let path = std::env::temp_dir().join(format!("hugepfn-probe-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        f.set_len(4096).expect("set_len");
        let m = DevMap::map(
            &f,
            0,
            3 * 4096,
            Place::Reserve {
                align: 1 << 21,
                skew: 0,
            },
            true,
        )
        .expect("mmap");
        assert_eq!(m.va() % (1 << 21), 0);
        let _ = std::fs::remove_file(&path);
        let pass = Pass {
            bar_off: 0,
            offset: 0,
            n: 3,
            stride: 4096,
            write: true,
            reverse: false,
            salt: 3,
        };
        let r = touch_loop(&m, pass);
        // page 0 is inside the 4 KiB file, pages 1 and 2 are past its end
        assert_eq!(
            (r.sigbus, r.sigsegv, r.mismatches, r.nsamples),
            (2, 0, 0, 1)
        );
    }
}
