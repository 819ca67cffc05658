//! Address sequences shared by the model and the measurement, so both run exactly the same
//! accesses.
//!
//! [`Thrash`] is lmbench's `lat_mem_rd -t` pattern (`thrash_initialize` in lmbench3's
//! `lat_mem_rd.c`): the 4 KiB pages of the buffer in a random permutation, one access per page
//! and then the next page, each pass through the pages using a different cache line of each
//! page (the lines in bit-reversed order). Every access lands in another 4 KiB page, so with
//! 4 KiB mappings every access needs a translation the TLB does not hold once the buffer is
//! larger than the TLB's reach; with 2 MiB mappings the same accesses stay within a few
//! thousand huge pages. lmbench uses all 64 lines of a page; [`Thrash::lines`] may be fewer
//! (the measurement's chain is then quicker to build), and the model replays the same choice.

/// A small deterministic generator (xorshift64*), so a seed names one permutation everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator; seed 0 is replaced by a fixed non-zero value.
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }
}

/// A random permutation of `0..n` (Fisher–Yates).
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut r = Rng::new(seed);
    for i in (1..n).rev() {
        let j = r.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// `bits`-bit reversal of `x`.
fn bit_reverse(x: u32, bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        x.reverse_bits() >> (32 - bits)
    }
}

/// lmbench's `lat_mem_rd -t` access order over a buffer of `pages` 4 KiB pages.
#[derive(Debug, Clone)]
pub struct Thrash {
    /// The page visited at each position of a pass.
    pub order: Vec<u32>,
    /// Byte offset in the page of the line used at each position mod `lines`.
    pub words: Vec<u32>,
}

/// Bytes of one page of the pattern (lmbench uses `getpagesize()`).
pub const THRASH_PAGE: u64 = 4096;

impl Thrash {
    /// The pattern over `pages` pages using `lines` cache lines of 64 bytes per page (a power of
    /// two from 1 to 64; other values are rounded down to one).
    pub fn new(pages: usize, lines: u32, seed: u64) -> Self {
        let lines = lines.clamp(1, 64);
        let lines = 1u32 << (31 - lines.leading_zeros());
        let bits = lines.trailing_zeros();
        let spread = 64 / lines;
        let words = (0..lines)
            .map(|j| bit_reverse(j, bits) * spread * 64)
            .collect();
        Thrash {
            order: permutation(pages, seed),
            words,
        }
    }

    /// Accesses in one full cycle of the chain (every line of every page once).
    pub fn cycle_len(&self) -> u64 {
        self.order.len() as u64 * self.words.len() as u64
    }

    /// Byte offset in the buffer of access number `step` (wrapping around the cycle).
    pub fn offset(&self, step: u64) -> u64 {
        let n = self.order.len() as u64;
        if n == 0 {
            return 0;
        }
        let nw = self.words.len() as u64;
        let step = step % self.cycle_len();
        let pass = step / n;
        let i = step % n;
        let page = u64::from(self.order[i as usize]);
        let w = u64::from(self.words[((i + pass) % nw) as usize]);
        page * THRASH_PAGE + w
    }

    /// Writes the chain into `buf` (a buffer of `order.len()` pages seen as 64-bit words): the
    /// word at each access holds the word index of the next access. Pages are written in
    /// address order (quick), not in visiting order.
    pub fn write_chain(&self, buf: &mut [u64]) {
        let n = self.order.len();
        if n == 0 {
            return;
        }
        let nw = self.words.len();
        let wpp = (THRASH_PAGE / 8) as usize;
        let mut pos = vec![0u32; n];
        for (i, &p) in self.order.iter().enumerate() {
            pos[p as usize] = i as u32;
        }
        for (page, &i) in pos.iter().enumerate() {
            let i = i as usize;
            let last = i + 1 == n;
            let next_page = if last {
                self.order[0]
            } else {
                self.order[i + 1]
            } as usize;
            // At position i in pass p the line is (i + p) mod nw; the last page of a pass goes
            // on with the first page of pass p + 1, whose line is (p + 1) mod nw.
            for l in 0..nw {
                let next_line = if last {
                    (l + 1 + nw - (n - 1) % nw) % nw
                } else {
                    (l + 1) % nw
                };
                let cur = page * wpp + self.words[l] as usize / 8;
                let next = next_page * wpp + self.words[next_line] as usize / 8;
                if let Some(slot) = buf.get_mut(cur) {
                    *slot = next as u64;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation() {
        let p = permutation(1000, 7);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_ne!(p, s, "not shuffled");
    }

    #[test]
    fn chain_follows_offsets() {
        for (pages, lines) in [(1usize, 1u32), (5, 4), (17, 8), (64, 64), (3, 64)] {
            let t = Thrash::new(pages, lines, 3);
            let mut buf = vec![u64::MAX; pages * 512];
            t.write_chain(&mut buf);
            let mut idx = (t.offset(0) / 8) as usize;
            for step in 1..=2 * t.cycle_len() + 3 {
                idx = buf[idx] as usize;
                assert_eq!(
                    idx as u64 * 8,
                    t.offset(step),
                    "pages {pages} lines {lines} step {step}"
                );
            }
        }
    }

    #[test]
    fn every_access_is_another_page() {
        let t = Thrash::new(100, 8, 1);
        for s in 0..t.cycle_len() {
            assert_ne!(t.offset(s) / 4096, t.offset(s + 1) / 4096);
        }
    }
}
