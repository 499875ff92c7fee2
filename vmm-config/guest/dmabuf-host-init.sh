#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Init of the guest that plays a dma-buf host (build-dmabuf-host.sh,
# tests/tests/vm_dmabuf.rs): loads vgem and vivid, starts the daemon, runs
# accel-dmabuf-check against it; then the same with the daemon's Vulkan
# engine and `accel-dmabuf-check --vulkan`; prints their lines and powers
# off. Nothing is asked of the host: the test reads the console.
#
# Serial ports (QEMU's -serial options, in order):
#   ttyS0  the console: "dmabuf-host: ..." lines, accel-dmabuf-check's output
#          ("PASS NAME", "FAIL NAME: WHY") and, at the end, the kernel's
#          log since boot between "dmabuf-host: kernel-log-begin" and
#          "dmabuf-host: kernel-log-end"; the last line is "dmabuf-host: check
#          exit N", N being 0 if both runs of accel-dmabuf-check exited 0;
#   ttyS1  the daemon's log (stderr, RUST_LOG=debug), through a FIFO: a
#          daemon whose stderr is a terminal loses its tenants' processes to
#          their sandbox (their logger's terminal check is an ioctl, which
#          the sandbox refuses).
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "dmabuf-host: $*"; }
# Whether process $1 still runs (exists, and is no zombie waiting for us).
running() { [ -e "/proc/$1/status" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$1/status"; }
depmod
say up

stty -F /dev/ttyS1 raw -echo
mkfifo /run/daemon-log
cat <>/run/daemon-log >/dev/ttyS1 &

# vgem: a second DRM driver that imports the daemon's dma-bufs; vivid: V4L2
# capture into dma-bufs, its buffers from vmalloc (allocators=0), one video
# capture node alone (node_types=0x1), single-planar (multiplanar=1).
modprobe vgem
say "modprobe vgem: exit $?"
modprobe vivid allocators=0 node_types=0x1 multiplanar=1
say "modprobe vivid: exit $?"
say "udmabuf: $(ls /dev/udmabuf 2>&1), size_limit_mb $(cat /sys/module/udmabuf/parameters/size_limit_mb 2>&1)"
say "DRM: $(ls /dev/dri 2>&1 | tr '\n' ' ')"
say "V4L2: $(ls /dev/video* 2>&1 | tr '\n' ' ')"

# run_checks NAME DAEMON_ARGS CHECK_ARGS: starts the daemon with
# DAEMON_ARGS (and its metrics endpoint), waits until its sockets
# ($sockets) listen, runs accel-dmabuf-check with CHECK_ARGS against it
# (five minutes at most: a check that hangs ends as a failure), stops the
# daemon; sets $status to the check's exit status.
run_checks() {
    name=$1
    metrics=/run/metrics-$name.sock
    # shellcheck disable=SC2086  # the arguments are words
    RUST_LOG=debug $2 --queues 2 --metrics=unix:$metrics 2>/run/daemon-log &
    daemon=$!
    waited=0
    listening() { for s in $sockets; do [ -S "$s" ] || return 1; done; }
    while ! listening && [ $waited -lt 300 ]; do usleep 100000; waited=$((waited + 1)); done
    if listening; then
        say "$name: daemon listening"
        # shellcheck disable=SC2086
        /bin/accel-dmabuf-check $3 --metrics $metrics & check=$!
        waited=0
        while running $check && [ $waited -lt 300 ]; do sleep 1; waited=$((waited + 1)); done
        if running $check; then
            say "$name: accel-dmabuf-check still running after 300 s: killed"
            kill -KILL $check
        fi
        wait $check
        status=$?
    else
        say "$name: the daemon did not listen within 30 s"
        status=1
    fi
    kill -TERM $daemon 2>/dev/null
    waited=0
    while running $daemon && [ $waited -lt 100 ]; do usleep 100000; waited=$((waited + 1)); done
}

# The software engine: tenant 0 (sealed guest RAM) and tenant 1 (unsealed).
socket=/run/accel.sock
unsealed=/run/accel-unsealed.sock
sockets="$socket $unsealed"
run_checks software "/bin/vhost-user-accel --socket-path $socket --socket-path $unsealed" \
    "--socket $socket --unsealed-socket $unsealed"
software=$status

# The Vulkan engine on lavapipe (bookworm-backports' Mesa, which imports
# dma-bufs), one tenant; its shader cache off, as the sandbox wants.
socket=/run/accel-vulkan.sock
sockets=$socket
export VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.json MESA_SHADER_CACHE_DISABLE=true
run_checks vulkan "/usr/bin/vhost-user-accel-vulkan --engine vulkan --socket-path $socket" \
    "--vulkan --socket $socket"
[ $software -eq 0 ] || status=$software
say kernel-log-begin
dmesg | tail -n 60
say kernel-log-end
say "check exit $status"
sync
poweroff -f
