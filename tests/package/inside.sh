#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Runs inside the container that tests/package/check.sh boots, as root under
# systemd: the package's life from installation to purge. Any failed check
# ends it with a non-zero status.
set -eu

fail() {
	echo "FAIL: $*"
	journalctl --no-pager -n 40 -u 'vhost-user-accel*' || true
	exit 1
}
step() { echo "== $*"; }
# Waits up to 10 s for the socket $1.
wait_socket() {
	for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
	fail "no socket $1"
}
# A CRC-32C of "123456789" through the socket $1, as the VMM's user.
crc() {
	out=$(runuser -u vmm -- accelctl --timeout 20 --vhost-user "$1" run crc32c --in /package-check/in) ||
		fail "no job through $1"
	[ "$out" = e3069283 ] || fail "CRC-32C through $1 gave $out"
	echo "CRC-32C through $1: $out"
}
tenant_pid() { pgrep -f -- "--tenant-process $1\$" || true; }
conf=/etc/vhost-user-accel/vhost-user-accel.toml

systemctl --version | head -n 1
step "install"
dpkg -i /package-check/vhost-user-accel.deb
dpkg -L vhost-user-accel > /package-check/files
getent passwd vhost-user-accel > /dev/null || fail "no user vhost-user-accel"
for f in /usr/sbin/vhost-user-accel /usr/bin/accelctl "$conf" \
	/usr/lib/systemd/system/vhost-user-accel.service \
	/usr/lib/systemd/system/vhost-user-accel@.service \
	/usr/lib/systemd/system/vhost-user-accel@.socket \
	/usr/share/man/man8/vhost-user-accel.8.gz /usr/share/man/man5/vhost-user-accel.toml.5.gz \
	/usr/share/man/man1/accelctl.1.gz; do
	[ -e "$f" ] || fail "$f not installed"
done
[ "$(systemctl is-enabled vhost-user-accel.service || true)" = disabled ] ||
	fail "the service is enabled on installation"
systemd-analyze verify --man=no vhost-user-accel.service vhost-user-accel@vm9.socket \
	vhost-user-accel@vm9.service || fail "systemd-analyze verify"
# A VMM's user: in the daemon's group, so it may connect to the sockets.
useradd --system --no-create-home -G vhost-user-accel vmm

step "vhost-user-accel.service on the packaged configuration"
systemctl start vhost-user-accel.service || fail "cannot start"
[ "$(systemctl is-active vhost-user-accel.service)" = active ] || fail "not active"
wait_socket /run/vhost-user-accel/vm0.sock
crc /run/vhost-user-accel/vm0.sock
main=$(systemctl show -p MainPID --value vhost-user-accel.service)
[ "$(ps -o user= -p "$main")" = vhost-user-accel ] || fail "the daemon does not run as vhost-user-accel"
grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$main/status" || fail "no NoNewPrivileges"
grep -q '^Seccomp:[[:space:]]*2' "/proc/$main/status" || fail "no system call filter"
vm0=$(tenant_pid vm0)
[ -n "$vm0" ] || fail "no process for tenant vm0"
# The unit grants the supervisor CAP_SYS_NICE (its arbiter); its tenants'
# processes must not inherit it.
caps() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status"; }
[ "$(caps "$main" CapAmb)" = 0000000000800000 ] || fail "the daemon lacks CAP_SYS_NICE"
[ "$(caps "$vm0" CapPrm)$(caps "$vm0" CapEff)$(caps "$vm0" CapAmb)" = \
	000000000000000000000000000000000000000000000000 ] ||
	fail "tenant vm0's process has capabilities"
echo "daemon $main, tenant vm0 process $vm0"

step "systemctl reload: a tenant added, the other left alone"
cat >> "$conf" <<CONF

[[tenant]]
name = "vm1"
socket = "/run/vhost-user-accel/vm1.sock"
CONF
systemctl reload vhost-user-accel.service || fail "reload"
wait_socket /run/vhost-user-accel/vm1.sock
crc /run/vhost-user-accel/vm1.sock
[ "$(tenant_pid vm0)" = "$vm0" ] || fail "tenant vm0's process changed on reload"
[ "$(systemctl show -p MainPID --value vhost-user-accel.service)" = "$main" ] ||
	fail "the daemon restarted on reload"
crc /run/vhost-user-accel/vm0.sock
# Two tenants now: the arbiter of their CPU time runs (CAP_SYS_NICE).
journalctl --no-pager -o cat -u vhost-user-accel.service | grep -q "arbiter runs" ||
	fail "no arbiter for two tenants"
