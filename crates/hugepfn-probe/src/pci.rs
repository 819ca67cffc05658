//! PCI devices through sysfs: finding the ivshmem device, BAR addresses, the IOMMU group, and
//! binding to vfio-pci (as the lab's init script did with `driver_override`).
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ProbeError;

/// Red Hat / QEMU ivshmem (`ivshmem-plain`): vendor 0x1af4, device 0x1110.
pub const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

const SYSFS_PCI: &str = "/sys/bus/pci/devices";

/// One line of `/sys/bus/pci/devices/<bdf>/resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// First byte (CPU physical address).
    pub start: u64,
    /// Size in bytes (0 = absent).
    pub size: u64,
    /// IORESOURCE_* flags.
    pub flags: u64,
}

fn dev_path(bdf: &str) -> PathBuf {
    Path::new(SYSFS_PCI).join(bdf)
}

fn read(path: &Path) -> Result<String, ProbeError> {
    fs::read_to_string(path).map_err(|source| ProbeError::Sysfs {
        path: path.to_path_buf(),
        source,
    })
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(
        s.trim().trim_start_matches("0x").trim_start_matches("0X"),
        16,
    )
    .ok()
}

/// Parses a sysfs `resource` file: line `i` is resource `i` (BARs are 0..=5).
pub fn parse_resource(text: &str) -> Result<Vec<Resource>, String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [s, e, fl] = f.as_slice() else {
                return Err(format!(
                    "line {}: expected `start end flags`: {line:?}",
                    i + 1
                ));
            };
            let (Some(start), Some(end), Some(flags)) = (hex(s), hex(e), hex(fl)) else {
                return Err(format!("line {}: not hexadecimal: {line:?}", i + 1));
            };
            let size = if start == 0 && end == 0 {
                0
            } else if end < start {
                return Err(format!("line {}: end before start: {line:?}", i + 1));
            } else {
                end - start + 1
            };
            Ok(Resource { start, size, flags })
        })
        .collect()
}

/// The BAR `index` of device `bdf` from sysfs.
pub fn bar_resource(bdf: &str, index: u8) -> Result<Resource, ProbeError> {
    let path = dev_path(bdf).join("resource");
    let text = read(&path)?;
    let res = parse_resource(&text).map_err(|msg| ProbeError::SysfsFormat {
        path: path.clone(),
        msg,
    })?;
    match res.get(usize::from(index)) {
        Some(r) if r.size > 0 => Ok(*r),
        _ => Err(ProbeError::NoBar {
            bdf: bdf.to_string(),
            index,
        }),
    }
}

/// Every PCI device with this vendor and device id, sorted by address.
pub fn find_devices(vendor: u16, device: u16) -> Result<Vec<String>, ProbeError> {
    let dir = Path::new(SYSFS_PCI);
    let entries = fs::read_dir(dir).map_err(|source| ProbeError::Sysfs {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let v = fs::read_to_string(p.join("vendor"))
            .ok()
            .and_then(|s| hex(&s));
        let d = fs::read_to_string(p.join("device"))
            .ok()
            .and_then(|s| hex(&s));
        if v == Some(u64::from(vendor)) && d == Some(u64::from(device)) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// True when `bdf` exists in sysfs.
pub fn exists(bdf: &str) -> bool {
    dev_path(bdf).exists()
}

/// The driver `bdf` is bound to, if any.
pub fn driver(bdf: &str) -> Option<String> {
    fs::read_link(dev_path(bdf).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The IOMMU group number of `bdf`.
pub fn iommu_group(bdf: &str) -> Result<String, ProbeError> {
    let link = dev_path(bdf).join("iommu_group");
    let target = fs::read_link(&link).map_err(|source| ProbeError::Sysfs {
        path: link.clone(),
        source,
    })?;
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ProbeError::SysfsFormat {
            path: link,
            msg: format!("link target {} has no group number", target.display()),
        })
}

fn write(path: &Path, text: &str) -> Result<(), ProbeError> {
    fs::write(path, text).map_err(|source| ProbeError::Sysfs {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds `bdf` to vfio-pci (`driver_override`, unbind from the current driver,
/// `drivers_probe`), as the lab's init did. Needs root and the vfio-pci module.
pub fn bind_vfio_pci(bdf: &str) -> Result<(), ProbeError> {
    if driver(bdf).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(ProbeError::NoVfioPci);
    }
    let dev = dev_path(bdf);
    write(&dev.join("driver_override"), "vfio-pci")?;
    if dev.join("driver").exists() {
        write(&dev.join("driver/unbind"), bdf)?;
    }
    write(Path::new("/sys/bus/pci/drivers_probe"), bdf)?;
    match driver(bdf) {
        Some(d) if d == "vfio-pci" => Ok(()),
        other => Err(ProbeError::BindFailed {
            bdf: bdf.to_string(),
            driver: other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_file_parses() {
        let text = "0x00000000fea00000 0x00000000fea000ff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x000000ff00000000 0x000000ff7fffffff 0x000000000014220c\n";
        let r = parse_resource(text).expect("parses");
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].size, 0);
        assert_eq!(
            r[2],
            Resource {
                start: 0xff_0000_0000,
                size: 0x8000_0000,
                flags: 0x14220c
            }
        );
        assert!(parse_resource("0x1 0x2").is_err());
        assert!(parse_resource("0x10 0x1 0x0").is_err());
        assert!(parse_resource("zz 0x1 0x0").is_err());
    }
}
