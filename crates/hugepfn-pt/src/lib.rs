//! hugepfn-pt: the page-table engine.
//!
//! Radix page tables over simulated physical memory ([`phys::PhysMem`]), generic over an entry
//! [`format::Format`]: one walker, one allocator, one lock protocol and one deferred free for the
//! CPU's tables ([`format::X86_64`]), an IOMMU domain's ([`format::vtd::Vtd`]) and KVM's EPT
//! ([`format::ept::Ept4`]). The engine knows nothing of VMAs, faults or devices: hugepfn-mm,
//! hugepfn-vfio and hugepfn-kvm put their policy on top.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use hugepfn_units::{addr, level};

pub mod counts;
pub mod entry;
pub mod format;
pub mod phys;
pub mod sync;
pub mod tree;

pub use counts::{AtomicLeafCounts, LeafCounts};
pub use format::{EncodeError, Entry, Format, Locking, X86_64};
pub use level::{Geometry, Level};
pub use phys::{PhysMem, TableCounts};
pub use tree::{LockedLeaf, Ptl, RcuReadGuard, Slot, Step, Tree, Visit, WalkError};
