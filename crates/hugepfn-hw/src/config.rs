//! The shape of the modelled core: TLBs, paging-structure caches and data caches.
//!
//! Only sizes and associativities live here; what each hit or reference costs in time is the
//! calibration's business ([`crate::calib`]), which may also shrink the last-level cache to the
//! share one core measurably gets ([`CpuModel::with_llc_size`]). Two presets:
//!
//! - [`CpuModel::golden_cove`] — Intel Golden Cove (Sapphire Rapids server core), the default.
//!   Source: *Intel 64 and IA-32 Architectures Optimization Reference Manual* (order 248966,
//!   Golden Cove chapter, "TLB parameters"): load DTLB 96 entries for 4 KiB pages (6-way),
//!   32 for 2M/4M (4-way), 8 for 1 GiB (fully associative); STLB 2048 entries shared by 4 KiB
//!   and 2M/4M pages (16-way) plus 1024 entries for 1 GiB pages (8-way). Caches: 48 KiB L1D
//!   12-way, 2 MiB L2 16-way, 1.875 MiB of LLC per core (we model one core's 15-way slice times
//!   the core count given). What this project could confirm from a public page while writing
//!   this: the L1 DTLB growing from 64 (Sunny Cove) to 96 entries. The STLB and 1 GiB numbers
//!   are quoted from the manual from memory and not re-checked; treat them as the manual's
//!   order of magnitude.
//! - [`CpuModel::zen4`] — AMD Zen 4 (EPYC 9004 "Genoa", family 19h model 11h, the machine this
//!   project is developed on). Source: *Software Optimization Guide for the AMD Family 19h
//!   Processors* (pub. 57647): L1 DTLB 72 entries, fully associative, every page size; L2 DTLB
//!   3072 entries for 4 KiB and 2 MiB pages (1 GiB pages are held as 2 MiB pieces there);
//!   1 MiB L2 8-way; 32 MiB L3 per CCD 16-way. Not re-checked here either: the L2 DTLB's
//!   associativity (modelled 12-way) and the 1 GiB handling.
//!
//! Paging-structure caches (Intel SDM vol. 3A §4.10.3: PML4E, PDPTE and PDE caches; AMD's
//! "page directory cache") have no published sizes; measurements in the literature put them at
//! a few (PML4E), a few (PDPTE) and a few dozen (PDE) entries. The presets use 2 / 4 / 32 and
//! say so: they are guesses, and the calibration cannot tell them apart from walk latency.
//!
//! Nested paging: guest-physical addresses of guest page-table entries are translated through
//! the second stage (EPT / NPT); hardware caches those translations (AMD's "nested TLB", Intel's
//! EPT paging-structure caches). Modelled as a small fully associative cache of gPA page →
//! host page ([`CpuModel::nested_tlb`], 16 entries, a guess) plus second-stage PWCs of the same
//! sizes as the first stage's.

use serde::{Deserialize, Serialize};

/// Which page sizes a TLB array holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PageSizes {
    /// 4 KiB.
    #[serde(default)]
    pub k4: bool,
    /// 2 MiB.
    #[serde(default)]
    pub m2: bool,
    /// 1 GiB.
    #[serde(default)]
    pub g1: bool,
}

impl PageSizes {
    const fn of(k4: bool, m2: bool, g1: bool) -> PageSizes {
        PageSizes { k4, m2, g1 }
    }
    /// Only 4 KiB.
    pub const K4: PageSizes = PageSizes::of(true, false, false);
    /// Only 2 MiB.
    pub const M2: PageSizes = PageSizes::of(false, true, false);
    /// Only 1 GiB.
    pub const G1: PageSizes = PageSizes::of(false, false, true);
    /// 4 KiB and 2 MiB.
    pub const K4_M2: PageSizes = PageSizes::of(true, true, false);
    /// All three.
    pub const ALL: PageSizes = PageSizes::of(true, true, true);

