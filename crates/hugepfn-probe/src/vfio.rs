//! VFIO container, groups and devices (the legacy group/container API), and the device's config
//! space through the VFIO config region.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_NOIOMMU_IOMMU, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU,
};

use crate::error::ProbeError;
use crate::sys::{self, RegionInfo};

/// Which IOMMU backend to ask for with `VFIO_SET_IOMMU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IommuChoice {
    /// Type1v2 (or type1) when `/dev/vfio/<group>` exists, no-IOMMU when only
    /// `/dev/vfio/noiommu-<group>` does.
    Auto,
    /// VFIO_TYPE1v2_IOMMU.
    Type1v2,
    /// VFIO_TYPE1_IOMMU.
    Type1,
    /// VFIO_NOIOMMU_IOMMU (needs CONFIG_VFIO_NOIOMMU and `enable_unsafe_noiommu_mode`).
    Noiommu,
}

const PCI_COMMAND: u64 = 0x04;
const PCI_STATUS: u64 = 0x06;
const PCI_CAPABILITY_LIST: u64 = 0x34;
const PCI_STATUS_CAP_LIST: u16 = 0x10;
const PCI_CAP_ID_PM: u8 = 0x01;
const PCI_PM_CTRL: u64 = 4;
/// PCI_COMMAND_MEMORY: memory-space decode.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;

/// An open container with its groups; keep it alive while devices are used.
#[derive(Debug)]
pub struct Vfio {
    container: File,
    _groups: BTreeMap<String, File>,
    /// The backend that was set.
    pub iommu: &'static str,
}

/// An open vfio-pci device.
#[derive(Debug)]
pub struct Device {
    /// PCI address.
    pub bdf: String,
    /// The device fd (regions are read, written and mmapped through it).
    pub file: File,
    config: RegionInfo,
}

fn vfio_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Vfio { what, source }
}

fn open_rw(path: &Path) -> Result<File, ProbeError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(vfio_err(format!("open {}", path.display())))
}

impl Vfio {
    /// Opens the container, every device's group (once per group) and the devices, in the
    /// order of `bdfs`.
    pub fn open(bdfs: &[String], choice: IommuChoice) -> Result<(Vfio, Vec<Device>), ProbeError> {
        let container = open_rw(Path::new("/dev/vfio/vfio"))?;
        let api = sys::vfio_api_version(&container).map_err(vfio_err("VFIO_GET_API_VERSION"))?;
        if api != VFIO_API_VERSION as i32 {
            return Err(ProbeError::VfioSetup(format!(
                "VFIO API version {api}, expected {VFIO_API_VERSION}"
            )));
        }
        let mut groups: BTreeMap<String, File> = BTreeMap::new();
        let mut noiommu = false;
        for bdf in bdfs {
            let g = crate::pci::iommu_group(bdf)?;
            if groups.contains_key(&g) {
                continue;
            }
            let normal = Path::new("/dev/vfio").join(&g);
            let unsafe_path = Path::new("/dev/vfio").join(format!("noiommu-{g}"));
            let path = match choice {
                IommuChoice::Noiommu => unsafe_path,
                IommuChoice::Auto if !normal.exists() && unsafe_path.exists() => {
                    noiommu = true;
                    unsafe_path
                }
                _ => normal,
            };
            noiommu |= choice == IommuChoice::Noiommu;
            let file = open_rw(&path)?;
            let flags = sys::vfio_group_flags(&file).map_err(vfio_err("VFIO_GROUP_GET_STATUS"))?;
            if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
                return Err(ProbeError::VfioSetup(format!(
                    "IOMMU group {g} is not viable: bind every device of /sys/kernel/iommu_groups/{g}/devices to vfio-pci (or unbind it)"
                )));
            }
            sys::vfio_group_set_container(&file, &container)
                .map_err(vfio_err(format!("VFIO_GROUP_SET_CONTAINER (group {g})")))?;
            groups.insert(g, file);
        }
        let (ty, name) = if noiommu {
            (VFIO_NOIOMMU_IOMMU, "noiommu")
        } else {
            let v2 = sys::vfio_check_extension(&container, VFIO_TYPE1v2_IOMMU).unwrap_or(0) > 0;
            match choice {
                IommuChoice::Type1 => (VFIO_TYPE1_IOMMU, "type1"),
                IommuChoice::Auto if !v2 => (VFIO_TYPE1_IOMMU, "type1"),
                _ => (VFIO_TYPE1v2_IOMMU, "type1v2"),
            }
        };
        sys::vfio_set_iommu(&container, ty).map_err(vfio_err(format!("VFIO_SET_IOMMU({name})")))?;
        let mut devices = Vec::new();
        for bdf in bdfs {
            let g = crate::pci::iommu_group(bdf)?;
            let Some(group) = groups.get(&g) else {
                return Err(ProbeError::VfioSetup(format!(
                    "group {g} of {bdf} is not open"
                )));
            };
            let cname =
                CString::new(bdf.as_str()).map_err(|_| ProbeError::DeviceArg(bdf.clone()))?;
            let file = sys::vfio_group_get_device(group, &cname)
                .map_err(vfio_err(format!("VFIO_GROUP_GET_DEVICE_FD({bdf})")))?;
            let config = sys::vfio_region_info(&file, VFIO_PCI_CONFIG_REGION_INDEX)
                .map_err(vfio_err(format!("{bdf}: region info of the config space")))?;
            devices.push(Device {
                bdf: bdf.clone(),
                file,
                config,
            });
        }
        Ok((
            Vfio {
                container,
                _groups: groups,
                iommu: name,
            },
            devices,
        ))
    }
}

