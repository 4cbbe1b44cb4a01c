#!/bin/bash
# tests/lab/build-libvirt.sh [CACHE] -- build the Debian 12 root image that
# the lab_libvirt_* scenarios run the real libvirtd (9.0, qemu driver, TCG)
# from, inside the ordinary lab VM.
#
# Output in CACHE/libvirt (CACHE default $LAB_CACHE or /var/tmp/iscsimple/lab):
#   rootfs.ext4   ext4 image (sparse) of a debootstrap --variant=minbase
#                 bookworm tree + libvirt-daemon, libvirt-daemon-driver-qemu,
#                 libvirt-clients, qemu-system-x86 and the storage tools a host
#                 has (open-iscsi, mdadm, lvm2, udev, tgt). lab.sh attaches it
#                 read-only in effect: -drive ...,if=virtio,snapshot=on
#   stamp         hash of the inputs: a rerun with unchanged inputs does nothing
#   *.log         debootstrap and apt output of the last build
#
# The image holds no iscsimple file: each scenario installs the binary under
# test, its config and the libvirt hook (tests/lab/fixture/libvirt.rs).
#
# Needs root on Debian 12 and the Debian mirror the host's apt uses.
# Installs debootstrap and e2fsprogs on the host when missing (apt-get update first).
# Env: LAB_CACHE, MIRROR (default: the host's first Debian URI), FORCE=1 (rebuild).
set -euo pipefail

CACHE=${1:-${LAB_CACHE:-/var/tmp/iscsimple/lab}}
SELF=$(readlink -f "$0")
mkdir -p "$CACHE/libvirt"
OUT=$(cd "$CACHE/libvirt" && pwd)
ROOT="$OUT/rootfs"
IMG="$OUT/rootfs.ext4"
# libvirt without libvirt-daemon-system (systemd units, polkit), QEMU, and
# what a host's hook needs: open-iscsi, mdadm, udev (by-path links), lvm2, tgt
PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 open-iscsi mdadm lvm2 udev tgt"
APT="apt-get -y -q -o DPkg::Lock::Timeout=600"
export DEBIAN_FRONTEND=noninteractive
log() { echo "lab-build-libvirt: $*" >&2; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, chroot)"; exit 2; }

# One build at a time (lab.sh may be started twice).
exec 9>"$OUT/.lock"
flock 9

if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security \
             | head -1 | tr -d ' ' || true)
    [ -n "$MIRROR" ] || { log "no Debian mirror in the host's apt sources; set MIRROR"; exit 1; }
fi
SECMIRROR=${SECMIRROR:-${MIRROR%/debian*}/debian-security}

stamp=$( { sha256sum < "$SELF"; echo "$PKGS $MIRROR $SECMIRROR"; } | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -s "$IMG" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    log "image up to date ($IMG)"; exit 0
fi
t0=$(date +%s)

missing=
for p in debootstrap e2fsprogs util-linux; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    log "installing:$missing"
    $APT update >&2
    # shellcheck disable=SC2086
    $APT install --no-remove $missing >&2
fi

# ------------------------------------------------------------------ rootfs
umount_all() {
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$ROOT/$m" 2>/dev/null; then umount -l "$ROOT/$m"; fi
    done
    true
}
trap umount_all EXIT
umount_all
rm -rf "$ROOT" "$IMG" "$OUT/stamp"
log "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 \
    || { tail -20 "$OUT/debootstrap.log" >&2; exit 1; }
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECMIRROR bookworm-security main
EOF
# No service may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOT/proc"
log "apt-get install $PKGS"
chroot "$ROOT" /usr/bin/env -i DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c "apt-get -q update && apt-get -y -q install --no-install-recommends $PKGS && apt-get clean" \
    > "$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log" >&2; exit 1; }
umount "$ROOT/proc"

# ------------------------------------------------------------------ config
# Debian builds libvirt with qemu user and group libvirt-qemu, which
# libvirt-daemon-system creates (not installed: systemd units, polkit, ...).
# Without them the qemu driver does not initialise.
grep -q '^libvirt-qemu:' "$ROOT/etc/group" || echo 'libvirt-qemu:x:64055:' >> "$ROOT/etc/group"
grep -q '^libvirt:' "$ROOT/etc/group"      || echo 'libvirt:x:64056:' >> "$ROOT/etc/group"
kvmgid=$(awk -F: '$1=="kvm"{print $3}' "$ROOT/etc/group")
[ -n "$kvmgid" ] || { kvmgid=64057; echo "kvm:x:$kvmgid:" >> "$ROOT/etc/group"; }
grep -q '^libvirt-qemu:' "$ROOT/etc/passwd" || \
    echo "libvirt-qemu:x:64055:$kvmgid:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin" >> "$ROOT/etc/passwd"
grep -q '^libvirt-qemu:' "$ROOT/etc/shadow" || echo 'libvirt-qemu:!:19000::::::' >> "$ROOT/etc/shadow"
sed -i "s/^kvm:x:$kvmgid:.*/kvm:x:$kvmgid:libvirt-qemu/" "$ROOT/etc/group"
mkdir -p "$ROOT"/var/lib/libvirt/{qemu,images} "$ROOT"/var/cache/libvirt/qemu "$ROOT"/var/log/libvirt/qemu \
         "$ROOT"/etc/libvirt/qemu "$ROOT/etc/libvirt/hooks/qemu.d" "$ROOT/etc/iscsimple"
chown 64055:"$kvmgid" "$ROOT/var/lib/libvirt/qemu"
# What libvirt-daemon-system would ship, only where it differs from the
# built-in defaults: a root-only socket without polkit, and no security
# driver (no apparmor/selinux in the lab). namespaces=["mount"], DAC with
# dynamic_ownership and stdio_handler=logd stay at their defaults.
cat > "$ROOT/etc/libvirt/libvirtd.conf" <<'EOF'
# lab: root-only unix socket, no TCP, no polkit
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
auth_unix_ro = "none"
EOF
cat > "$ROOT/etc/libvirt/qemu.conf" <<'EOF'
# lab (TCG inside a TCG VM, no systemd, no cgroups, no apparmor/selinux)
security_driver = "none"
EOF
# The lab VM's hostname is "lab" (libvirtd resolves it at start).
echo lab > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost lab\n::1 localhost\n' > "$ROOT/etc/hosts"
[ -s "$ROOT/etc/iscsi/initiatorname.iscsi" ] || \
    echo "InitiatorName=iqn.1993-08.org.debian:01:lablibvirt01" > "$ROOT/etc/iscsi/initiatorname.iscsi"

# ------------------------------------------------------------------ trim
rm -rf "$ROOT"/usr/share/{doc,man,info,locale}/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
rm -f "$ROOT/usr/sbin/policy-rc.d"

# ------------------------------------------------------------------ image
kb=$(du -sk "$ROOT" | cut -f1)
size_mb=$(( kb * 12 / 10 / 1024 + 96 ))
mkfs.ext4 -q -F -L lab-libvirt -d "$ROOT" "$IMG.tmp" "${size_mb}M"
mv "$IMG.tmp" "$IMG"
rm -rf "$ROOT"   # the image is the product; the tree is only its source
echo "$stamp" > "$OUT/stamp"
log "done in $(( $(date +%s) - t0 ))s: $IMG ${size_mb} MiB ($((kb / 1024)) MiB of files)"
