//! Every `unsafe` of the probe: system calls (mmap, munmap, madvise, getrusage, ioctl, tcdrain,
//! fork, pipe, waitpid) and the fault-catching byte accesses. The rest of the crate forbids
//! unsafe code and uses the safe functions and types below.
//!
//! # Catching SIGBUS / SIGSEGV per access
//!
//! A revoked BAR mapping (memory decode off, reset, D3hot) answers an access with SIGBUS. The
//! probe must count that and go on with the next access. C would use `sigsetjmp`/`siglongjmp`,
//! which Rust cannot express soundly (`returns_twice`, skipped destructors). Instead this module
//! does what the Linux kernel does for its own user-copy routines (exception tables): every
//! access to device memory goes through one of two tiny assembly functions,
//! [`hugepfn_probe_read8`] and [`hugepfn_probe_write8`], each a single load or store
//! instruction at an exported label, followed by `ret`. The SIGBUS/SIGSEGV handler looks at the
//! interrupted RIP (PC on aarch64): if it is exactly one of those two instructions it records
//! the signal, sets RAX (x0) to a "faulted" value and moves RIP (PC) to the `ret` that follows,
//! then returns normally. The
//! kernel's `rt_sigreturn` restores the signal mask and every register, so nothing is unwound,
//! no `longjmp` crosses Rust frames, and the caller simply sees the function return "faulted".
//! A fault anywhere else is a real bug: the handler restores the default action and returns, so
//! the instruction faults again and the process dies with the original signal (and a core).
//!
//! Only the two asm functions touch device memory, only at offsets inside the live (not
//! munmapped) part of a [`DevMap`]; that is the safety argument for the accesses.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE, vfio_group_status,
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_region_info,
};

/// The kernel's page size (`sysconf(_SC_PAGESIZE)`: 4 KiB, or 16/64 KiB on arm64 kernels built
/// so), read once.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the C library; no pointers, no side effects.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n >= 4096).unwrap_or(4096)
    })
}

// ------------------------------------------------------------------------------------------
// Fault-catching accesses

/// `global_asm!` text of the function `$name` (`extern "C"`): global, typed and sized, aligned
/// to 16 bytes, with the `$line`s (instructions and labels) as its body.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! asm_fn {
    ($name:literal, $($line:expr),+ $(,)?) => {
        concat!(
            ".balign 16\n",
            ".globl ", $name, "\n",
            ".type ", $name, ",@function\n",
            $name, ":\n",
            $($line, "\n",)+
            ".size ", $name, ", . - ", $name,
        )
    };
}

/// `global_asm!` text of a global label inside a function, whose address Rust reads.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! global_label {
    ($name:literal) => {
        concat!(".globl ", $name, "\n", $name, ":")
    };
}

// Each function has a global label at its access (`_insn`), where a fault is recognised, and
// one at its `ret` (`_resume`), where the handler moves the PC after setting the result.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.hugepfn_probe_access,\"ax\",@progbits",
    asm_fn!(
        "hugepfn_probe_read8",
        global_label!("hugepfn_probe_read8_insn"),
        "    movzx eax, byte ptr [rdi]",
        global_label!("hugepfn_probe_read8_resume"),
        "    ret",
    ),
    asm_fn!(
        "hugepfn_probe_write8",
        "    xor eax, eax",
        global_label!("hugepfn_probe_write8_insn"),
        "    mov byte ptr [rdi], sil",
        global_label!("hugepfn_probe_write8_resume"),
        "    ret",
    ),
    ".popsection",
);

// aarch64: the same two functions; x0 = pointer (and w1 = value), the result in x0. The
// handler moves the PC to the `ret` after the faulting instruction and sets x0 as on x86-64.
#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".pushsection .text.hugepfn_probe_access,\"ax\",@progbits",
    asm_fn!(
        "hugepfn_probe_read8",
        global_label!("hugepfn_probe_read8_insn"),
        "    ldrb w0, [x0]",
        global_label!("hugepfn_probe_read8_resume"),
        "    ret",
    ),
    asm_fn!(
        "hugepfn_probe_write8",
        global_label!("hugepfn_probe_write8_insn"),
        "    strb w1, [x0]",
        "    mov x0, #0",
        global_label!("hugepfn_probe_write8_resume"),
        "    ret",
    ),
    ".popsection",
);

