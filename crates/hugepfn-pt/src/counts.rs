//! Counters per leaf level: the plain [`LeafCounts`] (hugepfn-units, shared with the reports) and
//! its atomic twin [`AtomicLeafCounts`], for counters updated by racing threads.

pub use hugepfn_units::counts::LeafCounts;

use crate::level::Level;
use crate::sync::atomic::{AtomicU64, Ordering};

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
