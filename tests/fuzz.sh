#!/bin/bash
# tests/fuzz.sh -- `make fuzz`: fuzz the spec parser for FUZZ_SECS (default 60) seconds.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run spec -- -max_total_time="${FUZZ_SECS:-60}"
