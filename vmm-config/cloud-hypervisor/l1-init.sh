#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Init of the L1 guest (build-l1.sh): a QEMU TCG guest whose emulated SVM gives
# cloud-hypervisor a working /dev/kvm. It runs the daemon and cloud-hypervisor
# with the test guest (L2), and takes orders from the host on its console.
#
# L1's serial ports (QEMU's -serial options, in order):
#   ttyS0  L1's console: what L1 says ("l1: ..."), and the host's orders, one
#          a line: "kill-daemon" (SIGKILL, answered "l1: daemon killed"),
#          "start-daemon" (answered "l1: daemon listening" once it listens),
#          "kill-tenant" (SIGKILL to the daemon's process of its one tenant,
#          answered "l1: tenant kill: done" once it is gone, and the daemon
#          starts it again; "l1: tenant kill: no process" if there is none),
#          "metrics" (the daemon's metrics endpoint's answer, between the
#          lines "l1: metrics-begin" and "l1: metrics-end"), "dump" (what
#          the threads of cloud-hypervisor and the daemon are doing, and
#          L1's kernel log, between "l1: dump-begin" and "l1: dump-end": the
#          test asks for it when a run fails), "start-vm"
#          (cloud-hypervisor again, after it exited) and "poweroff";
#   ttyS1  L2's console: a virtio console (--console tty, hvc0 in L2), which
#          cloud-hypervisor reads from its stdin (this port) and writes to
#          its stdout, a FIFO relayed to this port: with a terminal as its
#          stdout, v53 starts a SIGWINCH listener for the console, and
#          creating it again when the guest reboots fails here ("Error
#          starting sigwinch listener"), which ends cloud-hypervisor;
#   ttyS2  the daemon's log (stderr, RUST_LOG=debug), every run of it, through
#          a FIFO: a daemon whose stderr is a terminal loses its tenants'
#          processes to the sandbox (their logger's terminal check is an
#          ioctl, which the sandbox refuses);
#   ttyS3  cloud-hypervisor's log (stderr, -v).
# L1 starts the daemon, then cloud-hypervisor; when cloud-hypervisor exits
# (the L2 guest powered off, or it failed), L1 says
# "l1: cloud-hypervisor exited: STATUS".
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
say() { echo "l1: $*"; }

# The host's orders are not echoed; the logs get no carriage returns.
stty -echo
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
stty -F /dev/ttyS3 raw -echo
for module in irqbypass kvm ccp kvm-amd; do
    insmod /mod/$module.ko || say "cannot load $module"
done
if [ ! -c /dev/kvm ]; then
    say "no /dev/kvm (is the CPU AMD-flavoured, with SVM?)"
    poweroff -f
fi

socket=/run/accel.sock
# The daemon's metrics endpoint, on loopback.
metrics=127.0.0.1:9400
ifconfig lo 127.0.0.1 up
# Relays opened read-write, so that they never see an end of file when one
# writer (a daemon, a cloud-hypervisor) ends and before the next starts.
mkfifo /run/daemon-log /run/l2-console
cat <>/run/daemon-log >/dev/ttyS2 &
cat <>/run/l2-console >/dev/ttyS1 &
daemon=
start_daemon() {
    rm -f $socket
    RUST_LOG=debug /bin/vhost-user-accel --socket-path $socket --queues 2 \
        --metrics $metrics 2>/run/daemon-log &
    daemon=$!
    while [ ! -S $socket ]; do usleep 20000; done
    say "daemon listening"
}
kill_daemon() {
    # The socket goes first. cloud-hypervisor v53 reconnects the moment its
    # connection drops, and may reach the listener of the dying daemon (the
    # kernel can release it after the connection); that reconnection fails
    # and v53 never tries again (fixed after v53 by "virtio-devices: Retry
    # complete vhost-user reconnect"). Without the file it tries every 100 ms
    # until the next daemon listens.
    rm -f $socket
    kill -KILL "$daemon"
    wait "$daemon"
    say "daemon killed"
}

