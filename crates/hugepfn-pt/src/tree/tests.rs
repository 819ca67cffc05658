//! White-box tests of the engine, in every format: sparse walks, splits of every leaf size,
//! allocation races lost, corrupt pointers, deferred frees. Range maps are drawn one character
//! per `unit` of address space: `G` a 1 GiB leaf, `M` a 2 MiB leaf, `k` 4 KiB leaves, `t` a
//! table with no leaf there, `.` nothing.

use std::sync::Arc;

use super::*;
use crate::addr::Pfn;
use crate::entry::{self, CacheMode, Leaf, Pgprot, ProtFlags};
use crate::format::cpu::Cpu;
use crate::format::ept::{Ept4, EptLeaf, MemType};
use crate::format::vtd::{IommuProt, Vtd, VtdLeaf};
use crate::format::{LeafOps, X86_64};
use hugepfn_units::addr::PagingMode;

const K: u64 = 4096;
const M: u64 = 2 << 20;
const G: u64 = 1 << 30;

/// The input address `x` of whichever format the tree has.
fn a<A: InputAddr>(x: u64) -> A {
    A::from_raw(x)
}

/// One character per `unit` from `start`: what maps the unit's first byte.
fn map<F: Format>(t: &Tree<F>, start: u64, units: u64, unit: u64) -> String {
    (0..units)
        .map(|i| {
            let va = start + i * unit;
            match t.lookup(a(va)) {
                Some((_, s)) if s.level == Level::Pud => 'G',
                Some((_, s)) if s.level == Level::Pmd => 'M',
                Some(_) => 'k',
                None if t.slot(a(va), Level::Pte).ok().flatten().is_some() => 't',
                None => '.',
            }
        })
        .collect()
}

fn install<F: Format>(t: &Tree<F>, va: u64, leaf: &F::Leaf, level: Level) {
    let slot = t.slot_alloc(a(va), level).unwrap();
    let raw = t.format().encode_leaf(leaf, level).unwrap();
    t.lock(slot).set(slot, raw);
}

fn cpu_leaf(pfn: u64, level: Level) -> Leaf {
    Leaf {
        pfn: Pfn::new(pfn).unwrap(),
        prot: Pgprot::SHARED
            .with_cache(CacheMode::UcMinus)
            .with(ProtFlags::SPECIAL, ProtFlags::empty()),
        level,
    }
}

/// An empty x86-64 4-level tree on `phys`.
fn x86_tree(phys: &Arc<PhysMem>) -> Tree<X86_64> {
    Tree::new(
        phys.clone(),
        X86_64 {
            mode: PagingMode::Level4,
        },
    )
    .unwrap()
}

const BAR_PFN: u64 = 0x1000_0000_0000 >> 12;

#[test]
fn a_sparse_tree_walks_as_drawn() {
    let t = x86_tree(&Arc::new(PhysMem::default()));
    // A 1 GiB leaf at 1G; 2 MiB leaves at 2G and 2G+4M; 4 KiB leaves at 2G+8M..+12K (M is
    // 2 MiB here).
    install(&t, G, &cpu_leaf(BAR_PFN, Level::Pud), Level::Pud);
    install(&t, 2 * G, &cpu_leaf(BAR_PFN, Level::Pmd), Level::Pmd);
    install(
        &t,
        2 * G + 2 * M,
        &cpu_leaf(BAR_PFN + 1024, Level::Pmd),
        Level::Pmd,
    );
    for i in 0..3 {
        install(
            &t,
            2 * G + 4 * M + i * K,
            &cpu_leaf(BAR_PFN + i, Level::Pte),
            Level::Pte,
        );
    }
    // per 2 MiB from 2G-4M
    assert_eq!(map(&t, 2 * G - 2 * M, 8, M), "GGM.M.k.");
    assert_eq!(
        map(&t, 2 * G + 4 * M, 4, K),
        "kkkt",
        "the rest of the PTE table is empty"
    );
    let mut seen = Vec::new();
    t.for_each_leaf(a(0), a(4 * G), &mut |va, _, level| seen.push((va, level)));
    assert_eq!(seen.len(), 1 + 2 + 3);
    assert_eq!(seen[0], (a(G), Level::Pud));
    assert_eq!(seen[3], (a(2 * G + 4 * M), Level::Pte));
    assert_eq!(t.count_leaves(a(0), a(4 * G)), [3, 2, 1]);
    assert_eq!(t.first_mapped(a(G + G), a(4 * G)), Some(a(2 * G)));
    assert_eq!(t.first_mapped(a(2 * G + 6 * M), a(4 * G)), None);
    // walk_range visits a table twice (before and after its subtree), a leaf once
    let (mut pre, mut post) = (0, 0);
    t.walk_range::<WalkError>(a(2 * G), a(2 * G + 6 * M), &mut |_, v| {
        Ok(match v.entry {
            Entry::Table(_) if !v.post => {
                pre += 1;
                Step::Descend
            }
            Entry::Table(_) => {
                post += 1;
                Step::Next
            }
            _ => Step::Next,
        })
    })
    .unwrap();
    assert_eq!(
        (pre, post),
        (3, 3),
        "PGD entry, PUD entry, PMD entry of the 4 KiB table"
    );
    assert_eq!(t.reachable_tables(), t.table_counts().total());
}

