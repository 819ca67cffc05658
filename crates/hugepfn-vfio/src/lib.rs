//! hugepfn-vfio: a vfio-pci device on top of the hugepfn mm model.
//!
//! [`device::VfioPciDevice`] owns BARs (physical ranges that are never RAM), a config space
//! whose command register gates MMIO, and the device fd's address space through which every
//! mapping of its BARs, in every process, is revoked. [`device::VfioDeviceFile`] is what a
//! process mmaps; its VMAs are filled on fault by `vfio_pci_mmap_huge_fault`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod device;
pub mod iommu;
pub mod pci;
pub mod presets;
pub mod type1;

pub use device::{
    HugeFaultLogic, VFIO_PCI_OFFSET_SHIFT, VfioDeviceFile, VfioError, VfioPciDevice, region_offset,
};
pub use pci::{Bar, PowerState, parse_sysfs_resource};
