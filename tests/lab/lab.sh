#!/bin/bash
# tests/lab/lab.sh [--list] [FILTER...] -- run the lab scenarios, one VM each.
#
# Builds (or reuses) the lab image, builds the iscsimple binary (with the
# `crashpoints` feature: kill points the crash scenarios use, inert unless
# ISCSIMPLE_CRASH_* is set) and the lab test binary (tests/lab/main.rs) on
# the host, then boots one qemu TCG VM per
# scenario whose name contains one of the FILTERs (all when none) and runs it
# there as root. Prints one line per scenario, the guest's log for failures,
# and a closing "N passed, N failed" line; exits 1 if any scenario failed.
#
# Env: LAB_CACHE (image cache, default /var/tmp/iscsimple/lab),
#      LAB_TIMEOUT (seconds per scenario VM, default 600), LAB_MEM (MiB, 1024),
#      LAB_JOBS (VMs at once, default 1), LAB_VERBOSE=1 (show every console),
#      LAB_PREFIX (test name prefix, default lab_),
#      LAB_FLAVOR (plain, the default, or xen: see below),
#      LAB_OUT (where bin/, logs/ and disks/ go, default target/lab),
#      LAB_FILES (more host files or directories, blank-separated, copied to
#      the guest's /lab/ as run.sh copies its FILEs).
# Logs: target/lab/logs/<scenario>.log (full console of each VM).
#
# A scenario whose name contains _reboot proves something survives a power
# loss: it gets a fresh sparse 512 MiB raw disk, target/lab/disks/<scenario>.img
# (with :: written .), attached as a virtio disk after any other drive (see
# tests/lab/fixture/persist.rs), and is booted twice with it: LAB_BOOT=1, then
# LAB_BOOT=2 if boot 1 passed. It passes when both boots pass and counts as one
# scenario; its log holds boot 1's console then boot 2's. The disk is removed
# when the scenario passes and kept for inspection when it fails.
#
# LAB_FLAVOR=xen runs the xen_* scenarios in the dom0 of a real Xen booted in
# the VM (image from build-xen.sh; LAB_PREFIX defaults to xen_, LAB_MEM to
# 2048, LAB_TIMEOUT to 900; logs in target/lab/xen/logs). The plain flavour
# never runs xen_* scenarios and the xen flavour runs nothing else.
set -uo pipefail
unset LAB_BOOT   # set per boot for _reboot scenarios only (run.sh exports LAB_*)

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
export LAB_CACHE=${LAB_CACHE:-/var/tmp/iscsimple/lab}
export LAB_FLAVOR=${LAB_FLAVOR:-plain}
case "$LAB_FLAVOR" in
plain) OUT="$TOP/target/lab" BUILD=(build.sh) PREFIX=lab_ MEM=1024 TIMEOUT=600 ;;
xen)   OUT="$TOP/target/lab/xen" BUILD=(build-xen.sh ${LAB_XEN_CACHE:+"$LAB_XEN_CACHE"})
       PREFIX=xen_ MEM=2048 TIMEOUT=900 ;;
*)     echo "lab: unknown LAB_FLAVOR=$LAB_FLAVOR (plain or xen)"; echo "0 passed, 1 failed"; exit 1 ;;
esac
OUT=${LAB_OUT:-$OUT}
LIST=0
[ "${1:-}" = --list ] && { LIST=1; shift; }

t0=$(date +%s)
bash "$HERE/${BUILD[0]}" "${BUILD[@]:1}" || { echo "lab: image build failed"; echo "0 passed, 1 failed"; exit 1; }

cd "$TOP" || exit 1
echo "lab: building the binary and the lab scenarios" >&2
cargo build --release --bin iscsimple --features crashpoints >&2 || { echo "0 passed, 1 failed"; exit 1; }
testbin=$(cargo test --release --features lab,crashpoints --test lab --no-run 2>&1 | tee /dev/stderr \
          | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -n "$testbin" ] && [ -f "$TOP/$testbin" ] && testbin="$TOP/$testbin"
[ -n "$testbin" ] && [ -f "$testbin" ] && [ -x "$testbin" ] || { echo "lab: lab test binary not built"; echo "0 passed, 1 failed"; exit 1; }
rm -rf "$OUT/bin" "$OUT/logs" "$OUT/disks"; mkdir -p "$OUT/bin" "$OUT/logs" "$OUT/disks"
# Stripped copies keep the per-VM overlay small.
strip -o "$OUT/bin/iscsimple" "$TOP/target/release/iscsimple"
strip -o "$OUT/bin/lab-tests" "$testbin"

