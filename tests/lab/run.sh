#!/bin/bash
# tests/lab/run.sh SCRIPT [FILE...] -- boot the lab VM (qemu TCG) and run SCRIPT in it.
#
# SCRIPT becomes /lab/test.sh in the guest (run by /init as root, cwd /lab).
# Each FILE is copied to /lab/ (directories recursively); the shared libraries
# of ELF files (ldd) are added, so host-built dynamic binaries run in the guest.
# Only a small overlay initramfs is built per run and appended to the cached
# base image (the kernel unpacks concatenated cpio archives in order).
#
# The console goes to $LOG (default: stdout). Exit status: the guest script's,
# read from the "@@LAB-EXIT=N@@" line; 124 = timeout, 125 = VM ended without it.
# (/init prints it before powering off; a scenario that cuts the power itself,
# fixture/persist.rs power_loss(), prints it before the reset.)
# Env: LAB_CACHE, TIMEOUT (s, default 600), MEM (MiB, 1024), SMP (2),
#      BOOT_WAIT (s, 120: a guest still at the firmware then is stopped),
#      APPEND (kernel args), QEMU_EXTRA (extra qemu args, word-split), LOG.
#      Every LAB_* variable is exported to the guest (/lab/env).
#
# LAB_FLAVOR=xen boots Xen instead (image from build-xen.sh in LAB_XEN_CACHE,
# default $LAB_CACHE/xen): Xen is the multiboot kernel, the dom0 kernel and
# the initramfs (dom0.cpio.gz + the same overlay) are its modules, SCRIPT runs
# in dom0. There MEM defaults to 2048, DOM0_MEM (1024M) is dom0's share,
# APPEND goes to the dom0 kernel and XEN_APPEND to Xen's command line.
set -uo pipefail

CACHE=${LAB_CACHE:-/var/tmp/iscsimple/lab}
TIMEOUT=${TIMEOUT:-600}
FLAVOR=${LAB_FLAVOR:-plain}
XCACHE=${LAB_XEN_CACHE:-$CACHE/xen}
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: run.sh SCRIPT [FILE...]" >&2; exit 2; }
case "$FLAVOR" in
plain)
    BASE=$CACHE/base.cpio.gz
    for f in "$CACHE/vmlinuz" "$BASE" "$CACHE/qemu.env"; do
        [ -s "$f" ] || { echo "run.sh: $f missing: run tests/lab/build.sh first" >&2; exit 2; }
    done ;;
xen)
    BASE=$XCACHE/dom0.cpio.gz
    for f in "$XCACHE/xen.elf" "$XCACHE/vmlinuz-dom0" "$BASE" "$CACHE/qemu.env"; do
        [ -s "$f" ] || { echo "run.sh: $f missing: run tests/lab/build-xen.sh first" >&2; exit 2; }
    done ;;
*)
    echo "run.sh: unknown LAB_FLAVOR=$FLAVOR (plain or xen)" >&2; exit 2 ;;
esac
# shellcheck disable=SC1091
. "$CACHE/qemu.env"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/labrun.XXXXXX")
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

