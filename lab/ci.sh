#!/usr/bin/env bash
# lab/ci.sh: the real-kernel check of CI (called by .ci/run after the unit tests).
#
# Sets the lab up (apt: qemu-system-x86 matching qemu-utils, Debian's 6.12.95 and 7.3.4 kernels
# and busybox, downloaded and unpacked, never installed; cached in $HUGEPFN_LAB_DIR, default
# /var/tmp/hugepfn-lab) and runs `hugepfn lab compare` on every scenario in scenarios/: the model
# running as each kernel vs that kernel in QEMU TCG guests (2 at a time), grouped by BAR size,
# one verdict column per kernel ($HUGEPFN_LAB_KERNELS, default
# 6.12.95,7.3.4,7.3.4+hugepfn,arm64:6.12.117,arm64:7.3.4: 7.3.4+hugepfn is Linux 7.3.4 built here
# with kernel-patches/ (cached in the lab directory; the first build takes ~6 min), compared with
# the model's corrected design, docs/kernel-bugs.md; the arm64: columns are Debian's arm64
# kernels under qemu-system-aarch64 (virt, GICv3, SMMUv3) with the probe cross-built for
# aarch64, every scenario that runs there, the model as arm64, docs/lab.md). The patches are
# checked with the kernel's scripts/checkpatch.pl. If the arm64 side cannot be set up (no
# qemu-system-arm, cross toolchain or arm64 packages), its columns are dropped, loudly.
#
# Exit status: 0 = no difference (or "LAB SKIPPED: <reason>" when QEMU or the kernel cannot be
# had on this machine); non-zero = a difference between model and kernel, an unexpected kernel
# crash, a probe failure, a build failure, or the lab exceeding its time budget.
# The Markdown report goes to out/lab/compare.md. Then the arm64 kernels with 16 KiB pages
# (Debian's arm64-16k flavour of 6.12.117 and 7.3.4, $HUGEPFN_LAB_KERNELS_16K) on a subset, to
# keep the stage's time: the arm64-16k scenarios, the arm64 lab cases, the DMA cases and
# lab-inspect-placements (out/lab/compare-16k.md; every scenario: `hugepfn lab compare --arch
# arm64-16k`, about two minutes). Then `hugepfn lab fuzz --seed 1 --count 50`
# on 6.12.95, 7.3.4, arm64:6.12.117, arm64:7.3.4 and the two arm64-16k kernels
# ($HUGEPFN_LAB_FUZZ_KERNELS; cases shaped for each kernel's page size): random cases,
# model vs kernel.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
LAB_DIR=${HUGEPFN_LAB_DIR:-/var/tmp/hugepfn-lab}
BUDGET=${HUGEPFN_LAB_BUDGET:-900}   # seconds for the comparison itself (all kernels; 698 s on a slow day, docs/lab.md)
KERNELS=${HUGEPFN_LAB_KERNELS:-6.12.95,7.3.4,7.3.4+hugepfn,arm64:6.12.117,arm64:7.3.4}
T0=$(date +%s)

skip() {
    echo "LAB SKIPPED: $*"
    exit 0
}

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] || skip "needs Linux on x86_64 (this is $(uname -sm))"
command -v apt-get >/dev/null 2>&1 || skip "not a Debian system (no apt-get)"

# Our own code must build: a failure here is a failure, not a skip.
echo "lab: building hugepfn, the static probe and a static hugepfn (inspect in the guest)"
cargo build --release -q -p hugepfn || exit 1
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS cargo build --release -q -p hugepfn-probe -p hugepfn --target x86_64-unknown-linux-gnu || exit 1
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HP=$TARGET_DIR/release/hugepfn
PROBE=$TARGET_DIR/x86_64-unknown-linux-gnu/release/hugepfn-probe
COMMON=(--lab-dir "$LAB_DIR" --probe "$PROBE")

# The environment (apt, downloads): if it cannot be had, the lab is skipped, loudly.
# An arm64 kernel that cannot be set up drops out of the list (the x86-64 lab still runs).
RUN_KERNELS=
for k in ${KERNELS//,/ }; do
    if ! SETUP=$("$HP" lab setup --kernel "$k" "${COMMON[@]}" 2>&1); then
        echo "$SETUP" | tail -15
        reason=$(echo "$SETUP" | grep -E '^hugepfn lab:' | tail -1 | sed 's/^hugepfn lab: //')
        case "$k" in
            arm64:*) echo "LAB ARM64 SKIPPED: ${reason:-lab setup failed} (kernel $k)"; continue ;;
        esac
        skip "${reason:-lab setup failed} (kernel $k)"
    fi
    echo "$SETUP"
    RUN_KERNELS=${RUN_KERNELS:+$RUN_KERNELS,}$k