/// Splitting a leaf of every size in every format keeps every frame and attribute: the map
/// changes from `G` to `M` to `k`, the translation does not.
#[test]
fn every_leaf_size_splits_in_every_format() {
    fn split_down<F: Format>(t: &Tree<F>, leaf: F::Leaf, name: &str) {
        install(t, 4 * G, &leaf, Level::Pud);
        let probe = 4 * G + 2 * M + 5 * K + 123;
        let before = t.lookup(a(probe)).unwrap().0;
        assert_eq!(map(t, 4 * G, 4, M), "GGGG", "{name}");
        let pud = t.slot(a(4 * G), Level::Pud).unwrap().unwrap();
        assert!(t.split_leaf(pud).unwrap(), "{name}");
        assert_eq!(map(t, 4 * G, 4, M), "MMMM", "{name}");
        let pmd = t.slot(a(4 * G + 2 * M), Level::Pmd).unwrap().unwrap();
        assert!(t.split_leaf(pmd).unwrap(), "{name}");
        assert_eq!(map(t, 4 * G, 4, M), "MMkM", "{name}");
        assert_eq!(map(t, 4 * G + 2 * M, 4, K), "kkkk", "{name}");
        let (after, slot) = t.lookup(a(probe)).unwrap();
        assert_eq!(slot.level, Level::Pte, "{name}");
        let want = before.first_pfn().as_u64() + ((probe - 4 * G) >> 12);
        assert_eq!(after.first_pfn().as_u64(), want, "{name}");
        assert_eq!(after, before.at(after.first_pfn(), Level::Pte), "{name}");
        // nothing to split at the PTE level or in an empty slot
        let pte = t.slot(a(probe), Level::Pte).unwrap().unwrap();
        assert!(!t.split_leaf(pte).unwrap());
        assert_eq!(t.reachable_tables(), t.table_counts().total(), "{name}");
    }
    for arch in [
        hugepfn_units::arch::Arch::X86_64,
        hugepfn_units::arch::Arch::X86_64_5Level,
        hugepfn_units::arch::Arch::Arm64,
        hugepfn_units::arch::Arch::Riscv64Sv39,
        hugepfn_units::arch::Arch::Riscv64Sv57,
    ] {
        let phys = Arc::new(PhysMem::default());
        let t = Tree::new(phys.clone(), Cpu::for_arch(arch).unwrap()).unwrap();
        split_down(&t, cpu_leaf(BAR_PFN, Level::Pud), arch.name());
        drop(t);
        assert!(phys.leak_check().is_empty(), "{arch}");
    }
    let phys = Arc::new(PhysMem::default());
    let vtd = Tree::new(
        phys.clone(),
        Vtd {
            top: Level::P4d,
            force_snooping: false,
        },
    )
    .unwrap();
    let leaf = VtdLeaf {
        pfn: Pfn::new(BAR_PFN).unwrap(),
        prot: IommuProt::RW,
    };
    split_down(&vtd, leaf, "vtd");
    let ept = Tree::new(phys.clone(), Ept4).unwrap();
    let leaf = EptLeaf {
        pfn: BAR_PFN,
        level: Level::Pud,
        read: true,
        write: true,
        exec: false,
        mem_type: MemType::Uc,
        ipat: false,
        accessed: true,
        dirty: false,
    };
    split_down(&ept, leaf, "ept");
    drop((vtd, ept));
    assert!(phys.leak_check().is_empty());
}

