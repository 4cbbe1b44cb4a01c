#!/bin/bash
# tests/deps.sh -- install what building and testing need on Debian 12 (root).
# The lab's own packages (qemu, kernel, open-iscsi, tgt, mdadm, lvm2, ...) are
# installed by tests/lab/build.sh. libudev-dev: the udev crate links libudev
# (found with pkg-config). Packaging needs lintian (Debian) and
# cargo-deb (crates.io, built once into ~/.cargo/bin).
set -euo pipefail
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }
missing=
for p in build-essential pkg-config libudev-dev binutils python3 lintian; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || { echo "deps: need root to install:$missing" >&2; exit 2; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get -y -q -o DPkg::Lock::Timeout=600 update >&2
    # shellcheck disable=SC2086
    apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-remove $missing >&2
fi
if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found: install Rust >= 1.74 (rustup, https://rustup.rs) and retry" >&2
    exit 2
fi
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
    echo "deps: cargo install cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb >&2
fi
