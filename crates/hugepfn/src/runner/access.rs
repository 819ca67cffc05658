//! The runner's `access` step: a workload of loads over a mapping, simulated by the MMU model
//! (`hugepfn-hw`) over the process's real page tables.
//!
//! 1. The range is touched for reading through the Mm's fault path (`Mm::access_range`, one
//!    access per 4 KiB page, as a `touch` with `access = "read"`), so every page the kernel
//!    would map on first access has its leaf; those faults are the step's `faults` (zero when
//!    an earlier `touch` mapped the range). Pages outside any VMA are the step's `skipped`.
//! 2. The workload runs on a cold [`Mmu`] of the step's CPU preset; its walker reads the
//!    process's `PageTables` (the leaves actually installed: PUD, PMD or PTE). With `vm`, the
//!    process's tables are taken as a guest's page tables (table frames and leaf addresses as
//!    guest-physical) over an EPT that maps every page-table frame and every physical page the
//!    range's leaves cover with the given host page size ([`EptTable::covering`]).
//! 3. Loads whose walk finds no usable leaf (SIGBUS regions, `PROT_NONE`) are `walk_faults`;
//!    they are not retried.
//!
//! Counts depend only on the scenario (CPU preset, seed); the time estimate uses the costs of
//! the calibration (`calibration/local.toml` in the working directory, else the committed
//! `calibration/this-machine.toml`, else built-in guesses) and is reported, never checked.
//!
//! A workload the model refuses (a length or offset that is not a multiple of 8, a chase over
//! a length that is not whole 4 KiB pages) is the step's `EINVAL`; one over a limit of this
//! tool ([`MAX_CHASE_PAGES`] pages to chase, [`MAX_LOADS`] loads) is `E2BIG`, refused before
//! anything is allocated or run; an `access` of a mapping whose mmap failed is `EFAULT`.

use hugepfn_hw::calib::Calibration;
use hugepfn_hw::config::CpuModel;
use hugepfn_hw::nested::EptTable;
use hugepfn_hw::{Costs, Mmu, Pattern, Space, Translation, Workload, workload};
use hugepfn_mm::Level;
use hugepfn_mm::addr::UserAddr;
use hugepfn_scenario::{AccessEstimate, AccessPattern, AccessStep, TableCounts, TlbCounters};

use super::ModelRun;

/// What an `access` step produced, for the step's report.
pub(super) struct AccessOutput {
    /// Counted into the actor's counters.
    pub tlb: TlbCounters,
    /// The step's `access` JSON.
    pub estimate: AccessEstimate,
}

/// The costs to price loads with, and where they came from (loaded once per run).
pub(super) fn find_costs() -> (Costs, String) {
    match Calibration::find(None) {
        Ok(Some((cal, from))) => (cal.costs, from),
        Ok(None) => (Costs::default(), "built-in default (a guess)".into()),
        Err(e) => (
            Costs::default(),
            format!("built-in default (the calibration could not be read: {e})"),
        ),
    }
}

/// The most 4 KiB pages a `chase` may cover: 256 GiB (its visiting order is a permutation of
/// the pages, 4 bytes each, held in memory).
pub const MAX_CHASE_PAGES: u64 = 1 << 26;

/// The most loads (`count` + `warmup`) one `access` step simulates: 2^34, minutes of CPU.
pub const MAX_LOADS: u64 = 1 << 34;

/// Loads in one pass over `len` bytes (the default `count`).
pub(super) fn one_pass(a: &AccessStep, len: u64) -> u64 {
    match a.pattern {
        AccessPattern::Sequential => len / 8,
        AccessPattern::Strided => len.div_ceil(a.stride.max(1)),
        // One load per 64-byte line, on average.
        AccessPattern::Random => (len / 64).max(1),
        AccessPattern::Chase => (len / 4096) * u64::from(a.lines),
    }
}

fn host_level(bytes: u64) -> Level {
    match bytes {
        b if b >= 1 << 30 => Level::Pud,
        b if b >= 2 << 20 => Level::Pmd,
        _ => Level::Pte,
    }
}

