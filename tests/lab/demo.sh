#!/bin/bash
# tests/lab/demo.sh -- `make demo`: boot the lab VM and show iscsimple attaching
# a mirrored disk (tgt target with CHAP + LVM volume), the resync in
# /proc/mdstat, status, and detach.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LAB_PREFIX=demo_ LAB_VERBOSE=1 LAB_MEM=${LAB_MEM:-2048} exec bash "$HERE/lab.sh" "$@"
