#!/bin/busybox sh
# /init of the Xen lab's PV guest (busybox sh, PID 1; kernel = the dom0
# kernel, initramfs built by build-xen.sh). Loads xen-blkfront, then reports
# on hvc0 (dom0: /var/log/xen/console/guest-NAME.log, via xenconsoled) every
# xvd* disk that appears or disappears, with its size and a checksum of its
# first MiBs, until the domain is destroyed. Optionally writes to disks.
#
# Kernel command line (xl config `extra = "..."`):
#   lab.sum_mib=N         MiB checksummed when a disk appears; 0 (the default):
#                         the whole disk, reported as its size in MiB
#   lab.resum=S           also re-report the checksums every S seconds
#   lab.writer=VDEV[,..]  write continuously to VDEV while it is present
#   lab.writer_mib=N      size of the written area: MiB [0, N) (default 8)
#   lab.writer_pause=S    pause between writes (default 0)
#
# Report lines:
#   GUEST UP uptime=SECONDS sum_mib=N writer=VDEVS writer_mib=N
#   GUEST-DISK VDEV add sectors=N ro=0|1 sha256_<N>MiB=HEX
#   GUEST-DISK VDEV sum sectors=N sha256_<N>MiB=HEX          (lab.resum)
#   GUEST-DISK VDEV remove
#   GUEST-WRITE VDEV n=SEQ b=BLOCK              write SEQ acknowledged (O_DIRECT + fsync)
#   GUEST-WRITE-ERROR VDEV n=SEQ b=BLOCK        write failed; retried with the same SEQ
# Writer data: write SEQ (1, 2, ...; continued after a detach/reattach)
# fills MiB BLOCK = SEQ % writer_mib with 2048 identical 512-byte sectors,
# each "LABW VDEV n=SEQ b=BLOCK" padded with blanks to 511 bytes + "\n".
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp

opt() {   # opt NAME DEFAULT: value of lab.NAME= on the kernel command line
    v=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^lab\.$1=//p" | tail -n 1)
    echo "${v:-$2}"
}
SUM_MIB=$(opt sum_mib 0)
RESUM=$(opt resum 0)
WRITERS=" $(opt writer '' | tr ',' ' ') "
WRITER_MIB=$(opt writer_mib 8)
WRITER_PAUSE=$(opt writer_pause 0)
up() { cut -d' ' -f1 /proc/uptime; }
echo "GUEST UP uptime=$(up) sum_mib=$SUM_MIB writer=$(echo $WRITERS | tr ' ' ',') writer_mib=$WRITER_MIB"
modprobe xen-blkfront 2>/dev/null || insmod /lib/modules/*/kernel/drivers/block/xen-blkfront.ko

mib() {   # MiB checksummed on /dev/$1: SUM_MIB, or the whole disk (lab disks are whole MiBs)
    if [ "$SUM_MIB" = 0 ]; then echo $(( $(cat "/sys/block/$1/size") / 2048 )); else echo "$SUM_MIB"; fi
}

sum() {   # sha256 of the first $2 MiB of /dev/$1 (less if the disk is smaller)
    dd if="/dev/$1" bs=1M count="$2" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}

writer() {   # writer VDEV: the loop described above, in the background
    d=$1
    n=$(cat "/tmp/writer-n.$d" 2>/dev/null || echo 0)
    while :; do
        n=$((n + 1)); b=$((n % WRITER_MIB))
        line=$(printf '%-511s' "LABW $d n=$n b=$b")
        while ! yes "$line" | head -c 1048576 \
              | dd of="/dev/$d" bs=1M seek="$b" count=1 iflag=fullblock oflag=direct conv=fsync 2>/dev/null; do
            [ -b "/dev/$d" ] || exit 0
            echo "GUEST-WRITE-ERROR $d n=$n b=$b"
            sleep 0.5
        done
        echo "$n" > "/tmp/writer-n.$d"
        echo "GUEST-WRITE $d n=$n b=$b"
        [ "$WRITER_PAUSE" = 0 ] || sleep "$WRITER_PAUSE"
    done
}

seen=" "
last_sum=$(cut -d. -f1 /proc/uptime)
while :; do
    now=" "
    for p in /sys/block/xvd*; do
        [ -e "$p" ] || continue
        n=${p##*/}
        now="$now$n "
        case "$seen" in *" $n "*) continue ;; esac
        i=0; while [ ! -b "/dev/$n" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        m=$(mib "$n")
        echo "GUEST-DISK $n add sectors=$(cat "$p/size") ro=$(cat "$p/ro") sha256_${m}MiB=$(sum "$n" "$m")"
        case "$WRITERS" in
        *" $n "*) writer "$n" & echo $! > "/tmp/writer-pid.$n" ;;
        esac
    done
    for n in $seen; do
        case "$now" in *" $n "*) continue ;; esac
        if [ -f "/tmp/writer-pid.$n" ]; then
            kill "$(cat "/tmp/writer-pid.$n")" 2>/dev/null
            rm -f "/tmp/writer-pid.$n"
        fi
        echo "GUEST-DISK $n remove"
    done
    seen=$now
    if [ "$RESUM" != 0 ] && [ $(( $(cut -d. -f1 /proc/uptime) - last_sum )) -ge "$RESUM" ]; then
        last_sum=$(cut -d. -f1 /proc/uptime)
        for n in $now; do
            m=$(mib "$n")
            echo "GUEST-DISK $n sum sectors=$(cat "/sys/block/$n/size") sha256_${m}MiB=$(sum "$n" "$m")"
        done
    fi
    sleep 0.2
done
