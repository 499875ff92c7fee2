#!/usr/bin/env bash
# Builds a guest kernel + initramfs that boots straight into accelctl.
#
#   vmm-config/guest/build-initramfs.sh CACHE_DIR ACCELCTL [SCRIPT]
#
# ACCELCTL is a static accelctl (README: "The guest side"); SCRIPT, if given,
# is a shell script the guest runs as /run-in-guest after binding the device
# (default: accelctl list and selftest). Prints "KERNEL INITRD". The kernel is
# Debian's 6.12 from bookworm-backports; the initramfs has busybox-static, the
# uio modules and accelctl. The guest powers off when the script ends and
# prints "accel-guest: exit N" with the script's status.
set -euo pipefail

KERNEL_PACKAGE=linux-image-6.12.95+deb12-amd64-unsigned
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=$(mkdir -p "$1" && cd "$1" && pwd)
accelctl=$2
script=${3:-}
log() { echo "build-initramfs: $*" >&2; }

kroot="$cache/$KERNEL_PACKAGE"
if [[ ! -d "$kroot/boot" ]]; then
    log "fetching $KERNEL_PACKAGE and busybox-static"
    # shellcheck source=../debian-backports.sh
    source "$here/../debian-backports.sh"
    ensure_backports
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio xz-utils >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -t bookworm-backports "$KERNEL_PACKAGE" busybox-static >&2)
    mkdir -p "$kroot" "$cache/busybox"
    dpkg-deb -x "$tmp"/linux-image-*.deb "$kroot"
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$cache/busybox"
    rm -rf "$tmp"
fi
ver=$(ls "$kroot/lib/modules")
kernel=$(ls "$kroot"/boot/vmlinuz-*)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules/$ver/kernel/drivers/uio}
cp "$cache/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount insmod modprobe depmod poweroff echo cat ls sleep mkdir \
    gzip gunzip sha256sum cmp head dd uname sync rm seq base64; do
    ln -s busybox "$root/bin/$applet"
done
for module in uio uio_pci_generic; do
    xz -dc "$kroot/lib/modules/$ver/kernel/drivers/uio/$module.ko.xz" \
        > "$root/lib/modules/$ver/kernel/drivers/uio/$module.ko"
done
cp "$accelctl" "$root/bin/accelctl"
strip "$root/bin/accelctl" 2>/dev/null || true
if [[ -n $script ]]; then
    cp "$script" "$root/run-in-guest"
else
    printf '#!/bin/sh\naccelctl list && accelctl selftest\n' > "$root/run-in-guest"
fi
chmod +x "$root/run-in-guest"
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
depmod
echo 64 > /proc/sys/vm/nr_hugepages
echo "accel-guest: up"
accelctl bind && /run-in-guest
echo "accel-guest: exit $?"
sync
poweroff -f
INIT
chmod +x "$root/init"
initrd="$cache/initrd-accel.gz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd"
echo "$kernel $initrd"
