#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the initramfs of the L1 guest in which cloud-hypervisor runs the test
# guest (KVM nested in QEMU TCG; see README.md for why).
#
#   vmm-config/cloud-hypervisor/build-l1.sh CACHE_DIR CLOUD_HYPERVISOR DAEMON L2_KERNEL L2_INITRD
#
# CLOUD_HYPERVISOR is the cloud-hypervisor binary (dynamically linked: its
# libraries come along); DAEMON a static vhost-user-accel; L2_KERNEL and
# L2_INITRD what guest/build-initramfs.sh printed (run it first: it fetches the
# Debian kernel, whose KVM modules L1 loads and which L1 boots too). The init
# is l1-init.sh. Prints "KERNEL INITRD" for L1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../guest/initramfs-lib.sh
source "$here/../guest/initramfs-lib.sh"
cache=$(mkdir -p "$1" && cd "$1" && pwd)
ch=$2
daemon=$3
l2_kernel=$4
l2_initrd=$5

# L2_KERNEL is KERNEL_PACKAGE/boot/vmlinuz-VERSION; its modules are beside it.
kroot=$(cd "$(dirname "$l2_kernel")/.." && pwd)
ver=$(ls "$kroot/lib/modules")
modules="$kroot/lib/modules/$ver/kernel"

new_root bin proc sys dev run tmp mod l2
add_busybox "$cache/busybox/bin/busybox" \
    sh mount insmod echo cat ls sleep usleep rm kill stty mkfifo poweroff \
    ifconfig wget tr dmesg tail head grep
# kvm-amd needs ccp (SEV) and kvm; kvm needs irqbypass.
for module in virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd; do
    xz -dc "$modules/$module.ko.xz" > "$root/mod/$(basename "$module").ko"
done
cp "$ch" "$root/bin/cloud-hypervisor"
# Its shared libraries and loader, at the paths it was linked with.
for lib in $(ldd "$ch" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp "$daemon" "$root/bin/vhost-user-accel"
cp "$l2_kernel" "$root/l2/vmlinuz"
cp "$l2_initrd" "$root/l2/initrd.gz"
cp "$here/l1-init.sh" "$root/init"
chmod +x "$root/init"
initrd="$cache/initrd-l1-cloud-hypervisor.gz"
pack_initramfs "$initrd"
echo "$l2_kernel $initrd"
