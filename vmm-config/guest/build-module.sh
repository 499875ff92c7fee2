#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the guest's kernel module, virtio_accel.ko (guest-driver/linux/), out
# of tree against Debian's headers for the guest kernel (kernel.sh), the
# benchmark module kbench.ko (guest-driver/linux/bench/) and the guest's
# static test programs (guest-driver/linux/tests/NAME.c).
#
#   vmm-config/guest/build-module.sh CACHE_DIR
#
# The header packages are fetched once into CACHE_DIR. The build runs in a
# copy of the sources (the source tree gets no build products) with W=1 and
# warnings (the compiler's and modpost's) as errors, and is cached by a
# checksum of the sources, this script and kernel.sh. Prints the path of
# virtio_accel.ko; kbench.ko lies beside it, the test programs in bin/. Needs root the first time (it installs gcc-12, pahole
# and the C library for static programs if they are missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kernel.sh
source "$here/kernel.sh"
src=$(cd "$here/../../guest-driver/linux" && pwd)
cache=$(mkdir -p "$1" && cd "$1" && pwd)
log() { echo "build-module: $*" >&2; }

# The compiler the kernel was built with (the headers' .kernelvariables name
# x86_64-linux-gnu-gcc-12), pahole for the module's BTF (the headers carry
# vmlinux, so kbuild generates it), and the static C library.
install_tools() {
    local missing=()
    command -v x86_64-linux-gnu-gcc-12 >/dev/null || missing+=(gcc-12)
    command -v make >/dev/null || missing+=(make)
    command -v pahole >/dev/null || missing+=(dwarves)
    [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    fi
}

# Unpacks the header packages into CACHE_DIR once; prints the kernel build
# directory (KDIR).
fetch_headers() {
    local headers="$cache/linux-headers-$KERNEL_ABI"
    local kdir="$headers/usr/src/linux-headers-$KERNEL_RELEASE"
    if [[ ! -d $headers ]]; then
        log "fetching ${KERNEL_HEADER_PACKAGES[*]}"
        # shellcheck source=../debian-backports.sh
        source "$here/../debian-backports.sh"
        local tmp
        tmp=$(mktemp -d)
        unpack_backports "$tmp/root" "${KERNEL_HEADER_PACKAGES[@]}"
        # The flavour's Makefile includes the common one by its installed
        # path; the scripts and tools links are relative and stay valid.
        sed -i "s|^include /usr/src/|include $headers/usr/src/|" \
            "$tmp/root/usr/src/linux-headers-$KERNEL_RELEASE/Makefile"
        mv "$tmp/root" "$headers"
        rm -rf "$tmp"
    fi
    echo "$kdir"
}

# The files the build needs, relative to the source directory.
source_files() {
    (cd "$src" && find . -type f \( -name '*.c' -o -name '*.h' -o -name Kbuild \
        -o -name Makefile \) -not -name '*.mod.c' | LC_ALL=C sort)
}

# A checksum of the sources (names and contents) and of how they are built.
sources_checksum() {
    local file
    {
        while read -r file; do
            echo "$file"
            cat "$src/$file"
        done < <(source_files)
        cat "$here/build-module.sh" "$here/kernel.sh"
    } | sha256sum | cut -c1-16
}

# Builds the module in DIR (kbuild's M=) against KDIR into OUT, with W=1
# and warnings as errors: modpost's (a missing MODULE_DESCRIPTION, section
# mismatches) fail the build as the compiler's do.
build_module() {
    local kdir=$1 dir=$2 out=$3 name=$4
    log "building $name.ko against $KERNEL_RELEASE"
    make -C "$kdir" M="$dir" W=1 KCFLAGS=-Werror modules 2>&1 | tee "$out/$name.log" >&2
    if grep '^WARNING: ' "$out/$name.log" >&2; then
        log "kbuild warned (above)"
        exit 1
    fi
    cp "$dir/$name.ko" "$out/"
}

# Builds the modules and the test programs of the copy of the sources in
# WORK into OUT.
build() {
    local kdir=$1 work=$2 out=$3 program name
    mkdir -p "$out/bin"
    build_module "$kdir" "$work" "$out" virtio_accel
    build_module "$kdir" "$work/bench" "$out" kbench
    # The programs see the module's uAPI headers first, then the C
    # library's, then the guest kernel's (for what the C library's kernel
    # headers lack, such as drm/drm.h), whose __user annotations
    # "make headers_install" would have removed.
    local kernel_uapi
    kernel_uapi="$(dirname "$kdir")/linux-headers-$KERNEL_ABI-common/include/uapi"
    for program in "$work"/tests/*.c; do
        [[ -f $program ]] || continue
        name=$(basename "$program" .c)
        log "building the test program $name"
        x86_64-linux-gnu-gcc-12 -static -O2 -Wall -Wextra -Werror \
            -I"$work/include/uapi" -idirafter "$kernel_uapi" -D__user= \
            -o "$out/bin/$name" "$program" >&2
    done
}

install_tools
kdir=$(fetch_headers)
out="$cache/virtio-accel-module-$(sources_checksum)"
if [[ ! -f $out/virtio_accel.ko ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir "$work/src"
    source_files | tar -C "$src" -cf - -T - | tar -C "$work/src" -xf -
    build "$kdir" "$work/src" "$work/out"
    # Only the newest build is kept.
    rm -rf "$cache"/virtio-accel-module-*
    mv "$work/out" "$out"
fi
echo "$out/virtio_accel.ko"