impl ModelRun {
    /// Runs an `access` step; returns its errno (if any), the pages skipped by the touch that
    /// populates the range, and what the simulation counted.
    pub(super) fn access_step(
        &mut self,
        a: &AccessStep,
    ) -> (Option<String>, u64, Option<AccessOutput>) {
        let proc = a.process.as_deref();
        let (mm, va, maplen) = match self.target(proc, &a.map) {
            Ok(x) => x,
            Err(e) => return (Some(e), 0, None),
        };
        let Some(va) = va else {
            return (Some("EFAULT".into()), 0, None);
        };
        let len = a.len.resolve(maplen.saturating_sub(a.offset));
        let Some(start) = va.checked_add(a.offset) else {
            return (Some("EINVAL".into()), 0, None);
        };
        let Some(end) = start.checked_add(len) else {
            return (Some("EINVAL".into()), 0, None);
        };
        // 0. Over the tool's limits: refused up front (issue 17).
        let count = a.count.unwrap_or_else(|| one_pass(a, len));
        if (a.pattern == AccessPattern::Chase && len / 4096 > MAX_CHASE_PAGES)
            || count.saturating_add(a.warmup) > MAX_LOADS
        {
            return (Some("E2BIG".into()), 0, None);
        }
        // The hardware model (hugepfn-hw's walker, TLB and caches) walks 4 KiB-granule tables
        // only: a 16 or 64 KiB-page machine is refused, not walked with the wrong indices.
        if mm.page_size() != 4096 {
            return (Some("EOPNOTSUPP".into()), 0, None);
        }
        // 1. Populate through the fault path.
        let base = start & !0xfff;
        let pages = (end - base).div_ceil(4096);
        let touched = mm.access_range(UserAddr::new(base), pages, 4096, false, false);
        // 2. The workload.
        let pattern = match a.pattern {
            AccessPattern::Sequential => Pattern::Sequential,
            AccessPattern::Strided => Pattern::Strided { stride: a.stride },
            AccessPattern::Random => Pattern::Random,
            AccessPattern::Chase => Pattern::Chase { lines: a.lines },
        };
        let w = Workload {
            pattern,
            offset: 0,
            len,
            count,
            warmup: a.warmup,
            seed: a.seed,
        };
        let cpu = CpuModel::preset(a.cpu.name()).unwrap_or_default();
        let (costs, costs_from) = self.costs.get_or_insert_with(find_costs).clone();
        let pt = mm.page_tables();
        let (translation, ept) = match a.vm {
            None => (Translation::Native, None),
            Some(bytes) => {
                let level = host_level(bytes);
                let mut ranges: Vec<(u64, u64)> = self
                    .phys
                    .leak_check()
                    .into_iter()
                    .map(|(pa, _)| (pa.as_u64(), pa.as_u64() + 4096))
                    .collect();
                let mut addr = start;
                while addr < end {
                    match pt.lookup(UserAddr::new(addr)) {
                        Some((leaf, _)) => {
                            let size = leaf.level.size();
                            let pa = leaf.pfn.as_u64() * 4096;
                            ranges.push((pa, pa + size));
                            addr = (addr & !(size - 1)).saturating_add(size);
                        }
                        None => addr = (addr & !0xfff).saturating_add(4096),
                    }
                }
                match EptTable::covering(level, ranges) {
                    Ok(e) => (Translation::Nested(level), Some(e)),
                    Err(_) => return (Some("ENOMEM".into()), touched.no_vma, None),
                }
            }
        };
        let space = match &ept {
            None => Space::Native(pt),
            Some(host) => Space::Nested { guest: pt, host },
        };
        let mut mmu = Mmu::new(&cpu);
        let r = match workload::run(&mut mmu, space, UserAddr::new(start), &w, &costs) {
            Ok(r) => r,
            Err(_) => return (Some("EINVAL".into()), touched.no_vma, None),
        };
        let c = &r.counters;
        let by = c.walk_refs_by_level;
        let tlb = TlbCounters {
            loads: c.accesses,
            l1_misses: c.l1_misses(),
            stlb_misses: c.walks,
            walk_faults: c.faults,
            walk_refs: c.walk_refs,
            walk_refs_ept: c.walk_refs_host,
            walk_refs_by_level: TableCounts {
                pte: by[Level::Pte.idx()],
                pmd: by[Level::Pmd.idx()],
                pud: by[Level::Pud.idx()],
                p4d: by[Level::P4d.idx()],
                pgd: by[Level::Pgd.idx()],
            },
        };
        let estimate = AccessEstimate {
            cpu: cpu.name.clone(),
            translation: translation.name().to_string(),
            pattern: a.pattern.name().to_string(),
            costs_from,
            time_ns: r.time_ns,
            ns_per_load: r.ns_per_access(),
            walk_served: c.walk_served,
            data_served: c.data_served,
            pwc_hits: c.pwc_hits,
            nested_tlb_hits: c.nested_tlb_hits,
        };
        (None, touched.no_vma, Some(AccessOutput { tlb, estimate }))
    }
}
