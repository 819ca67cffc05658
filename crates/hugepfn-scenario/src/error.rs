//! Errors of [`crate::parse_scenario`] / [`crate::load_scenario`]: every one names the file,
//! line and column it is about.

use std::fmt;

use hugepfn_units::{ParseSizeError, format_addr, format_size};
use thiserror::Error;

use crate::scenario::PlacementError;

/// A place in a scenario file: `origin:line:column` (1-based; line 0 = the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file name (or the `origin` given to [`crate::parse_scenario`]).
    pub origin: String,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column in characters, 0 if unknown.
    pub column: usize,
}

/// Byte offsets at which the lines of `text` start (0 first).
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

impl Location {
    /// The location of byte `offset` of `text` (clamped to the end of the text).
    pub fn from_offset(origin: &str, text: &str, offset: usize) -> Location {
        Location::from_line_starts(origin, text, &line_starts(text), offset)
    }

    /// The same, with the text's [`line_starts`] computed once: a lookup is a binary search,
    /// so locating every step of a large file stays linear in the file.
    pub fn from_line_starts(origin: &str, text: &str, starts: &[usize], offset: usize) -> Location {
        let bytes = text.as_bytes();
        let head = &bytes[..offset.min(bytes.len())];
        let idx = starts.partition_point(|&s| s <= head.len()).max(1) - 1;
        let line_start = starts.get(idx).copied().unwrap_or(0);
        let line = idx + 1;
        // Count characters, not bytes: skip UTF-8 continuation bytes.
        let column = 1 + head[line_start..]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        Location {
            origin: origin.to_string(),
            line,
            column,
        }
    }

    /// A location that only names the file.
    pub fn file(origin: &str) -> Location {
        Location {
            origin: origin.to_string(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.origin),
            (l, 0) => write!(f, "{}:{l}", self.origin),
            (l, c) => write!(f, "{}:{l}:{c}", self.origin),
        }
    }
}

/// Why a scenario file was refused.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read the scenario file: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or does not have the shape of a scenario: a syntax error, an
    /// unknown key, a value of the wrong type, an unknown enum value (`thp = "sometimes"`), a
    /// missing required key. `message` is the TOML/serde message.
    #[error("{at}: {message}")]
    Toml {
        /// Where.
        at: Location,
        /// What the TOML reader said.
        message: String,
    },
    /// Well-formed TOML whose content does not make sense (see [`Problem`]).
    #[error("{at}: {problem}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        problem: Problem,
    },
}

