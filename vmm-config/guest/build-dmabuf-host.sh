#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the initramfs of the guest that plays a dma-buf host
# (tests/tests/vm_dmabuf.rs): the daemon runs in it, next to
# accel-dmabuf-check, which plays the VMM and drives vgem and vivid against
# the daemon's dma-bufs. The machines this project is tested on have no
# udmabuf, vgem or vivid; Debian's 6.12 kernel (kernel.sh) has udmabuf and
# sync_file built in, and vgem and vivid as modules.
#
#   vmm-config/guest/build-dmabuf-host.sh CACHE_DIR DAEMON CHECK
#
# DAEMON is a static vhost-user-accel, CHECK a static accel-dmabuf-check
# (tests/src/vm.rs build_binaries builds both). The kernel and busybox come
# from Debian and are cached in CACHE_DIR, as build-initramfs.sh caches them
# (whichever runs first fetches them). The init is dmabuf-host-init.sh.
# Prints "KERNEL INITRD".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=initramfs-lib.sh
source "$here/initramfs-lib.sh"
cache=$(mkdir -p "$1" && cd "$1" && pwd)
daemon=$2
check=$3
log() { echo "build-dmabuf-host: $*" >&2; }

# The kernel's modules that the init loads, with what they depend on.
HOST_MODULES=(vgem vivid)

fetch_kernel "$cache"
new_root bin sbin proc sys dev run tmp
add_busybox "$cache/busybox/bin/busybox" \
    sh mount modprobe depmod poweroff echo cat ls sleep usleep mkdir \
    mkfifo stty kill rm grep sed tail head dmesg lsmod sync tr
init_modules

for module in "${HOST_MODULES[@]}"; do
    copy_module "$module"
done
cp "$daemon" "$root/bin/vhost-user-accel"
cp "$check" "$root/bin/accel-dmabuf-check"
strip "$root/bin/vhost-user-accel" "$root/bin/accel-dmabuf-check" 2>/dev/null || true
cp "$here/dmabuf-host-init.sh" "$root/init"
chmod +x "$root/init"
initrd="$cache/initrd-dmabuf-host.gz"
pack_initramfs "$initrd"
echo "$kernel $initrd"
