#!/usr/bin/env bash
# The system packages eerag's default build needs, installed if missing
# (Debian/Ubuntu, as root or through sudo):
#   cmake, a C/C++ compiler  llama.cpp, built from source by the llama-cpp-2 crate
#   libclang-dev             bindgen, for llama.cpp's Rust bindings
#   libopenblas-dev          the CPU encoder's dense layers
#   binutils                 nm, for the test that reads the host binary's symbols
set -euo pipefail
packages=(cmake g++ libclang-dev libopenblas-dev binutils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]}" >&2
run() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
run apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { run apt-get update >/dev/null && run apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
