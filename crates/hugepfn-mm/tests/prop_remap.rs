//! Property test: random remap / munmap / follow / mmap sequences over random aligned and
//! unaligned ranges, against a reference model that keeps one (pfn, cache mode) per 4 KiB frame.
//! It runs on x86-64 (4 KiB pages, 2 MiB and 1 GiB leaves) and on arm64 with 16 KiB pages
//! (32 MiB leaves; a remap whose physical address is not on a 16 KiB page is refused).
//!
//! After every step: the model's leaves agree with the reference at both ends of every leaf, the
//! number of mapped pages agrees, and every follow answer is checked. After every case: a full
//! page-by-page comparison, then a leak check once the mm is dropped.
//!
//! CI runs 256 cases. A long run: `PROPTEST_CASES=20000 cargo test --release -p hugepfn-mm --test prop_remap`.

mod common;

use std::collections::BTreeMap;

use common::*;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{Arch, CacheMode, MmError, Pgprot};
use proptest::prelude::*;

const ARENA: u64 = 0x40_0000_0000; // 1 GiB aligned
const ARENA_LEN: u64 = 4 * G;
const BAR: u64 = 0x1000_0000_0000;
/// Everything any op can reach: offsets below 4 GiB plus lengths up to 4 GiB.
const SPAN: u64 = 8 * G;

#[derive(Debug, Clone)]
enum Op {
    Mmap {
        off: u64,
        len: u64,
    },
    Remap {
        off: u64,
        len: u64,
        skew: u64,
        cache: u8,
    },
    Munmap {
        off: u64,
        len: u64,
    },
    Follow {
        off: u64,
    },
}

/// Offsets on 1 GiB and PMD boundaries (`pmd`: 2 or 32 MiB), or a few 4 KiB frames either way,
/// on any frame, or not aligned at all.
fn interesting_offset(pmd: u64) -> impl Strategy<Value = u64> {
    let pmds = ARENA_LEN / pmd;
    prop_oneof![
        3 => (0u64..4).prop_map(|g| g * G),
        3 => (0u64..pmds).prop_map(move |m| m * pmd),
        2 => (0u64..4, -3i64..=3).prop_map(|(g, d)| (g * G).saturating_add_signed(d * 4096)),
        2 => (0u64..pmds, -2i64..=2).prop_map(move |(m, d)| (m * pmd).saturating_add_signed(d * 4096)),
        2 => (0u64..(ARENA_LEN / 4096)).prop_map(|p| p * 4096),
        // Sometimes not page-aligned at all.
        1 => (0u64..ARENA_LEN).prop_map(|x| x | 1),
    ]
}

fn interesting_len(pmd: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (1u64..=1024).prop_map(|p| p * 4096),
        3 => (1u64..=8, -2i64..=2).prop_map(move |(m, d)| (m * pmd).saturating_add_signed(d * 4096)),
        4 => (1u64..=2, -1i64..=1).prop_map(|(g, d)| (g * G).saturating_add_signed(d * 4096)),
        1 => Just(0u64),
        1 => (1u64..8192).prop_map(|x| x | 1),
    ]
}

fn op(pmd: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (interesting_offset(pmd), interesting_len(pmd)).prop_map(|(off, len)| Op::Mmap { off, len }),
        4 => (
            interesting_offset(pmd),
            interesting_len(pmd),
            prop_oneof![3 => Just(0u64), 1 => Just(4096), 1 => Just(pmd), 1 => Just(G), 1 => (0u64..1024).prop_map(|p| p * 4096)],
            0u8..3
        )
            .prop_map(|(off, len, skew, cache)| Op::Remap { off, len, skew, cache }),
        2 => (interesting_offset(pmd), interesting_len(pmd)).prop_map(|(off, len)| Op::Munmap { off, len }),
        3 => interesting_offset(pmd).prop_map(|off| Op::Follow { off }),
    ]
}

/// The reference: VMAs (start → (end, pfnmap)) and one entry per mapped page.
#[derive(Default)]
struct Reference {
    vmas: BTreeMap<u64, (u64, bool)>,
    pages: BTreeMap<u64, (u64, CacheMode)>,
}

