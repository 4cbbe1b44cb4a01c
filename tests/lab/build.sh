#!/bin/bash
# tests/lab/build.sh [CACHE] -- install the lab's packages and build the lab VM image.
#
# Output in CACHE (default $LAB_CACHE or /var/tmp/iscsimple/lab):
#   vmlinuz        Debian cloud kernel (iscsi_tcp, md raid1, dm, loop, LIO target, veth, netem)
#   base.cpio.gz   busybox-static root + real open-iscsi, tgt, mdadm, lvm2, udev,
#                  iproute2, e2fsprogs, bash, kernel modules; /init runs /lab/test.sh
#   qemu.env       QEMU=... QEMU_ARGS=(...) for run.sh
#   stamp          hash of the inputs: a rerun with unchanged inputs does nothing
#
# Needs root on Debian 12. Installs missing packages (apt-get update first).
# Env: KVER (a *-cloud-amd64 kernel version; default newest installed), FORCE=1.
set -euo pipefail

CACHE=${1:-${LAB_CACHE:-/var/tmp/iscsimple/lab}}
SELF=$(readlink -f "$0")
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

log() { echo "lab-build: $*" >&2; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }
APT="apt-get -y -q -o DPkg::Lock::Timeout=600"
export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() { [ $updated = 1 ] || { $APT update >&2; updated=1; }; }

[ "$(id -u)" = 0 ] || { log "must run as root (installs packages, builds an initramfs)"; exit 2; }

# ------------------------------------------------------------------ packages
PKGS="linux-image-cloud-amd64 busybox-static open-iscsi mdadm lvm2 tgt udev cpio kmod
      iproute2 e2fsprogs util-linux diffutils coreutils multipath-tools"
missing=
for p in $PKGS; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    log "installing:$missing"
    apt_update
    # shellcheck disable=SC2086
    $APT install --no-remove $missing >&2
fi
# The host must not act on the packages it installed for the image: no iscsid
# or tgtd on the host (its kernel has no iSCSI anyway).
for s in iscsid.socket iscsid open-iscsi tgt multipathd.socket multipathd; do
    systemctl disable --now "$s" >/dev/null 2>&1 || true
done

# qemu: the Debian package or, when it cannot be installed (a newer qemu-utils
# from backports Breaks qemu-system-common 7.2), the same packages unpacked
# with dpkg -x into CACHE/qemu with their libraries installed.
QEMU_ENV="$CACHE/qemu.env"
if command -v qemu-system-x86_64 >/dev/null; then
    printf 'QEMU=%q\nQEMU_ARGS=()\n' "$(command -v qemu-system-x86_64)" > "$QEMU_ENV"
elif [ -x "$CACHE/qemu/usr/bin/qemu-system-x86_64" ] && [ -s "$QEMU_ENV" ]; then
    :
