//! PCI pieces vfio-pci needs: BARs (from a spec or a sysfs `resource` file), the command
//! register and BAR registers of config space, and power states.
//!
//! Models `struct resource` flags (`IORESOURCE_*`), `pci_resource_start/len`, the standard
//! config header's `PCI_COMMAND` (offset 4) and `PCI_BASE_ADDRESS_0..5` (offsets 0x10..0x24)
//! including the all-ones sizing protocol firmware uses, and `PCI_D0`/`PCI_D3hot`.

use std::fmt;

use serde::Serialize;
use thiserror::Error;

/// `PCI_COMMAND`.
pub const PCI_COMMAND: usize = 0x04;
/// `PCI_COMMAND_IO`.
pub const PCI_COMMAND_IO: u16 = 0x1;
/// `PCI_COMMAND_MEMORY`: memory decode enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
/// `PCI_COMMAND_MASTER`.
pub const PCI_COMMAND_MASTER: u16 = 0x4;
/// `PCI_BASE_ADDRESS_0`.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;

/// `IORESOURCE_IO`.
pub const IORESOURCE_IO: u64 = 0x0000_0100;
/// `IORESOURCE_MEM`.
pub const IORESOURCE_MEM: u64 = 0x0000_0200;
/// `IORESOURCE_PREFETCH`.
pub const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
/// `IORESOURCE_MEM_64`.
pub const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// PCI BAR slots.
pub const PCI_STD_NUM_BARS: u8 = 6;

/// A memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bar {
    /// 0..=5.
    pub index: u8,
    /// Physical (host bus) address.
    pub phys: u64,
    /// Size in bytes (a power of two for real BARs).
    pub size: u64,
    /// `IORESOURCE_*` flags.
    pub flags: u64,
}

impl Bar {
    /// A 64-bit prefetchable memory BAR.
    pub fn mem64(index: u8, phys: u64, size: u64) -> Bar {
        Bar {
            index,
            phys,
            size,
            flags: IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH,
        }
    }

    /// End (exclusive).
    pub fn end(&self) -> u64 {
        self.phys + self.size
    }

    /// The low 32-bit BAR register value (type bits included).
    fn reg_type_bits(&self) -> u32 {
        let mut t = 0u32;
        if self.flags & IORESOURCE_MEM_64 != 0 {
            t |= 0x4;
        }
        if self.flags & IORESOURCE_PREFETCH != 0 {
            t |= 0x8;
        }
        t
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BAR{} {:#x}..{:#x} ({})",
            self.index,
            self.phys,
            self.end(),
            hugepfn_units::format_size(self.size)
        )
    }
}

/// A malformed sysfs `resource` file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    /// A line that is not three hex numbers.
    #[error("resource line {line}: expected `start end flags` in hex, got `{text}`")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// The text.
        text: String,
    },
    /// end < start, or a BAR not 4 KiB aligned.
    #[error("resource line {line}: bad range {start:#x}..={end:#x}")]
    Range {
        /// 1-based line.
        line: usize,
        /// Start.
        start: u64,
        /// End (inclusive).
        end: u64,
    },
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16).ok()
}

/// Parses `/sys/bus/pci/devices/<bdf>/resource`: one `start end flags` line per resource, the
/// first six being BAR0..BAR5; all-zero lines are absent BARs; I/O BARs and memory BARs
/// smaller than a page are skipped.
pub fn parse_sysfs_resource(text: &str) -> Result<Vec<Bar>, ResourceError> {
    let mut bars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if i >= usize::from(PCI_STD_NUM_BARS) {
            break;
        }
        let f: Vec<&str> = raw.split_whitespace().collect();
        let [s, e, fl] = f.as_slice() else {
            return Err(ResourceError::Syntax {
                line,
                text: raw.to_string(),
            });
        };
        let (Some(start), Some(end), Some(flags)) = (hex(s), hex(e), hex(fl)) else {
            return Err(ResourceError::Syntax {
                line,
                text: raw.to_string(),
            });
        };
        if start == 0 && end == 0 {
            continue;
        }
        if flags & IORESOURCE_MEM == 0 {
            continue;
        }
        // a register BAR smaller than a page (ivshmem's 256-byte BAR0) has no page to map
        if end >= start && end - start + 1 < 4096 {
            continue;
        }
        if end < start || start % 4096 != 0 || (end + 1) % 4096 != 0 {
            return Err(ResourceError::Range { line, start, end });
        }
        bars.push(Bar {
            index: i as u8,
            phys: start,
            size: end - start + 1,
            flags,
        });
    }
    Ok(bars)
}

