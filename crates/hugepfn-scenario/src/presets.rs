//! GPU presets: published BAR layouts (`[[device]] preset = "h200"`, `hugepfn demo --gpu`,
//! `hugepfn vmm --gpu`).
//!
//! Each layout is what Linux shows for the device (`lspci -vv` regions, dmesg `reg 0x..` lines or
//! the sysfs `resource` file), with its source; docs/vmm.md has the table. Hopper and Blackwell
//! put three 64-bit prefetchable BARs at indexes 0, 2 and 4: the framebuffer aperture NVIDIA's
//! tools call "BAR1" is PCI BAR 2 (and VFIO region 2) there; Ampere and Volta keep BAR0 32-bit and
//! the aperture at BAR 1. Addresses: the H100's and B200's are the ones a real host showed; the
//! others are placed naturally aligned to their size, as PCI firmware assigns a 64-bit BAR, above
//! 16 TiB (clear of the model's simulated RAM).

/// One BAR of a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetBar {
    /// PCI BAR index (= VFIO region index).
    pub index: u8,
    /// Bus address.
    pub phys: u64,
    /// Size in bytes.
    pub size: u64,
    /// 64-bit BAR.
    pub mem64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// A GPU's published BAR layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuPreset {
    /// The name used in files and on the command line.
    pub name: &'static str,
    /// The product.
    pub title: &'static str,
    /// The BAR NVIDIA calls "BAR1" (the framebuffer aperture).
    pub aperture: u8,
    /// BARs, by index.
    pub bars: &'static [PresetBar],
    /// Where the layout was read.
    pub source: &'static str,
}

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

const fn bar(index: u8, phys: u64, size: u64, mem64: bool, prefetchable: bool) -> PresetBar {
    PresetBar {
        index,
        phys,
        size,
        mem64,
        prefetchable,
    }
}

/// Every preset.
pub const GPU_PRESETS: &[GpuPreset] = &[
    GpuPreset {
        name: "h100",
        title: "NVIDIA H100 80GB HBM3 (SXM5)",
        aperture: 2,
        bars: &[
            bar(0, 0x1020_0200_0000, 16 * M, true, true),
            bar(2, 0x1000_0000_0000, 128 * G, true, true),
            bar(4, 0x1020_0000_0000, 32 * M, true, true),
        ],
        source: "sysfs resource of a real H100 80GB HBM3 (../shared/research/h100-bars.md; its \
                 lines are BARs 0/2/4: all three carry flags 0x14220c, 64-bit prefetchable); \
                 lspci in github.com/fastfetch-cli/fastfetch/issues/1658",
    },
    GpuPreset {
        name: "h200",
        title: "NVIDIA H200 SXM 141GB",
        aperture: 2,
        bars: &[
            bar(0, 0x2040_0200_0000, 16 * M, true, true),
            bar(2, 0x2000_0000_0000, 256 * G, true, true),
            bar(4, 0x2040_0000_0000, 32 * M, true, true),
        ],
        source: "github.com/chutesai/sek8s host-tools/scripts/chutes/guest/gpu/profiles.py \
                 (\"lspci -vvvnn on dev-h200-tee: GPU 10de:2335 (BAR2 resizable, 256G)\")",
    },
    GpuPreset {
        name: "b200",
        title: "NVIDIA B200 (HGX)",
        aperture: 2,
        bars: &[
            bar(0, 0x2280_0000_0000, 64 * M, true, true),
            bar(2, 0x2200_0000_0000, 256 * G, true, true),
            bar(4, 0x2280_0400_0000, 32 * M, true, true),
        ],
        source: "host lspci in https://www.ubicloud.com/blog/virtualizing-nvidia-hgx-b200-gpus-with-open-source \
                 (BAR0 and BAR2 addresses as shown there; BAR4's address is placed)",
    },
    GpuPreset {
        name: "b300",
        title: "NVIDIA B300 SXM6 AC (aperture only: BAR0 and BAR4 are not published)",
        aperture: 2,
        bars: &[bar(2, 0x4000_0000_0000, 512 * G, true, true)],
        source: "github.com/chutesai/sek8s profiles.py (\"512 GiB: confirmed from lspci Region 2 \
                 on am-b300-61\"); no public lspci dump of its other BARs",
    },
    GpuPreset {
        name: "a100-40g",
        title: "NVIDIA A100 40GB (PCIe and SXM4)",
        aperture: 1,
        bars: &[
            bar(0, 0xdb00_0000, 16 * M, false, false),
            bar(1, 0x2800_0000_0000, 64 * G, true, true),
            bar(3, 0x2810_0000_0000, 32 * M, true, true),
        ],
        source: "dmesg in github.com/kata-containers/kata-containers/pull/4358 and \
                 github.com/triton-inference-server/server/issues/4154",
    },
    GpuPreset {
        name: "a100-80g",
        title: "NVIDIA A100 SXM4 80GB",
        aperture: 1,
        bars: &[
            bar(0, 0xdb00_0000, 16 * M, false, false),
            bar(1, 0x3000_0000_0000, 128 * G, true, true),
            bar(3, 0x3020_0000_0000, 32 * M, true, true),
        ],
        source: "lspci in linux-pci \"Re: [question]: BAR allocation failing\", 2021-07-15",
    },
    GpuPreset {
        name: "v100",
        title: "NVIDIA V100 SXM2 16GB",
        aperture: 1,
        bars: &[
            bar(0, 0xc200_0000, 16 * M, false, false),
            bar(1, 0x2000_0000_0000, 16 * G, true, true),
            bar(3, 0x2004_0000_0000, 32 * M, true, true),
        ],
        source: "boot log in linuxppc-dev \"Linux Boot failure : WARNING at \
                 arch/powerpc/kernel/eeh.c:357\", 2019-07-10 (sizes; addresses placed)",
    },
];

/// The preset called `name` (case-insensitive; `-` and `_` alike).
pub fn gpu_preset(name: &str) -> Option<&'static GpuPreset> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let n = norm(name);
    GPU_PRESETS.iter().find(|p| p.name == n)
}

/// The names of every preset, for messages.
pub fn gpu_preset_names() -> Vec<&'static str> {
    GPU_PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_naturally_aligned_and_disjoint() {
        for p in GPU_PRESETS {
            assert!(p.bars.iter().any(|b| b.index == p.aperture), "{}", p.name);
            for (i, b) in p.bars.iter().enumerate() {
                assert!(b.size.is_power_of_two(), "{} BAR{}", p.name, b.index);
                assert_eq!(b.phys % b.size, 0, "{} BAR{}", p.name, b.index);
                assert!(b.index <= 5);
                for c in &p.bars[i + 1..] {
                    assert!(b.index != c.index);
                    assert!(b.phys + b.size <= c.phys || c.phys + c.size <= b.phys);
                    // a 64-bit BAR takes two index slots
                    assert!(!b.mem64 || c.index != b.index + 1, "{}", p.name);
                }
            }
        }
    }

    #[test]
    fn lookup() {
        assert_eq!(gpu_preset("H200").map(|p| p.bars[1].size), Some(256 * G));
        assert_eq!(gpu_preset("a100_40g").map(|p| p.aperture), Some(1));
        assert!(gpu_preset("h300").is_none());
    }
}
