//! TOML text → [`Scenario`].
//!
//! How: the document is read once into toml's spanned tree ([`DeTable`]). The `step` array is
//! taken out of it; the rest is deserialized into a `deny_unknown_fields` head struct. Each step
//! table is looked at for its `op`, then deserialized from its own spanned value into the
//! per-op `deny_unknown_fields` struct, so an unknown key is reported at its own line and column
//! (serde's `deny_unknown_fields` does not work through `#[serde(tag = "op")]`, hence this).
//! Sizes, lengths and `va` are kept as spanned strings/integers until validation, so that
//! [`Problem`]s also point at the offending value.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use hugepfn_units::{KIB, parse_size};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{Location, Problem, ScenarioError};
use crate::scenario::{
    Access, AccessPattern, AccessStep, Advice, Arch, BarSpec, CpuSpec, DeviceSpec, DmaMapStep,
    DmaMode, DmaUnmapStep, ErrnoName, ExpectSpec, ExpectStep, FaultPathSpec, ForkStep,
    GuestTouchStep, Kernel, KernelBug, KvmMemslotStep, Len, LevelCounts, Madvise, MadviseStep,
    MemoryStep, MemslotFlag, MmapStep, MprotectStep, MremapStep, Order, PowerState, PowerStep,
    ProcFileSpec, ProtSpec, RangeStep, ReadProcStep, ResetStep, Scenario, Step, TableLevelCounts,
    ThpMode, TlbMissCounts, TouchStep, VaPlacement,
};

/// The smallest `memory` a scenario may ask for: 1 MiB (256 frames; a process needs a few).
pub const MIN_MEMORY: u64 = 1 << 20;

/// Reads the scenario file at `path`; errors name the path as given.
pub fn load_scenario(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: origin.clone(),
        source,
    })?;
    parse_scenario(&text, &origin)
}

/// Parses and validates scenario text. `origin` (usually the path) prefixes every error
/// message: `origin:line:column: message`. Never panics.
pub fn parse_scenario(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let mut cx = Cx {
        origin,
        text,
        arch: Arch::default(),
        line_starts: crate::error::line_starts(text),
    };
    let mut root = DeTable::parse(text).map_err(|e| cx.syntax_error(&e))?;
    let steps_value = root.get_mut().remove("step");
    let head: RawHead = cx.de(ValueDeserializer::from(Spanned::new(
        root.span(),
        DeValue::Table(root.into_inner()),
    )))?;

    cx.arch = head.arch;
    let devices = cx.devices(head.device)?;
    let step_values = match steps_value {
        None => Vec::new(),
        Some(v) => {
            let span = v.span();
            match v.into_inner() {
                DeValue::Array(a) => a.into_iter().collect(),
                _ => return Err(cx.invalid(&span, Problem::StepsNotTables)),
            }
        }
    };
    let steps = cx.steps(step_values, &devices)?;

    Ok(Scenario {
        name: head.name,
        origin: origin.to_string(),
        arch: head.arch,
        thp: head.thp,
        fault_path: head.fault_path,
        kernel: match head.kernel {
            None => None,
            Some(k) => Some(cx.kernel(&k)?),
        },
        kernel_bugs: head.kernel_bugs,
        memory: match &head.memory {
            None => None,
            Some(v) => {
                let m = cx.size("memory", v)?;
                if m < MIN_MEMORY {
                    return Err(cx.invalid(&v.span(), Problem::MemoryTooSmall { bytes: m }));
                }
                Some(m)
            }
        },
        description: head.description,
        devices,
        steps,
    })
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) forms.