echo "tenant vm0 kept process $vm0; vm1 served by $(tenant_pid vm1)"

step "systemctl reload of a broken file: nothing changes"
cp "$conf" /package-check/good.toml
echo 'queues = "many"' >> "$conf"
systemctl reload vhost-user-accel.service || fail "reload of a broken file"
journalctl --no-pager -o cat -u vhost-user-accel.service | grep -q "the running configuration stays" ||
	fail "the broken file was not refused"
[ "$(systemctl is-active vhost-user-accel.service)" = active ] || fail "not active after a broken file"
[ "$(tenant_pid vm0)" = "$vm0" ] || fail "tenant vm0's process changed on a broken file"
crc /run/vhost-user-accel/vm1.sock
cp /package-check/good.toml "$conf"

step "vhost-user-accel@vm9.socket: started on the first connection"
systemctl start vhost-user-accel@vm9.socket || fail "cannot start the socket unit"
wait_socket /run/vhost-user-accel-vm/vm9.sock
[ "$(systemctl is-active vhost-user-accel@vm9.service || true)" = inactive ] ||
	fail "the service ran before any connection"
crc /run/vhost-user-accel-vm/vm9.sock
[ "$(systemctl is-active vhost-user-accel@vm9.service)" = active ] ||
	fail "the connection did not start the service"

step "what the daemon logged"
journalctl --no-pager -o cat -u vhost-user-accel.service -u vhost-user-accel@vm9.service |
	grep -E 'fair sharing|sandbox|SIGHUP|serves' || true
step "systemd-analyze security (for the record)"
systemd-analyze security vhost-user-accel.service | tail -n 1
systemd-analyze security vhost-user-accel@vm9.service | tail -n 1

step "purge"
dpkg --purge vhost-user-accel
sleep 0.5
# The supervisor's command line starts with /usr/sbin/vhost-user-accel, a
# tenant's process's with vhost-user-accel --tenant-process.
if pgrep -f '^(/usr/sbin/)?vhost-user-accel( |$)'; then fail "a daemon outlived the package"; fi
while read -r f; do
	[ -d "$f" ] && continue
	[ -e "$f" ] && fail "$f left behind"
done < /package-check/files
for f in /var/lib/vhost-user-accel /run/vhost-user-accel /run/vhost-user-accel-vm/vm9.sock /etc/vhost-user-accel; do
	[ -e "$f" ] && fail "$f left behind"
done

step "virtio-accel-dkms: DKMS builds the module for a kernel with headers"
release=$(cat /package-check/kernel-release)
version=$(cat /package-check/dkms-version)
[ -n "$version" ] || fail "no module version"
echo "deb http://deb.debian.org/debian bookworm-backports main" \
	> /etc/apt/sources.list.d/backports.list
apt-get update -qq || fail "apt-get update"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	-t bookworm-backports dkms "linux-headers-$release" > /package-check/apt.log 2>&1 ||
	{ tail -n 20 /package-check/apt.log; fail "cannot install dkms and the headers of $release"; }
dkms_log() { cat /var/lib/dkms/virtio-accel/"$version"/build/make.log 2>/dev/null | tail -n 30; }
dpkg -i /package-check/virtio-accel-dkms.deb || { dkms_log; fail "cannot install virtio-accel-dkms"; }
dkms status "virtio-accel/$version"
dkms status "virtio-accel/$version" -k "$release" | grep ': installed' > /dev/null ||
	{ dkms_log; fail "DKMS did not install the module for $release"; }
module=$(find "/lib/modules/$release/updates/dkms" -name 'virtio_accel.ko*' | head -n 1)
[ -n "$module" ] || fail "no virtio_accel.ko in /lib/modules/$release/updates/dkms"
vermagic=$(modinfo -F vermagic "$module")
case "$vermagic" in
"$release "*) echo "$module: vermagic $vermagic" ;;
*) fail "the module was built for \"$vermagic\", not $release" ;;
esac
dpkg --purge virtio-accel-dkms
[ -z "$(find "/lib/modules/$release" -name 'virtio_accel.ko*')" ] || fail "the module outlived its package"
[ ! -e "/usr/src/virtio-accel-$version" ] || fail "the sources outlived their package"
[ ! -e /var/lib/dkms/virtio-accel ] && [ -z "$(dkms status virtio-accel)" ] ||
	fail "DKMS still knows virtio-accel"

echo "PASS"