unsafe extern "C" {
    /// Loads the byte at `p`; returns it zero-extended, or `u64::MAX` if the load faulted.
    fn hugepfn_probe_read8(p: *const u8) -> u64;
    /// Stores `v` at `p`; returns 0, or 1 if the store faulted.
    fn hugepfn_probe_write8(p: *mut u8, v: u8) -> u64;
    // Labels inside the two functions (only their addresses are used).
    static hugepfn_probe_read8_insn: u8;
    static hugepfn_probe_read8_resume: u8;
    static hugepfn_probe_write8_insn: u8;
    static hugepfn_probe_write8_resume: u8;
}

/// Signal number of the last caught fault (0 = none), written by the handler.
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// A signal that ended an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGBUS (e.g. the BAR mapping was revoked).
    Bus,
    /// SIGSEGV.
    Segv,
}

/// The outcome of one byte access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<T> {
    /// Done; a load returns the byte.
    Done(T),
    /// The access faulted with this signal and was skipped.
    Faulted(Signal),
    /// The offset is outside the live part of the mapping: nothing was accessed.
    NotMapped,
}

extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let read_insn = &raw const hugepfn_probe_read8_insn as usize;
    let read_resume = &raw const hugepfn_probe_read8_resume as usize;
    let write_insn = &raw const hugepfn_probe_write8_insn as usize;
    let write_resume = &raw const hugepfn_probe_write8_resume as usize;
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers; it lives on this
    // thread's stack for the duration of the handler and is written back by rt_sigreturn.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let rip = pc_of(uc);
    let (resume, rax) = if rip == read_insn {
        (read_resume, u64::MAX)
    } else if rip == write_insn {
        (write_resume, 1u64)
    } else {
        // Not one of our accesses: fall back to the default action and let the instruction
        // fault again, which kills the process with the original signal.
        // SAFETY: sigaction with SIG_DFL and a zeroed (valid) sigaction struct is
        // async-signal-safe and has no memory-safety preconditions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        return;
    };
    set_resume(uc, resume, rax);
    LAST_SIGNAL.store(sig, Ordering::Relaxed);
}

/// The interrupted instruction's address.
#[cfg(target_arch = "x86_64")]
fn pc_of(uc: &libc::ucontext_t) -> usize {
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
}

/// Resumes at `pc` with the return register set to `ret`.
#[cfg(target_arch = "x86_64")]
fn set_resume(uc: &mut libc::ucontext_t, pc: usize, ret: u64) {
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] = pc as i64;
    uc.uc_mcontext.gregs[libc::REG_RAX as usize] = ret as i64;
}

/// The interrupted instruction's address.
#[cfg(target_arch = "aarch64")]
fn pc_of(uc: &libc::ucontext_t) -> usize {
    uc.uc_mcontext.pc as usize
}

/// Resumes at `pc` with x0 set to `ret`.
#[cfg(target_arch = "aarch64")]
fn set_resume(uc: &mut libc::ucontext_t, pc: usize, ret: u64) {
    uc.uc_mcontext.pc = pc as u64;
    uc.uc_mcontext.regs[0] = ret;
}

/// Installs the SIGBUS and SIGSEGV handler described in the module docs.
pub fn install_fault_handler() -> io::Result<()> {
    for sig in [libc::SIGBUS, libc::SIGSEGV] {
        // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature and
        // only uses async-signal-safe operations (atomics, sigaction).
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_fault;
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn take_signal() -> Signal {
    match LAST_SIGNAL.swap(0, Ordering::Relaxed) {
        libc::SIGBUS => Signal::Bus,
        _ => Signal::Segv,
    }
}

/// Runs the fault path once (a caught SIGSEGV on a PROT_NONE page) so that the first real
/// fault of a measured step does not also fault in the handler's code. Returns whether the
/// signal was caught as expected.
pub fn warm_fault_path() -> io::Result<bool> {
    let m = DevMap::anonymous(page_size(), libc::PROT_NONE)?;
    Ok(matches!(m.read8(0), Access::Faulted(Signal::Segv)))
}

// ------------------------------------------------------------------------------------------
// Device mappings

/// Where to put a device mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `mmap(NULL, ...)`: the kernel chooses.
    Kernel,
    /// Reserve `len + align + skew` bytes PROT_NONE, then MAP_FIXED at the first
    /// `align`-aligned address in it plus `skew`; the rest of the reservation is unmapped.
    Reserve {
        /// Alignment (a power of two).
        align: u64,
        /// Added to the aligned address.
        skew: u64,
    },
    /// Exactly this address, with MAP_FIXED_NOREPLACE (EEXIST rather than replacing anything).
    Fixed(u64),
}

/// `madvise` advice used by scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// MADV_HUGEPAGE.
    Hugepage,
    /// MADV_NOHUGEPAGE.
    Nohugepage,
}

