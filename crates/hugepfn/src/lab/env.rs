//! The lab's host side: QEMU, a Debian kernel (downloaded and unpacked, never installed),
//! busybox, and the static probe. Downloads are cached in the lab directory
//! (default `/var/tmp/hugepfn-lab`) and reused by later runs without asking apt again.
//!
//! The arm64 lab takes its packages (Debian's arm64 kernels, busybox-static:arm64) from the
//! same mirror through private apt lists in `<lab dir>/apt-arm64` (no `dpkg
//! --add-architecture`: nothing on the host changes but `qemu-system-arm` and the cross
//! toolchain installed), and cross-builds the probe for aarch64.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{LabArch, LabError};

/// What a guest boot needs.
#[derive(Debug, Clone)]
pub struct LabEnv {
    /// The machine.
    pub arch: LabArch,
    /// `qemu-system-x86_64` or `qemu-system-aarch64`.
    pub qemu: PathBuf,
    /// The Debian kernel package name, e.g. `linux-image-6.12.95+deb12-amd64-unsigned`.
    pub kernel_package: String,
    /// `uname -r` of that kernel.
    pub kernel_release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The static probe.
    pub probe: PathBuf,
    /// A static `hugepfn` for `inspect` inside the guest (next to the probe), if there is one.
    pub inspect: Option<PathBuf>,
    /// Where the decompressed modules are cached.
    pub module_cache: PathBuf,
    /// A kernel built by `hugepfn lab kernel build`: VFIO built in, no modules to load.
    pub builtin_vfio: bool,
}

/// Knobs of the environment.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// The lab directory (cache).
    pub dir: PathBuf,
    /// A specific kernel package instead of the newest cached / available 6.12.
    pub kernel_package: Option<String>,
    /// A prebuilt static probe instead of building it from this workspace.
    pub probe: Option<PathBuf>,
    /// Never run `apt-get install` / change apt sources.
    pub no_install: bool,
    /// Boot our build of 7.3.4 (`hugepfn lab kernel build`), patched or not, instead of a
    /// Debian package; built on first use.
    pub built: Option<bool>,
    /// The machine.
    pub arch: LabArch,
}

impl LabArch {
    fn qemu_binary(self) -> &'static str {
        match self {
            LabArch::X86_64 => "qemu-system-x86_64",
            LabArch::Arm64 | LabArch::Arm64_16k => "qemu-system-aarch64",
        }
    }

    fn qemu_package(self) -> &'static str {
        match self {
            LabArch::X86_64 => "qemu-system-x86",
            LabArch::Arm64 | LabArch::Arm64_16k => "qemu-system-arm",
        }
    }

    /// The Rust target the static probe is built for.
    pub(crate) fn rust_target(self) -> &'static str {
        match self {
            LabArch::X86_64 => "x86_64-unknown-linux-gnu",
            LabArch::Arm64 | LabArch::Arm64_16k => "aarch64-unknown-linux-gnu",
        }
    }

    /// ELF `e_machine`.
    fn elf_machine(self) -> u16 {
        match self {
            LabArch::X86_64 => 0x3e,
            LabArch::Arm64 | LabArch::Arm64_16k => 0xb7,
        }
    }
}

fn log(msg: &str) {
    eprintln!("lab: {msg}");
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Runs a command; its stdout on success, a [`LabError::Command`] with the tail of stderr on
/// failure.
pub(crate) fn run(cmd: &mut Command) -> Result<String, LabError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(io_err(format!("cannot start {shown}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
}

fn apt_sources() -> Vec<(PathBuf, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "list" || e == "sources")
                || p.ends_with("sources.list")
        })
        .filter_map(|p| fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect()
}

/// The mirror URI this machine uses for Debian (`http://deb.debian.org/debian`).
fn debian_mirror(sources: &[(PathBuf, String)]) -> Option<String> {
    sources.iter().find_map(|(_, text)| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace())
            .map(|w| w.trim_end_matches('/'))
            .find(|w| w.contains("://") && w.ends_with("/debian"))
            .map(str::to_string)
    })
}

