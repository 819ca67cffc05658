//! The synchronisation primitives the core is built on: `std`'s, or — with the `shuttle`
//! feature — shuttle's drop-in replacements, so that the concurrency tests can preempt a thread
//! at every lock and atomic operation of the real code and explore interleavings
//! (`cargo test -p hugepfn-mm --features shuttle --test shuttle`). `Arc`, `Weak` and `OnceLock`
//! stay `std`'s: they never block inside the model.

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Atomics.
pub mod atomic {
    #[cfg(not(feature = "shuttle"))]
    pub use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    #[cfg(feature = "shuttle")]
    pub use shuttle::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

/// Counters split this many ways, one per cache line ([`stripe`]).
pub const STRIPES: usize = 8;

/// This thread's stripe of a per-thread-split counter (`0..STRIPES`), like the kernel's per-CPU
/// counters: threads counting the same event do not bounce one cache line between their cores.
/// Threads get stripes round-robin on first use; readers fold all stripes.
#[inline]
pub fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
    static NEXT: StdAtomicUsize = StdAtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT.fetch_add(1, StdOrdering::Relaxed) % STRIPES);
        }
        c.get()
    })
}
