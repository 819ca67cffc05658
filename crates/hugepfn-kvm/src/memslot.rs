//! Memslots: which guest frames are backed by which host virtual addresses.
//!
//! Models `virt/kvm/kvm_main.c` `__kvm_set_memory_region` (the checks and the change kinds
//! CREATE / DELETE / MOVE / FLAGS_ONLY), `kvm_check_memslot_overlap`, `__gfn_to_hva_memslot`,
//! and x86's `kvm_alloc_memslot_metadata` → `lpage_info.disallow_lpage` as
//! `__kvm_mmu_max_mapping_level` reads it: a huge page is disallowed at a level when the gfn
//! and the host address are not congruent modulo the level size (the whole slot), or when the
//! level's block around the gfn is not wholly inside the slot (its first and last blocks).
//!
//! Deliberate differences: one address space (no SMM `as_id`), no guest_memfd, no dirty
//! bitmap (dirty logging only forces 4 KiB mappings).

use std::collections::BTreeMap;

use hugepfn_mm::Level;
use hugepfn_mm::addr::{GuestPhysAddr, HostVirtAddr};
use serde::Serialize;

/// `KVM_MEM_LOG_DIRTY_PAGES`.
pub const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// `KVM_MEM_READONLY`.
pub const KVM_MEM_READONLY: u32 = 1 << 1;
/// `KVM_USER_MEM_SLOTS` on x86 (`KVM_MEM_SLOTS_NUM` − `KVM_INTERNAL_MEM_SLOTS`).
pub const KVM_USER_MEM_SLOTS: u32 = 32764;
/// `KVM_MEM_MAX_NR_PAGES`.
pub const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

/// `struct kvm_userspace_memory_region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserMemoryRegion {
    /// Slot id (low 16 bits) and address-space id (high 16 bits).
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// First guest-physical address.
    pub guest_phys_addr: GuestPhysAddr,
    /// Bytes; 0 deletes the slot.
    pub memory_size: u64,
    /// Host virtual address backing the first byte.
    pub userspace_addr: HostVirtAddr,
}

/// `struct kvm_memory_slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memslot {
    /// Slot id.
    pub id: u32,
    /// First guest frame.
    pub base_gfn: u64,
    /// Frames.
    pub npages: u64,
    /// Host address of `base_gfn`.
    pub userspace_addr: HostVirtAddr,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
}

/// Frames per huge page of `level` (`KVM_PAGES_PER_HPAGE`).
pub const fn pages_per_hpage(level: Level) -> u64 {
    level.size() >> 12
}

impl Memslot {
    /// One past the last frame.
    pub fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// True if `gfn` is in the slot.
    pub fn contains(&self, gfn: u64) -> bool {
        (self.base_gfn..self.end_gfn()).contains(&gfn)
    }

    /// `__gfn_to_hva_memslot`.
    pub fn gfn_to_hva(&self, gfn: u64) -> HostVirtAddr {
        self.userspace_addr + ((gfn - self.base_gfn) << 12)
    }

    /// The guest frames whose host addresses intersect `[start, end)` (for MMU notifiers).
    pub fn hva_range_to_gfns(&self, start: HostVirtAddr, end: HostVirtAddr) -> Option<(u64, u64)> {
        let s_end = self.userspace_addr + (self.npages << 12);
        let lo = start.max(self.userspace_addr);
        let hi = end.min(s_end);
        (lo < hi).then(|| {
            (
                self.base_gfn + ((lo - self.userspace_addr) >> 12),
                self.base_gfn + ((hi - self.userspace_addr).div_ceil(4096)),
            )
        })
    }

    /// `KVM_MEM_READONLY`.
    pub fn readonly(&self) -> bool {
        self.flags & KVM_MEM_READONLY != 0
    }

    /// `kvm_slot_dirty_track_enabled`.
    pub fn dirty_logging(&self) -> bool {
        self.flags & KVM_MEM_LOG_DIRTY_PAGES != 0
    }

    /// `lpage_info_slot(gfn, slot, level)->disallow_lpage`.
    pub fn disallow_lpage(&self, gfn: u64, level: Level) -> bool {
        if level == Level::Pte {
            return false;
        }
        let p = pages_per_hpage(level);
        let ugfn = self.userspace_addr.as_u64() >> 12;
        if (self.base_gfn ^ ugfn) & (p - 1) != 0 {
            return true;
        }
        let block = gfn & !(p - 1);
        block < self.base_gfn || block + p > self.end_gfn()
    }
}

/// Why `KVM_SET_USER_MEMORY_REGION` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemslotError {
    /// `-EINVAL`.
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    Inval(String),
    /// `-EEXIST`: the new range overlaps another slot.
    #[error("slot {slot}: gfns {base:#x}+{npages:#x} overlap slot {other}")]
    Exist {
        /// The slot being created or moved.
        slot: u32,
        /// Its first frame.
        base: u64,
        /// Its frames.
        npages: u64,
        /// The slot it overlaps.
        other: u32,
    },
}

impl MemslotError {
    /// The errno name.
    pub fn errno_name(&self) -> &'static str {
        match self {
            MemslotError::Inval(_) => "EINVAL",
            MemslotError::Exist { .. } => "EEXIST",
        }
    }
}

