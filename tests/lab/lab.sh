#!/bin/bash
# tests/lab/lab.sh [--list] [FILTER...] -- run the lab scenarios, one VM each.
#
# Builds (or reuses) the lab image, builds the iscsimple binary (with the
# `crashpoints` feature: kill points the crash scenarios use, inert unless
# ISCSIMPLE_CRASH_* is set) and the lab test binary (tests/lab/main.rs) on
# the host, then boots one qemu TCG VM per
# scenario whose name contains one of the FILTERs (all when none) and runs it
# there as root. Prints one line per scenario, the guest's log for failures,
# a line naming the scenarios that ran twice ("lab: N rerun(s): NAME..." or
# "lab: no reruns"; see rerun_reason for when one does, and its first
# console is always printed) and a closing "N passed, N failed" line, always
# the last; exits 1 if any scenario failed.
# tests/lab/lab.sh --self-test checks the rerun rule and the closing lines
# on made-up consoles, in a second, without a VM (run-all.sh runs it).
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
# A scenario whose name contains _etcd gets Debian's etcd server (etcd-server
# 3.4, /usr/bin/etcd: a 21 MB Go binary linked to libc only) as /lab/etcd, to
# run a real cluster with tests/lab/fixture/etcd.rs. It is not in the base
# image (few scenarios need it): lab.sh installs etcd-server on this host when
# such a scenario is selected (not build.sh, so the image and its stamp stay
# as they are) and keeps the host's own etcd service disabled and stopped.
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


# When a scenario runs once more: its guest, not the scenario, failed, which
# is told by all three of
# - the VM ended without its exit marker (@@LAB-EXIT=N@@): a guest that
#   printed it ran its scenario to the end, whatever else its console holds
#   (a failed scenario's diagnostics print dmesg, where every kernel WARN
#   has a "RIP:" line, and an oops there comes after the scenario failed);
# - a known signature in the console before the scenario's end marker
#   (@@LAB-SCENARIO-END), or anywhere when there is none;
# - the signature is one of KNOWN_FAULTS: a guest kernel oops (the kernel
#   runs with oops=panic, so the first one ends the VM; no user-space
#   program may cause one), or the firmware hanging before the kernel.
# Seen: Debian 6.1's iscsi_tcp dereferencing NULL while cleaning up a
# connection whose login the target had just rejected (under TCG), and
# SeaBIOS hanging at "Booting from ROM" on a loaded host. Never rerun: a
# WARN, a hung task, a panic without an oops (such as init killed by the
# OOM killer), a timeout, any other hang.
KNOWN_FAULTS=(
    'BUG: kernel NULL pointer dereference'
    'BUG: unable to handle page fault'
    'general protection fault'
    'kernel BUG at'
)
FIRMWARE_HANG='Booting from ROM'

