//! The ops only the model runs: what the probe (and so the lab) refuses, each runner with its
//! own words for why.

use crate::scenario::Step;

/// Why only the model can run a step (see [`model_only`]): the ops the probe refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOnly {
    /// `kvm_memslot` and `guest_touch`: they need a VM with KVM.
    Kvm,
    /// `access`: its counts are the MMU model's TLB and page-walk counters, which a process
    /// cannot read from the kernel.
    Access,
}

/// Whether `step` can run only on the model, not on a kernel through the probe (`None`: it
/// can run on both).
pub fn model_only(step: &Step) -> Option<ModelOnly> {
    match step {
        Step::KvmMemslot(_) | Step::GuestTouch(_) => Some(ModelOnly::Kvm),
        Step::Access(_) => Some(ModelOnly::Access),
        _ => None,
    }
}
