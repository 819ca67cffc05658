//! `hugepfn lab kernel build`: Linux 7.3.4 from Debian's `linux-source-7.3` (downloaded with apt
//! and unpacked, never installed), our patches from `kernel-patches/` applied, a minimal config
//! with VFIO, IOMMUFD and the Intel IOMMU built in (`lab/kernel.config`), built with every core.
//!
//! Builds are cached in `<lab-dir>/kbuild/<label>-<key>/`, where the key hashes the source
//! package, the config fragment and the patches: a change to any of them builds anew, the same
//! inputs reuse the bzImage. The unpatched build (`--base-only`, label `base`) is the control: it
//! must reproduce Debian's 7.3.4, bugs included, so that the patches are shown to be what changes
//! behaviour (docs/kernel-bugs.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LabError;
use super::env::{self, EnvOptions};

/// The source package and the release it must hold.
const SOURCE_PACKAGE: &str = "linux-source-7.3";
const SOURCE_VERSION: (u32, u32, u32) = (7, 3, 4);

/// A kernel built for the lab.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    /// The build tree.
    pub dir: PathBuf,
    /// `arch/x86/boot/bzImage`.
    pub bzimage: PathBuf,
    /// `uname -r` (`7.3.4-hugepfn`, `7.3.4-base`).
    pub release: String,
    /// Whether our patches are applied.
    pub patched: bool,
    /// The cache key.
    pub key: String,
}