done
KERNELS=$RUN_KERNELS

# Our kernel patches, in kernel style: checkpatch of the built tree (the Debian tarball has no git
# history, so commit ids cannot be looked up: UNKNOWN_COMMIT_ID is the one warning ignored).
if [[ ",$KERNELS," == *",7.3.4+hugepfn,"* ]]; then
    TREE=$("$HP" lab kernel build "${COMMON[@]}" 2>/dev/null | sed -n 's/^tree: *//p')
    # run from the kernel tree: inside this git checkout checkpatch finds the patches with
    # `git ls-files` and checks them as source files, not as patches
    if [ -z "$TREE" ] || ! (cd "$TREE" && perl scripts/checkpatch.pl --no-tree --strict --quiet \
            --ignore UNKNOWN_COMMIT_ID "$ROOT"/kernel-patches/*.patch); then
        echo "LAB FAILED: checkpatch of kernel-patches/"
        exit 1
    fi
    echo "lab: checkpatch of kernel-patches/: clean"
fi

timeout --kill-after=20 "$BUDGET" "$HP" lab compare "${COMMON[@]}" --jobs 2 --kernels "$KERNELS" \
    --known-crashes lab/known-crashes.txt --markdown out/lab/compare.md
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "LAB FAILED: the comparison took longer than ${BUDGET} s"
fi

# The 16 KiB-page arm64 kernels, on the subset named above (their setup failing drops them, loudly).
KERNELS_16K=${HUGEPFN_LAB_KERNELS_16K:-arm64-16k:6.12.117,arm64-16k:7.3.4}
BUDGET_16K=${HUGEPFN_LAB_BUDGET_16K:-300}
RUN_16K=
for k in ${KERNELS_16K//,/ }; do
    if ! SETUP=$("$HP" lab setup --kernel "$k" "${COMMON[@]}" 2>&1); then
        echo "$SETUP" | tail -15
        echo "LAB ARM64-16K SKIPPED: $(echo "$SETUP" | grep -E '^hugepfn lab:' | tail -1) (kernel $k)"
        continue
    fi
    RUN_16K=${RUN_16K:+$RUN_16K,}$k
done
if [ -n "$RUN_16K" ]; then
    timeout --kill-after=20 "$BUDGET_16K" "$HP" lab compare "${COMMON[@]}" --jobs 2 --kernels "$RUN_16K" \
        --known-crashes lab/known-crashes.txt --markdown out/lab/compare-16k.md \
        scenarios/arm64-16k-*.toml scenarios/arm64-lab-*.toml scenarios/lab-dma-*.toml \
        scenarios/lab-inspect-placements.toml
    rc16=$?
    if [ "$rc16" -eq 124 ] || [ "$rc16" -eq 137 ]; then
        echo "LAB FAILED: the arm64-16k comparison took longer than ${BUDGET_16K} s"
    fi
    [ "$rc" -eq 0 ] && rc=$rc16
fi

# Differential fuzzing against the kernel: a fixed seed, 50 random lab-shaped cases per Debian
# kernel (docs/testing.md); a difference is shrunk on the kernel and written to out/lab/found/.
FUZZ_BUDGET=${HUGEPFN_LAB_FUZZ_BUDGET:-300}
FUZZ_KERNELS=${HUGEPFN_LAB_FUZZ_KERNELS:-6.12.95,7.3.4,arm64:6.12.117,arm64:7.3.4,arm64-16k:6.12.117,arm64-16k:7.3.4}
FK=
for k in ${FUZZ_KERNELS//,/ }; do
    # an arm64 kernel whose setup failed above is left out here too
    case "$k" in
        arm64:*) [[ ",$KERNELS," == *",$k,"* ]] || continue ;;
        arm64-16k:*) [[ ",$RUN_16K," == *",$k,"* ]] || continue ;;
    esac
    FK=${FK:+$FK,}$k
done
FUZZ_KERNELS=$FK
timeout --kill-after=20 "$FUZZ_BUDGET" "$HP" lab fuzz "${COMMON[@]}" --jobs 2 --seed 1 --count 50 \
    --kernels "$FUZZ_KERNELS" --known-crashes lab/known-crashes.txt --out out/lab/found
frc=$?
if [ "$frc" -eq 124 ] || [ "$frc" -eq 137 ]; then
    echo "LAB FAILED: lab fuzz took longer than ${FUZZ_BUDGET} s"
fi
[ "$rc" -eq 0 ] && rc=$frc
echo "lab: ci.sh finished in $(( $(date +%s) - T0 )) s (exit $rc)"
exit "$rc"