#[test]
fn writes_need_the_right_lock_and_a_lost_race_frees_its_table() {
    let phys = Arc::new(PhysMem::default());
    let t = x86_tree(&phys);
    let pte = t.slot_alloc(a(5 * G), Level::Pte).unwrap();
    let pmd = t.slot(a(5 * G), Level::Pmd).unwrap().unwrap();
    let pud = t.slot(a(5 * G), Level::Pud).unwrap().unwrap();
    // split locks: a PTE table's lock covers its entries only; the tree lock covers PUD and up
    assert!(t.lock(pte).covers(pte));
    assert!(!t.lock(pte).covers(pmd));
    assert!(t.lock(pud).covers(pud) && !t.lock(pud).covers(pmd));
    // a racing installer that loses frees its table: pretend the entry filled meanwhile
    let before = t.table_counts().total();
    let other = t.slot_alloc(a(5 * G + G), Level::Pmd).unwrap(); // a new PMD table
    assert_eq!(t.table_counts().total(), before + 1);
    t.install_table(other, true).unwrap(); // still none: installs
    let n = t.table_counts().total();
    t.install_table(other, true).unwrap(); // now a table: the new one is freed again
    assert_eq!(t.table_counts().total(), n);
    assert_eq!(t.reachable_tables(), n);
    drop(t);
    assert!(phys.leak_check().is_empty());
}

#[test]
fn a_corrupt_pointer_is_its_own_error_and_deferred_frees_wait_for_readers() {
    let phys = Arc::new(PhysMem::default());
    let t = x86_tree(&phys);
    let top = t.top_slot(a(7 * G));
    // a table pointer into device memory (not RAM): no table frame there
    let bogus = PhysAddr::new(0x1000_0000_0000).unwrap();
    t.lock(top)
        .set(top, t.format().encode_table(bogus, top.level));
    assert_eq!(t.slot(a(7 * G), Level::Pte), Err(WalkError::Corrupt(bogus)));
    assert_eq!(
        t.slot_alloc(a(7 * G), Level::Pmd),
        Err(WalkError::Corrupt(bogus))
    );
    assert!(t.lookup(a(7 * G)).is_none());
    t.lock(top).set(top, 0);
    // an unlinked subtree waits for the lockless walker that may hold it
    let pte = t.slot_alloc(a(9 * G), Level::Pte).unwrap();
    let pmd = t.slot(a(9 * G), Level::Pmd).unwrap().unwrap();
    let rcu = t.rcu_read_lock();
    t.lock(pmd).set(pmd, 0);
    t.free_subtree_deferred(pte.table, Level::Pte);
    assert_eq!(
        t.deferred_tables(),
        1,
        "not freed while a walk is in progress"
    );
    drop(rcu);
    assert_eq!(t.reclaim_deferred(), 1);
    drop(t);
    assert!(phys.leak_check().is_empty());
}

/// An arm64 tree in the 16 KiB granule (48-bit VA) on a memory of 16 KiB frames.
fn arm64_16k() -> Tree<crate::format::arm64::Arm64> {
    let phys = Arc::new(PhysMem::new(
        crate::phys::PhysConfig::default().with_granule(Geometry::G16K),
    ));
    let f = crate::format::arm64::Arm64::new(Geometry::G16K, 48).unwrap();
    Tree::new(phys, f).unwrap()
}

