//! `hugepfn demo`: the built-in H100-like device mapped two ways.
//!
//! 1. The RFC's huge `remap_pfn_range`: each BAR mapped at mmap time at a 1 GiB-aligned VA, once
//!    per leaf policy (4 KiB only, up to PMD, up to PUD).
//! 2. The vfio-pci path Linux merged: each BAR mmapped through vfio-pci at a kernel-chosen VA
//!    and at a 1 GiB-aligned VA, then touched page by page (faults fill it on demand).
//!
//! Every number is read back from the model after the fact: leaves by walking the page tables,
//! table pages from the allocator's accounting, faults from the process's counters.

use std::sync::Arc;
use std::time::Instant;

use hugepfn_kernels::Behaviour;
use hugepfn_mm::Arch;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::remap_file::RemapPfnFile;
use hugepfn_mm::{
    CacheMode, LeafCap, LeafCounts, Level, Mm, MmConfig, MmError, MmapAddr, MmapRequest, Pfn,
    PhysConfig, PhysMem, Prot, TableCounts,
};
use thiserror::Error;

/// Why the demo could not finish.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The model refused an operation (a bad BAR layout, say).
    #[error(transparent)]
    Mm(#[from] MmError),
    /// The simulated memory ran out (exit 3): what was being mapped, and the limit.
    #[error(
        "{what}: the simulated memory ({limit}) is used up by page tables; raise it with --memory"
    )]
    OutOfMemory {
        /// The mapping that needed more.
        what: String,
        /// The limit, e.g. "4G".
        limit: String,
    },
}

fn memory_check(phys: &PhysMem, what: impl FnOnce() -> String) -> Result<(), DemoError> {
    if phys.oom_events() > 0 {
        return Err(DemoError::OutOfMemory {
            what: what(),
            limit: hugepfn_units::format_size(
                phys.config().limit_frames * phys.config().granule.page_size(),
            ),
        });
    }
    Ok(())
}
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, presets, region_offset};
use serde::Serialize;

/// One BAR mapped by `remap_pfn_range` under one policy.
#[derive(Debug, Clone, Serialize)]
pub struct RemapRow {
    /// BAR index.
    pub bar: u8,
    /// `pte`, `pmd` or `pud`: the largest leaf allowed.
    pub policy: &'static str,
    /// Leaves now mapped, by level (counted by walking the tables).
    pub leaves: LeafCounts,
    /// Page-table pages the mm holds (PGD included).
    pub page_table_pages: u64,
    /// The same in bytes.
    pub page_table_bytes: u64,
    /// Time of the mmap call that ran remap_pfn_range.
    pub elapsed_ns: u64,
}

/// One BAR mapped through vfio-pci and touched.
#[derive(Debug, Clone, Serialize)]
pub struct VfioRow {
    /// BAR index.
    pub bar: u8,
    /// `kernel` (mmap(NULL)) or `align:1G`.
    pub placement: &'static str,
    /// The VA the mapping got.
    pub va: String,
    /// Page faults of the full touch.
    pub faults: u64,
    /// Of which served at PUD, PMD, PTE level.
    pub faults_by_level: LeafCounts,
    /// Leaves after the touch.
    pub leaves: LeafCounts,
    /// Page-table pages after the touch (PGD included).
    pub page_table_pages: u64,
    /// The same in bytes.
    pub page_table_bytes: u64,
    /// Time of the touch loop.
    pub elapsed_ns: u64,
}

/// The whole demo output.
#[derive(Debug, Clone, Serialize)]
pub struct Demo {
    /// What the model behaved as: "the corrected design" or "Linux 7.3.4".
    pub model: String,
    /// The architecture (`x86_64`, `arm64`, …).
    pub arch: Arch,
    /// The largest pfnmap leaf the architecture's Kconfig allows in that kernel.
    pub pfnmap_cap: &'static str,
    /// RFC huge remap_pfn_range, per BAR and policy.
    pub mappings: Vec<RemapRow>,
    /// vfio-pci fault path, per BAR and placement.
    pub vfio: Vec<VfioRow>,
}

