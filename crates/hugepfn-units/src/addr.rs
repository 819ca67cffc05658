//! Addresses and page frame numbers as checked newtypes.
//!
//! Models the kernel's `phys_addr_t`, `unsigned long` user addresses and `unsigned long pfn`,
//! with the invariants the x86-64 hardware imposes made part of the type: a [`PhysAddr`] fits
//! in 52 bits (`MAXPHYADDR` of the page-table format), a [`Pfn`] in 40, and a [`VirtAddr`] is
//! canonical for the paging mode (48 bits with 4-level paging, 57 with LA57). Fields are
//! private; a value from outside comes in through a checked constructor (a [`GuestPhysAddr`]
//! below 2^52; a [`UserAddr`] or [`IoVirtAddr`] is any 64-bit value, checked where it is used,
//! as Linux checks a system call's address), so an unchecked value never reaches the page-table
//! code. Arithmetic on a value from outside is `checked_*` and returns an `Option`. Two ways in
//! are for the model's own arithmetic on values already in range, and say so: `+`/`-` of a
//! length on an address inside a VMA, mapping or memslot (overflow is a bug, caught in debug
//! builds), and [`InputAddr::from_raw`] for what a table walk computes within the table's reach.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// Bits of physical address the x86-64 page-table entry format can hold (`MAXPHYADDR` ≤ 52).
pub const PHYS_ADDR_BITS: u32 = 52;
/// Base page size: 4 KiB. Also the frame in which every [`Pfn`], `vm_pgoff` and gfn counts,
/// whatever the architecture's granule: a 16 or 64 KiB page is 4 or 16 such frames (a
/// deliberate difference from Linux, whose pfns count `PAGE_SIZE` pages; the mm asks its
/// `Geometry` for the page size it maps with).
pub const PAGE_SIZE: u64 = 4096;
/// `PAGE_SHIFT` of the 4 KiB frame.
pub const PAGE_SHIFT: u32 = 12;

/// Why an address or pfn was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddrError {
    /// A physical address at or above 2^52.
    #[error("physical address {0:#x} is beyond the 52-bit physical address width")]
    PhysTooWide(u64),
    /// A pfn at or above 2^40.
    #[error("pfn {0:#x} is beyond the 52-bit physical address width")]
    PfnTooWide(u64),
    /// A guest physical address at or above 2^52.
    #[error("guest physical address {0:#x} is beyond the 52-bit physical address width")]
    GuestPhysTooWide(u64),
    /// A virtual address whose upper bits are not a sign extension of the top implemented bit.
    #[error("virtual address {addr:#x} is not canonical for {bits}-bit virtual addresses")]
    NotCanonical {
        /// The address.
        addr: u64,
        /// 48 or 57.
        bits: u32,
    },
}

/// The x86-64 paging mode: how many levels the walk has and how wide a virtual address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PagingMode {
    /// 4-level paging, 48-bit virtual addresses (PGD → PUD → PMD → PTE; the P4D is folded).
    #[default]
    Level4,
    /// 5-level paging (LA57), 57-bit virtual addresses (PGD → P4D → PUD → PMD → PTE).
    Level5,
}

impl PagingMode {
    /// Width of a virtual address in bits.
    #[inline]
    pub const fn va_bits(self) -> u32 {
        match self {
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
        }
    }

    /// Linux's `TASK_SIZE_MAX`: the end of user space (one guard page below the canonical hole).
    #[inline]
    pub const fn task_size(self) -> u64 {
        (1u64 << (self.va_bits() - 1)) - PAGE_SIZE
    }

    /// Number of levels in a walk.
    #[inline]
    pub const fn levels(self) -> u32 {
        match self {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }
}

impl fmt::Display for PagingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingMode::Level4 => f.write_str("x86_64 4-level"),
            PagingMode::Level5 => f.write_str("x86_64 5-level (LA57)"),
        }
    }
}