    /// Whether pages of `shift` (12, 21 or 30) go here.
    pub fn holds(self, shift: u32) -> bool {
        match shift {
            12 => self.k4,
            21 => self.m2,
            30 => self.g1,
            _ => false,
        }
    }
}

/// One TLB array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlbArray {
    /// Name in reports.
    pub name: String,
    /// Entries.
    pub entries: u32,
    /// Ways (entries = fully associative).
    pub ways: u32,
    /// Page sizes it holds.
    pub sizes: PageSizes,
}

impl TlbArray {
    fn new(name: &str, entries: u32, ways: u32, sizes: PageSizes) -> Self {
        TlbArray {
            name: name.into(),
            entries,
            ways,
            sizes,
        }
    }
}

/// Paging-structure cache sizes (fully associative, LRU), one per upper level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PwcSizes {
    /// Entries caching PML4 entries (VA bits 47:39 → PDPT).
    pub pml4e: u32,
    /// Entries caching PDPT entries (VA bits 47:30 → page directory).
    pub pdpte: u32,
    /// Entries caching non-leaf PDEs (VA bits 47:21 → page table).
    pub pde: u32,
}

/// The paging-structure caches of both presets, in both dimensions of a walk: 2 PML4E, 4 PDPTE
/// and 32 PDE entries (see the module doc for sources).
const PWC: PwcSizes = PwcSizes {
    pml4e: 2,
    pdpte: 4,
    pde: 32,
};

/// One data-cache level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLevel {
    /// Name in reports (L1D, L2, L3).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Ways.
    pub ways: u32,
}

/// The modelled core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModel {
    /// Preset name.
    pub name: String,
    /// First-level data TLB arrays (looked up in parallel).
    pub l1_dtlb: Vec<TlbArray>,
    /// Second-level (unified) TLB arrays.
    pub stlb: Vec<TlbArray>,
    /// Paging-structure caches of the first (guest or native) dimension.
    pub pwc: PwcSizes,
    /// Paging-structure caches of the second dimension (EPT / nested page table).
    pub pwc_second: PwcSizes,
    /// Entries caching gPA page → host page for guest page-table references.
    pub nested_tlb: u32,
    /// Data caches, innermost first; the line is 64 bytes.
    pub caches: Vec<CacheLevel>,
    /// First cache level the page walker reads through (0: L1D, 1: L2).
    pub walker_cache: usize,
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel::golden_cove()
    }
}

impl CpuModel {
    /// Intel Golden Cove (Sapphire Rapids); see the module doc for sources.
    pub fn golden_cove() -> Self {
        CpuModel::preset_core(
            "golden-cove",
            vec![
                TlbArray::new("dtlb-4k", 96, 6, PageSizes::K4),
                TlbArray::new("dtlb-2m", 32, 4, PageSizes::M2),
                TlbArray::new("dtlb-1g", 8, 8, PageSizes::G1),
            ],
            vec![
                TlbArray::new("stlb", 2048, 16, PageSizes::K4_M2),
                TlbArray::new("stlb-1g", 1024, 8, PageSizes::G1),
            ],
            [
                ("L1D", 48 << 10, 12),
                ("L2", 2 << 20, 16),
                ("L3", 30 << 20, 15),
            ],
            0,
        )
    }

    /// AMD Zen 4 (Genoa); see the module doc for sources.
    pub fn zen4() -> Self {
        CpuModel::preset_core(
            "zen4",
            vec![TlbArray::new("dtlb", 72, 72, PageSizes::ALL)],
            vec![TlbArray::new("l2-dtlb", 3072, 12, PageSizes::K4_M2)],
            [
                ("L1D", 32 << 10, 8),
                ("L2", 1 << 20, 8),
                ("L3", 32 << 20, 16),
            ],
            1,
        )
    }

