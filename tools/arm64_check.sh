#!/usr/bin/env bash
# edgepack on 64-bit ARM (aarch64), emulated with qemu-user: the device install, the runtime's own tests that need no
# onnx, parity with x86 on packed models, and cold start.
#
#   sudo tools/arm64_check.sh [--ref GITREF] [--root-only] [--rebuild-root] [--skip-tests] [--skip-coldstart]
#
# --ref GITREF: wheel, tests, spec and the host's reference run from `git archive GITREF` (default: the work tree).
#
# Needs: root (debootstrap, chroot, mounts); Debian's qemu-user-static, debootstrap and binfmt-support; binfmt_misc
# mounted with the qemu-aarch64 handler enabled; a host Python with edgepack[packer] installed (the dev venv: it
# builds the wheel and packs the models), chosen by $EDGEPACK_HOST_PYTHON, else `python` on PATH.
#
# The arm64 Debian root (python3, python3-venv, and a wheelhouse of aarch64 wheels from PyPI: numpy, numba,
# llvmlite, threadpoolctl, pytest, hypothesis) is built once with debootstrap (10-20 min; ~400 MB, a 200 MB tarball) and cached as a
# tarball outside the repository: $EDGEPACK_ARM64_CACHE, else ~/.cache/edgepack/arm64/. Each run unpacks a fresh
# copy of it, so runs do not see each other's venvs or Numba caches.
#
# Each run: build the wheel on the host (`pip wheel --no-deps`); in the chroot, a fresh venv gets
# `pip install edgepack-*.whl` from the wheelhouse only (no index: the wheel must resolve to numpy + numba +
# threadpoolctl), then `import onnx` must fail and `edgepack --help` / `edgepack info` must work; pytest + hypothesis
# are added and the onnx-free tests run (list below); the host packs the models of tools/arm64_parity.py and records
# inputs and outputs, the chroot runs them and compares; then cold start (import, first run, warm Numba cache).
# The last line is one summary; the exit status is non-zero on any failure.
#
# Environment: NUMBA_CPU_NAME (default cortex-a72: a Raspberry Pi 4's cores), EDGEPACK_ARM64_SUITE (default
# bookworm), EDGEPACK_ARM64_MIRROR (default: the first Debian archive in this host's apt sources).
set -euo pipefail

T_START=$(date +%s)
REPO=${EDGEPACK_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
CACHE=${EDGEPACK_ARM64_CACHE:-$HOME/.cache/edgepack/arm64}
SUITE=${EDGEPACK_ARM64_SUITE:-bookworm}
TARBALL=$CACHE/root-$SUITE.tar.gz
CPU=${NUMBA_CPU_NAME:-cortex-a72}
ROOT_ONLY=0 REBUILD=0 SKIP_TESTS=0 SKIP_COLD=0 REF=""
while [ $# -gt 0 ]; do
    a=$1; shift
    case $a in
        --ref) [ $# -gt 0 ] || { echo "arm64 check: --ref needs a git ref" >&2; exit 2; }; REF=$1; shift ;;
        --root-only) ROOT_ONLY=1 ;;
        --rebuild-root) REBUILD=1 ;;
        --skip-tests) SKIP_TESTS=1 ;;
        --skip-coldstart) SKIP_COLD=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "arm64 check: unknown option '$a' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '[arm64 %4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*"; }
