//! The synchronisation primitives the core is built on: `std`'s, or — with the `shuttle`
//! feature — shuttle's drop-in replacements, so that the concurrency tests can preempt a thread
//! at every lock and atomic operation of the real code and explore interleavings
//! (`cargo test -p hugepfn-mm --features shuttle --test shuttle`). `Arc`, `Weak` and `OnceLock`
//! stay `std`'s: they never block inside the model.

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::sync::Arc;

/// Atomics.
pub mod atomic {
    #[cfg(not(feature = "shuttle"))]
    pub use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

    #[cfg(feature = "shuttle")]
    pub use shuttle::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
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

/// The stripe that threads share once every other stripe is leased (the last one).
const SHARED_STRIPE: usize = STRIPES - 1;

/// This thread's stripe of per-thread state (`0..STRIPES`), like the kernel's per-CPU
/// counters: threads counting the same event do not bounce one cache line between their cores.
#[inline]
pub fn stripe() -> usize {
    lease().index
}

/// A thread's claim on a stripe. The first `STRIPES - 1` stripes are leased to one live thread
/// each, as a CPU's per-CPU area belongs to the CPU: only the holder writes them, so its
/// counters need no atomic read-modify-write (`this_cpu_inc`, where another CPU's area needs
/// `atomic_inc`). A thread that finds them all taken shares the last stripe with the others
/// like it, with read-modify-writes. A lease ends with its thread (the stripe's counts stay:
/// the next holder goes on from them).
///
/// Under the `shuttle` feature every test thread runs on one OS thread and so shares its
/// lease: no stripe is owned there, every update is a read-modify-write.
///
/// Only [`lease`] makes one, and it is not `Send`: a lease is good on its own thread only.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// The stripe.
    index: usize,
    /// Whether this thread alone writes it.
    owned: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Lease {
    const fn new(index: usize, owned: bool) -> Lease {
        Lease {
            index,
            owned,
            _not_send: std::marker::PhantomData,
        }
    }

    /// The stripe.
    #[inline]
    pub fn index(self) -> usize {
        self.index
    }

    /// Whether this thread alone writes it (then a count is a plain load and store).
    #[inline]
    pub fn owned(self) -> bool {
        self.owned
    }
}

/// Leased stripes: bit `i` set while a live thread holds stripe `i`.
static LEASED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// No lease taken yet.
const UNSET: Lease = Lease::new(usize::MAX, false);

/// The shared stripe's lease.
const SHARED: Lease = Lease::new(SHARED_STRIPE, false);

thread_local! {
    /// This thread's lease (`UNSET` until first use): a plain cell, read on every count.
    static LEASE: std::cell::Cell<Lease> = const { std::cell::Cell::new(UNSET) };
    /// Returns the owned stripe when the thread ends.
    static RETURN: LeaseReturn = const { LeaseReturn(std::cell::Cell::new(None)) };
}

/// Gives an owned stripe back at thread exit.
struct LeaseReturn(std::cell::Cell<Option<usize>>);

impl Drop for LeaseReturn {
    fn drop(&mut self) {
        if let Some(i) = self.0.take() {
            // Counting after this (another destructor) goes to the shared stripe.
            let _ = LEASE.try_with(|l| l.set(SHARED));
            // Release: this thread's writes to the stripe happen before the next holder's.
            LEASED.fetch_and(!(1u64 << i), std::sync::atomic::Ordering::Release);
        }
    }
}

/// Takes a stripe: the lowest free one, or the shared one.
#[cold]
fn take_lease() -> Lease {
    use std::sync::atomic::Ordering::{Acquire, Relaxed};
    let all = (1u64 << SHARED_STRIPE) - 1;
    let mut cur = LEASED.load(Relaxed);
    let lease = loop {
        let free = !cur & all;
        if free == 0 || cfg!(feature = "shuttle") {
            break SHARED;
        }
        let bit = free.trailing_zeros() as usize;
        // Acquire: the last holder's writes to the stripe happen before ours.
        match LEASED.compare_exchange_weak(cur, cur | 1 << bit, Acquire, Relaxed) {
            Ok(_) => {
                // A thread already past its destructors cannot give it back: it shares.
                if RETURN.try_with(|r| r.0.set(Some(bit))).is_ok() {
                    break Lease::new(bit, true);
                }
                LEASED.fetch_and(!(1u64 << bit), std::sync::atomic::Ordering::Release);
                break SHARED;
            }
            Err(now) => cur = now,
        }
    };
    let _ = LEASE.try_with(|l| l.set(lease));
    lease
}

/// This thread's [`Lease`], taken on first use.
#[inline]
pub fn lease() -> Lease {
    let l = LEASE.try_with(std::cell::Cell::get).unwrap_or(SHARED);
    if l.index == usize::MAX {
        take_lease()
    } else {
        l
    }
}

/// Adds `n` to `c`, the counter of this thread's stripe under `lease`: a plain load and store if
/// the thread owns the stripe, a read-modify-write if it shares it.
#[inline]
pub fn stripe_add(c: &atomic::AtomicU64, n: u64, lease: Lease) {
    use atomic::Ordering::Relaxed;
    if lease.owned {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        c.fetch_add(n, Relaxed);
    }
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
        let l = lease();
        stripe_add(&self.0[l.index()].0, n, l);
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

/// A reader-writer lock split per thread stripe ([`stripe`]): a reader locks its thread's
/// stripe only, so readers on different threads never share a lock word (the shape of the
/// kernel's per-CPU rw semaphores); a writer locks every stripe in order. Readers and writers
/// exclude each other exactly as with one lock. For read-mostly state whose writers are rare:
/// the mmap lock of a faulting process, a device's `memory_lock`.
///
/// Every stripe holds the same value through an `Arc`: readers on different threads share
/// its memory (read-only: no cache line bounces), and a writer that changes it copies it once,
/// on its first mutable borrow, and gives every stripe the new copy before it lets go (the
/// stripes used to hold a copy each, and a change cost one copy per stripe: seven VMA-tree
/// copies per mmap).
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
struct PaddedLock<T>(RwLock<Arc<T>>);

impl<T: Clone> StripedRwLock<T> {
    /// A lock holding `value`.
    pub fn new(value: T) -> Self {
        let value = Arc::new(value);
        StripedRwLock {
            stripes: (0..STRIPES)
                .map(|_| PaddedLock(RwLock::new(value.clone())))
                .collect(),
        }
    }

    /// Read access through this thread's stripe.
    #[inline]
    pub fn read(&self) -> StripedReadGuard<'_, T> {
        StripedReadGuard {
            guard: self.stripes[stripe()]
                .0
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        }
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

/// A [`StripedRwLock`] held for read through this thread's stripe.
pub struct StripedReadGuard<'a, T> {
    guard: RwLockReadGuard<'a, Arc<T>>,
}

impl<T> std::ops::Deref for StripedReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for StripedReadGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A [`StripedRwLock`] held for write: every stripe locked; the value is copied on the first
/// mutable borrow, and the copy given to every stripe when the guard is dropped.
pub struct StripedWriteGuard<'a, T: Clone> {
    guards: Vec<RwLockWriteGuard<'a, Arc<T>>>,
    /// Whether the value was borrowed mutably (only then do the stripes get the new value).
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
        // Shared with the other stripes (and with no reader: all stripes are locked), so the
        // first mutable borrow copies it once; later ones find the copy unshared.
        Arc::make_mut(&mut self.guards[0])
    }
}

