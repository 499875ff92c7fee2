#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds qemu-system-x86_64 from Debian's QEMU source with the generic
# vhost-user device made usable: the patches in patches/, applied in the
# order of patches/series (README.md here says what each one fixes).
#
#   vmm-config/qemu/build-qemu.sh CACHE_DIR
#
# Prints the path of the binary. The build (about 7 minutes on two cores) is
# kept in CACHE_DIR/qemu-VERSION-accel-SUM, SUM a checksum over the series
# file and the patches it lists, and reused while they are unchanged. Needs
# root on Debian bookworm (it installs the build dependencies and adds the
# bookworm-backports source suite).
set -euo pipefail

QEMU_VERSION=10.0.2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patches="$here/patches"
cache=$(mkdir -p "$1" && cd "$1" && pwd)

log() { echo "build-qemu: $*" >&2; }

# The series file: one patch file name a line, in the order they apply;
# blank lines and lines starting with '#' are ignored.
series=()
while read -r name; do
    [[ -z $name || $name == \#* ]] && continue
    [[ -f "$patches/$name" ]] || { log "patches/series names a missing patch: $name"; exit 1; }
    series+=("$patches/$name")
done < "$patches/series"
[[ ${#series[@]} -gt 0 ]] || { log "patches/series lists no patch"; exit 1; }

series_sum=$(cat "$patches/series" "${series[@]}" | sha256sum | cut -c1-12)
dest="$cache/qemu-$QEMU_VERSION-accel-$series_sum"
binary="$dest/build/qemu-system-x86_64"
if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

# shellcheck source=SCRIPTDIR/../debian-backports.sh
source "$here/../debian-backports.sh"
ensure_backports
log "installing build dependencies"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    ninja-build pkg-config flex bison libglib2.0-dev libpixman-1-dev libfdt-dev \
    seabios qemu-system-data >&2
python3 -m pip install -q meson==1.5.0 pycotap >&2

work="$cache/src-$QEMU_VERSION"
mkdir -p "$work"
if [[ ! -f "$work/qemu_$QEMU_VERSION+ds.orig.tar.xz" ]]; then
    log "fetching the QEMU $QEMU_VERSION source from Debian"
    # Only the upstream tarball is needed; the Debian diff may be gone from
    # the mirror when backports move on, so its failure is not fatal.
    (cd "$work" && { apt-get source --download-only -t bookworm-backports qemu >&2 || true; })
fi
tarball="$work/qemu_$QEMU_VERSION+ds.orig.tar.xz"
[[ -f $tarball ]] || { log "no $tarball"; exit 1; }

rm -rf "$dest"
mkdir -p "$dest"
tar -xf "$tarball" -C "$dest" --strip-components=1
cd "$dest"
for patch_file in "${series[@]}"; do
    log "applying ${patch_file##*/}"
    # --fuzz=0: the series is made against this very source; a patch whose
    # context does not match exactly is an error, not a guess.
    patch -p1 --batch --fuzz=0 < "$patch_file" >&2
done
# Debian's "+ds" tarball has no firmware blobs: do not unpack the EDK2 ones.
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' meson.build
mkdir -p build
cd build
log "configuring and building (x86_64-softmmu only)"
../configure --target-list=x86_64-softmmu --without-default-features \
    --enable-kvm --enable-vhost-user --disable-download --disable-install-blobs \
    --python="$(command -v python3)" >&2
make -j"$(nproc)" qemu-system-x86_64 >&2
echo "$binary"