die() { echo "arm64 check: FAIL — $*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
for cmd in chroot mount umount tar; do command -v $cmd >/dev/null || die "'$cmd' not found"; done
command -v qemu-aarch64-static >/dev/null \
    || die "qemu-aarch64-static not found: apt-get install qemu-user-static binfmt-support debootstrap"
[ -e /proc/sys/fs/binfmt_misc/status ] \
    || die "binfmt_misc is not mounted: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
[ "$(cat /proc/sys/fs/binfmt_misc/status)" = enabled ] || die "binfmt_misc is disabled: echo 1 > /proc/sys/fs/binfmt_misc/status"
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "no enabled qemu-aarch64 binfmt handler: apt-get install binfmt-support qemu-user-static; update-binfmts --enable qemu-aarch64"
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "the qemu-aarch64 binfmt handler lacks the F (fix-binary) flag that lets a chroot run it without a copy of qemu inside"

HOST_PY=${EDGEPACK_HOST_PYTHON:-$(command -v python || command -v python3 || true)}
[ $ROOT_ONLY = 1 ] || [ -n "$HOST_PY" ] || die "no host Python: set EDGEPACK_HOST_PYTHON to the dev venv's python"

mirror() {
    [ -n "${EDGEPACK_ARM64_MIRROR:-}" ] && { echo "$EDGEPACK_ARM64_MIRROR"; return; }
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE '(URIs: |^deb )[^ ]*/debian/?( |$)' | head -1 | sed -E 's/^(URIs: |deb )//; s/ $//' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# --- the arm64 root ---------------------------------------------------------------------------------------------------
WORKROOT=""
MOUNTED=()
cleanup() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
    if [ -n "$WORKROOT" ] && [ -d "$WORKROOT" ] && [ "${EDGEPACK_ARM64_KEEP:-0}" != 1 ]; then rm -rf --one-file-system "$WORKROOT"; fi
}
trap cleanup EXIT

mount_proc() {  # mount_proc ROOT
    mount -t proc proc "$1/proc"
    MOUNTED+=("$1/proc")
}

# Commands in the chroot run under `env -i`: nothing of the host's environment leaks in but the CA bundle (pip needs
# it where the host reaches PyPI through its own certificate authority).
in_root() {  # in_root ROOT CMD...
    local root=$1; shift
    chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/edgepack-host-ca.pem PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60 \
        NUMBA_CPU_NAME="$CPU" OPENBLAS_NUM_THREADS=1 "$@"
}

build_root() {
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
    local tmp=$CACHE/build-root t0
    t0=$(date +%s)
    mkdir -p "$CACHE"
    rm -rf --one-file-system "$tmp"
    say "debootstrap --arch=arm64 $SUITE from $(mirror) (once; 10-20 min)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$tmp" "$(mirror)" > "$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $CACHE/debootstrap.log"
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$tmp/etc/edgepack-host-ca.pem"
    mount_proc "$tmp"
    [ "$(in_root "$tmp" uname -m)" = aarch64 ] || die "the new root does not run as aarch64"
    # The versions the host runs, so that parity compares the same numpy and numba on both architectures.
    local pins="numpy numba threadpoolctl"
    if [ -n "$HOST_PY" ] && "$HOST_PY" -c "import numpy, numba, threadpoolctl" 2>/dev/null; then
        pins=$("$HOST_PY" -c "import numpy, numba, threadpoolctl as t; print(f'numpy=={numpy.__version__} numba=={numba.__version__} threadpoolctl=={t.__version__}')")
    fi
    say "wheelhouse from PyPI: $pins pytest hypothesis"
    in_root "$tmp" python3 -m venv /opt/pip-venv
    in_root "$tmp" /opt/pip-venv/bin/pip download -q -d /opt/wheelhouse $pins pytest hypothesis \
        || die "pip download of the aarch64 wheels failed in the chroot"
    rm -rf "$tmp/opt/pip-venv"
    umount "$tmp/proc"; MOUNTED=()
    touch "$tmp/.edgepack-arm64-root"
    say "caching the root as $TARBALL"
    tar -C "$tmp" -czf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL"
    rm -rf --one-file-system "$tmp"
    say "root built in $(( $(date +%s) - t0 )) s: $(du -h "$TARBALL" | cut -f1) tarball"
}

if [ $REBUILD = 1 ] || [ ! -s "$TARBALL" ]; then build_root; else say "reusing the cached root $TARBALL"; fi
[ $ROOT_ONLY = 1 ] && { say "root ready: $TARBALL"; exit 0; }

# --- a fresh copy of the root for this run ----------------------------------------------------------------------------
mkdir -p "$CACHE"
WORKROOT=$(mktemp -d "$CACHE/run.XXXXXX")
say "unpacking the root into $WORKROOT"
tar -C "$WORKROOT" -xzf "$TARBALL"
[ -f "$WORKROOT/.edgepack-arm64-root" ] || die "$TARBALL is not a complete root (rebuild it with --rebuild-root)"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$WORKROOT/etc/edgepack-host-ca.pem"
mount_proc "$WORKROOT"
ARCH=$(in_root "$WORKROOT" uname -m)
[ "$ARCH" = aarch64 ] || die "the chroot runs as '$ARCH', not aarch64"
C=/check  # the run's folder, as the chroot sees it
H=$WORKROOT$C  # the same, as the host sees it
mkdir -p "$H/dist" "$H/repo"
LOG=$H/logs; mkdir -p "$LOG"

# --- host: the wheel, and (in the background) the packed models with x86's outputs -------------------------------------
SRC=$REPO
if [ -n "$REF" ]; then
    SRC=$H/src
    mkdir -p "$SRC"
    git -C "$REPO" archive "$REF" | tar -x -C "$SRC" || die "git archive $REF failed"
    say "host: sources of $REF ($(git -C "$REPO" rev-parse --short "$REF"))"
fi
[ -f "$SRC/tools/arm64_parity.py" ] || { mkdir -p "$SRC/tools"; cp "$REPO/tools/arm64_parity.py" "$SRC/tools/"; }
"$HOST_PY" -c "import edgepack.packer, onnx" 2>/dev/null \
    || die "$HOST_PY cannot import edgepack.packer and onnx: point EDGEPACK_HOST_PYTHON at the dev venv's python"
say "host: pip wheel --no-deps ($($HOST_PY -c 'import platform; print(platform.machine())'))"
"$HOST_PY" -m pip wheel --no-deps -q -w "$H/dist" "$SRC" > "$LOG/wheel.log" 2>&1 || die "pip wheel failed: $LOG/wheel.log"
WHEEL=$(cd "$H/dist" && ls edgepack-*-py3-none-any.whl) || die "no pure-Python edgepack wheel in $H/dist"
say "host: packing the parity models and recording x86's outputs (background)"
OPENBLAS_NUM_THREADS=1 PYTHONPATH="$SRC/src" "$HOST_PY" "$SRC/tools/arm64_parity.py" make "$H/models" > "$LOG/make.log" 2>&1 &
MAKE_PID=$!
cp -r "$SRC/tests" "$SRC/spec" "$H/repo/"
cp "$SRC/tools/arm64_parity.py" "$H/"

# --- device: the install as a board does it ---------------------------------------------------------------------------
say "arm64: venv + pip install $WHEEL (wheelhouse only, no index)"
in_root "$WORKROOT" python3 -m venv $C/venv
in_root "$WORKROOT" $C/venv/bin/pip install -q --no-index --find-links /opt/wheelhouse "$C/dist/$WHEEL" \
    > "$LOG/install.log" 2>&1 || die "the device install failed (a dependency beyond numpy, numba, threadpoolctl?): $LOG/install.log"
PKGS=$(in_root "$WORKROOT" $C/venv/bin/pip list --format=freeze 2>/dev/null | tr '\n' ' ')
say "arm64: installed $PKGS"
for p in $PKGS; do
    case ${p%%==*} in edgepack|numpy|numba|llvmlite|threadpoolctl|pip|setuptools) ;;
        *) die "the device install brought '$p' (expected edgepack, numpy, numba, llvmlite, threadpoolctl only)" ;; esac
