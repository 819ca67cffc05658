//! Model-checked races on the real code, with shuttle scheduling threads at every lock and
//! atomic operation of the core (the `shuttle` feature swaps the core's primitives).
//!
//! Each upstream race has a fixed test that must pass every explored schedule, and a buggy
//! variant (a [`Bugs`] flag, or the test driver's own bug) whose test passes only if shuttle
//! finds a schedule that breaks the invariant — proof that the checker can see the bug.
//!
//! `cargo test -p hugepfn-mm --features shuttle --test shuttle` (CI). More schedules:
//! `SHUTTLE_ITERATIONS=100000 cargo test --release -p hugepfn-mm --features shuttle --test shuttle`.
#![cfg(feature = "shuttle")]

mod common;
use common::uva;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::error::Errno;
use hugepfn_mm::fault::{
    VmFault, VmFaultResult, vmf_insert_pfn, vmf_insert_pfn_pmd, vmf_insert_pfn_pud,
};
use hugepfn_mm::mapping::AddressSpace;
use hugepfn_mm::pgtable::Bugs;
use hugepfn_mm::sync::RwLock;
use hugepfn_mm::sync::atomic::{AtomicU8, Ordering};
use hugepfn_mm::vma::VmFlags;
use hugepfn_mm::{
    Access, FileOps, Level, Mm, MmConfig, MmError, MmapCtx, Pfn, PhysConfig, PhysMem, ThpPolicy,
    VmOperations,
};

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;
const BAR: u64 = 0x40_0000_0000;

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A small vfio-like driver: a BAR at `BAR`, memory decode behind an rwsem, and the huge fault
/// handler either as fixed upstream (align down) or as in 6.13 (faulting address must be aligned).
struct Dev {
    mapping: Arc<AddressSpace>,
    memory_lock: RwLock<()>,
    enabled: AtomicU8,
    align_down: bool,
    /// The driver checks memory decode before taking memory_lock (a TOCTOU bug).
    check_outside_lock: bool,
}

impl Dev {
    fn new(align_down: bool, check_outside_lock: bool) -> Arc<Dev> {
        Arc::new(Dev {
            mapping: AddressSpace::new("dev"),
            memory_lock: RwLock::new(()),
            enabled: AtomicU8::new(1),
            align_down,
            check_outside_lock,
        })
    }

    /// Memory decode off: revoke every mapping under memory_lock held for write.
    fn disable(&self) {
        let _w = self.memory_lock.write().unwrap();
        self.enabled.store(0, Ordering::SeqCst);
        self.mapping.unmap_mapping_range(0, u64::MAX / 2);
    }
}

struct Ops(Arc<Dev>);

impl VmOperations for Ops {
    fn name(&self) -> &str {
        "test-dev"
    }
    fn fault(&self, vmf: &VmFault<'_>) -> VmFaultResult {
        self.huge_fault(vmf, 0)
    }
    fn has_huge_fault(&self) -> bool {
        true
    }
    fn huge_fault(&self, vmf: &VmFault<'_>, order: u32) -> VmFaultResult {
        let d = &self.0;
        let size = 4096u64 << order;
        let vma = vmf.vma;
        let addr = if d.align_down {
            vmf.address.align_down(size)
        } else if !vmf.address.is_aligned(size) {
            return VmFaultResult::Fallback;
        } else {
            vmf.address
        };
        if order > 0 && (addr < vma.start || addr + size > vma.end) {
            return VmFaultResult::Fallback;
        }
        let pfn = Pfn::new((BAR >> 12) + vma.pgoff + ((addr - vma.start) >> 12)).unwrap();
        if d.check_outside_lock && d.enabled.load(Ordering::SeqCst) == 0 {
            return VmFaultResult::Sigbus;
        }
        let _r = d.memory_lock.read().unwrap();
        if !d.check_outside_lock && d.enabled.load(Ordering::SeqCst) == 0 {
            return VmFaultResult::Sigbus;
        }
        match Level::from_order(order) {
            Some(Level::Pte) => vmf_insert_pfn(
                vmf,
                vmf.address,
                Pfn::new((BAR >> 12) + vma.pgoff + ((vmf.address - vma.start) >> 12)).unwrap(),
            ),
            Some(Level::Pmd) => vmf_insert_pfn_pmd(vmf, pfn),
            Some(Level::Pud) => vmf_insert_pfn_pud(vmf, pfn),
            _ => VmFaultResult::Fallback,
        }
    }
}

struct File(Arc<Dev>);

impl FileOps for File {
    fn name(&self) -> String {
        "dev".into()
    }
    fn mapping(&self) -> Option<Arc<AddressSpace>> {
        Some(self.0.mapping.clone())
    }
    fn mmap(&self, ctx: &mut MmapCtx<'_>) -> Result<(), MmError> {
        if !ctx.vma.flags.contains(VmFlags::SHARED) {
            return Err(MmError::Refused {
                op: "mmap",
                errno: Errno::EINVAL,
                reason: "private".into(),
            });
        }
        ctx.vma.flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        ctx.vma.ops = Some(Arc::new(Ops(self.0.clone())));
        Ok(())
    }
}

