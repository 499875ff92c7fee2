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
# shellcheck source=initramfs-lib.sh
source "$here/initramfs-lib.sh"
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

fetch_kernel "$cache"
new_root bin sbin proc sys dev tmp
add_busybox "$cache/busybox/bin/busybox" \
    sh mount insmod modprobe depmod poweroff echo cat ls sleep mkdir \
    gzip gunzip sha256sum cmp head dd uname sync rm seq base64 \
    grep sed tail dmesg rmmod lsmod modinfo readlink basename free mkswap \
    swapon swapoff losetup awk wc
# The kernel loads what it needs (an algorithm, an AF_ALG socket type)
# through /sbin/modprobe.
init_modules

copy_module uio_pci_generic
if [[ -n $module ]]; then
    mkdir -p "$initramfs_modules/updates"
    cp "$module" "$initramfs_modules/updates/"
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
pack_initramfs "$initrd"
echo "$kernel $initrd"