/// A physical address below 2^52.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Checks the 52-bit width.
    #[inline]
    pub const fn new(addr: u64) -> Result<Self, AddrError> {
        if addr >> PHYS_ADDR_BITS != 0 {
            Err(AddrError::PhysTooWide(addr))
        } else {
            Ok(PhysAddr(addr))
        }
    }

    /// The low 52 bits of `addr`: for decoders whose field mask already keeps an address within
    /// the width (a table pointer's bits 51:12), so nothing is lost and nothing can fail.
    #[inline]
    pub const fn from_masked(addr: u64) -> Self {
        PhysAddr(addr & ((1 << PHYS_ADDR_BITS) - 1))
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The frame this address lies in.
    #[inline]
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// True if aligned to `align` (a power of two).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }

    /// `self + off`, if the result is still a valid physical address.
    #[inline]
    pub fn checked_add(self, off: u64) -> Option<PhysAddr> {
        self.0.checked_add(off).and_then(|a| PhysAddr::new(a).ok())
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A page frame number: a physical address shifted right by 12, below 2^40.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Pfn(u64);

impl Pfn {
    /// Largest pfn + 1.
    pub const LIMIT: u64 = 1 << (PHYS_ADDR_BITS - PAGE_SHIFT);

    /// Checks the 52-bit physical width.
    #[inline]
    pub const fn new(pfn: u64) -> Result<Self, AddrError> {
        if pfn >= Self::LIMIT {
            Err(AddrError::PfnTooWide(pfn))
        } else {
            Ok(Pfn(pfn))
        }
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The physical address of the frame's first byte.
    #[inline]
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }

    /// `self + n`, if still within the physical width.
    #[inline]
    pub fn checked_add(self, n: u64) -> Option<Pfn> {
        self.0.checked_add(n).and_then(|p| Pfn::new(p).ok())
    }

    /// True if `self` is a multiple of `2^order`.
    #[inline]
    pub const fn is_aligned_order(self, order: u32) -> bool {
        self.0 & ((1u64 << order) - 1) == 0
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A canonical virtual address (for 57-bit LA57 addresses, or the stricter 48-bit form).
///
/// The type only promises canonical form for the mode it was checked against; an [`crate::Mm`]
/// checks again that the address lies in its user range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// Checks that `addr` is canonical for `mode` (bits above the top implemented bit copy it).
    #[inline]
    pub const fn new(addr: u64, mode: PagingMode) -> Result<Self, AddrError> {
        let bits = mode.va_bits();
        let top = (addr as i64) >> (bits - 1);
        if top == 0 || top == -1 {
            Ok(VirtAddr(addr))
        } else {
            Err(AddrError::NotCanonical { addr, bits })
        }
    }

    /// A user-space address: below 2^47 is canonical in every mode.
    #[inline]
    pub const fn new_user(addr: u64) -> Result<Self, AddrError> {
        Self::new(addr, PagingMode::Level4)
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// True if aligned to `align` (a power of two).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }

    /// Rounds down to `align` (a power of two). Never leaves the canonical range.
    #[inline]
    pub const fn align_down(self, align: u64) -> VirtAddr {
        VirtAddr(self.0 & !(align - 1))
    }

    /// `self + off` if the sum is canonical for `mode`.
    #[inline]
    pub fn checked_add(self, off: u64, mode: PagingMode) -> Option<VirtAddr> {
        self.0
            .checked_add(off)
            .and_then(|a| VirtAddr::new(a, mode).ok())
    }
}

/// Read back from a report: the number must be canonical with 5-level paging (the widest mode;
/// a narrower mode's consumer checks again, as every user of a `VirtAddr` does).
impl<'de> Deserialize<'de> for VirtAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = u64::deserialize(d)?;
        VirtAddr::new(raw, PagingMode::Level5).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A guest physical address (GPA): what a guest's own page tables produce, which the
/// second-stage MMU (EPT, arm64 stage 2) translates to a host physical address. Below 2^52, the
/// widest MAXPHYADDR; an EPT checks its own (narrower) limit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct GuestPhysAddr(u64);

impl GuestPhysAddr {
    /// Checks that `addr` is below 2^52.
    #[inline]
    pub const fn new(addr: u64) -> Result<Self, AddrError> {
        if addr >> PHYS_ADDR_BITS == 0 {
            Ok(GuestPhysAddr(addr))
        } else {
            Err(AddrError::GuestPhysTooWide(addr))
        }
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The guest frame number (`gpa >> PAGE_SHIFT`, KVM's gfn).
    #[inline]
    pub const fn gfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

impl fmt::Debug for GuestPhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPhysAddr({:#x})", self.0)
    }
}

impl fmt::Display for GuestPhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An IO virtual address (IOVA): the address a device puts on the bus, which the IOMMU
/// translates (`dma_addr_t` in an `iommu_map` call, `vfio_iommu_type1_dma_map.iova`).
///
/// Every 64-bit value is a bus address, so the constructor cannot fail: it is a distinct type
/// so that an IOVA cannot be passed where a physical or virtual address is meant (the IOMMU
/// calls take both an IOVA and a physical address). A domain checks its own address width,
/// as an `Mm` checks its user range for a [`VirtAddr`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IoVirtAddr(u64);

impl IoVirtAddr {
    /// The IOVA `addr`.
    #[inline]
    pub const fn new(addr: u64) -> Self {
        IoVirtAddr(addr)
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for IoVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoVirtAddr({:#x})", self.0)
    }
}

impl fmt::Display for IoVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An address as a process uses it: a system call's `unsigned long addr` (munmap, mprotect,
/// madvise, mremap, mincore) or a load or store the CPU makes.
///
/// Every 64-bit value is one a process can pass, so the constructor cannot fail: the call that
/// receives it checks it as Linux does, with Linux's errno (EINVAL past `TASK_SIZE` for munmap,
/// ENOMEM for mprotect of an unmapped range, SIGSEGV for a load from a non-canonical address).
/// It is a distinct type so that a length, an IOVA or a physical address cannot be passed where
/// a user address is meant; kernel-internal walkers take a checked [`VirtAddr`] instead.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserAddr(u64);

impl UserAddr {
    /// The user address `addr`.
    #[inline]
    pub const fn new(addr: u64) -> Self {
        UserAddr(addr)
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<VirtAddr> for UserAddr {
    fn from(va: VirtAddr) -> Self {
        UserAddr(va.as_u64())
    }
}

impl fmt::Debug for UserAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserAddr({:#x})", self.0)
    }
}

impl fmt::Display for UserAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// True if `a` has no bit set outside `mask`.
const fn fits(a: u64, mask: u64) -> bool {
    a & !mask == 0
}

/// Address arithmetic for the untranslated address types: an offset added or taken away, the
/// distance between two addresses, alignment. `+` and `-` overflow as `u64` does (a panic in a
/// debug build): they are for addresses already checked against a range that cannot overflow
/// (a VMA, a DMA mapping, a memslot); a value from outside goes through `checked_add`.
macro_rules! addr_arith {
    ($ty:ident, $mask:expr) => {
        impl $ty {
            /// True if aligned to `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// Rounds down to `align` (a power of two).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                $ty(self.0 & !(align - 1))
            }

            /// Rounds up to `align` (a power of two), if that does not overflow.
            #[inline]
            pub const fn checked_align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(a) if fits(a & !(align - 1), $mask) => Some($ty(a & !(align - 1))),
                    _ => None,
                }
            }

            /// `self - off`, if it does not go below 0.
            #[inline]
            pub const fn checked_sub(self, off: u64) -> Option<Self> {
                match self.0.checked_sub(off) {
                    Some(a) => Some($ty(a)),
                    None => None,
                }
            }

            /// `self + off`, or the type's highest address if that overflows (`end` of a range
            /// that runs to the top).
            #[inline]
            pub const fn saturating_add(self, off: u64) -> Self {
                let a = self.0.saturating_add(off);
                $ty(if a > $mask { $mask } else { a })
            }

            /// `self + off`, if it does not overflow the type.
            #[inline]
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(a) if fits(a, $mask) => Some($ty(a)),
                    _ => None,
                }
            }

            /// The offset of `self` in a block of `size` bytes (a power of two).
            #[inline]
            pub const fn offset_in(self, size: u64) -> u64 {
                self.0 & (size - 1)
            }
        }

        impl std::ops::Add<u64> for $ty {
            type Output = $ty;
            #[inline]
            fn add(self, off: u64) -> $ty {
                let a = self.0 + off;
                debug_assert!(fits(a, $mask), "address arithmetic left the type's range");
                $ty(a)
            }
        }

        impl std::ops::AddAssign<u64> for $ty {
            #[inline]
            fn add_assign(&mut self, off: u64) {
                *self = *self + off;
            }
        }

        impl std::ops::Sub<u64> for $ty {
            type Output = $ty;
            #[inline]
            fn sub(self, off: u64) -> $ty {
                $ty(self.0 - off)
            }
        }

        impl std::ops::SubAssign<u64> for $ty {
            #[inline]
            fn sub_assign(&mut self, off: u64) {
                self.0 -= off;
            }
        }

        /// The distance in bytes from `other` up to `self`.
        impl std::ops::Sub<$ty> for $ty {
            type Output = u64;
            #[inline]
            fn sub(self, other: $ty) -> u64 {
                self.0 - other.0
            }
        }

        impl fmt::LowerHex for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl InputAddr for $ty {
            const MASK: u64 = $mask;

            #[inline(always)]
            fn raw(self) -> u64 {
                self.0
            }

            #[inline(always)]
            fn from_raw(raw: u64) -> Self {
                debug_assert!(fits(raw, $mask), "a walk computed an address past the type");
                $ty(raw & Self::MASK)
            }
        }
    };
}

/// The address a translation takes in (Arm's "input address" of a stage): a user virtual
/// address for the CPU's tables, an IOVA for an IOMMU's, a guest physical address for a
/// second stage. A page-table format names its type, so a walker of an EPT cannot be handed a
/// user address, nor a CPU walker an IOVA.
pub trait InputAddr:
    Copy + Ord + Eq + std::hash::Hash + fmt::Debug + fmt::LowerHex + Send + Sync + 'static
{
    /// Bits a value of the type may have set.
    const MASK: u64 = u64::MAX;

    /// The raw value, as the table's index bits read it.
    fn raw(self) -> u64;

    /// The address the table walk computed (a leaf's base, the end of a clipped range): the
    /// walker's own arithmetic within the table's reach, so it is in range by construction
    /// (bits past [`InputAddr::MASK`] are dropped).
    fn from_raw(raw: u64) -> Self;
}

addr_arith!(UserAddr, u64::MAX);
addr_arith!(IoVirtAddr, u64::MAX);
addr_arith!(GuestPhysAddr, (1u64 << PHYS_ADDR_BITS) - 1);

/// The host virtual address KVM translates a guest frame to (`hva`, `gfn_to_hva`): an address in
/// the VMM's own `mm`, so the same type as every other user address.
pub type HostVirtAddr = UserAddr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_arithmetic_stays_in_the_type() {
        let va = UserAddr::new(0x7f00_0000_3000);
        assert_eq!(va + 0x1000 - va, 0x1000);
        assert_eq!(va.align_down(1 << 21), UserAddr::new(0x7f00_0000_0000));
        assert_eq!(
            va.checked_align_up(1 << 21),
            Some(UserAddr::new(0x7f00_0020_0000))
        );
        assert_eq!(va.offset_in(1 << 21), 0x3000);
        assert!(va.is_aligned(4096) && !va.is_aligned(1 << 14));
        assert_eq!(UserAddr::new(u64::MAX - 1).checked_add(2), None);
        assert_eq!(
            UserAddr::new(u64::MAX - 1).saturating_add(2),
            UserAddr::new(u64::MAX)
        );
        assert_eq!(UserAddr::new(5).checked_sub(6), None);
        // a guest-physical address never leaves its 52 bits, whichever way it is computed
        let top = GuestPhysAddr::new((1 << 52) - 4096).unwrap();
        assert_eq!(
            top.checked_add(4095),
            GuestPhysAddr::new((1 << 52) - 1).ok()
        );
        assert_eq!(top.checked_add(4096), None);
        assert_eq!(top.checked_align_up(1 << 30), None);
        assert_eq!(top.saturating_add(1 << 20).as_u64(), (1 << 52) - 1);
        assert_eq!(
            IoVirtAddr::new(0xfee0_0000).checked_add(0x10_0000),
            Some(IoVirtAddr::new(0xfef0_0000))
        );
    }

    #[test]
    fn phys_width_is_checked() {
        assert!(PhysAddr::new((1 << 52) - 1).is_ok());
        assert_eq!(PhysAddr::new(1 << 52), Err(AddrError::PhysTooWide(1 << 52)));
        assert!(Pfn::new((1 << 40) - 1).is_ok());
        assert!(Pfn::new(1 << 40).is_err());
        assert_eq!(Pfn::new(0x100000).unwrap().phys().as_u64(), 0x1_0000_0000);
        assert_eq!(PhysAddr::new(0x1234_5678).unwrap().pfn().as_u64(), 0x12345);
        assert!(
            PhysAddr::new((1 << 52) - 4096)
                .unwrap()
                .checked_add(4096)
                .is_none()
        );
        assert!(Pfn::new((1 << 40) - 1).unwrap().checked_add(1).is_none());
    }

    #[test]
    fn a_gpa_is_checked_against_52_bits() {
        let g = GuestPhysAddr::new(0x1_2345_6000).unwrap();
        assert_eq!((g.as_u64(), g.gfn()), (0x1_2345_6000, 0x12_3456));
        assert_eq!(
            GuestPhysAddr::new(1 << 52),
            Err(AddrError::GuestPhysTooWide(1 << 52))
        );
        assert!(GuestPhysAddr::new((1 << 52) - 1).is_ok());
    }

    #[test]
    fn an_iova_is_its_own_type_and_adds_without_wrapping() {
        let a = IoVirtAddr::new(0x3800_0000_0000);
        assert_eq!(
            a.checked_add(4096).map(IoVirtAddr::as_u64),
            Some(0x3800_0000_1000)
        );
        assert_eq!(IoVirtAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(
            format!("{a} {a:?}"),
            "0x380000000000 IoVirtAddr(0x380000000000)"
        );
    }

    #[test]
    fn canonical_48_and_57() {
        let m4 = PagingMode::Level4;
        let m5 = PagingMode::Level5;
        assert!(VirtAddr::new(0x7fff_ffff_ffff, m4).is_ok());
        assert!(VirtAddr::new(0x8000_0000_0000, m4).is_err());
        assert!(VirtAddr::new(0xffff_8000_0000_0000, m4).is_ok());
        assert!(VirtAddr::new(0x8000_0000_0000, m5).is_ok());
        assert!(VirtAddr::new(0x00ff_ffff_ffff_ffff, m5).is_ok());
        assert!(VirtAddr::new(0x0100_0000_0000_0000, m5).is_err());
        assert!(VirtAddr::new(0xff00_0000_0000_0000, m5).is_ok());
        assert_eq!(m4.task_size(), 0x7fff_ffff_f000);
        assert_eq!(m5.task_size(), 0x00ff_ffff_ffff_f000);
        let v = VirtAddr::new(0x7fff_ffff_f000, m4).unwrap();
        assert!(v.checked_add(0x1000, m4).is_none());
        assert!(v.checked_add(0x1000, m5).is_some());
        let back: VirtAddr = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(serde_json::from_str::<VirtAddr>("72057594037927936").is_err());
        assert_eq!(
            VirtAddr::new_user(0x4000_3000).unwrap().align_down(1 << 30),
            VirtAddr::new_user(0x4000_0000).unwrap()
        );
    }
}
