#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolchain from PyPI wheels (no NVIDIA installer,
# no GPU needed) into a folder and prints the environment a `--features cuda`
# build needs. Usage:
#
#   eval "$(bash scripts/cuda-toolchain.sh [DIR])"   # DIR defaults to .cuda
#   cargo build --release --features cuda
#
# Why CUDA 13: the only PyPI wheels that ship the `nvcc` driver are NVIDIA's
# cu13 ones (`nvidia-cuda-nvcc` 13.x; the cu12 wheels carry ptxas alone).
# Binaries built this way need an NVIDIA driver of the 580 series or newer
# (CUDA 13) and the CUDA 13 libraries at run time; the same wheels provide the
# libraries (LD_LIBRARY_PATH below).
#
# The wheels are pinned by version and checked against SHA-256 sums, like the
# models (docs/design.md §5).
set -euo pipefail
DIR="${1:-.cuda}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
WHEELS="$DIR/wheels"
ROOT="$DIR/root"

# package==version sha256
PINS=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
  "nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
  "nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
  "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
)

if [[ ! -x "$ROOT/bin/nvcc" ]]; then
  mkdir -p "$WHEELS"
  for pin in "${PINS[@]}"; do
    spec="${pin% *}"; sum="${pin#* }"
    name="${spec%%==*}"; version="${spec#*==}"
    pattern="$WHEELS/${name//-/_}-${version}-*.whl"
    # shellcheck disable=SC2086
    if ! ls $pattern >/dev/null 2>&1; then
      python3 -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$WHEELS" "$spec" >&2
    fi
    # shellcheck disable=SC2086
    wheel="$(ls $pattern | head -1)"
    got="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$got" != "$sum" ]]; then
      echo "cuda-toolchain: $wheel has SHA-256 $got, expected $sum" >&2
      exit 1
    fi
  done
  # Every cu13 wheel unpacks under nvidia/cu13/: together they form one
  # toolkit tree (bin/, include/, lib/, nvvm/).
  rm -rf "$DIR/unpacked" "$ROOT"
  mkdir -p "$DIR/unpacked"
  for wheel in "$WHEELS"/*.whl; do
    python3 -m zipfile -e "$wheel" "$DIR/unpacked"
  done
  mv "$DIR/unpacked/nvidia/cu13" "$ROOT"
  rm -rf "$DIR/unpacked"
  chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/* 2>/dev/null || true
  # Linking wants the unversioned names; the wheels ship only .so.N.
  for lib in "$ROOT"/lib/*.so.*; do
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
  done
fi

# candle links libcuda, which only the NVIDIA driver provides. Link against a
# stub with the driver API's symbols; every one returns
# CUDA_ERROR_STUB_LIBRARY (34), so a binary that meets the stub at run time
# reports "no CUDA device" instead of crashing. The stub is never on the
# library path: at run time the driver's own libcuda.so.1 is used.
if [[ ! -e "$ROOT/lib/stubs/libcuda.so" ]]; then
  mkdir -p "$ROOT/lib/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$ROOT/include/cuda.h" | sort -u |
    awk '{print "int " $1 "(void) { return 34; }"}' > "$DIR/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$DIR/libcuda-stub.c"
fi

"$ROOT/bin/nvcc" --version >&2
cat <<ENV
export CUDA_ROOT="$ROOT"
export CUDA_HOME="$ROOT"
export PATH="$ROOT/bin:\$PATH"
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$ROOT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# No GPU to ask at build time: compile the kernels for this compute capability
# (90 = H100/H200; 80 = A100; PTX also runs on newer GPUs).
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
ENV
