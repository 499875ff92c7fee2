#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0 OR MIT
# Builds the Debian package virtio-accel-dkms: the module's sources in
# /usr/src/virtio-accel-VERSION with dkms.conf, which DKMS builds and
# installs for every kernel that has its headers when the package is
# installed (and again for kernels installed later), and removes with it.
#
#   guest-driver/linux/package-dkms.sh OUT_DIR
#
# writes OUT_DIR/virtio-accel-dkms_VERSION_all.deb. Needs dpkg-deb only.
# tests/package/check.sh installs it under systemd with a kernel's headers.
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: package-dkms.sh OUT_DIR}
conf_value() { sed -n "s/^$1=\"\(.*\)\"$/\1/p" "$here/dkms.conf"; }
package=$(conf_value PACKAGE_NAME)
version=$(conf_value PACKAGE_VERSION)
[[ -n $package && -n $version ]] || { echo "package-dkms.sh: dkms.conf names no package" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
src="$root/usr/src/$package-$version"
doc="$root/usr/share/doc/$package-dkms"
mkdir -p "$src" "$doc" "$root/DEBIAN"
# What kbuild and DKMS need: the sources Kbuild names and the headers, as
# git tracks them (no build products of a `make` run here), nothing of the
# tests, the benchmark module or the scripts.
sources=$(git -C "$here" ls-files -- Kbuild Makefile dkms.conf '*.c' '*.h' 'include/*' |
    grep -v -e '^tests/' -e '^bench/')
[[ -n $sources ]] || { echo "package-dkms.sh: git lists no sources in $here" >&2; exit 1; }
(cd "$here" && cp --parents $sources "$src/")
cp "$here/LICENSE" "$doc/copyright"
cp "$here/README.md" "$doc/"

cat >"$root/DEBIAN/control" <<CONTROL
Package: $package-dkms
Version: $version
Architecture: all
Section: kernel
Priority: optional
Maintainer: vhost-user-accel developers
Depends: dkms (>= 3)
Description: virtio accelerator driver (virtio_accel.ko), in DKMS source form
 The Linux driver of the virtio accelerator device (virtio device ID 63):
 the virtio core, crypto API providers and the DRM accel device
 /dev/accel/accelN. DKMS builds it for every installed kernel with headers.
CONTROL
# Debian's DKMS helper adds, builds and installs the module for the kernels
# with headers, as dh_dkms's packages do.
cat >"$root/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
	/usr/lib/dkms/common.postinst $package $version
fi
POSTINST
cat >"$root/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ "\$1" = remove ] || [ "\$1" = upgrade ] || [ "\$1" = deconfigure ]; then
	dkms remove -m $package -v $version --all >/dev/null 2>&1 || true
fi
PRERM
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/${package}-dkms_${version}_all.deb" >/dev/null
echo "$out/${package}-dkms_${version}_all.deb"