/// One mmap of a device region (or, for warm-ups, of anonymous memory). Offsets are relative
/// to the start of the mapping. Ranges removed with [`DevMap::munmap`] are remembered and
/// never accessed again; `Drop` unmaps what is left.
#[derive(Debug)]
pub struct DevMap {
    va: u64,
    len: u64,
    /// munmapped `[start, end)` offset ranges, page aligned.
    holes: Vec<(u64, u64)>,
    /// `[start, end)` offset ranges flagged MADV_DONTFORK (VM_DONTCOPY): a forked child has no
    /// VMA there, so in the child they become holes ([`DevMap::after_fork_in_child`]).
    dontfork: Vec<(u64, u64)>,
}

/// `ranges` minus `[s, e)`.
fn subtract(ranges: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b <= s || a >= e {
            out.push((a, b));
            continue;
        }
        if a < s {
            out.push((a, s));
        }
        if b > e {
            out.push((e, b));
        }
    }
    *ranges = out;
}

fn mmap_raw(
    addr: u64,
    len: u64,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: RawFd,
    offset: u64,
) -> io::Result<u64> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: mmap with a hint or with MAP_FIXED only inside a reservation this module made
    // (or MAP_FIXED_NOREPLACE) cannot invalidate memory that Rust code references.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, off) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as u64)
    }
}

