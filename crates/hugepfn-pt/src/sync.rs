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

/// An event counter split per thread ([`stripe`]): `add` touches this thread's cache line only,
/// `get` folds the stripes (the kernel's `percpu_counter` / per-CPU `vm_event` shape).
#[derive(Debug, Default)]
pub struct PerThreadCounter([CounterStripe; STRIPES]);

#[derive(Debug, Default)]
#[repr(align(64))]
struct CounterStripe(atomic::AtomicU64);

impl PerThreadCounter {
    /// Counts `n` events.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, atomic::Ordering::Relaxed);
    }

    /// The events counted so far (a sum over the stripes: exact once the counting threads
    /// are done, like `percpu_counter_sum`).
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.load(atomic::Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::PerThreadCounter;

    #[test]
    fn a_per_thread_counter_sums_every_threads_events() {
        let c = PerThreadCounter::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                });
            }
        });
        c.add(5);
        assert_eq!(c.get(), 4005);
    }
}
