//! The MMU: L1 data TLBs, the second-level TLB, paging-structure caches, the page walker
//! (one- and two-dimensional) and the data caches its references go through.
//!
//! What is modelled, per load (Intel SDM vol. 3A §4.10 "Caching translation information";
//! AMD APM vol. 2 §5.5 and §15.25 "Nested paging"):
//!
//! 1. The L1 DTLB arrays are looked up (in parallel; an array holding several page sizes is
//!    probed for each). A hit costs nothing beyond the load.
//! 2. On a miss the STLB arrays are looked up; a hit fills the L1 DTLB.
//! 3. On a miss the walker starts from the deepest paging-structure cache hit (PDE cache: one
//!    reference left; PDPTE cache: two; PML4E cache: three; none: a walk from CR3) and reads
//!    the real entries of the simulated tables ([`crate::walk::RadixTable`]); each reference is
//!    a load of a 64-byte line through the data caches from [`CpuModel::walker_cache`] on.
//!    Non-leaf entries fill the paging-structure caches; the leaf fills the STLB and L1 DTLB.
//! 4. Nested (2-D): every guest page-table reference is at a guest-physical address, which is
//!    first translated through the "nested TLB" (gPA page → host page; AMD's NTLB, Intel's
//!    EPT-side caching) or, on a miss, through a walk of the second stage (the EPT, with its own
//!    paging-structure caches); then the guest entry is read at its host address. The final
//!    guest-physical address is translated the same way. The TLB entry that results has the
//!    smaller of the guest and host leaf sizes (a 2 MiB guest page on 4 KiB host pages is cached
//!    as 4 KiB pieces: "splintering"). A cold 2-D walk with 4-level tables on both sides makes
//!    24 references (Bhargava et al., ASPLOS 2008).
//!
//! Deliberate simplifications: no accessed/dirty-bit writes, no speculative or parallel walks,
//! no prefetching of entries, true LRU everywhere, one address space (no PCID/VPID tags).

use hugepfn_mm::addr::{GuestPhysAddr, InputAddr};
use hugepfn_mm::{Level, UserAddr};

use crate::assoc::SetAssoc;
use crate::cache::{Caches, MEMORY};
use crate::config::{CpuModel, PwcSizes, TlbArray};
use crate::walk::{Entry, RadixTable};

/// What an address is translated through.
#[derive(Clone, Copy)]
pub enum Space<'a> {
    /// A process on bare metal: one page table.
    Native(&'a dyn RadixTable<Addr = UserAddr>),
    /// A process in a VM: the guest's page table (its table addresses are guest-physical) and
    /// the second stage (EPT/NPT) that maps guest-physical to host-physical.
    Nested {
        /// The guest page table.
        guest: &'a dyn RadixTable<Addr = UserAddr>,
        /// The second stage.
        host: &'a dyn RadixTable<Addr = GuestPhysAddr>,
    },
}

impl std::fmt::Debug for Space<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Space::Native(_) => "Native",
            Space::Nested { .. } => "Nested",
        })
    }
}

/// Event counters of an MMU run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Loads.
    pub accesses: u64,
    /// L1 DTLB hits.
    pub l1_hits: u64,
    /// L1 DTLB misses that hit the STLB.
    pub stlb_hits: u64,
    /// STLB misses: page walks.
    pub walks: u64,
    /// Walks that found no leaf (the load would fault; nothing is cached, no data is read).
    pub faults: u64,
    /// Memory references made by walks (both dimensions).
    pub walk_refs: u64,
    /// Of those, references to second-stage (EPT) entries.
    pub walk_refs_host: u64,
    /// References to first-dimension entries (the process's or the guest's page table) by the
    /// level of the entry read, indexed by [`Level::idx`] (PTE, PMD, PUD, P4D, PGD; with
    /// 4-level paging the top entries are the P4D level). Their sum is
    /// `walk_refs - walk_refs_host`.
    #[serde(default)]
    pub walk_refs_by_level: [u64; 5],
    /// Paging-structure cache hits (the walk skipped levels), both dimensions.
    pub pwc_hits: u64,
    /// Nested-TLB hits (a guest-physical page translated without a second-stage walk).
    pub nested_tlb_hits: u64,
    /// Where walk references were served: L1D, L2, L3, memory.
    pub walk_served: [u64; 4],
    /// Where data loads were served: L1D, L2, L3, memory.
    pub data_served: [u64; 4],
}