/// Adds `suite` (`bookworm-backports`, `trixie-backports`) to apt's sources, on the Debian
/// mirror this machine is configured with, if no source has it yet. Returns whether anything
/// changed (the caller then runs `apt-get update`).
fn ensure_suite(opts: &EnvOptions, suite: &str) -> Result<bool, LabError> {
    let sources = apt_sources();
    let has = |t: &str| {
        t.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace())
            .any(|w| w == suite)
    };
    if sources.iter().any(|(_, t)| has(t)) {
        return Ok(false);
    }
    if opts.no_install || !is_root() {
        return Ok(false);
    }
    let Some(uri) = debian_mirror(&sources) else {
        return Ok(false);
    };
    let path = format!("/etc/apt/sources.list.d/hugepfn-lab-{suite}.sources");
    log(&format!("adding {suite} ({uri}) to apt: {path}"));
    fs::write(
        &path,
        format!(
            "Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .map_err(io_err(format!("write {path}")))?;
    Ok(true)
}

/// `<codename>-backports` (where this machine's QEMU and the 6.12.95 kernel come from).
fn ensure_backports(opts: &EnvOptions) -> Result<bool, LabError> {
    match codename() {
        Some(code) => ensure_suite(opts, &format!("{code}-backports")),
        None => Ok(false),
    }
}

fn apt_update() -> Result<(), LabError> {
    log("apt-get update");
    run(Command::new("apt-get").args(["update", "-q"])).map(|_| ())
}

fn apt_install(pkgs: &[String], target: Option<&str>) -> Result<(), LabError> {
    log(&format!("apt-get install {}", pkgs.join(" ")));
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ]);
    if let Some(t) = target {
        c.args(["-t", t]);
    }
    c.args(pkgs);
    run(&mut c).map(|_| ())
}

fn dpkg_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}|${Version}", pkg])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, ver) = s.split_once('|')?;
    (status.contains("install ok installed") && !ver.is_empty()).then(|| ver.to_string())
}

/// QEMU: on PATH, or installed with apt (qemu-system-x86 or qemu-system-arm at the version of
/// an installed qemu-system-common or qemu-utils, so that they match; from backports when
/// that one is).
fn ensure_qemu(opts: &EnvOptions, updated: &mut bool) -> Result<PathBuf, LabError> {
    let (bin, base) = (opts.arch.qemu_binary(), opts.arch.qemu_package());
    if let Some(q) = which(bin) {
        return Ok(q);
    }
    if opts.no_install {
        return Err(LabError::Missing {
            what: bin.into(),
            hint: format!("install {base} (or run without --no-install, as root)"),
        });
    }
    if !is_root() {
        return Err(LabError::Missing {
            what: bin.into(),
            hint: format!("run `hugepfn lab setup` as root, or apt-get install {base}"),
        });
    }
    ensure_backports(opts)?;
    if !*updated {
        apt_update()?;
        *updated = true;
    }
    let (pkg, target) =
        match dpkg_version("qemu-system-common").or_else(|| dpkg_version("qemu-utils")) {
            Some(v) => {
                let t = v
                    .contains("bpo")
                    .then(|| codename().map(|c| format!("{c}-backports")))
                    .flatten();
                (format!("{base}={v}"), t)
            }
            None => (base.to_string(), None),
        };
    apt_install(&[pkg], target.as_deref())?;
    which(bin).ok_or_else(|| LabError::Missing {
        what: bin.into(),
        hint: format!("apt-get install {base} did not provide it"),
    })
}

fn ensure_tool(cmd: &str, pkg: &str, opts: &EnvOptions) -> Result<PathBuf, LabError> {
    if let Some(p) = which(cmd) {
        return Ok(p);
    }
    if opts.no_install || !is_root() {
        return Err(LabError::Missing {
            what: cmd.into(),
            hint: format!("apt-get install {pkg}"),
        });
    }
    apt_install(&[pkg.to_string()], None)?;
    which(cmd).ok_or_else(|| LabError::Missing {
        what: cmd.into(),
        hint: format!("apt-get install {pkg}"),
    })
}

/// `6.12.95` of `linux-image-6.12.95+deb12-amd64-unsigned`, as numbers.
fn kernel_version(pkg: &str) -> Option<Vec<u64>> {
    let rest = pkg.strip_prefix("linux-image-")?;
    let ver: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v: Vec<u64> = ver.split('.').filter_map(|p| p.parse().ok()).collect();
    (v.len() >= 2).then_some(v)
}

