#!/usr/bin/env bash
# Installs the Debian packages hardkey's build, tests and demo need, when run as root;
# otherwise prints the exact install line and fails. Also installs, for the current user, the
# nightly Rust toolchain and cargo-fuzz the fuzz targets (make fuzz, make fuzz-smoke) build
# with, when they are missing. Usage: ensure-deps.sh PACKAGE...
set -euo pipefail

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust (rustup) first" >&2
    exit 1
fi

# The fuzz targets: a nightly toolchain (rustup's, minimal profile) and cargo-fuzz 0.13.2.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "error: the fuzz targets need a nightly toolchain: install rustup first" >&2
        exit 1
    fi
    echo "installing the nightly Rust toolchain (for the fuzz targets)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz 0.13.2 (for the fuzz targets)"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    echo "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "error: missing packages: ${missing[*]}" >&2
    echo "install them with:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
