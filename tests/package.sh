#!/bin/bash
# tests/package.sh -- packaging checks run by `make test`: the Debian package
# builds (make deb), lintian finds nothing, it holds what README promises,
# and `make install`/`make uninstall` into a DESTDIR do what they say.
# Closing line: "package: N passed, N failed". (The lab installs, uses and
# purges the package on a Debian 12 root: lab_libvirt_deb_install_*.)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
pass=0 fail=0
ok()  { echo "package $1 ... ok"; pass=$((pass + 1)); }
bad() { echo "package $1 ... FAILED: $2"; fail=$((fail + 1)); }

if make -s deb >target/package-build.log 2>&1; then ok "make deb"; else bad "make deb" "$(tail -5 target/package-build.log)"; fi
deb=$(ls -t target/debian/iscsimple_*.deb 2>/dev/null | head -1)
if [ -z "$deb" ]; then
    echo "package: 0 passed, $((fail + 1)) failed"; exit 1
fi

tags=$(lintian "$deb" 2>&1 | grep -E '^[EW]: ' || true)
if [ -z "$tags" ]; then ok "lintian (no error or warning)"; else bad "lintian" "$tags"; fi

contents=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
missing=
for f in /usr/sbin/iscsimple /etc/xen/scripts/block-iscsimple /etc/libvirt/hooks/qemu.d/iscsimple \
         /etc/iscsimple/iscsimple.toml /etc/xen/scripts/block-iscsimple-tab.conf \
         /usr/share/man/man8/iscsimple.8.gz /usr/share/man/man8/iscsimple-doctor.8.gz \
         /usr/share/man/man8/iscsimple-status.8.gz /usr/share/bash-completion/completions/iscsimple \
         /usr/share/zsh/vendor-completions/_iscsimple /usr/share/fish/vendor_completions.d/iscsimple.fish \
         /usr/lib/systemd/system/iscsimple-watch.service /usr/share/doc/iscsimple/copyright \
         /usr/share/doc/iscsimple/changelog.Debian.gz /usr/share/doc/iscsimple/status.schema.json; do
    grep -qx "$f" <<<"$contents" || missing="$missing $f"
done
if [ -z "$missing" ]; then ok "contents"; else bad "contents" "missing:$missing"; fi

conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | sort | tr '\n' ' ')
want="/etc/iscsimple/iscsimple.toml /etc/libvirt/hooks/qemu.d/iscsimple /etc/xen/scripts/block-iscsimple /etc/xen/scripts/block-iscsimple-tab.conf "
if [ "$conffiles" = "$want" ]; then ok "conffiles"; else bad "conffiles" "$conffiles"; fi
# libudev1: $auto's find for the udev crate's libudev.so.1
if dpkg-deb -f "$deb" Depends | grep -q 'open-iscsi' && dpkg-deb -f "$deb" Depends | grep -q 'mdadm' \
   && dpkg-deb -f "$deb" Depends | grep -q 'libudev1'; then
    ok "depends"; else bad "depends" "$(dpkg-deb -f "$deb" Depends)"; fi
perms=$(dpkg-deb -c "$deb" | awk '$6 ~ /(sbin\/iscsimple|block-iscsimple|qemu.d\/iscsimple)$/ {print $1}' | sort -u | tr '\n' ' ')
if [ "$perms" = "-rwxr-xr-x " ]; then ok "executables 0755"; else bad "executables 0755" "$perms"; fi

d=$(mktemp -d)
if make -s install DESTDIR="$d" PREFIX=/usr/local >target/package-install.log 2>&1 \
   && [ -x "$d/usr/local/sbin/iscsimple" ] && [ -x "$d/etc/xen/scripts/block-iscsimple" ] \
   && grep -q 'exec /usr/local/sbin/iscsimple xen' "$d/etc/xen/scripts/block-iscsimple" \
   && grep -q 'exec /usr/local/sbin/iscsimple libvirt-hook' "$d/etc/libvirt/hooks/qemu.d/iscsimple" \
   && grep -q 'ExecStart=/usr/local/sbin/iscsimple watch' "$d/usr/local/lib/systemd/system/iscsimple-watch.service" \
   && [ -f "$d/usr/local/share/man/man8/iscsimple-doctor.8" ] && [ -f "$d/etc/iscsimple/iscsimple.toml" ]; then
    ok "make install DESTDIR PREFIX"
else
    bad "make install DESTDIR PREFIX" "$(tail -5 target/package-install.log)"
fi
echo '# mine' > "$d/etc/iscsimple/iscsimple.toml"
make -s install DESTDIR="$d" PREFIX=/usr/local >>target/package-install.log 2>&1
make -s uninstall DESTDIR="$d" PREFIX=/usr/local >>target/package-install.log 2>&1
left=$(cd "$d" && find . -type f | sort | tr '\n' ' ')
if [ "$left" = "./etc/iscsimple/iscsimple.toml ./etc/xen/scripts/block-iscsimple-tab.conf " ] \
   && [ "$(cat "$d/etc/iscsimple/iscsimple.toml")" = "# mine" ]; then
    ok "install keeps the config; uninstall leaves only config and table"
else
    bad "install keeps the config; uninstall leaves only config and table" "left: $left"
fi
rm -rf "$d"
echo "package: $pass passed, $fail failed"
[ "$fail" = 0 ]
