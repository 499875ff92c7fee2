#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# The Debian package as an operator meets it, under a real systemd.
#
# Builds the package with cargo-deb, and the kernel module's
# virtio-accel-dkms (guest-driver/linux/package-dkms.sh), makes a Debian
# bookworm root with
# debootstrap and boots it with systemd-nspawn (systemd as its PID 1: this
# works on a host whose own PID 1 is not systemd, as on the CI machines).
# Inside, inside.sh installs the package, starts its units, runs jobs through
# them as a VMM's user, reloads a changed configuration, activates a VM's
# socket unit, and purges the package, checking each step; then installs
# virtio-accel-dkms next to the headers of the VM test's guest kernel
# (vmm-config/guest/kernel.sh), checks that DKMS built and installed the
# module for it, and purges it. Needs root on Debian (it installs
# systemd-container and debootstrap) and the Debian mirror (the container
# installs dkms and the headers); it fails, never skips, when it cannot run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CARGO_DEB_VERSION=3.8.0
if [[ $(id -u) -ne 0 ]]; then
  echo "tests/package/check.sh: needs root (debootstrap, systemd-nspawn)" >&2
  exit 1
fi
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    systemd-container debootstrap >/dev/null
fi
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

work=$(mktemp -d /var/tmp/vhost-user-accel-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== build the package"
# Without test features: what users get.
cargo build --release --locked -p vhost-user-accel -p accelctl
cargo deb -p vhost-user-accel --no-build --locked --strip --output "$work/vhost-user-accel.deb"
dpkg-deb --info "$work/vhost-user-accel.deb" | sed -n '/Package:/,/Depends:/p'
dkms_deb=$(guest-driver/linux/package-dkms.sh "$work")
# shellcheck source=../../vmm-config/guest/kernel.sh
source vmm-config/guest/kernel.sh

echo "== a Debian bookworm root with systemd"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps \
  bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
  { tail -n 20 "$work/debootstrap.log"; exit 1; }
check="$work/root/package-check"
mkdir -m 755 "$check"
cp "$work/vhost-user-accel.deb" tests/package/inside.sh "$check/"
cp "$dkms_deb" "$check/virtio-accel-dkms.deb"
echo "$KERNEL_RELEASE" >"$check/kernel-release"
sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' guest-driver/linux/dkms.conf >"$check/dkms-version"
printf 123456789 >"$check/in"
chmod 644 "$check/in"
# The check runs as a unit of the container's systemd, then powers it off.
cat >"$work/root/etc/systemd/system/package-check.service" <<'UNIT'
[Unit]
Description=vhost-user-accel package check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/bin/sh /package-check/inside.sh > /package-check/log 2>&1; echo $? > /package-check/rc'
ExecStartPost=/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target
UNIT
ln -s /etc/systemd/system/package-check.service \
  "$work/root/etc/systemd/system/multi-user.target.wants/package-check.service"

echo "== boot it (systemd-nspawn) and run tests/package/inside.sh"
# No machined or systemd on the host to register with: --register=no and
# --keep-unit.
timeout 900 systemd-nspawn --quiet --directory="$work/root" --boot --register=no \
  --keep-unit --console=pipe >"$work/console.log" 2>&1 || true
cat "$check/log" 2>/dev/null || { echo "no log from the container:"; tail -n 30 "$work/console.log"; }
rc=$(cat "$check/rc" 2>/dev/null || echo none)
if [[ $rc != 0 ]]; then
  echo "package check failed (exit status $rc); the container's console:" >&2
  tail -n 30 "$work/console.log" >&2
  exit 1
fi
echo "package check: passed under systemd $(sed -n 's/^systemd \([0-9]*\).*/\1/p' "$check/log" | head -n 1)"
