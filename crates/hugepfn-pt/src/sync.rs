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

/// `spinlock_t`, as the page-table locks are: taking it is one compare-and-exchange, releasing it
/// one release store (a `Mutex` releases with a read-modify-write, to wake a sleeper). A waiter
/// spins a little, then yields its CPU, so that a holder that was preempted gets to run (user
/// space cannot disable preemption as the kernel's spinlock does). Under the `shuttle` feature it
/// is shuttle's mutex, so that the concurrency tests schedule threads at it.
#[derive(Debug, Default)]
pub struct SpinLock {
    #[cfg(not(feature = "shuttle"))]
    held: atomic::AtomicU8,
    #[cfg(feature = "shuttle")]
    inner: Mutex<()>,
}

/// A held [`SpinLock`]; dropping it releases the lock.
#[derive(Debug)]
pub struct SpinGuard<'a> {
    #[cfg(not(feature = "shuttle"))]
    lock: &'a SpinLock,
    /// Not `Send`, as a `MutexGuard` is not (the shuttle build's guard is one).
    #[cfg(not(feature = "shuttle"))]
    _not_send: std::marker::PhantomData<*const ()>,
    #[cfg(feature = "shuttle")]
    _guard: MutexGuard<'a, ()>,
}

#[cfg(not(feature = "shuttle"))]
impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock {
            held: atomic::AtomicU8::new(0),
        }
    }

    /// `spin_lock`.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_> {
        use atomic::Ordering::{Acquire, Relaxed};
        loop {
            if self
                .held
                .compare_exchange_weak(0, 1, Acquire, Relaxed)
                .is_ok()
            {
                return SpinGuard {
                    lock: self,
                    _not_send: std::marker::PhantomData,
                };
            }
            let mut spins = 0u32;
            while self.held.load(Relaxed) != 0 {
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// `spin_trylock`.
    pub fn try_lock(&self) -> Option<SpinGuard<'_>> {
        use atomic::Ordering::{Acquire, Relaxed};
        self.held
            .compare_exchange(0, 1, Acquire, Relaxed)
            .ok()
            .map(|_| SpinGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            })
    }
}

#[cfg(not(feature = "shuttle"))]
impl Drop for SpinGuard<'_> {
    /// `spin_unlock`.
    #[inline]
    fn drop(&mut self) {
        self.lock.held.store(0, atomic::Ordering::Release);
    }
}

#[cfg(feature = "shuttle")]
impl SpinLock {
    /// An unlocked lock.
    pub fn new() -> Self {
        SpinLock {
            inner: Mutex::new(()),
        }
    }

    /// `spin_lock`.
    pub fn lock(&self) -> SpinGuard<'_> {
        SpinGuard {
            _guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// `spin_trylock`.
    pub fn try_lock(&self) -> Option<SpinGuard<'_>> {
        self.inner.try_lock().ok().map(|g| SpinGuard { _guard: g })
    }
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

/// A reader-writer lock split per thread stripe ([`stripe`]), each stripe guarding its own
/// copy of the value: a reader locks its thread's stripe only, so readers on different threads
/// never share a lock word (the shape of the kernel's per-CPU rw semaphores); a writer locks
/// every stripe in order, changes the first copy, and copies it to the others before it lets go.
/// Readers and writers exclude each other exactly as with one lock. For read-mostly state whose
/// writers are rare: the mmap lock of a faulting process, a device's `memory_lock`.
///
/// Under the `shuttle` feature every thread of a test runs on one OS thread, hence on one
/// stripe: the lock then behaves as one lock in every interleaving shuttle tries.
#[derive(Debug)]
pub struct StripedRwLock<T> {
    stripes: Box<[PaddedLock<T>]>,
}

/// One stripe, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct PaddedLock<T>(RwLock<T>);

impl<T: Clone> StripedRwLock<T> {
    /// `value` in every stripe.
    pub fn new(value: T) -> Self {
        StripedRwLock {
            stripes: (0..STRIPES)
                .map(|_| PaddedLock(RwLock::new(value.clone())))
                .collect(),
        }
    }

    /// Read access through this thread's stripe.
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.stripes[stripe()]
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Write access: every stripe locked, in order.
    pub fn write(&self) -> StripedWriteGuard<'_, T> {
        StripedWriteGuard {
            changed: false,
            guards: self
                .stripes
                .iter()
                .map(|s| s.0.write().unwrap_or_else(|e| e.into_inner()))
                .collect(),
        }
    }
}

/// A [`StripedRwLock`] held for write: the first copy, copied to the others when dropped.
pub struct StripedWriteGuard<'a, T: Clone> {
    guards: Vec<RwLockWriteGuard<'a, T>>,
    /// Whether the value was borrowed mutably (only then are the other copies refreshed).
    changed: bool,
}

impl<T: Clone> std::ops::Deref for StripedWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guards[0]
    }
}

impl<T: Clone> std::ops::DerefMut for StripedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.guards[0]
    }
}

impl<T: Clone> Drop for StripedWriteGuard<'_, T> {
    /// Every stripe's copy becomes the first one's before any stripe is unlocked (if it was
    /// borrowed mutably: a writer that only read leaves the copies as they are).
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        if let Some((first, rest)) = self.guards.split_first_mut() {
            for g in rest {
                g.clone_from(first);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PerThreadCounter, STRIPES, StripedRwLock};

    #[test]
    fn a_spin_lock_excludes() {
        let lock = super::SpinLock::new();
        let n = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = lock.lock();
                        // a read-then-write that only exclusion keeps exact
                        let v = n.load(std::sync::atomic::Ordering::Relaxed);
                        n.store(v + 1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(n.into_inner(), 40_000);
        let g = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(g);
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn a_writer_that_only_reads_copies_nothing() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CLONES: AtomicUsize = AtomicUsize::new(0);
        #[derive(Debug)]
        struct Counted(u64);
        impl Clone for Counted {
            fn clone(&self) -> Self {
                CLONES.fetch_add(1, Ordering::Relaxed);
                Counted(self.0)
            }
        }
        let lock = StripedRwLock::new(Counted(1));
        let before = CLONES.load(Ordering::Relaxed);
        assert_eq!(lock.write().0, 1);
        assert_eq!(CLONES.load(Ordering::Relaxed), before);
        lock.write().0 = 2;
        assert_eq!(CLONES.load(Ordering::Relaxed), before + STRIPES - 1);
        assert_eq!(lock.read().0, 2);
    }

    #[test]
    fn every_stripe_reads_what_the_last_writer_wrote() {
        let lock = StripedRwLock::new(0u64);
        for n in 1..=3 {
            *lock.write() += 1;
            std::thread::scope(|s| {
                for _ in 0..2 * STRIPES {
                    s.spawn(|| assert_eq!(*lock.read(), n));
                }
            });
        }
        assert!(lock.stripes.iter().all(|s| *s.0.read().unwrap() == 3));
    }

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