impl Reference {
    fn vma_of(&self, va: u64) -> Option<(u64, u64, bool)> {
        self.vmas
            .range(..=va)
            .next_back()
            .filter(|(_, (e, _))| va < *e)
            .map(|(&s, &(e, p))| (s, e, p))
    }
    fn overlaps(&self, s: u64, e: u64) -> bool {
        self.vmas.iter().any(|(&vs, &(ve, _))| vs < e && s < ve)
    }
    fn unmap(&mut self, s: u64, e: u64) {
        let hit: Vec<(u64, (u64, bool))> = self
            .vmas
            .iter()
            .filter(|(vs, (ve, _))| **vs < e && s < *ve)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (vs, (ve, p)) in hit {
            self.vmas.remove(&vs);
            if vs < s {
                self.vmas.insert(vs, (s, p));
            }
            if ve > e {
                self.vmas.insert(e, (ve, p));
            }
        }
        let keys: Vec<u64> = self.pages.range(s..e).map(|(k, _)| *k).collect();
        for k in keys {
            self.pages.remove(&k);
        }
    }
}

fn cache_of(c: u8) -> CacheMode {
    [CacheMode::UcMinus, CacheMode::Wc, CacheMode::Wb][usize::from(c % 3)]
}

fn check_leaves(mm: &hugepfn_mm::Mm, r: &Reference, full: bool) -> Result<(), TestCaseError> {
    let mut pages = 0u64;
    let mut err = None;
    mm.page_tables()
        .for_each_leaf(ua(ARENA), ua(ARENA + SPAN), &mut |va, leaf| {
            let n = mm.geometry().size(leaf.level) / 4096;
            pages += n;
            let probe: Vec<u64> = if full {
                (0..n).collect()
            } else {
                vec![0, n - 1, n / 2]
            };
            for i in probe {
                let want = r.pages.get(&(va.as_u64() + i * 4096)).copied();
                let got = (leaf.pfn.as_u64() + i, leaf.prot.cache);
                if want != Some(got) && err.is_none() {
                    err = Some(format!(
                        "page {:#x} (leaf {:?} at {va:#x}): model {got:x?}, reference {want:x?}",
                        va + i * 4096,
                        leaf.level
                    ));
                }
            }
        });
    if let Some(e) = err {
        return Err(TestCaseError::fail(e));
    }
    prop_assert_eq!(pages, r.pages.len() as u64, "mapped page count");
    Ok(())
}

static STATS: [std::sync::atomic::AtomicU64; 4] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 4];