struct World {
    phys: Arc<PhysMem>,
    mm: Arc<Mm>,
    dev: Arc<Dev>,
    va: u64,
}

fn world(len: u64, thp: ThpPolicy, bugs: Bugs, align_down: bool, toctou: bool) -> World {
    let phys = Arc::new(PhysMem::new(PhysConfig {
        ram_base: 1 << 32,
        ram_frames: 256,
        limit_frames: 256,
        ..PhysConfig::default()
    }));
    let mm = Mm::new(
        phys.clone(),
        MmConfig {
            thp,
            bugs,
            ..MmConfig::default()
        },
    )
    .unwrap();
    let dev = Dev::new(align_down, toctou);
    let va = 8 * G;
    common::mmap_at(&mm, va, len, true, Some(&File(dev.clone()))).unwrap();
    World { phys, mm, dev, va }
}

fn no_leak(w: &World) {
    let pt = w.mm.page_tables();
    assert_eq!(
        pt.reachable_tables(),
        pt.table_counts().total(),
        "a page-table page was allocated but is not in the tree (leaked)"
    );
    assert_eq!(w.phys.tables_in_use().total(), pt.table_counts().total());
}

fn config() -> shuttle::Config {
    let mut c = shuttle::Config::new();
    // Page-table pages are built on the stack of the (small) shuttle thread stacks.
    c.stack_size = 8 << 20;
    c
}

/// Runs `f` under shuttle's random and PCT schedulers.
fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::Runner::new(
        shuttle::scheduler::RandomScheduler::new(iterations()),
        config(),
    )
    .run(move || f());
    shuttle::Runner::new(
        shuttle::scheduler::PctScheduler::new(3, iterations()),
        config(),
    )
    .run(move || g());
}

static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// True if shuttle finds a schedule where `f` panics with a message containing `why` (the
/// invariant the bug breaks, not some other failure).
fn caught(why: &str, f: impl Fn() + Send + Sync + 'static) -> bool {
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        s2.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.to_string());
    }));
    let r = catch_unwind(AssertUnwindSafe(|| check(f)));
    std::panic::set_hook(prev);
    let msgs = seen.lock().unwrap_or_else(|e| e.into_inner());
    r.is_err() && msgs.iter().any(|m| m.contains(why))
}

// --- two faults on one empty PMD --------------------------------------------------------------

fn two_faults(bugs: Bugs, thp: ThpPolicy) {
    let w = Arc::new(world(2 * M, thp, bugs, true, false));
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va), true))
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va + 4096), true))
    };
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        matches!(ra, Access::Ok { .. }) && matches!(rb, Access::Ok { .. }),
        "{ra:?} {rb:?}"
    );
    let l = w.mm.all_leaves();
    if thp == ThpPolicy::Always {
        assert_eq!(
            (l.pmd, l.pte),
            (1, 0),
            "one installs the PMD, the other finds it"
        );
    } else {
        assert_eq!(l.pte, 2, "both 4 KiB pages mapped");
    }
    no_leak(&w);
}

#[test]
fn two_faults_on_one_empty_pmd() {
    check(|| two_faults(Bugs::empty(), ThpPolicy::Always));
    check(|| two_faults(Bugs::empty(), ThpPolicy::Never));
}

#[test]
fn buggy_table_alloc_without_recheck_is_caught() {
    assert!(caught("leaked", || two_faults(
        Bugs::ALLOC_NO_RECHECK,
        ThpPolicy::Never
    )));
}

// --- fault against revoke (zap) ---------------------------------------------------------------

fn fault_vs_revoke(toctou: bool) {
    let w = Arc::new(world(2 * G, ThpPolicy::Always, Bugs::empty(), true, toctou));
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va + G + 4096), true))
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.dev.disable())
    };
    let r = a.join().unwrap();
    b.join().unwrap();
    assert!(matches!(r, Access::Ok { .. } | Access::Sigbus), "{r:?}");
    assert_eq!(
        w.mm.all_leaves().total(),
        0,
        "a mapping survived the revocation of a device whose memory is off"
    );
    no_leak(&w);
}

#[test]
fn fault_against_revoke() {
    check(|| fault_vs_revoke(false));
}

#[test]
fn buggy_memory_check_outside_the_lock_is_caught() {
    assert!(caught("survived the revocation", || fault_vs_revoke(true)));
}

// --- follow_pfnmap_start against zap (§3.10) -------------------------------------------------

fn follow_vs_zap(bugs: Bugs) {
    let w = Arc::new(world(2 * G, ThpPolicy::Always, bugs, true, false));
    assert!(matches!(
        w.mm.access(UserAddr::new(w.va), true),
        Access::Ok { .. }
    ));
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || {
            let g = w.mm.mmap_read();
            if let Ok(f) = g.follow_pfnmap_start(uva(w.va + 0x5000)) {
                // With the lock held, the entry must still be what follow reported.
                let now = w.mm.page_tables().get(f.slot);
                let l = hugepfn_mm::entry::decode(now, f.slot.level);
                let ok = matches!(l, hugepfn_mm::entry::Decoded::Leaf(l) if l.pfn.as_u64() + 5 == f.args.pfn.as_u64());
                assert!(
                    ok,
                    "follow_pfnmap_start returned pfn {:#x} but the entry under its lock is {now:#x}",
                    f.args.pfn.as_u64()
                );
            }
        })
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || {
            w.dev.mapping.unmap_mapping_range(0, G);
        })
    };
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn follow_pfnmap_start_against_zap() {
    check(|| follow_vs_zap(Bugs::empty()));
}

