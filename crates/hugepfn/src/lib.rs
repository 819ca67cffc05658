//! The `hugepfn` tool as a library: the scenario runner on the model, the demo, and the text
//! and JSON output the CLI prints. `main.rs` is only argument parsing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod compare;
pub mod consumers_cli;
pub mod demo;
pub mod fuzz;
pub mod hw_cli;
pub mod inspect;
pub mod kernels_cli;
pub mod lab;
pub mod output;
pub mod runner;
pub mod vmm_cli;
