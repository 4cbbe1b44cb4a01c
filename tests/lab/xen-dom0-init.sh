#!/bin/bash
# /init of the Xen lab's dom0 (bash, PID 1): what guest-init.sh does for the
# plain lab (mounts, syslog, modules, run /lab/test.sh, exit marker, power
# off) plus the Xen toolstack a dom0 runs: xenfs, xenstored, xen-init-dom0,
# xenconsoled (guest consoles logged to /var/log/xen/console/guest-NAME.log).
# poweroff -f in dom0 makes Xen enter ACPI S5 and qemu exit.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
# bash process substitution needs /dev/fd, which devtmpfs does not create
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/lock /run/lvm /run/tgtd
# /var/run -> /run: without /run/xenstored, xenstored has no socket and the
# kernel's xenbus probe hangs
mkdir -p /run/xen /run/xenstored /run/xen-hotplug /var/lib/xen /var/log/xen/console
mount -t configfs configfs /sys/kernel/config 2>/dev/null
hostname lab
syslogd -O /run/messages   # iscsid, tgtd, the tool and xen scripts (logger) log here
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN{printf "%.2f", b-a}'; }
t_init=$(up)
for m in sd_mod iscsi_tcp md-mod raid1 dm-mod loop \
         xen-evtchn xen-privcmd xen-gntdev xen-gntalloc xenfs xen-blkback; do
    /usr/sbin/modprobe $m || echo "lab: modprobe $m failed"
done

t_mods=$(since "$t_init")
t_xen=$(up)

rc=127
toolstack() {
    mount -t xenfs xenfs /proc/xen || { echo "lab: mount xenfs failed"; return 1; }
    grep -q control_d /proc/xen/capabilities || { echo "lab: not a Xen dom0 (/proc/xen/capabilities)"; return 1; }
    /usr/lib/xen-4.17/bin/xenstored --pid-file /run/xenstored.pid || { echo "lab: xenstored failed"; return 1; }
    local i
    for i in $(seq 100); do [ -S /run/xenstored/socket ] && break; sleep 0.05; done
    [ -S /run/xenstored/socket ] || { echo "lab: no /run/xenstored/socket"; return 1; }
    /usr/lib/xen-4.17/bin/xen-init-dom0 || { echo "lab: xen-init-dom0 failed"; return 1; }
    /usr/lib/xen-4.17/bin/xenconsoled --pid-file=/run/xenconsoled.pid \
        --log=guest --log-dir=/var/log/xen/console || { echo "lab: xenconsoled failed"; return 1; }
}
if toolstack; then
    echo "lab: Xen $(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)$(cat /sys/hypervisor/version/extra) dom0, kernel $(uname -r), $(nproc) cpu(s), uptime $(up)s (/init at ${t_init}s, modules ${t_mods}s, toolstack $(since "$t_xen")s)"
    # LAB_* variables from the host (run.sh writes them to /lab/env)
    [ -f /lab/env ] && { set -a; . /lab/env; set +a; }
    if [ -f /lab/test.sh ]; then
        chmod +x /lab/test.sh
        cd /lab && /lab/test.sh; rc=$?
    else
        echo "lab: no /lab/test.sh"
    fi
    cd /
    if [ $rc != 0 ]; then
        echo "==== Xen diagnostics"
        echo "---- xl list"; xl list 2>&1
        echo "---- xenstore backend/vbd"; xenstore-ls -f /local/domain/0/backend/vbd 2>&1 | tail -n 60
        echo "---- /var/log/xen/xen-hotplug.log (tail)"; tail -n 40 /var/log/xen/xen-hotplug.log 2>/dev/null
        for f in /var/log/xen/xl-*.log /var/log/xen/console/guest-*.log; do
            [ -f "$f" ] && { echo "---- $f (tail)"; tail -n 40 "$f"; }
        done
    fi
else
    rc=126
    dmesg | tail -n 40
fi
# Userspace crashes in dom0 (seen rarely under TCG with a busy host: busybox
# grep/sed segfaults inside hotplug scripts) fail the run even when the
# scenario passed: a crashed helper can make a wrong result look right.
crashes=$(dmesg | grep -iE 'segfault|traps:|general protection')
if [ -n "$crashes" ]; then
    echo "==== userspace crash in dom0 (scenario exit was $rc)"
    echo "$crashes"
    rc=99
fi
sync
echo "@@LAB-EXIT=$rc@@"
sleep 0.2
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