impl Counters {
    /// Adds `o` into `self`, counter by counter (`self` is destructured whole, so that a
    /// counter added to the struct cannot be left out here).
    pub fn add(&mut self, o: &Counters) {
        let Counters {
            accesses,
            l1_hits,
            stlb_hits,
            walks,
            faults,
            walk_refs,
            walk_refs_host,
            walk_refs_by_level,
            pwc_hits,
            nested_tlb_hits,
            walk_served,
            data_served,
        } = self;
        let counts = [
            (accesses, o.accesses),
            (l1_hits, o.l1_hits),
            (stlb_hits, o.stlb_hits),
            (walks, o.walks),
            (faults, o.faults),
            (walk_refs, o.walk_refs),
            (walk_refs_host, o.walk_refs_host),
            (pwc_hits, o.pwc_hits),
            (nested_tlb_hits, o.nested_tlb_hits),
        ];
        let by_index = walk_refs_by_level
            .iter_mut()
            .zip(o.walk_refs_by_level)
            .chain(walk_served.iter_mut().zip(o.walk_served))
            .chain(data_served.iter_mut().zip(o.data_served));
        for (sum, n) in counts.into_iter().chain(by_index) {
            *sum += n;
        }
    }

    /// `self - o`, field by field (counters taken before and after a run).
    pub fn since(&self, o: &Counters) -> Counters {
        let mut d = *self;
        d.accesses -= o.accesses;
        d.l1_hits -= o.l1_hits;
        d.stlb_hits -= o.stlb_hits;
        d.walks -= o.walks;
        d.faults -= o.faults;
        d.walk_refs -= o.walk_refs;
        d.walk_refs_host -= o.walk_refs_host;
        for i in 0..5 {
            d.walk_refs_by_level[i] -= o.walk_refs_by_level[i];
        }
        d.pwc_hits -= o.pwc_hits;
        d.nested_tlb_hits -= o.nested_tlb_hits;
        for i in 0..4 {
            d.walk_served[i] -= o.walk_served[i];
            d.data_served[i] -= o.data_served[i];
        }
        d
    }

    /// L1 DTLB misses.
    pub fn l1_misses(&self) -> u64 {
        self.accesses - self.l1_hits
    }
}

/// Page-size code used in TLB tags.
fn size_code(shift: u32) -> u64 {
    match shift {
        12 => 0,
        21 => 1,
        _ => 2,
    }
}

#[derive(Debug, Clone)]
struct Tlb {
    arrays: Vec<(TlbArray, SetAssoc)>,
}

impl Tlb {
    fn new(shape: &[TlbArray]) -> Self {
        Tlb {
            arrays: shape
                .iter()
                .map(|a| {
                    (
                        a.clone(),
                        SetAssoc::new(a.entries as usize, a.ways as usize, false),
                    )
                })
                .collect(),
        }
    }

    /// Looks `va` up in every array for every size it holds; returns (page PA base, shift).
    #[inline]
    fn lookup(&mut self, va: u64) -> Option<(u64, u32)> {
        for (shape, arr) in &mut self.arrays {
            for shift in [12u32, 21, 30] {
                if shape.sizes.holds(shift) {
                    let tag = ((va >> shift) << 2) | size_code(shift);
                    if let Some(pa) = arr.lookup(tag) {
                        return Some((pa, shift));
                    }
                }
            }
        }
        None
    }

    /// Inserts a translation of a page of `shift` into every array that can hold it, as the
    /// largest size the array holds that is not larger than the page (1 GiB pages go to a
    /// 4K/2M array as 2 MiB pieces).
    #[inline]
    fn insert(&mut self, va: u64, pa: u64, shift: u32) {
        for (shape, arr) in &mut self.arrays {
            let Some(s) = [30u32, 21, 12]
                .into_iter()
                .find(|&s| s <= shift && shape.sizes.holds(s))
            else {
                continue;
            };
            let mask = (1u64 << s) - 1;
            let tag = ((va >> s) << 2) | size_code(s);
            arr.insert(tag, pa & !mask);
        }
    }

    fn clear(&mut self) {
        for (_, a) in &mut self.arrays {
            a.clear();
        }
    }
}

/// Paging-structure caches of one dimension: key (address bits above the entry's level) → the
/// next table's physical address.
#[derive(Debug, Clone)]
struct Pwc {
    pml4e: SetAssoc,
    pdpte: SetAssoc,
    pde: SetAssoc,
}