done
if in_root "$WORKROOT" $C/venv/bin/python -c "import onnx" > "$LOG/onnx.log" 2>&1; then die "import onnx works in the device venv"; fi
grep -q "No module named 'onnx'" "$LOG/onnx.log" || die "import onnx failed for another reason: $LOG/onnx.log"
say "arm64: import onnx fails as it should: $(tail -1 "$LOG/onnx.log")"
VERSIONS=$(in_root "$WORKROOT" $C/venv/bin/python -c "import platform, numpy, numba, edgepack; print(f'edgepack {edgepack.__version__}, Python {platform.python_version()} on {platform.machine()}, numpy {numpy.__version__}, numba {numba.__version__}')")
say "arm64: $VERSIONS; NUMBA_CPU_NAME=$CPU; $(qemu-aarch64-static --version | head -1)"
in_root "$WORKROOT" $C/venv/bin/edgepack --help > "$LOG/help.log" 2>&1 || die "edgepack --help failed: $LOG/help.log"
in_root "$WORKROOT" $C/venv/bin/edgepack info $C/repo/spec/examples/sparse.epk > "$LOG/info-sparse.log" 2>&1 \
    || die "edgepack info failed: $LOG/info-sparse.log"
say "arm64: edgepack --help and edgepack info work"

# --- parity with x86 ---------------------------------------------------------------------------------------------------
wait $MAKE_PID || { cat "$LOG/make.log"; die "packing the parity models on the host failed: $LOG/make.log"; }
sed 's/^/[host] /' "$LOG/make.log"
in_root "$WORKROOT" $C/venv/bin/edgepack info $C/models/lenet5.epk > "$LOG/info-lenet5.log" 2>&1 \
    || die "edgepack info lenet5.epk failed: $LOG/info-lenet5.log"
say "arm64: parity run (log: $LOG/parity.log)"
t0=$(date +%s)
PARITY_RC=0
in_root "$WORKROOT" env NUMBA_CACHE_DIR=$C/numba-cache $C/venv/bin/python $C/arm64_parity.py check $C/models \
    --json $C/parity.json 2>&1 | tee "$LOG/parity.log" || PARITY_RC=$?
