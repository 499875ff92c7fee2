#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0 OR MIT
# Builds the kernel module with DKMS from its dkms.conf, as README.md
# ("Installing with DKMS") has users install it, against the headers of the
# VM test's guest kernel (vmm-config/guest/kernel.sh), and checks that DKMS
# produced virtio_accel.ko for that kernel.
#
#   guest-driver/linux/dkms-check.sh [CACHE_DIR]
#
# CACHE_DIR (default: ${ACCEL_VM_CACHE:-~/.cache/vhost-user-accel}) holds the
# header packages; vmm-config/guest/build-module.sh fetches them there if
# they are missing. DKMS works in temporary source and build trees (its
# --sourcetree and --dkmstree), so nothing is installed on this machine but
# the dkms package itself (apt, as root, if it is missing). Fails, never
# skips, if any of this cannot be done.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/../../vmm-config/guest/kernel.sh
source "$repo/vmm-config/guest/kernel.sh"
cache=${1:-${ACCEL_VM_CACHE:-$HOME/.cache/vhost-user-accel}}
die() {
    echo "dkms-check.sh: $*" >&2
    exit 1
}

# The package's name and version, as dkms.conf gives them.
conf_value() { sed -n "s/^$1=\"\(.*\)\"$/\1/p" "$here/dkms.conf"; }
package=$(conf_value PACKAGE_NAME)
version=$(conf_value PACKAGE_VERSION)
[[ -n $package && -n $version ]] || die "dkms.conf names no PACKAGE_NAME and PACKAGE_VERSION"

if ! command -v dkms >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dkms >&2 ||
        die "dkms is not installed and cannot be"
fi
# The headers (and the compiler the kernel was built with) are there once
# the module builds.
"$repo/vmm-config/guest/build-module.sh" "$cache" > /dev/null
kdir="$cache/linux-headers-$KERNEL_ABI/usr/src/linux-headers-$KERNEL_RELEASE"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/tree"
cp -r "$here" "$work/src/$package-$version"
dkms build "$package/$version" -k "$KERNEL_RELEASE" --kernelsourcedir "$kdir" \
    --sourcetree "$work/src" --dkmstree "$work/tree" ||
    die "dkms build failed (its make.log is above or in $work/tree)"
module=$(find "$work/tree/$package/$version/$KERNEL_RELEASE" -name 'virtio_accel.ko*' | head -n 1)
[[ -n $module ]] || die "dkms build made no virtio_accel.ko"
vermagic=$(modinfo -F vermagic "$module")
[[ $vermagic == "$KERNEL_RELEASE "* ]] ||
    die "DKMS built the module for \"$vermagic\", not $KERNEL_RELEASE"
echo "dkms-check.sh: DKMS built $package/$version for $KERNEL_RELEASE (vermagic $vermagic)"