fn munmap_raw(va: u64, len: u64) -> io::Result<()> {
    // SAFETY: only called on ranges of mappings this module created and still owns; no Rust
    // reference points into device or reservation memory.
    let r = unsafe { libc::munmap(va as *mut libc::c_void, len as usize) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl DevMap {
    /// Maps `len` bytes of `dev` at file offset `offset`, read/write, placed as `place`.
    pub fn map(
        dev: &File,
        offset: u64,
        len: u64,
        place: Place,
        shared: bool,
    ) -> io::Result<DevMap> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let share = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let fd = dev.as_raw_fd();
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let va = match place {
            Place::Kernel => mmap_raw(0, len, prot, share, fd, offset)?,
            Place::Fixed(a) => {
                mmap_raw(a, len, prot, share | libc::MAP_FIXED_NOREPLACE, fd, offset)?
            }
            Place::Reserve { align, skew } => {
                if !align.is_power_of_two() {
                    return Err(einval());
                }
                let rlen = len
                    .checked_add(align)
                    .and_then(|x| x.checked_add(skew))
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
                let res = mmap_raw(
                    0,
                    rlen,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )?;
                let a = (res.div_ceil(align) * align) + skew;
                let r = mmap_raw(a, len, prot, share | libc::MAP_FIXED, fd, offset);
                match r {
                    Err(e) => {
                        let _ = munmap_raw(res, rlen);
                        return Err(e);
                    }
                    Ok(va) => {
                        // trim the reservation around the mapping (len rounded to pages)
                        let end = va + len.div_ceil(page_size()) * page_size();
                        if va > res {
                            munmap_raw(res, va - res)?;
                        }
                        if res + rlen > end {
                            munmap_raw(end, res + rlen - end)?;
                        }
                        va
                    }
                }
            }
        };
        Ok(DevMap {
            va,
            len,
            holes: Vec::new(),
            dontfork: Vec::new(),
        })
    }

    /// Anonymous private memory (for warming the access code paths), zero-filled.
    pub fn anonymous(len: u64, prot: libc::c_int) -> io::Result<DevMap> {
        let va = mmap_raw(0, len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)?;
        Ok(DevMap {
            va,
            len,
            holes: Vec::new(),
            dontfork: Vec::new(),
        })
    }

    /// The start address.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// The length given to mmap.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when `off` is inside the mapping and not in a munmapped range.
    pub fn is_live(&self, off: u64) -> bool {
        off < self.len && !self.holes.iter().any(|&(s, e)| off >= s && off < e)
    }

    /// `madvise` on `[off, off + len)` of the mapping (must be inside it).
    pub fn madvise(&mut self, off: u64, len: u64, advice: Advice) -> io::Result<()> {
        let adv = match advice {
            Advice::Hugepage => libc::MADV_HUGEPAGE,
            Advice::Nohugepage => libc::MADV_NOHUGEPAGE,
        };
        self.madvise_raw(off, len, adv)
    }

    fn check_inside(&self, off: u64, len: u64) -> io::Result<()> {
        if off
            .checked_add(len)
            .is_none_or(|end| end > self.len.div_ceil(page_size()) * page_size())
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    /// `madvise(va + off, len, advice)` with any `MADV_*` value; the range must lie inside the
    /// mapping (EINVAL otherwise, nothing called), so only our own device pages are affected.
    /// MADV_DONTFORK and MADV_DOFORK are remembered for [`DevMap::after_fork_in_child`]: they
    /// change the flags of every VMA in the range even when a hole makes the call fail with
    /// ENOMEM (madvise_walk_vmas).
    pub fn madvise_raw(&mut self, off: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
        self.check_inside(off, len)?;
        // SAFETY: the range is inside this mapping of device memory (checked above), which no
        // Rust reference points into; discarding or re-flagging it cannot break Rust's view
        // of memory.
        let r =
            unsafe { libc::madvise((self.va + off) as *mut libc::c_void, len as usize, advice) };
        let out = if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        let applied = match &out {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::ENOMEM),
        };
        if applied && (advice == libc::MADV_DONTFORK || advice == libc::MADV_DOFORK) {
            let end = off + len.div_ceil(page_size()) * page_size();
            subtract(&mut self.dontfork, off, end);
            if advice == libc::MADV_DONTFORK && end > off {
                self.dontfork.push((off, end));
            }
        }
        out
    }

    /// In a forked child: the MADV_DONTFORK ranges were not copied, so they are holes here.
    pub fn after_fork_in_child(&mut self) {
        self.holes.append(&mut self.dontfork);
    }

    /// `mincore(va + off, len, vec)`: one byte per page into `vec` (as many pages as fit);
    /// the range must lie inside the mapping (EINVAL otherwise, nothing called).
    pub fn mincore(&self, off: u64, len: u64, vec: &mut [u8]) -> io::Result<usize> {
        self.check_inside(off, len)?;
        let pages = len.div_ceil(page_size()) as usize;
        if pages > vec.len() {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        // SAFETY: the range lies inside this mapping (checked above) and `vec` has room for one
        // byte per page of it (checked above); mincore only writes those bytes.
        let r = unsafe {
            libc::mincore(
                (self.va + off) as *mut libc::c_void,
                len as usize,
                vec.as_mut_ptr(),
            )
        };
        if r == 0 {
            Ok(pages)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `mprotect(va + off, len, prot)`, the range inside the mapping (EINVAL otherwise).
    pub fn mprotect(&self, off: u64, len: u64, prot: libc::c_int) -> io::Result<()> {
        self.check_inside(off, len)?;
        // SAFETY: as for madvise_raw: only our own device mapping changes protection; accesses
        // to it go through the fault-catching functions, so a now-forbidden access is a
        // counted SIGSEGV, not undefined behaviour.
        let r = unsafe { libc::mprotect((self.va + off) as *mut libc::c_void, len as usize, prot) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Moves (and resizes) the whole mapping with `mremap`: `Place::Kernel` = MREMAP_MAYMOVE
    /// (the kernel may resize in place); otherwise MREMAP_MAYMOVE|MREMAP_FIXED into a PROT_NONE
    /// reservation made here (aligned as for `map`, or exactly at a `Place::Fixed` address with
    /// MAP_FIXED_NOREPLACE), so nothing but the reservation is ever replaced.
    pub fn mremap(&mut self, new_len: u64, place: Place) -> io::Result<()> {
        let old_len = self.len.div_ceil(page_size()) * page_size();
        let old_va = self.va;
        let remap = |flags: libc::c_int, target: u64| -> io::Result<u64> {
            // SAFETY: moves only this device mapping; the target is either chosen by the kernel
            // or a reservation this function owns.
            let p = unsafe {
                libc::mremap(
                    old_va as *mut libc::c_void,
                    old_len as usize,
                    new_len as usize,
                    flags,
                    target as *mut libc::c_void,
                )
            };
            if p == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                Ok(p as u64)
            }
        };
        let reserve = |addr: u64, len: u64, flags: libc::c_int| {
            mmap_raw(
                addr,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
                -1,
                0,
            )
        };
        let rounded = new_len.div_ceil(page_size()) * page_size();
        let new_va = match place {
            Place::Kernel => remap(libc::MREMAP_MAYMOVE, 0)?,
            Place::Fixed(a) => {
                let res = reserve(a, rounded, libc::MAP_FIXED_NOREPLACE)?;
                remap(libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, res).inspect_err(|_| {
                    let _ = munmap_raw(res, rounded);
                })?
            }
            Place::Reserve { align, skew } => {
                if !align.is_power_of_two() {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                let rlen = rounded
                    .checked_add(align)
                    .and_then(|x| x.checked_add(skew))
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
                let res = reserve(0, rlen, 0)?;
                let a = res.div_ceil(align) * align + skew;
                match remap(libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, a) {
                    Err(e) => {
                        let _ = munmap_raw(res, rlen);
                        return Err(e);
                    }
                    Ok(va) => {
                        if va > res {
                            munmap_raw(res, va - res)?;
                        }
                        if res + rlen > va + rounded {
                            munmap_raw(va + rounded, res + rlen - (va + rounded))?;
                        }
                        va
                    }
                }
            }
        };
        // growing extends the last VMA, flags and all (vma_expand)
        if rounded > old_len
            && let Some(r) = self.dontfork.iter_mut().find(|r| r.1 == old_len)
        {
            r.1 = rounded;
        }
        self.va = new_va;
        self.len = new_len;
        self.holes.retain(|&(s, _)| s < rounded);
        subtract(&mut self.dontfork, rounded, u64::MAX);
        Ok(())
    }

    /// `munmap(va + off, len)`. Refused with EINVAL (nothing unmapped) when the range is not
    /// inside this mapping, so the probe never unmaps memory it does not own. The unmapped
    /// pages are remembered and never accessed again.
    pub fn munmap(&mut self, off: u64, len: u64) -> io::Result<()> {
        let rlen = len.div_ceil(page_size()) * page_size();
        let inside = off
            .checked_add(rlen)
            .is_some_and(|end| end <= self.len.div_ceil(page_size()) * page_size());
        if !inside {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        munmap_raw(self.va + off, len)?;
        self.holes.push((off, off + rlen));
        Ok(())
    }

    /// The live `[start, end)` offset ranges (the mapping minus its holes).
    fn live_ranges(&self) -> Vec<(u64, u64)> {
        let end = self.len.div_ceil(page_size()) * page_size();
        let mut holes = self.holes.clone();
        holes.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for (s, e) in holes {
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Loads the byte at `off`, catching SIGBUS/SIGSEGV.
    pub fn read8(&self, off: u64) -> Access<u8> {
        if !self.is_live(off) {
            return Access::NotMapped;
        }
        // SAFETY: `off` is inside the live part of our own mapping (checked above), so the
        // address is never memory Rust code owns; a fault there is caught by `on_fault`, which
        // resumes at the `ret` with RAX = u64::MAX.
        let v = unsafe { hugepfn_probe_read8((self.va + off) as *const u8) };
        if v == u64::MAX {
            Access::Faulted(take_signal())
        } else {
            Access::Done(v as u8)
        }
    }

    /// Stores `v` at `off`, catching SIGBUS/SIGSEGV.
    pub fn write8(&self, off: u64, v: u8) -> Access<()> {
        if !self.is_live(off) {
            return Access::NotMapped;
        }
        // SAFETY: as in `read8`; the store goes to device (or our own anonymous) memory that no
        // Rust reference aliases. A fault resumes at the `ret` with RAX = 1.
        let r = unsafe { hugepfn_probe_write8((self.va + off) as *mut u8, v) };
        if r == 0 {
            Access::Done(())
        } else {
            Access::Faulted(take_signal())
        }
    }
}

impl Drop for DevMap {
    fn drop(&mut self) {
        for (s, e) in self.live_ranges() {
            let _ = munmap_raw(self.va + s, e - s);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Counters and terminal

/// `getrusage(RUSAGE_SELF).ru_minflt`.
pub fn minflt() -> u64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_minflt as u64
    }
}

/// Waits until everything written to `fd` has been transmitted, if `fd` is a terminal (the
/// guest's serial port): a step that crashes the kernel must not swallow the line that named
/// it. Errors (not a terminal) are ignored.
pub fn drain(fd: RawFd) {
    // SAFETY: tcdrain only waits on the descriptor; an invalid or non-tty fd returns an error.
    unsafe {
        libc::tcdrain(fd);
    }
}

// ------------------------------------------------------------------------------------------
// VFIO ioctls (numbers: include/uapi/linux/vfio.h, `_IO(VFIO_TYPE, VFIO_BASE + n)`)

const fn vfio_io(n: u32) -> libc::Ioctl {
    (((VFIO_TYPE as u32) << 8) | (VFIO_BASE + n)) as libc::Ioctl
}
const VFIO_GET_API_VERSION: libc::Ioctl = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::Ioctl = vfio_io(1);
const VFIO_SET_IOMMU: libc::Ioctl = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::Ioctl = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::Ioctl = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::Ioctl = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::Ioctl = vfio_io(8);
const VFIO_DEVICE_RESET: libc::Ioctl = vfio_io(11);
const VFIO_IOMMU_MAP_DMA: libc::Ioctl = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::Ioctl = vfio_io(14);

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `VFIO_GET_API_VERSION` on the container.
pub fn vfio_api_version(container: &File) -> io::Result<i32> {
    // SAFETY: this ioctl takes no argument.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) })
}

/// `VFIO_CHECK_EXTENSION(ext)`: > 0 when supported.
pub fn vfio_check_extension(container: &File, ext: u32) -> io::Result<i32> {
    // SAFETY: the argument is an integer passed by value.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_CHECK_EXTENSION,
            ext as libc::c_ulong,
        )
    })
}

/// `VFIO_SET_IOMMU(type)`.
pub fn vfio_set_iommu(container: &File, iommu_type: u32) -> io::Result<()> {
    // SAFETY: the argument is an integer passed by value.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_SET_IOMMU,
            iommu_type as libc::c_ulong,
        )
    })
    .map(|_| ())
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub fn vfio_group_flags(group: &File) -> io::Result<u32> {
    let mut st = vfio_group_status {
        argsz: size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `st`, which is that large.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut st) })?;
    Ok(st.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub fn vfio_group_set_container(group: &File, container: &File) -> io::Result<()> {
    let fd: libc::c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd) from the pointer.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &fd) }).map(|_| ())
}

/// `VFIO_GROUP_GET_DEVICE_FD(name)`.
pub fn vfio_group_get_device(group: &File, name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: the kernel reads a NUL-terminated string from the pointer.
    let fd =
        check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
    // SAFETY: on success the ioctl returns a new descriptor that nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Region info of a device region: (size, offset in the device fd, flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
}

/// `VFIO_DEVICE_GET_REGION_INFO(index)`.
pub fn vfio_region_info(device: &File, index: u32) -> io::Result<RegionInfo> {
    let mut ri = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        flags: 0,
        index,
        cap_offset: 0,
        size: 0,
        offset: 0,
    };
    // SAFETY: the kernel reads and writes at most `argsz` bytes of `ri`.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut ri) })?;
    Ok(RegionInfo {
        size: ri.size,
        offset: ri.offset,
        flags: ri.flags,
    })
}

