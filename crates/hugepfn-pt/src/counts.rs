//! Counters per leaf level: the one type every table (CPU, VT-d, EPT) counts its leaves with,
//! plain ([`LeafCounts`]) and atomic ([`AtomicLeafCounts`], for counters updated by racing
//! threads).

use serde::Serialize;

use crate::level::Level;
use crate::sync::atomic::{AtomicU64, Ordering};

/// Leaves by level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LeafCounts {
    /// 1 GiB leaves.
    pub pud: u64,
    /// 2 MiB leaves.
    pub pmd: u64,
    /// 4 KiB leaves.
    pub pte: u64,
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

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.pud * Level::Pud.size() + self.pmd * Level::Pmd.size() + self.pte * Level::Pte.size()
    }

    /// Leaves in all.
    pub fn total(&self) -> u64 {
        self.pud + self.pmd + self.pte
    }
}

impl std::ops::AddAssign for LeafCounts {
    fn add_assign(&mut self, o: LeafCounts) {
        for l in Level::LEAF_LEVELS {
            self.add(l, o.get(l));
        }
    }
}

/// [`LeafCounts`] that threads update concurrently (relaxed: statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct AtomicLeafCounts([AtomicU64; 3]);

impl AtomicLeafCounts {
    /// Adds `n` leaves of `level` (levels that cannot be leaves are ignored).
    pub fn add(&self, level: Level, n: u64) {
        if level.can_be_leaf() && n > 0 {
            self.0[level.leaf_index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Subtracts `n` leaves of `level`.
    pub fn sub(&self, level: Level, n: u64) {
        if level.can_be_leaf() && n > 0 {
            self.0[level.leaf_index()].fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Adds every level of `c`.
    pub fn add_all(&self, c: LeafCounts) {
        for l in Level::LEAF_LEVELS {
            self.add(l, c.get(l));
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> LeafCounts {
        let mut c = LeafCounts::default();
        for l in Level::LEAF_LEVELS {
            c.add(l, self.0[l.leaf_index()].load(Ordering::Relaxed));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_and_plain_counts_agree() {
        let a = AtomicLeafCounts::default();
        a.add(Level::Pud, 2);
        a.add(Level::Pte, 5);
        a.add(Level::P4d, 9); // not a leaf level: ignored
        a.sub(Level::Pte, 1);
        let c = a.snapshot();
        assert_eq!((c.pud, c.pmd, c.pte), (2, 0, 4));
        assert_eq!(c.total(), 6);
        assert_eq!(c.bytes(), 2 * Level::Pud.size() + 4 * 4096);
        let mut d = c;
        d += c;
        a.add_all(c);
        assert_eq!(a.snapshot(), d);
    }
}
