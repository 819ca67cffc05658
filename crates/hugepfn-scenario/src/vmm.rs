//! How virtual machine monitors place a VFIO region's mmap (`va = "vmm:qemu-9.2"`): each
//! policy turns the length of one mmap into one of the scenario's placements. docs/vmm.md has
//! the code each rule was read from. None of them looks at the region's offset in the BAR.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::scenario::VaPlacement;

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;

/// A VMM's placement rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmmPolicy {
    /// QEMU 9.2+ (`hw/vfio/region.c` `vfio_region_mmap`, 00b519c0bca0 "vfio/helpers: Align
    /// mmaps"): aligned to `MIN(1 << ctz64(size), 1 GiB)`, the largest power of two dividing
    /// the size, at most 1 GiB.
    Qemu92,
    /// QEMU 9.1 and before: `mmap(NULL, ...)`, the kernel chooses.
    Qemu91,
    /// cloud-hypervisor v53.0+ (PR #8435, `pci/src/mmap.rs` `find_alignment`): 1 GiB for a
    /// length of 1 GiB or more, else the length rounded up to a power of two; a page-sized
    /// alignment is a plain `mmap(NULL, ...)`.
    CloudHypervisor,
    /// cloud-hypervisor v52 and before: `mmap(NULL, ...)`.
    CloudHypervisorOld,
    /// Firecracker's VFIO (`feature/vfio` branch, PR #6114, `vfio_map_bar_mapping`):
    /// `mmap(NULL, ...)`.
    Firecracker,
    /// crosvm (`add_bar_mmap`): `mmap(NULL, ...)`.
    Crosvm,
}

impl VmmPolicy {
    /// Every policy, in the order tables show them.
    pub const ALL: [VmmPolicy; 6] = [
        VmmPolicy::Qemu92,
        VmmPolicy::Qemu91,
        VmmPolicy::CloudHypervisor,
        VmmPolicy::CloudHypervisorOld,
        VmmPolicy::Firecracker,
        VmmPolicy::Crosvm,
    ];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VmmPolicy::Qemu92 => "qemu-9.2",
            VmmPolicy::Qemu91 => "qemu-9.1",
            VmmPolicy::CloudHypervisor => "cloud-hypervisor",
            VmmPolicy::CloudHypervisorOld => "cloud-hypervisor-old",
            VmmPolicy::Firecracker => "firecracker",
            VmmPolicy::Crosvm => "crosvm",
        }
    }

    /// Where this VMM puts an mmap of `len` bytes.
    pub fn placement(self, len: u64) -> VaPlacement {
        match self {
            VmmPolicy::Qemu92 => {
                let align = if len == 0 {
                    GIB
                } else {
                    (1u64 << len.trailing_zeros()).min(GIB)
                };
                VaPlacement::Align {
                    size: align,
                    skew: 0,
                }
            }
            VmmPolicy::CloudHypervisor => {
                let align = if len >= GIB {
                    GIB
                } else {
                    len.next_power_of_two().max(PAGE)
                };
                if align == PAGE {
                    VaPlacement::Kernel
                } else {
                    VaPlacement::Align {
                        size: align,
                        skew: 0,
                    }
                }
            }
            VmmPolicy::Qemu91
            | VmmPolicy::CloudHypervisorOld
            | VmmPolicy::Firecracker
            | VmmPolicy::Crosvm => VaPlacement::Kernel,
        }
    }
}

impl fmt::Display for VmmPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VMM name that is not one of [`VmmPolicy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown VMM `{name}`: expected one of {known}", name = .0, known = VmmPolicy::ALL.map(|v| v.name()).join(", "))]
pub struct UnknownVmm(pub String);

impl FromStr for VmmPolicy {
    type Err = UnknownVmm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        VmmPolicy::ALL
            .into_iter()
            .find(|v| v.name() == t)
            .ok_or(UnknownVmm(s.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn align(p: VaPlacement) -> Option<u64> {
        match p {
            VaPlacement::Align { size, skew: 0 } => Some(size),
            _ => None,
        }
    }

    #[test]
    fn qemu_aligns_by_the_largest_power_of_two_dividing_the_size() {
        let q = VmmPolicy::Qemu92;
        assert_eq!(align(q.placement(128 * GIB)), Some(GIB));
        assert_eq!(align(q.placement(256 * M)), Some(256 * M));
        assert_eq!(align(q.placement(1536 * M)), Some(512 * M));
        assert_eq!(align(q.placement(3 * M)), Some(M));
        assert_eq!(align(q.placement(256 * M - 8192)), Some(8192));
    }

    #[test]
    fn cloud_hypervisor_rounds_up() {
        let c = VmmPolicy::CloudHypervisor;
        assert_eq!(align(c.placement(3 * M)), Some(4 * M));
        assert_eq!(align(c.placement(1536 * M)), Some(GIB));
        assert_eq!(align(c.placement(512 * GIB)), Some(GIB));
        assert_eq!(c.placement(4096), VaPlacement::Kernel);
        for v in [
            VmmPolicy::Qemu91,
            VmmPolicy::CloudHypervisorOld,
            VmmPolicy::Firecracker,
            VmmPolicy::Crosvm,
        ] {
            assert_eq!(v.placement(128 * GIB), VaPlacement::Kernel);
        }
    }

    #[test]
    fn names_round_trip() {
        for v in VmmPolicy::ALL {
            assert_eq!(v.name().parse::<VmmPolicy>(), Ok(v));
        }
        let e = "qemu-10".parse::<VmmPolicy>().unwrap_err().to_string();
        assert!(e.contains("qemu-9.2, qemu-9.1"), "{e}");
    }
}
