//! The data-cache hierarchy that page-walk references and data loads go through.
//!
//! Models where a 64-byte line is found: L1D, L2, L3 or memory. Lines are filled into every
//! level between the one that served them and the level the request started at (a
//! non-inclusive, non-exclusive hierarchy with fill on the way in). Deliberate simplifications:
//! true LRU in every level; no prefetchers (a random pointer chase defeats them, a sequential
//! stream would be served better than modelled); no victim-cache behaviour (Zen's L3 is filled
//! by L2 evictions; here it is filled on the way in, which gives the same contents for a
//! pattern with no reuse, and a slightly smaller effective capacity otherwise); no other cores.
//! The last level hashes line addresses to sets as real LLCs do; inner levels index by address
//! bits.

use crate::assoc::SetAssoc;
use crate::config::CacheLevel;

/// Where a reference was served: index 0..n for cache levels, [`MEMORY`] for DRAM.
pub type Served = usize;

/// Slot of memory in per-level counters (with up to three cache levels).
pub const MEMORY: Served = 3;

/// The hierarchy.
#[derive(Debug, Clone)]
pub struct Caches {
    levels: Vec<SetAssoc>,
}

impl Caches {
    /// Caches of the given shapes (at most three levels are modelled; more are ignored).
    pub fn new(shape: &[CacheLevel]) -> Self {
        let n = shape.len().min(3);
        let levels = shape[..n]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let lines = (c.size / 64) as usize;
                SetAssoc::new(lines, c.ways as usize, i + 1 == n && n > 1)
            })
            .collect();
        Caches { levels }
    }

    /// Number of cache levels.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// A read of physical address `pa` starting at level `from`; returns where it was served.
    #[inline]
    pub fn read(&mut self, pa: u64, from: usize) -> Served {
        let line = pa >> 6;
        let mut served = MEMORY;
        for (i, c) in self.levels.iter_mut().enumerate().skip(from) {
            if c.lookup(line).is_some() {
                served = i;
                break;
            }
        }
        let upto = served.min(self.levels.len());
        for c in self.levels[from.min(upto)..upto].iter_mut() {
            c.insert(line, 0);
        }
        served
    }

    /// Empties every level.
    pub fn clear(&mut self) {
        for c in &mut self.levels {
            c.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Vec<CacheLevel> {
        vec![
            CacheLevel {
                name: "L1D".into(),
                size: 4096,
                ways: 8,
            },
            CacheLevel {
                name: "L2".into(),
                size: 64 << 10,
                ways: 8,
            },
        ]
    }

    #[test]
    fn miss_then_hit() {
        let mut c = Caches::new(&shape());
        assert_eq!(c.read(0x1000, 0), MEMORY);
        assert_eq!(c.read(0x1008, 0), 0);
    }

    #[test]
    fn evicted_from_l1_found_in_l2() {
        let mut c = Caches::new(&shape());
        c.read(0, 0);
        for i in 1..=64u64 {
            c.read(i * 64, 0); // 64 more lines: L1 (64 lines) loses line 0
        }
        assert_eq!(c.read(0, 0), 1);
    }

    #[test]
    fn walker_starting_at_l2_does_not_fill_l1() {
        let mut c = Caches::new(&shape());
        assert_eq!(c.read(0x40, 1), MEMORY);
        assert_eq!(c.read(0x40, 0), 1);
        assert_eq!(c.read(0x40, 0), 0);
    }
}
