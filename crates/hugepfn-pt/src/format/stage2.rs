//! The second-stage format of the architecture a host runs, chosen at run time: Intel's EPT
//! ([`Ept4`]) on x86-64, KVM's arm64 stage 2 ([`Arm64S2`]) on arm64. Both decode to the same
//! [`EptLeaf`] (R/W/X, memory type, "stage 2 decides the type"), as KVM's generic code sees
//! every architecture's second stage through `kvm_pgtable_prot` / SPTE bits, so one engine
//! instance serves both.

use crate::format::arm64_s2::Arm64S2;
use crate::format::ept::{Ept4, EptLeaf};
use crate::format::{Locking, enum_format};

/// A second-stage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage2 {
    /// Intel EPT, 4 levels.
    Ept(Ept4),
    /// arm64 stage 2.
    Arm64(Arm64S2),
}

enum_format!(
    Stage2,
    EptLeaf,
    hugepfn_units::addr::GuestPhysAddr,
    Locking::Single,
    Ept,
    Arm64
);