O="$WORK/overlay"; mkdir -p "$O/lab"
install -m 755 "$1" "$O/lab/test.sh"; shift
while IFS= read -r v; do printf '%s=%q\n' "$v" "${!v}"; done < <(compgen -v LAB_) > "$O/lab/env"
copy_libs() {   # ldd libraries of ELF $1 into the overlay at their host paths
    local lib real alias
    for lib in $(ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'); do
        real=$(readlink -f "$lib")
        alias="$(readlink -f "$(dirname "$lib")")/$(basename "$lib")"
        mkdir -p "$O$(dirname "$real")"
        [ -e "$O$real" ] || cp -p "$real" "$O$real"
        if [ "$alias" != "$real" ] && [ ! -e "$O$alias" ]; then
            mkdir -p "$O$(dirname "$alias")"; ln -s "$real" "$O$alias"
        fi
    done
}
for f in "$@"; do
    cp -aL "$f" "$O/lab/"
    if [ -d "$f" ]; then
        while IFS= read -r -d '' e; do
            head -c4 "$e" | grep -q 'ELF' && copy_libs "$e"
        done < <(find "$f" -type f -print0)
    elif head -c4 "$f" | grep -q 'ELF'; then
        copy_libs "$f"
    fi
done
# merged /usr: an overlay lib/ or bin/ directory would replace the base's
# symlinks and the guest could not load libc
for d in lib lib64 bin sbin; do
    if [ -d "$O/$d" ] && [ ! -L "$O/$d" ]; then
        mkdir -p "$O/usr/$d"; cp -a "$O/$d/." "$O/usr/$d/"; rm -rf "${O:?}/$d"
    fi
done
(cd "$O" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$WORK/overlay.cpio.gz"
cat "$BASE" "$WORK/overlay.cpio.gz" > "$WORK/initrd.gz"

CONSOLE="$WORK/console.log"
: > "$CONSOLE"   # tail -f below must find it even before qemu opens it
start=$(date +%s%N)
if [ "$FLAVOR" = xen ]; then
    # -initrd is Xen's multiboot module list: "dom0 kernel + its command
    # line,initramfs". qemu splits it at commas (a literal one is written
    # ",,") and the kernel's path ends at the first blank.
    qesc() { printf '%s' "${1//,/,,}"; }
    case "$XCACHE$WORK" in *[[:space:]]*) echo "run.sh: no blanks allowed in $XCACHE or $WORK" >&2; exit 2;; esac
    DOM0_MEM=${DOM0_MEM:-1024M}
    # With plain -cpu max (SMAP/SMEP) the dom0 kernel dies with a page fault.
    # With XSAVE, dom0 processes (xl, busybox) crashed now and then in libc
    # ("malloc(): corrupted top size", segfaults): the extended register state
    # is not reliably kept across Xen's context switches under TCG. Without
    # XSAVE, glibc uses SSE only.
    # shellcheck disable=SC2086
    timeout -k 5 "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" \
        -accel tcg,thread=multi -cpu "${XEN_CPU:-max,-smap,-smep,-xsave}" -smp "${SMP:-2}" -m "${MEM:-2048}" \
        -nographic -no-reboot -nic none -monitor none \
        -kernel "$XCACHE/xen.elf" \
        -append "console=com1 com1=115200,8n1 dom0_mem=$DOM0_MEM,max:$DOM0_MEM loglvl=all guest_loglvl=all ${XEN_APPEND:-}" \
        -initrd "$(qesc "$XCACHE/vmlinuz-dom0") $(qesc "console=hvc0 panic=-1 oops=panic quiet ${APPEND:-}"),$(qesc "$WORK/initrd.gz")" \
        ${QEMU_EXTRA:-} </dev/null > "$CONSOLE" 2>&1 &
else
    # shellcheck disable=SC2086
    timeout -k 5 "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" \
        -accel tcg,thread=multi -cpu max -smp "${SMP:-2}" -m "${MEM:-1024}" \
        -nographic -no-reboot -nic none -monitor none \
        -kernel "$CACHE/vmlinuz" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 panic=-1 oops=panic quiet ${APPEND:-}" ${QEMU_EXTRA:-} \
        </dev/null > "$CONSOLE" 2>&1 &
fi
QPID=$!
# SeaBIOS now and then hangs at "Booting from ROM" on a loaded host (lab.sh
# runs such a guest once more, see its rerun_reason). A healthy guest prints
# past it within seconds; one still there after BOOT_WAIT seconds never
# boots: it is stopped then, not at TIMEOUT (a CI run lost 600 s to one).
( for _ in $(seq 1 $(( ${BOOT_WAIT:-120} / 2 ))); do
      kill -0 "$QPID" 2>/dev/null || exit 0
      sleep 2
  done
  if kill -0 "$QPID" 2>/dev/null \
     && tr -d '\r' < "$CONSOLE" | grep -av '^[[:space:]]*$' | tail -n 1 | grep -aqF 'Booting from ROM'; then
      echo "run.sh: still at the firmware's \"Booting from ROM\" after ${BOOT_WAIT:-120}s: stopping the VM" >&2
      kill "$QPID"   # timeout(1) passes SIGTERM on to qemu
  fi ) &
BOOT_WATCH=$!
if [ -n "${LOG:-}" ]; then
    wait "$QPID"; qrc=$?
else
    tail -f --pid="$QPID" "$CONSOLE" | tr -d '\r' &
    wait "$QPID"; qrc=$?
    wait
fi
kill "$BOOT_WATCH" 2>/dev/null
QPID=
end=$(date +%s%N)
[ -n "${LOG:-}" ] && tr -d '\r' < "$CONSOLE" > "$LOG"
ms=$(( (end - start) / 1000000 ))
marker=$(tr -d '\r' < "$CONSOLE" | sed -n 's/^@@LAB-EXIT=\([0-9]*\)@@$/\1/p' | tail -1)
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "run.sh: TIMEOUT after ${TIMEOUT}s" >&2; rc=124
elif [ -z "$marker" ]; then
    echo "run.sh: VM ended without exit marker (qemu rc=$qrc)" >&2; rc=125
else
    rc=$marker
fi
echo "run.sh: guest exit=$rc wall=$((ms / 1000)).$((ms % 1000 / 100))s" >&2
exit "$rc"
