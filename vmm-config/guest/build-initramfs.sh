#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds a guest kernel + initramfs that boots straight into accelctl.
#
#   vmm-config/guest/build-initramfs.sh CACHE_DIR ACCELCTL [SCRIPT [MODULE]]
#
# ACCELCTL is a static accelctl (README: "The guest side"); SCRIPT, if given,
# is a shell script the guest runs as /run-in-guest after binding the device
# (default: accelctl list and selftest). MODULE, if given, is the kernel
# module virtio_accel.ko that build-module.sh printed: it goes into the
# initramfs with the kernel's modules it depends on, the static test programs
# beside it (bin/) go into /bin, and so do the kernel's modules that the
# guest's kernel-module checks load (GUEST_MODULES). Nothing loads it at boot:
# the device is bound to uio_pci_generic first. Prints "KERNEL INITRD". The
# kernel is Debian's 6.12 from bookworm-backports (kernel.sh); the initramfs
# has busybox-static, the uio modules and accelctl. The guest powers off when
# the script ends and prints "accel-guest: exit N" with the script's status.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kernel.sh
source "$here/kernel.sh"
cache=$(mkdir -p "$1" && cd "$1" && pwd)
accelctl=$2
script=${3:-}
module=${4:-}
log() { echo "build-initramfs: $*" >&2; }

# The kernel's modules that the guest's kernel-module checks load, or that
# the kernel requests then (through /sbin/modprobe): AF_ALG and its socket
# types; the crypto templates and CPU implementations that the driver's
# software fallbacks and the crypto self-tests instantiate; zram and loop,
# for swap; vgem, whose fences are the foreign fences of accel_drm.
GUEST_MODULES=(
    af_alg algif_hash algif_aead algif_skcipher
    gcm ghash-generic crc32c_generic deflate
    aesni-intel ghash-clmulni-intel sha256-ssse3 crc32c-intel
    zram loop vgem
)

kroot="$cache/$KERNEL_IMAGE_PACKAGE"
if [[ ! -d "$kroot/boot" ]]; then
    log "fetching $KERNEL_IMAGE_PACKAGE and busybox-static"
    # shellcheck source=../debian-backports.sh
    source "$here/../debian-backports.sh"
    ensure_backports
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio xz-utils >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -t bookworm-backports "$KERNEL_IMAGE_PACKAGE" busybox-static >&2)
    mkdir -p "$kroot" "$cache/busybox"
    dpkg-deb -x "$tmp"/linux-image-*.deb "$kroot"
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$cache/busybox"
    rm -rf "$tmp"
fi
ver=$(ls "$kroot/lib/modules")
kernel=$(ls "$kroot"/boot/vmlinuz-*)

modules="$kroot/lib/modules/$ver"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp} "$root/lib/modules/$ver"
cp "$cache/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount insmod modprobe depmod poweroff echo cat ls sleep mkdir \
    gzip gunzip sha256sum cmp head dd uname sync rm seq base64 \
    grep sed tail dmesg rmmod lsmod modinfo readlink basename free mkswap \
    swapon swapoff losetup awk wc; do
    ln -s busybox "$root/bin/$applet"
done
# Where the kernel runs modprobe to load a module it needs (an algorithm,
# an AF_ALG socket type).
ln -s ../bin/busybox "$root/sbin/modprobe"

# The kernel's modules, by name ("-" and "_" alike), and those built in.
declare -A module_path=() builtin=() copied=()
while read -r path; do
    name=${path##*/}
    name=${name%.ko.xz}
    module_path[${name//-/_}]=${path%.xz}
done < <(cd "$modules" && find kernel -name '*.ko.xz')
while read -r path; do
    name=${path##*/}
    name=${name%.ko}
    builtin[${name//-/_}]=1
done < "$modules/modules.builtin"

# The modules that the module file $1 depends on (its "depends" field).
depends_of() {
    objcopy -O binary --only-section=.modinfo "$1" "$work/modinfo"
    tr '\0' '\n' < "$work/modinfo" | sed -n 's/^depends=//p' | tr ',' ' '
}

# Puts the kernel's module $1 and the modules it depends on into the
# initramfs, uncompressed (busybox's modprobe reads no .xz); built-in ones
# need nothing.
copy_module() {
    local name=${1//-/_} path dep
    [[ -z ${copied[$name]:-} && -z ${builtin[$name]:-} ]] || return 0
    copied[$name]=1
    path=${module_path[$name]:-}
    if [[ -z $path ]]; then
        log "the kernel $ver has no module $1"
        exit 1
    fi
    mkdir -p "$root/lib/modules/$ver/$(dirname "$path")"
    xz -dc "$modules/$path.xz" > "$root/lib/modules/$ver/$path"
    for dep in $(depends_of "$root/lib/modules/$ver/$path"); do
        copy_module "$dep"
    done
}

copy_module uio_pci_generic
cp "$modules/modules.builtin" "$root/lib/modules/$ver/"
if [[ -n $module ]]; then
    mkdir -p "$root/lib/modules/$ver/updates"
    cp "$module" "$root/lib/modules/$ver/updates/"
    for dep in $(depends_of "$module") "${GUEST_MODULES[@]}"; do
        copy_module "$dep"
    done
    for program in "$(dirname "$module")"/bin/*; do
        if [[ -f $program ]]; then
            cp "$program" "$root/bin/"
            strip "$root/bin/${program##*/}" 2>/dev/null || true
        fi
    done
fi
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