/// `VFIO_DEVICE_RESET`.
pub fn vfio_device_reset(device: &File) -> io::Result<()> {
    // SAFETY: this ioctl takes no argument.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET) }).map(|_| ())
}

/// `VFIO_IOMMU_MAP_DMA` on the container: `size` bytes at user address `vaddr` readable and
/// writable by the devices at `iova`.
pub fn vfio_map_dma(container: &File, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
    let mut m = vfio_iommu_type1_dma_map {
        argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    // SAFETY: the kernel reads `argsz` bytes of `m`. It looks up (for a PFNMAP range: faults
    // in and follows) the pages of [vaddr, vaddr + size) and maps them in the IOMMU; it writes
    // no user memory, and an address that is not mapped is an EFAULT, not undefined behaviour.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m) }).map(|_| ())
}

/// `VFIO_IOMMU_UNMAP_DMA(iova, size)`; returns the bytes the kernel says it unmapped (type1v2
/// answers 0, not an error, for a range where nothing was mapped).
pub fn vfio_unmap_dma(container: &File, iova: u64, size: u64) -> io::Result<u64> {
    let mut u = vfio_iommu_type1_dma_unmap {
        argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags: 0,
        iova,
        size,
        data: Default::default(),
    };
    // SAFETY: without flags the kernel reads and writes only the fixed part of the struct
    // (`argsz` bytes, no bitmap), which `u` is.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) })?;
    Ok(u.size)
}

// ------------------------------------------------------------------------------------------
// Processes: fork with a measured parent side, pipes, reaping, unsharing after fork

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.hugepfn_probe_fork,\"ax\",@progbits",
    asm_fn!(
        "hugepfn_probe_fork_measured",
        // rdi = rusage before, rsi = rusage after (both in MAP_SHARED memory); returns fork's rax.
        // Between the two getrusage calls the parent touches no memory at all (registers only;
        // `syscall` clobbers rcx and r11), so the COW that fork sets up on its own stack and data
        // cannot show up as faults of the step.
        "    mov r8, rdi",
        "    mov r9, rsi",
        "    mov eax, 98",  // SYS_getrusage
        "    xor edi, edi", // RUSAGE_SELF
        "    mov rsi, r8",
        "    syscall",
        "    mov eax, 57", // SYS_fork
        "    syscall",
        "    test rax, rax",
        "    jle 2f", // child (0) or error (-errno)
        "    mov r10, rax",
        "    mov eax, 98",
        "    xor edi, edi",
        "    mov rsi, r9",
        "    syscall",
        "    mov rax, r10",
        "2:",
        "    ret",
    ),
    ".popsection",
);