fn log(msg: &str) {
    eprintln!("lab: {msg}");
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

/// FNV-1a, 64 bits: a stable hash for the cache key (std's hasher may change between releases).
fn fnv(acc: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(acc, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The repository's `lab/kernel.config` and `kernel-patches/`.
fn repo_file(rel: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The patches in `dir`, by name (`*.patch`).
pub fn patch_files(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(format!("read {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    v.sort();
    Ok(v)
}

/// The `CONFIG_X=y|n|N` lines of the fragment, as `scripts/config` arguments.
fn config_args(fragment: &str) -> Vec<String> {
    let mut args = Vec::new();
    for l in fragment.lines() {
        let Some(rest) = l.trim().strip_prefix("CONFIG_") else {
            continue;
        };
        let Some((name, val)) = rest.split_once('=') else {
            continue;
        };
        match val {
            "y" => args.extend(["--enable".to_string(), name.to_string()]),
            "n" => args.extend(["--disable".to_string(), name.to_string()]),
            v if v.parse::<u64>().is_ok() => {
                args.extend(["--set-val".to_string(), name.to_string(), v.to_string()])
            }
            _ => {}
        }
    }
    args
}

fn have(cmd: &str) -> bool {
    env::which(cmd).is_some()
}

/// The build tools (Debian packages), installed with apt when missing and allowed.
fn ensure_build_deps(opts: &EnvOptions) -> Result<(), LabError> {
    let need = [
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("cpio", "cpio"),
    ];
    let mut pkgs: Vec<String> = need
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| p.to_string())
        .collect();
    for (header, pkg) in [
        ("/usr/include/gelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ] {
        if !Path::new(header).exists() {
            pkgs.push(pkg.into());
        }
    }
    if pkgs.is_empty() {
        return Ok(());
    }
    if opts.no_install {
        return Err(LabError::Missing {
            what: pkgs.join(", "),
            hint: "apt-get install them (the kernel build needs them)".into(),
        });
    }
    log(&format!("apt-get install {}", pkgs.join(" ")));
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&pkgs);
    env::run(&mut c).map(|_| ())
}

/// Builds (or finds in the cache) Linux 7.3.4 for the lab, with the patches of `patches`
/// unless `base_only`.
pub fn build(
    opts: &EnvOptions,
    patches: Option<&Path>,
    base_only: bool,
) -> Result<BuiltKernel, LabError> {
    let config = repo_file("lab/kernel.config");
    let fragment =
        fs::read_to_string(&config).map_err(io_err(format!("read {}", config.display())))?;
    let patch_dir = patches.map_or_else(|| repo_file("kernel-patches"), Path::to_path_buf);
    let patches = if base_only {
        Vec::new()
    } else {
        patch_files(&patch_dir)?
    };
    let label = if base_only { "base" } else { "hugepfn" };
    // the key: package, fragment, patches (names and contents), label
    let mut h = fnv(0xcbf2_9ce4_8422_2325, SOURCE_PACKAGE.as_bytes());
    h = fnv(h, fragment.as_bytes());
    h = fnv(h, label.as_bytes());
    for p in &patches {
        h = fnv(h, p.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
        h = fnv(
            h,
            &fs::read(p).map_err(io_err(format!("read {}", p.display())))?,
        );
    }
    let key = format!("{h:016x}");
    let dir = opts.dir.join("kbuild").join(format!("{label}-{key}"));
    let bzimage = dir.join("arch/x86/boot/bzImage");
    let release_file = dir.join("include/config/kernel.release");
    if dir.join(".built").exists() && bzimage.is_file() {
        let release = fs::read_to_string(&release_file)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        return Ok(BuiltKernel {
            dir,
            bzimage,
            release,
            patched: !base_only,
            key,
        });
    }
    ensure_build_deps(opts)?;
    let mut updated = false;
    env::ensure_package_known(opts, SOURCE_PACKAGE, &mut updated)?;
    let root = env::fetch_unpack(&opts.dir, SOURCE_PACKAGE)?;
    let tarball = root.join("usr/src/linux-source-7.3.tar.xz");
    if !tarball.is_file() {
        return Err(LabError::Missing {
            what: tarball.display().to_string(),
            hint: "the linux-source-7.3 package looks incomplete; delete its cache entry".into(),
        });
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
    log(&format!(
        "unpacking {} into {}",
        tarball.display(),
        dir.display()
    ));
    env::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir)
            .arg("--strip-components=1"),
    )?;
    let makefile = fs::read_to_string(dir.join("Makefile"))
        .map_err(io_err(format!("read {}/Makefile", dir.display())))?;
    let field = |k: &str| {
        makefile
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_start_matches('=').trim().parse::<u32>().ok())
    };
    let ver = (field("VERSION"), field("PATCHLEVEL"), field("SUBLEVEL"));
    let want = SOURCE_VERSION;
    if ver != (Some(want.0), Some(want.1), Some(want.2)) {
        return Err(LabError::Missing {
            what: format!("Linux {}.{}.{} in {SOURCE_PACKAGE}", want.0, want.1, want.2),
            hint: format!("the package holds {ver:?}; the patches are for 7.3.4"),
        });
    }
    for p in &patches {
        log(&format!("patch -p1 < {}", p.display()));
        env::run(
            Command::new("patch")
                .args(["-p1", "--batch", "--forward", "-i"])
                .arg(fs::canonicalize(p).map_err(io_err(format!("{}", p.display())))?)
                .current_dir(&dir),
        )?;
    }
    log("configuring (allnoconfig + lab/kernel.config)");
    env::run(Command::new("make").arg("allnoconfig").current_dir(&dir))?;
    let mut args = config_args(&fragment);
    args.extend([
        "--set-str".into(),
        "LOCALVERSION".into(),
        format!("-{label}"),
        "--disable".into(),
        "LOCALVERSION_AUTO".into(),
    ]);
    env::run(Command::new("scripts/config").args(&args).current_dir(&dir))?;
    env::run(Command::new("make").arg("olddefconfig").current_dir(&dir))?;
    let dot = fs::read_to_string(dir.join(".config"))
        .map_err(io_err(format!("read {}/.config", dir.display())))?;
    let lost: Vec<&str> = fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !dot.lines().any(|d| d == *l))
        .collect();
    if !lost.is_empty() {
        return Err(LabError::Missing {
            what: format!("{} in the built .config", lost.join(", ")),
            hint: "a dependency dropped them: fix lab/kernel.config".into(),
        });
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    log(&format!(
        "make -j{jobs} bzImage in {} (the first build takes minutes; log: build.log)",
        dir.display()
    ));
    let logf = fs::File::create(dir.join("build.log"))
        .map_err(io_err(format!("create {}/build.log", dir.display())))?;
    let status = Command::new("nice")
        .args(["make", &format!("-j{jobs}"), "bzImage"])
        .current_dir(&dir)
        .stdout(logf.try_clone().map_err(io_err("build.log".into()))?)
        .stderr(logf)
        .status()
        .map_err(io_err("cannot start make".into()))?;
    if !status.success() || !bzimage.is_file() {
        return Err(LabError::Command {
            cmd: format!("make bzImage in {}", dir.display()),
            status: status.to_string(),
            stderr: "see build.log in that directory".into(),
        });
    }
    let release = fs::read_to_string(&release_file)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("7.3.4-{label}"));
    fs::write(dir.join(".built"), &key).map_err(io_err("write .built".into()))?;
    Ok(BuiltKernel {
        dir,
        bzimage,
        release,
        patched: !base_only,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_fragment_becomes_scripts_config_arguments() {
        let a =
            config_args("# c\nCONFIG_SMP=y\nCONFIG_MODULES=n\nCONFIG_NR_CPUS=64\nCONFIG_X=\"s\"\n");
        assert_eq!(
            a,
            [
                "--enable",
                "SMP",
                "--disable",
                "MODULES",
                "--set-val",
                "NR_CPUS",
                "64"
            ]
        );
    }

    #[test]
    fn the_repository_has_the_config_and_the_patches() {
        let frag = fs::read_to_string(repo_file("lab/kernel.config")).expect("lab/kernel.config");
        for opt in ["CONFIG_VFIO_PCI=y", "CONFIG_NR_CPUS=64", "CONFIG_MODULES=n"] {
            assert!(frag.contains(opt), "{opt}");
        }
        let patches = patch_files(&repo_file("kernel-patches")).expect("kernel-patches/");
        assert!(patches.len() >= 3, "one patch per bug: {patches:?}");
        for p in patches {
            let text = fs::read_to_string(&p).expect("reads");
            assert!(
                text.starts_with("From "),
                "{}: git format-patch form",
                p.display()
            );
            assert!(text.contains("\nFixes: "), "{}: a Fixes: tag", p.display());
            assert!(text.contains("\nSigned-off-by: "), "{}", p.display());
        }
    }
}
