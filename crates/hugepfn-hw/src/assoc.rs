//! A set-associative cache of tags with true LRU replacement: the building block of the TLBs,
//! the paging-structure caches and the data caches.
//!
//! Real hardware uses pseudo-LRU (tree or bit PLRU) and, for large caches, adaptive insertion;
//! true LRU is the deliberate simplification (it is exact for the cyclic patterns of a pointer
//! chase that is larger than the cache: every access misses, as PLRU also mostly does).

/// Tags with a value each, `sets × ways`, MRU first within a set.
#[derive(Debug, Clone)]
pub struct SetAssoc {
    sets: usize,
    ways: usize,
    hash: bool,
    tags: Vec<u64>,
    vals: Vec<u64>,
}

const EMPTY: u64 = u64::MAX;

impl SetAssoc {
    /// `entries` entries in sets of `ways` (`ways >= entries`: fully associative). `hash`
    /// spreads the tags over the sets (large last-level caches hash the address); otherwise the
    /// low tag bits pick the set. Zero entries give a cache that never hits.
    pub fn new(entries: usize, ways: usize, hash: bool) -> Self {
        let ways = ways.clamp(1, entries.max(1));
        let sets = (entries / ways).max(1);
        let n = if entries == 0 { 0 } else { sets * ways };
        SetAssoc {
            sets,
            ways,
            hash,
            tags: vec![EMPTY; n],
            vals: vec![0; n],
        }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.tags.len()
    }

    #[inline]
    fn set_of(&self, tag: u64) -> usize {
        let t = if self.hash {
            let x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^ (x >> 29)
        } else {
            tag
        };
        (t % self.sets as u64) as usize * self.ways
    }

    /// Looks `tag` up; on a hit makes it most recently used and returns its value.
    #[inline]
    pub fn lookup(&mut self, tag: u64) -> Option<u64> {
        if self.tags.is_empty() {
            return None;
        }
        let base = self.set_of(tag);
        let set = &mut self.tags[base..base + self.ways];
        let p = set.iter().position(|&t| t == tag)?;
        set[..=p].rotate_right(1);
        let vals = &mut self.vals[base..base + self.ways];
        vals[..=p].rotate_right(1);
        Some(vals[0])
    }

    /// Whether `tag` is present, without touching the LRU order.
    pub fn contains(&self, tag: u64) -> bool {
        if self.tags.is_empty() {
            return false;
        }
        let base = self.set_of(tag);
        self.tags[base..base + self.ways].contains(&tag)
    }

    /// Inserts `tag` as most recently used (updating the value if present); returns the evicted
    /// tag, if a valid one was.
    #[inline]
    pub fn insert(&mut self, tag: u64, val: u64) -> Option<u64> {
        if self.tags.is_empty() {
            return None;
        }
        let base = self.set_of(tag);
        let ways = self.ways;
        let set = &mut self.tags[base..base + ways];
        let p = set.iter().position(|&t| t == tag).unwrap_or(ways - 1);
        let old = set[p];
        set[..=p].rotate_right(1);
        set[0] = tag;
        let vals = &mut self.vals[base..base + ways];
        vals[..=p].rotate_right(1);
        vals[0] = val;
        (old != EMPTY && old != tag).then_some(old)
    }

    /// Empties the cache (a full TLB flush).
    pub fn clear(&mut self) {
        self.tags.fill(EMPTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_within_a_set() {
        let mut c = SetAssoc::new(2, 2, false);
        c.insert(1, 10);
        c.insert(2, 20);
        assert_eq!(c.lookup(1), Some(10)); // 1 becomes MRU
        assert_eq!(c.insert(3, 30), Some(2)); // 2 was LRU
        assert_eq!(c.lookup(2), None);
        assert_eq!(c.lookup(3), Some(30));
        assert_eq!(c.lookup(1), Some(10));
    }

    #[test]
    fn sets_are_independent() {
        let mut c = SetAssoc::new(4, 1, false); // direct mapped, 4 sets
        c.insert(0, 0);
        c.insert(1, 1);
        c.insert(4, 4); // evicts 0 (same set), not 1
        assert!(!c.contains(0));
        assert!(c.contains(1) && c.contains(4));
    }

    #[test]
    fn cyclic_pattern_larger_than_cache_always_misses() {
        let mut c = SetAssoc::new(8, 8, false);
        let mut hits = 0;
        for round in 0..10 {
            for t in 0..9u64 {
                if c.lookup(t).is_some() {
                    hits += 1;
                } else {
                    c.insert(t, round);
                }
            }
        }
        assert_eq!(hits, 0);
    }

    #[test]
    fn zero_entries_never_hit() {
        let mut c = SetAssoc::new(0, 4, true);
        assert_eq!(c.insert(1, 1), None);
        assert_eq!(c.lookup(1), None);
        assert_eq!(c.capacity(), 0);
    }
}
