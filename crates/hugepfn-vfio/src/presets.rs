//! Built-in devices.
//!
//! The H100 layout was read from sysfs on a real H100 80GB HBM3 (`../shared/research/h100-bars.md`):
//! BAR0 16 MiB at 0x102002000000, BAR2 128 GiB at 0x100000000000 (1 GiB aligned, 16 TiB),
//! BAR4 32 MiB at 0x102000000000, all 64-bit prefetchable. The research note calls them BAR0/1/3,
//! but all three lines carry 64-bit flags (0x14220c), so each takes two index slots: they are
//! BARs 0, 2 and 4, as every public H100 lspci shows; NVIDIA's tools call the 128 GiB aperture
//! "BAR1". The same layout is hugepfn-scenario's `h100` preset (the CLI checks they agree). The ivshmem layout is what SeaBIOS
//! gave the lab's QEMU guest (`../shared/research/kernel-lab/README.md`).

use crate::pci::Bar;

/// The H100's framebuffer aperture ("BAR1" to NVIDIA's tools): PCI BAR 2, VFIO region 2.
pub const H100_APERTURE: u8 = 2;

/// The H100's BARs.
pub fn h100_bars() -> Vec<Bar> {
    vec![
        Bar::mem64(0, 0x1020_0200_0000, 16 << 20),
        Bar::mem64(2, 0x1000_0000_0000, 128 << 30),
        Bar::mem64(4, 0x1020_0000_0000, 32 << 20),
    ]
}

/// The lab's ivshmem-plain device: BAR2 of `size` bytes, at 0xff00000000 for 2 GiB and
/// 0xfe00000000 for 4 GiB (1 TiB minus twice the size, where SeaBIOS placed it in the lab).
pub fn ivshmem_bars(size: u64) -> Vec<Bar> {
    vec![Bar::mem64(2, (1u64 << 40) - 2 * size, size)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_addresses() {
        assert_eq!(super::ivshmem_bars(2 << 30)[0].phys, 0xff_0000_0000);
        assert_eq!(super::ivshmem_bars(4 << 30)[0].phys, 0xfe_0000_0000);
    }
}