impl Pwc {
    fn new(s: &PwcSizes) -> Self {
        let fa = |n: u32| SetAssoc::new(n as usize, n as usize, false);
        Pwc {
            pml4e: fa(s.pml4e),
            pdpte: fa(s.pdpte),
            pde: fa(s.pde),
        }
    }

    fn cache_of(&mut self, level: Level) -> Option<&mut SetAssoc> {
        match level {
            Level::P4d => Some(&mut self.pml4e),
            Level::Pud => Some(&mut self.pdpte),
            Level::Pmd => Some(&mut self.pde),
            _ => None,
        }
    }

    /// The deepest cached table for `addr`: (table PA, level of its entries).
    fn deepest(&mut self, addr: u64) -> Option<(u64, Level)> {
        for level in [Level::Pmd, Level::Pud, Level::P4d] {
            let key = addr >> level.shift();
            if let Some(c) = self.cache_of(level)
                && let Some(t) = c.lookup(key)
            {
                return Some((t, level.lower()?));
            }
        }
        None
    }

    fn clear(&mut self) {
        self.pml4e.clear();
        self.pdpte.clear();
        self.pde.clear();
    }
}

/// Result of one translated load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Translated (physical address of the load) and the data read.
    Loaded {
        /// Host-physical address.
        pa: u64,
        /// Size of the TLB entry used (12, 21 or 30).
        shift: u32,
    },
    /// No leaf maps the address (in the guest or the second stage).
    Fault,
}

/// The MMU of one core with its data caches.
#[derive(Debug, Clone)]
pub struct Mmu {
    cpu: CpuModel,
    l1: Tlb,
    stlb: Tlb,
    pwc: Pwc,
    pwc2: Pwc,
    ntlb: SetAssoc,
    caches: Caches,
    /// Counters since creation (or the last [`Mmu::reset_counters`]).
    pub counters: Counters,
}

impl Mmu {
    /// A cold MMU of the given shape (call [`CpuModel::validate`] first for user input).
    pub fn new(cpu: &CpuModel) -> Self {
        Mmu {
            l1: Tlb::new(&cpu.l1_dtlb),
            stlb: Tlb::new(&cpu.stlb),
            pwc: Pwc::new(&cpu.pwc),
            pwc2: Pwc::new(&cpu.pwc_second),
            ntlb: SetAssoc::new(cpu.nested_tlb as usize, cpu.nested_tlb as usize, false),
            caches: Caches::new(&cpu.caches),
            cpu: cpu.clone(),
            counters: Counters::default(),
        }
    }

    /// The shape.
    pub fn cpu(&self) -> &CpuModel {
        &self.cpu
    }