[ -s "$H/parity.json" ] || die "the parity run wrote no results: $LOG/parity.log"
read -r P_MODELS P_RUNS P_FAILED P_IDENT P_REL P_ABS < <("$HOST_PY" -c "
import json; s = json.load(open('$H/parity.json'))
print(s['models'], s['runs'], len(s['failed']), s['bit_identical'], f\"{s['max_rel_diff']:.1e}\", f\"{s['max_abs_diff']:.1e}\")")
say "arm64: parity $P_RUNS runs of $P_MODELS models, $P_FAILED failed, $P_IDENT bit-identical ($(( $(date +%s) - t0 )) s)"

# --- device: the runtime's tests that need no onnx ---------------------------------------------------------------------
# Files whose imports are the runtime, numpy, pytest, hypothesis (and the onnx-free packer modules bitpack, huffman,
# writer that build test files); the format sweeps over freshly packed models (they need the packer's pack) are left
# out. tests/test_limits.py (~90 s on x86, memory-limited subprocesses) is left out for time.
TESTS="tests/test_format.py tests/test_spec_examples.py tests/test_spec_invalid.py tests/test_energy.py
tests/test_planner.py tests/test_bitpack.py tests/test_huffman.py tests/test_conv.py tests/test_linear.py"
DESELECT="--deselect tests/test_format.py::test_truncation_at_every_offset --deselect tests/test_format.py::test_every_byte_flipped
--deselect tests/test_format.py::test_packed_files_are_what_the_sweeps_expect --deselect tests/test_linear.py::test_matmul_with_an_empty_dimension_runs"
N_TESTS=skipped
if [ $SKIP_TESTS = 0 ]; then
    in_root "$WORKROOT" $C/venv/bin/pip install -q --no-index --find-links /opt/wheelhouse pytest hypothesis \
        > "$LOG/pytest-install.log" 2>&1 || die "pytest/hypothesis install failed: $LOG/pytest-install.log"
    say "arm64: pytest $(echo $TESTS | wc -w) test files (log: $LOG/pytest.log)"
    t0=$(date +%s)
    if ! in_root "$WORKROOT" /bin/sh -c "cd $C/repo && NUMBA_CACHE_DIR=$C/numba-cache $C/venv/bin/python -m pytest -q -p no:cacheprovider $(echo $TESTS) $(echo $DESELECT)" \
        > "$LOG/pytest.log" 2>&1; then
        tail -30 "$LOG/pytest.log"; die "runtime tests failed on arm64: $LOG/pytest.log"
    fi
    N_TESTS=$(grep -oE '[0-9]+ passed' "$LOG/pytest.log" | tail -1 | cut -d' ' -f1)
    say "arm64: $(tail -1 "$LOG/pytest.log") ($(( $(date +%s) - t0 )) s)"
fi

# --- cold start --------------------------------------------------------------------------------------------------------
if [ $SKIP_COLD = 0 ]; then
    say "arm64: cold start per model kind (fresh Numba cache, then warm; log: $LOG/coldstart.log)"
    in_root "$WORKROOT" $C/venv/bin/python $C/arm64_parity.py coldstart $C/models --json $C/coldstart.json \
        --warm-cmd "$C/venv/bin/edgepack warm" 2>&1 | tee "$LOG/coldstart.log" || die "cold start failed: $LOG/coldstart.log"
fi

OUT=${EDGEPACK_ARM64_RESULTS:-$CACHE/last-run}
rm -rf "$OUT"; mkdir -p "$OUT"
cp -r "$LOG" "$OUT/"; cp "$H"/*.json "$OUT/" 2>/dev/null || true
SECS=$(( $(date +%s) - T_START ))
if [ "$PARITY_RC" != 0 ] || [ "$P_FAILED" != 0 ]; then
    echo "arm64 check: FAIL — $P_FAILED of $P_RUNS parity runs differ from x86 beyond rtol 1e-5 (see $OUT/logs/parity.log); $VERSIONS; ${SECS} s"
    exit 1
fi
if [ "$N_TESTS" = skipped ]; then TESTS_PART="runtime tests skipped (--skip-tests)"; else TESTS_PART="$N_TESTS runtime tests passed"; fi
echo "arm64 check: PASS — $TESTS_PART, $P_MODELS models in $P_RUNS model x layer-mode runs (default/compact/streamed/budget) equal to x86 within rtol 1e-5 of each output's max (max rel diff $P_REL, max abs $P_ABS; $P_IDENT of $P_RUNS bit-identical), $VERSIONS, NUMBA_CPU_NAME=$CPU, ${SECS} s (results: $OUT)"