/// PCI power states vfio distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PowerState {
    /// `PCI_D0`.
    D0,
    /// `PCI_D3hot`.
    D3hot,
}

/// The parts of config space the model keeps: the command register and the BAR registers.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    /// `PCI_COMMAND`.
    pub command: u16,
    /// `PCI_BASE_ADDRESS_0..5` as firmware last wrote them.
    pub bar_regs: [u32; 6],
    sizes: [u64; 6],
    types: [u32; 6],
}

impl ConfigSpace {
    /// Config space of a device with these BARs, memory decode on (as after vfio-pci opens it).
    pub fn new(bars: &[Bar]) -> Self {
        let mut c = ConfigSpace {
            command: PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
            bar_regs: [0; 6],
            sizes: [0; 6],
            types: [0; 6],
        };
        for b in bars {
            let i = usize::from(b.index);
            c.sizes[i] = b.size;
            c.types[i] = b.reg_type_bits();
            c.bar_regs[i] = (b.phys as u32 & !0xf) | c.types[i];
            if b.flags & IORESOURCE_MEM_64 != 0 && i + 1 < 6 {
                c.bar_regs[i + 1] = (b.phys >> 32) as u32;
                c.sizes[i + 1] = b.size; // upper half of the same BAR
                c.types[i + 1] = u32::MAX; // marks "upper dword"
            }
        }
        c
    }

    /// Reads a dword at a BAR register offset (0x10..=0x24), with the sizing protocol.
    pub fn read_bar(&self, index: usize) -> u32 {
        self.bar_regs[index]
    }

    /// Writes a BAR register: all-ones turns it into a size mask (firmware BAR sizing).
    pub fn write_bar(&mut self, index: usize, val: u32) {
        if index >= 6 || self.sizes[index] == 0 {
            return;
        }
        let size = self.sizes[index];
        if self.types[index] == u32::MAX {
            // Upper dword of a 64-bit BAR.
            let mask = !(size - 1);
            self.bar_regs[index] = if val == u32::MAX {
                (mask >> 32) as u32
            } else {
                val
            };
        } else {
            let mask = !(size - 1) as u32;
            self.bar_regs[index] = (val & mask & !0xf) | self.types[index];
        }
    }

    /// True if `PCI_COMMAND_MEMORY` is set.
    pub fn memory_enabled(&self) -> bool {
        self.command & PCI_COMMAND_MEMORY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_h100_resource_file() {
        // 64-bit BARs take two lines each: the H100's are lines 0, 2 and 4
        let text = "0x0000102002000000 0x0000102002ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000100000000000 0x0000101fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000102000000000 0x0000102001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";
        let bars = parse_sysfs_resource(text).unwrap();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[1].index, 2);
        assert_eq!(bars[1].phys, 0x1000_0000_0000);
        assert_eq!(bars[1].size, 128 << 30);
        assert_eq!(bars[2].index, 4);
        assert_eq!(bars[0].size, 16 << 20);
        assert!(bars[0].flags & IORESOURCE_MEM_64 != 0);
    }

    #[test]
    fn sub_page_register_bars_are_skipped() {
        // the lab's ivshmem-plain: a 256-byte BAR0, the shared memory at BAR2
        let text = "0x00000000fea00000 0x00000000fea000ff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000ff00000000 0x000000ff7fffffff 0x000000000014220c
";
        let bars = parse_sysfs_resource(text).unwrap();
        assert_eq!(bars.len(), 1);
        assert_eq!((bars[0].index, bars[0].size), (2, 2 << 30));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse_sysfs_resource("0x1 0x2\n"),
            Err(ResourceError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            parse_sysfs_resource("zz 0x2 0x200\n"),
            Err(ResourceError::Syntax { .. })
        ));
        assert!(matches!(
            parse_sysfs_resource("0x2000 0x1fff 0x200\n"),
            Err(ResourceError::Range { .. })
        ));
    }

    #[test]
    fn bar_sizing_protocol() {
        let b = Bar::mem64(1, 0x1000_0000_0000, 128 << 30);
        let mut c = ConfigSpace::new(&[b]);
        assert_eq!(c.read_bar(1), 0xc); // low dword: address bits 0, 64-bit prefetchable
        assert_eq!(c.read_bar(2), 0x1000);
        c.write_bar(1, u32::MAX);
        c.write_bar(2, u32::MAX);
        let size = !((u64::from(c.read_bar(2)) << 32) | u64::from(c.read_bar(1) & !0xf)) + 1;
        assert_eq!(size, 128 << 30);
        c.write_bar(1, 0);
        c.write_bar(2, 0x1000);
        assert_eq!(c.read_bar(2), 0x1000);
    }
}
