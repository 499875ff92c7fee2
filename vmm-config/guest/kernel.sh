# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash disable=SC2034  # the scripts that source it use these
# Sourced by initramfs-lib.sh and build-module.sh: the guest's kernel, named
# in this one place. Debian's kernel from bookworm-backports: the image the
# guests boot, and the headers the kernel module (guest-driver/linux/) is
# built against. Changing the version here moves both.
KERNEL_ABI=6.12.95+deb12
# What `uname -r` says in the guest (the image package's flavour).
KERNEL_RELEASE=$KERNEL_ABI-amd64
KERNEL_IMAGE_PACKAGE=linux-image-$KERNEL_RELEASE-unsigned
# The headers of the flavour include those common to every flavour, and
# both use the kernel build scripts.
KERNEL_HEADER_PACKAGES=(
    "linux-headers-$KERNEL_RELEASE"
    "linux-headers-$KERNEL_ABI-common"
    "linux-kbuild-$KERNEL_ABI"
)
