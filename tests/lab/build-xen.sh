#!/bin/bash
# tests/lab/build-xen.sh [CACHE] -- build the Xen flavour of the lab image:
# a real Xen 4.17 hypervisor with a Debian dom0 (xl/libxl, xenstored,
# xenconsoled, blkback) booted under qemu TCG by run.sh (LAB_FLAVOR=xen).
#
# Output in CACHE (default $LAB_CACHE/xen, LAB_CACHE=/var/tmp/iscsimple/lab):
#   xen.elf        the hypervisor as a multiboot ELF (qemu -kernel)
#   vmlinuz-dom0   Debian generic kernel (CONFIG_XEN_DOM0=y; the cloud kernel
#                  of the plain lab cannot be a dom0: it hangs silently)
#   dom0.cpio.gz   dom0 initramfs = the plain lab image (base.cpio.gz of
#                  tests/lab/build.sh, unpacked: the same real tools and
#                  config) + the Xen toolstack + the dom0 kernel's modules;
#                  /init = xen-dom0-init.sh, /bin/sh = bash; also
#                  /lab-xen/vmlinuz and /lab-xen/guest.cpio.gz for PV guests
#   guest.cpio.gz  PV guest initramfs: busybox-static + xen-blkfront,
#                  /init = xen-guest-init.sh
#   stamp          hash of the inputs: a rerun with unchanged inputs does nothing
#
# Runs tests/lab/build.sh first (packages, qemu.env and base.cpio.gz in
# $LAB_CACHE). Needs root on Debian 12. Installs missing packages.
# Env: DOM0_KVER (dom0 kernel version; default newest with CONFIG_XEN_DOM0=y),
#      FORCE=1 (rebuild), LAB_CACHE.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SELF=$HERE/build-xen.sh
MAIN=${LAB_CACHE:-/var/tmp/iscsimple/lab}
CACHE=${1:-$MAIN/xen}
XENVER=4.17
XENLIB=/usr/lib/xen-$XENVER

log() { echo "lab-build-xen: $*" >&2; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }
APT="apt-get -y -q -o DPkg::Lock::Timeout=600"
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { log "must run as root (installs packages, builds an initramfs)"; exit 2; }

# ------------------------------------------------------------------ plain image
# Its packages, qemu.env (used by run.sh for both flavours) and base.cpio.gz,
# which is the starting point of the dom0 root.
bash "$HERE/build.sh" "$MAIN"
MAIN=$(cd "$MAIN" && pwd)
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
case "$CACHE" in *[[:space:]]*) log "CACHE must not contain blanks (qemu -initrd module list)"; exit 2;; esac

# ------------------------------------------------------------------ packages
# The hypervisor and kernel packages only supply files: the host keeps
# running its own kernel. No recommends: they pull grub, ovmf, qemu-system-xen.
XPKGS="xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xenstore-utils linux-image-amd64"
UPKGS="open-iscsi mdadm lvm2 tgt udev iproute2 e2fsprogs busybox-static cpio kmod"
missing=
for p in $XPKGS $UPKGS; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    log "installing:$missing"
    $APT update >&2
    # shellcheck disable=SC2086
    $APT install --no-remove --no-install-recommends $missing >&2
fi
# Nothing Xen runs on the host (its units need /proc/xen anyway).
for s in xen xendomains xenstored xenconsoled xen-init-dom0 xen-qemu-dom0-disk-backend; do
    systemctl disable --now "$s" >/dev/null 2>&1 || true
done

# ------------------------------------------------------------------ kernel, stamp
if [ -z "${DOM0_KVER:-}" ]; then
    for k in $(ls /lib/modules | sort -rV); do
        grep -q '^CONFIG_XEN_DOM0=y' "/boot/config-$k" 2>/dev/null && [ -e "/boot/vmlinuz-$k" ] \
            && { DOM0_KVER=$k; break; }
    done
fi
[ -n "${DOM0_KVER:-}" ] || { log "no kernel with CONFIG_XEN_DOM0=y (linux-image-amd64)"; exit 1; }
for f in "/boot/xen-$XENVER-amd64.gz" "/boot/vmlinuz-$DOM0_KVER" "$XENLIB/bin/xl" /bin/busybox; do
    [ -e "$f" ] || { log "missing $f"; exit 1; }
done
# shellcheck disable=SC2086
stamp=$( { echo "$DOM0_KVER"; cat "$MAIN/stamp"; cat "$SELF" "$HERE/xen-dom0-init.sh" "$HERE/xen-guest-init.sh" | sha256sum;
           dpkg-query -W $XPKGS $UPKGS libc6 2>/dev/null; } | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ] \
   && [ -s "$CACHE/xen.elf" ] && [ -s "$CACHE/vmlinuz-dom0" ] && [ -s "$CACHE/dom0.cpio.gz" ] \
   && [ -s "$CACHE/guest.cpio.gz" ]; then
    log "image up to date ($CACHE, Xen $XENVER, dom0 kernel $DOM0_KVER)"; exit 0
fi
log "building the Xen image (Xen $XENVER, dom0 kernel $DOM0_KVER) in $CACHE"
rm -f "$CACHE/stamp"
zcat "/boot/xen-$XENVER-amd64.gz" > "$CACHE/xen.elf.tmp" && mv "$CACHE/xen.elf.tmp" "$CACHE/xen.elf"
cp "/boot/vmlinuz-$DOM0_KVER" "$CACHE/vmlinuz-dom0"