#[test]
fn regress_follow_pfnmap_no_recheck_is_caught() {
    assert!(caught("the entry under its lock", || follow_vs_zap(
        Bugs::FOLLOW_NO_RECHECK
    )));
}

// --- page walk against split-and-refault (§3.11) ----------------------------------------------

fn walk_vs_refault(bugs: Bugs) {
    // The race needs the kernel's split of the PUD leaf by the walk (the corrected design walks
    // past a special leaf and never splits it).
    let bugs = bugs | Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES;
    let w = Arc::new(world(2 * G, ThpPolicy::Always, bugs, true, false));
    assert!(matches!(
        w.mm.access(UserAddr::new(w.va), true),
        Access::Ok { .. }
    ));
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || {
            let mut ops = hugepfn_mm::pagewalk::CountPmds::default();
            w.mm.walk_page_range_vma(UserAddr::new(w.va), UserAddr::new(w.va + G), &mut ops)
        })
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va + 0x10_0000), false))
    };
    let r = a.join().unwrap();
    b.join().unwrap();
    assert!(r.is_ok(), "{}", r.unwrap_err());
    no_leak(&w);
}

#[test]
fn page_walk_against_split_and_refault() {
    check(|| walk_vs_refault(Bugs::empty()));
}

#[test]
fn regress_9b25a6e3d243_pagewalk_without_recheck_is_caught() {
    assert!(caught("not a page table", || walk_vs_refault(
        Bugs::PAGEWALK_NO_RECHECK
    )));
}

// --- PTE insert against PMD insert (§3.4) -----------------------------------------------------

fn pte_vs_pmd(bugs: Bugs) {
    // The 6.13 handler: only an aligned faulting address gets a PMD; others fall back to PTEs.
    let w = Arc::new(world(2 * M, ThpPolicy::Always, bugs, false, false));
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va + 0x3000), true))
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.access(UserAddr::new(w.va), true))
    };
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        ra != Access::Oom && rb != Access::Oom,
        "VM_FAULT_OOM: {ra:?} {rb:?}"
    );
    no_leak(&w);
}

#[test]
fn pte_insert_against_pmd_insert() {
    check(|| pte_vs_pmd(Bugs::empty()));
}

#[test]
fn buggy_pte_insert_oom_is_caught() {
    assert!(caught("VM_FAULT_OOM", || pte_vs_pmd(Bugs::PTE_INSERT_OOM)));
}

// --- the CPU's walk against munmap and a table's reuse ---------------------------------------

/// The simulated CPU's walk takes no RCU section (`Tree::hw_lookup_raw`): a munmap may free
/// the PTE table it is reading, and another thread take the frame as the PTE table of another
/// 2 MiB with a leaf at the walked index. The walk must never answer from that reused table:
/// an address that was never mapped stays unmapped to it.
fn cpu_walk_vs_unmap_and_reuse() {
    let w = Arc::new(world(4 * M, ThpPolicy::Never, Bugs::empty(), true, false));
    // a PTE table for the first 2 MiB
    assert!(matches!(
        w.mm.access(UserAddr::new(w.va), true),
        Access::Ok { .. }
    ));
    let pt = w.mm.page_tables();
    let table = pt
        .slot(UserAddr::new(w.va), Level::Pte)
        .unwrap()
        .unwrap()
        .table;
    let never = UserAddr::new(w.va + 5 * 4096);
    let a = {
        let w = w.clone();
        shuttle::thread::spawn(move || w.mm.page_tables().user_access(never, false))
    };
    let b = {
        let w = w.clone();
        shuttle::thread::spawn(move || {
            w.mm.munmap(UserAddr::new(w.va), 2 * M).unwrap();
            // the same index of the next 2 MiB: its new PTE table is the freed frame
            let pt = w.mm.page_tables();
            let there = UserAddr::new(w.va + 2 * M + 5 * 4096);
            let slot = pt.slot_alloc(there, Level::Pte).unwrap();
            assert_eq!(slot.table, table, "the frame was handed out again");
            let leaf = hugepfn_mm::Leaf {
                pfn: Pfn::new(BAR >> 12).unwrap(),
                prot: hugepfn_mm::Pgprot::SHARED,
                level: Level::Pte,
            };
            pt.ptl(slot).set(slot, pt.encode_leaf(leaf).unwrap());
        })
    };
    let seen = a.join().unwrap();
    b.join().unwrap();
    assert_eq!(
        seen, None,
        "the CPU's walk found a leaf at a page never mapped"
    );
    no_leak(&w);
}

#[test]
fn cpu_walk_against_unmap_and_table_reuse() {
    check(cpu_walk_vs_unmap_and_reuse);
}