/// What a successful `KVM_SET_USER_MEMORY_REGION` did (`enum kvm_mr_change`), with the slot
/// before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemslotChange {
    /// A new slot.
    Create(Memslot),
    /// A slot removed.
    Delete(Memslot),
    /// A slot moved in guest-physical space.
    Move {
        /// Before.
        old: Memslot,
        /// After.
        new: Memslot,
    },
    /// Only the flags changed.
    FlagsOnly {
        /// Before.
        old: Memslot,
        /// After.
        new: Memslot,
    },
    /// Nothing changed.
    Unchanged,
}

/// The memslots of the VM's one address space.
#[derive(Debug, Clone, Default)]
pub struct Memslots {
    slots: BTreeMap<u32, Memslot>,
}

impl Memslots {
    /// The slot containing `gfn` (`gfn_to_memslot`).
    pub fn find(&self, gfn: u64) -> Option<&Memslot> {
        self.slots.values().find(|s| s.contains(gfn))
    }

    /// Every slot.
    pub fn iter(&self) -> impl Iterator<Item = &Memslot> {
        self.slots.values()
    }

    /// Slot `id`.
    pub fn get(&self, id: u32) -> Option<&Memslot> {
        self.slots.get(&id)
    }

    /// `__kvm_set_memory_region`, minus the MMU side effects (the caller zaps for DELETE, MOVE
    /// and dirty-logging changes). `task_size` is the end of user space (`access_ok`).
    pub fn set(
        &mut self,
        m: &UserMemoryRegion,
        task_size: u64,
    ) -> Result<MemslotChange, MemslotError> {
        let inval = |s: &str| Err(MemslotError::Inval(s.to_string()));
        if m.flags & !(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY) != 0 {
            return inval("unknown flags");
        }
        let (as_id, id) = (m.slot >> 16, m.slot & 0xffff);
        if as_id != 0 || id >= KVM_USER_MEM_SLOTS {
            return inval("slot id out of range");
        }
        if m.memory_size & 0xfff != 0 {
            return inval("memory_size is not page aligned");
        }
        if !m.guest_phys_addr.is_aligned(0x1000) {
            return inval("guest_phys_addr is not page aligned");
        }
        if !m.userspace_addr.is_aligned(0x1000)
            || m.userspace_addr
                .checked_add(m.memory_size)
                .is_none_or(|e| e.as_u64() > task_size)
        {
            return inval("userspace_addr is not page aligned or not a user address range");
        }
        // the slot's last byte must be a guest-physical address (Linux: the last gfn at most
        // `kvm_mmu_max_gfn()`); a slot may end exactly at 2^52
        if m.guest_phys_addr
            .as_u64()
            .checked_add(m.memory_size)
            .is_none_or(|e| e > 1 << hugepfn_mm::addr::PHYS_ADDR_BITS)
        {
            return inval(
                "guest_phys_addr + memory_size runs past the guest-physical address width",
            );
        }
        if (m.memory_size >> 12) > KVM_MEM_MAX_NR_PAGES {
            return inval("more than KVM_MEM_MAX_NR_PAGES pages");
        }
        let old = self.slots.get(&id).copied();
        if m.memory_size == 0 {
            return match old {
                Some(o) => {
                    self.slots.remove(&id);
                    Ok(MemslotChange::Delete(o))
                }
                None => inval("deleting a slot that does not exist"),
            };
        }
        let new = Memslot {
            id,
            base_gfn: m.guest_phys_addr.gfn(),
            npages: m.memory_size >> 12,
            userspace_addr: m.userspace_addr,
            flags: m.flags,
        };
        let change = match old {
            None => MemslotChange::Create(new),
            Some(o) => {
                if o.userspace_addr != new.userspace_addr
                    || o.npages != new.npages
                    || (o.flags ^ new.flags) & KVM_MEM_READONLY != 0
                {
                    return inval("a slot can only be moved or have its flags changed");
                }
                if o.base_gfn != new.base_gfn {
                    MemslotChange::Move { old: o, new }
                } else if o.flags != new.flags {
                    MemslotChange::FlagsOnly { old: o, new }
                } else {
                    return Ok(MemslotChange::Unchanged);
                }
            }
        };
        if matches!(
            change,
            MemslotChange::Create(_) | MemslotChange::Move { .. }
        ) && let Some(other) = self
            .slots
            .values()
            .find(|s| s.id != id && s.base_gfn < new.end_gfn() && new.base_gfn < s.end_gfn())
        {
            return Err(MemslotError::Exist {
                slot: id,
                base: new.base_gfn,
                npages: new.npages,
                other: other.id,
            });
        }
        self.slots.insert(id, new);
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;
    const TASK: u64 = 1 << 47;

    fn region(slot: u32, gpa: u64, size: u64, hva: u64) -> UserMemoryRegion {
        UserMemoryRegion {
            slot,
            flags: 0,
            guest_phys_addr: GuestPhysAddr::new(gpa).expect("a 52-bit GPA"),
            memory_size: size,
            userspace_addr: HostVirtAddr::new(hva),
        }
    }

    #[test]
    fn lpage_info_follows_congruence_and_slot_edges() {
        let s = Memslot {
            id: 0,
            base_gfn: (G + (2 << 20)) >> 12,
            npages: (2 * G) >> 12,
            userspace_addr: HostVirtAddr::new(0x7f00_0000_0000 + (2 << 20)),
            flags: 0,
        };
        // congruent modulo 1G: only the partial first and last 1G blocks are disallowed
        assert!(s.disallow_lpage(s.base_gfn, Level::Pud));
        assert!(!s.disallow_lpage((2 * G) >> 12, Level::Pud));
        assert!(s.disallow_lpage((3 * G) >> 12, Level::Pud));
        assert!(!s.disallow_lpage(s.base_gfn, Level::Pmd));
        assert!(!s.disallow_lpage(s.base_gfn, Level::Pte));
        // a hva skewed by 4K: no huge pages anywhere
        let skew = Memslot {
            userspace_addr: s.userspace_addr + 4096,
            ..s
        };
        assert!(skew.disallow_lpage((2 * G) >> 12, Level::Pud));
        assert!(skew.disallow_lpage((2 * G) >> 12, Level::Pmd));
        assert_eq!(s.gfn_to_hva(s.base_gfn + 3), s.userspace_addr + 3 * 4096);
        assert_eq!(
            s.hva_range_to_gfns(HostVirtAddr::default(), s.userspace_addr + 4097),
            Some((s.base_gfn, s.base_gfn + 2))
        );
        assert_eq!(
            s.hva_range_to_gfns(HostVirtAddr::default(), s.userspace_addr),
            None
        );
    }

    #[test]
    fn set_memory_region_checks_and_changes() {
        let mut m = Memslots::default();
        let hva = 0x7f00_0000_0000;
        let c = m.set(&region(0, 4 * G, G, hva), TASK).expect("create");
        assert!(matches!(c, MemslotChange::Create(_)));
        assert_eq!(
            m.set(&region(0, 4 * G, G, hva), TASK),
            Ok(MemslotChange::Unchanged)
        );
        let e = |r: Result<MemslotChange, MemslotError>| r.map_err(|e| e.errno_name()).err();
        // overlap, bad alignment, bad flags, bad ids, kernel addresses, wrap, resize
        assert_eq!(
            e(m.set(&region(1, 4 * G + G / 2, G, hva + G), TASK)),
            Some("EEXIST")
        );
        assert_eq!(
            e(m.set(&region(1, 8 * G + 1, G, hva), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(1, 8 * G, G + 1, hva), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(1, 8 * G, G, hva + 1), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(1, 8 * G, G, TASK - 4096), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(KVM_USER_MEM_SLOTS, 8 * G, G, hva), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(1 << 16, 8 * G, G, hva), TASK)),
            Some("EINVAL")
        );
        // a slot past the guest-physical width (no GPA can wrap 64 bits: the type holds 52);
        // one that ends at 2^52 exactly is fine (its last gfn is the last there is)
        assert_eq!(
            e(m.set(&region(1, (1 << 52) - 4096, G, hva), TASK)),
            Some("EINVAL")
        );
        assert!(matches!(
            m.set(&region(5, (1 << 52) - G, G, hva + 2 * G), TASK),
            Ok(MemslotChange::Create(_))
        ));
        assert!(matches!(
            m.set(&region(5, 0, 0, 0), TASK),
            Ok(MemslotChange::Delete(_))
        ));
        assert_eq!(
            e(m.set(&region(0, 4 * G, 2 * G, hva), TASK)),
            Some("EINVAL")
        );
        assert_eq!(
            e(m.set(&region(3, 0, 0, hva), TASK)),
            Some("EINVAL"),
            "delete nothing"
        );
        let flags = UserMemoryRegion {
            flags: 1 << 5,
            ..region(1, 8 * G, G, hva)
        };
        assert_eq!(e(m.set(&flags, TASK)), Some("EINVAL"));
        // readonly cannot be toggled; dirty logging can
        let ro = UserMemoryRegion {
            flags: KVM_MEM_READONLY,
            ..region(0, 4 * G, G, hva)
        };
        assert_eq!(e(m.set(&ro, TASK)), Some("EINVAL"));
        let dl = UserMemoryRegion {
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            ..region(0, 4 * G, G, hva)
        };
        assert!(matches!(
            m.set(&dl, TASK),
            Ok(MemslotChange::FlagsOnly { .. })
        ));
        assert!(m.get(0).is_some_and(Memslot::dirty_logging));
        // move, then delete
        let mv = UserMemoryRegion {
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            ..region(0, 16 * G, G, hva)
        };
        assert!(matches!(m.set(&mv, TASK), Ok(MemslotChange::Move { .. })));
        assert_eq!(m.find((16 * G) >> 12).map(|s| s.id), Some(0));
        assert!(matches!(
            m.set(&region(0, 0, 0, 0), TASK),
            Ok(MemslotChange::Delete(_))
        ));
        assert_eq!(m.iter().count(), 0);
    }
}
