//! Counts per level: [`LeafCounts`] per leaf level — 1 GiB PUD, 2 MiB PMD, 4 KiB PTE — the one
//! type every table (CPU, VT-d, EPT), the fault statistics and the reports (model and kernel
//! alike) count leaves and faults by level with; [`TableCounts`] the page-table pages per
//! level. hugepfn-pt adds atomic twins for counters that threads update.
//!
//! Both are generic over what is kept per level: `u64` counts (the default), `Option<u64>` for a
//! scenario's expectation (`None`: not checked; a missing key reads as `None`, while a count
//! must be given), or anything else per level ([`LeafCounts::zip`], [`TableCounts::zip`]).

use serde::{Deserialize, Serialize};

use crate::level::{Geometry, Level};

/// Leaves (or faults, or anything) by leaf level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafCounts<T = u64> {
    /// 1 GiB leaves (64 GiB with 16 KiB pages).
    pub pud: T,
    /// 2 MiB leaves (32 MiB with 16 KiB pages, 512 MiB with 64 KiB).
    pub pmd: T,
    /// 4 KiB leaves (the page).
    pub pte: T,
}

impl<T> LeafCounts<T> {
    /// Level by level `f(self, o)`.
    pub fn zip<U, V>(self, o: LeafCounts<U>, mut f: impl FnMut(T, U) -> V) -> LeafCounts<V> {
        LeafCounts {
            pud: f(self.pud, o.pud),
            pmd: f(self.pmd, o.pmd),
            pte: f(self.pte, o.pte),
        }
    }
}

/// `pud/pmd/pte`, as the tables print leaves and faults by level.
impl std::fmt::Display for LeafCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.pud, self.pmd, self.pte)
    }
}

impl LeafCounts {
    /// Adds one leaf of `level`.
    pub fn add(&mut self, level: Level, n: u64) {
        match level {
            Level::Pud => self.pud += n,
            Level::Pmd => self.pmd += n,
            Level::Pte => self.pte += n,
            _ => {}
        }
    }

    /// Count at `level`.
    pub fn get(&self, level: Level) -> u64 {
        match level {
            Level::Pud => self.pud,
            Level::Pmd => self.pmd,
            Level::Pte => self.pte,
            _ => 0,
        }
    }

    /// Bytes mapped, with 4 KiB pages ([`LeafCounts::bytes_with`] for another granule).
    pub fn bytes(&self) -> u64 {
        self.bytes_with(Geometry::G4K)
    }

    /// Bytes mapped by leaves of `granule`'s sizes.
    pub fn bytes_with(&self, granule: Geometry) -> u64 {
        Level::LEAF_LEVELS
            .iter()
            .map(|&l| self.get(l).saturating_mul(granule.size(l)))
            .fold(0u64, u64::saturating_add)
    }

    /// Leaves in all (saturating: counts read from a report may be anything).
    pub fn total(&self) -> u64 {
        self.pud.saturating_add(self.pmd).saturating_add(self.pte)
    }

    /// Level by level `self + o`, saturating.
    pub fn saturating_add(&self, o: &LeafCounts) -> LeafCounts {
        self.zip(*o, u64::saturating_add)
    }

    /// Level by level `self - o`, saturating at 0.
    pub fn saturating_sub(&self, o: &LeafCounts) -> LeafCounts {
        self.zip(*o, u64::saturating_sub)
    }
}

/// Page-table pages by the level of the entries they hold, the top-level PGD page included: what
/// the engine's allocator counts, and what the reports carry (`page_table_pages`) for the model
/// and the kernel alike. With 4-level paging the P4D is folded and its page is accounted as the
/// PGD.
/// Also what is kept per level of entry in general (the page walker's references by level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCounts<T = u64> {
    /// PGD pages (1 per mm).
    pub pgd: T,
    /// P4D pages (0 with 4-level paging, where the p4d is folded).
    pub p4d: T,
    /// PUD pages.
    pub pud: T,
    /// PMD pages.
    pub pmd: T,
    /// PTE pages.
    pub pte: T,
}

impl<T> TableCounts<T> {
    /// Level by level `f(self, o)`.
    pub fn zip<U, V>(self, o: TableCounts<U>, mut f: impl FnMut(T, U) -> V) -> TableCounts<V> {
        TableCounts {
            pgd: f(self.pgd, o.pgd),
            p4d: f(self.p4d, o.p4d),
            pud: f(self.pud, o.pud),
            pmd: f(self.pmd, o.pmd),
            pte: f(self.pte, o.pte),
        }
    }
}