# scenarios are the tests named lab_* (demo.sh runs demo_*); xen_* ones
# (the test function's name) belong to the xen flavour only
prefix=${LAB_PREFIX:-$PREFIX}
flavor_re='(^|::)xen_[^:]*$'
mapfile -t all < <("$OUT/bin/lab-tests" --list --format terse 2>/dev/null | sed -n 's/: test$//p' \
                   | grep -E "(^|::)${prefix}" \
                   | if [ "$LAB_FLAVOR" = xen ]; then grep -E "$flavor_re"; else grep -vE "$flavor_re"; fi)
scenarios=()
for s in "${all[@]}"; do
    if [ $# -eq 0 ]; then scenarios+=("$s"); continue; fi
    for f in "$@"; do case "$s" in *"$f"*) scenarios+=("$s"); break;; esac; done
done
if [ $LIST = 1 ]; then printf '%s\n' "${scenarios[@]}"; exit 0; fi
[ ${#scenarios[@]} -gt 0 ] || { echo "lab: no scenario matches: $*"; echo "0 passed, 1 failed"; exit 1; }
# *_deb_* scenarios install the Debian package (make deb: a release build
# without crashpoints, done before the lab binary's so that the package
# holds what users get); *lab_doctor_* ones get e2fsck and tune2fs from this
# host (a doctor fix runs them; the image has mke2fs only)
for s in "${scenarios[@]}"; do
    case "$s" in *_deb_*)
        echo "lab: building the Debian package (make deb)" >&2
        make -s -C "$TOP" deb >&2 || { echo "lab: make deb failed"; echo "0 passed, 1 failed"; exit 1; }
        deb=$(ls -t "$TOP"/target/debian/iscsimple_*.deb | head -1)
        cp "$deb" "$OUT/bin/iscsimple.deb"
        break;;
    esac
done
for s in "${scenarios[@]}"; do
    case "$s" in *lab_doctor_*)
        mkdir -p "$OUT/bin/doctor-tools"
        cp -L /sbin/e2fsck /sbin/tune2fs "$OUT/bin/doctor-tools/"
        break;;
    esac
done
# lab_libvirt_* scenarios also need the Debian root with libvirtd, attached as a disk
for s in "${scenarios[@]}"; do
    case "$s" in *lab_libvirt_*)
        bash "$HERE/build-libvirt.sh" || { echo "lab: libvirt image build failed"; echo "0 passed, 1 failed"; exit 1; }
        break;;
    esac
done
echo "lab: ${#scenarios[@]} $LAB_FLAVOR scenario(s), image $LAB_CACHE, $(( $(date +%s) - t0 ))s of preparation" >&2

disk_of() {   # disk_of NAME -> the persistent disk of _reboot scenario NAME (no colons for qemu)
    echo "$OUT/disks/${1//::/.}.img"
}

boot() {      # boot NAME LOG HOSTLOG [VAR=VALUE...] -> one VM running scenario NAME
    local name=$1 log=$2 hostlog=$3; shift 3
    local mem=${LAB_MEM:-$MEM} timeout=${LAB_TIMEOUT:-$TIMEOUT} extra=${QEMU_EXTRA:-}
    case "$name" in *lab_libvirt_*)
        mem=${LAB_MEM:-2048} timeout=${LAB_TIMEOUT:-900}
        extra="$extra -drive file=$LAB_CACHE/libvirt/rootfs.ext4,if=virtio,format=raw,snapshot=on";;
    esac
    case "$name" in *_reboot*)
        extra="$extra -drive file=$(disk_of "$name"),if=virtio,format=raw";;
    esac
    local files=("$OUT/bin/iscsimple" "$OUT/bin/lab-tests")
    case "$name" in *_deb_*) files+=("$OUT/bin/iscsimple.deb");; esac
    case "$name" in *lab_doctor_*) files+=("$OUT/bin/doctor-tools/e2fsck" "$OUT/bin/doctor-tools/tune2fs");; esac
    # shellcheck disable=SC2086  # LAB_FILES is a blank-separated list
    env "$@" LAB_TEST="$name" LOG="$log" TIMEOUT="$timeout" MEM="$mem" QEMU_EXTRA="$extra" \
        bash "$HERE/run.sh" "$HERE/guest-run.sh" "${files[@]}" ${LAB_FILES:-} \
        > /dev/null 2>>"$hostlog"
}

