//! hugepfn-hw: what the TLB sees.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod measure;
pub mod pattern;