#[test]
fn a_16k_table_needs_a_memory_of_16k_frames() {
    let f = crate::format::arm64::Arm64::new(Geometry::G16K, 48).unwrap();
    let e = Tree::new(Arc::new(PhysMem::default()), f).unwrap_err();
    assert!(matches!(
        e,
        PhysError::TableTooLarge {
            table_bytes: 16384,
            frame_bytes: 4096,
            ..
        }
    ));
    // a 4 KiB-granule format fits a 16 KiB memory (the first 512 entries of each frame)
    let phys = Arc::new(PhysMem::new(
        crate::phys::PhysConfig::default().with_granule(Geometry::G16K),
    ));
    let t = x86_tree(&phys);
    install(&t, 5 * M, &cpu_leaf(BAR_PFN, Level::Pmd), Level::Pmd);
    assert_eq!(map(&t, 4 * M, 3, M), ".M.");
    drop(t);
    assert!(phys.leak_check().is_empty());
}

#[test]
fn the_16k_granule_walks_splits_and_frees_in_its_own_sizes() {
    const P: u64 = 16 << 10;
    const PMD: u64 = 32 << 20;
    let t = arm64_16k();
    let g = t.geometry();
    assert_eq!((g.size(Level::Pmd), g.entries()), (PMD, 2048));
    // a 32 MiB block at 32M, 16 KiB pages at 96M and 96M+16K, near the top of the 48-bit VA
    // space another page (the 2-entry PGD's second entry)
    install(&t, PMD, &cpu_leaf(BAR_PFN, Level::Pmd), Level::Pmd);
    install(&t, 3 * PMD, &cpu_leaf(BAR_PFN + 4, Level::Pte), Level::Pte);
    install(
        &t,
        3 * PMD + P,
        &cpu_leaf(BAR_PFN + 8, Level::Pte),
        Level::Pte,
    );
    let high = (1u64 << 48) - P;
    install(&t, high, &cpu_leaf(BAR_PFN, Level::Pte), Level::Pte);
    assert_eq!(map(&t, 0, 4, PMD), ".M.k", "one character per 32 MiB");
    assert_eq!(map(&t, 3 * PMD, 3, P), "kkt", "one character per 16 KiB");
    assert_eq!(t.top_slot(a(high)).index, 1);
    assert_eq!(t.top_slot(a(high - (1 << 47))).index, 0);
    // PGD, 2 PUD tables, 2 PMD tables, 2 PTE tables
    let c = t.table_counts();
    assert_eq!((c.pgd, c.pud, c.pmd, c.pte), (1, 2, 2, 2));
    assert_eq!(c.bytes_with(g), 7 * P);
    // the lookup of any byte of the block finds it, with the pfn of the block's start
    let (leaf, slot) = t.lookup(a(PMD + PMD - 1)).unwrap();
    assert_eq!((slot.level, leaf.pfn.as_u64()), (Level::Pmd, BAR_PFN));
    // a split gives 2048 pages of 16 KiB: model pfns 4 apart
    let slot = t.slot(a(PMD), Level::Pmd).unwrap().unwrap();
    assert!(t.split_leaf(slot).unwrap());
    assert_eq!(t.count_leaves(a(0), a(1 << 48)), [2048 + 3, 0, 0]);
    let (leaf, slot) = t.lookup(a(PMD + 5 * P + 123)).unwrap();
    assert_eq!((slot.level, leaf.pfn.as_u64()), (Level::Pte, BAR_PFN + 20));
    let (leaf, _) = t.lookup(a(2 * PMD - 1)).unwrap();
    assert_eq!(leaf.pfn.as_u64(), BAR_PFN + 2047 * 4);
    // a range walk sees 16 KiB entries, covered when whole
    let mut seen = Vec::new();
    t.walk_range::<WalkError>(a(3 * PMD), a(3 * PMD + P + 1), &mut |_, v| {
        if v.slot.level == Level::Pte {
            seen.push((v.base - 3 * PMD, v.covered()));
        }
        Ok(match v.entry {
            Entry::Table(_) => Step::Descend,
            _ => Step::Next,
        })
    })
    .unwrap();
    assert_eq!(seen, [(a(0), true), (a(P), false)]);
    assert_eq!(t.reachable_tables(), t.table_counts().total());
    let phys = t.phys().clone();
    drop(t);
    assert!(phys.leak_check().is_empty(), "every 16 KiB table freed");
}