guest_fault() {  # guest_fault LOG -> prints why the guest, not the scenario, failed
    # The kernel oopsed (a kernel bug: no user-space program may cause one;
    # seen: iscsi_tcp's connection cleanup after a rejected login under
    # TCG), or the VM never reached the scenario (seen: SeaBIOS hanging at
    # "Booting from ROM" on a loaded host).
    local line
    line=$(tr -d '\r' < "$1" 2>/dev/null | grep -a -m1 -E 'BUG: kernel|Oops: |Kernel panic|RIP: ' || true)
    if [ -n "$line" ]; then echo "guest kernel fault: ${line#*] }"; return 0; fi
    grep -aq '@@LAB-SCENARIO-START' "$1" 2>/dev/null && return 1
    echo "the guest never reached the scenario (boot hang)"
}

run_one() {   # run_one NAME -> writes $OUT/logs/NAME.{log,log.host,log.rc,log.ms}
    local name=$1 log="$OUT/logs/$1.log" s e rc b disk why
    s=$(date +%s%N)
    case "$name" in
    *_reboot*)
        # two boots on one fresh disk; the log is boot 1's console then boot 2's
        disk=$(disk_of "$name")
        rm -f "$disk"; truncate -s 512M "$disk"
        : > "$log"
        for b in 1 2; do
            echo "lab: $name: boot $b of 2" >> "$log.host"
            boot "$name" "$log.boot$b" "$log.host" LAB_BOOT=$b
            rc=$?
            { echo "==== lab.sh: $name boot $b of 2 (LAB_BOOT=$b, disk $disk): guest exit $rc"
              cat "$log.boot$b" 2>/dev/null; } >> "$log"
            rm -f "$log.boot$b"
            [ "$rc" = 0 ] || break
        done
        if [ "$rc" = 0 ]; then rm -f "$disk"
        else echo "lab: $name: failed in boot $b of 2; disk kept: $disk" >> "$log.host"; fi ;;
    *)
        boot "$name" "$log" "$log.host"
        rc=$?
        # A fault of the guest's kernel or firmware says nothing about the
        # scenario: it runs once more, and the report says so.
        if [ "$rc" != 0 ] && why=$(guest_fault "$log"); then
            mv "$log" "$log.first"
            echo "$why" > "$log.retried"
            echo "lab: $name: $why (first console: $log.first); running it once more" >> "$log.host"
            boot "$name" "$log" "$log.host"
            rc=$?
        fi ;;
    esac
    e=$(date +%s%N)
    echo "$rc" > "$log.rc"
    echo "$(( (e - s) / 1000000 ))" > "$log.ms"
}

report() {    # report NAME -> prints its line (and its log on failure), returns its rc
    local name=$1 log="$OUT/logs/$1.log" rc ms
    rc=$(cat "$log.rc"); ms=$(cat "$log.ms")
    local again=""
    [ -f "$log.retried" ] && again=", run twice: $(cat "$log.retried")"
    if [ "$rc" = 0 ]; then
        printf 'lab %s ... ok (%d.%ds%s)\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "$again"
        [ "${LAB_VERBOSE:-0}" = 1 ] && sed -n '/@@LAB-SCENARIO-START/,$p' "$log"
    else
        printf 'lab %s ... FAILED (guest exit %s, %d.%ds%s)\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000 / 100)) "$again"
        echo "---- $name: guest console (scenario output and diagnostics; full log $log)"
        if grep -q '@@LAB-SCENARIO-START' "$log" 2>/dev/null; then
            sed -n '/@@LAB-SCENARIO-START/,$p' "$log"
        else
            tail -n 80 "$log" 2>/dev/null
        fi
        cat "$log.host" 2>/dev/null
        echo "---- end of $name"
    fi
    return "$rc"
}

pass=0 fail=0 jobs=${LAB_JOBS:-1}
running=()
for s in "${scenarios[@]}"; do
    run_one "$s" &
    running+=("$s:$!")
    while [ ${#running[@]} -ge "$jobs" ]; do
        wait "${running[0]##*:}"
        if report "${running[0]%:*}"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
        running=("${running[@]:1}")
    done
done
for r in "${running[@]}"; do
    wait "${r##*:}"
    if report "${r%:*}"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "lab: $(( $(date +%s) - t0 ))s in all"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
