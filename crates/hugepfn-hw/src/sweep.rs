//! What a BAR of a given size costs per leaf size, natively and in a VM: faults, page-table
//! memory, TLB misses and estimated access time, all from the model (the data behind
//! `hugepfn report`).
//!
//! - Faults: leaves installed for the whole BAR. Natively that is the process's faults when the
//!   BAR is touched through vfio-pci's `huge_fault` (one leaf per fault; `hugepfn demo` checks
//!   this on the fault path itself); in a VM, the guest's faults plus the EPT violations that
//!   install the EPT leaves mapping the BAR (the EPT's own count).
//! - Page-table memory: table pages held by the (guest) page table, plus the EPT's in a VM.
//! - TLB misses and time: uniform random 8-byte loads over the BAR ([`crate::workload`]), per
//!   load: L1 DTLB misses, STLB misses (walks), and the calibrated estimate.
//!
//! In a VM the EPT maps the BAR with the same leaf size as the guest (KVM's
//! `host_pfn_mapping_level` follows the host's mapping of the BAR's VMA).

use hugepfn_mm::{LeafCap, Level};
use serde::Serialize;

use crate::calib::Costs;
use crate::config::CpuModel;
use crate::mmu::Mmu;
use crate::sim::{MAP_VA, Mapping, SimError, Translation};
use crate::workload::{self, Pattern, Workload};

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SweepPoint {
    /// BAR bytes.
    pub bar: u64,
    /// Leaf size in bytes.
    pub leaf: u64,
    /// In a VM.
    pub vm: bool,
    /// Faults (and EPT violations) to map the whole BAR.
    pub faults: u64,
    /// Page-table bytes (guest and EPT in a VM).
    pub table_bytes: u64,
    /// L1 DTLB misses per 1000 loads.
    pub l1_misses_per_k: f64,
    /// STLB misses (walks) per 1000 loads.
    pub walks_per_k: f64,
    /// Walk memory references per load.
    pub walk_refs_per_load: f64,
    /// Estimated ns per load.
    pub ns_per_load: f64,
}

/// Leaf caps of the sweep.
pub const LEAVES: [(LeafCap, Level); 3] = [
    (LeafCap::Pte, Level::Pte),
    (LeafCap::Pmd, Level::Pmd),
    (LeafCap::Pud, Level::Pud),
];

/// One point: maps `bar` bytes with leaves of `leaf`, natively or in a VM, and runs `loads`
/// random loads after `warmup`.
pub fn point(
    cpu: &CpuModel,
    costs: &Costs,
    bar: u64,
    leaf: Level,
    vm: bool,
    loads: u64,
    warmup: u64,
) -> Result<SweepPoint, SimError> {
    let cap = match leaf {
        Level::Pte => LeafCap::Pte,
        Level::Pmd => LeafCap::Pmd,
        _ => LeafCap::Pud,
    };
    let tr = if vm {
        Translation::Nested(leaf)
    } else {
        Translation::Native
    };
    let map = Mapping::build(cap, tr, bar)?;
    let (faults, table_bytes) = match &map {
        Mapping::Native(pt) => (
            pt.count_leaves(MAP_VA, MAP_VA + bar).total(),
            pt.table_counts().bytes(),
        ),
        Mapping::Nested(n) => (
            n.guest.count_leaves(MAP_VA, MAP_VA + bar).total() + n.ept_data_leaves,
            n.guest.table_counts().bytes() + n.host.ept.table_pages() * 4096,
        ),
    };
    let mut mmu = Mmu::new(cpu);
    let w = Workload {
        pattern: Pattern::Random,
        offset: 0,
        len: bar,
        count: loads,
        warmup,
        seed: 7,
    };
    let r = workload::run(&mut mmu, map.space(), MAP_VA, &w, costs)?;
    let n = r.counters.accesses.max(1) as f64;
    Ok(SweepPoint {
        bar,
        leaf: leaf.size(),
        vm,
        faults,
        table_bytes,
        l1_misses_per_k: 1000.0 * r.counters.l1_misses() as f64 / n,
        walks_per_k: 1000.0 * r.counters.walks as f64 / n,
        walk_refs_per_load: r.counters.walk_refs as f64 / n,
        ns_per_load: r.ns_per_access(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigger_leaves_cost_less() {
        let cpu = CpuModel::golden_cove();
        let c = Costs::default();
        let mut prev: Option<SweepPoint> = None;
        for (_, leaf) in LEAVES {
            let p = point(&cpu, &c, 1 << 30, leaf, false, 3000, 3000).unwrap();
            assert_eq!(p.faults, (1u64 << 30) / leaf.size());
            if let Some(q) = prev {
                assert!(p.faults < q.faults && p.table_bytes < q.table_bytes);
                assert!(p.ns_per_load <= q.ns_per_load, "{p:?} {q:?}");
            }
            prev = Some(p);
        }
        let v = point(&cpu, &c, 1 << 30, Level::Pmd, true, 3000, 3000).unwrap();
        assert_eq!(v.faults, 2 * 512);
        assert!(v.table_bytes > prev.unwrap().table_bytes);
    }
}
