#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the initramfs of the guest that plays a dma-buf host
# (tests/tests/vm_dmabuf.rs): the daemon runs in it, next to
# accel-dmabuf-check, which plays the VMM and drives vgem and vivid against
# the daemon's dma-bufs. The machines this project is tested on have no
# udmabuf, vgem or vivid; Debian's 6.12 kernel (kernel.sh) has udmabuf and
# sync_file built in, and vgem and vivid as modules.
#
#   vmm-config/guest/build-dmabuf-host.sh CACHE_DIR DAEMON CHECK VULKAN_DAEMON
#
# DAEMON is a static vhost-user-accel, CHECK a static accel-dmabuf-check
# (tests/src/vm.rs build_binaries builds both). VULKAN_DAEMON is a
# vhost-user-accel linked as usual (glibc's dlopen, which the Vulkan loader
# needs, wants a dynamic program): it runs the Vulkan engine on lavapipe,
# whose dma-buf import (VK_EXT_external_memory_dma_buf) came with Mesa 24.1:
# the guest gets mesa-vulkan-drivers of bookworm-backports (25.0) and the
# libdrm it needs, unpacked in CACHE_DIR/mesa-backports, over this
# machine's libraries (bookworm's libvulkan1, LLVM 15 and the rest, the
# program's and the drivers' ldd closure, at their paths). The kernel and
# busybox come from Debian and are cached in CACHE_DIR, as
# build-initramfs.sh caches them (whichever runs first fetches them). The
# init is dmabuf-host-init.sh. Prints "KERNEL INITRD".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=initramfs-lib.sh
source "$here/initramfs-lib.sh"
cache=$(mkdir -p "$1" && cd "$1" && pwd)
daemon=$2
check=$3
vulkan_daemon=$4
log() { echo "build-dmabuf-host: $*" >&2; }

# The kernel's modules that the init loads, with what they depend on.
HOST_MODULES=(vgem vivid)
multiarch=usr/lib/x86_64-linux-gnu

# add_libraries_of FILE: copies every library that FILE loads (as ldd
# resolves them, backports' first) to its path in the initramfs; one from
# $mesa goes where its package puts it.
add_libraries_of() {
    local resolved library target
    resolved=$(LD_LIBRARY_PATH="$mesa/$multiarch" ldd "$1")
    if grep -q 'not found' <<< "$resolved"; then
        log "$1 needs libraries that are not here:"
        grep 'not found' <<< "$resolved" >&2
        exit 1
    fi
    while read -r library; do
        target=${library#"$mesa"}
        mkdir -p "$root$(dirname "$target")"
        cp -L "$library" "$root$target"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<< "$resolved")
}

fetch_kernel "$cache"
# shellcheck source=../debian-backports.sh
source "$here/../debian-backports.sh"
mesa=$cache/mesa-backports
fetch_mesa_backports "$mesa"
new_root bin sbin proc sys dev run tmp "$multiarch" usr/lib64 usr/bin usr/share/vulkan/icd.d
# The layout of Debian's merged /usr, which the libraries' paths assume.
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
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

# The Vulkan daemon, at a path of its own, with the loader and lavapipe.
cp "$vulkan_daemon" "$root/usr/bin/vhost-user-accel-vulkan"
strip "$root/usr/bin/vhost-user-accel-vulkan" 2>/dev/null || true
cp -L "/$multiarch/libvulkan.so.1" "$mesa/$multiarch/libvulkan_lvp.so" "$root/$multiarch/"
cp "$mesa/usr/share/vulkan/icd.d/lvp_icd.json" "$root/usr/share/vulkan/icd.d/"
for program in "$vulkan_daemon" "/$multiarch/libvulkan.so.1" "$mesa/$multiarch/libvulkan_lvp.so"; do
    add_libraries_of "$program"
done

cp "$here/dmabuf-host-init.sh" "$root/init"
chmod +x "$root/init"
initrd="$cache/initrd-dmabuf-host.gz"
pack_initramfs "$initrd"
echo "$kernel $initrd"