impl TableCounts {
    /// Sum over levels (saturating: counts read from a report may be anything).
    pub fn total(&self) -> u64 {
        Level::ALL
            .iter()
            .map(|&l| self.get(l))
            .fold(0, u64::saturating_add)
    }

    /// Bytes of page tables of 4 KiB ([`TableCounts::bytes_with`] for another granule).
    pub fn bytes(&self) -> u64 {
        self.bytes_with(Geometry::G4K)
    }

    /// Bytes of page tables of `granule`'s page size (a table is one page).
    pub fn bytes_with(&self, granule: Geometry) -> u64 {
        self.total().saturating_mul(granule.page_size())
    }

    /// The count at `level`.
    pub fn get(&self, level: Level) -> u64 {
        match level {
            Level::Pte => self.pte,
            Level::Pmd => self.pmd,
            Level::Pud => self.pud,
            Level::P4d => self.p4d,
            Level::Pgd => self.pgd,
        }
    }

    /// Adds `n` tables at `level`.
    pub fn add(&mut self, level: Level, n: u64) {
        let c = match level {
            Level::Pte => &mut self.pte,
            Level::Pmd => &mut self.pmd,
            Level::Pud => &mut self.pud,
            Level::P4d => &mut self.p4d,
            Level::Pgd => &mut self.pgd,
        };
        *c = c.saturating_add(n);
    }
}

impl std::ops::AddAssign for LeafCounts {
    fn add_assign(&mut self, o: LeafCounts) {
        for l in Level::LEAF_LEVELS {
            self.add(l, o.get(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_add_and_subtract_saturating() {
        let mut c = LeafCounts::default();
        c.add(Level::Pud, 2);
        c.add(Level::Pte, 4);
        c.add(Level::P4d, 9);
        assert_eq!((c.pud, c.pmd, c.pte, c.total()), (2, 0, 4, 6));
        assert_eq!(c.bytes(), 2 * Level::Pud.size() + 4 * 4096);
        let big = LeafCounts { pud: u64::MAX, ..c };
        assert_eq!(big.total(), u64::MAX);
        assert_eq!(c.saturating_sub(&big).pud, 0);
        assert_eq!(c.saturating_add(&c).pte, 8);
        assert_eq!(c.to_string(), "2/0/4");
        let mut t = TableCounts::default();
        t.add(Level::Pgd, 1);
        t.add(Level::Pmd, 3);
        assert_eq!((t.total(), t.get(Level::Pmd)), (4, 3));
        assert_eq!(t.bytes_with(Geometry::G16K), 4 * (16 << 10));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"pgd":1,"p4d":0,"pud":0,"pmd":3,"pte":0}"#);
        assert!(serde_json::from_str::<TableCounts>(r#"{"pgd":1,"pxd":2}"#).is_err());
        assert_eq!(
            c.bytes_with(Geometry::G16K),
            2 * (64 << 30) + 4 * (16 << 10)
        );
    }

    #[test]
    fn an_expectation_is_the_same_type_with_options() {
        // A count must be given; an expectation's missing level is not checked.
        assert!(serde_json::from_str::<LeafCounts>(r#"{"pud":1}"#).is_err());
        let want: LeafCounts<Option<u64>> = serde_json::from_str(r#"{"pud":1}"#).unwrap();
        assert_eq!(want, LeafCounts::default().zip(want, |_: u64, w| w));
        assert_eq!((want.pud, want.pmd, want.pte), (Some(1), None, None));
        assert!(serde_json::from_str::<LeafCounts<Option<u64>>>(r#"{"pgd":1}"#).is_err());
        let have = LeafCounts {
            pud: 1,
            pmd: 2,
            pte: 3,
        };
        let ok = want.zip(have, |w, h| w.is_none_or(|w| w == h));
        assert_eq!(
            ok,
            LeafCounts {
                pud: true,
                pmd: true,
                pte: true
            }
        );
        assert_eq!(have.zip(have, |a, b| a + b).to_string(), "2/4/6");
        let refs: TableCounts<Option<u64>> = serde_json::from_str(r#"{"pte":7}"#).unwrap();
        assert_eq!((refs.pte, refs.pgd), (Some(7), None));
    }
}