fn run(arch: Arch, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (phys, mm) = mm_on(arch);
    let page = mm.page_size();
    let mut r = Reference::default();
    for op in ops {
        match op {
            Op::Mmap { off, len } => {
                let addr = ARENA + off;
                let res = mmap_at(&mm, addr, len, true, None);
                // mmap rounds the length up to whole pages (PAGE_ALIGN), never the address
                let alen = len.next_multiple_of(page);
                let valid = len > 0 && addr.is_multiple_of(page);
                let expect_ok = valid && !r.overlaps(addr, addr + alen);
                prop_assert_eq!(
                    res.is_ok(),
                    expect_ok,
                    "mmap {:#x}+{:#x}: {:?}",
                    addr,
                    len,
                    res
                );
                if expect_ok {
                    r.vmas.insert(addr, (addr + alen, false));
                }
            }
            Op::Remap {
                off,
                len,
                skew,
                cache,
            } => {
                let addr = ARENA + off;
                let pfn = (BAR + off + skew) >> 12;
                let prot = Pgprot::SHARED.with_cache(cache_of(cache));
                let res = mm.remap_pfn_range(uva(addr), upfn(pfn), len, prot);
                let valid = len > 0
                    && addr.is_multiple_of(page)
                    && len.is_multiple_of(page)
                    && (pfn << 12).is_multiple_of(page);
                let vma = r.vma_of(addr);
                let inside = vma.is_some_and(|(_, e, _)| addr + len <= e);
                let empty = r
                    .pages
                    .range(addr..addr.saturating_add(len))
                    .next()
                    .is_none();
                let expect_ok = valid && inside && empty;
                prop_assert_eq!(
                    res.is_ok(),
                    expect_ok,
                    "remap {:#x}+{:#x}: {:?}",
                    addr,
                    len,
                    res
                );
                if let Err(e) = &res
                    && !valid
                {
                    prop_assert!(
                        matches!(e, MmError::Unaligned { .. } | MmError::ZeroLength(_)),
                        "{e}"
                    );
                }
                if let Ok(c) = &res {
                    use std::sync::atomic::Ordering::Relaxed;
                    STATS[0].fetch_add(1, Relaxed);
                    STATS[1].fetch_add(c.pud, Relaxed);
                    STATS[2].fetch_add(c.pmd, Relaxed);
                }
                if expect_ok {
                    let (s, _, _) = vma.unwrap_or_default();
                    r.vmas.entry(s).and_modify(|v| v.1 = true);
                    for i in 0..len / 4096 {
                        r.pages.insert(addr + i * 4096, (pfn + i, cache_of(cache)));
                    }
                }
            }
            Op::Munmap { off, len } => {
                let addr = ARENA + off;
                let res = mm.munmap(UserAddr::new(addr), len);
                if let Ok(st) = &res {
                    STATS[3].fetch_add(st.splits, std::sync::atomic::Ordering::Relaxed);
                }
                // munmap rounds the length up (PAGE_ALIGN), never the address
                let valid = len > 0 && addr.is_multiple_of(page);
                prop_assert_eq!(
                    res.is_ok(),
                    valid,
                    "munmap {:#x}+{:#x}: {:?}",
                    addr,
                    len,
                    res
                );
                if valid {
                    r.unmap(addr, addr + len.next_multiple_of(page));
                }
            }
            Op::Follow { off } => {
                let addr = ARENA + off;
                let res = mm.follow_pfnmap(uva(addr));
                let page_va = addr & !(page - 1);
                match (r.vma_of(addr), r.pages.get(&page_va)) {
                    (None, _) => prop_assert!(matches!(res, Err(MmError::NoVma(_))), "{res:?}"),
                    (Some((_, _, false)), _) => {
                        prop_assert!(matches!(res, Err(MmError::NotPfnmap(_))), "{res:?}")
                    }
                    (Some(_), None) => {
                        prop_assert!(matches!(res, Err(MmError::NotMapped(_))), "{res:?}")
                    }
                    (Some(_), Some(&(pfn, cache))) => {
                        let f =
                            res.map_err(|e| TestCaseError::fail(format!("follow {addr:#x}: {e}")))?;
                        prop_assert_eq!(f.pfn.as_u64(), pfn);
                        prop_assert_eq!(f.pgprot.cache, cache);
                        prop_assert!(f.special && f.writable);
                        prop_assert_eq!(f.addr_mask, !(mm.geometry().size(f.level) - 1));
                    }
                }
            }
        }
        check_leaves(&mm, &r, false)?;
    }
    check_leaves(&mm, &r, true)?;
    // Unmap everything: only the PGD remains; drop: nothing remains.
    mm.munmap(UserAddr::new(ARENA), SPAN)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(mm.table_counts().total(), 1);
    prop_assert_eq!(
        mm.page_tables().count_leaves(ua(0), ua(u64::MAX)).total(),
        0
    );
    drop(mm);
    prop_assert!(phys.leak_check().is_empty());
    Ok(())
}

/// One to three large VMAs (GiB-scale, a few `page`s off alignment) first, so that most remaps
/// land inside a VMA and PUD/PMD leaves, splits and partial unmaps are common; then `ops`.
fn with_big_vmas(big: Vec<(u64, u64, i64)>, page: u64, ops: Vec<Op>) -> Vec<Op> {
    let mut all: Vec<Op> = big
        .into_iter()
        .map(|(g, n, d)| Op::Mmap {
            off: (g * G).saturating_add_signed(d * page as i64),
            len: n * G,
        })
        .collect();
    all.extend(ops);
    all
}

/// Runs after the property (test order is not guaranteed, so it only prints): how much of the
/// interesting space the cases reached. `cargo test --test prop_remap -- --nocapture --test-threads 1`.
#[test]
fn zz_coverage_report() {
    let s: Vec<u64> = STATS
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    println!(
        "successful remaps {}, PUD leaves {}, PMD leaves {}, huge splits in munmap {}",
        s[0], s[1], s[2], s[3]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]
    #[test]
    fn remap_munmap_follow_match_the_reference(
        big in proptest::collection::vec((0u64..4, 1u64..=4, -2i64..=2), 1..3),
        ops in proptest::collection::vec(op(2 * M), 1..24),
    ) {
        run(Arch::X86_64, with_big_vmas(big, 4096, ops))?;
    }

    #[test]
    fn remap_munmap_follow_match_the_reference_with_16k_pages(
        big in proptest::collection::vec((0u64..4, 1u64..=4, -2i64..=2), 1..3),
        ops in proptest::collection::vec(op(32 * M), 1..24),
    ) {
        run(Arch::Arm64_16k, with_big_vmas(big, 16 * K, ops))?;
    }
}
