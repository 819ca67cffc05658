//! Mappings to run workloads over: a range mapped natively by `remap_pfn_range`'s table builder
//! (`hugepfn_mm::PageTables::remap_range`) or inside a VM ([`crate::nested::Nested`]), with the
//! leaf cap of the process (guest) page table and, in a VM, the EPT's leaf size.

use std::sync::Arc;

use hugepfn_mm::{CacheMode, LeafCap, Level, PageTables, Pfn, Pgprot, PhysMem, UserAddr};
use thiserror::Error;

use crate::calib::Costs;
use crate::config::CpuModel;
use crate::mmu::{Counters, Mmu, Space};
use crate::nested::{Nested, NestedError};
use crate::workload::{self, AccessResult, Pattern, Workload, WorkloadError};

/// How translations are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Bare metal.
    Native,
    /// In a VM whose EPT maps guest memory with leaves of this level.
    Nested(Level),
}

impl Translation {
    /// `native`, `nested-4k`, `nested-2m`, `nested-1g`.
    pub fn name(self) -> &'static str {
        match self {
            Translation::Native => "native",
            Translation::Nested(Level::Pte) => "nested-4k",
            Translation::Nested(Level::Pmd) => "nested-2m",
            Translation::Nested(_) => "nested-1g",
        }
    }

    /// Parses [`Translation::name`].
    pub fn parse(s: &str) -> Option<Translation> {
        Some(match s {
            "native" => Translation::Native,
            "nested-4k" => Translation::Nested(Level::Pte),
            "nested-2m" => Translation::Nested(Level::Pmd),
            "nested-1g" => Translation::Nested(Level::Pud),
            _ => return None,
        })
    }
}

/// Building a mapping failed.
#[derive(Debug, Error)]
pub enum SimError {
    /// The native page table could not be built.
    #[error("page table: {0}")]
    Native(String),
    /// The nested one could not.
    #[error(transparent)]
    Nested(#[from] NestedError),
    /// The workload is malformed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// Where a simulated mapping's data lives physically (host-physical for native mappings).
pub const DATA_PA: u64 = 64 << 30;
/// Where simulated mappings start (1 GiB aligned, so every leaf size fits).
pub const MAP_VA: UserAddr = UserAddr::new(1 << 40);

/// A mapped range (one per simulation: the variants' sizes do not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Mapping {
    /// Native page tables.
    Native(PageTables),
    /// Guest page tables and EPT.
    Nested(Nested),
}

impl Mapping {
    /// Maps `len` bytes at [`MAP_VA`] with leaves up to `cap`.
    pub fn build(cap: LeafCap, tr: Translation, len: u64) -> Result<Mapping, SimError> {
        match tr {
            Translation::Native => {
                let pt = PageTables::new(Arc::new(PhysMem::default()), Default::default())
                    .map_err(|e| SimError::Native(e.to_string()))?;
                let pfn = Pfn::new(DATA_PA >> 12).map_err(|e| SimError::Native(e.to_string()))?;
                pt.remap_range(
                    MAP_VA,
                    MAP_VA + len,
                    pfn,
                    Pgprot::SHARED.with_cache(CacheMode::Wb),
                    cap,
                )
                .map_err(|e| SimError::Native(e.to_string()))?;
                Ok(Mapping::Native(pt))
            }
            Translation::Nested(host) => {
                Ok(Mapping::Nested(Nested::build(cap, host, MAP_VA, len)?))
            }
        }
    }

    /// The space to translate through.
    pub fn space(&self) -> Space<'_> {
        match self {
            Mapping::Native(pt) => Space::Native(pt),
            Mapping::Nested(n) => n.space(),
        }
    }
}

/// Untimed loads a chase over `len` bytes needs to reach a steady state on `cpu`: two passes
/// over the last-level cache's lines (at least 100,000), capped at one cycle of the chain.
pub fn chase_warmup(cpu: &CpuModel, len: u64, lines: u32) -> u64 {
    let llc_lines = cpu.caches.last().map_or(0, |c| c.size / 64);
    let cycle = (len / 4096) * u64::from(lines.clamp(1, 64));
    (2 * llc_lines).max(100_000).min(cycle)
}

/// A `lat_mem_rd -t` chase: `count` loads over a fresh mapping of `len` bytes with leaves up to
/// `cap`, translated by `tr`, visiting `lines` cache lines per page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chase {
    /// Largest leaf of the process (guest) page table.
    pub cap: LeafCap,
    /// Native, or nested with the EPT's leaf size.
    pub tr: Translation,
    /// Bytes mapped and chased over.
    pub len: u64,
    /// Cache lines visited per 4 KiB page.
    pub lines: u32,
    /// Timed loads.
    pub count: u64,
}

/// Runs `chase` on `cpu` with a cold MMU, after [`chase_warmup`] loads.
pub fn chase(cpu: &CpuModel, chase: &Chase, costs: &Costs) -> Result<AccessResult, SimError> {
    let Chase {
        cap,
        tr,
        len,
        lines,
        count,
    } = *chase;
    let map = Mapping::build(cap, tr, len)?;
    let mut mmu = Mmu::new(cpu);
    let w = Workload {
        pattern: Pattern::Chase { lines },
        offset: 0,
        len,
        count,
        warmup: chase_warmup(cpu, len, lines),
        seed: 1,
    };
    Ok(workload::run(&mut mmu, map.space(), MAP_VA, &w, costs)?)
}

/// Counters per load of [`chase`] (for fitting).
pub fn chase_counters(cpu: &CpuModel, c: &Chase) -> Result<Counters, SimError> {
    Ok(chase(cpu, c, &Costs::default())?.counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_names_round_trip() {
        for t in [
            Translation::Native,
            Translation::Nested(Level::Pte),
            Translation::Nested(Level::Pmd),
            Translation::Nested(Level::Pud),
        ] {
            assert_eq!(Translation::parse(t.name()), Some(t));
        }
        assert_eq!(Translation::parse("x"), None);
    }

    #[test]
    fn nested_chase_costs_more_walk_references() {
        let cpu = CpuModel::zen4();
        let c = Costs::default();
        let native = Chase {
            cap: LeafCap::Pte,
            tr: Translation::Native,
            len: 64 << 20,
            lines: 1,
            count: 5000,
        };
        let n = chase(&cpu, &native, &c).unwrap();
        let nested = Chase {
            tr: Translation::Nested(Level::Pte),
            ..native
        };
        let v = chase(&cpu, &nested, &c).unwrap();
        assert!(v.counters.walk_refs > n.counters.walk_refs);
        assert!(v.time_ns > n.time_ns);
    }
}