    /// Zeroes the counters (the caches stay warm).
    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
    }

    /// Flushes every TLB and paging-structure cache (a CR3 write without PCID, `invept`).
    pub fn flush_tlb(&mut self) {
        self.l1.clear();
        self.stlb.clear();
        self.pwc.clear();
        self.pwc2.clear();
        self.ntlb.clear();
    }

    /// Empties the data caches too.
    pub fn flush_all(&mut self) {
        self.flush_tlb();
        self.caches.clear();
    }

    #[inline]
    fn walker_read(&mut self, pa: u64, host: bool, level: Level) {
        let from = self.cpu.walker_cache;
        let s = self.caches.read(pa, from);
        self.counters.walk_refs += 1;
        if host {
            self.counters.walk_refs_host += 1;
        } else {
            self.counters.walk_refs_by_level[level.idx()] += 1;
        }
        self.counters.walk_served[s.min(MEMORY)] += 1;
    }

    /// A walk of one dimension with its paging-structure caches. `xlate` turns a table's
    /// address into the host address the entry is read at (identity natively; a second-stage
    /// translation for guest tables); `None` from it aborts the walk.
    fn walk_dim<A: InputAddr>(
        &mut self,
        t: &dyn RadixTable<Addr = A>,
        addr: u64,
        host_dim: bool,
        xlate: &mut dyn FnMut(&mut Mmu, u64) -> Option<u64>,
    ) -> Option<(u64, Level)> {
        let pwc_hit = if host_dim {
            self.pwc2.deepest(addr)
        } else {
            self.pwc.deepest(addr)
        };
        let (mut table, mut level) = match pwc_hit {
            Some(x) => {
                self.counters.pwc_hits += 1;
                x
            }
            None => (t.root(), t.top()),
        };
        loop {
            let index = level.index(addr);
            let entry_addr = table + index as u64 * 8;
            let hpa = xlate(self, entry_addr)?;
            self.walker_read(hpa, host_dim, level);
            match t.entry(table, level, index) {
                Entry::Table(next) => {
                    let pwc = if host_dim {
                        &mut self.pwc2
                    } else {
                        &mut self.pwc
                    };
                    if let Some(c) = pwc.cache_of(level) {
                        c.insert(addr >> level.shift(), next);
                    }
                    table = next;
                    level = level.lower()?;
                }
                Entry::Leaf(base) => {
                    let off = addr & (level.size() - 1);
                    return Some((base + off, level));
                }
                Entry::Absent => return None,
            }
        }
    }

    /// Guest-physical → host-physical for a guest page-table reference or the final address:
    /// the nested TLB, else a second-stage walk. Returns (host PA, host leaf level).
    fn gpa_to_hpa(
        &mut self,
        host: &dyn RadixTable<Addr = GuestPhysAddr>,
        gpa: u64,
    ) -> Option<(u64, Level)> {
        let key = gpa >> 12;
        if let Some(v) = self.ntlb.lookup(key) {
            self.counters.nested_tlb_hits += 1;
            let level = match v & 3 {
                0 => Level::Pte,
                1 => Level::Pmd,
                _ => Level::Pud,
            };
            return Some(((v & !0xfff) | (gpa & 0xfff), level));
        }
        let (hpa, level) = self.walk_dim(host, gpa, true, &mut |_, a| Some(a))?;
        let code = match level {
            Level::Pte => 0,
            Level::Pmd => 1,
            _ => 2,
        };
        self.ntlb.insert(key, (hpa & !0xfff) | code);
        Some((hpa, level))
    }

    /// A full translation after an STLB miss: (host PA, TLB entry shift).
    fn page_walk(&mut self, space: Space<'_>, va: u64) -> Option<(u64, u32)> {
        match space {
            Space::Native(t) => {
                let (pa, level) = self.walk_dim(t, va, false, &mut |_, a| Some(a))?;
                Some((pa, level.shift()))
            }
            Space::Nested { guest, host } => {
                let (gpa, glevel) = self.walk_dim(guest, va, false, &mut |m, a| {
                    m.gpa_to_hpa(host, a).map(|x| x.0)
                })?;
                let (hpa, hlevel) = self.gpa_to_hpa(host, gpa)?;
                Some((hpa, glevel.shift().min(hlevel.shift())))
            }
        }
    }

    /// One load of 8 bytes at `va`.
    #[inline]
    pub fn load(&mut self, space: Space<'_>, va: UserAddr) -> Outcome {
        let va = va.as_u64();
        self.counters.accesses += 1;
        let (pa, shift) = if let Some((base, shift)) = self.l1.lookup(va) {
            self.counters.l1_hits += 1;
            (base | (va & ((1u64 << shift) - 1)), shift)
        } else if let Some((base, shift)) = self.stlb.lookup(va) {
            self.counters.stlb_hits += 1;
            self.l1.insert(va, base, shift);
            (base | (va & ((1u64 << shift) - 1)), shift)
        } else {
            self.counters.walks += 1;
            match self.page_walk(space, va) {
                Some((pa, shift)) => {
                    let base = pa & !((1u64 << shift) - 1);
                    self.stlb.insert(va, base, shift);
                    self.l1.insert(va, base, shift);
                    (pa, shift)
                }
                None => {
                    self.counters.faults += 1;
                    return Outcome::Fault;
                }
            }
        };
        let s = self.caches.read(pa, 0);
        self.counters.data_served[s.min(MEMORY)] += 1;
        Outcome::Loaded { pa, shift }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::Nested;
    use crate::test_tables::native;
    use hugepfn_mm::LeafCap;

    #[test]
    fn counters_add_sums_every_counter() {
        let c = Counters {
            accesses: 1,
            l1_hits: 2,
            stlb_hits: 3,
            walks: 4,
            faults: 5,
            walk_refs: 6,
            walk_refs_host: 7,
            walk_refs_by_level: [8, 9, 10, 11, 12],
            pwc_hits: 13,
            nested_tlb_hits: 14,
            walk_served: [15, 16, 17, 18],
            data_served: [19, 20, 21, 22],
        };
        let mut sum = Counters::default();
        sum.add(&c);
        assert_eq!(sum, c);
        sum.add(&c);
        assert_eq!(sum.accesses, 2);
        assert_eq!(sum.nested_tlb_hits, 28);
        assert_eq!(sum.walk_refs_by_level, [16, 18, 20, 22, 24]);
        assert_eq!(sum.walk_served, [30, 32, 34, 36]);
        assert_eq!(sum.data_served, [38, 40, 42, 44]);
    }

    #[test]
    fn cold_walk_then_hits() {
        let pt = native(LeafCap::Pte, 8 << 20);
        let mut m = Mmu::new(&CpuModel::golden_cove());
        let va = (1 << 30) + 0x5008;
        assert_eq!(
            m.load(Space::Native(&pt), UserAddr::new(va)),
            Outcome::Loaded {
                pa: (64u64 << 30) + 0x5008,
                shift: 12
            }
        );
        assert_eq!(m.counters.walks, 1);
        assert_eq!(m.counters.walk_refs, 4);
        m.load(Space::Native(&pt), UserAddr::new(va + 8));
        assert_eq!(m.counters.l1_hits, 1);
        // Next page: the PDE cache leaves one reference.
        m.load(Space::Native(&pt), UserAddr::new(va + 4096));
        assert_eq!(m.counters.walks, 2);
        assert_eq!(m.counters.walk_refs, 5);
        assert_eq!(m.counters.pwc_hits, 1);
        // Cold: P4D, PUD, PMD, PTE; then the PTE only.
        assert_eq!(m.counters.walk_refs_by_level, [2, 1, 1, 1, 0]);
    }

    #[test]
    fn huge_leaves_shorten_walks() {
        for (cap, refs, shift) in [(LeafCap::Pmd, 3, 21), (LeafCap::Pud, 2, 30)] {
            let pt = native(cap, 2 << 30);
            let mut m = Mmu::new(&CpuModel::golden_cove());
            match m.load(Space::Native(&pt), UserAddr::new((1 << 30) + 0x1234)) {
                Outcome::Loaded { shift: s, .. } => assert_eq!(s, shift),
                Outcome::Fault => panic!("fault"),
            }
            assert_eq!(m.counters.walk_refs, refs);
        }
    }

    #[test]
    fn unmapped_faults() {
        let pt = native(LeafCap::Pmd, 2 << 20);
        let mut m = Mmu::new(&CpuModel::zen4());
        assert_eq!(
            m.load(Space::Native(&pt), UserAddr::new(5 << 30)),
            Outcome::Fault
        );
        assert_eq!(m.counters.faults, 1);
        assert_eq!(m.counters.data_served.iter().sum::<u64>(), 0);
    }

    #[test]
    fn cold_nested_walk_is_24_references() {
        let n = Nested::build(LeafCap::Pte, Level::Pte, UserAddr::new(1 << 30), 4 << 20).unwrap();
        let none = PwcSizes {
            pml4e: 0,
            pdpte: 0,
            pde: 0,
        };
        let mut m = Mmu::new(&CpuModel {
            nested_tlb: 0,
            pwc: none,
            pwc_second: none,
            ..CpuModel::golden_cove()
        });
        let va = n.va + 0x3000;
        assert!(matches!(
            m.load(n.space(), va),
            Outcome::Loaded { shift: 12, .. }
        ));
        assert_eq!(m.counters.walk_refs, 24);
        assert_eq!(m.counters.walk_refs_host, 20);
        assert_eq!(m.counters.walk_refs_by_level, [1, 1, 1, 1, 0]);
    }

    #[test]
    fn splintering_gives_the_smaller_page() {
        let n = Nested::build(LeafCap::Pmd, Level::Pte, UserAddr::new(1 << 30), 4 << 20).unwrap();
        let mut m = Mmu::new(&CpuModel::golden_cove());
        assert!(matches!(
            m.load(n.space(), n.va),
            Outcome::Loaded { shift: 12, .. }
        ));
        let n = Nested::build(LeafCap::Pmd, Level::Pud, UserAddr::new(1 << 30), 4 << 20).unwrap();
        let mut m = Mmu::new(&CpuModel::golden_cove());
        assert!(matches!(
            m.load(n.space(), n.va),
            Outcome::Loaded { shift: 21, .. }
        ));
    }

    #[test]
    fn one_gib_pages_as_2m_pieces_on_zen4() {
        let pt = native(LeafCap::Pud, 1 << 30);
        let mut m = Mmu::new(&CpuModel::zen4());
        let s = Space::Native(&pt);
        m.load(s, UserAddr::new(1 << 30));
        // Another 2 MiB piece of the same 1 GiB page: the L1 (all sizes) holds it as 1 GiB.
        m.load(s, UserAddr::new((1 << 30) + (4 << 20)));
        assert_eq!(m.counters.l1_hits, 1);
    }
}