# The process of the daemon's tenant ("0": the tenant of the one
# --socket-path), which the daemon started with --tenant-process.
tenant_pid() {
    for dir in /proc/[0-9]*; do
        if [ "$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null)" = "vhost-user-accel --tenant-process 0 " ]
        then
            echo "${dir#/proc/}"
            return
        fi
    done
}
kill_tenant() {
    tenant=$(tenant_pid)
    if [ -z "$tenant" ]; then
        say "tenant kill: no process"
        return
    fi
    kill -KILL "$tenant"
    # Gone once its command line reads empty (a zombie until the daemon
    # reaps it) or its directory is gone.
    while [ -n "$(tr '\0' ' ' <"/proc/$tenant/cmdline" 2>/dev/null)" ]; do usleep 20000; done
    say "tenant kill: done"
}

# KVM's counters of L2's exits (all of L1's VMs together).
kvm_counters() {
    for counter in exits halt_exits halt_wakeup io_exits mmio_exits pf_taken \
        irq_injections signal_exits request_irq_exits insn_emulation; do
        echo "kvm $counter $(cat /sys/kernel/debug/kvm/$counter 2>/dev/null)"
    done
}
# Each thread of cloud-hypervisor and of the daemon's processes (the
# supervisor, and its tenants' processes, named accel-TENANT): its name,
# state, CPU time (user and system, in ticks), system call and kernel stack.
threads() {
    for dir in /proc/[0-9]*; do
        case $(cat "$dir/comm" 2>/dev/null) in
        cloud-hyperviso | vhost-user-acce | accel-*) ;;
        *) continue ;;
        esac
        for task in "$dir"/task/*; do
            read -r _ _ state _ _ _ _ _ _ _ _ _ _ utime stime _ <"$task/stat"
            echo "thread ${dir#/proc/}/${task##*/} $(cat "$task/comm") $state" \
                "user $utime system $stime syscall $(cat "$task/syscall")"
            cat "$task/stack"
        done
    done
}
# L2's exits for a fifth of a second, as KVM traces them: where each vCPU of
# L2 was (its RIP), why it exited, what KVM emulated and which MMIO it did.
kvm_trace() {
    events=/sys/kernel/tracing/events/kvm
    for event in kvm_exit kvm_emulate_insn kvm_mmio kvm_pio; do
        echo 1 >"$events/$event/enable"
    done
    usleep 200000
    echo 0 >"$events/enable"
    grep -v '^#' /sys/kernel/tracing/trace | head -n 80
    echo >/sys/kernel/tracing/trace
}
# What a failed run leaves to read: the threads and KVM's counters twice,
# 2 s apart (who runs, who waits, whether L2 still exits), L2's exits as KVM
# traced them, and L1's kernel log with the backtraces of its CPUs and its
# blocked tasks.
dump() {
    say dump-begin
    kvm_counters
    threads
    sleep 2
    kvm_counters
    threads
    kvm_trace
    echo l >/proc/sysrq-trigger
    echo w >/proc/sysrq-trigger
    dmesg | tail -n 150
    say dump-end
}

# L2 waits 20 s after a panic before it reboots: cloud-hypervisor has no
# reset device that Linux uses, so the reboot is a triple fault, which can
# cut the panic's message short on the virtio console.
start_vm() {
    (
        set -x
        cloud-hypervisor -v \
            --cpus boot=2 --memory size=1G,shared=on \
            --kernel /l2/vmlinuz --initramfs /l2/initrd.gz \
            --cmdline "console=hvc0 quiet panic=20" \
            --serial off --console tty \
            --generic-vhost-user "socket=$socket,device_type=63,queue_sizes=[256,256,256]" \
            </dev/ttyS1 >/run/l2-console 2>/dev/ttyS3
        status=$?
        set +x
        say "cloud-hypervisor exited: $status"
    ) &
}

start_daemon
start_vm
while read -r order; do
    case $order in
    kill-daemon) kill_daemon ;;
    kill-tenant) kill_tenant ;;
    start-daemon) start_daemon ;;
    metrics)
        say metrics-begin
        wget -q -O - "http://$metrics/metrics" || say "no metrics"
        say metrics-end
        ;;
    dump) dump ;;
    start-vm) start_vm ;;
    poweroff) poweroff -f ;;
    *) say "unknown order: $order" ;;
    esac
done
