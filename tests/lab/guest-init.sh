#!/bin/sh
# /init of the lab VM (busybox sh, PID 1): mount, load modules, run
# /lab/test.sh (added per run by run.sh), print the exit marker, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
# bash process substitution needs /dev/fd, which devtmpfs does not create
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/lock /run/lvm /run/tgtd
mount -t configfs configfs /sys/kernel/config 2>/dev/null
hostname lab
syslogd -O /run/messages   # iscsid, tgtd and the tool log here
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
# sd_mod: nothing loads it without udev, and without it no LUN becomes a disk
for m in sd_mod iscsi_tcp md-mod raid1 dm-mod loop; do
    /usr/sbin/modprobe $m || echo "lab: modprobe $m failed"
done
echo "lab: kernel $(uname -r), $(nproc) cpu(s), uptime $(cut -d' ' -f1 /proc/uptime)s"
rc=127
# LAB_* variables from the host (run.sh writes them to /lab/env)
[ -f /lab/env ] && { set -a; . /lab/env; set +a; }
if [ -f /lab/test.sh ]; then
    chmod +x /lab/test.sh
    cd /lab && /lab/test.sh; rc=$?
else
    echo "lab: no /lab/test.sh"
fi
cd /
sync
echo "@@LAB-EXIT=$rc@@"
sleep 0.2
poweroff -f
echo o > /proc/sysrq-trigger