else
    apt_update
    if $APT install --no-remove qemu-system-x86 >&2; then
        printf 'QEMU=%q\nQEMU_ARGS=()\n' "$(command -v qemu-system-x86_64)" > "$QEMU_ENV"
    else
        log "qemu-system-x86 not installable; unpacking it into $CACHE/qemu"
        QPKGS="qemu-system-x86 qemu-system-common qemu-system-data"
        # shellcheck disable=SC2086
        deps=$(apt-cache depends $QPKGS | awk '/ Depends:/ {print $2}' | grep -v '^<' \
               | grep -Ev '^(qemu-|ipxe-qemu$)' | sort -u)
        # shellcheck disable=SC2086
        $APT install --no-remove $deps ipxe-qemu seabios >&2
        rm -rf "$CACHE/debs" "$CACHE/qemu"; mkdir -p "$CACHE/debs" "$CACHE/qemu"
        # shellcheck disable=SC2086
        (cd "$CACHE/debs" && apt-get download $QPKGS >&2)
        for d in "$CACHE"/debs/*.deb; do dpkg -x "$d" "$CACHE/qemu"; done
        if ldd "$CACHE/qemu/usr/bin/qemu-system-x86_64" | grep 'not found'; then
            log "qemu libraries missing"; exit 1
        fi
        printf 'QEMU=%q\nQEMU_ARGS=(-L %q -L /usr/share/seabios -L /usr/lib/ipxe/qemu)\n' \
            "$CACHE/qemu/usr/bin/qemu-system-x86_64" "$CACHE/qemu/usr/share/qemu" > "$QEMU_ENV"
    fi
fi

# ------------------------------------------------------------------ stamp
KVER=${KVER:-$(ls /lib/modules | grep -- '-cloud-amd64$' | sort -V | tail -1)}
[ -n "$KVER" ] && [ -e "/boot/vmlinuz-$KVER" ] || { log "no cloud kernel found"; exit 1; }
# shellcheck disable=SC2086
stamp=$( { echo "$KVER"; cat "$SELF" "$(dirname "$SELF")/guest-init.sh" | sha256sum; dpkg-query -W $PKGS libc6 2>/dev/null; } | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -s "$CACHE/base.cpio.gz" ] && [ -s "$CACHE/vmlinuz" ] \
   && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
    log "image up to date ($CACHE, kernel $KVER)"; exit 0
fi
log "building the image for $KVER in $CACHE"
cp "/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"

# ------------------------------------------------------------------ root tree
ROOT="$CACHE/root"
rm -rf "$ROOT"; mkdir -p "$ROOT"
mkdir -p "$ROOT"/usr/{bin,sbin,lib,lib64} "$ROOT"/{dev,proc,sys,run,tmp,etc,mnt,root,lab}
ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
mkdir -p "$ROOT/var"/{lib,log,tmp}; ln -s ../run "$ROOT/var/run"; ln -s ../run/lock "$ROOT/var/lock"
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"

copy_file() {   # a host file (symlinks followed) at the same path; symlink names kept
    local src=$1 real
    real=$(readlink -f "$src")
    mkdir -p "$ROOT$(dirname "$real")"
    [ -e "$ROOT$real" ] || cp -p "$real" "$ROOT$real"
    if [ "$src" != "$real" ] && [ ! -e "$ROOT$src" ] && [ ! -L "$ROOT$src" ]; then
        mkdir -p "$ROOT$(dirname "$src")"; ln -s "$real" "$ROOT$src"
    fi
}
copy_bin() {    # binaries and the shared libraries ldd reports
    local b lib
    for b in "$@"; do
        copy_file "$b"
        for lib in $(ldd "$b" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'); do
            copy_file "$lib"
        done
    done
}

copy_file /bin/busybox
copy_bin /usr/bin/bash \
    /usr/sbin/iscsiadm /usr/sbin/iscsid /usr/sbin/iscsi-iname \
    /usr/sbin/mdadm /usr/sbin/lvm /usr/sbin/dmsetup /usr/sbin/losetup /usr/sbin/blockdev \
    /usr/sbin/tgtd /usr/sbin/tgtadm \
    /lib/systemd/systemd-udevd /usr/bin/udevadm /usr/bin/kmod \
    /usr/bin/ip /usr/sbin/tc /usr/sbin/mke2fs /usr/bin/flock \
    /usr/bin/cmp /usr/bin/dd /usr/bin/sha256sum /usr/bin/stat \
    /usr/sbin/multipath /usr/sbin/multipathd /usr/sbin/kpartx
# multipathd's path checkers and prioritizers, which it dlopens
for f in /lib/multipath/*.so; do copy_bin "$f"; done
mkdir -p "$ROOT/etc/multipath"
ln -sf mke2fs "$ROOT/usr/sbin/mkfs.ext4"
for f in /usr/sbin/*; do   # lvm command names: symlinks to lvm
    [ -L "$f" ] && [ "$(readlink -f "$f")" = /usr/sbin/lvm ] && ln -sf lvm "$ROOT/usr/sbin/$(basename "$f")"
done
for f in modprobe insmod rmmod lsmod modinfo depmod; do ln -sf ../bin/kmod "$ROOT/usr/sbin/$f"; done
# udev rules and helpers (no hwdb: large, not needed); by-path/by-id names come from these
mkdir -p "$ROOT/usr/lib/udev/rules.d" "$ROOT/etc/udev/rules.d"
cp -p /lib/udev/rules.d/*.rules "$ROOT/usr/lib/udev/rules.d/"
# multipath-tools' and sg3-utils' rules act only on a host that runs
# multipathd: kept aside, a multipath scenario installs them (see
# fixture/multipath.rs), the others run as a host without multipath does.
mkdir -p "$ROOT/usr/lib/udev/rules.multipath"
for r in "$ROOT"/usr/lib/udev/rules.d/*multipath*.rules "$ROOT"/usr/lib/udev/rules.d/*dm-mpath*.rules \
         "$ROOT"/usr/lib/udev/rules.d/*kpartx*.rules "$ROOT"/usr/lib/udev/rules.d/*sg3*.rules; do
    [ -e "$r" ] && mv "$r" "$ROOT/usr/lib/udev/rules.multipath/"
done
for h in ata_id scsi_id cdrom_id; do [ -e /lib/udev/$h ] && copy_bin /lib/udev/$h; done
for l in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libgcc_s.so.1; do
    [ -e "$l" ] && copy_file "$l"
done
# busybox applets only where no real tool exists: busybox ash prefers its own
# applets, so scripts use bash and programs exec real tools by path
for a in $(/bin/busybox --list-full); do
    n=$(basename "$a")
    [ -e "$ROOT/usr/bin/$n" ] || [ -L "$ROOT/usr/bin/$n" ] || \
    [ -e "$ROOT/usr/sbin/$n" ] || [ -L "$ROOT/usr/sbin/$n" ] || ln -s /bin/busybox "$ROOT/usr/bin/$n"
done
ln -sf busybox "$ROOT/usr/bin/sh"

# ------------------------------------------------------------------ config
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
disk:x:6:
tty:x:5:
kmem:x:15:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\n' > "$ROOT/etc/nsswitch.conf"
echo lab > "$ROOT/etc/hostname"
echo '127.0.0.1 localhost lab' > "$ROOT/etc/hosts"
mkdir -p "$ROOT/etc/iscsi" "$ROOT/var/lib/iscsi" "$ROOT/etc/mdadm" "$ROOT/etc/lvm" "$ROOT/etc/tgt"
echo "InitiatorName=iqn.1993-08.org.debian:01:labvm0001" > "$ROOT/etc/iscsi/initiatorname.iscsi"
# Debian's iscsid.conf as shipped: the tool must set what it needs per node
cp /etc/iscsi/iscsid.conf "$ROOT/etc/iscsi/iscsid.conf"
echo 'MAILADDR root' > "$ROOT/etc/mdadm/mdadm.conf"
cat > "$ROOT/etc/lvm/lvm.conf" <<'EOF'
# lab VM: works with or without udev running
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
EOF
mkdir -p "$ROOT/etc/modprobe.d"; cp /etc/modprobe.d/*.conf "$ROOT/etc/modprobe.d/" 2>/dev/null || true

# ------------------------------------------------------------------ modules
MODS="scsi_common scsi_mod sd_mod scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp
      crc32c_generic md-mod raid1 dm-mod dm-multipath dm-round-robin dm-service-time
      dm-queue-length sg loop brd virtio_pci virtio_blk virtio_net
      virtio_console fuse virtiofs veth sch_netem configfs target_core_mod
      target_core_file target_core_iblock iscsi_target_mod"
for m in $MODS; do
    { modprobe -S "$KVER" --show-depends "$m" 2>/dev/null || true; } | { grep '^insmod ' || true; } \
    | while read -r _ path _; do copy_file "$path"; done
done
cp /lib/modules/"$KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$ROOT" "$KVER"

# ------------------------------------------------------------------ /init
cp "$(dirname "$SELF")/guest-init.sh" "$ROOT/init"
chmod +x "$ROOT/init"

# ------------------------------------------------------------------ pack
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    | gzip -1 > "$CACHE/base.cpio.gz.tmp"
mv "$CACHE/base.cpio.gz.tmp" "$CACHE/base.cpio.gz"
echo "$stamp" > "$CACHE/stamp"
log "done: $(du -h "$CACHE/base.cpio.gz" | cut -f1) initramfs, kernel $KVER"
