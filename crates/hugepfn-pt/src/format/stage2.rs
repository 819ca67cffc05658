//! The second-stage format of the architecture a host runs, chosen at run time: Intel's EPT
//! ([`Ept4`]) on x86-64, KVM's arm64 stage 2 ([`Arm64S2`]) on arm64. Both decode to the same
//! [`EptLeaf`] (R/W/X, memory type, "stage 2 decides the type"), as KVM's generic code sees
//! every architecture's second stage through `kvm_pgtable_prot` / SPTE bits, so one engine
//! instance serves both.

use crate::addr::PhysAddr;
use crate::format::arm64_s2::Arm64S2;
use crate::format::ept::{Ept4, EptLeaf};
use crate::format::{EncodeError, Entry, Format, Locking};
use crate::level::{Geometry, Level};

/// A second-stage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage2 {
    /// Intel EPT, 4 levels.
    Ept(Ept4),
    /// arm64 stage 2.
    Arm64(Arm64S2),
}

macro_rules! each {
    ($self:expr, $f:ident => $e:expr) => {
        match $self {
            Stage2::Ept($f) => $e,
            Stage2::Arm64($f) => $e,
        }
    };
}

impl Format for Stage2 {
    type Leaf = EptLeaf;
    const LOCKING: Locking = Locking::Single;

    fn name(&self) -> &'static str {
        each!(self, f => f.name())
    }

    fn top(&self) -> Level {
        each!(self, f => f.top())
    }

    #[inline]
    fn geometry(&self) -> Geometry {
        each!(self, f => f.geometry())
    }

    #[inline]
    fn can_be_leaf(&self, level: Level) -> bool {
        each!(self, f => f.can_be_leaf(level))
    }

    #[inline]
    fn decode(&self, raw: u64, level: Level) -> Entry<EptLeaf> {
        each!(self, f => f.decode(raw, level))
    }

    #[inline]
    fn encode_leaf(&self, leaf: &EptLeaf, level: Level) -> Result<u64, EncodeError> {
        each!(self, f => f.encode_leaf(leaf, level))
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr, level: Level) -> u64 {
        each!(self, f => f.encode_table(table, level))
    }
}
