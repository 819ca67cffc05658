//! Exhaustive (loom) check of the page-table population protocol every level uses
//! (`__pud_alloc`/`__pmd_alloc`/`__pte_alloc` in `mm/memory.c`, `PageTables::slot_alloc` here):
//! allocate a table outside the lock, take the lock, install it only if the entry is still
//! empty, otherwise free it — and of the leaf insert after it (`insert_pfn_pmd`: recheck none
//! under the lock). loom explores every interleaving of two faulting threads on an abstraction
//! of one entry; the real code's races are checked with shuttle in `tests/shuttle.rs`, because
//! loom cannot exhaust the state of 512-entry tables. The buggy variant (no recheck) must fail.

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// One upper-level entry (0 = none, else a table id), its lock, and the allocator's count.
struct Slot {
    entry: AtomicU64,
    lock: Mutex<()>,
    allocated: AtomicU64,
    freed: AtomicU64,
    next_id: AtomicU64,
}

fn populate(s: &Slot, recheck: bool) -> u64 {
    loop {
        let e = s.entry.load(Ordering::Acquire);
        if e != 0 {
            return e;
        }
        let new = s.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        s.allocated.fetch_add(1, Ordering::Relaxed);
        let g = s.lock.lock().unwrap();
        if !recheck || s.entry.load(Ordering::Acquire) == 0 {
            s.entry.store(new, Ordering::Release);
            drop(g);
        } else {
            drop(g);
            s.freed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn model(recheck: bool) {
    loom::model(move || {
        let s = Arc::new(Slot {
            entry: AtomicU64::new(0),
            lock: Mutex::new(()),
            allocated: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        });
        let s2 = s.clone();
        let t = loom::thread::spawn(move || populate(&s2, recheck));
        let a = populate(&s, recheck);
        let b = t.join().unwrap();
        // Both faults continue below the same table, and every other table was freed.
        assert_eq!(a, b, "two faults walked into different tables");
        let live = s.allocated.load(Ordering::Relaxed) - s.freed.load(Ordering::Relaxed);
        assert_eq!(live, 1, "a page-table page leaked");
    });
}

#[test]
fn populate_rechecks_under_the_lock() {
    model(true);
}

#[test]
fn populate_without_recheck_is_caught() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(|| model(false)));
    std::panic::set_hook(prev);
    assert!(
        r.is_err(),
        "loom found no interleaving that breaks the unchecked protocol"
    );
}