    /// A preset core: its TLBs, its data caches (name, bytes, ways; innermost first) and the
    /// first level its walker reads through, with what the presets share: [`PWC`] in both
    /// dimensions and a 16-entry nested TLB.
    fn preset_core(
        name: &str,
        l1_dtlb: Vec<TlbArray>,
        stlb: Vec<TlbArray>,
        caches: [(&str, u64, u32); 3],
        walker_cache: usize,
    ) -> Self {
        CpuModel {
            name: name.into(),
            l1_dtlb,
            stlb,
            pwc: PWC,
            pwc_second: PWC,
            nested_tlb: 16,
            caches: caches
                .into_iter()
                .map(|(name, size, ways)| CacheLevel {
                    name: name.into(),
                    size,
                    ways,
                })
                .collect(),
            walker_cache,
        }
    }

    /// A preset by name (`golden-cove`, `zen4`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "golden-cove" | "sapphire-rapids" | "spr" => Some(CpuModel::golden_cove()),
            "zen4" | "genoa" => Some(CpuModel::zen4()),
            _ => None,
        }
    }

    /// The preset closest to the CPU `/proc/cpuinfo` describes (vendor and family), if any.
    pub fn detect(cpuinfo: &str) -> Option<Self> {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let vendor = field("vendor_id")?;
        let family: u32 = field("cpu family")?.parse().ok()?;
        let model: u32 = field("model")?.parse().ok()?;
        match (vendor.as_str(), family) {
            // Family 19h: models 10h-1Fh (Genoa), 60h-7Fh (Raphael, Phoenix), A0h-AFh (Bergamo)
            // are Zen 4; the rest of 19h is Zen 3, whose TLBs are close enough (64-entry L1,
            // 2048-entry L2) that the Zen 4 shape is the better of the two presets.
            ("AuthenticAMD", 0x19 | 0x1a) => {
                let _ = model;
                Some(CpuModel::zen4())
            }
            ("GenuineIntel", 6) => Some(CpuModel::golden_cove()),
            _ => None,
        }
    }

    /// The same core with the last cache level resized to `bytes` (rounded down to whole sets;
    /// unchanged if zero). Used with the LLC size a calibration found effective.
    pub fn with_llc_size(&self, bytes: u64) -> CpuModel {
        let mut c = self.clone();
        if let Some(l) = c.caches.last_mut()
            && bytes > 0
        {
            let set = 64 * u64::from(l.ways.max(1));
            l.size = (bytes / set).max(1) * set;
        }
        c
    }

    /// Checks the shape: every array and cache non-empty, ways dividing entries.
    pub fn validate(&self) -> Result<(), String> {
        for a in self.l1_dtlb.iter().chain(&self.stlb) {
            if a.entries == 0 || a.ways == 0 || a.entries % a.ways != 0 {
                return Err(format!(
                    "TLB array {}: {} entries, {} ways (ways must divide entries)",
                    a.name, a.entries, a.ways
                ));
            }
        }
        if self.caches.is_empty() {
            return Err("at least one data cache level is needed".into());
        }
        for c in &self.caches {
            let lines = c.size / 64;
            if lines == 0 || c.ways == 0 || lines % u64::from(c.ways) != 0 {
                return Err(format!(
                    "cache {}: {} bytes, {} ways (ways must divide the lines)",
                    c.name, c.size, c.ways
                ));
            }
        }
        if self.walker_cache >= self.caches.len() {
            return Err(format!(
                "walker_cache {} but only {} cache levels",
                self.walker_cache,
                self.caches.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        CpuModel::golden_cove().validate().unwrap();
        CpuModel::zen4().validate().unwrap();
    }

    #[test]
    fn detects_this_kind_of_machine() {
        let amd = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n";
        assert_eq!(CpuModel::detect(amd).unwrap().name, "zen4");
        let intel = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n";
        assert_eq!(CpuModel::detect(intel).unwrap().name, "golden-cove");
        assert!(CpuModel::detect("garbage").is_none());
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut c = CpuModel::zen4();
        c.stlb[0].ways = 7;
        assert!(c.validate().is_err());
        let mut c = CpuModel::zen4();
        c.walker_cache = 9;
        assert!(c.validate().is_err());
    }
}
