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
# Env: LAB_CACHE, TIMEOUT (s, default 600), MEM (MiB, 1024), SMP (2),
#      APPEND (kernel args), QEMU_EXTRA (extra qemu args, word-split), LOG.
#      Every LAB_* variable is exported to the guest (/lab/env).
set -uo pipefail

CACHE=${LAB_CACHE:-/var/tmp/iscsimple/lab}
TIMEOUT=${TIMEOUT:-600}
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: run.sh SCRIPT [FILE...]" >&2; exit 2; }
for f in vmlinuz base.cpio.gz qemu.env; do
    [ -s "$CACHE/$f" ] || { echo "run.sh: $CACHE/$f missing: run tests/lab/build.sh first" >&2; exit 2; }
done
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
cat "$CACHE/base.cpio.gz" "$WORK/overlay.cpio.gz" > "$WORK/initrd.gz"

CONSOLE="$WORK/console.log"
start=$(date +%s%N)
# shellcheck disable=SC2086
timeout -k 5 "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" \
    -accel tcg,thread=multi -cpu max -smp "${SMP:-2}" -m "${MEM:-1024}" \
    -nographic -no-reboot -nic none -monitor none \
    -kernel "$CACHE/vmlinuz" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet ${APPEND:-}" ${QEMU_EXTRA:-} \
    </dev/null > "$CONSOLE" 2>&1 &
QPID=$!
if [ -n "${LOG:-}" ]; then
    wait "$QPID"; qrc=$?
else
    tail -f --pid="$QPID" "$CONSOLE" | tr -d '\r' &
    wait "$QPID"; qrc=$?
    wait
fi
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