impl<T: Clone> Drop for StripedWriteGuard<'_, T> {
    /// Every stripe gets the first one's value before any stripe is unlocked (if it was
    /// borrowed mutably: a writer that only read leaves the stripes as they are).
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        if let Some((first, rest)) = self.guards.split_first_mut() {
            for g in rest {
                **g = Arc::clone(first);
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
        assert_eq!(
            CLONES.load(Ordering::Relaxed),
            before + 1,
            "one copy per write"
        );
        {
            let mut w = lock.write();
            w.0 = 3;
            w.0 += 1;
        }
        assert_eq!(
            CLONES.load(Ordering::Relaxed),
            before + 2,
            "one copy per write"
        );
        assert_eq!(lock.read().0, 4);
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
        assert!(lock.stripes.iter().all(|s| **s.0.read().unwrap() == 3));
    }

    /// Twelve threads alive at once and seven stripes to lease: no stripe is leased to two of
    /// them, the others share the last one, and the counts stay exact although the owners add
    /// with a plain load and store.
    #[test]
    fn a_stripe_is_leased_to_one_live_thread_and_counts_stay_exact() {
        let c = PerThreadCounter::default();
        let all_alive = std::sync::Barrier::new(12);
        let leases = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    let l = super::lease();
                    all_alive.wait();
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                    leases.lock().unwrap().push((l.index, l.owned));
                    all_alive.wait();
                });
            }
        });
        let leases = leases.into_inner().unwrap();
        let mut owned: Vec<usize> = leases.iter().filter(|l| l.1).map(|l| l.0).collect();
        let n = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(
            owned.len(),
            n,
            "a stripe leased to two live threads: {leases:?}"
        );
        assert!(n < STRIPES, "{leases:?}");
        assert!(
            leases
                .iter()
                .all(|&(index, owned)| owned || index == super::SHARED_STRIPE),
            "{leases:?}"
        );
        assert_eq!(c.get(), 120_000);
        // A lease ends with its thread: later threads get stripes of their own again (other
        // tests' threads may hold some for a while, never all for long).
        let owned_again =
            (0..1000).any(|_| std::thread::spawn(|| super::lease().owned).join().unwrap());
        assert!(owned_again, "leases were never returned");
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
