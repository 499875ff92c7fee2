# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
# Sourced by the scripts that build the test VMs' initramfs
# (build-initramfs.sh, build-dmabuf-host.sh,
# ../cloud-hypervisor/build-l1.sh): what they have in common. Each script
# keeps its own busybox applets, kernel modules and files. The functions
# work on the initramfs at $root (new_root); fetch_kernel and copy_module
# call the script's log function.

initramfs_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The guest's kernel (fetch_kernel).
# shellcheck source=kernel.sh
source "$initramfs_lib/kernel.sh"

# The tree of the initramfs (new_root).
root=
# The kernel's image and its lib/modules/VERSION (fetch_kernel), and the
# initramfs's lib/modules/VERSION (init_modules).
kernel=
kernel_modules=
initramfs_modules=
# The kernel's modules: their paths below kernel_modules, by name ("-" and
# "_" alike), its built-in ones, and those that copy_module has put into
# the initramfs.
declare -A module_path=() builtin=() copied=()

# fetch_kernel CACHE: Debian's kernel (KERNEL_IMAGE_PACKAGE) and
# busybox-static, unpacked into CACHE/$KERNEL_IMAGE_PACKAGE and CACHE/busybox
# unless they are there already (with the tools that the scripts use);
# sets kernel and kernel_modules.
fetch_kernel() {
    local kroot=$1/$KERNEL_IMAGE_PACKAGE tmp
    if [[ ! -d "$kroot/boot" || ! -x "$1/busybox/bin/busybox" ]]; then
        log "fetching $KERNEL_IMAGE_PACKAGE and busybox-static"
        # shellcheck source=../debian-backports.sh
        source "$initramfs_lib/../debian-backports.sh"
        ensure_backports
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio xz-utils binutils >&2
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download -t bookworm-backports "$KERNEL_IMAGE_PACKAGE" busybox-static >&2)
        mkdir -p "$kroot" "$1/busybox"
        dpkg-deb -x "$tmp"/linux-image-*.deb "$kroot"
        dpkg-deb -x "$tmp"/busybox-static_*.deb "$1/busybox"
        rm -rf "$tmp"
    fi
    kernel=$(ls "$kroot"/boot/vmlinuz-*)
    kernel_modules="$kroot/lib/modules/$(ls "$kroot/lib/modules")"
}

# new_root DIR...: a fresh root, removed when the script exits, with the
# directories DIR... in it. The root is made by mkdir: mktemp's mode 700
# would keep the guest's other users out of "/".
new_root() {
    local dir work
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # this work directory, not a later one
    trap "rm -rf '$work'" EXIT
    root=$work/root
    mkdir "$root"
    for dir in "$@"; do
        mkdir -p "$root/$dir"
    done
}

# add_busybox BUSYBOX APPLET...: the static BUSYBOX as /bin/busybox, and
# each APPLET as a link to it in /bin.
add_busybox() {
    local applet
    cp "$1" "$root/bin/busybox"
    shift
    for applet in "$@"; do
        ln -s busybox "$root/bin/$applet"
    done
}

# init_modules: readies the initramfs for the kernel's modules
# (copy_module): indexes them, copies the list of its built-in ones, and
# links /sbin/modprobe, which the kernel runs to load a module it needs, to
# busybox.
init_modules() {
    local path name
    initramfs_modules="$root/lib/modules/${kernel_modules##*/}"
    module_path=() builtin=() copied=()
    while read -r path; do
        name=${path##*/}
        name=${name%.ko.xz}
        module_path[${name//-/_}]=${path%.xz}
    done < <(cd "$kernel_modules" && find kernel -name '*.ko.xz')
    while read -r path; do
        name=${path##*/}
        name=${name%.ko}
        builtin[${name//-/_}]=1
    done < "$kernel_modules/modules.builtin"
    mkdir -p "$initramfs_modules" "$root/sbin"
    cp "$kernel_modules/modules.builtin" "$initramfs_modules/"
    ln -s ../bin/busybox "$root/sbin/modprobe"
}

# depends_of FILE: the modules that the module file FILE depends on (its
# "depends" field), separated by spaces.
depends_of() {
    objcopy -O binary --only-section=.modinfo "$1" /dev/stdout |
        tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}

# copy_module NAME: puts the kernel's module NAME and the modules it depends
# on into the initramfs (init_modules), uncompressed (busybox's modprobe
# reads no .xz); built-in ones need nothing.
copy_module() {
    local name=${1//-/_} path dep
    [[ -z ${copied[$name]:-} && -z ${builtin[$name]:-} ]] || return 0
    copied[$name]=1
    path=${module_path[$name]:-}
    if [[ -z $path ]]; then
        log "the kernel ${kernel_modules##*/} has no module $1"
        exit 1
    fi
    mkdir -p "$initramfs_modules/$(dirname "$path")"
    xz -dc "$kernel_modules/$path.xz" > "$initramfs_modules/$path"
    for dep in $(depends_of "$initramfs_modules/$path"); do
        copy_module "$dep"
    done
}

# pack_initramfs INITRD: the initramfs, as the gzipped cpio archive INITRD.
pack_initramfs() {
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$1"
}