// aarch64: the same sequence with `svc #0` (x8 = number; getrusage 165; there is no `fork`:
// clone(SIGCHLD, 0, 0, 0, 0), number 220, is what glibc's fork does). x0/x1 = the rusage
// pointers, kept in x9/x10; between the two getrusage calls nothing but registers is touched.
#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".pushsection .text.hugepfn_probe_fork,\"ax\",@progbits",
    asm_fn!(
        "hugepfn_probe_fork_measured",
        "    mov x9, x0",
        "    mov x10, x1",
        "    mov x8, #165", // SYS_getrusage
        "    mov x0, #0",   // RUSAGE_SELF
        "    mov x1, x9",
        "    svc #0",
        "    mov x8, #220", // SYS_clone
        "    mov x0, #17",  // SIGCHLD
        "    mov x1, #0",
        "    mov x2, #0",
        "    mov x3, #0",
        "    mov x4, #0",
        "    svc #0",
        "    cmp x0, #0",
        "    b.le 2f", // child (0) or error (-errno)
        "    mov x11, x0",
        "    mov x8, #165",
        "    mov x0, #0",
        "    mov x1, x10",
        "    svc #0",
        "    mov x0, x11",
        "2:",
        "    ret",
    ),
    ".popsection",
);

unsafe extern "C" {
    fn hugepfn_probe_fork_measured(before: *mut libc::rusage, after: *mut libc::rusage) -> i64;
}