impl ScenarioError {
    /// Where the error is, unless it is an I/O error.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ScenarioError::Io { .. } => None,
            ScenarioError::Toml { at, .. } | ScenarioError::Invalid { at, .. } => Some(at),
        }
    }

    /// The semantic problem, if this is one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ScenarioError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// A content error in a well-formed scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// `step` is not an array of tables.
    #[error("`step` must be an array of tables: write each step as a [[step]] table")]
    StepsNotTables,
    /// A `[[step]]` without `op`.
    #[error("this step has no `op`: expected op = one of {}", ops_list())]
    MissingOp,
    /// `op` is not a string.
    #[error("`op` must be a string, one of {}", ops_list())]
    OpNotString,
    /// `op` names no known operation.
    #[error("unknown op `{op}`, expected one of {}", ops_list())]
    UnknownOp {
        /// What the file said.
        op: String,
    },
    /// A size, offset or length string that `parse_size` refused.
    #[error("`{field}`: {source}")]
    BadSize {
        /// The key.
        field: &'static str,
        /// The parser's reason (it quotes the value).
        source: ParseSizeError,
    },
    /// A negative integer where a size was expected.
    #[error("`{field}` = {value}: a size cannot be negative")]
    NegativeSize {
        /// The key.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A `va` that is not a placement.
    #[error("`va`: {0}")]
    BadPlacement(PlacementError),
    /// `va = "vmm:NAME"` with a name that is not a VMM policy.
    #[error("`va`: {0}")]
    UnknownVmm(crate::vmm::UnknownVmm),
    /// `va = "vmm:..."` on a step other than `mmap` (a VMM places its mmaps only).
    #[error("`va = \"vmm:...\"` is a VMM's placement of an mmap; `{op}` takes the other forms")]
    VmmPlacementNotMmap {
        /// The step's op.
        op: &'static str,
    },
    /// `preset` names no GPU preset.
    #[error("unknown GPU preset `{name}` (known: {})", .known.join(", "))]
    UnknownPreset {
        /// The name used.
        name: String,
        /// The presets that exist.
        known: Vec<&'static str>,
    },
    /// A device with both `preset` and `bars`.
    #[error("device `{device}` has both `preset` and `bars`: give one")]
    PresetWithBars {
        /// The device.
        device: String,
    },
    /// Two devices with the same name.
    #[error("duplicate device name `{name}` (first defined on line {first_line})")]
    DuplicateDevice {
        /// The name.
        name: String,
        /// Line of the first definition.
        first_line: usize,
    },
    /// A BAR index outside 0..=5.
    #[error("BAR index {index} does not exist on a PCI function: expected 0..=5")]
    BarIndexOutOfRange {
        /// The value.
        index: i64,
    },
    /// Two BARs with the same index in one device.
    #[error("device `{device}` defines BAR {index} twice")]
    DuplicateBar {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
    },
    /// `phys` not 4 KiB aligned.
    #[error("BAR {index}: phys {} is not 4 KiB aligned (a BAR that can be mmapped starts on a page boundary)", format_addr(*phys))]
    BarPhysUnaligned {
        /// BAR index.
        index: u8,
        /// The address.
        phys: u64,
    },
    /// `size = 0`.
    #[error("BAR {index}: size is zero")]
    BarSizeZero {
        /// BAR index.
        index: u8,
    },
    /// `phys + size` beyond 2^64.
    #[error("BAR {index}: phys {} + size {} overflows the 64-bit address space", format_addr(*phys), format_size(*size))]
    BarOverflow {
        /// BAR index.
        index: u8,
        /// Address.
        phys: u64,
        /// Size.
        size: u64,
    },
    /// A step names a device that is not defined.
    #[error("unknown device `{name}`{}", known_list("devices", known))]
    UnknownDevice {
        /// The name used.
        name: String,
        /// The names that exist.
        known: Vec<String>,
    },
    /// An `mmap` names a BAR the device does not have.
    #[error(
        "device `{device}` has no BAR {index} (it has: {})",
        bars_list(available)
    )]
    UnknownBar {
        /// Device name.
        device: String,
        /// The index used.
        index: i64,
        /// The device's BAR indices.
        available: Vec<u8>,
    },
    /// Two `mmap` steps with the same `name`.
    #[error("duplicate mapping name `{name}` (first mmap on line {first_line})")]
    DuplicateMapping {
        /// The name.
        name: String,
        /// Line of the first `mmap`.
        first_line: usize,
    },
    /// A step names a mapping that no `mmap` step creates.
    #[error(
        "unknown mapping `{name}`{}",
        known_list("mappings created so far", known)
    )]
    UnknownMapping {
        /// The name used.
        name: String,
        /// Mapping names created by earlier steps.
        known: Vec<String>,
    },
    /// A step names a mapping that a later `mmap` creates.
    #[error("mapping `{name}` is used before the mmap step that creates it (line {mmap_line})")]
    MappingUsedBeforeMmap {
        /// The name.
        name: String,
        /// Line of the `mmap` step.
        mmap_line: usize,
    },
    /// `stride = 0`.
    #[error("`stride` must be at least 1 byte (4K touches every page)")]
    ZeroStride,
    /// `memory` below [`crate::MIN_MEMORY`].
    #[error("`memory` = {bytes} bytes is too small: the simulated memory must be at least 1M")]
    MemoryTooSmall {
        /// As written, in bytes.
        bytes: u64,
    },
    /// An `errno` expectation that is not an errno name.
    #[error(
        "`errno`: `{value}` is not an errno name: expected \"0\" (no error) or a name like \"EINVAL\", \"EFAULT\", \"EEXIST\""
    )]
    UnknownErrno {
        /// What the file said.
        value: String,
    },
    /// `kernel` (or an `on_kernel` key) names no modelled kernel.
    #[error("`kernel`: {message}")]
    UnknownKernel {
        /// The message listing the accepted versions.
        message: String,
    },
    /// `read_proc` of `pagemap` without `map`.
    #[error("`read_proc` of `pagemap` needs `map` (the mapping whose entries are read)")]
    PagemapNeedsMap,
    /// `map`, `offset` or `len` on a `read_proc` of another file.
    #[error("`{key}` is for `file = \"pagemap\"` only (the other files are read whole)")]
    KeyOnlyForPagemap {
        /// The key.
        key: &'static str,
    },
    /// An `on_kernel` table has `process` or `on_kernel` of its own.
    #[error("an `on_kernel` table holds checks only (no `process`, no nested `on_kernel`)")]
    OnKernelNests,
    /// `on_kernel."ARCH:V"` with the scenario's own `arch`.
    #[error(
        "`on_kernel.\"{key}\"` names this scenario's own arch: its checks for {kernel} go in `on_kernel.\"{kernel}\"` (an `ARCH:` prefix is for running the file as another architecture)"
    )]
    OnKernelOwnArch {
        /// The key as written.
        key: String,
        /// The kernel part.
        kernel: String,
    },
    /// A step names a process that no `fork` creates.
    #[error("unknown process `{name}`{}", known_list("processes so far", known))]
    UnknownProcess {
        /// The name used.
        name: String,
        /// The processes that exist at this step (`main` first).
        known: Vec<String>,
    },
    /// A step names a process that a later `fork` creates.
    #[error("process `{name}` is used before the fork step that creates it (line {fork_line})")]
    ProcessUsedBeforeFork {
        /// The name.
        name: String,
        /// Line of the `fork` step.
        fork_line: usize,
    },
    /// A `fork` whose `child` names an existing process.
    #[error("duplicate process name `{name}` ({})", first_process(*first_line))]
    DuplicateProcess {
        /// The name.
        name: String,
        /// Line of the `fork` that created it; 0 for the first process, `main`.
        first_line: usize,
    },
    /// A memslot flag listed twice.
    #[error("`flags`: `{flag}` is listed twice")]
    DuplicateFlag {
        /// The flag's spelling.
        flag: String,
    },
    /// An `access` key that the step's `pattern` does not use (`stride` without
    /// `pattern = "strided"`, `lines` without `pattern = "chase"`).
    #[error("`{key}` applies to pattern = \"{wants}\" only; this step's pattern is \"{pattern}\"")]
    KeyNotForPattern {
        /// The key.
        key: &'static str,
        /// The pattern that uses it.
        wants: &'static str,
        /// The step's pattern.
        pattern: &'static str,
    },
    /// An `access` stride that is not a non-zero multiple of 8.
    #[error("`stride` {} must be a non-zero multiple of 8 bytes (the loads are 8 bytes)", format_size(*stride))]
    BadAccessStride {
        /// The value.
        stride: u64,
    },
    /// A chase `lines` outside 1..=64 or not a power of two.
    #[error(
        "`lines` = {lines} must be a power of two from 1 to 64 (cache lines used per 4 KiB page)"
    )]
    BadChaseLines {
        /// The value.
        lines: i64,
    },
    /// A `vm` host page size other than 4K, 2M or 1G.
    #[error("`vm` = {}: the second stage maps with \"4K\", \"2M\" or \"1G\" pages", format_size(*size))]
    BadHostPage {
        /// The value.
        size: u64,
    },
    /// `offset + len` (or `iova + len`, `gpa + len`) beyond 2^64.
    #[error("`{key}` {} + `len` {} overflows 64 bits", format_size(*offset), format_size(*len))]
    RangeOverflow {
        /// The key of the start: `offset`, `iova` or `gpa`.
        key: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

fn ops_list() -> String {
    crate::scenario::Step::OPS
        .iter()
        .map(|o| format!("`{o}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_process(first_line: usize) -> String {
    if first_line == 0 {
        format!("`{}` is the first process", crate::MAIN_PROCESS)
    } else {
        format!("first forked on line {first_line}")
    }
}

fn known_list(what: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!(" (no {what} are defined)")
    } else {
        let names: Vec<String> = known.iter().map(|n| format!("`{n}`")).collect();
        format!(" ({what}: {})", names.join(", "))
    }
}

fn bars_list(bars: &[u8]) -> String {
    if bars.is_empty() {
        "no BARs".to_string()
    } else {
        bars.iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = 2\n\nc";
        let at = |o| {
            let l = Location::from_offset("f.toml", text, o);
            (l.line, l.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(4), (1, 5));
        assert_eq!(at(6), (2, 1));
        // after the two-byte é the column counts characters
        assert_eq!(at(9), (2, 3));
        assert_eq!(at(14), (3, 1));
        assert_eq!(at(15), (4, 1));
        // past the end: clamped, no panic
        assert_eq!(at(1000), (4, 2));
        assert_eq!(Location::from_offset("f", "", 5).line, 1);
        assert_eq!(
            Location::from_offset("f.toml", text, 6).to_string(),
            "f.toml:2:1"
        );
        assert_eq!(Location::file("f.toml").to_string(), "f.toml");
        let line_only = Location {
            origin: "f".into(),
            line: 3,
            column: 0,
        };
        assert_eq!(line_only.to_string(), "f:3");
    }

    #[test]
    fn messages_read_well() {
        let p = Problem::UnknownDevice {
            name: "gpu".into(),
            known: vec![],
        };
        assert_eq!(
            p.to_string(),
            "unknown device `gpu` (no devices are defined)"
        );
        let p = Problem::UnknownBar {
            device: "gpu".into(),
            index: 3,
            available: vec![0, 1],
        };
        assert_eq!(p.to_string(), "device `gpu` has no BAR 3 (it has: 0, 1)");
        let p = Problem::UnknownOp { op: "mmapp".into() };
        assert!(p.to_string().contains("`mmap`, `touch`"), "{p}");
        let e = ScenarioError::Invalid {
            at: Location {
                origin: "x.toml".into(),
                line: 4,
                column: 2,
            },
            problem: Problem::ZeroStride,
        };
        assert!(e.to_string().starts_with("x.toml:4:2: `stride`"), "{e}");
        let p = Problem::DuplicateProcess {
            name: "main".into(),
            first_line: 0,
        };
        assert_eq!(
            p.to_string(),
            "duplicate process name `main` (`main` is the first process)"
        );
        let p = Problem::DuplicateProcess {
            name: "c1".into(),
            first_line: 9,
        };
        assert_eq!(
            p.to_string(),
            "duplicate process name `c1` (first forked on line 9)"
        );
        let p = Problem::UnknownProcess {
            name: "c2".into(),
            known: vec!["main".into(), "c1".into()],
        };
        assert_eq!(
            p.to_string(),
            "unknown process `c2` (processes so far: `main`, `c1`)"
        );
        assert_eq!(e.problem(), Some(&Problem::ZeroStride));
        assert_eq!(e.location().map(|l| l.line), Some(4));
    }
}