/// The kernel packages the lab accepts by default: Debian's unsigned amd64 6.12.y images (the
/// model reproduces 6.12's behaviour; another series must be chosen explicitly).
fn default_kernel_candidate(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64-unsigned"))
        .is_some_and(|ver| !ver.contains('-'))
        && kernel_version(name).is_some_and(|v| v[0] == 6 && v[1] == 12)
}

/// The kernel the scenarios' `lab-*` counts were measured on (kernel-lab recipe): the default,
/// so that a newer 6.12.y in the archive does not silently change what is compared. Newer
/// releases are compared with `--kernel-package` (6.12.117 behaves differently, see
/// docs/lab.md).
pub const DEFAULT_KERNEL: &str = "linux-image-6.12.95+deb12-amd64-unsigned";

fn newest(names: impl Iterator<Item = String>) -> Option<String> {
    names
        .filter(|n| default_kernel_candidate(n))
        .max_by_key(|n| kernel_version(n))
}

/// [`DEFAULT_KERNEL`] if apt has it, else the newest 6.12 apt has.
fn search_kernel() -> Result<Option<String>, LabError> {
    let out = run(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.12\..*-amd64-unsigned$",
    ]))?;
    let names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if names.iter().any(|n| n == DEFAULT_KERNEL) {
        return Ok(Some(DEFAULT_KERNEL.to_string()));
    }
    Ok(newest(names.into_iter()))
}

/// `apt-get download` + `dpkg-deb -x` of `pkg` into `dir/<pkg>/root` (cached).
pub(crate) fn fetch_unpack(dir: &Path, pkg: &str) -> Result<PathBuf, LabError> {
    fetch_unpack_with(dir, pkg, &[])
}

/// [`fetch_unpack`] with apt options (the arm64 lab's private lists, [`arm64_apt`]).
fn fetch_unpack_with(dir: &Path, pkg: &str, apt: &[String]) -> Result<PathBuf, LabError> {
    let home = dir.join("pkgs").join(pkg.replace(':', "_"));
    let root = home.join("root");
    if home.join(".unpacked").exists() {
        return Ok(root);
    }
    fs::create_dir_all(&home).map_err(io_err(format!("mkdir {}", home.display())))?;
    let has_deb = |h: &Path| {
        fs::read_dir(h).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
    };
    let deb = match has_deb(&home) {
        Some(d) => d,
        None => {
            log(&format!("apt-get download {pkg}"));
            run(Command::new("apt-get")
                .args(apt)
                .args(["download", "-q", pkg])
                .current_dir(&home))?;
            has_deb(&home).ok_or_else(|| LabError::Missing {
                what: format!("{pkg} .deb"),
                hint: "apt-get download produced no file".into(),
            })?
        }
    };
    let _ = fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::write(home.join(".unpacked"), b"").map_err(io_err("write .unpacked"))?;
    Ok(root)
}

/// [`DEFAULT_KERNEL`] if it is unpacked in the cache, else the newest 6.12 there.
fn cached_kernel(dir: &Path) -> Option<String> {
    if dir
        .join("pkgs")
        .join(DEFAULT_KERNEL)
        .join(".unpacked")
        .exists()
    {
        return Some(DEFAULT_KERNEL.to_string());
    }
    let rd = fs::read_dir(dir.join("pkgs")).ok()?;
    newest(
        rd.flatten()
            .filter(|e| e.path().join(".unpacked").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned()),
    )
}

fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("crates/hugepfn-probe/Cargo.toml")
        .exists()
        .then(|| root.canonicalize().unwrap_or(root))
}

/// The ELF file's `e_machine` (0x3e x86-64, 0xb7 aarch64).
fn elf_machine(path: &Path) -> Result<u16, LabError> {
    let b = fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    b.get(0x12..0x14)
        .filter(|_| b.starts_with(b"\x7fELF"))
        .map(|m| u16::from_le_bytes([m[0], m[1]]))
        .ok_or_else(|| LabError::Missing {
            what: format!("{} as an ELF file", path.display()),
            hint: "pass a static hugepfn-probe with --probe / --probe-arm64".into(),
        })
}

