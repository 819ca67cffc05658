//! hugepfn-kvm: KVM's second-stage MMU over the hugepfn mm model.
//!
//! A [`Vm`] belongs to a VMM process (an [`hugepfn_mm::Mm`]); its [`memslot`]s say which host
//! virtual addresses back which guest frames; its [`ept`] is filled on EPT violations the way
//! x86 KVM's TDP MMU does it — `hva_to_pfn` (gup-fast, slow GUP, then `hva_to_pfn_remapped`
//! through `follow_pfnmap_start` and `fixup_user_fault` for VM_PFNMAP memory such as a vfio BAR),
//! `host_pfn_mapping_level` from the host leaf, capped by the memslot's `lpage_info` — and
//! emptied by the MMU notifier KVM registers on the VMM's mm, so a vfio revoke or a munmap of
//! the BAR drops the guest's mappings too.
//!
//! Module docs name the kernel functions modelled and the deliberate differences.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ept;
pub mod memslot;
pub mod vm;

pub use ept::{Ept, EptError, EptLeaf, MemType};
pub use memslot::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, Memslot, MemslotChange, MemslotError,
    UserMemoryRegion,
};
pub use vm::{GuestAccess, GuestTouch, KvmConfig, KvmError, KvmStats, Vm, host_pfn_mapping_level};