impl Vfio {
    /// The container (`VFIO_IOMMU_MAP_DMA` / `UNMAP_DMA` go to it).
    pub fn container(&self) -> &File {
        &self.container
    }
}

impl Device {
    /// Region info of BAR `index`; an error if it cannot be mmapped.
    pub fn bar_region(&self, index: u8) -> Result<RegionInfo, ProbeError> {
        let ri = sys::vfio_region_info(&self.file, u32::from(index)).map_err(vfio_err(format!(
            "{}: region info of BAR {index}",
            self.bdf
        )))?;
        if ri.size == 0 {
            return Err(ProbeError::NoBar {
                bdf: self.bdf.clone(),
                index,
            });
        }
        if ri.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(ProbeError::VfioSetup(format!(
                "{}: vfio-pci does not allow mmap of BAR {index} (region flags {:#x})",
                self.bdf, ri.flags
            )));
        }
        Ok(ri)
    }

    fn config_read<const N: usize>(&self, reg: u64) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.file.read_exact_at(&mut b, self.config.offset + reg)?;
        Ok(b)
    }

    fn config_read16(&self, reg: u64) -> io::Result<u16> {
        self.config_read::<2>(reg).map(u16::from_le_bytes)
    }

    fn config_write16(&self, reg: u64, v: u16) -> io::Result<()> {
        self.file
            .write_all_at(&v.to_le_bytes(), self.config.offset + reg)
    }

    /// PCI_COMMAND.
    pub fn command(&self) -> io::Result<u16> {
        self.config_read16(PCI_COMMAND)
    }

    /// Sets or clears PCI_COMMAND_MEMORY (16-bit read-modify-write at offset 4 of the config
    /// region); returns the value read back.
    pub fn set_memory_enable(&self, on: bool) -> io::Result<u16> {
        let cmd = self.command()?;
        let new = if on {
            cmd | PCI_COMMAND_MEMORY
        } else {
            cmd & !PCI_COMMAND_MEMORY
        };
        self.config_write16(PCI_COMMAND, new)?;
        self.command()
    }

    /// `VFIO_DEVICE_RESET`.
    pub fn reset(&self) -> io::Result<()> {
        sys::vfio_device_reset(&self.file)
    }

    /// Config offset of the PCI power-management capability, if the device has one.
    fn pm_cap(&self) -> io::Result<Option<u64>> {
        if self.config_read16(PCI_STATUS)? & PCI_STATUS_CAP_LIST == 0 {
            return Ok(None);
        }
        let mut ptr = u64::from(self.config_read::<1>(PCI_CAPABILITY_LIST)?[0] & 0xfc);
        for _ in 0..48 {
            if ptr < 0x40 {
                return Ok(None);
            }
            let [id, next] = self.config_read::<2>(ptr)?;
            if id == PCI_CAP_ID_PM {
                return Ok(Some(ptr));
            }
            ptr = u64::from(next & 0xfc);
        }
        Ok(None)
    }

    /// Writes the PowerState field of PMCSR (0 = D0, 3 = D3hot) through the config region;
    /// vfio-pci turns that into `vfio_pci_set_power_state`. EOPNOTSUPP when the device has no
    /// PM capability.
    pub fn set_power(&self, d3hot: bool) -> io::Result<()> {
        let Some(cap) = self.pm_cap()? else {
            return Err(io::Error::from_raw_os_error(95)); // EOPNOTSUPP
        };
        let pmcsr = self.config_read16(cap + PCI_PM_CTRL)?;
        let new = (pmcsr & !0x3) | if d3hot { 3 } else { 0 };
        self.config_write16(cap + PCI_PM_CTRL, new)
    }

    /// Reads one byte of a region through `pread` (the kernel's own access to the BAR, not the
    /// user mapping).
    pub fn pread_byte(&self, region: &RegionInfo, off: u64) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.file.read_exact_at(&mut b, region.offset + off)?;
        Ok(b[0])
    }
}
