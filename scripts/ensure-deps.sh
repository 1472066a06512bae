#!/usr/bin/env bash
# Installs the Debian packages hardkey's build, tests and demo need, when run as root;
# otherwise prints the exact install line and fails. Usage: ensure-deps.sh PACKAGE...
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
