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