/// Which side of [`fork_measured`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The parent: the child's pid and the parent's minor faults during the fork itself.
    Parent {
        /// Child pid.
        pid: libc::pid_t,
        /// `ru_minflt` delta of the parent around the `fork` system call.
        faults: u64,
    },
    /// The new process.
    Child,
}

/// `fork()`, with the parent's minor faults measured around exactly the system call (see the
/// assembly above). The probe must have one thread (it does: nothing in it spawns threads).
pub fn fork_measured() -> io::Result<Forked> {
    let buf = mmap_raw(
        0,
        page_size(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    )?;
    let before = buf as *mut libc::rusage;
    // SAFETY: `buf` is a fresh, page-sized, writable shared mapping: room for two rusage
    // structs, which the kernel writes; the pointer arithmetic stays inside it. Zeroing them
    // faults the page in now: otherwise the first getrusage's copy-out would fault it in
    // after taking its snapshot, and that fault would count as the fork's.
    let after = unsafe {
        std::ptr::write_bytes(before, 0, 2);
        before.add(1)
    };
    // SAFETY: raw fork of a single-threaded process: the child gets a copy of the address
    // space and continues after this call like the parent; glibc's fork handlers are not run,
    // which matters only with threads (no locks can be held by another thread). The assembly
    // writes only the two rusage structs in `buf` (through the kernel).
    let r = unsafe { hugepfn_probe_fork_measured(before, after) };
    let out = if r < 0 {
        Err(io::Error::from_raw_os_error(-r as i32))
    } else if r == 0 {
        Ok(Forked::Child)
    } else {
        // SAFETY: both structs were written by getrusage in the parent (the child never
        // reaches the second call); reading plain integers from our own mapping.
        let (b, a) = unsafe { ((*before).ru_minflt, (*after).ru_minflt) };
        Ok(Forked::Parent {
            pid: r as libc::pid_t,
            faults: (a as u64).saturating_sub(b as u64),
        })
    };
    let _ = munmap_raw(buf, page_size());
    out
}

unsafe extern "C" {
    /// glibc (2.35+): offset of this thread's registered `struct rseq` from the thread
    /// pointer, and its size (0 when glibc did not register one).
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The thread pointer glibc's `__rseq_offset` is relative to.
#[cfg(target_arch = "x86_64")]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 glibc keeps the thread pointer (the TCB's self pointer) at %fs:0.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    tp
}

/// The thread pointer glibc's `__rseq_offset` is relative to.
#[cfg(target_arch = "aarch64")]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reading TPIDR_EL0, the user thread pointer register, has no side effects.
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags));
    }
    tp
}

