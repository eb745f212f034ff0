#!/usr/bin/env bash
# .ci/deps.sh - install what memvirt needs to build, test and benchmark, on Debian 12.
#
# The one list of packages: both commands at the top of README.md and .ci/run call this.
# Runs apt-get update and apt-get install, non-interactively, unless every package is
# already installed (MEMVIRT_DEPS_FORCE=1 installs anyway). Needs root (or sudo).
set -euo pipefail

packages=(
    # Toolchain. g++ builds the Google Benchmark shim and the C++ header check; binutils
    # (readelf) comes with gcc.
    gcc g++ meson ninja-build pkg-config
    # The default posix platform: metadata arena, NUMA binding, topology. hwloc's
    # pkg-config file lists -ludev for static links, so a static consumer needs libudev-dev.
    libjemalloc-dev libnuma-dev libhwloc-dev libudev-dev
    # Tests (cmocka) and benchmarks (Google Benchmark, driven through a C shim).
    libcmocka-dev libbenchmark-dev
    # Memory images (zstd) and hashing (xxhash, header-only in the engine).
    libzstd-dev libxxhash-dev
    # Plots of benchmark and experiment results (optional).
    gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ] && [ "${MEMVIRT_DEPS_FORCE:-0}" != 1 ]; then
    echo "deps: all ${#packages[@]} packages are installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: run as root (or install sudo)" >&2; exit 1; }
    sudo=(sudo)
fi
echo "deps: installing ${missing[*]:-${packages[*]}}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
