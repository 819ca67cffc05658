//! Why the probe could not run a scenario (as opposed to a scenario whose expectations failed).
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A setup error: bad input, missing device, VFIO refused. Exit status 2.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The scenario file did not load.
    #[error(transparent)]
    Scenario(#[from] hugepfn_scenario::ScenarioError),
    /// `--device` is malformed.
    #[error("--device {0:?}: expected BDF (e.g. 0000:01:00.0) or NAME=BDF")]
    DeviceArg(String),
    /// `--device NAME=...` names no device of the scenario.
    #[error("--device {name}=...: the scenario has no device called {name:?} (it has: {have})")]
    UnknownDevice {
        /// The name given.
        name: String,
        /// The scenario's device names.
        have: String,
    },
    /// A scenario device has no real device.
    #[error(
        "scenario device {name:?} has no real device: {why}; pass --device {name}=DOMAIN:BUS:DEV.FN"
    )]
    Unresolved {
        /// Scenario device name.
        name: String,
        /// Why the automatic choice failed.
        why: String,
    },
    /// The BDF does not exist in sysfs.
    #[error("no PCI device {0} in /sys/bus/pci/devices")]
    NoSuchDevice(String),
    /// A sysfs file could not be read or written.
    #[error("{}: {source}", path.display())]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A sysfs file has unexpected content.
    #[error("{}: {msg}", path.display())]
    SysfsFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The device has no such memory BAR.
    #[error("device {bdf} has no BAR {index}")]
    NoBar {
        /// Device.
        bdf: String,
        /// BAR index.
        index: u8,
    },
    /// The device is bound to another driver and `--bind` was not given.
    #[error("device {bdf} is bound to {driver}, not vfio-pci; pass --bind to rebind it (as root)")]
    NotVfio {
        /// Device.
        bdf: String,
        /// Its driver, or "no driver".
        driver: String,
    },
    /// The vfio-pci driver is not loaded.
    #[error("the vfio-pci driver is not loaded (modprobe vfio-pci)")]
    NoVfioPci,
    /// Binding to vfio-pci did not take.
    #[error("binding {bdf} to vfio-pci failed: it is now bound to {}", driver.as_deref().unwrap_or("no driver"))]
    BindFailed {
        /// Device.
        bdf: String,
        /// Its driver afterwards.
        driver: Option<String>,
    },
    /// A VFIO call failed.
    #[error("{what}: {source}")]
    Vfio {
        /// The call, e.g. "open /dev/vfio/vfio".
        what: String,
        /// The error.
        source: io::Error,
    },
    /// VFIO refused for a reason that is not an errno.
    #[error("{0}")]
    VfioSetup(String),
    /// The kernel's THP mode differs from the scenario's and `--set-thp` was not given.
    #[error(
        "the scenario wants transparent_hugepage/enabled = {want}, the kernel has {have}; pass --set-thp to change it for the run (as root)"
    )]
    ThpMismatch {
        /// The scenario's mode.
        want: &'static str,
        /// The kernel's.
        have: String,
    },
    /// The probe's fault handler did not catch its self-test fault.
    #[error("the SIGBUS/SIGSEGV handler did not catch its self-test fault")]
    FaultHandler,
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Output(#[from] io::Error),
    /// The scenario uses an op the probe cannot run.
    #[error("line {line}: `{op}` is not supported by hugepfn-probe: {why}")]
    UnsupportedOp {
        /// The op.
        op: &'static str,
        /// Its line.
        line: usize,
        /// Why.
        why: &'static str,
    },
    /// A forked child process stopped answering.
    #[error("child process {name:?} (pid {pid}): {why}")]
    Child {
        /// The scenario's name of the child.
        name: String,
        /// Its pid.
        pid: i32,
        /// What went wrong.
        why: String,
    },
}