/// Unregisters the restartable-sequences area glibc registered for this thread, so the kernel
/// stops writing to it. Why: after a fork that area (in this process's private memory) is
/// copy-on-write, and the kernel updates it on the way back to user space after every context
/// switch — a write fault on our own memory that `ru_minflt` counts inside whatever step is
/// running (the fork itself, on a one-CPU guest). glibc only uses the area to speed up
/// `sched_getcpu`, which falls back to the system call. Returns whether one was unregistered
/// (`Ok(false)`: glibc registered none); an error if the kernel refused (the area stays).
pub fn rseq_unregister() -> io::Result<bool> {
    const SYS_RSEQ: libc::c_long = libc::SYS_rseq;
    const RSEQ_FLAG_UNREGISTER: libc::c_long = 1;
    // The signature glibc registered with, which unregistering must repeat (EPERM otherwise):
    // glibc's RSEQ_SIG per architecture (sysdeps/unix/sysv/linux/*/rseq.h). The arm64 lab
    // found the x86 value used on aarch64: the area stayed registered and every fork step
    // counted the kernel's copy-on-write fault on it.
    #[cfg(target_arch = "x86_64")]
    const RSEQ_SIG: libc::c_long = 0x5305_3053;
    #[cfg(target_arch = "aarch64")]
    const RSEQ_SIG: libc::c_long = 0xd428_bc00; // `brk #0x45e0`, little-endian data
    // SAFETY: reading two integers glibc exports.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Ok(false);
    }
    let tp = thread_pointer();
    let area = tp.wrapping_add_signed(offset);
    // glibc registers 32 bytes (the original struct rseq) whatever `__rseq_size` says.
    for len in [32, libc::c_long::from(size)] {
        // SAFETY: unregistering only makes the kernel stop writing to the area; glibc's
        // readers of it handle an unregistered area (cpu_id < 0).
        let r = unsafe { libc::syscall(SYS_RSEQ, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) };
        if r == 0 {
            return Ok(true);
        }
    }
    Err(io::Error::last_os_error())
}

/// A pipe: (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: on success both descriptors are new and owned by nobody else.
    Ok(unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    })
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// `waitpid(pid, 0)`.
pub fn wait_child(pid: libc::pid_t) -> io::Result<ChildExit> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into our integer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ChildExit::Signal(libc::WTERMSIG(status))
    } else {
        ChildExit::Code(libc::WEXITSTATUS(status))
    })
}

/// Asks the kernel to SIGKILL this (child) process when its parent dies, so that a probe that
/// dies cannot leave children holding the VFIO device open. Best effort.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

/// Ends this process at once, without running destructors or atexit handlers (a forked child
/// must not restore the THP mode, flush the parent's buffers or close the parent's devices).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// After a fork, makes this process's own memory private again and faults in its code, so that
/// the copy-on-write faults (and the first-execution faults of code pages, which fork does not
/// copy) happen here and not inside a measured step: `MADV_POPULATE_WRITE` on its private
/// writable mappings (anonymous, heap, stack, the executable's data), `MADV_POPULATE_READ` on
/// the executable's other mappings. Device mappings (they name the vfio device) and
/// reservations (PROT_NONE) are left alone. Best effort: returns how many ranges failed.
pub fn unshare_own_memory() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 1;
    };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut failed = 0;
    for line in maps.lines() {
        let Some(r) = parse_maps_line(line) else {
            continue;
        };
        let own = r.path.is_empty()
            || r.path == "[heap]"
            || r.path == "[stack]"
            || (!exe.is_empty() && r.path == exe);
        if !own || !r.private || !r.read {
            continue;
        }
        let advice = if r.write {
            MADV_POPULATE_WRITE
        } else {
            MADV_POPULATE_READ
        };
        // SAFETY: populating only faults pages in (breaking COW for writes); it changes no
        // content, and the ranges are this process's own private memory.
        let rc = unsafe {
            libc::madvise(
                r.start as *mut libc::c_void,
                (r.end - r.start) as usize,
                advice,
            )
        };
        if rc != 0 {
            failed += 1;
        }
    }
    failed
}

const MADV_POPULATE_READ: libc::c_int = 22;
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `r`.
    pub read: bool,
    /// `w`.
    pub write: bool,
    /// `p` (private) rather than `s`.
    pub private: bool,
    /// The path or `[name]`, empty for anonymous memory.
    pub path: String,
}

/// Parses `start-end perms offset dev inode [path]`.
pub fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut it = line.split_whitespace();
    let (s, e) = it.next()?.split_once('-')?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path = it.collect::<Vec<_>>().join(" ");
    if perms.len() < 4 {
        return None;
    }
    Some(MapsLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        private: perms[3] == b'p',
        path,
    })
}