/// A size, offset, length or address as written: a string for `parse_size`, or an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scalar {
    Str(String),
    Unsigned(u64),
    Negative(i64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size string like \"4K\", \"2M\", \"1G\", \"0x1000\", or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(v).map_or(Scalar::Negative(v), Scalar::Unsigned))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    name: String,
    #[serde(default)]
    arch: Arch,
    #[serde(default)]
    thp: ThpMode,
    #[serde(default)]
    fault_path: FaultPathSpec,
    #[serde(default)]
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    kernel_bugs: Vec<KernelBug>,
    #[serde(default)]
    memory: Option<Spanned<Scalar>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    /// Taken out before deserializing; listed so that error messages name it.
    #[serde(default, rename = "step")]
    _step: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    #[serde(default)]
    bars: Vec<RawBar>,
    #[serde(default)]
    preset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBar {
    index: Spanned<i64>,
    phys: Spanned<Scalar>,
    size: Spanned<Scalar>,
}

/// Declares the raw (as written) form of one op's step: a `deny_unknown_fields` struct whose
/// first key is `op` (read already by `Cx::op_of`, here only accepted), then the given fields.
/// An unknown key is reported as "unknown field `k`, expected one of `op`, ..." with the keys
/// in the order they are given here.
macro_rules! raw_step {
    ($(#[$attr:meta])* struct $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$attr])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            #[serde(default, rename = "op")]
            _op: IgnoredAny,
            $($field: $ty,)*
        }
    };
}

raw_step! {
    struct RawMmap {
        name: Spanned<String>,
        device: Spanned<String>,
        bar: Spanned<i64>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        va: Option<Spanned<Scalar>>,
        madvise: Option<Madvise>,
        shared: Option<bool>,
    }
}

raw_step! {
    struct RawTouch {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        stride: Option<Spanned<Scalar>>,
        access: Option<Access>,
        order: Option<Order>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    /// `munmap` and `mincore`: a range of a mapping.
    struct RawRange {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawMprotect {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        prot: ProtSpec,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawMremap {
        map: Spanned<String>,
        va: Option<Spanned<Scalar>>,
        new_len: Option<Spanned<Scalar>>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawMadvise {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        advice: Advice,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawReadProc {
        file: Spanned<ProcFileSpec>,
        map: Option<Spanned<String>>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawFork {
        child: Spanned<String>,
    }
}

raw_step! {
    struct RawDmaMap {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        iova: Spanned<Scalar>,
        mode: Option<DmaMode>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawDmaUnmap {
        iova: Spanned<Scalar>,
        len: Spanned<Scalar>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawKvmMemslot {
        slot: u32,
        gpa: Spanned<Scalar>,
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        flags: Option<Spanned<Vec<MemslotFlag>>>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawGuestTouch {
        gpa: Spanned<Scalar>,
        len: Spanned<Scalar>,
        stride: Option<Spanned<Scalar>>,
        access: Option<Access>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawAccess {
        map: Spanned<String>,
        offset: Option<Spanned<Scalar>>,
        len: Option<Spanned<Scalar>>,
        pattern: AccessPattern,
        stride: Option<Spanned<Scalar>>,
        lines: Option<Spanned<i64>>,
        count: Option<u64>,
        warmup: Option<u64>,
        seed: Option<u64>,
        vm: Option<Spanned<Scalar>>,
        cpu: Option<CpuSpec>,
        process: Option<Spanned<String>>,
    }
}

raw_step! {
    struct RawMemory {
        device: Spanned<String>,
        enable: bool,
    }
}

raw_step! {
    struct RawReset {
        device: Spanned<String>,
    }
}

raw_step! {
    struct RawPower {
        device: Spanned<String>,
        state: PowerState,
    }
}

raw_step! {
    #[derive(Clone)]
    struct RawExpect {
        faults: Option<u64>,
        faults_by_level: Option<LevelCounts>,
        sigbus: Option<u64>,
        sigsegv: Option<u64>,
        skipped: Option<u64>,
        leaves: Option<LevelCounts>,
        errno: Option<Spanned<String>>,
        dma_lookups: Option<u64>,
        iommu_entries: Option<LevelCounts>,
        ept_violations: Option<u64>,
        ept_leaves: Option<LevelCounts>,
        mmu_invalidations: Option<u64>,
        loads: Option<u64>,
        tlb_misses: Option<TlbMissCounts>,
        walk_refs: Option<u64>,
        walk_refs_by_level: Option<TableLevelCounts>,
        walk_refs_ept: Option<u64>,
        walk_faults: Option<u64>,
        leaves_zapped: Option<LevelCounts>,
        resident: Option<u64>,
        process: Option<Spanned<String>>,
        on_kernel: Option<std::collections::BTreeMap<Spanned<String>, Spanned<RawExpect>>>,
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion and validation.

struct Cx<'a> {
    origin: &'a str,
    text: &'a str,
    /// The scenario's `arch` (its own: `on_kernel."ARCH:V"` must name another).
    arch: Arch,
    /// Where each line starts, so that locating an error is a binary search (issue 17: a
    /// 50,000-step file took 18 s when every location counted newlines from the start).
    line_starts: Vec<usize>,
}

/// Process names, for reference checks while walking the steps in order.
struct Procs {
    /// Every `fork` child in the file → line of its first fork (found by a pre-pass).
    anywhere: HashMap<String, usize>,
    /// [`crate::MAIN_PROCESS`] (line 0), then the children forked so far → line.
    so_far: Vec<(String, usize)>,
}

/// Mapping names, for reference checks while walking the steps in order.
struct Maps {
    /// Every mmap name in the file → line of its first mmap (found by a pre-pass).
    anywhere: HashMap<String, usize>,
    /// Names created by the steps seen so far → line, in creation order.
    so_far: Vec<(String, usize)>,
}

impl Cx<'_> {
    fn at(&self, span: &Range<usize>) -> Location {
        Location::from_line_starts(self.origin, self.text, &self.line_starts, span.start)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.at(span).line
    }

    fn invalid(&self, span: &Range<usize>, problem: Problem) -> ScenarioError {
        ScenarioError::Invalid {
            at: self.at(span),
            problem,
        }
    }

    /// A TOML syntax error (the message has no key context).
    fn syntax_error(&self, e: &toml::de::Error) -> ScenarioError {
        ScenarioError::Toml {
            at: e
                .span()
                .map_or_else(|| Location::file(self.origin), |s| self.at(&s)),
            message: e.message().to_string(),
        }
    }

    /// A deserialization error: the message plus the key path toml adds ("... in `faults`").
    fn de<'i, T: Deserialize<'i>>(&self, d: ValueDeserializer<'i>) -> Result<T, ScenarioError> {
        T::deserialize(d).map_err(|e| {
            let text = e.to_string();
            let message = text.trim().replace('\n', " ");
            ScenarioError::Toml {
                at: e
                    .span()
                    .map_or_else(|| Location::file(self.origin), |s| self.at(&s)),
                message,
            }
        })
    }

    fn size(&self, field: &'static str, v: &Spanned<Scalar>) -> Result<u64, ScenarioError> {
        match v.get_ref() {
            Scalar::Unsigned(n) => Ok(*n),
            Scalar::Negative(n) => {
                Err(self.invalid(&v.span(), Problem::NegativeSize { field, value: *n }))
            }
            Scalar::Str(s) => parse_size(s)
                .map_err(|source| self.invalid(&v.span(), Problem::BadSize { field, source })),
        }
    }

    fn size_or(
        &self,
        field: &'static str,
        v: Option<&Spanned<Scalar>>,
        default: u64,
    ) -> Result<u64, ScenarioError> {
        v.map_or(Ok(default), |v| self.size(field, v))
    }

    /// `len`: absent or `"all"` → [`Len::All`]; checks that `offset + len` fits in 64 bits.
    fn len(&self, v: Option<&Spanned<Scalar>>, offset: u64) -> Result<Len, ScenarioError> {
        let Some(v) = v else { return Ok(Len::All) };
        if let Scalar::Str(s) = v.get_ref()
            && s.trim() == "all"
        {
            return Ok(Len::All);
        }
        let len = self.size("len", v)?;
        if offset.checked_add(len).is_none() {
            return Err(self.invalid(
                &v.span(),
                Problem::RangeOverflow {
                    key: "offset",
                    offset,
                    len,
                },
            ));
        }
        Ok(Len::Bytes(len))
    }

    /// `va`; `mmap_len` is the length of the mmap it places (`vmm:` needs one).
    fn placement(
        &self,
        v: Option<&Spanned<Scalar>>,
        op: &'static str,
        mmap_len: Option<u64>,
    ) -> Result<VaPlacement, ScenarioError> {
        let Some(v) = v else {
            return Ok(VaPlacement::Kernel);
        };
        if let Scalar::Str(s) = v.get_ref()
            && let Some(name) = s.trim().strip_prefix("vmm:")
        {
            let policy: crate::vmm::VmmPolicy = name
                .parse()
                .map_err(|e| self.invalid(&v.span(), Problem::UnknownVmm(e)))?;
            let len = mmap_len
                .ok_or_else(|| self.invalid(&v.span(), Problem::VmmPlacementNotMmap { op }))?;
            return Ok(policy.placement(len));
        }
        match v.get_ref() {
            Scalar::Unsigned(n) => Ok(VaPlacement::Fixed(*n)),
            Scalar::Negative(n) => Err(self.invalid(
                &v.span(),
                Problem::NegativeSize {
                    field: "va",
                    value: *n,
                },
            )),
            Scalar::Str(s) => s
                .parse()
                .map_err(|e| self.invalid(&v.span(), Problem::BadPlacement(e))),
        }
    }

    fn devices(&self, raw: Vec<Spanned<RawDevice>>) -> Result<Vec<DeviceSpec>, ScenarioError> {
        let mut out: Vec<DeviceSpec> = Vec::with_capacity(raw.len());
        // name → line of its first device: a duplicate is found in O(1), not by a scan
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(raw.len());
        for rd in raw {
            let line = self.line(&rd.span());
            let rd = rd.into_inner();
            if let Some(&first_line) = seen.get(rd.name.get_ref()) {
                return Err(self.invalid(
                    &rd.name.span(),
                    Problem::DuplicateDevice {
                        name: rd.name.get_ref().clone(),
                        first_line,
                    },
                ));
            }
            seen.insert(rd.name.get_ref().clone(), line);
            if let Some(p) = &rd.preset {
                if !rd.bars.is_empty() {
                    return Err(self.invalid(
                        &p.span(),
                        Problem::PresetWithBars {
                            device: rd.name.get_ref().clone(),
                        },
                    ));
                }
                let preset = crate::presets::gpu_preset(p.get_ref()).ok_or_else(|| {
                    self.invalid(
                        &p.span(),
                        Problem::UnknownPreset {
                            name: p.get_ref().clone(),
                            known: crate::presets::gpu_preset_names(),
                        },
                    )
                })?;
                out.push(DeviceSpec {
                    name: rd.name.into_inner(),
                    line,
                    bars: preset
                        .bars
                        .iter()
                        .map(|b| BarSpec {
                            index: b.index,
                            phys: b.phys,
                            size: b.size,
                        })
                        .collect(),
                });
                continue;
            }
            let mut bars: Vec<BarSpec> = Vec::with_capacity(rd.bars.len());
            for rb in &rd.bars {
                let index = match u8::try_from(*rb.index.get_ref()) {
                    Ok(i) if i <= 5 => i,
                    _ => {
                        return Err(self.invalid(
                            &rb.index.span(),
                            Problem::BarIndexOutOfRange {
                                index: *rb.index.get_ref(),
                            },
                        ));
                    }
                };
                if bars.iter().any(|b| b.index == index) {
                    return Err(self.invalid(
                        &rb.index.span(),
                        Problem::DuplicateBar {
                            device: rd.name.get_ref().clone(),
                            index,
                        },
                    ));
                }
                let phys = self.size("phys", &rb.phys)?;
                if phys % (4 * KIB) != 0 {
                    return Err(
                        self.invalid(&rb.phys.span(), Problem::BarPhysUnaligned { index, phys })
                    );
                }
                let size = self.size("size", &rb.size)?;
                if size == 0 {
                    return Err(self.invalid(&rb.size.span(), Problem::BarSizeZero { index }));
                }
                if phys.checked_add(size).is_none() {
                    return Err(
                        self.invalid(&rb.size.span(), Problem::BarOverflow { index, phys, size })
                    );
                }
                bars.push(BarSpec { index, phys, size });
            }
            out.push(DeviceSpec {
                name: rd.name.into_inner(),
                line,
                bars,
            });
        }
        Ok(out)
    }

    fn device<'d>(
        &self,
        devices: &'d [DeviceSpec],
        name: &Spanned<String>,
    ) -> Result<&'d DeviceSpec, ScenarioError> {
        devices
            .iter()
            .find(|d| d.name == *name.get_ref())
            .ok_or_else(|| {
                self.invalid(
                    &name.span(),
                    Problem::UnknownDevice {
                        name: name.get_ref().clone(),
                        known: devices.iter().map(|d| d.name.clone()).collect(),
                    },
                )
            })
    }

    fn mapping(&self, maps: &Maps, name: &Spanned<String>) -> Result<(), ScenarioError> {
        let n = name.get_ref();
        if maps.so_far.iter().any(|(m, _)| m == n) {
            return Ok(());
        }
        let problem = match maps.anywhere.get(n) {
            Some(&mmap_line) => Problem::MappingUsedBeforeMmap {
                name: n.clone(),
                mmap_line,
            },
            None => Problem::UnknownMapping {
                name: n.clone(),
                known: maps.so_far.iter().map(|(m, _)| m.clone()).collect(),
            },
        };
        Err(self.invalid(&name.span(), problem))
    }

    /// Checks an optional `process = ...` against the processes forked so far.
    fn process(
        &self,
        procs: &Procs,
        name: Option<Spanned<String>>,
    ) -> Result<Option<String>, ScenarioError> {
        let Some(name) = name else { return Ok(None) };
        let n = name.get_ref();
        if procs.so_far.iter().any(|(p, _)| p == n) {
            return Ok(Some(name.into_inner()));
        }
        let problem = match procs.anywhere.get(n) {
            Some(&fork_line) => Problem::ProcessUsedBeforeFork {
                name: n.clone(),
                fork_line,
            },
            None => Problem::UnknownProcess {
                name: n.clone(),
                known: procs.so_far.iter().map(|(p, _)| p.clone()).collect(),
            },
        };
        Err(self.invalid(&name.span(), problem))
    }

    /// A required size with its key (`iova`, `gpa`, `len`).
    fn req_size(&self, field: &'static str, v: &Spanned<Scalar>) -> Result<u64, ScenarioError> {
        self.size(field, v)
    }

    /// `offset` (default 0) and `len` (default all) of a range in a mapping.
    fn range(
        &self,
        offset: Option<&Spanned<Scalar>>,
        len: Option<&Spanned<Scalar>>,
    ) -> Result<(u64, Len), ScenarioError> {
        let offset = self.size_or("offset", offset, 0)?;
        let len = self.len(len, offset)?;
        Ok((offset, len))
    }

    /// `map`, `offset` and `len` of a step on a range of a mapping: the mapping exists by now,
    /// then [`Cx::range`].
    fn in_mapping(
        &self,
        maps: &Maps,
        map: Spanned<String>,
        offset: Option<&Spanned<Scalar>>,
        len: Option<&Spanned<Scalar>>,
    ) -> Result<(String, u64, Len), ScenarioError> {
        self.mapping(maps, &map)?;
        let (offset, len) = self.range(offset, len)?;
        Ok((map.into_inner(), offset, len))
    }

    /// `munmap` and `mincore`: a range of a mapping, in a process.
    fn range_step(
        &self,
        d: ValueDeserializer<'_>,
        line: usize,
        maps: &Maps,
        procs: &Procs,
    ) -> Result<RangeStep, ScenarioError> {
        let r: RawRange = self.de(d)?;
        let (map, offset, len) = self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
        Ok(RangeStep {
            line,
            map,
            offset,
            len,
            process: self.process(procs, r.process)?,
        })
    }

    /// `stride`, default 4 KiB, never 0.
    fn stride(&self, v: Option<&Spanned<Scalar>>) -> Result<u64, ScenarioError> {
        let stride = self.size_or("stride", v, 4 * KIB)?;
        if stride == 0 {
            let span = v.map_or(0..0, Spanned::span);
            return Err(self.invalid(&span, Problem::ZeroStride));
        }
        Ok(stride)
    }

    /// The start (`iova`, `gpa`) of what a range of a mapping is mapped at: with a length given,
    /// `start + len` must fit in 64 bits.
    fn start_in_mapping(
        &self,
        key: &'static str,
        v: &Spanned<Scalar>,
        len: Len,
    ) -> Result<u64, ScenarioError> {
        let start = self.req_size(key, v)?;
        if let Len::Bytes(n) = len {
            self.fits(key, start, n, &v.span())?;
        }
        Ok(start)
    }

    /// A required start (`iova`, `gpa`, named by `key`) and `len` that must fit in 64 bits.
    fn sized_range(
        &self,
        key: &'static str,
        start: &Spanned<Scalar>,
        len: &Spanned<Scalar>,
    ) -> Result<(u64, u64), ScenarioError> {
        let s = self.req_size(key, start)?;
        let n = self.req_size("len", len)?;
        self.fits(key, s, n, &len.span())?;
        Ok((s, n))
    }

    /// `start + len` must fit in 64 bits (`iova`/`gpa` ranges; `key` names the start).
    fn fits(
        &self,
        key: &'static str,
        start: u64,
        len: u64,
        span: &Range<usize>,
    ) -> Result<(), ScenarioError> {
        match start.checked_add(len) {
            Some(_) => Ok(()),
            None => Err(self.invalid(
                span,
                Problem::RangeOverflow {
                    key,
                    offset: start,
                    len,
                },
            )),
        }
    }

    fn fork(&self, r: RawFork, line: usize, procs: &mut Procs) -> Result<ForkStep, ScenarioError> {
        if let Some((_, first_line)) = procs.so_far.iter().find(|(p, _)| p == r.child.get_ref()) {
            return Err(self.invalid(
                &r.child.span(),
                Problem::DuplicateProcess {
                    name: r.child.get_ref().clone(),
                    first_line: *first_line,
                },
            ));
        }
        procs.so_far.push((r.child.get_ref().clone(), line));
        Ok(ForkStep {
            line,
            child: r.child.into_inner(),
        })
    }

    fn expect(
        &self,
        r: RawExpect,
        line: usize,
        procs: &Procs,
    ) -> Result<ExpectStep, ScenarioError> {
        let mut on_kernel = Vec::new();
        let mut on_arch = Vec::new();
        for (k, v) in r.on_kernel.clone().into_iter().flatten() {
            let span = v.span();
            let o = v.into_inner();
            if o.process.is_some() || o.on_kernel.is_some() {
                return Err(self.invalid(&span, Problem::OnKernelNests));
            }
            let spec = self.expect_spec(&o)?;
            // `"arm64:7.3.4"`: that kernel on another architecture
            if let Some((a, kname)) = k.get_ref().split_once(':') {
                let arch = a.parse::<Arch>().map_err(|e| {
                    self.invalid(
                        &k.span(),
                        Problem::UnknownKernel {
                            message: format!("`{a}` in `{}`: {e}", k.get_ref()),
                        },
                    )
                })?;
                if arch == self.arch {
                    // The file's own architecture: its plain `on_kernel."V"` is meant.
                    return Err(self.invalid(
                        &k.span(),
                        Problem::OnKernelOwnArch {
                            key: k.get_ref().clone(),
                            kernel: kname.to_string(),
                        },
                    ));
                }
                let kernel = Spanned::new(k.span(), kname.to_string());
                on_arch.push((arch, self.kernel(&kernel)?, spec));
                continue;
            }
            let kernel = match k.get_ref().as_str() {
                "corrected" => None,
                _ => Some(self.kernel(&k)?),
            };
            on_kernel.push((kernel, spec));
        }
        Ok(ExpectStep {
            line,
            expect: self.expect_spec(&r)?,
            on_kernel,
            on_arch,
            process: self.process(procs, r.process.clone())?,
        })
    }

    /// `kernel = "7.3.4"` (or an `on_kernel` key) → the modelled kernel.
    fn kernel(&self, k: &Spanned<String>) -> Result<Kernel, ScenarioError> {
        k.get_ref().parse::<Kernel>().map_err(|e| {
            self.invalid(
                &k.span(),
                Problem::UnknownKernel {
                    message: e.to_string(),
                },
            )
        })
    }

    fn expect_spec(&self, r: &RawExpect) -> Result<ExpectSpec, ScenarioError> {
        let errno = match &r.errno {
            None => None,
            Some(v) => Some(
                v.get_ref()
                    .parse::<ErrnoName>()
                    .map_err(|value| self.invalid(&v.span(), Problem::UnknownErrno { value }))?,
            ),
        };
        Ok(ExpectSpec {
            faults: r.faults,
            faults_by_level: r.faults_by_level,
            sigbus: r.sigbus,
            sigsegv: r.sigsegv,
            skipped: r.skipped,
            leaves: r.leaves,
            errno,
            dma_lookups: r.dma_lookups,
            iommu_entries: r.iommu_entries,
            ept_violations: r.ept_violations,
            ept_leaves: r.ept_leaves,
            mmu_invalidations: r.mmu_invalidations,
            loads: r.loads,
            tlb_misses: r.tlb_misses,
            walk_refs: r.walk_refs,
            walk_refs_by_level: r.walk_refs_by_level,
            walk_refs_ept: r.walk_refs_ept,
            walk_faults: r.walk_faults,
            leaves_zapped: r.leaves_zapped,
            resident: r.resident,
        })
    }

    fn access(
        &self,
        r: RawAccess,
        line: usize,
        maps: &Maps,
        procs: &Procs,
    ) -> Result<AccessStep, ScenarioError> {
        let (map, offset, len) = self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
        let pattern = r.pattern;
        let only = |key: &'static str, wants: AccessPattern, span: Range<usize>| {
            if pattern == wants {
                Ok(())
            } else {
                Err(self.invalid(
                    &span,
                    Problem::KeyNotForPattern {
                        key,
                        wants: wants.name(),
                        pattern: pattern.name(),
                    },
                ))
            }
        };
        let stride = match &r.stride {
            None => 64,
            Some(v) => {
                only("stride", AccessPattern::Strided, v.span())?;
                let stride = self.size("stride", v)?;
                if stride == 0 || !stride.is_multiple_of(8) {
                    return Err(self.invalid(&v.span(), Problem::BadAccessStride { stride }));
                }
                stride
            }
        };
        let lines = match &r.lines {
            None => 64,
            Some(v) => {
                only("lines", AccessPattern::Chase, v.span())?;
                let n = *v.get_ref();
                match u32::try_from(n) {
                    Ok(l) if (1..=64).contains(&l) && l.is_power_of_two() => l,
                    _ => return Err(self.invalid(&v.span(), Problem::BadChaseLines { lines: n })),
                }
            }
        };
        let vm = match &r.vm {
            None => None,
            Some(v) => {
                let size = self.size("vm", v)?;
                if ![4 * KIB, 2 << 20, 1 << 30].contains(&size) {
                    return Err(self.invalid(&v.span(), Problem::BadHostPage { size }));
                }
                Some(size)
            }
        };
        Ok(AccessStep {
            line,
            map,
            offset,
            len,
            pattern,
            stride,
            lines,
            count: r.count,
            warmup: r.warmup.unwrap_or(0),
            seed: r.seed.unwrap_or(1),
            vm,
            cpu: r.cpu.unwrap_or_default(),
            process: self.process(procs, r.process)?,
        })
    }

    /// The steps of issues 5 and 6 (everything after `expect` in [`Step::OPS`]).
    fn later_step(
        &self,
        op: &str,
        d: ValueDeserializer<'_>,
        line: usize,
        maps: &Maps,
        procs: &mut Procs,
    ) -> Result<Step, ScenarioError> {
        Ok(match op {
            "mprotect" => {
                let r: RawMprotect = self.de(d)?;
                let (map, offset, len) =
                    self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
                Step::Mprotect(MprotectStep {
                    line,
                    map,
                    offset,
                    len,
                    prot: r.prot,
                    process: self.process(procs, r.process)?,
                })
            }
            "mremap" => {
                let r: RawMremap = self.de(d)?;
                self.mapping(maps, &r.map)?;
                let va = self.placement(r.va.as_ref(), "mremap", None)?;
                let new_len = match &r.new_len {
                    None => None,
                    Some(v) => Some(self.size("new_len", v)?),
                };
                Step::Mremap(MremapStep {
                    line,
                    map: r.map.into_inner(),
                    va,
                    new_len,
                    process: self.process(procs, r.process)?,
                })
            }
            "madvise" => {
                let r: RawMadvise = self.de(d)?;
                let (map, offset, len) =
                    self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
                Step::Madvise(MadviseStep {
                    line,
                    map,
                    offset,
                    len,
                    advice: r.advice,
                    process: self.process(procs, r.process)?,
                })
            }
            "read_proc" => {
                let r: RawReadProc = self.de(d)?;
                let file = *r.file.get_ref();
                let pagemap = file == ProcFileSpec::Pagemap;
                let (offset, len) = self.range(r.offset.as_ref(), r.len.as_ref())?;
                let map = match (&r.map, pagemap) {
                    (Some(m), true) => {
                        self.mapping(maps, m)?;
                        Some(m.get_ref().clone())
                    }
                    (None, true) => {
                        return Err(self.invalid(&r.file.span(), Problem::PagemapNeedsMap));
                    }
                    (Some(m), false) => {
                        return Err(
                            self.invalid(&m.span(), Problem::KeyOnlyForPagemap { key: "map" })
                        );
                    }
                    (None, false) => None,
                };
                if !pagemap {
                    for (key, v) in [("offset", &r.offset), ("len", &r.len)] {
                        if let Some(v) = v {
                            return Err(self.invalid(&v.span(), Problem::KeyOnlyForPagemap { key }));
                        }
                    }
                }
                Step::ReadProc(ReadProcStep {
                    line,
                    file,
                    map,
                    offset,
                    len,
                    process: self.process(procs, r.process)?,
                })
            }
            "mincore" => Step::Mincore(self.range_step(d, line, maps, procs)?),
            "fork" => {
                let r: RawFork = self.de(d)?;
                Step::Fork(self.fork(r, line, procs)?)
            }
            "dma_map" => {
                let r: RawDmaMap = self.de(d)?;
                let (map, offset, len) =
                    self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
                let iova = self.start_in_mapping("iova", &r.iova, len)?;
                Step::DmaMap(DmaMapStep {
                    line,
                    map,
                    offset,
                    len,
                    iova,
                    mode: r.mode,
                    process: self.process(procs, r.process)?,
                })
            }
            "dma_unmap" => {
                let r: RawDmaUnmap = self.de(d)?;
                let (iova, len) = self.sized_range("iova", &r.iova, &r.len)?;
                Step::DmaUnmap(DmaUnmapStep {
                    line,
                    iova,
                    len,
                    process: self.process(procs, r.process)?,
                })
            }
            "kvm_memslot" => {
                let r: RawKvmMemslot = self.de(d)?;
                let (map, offset, len) =
                    self.in_mapping(maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
                let gpa = self.start_in_mapping("gpa", &r.gpa, len)?;
                let (flags_span, flags) = r
                    .flags
                    .map_or((0..0, Vec::new()), |f| (f.span(), f.into_inner()));
                for (i, f) in flags.iter().enumerate() {
                    if flags[..i].contains(f) {
                        return Err(self.invalid(
                            &flags_span,
                            Problem::DuplicateFlag {
                                flag: memslot_flag_name(*f).to_string(),
                            },
                        ));
                    }
                }
                Step::KvmMemslot(KvmMemslotStep {
                    line,
                    slot: r.slot,
                    gpa,
                    map,
                    offset,
                    len,
                    flags,
                    process: self.process(procs, r.process)?,
                })
            }
            "guest_touch" => {
                let r: RawGuestTouch = self.de(d)?;
                let (gpa, len) = self.sized_range("gpa", &r.gpa, &r.len)?;
                let stride = self.stride(r.stride.as_ref())?;
                Step::GuestTouch(GuestTouchStep {
                    line,
                    gpa,
                    len,
                    stride,
                    access: r.access.unwrap_or_default(),
                    process: self.process(procs, r.process)?,
                })
            }
            "access" => {
                let r: RawAccess = self.de(d)?;
                Step::Access(self.access(r, line, maps, procs)?)
            }
            _ => {
                // op_of() admitted only Step::OPS; the earlier ones are handled by steps().
                let r: RawExpect = self.de(d)?;
                Step::Expect(self.expect(r, line, procs)?)
            }
        })
    }

    /// The `op` of a step value, with the span to blame.
    fn op_of(&self, v: &Spanned<DeValue<'_>>) -> Result<String, ScenarioError> {
        let DeValue::Table(t) = v.get_ref() else {
            return Err(self.invalid(&v.span(), Problem::StepsNotTables));
        };
        let Some(op) = t.get("op") else {
            return Err(self.invalid(&v.span(), Problem::MissingOp));
        };
        let Some(s) = op.get_ref().as_str() else {
            return Err(self.invalid(&op.span(), Problem::OpNotString));
        };
        if !Step::OPS.contains(&s) {
            return Err(self.invalid(&op.span(), Problem::UnknownOp { op: s.to_string() }));
        }
        Ok(s.to_string())
    }

    /// Pre-pass: the `key` (`name` of `mmap`, `child` of `fork`) of every step with this `op`,
    /// and its line, so that a forward reference gets a precise message. Malformed steps are
    /// skipped here and reported by the main pass.
    fn names_of(
        &self,
        values: &[Spanned<DeValue<'_>>],
        op: &str,
        key: &str,
    ) -> HashMap<String, usize> {
        let mut names = HashMap::new();
        for v in values {
            let DeValue::Table(t) = v.get_ref() else {
                continue;
            };
            let is_op = t.get("op").and_then(|o| o.get_ref().as_str()) == Some(op);
            if let (true, Some(name)) = (is_op, t.get(key).and_then(|n| n.get_ref().as_str())) {
                names
                    .entry(name.to_string())
                    .or_insert_with(|| self.line(&v.span()));
            }
        }
        names
    }

    fn steps(
        &self,
        values: Vec<Spanned<DeValue<'_>>>,
        devices: &[DeviceSpec],
    ) -> Result<Vec<Step>, ScenarioError> {
        let mut maps = Maps {
            anywhere: self.names_of(&values, "mmap", "name"),
            so_far: Vec::new(),
        };
        let mut procs = Procs {
            anywhere: self.names_of(&values, "fork", "child"),
            so_far: vec![(crate::MAIN_PROCESS.to_string(), 0)],
        };
        let mut steps = Vec::with_capacity(values.len());
        for v in values {
            let line = self.line(&v.span());
            let op = self.op_of(&v)?;
            let d = ValueDeserializer::from(v);
            let step = match op.as_str() {
                "mmap" => {
                    let r: RawMmap = self.de(d)?;
                    Step::Mmap(self.mmap(r, line, devices, &mut maps)?)
                }
                "touch" => {
                    let r: RawTouch = self.de(d)?;
                    let (map, offset, len) =
                        self.in_mapping(&maps, r.map, r.offset.as_ref(), r.len.as_ref())?;
                    let stride = self.stride(r.stride.as_ref())?;
                    Step::Touch(TouchStep {
                        line,
                        map,
                        offset,
                        len,
                        stride,
                        access: r.access.unwrap_or_default(),
                        order: r.order.unwrap_or_default(),
                        process: self.process(&procs, r.process)?,
                    })
                }
                "munmap" => Step::Munmap(self.range_step(d, line, &maps, &procs)?),
                "memory" => {
                    let r: RawMemory = self.de(d)?;
                    self.device(devices, &r.device)?;
                    Step::Memory(MemoryStep {
                        line,
                        device: r.device.into_inner(),
                        enable: r.enable,
                    })
                }
                "reset" => {
                    let r: RawReset = self.de(d)?;
                    self.device(devices, &r.device)?;
                    Step::Reset(ResetStep {
                        line,
                        device: r.device.into_inner(),
                    })
                }
                "power" => {
                    let r: RawPower = self.de(d)?;
                    self.device(devices, &r.device)?;
                    Step::Power(PowerStep {
                        line,
                        device: r.device.into_inner(),
                        state: r.state,
                    })
                }
                _ => self.later_step(&op, d, line, &maps, &mut procs)?,
            };
            steps.push(step);
        }
        Ok(steps)
    }

    fn mmap(
        &self,
        r: RawMmap,
        line: usize,
        devices: &[DeviceSpec],
        maps: &mut Maps,
    ) -> Result<MmapStep, ScenarioError> {
        let dev = self.device(devices, &r.device)?;
        let bar = u8::try_from(*r.bar.get_ref())
            .ok()
            .filter(|&i| dev.bar(i).is_some())
            .ok_or_else(|| {
                self.invalid(
                    &r.bar.span(),
                    Problem::UnknownBar {
                        device: dev.name.clone(),
                        index: *r.bar.get_ref(),
                        available: dev.bars.iter().map(|b| b.index).collect(),
                    },
                )
            })?;
        if let Some((_, first_line)) = maps.so_far.iter().find(|(m, _)| m == r.name.get_ref()) {
            return Err(self.invalid(
                &r.name.span(),
                Problem::DuplicateMapping {
                    name: r.name.get_ref().clone(),
                    first_line: *first_line,
                },
            ));
        }
        let offset = self.size_or("offset", r.offset.as_ref(), 0)?;
        let len = self.len(r.len.as_ref(), offset)?;
        let bar_size = dev.bar(bar).map_or(0, |b| b.size);
        let mmap_len = len.resolve(bar_size.saturating_sub(offset));
        let va = self.placement(r.va.as_ref(), "mmap", Some(mmap_len))?;
        maps.so_far.push((r.name.get_ref().clone(), line));
        Ok(MmapStep {
            line,
            name: r.name.into_inner(),
            device: r.device.into_inner(),
            bar,
            offset,
            len,
            va,
            madvise: r.madvise,
            shared: r.shared.unwrap_or(true),
        })
    }
}

fn memslot_flag_name(f: MemslotFlag) -> &'static str {
    match f {
        MemslotFlag::LogDirtyPages => "log_dirty_pages",
        MemslotFlag::Readonly => "readonly",
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_new_ops;