#[test]
fn every_format_reads_an_all_zero_entry_as_none() {
    // A fresh table is zeroed: its entries must be none in every format.
    fn zero_is_none<F: Format>(f: &F, name: &str) {
        for level in Level::ALL {
            assert!(
                matches!(f.decode(0, level), Entry::None),
                "{name}: 0 at {level}"
            );
        }
    }
    for arch in hugepfn_units::arch::Arch::ALL {
        zero_is_none(&Cpu::for_arch(arch).unwrap(), arch.name());
    }
    zero_is_none(
        &Vtd {
            top: Level::P4d,
            force_snooping: false,
        },
        "vtd",
    );
    zero_is_none(&Ept4, "ept");
    zero_is_none(
        &crate::format::arm64_s2::Arm64S2::G4K_IPA48,
        "arm64 stage 2",
    );
}

/// The hardware walk enters no RCU section, so a table can be unlinked, freed and handed out
/// again while it reads it: the relink count makes it walk again. Here the thread's walk cache
/// holds `va`'s PTE table at the count the walk reads; then, before the walk reads the table,
/// another CPU unlinks and frees it, and a new table for another 2 MiB takes the same frame
/// with a leaf at the walked index. The walk through the cache finds that leaf for an address
/// never mapped; the recheck sees the count changed, drops the answer and walks again.
#[test]
fn a_hardware_walk_that_met_a_relink_walks_again() {
    let phys = Arc::new(PhysMem::default());
    let t = x86_tree(&phys);
    let va = 5 * G + 3 * M + 7 * K;
    install(&t, va, &cpu_leaf(BAR_PFN, Level::Pte), Level::Pte);
    // this thread's walk cache: `va`'s PTE table, at the current count
    assert!(t.hw_lookup_raw(a(va)).is_some());
    // `va`'s neighbour in the same PTE table, never mapped
    let never = va + K;
    let mut walks = 0;
    let found = t.hw_lookup_with(never, || {
        walks += 1;
        if walks == 1 {
            // another CPU: unlink and free the PTE table, then map the same index in a
            // different 2 MiB (the free list hands the frame out again)
            let pmd = t.slot(a(va), Level::Pmd).unwrap().unwrap();
            let old = t.lock(pmd).swap(pmd, 0);
            let Entry::Table(table) = t.format().decode(old, Level::Pmd) else {
                panic!("{old:#x} was not a table")
            };
            t.free(table, Level::Pte);
            install(
                &t,
                never + 4 * M,
                &cpu_leaf(BAR_PFN + 1, Level::Pte),
                Level::Pte,
            );
            let reused = t.slot(a(never + 4 * M), Level::Pte).unwrap().unwrap();
            assert_eq!(reused.table, table, "the frame was handed out again");
        }
    });
    assert_eq!(found, None, "{never:#x} was never mapped");
    assert_eq!(
        walks, 2,
        "the walk that overlapped the unlink was done again"
    );
    // Without a relink in the window, one walk answers.
    let mut walks = 0;
    let found = t.hw_lookup_with(never + 4 * M, || walks += 1);
    assert_eq!((walks, found.map(|(_, s)| s.level)), (1, Some(Level::Pte)));
}