# ------------------------------------------------------------------ helpers
ROOT=
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
copy_mods() {   # modules of DOM0_KVER with their dependencies, then depmod
    local m path
    for m in "$@"; do
        modprobe -S "$DOM0_KVER" --show-depends "$m" >/dev/null 2>&1 || { log "no module $m in $DOM0_KVER"; exit 1; }
        while read -r _ path _; do copy_file "$path"; done \
            < <(modprobe -S "$DOM0_KVER" --show-depends "$m" 2>/dev/null | grep '^insmod ')
    done
    cp /lib/modules/"$DOM0_KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$DOM0_KVER/" 2>/dev/null || true
    depmod -b "$ROOT" "$DOM0_KVER"
}
skeleton() {    # merged-/usr root like the plain image's
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    mkdir -p "$ROOT"/usr/{bin,sbin,lib,lib64} "$ROOT"/{dev,proc,sys,run,tmp,etc,mnt,root}
    ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"
    ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
    mkdir -p "$ROOT/var"/{lib,log,tmp}; ln -s ../run "$ROOT/var/run"; ln -s ../run/lock "$ROOT/var/lock"
    chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
}
pack() {        # pack ROOT into $1 (atomically)
    (cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        | gzip -1 > "$1.tmp"
    mv "$1.tmp" "$1"
}

# ------------------------------------------------------------------ guest
ROOT="$CACHE/guest-root"
skeleton
copy_file /bin/busybox
for a in $(/bin/busybox --list-full); do
    [ -e "$ROOT/$a" ] || [ -L "$ROOT/$a" ] || ln -s /usr/bin/busybox "$ROOT/$a"
done
copy_mods xen-blkfront
mknod -m 600 "$ROOT/dev/console" c 5 1
install -m 755 "$HERE/xen-guest-init.sh" "$ROOT/init"
pack "$CACHE/guest.cpio.gz"

# ------------------------------------------------------------------ dom0
ROOT="$CACHE/dom0-root"
rm -rf "$ROOT"; mkdir -p "$ROOT"
(cd "$ROOT" && zcat "$MAIN/base.cpio.gz" | cpio -idm --quiet --no-absolute-filenames)
rm -rf "$ROOT"/usr/lib/modules/*     # the cloud kernel's
[ -e "$ROOT/dev/console" ] || mknod -m 600 "$ROOT/dev/console" c 5 1
# Debian's busybox sh runs its own applets before PATH (busybox losetup,
# stat, ... in hotplug scripts): in dom0 /bin/sh is bash, so real tools win.
ln -sf bash "$ROOT/usr/bin/sh"

# Xen toolstack: binaries from /usr/lib/xen-4.17/bin with the Debian wrapper
# in front of them (/usr/sbin/xl -> xen-utils-wrapper, picks the version from
# /sys/hypervisor), xenstore client with its hard links, /etc/xen as shipped.
copy_bin "$XENLIB"/bin/{xl,xenstored,xenconsoled,xenconsole,xen-init-dom0,libxl-save-helper,xenstore-control,xentop}
for f in /usr/lib/xen-common/bin/*; do copy_file "$f"; done
for f in /usr/bin/* /usr/sbin/*; do
    [ -L "$f" ] && [ "$(readlink -f "$f")" = /usr/lib/xen-common/bin/xen-utils-wrapper ] || continue
    [ -e "$ROOT$XENLIB/bin/$(basename "$f")" ] || continue
    rm -f "$ROOT$f"; ln -s ../lib/xen-common/bin/xen-utils-wrapper "$ROOT$f"
done
copy_bin /usr/bin/xenstore
for f in /usr/bin/xenstore-*; do
    [ "$f" -ef /usr/bin/xenstore ] && { rm -f "$ROOT$f"; ln "$ROOT/usr/bin/xenstore" "$ROOT$f"; }
done
mkdir -p "$ROOT/etc/xen"; cp -a /etc/xen/. "$ROOT/etc/xen/"
mkdir -p "$ROOT"/var/lib/xen "$ROOT"/var/log/xen/console

# modules: the plain image's list plus Xen's (dom0 backends and devices)
copy_mods xen-evtchn xen-privcmd xen-gntdev xen-gntalloc xenfs xen-blkback \
    scsi_common scsi_mod sd_mod scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp \
    crc32c_generic md-mod raid1 dm-mod loop brd veth sch_netem fuse \
    configfs target_core_mod target_core_file target_core_iblock iscsi_target_mod

# PV guest kernel (the dom0 kernel: it has xen-blkfront as a module) and initramfs
mkdir -p "$ROOT/lab-xen"
cp "$CACHE/vmlinuz-dom0" "$ROOT/lab-xen/vmlinuz"
cp "$CACHE/guest.cpio.gz" "$ROOT/lab-xen/guest.cpio.gz"
install -m 755 "$HERE/xen-dom0-init.sh" "$ROOT/init"
pack "$CACHE/dom0.cpio.gz"
echo "$stamp" > "$CACHE/stamp"
log "done: dom0 $(du -h "$CACHE/dom0.cpio.gz" | cut -f1), guest $(du -h "$CACHE/guest.cpio.gz" | cut -f1), kernel $DOM0_KVER"
