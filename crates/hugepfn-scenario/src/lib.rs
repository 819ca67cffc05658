//! Scenario files for huge PFN mapping experiments, and the report JSON of a run.
//!
//! A *scenario* (TOML) describes PCI devices with memory BARs (as vfio-pci exposes them) and a
//! sequence of steps: `mmap` a BAR range at a chosen kind of virtual address, `touch` it,
//! `munmap` part of it, toggle the PCI memory-decode bit, reset, change the power state, and
//! `expect` fault / signal / leaf counts. The same file drives the executable mm model
//! (`hugepfn run`) and the real-kernel probe; both print a [`RunReport`] as JSON.
//!
//! This crate is only the format: serde types, parsing, validation and the pure expectation
//! check [`check_expect`]. It knows nothing about page tables.
//!
//! # Format
//!
//! ```toml
//! name = "H100 BAR1 mapped by a VMM"
//! arch = "x86_64"             # or "x86_64-5level"; default x86_64
//! thp = "always"              # always | madvise | never; default always
//! description = "optional free text"
//!
//! [[device]]
//! name = "gpu"
//! bars = [ { index = 1, phys = "0x100000000000", size = "128G" } ]
//!
//! [[step]]
//! op = "mmap"                 # name, device, bar required
//! name = "b1"
//! device = "gpu"
//! bar = 1
//! offset = "0"                # default 0
//! len = "128G"                # default "all": the rest of the BAR
//! va = "align:1G"             # kernel | align:SIZE[+SKEW] | congruent:SIZE | 0xADDRESS
//! madvise = "hugepage"        # optional: hugepage | nohugepage
//! shared = true               # default true
//!
//! [[step]]
//! op = "touch"                # map required; offset 0, len "all", stride "4K",
//! map = "b1"                  # access "write" (| "read"), order "forward" (| "reverse")
//!
//! [[step]]
//! op = "expect"               # deltas since the previous expect; any subset
//! faults = 128
//! faults_by_level = { pud = 128 }
//! sigbus = 0
//! leaves = { pud = 128 }      # mapped now, not a delta
//! ```
//!
//! Other ops: `munmap` (map, offset, len), `memory` (device, enable), `reset` (device),
//! `power` (device, state = "d0" | "d3hot"). Sizes are strings read by
//! [`hugepfn_units::parse_size`] (`"4K"`, `"1G"`, `"0x1000"`) or TOML integers.
//!
//! # Errors
//!
//! Unknown keys, ops and enum values are errors. Every error names `file:line:column`
//! ([`ScenarioError`], [`Problem`]); every [`Step`] carries its line so that a runner can say
//! "step 5 (line 40): expect failed". The parser never panics.

mod error;
mod parse;
mod report;
mod scenario;

pub use error::{Location, Problem, ScenarioError};
pub use parse::{load_scenario, parse_scenario};
pub use report::{
    Counters, ExpectOutcome, Levels, Mismatch, PtPages, RunReport, StepReport, check_expect,
};
pub use scenario::{
    Access, Arch, BarSpec, DeviceSpec, ExpectSpec, ExpectStep, Len, LevelCounts, Madvise,
    MemoryStep, MmapStep, MunmapStep, Order, PlacementError, PowerState, PowerStep, ResetStep,
    Scenario, Step, ThpMode, TouchStep, VaPlacement,
};