/// True when the ELF file has no PT_INTERP (statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool, LabError> {
    let b = fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let bad = || LabError::Missing {
        what: format!("{} as a 64-bit ELF file", path.display()),
        hint: "pass a static x86_64 hugepfn-probe with --probe".into(),
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Err(bad());
    }
    let u16at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64at = |o: usize| {
        b.get(o..o + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    let phoff = u64at(0x20).ok_or_else(bad)? as usize;
    let phentsize = usize::from(u16at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let ty = u32at(phoff + i * phentsize).ok_or_else(bad)?;
        if ty == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// The aarch64 cross toolchain and Rust target, installed if missing (as root).
fn ensure_cross_aarch64(opts: &EnvOptions) -> Result<(), LabError> {
    ensure_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", opts)?;
    if !Path::new("/usr/aarch64-linux-gnu/lib/libc.a").exists() {
        if opts.no_install || !is_root() {
            return Err(LabError::Missing {
                what: "the static aarch64 glibc (/usr/aarch64-linux-gnu/lib/libc.a)".into(),
                hint: "apt-get install libc6-dev-arm64-cross".into(),
            });
        }
        apt_install(&["libc6-dev-arm64-cross".to_string()], None)?;
    }
    let installed =
        run(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed
        .lines()
        .any(|l| l.trim() == LabArch::Arm64.rust_target())
    {
        if opts.no_install {
            return Err(LabError::Missing {
                what: "the Rust target aarch64-unknown-linux-gnu".into(),
                hint: "rustup target add aarch64-unknown-linux-gnu".into(),
            });
        }
        log("rustup target add aarch64-unknown-linux-gnu");
        run(Command::new("rustup").args(["target", "add", LabArch::Arm64.rust_target()]))?;
    }
    Ok(())
}

/// Builds the probe from this workspace, static (glibc, `+crt-static`, for an explicit target
/// so that host artifacts are not rebuilt): for x86-64 with a static `hugepfn` beside it
/// (inspect in the guest), linked by aarch64-linux-gnu-gcc for aarch64.
fn build_probe(opts: &EnvOptions) -> Result<PathBuf, LabError> {
    if opts.arch.machine() == LabArch::Arm64 {
        ensure_cross_aarch64(opts)?;
    }
    let root = workspace_root().ok_or_else(|| LabError::Missing {
        what: "the hugepfn workspace (to build hugepfn-probe)".into(),
        hint: "pass a static probe binary with --probe".into(),
    })?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let triple = opts.arch.rust_target();
    let env_prefix = format!("CARGO_TARGET_{}", triple.to_uppercase().replace('-', "_"));
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "-q",
        "-p",
        "hugepfn-probe",
        "-p",
        "hugepfn",
    ]);
    log(&format!(
        "cargo build --release -p hugepfn-probe -p hugepfn --target {triple} (static; hugepfn for inspect in the guest{})",
        match opts.arch {
            LabArch::X86_64 => "",
            LabArch::Arm64 | LabArch::Arm64_16k => ", linked by aarch64-linux-gnu-gcc",
        }
    ));
    if opts.arch.machine() == LabArch::Arm64 {
        cmd.env(format!("{env_prefix}_LINKER"), "aarch64-linux-gnu-gcc");
    }
    run(cmd
        .args(["--target", triple])
        .env(
            format!("{env_prefix}_RUSTFLAGS"),
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(&root))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join(format!("{triple}/release/hugepfn-probe")))
}

/// Apt options for the arm64 lab's private package lists in `<lab dir>/apt-arm64`: the
/// mirror this machine is configured with, its bookworm and trixie suites (and their
/// backports), architecture arm64. `apt-get update` runs on them once (and again with
/// `refresh`, when a package is not found).
fn arm64_apt(opts: &EnvOptions, refresh: bool) -> Result<Vec<String>, LabError> {
    let home = opts.dir.join("apt-arm64");
    let lists = home.join("lists");
    fs::create_dir_all(lists.join("partial"))
        .map_err(io_err(format!("mkdir {}", lists.display())))?;
    let sources = home.join("sources.list");
    let apt: Vec<String> = [
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "Dir::Etc::sourceparts=-".into(),
        format!("Dir::State::Lists={}", lists.display()),
        "APT::Architectures::=arm64".into(),
        "APT::Architecture=arm64".into(),
        "Dir::Cache::pkgcache=".into(),
        "Dir::Cache::srcpkgcache=".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    let stamp = home.join(".updated");
    if stamp.exists() && !refresh {
        return Ok(apt);
    }
    let mirror = debian_mirror(&apt_sources()).ok_or_else(|| LabError::Missing {
        what: "a Debian mirror in apt's sources (for the arm64 packages)".into(),
        hint: "configure apt with a Debian mirror".into(),
    })?;
    let text: String = ["trixie", "trixie-backports", "bookworm", "bookworm-backports"]
        .iter()
        .map(|suite| {
            format!(
                "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"
            )
        })
        .collect();
    fs::write(&sources, text).map_err(io_err(format!("write {}", sources.display())))?;
    log(&format!(
        "apt-get update (arm64 lists in {})",
        lists.display()
    ));
    run(Command::new("apt-get").args(&apt).args(["update", "-q"]))?;
    fs::write(&stamp, b"").map_err(io_err(format!("write {}", stamp.display())))?;
    Ok(apt)
}

/// Whether apt (or the cache) has `pkg`; if not, adds the suite the modelled kernel of that
/// package comes from ([`hugepfn_kernels::Kernel::debian_suite`]) and updates apt once.
pub(crate) fn ensure_package_known(
    opts: &EnvOptions,
    pkg: &str,
    updated: &mut bool,
) -> Result<(), LabError> {
    if opts.dir.join("pkgs").join(pkg).join(".unpacked").exists() {
        return Ok(());
    }
    let known = || {
        Command::new("apt-cache")
            .args(["show", "-q", pkg])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    if known() {
        return Ok(());
    }
    let suite = hugepfn_kernels::Kernel::from_package(pkg).and_then(|k| k.debian_suite());
    let changed = match suite {
        Some(s) => ensure_suite(opts, s)?,
        None => false,
    };
    if (changed || !*updated) && is_root() && !opts.no_install {
        apt_update()?;
        *updated = true;
    }
    if known() {
        Ok(())
    } else {
        Err(LabError::Missing {
            what: format!("the Debian package {pkg}"),
            hint: match suite {
                Some(s) => {
                    format!("apt has no {pkg}: add {s} to apt's sources (the lab does so as root)")
                }
                None => "check the name with apt-cache search linux-image".into(),
            },
        })
    }
}

/// The `Depends:` of a downloaded package (first alternative of each, without versions).
fn package_depends(dir: &Path, pkg: &str) -> Result<Vec<String>, LabError> {
    let home = dir.join("pkgs").join(pkg);
    let deb = fs::read_dir(&home)
        .map_err(io_err(format!("read {}", home.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| LabError::Missing {
            what: format!("{pkg} .deb in {}", home.display()),
            hint: "delete the cache entry and retry".into(),
        })?;
    let out = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"))?;
    Ok(parse_depends(&out))
}

fn parse_depends(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The release, bzImage and module directory in unpacked packages: `lib/modules/REL` or
/// `usr/lib/modules/REL` with a `kernel/` tree; `boot/vmlinuz-REL` or
/// `usr/lib/modules/REL/vmlinuz` (Debian's packaging since 6.16 splits the image into
/// `linux-binary-…` and the modules into `linux-modules-…`).
fn locate_kernel(roots: &[PathBuf]) -> Option<(String, PathBuf, PathBuf)> {
    let bases = ["lib/modules", "usr/lib/modules"];
    let (release, modules) = roots.iter().find_map(|r| {
        bases.iter().find_map(|b| {
            fs::read_dir(r.join(b)).ok()?.flatten().find_map(|e| {
                let p = e.path();
                p.join("kernel")
                    .is_dir()
                    .then(|| (e.file_name().to_string_lossy().into_owned(), p))
            })
        })
    })?;
    let vmlinuz = roots.iter().find_map(|r| {
        [
            r.join(format!("boot/vmlinuz-{release}")),
            r.join(format!("usr/lib/modules/{release}/vmlinuz")),
            r.join(format!("lib/modules/{release}/vmlinuz")),
        ]
        .into_iter()
        .find(|p| p.is_file())
    })?;
    Some((release, vmlinuz, modules))
}

/// Downloads and unpacks a kernel package, and the `linux-binary-…` / `linux-modules-…` it
/// depends on when it is Debian's newer meta package; returns (release, bzImage, modules).
fn unpack_kernel(
    dir: &Path,
    pkg: &str,
    apt: &[String],
) -> Result<(String, PathBuf, PathBuf), LabError> {
    let mut roots = vec![fetch_unpack_with(dir, pkg, apt)?];
    if locate_kernel(&roots).is_none() {
        for d in package_depends(dir, pkg)? {
            if d.starts_with("linux-binary-") || d.starts_with("linux-modules-") {
                roots.push(fetch_unpack_with(dir, &d, apt)?);
            }
        }
    }
    locate_kernel(&roots).ok_or_else(|| LabError::Missing {
        what: format!("a bzImage and modules in {pkg} (and its linux-binary / linux-modules)"),
        hint: "the kernel package looks incomplete; delete its cache entry".into(),
    })
}

/// A static `hugepfn` next to the probe (built with it) for the guest's architecture, for
/// `inspect` in the guest.
fn inspect_next_to(probe: &Path, arch: LabArch) -> Option<PathBuf> {
    let p = probe.with_file_name("hugepfn");
    (p.is_file()
        && is_static_elf(&p).unwrap_or(false)
        && elf_machine(&p).is_ok_and(|m| m == arch.elf_machine()))
    .then_some(p)
}

/// The static busybox (downloaded) and the static probe (given, or built from this workspace).
fn busybox_and_probe(
    opts: &EnvOptions,
    build: bool,
    apt: &[String],
) -> Result<(PathBuf, PathBuf), LabError> {
    let bbroot = match opts.arch {
        LabArch::X86_64 => fetch_unpack(&opts.dir, "busybox-static")?,
        LabArch::Arm64 | LabArch::Arm64_16k => {
            fetch_unpack_with(&opts.dir, "busybox-static:arm64", apt)?
        }
    };
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| bbroot.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Missing {
            what: "busybox in the busybox-static package".into(),
            hint: "delete the cache entry and retry".into(),
        })?;
    let probe = match &opts.probe {
        Some(p) => p.clone(),
        None if build => build_probe(opts)?,
        None => PathBuf::from("hugepfn-probe"),
    };
    if build && !is_static_elf(&probe)? {
        return Err(LabError::Missing {
            what: format!("a static probe ({} is dynamically linked)", probe.display()),
            hint: format!(
                "build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target {}",
                opts.arch.rust_target()
            ),
        });
    }
    if build && elf_machine(&probe)? != opts.arch.elf_machine() {
        return Err(LabError::Missing {
            what: format!(
                "a probe for {:?} ({} is for another machine)",
                opts.arch,
                probe.display()
            ),
            hint: format!("build it with --target {}", opts.arch.rust_target()),
        });
    }
    Ok((busybox, probe))
}

/// Everything ready for a boot; downloads / installs what is missing (see the module docs).
pub fn prepare(opts: &EnvOptions, build: bool) -> Result<LabEnv, LabError> {
    fs::create_dir_all(&opts.dir).map_err(io_err(format!("mkdir {}", opts.dir.display())))?;
    let mut updated = false;
    let qemu = ensure_qemu(opts, &mut updated)?;
    for (cmd, pkg) in [("xz", "xz-utils"), ("dpkg-deb", "dpkg"), ("apt-get", "apt")] {
        ensure_tool(cmd, pkg, opts)?;
    }
    if opts.arch.machine() == LabArch::Arm64 {
        return prepare_arm64(opts, build, qemu);
    }
    if let Some(patched) = opts.built {
        let b = super::build::build(opts, None, !patched)?;
        let (busybox, probe) = busybox_and_probe(opts, build, &[])?;
        return Ok(LabEnv {
            arch: opts.arch,
            qemu,
            kernel_package: format!(
                "linux-source-7.3 built {} ({})",
                if patched {
                    "with kernel-patches/"
                } else {
                    "without patches"
                },
                b.key
            ),
            kernel_release: b.release,
            vmlinuz: b.bzimage,
            modules: PathBuf::new(),
            busybox,
            inspect: inspect_next_to(&probe, opts.arch),
            probe,
            module_cache: opts.dir.join("kbuild").join("no-modules"),
            builtin_vfio: true,
        });
    }
    let default_cached = opts
        .dir
        .join("pkgs")
        .join(DEFAULT_KERNEL)
        .join(".unpacked")
        .exists();
    let pkg = match &opts.kernel_package {
        Some(p) => {
            ensure_package_known(opts, p, &mut updated)?;
            p.clone()
        }
        None if default_cached => DEFAULT_KERNEL.to_string(),
        None => match search_kernel().ok().flatten() {
            Some(p) if p == DEFAULT_KERNEL => p,
            found => {
                // the default is not in apt's lists: add backports / update once, then settle
                // for what apt or the cache has
                let changed = ensure_backports(opts)?;
                if (changed || !updated) && is_root() && !opts.no_install {
                    apt_update()?;
                }
                search_kernel()
                    .ok()
                    .flatten()
                    .or(found)
                    .or_else(|| cached_kernel(&opts.dir))
                    .ok_or_else(|| LabError::Missing {
                        what: "a Debian linux-image-6.12.*-amd64-unsigned package".into(),
                        hint: "enable bookworm-backports (or run as root so the lab adds it)"
                            .into(),
                    })?
            }
        },
    };
    packaged_env(opts, build, qemu, &pkg, &[])
}

/// The lab of a Debian kernel package `pkg` (fetched with the apt options `apt`): unpacked,
/// with busybox, the probe and (if built) a static `hugepfn` for inspect.
fn packaged_env(
    opts: &EnvOptions,
    build: bool,
    qemu: PathBuf,
    pkg: &str,
    apt: &[String],
) -> Result<LabEnv, LabError> {
    let (release, vmlinuz, modules) = unpack_kernel(&opts.dir, pkg, apt)?;
    let (busybox, probe) = busybox_and_probe(opts, build, apt)?;
    Ok(LabEnv {
        arch: opts.arch,
        qemu,
        kernel_package: pkg.to_string(),
        kernel_release: release,
        vmlinuz,
        modules,
        busybox,
        inspect: inspect_next_to(&probe, opts.arch),
        probe,
        module_cache: opts.dir.join("pkgs").join(pkg).join("decompressed"),
        builtin_vfio: false,
    })
}

/// [`prepare`] for the arm64 lab: Debian's arm64 kernel package (`opts.kernel_package`), its
/// busybox-static, both from the private arm64 lists ([`arm64_apt`]); the cross-built probe.
fn prepare_arm64(opts: &EnvOptions, build: bool, qemu: PathBuf) -> Result<LabEnv, LabError> {
    let pkg = opts.kernel_package.clone().ok_or_else(|| {
        LabError::Input("the arm64 lab boots Debian's arm64 kernels: name one with --kernel".into())
    })?;
    let cached = opts.dir.join("pkgs").join(&pkg).join(".unpacked").exists();
    let mut apt = arm64_apt(opts, false)?;
    let known = |apt: &[String]| {
        Command::new("apt-cache")
            .args(apt)
            .args(["show", "-q", &pkg])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    if !cached && !known(&apt) {
        apt = arm64_apt(opts, true)?;
        if !known(&apt) {
            return Err(LabError::Missing {
                what: format!("the Debian arm64 package {pkg}"),
                hint: "the mirror's trixie / trixie-backports lists (lab dir apt-arm64/) do not have it".into(),
            });
        }
    }
    packaged_env(opts, build, qemu, &pkg, &apt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_are_ordered_by_version() {
        assert_eq!(
            kernel_version("linux-image-6.12.95+deb12-amd64-unsigned"),
            Some(vec![6, 12, 95])
        );
        let n = newest(
            [
                "linux-image-6.12.9+deb12-amd64-unsigned",
                "linux-image-6.12.95+deb12-amd64-unsigned",
                "linux-image-6.16.3+deb13-amd64-unsigned",
                "linux-image-6.12.99+deb12-cloud-amd64-unsigned",
                "linux-image-6.12.96+deb12-amd64",
            ]
            .into_iter()
            .map(String::from),
        );
        assert_eq!(
            n.as_deref(),
            Some("linux-image-6.12.95+deb12-amd64-unsigned")
        );
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let s = vec![(
            PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
            "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n".to_string(),
        )];
        assert_eq!(
            debian_mirror(&s).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let s = vec![(
            PathBuf::from("/etc/apt/sources.list"),
            "deb http://ftp.de.debian.org/debian/ bookworm main\n".to_string(),
        )];
        assert_eq!(
            debian_mirror(&s).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
    }

    #[test]
    fn this_test_binary_is_an_elf() {
        let me = std::env::current_exe().expect("exe");
        // test binaries are dynamically linked by default
        assert!(!is_static_elf(&me).expect("elf"));
    }
}
