//! hugepfn-hw: what the TLB sees.
//!
//! An x86-64 MMU model ([`mmu`]: L1 DTLBs, STLB, paging-structure caches, a walker reading the
//! simulated page tables of `hugepfn-mm`, 2-D walks over `hugepfn-kvm`'s EPT in [`nested`],
//! data caches in [`cache`]) with CPU presets whose sources are cited in [`config`]; access
//! workloads ([`workload`]); a time model whose costs are calibrated on the machine it runs on
//! ([`calib`], [`calibrate`], [`measure`]); and the `lat_mem_rd` reproduction ([`latmemrd`]).
//! docs/tlb.md tells the whole story.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assoc;
pub mod cache;
pub mod calib;
pub mod calibrate;
pub mod config;
pub mod latmemrd;
pub mod measure;
pub mod mmu;
pub mod nested;
pub mod pattern;
pub mod sim;
pub mod sweep;
#[cfg(test)]
mod test_tables;
pub mod walk;
pub mod workload;

pub use calib::{Calibration, Costs};
pub use config::CpuModel;
pub use mmu::{Counters, Mmu, Space};
pub use sim::{Mapping, Translation};
pub use workload::{AccessResult, Pattern, Workload};