fn total(mm: &Mm) -> (u64, u64) {
    let t: TableCounts = mm.table_counts();
    (t.total(), t.bytes_with(mm.geometry()))
}

/// Maps `bar` with `remap_pfn_range` at a 1 GiB-aligned VA, leaves capped at `cap`.
pub fn remap_bar(
    bar: &Bar,
    cap: LeafCap,
    b: Behaviour,
    memory: u64,
    arch: Arch,
) -> Result<RemapRow, DemoError> {
    let phys = Arc::new(PhysMem::new(
        PhysConfig::with_memory(memory).with_granule(arch.geometry()),
    ));
    phys.add_device_range("bar", bar.phys, bar.size)
        .map_err(|e| MmError::Invalid(e.to_string()))?;
    let mm = Mm::new(
        phys.clone(),
        crate::runner::mm_config(
            b,
            MmConfig {
                remap_cap: cap,
                arch,
                ..MmConfig::default()
            },
        ),
    )?;
    let file = RemapPfnFile {
        name: format!("BAR{}", bar.index),
        base: Pfn::new(bar.phys >> 12).map_err(MmError::from)?,
        size: bar.size,
        cache: CacheMode::UcMinus,
    };
    let uva = mm.find_aligned_area(bar.size, 1 << 30, 0)?;
    let va = uva.as_u64();
    let t0 = Instant::now();
    let mapped = mm.mmap(MmapRequest {
        addr: MmapAddr::Fixed(uva),
        len: bar.size,
        prot: Prot::RW,
        shared: true,
        offset: 0,
        file: Some(&file),
    });
    memory_check(&phys, || {
        format!(
            "BAR{} ({}) mapped by remap_pfn_range with {} leaves",
            bar.index,
            hugepfn_units::format_size(bar.size),
            cap.name()
        )
    })?;
    mapped?;
    let elapsed_ns = t0.elapsed().as_nanos() as u64;
    let (pages, bytes) = total(&mm);
    Ok(RemapRow {
        bar: bar.index,
        policy: cap.name(),
        leaves: mm.leaves(UserAddr::new(va), UserAddr::new(va + bar.size)),
        page_table_pages: pages,
        page_table_bytes: bytes,
        elapsed_ns,
    })
}

/// mmaps `bar` through vfio-pci at `placement` and touches every page (`PAGE_SIZE`).
pub fn vfio_touch_bar(
    bars: &[Bar],
    index: u8,
    aligned: bool,
    b: Behaviour,
    memory: u64,
    arch: Arch,
) -> Result<VfioRow, DemoError> {
    let phys = Arc::new(PhysMem::new(
        PhysConfig::with_memory(memory).with_granule(arch.geometry()),
    ));
    let logic = HugeFaultLogic::from(b.huge_fault());
    let dev = VfioPciDevice::new(phys.clone(), "gpu", bars.to_vec(), logic)
        .map_err(|e| MmError::Invalid(e.to_string()))?;
    let bar = *dev
        .bar(index)
        .ok_or_else(|| MmError::Invalid(format!("no BAR{index}")))?;
    let mm = Mm::new(
        phys.clone(),
        crate::runner::mm_config(
            b,
            MmConfig {
                arch,
                ..MmConfig::default()
            },
        ),
    )?;
    let addr = if aligned {
        MmapAddr::Fixed(mm.find_aligned_area(bar.size, 1 << 30, 0)?)
    } else {
        MmapAddr::Kernel
    };
    let file = dev.open();
    let va = mm
        .mmap(MmapRequest {
            addr,
            len: bar.size,
            prot: Prot::RW,
            shared: true,
            offset: region_offset(index),
            file: Some(&file),
        })?
        .as_u64();
    let before = mm.fault_counts();
    let t0 = Instant::now();
    let page = mm.page_size();
    mm.access_range(UserAddr::new(va), bar.size / page, page, true, false);
    let elapsed_ns = t0.elapsed().as_nanos() as u64;
    memory_check(&phys, || {
        format!(
            "BAR{index} ({}) touched through vfio-pci at {}",
            hugepfn_units::format_size(bar.size),
            if aligned {
                "align:1G"
            } else {
                "a kernel-chosen VA"
            }
        )
    })?;
    let f = mm.fault_counts().since(&before);
    let (pages, bytes) = total(&mm);
    Ok(VfioRow {
        bar: index,
        placement: if aligned { "align:1G" } else { "kernel" },
        va: format!("{va:#x}"),
        faults: f.faults,
        faults_by_level: LeafCounts {
            pud: f.by_level.pud,
            pmd: f.by_level.pmd,
            pte: f.by_level.pte,
        },
        leaves: mm.leaves(UserAddr::new(va), UserAddr::new(va + bar.size)),
        page_table_pages: pages,
        page_table_bytes: bytes,
        elapsed_ns,
    })
}