/// A walk through a [`WalkCache`] answers what a walk from the root answers, whatever changed
/// above the PTEs since the cache was filled (the model's paging-structure cache is never stale).
#[test]
fn a_walk_cache_never_answers_from_an_unlinked_table() {
    let phys = Arc::new(PhysMem::default());
    let t = x86_tree(&phys);
    let va = 5 * G + 3 * M + 7 * K;
    let mut cache = WalkCache::EMPTY;
    // through the cache, and from the root with an empty one: the same
    fn both(t: &Tree<X86_64>, va: u64, cache: &mut WalkCache) -> Option<(u64, Level)> {
        let cached = t.lookup_in(va, cache);
        let mut empty = WalkCache::EMPTY;
        assert_eq!(cached, t.lookup_in(va, &mut empty), "{va:#x}");
        cached.map(|(raw, s)| {
            (
                raw & entry::bits::PTE_ADDR_MASK & !(s.level.size() - 1),
                s.level,
            )
        })
    }
    assert_eq!(both(&t, va, &mut cache), None, "nothing mapped");
    install(&t, va, &cpu_leaf(BAR_PFN, Level::Pte), Level::Pte);
    assert_eq!(both(&t, va, &mut cache), Some((BAR_PFN << 12, Level::Pte)));
    assert!(
        cache.table.is_some(),
        "filled by a walk that reached a PTE table"
    );
    // A PTE written after the cache was filled is seen through it (same table).
    install(&t, va + K, &cpu_leaf(BAR_PFN + 1, Level::Pte), Level::Pte);
    assert_eq!(
        both(&t, va + K, &mut cache),
        Some(((BAR_PFN + 1) << 12, Level::Pte))
    );
    // The PTE table replaced by a 2 MiB leaf: the cached table is not read again.
    let pmd = t.slot(a(va), Level::Pmd).unwrap().unwrap();
    let leaf = t
        .format()
        .encode_leaf(&cpu_leaf(BAR_PFN + 512, Level::Pmd), Level::Pmd)
        .unwrap();
    let old = t.lock(pmd).swap(pmd, leaf);
    let Entry::Table(table) = t.format().decode(old, Level::Pmd) else {
        panic!("{old:#x} was not a table")
    };
    t.free(table, Level::Pte);
    assert_eq!(
        both(&t, va, &mut cache),
        Some(((BAR_PFN + 512) << 12, Level::Pmd))
    );
    // Cleared: nothing, through the cache or not.
    t.lock(pmd).set(pmd, 0);
    assert_eq!(both(&t, va, &mut cache), None);
    // A new PTE table there: the cache follows it.
    install(&t, va, &cpu_leaf(BAR_PFN + 9, Level::Pte), Level::Pte);
    assert_eq!(
        both(&t, va, &mut cache),
        Some(((BAR_PFN + 9) << 12, Level::Pte))
    );
    // Another tree on the same memory does not use this tree's cache; nor does the thread's
    // own cache (Tree::lookup) answer for it.
    let other = x86_tree(&phys);
    assert_eq!(both(&other, va, &mut cache), None);
    assert_eq!(
        t.lookup(a(va)).map(|(l, _)| l.pfn.as_u64()),
        Some(BAR_PFN + 9)
    );
    assert!(other.lookup(a(va)).is_none());
    drop((t, other));
}

/// `lookup_lock` is `pte_offset_map_lock`: it ends holding the leaf's lock inside the walk's
/// RCU section, so the table it locked is not freed under it even once it is unlinked, until
/// the lock and the section are left together.
#[test]
fn a_locked_lookup_keeps_its_table_until_it_is_dropped() {
    let phys = Arc::new(PhysMem::default());
    let t = x86_tree(&phys);
    let va = 9 * G + 5 * K;
    install(&t, va, &cpu_leaf(BAR_PFN, Level::Pte), Level::Pte);
    let locked = t.lookup_lock(a(va)).unwrap();
    assert_eq!(
        (locked.seen, locked.now),
        (t.get(locked.slot), t.get(locked.slot))
    );
    assert_eq!(locked.slot.level, Level::Pte);
    let page = phys.table(locked.slot.table).unwrap();
    assert!(page.try_lock().is_none(), "the PTE table's lock is held");
    // unlinked meanwhile (under the PMD's lock, as a reclaim would): not freed yet
    let pmd = t.slot(a(va), Level::Pmd).unwrap().unwrap();
    t.lock(pmd).set(pmd, 0);
    t.free_subtree_deferred(locked.slot.table, Level::Pte);
    assert_eq!(t.reclaim_deferred(), 0, "freed under a held lookup");
    assert_ne!(locked.now, 0, "what it read under the lock is still there");
    drop(locked);
    assert_eq!(t.reclaim_deferred(), 1);
    // nothing mapped: no lock taken
    assert!(t.lookup_lock(a(va)).is_none());
    drop(t);
    assert!(phys.leak_check().is_empty());
}