rerun_reason() {  # rerun_reason CONSOLE -> prints why the guest failed and returns 0, or returns 1
    local text end hit n sig=() f
    [ -s "$1" ] || return 1
    text=$(tr -d '\r' < "$1")
    grep -aqE '^@@LAB-EXIT=[0-9]+@@$' <<< "$text" && return 1
    end=$(grep -an -m1 '@@LAB-SCENARIO-END' <<< "$text" | cut -d: -f1)
    for f in "${KNOWN_FAULTS[@]}"; do sig+=(-e "$f"); done
    if hit=$(grep -anF -m1 "${sig[@]}" <<< "$text"); then
        n=${hit%%:*} hit=${hit#*:}
        if [ -z "$end" ] || [ "$n" -lt "$end" ]; then
            echo "guest kernel fault: ${hit#*] }"
            return 0
        fi
    fi
    if ! grep -aq '@@LAB-SCENARIO-START' <<< "$text" \
       && grep -av '^[[:space:]]*$' <<< "$text" | tail -n 2 | grep -aqF "$FIRMWARE_HANG"; then
        echo "the guest never reached the scenario (firmware hang at \"$FIRMWARE_HANG\")"
        return 0
    fi
    return 1
}

summary() {   # summary PASSED FAILED [RERUN...] -> the closing lines; the last one is "N passed, N failed"
    local p=$1 f=$2; shift 2
    if [ $# = 0 ]; then echo "lab: no reruns"; else echo "lab: $# rerun(s): $*"; fi
    echo "$p passed, $f failed"
}

show_console() {  # show_console LOG -> the scenario's part of a console (its tail when it never started)
    if grep -aq '@@LAB-SCENARIO-START' "$1" 2>/dev/null; then
        sed -n '/@@LAB-SCENARIO-START/,$p' "$1"
    else
        tail -n 80 "$1" 2>/dev/null
    fi
}

self_test() {  # the rerun rule and the closing lines on made-up consoles; exit 1 on a mismatch
    local d ok=0 bad=0 c want got why
    d=$(mktemp -d "${TMPDIR:-/tmp}/labself.XXXXXX")
    local start='@@LAB-SCENARIO-START lab_x@@' oops='[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   12.345700] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   12.345800] RIP: 0010:iscsi_sw_tcp_conn_stop+0x20/0x80 [iscsi_tcp]
[   12.346000] Kernel panic - not syncing: Fatal exception' \
          warn='[   20.000000] WARNING: CPU: 1 PID: 77 at drivers/md/md.c:100 md_foo+0x1/0x2
[   20.000100] RIP: 0010:md_foo+0x1/0x2'
    printf '%s\n' 'lab: kernel 6.1' "$start" 'test lab_x ... ok' '@@LAB-SCENARIO-END rc=0@@' '@@LAB-EXIT=0@@' > "$d/pass"
    printf '%s\n' "$start" 'assertion failed' '@@LAB-SCENARIO-END rc=101@@' '---- dmesg (tail)' "$warn" '@@LAB-EXIT=101@@' > "$d/warn_in_diagnostics"
    printf '%s\n' "$start" 'assertion failed' '@@LAB-SCENARIO-END rc=101@@' '---- dmesg (tail)' "$oops" '@@LAB-EXIT=101@@' > "$d/oops_in_diagnostics"
    printf '%s\n' "$start" 'attaching' "$oops" > "$d/oops_mid_scenario"
    printf '%s\r\n' "$start" 'attaching' "$oops" > "$d/oops_mid_scenario_crlf"
    printf '%s\n' "$start" "$oops" '@@LAB-SCENARIO-END rc=101@@' '@@LAB-EXIT=101@@' > "$d/oops_but_exit_marker"
    printf '%s\n' "$start" 'assertion failed' '@@LAB-SCENARIO-END rc=101@@' '---- dmesg (tail)' "$oops" > "$d/oops_after_scenario_end"
    printf '%s\n' "$start" 'attaching' "$warn" > "$d/warn_then_timeout"
    printf '%s\n' "$start" 'attaching' '[   30.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009' > "$d/panic_without_oops"
    printf '%s\n' "$start" 'attaching' > "$d/timeout_mid_scenario"
    printf '%s\n' 'SeaBIOS (version 1.16.2-debian-1.16.2-1)' '' 'Booting from ROM..' > "$d/firmware_hang"
    printf '%s\n' 'SeaBIOS (version 1.16.2-debian-1.16.2-1)' 'Booting from ROM..' 'lab: kernel 6.1' 'lab: modprobe raid1 failed' > "$d/guest_init_hang"
    : > "$d/empty"
    for c in pass:no warn_in_diagnostics:no oops_in_diagnostics:no oops_mid_scenario:yes \
             oops_mid_scenario_crlf:yes oops_but_exit_marker:no oops_after_scenario_end:no \
             warn_then_timeout:no panic_without_oops:no timeout_mid_scenario:no firmware_hang:yes \
             guest_init_hang:no empty:no; do
        want=${c#*:} c=${c%:*}
        if why=$(rerun_reason "$d/$c"); then got=yes; else got=no; fi
        if [ "$got" = "$want" ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
        printf 'lab self-test: rerun %-24s want %-3s got %-3s %s\n' "$c" "$want" "$got" "$why"
    done
    # the closing lines: the rerun line, then "N passed, N failed" last (run-all.sh reads tail -1)
    for c in "3 1|lab: no reruns|3 passed, 1 failed" "2 0 lab_a lab_b|lab: 2 rerun(s): lab_a lab_b|2 passed, 0 failed"; do
        # shellcheck disable=SC2086  # word-split arguments
        got=$(summary ${c%%|*} | tr '\n' '|'); want="${c#*|}|"
        if [ "$got" = "$want" ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
        printf 'lab self-test: summary %-24s want %s got %s\n' "${c%%|*}" "$want" "$got"
    done
    # a rerun shows the first run's console, passed or not
    mkdir "$d/logs"
    for c in 0 1; do
        cp "$d/pass" "$d/logs/lab_r.log"
        printf '%s\n' "$start" 'FIRST-RUN-OUTPUT' "$oops" > "$d/logs/lab_r.log.first"
        rerun_reason "$d/logs/lab_r.log.first" > "$d/logs/lab_r.log.retried"
        echo "$c" > "$d/logs/lab_r.log.rc"; echo 1000 > "$d/logs/lab_r.log.ms"
        got=$(OUT=$d report lab_r)
        if grep -q 'FIRST-RUN-OUTPUT' <<< "$got" && grep -q 'run twice: guest kernel fault' <<< "$got"; then
            ok=$((ok + 1)); want=shown
        else
            bad=$((bad + 1)); want="NOT shown"
        fi
        echo "lab self-test: report of a rerun that exited $c: first console $want"
    done
    rm -rf "$d"
    echo "lab self-test: $ok passed, $bad failed"
    [ "$bad" = 0 ]
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
        show_console "$log"
        cat "$log.host" 2>/dev/null
        echo "---- end of $name"
    fi
    # a rerun never hides the first run, whatever the second did
    if [ -f "$log.retried" ]; then
        echo "---- $name: FIRST run's console, which failed ($(cat "$log.retried"); full log $log.first)"
        show_console "$log.first"
        echo "---- end of $name's first run"
    fi
    return "$rc"
}

if [ "${1:-}" = --self-test ]; then self_test; exit; fi

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
# etcd_tls DIR -> a CA, a certificate for the members' addresses (serverAuth
# and clientAuth: etcd 3.4's JSON gateway dials its own TLS listener with it)
# and a client certificate, P-256 keys in PKCS#8; /lab/etcd-tls/ in the guest
etcd_tls() {
    local d=$1 sans="IP:169.254.11.2,IP:169.254.12.2,IP:169.254.13.2"
    [ -s "$d/client-key.pem" ] && return 0
    mkdir -p "$d" && (
        cd "$d" || exit 1
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        sign() {   # sign NAME CN EXTENSIONS
            key "$1-key.pem" &&
            openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr" &&
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                -days 3650 -extfile <(printf '%s\n' "$3") -out "$1.pem" 2>/dev/null
        }
        key ca-key.pem &&
        openssl req -x509 -new -key ca-key.pem -subj /CN=lab-etcd-ca -days 3650 -out ca.pem \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
        sign server lab-etcd "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans" &&
        sign client lab-host "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" &&
        rm -f ./*.csr ca.srl
    ) && [ -s "$d/client-key.pem" ]
}
# *_etcd* scenarios get /usr/bin/etcd (etcd-server, installed here on demand;
# the host never runs the etcd service it brings)
for s in "${scenarios[@]}"; do
    case "$s" in *_etcd*)
        if [ ! -x /usr/bin/etcd ]; then
            echo "lab: installing etcd-server on this host" >&2
            apt_etcd() { DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600 "$@" >&2; }
            apt_etcd install --no-remove etcd-server || { apt_etcd update && apt_etcd install --no-remove etcd-server; } \
                || { echo "lab: cannot install etcd-server"; echo "0 passed, 1 failed"; exit 1; }
        fi
        systemctl disable --now etcd >/dev/null 2>&1 || true
        etcd_tls "$OUT/etcd-tls" || { echo "lab: cannot make etcd's TLS files"; echo "0 passed, 1 failed"; exit 1; }
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
    case "$name" in *_etcd*) files+=(/usr/bin/etcd "$OUT/etcd-tls");; esac
    # shellcheck disable=SC2086  # LAB_FILES is a blank-separated list
    env "$@" LAB_TEST="$name" LOG="$log" TIMEOUT="$timeout" MEM="$mem" QEMU_EXTRA="$extra" \
        bash "$HERE/run.sh" "$HERE/guest-run.sh" "${files[@]}" ${LAB_FILES:-} \
        > /dev/null 2>>"$hostlog"
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
        # scenario: it runs once more (see rerun_reason), the report shows
        # the first console and the summary counts the rerun.
        if [ "$rc" != 0 ] && why=$(rerun_reason "$log"); then
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

# Longest first, and a slot is refilled the moment any VM ends (not the
# oldest): with two slots, a 6-minute scenario started last, or a free slot
# waiting behind it, cost the whole run minutes. SLOW lists, longest first,
# the scenarios measured over 100 s in CI; the rest keep their order.
SLOW=(lab_crash_etcd_converges lab_crash_at_every_attach_step_converges
      xen_block_attach_detach_twenty_cycles lab_crash_with_a_bitmap_converges
      lab_cluster_etcd_two_hosts_take_turns_on_a_disk lab_crash_at_every_detach_step_converges
      xen_dead_holder lab_multipath_mirror_one_path_cut_then_both_watch_heals)
ordered=()
for w in "${SLOW[@]}"; do
    for s in "${scenarios[@]}"; do case "$s" in *"$w"*) ordered+=("$s");; esac; done
done
for s in "${scenarios[@]}"; do
    case " ${ordered[*]} " in *" $s "*) ;; *) ordered+=("$s");; esac
done
scenarios=("${ordered[@]}")

pass=0 fail=0 jobs=${LAB_JOBS:-1}
declare -A running=()   # pid -> scenario
reruns=()
reap() {      # reap -> waits for any one running VM and reports it
    local pid name
    wait -n -p pid "${!running[@]}"
    name=${running[$pid]}
    unset "running[$pid]"
    if report "$name"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
    [ -f "$OUT/logs/$name.log.retried" ] && reruns+=("$name")
}
for s in "${scenarios[@]}"; do
    run_one "$s" &
    running[$!]=$s
    while [ ${#running[@]} -ge "$jobs" ]; do reap; done
done
while [ ${#running[@]} -gt 0 ]; do reap; done
echo "lab: $(( $(date +%s) - t0 ))s in all"
summary "$pass" "$fail" "${reruns[@]}"
[ "$fail" = 0 ]