/// A GPU preset's BARs as the device model takes them.
pub fn preset_bars(p: &hugepfn_scenario::presets::GpuPreset) -> Vec<Bar> {
    use hugepfn_vfio::pci::{IORESOURCE_MEM, IORESOURCE_MEM_64, IORESOURCE_PREFETCH};
    p.bars
        .iter()
        .map(|b| Bar {
            index: b.index,
            phys: b.phys,
            size: b.size,
            flags: IORESOURCE_MEM
                | if b.mem64 { IORESOURCE_MEM_64 } else { 0 }
                | if b.prefetchable {
                    IORESOURCE_PREFETCH
                } else {
                    0
                },
        })
        .collect()
}

/// What the demo runs as.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// Only this BAR.
    pub bar: Option<u8>,
    /// The kernel (`None`: the corrected design).
    pub kernel: Option<hugepfn_kernels::Kernel>,
    /// The simulated memory per run (default [`hugepfn_mm::phys::DEFAULT_MEMORY`]).
    pub memory: Option<u64>,
    /// The architecture.
    pub arch: Arch,
}

/// Runs the demo on `bars` (default: the H100 layout).
pub fn run(bars: Option<Vec<Bar>>, opts: DemoOptions) -> Result<Demo, DemoError> {
    let DemoOptions {
        bar: bar_filter,
        kernel,
        memory,
        arch,
    } = opts;
    let memory = memory.unwrap_or(hugepfn_mm::phys::DEFAULT_MEMORY);
    let behaviour = Behaviour::from_option(kernel);
    let bars = bars.unwrap_or_else(presets::h100_bars);
    let chosen: Vec<&Bar> = bars
        .iter()
        .filter(|b| bar_filter.is_none_or(|i| i == b.index))
        .collect();
    if chosen.is_empty() {
        let have: Vec<String> = bars.iter().map(|b| format!("BAR{}", b.index)).collect();
        return Err(DemoError::Mm(MmError::Invalid(format!(
            "the device has no BAR{} (it has {})",
            bar_filter.unwrap_or(0),
            have.join(", ")
        ))));
    }
    let mut mappings = Vec::new();
    let mut vfio = Vec::new();
    for b in &chosen {
        for cap in LeafCap::ALL {
            mappings.push(remap_bar(b, cap, behaviour, memory, arch)?);
        }
    }
    for b in &chosen {
        for aligned in [false, true] {
            vfio.push(vfio_touch_bar(
                &bars, b.index, aligned, behaviour, memory, arch,
            )?);
        }
    }
    let leaves = behaviour.pfnmap_leaves(arch);
    Ok(Demo {
        model: behaviour.label(),
        arch,
        pfnmap_cap: match (leaves.pmd, leaves.pud) {
            (_, true) => "pud",
            (true, false) => "pmd",
            _ => "pte",
        },
        mappings,
        vfio,
    })
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// The demo as text tables.
pub fn format(d: &Demo) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "Model: {}", d.model);
    let g = d.arch.geometry();
    let size = |l: Level| g.size_name(l);
    let _ = writeln!(
        s,
        "Architecture: {}: {}\n",
        d.arch,
        match d.pfnmap_cap {
            "pud" => format!(
                "pfnmaps may use {} and {} leaves",
                size(Level::Pud),
                size(Level::Pmd)
            ),
            "pmd" => format!(
                "pfnmaps may use {} leaves at most (ARCH_SUPPORTS_PUD_PFNMAP is not set)",
                size(Level::Pmd)
            ),
            _ => format!(
                "pfnmaps use {} entries only (ARCH_SUPPORTS_HUGE_PFNMAP is not set)",
                size(Level::Pte)
            ),
        }
    );
    let _ = writeln!(
        s,
        "RFC huge remap_pfn_range at a 1 GiB-aligned VA (built-in H100-like device){}\n",
        if d.model.starts_with("Linux") {
            ": this kernel has no huge remap_pfn_range, leaves are capped at PTE size"
        } else {
            ""
        }
    );
    table(
        &mut s,
        [
            ("BAR", 5),
            ("policy", 7),
            ("PUD", 6),
            ("PMD", 7),
            ("PTE", 10),
            ("PT pages", 10),
            ("PT bytes", 14),
            ("time", 12),
        ],
        d.mappings.iter().map(|r| {
            [
                r.bar.to_string(),
                r.policy.to_string(),
                r.leaves.pud.to_string(),
                r.leaves.pmd.to_string(),
                r.leaves.pte.to_string(),
                r.page_table_pages.to_string(),
                hugepfn_units::format_bytes(r.page_table_bytes),
                ms(r.elapsed_ns),
            ]
        }),
    );
    let _ = writeln!(
        s,
        "\nvfio-pci (huge_fault, Linux 6.12+): mmap, then touch every {} page\n",
        size(Level::Pte)
    );
    table(
        &mut s,
        [
            ("BAR", 5),
            ("VA", 9),
            ("address", 16),
            ("faults", 9),
            ("pud/pmd/pte", 14),
            ("leaves", 16),
            ("PT pages", 10),
            ("touch time", 12),
        ],
        d.vfio.iter().map(|r| {
            [
                r.bar.to_string(),
                r.placement.to_string(),
                r.va.clone(),
                r.faults.to_string(),
                r.faults_by_level.to_string(),
                r.leaves.to_string(),
                r.page_table_pages.to_string(),
                ms(r.elapsed_ns),
            ]
        }),
    );
    s
}

/// Appends a table to `s`: the titles of `columns`, then `rows`, a line each. A column is a
/// title and a width; the first two columns are left-aligned, the others right-aligned, one
/// space apart.
fn table<const N: usize>(
    s: &mut String,
    columns: [(&str, usize); N],
    rows: impl Iterator<Item = [String; N]>,
) {
    use std::fmt::Write as _;
    let titles = columns.map(|(title, _)| title.to_string());
    for row in std::iter::once(titles).chain(rows) {
        for (i, (cell, (_, width))) in row.iter().zip(columns).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = if i < 2 {
                write!(s, "{sep}{cell:<width$}")
            } else {
                write!(s, "{sep}{cell:>width$}")
            };
        }
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device model's built-in H100 (hugepfn-vfio, which may not depend on the scenario
    /// format) and the scenario format's `h100` preset are the same layout.
    #[test]
    fn the_built_in_h100_is_the_h100_preset() {
        let p = hugepfn_scenario::presets::gpu_preset("h100").expect("preset");
        assert_eq!(preset_bars(p), presets::h100_bars());
        assert_eq!(p.aperture, presets::H100_APERTURE);
    }
}
